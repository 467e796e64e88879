//! A nanoGPT-style character-level transformer: token and learned position embeddings,
//! pre-LayerNorm blocks of causal self-attention and a GELU MLP (4x), a final LayerNorm, and
//! the output layer tied to the token embedding (one tensor: `logits = x · Wteᵀ`).
//!
//! Initialisation as nanoGPT: every weight N(0, 0.02), the residual projections
//! N(0, 0.02/√(2·layers)), biases zero.

use burn::module::Module;
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::{Device, Int, Tensor, TensorData};
use pdecay_burn::{causal_attention, causal_attention_composite, gelu, layer_norm};

use super::sparse::{SparseCandidate, linear_3d};
use serde::{Deserialize, Serialize};

/// The sizes of a GPT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Transformer blocks.
    pub layers: usize,
    /// Attention heads per block.
    pub heads: usize,
    /// Embedding width (a multiple of `heads`).
    pub width: usize,
    /// Longest context.
    pub block_size: usize,
    /// Dropout probability (embeddings, attention, residuals).
    pub dropout: f64,
    /// Biases in Linear and LayerNorm layers.
    pub bias: bool,
}

const INIT_STD: f64 = 0.02;

fn normal(std: f64) -> Initializer {
    Initializer::Normal { mean: 0.0, std }
}

/// LayerNorm's ε (burn's default), kept here because burn's `LayerNorm` does not expose it
/// (the KV-cached decoder, which reads no ε from the model file, normalises with it too).
pub(crate) const LAYER_NORM_EPSILON: f64 = 1e-5;

fn layer_norm_config(c: &GptConfig) -> LayerNormConfig {
    LayerNormConfig::new(c.width)
        .with_bias(c.bias)
        .with_epsilon(LAYER_NORM_EPSILON)
}

/// `norm` applied to `x` through [`layer_norm`] (one op forward and backward on the CPU),
/// what `norm.forward(x)` computes.
fn normalize(norm: &LayerNorm, x: Tensor<3>) -> Tensor<3> {
    let beta = norm.beta.as_ref().map(|b| b.val());
    layer_norm(x, norm.gamma.val(), beta, LAYER_NORM_EPSILON)
}

/// Causal multi-head self-attention.
#[derive(Module, Debug)]
pub struct CausalSelfAttention {
    qkv: Linear,
    proj: Linear,
    dropout: Dropout,
    heads: usize,
}

impl CausalSelfAttention {
    fn new(c: &GptConfig, device: &Device) -> Self {
        let residual_std = INIT_STD / (2.0 * c.layers as f64).sqrt();
        Self {
            qkv: LinearConfig::new(c.width, 3 * c.width)
                .with_bias(c.bias)
                .with_initializer(normal(INIT_STD))
                .init(device),
            proj: LinearConfig::new(c.width, c.width)
                .with_bias(c.bias)
                .with_initializer(normal(residual_std))
                .init(device),
            dropout: DropoutConfig::new(c.dropout).init(),
            heads: c.heads,
        }
    }

    /// `[batch, time, width]` → the same, each position attending to itself and earlier ones;
    /// `sparse`: whether `qkv` and `proj` run over their weights' non-zeros.
    fn forward(&self, x: Tensor<3>, [qkv_sparse, proj_sparse]: [bool; 2]) -> Tensor<3> {
        let qkv = linear_3d(&self.qkv, x, qkv_sparse);
        // dropout on the attention weights (training only: a device with autodiff) needs them
        // as a tensor: then burn's ops
        let out = if self.dropout.prob == 0.0 || !qkv.device().is_autodiff() {
            causal_attention(qkv, self.heads)
        } else {
            causal_attention_composite(qkv, self.heads, |weights| self.dropout.forward(weights))
        };
        self.dropout
            .forward(linear_3d(&self.proj, out, proj_sparse))
    }
}

/// One pre-LayerNorm transformer block.
#[derive(Module, Debug)]
pub struct Block {
    ln_1: LayerNorm,
    attn: CausalSelfAttention,
    ln_2: LayerNorm,
    fc: Linear,
    fc_proj: Linear,
    dropout: Dropout,
}

