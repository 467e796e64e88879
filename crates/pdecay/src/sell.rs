//! Sliced ELLPACK (SELL-C-σ, Kreutzer et al., SIAM J. Sci. Comput. 2014) in column panels: a
//! sparse matrix laid out so that one matrix-vector product runs [`SLICE`] rows at once, one
//! SIMD lane per row, reading `x` from registers.
//!
//! CSR's matrix-vector product ([`Csr::matvec`]) works row by row: each row is one dot product
//! over its non-zeros, finished by a horizontal sum. pWD's rows are short (a 128-wide GPT layer
//! at 85% zeros keeps ~19 per row), so that per-row tail costs about what the row's
//! multiply-adds do, and each product gathers its `x` from memory. Here the columns are cut
//! into panels of [`PANEL`]; within a panel, the rows with entries there are sorted by length
//! (σ = all rows) and cut into slices of [`SLICE`]; a slice stores its rows' k-th entries side
//! by side, padded to its longest row with zero weights. A step of the product is one load of
//! `SLICE` weights and one-byte columns, one look-up of `x`, one multiply and add into `SLICE`
//! row sums: no horizontal sums, no per-row loop. With AVX-512 the panel's 64 values of `x` sit
//! in four registers and the look-up is two two-register permutes and a blend, where a gather
//! instruction measured about twice as slow on the GPT decoder (AMD EPYC, `cargo bench -p pdecay
//! --bench csr`: panels of 64 ran 1.07-1.13x faster than panels of 128 at 15-25% density and
//! 0.8x at 5%, panels of 32 slower at every density). Sorting keeps
//! the padding to the few entries by which neighbouring rows' lengths differ; the sums go back
//! to their rows through the sort's permutation.
//!
//! A padding entry multiplies a value of `x` by 0, as a dense product does for every zero
//! weight.

use crate::csr::Csr;

/// Rows per slice: one AVX-512 register of `f32` row sums.
pub const SLICE: usize = 16;

/// Columns per panel: the `x` values one look-up reaches (four AVX-512 registers); a one-byte
/// column index addresses them.
pub const PANEL: usize = 64;

/// The entries of one column panel.
#[derive(Debug, Clone, PartialEq)]
struct Panel {
    /// The panel's first column.
    first_col: usize,
    /// Slice `s` is entry groups `slice_offsets[s]..slice_offsets[s + 1]` (a group holds one
    /// entry of each of the slice's `SLICE` rows).
    slice_offsets: Vec<u32>,
    /// `SLICE` weights per group, lane `l` for the slice's `l`-th row (0 for padding).
    values: Vec<f32>,
    /// The columns of `values`, from `first_col` (0 for padding).
    cols: Vec<u8>,
    /// The matrix row of each lane of each slice (the last slice's extra lanes: `u32::MAX`).
    row_of: Vec<u32>,
}

/// A sparse `rows × cols` matrix in panelled SELL-[`SLICE`]-σ form, for `y = W·x + b`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sell {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    panels: Vec<Panel>,
}

impl Sell {
    /// The same matrix as `csr`.
    ///
    /// # Panics
    /// If a column index of `csr` is not below `csr.cols` or its rows are not sorted by column
    /// (a `Csr` built without [`Csr::new`]'s checks).
    pub fn from_csr(csr: &Csr) -> Self {
        let increasing_in_range = (0..csr.rows).all(|r| {
            let cols =
                &csr.col_indices[csr.row_offsets[r] as usize..csr.row_offsets[r + 1] as usize];
            cols.windows(2).all(|w| w[0] < w[1]) && cols.iter().all(|&c| (c as usize) < csr.cols)
        });
        assert!(
            increasing_in_range,
            "SELL: the CSR's columns are increasing and below cols"
        );
        let panels = (0..csr.cols.div_ceil(PANEL))
            .map(|p| Panel::new(csr, p * PANEL))
            .collect();
        Self {
            rows: csr.rows,
            cols: csr.cols,
            panels,
        }
    }

    /// Stored entries, padding included (the product's work).
    pub fn stored(&self) -> usize {
        self.panels.iter().map(|p| p.values.len()).sum()
    }

