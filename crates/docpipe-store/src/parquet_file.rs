//! [`ParquetObjectFile`]: a Parquet file on an object store read with range requests (footer,
//! then only the row groups and columns asked for), as resume and Parquet manifests need.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, TryFutureExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::errors::{ParquetError, Result};
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use crate::{Location, StoreError};

/// A Parquet file in an object store, read with range requests (parquet 60 deprecated its
/// own `ParquetObjectReader` in favour of this pattern). The size comes from the listing or a
/// `head`, so the footer is fetched with a single ranged read.
#[derive(Debug, Clone)]
pub struct ParquetObjectFile {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

impl ParquetObjectFile {
    /// The file at `path` in `store`, of `size` bytes as a listing gave it (a wrong size makes the
    /// footer read fail).
    pub fn new(store: Arc<dyn ObjectStore>, path: Path, size: u64) -> Self {
        Self { store, path, size }
    }

    /// The file a location names, sized with one HEAD request: for a file named directly
    /// rather than found by a listing (which gives the size for free).
    pub async fn open(location: &Location) -> Result<Self, StoreError> {
        let meta = location
            .store()
            .head(location.prefix())
            .await
            .map_err(|e| location.error(e))?;
        Ok(Self::new(
            Arc::clone(location.store()),
            location.prefix().clone(),
            meta.size,
        ))
    }
}

fn external(error: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(error))
}

impl AsyncFileReader for ParquetObjectFile {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, Result<Bytes>> {
        self.store
            .get_range(&self.path, range)
            .map_err(external)
            .boxed()
    }

    fn get_byte_ranges(&mut self, ranges: Vec<Range<u64>>) -> BoxFuture<'_, Result<Vec<Bytes>>> {
        async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(external)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.size;
            let metadata = ParquetMetaDataReader::new()
                .with_arrow_reader_options(options)
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}
