//! `docpipe eval docvqa` end to end: the real binary on the fixture dataset (both layouts) with
//! the tiny Idefics2 checkpoint on the CPU; scores checked against `docpipe eval anls` run on the
//! written predictions.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use arrow::array::{Array, Int64Array};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

use docpipe_sink::OutputRow;
use docpipe_store::StoreOptions;

use crate::support::{command, docpipe, fixture, fixture_arg, rows_at, text};

/// The tiny Idefics2 fixture checkpoint every test here evaluates.
const MODEL: &str = "idefics2/models/tiny-gqa-split";

fn eval_docvqa(dataset: &str, out: &Path) -> Output {
    eval_docvqa_with(dataset, MODEL, &["model.max_new_tokens=8"], out)
}

/// `docpipe eval docvqa` on `dataset` with the fixture checkpoint `model` and `--set` items.
pub fn eval_docvqa_with(dataset: &str, model: &str, sets: &[&str], out: &Path) -> Output {
    let model = fixture_arg(model);
    let mut args = vec!["eval", "docvqa", "--dataset", dataset, "--model", &model];
    for item in sets {
        args.extend(["--set", item]);
    }
    args.extend(["--out", out.to_str().unwrap()]);
    docpipe(&args, &[])
}

/// `docpipe eval docvqa` on the fixture dataset with the fixture checkpoint `model`, answers
/// cut at `max_new_tokens`: asserts that it succeeds and scores all 10 questions, and returns
/// its output rows.
pub fn eval_docvqa_scores_every_question(model: &str, max_new_tokens: usize) -> Vec<OutputRow> {
    let out = tempfile::tempdir().unwrap();
    let output = eval_docvqa_with(
        &fixture_arg("docvqa/json/val_v1.0.json"),
        model,
        &[&format!("model.max_new_tokens={max_new_tokens}")],
        out.path(),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(
        json(&out.path().join("predictions.json"))
            .as_array()
            .unwrap()
            .len(),
        10
    );
    let metrics = json(&out.path().join("metrics.json"));
    assert_eq!(metrics["questions"].as_u64(), Some(10));
    assert_eq!(metrics["missing_predictions"].as_u64(), Some(0));
    let rows = rows_at(out.path().to_str().unwrap(), StoreOptions::default());
    assert_eq!(rows.len(), 10);
    rows
}

fn json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The questionIds of the fixture dataset, from its annotation file.
fn dataset_question_ids() -> BTreeSet<i64> {
    json(&fixture("docvqa/json/val_v1.0.json"))["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["questionId"].as_i64().unwrap())
        .collect()
}

fn prediction_ids(out: &Path) -> Vec<i64> {
    json(&out.join("predictions.json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(p["answer"].is_string(), "{p}");
            p["questionId"].as_i64().unwrap()
        })
        .collect()
}

fn question_row_ids(out: &Path) -> BTreeSet<i64> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(
        File::open(out.join("questions.parquet")).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let mut ids = BTreeSet::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch
            .column_by_name("question_id")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        ids.extend(column.values().iter().copied());
        assert_eq!(batch.column_by_name("score").unwrap().null_count(), 0);
    }
    ids
}

/// Every file under `dir` but the pipeline's run report (rewritten by every run, with that
/// run's timings and skip counts) with its bytes, by relative path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n != "report.json") {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path.strip_prefix(dir).unwrap().to_path_buf(), bytes));
            }
        }
    }
    files.sort();
    files
}

