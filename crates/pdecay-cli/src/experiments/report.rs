//! `pdecay report PATH`: `report.md` and its plots for a run folder or a sweep folder.
//!
//! Everything comes from the files runs write (config.toml, metrics.jsonl, summary.json or
//! diverged.json, the last checkpoint for the weight histograms), so a report can be made at
//! any time, also of a sweep that is still running.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use pdecay::factor::suppression_scale;
use pdecay::sparsity::TensorSparsity;
use pdecay_burn::{NamedValues, parameter_values};

use super::plots::{
    Curve, Figure, Heatmap, LayerBar, LayerSparsity, Magnitudes, ScoreVsSparsity, TrainingCurves,
    WeightDistribution, save,
};
use super::score::{RunPoint, Score};
use crate::config::optim::variant_words;
use crate::config::{OptimKind, TrainConfig, flag_name};
use crate::models::{Classifier, Gpt, ModelKind};
use crate::run::{
    Diverged, EpochMetrics, GptEval, Outcome, RunDir, RunSummary, Unit, write_atomic,
};

/// What a report's runs are: image classifiers (scored by test accuracy, per epoch) or GPTs
/// (scored by validation loss, per evaluation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// MLP or CNN on images.
    Classifier,
    /// The character-level GPT.
    Gpt,
}

impl Task {
    /// The task of a run.
    pub fn of(config: &TrainConfig) -> Self {
        if config.model == ModelKind::Gpt {
            Self::Gpt
        } else {
            Self::Classifier
        }
    }

    /// What runs are scored by.
    pub fn score(self) -> Score {
        match self {
            Self::Classifier => Score::TEST_ACCURACY,
            Self::Gpt => Score::VAL_LOSS,
        }
    }

    /// The unit of training time on the x axes.
    fn x_axis(self) -> &'static str {
        self.unit().word()
    }

    /// What the runs count.
    fn unit(self) -> Unit {
        match self {
            Self::Classifier => Unit::Epoch,
            Self::Gpt => Unit::Iteration,
        }
    }

    /// The held-out set.
    fn held_out(self) -> &'static str {
        match self {
            Self::Classifier => "test",
            Self::Gpt => "validation",
        }
    }

    /// A score as the report prints it.
    fn show(self, score: f64) -> String {
        match self {
            Self::Classifier => format!("{score:.2}%"),
            Self::Gpt => format!("{score:.4}"),
        }
    }
}

/// A finished run's score: test accuracy in percent, or the final validation loss.
pub fn final_score(summary: &RunSummary) -> f64 {
    match summary {
        RunSummary::Classifier(s) => 100.0 * s.final_test_accuracy,
        RunSummary::Gpt(s) => s.final_val_loss,
    }
}

/// The best score of any evaluation, and the epoch or iteration it came at.
fn best_score(summary: &RunSummary) -> (f64, usize) {
    match summary {
        RunSummary::Classifier(s) => (100.0 * s.best_test_accuracy, s.best_epoch),
        RunSummary::Gpt(s) => (s.best_val_loss, s.best_iter),
    }
}

/// Epochs or iterations done, and the training speed in words.
fn length_and_speed(summary: &RunSummary) -> (usize, String) {
    match summary {
        RunSummary::Classifier(s) => (s.epochs, format!("{:.0} samples/s", s.samples_per_second)),
        RunSummary::Gpt(s) => (s.iters, format!("{:.0} ms/iter", 1e3 * s.seconds_per_iter)),
    }
}

/// One evaluation, whichever trainer wrote it.
#[derive(Debug, Clone)]
pub struct Eval {
    /// Epochs or iterations done.
    pub at: f64,
    /// Held-out accuracy (0-1): test accuracy, or the GPT's next-character accuracy.
    pub accuracy: f64,
    /// Held-out loss.
    pub loss: f64,
    /// Training loss.
    pub train_loss: f64,
    /// Share of decayed weights below the threshold (0-1).
    pub sparsity: f64,
    /// Per tensor.
    pub layers: Vec<TensorSparsity>,
    /// Mean milliseconds per training step since the previous evaluation (in runs that
    /// recorded it).
    pub step_ms: Option<f64>,
}

impl From<EpochMetrics> for Eval {
    fn from(m: EpochMetrics) -> Self {
        Self {
            at: m.epoch as f64,
            accuracy: m.test_accuracy,
            loss: m.test_loss,
            train_loss: m.train_loss,
            sparsity: m.sparsity,
            layers: m.layers,
            step_ms: (m.step_seconds > 0.0).then_some(1e3 * m.step_seconds),
        }
    }
}

