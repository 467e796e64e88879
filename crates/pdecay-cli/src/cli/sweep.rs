//! `pdecay sweep`: flags, progress (a bar over the runs above the current run's bar) and the
//! closing table.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use clap::Args;
use pdecay_burn::on_pool;

use super::device::DeviceSpec;
use super::progress::{BarProgress, set_threads};
use crate::config::TrainConfig;
use crate::experiments::sweep::{self, PlannedRun, SweepProgress};
use crate::run::{Outcome, RunState, RunSummary};
use crate::train::{PlainProgress, Progress};

/// Flags of `pdecay sweep`.
#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The sweep file (TOML): keys for every run at the top level, `[[grid]]` tables of runs;
    /// a list is swept. See `crates/pdecay-cli/presets/` for examples
    #[arg(long, conflicts_with = "preset", required_unless_present = "preset")]
    pub config: Option<PathBuf>,

    /// A built-in sweep: `demo` (embedded subset, about a minute) or `fashion-mlp` (the full
    /// comparison on Fashion-MNIST, about 20 minutes on 2 cores)
    #[arg(long)]
    pub preset: Option<String>,

    /// Sweep folder: one run folder per run, and sweep.csv [default: sweeps/<preset or file name>]
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Folder with the IDX files (a GPT sweep: the text file), for every run [default: the
    /// sweep file's `data`, else as `pdecay train` finds it]
    #[arg(long)]
    pub data: Option<PathBuf>,

    /// CPU threads [default: all cores]
    #[arg(long)]
    pub threads: Option<usize>,

    /// Where to compute: cpu, or cuda / cuda:N with a build that has the `cuda` feature
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

/// `pdecay sweep`.
pub fn run_sweep(args: &SweepArgs) -> Result<()> {
    let (text, source, name) = match (&args.preset, &args.config) {
        (Some(preset), _) => (
            sweep::preset(preset)?.to_string(),
            format!("preset {preset}"),
            preset.clone(),
        ),
        (None, Some(path)) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read sweep file {}", path.display()))?,
            path.display().to_string(),
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sweep".into()),
        ),
        (None, None) => unreachable!("clap requires --config or --preset"),
    };
    let mut plan = sweep::parse(&text, &source)?;
    if let Some(dir) = &args.data {
        if plan.is_gpt() {
            ensure!(
                dir.is_file(),
                "--data {} is not a file; a GPT sweep trains on a UTF-8 text file",
                dir.display()
            );
        } else {
            ensure!(
                dir.is_dir(),
                "--data {} is not a folder; give the folder that holds the four IDX files",
                dir.display()
            );
        }
        for run in &mut plan.runs {
            run.config.data = Some(dir.display().to_string());
        }
    }
    set_threads(args.threads)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| sweep::default_out(&name));
    println!(
        "sweep {source}: {} runs into {}",
        plan.runs.len(),
        out.display()
    );
    let mut progress: Box<dyn SweepProgress + Send> = if std::io::stdout().is_terminal() {
        Box::new(BarSweep::new(plan.runs.len()))
    } else {
        Box::new(PlainSweep(PlainProgress::quiet()))
    };
    let devices = if plan.is_gpt() {
        vec![args.device.single()?]
    } else {
        args.device.devices()?
    };
    let results = on_pool(|| {
        sweep::run(
            &plan,
            &out,
            &devices,
            &TrainConfig::load_data,
            progress.as_mut(),
        )
    })?;
    println!(
        "\n{:<48} {:>9} {:>9} {:>17}",
        "run",
        if plan.is_gpt() {
            "val loss"
        } else {
            "test acc"
        },
        "sparsity",
        "non-zero params"
    );
    for r in &results {
        match &r.outcome {
            Outcome::Finished(s) => println!(
                "{:<48} {:>9} {:>8.1}% {:>8} / {:<7}",
                r.run.name,
                match s {
                    RunSummary::Classifier(s) => format!("{:.2}%", 100.0 * s.final_test_accuracy),
                    RunSummary::Gpt(s) => format!("{:.4}", s.final_val_loss),
                },
                100.0 * s.sparsity(),
                s.nonzero_params(),
                s.total_params()
            ),
            Outcome::Diverged(d) => {
                println!("{:<48} diverged at {}", r.run.name, d.at_for(plan.is_gpt()))
            }
        }
    }
    println!(
        "\nwrote {}; plots and a report: pdecay report {}",
        out.join("sweep.csv").display(),
        out.display()
    );
    Ok(())
}

fn state_word(state: RunState) -> &'static str {
    match state {
        RunState::New => "training",
        RunState::Started => "resuming",
        RunState::Finished => "finished before, skipped",
        RunState::Diverged => "diverged before, skipped",
    }
}

/// Plain lines: one per run, one per evaluation.
struct PlainSweep(PlainProgress);

impl SweepProgress for PlainSweep {
    fn run(&mut self, index: usize, total: usize, run: &PlannedRun, state: RunState) {
        println!(
            "run {}/{total} {} ({})",
            index + 1,
            run.name,
            state_word(state)
        );
    }

    fn training(&mut self) -> &mut dyn Progress {
        &mut self.0
    }
}

/// A bar over the runs, the current run's epoch bar below it, epoch lines above both.
struct BarSweep {
    runs: indicatif::ProgressBar,
    training: BarProgress,
}

impl BarSweep {
    fn new(total: usize) -> Self {
        let multi = indicatif::MultiProgress::new();
        let runs = multi.add(indicatif::ProgressBar::new(total as u64));
        runs.set_style(
            indicatif::ProgressStyle::with_template("runs [{bar:30}] {pos}/{len} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        Self {
            runs,
            training: BarProgress::new(multi, false),
        }
    }
}

impl SweepProgress for BarSweep {
    fn run(&mut self, index: usize, _total: usize, run: &PlannedRun, state: RunState) {
        self.runs.set_position(index as u64);
        self.runs
            .set_message(format!("{} ({})", run.name, state_word(state)));
        self.runs.println(format!(
            "run {}: {} ({})",
            index + 1,
            run.name,
            state_word(state)
        ));
    }

    fn training(&mut self) -> &mut dyn Progress {
        &mut self.training
    }

    fn finish(&mut self) {
        self.runs.finish_and_clear();
    }
}
