//! The in-place slice kernels: pWD (and Adam + pWD) over a whole tensor's worth of `f32` in one
//! pass.
//!
//! A framework adapter hands over the base optimizer's result (`stepped`, overwritten) and the
//! weights before the step (`reference`); one loop divides each by its factor's denominator, and flushes
//! results below the f32 normal range to exact zero. Subnormal floats make CPU arithmetic up to
//! 100x slower, and a weight that small is already dead under any p < 2, so the flush costs
//! nothing in accuracy and keeps later steps fast.
//!
//! The loops are written element by element so the compiler vectorises them; each is compiled
//! three times, for baseline x86-64 (SSE2), AVX2 and AVX-512F, and the widest the CPU has is
//! chosen at run time (the loops are compute bound: AVX-512 over AVX2 took the fused Adam+pWD
//! kernel from 1.60 to 1.17 ms per 1M weights on the 2-core CI machine). The power `|w|^(p-2)` is [`pow_abs`], a log2/exp2 evaluation that vectorises
//! (std's `powf` is a library call per element and does not). Measured on the 2-core CI machine
//! (AVX-512 capable) for 1M weights, single thread: std `powf` 8.4 ms, `wide`'s SIMD pow 6.1 ms
//! (SSE2) / 2.8 ms (AVX2), [`pow_abs`] in the kernel 3.8 ms (SSE2) / 1.9 ms (AVX2).

use std::f32::consts::{LN_2, LOG2_E, SQRT_2};

use rayon::prelude::*;

use crate::factor::DecayCoefficients;

/// Slices shorter than this run on the calling thread; longer ones are split across rayon's
/// pool in chunks of this size (large enough that scheduling costs nothing measurable).
const PARALLEL_CHUNK: usize = 1 << 15;

/// Sets `x` to exact 0 when `|x|` is below `f32::MIN_POSITIVE` (the smallest normal f32).
#[inline(always)]
pub fn flush_subnormal(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x }
}

/// `|x|^e` for the pWD penalty, branch-free so loops over it vectorise.
///
/// `log2|x|` from the exponent bits and the series `ln m = 2·atanh((m-1)/(m+1))` on the mantissa
/// `m ∈ [√½, √2)` (truncation error < 1e-9), then `2^y` as `2^n · e^(f·ln 2)` with `n` the nearest
/// integer and a degree-7 Taylor polynomial (|f·ln 2| <= 0.35, truncation error < 6e-9). The
/// f32 rounding of `y = e·log2|x|` dominates: relative error below `2e-7·(8 + |y|)`, i.e. 2e-6
/// at worst for weights near 1e-30. Zero and subnormal `x` give `inf` for `e < 0` (the factor is
/// then exactly 0: a dead weight stays dead) and 0 for `e > 0`; `x = inf` gives the limit; NaN
/// stays NaN; results beyond the f32 range saturate to 0 or inf.
#[inline(always)]
pub fn pow_abs(x: f32, e: f32) -> f32 {
    let bits = x.to_bits() & 0x7fff_ffff;
    let mantissa = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    let above = mantissa > SQRT_2;
    let m = if above { mantissa * 0.5 } else { mantissa };
    let k = ((bits >> 23) as i32 - 127 + above as i32) as f32;
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let ln_m =
        2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (0.2 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0)))));
    let result = exp2(e * k + e * (ln_m * LOG2_E));
    let at_zero = if e < 0.0 {
        f32::INFINITY
    } else if e > 0.0 {
        0.0
    } else {
        1.0
    };
    let result = if bits < 0x0080_0000 { at_zero } else { result };
    if bits > 0x7f80_0000 { f32::NAN } else { result }
}

/// `2^y`, branch-free so loops over it vectorise: `2^n · e^(f·ln 2)` with `n` the nearest integer
/// to `y` and a degree-7 Taylor polynomial (|f·ln 2| <= 0.35, truncation error < 6e-9, so f32
/// rounding dominates). The result is 0 for `y < -126.5` and inf for `y >= 127.5`.
#[inline(always)]
pub fn exp2(y: f32) -> f32 {
    let y = y.clamp(-150.0, 150.0);
    // Adding 1.5·2^23 rounds y to the nearest integer and leaves it in the low mantissa bits,
    // which avoids a float-to-int conversion (Rust's saturating `as` does not vectorise).
    let shifted = y + ROUND;
    let n = shifted - ROUND;
    let f = (y - n) * LN_2;
    exp_taylor(f) * pow2(shifted)
}

/// `e^x`, branch-free so loops over it vectorise, relative error below 3e-7 (f32 rounding).
///
/// Cody and Waite's reduction `x = n·ln 2 + r` with ln 2 split in two parts, so `r` is exact to
/// f32 precision even for large `n`, then the polynomial of [`exp2`]. Accurate for x in
/// [-87.3, 88.3] (the normal f32 range; beyond 88.3 it may give inf rather than f32::MAX's
/// neighbours); below -87.3 the result falls to 0 (exactly 0 from about -87.7 on), NaN stays NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // ln 2 = LN_2_HIGH + LN_2_LOW, LN_2_HIGH with its low 12 mantissa bits zero, so n·LN_2_HIGH
    // is exact for |n| < 2^12
    const LN_2_HIGH: f32 = f32::from_bits(LN_2.to_bits() & 0xffff_f000);
    const LN_2_LOW: f32 = (std::f64::consts::LN_2 - LN_2_HIGH as f64) as f32;
    let x = x.clamp(-104.0, 89.0);
    let shifted = x * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN_2_HIGH) - n * LN_2_LOW;
    exp_taylor(r) * pow2(shifted)
}