impl From<GptEval> for Eval {
    fn from(e: GptEval) -> Self {
        Self {
            at: e.iter as f64,
            accuracy: e.val_accuracy,
            loss: e.val_loss,
            train_loss: e.train_loss,
            sparsity: e.sparsity,
            layers: e.layers,
            step_ms: (e.step_seconds > 0.0).then_some(1e3 * e.step_seconds),
        }
    }
}

/// One run folder as the report sees it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    /// Its folder name.
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
    /// config.toml.
    pub config: TrainConfig,
    /// How it ended; `None` while it is still running (or was stopped).
    pub outcome: Option<Outcome>,
    /// metrics.jsonl: one line per epoch, or per GPT evaluation.
    pub evals: Vec<Eval>,
}

impl RunRecord {
    fn summary(&self) -> Option<&RunSummary> {
        self.outcome.as_ref().and_then(Outcome::summary)
    }

    /// The final score of a finished run.
    fn score(&self) -> Option<f64> {
        self.summary().map(final_score)
    }

    fn sparsity(&self) -> f64 {
        self.summary().map_or(0.0, RunSummary::sparsity)
    }

    fn read(dir: &Path) -> Result<Self> {
        let run = RunDir::new(dir);
        let config = run.read_config()?;
        // a report's figures read the checkpoint: a damaged one is named, not plotted
        run.verify_checkpoint()?;
        let outcome = run.outcome(config.model)?;
        let evals = if config.model == ModelKind::Gpt {
            let evals: Vec<GptEval> = run.read_metrics()?;
            evals.into_iter().map(Eval::from).collect()
        } else {
            let evals: Vec<EpochMetrics> = run.read_metrics()?;
            evals.into_iter().map(Eval::from).collect()
        };
        Ok(Self {
            name: run.name(),
            dir: dir.to_path_buf(),
            config,
            outcome,
            evals,
        })
    }
}

/// The runs under `path`: the run itself, or every run folder of a sweep (in sweep.csv's order
/// when there is one).
pub fn load_runs(path: &Path) -> Result<Vec<RunRecord>> {
    if !path.is_dir() {
        bail!(
            "{} is not a folder; give a run folder (from pdecay train) or a sweep folder (from pdecay sweep)",
            path.display()
        );
    }
    if RunDir::new(path).holds_run() {
        return Ok(vec![RunRecord::read(path)?]);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| RunDir::new(p).holds_run())
        .collect();
    dirs.sort();
    let csv_path = path.join("sweep.csv");
    if let Ok(mut csv) = csv::Reader::from_path(&csv_path) {
        let order: Vec<String> = csv
            .records()
            .flatten()
            .filter_map(|r| r.get(0).map(str::to_string))
            .collect();
        let position = |p: &PathBuf| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            order
                .iter()
                .position(|o| Some(o) == name.as_ref())
                .unwrap_or(usize::MAX)
        };
        dirs.sort_by_key(position);
    }
    if dirs.is_empty() {
        bail!(
            "{} holds no run: neither it nor a folder in it has a config.toml",
            path.display()
        );
    }
    let runs: Vec<RunRecord> = dirs
        .iter()
        .map(|d| RunRecord::read(d))
        .collect::<Result<_>>()?;
    if let Some(gpt) = runs.iter().find(|r| Task::of(&r.config) == Task::Gpt)
        && let Some(image) = runs
            .iter()
            .find(|r| Task::of(&r.config) == Task::Classifier)
    {
        bail!(
            "{} holds GPT runs ({}) and image classifier runs ({}): they are scored differently; report them from separate folders",
            path.display(),
            gpt.name,
            image.name
        );
    }
    Ok(runs)
}

/// What the runs of one report differ in besides the optimizer's settings: an lr sweep,
/// repeats with other seeds, or sparse training on against off (whose curves differ in speed
/// only). Each run's description then names it (other differences, such as
/// iterations or batch size, are left to the run's name and config.toml).
#[derive(Clone, Copy, Debug)]
struct Varying {
    lr: bool,
    seed: bool,
    sparse_training: bool,
}

impl Varying {
    fn of(runs: &[RunRecord]) -> Self {
        let first = &runs[0].config;
        Self {
            lr: runs.iter().any(|r| r.config.lr != first.lr),
            seed: runs.iter().any(|r| r.config.seed != first.seed),
            sparse_training: runs
                .iter()
                .any(|r| r.config.sparse_training != first.sparse_training),
        }
    }

