//! The image classifiers' part of the loop: an epoch is one shuffled pass over the training
//! images in batches (split over the data-parallel replicas when there are several), evaluated
//! on the test set after it.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::GradientsParams;
use burn::tensor::Device;
use pdecay::schedule::Schedule;
use pdecay::sparsity::SparsityReport;
use pdecay_burn::SparseOptimizer;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::parallel::{Replica, all_reduce, replicate, shard_gradients, shards, step_replicas};
use super::skeleton::{
    Progress, RunOptions, Trainer, check_memory, finite_loss, run_loop, step_or_diverge, unit_seed,
};
use super::sparse_training::SparsePlan;
use crate::config::TrainConfig;
use crate::data::{AugmentDraws, ChannelStats, ImageSplits};
use crate::models::{Classifier, memory};
use crate::run::{ClassifierSummary, EpochMetrics, RunPosition, StepAt, Unit};

/// Trains the image classifier of `config` on `data`, writing the run folder of `options` if
/// given.
pub fn train_classifier(
    config: &TrainConfig,
    data: &ImageSplits,
    options: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<ClassifierSummary> {
    config.validate()?;
    ensure!(
        config.model.is_classifier(),
        "the GPT trains on text: use train::train_gpt"
    );
    data.check()?;
    // burn's BatchNorm replicas would share their running statistics and average them in
    // whatever order the threads update them: a run would not repeat itself
    ensure!(
        !config.model.is_resnet() || options.replicas.is_empty(),
        "the ResNets train on one device (their BatchNorm statistics are not kept per replica yet): give --device one device"
    );
    // the run records its data's image shape (the network's input is built from it)
    let config = &config.with_image_shape(data.shape())?;
    ensure!(
        config.batch_size <= data.train.len(),
        "batch_size {} is larger than the {} training images of {}: every epoch would be one short batch. Use --batch-size {} or less",
        config.batch_size,
        data.train.len(),
        data.source,
        data.train.len()
    );
    let steps_per_epoch = data.train.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch
        .checked_mul(config.epochs)
        .and_then(|s| u64::try_from(s).ok())
        .with_context(|| {
            format!(
                "--epochs {} of {steps_per_epoch} steps each is more steps than a run can count",
                config.epochs
            )
        })?;
    config.check_run_length(total_steps)?;
    let need = memory::classifier(
        config.model,
        config.image_shape,
        config.widths(),
        config.batch_size,
    );
    check_memory(
        need,
        "--hidden (the CNN: cnn_widths; a ResNet: --resnet-width) or --batch-size",
    )?;
    let optim = config.optimizer(total_steps)?;
    let device = options.device.clone().autodiff();
    device.seed(config.seed);
    let model = Classifier::new(config.model, config.image_shape, config.widths(), &device);
    let image = config.image_shape.into();
    let plan = SparsePlan::new(config, total_steps, model.sparse_candidates(image), &device)?;
    let replica_devices = options
        .replicas
        .iter()
        .map(|d| d.clone().autodiff())
        .collect();
    let mut trainer = ClassifierTrainer {
        config,
        data,
        stats: data.train.pixel_stats(),
        schedule: config.lr_schedule(steps_per_epoch)?,
        steps_per_epoch,
        loss_fn: CrossEntropyLossConfig::new().init(&device),
        device,
        replica_devices,
        others: Vec::new(),
        indices: (0..data.train.len()).collect(),
        loss_sum: 0.0,
        lr: 0.0,
        step_seconds: 0.0,
        plan,
    };
    run_loop(
        &mut trainer,
        config,
        options,
        (model, optim),
        |_| Ok(()),
        progress,
    )
}

struct ClassifierTrainer<'a> {
    config: &'a TrainConfig,
    data: &'a ImageSplits,
    stats: ChannelStats,
    schedule: Schedule,
    steps_per_epoch: usize,
    loss_fn: CrossEntropyLoss,
    /// The first replica's autodiff device.
    device: Device,
    /// The other replicas' autodiff devices.
    replica_devices: Vec<Device>,
    others: Vec<Replica<Classifier>>,
    indices: Vec<usize>,
    /// The epoch's summed loss, and the lr of its last step.
    loss_sum: f64,
    lr: f64,
    /// The mean step time of the last epoch.
    step_seconds: f64,
    /// Which linear layers run over their non-zeros.
    plan: SparsePlan,
}

