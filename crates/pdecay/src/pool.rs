//! 2x2 max pooling with stride 2 over contiguous planes, with the argmax of every window.
//!
//! Each output takes the largest of its window's four inputs `[t0, t1; b0, b1]` and remembers
//! which one: its index in the input plane (`row * width + col`), as `max_pool2d_with_indices`
//! of burn and PyTorch gives it, so that their backward scatters can use it unchanged. Indices
//! are i32 (planes hold at most `i32::MAX` values): eight of them fill a vector register as
//! eight f32 values do, and they are half the bytes that i64 indices write and read back. Ties go
//! to the first candidate in row-major order; a NaN beats every number (and a later NaN an
//! earlier one), as in PyTorch.
//!
//! The choice is written with bit masks, not branches. After a ReLU half the windows tie at
//! zero and the rest are random, so a branch per candidate mispredicts often: the branchy loop
//! cost about 11 ns per output on the CNN's planes, 10-19% of its training step. Without
//! branches the row loop compiles to vector blends, eight outputs at a time; a row's last
//! block overlaps the one before, so the CNN's short rows (14 and 7 outputs) run in vector
//! blocks too (the pooling fell from 10.7% to 4.8% of a sparse CNN step's samples).
//!
//! A CNN pools `relu(conv(x) + b)`. [`bias_relu_max_pool_2x2`] does the bias and the ReLU as
//! it loads each candidate, and [`max_unpool_2x2`] is the backward of all three, so the
//! convolution's full-size output is read once forward and written once backward, where the
//! bias, the ReLU and the pooling each read and wrote it (twice with their gradients).

/// Pools `planes` contiguous `height x width` planes of `input` into `values` and `indices`
/// (`planes x height/2 x width/2` each). An odd last row or column is dropped.
///
/// # Panics
/// If `input` holds fewer than `planes * height * width` values, the outputs a different
/// number than `planes * (height / 2) * (width / 2)`, or a plane holds more than `i32::MAX` values.
pub fn max_pool_2x2(
    input: &[f32],
    planes: usize,
    height: usize,
    width: usize,
    values: &mut [f32],
    indices: &mut [i32],
) {
    pool_planes(input, planes, height, width, |_| None, values, indices);
}

/// `max_pool_2x2(relu(x + bias))` for `planes` contiguous `height x width` planes of `input`
/// ordered `[batch, channels]`, `bias` one per channel, ReLU as burn's (`x` where `x > 0` or
/// NaN, else 0): the same values, and the same indices where the pooled value is positive or
/// NaN. Where it is 0 the ReLU passes no gradient back, and the index is -1.
///
/// # Panics
/// If `input` holds fewer than `planes * height * width` values, the outputs a different
/// number than `planes * (height / 2) * (width / 2)`, `bias` is empty or does not divide
/// `planes`, or a plane holds more than `i32::MAX` values.
pub fn bias_relu_max_pool_2x2(
    input: &[f32],
    planes: usize,
    height: usize,
    width: usize,
    bias: &[f32],
    values: &mut [f32],
    indices: &mut [i32],
) {
    assert!(
        !bias.is_empty() && planes.is_multiple_of(bias.len()),
        "one bias per channel of [batch, channels] planes"
    );
    let bias_of = |plane: usize| Some(bias[plane % bias.len()]);
    pool_planes(input, planes, height, width, bias_of, values, indices);
}

/// The pooling, each plane's candidates through `relu(x + b)` where `bias_of` gives a `b`.
fn pool_planes(
    input: &[f32],
    planes: usize,
    height: usize,
    width: usize,
    bias_of: impl Fn(usize) -> Option<f32>,
    values: &mut [f32],
    indices: &mut [i32],
) {
    let (rows, cols) = (height / 2, width / 2);
    assert!(
        input.len() >= planes * height * width,
        "input shorter than its planes"
    );
    assert_eq!(values.len(), planes * rows * cols, "values length");
    assert_eq!(indices.len(), values.len(), "indices length");
    assert!(
        i32::try_from(height * width).is_ok(),
        "a plane of more than i32::MAX values: its indices do not fit an i32"
    );
    if cols == 0 {
        return;
    }
    let out_rows = values
        .chunks_exact_mut(cols)
        .zip(indices.chunks_exact_mut(cols));
    for (r, (values, indices)) in out_rows.enumerate() {
        let (plane, row) = (r / rows.max(1), r % rows.max(1));
        let top = plane * height * width + 2 * row * width;
        let reads = Rows {
            top: &input[top..top + 2 * cols],
            bottom: &input[top + width..top + width + 2 * cols],
            start: (2 * row * width) as i32,
            width: width as i32,
            bias: 0.0,
        };
        pool_row(reads, bias_of(plane), values, indices);
    }
}

