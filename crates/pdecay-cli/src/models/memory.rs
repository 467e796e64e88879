//! What training a network needs in memory, estimated from its sizes before anything is
//! allocated: a size that cannot fit (`--hidden 100000000000`, a GPT with `--block-size
//! 100000`) is refused with its estimate, where allocating it aborted the process.
//!
//! The estimate counts what dominates and rounds up: each parameter's copies while training
//! (`COPIES`: the weights, their gradient, Adam's two moments, the pre-step weights pWD reads,
//! one temporary) and the activations of one batch that the backward pass keeps
//! (`SAVED` copies of every layer's output). It is meant to tell a run that fits from one
//! that cannot, not to budget memory to the byte. Sizes are `u128` so that no product of
//! absurd sizes overflows.

use super::{Cnn, GptConfig, ModelKind, ResNetConfig};
use crate::data::ImageShape;

/// Bytes of an f32.
const F32: u128 = 4;
/// Copies of each parameter while training (see the module doc).
const COPIES: u128 = 6;
/// Copies of each activation the backward pass keeps or builds (output, its gradient, the
/// nonlinearity's input and mask).
const SAVED: u128 = 4;

/// A network's parameters and the bytes its training needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryNeed {
    /// Parameters.
    pub params: u128,
    /// Bytes for the parameters' copies and one batch's activations.
    pub bytes: u128,
}

impl MemoryNeed {
    fn new(params: u128, activations: u128) -> Self {
        Self {
            params,
            bytes: params
                .saturating_mul(COPIES * F32)
                .saturating_add(activations.saturating_mul(SAVED * F32)),
        }
    }
}

/// The product of `factors`, saturating.
fn product(factors: &[u128]) -> u128 {
    factors.iter().fold(1u128, |a, &f| a.saturating_mul(f))
}

fn linear(inputs: u128, outputs: u128) -> u128 {
    inputs.saturating_add(1).saturating_mul(outputs)
}

/// An image classifier on images of `shape` with `widths` (the MLP's hidden layers, the CNN's
/// channels and units, a ResNet's stem width), `batch` images per step, 10 classes.
pub fn classifier(
    kind: ModelKind,
    shape: ImageShape,
    widths: &[usize],
    batch: usize,
) -> MemoryNeed {
    let [c, h, w] = <[usize; 3]>::from(shape).map(|x| x as u128);
    let b = batch as u128;
    let (params, per_image) = match (kind, ResNetConfig::of(kind, widths)) {
        (_, Some(config)) => resnet(&config, [c, h, w]),
        (ModelKind::Cnn, None) => {
            let [c1, c2, units] = <[usize; 3]>::try_from(widths)
                .unwrap_or(Cnn::WIDTHS)
                .map(|w| w as u128);
            let (half, quarter) = (product(&[h / 2, w / 2]), product(&[h / 4, w / 4]));
            let params = linear(product(&[9, c]), c1)
                .saturating_add(linear(product(&[9, c1]), c2))
                .saturating_add(linear(product(&[c2, quarter]), units))
                .saturating_add(linear(units, 10));
            // both convolutions' outputs and pooled maps, conv2's unfolded input, the dense
            // layers
            let per_image = [
                product(&[c1, h, w]),
                product(&[c1, half, 10]),
                product(&[c2, half]),
                product(&[c2, quarter]),
                units.saturating_add(10),
            ]
            .into_iter()
            .fold(0u128, u128::saturating_add);
            (params, per_image)
        }
        _ => {
            let mut widths: Vec<u128> = widths.iter().map(|&w| w as u128).collect();
            widths.insert(0, product(&[c, h, w]));
            widths.push(10);
            let params = widths
                .windows(2)
                .map(|w| linear(w[0], w[1]))
                .fold(0u128, u128::saturating_add);
            (
                params,
                widths.iter().fold(0u128, |a, &w| a.saturating_add(w)),
            )
        }
    };
    MemoryNeed::new(params, per_image.saturating_mul(b))
}

/// A ResNet's parameters and activations per image: each convolution and BatchNorm output and
/// each block's sum (BatchNorm: γ and β).
fn resnet(config: &ResNetConfig, [c, h, w]: [u128; 3]) -> (u128, u128) {
    let conv = |i: u128, o: u128, k: u128| product(&[k, k, i, o]).saturating_add(2 * o);
    let stem = config.stem as u128;
    let mut params = conv(c, stem, 3);
    let mut plane = product(&[h, w]);
    let mut activations = product(&[3, stem, plane]);
    let mut width = stem;
    for &(channels, stride, blocks) in &config.stages {
        let channels = channels as u128;
        for block in 0..blocks {
            let stride = if block == 0 { stride as u128 } else { 1 };
            plane /= stride * stride;
            params = params
                .saturating_add(conv(width, channels, 3))
                .saturating_add(conv(channels, channels, 3));
            let mut outputs = 5;
            if stride != 1 || width != channels {
                params = params.saturating_add(conv(width, channels, 1));
                outputs += 2;
            }
            activations = activations.saturating_add(product(&[outputs, channels, plane]));
            width = channels;
        }
    }
    (params.saturating_add(linear(width, 10)), activations)
}

