//! pAdam in a hand-written training loop, on a model of your own, with parameter groups.
//!
//! pWD decays every weight matrix (rank >= 2) with p = 0.8, λ = 5e-2; the output layer gets
//! its own, gentler λ = 1e-3; the LayerNorm is given plain Adam (it is rank 1 and would not
//! decay anyway: the group makes the choice visible), and the biases never decay. The lr warms
//! up, then follows a cosine (`pdecay::schedule::Schedule`). At the end: test accuracy, every tensor's
//! sparsity, and how much of the first layer is left for the 8 inputs the task reads and for
//! the 56 it does not.
//!
//! ```text
//! cargo run --release -p pdecay-burn --example custom_loop [STEPS]
//! ```

mod common;

use burn::module::{Module, ParamGroup};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use common::{CLASSES, FEATURES, Task, USED};
use pdecay::schedule::Schedule;
use pdecay_burn::{PNormConfig, SparseOptimizer, adam_no_decay, padam};

/// The user's network: Linear, LayerNorm, ReLU, Linear, ReLU, Linear.
#[derive(Module, Debug)]
struct Net {
    input: Linear,
    norm: LayerNorm,
    hidden: Linear,
    output: Linear,
}

impl Net {
    fn new(device: &Device) -> Self {
        Self {
            input: LinearConfig::new(FEATURES, 128).init(device),
            norm: LayerNormConfig::new(128).init(device),
            hidden: LinearConfig::new(128, 64).init(device),
            output: LinearConfig::new(64, CLASSES).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let x = relu(self.norm.forward(self.input.forward(x)));
        self.output.forward(relu(self.hidden.forward(x)))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps = common::size_arg(1500) as u64;
    let batch = 128;
    let device = Device::default().autodiff();
    let train = Task::new(16_384, 1, &device);
    let test = Task::new(4_096, 2, &device);
    device.seed(0);
    let mut model = Net::new(&device);

    let mut optim = SparseOptimizer::new(padam(&PNormConfig::new(0.8, 5e-2))?)
        .with_group(
            ParamGroup::from_predicate("output"),
            padam(&PNormConfig::new(0.8, 1e-3))?,
        )
        .with_group(ParamGroup::from_predicate("norm"), adam_no_decay());
    println!("{}", optim.decay_summary(&model));
    let lr = Schedule::warmup_cosine(3e-3, steps / 20, steps, 0.01)?;

    for step in 0..steps {
        let start = (step as usize * batch) % (train.len() - batch);
        let (x, y) = train.batch(start..start + batch);
        let loss = common::loss(model.forward(x), y);
        if step % (steps / 5).max(1) == 0 {
            let sparsity = optim.sparsity_report(&model, 1e-13, false).decayed();
            println!(
                "step {step:5}  lr {:.2e}  loss {:.4}  decayed weights at zero {:.1}%",
                lr.value(step),
                loss.clone().into_scalar::<f32>(),
                100.0 * sparsity.sparsity()
            );
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(lr.value(step), model, grads)?;
    }

    let (x, y) = test.batch(0..test.len());
    let accuracy = common::accuracy(model.forward(x), y);
    println!("\ntest accuracy {:.2}%", 100.0 * accuracy);
    for t in optim.sparsity_report(&model, 1e-13, false).tensors {
        println!(
            "  {:16} {:>6} values, {:5.1}% below 1e-13{}",
            t.name,
            t.params,
            100.0 * t.below_threshold as f64 / t.params as f64,
            if t.decayed { "" } else { " (not decayed)" }
        );
    }
    // burn's Linear weight is [inputs, outputs]: input feature i is row i
    let weight = model.input.weight.val().into_data().try_to_vec::<f32>()?;
    let kept = |rows: std::ops::Range<usize>| {
        let n = rows.len() * 128;
        let alive = weight[rows.start * 128..rows.end * 128]
            .iter()
            .filter(|w| w.abs() >= 1e-13)
            .count();
        100.0 * alive as f64 / n as f64
    };
    println!(
        "the first layer keeps {:.1}% of its weights from the {USED} inputs the task reads, {:.1}% from the other {}",
        kept(0..USED),
        kept(USED..FEATURES),
        FEATURES - USED
    );
    if steps >= 1000 && accuracy < 0.85 {
        return Err(format!("accuracy {accuracy:.3}: pAdam should reach 85% on this task").into());
    }
    Ok(())
}
