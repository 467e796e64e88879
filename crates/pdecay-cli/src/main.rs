//! `pdecay`: train sparse networks with p-norm decoupled weight decay.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod demo;

/// Train neural networks to be highly sparse with p-norm decoupled weight decay (pWD).
#[derive(Parser, Debug)]
#[command(name = "pdecay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The default: pAdam vs Adam on a synthetic sparse linear-regression teacher (seconds,
    /// no data needed): support recovery, sparsity and test error side by side.
    Demo(demo::DemoArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli
        .command
        .unwrap_or(Command::Demo(demo::DemoArgs::default()))
    {
        Command::Demo(args) => demo::run(&args),
    }
}
