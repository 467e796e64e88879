//! A 2-D convolution over its kernel's non-zeros, forward and backward, for burn's flex CPU
//! backend: sparse training of convolutional layers, as [`super::sparse_linear`] is for linear
//! ones.
//!
//! Each stored weight `W[o, c, ky, kx]` of a CSR of the kernel's `[O, C·k²]` view links input
//! plane `c` to output plane `o`, shifted. Two ways to run that, picked per shape:
//!
//! - through lanes (`pdecay::lane_conv`; stride 1 with 32 or more taps per output channel):
//!   the images laid out `[H, W, C, B]`, each output position one sparse row product over the
//!   kernel's taps with the batch in registers; `∂X` the same over the flipped kernel, `∂W`
//!   dot products at the non-zeros only;
//! - directly on the images (`pdecay::sparse_conv`; stride 2, and few taps such as a
//!   one-channel input's): each stored weight adds input plane `c`, shifted and scaled, into
//!   output plane `o`, `∂X` gets `∂Y`'s plane `o` shifted back, and `∂W` is a dot product of
//!   shifted planes at each non-zero (exactly zero elsewhere).
//!
//! A zero weight stays zero under pWD with `p < 2` and `p·η·λ > 0`, so its gradient is never
//! used and the layer trains over its non-zeros without changing the run (summation order
//! aside). The kernel stays an ordinary dense tensor, its support read at every call. Biases
//! and everything else are burn's own ops; off flex [`sparse_conv2d`] is burn's `conv2d`.
//!
//! Over every entry of the kernel, zeros included, the direct products are a dense convolution
//! with every gradient: [`dense_conv2d`] runs a first layer's few taps that way, and wider
//! stride-1 kernels as gemms in the lanes' layout (`pdecay::lane_gemm`).

use std::sync::Arc;

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, Flex, backend_extension};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Tensor, TensorData};
use pdecay::csr::Csr;
use pdecay::im2col::ConvShape;
use pdecay::{lane_conv, lane_gemm, sparse_conv};

use crate::flex::{all_f32, on_flex};

/// burn's options for a square kernel's `stride` and `padding`.
pub(super) fn conv_options(stride: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1)
}

/// The convolution over the kernel's non-zeros as a backend operation.
#[backend_extension(Flex, Autodiff)]
pub(crate) trait SparseConv: Backend {
    /// `conv2d(x, w)` for `x` `[B, C, H, W]` and a square kernel `w` `[O, C, k, k]`, with
    /// `stride` and zero `padding` on every side, over `w`'s non-zeros, or over all its
    /// entries (every gradient computed) when `every_weight`.
    fn sparse_conv(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        every_weight: bool,
    ) -> FloatTensor<Self> {
        let _ = every_weight;
        Self::conv2d(x, w, None, conv_options(stride, padding))
    }
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let d = t.layout().shape().to_vec();
    [d[0], d[1], d[2], d[3]]
}

/// How the forward product ran, with the input in the layout its backward products read.
#[derive(Debug, Clone)]
pub(super) enum Input {
    /// Directly on the images (`pdecay::sparse_conv`): the forward's input `[B, C, H, W]`.
    Images(Arc<FlexTensor>),
    /// Batch innermost (`pdecay::lane_conv`): the padded position-major input and the taps.
    Lanes(Arc<lane_conv::Saved>),
    /// Batch innermost, every weight (`pdecay::lane_gemm`): the padded position-major input.
    DenseLanes(Arc<lane_gemm::Saved>),
}

/// What the backward step needs: the kernel's support with its values (CSR of `[O, C·k²]`),
/// the forward's input, and the geometry.
#[derive(Debug, Clone)]
pub(super) struct Saved {
    pub(super) w: Arc<Csr>,
    pub(super) input: Input,
    pub(super) shape: ConvShape,
}

