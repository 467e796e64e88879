//! A 2-D convolution over its kernel's non-zeros, computed directly on the images (no patch
//! matrix): the forward product, the input gradient and the kernel gradient at the non-zeros.
//!
//! With images `x` `[B, C, H, W]`, a kernel stored as a CSR of its `[O, C·k²]` view (column
//! `(c·k + ky)·k + kx`, PyTorch's order), stride `s` and zero padding `q` (geometry:
//! [`ConvShape`]), every stored weight `w = W[o, c, ky, kx]` links input plane `c` to output
//! plane `o` shifted by `(ky − q, kx − q)`:
//!
//! ```text
//! y[b, o, i, j]   += w · x[b, c, i·s + ky − q, j·s + kx − q]        (forward)
//! ∂x[b, c, i·s + ky − q, j·s + kx − q] += w · ∂y[b, o, i, j]        (input gradient)
//! ∂W[o, c, ky, kx] = Σ_{b,i,j} ∂y[b, o, i, j] · x[b, c, i·s + ky − q, j·s + kx − q]
//! ```
//!
//! each over the output positions whose input position lies inside the image. A stored weight
//! costs `B·H'·W'` multiply-adds in each of the three, in runs along image rows, or, where those
//! rows are short, in one run per image over zero-padded planes (`Wide`); a zero weight costs
//! nothing, and unlike im2col no `[C·k², B·H'·W']` matrix is written and read back, which at
//! high sparsity cost more than the products. Work splits over rayon's pool by output plane
//! (forward), input plane (input gradient) and kernel row (kernel gradient), so every task
//! writes its own memory and the result does not depend on the thread count. Each task is
//! compiled for AVX2 and AVX-512 as well ([`crate::dispatched`]), and each kernel-gradient dot
//! product keeps 8 or 16 partial sums, so that it runs in vector registers.
//!
//! Over a CSR holding every entry ([`Csr::every_entry`]) the three are the dense convolution;
//! for a first layer's few taps that beats a patch matrix and gemm.

use rayon::prelude::*;

use crate::csr::Csr;
use crate::im2col::ConvShape;
use crate::kernel::SUM_LANES;

/// The output columns `j` (a range) whose input column `j·s + offset − q` lies in `0..size`,
/// for `out` output columns.
fn inside(out: usize, size: usize, offset: usize, shape: &ConvShape) -> std::ops::Range<usize> {
    let s = shape.stride.max(1);
    // j·s + offset ≥ q  ⇔  j ≥ ⌈(q − offset)/s⌉
    let first = shape.padding.saturating_sub(offset).div_ceil(s);
    // j·s + offset − q ≤ size − 1  ⇔  j ≤ ⌊(size − 1 + q − offset)/s⌋
    let last = (size + shape.padding)
        .checked_sub(offset + 1)
        .map_or(0, |d| d / s + 1);
    first.min(out)..last.min(out).max(first.min(out))
}

/// A stored weight's position: output channel, input channel, kernel row and column.
#[derive(Debug, Clone, Copy)]
struct Tap {
    output: usize,
    input: usize,
    ky: usize,
    kx: usize,
    weight: f32,
}

fn taps_of_row(w: &Csr, row: usize, k: usize) -> impl Iterator<Item = Tap> + '_ {
    let range = w.row_offsets[row] as usize..w.row_offsets[row + 1] as usize;
    w.col_indices[range.clone()]
        .iter()
        .zip(&w.values[range])
        .map(move |(&col, &weight)| {
            let col = col as usize;
            Tap {
                output: row,
                input: col / (k * k),
                ky: col / k % k,
                kx: col % k,
                weight,
            }
        })
}