impl ClassifierTrainer<'_> {
    /// Moves the layers that sparse training says should move after `step` steps.
    fn update_plan(&mut self, model: &Classifier, step: u64) {
        let layers = model.sparse_candidates(self.config.image_shape.into());
        self.plan
            .update(layers, step, self.config.batch_size, &self.device);
    }
}

impl Trainer for ClassifierTrainer<'_> {
    type Model = Classifier;
    type Eval = EpochMetrics;
    type Summary = ClassifierSummary;
    const UNIT: Unit = Unit::Epoch;

    fn length(&self) -> usize {
        self.config.epochs
    }

    fn period_end(&self, done: usize, _last: usize) -> usize {
        done + 1
    }

    fn begin(&mut self, model: &Classifier, optim: &SparseOptimizer, last: Option<&EpochMetrics>) {
        self.others = replicate(model, optim, &self.replica_devices);
        match last {
            Some(last) => self.plan.restore(&last.sparse_layers),
            None => self.update_plan(model, 0),
        }
    }

    fn train_period(
        &mut self,
        mut model: Classifier,
        optim: &mut SparseOptimizer,
        _done: usize,
        epoch: usize,
        step: &mut u64,
        progress: &mut dyn Progress,
    ) -> Result<Classifier> {
        let (config, data, stats) = (self.config, self.data, &self.stats[..]);
        let started = (Instant::now(), *step);
        let sparse = self.plan.flags();
        let seed = unit_seed(config.seed, epoch);
        self.indices.sort_unstable();
        let mut rng = StdRng::seed_from_u64(seed);
        self.indices.shuffle(&mut rng);
        let all_devices: Vec<Device> = std::iter::once(self.device.clone())
            .chain(self.replica_devices.iter().cloned())
            .collect();
        // each replica its own dropout stream: with one seed, row i of every shard would get
        // the same mask (replica 0 keeps the run's seed, so one device is unchanged)
        for (k, d) in all_devices.iter().enumerate() {
            d.seed(seed.wrapping_add((k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)));
        }
        self.loss_sum = 0.0;
        for (done, batch) in self.indices.chunks(config.batch_size).enumerate() {
            let at = StepAt::Epoch { epoch, step: *step };
            self.lr = self.schedule.value(*step);
            let lr = self.lr;
            // one device keeps its own branch: augmentation drawn straight from the epoch's
            // rng, so runs (and resumes) stay bit-identical with runs made before replicas
            let loss_value = if self.others.is_empty() {
                let augment = augment_draws(config, &mut rng);
                let (x, y) = data
                    .train
                    .augmented_batch(batch, stats, &self.device, augment);
                let loss = self.loss_fn.forward(model.forward_with(x, &sparse), y);
                let loss_value = finite_loss(loss.clone().into_scalar::<f32>() as f64, at)?;
                self.loss_sum += loss_value * batch.len() as f64;
                let grads = GradientsParams::from_grads(loss.backward(), &model);
                model = step_or_diverge(optim, lr, model, grads, at)?;
                loss_value
            } else {
                let parts = shards(batch.len(), all_devices.len());
                // one augmentation seed per shard, drawn here: the draws do not depend on how
                // the threads interleave
                let seeds: Vec<u64> = parts.iter().map(|_| rng.random()).collect();
                let whole = batch.len() as f64;
                let (loss_fn, sparse) = (&self.loss_fn, &sparse);
                let (loss_value, grads) =
                    shard_gradients(&model, &self.device, &self.others, |m, d, s| {
                        let shard = &batch[parts[s].clone()];
                        if shard.is_empty() {
                            return None;
                        }
                        let mut shard_rng = StdRng::seed_from_u64(seeds[s]);
                        let augment = augment_draws(config, &mut shard_rng);
                        let (x, y) = data.train.augmented_batch(shard, stats, d, augment);
                        // weighted by the shard's share: the sum is the whole batch's mean loss
                        Some(
                            loss_fn
                                .forward(m.forward_with(x, sparse), y)
                                .mul_scalar(shard.len() as f64 / whole),
                        )
                    });
                let loss_value = finite_loss(loss_value, at)?;
                self.loss_sum += loss_value * whole;
                let mut reduced = all_reduce(&model, grads, &all_devices).into_iter();
                let grads = reduced.next().expect("one copy per device");
                model = step_or_diverge(optim, lr, model, grads, at)?;
                step_replicas(&mut self.others, reduced, lr, at)?;
                loss_value
            };
            *step += 1;
            progress.step(
                Unit::Epoch,
                epoch,
                done + 1,
                self.steps_per_epoch,
                loss_value,
            );
        }
        let steps = (*step - started.1).max(1);
        self.step_seconds = started.0.elapsed().as_secs_f64() / steps as f64;
        Ok(model)
    }

    fn evaluate(
        &mut self,
        model: &Classifier,
        optim: &SparseOptimizer,
        epoch: usize,
        step: u64,
    ) -> EpochMetrics {
        let (test_loss, test_accuracy) = evaluate(
            &model.valid(),
            &self.plan.flags(),
            self.data,
            &self.stats,
            &self.device.clone().inner(),
        );
        let report = optim.sparsity_report(model, self.config.threshold, false);
        // decided here, before the checkpoint that this line goes with: a resumed run takes the
        // plan for its next epoch from it, as the uninterrupted run did
        self.update_plan(model, step);
        EpochMetrics {
            epoch,
            step,
            lr: self.lr,
            train_loss: self.loss_sum / self.data.train.len() as f64,
            test_loss,
            test_accuracy,
            sparsity: report.decayed().sparsity(),
            sparsity_exact_zero: report.decayed().exact_zero_sparsity(),
            sparsity_all_params: report.all().sparsity(),
            layers: report.tensors.clone(),
            seconds: 0.0,
            step_seconds: self.step_seconds,
            sparse_layers: self.plan.record(),
        }
    }

    fn summarize(
        &self,
        history: &[EpochMetrics],
        sparsity: &SparsityReport,
        position: &RunPosition,
        wall_seconds: f64,
    ) -> ClassifierSummary {
        let last = history.last().expect("at least one epoch");
        let best = history
            .iter()
            .max_by(|a, b| {
                a.test_accuracy
                    .total_cmp(&b.test_accuracy)
                    .then(b.epoch.cmp(&a.epoch))
            })
            .expect("at least one epoch");
        let epochs = position.done();
        ClassifierSummary {
            final_test_accuracy: last.test_accuracy,
            best_test_accuracy: best.test_accuracy,
            best_epoch: best.epoch,
            final_test_loss: last.test_loss,
            sparsity: last.sparsity,
            sparsity_exact_zero: last.sparsity_exact_zero,
            sparsity_all_params: last.sparsity_all_params,
            nonzero_params: sparsity.all().nonzero(),
            total_params: sparsity.all().params,
            decayed_params: sparsity.decayed().params,
            epochs,
            wall_seconds,
            samples_per_second: (self.data.train.len() * epochs) as f64 / position.train_seconds,
            sparse_layers: last.sparse_layers.clone(),
        }
    }
}

const EVAL_BATCH: usize = 1000;

/// The run's augmentation of one batch, drawn from `rng`, or none when the run does not augment.
fn augment_draws<'a>(config: &TrainConfig, rng: &'a mut StdRng) -> Option<AugmentDraws<'a>> {
    config.augment.then_some(AugmentDraws {
        rng,
        max_rotation_degrees: config.rotate_degrees,
    })
}

/// Test loss and accuracy of `model` (no autodiff, no dropout), its layers run sparse where
/// `sparse` says (as training runs them).
fn evaluate(
    model: &Classifier,
    sparse: &[bool],
    data: &ImageSplits,
    stats: &[(f64, f64)],
    device: &Device,
) -> (f64, f64) {
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let (mut loss_sum, mut correct) = (0.0, 0usize);
    let n = data.test.len();
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(EVAL_BATCH) {
        let (x, y) = data.test.batch(chunk, stats, device);
        let logits = model.forward_with(x, sparse);
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