    /// `y = W·x + bias` for one input vector (`x.len() == cols`), on the calling thread.
    ///
    /// # Panics
    /// If `x` or `y` (or `bias`) has the wrong length.
    pub fn matvec(&self, x: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
        assert_eq!(x.len(), self.cols, "SELL matvec: x has cols entries");
        assert_eq!(y.len(), self.rows, "SELL matvec: y has rows entries");
        match bias {
            Some(b) => {
                assert_eq!(b.len(), self.rows, "SELL matvec: bias has rows entries");
                y.copy_from_slice(b);
            }
            None => y.fill(0.0),
        }
        let sums = panel_sums();
        for panel in &self.panels {
            // one byte addresses 256 columns: the panel's x, zero beyond the matrix
            let mut x_panel = [0.0f32; 256];
            let end = (panel.first_col + PANEL).min(self.cols);
            x_panel[..end - panel.first_col].copy_from_slice(&x[panel.first_col..end]);
            // SAFETY: `Panel::new` stored every column below PANEL.
            unsafe { sums(panel, &x_panel, y) };
        }
    }
}

impl Panel {
    /// The entries of `csr` in columns `first_col..first_col + PANEL`.
    fn new(csr: &Csr, first_col: usize) -> Self {
        let end_col = first_col + PANEL;
        // each row's entries in this panel (rows are sorted by column)
        let ranges: Vec<std::ops::Range<usize>> = (0..csr.rows)
            .map(|r| {
                let all = csr.row_offsets[r] as usize..csr.row_offsets[r + 1] as usize;
                let cols = &csr.col_indices[all.clone()];
                let start = all.start + cols.partition_point(|&c| (c as usize) < first_col);
                let end = all.start + cols.partition_point(|&c| (c as usize) < end_col);
                start..end
            })
            .collect();
        let mut row_of: Vec<u32> = (0..csr.rows as u32)
            .filter(|&r| !ranges[r as usize].is_empty())
            .collect();
        // stable: equal lengths keep their order, so the layout is reproducible
        row_of.sort_by_key(|&r| std::cmp::Reverse(ranges[r as usize].len()));
        let mut slice_offsets = vec![0u32];
        let (mut values, mut cols) = (Vec::new(), Vec::new());
        for slice in row_of.chunks(SLICE) {
            // sorted longest first: the slice's first row sets its width
            let width = ranges[slice[0] as usize].len();
            let start = values.len();
            values.resize(start + width * SLICE, 0.0);
            cols.resize(start + width * SLICE, 0u8);
            for (lane, &r) in slice.iter().enumerate() {
                for (k, at) in ranges[r as usize].clone().enumerate() {
                    values[start + k * SLICE + lane] = csr.values[at];
                    cols[start + k * SLICE + lane] =
                        (csr.col_indices[at] as usize - first_col) as u8;
                }
            }
            let groups = u32::try_from(values.len() / SLICE).expect("SELL: entries fit u32");
            slice_offsets.push(groups);
        }
        row_of.resize(row_of.len().div_ceil(SLICE) * SLICE, u32::MAX);
        Self {
            first_col,
            slice_offsets,
            values,
            cols,
            row_of,
        }
    }

    /// Each slice's groups and the rows its lanes belong to.
    fn slices(&self) -> impl Iterator<Item = (&[f32], &[u8], &[u32])> {
        self.row_of.chunks(SLICE).enumerate().map(|(s, rows)| {
            let groups =
                self.slice_offsets[s] as usize * SLICE..self.slice_offsets[s + 1] as usize * SLICE;
            (&self.values[groups.clone()], &self.cols[groups], rows)
        })
    }
}

/// Adds a slice's sums to its rows of `y` (padding lanes have none).
#[inline(always)]
fn add_to_rows(rows: &[u32], sums: [f32; SLICE], y: &mut [f32]) {
    for (&r, sum) in rows.iter().zip(sums) {
        if let Some(out) = y.get_mut(r as usize) {
            *out += sum;
        }
    }
}

/// `y[row] += Σ_g values[g·SLICE + l]·x_panel[cols[g·SLICE + l]]` for each slice of the panel
/// and lane `l`, the groups `g` in order, each product rounded before its add (no fused
/// multiply-add), so that every instruction set gives the same bits.
type PanelSums = unsafe fn(&Panel, &[f32; 256], &mut [f32]);