/// `out[j] += w · src[j·s + base]` for `j` in `cols` (base = kx − q, as an offset that keeps
/// the indices non-negative over `cols`).
#[inline]
fn shifted_axpy(
    out: &mut [f32],
    src: &[f32],
    weight: f32,
    cols: std::ops::Range<usize>,
    s: usize,
    start: usize,
) {
    if s == 1 {
        let n = cols.len();
        for (o, x) in out[cols].iter_mut().zip(&src[start..start + n]) {
            *o += weight * x;
        }
    } else {
        for (k, o) in out[cols].iter_mut().enumerate() {
            *o += weight * src[start + k * s];
        }
    }
}

/// The forward convolution over `w`'s non-zeros: `y` `[B, O, H', W']` from `x` `[B, C, H, W]`
/// (`y` is overwritten).
///
/// # Panics
/// If the slices' lengths or `w`'s shape do not match `shape`.
pub fn forward(w: &Csr, x: &[f32], shape: &ConvShape, y: &mut [f32]) {
    let (ho, wo) = shape.output_size();
    check(w, x, y, shape);
    let out_plane = ho * wo;
    if out_plane == 0 {
        return;
    }
    if Wide::pays(shape, w) {
        return Wide::new(shape).forward(w, x, y);
    }
    y.par_chunks_mut(out_plane)
        .enumerate()
        .for_each(|(bo, out)| forward_plane(w, x, shape, bo, out));
}

crate::dispatched! {
    /// Output plane `bo = b·O + o` of [`forward`], row by row.
    fn forward_plane(w: &Csr, x: &[f32], shape: &ConvShape, bo: usize, out: &mut [f32]) {
        let ConvShape { channels, height, width, kernel: k, stride: s, padding: q, .. } = *shape;
        let (ho, wo) = shape.output_size();
        let plane = height * width;
        let (b, o) = (bo / w.rows.max(1), bo % w.rows.max(1));
        out.fill(0.0);
        for tap in taps_of_row(w, o, k) {
            let image = &x[(b * channels + tap.input) * plane..][..plane];
            let cols = inside(wo, width, tap.kx, shape);
            if cols.is_empty() {
                continue;
            }
            for i in inside(ho, height, tap.ky, shape) {
                let row = i * s + tap.ky - q;
                let start = cols.start * s + tap.kx - q;
                shifted_axpy(
                    &mut out[i * wo..(i + 1) * wo],
                    &image[row * width..(row + 1) * width],
                    tap.weight,
                    cols.clone(),
                    s,
                    start,
                );
            }
        }
    }
}

/// The input gradient `∂x` `[B, C, H, W]` (overwritten) from the output gradient `dy`
/// `[B, O, H', W']`, over `w`'s non-zeros.
///
/// # Panics
/// If the slices' lengths or `w`'s shape do not match `shape`.
pub fn input_grad(w: &Csr, dy: &[f32], shape: &ConvShape, dx: &mut [f32]) {
    let ConvShape {
        channels,
        height,
        width,
        kernel: k,
        ..
    } = *shape;
    check(w, dx, dy, shape);
    // the taps grouped by input channel, each group in output-channel order
    let mut by_input: Vec<Vec<Tap>> = vec![Vec::new(); channels];
    for row in 0..w.rows {
        for tap in taps_of_row(w, row, k) {
            by_input[tap.input].push(tap);
        }
    }
    let plane = height * width;
    if plane == 0 {
        return;
    }
    if Wide::pays(shape, w) {
        return Wide::new(shape).input_grad(&by_input, dy, w.rows, dx);
    }
    dx.par_chunks_mut(plane)
        .enumerate()
        .for_each(|(bc, image)| input_grad_plane(&by_input, w.rows, dy, shape, bc, image));
}