/// The GPT of `c` with `batch` sequences of `c.block_size` tokens per step.
pub fn gpt(c: &GptConfig, batch: usize) -> MemoryNeed {
    let [v, layers, heads, width, t, b] = [
        c.vocab_size,
        c.layers,
        c.heads,
        c.width,
        c.block_size,
        batch,
    ]
    .map(|x| x as u128);
    // per block: qkv and its projection (4·C²), the MLP (8·C²), two LayerNorms' gains; with
    // biases also theirs and the Linear layers' (3·C + C + 4·C + C)
    let (norm, biases) = if c.bias { (2, 9) } else { (1, 0) };
    let block = product(&[12, width, width]).saturating_add(product(&[2 * norm + biases, width]));
    let params = product(&[v.saturating_add(t), width])
        .saturating_add(product(&[layers, block]))
        .saturating_add(product(&[norm, width]));
    // per block and token: ~16 activations of width C (qkv, attention output, residuals,
    // LayerNorms, the 4·C MLP twice); per block and head, the T×T scores, softmax and mask
    let tokens = product(&[b, t]);
    let per_block = product(&[tokens, 16, width]).saturating_add(product(&[b, heads, t, t, 3]));
    let activations = product(&[layers, per_block]).saturating_add(product(&[tokens, v, 3]));
    MemoryNeed::new(params, activations)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Classifier, Gpt};
    use burn::tensor::Device;
    use pdecay_burn::trained_param_count;

    #[test]
    fn the_parameter_counts_are_the_models_own() {
        let device = Device::default();
        for (kind, widths) in [
            (ModelKind::Mlp, vec![300, 100]),
            (ModelKind::Mlp, vec![]),
            (ModelKind::Cnn, Cnn::WIDTHS.to_vec()),
            (ModelKind::Cnn, vec![4, 8, 16]),
            (ModelKind::Resnet20, vec![]),
            (ModelKind::Resnet18, vec![4]),
        ] {
            for shape in [ImageShape::FASHION_MNIST, ImageShape::CIFAR10] {
                let model = Classifier::new(kind, shape, &widths, &device);
                let need = classifier(kind, shape, &widths, 128);
                assert_eq!(
                    need.params,
                    trained_param_count(&model) as u128,
                    "{kind:?} {widths:?} {shape}"
                );
            }
        }
        let c = GptConfig {
            vocab_size: 65,
            layers: 2,
            heads: 4,
            width: 64,
            block_size: 32,
            dropout: 0.0,
            bias: false,
        };
        for bias in [false, true] {
            let c = GptConfig { bias, ..c.clone() };
            let model = Gpt::new(&c, &device);
            assert_eq!(
                gpt(&c, 8).params,
                trained_param_count(&model) as u128,
                "bias {bias}"
            );
        }
    }

    #[test]
    fn the_bytes_count_the_parameters_copies_and_the_batchs_activations() {
        // 784-10 MLP, batch 2: 7,850 parameters x 6 copies x 4 bytes, and (784 + 10) x 2
        // activations x 4 saved copies x 4 bytes
        let need = classifier(ModelKind::Mlp, ImageShape::FASHION_MNIST, &[], 2);
        assert_eq!(need.bytes, 7_850 * 24 + 794 * 2 * 16);
        // the sizes that once aborted are beyond any machine, and do not overflow
        let huge = classifier(
            ModelKind::Mlp,
            ImageShape::FASHION_MNIST,
            &[100_000_000_000],
            128,
        );
        assert!(huge.bytes > 1 << 50, "{huge:?}");
        let long = gpt(
            &GptConfig {
                vocab_size: 65,
                layers: 4,
                heads: 4,
                width: 128,
                block_size: 100_000,
                dropout: 0.0,
                bias: false,
            },
            32,
        );
        assert!(long.bytes > 1 << 43, "{long:?}");
        let shape = ImageShape::new(usize::MAX, usize::MAX, 1);
        let absurd = classifier(ModelKind::Mlp, shape, &[usize::MAX], usize::MAX);
        assert_eq!(absurd.bytes, u128::MAX);
    }
}