/// The backward step of [`bias_relu_max_pool_2x2`] (and of [`max_pool_2x2`]): each output's
/// gradient `grad` goes to its window's maximum in `dx` (`planes` planes of `height x width`,
/// zero on entry: a fresh zeroed buffer, so that the full-size gradient is not zeroed twice),
/// none where its index is -1; `sums[plane]` is the gradient passed on within each plane,
/// summed in output order (the bias's, before summing over the batch).
///
/// # Panics
/// If the lengths do not match the shapes, or an index is outside its plane (not one that
/// the pooling gave).
pub fn max_unpool_2x2(
    grad: &[f32],
    indices: &[i32],
    planes: usize,
    height: usize,
    width: usize,
    dx: &mut [f32],
    sums: &mut [f32],
) {
    let (plane_len, out_len) = (height * width, (height / 2) * (width / 2));
    assert_eq!(grad.len(), planes * out_len, "grad: one per output");
    assert_eq!(indices.len(), grad.len(), "indices: one per output");
    assert_eq!(dx.len(), planes * plane_len, "dx: planes x height x width");
    assert_eq!(sums.len(), planes, "sums: one per plane");
    if out_len == 0 {
        sums.fill(0.0);
        return;
    }
    let planes_of = dx.chunks_exact_mut(plane_len.max(1));
    let outputs = grad
        .chunks_exact(out_len)
        .zip(indices.chunks_exact(out_len));
    for ((dx, (grad, indices)), sum) in planes_of.zip(outputs).zip(sums.iter_mut()) {
        let mut passed = 0.0;
        for (&g, &at) in grad.iter().zip(indices) {
            if at >= 0 {
                dx[at as usize] = g;
                passed += g;
            }
        }
        *sum = passed;
    }
}

/// Outputs chosen together: one vector register of lanes, so that the compiler turns each
/// step of [`pool_block`] into one vector instruction (it does not vectorise the row loop,
/// whose inputs interleave).
const BLOCK: usize = 8;

/// The narrower block for rows of 4 to 7 outputs (the CNN's second pooling has 7).
const HALF_BLOCK: usize = 4;

/// What one output row reads: windows `top[2c..2c+2]` over `bottom[2c..2c+2]`, `start` the
/// plane index of `top[0]`, `width` the plane's row length, and the `bias` of `relu(x + bias)`
/// (read only where the candidates go through the ReLU).
#[derive(Clone, Copy)]
struct Rows<'a> {
    top: &'a [f32],
    bottom: &'a [f32],
    start: i32,
    width: i32,
    bias: f32,
}

/// Pools the outputs `first..first + N` of a row into their slots.
#[inline(always)]
fn pool_at<const N: usize, const RELU: bool>(
    rows: Rows,
    first: usize,
    values: &mut [f32],
    indices: &mut [i32],
) {
    let window = 2 * first..2 * (first + N);
    let block = Rows {
        top: &rows.top[window.clone()],
        bottom: &rows.bottom[window],
        start: rows.start + 2 * first as i32,
        ..rows
    };
    pool_block::<N, RELU>(
        block,
        (&mut values[first..first + N]).try_into().unwrap(),
        (&mut indices[first..first + N]).try_into().unwrap(),
    );
}

/// The row's outputs in blocks of `N`, the last block ending at the row's end (overlapping
/// the one before when `N` does not divide the row: those outputs are computed twice, the
/// same both times), so that a short row still runs in vector blocks. `values.len() >= N`.
#[inline(always)]
fn pool_blocks<const N: usize, const RELU: bool>(
    rows: Rows,
    values: &mut [f32],
    indices: &mut [i32],
) {
    let n = values.len();
    for first in (0..n - N).step_by(N).chain([n - N]) {
        pool_at::<N, RELU>(rows, first, values, indices);
    }
}

