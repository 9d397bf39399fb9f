//! [`Sink`]: buffers finished documents and writes them as Parquet parts (zstd, dictionary
//! encoding, whole documents only), uploaded so that a part is complete or absent; at the end,
//! the report and the create-only manifest. [`SinkOptions`] sets when a part is written.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow::datatypes::SchemaRef;
use docpipe_core::Shard;
use docpipe_store::{Location, Stores};
use object_store::buffered::BufWriter;
use object_store::ObjectStoreExt;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::create_only::{put_json_create_only, Created};
use crate::report::{RunManifest, RunReport};
use crate::resume::{self, Committed, PartInfo};
use crate::schema::{output_schema, rows_to_batch};
use crate::{OutputRow, SinkError};

/// How a sink names and sizes its parts.
#[derive(Debug, Clone)]
pub struct SinkOptions {
    /// A local folder or object-store prefix.
    pub location: String,
    /// The shard this run is; it names the parts, the manifest and the report.
    pub shard: Option<Shard>,
    /// Lake-enrichment key columns (see [`crate::output_schema`]).
    pub key_columns: Vec<String>,
    /// A part is written once this many finished documents are buffered...
    pub documents_per_part: usize,
    /// ...or this many rows...
    pub rows_per_part: usize,
    /// ...or about this many bytes of row data...
    pub bytes_per_part: usize,
    /// ...or when the oldest buffered document has waited this long (checked by
    /// [`Sink::commit_document`] and [`Sink::flush_if_due`]), so a slow run still commits.
    pub part_max_age: Duration,
    /// Rows per Parquet row group (also capped at 128 MiB per row group).
    pub row_group_rows: usize,
}

impl SinkOptions {
    /// Defaults: 64 documents, 65 536 rows or 64 MiB per part, at most 60 s of buffering,
    /// row groups of 65 536 rows.
    pub fn new(location: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            shard: None,
            key_columns: Vec::new(),
            documents_per_part: 64,
            rows_per_part: 65_536,
            bytes_per_part: 64 << 20,
            part_max_age: Duration::from_secs(60),
            row_group_rows: 65_536,
        }
    }
}

/// Writes committed documents as Parquet parts under a sink location.
#[derive(Debug)]
pub struct Sink {
    location: Location,
    options: SinkOptions,
    schema: SchemaRef,
    properties: WriterProperties,
    buffer: Vec<OutputRow>,
    buffered_documents: usize,
    buffered_bytes: usize,
    oldest: Option<Instant>,
    written: Vec<PartInfo>,
}

impl Sink {
    /// A sink writing under `options.location`. Checks the key columns and opens the store; nothing
    /// is read or written yet.
    pub fn open(stores: &Stores, options: SinkOptions) -> Result<Self, SinkError> {
        let location = stores.open(&options.location)?;
        let schema = output_schema(&options.key_columns)?;
        let properties = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_dictionary_enabled(true)
            .set_max_row_group_row_count(Some(options.row_group_rows.max(1)))
            .set_max_row_group_bytes(Some(128 << 20))
            .set_created_by(format!("docpipe-sink {}", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Self {
            location,
            options,
            schema,
            properties,
            buffer: Vec::new(),
            buffered_documents: 0,
            buffered_bytes: 0,
            oldest: None,
            written: Vec::new(),
        })
    }

    /// The Arrow schema of the parts: key columns, then the standard columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Where the parts, manifest and report go.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The documents already committed under this sink (by any shard), to skip on resume.
    /// Reads only the `doc_uri` and `doc_version` columns of each part.
    pub async fn committed(&self) -> Result<Committed, SinkError> {
        resume::committed(&self.location).await
    }

    /// Hands over all rows of one finished document. They are written with other finished
    /// documents as one part once a size or age limit is reached; returns the part written,
    /// if any.
    pub async fn commit_document(
        &mut self,
        rows: Vec<OutputRow>,
    ) -> Result<Option<PartInfo>, SinkError> {
        let Some(first) = rows.first() else {
            return Err(SinkError::InvalidRows(
                "a document needs at least one row (write an error row when it has none)".into(),
            ));
        };
        if let Some(other) = rows
            .iter()
            .find(|row| row.doc_uri != first.doc_uri || row.doc_version != first.doc_version)
        {
            return Err(SinkError::InvalidRows(format!(
                "rows of {} ({:?}) and {} ({:?}) handed over as one document",
                first.doc_uri, first.doc_version, other.doc_uri, other.doc_version
            )));
        }
        self.buffered_bytes += rows.iter().map(OutputRow::approximate_bytes).sum::<usize>();
        self.buffered_documents += 1;
        self.oldest.get_or_insert_with(Instant::now);
        self.buffer.extend(rows);
        let options = &self.options;
        if self.buffered_documents >= options.documents_per_part
            || self.buffer.len() >= options.rows_per_part
            || self.buffered_bytes >= options.bytes_per_part
            || self.flush_due()
        {
            return self.flush().await;
        }
        Ok(None)
    }

    /// When the buffered documents must be written at the latest; `None` when nothing is
    /// buffered. Drive [`Sink::flush_if_due`] from a timer set to this.
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.oldest.map(|oldest| oldest + self.options.part_max_age)
    }

