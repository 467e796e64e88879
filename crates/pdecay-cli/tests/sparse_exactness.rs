//! Sparse training changes a run by summation order only: with pWD's absorbing zeros, the
//! products over the non-zeros compute the dense products' values in another order, and the
//! dead weights' gradients they skip are never used.
//!
//! The tolerance is derived, not picked:
//! - At step 0 the weights are the same, so the two losses differ only by the rounding of
//!   the products: a dot product of length `n` computed in two orders differs by at most
//!   `γ_n = n·ε/(1 - n·ε)` of the sum of its terms' magnitudes (Higham, Accuracy and Stability
//!   of Numerical Algorithms, §3.1), `ε = 2⁻²⁴`; over the network's widest fan-in (784 inputs,
//!   or a 3x3 convolution's 9·channels) and three layers that is under 2e-4 of the loss.
//! - After it, training is chaotic at this scale: any rounding-sized difference grows, step
//!   by step, until it saturates (measured here: within about 100 steps, at about 1e-3 of the
//!   loss). The reference is therefore the dense run itself under a rounding-sized
//!   perturbation: its lr scaled by `1 ± 1e-6` and `1 ± 2e-6`, the typical relative size of a
//!   summation-order difference in a gradient (`√n·ε` for `n` ≈ 1,000 terms). Window by
//!   window, the sparse run must stay within twice the largest gap the perturbations open over
//!   the run, and it must end with the same accuracy and sparsity within twice the largest of
//!   their end gaps. Each perturbation's end gap is one draw of where a chaotic trajectory
//!   lands, so one alone can sit well below the spread: the CNN's four end-sparsity gaps were
//!   0.8e-4 to 2.6e-4, the sparse run's 4.1e-4 with the direct convolution products and 4.9e-4
//!   through lanes (13 of 26,632 weights).
//!   (A dense run on one thread instead of two is no such reference: flex's products split
//!   the work over outputs, not over the sums, and the two runs were bit-identical.)

use pdecay_cli::config::{OptimKind, SparseTraining, TrainConfig};
use pdecay_cli::data::mnist;
use pdecay_cli::models::ModelKind;
use pdecay_cli::run::ClassifierSummary;
use pdecay_cli::train::{Progress, RunOptions, train_classifier};

/// The loss of every step.
#[derive(Default)]
struct StepLosses(Vec<f64>);

impl Progress for StepLosses {
    fn step(&mut self, _unit: pdecay_cli::run::Unit, _end: usize, _d: usize, _t: usize, loss: f64) {
        self.0.push(loss);
    }

    fn evaluation(&mut self, _done: usize, _total: usize, _line: &str) {}
}

fn run(config: &TrainConfig) -> (Vec<f64>, ClassifierSummary) {
    let mut losses = StepLosses::default();
    let summary = train_classifier(
        config,
        &mnist::embedded(),
        &RunOptions::default(),
        &mut losses,
    )
    .unwrap();
    (losses.0, summary)
}

/// Steps per window of the step-by-step comparison.
const WINDOW: usize = 50;

/// How many times the rounding-sized perturbation's gap the sparse run may drift: two
/// rounding-sized perturbations of one run saturate at alike sizes, not equal ones.
const SAME_SIZE: f64 = 2.0;

/// The bound at step 0 (and the floor of every window), a share of the loss: `γ_n` for
/// `n` = 784 is 4.7e-5, and three layers compound it to under 2e-4.
const ROUNDING: f64 = 2e-4;

