//! Schedules: a value as a function of the step count, for the learning rate, p and lambda.
//!
//! Like optax's schedules, each is a pure function of the number of steps already taken
//! (`step = 0` is the first step), so a resumed run that restores the step count restores the
//! schedule exactly. After its last step a schedule holds its final value.

use serde::{Deserialize, Serialize};

use crate::validate::{
    ValidationError, check_non_negative, check_positive, check_steps, check_unit_interval,
};

/// A value over steps. Build them with the constructors, which validate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// The same value at every step.
    Constant {
        /// The value.
        value: f64,
    },
    /// Linear from `from` to `to` over `steps`, then `to` (p-scheduling: 2.0 -> 0.8).
    Linear {
        /// Value at step 0.
        from: f64,
        /// Value from step `steps` on.
        to: f64,
        /// Length of the ramp.
        steps: u64,
    },
    /// Half a cosine from `from` to `to` over `steps`, then `to`.
    Cosine {
        /// Value at step 0.
        from: f64,
        /// Value from step `steps` on.
        to: f64,
        /// Length of the decay.
        steps: u64,
    },
    /// Geometric from `from` to `to` over `steps` (a constant ratio per step), then `to`.
    /// The 2023 blog's lr: 3e-3 decayed geometrically to 7.5e-4 over the run.
    Geometric {
        /// Value at step 0 (> 0).
        from: f64,
        /// Value from step `steps` on (> 0).
        to: f64,
        /// Length of the decay.
        steps: u64,
    },
    /// `value · gamma^floor(step / every)`.
    StepDecay {
        /// Value before the first drop.
        value: f64,
        /// Steps between drops.
        every: u64,
        /// Multiplier at each drop.
        gamma: f64,
    },
    /// Linear warm-up from `start` to the value `then` has at its own step 0, over `steps`; then
    /// `then`, counted from the end of the warm-up.
    Warmup {
        /// Value at step 0 (0 for the usual lr warm-up).
        start: f64,
        /// Length of the warm-up.
        steps: u64,
        /// The schedule after the warm-up.
        then: Box<Schedule>,
    },
}

impl Schedule {
    /// A constant value.
    pub fn constant(value: f64) -> Result<Self, ValidationError> {
        check_finite("value", value)?;
        Ok(Self::Constant { value })
    }

    /// Linear interpolation from `from` to `to` over `steps`.
    pub fn linear(from: f64, to: f64, steps: u64) -> Result<Self, ValidationError> {
        check_finite("from", from)?;
        check_finite("to", to)?;
        check_steps("steps", steps)?;
        Ok(Self::Linear { from, to, steps })
    }

    /// Cosine from `from` to `to` over `steps`.
    pub fn cosine(from: f64, to: f64, steps: u64) -> Result<Self, ValidationError> {
        check_finite("from", from)?;
        check_finite("to", to)?;
        check_steps("steps", steps)?;
        Ok(Self::Cosine { from, to, steps })
    }

    /// Geometric decay from `from` to `to` over `steps`; both must be > 0.
    pub fn geometric(from: f64, to: f64, steps: u64) -> Result<Self, ValidationError> {
        check_positive("from", from)?;
        check_positive("to", to)?;
        check_steps("steps", steps)?;
        Ok(Self::Geometric { from, to, steps })
    }

    /// Step decay: multiply by `gamma` every `every` steps.
    pub fn step_decay(value: f64, every: u64, gamma: f64) -> Result<Self, ValidationError> {
        check_finite("value", value)?;
        check_steps("every", every)?;
        check_positive("gamma", gamma)?;
        Ok(Self::StepDecay {
            value,
            every,
            gamma,
        })
    }

    /// Linear warm-up from `start` over `steps` into `then`. `steps = 0` returns `then`.
    pub fn warmup(start: f64, steps: u64, then: Schedule) -> Result<Self, ValidationError> {
        check_finite("start", start)?;
        Ok(if steps == 0 {
            then
        } else {
            Self::Warmup {
                start,
                steps,
                then: Box::new(then),
            }
        })
    }

