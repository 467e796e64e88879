//! Training the character-level GPT: iterations instead of epochs, nanoGPT's schedule (linear
//! warm-up, cosine to lr/10), betas (0.9, 0.99), global-norm gradient clipping, and periodic
//! evaluation of train and validation loss, next-character accuracy and sparsity.
//!
//! The run folder is the image trainer's (`config.toml`, `metrics.jsonl` with one object per
//! evaluation, `summary.json`, atomic checkpoints) plus `vocab.json`.

use std::io::Write;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use pdecay::Schedule;
use pdecay::sparsity::TensorSparsity;
use pdecay_burn::clip_grad_norm;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::checkpoint;
use crate::data::text::{TextData, Vocabulary, random_windows};
use crate::gpt::{Gpt, GptConfig};
use crate::train::{
    Diverged, RunOptions, RunStart, TrainConfig, open_run, step_or_diverge, write_atomic,
};

/// The sparsity threshold the authors used for the GPT.
pub const GPT_THRESHOLD: f64 = 1e-10;

/// The GPT's settings (`[gpt]` in a config file). The defaults are the CPU preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GptSettings {
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Embedding width.
    pub width: usize,
    /// Context length.
    pub block_size: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Optimizer steps.
    pub iters: usize,
    /// Steps between evaluations (and checkpoints).
    pub eval_interval: usize,
    /// Batches per split in an evaluation.
    pub eval_batches: usize,
    /// Dropout probability.
    pub dropout: f64,
    /// Biases in Linear and LayerNorm layers.
    pub bias: bool,
    /// Linear warm-up steps.
    pub warmup_iters: usize,
    /// Final lr as a share of the peak (nanoGPT: 1/10).
    pub min_lr_ratio: f64,
    /// Adam's beta2 (nanoGPT: 0.99 for the small character models).
    pub beta2: f64,
    /// Global gradient norm limit (0 turns clipping off).
    pub grad_clip: f64,
}

impl Default for GptSettings {
    fn default() -> Self {
        GptPreset::Cpu.settings()
    }
}

/// Model and run sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GptPreset {
    /// 4 layers, 4 heads, width 128, block 64, batch 12, 2000 iterations, dropout 0.
    Cpu,
    /// The paper's: 6 layers, 6 heads, width 384, block 256, batch 64, 5000 iterations,
    /// dropout 0.2.
    Paper,
}

impl GptPreset {
    /// The settings of this preset.
    pub fn settings(self) -> GptSettings {
        let base = GptSettings {
            layers: 4,
            heads: 4,
            width: 128,
            block_size: 64,
            batch_size: 12,
            iters: 2000,
            eval_interval: 250,
            eval_batches: 20,
            dropout: 0.0,
            bias: false,
            warmup_iters: 100,
            min_lr_ratio: 0.1,
            beta2: 0.99,
            grad_clip: 1.0,
        };
        match self {
            Self::Cpu => base,
            Self::Paper => GptSettings {
                layers: 6,
                heads: 6,
                width: 384,
                block_size: 256,
                batch_size: 64,
                iters: 5000,
                dropout: 0.2,
                ..base
            },
        }
    }
}

impl GptSettings {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("layers", self.layers),
            ("heads", self.heads),
            ("width", self.width),
            ("block_size", self.block_size),
            ("batch_size", self.batch_size),
            ("iters", self.iters),
            ("eval_interval", self.eval_interval),
            ("eval_batches", self.eval_batches),
        ] {
            ensure!(value >= 1, "gpt.{name} must be at least 1, got {value}");
        }
        ensure!(
            self.width.is_multiple_of(self.heads),
            "gpt.width ({}) must be a multiple of gpt.heads ({})",
            self.width,
            self.heads
        );
        ensure!(
            (0.0..1.0).contains(&self.dropout),
            "gpt.dropout must lie in [0, 1), got {}",
            self.dropout
        );
        ensure!(
            self.beta2 > 0.0 && self.beta2 < 1.0,
            "gpt.beta2 must lie in (0, 1), got {}",
            self.beta2
        );
        ensure!(
            self.grad_clip.is_finite() && self.grad_clip >= 0.0,
            "gpt.grad_clip must be a finite number >= 0, got {}",
            self.grad_clip
        );
        pdecay::validate::check_unit_interval("gpt.min_lr_ratio", self.min_lr_ratio)?;
        Ok(())
    }

    /// The model sizes for a vocabulary.
    pub fn model(&self, vocab_size: usize) -> GptConfig {
        GptConfig {
            vocab_size,
            layers: self.layers,
            heads: self.heads,
            width: self.width,
            block_size: self.block_size,
            dropout: self.dropout,
            bias: self.bias,
        }
    }

    /// Warm-up from 0 (at most the whole run), then cosine from `lr` to `lr · min_lr_ratio`.
    pub fn schedule(&self, lr: f64) -> Result<Schedule> {
        let warmup = self.warmup_iters.min(self.iters);
        let after = (self.iters - warmup).max(1) as u64;
        let cosine = Schedule::cosine(lr, lr * self.min_lr_ratio, after)?;
        Ok(Schedule::warmup(0.0, warmup as u64, cosine)?)
    }
}