/// `1.5·2^23`: a float below 2^22 in magnitude added to it is rounded to an integer that sits in
/// the low mantissa bits.
const ROUND: f32 = 12_582_912.0;

/// `2^n` for the integer `n` that [`ROUND`] left in `shifted`'s low bits, from its exponent bits:
/// `n <= -127` gives 0, `n >= 128` gives inf.
#[inline(always)]
fn pow2(shifted: f32) -> f32 {
    let n = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    f32::from_bits(((n.clamp(-127, 128) + 127) as u32) << 23)
}

/// `e^r` for |r| <= 0.35 by its degree-7 Taylor polynomial (truncation error < 6e-9).
#[inline(always)]
fn exp_taylor(r: f32) -> f32 {
    1.0 + r
        * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))))
}

/// The f32 constants of one step, hoisted out of the loop.
#[derive(Clone, Copy)]
struct Constants {
    exponent: f32,
    lp_strength: f32,
    one_plus_l2: f32,
}

impl Constants {
    fn new(c: &DecayCoefficients) -> Self {
        Self {
            exponent: c.exponent() as f32,
            lp_strength: c.lp_strength() as f32,
            one_plus_l2: (1.0 + c.l2_strength()) as f32,
        }
    }

    /// The denominator of the factor when it is the same for every weight (no Lp term, or
    /// p = 2).
    fn constant_denominator(&self) -> Option<f32> {
        if self.lp_strength == 0.0 {
            Some(self.one_plus_l2)
        } else if self.exponent == 0.0 {
            Some(self.one_plus_l2 + self.lp_strength)
        } else {
            None
        }
    }

    /// Whether an exactly-zero weight comes out zero whatever its step: `|0|^(p-2)` is
    /// infinite for p < 2, so with `p·η·λ > 0` the denominator is.
    fn keeps_zeros(&self) -> bool {
        self.exponent < 0.0 && self.lp_strength > 0.0
    }

    /// `stepped / (1 + η·λ₂ + p·η·λ·|r|^(p-2))`: pWD applied to one weight. A true division
    /// of the stepped weight, not a factor `1/(...)` multiplied in: one rounding instead of two,
    /// which at small p is the difference between tracking the float64 trajectory as closely
    /// as plain f32 arithmetic can and drifting 4x further (tests/golden.rs in pdecay-burn).
    /// When `p·η·λ = 0` the power is never multiplied in, so `0·inf` cannot occur.
    #[inline(always)]
    fn decay(&self, stepped: f32, reference: f32) -> f32 {
        let denominator = match self.constant_denominator() {
            Some(d) => d,
            None => self.one_plus_l2 + self.lp_strength * pow_abs(reference, self.exponent),
        };
        stepped / denominator
    }
}

/// Sets flush-to-zero and denormals-are-zero on the calling thread (x86-64: MXCSR bits 15
/// and 6; elsewhere nothing): SSE and AVX arithmetic then reads subnormal inputs as zero and
/// writes zero for subnormal results. On Intel cores each operation that meets a subnormal
/// otherwise takes a microcode assist of about 100 cycles, and pWD makes them common: a dead
/// weight's gradient is 0, so its Adam moment `m` decays by β₁ each step through the
/// subnormal range (from 1e-3 it takes about 800 steps to get there and 150 more to reach 0).
/// Weights never hold subnormals (the kernels flush them), and a subnormal moment moves a
/// weight by under 1e-30 of the lr, so flushing them changes no result that training shows.
/// Set on every thread that computes: the CLI sets it on its own thread and rayon's.
pub fn flush_subnormals_on_this_thread() {
    #[cfg(target_arch = "x86_64")]
    {
        let csr = mxcsr() | MXCSR_FTZ_DAZ;
        // SAFETY: ldmxcsr loads 32 bits from a valid, aligned u32; the bits set are the two
        // documented modes, the others are the thread's own.
        unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack, readonly)) };
    }
}

/// Whether [`flush_subnormals_on_this_thread`] is in effect on the calling thread (always
/// false off x86-64).
pub fn subnormals_flushed_on_this_thread() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        mxcsr() & MXCSR_FTZ_DAZ == MXCSR_FTZ_DAZ
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6).
#[cfg(target_arch = "x86_64")]
const MXCSR_FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

#[cfg(target_arch = "x86_64")]
fn mxcsr() -> u32 {
    let mut csr = 0u32;
    // SAFETY: stmxcsr stores 32 bits into a valid, aligned u32.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
    csr
}

/// The instruction sets the kernels are compiled for, narrowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    /// Baseline x86-64 (SSE2), or any other architecture.
    Baseline = 0,
    /// AVX2 with FMA (every AVX2 CPU since 2013 has both).
    Avx2 = 1,
    /// AVX-512F.
    Avx512 = 2,
}

/// The widest level the kernels may use (see [`limit_simd`]); the CPU's own limit applies too.
static SIMD_LIMIT: std::sync::atomic::AtomicU8 =
    std::sync::atomic::AtomicU8::new(SimdLevel::Avx512 as u8);

