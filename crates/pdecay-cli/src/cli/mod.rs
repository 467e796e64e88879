//! The commands: clap's flags to calls into the layers below.

pub mod deploy;
pub mod device;
pub mod gpt_deploy;
pub mod progress;
pub mod sample;
pub mod sweep;
pub mod train;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::experiments::{demo, linear_demo, report};
use device::DeviceSpec;

/// Train neural networks to be highly sparse with p-norm decoupled weight decay (pWD).
#[derive(Parser, Debug)]
#[command(name = "pdecay", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The default: the MLP on the embedded Fashion-MNIST subset with AdamW and with pAdam,
    /// side by side (no download, no flags).
    Demo(DemoArgs),
    /// Train a model on Fashion-MNIST (or MNIST), or a GPT on a text, and write a run folder.
    Train(Box<train::TrainArgs>),
    /// Train a grid of runs (over p, lambda, optimizer, ...) into one folder, with sweep.csv.
    Sweep(sweep::SweepArgs),
    /// Write report.md with tables and plots (PNG and SVG) for a run or a sweep folder.
    Report(ReportArgs),
    /// Generate text from a GPT run's checkpoint or an exported GPT file (KV cache, sparse layers).
    Sample(sample::SampleArgs),
    /// Export a run's model as safetensors, dense or sparse (CSR); GPTs with nanoGPT's names.
    Export(deploy::ExportArgs),
    /// Remove dead neurons and channels (GPT: MLP units and heads): same outputs, smaller.
    Compact(deploy::CompactArgs),
    /// Test accuracy of an exported (dense, sparse or compact) model file; a GPT's validation loss.
    Eval(deploy::EvalArgs),
    /// File size, parameters and latency (batch 1 and 64) of dense, sparse and compact; a GPT's
    /// decode tokens/s with and without the KV cache.
    BenchInfer(deploy::BenchInferArgs),
    /// A GPT's logits at every position of a text, or an image model file's on test images, as
    /// JSON (for bench/nanogpt_check.sh and bench/resnet_check.sh).
    #[command(hide = true)]
    Logits(gpt_deploy::LogitsArgs),
    /// pAdam vs Adam on a synthetic sparse linear-regression teacher: support recovery.
    LinearDemo(linear_demo::DemoArgs),
}

/// Flags of `pdecay demo` (none are needed).
#[derive(Args, Debug, Default)]
struct DemoArgs {
    /// Where to compute: cpu, or cuda / cuda:N (a build with the `cuda` feature)
    #[arg(long, default_value = "cpu")]
    device: DeviceSpec,
}

/// Flags of `pdecay report`.
#[derive(Args, Debug)]
struct ReportArgs {
    /// A run folder (pdecay train) or a sweep folder (pdecay sweep)
    path: PathBuf,
}

impl Cli {
    /// Runs the command (the main demo when none is given).
    pub fn run(self) -> Result<()> {
        match self
            .command
            .unwrap_or_else(|| Command::Demo(Default::default()))
        {
            Command::Demo(args) => {
                let device = args.device.single()?;
                pdecay_burn::on_pool(|| demo::run(device))
            }
            Command::Train(args) => train::run_train(&args),
            Command::Sweep(args) => sweep::run_sweep(&args),
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
            Command::Sample(args) => sample::run_sample(&args),
            Command::Export(args) => deploy::run_export(&args),
            Command::Compact(args) => deploy::run_compact(&args),
            Command::Eval(args) => deploy::run_eval(&args),
            Command::BenchInfer(args) => deploy::run_bench_infer(&args),
            Command::Logits(args) => deploy::run_logits(&args),
            Command::LinearDemo(args) => linear_demo::run(&args),
        }
    }
}
