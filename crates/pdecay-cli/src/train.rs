//! The training loop for the image classifiers, and the files a run writes.
//!
//! A run folder holds `config.toml` (everything needed to rerun it), `metrics.jsonl` (one JSON
//! object per epoch) and `summary.json` (final and best metrics). The JSON keys are snake_case
//! and stable: other tools script against them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use pdecay::Schedule;
use pdecay::sparsity::{DEFAULT_THRESHOLD, TensorSparsity};
use pdecay_burn::{
    DecaySummary, Decoupled, DecoupledL2, MagnitudePruningConfig, NoDecay, PNormConfig,
    SparseOptimizer, StepError, adam_gmp, adam_l1, adam_naive_lp, adam_pytorch, padam_with, psgd,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::data::ImageSplits;
use crate::gpt_train::GptSettings;
use crate::models::{Classifier, ModelKind};
use crate::parallel::{all_reduce, replicate, shard_gradients, shards, step_replicas};

/// The optimizer (pWD or a baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    /// Adam + pWD (the paper's pAdam).
    Padam,
    /// SGD with momentum 0.9 + pWD.
    Psgd,
    /// AdamW; `lambda` is PyTorch's weight_decay.
    Adamw,
    /// Adam without decay.
    Adam,
    /// Adam + L1 proximal step with strength `lambda`.
    AdamL1,
    /// Adam on the loss plus the naive Lp penalty (`p`, `lambda`): diverges or stays dense for p < 1.
    NaiveLp,
    /// Adam + gradual magnitude pruning (cubic schedule).
    Gmp,
}

/// The learning-rate schedule after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Cosine from lr to lr·min_lr_ratio (the paper's).
    Cosine,
    /// Geometric from lr to lr·min_lr_ratio (the 2023 blog's).
    Geometric,
    /// Constant lr.
    Constant,
}

/// Every setting of a training run; `config.toml` holds exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The network.
    pub model: ModelKind,
    /// Hidden layer widths of the MLP (default 300, 100: LeNet-300-100).
    pub hidden: Vec<usize>,
    /// The CNN's conv channels and dense units (default 32, 64, 128: the 2023 blog's).
    pub cnn_widths: Vec<usize>,
    /// The optimizer.
    pub optim: OptimKind,
    /// pWD's norm (default 0.8, the authors' reference code).
    pub p: f64,
    /// pWD's strength (default 1e-3, the authors' reference code); AdamW's weight_decay.
    pub lambda: f64,
    /// Peak learning rate (default 1e-3).
    pub lr: f64,
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step (default 128).
    pub batch_size: usize,
    /// Linear warm-up from 0, in epochs (may be fractional; default 1).
    pub warmup_epochs: f64,
    /// Final lr as a share of the peak (default 0.01: cosine to lr/100, the paper's).
    pub min_lr_ratio: f64,
    /// The lr schedule after the warm-up.
    pub schedule: LrSchedule,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// pWD variant: factor from the post-step weight.
    pub late: bool,
    /// pWD variant: elastic-net L2 strength.
    pub lambda2: f64,
    /// pWD variant: p starts here and moves linearly to `p` over the first half of training.
    pub p_start: Option<f64>,
    /// pWD variant: s-dynamics with this rate of s.
    pub s_dynamics: Option<f64>,
    /// pWD variant, λ release: over this last share of training λ falls along a half cosine to
    /// `lambda · lambda_release_ratio`. For p < 2, while λ > 0, a weight that is exactly zero
    /// gets the factor 0 and stays zero, so the surviving weights shed the penalty's shrinkage
    /// and the sparsity pattern holds. pAdam and pSGD only.
    pub lambda_release: Option<f64>,
    /// λ at the end of a release, as a share of `lambda` (default 0.01; must stay > 0, since at
    /// λ = 0 pWD is off and the zeros would grow back).
    pub lambda_release_ratio: f64,
    /// pWD variant: structured (whole neurons and channels).
    pub structured: bool,
    /// Magnitude pruning: final sparsity (default 0.9).
    pub gmp_final_sparsity: f64,
    /// Magnitude pruning: share of training when pruning ends (default 0.75).
    pub gmp_end_fraction: f64,
    /// Magnitude pruning: steps between mask updates (default 100).
    pub gmp_frequency: u64,
    /// |w| below this counts as zero (default 1e-13, the paper's).
    pub threshold: f64,
    /// Random shifts of up to ±2 pixels and horizontal flips of the training images.
    pub augment: bool,
    /// The data: `"embedded"` for the embedded subset, a folder of IDX files, or unset for
    /// `$PDECAY_DATA`, then /usr/share/datasets/fashion-mnist; for the GPT, a UTF-8 text file.
    pub data: Option<String>,
    /// The GPT's sizes and schedule (`[gpt]`; used when `model = "gpt"`).
    pub gpt: GptSettings,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: ModelKind::Mlp,
            hidden: vec![300, 100],
            cnn_widths: crate::models::Cnn::WIDTHS.to_vec(),
            optim: OptimKind::Padam,
            p: 0.8,
            lambda: 1e-3,
            lr: 1e-3,
            epochs: 10,
            batch_size: 128,
            warmup_epochs: 1.0,
            min_lr_ratio: 0.01,
            schedule: LrSchedule::Cosine,
            seed: 0,
            late: false,
            lambda2: 0.0,
            p_start: None,
            s_dynamics: None,
            lambda_release: None,
            lambda_release_ratio: 0.01,
            structured: false,
            gmp_final_sparsity: 0.9,
            gmp_end_fraction: 0.75,
            gmp_frequency: 100,
            threshold: DEFAULT_THRESHOLD,
            augment: false,
            data: None,
            gpt: GptSettings::default(),
        }
    }
}

