//! The loop skeleton ([`run_loop`]) and what every trainer shares: where a run writes
//! ([`RunOptions`]), how it reports ([`Progress`]), a checked optimizer step, the per-unit seed.

use std::time::Instant;

use anyhow::{Result, bail, ensure};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::Device;
use pdecay::sparsity::SparsityReport;
use pdecay_burn::{DecaySummary, SparseOptimizer, StepError};
use serde::Serialize;

use crate::models::MemoryNeed;
use crate::run::{Diverged, Evaluation, RunDir, RunPosition, StepAt, Unit};

/// Where a run writes, how far it goes and where it computes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The run folder; `None` keeps everything in memory (the demo).
    pub out: Option<RunDir>,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Stop (resumably) once this many epochs or iterations are done.
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

/// Where a run reports progress.
pub trait Progress {
    /// Before the first step: which tensors decay.
    fn start(&mut self, _decay: &DecaySummary) {}

    /// After each training step: `done` of the `total` steps of the period that ends at
    /// `unit` number `end` (an epoch, or the iteration of the next evaluation), the batch's loss.
    fn step(&mut self, _unit: Unit, _end: usize, _done: usize, _total: usize, _loss: f64) {}

    /// After each evaluation, at `done` of `total` epochs or iterations; `line` is its
    /// one-line account.
    fn evaluation(&mut self, done: usize, total: usize, line: &str);
}

/// Prints one plain line per evaluation (and, unless [`PlainProgress::quiet`], which tensors
/// decay before the first step).
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainProgress {
    quiet_start: bool,
}

impl PlainProgress {
    /// Without the list of decayed tensors (a sweep: the same for every run).
    pub fn quiet() -> Self {
        Self { quiet_start: true }
    }
}

impl Progress for PlainProgress {
    fn start(&mut self, decay: &DecaySummary) {
        if !self.quiet_start {
            println!("{decay}");
        }
    }

    fn evaluation(&mut self, _done: usize, _total: usize, line: &str) {
        println!("{line}");
    }
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn evaluation(&mut self, _: usize, _: usize, _: &str) {}
}

/// One optimizer step; a NaN or Inf gradient or weight is the run's [`Diverged`] outcome (at
/// `at`), any other failure an error.
pub fn step_or_diverge<M: Module>(
    optim: &mut SparseOptimizer,
    lr: f64,
    model: M,
    grads: GradientsParams,
    at: StepAt,
) -> Result<M> {
    match optim.step(lr, model, grads) {
        Ok(model) => Ok(model),
        Err(e @ (StepError::NonFiniteGradient { .. } | StepError::NonFiniteWeight { .. })) => {
            Err(Diverged::new(at, e.to_string()).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("optimizer step failed at {at}"))),
    }
}

/// A [`Diverged`] error told what of the run is on disk: the last checkpoint, after `done`
/// units, or none yet (`saved`: the run writes a folder). Other errors pass unchanged.
fn say_what_is_kept(error: anyhow::Error, saved: bool, done: usize, unit: Unit) -> anyhow::Error {
    match error.downcast::<Diverged>() {
        Ok(mut diverged) if saved => {
            diverged.kept = Some(if done == 0 {
                "no checkpoint had been written yet".to_string()
            } else {
                format!("the checkpoint after {done} {}s is kept", unit.word())
            });
            diverged.into()
        }
        Ok(diverged) => diverged.into(),
        Err(other) => other,
    }
}

/// Refuses a run whose estimated training memory exceeds this machine's (Linux: MemTotal in
/// /proc/meminfo; elsewhere unchecked): where allocating it would abort the process, it is an
/// error naming the estimate and the sizes to lower (`sizes`).
pub(crate) fn check_memory(need: MemoryNeed, sizes: &str) -> Result<()> {
    let Some(total) = machine_memory() else {
        return Ok(());
    };
    let gib = |bytes: u128| bytes as f64 / (1u64 << 30) as f64;
    ensure!(
        need.bytes <= total,
        "this run needs about {:.1} GiB to train ({} parameters and one batch's activations), more than this machine's {:.1} GiB: lower {sizes}",
        gib(need.bytes),
        need.params,
        gib(total)
    );
    Ok(())
}

/// The machine's memory in bytes, if the system says.
fn machine_memory() -> Option<u128> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The batch's loss value, or the run's [`Diverged`] outcome at `at` if it is NaN or infinite.
pub(crate) fn finite_loss(loss: f64, at: StepAt) -> Result<f64> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(Diverged::new(at, format!("the training loss became {loss}")).into())
    }
}

/// The seed of epoch or iteration `unit` (its shuffle, windows and dropout): derived from the
/// run's seed alone, so unit k never depends on what happened before it (a resumed run replays
/// it exactly).
pub(crate) fn unit_seed(seed: u64, unit: usize) -> u64 {
    seed.wrapping_mul(1_000_003).wrapping_add(unit as u64)
}

