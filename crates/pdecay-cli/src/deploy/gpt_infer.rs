//! Decoding a GPT file one token at a time with a KV cache, its linear layers dense or sparse.
//!
//! At batch 1 every linear layer is a matrix-vector product over the weights, which is where a
//! sparse layout pays: it touches the non-zeros only (SELL, [`pdecay::sell`], for one position;
//! CSR for the window's batched recompute). Each step computes one position:
//! the new token's query, key and value; its key and value join the cache, and attention reads
//! every cached position (llm.c's and nanoGPT's arithmetic, in `[out, in]` row-major loops).
//!
//! **The window.** The model learned absolute positions 0..T (T = `block_size`), so when the
//! context is full, sliding it by one token would move every cached position: no cache
//! survives that, and nanoGPT's `generate` (crop to the last T tokens, recompute everything)
//! pays a whole window per token. [`Decoder`] instead drops the oldest half of the window when
//! it fills and recomputes the cache for the T/2 tokens it keeps: a token costs one position
//! plus, amortised, one more (T/2 positions every T/2 tokens), and the model always sees at
//! least T/2 tokens of context. A rolling cache would keep every token but hand the model
//! positions it never trained on.

use std::time::Instant;

use anyhow::{Result, ensure};
use pdecay::csr::{Csr, transpose};
use pdecay::kernel::{exp, gelu, lane_sum};
use pdecay::layer_norm::layer_norm;
use pdecay::matmul::{View, product};
use pdecay::sell::Sell;
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::gpt_file::GptFile;
use crate::models::gpt::LAYER_NORM_EPSILON;
use crate::models::sampling::{Sampling, check_temperature, draw, prompt_tokens};

/// Where the linear layers run sparse (SELL at one position, CSR for several).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SparseMode {
    /// Every linear layer sparse, or none: whichever decoded faster in a short alternated
    /// timing of the whole model on this machine (a layer timed alone, its weights hot in
    /// cache, misjudges decoding, where every layer's weights stream in once per token).
    Auto,
    /// Every linear layer sparse.
    On,
    /// Every linear layer dense.
    Off,
}

/// `Y = X·Wᵀ + bias` for `n` rows of `X` (`[n, in]`, row-major) and a row-major `W`
/// (`[out, in]`); `Y` is `[n, out]`. gemm (burn-flex's own kernels) reads `W` in place as
/// `Wᵀ` through its strides, one thread: at batch 1 a thread hand-off costs more than the
/// product.
fn dense_rows(w: &[f32], x: &[f32], n: usize, bias: Option<&[f32]>, y: &mut [f32]) {
    let (cols, rows) = (x.len() / n, y.len() / n);
    assert!(
        w.len() == rows * cols && x.len() == n * cols && y.len() == n * rows,
        "dense_rows: W is [out, in], X [n, in], Y [n, out]"
    );
    if rows == 0 {
        return; // a compacted block without heads or units
    }
    match bias {
        Some(b) => y.chunks_mut(rows).for_each(|row| row.copy_from_slice(b)),
        None => y.fill(0.0),
    }
    // X (n × cols), W read as Wᵀ (cols × rows: element (k, j) at j·cols + k), Y (n × rows)
    product(
        [n, rows, cols],
        (y, View::rows(rows)),
        (x, View::rows(cols)),
        (w, View::rows(cols).t()),
        true,
    );
}

/// A linear layer's weights: `[out, in]` row-major, or sparse: CSR for several positions at
/// once (one pass over the entries serves them all) and SELL for one (its product runs
/// [`SLICE`](pdecay::sell::SLICE) rows per step, where CSR's pays a horizontal sum per short
/// row).
enum Weights {
    Dense(Vec<f32>),
    Sparse(Csr, Sell),
}

/// `y = W·x + b`.
struct Linear {
    rows: usize,
    weights: Weights,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// Sparse (dropping |w| below `threshold`, as sparse files do) or dense.
    fn new(w: &[f32], rows: usize, cols: usize, bias: Option<Vec<f32>>, csr: Option<f32>) -> Self {
        let weights = if let Some(threshold) = csr {
            let csr = Csr::from_dense(w, rows, cols, threshold);
            let sell = Sell::from_csr(&csr);
            Weights::Sparse(csr, sell)
        } else {
            Weights::Dense(w.to_vec())
        };
        Self {
            rows,
            weights,
            bias,
        }
    }

