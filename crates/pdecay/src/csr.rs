//! Compressed sparse row (CSR) matrices and the products sparse inference needs.
//!
//! A pWD-trained layer keeps 1-20% of its weights; stored as CSR it takes 8 bytes per non-zero
//! (value + column) instead of 4 bytes per weight, and a product touches only the non-zeros.
//! Rows are output neurons (PyTorch's `[out, in]` layout; a conv kernel's `[out, in·k·k]`
//! view), so `y = W·x` is one dot product per row over that row's non-zeros. Sparse training
//! (`pdecay_burn::sparse_linear`) keeps a CSR of burn's `[in, out]` weight instead, and of its
//! transpose ([`Csr::transposed`]) for the forward product, and uses the batch products and
//! the product at its support ([`Csr::sampled_products_t`]).
//!
//! The products are our own, measured against `sprs` (the well-kept Rust CSR crate) by
//! `cargo bench -p pdecay --bench csr` on the MLP's 300 x 784 layer (2-core CI machine): the
//! matrix-vector product (batch 1) keeps eight partial sums per row instead of one dependent
//! chain and takes 0.22-0.73x of sprs's time at 2-20% density (measured before it read `x`
//! through `x.get`, which let the compiler vectorise the gathers: 1.2x faster again in the GPT
//! decoder; hand-written AVX-512 gathers measured slower than that); the batch product runs the
//! inner loop over the batch (contiguous, vectorised) and is level with sprs on one thread
//! (0.93-1.08x), splitting rows over rayon's pool once the work passes ~1M multiply-adds
//! (0.65-0.93x at 20% density, batch 64), which sprs does not do for sparse x dense
//! (sparsemat/sprs#298). One CSR type then serves both products without `ndarray`.

use std::mem::MaybeUninit;

use rayon::prelude::*;
use thiserror::Error;

use crate::kernel::{lane_dots, lane_sum};

/// Why arrays do not form a valid CSR matrix (a corrupt or foreign file).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CsrError {
    /// `row_offsets` must have `rows + 1` entries.
    #[error("row_offsets has {got} entries, expected rows + 1 = {expected}")]
    OffsetsLength {
        /// Entries found.
        got: usize,
        /// Entries expected.
        expected: usize,
    },
    /// Offsets must start at 0, never decrease and end at the number of values.
    #[error(
        "row_offsets must start at 0, never decrease and end at the number of values ({values})"
    )]
    Offsets {
        /// Number of stored values.
        values: usize,
    },
    /// `values` and `col_indices` must have the same length.
    #[error("{values} values but {indices} column indices")]
    IndexCount {
        /// Number of values.
        values: usize,
        /// Number of column indices.
        indices: usize,
    },
    /// A column index is out of range or the indices of a row are not increasing.
    #[error("row {row}: column indices must be increasing and below {cols}")]
    Columns {
        /// The row.
        row: usize,
        /// The number of columns.
        cols: usize,
    },
}

/// Independent partial sums per row in [`Csr::matvec`].
const LANES: usize = 8;

/// A sparse `rows × cols` matrix in CSR form.
#[derive(Debug, Clone, PartialEq)]
pub struct Csr {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Row `r`'s entries are `row_offsets[r]..row_offsets[r + 1]`.
    pub row_offsets: Vec<u32>,
    /// Column of each stored value.
    pub col_indices: Vec<u32>,
    /// The non-zero values, row by row.
    pub values: Vec<f32>,
}

impl Csr {
    /// Keeps the entries of a row-major dense matrix with `|w| >= threshold` and `w != 0`.
    ///
    /// # Panics
    /// If `dense.len() != rows * cols`, or a dimension exceeds `u32` (callers' bugs).
    pub fn from_dense(dense: &[f32], rows: usize, cols: usize, threshold: f32) -> Self {
        Self::kept(dense, rows, cols, Kept::AtLeast(threshold))
    }

    /// Checks arrays read from a file before any product indexes with them.
    pub fn new(
        rows: usize,
        cols: usize,
        row_offsets: Vec<u32>,
        col_indices: Vec<u32>,
        values: Vec<f32>,
    ) -> Result<Self, CsrError> {
        if row_offsets.len() != rows + 1 {
            return Err(CsrError::OffsetsLength {
                got: row_offsets.len(),
                expected: rows + 1,
            });
        }
        if values.len() != col_indices.len() {
            return Err(CsrError::IndexCount {
                values: values.len(),
                indices: col_indices.len(),
            });
        }
        let ordered = row_offsets.windows(2).all(|w| w[0] <= w[1]);
        if row_offsets[0] != 0 || !ordered || row_offsets[rows] as usize != values.len() {
            return Err(CsrError::Offsets {
                values: values.len(),
            });
        }
        for row in 0..rows {
            let cols_of_row =
                &col_indices[row_offsets[row] as usize..row_offsets[row + 1] as usize];
            let increasing = cols_of_row.windows(2).all(|w| w[0] < w[1]);
            if !increasing || cols_of_row.last().is_some_and(|&c| c as usize >= cols) {
                return Err(CsrError::Columns { row, cols });
            }
        }
        Ok(Self {
            rows,
            cols,
            row_offsets,
            col_indices,
            values,
        })
    }

    /// Number of stored values.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The row-major dense matrix.
    pub fn to_dense(&self) -> Vec<f32> {
        self.dense_with(&self.values)
    }

    /// The row-major dense matrix with this support and `values` in place of the stored ones
    /// (one per stored entry, in storage order), zero elsewhere: sparse training's weight
    /// gradient, computed only at the support.
    ///
    /// # Panics
    /// If `values` does not hold one value per stored entry.
    pub fn dense_with(&self, values: &[f32]) -> Vec<f32> {
        assert_eq!(
            values.len(),
            self.nnz(),
            "dense_with: one value per stored entry"
        );
        // row by row, each zeroed just before its entries land in it: one pass over the
        // matrix (a zeroed allocation is a pass of its own once the allocator reuses memory)
        let mut dense = Vec::with_capacity(self.rows * self.cols);
        for row in 0..self.rows {
            let start = dense.len();
            dense.resize(start + self.cols, 0.0);
            let out = &mut dense[start..];
            for k in self.row_range(row) {
                out[self.col_indices[k] as usize] = values[k];
            }
        }
        dense
    }

    /// The CSR of the transposed matrix (a counting sort of the entries by column: each
    /// column's entries keep their row order), so that a product with `Wᵀ` gathers each output
    /// row instead of scattering into all of them.
    pub fn transposed(&self) -> Csr {
        let mut row_offsets = vec![0u32; self.cols + 1];
        for &c in &self.col_indices {
            row_offsets[c as usize + 1] += 1;
        }
        for c in 0..self.cols {
            row_offsets[c + 1] += row_offsets[c];
        }
        let mut next: Vec<u32> = row_offsets[..self.cols].to_vec();
        let mut col_indices = vec![0u32; self.nnz()];
        let mut values = vec![0.0f32; self.nnz()];
        for row in 0..self.rows {
            for k in self.row_range(row) {
                let c = self.col_indices[k] as usize;
                let at = next[c] as usize;
                col_indices[at] = row as u32;
                values[at] = self.values[k];
                next[c] += 1;
            }
        }
        Csr {
            rows: self.cols,
            cols: self.rows,
            row_offsets,
            col_indices,
            values,
        }
    }

