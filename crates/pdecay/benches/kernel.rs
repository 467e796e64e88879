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

/// Adam's PyTorch defaults at step 10.
const ADAM: AdamStep = AdamStep {
    beta_1: 0.9,
    beta_2: 0.999,
    epsilon: 1e-8,
    time: 10,
};

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
    bencher.bench_local(|| adam_pwd_in_place(&mut w, &g, &mut m, &mut v, &ADAM, &c));
}

/// The fused pAdam step on a 1M-weight tensor with a share of its weights exactly zero
/// (scattered at random, as pWD leaves them): blocks of 16 zeros skip the step (at 99% zeros
/// 85% of the blocks, at 90% 19%, at 50% none).
#[divan::bench(args = [0.0, 0.5, 0.9, 0.99])]
fn fused_adam_pwd_p08_zero_share(bencher: divan::Bencher, zeros: f64) {
    let n = 1_000_000;
    let (mut w, g) = data(n);
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for x in &mut w {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if ((state >> 11) as f64 / (1u64 << 53) as f64) < zeros {
            *x = 0.0;
        }
    }
    let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
    let c = DecayCoefficients::new(0.8, 1e-3, 1e-3, 0.0).unwrap();
    bencher.bench_local(|| adam_pwd_in_place(&mut w, &g, &mut m, &mut v, &ADAM, &c));
}

/// The fused pAdam step on 1M weights whose Adam moments are subnormal (dead weights: a zero
/// gradient decays `m` by β₁ each step into the subnormal range), on a rayon pool of two threads
/// with and without flush-to-zero / denormals-are-zero
/// (`pdecay::kernel::flush_subnormals_on_this_thread`). Where subnormal operands cost a
/// microcode assist (Intel cores), `flushed = false` is many times slower; AMD's Zen cores
/// handle them at about full speed.
#[divan::bench(args = [false, true])]
fn fused_adam_pwd_subnormal_moments(bencher: divan::Bencher, flushed: bool) {
    let n = 1_000_000;
    let (mut w, _) = data(n);
    let g = vec![0.0f32; n];
    let tiny = f32::MIN_POSITIVE / 8.0;
    let (mut m, mut v) = (vec![tiny; n], vec![tiny; n]);
    let c = DecayCoefficients::new(0.8, 1e-3, 1e-3, 0.0).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .start_handler(move |_| {
            if flushed {
                pdecay::kernel::flush_subnormals_on_this_thread();
            }
        })
        .build()
        .unwrap();
    bencher.bench_local(|| {
        // the moments stay subnormal from one call to the next (0.9 and 0.999 per step)
        m.fill(tiny);
        v.fill(tiny);
        pool.install(|| adam_pwd_in_place(&mut w, &g, &mut m, &mut v, &ADAM, &c))
    });
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
