//! Inference from a model file: dense and compact files run as burn models (the flex
//! backend's gemm), sparse MLP files on CSR products that touch only the non-zero weights.

use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use pdecay::csr::{Csr, transpose};

use crate::data::mnist::ImageSet;
use crate::model_file::{Format, ModelFile, Stored};
use crate::models::{Classifier, ModelKind};

/// One layer of the sparse MLP: `y = relu?(W·x + b)`.
struct SparseLayer {
    weight: Csr,
    bias: Vec<f32>,
}

/// An MLP on CSR weights.
pub struct SparseMlp {
    layers: Vec<SparseLayer>,
}

impl SparseMlp {
    fn new(file: &ModelFile) -> Self {
        let layers = file
            .tensors
            .chunks(2)
            .map(|pair| {
                let (w, b) = (&pair[0], &pair[1]);
                let weight = match &w.stored {
                    Stored::Sparse(csr) => csr.clone(),
                    Stored::Dense(values) => {
                        Csr::from_dense(values, w.shape[0], w.shape[1], file.threshold as f32)
                    }
                };
                SparseLayer {
                    weight,
                    bias: b.dense(),
                }
            })
            .collect();
        Self { layers }
    }

    /// Logits `[batch, classes]` of `x` (`[batch, inputs]`, normalised).
    pub fn logits(&self, x: &[f32], batch: usize) -> Vec<f32> {
        let last = self.layers.len() - 1;
        if batch == 1 {
            let mut h = x.to_vec();
            for (k, layer) in self.layers.iter().enumerate() {
                let mut y = vec![0.0; layer.weight.rows];
                layer.weight.matvec(&h, Some(&layer.bias), &mut y);
                if k < last {
                    y.iter_mut().for_each(|v| *v = v.max(0.0));
                }
                h = y;
            }
            return h;
        }
        let inputs = x.len() / batch;
        let mut h_t = transpose(x, batch, inputs);
        for (k, layer) in self.layers.iter().enumerate() {
            let mut y_t = vec![0.0; layer.weight.rows * batch];
            layer
                .weight
                .matmul_t(&h_t, batch, Some(&layer.bias), &mut y_t);
            if k < last {
                y_t.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            h_t = y_t;
        }
        let classes = self.layers[last].weight.rows;
        transpose(&h_t, classes, batch)
    }
}

/// A model ready to run.
pub enum Engine {
    /// Dense weights in a burn model (boxed: the model is large next to the CSR variant).
    Dense(Box<Classifier>, Device),
    /// CSR weights (sparse MLP files).
    Sparse(SparseMlp),
}

impl Engine {
    /// The engine for a file: CSR products for a sparse MLP, burn otherwise (a sparse CNN
    /// file runs densified: convolutions have no sparse path yet).
    pub fn new(file: &ModelFile) -> Result<Self> {
        Ok(match (file.format, file.config.model) {
            (Format::Sparse, ModelKind::Mlp) => Self::Sparse(SparseMlp::new(file)),
            _ => {
                let device = Device::default();
                Self::Dense(Box::new(file.to_model(&device)?), device)
            }
        })
    }

    /// Logits `[batch, classes]` of `x` (`[batch, pixels]`, normalised).
    pub fn logits(&self, x: &[f32], batch: usize) -> Vec<f32> {
        match self {
            Self::Dense(model, device) => {
                let pixels = x.len() / batch.max(1);
                let input =
                    Tensor::<2>::from_data(TensorData::new(x.to_vec(), [batch, pixels]), device);
                model
                    .forward(input)
                    .into_data()
                    .convert::<f32>()
                    .try_into_vec::<f32>()
                    .expect("f32 logits")
            }
            Self::Sparse(mlp) => mlp.logits(x, batch),
        }
    }
}

/// Test accuracy of `engine` on `images`, normalised with `stats`, in batches of 500.
pub fn accuracy(engine: &Engine, images: &ImageSet, stats: (f64, f64)) -> f64 {
    let indices: Vec<usize> = (0..images.len()).collect();
    let mut correct = 0;
    for chunk in indices.chunks(500) {
        let logits = engine.logits(&images.normalized(chunk, stats), chunk.len());
        let classes = logits.len() / chunk.len();
        for (row, &i) in logits.chunks(classes).zip(chunk) {
            let predicted = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k)
                .unwrap_or(0);
            correct += usize::from(predicted == images.labels[i] as usize);
        }
    }
    correct as f64 / images.len().max(1) as f64
}
