//! `pdecay export`, `compact`, `eval` and `bench-infer`: from a run folder to a small, fast
//! model file, and the measurements that show it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use clap::Args;

use super::gpt_deploy;
use crate::data::{ImageSplits, mnist};
use crate::deploy::compact::compact;
use crate::deploy::gpt_file::GptFile;
use crate::deploy::infer::{Engine, accuracy, latencies, max_logit_difference};
use crate::deploy::model_file::{
    Format, ModelFile, ModelTensor, check_destination, file_model_kind,
};
use crate::models::ModelKind;
use crate::run::RunDir;

/// Flags of `pdecay export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The run folder (its last checkpoint is exported)
    pub run: PathBuf,
    /// dense: every tensor as is; sparse: weight matrices as CSR where that is smaller
    #[arg(long, value_enum, default_value_t = Format::Sparse)]
    pub format: Format,
    /// Where to write.
    #[command(flatten)]
    pub to: Destination,
    /// Folder with the IDX files, for the input normalisation [default: the run's data]
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// The file `export` and `compact` write.
#[derive(Args, Debug)]
pub struct Destination {
    /// The safetensors file to write (not inside a run folder)
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists
    #[arg(long)]
    pub force: bool,
}

/// Flags of `pdecay compact`.
#[derive(Args, Debug)]
pub struct CompactArgs {
    /// The run folder
    pub run: PathBuf,
    /// Where to write.
    #[command(flatten)]
    pub to: Destination,
    /// Folder with the IDX files [default: the run's data]
    #[arg(long)]
    pub data: Option<PathBuf>,
}

/// Flags of `pdecay eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A file from pdecay export or pdecay compact
    pub file: PathBuf,
    /// Folder with the IDX files, or CIFAR-10's folder or .tar.gz [default: $PDECAY_DATA, then
    /// /usr/share/datasets/fashion-mnist]; for a GPT file, the text it was trained on (its
    /// validation part is evaluated)
    #[arg(long, conflicts_with = "embedded")]
    pub data: Option<PathBuf>,
    /// Evaluate on the embedded subset's 1,000 test images
    #[arg(long)]
    pub embedded: bool,
}

/// Flags of `pdecay bench-infer`.
#[derive(Args, Debug)]
pub struct BenchInferArgs {
    /// A run folder, or a file from pdecay export or compact
    pub model: PathBuf,
    /// Timed repetitions per engine and batch size (the median is reported)
    #[arg(long, default_value_t = 200)]
    pub repeats: usize,
}

/// The dense model file of a run folder's last checkpoint, and the run's data.
fn run_model(run: &Path, data: Option<&Path>) -> Result<(ModelFile, ImageSplits)> {
    let from = ModelFile::from_run(&RunDir::new(run), data)?;
    println!(
        "{}: {} after epoch {}, data {}",
        run.display(),
        crate::config::flag_name(from.file.config.model),
        from.epochs,
        from.splits.source
    );
    Ok((from.file, from.splits))
}

/// Whether `run` is a GPT run folder (anything else goes on to the image commands' checks).
fn is_gpt_run(run: &Path) -> bool {
    RunDir::new(run)
        .read_config()
        .is_ok_and(|c| c.model == ModelKind::Gpt)
}

/// `--data` names the images of a classifier run; a GPT run's text is in its config.
fn refuse_data_for_gpt(run: &Path, data: Option<&Path>) -> Result<()> {
    ensure!(
        data.is_none(),
        "{} is a GPT run: --data (the image folder for the input normalisation) does not apply; drop it",
        run.display()
    );
    Ok(())
}

/// A model file's bytes and whether it holds a GPT.
fn read_model_file(path: &Path) -> Result<(Vec<u8>, bool)> {
    let bytes = crate::data::read_bounded(path, "model file")?;
    let gpt = file_model_kind(&bytes).is_ok_and(|k| k == ModelKind::Gpt);
    Ok((bytes, gpt))
}