crate::dispatched! {
    /// Input plane `bc = b·C + c` of [`input_grad`] from the taps reading channel `c`.
    fn input_grad_plane(
        by_input: &[Vec<Tap>],
        outputs: usize,
        dy: &[f32],
        shape: &ConvShape,
        bc: usize,
        image: &mut [f32]
    ) {
        let ConvShape { channels, height, width, stride: s, padding: q, .. } = *shape;
        let (ho, wo) = shape.output_size();
        let out_plane = ho * wo;
        let (b, c) = (bc / channels.max(1), bc % channels.max(1));
        image.fill(0.0);
        for tap in &by_input[c] {
            let grad = &dy[(b * outputs + tap.output) * out_plane..][..out_plane];
            let cols = inside(wo, width, tap.kx, shape);
            if cols.is_empty() {
                continue;
            }
            for i in inside(ho, height, tap.ky, shape) {
                let row = &mut image[(i * s + tap.ky - q) * width..][..width];
                let from = &grad[i * wo..(i + 1) * wo];
                let start = cols.start * s + tap.kx - q;
                if s == 1 {
                    let n = cols.len();
                    for (d, g) in row[start..start + n].iter_mut().zip(&from[cols.clone()]) {
                        *d += tap.weight * g;
                    }
                } else {
                    for (n, j) in cols.clone().enumerate() {
                        row[start + n * s] += tap.weight * from[j];
                    }
                }
            }
        }
    }
}

/// The kernel gradient at `w`'s non-zeros, in `w`'s storage order (`out[n]` for the `n`-th
/// stored weight), from the input `x` and the output gradient `dy`.
///
/// # Panics
/// If the slices' lengths or `w`'s shape do not match `shape`.
pub fn weight_grad(w: &Csr, x: &[f32], dy: &[f32], shape: &ConvShape, out: &mut [f32]) {
    check(w, x, dy, shape);
    assert_eq!(
        out.len(),
        w.nnz(),
        "weight_grad: one value per stored weight"
    );
    if Wide::pays(shape, w) {
        return Wide::new(shape).weight_grad(w, x, dy, out);
    }
    // one task per output channel: its stored weights, contiguous in `out`
    split_by_row(w, out)
        .into_par_iter()
        .enumerate()
        .for_each(|(o, sums)| weight_grad_row(w, x, dy, shape, o, sums));
}

/// Partial sums of a row-by-row kernel-gradient dot product: output rows are 7 to 28 long
/// here, so 8 lanes leave short tails.
const ROW_DOT_LANES: usize = 8;

/// `partial[l] += a[n]·b[n]` for `n ≡ l` (mod `N`): a dot product's terms in `N` independent
/// sums, which the compiler keeps in vector registers (one running sum would make every add
/// wait on the one before, and floating-point order keeps the compiler from splitting it).
#[inline(always)]
fn add_products<const N: usize>(partial: &mut [f32; N], a: &[f32], b: &[f32]) {
    let (a_chunks, b_chunks) = (a.chunks_exact(N), b.chunks_exact(N));
    for (lane, (x, y)) in a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .enumerate()
    {
        partial[lane] += x * y;
    }
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..N {
            partial[lane] += x[lane] * y[lane];
        }
    }
}

crate::dispatched! {
    /// Row `o` of [`weight_grad`]: one dot product per stored weight, over every image and
    /// output row.
    fn weight_grad_row(
        w: &Csr,
        x: &[f32],
        dy: &[f32],
        shape: &ConvShape,
        o: usize,
        sums: &mut [f32]
    ) {
        let ConvShape { batch, channels, height, width, kernel: k, stride: s, padding: q } = *shape;
        let (ho, wo) = shape.output_size();
        let (plane, out_plane) = (height * width, ho * wo);
        for (tap, sum) in taps_of_row(w, o, k).zip(sums.iter_mut()) {
            let cols = inside(wo, width, tap.kx, shape);
            let mut partial = [0.0f32; ROW_DOT_LANES];
            if !cols.is_empty() {
                for b in 0..batch {
                    let image = &x[(b * channels + tap.input) * plane..][..plane];
                    let grad = &dy[(b * w.rows + o) * out_plane..][..out_plane];
                    for i in inside(ho, height, tap.ky, shape) {
                        let row = &image[(i * s + tap.ky - q) * width..][..width];
                        let from = &grad[i * wo..(i + 1) * wo];
                        let start = cols.start * s + tap.kx - q;
                        if s == 1 {
                            let n = cols.len();
                            add_products(&mut partial, &row[start..start + n], &from[cols.clone()]);
                        } else {
                            for (n, j) in cols.clone().enumerate() {
                                partial[n % ROW_DOT_LANES] += row[start + n * s] * from[j];
                            }
                        }
                    }
                }
            }
            *sum = partial.iter().sum();
        }
    }
}

