#!/bin/bash
# Submits docpipe as an AWS Batch array job: one child per shard; AWS_BATCH_JOB_ARRAY_INDEX is
# the shard index (docs/scale.md). Credentials come from the job role (jobRoleArn).
#
#   deploy/aws-batch/submit.sh                  # register the job definition, run all shards
#   deploy/aws-batch/submit.sh rerun 3          # rerun shard 3 alone (a rerun resumes)
#   docpipe commit "$RUN_URL" --shards "$SHARDS"
set -euo pipefail

QUEUE="${QUEUE:-gpu-queue}"
SHARDS="${SHARDS:-8}"
PIPELINE="${PIPELINE:-/pipelines/contracts.toml}"
RUN_URL="${RUN_URL:-s3://my-bucket/runs/contracts-2026-11-24/}"
HERE="$(cd "$(dirname "$0")" && pwd)"

if [ "${1:-}" = rerun ]; then
    # An array job needs a size of at least 2, so one shard runs as a plain job with --shard.
    shard="${2:?usage: submit.sh rerun INDEX}"
    aws batch submit-job \
        --job-name "docpipe-shard-$shard-of-$SHARDS" \
        --job-queue "$QUEUE" \
        --job-definition docpipe \
        --container-overrides "{\"command\": [\"run\", \"$PIPELINE\", \"--shard\", \"$shard/$SHARDS\", \"--set\", \"sink.uri=$RUN_URL\"]}"
    exit
fi

aws batch register-job-definition --cli-input-json "file://$HERE/job-definition.json"
aws batch submit-job \
    --job-name docpipe-contracts \
    --job-queue "$QUEUE" \
    --job-definition docpipe \
    --array-properties "size=$SHARDS" \
    --parameters "{\"pipeline\": \"$PIPELINE\", \"shards\": \"$SHARDS\", \"sink\": \"sink.uri=$RUN_URL\"}"
