//! GPT model files: a trained character GPT as safetensors with the names and layouts of
//! nanoGPT's `GPT.state_dict()`, so that a PyTorch user with nanoGPT's `model.py` loads the
//! dense file with `load_state_dict(torch_tensors, strict=False)`.
//!
//! | pdecay (burn)                  | file (nanoGPT)                          | layout        |
//! |--------------------------------|-----------------------------------------|---------------|
//! | `wte.weight`                   | `transformer.wte.weight`                | `[V, C]`      |
//! | `wpe.weight`                   | `transformer.wpe.weight`                | `[T, C]`      |
//! | `blocks.N.ln_1.gamma` / `beta` | `transformer.h.N.ln_1.weight` / `bias`  | `[C]`         |
//! | `blocks.N.attn.qkv`            | `transformer.h.N.attn.c_attn`           | `[3C, C]`     |
//! | `blocks.N.attn.proj`           | `transformer.h.N.attn.c_proj`           | `[C, C]`      |
//! | `blocks.N.ln_2`                | `transformer.h.N.ln_2`                  | `[C]`         |
//! | `blocks.N.fc`                  | `transformer.h.N.mlp.c_fc`              | `[4C, C]`     |
//! | `blocks.N.fc_proj`             | `transformer.h.N.mlp.c_proj`            | `[C, 4C]`     |
//! | `ln_f`                         | `transformer.ln_f`                      | `[C]`         |
//!
//! Linear weights are `[out, in]` (burn keeps `[in, out]`; they are transposed on the way out).
//! The output layer is tied to `transformer.wte.weight` and left out, as safetensors'
//! `save_model` leaves out nanoGPT's `lm_head.weight`; nanoGPT re-ties it on load. Biases are
//! there when the model has them (`bias = true`). `__metadata__` holds the format, the run's
//! config (TOML), nanoGPT's `GPTConfig` fields as JSON (`gpt_config`), the vocabulary (JSON
//! string of the characters, a character's token is its index) and, for compacted files, the
//! heads and MLP units each block kept (`blocks`). Sparse files store each weight matrix below
//! one half density as CSR exactly as the classifiers' files do.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::tensor::Device;
use pdecay::csr::transpose;
use pdecay_burn::parameter_values;
use serde::{Deserialize, Serialize};

use super::model_file::{
    FORMAT_VERSION, Format, Header, ModelTensor, Stored, load_into, read_tensors, stored_as,
    tensors_to_bytes, weight_sparsity,
};
use crate::config::TrainConfig;
use crate::data::text::Vocabulary;
use crate::models::{Gpt, GptConfig, ModelKind};
use crate::run::{RunDir, RunPosition};

/// What one transformer block keeps: all heads and `4·C` MLP units unless compacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockShape {
    /// Attention heads (each `C / config heads` wide).
    pub heads: usize,
    /// MLP hidden units.
    pub hidden: usize,
}

/// A GPT as written to and read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct GptFile {
    /// How the tensors are stored.
    pub format: Format,
    /// The run's config (sizes in `gpt`).
    pub config: TrainConfig,
    /// The characters; a character's token is its index.
    pub vocab: Vocabulary,
    /// |w| below this counts as zero (and is dropped from CSR).
    pub threshold: f64,
    /// What each block keeps.
    pub blocks: Vec<BlockShape>,
    /// The tensors with nanoGPT's names, in nanoGPT's order.
    pub tensors: Vec<ModelTensor>,
}

/// The largest GPT a file may describe (a bound against damaged headers).
const MAX_PARAMS: u128 = 200_000_000;

