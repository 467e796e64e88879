//! A dense stride-1 convolution in [`crate::lane_conv`]'s position-major layout, each output
//! position a few small gemms: the dense counterpart of the lane products, for layers that
//! train dense.
//!
//! With the input zero-padded to `[Hp, Wp, C, B]`, the `k·C` rows that kernel row `ky` reads
//! at output position `(i, j)`, `x[i + ky, j + kx, c, :]` for `kx < k` and `c < C`, follow one
//! another: they are the `[k·C, B]` matrix `X_{i+ky, j}` from row `((i + ky)·Wp + j)·C`. So
//!
//! ```text
//! Y_{i,j} = Σ_ky W_ky · X_{i+ky, j}           [O, B] = Σ [O, k·C] · [k·C, B]
//! ∂X_{i,j} = Σ_ky Ŵ_ky · ∂Y_{i+ky, j}          the flipped kernel Ŵ over ∂Y padded by k − 1 − q
//! ∂W_ky = Σ_{i,j} ∂Y_{i,j} · X_{i+ky, j}ᵀ     [O, k·C] = Σ [O, B] · [B, k·C]
//! ```
//!
//! with `W_ky[o, kx·C + c] = W[o, c, ky, kx]`: `k` products per position of depth `k·C` over
//! `B` lanes, each position's output `[O, B]` staying in cache while its `k` products add up.
//! burn's flex convolution instead writes the `k²`-fold patch matrix of the whole batch
//! (im2col) and runs one long gemm over it, whose kernel gradient reduces over all `B·H'·W'`
//! columns.
//!
//! The products are gemm's (burn-flex's own kernels), one thread each, a rayon task per
//! output position (per output row for the kernel gradient, whose partial sums then add up in
//! row order: the result does not depend on the thread count).

use rayon::prelude::*;

use crate::im2col::ConvShape;
use crate::lane_conv::{Padded, Positions, from_positions, grad_padding, supports};
use crate::matmul::{View, product};

/// Below this many multiply-adds a product runs on the calling thread.
const PARALLEL_WORK: usize = 1 << 20;

/// The kernel `w` `[O, C, k, k]` as `k` row-major matrices `W_ky` `[O, k·C]` (`[k, O, k·C]`),
/// `W_ky[o, kx·C + c] = W[o, c, ky, kx]`; with `flip`, the input gradient's `[k, C, k·O]`,
/// `Ŵ_ky[c, kx·O + o] = W[o, c, k−1−ky, k−1−kx]`.
fn kernel_rows(w: &[f32], outputs: usize, channels: usize, kernel: usize, flip: bool) -> Vec<f32> {
    let k = kernel;
    let (rows, inner) = if flip {
        (channels, outputs)
    } else {
        (outputs, channels)
    };
    let mut out = vec![0.0f32; k * rows * k * inner];
    for o in 0..outputs {
        for c in 0..channels {
            for ky in 0..k {
                for kx in 0..k {
                    let v = w[((o * channels + c) * k + ky) * k + kx];
                    let at = if flip {
                        (((k - 1 - ky) * channels + c) * k + (k - 1 - kx)) * outputs + o
                    } else {
                        ((ky * outputs + o) * k + kx) * channels + c
                    };
                    out[at] = v;
                }
            }
        }
    }
    out
}

/// `y[i, j] = Σ_ky rows_ky · x[i + ky, j]` at every output position of an `[out_height,
/// out_width]` grid, `y` `[out_height, out_width, R, B]`, for `rows` from [`kernel_rows`]
/// (`[k, R, k·x.channels]`).
fn correlate(
    rows: &[f32],
    kernel: usize,
    x: Positions,
    [out_height, out_width]: [usize; 2],
    y: &mut [f32],
) {
    let (depth, batch) = (kernel * x.channels, x.batch);
    let outputs = rows.len() / (kernel * depth);
    assert_eq!(
        rows.len(),
        kernel * outputs * depth,
        "lane_gemm: kernel rows"
    );
    assert_eq!(
        y.len(),
        out_height * out_width * outputs * batch,
        "lane_gemm: y is out_height x out_width x rows x batch"
    );
    assert!(
        x.height >= out_height + kernel - 1 && x.width >= out_width + kernel - 1,
        "lane_gemm: the input covers every window"
    );
    x.check();
    if y.is_empty() {
        return;
    }
    let position = |(p, out): (usize, &mut [f32])| {
        let (i, j) = (p / out_width, p % out_width);
        for ky in 0..kernel {
            let window = &x.data[x.at(i + ky, j)..][..depth * batch];
            let w = &rows[ky * outputs * depth..][..outputs * depth];
            // out is [outputs, batch], w [outputs, depth] and window [depth, batch]
            product(
                [outputs, batch, depth],
                (out, View::rows(batch)),
                (w, View::rows(depth)),
                (window, View::rows(batch)),
                ky > 0,
            );
        }
    };
    let chunk = outputs * batch;
    if y.len() * kernel * depth < PARALLEL_WORK {
        y.chunks_mut(chunk).enumerate().for_each(position);
    } else {
        y.par_chunks_mut(chunk).enumerate().for_each(position);
    }
}