/// The convolution's geometry for `x` `[B, C, H, W]` and a square kernel `w` `[O, C, k, k]`,
/// and the kernel as a CSR of `[O, C·k²]`: its non-zeros, or every entry when `every_weight`.
pub(super) fn geometry(
    x: &FlexTensor,
    w: &FlexTensor,
    stride: usize,
    padding: usize,
    every_weight: bool,
) -> (ConvShape, Csr) {
    let w = w.to_contiguous();
    let ([batch, channels, height, width], [outputs, _, kernel, _]) = (dims4(x), dims4(&w));
    let shape = ConvShape {
        batch,
        channels,
        height,
        width,
        kernel,
        stride,
        padding,
    };
    let support = if every_weight {
        Csr::every_entry(w.storage::<f32>(), outputs, shape.patch_rows())
    } else {
        Csr::nonzeros(w.storage::<f32>(), outputs, shape.patch_rows())
    };
    (shape, support)
}

/// The convolution over `W`'s non-zeros, and what its backward step needs: through lanes
/// where `pdecay::lane_conv` pays (stride 1, 32 taps per output channel or more), directly on
/// the images elsewhere.
fn forward(
    x: &FlexTensor,
    w: &FlexTensor,
    stride: usize,
    padding: usize,
    every_weight: bool,
) -> (FlexTensor, Saved) {
    let x = x.to_contiguous();
    let (shape, support) = geometry(&x, w, stride, padding, every_weight);
    let (batch, outputs) = (shape.batch, support.rows);
    let (ho, wo) = shape.output_size();
    let (y, input) = if every_weight && lane_conv::pays(&shape) {
        let (y, saved) = lane_gemm::forward(&support.values, x.storage::<f32>(), &shape);
        (y, Input::DenseLanes(Arc::new(saved)))
    } else if lane_conv::pays(&shape) {
        let (y, saved) = lane_conv::forward(&support, x.storage::<f32>(), &shape);
        (y, Input::Lanes(Arc::new(saved)))
    } else {
        let mut y = vec![0.0f32; batch * outputs * ho * wo];
        sparse_conv::forward(&support, x.storage::<f32>(), &shape, &mut y);
        (y, Input::Images(Arc::new(x)))
    };
    let saved = Saved {
        w: Arc::new(support),
        input,
        shape,
    };
    let y = FlexTensor::from_data(TensorData::new(y, [batch, outputs, ho, wo]));
    (y, saved)
}

/// `∂X` (when asked) and `∂W` at `W`'s non-zeros, zero elsewhere.
fn backward(
    saved: &Saved,
    grad: &FlexTensor,
    with_x_grad: bool,
) -> (Option<FlexTensor>, FlexTensor) {
    let Saved { w, input, shape } = saved;
    let grad = grad.to_contiguous();
    let grad = grad.storage::<f32>();
    let (dx, at_support) = match input {
        Input::Lanes(lanes) => lane_conv::backward(w, lanes, grad, with_x_grad),
        Input::DenseLanes(lanes) => lane_gemm::backward(&w.values, lanes, grad, with_x_grad),
        Input::Images(x) => {
            let dx = with_x_grad.then(|| {
                let mut dx =
                    vec![0.0f32; shape.batch * shape.channels * shape.height * shape.width];
                sparse_conv::input_grad(w, grad, shape, &mut dx);
                dx
            });
            let mut at_support = vec![0.0f32; w.nnz()];
            sparse_conv::weight_grad(w, x.storage::<f32>(), grad, shape, &mut at_support);
            (dx, at_support)
        }
    };
    gradients(w, shape, dx, &at_support)
}

/// `∂x` `[B, C, H, W]` and `∂W` `[O, C, k, k]` as tensors, from the products' `dx` and the
/// kernel gradient at `w`'s stored weights (zero elsewhere).
pub(super) fn gradients(
    w: &Csr,
    shape: &ConvShape,
    dx: Option<Vec<f32>>,
    at_support: &[f32],
) -> (Option<FlexTensor>, FlexTensor) {
    let x_grad = dx.map(|dx| {
        FlexTensor::from_data(TensorData::new(
            dx,
            [shape.batch, shape.channels, shape.height, shape.width],
        ))
    });
    let k = shape.kernel;
    let w_grad = FlexTensor::from_data(TensorData::new(
        w.dense_with(at_support),
        [w.rows, shape.channels, k, k],
    ));
    (x_grad, w_grad)
}

