//! Structured pWD removes whole neurons: each hidden neuron's incoming weights decay together,
//! by the L2 norm of the group (`PNormConfig::structured`), so a neuron the task does not need
//! ends with all its weights exactly 0. The example trains a 64-256-10 MLP on the teacher
//! task, counts the neurons left, then builds the smaller network without the dead ones (a dead
//! neuron outputs the constant relu(bias), folded into the next layer's bias) and checks that
//! it gives the same logits.
//!
//! ```text
//! cargo run --release -p pdecay-burn --example structured [STEPS]
//! ```

mod common;

use burn::module::{Module, Param, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use common::{CLASSES, FEATURES, Task};
use pdecay_burn::{PNormConfig, SparseOptimizer, adam_no_decay, padam};

#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    output: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.output.forward(relu(self.hidden.forward(x)))
    }
}

/// A Linear layer with `weight` (`[inputs, outputs]`, burn's layout) and `bias`.
fn linear(weight: Vec<f32>, bias: Vec<f32>, inputs: usize, device: &Device) -> Linear {
    let outputs = bias.len();
    let weight = Tensor::from_data(TensorData::new(weight, [inputs, outputs]), device);
    let bias = Tensor::from_data(TensorData::new(bias, [outputs]), device);
    Linear {
        weight: Param::from_tensor(weight),
        bias: Some(Param::from_tensor(bias)),
    }
}

/// `model` without its dead hidden neurons (all incoming weights 0); how many are left.
fn without_dead_neurons(
    model: &Mlp,
    device: &Device,
) -> Result<(Mlp, usize), Box<dyn std::error::Error>> {
    let weight = |l: &Linear| l.weight.val().into_data().try_to_vec::<f32>();
    let bias = |l: &Linear| match &l.bias {
        Some(b) => b.val().into_data().try_to_vec::<f32>(),
        None => Ok(vec![0.0; l.weight.dims()[1]]),
    };
    let (w1, b1) = (weight(&model.hidden)?, bias(&model.hidden)?);
    let (w2, mut b2) = (weight(&model.output)?, bias(&model.output)?);
    let width = b1.len();
    let alive: Vec<usize> = (0..width)
        .filter(|&j| (0..FEATURES).any(|i| w1[i * width + j] != 0.0))
        .collect();
    for j in (0..width).filter(|j| !alive.contains(j)) {
        for (c, b) in b2.iter_mut().enumerate() {
            *b += b1[j].max(0.0) * w2[j * CLASSES + c];
        }
    }
    let w1_kept: Vec<f32> = (0..FEATURES)
        .flat_map(|i| alive.iter().map(move |&j| (i, j)))
        .map(|(i, j)| w1[i * width + j])
        .collect();
    let b1_kept: Vec<f32> = alive.iter().map(|&j| b1[j]).collect();
    let w2_kept: Vec<f32> = alive
        .iter()
        .flat_map(|&j| w2[j * CLASSES..(j + 1) * CLASSES].to_vec())
        .collect();
    let small = Mlp {
        hidden: linear(w1_kept, b1_kept, FEATURES, device),
        output: linear(w2_kept, b2, alive.len(), device),
    };
    Ok((small, alive.len()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps = common::size_arg(2000);
    let width = 256;
    let device = Device::default().autodiff();
    let train = Task::new(16_384, 1, &device);
    let test = Task::new(4_096, 2, &device);
    device.seed(0);
    let mut model = Mlp {
        hidden: LinearConfig::new(FEATURES, width).init(&device),
        output: LinearConfig::new(width, CLASSES).init(&device),
    };
    // hidden neurons decay as groups; the output layer (one neuron per class) does not decay
    let mut optim = SparseOptimizer::new(padam(&PNormConfig::new(0.8, 1.5).structured())?)
        .with_group(ParamGroup::from_predicate("output"), adam_no_decay());
    let batch = 128;
    for step in 0..steps {
        let start = (step * batch) % (train.len() - batch);
        let (x, y) = train.batch(start..start + batch);
        let loss = common::loss(model.forward(x), y);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(1e-3, model, grads)?;
    }
    let (x, y) = test.batch(0..test.len());
    let logits = model.forward(x.clone());
    let accuracy = common::accuracy(logits.clone(), y.clone());
    let (small, alive) = without_dead_neurons(&model, &device)?;
    let small_logits = small.forward(x);
    let difference = (logits - small_logits.clone())
        .abs()
        .max()
        .into_scalar::<f32>();
    println!(
        "test accuracy {:.2}%; {alive} of {width} hidden neurons left: {} parameters instead of {}",
        100.0 * accuracy,
        small.num_params(),
        model.num_params()
    );
    println!(
        "the network without the dead neurons: accuracy {:.2}%, logits within {difference:.1e} of the full one",
        100.0 * common::accuracy(small_logits, y)
    );
    if difference > 1e-4 {
        return Err(format!("removing dead neurons changed the logits by {difference}").into());
    }
    if steps >= 1000 && (accuracy < 0.85 || alive * 2 > width) {
        return Err(
            "structured pWD should keep >= 85% accuracy with under half the neurons".into(),
        );
    }
    Ok(())
}
