//! The pWD decay factor and its variants.
//!
//! Notation follows the paper: `p` the norm, `lambda` (λ) the penalty strength, `lr` (η_t) the
//! current learning rate, `w` the reference weight (the weight *before* the base optimizer's step
//! for the paper's pWD, after it for the `late` variant). Every function returns the factor `f`
//! by which the base optimizer's result is multiplied: `w_t = f * w_step`.
//!
//! All forms are evaluated as
//!
//! ```text
//! f = 1 / (1 + η·λ₂ + p·η·λ·|w|^(p-2))
//! ```
//!
//! which is the paper's `X / (X·(1 + η·λ₂) + p·η·λ)` with `X = |w|^(2-p)` divided through by `X`.
//! This single form never evaluates `inf/inf`: for p < 2 and w = 0, `|w|^(p-2) = inf` and f = 0
//! (an exact zero stays zero); for p > 2 and w = 0, `|w|^(p-2) = 0` and f = 1; for p = 2 it is
//! the constant `1/(1 + 2ηλ)`, AdamW's decay with weight decay 2λ to first order. When `p·η·λ = 0`
//! (lr warm-up from 0, or λ = 0) the penalty term is skipped, so `0 · inf` never becomes NaN.

use crate::validate::{ValidationError, check_non_negative, check_p, check_positive};

/// Validated coefficients of one pWD step: `p`, the current learning rate `lr`, `lambda`, and the
/// elastic-net L2 strength `lambda2` (0 for plain pWD).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecayCoefficients {
    p: f64,
    lr: f64,
    lambda: f64,
    lambda2: f64,
}

impl DecayCoefficients {
    /// Checks every value: `p` finite and > 0; `lr`, `lambda`, `lambda2` finite and >= 0.
    pub fn new(p: f64, lr: f64, lambda: f64, lambda2: f64) -> Result<Self, ValidationError> {
        Ok(Self {
            p: check_p(p)?,
            lr: check_non_negative("lr", lr)?,
            lambda: check_non_negative("lambda", lambda)?,
            lambda2: check_non_negative("lambda2", lambda2)?,
        })
    }

    /// The norm `p`.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The learning rate of this step.
    pub fn lr(&self) -> f64 {
        self.lr
    }

    /// The Lp penalty strength λ.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// The elastic-net L2 strength λ₂.
    pub fn lambda2(&self) -> f64 {
        self.lambda2
    }

    /// `p·η·λ`, the strength of the Lp proximal term. Zero means the Lp part is a no-op.
    pub fn lp_strength(&self) -> f64 {
        self.p * self.lr * self.lambda
    }

    /// `η·λ₂`, the strength of the elastic-net L2 term.
    pub fn l2_strength(&self) -> f64 {
        self.lr * self.lambda2
    }

    /// The exponent `p - 2` applied to the reference magnitude.
    pub fn exponent(&self) -> f64 {
        self.p - 2.0
    }

    /// Whether this step changes nothing (`p·η·λ = 0` and `η·λ₂ = 0`), so callers may skip it.
    pub fn is_identity(&self) -> bool {
        self.lp_strength() == 0.0 && self.l2_strength() == 0.0
    }
}

/// The pWD factor for one weight whose reference value is `w`.
///
/// `f = |w|^(2-p) / (|w|^(2-p)·(1 + η·λ₂) + p·η·λ)`, computed in the overflow-free form of the
/// module docs. Always in `[0, 1]`, never NaN for finite or infinite `w`.
pub fn decay_factor(w: f64, c: &DecayCoefficients) -> f64 {
    penalty_factor(w.abs().powf(c.exponent()), c)
}

/// The structured (group) pWD factor, from the L2 norm of a whole group (a row of a linear
/// weight, an output channel of a conv kernel).
///
/// The derivation of pWD applied to `λ Σ_g ||w_g||₂^p` gives the same expression with `|w|`
/// replaced by `||w_g||₂`; the factor multiplies every weight of the group, so a group whose norm
/// falls below the suppression scale vanishes as a whole.
pub fn group_decay_factor(group_norm: f64, c: &DecayCoefficients) -> f64 {
    decay_factor(group_norm, c)
}