/// metrics.json's ANLS is what `docpipe eval anls` gives for the written predictions.
fn check_metrics_against_eval_anls(out: &Path, annotations: &str) {
    let metrics = json(&out.join("metrics.json"));
    let output = docpipe(
        &[
            "eval",
            "anls",
            "--annotations",
            annotations,
            "--predictions",
            out.join("predictions.json").to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let anls: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(metrics["anls"], anls["anls"], "{metrics} vs {anls}");
    assert_eq!(metrics["questions"], anls["questions"]);
    assert_eq!(metrics["questions"].as_u64(), Some(10));
    assert_eq!(metrics["missing_predictions"].as_u64(), Some(0));
}

#[test]
fn json_layout_writes_all_outputs_and_a_rerun_changes_nothing() {
    let out = tempfile::tempdir().unwrap();
    let annotations = fixture_arg("docvqa/json/val_v1.0.json");
    let output = eval_docvqa(&annotations, out.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let ids = prediction_ids(out.path());
    assert_eq!(ids.len(), 10);
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        dataset_question_ids()
    );
    assert_eq!(question_row_ids(out.path()), dataset_question_ids());
    check_metrics_against_eval_anls(out.path(), &annotations);
    let parts = std::fs::read_dir(out.path().join("parts")).unwrap().count();
    assert_eq!(parts, 4, "one part per page image");

    let before = snapshot(out.path());
    let output = eval_docvqa(&annotations, out.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("0 pages answered, 4 skipped"),
        "{}",
        text(&output)
    );
    let after = snapshot(out.path());
    let names = |files: &[(PathBuf, Vec<u8>)]| -> Vec<PathBuf> {
        files.iter().map(|(path, _)| path.clone()).collect()
    };
    assert_eq!(names(&after), names(&before));
    for ((path, old), (_, new)) in before.iter().zip(&after) {
        assert!(old == new, "the rerun changed {}", path.display());
    }
}

#[test]
fn parquet_layout_spills_inline_images_and_scores_like_eval_anls() {
    let out = tempfile::tempdir().unwrap();
    let dataset = fixture_arg("docvqa/parquet");
    let output = eval_docvqa(&dataset, out.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let ids = prediction_ids(out.path());
    assert_eq!(ids.len(), 10);
    assert_eq!(question_row_ids(out.path()), dataset_question_ids());
    assert_eq!(
        std::fs::read_dir(out.path().join("eval/images"))
            .unwrap()
            .count(),
        4
    );
    check_metrics_against_eval_anls(out.path(), &dataset);
}

#[test]
fn a_missing_image_fails_its_page_only() {
    let data = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("docvqa/json/val_v1.0.json"),
        data.path().join("val_v1.0.json"),
    )
    .unwrap();
    let documents = data.path().join("documents");
    std::fs::create_dir(&documents).unwrap();
    for entry in std::fs::read_dir(fixture("docvqa/json/documents")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name != "receipt_cafe.png" {
            std::fs::copy(&path, documents.join(name)).unwrap();
        }
    }
    let out = tempfile::tempdir().unwrap();
    let output = eval_docvqa(
        data.path().join("val_v1.0.json").to_str().unwrap(),
        out.path(),
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("receipt_cafe.png"),
        "{}",
        text(&output)
    );
    // The receipt's two questions (5004, 5005) have no answer; the other eight do.
    let mut expected = dataset_question_ids();
    expected.remove(&5004);
    expected.remove(&5005);
    assert_eq!(
        prediction_ids(out.path())
            .into_iter()
            .collect::<BTreeSet<_>>(),
        expected
    );
    let metrics = json(&out.path().join("metrics.json"));
    assert_eq!(metrics["missing_predictions"].as_u64(), Some(2));
}

#[test]
fn a_malformed_annotation_file_exits_2_naming_it() {
    let data = tempfile::tempdir().unwrap();
    let file = data.path().join("val_v1.0.json");
    std::fs::write(&file, b"{\"data\": [ {\"questionId\": 1,").unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = eval_docvqa(file.to_str().unwrap(), out.path());
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("val_v1.0.json"),
        "{}",
        text(&output)
    );
    assert!(!out.path().join("predictions.json").exists());
}

/// Dataset and outputs on S3 (a local moto server), two CPU replicas set through `--set`.
#[test]
fn s3_dataset_and_output_with_pipeline_overrides() {
    use docpipe_store::object_store::ObjectStoreExt;

    let server = docpipe_testkit::MotoServer::start("docvqa").expect("moto (run `make setup`)");
    let stores = docpipe_store::Stores::new(server.store_options());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let upload = |key: &str, bytes: Vec<u8>| {
        let location = stores.open(&format!("s3://docvqa/{key}")).unwrap();
        runtime
            .block_on(location.store().put(location.prefix(), bytes.into()))
            .unwrap();
    };
    let download = |key: &str| -> Vec<u8> {
        let location = stores.open(&format!("s3://docvqa/{key}")).unwrap();
        runtime
            .block_on(async { location.read().await })
            .unwrap()
            .to_vec()
    };
    upload(
        "data/val_v1.0.json",
        std::fs::read(fixture("docvqa/json/val_v1.0.json")).unwrap(),
    );
    for entry in std::fs::read_dir(fixture("docvqa/json/documents")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        upload(
            &format!("data/documents/{name}"),
            std::fs::read(&path).unwrap(),
        );
    }
    let run = || {
        docpipe(
            &[
                "eval",
                "docvqa",
                "--dataset",
                "s3://docvqa/data/val_v1.0.json",
                "--model",
                &fixture_arg("idefics2/models/tiny-gqa-split"),
                "--set",
                "model.max_new_tokens=8",
                "--set",
                r#"model.devices=["cpu","cpu"]"#,
                "--out",
                "s3://docvqa/run",
            ],
            &server.env(),
        )
    };
    let output = run();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let predictions: Value = serde_json::from_slice(&download("run/predictions.json")).unwrap();
    let ids: BTreeSet<i64> = predictions
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["questionId"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, dataset_question_ids());
    let metrics: Value = serde_json::from_slice(&download("run/metrics.json")).unwrap();
    assert_eq!(metrics["questions"].as_u64(), Some(10));
    assert!(!download("run/questions.parquet").is_empty());

    let output = run();
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("0 pages answered, 4 skipped"),
        "{}",
        text(&output)
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&download("run/predictions.json")).unwrap(),
        predictions
    );
}

#[test]
fn an_unknown_answer_setting_exits_2_before_any_work() {
    let out = tempfile::tempdir().unwrap();
    let output = eval_docvqa_with(
        &fixture_arg("docvqa/json/val_v1.0.json"),
        MODEL,
        &["answer.lowercase=true"],
        out.path(),
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("lowercase"),
        "{}",
        text(&output)
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

/// Killed once a page is committed, a rerun answers only the rest and every question once.
#[test]
fn killed_then_rerun_answers_each_question_once() {
    let out = tempfile::tempdir().unwrap();
    let annotations = fixture_arg("docvqa/json/val_v1.0.json");
    let mut child = command([
        "eval",
        "docvqa",
        "--dataset",
        &annotations,
        "--model",
        &fixture_arg("idefics2/models/tiny-gqa-split"),
        "--set",
        "model.max_new_tokens=8",
        "--out",
        out.path().to_str().unwrap(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let parts = out.path().join("parts");
    // Only finished parts: the local store stages a write under another name first.
    let committed = || {
        std::fs::read_dir(&parts).map_or(0, |dir| {
            dir.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            })
            .count()
        })
    };
    while committed() == 0 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = committed();
    assert!(before >= 1);

    let output = eval_docvqa(&annotations, out.path());
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!("{} pages answered, {before} skipped", 4 - before)),
        "{}",
        text(&output)
    );
    let ids = prediction_ids(out.path());
    assert_eq!(ids.len(), 10, "each question exactly once");
    assert_eq!(
        ids.into_iter().collect::<BTreeSet<_>>(),
        dataset_question_ids()
    );
    check_metrics_against_eval_anls(out.path(), &annotations);
}
