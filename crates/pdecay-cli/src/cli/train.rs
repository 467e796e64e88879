//! `pdecay train`: flags and config files to a [`TrainConfig`], then the trainer.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pdecay_burn::on_pool;

use super::device::DeviceSpec;
use super::progress::{for_stdout, set_threads};
use crate::config::{
    GptPreset, GptSettings, LrSchedule, OptimKind, Preset, SparseTraining, TrainConfig, defaults,
    flag_name as name, with_default,
};
use crate::data::{EMBEDDED, RunData};
use crate::models::ModelKind;
use crate::run::RunDir;
use crate::train::{RunOptions, train_classifier, train_gpt};

fn cpu() -> GptSettings {
    GptPreset::Cpu.settings()
}

/// Flags of `pdecay train`. Each overrides the same key of `--config FILE`; unset keys take the
/// file's value, else the default shown. A switch (`--late`) also takes `=false`, to turn off
/// what a config file turns on.
#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// A TOML file with any of the keys below (snake_case, e.g. `batch_size = 64`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Folder with the four (Fashion-)MNIST IDX files, gzip'd or not [default: $PDECAY_DATA,
    /// then /usr/share/datasets/fashion-mnist]; CIFAR-10's binary version (its folder or
    /// cifar-10-binary.tar.gz); for the GPT, a UTF-8 text file.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Train on the embedded Fashion-MNIST subset (5,500 train / 1,000 test images).
    #[arg(long, conflicts_with = "data")]
    pub embedded: bool,
    /// Run folder [default: runs/<model>-<optim>-<timestamp>].
    #[arg(long, conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in this folder from its last checkpoint (its config.toml is used;
    /// flags that contradict it are an error).
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Stop once this many epochs (GPT: iterations) are done (resumable with --resume).
    #[arg(long, value_name = "N")]
    pub stop_after: Option<usize>,
    #[arg(long, value_enum, help = with_default("Network", name(defaults::MODEL)))]
    pub model: Option<ModelKind>,
    #[arg(long, value_delimiter = ',', help = with_default("MLP hidden widths, comma-separated", widths(&defaults::HIDDEN)))]
    pub hidden: Option<Vec<usize>>,
    /// A ResNet's stem channels, doubled at each later stage [default: the standard network's,
    /// 64 for resnet18, 16 for resnet20].
    #[arg(long, value_name = "CHANNELS")]
    pub resnet_width: Option<usize>,
    #[arg(long, value_enum, help = with_default("Optimizer", name(defaults::OPTIM)))]
    pub optim: Option<OptimKind>,
    #[arg(long, help = with_default("pWD's norm p (the authors' reference code's)", defaults::P))]
    pub p: Option<f64>,
    #[arg(long = "lambda", help = with_default("pWD's strength lambda; AdamW's weight_decay; L1's strength (the authors' reference code's)", defaults::LAMBDA))]
    pub lambda: Option<f64>,
    #[arg(long, help = with_default("Peak learning rate", defaults::LR))]
    pub lr: Option<f64>,
    #[arg(long, help = with_default("Epochs (image classifiers)", defaults::EPOCHS))]
    pub epochs: Option<usize>,
    #[arg(long, help = format!("Images (GPT: sequences) per step [default: {}; GPT: {}]", defaults::BATCH_SIZE, cpu().batch_size))]
    pub batch_size: Option<usize>,
    #[arg(long, help = with_default("Warm-up epochs, may be fractional (image classifiers)", defaults::WARMUP_EPOCHS))]
    pub warmup_epochs: Option<f64>,
    #[arg(long, help = format!("Final lr / peak lr [default: {} (the paper's cosine to lr/100); GPT: {} (nanoGPT's)]", defaults::MIN_LR_RATIO, cpu().min_lr_ratio))]
    pub min_lr_ratio: Option<f64>,
    #[arg(long, value_enum, help = with_default("Learning-rate schedule after warm-up (image classifiers)", name(defaults::SCHEDULE)))]
    pub schedule: Option<LrSchedule>,
    #[arg(long, help = with_default("Seed", defaults::SEED))]
    pub seed: Option<u64>,
    #[arg(long, value_enum, help = with_default("Train linear and conv layers over their weights' non-zeros where zeros stay zero (pWD, p < 2): auto where it measures faster, on, off", name(defaults::SPARSE_TRAINING)))]
    pub sparse_training: Option<SparseTraining>,
    /// pWD variant: factor from the post-step weight.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub late: Option<bool>,
    #[arg(long, help = with_default("pWD variant: elastic-net L2 strength", defaults::LAMBDA2))]
    pub lambda2: Option<f64>,
    /// pWD variant: p starts here and moves to --p over the first half of training.
    #[arg(long)]
    pub p_start: Option<f64>,
    /// pWD variant: s-dynamics with this rate of s.
    #[arg(long)]
    pub s_dynamics: Option<f64>,
    /// pWD variant: over this last share of training lambda falls (half cosine) to
    /// lambda x --lambda-release-ratio; exact zeros stay zero.
    #[arg(long)]
    pub lambda_release: Option<f64>,
    #[arg(long, help = with_default("End of the lambda release as a share of lambda, in (0, 1]", defaults::LAMBDA_RELEASE_RATIO))]
    pub lambda_release_ratio: Option<f64>,
    /// pWD variant: structured (group) decay of whole neurons and channels.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub structured: Option<bool>,
    #[arg(long, help = with_default("Magnitude pruning (--optim gmp): final sparsity", defaults::GMP_FINAL_SPARSITY))]
    pub gmp_final_sparsity: Option<f64>,
    #[arg(long, help = with_default("Magnitude pruning: share of training after which the sparsity stays at its target", defaults::GMP_END_FRACTION))]
    pub gmp_end_fraction: Option<f64>,
    #[arg(long, help = with_default("Magnitude pruning: steps between mask updates", defaults::GMP_FREQUENCY))]
    pub gmp_frequency: Option<u64>,
    /// Augment the training images as their data set is: Fashion-MNIST's random shifts of up
    /// to ±2 pixels, CIFAR-10's random crops of the 4-pixel reflect-padded image; both with
    /// random horizontal flips.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub augment: Option<bool>,
    /// With --augment, also rotate each training image by a random angle within ±DEGREES
    /// (the authors' CIFAR-10 option: 10) [default: 0, none].
    #[arg(long, value_name = "DEGREES")]
    pub rotate_degrees: Option<f64>,
    /// CPU threads [default: all cores].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where to compute: cpu, or cuda / cuda:N (a build with the `cuda` feature)
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    #[arg(long, value_enum, help = format!("Named settings, under the other flags. GPT sizes: cpu ({}, the GPT's default) or paper ({}). Image classifiers: cifar-paper (the paper's CIFAR-10 schedule: batch {}, {} epochs, {} warm-up then cosine to lr/100, lr 1e-3)", cpu().words(), GptPreset::Paper.settings().words(), Preset::CIFAR_BATCH, Preset::CIFAR_EPOCHS, Preset::CIFAR_WARMUP_EPOCHS))]
    pub preset: Option<Preset>,
    /// GPT: transformer blocks.
    #[arg(long)]
    pub layers: Option<usize>,
    /// GPT: attention heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// GPT: embedding width.
    #[arg(long)]
    pub width: Option<usize>,
    /// GPT: context length.
    #[arg(long)]
    pub block_size: Option<usize>,
    /// GPT: optimizer steps.
    #[arg(long)]
    pub iters: Option<usize>,
    #[arg(long, help = with_default("GPT: steps between evaluations and checkpoints", cpu().eval_interval))]
    pub eval_interval: Option<usize>,
    #[arg(long, help = with_default("GPT: batches per split in an evaluation", cpu().eval_batches))]
    pub eval_batches: Option<usize>,
    /// GPT: dropout probability.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// GPT: biases in Linear and LayerNorm layers [default: none, as nanoGPT].
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub bias: Option<bool>,
}