/// The factor of a fixed-s proximal step (s-dynamics): `1 / (1 + η·λ₂ + p·η·λ·s)`.
///
/// With `s = |w|^(p-2)`, its adiabatic value, this is exactly [`decay_factor`].
pub fn s_decay_factor(s: f64, c: &DecayCoefficients) -> f64 {
    penalty_factor(s, c)
}

/// `1 / (1 + η·λ₂ + p·η·λ·s)`, with `s` the (possibly infinite) per-weight penalty weight.
fn penalty_factor(s: f64, c: &DecayCoefficients) -> f64 {
    let lp = c.lp_strength();
    let penalty = if lp == 0.0 { 0.0 } else { lp * s };
    1.0 / (1.0 + c.l2_strength() + penalty)
}

/// The scale below which pWD drives weights to zero: `(p·λ)^(1/(2-p))` (for p < 2).
///
/// It is where the Lp penalty's pull `p·λ·|w|^(p-1)` equals `|w|`, i.e. where the decay term
/// dominates an O(1) curvature of the loss. Returns `None` for p >= 2, where there is none.
pub fn suppression_scale(p: f64, lambda: f64) -> Option<f64> {
    (p < 2.0).then(|| (p * lambda).powf(1.0 / (2.0 - p)))
}

/// Smallest value s may take in s-dynamics; keeps `s^(2/(p-2))` finite.
pub const S_MIN: f64 = 1e-12;
/// Largest value s may take in s-dynamics; at this value the factor is 0 for any useful `p·η·λ`.
pub const S_MAX: f64 = 1e30;

/// Validated settings of s-dynamics: the norm `p` (0 < p < 2) and the rate `eta_s` of s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SDynamics {
    p: f64,
    rate: f64,
}

impl SDynamics {
    /// `p` must lie in (0, 2): the variational form `|x|^p = min_s Λ_p(x, s)` holds only there.
    pub fn new(p: f64, rate: f64) -> Result<Self, ValidationError> {
        let p = check_p(p)?;
        if p >= 2.0 {
            return Err(ValidationError::P { value: p });
        }
        Ok(Self {
            p,
            rate: check_positive("s_rate", rate)?,
        })
    }

    /// The norm.
    pub fn p(&self) -> f64 {
        self.p
    }

    /// The rate of the gradient step on s.
    pub fn rate(&self) -> f64 {
        self.rate
    }
}