    /// `Y = X·Wᵀ + b` for `n` rows of `X` (`[n, in]`); `Y` is `[n, out]`.
    fn forward_rows(&self, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0.0; n * self.rows];
        if n == 1 {
            self.forward(x, &mut y);
            return y;
        }
        match &self.weights {
            Weights::Dense(w) => dense_rows(w, x, n, self.bias.as_deref(), &mut y),
            Weights::Sparse(csr, _) => {
                y = transpose(&self.sparse_t(&transpose(x, n, csr.cols), n), self.rows, n)
            }
        }
        y
    }

    /// `Yᵀ = W·Xᵀ + b` on a sparse layer for `n` positions given transposed (`x_t` `[in, n]`);
    /// `Yᵀ` is `[out, n]`: CSR's batch product, which runs with the positions innermost.
    ///
    /// # Panics
    /// If the layer is dense.
    fn sparse_t(&self, x_t: &[f32], n: usize) -> Vec<f32> {
        let Weights::Sparse(csr, _) = &self.weights else {
            panic!("sparse_t: a sparse layer");
        };
        let mut y_t = vec![0.0; n * self.rows];
        csr.matmul_t(x_t, n, self.bias.as_deref(), &mut y_t);
        y_t
    }

    fn forward(&self, x: &[f32], y: &mut [f32]) {
        match &self.weights {
            Weights::Sparse(_, sell) => sell.matvec(x, self.bias.as_deref(), y),
            Weights::Dense(w) => dense_rows(w, x, 1, self.bias.as_deref(), y),
        }
    }

    fn is_sparse(&self) -> bool {
        matches!(self.weights, Weights::Sparse(..))
    }
}

/// LayerNorm over the width, with the trained model's ε.
struct Norm {
    gain: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl Norm {
    /// Each row of `x` (`[n, C]`) normalised.
    fn rows(&self, x: &[f32]) -> Vec<f32> {
        layer_norm(
            x,
            &self.gain,
            self.bias.as_deref(),
            LAYER_NORM_EPSILON as f32,
        )
        .0
    }
}

pdecay::dispatched! {
    /// GELU of every value, in place.
    fn gelu_in_place(values: &mut [f32]) {
        values.iter_mut().for_each(|v| *v = gelu(*v));
    }
}

/// Positions whose attention scores [`attend`] computes together (one AVX-512 register); the
/// transposed key cache's rows are padded to a multiple of it.
const KEY_BLOCK: usize = 16;

/// One head's slice of a block's cache.
#[derive(Clone, Copy)]
struct HeadCache<'a> {
    /// The head's key components as rows of `stride_t` positions (component `d` of position
    /// `s` at `d·stride_t + s`).
    keys_t: &'a [f32],
    stride_t: usize,
    /// `[positions, stride]`, the head's columns at `offset..offset + head`.
    values: &'a [f32],
    stride: usize,
    offset: usize,
}

pdecay::dispatched! {
    /// One head's attention for one query: `out = Σ_s softmax(scale·q·k_s)·v_s` over the
    /// `scores.len()` positions seen. With the keys transposed, the scores of all positions
    /// build up as contiguous multiply-adds, one per component, with no horizontal sums.
    /// `scores` is scratch.
    fn attend(q: &[f32], cache: HeadCache<'_>, scale: f32, scores: &mut [f32], out: &mut [f32]) {
        let HeadCache { keys_t, stride_t, values, stride, offset } = cache;
        // KEY_BLOCK positions' scores at a time, kept in registers over the components
        for (block, scores) in scores.chunks_mut(KEY_BLOCK).enumerate() {
            let mut acc = [0.0f32; KEY_BLOCK];
            for (d, &q) in q.iter().enumerate() {
                let at = d * stride_t + block * KEY_BLOCK;
                let keys: &[f32; KEY_BLOCK] = keys_t[at..at + KEY_BLOCK].try_into().unwrap();
                for lane in 0..KEY_BLOCK {
                    acc[lane] += q * keys[lane];
                }
            }
            scores.copy_from_slice(&acc[..scores.len()]);
        }
        let mut tops = [f32::NEG_INFINITY; KEY_BLOCK];
        for block in scores.chunks(KEY_BLOCK) {
            for (top, &score) in tops.iter_mut().zip(block) {
                *top = top.max(score);
            }
        }
        let top = tops.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scores.iter_mut().for_each(|score| *score = exp(scale * (*score - top)));
        let total = lane_sum(scores, scores, scores, |s, _, _| s);
        scores.iter_mut().for_each(|weight| *weight /= total);
        // KEY_BLOCK output components at a time, kept in registers over the positions
        for (chunk, out) in out.chunks_mut(KEY_BLOCK).enumerate() {
            let first = offset + chunk * KEY_BLOCK;
            if let Ok(out) = <&mut [f32; KEY_BLOCK]>::try_from(&mut *out) {
                let mut acc = [0.0f32; KEY_BLOCK];
                for (s, &weight) in scores.iter().enumerate() {
                    let at = s * stride + first;
                    let v: &[f32; KEY_BLOCK] = values[at..at + KEY_BLOCK].try_into().unwrap();
                    for lane in 0..KEY_BLOCK {
                        acc[lane] += weight * v[lane];
                    }
                }
                *out = acc;
            } else {
                out.fill(0.0);
                let len = out.len();
                for (s, &weight) in scores.iter().enumerate() {
                    let at = s * stride + first;
                    for (o, v) in out.iter_mut().zip(&values[at..at + len]) {
                        *o += weight * v;
                    }
                }
            }
        }
    }
}

