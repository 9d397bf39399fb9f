//! The Parquet layout of the hub copies: one row per question, the page image inlined.
//!
//! The same page appears in one row per question, and rows of one page need not be adjacent.
//! Pages are therefore read in two passes: the first reads only the small columns and counts the
//! selected questions of each `docId`; the second streams the rows with their images and hands
//! out a page as soon as all the questions of its `docId` have been seen. Memory holds only the
//! pages still waiting for questions, not the dataset.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type};
use docpipe_store::{Location, ParquetObjectFile};
use futures::{Stream, StreamExt};
use object_store::path::Path;
use parquet::arrow::async_reader::ParquetRecordBatchStream;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use super::{Annotation, DatasetError, DocVqaQuestion, ImageSource, PageGroup};

const QUESTION_ID: &str = "questionId";
const QUESTION: &str = "question";
const ANSWERS: &str = "answers";
const QUESTION_TYPES: &str = "question_types";
const DOC_ID: &str = "docId";
const IMAGE: &str = "image";

/// Rows per batch: page images are a few hundred KB each, so batches stay small.
const BATCH_ROWS: usize = 64;

/// The `.parquet` objects under a folder or prefix, in name order (the shard order of the hub).
pub(super) async fn list_files(root: &Location) -> Result<Vec<Location>, DatasetError> {
    let mut listing = root.store().list(Some(root.prefix()));
    let mut paths: Vec<Path> = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| root.error(e))?;
        if meta
            .location
            .as_ref()
            .to_ascii_lowercase()
            .ends_with(".parquet")
        {
            paths.push(meta.location);
        }
    }
    if paths.is_empty() {
        return Err(DatasetError::NoFiles {
            url: root.to_string(),
        });
    }
    paths.sort();
    Ok(paths.into_iter().map(|path| root.at(path)).collect())
}

/// Reads the first `limit` questions without their images.
pub(super) async fn read_annotations(
    files: &[Location],
    limit: Option<usize>,
) -> Result<Vec<Annotation>, DatasetError> {
    let limit = limit.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for file in files {
        let mut batches = open_batches(file, false).await?;
        while let Some(batch) = batches.next().await {
            if out.len() >= limit {
                return Ok(out);
            }
            let batch = batch.map_err(|source| parquet_error(file, source))?;
            let columns = Columns::from_batch(&batch, file)?;
            let take = (limit - out.len()).min(batch.num_rows());
            out.extend((0..take).map(|row| columns.annotation(row)));
        }
    }
    Ok(out)
}

fn parquet_error(file: &Location, source: parquet::errors::ParquetError) -> DatasetError {
    DatasetError::Parquet {
        file: file.to_string(),
        source,
    }
}

fn malformed(file: &Location, problem: impl Into<String>) -> DatasetError {
    DatasetError::Malformed {
        file: file.to_string(),
        problem: problem.into(),
    }
}

/// Streams the file's rows, with the image column only when `with_image`.
async fn open_batches(
    file: &Location,
    with_image: bool,
) -> Result<ParquetRecordBatchStream<ParquetObjectFile>, DatasetError> {
    let reader = ParquetObjectFile::open(file).await?;
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|source| parquet_error(file, source))?;
    let schema = Arc::clone(builder.schema());
    let mut wanted = vec![QUESTION_ID, QUESTION, DOC_ID];
    if with_image {
        wanted.push(IMAGE);
    }
    let mut roots = Vec::new();
    for name in wanted {
        let index = schema.index_of(name).map_err(|_| {
            let found: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            malformed(
                file,
                format!("missing column `{name}` (columns: {})", found.join(", ")),
            )
        })?;
        roots.push(index);
    }
    roots.extend(
        [ANSWERS, QUESTION_TYPES]
            .iter()
            .filter_map(|n| schema.index_of(n).ok()),
    );
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    builder
        .with_projection(mask)
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|source| parquet_error(file, source))
}

/// A batch's columns, cast to the types the readers use.
struct Columns {
    question_id: Vec<i64>,
    doc_id: Vec<i64>,
    question: ArrayRef,
    answers: Option<ArrayRef>,
    question_types: Option<ArrayRef>,
}

fn utf8_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

