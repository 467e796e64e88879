//! 2x2 max pooling with stride 2 over contiguous planes, with the argmax of every window.
//!
//! Each output takes the largest of its window's four inputs `[t0, t1; b0, b1]` and remembers
//! which one: its index in the input plane (`row * width + col`), as `max_pool2d_with_indices`
//! of burn and PyTorch gives it, so that their backward scatters can use it unchanged. Ties go
//! to the first candidate in row-major order; a NaN beats every number (and a later NaN an
//! earlier one), as in PyTorch.
//!
//! The choice is written with bit masks, not branches. After a ReLU half the windows tie at
//! zero and the rest are random, so a branch per candidate mispredicts often: the branchy loop
//! cost about 11 ns per output on the CNN's planes, 10-19% of its training step. Without
//! branches the row loop compiles to vector blends, eight outputs at a time; a row's last
//! block overlaps the one before, so the CNN's short rows (14 and 7 outputs) run in vector
//! blocks too (the pooling fell from 10.7% to 4.8% of a sparse CNN step's samples).

/// Pools `planes` contiguous `height x width` planes of `input` into `values` and `indices`
/// (`planes x height/2 x width/2` each). An odd last row or column is dropped.
///
/// # Panics
/// If `input` holds fewer than `planes * height * width` values, or the outputs a different
/// number than `planes * (height / 2) * (width / 2)`.
pub fn max_pool_2x2(
    input: &[f32],
    planes: usize,
    height: usize,
    width: usize,
    values: &mut [f32],
    indices: &mut [i64],
) {
    let (rows, cols) = (height / 2, width / 2);
    assert!(
        input.len() >= planes * height * width,
        "input shorter than its planes"
    );
    assert_eq!(values.len(), planes * rows * cols, "values length");
    assert_eq!(indices.len(), values.len(), "indices length");
    if cols == 0 {
        return;
    }
    let out_rows = values
        .chunks_exact_mut(cols)
        .zip(indices.chunks_exact_mut(cols));
    for (r, (values, indices)) in out_rows.enumerate() {
        let (plane, row) = (r / rows.max(1), r % rows.max(1));
        let top = plane * height * width + 2 * row * width;
        pool_row(
            &input[top..top + 2 * cols],
            &input[top + width..top + width + 2 * cols],
            (2 * row * width) as i64,
            width as i64,
            values,
            indices,
        );
    }
}

/// Outputs chosen together: one vector register of lanes, so that the compiler turns each
/// step of [`pool_block`] into one vector instruction (it does not vectorise the row loop,
/// whose inputs interleave).
const BLOCK: usize = 8;

/// The narrower block for rows of 4 to 7 outputs (the CNN's second pooling has 7).
const HALF_BLOCK: usize = 4;

/// Pools the outputs `first..first + N` of a row into their slots.
#[inline(always)]
fn pool_at<const N: usize>(
    top: &[f32],
    bottom: &[f32],
    start: i64,
    width: i64,
    first: usize,
    values: &mut [f32],
    indices: &mut [i64],
) {
    let window = 2 * first..2 * (first + N);
    pool_block::<N>(
        &top[window.clone()],
        &bottom[window],
        start + 2 * first as i64,
        width,
        (&mut values[first..first + N]).try_into().unwrap(),
        (&mut indices[first..first + N]).try_into().unwrap(),
    );
}

/// The row's outputs in blocks of `N`, the last block ending at the row's end (overlapping
/// the one before when `N` does not divide the row: those outputs are computed twice, the
/// same both times), so that a short row still runs in vector blocks. `values.len() >= N`.
#[inline(always)]
fn pool_blocks<const N: usize>(
    top: &[f32],
    bottom: &[f32],
    start: i64,
    width: i64,
    values: &mut [f32],
    indices: &mut [i64],
) {
    let n = values.len();
    for first in (0..n - N).step_by(N).chain([n - N]) {
        pool_at::<N>(top, bottom, start, width, first, values, indices);
    }
}

crate::dispatched! {
    /// One output row: windows `top[2c..2c+2]` over `bottom[2c..2c+2]`. `start` is the
    /// plane index of `top[0]` and `width` the plane's row length.
    fn pool_row(
        top: &[f32],
        bottom: &[f32],
        start: i64,
        width: i64,
        values: &mut [f32],
        indices: &mut [i64]
    ) {
        match values.len() {
            n if n >= BLOCK => pool_blocks::<BLOCK>(top, bottom, start, width, values, indices),
            n if n >= HALF_BLOCK => {
                pool_blocks::<HALF_BLOCK>(top, bottom, start, width, values, indices)
            }
            n => {
                for c in 0..n {
                    pool_at::<1>(top, bottom, start, width, c, values, indices);
                }
            }
        }
    }
}

