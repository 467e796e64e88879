//! The main job (`pdecay` with no arguments): the MLP on the embedded Fashion-MNIST subset,
//! once with AdamW and once with pAdam, side by side.

use anyhow::Result;
use burn::tensor::Device;

use crate::config::{OptimKind, TrainConfig};
use crate::data::mnist;
use crate::run::ClassifierSummary;
use crate::train::{Progress, RunOptions, train_classifier};

/// The main job: the MLP on the embedded subset, once with AdamW and once with pAdam.
pub fn run(device: Device) -> Result<()> {
    let options = RunOptions {
        device,
        ..RunOptions::default()
    };
    let data = mnist::embedded();
    // 30 epochs of 43 steps: long enough for pWD to prune (sparsity grows with the number of
    // steps), short enough for a first look (~25 s on 2 cores).
    let base = TrainConfig {
        epochs: 30,
        lr: 3e-3,
        ..TrainConfig::default()
    };
    let runs = [
        (
            "AdamW (weight_decay 1e-2)",
            TrainConfig {
                optim: OptimKind::Adamw,
                lambda: 1e-2,
                ..base.clone()
            },
        ),
        (
            "pAdam (p 0.8, lambda 0.1)",
            TrainConfig {
                optim: OptimKind::Padam,
                p: 0.8,
                lambda: 0.1,
                ..base.clone()
            },
        ),
    ];
    println!(
        "pdecay demo: MLP 784-300-100-10 on the {} ({} train / {} test images), {} epochs, batch {}, lr {} with 1 warm-up epoch and cosine to lr/100\n",
        data.source,
        data.train.len(),
        data.test.len(),
        base.epochs,
        base.batch_size,
        base.lr
    );
    let mut results: Vec<(&str, ClassifierSummary)> = Vec::new();
    for (name, config) in &runs {
        println!("{name}:");
        results.push((
            name,
            train_classifier(config, &data, &options, &mut EveryNth(10))?,
        ));
    }
    println!(
        "\n{:<28} {:>9} {:>9} {:>18} {:>8}",
        "optimizer", "test acc", "sparsity", "non-zero params", "time"
    );
    for (name, s) in &results {
        println!(
            "{:<28} {:>8.2}% {:>8.1}% {:>9} / {:<7} {:>7.1}s",
            name,
            100.0 * s.final_test_accuracy,
            100.0 * s.sparsity,
            s.nonzero_params,
            s.total_params,
            s.wall_seconds
        );
    }
    println!(
        "\nsparsity: share of decayed weights (rank >= 2) with |w| < 1e-13. Full data: pdecay train --data DIR."
    );
    Ok(())
}

/// Prints every `n`-th epoch (and the last).
struct EveryNth(usize);

impl Progress for EveryNth {
    fn evaluation(&mut self, done: usize, total: usize, line: &str) {
        if done.is_multiple_of(self.0) || done == total {
            println!("{line}");
        }
    }
}
