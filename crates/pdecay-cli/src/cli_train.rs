//! `pdecay train` and the main demo: flags, config files, and the side-by-side table.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::checkpoint;
use crate::data::text::TextData;
use crate::data::{ImageSplits, mnist};
use crate::device::DeviceSpec;
use crate::gpt::Gpt;
use crate::gpt_train::{GptEval, GptPreset, Sampling, read_vocab, sample, train_gpt};
use crate::models::ModelKind;
use crate::sweep::RunData;
use crate::train::{
    EpochMetrics, LrSchedule, OptimKind, PlainProgress, Progress, RunOptions, Summary, TrainConfig,
    default_run_dir, epoch_line, train,
};
use burn::tensor::Device;

/// Flags of `pdecay train`. Each overrides the same key of `--config FILE`; unset keys take the
/// file's value, else the default shown.
#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// A TOML file with any of the keys below (snake_case, e.g. `batch_size = 64`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Folder with the four (Fashion-)MNIST IDX files, gzip'd or not [default: $PDECAY_DATA,
    /// then /usr/share/datasets/fashion-mnist].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Train on the embedded Fashion-MNIST subset (5,500 train / 1,000 test images).
    #[arg(long, conflicts_with = "data")]
    pub embedded: bool,
    /// Run folder [default: runs/<model>-<optim>-<timestamp>].
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (its config.toml is used;
    /// flags that contradict it are an error).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Stop once this many epochs are done (resumable with --resume).
    #[arg(long, value_name = "EPOCHS")]
    pub stop_after: Option<usize>,
    /// Network [default: mlp].
    #[arg(long, value_enum)]
    pub model: Option<ModelKind>,
    /// MLP hidden widths, comma-separated [default: 300,100].
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    /// Optimizer [default: padam].
    #[arg(long, value_enum)]
    pub optim: Option<OptimKind>,
    /// pWD's norm p [default: 0.8, the authors' reference code].
    #[arg(long)]
    pub p: Option<f64>,
    /// pWD's strength lambda; AdamW's weight_decay; L1's strength [default: 1e-3, the authors'
    /// reference code].
    #[arg(long = "lambda")]
    pub lambda: Option<f64>,
    /// Peak learning rate [default: 1e-3].
    #[arg(long)]
    pub lr: Option<f64>,
    /// Epochs [default: 10].
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size [default: 128].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Warm-up epochs, may be fractional [default: 1].
    #[arg(long)]
    pub warmup_epochs: Option<f64>,
    /// Final lr / peak lr [default: 0.01, the paper's cosine to lr/100].
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,
    /// Learning-rate schedule after warm-up [default: cosine].
    #[arg(long, value_enum)]
    pub schedule: Option<LrSchedule>,
    /// Seed [default: 0].
    #[arg(long)]
    pub seed: Option<u64>,
    /// pWD variant: factor from the post-step weight.
    #[arg(long)]
    pub late: bool,
    /// pWD variant: elastic-net L2 strength [default: 0].
    #[arg(long)]
    pub lambda2: Option<f64>,
    /// pWD variant: p starts here and moves to --p over the first half of training.
    #[arg(long)]
    pub p_start: Option<f64>,
    /// pWD variant: s-dynamics with this rate of s.
    #[arg(long)]
    pub s_dynamics: Option<f64>,
    /// pWD variant: over this last share of training lambda falls (half cosine) to
    /// lambda x --lambda-release-ratio; exact zeros stay zero.
    #[arg(long)]
    pub lambda_release: Option<f64>,
    /// End of the lambda release as a share of lambda, in (0, 1] [default: 0.01].
    #[arg(long)]
    pub lambda_release_ratio: Option<f64>,
    /// pWD variant: structured (group) decay of whole neurons and channels.
    #[arg(long)]
    pub structured: bool,
    /// Magnitude pruning (--optim gmp): final sparsity [default: 0.9].
    #[arg(long)]
    pub gmp_final_sparsity: Option<f64>,
    /// Magnitude pruning: share of training after which the sparsity stays at its target
    /// [default: 0.75].
    #[arg(long)]
    pub gmp_end_fraction: Option<f64>,
    /// Magnitude pruning: steps between mask updates [default: 100].
    #[arg(long)]
    pub gmp_frequency: Option<u64>,
    /// Augment the training images: random shifts of up to ±2 pixels and horizontal flips.
    #[arg(long)]
    pub augment: bool,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to compute: cpu, or cuda / cuda:N (a build with the `cuda` feature)
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// GPT sizes: cpu (4 layers, 4 heads, width 128, block 64, batch 12, 2000 iterations) or
    /// paper (6, 6, 384, block 256, batch 64, 5000 iterations, dropout 0.2) [default: cpu].
    /// Each size below overrides it.
    #[arg(long, value_enum)]
    pub preset: Option<GptPreset>,
    /// GPT: transformer blocks.
    #[arg(long)]
    pub layers: Option<usize>,
    /// GPT: attention heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// GPT: embedding width.
    #[arg(long)]
    pub width: Option<usize>,
    /// GPT: context length.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// GPT: optimizer steps.
    #[arg(long)]
    pub iters: Option<usize>,
    /// GPT: steps between evaluations and checkpoints [default: 250].
    #[arg(long)]
    pub eval_interval: Option<usize>,
    /// GPT: batches per split in an evaluation [default: 20].
    #[arg(long)]
    pub eval_batches: Option<usize>,
    /// GPT: dropout probability.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// GPT: biases in Linear and LayerNorm layers [default: none, as nanoGPT].
    #[arg(long)]
    pub bias: bool,
}

