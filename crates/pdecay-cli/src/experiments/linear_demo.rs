//! The library demo: recover a sparse linear teacher with pAdam, next to plain Adam.
//!
//! `y = X·w* + noise` with `w*` non-zero on a known support. Both optimizers fit a linear layer
//! by full-batch gradient descent; pAdam's decay drives the weights off the support to exact
//! zero, so its non-zeros *are* the recovered support.

use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use clap::Args;
use pdecay::schedule::Schedule;
use pdecay::sparsity::DEFAULT_THRESHOLD;
use pdecay_burn::{PNormConfig, SparseOptimizer, adam_no_decay, padam};

/// Settings of the demo (all have defaults: `pdecay` alone runs it).
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of input features.
    #[arg(long, default_value_t = 200)]
    pub features: usize,
    /// Number of non-zero teacher weights (the true support).
    #[arg(long, default_value_t = 10)]
    pub support: usize,
    /// Training examples (as many again for the test set).
    #[arg(long, default_value_t = 400)]
    pub samples: usize,
    /// Optimizer steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Minibatch size.
    #[arg(long, default_value_t = 20)]
    pub batch_size: usize,
    /// Peak learning rate of both optimizers (cosine decay to lr/100 over the steps).
    #[arg(long, default_value_t = 1e-2)]
    pub lr: f64,
    /// pWD's norm p.
    #[arg(long, default_value_t = 0.8)]
    pub p: f64,
    /// pWD's strength lambda.
    #[arg(long = "lambda", default_value_t = 3e-2)]
    pub lambda: f64,
    /// Standard deviation of the label noise.
    #[arg(long, default_value_t = 0.05)]
    pub noise: f64,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl Default for DemoArgs {
    /// The defaults declared on the flags above (one source of truth).
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            args: DemoArgs,
        }
        <Defaults as clap::Parser>::parse_from(["demo"]).args
    }
}

/// What one optimizer achieved.
#[derive(Debug, Clone)]
pub struct DemoResult {
    /// Optimizer name.
    pub name: String,
    /// Mean squared error on the test set.
    pub test_mse: f64,
    /// Share of weights with |w| < 1e-13.
    pub sparsity: f64,
    /// Weights with |w| >= 1e-13.
    pub nonzero: usize,
    /// Share of the true support among the non-zeros (1 = no false positives).
    pub precision: f64,
    /// Share of the true support found (1 = nothing missed).
    pub recall: f64,
    /// Wall time of training.
    pub seconds: f64,
}

struct Problem {
    x_train: Tensor<2>,
    y_train: Tensor<2>,
    x_test: Tensor<2>,
    y_test: Tensor<2>,
    support: Vec<bool>,
}

fn make_problem(args: &DemoArgs, device: &Device) -> Problem {
    device.seed(args.seed);
    // Teacher: the first `support` features carry weights of magnitude 0.5-1.5, signs alternate.
    let teacher: Vec<f32> = (0..args.features)
        .map(|i| match i < args.support {
            true => {
                (0.5 + (i as f32 / args.support.max(1) as f32))
                    * if i % 2 == 0 { 1.0 } else { -1.0 }
            }
            false => 0.0,
        })
        .collect();
    let support = teacher.iter().map(|w| *w != 0.0).collect();
    let w = Tensor::<2>::from_data(TensorData::new(teacher, [args.features, 1]), device);
    let sample = |n| {
        let x = Tensor::<2>::random([n, args.features], Distribution::Normal(0.0, 1.0), device);
        let noise = Tensor::<2>::random([n, 1], Distribution::Normal(0.0, args.noise), device);
        let y = x.clone().matmul(w.clone()) + noise;
        (x, y)
    };
    let (x_train, y_train) = sample(args.samples);
    let (x_test, y_test) = sample(args.samples);
    Problem {
        x_train,
        y_train,
        x_test,
        y_test,
        support,
    }
}