impl SparseConv for Flex {
    fn sparse_conv(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        every_weight: bool,
    ) -> FloatTensor<Self> {
        if !all_f32(&[&x, &w]) {
            return Self::conv2d(x, w, None, conv_options(stride, padding));
        }
        forward(&x, &w, stride, padding, every_weight).0
    }
}

/// The backward step, from the support and patches saved by the forward product.
#[derive(Debug)]
struct SparseConvBackward;

impl Backward<Flex, 2> for SparseConvBackward {
    type State = Saved;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        super::product_backward(ops, grads, backward);
    }
}

/// Only flex runs the sparse convolution (the dispatch reaches this impl for flex under
/// autodiff; every other device takes burn's `conv2d` in [`sparse_conv2d`]).
impl<C: CheckpointStrategy> SparseConv for Autodiff<Flex, C> {
    fn sparse_conv(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        every_weight: bool,
    ) -> FloatTensor<Self> {
        if !all_f32(&[x.primitive(), w.primitive()]) {
            return Self::conv2d(x, w, None, conv_options(stride, padding));
        }
        let prep = SparseConvBackward
            .prepare::<C>([x.node(), w.node()])
            .compute_bound()
            .stateful();
        let (output, saved) = forward(x.primitive(), w.primitive(), stride, padding, every_weight);
        match prep {
            OpsKind::Tracked(prep) => prep.finish(saved, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// `conv2d(x, weight) + bias` for `x` `[B, C, H, W]` and a square kernel `weight`
/// `[O, C, k, k]` (burn `Conv2d`'s layout) with `stride` and zero `padding` on every side, run
/// over the kernel's non-zeros on the flex CPU backend (with or without autodiff) and by burn's
/// dense convolution elsewhere. Values and `∂x` are the dense convolution's up to summation
/// order; `∂weight` is the dense one at the non-zeros and exactly zero at the zeros.
///
/// # Panics
/// If the kernel is not square or its input channels are not `x`'s.
pub fn sparse_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    convolve(x, weight, bias, stride, padding, false)
}

/// `conv2d(x, weight) + bias` as [`sparse_conv2d`] takes it, dense: every weight takes part
/// and gets its gradient. On flex:
///
/// - a kernel with fewer than `pdecay::lane_conv::LANES_FROM_TAPS` taps per output channel
///   (`C·k²`: a first layer over one or three input channels) runs directly on the images,
///   where burn's im2col writes a nine-fold copy of the input for a product too thin for its
///   gemm: 0.49x burn's time on the CNN's conv1, forward and kernel gradient;
/// - a wider kernel at stride 1 runs as a few gemms per output position with the batch
///   innermost (`pdecay::lane_gemm`), where burn's gemm reduces the kernel gradient over the
///   whole batch's patch matrix: 0.58x burn's time on the CNN's conv2 and 0.45-0.62x on
///   ResNet-20's stages, forward and backward;
///
/// (the dense section of `cargo bench -p pdecay-burn --bench sparse_conv`); every other
/// kernel (strided), and every other device, takes burn's `conv2d`.
///
/// # Panics
/// If the kernel is not square or its input channels are not `x`'s.
pub fn dense_conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    let [_, channels, k, _] = weight.dims();
    let taps = channels * k * k;
    if taps >= lane_conv::LANES_FROM_TAPS && !(stride == 1 && padding < k) {
        return burn::tensor::module::conv2d(x, weight, bias, conv_options(stride, padding));
    }
    convolve(x, weight, bias, stride, padding, true)
}

/// The sparse op over `weight`'s non-zeros, or over all of it when `every_weight`.
fn convolve(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    stride: usize,
    padding: usize,
    every_weight: bool,
) -> Tensor<4> {
    let [_, channels, kh, kw] = weight.dims();
    assert_eq!(kh, kw, "sparse_conv2d takes square kernels");
    assert_eq!(
        x.dims()[1],
        channels,
        "sparse_conv2d: the kernel's input channels are the input's"
    );
    if !on_flex(&x.device(), true) {
        return burn::tensor::module::conv2d(x, weight, bias, conv_options(stride, padding));
    }
    let product = Tensor::from_dispatch(<Dispatch as SparseConv>::sparse_conv(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        padding,
        every_weight,
    ));
    match bias {
        Some(bias) => {
            let outputs = bias.dims()[0];
            product + bias.reshape([1, outputs, 1, 1])
        }
        None => product,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// A `[o, c, k, k]` kernel with about `zeros` of its entries exactly zero (by a hash of the
    /// position, deterministic).
    fn sparse_kernel(dims: [usize; 4], zeros: f64, seed: u64, device: &Device) -> Tensor<4> {
        let values: Vec<f32> = (0..dims.iter().product::<usize>())
            .map(|i| {
                let h = (i as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                let u = h as f64 / (1u64 << 24) as f64;
                if u < zeros {
                    0.0
                } else {
                    (u as f32 - 0.5) * 2.0
                }
            })
            .collect();
        Tensor::from_data(TensorData::new(values, dims), device)
    }

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    /// Values, `∂x`, `∂w` and `∂b` of the sparse op against burn's dense `conv2d`, the dense
    /// `∂w` masked to the support; `∂w` at the zeros exactly zero. With `every_weight`,
    /// [`dense_conv2d`] against burn's, `∂w` unmasked.
    fn check(
        x_dims: [usize; 4],
        outputs: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        zeros: f64,
        every_weight: bool,
    ) {
        let device = Device::flex().autodiff();
        let seed = x_dims.iter().sum::<usize>() as u64 * 31 + outputs as u64;
        let x = Tensor::<4>::random(x_dims, Distribution::Normal(0.0, 1.0), &device);
        let w = sparse_kernel([outputs, x_dims[1], kernel, kernel], zeros, seed, &device);
        let b = Tensor::<1>::random([outputs], Distribution::Normal(0.0, 1.0), &device);
        let dense = burn::tensor::module::conv2d(
            x.clone(),
            w.clone(),
            Some(b.clone()),
            conv_options(stride, padding),
        );
        // a fixed upstream gradient: the loss is Σ y ⊙ G
        let g = Tensor::<4>::random(dense.dims(), Distribution::Normal(0.0, 1.0), &device);
        let run = |sparse: bool| {
            let (x, w, b) = (
                x.clone().require_grad(),
                w.clone().require_grad(),
                b.clone().require_grad(),
            );
            let y = if sparse && every_weight {
                dense_conv2d(x.clone(), w.clone(), Some(b.clone()), stride, padding)
            } else if sparse {
                sparse_conv2d(x.clone(), w.clone(), Some(b.clone()), stride, padding)
            } else {
                burn::tensor::module::conv2d(
                    x.clone(),
                    w.clone(),
                    Some(b.clone()),
                    conv_options(stride, padding),
                )
            };
            let grads = (y.clone() * g.clone()).sum().backward();
            (
                y.inner(),
                x.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
                b.grad(&grads).unwrap(),
            )
        };
        let (y_s, dx_s, dw_s, db_s) = run(true);
        let (y_d, dx_d, dw_d, db_d) = run(false);
        assert_eq!(y_s.dims(), y_d.dims());
        let support = w.clone().inner().not_equal_elem(0.0);
        let dw_d = if every_weight {
            dw_d
        } else {
            dw_d.mask_fill(support.clone().bool_not(), 0.0)
        };
        // sums of up to C·k² (values, ∂x) or B·P (∂w, ∂b) terms of magnitude ~1 in either order
        let terms =
            (x_dims[1] * kernel * kernel).max(y_d.dims()[0] * y_d.dims()[2] * y_d.dims()[3]);
        let tolerance = 4e-5 * (terms as f32).sqrt();
        let case =
            format!("{x_dims:?} -> {outputs}, k {kernel} s {stride} p {padding}, {zeros} zeros");
        assert!(max_abs_diff(y_s, y_d) <= tolerance, "values, {case}");
        assert!(max_abs_diff(dx_s, dx_d) <= tolerance, "dx, {case}");
        assert!(max_abs_diff(dw_s.clone(), dw_d) <= tolerance, "dw, {case}");
        if !every_weight {
            let dead = dw_s
                .mask_fill(support, 0.0)
                .abs()
                .max()
                .into_scalar::<f32>();
            assert_eq!(dead, 0.0, "dw at the zeros, {case}");
        }
        assert!(max_abs_diff(db_s, db_d) <= tolerance, "db, {case}");
    }

    #[test]
    fn values_and_gradients_match_burns_convolution() {
        // the CNN's second conv and a ResNet-20 first-stage conv (through lanes), a ResNet
        // stride-2 conv and projection, odd sizes, batch 1, an empty and a full kernel; 27 taps
        // or fewer per output channel run directly on the images, 32 or more through lanes
        check([4, 32, 14, 14], 64, 3, 1, 1, 0.9, false);
        check([2, 16, 28, 28], 16, 3, 1, 1, 0.8, false);
        check([3, 8, 9, 9], 16, 3, 2, 1, 0.5, false);
        check([2, 8, 8, 8], 16, 1, 2, 0, 0.7, false);
        check([1, 3, 7, 5], 5, 3, 1, 1, 0.0, false);
        check([2, 4, 6, 6], 3, 3, 1, 0, 1.0, false);
        check([5, 1, 11, 11], 7, 5, 3, 2, 0.95, false);
    }

    #[test]
    fn the_dense_convolution_is_burns_with_every_gradient() {
        // first layers (9 and 27 taps: directly on the images, zeros computed like any weight),
        // stride 2 (27 taps: directly; 36: burn's own convolution), and stride 1 with 36 taps
        // or more (gemm per output position), padding 0 to 2, the CNN's conv2 with batch 3
        check([3, 1, 28, 28], 32, 3, 1, 1, 0.5, true);
        check([2, 3, 9, 11], 5, 3, 1, 1, 0.3, true);
        check([2, 1, 9, 9], 4, 3, 2, 1, 0.0, true);
        check([2, 4, 7, 7], 3, 3, 2, 1, 0.2, true);
        check([2, 4, 6, 6], 3, 3, 1, 1, 0.5, true);
        check([1, 5, 7, 6], 4, 3, 1, 0, 0.0, true);
        check([2, 2, 5, 5], 3, 5, 1, 2, 0.1, true);
        check([3, 32, 14, 14], 64, 3, 1, 1, 0.0, true);
    }

    #[test]
    fn a_shrinking_support_gets_no_gradient_where_it_died() {
        // 2 channels (18 taps: directly on the images) and 4 (36: through lanes)
        for channels in [2, 4] {
            let device = Device::flex().autodiff();
            let x =
                Tensor::<4>::random([2, channels, 5, 5], Distribution::Normal(0.0, 1.0), &device);
            let w = sparse_kernel([3, channels, 3, 3], 0.3, 7, &device);
            let mut values = w.to_data().try_to_vec::<f32>().unwrap();
            let live = values.iter().position(|v| *v != 0.0).unwrap();
            let w0 = w.require_grad();
            let grads = sparse_conv2d(x.clone(), w0.clone(), None, 1, 1)
                .sum()
                .backward();
            let before = w0
                .grad(&grads)
                .unwrap()
                .to_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert_ne!(before[live], 0.0);
            // the same weight with that entry now zero: no gradient there, the rest unchanged
            values[live] = 0.0;
            let w1 = Tensor::<4>::from_data(TensorData::new(values, [3, channels, 3, 3]), &device)
                .require_grad();
            let grads = sparse_conv2d(x, w1.clone(), None, 1, 1).sum().backward();
            let after = w1
                .grad(&grads)
                .unwrap()
                .to_data()
                .try_to_vec::<f32>()
                .unwrap();
            assert_eq!(after[live], 0.0, "{channels} channels");
            for (i, (a, b)) in after.iter().zip(&before).enumerate() {
                if i != live {
                    assert!(
                        (a - b).abs() <= 1e-5,
                        "{channels} channels, {i}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn off_flex_autodiff_it_is_burns_convolution_without_a_tape() {
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 3, 6, 6], Distribution::Normal(0.0, 1.0), &device);
        let w = sparse_kernel([4, 3, 3, 3], 0.6, 3, &device);
        let b = Tensor::<1>::from_data([1.0, -1.0, 0.5, 0.0], &device);
        let y = sparse_conv2d(x.clone(), w.clone(), Some(b.clone()), 1, 1);
        let d = burn::tensor::module::conv2d(x, w, Some(b), conv_options(1, 1));
        assert!(max_abs_diff(y, d) <= 1e-4);
    }
}
