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
    /// The CIFAR ResNet-18 with BatchNorm (11.2M parameters on RGB images).
    Resnet18,
    /// He et al.'s CIFAR ResNet-20 with BatchNorm (0.27M parameters).
    Resnet20,
    /// Character-level GPT (nanoGPT) on a UTF-8 text file (`--data FILE`).
    Gpt,
}

impl ModelKind {
    /// Whether this is one of the image classifiers (MLP, CNN, the ResNets).
    pub fn is_classifier(self) -> bool {
        self != Self::Gpt
    }

    /// Whether this is one of the ResNets.
    pub fn is_resnet(self) -> bool {
        matches!(self, Self::Resnet18 | Self::Resnet20)
    }
}
