//! What a run folder's files hold: a line of `metrics.jsonl` per evaluation, `summary.json`
//! of a finished run, `diverged.json` of a run whose loss or weights became NaN or infinite.
//! The JSON keys are snake_case and stable: other tools script against them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use pdecay::sparsity::TensorSparsity;

/// One line of `metrics.jsonl`, of either trainer.
pub trait Evaluation: Serialize + DeserializeOwned + Clone {
    /// Epochs or iterations done when it was made.
    fn done(&self) -> usize;

    /// The one-line account that progress reporters print, out of `total` epochs or
    /// iterations.
    fn line(&self, total: usize) -> String;

    /// Stamps the wall-clock seconds since the start of the run (over all its sessions).
    fn set_seconds(&mut self, seconds: f64);
}

/// A layer on the sparse product, as metrics.jsonl records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparseLayer {
    /// The layer (`hidden.0`, `output`, the CNN's `dense`).
    pub name: String,
    /// The first optimizer step it ran sparse.
    pub since_step: u64,
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
    /// Mean seconds per training step over the epoch (absent in runs made before it was
    /// recorded).
    #[serde(default)]
    pub step_seconds: f64,
    /// The linear layers on the sparse product from `since_step` on (sparse training; absent in
    /// runs made before it). A layer that moves at this line's `step` starts with the next
    /// epoch: the decision is taken at the epoch's end, before its checkpoint.
    #[serde(default)]
    pub sparse_layers: Vec<SparseLayer>,
}

impl Evaluation for EpochMetrics {
    fn done(&self) -> usize {
        self.epoch
    }

    fn set_seconds(&mut self, seconds: f64) {
        self.seconds = seconds;
    }

    fn line(&self, epochs: usize) -> String {
        format!(
            "epoch {:>3}/{} step {:>6} lr {:.2e} train loss {:.4} test loss {:.4} acc {:.2}% sparsity {:.1}% ({:.0}s)",
            self.epoch,
            epochs,
            self.step,
            self.lr,
            self.train_loss,
            self.test_loss,
            100.0 * self.test_accuracy,
            100.0 * self.sparsity,
            self.seconds
        ) + &sparse_words(&self.sparse_layers)
    }
}

/// `, 2 layers run sparse: hidden.0, hidden.1` (empty when every layer is dense; past four
/// layers, the count alone: the GPT has four per block, and metrics.jsonl names them). The
/// count comes first so that a layer's name (the CNN's is `dense`) does not read as a mode.
fn sparse_words(layers: &[SparseLayer]) -> String {
    let count = match layers.len() {
        0 => return String::new(),
        1 => "1 layer runs".to_string(),
        n => format!("{n} layers run"),
    };
    if layers.len() > 4 {
        return format!(", {count} sparse");
    }
    let names: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
    format!(", {count} sparse: {}", names.join(", "))
}

/// `summary.json` of an image classifier's run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClassifierSummary {
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
    /// The layers that ended the run on the sparse product, and from which step (sparse
    /// training; absent in runs made before it).
    #[serde(default)]
    pub sparse_layers: Vec<SparseLayer>,
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
    /// Mean seconds per training step since the previous evaluation (0 in runs made before it
    /// was recorded).
    #[serde(default)]
    pub step_seconds: f64,
    /// The linear layers on the sparse product from `since_step` on (sparse training; absent in
    /// runs made before it). A layer that moves at this line's `iter` starts with the next
    /// iteration: the decision is taken at the evaluation, before its checkpoint.
    #[serde(default)]
    pub sparse_layers: Vec<SparseLayer>,
}

impl Evaluation for GptEval {
    fn done(&self) -> usize {
        self.iter
    }

    fn set_seconds(&mut self, seconds: f64) {
        self.seconds = seconds;
    }

    fn line(&self, iters: usize) -> String {
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
        ) + &sparse_words(&self.sparse_layers)
    }
}

