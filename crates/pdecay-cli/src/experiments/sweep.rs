//! `pdecay sweep`: a grid of training runs, one run folder each, resumable, summarised in
//! `sweep.csv`.
//!
//! A sweep file is TOML. Keys at the top level apply to every run; each `[[grid]]` table adds
//! one grid of runs. In either place a list is swept (the runs are the product of all lists) and
//! a single value is fixed; `hidden`, itself a list, is swept with a list of lists.
//!
//! ```toml
//! epochs = 20                       # every run
//! [[grid]]
//! optim = "padam"
//! p = [0.5, 0.8]                    # 2 x 2 runs
//! lambda = [1e-3, 1e-2]
//! [[grid]]
//! optim = "adamw"                   # one run
//! lambda = 1e-2
//! ```
//!
//! A run's folder is named after the keys that tell the runs apart (`optim=padam_p=0.8_...`),
//! not after its position, so adding values to a sweep keeps the finished runs.
//!
//! A sweep trains image classifiers (MLP, CNN) or GPTs, not both: their summaries have other
//! columns. A GPT sweep sets `model = "gpt"` and `data` (the text file) at the top level; its
//! sizes go in a `[gpt]` table, fixed for the whole sweep or per grid.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;
use serde::Deserialize;
use toml::{Table, Value};

use crate::config::TrainConfig;
use crate::data::RunData;
use crate::models::ModelKind;
use crate::run::{Diverged, Outcome, RunDir, RunState, RunSummary, lock_folder, write_atomic};
use crate::train::{Progress, RunOptions, train_classifier, train_gpt};

/// The sweep preset files, also examples of the format.
pub const PRESETS: [(&str, &str); 2] = [
    ("demo", include_str!("../../presets/sweep-demo.toml")),
    (
        "fashion-mlp",
        include_str!("../../presets/sweep-fashion-mlp.toml"),
    ),
];

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRun {
    /// Folder name inside the sweep folder.
    pub name: String,
    /// The complete config of the run.
    pub config: TrainConfig,
}

/// All runs of a sweep file, in the file's order.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepPlan {
    /// The runs.
    pub runs: Vec<PlannedRun>,
    /// The keys that tell runs apart (swept somewhere, or set in a grid): the CSV's columns.
    pub keys: Vec<String>,
}

impl SweepPlan {
    /// Whether the runs are GPTs (all or none are).
    pub fn is_gpt(&self) -> bool {
        self.runs
            .first()
            .is_some_and(|r| r.config.model == ModelKind::Gpt)
    }
}

/// The most runs one sweep file may plan: a grid beyond it (a typo'd range, one list too many)
/// is refused with its size before anything is expanded.
pub const MAX_RUNS: u128 = 10_000;

/// Keys whose value is itself a list (swept only with a list of lists).
fn list_valued(key: &str) -> bool {
    matches!(key, "hidden" | "cnn_widths")
}

/// One grid's settings: fixed values and swept axes.
#[derive(Default)]
struct Grid {
    fixed: Table,
    axes: Vec<(String, Vec<Value>)>,
}

impl Grid {
    fn from_table(table: Table, place: &str, source: &str) -> Result<Self> {
        let mut grid = Self::default();
        for (key, value) in table {
            // a list-valued key is swept by a non-empty list of lists (`hidden = []`, an MLP
            // without hidden layers, is a fixed value)
            let swept = match &value {
                Value::Array(items) if list_valued(&key) => {
                    !items.is_empty() && items.iter().all(|v| matches!(v, Value::Array(_)))
                }
                Value::Array(_) => true,
                _ => false,
            };
            if swept {
                let Value::Array(items) = value else {
                    unreachable!("checked above")
                };
                ensure!(
                    !items.is_empty(),
                    "`{key}` in {place} of {source} is an empty list: give at least one value (or a single value to fix it)"
                );
                grid.axes.push((key, items));
            } else {
                grid.fixed.insert(key, value);
            }
        }
        Ok(grid)
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.fixed.keys().chain(self.axes.iter().map(|(k, _)| k))
    }
}

/// Every combination of the axes' values, the first axis slowest.
fn product(axes: &[(String, Vec<Value>)]) -> Vec<Vec<(String, Value)>> {
    let mut combos = vec![Vec::new()];
    for (key, values) in axes {
        combos = combos
            .into_iter()
            .flat_map(|combo| {
                values.iter().map(move |v| {
                    let mut c = combo.clone();
                    c.push((key.clone(), v.clone()));
                    c
                })
            })
            .collect();
    }
    combos
}

