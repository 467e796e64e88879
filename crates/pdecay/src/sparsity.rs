//! Sparsity statistics: per tensor, and aggregated over decayed tensors and over all tensors.
//!
//! Two measures, as in the paper: exact zeros, and `|w| < threshold` (reference 1e-13; the
//! authors used 1e-10 for the GPT). A histogram of `log10|w|` shows how the magnitudes split
//! into a live bulk and a dead tail.

use serde::{Deserialize, Serialize};

/// The reference threshold for "effectively zero" weights.
pub const DEFAULT_THRESHOLD: f64 = 1e-13;

/// Lowest decade of the histogram: `10^-46` is below the smallest f32 subnormal.
const HIST_MIN_EXPONENT: i32 = -46;
/// Highest decade of the histogram: `10^39` is above `f32::MAX`.
const HIST_MAX_EXPONENT: i32 = 39;

/// Counts of non-zero magnitudes per decade: bin `k` holds `10^(min_exponent+k) <= |w| <
/// 10^(min_exponent+k+1)`. Exact zeros have no logarithm and are counted apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log10Histogram {
    /// The decade of the first bin.
    pub min_exponent: i32,
    /// One count per decade.
    pub counts: Vec<u64>,
    /// Exact zeros (and nothing else).
    pub zeros: u64,
}

impl Default for Log10Histogram {
    fn default() -> Self {
        Self {
            min_exponent: HIST_MIN_EXPONENT,
            counts: vec![0; (HIST_MAX_EXPONENT - HIST_MIN_EXPONENT) as usize],
            zeros: 0,
        }
    }
}

impl Log10Histogram {
    /// Adds one value. NaN and infinities go to the top bin: they are counted, not lost.
    pub fn add(&mut self, w: f32) {
        if w == 0.0 {
            self.zeros += 1;
            return;
        }
        let decade = if w.is_finite() {
            (w.abs() as f64).log10().floor() as i32
        } else {
            HIST_MAX_EXPONENT
        };
        let last = self.counts.len() - 1;
        let bin = ((decade - self.min_exponent).max(0) as usize).min(last);
        self.counts[bin] += 1;
    }

    /// Adds another histogram with the same bins.
    pub fn merge(&mut self, other: &Self) {
        debug_assert_eq!(self.min_exponent, other.min_exponent);
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.zeros += other.zeros;
    }

    /// Total number of values counted.
    pub fn total(&self) -> u64 {
        self.zeros + self.counts.iter().sum::<u64>()
    }

    /// `(lower edge of the decade, count)` for every non-empty bin, ascending.
    pub fn nonempty_bins(&self) -> Vec<(f64, u64)> {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(k, c)| (10f64.powi(self.min_exponent + k as i32), *c))
            .collect()
    }
}

/// Statistics of one tensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorSparsity {
    /// The parameter's path in the model (e.g. `fc1.weight`).
    pub name: String,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Number of values.
    pub params: u64,
    /// Whether pWD decays this tensor.
    pub decayed: bool,
    /// Values exactly 0.
    pub zeros: u64,
    /// Values with `|w| < threshold` (zeros included).
    pub below_threshold: u64,
    /// Distribution of `log10|w|`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub histogram: Option<Log10Histogram>,
}

impl TensorSparsity {
    /// Counts `values`; `histogram` decides whether the per-decade counts are kept.
    pub fn from_values(
        name: impl Into<String>,
        shape: Vec<usize>,
        decayed: bool,
        values: &[f32],
        threshold: f64,
        histogram: bool,
    ) -> Self {
        let threshold = threshold as f32;
        let mut zeros = 0;
        let mut below = 0;
        let mut hist = histogram.then(Log10Histogram::default);
        for &w in values {
            zeros += u64::from(w == 0.0);
            below += u64::from(w.abs() < threshold);
            if let Some(h) = hist.as_mut() {
                h.add(w);
            }
        }
        Self {
            name: name.into(),
            shape,
            params: values.len() as u64,
            decayed,
            zeros,
            below_threshold: below,
            histogram: hist,
        }
    }
}

/// Sums over a set of tensors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SparsityTotals {
    /// Number of tensors.
    pub tensors: u64,
    /// Number of values.
    pub params: u64,
    /// Exact zeros.
    pub zeros: u64,
    /// `|w| < threshold`.
    pub below_threshold: u64,
}

