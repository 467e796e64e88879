//! `pdecay compact`: remove the neurons and channels that cannot change the output.
//!
//! A unit (neuron or conv channel) of a layer is removable when the next layer never reads
//! it: every outgoing weight is zero. It goes with its row of weights and its bias, and the
//! next layer loses the matching input columns. Between two dense layers a unit whose
//! incoming weights are all zero is also removable: its activation is the constant
//! `relu(bias)`, which is folded into the next layer's bias. (Not across a conv: zero padding
//! makes a constant channel's contribution position-dependent.) Removing units can strand
//! others, so the passes repeat until nothing changes. The result is a smaller dense model
//! with the same outputs up to float rounding. "Zero" here is exactly 0.0 (pWD flushes dead
//! weights to exact zero); weights merely below the sparsity threshold are kept.
//!
//! In a ResNet the channels between a BasicBlock's two convolutions are the units that can
//! go: a channel that `conv2` never reads, or whose `conv1` weights are all zero and whose
//! BatchNorm then gives `relu(β − μ·γ/√(σ² + ε)) = 0` everywhere (a constant other than 0 is
//! kept: zero padding makes it position-dependent). The residual stream's channels are summed
//! across blocks and stay. A block keeps at least one channel.

use anyhow::{Context, Result, bail};

use super::model_file::{Format, ModelFile, ModelTensor, Stored, resnet_blocks};
use super::resnet_infer::fold_scale;
use crate::models::{ModelKind, ResNetConfig};

/// One weighted layer as a 2-D `[units, inputs]` matrix, PyTorch orientation.
#[derive(Debug, Clone)]
struct Layer {
    weight_name: String,
    bias_name: String,
    /// The weight's full shape (`[out, in]` or `[out, in, kh, kw]`).
    shape: Vec<usize>,
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl Layer {
    fn units(&self) -> usize {
        self.shape[0]
    }

    fn inputs(&self) -> usize {
        self.weight.len() / self.units().max(1)
    }

    /// Columns of input `unit` of the previous layer: `block` consecutive columns each.
    fn input_columns(&self, unit: usize, block: usize) -> std::ops::Range<usize> {
        unit * block..(unit + 1) * block
    }

    fn reads(&self, unit: usize, block: usize) -> bool {
        let cols = self.inputs();
        (0..self.units()).any(|r| {
            self.input_columns(unit, block)
                .any(|c| self.weight[r * cols + c] != 0.0)
        })
    }

    fn row_is_zero(&self, unit: usize) -> bool {
        let cols = self.inputs();
        self.weight[unit * cols..(unit + 1) * cols]
            .iter()
            .all(|&w| w == 0.0)
    }

    fn remove_unit(&mut self, unit: usize) {
        let cols = self.inputs();
        self.weight.drain(unit * cols..(unit + 1) * cols);
        self.bias.remove(unit);
        self.shape[0] -= 1;
    }

    fn remove_input(&mut self, unit: usize, block: usize) {
        let (rows, cols) = (self.units(), self.inputs());
        let gone = self.input_columns(unit, block);
        let mut kept = Vec::with_capacity(rows * (cols - block));
        for r in 0..rows {
            for c in 0..cols {
                if !gone.contains(&c) {
                    kept.push(self.weight[r * cols + c]);
                }
            }
        }
        self.weight = kept;
        // a dense layer loses `block` input columns, a conv one input channel
        self.shape[1] -= if self.shape.len() == 2 { block } else { 1 };
    }
}

/// What compaction removed.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactReport {
    /// Units per layer before.
    pub widths_before: Vec<usize>,
    /// Units per layer after.
    pub widths_after: Vec<usize>,
    /// Parameters before.
    pub params_before: usize,
    /// Parameters after.
    pub params_after: usize,
}