impl TrainConfig {
    /// The widths of the configured model: `hidden` for the MLP, `cnn_widths` for the CNN.
    pub fn widths(&self) -> &[usize] {
        match self.model {
            ModelKind::Mlp | ModelKind::Gpt => &self.hidden,
            ModelKind::Cnn => &self.cnn_widths,
        }
    }

    /// Checks the settings that the optimizer constructors do not.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.epochs >= 1,
            "epochs must be at least 1, got {}",
            self.epochs
        );
        ensure!(
            self.batch_size >= 1,
            "batch_size must be at least 1, got {}",
            self.batch_size
        );
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "lr must be a finite number > 0, got {}",
            self.lr
        );
        ensure!(
            self.warmup_epochs.is_finite()
                && self.warmup_epochs >= 0.0
                && self.warmup_epochs <= self.epochs as f64,
            "warmup_epochs must lie in [0, epochs = {}], got {}",
            self.epochs,
            self.warmup_epochs
        );
        ensure!(
            self.threshold.is_finite() && self.threshold >= 0.0,
            "threshold must be a finite number >= 0, got {}",
            self.threshold
        );
        ensure!(
            self.hidden.iter().all(|&h| h > 0),
            "hidden widths must be at least 1, got {:?}",
            self.hidden
        );
        ensure!(
            self.cnn_widths.len() == 3 && self.cnn_widths.iter().all(|&w| w > 0),
            "cnn_widths must be three widths >= 1 (conv channels, conv channels, dense units), got {:?}",
            self.cnn_widths
        );
        if let Some(share) = self.lambda_release {
            ensure!(
                matches!(self.optim, OptimKind::Padam | OptimKind::Psgd),
                "lambda_release is a pWD variant: it needs --optim padam or psgd, got {:?}",
                self.optim
            );
            ensure!(
                share.is_finite() && share > 0.0 && share <= 1.0,
                "lambda_release is the share of training over which lambda falls; it must lie in (0, 1], got {share}"
            );
            ensure!(
                self.lambda_release_ratio.is_finite()
                    && self.lambda_release_ratio > 0.0
                    && self.lambda_release_ratio <= 1.0,
                "lambda_release_ratio must lie in (0, 1] (at 0 pWD switches off and the zeroed weights grow back), got {}",
                self.lambda_release_ratio
            );
        }
        if self.model == ModelKind::Gpt {
            self.gpt.validate()?;
        }
        // Builds the optimizer once so a bad p, lambda, ... fails before any data is loaded.
        self.optimizer(1)?;
        Ok(())
    }

    /// The lr schedule over `total_steps` steps.
    pub fn lr_schedule(&self, steps_per_epoch: usize) -> Result<Schedule> {
        let total = (self.epochs * steps_per_epoch) as u64;
        let warmup = (self.warmup_epochs * steps_per_epoch as f64).round() as u64;
        let after = total.saturating_sub(warmup).max(1);
        let end = self.lr * self.min_lr_ratio;
        let then = match self.schedule {
            LrSchedule::Cosine => Schedule::cosine(self.lr, end, after)?,
            LrSchedule::Geometric => Schedule::geometric(self.lr, end, after)
                .context("the geometric schedule needs min_lr_ratio > 0")?,
            LrSchedule::Constant => Schedule::constant(self.lr)?,
        };
        pdecay::validate::check_unit_interval("min_lr_ratio", self.min_lr_ratio)?;
        Ok(Schedule::warmup(0.0, warmup, then)?)
    }

    fn pnorm(&self, total_steps: u64) -> Result<PNormConfig> {
        let mut cfg = PNormConfig::new(self.p, self.lambda).with_lambda2(self.lambda2);
        if self.late {
            cfg = cfg.late();
        }
        if let Some(p0) = self.p_start {
            cfg = cfg.with_p_schedule(Schedule::linear(p0, self.p, (total_steps / 2).max(1))?);
        }
        if let Some(rate) = self.s_dynamics {
            cfg = cfg.s_dynamics(rate);
        }
        if let Some(share) = self.lambda_release {
            let release = ((total_steps as f64 * share).round() as u64).max(1);
            let hold = total_steps.saturating_sub(release);
            let end = self.lambda * self.lambda_release_ratio;
            // A warm-up from λ to λ is a hold: the cosine starts counting after it.
            let fall = Schedule::cosine(self.lambda, end, release)?;
            cfg = cfg.with_lambda_schedule(Schedule::warmup(self.lambda, hold, fall)?);
        }
        if self.structured {
            cfg = cfg.structured();
        }
        Ok(cfg)
    }

    /// The optimizer of this run.
    pub fn optimizer(&self, total_steps: u64) -> Result<SparseOptimizer> {
        self.optimizer_with_beta2(total_steps, 0.999)
    }

    /// The optimizer with Adam's beta2 set (pAdam, AdamW and Adam; the L1, naive Lp and
    /// magnitude-pruning baselines keep PyTorch's 0.999).
    pub fn optimizer_with_beta2(&self, total_steps: u64, beta2: f64) -> Result<SparseOptimizer> {
        let invalid = || format!("invalid settings for --optim {:?}", self.optim);
        let adam = || adam_pytorch().with_beta_2(beta2 as f32).build();
        let optim = match self.optim {
            OptimKind::Padam => SparseOptimizer::new(
                padam_with(0.9, beta2 as f32, 1e-8, &self.pnorm(total_steps)?)
                    .with_context(invalid)?,
            ),
            OptimKind::Psgd => SparseOptimizer::new(
                psgd(0.9, false, &self.pnorm(total_steps)?).with_context(invalid)?,
            ),
            OptimKind::Adamw => SparseOptimizer::new(Decoupled::new(
                adam(),
                DecoupledL2::new(self.lambda).with_context(invalid)?,
            )),
            OptimKind::Adam => SparseOptimizer::new(Decoupled::new(adam(), NoDecay)),
            OptimKind::AdamL1 => SparseOptimizer::new(adam_l1(self.lambda).with_context(invalid)?),
            OptimKind::NaiveLp => {
                SparseOptimizer::new(adam_naive_lp(self.p, self.lambda).with_context(invalid)?)
            }
            OptimKind::Gmp => {
                let end_step = ((total_steps as f64) * self.gmp_end_fraction).round() as u64;
                let cfg = MagnitudePruningConfig {
                    initial_sparsity: 0.0,
                    final_sparsity: self.gmp_final_sparsity,
                    begin_step: 0,
                    end_step: end_step.max(1),
                    frequency: self.gmp_frequency,
                };
                SparseOptimizer::new(adam_gmp(&cfg).with_context(invalid)?)
            }
        };
        Ok(optim)
    }
}

