//! Hub ids resolved against the test hub (docpipe-testkit's `HubServer`) serving the tiny
//! fixture checkpoints, with the cache in a temporary folder.

use std::path::{Path, PathBuf};

use docpipe_hub::{resolve_with, Checkpoint, HubError, ModelSource, Settings};
use docpipe_testkit::{HubRepo, HubRequest, HubServer};

const MAIN: &str = "1111111111111111111111111111111111111111";
const V1: &str = "2222222222222222222222222222222222222222";
const REPO: &str = "docpipe/tiny-llama3";

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

/// The sharded Idefics3 fixture (three shards) on `main`, the unsharded one on `v1`, and files
/// docpipe must not fetch.
fn tiny_repo() -> HubRepo {
    HubRepo::new(REPO)
        .commit(MAIN, "main", &fixture("idefics3/models/tiny-llama3"))
        .unwrap()
        .commit(V1, "v1", &fixture("idefics3/models/tiny-nosplit"))
        .unwrap()
        .with_file(MAIN, "pytorch_model.bin", vec![0u8; 4096])
        .with_file(MAIN, "README.md", "# tiny")
}

fn settings(hub: &str, cache: &Path) -> Settings {
    Settings {
        endpoint: hub.to_owned(),
        hub_cache: cache.to_owned(),
        ..Settings::from_vars(|_| None)
    }
}

fn hub_source(location: &str) -> ModelSource {
    let source = ModelSource::parse(location).unwrap();
    assert!(matches!(source, ModelSource::Hub { .. }), "{location}");
    source
}

fn resolve(location: &str, settings: &Settings) -> Result<Checkpoint, HubError> {
    resolve_with(&hub_source(location), settings)
}

/// The requests made since the log had `since` entries.
fn new_requests(hub: &HubServer, since: usize) -> Vec<HubRequest> {
    hub.requests()[since..].to_vec()
}

/// Every file of `folder` that docpipe reads is in `dir` with the same bytes; `dir` holds
/// nothing else.
fn assert_same_checkpoint(dir: &Path, folder: &Path) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    for name in names {
        assert_eq!(
            std::fs::read(dir.join(&name)).unwrap(),
            std::fs::read(folder.join(&name)).unwrap(),
            "{name}"
        );
    }
}

fn repo_cache(cache: &Path) -> PathBuf {
    cache.join("models--docpipe--tiny-llama3")
}

#[test]
fn first_download_fetches_what_the_checkpoint_needs_into_the_python_layout() {
    let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let checkpoint = resolve(REPO, &settings(&hub.endpoint(), cache.path())).unwrap();
    assert_eq!(
        checkpoint.model_id(),
        Some(format!("{REPO}@{MAIN}").as_str())
    );
    assert_eq!(
        checkpoint.dir(),
        repo_cache(cache.path()).join("snapshots").join(MAIN)
    );
    assert_same_checkpoint(checkpoint.dir(), &fixture("idefics3/models/tiny-llama3"));
    assert_eq!(
        std::fs::read_to_string(repo_cache(cache.path()).join("refs/main")).unwrap(),
        MAIN
    );
    // Snapshot entries are relative links into blobs/, as huggingface_hub makes them.
    let link = std::fs::read_link(checkpoint.dir().join("config.json")).unwrap();
    assert!(link.starts_with("../../blobs"), "{}", link.display());
    for request in hub.requests() {
        assert!(
            !request.path.ends_with("pytorch_model.bin") && !request.path.ends_with("README.md"),
            "{request:?}"
        );
    }
}

#[test]
fn a_second_resolution_downloads_nothing_and_a_pinned_commit_asks_nothing() {
    let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let settings = settings(&hub.endpoint(), cache.path());
    let first = resolve(REPO, &settings).unwrap();
    assert!(hub.requests().iter().any(HubRequest::is_download));

    let before = hub.requests().len();
    let second = resolve(REPO, &settings).unwrap();
    assert_eq!(second, first);
    let requests = new_requests(&hub, before);
    assert_eq!(requests.len(), 1, "only the model info: {requests:?}");
    assert_eq!(
        requests[0].path,
        format!("/api/models/{REPO}/revision/main")
    );

    let before = hub.requests().len();
    let pinned = resolve(&format!("{REPO}@{MAIN}"), &settings).unwrap();
    assert_eq!(pinned, first);
    assert_eq!(new_requests(&hub, before), []);
}

