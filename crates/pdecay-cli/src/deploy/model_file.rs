//! Model files: a trained classifier as safetensors, dense, sparse (CSR) or compacted.
//!
//! Layout (readable with PyTorch's `safetensors` package): weight matrices in PyTorch's
//! `[out, in]` orientation (burn keeps `nn.Linear` weights as `[in, out]`; they are transposed
//! on the way out and back), conv kernels `[out, in, kh, kw]`, every value f32. In a sparse
//! file a decayed tensor `NAME` whose density is below one half is stored as CSR of its
//! `[out, in·kh·kw]` view: `NAME.values` (f32), `NAME.col_indices` (u16 when every column
//! index fits, as in every pdecay model; i32 otherwise and in version-1 files) and
//! `NAME.row_offsets` (i32), with its shape in the metadata key `shape.NAME`; all other
//! tensors stay dense.
//! `__metadata__` also holds the format version, the format, the run's config (TOML), p,
//! lambda, the threshold, the sparsity and the input normalisation (`input_mean`,
//! `input_std`: a number for one channel, a JSON list for several).
//!
//! The MLP's and CNN's tensors are named by their burn paths (`Mlp.hidden.0.weight`). A
//! ResNet's are named as in the authors' PyTorch model ([`torch_name`]: `conv1.weight`,
//! `layer1.0.bn1.running_mean`, `layer2.0.shortcut.0.weight`, `linear.weight`), BatchNorm's
//! running statistics included, so `model.load_state_dict(safetensors.torch.load_file(F),
//! strict=False)` loads a dense file into it (`num_batches_tracked` is not stored). BatchNorm
//! stays unfolded in the file; the inference engines fold it
//! ([`super::resnet_infer`]). A compacted ResNet's narrower blocks are listed in the metadata
//! key `inner_widths`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Device, Tensor, TensorData};
use pdecay::csr::{Csr, transpose};
use pdecay_burn::parameter_values;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use super::check_images;
use crate::config::TrainConfig;
use crate::data::{ChannelStats, ImageSplits, load_images};
use crate::models::resnet::torch_name;
use crate::models::{Classifier, ModelKind, ResNetConfig, memory};
use crate::run::{RunDir, write_atomic};

/// The version written into every file; files of other versions are refused.
pub const FORMAT_VERSION: &str = "2";

/// Checks a file's `format_version`: version 1 (CSR column indices always I32) and version 2
/// (U16 where every column fits) are read.
pub(crate) fn check_version(version: &str) -> Result<()> {
    ensure!(
        version == FORMAT_VERSION || version == "1",
        "format version {version} is not supported (this pdecay reads versions 1 and {FORMAT_VERSION}): is the file from a newer pdecay?"
    );
    Ok(())
}

/// A tensor stored sparse only when that is smaller: CSR costs 8 bytes per non-zero (value and
/// column) against 4 bytes per weight dense.
const SPARSE_BELOW_DENSITY: f64 = 0.5;

/// How the weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Every tensor dense.
    Dense,
    /// Sparse decayed matrices as CSR, the rest dense.
    Sparse,
    /// Dead neurons removed (`pdecay compact`), every tensor dense.
    Compact,
}

impl Format {
    /// The name in files and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Sparse => "sparse",
            Self::Compact => "compact",
        }
    }

    /// The format called `name` in a file's `__metadata__`.
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name {
            "dense" => Self::Dense,
            "sparse" => Self::Sparse,
            "compact" => Self::Compact,
            other => bail!("unknown format `{other}` in __metadata__"),
        })
    }
}

/// One tensor's values, as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// Row-major values.
    Dense(Vec<f32>),
    /// CSR of the `[shape[0], rest]` view.
    Sparse(Csr),
}

/// A named tensor in PyTorch orientation.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelTensor {
    /// The parameter path (`Mlp.hidden.0.weight`).
    pub name: String,
    /// The shape, PyTorch orientation.
    pub shape: Vec<usize>,
    /// The values.
    pub stored: Stored,
}

impl ModelTensor {
    /// The dense row-major values.
    pub fn dense(&self) -> Vec<f32> {
        match &self.stored {
            Stored::Dense(v) => v.clone(),
            Stored::Sparse(csr) => csr.to_dense(),
        }
    }

    /// Number of values (zeros included).
    pub fn params(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of values that are not exactly zero.
    pub fn nonzero(&self) -> usize {
        self.dense().iter().filter(|w| **w != 0.0).count()
    }
}

/// A model as written to and read from a file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFile {
    /// How the tensors are stored.
    pub format: Format,
    /// The run's config (architecture in `model` and `hidden`).
    pub config: TrainConfig,
    /// |w| below this counts as zero (and is dropped from CSR).
    pub threshold: f64,
    /// The training set's pixel mean and std (of values in [0, 1]) per channel, that inputs
    /// are normalised with.
    pub input_stats: ChannelStats,
    /// A compacted ResNet's channels between each BasicBlock's two convolutions, blocks in
    /// forward order; empty for every other file (the blocks are as wide as their output).
    pub inner_widths: Vec<usize>,
    /// The tensors, in the model's parameter order.
    pub tensors: Vec<ModelTensor>,
}

