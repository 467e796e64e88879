//! Dense products `C = A·B` through the `gemm` crate (burn-flex's own kernels) on matrices that
//! sit inside slices at any strides, so a transpose or a head's columns are a [`View`], not a
//! copy.
//!
//! [`product`] writes into (or adds to) a block of an existing slice, on the calling thread:
//! attention's per-head products, the lanes' convolution gemms and the decoder's rows, small
//! enough that a thread hand-off costs more than it saves. [`product_new`] returns a fresh
//! buffer, split over rayon's pool from burn-flex's threshold on: the dense linear layer's three
//! products. gemm overwrites every entry of that buffer, so it is written once, where burn-flex
//! zeroes a buffer, copies it into an aligned one (`FlexTensor::empty`), then writes it.

/// A matrix inside a slice: element `(i, j)` at `offset + i·strides[0] + j·strides[1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Where element `(0, 0)` is.
    pub offset: usize,
    /// The steps from one row, and from one column, to the next.
    pub strides: [usize; 2],
}

impl View {
    /// The matrix at `offset` with these (row, column) strides.
    pub const fn new(offset: usize, strides: [usize; 2]) -> Self {
        Self { offset, strides }
    }

    /// A whole row-major matrix of `cols` columns from the slice's start.
    pub const fn rows(cols: usize) -> Self {
        Self::new(0, [cols, 1])
    }

    /// The transpose, over the same elements.
    pub const fn t(self) -> Self {
        Self::new(self.offset, [self.strides[1], self.strides[0]])
    }

    /// The same matrix from its row `r` on.
    pub const fn row(self, r: usize) -> Self {
        Self::new(self.offset + r * self.strides[0], self.strides)
    }

    /// One past the largest index a `rows x cols` matrix reaches (0 when it is empty).
    pub fn end(&self, [rows, cols]: [usize; 2]) -> usize {
        if rows == 0 || cols == 0 {
            return 0;
        }
        self.offset + (rows - 1) * self.strides[0] + (cols - 1) * self.strides[1] + 1
    }
}

/// From this many multiply-adds on (`m·n·k`), [`product_new`] splits its product over
/// rayon's pool: burn-flex's threshold, so that a dense layer runs as burn's product did.
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// `dst (m x n) = lhs (m x k) · rhs (k x n)`, or `dst += lhs · rhs` when `accumulate`, on this
/// thread, for `[m, n, k]` and each matrix a view into its slice.
///
/// # Panics
/// If a view reaches past its slice.
pub fn product(
    [m, n, k]: [usize; 3],
    (dst, at): (&mut [f32], View),
    (lhs, l): (&[f32], View),
    (rhs, r): (&[f32], View),
    accumulate: bool,
) {
    assert!(
        at.end([m, n]) <= dst.len() && l.end([m, k]) <= lhs.len() && r.end([k, n]) <= rhs.len(),
        "matmul: a product's view reaches past its buffer"
    );
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: every element the sizes and strides reach lies in its slice (asserted above),
    // and `dst` is borrowed mutably, so it overlaps neither input.
    unsafe {
        gemm_into(
            [m, n, k],
            dst.as_mut_ptr().add(at.offset),
            at.strides,
            accumulate,
            (lhs, l),
            (rhs, r),
            gemm::Parallelism::None,
        );
    }
}

/// `lhs (m x k) · rhs (k x n)` as a new row-major `m x n` buffer, split over rayon's pool from
/// `192³` multiply-adds on (burn-flex's threshold).
///
/// # Panics
/// If a view reaches past its slice.
pub fn product_new(
    [m, n, k]: [usize; 3],
    (lhs, l): (&[f32], View),
    (rhs, r): (&[f32], View),
) -> Vec<f32> {
    assert!(
        l.end([m, k]) <= lhs.len() && r.end([k, n]) <= rhs.len(),
        "matmul: a product's view reaches past its buffer"
    );
    if m == 0 || n == 0 || k == 0 {
        // an empty sum: zeros (gemm need not write anything for k = 0)
        return vec![0.0; m * n];
    }
    let parallelism = if m * n * k >= PARALLEL_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: the inputs' views lie in their slices (asserted above); the output is the
    // vector's own capacity of m·n values (row stride n), which gemm only writes, without
    // reading it (`accumulate` false), every one of them since m, n and k are positive; the
    // length is set only after that.
    unsafe {
        gemm_into(
            [m, n, k],
            out.as_mut_ptr(),
            [n, 1],
            false,
            (lhs, l),
            (rhs, r),
            parallelism,
        );
        out.set_len(m * n);
    }
    out
}

