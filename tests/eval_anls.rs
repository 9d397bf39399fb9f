//! `docpipe eval anls` end to end on the fixture dataset. Expected scores are worked out by hand
//! below from the ANLS definition (1 − edit distance / longer length, 0 from 0.5 on), not taken
//! from the implementation.

use std::path::Path;
use std::process::Output;

use docpipe_store::object_store::ObjectStoreExt;
use serde_json::{json, Value};

use crate::support::{docpipe, fixture, fixture_arg, refused_s3_env, text};

/// `docpipe eval anls --annotations A --predictions P`, then `extra` arguments.
fn eval_anls(
    annotations: &str,
    predictions: &str,
    extra: &[&str],
    env: &[(String, String)],
) -> Output {
    let mut args = vec![
        "eval",
        "anls",
        "--annotations",
        annotations,
        "--predictions",
        predictions,
    ];
    args.extend(extra);
    docpipe(&args, env)
}

fn write_predictions(dir: &Path, predictions: &Value) -> String {
    let path = dir.join("predictions.json");
    std::fs::write(&path, predictions.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Predictions for the 10 fixture questions, with the score each should get.
fn predictions() -> (Value, Vec<(i64, f64, bool)>) {
    let predictions = json!([
        // gold "INV-2024-0042": equal after lower-casing.
        {"questionId": 5001, "answer": "inv-2024-0042"},
        // gold "12/03/2024": one substitution in 10 chars.
        {"questionId": 5002, "answer": "12/03/2023"},
        // gold "1,234.56" (second answer): equal after trimming.
        {"questionId": 5003, "answer": " 1,234.56 "},
        // gold "77813": one substitution in 5 chars.
        {"questionId": 5004, "answer": "77818"},
        // gold "Cafe Zurich": equal after lower-casing and collapsing spaces.
        {"questionId": 5005, "answer": "CAFE   zurich"},
        // gold "RJ Reynolds": three deletions ("rj ") in 11 chars.
        {"questionId": 5006, "answer": "Reynolds"},
        // 5007 has no prediction.
        // gold "Page 3": 5 edits in 10 chars is NL 0.5, not below the threshold.
        {"questionId": 5008, "answer": "page three"},
        // gold "5521-B": one deletion in 6 chars.
        {"questionId": 5009, "answer": "5521B"},
        // gold "J. Smith": one insertion, longer length 9.
        {"questionId": 5010, "answer": "J. Smith."},
        // Not in the dataset.
        {"questionId": 9999, "answer": "stray"},
    ]);
    let expected = vec![
        (5001, 1.0, true),
        (5002, 0.9, false),
        (5003, 1.0, true),
        (5004, 0.8, false),
        (5005, 1.0, true),
        (5006, 8.0 / 11.0, false),
        (5007, 0.0, false),
        (5008, 0.0, false),
        (5009, 5.0 / 6.0, false),
        (5010, 8.0 / 9.0, false),
    ];
    (predictions, expected)
}

/// Question types of the fixture questions (from `fixtures/docvqa/make_dataset.py`).
fn types_of(id: i64) -> &'static [&'static str] {
    match id {
        5001 | 5004 | 5006 | 5007 | 5009 => &["form"],
        5002 => &["form", "layout"],
        5003 => &["table/list"],
        5005 => &["layout"],
        5008 => &["others"],
        5010 => &["handwritten", "form"],
        _ => unreachable!(),
    }
}

fn assert_close(actual: &Value, expected: f64, what: &str) {
    let actual = actual
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {actual}"));
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: {actual} != {expected}"
    );
}

fn check_json_output(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("9999"), "unknown id not reported: {stderr}");
    let stdout = String::from_utf8(output.stdout.clone()).unwrap();
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    let keys: Vec<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys.len(), 4, "{report}");

    let (_, expected) = predictions();
    let n = expected.len() as f64;
    assert_eq!(report["questions"], 10);
    assert_close(
        &report["anls"],
        expected.iter().map(|e| e.1).sum::<f64>() / n,
        "anls",
    );
    let exact = expected.iter().filter(|e| e.2).count() as f64;
    assert_close(&report["accuracy"], exact / n, "accuracy");

    let per_type = report["per_type"].as_object().unwrap();
    let mut type_names: Vec<&str> = expected
        .iter()
        .flat_map(|e| types_of(e.0).iter().copied())
        .collect();
    type_names.sort();
    type_names.dedup();
    assert_eq!(
        per_type.keys().map(String::as_str).collect::<Vec<_>>(),
        type_names
    );
    for name in type_names {
        let scores: Vec<f64> = expected
            .iter()
            .filter(|e| types_of(e.0).contains(&name))
            .map(|e| e.1)
            .collect();
        let mean = scores.iter().sum::<f64>() / scores.len() as f64;
        assert_close(&per_type[name], mean, name);
    }
}

