//! A stride-1 convolution over its kernel's non-zeros with the batch innermost: images laid
//! out by position (`[H, W, C, B]`, "position-major"), so that every output position is one
//! CSR row product of [`crate::csr`] and its `B` lanes stay in registers.
//!
//! With the input zero-padded to `[Hp, Wp, C, B]` (`Hp = H + 2q`, `Wp = W + 2q`) and a kernel
//! `W[o, c, ky, kx]`, the forward product at output position `(i, j)` is
//!
//! ```text
//! y[i, j, o, :] = Σ_{stored (o, c, ky, kx)} W[o, c, ky, kx] · x[i + ky, j + kx, c, :]
//! ```
//!
//! and `x[i + ky, j + kx, c]` is row `(i·Wp + j)·C + (ky·Wp + kx)·C + c` of the input seen as a
//! `[Hp·Wp·C, B]` matrix. So each position is the CSR product of the kernel's taps (column
//! `(ky·Wp + kx)·C + c`, [`taps`]) with that matrix shifted down by `(i·Wp + j)·C` rows: the
//! same register-blocked row sums as the linear layer's sparse product, each stored weight
//! costing one multiply-add per lane and a zero weight nothing. The window of input rows a
//! position reads (`C·k²` rows of `B` lanes) is reused by every output channel at that
//! position, and a neighbouring position shares most of it.
//!
//! The input gradient is the same product with the kernel flipped and its channels swapped
//! ([`flipped_taps`]) over `∂y` padded by `k − 1 − q`, and the kernel gradient at the
//! non-zeros sums, over positions, the dot products of `∂y[i, j, o, :]` with the input rows
//! the tap reads ([`tap_gradients`]). Where SparseProp (Nikdan et al., 2023) vectorises over
//! the batch with images `[C, H, W, B]`, position-major keeps a position's window of all
//! channels together.
//!
//! [`forward`] and [`backward`] take and give burn's `[B, C, H, W]`, converting with
//! [`to_positions`] and [`from_positions`] (tiled as [`crate::csr::transpose`]);
//! [`forward_positions`] and [`backward_positions`] leave `y` and `∂y` position-major, for a
//! pooling that reads and writes them there ([`crate::lane_pool`]).

use rayon::prelude::*;

use crate::csr::{Csr, TILE, scaled_row_sums, transpose_into};
use crate::im2col::ConvShape;
use crate::kernel::SUM_LANES;

/// Below this many multiply-adds a product runs on the calling thread (the hand-off to
/// rayon's pool costs about what it saves).
const PARALLEL_WORK: usize = 1 << 20;

/// The kernel's taps as columns of a position-major padded input `width` wide with
/// `channels` channels: the entry `W[o, c, ky, kx]` of `w` (a CSR of `[O, C·k²]`, column
/// `(c·k + ky)·k + kx`, PyTorch's order) at column `(ky·width + kx)·channels + c`. Entries keep
/// `w`'s order, so a per-entry result (the kernel gradient) lines up with `w.values`.
pub fn taps(w: &Csr, kernel: usize, channels: usize, width: usize) -> Csr {
    let k2 = kernel * kernel;
    let col_indices = w
        .col_indices
        .iter()
        .map(|&col| {
            let col = col as usize;
            let (c, ky, kx) = (col / k2, col % k2 / kernel, col % kernel);
            ((ky * width + kx) * channels + c) as u32
        })
        .collect();
    Csr {
        rows: w.rows,
        cols: width * kernel * channels,
        row_offsets: w.row_offsets.clone(),
        col_indices,
        values: w.values.clone(),
    }
}

