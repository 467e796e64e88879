//! A run's settings: `config.toml` holds exactly one [`TrainConfig`].
//!
//! The file is flat (`p = 0.8`, `lambda = 1e-3`, a `[gpt]` table for the GPT's sizes) and keeps
//! serde's `deny_unknown_fields`, so a typo is an error naming the key. Each concern reads its
//! part: [`OptimKind`] builds the optimizer, [`LrSchedule`] the image classifiers' lr schedule,
//! [`GptSettings`] the GPT's sizes and schedule. Every default is one constant in [`defaults`]:
//! the `Default` impl, the flags' help and the docs read it.

pub mod gpt;
pub mod optim;
pub mod preset;

use std::collections::BTreeMap;

use anyhow::{Context, Result, ensure};
use pdecay::schedule::Schedule;
use serde::{Deserialize, Serialize};

use crate::data::ImageShape;
use crate::models::{Cnn, ModelKind};

pub use gpt::{GPT_THRESHOLD, GptPreset, GptSettings};
pub use optim::OptimKind;
pub use preset::Preset;

/// The default of every top-level key of [`TrainConfig`] (the GPT's are [`GptPreset::Cpu`]).
pub mod defaults {
    use super::{LrSchedule, ModelKind, OptimKind};

    /// The network.
    pub const MODEL: ModelKind = ModelKind::Mlp;
    /// LeNet-300-100.
    pub const HIDDEN: [usize; 2] = [300, 100];
    /// The optimizer.
    pub const OPTIM: OptimKind = OptimKind::Padam;
    /// pWD's p, as in the authors' reference code.
    pub const P: f64 = 0.8;
    /// pWD's lambda, as in the authors' reference code.
    pub const LAMBDA: f64 = 1e-3;
    /// Peak learning rate.
    pub const LR: f64 = 1e-3;
    /// Passes over the training set.
    pub const EPOCHS: usize = 10;
    /// Images per step.
    pub const BATCH_SIZE: usize = 128;
    /// Linear warm-up, in epochs.
    pub const WARMUP_EPOCHS: f64 = 1.0;
    /// Cosine to lr/100, the paper's.
    pub const MIN_LR_RATIO: f64 = 0.01;
    /// The lr schedule after the warm-up.
    pub const SCHEDULE: LrSchedule = LrSchedule::Cosine;
    /// Seed of initialisation, shuffling and dropout.
    pub const SEED: u64 = 0;
    /// Elastic-net L2 strength (off).
    pub const LAMBDA2: f64 = 0.0;
    /// λ at the end of a release, as a share of λ.
    pub const LAMBDA_RELEASE_RATIO: f64 = 0.01;
    /// Magnitude pruning's final sparsity.
    pub const GMP_FINAL_SPARSITY: f64 = 0.9;
    /// Magnitude pruning ends after this share of training.
    pub const GMP_END_FRACTION: f64 = 0.75;
    /// Steps between magnitude pruning's mask updates.
    pub const GMP_FREQUENCY: u64 = 100;
    /// |w| below this counts as zero, the paper's.
    pub const THRESHOLD: f64 = pdecay::sparsity::DEFAULT_THRESHOLD;
    /// Linear layers move to the sparse product where it measures faster.
    pub const SPARSE_TRAINING: super::SparseTraining = super::SparseTraining::Auto;
}

/// `text [default: value]`: a flag's help with its default read from [`defaults`].
pub fn with_default(text: &str, default: impl std::fmt::Display) -> String {
    format!("{text} [default: {default}]")
}

/// A value as its flag and config files spell it: `mlp`, `adam-l1`.
pub fn flag_name(value: impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

/// The learning-rate schedule of the image classifiers after the warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Cosine from lr to lr·min_lr_ratio (the paper's).
    Cosine,
    /// Geometric from lr to lr·min_lr_ratio (the 2023 blog's).
    Geometric,
    /// Constant lr.
    Constant,
}