/// `summary.json` of a GPT run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// The layers that ended the run on the sparse product, and from which step (sparse
    /// training; absent in runs made before it).
    #[serde(default)]
    pub sparse_layers: Vec<SparseLayer>,
}

/// Where a step diverged: the epoch and step of an image classifier, the iteration of a GPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepAt {
    /// Step `step` (0-based, the steps done before it) of epoch `epoch` (1-based).
    Epoch {
        /// The epoch.
        epoch: usize,
        /// The step.
        step: u64,
    },
    /// A GPT's iteration (1-based).
    Iteration(usize),
}

impl std::fmt::Display for StepAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Epoch { epoch, step } => write!(f, "epoch {epoch}, step {step}"),
            Self::Iteration(iter) => write!(f, "iteration {iter}"),
        }
    }
}

/// The run diverged: the training loss, a gradient or a weight became NaN or infinite (an
/// outcome a sweep records, not a failure of the program). `diverged.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Diverged {
    /// The epoch of the step (image classifiers; a GPT has none: older GPT files repeat the
    /// iteration here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<usize>,
    /// The step that diverged: 0-based for an image classifier, a GPT's iteration.
    pub step: u64,
    /// What became NaN or infinite.
    pub reason: String,
    /// What of the run is left on disk, for the message (not in diverged.json).
    #[serde(skip)]
    pub kept: Option<String>,
}

impl Diverged {
    /// A divergence at `at` for `reason`.
    pub fn new(at: StepAt, reason: String) -> Self {
        match at {
            StepAt::Epoch { epoch, step } => Self {
                epoch: Some(epoch),
                step,
                reason,
                kept: None,
            },
            StepAt::Iteration(iter) => Self {
                epoch: None,
                step: iter as u64,
                reason,
                kept: None,
            },
        }
    }

    /// Where it happened, for a run of `gpt` or not.
    pub fn at_for(&self, gpt: bool) -> StepAt {
        match self.epoch {
            Some(epoch) if !gpt => StepAt::Epoch {
                epoch,
                step: self.step,
            },
            _ => StepAt::Iteration(self.step as usize),
        }
    }
}

