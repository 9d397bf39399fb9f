//! End-to-end tests of sharded runs (docs/scale.md): N `docpipe run` processes against one S3 sink
//! (moto), one of them SIGKILLed and rerun, then `docpipe commit`.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use docpipe_core::shard_of;
use docpipe_sink::DatasetManifest;
use docpipe_store::object_store::ObjectStoreExt;
use docpipe_store::{StoreOptions, Stores};
use docpipe_testkit::MotoServer;

use crate::support::{
    assert_exactly_once, assert_usage_error, command, docpipe, fixture, page_count, rows_at,
    runtime, text, DEMO_QUERIES,
};

const SHARDS: u32 = 3;
const BUCKET: &str = "shards";
const FIXTURES: [&str; 3] = ["form.pdf", "scan.pdf", "wide.pdf"];

fn sink() -> String {
    format!("s3://{BUCKET}/out/")
}

/// Scheduler variables that must not leak in from the environment the tests run in.
const SCHEDULER_VARS: [&str; 6] = [
    "JOB_COMPLETION_INDEX",
    "DOCPIPE_SHARDS",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "AWS_BATCH_JOB_ARRAY_INDEX",
    "AWS_BATCH_JOB_ARRAY_SIZE",
];

/// `docpipe run` of the demo pipeline over `s3://shards/in/`, one document per part. Batches of
/// about one request, so that a shard's documents finish one after another (tens of ms apart)
/// and it can be killed between its first part and its last: with continuous batching and the
/// default budget, they all finish within a few ms.
fn run_command(shard_args: &[&str], env: &[(String, String)]) -> Command {
    let mut command = command(["run", "pipelines/demo.toml"]);
    for var in SCHEDULER_VARS {
        command.env_remove(var);
    }
    command
        .args(shard_args)
        .args([
            "--set",
            &format!("source.uri=s3://{BUCKET}/in/"),
            "--set",
            &format!("sink.uri={}", sink()),
            "--set",
            "sink.documents_per_part=1",
            "--set",
            "model.batch_tokens=200",
        ])
        .envs(env.iter().map(|(k, v)| (k, v)));
    command
}

/// Uploads copies of the fixture PDFs as `s3://shards/in/doc-<i>.pdf`; returns page counts by
/// URI.
fn upload(options: StoreOptions, documents: usize) -> HashMap<String, u32> {
    let location = Stores::new(options)
        .open(&format!("s3://{BUCKET}/in/"))
        .unwrap();
    let mut pages = HashMap::new();
    runtime().block_on(async {
        for i in 0..documents {
            let path = fixture("pdfs").join(FIXTURES[i % FIXTURES.len()]);
            let name = format!("doc-{i}.pdf");
            location
                .store()
                .put(&location.child(&name), std::fs::read(&path).unwrap().into())
                .await
                .unwrap();
            pages.insert(format!("s3://{BUCKET}/in/{name}"), page_count(&path));
        }
    });
    pages
}

/// Paths (relative to the sink) of the committed parts of `label` (`shard-1-of-3`).
fn parts_of(options: StoreOptions, label: &str) -> Vec<String> {
    let location = Stores::new(options).open(&sink()).unwrap();
    let prefix = format!("parts/{label}-");
    let listing = runtime()
        .block_on(
            location
                .store()
                .list_with_delimiter(Some(&location.child("parts"))),
        )
        .unwrap();
    let mut parts: Vec<String> = listing
        .objects
        .iter()
        .filter_map(|object| location.relative(&object.location))
        .filter(|path| path.starts_with(&prefix))
        .collect();
    parts.sort_unstable();
    parts
}

/// SIGKILLs `child` as soon as it has committed its first part; returns how many it committed.
fn kill_after_first_part(mut child: Child, options: &StoreOptions, label: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(600);
    while parts_of(options.clone(), label).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no part from {label} in 10 minutes"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{label} ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    parts_of(options.clone(), label).len()
}

