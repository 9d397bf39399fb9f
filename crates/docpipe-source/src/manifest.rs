//! Manifest sources: a JSONL, CSV or Parquet table with one document per entry (its URI, key
//! columns for lake enrichment, optional questions). Relative URIs are resolved against the
//! manifest's folder, and each entry's object is looked up for its etag, which resume needs.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, Schema};
use docpipe_core::{DocumentRef, Question, Shard};
use docpipe_store::{Location, ParquetObjectFile, Stores};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use serde::Deserialize;

use crate::SourceError;

/// How many objects are looked up at once when resolving manifest entries' versions.
const HEAD_CONCURRENCY: usize = 32;

/// The file format of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header line, then one row per document; every column is read as text.
    Csv,
    /// A Parquet file; key columns of any type are cast to text.
    Parquet,
}

impl ManifestFormat {
    /// The format implied by a location's extension (`.jsonl`/`.ndjson`, `.csv`,
    /// `.parquet`/`.pq`), case-insensitive.
    pub fn from_location(location: &str) -> Option<Self> {
        let name = location.rsplit('/').next()?.to_ascii_lowercase();
        let extension = name.rsplit_once('.')?.1;
        match extension {
            "jsonl" | "ndjson" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            "parquet" | "pq" => Some(Self::Parquet),
            _ => None,
        }
    }
}

/// A table of documents: one entry per document, with its URI, key columns copied into every
/// output row (lake enrichment) and optional per-document questions.
///
/// Questions are a list of `{"id": ..., "text": ...}` objects (`"question"` is accepted for
/// `"text"`; numeric ids become strings): JSON values in JSONL, a JSON string in CSV, a JSON
/// string or a list of structs in Parquet. In JSONL they are read from `questions_column`,
/// default `questions`, when a line has it; in CSV and Parquet only when `questions_column`
/// is set.
#[derive(Debug, Clone)]
pub struct ManifestSpec {
    /// The manifest file: a local path or an object-store URL. Relative entries are resolved
    /// against its folder.
    pub location: String,
    /// `None`: taken from the location's extension.
    pub format: Option<ManifestFormat>,
    /// The column (JSONL field) holding each entry's document URI; default `uri`. An empty value is
    /// an error.
    pub uri_column: String,
    /// Columns copied as text into every output row of the entry's document, in this order, under
    /// the same names (the output's key columns). A missing or null value becomes null.
    pub key_columns: Vec<String>,
    /// The column holding per-document questions (see above); `None`: `questions` in JSONL, no
    /// questions in CSV and Parquet.
    pub questions_column: Option<String>,
    /// Look up each entry's object for its etag and size (resume needs the version). Entries
    /// whose object does not exist are kept without a version: fetching them fails later and
    /// gives that document its error rows.
    pub resolve_versions: bool,
}

impl ManifestSpec {
    /// The manifest at `location`, format from its extension, URIs in column `uri`, no keys or
    /// questions, versions resolved.
    pub fn new(location: impl Into<String>) -> Self {
        Self {
            location: location.into(),
            format: None,
            uri_column: "uri".to_owned(),
            key_columns: Vec::new(),
            questions_column: None,
            resolve_versions: true,
        }
    }
}

/// One manifest entry before its URI is resolved against the manifest's folder.
#[derive(Debug)]
struct Entry {
    uri: String,
    keys: BTreeMap<String, String>,
    questions: Vec<Question>,
}

pub(crate) async fn list(
    spec: &ManifestSpec,
    stores: &Stores,
    shard: Option<Shard>,
) -> Result<Vec<DocumentRef>, SourceError> {
    let location = stores.open(&spec.location)?;
    let format = spec
        .format
        .or_else(|| ManifestFormat::from_location(&spec.location))
        .ok_or_else(|| SourceError::Manifest {
            location: location.display().to_owned(),
            message: "unknown format: name it .jsonl, .csv or .parquet, or set the format".into(),
        })?;
    let entries = match format {
        ManifestFormat::Jsonl => parse_jsonl(spec, &location, &read_all(&location).await?)?,
        ManifestFormat::Csv => {
            let bytes = read_all(&location).await?;
            entries_from_batches(spec, &location, csv_batches(&location, bytes)?, 2)?
        }
        ManifestFormat::Parquet => {
            let batches = parquet_batches(spec, &location).await?;
            entries_from_batches(spec, &location, batches, 1)?
        }
    };
    let documents = entries
        .into_iter()
        .map(|entry| DocumentRef {
            keys: entry.keys,
            questions: entry.questions,
            ..DocumentRef::new(resolve_uri(&location, &entry.uri))
        })
        .filter(|doc| shard.is_none_or(|shard| shard.owns(&doc.uri)));
    if !spec.resolve_versions {
        return Ok(documents.collect());
    }
    futures::stream::iter(documents)
        .map(|doc| resolve_version(stores, doc))
        .buffered(HEAD_CONCURRENCY)
        .try_collect()
        .await
}

