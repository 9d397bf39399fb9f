//! The pool ↔ worker protocol: frames on the worker's stdin/stdout, each a little-endian `u32`
//! header length, a `u64` payload length, a JSON header and raw payload bytes (RGB pixels of a
//! page, row-major, 3 bytes a pixel). The worker's stderr stays free for diagnostics.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Problem;
use crate::pages::PageSelection;

/// Headers larger than this are a protocol error, not an allocation.
const MAX_HEADER: u32 = 64 << 20;

/// The document a request is about and how to render its pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Job {
    pub path: PathBuf,
    pub password: Option<String>,
    pub longest_edge: u32,
    pub pixel_budget: u64,
    /// Write each page as `page-NNNN.png` into this folder instead of sending its pixels back.
    pub png_dir: Option<PathBuf>,
}

/// What the pool asks of a worker. A document is opened once per worker and then rendered in
/// ranges, so that several workers can share one document's pages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Open the document (closing any other) and answer `Opened` with the pages `selection`
    /// picks, then render the first `first` of them as `Render` does; or answer `Failed`.
    /// Rendering right away saves a round trip per document.
    Open {
        job: Job,
        selection: Option<PageSelection>,
        first: usize,
    },
    /// Render these pages of `job`'s document: one `Page`/`PageFailed` per page, then `Done`.
    /// `reopen` when the worker has not opened it for this stream (it may have another file of
    /// the same name open from an earlier one); otherwise it must be the document open.
    Render {
        job: Job,
        pages: Vec<u32>,
        reopen: bool,
    },
}

/// What a worker sends back: `Open` gets `Failed`, or `Opened` and what `Render` gets; `Render`
/// gets one `Page`/`PageFailed` per page and `Done`, or `Failed` when it cannot open the
/// document or it is not the open one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub(crate) enum Reply {
    /// Sent once at start-up: pdfium is loaded (or `Failed` with `LibraryNotFound`).
    Ready,
    Opened {
        page_count: u32,
        pages: Vec<u32>,
    },
    /// The page's pixels follow as the payload unless the job named a `png_dir`.
    Page {
        page: u32,
        width: u32,
        height: u32,
        text: String,
        png: Option<PathBuf>,
    },
    PageFailed {
        problem: Problem,
    },
    Failed {
        problem: Problem,
    },
    Done,
}

pub(crate) fn write_frame<T: Serialize>(
    out: &mut impl Write,
    header: &T,
    payload: &[u8],
) -> io::Result<()> {
    let header = serde_json::to_vec(header).map_err(io::Error::other)?;
    out.write_all(&(header.len() as u32).to_le_bytes())?;
    out.write_all(&(payload.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    out.write_all(payload)?;
    out.flush()
}

/// Reads one frame; `Ok(None)` on a clean end of stream before a frame starts.
/// `max_payload` bounds the allocation a corrupt or hostile peer can cause.
pub(crate) fn read_frame<T: DeserializeOwned>(
    input: &mut impl Read,
    max_payload: u64,
) -> io::Result<Option<(T, Vec<u8>)>> {
    let mut lengths = [0u8; 12];
    match input.read_exact(&mut lengths[..1]) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    input.read_exact(&mut lengths[1..])?;
    let header_len = u32::from_le_bytes(lengths[..4].try_into().expect("4 bytes"));
    let payload_len = u64::from_le_bytes(lengths[4..].try_into().expect("8 bytes"));
    if header_len > MAX_HEADER || payload_len > max_payload {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame too large (header {header_len} bytes, payload {payload_len} bytes)"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    input.read_exact(&mut header)?;
    let mut payload = vec![0u8; payload_len as usize];
    input.read_exact(&mut payload)?;
    let header = serde_json::from_slice(&header)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((header, payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buffer = Vec::new();
        let page = Reply::Page {
            page: 3,
            width: 2,
            height: 1,
            text: "héllo".into(),
            png: None,
        };
        write_frame(&mut buffer, &page, &[1, 2, 3, 4, 5, 6]).unwrap();
        write_frame(&mut buffer, &Reply::Done, &[]).unwrap();
        let mut input = buffer.as_slice();
        let (reply, payload) = read_frame::<Reply>(&mut input, 6).unwrap().unwrap();
        assert_eq!((reply, payload), (page, vec![1, 2, 3, 4, 5, 6]));
        let (reply, payload) = read_frame::<Reply>(&mut input, 6).unwrap().unwrap();
        assert_eq!((reply, payload.len()), (Reply::Done, 0));
        assert!(read_frame::<Reply>(&mut input, 6).unwrap().is_none());
    }

    #[test]
    fn refuses_oversized_and_truncated_frames() {
        let mut buffer = Vec::new();
        write_frame(&mut buffer, &Reply::Done, &[0; 100]).unwrap();
        let err = read_frame::<Reply>(&mut buffer.as_slice(), 99).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let err = read_frame::<Reply>(&mut &buffer[..20], 100).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
