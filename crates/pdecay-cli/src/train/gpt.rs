//! The GPT's part of the loop: iterations instead of epochs, each one step on a batch of random
//! windows of the text, with nanoGPT's schedule (linear warm-up, cosine to lr/10), betas
//! (0.9, 0.99) and global-norm gradient clipping; every `eval_interval` iterations an
//! evaluation of train and validation loss, next-character accuracy and sparsity, where
//! sparse training may also move layers to their sparse product (`sparse_training`).
//!
//! Gradient clipping's global norm is the norm of the gradients the backward pass produces.
//! A layer on the sparse product produces none for its exactly-zero weights (they are zero
//! and stay zero under pWD whatever their gradient), so from the step it moves the norm counts
//! that layer's live weights only; on the dense product a dead weight's gradient still counts.
//!
//! The run folder is the image classifiers' plus `vocab.json`.

use std::time::Instant;

use anyhow::{Result, ensure};
use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Int, Tensor, TensorData};
use pdecay::schedule::Schedule;
use pdecay::sparsity::SparsityReport;
use pdecay_burn::{SparseOptimizer, clip_grad_norm};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::skeleton::{
    Progress, RunOptions, Trainer, check_memory, finite_loss, run_loop, step_or_diverge, unit_seed,
};
use super::sparse_training::SparsePlan;
use crate::config::{GPT_THRESHOLD, GptSettings, TrainConfig};
use crate::data::text::{TextData, random_windows};
use crate::models::gpt::tokens_tensor;
use crate::models::{Gpt, memory};
use crate::run::{GptEval, GptSummary, RunPosition, StepAt, Unit};

/// Trains the GPT of `config` on `text`, writing the run folder of `options` if given.
pub fn train_gpt(
    config: &TrainConfig,
    text: &TextData,
    options: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<GptSummary> {
    config.validate()?;
    ensure!(
        options.replicas.is_empty(),
        "data-parallel training is built for the image classifiers, not yet for the GPT: give one device"
    );
    let s = &config.gpt;
    config.check_run_length(s.iters as u64)?;
    check_memory(
        memory::gpt(&s.model(text.vocab.len()), s.batch_size),
        "--width, --layers, --block-size or --batch-size",
    )?;
    let device = options.device.clone().autodiff();
    device.seed(config.seed);
    let model = Gpt::new(&s.model(text.vocab.len()), &device);
    let optim = config.optimizer(s.iters as u64)?;
    let plan = SparsePlan::new(config, s.iters as u64, model.sparse_candidates(), &device)?;
    let mut trainer = GptTrainer {
        config,
        s,
        text,
        schedule: s.schedule(config.lr)?,
        loss_fn: CrossEntropyLossConfig::new().init(&device),
        device,
        lr: 0.0,
        grad_norm: 0.0,
        step_seconds: 0.0,
        plan,
    };
    run_loop(
        &mut trainer,
        config,
        options,
        (model, optim),
        |run| run.write_vocab(&text.vocab),
        progress,
    )
}

struct GptTrainer<'a> {
    config: &'a TrainConfig,
    s: &'a GptSettings,
    text: &'a TextData,
    schedule: Schedule,
    loss_fn: CrossEntropyLoss,
    /// The autodiff device.
    device: Device,
    /// The lr and the gradient norm before clipping of the last step.
    lr: f64,
    grad_norm: f64,
    /// The mean step time since the last evaluation.
    step_seconds: f64,
    /// Which linear layers run over their non-zeros.
    plan: SparsePlan,
}

impl GptTrainer<'_> {
    /// Moves the layers that sparse training says should move after `step` steps; each
    /// layer's rows are every position of a batch.
    fn update_plan(&mut self, model: &Gpt, step: u64) {
        let positions = self.s.batch_size * self.s.block_size;
        self.plan
            .update(model.sparse_candidates(), step, positions, &self.device);
    }
}