async fn read_all(location: &Location) -> Result<Vec<u8>, SourceError> {
    let error = |e: object_store::Error| SourceError::ReadManifest {
        location: location.display().to_owned(),
        message: e.to_string(),
    };
    let got = location
        .store()
        .get(location.prefix())
        .await
        .map_err(error)?;
    Ok(got.bytes().await.map_err(error)?.to_vec())
}

/// Entries are kept as written when they are URLs or absolute paths; relative ones are
/// resolved against the manifest's folder, so a manifest can travel with its documents.
fn resolve_uri(manifest: &Location, uri: &str) -> String {
    if uri.contains("://") || uri.starts_with('/') {
        return uri.to_owned();
    }
    match manifest.local_path_of(manifest.prefix()) {
        Some(path) => path
            .parent()
            .map_or_else(|| uri.into(), |dir| dir.join(uri))
            .display()
            .to_string(),
        None => manifest
            .url_of(manifest.prefix())
            .join(uri)
            .map_or_else(|_| uri.to_owned(), |url| url.to_string()),
    }
}

async fn resolve_version(
    stores: &Stores,
    mut doc: DocumentRef,
) -> Result<DocumentRef, SourceError> {
    let location = stores.open(&doc.uri)?;
    match location.store().head(location.prefix()).await {
        Ok(meta) => {
            doc.version = meta.e_tag;
            doc.size = Some(meta.size);
            Ok(doc)
        }
        Err(object_store::Error::NotFound { .. }) => Ok(doc),
        Err(source) => Err(SourceError::Head {
            uri: doc.uri,
            source,
        }),
    }
}

