//! `max_pool_2x2(relu(y + bias))` over position-major images `[H, W, C, B]`
//! ([`crate::lane_conv`]'s layout), forward and backward: a CNN's convolution, bias, ReLU and
//! pooling without converting the convolution's full-size output to `[B, C, H, W]` and its
//! gradient back.
//!
//! Position `(i, j)` holds `C·B` contiguous values, channel-major, so a window's four
//! candidates for channel `c` are four contiguous runs of `B` lanes:
//!
//! ```text
//! out[i, j, c, :] = max over (r, s) in {0, 1}² of relu(y[2i + r, 2j + s, c, :] + bias[c])
//! ```
//!
//! taken lane by lane with [`crate::pool`]'s branch-free rule (the first maximum in row-major
//! window order wins, a NaN beats every number). Each output keeps its window's corner, `2r +
//! s`, or -1 where the pooled value is 0 and the ReLU passes no gradient back: one byte where
//! the `[B, C, H, W]` pooling keeps an i32 index.
//!
//! The windows do not overlap, so the backward step [`max_unpool`] writes every position of a
//! window, the gradient at the winner and 0 at the three others, into `∂y` laid out as the
//! convolution's backward products read it ([`crate::lane_conv::Padded`], padded by
//! [`crate::lane_conv::grad_padding`]). Only the padding and an odd last row or column are
//! left to the buffer's zeros.

use rayon::prelude::*;

use crate::lane_conv::Padded;
use crate::pool::{kept_if, relu, take_if_wins};

/// The pooled positions `[H/2, W/2, C, B]` and each output's window corner (0 top left, 1 top
/// right, 2 bottom left, 3 bottom right; -1 where the output is 0), from `y` `[H, W, C, B]`
/// (`dims`) and `bias` `[C]`. An odd last row or column is dropped.
///
/// # Panics
/// If `y` or `bias` do not match `dims` (callers' bugs).
pub fn bias_relu_max_pool(y: &[f32], dims: [usize; 4], bias: &[f32]) -> (Vec<f32>, Vec<i8>) {
    let [height, width, channels, batch] = dims;
    assert_eq!(
        y.len(),
        height * width * channels * batch,
        "bias_relu_max_pool: y is H x W x C x B"
    );
    assert_eq!(
        bias.len(),
        channels,
        "bias_relu_max_pool: one bias per channel"
    );
    let (rows, cols, lanes) = (height / 2, width / 2, channels * batch);
    let mut values = vec![0.0f32; rows * cols * lanes];
    let mut corners = vec![0i8; values.len()];
    if values.is_empty() {
        return (values, corners);
    }
    let row_of_values = |(i, (values, corners)): (usize, (&mut [f32], &mut [i8]))| {
        for j in 0..cols {
            let top = (2 * i * width + 2 * j) * lanes;
            let bottom = top + width * lanes;
            for (c, &b) in bias.iter().enumerate() {
                let run = |at: usize| &y[at + c * batch..at + (c + 1) * batch];
                let out = (j * channels + c) * batch..(j * channels + c + 1) * batch;
                pool_lanes(
                    [run(top), run(top + lanes), run(bottom), run(bottom + lanes)],
                    b,
                    &mut values[out.clone()],
                    &mut corners[out],
                );
            }
        }
    };
    values
        .par_chunks_mut(cols * lanes)
        .zip(corners.par_chunks_mut(cols * lanes))
        .enumerate()
        .for_each(row_of_values);
    (values, corners)
}

crate::dispatched! {
    /// One channel of one window, lane by lane: the largest of the four candidates through
    /// `relu(x + bias)`, and its corner (-1 where it is 0).
    fn pool_lanes(candidates: [&[f32]; 4], bias: f32, values: &mut [f32], corners: &mut [i8]) {
        let n = values.len();
        let [first, rest @ ..] = candidates.map(|c| &c[..n]);
        let corners = &mut corners[..n];
        for l in 0..n {
            let (mut best, mut at) = (relu(first[l] + bias), 0u32);
            for (k, candidate) in rest.iter().enumerate() {
                (best, at) = take_if_wins(best, at, relu(candidate[l] + bias), k as u32 + 1);
            }
            values[l] = best;
            corners[l] = at as i8 | -((best == 0.0) as i8);
        }
    }
}