    /// `, lr 5e-3, seed 1` for what varies (empty when nothing does).
    fn words(self, c: &TrainConfig) -> String {
        let mut words = String::new();
        if self.lr {
            words += &format!(", lr {:e}", c.lr);
        }
        if self.seed {
            words += &format!(", seed {}", c.seed);
        }
        if self.sparse_training {
            words += &format!(", sparse training {}", flag_name(c.sparse_training));
        }
        words
    }
}

/// The settings that matter for the run's optimizer, in words, then what `varying` names.
fn settings(c: &TrainConfig, varying: Varying) -> String {
    let words = c.optim.settings_words(c) + &varying.words(c);
    match words.strip_prefix(", ") {
        Some(rest) => rest.to_string(),
        None if words.is_empty() => "-".to_string(),
        None => words,
    }
}

fn label(run: &RunRecord, varying: Varying) -> String {
    format!(
        "{} ({})",
        run.config.optim.label(),
        settings(&run.config, varying)
    )
}

/// The runs the figures single out.
struct Selection<'a> {
    /// The best AdamW run.
    adamw: Option<&'a RunRecord>,
    /// The sparsest pWD run within the tolerance of AdamW (else the best pWD run, else the
    /// sparsest run).
    featured: &'a RunRecord,
}

/// The best of `runs` by `score` (finished runs only).
fn best_by_score<'a>(
    runs: impl Iterator<Item = &'a RunRecord>,
    score: Score,
) -> Option<&'a RunRecord> {
    runs.filter(|r| r.score().is_some()).reduce(|best, r| {
        if score.better(
            r.score().unwrap_or(f64::NAN),
            best.score().unwrap_or(f64::NAN),
        ) {
            r
        } else {
            best
        }
    })
}

fn sparsest<'a>(runs: impl Iterator<Item = &'a RunRecord>) -> Option<&'a RunRecord> {
    runs.max_by(|a, b| a.sparsity().total_cmp(&b.sparsity()))
}

fn select<'a>(finished: &[&'a RunRecord], score: Score) -> Option<Selection<'a>> {
    let adamw = best_by_score(
        finished
            .iter()
            .copied()
            .filter(|r| r.config.optim == OptimKind::Adamw),
        score,
    );
    let pwd = || {
        finished
            .iter()
            .copied()
            .filter(|r| r.config.optim.uses_pwd())
    };
    let within = |r: &&RunRecord| {
        adamw
            .and_then(RunRecord::score)
            .zip(r.score())
            .is_some_and(|(reference, value)| score.within(value, reference))
    };
    let featured = sparsest(pwd().filter(within))
        .or_else(|| best_by_score(pwd(), score))
        .or_else(|| sparsest(finished.iter().copied()))?;
    Some(Selection { adamw, featured })
}

/// The decayed weights of a run's last checkpoint.
fn decayed_weights(run: &RunRecord) -> Result<Vec<f32>> {
    // the last checkpoint's values, if there is one, for either kind of model
    fn saved<M: Module>(dir: &RunDir, model: M) -> Result<Option<Vec<NamedValues>>> {
        Ok(dir
            .load_model(model)
            .with_context(|| format!("loading the checkpoint of {}", dir.path().display()))?
            .map(|(m, _)| parameter_values(&m)))
    }
    let device = Device::flex();
    let dir = RunDir::new(&run.dir);
    let parameters = if Task::of(&run.config) == Task::Gpt {
        let vocab = dir.read_vocab()?;
        saved(&dir, Gpt::new(&run.config.gpt.model(vocab.len()), &device))?
    } else {
        let model = Classifier::new(
            run.config.model,
            run.config.image_shape,
            run.config.widths(),
            &device,
        );
        saved(&dir, model)?
    };
    let Some(parameters) = parameters else {
        bail!(
            "{} has no checkpoint to read weights from",
            run.dir.display()
        );
    };
    let decayed: Vec<&str> = run
        .evals
        .last()
        .map(|m| {
            m.layers
                .iter()
                .filter(|l| l.decayed)
                .map(|l| l.name.as_str())
                .collect()
        })
        .unwrap_or_default();
    Ok(parameters
        .into_iter()
        .filter(|p| decayed.contains(&p.name.as_str()))
        .flat_map(|p| p.values)
        .collect())
}

/// The longest legend entry that fits beside a plot panel in the report's font.
const LEGEND_CHARS: usize = 60;

