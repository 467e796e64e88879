//! `pdecay`: train sparse networks with p-norm decoupled weight decay.

use anyhow::Result;
use clap::{Parser, Subcommand};

use pdecay_cli::{cli_train, demo};

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
    Demo,
    /// Train a model on Fashion-MNIST (or MNIST) and write a run folder.
    Train(Box<cli_train::TrainArgs>),
    /// pAdam vs Adam on a synthetic sparse linear-regression teacher: support recovery.
    LinearDemo(demo::DemoArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command.unwrap_or(Command::Demo) {
        Command::Demo => cli_train::run_demo(),
        Command::Train(args) => cli_train::run_train(&args),
        Command::LinearDemo(args) => demo::run(&args),
    }
}