    fn row_range(&self, row: usize) -> std::ops::Range<usize> {
        self.row_offsets[row] as usize..self.row_offsets[row + 1] as usize
    }

    /// `out`, one value per stored entry, cut at every `rows`-th row: each piece with its rows,
    /// so that tasks over row chunks each write only their own entries.
    ///
    /// # Panics
    /// If `out` does not hold one value per stored entry or `rows` is 0.
    pub(crate) fn entries_by_rows<'a>(
        &self,
        out: &'a mut [f32],
        rows: usize,
    ) -> Vec<(std::ops::Range<usize>, &'a mut [f32])> {
        assert_eq!(out.len(), self.nnz(), "one value per stored entry");
        let mut pieces = Vec::with_capacity(self.rows.div_ceil(rows));
        let mut rest = out;
        for first in (0..self.rows).step_by(rows) {
            let last = (first + rows).min(self.rows);
            let len = (self.row_offsets[last] - self.row_offsets[first]) as usize;
            let (piece, tail) = rest.split_at_mut(len);
            pieces.push((first..last, piece));
            rest = tail;
        }
        pieces
    }

    /// `y = W·x + bias` for one input vector (`x.len() == cols`), rows split over threads.
    pub fn matvec(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "CSR matvec: x has cols entries");
        assert_eq!(y.len(), self.rows, "CSR matvec: y has rows entries");
        // below ~64K non-zeros a thread hand-off costs more than it saves
        if self.nnz() < 1 << 16 {
            sparse_rows(
                &self.values,
                &self.col_indices,
                &self.row_offsets,
                x,
                bias,
                y,
            );
        } else {
            const ROWS: usize = 64;
            y.par_chunks_mut(ROWS).enumerate().for_each(|(k, y)| {
                let (first, bias) = (k * ROWS, bias.map(|b| &b[k * ROWS..k * ROWS + y.len()]));
                let offsets = &self.row_offsets[first..=first + y.len()];
                sparse_rows(&self.values, &self.col_indices, offsets, x, bias, y);
            });
        }
    }

    /// The exact non-zeros of a row-major dense matrix (NaN and infinities included, so a
    /// diverged weight still propagates): the support that sparse training runs over.
    ///
    /// # Panics
    /// If `dense.len() != rows * cols`, or the matrix exceeds `u32` indexing (callers' bugs).
    pub fn nonzeros(dense: &[f32], rows: usize, cols: usize) -> Self {
        Self::kept(dense, rows, cols, Kept::NonZero)
    }

    /// Every entry of a row-major dense matrix, zeros included: the sparse products then compute
    /// the dense ones, every gradient included (a dense convolution run directly on the images).
    ///
    /// # Panics
    /// If `dense.len() != rows * cols`, or the matrix exceeds `u32` indexing (callers' bugs).
    pub fn every_entry(dense: &[f32], rows: usize, cols: usize) -> Self {
        Self::kept(dense, rows, cols, Kept::Every)
    }

    /// The entries of a row-major dense matrix for which `keep` holds ([`compact_row`]); blocks
    /// of rows split over rayon's pool for large matrices.
    fn kept(dense: &[f32], rows: usize, cols: usize, keep: Kept) -> Self {
        assert_eq!(dense.len(), rows * cols, "CSR: dense length is rows * cols");
        assert!(u32::try_from(dense.len()).is_ok(), "CSR: matrix too large");
        // each block of rows compacted alone, on rayon's pool when the matrix is large
        let block_rows = (PARALLEL_SCAN / cols.max(1)).max(1);
        // per block: where each row's entries end, counted from the block's first entry
        let scan = |block: &[f32]| {
            let (mut ends, mut col_indices, mut values) = (Vec::new(), Vec::new(), Vec::new());
            for row in block.chunks(cols.max(1)) {
                compact_row(row, keep, &mut values, &mut col_indices);
                ends.push(values.len() as u32);
            }
            (ends, col_indices, values)
        };
        let mut blocks = if dense.len() < 2 * PARALLEL_SCAN || cols == 0 {
            vec![scan(dense)]
        } else {
            dense.par_chunks(block_rows * cols).map(scan).collect()
        }
        .into_iter();
        // the first block's arrays are the matrix's, the others appended
        let (ends, mut col_indices, mut values) = blocks.next().unwrap_or_default();
        let mut row_offsets = Vec::with_capacity(rows + 1);
        row_offsets.push(0u32);
        row_offsets.extend(ends);
        for (ends, cols_of_block, values_of_block) in blocks {
            let before = values.len() as u32;
            row_offsets.extend(ends.into_iter().map(|end| before + end));
            col_indices.extend_from_slice(&cols_of_block);
            values.extend_from_slice(&values_of_block);
        }
        let nnz = values.len();
        row_offsets.resize(rows + 1, nnz as u32);
        Self {
            rows,
            cols,
            row_offsets,
            col_indices,
            values,
        }
    }

    /// `Yᵀ = W·Xᵀ + bias` for a batch: `x_t` is the input transposed (`[cols, batch]`,
    /// row-major), `y_t` receives `[rows, batch]`. With the batch innermost, each stored
    /// weight scales one contiguous input row into the output row (vectorised, in blocks of
    /// [`BATCH_BLOCK`] kept in registers).
    ///
    /// # Panics
    /// If the slices' lengths do not match the shapes, or a column index is out of range.
    pub fn matmul_t(&self, x_t: &[f32], batch: usize, bias: Option<&[f32]>, y_t: &mut [f32]) {
        assert_eq!(
            x_t.len(),
            self.cols * batch,
            "CSR matmul: x_t is cols x batch"
        );
        assert_eq!(
            y_t.len(),
            self.rows * batch,
            "CSR matmul: y_t is rows x batch"
        );
        if let Some(bias) = bias {
            assert_eq!(bias.len(), self.rows, "CSR matmul: bias has rows entries");
        }
        if batch == 0 {
            return;
        }
        let rows = |(chunk, out): (usize, &mut [f32])| {
            let first = chunk * ROW_CHUNK;
            let count = out.len() / batch;
            let offsets = &self.row_offsets[first..=first + count];
            let bias = bias.map(|b| &b[first..first + count]);
            scaled_row_sums(
                &self.values,
                &self.col_indices,
                offsets,
                x_t,
                batch,
                0..batch,
                bias,
                out,
            );
        };
        // below ~1M multiply-adds the thread hand-off costs about what it saves
        if self.nnz() * batch < 1 << 20 {
            y_t.chunks_mut(ROW_CHUNK * batch).enumerate().for_each(rows);
        } else {
            y_t.par_chunks_mut(ROW_CHUNK * batch)
                .enumerate()
                .for_each(rows);
        }
    }

    /// `Y = X·Wᵀ + bias` for a batch, in the layout burn's tensors hold: `x_t` is the input
    /// transposed (`[cols, batch]`, row-major), `y` receives `[batch, rows]` row-major. The
    /// same sums as [`Csr::matmul_t`] (bit for bit), but the batch is cut into pieces, one task
    /// each writing only its own rows of `y`: a piece sums 16 rows at a time into a
    /// local tile and transposes the tile into place while it is in cache, so no
    /// `[rows, batch]` array is written to memory and read back to be transposed.
    ///
    /// # Panics
    /// If the slices' lengths do not match the shapes, or a column index is out of range.
    pub fn matmul_rows(&self, x_t: &[f32], batch: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        assert_eq!(
            x_t.len(),
            self.cols * batch,
            "CSR matmul: x_t is cols x batch"
        );
        assert_eq!(y.len(), batch * self.rows, "CSR matmul: y is batch x rows");
        if let Some(bias) = bias {
            assert_eq!(bias.len(), self.rows, "CSR matmul: bias has rows entries");
        }
        if y.is_empty() {
            return;
        }
        let parallel = self.nnz() * batch >= 1 << 20;
        let piece = if parallel {
            piece_lanes(batch)
        } else {
            BATCH_BLOCK
        };
        let rows = self.rows;
        let work = |(p, out): (usize, &mut [f32])| {
            let lanes = p * piece..p * piece + out.len() / rows;
            let width = lanes.len();
            let mut tile = vec![0.0f32; ROW_CHUNK.min(rows) * width];
            for first in (0..rows).step_by(ROW_CHUNK) {
                let count = ROW_CHUNK.min(rows - first);
                let tile = &mut tile[..count * width];
                scaled_row_sums(
                    &self.values,
                    &self.col_indices,
                    &self.row_offsets[first..=first + count],
                    x_t,
                    batch,
                    lanes.clone(),
                    bias.map(|b| &b[first..first + count]),
                    tile,
                );
                transpose_into(tile, width, &mut out[first..], rows, count, width);
            }
        };
        if parallel {
            y.par_chunks_mut(piece * rows).enumerate().for_each(work);
        } else {
            y.chunks_mut(piece * rows).enumerate().for_each(work);
        }
    }

    /// `out[k] = a_t[r]·b_t[c]` for each stored entry `k` at `(r, c)`: the product `A·Bᵀ`
    /// sampled at this matrix's support, with `a_t` `[rows, batch]` and `b_t` `[cols, batch]`
    /// row-major. Sparse training's weight gradient is this, `∂W = ∂Yᵀ·X` at `W`'s non-zeros.
    ///
    /// # Panics
    /// If the slices' lengths do not match the shapes, or a column index is out of range.
    pub fn sampled_products_t(&self, a_t: &[f32], b_t: &[f32], batch: usize, out: &mut [f32]) {
        assert_eq!(
            a_t.len(),
            self.rows * batch,
            "CSR SDDMM: a_t is rows x batch"
        );
        assert_eq!(
            b_t.len(),
            self.cols * batch,
            "CSR SDDMM: b_t is cols x batch"
        );
        assert_eq!(
            out.len(),
            self.nnz(),
            "CSR SDDMM: one output per stored entry"
        );
        // each chunk writes only its own rows' entries
        let pieces = self.entries_by_rows(out, ROW_CHUNK);
        let work = |(rows, piece): (std::ops::Range<usize>, &mut [f32])| {
            let (first, count) = (rows.start, rows.len());
            let offsets = &self.row_offsets[first..=first + count];
            let a_t = &a_t[first * batch..(first + count) * batch];
            let start = self.row_offsets[first] as usize;
            let cols = &self.col_indices[start..start + piece.len()];
            sampled_dots(offsets, cols, a_t, b_t, batch, piece);
        };
        if self.nnz() * batch < 1 << 20 {
            pieces.into_iter().for_each(work);
        } else {
            pieces.into_par_iter().for_each(work);
        }
    }
}

