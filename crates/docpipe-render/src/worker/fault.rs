//! The worker's test hook, compiled only with the `fault-injection` feature (which only
//! docpipe-cli's tests enable): a release worker never reads [`FAULT_ENV`], so no environment
//! can make it abort or hang.

use std::path::Path;

/// `crash:NAME` makes the worker abort, `hang:NAME` makes it stop answering, when it starts a
/// page of the document whose file name is `NAME`; `crash:NAME@7` (or `hang:NAME@7`) only when
/// it starts page 7, so that one worker's range of a document fails while the others render.
/// The tests use it to exercise crash and timeout recovery with ordinary files.
pub const FAULT_ENV: &str = "DOCPIPE_RENDER_FAULT";

/// Called as the worker starts `page` of `path`: aborts or hangs if [`FAULT_ENV`] says so.
pub(super) fn before_page(path: &Path, page: u32) {
    let Ok(setting) = std::env::var(FAULT_ENV) else {
        return;
    };
    let Some((kind, target)) = setting.split_once(':') else {
        return;
    };
    let (name, only_page) = match target.rsplit_once('@') {
        Some((name, number)) => match number.parse::<u32>() {
            Ok(number) => (name, Some(number)),
            Err(_) => return,
        },
        None => (target, None),
    };
    if path.file_name().is_none_or(|file| file != name) || only_page.is_some_and(|p| p != page) {
        return;
    }
    match kind {
        "crash" => std::process::abort(),
        "hang" => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
        _ => {}
    }
}
