//! `pdecay`: train sparse networks with p-norm decoupled weight decay.

use anyhow::Result;
use clap::{Parser, Subcommand};

use pdecay_cli::{cli_deploy, cli_sweep, cli_train, demo, report};

/// mimalloc keeps freed pages for reuse; glibc's malloc hands the large buffers of each
/// training step back to the kernel and page-faults them in again (bench/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Train neural networks to be highly sparse with p-norm decoupled weight decay (pWD).
#[derive(Parser, Debug)]
#[command(name = "pdecay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The default: the MLP on the embedded Fashion-MNIST subset with AdamW and with pAdam,
    /// side by side (no download, no flags).
    Demo(cli_train::DemoArgs),
    /// Train a model on Fashion-MNIST (or MNIST) and write a run folder.
    Train(Box<cli_train::TrainArgs>),
    /// Train a grid of runs (over p, lambda, optimizer, ...) into one folder, with sweep.csv.
    Sweep(cli_sweep::SweepArgs),
    /// Write report.md with tables and plots (PNG and SVG) for a run or a sweep folder.
    Report(ReportArgs),
    /// Generate text from a GPT run's checkpoint.
    Sample(cli_train::SampleArgs),
    /// Export a run's model as safetensors, dense or sparse (CSR).
    Export(cli_deploy::ExportArgs),
    /// Remove dead neurons and channels: a smaller dense model with the same outputs.
    Compact(cli_deploy::CompactArgs),
    /// Test accuracy of an exported (dense, sparse or compact) model file.
    Eval(cli_deploy::EvalArgs),
    /// File size, parameters and latency (batch 1 and 64) of dense, sparse and compact.
    BenchInfer(cli_deploy::BenchInferArgs),
    /// pAdam vs Adam on a synthetic sparse linear-regression teacher: support recovery.
    LinearDemo(demo::DemoArgs),
}

fn main() -> Result<()> {
    let command = Cli::parse()
        .command
        .unwrap_or_else(|| Command::Demo(Default::default()));
    match command {
        Command::Demo(args) => cli_train::run_demo(&args),
        Command::Train(args) => cli_train::run_train(&args),
        Command::Sweep(args) => cli_sweep::run_sweep(&args),
        Command::Report(args) => {
            let files = report::write_report(&args.path)?;
            println!(
                "wrote {} and {} plot files in {}",
                files.markdown.display(),
                files.plots.len(),
                args.path.join("plots").display()
            );
            Ok(())
        }
        Command::Sample(args) => cli_train::run_sample(&args),
        Command::Export(args) => cli_deploy::run_export(&args),
        Command::Compact(args) => cli_deploy::run_compact(&args),
        Command::Eval(args) => cli_deploy::run_eval(&args),
        Command::BenchInfer(args) => cli_deploy::run_bench_infer(&args),
        Command::LinearDemo(args) => demo::run(&args),
    }
}

/// Flags of `pdecay report`.
#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// A run folder (pdecay train) or a sweep folder (pdecay sweep)
    path: std::path::PathBuf,
}