/// nanoGPT's name of a burn parameter path of [`Gpt`], and whether it is a Linear weight
/// (stored transposed).
fn nanogpt_name(path: &str) -> Option<(String, bool)> {
    let path = path.strip_prefix("Gpt.").unwrap_or(path);
    let norm = |p: &str| p.replace(".gamma", ".weight").replace(".beta", ".bias");
    if let Some(rest) = path.strip_prefix("blocks.") {
        let (n, rest) = rest.split_once('.')?;
        let (module, linear) = match rest.rsplit_once('.')? {
            ("attn.qkv", _) => ("attn.c_attn", true),
            ("attn.proj", _) => ("attn.c_proj", true),
            ("fc", _) => ("mlp.c_fc", true),
            ("fc_proj", _) => ("mlp.c_proj", true),
            (m @ ("ln_1" | "ln_2"), _) => (m, false),
            _ => return None,
        };
        let field = norm(&format!(".{}", rest.rsplit_once('.')?.1));
        let transposed = linear && field == ".weight";
        return Some((format!("transformer.h.{n}.{module}{field}"), transposed));
    }
    match path {
        "wte.weight" | "wpe.weight" => Some((format!("transformer.{path}"), false)),
        "ln_f.gamma" | "ln_f.beta" => Some((format!("transformer.{}", norm(path)), false)),
        _ => None,
    }
}

/// `(name, shape)` of every tensor of a GPT with sizes `c` whose blocks keep `blocks`, in
/// nanoGPT's order.
fn expected_tensors(c: &GptConfig, blocks: &[BlockShape]) -> Vec<(String, Vec<usize>)> {
    let (w, head) = (c.width, c.width / c.heads.max(1));
    let mut out = vec![
        ("transformer.wte.weight".to_string(), vec![c.vocab_size, w]),
        ("transformer.wpe.weight".to_string(), vec![c.block_size, w]),
    ];
    let linear = |name: String, rows: usize, cols: usize, out: &mut Vec<_>| {
        out.push((format!("{name}.weight"), vec![rows, cols]));
        if c.bias {
            out.push((format!("{name}.bias"), vec![rows]));
        }
    };
    let norm = |name: String, out: &mut Vec<(String, Vec<usize>)>| {
        out.push((format!("{name}.weight"), vec![w]));
        if c.bias {
            out.push((format!("{name}.bias"), vec![w]));
        }
    };
    for (n, b) in blocks.iter().enumerate() {
        let h = format!("transformer.h.{n}");
        let kept = b.heads * head;
        norm(format!("{h}.ln_1"), &mut out);
        linear(format!("{h}.attn.c_attn"), 3 * kept, w, &mut out);
        linear(format!("{h}.attn.c_proj"), w, kept, &mut out);
        norm(format!("{h}.ln_2"), &mut out);
        linear(format!("{h}.mlp.c_fc"), b.hidden, w, &mut out);
        linear(format!("{h}.mlp.c_proj"), w, b.hidden, &mut out);
    }
    norm("transformer.ln_f".to_string(), &mut out);
    out
}

/// Every block whole: all heads, `4·C` MLP units.
pub fn full_blocks(c: &GptConfig) -> Vec<BlockShape> {
    vec![
        BlockShape {
            heads: c.heads,
            hidden: 4 * c.width,
        };
        c.layers
    ]
}