/// Stride 1 on "wide" planes: each image padded by `q` on every side (rows of `Wp = W + 2q`),
/// and each output plane kept in rows of the same `Wp` (the last `Wp − W'` values of a row
/// unused, zero in a gradient). Then output position `n = i·Wp + j` reads padded input
/// position `n + ky·Wp + kx` for every tap, so a stored weight is one contiguous run of
/// `L = (H' − 1)·Wp + W'` multiply-adds per image instead of `H'` runs of `W'`: on 7- and
/// 14-wide planes the runs were too short to vectorise.
struct Wide {
    shape: ConvShape,
    /// Padded rows and columns (`Hp`, `Wp`).
    padded: (usize, usize),
    /// Output rows and columns (`H'`, `W'`).
    output: (usize, usize),
}

/// Output rows shorter than this run on [`Wide`] planes; longer ones vectorise well enough
/// row by row, where the wide path's padded copies cost more than they save (`cargo bench -p
/// pdecay-burn --bench sparse_conv`: on 28-wide planes rows took 0.31x dense time at 90%
/// zeros, wide planes 0.66x; on 14- and 7-wide planes wide took 0.58-0.94x, rows 0.76-1.71x).
const WIDE_BELOW: usize = 16;

/// Stored weights per input channel from which long output rows run on [`Wide`] planes too:
/// each padded copy of an input plane then serves that many runs. On the CNN's conv1 (28-wide,
/// one channel, 288 taps when dense) wide planes took 10-16 ms forward and backward where rows
/// took 19-20 at 0% zeros, 11-12 against 14 at 50%, about the same at 90% (29 taps), and 6-12
/// against 4-5 at 99% (`SPARSE_CONV_ONLY="cnn conv1"`, two rounds of 15 alternated runs).
const WIDE_FROM_TAPS: usize = 32;

impl Wide {
    /// Whether `shape` and `w` take the wide path: stride 1, some output, and short output
    /// rows or many stored weights per input channel.
    fn pays(shape: &ConvShape, w: &Csr) -> bool {
        let (ho, wo) = shape.output_size();
        let many_taps = w.nnz() >= WIDE_FROM_TAPS * shape.channels;
        shape.stride == 1 && ho > 0 && wo > 0 && (wo < WIDE_BELOW || many_taps)
    }

    fn new(shape: &ConvShape) -> Self {
        let q = shape.padding;
        Self {
            shape: *shape,
            padded: (shape.height + 2 * q, shape.width + 2 * q),
            output: shape.output_size(),
        }
    }

    /// The run length `L` and a tap's input offset `ky·Wp + kx`.
    fn run(&self) -> usize {
        let (ho, wo) = self.output;
        (ho - 1) * self.padded.1 + wo
    }

    fn offset(&self, tap: &Tap) -> usize {
        tap.ky * self.padded.1 + tap.kx
    }

    /// `[planes, H, W]` planes zero-padded to `[planes, Hp, Wp]`.
    fn pad(&self, x: &[f32]) -> Vec<f32> {
        let (h, w, q) = (self.shape.height, self.shape.width, self.shape.padding);
        let (hp, wp) = self.padded;
        let mut out = vec![0.0f32; x.len() / (h * w).max(1) * hp * wp];
        out.par_chunks_mut(hp * wp)
            .zip(x.par_chunks(h * w))
            .for_each(|(padded, plane)| {
                for (r, row) in plane.chunks_exact(w).enumerate() {
                    padded[(r + q) * wp + q..][..w].copy_from_slice(row);
                }
            });
        out
    }

