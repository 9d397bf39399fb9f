//! [`Stores`]: opens locations from URLs, one cached client per bucket or container, with
//! credentials, regions and endpoints from the environment only (never from pipeline files).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::{ClientConfigKey, ObjectStore, ObjectStoreScheme};
use url::Url;

use crate::location::{redact, to_url};
use crate::{Location, StoreError, StoreOptions};

/// Opens locations, reusing one client per bucket/container so that documents listed from a
/// manifest spanning many objects share connection pools and credentials.
///
/// `memory://` locations opened through the same `Stores` share one in-memory store.
#[derive(Debug, Default)]
pub struct Stores {
    options: StoreOptions,
    cache: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Stores {
    /// Opens stores with these client and retry settings; [`Stores::default`] uses
    /// [`StoreOptions::default`].
    pub fn new(options: StoreOptions) -> Self {
        Self {
            options,
            cache: Mutex::default(),
        }
    }

    /// The settings every remote store opened here gets.
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    /// Opens a location string: a local path or a URL (see [`to_url`]).
    pub fn open(&self, location: &str) -> Result<Location, StoreError> {
        self.open_url(&to_url(location)?)
    }

    /// Opens a URL, reusing the cached store of its scheme and authority (bucket, container, host).
    pub fn open_url(&self, url: &Url) -> Result<Location, StoreError> {
        let (scheme, prefix) =
            ObjectStoreScheme::parse(url).map_err(|source| StoreError::Open {
                url: redact(url),
                source: source.into(),
            })?;
        let key = format!("{}://{}", url.scheme(), url.authority());
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let store = match cache.get(&key) {
            Some(store) => Arc::clone(store),
            None => {
                let store = self.build(&scheme, url)?;
                cache.insert(key, Arc::clone(&store));
                store
            }
        };
        Ok(Location::new(store, prefix, url))
    }

    fn build(
        &self,
        scheme: &ObjectStoreScheme,
        url: &Url,
    ) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let options = &self.options;
        let connect_timeout = format!("{}ms", options.connect_timeout.as_millis());
        let timeout = format!("{}ms", options.request_timeout.as_millis());
        // Settings from the environment come first, then the explicit timeouts, then the
        // caller's overrides; keys meant for another provider are ignored, as in
        // `object_store::parse_url_opts`.
        macro_rules! remote {
            ($builder:ty, $key:ty) => {{
                let mut builder = <$builder>::from_env()
                    .with_url(url.as_str())
                    .with_retry(options.retry.clone())
                    .with_config(
                        <$key>::Client(ClientConfigKey::ConnectTimeout),
                        connect_timeout,
                    )
                    .with_config(<$key>::Client(ClientConfigKey::Timeout), timeout);
                for (key, value) in &options.config {
                    if let Ok(key) = key.parse::<$key>() {
                        builder = builder.with_config(key, value.clone());
                    }
                }
                let store = builder.build().map_err(|source| StoreError::Open {
                    url: redact(url),
                    source,
                })?;
                Arc::new(store) as Arc<dyn ObjectStore>
            }};
        }
        Ok(match scheme {
            ObjectStoreScheme::Local => Arc::new(LocalFileSystem::new()),
            ObjectStoreScheme::Memory => Arc::new(InMemory::new()),
            ObjectStoreScheme::AmazonS3 => remote!(AmazonS3Builder, AmazonS3ConfigKey),
            ObjectStoreScheme::GoogleCloudStorage => {
                remote!(GoogleCloudStorageBuilder, GoogleConfigKey)
            }
            ObjectStoreScheme::MicrosoftAzure => remote!(MicrosoftAzureBuilder, AzureConfigKey),
            _ => {
                return Err(StoreError::InvalidLocation {
                    location: redact(url),
                    reason: "unsupported scheme; use a local path or a file://, s3://, gs://, \
                             az:// or memory:// URL"
                        .into(),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use object_store::path::Path;
    use object_store::ObjectStoreExt;
    use parquet::arrow::async_reader::AsyncFileReader;

    use super::*;
    use crate::ParquetObjectFile;

    #[tokio::test]
    async fn local_paths_round_trip_through_urls() {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::default();
        let location = stores.open(dir.path().to_str().unwrap()).unwrap();
        assert!(location.is_local());
        let path = location.child("sub/a b.txt");
        location.store().put(&path, "hello".into()).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/a b.txt")).unwrap(),
            "hello"
        );
        assert_eq!(location.relative(&path).as_deref(), Some("sub/a b.txt"));
        assert_eq!(
            location.local_path_of(&path).unwrap(),
            dir.path().join("sub/a b.txt")
        );
        let url = location.url_of(&path);
        assert_eq!(url.scheme(), "file");
        let reopened = stores.open(url.as_str()).unwrap();
        assert_eq!(reopened.prefix(), &path);
    }

    #[tokio::test]
    async fn memory_locations_share_one_store_per_stores() {
        let stores = Stores::default();
        let writer = stores.open("memory:///out").unwrap();
        writer
            .store()
            .put(&writer.child("x"), "1".into())
            .await
            .unwrap();
        let reader = stores.open("memory:///").unwrap();
        let meta = reader.store().head(&Path::from("out/x")).await.unwrap();
        assert_eq!(meta.size, 1);
    }

    #[test]
    fn join_and_parent_resolve_relative_paths() {
        let stores = Stores::default();
        let file = stores.open("memory:///data/val_v1.0.json").unwrap();
        let root = file.parent();
        assert_eq!(root.prefix().as_ref(), "data");
        assert_eq!(root.url().as_str(), "memory:///data");
        assert_eq!(root.parent().prefix().as_ref(), "");
        assert_eq!(root.parent().parent().prefix().as_ref(), "");
        let image = root.join("documents/a b.png").unwrap();
        assert_eq!(image.prefix().as_ref(), "data/documents/a b.png");
        assert_eq!(image.url().as_str(), "memory:///data/documents/a%20b.png");
        assert_eq!(image.to_string(), image.url().as_str());
        for bad in ["../x", "documents/./a.png", "a//b"] {
            assert!(
                matches!(root.join(bad), Err(StoreError::InvalidLocation { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn written_objects_read_back_and_missing_ones_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let stores = Stores::default();
        let file = stores
            .open(dir.path().join("out/metrics.json").to_str().unwrap())
            .unwrap();
        file.store().put(file.prefix(), "{}".into()).await.unwrap();
        assert_eq!(&file.read().await.unwrap()[..], b"{}");

        let missing = file.parent().join("absent.json").unwrap();
        let err = missing.read().await.unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
        assert!(
            err.to_string().ends_with("out/absent.json: not found"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn parquet_files_opened_by_name_read_their_footer() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../fixtures/docvqa/parquet/validation-00001-of-00002.parquet"
        );
        let stores = Stores::default();
        let file = stores.open("memory:///x.parquet").unwrap();
        file.store()
            .put(file.prefix(), std::fs::read(fixture).unwrap().into())
            .await
            .unwrap();
        let mut reader = ParquetObjectFile::open(&file).await.unwrap();
        let metadata = reader.get_metadata(None).await.unwrap();
        assert_eq!(metadata.file_metadata().num_rows(), 5);
        let err = ParquetObjectFile::open(&file.parent().join("y.parquet").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn s3_urls_name_bucket_and_prefix() {
        let stores = Stores::new(
            StoreOptions::quick()
                .with_config("AWS_REGION", "us-east-1")
                .with_config("aws_access_key_id", "k")
                .with_config("aws_secret_access_key", "s"),
        );
        let location = stores.open("s3://bucket/some/prefix/").unwrap();
        assert_eq!(location.prefix().as_ref(), "some/prefix");
        assert_eq!(
            location.url_of(&location.child("a.pdf")).as_str(),
            "s3://bucket/some/prefix/a.pdf"
        );
    }

    #[test]
    fn unsupported_schemes_are_named() {
        let err = Stores::default().open("ftp://host/x").unwrap_err();
        assert!(err.to_string().contains("ftp://host/x"), "{err}");
    }
}