/// A value as it appears in folder names and the CSV: strings without quotes, very large or
/// small numbers in exponent form (`1e-4`, `1e30`).
pub fn display_value(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Float(x) if *x != 0.0 && !(1e-3..1e5).contains(&x.abs()) => format!("{x:e}"),
        Value::Float(x) => format!("{x}"),
        other => other.to_string(),
    }
}

/// Parses a sweep file's text; `source` names it in errors.
pub fn parse(text: &str, source: &str) -> Result<SweepPlan> {
    let mut table: Table =
        toml::from_str(text).with_context(|| format!("{source} is not a valid TOML file"))?;
    let grids = match table.remove("grid") {
        None => vec![Table::new()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::Table(t) if !t.is_empty() => Ok(t),
                Value::Table(_) => bail!(
                    "grid {} of {source} sets no keys: give it at least one (e.g. `optim = \"adamw\"`) or remove it",
                    i + 1
                ),
                _ => bail!("`grid` in {source} must be written as [[grid]] tables"),
            })
            .collect::<Result<_>>()?,
        Some(_) => bail!("`grid` in {source} must be written as [[grid]] tables, at least one"),
    };
    let top = Grid::from_table(table, "the top level", source)?;
    // each top-level value alone, so that an error there is not reported in a grid
    let top_values = top.fixed.iter().chain(
        top.axes
            .iter()
            .flat_map(|(key, values)| values.iter().map(move |v| (key, v))),
    );
    for (key, value) in top_values {
        let alone = Table::from_iter([(key.clone(), value.clone())]);
        TrainConfig::deserialize(Value::Table(alone))
            .with_context(|| format!("invalid settings at the top level of {source}"))?;
    }
    let grids = grids
        .into_iter()
        .enumerate()
        .map(|(i, grid)| Grid::from_table(grid, &format!("grid {}", i + 1), source))
        .collect::<Result<Vec<_>>>()?;
    let size = |axes: &[(String, Vec<Value>)]| {
        axes.iter().fold(1u128, |n, (_, values)| {
            n.saturating_mul(values.len() as u128)
        })
    };
    let total = grids
        .iter()
        .map(|g| size(&top.axes).saturating_mul(size(&g.axes)))
        .fold(0u128, u128::saturating_add);
    ensure!(
        total <= MAX_RUNS,
        "{source} asks for {total} runs, more than a sweep may plan ({MAX_RUNS}): sweep fewer values, or split it into several files"
    );
    let mut keys: Vec<String> = top.axes.iter().map(|(k, _)| k.clone()).collect();
    let mut runs: Vec<PlannedRun> = Vec::new();
    let mut names: HashSet<String> = HashSet::new();
    for (i, grid) in grids.into_iter().enumerate() {
        let place = format!("grid {}", i + 1);
        if let Some(key) = grid.keys().find(|k| top.axes.iter().any(|(a, _)| a == *k)) {
            bail!(
                "`{key}` is swept at the top level of {source} and also set in {place}: set it in one place"
            );
        }
        for key in grid.keys() {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
        let axes: Vec<_> = top.axes.iter().chain(&grid.axes).cloned().collect();
        for combo in product(&axes) {
            let mut settings = top.fixed.clone();
            settings.extend(grid.fixed.clone());
            settings.extend(combo);
            let config = TrainConfig::deserialize(Value::Table(settings.clone()))
                .with_context(|| format!("invalid settings in {place} of {source}"))?;
            config
                .validate()
                .and_then(|()| config.refuse_inapplicable_keys())
                .with_context(|| format!("invalid settings in {place} of {source}"))?;
            let name = keys
                .iter()
                .filter_map(|k| settings.get(k).map(|v| (k, v)))
                .map(|(k, v)| format!("{k}={}", display_value(v)))
                .collect::<Vec<_>>()
                .join("_");
            let name = sanitize(if name.is_empty() { "run" } else { &name });
            if !names.insert(name.clone()) {
                bail!(
                    "{source} lists the run `{name}` twice ({place} repeats it); remove the duplicate"
                );
            }
            if let Some(first) = runs.first() {
                ensure!(
                    (first.config.model == ModelKind::Gpt) == (config.model == ModelKind::Gpt),
                    "{source} mixes GPT runs with image classifiers ({place}); their results have other columns: sweep them in two files"
                );
            }
            runs.push(PlannedRun { name, config });
        }
    }
    Ok(SweepPlan { runs, keys })
}