/// A run in a plot's legend: its label when that fits, else its folder name (the runs table
/// maps it to the settings) with the optimizer unless the name has it (a sweep's
/// `optim=padam_...`), cut to fit with an ellipsis.
fn legend_label(run: &RunRecord, varying: Varying) -> String {
    let full = label(run, varying);
    if full.chars().count() <= LEGEND_CHARS {
        return full;
    }
    let named = if run.name.contains("optim=") {
        run.name.clone()
    } else {
        format!("{} ({})", run.name, run.config.optim.label())
    };
    if named.chars().count() <= LEGEND_CHARS {
        named
    } else {
        let cut: String = named.chars().take(LEGEND_CHARS - 1).collect();
        cut + "…"
    }
}

fn curve(run: &RunRecord, varying: Varying) -> Curve {
    let pick = |f: fn(&Eval) -> f64| run.evals.iter().map(|m| (m.at, f(m))).collect::<Vec<_>>();
    Curve {
        label: legend_label(run, varying),
        accuracy: pick(|m| 100.0 * m.accuracy),
        test_loss: pick(|m| m.loss),
        train_loss: pick(|m| m.train_loss),
        sparsity: pick(|m| 100.0 * m.sparsity),
        step_ms: run
            .evals
            .iter()
            .filter_map(|m| m.step_ms.map(|ms| (m.at, ms)))
            .collect(),
    }
}

/// The (p, lambda) grid of the pAdam runs.
struct PhaseGrid {
    /// Distinct p values, ascending.
    ps: Vec<f64>,
    /// Distinct lambda values, ascending.
    lambdas: Vec<f64>,
    /// `(lambda index, p index, mean value)` of the cells that have runs.
    cells: Vec<(usize, usize, f64)>,
}

/// The pAdam runs' (p, lambda) grid with the mean of `value` per cell.
fn phase_grid(runs: &[&RunRecord], value: fn(&RunSummary) -> f64) -> PhaseGrid {
    // plain pAdam only: a variant (p-scheduling, elastic net, ...) with the same (p, lambda) is
    // another method, not another seed to average with
    let padam: Vec<&RunRecord> = runs
        .iter()
        .copied()
        .filter(|r| r.config.optim == OptimKind::Padam && variant_words(&r.config).is_empty())
        .collect();
    let sorted = |f: fn(&TrainConfig) -> f64| {
        let mut v: Vec<f64> = padam.iter().map(|r| f(&r.config)).collect();
        v.sort_by(f64::total_cmp);
        v.dedup();
        v
    };
    let ps = sorted(|c| c.p);
    let lambdas = sorted(|c| c.lambda);
    let mut sums: BTreeMap<(usize, usize), (f64, usize)> = BTreeMap::new();
    for r in &padam {
        let i = lambdas.iter().position(|&l| l == r.config.lambda);
        let j = ps.iter().position(|&p| p == r.config.p);
        if let (Some(i), Some(j), Some(s)) = (i, j, r.summary()) {
            let cell = sums.entry((i, j)).or_insert((0.0, 0));
            cell.0 += value(s);
            cell.1 += 1;
        }
    }
    let cells = sums
        .into_iter()
        .map(|((i, j), (sum, n))| (i, j, sum / n as f64))
        .collect();
    PhaseGrid { ps, lambdas, cells }
}

/// The files a report wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    /// report.md.
    pub markdown: PathBuf,
    /// Every plot file (PNG and SVG).
    pub plots: Vec<PathBuf>,
}

/// Writes `PATH/report.md` and `PATH/plots/*.{png,svg}`.
pub fn write_report(path: &Path) -> Result<ReportFiles> {
    let runs = load_runs(path)?;
    let task = Task::of(&runs[0].config);
    let score = task.score();
    let mut report = Report::new(path)?;
    let finished: Vec<&RunRecord> = runs.iter().filter(|r| r.summary().is_some()).collect();
    let title = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    writeln!(report.md, "# pdecay report: {title}\n")?;
    let diverged = runs
        .iter()
        .filter(|r| matches!(r.outcome, Some(Outcome::Diverged(_))))
        .count();
    let first = &runs[0].config;
    let varying = Varying::of(&runs);
    writeln!(
        report.md,
        "{} run(s): {} finished, {} diverged, {} unfinished. {} Sparsity: share of decayed weights (rank >= 2) with |w| < {:e}.\n",
        runs.len(),
        finished.len(),
        diverged,
        runs.len() - finished.len() - diverged,
        training_words(first, varying.lr),
        first.threshold,
    )?;
    write_run_table(&mut report.md, &runs, task, varying)?;
    let Some(selection) = select(&finished, score) else {
        writeln!(report.md, "No run has finished yet: no plots.")?;
        return report.finish();
    };
    write_findings(&mut report.md, &runs, &finished, &selection, task, varying)?;
    writeln!(report.md, "## Plots\n")?;

    let data = FigureData {
        task,
        finished: &finished,
        selection: &selection,
        varying,
    };
    score_figure(&mut report, &data, first.threshold)?;
    phase_figures(&mut report, &data)?;
    let shown = shown_runs(&data);
    curves_figure(&mut report, &data, &shown)?;
    weights_figure(&mut report, &data, &shown)?;
    layers_figure(&mut report, &data)?;
    report.finish()
}

