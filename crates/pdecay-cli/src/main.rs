//! `pdecay`: train sparse networks with p-norm decoupled weight decay.

use clap::Parser;

/// mimalloc keeps freed pages for reuse; glibc's malloc hands the large buffers of each
/// training step back to the kernel and page-faults them in again (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same index in its v2 and v3),
/// which the Rust binding does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The environment variable through which mimalloc reads the purge delay at start.
const PURGE_DELAY_VARIABLE: &str = "MIMALLOC_PURGE_DELAY";

/// Never hand freed pages back to the kernel, unless `MIMALLOC_PURGE_DELAY` says otherwise.
///
/// mimalloc returns pages that stay unused for a while (1 s by default); a training step's
/// buffers come back every step, so each step page-faulted them in again and the kernel
/// zeroed them (35k faults in 100 GPT iterations; `bench/purge_delay.sh` measures the
/// difference). A training process holds its peak memory throughout anyway.
fn keep_freed_pages() {
    if std::env::var_os(PURGE_DELAY_VARIABLE).is_none() {
        // SAFETY: mi_option_set is not thread safe; it runs first in `main`, before any thread
        // starts, with an option index and value mimalloc.h documents (-1: never purge).
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() -> anyhow::Result<()> {
    keep_freed_pages();
    pdecay_cli::cli::Cli::parse().run()
}
