//! The Florence-2 family end to end, on the tiny fixture checkpoint of
//! `fixtures/make_fixtures_florence2.py` (both tensor layouts): `docpipe generate` against
//! transformers' beam-search references and first-step logits, `docpipe run` with a shipped
//! pipeline, and `docpipe eval docvqa` with the family's `<DocVQA>` prompt.

use std::collections::BTreeSet;
use std::path::Path;

use docpipe_core::{DeviceSpec, DocumentRef, Dtype, VisionLanguageModel};
use docpipe_florence2::Florence2Model;
use docpipe_pipeline::config::PipelineConfig;
use docpipe_pipeline::tasks::{chat_request, TaskPlan};
use docpipe_render::{RenderPool, RenderPoolConfig};
use docpipe_store::StoreOptions;
use docpipe_vlm::{candle_device, candle_dtype};
use serde_json::Value;

use crate::eval_docvqa::eval_docvqa_with;
use crate::idefics3::{manifest_documents, render_first_page};
use crate::support::{docpipe, fixture, fixture_arg, rows_at, text, worker};

const NATIVE: &str = "florence2/models/tiny-native";
const REMOTE: &str = "florence2/models/tiny-remote";
const PIPELINE: &str = "pipelines/docvqa-eval.toml";
const MAX_NEW_TOKENS: usize = 6;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The values of a float32 `.npy` written by `--logits-out` or numpy, and its shape.
fn npy(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'<f4'"), "{header}");
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape = shape
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = bytes[10 + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (shape, data)
}

fn load(name: &str) -> Florence2Model {
    let device = candle_device(DeviceSpec::Cpu).unwrap();
    Florence2Model::load(&fixture(name), &device, candle_dtype(Dtype::F32)).unwrap()
}

#[test]
fn generate_matches_transformers_beam_search_in_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let reference = fixture("florence2/reference/tiny");
    let expected = lines(&reference.join("expected.jsonl"));
    let (shape, want_logits) = npy(&reference.join("first_logits.npy"));
    for name in [NATIVE, REMOTE] {
        let out = dir.path().join("out.jsonl");
        let logits = dir.path().join("logits.npy");
        let output = docpipe(
            &[
                "generate",
                "--model",
                &fixture_arg(name),
                "--requests",
                reference.join("requests.jsonl").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
                "--batch-size",
                "4",
                "--logits-out",
                logits.to_str().unwrap(),
            ],
            &[],
        );
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
        let got = lines(&out);
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g["id"], e["id"]);
            assert_eq!(g["token_ids"], e["beam"]["token_ids"], "{name} {}", e["id"]);
            assert_eq!(g["text"], e["beam"]["text"], "{name} {}", e["id"]);
            assert_eq!(g["prompt_tokens"], e["prompt_tokens"], "{name} {}", e["id"]);
        }
        let (got_shape, got_logits) = npy(&logits);
        assert_eq!(got_shape, shape);
        let scale = want_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got_logits
            .iter()
            .zip(&want_logits)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-3 * scale, "{name}: logits differ by {worst}");
    }
}

#[test]
fn a_shipped_pipeline_runs_a_florence2_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let sink = out.path().to_str().unwrap().to_owned();
    let overrides = [
        format!("model.path={}", fixture_arg(REMOTE)),
        format!("model.max_new_tokens={MAX_NEW_TOKENS}"),
        "task.0.prompt=<DocVQA>{question}".to_owned(),
        format!("sink.uri={sink}"),
    ];
    let mut args = vec!["run", PIPELINE];
    for item in &overrides {
        args.extend(["--set", item.as_str()]);
    }
    let output = docpipe(&args, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let rows = rows_at(&sink, StoreOptions::default());
    let documents = manifest_documents();
    let questions: usize = documents.iter().map(|(_, q)| q.len()).sum();
    assert_eq!(rows.len(), questions, "one row per question");
    let ids: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r.question_id.as_deref())
        .collect();
    assert_eq!(ids.len(), questions, "each question once");

    // The same page and prompt given straight to the model give the same answers.
    let model = load(REMOTE);
    assert!(rows.iter().all(|r| r.model == model.model_id()));
    let pool = RenderPool::new(RenderPoolConfig {
        workers: 1,
        longest_edge: model.image_longest_edge(),
        worker_command: worker(),
        ..RenderPoolConfig::new().unwrap()
    })
    .unwrap();
    let text = std::fs::read_to_string(crate::support::repo().join(PIPELINE)).unwrap();
    let config = PipelineConfig::load(PIPELINE, &text, &overrides).unwrap();
    let plan = TaskPlan::new(config.tasks, config.model.max_new_tokens);
    for (file, questions) in documents {
        let image = render_first_page(&pool, &fixture("docvqa/json/documents").join(&file));
        let mut doc = DocumentRef::new(file.as_str());
        doc.questions = questions;
        for query in plan.queries(&doc) {
            let prepared = model.prepare(&chat_request(&query, &image)).unwrap();
            assert!(
                prepared.prompt.starts_with("<DocVQA>"),
                "{}",
                prepared.prompt
            );
            let expected = model.generate(&[&prepared]).unwrap().remove(0);
            let row = rows
                .iter()
                .find(|r| r.question_id == query.question_id)
                .unwrap();
            assert_eq!(
                row.answer.as_deref(),
                Some(expected.text.as_str()),
                "{query:?}"
            );
            assert_eq!(row.prompt_tokens, Some(expected.prompt_tokens as u32));
        }
    }
}

#[test]
fn eval_docvqa_asks_florence2_behind_the_docvqa_prefix() {
    let out = tempfile::tempdir().unwrap();
    let output = eval_docvqa_with(
        &fixture_arg("docvqa/json/val_v1.0.json"),
        NATIVE,
        &[&format!("model.max_new_tokens={MAX_NEW_TOKENS}")],
        out.path(),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let metrics: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["questions"].as_u64(), Some(10));
    assert_eq!(metrics["missing_predictions"].as_u64(), Some(0));
    // Each row's prompt length is that of "<s><DocVQA>question</s>" after the image tokens.
    let model = load(NATIVE);
    let rows = rows_at(out.path().to_str().unwrap(), StoreOptions::default());
    assert_eq!(rows.len(), 10);
    for row in rows {
        let ids = model
            .processor()
            .tokenize(&format!("<DocVQA>{}", row.question))
            .unwrap();
        assert_eq!(
            row.prompt_tokens,
            Some((model.image_tokens() + ids.len()) as u32),
            "{}",
            row.question
        );
    }
}