/// Whether linear layers train over their weights' non-zeros only (`pdecay_burn::sparse_linear`).
/// That leaves the run unchanged (up to summation order) only where an exactly-zero weight
/// stays zero whatever its gradient: pWD (pAdam, pSGD) with p < 2 and λ > 0, the plain factor
/// (not `late`, structured, s-dynamics or elastic net).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum SparseTraining {
    /// A layer moves to the sparse product, for the rest of the run, at the first evaluation
    /// (epoch end; the GPT's `eval_interval`) where zeros are absorbing, it is mostly zero and the sparse product measures faster on
    /// its shapes (timed there, alternated with the dense one). Dense where zeros are not
    /// absorbing. Two runs agree up to summation order only (their timings may differ).
    Auto,
    /// Every linear and convolution layer on the sparse product from the first step (or
    /// evaluation) where zeros are absorbing; an error for an optimizer whose zeros are not.
    On,
    /// Dense products throughout.
    Off,
}

/// Every setting of a training run; `config.toml` holds exactly this.
///
/// The top-level schedule keys (`epochs`, `batch_size`, `warmup_epochs`, `min_lr_ratio`,
/// `schedule`, `augment`) are the image classifiers'; the GPT's are in [`GptSettings`], and a
/// new run that sets a key its model or optimizer does not read is refused
/// ([`TrainConfig::refuse_inapplicable_keys`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The network ([`defaults::MODEL`]).
    pub model: ModelKind,
    /// Hidden layer widths of the MLP ([`defaults::HIDDEN`]).
    pub hidden: Vec<usize>,
    /// The CNN's conv channels and dense units ([`Cnn::WIDTHS`], the 2023 blog's).
    pub cnn_widths: Vec<usize>,
    /// A ResNet's stem channels, doubled at each later stage (unset: the standard network's,
    /// 64 for ResNet-18 and 16 for ResNet-20).
    pub resnet_width: Option<usize>,
    /// The optimizer ([`defaults::OPTIM`]).
    pub optim: OptimKind,
    /// pWD's norm, also the naive Lp penalty's ([`defaults::P`]).
    pub p: f64,
    /// The strength of the optimizer's decay ([`defaults::LAMBDA`]): pWD's λ for pAdam and
    /// pSGD, PyTorch's weight_decay for AdamW, the L1 or naive Lp penalty's strength; unused by
    /// Adam and magnitude pruning.
    pub lambda: f64,
    /// Peak learning rate ([`defaults::LR`]).
    pub lr: f64,
    /// Passes over the training set ([`defaults::EPOCHS`]).
    pub epochs: usize,
    /// Images per step ([`defaults::BATCH_SIZE`]).
    pub batch_size: usize,
    /// Linear warm-up from 0, in epochs, may be fractional ([`defaults::WARMUP_EPOCHS`]).
    pub warmup_epochs: f64,
    /// Final lr as a share of the peak ([`defaults::MIN_LR_RATIO`]).
    pub min_lr_ratio: f64,
    /// The lr schedule after the warm-up ([`defaults::SCHEDULE`]).
    pub schedule: LrSchedule,
    /// Seed of initialisation, shuffling and dropout ([`defaults::SEED`]).
    pub seed: u64,
    /// pWD variant: factor from the post-step weight.
    pub late: bool,
    /// pWD variant: elastic-net L2 strength ([`defaults::LAMBDA2`]).
    pub lambda2: f64,
    /// pWD variant: p starts here and moves linearly to `p` over the first half of training.
    pub p_start: Option<f64>,
    /// pWD variant: s-dynamics with this rate of s.
    pub s_dynamics: Option<f64>,
    /// pWD variant, λ release: over this last share of training λ falls along a half cosine to
    /// `lambda · lambda_release_ratio`. For p < 2, while λ > 0, a weight that is exactly zero
    /// gets the factor 0 and stays zero, so the surviving weights shed the penalty's shrinkage
    /// and the sparsity pattern holds. pAdam and pSGD only.
    pub lambda_release: Option<f64>,
    /// λ at the end of a release, as a share of `lambda` ([`defaults::LAMBDA_RELEASE_RATIO`];
    /// must stay > 0, since at λ = 0 pWD is off and the zeros would grow back).
    pub lambda_release_ratio: f64,
    /// pWD variant: structured (whole neurons and channels).
    pub structured: bool,
    /// pWD's λ for single layers: a `[layer_lambda]` table of `"Cnn.conv2" = 5e-3`, each layer
    /// named by its weight's path without `.weight`, as the `layers` of metrics.jsonl and the
    /// decay plan printed at the start name them (the CNN's `Cnn.conv1`, `Cnn.conv2`,
    /// `Cnn.dense`, `Cnn.output`; the MLP's `Mlp.hidden.0`, ..., `Mlp.output`). Every other
    /// layer takes `lambda`, and a λ release scales each layer's λ alike. pAdam and pSGD only;
    /// each λ must be > 0, so that the layer's zeros stay zero (a small λ keeps a layer nearly
    /// dense). Left out of config.toml when empty.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub layer_lambda: BTreeMap<String, f64>,
    /// Magnitude pruning: final sparsity ([`defaults::GMP_FINAL_SPARSITY`]).
    pub gmp_final_sparsity: f64,
    /// Magnitude pruning: share of training when pruning ends ([`defaults::GMP_END_FRACTION`]).
    pub gmp_end_fraction: f64,
    /// Magnitude pruning: steps between mask updates ([`defaults::GMP_FREQUENCY`]).
    pub gmp_frequency: u64,
    /// |w| below this counts as zero ([`defaults::THRESHOLD`]).
    pub threshold: f64,
    /// Augment the training images as their data set is: Fashion-MNIST's random shifts of up
    /// to ±2 pixels (zero-filled), CIFAR-10's random crops of the 4-pixel reflect-padded image;
    /// both with random horizontal flips.
    pub augment: bool,
    /// With `augment`, also rotate each training image by a random angle in ±this many degrees
    /// (nearest neighbour, corners filled with 0; the authors' CIFAR-10 option is 10). 0: none.
    pub rotate_degrees: f64,
    /// The data: `"embedded"` for the embedded subset, a folder of IDX files, or unset for
    /// `$PDECAY_DATA`, then /usr/share/datasets/fashion-mnist; for the GPT, a UTF-8 text file.
    pub data: Option<String>,
    /// Sparse training of the image classifiers' linear layers ([`defaults::SPARSE_TRAINING`]).
    pub sparse_training: SparseTraining,
    /// The images' `[channels, height, width]`, recorded from the data when a run starts
    /// ([`ImageShape::FASHION_MNIST`] until then, and for runs written before the key): what
    /// rebuilds the network from its run folder without the data.
    pub image_shape: ImageShape,
    /// The GPT's sizes and schedule (`[gpt]`; used when `model = "gpt"`).
    pub gpt: GptSettings,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: defaults::MODEL,
            hidden: defaults::HIDDEN.to_vec(),
            cnn_widths: Cnn::WIDTHS.to_vec(),
            resnet_width: None,
            optim: defaults::OPTIM,
            p: defaults::P,
            lambda: defaults::LAMBDA,
            lr: defaults::LR,
            epochs: defaults::EPOCHS,
            batch_size: defaults::BATCH_SIZE,
            warmup_epochs: defaults::WARMUP_EPOCHS,
            min_lr_ratio: defaults::MIN_LR_RATIO,
            schedule: defaults::SCHEDULE,
            seed: defaults::SEED,
            late: false,
            lambda2: defaults::LAMBDA2,
            p_start: None,
            s_dynamics: None,
            lambda_release: None,
            lambda_release_ratio: defaults::LAMBDA_RELEASE_RATIO,
            structured: false,
            layer_lambda: BTreeMap::new(),
            gmp_final_sparsity: defaults::GMP_FINAL_SPARSITY,
            gmp_end_fraction: defaults::GMP_END_FRACTION,
            gmp_frequency: defaults::GMP_FREQUENCY,
            threshold: defaults::THRESHOLD,
            augment: false,
            rotate_degrees: 0.0,
            data: None,
            sparse_training: defaults::SPARSE_TRAINING,
            image_shape: ImageShape::FASHION_MNIST,
            gpt: GptSettings::default(),
        }
    }
}

