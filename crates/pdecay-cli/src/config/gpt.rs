//! The GPT's settings (`[gpt]` in a config file): sizes, iterations, evaluation and nanoGPT's
//! schedule. The defaults are the CPU preset ([`GptPreset::Cpu`]).

use anyhow::{Result, ensure};
use pdecay::schedule::Schedule;
use serde::{Deserialize, Serialize};

use crate::models::GptConfig;

/// The sparsity threshold the authors used for the GPT.
pub const GPT_THRESHOLD: f64 = 1e-10;

/// The GPT's settings (`[gpt]` in a config file). The defaults are the CPU preset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GptSettings {
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Embedding width.
    pub width: usize,
    /// Context length.
    pub block_size: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Optimizer steps.
    pub iters: usize,
    /// Steps between evaluations (and checkpoints).
    pub eval_interval: usize,
    /// Batches per split in an evaluation.
    pub eval_batches: usize,
    /// Dropout probability.
    pub dropout: f64,
    /// Biases in Linear and LayerNorm layers.
    pub bias: bool,
    /// Linear warm-up steps.
    pub warmup_iters: usize,
    /// Final lr as a share of the peak (nanoGPT: 1/10).
    pub min_lr_ratio: f64,
    /// Adam's beta2 (nanoGPT: 0.99 for the small character models).
    pub beta2: f64,
    /// Global gradient norm limit (0 turns clipping off).
    pub grad_clip: f64,
}

impl Default for GptSettings {
    fn default() -> Self {
        GptPreset::Cpu.settings()
    }
}

/// Model and run sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum GptPreset {
    /// Small enough for a CPU: 0.8M parameters in 2000 iterations (the default).
    Cpu,
    /// The paper's: 10.7M parameters in 5000 iterations.
    Paper,
}

impl GptPreset {
    /// The settings of this preset.
    pub fn settings(self) -> GptSettings {
        let base = GptSettings {
            layers: 4,
            heads: 4,
            width: 128,
            block_size: 64,
            batch_size: 12,
            iters: 2000,
            eval_interval: 250,
            eval_batches: 20,
            dropout: 0.0,
            bias: false,
            warmup_iters: 100,
            min_lr_ratio: 0.1,
            beta2: 0.99,
            grad_clip: 1.0,
        };
        match self {
            Self::Cpu => base,
            Self::Paper => GptSettings {
                layers: 6,
                heads: 6,
                width: 384,
                block_size: 256,
                batch_size: 64,
                iters: 5000,
                dropout: 0.2,
                ..base
            },
        }
    }
}

impl GptSettings {
    /// Checks the sizes.
    pub fn validate(&self) -> Result<()> {
        for (name, value) in [
            ("layers", self.layers),
            ("heads", self.heads),
            ("width", self.width),
            ("block_size", self.block_size),
            ("batch_size", self.batch_size),
            ("iters", self.iters),
            ("eval_interval", self.eval_interval),
            ("eval_batches", self.eval_batches),
        ] {
            ensure!(value >= 1, "gpt.{name} must be at least 1, got {value}");
        }
        ensure!(
            self.width.is_multiple_of(self.heads),
            "gpt.width ({}) must be a multiple of gpt.heads ({})",
            self.width,
            self.heads
        );
        ensure!(
            (0.0..1.0).contains(&self.dropout),
            "gpt.dropout must lie in [0, 1), got {}",
            self.dropout
        );
        ensure!(
            self.beta2 > 0.0 && self.beta2 < 1.0,
            "gpt.beta2 must lie in (0, 1), got {}",
            self.beta2
        );
        ensure!(
            self.grad_clip.is_finite() && self.grad_clip >= 0.0,
            "gpt.grad_clip must be a finite number >= 0, got {}",
            self.grad_clip
        );
        pdecay::validate::check_unit_interval("gpt.min_lr_ratio", self.min_lr_ratio)?;
        Ok(())
    }

    /// The model sizes for a vocabulary.
    pub fn model(&self, vocab_size: usize) -> GptConfig {
        GptConfig {
            vocab_size,
            layers: self.layers,
            heads: self.heads,
            width: self.width,
            block_size: self.block_size,
            dropout: self.dropout,
            bias: self.bias,
        }
    }

    /// The sizes in words: `4 layers, 4 heads, width 128, block 64, batch 12, 2000
    /// iterations, dropout 0`.
    pub fn words(&self) -> String {
        format!(
            "{} layers, {} heads, width {}, block {}, batch {}, {} iterations, dropout {}",
            self.layers,
            self.heads,
            self.width,
            self.block_size,
            self.batch_size,
            self.iters,
            self.dropout
        )
    }

    /// Warm-up from 0 (at most the whole run), then cosine from `lr` to `lr · min_lr_ratio`.
    pub fn schedule(&self, lr: f64) -> Result<Schedule> {
        let warmup = self.warmup_iters.min(self.iters);
        let after = (self.iters - warmup).max(1) as u64;
        let cosine = Schedule::cosine(lr, lr * self.min_lr_ratio, after)?;
        Ok(Schedule::warmup(0.0, warmup as u64, cosine)?)
    }
}