/// `bytes` in KiB, one decimal.
pub(super) fn kib(bytes: usize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

/// `pdecay export`.
pub fn run_export(args: &ExportArgs) -> Result<()> {
    ensure!(
        args.format != Format::Compact,
        "--format compact is made by `pdecay compact RUN_DIR --out FILE`"
    );
    if is_gpt_run(&args.run) {
        refuse_data_for_gpt(&args.run, args.data.as_deref())?;
        return gpt_deploy::export(&args.run, args.format, &args.to);
    }
    let (dense, _) = run_model(&args.run, args.data.as_deref())?;
    check_destination(&args.to.out, args.to.force)?;
    let sparse = dense.with_format(Format::Sparse);
    let (dense_bytes, sparse_bytes) = (dense.to_bytes()?.len(), sparse.to_bytes()?.len());
    let file = if args.format == Format::Sparse {
        sparse
    } else {
        dense
    };
    file.save(&args.to.out)?;
    println!(
        "wrote {} ({}); dense file {}, sparse file {} ({:.3} of dense); sparsity {:.1}%",
        args.to.out.display(),
        crate::config::flag_name(args.format),
        kib(dense_bytes),
        kib(sparse_bytes),
        sparse_bytes as f64 / dense_bytes as f64,
        100.0 * file.sparsity()
    );
    Ok(())
}

/// `pdecay compact`.
pub fn run_compact(args: &CompactArgs) -> Result<()> {
    if is_gpt_run(&args.run) {
        refuse_data_for_gpt(&args.run, args.data.as_deref())?;
        return gpt_deploy::compact(&args.run, &args.to);
    }
    let (dense, splits) = run_model(&args.run, args.data.as_deref())?;
    check_destination(&args.to.out, args.to.force)?;
    let (compacted, report) = compact(&dense)?;
    let difference = max_logit_difference(
        &Engine::new(&dense)?,
        &Engine::new(&compacted)?,
        &splits,
        &dense.input_stats,
    );
    let size = compacted.save(&args.to.out)?;
    println!(
        "wrote {} ({}): layer widths {:?} -> {:?}, parameters {} -> {} ({:.3} of dense); max |logit difference| on the {} test images: {difference:.2e}",
        args.to.out.display(),
        kib(size),
        report.widths_before,
        report.widths_after,
        report.params_before,
        report.params_after,
        report.params_after as f64 / report.params_before as f64,
        splits.test.len()
    );
    Ok(())
}

/// `pdecay eval`.
pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let (bytes, gpt) = read_model_file(&args.file)?;
    let unusable = || format!("{} is not a usable pdecay model file", args.file.display());
    if gpt {
        ensure!(
            !args.embedded,
            "{} is a GPT file and --embedded is the image subset: give the training text with --data input.txt",
            args.file.display()
        );
        let file = GptFile::from_bytes(&bytes).with_context(unusable)?;
        return gpt_deploy::eval(&args.file, &file, args.data.as_deref());
    }
    let file = ModelFile::from_bytes(&bytes).with_context(unusable)?;
    let splits = image_data(args.data.as_deref(), args.embedded)?;
    crate::deploy::check_images(&splits, file.config.image_shape)?;
    let engine = Engine::new(&file)?;
    let acc = accuracy(&engine, &splits.test, &file.input_stats);
    println!(
        "{} ({} {}, {} parameters, sparsity {:.1}%): test accuracy {:.2}% on {} images of {}",
        args.file.display(),
        crate::config::flag_name(file.format),
        crate::config::flag_name(file.config.model),
        file.params(),
        100.0 * file.sparsity(),
        100.0 * acc,
        splits.test.len(),
        splits.source
    );
    Ok(())
}

