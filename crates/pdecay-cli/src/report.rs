//! `pdecay report PATH`: `report.md` and its plots for a run folder or a sweep folder.
//!
//! Everything comes from the files runs write (config.toml, metrics.jsonl, summary.json or
//! diverged.json, the last checkpoint for the weight histograms), so a report can be made at
//! any time, also of a sweep that is still running.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;
use pdecay::factor::suppression_scale;
use pdecay_burn::parameter_values;

use crate::checkpoint;
use crate::model_file::IMAGE_SIDE;
use crate::models::Classifier;
use crate::plots::{
    AccuracyVsSparsity, Curve, Heatmap, LayerBar, LayerSparsity, Magnitudes, RunPoint,
    TrainingCurves, WeightDistribution, save,
};
use crate::sweep::{Outcome, read_diverged, read_summary};
use crate::train::{EpochMetrics, OptimKind, Summary, TrainConfig, write_atomic};

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
    /// metrics.jsonl.
    pub metrics: Vec<EpochMetrics>,
}

impl RunRecord {
    fn summary(&self) -> Option<&Summary> {
        self.outcome.as_ref().and_then(Outcome::summary)
    }

    fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join("config.toml");
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", config_path.display()))?;
        let config: TrainConfig = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid run config", config_path.display()))?;
        ensure!(
            config.model.is_classifier(),
            "{} is a GPT run: pdecay report draws the image classifiers' runs (GPT reports are not built yet)",
            dir.display()
        );
        let outcome = if dir.join("summary.json").exists() {
            Some(Outcome::Finished(read_summary(dir)?))
        } else if dir.join("diverged.json").exists() {
            Some(Outcome::Diverged(read_diverged(dir)?))
        } else {
            None
        };
        let metrics_path = dir.join("metrics.jsonl");
        let metrics = match std::fs::read_to_string(&metrics_path) {
            // a run still training may be halfway through appending its last line
            Ok(text) => text
                .split_inclusive('\n')
                .filter(|line| line.ends_with('\n'))
                .enumerate()
                .map(|(i, line)| {
                    serde_json::from_str(line).with_context(|| {
                        format!("{} line {} is corrupt", metrics_path.display(), i + 1)
                    })
                })
                .collect::<Result<_>>()?,
            Err(_) => Vec::new(),
        };
        Ok(Self {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
            dir: dir.to_path_buf(),
            config,
            outcome,
            metrics,
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
    if path.join("config.toml").exists() {
        return Ok(vec![RunRecord::read(path)?]);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("listing {}", path.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("config.toml").exists())
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
    dirs.iter().map(|d| RunRecord::read(d)).collect()
}

/// The optimizer as the report names it.
pub fn optim_label(optim: OptimKind) -> &'static str {
    match optim {
        OptimKind::Padam => "pAdam",
        OptimKind::Psgd => "pSGD",
        OptimKind::Adamw => "AdamW",
        OptimKind::Adam => "Adam",
        OptimKind::AdamL1 => "Adam + L1",
        OptimKind::NaiveLp => "naive Lp",
        OptimKind::Gmp => "magnitude pruning",
    }
}

fn uses_pwd(optim: OptimKind) -> bool {
    matches!(optim, OptimKind::Padam | OptimKind::Psgd)
}

/// The settings that matter for the run's optimizer, in words.
fn settings(c: &TrainConfig) -> String {
    match c.optim {
        OptimKind::Padam | OptimKind::Psgd | OptimKind::NaiveLp => {
            format!("p {}, lambda {:e}", c.p, c.lambda)
        }
        OptimKind::Adamw => format!("weight_decay {:e}", c.lambda),
        OptimKind::AdamL1 => format!("lambda {:e}", c.lambda),
        OptimKind::Adam => "-".to_string(),
        OptimKind::Gmp => format!("target {:.0}%", 100.0 * c.gmp_final_sparsity),
    }
}

fn label(run: &RunRecord) -> String {
    format!(
        "{} ({})",
        optim_label(run.config.optim),
        settings(&run.config)
    )
}

/// The runs the figures single out.
struct Selection<'a> {
    /// The most accurate AdamW run.
    adamw: Option<&'a RunRecord>,
    /// The sparsest pWD run within 0.5 pp of AdamW (else the most accurate pWD run, else the
    /// sparsest run).
    featured: &'a RunRecord,
}

fn select<'a>(finished: &[&'a RunRecord]) -> Option<Selection<'a>> {
    let acc = |r: &RunRecord| r.summary().map_or(0.0, |s| s.final_test_accuracy);
    let sparsity = |r: &RunRecord| r.summary().map_or(0.0, |s| s.sparsity);
    let adamw = finished
        .iter()
        .copied()
        .filter(|r| r.config.optim == OptimKind::Adamw)
        .max_by(|a, b| acc(a).total_cmp(&acc(b)));
    let pwd: Vec<&RunRecord> = finished
        .iter()
        .copied()
        .filter(|r| uses_pwd(r.config.optim))
        .collect();
    let within = |r: &&RunRecord| adamw.is_some_and(|a| acc(r) >= acc(a) - 0.005);
    let featured = pwd
        .iter()
        .copied()
        .filter(within)
        .max_by(|a, b| sparsity(a).total_cmp(&sparsity(b)))
        .or_else(|| pwd.iter().copied().max_by(|a, b| acc(a).total_cmp(&acc(b))))
        .or_else(|| {
            finished
                .iter()
                .copied()
                .max_by(|a, b| sparsity(a).total_cmp(&sparsity(b)))
        })?;
    Some(Selection { adamw, featured })
}

