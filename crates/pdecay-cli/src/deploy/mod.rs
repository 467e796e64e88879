//! Deployment: a run's model as a safetensors file (dense, sparse CSR, or compacted), and the
//! sparse CPU inference engines that run it.

pub mod compact;
pub mod gpt_compact;
pub mod gpt_file;
pub mod gpt_infer;
pub mod infer;
pub mod model_file;

use anyhow::{Result, ensure};

use crate::config::TrainConfig;
use crate::data::{ImageShape, ImageSplits};

/// The images model files and the sparse engines take: Fashion-MNIST's 1×28×28. Runs on other
/// shapes (CIFAR-10) and the ResNets train, and their checkpoints hold their weights, but they
/// have no model file yet.
pub const IMAGE_SHAPE: ImageShape = ImageShape::FASHION_MNIST;

/// The side of [`IMAGE_SHAPE`].
pub(crate) const IMAGE_SIDE: usize = 28;

/// A model `config` describes can go into a model file: an MLP or CNN on [`IMAGE_SHAPE`].
pub fn check_deployable(config: &TrainConfig) -> Result<()> {
    ensure!(
        !config.model.is_resnet(),
        "model files do not hold ResNets yet: the run's checkpoint has its weights, and `pdecay report` reads it"
    );
    ensure!(
        config.image_shape == IMAGE_SHAPE,
        "model files hold networks on {IMAGE_SHAPE} images (Fashion-MNIST); this one takes {} images, which no model file holds yet: the run's checkpoint has its weights",
        config.image_shape
    );
    Ok(())
}

/// `splits` are images a model file's network takes ([`IMAGE_SHAPE`]), in both splits.
pub fn check_images(splits: &ImageSplits) -> Result<()> {
    splits.check()?;
    ensure!(
        splits.shape() == IMAGE_SHAPE,
        "the images in {} are {}; model files take {IMAGE_SHAPE} images (Fashion-MNIST, MNIST)",
        splits.source,
        splits.shape()
    );
    Ok(())
}
