//! `export`, `compact`, `eval` and `bench-infer` for GPT runs and files.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::tensor::Device;

use super::deploy::{Destination, kib};
use crate::data::text::TextData;
use crate::deploy::gpt_compact::compact_gpt;
use crate::deploy::gpt_file::GptFile;
use crate::deploy::gpt_infer::{
    Decoder, GptEngine, SparseMode, alternated_rates, ensure_finite, timed_decode,
};
use crate::deploy::model_file::{Format, ModelTensor, check_destination};
use crate::models::gpt::tokens_tensor;
use crate::run::RunDir;

/// The dense GPT file of a run's last checkpoint, announced.
pub fn gpt_run_file(run: &Path) -> Result<GptFile> {
    let (file, position) = GptFile::from_run(&RunDir::new(run))?;
    println!(
        "{}: gpt ({} layers, width {}) after iteration {}",
        run.display(),
        file.config.gpt.layers,
        file.config.gpt.width,
        position.done()
    );
    Ok(file)
}

/// A GPT model from a run folder or a GPT file.
pub fn gpt_model(path: &Path) -> Result<GptFile> {
    if path.is_dir() {
        gpt_run_file(path)
    } else {
        GptFile::load(path)
    }
}

/// `pdecay export` of a GPT run.
pub fn export(run: &Path, format: Format, to: &Destination) -> Result<()> {
    let dense = gpt_run_file(run)?;
    check_destination(&to.out, to.force)?;
    let sparse = dense.with_format(Format::Sparse);
    let (dense_bytes, sparse_bytes) = (dense.to_bytes()?.len(), sparse.to_bytes()?.len());
    let file = if format == Format::Sparse {
        sparse
    } else {
        dense
    };
    file.save(&to.out)?;
    println!(
        "wrote {} ({}, nanoGPT names); dense file {}, sparse file {} ({:.3} of dense); sparsity {:.1}%",
        to.out.display(),
        format.name(),
        kib(dense_bytes),
        kib(sparse_bytes),
        sparse_bytes as f64 / dense_bytes as f64,
        100.0 * file.sparsity()
    );
    Ok(())
}

/// Tokens for checks and benchmarks: a fixed pseudo-random sequence over the vocabulary.
fn probe_tokens(file: &GptFile, n: usize) -> Vec<u32> {
    let v = file.vocab.len() as u64;
    (0..n as u64)
        .map(|i| ((i * 2_654_435_761 + 17) % v) as u32)
        .collect()
}

/// The largest |logit difference| of two files decoded over `tokens` (window slides included).
fn max_difference(a: &GptFile, b: &GptFile, tokens: &[u32]) -> Result<f32> {
    let (ea, eb) = (
        GptEngine::new(a, SparseMode::Off)?,
        GptEngine::new(b, SparseMode::Off)?,
    );
    let (mut da, mut db) = (Decoder::new(&ea, true), Decoder::new(&eb, true));
    let mut worst = 0.0f32;
    for &t in tokens {
        for (p, q) in da.push(t).iter().zip(db.push(t)) {
            worst = worst.max((p - q).abs());
        }
    }
    Ok(worst)
}

/// `pdecay compact` of a GPT run.
pub fn compact(run: &Path, to: &Destination) -> Result<()> {
    let dense = gpt_run_file(run)?;
    check_destination(&to.out, to.force)?;
    let (compacted, report) = compact_gpt(&dense)?;
    let probe = probe_tokens(&dense, 3 * dense.config.gpt.block_size);
    let difference = max_difference(&dense, &compacted, &probe)?;
    let size = compacted.save(&to.out)?;
    let heads = |b: &[crate::deploy::gpt_file::BlockShape]| -> Vec<usize> {
        b.iter().map(|b| b.heads).collect()
    };
    let units = |b: &[crate::deploy::gpt_file::BlockShape]| -> Vec<usize> {
        b.iter().map(|b| b.hidden).collect()
    };
    println!(
        "wrote {} ({}): heads per block {:?} -> {:?}, MLP units {:?} -> {:?}, parameters {} -> {} ({:.3} of dense); max |logit difference| over {} decoded tokens: {difference:.2e}",
        to.out.display(),
        kib(size),
        heads(&report.before),
        heads(&report.after),
        units(&report.before),
        units(&report.after),
        report.params_before,
        report.params_after,
        report.params_after as f64 / report.params_before as f64,
        probe.len()
    );
    Ok(())
}