impl TrainArgs {
    /// The config: the file (if any), then the flags on top. With `--resume`, the run's own
    /// config.toml is the file, and flags must agree with it.
    pub fn config(&self) -> Result<TrainConfig> {
        if let Some(dir) = &self.resume {
            anyhow::ensure!(
                self.config.is_none(),
                "--resume uses the run's own config.toml; drop --config"
            );
            let path = dir.join("config.toml");
            let saved = read_config(&path)
                .with_context(|| format!("--resume {}: not a run folder", dir.display()))?;
            let wanted = self.apply_flags(saved.clone())?;
            if wanted != saved {
                let (a, b) = (toml::to_string(&saved)?, toml::to_string(&wanted)?);
                let changed: Vec<&str> =
                    b.lines().filter(|l| !a.lines().any(|x| x == *l)).collect();
                anyhow::bail!(
                    "--resume {}: the flags change the run's config ({}); a run resumes with the config it started with",
                    dir.display(),
                    changed.join(", ")
                );
            }
            return Ok(saved);
        }
        let c = match &self.config {
            Some(path) => read_config(path)?,
            None => TrainConfig::default(),
        };
        self.apply_flags(c)
    }

    fn apply_flags(&self, mut c: TrainConfig) -> Result<TrainConfig> {
        macro_rules! set {
            ($($field:ident),*) => {$( if let Some(v) = self.$field.clone() { c.$field = v; } )*};
        }
        set!(
            model,
            hidden,
            optim,
            p,
            lambda,
            lr,
            epochs,
            batch_size,
            warmup_epochs,
            min_lr_ratio,
            schedule,
            seed,
            lambda2,
            lambda_release_ratio,
            gmp_final_sparsity,
            gmp_end_fraction,
            gmp_frequency
        );
        if self.p_start.is_some() {
            c.p_start = self.p_start;
        }
        if self.s_dynamics.is_some() {
            c.s_dynamics = self.s_dynamics;
        }
        if self.lambda_release.is_some() {
            c.lambda_release = self.lambda_release;
        }
        c.late |= self.late;
        c.augment |= self.augment;
        if self.embedded {
            c.data = Some(EMBEDDED.into());
        } else if let Some(dir) = &self.data {
            // absolute, so a resumed run finds the data from any working directory
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            c.data = Some(dir.display().to_string());
        }
        c.structured |= self.structured;
        if c.model == ModelKind::Gpt {
            if let Some(preset) = self.preset {
                c.gpt = preset.settings();
            }
            let g = &mut c.gpt;
            macro_rules! set_gpt {
                ($($field:ident),*) => {$( if let Some(v) = self.$field { g.$field = v; } )*};
            }
            set_gpt!(
                layers,
                heads,
                width,
                block_size,
                batch_size,
                iters,
                eval_interval,
                eval_batches,
                dropout
            );
            g.bias |= self.bias;
        } else {
            anyhow::ensure!(
                self.preset.is_none() && self.iters.is_none() && self.layers.is_none(),
                "--preset, --iters and the other GPT sizes go with --model gpt"
            );
        }
        c.validate()?;
        Ok(c)
    }
}

/// The value of `data` that selects the embedded subset.
const EMBEDDED: &str = "embedded";

/// Loads the data a config names.
pub fn load_data(config: &TrainConfig) -> Result<ImageSplits> {
    match config.data.as_deref() {
        Some(EMBEDDED) => Ok(mnist::embedded()),
        Some(dir) => mnist::resolve_image_data(Some(std::path::Path::new(dir))),
        None => mnist::resolve_image_data(None),
    }
}

/// Reads a TOML config; unknown keys and wrong types are errors naming the key and the file.
fn read_config(path: &std::path::Path) -> Result<TrainConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str::<TrainConfig>(&text)
        .with_context(|| format!("invalid config file {}", path.display()))
}