/// Flips a burn `[in, out]` matrix to PyTorch's `[out, in]` (and back: it is its own inverse
/// up to the swapped shape). Other ranks keep their layout.
fn reorient(shape: &[usize], values: Vec<f32>) -> (Vec<usize>, Vec<f32>) {
    match shape {
        [a, b] => (vec![*b, *a], transpose(&values, *a, *b)),
        _ => (shape.to_vec(), values),
    }
}

/// Whether the tensor named `name` is a buffer: BatchNorm's running mean or variance.
fn is_buffer(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// Whether the tensor named `name` with `shape` is a decayed weight (rank >= 2).
fn is_weight(shape: &[usize]) -> bool {
    shape.len() >= 2
}

impl ModelFile {
    /// The weights of `model`, stored as `format` (`Compact` is made by `compact`).
    pub fn from_model(
        model: &Classifier,
        config: &TrainConfig,
        format: Format,
        threshold: f64,
        input_stats: ChannelStats,
    ) -> Self {
        let tensors = parameter_values(model)
            .into_iter()
            .map(|p| {
                let (shape, values) = reorient(&p.shape, p.values);
                ModelTensor {
                    name: file_name(config.model, &p.name),
                    shape,
                    stored: Stored::Dense(values),
                }
            })
            .collect();
        Self {
            format: Format::Dense,
            config: config.clone(),
            threshold,
            input_stats,
            inner_widths: Vec::new(),
            tensors,
        }
        .with_format(format)
    }

    /// The same weights stored as `format`: `Dense` and `Compact` densify every tensor,
    /// `Sparse` stores each weight matrix as CSR when that is smaller.
    pub fn with_format(&self, format: Format) -> Self {
        Self {
            format,
            tensors: stored_as(&self.tensors, format, self.threshold),
            ..self.clone()
        }
    }

    /// Share of weight values (rank >= 2) with |w| below the threshold.
    pub fn sparsity(&self) -> f64 {
        weight_sparsity(&self.tensors, self.threshold)
    }

    /// Number of parameters (zeros included), as PyTorch counts them: BatchNorm's running
    /// statistics are buffers, not parameters.
    pub fn params(&self) -> usize {
        self.parameters().map(ModelTensor::params).sum()
    }

    /// The tensors that are parameters (all but BatchNorm's running statistics).
    pub fn parameters(&self) -> impl Iterator<Item = &ModelTensor> {
        self.tensors.iter().filter(|t| !is_buffer(&t.name))
    }

    /// The safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let metadata = HashMap::from([
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("format".to_string(), self.format.name().to_string()),
            (
                "model_config".to_string(),
                toml::to_string(&self.config).context("serialising the config")?,
            ),
            ("p".to_string(), self.config.p.to_string()),
            ("lambda".to_string(), self.config.lambda.to_string()),
            ("threshold".to_string(), self.threshold.to_string()),
            ("input_mean".to_string(), stats_text(&self.input_stats, |s| s.0)),
            ("input_std".to_string(), stats_text(&self.input_stats, |s| s.1)),
            ("sparsity".to_string(), self.sparsity().to_string()),
            (
                "inner_widths".to_string(),
                serde_json::to_string(&self.inner_widths)?,
            ),
            (
                "layout".to_string(),
                "weights [out, in] (PyTorch nn.Linear), conv [out, in, kh, kw]; sparse NAME as NAME.values (f32), NAME.col_indices (u16, or i32 past 65536 columns), NAME.row_offsets (i32) (CSR of [out, in*kh*kw]) with shape.NAME".to_string(),
            ),
        ]);
        tensors_to_bytes(&self.tensors, metadata)
    }

    /// Writes the file atomically; returns its size in bytes.
    pub fn save(&self, path: &Path) -> Result<usize> {
        let bytes = self.to_bytes()?;
        write_atomic(path, &bytes)?;
        Ok(bytes.len())
    }

    /// Reads a file written by [`ModelFile::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::data::read_bounded(path, "model file")?;
        Self::from_bytes(&bytes)
            .with_context(|| format!("{} is not a usable pdecay model file", path.display()))
    }

    /// Parses safetensors bytes, checking every tensor against the model its config describes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let Header {
            file,
            meta,
            format,
            config,
            threshold,
        } = Header::read(bytes)?;
        let get = |key: &str| Header::get_in(&meta, key);
        let numbers = |key: &str| -> Result<Vec<f64>> {
            let text = get(key)?;
            // one channel: a number (every file before multi-channel data); several: a list
            serde_json::from_str::<f64>(text)
                .map(|v| vec![v])
                .or_else(|_| serde_json::from_str::<Vec<f64>>(text))
                .with_context(|| {
                    format!("the {key} in __metadata__ is not a number or a list of numbers")
                })
        };
        let (means, stds) = (numbers("input_mean")?, numbers("input_std")?);
        ensure!(
            means.len() == config.image_shape.channels
                && stds.len() == means.len()
                && means.iter().all(|m| m.is_finite())
                && stds.iter().all(|s| *s > 0.0 && s.is_finite()),
            "the input_mean and input_std in __metadata__ are not a usable normalisation of {}-channel images: one finite mean and one positive std per channel",
            config.image_shape.channels
        );
        let input_stats = means.into_iter().zip(stds).collect();
        // files written before compacted ResNets have no inner widths
        let inner_widths: Vec<usize> = match meta.get("inner_widths") {
            Some(text) => serde_json::from_str(text)
                .context("the inner_widths in __metadata__ is not a list of widths")?,
            None => Vec::new(),
        };
        let expected = expected_tensors(&config, &inner_widths)?;
        let tensors = read_tensors(&file, &meta, expected)?;
        // BatchNorm divides by √(σ² + ε): a negative variance would give NaN logits
        if let Some(t) = tensors
            .iter()
            .find(|t| t.name.ends_with("running_var") && t.dense().iter().any(|&v| v < 0.0))
        {
            bail!(
                "tensor {} holds a negative variance: the file is damaged",
                t.name
            );
        }
        Ok(Self {
            format,
            config,
            threshold,
            input_stats,
            inner_widths,
            tensors,
        })
    }

    /// The burn model with these weights (zeros where CSR dropped values). A compacted
    /// ResNet has no burn model: its narrower blocks run on [`super::resnet_infer`].
    pub fn to_model(&self, device: &Device) -> Result<Classifier> {
        ensure!(
            self.inner_widths.is_empty(),
            "a compacted ResNet runs on pdecay's own engine only, not as a burn model"
        );
        let model = Classifier::new(
            self.config.model,
            self.config.image_shape,
            self.config.widths(),
            device,
        );
        let mut by_name: HashMap<&str, &ModelTensor> =
            self.tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut weights = HashMap::new();
        for p in parameter_values(&model) {
            let name = file_name(self.config.model, &p.name);
            let t = by_name
                .remove(name.as_str())
                .with_context(|| format!("the file lacks tensor {name}"))?;
            weights.insert(p.name, reorient(&t.shape, t.dense()));
        }
        load_into(model, weights, device)
    }
}