/// The backward step of [`bias_relu_max_pool`]: `∂y` `[H + 2·pad, W + 2·pad, C, B]`, each
/// output's gradient `grad` `[H/2, W/2, C, B]` at its window's corner and 0 elsewhere (padding
/// included), and the gradient passed on per channel (the bias's), for `y` of `dims` `[H, W, C,
/// B]`. Deterministic: each output row's sums are taken in order, then the rows in order.
///
/// # Panics
/// If the lengths do not match `dims` or a corner is not one [`bias_relu_max_pool`] gives
/// (callers' bugs).
pub fn max_unpool(
    grad: &[f32],
    corners: &[i8],
    dims: [usize; 4],
    pad: usize,
) -> (Padded, Vec<f32>) {
    let [height, width, channels, batch] = dims;
    let (rows, cols, lanes) = (height / 2, width / 2, channels * batch);
    assert_eq!(
        grad.len(),
        rows * cols * lanes,
        "max_unpool: grad is H/2 x W/2 x C x B"
    );
    assert_eq!(
        corners.len(),
        grad.len(),
        "max_unpool: one corner per output"
    );
    let padded_width = width + 2 * pad;
    let row_len = padded_width * lanes;
    let mut dy = vec![0.0f32; (height + 2 * pad) * row_len];
    let mut bias_grad = vec![0.0f32; channels];
    if !grad.is_empty() {
        let window_row = |(i, pair): (usize, &mut [f32])| {
            let (top, bottom) = pair.split_at_mut(row_len);
            let mut sums = vec![0.0f32; channels];
            for j in 0..cols {
                let at = (pad + 2 * j) * lanes;
                let (top_left, top_right) = top[at..at + 2 * lanes].split_at_mut(lanes);
                let (bottom_left, bottom_right) = bottom[at..at + 2 * lanes].split_at_mut(lanes);
                for (c, sum) in sums.iter_mut().enumerate() {
                    let run = c * batch..(c + 1) * batch;
                    let output = (i * cols + j) * lanes + c * batch;
                    let output = output..output + batch;
                    unpool_lanes(
                        &grad[output.clone()],
                        &corners[output],
                        [
                            &mut top_left[run.clone()],
                            &mut top_right[run.clone()],
                            &mut bottom_left[run.clone()],
                            &mut bottom_right[run],
                        ],
                        sum,
                    );
                }
            }
            sums
        };
        let by_row: Vec<Vec<f32>> = dy[pad * row_len..]
            .par_chunks_mut(2 * row_len)
            .take(rows)
            .enumerate()
            .map(window_row)
            .collect();
        for sums in &by_row {
            for (b, s) in bias_grad.iter_mut().zip(sums) {
                *b += s;
            }
        }
    }
    let dims = [height + 2 * pad, padded_width, channels, batch];
    (Padded::from_positions(dy, dims), bias_grad)
}

/// Lanes summed by separate accumulators in [`unpool_lanes`], so that the sum vectorises.
const SUM_LANES: usize = 8;