/// What the loop skeleton asks of a model family.
pub(crate) trait Trainer {
    /// The network.
    type Model: Module;
    /// One line of metrics.jsonl.
    type Eval: Evaluation;
    /// summary.json.
    type Summary: Serialize;
    /// What the run counts.
    const UNIT: Unit;

    /// Epochs or iterations of the whole run.
    fn length(&self) -> usize;

    /// The last unit of the period that starts after `done` units: the classifier's next
    /// epoch, the GPT's iterations up to its next evaluation (at most `last`).
    fn period_end(&self, done: usize, last: usize) -> usize;

    /// Once the model and optimizer are built or restored, before the first step; `last` is
    /// the last evaluation a resumed run kept.
    fn begin(
        &mut self,
        _model: &Self::Model,
        _optim: &SparseOptimizer,
        _last: Option<&Self::Eval>,
    ) {
    }

    /// Trains units `done + 1 ..= end`, counting optimizer steps in `step`.
    fn train_period(
        &mut self,
        model: Self::Model,
        optim: &mut SparseOptimizer,
        done: usize,
        end: usize,
        step: &mut u64,
        progress: &mut dyn Progress,
    ) -> Result<Self::Model>;

    /// The evaluation after `done` units (`step` steps); the loop stamps its time.
    fn evaluate(
        &mut self,
        model: &Self::Model,
        optim: &SparseOptimizer,
        done: usize,
        step: u64,
    ) -> Self::Eval;

    /// The run's summary from its evaluations and the final model's sparsity.
    fn summarize(
        &self,
        history: &[Self::Eval],
        sparsity: &SparsityReport,
        position: &RunPosition,
        wall_seconds: f64,
    ) -> Self::Summary;
}

/// Trains `model` with `optim` as `trainer` says, writing the run folder of `options` if given:
/// a fresh folder gets config.toml (and whatever `create` adds, again on a resume before the
/// first checkpoint), a resumed one restores its last checkpoint and keeps the metrics lines
/// up to it.
pub(crate) fn run_loop<T: Trainer>(
    trainer: &mut T,
    config: &crate::config::TrainConfig,
    options: &RunOptions,
    (mut model, mut optim): (T::Model, SparseOptimizer),
    create: impl FnOnce(&RunDir) -> Result<()>,
    progress: &mut dyn Progress,
) -> Result<T::Summary> {
    let mut position = RunPosition::start(T::UNIT);
    let mut history: Vec<T::Eval> = Vec::new();
    let mut metrics = None;
    let decay = optim.decay_summary(&model);
    crate::config::optim::check_layer_lambda(config, &decay)?;
    let _lock = options.out.as_ref().map(RunDir::lock).transpose()?;
    if let Some(run) = &options.out {
        if options.resume {
            match run.load_checkpoint(model.clone(), optim.clone())? {
                Some(restored) => (model, optim, position) = restored,
                // killed before its first checkpoint, maybe before `create` wrote its files
                None => create(run)?,
            }
            let (kept, file) = run.resume_metrics(position.done())?;
            history = kept;
            metrics = Some(file);
        } else {
            metrics = Some(run.create(config, T::UNIT)?);
            create(run)?;
        }
    }
    progress.start(&decay);
    trainer.begin(&model, &optim, history.last());
    let clock = Instant::now();
    let earlier_wall = position.wall_seconds;
    let length = trainer.length();
    let last = options.stop_after.unwrap_or(length).min(length);
    while position.done() < last {
        let done = position.done();
        let end = trainer.period_end(done, last);
        let period = Instant::now();
        model = trainer
            .train_period(model, &mut optim, done, end, &mut position.step, progress)
            .map_err(|e| say_what_is_kept(e, options.out.is_some(), done, T::UNIT))?;
        position.train_seconds += period.elapsed().as_secs_f64();
        if T::UNIT == Unit::Epoch {
            position.epoch = Some(end);
        } else {
            position.epoch = None;
        }
        let mut eval = trainer.evaluate(&model, &optim, end, position.step);
        position.wall_seconds = earlier_wall + clock.elapsed().as_secs_f64();
        eval.set_seconds(position.wall_seconds);
        if let (Some(run), Some(file)) = (&options.out, metrics.as_mut()) {
            run.record(file, &eval, &model, &optim, &position)?;
        }
        progress.evaluation(end, length, &eval.line(length));
        history.push(eval);
    }
    if history.is_empty() {
        bail!("no {} was trained (--stop-after 0?)", T::UNIT.word());
    }
    let sparsity = optim.sparsity_report(&model, config.threshold, false);
    let wall = earlier_wall + clock.elapsed().as_secs_f64();
    let summary = trainer.summarize(&history, &sparsity, &position, wall);
    // summary.json marks a finished run (a sweep skips it): not written when stopped early
    if let (Some(run), true) = (&options.out, position.done() == length) {
        run.write_summary(&summary)?;
    }
    Ok(summary)
}