/// One output row in blocks: [`BLOCK`] outputs at a time, [`HALF_BLOCK`] on rows shorter than
/// it, one at a time on rows shorter than that. With the bias and ReLU, always [`HALF_BLOCK`]:
/// the compiler left blocks of 8 of that longer body scalar (the fused op then took 2x the
/// three ops' time on conv1's output; in blocks of 4, 0.8x: the `sparse_conv` bench).
#[inline(always)]
fn pool_row_blocks<const RELU: bool>(rows: Rows, values: &mut [f32], indices: &mut [i32]) {
    match values.len() {
        n if n >= BLOCK && !RELU => pool_blocks::<BLOCK, RELU>(rows, values, indices),
        n if n >= HALF_BLOCK => pool_blocks::<HALF_BLOCK, RELU>(rows, values, indices),
        n => {
            for c in 0..n {
                pool_at::<1, RELU>(rows, c, values, indices);
            }
        }
    }
    if RELU {
        // the ReLU passes no gradient where it gave 0: index -1 (all bits set)
        for (index, &value) in indices.iter_mut().zip(values.iter()) {
            *index |= -((value == 0.0) as i32);
        }
    }
}

crate::dispatched! {
    /// One output row, each candidate through `relu(x + bias)` when there is a `bias`.
    fn pool_row(
        rows: Rows<'_>,
        bias: Option<f32>,
        values: &mut [f32],
        indices: &mut [i32]
    ) {
        match bias {
            None => pool_row_blocks::<false>(rows, values, indices),
            Some(bias) => pool_row_blocks::<true>(Rows { bias, ..rows }, values, indices),
        }
    }
}

/// `N` adjacent outputs: `N` windows of 2x2, the first starting at plane index `rows.start`;
/// with `RELU`, of `relu(x + bias)`.
#[inline(always)]
fn pool_block<const N: usize, const RELU: bool>(
    rows: Rows,
    values: &mut [f32; N],
    indices: &mut [i32; N],
) {
    let Rows {
        top,
        bottom,
        start,
        width,
        bias,
    } = rows;
    let load = |x: f32| if RELU { relu(x + bias) } else { x };
    let mut best: [f32; N] = std::array::from_fn(|l| load(top[2 * l]));
    let mut at = [0u32; N];
    for (k, row, column) in [(1u32, top, 1), (2, bottom, 0), (3, bottom, 1)] {
        for l in 0..N {
            (best[l], at[l]) = take_if_wins(best[l], at[l], load(row[2 * l + column]), k);
        }
    }
    *values = best;
    for l in 0..N {
        // corner `at` (0 top left, 1 top right, 2 bottom left, 3 bottom right)
        let corner = (at[l] & 1) as i32 + (at[l] >> 1) as i32 * width;
        indices[l] = start + 2 * l as i32 + corner;
    }
}

/// burn's ReLU: `x` where `x > 0` or NaN (it propagates), else 0 (`-0.0` included).
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    kept_if(x, (x > 0.0) | x.is_nan())
}

/// `x` where `keep`, else `+0.0`, as a bitwise select like [`take_if_wins`], so that in a
/// loop over lanes it stays a vector blend with no branch on the data.
#[inline(always)]
pub(crate) fn kept_if(x: f32, keep: bool) -> f32 {
    f32::from_bits(x.to_bits() & (keep as u32).wrapping_neg())
}

