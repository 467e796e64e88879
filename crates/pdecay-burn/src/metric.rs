//! The sparsity pWD trains for, as a burn-train metric: [`SparsityMetric`] shows the share of
//! the decayed weights that are exactly zero, or below a threshold, in the `Learner`'s
//! dashboard and logs beside its loss and accuracy (feature `train`).
//!
//! A metric sees the step's output, not the model, so the step measures the model: the
//! training step's output carries a [`SparsityInput`] taken with [`SparsityInput::of`] (or
//! [`SparsityInput::of_decayed`] with the optimizer's own plan of what decays) and implements
//! `Adaptor<SparsityInput>`. Measuring reads every decayed weight once, a small cost next to
//! a step; `examples/learner.rs` shows the whole wiring.

use std::sync::Arc;

use burn::module::Module;
use burn::tensor::TensorReadError;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use pdecay::sparsity::SparsityTotals;

use crate::optim::{DEFAULT_MIN_RANK, SparseOptimizer, sparsity_report};

/// The decayed weights of a model at one step: how many there are, how many are exactly 0,
/// how many lie below `threshold` (`|w| < threshold`, the zeros included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparsityInput {
    /// Decayed weights.
    pub params: u64,
    /// Exactly zero.
    pub zeros: u64,
    /// `|w| < threshold`.
    pub below_threshold: u64,
    /// The threshold of `below_threshold`.
    pub threshold: f64,
}

impl SparsityInput {
    /// The tensors of rank >= 2 in `module` (what pWD decays unless told otherwise: weight
    /// matrices and kernels, not biases or norm gains), counted at `threshold`.
    ///
    /// ```
    /// use burn::nn::{Linear, LinearConfig};
    /// use burn::tensor::Device;
    /// use pdecay_burn::SparsityInput;
    ///
    /// let layer: Linear = LinearConfig::new(4, 3).init(&Device::default());
    /// let zeroed = Linear { weight: layer.weight.map(|w| w.zeros_like()), ..layer };
    /// let input = SparsityInput::of(&zeroed, 1e-13);
    /// // the 4 x 3 weight counts, the bias does not
    /// assert_eq!((input.params, input.zeros, input.below_threshold), (12, 12, 12));
    /// ```
    pub fn of<M: Module>(module: &M, threshold: f64) -> Self {
        let report = sparsity_report(module, threshold, false, |_, _, rank| {
            rank >= DEFAULT_MIN_RANK
        });
        Self::from_totals(report.decayed(), threshold)
    }

    /// The tensors `optim` decays (its parameter groups decide), counted at `threshold`.
    pub fn of_decayed<M: Module>(module: &M, optim: &SparseOptimizer, threshold: f64) -> Self {
        Self::from_totals(
            optim.sparsity_report(module, threshold, false).decayed(),
            threshold,
        )
    }

    fn from_totals(totals: SparsityTotals, threshold: f64) -> Self {
        Self {
            params: totals.params,
            zeros: totals.zeros,
            below_threshold: totals.below_threshold,
            threshold,
        }
    }
}

/// What a [`SparsityMetric`] counts as sparse.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Count {
    ExactZeros,
    BelowThreshold,
}

/// The share of decayed weights that are sparse, in percent: exact zeros
/// ([`SparsityMetric::exact_zeros`]), or `|w|` below the step's threshold
/// ([`SparsityMetric::below_threshold`]). Numeric: it can be plotted and checkpointed on. Its
/// epoch value is the mean over the epoch's steps; the last step's is the model's.
#[derive(Clone)]
pub struct SparsityMetric {
    name: MetricName,
    count: Count,
    state: NumericMetricState,
}

impl SparsityMetric {
    /// Counts exact zeros: the weights pWD has removed for good (p < 2, λ > 0).
    pub fn exact_zeros() -> Self {
        Self::new("Sparsity (exact zeros)", Count::ExactZeros)
    }

