//! `pdecay`: train sparse networks with p-norm decoupled weight decay.

use clap::Parser;

/// mimalloc keeps freed pages for reuse; glibc's malloc hands the large buffers of each
/// training step back to the kernel and page-faults them in again (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    pdecay_cli::cli::Cli::parse().run()
}
