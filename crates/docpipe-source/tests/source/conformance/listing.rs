//! Listing a folder or prefix: recursive, restricted to the prefix, filtered by include globs
//! (`*` does not cross `/`, extensions ignore case), sorted by URI, each document with its
//! version and size, and split between shards without overlap.

use docpipe_core::{DocumentRef, Shard};
use docpipe_source::{list_documents, ListingSpec, SourceSpec};
use docpipe_testkit::TestStore;

use super::{document_uri, upload};

async fn list(store: &TestStore, spec: ListingSpec, shard: Option<Shard>) -> Vec<DocumentRef> {
    list_documents(&SourceSpec::Listing(spec), store.stores(), shard)
        .await
        .unwrap()
}

async fn lists_a_prefix_with_globs(store: &TestStore) {
    upload(
        store,
        &[
            ("in/b.pdf", "bbb"),
            ("in/a.pdf", "a"),
            ("in/sub/c.PDF", "cc"),
            ("in/readme.txt", "x"),
            ("other/d.pdf", "d"),
        ],
    )
    .await;
    let spec = ListingSpec::new(store.url("in/")).with_extensions(&["pdf"]);
    let docs = list(store, spec, None).await;
    let uris: Vec<&str> = docs.iter().map(|d| d.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            document_uri(store, "in/a.pdf"),
            document_uri(store, "in/b.pdf"),
            document_uri(store, "in/sub/c.PDF"),
        ]
    );
    assert_eq!(docs[1].size, Some(3));
    assert!(docs.iter().all(|d| d.version.is_some()));
}

/// Five files under `tree/`, each holding its own name.
async fn tree(store: &TestStore) -> ListingSpec {
    for file in ["b.pdf", "a.pdf", "notes.txt", "sub/c.pdf", "sub/deep/D.PDF"] {
        store.put(&format!("tree/{file}"), file).await;
    }
    ListingSpec::new(store.url("tree/"))
}

/// The documents' paths below `tree/`.
fn names(store: &TestStore, docs: &[DocumentRef]) -> Vec<String> {
    let root = format!("{}/", document_uri(store, "tree"));
    docs.iter()
        .map(|d| d.uri.strip_prefix(&root).unwrap().to_owned())
        .collect()
}

async fn lists_recursively_sorted_with_versions(store: &TestStore) {
    let spec = ListingSpec {
        include: vec!["**/*.pdf".into()],
        ..tree(store).await
    };
    let docs = list(store, spec, None).await;
    let names = names(store, &docs);
    assert_eq!(names, ["a.pdf", "b.pdf", "sub/c.pdf"]);
    for (doc, name) in docs.iter().zip(&names) {
        assert!(doc.version.as_deref().is_some_and(|v| !v.is_empty()));
        let expected = store.read(&format!("tree/{name}")).await.len() as u64;
        assert_eq!(doc.size, Some(expected));
    }
}

async fn star_does_not_cross_folders_and_extensions_ignore_case(store: &TestStore) {
    let all = tree(store).await;
    let top = ListingSpec {
        include: vec!["*.pdf".into()],
        ..all.clone()
    };
    let docs = list(store, top, None).await;
    assert_eq!(names(store, &docs), ["a.pdf", "b.pdf"]);

    let any_case = all.with_extensions(&["pdf"]);
    let docs = list(store, any_case, None).await;
    assert_eq!(
        names(store, &docs),
        ["a.pdf", "b.pdf", "sub/c.pdf", "sub/deep/D.PDF"]
    );
}

async fn shards_split_the_listing(store: &TestStore) {
    let spec = tree(store).await;
    let all = list(store, spec.clone(), None).await;
    let mut union = Vec::new();
    for index in 0..2 {
        let shard = Shard::new(index, 2).unwrap();
        let part = list(store, spec.clone(), Some(shard)).await;
        assert!(part.iter().all(|d| shard.owns(&d.uri)));
        union.extend(part);
    }
    union.sort_by(|a, b| a.uri.cmp(&b.uri));
    assert_eq!(union, all);
}

docpipe_testkit::conformance_tests!(
    lists_a_prefix_with_globs,
    lists_recursively_sorted_with_versions,
    star_does_not_cross_folders_and_extensions_ignore_case,
    shards_split_the_listing,
);