/// `pdecay eval` of a GPT file: loss on the validation part of `data` (the training text).
pub fn eval(path: &Path, file: &GptFile, data: Option<&Path>) -> Result<()> {
    let Some(data) = data else {
        anyhow::bail!(
            "{} is a GPT file: give the text it was trained on, `pdecay eval {} --data input.txt`; its validation part (the last 10%) is evaluated",
            path.display(),
            path.display()
        );
    };
    ensure!(
        !data.is_dir(),
        "--data {} is a folder; a GPT file is evaluated on its training text, a UTF-8 file",
        data.display()
    );
    let text = TextData::load(data, file.config.gpt.block_size)?;
    ensure!(
        text.vocab == file.vocab,
        "{} has {} distinct characters and the model's vocabulary {}, or they differ: give the text the model was trained on",
        data.display(),
        text.vocab.len(),
        file.vocab.len()
    );
    let engine = GptEngine::new(file, SparseMode::Auto)?;
    let (loss, correct, count) = engine.loss(&text.val);
    ensure!(
        loss.is_finite(),
        "{}: the validation loss is not finite: the weights overflow; the file is damaged or the run diverged",
        path.display()
    );
    println!(
        "{} ({} gpt, {} parameters, sparsity {:.1}%): validation loss {:.4}, next-character accuracy {:.2}% over the {count} characters of {}'s validation part (windows of {})",
        path.display(),
        file.format.name(),
        file.params(),
        100.0 * file.sparsity(),
        loss / count.max(1) as f64,
        100.0 * correct as f64 / count.max(1) as f64,
        text.source,
        file.config.gpt.block_size
    );
    Ok(())
}

/// Flags of `pdecay logits` (hidden: for bench/nanogpt_check.sh and bench/resnet_check.sh).
#[derive(clap::Args, Debug)]
pub struct LogitsArgs {
    /// A GPT file or run folder, or an image classifier's model file
    pub model: std::path::PathBuf,
    /// GPT: the text whose every position's logits are written (at most block_size characters)
    #[arg(long)]
    pub text: Option<String>,
    /// Image classifier: the images (IDX folder, CIFAR-10 folder or .tar.gz) whose first
    /// --images test images are run
    #[arg(long, conflicts_with = "embedded")]
    pub data: Option<std::path::PathBuf>,
    /// Image classifier: run the embedded subset's test images
    #[arg(long)]
    pub embedded: bool,
    /// Image classifier: how many test images
    #[arg(long, default_value_t = 8)]
    pub images: usize,
    /// The JSON file to write: GPT {"tokens": [...], "logits": [[...], ...]}; image classifier
    /// {"inputs": [[...], ...] (normalised), "labels": [...], "logits": [[...], ...]}
    #[arg(long)]
    pub out: std::path::PathBuf,
}

/// `pdecay logits` of a GPT: the decoder's logits at every position of a text, as JSON.
pub fn logits(args: &LogitsArgs) -> Result<()> {
    let file = gpt_model(&args.model)?;
    let text = args
        .text
        .as_deref()
        .context("a GPT's logits are of a text: give it with --text")?;
    let tokens = file.vocab.encode(text)?;
    ensure!(
        !tokens.is_empty() && tokens.len() <= file.config.gpt.block_size,
        "--text must hold 1 to block_size = {} characters, got {}",
        file.config.gpt.block_size,
        tokens.len()
    );
    let engine = GptEngine::new(&file, SparseMode::Off)?;
    let mut decoder = Decoder::new(&engine, true);
    let logits: Vec<Vec<f32>> = tokens.iter().map(|&t| decoder.push(t)).collect();
    logits.iter().try_for_each(|l| ensure_finite(l))?;
    let json = serde_json::json!({ "tokens": tokens, "logits": logits });
    crate::run::write_atomic(&args.out, serde_json::to_string(&json)?.as_bytes())?;
    println!(
        "wrote the logits of {} positions to {}",
        tokens.len(),
        args.out.display()
    );
    Ok(())
}

