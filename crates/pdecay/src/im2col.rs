//! A 2-D convolution as a matrix product: the patches of a batch of images as the columns of a
//! matrix (im2col), and the way back (col2im), for the CSR products of sparse convolutions.
//!
//! For images `x` `[B, C, H, W]` and a `k×k` kernel with stride `s` and zero padding `q`, the
//! output has `H' = (H + 2q − k)/s + 1` rows (and `W'` columns, likewise), `P = H'·W'`
//! positions. Row `(c·k + ky)·k + kx` of the `[C·k², B·P]` patch matrix holds, at column
//! `b·P + i·W' + j`, the input `x[b, c, i·s + ky − q, j·s + kx − q]` (0 outside the image):
//! PyTorch's kernel order, so a conv weight `[O, C, k, k]` is the `[O, C·k²]` matrix whose
//! product with the patches is the output `[O, B·P]`. With the batch and positions innermost,
//! each stored weight of a sparse kernel scales one contiguous row ([`crate::csr`]).

use rayon::prelude::*;

/// The geometry of a convolution over a batch of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Images in the batch (`B`).
    pub batch: usize,
    /// Input channels (`C`).
    pub channels: usize,
    /// Input rows (`H`).
    pub height: usize,
    /// Input columns (`W`).
    pub width: usize,
    /// The kernel's side (`k`).
    pub kernel: usize,
    /// The step between patches (`s`, at least 1).
    pub stride: usize,
    /// Zeros around each image (`q`).
    pub padding: usize,
}

impl ConvShape {
    /// The output's `(H', W')`; 0 where the kernel is larger than the padded image.
    pub fn output_size(&self) -> (usize, usize) {
        let side = |n: usize| {
            (n + 2 * self.padding)
                .checked_sub(self.kernel)
                .map_or(0, |d| d / self.stride.max(1) + 1)
        };
        (side(self.height), side(self.width))
    }

    /// Rows of the patch matrix (`C·k²`).
    pub fn patch_rows(&self) -> usize {
        self.channels * self.kernel * self.kernel
    }

    /// Columns of the patch matrix (`B·H'·W'`).
    pub fn patch_cols(&self) -> usize {
        let (h, w) = self.output_size();
        self.batch * h * w
    }

    /// The input position read by output row `i` at kernel row `ky` (`None`: padding).
    fn source(&self, out: usize, offset: usize, size: usize) -> Option<usize> {
        (out * self.stride + offset)
            .checked_sub(self.padding)
            .filter(|&v| v < size)
    }
}

/// Patch rows at a time per task: enough work per hand-off to the thread pool.
const ROWS_PER_TASK: usize = 8;

/// The `[C·k², B·P]` patch matrix of `x` (`[B, C, H, W]`, row-major; see the module docs).
///
/// # Panics
/// If `x` does not hold `B·C·H·W` values.
pub fn im2col(x: &[f32], shape: &ConvShape) -> Vec<f32> {
    let ConvShape {
        batch,
        channels,
        height,
        width,
        kernel,
        ..
    } = *shape;
    assert_eq!(
        x.len(),
        batch * channels * height * width,
        "im2col: x is [batch, channels, height, width]"
    );
    let (ho, wo) = shape.output_size();
    let (positions, cols) = (ho * wo, shape.patch_cols());
    let mut out = vec![0.0f32; shape.patch_rows() * cols];
    if cols == 0 {
        return out;
    }
    let plane = height * width;
    out.par_chunks_mut(cols * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            for (r, row) in rows.chunks_exact_mut(cols).enumerate() {
                let patch_row = task * ROWS_PER_TASK + r;
                let (c, ky, kx) = (
                    patch_row / (kernel * kernel),
                    patch_row / kernel % kernel,
                    patch_row % kernel,
                );
                for b in 0..batch {
                    let image = &x[(b * channels + c) * plane..(b * channels + c + 1) * plane];
                    let dest = &mut row[b * positions..(b + 1) * positions];
                    for i in 0..ho {
                        let Some(y) = shape.source(i, ky, height) else {
                            continue;
                        };
                        let source = &image[y * width..(y + 1) * width];
                        for j in 0..wo {
                            if let Some(x_) = shape.source(j, kx, width) {
                                dest[i * wo + j] = source[x_];
                            }
                        }
                    }
                }
            }
        });
    out
}

