#!/usr/bin/env bash
# Idefics2 throughput on one GPU: docpipe (CUDA build) next to transformers, same checkpoint, same
# requests, same run. See "Idefics2 on GPU (H100)" in docs/benchmarks.md.
#
# On the build machine:
#   /work/venv-fixtures/bin/python scripts/gpu_bench_prepare.py      # -> .cache/gpu-bench (23 MB)
#   (the packed binary .cache/gpu-stripped.tar.xz: see docs/gpu.md)
# On the GPU machine, from the repository root, with .cache/gpu-bench and the tarball copied along:
#   OUT=results bash scripts/gpu-bench.sh              # fixture check, then the comparison
#   OUT=results bash scripts/gpu-bench.sh breakdown    # prefill-only runs, docpipe batch sizes
# Needs python3 with torch (CUDA) and transformers, nvidia-smi, ~17 GB free in $WORK (default /tmp).
# Every phase is time-boxed so that the whole run ends within BUDGET_S seconds (default 540).
set -uo pipefail

OUT=${OUT:?set OUT to a results folder}
# The 17 GB checkpoint goes to /dev/shm when it has room (no disk writes), else /tmp.
if [[ -z ${WORK:-} ]]; then
  shm_kb=$(df --output=avail /dev/shm 2>/dev/null | tail -1 || echo 0)
  if ((${shm_kb:-0} > 30000000)); then WORK=/dev/shm/gpu-bench; else WORK=/tmp/gpu-bench; fi
fi
BUDGET_S=${BUDGET_S:-540}
BATCH_DOCVQA=${BATCH_DOCVQA:-8}
BATCH_OCR=${BATCH_OCR:-4}
START=$(date +%s)
RES=$WORK/results
BIN=$WORK/gpu/docpipe
export PYTHONUNBUFFERED=1 CUDA_CACHE_PATH=$WORK/nvcache CUDA_CACHE_MAXSIZE=4294967296

# phase NAME MAX_SECONDS COMMAND...: runs COMMAND with at most MAX_SECONDS and never past the budget.
phase() {
  local name=$1 max=$2
  shift 2
  local left=$((BUDGET_S - ($(date +%s) - START) - 15))
  if ((left < 20)); then
    echo "=== $name: skipped, ${left}s of the budget left"
    return
  fi
  ((max > left)) && max=$left
  echo "=== $name (at most ${max}s, t=$(($(date +%s) - START))s)"
  local t0=$SECONDS
  timeout -k 5 "$max" "$@"
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0))s"
  return $rc
}

main() {
  mkdir -p "$OUT" "$RES"
  nvidia-smi
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem,power.limit --format=csv
  python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
  echo "WORK=$WORK"; df -h /tmp /dev/shm 2>/dev/null || true
  nproc
  rm -rf "$WORK/gpu" "$WORK/bench" && mkdir -p "$WORK" && tar -C "$WORK" -xJf .cache/gpu-stripped.tar.xz
  cp -r .cache/gpu-bench "$WORK/bench"
  ldd "$BIN" | grep -E 'not found|cuda|cublas|curand' || true

  phase setup 170 python3 scripts/gpu_bench.py setup "$WORK/bench" "$WORK/models"
  # The tiny fixtures on the GPU against the CPU, in f32. Being the first CUDA runs, they also
  # JIT-compile candle's PTX (cached under CUDA_CACHE_PATH for the next runs).
  phase check 120 python3 scripts/gpu_bench.py check "$BIN" fixtures/idefics2 "$RES"
  # FlashAttention (a `flash-attn` build) against the per-sequence attention it replaces, in bf16.
  # If it fails, the rest still measures something: without the fused kernels.
  if ! phase flash 60 python3 scripts/gpu_bench.py flashcheck "$BIN" "$WORK/models/split" \
    "$WORK/bench/docvqa.jsonl" "$RES"; then
    echo "=== flash check failed: the runs below use DOCPIPE_FLASH_ATTN=off"
    export DOCPIPE_FLASH_ATTN=off
  fi
  if [[ ${1:-} == breakdown ]]; then
    breakdown
  else
    comparison
  fi
  tar -C "$WORK" -czf "$OUT/results.tar.gz" results "models/params.json" bench/docvqa.jsonl bench/ocr.jsonl
  echo "=== done in $(($(date +%s) - START))s"
}

# Prefill alone (every request cut to one new token), docpipe's batch size, decode at batch 1.
breakdown() {
  sed 's/"max_new_tokens": 16/"max_new_tokens": 1/' "$WORK/bench/docvqa.jsonl" > "$WORK/bench/docvqa_prefill.jsonl"
  sed 's/"max_new_tokens": 512/"max_new_tokens": 128/' "$WORK/bench/ocr.jsonl" | head -1 > "$WORK/bench/ocr_one.jsonl"
  for mode in split nosplit; do
    phase "docpipe-prefill-$mode" 60 python3 scripts/gpu_bench.py docpipe "$BIN" "$WORK/models/$mode" \
      "$WORK/bench/docvqa_prefill.jsonl" "$RES/docpipe_prefill_$mode" --batch "$BATCH_DOCVQA"
  done
  phase docpipe-docvqa-split-batch32 60 python3 scripts/gpu_bench.py docpipe "$BIN" "$WORK/models/split" \
    "$WORK/bench/docvqa.jsonl" "$RES/docpipe_docvqa_split_b32" --batch 32
  phase docpipe-ocr-one 40 python3 scripts/gpu_bench.py docpipe "$BIN" "$WORK/models/nosplit" \
    "$WORK/bench/ocr_one.jsonl" "$RES/docpipe_ocr_one" --batch 1
  phase transformers-prefill 100 python3 scripts/gpu_bench.py transformers "$WORK/bench" "$WORK/models" \
    "$RES/transformers_breakdown.json" --batch-docvqa "$BATCH_DOCVQA" --batch-ocr 1 --time-box 80 \
    --workloads docvqa_prefill,ocr_one
}

comparison() {
  phase docpipe-docvqa-split 100 python3 scripts/gpu_bench.py docpipe "$BIN" "$WORK/models/split" \
    "$WORK/bench/docvqa.jsonl" "$RES/docpipe_docvqa_split" --batch "$BATCH_DOCVQA"
  phase transformers 210 python3 scripts/gpu_bench.py transformers "$WORK/bench" "$WORK/models" \
    "$RES/transformers.json" --batch-docvqa "$BATCH_DOCVQA" --batch-ocr "$BATCH_OCR" --time-box 150
  phase docpipe-docvqa-nosplit 70 python3 scripts/gpu_bench.py docpipe "$BIN" "$WORK/models/nosplit" \
    "$WORK/bench/docvqa.jsonl" "$RES/docpipe_docvqa_nosplit" --batch "$BATCH_DOCVQA"
  phase docpipe-ocr-split 100 python3 scripts/gpu_bench.py docpipe "$BIN" "$WORK/models/split" \
    "$WORK/bench/ocr.jsonl" "$RES/docpipe_ocr_split" --batch "$BATCH_OCR"
  phase docpipe-ocr-nosplit 100 python3 scripts/gpu_bench.py docpipe "$BIN" "$WORK/models/nosplit" \
    "$WORK/bench/ocr.jsonl" "$RES/docpipe_ocr_nosplit" --batch "$BATCH_OCR"
  python3 scripts/gpu_bench.py summary "$WORK/bench" "$WORK/models" "$RES" > "$OUT/summary.json" || true
  cp "$RES/transformers.json" "$OUT/" 2>/dev/null || true
}

mkdir -p "$OUT"
main "$@" 2>&1 | tee "$OUT/log.txt"