/// `N` adjacent outputs: `N` windows of 2x2, the first starting at plane index `start`.
#[inline(always)]
fn pool_block<const N: usize>(
    top: &[f32],
    bottom: &[f32],
    start: i64,
    width: i64,
    values: &mut [f32; N],
    indices: &mut [i64; N],
) {
    let mut best: [f32; N] = std::array::from_fn(|l| top[2 * l]);
    let mut at = [0u32; N];
    for (k, row, column) in [(1u32, top, 1), (2, bottom, 0), (3, bottom, 1)] {
        for l in 0..N {
            (best[l], at[l]) = take_if_wins(best[l], at[l], row[2 * l + column], k);
        }
    }
    *values = best;
    for l in 0..N {
        // corner `at` (0 top left, 1 top right, 2 bottom left, 3 bottom right)
        let corner = (at[l] & 1) as i64 + (at[l] >> 1) as i64 * width;
        indices[l] = start + 2 * l as i64 + corner;
    }
}

/// `(candidate, k)` when `candidate` is greater than `best` or NaN, else `(best, at)`: as a
/// bitwise select, so that no branch depends on the data.
#[inline(always)]
fn take_if_wins(best: f32, at: u32, candidate: f32, k: u32) -> (f32, u32) {
    let mask = (((candidate > best) | candidate.is_nan()) as u32).wrapping_neg();
    let value = (candidate.to_bits() & mask) | (best.to_bits() & !mask);
    (f32::from_bits(value), (k & mask) | (at & !mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(input: &[f32], planes: usize, height: usize, width: usize) -> (Vec<f32>, Vec<i64>) {
        let n = planes * (height / 2) * (width / 2);
        let (mut values, mut indices) = (vec![0.0; n], vec![0; n]);
        max_pool_2x2(input, planes, height, width, &mut values, &mut indices);
        (values, indices)
    }

    #[test]
    fn a_hand_worked_plane() {
        // one 2x4 plane: windows [[1, 5], [3, 2]] and [[4, 4], [-1, 0]] (a tie: the first wins)
        let (values, indices) = pool(&[1.0, 5.0, 4.0, 4.0, 3.0, 2.0, -1.0, 0.0], 1, 2, 4);
        assert_eq!(values, [5.0, 4.0]);
        assert_eq!(indices, [1, 2]);
        // odd sizes drop the last row and column; a NaN wins its window
        let (values, indices) = pool(&[0.0, f32::NAN, 7.0, 1.0, 2.0, 8.0, 9.0, 9.0, 9.0], 1, 3, 3);
        assert!(values[0].is_nan());
        assert_eq!(indices, [1]);
        // the bottom right wins in the second plane's second row (index 3 * 4 + 3)
        let mut two = vec![0.0; 32];
        two[16 + 15] = 1.0;
        let (values, indices) = pool(&two, 2, 4, 4);
        assert_eq!(values, [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        assert_eq!(indices, [0, 2, 8, 10, 0, 2, 8, 15]);
    }

    /// The rule spelled out with branches: the first maximum in row-major order, a NaN (the
    /// last one) above everything.
    fn reference(
        input: &[f32],
        planes: usize,
        height: usize,
        width: usize,
    ) -> (Vec<f32>, Vec<i64>) {
        let (mut values, mut indices) = (vec![], vec![]);
        for p in 0..planes {
            for r in 0..height / 2 {
                for c in 0..width / 2 {
                    let mut best: Option<(f32, usize)> = None;
                    for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                        let at = (2 * r + dy) * width + 2 * c + dx;
                        let x = input[p * height * width + at];
                        best = match best {
                            Some((b, _)) if !(x > b || x.is_nan()) => best,
                            _ => Some((x, at)),
                        };
                    }
                    let (value, at) = best.unwrap();
                    values.push(value);
                    indices.push(at as i64);
                }
            }
        }
        (values, indices)
    }

    proptest! {
        #[test]
        fn equals_the_branchy_rule(
            planes in 1usize..4,
            height in 1usize..9,
            width in 1usize..35,
            seed in any::<u64>(),
        ) {
            // few distinct values (ties), negatives, zeros and NaNs
            let input: Vec<f32> = (0..planes * height * width)
                .map(|i| {
                    let h = (i as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59;
                    if h == 31 { f32::NAN } else { h as f32 % 7.0 - 3.0 }
                })
                .collect();
            let (values, indices) = pool(&input, planes, height, width);
            let (want_values, want_indices) = reference(&input, planes, height, width);
            prop_assert_eq!(indices, want_indices);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&values), bits(&want_values));
        }
    }
}