    /// `[planes, H', W']` output planes in rows of `Wp` (the rest of each row zero).
    fn widen(&self, y: &[f32]) -> Vec<f32> {
        let (ho, wo) = self.output;
        let wp = self.padded.1;
        let mut out = vec![0.0f32; y.len() / (ho * wo).max(1) * ho * wp];
        out.par_chunks_mut(ho * wp)
            .zip(y.par_chunks(ho * wo))
            .for_each(|(wide, plane)| {
                for (r, row) in plane.chunks_exact(wo).enumerate() {
                    wide[r * wp..][..wo].copy_from_slice(row);
                }
            });
        out
    }

    fn forward(&self, w: &Csr, x: &[f32], y: &mut [f32]) {
        let padded = self.pad(x);
        y.par_chunks_mut(self.output.0 * self.output.1)
            .enumerate()
            .for_each(|(bo, out)| wide_forward_plane(self, w, &padded, bo, out));
    }

    fn input_grad(&self, by_input: &[Vec<Tap>], dy: &[f32], outputs: usize, dx: &mut [f32]) {
        let wide_dy = self.widen(dy);
        dx.par_chunks_mut(self.shape.height * self.shape.width)
            .enumerate()
            .for_each(|(bc, image)| {
                wide_input_grad_plane(self, by_input, &wide_dy, outputs, bc, image)
            });
    }

    fn weight_grad(&self, w: &Csr, x: &[f32], dy: &[f32], out: &mut [f32]) {
        let (padded, wide_dy) = (self.pad(x), self.widen(dy));
        split_by_row(w, out)
            .into_par_iter()
            .enumerate()
            .for_each(|(o, sums)| wide_weight_grad_row(self, w, &padded, &wide_dy, o, sums));
    }
}

crate::dispatched! {
    /// Output plane `bo = b·O + o` of [`Wide::forward`] from the padded input: one run per tap.
    fn wide_forward_plane(wide: &Wide, w: &Csr, padded: &[f32], bo: usize, out: &mut [f32]) {
        let (_, wo) = wide.output;
        let (hp, wp) = wide.padded;
        let (k, channels) = (wide.shape.kernel, wide.shape.channels);
        let (b, o) = (bo / w.rows.max(1), bo % w.rows.max(1));
        let mut sums = vec![0.0f32; wide.run()];
        for tap in taps_of_row(w, o, k) {
            let image = &padded[(b * channels + tap.input) * hp * wp..][..hp * wp];
            let from = &image[wide.offset(&tap)..][..sums.len()];
            for (o, x) in sums.iter_mut().zip(from) {
                *o += tap.weight * x;
            }
        }
        for (r, row) in out.chunks_exact_mut(wo).enumerate() {
            row.copy_from_slice(&sums[r * wp..][..wo]);
        }
    }
}

crate::dispatched! {
    /// Input plane `bc = b·C + c` of [`Wide::input_grad`] from the widened `∂y`.
    fn wide_input_grad_plane(
        wide: &Wide,
        by_input: &[Vec<Tap>],
        wide_dy: &[f32],
        outputs: usize,
        bc: usize,
        image: &mut [f32]
    ) {
        let (ho, _) = wide.output;
        let (hp, wp) = wide.padded;
        let (w, q, channels) = (wide.shape.width, wide.shape.padding, wide.shape.channels);
        let (b, c) = (bc / channels.max(1), bc % channels.max(1));
        let run = wide.run();
        let mut padded = vec![0.0f32; hp * wp];
        for tap in &by_input[c] {
            let grad = &wide_dy[(b * outputs + tap.output) * ho * wp..][..run];
            let into = &mut padded[wide.offset(tap)..][..run];
            for (d, g) in into.iter_mut().zip(grad) {
                *d += tap.weight * g;
            }
        }
        for (r, row) in image.chunks_exact_mut(w).enumerate() {
            row.copy_from_slice(&padded[(r + q) * wp + q..][..w]);
        }
    }
}