/// Which entries of a dense matrix a CSR keeps.
#[derive(Debug, Clone, Copy)]
enum Kept {
    /// `w != 0` (NaN and infinities included): [`Csr::nonzeros`].
    NonZero,
    /// `w != 0` and `|w| >= threshold` (NaN dropped): [`Csr::from_dense`].
    AtLeast(f32),
    /// Every entry: [`Csr::every_entry`].
    Every,
}

impl Kept {
    fn keeps(self, w: f32) -> bool {
        match self {
            Kept::NonZero => w != 0.0,
            Kept::AtLeast(threshold) => w != 0.0 && w.abs() >= threshold,
            Kept::Every => true,
        }
    }
}

/// Entries per mask of [`compact_row`].
const MASK_WIDTH: usize = 16;

/// Appends the entries of `row` that `keep` keeps to `values`, with their columns to
/// `col_indices`. `keep` is evaluated for 16 entries at a time into a bit mask, and only the
/// kept entries are then visited, lowest bit first: at pWD's densities (1-20% non-zero) a
/// block of 16 holds 0-3 of them, where a pass that wrote every entry and kept some paid two
/// stores for each. The non-zeros, sparse training's support scanned at every step, take
/// AVX-512's compress where the CPU has it: each block's kept entries and their columns
/// packed into one register each and stored whole, with no branch per entry. On the MLP's
/// 784x300 weight that scan takes 0.056 ms at 90% zeros and 0.023 ms at 99%, against 0.18 ms
/// for the store-every-entry pass (bench/README.md).
fn compact_row(row: &[f32], keep: Kept, values: &mut Vec<f32>, col_indices: &mut Vec<u32>) {
    #[cfg(target_arch = "x86_64")]
    if matches!(keep, Kept::NonZero)
        && crate::kernel::simd_allowed(crate::kernel::SimdLevel::Avx512)
    {
        // SAFETY: the CPU supports AVX-512F, checked in `simd_allowed`.
        unsafe { compact_nonzeros_avx512(row, values, col_indices) };
        return;
    }
    values.reserve(row.len());
    col_indices.reserve(row.len());
    let chunks = row.chunks_exact(MASK_WIDTH);
    let tail = chunks.remainder();
    let mut base = 0u32;
    for chunk in chunks {
        let mut mask = 0u32;
        for (i, &w) in chunk.iter().enumerate() {
            mask |= u32::from(keep.keeps(w)) << i;
        }
        if mask == (1 << MASK_WIDTH) - 1 {
            values.extend_from_slice(chunk);
            col_indices.extend(base..base + MASK_WIDTH as u32);
        } else {
            while mask != 0 {
                let i = mask.trailing_zeros();
                values.push(chunk[i as usize]);
                col_indices.push(base + i);
                mask &= mask - 1;
            }
        }
        base += MASK_WIDTH as u32;
    }
    append_kept(tail, base, keep, values, col_indices);
}

/// Appends the entries of `entries` (columns from `first`) that `keep` keeps, one by one.
fn append_kept(
    entries: &[f32],
    first: u32,
    keep: Kept,
    values: &mut Vec<f32>,
    col_indices: &mut Vec<u32>,
) {
    for (c, &w) in (first..).zip(entries) {
        if keep.keeps(w) {
            values.push(w);
            col_indices.push(c);
        }
    }
}