    /// The reference lr schedule: warm-up from 0 over `warmup_steps`, then cosine from `base` to
    /// `base · min_lr_ratio` at `total_steps` (the paper: `min_lr_ratio = 0.01`).
    pub fn warmup_cosine(
        base: f64,
        warmup_steps: u64,
        total_steps: u64,
        min_lr_ratio: f64,
    ) -> Result<Self, ValidationError> {
        check_non_negative("lr", base)?;
        check_unit_interval("min_lr_ratio", min_lr_ratio)?;
        check_steps("total_steps", total_steps)?;
        let decay_steps = total_steps.saturating_sub(warmup_steps).max(1);
        Self::warmup(
            0.0,
            warmup_steps,
            Self::cosine(base, base * min_lr_ratio, decay_steps)?,
        )
    }

    /// The infimum and supremum of the values over all steps, for validating a schedule of p
    /// (which must stay > 0) or λ (>= 0) before a run starts. A step decay with `gamma < 1`
    /// tends to 0, so its infimum is 0.
    pub fn bounds(&self) -> (f64, f64) {
        match self {
            Self::Constant { value } => (*value, *value),
            Self::Linear { from, to, .. }
            | Self::Cosine { from, to, .. }
            | Self::Geometric { from, to, .. } => (from.min(*to), from.max(*to)),
            Self::StepDecay { value, gamma, .. } => {
                let limit = if *gamma < 1.0 {
                    0.0
                } else if *gamma == 1.0 {
                    *value
                } else {
                    value.signum() * f64::INFINITY
                };
                (value.min(limit), value.max(limit))
            }
            Self::Warmup { start, then, .. } => {
                let (lo, hi) = then.bounds();
                (lo.min(*start), hi.max(*start))
            }
        }
    }

    /// The value at `step` (the number of steps already taken).
    pub fn value(&self, step: u64) -> f64 {
        match self {
            Self::Constant { value } => *value,
            Self::Linear { from, to, steps } => between(*from, *to, progress(step, *steps)),
            Self::Cosine { from, to, steps } => {
                let t = progress(step, *steps);
                between(*to, *from, 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
            }
            Self::Geometric { from, to, steps } => from * (to / from).powf(progress(step, *steps)),
            Self::StepDecay {
                value,
                every,
                gamma,
            } => value * gamma.powf((step / every) as f64),
            Self::Warmup { start, steps, then } => {
                if step < *steps {
                    between(*start, then.value(0), progress(step, *steps))
                } else {
                    then.value(step - steps)
                }
            }
        }
    }
}

/// `a` moved a share `t` in [0, 1] of the way to `b`, as `a·(1-t) + b·t`: each term keeps its
/// sign, so the value never leaves [min(a, b), max(a, b)] (a p schedule stays > 0) and is `b`
/// exactly at `t = 1`. The form `a + (b-a)·t` loses `b` when `a` is huge: from p = 1.8e19 to
/// 0.8 it ended at p = 0, which pWD refuses mid-run.
fn between(a: f64, b: f64, t: f64) -> f64 {
    a * (1.0 - t) + b * t
}

/// `min(step / steps, 1)`.
fn progress(step: u64, steps: u64) -> f64 {
    (step.min(steps)) as f64 / steps as f64
}

fn check_finite(name: &'static str, value: f64) -> Result<f64, ValidationError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(ValidationError::Finite { name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn interpolation_stays_between_its_ends_and_ends_exactly() {
        // from a huge start the form a + (b - a)·t ended at 0, and pWD refused p = 0 mid-run
        let p = Schedule::linear(1.8e19, 0.8, 100).unwrap();
        assert_eq!(p.value(100), 0.8);
        assert!((0..=100).all(|s| p.value(s) >= 0.8), "{}", p.value(99));
        let cosine = Schedule::cosine(1.8e19, 0.8, 100).unwrap();
        assert_eq!(cosine.value(100), 0.8);
        assert!((0..=100).all(|s| cosine.value(s) >= 0.8));
        let warm = Schedule::warmup(1e20, 10, Schedule::constant(0.5).unwrap()).unwrap();
        assert!((0..20).all(|s| warm.value(s) >= 0.5));
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn values_by_hand() {
        let c = Schedule::constant(3e-3).unwrap();
        assert_eq!(c.value(0), 3e-3);
        assert_eq!(c.value(1_000_000), 3e-3);

        let p = Schedule::linear(2.0, 0.8, 100).unwrap();
        assert!(close(p.value(0), 2.0));
        assert!(close(p.value(50), 1.4));
        assert!(close(p.value(100), 0.8));
        assert!(close(p.value(500), 0.8));

        let cos = Schedule::cosine(1.0, 0.0, 4).unwrap();
        // 0.5·(1 + cos(π·t)): t = 0, 1/4, 1/2, 1
        assert!(close(cos.value(0), 1.0));
        assert!(close(
            cos.value(1),
            0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2)
        ));
        assert!(close(cos.value(2), 0.5));
        assert!(close(cos.value(4), 0.0));

        // the blog's lr: 3e-3 -> 7.5e-4 geometrically, ratio 1/4 over the run
        let g = Schedule::geometric(3e-3, 7.5e-4, 400).unwrap();
        assert!(close(g.value(200), 1.5e-3));
        assert!(close(g.value(400), 7.5e-4));

        let s = Schedule::step_decay(1.0, 10, 0.5).unwrap();
        assert_eq!((s.value(9), s.value(10), s.value(25)), (1.0, 0.5, 0.25));
    }