/// `pdecay logits`: a GPT's at every position of a text, or an image classifier file's on the
/// first test images, as JSON.
pub fn run_logits(args: &gpt_deploy::LogitsArgs) -> Result<()> {
    if args.model.is_dir() {
        return gpt_deploy::logits(args);
    }
    let (bytes, gpt) = read_model_file(&args.model)?;
    if gpt {
        return gpt_deploy::logits(args);
    }
    ensure!(
        args.text.is_none(),
        "{} is an image classifier's file: --text is for GPTs; give --data or --embedded",
        args.model.display()
    );
    ensure!(
        (1..=10_000).contains(&args.images),
        "--images must lie in 1..=10000, got {}",
        args.images
    );
    let file = ModelFile::from_bytes(&bytes)
        .with_context(|| format!("{} is not a usable pdecay model file", args.model.display()))?;
    let splits = image_data(args.data.as_deref(), args.embedded)?;
    crate::deploy::check_images(&splits, file.config.image_shape)?;
    let count = args.images.min(splits.test.len());
    let indices: Vec<usize> = (0..count).collect();
    let inputs = splits.test.normalized(&indices, &file.input_stats);
    let logits = Engine::new(&file)?.logits(&inputs, count);
    ensure!(
        logits.iter().all(|v| v.is_finite()),
        "the model gives non-finite logits: its weights overflow"
    );
    let rows = |v: &[f32], n: usize| v.chunks(n.max(1)).map(<[f32]>::to_vec).collect::<Vec<_>>();
    let json = serde_json::json!({
        "inputs": rows(&inputs, inputs.len() / count.max(1)),
        "labels": &splits.test.labels[..count],
        "logits": rows(&logits, logits.len() / count.max(1)),
    });
    crate::run::write_atomic(&args.out, serde_json::to_string(&json)?.as_bytes())?;
    println!(
        "wrote the logits of {count} test images to {}",
        args.out.display()
    );
    Ok(())
}

/// `--data` or `--embedded` images of the image commands.
fn image_data(data: Option<&Path>, embedded: bool) -> Result<ImageSplits> {
    if embedded {
        return Ok(mnist::embedded());
    }
    let data = data.map(|d| d.display().to_string());
    crate::data::load_images(data.as_deref())
}

/// `pdecay bench-infer`.
pub fn run_bench_infer(args: &BenchInferArgs) -> Result<()> {
    ensure!(
        (1..=1_000_000).contains(&args.repeats),
        "--repeats must lie in 1..=1000000 (each is one timed pass of every engine), got {}",
        args.repeats
    );
    let base = if args.model.is_dir() {
        if is_gpt_run(&args.model) {
            return gpt_deploy::bench(&args.model, args.repeats);
        }
        run_model(&args.model, None)?.0
    } else {
        let (bytes, gpt) = read_model_file(&args.model)?;
        if gpt {
            return gpt_deploy::bench(&args.model, args.repeats);
        }
        ModelFile::from_bytes(&bytes).with_context(|| {
            format!("{} is not a usable pdecay model file", args.model.display())
        })?
    };
    let dense = base.with_format(Format::Dense);
    let (compacted, _) = compact(&dense)?;
    let variants = [
        ("dense", dense.clone()),
        ("sparse", dense.with_format(Format::Sparse)),
        ("compact", compacted),
    ];
    let engines = variants
        .iter()
        .map(|(_, f)| Engine::new(f))
        .collect::<Result<Vec<_>>>()?;
    let latency = latencies(&engines, dense.config.image_shape, args.repeats);
    println!(
        "\n{:<8} {:>12} {:>11} {:>10} {:>14} {:>15}",
        "format", "file size", "parameters", "non-zero", "batch 1", "batch 64"
    );
    let dense_size = variants[0].1.to_bytes()?.len();
    for (k, (name, file)) in variants.iter().enumerate() {
        let size = file.to_bytes()?.len();
        let nonzero: usize = file.parameters().map(ModelTensor::nonzero).sum();
        println!(
            "{:<8} {:>12} {:>11} {:>10} {:>8.1} us {:.2}x {:>8.1} us {:.2}x  (size {:.3}x)",
            name,
            kib(size),
            file.params(),
            nonzero,
            1e6 * latency[k][0],
            latency[0][0] / latency[k][0],
            1e6 * latency[k][1],
            latency[0][1] / latency[k][1],
            size as f64 / dense_size as f64
        );
    }
    println!(
        "\nlatency: median of {} (batch 1) / {} (batch 64) alternated runs in this process, {} threads; Nx = speed-up over dense",
        args.repeats,
        (args.repeats / 4).max(1),
        rayon::current_num_threads()
    );
    Ok(())
}
