//! Data-parallel training over several devices (`--device cuda:0,1,...`).
//!
//! Each device holds a replica of the model and of the optimizer. A step splits the batch into
//! one shard per replica. Every replica computes the gradient of its shard's loss in its own
//! thread. Each loss is weighted by the shard's share of the batch, so the gradients sum to the
//! gradient of the whole batch's mean loss. The gradients are summed on the first device, and the
//! sum is copied back to every device (an all-reduce). Every replica then takes the same optimizer
//! step.
//!
//! Why the replicas never drift apart: they start equal, see the same summed gradient and hold
//! the same optimizer state. pWD's update w ← w_step·|w_old|^(2-p) / (|w_old|^(2-p) + p·η·λ) is
//! elementwise in the replica's own pre-step weight w_old, which is the same on every replica,
//! so the decay adds no communication and no divergence. The tests check that replicas stay
//! bit-identical, and that the run matches the single-device run.

use anyhow::Result;
use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Device, Tensor};
use pdecay_burn::SparseOptimizer;

use super::skeleton::step_or_diverge;
use crate::run::StepAt;

/// A copy of the model and optimizer on another device.
pub struct Replica<M> {
    /// Its device (with autodiff).
    pub device: Device,
    /// Its copy of the model.
    pub model: M,
    /// Its copy of the optimizer, with its own state.
    pub optim: SparseOptimizer,
}

/// Copies of `model` and `optim` on each of `devices` (autodiff devices).
pub fn replicate<M: Module>(
    model: &M,
    optim: &SparseOptimizer,
    devices: &[Device],
) -> Vec<Replica<M>> {
    devices
        .iter()
        .map(|device| Replica {
            device: device.clone(),
            model: model.clone().fork(device),
            optim: optim.clone(),
        })
        .collect()
}

/// The half-open ranges of `len` items split into `parts` near-equal shards, larger ones first.
pub fn shards(len: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    let (base, extra) = (len / parts, len % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let size = base + usize::from(i < extra);
            let range = start..start + size;
            start += size;
            range
        })
        .collect()
}

/// The gradient of each replica's loss, computed concurrently: `main` (shard 0) on this thread,
/// each of `others` (shards 1..) on a thread of its own. `loss(model, device, shard)` is the
/// replica's weighted loss, `None` for an empty shard (a last batch smaller than the replica
/// count), which adds nothing. Returns the sum of the loss values and the gradients in shard
/// order.
pub fn shard_gradients<M, F>(
    main: &M,
    main_device: &Device,
    others: &[Replica<M>],
    loss: F,
) -> (f64, Vec<GradientsParams>)
where
    M: Module + Sync,
    F: Fn(&M, &Device, usize) -> Option<Tensor<1>> + Sync,
{
    let gradient = |model: &M, device: &Device, shard: usize| match loss(model, device, shard) {
        Some(loss) => {
            let value = loss.clone().into_scalar::<f32>() as f64;
            (value, GradientsParams::from_grads(loss.backward(), model))
        }
        None => (0.0, GradientsParams::new()),
    };
    let (first, rest) = std::thread::scope(|scope| {
        let handles: Vec<_> = others
            .iter()
            .enumerate()
            .map(|(i, r)| scope.spawn(move || gradient(&r.model, &r.device, i + 1)))
            .collect();
        let first = gradient(main, main_device, 0);
        let rest: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        (first, rest)
    });
    let mut total = first.0;
    let mut grads = vec![first.1];
    for (value, g) in rest {
        total += value;
        grads.push(g);
    }
    (total, grads)
}

/// The all-reduce: the sum of `grads` (one per replica, in order), as one copy on each of
/// `devices` (the replicas' autodiff devices, the first one's first).
pub fn all_reduce<M: Module>(
    module: &M,
    grads: Vec<GradientsParams>,
    devices: &[Device],
) -> Vec<GradientsParams> {
    let home = devices[0].clone().inner();
    let mut sum = GradientsAccumulator::<M>::new();
    for g in grads {
        sum.accumulate(module, g.to_device(&home, module));
    }
    let sum = sum.grads();
    let mut copies: Vec<GradientsParams> = devices[1..]
        .iter()
        .map(|device| {
            let mut copy = CopyGrads {
                from: &sum,
                to: GradientsParams::new(),
                device: device.clone().inner(),
            };
            module.visit(&mut copy);
            copy.to
        })
        .collect();
    copies.insert(0, sum);
    copies
}

/// Copies every gradient of a module's parameters to a device.
struct CopyGrads<'a> {
    from: &'a GradientsParams,
    to: GradientsParams,
    device: Device,
}

impl ModuleVisitor for CopyGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.from.get::<D>(param.id) {
            self.to.register(param.id, grad.to_device(&self.device));
        }
    }
}