impl Block {
    fn new(c: &GptConfig, device: &Device) -> Self {
        let norm = || layer_norm_config(c).init(device);
        let residual_std = INIT_STD / (2.0 * c.layers as f64).sqrt();
        Self {
            ln_1: norm(),
            attn: CausalSelfAttention::new(c, device),
            ln_2: norm(),
            fc: LinearConfig::new(c.width, 4 * c.width)
                .with_bias(c.bias)
                .with_initializer(normal(INIT_STD))
                .init(device),
            fc_proj: LinearConfig::new(4 * c.width, c.width)
                .with_bias(c.bias)
                .with_initializer(normal(residual_std))
                .init(device),
            dropout: DropoutConfig::new(c.dropout).init(),
        }
    }

    /// `sparse`, in [`Block::sparse_candidates`]' order: which linear layers run over their
    /// weights' non-zeros.
    fn forward(&self, x: Tensor<3>, sparse: [bool; 4]) -> Tensor<3> {
        let x = x.clone()
            + self
                .attn
                .forward(normalize(&self.ln_1, x), [sparse[0], sparse[1]]);
        let hidden = gelu(linear_3d(
            &self.fc,
            normalize(&self.ln_2, x.clone()),
            sparse[2],
        ));
        let mlp = linear_3d(&self.fc_proj, hidden, sparse[3]);
        x + self.dropout.forward(mlp)
    }

    /// The block's linear layers, named as in the sparsity report (`prefix` is `blocks.N`).
    fn sparse_candidates(&self, prefix: &str) -> [(String, SparseCandidate<'_>); 4] {
        let named =
            |name: &str, layer| (format!("{prefix}.{name}"), SparseCandidate::Linear(layer));
        [
            named("attn.qkv", &self.attn.qkv),
            named("attn.proj", &self.attn.proj),
            named("fc", &self.fc),
            named("fc_proj", &self.fc_proj),
        ]
    }
}

/// The character-level GPT.
#[derive(Module, Debug)]
pub struct Gpt {
    wte: Embedding,
    wpe: Embedding,
    dropout: Dropout,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt {
    /// A freshly initialised model.
    pub fn new(c: &GptConfig, device: &Device) -> Self {
        Self {
            wte: EmbeddingConfig::new(c.vocab_size, c.width)
                .with_initializer(normal(INIT_STD))
                .init(device),
            wpe: EmbeddingConfig::new(c.block_size, c.width)
                .with_initializer(normal(INIT_STD))
                .init(device),
            dropout: DropoutConfig::new(c.dropout).init(),
            blocks: (0..c.layers).map(|_| Block::new(c, device)).collect(),
            ln_f: layer_norm_config(c).init(device),
        }
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.wte.weight.device()
    }

    /// Logits `[batch, time, vocab]` for tokens `[batch, time]` (time <= block_size).
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.forward_with(tokens, &[])
    }

    /// The linear layers that sparse training can move: per block `attn.qkv`, `attn.proj`,
    /// `fc` and `fc_proj`. The output layer, tied to the token embedding (65 x 128 on the CPU
    /// preset, also read by the embedding lookup), stays dense.
    pub fn sparse_candidates(&self) -> Vec<(String, SparseCandidate<'_>)> {
        self.blocks
            .iter()
            .enumerate()
            .flat_map(|(i, block)| block.sparse_candidates(&format!("blocks.{i}")))
            .collect()
    }