/// A run folder's last checkpoint as a dense model file, with the run's data (for the input
/// normalisation and the test set).
pub struct RunModel {
    /// The model, dense.
    pub file: ModelFile,
    /// The run's images (or those of the `data` override).
    pub splits: ImageSplits,
    /// Epochs trained up to the checkpoint.
    pub epochs: usize,
}

impl ModelFile {
    /// The model of `run`'s last checkpoint as a dense file; `data` replaces the run's data.
    pub fn from_run(run: &RunDir, data: Option<&Path>) -> Result<RunModel> {
        let mut config = run.read_config()?;
        ensure!(
            config.model.is_classifier(),
            "{} is a GPT run; export, compact and bench-infer take image classifier runs (MLP, CNN, ResNets)",
            run.path().display()
        );
        // export and the sparse engines are CPU code
        let model = Classifier::new(
            config.model,
            config.image_shape,
            config.widths(),
            &Device::flex(),
        );
        let Some((model, position)) = run.load_model(model)? else {
            bail!(
                "{} has no checkpoint yet: train it first",
                run.path().display()
            );
        };
        if let Some(dir) = data {
            config.data = Some(dir.display().to_string());
        }
        let splits = load_images(config.data.as_deref())?;
        check_images(&splits, config.image_shape)?;
        let stats = splits.train.pixel_stats();
        let file = ModelFile::from_model(&model, &config, Format::Dense, config.threshold, stats);
        Ok(RunModel {
            file,
            splits,
            epochs: position.done(),
        })
    }
}

/// `tensors` stored as `format`: `Dense` and `Compact` densify every tensor, `Sparse` stores
/// each weight matrix (rank >= 2) as CSR of its `[shape[0], rest]` view when that is smaller.
pub(crate) fn stored_as(
    tensors: &[ModelTensor],
    format: Format,
    threshold: f64,
) -> Vec<ModelTensor> {
    tensors
        .iter()
        .map(|t| {
            let values = t.dense();
            let stored = if format == Format::Sparse && is_weight(&t.shape) {
                let rows = t.shape[0];
                let csr =
                    Csr::from_dense(&values, rows, values.len() / rows.max(1), threshold as f32);
                if (csr.nnz() as f64) < SPARSE_BELOW_DENSITY * values.len() as f64 {
                    Stored::Sparse(csr)
                } else {
                    Stored::Dense(values)
                }
            } else {
                Stored::Dense(values)
            };
            ModelTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                stored,
            }
        })
        .collect()
}

/// The name a file gives the parameter at burn path `path` of a `kind` model: a ResNet's as in
/// the authors' PyTorch model, the others' their burn path.
fn file_name(kind: ModelKind, path: &str) -> String {
    if kind.is_resnet() {
        torch_name(path)
    } else {
        path.to_string()
    }
}

