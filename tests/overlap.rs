//! `docpipe run` processes overlapping on one sink (docs/storage.md, "Overlapping runs"), on a
//! local folder and on moto S3: runs started together, duplicated shards, a run killed and rerun
//! at once, a run stopped (SIGSTOP) past its hold and continued. Every test counts every
//! (document, page, query) exactly once in what a reader of the sink sees.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use docpipe_store::{StoreOptions, Stores};
use docpipe_testkit::MotoServer;
use futures::TryStreamExt;

use crate::support::{
    assert_exactly_once, command, docpipe, pages_of, rows_at, runtime, source_folder, text,
    DEMO_QUERIES,
};

/// Nine documents: copies of the fixture PDFs under distinct names.
fn corpus() -> tempfile::TempDir {
    let fixtures = [
        "pdfs/form.pdf",
        "pdfs/scan.pdf",
        "pdfs/wide.pdf",
        "pdfs/landscape.pdf",
    ];
    let files: Vec<(String, String)> = (0..9)
        .map(|i| (fixtures[i % 4].to_owned(), format!("doc-{i}.pdf")))
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    source_folder(&files)
}

/// Where the runs write: a temporary folder, or a bucket on a moto server of the test's own.
struct Target {
    uri: String,
    env: Vec<(String, String)>,
    options: StoreOptions,
    _dir: Option<tempfile::TempDir>,
    _moto: Option<MotoServer>,
}

impl Target {
    fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Target {
            uri: dir.path().join("out").display().to_string(),
            env: Vec::new(),
            options: StoreOptions::default(),
            _dir: Some(dir),
            _moto: None,
        }
    }

    fn s3() -> Self {
        let moto = MotoServer::start("overlap").expect("moto (run `make setup`)");
        Target {
            uri: "s3://overlap/out/".to_owned(),
            env: moto.env(),
            options: moto.store_options(),
            _dir: None,
            _moto: Some(moto),
        }
    }

    /// Objects under `relative` (a folder of the sink).
    fn count(&self, relative: &str) -> usize {
        let stores = Stores::new(self.options.clone());
        runtime().block_on(async {
            let sink = stores.open(&self.uri).unwrap();
            let dir = sink.child(relative);
            if sink.local_path_of(&dir).is_some_and(|p| !p.is_dir()) {
                return 0;
            }
            let objects: Vec<_> = sink.store().list(Some(&dir)).try_collect().await.unwrap();
            objects.len()
        })
    }
}