/// The portable loop, `x` read from memory, inlined into the baseline and AVX2 variants so that
/// each is compiled for its instruction set.
#[inline(always)]
fn panel_sums_portable(panel: &Panel, x_panel: &[f32; 256], y: &mut [f32]) {
    for (values, cols, rows) in panel.slices() {
        let mut acc = [0.0f32; SLICE];
        for (v, c) in values.chunks_exact(SLICE).zip(cols.chunks_exact(SLICE)) {
            for lane in 0..SLICE {
                acc[lane] += v[lane] * x_panel[c[lane] as usize];
            }
        }
        add_to_rows(rows, acc, y);
    }
}

/// The baseline: any CPU.
///
/// # Safety
/// None needed (a one-byte column is always inside `x_panel`); `unsafe` for [`PanelSums`].
unsafe fn panel_sums_baseline(panel: &Panel, x_panel: &[f32; 256], y: &mut [f32]) {
    panel_sums_portable(panel, x_panel, y)
}

/// The portable loop compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn panel_sums_avx2(panel: &Panel, x_panel: &[f32; 256], y: &mut [f32]) {
    panel_sums_portable(panel, x_panel, y)
}

/// AVX-512: the panel's `x` in four registers, each group's look-up two `vpermt2ps` (32 values
/// each, by the column's low five bits) and a blend (by bit 5).
///
/// # Safety
/// The CPU has AVX-512F, and every column of `panel` is below [`PANEL`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn panel_sums_avx512(panel: &Panel, x_panel: &[f32; 256], y: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: x_panel holds 256 floats, the loads read its first 64.
    let t: [__m512; 4] =
        std::array::from_fn(|k| unsafe { _mm512_loadu_ps(x_panel.as_ptr().add(16 * k)) });
    let bit5 = _mm512_set1_epi32(32);
    for (values, cols, rows) in panel.slices() {
        let mut acc = _mm512_setzero_ps();
        for (v, c) in values.chunks_exact(SLICE).zip(cols.chunks_exact(SLICE)) {
            // SAFETY: `v` holds SLICE floats and `c` SLICE bytes.
            let (v, c) = unsafe {
                (
                    _mm512_loadu_ps(v.as_ptr()),
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(c.as_ptr().cast())),
                )
            };
            let low = _mm512_permutex2var_ps(t[0], c, t[1]);
            let high = _mm512_permutex2var_ps(t[2], c, t[3]);
            let x = _mm512_mask_blend_ps(_mm512_test_epi32_mask(c, bit5), low, high);
            acc = _mm512_add_ps(acc, _mm512_mul_ps(v, x));
        }
        let mut sums = [0.0f32; SLICE];
        // SAFETY: `sums` holds SLICE floats.
        unsafe { _mm512_storeu_ps(sums.as_mut_ptr(), acc) };
        add_to_rows(rows, sums, y);
    }
}

