//! Which of a model's layers train over their weights' non-zeros, from which step.
//!
//! A linear layer (the classifiers', the GPT's four per block) moves to
//! `pdecay_burn::sparse_linear`, a convolution (a ResNet's) to `pdecay_burn::sparse_conv2d`,
//! and the CNN's with its bias, ReLU and pooling to the sparse
//! `pdecay_burn::conv2d_relu_max_pool_2x2`, only once its zeros are absorbing (pWD, p < 2,
//! λ > 0: [`TrainConfig::zeros_absorbing_from`]), and then stays there: its support only shrinks,
//! and the sparse product reads it at every step. Decisions are taken before the first step
//! and at each evaluation (an image classifier's epoch end, the GPT's `eval_interval`), before
//! its checkpoint. `on` moves every layer at the first such
//! point; `auto` moves a layer that is mostly zero when an alternated timing of both products
//! (the CNN's: of both blocks), forward and backward on its own shapes and its current weight, finds the sparse one clearly
//! faster.
//! The plan is recorded in every metrics line, and a resumed run takes it from the last one
//! kept, so it continues exactly as the uninterrupted run did and a layer never returns to
//! dense. Like cuDNN's benchmark mode, `auto` makes two separate runs agree only up to
//! summation order (their timings may choose differently); `on` and `off` are reproducible.

use std::time::Instant;

use anyhow::{Result, ensure};
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor, TensorData};
use pdecay_burn::{dense_conv2d, dense_linear, sparse_conv2d, sparse_linear};

use crate::config::{SparseTraining, TrainConfig};
use crate::models::SparseCandidate;
use crate::models::classifier::{conv_geometry, conv_output, conv_relu_pool};
use crate::run::SparseLayer;

/// Below this share of exact zeros a layer is not timed (bench/README.md,
/// `bench/sparse_layers.sh`): a linear layer's sparse product measured slower than dense up to
/// about 80% zeros on every shape (1.4-1.9x at 50%), a convolution's through lanes faster from
/// 50% or less (0.48-0.75x there; the CNN's conv2 at lambda 3e-2 is 63% zero after its third
/// epoch, where a gate at 75% held it dense until its sixth). Timing a layer costs 18 calls of
/// its products at every evaluation until it moves, which the GPT's 16 linear layers would pay
/// for nothing between 50% and 75%.
fn min_zero_share(layer: SparseCandidate) -> f64 {
    match layer {
        SparseCandidate::Linear(_) => 0.75,
        SparseCandidate::Conv(..) | SparseCandidate::PooledConv(..) => 0.5,
    }
}

/// A layer kept dense by a timing is timed again once its zero share has grown by this much.
const RETIME_AFTER: f64 = 0.01;

/// Alternated timings of each product per decision.
const TIMINGS: usize = 9;

/// A layer moves only when the sparse product's median time is below this share of the dense
/// one's: the move is for good, and near the crossover a timing on a noisy machine can fall
/// either way (at 83% zeros the MLP's first layer once moved and then trained slower).
const CLEAR_WIN: f64 = 0.8;

/// The run's sparse-training decisions.
#[derive(Debug, Clone)]
pub(crate) struct SparsePlan {
    mode: SparseTraining,
    /// Zeros are absorbing from this step on (`None`: never in this run).
    absorbing_from: Option<u64>,
    /// Per layer, in the model's `sparse_candidates` order: the step it moved.
    since: Vec<Option<u64>>,
    /// Per layer, its zero share when a timing last kept it dense (`auto` times it again only
    /// once that has grown by [`RETIME_AFTER`]).
    timed_at: Vec<f64>,
    names: Vec<String>,
}

impl SparsePlan {
    /// All layers dense, for a model whose `sparse_candidates` are `layers`, under `config`
    /// over `total_steps`; an error for `on` where the sparse product does not run (`device`,
    /// the training device, is not flex's CPU: there `sparse_linear` is the dense product, and
    /// `auto` keeps every layer dense).
    pub fn new(
        config: &TrainConfig,
        total_steps: u64,
        layers: Vec<(String, SparseCandidate)>,
        device: &Device,
    ) -> Result<Self> {
        let on_cpu = *device == Device::flex().autodiff();
        ensure!(
            on_cpu || config.sparse_training != SparseTraining::On,
            "sparse training runs on the CPU (flex) backend only: with --device cuda use --sparse-training auto or off"
        );
        let names: Vec<String> = layers.into_iter().map(|(n, _)| n).collect();
        Ok(Self {
            mode: config.sparse_training,
            absorbing_from: match config.sparse_training {
                SparseTraining::Off => None,
                _ if !on_cpu => None,
                _ => config.zeros_absorbing_from(total_steps).ok(),
            },
            since: vec![None; names.len()],
            timed_at: vec![f64::NEG_INFINITY; names.len()],
            names,
        })
    }

    /// Per layer, whether it runs sparse (for the model's `forward_with`).
    pub fn flags(&self) -> Vec<bool> {
        self.since.iter().map(Option::is_some).collect()
    }