/// `pdecay bench-infer` of a GPT run or file: decode tokens/s at batch 1.
pub fn bench(path: &Path, repeats: usize) -> Result<()> {
    let base = gpt_model(path)?;
    let dense = base.with_format(Format::Dense);
    let (compacted, _) = if base.format == Format::Compact {
        (base.clone(), None)
    } else {
        let (c, r) = compact_gpt(&dense)?;
        (c, Some(r))
    };
    let sparse = dense.with_format(Format::Sparse);
    let files = [
        ("dense", &dense),
        ("sparse", &sparse),
        ("compact", &compacted),
    ];
    let engines = [
        GptEngine::new(&dense, SparseMode::Off)?,
        GptEngine::new(&dense, SparseMode::Auto)?,
        GptEngine::new(&compacted, SparseMode::Off)?,
    ];
    let block = dense.config.gpt.block_size;
    let window = probe_tokens(&dense, block);
    let tokens = block;
    // pdecay's sample before the KV cache: burn's forward over the whole window per token
    let burn = (base.format != Format::Compact)
        .then(|| dense.to_model(&Device::flex()))
        .transpose()?;
    let mut variants: Vec<Box<dyn FnMut() -> f64 + '_>> = Vec::new();
    if let Some(model) = &burn {
        let x: Vec<i64> = window.iter().map(|&t| t as i64).collect();
        let device = Device::flex();
        variants.push(Box::new(move || {
            let start = std::time::Instant::now();
            for _ in 0..tokens {
                let logits = model.forward(tokens_tensor(x.clone(), 1, x.len(), &device));
                std::hint::black_box(logits.into_data());
            }
            start.elapsed().as_secs_f64()
        }));
    }
    for engine in &engines {
        for cached in [false, true] {
            let window = &window;
            variants.push(Box::new(move || {
                timed_decode(engine, cached, window, tokens)
            }));
        }
    }
    for v in variants.iter_mut() {
        v(); // warm-up: allocations, thread pool
    }
    let rates = alternated_rates(&mut variants, tokens, repeats);
    let dense_size = dense.to_bytes()?.len();
    println!(
        "\n{:<8} {:>12} {:>11} {:>10} {:>10} {:>22} {:>22}",
        "format",
        "file size",
        "parameters",
        "non-zero",
        "sparse",
        "no cache (tokens/s)",
        "KV cache (tokens/s)"
    );
    let offset = usize::from(burn.is_some());
    let reference = rates[offset];
    for (k, ((name, file), engine)) in files.iter().zip(&engines).enumerate() {
        let size = file.to_bytes()?.len();
        let nonzero: usize = file.tensors.iter().map(ModelTensor::nonzero).sum();
        let (sparse_layers, layers) = engine.sparse_layers();
        let (plain, cached) = (rates[offset + 2 * k], rates[offset + 2 * k + 1]);
        println!(
            "{:<8} {:>12} {:>11} {:>10} {:>7}/{:<2} {:>12.0} {:>8.2}x {:>12.0} {:>8.2}x  (size {:.3}x)",
            name,
            kib(size),
            file.params(),
            nonzero,
            sparse_layers,
            layers,
            plain,
            plain / reference,
            cached,
            cached / reference,
            size as f64 / dense_size as f64
        );
    }
    if burn.is_some() {
        println!(
            "burn, whole window per token (pdecay sample before the KV cache): {:.0} tokens/s; dense KV cache {:.1}x that",
            rates[0],
            rates[offset + 1] / rates[0]
        );
    }
    println!(
        "\ndecode at batch 1 after a full window of {block}: median of {repeats} alternated runs of {tokens} tokens in this process, {} threads; Nx = speed-up over dense without a cache; sparse: layers on SELL when that decoded faster in a short timing at start",
        rayon::current_num_threads()
    );
    Ok(())
}