    /// [`Gpt::forward`] with the layers whose entry of `sparse` is true (in
    /// [`Gpt::sparse_candidates`]' order; missing entries are false) run over their weights'
    /// non-zeros.
    pub fn forward_with(&self, tokens: Tensor<2, Int>, sparse: &[bool]) -> Tensor<3> {
        let on = |i: usize| sparse.get(i).copied().unwrap_or(false);
        let [batch, time] = tokens.dims();
        let device = tokens.device();
        let positions = Tensor::<1, Int>::arange(0..time as i64, &device)
            .unsqueeze::<2>()
            .expand([batch, time]);
        let x = self.wte.forward(tokens) + self.wpe.forward(positions);
        let x = self
            .blocks
            .iter()
            .enumerate()
            .fold(self.dropout.forward(x), |x, (b, block)| {
                block.forward(x, std::array::from_fn(|k| on(4 * b + k)))
            });
        let x = normalize(&self.ln_f, x);
        // the output layer is the token embedding, transposed: one tensor, two uses; one
        // product over every position (its gradient one product too, where a batched product
        // of the expanded weight summed one per sequence)
        let wte = self.wte.weight.val();
        let [vocab, width] = wte.dims();
        x.reshape([batch * time, width])
            .matmul(wte.transpose())
            .reshape([batch, time, vocab])
    }
}

/// A `[batch, block]` tensor of token ids.
pub fn tokens_tensor(
    values: Vec<i64>,
    batch: usize,
    block: usize,
    device: &Device,
) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(values, [batch, block]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::optim::GradientsParams;
    use burn::tensor::TensorData;
    use pdecay_burn::parameter_values;

    fn tiny(vocab: usize) -> GptConfig {
        GptConfig {
            vocab_size: vocab,
            layers: 2,
            heads: 2,
            width: 16,
            block_size: 8,
            dropout: 0.0,
            bias: true,
        }
    }

    fn tokens(values: &[i64], device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(TensorData::new(values.to_vec(), [1, values.len()]), device)
    }

    #[test]
    fn changing_a_later_token_never_changes_earlier_logits() {
        let device = Device::default();
        let model = Gpt::new(&tiny(11), &device);
        let a = [1i64, 2, 3, 4, 5, 6, 7, 8];
        for changed in 1..8 {
            let mut b = a;
            b[changed] = 10;
            let (la, lb) = (
                model
                    .forward(tokens(&a, &device))
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
                model
                    .forward(tokens(&b, &device))
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap(),
            );
            // positions before `changed` are identical, position `changed` differs
            let before = changed * 11;
            assert_eq!(
                la[..before],
                lb[..before],
                "a change at {changed} leaked backwards"
            );
            assert_ne!(la[before..before + 11], lb[before..before + 11]);
        }
    }

    #[test]
    fn the_output_layer_is_the_token_embedding() {
        let device = Device::default();
        let c = tiny(13);
        let model = Gpt::new(&c, &device);
        let params = parameter_values(&model);
        let vocab_sized: Vec<&str> = params
            .iter()
            .filter(|p| p.shape.contains(&13))
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            vocab_sized,
            ["wte.weight"],
            "one tensor holds the vocabulary"
        );
        // per block: ln 2·16·2, qkv 16·48+48, proj 16·16+16, fc 16·64+64, fc_proj 64·16+16
        let block = 2 * 2 * 16 + (16 * 48 + 48) + (16 * 16 + 16) + (16 * 64 + 64) + (64 * 16 + 16);
        let total: usize = params.iter().map(|p| p.values.len()).sum();
        assert_eq!(total, 13 * 16 + 8 * 16 + 2 * block + 2 * 16);
        let logits = model.forward(tokens(&[0, 1, 2], &device));
        assert_eq!(logits.dims(), [1, 3, 13]);
    }

    #[test]
    fn a_tiny_model_overfits_a_short_text() {
        let device = Device::default().autodiff();
        let text: Vec<i64> = "to be or not to be"
            .bytes()
            .map(|b| (b % 16) as i64)
            .collect();
        let c = GptConfig {
            block_size: text.len() - 1,
            ..tiny(16)
        };
        let mut model = Gpt::new(&c, &device);
        let mut optim = pdecay_burn::SparseOptimizer::new(pdecay_burn::adam_no_decay());
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let n = text.len() - 1;
        let (x, y) = (&text[..n], &text[1..]);
        let mut last = f32::INFINITY;
        for _ in 0..150 {
            let logits = model.forward(tokens(x, &device)).reshape([n, 16]);
            let targets = Tensor::<1, Int>::from_data(TensorData::new(y.to_vec(), [n]), &device);
            let loss = loss_fn.forward(logits, targets);
            last = loss.clone().into_scalar::<f32>();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(3e-3, model, grads).unwrap();
        }
        // ln(16) = 2.77 at the start; memorised text is near 0
        assert!(last < 0.1, "final loss {last}");
    }