/// Splits the training set into fixed minibatches, cycled through in order. Their gradient
/// noise matters: it gives Adam's second moment a floor, so weights off the support see small
/// normalized steps and pWD drives them to zero (full-batch Adam normalizes even a vanishing
/// gradient to O(1) steps).
fn minibatches(problem: &Problem, batch_size: usize) -> Vec<(Tensor<2>, Tensor<2>)> {
    let n = problem.x_train.dims()[0];
    (0..n)
        .step_by(batch_size)
        .map(|start| {
            let end = (start + batch_size).min(n);
            (
                problem.x_train.clone().slice(start..end),
                problem.y_train.clone().slice(start..end),
            )
        })
        .collect()
}

fn mse(model: &Linear, x: &Tensor<2>, y: &Tensor<2>) -> Tensor<1> {
    (model.forward(x.clone()) - y.clone()).square().mean()
}

fn fit(
    name: &str,
    mut optim: SparseOptimizer,
    problem: &Problem,
    args: &DemoArgs,
    device: &Device,
) -> Result<DemoResult> {
    device.seed(args.seed + 1);
    let mut model = LinearConfig::new(args.features, 1).init(device);
    // The reference schedule (cosine to lr/100): as the lr falls, Adam's steps on the weights
    // off the support shrink below pWD's pull and they settle at exact zero.
    let schedule = Schedule::warmup_cosine(args.lr, 0, args.steps as u64, 0.01)?;
    let start = Instant::now();
    let batches = minibatches(problem, args.batch_size);
    for step in 0..args.steps {
        let lr = schedule.value(step as u64);
        let (x, y) = &batches[step % batches.len()];
        let loss = mse(&model, x, y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim
            .step(lr, model, grads)
            .with_context(|| format!("{name}: training failed at step {step}"))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let test_mse =
        mse(&model.clone().no_grad(), &problem.x_test, &problem.y_test).into_scalar::<f32>() as f64;
    let weights = model
        .weight
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .context("reading weights")?;
    let found: Vec<bool> = weights
        .iter()
        .map(|w| (w.abs() as f64) >= DEFAULT_THRESHOLD)
        .collect();
    let nonzero = found.iter().filter(|f| **f).count();
    let hits = found
        .iter()
        .zip(&problem.support)
        .filter(|(f, s)| **f && **s)
        .count();
    let truth = problem.support.iter().filter(|s| **s).count();
    Ok(DemoResult {
        name: name.to_string(),
        test_mse,
        sparsity: 1.0 - nonzero as f64 / weights.len() as f64,
        nonzero,
        precision: if nonzero == 0 {
            0.0
        } else {
            hits as f64 / nonzero as f64
        },
        recall: if truth == 0 {
            1.0
        } else {
            hits as f64 / truth as f64
        },
        seconds,
    })
}

/// The most values (samples x features, both sets, and the weights) the demo allocates: 400 MB.
const MAX_DEMO_VALUES: u128 = 100_000_000;

/// Runs Adam and pAdam on the same problem; returns their results (Adam first).
pub fn compare(args: &DemoArgs) -> Result<Vec<DemoResult>> {
    anyhow::ensure!(
        args.features > 0 && args.samples > 0 && args.batch_size > 0,
        "--features, --samples and --batch-size must be at least 1"
    );
    anyhow::ensure!(
        args.support <= args.features,
        "--support ({}) cannot exceed --features ({})",
        args.support,
        args.features
    );
    anyhow::ensure!(
        args.lr.is_finite() && args.lr > 0.0,
        "--lr must be a finite number > 0, got {}",
        args.lr
    );
    anyhow::ensure!(
        args.noise.is_finite() && args.noise >= 0.0,
        "--noise (the label noise's standard deviation) must be a finite number >= 0, got {}",
        args.noise
    );
    // two data sets of samples x features, and a weight of features per model
    let values = (args.samples as u128 * 2 + 4).saturating_mul(args.features as u128);
    anyhow::ensure!(
        values <= MAX_DEMO_VALUES,
        "--samples {} x --features {} is {values} values, more than the demo holds ({MAX_DEMO_VALUES}); it is a small demo: lower them",
        args.samples,
        args.features
    );
    let device = Device::flex().autodiff();
    let problem = make_problem(args, &device);
    let pwd = padam(&PNormConfig::new(args.p, args.lambda))
        .context("invalid pWD settings (--p, --lambda)")?;
    Ok(vec![
        fit(
            "Adam",
            SparseOptimizer::new(adam_no_decay()),
            &problem,
            args,
            &device,
        )?,
        fit(
            &format!("pAdam (p={}, lambda={})", args.p, args.lambda),
            SparseOptimizer::new(pwd),
            &problem,
            args,
            &device,
        )?,
    ])
}

/// Prints the side-by-side table.
pub fn run(args: &DemoArgs) -> Result<()> {
    println!(
        "pdecay demo: sparse linear teacher, {} features of which {} non-zero, {} train / {} test samples, {} steps of batch {}, lr {} cosine to lr/100\n",
        args.features,
        args.support,
        args.samples,
        args.samples,
        args.steps,
        args.batch_size,
        args.lr
    );
    let results = compare(args)?;
    println!(
        "{:<26} {:>10} {:>9} {:>9} {:>10} {:>7} {:>7}",
        "optimizer", "test MSE", "sparsity", "non-zero", "precision", "recall", "time"
    );
    for r in &results {
        println!(
            "{:<26} {:>10.5} {:>8.1}% {:>9} {:>10.3} {:>7.3} {:>6.2}s",
            r.name,
            r.test_mse,
            100.0 * r.sparsity,
            r.nonzero,
            r.precision,
            r.recall,
            r.seconds
        );
    }
    println!(
        "\nsparsity: share of weights with |w| < {DEFAULT_THRESHOLD:e}; precision/recall of the non-zeros against the teacher's support."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padam_recovers_the_support_and_adam_does_not_sparsify() {
        let args = DemoArgs::default();
        assert_eq!((args.features, args.support, args.p), (200, 10, 0.8));
        let results = compare(&args).unwrap();
        let (adam, padam) = (&results[0], &results[1]);
        assert_eq!(adam.sparsity, 0.0);
        assert_eq!(adam.recall, 1.0);
        assert!(padam.recall == 1.0, "pAdam lost a true weight: {padam:?}");
        assert!(
            padam.precision >= 0.9,
            "pAdam kept false weights: {padam:?}"
        );
        assert!(padam.sparsity >= 0.9, "{padam:?}");
        // pWD shrinks the kept weights a little: test error stays near the noise floor
        assert!(padam.test_mse < adam.test_mse, "{padam:?} vs {adam:?}");
    }

    #[test]
    fn bad_demo_settings_are_errors() {
        let bad = DemoArgs {
            support: 500,
            ..DemoArgs::default()
        };
        assert!(compare(&bad).unwrap_err().to_string().contains("--support"));
        let bad = DemoArgs {
            p: -1.0,
            ..DemoArgs::default()
        };
        let msg = format!("{:#}", compare(&bad).unwrap_err());
        assert!(msg.contains("p = -1"), "{msg}");
        // these panicked or aborted
        for (bad, words) in [
            (
                DemoArgs {
                    noise: f64::NAN,
                    ..DemoArgs::default()
                },
                "--noise",
            ),
            (
                DemoArgs {
                    features: usize::MAX,
                    ..DemoArgs::default()
                },
                "--features",
            ),
            (
                DemoArgs {
                    features: 100_000_000,
                    ..DemoArgs::default()
                },
                "more than the demo holds",
            ),
            (
                DemoArgs {
                    samples: usize::MAX,
                    ..DemoArgs::default()
                },
                "--samples",
            ),
        ] {
            let msg = format!("{:#}", compare(&bad).unwrap_err());
            assert!(msg.contains(words), "{msg}");
        }
    }
}