/// `∂W_ky = Σ_{i,j} ∂Y_{i,j} · X_{i+ky, j}ᵀ` as `[k, O, k·C]`, with `dy` the output gradient
/// seen from `dy_offset` rows and columns in (it is padded for the input gradient).
fn kernel_gradient(kernel: usize, x: Positions, dy: Positions, dy_offset: usize) -> Vec<f32> {
    x.check();
    dy.check();
    assert_eq!(dy.batch, x.batch, "lane_gemm: one batch");
    let (out_height, out_width) = (dy.height - 2 * dy_offset, dy.width - 2 * dy_offset);
    let (depth, outputs, batch) = (kernel * x.channels, dy.channels, x.batch);
    let size = kernel * outputs * depth;
    // one partial gradient per output row, summed in row order below
    let row = |i: usize| {
        let mut partial = vec![0.0f32; size];
        for j in 0..out_width {
            let g = &dy.data[dy.at(i + dy_offset, j + dy_offset)..][..outputs * batch];
            for ky in 0..kernel {
                let window = &x.data[x.at(i + ky, j)..][..depth * batch];
                let dst = &mut partial[ky * outputs * depth..][..outputs * depth];
                // dst is [outputs, depth], g [outputs, batch] and window [depth, batch]
                // (read transposed as [batch, depth])
                product(
                    [outputs, depth, batch],
                    (dst, View::rows(depth)),
                    (g, View::rows(batch)),
                    (window, View::rows(batch).t()),
                    true,
                );
            }
        }
        partial
    };
    let partials: Vec<Vec<f32>> = if out_height * out_width * size * batch < PARALLEL_WORK {
        (0..out_height).map(row).collect()
    } else {
        (0..out_height).into_par_iter().map(row).collect()
    };
    let mut sum = vec![0.0f32; size];
    for partial in &partials {
        for (s, p) in sum.iter_mut().zip(partial) {
            *s += p;
        }
    }
    sum
}

/// What the backward products need of a forward one: the padded position-major input.
#[derive(Debug, Clone)]
pub struct Saved {
    x: Padded,
    shape: ConvShape,
}

/// The convolution of images `x` `[B, C, H, W]` with the dense kernel `w` `[O, C, k, k]`:
/// `y` `[B, O, H', W']`, and what the backward products need.
///
/// # Panics
/// If `shape` is not [`supports`]ed (stride 1, padding below the kernel) or the lengths do not
/// match it (callers' bugs).
pub fn forward(w: &[f32], x: &[f32], shape: &ConvShape) -> (Vec<f32>, Saved) {
    let (y, saved) = forward_positions(w, x, shape);
    let (ho, wo) = shape.output_size();
    let outputs = w.len() / shape.patch_rows();
    (from_positions(&y, [ho, wo, outputs, shape.batch]), saved)
}

/// [`forward`] with `y` left position-major, `[H', W', O, B]` (as
/// [`crate::lane_conv::forward_positions`]).
///
/// # Panics
/// As [`forward`].
pub fn forward_positions(w: &[f32], x: &[f32], shape: &ConvShape) -> (Vec<f32>, Saved) {
    assert!(
        supports(shape),
        "lane_gemm: stride 1 and padding < kernel only"
    );
    let s = shape;
    let outputs = w.len() / s.patch_rows();
    assert_eq!(
        w.len(),
        outputs * s.patch_rows(),
        "lane_gemm: w is O x C x k x k"
    );
    let saved = Saved {
        x: Padded::new(x, [s.batch, s.channels, s.height, s.width], s.padding),
        shape: *shape,
    };
    let (ho, wo) = s.output_size();
    let rows = kernel_rows(w, outputs, s.channels, s.kernel, false);
    let mut y = vec![0.0f32; ho * wo * outputs * s.batch];
    correlate(&rows, s.kernel, saved.x.positions(), [ho, wo], &mut y);
    (y, saved)
}

/// The input gradient `∂x` `[B, C, H, W]` (when asked) and the kernel gradient `[O, C, k, k]`
/// from the output gradient `dy` `[B, O, H', W']`.
///
/// # Panics
/// If the lengths do not match the forward product's shapes (callers' bugs).
pub fn backward(
    w: &[f32],
    saved: &Saved,
    dy: &[f32],
    with_x_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let s = &saved.shape;
    let outputs = w.len() / s.patch_rows();
    let (ho, wo) = s.output_size();
    let dy = Padded::new(dy, [s.batch, outputs, ho, wo], grad_padding(s));
    backward_positions(w, saved, &dy, with_x_grad)
}

