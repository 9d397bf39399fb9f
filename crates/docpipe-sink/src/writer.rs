//! [`Sink`]: buffers finished documents and writes them as Parquet parts (zstd, dictionary
//! encoding, whole documents only), each uploaded create-only in one request so that a part is
//! complete or absent; at the end, the report and the create-only manifest. [`SinkOptions`]
//! sets when a part is written. With [`Sink::start_claims`], a part holds only documents whose
//! claims this run still had when it wrote the part.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use docpipe_core::Shard;
use docpipe_store::{Location, Stores};
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::claims::{Claims, Sealed};
use crate::create_only::{put_create_only, put_json_create_only, Created};
use crate::report::{RunManifest, RunReport, WrittenRows};
use crate::resume::{self, Committed, DocumentKey, PartInfo};
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

/// A document another run took over before this one could commit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostDocument {
    /// The document.
    pub doc: DocumentKey,
    /// The run that took it over.
    pub taken_by: String,
}

/// Writes committed documents as Parquet parts under a sink location.
#[derive(Debug)]
pub struct Sink {
    location: Location,
    options: SinkOptions,
    schema: SchemaRef,
    properties: WriterProperties,
    /// Finished documents not written yet, each with all of its rows.
    buffer: Vec<(DocumentKey, Vec<OutputRow>)>,
    buffered_rows: usize,
    buffered_bytes: usize,
    oldest: Option<Instant>,
    parts: Vec<PartInfo>,
    written: WrittenRows,
    lost: Vec<LostDocument>,
    claims: Option<Arc<Claims>>,
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
            buffered_rows: 0,
            buffered_bytes: 0,
            oldest: None,
            parts: Vec::new(),
            written: WrittenRows::default(),
            lost: Vec::new(),
            claims: None,
        })
    }

    /// Makes this run exclusive on the sink from now on: documents must be claimed (with the
    /// returned [`Claims`]) before they are processed, and a part only takes documents whose
    /// claims this run still holds. Starts the run's heartbeat; see [`Claims`].
    pub async fn start_claims(
        &mut self,
        run_id: &str,
        hold: Duration,
    ) -> Result<Arc<Claims>, SinkError> {
        let claims = Claims::start(
            self.location.clone(),
            run_id.to_owned(),
            hold,
            self.encode(&[])?,
        )
        .await?;
        self.claims = Some(claims.clone());
        Ok(claims)
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
        self.buffered_rows += rows.len();
        self.oldest.get_or_insert_with(Instant::now);
        self.buffer.push((first.document_key(), rows));
        let options = &self.options;
        if self.buffer.len() >= options.documents_per_part
            || self.buffered_rows >= options.rows_per_part
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

    /// Writes the buffered documents as one part now. With claims, documents another run took
    /// over are left out (see [`Sink::lost_documents`]).
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
        let documents = std::mem::take(&mut self.buffer);
        self.buffered_rows = 0;
        self.buffered_bytes = 0;
        self.oldest = None;
        let documents = self.seal(documents, &relative).await?;
        if documents.is_empty() {
            return Ok(None);
        }
        let (keys, rows): (Vec<DocumentKey>, Vec<Vec<OutputRow>>) = documents.into_iter().unzip();
        let rows: Vec<OutputRow> = rows.into_iter().flatten().collect();
        let body = self.encode(&rows)?;
        let path = self.location.child(&relative);
        let bytes = body.len() as u64;
        match put_create_only(&self.location, &path, body).await {
            Ok(Created::Written) => {}
            Ok(Created::AlreadyExists) if self.claims.is_some() => {
                // Part names are random, so only a run that took these documents over while
                // this one stalled writes this name first (an empty part voiding it).
                for doc in keys {
                    self.lose(doc, "a run that took this run's documents over".into());
                }
                return Ok(None);
            }
            Ok(Created::AlreadyExists) => {
                return Err(SinkError::Write {
                    url: self.location.url_of(&path).to_string(),
                    message: "a part of this name is already there".into(),
                })
            }
            Err(e) => {
                return Err(SinkError::Write {
                    url: self.location.url_of(&path).to_string(),
                    message: e.to_string(),
                })
            }
        }
        for row in &rows {
            self.written.record(row);
        }
        self.written.documents_committed += keys.len() as u64;
        let part = PartInfo {
            path: relative,
            rows: rows.len() as u64,
            documents: keys.len() as u64,
            bytes,
        };
        self.parts.push(part.clone());
        Ok(Some(part))
    }

    /// Keeps the documents whose claims this run still holds, after appending their commit
    /// entries naming `part`; all of them when the sink has no claims.
    async fn seal(
        &mut self,
        documents: Vec<(DocumentKey, Vec<OutputRow>)>,
        part: &str,
    ) -> Result<Vec<(DocumentKey, Vec<OutputRow>)>, SinkError> {
        let Some(claims) = self.claims.clone() else {
            return Ok(documents);
        };
        let keys: Vec<&DocumentKey> = documents.iter().map(|(key, _)| key).collect();
        let sealed = claims.seal(&keys, part).await?;
        let mut kept = Vec::with_capacity(documents.len());
        for (document, sealed) in documents.into_iter().zip(sealed) {
            match sealed {
                Sealed::Kept => kept.push(document),
                Sealed::Lost { by } => self.lose(document.0, by),
            }
        }
        Ok(kept)
    }

    fn lose(&mut self, doc: DocumentKey, taken_by: String) {
        tracing::warn!(
            doc = %doc.uri,
            "not committed: {taken_by} took this document over while this run was stalled; \
             its rows from this run were discarded"
        );
        self.lost.push(LostDocument { doc, taken_by });
    }

    /// Parquet bytes of `rows` with the sink's schema and properties.
    fn encode(&self, rows: &[OutputRow]) -> Result<Bytes, SinkError> {
        let error = |e: parquet::errors::ParquetError| SinkError::Write {
            url: self.location.url().to_string(),
            message: format!("encoding a part: {e}"),
        };
        let batch = rows_to_batch(&self.schema, rows)?;
        let mut writer = ArrowWriter::try_new(
            Vec::new(),
            Arc::clone(&self.schema),
            Some(self.properties.clone()),
        )
        .map_err(error)?;
        writer.write(&batch).map_err(error)?;
        Ok(Bytes::from(writer.into_inner().map_err(error)?))
    }

    /// Parts written by this sink so far.
    pub fn parts_written(&self) -> &[PartInfo] {
        &self.parts
    }

    /// Documents, rows and tokens written so far.
    pub fn written(&self) -> &WrittenRows {
        &self.written
    }

    /// Documents handed over but not written, because another run took them over while this
    /// one was stalled (claims only).
    pub fn lost_documents(&self) -> &[LostDocument] {
        &self.lost
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
