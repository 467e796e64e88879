//! The optimizers a run can use, and everything the application knows about each: how to
//! build it from a config, what its `lambda` means, its name and its settings in words.

use anyhow::{Context, Result};
use pdecay::schedule::Schedule;
use pdecay_burn::{
    Decoupled, DecoupledL2, MagnitudePruningConfig, NoDecay, PNormConfig, SparseOptimizer,
    adam_gmp, adam_l1, adam_naive_lp, adam_pytorch, padam_with, psgd,
};
use serde::{Deserialize, Serialize};

use super::TrainConfig;

/// The optimizer (pWD or a baseline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimKind {
    /// Adam + pWD (the paper's pAdam).
    Padam,
    /// SGD with momentum 0.9 + pWD.
    Psgd,
    /// AdamW; `lambda` is PyTorch's weight_decay.
    Adamw,
    /// Adam without decay.
    Adam,
    /// Adam + L1 proximal step with strength `lambda`.
    AdamL1,
    /// Adam on the loss plus the naive Lp penalty (`p`, `lambda`): diverges or stays dense for p < 1.
    NaiveLp,
    /// Adam + gradual magnitude pruning (cubic schedule).
    Gmp,
}

impl OptimKind {
    /// Every optimizer, pWD first, in the order reports list them.
    pub const ALL: [Self; 7] = [
        Self::Padam,
        Self::Psgd,
        Self::Adamw,
        Self::Adam,
        Self::AdamL1,
        Self::NaiveLp,
        Self::Gmp,
    ];

    /// The name reports use.
    pub fn label(self) -> &'static str {
        match self {
            Self::Padam => "pAdam",
            Self::Psgd => "pSGD",
            Self::Adamw => "AdamW",
            Self::Adam => "Adam",
            Self::AdamL1 => "Adam + L1",
            Self::NaiveLp => "naive Lp",
            Self::Gmp => "magnitude pruning",
        }
    }

    /// Whether this is pWD (pAdam, pSGD): the optimizers the pWD variants apply to.
    pub fn uses_pwd(self) -> bool {
        matches!(self, Self::Padam | Self::Psgd)
    }

    /// Whether this optimizer makes weights sparse (all but AdamW and Adam): the methods a
    /// report compares with AdamW.
    pub fn sparsifies(self) -> bool {
        !matches!(self, Self::Adamw | Self::Adam)
    }

    /// This optimizer with `config`'s settings over `total_steps` steps; Adam's beta2 is
    /// `beta2` for pAdam, AdamW and Adam (the L1, naive Lp and magnitude-pruning baselines keep
    /// PyTorch's 0.999).
    pub fn build(
        self,
        config: &TrainConfig,
        total_steps: u64,
        beta2: f64,
    ) -> Result<SparseOptimizer> {
        let invalid = || format!("invalid settings for --optim {}", super::flag_name(self));
        let adam = || adam_pytorch().with_beta_2(beta2 as f32).build();
        let optim = match self {
            Self::Padam => SparseOptimizer::new(
                padam_with(0.9, beta2 as f32, 1e-8, &pnorm(config, total_steps)?)
                    .with_context(invalid)?,
            ),
            Self::Psgd => SparseOptimizer::new(
                psgd(0.9, false, &pnorm(config, total_steps)?).with_context(invalid)?,
            ),
            Self::Adamw => SparseOptimizer::new(Decoupled::new(
                adam(),
                DecoupledL2::new(config.lambda).with_context(invalid)?,
            )),
            Self::Adam => SparseOptimizer::new(Decoupled::new(adam(), NoDecay)),
            Self::AdamL1 => SparseOptimizer::new(adam_l1(config.lambda).with_context(invalid)?),
            Self::NaiveLp => {
                SparseOptimizer::new(adam_naive_lp(config.p, config.lambda).with_context(invalid)?)
            }
            Self::Gmp => {
                let end_step = ((total_steps as f64) * config.gmp_end_fraction).round() as u64;
                let cfg = MagnitudePruningConfig {
                    initial_sparsity: 0.0,
                    final_sparsity: config.gmp_final_sparsity,
                    begin_step: 0,
                    end_step: end_step.max(1),
                    frequency: config.gmp_frequency,
                };
                SparseOptimizer::new(adam_gmp(&cfg).with_context(invalid)?)
            }
        };
        Ok(optim)
    }

    /// The settings that matter for this optimizer in `c`, in words (empty for plain Adam):
    /// `p 0.8, lambda 1e-3, p from 2`, `weight_decay 1e-2`, `target 90%`.
    pub fn settings_words(self, c: &TrainConfig) -> String {
        match self {
            Self::Padam | Self::Psgd => {
                format!("p {}, lambda {:e}{}", c.p, c.lambda, variant_words(c))
            }
            Self::NaiveLp => format!("p {}, lambda {:e}", c.p, c.lambda),
            Self::Adamw => format!("weight_decay {:e}", c.lambda),
            Self::AdamL1 => format!("lambda {:e}", c.lambda),
            Self::Adam => String::new(),
            Self::Gmp => format!("target {}%", compact_number(100.0 * c.gmp_final_sparsity)),
        }
    }
}