impl std::fmt::Display for Diverged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the run diverged at {}: {} (lower --lr or --lambda)",
            self.at_for(self.epoch.is_none()),
            self.reason
        )?;
        match &self.kept {
            Some(kept) => write!(f, "; {kept}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Diverged {}

/// `summary.json` of a finished run, of either trainer.
#[derive(Debug, Clone)]
pub enum RunSummary {
    /// An image classifier's.
    Classifier(ClassifierSummary),
    /// A GPT's.
    Gpt(GptSummary),
}

impl RunSummary {
    /// Share of the decayed weights below the run's threshold (0-1).
    pub fn sparsity(&self) -> f64 {
        match self {
            Self::Classifier(s) => s.sparsity,
            Self::Gpt(s) => s.sparsity,
        }
    }

    /// Parameters not below the threshold.
    pub fn nonzero_params(&self) -> u64 {
        match self {
            Self::Classifier(s) => s.nonzero_params,
            Self::Gpt(s) => s.nonzero_params,
        }
    }

    /// All parameters.
    pub fn total_params(&self) -> u64 {
        match self {
            Self::Classifier(s) => s.total_params,
            Self::Gpt(s) => s.total_params,
        }
    }

    /// The names of the summary's fields in order, from the type itself (so a renamed field
    /// renames its column).
    pub fn columns(gpt: bool) -> Vec<String> {
        let fields = if gpt {
            toml::Table::try_from(GptSummary::default())
        } else {
            toml::Table::try_from(ClassifierSummary::default())
        };
        fields
            .expect("a summary is a table of numbers")
            .keys()
            .cloned()
            .collect()
    }

    /// The fields' values as CSV cells, in the order of [`RunSummary::columns`].
    pub fn cells(&self) -> Vec<String> {
        let (value, gpt) = match self {
            Self::Classifier(s) => (serde_json::to_value(s), false),
            Self::Gpt(s) => (serde_json::to_value(s), true),
        };
        let value = value.expect("a summary is a table of numbers");
        Self::columns(gpt)
            .iter()
            .map(|c| value[c].to_string())
            .collect()
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It trained to the end: its summary.json.
    Finished(RunSummary),
    /// The loss became NaN or infinite.
    Diverged(Diverged),
}

impl Outcome {
    /// The summary of a finished run.
    pub fn summary(&self) -> Option<&RunSummary> {
        match self {
            Self::Finished(s) => Some(s),
            Self::Diverged(_) => None,
        }
    }

    /// `finished` or `diverged`, the CSV's `status`.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Finished(_) => "finished",
            Self::Diverged(_) => "diverged",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csv_columns_are_the_summarys_fields_in_order() {
        for (gpt, value) in [
            (false, serde_json::to_value(ClassifierSummary::default())),
            (true, serde_json::to_value(GptSummary::default())),
        ] {
            let columns = RunSummary::columns(gpt);
            let mut fields: Vec<String> = value
                .unwrap()
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            let mut sorted = columns.clone();
            sorted.sort();
            fields.sort();
            assert_eq!(sorted, fields);
            let first = if gpt {
                "final_val_loss"
            } else {
                "final_test_accuracy"
            };
            assert_eq!(columns[0], first);
        }
        let summary = RunSummary::Gpt(GptSummary {
            best_iter: 250,
            sparsity: 0.5,
            ..GptSummary::default()
        });
        let cells = summary.cells();
        let columns = RunSummary::columns(true);
        assert_eq!(cells.len(), columns.len());
        assert!(cells.iter().all(|c| c != "null"), "{cells:?}");
        let at = |name: &str| &cells[columns.iter().position(|c| c == name).unwrap()];
        assert_eq!(
            (at("best_iter").as_str(), at("sparsity").as_str()),
            ("250", "0.5")
        );
    }

    #[test]
    fn progress_words_count_the_sparse_layers_before_naming_them() {
        let layers = |names: &[&str]| -> Vec<SparseLayer> {
            names
                .iter()
                .map(|name| SparseLayer {
                    name: name.to_string(),
                    since_step: 1,
                })
                .collect()
        };
        assert_eq!(sparse_words(&[]), "");
        assert_eq!(
            sparse_words(&layers(&["dense"])),
            ", 1 layer runs sparse: dense"
        );
        assert_eq!(
            sparse_words(&layers(&["hidden.0", "hidden.1"])),
            ", 2 layers run sparse: hidden.0, hidden.1"
        );
        assert_eq!(
            sparse_words(&layers(&["a", "b", "c", "d", "e"])),
            ", 5 layers run sparse"
        );
    }

    #[test]
    fn a_divergence_names_the_epoch_and_step_or_the_iteration() {
        let image = Diverged::new(StepAt::Epoch { epoch: 2, step: 57 }, "NaN".into());
        assert!(
            image
                .to_string()
                .starts_with("the run diverged at epoch 2, step 57: NaN")
        );
        let json = serde_json::to_value(&image).unwrap();
        assert_eq!(
            (json["epoch"].as_u64(), json["step"].as_u64()),
            (Some(2), Some(57))
        );

        let gpt = Diverged::new(StepAt::Iteration(7), "NaN".into());
        assert!(
            gpt.to_string()
                .starts_with("the run diverged at iteration 7: NaN")
        );
        assert!(serde_json::to_value(&gpt).unwrap().get("epoch").is_none());
        // a GPT's diverged.json from before repeats the iteration as `epoch`
        let old: Diverged =
            serde_json::from_str(r#"{"epoch": 7, "step": 7, "reason": "NaN"}"#).unwrap();
        assert_eq!(old.at_for(true), StepAt::Iteration(7));
        assert_eq!(old.at_for(false), StepAt::Epoch { epoch: 7, step: 7 });
    }
}
