//! The JSONL request format of `docpipe generate` (and of the benchmark): one
//! `{"id", "messages": [HF chat messages], "max_new_tokens"}` object per line, image items as
//! `{"type": "image", "path": ...}` relative to the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use docpipe_core::{ChatMessage, ChatRequest, ContentItem};
use serde::Deserialize;

use crate::image::load_image;

/// Why a request file could not be read; the message names the file and line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RequestFileError(String);

#[derive(Deserialize)]
struct Line {
    id: String,
    messages: Vec<ChatMessage>,
    max_new_tokens: usize,
}

/// A request of the file, with its images loaded.
#[derive(Debug, Clone)]
pub struct FileRequest {
    /// The request's `id`.
    pub id: String,
    /// `path:line`, for error messages about this request.
    pub location: String,
    /// The request, images loaded.
    pub request: ChatRequest,
}

/// Reads every request and its images. Requests naming the same image file share one `Arc`,
/// so the model encodes that image once per batch.
pub fn read_requests(path: &Path) -> Result<Vec<FileRequest>, RequestFileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RequestFileError(format!("{}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut images: HashMap<PathBuf, Arc<image::RgbImage>> = HashMap::new();
    let mut requests = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let location = format!("{}:{}", path.display(), index + 1);
        let parsed: Line =
            serde_json::from_str(line).map_err(|e| RequestFileError(format!("{location}: {e}")))?;
        let mut request_images = Vec::new();
        for item in parsed.messages.iter().flat_map(|m| &m.content) {
            let ContentItem::Image { path: image_path } = item else {
                continue;
            };
            let Some(image_path) = image_path else {
                return Err(RequestFileError(format!(
                    "{location}: request {}: an image item has no path",
                    parsed.id
                )));
            };
            let full = base.join(image_path);
            let image = match images.get(&full) {
                Some(image) => image.clone(),
                None => {
                    let image = Arc::new(load_image(&full).map_err(|e| {
                        RequestFileError(format!("{location}: request {}: {e}", parsed.id))
                    })?);
                    images.insert(full, image.clone());
                    image
                }
            };
            request_images.push(image);
        }
        requests.push(FileRequest {
            id: parsed.id,
            location,
            request: ChatRequest {
                messages: parsed.messages,
                images: request_images,
                max_new_tokens: parsed.max_new_tokens,
            },
        });
    }
    Ok(requests)
}