/// The one call into gemm.
///
/// # Safety
/// The inputs' views must lie in their slices, every element of the `m x n` output at `dst`
/// with `dst_strides` must lie in one allocation that overlaps neither input, and it must be
/// initialised if `accumulate`.
unsafe fn gemm_into(
    [m, n, k]: [usize; 3],
    dst: *mut f32,
    dst_strides: [usize; 2],
    accumulate: bool,
    (lhs, l): (&[f32], View),
    (rhs, r): (&[f32], View),
    parallelism: gemm::Parallelism,
) {
    // SAFETY: the caller's contract; the input pointers stay inside their slices because
    // their views do.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_strides[1] as isize,
            dst_strides[0] as isize,
            accumulate,
            lhs.as_ptr().add(l.offset),
            l.strides[1] as isize,
            l.strides[0] as isize,
            rhs.as_ptr().add(r.offset),
            r.strides[1] as isize,
            r.strides[0] as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `C = A·B` by the definition, for row-major `a` (m x k) and `b` (k x n).
    fn naive(a: &[f32], b: &[f32], [m, n, k]: [usize; 3]) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    proptest! {
        #[test]
        fn products_through_views_match_the_definition(
            m in 0usize..40, n in 0usize..40, k in 0usize..40, seed in 0u32..1000,
        ) {
            // small integers: every sum is exact, whatever the order
            let a: Vec<f32> = (0..m * k).map(|i| ((i as u32 * 7 + seed) % 9) as f32 - 4.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| ((i as u32 * 5 + seed) % 7) as f32 - 3.0).collect();
            let want = naive(&a, &b, [m, n, k]);
            prop_assert_eq!(&product_new([m, n, k], (&a, View::rows(k)), (&b, View::rows(n))), &want);
            // Aᵀ and Bᵀ stored, read back through transposed views
            let (a_t, b_t) = (transposed(&a, m, k), transposed(&b, k, n));
            let through_views = product_new([m, n, k], (&a_t, View::rows(m).t()), (&b_t, View::rows(k).t()));
            prop_assert_eq!(&through_views, &want);
            // into a block of a wider matrix, then added to it
            let mut wide = vec![1.0; m * (n + 3) + 2];
            let at = View::new(2, [n + 3, 1]);
            product([m, n, k], (&mut wide, at), (&a, View::rows(k)), (&b, View::rows(n)), false);
            product([m, n, k], (&mut wide, at), (&a, View::rows(k)), (&b, View::rows(n)), true);
            for i in 0..m {
                for j in 0..n {
                    prop_assert_eq!(wide[2 + i * (n + 3) + j], 2.0 * want[i * n + j]);
                }
                for j in n..n + 3 {
                    // the columns beside the block untouched
                    prop_assert_eq!(wide[2 + i * (n + 3) + j], 1.0);
                }
            }
            // and the two values before it
            prop_assert_eq!(&wide[..2], &[1.0, 1.0]);
        }
    }

    fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; m.len()];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = m[i * cols + j];
            }
        }
        t
    }

    #[test]
    fn a_product_past_the_parallel_threshold_matches_one_thread() {
        let [m, n, k] = [200, 210, 190];
        assert!(m * n * k >= PARALLEL_WORK);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 11) as f32 - 5.0).collect();
        assert_eq!(
            product_new([m, n, k], (&a, View::rows(k)), (&b, View::rows(n))),
            naive(&a, &b, [m, n, k])
        );
    }

    #[test]
    #[should_panic(expected = "reaches past its buffer")]
    fn a_view_past_its_slice_is_refused() {
        product_new(
            [2, 2, 2],
            (&[1.0; 3], View::rows(2)),
            (&[1.0; 4], View::rows(2)),
        );
    }
}