/// pWD's variants that a run turns on, as `, p from 2, elastic net 1e-4, ...` (empty for plain
/// pWD).
pub fn variant_words(c: &TrainConfig) -> String {
    let mut words = String::new();
    if let Some(p0) = c.p_start {
        words += &format!(", p from {p0}");
    }
    if c.lambda2 > 0.0 {
        words += &format!(", elastic net {:e}", c.lambda2);
    }
    if let Some(rate) = c.s_dynamics {
        words += &format!(", s-dynamics {rate:e}");
    }
    if let Some(share) = c.lambda_release {
        words += &format!(
            ", lambda released over the last {:.0}% to x{}",
            100.0 * share,
            c.lambda_release_ratio
        );
    }
    if c.late {
        words += ", late";
    }
    if c.structured {
        words += ", structured";
    }
    words
}

/// A number in labels: whole numbers without a decimal point (epoch 3, iteration 1500, 80%),
/// others with one decimal (85.5%). Within 1e-9 of a whole number counts as whole, so that
/// products such as 100 x 0.7 read 70.
pub fn compact_number(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// pWD's settings of `c` over `total_steps` steps: p, λ and the variants.
fn pnorm(c: &TrainConfig, total_steps: u64) -> Result<PNormConfig> {
    let mut cfg = PNormConfig::new(c.p, c.lambda).with_lambda2(c.lambda2);
    if c.late {
        cfg = cfg.late();
    }
    if let Some(p0) = c.p_start {
        cfg = cfg.with_p_schedule(Schedule::linear(p0, c.p, (total_steps / 2).max(1))?);
    }
    if let Some(rate) = c.s_dynamics {
        cfg = cfg.s_dynamics(rate);
    }
    if let Some(share) = c.lambda_release {
        let release = ((total_steps as f64 * share).round() as u64).max(1);
        let hold = total_steps.saturating_sub(release);
        let end = c.lambda * c.lambda_release_ratio;
        // A warm-up from λ to λ is a hold: the cosine starts counting after it.
        let fall = Schedule::cosine(c.lambda, end, release)?;
        cfg = cfg.with_lambda_schedule(Schedule::warmup(c.lambda, hold, fall)?);
    }
    if c.structured {
        cfg = cfg.structured();
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(share: f64, ratio: f64) -> TrainConfig {
        TrainConfig {
            lambda: 0.05,
            lambda_release: Some(share),
            lambda_release_ratio: ratio,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn a_lambda_release_holds_lambda_then_falls_along_a_half_cosine() {
        let pnorm = pnorm(&released(0.25, 0.01), 1000).unwrap().build().unwrap();
        for step in [0, 400, 749, 750] {
            assert_eq!(pnorm.lambda_at(step), 0.05, "step {step}");
        }
        // halfway down the cosine: the mean of its two ends
        let halfway = (0.05 + 0.05 * 0.01) / 2.0;
        assert!((pnorm.lambda_at(875) - halfway).abs() < 1e-12);
        assert!(pnorm.lambda_at(874) > pnorm.lambda_at(875));
        for step in [1000, 5000] {
            assert!((pnorm.lambda_at(step) - 5e-4).abs() < 1e-15, "step {step}");
        }
        // without a release lambda stays put
        let plain = super::pnorm(&TrainConfig::default(), 1000)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(plain.lambda_at(999), TrainConfig::default().lambda);
    }

    #[test]
    fn a_lambda_release_out_of_range_is_refused_with_the_key_named() {
        for (share, ratio, start) in [
            (0.0, 0.01, "lambda_release is the share"),
            (1.5, 0.01, "lambda_release is the share"),
            (f64::NAN, 0.01, "lambda_release is the share"),
            (0.25, 0.0, "lambda_release_ratio must"),
            (0.25, 2.0, "lambda_release_ratio must"),
        ] {
            let message = released(share, ratio).validate().unwrap_err().to_string();
            assert!(message.starts_with(start), "{message}");
        }
        released(1.0, 1.0).validate().unwrap();
        let adamw = TrainConfig {
            optim: OptimKind::Adamw,
            ..released(0.25, 0.01)
        };
        let message = adamw.validate().unwrap_err().to_string();
        assert!(message.contains("needs --optim padam or psgd"), "{message}");
    }
}