impl TrainConfig {
    /// Reads a config file (a run's config.toml, or one given to `--config`); unknown keys and
    /// wrong types are errors naming the key and `source`.
    pub fn from_toml(text: &str, source: &str) -> Result<Self> {
        toml::from_str(text).with_context(|| format!("{source} is not a valid config file"))
    }

    /// The config as config.toml holds it.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }

    /// The widths of the configured model: `hidden` for the MLP, `cnn_widths` for the CNN,
    /// `resnet_width` (if set) for a ResNet.
    pub fn widths(&self) -> &[usize] {
        match self.model {
            ModelKind::Mlp | ModelKind::Gpt => &self.hidden,
            ModelKind::Cnn => &self.cnn_widths,
            ModelKind::Resnet18 | ModelKind::Resnet20 => self.resnet_width.as_slice(),
        }
    }

    /// This config for a run on images of `shape`: it records the data's shape, which must be
    /// the one already recorded unless that is still the default (a new run, or one written
    /// before the key).
    pub fn with_image_shape(&self, shape: ImageShape) -> Result<Self> {
        ensure!(
            self.image_shape == shape || self.image_shape == ImageShape::FASHION_MNIST,
            "the run was set up for {} images (image_shape = {:?}), but its data holds {shape} images: give the run the data it started with (image_shape is recorded by pdecay; leave it out of config files)",
            self.image_shape,
            <[usize; 3]>::from(self.image_shape),
        );
        Ok(Self {
            image_shape: shape,
            ..self.clone()
        })
    }