crate::dispatched! {
    /// Row `o` of [`Wide::weight_grad`]: one dot product of runs per stored weight and image.
    /// Images outermost: each image's gradient run is read once for all the row's taps (from
    /// L1), where a tap-by-tap pass read every one of them once per tap, from memory on the
    /// CNN's conv1 (128 images of 3.4 KB per output channel). Each tap's partial sums still
    /// take the images in order, so the sums are the same.
    fn wide_weight_grad_row(
        wide: &Wide,
        w: &Csr,
        padded: &[f32],
        wide_dy: &[f32],
        o: usize,
        sums: &mut [f32]
    ) {
        let (ho, _) = wide.output;
        let (hp, wp) = wide.padded;
        let (k, channels, batch) = (wide.shape.kernel, wide.shape.channels, wide.shape.batch);
        let run = wide.run();
        let taps: Vec<Tap> = taps_of_row(w, o, k).collect();
        let mut partials = vec![[0.0f32; SUM_LANES]; taps.len()];
        for b in 0..batch {
            let grad = &wide_dy[(b * w.rows + o) * ho * wp..][..run];
            for (tap, partial) in taps.iter().zip(partials.iter_mut()) {
                let image = &padded[(b * channels + tap.input) * hp * wp..][..hp * wp];
                add_products(partial, &image[wide.offset(tap)..][..run], grad);
            }
        }
        for (sum, partial) in sums.iter_mut().zip(&partials) {
            *sum = partial.iter().sum();
        }
    }
}

/// `out` (one value per stored weight of `w`) cut into each row's stored weights.
fn split_by_row<'a>(w: &Csr, out: &'a mut [f32]) -> Vec<&'a mut [f32]> {
    w.entries_by_rows(out, 1)
        .into_iter()
        .map(|(_, piece)| piece)
        .collect()
}