impl Columns {
    fn from_batch(batch: &RecordBatch, file: &Location) -> Result<Self, DatasetError> {
        let column = |name: &str, to: &DataType| -> Result<Option<ArrayRef>, DatasetError> {
            batch
                .column_by_name(name)
                .map(|array| {
                    cast(array, to).map_err(|e| {
                        malformed(
                            file,
                            format!("column `{name}` ({}): {e}", array.data_type()),
                        )
                    })
                })
                .transpose()
        };
        let ids = |name: &str| -> Result<Vec<i64>, DatasetError> {
            let array = column(name, &DataType::Int64)?
                .ok_or_else(|| malformed(file, format!("missing column `{name}`")))?;
            let ints = array.as_primitive::<Int64Type>();
            match (0..ints.len()).find(|&row| ints.is_null(row)) {
                Some(row) => Err(malformed(
                    file,
                    format!("column `{name}`: row {row} is null or not an integer"),
                )),
                None => Ok(ints.values().to_vec()),
            }
        };
        Ok(Columns {
            question_id: ids(QUESTION_ID)?,
            doc_id: ids(DOC_ID)?,
            question: column(QUESTION, &DataType::Utf8)?
                .ok_or_else(|| malformed(file, format!("missing column `{QUESTION}`")))?,
            answers: column(ANSWERS, &utf8_list())?,
            question_types: column(QUESTION_TYPES, &utf8_list())?,
        })
    }

    fn annotation(&self, row: usize) -> Annotation {
        let strings = |array: &ArrayRef| -> Option<Vec<String>> {
            let list = array.as_list::<i32>();
            if list.is_null(row) {
                return None;
            }
            let values = list.value(row);
            let values = values.as_string::<i32>();
            Some(
                values
                    .iter()
                    .map(|v| v.unwrap_or_default().to_owned())
                    .collect(),
            )
        };
        let question = self.question.as_string::<i32>();
        Annotation {
            question_id: self.question_id[row],
            question: question.value(row).to_owned(),
            answers: self.answers.as_ref().and_then(strings),
            question_types: self
                .question_types
                .as_ref()
                .and_then(strings)
                .unwrap_or_default(),
            doc_id: self.doc_id[row],
        }
    }
}

/// The image column: a struct with `bytes` and an optional `path`, or plain binary.
struct Images {
    bytes: ArrayRef,
    path: Option<ArrayRef>,
}

impl Images {
    fn from_batch(batch: &RecordBatch, file: &Location) -> Result<Self, DatasetError> {
        let image = batch
            .column_by_name(IMAGE)
            .ok_or_else(|| malformed(file, format!("missing column `{IMAGE}`")))?;
        let to_binary = |array: &ArrayRef| {
            cast(array, &DataType::Binary).map_err(|e| {
                malformed(
                    file,
                    format!("column `{IMAGE}` ({}): {e}", array.data_type()),
                )
            })
        };
        match image.data_type() {
            DataType::Struct(_) => {
                let image = image.as_struct();
                let bytes = image.column_by_name("bytes").ok_or_else(|| {
                    malformed(file, format!("column `{IMAGE}` has no `bytes` field"))
                })?;
                let path = match image.column_by_name("path") {
                    Some(path) => Some(
                        cast(path, &DataType::Utf8)
                            .map_err(|e| malformed(file, format!("column `{IMAGE}.path`: {e}")))?,
                    ),
                    None => None,
                };
                Ok(Images {
                    bytes: to_binary(bytes)?,
                    path,
                })
            }
            _ => Ok(Images {
                bytes: to_binary(image)?,
                path: None,
            }),
        }
    }

    fn get(&self, row: usize) -> Option<(&[u8], Option<String>)> {
        let bytes = self.bytes.as_binary::<i32>();
        if bytes.is_null(row) {
            return None;
        }
        let path = self.path.as_ref().and_then(|p| {
            let p = p.as_string::<i32>();
            (!p.is_null(row)).then(|| p.value(row).to_owned())
        });
        Some((bytes.value(row), path))
    }
}

/// Pages with their questions, from either layout.
pub struct PageReader {
    ready: VecDeque<PageGroup>,
    parquet: Option<ParquetPages>,
}

struct ParquetPages {
    files: VecDeque<Location>,
    current: Option<(Location, ParquetRecordBatchStream<ParquetObjectFile>)>,
    /// Rows of the selection still to read.
    rows_left: usize,
    /// Selected questions not yet seen, per docId.
    outstanding: HashMap<i64, usize>,
    /// Pages still waiting for questions, keyed by docId and a hash of the image bytes.
    pending: Vec<((i64, u64), PageGroup)>,
}

