//! Layer normalisation over the last dimension, forward and backward, each one pass over the
//! rows.
//!
//! Each row `x` of `n` values becomes
//!
//! ```text
//! μ = Σ x_i / n,   σ² = Σ (x_i - μ)² / n,   r = 1/√(σ² + ε),   x̂_i = (x_i - μ)·r
//! y_i = x̂_i·γ_i + β_i
//! ```
//!
//! and back, from `∂y` (with `g_i = ∂y_i·γ_i`):
//!
//! ```text
//! ∂x_i = r·(g_i - Σ_j g_j / n - x̂_i·Σ_j g_j·x̂_j / n),   ∂γ_i = Σ_rows ∂y_i·x̂_i,   ∂β_i = Σ_rows ∂y_i
//! ```
//!
//! A tensor library without a fused op runs this as about ten elementwise ops and reductions
//! forward and twice that backward, each a pass over the tensor with its own buffer. Only `μ`
//! and `r` per row are kept for the backward pass.

use rayon::prelude::*;

use crate::kernel::lane_sum;

/// Values per parallel task (whole rows, at least one): a task of a few microseconds, since
/// waking a thread costs about as much. The tasks' partial sums of `∂γ` and `∂β` are added in
/// task order, so the result does not depend on how many threads run.
const VALUES_PER_TASK: usize = 1 << 14;

/// Rows per parallel task for rows of `width` values.
fn rows_per_task(width: usize) -> usize {
    (VALUES_PER_TASK / width).max(1)
}

crate::dispatched! {
    /// `y` and `(μ, r)` per row of `x` (rows of `gamma.len()` values).
    fn normalize_rows(
        x: &[f32],
        gamma: &[f32],
        beta: Option<&[f32]>,
        epsilon: f32,
        y: &mut [f32],
        stats: &mut [f32]
    ) {
        let width = gamma.len();
        let rows = x.chunks_exact(width).zip(y.chunks_exact_mut(width));
        for ((x, y), stats) in rows.zip(stats.chunks_exact_mut(2)) {
            let mean = lane_sum(x, x, x, |v, _, _| v) / width as f32;
            let variance = lane_sum(x, x, x, |v, _, _| (v - mean) * (v - mean)) / width as f32;
            let r = 1.0 / (variance + epsilon).sqrt();
            for ((y, &x), &g) in y.iter_mut().zip(x).zip(gamma) {
                *y = (x - mean) * r * g;
            }
            if let Some(beta) = beta {
                for (y, &b) in y.iter_mut().zip(beta) {
                    *y += b;
                }
            }
            stats.copy_from_slice(&[mean, r]);
        }
    }
}

crate::dispatched! {
    /// `∂x` of the rows of `x`, and `∂γ`, `∂β` of these rows added to `grad_gamma`, `grad_beta`.
    fn normalize_rows_backward(
        x: &[f32],
        gamma: &[f32],
        stats: &[f32],
        grad: &[f32],
        grad_x: &mut [f32],
        grad_gamma: &mut [f32],
        grad_beta: &mut [f32]
    ) {
        let width = gamma.len();
        let n = width as f32;
        let rows = x.chunks_exact(width).zip(grad.chunks_exact(width));
        for (((x, dy), dx), stats) in rows.zip(grad_x.chunks_exact_mut(width)).zip(stats.chunks_exact(2)) {
            let (mean, r) = (stats[0], stats[1]);
            let sum_g = lane_sum(dy, gamma, gamma, |dy, gamma, _| dy * gamma);
            let sum_g_xhat = lane_sum(x, dy, gamma, |x, dy, gamma| dy * gamma * (x - mean) * r);
            let (a, b) = (sum_g / n, sum_g_xhat / n);
            for (((dx, &x), &dy), &gamma) in dx.iter_mut().zip(x).zip(dy).zip(gamma) {
                let x_hat = (x - mean) * r;
                *dx = r * (dy * gamma - a - x_hat * b);
            }
            for (((dg, db), &x), &dy) in grad_gamma.iter_mut().zip(grad_beta.iter_mut()).zip(x).zip(dy) {
                *dg += dy * (x - mean) * r;
                *db += dy;
            }
        }
    }
}

