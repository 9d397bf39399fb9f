//! What a source lists and what the renderer produces: a [`DocumentRef`] (URI, version,
//! manifest questions and key columns) and a [`PageImage`] (one rendered page, holding an
//! `Arc` of its document so that every row built from it can name the document).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// A question asked about a document, with the identifier the caller uses to match the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Question {
    /// Written to the `question_id` column; manifest ids that are numbers become strings.
    pub id: String,
    /// The question as asked, before the task's prompt template is applied (the `question` column).
    pub text: String,
}

/// One document to process, as listed by a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentRef {
    /// Where the document lives: a local path or an object-store URL.
    pub uri: String,
    /// The object's etag (for local files object_store derives it from inode, modification time
    /// and size); resume matches committed documents on `uri` + `version`.
    pub version: Option<String>,
    /// Size in bytes when the source knows it.
    pub size: Option<u64>,
    /// Per-document questions (from a manifest); merged with the pipeline's own tasks.
    #[serde(default)]
    pub questions: Vec<Question>,
    /// Key columns carried from a table manifest into every output row of this document
    /// (lake enrichment: the output table has the input's keys plus the answer columns).
    /// A key absent here is written as null.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, String>,
}

impl DocumentRef {
    /// A document known only by its URI: no version, size, questions or keys.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            version: None,
            size: None,
            questions: Vec::new(),
            keys: BTreeMap::new(),
        }
    }
}

/// A rendered page: RGB pixels plus what pdfium knows about the page.
#[derive(Debug, Clone)]
pub struct PageImage {
    /// The document the page belongs to, shared by all of its pages.
    pub doc: Arc<DocumentRef>,
    /// 1-based page number.
    pub page: u32,
    /// Pages in the document, whatever `render.max_pages` selected (1 for PNG and JPEG).
    pub page_count: u32,
    /// The rendered pixels, shared by every request about this page.
    pub image: Arc<image::RgbImage>,
    /// The page's text layer, empty for raster documents.
    pub text: String,
}
