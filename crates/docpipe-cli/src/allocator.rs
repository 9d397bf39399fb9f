//! The process's memory allocator: mimalloc, told to keep what is freed.
//!
//! A model allocates and frees tensors of tens to hundreds of megabytes on every layer. glibc's
//! malloc hands each one back to the kernel and the next is faulted in again page by page:
//! a third of a Florence-2 page's time went to page faults and the kernel's page clearing
//! (docs/benchmarks.md, "Florence-2-base on CPU"). mimalloc reuses freed memory, and with
//! purging off it never returns it, so the process holds its peak, which the machine must
//! have anyway; large OS pages cut the faults of the first use.

use libmimalloc_sys::{mi_option_large_os_pages, mi_option_set, mi_option_t};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in `mimalloc.h` of the pinned mimalloc (libmimalloc-sys 0.1.49 does
/// not name it): milliseconds before freed memory goes back to the kernel, -1 for never.
const PURGE_DELAY: mi_option_t = 15;

/// Sets the options; called first thing in `main`.
pub fn configure() {
    // SAFETY: setting an option is a plain store into mimalloc's option table, valid at any time.
    unsafe {
        mi_option_set(PURGE_DELAY, -1);
        mi_option_set(mi_option_large_os_pages, 1);
    }
}

#[cfg(test)]
mod tests {
    use libmimalloc_sys::mi_option_get;

    use super::*;

    fn purge_delay() -> i64 {
        // SAFETY: reads mimalloc's option table.
        unsafe { mi_option_get(PURGE_DELAY) as i64 }
    }

    #[test]
    fn the_purge_delay_index_names_the_purge_delay() {
        // The pinned mimalloc's default purge delay is 1000 ms (`options.c`); another index would
        // read another option's value, so a wrong index after a version bump fails here.
        assert_eq!(purge_delay(), 1000);
        configure();
        assert_eq!(purge_delay(), -1);
    }
}
