//! The decoupled-decay wrapper: any base optimizer plus one [`DecayRule`].
//!
//! Following optax's "chain of transforms", a rule is a small piece with one job: it may change
//! the gradient before the base step ([`DecayRule::transform_grad`], e.g. the naive Lp gradient)
//! and the weights after it ([`DecayRule::transform_weights`], e.g. pWD, the L1 proximal step,
//! pruning masks). [`Decoupled`] runs them around the base optimizer and implements burn's
//! [`Optimizer`], so `ModuleOptimizer`, parameter groups, records and lr schedulers work unchanged.

use burn::optim::{LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};

use super::state::DecoupledState;

/// What a rule sees of one parameter at one step.
pub struct StepContext<const D: usize> {
    /// Steps already taken on this parameter (0 on the first).
    pub step: u64,
    /// The current, scheduled learning rate.
    pub lr: LearningRate,
    /// The weight before the base optimizer's step (`w_{t-1}`).
    pub before: Tensor<D>,
}

/// A decay or pruning rule applied around a base optimizer step.
pub trait DecayRule: Clone + Send + Sync + 'static {
    /// Whether this rule touches parameters at all (false for a no-decay group); used for the
    /// decayed/non-decayed counts.
    fn is_active(&self) -> bool {
        true
    }

    /// Changes the gradient before the base step. Default: unchanged.
    fn transform_grad<const D: usize>(&self, _ctx: &StepContext<D>, grad: Tensor<D>) -> Tensor<D> {
        grad
    }

    /// Changes the weights after the base step; `aux` is this rule's own per-parameter tensor
    /// (s, a mask), kept in the optimizer record. Returns the new weights and the new `aux`.
    ///
    /// The context is passed by value so a rule can consume `before` without a copy.
    fn transform_weights<const D: usize>(
        &self,
        ctx: StepContext<D>,
        stepped: Tensor<D>,
        aux: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>);
}

/// Default smallest rank of a decayed tensor: weights of linear (2), conv (3-5) and embedding (2)
/// layers decay; biases and norm gains (rank 1) do not, as in AdamW recipes and nanoGPT.
pub const DEFAULT_MIN_RANK: usize = 2;

/// A base optimizer `O` with the rule `R` applied to every parameter of rank >= `min_rank`.
///
/// Parameters of lower rank get the plain base step (their step count is still kept).
#[derive(Clone)]
pub struct Decoupled<O, R> {
    base: O,
    rule: R,
    min_rank: usize,
}

impl<O: Optimizer, R: DecayRule> Decoupled<O, R> {
    /// Wraps `base` with `rule`, decaying tensors of rank >= 2.
    pub fn new(base: O, rule: R) -> Self {
        Self {
            base,
            rule,
            min_rank: DEFAULT_MIN_RANK,
        }
    }

    /// Decays tensors of rank >= `min_rank` only (1 decays biases too).
    pub fn with_min_rank(mut self, min_rank: usize) -> Self {
        self.min_rank = min_rank;
        self
    }

    /// The smallest decayed rank.
    pub fn min_rank(&self) -> usize {
        self.min_rank
    }

    /// The rule.
    pub fn rule(&self) -> &R {
        &self.rule
    }

    /// The base optimizer.
    pub fn base(&self) -> &O {
        &self.base
    }

    /// Whether a tensor of rank `rank` is decayed by this optimizer.
    pub fn decays_rank(&self, rank: usize) -> bool {
        self.rule.is_active() && rank >= self.min_rank
    }
}

/// An optimizer that knows which tensors it decays, for decay summaries and sparsity probes.
pub trait DecaysTensors {
    /// The smallest decayed rank, or `None` when nothing is decayed.
    fn decayed_from_rank(&self) -> Option<usize>;
}

impl<O: Optimizer, R: DecayRule> DecaysTensors for Decoupled<O, R> {
    fn decayed_from_rank(&self) -> Option<usize> {
        self.rule.is_active().then_some(self.min_rank)
    }
}

impl<O: Optimizer, R: DecayRule> Optimizer for Decoupled<O, R> {
    type State<const D: usize> = DecoupledState<O::State<D>, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (base_state, step, aux) = DecoupledState::into_parts(state);
        if !self.decays_rank(D) {
            let (tensor, base) = self.base.step(lr, tensor, grad, base_state);
            let state = DecoupledState {
                base,
                step: step + 1,
                aux,
            };
            return (tensor, Some(state));
        }
        let ctx = StepContext {
            step,
            lr,
            before: tensor.clone(),
        };
        let grad = self.rule.transform_grad(&ctx, grad);
        let (stepped, base) = self.base.step(lr, tensor, grad, base_state);
        let (tensor, aux) = self.rule.transform_weights(ctx, stepped, aux);
        let state = DecoupledState {
            base,
            step: step + 1,
            aux,
        };
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        DecoupledState {
            base: state.base.map(|s| O::to_device(s, device)),
            step: state.step,
            aux: state.aux.map(|t| t.to_device(device)),
        }
    }
}

/// The rule that does nothing: a parameter group without decay keeps the same state layout as
/// its decayed neighbours.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDecay;

impl DecayRule for NoDecay {
    fn is_active(&self) -> bool {
        false
    }

    fn transform_weights<const D: usize>(
        &self,
        _ctx: StepContext<D>,
        stepped: Tensor<D>,
        aux: Option<Tensor<D>>,
    ) -> (Tensor<D>, Option<Tensor<D>>) {
        (stepped, aux)
    }
}