impl Trainer for GptTrainer<'_> {
    type Model = Gpt;
    type Eval = GptEval;
    type Summary = GptSummary;
    const UNIT: Unit = Unit::Iteration;

    fn length(&self) -> usize {
        self.s.iters
    }

    fn period_end(&self, done: usize, last: usize) -> usize {
        next_evaluation(done, self.s.eval_interval, last)
    }

    fn begin(&mut self, model: &Gpt, _optim: &SparseOptimizer, last: Option<&GptEval>) {
        match last {
            Some(last) => self.plan.restore(&last.sparse_layers),
            None => self.update_plan(model, 0),
        }
    }

    fn train_period(
        &mut self,
        mut model: Gpt,
        optim: &mut SparseOptimizer,
        done: usize,
        end: usize,
        step: &mut u64,
        progress: &mut dyn Progress,
    ) -> Result<Gpt> {
        let s = self.s;
        let started = (Instant::now(), *step);
        let sparse = self.plan.flags();
        for iter in done + 1..=end {
            let seed = unit_seed(self.config.seed, iter);
            let mut rng = StdRng::seed_from_u64(seed);
            self.device.seed(seed);
            let (x, y) = random_windows(&self.text.train, s.block_size, s.batch_size, &mut rng);
            let n = y.len();
            let logits = model
                .forward_with(
                    tokens_tensor(x, s.batch_size, s.block_size, &self.device),
                    &sparse,
                )
                .reshape([n, usize::MAX]);
            let targets = Tensor::<1, Int>::from_data(TensorData::new(y, [n]), &self.device);
            let loss = self.loss_fn.forward(logits, targets);
            let at = StepAt::Iteration(iter);
            let loss_value = finite_loss(loss.clone().into_scalar::<f32>() as f64, at)?;
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let grads = if s.grad_clip > 0.0 {
                let (grads, norm) = clip_grad_norm(&model, grads, s.grad_clip);
                self.grad_norm = norm;
                grads
            } else {
                grads
            };
            self.lr = self.schedule.value(*step);
            model = step_or_diverge(optim, self.lr, model, grads, at)?;
            *step += 1;
            progress.step(Unit::Iteration, end, iter - done, end - done, loss_value);
        }
        let steps = (*step - started.1).max(1);
        self.step_seconds = started.0.elapsed().as_secs_f64() / steps as f64;
        Ok(model)
    }

    fn evaluate(
        &mut self,
        model: &Gpt,
        optim: &SparseOptimizer,
        iter: usize,
        step: u64,
    ) -> GptEval {
        let valid = model.valid();
        let inner = self.device.clone().inner();
        let eval_seed = self.config.seed.wrapping_add(0x5eed);
        let flags = self.plan.flags();
        let run = |tokens| evaluate(&valid, tokens, &flags, self.s, eval_seed, &inner);
        let (train_loss, _) = run(&self.text.train);
        let (val_loss, val_accuracy) = run(&self.text.val);
        let report_at = |threshold| optim.sparsity_report(model, threshold, false);
        let sparse = report_at(self.config.threshold);
        // decided here, before the checkpoint that this line goes with: a resumed run takes the
        // plan for its next iterations from it, as the uninterrupted run did
        self.update_plan(model, step);
        GptEval {
            iter,
            lr: self.lr,
            train_loss,
            val_loss,
            val_accuracy,
            grad_norm: self.grad_norm,
            sparsity: sparse.decayed().sparsity(),
            sparsity_1e10: report_at(GPT_THRESHOLD).decayed().sparsity(),
            sparsity_exact_zero: sparse.decayed().exact_zero_sparsity(),
            sparsity_all_params: sparse.all().sparsity(),
            layers: sparse.tensors.clone(),
            seconds: 0.0,
            step_seconds: self.step_seconds,
            sparse_layers: self.plan.record(),
        }
    }

    fn summarize(
        &self,
        history: &[GptEval],
        sparsity: &SparsityReport,
        position: &RunPosition,
        wall_seconds: f64,
    ) -> GptSummary {
        let last = history.last().expect("at least one evaluation");
        let best = history
            .iter()
            .min_by(|a, b| a.val_loss.total_cmp(&b.val_loss))
            .expect("at least one evaluation");
        GptSummary {
            final_val_loss: last.val_loss,
            best_val_loss: best.val_loss,
            best_iter: best.iter,
            final_val_accuracy: last.val_accuracy,
            sparsity: last.sparsity,
            sparsity_1e10: last.sparsity_1e10,
            sparsity_exact_zero: last.sparsity_exact_zero,
            sparsity_all_params: last.sparsity_all_params,
            nonzero_params: sparsity.all().nonzero(),
            total_params: sparsity.all().params,
            decayed_params: sparsity.decayed().params,
            iters: position.done(),
            wall_seconds,
            seconds_per_iter: position.train_seconds / position.step.max(1) as f64,
            sparse_layers: last.sparse_layers.clone(),
        }
    }
}

/// The iteration of the next evaluation after `done`: the next multiple of `interval`, or
/// `last` (the end of the run, or where it stops) if that comes first.
fn next_evaluation(done: usize, interval: usize, last: usize) -> usize {
    ((done / interval + 1) * interval).min(last)
}

/// Mean loss and next-character accuracy of `model` on `eval_batches` seeded windows of
/// `tokens`, its layers run sparse where `sparse` says (as training runs them).
fn evaluate(
    model: &Gpt,
    tokens: &[u32],
    sparse: &[bool],
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
            .forward_with(tokens_tensor(x, s.batch_size, s.block_size, device), sparse)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluations_come_every_interval_and_at_the_last_iteration() {
        assert_eq!(next_evaluation(0, 250, 2000), 250);
        assert_eq!(next_evaluation(250, 250, 2000), 500);
        assert_eq!(next_evaluation(1750, 250, 2000), 2000);
        // a stop between evaluations, and a run resumed from it
        assert_eq!(next_evaluation(0, 250, 100), 100);
        assert_eq!(next_evaluation(100, 250, 2000), 250);
        assert_eq!(next_evaluation(1990, 250, 1995), 1995);
    }
}
