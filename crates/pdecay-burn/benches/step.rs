//! Step time of pAdam (fused, and composed of burn's Adam and the pWD kernel or tensor ops)
//! against plain Adam and burn's AdamW (flex CPU backend).
//!
//! `cargo bench -p pdecay-burn` runs divan's timings for each optimizer and size, then a
//! side-by-side pass that alternates the optimizers step by step (so drift in machine load hits
//! all of them alike) and prints median step times and the ratios to Adam.

use std::cell::RefCell;
use std::time::Instant;

use burn::optim::Optimizer;
use burn::tensor::{Device, Distribution, Tensor};
use pdecay_burn::{Decoupled, Kernel, PNormConfig, adam_pytorch, burn_adamw_pytorch, padam};

const SIZES: [(&str, usize); 3] = [("250K", 500), ("1M", 1_000), ("10M", 3_162)];

/// One optimizer behind a uniform "take a step" interface, state carried between calls.
struct Stepper {
    name: &'static str,
    step: Box<dyn FnMut()>,
}

fn stepper<O: Optimizer>(name: &'static str, optim: O, side: usize) -> Stepper {
    let device = Device::default();
    let weight = Tensor::<2>::random([side, side], Distribution::Normal(0.0, 0.05), &device);
    let grad = Tensor::<2>::random([side, side], Distribution::Normal(0.0, 1.0), &device);
    let slot = RefCell::new((Some(weight), None));
    Stepper {
        name,
        step: Box::new(move || {
            let mut slot = slot.borrow_mut();
            let (weight, state) = (slot.0.take().unwrap(), slot.1.take());
            let (weight, state) = optim.step(1e-3, weight, grad.clone(), state);
            // Wait for the result, as a training loop's next forward pass would.
            let _ = weight.clone().slice([0..1, 0..1]).into_data();
            *slot = (Some(weight), state);
        }),
    }
}

fn steppers(side: usize) -> Vec<Stepper> {
    let pwd = PNormConfig::new(0.8, 1e-3);
    vec![
        stepper("Adam", adam_pytorch().build(), side),
        stepper("AdamW (burn)", burn_adamw_pytorch(1e-2), side),
        stepper("pAdam (fused)", padam(&pwd).unwrap(), side),
        stepper(
            "Adam + pWD kernel",
            Decoupled::new(adam_pytorch().build(), pwd.build().unwrap()),
            side,
        ),
        stepper(
            "Adam + pWD tensor ops",
            Decoupled::new(
                adam_pytorch().build(),
                pwd.clone().with_kernel(Kernel::TensorOps).build().unwrap(),
            ),
            side,
        ),
    ]
}

#[divan::bench(args = ["250K", "1M", "10M"])]
fn adam(bencher: divan::Bencher, size: &str) {
    run(bencher, size, 0);
}

#[divan::bench(args = ["250K", "1M", "10M"])]
fn adamw_burn(bencher: divan::Bencher, size: &str) {
    run(bencher, size, 1);
}

#[divan::bench(args = ["250K", "1M", "10M"])]
fn padam_fused(bencher: divan::Bencher, size: &str) {
    run(bencher, size, 2);
}

#[divan::bench(args = ["250K", "1M", "10M"])]
fn adam_then_pwd_kernel(bencher: divan::Bencher, size: &str) {
    run(bencher, size, 3);
}

#[divan::bench(args = ["250K", "1M", "10M"])]
fn adam_then_pwd_tensor_ops(bencher: divan::Bencher, size: &str) {
    run(bencher, size, 4);
}

fn side_of(size: &str) -> usize {
    SIZES.iter().find(|(name, _)| *name == size).unwrap().1
}

fn run(bencher: divan::Bencher, size: &str, which: usize) {
    let mut s = steppers(side_of(size)).swap_remove(which);
    (s.step)(); // the first step allocates the state
    bencher.bench_local(|| (s.step)());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn side_by_side() {
    println!(
        "\nside by side (alternating, median of {} steps each), ratio to Adam:",
        30
    );
    for (size, side) in SIZES {
        let mut all = steppers(side);
        let mut times = vec![Vec::new(); all.len()];
        for s in all.iter_mut() {
            (s.step)();
        }
        for _ in 0..30 {
            for (i, s) in all.iter_mut().enumerate() {
                let start = Instant::now();
                (s.step)();
                times[i].push(start.elapsed().as_secs_f64());
            }
        }
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        for (s, m) in all.iter().zip(&medians) {
            println!(
                "  {size:>3} params  {:<20} {:>8.2} ms   {:.2}x Adam",
                s.name,
                m * 1e3,
                m / medians[0]
            );
        }
    }
}

fn main() {
    divan::main();
    side_by_side();
}