impl GptFile {
    /// The weights of `model`, stored as `format` (`Compact` is made by `compact_gpt`).
    pub fn from_model(
        model: &Gpt,
        config: &TrainConfig,
        vocab: &Vocabulary,
        format: Format,
        threshold: f64,
    ) -> Result<Self> {
        let mut by_name = HashMap::new();
        for p in parameter_values(model) {
            let (name, transposed) = nanogpt_name(&p.name)
                .with_context(|| format!("the GPT parameter {} has no nanoGPT name", p.name))?;
            let (shape, values) = match (transposed, p.shape.as_slice()) {
                (true, [a, b]) => (vec![*b, *a], transpose(&p.values, *a, *b)),
                _ => (p.shape, p.values),
            };
            by_name.insert(name, (shape, values));
        }
        let c = config.gpt.model(vocab.len());
        let tensors = expected_tensors(&c, &full_blocks(&c))
            .into_iter()
            .map(|(name, shape)| {
                let (got, values) = by_name
                    .remove(&name)
                    .with_context(|| format!("the model lacks {name}"))?;
                ensure!(got == shape, "{name} is {got:?}, expected {shape:?}");
                Ok(ModelTensor {
                    name,
                    shape,
                    stored: Stored::Dense(values),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            by_name.is_empty(),
            "the GPT has parameters the file layout lacks: {:?}",
            by_name.keys().collect::<Vec<_>>()
        );
        Ok(Self {
            format: Format::Dense,
            config: config.clone(),
            vocab: vocab.clone(),
            threshold,
            blocks: full_blocks(&c),
            tensors,
        }
        .with_format(format))
    }

    /// A GPT run folder's last checkpoint as a dense file, and where the run stands.
    pub fn from_run(run: &RunDir) -> Result<(Self, RunPosition)> {
        let config = run.read_config()?;
        ensure!(
            config.model == ModelKind::Gpt,
            "{} is not a GPT run (it trains the {})",
            run.path().display(),
            crate::config::flag_name(config.model)
        );
        let vocab = run.read_vocab()?;
        let model = Gpt::new(&config.gpt.model(vocab.len()), &Device::flex());
        let Some((model, position)) = run.load_model(model)? else {
            bail!(
                "{} has no checkpoint yet: train it first",
                run.path().display()
            );
        };
        let file = Self::from_model(&model, &config, &vocab, Format::Dense, config.threshold)?;
        Ok((file, position))
    }

    /// The burn model with these weights (for files that keep every head and unit).
    pub fn to_model(&self, device: &Device) -> Result<Gpt> {
        ensure!(
            self.format != Format::Compact,
            "a compact GPT file has blocks of its own sizes; only pdecay's CPU decoder runs it: use --device cpu"
        );
        let model = Gpt::new(&self.sizes(), device);
        let mut weights = HashMap::new();
        for p in parameter_values(&model) {
            let (name, transposed) = nanogpt_name(&p.name)
                .with_context(|| format!("the GPT parameter {} has no nanoGPT name", p.name))?;
            let t = self
                .tensor(&name)
                .with_context(|| format!("the GPT file lacks {name}"))?;
            let values = match (transposed, t.shape.as_slice()) {
                (true, [rows, cols]) => transpose(&t.dense(), *rows, *cols),
                _ => t.dense(),
            };
            weights.insert(p.name, (p.shape, values));
        }
        load_into(model, weights, device)
    }

    /// The sizes of the model (the uncompacted ones: `blocks` says what each block kept).
    pub fn sizes(&self) -> GptConfig {
        self.config.gpt.model(self.vocab.len())
    }

    /// The same weights stored as `format` (see [`stored_as`]).
    pub fn with_format(&self, format: Format) -> Self {
        Self {
            format,
            tensors: stored_as(&self.tensors, format, self.threshold),
            ..self.clone()
        }
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&ModelTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Share of weight values (rank >= 2) with |w| below the threshold.
    pub fn sparsity(&self) -> f64 {
        weight_sparsity(&self.tensors, self.threshold)
    }

    /// Number of parameters (zeros included).
    pub fn params(&self) -> usize {
        self.tensors.iter().map(ModelTensor::params).sum()
    }

    /// nanoGPT's `GPTConfig` of this model, as JSON.
    fn nanogpt_config(&self) -> String {
        let c = self.sizes();
        serde_json::json!({
            "block_size": c.block_size,
            "vocab_size": c.vocab_size,
            "n_layer": c.layers,
            "n_head": c.heads,
            "n_embd": c.width,
            "dropout": c.dropout,
            "bias": c.bias,
        })
        .to_string()
    }

    /// The safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let vocab: String = self.vocab.chars.iter().collect();
        let metadata = HashMap::from([
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("format".to_string(), self.format.name().to_string()),
            (
                "model_config".to_string(),
                toml::to_string(&self.config).context("serialising the config")?,
            ),
            ("gpt_config".to_string(), self.nanogpt_config()),
            ("vocab".to_string(), serde_json::to_string(&vocab)?),
            (
                "blocks".to_string(),
                serde_json::to_string(&self.blocks)?,
            ),
            ("p".to_string(), self.config.p.to_string()),
            ("lambda".to_string(), self.config.lambda.to_string()),
            ("threshold".to_string(), self.threshold.to_string()),
            ("sparsity".to_string(), self.sparsity().to_string()),
            (
                "layout".to_string(),
                "nanoGPT GPT.state_dict() names; Linear weights [out, in]; lm_head tied to transformer.wte.weight and left out; sparse NAME as NAME.values (f32), NAME.col_indices (u16), NAME.row_offsets (i32) (CSR of [out, in]) with shape.NAME".to_string(),
            ),
        ]);
        tensors_to_bytes(&self.tensors, metadata)
    }

    /// Writes the file atomically; returns its size in bytes.
    pub fn save(&self, path: &Path) -> Result<usize> {
        let bytes = self.to_bytes()?;
        crate::run::write_atomic(path, &bytes)?;
        Ok(bytes.len())
    }

    /// Reads a file written by [`GptFile::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::data::read_bounded(path, "model file")?;
        Self::from_bytes(&bytes)
            .with_context(|| format!("{} is not a usable pdecay GPT file", path.display()))
    }

    /// Parses safetensors bytes, checking every tensor against the model the config describes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let Header {
            file,
            meta,
            format,
            config,
            threshold,
        } = Header::read(bytes)?;
        let get = |key: &str| Header::get_in(&meta, key);
        config
            .validate()
            .context("the model_config in __metadata__ is invalid")?;
        ensure!(
            config.model == ModelKind::Gpt,
            "the file holds an image classifier ({}), not a GPT: `pdecay eval FILE` tests it on images",
            crate::config::flag_name(config.model)
        );
        let vocab: String = serde_json::from_str(get("vocab")?)
            .context("the vocab in __metadata__ is not a JSON string")?;
        let vocab = Vocabulary {
            chars: vocab.chars().collect(),
        };
        ensure!(
            !vocab.is_empty() && vocab.chars.windows(2).all(|w| w[0] < w[1]),
            "the vocab in __metadata__ must list distinct characters in ascending order"
        );
        let blocks: Vec<BlockShape> = serde_json::from_str(get("blocks")?)
            .context("the blocks in __metadata__ are not a list of {heads, hidden}")?;
        let c = config.gpt.model(vocab.len());
        // bounds before any product of the sizes, which a damaged header could overflow
        ensure!(
            c.width <= 1 << 20 && c.block_size <= 1 << 20 && c.layers <= 1 << 16,
            "the model_config in __metadata__ describes a GPT of width {}, block {} and {} layers, beyond any pdecay file",
            c.width,
            c.block_size,
            c.layers
        );
        ensure!(
            blocks.len() == c.layers
                && blocks
                    .iter()
                    .all(|b| b.heads <= c.heads && b.hidden <= 4 * c.width),
            "the blocks in __metadata__ do not fit the model ({} layers of {} heads and {} MLP units)",
            c.layers,
            c.heads,
            4 * c.width
        );
        ensure!(
            format == Format::Compact || blocks == full_blocks(&c),
            "a {} file keeps every head and unit, but its blocks in __metadata__ do not",
            format.name()
        );
        let expected = expected_tensors(&c, &blocks);
        let params: u128 = expected
            .iter()
            .map(|(_, s)| s.iter().map(|&d| d as u128).product::<u128>())
            .sum();
        ensure!(
            params <= MAX_PARAMS,
            "the model_config in __metadata__ describes {params} parameters, more than the {MAX_PARAMS} a pdecay GPT file may hold"
        );
        let tensors = read_tensors(&file, &meta, expected)?;
        Ok(Self {
            format,
            config,
            vocab,
            threshold,
            blocks,
            tensors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny_config(bias: bool) -> TrainConfig {
        let mut config = TrainConfig {
            model: ModelKind::Gpt,
            ..TrainConfig::default()
        };
        config.gpt.layers = 2;
        config.gpt.heads = 2;
        config.gpt.width = 16;
        config.gpt.block_size = 8;
        config.gpt.bias = bias;
        config
    }

    #[test]
    fn every_parameter_gets_its_nanogpt_name_and_layout() {
        for bias in [false, true] {
            let config = tiny_config(bias);
            let vocab = Vocabulary::from_text("abcdefghijk");
            let model = Gpt::new(&config.gpt.model(vocab.len()), &Device::default());
            let file = GptFile::from_model(&model, &config, &vocab, Format::Dense, 1e-13).unwrap();
            let names: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
            assert_eq!(
                names[..3],
                [
                    "transformer.wte.weight",
                    "transformer.wpe.weight",
                    "transformer.h.0.ln_1.weight"
                ]
            );
            assert!(names.contains(&"transformer.h.1.mlp.c_proj.weight"));
            assert_eq!(names.contains(&"transformer.h.0.attn.c_attn.bias"), bias);
            let c_attn = file.tensor("transformer.h.0.attn.c_attn.weight").unwrap();
            assert_eq!(c_attn.shape, [48, 16], "[3C, C]");
            assert_eq!(
                file.tensor("transformer.h.0.mlp.c_proj.weight")
                    .unwrap()
                    .shape,
                [16, 64]
            );
            // burn's qkv weight is [in, out]: the file's [out, in] is its transpose
            let burn = parameter_values(&model)
                .into_iter()
                .find(|p| p.name.ends_with("blocks.0.attn.qkv.weight"))
                .unwrap();
            assert_eq!(burn.shape, [16, 48]);
            let dense = c_attn.dense();
            assert_eq!(dense[3 * 16 + 5], burn.values[5 * 48 + 3]);
            assert_eq!(
                file.params(),
                parameter_values(&model)
                    .iter()
                    .map(|p| p.values.len())
                    .sum::<usize>()
            );
        }
    }

    #[test]
    fn files_round_trip_and_foreign_ones_are_refused() {
        let config = tiny_config(true);
        let vocab = Vocabulary::from_text("hello world");
        let model = Gpt::new(&config.gpt.model(vocab.len()), &Device::default());
        let mut dense = GptFile::from_model(&model, &config, &vocab, Format::Dense, 1e-13).unwrap();
        for t in dense.tensors.iter_mut().filter(|t| t.shape.len() == 2) {
            let mut v = t.dense();
            v.iter_mut().enumerate().for_each(|(i, x)| {
                if i % 5 != 0 {
                    *x = 0.0
                }
            });
            t.stored = Stored::Dense(v);
        }
        for format in [Format::Dense, Format::Sparse] {
            let file = dense.with_format(format);
            let read = GptFile::from_bytes(&file.to_bytes().unwrap()).unwrap();
            assert_eq!(read, file);
            assert_eq!(read.vocab, vocab);
        }
        let back = dense.to_model(&Device::default()).unwrap();
        let again = GptFile::from_model(&back, &config, &vocab, Format::Dense, 1e-13).unwrap();
        assert_eq!(again, dense, "file -> burn -> file");
        let sparse = dense.with_format(Format::Sparse);
        // every matrix (20% dense) as CSR, LayerNorm gains and biases dense
        for t in &sparse.tensors {
            assert_eq!(
                matches!(t.stored, Stored::Sparse(_)),
                t.shape.len() == 2,
                "{}",
                t.name
            );
        }
        let error = |b: &[u8]| format!("{:#}", GptFile::from_bytes(b).unwrap_err());
        let mut wider = dense.clone();
        wider.config.gpt.block_size = 16;
        assert!(error(&wider.to_bytes().unwrap()).contains("another model"));
        let bytes = dense.to_bytes().unwrap();
        assert!(error(&bytes[..bytes.len() / 2]).contains("corrupt or truncated"));
        let mut cut = dense.clone();
        cut.blocks[0].heads = 1;
        assert!(error(&cut.to_bytes().unwrap()).contains("keeps every head"));
    }
}