/// One gradient step of s on `Λ_p(w, s) = ½·(p·s·w² + (2-p)·s^(p/(p-2)))`:
///
/// ```text
/// ∂Λ/∂s = p/2 · (w² - s^(2/(p-2)))
/// s ← clamp(s - rate · ∂Λ/∂s, S_MIN, S_MAX)
/// ```
///
/// Its fixed point is `s = |w|^(p-2)`, where [`s_decay_factor`] equals [`decay_factor`]: pWD is the
/// limit of fast s. The clamp keeps s positive (Λ is defined for s > 0) and finite.
pub fn s_dynamics_step(s: f64, w: f64, dynamics: &SDynamics) -> f64 {
    let p = dynamics.p;
    let grad = 0.5 * p * (w * w - s.powf(2.0 / (p - 2.0)));
    (s - dynamics.rate * grad).clamp(S_MIN, S_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn coef(p: f64, lr: f64, lambda: f64) -> DecayCoefficients {
        DecayCoefficients::new(p, lr, lambda, 0.0).unwrap()
    }

    /// Expected values worked from `X/(X + p·lr·λ)`, `X = |w|^(2-p)` (p <= 2) and
    /// `1/(1 + p·lr·λ·|w|^(p-2))` (p > 2), in f64 by hand (calculator), to 12 digits.
    #[test]
    fn hand_computed_factors() {
        let cases = [
            // (p, w, lr, lambda, expected)
            (0.3, 0.5, 0.01, 0.1, 0.999_026_246_245),
            (0.3, 0.01, 0.01, 0.1, 0.570_266_554_114),
            (0.8, 0.5, 0.01, 0.1, 0.998_165_454_375),
            (0.8, 0.01, 0.01, 0.1, 0.832_673_498_899),
            (1.0, 0.5, 0.01, 0.1, 0.5 / 0.501),
            (1.0, 0.01, 0.01, 0.1, 0.01 / 0.011),
            (1.5, 0.5, 0.01, 0.1, 0.997_883_170_131),
            (1.5, 2.0, 0.1, 0.5, 0.949_637_847_858),
            (2.0, 0.5, 0.01, 0.1, 1.0 / 1.002),
            (2.0, 123.0, 0.01, 0.1, 1.0 / 1.002),
            (3.0, 2.0, 0.1, 0.5, 1.0 / 1.3),
            (3.0, 0.01, 0.01, 0.1, 0.999_970_000_900),
        ];
        for (p, w, lr, lambda, expected) in cases {
            let got = decay_factor(w, &coef(p, lr, lambda));
            assert!(
                (got - expected).abs() < 1e-11,
                "p={p} w={w}: got {got}, expected {expected}"
            );
        }
    }

    #[test]
    fn elastic_net_and_group_factors_by_hand() {
        // X = 0.5^1.2; X / (X·(1 + 0.01·0.2) + 0.8·0.01·0.1)
        let c = DecayCoefficients::new(0.8, 0.01, 0.1, 0.2).unwrap();
        assert!((decay_factor(0.5, &c) - 0.996_176_755_927).abs() < 1e-11);
        // p = 1: ||(0.3, 0.4)|| = 0.5; 0.5 / (0.5 + 0.1·0.2) = 0.5/0.52
        let c = coef(1.0, 0.1, 0.2);
        assert!((group_decay_factor(0.5, &c) - 0.5 / 0.52).abs() < 1e-14);
        // elastic net alone (λ = 0): plain L2 proximal step 1/(1 + η·λ₂)
        let c = DecayCoefficients::new(0.8, 0.1, 0.0, 0.5).unwrap();
        assert_eq!(decay_factor(0.0, &c), 1.0 / 1.05);
    }

    #[test]
    fn edge_cases_of_the_numerical_rules() {
        // p·lr·λ = 0 (warm-up from lr = 0) gives 1, also at w = 0 where |w|^(p-2) = inf.
        assert_eq!(decay_factor(0.0, &coef(0.5, 0.0, 0.1)), 1.0);
        assert_eq!(decay_factor(0.0, &coef(0.5, 0.1, 0.0)), 1.0);
        // an exact zero stays zero for p < 2 ...
        assert_eq!(decay_factor(0.0, &coef(0.8, 0.1, 0.1)), 0.0);
        // ... and is left alone for p > 2
        assert_eq!(decay_factor(0.0, &coef(3.0, 0.1, 0.1)), 1.0);
        // huge weights are not decayed for p < 2
        assert_eq!(decay_factor(1e30, &coef(0.5, 0.1, 0.1)), 1.0);
        assert!(decay_factor(f64::INFINITY, &coef(0.5, 0.1, 0.1)) == 1.0);
    }

    #[test]
    fn suppression_scale_matches_its_definition() {
        let scale = suppression_scale(0.8, 1e-3).unwrap();
        // p·λ·scale^(p-1) == scale
        assert!((0.8 * 1e-3 * scale.powf(-0.2) - scale).abs() < 1e-15);
        assert_eq!(suppression_scale(2.0, 1e-3), None);
    }

    #[test]
    fn s_dynamics_converges_to_the_adiabatic_s() {
        let dynamics = SDynamics::new(1.0, 0.5).unwrap();
        let w: f64 = 0.5;
        let mut s = 1.0;
        for _ in 0..2000 {
            s = s_dynamics_step(s, w, &dynamics);
        }
        // fixed point |w|^(p-2) = 2 for p = 1
        assert!((s - 2.0).abs() < 1e-9, "s = {s}");
        let c = coef(1.0, 0.01, 0.1);
        assert!((s_decay_factor(s, &c) - decay_factor(w, &c)).abs() < 1e-9);
        // p must be in (0, 2), rate > 0
        assert!(SDynamics::new(2.0, 0.1).is_err());
        assert!(SDynamics::new(0.8, 0.0).is_err());
        // the clamp keeps s positive and finite even from an extreme start
        let d = SDynamics::new(1.9, 1.0).unwrap();
        let s = s_dynamics_step(S_MIN, 0.0, &d);
        assert!(s.is_finite() && s >= S_MIN);
    }

    #[test]
    fn invalid_inputs_are_errors_not_nan() {
        assert!(DecayCoefficients::new(0.0, 0.1, 0.1, 0.0).is_err());
        assert!(DecayCoefficients::new(f64::NAN, 0.1, 0.1, 0.0).is_err());
        assert!(DecayCoefficients::new(0.8, -0.1, 0.1, 0.0).is_err());
        assert!(DecayCoefficients::new(0.8, 0.1, -1.0, 0.0).is_err());
        assert!(DecayCoefficients::new(0.8, 0.1, 0.1, f64::INFINITY).is_err());
    }

    proptest! {
        #[test]
        fn factor_is_in_unit_interval_and_finite(
            p in 1e-3f64..=4.0,
            lr_lambda in 0.0f64..=10.0,
            w in prop_oneof![Just(0.0), 0.0f64..=1.0, 0.0f64..=1e30],
            lambda2 in 0.0f64..=1.0,
        ) {
            let c = DecayCoefficients::new(p, 1.0, lr_lambda, lambda2).unwrap();
            let f = decay_factor(w, &c);
            prop_assert!(f.is_finite());
            prop_assert!((0.0..=1.0).contains(&f), "f = {}", f);
        }

        #[test]
        fn zero_stays_zero_and_sign_never_flips(
            p in 1e-3f64..2.0,
            lr in 1e-6f64..=1.0,
            lambda in 1e-6f64..=1.0,
            w in -1e3f64..1e3,
        ) {
            let c = coef(p, lr, lambda);
            prop_assert_eq!(0.0 * decay_factor(0.0, &c), 0.0);
            let w_new = w * decay_factor(w, &c);
            prop_assert!(w_new == 0.0 || w_new.signum() == w.signum());
            prop_assert!(w_new.abs() <= w.abs());
        }

        #[test]
        fn factor_decreases_as_lambda_or_lr_grows(
            p in 1e-3f64..=4.0,
            lr in 0.0f64..=1.0,
            lambda in 0.0f64..=1.0,
            grow in 1.0f64..=10.0,
            w in 1e-6f64..=1e3,
        ) {
            let f = decay_factor(w, &coef(p, lr, lambda));
            prop_assert!(decay_factor(w, &coef(p, lr, lambda * grow)) <= f);
            prop_assert!(decay_factor(w, &coef(p, lr * grow, lambda)) <= f);
        }

        #[test]
        fn zero_strength_is_identity_and_p_above_two_keeps_zero(
            p in 1e-3f64..=4.0,
            w in prop_oneof![Just(0.0), 0.0f64..=1e30],
            lambda in 0.0f64..=10.0,
        ) {
            prop_assert_eq!(decay_factor(w, &coef(p, 0.0, lambda)), 1.0);
            prop_assert_eq!(decay_factor(w, &coef(p, lambda, 0.0)), 1.0);
            if p > 2.0 {
                prop_assert_eq!(decay_factor(0.0, &coef(p, 1.0, lambda)), 1.0);
            }
        }
    }
}
