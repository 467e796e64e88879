//! Which network a run trains.

use serde::{Deserialize, Serialize};

/// Which network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Multi-layer perceptron 784-300-100-10 with ReLU (hidden sizes configurable).
    Mlp,
    /// conv3x3(32)-pool-conv3x3(64)-pool-dense128-dropout0.2-dense10 (421,642 parameters).
    Cnn,
    /// Character-level GPT (nanoGPT) on a UTF-8 text file (`--data FILE`).
    Gpt,
}

impl ModelKind {
    /// Whether this is one of the image classifiers (MLP, CNN).
    pub fn is_classifier(self) -> bool {
        self != Self::Gpt
    }
}
