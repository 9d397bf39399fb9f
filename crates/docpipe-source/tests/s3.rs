//! Listing, manifests and fetching against a local S3 server (moto; `make setup` installs it).

use std::sync::Arc;

use docpipe_source::{
    list_documents, FetchError, Fetcher, ListingSpec, ManifestSpec, SourceError, SourceSpec,
};
use docpipe_store::object_store::path::Path;
use docpipe_store::object_store::{ObjectStore, ObjectStoreExt};
use docpipe_store::{StoreOptions, Stores};
use docpipe_testkit::MotoServer;

const BUCKET: &str = "docs";

async fn upload(store: &Arc<dyn ObjectStore>, files: &[(&str, &str)]) {
    for (key, body) in files {
        store
            .put(&Path::from(*key), body.to_string().into())
            .await
            .unwrap();
    }
}

fn server() -> (MotoServer, Arc<Stores>) {
    let moto = MotoServer::start(BUCKET).expect("moto S3 server");
    let stores = Arc::new(Stores::new(moto.store_options()));
    (moto, stores)
}

#[tokio::test]
async fn lists_a_prefix_with_globs_and_fetches_documents() {
    let (_moto, stores) = server();
    let bucket = stores.open("s3://docs/").unwrap();
    upload(
        bucket.store(),
        &[
            ("in/b.pdf", "bbb"),
            ("in/a.pdf", "a"),
            ("in/sub/c.PDF", "cc"),
            ("in/readme.txt", "x"),
            ("other/d.pdf", "d"),
        ],
    )
    .await;
    let spec = SourceSpec::Listing(ListingSpec::new("s3://docs/in/").with_extensions(&["pdf"]));
    let docs = list_documents(&spec, &stores, None).await.unwrap();
    let uris: Vec<&str> = docs.iter().map(|d| d.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            "s3://docs/in/a.pdf",
            "s3://docs/in/b.pdf",
            "s3://docs/in/sub/c.PDF"
        ]
    );
    assert_eq!(docs[1].size, Some(3));
    assert!(docs.iter().all(|d| d.version.is_some()));

    let tmp = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::with_temp_dir(Arc::clone(&stores), tmp.path());
    let copy = fetcher.fetch(&docs[1]).await.unwrap();
    assert_eq!(std::fs::read(copy.path()).unwrap(), b"bbb");

    // The object changes after listing: the listed version can no longer be fetched.
    upload(bucket.store(), &[("in/b.pdf", "changed")]).await;
    let err = fetcher.fetch(&docs[1]).await.unwrap_err();
    assert!(matches!(err, FetchError::Changed { .. }), "{err}");
    let mut gone = docs[0].clone();
    gone.uri = "s3://docs/in/gone.pdf".into();
    let err = fetcher.fetch(&gone).await.unwrap_err();
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn manifest_on_s3_resolves_relative_entries_and_versions() {
    let (_moto, stores) = server();
    let bucket = stores.open("s3://docs/").unwrap();
    upload(
        bucket.store(),
        &[
            ("m/files/a.pdf", "aaaa"),
            (
                "m/manifest.jsonl",
                "{\"uri\": \"files/a.pdf\", \"id\": \"A\"}\n{\"uri\": \"s3://docs/m/files/none.pdf\", \"id\": \"B\"}\n",
            ),
        ],
    )
    .await;
    let spec = SourceSpec::Manifest(ManifestSpec {
        key_columns: vec!["id".into()],
        ..ManifestSpec::new("s3://docs/m/manifest.jsonl")
    });
    let docs = list_documents(&spec, &stores, None).await.unwrap();
    assert_eq!(docs[0].uri, "s3://docs/m/files/a.pdf");
    assert_eq!(docs[0].size, Some(4));
    assert!(docs[0].version.is_some());
    assert_eq!(docs[0].keys.get("id").map(String::as_str), Some("A"));
    assert_eq!(
        docs[1].version, None,
        "a missing object is listed without a version"
    );
}

#[tokio::test]
async fn missing_bucket_and_unreachable_endpoint_are_clear_errors() {
    let (_moto, stores) = server();
    let spec = SourceSpec::Listing(ListingSpec::new("s3://no-such-bucket/in/"));
    let err = list_documents(&spec, &stores, None).await.unwrap_err();
    assert!(matches!(err, SourceError::List { .. }), "{err}");
    assert!(err.to_string().contains("s3://no-such-bucket/in/"), "{err}");

    // Nothing listens on a port that was just released: connections are refused, retried a
    // bounded number of times with the quick test settings, then reported.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = StoreOptions::quick()
        .with_config("aws_endpoint_url", format!("http://127.0.0.1:{port}"))
        .with_config("aws_allow_http", "true")
        .with_config("aws_region", "us-east-1")
        .with_config("aws_access_key_id", "testing")
        .with_config("aws_secret_access_key", "testing");
    let unreachable = Stores::new(options);
    let spec = SourceSpec::Listing(ListingSpec::new("s3://docs/in/"));
    let err = list_documents(&spec, &unreachable, None).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, SourceError::List { .. }), "{message}");
    assert!(message.contains("s3://docs/in/"), "{message}");
    assert!(
        !message.contains("testing"),
        "credentials leaked: {message}"
    );
}
