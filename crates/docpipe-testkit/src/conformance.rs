//! [`conformance_tests!`]: one storage conformance suite for every backend.
//!
//! Storage code is only as portable as its tests: a body written for a local folder and
//! another written for S3 drift apart, and a backend-specific assumption (paths are files,
//! listing a missing prefix fails, conditional puts work) hides in whichever body lacks the
//! other's case. So each behaviour is written once, as `async fn behaviour(store: &TestStore)`
//! naming every object by [`TestStore::url`], and this macro turns it into one test per
//! backend, as object_store's own `integration` module does for its stores. Where docpipe
//! deliberately differs by backend (local documents are read in place), the body asks
//! [`TestStore::backend`] and says why.

#[cfg(doc)]
use crate::TestStore;

/// For each behaviour `async fn name(store: &TestStore)` of the calling module, defines the
/// tests `file::name`, `memory::name` and `s3::name`, each on a fresh [`TestStore`] of that
/// backend. Per-behaviour tests (rather than one test per backend running them all) name the
/// failing behaviour and backend, and give each its own empty store.
///
/// The calling crate needs `tokio` (for `#[tokio::test]`).
///
/// [`TestStore`]: crate::TestStore
#[macro_export]
macro_rules! conformance_tests {
    ($($behaviour:ident),+ $(,)?) => {
        $crate::conformance_tests!(@backend file File $($behaviour)+);
        $crate::conformance_tests!(@backend memory Memory $($behaviour)+);
        $crate::conformance_tests!(@backend s3 S3 $($behaviour)+);
    };
    (@backend $module:ident $backend:ident $($behaviour:ident)+) => {
        mod $module {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let store = $crate::TestStore::start($crate::Backend::$backend)
                        .expect("test store");
                    super::$behaviour(&store).await;
                }
            )+
        }
    };
}