/// One evaluation; a line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GptEval {
    /// Steps done.
    pub iter: usize,
    /// The lr of the last step.
    pub lr: f64,
    /// Mean loss on `eval_batches` training batches.
    pub train_loss: f64,
    /// Mean loss on `eval_batches` validation batches.
    pub val_loss: f64,
    /// Next-character accuracy on the validation batches (0-1).
    pub val_accuracy: f64,
    /// Global gradient norm before clipping, at the last step.
    pub grad_norm: f64,
    /// Share of decayed weights with |w| < threshold (1e-13 unless configured).
    pub sparsity: f64,
    /// Share of decayed weights with |w| < 1e-10 (the authors' GPT threshold).
    pub sparsity_1e10: f64,
    /// Share of decayed weights exactly 0.
    pub sparsity_exact_zero: f64,
    /// Share of all parameters below the threshold.
    pub sparsity_all_params: f64,
    /// Per tensor.
    pub layers: Vec<TensorSparsity>,
    /// Wall-clock seconds since the start of the run.
    pub seconds: f64,
}

impl GptEval {
    /// The one-line account of this evaluation that progress reporters print.
    pub fn line(&self, iters: usize) -> String {
        format!(
            "iter {:>5}/{} lr {:.2e} train loss {:.4} val loss {:.4} val acc {:.2}% sparsity {:.1}% (1e-10: {:.1}%) ({:.0}s)",
            self.iter,
            iters,
            self.lr,
            self.train_loss,
            self.val_loss,
            100.0 * self.val_accuracy,
            100.0 * self.sparsity,
            100.0 * self.sparsity_1e10,
            self.seconds
        )
    }
}

/// `summary.json` of a GPT run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GptSummary {
    /// Validation loss at the last evaluation.
    pub final_val_loss: f64,
    /// Lowest validation loss of any evaluation.
    pub best_val_loss: f64,
    /// The iteration of the lowest validation loss.
    pub best_iter: usize,
    /// Next-character accuracy at the last evaluation.
    pub final_val_accuracy: f64,
    /// Final sparsity (threshold of the config).
    pub sparsity: f64,
    /// Final sparsity at 1e-10.
    pub sparsity_1e10: f64,
    /// Final share of exact zeros.
    pub sparsity_exact_zero: f64,
    /// Final sparsity over all parameters.
    pub sparsity_all_params: f64,
    /// Parameters not below the threshold.
    pub nonzero_params: u64,
    /// All parameters.
    pub total_params: u64,
    /// Decayed parameters.
    pub decayed_params: u64,
    /// Steps done.
    pub iters: usize,
    /// Wall-clock seconds of the run.
    pub wall_seconds: f64,
    /// Training seconds per step (evaluation excluded).
    pub seconds_per_iter: f64,
}

fn tokens_tensor(values: Vec<i64>, batch: usize, block: usize, device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values, [batch, block]), device)
}

/// The seed of step `iter`'s windows and dropout: from the run's seed alone, so a resumed run
/// replays each step exactly.
fn step_seed(seed: u64, iter: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(iter as u64)
}