/// `input_stats`' field `part` as metadata: a number for one channel, a JSON list for several.
fn stats_text(stats: &ChannelStats, part: impl Fn(&(f64, f64)) -> f64) -> String {
    match stats.as_slice() {
        [one] => part(one).to_string(),
        many => serde_json::to_string(&many.iter().map(part).collect::<Vec<_>>())
            .expect("a list of numbers serialises"),
    }
}

/// Share of weight values (rank >= 2) of `tensors` with |w| below `threshold`.
pub(crate) fn weight_sparsity(tensors: &[ModelTensor], threshold: f64) -> f64 {
    let (mut zero, mut total) = (0usize, 0usize);
    for t in tensors.iter().filter(|t| is_weight(&t.shape)) {
        total += t.params();
        zero += t
            .dense()
            .iter()
            .filter(|w| (w.abs() as f64) < threshold)
            .count();
    }
    zero as f64 / total.max(1) as f64
}

/// What the header of every pdecay model file holds, read and checked.
pub(crate) struct Header<'a> {
    /// The tensors.
    pub file: SafeTensors<'a>,
    /// `__metadata__`.
    pub meta: HashMap<String, String>,
    /// `format`.
    pub format: Format,
    /// `model_config`, parsed (not yet validated).
    pub config: TrainConfig,
    /// `threshold`, a finite number >= 0.
    pub threshold: f64,
}

impl<'a> Header<'a> {
    /// The header of `bytes`; a missing or malformed key is an error naming it.
    pub(crate) fn read(bytes: &'a [u8]) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .context("not a safetensors file (corrupt or truncated)")?;
        let file = SafeTensors::deserialize(bytes)
            .context("not a safetensors file (corrupt or truncated)")?;
        let meta = header.metadata().clone().unwrap_or_default();
        check_version(Self::get_in(&meta, "format_version")?)?;
        let format = Format::parse(Self::get_in(&meta, "format")?)?;
        let config: TrainConfig = toml::from_str(Self::get_in(&meta, "model_config")?)
            .context("the model_config in __metadata__ is invalid")?;
        let threshold: f64 = Self::get_in(&meta, "threshold")?
            .parse()
            .context("the threshold in __metadata__ is not a number")?;
        ensure!(
            threshold.is_finite() && threshold >= 0.0,
            "the threshold in __metadata__ ({threshold}) must be a finite number >= 0"
        );
        Ok(Self {
            file,
            meta,
            format,
            config,
            threshold,
        })
    }

    /// The metadata value of `key`.
    pub(crate) fn get_in<'m>(meta: &'m HashMap<String, String>, key: &str) -> Result<&'m str> {
        meta.get(key).map(String::as_str).with_context(|| {
            format!("`{key}` is missing from __metadata__: not a file written by pdecay export or compact")
        })
    }
}

/// The model a pdecay model file holds (from its `model_config`), without reading the tensors.
pub fn file_model_kind(bytes: &[u8]) -> Result<ModelKind> {
    let (_, header) = SafeTensors::read_metadata(bytes)
        .context("not a safetensors file (corrupt or truncated)")?;
    let meta = header.metadata().clone().unwrap_or_default();
    let config = meta.get("model_config").context(
        "`model_config` is missing from __metadata__: not a file written by pdecay export or compact",
    )?;
    let config: TrainConfig =
        toml::from_str(config).context("the model_config in __metadata__ is invalid")?;
    Ok(config.model)
}

