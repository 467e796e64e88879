//! Throughput of the fused pWD slice kernel against a plain scaled copy (memory bound floor).
//!
//! `cargo bench -p pdecay --bench kernel`

use pdecay::factor::DecayCoefficients;
use pdecay::kernel::{AdamStep, adam_pwd_in_place, apply_decay_in_place};

const SIZES: [usize; 3] = [250_000, 1_000_000, 10_000_000];

fn data(n: usize) -> (Vec<f32>, Vec<f32>) {
    let reference: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.001).sin() * 0.05).collect();
    let stepped = reference.iter().map(|r| r * 0.999).collect();
    (stepped, reference)
}

#[divan::bench(args = SIZES)]
fn pwd_kernel_p08(bencher: divan::Bencher, n: usize) {
    let (mut stepped, reference) = data(n);
    let c = DecayCoefficients::new(0.8, 1e-3, 1e-3, 0.0).unwrap();
    bencher.bench_local(|| apply_decay_in_place(&mut stepped, &reference, &c));
}

#[divan::bench(args = SIZES)]
fn fused_adam_pwd_p08(bencher: divan::Bencher, n: usize) {
    let (mut w, g) = data(n);
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let c = DecayCoefficients::new(0.8, 1e-3, 1e-3, 0.0).unwrap();
    let adam = AdamStep {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        time: 10,
    };
    bencher.bench_local(|| adam_pwd_in_place(&mut w, &g, &mut m, &mut v, &adam, &c));
}

#[divan::bench(args = SIZES)]
fn multiply_two_slices(bencher: divan::Bencher, n: usize) {
    let (mut stepped, reference) = data(n);
    bencher.bench_local(|| {
        for (w, r) in stepped.iter_mut().zip(&reference) {
            *w *= 1.0 - 1e-9 * r;
        }
    });
}

fn main() {
    divan::main();
}