/// The layers of the model, each with how many input columns one unit of it feeds in the
/// next layer (1 into a dense layer, kh·kw into a conv, h·w into the dense layer after the
/// last pooled conv), and whether a constant unit may be folded into the next layer.
fn layer_names(file: &ModelFile) -> Result<Vec<(String, usize, bool)>> {
    Ok(match file.config.model {
        ModelKind::Gpt => bail!("model files hold the image classifiers, not the GPT"),
        ModelKind::Resnet18 | ModelKind::Resnet20 => {
            bail!("a ResNet is compacted block by block (compact_resnet)")
        }
        ModelKind::Mlp => {
            let mut names: Vec<(String, usize, bool)> = (0..file.config.hidden.len())
                .map(|k| (format!("Mlp.hidden.{k}"), 1, true))
                .collect();
            names.push(("Mlp.output".into(), 1, true));
            names
        }
        ModelKind::Cnn => {
            let conv2 = file.tensors.iter().find(|t| t.name == "Cnn.conv2.weight");
            let dense = file.tensors.iter().find(|t| t.name == "Cnn.dense.weight");
            let (Some(conv2), Some(dense)) = (conv2, dense) else {
                bail!("the CNN file lacks its conv2 or dense weights");
            };
            let kernel = conv2.shape[2] * conv2.shape[3];
            let pooled = dense.shape[1] / conv2.shape[0];
            vec![
                ("Cnn.conv1".into(), kernel, false),
                ("Cnn.conv2".into(), pooled, false),
                ("Cnn.dense".into(), 1, true),
                ("Cnn.output".into(), 1, true),
            ]
        }
    })
}

