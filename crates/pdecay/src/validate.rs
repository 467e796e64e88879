//! Input validation with typed errors.
//!
//! Every hyper-parameter that reaches the maths passes through here first, so a bad value is
//! reported once, with its name, the value received and the accepted range, instead of turning
//! into a NaN somewhere in a training run.

use thiserror::Error;

/// A hyper-parameter outside its accepted range.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ValidationError {
    /// `p` must be finite and strictly positive.
    #[error(
        "invalid p = {value}: p must be a finite number > 0 (e.g. 0.8 for strong sparsity, 2 for AdamW-like decay)"
    )]
    P {
        /// The value received.
        value: f64,
    },
    /// A coefficient (lambda, lambda2, lr, ...) must be finite and >= 0.
    #[error("invalid {name} = {value}: {name} must be a finite number >= 0")]
    NonNegative {
        /// Which hyper-parameter.
        name: &'static str,
        /// The value received.
        value: f64,
    },
    /// A value that must be finite and strictly positive (a schedule's rate, s-dynamics' rate, ...).
    #[error("invalid {name} = {value}: {name} must be a finite number > 0")]
    Positive {
        /// Which hyper-parameter.
        name: &'static str,
        /// The value received.
        value: f64,
    },
    /// A value that must be a finite number.
    #[error("invalid {name} = {value}: {name} must be a finite number")]
    Finite {
        /// Which hyper-parameter.
        name: &'static str,
        /// The value received.
        value: f64,
    },
    /// A ratio that must lie in `[0, 1]`.
    #[error("invalid {name} = {value}: {name} must lie in [0, 1]")]
    UnitInterval {
        /// Which hyper-parameter.
        name: &'static str,
        /// The value received.
        value: f64,
    },
    /// A count of steps that must be at least one.
    #[error("invalid {name} = 0: {name} must be at least 1")]
    ZeroSteps {
        /// Which hyper-parameter.
        name: &'static str,
    },
}

/// `p` must be finite and `> 0`.
pub fn check_p(p: f64) -> Result<f64, ValidationError> {
    if p.is_finite() && p > 0.0 {
        Ok(p)
    } else {
        Err(ValidationError::P { value: p })
    }
}

/// `value` must be finite and `>= 0`; `name` goes into the message.
pub fn check_non_negative(name: &'static str, value: f64) -> Result<f64, ValidationError> {
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(ValidationError::NonNegative { name, value })
    }
}

/// `value` must be finite and `> 0`; `name` goes into the message.
pub fn check_positive(name: &'static str, value: f64) -> Result<f64, ValidationError> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(ValidationError::Positive { name, value })
    }
}

/// `value` must lie in `[0, 1]`; `name` goes into the message.
pub fn check_unit_interval(name: &'static str, value: f64) -> Result<f64, ValidationError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ValidationError::UnitInterval { name, value })
    }
}

/// `steps` must be at least 1; `name` goes into the message.
pub fn check_steps(name: &'static str, steps: u64) -> Result<u64, ValidationError> {
    if steps == 0 {
        Err(ValidationError::ZeroSteps { name })
    } else {
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_accepts_positive_finite_and_rejects_the_rest() {
        assert_eq!(check_p(0.8), Ok(0.8));
        assert_eq!(check_p(3.0), Ok(3.0));
        for bad in [0.0, -0.5, f64::NAN, f64::INFINITY] {
            let err = check_p(bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("p must be a finite number > 0"), "{msg}");
        }
    }

    #[test]
    fn messages_name_the_parameter_and_the_value() {
        let msg = check_non_negative("lambda", -0.1).unwrap_err().to_string();
        assert!(
            msg.contains("lambda = -0.1") && msg.contains(">= 0"),
            "{msg}"
        );
        let msg = check_non_negative("lr", f64::NAN).unwrap_err().to_string();
        assert!(msg.contains("lr = NaN"), "{msg}");
        assert_eq!(check_non_negative("lambda", 0.0), Ok(0.0));
        assert!(check_positive("gamma", 0.0).is_err());
        assert!(check_unit_interval("min_lr_ratio", 1.5).is_err());
        assert_eq!(check_unit_interval("min_lr_ratio", 0.01), Ok(0.01));
        assert!(check_steps("total_steps", 0).is_err());
    }
}
