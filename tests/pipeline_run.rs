//! End-to-end tests of `docpipe run`: the real binary, render worker processes, the tiny
//! Idefics2 fixture checkpoint on the CPU, and Parquet output read back with docpipe-sink.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Output;
use std::sync::Arc;

use docpipe_core::{DeviceSpec, DocumentRef, Dtype, Stage, VisionLanguageModel};
use docpipe_idefics2::{candle_device, candle_dtype, Idefics2Model};
use docpipe_pipeline::config::{PipelineConfig, DEMO_PIPELINE};
use docpipe_pipeline::model::Family;
use docpipe_pipeline::pool::FAULT_ENV;
use docpipe_pipeline::tasks::{chat_request, TaskPlan};
use docpipe_render::{DocumentOptions, RenderPool, RenderPoolConfig};
use docpipe_sink::OutputRow;
use docpipe_store::object_store::ObjectStoreExt;
use docpipe_store::{StoreOptions, Stores};
use docpipe_vlm::placement::Placement;

use crate::support::{
    assert_exactly_once, assert_usage_error, docpipe, fixture, page_count, pages_of,
    refused_s3_env, repo, rows_at, runtime, source_folder, text, worker, Key, DEMO_QUERIES,
};

const TINY_MODEL: &str = "fixtures/idefics2/models/tiny-gqa-split";

