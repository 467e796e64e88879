//! Deployment: a run's model as a safetensors file (dense, sparse CSR, or compacted), and the
//! sparse CPU inference engines that run it. Every image classifier (MLP, CNN, ResNets) on
//! images of any shape, and the GPT.

pub mod compact;
pub mod gpt_compact;
pub mod gpt_file;
pub mod gpt_infer;
pub mod infer;
pub mod model_file;
pub mod resnet_infer;

use anyhow::{Result, ensure};

use crate::data::{ImageShape, ImageSplits};

/// `splits` are images the model file's network takes (`shape`, recorded in its config), in
/// both splits.
pub fn check_images(splits: &ImageSplits, shape: ImageShape) -> Result<()> {
    splits.check()?;
    ensure!(
        splits.shape() == shape,
        "the images in {} are {}; the model takes {shape} images: give the data it was trained on",
        splits.source,
        splits.shape()
    );
    Ok(())
}
