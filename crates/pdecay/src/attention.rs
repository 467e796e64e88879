//! Causal self-attention over a fused `qkv` projection, forward and backward, for every head
//! of every sequence in one pass.
//!
//! A GPT block's attention reads `[Q | K | V] = x·W_qkv`, `[B, T, 3·D]` with `D = H·d` (`H`
//! heads of width `d`), and produces for each sequence `b` and head `h`
//!
//! ```text
//! S = Q·Kᵀ              (T x T, the scores)
//! P = softmax(c·S + M)  (c = 1/√d; M is -∞ above the diagonal: position t sees 0..=t)
//! O = P·V               (T x d, written to columns h·d.. of the [B, T, D] output)
//! ```
//!
//! and back, from `∂O`:
//!
//! ```text
//! ∂P = ∂O·Vᵀ,   ∂S = c·P∘(∂P - rowsum(P∘∂P)),   ∂Q = ∂S·K,   ∂K = ∂Sᵀ·Q,   ∂V = Pᵀ·∂O
//! ```
//!
//! Composed from a tensor library's ops that is a slice, a reshape and a transpose per operand,
//! a batched product per product (each head a separate small call) and copies back into the
//! `[B, T, D]` and `[B, T, 3·D]` layouts. Here every product reads and writes the heads in place
//! through strides, on the `gemm` crate, one sequence per task; only `P` is stored for the
//! backward pass.

use rayon::prelude::*;

use crate::kernel::exp;
use crate::matmul::{View, product};

/// The sizes of one attention call: `batch` sequences of `time` positions, `heads` heads of
/// `head` features each (the model width is `heads·head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence (`T`).
    pub time: usize,
    /// Heads (`H`).
    pub heads: usize,
    /// Features per head (`d`).
    pub head: usize,
}

impl AttentionShape {
    /// The model width `D = H·d`.
    pub fn width(&self) -> usize {
        self.heads * self.head
    }

    /// The scale `c = 1/√d` of the scores.
    pub fn scale(&self) -> f32 {
        1.0 / (self.head as f32).sqrt()
    }

    fn check(&self, qkv: &[f32]) {
        assert_eq!(
            qkv.len(),
            self.batch * self.time * 3 * self.width(),
            "attention: qkv is batch x time x 3·heads·head ({self:?})"
        );
    }
}

crate::dispatched! {
    /// The causal attention weights `P = softmax(scale·S + M)` of whole `time`-long rows of
    /// scores, `first_row` being the index of the first row within its `time x time` matrix:
    /// row `t`'s first `t + 1` weights, zeros after them.
    pub fn softmax_rows(scores: &[f32], probs: &mut [f32], time: usize, first_row: usize, scale: f32) {
        let rows = scores.chunks_exact(time).zip(probs.chunks_exact_mut(time));
        for (r, (row, out)) in rows.enumerate() {
            let seen = (first_row + r) % time + 1;
            let (row, (out, future)) = (&row[..seen], out.split_at_mut(seen));
            // scale > 0, so the scaled row's maximum is the scaled maximum
            let max = scale * row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            for (p, &s) in out.iter_mut().zip(row) {
                *p = exp(scale * s - max);
            }
            let inverse_sum = 1.0 / out.iter().sum::<f32>();
            for p in out.iter_mut() {
                *p *= inverse_sum;
            }
            future.fill(0.0);
        }
    }
}

crate::dispatched! {
    /// The scores' gradient from the weights' over whole rows, in place:
    /// `grad_j = scale·P_j·(grad_j - Σ_k P_k·grad_k)`, zero above the diagonal.
    pub fn softmax_backward_rows(probs: &[f32], grad: &mut [f32], time: usize, first_row: usize, scale: f32) {
        let rows = probs.chunks_exact(time).zip(grad.chunks_exact_mut(time));
        for (r, (row, out)) in rows.enumerate() {
            let seen = (first_row + r) % time + 1;
            let (row, (out, future)) = (&row[..seen], out.split_at_mut(seen));
            let dot: f32 = row.iter().zip(out.iter()).map(|(p, g)| p * g).sum();
            for (g, &p) in out.iter_mut().zip(row) {
                *g = scale * p * (*g - dot);
            }
            future.fill(0.0);
        }
    }
}