crate::dispatched! {
    /// One channel of one window: each lane's gradient into the slot of its corner, 0 into
    /// the three others (bitwise selects, no branch on the data); `sum` gets the gradients
    /// passed on, lane `l` summed in accumulator `l % SUM_LANES`.
    fn unpool_lanes(grad: &[f32], corners: &[i8], slots: [&mut [f32]; 4], sum: &mut f32) {
        let n = grad.len();
        let corners = &corners[..n];
        for (k, slot) in slots.into_iter().enumerate() {
            for (s, (&g, &corner)) in slot[..n].iter_mut().zip(grad.iter().zip(corners)) {
                *s = kept_if(g, corner == k as i8);
            }
        }
        let mut partial = [0.0f32; SUM_LANES];
        for (grad, corners) in grad.chunks(SUM_LANES).zip(corners.chunks(SUM_LANES)) {
            for (p, (&g, &corner)) in partial.iter_mut().zip(grad.iter().zip(corners)) {
                *p += kept_if(g, corner >= 0);
            }
        }
        *sum += partial.iter().sum::<f32>();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lane_conv::{from_positions, to_positions};
    use crate::pool;
    use proptest::prelude::*;

    #[test]
    fn a_window_worked_by_hand() {
        // one 2x2 window, 2 channels, 3 lanes; biases -1 and 0.5
        // channel 0 lanes: [1, 5, 2], [3, 5, 0], [0, 0, 0], [0, 6, 1] -> relu(x - 1)
        // channel 1 lanes: [-1, 0, 2], [-2, 0, -9], [-3, 1, 2], [-1, 0, 2]
        #[rustfmt::skip]
        let y = [
            1.0, 5.0, 2.0, -1.0, 0.0, 2.0, // (0, 0)
            3.0, 5.0, 0.0, -2.0, 0.0, -9.0, // (0, 1)
            0.0, 0.0, 0.0, -3.0, 1.0, 2.0, // (1, 0)
            0.0, 6.0, 1.0, -1.0, 0.0, 2.0, // (1, 1)
        ];
        let (values, corners) = bias_relu_max_pool(&y, [2, 2, 2, 3], &[-1.0, 0.5]);
        // channel 0: lane 0 max(0, 2, 0, 0) = 2 top right; lane 1 max(4, 4, 0, 5) = 5 bottom
        // right; lane 2 max(1, 0, 0, 0) = 1 top left
        // channel 1: lane 0 all below -0.5: 0, no gradient; lane 1 max(.5, .5, 1.5, .5) bottom
        // left; lane 2 max(2.5, 0, 2.5, 2.5) = 2.5, the first (top left)
        assert_eq!(values, [2.0, 5.0, 1.0, 0.0, 1.5, 2.5]);
        assert_eq!(corners, [1, 3, 0, -1, 2, 0]);
        let grad = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0];
        let (dy, bias_grad) = max_unpool(&grad, &corners, [2, 2, 2, 3], 1);
        let dy = dy.positions();
        assert_eq!([dy.height, dy.width, dy.channels, dy.batch], [4, 4, 2, 3]);
        let mut want = vec![0.0f32; 4 * 4 * 6];
        let at = |i: usize, j: usize, lane: usize| (i * 4 + j) * 6 + lane;
        want[at(1, 2, 0)] = 10.0; // top right
        want[at(2, 2, 1)] = 20.0; // bottom right
        want[at(1, 1, 2)] = 30.0; // top left
        want[at(2, 1, 4)] = 50.0; // channel 1, lane 1, bottom left
        want[at(1, 1, 5)] = 60.0;
        assert_eq!(dy.data, want);
        assert_eq!(bias_grad, [60.0, 110.0]);
    }

    proptest! {
        /// Against [`crate::pool`]'s `[B, C, H, W]` pooling of the same images: the same values
        /// bit for bit, the same winners, the same gradient scattered.
        #[test]
        fn equals_the_pooling_of_the_images(
            batch in prop_oneof![Just(1usize), 2usize..5, Just(17)],
            channels in 1usize..4,
            height in 1usize..8,
            width in 1usize..8,
            pad in 0usize..3,
            seed in any::<u64>(),
        ) {
            let planes = batch * channels;
            // halves and NaNs: sums with the bias tie, cross zero and land on it
            let draw = |i: u64| {
                let h = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
                if h == 63 { f32::NAN } else { h as f32 / 2.0 - 16.0 }
            };
            let images: Vec<f32> = (0..(planes * height * width) as u64).map(draw).collect();
            let bias: Vec<f32> = (0..channels as u64).map(|c| draw((c + 1) << 40) / 4.0).collect();
            let (rows, cols) = (height / 2, width / 2);
            let n = planes * rows * cols;
            let (mut want, mut indices) = (vec![0.0; n], vec![0; n]);
            pool::bias_relu_max_pool_2x2(&images, planes, height, width, &bias, &mut want, &mut indices);

            let y = to_positions(&images, [batch, channels, height, width], 0);
            let (values, corners) = bias_relu_max_pool(&y, [height, width, channels, batch], &bias);
            let values = from_positions(&values, [rows, cols, channels, batch]);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&values), bits(&want));

            let grad: Vec<f32> = (0..n as u64).map(|k| draw((k + 1) << 50)).collect();
            let (mut dx, mut sums) = (vec![0.0; planes * height * width], vec![0.0; planes]);
            pool::max_unpool_2x2(&grad, &indices, planes, height, width, &mut dx, &mut sums);
            let grad = to_positions(&grad, [batch, channels, rows, cols], 0);
            let (dy, bias_grad) = max_unpool(&grad, &corners, [height, width, channels, batch], pad);
            let want_dy = to_positions(&dx, [batch, channels, height, width], pad);
            prop_assert_eq!(bits(dy.positions().data), bits(&want_dy));
            for (c, &got) in bias_grad.iter().enumerate() {
                let want: f32 = sums.iter().skip(c).step_by(channels).sum();
                // the same terms (halves up to 16 in magnitude: exact in f32) in another order
                prop_assert!(got == want || (got.is_nan() && want.is_nan()), "{got} {want}");
            }
        }
    }
}