/// The taps of the input gradient: one row per input channel `c`, holding `W[o, c, ky, kx]`
/// at column `((k−1−ky)·width + (k−1−kx))·O + o` of a position-major `∂y` (padded by `k − 1 −
/// q`) `width` wide: the kernel flipped, its channels swapped.
pub fn flipped_taps(w: &Csr, kernel: usize, channels: usize, width: usize) -> Csr {
    let k2 = kernel * kernel;
    let by_tap = w.transposed(); // row (c·k + ky)·k + kx lists the o with a stored weight
    let outputs = w.rows;
    let mut row_offsets = Vec::with_capacity(channels + 1);
    let mut col_indices = Vec::with_capacity(w.nnz());
    let mut values = Vec::with_capacity(w.nnz());
    row_offsets.push(0u32);
    for c in 0..channels {
        for tap in 0..k2 {
            let (ky, kx) = (tap / kernel, tap % kernel);
            let shift = ((kernel - 1 - ky) * width + (kernel - 1 - kx)) * outputs;
            let row = c * k2 + tap;
            let range = by_tap.row_offsets[row] as usize..by_tap.row_offsets[row + 1] as usize;
            for k in range {
                col_indices.push((shift + by_tap.col_indices[k] as usize) as u32);
                values.push(by_tap.values[k]);
            }
        }
        row_offsets.push(col_indices.len() as u32);
    }
    Csr {
        rows: channels,
        cols: width * kernel * outputs,
        row_offsets,
        col_indices,
        values,
    }
}

/// A position-major batch of images, `[height, width, channels, batch]` row-major.
#[derive(Debug, Clone, Copy)]
pub struct Positions<'a> {
    /// The values.
    pub data: &'a [f32],
    /// Rows of each image (padding included).
    pub height: usize,
    /// Columns of each image (padding included).
    pub width: usize,
    /// Channels at each position.
    pub channels: usize,
    /// Images.
    pub batch: usize,
}

/// Images `[B, C, H, W]` laid out position-major and zero-padded ([`to_positions`]): what the
/// backward products keep of a forward input, and the padded `∂y` they read.
#[derive(Debug, Clone)]
pub struct Padded {
    data: Vec<f32>,
    height: usize,
    width: usize,
    channels: usize,
    batch: usize,
}

impl Padded {
    /// Images `x` `[B, C, H, W]` padded by `pad` zeros on every side.
    pub fn new(x: &[f32], [batch, channels, height, width]: [usize; 4], pad: usize) -> Self {
        Self {
            data: to_positions(x, [batch, channels, height, width], pad),
            height: height + 2 * pad,
            width: width + 2 * pad,
            channels,
            batch,
        }
    }

    /// Position-major `data` `[height, width, channels, batch]`, its padding (zeros) included.
    ///
    /// # Panics
    /// If the length does not match the shape (a caller's bug).
    pub fn from_positions(data: Vec<f32>, [height, width, channels, batch]: [usize; 4]) -> Self {
        let padded = Self {
            data,
            height,
            width,
            channels,
            batch,
        };
        padded.positions().check();
        padded
    }

    /// The products' view of them.
    pub fn positions(&self) -> Positions<'_> {
        Positions {
            data: &self.data,
            height: self.height,
            width: self.width,
            channels: self.channels,
            batch: self.batch,
        }
    }
}

impl Positions<'_> {
    /// The offset of position `(i, j)`'s first value.
    pub(crate) fn at(&self, i: usize, j: usize) -> usize {
        (i * self.width + j) * self.channels * self.batch
    }

    pub(crate) fn check(&self) {
        assert_eq!(
            self.data.len(),
            self.height * self.width * self.channels * self.batch,
            "position-major images: data is height x width x channels x batch"
        );
    }
}

/// `y[i, j, r, :] = Σ taps[r, col] · x[(i·Wp + j)·C + col, :]` for every output position
/// `(i, j)` of an `[out_height, out_width]` grid (`y` `[out_height, out_width, taps.rows,
/// batch]`): the forward product with [`taps`], the input gradient with [`flipped_taps`].
///
/// # Panics
/// If the lengths do not match the shapes or a tap reads past the input (callers' bugs).
pub fn correlate(taps: &Csr, x: Positions, out_height: usize, out_width: usize, y: &mut [f32]) {
    x.check();
    let (rows, batch) = (taps.rows, x.batch);
    assert_eq!(
        y.len(),
        out_height * out_width * rows * batch,
        "correlate: y is out_height x out_width x rows x batch"
    );
    if y.is_empty() {
        return;
    }
    let position = |(p, out): (usize, &mut [f32])| {
        let at = x.at(p / out_width, p % out_width);
        scaled_row_sums(
            &taps.values,
            &taps.col_indices,
            &taps.row_offsets,
            &x.data[at..],
            batch,
            0..batch,
            None,
            out,
        );
    };
    if taps.nnz() * batch * out_height * out_width < PARALLEL_WORK {
        y.chunks_mut(rows * batch).enumerate().for_each(position);
    } else {
        y.par_chunks_mut(rows * batch)
            .enumerate()
            .for_each(position);
    }
}

