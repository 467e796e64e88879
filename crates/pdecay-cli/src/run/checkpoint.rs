//! Checkpoints: the model, the optimizer record (moments, step counts, s, masks) and the run's
//! position, written after every evaluation (each epoch of an image classifier, every
//! `eval_interval` iterations of a GPT) so `pdecay train --resume` continues bit-identically.
//!
//! Every file is written atomically (temporary file, then rename). The model and optimizer
//! files carry the epochs or iterations done in their names and `checkpoint.json`, written
//! last, names the position they belong to; a crash at any point leaves the previous complete
//! checkpoint in force.
//!
//! `checkpoint.json` also records the SHA-256 of every file the checkpoint consists of (model,
//! optimizer, and the run's config.toml and vocab.json, which say what the tensors mean): a
//! file damaged or edited on disk afterwards is an error naming it, never a silently different
//! run. Checkpoints written before the hashes existed load unverified.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use pdecay_burn::SparseOptimizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::atomic::write_atomic;
use super::{CONFIG, VOCAB};

/// Where a run stands; `checkpoint.json`. An image classifier checkpoints after each epoch, a
/// GPT after each evaluation (its iterations are its steps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunPosition {
    /// Epochs completed (image classifiers; none for a GPT, whose older checkpoints repeat
    /// the iteration here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<usize>,
    /// Optimizer steps completed.
    pub step: u64,
    /// Seconds spent in training steps so far (evaluation excluded).
    pub train_seconds: f64,
    /// Wall-clock seconds of the run so far, over all its sessions.
    pub wall_seconds: f64,
}

impl RunPosition {
    /// The start of a run counted in `unit`s.
    pub fn start(unit: Unit) -> Self {
        Self {
            epoch: (unit == Unit::Epoch).then_some(0),
            step: 0,
            train_seconds: 0.0,
            wall_seconds: 0.0,
        }
    }

    /// Epochs (image classifiers) or iterations (GPT) completed.
    pub fn done(&self) -> usize {
        self.epoch.unwrap_or(self.step as usize)
    }
}

/// What a run counts: epochs (the image classifiers) or iterations (the GPT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Passes over the training set.
    Epoch,
    /// Optimizer steps.
    Iteration,
}

impl Unit {
    /// The word, e.g. for axis labels: `epoch` or `iteration`.
    pub fn word(self) -> &'static str {
        match self {
            Self::Epoch => "epoch",
            Self::Iteration => "iteration",
        }
    }
}

/// The position file, written last.
pub(crate) const POSITION: &str = "checkpoint.json";

/// `checkpoint.json`: the position and the SHA-256 (hex) of each file, by name.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PositionFile {
    #[serde(flatten)]
    position: RunPosition,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    sha256: BTreeMap<String, String>,
}

fn model_file(epoch: usize) -> String {
    format!("checkpoint-{epoch:05}.model.bpk")
}

fn optim_file(epoch: usize) -> String {
    format!("checkpoint-{epoch:05}.optim.bpk")
}

fn is_checkpoint_file(name: &str) -> bool {
    name.starts_with("checkpoint-") && name.ends_with(".bpk")
}

/// The SHA-256 of `bytes` in lowercase hex.
fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `checkpoint.json` of a run that has no checkpoint yet (position 0, the hash of its
/// config.toml), so that from its creation on a run folder always has one: checkpoint files
/// without it can only mean it was lost, never a process killed mid-checkpoint (it is
/// replaced by an atomic rename, never absent).
pub fn save_start(dir: &Path, unit: Unit) -> Result<()> {
    write_position(dir, &RunPosition::start(unit), BTreeMap::new())
}

/// Writes `checkpoint.json` naming `position`, with the hashes of its `files` and of the run's
/// config.toml and vocab.json (those present).
fn write_position(
    dir: &Path,
    position: &RunPosition,
    mut sha256: BTreeMap<String, String>,
) -> Result<()> {
    for name in [CONFIG, VOCAB] {
        let path = dir.join(name);
        if path.exists() {
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            sha256.insert(name.to_string(), sha256_hex(&bytes));
        }
    }
    let file = PositionFile {
        position: position.clone(),
        sha256,
    };
    write_atomic(
        &dir.join(POSITION),
        serde_json::to_string_pretty(&file)?.as_bytes(),
    )
}

/// Writes the checkpoint of `position` and removes older ones.
pub fn save<M: Module>(
    dir: &Path,
    model: &M,
    optim: &SparseOptimizer,
    position: &RunPosition,
) -> Result<()> {
    let mut sha256 = BTreeMap::new();
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .context("serialising the model")?;
    let model_name = model_file(position.done());
    write_atomic(&dir.join(&model_name), &model_bytes)?;
    sha256.insert(model_name, sha256_hex(&model_bytes));
    let optim_bytes = optim
        .to_record()
        .into_bytes()
        .context("serialising the optimizer state")?;
    let optim_name = optim_file(position.done());
    write_atomic(&dir.join(&optim_name), &optim_bytes)?;
    sha256.insert(optim_name, sha256_hex(&optim_bytes));
    write_position(dir, position, sha256)?;
    remove_all_but(dir, position.done())
}

/// Removes every checkpoint file but those of the checkpoint after `done` epochs or
/// iterations, the one `checkpoint.json` names: after a save, the one before; on a resume,
/// what a killed process left, whether it died between naming its new checkpoint and removing
/// the older one (its last checkpoint saves nothing after it that would remove it) or while it
/// wrote the next one's files. Only while holding the folder's lock.
fn remove_all_but(dir: &Path, done: usize) -> Result<()> {
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let current = name == model_file(done) || name == optim_file(done);
        if is_checkpoint_file(&name) && !current {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing old checkpoint {name}"))?;
        }
    }
    Ok(())
}