impl SparsityTotals {
    /// Share of values below the threshold; 0 for an empty set.
    pub fn sparsity(&self) -> f64 {
        ratio(self.below_threshold, self.params)
    }

    /// Share of exact zeros; 0 for an empty set.
    pub fn exact_zero_sparsity(&self) -> f64 {
        ratio(self.zeros, self.params)
    }

    /// Values at or above the threshold.
    pub fn nonzero(&self) -> u64 {
        self.params - self.below_threshold
    }

    fn add(&mut self, t: &TensorSparsity) {
        self.tensors += 1;
        self.params += t.params;
        self.zeros += t.zeros;
        self.below_threshold += t.below_threshold;
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// A model's sparsity: each tensor, and totals over decayed tensors and over all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SparsityReport {
    /// The threshold used for `below_threshold`.
    pub threshold: f64,
    /// One entry per tensor, in model order.
    pub tensors: Vec<TensorSparsity>,
}

impl SparsityReport {
    /// A report over `tensors` counted with `threshold`.
    pub fn new(threshold: f64, tensors: Vec<TensorSparsity>) -> Self {
        Self { threshold, tensors }
    }

    /// Totals over the decayed tensors.
    pub fn decayed(&self) -> SparsityTotals {
        self.totals(|t| t.decayed)
    }

    /// Totals over every tensor.
    pub fn all(&self) -> SparsityTotals {
        self.totals(|_| true)
    }

    fn totals(&self, keep: impl Fn(&TensorSparsity) -> bool) -> SparsityTotals {
        let mut totals = SparsityTotals::default();
        self.tensors
            .iter()
            .filter(|t| keep(t))
            .for_each(|t| totals.add(t));
        totals
    }

    /// The merged `log10|w|` histogram of the decayed tensors that kept one.
    pub fn decayed_histogram(&self) -> Log10Histogram {
        let mut merged = Log10Histogram::default();
        for h in self
            .tensors
            .iter()
            .filter(|t| t.decayed)
            .filter_map(|t| t.histogram.as_ref())
        {
            merged.merge(h);
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_by_hand() {
        // values away from decade edges: f32(1e-20) is 9.99999968e-21, in the decade below
        let values = [0.0, -0.0, 2e-14, -5e-13, 0.5, -2.0, 3e-20];
        let t = TensorSparsity::from_values("w", vec![7], true, &values, 1e-13, true);
        assert_eq!(t.params, 7);
        assert_eq!(t.zeros, 2);
        assert_eq!(t.below_threshold, 4); // 0, -0, 2e-14, 3e-20
        let h = t.histogram.unwrap();
        assert_eq!(h.zeros, 2);
        assert_eq!(h.total(), 7);
        let bins = h.nonempty_bins();
        // decades: 3e-20 -> 1e-20, 2e-14 -> 1e-14, 5e-13 -> 1e-13, 0.5 -> 1e-1, 2 -> 1e0
        let edges: Vec<f64> = bins.iter().map(|b| b.0).collect();
        let expect = [1e-20, 1e-14, 1e-13, 1e-1, 1e0];
        for (e, x) in edges.iter().zip(expect) {
            assert!((e / x - 1.0).abs() < 1e-9, "{edges:?}");
        }
    }

    #[test]
    fn totals_split_decayed_from_all() {
        let w = TensorSparsity::from_values(
            "fc.weight",
            vec![2, 2],
            true,
            &[0.0, 0.0, 0.0, 1.0],
            1e-13,
            false,
        );
        let b = TensorSparsity::from_values("fc.bias", vec![2], false, &[1.0, 2.0], 1e-13, false);
        let report = SparsityReport::new(1e-13, vec![w, b]);
        assert_eq!(report.decayed().params, 4);
        assert_eq!(report.decayed().sparsity(), 0.75);
        assert_eq!(report.all().params, 6);
        assert_eq!(report.all().sparsity(), 0.5);
        assert_eq!(report.all().nonzero(), 3);
        assert_eq!(SparsityTotals::default().sparsity(), 0.0);
    }

    proptest! {
        #[test]
        fn histogram_counts_every_value(values in prop::collection::vec(any::<f32>(), 0..200)) {
            let t = TensorSparsity::from_values("x", vec![values.len()], true, &values, 1e-13, true);
            prop_assert_eq!(t.histogram.unwrap().total(), values.len() as u64);
            prop_assert!(t.zeros <= t.below_threshold || values.iter().any(|v| v.is_nan()));
        }
    }
}