/// One line of `metrics.jsonl`, written after each epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epochs done (1-based).
    pub epoch: usize,
    /// Optimizer steps done.
    pub step: u64,
    /// Learning rate of the last step.
    pub lr: f64,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Mean test loss.
    pub test_loss: f64,
    /// Test accuracy, 0-1.
    pub test_accuracy: f64,
    /// Share of decayed weights with |w| < threshold.
    pub sparsity: f64,
    /// Share of decayed weights exactly 0.
    pub sparsity_exact_zero: f64,
    /// Share of all parameters with |w| < threshold.
    pub sparsity_all_params: f64,
    /// Per tensor: name, shape, params, decayed, zeros, below_threshold.
    pub layers: Vec<TensorSparsity>,
    /// Wall time since the start of the run.
    pub seconds: f64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Test accuracy after the last epoch.
    pub final_test_accuracy: f64,
    /// Best test accuracy over the epochs.
    pub best_test_accuracy: f64,
    /// Epoch of the best accuracy.
    pub best_epoch: usize,
    /// Test loss after the last epoch.
    pub final_test_loss: f64,
    /// Final share of decayed weights with |w| < threshold.
    pub sparsity: f64,
    /// Final share of decayed weights exactly 0.
    pub sparsity_exact_zero: f64,
    /// Final share of all parameters with |w| < threshold.
    pub sparsity_all_params: f64,
    /// Parameters with |w| >= threshold.
    pub nonzero_params: u64,
    /// All parameters.
    pub total_params: u64,
    /// Decayed parameters.
    pub decayed_params: u64,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of the whole run.
    pub wall_seconds: f64,
    /// Training images per second of training time (evaluation excluded).
    pub samples_per_second: f64,
}