/// The decayed weights of a run's last checkpoint.
fn decayed_weights(run: &RunRecord) -> Result<Vec<f32>> {
    let model = Classifier::new(
        run.config.model,
        IMAGE_SIDE,
        run.config.widths(),
        &Device::default(),
    );
    let Some((model, _)) = checkpoint::load_model(&run.dir, model)
        .with_context(|| format!("loading the checkpoint of {}", run.dir.display()))?
    else {
        bail!(
            "{} has no checkpoint to read weights from",
            run.dir.display()
        );
    };
    let decayed: Vec<&str> = run
        .metrics
        .last()
        .map(|m| {
            m.layers
                .iter()
                .filter(|l| l.decayed)
                .map(|l| l.name.as_str())
                .collect()
        })
        .unwrap_or_default();
    Ok(parameter_values(&model)
        .into_iter()
        .filter(|p| decayed.contains(&p.name.as_str()))
        .flat_map(|p| p.values)
        .collect())
}

fn curve(run: &RunRecord) -> Curve {
    let pick = |f: fn(&EpochMetrics) -> f64| {
        run.metrics
            .iter()
            .map(|m| (m.epoch as f64, f(m)))
            .collect::<Vec<_>>()
    };
    Curve {
        label: label(run),
        accuracy: pick(|m| 100.0 * m.test_accuracy),
        test_loss: pick(|m| m.test_loss),
        train_loss: pick(|m| m.train_loss),
        sparsity: pick(|m| 100.0 * m.sparsity),
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
fn phase_grid(runs: &[&RunRecord], value: fn(&Summary) -> f64) -> PhaseGrid {
    let padam: Vec<&RunRecord> = runs
        .iter()
        .copied()
        .filter(|r| r.config.optim == OptimKind::Padam)
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
    let plot_dir = path.join("plots");
    std::fs::create_dir_all(&plot_dir)
        .with_context(|| format!("cannot create {}", plot_dir.display()))?;
    let finished: Vec<&RunRecord> = runs.iter().filter(|r| r.summary().is_some()).collect();
    let mut md = String::new();
    let mut stems: Vec<&str> = Vec::new();
    let title = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    writeln!(md, "# pdecay report: {title}\n")?;
    let diverged = runs
        .iter()
        .filter(|r| matches!(r.outcome, Some(Outcome::Diverged(_))))
        .count();
    let first = &runs[0].config;
    writeln!(
        md,
        "{} run(s): {} finished, {} diverged, {} unfinished. Model {:?}, data {}, {} epochs, batch {}, lr {:e} ({:?} schedule, {} warm-up epochs). Sparsity: share of decayed weights (rank >= 2) with |w| < {:e}.\n",
        runs.len(),
        finished.len(),
        diverged,
        runs.len() - finished.len() - diverged,
        first.model,
        first
            .data
            .as_deref()
            .unwrap_or("the default Fashion-MNIST location"),
        first.epochs,
        first.batch_size,
        first.lr,
        first.schedule,
        first.warmup_epochs,
        first.threshold,
    )?;
    write_run_table(&mut md, &runs)?;
    let Some(selection) = select(&finished) else {
        writeln!(md, "No run has finished yet: no plots.")?;
        let markdown = path.join("report.md");
        write_atomic(&markdown, md.as_bytes())?;
        return Ok(ReportFiles {
            markdown,
            plots: Vec::new(),
        });
    };
    write_findings(&mut md, &runs, &finished, &selection)?;
    writeln!(md, "## Plots\n")?;

    // 1. accuracy against sparsity
    let points = finished
        .iter()
        .map(|r| {
            let s = r.summary().expect("finished");
            RunPoint {
                group: optim_label(r.config.optim).to_string(),
                sparsity: 100.0 * s.sparsity,
                accuracy: 100.0 * s.final_test_accuracy,
            }
        })
        .collect();
    let reference = selection
        .adamw
        .and_then(|a| a.summary())
        .map(|s| 100.0 * s.final_test_accuracy);
    let figure = AccuracyVsSparsity {
        points,
        reference,
        threshold: first.threshold,
    };
    save(&figure, &plot_dir, "accuracy_vs_sparsity")?;
    stems.push("accuracy_vs_sparsity");
    figure_md(
        &mut md,
        "accuracy_vs_sparsity",
        "Test accuracy against sparsity",
        "One point per run; the black line joins the runs no other run beats in both accuracy and sparsity.",
    )?;

    // 2. the phase diagram
    let accuracy = phase_grid(&finished, |s| 100.0 * s.final_test_accuracy);
    if accuracy.cells.len() >= 2 {
        let sparsity = phase_grid(&finished, |s| 100.0 * s.sparsity);
        for (stem, title, cells, decimals) in [
            (
                "phase_accuracy",
                "pAdam: test accuracy (%) over p and lambda",
                accuracy.cells.clone(),
                2,
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
                ps: accuracy.ps.clone(),
                lambdas: accuracy.lambdas.clone(),
                cells,
                unit: "",
                decimals,
            };
            save(&figure, &plot_dir, stem)?;
            stems.push(stem);
            figure_md(
                &mut md,
                stem,
                title,
                "The phase diagram: one cell per (p, lambda), the mean over runs (e.g. seeds) with those values.",
            )?;
        }
    }

    // 3. training curves
    let mut shown: Vec<&RunRecord> = selection.adamw.into_iter().collect();
    if shown.iter().all(|r| r.name != selection.featured.name) {
        shown.push(selection.featured);
    }
    let figure = TrainingCurves {
        curves: shown.iter().map(|r| curve(r)).collect(),
    };
    save(&figure, &plot_dir, "curves")?;
    stems.push("curves");
    figure_md(
        &mut md,
        "curves",
        "Accuracy, loss and sparsity against epoch",
        &format!(
            "Runs: {}.",
            shown
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;

    // 4. distribution of |w|
    let mut magnitudes = Vec::new();
    for r in &shown {
        magnitudes.push(Magnitudes::new(label(r), &decayed_weights(r)?));
    }
    let featured = &selection.featured.config;
    let scale = uses_pwd(featured.optim)
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
    save(&figure, &plot_dir, "weights")?;
    stems.push("weights");
    figure_md(
        &mut md,
        "weights",
        "Distribution of |w|",
        "Histogram of log10|w| over the decayed weights of the final checkpoint, and its cumulative share (exact zeros included at the left edge). The dashed line marks pWD's suppression scale: weights below it are driven to zero.",
    )?;

    // 5. per-layer sparsity
    if let Some(last) = selection.featured.metrics.last() {
        let figure = LayerSparsity {
            title: format!("Sparsity per tensor: {}", label(selection.featured)),
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
        save(&figure, &plot_dir, "layers")?;
        stems.push("layers");
        figure_md(
            &mut md,
            "layers",
            "Sparsity per tensor",
            &format!(
                "Run {} after its last epoch; the parameter count follows each name.",
                selection.featured.name
            ),
        )?;
    }

    let markdown = path.join("report.md");
    write_atomic(&markdown, md.as_bytes())?;
    let plots = stems
        .iter()
        .flat_map(|s| ["png", "svg"].map(|ext| plot_dir.join(format!("{s}.{ext}"))))
        .collect();
    Ok(ReportFiles { markdown, plots })
}

fn write_run_table(md: &mut String, runs: &[RunRecord]) -> Result<()> {
    writeln!(md, "## Runs\n")?;
    writeln!(
        md,
        "| run | optimizer | settings | test accuracy | best (epoch) | sparsity | non-zero / total params | epochs | samples/s |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
    for r in runs {
        let head = format!(
            "| {} | {} | {} |",
            r.name,
            optim_label(r.config.optim),
            settings(&r.config)
        );
        match &r.outcome {
            Some(Outcome::Finished(s)) => writeln!(
                md,
                "{head} {:.2}% | {:.2}% ({}) | {:.1}% | {} / {} | {} | {:.0} |",
                100.0 * s.final_test_accuracy,
                100.0 * s.best_test_accuracy,
                s.best_epoch,
                100.0 * s.sparsity,
                s.nonzero_params,
                s.total_params,
                s.epochs,
                s.samples_per_second
            )?,
            Some(Outcome::Diverged(d)) => writeln!(
                md,
                "{head} diverged at epoch {}, step {} | | | | | |",
                d.epoch, d.step
            )?,
            None => writeln!(
                md,
                "{head} unfinished ({} epochs so far) | | | | | |",
                r.metrics.len()
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
) -> Result<()> {
    writeln!(md, "## Findings\n")?;
    let s = |r: &RunRecord| r.summary().cloned().expect("finished");
    if let Some(adamw) = selection.adamw {
        let a = s(adamw);
        writeln!(
            md,
            "- AdamW ({}): {:.2}% test accuracy, {:.1}% sparse.",
            settings(&adamw.config),
            100.0 * a.final_test_accuracy,
            100.0 * a.sparsity
        )?;
        let within: Vec<&RunRecord> = finished
            .iter()
            .copied()
            .filter(|r| {
                r.config.optim != OptimKind::Adamw
                    && s(r).final_test_accuracy >= a.final_test_accuracy - 0.005
            })
            .collect();
        match within
            .iter()
            .max_by(|x, y| s(x).sparsity.total_cmp(&s(y).sparsity))
        {
            Some(best) => writeln!(
                md,
                "- Best sparsity within 0.5 pp of AdamW's accuracy: {:.1}% ({}: {:.2}%, {} of {} parameters non-zero).",
                100.0 * s(best).sparsity,
                label(best),
                100.0 * s(best).final_test_accuracy,
                s(best).nonzero_params,
                s(best).total_params
            )?,
            None => writeln!(md, "- No run came within 0.5 pp of AdamW's accuracy.")?,
        }
        for optim in [
            OptimKind::Padam,
            OptimKind::Psgd,
            OptimKind::AdamL1,
            OptimKind::NaiveLp,
            OptimKind::Gmp,
        ] {
            let best = within
                .iter()
                .filter(|r| r.config.optim == optim)
                .max_by(|x, y| s(x).sparsity.total_cmp(&s(y).sparsity));
            let any = finished.iter().any(|r| r.config.optim == optim);
            if let Some(best) = best {
                writeln!(
                    md,
                    "  - {}: at best {:.1}% sparse within 0.5 pp ({}).",
                    optim_label(optim),
                    100.0 * s(best).sparsity,
                    settings(&best.config)
                )?;
            } else if any {
                writeln!(
                    md,
                    "  - {}: no run within 0.5 pp of AdamW.",
                    optim_label(optim)
                )?;
            }
        }
    }
    for r in runs {
        if let Some(Outcome::Diverged(d)) = &r.outcome {
            writeln!(
                md,
                "- {} diverged at epoch {}, step {}: {}.",
                label(r),
                d.epoch,
                d.step,
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
        writeln!(md, "- pAdam, by p (accuracy / sparsity at each lambda):")?;
        for runs in by_p.values_mut() {
            runs.sort_by(|x, y| x.config.lambda.total_cmp(&y.config.lambda));
            let cells: Vec<String> = runs
                .iter()
                .map(|r| {
                    format!(
                        "lambda {:e}: {:.2}% / {:.1}%",
                        r.config.lambda,
                        100.0 * s(r).final_test_accuracy,
                        100.0 * s(r).sparsity
                    )
                })
                .collect();
            writeln!(md, "  - p {}: {}", runs[0].config.p, cells.join("; "))?;
        }
    }
    writeln!(md)?;
    Ok(())
}

fn figure_md(md: &mut String, stem: &str, title: &str, caption: &str) -> Result<()> {
    writeln!(
        md,
        "### {title}\n\n![{title}](plots/{stem}.png)\n\n{caption} ([SVG](plots/{stem}.svg))\n"
    )?;
    Ok(())
}