/// Keeps folder names portable: letters, digits and `.=-+` stay, anything else becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".=-+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The sweep file of a preset name, or an error listing the presets.
pub fn preset(name: &str) -> Result<&'static str> {
    PRESETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, text)| *text)
        .with_context(|| {
            let names: Vec<_> = PRESETS.iter().map(|(n, _)| *n).collect();
            format!("unknown preset `{name}`; presets: {}", names.join(", "))
        })
}

/// The state of the run folder `dir`, after checking that a run there has exactly `config`.
pub fn run_state(dir: &RunDir, config: &TrainConfig) -> Result<RunState> {
    if !dir.holds_run() {
        return Ok(RunState::New);
    }
    let mut saved = dir.read_config()?;
    // the image shape is recorded from the data when the run starts, not planned by the sweep
    // (whose config names the same data)
    saved.image_shape = config.image_shape;
    ensure!(
        &saved == config,
        "{} holds a run with other settings than the sweep file asks for (was the sweep file changed?); delete that folder or sweep into another --out",
        dir.path().display()
    );
    Ok(dir.state())
}

/// Reports a sweep's progress.
pub trait SweepProgress {
    /// Before run `index` (0-based) of `total` starts, resumes or is skipped.
    fn run(&mut self, index: usize, total: usize, run: &PlannedRun, state: RunState);
    /// The progress of the run being trained.
    fn training(&mut self) -> &mut dyn Progress;
    /// After the last run.
    fn finish(&mut self) {}
}

/// A finished run of the sweep.
#[derive(Debug, Clone)]
pub struct SweepResult {
    /// The run.
    pub run: PlannedRun,
    /// How it ended.
    pub outcome: Outcome,
}

/// Runs every run of `plan` into `out/<name>` one after another, skipping finished runs and
/// resuming started ones; rewrites `out/sweep.csv` after each. Runs train on `devices` (more
/// than one: data parallel, image classifiers only); `load` gives a config's data.
pub fn run(
    plan: &SweepPlan,
    out: &Path,
    devices: &[Device],
    load: &dyn Fn(&TrainConfig) -> Result<RunData>,
    progress: &mut dyn SweepProgress,
) -> Result<Vec<SweepResult>> {
    std::fs::create_dir_all(out).with_context(|| {
        format!(
            "cannot create sweep folder {} (is --out writable?)",
            out.display()
        )
    })?;
    ensure!(!devices.is_empty(), "a sweep needs at least one device");
    // one sweep at a time in a folder (each run folder has its own lock too)
    let _lock = lock_folder(out)?;
    RunDir::remove_stale_temps(out)?;
    // Every folder is checked before anything trains: a changed sweep file fails at once.
    let states = plan
        .runs
        .iter()
        .map(|r| run_state(&RunDir::new(out.join(&r.name)), &r.config))
        .collect::<Result<Vec<_>>>()?;
    // loaded once per source (and, for a text, per window length, which bounds its check)
    let mut data: HashMap<(Option<String>, usize), RunData> = HashMap::new();
    let mut results = Vec::new();
    for (i, (planned, state)) in plan.runs.iter().zip(states).enumerate() {
        let dir = RunDir::new(out.join(&planned.name));
        progress.run(i, plan.runs.len(), planned, state);
        let outcome = match state {
            RunState::Finished | RunState::Diverged => {
                dir.outcome(planned.config.model)?.with_context(|| {
                    format!(
                        "{} changed while the sweep read it: its summary.json or diverged.json is gone",
                        dir.path().display()
                    )
                })?
            }
            RunState::New | RunState::Started => {
                let config = &planned.config;
                let key = (config.data.clone(), config.gpt.block_size);
                if !data.contains_key(&key) {
                    data.insert(key.clone(), load(config)?);
                }
                let options = RunOptions {
                    out: Some(dir.clone()),
                    resume: state == RunState::Started,
                    stop_after: None,
                    device: devices[0].clone(),
                    replicas: devices[1..].to_vec(),
                };
                let trained = match &data[&key] {
                    RunData::Images(images) => {
                        train_classifier(config, images, &options, progress.training())
                            .map(RunSummary::Classifier)
                    }
                    RunData::Text(text) => {
                        train_gpt(config, text, &options, progress.training()).map(RunSummary::Gpt)
                    }
                };
                match trained {
                    Ok(summary) => Outcome::Finished(summary),
                    Err(e) => match e.downcast::<Diverged>() {
                        Ok(diverged) => {
                            // the run let go of its folder when it ended: take it again
                            let _run = dir.lock()?;
                            dir.write_diverged(&diverged)?;
                            Outcome::Diverged(diverged)
                        }
                        Err(e) => {
                            return Err(
                                e.context(format!("run {} of the sweep failed", planned.name))
                            );
                        }
                    },
                }
            }
        };
        results.push(SweepResult {
            run: planned.clone(),
            outcome,
        });
        write_csv(&out.join("sweep.csv"), &plan.keys, &results)?;
    }
    progress.finish();
    Ok(results)
}

