//! `pdecay sample`: text from a GPT run's last checkpoint or an exported GPT file, decoded on
//! the CPU with a KV cache (`--device cuda` runs burn's forward over the window instead).

use std::io::Write;
use std::path::PathBuf;

use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::device::DeviceSpec;
use crate::deploy::gpt_file::GptFile;
use crate::deploy::gpt_infer::{GptEngine, SparseMode, generate};
use crate::deploy::model_file::file_model_kind;
use crate::models::ModelKind;
use crate::models::sampling::{Sampling, sample};
use crate::run::RunDir;

/// Flags of `pdecay sample`.
#[derive(Args, Debug)]
pub struct SampleArgs {
    /// A GPT run folder (pdecay train --model gpt) or a GPT file (pdecay export / compact)
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
    /// Linear layers sparse (SELL): auto (when that decoded faster in a short timing here), on, off
    #[arg(long, value_enum, default_value_t = SparseMode::Auto)]
    pub sparse: SparseMode,
    /// Recompute the whole context for every token instead of keeping a KV cache (same text)
    #[arg(long)]
    pub no_kv_cache: bool,
    /// Where to compute: cpu, or cuda / cuda:N with a build that has the `cuda` feature (burn's
    /// forward over the whole window per token; --sparse and the KV cache are CPU paths)
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

/// The model `args.run` names: a GPT run folder's last checkpoint or a GPT file.
fn model_of(args: &SampleArgs) -> Result<GptFile> {
    if args.run.is_dir() {
        let run = RunDir::new(&args.run);
        let config = run.read_config()?;
        anyhow::ensure!(
            config.model == ModelKind::Gpt,
            "{} is not a GPT run (it trains the {}); sample generates text from GPT runs",
            args.run.display(),
            crate::config::flag_name(config.model)
        );
        return Ok(GptFile::from_run(&run)?.0);
    }
    let bytes = crate::data::read_bounded(&args.run, "model file")?;
    if let Ok(kind) = file_model_kind(&bytes) {
        anyhow::ensure!(
            kind == ModelKind::Gpt,
            "{} is an image classifier file (the {}); sample generates text from GPT files and runs; test it with `pdecay eval`",
            args.run.display(),
            crate::config::flag_name(kind)
        );
    }
    GptFile::from_bytes(&bytes)
        .with_context(|| format!("{} is not a usable pdecay GPT file", args.run.display()))
}

/// `pdecay sample`.
pub fn run_sample(args: &SampleArgs) -> Result<()> {
    let file = model_of(args)?;
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
    let start = Instant::now();
    let how = if args.device == DeviceSpec::Cpu {
        let engine = GptEngine::new(&file, args.sparse)?;
        let generated = generate(
            &engine,
            !args.no_kv_cache,
            &file,
            &args.prompt,
            &sampling,
            &mut emit,
        )?;
        let (sparse, layers) = engine.sparse_layers();
        format!(
            "{:.0} tokens/s ({}, {sparse} of {layers} linear layers sparse)",
            generated.tokens_per_second,
            if args.no_kv_cache {
                "no KV cache"
            } else {
                "KV cache"
            }
        )
    } else {
        anyhow::ensure!(
            !args.no_kv_cache && args.sparse == SparseMode::Auto,
            "--no-kv-cache and --sparse are CPU paths; drop them or use --device cpu"
        );
        let device = args.device.single()?;
        let model = file.to_model(&device)?;
        sample(
            &model,
            &file.vocab,
            file.config.gpt.block_size,
            &args.prompt,
            &sampling,
            &mut emit,
        )?;
        format!(
            "{:.0} tokens/s (burn's forward over the window per token)",
            args.tokens as f64 / start.elapsed().as_secs_f64().max(1e-12)
        )
    };
    if let Some(e) = failed {
        return Err(anyhow::Error::new(e).context("writing the sample to stdout"));
    }
    writeln!(out)?;
    eprintln!("{} tokens, {how}", args.tokens);
    Ok(())
}