#[test]
fn sparse_training_follows_the_dense_run_step_by_step_within_summation_order_noise() {
    for (model, epochs, batch) in [(ModelKind::Mlp, 7, 128), (ModelKind::Cnn, 2, 32)] {
        let dense = TrainConfig {
            model,
            hidden: vec![64, 32],
            cnn_widths: vec![8, 16, 32],
            epochs,
            batch_size: batch,
            optim: OptimKind::Padam,
            lambda: 0.1,
            lr: 2e-3,
            sparse_training: SparseTraining::Off,
            ..TrainConfig::default()
        };
        let sparse = TrainConfig {
            sparse_training: SparseTraining::On,
            ..dense.clone()
        };
        let perturbed = |scale: f64| TrainConfig {
            lr: dense.lr * scale,
            ..dense.clone()
        };
        let (off, off_end) = run(&dense);
        let (on, on_end) = run(&sparse);
        let noises = [2e-6, -2e-6, 1e-6, -1e-6].map(|d| run(&perturbed(1.0 + d)));
        assert!(off.len() >= 300, "{model:?}: {} steps", off.len());
        assert_eq!(on.len(), off.len());
        for (noise, _) in &noises {
            assert_eq!(noise.len(), off.len());
        }
        // step 0: the same weights, the products in another order
        assert!(
            (on[0] - off[0]).abs() <= ROUNDING * off[0],
            "{model:?} step 0: on {} off {}",
            on[0],
            off[0]
        );
        let gap = |other: &[f64], steps: std::ops::Range<usize>| {
            steps.map(|i| (other[i] - off[i]).abs()).fold(0.0, f64::max)
        };
        // the perturbations' gap over the given steps, the larger of the two
        let noise_gap = |steps: std::ops::Range<usize>| {
            noises
                .iter()
                .map(|(noise, _)| gap(noise, steps.clone()))
                .fold(0.0, f64::max)
        };
        let saturated = noise_gap(0..off.len());
        let windows: Vec<(usize, f64, f64)> = (0..off.len())
            .step_by(WINDOW)
            .map(|start| {
                let steps = start..(start + WINDOW).min(off.len());
                (start, gap(&on, steps.clone()), noise_gap(steps))
            })
            .collect();
        let loss = off.iter().fold(0.0, |a: f64, &b| a.max(b));
        let table: Vec<String> = windows
            .iter()
            .map(|(start, s, n)| format!("{start}: {s:.1e} vs {n:.1e}"))
            .collect();
        for &(start, sparse_gap, _) in &windows {
            assert!(
                sparse_gap <= SAME_SIZE * saturated + ROUNDING * loss,
                "{model:?}, steps from {start}: sparse gap {sparse_gap:.3e}, a rounding-sized perturbation's largest {saturated:.3e}\nfrom step: sparse gap vs perturbation gap {table:?}"
            );
        }
        // the run's end: accuracy and sparsity within what rounding alone moves (at least one
        // test image of the 1,000, one weight in 10,000)
        let end_gap = |what: &str, of: fn(&ClassifierSummary) -> f64, floor: f64| {
            let sparse_gap = (of(&on_end) - of(&off_end)).abs();
            let noise_gaps: Vec<f64> = noises
                .iter()
                .map(|(_, end)| (of(end) - of(&off_end)).abs())
                .collect();
            let noise_gap = noise_gaps.iter().fold(floor, |a, &b| a.max(b));
            assert!(
                sparse_gap <= SAME_SIZE * noise_gap,
                "{model:?}: end {what} gap {sparse_gap} against rounding's {noise_gaps:?}\n{on_end:?}\n{off_end:?}"
            );
            eprintln!(
                "{model:?} end {what}: sparse gap {sparse_gap:.1e}, rounding's {noise_gaps:?}"
            );
        };
        end_gap("accuracy", |s| s.final_test_accuracy, 1e-3);
        end_gap("sparsity", |s| s.sparsity, 1e-4);
        // the sparse run really ran sparse, and pWD zeroed most weights by then
        assert!(!on_end.sparse_layers.is_empty() && off_end.sparse_layers.is_empty());
        assert!(off_end.sparsity > 0.5, "{off_end:?}");
        eprintln!("{model:?} from step: sparse gap vs perturbation gap {table:?}");
    }
}