/// The kernel gradient at the stored taps: for entry `k` at `(r, col_k)` of `taps`,
/// `out[k] = Σ_{i, j} dy[i, j, r, :] · x[(i·Wp + j)·C + col_k, :]`, with `dy` the output gradient
/// `[out_height, out_width, taps.rows, batch]` seen from `dy_offset` rows and columns in (its
/// padding, when it is the padded input of the input-gradient product).
///
/// # Panics
/// If the lengths do not match the shapes or a tap reads past the input (callers' bugs).
pub fn tap_gradients(taps: &Csr, x: Positions, dy: Positions, dy_offset: usize, out: &mut [f32]) {
    x.check();
    dy.check();
    assert_eq!(
        out.len(),
        taps.nnz(),
        "tap_gradients: one output per stored tap"
    );
    assert_eq!(
        dy.channels, taps.rows,
        "tap_gradients: dy has one channel per row"
    );
    assert_eq!(dy.batch, x.batch, "tap_gradients: one batch");
    let (out_height, out_width) = (dy.height - 2 * dy_offset, dy.width - 2 * dy_offset);
    let batch = x.batch;
    // a task per few output channels, each summing its taps over every position
    const ROWS_PER_TASK: usize = 4;
    let tasks = taps.entries_by_rows(out, ROWS_PER_TASK);
    let task = |(rows, piece): (std::ops::Range<usize>, &mut [f32])| {
        let (first, last) = (rows.start, rows.end);
        let offsets = &taps.row_offsets[first..=last];
        let entries = offsets[0] as usize..offsets[last - first] as usize;
        let cols = &taps.col_indices[entries];
        let mut partial = vec![[0.0f32; SUM_LANES]; piece.len()];
        for i in 0..out_height {
            for j in 0..out_width {
                let g = dy.at(i + dy_offset, j + dy_offset) + first * batch;
                let g = &dy.data[g..g + (last - first) * batch];
                let at = x.at(i, j);
                accumulate_dots(offsets, cols, g, &x.data[at..], batch, &mut partial);
            }
        }
        for (o, lanes) in piece.iter_mut().zip(&partial) {
            *o = lanes.iter().sum();
        }
    };
    if taps.nnz() * batch * out_height * out_width < PARALLEL_WORK {
        tasks.into_iter().for_each(task);
    } else {
        tasks.into_par_iter().for_each(task);
    }
}

crate::dispatched! {
    /// `partial[k] += a[r, :]·b[cols[k], :]` lane-wise (`SUM_LANES` partial sums, reduced by
    /// the caller), for the rows `r` of this chunk (`offsets` absolute, `cols` and `partial`
    /// the chunk's entries, `a` its rows `[rows, batch]`).
    fn accumulate_dots(
        offsets: &[u32],
        cols: &[u32],
        a: &[f32],
        b: &[f32],
        batch: usize,
        partial: &mut [[f32; SUM_LANES]]
    ) {
        let base = offsets[0] as usize;
        for r in 0..offsets.len() - 1 {
            let a = &a[r * batch..(r + 1) * batch];
            let range = offsets[r] as usize - base..offsets[r + 1] as usize - base;
            for (lanes, &c) in partial[range.clone()].iter_mut().zip(&cols[range]) {
                let b = &b[c as usize * batch..(c as usize + 1) * batch];
                let (a_chunks, b_chunks) = (a.chunks_exact(SUM_LANES), b.chunks_exact(SUM_LANES));
                for (lane, (x, y)) in a_chunks.remainder().iter().zip(b_chunks.remainder()).enumerate() {
                    lanes[lane] += x * y;
                }
                for (x, y) in a_chunks.zip(b_chunks) {
                    for lane in 0..SUM_LANES {
                        lanes[lane] += x[lane] * y[lane];
                    }
                }
            }
        }
    }
}