/// The adjoint of [`im2col`]: the `[B, C, H, W]` images whose every position sums the patch
/// entries read from it (the input gradient of a convolution from its patches' gradient).
///
/// # Panics
/// If `cols` is not a `[C·k², B·P]` matrix.
pub fn col2im(cols: &[f32], shape: &ConvShape) -> Vec<f32> {
    let ConvShape {
        batch,
        channels,
        height,
        width,
        kernel,
        ..
    } = *shape;
    let (ho, wo) = shape.output_size();
    let (positions, n) = (ho * wo, shape.patch_cols());
    assert_eq!(
        cols.len(),
        shape.patch_rows() * n,
        "col2im: cols is [channels·kernel², batch·positions]"
    );
    let plane = height * width;
    let mut x = vec![0.0f32; batch * channels * plane];
    if plane == 0 {
        return x;
    }
    // each task owns one image plane (b, c): its k² patch rows add into it alone
    x.par_chunks_mut(plane).enumerate().for_each(|(bc, image)| {
        let (b, c) = (bc / channels.max(1), bc % channels.max(1));
        for ky in 0..kernel {
            for kx in 0..kernel {
                let row = (c * kernel + ky) * kernel + kx;
                let source = &cols[row * n + b * positions..row * n + (b + 1) * positions];
                for i in 0..ho {
                    let Some(y) = shape.source(i, ky, height) else {
                        continue;
                    };
                    let dest = &mut image[y * width..(y + 1) * width];
                    for j in 0..wo {
                        if let Some(x_) = shape.source(j, kx, width) {
                            dest[x_] += source[i * wo + j];
                        }
                    }
                }
            }
        }
    });
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patches_of_a_padded_strided_image_by_hand() {
        // one 3x3 image 1..9, a 3x3 kernel, stride 2, padding 1: a 2x2 output whose patches
        // are centred on (0,0), (0,2), (2,0), (2,2)
        let shape = ConvShape {
            batch: 1,
            channels: 1,
            height: 3,
            width: 3,
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        assert_eq!(shape.output_size(), (2, 2));
        let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
        let cols = im2col(&x, &shape);
        // row (ky, kx) = (0, 0): the top-left neighbour of each centre, 0 where outside
        assert_eq!(cols[0..4], [0.0, 0.0, 0.0, 5.0]);
        // the centre tap (1, 1): the centres themselves
        assert_eq!(cols[4 * 4..5 * 4], [1.0, 3.0, 7.0, 9.0]);
        // (2, 2): bottom-right neighbours
        assert_eq!(cols[8 * 4..9 * 4], [5.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn a_one_by_one_strided_kernel_subsamples_every_image_and_channel() {
        let shape = ConvShape {
            batch: 2,
            channels: 2,
            height: 4,
            width: 4,
            kernel: 1,
            stride: 2,
            padding: 0,
        };
        let x: Vec<f32> = (0..64).map(|v| v as f32).collect();
        let cols = im2col(&x, &shape);
        // row c, column b·4 + i·2 + j: x[b, c, 2i, 2j]
        assert_eq!(cols[..8], [0.0, 2.0, 8.0, 10.0, 32.0, 34.0, 40.0, 42.0]);
        assert_eq!(cols[8..], [16.0, 18.0, 24.0, 26.0, 48.0, 50.0, 56.0, 58.0]);
    }

    #[test]
    fn a_kernel_larger_than_the_padded_image_has_no_patches() {
        let shape = ConvShape {
            batch: 1,
            channels: 1,
            height: 2,
            width: 2,
            kernel: 5,
            stride: 1,
            padding: 1,
        };
        assert_eq!(shape.output_size(), (0, 0));
        assert!(im2col(&[1.0; 4], &shape).is_empty());
        assert_eq!(col2im(&[], &shape), [0.0; 4]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// col2im is im2col's adjoint: ⟨im2col(x), G⟩ = ⟨x, col2im(G)⟩ for every x and G, which
        /// is what makes it the input gradient.
        #[test]
        fn col2im_is_the_adjoint_of_im2col(
            batch in 1usize..3, channels in 1usize..4, height in 1usize..7, width in 1usize..7,
            kernel in 1usize..4, stride in 1usize..3, padding in 0usize..2, seed in 0u64..1000,
        ) {
            let shape = ConvShape { batch, channels, height, width, kernel, stride, padding };
            let value = |i: usize, k: u64| {
                (((i as u64 + 1) * 2_654_435_761 + k * 97 + seed) % 1_000) as f32 / 500.0 - 1.0
            };
            let x: Vec<f32> = (0..batch * channels * height * width).map(|i| value(i, 1)).collect();
            let g: Vec<f32> = (0..shape.patch_rows() * shape.patch_cols()).map(|i| value(i, 2)).collect();
            let cols = im2col(&x, &shape);
            prop_assert_eq!(cols.len(), g.len());
            let left: f64 = cols.iter().zip(&g).map(|(a, b)| *a as f64 * *b as f64).sum();
            let back = col2im(&g, &shape);
            let right: f64 = x.iter().zip(&back).map(|(a, b)| *a as f64 * *b as f64).sum();
            prop_assert!((left - right).abs() <= 1e-4 * (1.0 + left.abs()), "{} vs {}", left, right);
        }
    }
}