/// Writes `sweep.csv` atomically: `run`, `status`, the keys (each run's effective value), the
/// summary (empty for a diverged run).
pub fn write_csv(path: &Path, keys: &[String], results: &[SweepResult]) -> Result<()> {
    let mut csv = csv::Writer::from_writer(Vec::new());
    let gpt = results
        .first()
        .is_some_and(|r| r.run.config.model == ModelKind::Gpt);
    let columns = RunSummary::columns(gpt);
    let header: Vec<&str> = ["run", "status"]
        .into_iter()
        .chain(keys.iter().map(String::as_str))
        .chain(columns.iter().map(String::as_str))
        .collect();
    csv.write_record(&header)?;
    for r in results {
        let config = Table::try_from(&r.run.config).context("serialising a run config")?;
        let mut row = vec![r.run.name.clone(), r.outcome.status().to_string()];
        row.extend(
            keys.iter()
                .map(|k| config.get(k).map(display_value).unwrap_or_default()),
        );
        match r.outcome.summary() {
            Some(summary) => row.extend(summary.cells()),
            None => row.extend(columns.iter().map(|_| String::new())),
        }
        csv.write_record(&row)?;
    }
    let bytes = csv.into_inner().context("finishing sweep.csv")?;
    write_atomic(path, &bytes)
}