    fn flush_due(&self) -> bool {
        self.flush_deadline()
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// Writes the buffered documents as one part if the oldest has waited
    /// [`SinkOptions::part_max_age`]; returns the part written, if any.
    pub async fn flush_if_due(&mut self) -> Result<Option<PartInfo>, SinkError> {
        if self.flush_due() {
            return self.flush().await;
        }
        Ok(None)
    }

    /// Writes the buffered documents as one part now.
    pub async fn flush(&mut self) -> Result<Option<PartInfo>, SinkError> {
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let relative = format!(
            "{}/{}-{:013}-{:016x}.parquet",
            resume::PARTS_DIR,
            self.shard_label(),
            u64::try_from(crate::unix_micros(SystemTime::now()) / 1000).unwrap_or_default(),
            rand::random::<u64>()
        );
        let path = self.location.child(&relative);
        let url = self.location.url_of(&path).to_string();
        let write_error = |e: parquet::errors::ParquetError| SinkError::Write {
            url: url.clone(),
            message: e.to_string(),
        };
        let batch = rows_to_batch(&self.schema, &self.buffer)?;
        let object = BufWriter::new(Arc::clone(self.location.store()), path.clone());
        let mut writer = AsyncArrowWriter::try_new(
            object,
            Arc::clone(&self.schema),
            Some(self.properties.clone()),
        )
        .map_err(write_error)?;
        writer.write(&batch).await.map_err(write_error)?;
        writer.close().await.map_err(write_error)?;
        let bytes = self
            .location
            .store()
            .head(&path)
            .await
            .map_err(|e| SinkError::Write {
                url: url.clone(),
                message: format!("written but not found: {e}"),
            })?
            .size;
        let part = PartInfo {
            path: relative,
            rows: self.buffer.len() as u64,
            documents: self.buffered_documents as u64,
            bytes,
        };
        self.buffer.clear();
        self.buffered_documents = 0;
        self.buffered_bytes = 0;
        self.oldest = None;
        self.written.push(part.clone());
        Ok(Some(part))
    }

    /// Parts written by this sink so far.
    pub fn parts_written(&self) -> &[PartInfo] {
        &self.written
    }

    /// Flushes, then writes the run manifest, create-only: if this run (or shard) already has
    /// one, nothing is overwritten and [`SinkError::ManifestExists`] is returned. The manifest
    /// lists every committed part of this shard, those of earlier interrupted attempts
    /// included, so it describes the whole output. `manifest.parts`, `rows`, `documents` and
    /// `finished_at_ms` are filled in here.
    pub async fn finish(mut self, mut manifest: RunManifest) -> Result<RunManifest, SinkError> {
        self.flush().await?;
        let committed = self.committed().await?;
        let prefix = format!("{}/{}-", resume::PARTS_DIR, self.shard_label());
        manifest.shard = self.options.shard.map(|shard| shard.to_string());
        manifest.key_columns = self.options.key_columns.clone();
        manifest.parts = committed
            .parts()
            .iter()
            .filter(|part| part.path.starts_with(&prefix))
            .cloned()
            .collect();
        manifest.rows = manifest.parts.iter().map(|part| part.rows).sum();
        manifest.documents = manifest.parts.iter().map(|part| part.documents).sum();
        manifest.finished_at_ms =
            u64::try_from(crate::unix_micros(SystemTime::now()) / 1000).unwrap_or_default();
        let path = self.location.child(&self.file_name("manifest"));
        match put_json_create_only(&self.location, &path, &manifest).await? {
            Created::Written => Ok(manifest),
            Created::AlreadyExists => Err(SinkError::ManifestExists {
                url: self.location.url_of(&path).to_string(),
            }),
        }
    }

    /// Writes the run report next to the data, replacing an earlier one of the same shard.
    pub async fn write_report(&self, report: &RunReport) -> Result<(), SinkError> {
        let path = self.location.child(&self.file_name("report"));
        let url = self.location.url_of(&path).to_string();
        let error = |message: String| SinkError::Write {
            url: url.clone(),
            message,
        };
        let body = serde_json::to_vec_pretty(report).map_err(|e| error(e.to_string()))?;
        self.location
            .store()
            .put(&path, body.into())
            .await
            .map_err(|e| error(e.to_string()))?;
        Ok(())
    }

    fn shard_label(&self) -> String {
        self.options
            .shard
            .map_or_else(|| "all".to_owned(), Shard::label)
    }

    /// `manifest.json`, or `manifest-shard-I-of-N.json` for a shard.
    fn file_name(&self, stem: &str) -> String {
        match self.options.shard {
            Some(shard) => format!("{stem}-{}.json", shard.label()),
            None => format!("{stem}.json"),
        }
    }
}