/// The safetensors bytes of `tensors` (CSR ones as their three arrays, with `shape.NAME` in
/// `metadata`), the header's keys sorted.
pub(crate) fn tensors_to_bytes(
    tensors: &[ModelTensor],
    mut metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let mut arrays: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let i32_bytes = |v: &[u32]| {
        v.iter()
            .flat_map(|&x| (x as i32).to_le_bytes())
            .collect::<Vec<u8>>()
    };
    for t in tensors {
        match &t.stored {
            Stored::Dense(v) => {
                arrays.push((t.name.clone(), Dtype::F32, t.shape.clone(), f32_bytes(v)));
            }
            Stored::Sparse(csr) => {
                metadata.insert(
                    format!("shape.{}", t.name),
                    serde_json::to_string(&t.shape)?,
                );
                let nnz = csr.nnz();
                arrays.push((
                    format!("{}.values", t.name),
                    Dtype::F32,
                    vec![nnz],
                    f32_bytes(&csr.values),
                ));
                // 2 bytes per index where every column fits: 6 bytes per non-zero, not 8
                let (dtype, bytes) = if csr.cols <= 1 << 16 {
                    let bytes = csr
                        .col_indices
                        .iter()
                        .flat_map(|&c| (c as u16).to_le_bytes());
                    (Dtype::U16, bytes.collect())
                } else {
                    (Dtype::I32, i32_bytes(&csr.col_indices))
                };
                arrays.push((format!("{}.col_indices", t.name), dtype, vec![nnz], bytes));
                arrays.push((
                    format!("{}.row_offsets", t.name),
                    Dtype::I32,
                    vec![csr.rows + 1],
                    i32_bytes(&csr.row_offsets),
                ));
            }
        }
    }
    let views = arrays
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            Ok((
                name.as_str(),
                TensorView::new(*dtype, shape.clone(), bytes)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    canonical_header(safetensors::serialize(views, Some(metadata))?)
}

/// The same safetensors bytes with the JSON header's keys sorted, so that a model gives the
/// same file byte for byte every time: safetensors writes `__metadata__` from a `HashMap`,
/// whose order changes from one run to the next. Sorting only reorders keys, so the header
/// keeps its length and padding, and the tensors' data offsets stay valid.
fn canonical_header(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let corrupt = || anyhow::anyhow!("safetensors wrote a header this reader cannot parse");
    let length = u64::from_le_bytes(bytes.get(..8).ok_or_else(corrupt)?.try_into()?) as usize;
    let header = bytes.get(8..8 + length).ok_or_else(corrupt)?;
    // serde_json's map is a BTreeMap: parsing and writing back sorts every object's keys
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|_| corrupt())?;
    let sorted = serde_json::to_string(&value)?;
    ensure!(sorted.len() <= length, "the sorted header grew");
    let mut padded = sorted.into_bytes();
    padded.resize(length, b' ');
    bytes[8..8 + length].copy_from_slice(&padded);
    Ok(bytes)
}

/// Checks where `export` and `compact` write: never into a run folder (its checkpoint, config
/// and metrics are pdecay's), never over a folder, and over an existing file only with `force`.
pub fn check_destination(out: &Path, force: bool) -> Result<()> {
    ensure!(
        !out.as_os_str().to_string_lossy().ends_with('/'),
        "--out {} ends with '/', a folder; give the path of the file to write, e.g. {}",
        out.display(),
        out.join("model.safetensors").display()
    );
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    ensure!(
        parent.is_dir(),
        "--out {}: the folder {} does not exist; create it first",
        out.display(),
        parent.display()
    );
    let parent = std::fs::canonicalize(&parent).unwrap_or(parent);
    if let Some(run) = parent.ancestors().find(|d| RunDir::new(d).is_written_run()) {
        bail!(
            "--out {} lies inside the run folder {}, whose files are pdecay's; write the model file outside it",
            out.display(),
            run.display()
        );
    }
    ensure!(
        !out.is_dir(),
        "--out {} is a folder; give the path of the file to write, e.g. {}",
        out.display(),
        out.join("model.safetensors").display()
    );
    ensure!(
        force || !out.exists(),
        "--out {} exists; pass --force to replace it, or choose another --out",
        out.display()
    );
    Ok(())
}

/// The largest model a file may describe (a bound against damaged headers).
const MAX_PARAMS: u128 = 100_000_000;

/// `(name, shape in PyTorch orientation)` of every parameter of the model `config` describes,
/// a compacted ResNet's blocks `inner_widths` wide.
fn expected_tensors(
    config: &TrainConfig,
    inner_widths: &[usize],
) -> Result<Vec<(String, Vec<usize>)>> {
    config
        .validate()
        .context("the model_config in __metadata__ is invalid")?;
    ensure!(
        config.model.is_classifier(),
        "this is a GPT model file: test it with `pdecay eval FILE --data input.txt`, generate with `pdecay sample FILE`; the image commands take classifier files"
    );
    // Bound the model before building it: a damaged header must not allocate gigabytes.
    let params = memory::classifier(config.model, config.image_shape, config.widths(), 1).params;
    ensure!(
        params <= MAX_PARAMS,
        "the model_config in __metadata__ describes {params} parameters, more than the {MAX_PARAMS} a pdecay file may hold"
    );
    let model = Classifier::new(
        config.model,
        config.image_shape,
        config.widths(),
        &Device::flex(),
    );
    let mut expected: Vec<(String, Vec<usize>)> = parameter_values(&model)
        .into_iter()
        .map(|p| {
            let shape = match p.shape.as_slice() {
                [a, b] => vec![*b, *a],
                s => s.to_vec(),
            };
            (file_name(config.model, &p.name), shape)
        })
        .collect();
    if !inner_widths.is_empty() {
        narrow_blocks(config, inner_widths, &mut expected)?;
    }
    Ok(expected)
}

/// The names of a `config` ResNet's BasicBlocks (`layer1.0`, ...), in forward order.
pub(crate) fn resnet_blocks(config: &ResNetConfig) -> Vec<String> {
    config
        .stages
        .iter()
        .enumerate()
        .flat_map(|(i, &(_, _, blocks))| (0..blocks).map(move |j| format!("layer{}.{j}", i + 1)))
        .collect()
}

/// `expected`'s shapes with each BasicBlock `inner_widths[k]` channels wide between its convs:
/// `conv1`'s outputs, `bn1`'s channels and `conv2`'s inputs.
fn narrow_blocks(
    config: &TrainConfig,
    inner_widths: &[usize],
    expected: &mut [(String, Vec<usize>)],
) -> Result<()> {
    let blocks = ResNetConfig::of(config.model, config.widths())
        .map(|c| resnet_blocks(&c))
        .unwrap_or_default();
    ensure!(
        inner_widths.len() == blocks.len(),
        "the inner_widths in __metadata__ list {} blocks; a {} has {} (inner_widths belong to compacted ResNets)",
        inner_widths.len(),
        crate::config::flag_name(config.model),
        blocks.len()
    );
    for (block, &width) in blocks.iter().zip(inner_widths) {
        for (name, shape) in expected.iter_mut() {
            let Some(rest) = name
                .strip_prefix(block.as_str())
                .and_then(|r| r.strip_prefix('.'))
            else {
                continue;
            };
            let axis = match rest {
                "conv1.weight" | "bn1.weight" | "bn1.bias" | "bn1.running_mean"
                | "bn1.running_var" => 0,
                "conv2.weight" => 1,
                _ => continue,
            };
            ensure!(
                (1..=shape[axis]).contains(&width),
                "the inner_widths in __metadata__ give {block} {width} channels; it has 1 to {}",
                shape[axis]
            );
            shape[axis] = width;
        }
    }
    Ok(())
}

/// The tensors `expected` (`(name, shape)`, in order) from `file`, dense or as CSR (when
/// `meta` holds `shape.NAME`); a missing, misshapen or extra tensor is an error.
pub(crate) fn read_tensors(
    file: &SafeTensors,
    meta: &HashMap<String, String>,
    expected: Vec<(String, Vec<usize>)>,
) -> Result<Vec<ModelTensor>> {
    let mut used = 0;
    let mut tensors = Vec::new();
    for (name, shape) in expected {
        let stored = match meta.get(&format!("shape.{name}")) {
            Some(stored_shape) => {
                let stored_shape: Vec<usize> = serde_json::from_str(stored_shape)
                    .with_context(|| format!("shape.{name} in __metadata__ is not a shape"))?;
                ensure!(
                    stored_shape == shape,
                    "tensor {name} has shape {stored_shape:?}, the model needs {shape:?}: is the file from another model?"
                );
                used += 3;
                let values = read_f32(file, &format!("{name}.values"))?;
                let cols = read_indices(file, &format!("{name}.col_indices"))?;
                let offsets = read_i32(file, &format!("{name}.row_offsets"))?;
                let rows = shape[0];
                let csr = Csr::new(rows, shape.iter().skip(1).product(), offsets, cols, values)
                    .with_context(|| format!("the CSR arrays of {name} are inconsistent"))?;
                Stored::Sparse(csr)
            }
            None => {
                used += 1;
                let view = tensor(file, &name)?;
                ensure!(
                    view.shape() == shape.as_slice(),
                    "tensor {name} has shape {:?}, the model needs {shape:?}: is the file from another model?",
                    view.shape()
                );
                Stored::Dense(read_f32(file, &name)?)
            }
        };
        tensors.push(ModelTensor {
            name,
            shape,
            stored,
        });
    }
    ensure!(
        used == file.len(),
        "the file holds {} tensors that the model does not have: is it from another model?",
        file.len() - used
    );
    Ok(tensors)
}

fn tensor<'a>(file: &'a SafeTensors, name: &str) -> Result<TensorView<'a>> {
    file.tensor(name)
        .with_context(|| format!("the file lacks tensor {name}: is it from another model?"))
}