/// `docpipe run` of the demo pipeline over `source` into `target`, with `extra` arguments and
/// environment, started and not waited for.
fn start(
    source: &tempfile::TempDir,
    target: &Target,
    extra: &[&str],
    env: &[(String, String)],
) -> Child {
    run_command(source, target, extra, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn run_command(
    source: &tempfile::TempDir,
    target: &Target,
    extra: &[&str],
    env: &[(String, String)],
) -> Command {
    let source_set = format!("source.uri={}", source.path().display());
    let sink_set = format!("sink.uri={}", target.uri);
    let mut args = vec![
        "run",
        "pipelines/demo.toml",
        "--set",
        &source_set,
        "--set",
        &sink_set,
        "--set",
        "sink.documents_per_part=1",
    ];
    args.extend_from_slice(extra);
    let mut command = command(&args);
    command.envs(target.env.iter().chain(env).map(|(k, v)| (k, v)));
    command
}

/// A number printed right before `label` in the run's summary.
fn count_before(output: &Output, label: &str) -> u64 {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let at = stdout
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in:\n{}", text(output)));
    stdout[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {label:?} in:\n{}", text(output)))
}

fn processed(output: &Output) -> u64 {
    count_before(output, "documents processed")
}

/// Waits for every run; each must exit 0.
fn succeed(runs: Vec<Child>) -> Vec<Output> {
    let outputs: Vec<Output> = runs
        .into_iter()
        .map(|run| run.wait_with_output().unwrap())
        .collect();
    for output in &outputs {
        assert_eq!(output.status.code(), Some(0), "{}", text(output));
    }
    outputs
}

fn assert_every_row_once(source: &tempfile::TempDir, target: &Target) {
    let rows = rows_at(&target.uri, target.options.clone());
    assert_exactly_once(&rows, &pages_of(source.path()), DEMO_QUERIES);
    assert!(
        rows.iter().all(|r| r.answer.is_some()),
        "error rows written"
    );
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Case 1: three runs started together share the documents: each is processed by one run and
/// committed once, and every run ends only when everything is committed.
fn runs_started_together(target: Target) {
    let source = corpus();
    let runs: Vec<Child> = (0..3).map(|_| start(&source, &target, &[], &[])).collect();
    let outputs = succeed(runs);
    let processed: u64 = outputs.iter().map(processed).sum();
    assert_eq!(processed, 9, "documents processed over the three runs");
    assert_every_row_once(&source, &target);
}

/// Case 4: a shard started twice (a second apart) while the other shard runs; `docpipe commit`
/// then finds both shards complete and every row once.
#[test]
fn a_duplicated_shard_on_s3_commits_each_row_once() {
    let target = Target::s3();
    let source = corpus();
    let first = start(&source, &target, &["--shard", "0/2"], &[]);
    let other = start(&source, &target, &["--shard", "1/2"], &[]);
    std::thread::sleep(Duration::from_secs(1));
    let again = start(&source, &target, &["--shard", "0/2"], &[]);
    let outputs = succeed(vec![first, other, again]);
    assert_eq!(outputs.iter().map(processed).sum::<u64>(), 9);
    let commit = docpipe(&["commit", &target.uri], &target.env);
    assert_eq!(commit.status.code(), Some(0), "{}", text(&commit));
    assert_every_row_once(&source, &target);
}

/// Case 2: a run killed with SIGKILL once it has committed something; the rerun, started at
/// once, takes the killed run's documents over after the hold (2 s here) and finishes
/// everything. Batches of about one request, so that documents finish one after another
/// (hundreds of ms apart) and the kill lands between the first part and the last: with
/// continuous batching and the default budget they can all finish within one poll.
fn killed_and_rerun_at_once(target: Target) {
    let source = corpus();
    let hold = ["--set", "sink.hold_s=2", "--set", "model.batch_tokens=200"];
    let mut killed = start(&source, &target, &hold, &[]);
    wait_until("a first part", || {
        assert!(
            killed.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        target.count("parts") > 0
    });
    killed.kill().unwrap(); // SIGKILL
    killed.wait().unwrap();
    let committed_before = target.count("parts") as u64;

    let started = Instant::now();
    let rerun = run_command(&source, &target, &hold, &[]).output().unwrap();
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    assert_eq!(
        count_before(&rerun, "skipped") + processed(&rerun),
        9,
        "{}",
        text(&rerun)
    );
    assert!(committed_before <= count_before(&rerun, "skipped"));
    assert!(count_before(&rerun, "taken over") >= 1, "{}", text(&rerun));
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the rerun waited {:?}",
        started.elapsed()
    );
    assert_every_row_once(&source, &target);
}

/// Case 3: a run that holds a document (its render hangs on doc-0, a test hook) is stopped with
/// SIGSTOP; a second run takes doc-0 over after the hold and finishes everything. Continued,
/// the first run commits nothing for doc-0 and says so.
fn stopped_past_its_hold(target: Target) {
    let source = corpus();
    let sets = [
        "--set",
        "sink.hold_s=2",
        "--set",
        "render.timeout_s=4",
        "--set",
        "render.workers=1",
    ];
    let hang = [(
        docpipe_render::worker::FAULT_ENV.to_owned(),
        "hang:doc-0.pdf".to_owned(),
    )];
    let stalled = start(&source, &target, &sets, &hang);
    wait_until("the first run's claims", || {
        target.count("_claims/docs") > 0
    });
    signal("-STOP", &stalled);

    let taker = run_command(&source, &target, &sets, &[]).output().unwrap();
    assert_eq!(taker.status.code(), Some(0), "{}", text(&taker));
    assert!(count_before(&taker, "taken over") >= 1, "{}", text(&taker));

    signal("-CONT", &stalled);
    let stalled = stalled.wait_with_output().unwrap();
    assert_eq!(stalled.status.code(), Some(0), "{}", text(&stalled));
    assert!(
        count_before(&stalled, "lost to other runs") >= 1,
        "{}",
        text(&stalled)
    );
    assert!(
        String::from_utf8_lossy(&stalled.stderr).contains("while this run was stalled"),
        "{}",
        text(&stalled)
    );
    // doc-0 comes from the run that took it over: answered, not the stalled run's timeouts.
    assert_every_row_once(&source, &target);
}

fn signal(signal: &str, child: &Child) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

/// Each case as two tests, `CASE::local` and `CASE::s3`.
macro_rules! on_each_store {
    ($($case:ident),+ $(,)?) => {
        $(
            mod $case {
                #[test]
                fn local() {
                    super::$case(super::Target::local());
                }

                #[test]
                fn s3() {
                    super::$case(super::Target::s3());
                }
            }
        )+
    };
}

on_each_store!(
    runs_started_together,
    killed_and_rerun_at_once,
    stopped_past_its_hold
);
