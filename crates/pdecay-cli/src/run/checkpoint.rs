//! Checkpoints: the model, the optimizer record (moments, step counts, s, masks) and the run's
//! position, written after every evaluation (each epoch of an image classifier, every
//! `eval_interval` iterations of a GPT) so `pdecay train --resume` continues bit-identically.
//!
//! Every file is written atomically (temporary file, then rename). The model and optimizer
//! files carry the epochs or iterations done in their names and `checkpoint.json`, written
//! last, names the position they belong to; a crash at any point leaves the previous complete
//! checkpoint in force.

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use pdecay_burn::SparseOptimizer;
use serde::{Deserialize, Serialize};

use super::atomic::write_atomic;

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

fn model_file(epoch: usize) -> String {
    format!("checkpoint-{epoch:05}.model.bpk")
}

fn optim_file(epoch: usize) -> String {
    format!("checkpoint-{epoch:05}.optim.bpk")
}

/// Writes the checkpoint of `position` and removes older ones.
pub fn save<M: Module>(
    dir: &Path,
    model: &M,
    optim: &SparseOptimizer,
    position: &RunPosition,
) -> Result<()> {
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .context("serialising the model")?;
    write_atomic(&dir.join(model_file(position.done())), &model_bytes)?;
    let optim_bytes = optim
        .to_record()
        .into_bytes()
        .context("serialising the optimizer state")?;
    write_atomic(&dir.join(optim_file(position.done())), &optim_bytes)?;
    write_atomic(
        &dir.join(POSITION),
        serde_json::to_string_pretty(position)?.as_bytes(),
    )?;
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let current = name == model_file(position.done()) || name == optim_file(position.done());
        if name.starts_with("checkpoint-") && name.ends_with(".bpk") && !current {
            std::fs::remove_file(entry.path())
                .with_context(|| format!("removing old checkpoint {name}"))?;
        }
    }
    Ok(())
}

/// The last checkpoint in `dir`, loaded into `model` and `optim`; `None` if there is none yet.
pub fn load<M: Module>(
    dir: &Path,
    model: M,
    optim: SparseOptimizer,
) -> Result<Option<(M, SparseOptimizer, RunPosition)>> {
    let Some((model, position)) = load_model(dir, model)? else {
        return Ok(None);
    };
    let record =
        OptimizerRecord::from_bytes(read_file(dir, &optim_file(position.done()), &position)?)
            .context("reading the optimizer checkpoint")?;
    Ok(Some((model, optim.load_record(record), position)))
}

/// The model of the last checkpoint in `dir`, loaded into `model` (built for the run's
/// config); `None` if there is no checkpoint yet.
pub fn load_model<M: Module>(dir: &Path, model: M) -> Result<Option<(M, RunPosition)>> {
    let position_path = dir.join(POSITION);
    if !position_path.exists() {
        return Ok(None);
    }
    let position: RunPosition = serde_json::from_str(
        &std::fs::read_to_string(&position_path)
            .with_context(|| format!("reading {}", position_path.display()))?,
    )
    .with_context(|| format!("{} is corrupt", position_path.display()))?;
    let record = ModuleRecord::from_bytes(read_file(dir, &model_file(position.done()), &position)?)
        .context("reading the model checkpoint")?;
    match model.try_load_record(record) {
        Ok(model) => Ok(Some((model, position))),
        Err(e) => bail!(
            "the model checkpoint does not fit this run's model ({e}); was the folder made with another --model or --hidden?"
        ),
    }
}

fn read_file(dir: &Path, name: &str, position: &RunPosition) -> Result<Bytes> {
    let path = dir.join(name);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "checkpoint.json names the checkpoint after {} epochs or iterations, but {} is missing",
            position.done(),
            path.display()
        )
    })?;
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