/// What the figures of a report share.
struct FigureData<'a> {
    task: Task,
    finished: &'a [&'a RunRecord],
    selection: &'a Selection<'a>,
    varying: Varying,
}

/// Plot 1: the score against sparsity, one point per finished run.
fn score_figure(report: &mut Report, c: &FigureData, threshold: f64) -> Result<()> {
    let score = c.task.score();
    let points = c
        .finished
        .iter()
        .map(|r| RunPoint {
            group: r.config.optim.label().to_string(),
            sparsity: 100.0 * r.sparsity(),
            score: r.score().unwrap_or(f64::NAN),
        })
        .collect();
    let figure = ScoreVsSparsity {
        score,
        points,
        reference: c.selection.adamw.and_then(RunRecord::score),
        threshold,
    };
    report.figure(
        &figure,
        "accuracy_vs_sparsity",
        &format!("{} against sparsity", score.title),
        "One point per run; the black line joins the runs no other run beats in both score and sparsity.",
    )?;

    Ok(())
}

/// Plots 2 and 3: the phase diagram of pAdam's score and sparsity over p and lambda, for a
/// grid over both (a single row is the table's list again, and plotters cannot lay out one
/// segment).
fn phase_figures(report: &mut Report, c: &FigureData) -> Result<()> {
    let scores = phase_grid(c.finished, final_score);
    if scores.ps.len() >= 2 && scores.lambdas.len() >= 2 {
        let sparsity = phase_grid(c.finished, |s| 100.0 * s.sparsity());
        let (score_decimals, score_title) = match c.task {
            Task::Classifier => (2, "pAdam: test accuracy (%) over p and lambda"),
            Task::Gpt => (3, "pAdam: validation loss over p and lambda"),
        };
        for (stem, title, cells, decimals) in [
            (
                "phase_accuracy",
                score_title,
                scores.cells.clone(),
                score_decimals,
            ),
            (
                "phase_sparsity",
                "pAdam: sparsity (%) over p and lambda",
                sparsity.cells,
                1,
            ),
        ] {
            let figure = Heatmap {
                title: title.to_string(),
                ps: scores.ps.clone(),
                lambdas: scores.lambdas.clone(),
                cells,
                unit: "",
                decimals,
            };
            report.figure(
                &figure,
                stem,
                title,
                "The phase diagram: one cell per (p, lambda), the mean over runs (e.g. seeds) with those values.",
            )?;
        }
    }

    Ok(())
}

/// The runs whose curves and weights are drawn: AdamW, the featured run and the sparsest pWD
/// run, each once.
fn shown_runs<'a>(c: &FigureData<'a>) -> Vec<&'a RunRecord> {
    let mut shown: Vec<&RunRecord> = c.selection.adamw.into_iter().collect();
    let sparsest_pwd = sparsest(
        c.finished
            .iter()
            .copied()
            .filter(|r| r.config.optim.uses_pwd()),
    );
    for run in std::iter::once(c.selection.featured).chain(sparsest_pwd) {
        if shown.iter().all(|r| r.name != run.name) {
            shown.push(run);
        }
    }
    shown
}