struct Block {
    ln_1: Norm,
    /// `[3·heads·head, C]`: queries, keys, values of the kept heads.
    c_attn: Linear,
    heads: usize,
    c_proj: Linear,
    ln_2: Norm,
    c_fc: Linear,
    mlp_proj: Linear,
}

impl Block {
    /// The MLP's output `[n, C]` for `n` normalised positions `[n, C]`. Sparse layers at several
    /// positions run on CSR's batch product, which takes and gives them transposed; GELU is
    /// elementwise, so the hidden layer (the widest activations) stays transposed between the
    /// two products instead of being transposed back and forth.
    fn mlp(&self, normed: &[f32], n: usize) -> Vec<f32> {
        if n > 1 && self.c_fc.is_sparse() && self.mlp_proj.is_sparse() {
            let width = normed.len() / n;
            let mut hidden_t = self.c_fc.sparse_t(&transpose(normed, n, width), n);
            gelu_in_place(&mut hidden_t);
            return transpose(&self.mlp_proj.sparse_t(&hidden_t, n), width, n);
        }
        let mut hidden = self.c_fc.forward_rows(normed, n);
        gelu_in_place(&mut hidden);
        self.mlp_proj.forward_rows(&hidden, n)
    }
}

/// A GPT file ready to decode.
pub struct GptEngine {
    width: usize,
    head: usize,
    block_size: usize,
    wte: Vec<f32>,
    wpe: Vec<f32>,
    blocks: Vec<Block>,
    ln_f: Norm,
    /// The output layer: the token embedding `[V, C]`.
    lm_head: Linear,
}

/// Keys and values of the positions computed so far, per block: keys transposed
/// (`[heads·head, block_size]`, a row per component padded to whole [`KEY_BLOCK`]s, for
/// [`attend`]), values
/// `[positions, heads·head]`.
pub struct KvCache {
    keys_t: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.values.iter_mut().for_each(Vec::clear);
        self.len = 0;
    }
}

impl GptEngine {
    /// The engine for `file`, its linear layers sparse or dense as `mode` says.
    pub fn new(file: &GptFile, mode: SparseMode) -> Result<Self> {
        match mode {
            SparseMode::Off => Self::build(file, false),
            SparseMode::On => Self::build(file, true),
            // CSR reads more bytes than the dense matrix above one half density
            SparseMode::Auto if file.sparsity() < 0.5 => Self::build(file, false),
            SparseMode::Auto => {
                let (dense, sparse) = (Self::build(file, false)?, Self::build(file, true)?);
                let window: Vec<u32> = (0..dense.block_size as u32)
                    .map(|i| i % file.vocab.len() as u32)
                    .collect();
                // one slide period: the steady state's share of the window's recompute
                let tokens = (dense.block_size / 2).max(1);
                let mut seconds = [Vec::new(), Vec::new()];
                for _ in 0..5 {
                    for (k, engine) in [&dense, &sparse].into_iter().enumerate() {
                        seconds[k].push(timed_decode(engine, true, &window, tokens));
                    }
                }
                for s in &mut seconds {
                    s.sort_by(f64::total_cmp);
                }
                Ok(if seconds[1][2] < seconds[0][2] {
                    sparse
                } else {
                    dense
                })
            }
        }
    }

