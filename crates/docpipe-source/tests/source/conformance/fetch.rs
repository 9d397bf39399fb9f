//! Fetching a listed document as a local file for the render workers: the listed version or
//! nothing, and a clear error for a document that is gone.

use std::sync::Arc;

use docpipe_source::{list_documents, FetchError, Fetcher, ListingSpec, SourceSpec};
use docpipe_testkit::{Backend, TestStore};

use super::{document_uri, upload};

async fn fetches_the_listed_version(store: &TestStore) {
    upload(store, &[("in/a.pdf", "a"), ("in/b.pdf", "bbb")]).await;
    let spec = SourceSpec::Listing(ListingSpec::new(store.url("in/")));
    let docs = list_documents(&spec, store.stores(), None).await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::with_temp_dir(Arc::clone(store.stores()), tmp.path());
    let copy = fetcher.fetch(&docs[1]).await.unwrap();
    assert_eq!(std::fs::read(copy.path()).unwrap(), b"bbb");

    // The object changes after listing.
    upload(store, &[("in/b.pdf", "changed")]).await;
    if store.backend() == Backend::File {
        // Local documents are used in place, never copied, so there is no version to hold
        // the read to: the file is read as it is when rendered.
        assert_eq!(copy.path(), store.local_path("in/b.pdf").unwrap());
        assert!(!copy.is_temporary());
        let again = fetcher.fetch(&docs[1]).await.unwrap();
        assert_eq!(std::fs::read(again.path()).unwrap(), b"changed");
    } else {
        // Remote documents are downloaded to a temporary copy that keeps the extension and is
        // deleted with it; the listed version can no longer be fetched.
        assert!(copy.is_temporary());
        assert_eq!(copy.extension().unwrap(), "pdf");
        let copied = copy.path().to_path_buf();
        drop(copy);
        assert!(!copied.exists(), "temporary copy outlived its LocalCopy");
        let err = fetcher.fetch(&docs[1]).await.unwrap_err();
        assert!(matches!(err, FetchError::Changed { .. }), "{err}");
    }

    let mut gone = docs[0].clone();
    gone.uri = document_uri(store, "in/gone.pdf");
    let err = fetcher.fetch(&gone).await.unwrap_err();
    assert!(matches!(err, FetchError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("gone.pdf"), "{err}");
}

docpipe_testkit::conformance_tests!(fetches_the_listed_version);