/// Whether a convolution of `shape` runs through lanes: stride 1, padding below the kernel's
/// side (the input gradient pads `∂y` by `k − 1 − q`), and some output.
pub fn supports(shape: &ConvShape) -> bool {
    let (ho, wo) = shape.output_size();
    shape.stride == 1 && shape.padding < shape.kernel && ho > 0 && wo > 0 && shape.batch > 0
}

/// Kernel taps per output channel (`C·k²`) from which lanes beat the direct products of
/// [`crate::sparse_conv`]: below it the layout conversions of `y` and `∂y` cost more than the
/// products save. `cargo bench -p pdecay-burn --bench sparse_conv` at 90% zeros: the CNN's
/// conv1 (1 channel, 9 taps, 28x28) 0.59x dense time through lanes against 0.36x directly;
/// 144 taps and more (the CNN's conv2, ResNet-20's stages) 0.17-0.32x through lanes against
/// 0.38-1.0x directly.
pub const LANES_FROM_TAPS: usize = 32;

/// Whether a convolution of `shape` should run through lanes: [`supports`]ed, with at least
/// [`LANES_FROM_TAPS`] taps per output channel.
pub fn pays(shape: &ConvShape) -> bool {
    supports(shape) && shape.patch_rows() >= LANES_FROM_TAPS
}

/// What the backward products need of a forward one: the padded position-major input and the
/// forward taps.
#[derive(Debug, Clone)]
pub struct Saved {
    x: Padded,
    taps: Csr,
    shape: ConvShape,
}

/// The forward product of images `x` `[B, C, H, W]` with the kernel `w` (a CSR of `[O,
/// C·k²]`): `y` `[B, O, H', W']`, and what the backward products need.
///
/// # Panics
/// If `shape` is not [`supports`]ed or the lengths do not match it (callers' bugs).
pub fn forward(w: &Csr, x: &[f32], shape: &ConvShape) -> (Vec<f32>, Saved) {
    let (y, saved) = forward_positions(w, x, shape);
    let (ho, wo) = shape.output_size();
    (from_positions(&y, [ho, wo, w.rows, shape.batch]), saved)
}

/// [`forward`] with `y` left position-major, `[H', W', O, B]`: for a consumer that reads that
/// layout (the pooling of [`crate::lane_pool`]).
///
/// # Panics
/// As [`forward`].
pub fn forward_positions(w: &Csr, x: &[f32], shape: &ConvShape) -> (Vec<f32>, Saved) {
    assert!(
        supports(shape),
        "lane_conv: stride 1 and padding < kernel only"
    );
    let s = shape;
    let x = Padded::new(x, [s.batch, s.channels, s.height, s.width], s.padding);
    let taps = taps(w, s.kernel, s.channels, s.width + 2 * s.padding);
    let saved = Saved {
        x,
        taps,
        shape: *shape,
    };
    let (ho, wo) = s.output_size();
    let mut y = vec![0.0f32; ho * wo * w.rows * s.batch];
    correlate(&saved.taps, saved.x.positions(), ho, wo, &mut y);
    (y, saved)
}

/// The padding of `∂y` that the input gradient's product reads (`k − 1 − q`, the kernel
/// flipped): [`backward_positions`] takes `∂y` padded by it.
pub fn grad_padding(shape: &ConvShape) -> usize {
    shape.kernel - 1 - shape.padding
}