/// Rows of a `time x time` score matrix per product: in blocks, the products skip most keys
/// right of the diagonal (the rows `r0..r1` see keys `0..r1`).
const ROW_BLOCK: usize = 32;

/// `(r0, r1)` for each block of [`ROW_BLOCK`] rows (the last one shorter).
fn row_blocks(time: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..time)
        .step_by(ROW_BLOCK)
        .map(move |r0| (r0, (r0 + ROW_BLOCK).min(time)))
}

/// Where head `h`'s `Q`, `K` and `V` (`part` 0, 1, 2) sit in one sequence's `[T, 3·D]` rows.
fn qkv_view(shape: &AttentionShape, part: usize, h: usize) -> View {
    let width = shape.width();
    View::new(part * width + h * shape.head, [3 * width, 1])
}

/// Causal attention of every head of every sequence: returns the output `[B, T, D]` (heads
/// side by side, as the projection after attention reads them) and the weights `P`
/// `[B, H, T, T]` that [`causal_attention_backward`] needs.
///
/// # Panics
/// If `qkv` is not `[B, T, 3·D]`.
pub fn causal_attention(qkv: &[f32], shape: &AttentionShape) -> (Vec<f32>, Vec<f32>) {
    shape.check(qkv);
    let &AttentionShape {
        batch,
        time,
        heads,
        head,
    } = shape;
    let (width, square) = (shape.width(), time * time);
    let mut out = vec![0.0f32; batch * time * width];
    let mut probs = vec![0.0f32; batch * heads * square];
    if out.is_empty() || probs.is_empty() {
        return (out, probs);
    }
    let sequences = qkv.par_chunks(time * 3 * width);
    let outputs = out.par_chunks_mut(time * width);
    let weights = probs.par_chunks_mut(heads * square);
    sequences
        .zip(outputs)
        .zip(weights)
        .for_each(|((qkv, out), probs)| {
            let mut scores = vec![0.0f32; square];
            for (h, probs) in probs.chunks_exact_mut(square).enumerate() {
                let [q, k, v] = [0, 1, 2].map(|part| qkv_view(shape, part, h));
                let o = View::new(h * head, [width, 1]);
                // rows r0..r1 see keys 0..r1: the scores right of that are not computed (the
                // softmax writes the weights' zeros there)
                for (r0, r1) in row_blocks(time) {
                    let rows = View::new(r0 * time, [time, 1]);
                    product(
                        [r1 - r0, r1, head],
                        (&mut scores, rows),
                        (qkv, q.row(r0)),
                        (qkv, k.t()),
                        false,
                    );
                }
                softmax_rows(&scores, probs, time, 0, shape.scale());
                for (r0, r1) in row_blocks(time) {
                    let rows = View::new(r0 * time, [time, 1]);
                    product(
                        [r1 - r0, head, r1],
                        (out, o.row(r0)),
                        (probs, rows),
                        (qkv, v),
                        false,
                    );
                }
            }
        });
    (out, probs)
}