fn read_f32(file: &SafeTensors, name: &str) -> Result<Vec<f32>> {
    let view = tensor(file, name)?;
    ensure!(
        view.dtype() == Dtype::F32,
        "tensor {name} is {:?}, expected F32",
        view.dtype()
    );
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // a NaN weight once gave 10% accuracy without a word
    let bad = values.iter().filter(|v| !v.is_finite()).count();
    ensure!(
        bad == 0,
        "tensor {name} holds {bad} NaN or infinite values: the file is damaged, or its weights diverged"
    );
    Ok(values)
}

/// Column indices: U16 (version 2, where every column fits) or I32.
fn read_indices(file: &SafeTensors, name: &str) -> Result<Vec<u32>> {
    let view = tensor(file, name)?;
    if view.dtype() == Dtype::U16 {
        return Ok(view
            .data()
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
            .collect());
    }
    read_i32(file, name)
}

fn read_i32(file: &SafeTensors, name: &str) -> Result<Vec<u32>> {
    let view = tensor(file, name)?;
    ensure!(
        view.dtype() == Dtype::I32,
        "tensor {name} is {:?}, expected I32",
        view.dtype()
    );
    view.data()
        .chunks_exact(4)
        .map(|b| {
            let v = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            u32::try_from(v).with_context(|| format!("tensor {name} holds the negative index {v}"))
        })
        .collect()
}

/// `model` with each float parameter replaced by `weights[path]` (burn's shape and layout);
/// a parameter without weights, or with the wrong shape, is an error.
pub(crate) fn load_into<M: Module>(
    model: M,
    weights: HashMap<String, (Vec<usize>, Vec<f32>)>,
    device: &Device,
) -> Result<M> {
    let mut loader = Loader {
        path: Vec::new(),
        weights,
        device: device.clone(),
        error: None,
    };
    let model = model.map(&mut loader);
    match loader.error {
        Some(e) => bail!(e),
        None => Ok(model),
    }
}

