//! Helpers shared by the end-to-end tests, which run the `docpipe` binary built with the test
//! hooks (`fault-injection`) and the fixtures under `fixtures/`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use docpipe_render::{DocumentOptions, RenderPool, RenderPoolConfig, WorkerCommand};
use docpipe_sink::{read_rows, OutputRow};
use docpipe_store::{StoreOptions, Stores};
use docpipe_vlm::fixture_check::{read_jsonl, read_npy};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_docpipe");

/// Queries per page in the demo pipeline: OCR, two questions, two fields.
pub const DEMO_QUERIES: usize = 5;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `fixtures/<rel>` in the repository.
pub fn fixture(rel: &str) -> PathBuf {
    repo().join("fixtures").join(rel)
}

/// [`fixture`] as a command-line argument.
pub fn fixture_arg(rel: &str) -> String {
    fixture(rel).display().to_string()
}

/// `docpipe ARGS`, run from the repository root with warnings and errors logged only, so that
/// relative paths in pipeline files resolve and stderr holds what a test asserts on.
pub fn command<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .current_dir(repo())
        .env("DOCPIPE_LOG", "warn");
    command
}

/// Runs [`command`] with `env` added to the environment, to completion.
pub fn docpipe(args: &[&str], env: &[(String, String)]) -> Output {
    command(args)
        .envs(env.iter().map(|(key, value)| (key, value)))
        .output()
        .expect("docpipe runs")
}

/// The render worker mode of the binary under test.
pub fn worker() -> WorkerCommand {
    WorkerCommand::new(BIN).arg("render-worker")
}

pub fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A usage or configuration error: exit code 2 with `named` (the key, flag or variable at fault)
/// in the message. `case` says which input this was when the assertion fails.
pub fn assert_usage_error(output: &Output, named: &str, case: &str) {
    assert_eq!(output.status.code(), Some(2), "{case}: {}", text(output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(named),
        "{case}: {}",
        text(output)
    );
}

/// S3 settings pointing at a loopback port nothing listens on: every connection is refused at
/// once, as for a bucket whose endpoint is down.
pub fn refused_s3_env() -> Vec<(String, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

pub fn rows_at(location: &str, options: StoreOptions) -> Vec<OutputRow> {
    runtime()
        .block_on(read_rows(&Stores::new(options), location))
        .expect("output rows read back")
}

/// A temporary folder holding copies of fixture files: `(fixture, name)` pairs.
pub fn source_folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (from, name) in files {
        std::fs::copy(fixture(from), dir.path().join(name)).unwrap();
    }
    dir
}

/// Page counts of the PDFs in `dir`, by canonical path (the `doc_uri` of a local source).
pub fn pages_of(dir: &Path) -> HashMap<String, u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
        .map(|p| {
            (
                p.canonicalize().unwrap().display().to_string(),
                page_count(&p),
            )
        })
        .collect()
}

pub fn page_count(path: &Path) -> u32 {
    let pool = RenderPool::new(RenderPoolConfig {
        workers: 1,
        worker_command: worker(),
        ..RenderPoolConfig::new().unwrap()
    })
    .unwrap();
    pool.render(path, &DocumentOptions::default())
        .unwrap()
        .page_count()
}

pub type Key = (String, Option<u32>, String, Option<String>);

fn key(row: &OutputRow) -> Key {
    (
        row.doc_uri.clone(),
        row.page,
        row.task.clone(),
        row.question_id.clone(),
    )
}

/// Asserts one row per (document, page, query) and returns the rows by key.
pub fn assert_exactly_once(
    rows: &[OutputRow],
    pages_by_doc: &HashMap<String, u32>,
    queries: usize,
) -> HashMap<Key, OutputRow> {
    let mut by_key = HashMap::new();
    for row in rows {
        assert!(
            by_key.insert(key(row), row.clone()).is_none(),
            "duplicate row {:?}",
            key(row)
        );
    }
    let expected: u32 = pages_by_doc.values().sum();
    assert_eq!(
        rows.len(),
        expected as usize * queries,
        "rows = pages × queries"
    );
    for row in rows {
        let pages = pages_by_doc[&row.doc_uri];
        assert_eq!(row.page_count, Some(pages), "{:?}", key(row));
        assert!(
            row.page.is_some_and(|p| (1..=pages).contains(&p)),
            "{:?}",
            key(row)
        );
    }
    by_key
}

/// `docpipe generate` of the fixture checkpoint `model` over `reference/requests.jsonl`, in
/// batches of 4 on `device`, compared with transformers' first-step logits
/// (`reference/first_logits.npy`: same shape, within 1e-3 of the largest); returns the output
/// lines for the caller's token checks.
pub fn generate_against_reference(model: &str, reference: &Path, device: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let (out, logits) = (dir.path().join("out.jsonl"), dir.path().join("logits.npy"));
    let output = docpipe(
        &[
            "generate",
            "--model",
            &fixture_arg(model),
            "--requests",
            reference.join("requests.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "4",
            "--device",
            device,
            "--logits-out",
            logits.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let (got, want) = (
        read_npy(&logits),
        read_npy(&reference.join("first_logits.npy")),
    );
    assert_eq!(got.shape, want.shape, "{model}: logits shape");
    let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .data
        .iter()
        .zip(&want.data)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= 1e-3 * scale, "{model}: logits differ by {worst}");
    read_jsonl(&out)
}