#[test]
fn json_report_matches_hand_computed_scores_for_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let preds = write_predictions(dir.path(), &predictions().0);
    for annotations in [
        fixture_arg("docvqa/json/val_v1.0.json"),
        fixture_arg("docvqa/parquet"),
    ] {
        let output = eval_anls(&annotations, &preds, &["--json"], &[]);
        check_json_output(&output);
    }
}

/// Both files on S3 (a local moto server), reached through the standard environment variables.
#[test]
fn reads_annotations_and_predictions_from_s3() {
    let server = docpipe_testkit::MotoServer::start("eval").unwrap();
    let env = server.env();
    let stores = docpipe_store::Stores::new(server.store_options());
    let upload = |key: &str, bytes: Vec<u8>| {
        let location = stores.open(&format!("s3://eval/{key}")).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(location.store().put(location.prefix(), bytes.into()))
            .unwrap();
    };
    upload(
        "preds/predictions.json",
        predictions().0.to_string().into_bytes(),
    );
    upload(
        "docvqa/val_v1.0.json",
        std::fs::read(fixture("docvqa/json/val_v1.0.json")).unwrap(),
    );
    for part in [
        "validation-00000-of-00002.parquet",
        "validation-00001-of-00002.parquet",
    ] {
        let bytes = std::fs::read(fixture(&format!("docvqa/parquet/{part}"))).unwrap();
        upload(&format!("docvqa/parquet/{part}"), bytes);
    }
    for annotations in [
        "s3://eval/docvqa/val_v1.0.json",
        "s3://eval/docvqa/parquet/",
    ] {
        let output = eval_anls(
            annotations,
            "s3://eval/preds/predictions.json",
            &["--json"],
            &env,
        );
        check_json_output(&output);
    }
}

#[test]
fn table_report_names_types_and_unknown_predictions() {
    let dir = tempfile::tempdir().unwrap();
    let preds = write_predictions(dir.path(), &predictions().0);
    let annotations = fixture_arg("docvqa/json/val_v1.0.json");
    let output = eval_anls(&annotations, &preds, &[], &[]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "handwritten",
        "table/list",
        "exact-match accuracy: 0.3000",
        "unknown questionIds (ignored): 1",
        "missing predictions (scored 0): 1",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in:\n{stdout}");
    }
}

/// A store that cannot be reached is the machine's problem, not the input's: exit 3, naming the
/// file, and the hint that a rerun will do.
#[test]
fn an_unreachable_store_exits_3_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let predictions = write_predictions(dir.path(), &predictions().0);
    let output = eval_anls(
        "s3://nowhere/val_v1.0.json",
        &predictions,
        &[],
        &refused_s3_env(),
    );
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("s3://nowhere/val_v1.0.json"), "{stderr}");
    assert!(stderr.contains("rerun"), "{stderr}");
}

#[test]
fn bad_inputs_exit_2_with_a_message_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "[{\"questionId\": 5001,\n \"answer\": ").unwrap();
    let bad = bad.to_str().unwrap();
    let annotations = fixture_arg("docvqa/json/val_v1.0.json");
    let missing = dir.path().join("absent.json");
    let missing = missing.to_str().unwrap();
    for (args, needle) in [
        (
            vec!["--annotations", annotations.as_str(), "--predictions", bad],
            "bad.json",
        ),
        (
            vec!["--annotations", missing, "--predictions", bad],
            "absent.json: not found",
        ),
        (vec!["--annotations", bad, "--predictions", bad], "bad.json"),
        (vec!["--annotations", annotations.as_str()], "--predictions"),
    ] {
        let mut full = vec!["eval", "anls"];
        full.extend(args);
        let output = docpipe(&full, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{full:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{full:?}: {needle:?} not in {stderr}"
        );
    }
}
