//! Resume: what is already committed under a sink. Lists the part files and reads only their
//! `doc_uri` and `doc_version` columns, so that a rerun skips committed documents without
//! downloading the data ([`Committed`]); [`PartInfo`] describes one part.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use docpipe_core::DocumentRef;
use docpipe_store::{Location, ParquetObjectFile};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectMeta;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use serde::{Deserialize, Serialize};

use crate::schema::columns;
use crate::SinkError;

/// The folder of part files under a sink location.
pub(crate) const PARTS_DIR: &str = "parts";

/// How many parts are read at once when listing committed documents.
const READ_CONCURRENCY: usize = 8;

/// A document as the sink tells documents apart: its URI and version (a new version of a
/// document is another document).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DocumentKey {
    /// The `doc_uri` column.
    pub uri: String,
    /// The `doc_version` column.
    pub version: Option<String>,
}

impl DocumentKey {
    /// The key of a listed document.
    pub fn of(doc: &DocumentRef) -> Self {
        Self {
            uri: doc.uri.clone(),
            version: doc.version.clone(),
        }
    }
}

/// A committed part file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartInfo {
    /// Relative to the sink location, e.g. `parts/all-1764000000000-0123456789abcdef.parquet`.
    pub path: String,
    /// Rows in the part.
    pub rows: u64,
    /// Documents in the part; a part holds whole documents only.
    pub documents: u64,
    /// Size of the Parquet file in bytes.
    pub bytes: u64,
}

/// What is already committed under a sink: the documents to skip on resume.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    documents: HashSet<DocumentKey>,
    parts: Vec<PartInfo>,
}

impl Committed {
    /// True when `doc`, at this version, is in a committed part. A document whose version
    /// changed since is not: it is processed again.
    pub fn contains(&self, doc: &DocumentRef) -> bool {
        self.documents.contains(&DocumentKey::of(doc))
    }

    /// Committed (URI, version) pairs, over every part and shard.
    pub fn document_count(&self) -> usize {
        self.documents.len()
    }

    /// Rows over every committed part.
    pub fn row_count(&self) -> u64 {
        self.parts.iter().map(|part| part.rows).sum()
    }

    /// Sorted by path (which sorts parts of one shard by the time they were written).
    pub fn parts(&self) -> &[PartInfo] {
        &self.parts
    }
}

pub(crate) async fn committed(location: &Location) -> Result<Committed, SinkError> {
    let objects = part_objects(location).await?;
    let parts: Vec<(PartInfo, Vec<DocumentKey>)> = futures::stream::iter(objects)
        .map(|object| read_part_documents(location, object))
        .buffered(READ_CONCURRENCY)
        .try_collect()
        .await?;
    let mut committed = Committed::default();
    for (part, documents) in parts {
        committed.documents.extend(documents);
        committed.parts.push(part);
    }
    Ok(committed)
}

/// The part files under `location`, sorted by path.
pub(crate) async fn part_objects(location: &Location) -> Result<Vec<ObjectMeta>, SinkError> {
    let mut objects = list_objects(location, &location.child(PARTS_DIR)).await?;
    objects.retain(|object| object.location.as_ref().ends_with(".parquet"));
    Ok(objects)
}

/// The objects under `dir`, sorted by path; none when `dir` is a local folder not created yet.
pub(crate) async fn list_objects(
    location: &Location,
    dir: &Path,
) -> Result<Vec<ObjectMeta>, SinkError> {
    if location
        .local_path_of(dir)
        .is_some_and(|path| !path.is_dir())
    {
        return Ok(Vec::new());
    }
    let mut objects: Vec<ObjectMeta> = location
        .store()
        .list(Some(dir))
        .try_collect()
        .await
        .map_err(|source| SinkError::List {
            url: location.url_of(dir).to_string(),
            source,
        })?;
    objects.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(objects)
}

/// A part file's parquet stream builder: footer read, nothing decoded yet.
pub(crate) async fn open_part(
    location: &Location,
    object: &ObjectMeta,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectFile>, SinkError> {
    let reader = ParquetObjectFile::new(
        Arc::clone(location.store()),
        object.location.clone(),
        object.size,
    );
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| SinkError::Read {
            url: location.url_of(&object.location).to_string(),
            message: e.to_string(),
        })
}

async fn read_part_documents(
    location: &Location,
    object: ObjectMeta,
) -> Result<(PartInfo, Vec<DocumentKey>), SinkError> {
    let url = location.url_of(&object.location).to_string();
    let error = |message: String| SinkError::Read {
        url: url.clone(),
        message,
    };
    let builder = open_part(location, &object).await?;
    let schema = Arc::clone(builder.schema());
    let index = |name: &str| {
        schema
            .index_of(name)
            .map_err(|_| error(format!("not a docpipe part: no column {name:?}")))
    };
    let roots = [index(columns::DOC_URI)?, index(columns::DOC_VERSION)?];
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let rows = builder.metadata().file_metadata().num_rows();
    let batches: Vec<_> = builder
        .with_projection(mask)
        .build()
        .map_err(|e| error(e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| error(e.to_string()))?;
    let mut documents = HashSet::new();
    for batch in &batches {
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|column| column.as_string_opt::<i32>())
                .ok_or_else(|| error(format!("column {name:?} is not utf8")))
        };
        let (uris, versions) = (text(columns::DOC_URI)?, text(columns::DOC_VERSION)?);
        for row in 0..batch.num_rows() {
            let version = versions
                .is_valid(row)
                .then(|| versions.value(row).to_owned());
            documents.insert(DocumentKey {
                uri: uris.value(row).to_owned(),
                version,
            });
        }
    }
    let part = PartInfo {
        path: location
            .relative(&object.location)
            .unwrap_or_else(|| object.location.to_string()),
        rows: u64::try_from(rows).unwrap_or_default(),
        documents: documents.len() as u64,
        bytes: object.size,
    };
    Ok((part, documents.into_iter().collect()))
}