#[test]
fn a_pinned_branch_resolves_to_its_commit() {
    let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let checkpoint = resolve(
        &format!("{REPO}@v1"),
        &settings(&hub.endpoint(), cache.path()),
    )
    .unwrap();
    assert_eq!(checkpoint.model_id(), Some(format!("{REPO}@{V1}").as_str()));
    assert_same_checkpoint(checkpoint.dir(), &fixture("idefics3/models/tiny-nosplit"));
    assert_eq!(
        std::fs::read_to_string(repo_cache(cache.path()).join("refs/v1")).unwrap(),
        V1
    );
}

#[test]
fn offline_mode_uses_the_cache_alone() {
    let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let online = resolve(REPO, &settings(&hub.endpoint(), cache.path())).unwrap();
    drop(hub);

    let offline = Settings {
        offline: true,
        ..settings("http://127.0.0.1:9", cache.path())
    };
    assert_eq!(resolve(REPO, &offline).unwrap(), online);
    let error = resolve(&format!("{REPO}@v1"), &offline).unwrap_err();
    assert!(
        matches!(&error, HubError::NotCached { file, .. } if file == "config.json"),
        "{error}"
    );

    let empty = tempfile::tempdir().unwrap();
    let error = resolve(
        REPO,
        &Settings {
            offline: true,
            ..settings("http://127.0.0.1:9", empty.path())
        },
    )
    .unwrap_err();
    assert!(error.is_usage());
    let message = error.to_string();
    assert!(
        message.contains("docpipe/tiny-llama3@main")
            && message.contains("config.json")
            && message.contains("HF_HUB_OFFLINE"),
        "{message}"
    );
}

#[test]
fn an_interrupted_download_resumes_where_it_stopped() {
    let shard = "model-00001-of-00003.safetensors";
    let size = std::fs::metadata(fixture("idefics3/models/tiny-llama3").join(shard))
        .unwrap()
        .len();
    let half = size as usize / 2;
    let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
    hub.cut_next_download(shard, half);
    let cache = tempfile::tempdir().unwrap();
    let checkpoint = resolve(REPO, &settings(&hub.endpoint(), cache.path())).unwrap();
    assert_same_checkpoint(checkpoint.dir(), &fixture("idefics3/models/tiny-llama3"));
    let downloads: Vec<HubRequest> = hub
        .requests()
        .into_iter()
        .filter(|r| r.is_download() && r.path.starts_with("/lfs/"))
        .collect();
    let sent: Vec<u64> = downloads.iter().map(|r| r.bytes).collect();
    let cut = downloads
        .iter()
        .position(|r| r.bytes == half as u64)
        .unwrap_or_else(|| panic!("no cut download among {downloads:?}"));
    let resumed = &downloads[cut + 1];
    assert_eq!(resumed.path, downloads[cut].path);
    assert_eq!(
        resumed.range,
        Some(format!("bytes={half}-")),
        "{:#?}",
        hub.requests()
    );
    assert_eq!(resumed.bytes, size - half as u64, "{sent:?}");
}