    /// Zeroes about `share` of every weight matrix (positions by a hash), as pWD leaves them.
    struct ZeroSome {
        share: f64,
        seed: u64,
    }

    impl burn::module::ModuleMapper for ZeroSome {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            if D < 2 {
                return param;
            }
            let value = param.val();
            let (dims, device) = (value.dims(), value.device());
            let mut values = value.into_data().try_to_vec::<f32>().unwrap();
            for v in &mut values {
                self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                if ((self.seed >> 11) as f64 / (1u64 << 53) as f64) < self.share {
                    *v = 0.0;
                }
            }
            param.map(|_| Tensor::from_data(TensorData::new(values, dims), &device).require_grad())
        }
    }

    #[test]
    fn sparse_layers_give_the_dense_logits_and_gradients_and_no_gradient_at_their_zeros() {
        let device = Device::flex().autodiff();
        let model = Gpt::new(&tiny(11), &device).map(&mut ZeroSome {
            share: 0.6,
            seed: 3,
        });
        let names: Vec<String> = model
            .sparse_candidates()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names.len(), 8);
        assert_eq!(
            names[..4],
            [
                "blocks.0.attn.qkv",
                "blocks.0.attn.proj",
                "blocks.0.fc",
                "blocks.0.fc_proj"
            ]
        );
        let ids: Vec<i64> = (0..16).map(|i| (i * 5 % 11) as i64).collect();
        let x = || tokens_tensor(ids.clone(), 2, 8, &device);
        // a loss whose gradient reaches every logit with a different weight
        let weights: Vec<f32> = (0..2 * 8 * 11)
            .map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.4)
            .collect();
        let weights = Tensor::<3>::from_data(TensorData::new(weights, [2, 8, 11]), &device);
        let run = |sparse: &[bool]| {
            let logits = model.forward_with(x(), sparse);
            let loss = (logits.clone() * weights.clone()).sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            (logits.into_data().try_to_vec::<f32>().unwrap(), grads)
        };
        let (dense_logits, dense_grads) = run(&[]);
        let (sparse_logits, sparse_grads) = run(&[true; 8]);
        for (d, s) in dense_logits.iter().zip(&sparse_logits) {
            assert!((d - s).abs() <= 1e-5, "logits: dense {d} sparse {s}");
        }
        let mut dead_squared = 0.0f64;
        for (name, layer) in model.sparse_candidates() {
            let SparseCandidate::Linear(linear) = layer else {
                panic!("{name}: the GPT's candidates are linear")
            };
            let id = linear.weight.id;
            let values = |g: &GradientsParams| {
                g.get::<2>(id)
                    .unwrap()
                    .into_data()
                    .try_to_vec::<f32>()
                    .unwrap()
            };
            let w = linear.weight.val().into_data().try_to_vec::<f32>().unwrap();
            let (dense, sparse) = (values(&dense_grads), values(&sparse_grads));
            for ((w, d), s) in w.iter().zip(&dense).zip(&sparse) {
                if *w == 0.0 {
                    assert_eq!(*s, 0.0, "{name}: a gradient at a zero weight");
                    dead_squared += (*d as f64).powi(2);
                } else {
                    assert!((d - s).abs() <= 1e-5 + 1e-4 * d.abs(), "{name}: {d} vs {s}");
                }
            }
        }
        // gradient clipping's norm counts what the backward produced: on the sparse products
        // the dead weights' gradients are gone from it, and nothing else changes
        let norm = |g: GradientsParams| pdecay_burn::clip_grad_norm(&model, g, f64::INFINITY).1;
        let (dense_norm, sparse_norm) = (norm(dense_grads), norm(sparse_grads));
        assert!(dead_squared > 0.0);
        let expected = (dense_norm.powi(2) - dead_squared).sqrt();
        assert!(
            (sparse_norm - expected).abs() <= 1e-4 * dense_norm,
            "sparse norm {sparse_norm}, dense {dense_norm} less the dead weights' {expected}"
        );
    }
}