/// The run diverged: the training loss, a gradient or a weight became NaN or infinite (an
/// outcome a sweep records, not a failure of the program).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error(
    "the run diverged at epoch {epoch}, step {step}: {reason} (lower --lr or --lambda); the last good checkpoint is kept"
)]
pub struct Diverged {
    /// The epoch of the step.
    pub epoch: usize,
    /// The step that diverged.
    pub step: u64,
    /// What became NaN or infinite.
    pub reason: String,
}

/// Where a run reports progress.
pub trait Progress {
    /// Before the first step: which tensors decay.
    fn start(&mut self, _decay: &DecaySummary) {}

    /// After each training step: `done` of `total` steps of epoch `epoch`, the batch's loss.
    fn step(&mut self, _epoch: usize, _done: usize, _total: usize, _loss: f64) {}

    /// After each epoch.
    fn epoch(&mut self, config: &TrainConfig, metrics: &EpochMetrics);
}

/// Prints one plain line per epoch.
pub struct PlainProgress;

impl Progress for PlainProgress {
    fn start(&mut self, decay: &DecaySummary) {
        println!("{decay}");
    }

    fn epoch(&mut self, config: &TrainConfig, m: &EpochMetrics) {
        println!("{}", epoch_line(config, m));
    }
}

/// The one-line account of an epoch that the progress reporters print.
pub fn epoch_line(config: &TrainConfig, m: &EpochMetrics) -> String {
    format!(
        "epoch {:>3}/{} step {:>6} lr {:.2e} train loss {:.4} test loss {:.4} acc {:.2}% sparsity {:.1}% ({:.0}s)",
        m.epoch,
        config.epochs,
        m.step,
        m.lr,
        m.train_loss,
        m.test_loss,
        100.0 * m.test_accuracy,
        100.0 * m.sparsity,
        m.seconds
    )
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn epoch(&mut self, _: &TrainConfig, _: &EpochMetrics) {}
}