/// The widest [`PanelSums`] this CPU runs (and [`limit_simd`](crate::kernel::limit_simd)
/// allows).
fn panel_sums() -> PanelSums {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::kernel::{SimdLevel, simd_allowed};
        if simd_allowed(SimdLevel::Avx512) {
            return panel_sums_avx512;
        }
        if simd_allowed(SimdLevel::Avx2) {
            return panel_sums_avx2;
        }
    }
    panel_sums_baseline
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{SimdLevel, limit_simd};
    use proptest::prelude::*;

    #[test]
    fn a_matrix_worked_by_hand() {
        // rows of lengths 1, 3, 0, 2: sorted 3, 2, 1 (the empty row stores nothing), one slice
        // of width 3
        let dense = [
            0.0, 2.0, 0.0, 0.0, //
            1.0, 0.0, 3.0, -1.0, //
            0.0, 0.0, 0.0, 0.0, //
            0.0, 4.0, 0.0, 5.0,
        ];
        let sell = Sell::from_csr(&Csr::from_dense(&dense, 4, 4, 0.0));
        assert_eq!(sell.stored(), 3 * SLICE);
        assert_eq!(sell.panels[0].row_of[..4], [1, 3, 0, u32::MAX]);
        let x = [1.0, 10.0, 100.0, 1000.0];
        let mut y = [f32::NAN; 4];
        sell.matvec(&x, Some(&[0.5, 0.25, 7.0, -1.0]), &mut y);
        // 2·10 + 0.5, 1 + 300 - 1000 + 0.25, bias only, 40 + 5000 - 1
        assert_eq!(y, [20.5, -698.75, 7.0, 5039.0]);
        sell.matvec(&x, None, &mut y);
        assert_eq!(y, [20.0, -699.0, 0.0, 5040.0]);
    }

    #[test]
    fn columns_past_a_panel_land_in_the_next_one() {
        // row 0: the first panel's first and last columns, the second panel's first, the
        // matrix's last; row 1: one column in the middle
        let (rows, cols) = (2, 300);
        let mut dense = vec![0.0f32; rows * cols];
        for (c, w) in [(0, 1.0), (PANEL - 1, 2.0), (PANEL, 3.0), (cols - 1, 4.0)] {
            dense[c] = w;
        }
        dense[cols + 200] = -1.0;
        let sell = Sell::from_csr(&Csr::from_dense(&dense, rows, cols, 0.0));
        assert_eq!(sell.panels.len(), cols.div_ceil(PANEL));
        let x: Vec<f32> = (0..cols).map(|c| c as f32).collect();
        let mut y = [0.0; 2];
        sell.matvec(&x, None, &mut y);
        let want = (PANEL - 1) as f32 * 2.0 + PANEL as f32 * 3.0 + (cols - 1) as f32 * 4.0;
        assert_eq!(y, [want, -200.0]);
    }

    #[test]
    fn every_simd_level_gives_the_same_bits() {
        let (rows, cols) = (70, 300);
        let dense: Vec<f32> = (0..rows * cols)
            .map(|i| {
                if i % 7 < 5 {
                    0.0
                } else {
                    ((i as f32) * 0.37).sin()
                }
            })
            .collect();
        let x: Vec<f32> = (0..cols).map(|c| ((c as f32) * 0.11).cos()).collect();
        let sell = Sell::from_csr(&Csr::from_dense(&dense, rows, cols, 0.0));
        let levels = limit_simd(SimdLevel::Avx512);
        let results: Vec<Vec<f32>> = levels
            .iter()
            .map(|&level| {
                limit_simd(level);
                let mut y = vec![0.0; rows];
                sell.matvec(&x, None, &mut y);
                y
            })
            .collect();
        limit_simd(SimdLevel::Avx512);
        for (level, y) in levels.iter().zip(&results) {
            assert_eq!(y, &results[0], "{level:?}");
        }
    }

    fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>, Vec<f32>)> {
        (1usize..40, prop_oneof![1usize..40, 120usize..300]).prop_flat_map(|(rows, cols)| {
            (
                Just(rows),
                Just(cols),
                proptest::collection::vec(
                    prop_oneof![3 => Just(0.0f32), 1 => -2.0f32..2.0],
                    rows * cols,
                ),
                proptest::collection::vec(-2.0f32..2.0, cols),
            )
        })
    }

    proptest! {
        #[test]
        fn equals_csr_on_any_sparsity((rows, cols, dense, x) in matrix(), with_bias: bool) {
            let csr = Csr::from_dense(&dense, rows, cols, 0.0);
            let sell = Sell::from_csr(&csr);
            let bias: Vec<f32> = (0..rows).map(|r| r as f32 * 0.1).collect();
            let bias = with_bias.then_some(bias.as_slice());
            let (mut a, mut b) = (vec![0.0; rows], vec![f32::NAN; rows]);
            csr.matvec(&x, bias, &mut a);
            sell.matvec(&x, bias, &mut b);
            for r in 0..rows {
                // the same products summed in other orders: within a few ulps of the sum of
                // their magnitudes
                let scale: f32 = (0..cols).map(|c| (dense[r * cols + c] * x[c]).abs()).sum();
                prop_assert!((a[r] - b[r]).abs() <= 1e-6 * (scale + 1.0), "row {}: {} vs {}", r, a[r], b[r]);
            }
            // padding only fills slices to their longest row: under SLICE entries per group
            let groups: usize = sell.panels.iter().map(|p| p.slice_offsets.last().copied().unwrap_or(0) as usize).sum();
            prop_assert!(sell.stored() >= csr.nnz() && sell.stored() == groups * SLICE);
        }
    }
}