/// The sweep folder for `--out`, or `sweeps/<name>` by default.
pub fn default_out(name: &str) -> PathBuf {
    PathBuf::from("sweeps").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptimKind;

    #[test]
    fn grids_expand_to_the_product_of_their_lists() {
        let plan = parse(
            r#"
epochs = 3
seed = [0, 1]
[[grid]]
optim = "padam"
p = [0.5, 0.8]
lambda = [1e-3, 1e-2]
[[grid]]
optim = "adamw"
lambda = 0.01
"#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(plan.keys, ["seed", "optim", "p", "lambda"]);
        assert_eq!(plan.runs.len(), 2 * 2 * 2 + 2);
        assert!(plan.runs.iter().all(|r| r.config.epochs == 3));
        let first = &plan.runs[0];
        assert_eq!(first.name, "seed=0_optim=padam_p=0.5_lambda=0.001");
        assert_eq!((first.config.p, first.config.lambda), (0.5, 1e-3));
        // the first list varies slowest: the seed, then p, then lambda
        let ps: Vec<f64> = plan.runs[..4].iter().map(|r| r.config.p).collect();
        assert_eq!(ps, [0.5, 0.5, 0.8, 0.8]);
        assert_eq!(plan.runs[4].config.seed, 1);
        let adamw = &plan.runs[8];
        assert_eq!(adamw.config.optim, OptimKind::Adamw);
        assert_eq!(adamw.name, "seed=0_optim=adamw_lambda=0.01");
    }

    #[test]
    fn an_absurd_grid_is_refused_with_its_size_before_it_is_expanded() {
        // six axes of ten values: a million runs, once expanded (quadratically) for a minute
        let axes: String = ["lr", "lambda", "p", "seed", "lambda2", "threshold"]
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let values: Vec<String> = (1..=10)
                    .map(|v| {
                        if *key == "seed" {
                            v.to_string()
                        } else {
                            format!("{}.0e-{i}", v)
                        }
                    })
                    .collect();
                format!("{key} = [{}]\n", values.join(", "))
            })
            .collect();
        let message = format!("{:#}", parse(&axes, "big.toml").unwrap_err());
        assert!(message.contains("asks for 1000000 runs"), "{message}");
        assert!(message.contains(&MAX_RUNS.to_string()), "{message}");
    }

    #[test]
    fn a_bad_top_level_key_is_reported_at_the_top_level() {
        let message = format!(
            "{:#}",
            parse("bogus = 1\n[[grid]]\noptim = \"adamw\"\n", "s.toml").unwrap_err()
        );
        assert!(message.contains("at the top level of s.toml"), "{message}");
        assert!(message.contains("bogus"), "{message}");
        assert!(!message.contains("grid 1"), "{message}");
    }

    #[test]
    fn hidden_is_fixed_by_a_list_and_swept_by_a_list_of_lists() {
        let widths = parse("model = \"cnn\"\ncnn_widths = [16, 32, 64]", "t").unwrap();
        assert_eq!(widths.runs.len(), 1);
        assert_eq!(widths.runs[0].config.cnn_widths, [16, 32, 64]);
        let linear = parse("hidden = []", "t").unwrap();
        assert!(linear.runs[0].config.hidden.is_empty());
        let fixed = parse("hidden = [64, 32]\nlr = [1e-3, 2e-3]", "t").unwrap();
        assert_eq!(fixed.runs.len(), 2);
        assert_eq!(fixed.runs[0].config.hidden, [64, 32]);
        let swept = parse(
            "hidden = [[64], [128, 64]]\nlambda = [1e-4, 2.5e6, 0.5]",
            "t",
        )
        .unwrap();
        assert_eq!(swept.runs.len(), 6);
        assert_eq!(swept.runs[3].config.hidden, [128, 64]);
        let names: Vec<&str> = swept.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names[..3],
            [
                "hidden=_64__lambda=1e-4",
                "hidden=_64__lambda=2.5e6",
                "hidden=_64__lambda=0.5"
            ]
        );
        assert_eq!(names[3], "hidden=_128__64__lambda=1e-4");
    }

    #[test]
    fn bad_sweep_files_name_the_key_and_the_file() {
        let cases = [
            ("p = []", vec!["`p`", "empty list", "s.toml"]),
            (
                "[[grid]]\nlamda = [1, 2]",
                vec!["lamda", "grid 1", "s.toml"],
            ),
            ("p = \"high\"", vec!["p", "s.toml"]),
            (
                "[[grid]]\n[[grid]]\np = 1.0",
                vec!["grid 1", "sets no keys"],
            ),
            ("grid = 3", vec!["[[grid]]"]),
            ("p = [0.8, -1.0]", vec!["p", "s.toml"]),
            ("p = [0.8, 0.8]", vec!["twice"]),
            (
                "[[grid]]\nmodel = \"mlp\"\n[[grid]]\nmodel = \"gpt\"",
                vec!["mixes GPT", "grid 2", "s.toml"],
            ),
            ("p = 0.8 = 1", vec!["not a valid TOML"]),
            // a GPT sweep over the image classifiers' epochs would train the same run twice
            (
                "model = \"gpt\"\nepochs = [1, 2]",
                vec!["`epochs`", "gpt.iters", "grid 1"],
            ),
            (
                "lambda = [0.1, 0.2]\n[[grid]]\nlambda = 0.3",
                vec!["`lambda`", "top level", "grid 1"],
            ),
        ];
        for (text, expected) in cases {
            let message = format!("{:#}", parse(text, "s.toml").unwrap_err());
            for word in expected {
                assert!(message.contains(word), "{text:?}: {message}");
            }
        }
    }

    #[test]
    fn presets_parse_and_the_comparison_has_every_method() {
        for (name, text) in PRESETS {
            let plan = parse(text, name).unwrap();
            assert!(!plan.runs.is_empty(), "{name}");
        }
        let plan = parse(preset("fashion-mlp").unwrap(), "fashion-mlp").unwrap();
        let count = |o: OptimKind| plan.runs.iter().filter(|r| r.config.optim == o).count();
        assert_eq!(count(OptimKind::Adamw), 1);
        assert_eq!(count(OptimKind::Padam), 12);
        assert!(count(OptimKind::AdamL1) >= 1);
        assert_eq!(count(OptimKind::NaiveLp), 1);
        assert_eq!(count(OptimKind::Gmp), 4);
        assert!(plan.runs.iter().all(|r| r.config.data.is_none()));
        assert!(
            preset("nope")
                .unwrap_err()
                .to_string()
                .contains("fashion-mlp")
        );
    }

    #[test]
    fn a_changed_config_is_refused_and_a_finished_run_is_recognised() {
        let dir = std::env::temp_dir().join(format!("pdecay-sweep-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let run = RunDir::new(&dir);
        let config = TrainConfig::default();
        assert_eq!(run_state(&run, &config).unwrap(), RunState::New);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.toml"), toml::to_string(&config).unwrap()).unwrap();
        assert_eq!(run_state(&run, &config).unwrap(), RunState::Started);
        std::fs::write(dir.join("summary.json"), "{}").unwrap();
        assert_eq!(run_state(&run, &config).unwrap(), RunState::Finished);
        let other = TrainConfig { p: 0.5, ..config };
        let message = run_state(&run, &other).unwrap_err().to_string();
        assert!(message.contains("other settings"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