const EVAL_BATCH: usize = 1000;

/// Test loss and accuracy of `model` (no autodiff, no dropout).
fn evaluate(
    model: &Classifier,
    data: &ImageSplits,
    stats: (f64, f64),
    device: &Device,
) -> (f64, f64) {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let (mut loss_sum, mut correct) = (0.0, 0usize);
    let n = data.test.len();
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        let (x, y) = data.test.batch(chunk, stats, device);
        let logits = model.forward(x);
        loss_sum += loss_fn
            .forward(logits.clone(), y.clone())
            .into_scalar::<f32>() as f64
            * chunk.len() as f64;
        correct += logits
            .argmax(1)
            .squeeze_dim::<1>(1)
            .equal(y)
            .int()
            .sum()
            .into_scalar::<i64>() as usize;
    }
    (loss_sum / n as f64, correct as f64 / n as f64)
}

/// Writes `bytes` to `path` atomically: a hidden temporary file beside it (`.NAME.PID.tmp`,
/// so no file of the user's is touched), flushed to disk, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Creates the run folder; refuses to overwrite one holding a finished or started run.
pub fn prepare_run_dir(dir: &Path) -> Result<()> {
    if dir.join("config.toml").exists() {
        bail!(
            "{} already holds a run (config.toml exists); choose another --out, or delete the folder to start over",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| {
        format!(
            "cannot create run folder {} (is --out writable?)",
            dir.display()
        )
    })
}

/// Where a run writes, how far it goes and where it computes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder; `None` keeps everything in memory (the demo).
    pub out: Option<PathBuf>,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Stop (resumably) once this many epochs are done, before `epochs`.
    pub stop_after: Option<usize>,
    /// The device (without autodiff; the trainer adds it).
    pub device: Device,
    /// More devices for data-parallel training, one replica each (empty: `device` alone).
    pub replicas: Vec<Device>,
}

impl Default for RunOptions {
    /// In memory, from the start, to the end, on the CPU.
    fn default() -> Self {
        Self {
            out: None,
            resume: false,
            stop_after: None,
            device: Device::flex(),
            replicas: Vec::new(),
        }
    }
}

/// Reads back the lines of a JSON-lines file that `keep` accepts and rewrites the file without
/// the others (lines written after the checkpoint a run resumes from).
pub fn jsonl_until<T: Serialize + serde::de::DeserializeOwned>(
    path: &Path,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut kept = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let m: T = serde_json::from_str(line)
            .with_context(|| format!("{} line {} is corrupt", path.display(), i + 1))?;
        if keep(&m) {
            kept.push(m);
        }
    }
    let mut body = String::new();
    for m in &kept {
        body.push_str(&serde_json::to_string(m)?);
        body.push('\n');
    }
    write_atomic(path, body.as_bytes())?;
    Ok(kept)
}

/// Where a run starts: fresh, or from the last checkpoint of a resumed run folder.
pub(crate) struct RunStart<M, T> {
    pub(crate) model: M,
    pub(crate) optim: SparseOptimizer,
    pub(crate) position: checkpoint::RunPosition,
    /// The metrics lines up to the checkpoint (empty for a fresh run).
    pub(crate) history: Vec<T>,
    /// `metrics.jsonl`, open for appending; `None` without a run folder.
    pub(crate) metrics_file: Option<std::fs::File>,
}