/// The checkpoint files (`checkpoint-N.*.bpk`) in `dir` when it has no `checkpoint.json`,
/// sorted: what is left when `checkpoint.json` was deleted (or a run of pdecay 0.1 was killed
/// while it wrote its first checkpoint). Empty when `checkpoint.json` exists.
pub fn orphans(dir: &Path) -> Vec<String> {
    if dir.join(POSITION).exists() {
        return Vec::new();
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| is_checkpoint_file(name))
        .collect();
    names.sort();
    names
}

/// The last checkpoint in `dir`, loaded into `model` and `optim` to resume the run, with the
/// other checkpoint files a killed process left removed; `None` if there is none yet. Only
/// while holding the folder's lock.
pub fn load<M: Module>(
    dir: &Path,
    model: M,
    optim: SparseOptimizer,
) -> Result<Option<(M, SparseOptimizer, RunPosition)>> {
    let Some(file) = read_position(dir)? else {
        return Ok(None);
    };
    let model = load_model_of(dir, model, &file)?;
    let name = optim_file(file.position.done());
    let record = OptimizerRecord::from_bytes(read_checked(dir, &name, &file)?)
        .with_context(|| format!("reading the optimizer checkpoint {name}"))?;
    remove_all_but(dir, file.position.done())?;
    Ok(Some((model, optim.load_record(record), file.position)))
}

/// The model of the last checkpoint in `dir`, loaded into `model` (built for the run's
/// config); `None` if there is no checkpoint yet.
pub fn load_model<M: Module>(dir: &Path, model: M) -> Result<Option<(M, RunPosition)>> {
    let Some(file) = read_position(dir)? else {
        return Ok(None);
    };
    Ok(Some((load_model_of(dir, model, &file)?, file.position)))
}

/// Checks every file of the last checkpoint in `dir` against the hashes `checkpoint.json`
/// recorded (nothing to check without a checkpoint).
pub fn verify(dir: &Path) -> Result<()> {
    if let Some(file) = read_position(dir)? {
        let done = file.position.done();
        for name in [model_file(done), optim_file(done)] {
            read_checked(dir, &name, &file)?;
        }
    }
    Ok(())
}

/// `checkpoint.json` of a checkpoint, with the run's config.toml and vocab.json verified
/// against it; `None` without one (no file, or the start position of [`save_start`]).
fn read_position(dir: &Path) -> Result<Option<PositionFile>> {
    let path = dir.join(POSITION);
    if !path.exists() {
        return Ok(None);
    }
    let file: PositionFile = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", path.display()))?;
    for name in [CONFIG, VOCAB] {
        if file.sha256.contains_key(name) {
            read_checked(dir, name, &file)?;
        }
    }
    Ok((file.position.done() > 0).then_some(file))
}

fn load_model_of<M: Module>(dir: &Path, model: M, file: &PositionFile) -> Result<M> {
    let name = model_file(file.position.done());
    let record = ModuleRecord::from_bytes(read_checked(dir, &name, file)?)
        .with_context(|| format!("reading the model checkpoint {name}"))?;
    model.try_load_record(record).map_err(|e| {
        anyhow::anyhow!(
            "{} does not fit the model that the run's {CONFIG} describes ({e}); were the run's files copied from different runs?",
            dir.join(&name).display()
        )
    })
}

/// The bytes of the checkpoint's file `name`, checked against the SHA-256 recorded for it.
fn read_checked(dir: &Path, name: &str, file: &PositionFile) -> Result<Bytes> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "{POSITION} names the checkpoint after {} epochs or iterations, but {} is missing",
            file.position.done(),
            path.display()
        )
    })?;
    if let Some(expected) = file.sha256.get(name) {
        let found = sha256_hex(&bytes);
        if &found != expected {
            let what = if name == CONFIG || name == VOCAB {
                "was edited or damaged after the run started (a run keeps the settings and vocabulary it started with)"
            } else {
                "was damaged after it was written (a disk or copy fault, or an edit)"
            };
            bail!(
                "{} {what}: its SHA-256 is {found}, {POSITION} recorded {expected}. Restore the file from a copy, or start the run again in a new folder",
                path.display()
            );
        }
    }
    Ok(Bytes::from_bytes_vec(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_counts_epochs_or_iterations() {
        let mut image = RunPosition::start(Unit::Epoch);
        (image.epoch, image.step) = (Some(3), 129);
        assert_eq!(image.done(), 3);
        let mut gpt = RunPosition::start(Unit::Iteration);
        gpt.step = 250;
        assert_eq!(gpt.done(), 250);
        let text = serde_json::to_string(&gpt).unwrap();
        assert!(!text.contains("epoch"), "{text}");
        // a GPT's checkpoint.json from before repeats the iteration as `epoch`
        let old: RunPosition = serde_json::from_str(
            r#"{"epoch": 15, "step": 15, "train_seconds": 1.0, "wall_seconds": 2.0}"#,
        )
        .unwrap();
        assert_eq!(old.done(), 15);
    }
}
