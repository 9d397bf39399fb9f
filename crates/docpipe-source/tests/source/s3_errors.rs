//! Errors only a remote store has: a bucket that does not exist, and an endpoint nothing
//! listens on (retried a bounded number of times, reported without credentials).

use docpipe_source::{list_documents, ListingSpec, SourceError, SourceSpec};
use docpipe_store::Stores;
use docpipe_testkit::{unreachable_s3_options, MotoServer};

#[tokio::test]
async fn missing_bucket_and_unreachable_endpoint_are_clear_errors() {
    let moto = MotoServer::start("docs").expect("moto S3 server");
    let stores = Stores::new(moto.store_options());
    let spec = SourceSpec::Listing(ListingSpec::new("s3://no-such-bucket/in/"));
    let err = list_documents(&spec, &stores, None).await.unwrap_err();
    assert!(matches!(err, SourceError::List { .. }), "{err}");
    assert!(err.to_string().contains("s3://no-such-bucket/in/"), "{err}");

    // Nothing listens on a port that was just released: connections are refused, retried a
    // bounded number of times with the quick test settings, then reported.
    let unreachable = Stores::new(unreachable_s3_options().unwrap());
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