fn check(x: &[f32], gamma: &[f32], beta: Option<&[f32]>) {
    assert!(
        !gamma.is_empty() && x.len().is_multiple_of(gamma.len()),
        "layer_norm: x ({} values) is rows of gamma's width ({})",
        x.len(),
        gamma.len()
    );
    if let Some(beta) = beta {
        assert_eq!(
            beta.len(),
            gamma.len(),
            "layer_norm: beta has gamma's width"
        );
    }
}

/// `y` (`x`'s shape) and the statistics `(μ, r)` per row that [`layer_norm_backward`] needs,
/// for rows of `gamma.len()` values.
///
/// # Panics
/// If `gamma` is empty, `x` is not whole rows, or `beta` is not as wide as `gamma`.
pub fn layer_norm(
    x: &[f32],
    gamma: &[f32],
    beta: Option<&[f32]>,
    epsilon: f32,
) -> (Vec<f32>, Vec<f32>) {
    check(x, gamma, beta);
    let width = gamma.len();
    let rows = x.len() / width;
    let mut y = vec![0.0f32; x.len()];
    let mut stats = vec![0.0f32; 2 * rows];
    let rows_per_task = rows_per_task(width);
    let chunk = rows_per_task * width;
    if x.len() <= chunk {
        // one task: on this thread (rayon would hand it to its pool and wait)
        normalize_rows(x, gamma, beta, epsilon, &mut y, &mut stats);
        return (y, stats);
    }
    x.par_chunks(chunk)
        .zip(y.par_chunks_mut(chunk))
        .zip(stats.par_chunks_mut(2 * rows_per_task))
        .for_each(|((x, y), stats)| normalize_rows(x, gamma, beta, epsilon, y, stats));
    (y, stats)
}