/// The lengths every product checks: `x` (or `dx`) `[B, C, H, W]`, `y` (or `dy`)
/// `[B, O, H', W']`, `w` a CSR of `[O, C·k²]`.
fn check(w: &Csr, images: &[f32], outputs: &[f32], shape: &ConvShape) {
    let (ho, wo) = shape.output_size();
    assert_eq!(
        images.len(),
        shape.batch * shape.channels * shape.height * shape.width,
        "sparse conv: the images are [batch, channels, height, width]"
    );
    assert_eq!(
        outputs.len(),
        shape.batch * w.rows * ho * wo,
        "sparse conv: the outputs are [batch, out channels, height', width']"
    );
    assert_eq!(
        w.cols,
        shape.patch_rows(),
        "sparse conv: the kernel is a CSR of [out channels, channels·kernel²]"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::im2col::{col2im, im2col};
    use proptest::prelude::*;

    /// The same three products through im2col and dense loops: the reference.
    fn by_patches(w: &Csr, x: &[f32], dy: &[f32], shape: &ConvShape) -> [Vec<f32>; 3] {
        let patches = im2col(x, shape);
        let n = shape.patch_cols();
        let (ho, wo) = shape.output_size();
        let positions = ho * wo;
        let dense = w.to_dense();
        let kk = shape.patch_rows();
        let mut y = vec![0.0f32; shape.batch * w.rows * positions];
        let mut dpatches = vec![0.0f32; kk * n];
        let mut dw = vec![0.0f32; w.rows * kk];
        for o in 0..w.rows {
            for r in 0..kk {
                let weight = dense[o * kk + r];
                for col in 0..n {
                    let (b, p) = (col / positions.max(1), col % positions.max(1));
                    let at = (b * w.rows + o) * positions + p;
                    y[at] += weight * patches[r * n + col];
                    dpatches[r * n + col] += weight * dy[at];
                    dw[o * kk + r] += dy[at] * patches[r * n + col];
                }
            }
        }
        let at_support = (0..w.rows)
            .flat_map(|o| {
                let range = w.row_offsets[o] as usize..w.row_offsets[o + 1] as usize;
                w.col_indices[range]
                    .iter()
                    .map(|&c| dw[o * kk + c as usize])
                    .collect::<Vec<_>>()
            })
            .collect();
        [y, col2im(&dpatches, shape), at_support]
    }

    #[test]
    fn a_single_tap_shifts_the_image_by_hand() {
        // one 3x3 image 1..9, one output channel with only W[0, 0, 0, 1] = 2 (the tap above
        // the centre), padding 1: y[i, j] = 2·x[i − 1, j]
        let shape = ConvShape {
            batch: 1,
            channels: 1,
            height: 3,
            width: 3,
            kernel: 3,
            stride: 1,
            padding: 1,
        };
        let mut dense = vec![0.0f32; 9];
        dense[1] = 2.0;
        let w = Csr::nonzeros(&dense, 1, 9);
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let mut y = vec![f32::NAN; 9];
        forward(&w, &x, &shape, &mut y);
        assert_eq!(y, [0.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        // ∂x[r, j] = 2·∂y[r + 1, j]; ∂W = Σ ∂y[i, j]·x[i − 1, j]
        let dy: Vec<f32> = (1..=9).map(|v| v as f32 / 10.0).collect();
        let mut dx = vec![f32::NAN; 9];
        input_grad(&w, &dy, &shape, &mut dx);
        let expected = [0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 0.0, 0.0, 0.0];
        assert!(
            dx.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6),
            "{dx:?}"
        );
        let mut dw = vec![f32::NAN; 1];
        weight_grad(&w, &x, &dy, &shape, &mut dw);
        let by_hand: f32 = (3..9).map(|i| dy[i] * x[i - 3]).sum();
        assert!((dw[0] - by_hand).abs() < 1e-5, "{dw:?} vs {by_hand}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The direct products equal the im2col ones for any geometry and support: strides,
        /// padding, kernels larger than the image, empty and full kernels, batch 1, output rows
        /// either side of [`WIDE_BELOW`], kernels either side of [`WIDE_FROM_TAPS`] (row by
        /// row and on wide planes).
        #[test]
        fn direct_products_equal_the_patch_products(
            batch in 1usize..3, channels in 1usize..4, outputs in 1usize..6,
            height in 1usize..8, width in 1usize..22, kernel in 1usize..4, stride in 1usize..3,
            padding in 0usize..3, zeros in 0.0f64..1.0, seed in 0u64..1000,
        ) {
            let shape = ConvShape { batch, channels, height, width, kernel, stride, padding };
            let value = |i: usize, k: u64| {
                (((i as u64 + 1) * 2_654_435_761 + k * 97 + seed) % 1_000) as f32 / 500.0 - 1.0
            };
            let kk = shape.patch_rows();
            let dense: Vec<f32> = (0..outputs * kk)
                .map(|i| if (value(i, 3) as f64 + 1.0) / 2.0 < zeros { 0.0 } else { value(i, 4) })
                .collect();
            let w = Csr::nonzeros(&dense, outputs, kk);
            let (ho, wo) = shape.output_size();
            let x: Vec<f32> = (0..batch * channels * height * width).map(|i| value(i, 1)).collect();
            let dy: Vec<f32> = (0..batch * outputs * ho * wo).map(|i| value(i, 2)).collect();
            let [y_ref, dx_ref, dw_ref] = by_patches(&w, &x, &dy, &shape);
            let mut y = vec![f32::NAN; y_ref.len()];
            let mut dx = vec![f32::NAN; dx_ref.len()];
            let mut dw = vec![f32::NAN; w.nnz()];
            forward(&w, &x, &shape, &mut y);
            input_grad(&w, &dy, &shape, &mut dx);
            weight_grad(&w, &x, &dy, &shape, &mut dw);
            for (name, a, b) in [("y", &y, &y_ref), ("dx", &dx, &dx_ref), ("dw", &dw, &dw_ref)] {
                let worst = a.iter().zip(b.iter()).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
                prop_assert!(worst <= 1e-4, "{}: {}", name, worst);
            }
        }
    }
}