/// Caps the instruction set every kernel of this process dispatches to at `level` (the CPU's
/// own support still applies), so tests and benchmarks can run each compiled variant; returns
/// the levels this CPU runs under that cap, narrowest first. The default is no cap.
pub fn limit_simd(level: SimdLevel) -> Vec<SimdLevel> {
    SIMD_LIMIT.store(level as u8, std::sync::atomic::Ordering::Relaxed);
    [SimdLevel::Baseline, SimdLevel::Avx2, SimdLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= level && simd_available(l))
        .collect()
}

/// Whether this CPU has `level` and [`limit_simd`] allows it.
#[doc(hidden)]
pub fn simd_allowed(level: SimdLevel) -> bool {
    level as u8 <= SIMD_LIMIT.load(std::sync::atomic::Ordering::Relaxed) && simd_available(level)
}

fn simd_available(level: SimdLevel) -> bool {
    match level {
        SimdLevel::Baseline => true,
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        }
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
        #[cfg(not(target_arch = "x86_64"))]
        _ => false,
    }
}

/// Defines `$name` running `$body` compiled for AVX-512F or AVX2 when the CPU has it (and
/// [`limit_simd`] allows it), else for the baseline.
#[macro_export]
macro_rules! dispatched {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                use $crate::kernel::{SimdLevel, simd_allowed};
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    body($($arg),*)
                }
                if simd_allowed(SimdLevel::Avx512) {
                    // SAFETY: the CPU supports AVX-512F, checked in `simd_allowed`.
                    return unsafe { avx512($($arg),*) };
                }
                if simd_allowed(SimdLevel::Avx2) {
                    // SAFETY: the CPU supports AVX2, checked in `simd_allowed`.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

dispatched! {
    /// `stepped[i] = flush(stepped[i] / d(reference[i]))` over one chunk, `1/d` the factor.
    fn decay_chunk(stepped: &mut [f32], reference: &[f32], k: Constants) {
        for (w, &r) in stepped.iter_mut().zip(reference) {
            *w = flush_subnormal(k.decay(*w, r));
        }
    }
}

dispatched! {
    /// The `late` variant over one chunk: the factor from the stepped weight itself.
    fn late_decay_chunk(stepped: &mut [f32], k: Constants) {
        for w in stepped.iter_mut() {
            *w = flush_subnormal(k.decay(*w, *w));
        }
    }
}

/// Applies pWD in place: `stepped[i] = flush(stepped[i] · f(reference[i]))` (computed as one
/// division of `stepped[i]`), `f` as in
/// [`decay_factor`](crate::factor::decay_factor).
///
/// `reference` holds the weights before the base step (the paper's pWD). Long slices are
/// processed in parallel on rayon's pool.
///
/// # Panics
/// If the two slices differ in length (a bug in the caller, not a user input).
pub fn apply_decay_in_place(stepped: &mut [f32], reference: &[f32], c: &DecayCoefficients) {
    assert_eq!(
        stepped.len(),
        reference.len(),
        "pWD kernel: stepped and reference weights must have the same length"
    );
    let k = Constants::new(c);
    if stepped.len() <= PARALLEL_CHUNK {
        decay_chunk(stepped, reference, k);
    } else {
        stepped
            .par_chunks_mut(PARALLEL_CHUNK)
            .zip(reference.par_chunks(PARALLEL_CHUNK))
            .for_each(|(s, r)| decay_chunk(s, r, k));
    }
}

/// The `late` variant: the factor is computed from the stepped weight itself.
pub fn apply_late_decay_in_place(stepped: &mut [f32], c: &DecayCoefficients) {
    let k = Constants::new(c);
    if stepped.len() <= PARALLEL_CHUNK {
        late_decay_chunk(stepped, k);
    } else {
        stepped
            .par_chunks_mut(PARALLEL_CHUNK)
            .for_each(|s| late_decay_chunk(s, k));
    }
}

/// Adam's hyper-parameters and the bias corrections of step `time` (1-based), in the form
/// burn's and PyTorch's Adam use: `update = m·c / (sqrt(v) + eps·sqrt(1 - β₂^t))` with
/// `c = sqrt(1 - β₂^t) / (1 - β₁^t)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// β₁.
    pub beta_1: f32,
    /// β₂.
    pub beta_2: f32,
    /// ε.
    pub epsilon: f32,
    /// The step number, 1 on the first step.
    pub time: u32,
}

/// The per-step constants of the fused Adam loop.
#[derive(Clone, Copy)]
struct AdamConstants {
    beta_1: f32,
    beta_2: f32,
    combined: f32,
    epsilon: f32,
    lr: f32,
}

impl AdamStep {
    fn constants(&self, lr: f32) -> AdamConstants {
        let t = self.time as i32;
        let bias_correction2_sqrt = (1.0 - self.beta_2.powi(t)).sqrt();
        AdamConstants {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            combined: bias_correction2_sqrt / (1.0 - self.beta_1.powi(t)),
            epsilon: self.epsilon * bias_correction2_sqrt,
            lr,
        }
    }
}

/// Weights per block that [`adam_pwd_in_place`] checks for being all dead (16: one AVX-512
/// register; at 99% zeros 85% of random blocks are dead, at 90% 19%).
const DEAD_BLOCK: usize = 16;

/// Adam's moment updates for one weight.
#[inline(always)]
fn adam_moments(g: f32, m: &mut f32, v: &mut f32, a: &AdamConstants) {
    *m = *m * a.beta_1 + g * (1.0 - a.beta_1);
    *v = *v * a.beta_2 + g * g * (1.0 - a.beta_2);
}

