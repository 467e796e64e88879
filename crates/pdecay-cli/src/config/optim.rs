//! The optimizers a run can use, and everything the application knows about each: how to
//! build it from a config, what its `lambda` means, its name and its settings in words.

use anyhow::{Context, Result, ensure};
use burn::module::ParamGroup;
use burn::optim::Optimizer;
use pdecay::schedule::Schedule;
use pdecay_burn::{
    DecaySummary, DecaysTensors, Decoupled, DecoupledL2, MagnitudePruningConfig, NoDecay,
    PNormConfig, SparseOptimizer, adam_gmp, adam_l1, adam_naive_lp, adam_pytorch, padam_with, psgd,
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
            Self::Padam => pwd_by_layer(config, total_steps, |pnorm| {
                padam_with(0.9, beta2 as f32, 1e-8, pnorm).with_context(invalid)
            })?,
            Self::Psgd => pwd_by_layer(config, total_steps, |pnorm| {
                psgd(0.9, false, pnorm).with_context(invalid)
            })?,
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

/// The pWD optimizer that `make` builds from `config`'s settings, with each layer that
/// `config.layer_lambda` names in a parameter group of its own λ (its weight: biases never
/// decay, so they stay in the default group).
fn pwd_by_layer<O: Optimizer + DecaysTensors>(
    config: &TrainConfig,
    total_steps: u64,
    make: impl Fn(&PNormConfig) -> Result<O>,
) -> Result<SparseOptimizer> {
    let mut optim = SparseOptimizer::new(make(&pnorm(config, total_steps)?)?);
    for (layer, &lambda) in &config.layer_lambda {
        let own = TrainConfig {
            lambda,
            ..config.clone()
        };
        let group = ParamGroup::from_path(format!("{layer}.weight"));
        optim = optim.with_group(group, make(&pnorm(&own, total_steps)?)?);
    }
    Ok(optim)
}

/// Checks that every layer `config.layer_lambda` names is a decayed layer of the model
/// `summary` describes: a misspelt name would otherwise leave that layer at `lambda` unnoticed.
pub fn check_layer_lambda(config: &TrainConfig, summary: &DecaySummary) -> Result<()> {
    let layers: Vec<&str> = summary
        .tensors
        .iter()
        .filter(|(_, _, decayed)| *decayed)
        .filter_map(|(path, _, _)| path.strip_suffix(".weight"))
        .collect();
    for layer in config.layer_lambda.keys() {
        ensure!(
            layers.contains(&layer.as_str()),
            "layer_lambda names `{layer}`, which is not a decayed layer of this --model {}: its decayed layers are {}",
            super::flag_name(config.model),
            layers.join(", ")
        );
    }
    Ok(())
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
    for (layer, lambda) in &c.layer_lambda {
        words += &format!(", {layer} lambda {lambda:e}");
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

    /// An MLP of 4 inputs, one hidden layer of 3 and 10 outputs, and the pAdam of `config`.
    fn small_mlp(
        config: &TrainConfig,
    ) -> (
        crate::models::Classifier,
        SparseOptimizer,
        burn::tensor::Device,
    ) {
        use crate::data::ImageShape;
        use crate::models::{Classifier, ModelKind};
        let device = burn::tensor::Device::default().autodiff();
        device.seed(3);
        let model = Classifier::new(ModelKind::Mlp, ImageShape::new(1, 2, 2), &[3], &device);
        (model, config.optimizer(100).unwrap(), device)
    }

    #[test]
    fn a_layers_own_lambda_sets_its_pwd_factor_and_the_others_keep_lambda() {
        use burn::optim::GradientsParams;
        use burn::tensor::{Tensor, TensorData};
        let config = TrainConfig {
            p: 0.8,
            lambda: 0.05,
            layer_lambda: [("Mlp.output".to_string(), 2.0)].into(),
            ..TrainConfig::default()
        };
        config.validate().unwrap();
        let (model, mut optim, device) = small_mlp(&config);
        // A zero gradient makes Adam's step zero, so each weight is its pWD factor times itself:
        // w · |w|^(2-p) / (|w|^(2-p) + p·lr·λ).
        let x = Tensor::<2>::from_data(TensorData::new(vec![0.5f32; 4], [1, 4]), &device);
        let loss = model.forward_with(x, &[]).sum() * 0.0;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let weights = |m: &crate::models::Classifier| -> Vec<Vec<f32>> {
            let values = pdecay_burn::parameter_values(m);
            ["Mlp.hidden.0.weight", "Mlp.output.weight"]
                .map(|path| {
                    let found = values.iter().find(|v| v.name == path);
                    found.expect(path).values.clone()
                })
                .to_vec()
        };
        let before = weights(&model);
        let lr = 0.1;
        let after = weights(&optim.step(lr, model.clone(), grads).unwrap());
        for (layer, lambda) in [(0, 0.05), (1, 2.0)] {
            for (&w, &got) in before[layer].iter().zip(&after[layer]) {
                let (w, got) = (f64::from(w), f64::from(got));
                let keep = w.abs().powf(1.2);
                let want = w * keep / (keep + 0.8 * lr * lambda);
                assert!(
                    (got - want).abs() <= 1e-6 * w.abs(),
                    "layer {layer}: {w} -> {got}, want {want}"
                );
            }
        }
        // biases never decay, in the layer's group or not
        let summary = optim.decay_summary(&model);
        let decayed: Vec<&str> = summary
            .tensors
            .iter()
            .filter(|t| t.2)
            .map(|t| t.0.as_str())
            .collect();
        assert_eq!(decayed, ["Mlp.hidden.0.weight", "Mlp.output.weight"]);
        check_layer_lambda(&config, &summary).unwrap();
    }

    #[test]
    fn a_layer_lambda_must_name_a_decayed_layer_be_positive_and_go_with_pwd() {
        let named = |layer: &str, lambda: f64| TrainConfig {
            layer_lambda: [(layer.to_string(), lambda)].into(),
            ..TrainConfig::default()
        };
        let (model, optim, _) = small_mlp(&TrainConfig::default());
        let summary = optim.decay_summary(&model);
        for layer in [
            "output",
            "Mlp.hidden",
            "Mlp.hidden.0.bias",
            "Cnn.conv2",
            "Mlp.output.weight",
        ] {
            let message = check_layer_lambda(&named(layer, 1e-3), &summary)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(&format!("`{layer}`"))
                    && message.ends_with("its decayed layers are Mlp.hidden.0, Mlp.output"),
                "{message}"
            );
        }
        for lambda in [0.0, -1e-3, f64::NAN, f64::INFINITY] {
            let message = named("Mlp.output", lambda)
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                message.starts_with("layer_lambda.Mlp.output must be"),
                "{message}"
            );
        }
        let adamw = TrainConfig {
            optim: OptimKind::Adamw,
            ..named("Mlp.output", 1e-3)
        };
        let message = adamw.validate().unwrap_err().to_string();
        assert!(message.contains("needs --optim padam or psgd"), "{message}");
        // a table in config.toml, quoted where a name holds a dot, read back as written
        let config = TrainConfig {
            layer_lambda: [
                ("Mlp.hidden.0".to_string(), 1e-2),
                ("Mlp.output".to_string(), 5e-4),
            ]
            .into(),
            ..TrainConfig::default()
        };
        let text = config.to_toml().unwrap();
        assert!(text.contains("[layer_lambda]"), "{text}");
        // a run without one writes no empty table
        let plain = TrainConfig::default().to_toml().unwrap();
        assert!(!plain.contains("layer_lambda"), "{plain}");
        assert_eq!(TrainConfig::from_toml(&text, "saved").unwrap(), config);
        assert!(
            variant_words(&config).contains(", Mlp.hidden.0 lambda 1e-2, Mlp.output lambda 5e-4"),
            "{}",
            variant_words(&config)
        );
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
