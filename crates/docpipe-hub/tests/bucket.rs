//! Object-store prefixes resolved against moto's S3 (docpipe-testkit's shared `MotoServer`), through
//! a proxy that counts the requests.

use std::path::{Path, PathBuf};

use docpipe_hub::{resolve_with, Checkpoint, HubError, ModelSource, Settings};
use docpipe_store::object_store::ObjectStoreExt;
use docpipe_store::{StoreOptions, Stores};
use docpipe_testkit::{Fault, FaultPlan, FaultyProxy, MotoServer};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures")
        .join(rel)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A fresh bucket on the shared moto server.
fn bucket(name: &str) -> &'static MotoServer {
    let moto = MotoServer::shared().expect("moto (run `make setup`)");
    moto.create_bucket(name).unwrap();
    moto
}

fn upload(
    runtime: &tokio::runtime::Runtime,
    options: StoreOptions,
    url: &str,
    files: &[(String, Vec<u8>)],
) {
    let stores = Stores::new(options);
    let location = stores.open(url).unwrap();
    runtime.block_on(async {
        for (name, bytes) in files {
            location
                .store()
                .put(&location.child(name), bytes.clone().into())
                .await
                .unwrap();
        }
    });
}

fn folder_files(folder: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(folder)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect()
}

fn settings(cache: &Path, store: StoreOptions) -> Settings {
    Settings {
        bucket_cache: cache.to_owned(),
        store,
        ..Settings::from_vars(|_| None)
    }
}

fn resolve(url: &str, settings: &Settings) -> Result<Checkpoint, HubError> {
    let source = ModelSource::parse(url).unwrap();
    assert_eq!(source, ModelSource::Bucket(url.to_owned()));
    resolve_with(&source, settings)
}

/// Counts the requests that reach moto.
fn counting_proxy(runtime: &tokio::runtime::Runtime, moto: &MotoServer) -> FaultyProxy {
    let never = FaultPlan {
        fault: Fault::ServiceUnavailable,
        first: 0,
        every: None,
    };
    runtime
        .block_on(FaultyProxy::start(moto.address(), never))
        .unwrap()
}

#[test]
fn a_prefix_is_copied_once_and_a_rewritten_one_is_a_new_snapshot() {
    let moto = bucket("hub-copy");
    let runtime = runtime();
    let folder = fixture("idefics3/models/tiny-llama3");
    let mut files = folder_files(&folder);
    files.push(("pytorch_model.bin".into(), vec![0; 4096]));
    upload(
        &runtime,
        moto.store_options(),
        "s3://hub-copy/models/tiny/",
        &files,
    );
    let proxy = counting_proxy(&runtime, moto);
    let cache = tempfile::tempdir().unwrap();
    let settings = settings(cache.path(), proxy.store_options());

    let first = resolve("s3://hub-copy/models/tiny/", &settings).unwrap();
    let id = first.model_id().unwrap().to_owned();
    let hash = id.strip_prefix("s3://hub-copy/models/tiny@").unwrap();
    assert!(
        hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(first
        .dir()
        .starts_with(cache.path().join("s3/hub-copy/models/tiny/snapshots")));
    let mut names: Vec<String> = std::fs::read_dir(first.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = folder_files(&folder).into_iter().map(|(n, _)| n).collect();
    expected.sort();
    assert_eq!(names, expected);
    for name in &names {
        assert_eq!(
            std::fs::read(first.dir().join(name)).unwrap(),
            std::fs::read(folder.join(name)).unwrap(),
            "{name}"
        );
    }
    assert!(proxy.requests() > names.len());

    let before = proxy.requests();
    assert_eq!(
        resolve("s3://hub-copy/models/tiny/", &settings).unwrap(),
        first
    );
    assert_eq!(proxy.requests() - before, 1, "only the listing");

    upload(
        &runtime,
        moto.store_options(),
        "s3://hub-copy/models/tiny/",
        &[(
            "generation_config.json".into(),
            b"{\"eos_token_id\": 2}".to_vec(),
        )],
    );
    let rewritten = resolve("s3://hub-copy/models/tiny/", &settings).unwrap();
    assert_ne!(rewritten.model_id(), first.model_id());
    assert_ne!(rewritten.dir(), first.dir());
    assert_eq!(
        std::fs::read(rewritten.dir().join("generation_config.json")).unwrap(),
        b"{\"eos_token_id\": 2}"
    );
    // The old snapshot still holds the old file.
    assert_eq!(
        std::fs::read(first.dir().join("generation_config.json")).unwrap(),
        std::fs::read(folder.join("generation_config.json")).unwrap()
    );
}

#[test]
fn a_prefix_without_a_checkpoint_names_the_missing_file() {
    let moto = bucket("hub-partial");
    let runtime = runtime();
    let folder = fixture("idefics3/models/tiny-llama3");
    let files: Vec<_> = folder_files(&folder)
        .into_iter()
        .filter(|(name, _)| name != "model-00002-of-00003.safetensors")
        .collect();
    upload(
        &runtime,
        moto.store_options(),
        "s3://hub-partial/tiny/",
        &files,
    );
    let cache = tempfile::tempdir().unwrap();
    let settings = settings(cache.path(), moto.store_options());
    let error = resolve("s3://hub-partial/tiny/", &settings).unwrap_err();
    assert!(error.is_usage());
    let message = error.to_string();
    assert!(
        message.contains("s3://hub-partial/tiny") && message.contains("model-00002-of-00003"),
        "{message}"
    );
    let error = resolve("s3://hub-partial/nothing/", &settings).unwrap_err();
    assert!(
        matches!(&error, HubError::FileNotFound { file, .. } if file == "config.json"),
        "{error}"
    );
}

#[test]
fn an_unreachable_store_is_not_a_configuration_error() {
    let cache = tempfile::tempdir().unwrap();
    let settings = settings(
        cache.path(),
        docpipe_testkit::unreachable_s3_options().unwrap(),
    );
    let error = resolve("s3://nowhere/tiny/", &settings).unwrap_err();
    assert!(!error.is_usage(), "{error}");
    assert!(error.to_string().contains("s3://nowhere/tiny"), "{error}");
}

/// A copy cut short (a killed process) is completed with a range request from where it stopped:
/// the partial file is appended to, so a full download would leave a file too long to be kept.
#[test]
fn a_partial_copy_is_completed_from_where_it_stopped() {
    let moto = bucket("hub-resume");
    let runtime = runtime();
    let folder = fixture("idefics3/models/tiny-nosplit");
    upload(
        &runtime,
        moto.store_options(),
        "s3://hub-resume/tiny/",
        &folder_files(&folder),
    );
    let weights = std::fs::read(folder.join("model.safetensors")).unwrap();
    let stores = Stores::new(moto.store_options());
    let location = stores
        .open("s3://hub-resume/tiny/model.safetensors")
        .unwrap();
    let meta = runtime
        .block_on(location.store().head(location.prefix()))
        .unwrap();
    let blob: String = {
        use sha2::Digest;
        let key = format!("{}\0{}", meta.size, meta.e_tag.unwrap());
        sha2::Sha256::digest(key)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let cache = tempfile::tempdir().unwrap();
    let blobs = cache.path().join("s3/hub-resume/tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let part = blobs.join(format!("{blob}.part"));
    std::fs::write(&part, &weights[..weights.len() / 3]).unwrap();

    let checkpoint = resolve(
        "s3://hub-resume/tiny/",
        &settings(cache.path(), moto.store_options()),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(checkpoint.dir().join("model.safetensors")).unwrap(),
        weights
    );
    assert!(!part.exists());
    assert!(blobs.join(&blob).is_file());
}