/// `(candidate, k)` when `candidate` is greater than `best` or NaN, else `(best, at)`: as a
/// bitwise select, so that no branch depends on the data.
#[inline(always)]
pub(crate) fn take_if_wins(best: f32, at: u32, candidate: f32, k: u32) -> (f32, u32) {
    let mask = (((candidate > best) | candidate.is_nan()) as u32).wrapping_neg();
    let value = (candidate.to_bits() & mask) | (best.to_bits() & !mask);
    (f32::from_bits(value), (k & mask) | (at & !mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool(input: &[f32], planes: usize, height: usize, width: usize) -> (Vec<f32>, Vec<i32>) {
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
    ) -> (Vec<f32>, Vec<i32>) {
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
                    indices.push(at as i32);
                }
            }
        }
        (values, indices)
    }

    #[test]
    fn bias_and_relu_worked_by_hand() {
        // two planes (batch 1, channels 2) of 2x4; biases -2 and 1
        let input = [
            1.0, 5.0, 4.0, 4.0, 3.0, 2.0, -1.0, 0.0, // channel 0
            -3.0, -2.0, 0.5, -1.0, -4.0, -1.0, -0.5, 0.25, // channel 1
        ];
        let (mut values, mut indices) = (vec![0.0; 4], vec![0; 4]);
        bias_relu_max_pool_2x2(&input, 2, 2, 4, &[-2.0, 1.0], &mut values, &mut indices);
        // relu(x - 2): [[0, 3], [1, 0]] -> 3 at 1; [[2, 2], [0, 0]] -> 2 at 2 (the first);
        // relu(x + 1): [[0, 0], [0, 0]] -> 0, no gradient; [[1.5, 0], [0.5, 1.25]] -> 1.5 at 2
        assert_eq!(values, [3.0, 2.0, 0.0, 1.5]);
        assert_eq!(indices, [1, 2, -1, 2]);
        // backward: each gradient to its index, none from the -1
        let (mut dx, mut sums) = (vec![0.0; 16], vec![9.0; 2]);
        max_unpool_2x2(
            &[10.0, 20.0, 30.0, 40.0],
            &indices,
            2,
            2,
            4,
            &mut dx,
            &mut sums,
        );
        let mut want = vec![0.0; 16];
        (want[1], want[2], want[8 + 2]) = (10.0, 20.0, 40.0);
        assert_eq!(dx, want);
        assert_eq!(sums, [30.0, 40.0]);
    }

    proptest! {
        #[test]
        fn bias_relu_pooling_is_the_pooling_of_the_relu(
            batch in 1usize..3,
            channels in 1usize..4,
            height in 1usize..9,
            width in 1usize..35,
            seed in any::<u64>(),
        ) {
            let planes = batch * channels;
            // halves and NaNs: sums with the bias tie, cross zero and land on it
            let draw = |i: u64| {
                let h = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
                if h == 63 { f32::NAN } else { h as f32 / 2.0 - 16.0 }
            };
            let input: Vec<f32> = (0..(planes * height * width) as u64).map(draw).collect();
            let bias: Vec<f32> = (0..channels as u64).map(|c| draw((c + 1) << 40) / 4.0).collect();
            let relu_of: Vec<f32> = input
                .iter()
                .enumerate()
                .map(|(i, &x)| relu(x + bias[i / (height * width) % channels]))
                .collect();
            let (want_values, want_indices) = reference(&relu_of, planes, height, width);
            let n = want_values.len();
            let (mut values, mut indices) = (vec![0.0; n], vec![0; n]);
            bias_relu_max_pool_2x2(&input, planes, height, width, &bias, &mut values, &mut indices);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&values), bits(&want_values));
            for (k, (&at, &want)) in indices.iter().zip(&want_indices).enumerate() {
                prop_assert_eq!(at, if want_values[k] == 0.0 { -1 } else { want });
            }
            // backward: the scatter of PyTorch's max_unpool, gated by the ReLU
            let grad: Vec<f32> = (0..n as u64).map(|k| draw((k + 1) << 50)).collect();
            let plane_len = height * width;
            let (mut dx, mut sums) = (vec![0.0; planes * plane_len], vec![f32::NAN; planes]);
            max_unpool_2x2(&grad, &indices, planes, height, width, &mut dx, &mut sums);
            let mut want_dx = vec![0.0f32; planes * plane_len];
            let mut want_sums = vec![0.0f32; planes];
            let out_len = n / planes;
            for k in 0..n {
                if want_values[k] != 0.0 {
                    want_dx[k / out_len * plane_len + want_indices[k] as usize] = grad[k];
                    want_sums[k / out_len] += grad[k];
                }
            }
            prop_assert_eq!(bits(&dx), bits(&want_dx));
            prop_assert_eq!(bits(&sums), bits(&want_sums));
        }

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
