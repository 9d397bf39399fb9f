//! [`PageStream`]: one document's pages in page order, rendered by one or more workers, each
//! holding a consecutive range of the pages.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::RenderError;
use crate::pages::PageSelection;
use crate::pool::private::PageReply;
use crate::pool::{FromReply, Shared, Worker};
use crate::protocol::{write_frame, Job, Reply, Request};

/// The pages of one document, in page order. A page-level error is one `Err` item and the
/// stream goes on. The worker that opened the document renders its first range of pages; any
/// worker the pool has idle meanwhile (and no other document is waiting for) opens it too and
/// renders a later range, so one large document keeps every worker busy. Pages still come out
/// in order: each worker sends at most a page or two ahead of the one being read, which bounds
/// memory by the number of workers. When a worker crashes or times out, each page of its range
/// not yet rendered is one `Err` naming that page, and the other ranges go on.
///
/// Blocking: from async code, iterate it on a blocking thread (e.g.
/// `tokio::task::spawn_blocking`) and forward items into a bounded channel.
///
/// Dropping the stream before its end kills its workers (they are replaced on demand), so
/// abandoning a 500-page document costs no rendering of the rest.
pub struct PageStream<T> {
    shared: Arc<Shared>,
    job: Job,
    path: PathBuf,
    page_count: u32,
    pages: Vec<u32>,
    /// Index into `pages` of the next page to yield.
    next: usize,
    /// Index into `pages` of the first page no range holds yet.
    assigned: usize,
    /// The ranges being rendered, in page order; the front one holds `pages[next]`.
    ranges: VecDeque<Range>,
    _item: PhantomData<T>,
}

/// Consecutive pages handed to one worker: `pages[..end]` from where the previous range ended.
struct Range {
    /// Index into `pages` one past the range's last page.
    end: usize,
    state: RangeState,
}

enum RangeState {
    /// The worker renders the range.
    Rendering(Worker),
    /// The worker was lost: its remaining pages fail, each with this status.
    Lost { status: String },
}

impl<T> PageStream<T> {
    /// Has one worker open the document and render its first range of pages.
    pub(crate) fn open(
        shared: Arc<Shared>,
        job: Job,
        selection: Option<PageSelection>,
        path: &Path,
    ) -> Result<Self, RenderError> {
        let mut worker = shared.checkout()?;
        let path = path.to_path_buf();
        let timeout = shared.config.page_timeout;
        let request = Request::Open {
            job: job.clone(),
            selection,
            first: shared.config.range_pages,
        };
        let opened = match write_frame(&mut worker.stdin, &request, &[]) {
            Ok(()) => worker.reply(timeout, &path, None),
            Err(_) => Err(RenderError::WorkerCrashed {
                path: path.clone(),
                page: None,
                status: worker.kill(),
            }),
        };
        let (page_count, pages) = match opened {
            Ok((Reply::Opened { page_count, pages }, _)) => (page_count, pages),
            Ok((Reply::Failed { problem }, _)) => {
                shared.give_back(worker);
                return Err(problem.into_error(path));
            }
            Ok((other, _)) => {
                shared.retire(worker);
                return Err(RenderError::Protocol {
                    path,
                    reason: format!("unexpected reply {other:?}"),
                });
            }
            Err(e) => {
                shared.retire(worker);
                return Err(e);
            }
        };
        let first = Range {
            end: shared.config.range_pages.min(pages.len()),
            state: RangeState::Rendering(worker),
        };
        let mut stream = PageStream {
            shared,
            job,
            path,
            page_count,
            pages,
            next: 0,
            assigned: first.end,
            ranges: VecDeque::from([first]),
            _item: PhantomData,
        };
        if stream.pages.is_empty() {
            stream.finish_front();
        }
        Ok(stream)
    }

    /// The document, as the caller named it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pages in the document, whatever the selection.
    pub fn page_count(&self) -> u32 {
        self.page_count
    }

    /// The 1-based pages this stream will yield, in order.
    pub fn pages(&self) -> &[u32] {
        &self.pages
    }

    /// Hands `worker` the next range (asking it to open the document first when `reopen`).
    fn assign(&mut self, mut worker: Worker, reopen: bool) {
        let start = self.assigned;
        let end = (start + self.shared.config.range_pages).min(self.pages.len());
        self.assigned = end;
        let render = Request::Render {
            job: self.job.clone(),
            pages: self.pages[start..end].to_vec(),
            reopen,
        };
        let state = match write_frame(&mut worker.stdin, &render, &[]) {
            Ok(()) => RangeState::Rendering(worker),
            Err(_) => {
                let status = worker.kill();
                self.shared.retire(worker);
                RangeState::Lost { status }
            }
        };
        self.ranges.push_back(Range { end, state });
    }