/// `300,100`.
fn widths(w: &[usize]) -> String {
    w.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

impl TrainArgs {
    /// The config: the file (if any), then the flags on top. With `--resume`, the run's own
    /// config.toml is the file, and flags must agree with it.
    pub fn config(&self) -> Result<TrainConfig> {
        if let Some(dir) = &self.resume {
            anyhow::ensure!(
                self.config.is_none(),
                "--resume uses the run's own config.toml; drop --config"
            );
            let saved = RunDir::new(dir)
                .read_config()
                .with_context(|| format!("--resume {}", dir.display()))?;
            let wanted = self.apply_flags(saved.clone())?;
            if wanted != saved {
                let (a, b) = (saved.to_toml()?, wanted.to_toml()?);
                let changed: Vec<&str> =
                    b.lines().filter(|l| !a.lines().any(|x| x == *l)).collect();
                anyhow::bail!(
                    "--resume {}: the flags change the run's config ({}); a run resumes with the config it started with",
                    dir.display(),
                    changed.join(", ")
                );
            }
            return Ok(saved);
        }
        let c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                TrainConfig::from_toml(&text, &path.display().to_string())?
            }
            None => TrainConfig::default(),
        };
        let c = self.apply_flags(c)?;
        c.refuse_inapplicable_keys()?;
        Ok(c)
    }

    fn apply_flags(&self, mut c: TrainConfig) -> Result<TrainConfig> {
        macro_rules! set {
            ($target:expr; $($field:ident),*) => {$( if let Some(v) = self.$field.clone() { $target.$field = v; } )*};
        }
        // the preset sits under every other flag, and needs the model to know its kind
        set!(c; model);
        if let Some(preset) = self.preset {
            preset.apply(&mut c)?;
        }
        set!(c; hidden, optim, p, lambda, lr, epochs, warmup_epochs, schedule, seed,
            lambda2, lambda_release_ratio, gmp_final_sparsity, gmp_end_fraction, gmp_frequency,
            late, augment, rotate_degrees, structured, sparse_training);
        for (flag, key) in [
            (self.p_start, &mut c.p_start),
            (self.s_dynamics, &mut c.s_dynamics),
            (self.lambda_release, &mut c.lambda_release),
        ] {
            if flag.is_some() {
                *key = flag;
            }
        }
        if self.resnet_width.is_some() {
            c.resnet_width = self.resnet_width;
        }
        if self.embedded {
            c.data = Some(EMBEDDED.into());
        } else if let Some(dir) = &self.data {
            // absolute, so a resumed run finds the data from any working directory
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            c.data = Some(dir.display().to_string());
        }
        if c.model == ModelKind::Gpt {
            // the GPT's batch size and final lr ratio are its own (`[gpt]`)
            set!(c.gpt; layers, heads, width, block_size, batch_size, min_lr_ratio, iters,
                eval_interval, eval_batches, dropout, bias);
        } else {
            set!(c; batch_size, min_lr_ratio);
            let gpt_flags = [
                self.layers.is_some(),
                self.heads.is_some(),
                self.width.is_some(),
                self.block_size.is_some(),
                self.iters.is_some(),
                self.eval_interval.is_some(),
                self.eval_batches.is_some(),
                self.dropout.is_some(),
                self.bias.is_some(),
            ];
            anyhow::ensure!(
                !gpt_flags.contains(&true),
                "--iters and the other GPT sizes go with --model gpt"
            );
        }
        c.validate()?;
        Ok(c)
    }
}