/// `(∂x, ∂γ, ∂β)` from the output's gradient `grad`, the input `x`, `gamma` and the `stats` of
/// [`layer_norm`].
///
/// # Panics
/// If the sizes do not agree (as [`layer_norm`], and `grad` as `x`, `stats` two per row).
pub fn layer_norm_backward(
    x: &[f32],
    gamma: &[f32],
    stats: &[f32],
    grad: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    check(x, gamma, None);
    let width = gamma.len();
    assert_eq!(grad.len(), x.len(), "layer_norm: grad has x's shape");
    assert_eq!(
        stats.len(),
        2 * (x.len() / width),
        "layer_norm: two stats per row"
    );
    let mut grad_x = vec![0.0f32; x.len()];
    let rows_per_task = rows_per_task(width);
    let chunk = rows_per_task * width;
    // one task's rows: their ∂x, and their own partial sums of ∂γ and ∂β
    let task = |x: &[f32], grad: &[f32], grad_x: &mut [f32], stats: &[f32]| {
        let (mut grad_gamma, mut grad_beta) = (vec![0.0f32; width], vec![0.0f32; width]);
        normalize_rows_backward(
            x,
            gamma,
            stats,
            grad,
            grad_x,
            &mut grad_gamma,
            &mut grad_beta,
        );
        (grad_gamma, grad_beta)
    };
    if x.len() <= chunk {
        // one task: on this thread, as the forward
        let (grad_gamma, grad_beta) = task(x, grad, &mut grad_x, stats);
        return (grad_x, grad_gamma, grad_beta);
    }
    let partial: Vec<(Vec<f32>, Vec<f32>)> = x
        .par_chunks(chunk)
        .zip(grad.par_chunks(chunk))
        .zip(grad_x.par_chunks_mut(chunk))
        .zip(stats.par_chunks(2 * rows_per_task))
        .map(|(((x, grad), grad_x), stats)| task(x, grad, grad_x, stats))
        .collect();
    let (mut grad_gamma, mut grad_beta) = (vec![0.0f32; width], vec![0.0f32; width]);
    for (g, b) in &partial {
        grad_gamma.iter_mut().zip(g).for_each(|(s, v)| *s += v);
        grad_beta.iter_mut().zip(b).for_each(|(s, v)| *s += v);
    }
    (grad_x, grad_gamma, grad_beta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, uniforms};
    use proptest::prelude::*;

    #[test]
    fn a_hand_worked_row() {
        // x = [1, 2, 3, 6]: μ = 3, σ² = (4 + 1 + 0 + 9)/4 = 3.5; with ε = 0.5, r = 1/2, so
        // x̂ = [-1, -1/2, 0, 3/2]; γ = [1, 2, 3, 4], β = [0, 0, 1, -1] give y = [-1, -1, 1, 5]
        let (x, gamma, beta) = (
            [1.0, 2.0, 3.0, 6.0],
            [1.0, 2.0, 3.0, 4.0],
            [0.0, 0.0, 1.0, -1.0],
        );
        let (y, stats) = layer_norm(&x, &gamma, Some(&beta), 0.5);
        assert_eq!(y, [-1.0, -1.0, 1.0, 5.0]);
        assert_eq!(stats, [3.0, 0.5]);
        // ∂y = [1, 0, 0, 0]: g = [1, 0, 0, 0], Σg/n = 1/4, Σg·x̂/n = -1/4, so
        // ∂x = 1/2·([1, 0, 0, 0] - 1/4 + x̂/4) = [0.25, -0.1875, -0.125, 0.0625]
        let (dx, dgamma, dbeta) = layer_norm_backward(&x, &gamma, &stats, &[1.0, 0.0, 0.0, 0.0]);
        assert_eq!(dx, [0.25, -0.1875, -0.125, 0.0625]);
        assert_eq!(dgamma, [-1.0, 0.0, 0.0, 0.0]);
        assert_eq!(dbeta, [1.0, 0.0, 0.0, 0.0]);
    }

    /// The gradients in f64 by central differences of `Σ ∂y·y`, the loss whose gradient they
    /// are.
    fn by_differences(x: &[f32], gamma: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let width = gamma.len();
        let loss = |x: &[f64], gamma: &[f64]| -> f64 {
            x.chunks(width)
                .zip(grad.chunks(width))
                .map(|(x, dy)| {
                    let mean = x.iter().sum::<f64>() / width as f64;
                    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / width as f64;
                    let r = 1.0 / (var + 1e-5).sqrt();
                    x.iter()
                        .zip(dy)
                        .zip(gamma)
                        .map(|((x, &dy), g)| dy as f64 * (x - mean) * r * g)
                        .sum::<f64>()
                })
                .sum()
        };
        let (x, gamma): (Vec<f64>, Vec<f64>) = (
            x.iter().map(|&v| v as f64).collect(),
            gamma.iter().map(|&v| v as f64).collect(),
        );
        let h = 1e-6;
        let derivative = |v: &[f64], i: usize, f: &dyn Fn(&[f64]) -> f64| {
            let (mut up, mut down) = (v.to_vec(), v.to_vec());
            up[i] += h;
            down[i] -= h;
            ((f(&up) - f(&down)) / (2.0 * h)) as f32
        };
        let dx = (0..x.len())
            .map(|i| derivative(&x, i, &|x| loss(x, &gamma)))
            .collect();
        let dgamma = (0..gamma.len())
            .map(|i| derivative(&gamma, i, &|g| loss(&x, g)))
            .collect();
        (dx, dgamma)
    }

    proptest! {
        /// Any widths and row counts (across several parallel tasks): `y` as the definition
        /// gives it in f64, `∂x` and `∂γ` the loss's derivatives by central differences, `∂β`
        /// the column sums of `∂y`.
        #[test]
        fn gradients_are_the_derivatives(
            width in 1usize..20,
            rows in prop_oneof![1usize..5, Just(33usize), Just(70usize)],
            seed in 0u64..1000,
        ) {
            let mut random = uniforms(seed);
            let mut values = |n: usize, scale: f32| -> Vec<f32> {
                (0..n).map(|_| scale * (2.0 * random() - 1.0)).collect()
            };
            let (x, gamma, grad) = (values(rows * width, 3.0), values(width, 2.0), values(rows * width, 1.0));
            let (y, stats) = layer_norm(&x, &gamma, None, 1e-5);
            prop_assert_eq!(stats.len(), 2 * rows);
            let (dx, dgamma, dbeta) = layer_norm_backward(&x, &gamma, &stats, &grad);
            let (expected_dx, expected_dgamma) = by_differences(&x, &gamma, &grad);
            // ∂x_i is r times a difference of terms of size |g|: f32 keeps it to ~1e-7 of
            // r·Σ|g|, a large error relative to ∂x where the row's values nearly agree
            for (row, ((dx, expected), stats)) in dx
                .chunks(width)
                .zip(expected_dx.chunks(width))
                .zip(stats.chunks(2))
                .enumerate()
            {
                let g: f32 = (0..width).map(|i| (grad[row * width + i] * gamma[i]).abs()).sum();
                let tolerance = 1e-5 * stats[1] * (1.0 + g);
                for (a, b) in dx.iter().zip(expected) {
                    prop_assert!((a - b).abs() <= tolerance, "∂x row {}: {} against {}", row, a, b);
                }
            }
            assert_close(&dgamma, &expected_dgamma, "∂γ");
            for (i, db) in dbeta.iter().enumerate() {
                let column: f32 = grad.iter().skip(i).step_by(width).sum();
                prop_assert!((db - column).abs() <= 1e-5 * (1.0 + column.abs()));
            }
            let expected_y: Vec<f32> = x
                .chunks(width)
                .flat_map(|x| {
                    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
                    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
                    let r = 1.0 / (var + 1e-5).sqrt();
                    x.iter()
                        .zip(&gamma)
                        .map(move |(&v, &g)| ((v as f64 - mean) * r * g as f64) as f32)
                        .collect::<Vec<_>>()
                })
                .collect();
            assert_close(&y, &expected_y, "y");
        }
    }

    /// Many rows (several parallel tasks) give each row what it gives alone, bit for bit, and
    /// `∂γ`, `∂β` the sums of the rows' own.
    #[test]
    fn tasks_change_nothing() {
        let (width, rows) = (16, 3000);
        let mut random = uniforms(7);
        let mut values = |n: usize| -> Vec<f32> { (0..n).map(|_| 2.0 * random() - 1.0).collect() };
        let (x, gamma, beta, grad) = (
            values(rows * width),
            values(width),
            values(width),
            values(rows * width),
        );
        assert!(rows * width > 2 * VALUES_PER_TASK);
        let (y, stats) = layer_norm(&x, &gamma, Some(&beta), 1e-5);
        let (dx, dgamma, dbeta) = layer_norm_backward(&x, &gamma, &stats, &grad);
        let (mut sum_gamma, mut sum_beta) = (vec![0.0f64; width], vec![0.0f64; width]);
        for r in 0..rows {
            let row = r * width..(r + 1) * width;
            let (y_row, stats_row) = layer_norm(&x[row.clone()], &gamma, Some(&beta), 1e-5);
            assert_eq!(y_row, y[row.clone()]);
            assert_eq!(stats_row, stats[2 * r..2 * r + 2]);
            let (dx_row, dg, db) =
                layer_norm_backward(&x[row.clone()], &gamma, &stats_row, &grad[row.clone()]);
            assert_eq!(dx_row, dx[row]);
            sum_gamma
                .iter_mut()
                .zip(&dg)
                .for_each(|(s, &v)| *s += v as f64);
            sum_beta
                .iter_mut()
                .zip(&db)
                .for_each(|(s, &v)| *s += v as f64);
        }
        let as_f32 = |v: Vec<f64>| v.into_iter().map(|v| v as f32).collect::<Vec<_>>();
        assert_close(&dgamma, &as_f32(sum_gamma), "∂γ");
        assert_close(&dbeta, &as_f32(sum_beta), "∂β");
    }
}