/// [`backward`] from `dy` already position-major and padded by [`grad_padding`].
///
/// # Panics
/// As [`backward`].
pub fn backward_positions(
    w: &[f32],
    saved: &Saved,
    dy: &Padded,
    with_x_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let s = &saved.shape;
    let k = s.kernel;
    let outputs = w.len() / s.patch_rows();
    let (ho, wo) = s.output_size();
    let pad = grad_padding(s);
    let dy = dy.positions();
    assert_eq!(
        [dy.height, dy.width, dy.channels, dy.batch],
        [ho + 2 * pad, wo + 2 * pad, outputs, s.batch],
        "lane_gemm: dy is the output's shape, padded"
    );
    let dx = with_x_grad.then(|| {
        let flipped = kernel_rows(w, outputs, s.channels, k, true);
        let mut dx = vec![0.0f32; s.height * s.width * s.channels * s.batch];
        correlate(&flipped, k, dy, [s.height, s.width], &mut dx);
        from_positions(&dx, [s.height, s.width, s.channels, s.batch])
    });
    // [k, O, k, C] back to [O, C, k, k]
    let by_rows = kernel_gradient(k, saved.x.positions(), dy, pad);
    let mut dw = vec![0.0f32; w.len()];
    for ky in 0..k {
        for o in 0..outputs {
            for kx in 0..k {
                for c in 0..s.channels {
                    dw[((o * s.channels + c) * k + ky) * k + kx] =
                        by_rows[((ky * outputs + o) * k + kx) * s.channels + c];
                }
            }
        }
    }
    (dx, dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::Csr;
    use crate::sparse_conv;
    use crate::test_support::{assert_close, uniforms};
    use proptest::prelude::*;

    #[test]
    fn kernel_rows_place_each_weight_as_worked_by_hand() {
        // O 2, C 3, k 2: W[o, c, ky, kx] = 1000·o + 100·c + 10·ky + kx
        let (o, c, k) = (2, 3, 2);
        let w: Vec<f32> = (0..o * c * k * k)
            .map(|n| {
                let (oo, cc, ky, kx) = (n / (c * k * k), n / (k * k) % c, n / k % k, n % k);
                (1000 * oo + 100 * cc + 10 * ky + kx) as f32
            })
            .collect();
        let rows = kernel_rows(&w, o, c, k, false);
        // rows is [ky, o, kx, c]
        let at = |ky: usize, oo: usize, kx: usize, cc: usize| ((ky * o + oo) * k + kx) * c + cc;
        assert_eq!(rows[at(1, 1, 1, 2)], 1211.0); // W[1, 2, 1, 1]
        assert_eq!(rows[at(1, 0, 0, 1)], 110.0); // W[0, 1, 1, 0]
        assert_eq!(&rows[..2], &[0.0, 100.0]); // the channel is innermost
        // flipped is [ky', c, kx', o] holding W[o, c, k−1−ky', k−1−kx']
        let flipped = kernel_rows(&w, o, c, k, true);
        let at = |ky: usize, cc: usize, kx: usize, oo: usize| ((ky * c + cc) * k + kx) * o + oo;
        assert_eq!(flipped[at(0, 2, 0, 1)], 1211.0); // W[1, 2, 1, 1]
        assert_eq!(flipped[at(1, 0, 1, 0)], 0.0); // W[0, 0, 0, 0]
        assert_eq!(flipped[at(1, 0, 0, 0)], 1.0); // W[0, 0, 0, 1]
        assert_eq!(flipped[at(0, 1, 1, 1)], 1110.0); // W[1, 1, 1, 0]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Against the direct products over every entry of the kernel (zeros stored too,
        /// so every gradient is computed).
        #[test]
        fn gemm_products_equal_the_direct_products(
            batch in prop_oneof![Just(1usize), 2usize..5, Just(33)],
            channels in 1usize..5,
            outputs in 1usize..6,
            height in 1usize..7,
            width in 1usize..7,
            (kernel, padding) in prop_oneof![Just((1usize, 0usize)), Just((3, 1)), Just((3, 0)), Just((3, 2)), Just((5, 2))],
            zeros in prop_oneof![Just(0.0f64), Just(0.5)],
            seed in any::<u64>(),
        ) {
            let s = ConvShape { batch, channels, height, width, kernel, stride: 1, padding };
            let (ho, wo) = s.output_size();
            prop_assume!(ho > 0 && wo > 0);
            let mut next = uniforms(seed);
            let w: Vec<f32> = (0..outputs * s.patch_rows())
                .map(|_| if (next() as f64) < zeros { 0.0 } else { next() - 0.5 })
                .collect();
            let x: Vec<f32> = (0..batch * channels * height * width).map(|_| next() - 0.5).collect();
            let dy: Vec<f32> = (0..batch * outputs * ho * wo).map(|_| next() - 0.5).collect();

            let (y, saved) = forward(&w, &x, &s);
            let (dx, dw) = backward(&w, &saved, &dy, true);
            let every = Csr::every_entry(&w, outputs, s.patch_rows());
            let mut y_direct = vec![0.0; y.len()];
            sparse_conv::forward(&every, &x, &s, &mut y_direct);
            let mut dx_direct = vec![0.0; x.len()];
            sparse_conv::input_grad(&every, &dy, &s, &mut dx_direct);
            let mut dw_direct = vec![0.0; w.len()];
            sparse_conv::weight_grad(&every, &x, &dy, &s, &mut dw_direct);
            assert_close(&y, &y_direct, "y");
            assert_close(&dx.unwrap(), &dx_direct, "dx");
            assert_close(&dw, &dw_direct, "dw");
        }
    }
}