/// [`compact_row`] for the non-zeros with AVX-512: per block of 16, a compare into a mask,
/// then the kept values and their columns compressed to the front of a register and stored as
/// 16 lanes at the end of the kept ones, of which the mask's population count are kept.
///
/// # Safety
/// The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn compact_nonzeros_avx512(row: &[f32], values: &mut Vec<f32>, col_indices: &mut Vec<u32>) {
    use std::arch::x86_64::{
        _CMP_NEQ_UQ, _mm512_add_epi32, _mm512_cmp_ps_mask, _mm512_loadu_ps,
        _mm512_maskz_compress_epi32, _mm512_maskz_compress_ps, _mm512_set1_epi32,
        _mm512_setr_epi32, _mm512_setzero_ps, _mm512_storeu_epi32, _mm512_storeu_ps,
    };
    // each block stores all 16 lanes: room for one past the last kept entry
    values.reserve(row.len() + MASK_WIDTH);
    col_indices.reserve(row.len() + MASK_WIDTH);
    let mut len = values.len();
    debug_assert_eq!(len, col_indices.len());
    let chunks = row.chunks_exact(MASK_WIDTH);
    let tail = chunks.remainder();
    let mut columns = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let step = _mm512_set1_epi32(MASK_WIDTH as i32);
    for chunk in chunks {
        // SAFETY: `chunk` holds 16 values; the stores write lanes `len..len + 16`, within the
        // capacity reserved above, since `len` grows by at most 16 per block of `row`; the
        // entries `set_len` below covers are all written (the kept lanes of each store).
        unsafe {
            let w = _mm512_loadu_ps(chunk.as_ptr());
            // unordered: NaN is kept, as `w != 0.0` keeps it
            let mask = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(w, _mm512_setzero_ps());
            // most blocks are empty at 99% zeros: the stores skipped (2x faster there)
            if mask != 0 {
                _mm512_storeu_ps(
                    values.as_mut_ptr().add(len),
                    _mm512_maskz_compress_ps(mask, w),
                );
                _mm512_storeu_epi32(
                    col_indices.as_mut_ptr().add(len).cast(),
                    _mm512_maskz_compress_epi32(mask, columns),
                );
                len += mask.count_ones() as usize;
            }
        }
        columns = _mm512_add_epi32(columns, step);
    }
    // SAFETY: as above, entries below `len` are written.
    unsafe {
        values.set_len(len);
        col_indices.set_len(len);
    }
    let first = (row.len() - tail.len()) as u32;
    append_kept(tail, first, Kept::NonZero, values, col_indices);
}

/// Elements per task of [`Csr::nonzeros`]' scan (below twice this, one thread scans all).
const PARALLEL_SCAN: usize = 1 << 20;

/// Rows per task of the batch products (a few microseconds of work at pWD's densities).
const ROW_CHUNK: usize = 16;

/// Batch lanes accumulated in registers by [`Csr::matmul_t`]: 128 f32 are eight AVX-512
/// registers, so one pass over a row's entries serves a batch of 128.
pub const BATCH_BLOCK: usize = 128;

/// Batch lanes per task of [`Csr::matmul_rows`]: [`BATCH_BLOCK`], or narrower where that
/// leaves fewer than two tasks per thread (a batch of 128 on two threads: four of 32), so
/// that a thread that finishes early finds work.
fn piece_lanes(batch: usize) -> usize {
    let tasks = 2 * rayon::current_num_threads();
    [BATCH_BLOCK, BATCH_BLOCK / 2, NARROW_BLOCK]
        .into_iter()
        .find(|&lanes| batch.div_ceil(lanes) >= tasks)
        .unwrap_or(NARROW_BLOCK)
}

/// Batch lanes of [`scaled_row_sums`]' narrower register block, for batches under
/// [`BATCH_BLOCK`] (a GPT decoder recomputing half a window: 32 positions).
const NARROW_BLOCK: usize = 32;

/// [`scaled_row_sums`] in blocks of `N` lanes, from lane offset `at` for as many whole blocks
/// as `lanes` holds past it: `out[r, b..b + N] = bias[r] + Σ values[k]·x_t[cols[k], s..s + N]`
/// with `s = lanes.start + b`, for every row of the chunk, each block's `N` sums kept in
/// registers over a row's entries, each entry one fused multiply-add (one rounding, as in
/// gemm's products; 1.13-1.18x the throughput of a multiply and an add on one thread).
/// Returns the offset of the first lane left to sum.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block_sums<const N: usize>(
    values: &[f32],
    cols: &[u32],
    offsets: &[u32],
    x_t: &[f32],
    x_stride: usize,
    lanes: &std::ops::Range<usize>,
    bias: Option<&[f32]>,
    out: &mut [f32],
    mut at: usize,
) -> usize {
    let width = lanes.len();
    while at + N <= width {
        let start = lanes.start + at;
        for r in 0..offsets.len() - 1 {
            let range = offsets[r] as usize..offsets[r + 1] as usize;
            let mut acc = [bias.map_or(0.0, |b| b[r]); N];
            for (&w, &c) in values[range.clone()].iter().zip(&cols[range]) {
                let from = c as usize * x_stride + start;
                let x: &[f32; N] = x_t[from..from + N].try_into().unwrap();
                for lane in 0..N {
                    acc[lane] = w.mul_add(x[lane], acc[lane]);
                }
            }
            out[r * width + at..r * width + at + N].copy_from_slice(&acc);
        }
        at += N;
    }
    at
}

crate::dispatched! {
    /// `out[r, b - lanes.start] = bias[r] + Σ values[k]·x_t[cols[k], b]` for `b` in `lanes`
    /// and `k` in `offsets[r]..offsets[r + 1]` (offsets index `values` and `cols`
    /// absolutely), for the rows of this chunk: `x_t`'s rows are `x_stride` apart, `out`'s
    /// `lanes.len()`. `BATCH_BLOCK` lanes at a time, then half that (four registers: enough
    /// independent chains of adds to hide their latency), then `NARROW_BLOCK`, then the rest.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn scaled_row_sums(
        values: &[f32],
        cols: &[u32],
        offsets: &[u32],
        x_t: &[f32],
        x_stride: usize,
        lanes: std::ops::Range<usize>,
        bias: Option<&[f32]>,
        out: &mut [f32]
    ) {
        let width = lanes.len();
        // blocks outermost: one block of every input row (`cols × BATCH_BLOCK` floats) is the
        // working set, where a whole row of blocks per output row would be `cols × batch`
        let at = block_sums::<BATCH_BLOCK>(values, cols, offsets, x_t, x_stride, &lanes, bias, out, 0);
        let at = block_sums::<{ BATCH_BLOCK / 2 }>(values, cols, offsets, x_t, x_stride, &lanes, bias, out, at);
        let at = block_sums::<NARROW_BLOCK>(values, cols, offsets, x_t, x_stride, &lanes, bias, out, at);
        if at < width {
            let (start, len) = (lanes.start + at, width - at);
            for r in 0..offsets.len() - 1 {
                let range = offsets[r] as usize..offsets[r + 1] as usize;
                let out = &mut out[r * width + at..(r + 1) * width];
                out.fill(bias.map_or(0.0, |b| b[r]));
                for (&w, &c) in values[range.clone()].iter().zip(&cols[range]) {
                    let from = c as usize * x_stride + start;
                    for (o, &x) in out.iter_mut().zip(&x_t[from..from + len]) {
                        *o = w.mul_add(x, *o);
                    }
                }
            }
        }
    }
}