    /// The layers on the sparse product, for metrics.jsonl.
    pub fn record(&self) -> Vec<SparseLayer> {
        self.names
            .iter()
            .zip(&self.since)
            .filter_map(|(name, since)| {
                since.map(|since_step| SparseLayer {
                    name: name.clone(),
                    since_step,
                })
            })
            .collect()
    }

    /// Takes back the decisions of a resumed run's last metrics line.
    pub fn restore(&mut self, recorded: &[SparseLayer]) {
        for layer in recorded {
            if let Some(i) = self.names.iter().position(|n| *n == layer.name) {
                self.since[i] = Some(layer.since_step);
            }
        }
    }

    /// Before the first step or at an evaluation (`step` steps done): moves the layers (the
    /// model's `sparse_candidates`) that the mode says should move now. `batch` is what one
    /// step feeds each layer: images, or for the GPT positions (batch × block). `device` is
    /// the training (autodiff) device.
    pub fn update(
        &mut self,
        layers: Vec<(String, SparseCandidate)>,
        step: u64,
        batch: usize,
        device: &Device,
    ) {
        if self.absorbing_from.is_none_or(|from| step < from) {
            return;
        }
        for (i, (_, layer)) in layers.into_iter().enumerate() {
            if self.since[i].is_some() {
                continue;
            }
            let moves = match self.mode {
                SparseTraining::On => true,
                SparseTraining::Off => false,
                SparseTraining::Auto => {
                    let zeros = zero_share(layer);
                    if zeros < min_zero_share(layer) || zeros < self.timed_at[i] + RETIME_AFTER {
                        false
                    } else if sparse_is_faster(layer, batch, device) {
                        true
                    } else {
                        self.timed_at[i] = zeros;
                        false
                    }
                }
            };
            if moves {
                self.since[i] = Some(step);
            }
        }
    }
}

/// The share of `layer`'s weights that are exactly zero.
fn zero_share(layer: SparseCandidate) -> f64 {
    let w = layer.weight_values();
    let total = w.shape().num_elements().max(1);
    let zeros = w.equal_elem(0.0).int().sum().into_scalar::<i64>();
    zeros as f64 / total as f64
}

/// Whether the sparse product, forward and backward on a batch of `batch` inputs of the
/// layer's shape, takes clearly less time than the dense one for `layer`'s current weight
/// ([`CLEAR_WIN`]): medians of alternated timings. The inputs are a fixed pattern (no draw from
/// the device's generator, which would change the run).
fn sparse_is_faster(layer: SparseCandidate, batch: usize, device: &Device) -> bool {
    match layer {
        SparseCandidate::Linear(linear) => {
            let [inputs, outputs] = linear.weight.dims();
            faster(
                [batch, inputs],
                [batch, outputs],
                linear.weight.val(),
                device,
                |x, w| dense_linear(x, w, None),
                |x, w| sparse_linear(x, w, None),
            )
        }
        SparseCandidate::Conv(conv, [channels, height, width]) => {
            let (stride, padding) = conv_geometry(conv);
            let [outputs, out_height, out_width] = conv_output(conv, [channels, height, width]);
            faster(
                [batch, channels, height, width],
                [batch, outputs, out_height, out_width],
                conv.weight.val(),
                device,
                |x, w| dense_conv2d(x, w, None, stride, padding),
                |x, w| sparse_conv2d(x, w, None, stride, padding),
            )
        }
        SparseCandidate::PooledConv(conv, input) => faster(
            [batch, input[0], input[1], input[2]],
            pooled_output(conv, input, batch),
            conv.weight.val(),
            device,
            |x, w| pooled_block(conv, x, w, false),
            |x, w| pooled_block(conv, x, w, true),
        ),
    }
}

/// The `[batch, outputs, height/2, width/2]` that `conv`'s block gives for a batch of inputs
/// of `input`'s shape.
fn pooled_output(conv: &Conv2d, input: [usize; 3], batch: usize) -> [usize; 4] {
    let [outputs, height, width] = conv_output(conv, input);
    [batch, outputs, height / 2, width / 2]
}

/// `conv`'s block (convolution, bias, ReLU, pooling) with the kernel `w` in place of its own.
fn pooled_block(conv: &Conv2d, x: Tensor<4>, w: Tensor<4>, sparse: bool) -> Tensor<4> {
    let conv = Conv2d {
        weight: Param::from_tensor(w),
        ..conv.clone()
    };
    conv_relu_pool(&conv, x, sparse)
}