    /// A worker whose range is done (and which has the document open): given the next range,
    /// or back to the pool when none is left or another document waits and this one has
    /// other workers.
    fn recycle(&mut self, worker: Worker) {
        let more = self.assigned < self.pages.len();
        if more && (self.ranges.is_empty() || !self.shared.others_waiting()) {
            self.assign(worker, false);
        } else {
            self.shared.give_back(worker);
        }
    }

    /// Ranges for idle workers while pages are left, and a worker at all (waiting for one) when
    /// every range this stream held was lost.
    fn borrow_workers(&mut self) {
        while self.assigned < self.pages.len() {
            if self.ranges.is_empty() {
                match self.shared.checkout() {
                    Ok(worker) => self.assign(worker, true),
                    Err(e) => {
                        self.assigned =
                            (self.assigned + self.shared.config.range_pages).min(self.pages.len());
                        let status = format!("no worker to render it: {e}");
                        let state = RangeState::Lost { status };
                        self.ranges.push_back(Range {
                            end: self.assigned,
                            state,
                        });
                    }
                }
            } else if self.ranges.len() < self.shared.config.workers {
                match self.shared.try_checkout() {
                    Some(worker) => self.assign(worker, true),
                    None => return,
                }
            } else {
                return;
            }
        }
    }

    /// The next reply from the front range's worker about `page`.
    fn receive(&mut self, page: u32) -> Result<(Reply, Vec<u8>), RenderError> {
        let timeout = self.shared.config.page_timeout;
        let range = self
            .ranges
            .front_mut()
            .expect("a range holds the next page");
        let RangeState::Rendering(worker) = &mut range.state else {
            unreachable!("lost ranges are handled before receiving")
        };
        worker.reply(timeout, &self.path, Some(page))
    }

    /// The front range's worker failed on `page`: killed and retired, the rest of its range
    /// fails with `status`.
    fn lose_front(&mut self, status: String) {
        let range = self
            .ranges
            .front_mut()
            .expect("a range holds the next page");
        if let RangeState::Rendering(worker) =
            std::mem::replace(&mut range.state, RangeState::Lost { status })
        {
            self.shared.retire(worker);
        }
    }

    /// After the front range's last page: its worker's `Done`, then the worker is recycled.
    fn finish_front(&mut self) {
        let range = self.ranges.pop_front().expect("the range just read from");
        let RangeState::Rendering(mut worker) = range.state else {
            return;
        };
        match worker.reply(self.shared.config.page_timeout, &self.path, None) {
            Ok((Reply::Done, _)) => self.recycle(worker),
            other => {
                tracing::warn!(
                    "{}: render worker did not finish its range cleanly ({other:?})",
                    self.path.display()
                );
                worker.kill();
                self.shared.retire(worker);
            }
        }
    }
}

impl<T: FromReply> PageStream<T> {
    /// The front range's page `page`, from its worker.
    fn render_next(&mut self, page: u32) -> Result<T, RenderError> {
        let failed = match self.receive(page) {
            Ok((
                Reply::Page {
                    page: got,
                    width,
                    height,
                    text,
                    png,
                },
                payload,
            )) if got == page => {
                return T::from_reply(PageReply {
                    page,
                    page_count: self.page_count,
                    width,
                    height,
                    text,
                    png,
                    payload,
                })
                .ok_or_else(|| RenderError::Protocol {
                    path: self.path.clone(),
                    reason: format!("page {page}: the reply does not match its header"),
                });
            }
            Ok((Reply::PageFailed { problem }, _)) => {
                return Err(problem.into_error(self.path.clone()))
            }
            Ok((Reply::Failed { problem }, _)) => problem.into_error(self.path.clone()),
            Ok((other, _)) => RenderError::Protocol {
                path: self.path.clone(),
                reason: format!("unexpected reply {other:?}"),
            },
            Err(e) => e,
        };
        let status = match &failed {
            RenderError::WorkerCrashed { status, .. } => format!("{status}, on page {page}"),
            _ => format!("killed after page {page} failed"),
        };
        self.lose_front(status);
        Err(failed)
    }
}

impl<T: FromReply> Iterator for PageStream<T> {
    type Item = Result<T, RenderError>;

    fn next(&mut self) -> Option<Self::Item> {
        let page = *self.pages.get(self.next)?;
        self.borrow_workers();
        let item = match &self.ranges.front()?.state {
            RangeState::Lost { status } => Err(RenderError::WorkerCrashed {
                path: self.path.clone(),
                page: Some(page),
                status: status.clone(),
            }),
            RangeState::Rendering(_) => self.render_next(page),
        };
        self.next += 1;
        if self.ranges.front().is_some_and(|r| r.end == self.next) {
            self.finish_front();
        }
        Some(item)
    }
}

impl<T> Drop for PageStream<T> {
    fn drop(&mut self) {
        for range in self.ranges.drain(..) {
            if let RangeState::Rendering(worker) = range.state {
                self.shared.retire(worker);
            }
        }
    }
}
