//! pAdam with the fused kernel: Adam and pWD in one pass over memory on the CPU.
//!
//! `PWeightDecay<Adam>` runs burn's Adam (about ten tensor ops, each a pass over memory) and
//! then the pWD kernel. [`PAdam`] does the same arithmetic in one pass with
//! [`pdecay::kernel::adam_pwd_in_place`] when the tensor lives on the flex CPU backend, and
//! falls back to the composite path everywhere else (GPUs, non-f32, structured or s-dynamics
//! variants). Its state is exactly `PWeightDecay<Adam>`'s (burn's `AdamState` inside
//! [`DecoupledState`]), so records move freely between the two.

use burn::optim::{Adam, AdamState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{DType, Device, Tensor};
use pdecay::kernel::{AdamStep, adam_pwd_in_place};

use super::pnorm::PNorm;
use super::rule::{DecaysTensors, Decoupled};
use super::state::DecoupledState;
use crate::flex::on_flex;

/// Adam + pWD, fused on CPU. Build it with [`crate::padam`] or [`crate::padam_with`].
#[derive(Clone)]
pub struct PAdam {
    composite: Decoupled<Adam, PNorm>,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
}

impl PAdam {
    pub(crate) fn new(
        composite: Decoupled<Adam, PNorm>,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
    ) -> Self {
        Self {
            composite,
            beta_1,
            beta_2,
            epsilon,
        }
    }

    /// Decays tensors of rank >= `min_rank` only (1 decays biases too).
    pub fn with_min_rank(mut self, min_rank: usize) -> Self {
        self.composite = self.composite.with_min_rank(min_rank);
        self
    }

    /// The composite optimizer this one fuses (and falls back to).
    pub fn composite(&self) -> &Decoupled<Adam, PNorm> {
        &self.composite
    }

    /// Whether a step on `tensor` takes the fused path (a decayed f32 tensor on the flex CPU
    /// backend, elementwise pWD from `w_{t-1}`); otherwise it takes the composite one.
    pub fn fuses<const D: usize>(&self, tensor: &Tensor<D>) -> bool {
        self.composite.decays_rank(D)
            && self.composite.rule().fusable()
            && tensor.dtype() == DType::F32
            && on_flex(&tensor.device(), false)
    }
}

impl DecaysTensors for PAdam {
    fn decayed_from_rank(&self) -> Option<usize> {
        self.composite.decayed_from_rank()
    }
}

impl Optimizer for PAdam {
    type State<const D: usize> = DecoupledState<AdamState<D>, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let amsgrad_state = state
            .as_ref()
            .and_then(|s| s.base.as_ref())
            .is_some_and(|b| b.momentum.max_moment_2.is_some());
        if !self.fuses(&tensor) || amsgrad_state {
            return self.composite.step(lr, tensor, grad, state);
        }
        let (base, step, aux) = DecoupledState::into_parts(state);
        let device = tensor.device();
        let (time, moment_1, moment_2) = match base {
            Some(b) => (
                b.momentum.time + 1,
                b.momentum.moment_1,
                b.momentum.moment_2,
            ),
            None => (1, tensor.zeros_like(), tensor.zeros_like()),
        };
        let c = self.composite.rule().coefficients(step, lr);
        let adam = AdamStep {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            time: time as u32,
        };
        let (mut w, g) = (tensor.into_data(), grad.into_data());
        let (mut m, mut v) = (moment_1.into_data(), moment_2.into_data());
        adam_pwd_in_place(
            w.as_mut_slice::<f32>().expect("checked f32"),
            g.as_slice::<f32>()
                .expect("gradients share the weights' dtype"),
            m.as_mut_slice::<f32>()
                .expect("moments share the weights' dtype"),
            v.as_mut_slice::<f32>()
                .expect("moments share the weights' dtype"),
            &adam,
            &c,
        );
        let tensor = |data| Tensor::<D>::from_data(data, &device);
        let momentum = AdaptiveMomentumState::new(time, tensor(m), tensor(v));
        let state = DecoupledState {
            base: Some(AdamState::new(momentum)),
            step: step + 1,
            aux,
        };
        (tensor(w), Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <Decoupled<Adam, PNorm> as Optimizer>::to_device(state, device)
    }
}