/// Plot 4: accuracy, loss and sparsity against epochs or iterations.
fn curves_figure(report: &mut Report, c: &FigureData, shown: &[&RunRecord]) -> Result<()> {
    let (task, varying) = (c.task, c.varying);
    let figure = TrainingCurves {
        curves: shown.iter().map(|r| curve(r, varying)).collect(),
        x_axis: task.x_axis(),
        held_out: task.held_out(),
    };
    report.figure(
        &figure,
        "curves",
        &format!("Accuracy, loss and sparsity against {}", task.x_axis()),
        &format!(
            "Runs: {}.",
            shown
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;

    Ok(())
}

/// Plot 5: the distribution of |w| of the shown runs' decayed weights.
fn weights_figure(report: &mut Report, c: &FigureData, shown: &[&RunRecord]) -> Result<()> {
    let mut magnitudes = Vec::new();
    for r in shown {
        magnitudes.push(Magnitudes::new(
            legend_label(r, c.varying),
            &decayed_weights(r)?,
        ));
    }
    let featured = &c.selection.featured.config;
    let scale = featured
        .optim
        .uses_pwd()
        .then(|| suppression_scale(featured.p, featured.lambda))
        .flatten()
        .map(|s| {
            (
                s,
                format!(
                    "(p lambda)^(1/(2-p)) = {s:.1e} (p {}, lambda {:e})",
                    featured.p, featured.lambda
                ),
            )
        });
    let figure = WeightDistribution {
        runs: magnitudes,
        scale,
    };
    report.figure(
        &figure,
        "weights",
        "Distribution of |w|",
        "Histogram of log10|w| over the decayed weights of the final checkpoint, and its cumulative share (exact zeros included at the left edge). The dashed line marks pWD's suppression scale: weights below it are driven to zero.",
    )?;

    Ok(())
}

/// Plot 6: the featured run's sparsity per tensor.
fn layers_figure(report: &mut Report, c: &FigureData) -> Result<()> {
    let (selection, task, varying) = (c.selection, c.task, c.varying);
    if let Some(last) = selection.featured.evals.last() {
        let figure = LayerSparsity {
            title: format!(
                "Sparsity per tensor: {}",
                legend_label(selection.featured, varying)
            ),
            layers: last
                .layers
                .iter()
                .map(|l| LayerBar {
                    name: l.name.clone(),
                    sparsity: 100.0 * l.below_threshold as f64 / l.params.max(1) as f64,
                    params: l.params,
                    decayed: l.decayed,
                })
                .collect(),
        };
        report.figure(
            &figure,
            "layers",
            "Sparsity per tensor",
            &format!(
                "Run {} after its last {}; the parameter count follows each name.",
                selection.featured.name,
                match task {
                    Task::Classifier => "epoch",
                    Task::Gpt => "evaluation",
                }
            ),
        )?;
    }

    Ok(())
}

/// Where a run diverged: the epoch and step, or the GPT's iteration.
fn diverged_words(task: Task, d: &Diverged) -> String {
    format!("diverged at {}", d.at_for(task == Task::Gpt))
}

/// The model, data and schedule of a run, in one sentence (the peak lr left to each run's
/// settings when the runs differ in it).
fn training_words(c: &TrainConfig, lr_varies: bool) -> String {
    let lr = if lr_varies {
        "the peak lr of each run's settings".to_string()
    } else {
        format!("lr {:e}", c.lr)
    };
    match Task::of(c) {
        Task::Classifier => format!(
            "Model {}, data {}, {} epochs, batch {}, {lr} ({} schedule, {} warm-up epochs).",
            crate::config::flag_name(c.model),
            c.data
                .as_deref()
                .unwrap_or("the default Fashion-MNIST location"),
            c.epochs,
            c.batch_size,
            crate::config::flag_name(c.schedule),
            c.warmup_epochs,
        ),
        Task::Gpt => {
            let g = &c.gpt;
            format!(
                "GPT of {} layers, {} heads, width {}, block {}, dropout {}; data {}; {} iterations of batch {}, {lr} ({} warm-up iterations, cosine to {} of it); scored by the validation loss over {} batches.",
                g.layers,
                g.heads,
                g.width,
                g.block_size,
                g.dropout,
                c.data.as_deref().unwrap_or("(unset)"),
                g.iters,
                g.batch_size,
                g.warmup_iters,
                g.min_lr_ratio,
                g.eval_batches,
            )
        }
    }
}

fn write_run_table(
    md: &mut String,
    runs: &[RunRecord],
    task: Task,
    varying: Varying,
) -> Result<()> {
    let x = task.x_axis();
    writeln!(md, "## Runs\n")?;
    writeln!(
        md,
        "| run | optimizer | settings | {} | best ({x}) | sparsity | non-zero / total params | {x}s | speed |",
        task.score().axis
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for r in runs {
        let head = format!(
            "| {} | {} | {} |",
            r.name,
            r.config.optim.label(),
            settings(&r.config, varying)
        );
        match &r.outcome {
            Some(Outcome::Finished(s)) => {
                let (best, best_at) = best_score(s);
                let (length, speed) = length_and_speed(s);
                writeln!(
                    md,
                    "{head} {} | {} ({best_at}) | {:.1}% | {} / {} | {length} | {speed} |",
                    task.show(final_score(s)),
                    task.show(best),
                    100.0 * s.sparsity(),
                    s.nonzero_params(),
                    s.total_params(),
                )?
            }
            Some(Outcome::Diverged(d)) => {
                writeln!(md, "{head} {} | | | | | |", diverged_words(task, d))?
            }
            None => writeln!(
                md,
                "{head} unfinished ({} evaluations so far) | | | | | |",
                r.evals.len()
            )?,
        }
    }
    writeln!(md)?;
    Ok(())
}

fn write_findings(
    md: &mut String,
    runs: &[RunRecord],
    finished: &[&RunRecord],
    selection: &Selection,
    task: Task,
    varying: Varying,
) -> Result<()> {
    writeln!(md, "## Findings\n")?;
    let score = task.score();
    let of = |r: &RunRecord| r.score().unwrap_or(f64::NAN);
    let tolerance = format!(
        "{} of AdamW's {}",
        score.tolerance_words,
        score.title.to_lowercase()
    );
    if let Some(adamw) = selection.adamw {
        writeln!(
            md,
            "- AdamW ({}): {} {}, {:.1}% sparse.",
            settings(&adamw.config, varying),
            task.show(of(adamw)),
            score.title.to_lowercase(),
            100.0 * adamw.sparsity()
        )?;
        let within: Vec<&RunRecord> = finished
            .iter()
            .copied()
            .filter(|r| r.config.optim != OptimKind::Adamw && score.within(of(r), of(adamw)))
            .collect();
        match sparsest(within.iter().copied()) {
            Some(best) => writeln!(
                md,
                "- Best sparsity within {tolerance}: {:.1}% ({}: {}, {} of {} parameters non-zero).",
                100.0 * best.sparsity(),
                label(best, varying),
                task.show(of(best)),
                best.summary().map_or(0, RunSummary::nonzero_params),
                best.summary().map_or(0, RunSummary::total_params)
            )?,
            None => writeln!(md, "- No run came within {tolerance}.")?,
        }
        for optim in OptimKind::ALL.into_iter().filter(|o| o.sparsifies()) {
            let best = sparsest(within.iter().copied().filter(|r| r.config.optim == optim));
            let any = finished.iter().any(|r| r.config.optim == optim);
            if let Some(best) = best {
                writeln!(
                    md,
                    "  - {}: at best {:.1}% sparse within {} ({}).",
                    optim.label(),
                    100.0 * best.sparsity(),
                    score.tolerance_words,
                    settings(&best.config, varying)
                )?;
            } else if any {
                writeln!(md, "  - {}: no run within {tolerance}.", optim.label())?;
            }
        }
    }
    for r in runs {
        if let Some(Outcome::Diverged(d)) = &r.outcome {
            writeln!(
                md,
                "- {} {}: {}.",
                label(r, varying),
                diverged_words(task, d),
                d.reason
            )?;
        }
    }
    let mut by_p: BTreeMap<String, Vec<&RunRecord>> = BTreeMap::new();
    for r in finished
        .iter()
        .filter(|r| r.config.optim == OptimKind::Padam)
    {
        by_p.entry(format!("{:06.3}", r.config.p))
            .or_default()
            .push(r);
    }
    if !by_p.is_empty() {
        writeln!(
            md,
            "- pAdam, by p ({} / sparsity at each lambda):",
            score.title.to_lowercase()
        )?;
        for runs in by_p.values_mut() {
            runs.sort_by(|x, y| {
                (x.config.lambda.total_cmp(&y.config.lambda))
                    .then(x.config.lr.total_cmp(&y.config.lr))
                    .then(x.config.seed.cmp(&y.config.seed))
            });
            let cells: Vec<String> = runs
                .iter()
                .map(|r| {
                    format!(
                        "lambda {:e}{}{}: {} / {:.1}%",
                        r.config.lambda,
                        variant_words(&r.config),
                        varying.words(&r.config),
                        task.show(of(r)),
                        100.0 * r.sparsity()
                    )
                })
                .collect();
            writeln!(md, "  - p {}: {}", runs[0].config.p, cells.join("; "))?;
        }
    }
    writeln!(md)?;
    Ok(())
}

/// A report being written: report.md's text, and its figures, each saved as PNG and SVG in
/// `plots/`.
struct Report {
    path: PathBuf,
    md: String,
    files: Vec<PathBuf>,
}

impl Report {
    fn new(path: &Path) -> Result<Self> {
        let plots = path.join("plots");
        std::fs::create_dir_all(&plots)
            .with_context(|| format!("cannot create {}", plots.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            md: String::new(),
            files: Vec::new(),
        })
    }

    /// Saves `figure` as `plots/STEM.{png,svg}` and adds its section.
    fn figure(
        &mut self,
        figure: &impl Figure,
        stem: &str,
        title: &str,
        caption: &str,
    ) -> Result<()> {
        let dir = self.path.join("plots");
        save(figure, &dir, stem)?;
        self.files
            .extend(["png", "svg"].map(|ext| dir.join(format!("{stem}.{ext}"))));
        writeln!(
            self.md,
            "### {title}\n\n![{title}](plots/{stem}.png)\n\n{caption} ([SVG](plots/{stem}.svg))\n"
        )?;
        Ok(())
    }

    /// Writes `PATH/report.md`.
    fn finish(self) -> Result<ReportFiles> {
        let markdown = self.path.join("report.md");
        write_atomic(&markdown, self.md.as_bytes())?;
        Ok(ReportFiles {
            markdown,
            plots: self.files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOTHING: Varying = Varying {
        lr: false,
        seed: false,
        sparse_training: false,
    };

    #[test]
    fn settings_name_the_lr_and_seed_only_when_the_runs_differ_in_them() {
        let adam = TrainConfig {
            optim: OptimKind::Adam,
            ..TrainConfig::default()
        };
        assert_eq!(settings(&adam, NOTHING), "-");
        let lr_only = Varying {
            lr: true,
            ..NOTHING
        };
        assert_eq!(settings(&adam, lr_only), "lr 1e-3");
        let padam = TrainConfig {
            optim: OptimKind::Padam,
            p: 0.8,
            lambda: 5e-2,
            lr: 5e-3,
            seed: 2,
            ..TrainConfig::default()
        };
        assert_eq!(settings(&padam, NOTHING), "p 0.8, lambda 5e-2");
        for (target, words) in [
            (0.8, "target 80%"),
            (0.7, "target 70%"),
            (0.855, "target 85.5%"),
        ] {
            let gmp = TrainConfig {
                optim: OptimKind::Gmp,
                gmp_final_sparsity: target,
                ..TrainConfig::default()
            };
            assert_eq!(settings(&gmp, NOTHING), words);
        }
        let both = Varying {
            lr: true,
            seed: true,
            ..NOTHING
        };
        assert_eq!(
            settings(&padam, both),
            "p 0.8, lambda 5e-2, lr 5e-3, seed 2"
        );
        let modes = Varying {
            sparse_training: true,
            ..NOTHING
        };
        let off = TrainConfig {
            sparse_training: crate::config::SparseTraining::Off,
            ..padam
        };
        assert_eq!(
            settings(&off, modes),
            "p 0.8, lambda 5e-2, sparse training off"
        );
    }

    #[test]
    fn varying_names_only_what_differs() {
        let run = |lr: f64, seed: u64| RunRecord {
            name: "r".to_string(),
            dir: PathBuf::from("r"),
            config: TrainConfig {
                lr,
                seed,
                ..TrainConfig::default()
            },
            evals: Vec::new(),
            outcome: None,
        };
        let one = Varying::of(&[run(1e-3, 0)]);
        assert!(!one.lr && !one.seed);
        let seeds = Varying::of(&[run(1e-3, 0), run(1e-3, 1)]);
        assert!(!seeds.lr && seeds.seed);
        let lrs = Varying::of(&[run(1e-3, 0), run(5e-3, 0)]);
        assert!(lrs.lr && !lrs.seed);
    }

    #[test]
    fn a_legend_entry_too_long_for_the_panel_falls_back_to_the_run_name() {
        let run = |name: &str, config: TrainConfig| RunRecord {
            name: name.to_string(),
            dir: PathBuf::from(name),
            config,
            evals: Vec::new(),
            outcome: None,
        };
        let short = run(
            "padam",
            TrainConfig {
                optim: OptimKind::Padam,
                ..TrainConfig::default()
            },
        );
        assert_eq!(legend_label(&short, NOTHING), "pAdam (p 0.8, lambda 1e-3)");
        let config = TrainConfig {
            optim: OptimKind::Padam,
            p_start: Some(2.0),
            lambda_release: Some(0.25),
            ..TrainConfig::default()
        };
        assert!(label(&run("x", config.clone()), NOTHING).chars().count() > LEGEND_CHARS);
        let long = run("padam-1e-3-r25", config.clone());
        assert_eq!(legend_label(&long, NOTHING), "padam-1e-3-r25 (pAdam)");
        // a sweep's name says the optimizer already, and a name too long is cut to fit
        let swept = "optim=padam_lambda=0.001_lr=0.001_p=0.8_p_start=2_lambda_release=0.25";
        let cut = legend_label(&run(swept, config), NOTHING);
        assert_eq!(cut.chars().count(), LEGEND_CHARS);
        assert!(cut.starts_with("optim=padam_lambda=0.001") && cut.ends_with('…'));
    }
}