#[test]
fn killed_shard_is_named_by_commit_then_rerun_and_committed_exactly_once() {
    let moto = MotoServer::start(BUCKET).expect("moto (run `make setup`)");
    let options = moto.store_options();
    let pages = upload(options.clone(), 10);
    // The victim must own several documents, so that it can be killed after its first part.
    let owned = |index: u32| {
        pages
            .keys()
            .filter(|uri| shard_of(uri, SHARDS) == index)
            .count()
    };
    // Computed independently (Python FNV-1a 64): the assignment never changes.
    assert_eq!(
        (owned(0), owned(1), owned(2)),
        (5, 4, 1),
        "fixed assignment"
    );

    // Shards 0 and 2 by flag; shard 1 the way a Kubernetes Indexed Job starts it.
    let mut env = moto.env();
    let survivors: Vec<Child> = [0, 2]
        .into_iter()
        .map(|i| {
            run_command(&["--shard", &format!("{i}/{SHARDS}")], &env)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    env.push(("JOB_COMPLETION_INDEX".into(), "1".into()));
    env.push(("DOCPIPE_SHARDS".into(), SHARDS.to_string()));
    let victim = run_command(&[], &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let committed_before = kill_after_first_part(victim, &options, "shard-1-of-3");
    assert!(
        (1..owned(1)).contains(&committed_before),
        "{committed_before} parts before the kill"
    );
    for child in survivors {
        let output = child.wait_with_output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    }

    let early = docpipe(&["commit", &sink()], &moto.env());
    assert_eq!(early.status.code(), Some(1), "{}", text(&early));
    let stderr = String::from_utf8_lossy(&early.stderr);
    assert!(stderr.contains("shard 1/3: missing"), "{}", text(&early));
    assert!(
        !stderr.contains("shard 0/3") && !stderr.contains("shard 2/3"),
        "{stderr}"
    );

    let rerun = run_command(&[], &env).output().unwrap();
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    assert!(
        String::from_utf8_lossy(&rerun.stdout).contains(&format!("{committed_before} skipped")),
        "{}",
        text(&rerun)
    );

    let commit = docpipe(&["commit", &sink()], &moto.env());
    assert_eq!(commit.status.code(), Some(0), "{}", text(&commit));
    let rows = rows_at(&sink(), options.clone());
    assert_exactly_once(&rows, &pages, DEMO_QUERIES);

    let manifest: DatasetManifest = runtime().block_on(async {
        let location = Stores::new(options.clone()).open(&sink()).unwrap();
        let bytes = location
            .store()
            .get(&location.child("manifest.json"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    });
    assert_eq!(manifest.shards, SHARDS);
    assert_eq!(manifest.rows, rows.len() as u64);
    assert_eq!(manifest.documents, pages.len() as u64);
    for (index, entry) in manifest.shard_manifests.iter().enumerate() {
        let label = format!("shard-{index}-of-{SHARDS}");
        let mut listed: Vec<&str> = entry.parts.iter().map(|p| p.path.as_str()).collect();
        listed.sort_unstable();
        assert_eq!(listed, parts_of(options.clone(), &label), "{label}");
        assert_eq!(entry.documents, owned(index as u32) as u64, "{label}");
    }
    let again = docpipe(&["commit", &sink()], &moto.env());
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("already exists"),
        "{}",
        text(&again)
    );
}

/// Flags, scheduler variables, and what the error must name.
type UsageCase<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn shard_options_are_checked_before_any_work() {
    let cases: [UsageCase; 4] = [
        (&["--shard", "3/3"], &[], "3/3"),
        (&[], &[("JOB_COMPLETION_INDEX", "1")], "DOCPIPE_SHARDS"),
        (
            &[],
            &[
                ("SLURM_ARRAY_TASK_ID", "4"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
            ],
            "SLURM_ARRAY_TASK_ID=4",
        ),
        (&["--shards", "4"], &[], "--shards"),
    ];
    for (args, vars, expected) in cases {
        let env: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let output = run_command(args, &env).output().unwrap();
        assert_usage_error(&output, expected, &format!("{args:?} {vars:?}"));
    }
}

#[test]
fn commit_usage_errors_exit_2() {
    let bad_url = docpipe(&["commit", "bogus://x/y", "--shards", "2"], &[]);
    assert_eq!(bad_url.status.code(), Some(2), "{}", text(&bad_url));
    let empty = tempfile::tempdir().unwrap();
    let unknown = docpipe(&["commit", empty.path().to_str().unwrap()], &[]);
    assert_eq!(unknown.status.code(), Some(2), "{}", text(&unknown));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("--shards"),
        "{}",
        text(&unknown)
    );
}