    #[test]
    fn warmup_cosine_is_the_reference_schedule() {
        // 2 warm-up steps, 10 in all, cosine to lr/100
        let s = Schedule::warmup_cosine(1e-3, 2, 10, 0.01).unwrap();
        assert_eq!(s.value(0), 0.0);
        assert!(close(s.value(1), 5e-4));
        assert!(close(s.value(2), 1e-3));
        assert!(close(s.value(6), 1e-5 + (1e-3 - 1e-5) * 0.5));
        assert!(close(s.value(10), 1e-5));
        assert!(close(s.value(99), 1e-5));
        // no warm-up: starts at the base value
        let s = Schedule::warmup_cosine(1e-3, 0, 10, 0.01).unwrap();
        assert!(close(s.value(0), 1e-3));
    }

    #[test]
    fn bounds_enclose_every_value() {
        let s = Schedule::warmup(0.0, 10, Schedule::cosine(2.0, 0.8, 100).unwrap()).unwrap();
        assert_eq!(s.bounds(), (0.0, 2.0));
        assert_eq!(
            Schedule::step_decay(1.0, 5, 0.5).unwrap().bounds(),
            (0.0, 1.0)
        );
        assert_eq!(
            Schedule::step_decay(1.0, 5, 2.0).unwrap().bounds(),
            (1.0, f64::INFINITY)
        );
        assert_eq!(
            Schedule::geometric(3e-3, 7.5e-4, 9).unwrap().bounds(),
            (7.5e-4, 3e-3)
        );
    }

    #[test]
    fn bad_schedules_are_errors() {
        assert!(Schedule::linear(2.0, 0.8, 0).is_err());
        assert!(Schedule::geometric(0.0, 1.0, 10).is_err());
        assert!(Schedule::constant(f64::NAN).is_err());
        assert!(Schedule::warmup_cosine(1e-3, 1, 10, 1.5).is_err());
        assert!(Schedule::warmup_cosine(-1e-3, 1, 10, 0.1).is_err());
        assert!(Schedule::step_decay(1.0, 10, 0.0).is_err());
    }

    #[test]
    fn schedules_round_trip_through_serde() {
        let s = Schedule::warmup_cosine(1e-3, 5, 100, 0.01).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(r#""kind":"warmup""#), "{json}");
        let back: Schedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.value(40), s.value(40));
    }

    proptest! {
        #[test]
        fn interpolating_schedules_stay_between_their_ends(
            from in 0.0f64..10.0, to in 0.0f64..10.0, steps in 1u64..1000, step in 0u64..2000,
        ) {
            let (lo, hi) = (from.min(to) - 1e-12, from.max(to) + 1e-12);
            for s in [Schedule::linear(from, to, steps).unwrap(), Schedule::cosine(from, to, steps).unwrap()] {
                let v = s.value(step);
                prop_assert!(v >= lo && v <= hi);
            }
        }

        #[test]
        fn lr_schedule_never_increases_after_warmup(
            warmup in 0u64..50, total in 51u64..500, step in 0u64..1000,
        ) {
            let s = Schedule::warmup_cosine(1e-3, warmup, total, 0.01).unwrap();
            if step >= warmup {
                prop_assert!(s.value(step + 1) <= s.value(step) + 1e-18);
            }
            prop_assert!(s.value(step) >= 0.0 && s.value(step) <= 1e-3 + 1e-15);
        }
    }
}