/// Adam then pWD on some weights.
#[inline(always)]
fn adam_pwd_weights(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    a: &AdamConstants,
    k: &Constants,
) {
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        adam_moments(g, m, v, a);
        let stepped = *w - (*m * a.combined / (v.sqrt() + a.epsilon)) * a.lr;
        *w = flush_subnormal(k.decay(stepped, *w));
    }
}

dispatched! {
    /// Adam then pWD on one chunk, a block of [`DEAD_BLOCK`] weights at a time. Where zeros
    /// are absorbing (p < 2, `p·η·λ > 0`) a block of exactly-zero weights gets its moments
    /// only: pWD would return its weights as zeros whatever the step, so the step, the power
    /// and the division are skipped (the moments are still kept as Adam keeps them, so a run
    /// whose λ later reaches 0 goes on exactly as it would have). Only the sign of such a zero
    /// can differ from the full computation's (`±0 / ∞`).
    fn adam_pwd_chunk(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], a: AdamConstants, k: Constants) {
        let absorbing = k.keeps_zeros();
        let whole = w.len() / DEAD_BLOCK * DEAD_BLOCK;
        let (w, w_rest) = w.split_at_mut(whole);
        let (g, g_rest) = g.split_at(whole);
        let (m, m_rest) = m.split_at_mut(whole);
        let (v, v_rest) = v.split_at_mut(whole);
        let blocks = w
            .chunks_exact_mut(DEAD_BLOCK)
            .zip(g.chunks_exact(DEAD_BLOCK))
            .zip(m.chunks_exact_mut(DEAD_BLOCK))
            .zip(v.chunks_exact_mut(DEAD_BLOCK));
        for (((w, g), m), v) in blocks {
            if absorbing && w.iter().all(|&x| x == 0.0) {
                for ((&g, m), v) in g.iter().zip(m.iter_mut()).zip(v.iter_mut()) {
                    adam_moments(g, m, v, &a);
                }
            } else {
                adam_pwd_weights(w, g, m, v, &a, &k);
            }
        }
        adam_pwd_weights(w_rest, g_rest, m_rest, v_rest, &a, &k);
    }
}

/// Adam followed by pWD, fused into one pass over memory (pAdam):
///
/// ```text
/// m ← β₁·m + (1-β₁)·g          v ← β₂·v + (1-β₂)·g²
/// w_step = w - η·m·c/(sqrt(v) + ε')
/// w ← flush(w_step · f(w))     f as in `decay_factor`, from the weight before the step
///                              (one division of w_step)
/// ```
///
/// The same arithmetic, in the same order, as burn's `Adam` followed by
/// [`apply_decay_in_place`], so both paths give the same bits. Long slices run in parallel.
///
/// # Panics
/// If the four slices differ in length (a bug in the caller).
pub fn adam_pwd_in_place(
    weights: &mut [f32],
    grads: &[f32],
    moment_1: &mut [f32],
    moment_2: &mut [f32],
    adam: &AdamStep,
    c: &DecayCoefficients,
) {
    let n = weights.len();
    assert!(
        grads.len() == n && moment_1.len() == n && moment_2.len() == n,
        "fused pAdam: weights, gradients and moments must have the same length"
    );
    let k = Constants::new(c);
    let a = adam.constants(c.lr() as f32);
    if n <= PARALLEL_CHUNK {
        adam_pwd_chunk(weights, grads, moment_1, moment_2, a, k);
    } else {
        weights
            .par_chunks_mut(PARALLEL_CHUNK)
            .zip(grads.par_chunks(PARALLEL_CHUNK))
            .zip(moment_1.par_chunks_mut(PARALLEL_CHUNK))
            .zip(moment_2.par_chunks_mut(PARALLEL_CHUNK))
            .for_each(|(((w, g), m), v)| adam_pwd_chunk(w, g, m, v, a, k));
    }
}

/// `(Φ(x), φ(x))`: the standard normal distribution function and density, from Abramowitz and
/// Stegun's formula 7.1.26 for `erfc` (|error of Φ| <= 1.5e-7, absolute) and the branch-free
/// [`exp`], so loops over it vectorise. Writing `Φ(-|x|)` as the formula's product (not
/// `1 - erf`) avoids cancellation in the negative tail.
#[inline(always)]
pub fn normal_cdf_and_density(x: f32) -> (f32, f32) {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_72,
        1.421_413_8,
        -1.453_152_1,
        1.061_405_4,
    ];
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    let u = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let gaussian = exp(-u * u);
    let t = 1.0 / (1.0 + P * u);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    // Φ(-|x|) = erfc(|x|/√2) / 2
    let lower_tail = 0.5 * poly * gaussian;
    let cdf = if x >= 0.0 {
        1.0 - lower_tail
    } else {
        lower_tail
    };
    (cdf, FRAC_1_SQRT_2PI * gaussian)
}

/// The exact GELU `x·Φ(x)` of one value, with [`normal_cdf_and_density`]'s `Φ`.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    x * normal_cdf_and_density(x).0
}

/// Partial sums per reduction in [`lane_sum`]: one AVX-512 register.
pub const SUM_LANES: usize = 16;

