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

use anyhow::{Result, bail};

use super::model_file::{Format, ModelFile, ModelTensor, Stored};
use crate::models::ModelKind;

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
            bail!("model files do not hold ResNets yet, so there is none to compact")
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
            bail!("model files do not hold ResNets yet, so there is none to compact")
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
    let compacted = ModelFile {
        format: Format::Compact,
        config,
        threshold: file.threshold,
        input_stats: file.input_stats,
        tensors,
    };
    let report = CompactReport {
        widths_before,
        widths_after,
        params_before: file.params(),
        params_after: compacted.params(),
    };
    Ok((compacted, report))
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
            input_stats: (0.0, 1.0),
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
        use crate::deploy::IMAGE_SHAPE;
        use crate::deploy::infer::Engine;
        use crate::models::Classifier;
        use burn::tensor::Device;

        let config = TrainConfig {
            model: ModelKind::Cnn,
            ..TrainConfig::default()
        };
        let model = Classifier::new(
            config.model,
            IMAGE_SHAPE,
            config.widths(),
            &Device::default(),
        );
        let mut file = ModelFile::from_model(&model, &config, Format::Dense, 1e-13, (0.0, 1.0));
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
}
