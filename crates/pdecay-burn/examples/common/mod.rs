//! The examples' data: a task every user has, no download. Each example is a `[[example]]`
//! of pdecay-burn and includes this file with `mod common;`.
//!
//! 64 input features drawn from N(0, 1); the label (10 classes) is the argmax of a sparse linear
//! teacher that reads only the first [`USED`] features. A network that finds the task can drop
//! the other 56 inputs, which is what pWD does and what the examples measure.
#![allow(dead_code)] // each example uses part of it

use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Distribution, Int, Tensor};

/// Input features.
pub const FEATURES: usize = 64;
/// Classes.
pub const CLASSES: usize = 10;
/// The features the teacher reads: `0..USED`.
pub const USED: usize = 8;

/// Examples of the teacher task, on one device.
pub struct Task {
    /// Inputs `[n, FEATURES]`.
    pub x: Tensor<2>,
    /// Labels `[n]`.
    pub y: Tensor<1, Int>,
}

impl Task {
    /// `n` examples drawn with `seed` on `device` (the teacher is the same for every seed).
    pub fn new(n: usize, seed: u64, device: &Device) -> Self {
        device.seed(7);
        let teacher = Tensor::<2>::random([USED, CLASSES], Distribution::Normal(0.0, 1.0), device);
        device.seed(seed);
        let x = Tensor::<2>::random([n, FEATURES], Distribution::Normal(0.0, 1.0), device);
        let scores = x.clone().slice([0..n, 0..USED]).matmul(teacher);
        let y = scores.argmax(1).squeeze_dim::<1>(1);
        Self { x, y }
    }

    /// Examples.
    pub fn len(&self) -> usize {
        self.y.dims()[0]
    }

    /// Examples `range`: inputs `[batch, FEATURES]`, labels `[batch]`.
    pub fn batch(&self, range: std::ops::Range<usize>) -> (Tensor<2>, Tensor<1, Int>) {
        (
            self.x.clone().slice([range.clone(), 0..FEATURES]),
            self.y.clone().slice([range]),
        )
    }
}

/// Cross-entropy of `logits` against `labels`.
pub fn loss(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    CrossEntropyLossConfig::new()
        .init(&logits.device())
        .forward(logits, labels)
}

/// The share of `labels` that `logits` ranks first.
pub fn accuracy(logits: Tensor<2>, labels: Tensor<1, Int>) -> f64 {
    let n = labels.dims()[0];
    let correct = logits
        .argmax(1)
        .squeeze_dim::<1>(1)
        .equal(labels)
        .int()
        .sum()
        .into_scalar::<i64>();
    correct as f64 / n as f64
}

/// The example's size from its first command-line argument (CI runs small ones), or `default`.
pub fn size_arg(default: usize) -> usize {
    std::env::args()
        .nth(1)
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("the argument is a count, got {a}"))
        })
        .unwrap_or(default)
}