/// The compacted model (format `Compact`, all dense) and what was removed.
pub fn compact(file: &ModelFile) -> Result<(ModelFile, CompactReport)> {
    if file.config.model.is_resnet() {
        return compact_resnet(file);
    }
    let names = layer_names(file)?;
    let find = |name: &str| -> Result<&ModelTensor> {
        file.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| anyhow::anyhow!("the file lacks {name}"))
    };
    let mut layers = names
        .iter()
        .map(|(name, _, _)| {
            let (w, b) = (
                find(&format!("{name}.weight"))?,
                find(&format!("{name}.bias"))?,
            );
            Ok(Layer {
                weight_name: w.name.clone(),
                bias_name: b.name.clone(),
                shape: w.shape.clone(),
                weight: w.dense(),
                bias: b.dense(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let widths_before: Vec<usize> = layers.iter().map(Layer::units).collect();
    loop {
        let mut changed = false;
        for k in 0..layers.len() - 1 {
            let (block, foldable) = (names[k].1, names[k].2);
            let (head, tail) = layers.split_at_mut(k + 1);
            let (layer, next) = (&mut head[k], &mut tail[0]);
            let mut unit = 0;
            while unit < layer.units() {
                if !next.reads(unit, block) {
                    layer.remove_unit(unit);
                    next.remove_input(unit, block);
                    changed = true;
                } else if foldable && layer.row_is_zero(unit) {
                    let constant = layer.bias[unit].max(0.0);
                    let cols = next.inputs();
                    for r in 0..next.units() {
                        next.bias[r] += next.weight[r * cols + unit] * constant;
                    }
                    layer.remove_unit(unit);
                    next.remove_input(unit, block);
                    changed = true;
                } else {
                    unit += 1;
                }
            }
            // an empty layer has no inputs left to index: stop here with the reason
            if layer.units() == 0 {
                bail!(
                    "every unit of {} is dead: the model's output is a constant (was lambda far too large?)",
                    names[k].0
                );
            }
        }
        if !changed {
            break;
        }
    }
    let widths_after: Vec<usize> = layers.iter().map(Layer::units).collect();
    let mut config = file.config.clone();
    let hidden: Vec<usize> = widths_after[..widths_after.len() - 1].to_vec();
    match config.model {
        ModelKind::Mlp | ModelKind::Gpt => config.hidden = hidden,
        ModelKind::Cnn => config.cnn_widths = hidden,
        ModelKind::Resnet18 | ModelKind::Resnet20 => {
            bail!("a ResNet is compacted block by block (compact_resnet)")
        }
    }
    let mut tensors = Vec::new();
    for layer in layers {
        tensors.push(ModelTensor {
            name: layer.weight_name,
            shape: layer.shape,
            stored: Stored::Dense(layer.weight),
        });
        tensors.push(ModelTensor {
            shape: vec![layer.bias.len()],
            name: layer.bias_name,
            stored: Stored::Dense(layer.bias),
        });
    }
    // keep the model's parameter order (the names are unique)
    let order: Vec<&str> = file.tensors.iter().map(|t| t.name.as_str()).collect();
    tensors.sort_by_key(|t| order.iter().position(|n| *n == t.name));
    Ok(finish(
        file,
        config,
        tensors,
        Vec::new(),
        widths_before,
        widths_after,
    ))
}

/// The compacted file of `file` (its `config` and `tensors` narrowed, a ResNet's
/// `inner_widths`) and the report of widths and parameters before and after.
fn finish(
    file: &ModelFile,
    config: crate::config::TrainConfig,
    tensors: Vec<ModelTensor>,
    inner_widths: Vec<usize>,
    widths_before: Vec<usize>,
    widths_after: Vec<usize>,
) -> (ModelFile, CompactReport) {
    let compacted = ModelFile {
        format: Format::Compact,
        config,
        threshold: file.threshold,
        input_stats: file.input_stats.clone(),
        inner_widths,
        tensors,
    };
    let report = CompactReport {
        widths_before,
        widths_after,
        params_before: file.params(),
        params_after: compacted.params(),
    };
    (compacted, report)
}

/// A ResNet file with each BasicBlock's dead inner channels removed (see the module docs); the
/// report's widths are the blocks' inner widths.
fn compact_resnet(file: &ModelFile) -> Result<(ModelFile, CompactReport)> {
    let config = ResNetConfig::of(file.config.model, file.config.widths())
        .context("compact_resnet takes ResNet files")?;
    let mut tensors: Vec<ModelTensor> = file
        .tensors
        .iter()
        .map(|t| ModelTensor {
            name: t.name.clone(),
            shape: t.shape.clone(),
            stored: Stored::Dense(t.dense()),
        })
        .collect();
    let (mut widths_before, mut widths_after) = (Vec::new(), Vec::new());
    for block in resnet_blocks(&config) {
        let at = |name: &str| -> Result<usize> {
            let name = format!("{block}.{name}");
            tensors
                .iter()
                .position(|t| t.name == name)
                .with_context(|| format!("the file lacks {name}"))
        };
        let (conv1, conv2) = (at("conv1.weight")?, at("conv2.weight")?);
        let bn1 = [
            at("bn1.weight")?,
            at("bn1.bias")?,
            at("bn1.running_mean")?,
            at("bn1.running_var")?,
        ];
        let inner = tensors[conv1].shape[0];
        let values = |k: usize| tensors[k].dense();
        let (w1, w2) = (values(conv1), values(conv2));
        let [gamma, beta, mean, var] = bn1.map(values);
        let (fan_in, taps) = (
            w1.len() / inner.max(1),
            tensors[conv2].shape[2..].iter().product(),
        );
        let outputs = tensors[conv2].shape[0];
        let read = |c: usize| {
            (0..outputs).any(|o| {
                let row = &w2[(o * inner + c) * taps..(o * inner + c + 1) * taps];
                row.iter().any(|&w| w != 0.0)
            })
        };
        let silent = |c: usize| {
            let scale = fold_scale(gamma[c], var[c]);
            w1[c * fan_in..(c + 1) * fan_in].iter().all(|&w| w == 0.0)
                && beta[c] as f64 - mean[c] as f64 * scale <= 0.0
        };
        let mut kept: Vec<usize> = (0..inner).filter(|&c| read(c) && !silent(c)).collect();
        if kept.is_empty() {
            kept.push(0);
        }
        widths_before.push(inner);
        widths_after.push(kept.len());
        let rows = |values: &[f32], size: usize| -> Vec<f32> {
            kept.iter()
                .flat_map(|&c| values[c * size..(c + 1) * size].iter().copied())
                .collect()
        };
        let w1 = rows(&w1, fan_in);
        let w2: Vec<f32> = (0..outputs)
            .flat_map(|o| rows(&w2[o * inner * taps..(o + 1) * inner * taps], taps))
            .collect();
        tensors[conv1].shape[0] = kept.len();
        tensors[conv1].stored = Stored::Dense(w1);
        tensors[conv2].shape[1] = kept.len();
        tensors[conv2].stored = Stored::Dense(w2);
        for (k, values) in bn1.into_iter().zip([gamma, beta, mean, var]) {
            tensors[k].shape = vec![kept.len()];
            tensors[k].stored = Stored::Dense(rows(&values, 1));
        }
    }
    let inner_widths = widths_after.clone();
    Ok(finish(
        file,
        file.config.clone(),
        tensors,
        inner_widths,
        widths_before,
        widths_after,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrainConfig;

    fn dense(name: &str, shape: Vec<usize>, values: Vec<f32>) -> ModelTensor {
        ModelTensor {
            name: name.into(),
            shape,
            stored: Stored::Dense(values),
        }
    }

    /// 2 inputs -> 3 hidden -> 2 outputs, worked by hand.
    fn mlp() -> ModelFile {
        ModelFile {
            format: Format::Dense,
            config: TrainConfig {
                hidden: vec![3],
                ..TrainConfig::default()
            },
            threshold: 1e-13,
            input_stats: vec![(0.0, 1.0)],
            inner_widths: Vec::new(),
            tensors: vec![
                // hidden unit 0 is live; unit 1 has zero outgoing weights (dead);
                // unit 2 has zero incoming weights and bias 0.5 (constant relu = 0.5)
                dense(
                    "Mlp.hidden.0.weight",
                    vec![3, 2],
                    vec![1.0, -1.0, 2.0, 3.0, 0.0, 0.0],
                ),
                dense("Mlp.hidden.0.bias", vec![3], vec![0.1, 0.2, 0.5]),
                dense(
                    "Mlp.output.weight",
                    vec![2, 3],
                    vec![1.0, 0.0, 4.0, -2.0, 0.0, 6.0],
                ),
                dense("Mlp.output.bias", vec![2], vec![0.0, 1.0]),
            ],
        }
    }

    #[test]
    fn dead_and_constant_neurons_go_and_the_bias_absorbs_the_constant() {
        let (compacted, report) = compact(&mlp()).unwrap();
        assert_eq!(report.widths_before, [3, 2]);
        assert_eq!(report.widths_after, [1, 2]);
        assert_eq!(compacted.config.hidden, [1]);
        let get = |n: &str| {
            compacted
                .tensors
                .iter()
                .find(|t| t.name == n)
                .unwrap()
                .dense()
        };
        assert_eq!(get("Mlp.hidden.0.weight"), [1.0, -1.0]);
        assert_eq!(get("Mlp.hidden.0.bias"), [0.1]);
        assert_eq!(get("Mlp.output.weight"), [1.0, -2.0]);
        // 0 + 4 * 0.5 and 1 + 6 * 0.5
        assert_eq!(get("Mlp.output.bias"), [2.0, 4.0]);
        assert_eq!(report.params_before, 6 + 3 + 6 + 2);
        assert_eq!(report.params_after, 2 + 1 + 2 + 2);
        assert_eq!(compacted.format, Format::Compact);
    }

    #[test]
    fn dead_cnn_channels_and_units_go_and_the_logits_stay() {
        use crate::deploy::infer::Engine;
        use crate::models::Classifier;
        use burn::tensor::Device;

        let config = TrainConfig {
            model: ModelKind::Cnn,
            ..TrainConfig::default()
        };
        let model = Classifier::new(
            config.model,
            crate::data::ImageShape::FASHION_MNIST,
            config.widths(),
            &Device::default(),
        );
        let mut file =
            ModelFile::from_model(&model, &config, Format::Dense, 1e-13, vec![(0.0, 1.0)]);
        let mut zero = |name: &str, keep: &dyn Fn(&[usize], usize) -> bool| {
            let t = file.tensors.iter_mut().find(|t| t.name == name).unwrap();
            let (shape, mut values) = (t.shape.clone(), t.dense());
            for (i, v) in values.iter_mut().enumerate() {
                if !keep(&shape, i) {
                    *v = 0.0;
                }
            }
            t.stored = Stored::Dense(values);
        };
        // conv2 never reads conv1's channel 3: [64, 32, 3, 3], input channel = (i / 9) % 32
        zero("Cnn.conv2.weight", &|_, i| (i / 9) % 32 != 3);
        // the dense layer never reads conv2's channel 5: [128, 64·7·7], channel = (i % 3136) / 49
        zero("Cnn.dense.weight", &|_, i| (i % 3136) / 49 != 5);
        // the output never reads dense unit 7: [10, 128]
        zero("Cnn.output.weight", &|_, i| i % 128 != 7);
        let (compacted, report) = compact(&file).unwrap();
        assert_eq!(report.widths_after, [31, 63, 127, 10]);
        assert_eq!(compacted.config.cnn_widths, [31, 63, 127]);
        // conv1 channel 3 (9 weights + bias) and its 64·9 reads in conv2; conv2 channel 5
        // (31·9 + bias) and its 128·49 reads in dense; dense unit 7 (63·49 + bias) and its 10
        // reads in the output layer
        let removed = (9 + 1) + 64 * 9 + (31 * 9 + 1) + 128 * 49 + (63 * 49 + 1) + 10;
        assert_eq!(report.params_before - report.params_after, removed);
        let x: Vec<f32> = (0..4 * 784)
            .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
            .collect();
        let (a, b) = (
            Engine::new(&file).unwrap().logits(&x, 4),
            Engine::new(&compacted).unwrap().logits(&x, 4),
        );
        let worst = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 1e-5, "logits moved by {worst}");
    }

    #[test]
    fn a_layer_that_dies_entirely_is_an_error() {
        let layer = |k: &str, shape: Vec<usize>, w: f32| {
            let n = shape.iter().product();
            let bias = vec![0.1; shape[0]];
            [
                dense(&format!("{k}.weight"), shape.clone(), vec![w; n]),
                dense(&format!("{k}.bias"), vec![shape[0]], bias),
            ]
        };
        let mut tensors = Vec::new();
        tensors.extend(layer("Mlp.hidden.0", vec![2, 2], 1.0));
        tensors.extend(layer("Mlp.hidden.1", vec![2, 2], 1.0));
        tensors.extend(layer("Mlp.output", vec![2, 2], 0.0)); // reads nothing
        let file = ModelFile {
            tensors,
            config: TrainConfig {
                hidden: vec![2, 2],
                ..TrainConfig::default()
            },
            ..mlp()
        };
        let message = compact(&file).unwrap_err().to_string();
        assert!(
            message.contains("every unit of Mlp.hidden.1 is dead"),
            "{message}"
        );
    }

    #[test]
    fn outputs_are_unchanged_on_any_input() {
        let forward = |f: &ModelFile, x: [f32; 2]| -> Vec<f32> {
            let t = |n: &str| f.tensors.iter().find(|t| t.name == n).unwrap().dense();
            let (w1, b1, w2, b2) = (
                t("Mlp.hidden.0.weight"),
                t("Mlp.hidden.0.bias"),
                t("Mlp.output.weight"),
                t("Mlp.output.bias"),
            );
            let h: Vec<f32> = (0..b1.len())
                .map(|j| (w1[2 * j] * x[0] + w1[2 * j + 1] * x[1] + b1[j]).max(0.0))
                .collect();
            (0..2)
                .map(|o| {
                    b2[o]
                        + (0..h.len())
                            .map(|j| w2[o * h.len() + j] * h[j])
                            .sum::<f32>()
                })
                .collect()
        };
        let original = mlp();
        let (compacted, _) = compact(&original).unwrap();
        for x in [[0.3, -0.7], [2.0, 1.0], [-1.0, -1.0], [0.0, 5.0]] {
            assert_eq!(forward(&original, x), forward(&compacted, x), "{x:?}");
        }
    }

    #[test]
    fn dead_resnet_block_channels_go_and_the_logits_stay() {
        use crate::data::ImageShape;
        use crate::deploy::infer::Engine;
        use crate::deploy::resnet_infer::tests::resnet_file;

        let mut file = resnet_file(ModelKind::Resnet20, ImageShape::new(1, 8, 8), 4);
        let mut edit = |name: &str, f: &dyn Fn(&[usize], usize, &mut f32)| {
            let t = file.tensors.iter_mut().find(|t| t.name == name).unwrap();
            let (shape, mut values) = (t.shape.clone(), t.dense());
            values
                .iter_mut()
                .enumerate()
                .for_each(|(i, v)| f(&shape, i, v));
            t.stored = Stored::Dense(values);
        };
        // layer1.0: conv2 never reads inner channel 1
        edit("layer1.0.conv2.weight", &|s, i, v| {
            if (i / (s[2] * s[3])) % s[1] == 1 {
                *v = 0.0
            }
        });
        // layer1.1: inner channel 2 has no weights, and its BatchNorm gives
        // relu(β − μ·γ/√(σ²+ε)) = relu(-0.5 − 1·1/√(1+ε)) = 0: silent
        // inner channel 3 has no weights either, but gives relu(0.5 − 0) = 0.5: kept
        edit("layer1.1.conv1.weight", &|s, i, v| {
            if [2, 3].contains(&(i / (s[1] * s[2] * s[3]))) {
                *v = 0.0
            }
        });
        for (key, two, three) in [
            ("weight", 1.0, 1.0),
            ("bias", -0.5, 0.5),
            ("running_mean", 1.0, 0.0),
            ("running_var", 1.0, 1.0),
        ] {
            edit(&format!("layer1.1.bn1.{key}"), &|_, i, v| match i {
                2 => *v = two,
                3 => *v = three,
                _ => {}
            });
        }
        // layer3.2: every inner channel dead; one is kept
        edit("layer3.2.conv2.weight", &|_, _, v| *v = 0.0);

        let (compacted, report) = compact(&file).unwrap();
        assert_eq!(report.widths_before, [4, 4, 4, 8, 8, 8, 16, 16, 16]);
        let mut after = report.widths_before.clone();
        after[0] = 3;
        after[1] = 3;
        after[8] = 1;
        // other blocks lose only channels that the random 70% zeros happened to kill
        for (k, (&a, &b)) in report.widths_after.iter().zip(&after).enumerate() {
            if [0, 1, 8].contains(&k) {
                assert!(a <= b, "block {k}: {a} > {b}");
            } else {
                assert!(a <= b && a > 0, "block {k}");
            }
        }
        assert!(report.widths_after[8] == 1 && report.widths_after[1] <= 3);
        assert!(report.params_after < report.params_before);
        assert_eq!(compacted.inner_widths, report.widths_after);
        let conv2 = compacted
            .tensors
            .iter()
            .find(|t| t.name == "layer1.1.conv2.weight")
            .unwrap();
        assert_eq!(conv2.shape[1], report.widths_after[1]);

        // the file round-trips with its narrower blocks, and gives the same logits
        let read = ModelFile::from_bytes(&compacted.to_bytes().unwrap()).unwrap();
        assert_eq!(read, compacted);
        let before = Engine::new(&file.with_format(Format::Sparse)).unwrap();
        let after = Engine::new(&read).unwrap();
        let x: Vec<f32> = (0..4 * 64)
            .map(|i| ((i * 37) % 23) as f32 / 7.0 - 1.5)
            .collect();
        let (a, b) = (before.logits(&x, 4), after.logits(&x, 4));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(worst <= 1e-5, "compaction moved a logit by {worst}");
        // burn cannot build the narrower blocks: a clear error, not a panic
        let message = read.to_model(&burn::tensor::Device::default()).unwrap_err();
        assert!(
            message.to_string().contains("pdecay's own engine"),
            "{message}"
        );
    }
}