/// Mean loss and next-character accuracy of `model` on `batches` seeded windows of `tokens`.
fn evaluate(
    model: &Gpt,
    tokens: &[u32],
    s: &GptSettings,
    seed: u64,
    device: &Device,
) -> (f64, f64) {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut loss, mut correct, mut count) = (0.0, 0usize, 0usize);
    for _ in 0..s.eval_batches {
        let (x, y) = random_windows(tokens, s.block_size, s.batch_size, &mut rng);
        let n = y.len();
        let logits = model
            .forward(tokens_tensor(x, s.batch_size, s.block_size, device))
            .reshape([n, usize::MAX]);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(y, [n]), device);
        let predicted = logits.clone().argmax(1).reshape([n]);
        correct += predicted
            .equal(targets.clone())
            .int()
            .sum()
            .into_scalar::<i64>() as usize;
        loss += loss_fn.forward(logits, targets).into_scalar::<f32>() as f64;
        count += n;
    }
    (loss / s.eval_batches as f64, correct as f64 / count as f64)
}

/// Trains the GPT of `config` on `text`, writing the run folder of `options` if given;
/// `report` sees each evaluation.
pub fn train_gpt(
    config: &TrainConfig,
    text: &TextData,
    options: &RunOptions,
    report: &mut dyn FnMut(&GptEval),
) -> Result<GptSummary> {
    config.validate()?;
    ensure!(
        options.replicas.is_empty(),
        "data-parallel training is built for the image classifiers, not yet for the GPT: give one device"
    );
    let s = &config.gpt;
    let device = options.device.clone().autodiff();
    device.seed(config.seed);
    let model = Gpt::new(&s.model(text.vocab.len()), &device);
    let optim = config.optimizer_with_beta2(s.iters as u64, s.beta2)?;
    let schedule = s.schedule(config.lr)?;
    let RunStart {
        mut model,
        mut optim,
        mut position,
        mut history,
        mut metrics_file,
    } = open_run(config, options, model, optim, |e: &GptEval, done| {
        e.iter <= done
    })?;
    if let (Some(dir), false) = (&options.out, options.resume) {
        write_atomic(
            &dir.join("vocab.json"),
            serde_json::to_string(&text.vocab)?.as_bytes(),
        )?;
    }
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let start = Instant::now();
    let earlier_wall = position.wall_seconds;
    let mut grad_norm = 0.0;
    let last_iter = options.stop_after.unwrap_or(s.iters).min(s.iters);
    let mut step_start = Instant::now();
    for iter in position.epoch + 1..=last_iter {
        let seed = step_seed(config.seed, iter);
        let mut rng = StdRng::seed_from_u64(seed);
        device.seed(seed);
        let (x, y) = random_windows(&text.train, s.block_size, s.batch_size, &mut rng);
        let n = y.len();
        let logits = model
            .forward(tokens_tensor(x, s.batch_size, s.block_size, &device))
            .reshape([n, usize::MAX]);
        let targets = Tensor::<1, Int>::from_data(TensorData::new(y, [n]), &device);
        let loss = loss_fn.forward(logits, targets);
        let loss_value = loss.clone().into_scalar::<f32>() as f64;
        if !loss_value.is_finite() {
            return Err(Diverged {
                epoch: iter,
                step: iter as u64,
                reason: format!("the training loss became {loss_value}"),
            }
            .into());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let grads = if s.grad_clip > 0.0 {
            let (grads, norm) = clip_grad_norm(&model, grads, s.grad_clip);
            grad_norm = norm;
            grads
        } else {
            grads
        };
        let lr = schedule.value(position.step);
        model = step_or_diverge(&mut optim, lr, model, grads, iter, iter as u64)?;
        position.step += 1;
        if iter % s.eval_interval == 0 || iter == s.iters || iter == last_iter {
            position.train_seconds += step_start.elapsed().as_secs_f64();
            position.epoch = iter;
            let valid = model.valid();
            let inner = device.clone().inner();
            let eval_seed = config.seed.wrapping_add(0x5eed);
            let (train_loss, _) = evaluate(&valid, &text.train, s, eval_seed, &inner);
            let (val_loss, val_accuracy) = evaluate(&valid, &text.val, s, eval_seed, &inner);
            let report_at = |threshold| optim.sparsity_report(&model, threshold, false);
            let sparse = report_at(config.threshold);
            let eval = GptEval {
                iter,
                lr,
                train_loss,
                val_loss,
                val_accuracy,
                grad_norm,
                sparsity: sparse.decayed().sparsity(),
                sparsity_1e10: report_at(GPT_THRESHOLD).decayed().sparsity(),
                sparsity_exact_zero: sparse.decayed().exact_zero_sparsity(),
                sparsity_all_params: sparse.all().sparsity(),
                layers: sparse.tensors.clone(),
                seconds: earlier_wall + start.elapsed().as_secs_f64(),
            };
            position.wall_seconds = eval.seconds;
            if let (Some(file), Some(dir)) = (metrics_file.as_mut(), &options.out) {
                writeln!(file, "{}", serde_json::to_string(&eval)?)
                    .context("writing metrics.jsonl")?;
                file.flush()?;
                checkpoint::save(dir, &model, &optim, &position)?;
            }
            report(&eval);
            history.push(eval);
            step_start = Instant::now();
        }
    }
    let Some(last) = history.last() else {
        bail!("no evaluation was made (--stop-after 0?)");
    };
    let best = history
        .iter()
        .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss))
        .expect("at least one evaluation");
    let all = optim.sparsity_report(&model, config.threshold, false);
    let summary = GptSummary {
        final_val_loss: last.val_loss,
        best_val_loss: best.val_loss,
        best_iter: best.iter,
        final_val_accuracy: last.val_accuracy,
        sparsity: last.sparsity,
        sparsity_1e10: last.sparsity_1e10,
        sparsity_exact_zero: last.sparsity_exact_zero,
        sparsity_all_params: last.sparsity_all_params,
        nonzero_params: all.all().nonzero(),
        total_params: all.all().params,
        decayed_params: all.decayed().params,
        iters: position.epoch,
        wall_seconds: earlier_wall + start.elapsed().as_secs_f64(),
        seconds_per_iter: position.train_seconds / position.step.max(1) as f64,
    };
    if let (Some(dir), true) = (&options.out, position.epoch == s.iters) {
        write_atomic(
            &dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
    }
    Ok(summary)
}