/// `pdecay train`.
pub fn run_train(args: &TrainArgs) -> Result<()> {
    let config = args.config()?;
    set_threads(args.threads)?;
    // a missing GPU fails before any data is read
    let (device, replicas) = if config.model == ModelKind::Gpt {
        (args.device.single()?, Vec::new())
    } else {
        args.device.split()?
    };
    let data = config.load_data()?;
    let (out, resume) = match &args.resume {
        Some(dir) => (RunDir::new(dir), true),
        None => (
            args.out
                .clone()
                .map_or_else(|| RunDir::default_for(&config), RunDir::new),
            false,
        ),
    };
    let into = out.path().display().to_string();
    let options = RunOptions {
        out: Some(out),
        resume,
        stop_after: args.stop_after,
        device,
        replicas,
    };
    let mut progress = for_stdout();
    match &data {
        RunData::Images(data) => {
            println!(
                "training the {} with {} on {} ({} train / {} test images) into {into}",
                name(config.model),
                name(config.optim),
                data.source,
                data.train.len(),
                data.test.len(),
            );
            let summary = on_pool(|| train_classifier(&config, data, &options, progress.as_mut()))?;
            println!(
                "final test accuracy {:.2}%, sparsity {:.1}% ({} of {} parameters non-zero), {:.0} samples/s",
                100.0 * summary.final_test_accuracy,
                100.0 * summary.sparsity,
                summary.nonzero_params,
                summary.total_params,
                summary.samples_per_second
            );
            let chance = 1.0 / crate::data::images::CLASSES as f64;
            warn_if_untrained(
                summary.final_test_accuracy <= chance + 0.02,
                summary.sparsity,
                &format!(
                    "the test accuracy, {:.1}%, is chance level ({:.0}%)",
                    100.0 * summary.final_test_accuracy,
                    100.0 * chance
                ),
            );
        }
        RunData::Text(text) => {
            let g = &config.gpt;
            println!(
                "training a GPT ({} layers, {} heads, width {}, block {}, vocabulary {}) with {} on {} ({} train / {} validation characters), {} iterations of batch {}, into {into}",
                g.layers,
                g.heads,
                g.width,
                g.block_size,
                text.vocab.len(),
                name(config.optim),
                text.source,
                text.train.len(),
                text.val.len(),
                g.iters,
                g.batch_size,
            );
            let summary = on_pool(|| train_gpt(&config, text, &options, progress.as_mut()))?;
            println!(
                "final val loss {:.4} (best {:.4} at iteration {}), sparsity {:.1}% ({} of {} parameters non-zero), {:.1} ms per iteration",
                summary.final_val_loss,
                summary.best_val_loss,
                summary.best_iter,
                100.0 * summary.sparsity,
                summary.nonzero_params,
                summary.total_params,
                1e3 * summary.seconds_per_iter
            );
            let uniform = (text.vocab.len() as f64).ln();
            warn_if_untrained(
                summary.final_val_loss >= uniform - 0.01,
                summary.sparsity,
                &format!(
                    "the validation loss, {:.3}, is a uniform guess's (ln {} = {uniform:.3})",
                    summary.final_val_loss,
                    text.vocab.len()
                ),
            );
        }
    }
    Ok(())
}