/// Entries of a row whose dot products [`sampled_dots`] sums side by side ([`lane_dots`]' width):
/// four chains of adds in flight, one load of the row's `a_t` slice for four entries.
const DOTS: usize = 4;

crate::dispatched! {
    /// `out[k - offsets[0]] = a_t[r, :]·b_t[cols[k], :]` for the rows of this chunk (`a_t`
    /// holds the chunk's rows only, `cols` and `out` its entries only), each dot product in
    /// `SUM_LANES` partial sums, [`DOTS`] entries at a time (same bits as one at a time).
    fn sampled_dots(
        offsets: &[u32],
        cols: &[u32],
        a_t: &[f32],
        b_t: &[f32],
        batch: usize,
        out: &mut [f32]
    ) {
        let base = offsets[0] as usize;
        for r in 0..offsets.len() - 1 {
            let a = &a_t[r * batch..(r + 1) * batch];
            let range = offsets[r] as usize - base..offsets[r + 1] as usize - base;
            let row_of = |c: u32| &b_t[c as usize * batch..(c as usize + 1) * batch];
            let mut outs = out[range.clone()].chunks_exact_mut(DOTS);
            let groups = cols[range].chunks_exact(DOTS);
            let rest = groups.remainder();
            for (o, c) in (&mut outs).zip(groups) {
                let c: &[u32; DOTS] = c.try_into().unwrap();
                o.copy_from_slice(&lane_dots(a, c.map(row_of)));
            }
            for (o, &c) in outs.into_remainder().iter_mut().zip(rest) {
                let b = row_of(c);
                *o = lane_sum(a, b, b, |x, y, _| x * y);
            }
        }
    }
}

crate::dispatched! {
    /// `y[r] = bias[r] + Σ values[k]·x[cols[k]]` over `k` in `offsets[r]..offsets[r + 1]`,
    /// compiled for AVX-512 and AVX2 (chosen at run time, once per product: pWD's rows are
    /// short, ~20 non-zeros, so a per-row call would cost about what the row does) and the
    /// baseline, with `LANES` partial sums (one dependent chain would wait on each add).
    /// `x.get(c)` (0 outside `x`, which a valid matrix never reaches) keeps each gather free
    /// of a panic branch, so the compiler vectorises it.
    fn sparse_rows(
        values: &[f32],
        cols: &[u32],
        offsets: &[u32],
        x: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32]
    ) {
        for (r, out) in y.iter_mut().enumerate() {
            let range = offsets[r] as usize..offsets[r + 1] as usize;
            let (values, cols) = (&values[range.clone()], &cols[range]);
            let mut partial = [0.0f32; LANES];
            let (value_chunks, col_chunks) = (values.chunks_exact(LANES), cols.chunks_exact(LANES));
            let (value_tail, col_tail) = (value_chunks.remainder(), col_chunks.remainder());
            for (v, c) in value_chunks.zip(col_chunks) {
                for lane in 0..LANES {
                    partial[lane] += v[lane] * x.get(c[lane] as usize).copied().unwrap_or(0.0);
                }
            }
            let mut acc = bias.map_or(0.0, |b| b[r]) + partial.iter().sum::<f32>();
            for (v, c) in value_tail.iter().zip(col_tail) {
                acc += v * x.get(*c as usize).copied().unwrap_or(0.0);
            }
            *out = acc;
        }
    }
}

/// Side of the square tiles in which [`transpose_into`] moves values: a tile reads and writes
/// 16 runs of 16 floats (a cache line each), where a plain loop over one side would touch a
/// new cache line, and on large matrices a new page, with every value on the other.
pub(crate) const TILE: usize = 16;

/// `dst[j·dst_stride + i] = src[i·src_stride + j]` for `i < rows`, `j < cols`: blocks of 8x8
/// in AVX2 registers where the CPU has it and both sides are at least 8 (eight row loads,
/// three rounds of shuffles, eight stores: 0.4-0.7x the tiles' time on the linear layers'
/// shapes), else tile by tile through a local tile, so that both sides move contiguous runs.
///
/// # Panics
/// If `src` or `dst` is too short for the block at its stride.
pub(crate) fn transpose_into(
    src: &[f32],
    src_stride: usize,
    dst: &mut [f32],
    dst_stride: usize,
    rows: usize,
    cols: usize,
) {
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and `transpose_uninit` only stores
    // initialised values, so `dst` holds valid `f32`s throughout.
    let dst = unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) };
    transpose_uninit(src, src_stride, dst, dst_stride, rows, cols);
}

/// [`transpose_into`] into memory that may not be initialised yet (a `Vec`'s spare
/// capacity): it writes every `dst[j·dst_stride + i]`, `i < rows`, `j < cols`, and nothing
/// else, so a new transposed matrix needs no zeroing pass before it is written.
///
/// # Panics
/// If `src` or `dst` is too short for the block at its stride.
fn transpose_uninit(
    src: &[f32],
    src_stride: usize,
    dst: &mut [MaybeUninit<f32>],
    dst_stride: usize,
    rows: usize,
    cols: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        (rows - 1) * src_stride + cols <= src.len() && (cols - 1) * dst_stride + rows <= dst.len(),
        "transpose: a {rows}x{cols} block does not fit its slices"
    );
    #[cfg(target_arch = "x86_64")]
    if rows >= 8 && cols >= 8 && crate::kernel::simd_allowed(crate::kernel::SimdLevel::Avx2) {
        // SAFETY: the CPU has AVX2 (checked above), and the assert above keeps every 8x8
        // block inside both slices.
        unsafe { transpose_blocks_avx2(src, src_stride, dst, dst_stride, rows, cols) };
        return;
    }
    transpose_tiles(src, src_stride, dst, dst_stride, rows, cols);
}

/// [`transpose_into`] tile by tile through a local `TILE x TILE` tile (any CPU, any size).
fn transpose_tiles(
    src: &[f32],
    src_stride: usize,
    dst: &mut [MaybeUninit<f32>],
    dst_stride: usize,
    rows: usize,
    cols: usize,
) {
    let mut tile = [[0.0f32; TILE]; TILE];
    for i0 in (0..rows).step_by(TILE) {
        let ni = TILE.min(rows - i0);
        for j0 in (0..cols).step_by(TILE) {
            let nj = TILE.min(cols - j0);
            for i in 0..ni {
                let from = &src[(i0 + i) * src_stride + j0..][..nj];
                for (j, &v) in from.iter().enumerate() {
                    tile[j][i] = v;
                }
            }
            for (j, run) in tile.iter().enumerate().take(nj) {
                dst[(j0 + j) * dst_stride + i0..][..ni].write_copy_of_slice(&run[..ni]);
            }
        }
    }
}