/// `Σ_i f(a_i, b_i, c_i)` over the slices' common length, in [`SUM_LANES`] partial sums (`b`
/// and `c` may repeat `a` where the sum reads fewer slices). f32 addition is not associative,
/// so one running sum is a chain of dependent adds that the compiler must keep in order; the
/// partial sums vectorise. Inlined into each caller, so it takes the caller's SIMD level. The
/// order is fixed (lanes, then the partial sums in order, then the tail), so a sum does not
/// depend on threads or SIMD level.
#[inline(always)]
pub fn lane_sum(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let mut partial = [0.0f32; SUM_LANES];
    let chunks = |v| <[f32]>::chunks_exact(v, SUM_LANES);
    let (a_chunks, b_chunks, c_chunks) = (chunks(a), chunks(b), chunks(c));
    let tail: f32 = (a_chunks.remainder().iter())
        .zip(b_chunks.remainder())
        .zip(c_chunks.remainder())
        .map(|((&a, &b), &c)| f(a, b, c))
        .sum();
    for ((a, b), c) in a_chunks.zip(b_chunks).zip(c_chunks) {
        for lane in 0..SUM_LANES {
            partial[lane] += f(a[lane], b[lane], c[lane]);
        }
    }
    partial.iter().sum::<f32>() + tail
}

