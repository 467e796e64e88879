//! The in-place slice kernel: pWD applied to a whole tensor's worth of `f32` in one pass.
//!
//! A framework adapter hands over the base optimizer's result (`stepped`, overwritten) and the
//! weights before the step (`reference`); one loop computes each factor, multiplies, and flushes
//! results below the f32 normal range to exact zero. Subnormal floats make CPU arithmetic up to
//! 100x slower, and a weight that small is already dead under any p < 2, so the flush costs
//! nothing in accuracy and keeps later steps fast.

use rayon::prelude::*;
use wide::f32x8;

use crate::factor::DecayCoefficients;

/// Slices shorter than this run on the calling thread; longer ones are split across rayon's
/// pool in chunks of this size (large enough that scheduling costs nothing measurable).
const PARALLEL_CHUNK: usize = 1 << 15;

/// Sets `x` to exact 0 when `|x|` is below `f32::MIN_POSITIVE` (the smallest normal f32).
#[inline]
pub fn flush_subnormal(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE { 0.0 } else { x }
}

/// [`flush_subnormal`] on 8 lanes.
#[inline]
fn flush_subnormal8(x: f32x8) -> f32x8 {
    x.abs()
        .simd_lt(f32x8::splat(f32::MIN_POSITIVE))
        .select(f32x8::ZERO, x)
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

    /// `1 / (1 + η·λ₂ + p·η·λ·|r|^(p-2))`; only called when `p·η·λ > 0`, so `0·inf` cannot
    /// occur. A true division, not an approximate reciprocal: the factor must be exact to ~1 ulp.
    #[inline]
    fn factor(&self, reference: f32) -> f32 {
        1.0 / (self.one_plus_l2 + self.lp_strength * reference.abs().powf(self.exponent))
    }

    /// [`Self::factor`] on 8 lanes (`wide`'s SIMD pow is accurate to about 1 ulp).
    #[inline]
    fn factor8(&self, reference: f32x8) -> f32x8 {
        let power = reference.abs().powf_simd(f32x8::splat(self.exponent));
        // wide's pow answers some overflows (e.g. 2e29^1.32) with NaN where std answers inf;
        // a NaN reference must stay NaN, so only a NaN produced by pow itself becomes inf.
        let overflowed = power.is_nan() & !reference.is_nan();
        let power = overflowed.select(f32x8::splat(f32::INFINITY), power);
        f32x8::ONE / (f32x8::splat(self.one_plus_l2) + f32x8::splat(self.lp_strength) * power)
    }
}

/// Runs `body` over matching chunks of the two slices, in parallel when they are long.
fn for_each_chunk(
    stepped: &mut [f32],
    reference: &[f32],
    body: impl Fn(&mut [f32], &[f32]) + Sync + Send,
) {
    if stepped.len() <= PARALLEL_CHUNK {
        body(stepped, reference);
    } else {
        stepped
            .par_chunks_mut(PARALLEL_CHUNK)
            .zip(reference.par_chunks(PARALLEL_CHUNK))
            .for_each(|(s, r)| body(s, r));
    }
}

/// The loop of the general case: 8 lanes at a time, the remainder one by one.
fn decay_chunk(stepped: &mut [f32], reference: &[f32], k: Constants) {
    let (lanes, tail) = stepped.as_chunks_mut::<8>();
    let (ref_lanes, ref_tail) = reference.as_chunks::<8>();
    for (w, r) in lanes.iter_mut().zip(ref_lanes) {
        let out = f32x8::from(*w) * k.factor8(f32x8::from(*r));
        *w = flush_subnormal8(out).to_array();
    }
    for (w, &r) in tail.iter_mut().zip(ref_tail) {
        *w = flush_subnormal(*w * k.factor(r));
    }
}

/// Applies pWD in place: `stepped[i] = flush(stepped[i] · f(reference[i]))`, `f` as in
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
    if k.lp_strength == 0.0 {
        scale_in_place(stepped, 1.0 / k.one_plus_l2);
    } else if k.exponent == 0.0 {
        scale_in_place(stepped, 1.0 / (k.one_plus_l2 + k.lp_strength));
    } else {
        for_each_chunk(stepped, reference, |s, r| decay_chunk(s, r, k));
    }
}

/// The `late` variant: the factor is computed from the stepped weight itself.
pub fn apply_late_decay_in_place(stepped: &mut [f32], c: &DecayCoefficients) {
    let k = Constants::new(c);
    if k.lp_strength == 0.0 {
        scale_in_place(stepped, 1.0 / k.one_plus_l2);
    } else {
        let body = |s: &mut [f32]| {
            let reference = s.to_vec();
            decay_chunk(s, &reference, k);
        };
        if stepped.len() <= PARALLEL_CHUNK {
            body(stepped);
        } else {
            stepped.par_chunks_mut(PARALLEL_CHUNK).for_each(body);
        }
    }
}

fn scale_in_place(values: &mut [f32], factor: f32) {
    let scale = |chunk: &mut [f32]| {
        chunk
            .iter_mut()
            .for_each(|w| *w = flush_subnormal(*w * factor))
    };
    if values.len() <= PARALLEL_CHUNK {
        scale(values);
    } else {
        values.par_chunks_mut(PARALLEL_CHUNK).for_each(scale);
    }
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
                    (out[i] as f64 - expected).abs() <= 1e-6 * expected.abs().max(1e-30),
                    "p={p} i={i}: {} vs {expected}",
                    out[i]
                );
            }
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

    proptest! {
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