/// [`transpose_into`] of a block at least 8 by 8, 8x8 at a time in registers: the classic
/// unpack (pairs of rows interleaved), shuffle (quads), and lane permute (halves). Where a
/// side is not a multiple of 8 its last block overlaps the one before and writes some values
/// a second time, the same ones (the CNN's 14- and 28-wide rows would otherwise leave a
/// quarter to a half of each row to a scalar edge).
///
/// # Safety
/// The CPU must have AVX2, `rows` and `cols` must be at least 8, and every
/// `src[i·src_stride + j]` and `dst[j·dst_stride + i]` for `i < rows`, `j < cols` must lie
/// inside the slices.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_blocks_avx2(
    src: &[f32],
    src_stride: usize,
    dst: &mut [MaybeUninit<f32>],
    dst_stride: usize,
    rows: usize,
    cols: usize,
) {
    use std::arch::x86_64::*;
    // block starts every 8, and the last one flush with the end
    let starts = |len: usize| (0..len - 8).step_by(8).chain([len - 8]);
    for i0 in starts(rows) {
        for j0 in starts(cols) {
            // SAFETY: rows i0..i0 + 8 and columns j0..j0 + 8 lie in both slices (caller).
            unsafe {
                let from = src.as_ptr().add(i0 * src_stride + j0);
                let r: [__m256; 8] =
                    std::array::from_fn(|i| _mm256_loadu_ps(from.add(i * src_stride)));
                // t: pairs of rows interleaved; s: each 128-bit half holds a column of 4 rows
                let t = [
                    _mm256_unpacklo_ps(r[0], r[1]),
                    _mm256_unpackhi_ps(r[0], r[1]),
                    _mm256_unpacklo_ps(r[2], r[3]),
                    _mm256_unpackhi_ps(r[2], r[3]),
                    _mm256_unpacklo_ps(r[4], r[5]),
                    _mm256_unpackhi_ps(r[4], r[5]),
                    _mm256_unpacklo_ps(r[6], r[7]),
                    _mm256_unpackhi_ps(r[6], r[7]),
                ];
                let s = [
                    _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                    _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                    _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                    _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                    _mm256_shuffle_ps::<0x44>(t[4], t[6]),
                    _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
                    _mm256_shuffle_ps::<0x44>(t[5], t[7]),
                    _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
                ];
                let to = dst.as_mut_ptr().cast::<f32>().add(j0 * dst_stride + i0);
                for j in 0..4 {
                    let (low, high) = (s[j], s[j + 4]);
                    _mm256_storeu_ps(
                        to.add(j * dst_stride),
                        _mm256_permute2f128_ps::<0x20>(low, high),
                    );
                    _mm256_storeu_ps(
                        to.add((j + 4) * dst_stride),
                        _mm256_permute2f128_ps::<0x31>(low, high),
                    );
                }
            }
        }
    }
}

