//! How runs are scored: test accuracy for the image classifiers, validation loss for the GPT;
//! which way is better, what counts as matching AdamW, and the Pareto front of score against
//! sparsity.

/// What runs are scored by: the figures' labels and which way is better.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// Figure title word, e.g. "Test accuracy".
    pub title: &'static str,
    /// Axis label, e.g. "test accuracy (%)".
    pub axis: &'static str,
    /// Whether a larger value is better.
    pub higher_is_better: bool,
    /// How far from AdamW's value still counts as matching it, in the score's unit.
    pub tolerance: f64,
    /// The tolerance in words, e.g. "0.5 pp".
    pub tolerance_words: &'static str,
}

impl Score {
    /// The image classifiers: test accuracy in percent, within 0.5 pp of AdamW.
    pub const TEST_ACCURACY: Self = Self {
        title: "Test accuracy",
        axis: "test accuracy (%)",
        higher_is_better: true,
        tolerance: 0.5,
        tolerance_words: "0.5 pp",
    };

    /// The GPT: validation loss (cross-entropy, nats per character), within 0.05 of AdamW.
    pub const VAL_LOSS: Self = Self {
        title: "Validation loss",
        axis: "validation loss (nats/char)",
        higher_is_better: false,
        tolerance: 0.05,
        tolerance_words: "0.05",
    };

    /// Whether `a` is strictly better than `b`.
    pub fn better(&self, a: f64, b: f64) -> bool {
        if self.higher_is_better { a > b } else { a < b }
    }

    /// The worst value that still matches `reference` within the tolerance.
    pub fn bound(&self, reference: f64) -> f64 {
        if self.higher_is_better {
            reference - self.tolerance
        } else {
            reference + self.tolerance
        }
    }

    /// Whether `value` matches `reference` within the tolerance.
    pub fn within(&self, value: f64, reference: f64) -> bool {
        let bound = self.bound(reference);
        value == bound || self.better(value, bound)
    }
}

/// One run in the score-sparsity plane.
#[derive(Debug, Clone)]
pub struct RunPoint {
    /// The legend group (the optimizer).
    pub group: String,
    /// Sparsity in percent.
    pub sparsity: f64,
    /// The run's score (test accuracy in percent, or validation loss).
    pub score: f64,
}

/// The runs no other run beats in both sparsity and score, by increasing sparsity.
pub fn pareto_front(points: &[RunPoint], score: Score) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points.iter().map(|p| (p.sparsity, p.score)).collect();
    // sparsest first; among equally sparse runs the best first
    sorted.sort_by(|a, b| {
        let by_score = if score.higher_is_better {
            b.1.total_cmp(&a.1)
        } else {
            a.1.total_cmp(&b.1)
        };
        b.0.total_cmp(&a.0).then(by_score)
    });
    let mut front: Vec<(f64, f64)> = Vec::new();
    for (s, a) in sorted {
        if front.last().is_none_or(|&(_, best)| score.better(a, best)) {
            front.push((s, a));
        }
    }
    front.reverse();
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(sparsity: f64, score: f64) -> RunPoint {
        RunPoint {
            group: "g".into(),
            sparsity,
            score,
        }
    }

    #[test]
    fn the_pareto_front_keeps_exactly_the_undominated_runs() {
        let points = [
            point(0.0, 90.0),
            point(50.0, 89.0),
            point(60.0, 89.5), // dominates (50, 89)
            point(80.0, 88.0),
            point(70.0, 87.0), // dominated by (80, 88)
            point(95.0, 85.0),
            point(95.0, 84.0), // as sparse as (95, 85), less accurate
        ];
        assert_eq!(
            pareto_front(&points, Score::TEST_ACCURACY),
            [(0.0, 90.0), (60.0, 89.5), (80.0, 88.0), (95.0, 85.0)]
        );
    }

    #[test]
    fn for_a_loss_the_pareto_front_keeps_the_lowest() {
        let points = [
            point(0.0, 1.90),
            point(60.0, 1.98),
            point(65.0, 1.95), // dominates (60, 1.98)
            point(92.0, 2.15),
            point(92.0, 2.20), // as sparse, higher loss
            point(80.0, 2.30), // dominated by (92, 2.15)
        ];
        assert_eq!(
            pareto_front(&points, Score::VAL_LOSS),
            [(0.0, 1.90), (65.0, 1.95), (92.0, 2.15)]
        );
    }

    #[test]
    fn within_counts_the_bound_on_the_right_side() {
        let acc = Score::TEST_ACCURACY;
        assert!(acc.within(89.5, 90.0) && acc.within(95.0, 90.0));
        assert!(!acc.within(89.49, 90.0));
        let loss = Score::VAL_LOSS;
        assert!(loss.within(1.95, 1.90) && loss.within(1.5, 1.90));
        assert!(!loss.within(1.951, 1.90));
        assert!((loss.bound(2.0) - 2.05).abs() < 1e-12);
        assert!((acc.bound(90.0) - 89.5).abs() < 1e-12);
    }
}
