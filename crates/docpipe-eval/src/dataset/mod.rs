//! Readers for DocVQA annotations in the two layouts found in the wild.
//!
//! * The official `val_v1.0.json` layout: one JSON file whose `data` array lists the questions,
//!   each naming its page image by a path relative to the file's folder.
//! * The Parquet layout of the common hub copies: one row per question with the page image
//!   inlined as `image: struct<bytes, path>`, spread over one or more `.parquet` files.
//!
//! [`DocVqaDataset::annotations`] reads only the questions and answers (what scoring needs);
//! [`DocVqaDataset::pages`] yields the questions grouped by page image, so that the pipeline can
//! encode each image once for all its questions.

mod json_layout;
mod parquet_layout;

use std::sync::Arc;

use docpipe_store::{Location, StoreError, Stores};

pub use parquet_layout::PageReader;

/// Why a DocVQA dataset could not be opened or read. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The location cannot be opened, or the annotation file, a Parquet file or the folder
    /// listing cannot be read (absent, denied, unreachable).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The annotation JSON does not parse; serde's message carries the line and column.
    #[error("{file}: not a DocVQA annotation file: {source}")]
    Json {
        /// The annotation file.
        file: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// A Parquet file lacks a column or holds values of the wrong kind.
    #[error("{file}: {problem}")]
    Malformed {
        /// The dataset file at fault.
        file: String,
        /// What is wrong, naming the column or the question.
        problem: String,
    },
    /// A Parquet file cannot be decoded (not Parquet, truncated, or a failed range read).
    #[error("{file}: cannot read Parquet: {source}")]
    Parquet {
        /// The Parquet file.
        file: String,
        /// The Parquet reader's error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The location is neither a `.json` nor a `.parquet` file, and no `.parquet` object lies
    /// under it.
    #[error("{url}: no .parquet files found (expected a val_v1.0.json-style file, a .parquet file or a folder of them)")]
    NoFiles {
        /// The location as opened.
        url: String,
    },
    /// A page image named by the JSON layout cannot be read ([`PageGroup::read_image`]); only
    /// that page's questions fail.
    #[error("missing image {url} (question {question_id}): {source}")]
    MissingImage {
        /// The image's location.
        url: String,
        /// The first question about the image.
        question_id: i64,
        /// Why it cannot be read.
        #[source]
        source: Box<StoreError>,
    },
}

impl DatasetError {
    /// True when the dataset itself is at fault (exit 2), false when its storage could not be
    /// reached (exit 3).
    pub fn is_usage(&self) -> bool {
        match self {
            DatasetError::Store(e) => e.is_usage(),
            DatasetError::MissingImage { source, .. } => source.is_usage(),
            _ => true,
        }
    }
}

/// The gold side of one question: what scoring needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    /// DocVQA's `questionId`, unique over the dataset; predictions and metrics are keyed by it.
    pub question_id: i64,
    /// The question text as the dataset gives it.
    pub question: String,
    /// Absent in the test split.
    pub answers: Option<Vec<String>>,
    /// DocVQA's question categories (e.g. `table/list`, `handwritten`), for per-type scores; empty
    /// when the dataset has none.
    pub question_types: Vec<String>,
    /// DocVQA's `docId`: the page image the question is about.
    pub doc_id: i64,
}

/// Where a question's page image is.
#[derive(Clone)]
pub enum ImageSource {
    /// A file next to the annotations, resolved against the dataset's folder.
    Stored(Location),
    /// Bytes inlined in a Parquet row; `path` is the original file name when the row has one.
    Inline {
        /// The encoded image file (PNG or JPEG), shared by the page's questions.
        bytes: Arc<[u8]>,
        /// The original file name when the row has one.
        path: Option<String>,
    },
}

impl std::fmt::Debug for ImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSource::Stored(location) => write!(f, "Stored({location})"),
            ImageSource::Inline { bytes, path } => {
                write!(f, "Inline({} bytes, path {path:?})", bytes.len())
            }
        }
    }
}

impl ImageSource {
    /// A name for logs and error rows: the URL of a stored image, the path of an inline one.
    pub fn describe(&self) -> String {
        match self {
            ImageSource::Stored(location) => location.display().to_owned(),
            ImageSource::Inline { path, bytes } => path
                .clone()
                .unwrap_or_else(|| format!("<inline image, {} bytes>", bytes.len())),
        }
    }
}