/// Prepares the run folder of `options`: a fresh one gets `config.toml` and an empty
/// `metrics.jsonl`; a resumed one restores its last checkpoint into `model` and `optim` and
/// keeps the metrics lines `written_by(line, checkpoint position)` accepts.
pub(crate) fn open_run<M: Module, T: Serialize + serde::de::DeserializeOwned>(
    config: &TrainConfig,
    options: &RunOptions,
    model: M,
    optim: SparseOptimizer,
    written_by: impl Fn(&T, usize) -> bool,
) -> Result<RunStart<M, T>> {
    let mut run = RunStart {
        model,
        optim,
        position: checkpoint::RunPosition {
            epoch: 0,
            step: 0,
            train_seconds: 0.0,
            wall_seconds: 0.0,
        },
        history: Vec::new(),
        metrics_file: None,
    };
    let Some(dir) = &options.out else {
        return Ok(run);
    };
    let metrics = dir.join("metrics.jsonl");
    if options.resume {
        if let Some((m, o, p)) = checkpoint::load(dir, run.model.clone(), run.optim.clone())? {
            (run.model, run.optim, run.position) = (m, o, p);
        }
        if metrics.exists() {
            let done = run.position.epoch;
            run.history = jsonl_until(&metrics, |m: &T| written_by(m, done))?;
        }
        run.metrics_file = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics)
                .context("opening metrics.jsonl")?,
        );
    } else {
        prepare_run_dir(dir)?;
        write_atomic(
            &dir.join("config.toml"),
            toml::to_string_pretty(config)?.as_bytes(),
        )?;
        run.metrics_file = Some(std::fs::File::create(&metrics).context("creating metrics.jsonl")?);
    }
    Ok(run)
}

/// One optimizer step; a NaN or Inf gradient or weight is the run's [`Diverged`] outcome (at
/// `epoch`, `step`), any other failure an error.
pub(crate) fn step_or_diverge<M: Module>(
    optim: &mut SparseOptimizer,
    lr: f64,
    model: M,
    grads: GradientsParams,
    epoch: usize,
    step: u64,
) -> Result<M> {
    match optim.step(lr, model, grads) {
        Ok(model) => Ok(model),
        Err(e @ (StepError::NonFiniteGradient { .. } | StepError::NonFiniteWeight { .. })) => {
            Err(Diverged {
                epoch,
                step,
                reason: e.to_string(),
            }
            .into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!(
            "optimizer step failed at epoch {epoch}, step {step}"
        ))),
    }
}

/// The seed of epoch `epoch`'s shuffle and dropout: derived from the run's seed alone, so epoch
/// k never depends on what happened before it (a resumed run replays it exactly).
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(epoch as u64)
}

