//! End-to-end tests of models named by hub id or object-store prefix (`--model`, `model.path`):
//! against the test hub of docpipe-testkit (`HF_ENDPOINT`, a temporary `HF_HOME`) serving the
//! tiny fixture checkpoints, and against moto for `s3://`.

use std::path::{Path, PathBuf};
use std::process::Output;

use docpipe_store::object_store::ObjectStoreExt;
use docpipe_store::{StoreOptions, Stores};
use docpipe_testkit::{Fault, FaultPlan, FaultyProxy, HubRepo, HubRequest, HubServer, MotoServer};

use crate::support::{docpipe, fixture, rows_at, runtime, text};

const MAIN: &str = "1111111111111111111111111111111111111111";
const V1: &str = "2222222222222222222222222222222222222222";
const IDEFICS2: &str = "idefics2/models/tiny-gqa-split";

/// `docpipe/tiny-gqa-split` (the demo's Idefics2 checkpoint) on `main` and, as another commit,
/// on `v1`.
fn idefics2_repo() -> HubRepo {
    HubRepo::new("docpipe/tiny-gqa-split")
        .commit(MAIN, "main", &fixture(IDEFICS2))
        .unwrap()
        .commit(V1, "v1", &fixture(IDEFICS2))
        .unwrap()
}

fn generate(model: &str, out: &Path, env: &[(String, String)]) -> Output {
    let requests = fixture("idefics2/reference/tiny-gqa-split/requests.jsonl");
    generate_with(model, &requests, out, env)
}

fn generate_with(model: &str, requests: &Path, out: &Path, env: &[(String, String)]) -> Output {
    docpipe(
        &[
            "generate",
            "--model",
            model,
            "--requests",
            requests.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        env,
    )
}

/// The one `error:` line of a failed command, asserting there is exactly one.
fn error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", text(output));
    errors[0].to_owned()
}

fn with(mut env: Vec<(String, String)>, key: &str, value: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != key);
    env.push((key.to_owned(), value.to_owned()));
    env
}

#[test]
fn generate_by_hub_id_answers_like_the_folder_and_a_second_run_downloads_nothing() {
    let hub = HubServer::start(vec![idefics2_repo()], None).unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let env = hub.env(home.path());

    let local = generate(
        &fixture(IDEFICS2).display().to_string(),
        &out.path().join("local.jsonl"),
        &[],
    );
    assert_eq!(local.status.code(), Some(0), "{}", text(&local));
    let first = generate(
        "docpipe/tiny-gqa-split",
        &out.path().join("first.jsonl"),
        &env,
    );
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let expected = std::fs::read_to_string(out.path().join("local.jsonl")).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.path().join("first.jsonl")).unwrap(),
        expected
    );
    let snapshot = home
        .path()
        .join("hub/models--docpipe--tiny-gqa-split/snapshots")
        .join(MAIN);
    assert!(snapshot.join("model.safetensors").is_file());
    assert!(hub.requests().iter().any(HubRequest::is_download));

    let before = hub.requests().len();
    let second = generate(
        "docpipe/tiny-gqa-split",
        &out.path().join("second.jsonl"),
        &env,
    );
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert_eq!(
        std::fs::read_to_string(out.path().join("second.jsonl")).unwrap(),
        expected
    );
    let requests = &hub.requests()[before..];
    assert_eq!(requests.len(), 1, "only the model info: {requests:?}");
    assert!(!requests[0].is_download());
}

/// The `model` column of the rows and report.json of a run.
/// `eval docvqa` resolves `--model` to learn the family's prompt and hands the checkpoint to
/// the pipeline: one model-info request for a hub id at a branch, not one per resolution.
#[test]
fn eval_docvqa_by_hub_id_asks_the_hub_once() {
    let hub = HubServer::start(vec![idefics2_repo()], None).unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dataset = fixture("docvqa/json/val_v1.0.json").display().to_string();
    let args = [
        "eval",
        "docvqa",
        "--dataset",
        &dataset,
        "--model",
        "docpipe/tiny-gqa-split",
        "--set",
        "model.max_new_tokens=2",
        "--out",
        out.path().to_str().unwrap(),
    ];
    let output = docpipe(&args, &hub.env(home.path()));
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let info: Vec<_> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/models/"))
        .collect();
    assert_eq!(info.len(), 1, "one model-info request: {info:?}");
    let rows = rows_at(out.path().to_str().unwrap(), StoreOptions::default());
    assert!(rows
        .iter()
        .all(|r| r.model == format!("docpipe/tiny-gqa-split@{MAIN}")));
}