#[derive(Deserialize)]
struct RawQuestion {
    id: RawId,
    #[serde(alias = "question")]
    text: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawId {
    Text(String),
    Number(serde_json::Number),
}

impl From<RawQuestion> for Question {
    fn from(raw: RawQuestion) -> Self {
        let id = match raw.id {
            RawId::Text(id) => id,
            RawId::Number(id) => id.to_string(),
        };
        Question { id, text: raw.text }
    }
}

fn parse_questions(value: serde_json::Value) -> Result<Vec<Question>, String> {
    let raw: Vec<RawQuestion> = serde_json::from_value(value)
        .map_err(|e| format!("questions must be a list of {{\"id\", \"text\"}} objects: {e}"))?;
    Ok(raw.into_iter().map(Question::from).collect())
}

fn parse_jsonl(
    spec: &ManifestSpec,
    location: &Location,
    bytes: &[u8],
) -> Result<Vec<Entry>, SourceError> {
    let questions_key = spec.questions_column.as_deref().unwrap_or("questions");
    let mut entries = Vec::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line_error = |message: String| SourceError::ManifestLine {
            location: location.display().to_owned(),
            line: index + 1,
            message,
        };
        let line = std::str::from_utf8(line).map_err(|e| line_error(e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let serde_json::Value::Object(mut object) =
            serde_json::from_str(line).map_err(|e| line_error(e.to_string()))?
        else {
            return Err(line_error("expected a JSON object".into()));
        };
        let uri = match object.remove(&spec.uri_column) {
            Some(serde_json::Value::String(uri)) if !uri.trim().is_empty() => uri,
            _ => {
                return Err(line_error(format!(
                    "missing or empty string field {:?}",
                    spec.uri_column
                )))
            }
        };
        let keys = spec
            .key_columns
            .iter()
            .filter_map(|key| {
                let value = match object.get(key)? {
                    serde_json::Value::Null => return None,
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                Some((key.clone(), value))
            })
            .collect();
        let questions = match object.remove(questions_key) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(value) => parse_questions(value).map_err(line_error)?,
        };
        entries.push(Entry {
            uri,
            keys,
            questions,
        });
    }
    Ok(entries)
}

fn csv_batches(location: &Location, bytes: Vec<u8>) -> Result<Vec<RecordBatch>, SourceError> {
    let error = |e: arrow::error::ArrowError| SourceError::Manifest {
        location: location.display().to_owned(),
        message: e.to_string(),
    };
    let format = Format::default().with_header(true);
    let (inferred, _) = format
        .infer_schema(Cursor::new(&bytes), Some(0))
        .map_err(error)?;
    // Every column as text: keys are copied verbatim, and "007" must stay "007".
    let schema = Schema::new(
        inferred
            .fields()
            .iter()
            .map(|field| Field::new(field.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    arrow::csv::ReaderBuilder::new(Arc::new(schema))
        .with_format(format)
        .build(Cursor::new(bytes))
        .map_err(error)?
        .collect::<Result<_, _>>()
        .map_err(error)
}

async fn parquet_batches(
    spec: &ManifestSpec,
    location: &Location,
) -> Result<Vec<RecordBatch>, SourceError> {
    let error = |message: String| SourceError::Manifest {
        location: location.display().to_owned(),
        message,
    };
    let meta = location
        .store()
        .head(location.prefix())
        .await
        .map_err(|e| SourceError::ReadManifest {
            location: location.display().to_owned(),
            message: e.to_string(),
        })?;
    let reader = ParquetObjectFile::new(
        Arc::clone(location.store()),
        location.prefix().clone(),
        meta.size,
    );
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| error(e.to_string()))?;
    let wanted = std::iter::once(&spec.uri_column)
        .chain(&spec.key_columns)
        .chain(&spec.questions_column);
    let mut roots = Vec::new();
    for name in wanted {
        let index = builder
            .schema()
            .index_of(name)
            .map_err(|_| error(format!("no column {name:?}")))?;
        roots.push(index);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    builder
        .with_projection(mask)
        .build()
        .map_err(|e| error(e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| error(e.to_string()))
}

/// Entries from tabular batches; `first_row` is the number shown for the first data row in
/// messages (2 for CSV, whose line 1 is the header; 1 for Parquet).
fn entries_from_batches(
    spec: &ManifestSpec,
    location: &Location,
    batches: Vec<RecordBatch>,
    first_row: usize,
) -> Result<Vec<Entry>, SourceError> {
    let mut entries = Vec::new();
    let mut row_number = first_row;
    for batch in batches {
        let error = |message: String| SourceError::Manifest {
            location: location.display().to_owned(),
            message,
        };
        let text_column = |name: &str| -> Result<StringArray, SourceError> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| error(format!("no column {name:?}")))?;
            let text = cast(column, &DataType::Utf8)
                .map_err(|e| error(format!("column {name:?} cannot be read as text: {e}")))?;
            Ok(text.as_string::<i32>().clone())
        };
        let uris = text_column(&spec.uri_column)?;
        let keys = spec
            .key_columns
            .iter()
            .map(|name| Ok((name, text_column(name)?)))
            .collect::<Result<Vec<_>, SourceError>>()?;
        let questions = match &spec.questions_column {
            Some(name) => Some(QuestionsColumn::new(&batch, name).map_err(error)?),
            None => None,
        };
        for row in 0..batch.num_rows() {
            let row_error = |message: String| SourceError::ManifestLine {
                location: location.display().to_owned(),
                line: row_number,
                message,
            };
            if uris.is_null(row) || uris.value(row).trim().is_empty() {
                return Err(row_error(format!("empty {:?}", spec.uri_column)));
            }
            entries.push(Entry {
                uri: uris.value(row).to_owned(),
                keys: keys
                    .iter()
                    .filter(|(_, column)| column.is_valid(row))
                    .map(|(name, column)| ((*name).clone(), column.value(row).to_owned()))
                    .collect(),
                questions: match &questions {
                    Some(column) => column.row(row).map_err(row_error)?,
                    None => Vec::new(),
                },
            });
            row_number += 1;
        }
    }
    Ok(entries)
}

/// A questions column: JSON text, or a list of `{id, text}` (or `{id, question}`) structs.
enum QuestionsColumn {
    Json(StringArray),
    List {
        list: ArrayRef,
        ids: StringArray,
        texts: StringArray,
    },
}

impl QuestionsColumn {
    fn new(batch: &RecordBatch, name: &str) -> Result<Self, String> {
        let column = batch
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name:?}"))?;
        let unsupported = || {
            format!(
                "column {name:?} must hold JSON text or a list of {{id, text}} structs, not {}",
                column.data_type()
            )
        };
        let values = match column.data_type() {
            DataType::List(_) => column.as_list::<i32>().values(),
            DataType::LargeList(_) => column.as_list::<i64>().values(),
            _ => {
                let text = cast(column, &DataType::Utf8).map_err(|_| unsupported())?;
                return Ok(Self::Json(text.as_string::<i32>().clone()));
            }
        };
        let fields = values.as_struct_opt().ok_or_else(unsupported)?;
        let field = |names: &[&str]| -> Result<StringArray, String> {
            let array = names
                .iter()
                .find_map(|n| fields.column_by_name(n))
                .ok_or_else(unsupported)?;
            let text = cast(array, &DataType::Utf8).map_err(|_| unsupported())?;
            Ok(text.as_string::<i32>().clone())
        };
        Ok(Self::List {
            list: Arc::clone(column),
            ids: field(&["id"])?,
            texts: field(&["text", "question"])?,
        })
    }

    fn row(&self, row: usize) -> Result<Vec<Question>, String> {
        match self {
            Self::Json(text) => {
                if text.is_null(row) || text.value(row).trim().is_empty() {
                    return Ok(Vec::new());
                }
                let value = serde_json::from_str(text.value(row))
                    .map_err(|e| format!("questions are not valid JSON: {e}"))?;
                parse_questions(value)
            }
            Self::List { list, ids, texts } => {
                if list.is_null(row) {
                    return Ok(Vec::new());
                }
                let range = match list.data_type() {
                    DataType::LargeList(_) => {
                        let offsets = list.as_list::<i64>().value_offsets();
                        offsets[row] as usize..offsets[row + 1] as usize
                    }
                    _ => {
                        let offsets = list.as_list::<i32>().value_offsets();
                        offsets[row] as usize..offsets[row + 1] as usize
                    }
                };
                range
                    .map(|i| {
                        if ids.is_null(i) || texts.is_null(i) {
                            return Err("a question has a null id or text".to_owned());
                        }
                        Ok(Question {
                            id: ids.value(i).to_owned(),
                            text: texts.value(i).to_owned(),
                        })
                    })
                    .collect()
            }
        }
    }
}
