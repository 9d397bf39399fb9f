//! The real [`Renderer`]: documents are fetched as local files (remote ones downloaded on
//! tokio), then rendered by the render worker processes.

use std::sync::Arc;

use docpipe_core::{DocumentRef, Failure, PageImage, Stage};
use docpipe_render::{DocumentOptions, PageStream, RenderPool, RenderedPage};
use docpipe_source::{Fetcher, LocalCopy};

use crate::engine::{OpenedDocument, Renderer};

pub struct PoolRenderer {
    pub pool: RenderPool,
    pub fetcher: Fetcher,
    pub options: DocumentOptions,
    /// The runtime that runs the downloads; render threads block on them.
    pub runtime: tokio::runtime::Handle,
}

impl Renderer for PoolRenderer {
    fn open(&self, doc: &Arc<DocumentRef>) -> Result<OpenedDocument, Failure> {
        let local = self
            .runtime
            .block_on(self.fetcher.fetch(doc))
            .map_err(|e| Failure::new(Stage::Source, &doc.uri, e.to_string()))?;
        let stream = self
            .pool
            .render(local.path(), &self.options)
            .map_err(|e| e.to_failure(&doc.uri))?;
        Ok(OpenedDocument {
            page_count: stream.page_count(),
            pages: stream.pages().to_vec(),
            stream: Box::new(Pages {
                stream,
                doc: doc.clone(),
                _local: local,
            }),
        })
    }
}

/// A document's pages; keeps a downloaded copy alive until its stream is done.
struct Pages {
    stream: PageStream<RenderedPage>,
    doc: Arc<DocumentRef>,
    _local: LocalCopy,
}

impl Iterator for Pages {
    type Item = Result<PageImage, Failure>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.stream.next()?;
        Some(
            item.map(|page| page.into_page_image(self.doc.clone()))
                .map_err(|e| e.to_failure(&self.doc.uri)),
        )
    }
}