/// The optimizer step of every replica after the first, each with its copy of the summed
/// gradient (`grads[1..]`, as [`all_reduce`] returns them).
pub fn step_replicas<M: Module>(
    others: &mut [Replica<M>],
    grads: impl Iterator<Item = GradientsParams>,
    lr: f64,
    at: StepAt,
) -> Result<()> {
    for (replica, g) in others.iter_mut().zip(grads) {
        replica.model = step_or_diverge(&mut replica.optim, lr, replica.model.clone(), g, at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{OptimKind, TrainConfig};
    use crate::data::ImageShape;
    use crate::models::{Classifier, ModelKind};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::tensor::{Distribution, Int, TensorData};
    use pdecay_burn::parameter_values;

    /// A small MLP and a batch of 10: the same starting point for every run of a test.
    /// (burn's random draws come from one generator per device that tests running in parallel
    /// share, so each run must not draw its own.)
    fn problem() -> (Classifier, Tensor<2>, Tensor<1, Int>) {
        let device = Device::flex().autodiff();
        let model = Classifier::new(ModelKind::Mlp, ImageShape::new(1, 4, 4), &[8], &device);
        // burn draws a parameter's values on first use: use them once so clones share them
        let _ = parameter_values(&model);
        let x = Tensor::<2>::random([10, 16], Distribution::Normal(0.0, 1.0), &device);
        let labels: Vec<i64> = (0..10).map(|i| i % 3).collect();
        let y = Tensor::<1, Int>::from_data(TensorData::new(labels, [10]), &device);
        (model, x, y)
    }

    /// pAdam steps from `start` on its first `rows` examples, split over `replicas` replicas
    /// on the CPU; returns the first replica's weights and whether every replica equals it bit
    /// for bit.
    fn train_with(
        start: &(Classifier, Tensor<2>, Tensor<1, Int>),
        replicas: usize,
        steps: usize,
        rows: usize,
    ) -> (Vec<Vec<f32>>, bool) {
        let device = Device::flex().autodiff();
        let config = TrainConfig {
            optim: OptimKind::Padam,
            p: 0.8,
            lambda: 0.5,
            ..TrainConfig::default()
        };
        let mut optim = config.optimizer(steps as u64).unwrap();
        let (mut model, x, y) = start.clone();
        let devices = vec![device.clone(); replicas];
        let mut others = replicate(&model, &optim, &devices[1..]);
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let parts = shards(rows, replicas);
        for step in 0..steps {
            let (_, grads) = shard_gradients(&model, &device, &others, |m, _, s| {
                let shard = parts[s].clone();
                if shard.is_empty() {
                    return None;
                }
                let share = shard.len() as f64 / rows as f64;
                let loss = loss_fn.forward(
                    m.forward(x.clone().slice([shard.clone(), 0..16])),
                    y.clone().slice([shard]),
                );
                Some(loss.mul_scalar(share))
            });
            let mut reduced = all_reduce(&model, grads, &devices).into_iter();
            let g = reduced.next().unwrap();
            let at = StepAt::Epoch {
                epoch: 1,
                step: step as u64,
            };
            model = step_or_diverge(&mut optim, 1e-2, model, g, at).unwrap();
            step_replicas(&mut others, reduced, 1e-2, at).unwrap();
        }
        let values = |m: &Classifier| -> Vec<Vec<f32>> {
            parameter_values(m).into_iter().map(|p| p.values).collect()
        };
        let main = values(&model);
        let identical = others.iter().all(|r| values(&r.model) == main);
        (main, identical)
    }

    fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn replicas_stay_identical_and_match_one_device() {
        const STEPS: usize = 30;
        let start = problem();
        let (single, _) = train_with(&start, 1, STEPS, 10);
        for replicas in [2, 3] {
            let (parallel, identical) = train_with(&start, replicas, STEPS, 10);
            assert!(identical, "{replicas} replicas drifted apart");
            // the shards' weighted gradients sum to the whole batch's: the same training up
            // to the order of float additions
            let worst = max_abs_diff(&single, &parallel);
            assert!(worst < 1e-4, "{replicas} replicas: max |diff| {worst}");
        }
        // and pWD did act: some weights are exactly zero
        assert!(single.iter().flatten().any(|&w| w == 0.0));
    }

    #[test]
    fn a_batch_smaller_than_the_replicas_leaves_the_extra_ones_idle() {
        // 2 examples over 3 replicas: the third shard is empty and adds no gradient
        let start = problem();
        let (single, _) = train_with(&start, 1, 5, 2);
        let (parallel, identical) = train_with(&start, 3, 5, 2);
        assert!(identical);
        let worst = max_abs_diff(&single, &parallel);
        assert!(worst < 1e-5, "max |diff| {worst}");
    }

    #[test]
    fn shards_cover_the_batch_in_order_and_differ_by_at_most_one() {
        assert_eq!(shards(10, 3), [0..4, 4..7, 7..10]);
        assert_eq!(shards(4, 4), [0..1, 1..2, 2..3, 3..4]);
        assert_eq!(shards(2, 3), [0..1, 1..2, 2..2]);
        assert_eq!(shards(5, 1), vec![std::ops::Range { start: 0, end: 5 }]);
    }
}