    /// The first step from which an exactly-zero decayed weight stays zero for the rest of a
    /// run of `total_steps` (pWD's factor at `w = 0` is 0 for p < 2 and p·lr·λ > 0), or why
    /// no such step exists. With `p_start`, p falls linearly over the first half: zeros are
    /// absorbing once p < 2. A λ release keeps λ > 0 (its ratio is > 0).
    pub fn zeros_absorbing_from(&self, total_steps: u64) -> Result<u64, String> {
        let optim = flag_name(self.optim);
        if !self.optim.uses_pwd() {
            return Err(format!(
                "--optim {optim} lets a zero weight move again (only pWD, padam or psgd, keeps it at zero)"
            ));
        }
        let variant = [
            (
                self.late,
                "the late variant computes its factor after the step",
            ),
            (
                self.structured,
                "structured decay zeroes groups, not single weights",
            ),
            (self.s_dynamics.is_some(), "s-dynamics changes the factor"),
            (
                self.lambda2 > 0.0,
                "the elastic-net term changes the factor",
            ),
        ];
        if let Some((_, why)) = variant.iter().find(|(on, _)| *on) {
            return Err((*why).to_string());
        }
        // NaN fails the comparisons as a too-small value would
        if self.lambda.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
            return Err(format!("lambda is {}: pWD is off", self.lambda));
        }
        if self.p.partial_cmp(&2.0) != Some(std::cmp::Ordering::Less) {
            return Err(format!(
                "p is {}: for p >= 2 a zero weight's factor is not 0",
                self.p
            ));
        }
        match self.p_start {
            Some(p0) if p0 >= 2.0 => {
                // p(s) = p0 + (p - p0)·s/h, h = total/2 (the schedule pnorm builds): the first
                // s with p(s) < 2 - 1e-3, a margin so that the f32 p the kernel sees is < 2 too
                let half = (total_steps / 2).max(1) as f64;
                let s = ((p0 - 2.0 + 1e-3) / (p0 - self.p) * half).floor() as u64 + 1;
                Ok(s)
            }
            _ => Ok(0),
        }
    }

    /// Checks the settings that the optimizer constructors do not.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.epochs >= 1,
            "epochs must be at least 1, got {}",
            self.epochs
        );
        ensure!(
            self.batch_size >= 1,
            "batch_size must be at least 1, got {}",
            self.batch_size
        );
        ensure!(
            self.lr.is_finite() && self.lr > 0.0,
            "lr must be a finite number > 0, got {}",
            self.lr
        );
        ensure!(
            self.warmup_epochs.is_finite()
                && self.warmup_epochs >= 0.0
                && self.warmup_epochs <= self.epochs as f64,
            "warmup_epochs must lie in [0, epochs = {}], got {}",
            self.epochs,
            self.warmup_epochs
        );
        ensure!(
            self.threshold.is_finite() && self.threshold >= 0.0,
            "threshold must be a finite number >= 0, got {}",
            self.threshold
        );
        ensure!(
            (0.0..=180.0).contains(&self.rotate_degrees),
            "rotate_degrees must lie in [0, 180] (the largest rotation either way; 10 is the authors'), got {}",
            self.rotate_degrees
        );
        ensure!(
            self.hidden.iter().all(|&h| h > 0),
            "hidden widths must be at least 1, got {:?}",
            self.hidden
        );
        ensure!(
            self.cnn_widths.len() == 3 && self.cnn_widths.iter().all(|&w| w > 0),
            "cnn_widths must be three widths >= 1 (conv channels, conv channels, dense units), got {:?}",
            self.cnn_widths
        );
        ensure!(
            self.resnet_width.is_none_or(|w| (1..=4096).contains(&w)),
            "resnet_width must be between 1 and 4096 stem channels, got {:?}",
            self.resnet_width
        );
        let shape = self.image_shape;
        ensure!(
            [shape.channels, shape.height, shape.width]
                .iter()
                .all(|&n| (1..=4096).contains(&n)),
            "image_shape must be [channels, height, width], each between 1 and 4096, got {:?}",
            <[usize; 3]>::from(shape)
        );
        // named by their keys here: the optimizer constructors would name their own fields
        use pdecay::validate::{check_positive, check_unit_interval};
        check_unit_interval("min_lr_ratio", self.min_lr_ratio)?;
        if let Some(p0) = self.p_start {
            check_positive("p_start", p0)?;
        }
        if let Some(rate) = self.s_dynamics {
            check_positive("s_dynamics", rate)?;
        }
        check_unit_interval("gmp_final_sparsity", self.gmp_final_sparsity)?;
        check_unit_interval("gmp_end_fraction", self.gmp_end_fraction)?;
        ensure!(
            self.gmp_end_fraction > 0.0,
            "gmp_end_fraction must be > 0: magnitude pruning reaches its target sparsity after that share of training, got 0"
        );
        ensure!(
            self.schedule != LrSchedule::Geometric || self.min_lr_ratio > 0.0,
            "the geometric schedule needs min_lr_ratio > 0 (it multiplies the lr down to lr x min_lr_ratio), got 0"
        );
        ensure!(
            self.gmp_frequency >= 1,
            "gmp_frequency must be at least 1 step, got 0"
        );
        if let Some(share) = self.lambda_release {
            ensure!(
                self.optim.uses_pwd(),
                "lambda_release is a pWD variant: it needs --optim padam or psgd, got {}",
                flag_name(self.optim)
            );
            ensure!(
                share.is_finite() && share > 0.0 && share <= 1.0,
                "lambda_release is the share of training over which lambda falls; it must lie in (0, 1], got {share}"
            );
            ensure!(
                self.lambda_release_ratio.is_finite()
                    && self.lambda_release_ratio > 0.0
                    && self.lambda_release_ratio <= 1.0,
                "lambda_release_ratio must lie in (0, 1] (at 0 pWD switches off and the zeroed weights grow back), got {}",
                self.lambda_release_ratio
            );
        }
        ensure!(
            self.layer_lambda.is_empty() || self.optim.uses_pwd(),
            "layer_lambda sets pWD's lambda per layer: it needs --optim padam or psgd, got {}",
            flag_name(self.optim)
        );
        for (layer, &lambda) in &self.layer_lambda {
            ensure!(
                lambda.is_finite() && lambda > 0.0,
                "layer_lambda.{layer} must be a finite number > 0 (at 0 pWD is off in that layer and its zeroed weights grow back; a small lambda keeps it nearly dense), got {lambda}"
            );
        }
        if self.model == ModelKind::Gpt {
            self.gpt.validate()?;
        }
        if self.sparse_training == SparseTraining::On
            && let Err(why) = self.zeros_absorbing_from(1)
        {
            anyhow::bail!(
                "sparse_training = on needs zeros that stay zero, and {why}: use --sparse-training auto (dense where it cannot help) or off"
            );
        }
        // Builds the optimizer once so a bad p, lambda, ... fails before any data is loaded.
        self.optimizer(1)?;
        Ok(())
    }

    /// For a new run: every key set (to other than its default) must be one that the run's
    /// model and optimizer read, so that no flag, config key or sweep axis is silently
    /// ignored (`--optim adamw --p 0.5`, `--model cnn --hidden 64`, a GPT's `epochs`). Not
    /// checked on resume, so run folders written before this check keep resuming.
    pub fn refuse_inapplicable_keys(&self) -> Result<()> {
        use ModelKind::{Cnn, Gpt, Mlp};
        use OptimKind::{Adam, Gmp, NaiveLp, Padam, Psgd};
        let d = TrainConfig::default();
        let (model, optim) = (self.model, self.optim);
        let pwd = optim.uses_pwd();
        let gmp = optim == Gmp;
        let by_pwd = "pWD (--optim padam or psgd)";
        let by_gmp = "magnitude pruning (--optim gmp)";
        let keys = [
            (
                "hidden",
                self.hidden != d.hidden,
                model == Mlp,
                "the MLP (--model mlp)",
            ),
            (
                "cnn_widths",
                self.cnn_widths != d.cnn_widths,
                model == Cnn,
                "the CNN (--model cnn)",
            ),
            (
                "resnet_width",
                self.resnet_width.is_some(),
                model.is_resnet(),
                "the ResNets (--model resnet18 or resnet20)",
            ),
            (
                "gpt",
                self.gpt != d.gpt,
                model == Gpt,
                "the GPT (--model gpt)",
            ),
            (
                "p",
                self.p != d.p,
                matches!(optim, Padam | Psgd | NaiveLp),
                "pWD and the naive Lp penalty (--optim padam, psgd or naive-lp)",
            ),
            (
                "lambda",
                self.lambda != d.lambda,
                !matches!(optim, Adam | Gmp),
                "every optimizer but adam and gmp",
            ),
            ("late", self.late, pwd, by_pwd),
            ("lambda2", self.lambda2 != d.lambda2, pwd, by_pwd),
            ("p_start", self.p_start.is_some(), pwd, by_pwd),
            ("s_dynamics", self.s_dynamics.is_some(), pwd, by_pwd),
            // lambda_release: validate() refuses it without pWD, on resume too
            (
                "lambda_release_ratio",
                self.lambda_release_ratio != d.lambda_release_ratio,
                pwd && self.lambda_release.is_some(),
                "a lambda release (--lambda-release)",
            ),
            ("structured", self.structured, pwd, by_pwd),
            (
                "gmp_final_sparsity",
                self.gmp_final_sparsity != d.gmp_final_sparsity,
                gmp,
                by_gmp,
            ),
            (
                "gmp_end_fraction",
                self.gmp_end_fraction != d.gmp_end_fraction,
                gmp,
                by_gmp,
            ),
            (
                "gmp_frequency",
                self.gmp_frequency != d.gmp_frequency,
                gmp,
                by_gmp,
            ),
            (
                "rotate_degrees",
                self.rotate_degrees != d.rotate_degrees,
                self.augment,
                "augmentation (--augment)",
            ),
        ];
        for (key, set, read, readers) in keys {
            let spelled = match key {
                "gpt" => "the [gpt] table".to_string(),
                "cnn_widths" => "`cnn_widths` (a config key)".to_string(),
                _ => format!("`{key}` (--{})", key.replace('_', "-")),
            };
            ensure!(
                !set || read,
                "{spelled} is read only by {readers}; this run is --model {} --optim {}, which would ignore it: remove it",
                flag_name(model),
                flag_name(optim)
            );
        }
        if model != Gpt {
            return Ok(());
        }
        let unused = [
            ("epochs", self.epochs != d.epochs, "gpt.iters"),
            // 0.1 wrote `--batch-size` for a GPT into both: the same value is no contradiction
            (
                "batch_size",
                self.batch_size != d.batch_size && self.batch_size != self.gpt.batch_size,
                "gpt.batch_size",
            ),
            (
                "warmup_epochs",
                self.warmup_epochs != d.warmup_epochs,
                "gpt.warmup_iters",
            ),
            (
                "min_lr_ratio",
                self.min_lr_ratio != d.min_lr_ratio,
                "gpt.min_lr_ratio",
            ),
            (
                "schedule",
                self.schedule != d.schedule,
                "the GPT always warms up, then follows a cosine: set gpt.warmup_iters and gpt.min_lr_ratio instead",
            ),
            (
                "augment",
                self.augment != d.augment,
                "the GPT has no augmentation: remove it",
            ),
        ];
        for (key, set, instead) in unused {
            let instead = if instead.starts_with("gpt.") {
                format!("set {instead} instead (in a config file: under [gpt])")
            } else {
                instead.to_string()
            };
            ensure!(
                !set,
                "`{key}` is an image classifier's setting and the GPT does not read it; {instead}"
            );
        }
        Ok(())
    }

    /// Checks that a run of `total_steps` optimizer steps trains what its settings ask for:
    /// magnitude pruning must reach a mask update before it ends.
    pub fn check_run_length(&self, total_steps: u64) -> Result<()> {
        if self.optim == OptimKind::Gmp {
            let end = ((total_steps as f64) * self.gmp_end_fraction).round() as u64;
            ensure!(
                self.gmp_frequency <= end.max(1),
                "magnitude pruning updates its mask every gmp_frequency = {} steps, but it ends at step {end} (gmp_end_fraction {} of the run's {total_steps} steps): it would never prune. Lower --gmp-frequency to at most {end}, or train longer",
                self.gmp_frequency,
                self.gmp_end_fraction,
            );
        }
        Ok(())
    }

    /// The data the run names: its images, or for a GPT its text.
    pub fn load_data(&self) -> Result<crate::data::RunData> {
        use crate::data::{RunData, load_images, load_text};
        Ok(if self.model == ModelKind::Gpt {
            RunData::Text(load_text(self.data.as_deref(), self.gpt.block_size)?)
        } else {
            RunData::Images(load_images(self.data.as_deref())?)
        })
    }

    /// The image classifiers' lr schedule over `steps_per_epoch · epochs` steps.
    pub fn lr_schedule(&self, steps_per_epoch: usize) -> Result<Schedule> {
        let total = (self.epochs * steps_per_epoch) as u64;
        let warmup = (self.warmup_epochs * steps_per_epoch as f64).round() as u64;
        let after = total.saturating_sub(warmup).max(1);
        let end = self.lr * self.min_lr_ratio;
        let then = match self.schedule {
            LrSchedule::Cosine => Schedule::cosine(self.lr, end, after)?,
            LrSchedule::Geometric => Schedule::geometric(self.lr, end, after)
                .context("the geometric schedule needs min_lr_ratio > 0")?,
            LrSchedule::Constant => Schedule::constant(self.lr)?,
        };
        pdecay::validate::check_unit_interval("min_lr_ratio", self.min_lr_ratio)?;
        Ok(Schedule::warmup(0.0, warmup, then)?)
    }

    /// The run's optimizer over `total_steps` steps (Adam's beta2 is the GPT's `gpt.beta2`
    /// for a GPT, PyTorch's 0.999 otherwise).
    pub fn optimizer(&self, total_steps: u64) -> Result<pdecay_burn::SparseOptimizer> {
        let beta2 = if self.model == ModelKind::Gpt {
            self.gpt.beta2
        } else {
            0.999
        };
        self.optim.build(self, total_steps, beta2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_records_its_datas_shape_and_keeps_it() {
        // a new run (or one written before the key) takes the data's shape
        let fresh = TrainConfig::default();
        let cifar = fresh.with_image_shape(ImageShape::CIFAR10).unwrap();
        assert_eq!(cifar.image_shape, ImageShape::CIFAR10);
        let text = cifar.to_toml().unwrap();
        assert_eq!(
            TrainConfig::from_toml(&text, "saved").unwrap(),
            cifar,
            "{text}"
        );
        // once recorded, other data is refused, naming both shapes
        let message = cifar
            .with_image_shape(ImageShape::new(1, 28, 28))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("3x32x32") && message.contains("1x28x28"),
            "{message}"
        );
        assert_eq!(cifar.with_image_shape(ImageShape::CIFAR10).unwrap(), cifar);
        // a config without the key reads as Fashion-MNIST's shape
        let old = TrainConfig::from_toml("p = 0.5\n", "old").unwrap();
        assert_eq!(old.image_shape, ImageShape::FASHION_MNIST);
        let bad = TrainConfig {
            image_shape: ImageShape::new(0, 32, 32),
            ..TrainConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("image_shape")
        );
    }
}