/// The input gradient `∂x` `[B, C, H, W]` (when asked) and the kernel gradient at `w`'s stored
/// weights (in `w`'s order), from the output gradient `dy` `[B, O, H', W']`.
///
/// # Panics
/// If the lengths do not match the forward product's shapes (callers' bugs).
pub fn backward(
    w: &Csr,
    saved: &Saved,
    dy: &[f32],
    with_x_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let s = &saved.shape;
    let (ho, wo) = s.output_size();
    let dy = Padded::new(dy, [s.batch, w.rows, ho, wo], grad_padding(s));
    backward_positions(w, saved, &dy, with_x_grad)
}

/// [`backward`] from `dy` already position-major and padded by [`grad_padding`] (as the
/// backward step of [`crate::lane_pool`] writes it).
///
/// # Panics
/// As [`backward`].
pub fn backward_positions(
    w: &Csr,
    saved: &Saved,
    dy: &Padded,
    with_x_grad: bool,
) -> (Option<Vec<f32>>, Vec<f32>) {
    let s = &saved.shape;
    let pad = grad_padding(s);
    let dy = dy.positions();
    let (ho, wo) = s.output_size();
    assert_eq!(
        [dy.height, dy.width, dy.channels, dy.batch],
        [ho + 2 * pad, wo + 2 * pad, w.rows, s.batch],
        "lane_conv: dy is the output's shape, padded"
    );
    let dx = with_x_grad.then(|| {
        let flipped = flipped_taps(w, s.kernel, s.channels, dy.width);
        let mut dx = vec![0.0f32; s.height * s.width * s.channels * s.batch];
        correlate(&flipped, dy, s.height, s.width, &mut dx);
        from_positions(&dx, [s.height, s.width, s.channels, s.batch])
    });
    let mut dw = vec![0.0f32; w.nnz()];
    tap_gradients(&saved.taps, saved.x.positions(), dy, pad, &mut dw);
    (dx, dw)
}

/// Images `[B, C, H, W]` as position-major `[H + 2·pad, W + 2·pad, C, B]`, zero around.
pub fn to_positions(
    x: &[f32],
    [batch, channels, height, width]: [usize; 4],
    pad: usize,
) -> Vec<f32> {
    assert_eq!(
        x.len(),
        batch * channels * height * width,
        "to_positions: x is B x C x H x W"
    );
    let (hp, wp) = (height + 2 * pad, width + 2 * pad);
    let row = wp * channels * batch; // one padded image row of positions
    let mut out = vec![0.0f32; hp * row];
    if out.is_empty() {
        return out;
    }
    let plane = height * width;
    out.par_chunks_mut(row)
        .skip(pad)
        .take(height)
        .enumerate()
        .for_each(|(h, dst)| {
            for c in 0..channels {
                // the [B, W] block of channel c, row h (image stride C·H·W) into the row's
                // positions (stride C·B), lanes from c·B
                transpose_into(
                    &x[c * plane + h * width..],
                    channels * plane,
                    &mut dst[pad * channels * batch + c * batch..],
                    channels * batch,
                    batch,
                    width,
                );
            }
        });
    out
}