/// Transposes a row-major `rows × cols` matrix in bands of 16 output rows (8x8 blocks in AVX2
/// registers where the CPU has it, else 16x16 tiles), the bands split over rayon's pool once
/// the matrix passes `2^16` elements.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(m.len(), rows * cols, "transpose: length is rows * cols");
    let mut t = Vec::with_capacity(m.len());
    if m.is_empty() {
        return t;
    }
    let out = &mut t.spare_capacity_mut()[..m.len()];
    // band `b` of the output is input columns `b·TILE..`, each output row `rows` long
    let band = |(b, out): (usize, &mut [MaybeUninit<f32>])| {
        let width = out.len() / rows;
        transpose_uninit(&m[b * TILE..], cols, out, rows, rows, width);
    };
    if m.len() < 1 << 16 {
        out.chunks_mut(TILE * rows).enumerate().for_each(band);
    } else {
        out.par_chunks_mut(TILE * rows).enumerate().for_each(band);
    }
    // SAFETY: the bands tile the first `m.len()` elements, and each band's transpose writes
    // all of its `width` rows of `rows` values.
    unsafe { t.set_len(m.len()) };
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn csr_of_a_known_matrix_is_as_worked_by_hand() {
        // [ 0  2  0  0 ]
        // [ 0  0  0  0 ]
        // [ 1  0 -3  4 ]
        let dense = [0., 2., 0., 0., 0., 0., 0., 0., 1., 0., -3., 4.];
        let csr = Csr::from_dense(&dense, 3, 4, 0.0);
        assert_eq!(csr.row_offsets, [0, 1, 1, 4]);
        assert_eq!(csr.col_indices, [1, 0, 2, 3]);
        assert_eq!(csr.values, [2., 1., -3., 4.]);
        assert_eq!(csr.to_dense(), dense);
        // y = W x + b with x = (1, 2, 3, 4), b = (10, 20, 30): (14, 20, 1 - 9 + 16 + 30)
        let mut y = [0.0; 3];
        csr.matvec(&[1., 2., 3., 4.], Some(&[10., 20., 30.]), &mut y);
        assert_eq!(y, [14., 20., 38.]);
    }

    #[test]
    fn the_threshold_drops_tiny_weights() {
        let csr = Csr::from_dense(&[1e-20, 0.5, -1e-14, 0.0], 2, 2, 1e-13);
        assert_eq!(csr.values, [0.5]);
        assert_eq!(csr.row_offsets, [0, 1, 1]);
    }

    #[test]
    fn invalid_arrays_are_errors_not_panics() {
        let ok = |o: Vec<u32>, c: Vec<u32>, v: Vec<f32>| Csr::new(2, 3, o, c, v);
        assert!(ok(vec![0, 1, 2], vec![0, 2], vec![1., 2.]).is_ok());
        assert!(matches!(
            ok(vec![0, 2], vec![0, 2], vec![1., 2.]),
            Err(CsrError::OffsetsLength { .. })
        ));
        assert!(matches!(
            ok(vec![0, 2, 1], vec![0, 2], vec![1., 2.]),
            Err(CsrError::Offsets { .. })
        ));
        assert!(matches!(
            ok(vec![0, 1, 2], vec![0, 3], vec![1., 2.]),
            Err(CsrError::Columns { row: 1, .. })
        ));
        assert!(matches!(
            ok(vec![0, 2, 2], vec![1, 1], vec![1., 2.]),
            Err(CsrError::Columns { row: 0, .. })
        ));
        assert!(matches!(
            ok(vec![0, 1, 2], vec![0], vec![1., 2.]),
            Err(CsrError::IndexCount { .. })
        ));
    }

    #[test]
    fn an_index_past_the_columns_reads_nothing() {
        // one row of 40 non-zeros; pub fields let a caller break the invariant Csr::new checks
        let dense: Vec<f32> = (0..40).map(|i| 1.0 + i as f32).collect();
        let x: Vec<f32> = (0..40).map(|i| (i % 5) as f32).collect();
        for broken in [3, 35] {
            let mut csr = Csr::from_dense(&dense, 1, 40, 0.0);
            csr.col_indices[broken] = 1 << 30;
            let mut y = [0.0];
            csr.matvec(&x, None, &mut y);
            let expected: f32 = (0..40)
                .filter(|&i| i != broken)
                .map(|i| dense[i] * x[i])
                .sum();
            assert_eq!(y[0], expected, "index {broken}");
        }
    }

    fn sparse_matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
        // up to 120 columns: rows of many 8-lane chunks as well as short ones
        (1usize..40, 1usize..120).prop_flat_map(|(r, c)| {
            let entry = prop_oneof![3 => Just(0.0f32), 1 => -2.0f32..2.0];
            (Just(r), Just(c), prop::collection::vec(entry, r * c))
        })
    }

    #[test]
    fn a_large_support_scanned_in_parallel_equals_the_dense_matrix() {
        // past the parallel threshold, with rows that do not divide into the blocks evenly
        for (rows, cols) in [(1000, 333), (3, 70_000), (70_000, 1)] {
            let dense: Vec<f32> = (0..rows * cols)
                .map(|i| if (i * 7919) % 10 < 8 { 0.0 } else { i as f32 })
                .collect();
            let csr = Csr::nonzeros(&dense, rows, cols);
            assert_eq!(csr.to_dense(), dense, "{rows}x{cols}");
            assert_eq!(
                Csr::new(
                    rows,
                    cols,
                    csr.row_offsets.clone(),
                    csr.col_indices.clone(),
                    csr.values.clone()
                ),
                Ok(csr)
            );
        }
    }

    #[test]
    fn products_in_burn_layout_split_over_the_batch_equal_the_transposed_ones() {
        // past the parallel threshold: pieces of 128, 64 and 32 lanes, a ragged last piece,
        // a last chunk of rows short of 16, and one under 8 rows (no 8x8 register transpose)
        let (rows, cols) = (301, 784);
        let dense: Vec<f32> = (0..rows * cols)
            .map(|i| {
                if (i * 7919) % 10 < 6 {
                    0.0
                } else {
                    (i % 7) as f32 - 3.0
                }
            })
            .collect();
        let csr = Csr::nonzeros(&dense, rows, cols);
        let bias: Vec<f32> = (0..rows).map(|r| (r % 5) as f32).collect();
        for batch in [1, 20, 128, 130, 256, 770] {
            assert!(
                batch == 1 || csr.nnz() * batch >= 1 << 20,
                "parallel at batch {batch}"
            );
            let x_t: Vec<f32> = (0..cols * batch).map(|i| (i % 11) as f32 - 5.0).collect();
            let mut y_t = vec![0.0; rows * batch];
            csr.matmul_t(&x_t, batch, Some(&bias), &mut y_t);
            let mut y = vec![f32::NAN; batch * rows];
            csr.matmul_rows(&x_t, batch, Some(&bias), &mut y);
            assert_eq!(y, transpose(&y_t, rows, batch), "batch {batch}");
        }
        let narrow = Csr::nonzeros(&dense[..5 * cols], 5, cols);
        let x_t: Vec<f32> = (0..cols * 300).map(|i| (i % 3) as f32).collect();
        let (mut y_t, mut y) = (vec![0.0; 5 * 300], vec![f32::NAN; 300 * 5]);
        narrow.matmul_t(&x_t, 300, None, &mut y_t);
        narrow.matmul_rows(&x_t, 300, None, &mut y);
        assert_eq!(y, transpose(&y_t, 5, 300));
    }

    #[test]
    fn transpose_moves_every_entry() {
        assert_eq!(
            transpose(&[1., 2., 3., 4., 5., 6.], 2, 3),
            [1., 4., 2., 5., 3., 6.]
        );
        // odd sizes past the parallel threshold: partial tiles and bands
        for (rows, cols) in [(257, 301), (17, 5000), (1, 70_000)] {
            let m: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let t = transpose(&m, rows, cols);
            for r in (0..rows).step_by(7) {
                for c in (0..cols).step_by(11) {
                    assert_eq!(t[c * rows + r], m[r * cols + c], "{rows}x{cols} at {r},{c}");
                }
            }
            assert_eq!(transpose(&t, cols, rows), m);
        }
    }

    proptest! {
        /// A block at any strides, by each instruction set this CPU runs: every entry moved,
        /// nothing outside the block written.
        #[test]
        fn a_strided_block_transposes_alike_at_every_simd_level(
            rows in 0usize..40,
            cols in 0usize..40,
            src_pad in 0usize..5,
            dst_pad in 0usize..5,
        ) {
            use crate::kernel::{SimdLevel, limit_simd};
            let (src_stride, dst_stride) = (cols + src_pad, rows + dst_pad);
            let src: Vec<f32> = (0..rows * src_stride).map(|i| i as f32).collect();
            let mut expected = vec![-1.0f32; cols * dst_stride];
            for i in 0..rows {
                for j in 0..cols {
                    expected[j * dst_stride + i] = src[i * src_stride + j];
                }
            }
            let levels = limit_simd(SimdLevel::Avx512);
            for &level in &levels {
                limit_simd(level);
                let mut dst = vec![-1.0f32; cols * dst_stride];
                transpose_into(&src, src_stride, &mut dst, dst_stride, rows, cols);
                limit_simd(SimdLevel::Avx512);
                prop_assert_eq!(&dst, &expected, "{:?}", level);
            }
        }
    }

    proptest! {
        /// The scans against their definitions, entry by entry, by each instruction set this
        /// CPU runs: rows across several blocks of 16 and a tail, all-zero and all-kept
        /// blocks, and the entries a compare can get wrong (-0, NaN, infinities, subnormals).
        #[test]
        fn scans_keep_exactly_their_entries_at_every_simd_level(
            rows in 0usize..6,
            cols in 0usize..70,
            picks in prop::collection::vec(0usize..16, 420),
            zeros in 0usize..17,
        ) {
            use crate::kernel::{SimdLevel, limit_simd};
            const SPECIAL: [f32; 7] =
                [-0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-40, 1e-3, -7.5];
            // `zeros` of 16 picks give 0.0: from no zeros to all zeros
            let dense: Vec<f32> = picks[..rows * cols]
                .iter()
                .map(|&p| if p < zeros { 0.0 } else { SPECIAL[p % SPECIAL.len()] })
                .collect();
            let expected = |keep: &dyn Fn(f32) -> bool| {
                let (mut offsets, mut cols_kept, mut bits) = (vec![0u32], vec![], vec![]);
                for row in dense.chunks(cols.max(1)) {
                    for (c, &w) in row.iter().enumerate().filter(|e| keep(*e.1)) {
                        cols_kept.push(c as u32);
                        bits.push(w.to_bits());
                    }
                    offsets.push(cols_kept.len() as u32);
                }
                offsets.resize(rows + 1, cols_kept.len() as u32);
                (offsets, cols_kept, bits)
            };
            let found = |csr: Csr| {
                let bits: Vec<u32> = csr.values.iter().map(|v| v.to_bits()).collect();
                (csr.row_offsets, csr.col_indices, bits)
            };
            let levels = limit_simd(SimdLevel::Avx512);
            for &level in &levels {
                limit_simd(level);
                let nonzeros = found(Csr::nonzeros(&dense, rows, cols));
                let every = found(Csr::every_entry(&dense, rows, cols));
                let at_least = found(Csr::from_dense(&dense, rows, cols, 1e-3));
                limit_simd(SimdLevel::Avx512);
                prop_assert_eq!(nonzeros, expected(&|w| w != 0.0), "{:?}", level);
                prop_assert_eq!(every, expected(&|_| true), "{:?}", level);
                prop_assert_eq!(at_least, expected(&|w| w != 0.0 && w.abs() >= 1e-3), "{:?}", level);
            }
        }
    }

    #[test]
    fn supports_of_a_known_matrix_are_as_worked_by_hand() {
        // [ 0    2  0 ]
        // [ NaN  0  5 ]   NaN is a non-zero: a diverged weight must not vanish from training
        let dense = [0., 2., 0., f32::NAN, 0., 5.];
        let csr = Csr::nonzeros(&dense, 2, 3);
        assert_eq!(csr.row_offsets, [0, 1, 3]);
        assert_eq!(csr.col_indices, [1, 0, 2]);
        assert_eq!(csr.values[0], 2.0);
        assert!(csr.values[1].is_nan());
        // the inference scan, the same pass with its threshold test, drops the NaN
        let inference = Csr::from_dense(&dense, 2, 3, 0.0);
        assert_eq!(inference.values, [2.0, 5.0]);
        assert_eq!(inference.row_offsets, [0, 1, 2]);
        // sampled A·Bᵀ with batch 2: a_t rows (1, 2), (3, 4); b_t rows (1, 0), (0, 1), (1, 1)
        let mut out = [0.0; 3];
        csr.sampled_products_t(&[1., 2., 3., 4.], &[1., 0., 0., 1., 1., 1.], 2, &mut out);
        // entries (0, 1): 1·0 + 2·1; (1, 0): 3·1 + 4·0; (1, 2): 3 + 4
        assert_eq!(out, [2., 3., 7.]);
    }

    proptest! {
        #[test]
        fn training_products_match_dense_ones(
            (rows, cols, dense) in sparse_matrix(),
            batch in prop_oneof![1usize..5, Just(32usize), 60usize..70, Just(128usize), Just(130usize)],
            seed in 0u32..1000,
        ) {
            let csr = Csr::nonzeros(&dense, rows, cols);
            prop_assert_eq!(csr.to_dense(), dense.clone());
            // with a threshold of 0 the inference scan keeps the same entries (no NaN here)
            prop_assert_eq!(Csr::from_dense(&dense, rows, cols, 0.0), csr.clone());
            let a_t: Vec<f32> = (0..rows * batch)
                .map(|i| ((i as u32 * 5 + seed) % 11) as f32 - 5.0)
                .collect();
            let x_t: Vec<f32> = (0..cols * batch)
                .map(|i| ((i as u32 * 7 + seed) % 13) as f32 - 6.0)
                .collect();
            // the dense product in the kernel's order (columns ascending, one fused
            // multiply-add each): a zero weight adds exactly nothing, so the bits agree
            let mut y_t = vec![0.0; rows * batch];
            csr.matmul_t(&x_t, batch, None, &mut y_t);
            for r in 0..rows {
                for b in 0..batch {
                    let want = (0..cols)
                        .fold(0.0f32, |acc, c| dense[r * cols + c].mul_add(x_t[c * batch + b], acc));
                    prop_assert_eq!(y_t[r * batch + b], want);
                }
            }
            // the same sums, bit for bit, written in burn's layout (NaN until written)
            let bias: Vec<f32> = (0..rows).map(|r| r as f32 - 2.0).collect();
            let mut biased_t = vec![0.0; rows * batch];
            csr.matmul_t(&x_t, batch, Some(&bias), &mut biased_t);
            let mut y = vec![f32::NAN; batch * rows];
            csr.matmul_rows(&x_t, batch, Some(&bias), &mut y);
            prop_assert_eq!(y, transpose(&biased_t, rows, batch));
            // the transpose's support, and its product gathered per output row
            let transposed = csr.transposed();
            prop_assert_eq!(transposed.to_dense(), transpose(&dense, rows, cols));
            let mut z_t = vec![f32::NAN; cols * batch];
            transposed.matmul_t(&a_t, batch, None, &mut z_t);
            for c in 0..cols {
                for b in 0..batch {
                    let want = (0..rows)
                        .fold(0.0f32, |acc, r| dense[r * cols + c].mul_add(a_t[r * batch + b], acc));
                    prop_assert_eq!(z_t[c * batch + b], want);
                }
            }
            let mut sampled = vec![0.0; csr.nnz()];
            csr.sampled_products_t(&a_t, &x_t, batch, &mut sampled);
            let mut k = 0;
            for r in 0..rows {
                for c in 0..cols {
                    if dense[r * cols + c] != 0.0 {
                        let want: f32 = (0..batch).map(|b| a_t[r * batch + b] * x_t[c * batch + b]).sum();
                        prop_assert_eq!(sampled[k], want);
                        k += 1;
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn products_match_the_dense_product(
            (rows, cols, dense) in sparse_matrix(),
            batch in 1usize..9,
            seed in 0u32..1000,
        ) {
            let csr = Csr::from_dense(&dense, rows, cols, 0.0);
            prop_assert_eq!(csr.to_dense(), dense.clone());
            let round_trip = Csr::new(rows, cols, csr.row_offsets.clone(),
                csr.col_indices.clone(), csr.values.clone());
            prop_assert_eq!(round_trip.as_ref(), Ok(&csr));
            let x: Vec<f32> = (0..cols * batch)
                .map(|i| ((i as u32 * 7 + seed) % 13) as f32 - 6.0)
                .collect();
            let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.5).collect();
            // reference: y[b, r] = bias[r] + sum_c W[r, c] x[b, c]
            let reference: Vec<f32> = (0..batch)
                .flat_map(|b| {
                    let (x, dense, bias) = (&x, &dense, &bias);
                    (0..rows).map(move |r| {
                        bias[r] + (0..cols).map(|c| dense[r * cols + c] * x[b * cols + c]).sum::<f32>()
                    })
                })
                .collect();
            let mut y_t = vec![0.0; rows * batch];
            csr.matmul_t(&transpose(&x, batch, cols), batch, Some(&bias), &mut y_t);
            let y = transpose(&y_t, rows, batch);
            for (a, b) in y.iter().zip(&reference) {
                prop_assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{} vs {}", a, b);
            }
            let mut y0 = vec![0.0; rows];
            csr.matvec(&x[..cols], Some(&bias), &mut y0);
            for (a, b) in y0.iter().zip(&reference[..rows]) {
                prop_assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{} vs {}", a, b);
            }
        }
    }
}
