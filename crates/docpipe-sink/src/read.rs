//! Reading a sink's committed rows back, every part in path order: for tests and tools such as
//! `docpipe eval docvqa`, which scores the rows it wrote. A run itself never reads its whole
//! output; resume reads two columns (`resume.rs`).

use arrow::array::RecordBatch;
use docpipe_store::Stores;
use futures::TryStreamExt;

use crate::resume::{open_part, part_objects};
use crate::schema::batch_to_rows;
use crate::{OutputRow, SinkError};

/// Every committed row under a sink location, part by part in path order. For tests and tools;
/// a pipeline never reads its whole output.
pub async fn read_batches(stores: &Stores, location: &str) -> Result<Vec<RecordBatch>, SinkError> {
    let location = stores.open(location)?;
    let mut batches = Vec::new();
    for object in part_objects(&location).await? {
        let url = location.url_of(&object.location).to_string();
        let error = |e: parquet::errors::ParquetError| SinkError::Read {
            url: url.clone(),
            message: e.to_string(),
        };
        let stream = open_part(&location, &object)
            .await?
            .build()
            .map_err(error)?;
        batches.extend(stream.try_collect::<Vec<_>>().await.map_err(error)?);
    }
    Ok(batches)
}

/// Like [`read_batches`], as typed rows.
pub async fn read_rows(stores: &Stores, location: &str) -> Result<Vec<OutputRow>, SinkError> {
    let mut rows = Vec::new();
    for batch in read_batches(stores, location).await? {
        rows.extend(batch_to_rows(&batch).map_err(|message| SinkError::Read {
            url: location.to_owned(),
            message,
        })?);
    }
    Ok(rows)
}
