//! pAdam inside burn-train's `Learner`: its dashboard (a terminal UI when stdout is a
//! terminal, plain lines otherwise), checkpoints, a cosine lr scheduler, and pdecay's
//! [`SparsityMetric`] beside loss and accuracy, live and in the logs.
//!
//! The step's output carries the model's sparsity ([`SparsityInput::of`]), since a metric
//! sees outputs, not the model; one `Adaptor` impl per metric input is all the wiring. At the
//! end the example reads the Learner's own logs back (`LearnerSummary`) and prints the
//! sparsity of each epoch: it rises while accuracy holds.
//!
//! ```text
//! cargo run --release -p pdecay-burn --features train --example learner [EPOCHS]
//! ```

mod common;

use std::sync::Arc;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::ModuleOptimizer;
use burn::optim::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::tensor::activation::relu;
use burn::tensor::{Device, ExecutionError, Int, Tensor, TensorData};
use burn::train::metric::{
    AccuracyInput, AccuracyMetric, Adaptor, ItemLazy, LossInput, LossMetric,
};
use burn::train::{
    ClassificationOutput, InferenceStep, Learner, LearnerSummary, SupervisedTraining, TrainOutput,
    TrainStep,
};
use common::{CLASSES, FEATURES, Task};
use pdecay_burn::{PNormConfig, SparsityInput, SparsityMetric, padam};

/// The network: 64-128-10 with ReLU.
#[derive(Module, Debug)]
struct Mlp {
    hidden: Linear,
    output: Linear,
}

/// A classification step's output with the model's sparsity at that step.
struct Output {
    classification: ClassificationOutput,
    sparsity: SparsityInput,
}

impl Mlp {
    fn step(&self, batch: Batch) -> Output {
        let logits = self.output.forward(relu(self.hidden.forward(batch.x)));
        let loss = common::loss(logits.clone(), batch.y.clone());
        Output {
            classification: ClassificationOutput::new(loss, logits, batch.y),
            sparsity: SparsityInput::of(self, 1e-13),
        }
    }
}

impl TrainStep for Mlp {
    type Input = Batch;
    type Output = Output;

    fn step(&self, batch: Batch) -> TrainOutput<Output> {
        let output = Mlp::step(self, batch);
        let grads = output.classification.loss.backward();
        TrainOutput::new(self, grads, output)
    }
}

impl InferenceStep for Mlp {
    type Input = Batch;
    type Output = Output;

    fn step(&self, batch: Batch) -> Output {
        Mlp::step(self, batch)
    }
}

impl ItemLazy for Output {
    fn sync(self) -> Result<Self, ExecutionError> {
        Ok(Self {
            classification: self.classification.sync()?,
            sparsity: self.sparsity,
        })
    }
}

impl Adaptor<AccuracyInput> for Output {
    fn adapt(&self) -> AccuracyInput {
        self.classification.adapt()
    }
}

impl Adaptor<LossInput> for Output {
    fn adapt(&self) -> LossInput {
        self.classification.adapt()
    }
}

impl Adaptor<SparsityInput> for Output {
    fn adapt(&self) -> SparsityInput {
        self.sparsity
    }
}

/// One example of the teacher task.
#[derive(Debug, Clone)]
struct Sample {
    x: Vec<f32>,
    y: i64,
}

#[derive(Debug, Clone)]
struct Batch {
    x: Tensor<2>,
    y: Tensor<1, Int>,
}

struct Batches;

impl Batcher<Sample, Batch> for Batches {
    fn batch(&self, samples: Vec<Sample>, device: &Device) -> Batch {
        let n = samples.len();
        let x: Vec<f32> = samples.iter().flat_map(|s| s.x.iter().copied()).collect();
        let y: Vec<i64> = samples.iter().map(|s| s.y).collect();
        Batch {
            x: Tensor::from_data(TensorData::new(x, [n, FEATURES]), device),
            y: Tensor::from_data(TensorData::new(y, [n]), device),
        }
    }
}

/// The task's samples, for a burn dataset.
fn samples(task: &Task) -> Result<Vec<Sample>, Box<dyn std::error::Error>> {
    let x = task.x.clone().into_data().try_to_vec::<f32>()?;
    let y = task
        .y
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()?;
    Ok(x.chunks(FEATURES)
        .zip(y)
        .map(|(x, y)| Sample { x: x.to_vec(), y })
        .collect())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let epochs = common::size_arg(6);
    let batch_size = 128;
    let data_device = Device::default();
    let train = samples(&Task::new(16_384, 1, &data_device))?;
    let valid = samples(&Task::new(4_096, 2, &data_device))?;
    let iterations = epochs * train.len().div_ceil(batch_size);
    let loader = |samples: Vec<Sample>| {
        DataLoaderBuilder::new(Batches)
            .batch_size(batch_size)
            .shuffle(0)
            .build(InMemDataset::new(samples))
    };
    let (train_loader, valid_loader) = (loader(train), loader(valid));

    let dir = std::env::temp_dir().join(format!("pdecay-learner-{}", std::process::id()));
    let device = Device::default().autodiff();
    device.seed(0);
    let model = Mlp {
        hidden: LinearConfig::new(FEATURES, 128).init(&device),
        output: LinearConfig::new(128, CLASSES).init(&device),
    };
    // pAdam is a burn optimizer: burn's ModuleOptimizer takes it as it takes Adam
    let optim: ModuleOptimizer = padam(&PNormConfig::new(0.8, 5e-2))?.into();
    let lr = CosineAnnealingLrSchedulerConfig::new(3e-3, iterations)
        .with_min_lr(3e-5)
        .init()?;
    let learner = Learner::new(model, optim, lr);

    let result = SupervisedTraining::new(&dir, train_loader, Arc::clone(&valid_loader) as _)
        .metric_train_numeric(LossMetric::new())
        .metric_valid_numeric(LossMetric::new())
        .metric_train_numeric(AccuracyMetric::new())
        .metric_valid_numeric(AccuracyMetric::new())
        .metric_train_numeric(SparsityMetric::exact_zeros())
        .metric_train_numeric(SparsityMetric::below_threshold())
        .with_default_checkpointers()
        .num_epochs(epochs)
        .summary()
        .launch(learner);
    if let Some(stopped) = result.interrupted {
        return Err(format!("training stopped early: {stopped:?}").into());
    }

    // the Learner's logs, read back: the sparsity of every epoch, and the accuracy
    let names = ["Sparsity (exact zeros)", "Accuracy"];
    let summary = LearnerSummary::new(&dir, &names)?;
    let train_log = |name: &str| {
        summary
            .metrics
            .train
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.entries.iter().map(|e| e.value).collect::<Vec<f64>>())
            .unwrap_or_default()
    };
    let sparsity = train_log(names[0]);
    let accuracy = train_log(names[1]);
    println!(
        "\nepoch  sparsity (exact zeros)  train accuracy   (from the logs in {})",
        dir.display()
    );
    for (epoch, (s, a)) in sparsity.iter().zip(&accuracy).enumerate() {
        println!("{:5}  {s:21.2}%  {a:13.2}%", epoch + 1);
    }
    let checkpoints = std::fs::read_dir(dir.join("checkpoint"))?.count();
    println!(
        "{checkpoints} checkpoint files in {}",
        dir.join("checkpoint").display()
    );
    let rose = sparsity.windows(2).all(|w| w[1] >= w[0]) && sparsity.last() > sparsity.first();
    std::fs::remove_dir_all(&dir)?;
    if sparsity.len() != epochs || !rose {
        return Err(format!("the logged sparsity should rise every epoch: {sparsity:?}").into());
    }
    Ok(())
}