/// `pdecay train`.
pub fn run_train(args: &TrainArgs) -> Result<()> {
    let config = args.config()?;
    set_threads(args.threads)?;
    // a missing GPU fails before any data is read
    if config.model == ModelKind::Gpt {
        return run_train_gpt(args, &config, args.device.single()?);
    }
    let (device, replicas) = args.device.split()?;
    let data = load_data(&config)?;
    let (out, resume) = match &args.resume {
        Some(dir) => (dir.clone(), true),
        None => (
            args.out.clone().unwrap_or_else(|| default_run_dir(&config)),
            false,
        ),
    };
    println!(
        "training {:?} with {:?} on {} ({} train / {} test images) into {}",
        config.model,
        config.optim,
        data.source,
        data.train.len(),
        data.test.len(),
        out.display()
    );
    let options = RunOptions {
        out: Some(out),
        resume,
        stop_after: args.stop_after,
        device,
        replicas,
    };
    let summary = train(&config, &data, &options, progress_for_stdout().as_mut())?;
    println!(
        "final test accuracy {:.2}%, sparsity {:.1}% ({} of {} parameters non-zero), {:.0} samples/s",
        100.0 * summary.final_test_accuracy,
        100.0 * summary.sparsity,
        summary.nonzero_params,
        summary.total_params,
        summary.samples_per_second
    );
    Ok(())
}

/// The text of a GPT run.
pub fn load_text(config: &TrainConfig) -> Result<TextData> {
    let path = match config.data.as_deref() {
        Some(EMBEDDED) | None => anyhow::bail!(
            "--model gpt trains on a text file: give --data FILE, a UTF-8 text (e.g. Tiny Shakespeare: https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt)"
        ),
        Some(path) => PathBuf::from(path),
    };
    TextData::load(&path, config.gpt.block_size)
}

/// The data of any run: the images or the GPT's text.
pub fn load_run_data(config: &TrainConfig) -> Result<RunData> {
    Ok(if config.model == ModelKind::Gpt {
        RunData::Text(load_text(config)?)
    } else {
        RunData::Images(load_data(config)?)
    })
}

/// `pdecay train --model gpt`.
fn run_train_gpt(args: &TrainArgs, config: &TrainConfig, device: Device) -> Result<()> {
    let text = load_text(config)?;
    let (out, resume) = match &args.resume {
        Some(dir) => (dir.clone(), true),
        None => (
            args.out.clone().unwrap_or_else(|| default_run_dir(config)),
            false,
        ),
    };
    let g = &config.gpt;
    println!(
        "training a GPT ({} layers, {} heads, width {}, block {}, vocabulary {}) with {:?} on {} ({} train / {} validation characters), {} iterations of batch {}, into {}",
        g.layers,
        g.heads,
        g.width,
        g.block_size,
        text.vocab.len(),
        config.optim,
        text.source,
        text.train.len(),
        text.val.len(),
        g.iters,
        g.batch_size,
        out.display()
    );
    let options = RunOptions {
        out: Some(out),
        resume,
        stop_after: args.stop_after,
        device,
        replicas: Vec::new(),
    };
    let summary = train_gpt(config, &text, &options, &mut |e: &GptEval| {
        println!("{}", e.line(g.iters));
    })?;
    println!(
        "final val loss {:.4} (best {:.4} at iteration {}), sparsity {:.1}% ({} of {} parameters non-zero), {:.1} ms per iteration",
        summary.final_val_loss,
        summary.best_val_loss,
        summary.best_iter,
        100.0 * summary.sparsity,
        summary.nonzero_params,
        summary.total_params,
        1e3 * summary.seconds_per_iter
    );
    Ok(())
}

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
    /// Draw only from the k most likely characters (0: all) [default: 200, nanoGPT's]
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
    let config = read_config(&args.run.join("config.toml"))
        .with_context(|| format!("{} is not a run folder", args.run.display()))?;
    anyhow::ensure!(
        config.model == ModelKind::Gpt,
        "{} is not a GPT run (model {:?})",
        args.run.display(),
        config.model
    );
    let vocab = read_vocab(&args.run)?;
    let device = args.device.single()?;
    let model = Gpt::new(&config.gpt.model(vocab.len()), &device);
    let Some((model, _)) = checkpoint::load_model(&args.run, model)? else {
        anyhow::bail!("{} has no checkpoint yet", args.run.display());
    };
    let sampling = Sampling {
        tokens: args.tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
    };
    println!(
        "{}",
        sample(
            &model,
            &vocab,
            config.gpt.block_size,
            &args.prompt,
            &sampling
        )?
    );
    Ok(())
}

