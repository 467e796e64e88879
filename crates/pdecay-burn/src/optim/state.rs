//! The optimizer state of a decoupled-decay wrapper: the base optimizer's own state, the step
//! count (for the p and lambda schedules, and magnitude pruning), and one optional auxiliary
//! tensor (s for s-dynamics, the mask for magnitude pruning).
//!
//! It implements burn's [`RecordState`] by hand (burn's derive only works inside burn-optim), so
//! `ModuleOptimizer::to_record` / `load_record` save and restore all of it, bit for bit.

use burn::optim::{RecordState, StateSink, StateSource, join_path};
use burn::tensor::{Device, Tensor};
use burn_pack::Scalar;

/// State of one parameter under a [`Decoupled`](crate::Decoupled) optimizer.
#[derive(Clone)]
pub struct DecoupledState<S, const D: usize> {
    /// The base optimizer's state (Adam's moments, SGD's momentum, ...).
    pub base: Option<S>,
    /// Steps already taken on this parameter.
    pub step: u64,
    /// s (s-dynamics) or the keep-mask (magnitude pruning); `None` for the other rules.
    pub aux: Option<Tensor<D>>,
}

impl<S, const D: usize> DecoupledState<S, D> {
    /// `(base state, steps taken, aux)` of an optional state; a missing state is step 0.
    pub fn into_parts(state: Option<Self>) -> (Option<S>, u64, Option<Tensor<D>>) {
        match state {
            Some(s) => (s.base, s.step, s.aux),
            None => (None, 0, None),
        }
    }
}

const BASE: &str = "base";
const STEP: &str = "step";
const AUX: &str = "aux";

impl<S: RecordState, const D: usize> RecordState for DecoupledState<S, D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        if let Some(base) = &self.base {
            base.state_flatten(&join_path(prefix, BASE), out);
        }
        out.push_scalar(prefix, STEP, Scalar::from(self.step));
        if let Some(aux) = &self.aux {
            out.push_tensor(prefix, AUX, aux.to_data());
        }
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, device: &Device) -> Option<Self> {
        let step = u64::try_from(src.take_scalar(prefix, STEP)?).ok()?;
        let base_prefix = join_path(prefix, BASE);
        let base = if src.has_under(&base_prefix) {
            Some(S::state_unflatten(&base_prefix, src, device)?)
        } else {
            None
        };
        let aux = src
            .take_tensor(prefix, AUX)
            .map(|data| Tensor::from_data(data, device));
        Some(Self { base, step, aux })
    }
}
