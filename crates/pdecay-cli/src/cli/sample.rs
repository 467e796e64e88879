//! `pdecay sample`: text from a GPT run's last checkpoint.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::device::DeviceSpec;
use crate::models::sampling::{Sampling, sample};
use crate::models::{Gpt, ModelKind};
use crate::run::RunDir;

/// Flags of `pdecay sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A GPT run folder (pdecay train --model gpt)
    pub run: PathBuf,
    /// Text to continue [default: a newline]
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Characters to generate
    #[arg(long, default_value_t = 300)]
    pub tokens: usize,
    /// Softmax temperature (lower: more conservative)
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Draw only from the k most likely characters (0: all; the default is nanoGPT's)
    #[arg(long, default_value_t = 200)]
    pub top_k: usize,
    /// Seed of the draws
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Where to compute: cpu, or cuda / cuda:N with a build that has the `cuda` feature
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

/// `pdecay sample`.
pub fn run_sample(args: &SampleArgs) -> Result<()> {
    let run = RunDir::new(&args.run);
    let config = run.read_config()?;
    anyhow::ensure!(
        config.model == ModelKind::Gpt,
        "{} is not a GPT run (it trains the {}); sample generates text from GPT runs",
        args.run.display(),
        crate::config::flag_name(config.model)
    );
    let vocab = run.read_vocab()?;
    let device = args.device.single()?;
    let model = Gpt::new(&config.gpt.model(vocab.len()), &device);
    let Some((model, _)) = run.load_model(model)? else {
        anyhow::bail!("{} has no checkpoint yet", args.run.display());
    };
    let sampling = Sampling {
        tokens: args.tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
    };
    // the prompt, then each character as it is drawn
    let mut out = std::io::stdout().lock();
    write!(out, "{}", args.prompt)?;
    out.flush()?;
    let mut failed = None;
    let mut emit = |text: &str| {
        if let Err(e) = write!(out, "{text}").and_then(|()| out.flush()) {
            failed.get_or_insert(e);
        }
    };
    sample(
        &model,
        &vocab,
        config.gpt.block_size,
        &args.prompt,
        &sampling,
        &mut emit,
    )?;
    if let Some(e) = failed {
        return Err(anyhow::Error::new(e).context("writing the sample to stdout"));
    }
    writeln!(out)?;
    Ok(())
}