/// Replaces each float parameter by the values stored under its path.
struct Loader {
    path: Vec<String>,
    weights: HashMap<String, (Vec<usize>, Vec<f32>)>,
    device: Device,
    error: Option<String>,
}

impl ModuleMapper for Loader {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let dims = param.val().dims().to_vec();
        match self.weights.remove(&name) {
            Some((shape, values)) if shape == dims => {
                let device = self.device.clone();
                param.map(|_| Tensor::from_data(TensorData::new(values, shape), &device))
            }
            Some((shape, _)) => {
                self.error.get_or_insert(format!(
                    "tensor {name} has shape {shape:?}, the model needs {dims:?}"
                ));
                param
            }
            None => {
                self.error
                    .get_or_insert(format!("no weights for parameter {name}"));
                param
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A small MLP with 90% of its weights zeroed, as a dense file.
    fn sparse_mlp() -> ModelFile {
        let config = TrainConfig {
            hidden: vec![16, 8],
            ..TrainConfig::default()
        };
        let model = Classifier::new(
            config.model,
            crate::data::ImageShape::FASHION_MNIST,
            config.widths(),
            &Device::default(),
        );
        let mut file =
            ModelFile::from_model(&model, &config, Format::Dense, 1e-13, vec![(0.28, 0.35)]);
        for t in file.tensors.iter_mut().filter(|t| is_weight(&t.shape)) {
            let mut values = t.dense();
            for (i, v) in values.iter_mut().enumerate() {
                if i % 10 != 0 {
                    *v = 0.0;
                }
            }
            t.stored = Stored::Dense(values);
        }
        file
    }

    #[test]
    fn a_folder_with_a_config_of_its_own_is_not_taken_for_a_run() {
        let root = std::env::temp_dir().join(format!("pdecay-dest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("models")).unwrap();
        // a project folder with its own config.toml above --out
        std::fs::write(root.join("config.toml"), "name = 'mine'").unwrap();
        check_destination(&root.join("models/m.safetensors"), false).unwrap();
        // a run folder pdecay wrote
        std::fs::write(root.join("metrics.jsonl"), "").unwrap();
        let message = check_destination(&root.join("models/m.safetensors"), true)
            .unwrap_err()
            .to_string();
        assert!(message.contains("inside the run folder"), "{message}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_model_gives_the_same_bytes_every_time() {
        for format in [Format::Dense, Format::Sparse] {
            let file = sparse_mlp().with_format(format);
            let first = file.to_bytes().unwrap();
            // the metadata's HashMap order changes with every map: ten tries tell
            for _ in 0..10 {
                assert!(file.to_bytes().unwrap() == first, "{format:?}");
            }
            let read = ModelFile::from_bytes(&first).unwrap();
            assert_eq!(read, file);
        }
    }

    #[test]
    fn dense_and_sparse_files_round_trip_to_identical_weights() {
        let dense = sparse_mlp();
        for format in [Format::Dense, Format::Sparse] {
            let file = dense.with_format(format);
            let read = ModelFile::from_bytes(&file.to_bytes().unwrap()).unwrap();
            assert_eq!(read, file, "{format:?}");
            for (a, b) in read.tensors.iter().zip(&dense.tensors) {
                assert_eq!(a.dense(), b.dense(), "{}", a.name);
            }
        }
        let sparse = dense.with_format(Format::Sparse);
        // every weight matrix (10% dense) is CSR, every bias dense
        for t in &sparse.tensors {
            assert_eq!(
                matches!(t.stored, Stored::Sparse(_)),
                t.shape.len() == 2,
                "{}",
                t.name
            );
        }
        let (d, s) = (
            dense.to_bytes().unwrap().len(),
            sparse.to_bytes().unwrap().len(),
        );
        assert!(s * 4 < d, "sparse {s} bytes vs dense {d}");
    }

    #[test]
    fn the_model_gets_the_files_weights_in_burns_orientation() {
        let file = sparse_mlp();
        let model = file.to_model(&Device::default()).unwrap();
        let back = ModelFile::from_model(
            &model,
            &file.config,
            Format::Dense,
            1e-13,
            file.input_stats.clone(),
        );
        assert_eq!(back.tensors, file.tensors);
        // burn keeps Linear weights as [in, out]; the file as [out, in]
        let burn_shapes: Vec<Vec<usize>> = parameter_values(&model)
            .into_iter()
            .map(|p| p.shape)
            .collect();
        assert_eq!(burn_shapes[0], [784, 16]);
        assert_eq!(file.tensors[0].shape, [16, 784]);
    }

    #[test]
    fn missing_foreign_and_corrupt_files_are_clear_errors() {
        let file = sparse_mlp().with_format(Format::Sparse);
        let error = |bytes: &[u8]| format!("{:#}", ModelFile::from_bytes(bytes).unwrap_err());

        let mut missing = file.clone();
        missing.tensors.remove(1);
        assert!(error(&missing.to_bytes().unwrap()).contains("lacks tensor Mlp.hidden.0.bias"));

        let mut foreign = file.clone();
        foreign.config.hidden = vec![32, 8];
        let message = error(&foreign.to_bytes().unwrap());
        assert!(message.contains("another model"), "{message}");

        let bytes = file.to_bytes().unwrap();
        let message = error(&bytes[..bytes.len() - 10]);
        assert!(message.contains("corrupt or truncated"), "{message}");
        assert!(error(b"not a model").contains("corrupt or truncated"));

        let plain = safetensors::serialize(
            [(
                "w",
                TensorView::new(Dtype::F32, vec![1], &[0, 0, 0, 0]).unwrap(),
            )],
            None,
        )
        .unwrap();
        assert!(error(&plain).contains("format_version"));

        let mut poisoned = sparse_mlp();
        if let Stored::Dense(values) = &mut poisoned.tensors[1].stored {
            values[0] = f32::NAN;
        }
        let message = error(&poisoned.to_bytes().unwrap());
        assert!(message.contains("1 NaN or infinite values"), "{message}");
    }

    #[test]
    fn column_indices_take_two_bytes_and_version_1_files_with_four_still_read() {
        let file = sparse_mlp().with_format(Format::Sparse);
        let bytes = file.to_bytes().unwrap();
        let read = SafeTensors::deserialize(&bytes).unwrap();
        let cols = read.tensor("Mlp.hidden.0.weight.col_indices").unwrap();
        assert_eq!(cols.dtype(), Dtype::U16);
        // the same file as version 1 wrote it: I32 column indices
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        meta.insert("format_version".into(), "1".into());
        let arrays: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = read
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                if view.dtype() == Dtype::U16 {
                    let wide = view
                        .data()
                        .chunks_exact(2)
                        .flat_map(|b| (u16::from_le_bytes([b[0], b[1]]) as i32).to_le_bytes())
                        .collect();
                    (name, Dtype::I32, view.shape().to_vec(), wide)
                } else {
                    (
                        name,
                        view.dtype(),
                        view.shape().to_vec(),
                        view.data().to_vec(),
                    )
                }
            })
            .collect();
        let views: Vec<(&str, TensorView)> = arrays
            .iter()
            .map(|(n, d, s, b)| (n.as_str(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        let old = safetensors::serialize(views, Some(meta)).unwrap();
        assert!(old.len() > bytes.len());
        assert_eq!(ModelFile::from_bytes(&old).unwrap(), file);
    }

    #[test]
    fn resnet_files_keep_rgb_normalisation_and_refuse_negative_variances() {
        use crate::deploy::resnet_infer::tests::resnet_file;
        let mut file = resnet_file(ModelKind::Resnet20, crate::data::ImageShape::CIFAR10, 2);
        file.input_stats = vec![(0.49, 0.25), (0.48, 0.24), (0.45, 0.26)];
        let bytes = file.to_bytes().unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = header.metadata().clone().unwrap();
        assert_eq!(meta["input_mean"], "[0.49,0.48,0.45]");
        assert_eq!(ModelFile::from_bytes(&bytes).unwrap(), file);
        // buffers are not parameters: 272,474 less the stem's 3 input channels' share
        let r20 = 272_474 - 9 * 3 * 16 + 9 * 3 * 2;
        assert!(file.params() < r20 && file.params() > 0);
        let counted: usize = file
            .tensors
            .iter()
            .filter(|t| !t.name.contains("running"))
            .map(ModelTensor::params)
            .sum();
        assert_eq!(file.params(), counted);
        // one channel's stats for RGB images
        let mut grey = file.clone();
        grey.input_stats.truncate(1);
        let message = format!(
            "{:#}",
            ModelFile::from_bytes(&grey.to_bytes().unwrap()).unwrap_err()
        );
        assert!(message.contains("3-channel"), "{message}");
        let mut damaged = file.clone();
        let var = damaged
            .tensors
            .iter_mut()
            .find(|t| t.name == "layer2.1.bn1.running_var")
            .unwrap();
        var.stored = Stored::Dense(vec![-1.0; var.params()]);
        let message = format!(
            "{:#}",
            ModelFile::from_bytes(&damaged.to_bytes().unwrap()).unwrap_err()
        );
        assert!(
            message.contains("layer2.1.bn1.running_var holds a negative variance"),
            "{message}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = ModelFile::from_bytes(&bytes);
        }

        #[test]
        fn damaged_files_never_panic(at in 0usize..1_000_000, value in any::<u8>(), cut in 0usize..1_000_000) {
            let bytes = sparse_mlp().with_format(Format::Sparse).to_bytes().unwrap();
            let mut damaged = bytes.clone();
            let at = at % damaged.len();
            damaged[at] = value;
            let _ = ModelFile::from_bytes(&damaged);
            let _ = ModelFile::from_bytes(&bytes[..cut % bytes.len()]);
        }
    }
}
