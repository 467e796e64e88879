//! `--preset`: named sets of settings from the paper and nanoGPT. A preset goes over the config
//! file and under the other flags, so `--preset cifar-paper --epochs 10` is the paper's schedule
//! cut to 10 epochs.

use anyhow::{Result, ensure};

use super::{GptPreset, LrSchedule, TrainConfig, flag_name};
use crate::models::ModelKind;

/// A named set of settings for one kind of model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// GPT sizes small enough for a CPU ([`GptPreset::Cpu`], the GPT's default).
    Cpu,
    /// The paper's GPT, nanoGPT's Shakespeare-char model ([`GptPreset::Paper`]).
    Paper,
    /// The paper's CIFAR-10 schedule for an image classifier: batch 400, 100 epochs, 2 warm-up
    /// epochs then cosine to lr/100, lr 1e-3 (Adam's betas are the image classifiers' own,
    /// PyTorch's (0.9, 0.999)). It leaves the model, optimizer, p and λ to the flags or the file.
    CifarPaper,
}

impl Preset {
    /// The batch size of [`Preset::CifarPaper`].
    pub const CIFAR_BATCH: usize = 400;
    /// The epochs of [`Preset::CifarPaper`].
    pub const CIFAR_EPOCHS: usize = 100;
    /// The warm-up epochs of [`Preset::CifarPaper`].
    pub const CIFAR_WARMUP_EPOCHS: f64 = 2.0;

    /// Sets this preset's keys of `config`, whose `model` is already chosen; a preset for
    /// another kind of model is an error.
    pub fn apply(self, config: &mut TrainConfig) -> Result<()> {
        let gpt = config.model == ModelKind::Gpt;
        let wrong = |wants: &str| {
            format!(
                "--preset {} is for {wants}, not --model {}; {}",
                flag_name(self),
                flag_name(config.model),
                if gpt {
                    "the GPT's presets are cpu and paper"
                } else {
                    "an image classifier's preset is cifar-paper"
                }
            )
        };
        match self {
            Self::Cpu | Self::Paper => {
                ensure!(gpt, wrong("the GPT (--model gpt)"));
                let sizes = if self == Self::Cpu {
                    GptPreset::Cpu
                } else {
                    GptPreset::Paper
                };
                config.gpt = sizes.settings();
            }
            Self::CifarPaper => {
                ensure!(!gpt, wrong("the image classifiers"));
                config.batch_size = Self::CIFAR_BATCH;
                config.epochs = Self::CIFAR_EPOCHS;
                config.warmup_epochs = Self::CIFAR_WARMUP_EPOCHS;
                config.schedule = LrSchedule::Cosine;
                config.min_lr_ratio = 0.01;
                config.lr = 1e-3;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar_paper_is_the_papers_schedule_and_refuses_the_gpt() {
        let mut c = TrainConfig {
            model: ModelKind::Resnet18,
            epochs: 3,
            lr: 5e-2,
            schedule: LrSchedule::Constant,
            ..TrainConfig::default()
        };
        Preset::CifarPaper.apply(&mut c).unwrap();
        assert_eq!(
            (
                c.batch_size,
                c.epochs,
                c.warmup_epochs,
                c.min_lr_ratio,
                c.lr
            ),
            (400, 100, 2.0, 0.01, 1e-3)
        );
        assert_eq!(c.schedule, LrSchedule::Cosine);
        assert_eq!(c.model, ModelKind::Resnet18, "the model stays the caller's");
        c.validate().unwrap();

        let mut gpt = TrainConfig {
            model: ModelKind::Gpt,
            ..TrainConfig::default()
        };
        let err = Preset::CifarPaper.apply(&mut gpt).unwrap_err().to_string();
        assert!(
            err.contains("is for the image classifiers, not --model gpt")
                && err.contains("cpu and paper"),
            "{err}"
        );
    }

    #[test]
    fn the_gpt_presets_set_the_gpt_sizes_only() {
        let mut c = TrainConfig {
            model: ModelKind::Gpt,
            ..TrainConfig::default()
        };
        Preset::Paper.apply(&mut c).unwrap();
        assert_eq!(c.gpt, GptPreset::Paper.settings());
        assert_eq!(c.epochs, TrainConfig::default().epochs);
        let mut mlp = TrainConfig::default();
        let err = Preset::Paper.apply(&mut mlp).unwrap_err().to_string();
        assert!(
            err.contains("not --model mlp") && err.contains("cifar-paper"),
            "{err}"
        );
    }
}