/// Trains `config` on `data`, writing the run folder of `options` if given.
pub fn train(
    config: &TrainConfig,
    data: &ImageSplits,
    options: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<Summary> {
    config.validate()?;
    ensure!(
        config.model.is_classifier(),
        "the GPT trains on text: use gpt_train::train_gpt"
    );
    ensure!(
        data.train.rows == data.train.cols,
        "images must be square, got {}x{}",
        data.train.rows,
        data.train.cols
    );
    let steps_per_epoch = data.train.len().div_ceil(config.batch_size);
    let total_steps = (steps_per_epoch * config.epochs) as u64;
    let schedule = config.lr_schedule(steps_per_epoch)?;
    let optim = config.optimizer(total_steps)?;
    let device = options.device.clone().autodiff();
    device.seed(config.seed);
    let model = Classifier::new(config.model, data.train.rows, config.widths(), &device);
    let stats = data.train.pixel_stats();
    let RunStart {
        mut model,
        mut optim,
        mut position,
        mut history,
        mut metrics_file,
    } = open_run(config, options, model, optim, |m: &EpochMetrics, done| {
        m.epoch <= done
    })?;
    progress.start(&optim.decay_summary(&model));
    let replica_devices: Vec<Device> = options
        .replicas
        .iter()
        .map(|d| d.clone().autodiff())
        .collect();
    let mut others = replicate(&model, &optim, &replica_devices);
    let all_devices: Vec<Device> = std::iter::once(device.clone())
        .chain(replica_devices.iter().cloned())
        .collect();
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let start = Instant::now();
    let earlier_wall_seconds = position.wall_seconds;
    let mut report = optim.sparsity_report(&model, config.threshold, false);
    let mut indices: Vec<usize> = (0..data.train.len()).collect();
    let last_epoch = options
        .stop_after
        .unwrap_or(config.epochs)
        .min(config.epochs);
    for epoch in position.epoch + 1..=last_epoch {
        let seed = epoch_seed(config.seed, epoch);
        indices.sort_unstable();
        let mut rng = StdRng::seed_from_u64(seed);
        indices.shuffle(&mut rng);
        // each replica its own dropout stream: with one seed, row i of every shard would get
        // the same mask (replica 0 keeps the run's seed, so one device is unchanged)
        for (k, d) in all_devices.iter().enumerate() {
            d.seed(seed.wrapping_add((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
        let epoch_start = Instant::now();
        let (mut loss_sum, mut lr, mut done) = (0.0, 0.0, 0);
        for batch in indices.chunks(config.batch_size) {
            let step = position.step;
            let diverged = |value: f64| Diverged {
                epoch,
                step,
                reason: format!("the training loss became {value}"),
            };
            lr = schedule.value(step);
            // one device keeps its own branch: augmentation drawn straight from the epoch's
            // rng, so runs (and resumes) stay bit-identical with runs made before replicas
            let loss_value = if others.is_empty() {
                let augment = config.augment.then_some(&mut rng);
                let (x, y) = data.train.augmented_batch(batch, stats, &device, augment);
                let loss = loss_fn.forward(model.forward(x), y);
                let loss_value = loss.clone().into_scalar::<f32>() as f64;
                if !loss_value.is_finite() {
                    return Err(diverged(loss_value).into());
                }
                loss_sum += loss_value * batch.len() as f64;
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = step_or_diverge(&mut optim, lr, model, grads, epoch, step)?;
                loss_value
            } else {
                let parts = shards(batch.len(), all_devices.len());
                // one augmentation seed per shard, drawn here: the draws do not depend on how
                // the threads interleave
                let seeds: Vec<u64> = parts.iter().map(|_| rng.random()).collect();
                let whole = batch.len() as f64;
                let (loss_value, grads) = shard_gradients(&model, &device, &others, |m, d, s| {
                    let shard = &batch[parts[s].clone()];
                    if shard.is_empty() {
                        return None;
                    }
                    let mut shard_rng = StdRng::seed_from_u64(seeds[s]);
                    let augment = config.augment.then_some(&mut shard_rng);
                    let (x, y) = data.train.augmented_batch(shard, stats, d, augment);
                    // weighted by the shard's share: the sum is the whole batch's mean loss
                    Some(
                        loss_fn
                            .forward(m.forward(x), y)
                            .mul_scalar(shard.len() as f64 / whole),
                    )
                });
                if !loss_value.is_finite() {
                    return Err(diverged(loss_value).into());
                }
                loss_sum += loss_value * whole;
                let mut reduced = all_reduce(&model, grads, &all_devices).into_iter();
                let grads = reduced.next().expect("one copy per device");
                model = step_or_diverge(&mut optim, lr, model, grads, epoch, step)?;
                step_replicas(&mut others, reduced, lr, epoch, step)?;
                loss_value
            };
            position.step += 1;
            done += 1;
            progress.step(epoch, done, steps_per_epoch, loss_value);
        }
        position.train_seconds += epoch_start.elapsed().as_secs_f64();
        position.epoch = epoch;
        position.wall_seconds = earlier_wall_seconds + start.elapsed().as_secs_f64();
        let (test_loss, test_accuracy) =
            evaluate(&model.valid(), data, stats, &device.clone().inner());
        report = optim.sparsity_report(&model, config.threshold, false);
        let m = EpochMetrics {
            epoch,
            step: position.step,
            lr,
            train_loss: loss_sum / data.train.len() as f64,
            test_loss,
            test_accuracy,
            sparsity: report.decayed().sparsity(),
            sparsity_exact_zero: report.decayed().exact_zero_sparsity(),
            sparsity_all_params: report.all().sparsity(),
            layers: report.tensors.clone(),
            seconds: earlier_wall_seconds + start.elapsed().as_secs_f64(),
        };
        if let (Some(file), Some(dir)) = (metrics_file.as_mut(), &options.out) {
            writeln!(file, "{}", serde_json::to_string(&m)?).context("writing metrics.jsonl")?;
            file.flush()?;
            checkpoint::save(dir, &model, &optim, &position)?;
        }
        progress.epoch(config, &m);
        history.push(m);
    }
    let Some(last) = history.last() else {
        bail!("no epoch was trained (--stop-after 0?)");
    };
    let best = history
        .iter()
        .max_by(|a, b| {
            a.test_accuracy
                .total_cmp(&b.test_accuracy)
                .then(b.epoch.cmp(&a.epoch))
        })
        .expect("at least one epoch");
    let summary = Summary {
        final_test_accuracy: last.test_accuracy,
        best_test_accuracy: best.test_accuracy,
        best_epoch: best.epoch,
        final_test_loss: last.test_loss,
        sparsity: last.sparsity,
        sparsity_exact_zero: last.sparsity_exact_zero,
        sparsity_all_params: last.sparsity_all_params,
        nonzero_params: report.all().nonzero(),
        total_params: report.all().params,
        decayed_params: report.decayed().params,
        epochs: position.epoch,
        wall_seconds: earlier_wall_seconds + start.elapsed().as_secs_f64(),
        samples_per_second: (data.train.len() * position.epoch) as f64 / position.train_seconds,
    };
    // summary.json marks a finished run (a sweep skips it): not written when stopped early
    if let (Some(dir), true) = (&options.out, position.epoch == config.epochs) {
        write_atomic(
            &dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
    }
    Ok(summary)
}

/// The default run folder: `runs/<model>-<optim>-<unix seconds>`.
pub fn default_run_dir(config: &TrainConfig) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let optim = serde_json::to_value(config.optim)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let model = serde_json::to_value(config.model)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    PathBuf::from("runs").join(format!("{model}-{optim}-{stamp}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(share: f64, ratio: f64) -> TrainConfig {
        TrainConfig {
            lambda: 0.05,
            lambda_release: Some(share),
            lambda_release_ratio: ratio,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn a_lambda_release_holds_lambda_then_falls_along_a_half_cosine() {
        let pnorm = released(0.25, 0.01).pnorm(1000).unwrap().build().unwrap();
        for step in [0, 400, 749, 750] {
            assert_eq!(pnorm.lambda_at(step), 0.05, "step {step}");
        }
        // halfway down the cosine: the mean of its two ends
        let halfway = (0.05 + 0.05 * 0.01) / 2.0;
        assert!((pnorm.lambda_at(875) - halfway).abs() < 1e-12);
        assert!(pnorm.lambda_at(874) > pnorm.lambda_at(875));
        for step in [1000, 5000] {
            assert!((pnorm.lambda_at(step) - 5e-4).abs() < 1e-15, "step {step}");
        }
        // without a release lambda stays put
        let plain = TrainConfig::default().pnorm(1000).unwrap().build().unwrap();
        assert_eq!(plain.lambda_at(999), TrainConfig::default().lambda);
    }

    #[test]
    fn a_lambda_release_out_of_range_is_refused_with_the_key_named() {
        for (share, ratio, start) in [
            (0.0, 0.01, "lambda_release is the share"),
            (1.5, 0.01, "lambda_release is the share"),
            (f64::NAN, 0.01, "lambda_release is the share"),
            (0.25, 0.0, "lambda_release_ratio must"),
            (0.25, 2.0, "lambda_release_ratio must"),
        ] {
            let message = released(share, ratio).validate().unwrap_err().to_string();
            assert!(message.starts_with(start), "{message}");
        }
        released(1.0, 1.0).validate().unwrap();
        let adamw = TrainConfig {
            optim: OptimKind::Adamw,
            ..released(0.25, 0.01)
        };
        let message = adamw.validate().unwrap_err().to_string();
        assert!(message.contains("needs --optim padam or psgd"), "{message}");
    }
}