    fn build(file: &GptFile, csr: bool) -> Result<Self> {
        let threshold = csr.then_some(file.threshold as f32);
        let c = file.sizes();
        let get = |name: &str| -> Result<Vec<f32>> {
            Ok(file
                .tensor(name)
                .ok_or_else(|| anyhow::anyhow!("the GPT file lacks {name}"))?
                .dense())
        };
        let bias = |name: &str| -> Result<Option<Vec<f32>>> {
            if c.bias {
                get(name).map(Some)
            } else {
                Ok(None)
            }
        };
        let linear = |name: &str, rows: usize, cols: usize| -> Result<Linear> {
            let (w, b) = (
                get(&format!("{name}.weight"))?,
                bias(&format!("{name}.bias"))?,
            );
            Ok(Linear::new(&w, rows, cols, b, threshold))
        };
        let norm = |name: &str| -> Result<Norm> {
            Ok(Norm {
                gain: get(&format!("{name}.weight"))?,
                bias: bias(&format!("{name}.bias"))?,
            })
        };
        let (w, head) = (c.width, c.width / c.heads);
        let blocks = file
            .blocks
            .iter()
            .enumerate()
            .map(|(n, b)| {
                let h = format!("transformer.h.{n}");
                let kept = b.heads * head;
                Ok(Block {
                    ln_1: norm(&format!("{h}.ln_1"))?,
                    c_attn: linear(&format!("{h}.attn.c_attn"), 3 * kept, w)?,
                    heads: b.heads,
                    c_proj: linear(&format!("{h}.attn.c_proj"), w, kept)?,
                    ln_2: norm(&format!("{h}.ln_2"))?,
                    c_fc: linear(&format!("{h}.mlp.c_fc"), b.hidden, w)?,
                    mlp_proj: linear(&format!("{h}.mlp.c_proj"), w, b.hidden)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let wte = get("transformer.wte.weight")?;
        let lm_head = Linear::new(&wte, c.vocab_size, w, None, threshold);
        Ok(Self {
            width: w,
            head,
            block_size: c.block_size,
            wte,
            wpe: get("transformer.wpe.weight")?,
            blocks,
            ln_f: norm("transformer.ln_f")?,
            lm_head,
        })
    }

    /// Longest context.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// `(linear layers sparse, all linear layers)`, the output layer included.
    pub fn sparse_layers(&self) -> (usize, usize) {
        let mut layers: Vec<&Linear> = self
            .blocks
            .iter()
            .flat_map(|b| [&b.c_attn, &b.c_proj, &b.c_fc, &b.mlp_proj])
            .collect();
        layers.push(&self.lm_head);
        (
            layers.iter().filter(|l| l.is_sparse()).count(),
            layers.len(),
        )
    }

    /// The length of a row of the transposed key cache: `block_size` padded to whole
    /// [`KEY_BLOCK`]s.
    fn key_stride(&self) -> usize {
        self.block_size.next_multiple_of(KEY_BLOCK)
    }

    /// An empty cache.
    pub fn cache(&self) -> KvCache {
        KvCache {
            keys_t: self
                .blocks
                .iter()
                .map(|b| vec![0.0; b.heads * self.head * self.key_stride()])
                .collect(),
            values: vec![Vec::new(); self.blocks.len()],
            len: 0,
        }
    }

    /// The logits after `token` at position `cache.len()`, whose key and value join `cache`.
    ///
    /// # Panics
    /// When the cache already holds `block_size` positions or `token` is outside the
    /// vocabulary ([`Decoder`] keeps both true).
    pub fn step(&self, token: u32, cache: &mut KvCache) -> Vec<f32> {
        self.advance(&[token], cache)
    }

    /// The logits `[n, V]` after each of `tokens`, at positions `cache.len()..` on, whose keys
    /// and values join `cache`: the positions computed together, each linear layer as one
    /// batched product (a window's worth of matrix-vector products would read every weight
    /// once per position).
    ///
    /// # Panics
    /// When the positions would pass `block_size` or a token is outside the vocabulary.
    pub fn advance(&self, tokens: &[u32], cache: &mut KvCache) -> Vec<f32> {
        let (w, t0, n) = (self.width, cache.len, tokens.len());
        assert!(t0 + n <= self.block_size, "the context passes block_size");
        if n == 0 {
            // a window of one slides to nothing before its next token
            return Vec::new();
        }
        let mut x: Vec<f32> = Vec::with_capacity(n * w);
        for (i, &tok) in tokens.iter().enumerate() {
            let (tok, t) = (tok as usize, t0 + i);
            let (wte, wpe) = (
                &self.wte[tok * w..(tok + 1) * w],
                &self.wpe[t * w..(t + 1) * w],
            );
            x.extend(wte.iter().zip(wpe).map(|(a, b)| a + b));
        }
        let scale = 1.0 / (self.head as f32).sqrt();
        for (l, block) in self.blocks.iter().enumerate() {
            let kept = block.heads * self.head;
            let qkv = block.c_attn.forward_rows(&block.ln_1.rows(&x), n);
            // a block compacted to no heads adds c_proj's bias alone
            let rows = if kept == 0 { 0 } else { n };
            for (i, row) in qkv.chunks(3 * kept.max(1)).take(rows).enumerate() {
                for (c, &k) in row[kept..2 * kept].iter().enumerate() {
                    cache.keys_t[l][c * self.key_stride() + t0 + i] = k;
                }
                cache.values[l].extend_from_slice(&row[2 * kept..]);
            }
            let (keys_t, values) = (&cache.keys_t[l], &cache.values[l]);
            let mut attended = vec![0.0; n * kept];
            let mut scores = vec![0.0; t0 + n];
            for (i, row) in qkv.chunks(3 * kept.max(1)).take(rows).enumerate() {
                // position t0 + i sees positions 0..=t0 + i
                let seen = t0 + i + 1;
                for h in 0..block.heads {
                    let cols = h * self.head..(h + 1) * self.head;
                    let head_cache = HeadCache {
                        keys_t: &keys_t[cols.start * self.key_stride()..],
                        stride_t: self.key_stride(),
                        values: &values[..seen * kept],
                        stride: kept,
                        offset: cols.start,
                    };
                    attend(
                        &row[cols.clone()],
                        head_cache,
                        scale,
                        &mut scores[..seen],
                        &mut attended[i * kept + cols.start..i * kept + cols.end],
                    );
                }
            }
            let y = block.c_proj.forward_rows(&attended, n);
            x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
            let y = block.mlp(&block.ln_2.rows(&x), n);
            x.iter_mut().zip(&y).for_each(|(x, y)| *x += y);
        }
        cache.len += n;
        self.lm_head.forward_rows(&self.ln_f.rows(&x), n)
    }

    /// `(summed cross-entropy, correct next-token guesses, predictions)` of `tokens`, read in
    /// consecutive windows of `block_size` predictions (each window from an empty context),
    /// windows in parallel.
    pub fn loss(&self, tokens: &[u32]) -> (f64, usize, usize) {
        use rayon::prelude::*;
        if tokens.len() < 2 {
            return (0.0, 0, 0);
        }
        let predictions = tokens.len() - 1;
        let starts: Vec<usize> = (0..predictions).step_by(self.block_size).collect();
        starts
            .par_iter()
            .map(|&start| {
                let end = (start + self.block_size).min(predictions);
                let mut cache = self.cache();
                let (mut loss, mut correct) = (0.0f64, 0usize);
                let all = self.advance(&tokens[start..end], &mut cache);
                for (i, logits) in all.chunks(all.len() / (end - start)).enumerate() {
                    let target = tokens[start + i + 1] as usize;
                    let top = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let log_sum = (logits.iter().map(|l| ((l - top) as f64).exp()).sum::<f64>())
                        .ln()
                        + top as f64;
                    loss += log_sum - logits[target] as f64;
                    let best = logits
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(k, _)| k);
                    correct += usize::from(best == target);
                }
                (loss, correct, end - start)
            })
            .reduce(|| (0.0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    }
}

/// Tokens in, next-token logits out, within the window policy of the module docs; with
/// `cached` false every token recomputes its whole context (same logits, no cache).
pub struct Decoder<'a> {
    engine: &'a GptEngine,
    cache: KvCache,
    context: Vec<u32>,
    cached: bool,
}

impl<'a> Decoder<'a> {
    /// An empty context.
    pub fn new(engine: &'a GptEngine, cached: bool) -> Self {
        Self {
            engine,
            cache: engine.cache(),
            context: Vec::new(),
            cached,
        }
    }

    /// The tokens the next logits are conditioned on.
    pub fn context(&self) -> &[u32] {
        &self.context
    }

    /// Appends `token`; the logits of the token after it.
    pub fn push(&mut self, token: u32) -> Vec<f32> {
        if self.context.len() == self.engine.block_size {
            let keep = self.engine.block_size / 2;
            self.context.drain(..self.context.len() - keep);
            self.cache.clear();
            if self.cached {
                self.engine.advance(&self.context, &mut self.cache);
            }
        }
        self.context.push(token);
        if self.cached {
            return self.engine.step(token, &mut self.cache);
        }
        self.cache.clear();
        let all = self.engine.advance(&self.context, &mut self.cache);
        all[all.len() - all.len() / self.context.len()..].to_vec()
    }
}

/// Refuses logits that hold NaN or infinity: weights that load (every one finite) can still
/// overflow, e.g. a damaged exponent of 3e38.
pub fn ensure_finite(logits: &[f32]) -> Result<()> {
    ensure!(
        logits.iter().all(|l| l.is_finite()),
        "the model produced non-finite logits (NaN or infinity): its weights overflow; the file is damaged or the run diverged"
    );
    Ok(())
}

/// Generated text and its speed.
pub struct Generated {
    /// The prompt and its continuation.
    pub text: String,
    /// Generated tokens per second (the prompt's processing excluded).
    pub tokens_per_second: f64,
}

/// `prompt` continued by `sampling.tokens` characters, each passed to `emit` as it is drawn.
pub fn generate(
    engine: &GptEngine,
    cached: bool,
    file: &GptFile,
    prompt: &str,
    sampling: &Sampling,
    emit: &mut dyn FnMut(&str),
) -> Result<Generated> {
    check_temperature(sampling)?;
    let tokens = prompt_tokens(&file.vocab, prompt)?;
    ensure!(!tokens.is_empty(), "the prompt has no tokens");
    let mut decoder = Decoder::new(engine, cached);
    let mut logits = Vec::new();
    for &t in &tokens {
        logits = decoder.push(t);
    }
    let mut rng = StdRng::seed_from_u64(sampling.seed);
    let mut generated = Vec::with_capacity(sampling.tokens);
    let start = Instant::now();
    for k in 0..sampling.tokens {
        ensure_finite(&logits)?;
        let chosen = draw(&logits, sampling, &mut rng) as u32;
        generated.push(chosen);
        emit(&file.vocab.decode(&[chosen]));
        if k + 1 < sampling.tokens {
            logits = decoder.push(chosen);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(Generated {
        text: format!("{prompt}{}", file.vocab.decode(&generated)),
        tokens_per_second: sampling.tokens as f64 / seconds.max(1e-12),
    })
}

/// Seconds `engine` takes to decode `tokens` tokens after a full window of `window` (the
/// window's own processing not timed): the steady state of generation, slides included.
pub fn timed_decode(engine: &GptEngine, cached: bool, window: &[u32], tokens: usize) -> f64 {
    let mut decoder = Decoder::new(engine, cached);
    for &t in window {
        decoder.push(t);
    }
    let start = Instant::now();
    for k in 0..tokens {
        std::hint::black_box(decoder.push(window[k % window.len()]));
    }
    start.elapsed().as_secs_f64()
}

/// Median tokens/s of each variant over `repeats` alternated runs, so that drift in the
/// machine's load hits all alike; a variant returns the seconds it took for `tokens` tokens.
pub fn alternated_rates(
    variants: &mut [Box<dyn FnMut() -> f64 + '_>],
    tokens: usize,
    repeats: usize,
) -> Vec<f64> {
    let mut rates = vec![Vec::with_capacity(repeats); variants.len()];
    for _ in 0..repeats {
        for (k, run) in variants.iter_mut().enumerate() {
            rates[k].push(tokens as f64 / run().max(1e-12));
        }
    }
    rates
        .into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;
    use crate::data::text::Vocabulary;
    use crate::deploy::gpt_compact::compact_gpt;
    use crate::deploy::model_file::{Format, ModelTensor, Stored};
    use crate::models::gpt::tokens_tensor;
    use crate::models::{Gpt, ModelKind};
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::{Device, Tensor, TensorData};

    fn config(bias: bool) -> TrainConfig {
        let mut config = TrainConfig {
            model: ModelKind::Gpt,
            ..TrainConfig::default()
        };
        config.gpt.layers = 2;
        config.gpt.heads = 4;
        config.gpt.width = 16;
        config.gpt.block_size = 8;
        config.gpt.bias = bias;
        config
    }

    /// Sets every float parameter to deterministic values with `zero_share` of the weight
    /// matrices exactly 0 and biases and LayerNorm gains away from their init (so that a
    /// missed bias or gain would show).
    struct Scramble {
        zero_share: f64,
        seed: u64,
    }

    impl ModuleMapper for Scramble {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let dims = param.val().dims();
            let n: usize = dims.iter().product();
            let values: Vec<f32> = (0..n)
                .map(|i| {
                    self.seed = self
                        .seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let u = (self.seed >> 11) as f64 / (1u64 << 53) as f64;
                    let v = ((self.seed >> 7) % 1000) as f32 / 1000.0 - 0.5;
                    if D >= 2 && u < self.zero_share {
                        0.0
                    } else if D == 1 {
                        1.0 + v * 0.3 + (i % 3) as f32 * 0.01
                    } else {
                        v * 0.6
                    }
                })
                .collect();
            let device = param.val().device();
            param.map(|_| Tensor::from_data(TensorData::new(values, dims), &device))
        }
    }

    fn model(bias: bool, zero_share: f64) -> (Gpt, GptFile) {
        model_with(config(bias), zero_share)
    }

    fn model_with(config: TrainConfig, zero_share: f64) -> (Gpt, GptFile) {
        let vocab = Vocabulary::from_text("abcdefghij");
        let gpt = Gpt::new(&config.gpt.model(vocab.len()), &Device::default()).map(&mut Scramble {
            zero_share,
            seed: 7,
        });
        let file = GptFile::from_model(&gpt, &config, &vocab, Format::Dense, 1e-13).unwrap();
        (gpt, file)
    }

    /// burn's logits at every position of `tokens`, `[t][vocab]`.
    fn burn_logits(gpt: &Gpt, tokens: &[u32]) -> Vec<Vec<f32>> {
        let x: Vec<i64> = tokens.iter().map(|&t| t as i64).collect();
        let flat = gpt
            .forward(tokens_tensor(x, 1, tokens.len(), &gpt.device()))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        flat.chunks(flat.len() / tokens.len())
            .map(<[f32]>::to_vec)
            .collect()
    }

    fn worst(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    }

    const TOKENS: [u32; 21] = [
        1, 4, 0, 9, 2, 2, 7, 3, 8, 5, 6, 1, 0, 3, 9, 9, 4, 2, 7, 5, 1,
    ];

    #[test]
    fn cached_decoding_gives_burns_logits_at_every_position_and_across_slides() {
        for bias in [false, true] {
            let (gpt, file) = model(bias, 0.6);
            for format in [Format::Dense, Format::Sparse] {
                // through the file's bytes, as export and sample see it
                let read =
                    GptFile::from_bytes(&file.with_format(format).to_bytes().unwrap()).unwrap();
                for mode in [SparseMode::Off, SparseMode::On] {
                    let engine = GptEngine::new(&read, mode).unwrap();
                    for cached in [true, false] {
                        let mut decoder = Decoder::new(&engine, cached);
                        let mut slides = 0;
                        for &t in &TOKENS {
                            let before = decoder.context().len();
                            let logits = decoder.push(t);
                            slides += usize::from(decoder.context().len() <= before);
                            // burn recomputes the whole context the decoder conditions on
                            let reference = burn_logits(&gpt, decoder.context());
                            let d = worst(&logits, reference.last().unwrap());
                            assert!(
                                d < 1e-4,
                                "bias {bias} {format:?} {mode:?} cached {cached}: {d}"
                            );
                        }
                        // block 8: slides at the 9th, 13th, 17th and 21st token
                        assert_eq!(slides, 4);
                    }
                }
            }
        }
    }

    #[test]
    fn heads_and_windows_past_a_register_block_decode_burns_logits() {
        // heads of 32 (two KEY_BLOCKs of output), a window of 20 (key rows padded to 32, a
        // partial block of scores), an MLP 256 wide (two SELL column panels)
        let mut c = config(true);
        (c.gpt.width, c.gpt.heads, c.gpt.block_size) = (64, 2, 20);
        let (gpt, file) = model_with(c, 0.7);
        let tokens: Vec<u32> = (0..45).map(|i| (i * 7 + 3) % 10).collect();
        for mode in [SparseMode::Off, SparseMode::On] {
            let engine = GptEngine::new(&file, mode).unwrap();
            let mut decoder = Decoder::new(&engine, true);
            for &t in &tokens {
                let logits = decoder.push(t);
                let reference = burn_logits(&gpt, decoder.context());
                let d = worst(&logits, reference.last().unwrap());
                assert!(
                    d < 1e-4,
                    "{mode:?} after {} tokens: {d}",
                    decoder.context().len()
                );
            }
        }
    }

    #[test]
    fn a_block_compacted_to_no_heads_and_no_units_still_decodes() {
        for bias in [false, true] {
            let (_, mut file) = model(bias, 0.2);
            // block 1's attention and MLP write nothing: every head and unit goes
            for name in [
                "transformer.h.1.attn.c_proj.weight",
                "transformer.h.1.mlp.c_proj.weight",
            ] {
                let t = file.tensors.iter_mut().find(|t| t.name == name).unwrap();
                t.stored = Stored::Dense(vec![0.0; t.params()]);
            }
            let (compact, report) = compact_gpt(&file).unwrap();
            assert_eq!((report.after[1].heads, report.after[1].hidden), (0, 0));
            let read = GptFile::from_bytes(&compact.to_bytes().unwrap()).unwrap();
            for mode in [SparseMode::Off, SparseMode::On] {
                let (a, b) = (
                    GptEngine::new(&file, SparseMode::Off).unwrap(),
                    GptEngine::new(&read, mode).unwrap(),
                );
                let (mut da, mut db) = (Decoder::new(&a, true), Decoder::new(&b, true));
                for &t in &TOKENS {
                    let d = worst(&da.push(t), &db.push(t));
                    assert!(d < 1e-5, "bias {bias} {mode:?}: {d}");
                }
            }
        }
    }

    #[test]
    fn a_window_of_one_token_decodes_each_token_alone() {
        let mut c = config(false);
        c.gpt.block_size = 1;
        let (gpt, file) = model_with(c, 0.5);
        for cached in [true, false] {
            let engine = GptEngine::new(&file, SparseMode::Off).unwrap();
            let mut decoder = Decoder::new(&engine, cached);
            for &t in &TOKENS[..5] {
                let logits = decoder.push(t);
                assert_eq!(decoder.context(), [t]);
                let d = worst(&logits, &burn_logits(&gpt, &[t])[0]);
                assert!(d < 1e-4, "{d}");
            }
        }
    }

    #[test]
    fn sparse_decoding_gives_the_same_text_as_dense() {
        let (_, file) = model(false, 0.9);
        let sampling = Sampling {
            tokens: 200,
            temperature: 0.8,
            top_k: 0,
            seed: 3,
        };
        let texts: Vec<String> = [SparseMode::Off, SparseMode::On, SparseMode::Auto]
            .into_iter()
            .flat_map(|mode| {
                let engine = GptEngine::new(&file, mode).unwrap();
                [true, false].map(|cached| {
                    generate(&engine, cached, &file, "abc", &sampling, &mut |_| {})
                        .unwrap()
                        .text
                })
            })
            .collect();
        assert_eq!(texts[0].chars().count(), 203);
        assert!(texts.iter().all(|t| *t == texts[0]), "{texts:?}");
        let on = GptEngine::new(&file, SparseMode::On).unwrap();
        assert_eq!(on.sparse_layers(), (9, 9));
        assert_eq!(
            GptEngine::new(&file, SparseMode::Off)
                .unwrap()
                .sparse_layers(),
            (0, 9)
        );
    }

    #[test]
    fn the_loss_is_the_mean_cross_entropy_of_burns_logits() {
        let (gpt, file) = model(true, 0.3);
        let engine = GptEngine::new(&file, SparseMode::Auto).unwrap();
        let (loss, correct, count) = engine.loss(&TOKENS);
        assert_eq!(count, 20);
        // windows of 8 predictions: tokens 0..8, 8..16, 16..20 from an empty context
        let (mut expected, mut right) = (0.0f64, 0);
        for start in [0usize, 8, 16] {
            let end = (start + 8).min(20);
            let logits = burn_logits(&gpt, &TOKENS[start..end]);
            for (i, row) in logits.iter().enumerate() {
                let target = TOKENS[start + i + 1] as usize;
                let sum: f64 = row.iter().map(|l| (*l as f64).exp()).sum();
                expected += sum.ln() - row[target] as f64;
                let best = (0..row.len())
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap();
                right += usize::from(best == target);
            }
        }
        assert!((loss - expected).abs() < 1e-3, "{loss} vs {expected}");
        assert_eq!(correct, right);
    }

    #[test]
    fn compaction_removes_dead_heads_and_units_and_keeps_the_logits() {
        for bias in [false, true] {
            let (_, mut file) = model(bias, 0.2);
            let c = file.sizes();
            let (head, kept) = (c.width / c.heads, c.width);
            let zero_rows = |t: &mut ModelTensor, rows: std::ops::Range<usize>| {
                let cols = t.shape[1];
                let mut v = t.dense();
                rows.for_each(|r| v[r * cols..(r + 1) * cols].fill(0.0));
                t.stored = Stored::Dense(v);
            };
            let zero_cols = |t: &mut ModelTensor, cols: std::ops::Range<usize>| {
                let n = t.shape[1];
                let mut v = t.dense();
                for r in 0..t.shape[0] {
                    cols.clone().for_each(|c| v[r * n + c] = 0.0);
                }
                t.stored = Stored::Dense(v);
            };
            let find = |file: &mut GptFile, name: &str| -> usize {
                file.tensors.iter().position(|t| t.name == name).unwrap()
            };
            // block 0: head 1's values zero (a constant head), head 3's output columns zero;
            // MLP units 0..10 read nothing, units 10..20 write nothing
            let i = find(&mut file, "transformer.h.0.attn.c_attn.weight");
            zero_rows(&mut file.tensors[i], 2 * kept + head..2 * kept + 2 * head);
            let i = find(&mut file, "transformer.h.0.attn.c_proj.weight");
            zero_cols(&mut file.tensors[i], 3 * head..4 * head);
            let i = find(&mut file, "transformer.h.0.mlp.c_fc.weight");
            zero_rows(&mut file.tensors[i], 0..10);
            let i = find(&mut file, "transformer.h.0.mlp.c_proj.weight");
            zero_cols(&mut file.tensors[i], 10..20);
            let (compact, report) = compact_gpt(&file).unwrap();
            assert_eq!(report.after[0].heads, 2, "bias {bias}");
            // without a bias a zero c_fc row gives gelu(0) = 0: removable; with one it is folded
            assert_eq!(report.after[0].hidden, 64 - 20, "bias {bias}");
            assert_eq!(report.after[1], report.before[1]);
            assert!(report.params_after < report.params_before);
            let read = GptFile::from_bytes(&compact.to_bytes().unwrap()).unwrap();
            assert_eq!(read, compact);
            let (a, b) = (
                GptEngine::new(&file, SparseMode::Off).unwrap(),
                GptEngine::new(&read, SparseMode::Off).unwrap(),
            );
            let (mut da, mut db) = (Decoder::new(&a, true), Decoder::new(&b, true));
            for &t in &TOKENS {
                let d = worst(&da.push(t), &db.push(t));
                assert!(d < 1e-5, "bias {bias}: {d}");
            }
        }
    }
}