/// Whether `sparse(x, w)` takes clearly less time than `dense(x, w)`, forward and backward
/// for an `x` of `input` and an output of `output` (fixed patterns), on `weight`'s current
/// values: medians of [`TIMINGS`] alternated timings after one of each.
fn faster<const D: usize>(
    input: [usize; D],
    output: [usize; D],
    weight: Tensor<D>,
    device: &Device,
    dense: impl Fn(Tensor<D>, Tensor<D>) -> Tensor<D>,
    sparse: impl Fn(Tensor<D>, Tensor<D>) -> Tensor<D>,
) -> bool {
    let pattern = |shape: [usize; D], k: usize| {
        let values = (0..shape.iter().product::<usize>())
            .map(|i| ((i * 7 + k) % 13) as f32 / 6.0 - 1.0)
            .collect::<Vec<f32>>();
        Tensor::<D>::from_data(TensorData::new(values, shape), device)
    };
    let (x, g) = (pattern(input, 1).require_grad(), pattern(output, 2));
    let w = weight.detach().require_grad();
    let time = |sparse_product: bool| {
        let start = Instant::now();
        let y = if sparse_product {
            sparse(x.clone(), w.clone())
        } else {
            dense(x.clone(), w.clone())
        };
        let grads = (y * g.clone()).sum().backward();
        let _ = w.grad(&grads).map(|g| g.into_data());
        start.elapsed().as_secs_f64()
    };
    let (_, _) = (time(false), time(true));
    let mut dense_times = Vec::with_capacity(TIMINGS);
    let mut sparse_times = Vec::with_capacity(TIMINGS);
    for _ in 0..TIMINGS {
        dense_times.push(time(false));
        sparse_times.push(time(true));
    }
    median(sparse_times) < CLEAR_WIN * median(dense_times)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OptimKind;
    use crate::data::ImageShape;
    use crate::models::{Classifier, ModelKind};
    use burn::tensor::Distribution;

    fn mlp(device: &Device) -> Classifier {
        Classifier::new(ModelKind::Mlp, ImageShape::new(1, 4, 4), &[5, 3], device)
    }

    fn layers(model: &Classifier) -> Vec<(String, SparseCandidate<'_>)> {
        model.sparse_candidates([1, 4, 4])
    }

    #[test]
    fn a_cnns_convolutions_are_timed_as_their_blocks() {
        // what `auto` times for the CNN's two convolutions: the block the model runs, dense and
        // sparse alike (the same values on a kernel with zeros), of the shape it gives
        let device = Device::flex().autodiff();
        let model = Classifier::new(
            ModelKind::Cnn,
            ImageShape::new(1, 8, 8),
            &[4, 36, 6],
            &device,
        );
        let candidates = model.sparse_candidates([1, 8, 8]);
        let mut x = Tensor::<4>::random([3, 1, 8, 8], Distribution::Default, &device);
        for (name, candidate) in &candidates[..2] {
            let SparseCandidate::PooledConv(conv, input) = *candidate else {
                panic!("{name} is a pooled convolution")
            };
            assert_eq!(x.dims()[1..], input, "{name}");
            // the smallest weights zero (15-30% of each kernel)
            let w = conv.weight.val();
            let w = w.clone().mask_fill(w.abs().lower_elem(0.05), 0.0).detach();
            let dense = pooled_block(conv, x.clone(), w.clone(), false);
            let sparse = pooled_block(conv, x.clone(), w, true);
            assert_eq!(dense.dims(), pooled_output(conv, input, 3), "{name}");
            let diff: f32 = (dense.clone() - sparse).abs().max().into_scalar();
            assert!(diff <= 1e-4, "{name}: {diff}");
            x = pooled_block(conv, x, conv.weight.val(), false);
        }
    }

    #[test]
    fn on_moves_every_layer_once_zeros_are_absorbing() {
        let device = Device::flex().autodiff();
        let model = mlp(&device);
        let config = TrainConfig {
            sparse_training: SparseTraining::On,
            p_start: Some(2.0),
            ..TrainConfig::default()
        };
        // p falls from 2 to 0.8 over the first 50 of 100 steps: below 2 - 1e-3 from step 1
        let mut plan = SparsePlan::new(&config, 100, layers(&model), &device).unwrap();
        plan.update(layers(&model), 0, 8, &device);
        assert_eq!(plan.flags(), [false, false, false]);
        plan.update(layers(&model), 1, 8, &device);
        assert_eq!(plan.flags(), [true, true, true]);
        plan.update(layers(&model), 7, 8, &device);
        let names: Vec<(String, u64)> = plan
            .record()
            .into_iter()
            .map(|l| (l.name, l.since_step))
            .collect();
        assert_eq!(
            names,
            [
                ("hidden.0".into(), 1),
                ("hidden.1".into(), 1),
                ("output".into(), 1)
            ]
        );
    }

    #[test]
    fn auto_keeps_adamw_and_dense_layers_dense_and_a_restore_keeps_the_plan() {
        let device = Device::flex().autodiff();
        let model = mlp(&device);
        let adamw = TrainConfig {
            optim: OptimKind::Adamw,
            ..TrainConfig::default()
        };
        let mut plan = SparsePlan::new(&adamw, 100, layers(&model), &device).unwrap();
        plan.update(layers(&model), 50, 8, &device);
        assert!(plan.record().is_empty());
        // pAdam, but freshly initialised weights have no zeros: not timed, not moved
        let mut plan =
            SparsePlan::new(&TrainConfig::default(), 100, layers(&model), &device).unwrap();
        plan.update(layers(&model), 50, 8, &device);
        assert!(plan.record().is_empty());
        let recorded = vec![SparseLayer {
            name: "hidden.1".into(),
            since_step: 40,
        }];
        plan.restore(&recorded);
        assert_eq!(plan.flags(), [false, true, false]);
        assert_eq!(plan.record(), recorded);
    }
}