impl PageReader {
    pub(super) fn ready(groups: Vec<PageGroup>) -> Self {
        PageReader {
            ready: groups.into(),
            parquet: None,
        }
    }

    pub(super) async fn parquet(
        files: Vec<Location>,
        limit: Option<usize>,
    ) -> Result<Self, DatasetError> {
        let annotations = read_annotations(&files, limit).await?;
        let mut outstanding = HashMap::new();
        for annotation in &annotations {
            *outstanding.entry(annotation.doc_id).or_insert(0) += 1;
        }
        Ok(PageReader {
            ready: VecDeque::new(),
            parquet: Some(ParquetPages {
                files: files.into(),
                current: None,
                rows_left: annotations.len(),
                outstanding,
                pending: Vec::new(),
            }),
        })
    }

    /// The next complete page, `None` at the end. After an error the reader should be dropped.
    pub async fn next(&mut self) -> Option<Result<PageGroup, DatasetError>> {
        loop {
            if let Some(group) = self.ready.pop_front() {
                return Some(Ok(group));
            }
            let pages = self.parquet.as_mut()?;
            match pages.read_batch(&mut self.ready).await {
                Ok(true) => {}
                Ok(false) => {
                    // Every selected row was read; pages left over are complete as well.
                    self.ready.extend(pages.pending.drain(..).map(|(_, g)| g));
                    self.parquet = None;
                }
                Err(e) => {
                    self.parquet = None;
                    return Some(Err(e));
                }
            }
        }
    }

    /// The pages as a stream, for `buffered`/channel plumbing.
    pub fn into_stream(self) -> impl Stream<Item = Result<PageGroup, DatasetError>> {
        futures::stream::unfold(self, |mut reader| async move {
            reader.next().await.map(|item| (item, reader))
        })
    }
}

impl ParquetPages {
    /// Reads one batch into pages; false once the selection is exhausted.
    async fn read_batch(&mut self, ready: &mut VecDeque<PageGroup>) -> Result<bool, DatasetError> {
        while self.rows_left > 0 {
            let (file, batches) = match &mut self.current {
                Some(current) => current,
                None => {
                    let Some(file) = self.files.pop_front() else {
                        return Ok(false);
                    };
                    let batches = open_batches(&file, true).await?;
                    self.current.insert((file, batches))
                }
            };
            match batches.next().await {
                None => self.current = None,
                Some(batch) => {
                    let batch = batch.map_err(|source| parquet_error(file, source))?;
                    let file = file.clone();
                    self.add_batch(&batch, &file, ready)?;
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn add_batch(
        &mut self,
        batch: &RecordBatch,
        file: &Location,
        ready: &mut VecDeque<PageGroup>,
    ) -> Result<(), DatasetError> {
        let columns = Columns::from_batch(batch, file)?;
        let images = Images::from_batch(batch, file)?;
        let rows = self.rows_left.min(batch.num_rows());
        for row in 0..rows {
            let annotation = columns.annotation(row);
            let (bytes, path) = images.get(row).ok_or_else(|| {
                malformed(
                    file,
                    format!("question {}: image bytes are null", annotation.question_id),
                )
            })?;
            let key = (annotation.doc_id, hash_bytes(bytes));
            let slot = match self.pending.iter().position(|(k, _)| *k == key) {
                Some(slot) => slot,
                None => {
                    let image = ImageSource::Inline {
                        bytes: Arc::from(bytes),
                        path,
                    };
                    self.pending.push((
                        key,
                        PageGroup {
                            image,
                            questions: Vec::new(),
                        },
                    ));
                    self.pending.len() - 1
                }
            };
            let group = &mut self.pending[slot].1;
            group.questions.push(DocVqaQuestion {
                question_id: annotation.question_id,
                question: annotation.question,
                answers: annotation.answers,
                question_types: annotation.question_types,
                doc_id: annotation.doc_id,
                image: group.image.clone(),
            });
            let left = self.outstanding.entry(annotation.doc_id).or_insert(1);
            *left -= 1;
            if *left == 0 {
                let doc_id = annotation.doc_id;
                let (done, waiting) = std::mem::take(&mut self.pending)
                    .into_iter()
                    .partition(|((doc, _), _)| *doc == doc_id);
                self.pending = waiting;
                ready.extend(done.into_iter().map(|(_, g): ((i64, u64), PageGroup)| g));
            }
        }
        self.rows_left -= rows;
        Ok(())
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}