#[test]
fn a_partial_file_left_by_a_killed_process_is_resumed() {
    let folder = fixture("idefics3/models/tiny-nosplit");
    let bytes = std::fs::read(folder.join("model.safetensors")).unwrap();
    let sha256 = sha256_hex(&bytes);
    let cache = tempfile::tempdir().unwrap();
    let blobs = repo_cache(cache.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let kept = 1000;
    std::fs::write(blobs.join(format!("{sha256}.part")), &bytes[..kept]).unwrap();

    let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
    let checkpoint = resolve(
        &format!("{REPO}@v1"),
        &settings(&hub.endpoint(), cache.path()),
    )
    .unwrap();
    assert_same_checkpoint(checkpoint.dir(), &folder);
    let weights: Vec<HubRequest> = hub
        .requests()
        .into_iter()
        .filter(|r| r.is_download() && r.path == format!("/lfs/{sha256}"))
        .collect();
    assert_eq!(weights.len(), 1, "{weights:?}");
    assert_eq!(weights[0].range, Some(format!("bytes={kept}-")));
    assert_eq!(weights[0].bytes, (bytes.len() - kept) as u64);
}

/// A process killed after the last byte but before the rename left a complete `.part`: it is
/// checked and kept, not asked for again (the hub refuses a range past the end).
#[test]
fn a_complete_partial_file_is_kept_without_a_download() {
    let folder = fixture("idefics3/models/tiny-nosplit");
    let bytes = std::fs::read(folder.join("model.safetensors")).unwrap();
    let sha256 = sha256_hex(&bytes);
    let cache = tempfile::tempdir().unwrap();
    let blobs = repo_cache(cache.path()).join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(format!("{sha256}.part")), &bytes).unwrap();

    let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
    let settings = settings(&hub.endpoint(), cache.path());
    let checkpoint = resolve(&format!("{REPO}@v1"), &settings).unwrap();
    assert_same_checkpoint(checkpoint.dir(), &folder);
    assert!(!blobs.join(format!("{sha256}.part")).exists());
    assert!(!hub
        .requests()
        .iter()
        .any(|r| r.is_download() && r.path == format!("/lfs/{sha256}")));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn corrupted_downloads_are_detected_and_leave_nothing_behind() {
    for (file, hash) in [
        ("model-00002-of-00003.safetensors", "sha256"),
        ("tokenizer.json", "git blob"),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
        hub.corrupt(file);
        let error = resolve(REPO, &settings(&hub.endpoint(), cache.path())).unwrap_err();
        assert!(
            matches!(&error, HubError::Corrupt { file: f, .. } if f == file),
            "{error}"
        );
        assert!(!error.is_usage());
        let message = error.to_string();
        assert!(
            message.contains(hash) && message.contains(REPO),
            "{message}"
        );
        let snapshot = repo_cache(cache.path()).join("snapshots").join(MAIN);
        assert!(std::fs::symlink_metadata(snapshot.join(file)).is_err());
        for entry in std::fs::read_dir(repo_cache(cache.path()).join("blobs")).unwrap() {
            let path = entry.unwrap().path();
            assert!(
                path.extension().is_none_or(|e| e == "lock"),
                "left behind: {}",
                path.display()
            );
        }
        // Served correctly, the same cache completes.
        let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
        let checkpoint = resolve(REPO, &settings(&hub.endpoint(), cache.path())).unwrap();
        assert_same_checkpoint(checkpoint.dir(), &fixture("idefics3/models/tiny-llama3"));
    }
}

#[test]
fn hub_errors_name_the_repo_revision_and_file() {
    let folder = tempfile::tempdir().unwrap();
    let tiny = fixture("idefics3/models/tiny-llama3");
    for entry in std::fs::read_dir(&tiny).unwrap() {
        let path = entry.unwrap().path();
        if !path.ends_with("model-00003-of-00003.safetensors") {
            std::fs::copy(&path, folder.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    let hub = HubServer::start(
        vec![
            tiny_repo(),
            HubRepo::new("docpipe/gated")
                .commit(MAIN, "main", &tiny)
                .unwrap()
                .gated(),
            HubRepo::new("docpipe/no-shard")
                .commit(MAIN, "main", folder.path())
                .unwrap(),
        ],
        Some("hf_test_token"),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let settings = settings(&hub.endpoint(), cache.path());
    let cases = [
        ("docpipe/missing", "RepoNotFound", "docpipe/missing@main"),
        (
            "docpipe/tiny-llama3@v9",
            "RevisionNotFound",
            "docpipe/tiny-llama3@v9",
        ),
        ("docpipe/gated", "AccessDenied", "HF_TOKEN"),
        (
            "docpipe/no-shard",
            "FileNotFound",
            "model-00003-of-00003.safetensors",
        ),
    ];
    for (location, kind, named) in cases {
        let error = resolve(location, &settings).unwrap_err();
        assert!(
            format!("{error:?}").starts_with(kind),
            "{location}: {error:?}"
        );
        assert!(error.is_usage(), "{location}: {error}");
        let message = error.to_string();
        assert!(message.contains(named), "{location}: {message}");
        assert!(!message.contains('\n'), "{message}");
    }

    let with_token = Settings {
        token: Some("hf_test_token".into()),
        ..settings.clone()
    };
    let gated = resolve("docpipe/gated", &with_token).unwrap();
    assert_eq!(
        gated.model_id(),
        Some(format!("docpipe/gated@{MAIN}").as_str())
    );
}

#[test]
fn an_unreachable_hub_is_not_a_configuration_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let error = resolve(
        REPO,
        &settings(&format!("http://127.0.0.1:{port}"), cache.path()),
    )
    .unwrap_err();
    assert!(matches!(error, HubError::Unreachable { .. }), "{error:?}");
    assert!(!error.is_usage());
    assert!(error.to_string().contains(REPO), "{error}");
}

/// `fixtures/hub-cache` was written by Python's `huggingface_hub` (fixtures/make_hub_cache.py):
/// docpipe uses it as it is, with one request online and none offline.
#[test]
fn a_cache_written_by_huggingface_hub_is_used_as_is() {
    let python_cache = fixture("hub-cache");
    let repo_dir = python_cache.join("models--docpipe--tiny-llama3");
    let commit = std::fs::read_to_string(repo_dir.join("refs/main")).unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_tree(&python_cache, copy.path());

    let hub = HubServer::start(
        vec![HubRepo::new(REPO)
            .commit(&commit, "main", &fixture("idefics3/models/tiny-llama3"))
            .unwrap()],
        None,
    )
    .unwrap();
    let online = resolve(REPO, &settings(&hub.endpoint(), copy.path())).unwrap();
    assert_eq!(online.model_id(), Some(format!("{REPO}@{commit}").as_str()));
    assert_eq!(
        online.dir(),
        copy.path()
            .join("models--docpipe--tiny-llama3/snapshots")
            .join(&commit)
    );
    assert_eq!(hub.requests().len(), 1, "{:?}", hub.requests());
    assert_same_checkpoint(online.dir(), &fixture("idefics3/models/tiny-llama3"));

    let offline = Settings {
        offline: true,
        ..settings("http://127.0.0.1:9", &python_cache)
    };
    let checkpoint = resolve(REPO, &offline).unwrap();
    assert_eq!(checkpoint.model_id(), online.model_id());
    assert_same_checkpoint(checkpoint.dir(), &fixture("idefics3/models/tiny-llama3"));
}

/// Copies a folder, keeping symlinks as symlinks.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
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

#[test]
fn a_link_whose_blob_was_deleted_is_downloaded_again() {
    let hub = HubServer::start(vec![tiny_repo()], None).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let settings = settings(&hub.endpoint(), cache.path());
    let checkpoint = resolve(REPO, &settings).unwrap();
    let shard = checkpoint.dir().join("model-00003-of-00003.safetensors");
    std::fs::remove_file(shard.canonicalize().unwrap()).unwrap();
    assert!(!shard.exists());
    let before = hub.requests().len();
    assert_eq!(resolve(REPO, &settings).unwrap(), checkpoint);
    assert_same_checkpoint(checkpoint.dir(), &fixture("idefics3/models/tiny-llama3"));
    let downloads: Vec<HubRequest> = new_requests(&hub, before)
        .into_iter()
        .filter(HubRequest::is_download)
        .collect();
    assert_eq!(downloads.len(), 1, "{downloads:?}");
}