fn models_of_run(sink: &Path) -> (Vec<String>, String) {
    let rows = rows_at(&sink.display().to_string(), StoreOptions::default());
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.answer.is_some()), "{rows:?}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sink.join("report.json")).unwrap()).unwrap();
    let report_model = report["model"].as_str().unwrap().to_owned();
    (rows.into_iter().map(|r| r.model).collect(), report_model)
}

fn run_demo(model: &str, sink: &Path, env: &[(String, String)]) -> Output {
    docpipe(
        &[
            "run",
            "pipelines/demo.toml",
            "--set",
            &format!("model.path={model}"),
            "--set",
            &format!("sink.uri={}", sink.display()),
            "--set",
            "source.limit=1",
        ],
        env,
    )
}

#[test]
fn a_run_with_a_pinned_revision_names_the_repo_and_commit_in_every_row() {
    let hub = HubServer::start(vec![idefics2_repo()], None).unwrap();
    let home = tempfile::tempdir().unwrap();
    let sink = tempfile::tempdir().unwrap();
    let output = run_demo(
        "docpipe/tiny-gqa-split@v1",
        sink.path(),
        &hub.env(home.path()),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let (rows, report) = models_of_run(sink.path());
    let expected = format!("docpipe/tiny-gqa-split@{V1}");
    assert!(rows.iter().all(|m| *m == expected), "{rows:?}");
    assert_eq!(report, expected);
    assert_eq!(
        std::fs::read_to_string(
            home.path()
                .join("hub/models--docpipe--tiny-gqa-split/refs/v1")
        )
        .unwrap(),
        V1
    );
}

#[test]
fn a_run_from_an_s3_prefix_copies_the_checkpoint_once() {
    let moto = MotoServer::shared().expect("moto (run `make setup`)");
    moto.create_bucket("e2e-models").unwrap();
    let runtime = runtime();
    let stores = Stores::new(moto.store_options());
    let location = stores.open("s3://e2e-models/idefics2/tiny/").unwrap();
    runtime.block_on(async {
        for entry in std::fs::read_dir(fixture(IDEFICS2)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap();
            location
                .store()
                .put(&location.child(name), std::fs::read(&path).unwrap().into())
                .await
                .unwrap();
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let cache_env = (
        "DOCPIPE_MODEL_CACHE".to_owned(),
        cache.path().display().to_string(),
    );
    let mut env = moto.env();
    env.push(cache_env.clone());
    let sink = tempfile::tempdir().unwrap();
    let output = run_demo("s3://e2e-models/idefics2/tiny/", sink.path(), &env);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let (rows, report) = models_of_run(sink.path());
    let hash = report
        .strip_prefix("s3://e2e-models/idefics2/tiny@")
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{report}"
    );
    assert!(rows.iter().all(|m| *m == report), "{rows:?}");

    // A second run (another sink) reads the copy: the only request is the listing.
    let never = FaultPlan {
        fault: Fault::ServiceUnavailable,
        first: 0,
        every: None,
    };
    let proxy = runtime
        .block_on(FaultyProxy::start(moto.address(), never))
        .unwrap();
    let mut env = proxy.env();
    env.push(cache_env);
    let again = tempfile::tempdir().unwrap();
    let output = run_demo("s3://e2e-models/idefics2/tiny/", again.path(), &env);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert_eq!(models_of_run(again.path()).1, report);
    assert_eq!(proxy.requests(), 1, "only the listing");
}

#[test]
fn offline_with_an_empty_cache_exits_2_naming_the_repo() {
    let home = tempfile::tempdir().unwrap();
    let hub = HubServer::start(vec![idefics2_repo()], None).unwrap();
    let env = with(hub.env(home.path()), "HF_HUB_OFFLINE", "1");
    let out = tempfile::tempdir().unwrap();
    let output = generate("docpipe/tiny-gqa-split", &out.path().join("x.jsonl"), &env);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let line = error_line(&output);
    assert!(
        line.contains("docpipe/tiny-gqa-split@main")
            && line.contains("config.json")
            && line.contains("HF_HUB_OFFLINE"),
        "{line}"
    );
    let sink = tempfile::tempdir().unwrap();
    let output = run_demo("docpipe/tiny-gqa-split@v1", sink.path(), &env);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let line = error_line(&output);
    assert!(
        line.contains("model.path") && line.contains("docpipe/tiny-gqa-split@v1"),
        "{line}"
    );
    assert_eq!(hub.requests(), []);
}

#[test]
fn an_unreachable_hub_exits_3_after_retries() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = tempfile::tempdir().unwrap();
    let hub = HubServer::start(vec![], None).unwrap();
    let env = with(
        hub.env(home.path()),
        "HF_ENDPOINT",
        &format!("http://127.0.0.1:{port}"),
    );
    let out = tempfile::tempdir().unwrap();
    let output = generate("docpipe/tiny-gqa-split", &out.path().join("x.jsonl"), &env);
    assert_eq!(output.status.code(), Some(3), "{}", text(&output));
    let line = error_line(&output);
    assert!(
        line.contains("docpipe/tiny-gqa-split@main") && line.contains("cannot reach"),
        "{line}"
    );
}

#[test]
fn a_gated_repo_needs_a_token_from_hf_token_or_the_token_file() {
    let hub = HubServer::start(
        vec![HubRepo::new("docpipe/gated")
            .commit(MAIN, "main", &fixture(IDEFICS2))
            .unwrap()
            .gated()],
        Some("hf_e2e"),
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = generate(
        "docpipe/gated",
        &out.path().join("x.jsonl"),
        &hub.env(home.path()),
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    let line = error_line(&output);
    assert!(
        line.contains("docpipe/gated@main") && line.contains("401") && line.contains("HF_TOKEN"),
        "{line}"
    );

    let with_env = with(hub.env(home.path()), "HF_TOKEN", "hf_e2e");
    let output = generate("docpipe/gated", &out.path().join("env.jsonl"), &with_env);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));

    // What `huggingface-cli login` writes, in a fresh cache.
    let logged_in = tempfile::tempdir().unwrap();
    std::fs::write(logged_in.path().join("token"), "hf_e2e\n").unwrap();
    let output = generate(
        "docpipe/gated",
        &out.path().join("file.jsonl"),
        &hub.env(logged_in.path()),
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
}

/// fixtures/hub-cache was written by Python's huggingface_hub (fixtures/make_hub_cache.py).
#[test]
fn a_checkpoint_downloaded_by_huggingface_hub_is_used_as_is() {
    let python_cache = fixture("hub-cache");
    let commit =
        std::fs::read_to_string(python_cache.join("models--docpipe--tiny-llama3/refs/main"))
            .unwrap();
    let cache = tempfile::tempdir().unwrap();
    copy_tree(&python_cache, cache.path());
    let hub = HubServer::start(
        vec![HubRepo::new("docpipe/tiny-llama3")
            .commit(&commit, "main", &fixture("idefics3/models/tiny-llama3"))
            .unwrap()],
        None,
    )
    .unwrap();
    let home = tempfile::tempdir().unwrap();
    let env = with(
        hub.env(home.path()),
        "HF_HUB_CACHE",
        &cache.path().display().to_string(),
    );
    let requests = fixture("idefics3/reference/tiny-llama3/requests.jsonl");
    let out = tempfile::tempdir().unwrap();
    let local = generate_with(
        &fixture("idefics3/models/tiny-llama3").display().to_string(),
        &requests,
        &out.path().join("local.jsonl"),
        &[],
    );
    assert_eq!(local.status.code(), Some(0), "{}", text(&local));
    let online = generate_with(
        "docpipe/tiny-llama3",
        &requests,
        &out.path().join("online.jsonl"),
        &env,
    );
    assert_eq!(online.status.code(), Some(0), "{}", text(&online));
    assert_eq!(
        hub.requests().len(),
        1,
        "only the model info: {:?}",
        hub.requests()
    );
    let offline = generate_with(
        "docpipe/tiny-llama3",
        &requests,
        &out.path().join("offline.jsonl"),
        &with(env, "HF_HUB_OFFLINE", "1"),
    );
    assert_eq!(offline.status.code(), Some(0), "{}", text(&offline));
    assert_eq!(hub.requests().len(), 1);
    let expected = std::fs::read_to_string(out.path().join("local.jsonl")).unwrap();
    for name in ["online.jsonl", "offline.jsonl"] {
        assert_eq!(
            std::fs::read_to_string(out.path().join(name)).unwrap(),
            expected,
            "{name}"
        );
    }
}

/// Copies a folder, keeping symlinks as symlinks (the cache's snapshots are links to blobs).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target: PathBuf = to.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), target).unwrap();
        } else if kind.is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