/// `∂qkv` `[B, T, 3·D]` from the output's gradient `grad` `[B, T, D]`, the input `qkv` and the
/// weights `probs` of [`causal_attention`].
///
/// # Panics
/// If the three do not have the sizes `shape` gives them.
pub fn causal_attention_backward(
    qkv: &[f32],
    probs: &[f32],
    grad: &[f32],
    shape: &AttentionShape,
) -> Vec<f32> {
    shape.check(qkv);
    let &AttentionShape {
        batch,
        time,
        heads,
        head,
    } = shape;
    let (width, square) = (shape.width(), time * time);
    assert_eq!(probs.len(), batch * heads * square, "attention: probs");
    assert_eq!(grad.len(), batch * time * width, "attention: grad");
    let mut grad_qkv = vec![0.0f32; qkv.len()];
    if grad_qkv.is_empty() || probs.is_empty() {
        return grad_qkv;
    }
    let sequences = qkv.par_chunks(time * 3 * width);
    let grads = grad_qkv.par_chunks_mut(time * 3 * width);
    let weights = probs.par_chunks(heads * square);
    let outputs = grad.par_chunks(time * width);
    sequences
        .zip(grads)
        .zip(weights.zip(outputs))
        .for_each(|((qkv, grad_qkv), (probs, grad))| {
            let mut scores = vec![0.0f32; square];
            for (h, probs) in probs.chunks_exact(square).enumerate() {
                let [q, k, v] = [0, 1, 2].map(|part| qkv_view(shape, part, h));
                let o = View::new(h * head, [width, 1]);
                // ∂P = ∂O·Vᵀ for rows r0..r1 and keys 0..r1, then ∂S in place (zero right of
                // the diagonal)
                for (r0, r1) in row_blocks(time) {
                    let rows = View::new(r0 * time, [time, 1]);
                    product(
                        [r1 - r0, r1, head],
                        (&mut scores, rows),
                        (grad, o.row(r0)),
                        (qkv, v.t()),
                        false,
                    );
                }
                softmax_backward_rows(probs, &mut scores, time, 0, shape.scale());
                // ∂Q = ∂S·K over the keys each row sees; ∂K = ∂Sᵀ·Q and ∂V = Pᵀ·∂O for keys
                // r0..r1 over the rows that see them, r0..T; each into its columns of ∂qkv
                for (r0, r1) in row_blocks(time) {
                    let rows = View::new(r0 * time, [time, 1]);
                    product(
                        [r1 - r0, head, r1],
                        (grad_qkv, q.row(r0)),
                        (&scores, rows),
                        (qkv, k),
                        false,
                    );
                    let keys = View::new(r0 * time + r0, [1, time]);
                    let seen_by = time - r0;
                    product(
                        [r1 - r0, head, seen_by],
                        (grad_qkv, k.row(r0)),
                        (&scores, keys),
                        (qkv, q.row(r0)),
                        false,
                    );
                    product(
                        [r1 - r0, head, seen_by],
                        (grad_qkv, v.row(r0)),
                        (probs, keys),
                        (grad, o.row(r0)),
                        false,
                    );
                }
            }
        });
    grad_qkv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{assert_close, uniforms};
    use proptest::prelude::*;

    /// The output and `∂qkv` by the definitions, in f64, one score at a time (no products, no
    /// blocks, the mask as `j <= t`).
    fn by_definition(qkv: &[f32], grad: &[f32], s: &AttentionShape) -> (Vec<f32>, Vec<f32>) {
        let (t_len, d, w) = (s.time, s.head, s.width());
        let c = 1.0 / (d as f64).sqrt();
        let mut out = vec![0.0; s.batch * t_len * w];
        let mut grad_qkv = vec![0.0; qkv.len()];
        for b in 0..s.batch {
            for h in 0..s.heads {
                let at = |part: usize, t: usize, i: usize| {
                    ((b * t_len + t) * 3 * w) + part * w + h * d + i
                };
                let x = |part, t, i| qkv[at(part, t, i)] as f64;
                let dout = |t: usize, i: usize| grad[(b * t_len + t) * w + h * d + i] as f64;
                for t in 0..t_len {
                    let scores: Vec<f64> = (0..=t)
                        .map(|j| c * (0..d).map(|i| x(0, t, i) * x(1, j, i)).sum::<f64>())
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                    let p: Vec<f64> = e.iter().map(|v| v / e.iter().sum::<f64>()).collect();
                    for i in 0..d {
                        out[(b * t_len + t) * w + h * d + i] =
                            (0..=t).map(|j| p[j] * x(2, j, i)).sum::<f64>() as f32;
                    }
                    // ∂P_j = ∂O_t·V_j, ∂S_j = c·P_j·(∂P_j - Σ_k P_k·∂P_k)
                    let dp: Vec<f64> = (0..=t)
                        .map(|j| (0..d).map(|i| dout(t, i) * x(2, j, i)).sum())
                        .collect();
                    let dot: f64 = (0..=t).map(|j| p[j] * dp[j]).sum();
                    for j in 0..=t {
                        let ds = c * p[j] * (dp[j] - dot);
                        for i in 0..d {
                            grad_qkv[at(0, t, i)] += ds * x(1, j, i);
                            grad_qkv[at(1, j, i)] += ds * x(0, t, i);
                            grad_qkv[at(2, j, i)] += p[j] * dout(t, i);
                        }
                    }
                }
            }
        }
        (out, grad_qkv.into_iter().map(|g| g as f32).collect())
    }

    proptest! {
        /// Any sizes, times across several row blocks and not multiples of them: the output and
        /// every entry of `∂qkv` as the definitions give them.
        #[test]
        fn attention_follows_its_definition(
            batch in 1usize..4,
            time in prop_oneof![1usize..6, 14usize..20, Just(33usize), Just(64usize)],
            heads in 1usize..4,
            head in 1usize..9,
            seed in 0u64..1000,
        ) {
            let shape = AttentionShape { batch, time, heads, head };
            let mut random = uniforms(seed);
            let qkv: Vec<f32> = (0..batch * time * 3 * shape.width())
                .map(|_| 4.0 * random() - 2.0)
                .collect();
            let grad: Vec<f32> = (0..batch * time * shape.width())
                .map(|_| 2.0 * random() - 1.0)
                .collect();
            let (out, probs) = causal_attention(&qkv, &shape);
            let grad_qkv = causal_attention_backward(&qkv, &probs, &grad, &shape);
            let (expected_out, expected_grad) = by_definition(&qkv, &grad, &shape);
            assert_close(&out, &expected_out, "output");
            assert_close(&grad_qkv, &expected_grad, "∂qkv");
        }
    }

    #[test]
    fn empty_shapes_give_empty_results() {
        for shape in [
            AttentionShape {
                batch: 0,
                time: 4,
                heads: 2,
                head: 3,
            },
            AttentionShape {
                batch: 2,
                time: 0,
                heads: 2,
                head: 3,
            },
        ] {
            let (out, probs) = causal_attention(&[], &shape);
            assert!(out.is_empty() && probs.is_empty());
            assert!(causal_attention_backward(&[], &probs, &out, &shape).is_empty());
        }
    }

    #[test]
    fn a_hand_worked_three_by_three() {
        // scale 0.5 of [[2, 9, 9], [0, 2 ln 3, 9], [2, 2, 2]]: row 0 is [1, 0, 0]; row 1 is
        // softmax([0, ln 3]) = [1/4, 3/4]; row 2 is uniform
        let ln3 = 3.0f32.ln();
        let scores = [2.0, 9.0, 9.0, 0.0, 2.0 * ln3, 9.0, 2.0, 2.0, 2.0];
        let mut probs = [f32::NAN; 9];
        softmax_rows(&scores, &mut probs, 3, 0, 0.5);
        let third = 1.0 / 3.0;
        let expected = [1.0, 0.0, 0.0, 0.25, 0.75, 0.0, third, third, third];
        for (p, e) in probs.iter().zip(expected) {
            assert!((p - e).abs() < 1e-6, "{probs:?}");
        }
        // backward of row 1 with grad [1, 5, 7]: dot = 1/4 + 15/4 = 4, so 0.5·[1/4·(1-4),
        // 3/4·(5-4)] = [-3/8, 3/8] and 0 in the masked column whatever its gradient
        let mut grad = [0.0, 0.0, 0.0, 1.0, 5.0, 7.0, 0.0, 0.0, 0.0];
        softmax_backward_rows(&probs, &mut grad, 3, 0, 0.5);
        assert!((grad[3] + 0.375).abs() < 1e-6 && (grad[4] - 0.375).abs() < 1e-6);
        assert_eq!(grad[5], 0.0);
    }
}