/// A finished run that learned nothing gets a loud warning: a loss that stayed finite but
/// useless (an lr far too high), or every decayed weight zero (a lambda far too strong).
fn warn_if_untrained(at_chance: bool, sparsity: f64, what: &str) {
    if at_chance {
        eprintln!(
            "warning: {what}: the run learned nothing. Lower --lr{}",
            if sparsity > 0.99 {
                " or --lambda (every decayed weight is zero)"
            } else {
                ""
            }
        );
    } else if sparsity >= 0.9999 {
        eprintln!(
            "warning: every decayed weight is zero ({:.2}% sparse): --lambda is too strong for this --lr",
            100.0 * sparsity
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn config(flags: &[&str]) -> Result<TrainConfig> {
        let all = std::iter::once("train").chain(flags.iter().copied());
        Flags::try_parse_from(all)?.args.config()
    }

    #[test]
    fn a_switch_set_false_turns_off_what_a_config_file_turns_on() {
        let file = std::env::temp_dir().join(format!("pdecay-switch-{}.toml", std::process::id()));
        std::fs::write(&file, "late = true\naugment = true\nstructured = true\n").unwrap();
        let path = file.to_str().unwrap();
        let from_file = config(&["--config", path]).unwrap();
        assert!(from_file.late && from_file.augment && from_file.structured);
        let off = config(&["--config", path, "--late=false", "--augment=false"]).unwrap();
        assert!(!off.late && !off.augment && off.structured);
        let on = config(&["--late", "--structured"]).unwrap();
        assert!(on.late && on.structured && !on.augment);
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn a_gpts_batch_size_and_final_lr_ratio_flags_set_its_own_keys() {
        let c = config(&[
            "--model",
            "gpt",
            "--batch-size",
            "8",
            "--min-lr-ratio",
            "0.2",
        ])
        .unwrap();
        assert_eq!((c.gpt.batch_size, c.gpt.min_lr_ratio), (8, 0.2));
        // the image classifiers' keys stay at their defaults (the GPT does not read them)
        assert_eq!(c.batch_size, defaults::BATCH_SIZE);
        assert_eq!(c.min_lr_ratio, defaults::MIN_LR_RATIO);
        let mlp = config(&["--batch-size", "8", "--min-lr-ratio", "0.2"]).unwrap();
        assert_eq!((mlp.batch_size, mlp.min_lr_ratio), (8, 0.2));
        assert_eq!(mlp.gpt, GptSettings::default());
    }

    #[test]
    fn a_preset_sits_under_the_other_flags() {
        let c = config(&[
            "--model",
            "resnet20",
            "--preset",
            "cifar-paper",
            "--epochs",
            "3",
        ])
        .unwrap();
        // the paper's CIFAR-10 schedule, cut to 3 epochs by the flag
        assert_eq!((c.batch_size, c.epochs, c.warmup_epochs), (400, 3, 2.0));
        assert_eq!((c.lr, c.min_lr_ratio), (1e-3, 0.01));
        let c = config(&["--model", "gpt", "--preset", "paper", "--layers", "2"]).unwrap();
        assert_eq!((c.gpt.layers, c.gpt.width), (2, 384));
        let c = config(&["--augment", "--rotate-degrees", "10"]).unwrap();
        assert_eq!(c.rotate_degrees, 10.0);
    }

    #[test]
    fn keys_the_model_does_not_read_are_refused() {
        for (flags, words) in [
            (
                &["--model", "gpt", "--epochs", "5"][..],
                ["`epochs`", "gpt.iters"],
            ),
            (
                &["--model", "gpt", "--warmup-epochs", "0.5"][..],
                ["`warmup_epochs`", "gpt.warmup_iters"],
            ),
            (&["--model", "gpt", "--augment"][..], ["`augment`", "GPT"]),
            (
                &["--rotate-degrees", "10"][..],
                ["`rotate_degrees`", "augmentation (--augment)"],
            ),
            (
                &["--augment", "--rotate-degrees", "200"][..],
                ["rotate_degrees must lie in [0, 180]", "200"],
            ),
            (
                &["--preset", "paper"][..],
                ["--preset paper is for the GPT", "cifar-paper"],
            ),
            (
                &["--model", "gpt", "--preset", "cifar-paper"][..],
                ["is for the image classifiers", "cpu and paper"],
            ),
            (&["--dropout", "0.1"][..], ["GPT sizes", "--model gpt"]),
            (&["--bias"][..], ["GPT sizes", "--model gpt"]),
        ] {
            let message = config(flags).unwrap_err().to_string();
            for word in words {
                assert!(message.contains(word), "{flags:?}: {message}");
            }
        }
    }

    #[test]
    fn the_help_shows_the_defaults_the_config_uses() {
        let help = <Flags as clap::CommandFactory>::command()
            .render_help()
            .to_string();
        let d = TrainConfig::default();
        for expected in [
            format!("Peak learning rate [default: {}]", d.lr),
            format!("[default: {}]", d.p),
            format!("[default: {}]", d.lambda),
            format!("[default: {}; GPT: {}]", d.batch_size, d.gpt.batch_size),
            format!("[default: {}]", d.gpt.eval_interval),
            format!("[default: {}]", widths(&d.hidden)),
            "Optimizer [default: padam]".to_string(),
            "Network [default: mlp]".to_string(),
        ] {
            assert!(help.contains(&expected), "{expected} not in {help}");
        }
    }
}