/// Generation settings of `pdecay sample`.
#[derive(Debug, Clone)]
pub struct Sampling {
    /// Characters to generate.
    pub tokens: usize,
    /// Logits are divided by this (> 0).
    pub temperature: f64,
    /// Only the `top_k` most likely characters are drawn from (0: all).
    pub top_k: usize,
    /// Seed of the draws.
    pub seed: u64,
}

/// The run's vocabulary.
pub fn read_vocab(dir: &std::path::Path) -> Result<Vocabulary> {
    let path = dir.join("vocab.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} has no vocab.json: is it a GPT run folder?",
            dir.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
}

/// `prompt` continued by `sampling.tokens` characters drawn from `model`.
pub fn sample(
    model: &Gpt,
    vocab: &Vocabulary,
    block_size: usize,
    prompt: &str,
    sampling: &Sampling,
) -> Result<String> {
    use rand::Rng;
    ensure!(
        sampling.temperature > 0.0 && sampling.temperature.is_finite(),
        "--temperature must be a finite number > 0, got {}",
        sampling.temperature
    );
    let mut context: Vec<u32> = vocab.encode(prompt)?;
    if context.is_empty() {
        // nanoGPT starts from a newline; any character of the text will do otherwise
        context.push(
            vocab
                .encode("\n")
                .ok()
                .and_then(|t| t.first().copied())
                .unwrap_or(0),
        );
    }
    let device = model.device();
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    for _ in 0..sampling.tokens {
        let window = &context[context.len().saturating_sub(block_size)..];
        let x: Vec<i64> = window.iter().map(|&t| t as i64).collect();
        let t = x.len();
        let logits = model
            .forward(tokens_tensor(x, 1, t, &device))
            .slice([0..1, t - 1..t, 0..vocab.len()])
            .reshape([vocab.len()])
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("reading the logits: {e:?}"))?;
        let mut scaled: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, l as f64 / sampling.temperature))
            .collect();
        if sampling.top_k > 0 && sampling.top_k < scaled.len() {
            scaled.sort_by(|a, b| b.1.total_cmp(&a.1));
            scaled.truncate(sampling.top_k);
        }
        let top = scaled.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = scaled.iter().map(|p| (p.1 - top).exp()).collect();
        let mut draw = rng.random::<f64>() * weights.iter().sum::<f64>();
        let mut chosen = scaled[scaled.len() - 1].0;
        for (p, w) in scaled.iter().zip(&weights) {
            if draw < *w {
                chosen = p.0;
                break;
            }
            draw -= w;
        }
        context.push(chosen as u32);
    }
    let generated: Vec<u32> = context[context.len() - sampling.tokens..].to_vec();
    Ok(format!("{prompt}{}", vocab.decode(&generated)))
}