/// Flags of `pdecay demo` (none are needed).
#[derive(Args, Debug, Default)]
pub struct DemoArgs {
    /// Where to compute: cpu, or cuda / cuda:N (a build with the `cuda` feature)
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
}

/// The main job: the MLP on the embedded subset, once with AdamW and once with pAdam.
pub fn run_demo(args: &DemoArgs) -> Result<()> {
    let options = RunOptions {
        device: args.device.single()?,
        ..RunOptions::default()
    };
    let data = mnist::embedded();
    // 30 epochs of 43 steps: long enough for pWD to prune (sparsity grows with the number of
    // steps), short enough for a first look (~25 s on 2 cores).
    let base = TrainConfig {
        epochs: 30,
        lr: 3e-3,
        ..TrainConfig::default()
    };
    let runs = [
        (
            "AdamW (weight_decay 1e-2)",
            TrainConfig {
                optim: OptimKind::Adamw,
                lambda: 1e-2,
                ..base.clone()
            },
        ),
        (
            "pAdam (p 0.8, lambda 0.1)",
            TrainConfig {
                optim: OptimKind::Padam,
                p: 0.8,
                lambda: 0.1,
                ..base.clone()
            },
        ),
    ];
    println!(
        "pdecay demo: MLP 784-300-100-10 on the {} ({} train / {} test images), {} epochs, batch {}, lr {} with 1 warm-up epoch and cosine to lr/100\n",
        data.source,
        data.train.len(),
        data.test.len(),
        base.epochs,
        base.batch_size,
        base.lr
    );
    let mut results: Vec<(&str, Summary)> = Vec::new();
    for (name, config) in &runs {
        println!("{name}:");
        results.push((name, train(config, &data, &options, &mut EveryNth(10))?));
    }
    println!(
        "\n{:<28} {:>9} {:>9} {:>18} {:>8}",
        "optimizer", "test acc", "sparsity", "non-zero params", "time"
    );
    for (name, s) in &results {
        println!(
            "{:<28} {:>8.2}% {:>8.1}% {:>9} / {:<7} {:>7.1}s",
            name,
            100.0 * s.final_test_accuracy,
            100.0 * s.sparsity,
            s.nonzero_params,
            s.total_params,
            s.wall_seconds
        );
    }
    println!(
        "\nsparsity: share of decayed weights (rank >= 2) with |w| < 1e-13. Full data: pdecay train --data DIR."
    );
    Ok(())
}

/// Prints every `n`-th epoch (and the last).
struct EveryNth(usize);

impl Progress for EveryNth {
    fn epoch(&mut self, config: &TrainConfig, metrics: &EpochMetrics) {
        if metrics.epoch.is_multiple_of(self.0) || metrics.epoch == config.epochs {
            PlainProgress.epoch(config, metrics);
        }
    }
}

/// A progress bar per epoch (step, loss, ETA) and a summary line after it, on a terminal.
/// The bars live in `multi`, so a caller can show its own bar above them (`pdecay sweep`).
pub struct BarProgress {
    bar: Option<indicatif::ProgressBar>,
    multi: indicatif::MultiProgress,
    print_start: bool,
}

impl BarProgress {
    /// Bars drawn in `multi`; `print_start` prints which tensors decay before the first step.
    pub fn new(multi: indicatif::MultiProgress, print_start: bool) -> Self {
        Self {
            bar: None,
            multi,
            print_start,
        }
    }

    fn println(&self, line: &str) {
        // println on a MultiProgress prints above its bars; it fails only when stdout is gone.
        let _ = self.multi.println(line);
    }
}

impl Progress for BarProgress {
    fn start(&mut self, decay: &pdecay_burn::DecaySummary) {
        if self.print_start {
            self.println(&decay.to_string());
        }
    }

    fn step(&mut self, epoch: usize, done: usize, total: usize, loss: f64) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = self.multi.add(indicatif::ProgressBar::new(total as u64));
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} steps, loss {msg}, ETA {eta}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(epoch.to_string());
            bar
        });
        bar.set_position(done as u64);
        bar.set_message(format!("{loss:.4}"));
    }

    fn epoch(&mut self, config: &TrainConfig, metrics: &EpochMetrics) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
        self.println(&epoch_line(config, metrics));
    }
}

/// A bar on a terminal, plain lines otherwise (logs, CI).
fn progress_for_stdout() -> Box<dyn Progress> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        Box::new(BarProgress::new(indicatif::MultiProgress::new(), true))
    } else {
        Box::new(PlainProgress)
    }
}

/// Sets the size of rayon's global pool (the CPU threads of every kernel).
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(threads) = threads {
        anyhow::ensure!(threads >= 1, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("setting the number of threads")?;
    }
    Ok(())
}