/// Position-major `[H, W, C, B]` (no padding) as images `[B, C, H, W]`.
pub fn from_positions(x: &[f32], [height, width, channels, batch]: [usize; 4]) -> Vec<f32> {
    assert_eq!(
        x.len(),
        batch * channels * height * width,
        "from_positions: x is H x W x C x B"
    );
    let (plane, image) = (height * width, channels * height * width);
    let mut out = vec![0.0f32; x.len()];
    if out.is_empty() {
        return out;
    }
    // a task per TILE images, writing only theirs
    out.par_chunks_mut(TILE * image)
        .enumerate()
        .for_each(|(chunk, dst)| {
            let (first, count) = (chunk * TILE, dst.len() / image);
            for c in 0..channels {
                // the [H·W, count] block of channel c's lanes (position stride C·B) into
                // the images' plane c (image stride C·H·W)
                transpose_into(
                    &x[c * batch + first..],
                    channels * batch,
                    &mut dst[c * plane..],
                    image,
                    plane,
                    count,
                );
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sparse_conv;
    use crate::test_support::{assert_close, uniforms};
    use proptest::prelude::*;

    /// The three products through position-major layouts, back in `[B, C, H, W]` order and
    /// the kernel gradient per stored weight.
    fn by_lanes(w: &Csr, x: &[f32], dy: &[f32], s: &ConvShape) -> [Vec<f32>; 3] {
        let (y, saved) = forward(w, x, s);
        let (dx, dw) = backward(w, &saved, dy, true);
        [y, dx.unwrap(), dw]
    }

    #[test]
    fn a_single_tap_shifts_each_image_as_worked_by_hand() {
        // two single-channel 3x3 images, a 3x3 kernel with only W[0, 0, 0, 2] = 2 (the row
        // above, the column to the right), padding 1: y[i, j] = 2·x[i − 1, j + 1], zero where
        // that is outside the image
        let s = ConvShape {
            batch: 2,
            channels: 1,
            height: 3,
            width: 3,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let mut dense = vec![0.0f32; 9];
        dense[2] = 2.0;
        let w = Csr::nonzeros(&dense, 1, 9);
        let x: Vec<f32> = (1..=18).map(|v| v as f32).collect(); // image 0: 1..9, image 1: 10..18
        let dy = vec![1.0f32; 18];
        let [y, dx, dw] = by_lanes(&w, &x, &dy, &s);
        #[rustfmt::skip]
        let expected = [
            0.0, 0.0, 0.0,
            4.0, 6.0, 0.0,
            10.0, 12.0, 0.0,
        ];
        assert_eq!(&y[..9], expected);
        assert_eq!(
            &y[9..],
            expected.map(|v| if v == 0.0 { 0.0 } else { v + 18.0 })
        );
        // x[a, b] feeds y[a + 1, b − 1]: every input with a < 2 and b > 0 gets 2
        #[rustfmt::skip]
        let dx_image = [
            0.0, 2.0, 2.0,
            0.0, 2.0, 2.0,
            0.0, 0.0, 0.0,
        ];
        assert_eq!(&dx[..9], dx_image);
        assert_eq!(&dx[9..], dx_image);
        // ∂W = Σ over both images of the inputs that reached an output: 2+3+5+6, 11+12+14+15
        assert_eq!(dw, vec![16.0 + 52.0]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn lane_products_equal_the_direct_products(
            batch in prop_oneof![Just(1usize), 2usize..5, Just(33), Just(130)],
            channels in 1usize..4,
            outputs in 1usize..5,
            height in 1usize..7,
            width in 1usize..7,
            (kernel, padding) in prop_oneof![Just((1usize, 0usize)), Just((3, 1)), Just((3, 0)), Just((3, 2)), Just((5, 2))],
            zeros in prop_oneof![Just(0.0f64), Just(0.5), Just(0.9), Just(1.0)],
            seed in any::<u64>(),
        ) {
            let s = ConvShape { batch, channels, height, width, kernel, stride: 1, padding };
            let (ho, wo) = s.output_size();
            prop_assume!(ho > 0 && wo > 0);
            let mut next = uniforms(seed);
            let dense: Vec<f32> = (0..outputs * s.patch_rows())
                .map(|_| if (next() as f64) < zeros { 0.0 } else { next() - 0.5 })
                .collect();
            let w = Csr::nonzeros(&dense, outputs, s.patch_rows());
            let x: Vec<f32> = (0..batch * channels * height * width).map(|_| next() - 0.5).collect();
            let dy: Vec<f32> = (0..batch * outputs * ho * wo).map(|_| next() - 0.5).collect();

            let [y, dx, dw] = by_lanes(&w, &x, &dy, &s);
            let mut y_direct = vec![0.0; y.len()];
            sparse_conv::forward(&w, &x, &s, &mut y_direct);
            let mut dx_direct = vec![0.0; dx.len()];
            sparse_conv::input_grad(&w, &dy, &s, &mut dx_direct);
            let mut dw_direct = vec![0.0; dw.len()];
            sparse_conv::weight_grad(&w, &x, &dy, &s, &mut dw_direct);
            assert_close(&y, &y_direct, "y");
            assert_close(&dx, &dx_direct, "dx");
            assert_close(&dw, &dw_direct, "dw");
        }
    }
}