/// One DocVQA question with its page image.
#[derive(Debug, Clone)]
pub struct DocVqaQuestion {
    /// DocVQA's `questionId`, unique over the dataset.
    pub question_id: i64,
    /// The question text as the dataset gives it.
    pub question: String,
    /// The gold answers; `None` in the test split.
    pub answers: Option<Vec<String>>,
    /// DocVQA's question categories; empty when the dataset has none.
    pub question_types: Vec<String>,
    /// DocVQA's `docId`: the page image the question is about.
    pub doc_id: i64,
    /// Where the page image is.
    pub image: ImageSource,
}

impl DocVqaQuestion {
    /// The gold side of the question, without the image.
    pub fn annotation(&self) -> Annotation {
        Annotation {
            question_id: self.question_id,
            question: self.question.clone(),
            answers: self.answers.clone(),
            question_types: self.question_types.clone(),
            doc_id: self.doc_id,
        }
    }
}

/// All the questions (of the selected ones) about one page image, in dataset order.
#[derive(Debug, Clone)]
pub struct PageGroup {
    /// The page image all of `questions` are about.
    pub image: ImageSource,
    /// The selected questions about it, at least one, in dataset order.
    pub questions: Vec<DocVqaQuestion>,
}

impl PageGroup {
    /// The image bytes: read from the store for a stored image, shared for an inline one.
    /// A missing file is an error for this page only; the caller records it and goes on.
    pub async fn read_image(&self) -> Result<Arc<[u8]>, DatasetError> {
        match &self.image {
            ImageSource::Inline { bytes, .. } => Ok(Arc::clone(bytes)),
            ImageSource::Stored(location) => match location.read().await {
                Ok(bytes) => Ok(Arc::from(&bytes[..])),
                Err(source) => Err(DatasetError::MissingImage {
                    url: location.display().to_owned(),
                    question_id: self.questions.first().map_or(0, |q| q.question_id),
                    source: Box::new(source),
                }),
            },
        }
    }
}

#[derive(Debug)]
enum Layout {
    Json(Location),
    Parquet(Vec<Location>),
}

/// A DocVQA dataset opened from a URL or local path: a `.json` annotation file, a `.parquet`
/// file, or a folder (prefix) of `.parquet` files read in name order.
#[derive(Debug)]
pub struct DocVqaDataset {
    layout: Layout,
}

impl DocVqaDataset {
    /// Opens `location`: a `.json` file in the official layout, a `.parquet` file, or a folder or
    /// prefix of `.parquet` files. Only a folder is listed here; files are read later.
    pub async fn open(stores: &Stores, location: &str) -> Result<Self, DatasetError> {
        let root = stores.open(location)?;
        let name = root
            .prefix()
            .filename()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let layout = if name.ends_with(".json") {
            Layout::Json(root)
        } else if name.ends_with(".parquet") {
            Layout::Parquet(vec![root])
        } else {
            Layout::Parquet(parquet_layout::list_files(&root).await?)
        };
        Ok(Self { layout })
    }

    /// The gold annotations of the first `limit` questions (all when `None`), without images.
    pub async fn annotations(&self, limit: Option<usize>) -> Result<Vec<Annotation>, DatasetError> {
        match &self.layout {
            Layout::Json(file) => Ok(json_layout::read(file, limit)
                .await?
                .iter()
                .map(DocVqaQuestion::annotation)
                .collect()),
            Layout::Parquet(files) => parquet_layout::read_annotations(files, limit).await,
        }
    }

    /// The first `limit` questions (all when `None`) grouped by page image. Each group is
    /// complete: it holds every selected question about its image.
    pub async fn pages(&self, limit: Option<usize>) -> Result<PageReader, DatasetError> {
        match &self.layout {
            Layout::Json(file) => {
                let questions = json_layout::read(file, limit).await?;
                Ok(PageReader::ready(json_layout::group_by_image(questions)))
            }
            Layout::Parquet(files) => PageReader::parquet(files.clone(), limit).await,
        }
    }
}