    /// Counts `|w| < threshold`, the threshold the step's [`SparsityInput`] was taken with
    /// (the paper reports 1e-13).
    pub fn below_threshold() -> Self {
        Self::new("Sparsity (below threshold)", Count::BelowThreshold)
    }

    fn new(name: &str, count: Count) -> Self {
        Self {
            name: Arc::new(name.to_string()),
            count,
            state: NumericMetricState::new(),
        }
    }

    /// The sparse share of `input`, in percent (0 without decayed weights).
    fn percent(&self, input: &SparsityInput) -> f64 {
        let sparse = match self.count {
            Count::ExactZeros => input.zeros,
            Count::BelowThreshold => input.below_threshold,
        };
        if input.params == 0 {
            0.0
        } else {
            100.0 * sparse as f64 / input.params as f64
        }
    }

    fn format(&self) -> FormatOptions {
        FormatOptions::new(self.name.clone()).unit("%").precision(2)
    }
}

impl Metric for SparsityMetric {
    type Input = SparsityInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn description(&self) -> Option<String> {
        Some(match self.count {
            Count::ExactZeros => "share of the decayed weights that are exactly 0".to_string(),
            Count::BelowThreshold => "share of the decayed weights below the threshold".into(),
        })
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("%".to_string()),
            higher_is_better: true,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &SparsityInput,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        self.state.update(self.percent(item), 1);
        Ok(self.state.compute_update(self.format()))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self.state.compute_final(self.format()))
    }

    fn clear(&mut self) {
        self.state.reset();
    }
}

impl Numeric for SparsityMetric {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }

    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }

    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, Tensor};

    /// A 4x2 layer whose weight is `w` (burn's [in, out] layout) and whose bias is zero.
    fn layer(w: [f32; 8]) -> Linear {
        let device = Device::default();
        let mut layer: Linear = LinearConfig::new(4, 2).init(&device);
        layer.weight = layer
            .weight
            .map(|_| Tensor::<1>::from_floats(w, &device).reshape([4, 2]));
        layer
    }

    fn metadata() -> MetricMetadata {
        MetricMetadata {
            progress: burn::data::dataloader::Progress {
                items_processed: 1,
                items_total: 1,
                unit: None,
            },
            iteration: Some(1),
            lr: None,
        }
    }

    #[test]
    fn the_input_counts_the_weight_matrices_not_the_bias() {
        let model = layer([0.0, 0.0, 1e-20, 0.5, -0.5, 0.0, 2.0, 1e-14]);
        let input = SparsityInput::of(&model, 1e-13);
        // the bias (2 zeros) does not count: 8 weights, 3 exact zeros, 5 below 1e-13
        assert_eq!(
            (input.params, input.zeros, input.below_threshold),
            (8, 3, 5)
        );
    }

    #[test]
    fn the_metric_reports_percent_and_its_epoch_mean() {
        let mut exact = SparsityMetric::exact_zeros();
        let mut below = SparsityMetric::below_threshold();
        let sparse = SparsityInput::of(&layer([0.0; 8]), 1e-13);
        let half = SparsityInput::of(&layer([0.0, 0.0, 0.0, 1e-20, 1.0, 1.0, 1.0, 1.0]), 1e-13);
        for input in [half, sparse] {
            exact.update(&input, &metadata()).unwrap();
            below.update(&input, &metadata()).unwrap();
        }
        let number = |entry: NumericEntry| match entry {
            NumericEntry::Value(v) | NumericEntry::Final(v) => v,
            NumericEntry::Aggregated {
                aggregated_value, ..
            } => aggregated_value,
        };
        // the last step's value, and the mean over the epoch's steps
        assert_eq!(number(exact.value().unwrap()), 100.0);
        assert_eq!(number(below.value().unwrap()), 100.0);
        assert_eq!(number(exact.running_value().unwrap()), (37.5 + 100.0) / 2.0);
        assert_eq!(number(below.final_value()), (50.0 + 100.0) / 2.0);
        assert!(exact.name().contains("exact zeros"));
        exact.clear();
        assert!(number(exact.value().unwrap()).is_nan(), "cleared");
    }
}