fn run_demo(extra: &[String], env: &[(String, String)]) -> Output {
    let mut args = vec!["run".to_owned(), "pipelines/demo.toml".to_owned()];
    for set in extra {
        args.push("--set".to_owned());
        args.push(set.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docpipe(&args, env)
}

/// A folder holding copies of the given fixture files (paths relative to `fixtures/`).
#[test]
fn demo_pipeline_answers_every_page_like_the_model_does() {
    let out = tempfile::tempdir().unwrap();
    let sink = out.path().display().to_string();
    // One replica split over two devices (CPUs: the same stage boundaries as GPUs) and one
    // whole: every row must still be what the model on one device answers.
    let devices = r#"model.devices=["cpu+cpu", "cpu"]"#.to_owned();
    let output = run_demo(&[format!("sink.uri={sink}"), devices], &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let rows = rows_at(&sink, StoreOptions::default());
    let pages = pages_of(&fixture("pdfs"));
    let by_key = assert_exactly_once(&rows, &pages, DEMO_QUERIES);
    assert!(rows.iter().all(|r| r.answer.is_some() && r.error.is_none()));
    assert!(out.path().join("report.json").is_file());
    assert!(out.path().join("manifest.json").is_file());

    // The same page and prompt given straight to the model give the same answers.
    let config = PipelineConfig::load("demo", DEMO_PIPELINE, &[]).unwrap();
    let queries = TaskPlan::new(
        config.tasks,
        config.model.max_new_tokens,
        Family::Idefics2.default_prompts(),
    )
    .queries(&DocumentRef::new("x"));
    let model = Idefics2Model::load(
        &repo().join(TINY_MODEL),
        &Placement::single(&candle_device(DeviceSpec::Cpu).unwrap()),
        candle_dtype(Dtype::F32),
    )
    .unwrap();
    let pool = RenderPool::new(RenderPoolConfig {
        workers: 1,
        longest_edge: config
            .render
            .longest_edge
            .unwrap_or_else(|| model.image_longest_edge()),
        worker_command: worker(),
        ..RenderPoolConfig::new().unwrap()
    })
    .unwrap();
    let form = fixture("pdfs/form.pdf");
    let doc_uri = form.display().to_string();
    for page in pool.render(&form, &DocumentOptions::default()).unwrap() {
        let page = page.unwrap();
        let image = Arc::new(page.image);
        for query in &queries {
            let prepared = model.prepare(&chat_request(query, &image)).unwrap();
            let expected = model.generate(&[&prepared]).unwrap().remove(0);
            let row = &by_key[&(
                doc_uri.clone(),
                Some(page.page),
                query.task.clone(),
                query.question_id.clone(),
            )];
            assert_eq!(
                row.answer.as_deref(),
                Some(expected.text.as_str()),
                "page {} {:?}",
                page.page,
                query
            );
            assert_eq!(row.answer_tokens, Some(expected.token_ids.len() as u32));
            assert_eq!(row.prompt_tokens, Some(expected.prompt_tokens as u32));
        }
    }

    // Rerunning skips every committed document and writes nothing new.
    let again = run_demo(&[format!("sink.uri={sink}")], &[]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    let summary = String::from_utf8_lossy(&again.stdout);
    assert!(
        summary.contains(&format!("0 documents processed, {} skipped", pages.len())),
        "{summary}"
    );
    assert_eq!(rows_at(&sink, StoreOptions::default()).len(), rows.len());
}

/// Runs the demo over the fixture PDFs on `devices` with small batches (so that a run has
/// several), with `env` set; the output and every row by key, each checked to be there once.
fn demo_on(devices: &str, env: &[(String, String)]) -> (Output, HashMap<Key, OutputRow>) {
    demo_with(&[format!("model.devices={devices}")], "600", env)
}

/// Runs the demo over the fixture PDFs with the `sets` overrides, a token budget of
/// `batch_tokens` and `env` set; the output and every row by key, each checked to be there once.
fn demo_with(
    sets: &[String],
    batch_tokens: &str,
    env: &[(String, String)],
) -> (Output, HashMap<Key, OutputRow>) {
    let pages = pages_of(&fixture("pdfs"));
    let out = tempfile::tempdir().unwrap();
    let sink = out.path().display().to_string();
    let mut sets = sets.to_vec();
    sets.push(format!("sink.uri={sink}"));
    sets.push(format!("model.batch_tokens={batch_tokens}"));
    let output = run_demo(&sets, env);
    let rows = rows_at(&sink, StoreOptions::default());
    let rows = assert_exactly_once(&rows, &pages, DEMO_QUERIES);
    (output, rows)
}

/// Two CPU replicas, one of which fails mid-run (the pool's fault hook): every row comes out
/// once, with the answers of a run on one replica.
#[test]
fn a_replica_failing_mid_run_changes_no_row() {
    let (_, alone) = demo_on(r#"["cpu"]"#, &[]);
    let fault = [(FAULT_ENV.to_owned(), "batch:3".to_owned())];
    let (output, pair) = demo_on(r#"["cpu","cpu"]"#, &fault);
    let log = text(&output);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert!(
        log.contains("replica retired") && log.contains("injected device failure"),
        "{log}"
    );
    assert_eq!(pair.len(), alone.len());
    for (key, row) in &alone {
        let other = &pair[key];
        assert!(row.answer.is_some(), "{key:?}: {:?}", row.error);
        assert_eq!(
            (&other.answer, other.answer_tokens, &other.error),
            (&row.answer, row.answer_tokens, &row.error),
            "{key:?}"
        );
    }
}

/// Three CPU replicas and one request that fails the model wherever it runs (the pool's fault
/// hook): that request's row fails at `infer`, no replica retires, and every other row is as a
/// clean run has it.
#[test]
fn a_request_that_breaks_the_model_fails_its_row_and_no_replica() {
    let (_, clean) = demo_on(r#"["cpu"]"#, &[]);
    let fault = [(FAULT_ENV.to_owned(), "request:7".to_owned())];
    let (output, poisoned) = demo_on(r#"["cpu","cpu","cpu"]"#, &fault);
    let log = text(&output);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(!log.contains("replica retired"), "{log}");
    assert!(log.contains("1 rows carry errors (infer: 1)"), "{log}");
    let failed: Vec<_> = poisoned
        .iter()
        .filter(|(_, row)| row.error_stage.is_some())
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (key, row) = failed[0];
    assert_eq!(row.error_stage, Some(Stage::Infer));
    assert!(
        row.error
            .as_deref()
            .is_some_and(|e| e.contains("fails the model on its own")
                && e.contains("injected request failure")),
        "{:?}",
        row.error
    );
    for (other_key, other) in &poisoned {
        if other_key != key {
            assert_eq!(other.answer, clean[other_key].answer, "{other_key:?}");
        }
    }
}

/// The decode steps the run's one replica reports in its log.
fn decode_steps(output: &Output) -> usize {
    let log = String::from_utf8_lossy(&output.stderr);
    let (before, _) = log
        .split_once(" decode steps")
        .unwrap_or_else(|| panic!("no replica line: {log}"));
    let steps = before.rsplit(' ').next().unwrap_or_default();
    steps
        .parse()
        .unwrap_or_else(|_| panic!("{steps:?} in {log}"))
}

/// Continuous batching (the default) gives every row of static batches, in fewer decode steps:
/// a budget of about four requests, and OCR answers longer than the questions' (32 tokens).
#[test]
fn continuous_batching_changes_no_row() {
    let runs: Vec<(Output, HashMap<Key, OutputRow>)> = ["true", "false"]
        .iter()
        .map(|on| {
            let sets = [
                format!("model.continuous_batching={on}"),
                "task.0.max_new_tokens=32".to_owned(),
            ];
            let log = [(
                "DOCPIPE_LOG".to_owned(),
                "warn,docpipe_pipeline::run=info".to_owned(),
            )];
            demo_with(&sets, "1600", &log)
        })
        .collect();
    let [(continuous_output, continuous), (static_output, fixed)] = &runs[..] else {
        unreachable!()
    };
    for output in [continuous_output, static_output] {
        assert_eq!(output.status.code(), Some(0), "{}", text(output));
    }
    assert_eq!(continuous.len(), fixed.len());
    for (key, row) in fixed {
        let other = &continuous[key];
        assert!(row.answer.is_some(), "{key:?}: {:?}", row.error);
        assert_eq!(
            (
                &other.answer,
                other.answer_tokens,
                other.prompt_tokens,
                &other.error
            ),
            (
                &row.answer,
                row.answer_tokens,
                row.prompt_tokens,
                &row.error
            ),
            "{key:?}"
        );
    }
    let (steps, static_steps) = (decode_steps(continuous_output), decode_steps(static_output));
    assert!(
        steps < static_steps,
        "{steps} decode steps, static {static_steps}"
    );
}

#[test]
fn corrupt_documents_become_error_rows_beside_the_good_ones() {
    let source = source_folder(&[
        ("pdfs/form.pdf", "good.pdf"),
        ("bad/not-a-pdf.pdf", "not-a-pdf.pdf"),
        ("bad/truncated.pdf", "truncated.pdf"),
    ]);
    let out = tempfile::tempdir().unwrap();
    let sink = out.path().display().to_string();
    let output = run_demo(
        &[
            format!("source.uri={}", source.path().display()),
            format!("sink.uri={sink}"),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(String::from_utf8_lossy(&output.stderr).contains("rows carry errors"));
    let rows = rows_at(&sink, StoreOptions::default());
    let mut by_doc: BTreeMap<String, Vec<&OutputRow>> = BTreeMap::new();
    for row in &rows {
        by_doc
            .entry(row.doc_uri.rsplit('/').next().unwrap().to_owned())
            .or_default()
            .push(row);
    }
    let good_pages = page_count(&source.path().join("good.pdf"));
    assert_eq!(by_doc["good.pdf"].len(), good_pages as usize * DEMO_QUERIES);
    assert!(by_doc["good.pdf"]
        .iter()
        .all(|r| r.answer.is_some() && r.error.is_none()));
    for bad in ["not-a-pdf.pdf", "truncated.pdf"] {
        let rows = &by_doc[bad];
        // Unopenable: one row per query, page and page count unknown.
        assert_eq!(rows.len(), DEMO_QUERIES, "{bad}");
        let tasks: HashSet<_> = rows
            .iter()
            .map(|r| (r.task.clone(), r.question_id.clone()))
            .collect();
        assert_eq!(tasks.len(), DEMO_QUERIES);
        for row in rows {
            assert_eq!(row.answer, None);
            assert_eq!(row.page, None);
            assert_eq!(row.error_stage, Some(docpipe_core::Stage::Render), "{bad}");
            assert!(row.error.as_deref().is_some_and(|e| !e.is_empty()));
        }
    }
}

#[test]
fn config_errors_exit_2_naming_the_key_before_any_work() {
    let out = tempfile::tempdir().unwrap();
    let sink = out.path().join("never");
    let cases: [(&[&str], &str); 7] = [
        (&["--set", "source.bogus=1"], "bogus"),
        (&["--set", "render.longest_edge=big"], "render.longest_edge"),
        (&["--set", "render.max_pages=0"], "render.max_pages"),
        (&["--set", "model.devices=[\"tpu\"]"], "model.devices"),
        // This build has no CUDA: asking for a GPU is the configuration's mistake, not the machine's.
        (&["--set", "model.devices=[\"cuda:0\"]"], "model.devices"),
        (&["--set", "model.dtype=f64"], "model.dtype"),
        (&["--set", "colour=red"], "colour"),
    ];
    for (extra, named) in cases {
        let sink_set = format!("sink.uri={}", sink.display());
        let mut args = vec!["run", "pipelines/demo.toml", "--set", &sink_set];
        args.extend_from_slice(extra);
        let output = docpipe(&args, &[]);
        assert_usage_error(&output, named, &format!("{extra:?}"));
        assert!(!sink.exists(), "{extra:?} wrote output");
    }
    let file = out.path().join("bad.toml");
    std::fs::write(
        &file,
        DEMO_PIPELINE.replace("[render]", "[render]\nlongest_side = 3"),
    )
    .unwrap();
    let output = docpipe(&["run", file.to_str().unwrap()], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("longest_side"),
        "{}",
        text(&output)
    );
    let output = run_demo(
        &[
            "model.path=fixtures/pdfs".into(),
            format!("sink.uri={}", sink.display()),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("model.path"),
        "{}",
        text(&output)
    );
}

/// Uploads the fixture PDFs under `s3://<bucket>/in/` and returns their page counts by URI.
fn upload_fixture_pdfs(options: StoreOptions, bucket: &str) -> HashMap<String, u32> {
    let stores = Stores::new(options);
    let location = stores.open(&format!("s3://{bucket}/in/")).unwrap();
    let mut pages = HashMap::new();
    runtime().block_on(async {
        for name in ["form.pdf", "scan.pdf", "wide.pdf"] {
            let path = fixture("pdfs").join(name);
            let bytes = std::fs::read(&path).unwrap();
            location
                .store()
                .put(&location.child(name), bytes.into())
                .await
                .unwrap();
            pages.insert(format!("s3://{bucket}/in/{name}"), page_count(&path));
        }
    });
    pages
}

fn run_against_s3(env: &[(String, String)], bucket: &str) -> Output {
    run_demo(
        &[
            format!("source.uri=s3://{bucket}/in/"),
            format!("sink.uri=s3://{bucket}/out/{{date}}/"),
        ],
        env,
    )
}

fn today_prefix(bucket: &str) -> String {
    docpipe_pipeline::config::expand_date(
        &format!("s3://{bucket}/out/{{date}}/"),
        std::time::SystemTime::now(),
    )
}

#[test]
fn s3_source_and_sink_with_a_dated_prefix() {
    let moto = docpipe_testkit::MotoServer::start("docs").expect("moto (run `make setup`)");
    let pages = upload_fixture_pdfs(moto.store_options(), "docs");
    let output = run_against_s3(&moto.env(), "docs");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let rows = rows_at(&today_prefix("docs"), moto.store_options());
    assert_exactly_once(&rows, &pages, DEMO_QUERIES);
    assert!(rows
        .iter()
        .all(|r| r.answer.is_some() && r.doc_version.is_some()));

    let again = run_against_s3(&moto.env(), "docs");
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("3 skipped"),
        "{}",
        text(&again)
    );
}

#[test]
fn storage_faults_are_retried() {
    let moto = docpipe_testkit::MotoServer::start("flaky").expect("moto (run `make setup`)");
    let pages = upload_fixture_pdfs(moto.store_options(), "flaky");
    let rt = runtime();
    let plan = docpipe_testkit::FaultPlan {
        fault: docpipe_testkit::Fault::ServiceUnavailable,
        first: 1,
        every: Some(3),
    };
    let proxy = rt
        .block_on(docpipe_testkit::FaultyProxy::start(moto.address(), plan))
        .unwrap();
    let output = run_against_s3(&proxy.env(), "flaky");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(
        proxy.faults_injected() >= 3,
        "{} faults",
        proxy.faults_injected()
    );
    let rows = rows_at(&today_prefix("flaky"), moto.store_options());
    assert_exactly_once(&rows, &pages, DEMO_QUERIES);
    assert!(rows.iter().all(|r| r.answer.is_some()));
}

/// A bucket that cannot be reached, as source or as sink: after the retries, exit 3 with one
/// line naming the key and the URL, before any document is processed.
#[test]
fn unreachable_storage_exits_3_naming_the_key() {
    let env = refused_s3_env();
    let local = tempfile::tempdir().unwrap();
    let local = local.path().display().to_string();
    for (sets, key, url) in [
        (
            [
                "source.uri=s3://nowhere/in".to_owned(),
                format!("sink.uri={local}"),
            ],
            "source.uri",
            "s3://nowhere/in",
        ),
        (
            [
                "source.uri=fixtures/pdfs".to_owned(),
                "sink.uri=s3://nowhere/out".to_owned(),
            ],
            "sink.uri",
            "s3://nowhere/out",
        ),
    ] {
        let output = run_demo(&sets, &env);
        assert_eq!(output.status.code(), Some(3), "{}", text(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_else(|| panic!("no error line: {stderr}"));
        assert!(error.contains(key) && error.contains(url), "{error}");
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("documents processed"),
            "{}",
            text(&output)
        );
    }
}

#[test]
fn lake_enrichment_keeps_the_key_columns() {
    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    let dir = tempfile::tempdir().unwrap();
    let docs = ["form.pdf", "scan.pdf"].map(|n| fixture("pdfs").join(n));
    let schema = Arc::new(Schema::new(vec![
        Field::new("document_uri", DataType::Utf8, false),
        Field::new("contract_id", DataType::Utf8, false),
        Field::new("customer_id", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from_iter_values(
                docs.iter().map(|d| d.display().to_string()),
            )),
            Arc::new(StringArray::from(vec!["C-1", "C-2"])),
            Arc::new(Int64Array::from(vec![101, 102])),
        ],
    )
    .unwrap();
    let manifest = dir.path().join("documents.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&manifest).unwrap(),
        schema,
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let out = dir.path().join("enriched");
    let sets = [
        format!("source.uri={}", manifest.display()),
        format!("model.path={TINY_MODEL}"),
        "model.devices=[\"cpu\"]".to_owned(),
        "model.dtype=f32".to_owned(),
        format!("sink.uri={}", out.display()),
    ];
    let mut args = vec![
        "run".to_owned(),
        "pipelines/lake-enrichment.toml".to_owned(),
    ];
    for set in &sets {
        args.extend(["--set".to_owned(), set.clone()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = docpipe(&args, &[]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    let rows = rows_at(&out.display().to_string(), StoreOptions::default());
    let pages: HashMap<String, u32> = docs
        .iter()
        .map(|d| (d.display().to_string(), page_count(d)))
        .collect();
    assert_exactly_once(&rows, &pages, 3);
    for row in &rows {
        let (contract, customer) = if row.doc_uri.ends_with("form.pdf") {
            ("C-1", "101")
        } else {
            ("C-2", "102")
        };
        assert_eq!(
            row.keys.get("contract_id").map(String::as_str),
            Some(contract)
        );
        assert_eq!(
            row.keys.get("customer_id").map(String::as_str),
            Some(customer)
        );
        let fields: serde_json::Value =
            serde_json::from_str(row.fields.as_deref().unwrap()).unwrap();
        assert_eq!(fields.as_object().unwrap().len(), 3);
    }
}

#[test]
fn docvqa_pipeline_asks_each_document_its_manifest_questions() {
    let out = tempfile::tempdir().unwrap();
    let sink = out.path().display().to_string();
    let output = docpipe(
        &[
            "run",
            "pipelines/docvqa-eval.toml",
            "--set",
            &format!("sink.uri={sink}"),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let dataset: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("docvqa/json/val_v1.0.json")).unwrap())
            .unwrap();
    let mut expected: Vec<(String, String)> = dataset["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let image = q["image"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned();
            (image, q["questionId"].to_string())
        })
        .collect();
    let mut got: Vec<(String, String)> = rows_at(&sink, StoreOptions::default())
        .iter()
        .map(|r| {
            assert_eq!((r.page, r.page_count), (Some(1), Some(1)));
            assert!(r.answer.is_some());
            (
                r.doc_uri.rsplit('/').next().unwrap().to_owned(),
                r.question_id.clone().unwrap(),
            )
        })
        .collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
}

/// A manifest document with no questions (and none configured) still gets its row, an error of
/// stage `prepare`, and is committed: the run exits 1 and the rerun skips it.
#[test]
fn a_document_without_questions_gets_an_error_row_and_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let documents = fixture("docvqa/json/documents");
    let manifest = dir.path().join("manifest.jsonl");
    let line = |name: &str, questions: serde_json::Value| {
        serde_json::json!({
            "uri": documents.join(name).display().to_string(),
            "questions": questions,
        })
        .to_string()
    };
    let asked = line(
        "invoice_acme.png",
        serde_json::json!([{"id": "1", "text": "What is the invoice number?"}]),
    );
    let unasked = line("receipt_cafe.png", serde_json::json!([]));
    std::fs::write(&manifest, format!("{asked}\n{unasked}\n")).unwrap();
    let sink = dir.path().join("out").display().to_string();
    let sets = [
        format!("source.uri={}", manifest.display()),
        format!("sink.uri={sink}"),
    ];
    let run = || {
        docpipe(
            &[
                "run",
                "pipelines/docvqa-eval.toml",
                "--set",
                &sets[0],
                "--set",
                &sets[1],
            ],
            &[],
        )
    };
    let output = run();
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let rows = rows_at(&sink, StoreOptions::default());
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (failed, answered): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.error.is_some());
    assert!(answered[0].doc_uri.ends_with("invoice_acme.png"));
    assert!(answered[0].answer.is_some());
    let failed = failed[0];
    assert!(failed.doc_uri.ends_with("receipt_cafe.png"));
    assert_eq!(
        (failed.task.as_str(), failed.page, failed.error_stage),
        ("qa", None, Some(Stage::Prepare))
    );

    let again = run();
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("0 documents processed, 2 skipped"),
        "{}",
        text(&again)
    );
    assert_eq!(rows_at(&sink, StoreOptions::default()).len(), 2);
}