/// `[a·b_0, a·b_1, a·b_2, a·b_3]`, each dot product summed exactly as
/// `lane_sum(a, b_j, b_j, |x, y, _| x * y)` sums it (same partial sums, same order, same
/// bits), but the four sums advance together: four independent chains of adds keep the adder
/// busy where one chain waits on each add's latency, and each chunk of `a` is loaded once for
/// all four. (Written out for four: a loop over the `b`s is not unrolled into registers.)
///
/// # Panics
/// If some `b_j` is shorter than `a`.
#[inline(always)]
pub fn lane_dots(a: &[f32], [b0, b1, b2, b3]: [&[f32]; 4]) -> [f32; 4] {
    let len = a.len();
    let (b0, b1, b2, b3) = (&b0[..len], &b1[..len], &b2[..len], &b3[..len]);
    let chunks = |v| <[f32]>::chunks_exact(v, SUM_LANES);
    // four named arrays, not one `[[f32; 16]; 4]`, which the compiler keeps in memory
    let (mut p0, mut p1, mut p2, mut p3) = (
        [0.0f32; SUM_LANES],
        [0.0; SUM_LANES],
        [0.0; SUM_LANES],
        [0.0; SUM_LANES],
    );
    let blocks = chunks(a)
        .zip(chunks(b0))
        .zip(chunks(b1))
        .zip(chunks(b2))
        .zip(chunks(b3));
    for ((((a, b0), b1), b2), b3) in blocks {
        for lane in 0..SUM_LANES {
            p0[lane] += a[lane] * b0[lane];
            p1[lane] += a[lane] * b1[lane];
            p2[lane] += a[lane] * b2[lane];
            p3[lane] += a[lane] * b3[lane];
        }
    }
    let whole = len - len % SUM_LANES;
    let mut sums = [0.0f32; 4];
    for ((sum, partial), b) in sums.iter_mut().zip([p0, p1, p2, p3]).zip([b0, b1, b2, b3]) {
        let tail: f32 = (a[whole..].iter().zip(&b[whole..]))
            .map(|(&x, &y)| x * y)
            .sum();
        *sum = partial.iter().sum::<f32>() + tail;
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::factor::decay_factor;
    use proptest::prelude::*;

    fn coef(p: f64, lr: f64, lambda: f64) -> DecayCoefficients {
        DecayCoefficients::new(p, lr, lambda, 0.0).unwrap()
    }

    #[test]
    fn exp_matches_f64_within_its_documented_error() {
        // every 1/64 from -87 to 88 (the normal f32 range), plus a few awkward points
        let points = (-87 * 64..=88 * 64).map(|i| i as f32 / 64.0).chain([
            1e-8,
            -1e-8,
            LN_2 / 2.0,
            -LN_2 / 2.0,
            88.3,
        ]);
        for x in points {
            let exact = (x as f64).exp();
            let relative = ((exp(x) as f64 - exact) / exact).abs();
            assert!(
                relative < 3e-7,
                "exp({x}): {} vs {exact} ({relative:e})",
                exp(x)
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-200.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(200.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
    }

    #[test]
    fn exp2_gives_powers_of_two_exactly() {
        for n in -126..=127 {
            assert_eq!(exp2(n as f32), (n as f64).exp2() as f32, "2^{n}");
        }
        assert_eq!(exp2(-200.0), 0.0);
        assert_eq!(exp2(200.0), f32::INFINITY);
    }

    #[test]
    fn pow_abs_matches_f64_within_its_documented_error() {
        let exponents = [-1.99f32, -1.7, -1.2, -1.0, -0.5, 0.5, 1.0, 1.32, 2.0];
        // the mantissa split at √2 and its neighbours, decades from 1e-37 to 3e38
        let sqrt2 = std::f32::consts::SQRT_2;
        let half_sqrt2 = std::f32::consts::FRAC_1_SQRT_2;
        let mut xs = vec![
            1e-37f32, 1e-30, 1e-20, 1e-10, 1e-5, 0.001, 0.5, 1.0, 2.0, 1e5, 1e30, 3e38,
        ];
        for edge in [sqrt2, half_sqrt2] {
            xs.extend([edge.next_down(), edge, edge.next_up()]);
        }
        xs.extend(
            (0..20_000).map(|i| ((i as f32) * 0.37).sin().abs() * 10f32.powi(i % 60 - 30) + 1e-38),
        );
        for e in exponents {
            for &x in &xs {
                let exact = (x as f64).powf(e as f64);
                // subnormal inputs count as zero, by design
                if !x.is_normal() || !(1e-37..=1e37).contains(&exact) {
                    continue;
                }
                let y = (e as f64) * (x as f64).log2();
                let rel = ((pow_abs(x, e) as f64) - exact).abs() / exact;
                assert!(
                    rel <= 2e-7 * (8.0 + y.abs()),
                    "{x}^{e}: relative error {rel:e}"
                );
            }
        }
        assert_eq!(pow_abs(0.0, -1.2), f32::INFINITY);
        assert_eq!(pow_abs(-0.0, 1.2), 0.0);
        assert_eq!(pow_abs(1e-40, -1.2), f32::INFINITY); // subnormal counts as zero
        assert_eq!(pow_abs(f32::INFINITY, -1.2), 0.0);
        assert_eq!(pow_abs(f32::INFINITY, 1.2), f32::INFINITY);
        assert_eq!(pow_abs(2e29, 1.32), f32::INFINITY);
        assert_eq!(pow_abs(1e-30, -1.9), f32::INFINITY);
        assert_eq!(pow_abs(1e30, -1.5), 0.0);
        assert!(pow_abs(f32::NAN, -1.2).is_nan());
        assert_eq!(pow_abs(-0.25, -1.0), 4.0);
    }

    #[test]
    fn kernel_matches_the_scalar_factor() {
        let reference = [0.5f32, -0.01, 0.0, 2.0, -3.5e-3];
        let stepped = [0.49f32, -0.012, 1e-3, 2.1, -3.0e-3];
        for p in [0.3, 0.8, 1.0, 1.5, 2.0, 3.0] {
            let c = coef(p, 0.01, 0.1);
            let mut out = stepped;
            apply_decay_in_place(&mut out, &reference, &c);
            for i in 0..out.len() {
                let expected = stepped[i] as f64 * decay_factor(reference[i] as f64, &c);
                assert!(
                    (out[i] as f64 - expected).abs() <= 2e-6 * expected.abs().max(1e-30),
                    "p={p} i={i}: {} vs {expected}",
                    out[i]
                );
            }
        }
    }

    #[test]
    fn the_stepped_weight_is_divided_once_not_multiplied_by_a_rounded_factor() {
        // p = 2 makes the denominator one f32 constant: the result must be the correctly
        // rounded quotient, which `w · (1/d)` misses for part of the inputs (two roundings)
        let c = coef(2.0, 3e-3, 7e-3);
        let d = (1.0 + c.l2_strength()) as f32 + c.lp_strength() as f32;
        let stepped: Vec<f32> = (0..4096).map(|i| 0.1 + i as f32 * 1.37e-4).collect();
        let mut out = stepped.clone();
        apply_decay_in_place(&mut out, &stepped, &c);
        let reciprocal = 1.0 / d;
        let mut twice_rounded = 0;
        for (w, got) in stepped.iter().zip(&out) {
            assert_eq!(*got, w / d, "w = {w}");
            twice_rounded += usize::from(w * reciprocal != w / d);
        }
        // the inputs do tell the two forms apart
        assert!(twice_rounded > 20, "{twice_rounded}");
        // and so does the general path: the f32 quotient of the stepped weight and the denominator
        let c = coef(0.3, 5e-3, 1e-3);
        let reference: Vec<f32> = stepped.iter().map(|w| w * 0.01).collect();
        let mut out = stepped.clone();
        apply_decay_in_place(&mut out, &reference, &c);
        for ((w, r), got) in stepped.iter().zip(&reference).zip(&out) {
            let denominator = 1.0 + c.lp_strength() as f32 * pow_abs(*r, c.exponent() as f32);
            assert_eq!(*got, w / denominator, "w = {w}, r = {r}");
        }
    }

    #[test]
    fn every_simd_level_gives_the_same_bits() {
        let n = 1000;
        let reference: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 0.1).collect();
        let stepped: Vec<f32> = reference.iter().map(|r| r * 0.99 + 1e-4).collect();
        let c = coef(0.3, 0.01, 0.05);
        let levels = limit_simd(SimdLevel::Avx512);
        assert_eq!(levels[0], SimdLevel::Baseline);
        let results: Vec<Vec<f32>> = levels
            .iter()
            .map(|&level| {
                limit_simd(level);
                let mut out = stepped.clone();
                apply_decay_in_place(&mut out, &reference, &c);
                out
            })
            .collect();
        limit_simd(SimdLevel::Avx512);
        for (level, out) in levels.iter().zip(&results) {
            assert_eq!(out, &results[0], "{level:?}");
        }
    }

    #[test]
    fn long_slices_take_the_parallel_path_with_the_same_result() {
        let n = 3 * PARALLEL_CHUNK + 5;
        let reference: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 0.1).collect();
        let stepped: Vec<f32> = reference.iter().map(|r| r * 0.99 + 1e-4).collect();
        let c = coef(0.8, 0.01, 0.05);
        let mut out = stepped.clone();
        apply_decay_in_place(&mut out, &reference, &c);
        for i in (0..n).step_by(997).chain([n - 1]) {
            let expected =
                flush_subnormal((stepped[i] as f64 * decay_factor(reference[i] as f64, &c)) as f32);
            assert!(
                (out[i] - expected).abs() <= 2e-7 * expected.abs(),
                "i={i}: {} vs {expected}",
                out[i]
            );
        }
    }

    #[test]
    fn pow_overflow_in_simd_lanes_gives_factor_zero_not_nan() {
        // 2e29^1.32 overflows f32; for p > 2 the factor is then 1/inf = 0
        let mut out = [0.5f32; 8];
        let mut reference = [0.0f32; 8];
        reference[0] = 2.0116694e29;
        apply_decay_in_place(&mut out, &reference, &coef(3.3224858901068455, 1.0, 7.3));
        assert_eq!(out[0], 0.0);
        assert!(out[1..].iter().all(|&x| x == 0.5));
        // a NaN reference is not hidden
        reference[1] = f32::NAN;
        let mut out = [0.5f32; 8];
        apply_decay_in_place(&mut out, &reference, &coef(0.8, 1.0, 0.1));
        assert!(out[1].is_nan());
    }

    /// burn's Adam arithmetic, written out, then the unfused kernel.
    fn adam_then_decay(
        w: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        a: &AdamStep,
        c: &DecayCoefficients,
    ) {
        let k = a.constants(c.lr() as f32);
        let (combined, eps) = (k.combined, k.epsilon);
        let before = w.to_vec();
        for i in 0..w.len() {
            m[i] = m[i] * a.beta_1 + g[i] * (1.0 - a.beta_1);
            v[i] = v[i] * a.beta_2 + g[i] * g[i] * (1.0 - a.beta_2);
            w[i] -= (m[i] * combined / (v[i].sqrt() + eps)) * c.lr() as f32;
        }
        apply_decay_in_place(w, &before, c);
    }

    /// Runs the fused kernel and Adam-then-pWD from `w0` for steps 1, 2, ... with the
    /// coefficients `coefficients` gives each, and checks after every step that weights (by
    /// `==`: -0 and +0 count as equal) and moments agree.
    fn fused_follows_composed(
        w0: &[f32],
        coefficients: &[DecayCoefficients],
        label: &str,
    ) -> Vec<f32> {
        let n = w0.len();
        let (mut w1, mut w2) = (w0.to_vec(), w0.to_vec());
        let (mut m1, mut m2, mut v1, mut v2) =
            (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        for (time, c) in (1u32..).zip(coefficients) {
            let g: Vec<f32> = (0..n)
                .map(|i| ((i as f32 + time as f32) * 1.3).cos())
                .collect();
            let a = AdamStep {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-8,
                time,
            };
            adam_pwd_in_place(&mut w1, &g, &mut m1, &mut v1, &a, c);
            adam_then_decay(&mut w2, &g, &mut m2, &mut v2, &a, c);
            assert_eq!(m1, m2, "{label} step {time}");
            assert_eq!(v1, v2, "{label} step {time}");
            assert_eq!(w1, w2, "{label} step {time}");
        }
        w1
    }

    #[test]
    fn fused_adam_pwd_equals_adam_then_pwd() {
        for n in [5, 64, 3 * PARALLEL_CHUNK + 3] {
            for p in [0.8, 2.0] {
                let w0: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.61).sin() * 0.2).collect();
                fused_follows_composed(&w0, &[coef(p, 0.01, 0.05); 5], &format!("n={n} p={p}"));
            }
        }
    }

    #[test]
    fn dead_blocks_skip_the_step_but_not_the_moments() {
        // whole blocks of zeros (16..48), a zero inside a live block (50), a zero tail
        let n = 3 * DEAD_BLOCK + 7;
        let w0: Vec<f32> = (0..n)
            .map(|i| match i {
                16..48 | 50 => 0.0,
                _ if i >= 3 * DEAD_BLOCK => 0.0,
                _ => ((i as f32) * 0.61).sin() * 0.2 + 0.3,
            })
            .collect();
        // absorbing (p 0.8), not absorbing (p 2; lr 0); the last two steps without decay, so
        // the zeros move again, from their moments
        for (p, lrs) in [
            (0.8, [0.01, 0.01, 0.01]),
            (2.0, [0.01, 0.01, 0.01]),
            (0.8, [0.0, 0.01, 0.0]),
        ] {
            let steps: Vec<DecayCoefficients> = (0..6)
                .map(|k| coef(p, lrs[k % 3], if k >= 4 { 0.0 } else { 0.05 }))
                .collect();
            let w = fused_follows_composed(&w0, &steps, &format!("p={p} lrs {lrs:?}"));
            assert!(w[16..48].iter().all(|&w| w != 0.0), "the zeros moved again");
        }
    }

    #[test]
    fn flushing_subnormals_reads_and_writes_them_as_zero_on_this_thread_only() {
        let tiny = std::hint::black_box(f32::MIN_POSITIVE / 4.0);
        assert!(tiny > 0.0 && !tiny.is_normal());
        std::thread::spawn(move || {
            assert!(!subnormals_flushed_on_this_thread());
            // before: subnormal arithmetic is exact
            assert_eq!(std::hint::black_box(tiny) * 2.0, f32::MIN_POSITIVE / 2.0);
            flush_subnormals_on_this_thread();
            if cfg!(target_arch = "x86_64") {
                assert!(subnormals_flushed_on_this_thread());
                // a subnormal input reads as 0, a subnormal result is 0
                assert_eq!(std::hint::black_box(tiny) + 0.0, 0.0);
                assert_eq!(std::hint::black_box(f32::MIN_POSITIVE) * 0.5, 0.0);
                // normal numbers are untouched
                assert_eq!(std::hint::black_box(1.5f32) * 2.0, 3.0);
            }
        })
        .join()
        .unwrap();
        // another thread's setting is its own
        assert!(!subnormals_flushed_on_this_thread());
    }

    #[test]
    fn zero_reference_kills_the_weight_for_p_below_two() {
        let mut out = [0.3f32];
        apply_decay_in_place(&mut out, &[0.0], &coef(0.8, 0.01, 0.1));
        assert_eq!(out, [0.0]);
        let mut out = [0.3f32];
        apply_decay_in_place(&mut out, &[0.0], &coef(3.0, 0.01, 0.1));
        assert_eq!(out, [0.3]);
    }

    #[test]
    fn subnormal_results_are_flushed_to_zero() {
        let tiny = f32::MIN_POSITIVE / 4.0;
        assert!(tiny > 0.0 && !tiny.is_normal());
        let mut out = [tiny, -tiny, 1.0];
        apply_decay_in_place(&mut out, &[1.0, 1.0, 1.0], &coef(0.8, 0.0, 0.1));
        assert_eq!(out, [0.0, 0.0, 1.0]);
        // a product that lands below the normal range is flushed too
        let mut out = [2.0 * f32::MIN_POSITIVE];
        apply_decay_in_place(&mut out, &[1e-3], &coef(0.8, 1.0, 1.0));
        assert_eq!(out, [0.0]);
    }

    #[test]
    fn late_variant_uses_the_stepped_weight() {
        let c = coef(1.0, 0.1, 0.5);
        let mut out = [0.2f32];
        apply_late_decay_in_place(&mut out, &c);
        // 0.2 · 0.2/(0.2 + 0.05)
        assert!((out[0] - 0.16).abs() < 1e-7);
    }

    #[test]
    #[should_panic(expected = "same length")]
    fn length_mismatch_is_a_caller_bug() {
        apply_decay_in_place(&mut [1.0, 2.0], &[1.0], &coef(1.0, 0.1, 0.1));
    }

    #[test]
    fn lane_dots_of_a_known_case_are_as_worked_by_hand() {
        // 35 entries: two chunks of 16 and a tail of 3; a = 1, 2, …, 35
        let a: Vec<f32> = (1..=35).map(|i| i as f32).collect();
        let ones = vec![1.0f32; 35];
        let alternating: Vec<f32> = (0..35)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let mut unit = vec![0.0f32; 40];
        unit[33] = 2.0;
        let zeros = vec![0.0f32; 35];
        let dots = lane_dots(&a, [&ones, &alternating, &unit, &zeros]);
        // 1 + … + 35 = 630; 1 - 2 + 3 - … + 35 = 18; 2 · a[33] = 68
        assert_eq!(dots, [630.0, 18.0, 68.0, 0.0]);
    }

    proptest! {
        #[test]
        fn lane_dots_sum_each_product_as_lane_sum_does(
            values in prop::collection::vec((-1e3f32..1e3, -1e3f32..1e3, -1e3f32..1e3), 0..80),
            scales in prop::array::uniform4(prop::sample::select(vec![1e-6f32, 1.0, 1e6])),
        ) {
            // magnitudes far apart, so that another order of the adds gives other bits
            let a: Vec<f32> = values.iter().enumerate()
                .map(|(i, v)| v.0 * scales[i % 4]).collect();
            let b0: Vec<f32> = values.iter().map(|v| v.1).collect();
            let b1: Vec<f32> = values.iter().map(|v| v.2).collect();
            let b2: Vec<f32> = values.iter().map(|v| v.1 * v.2).collect();
            let b3: Vec<f32> = b0.iter().rev().copied().collect();
            let dots = lane_dots(&a, [&b0, &b1, &b2, &b3]);
            for (dot, b) in dots.iter().zip([&b0, &b1, &b2, &b3]) {
                let alone = lane_sum(&a, b, b, |x, y, _| x * y);
                prop_assert_eq!(dot.to_bits(), alone.to_bits());
                let exact: f64 = a.iter().zip(b.iter()).map(|(&x, &y)| x as f64 * y as f64).sum();
                let size: f64 = a.iter().zip(b.iter()).map(|(&x, &y)| (x as f64 * y as f64).abs()).sum();
                prop_assert!((*dot as f64 - exact).abs() <= 1e-5 * size + 1e-30);
            }
        }

        #[test]
        fn kernel_output_is_finite_sign_preserving_and_never_normal_below_min(
            p in 1e-3f64..=4.0,
            lr_lambda in 0.0f64..=10.0,
            values in prop::collection::vec((-1e30f32..1e30, -1e30f32..1e30), 1..64),
        ) {
            let (stepped, reference): (Vec<f32>, Vec<f32>) = values.into_iter().unzip();
            let mut out = stepped.clone();
            apply_decay_in_place(&mut out, &reference, &coef(p, 1.0, lr_lambda));
            for (o, s) in out.iter().zip(&stepped) {
                prop_assert!(o.is_finite());
                prop_assert!(o.abs() <= s.abs());
                prop_assert!(*o == 0.0 || o.signum() == s.signum());
                prop_assert!(*o == 0.0 || o.is_normal());
            }
        }
    }
}
