//! [`SparseOptimizer`]: burn's `ModuleOptimizer` with parameter groups that know which tensors
//! decay, checks that turn a NaN or Inf into an error naming the parameter, and sparsity probes.

use burn::module::{Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::grad_clipping::GradientClipping;
use burn::optim::{GradientsParams, ModuleOptimizer, Optimizer, OptimizerRecord};
use burn::tensor::Tensor;
use pdecay::sparsity::{SparsityReport, TensorSparsity};
use thiserror::Error;

use super::rule::DecaysTensors;

/// What went wrong in a step.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum StepError {
    /// The learning rate is negative, NaN or infinite.
    #[error("learning rate {lr} is not a finite number >= 0: check the lr and its schedule")]
    InvalidLr {
        /// The value received.
        lr: f64,
    },
    /// A gradient holds NaN or Inf: the loss diverged or the data holds NaN.
    #[error(
        "the gradient of parameter `{name}` contains NaN or Inf: the loss has diverged (lower the lr, clip gradients) or the input data holds NaN"
    )]
    NonFiniteGradient {
        /// The parameter's path in the module.
        name: String,
    },
    /// A weight became NaN or Inf during the step.
    #[error(
        "parameter `{name}` contains NaN or Inf after the optimizer step: the update diverged (lower the lr; the naive Lp baseline does this for p < 1)"
    )]
    NonFiniteWeight {
        /// The parameter's path in the module.
        name: String,
    },
}

/// How one parameter group treats tensors: decayed from `min_rank` up, or never.
#[derive(Clone, Debug)]
struct GroupRule {
    group: ParamGroup,
    decayed_from_rank: Option<usize>,
}

/// A module optimizer built from decaying optimizers ([`crate::Decoupled`], [`crate::PAdam`]),
/// one per parameter group.
///
/// ```text
/// let optim = SparseOptimizer::new(padam(&PNormConfig::new(0.8, 1e-3))?)
///     .with_group(ParamGroup::from_predicate("embedding"), adam_no_decay());
/// model = optim.step(lr, model, grads)?;
/// ```
#[derive(Clone)]
pub struct SparseOptimizer {
    inner: ModuleOptimizer,
    rules: Vec<GroupRule>,
    check_finite: bool,
}

impl SparseOptimizer {
    /// Every parameter optimized by `optim` (its rule and rank threshold decide what decays).
    pub fn new<O: Optimizer + DecaysTensors>(optim: O) -> Self {
        let rules = vec![GroupRule {
            group: ParamGroup::all(),
            decayed_from_rank: optim.decayed_from_rank(),
        }];
        Self {
            inner: ModuleOptimizer::from(optim),
            rules,
            check_finite: true,
        }
    }

    /// Parameters matching `group` are optimized by `optim` instead (the last matching group
    /// wins, as in burn): its own p and λ, another base optimizer, or no decay.
    pub fn with_group<O: Optimizer + DecaysTensors>(mut self, group: ParamGroup, optim: O) -> Self {
        self.rules.push(GroupRule {
            group: group.clone(),
            decayed_from_rank: optim.decayed_from_rank(),
        });
        self.inner = self.inner.with_group(group, optim, None);
        self
    }

    /// Clips gradients (burn's per-tensor clipping) before the default group's steps.
    pub fn with_grad_clipping(mut self, clipping: GradientClipping) -> Self {
        self.inner = self.inner.with_grad_clipping(clipping);
        self
    }

    /// Turns the NaN/Inf checks off (they cost one reduction per tensor per step).
    pub fn without_finite_checks(mut self) -> Self {
        self.check_finite = false;
        self
    }

    /// One optimizer step at learning rate `lr`.
    ///
    /// Gradients are checked before the step and weights after it; a NaN or Inf is an error
    /// naming the parameter. On error the module is consumed: keep a checkpoint to go back to.
    pub fn step<M: Module>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> Result<M, StepError> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(StepError::InvalidLr { lr });
        }
        if self.check_finite
            && let Some(name) = first_non_finite(&module, Some(&grads))
        {
            return Err(StepError::NonFiniteGradient { name });
        }
        let module = self.inner.step(lr, module, grads);
        if self.check_finite
            && let Some(name) = first_non_finite(&module, None)
        {
            return Err(StepError::NonFiniteWeight { name });
        }
        Ok(module)
    }

    /// Whether the parameter at `path` with rank `rank` is decayed.
    pub fn is_decayed(&self, id: &ParamId, path: &str, rank: usize) -> bool {
        self.rules
            .iter()
            .rev()
            .find(|r| r.group.matches(id, Some(path)))
            .and_then(|r| r.decayed_from_rank)
            .is_some_and(|min_rank| rank >= min_rank)
    }

    /// Per-tensor decay plan and totals, as nanoGPT prints them (trained parameters only:
    /// not BatchNorm's running statistics).
    pub fn decay_summary<M: Module>(&self, module: &M) -> DecaySummary {
        let mut walker =
            ParamWalker::new(|path: &str, id: ParamId, shape: Vec<usize>, _: ParamData| {
                Some((
                    path.to_string(),
                    shape.iter().product::<usize>() as u64,
                    self.is_decayed(&id, path, shape.len()),
                ))
            })
            .parameters_only();
        module.visit(&mut walker);
        DecaySummary::from_entries(walker.into_results(), self.rule_words())
    }

    /// What decays, in words: the default group's rank rule, and whether groups override it.
    fn rule_words(&self) -> String {
        let default = match self.rules[0].decayed_from_rank {
            None => "nothing decays".to_string(),
            Some(0) | Some(1) => {
                "every tensor decays (biases and normalisation gains and shifts included)"
                    .to_string()
            }
            Some(2) => "tensors of rank >= 2 decay (conv and linear weights, embeddings); \
                        rank-1 tensors never do (biases, BatchNorm and LayerNorm gains and shifts)"
                .to_string(),
            Some(rank) => format!("tensors of rank >= {rank} decay; lower ranks never do"),
        };
        match self.rules.len() - 1 {
            0 => default,
            1 => format!("{default}; 1 parameter group has an optimizer of its own"),
            n => format!("{default}; {n} parameter groups have an optimizer of their own"),
        }
    }

    /// Sparsity of every tensor of `module`, decayed or not, by this optimizer's plan.
    pub fn sparsity_report<M: Module>(
        &self,
        module: &M,
        threshold: f64,
        histogram: bool,
    ) -> SparsityReport {
        sparsity_report(module, threshold, histogram, |id, path, rank| {
            self.is_decayed(id, path, rank)
        })
    }

    /// The optimizer state (burnpack record).
    pub fn to_record(&self) -> OptimizerRecord {
        self.inner.to_record()
    }

    /// Loads optimizer state saved with [`Self::to_record`].
    pub fn load_record(mut self, record: OptimizerRecord) -> Self {
        self.inner = self.inner.load_record(record);
        self
    }

    /// The wrapped burn module optimizer.
    pub fn module_optimizer(&self) -> &ModuleOptimizer {
        &self.inner
    }
}

/// Decayed and non-decayed tensor and parameter counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecaySummary {
    /// `(path, params, decayed)` per tensor, in module order.
    pub tensors: Vec<(String, u64, bool)>,
    /// Number of decayed tensors.
    pub decayed_tensors: usize,
    /// Number of decayed parameters.
    pub decayed_params: u64,
    /// Number of tensors not decayed.
    pub other_tensors: usize,
    /// Number of parameters not decayed.
    pub other_params: u64,
    /// The rule that decides, in words (e.g. tensors of rank >= 2 decay).
    pub rule: String,
}

impl DecaySummary {
    fn from_entries(tensors: Vec<(String, u64, bool)>, rule: String) -> Self {
        let decayed = tensors.iter().filter(|t| t.2);
        let other = tensors.iter().filter(|t| !t.2);
        Self {
            decayed_tensors: decayed.clone().count(),
            decayed_params: decayed.map(|t| t.1).sum(),
            other_tensors: other.clone().count(),
            other_params: other.map(|t| t.1).sum(),
            tensors,
            rule,
        }
    }
}

impl std::fmt::Display for DecaySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "decayed parameter tensors: {}, with {} parameters",
            self.decayed_tensors, self.decayed_params
        )?;
        writeln!(
            f,
            "non-decayed parameter tensors: {}, with {} parameters",
            self.other_tensors, self.other_params
        )?;
        write!(f, "decay rule: {}", self.rule)
    }
}

/// Sparsity of every trained float tensor of `module` (BatchNorm's running statistics are
/// buffers, not parameters, and are left out); `is_decayed(id, path, rank)` marks the decayed.
pub fn sparsity_report<M: Module>(
    module: &M,
    threshold: f64,
    histogram: bool,
    is_decayed: impl Fn(&ParamId, &str, usize) -> bool,
) -> SparsityReport {
    let mut walker = ParamWalker::new(
        |path: &str, id: ParamId, shape: Vec<usize>, data: ParamData| {
            let decayed = is_decayed(&id, path, shape.len());
            let data = data.read().convert::<f32>();
            let values = data.as_slice::<f32>().expect("converted to f32");
            Some(TensorSparsity::from_values(
                path, shape, decayed, values, threshold, histogram,
            ))
        },
    )
    .parameters_only();
    module.visit(&mut walker);
    SparsityReport::new(threshold, walker.into_results())
}

/// The number of trained parameters of `module`, what PyTorch's
/// `sum(p.numel() for p in model.parameters())` counts: burn's `Module::num_params` also
/// counts BatchNorm's running statistics.
pub fn trained_param_count<M: Module>(module: &M) -> usize {
    let mut walker = ParamWalker::new(|_: &str, _, shape: Vec<usize>, _: ParamData| {
        Some(shape.iter().product::<usize>())
    })
    .parameters_only();
    module.visit(&mut walker);
    walker.into_results().into_iter().sum()
}

/// One float parameter's values, copied to the host as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedValues {
    /// The parameter's path in the module (e.g. `Mlp.hidden.0.weight`).
    pub name: String,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Vec<f32>,
}

/// Every float parameter of `module` with its path (for weight histograms and exports), and
/// its running statistics (burn visits those as float parameters too).
pub fn parameter_values<M: Module>(module: &M) -> Vec<NamedValues> {
    let mut walker = ParamWalker::new(|path: &str, _id, shape: Vec<usize>, data: ParamData| {
        Some(NamedValues {
            name: path.to_string(),
            shape,
            values: data
                .read()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("converted to f32"),
        })
    });
    module.visit(&mut walker);
    walker.into_results()
}

/// Path of the first parameter whose value (or gradient, when `grads` is given) holds NaN or
/// Inf.
pub fn first_non_finite<M: Module>(module: &M, grads: Option<&GradientsParams>) -> Option<String> {
    let mut walker = ParamWalker::new(|path: &str, _id, _shape, data: ParamData| {
        let finite = match grads {
            Some(grads) => data.grad_is_finite(grads),
            None => data.is_finite(),
        };
        (!finite).then(|| path.to_string())
    });
    walker.stop_at_first = true;
    module.visit(&mut walker);
    walker.into_results().into_iter().next()
}

/// A lazily read float parameter, type-erased over its rank.
pub struct ParamData<'a> {
    read: &'a dyn Fn() -> burn::tensor::TensorData,
    finite: &'a dyn Fn() -> bool,
    grad_finite: &'a dyn Fn(&GradientsParams) -> bool,
}

impl ParamData<'_> {
    /// The values, copied to the host.
    pub fn read(&self) -> burn::tensor::TensorData {
        (self.read)()
    }

    /// Whether every value is finite.
    pub fn is_finite(&self) -> bool {
        (self.finite)()
    }

    /// Whether the gradient (if any) is finite everywhere.
    pub fn grad_is_finite(&self, grads: &GradientsParams) -> bool {
        (self.grad_finite)(grads)
    }
}

/// Whether every value is finite. One reduction first: a NaN or Inf anywhere makes the sum
/// non-finite, so finite tensors (the normal case) cost a single pass; only a non-finite sum,
/// which a finite tensor can also reach by overflow, takes the exact element-wise check.
fn all_finite<const D: usize>(t: Tensor<D>) -> bool {
    t.clone().sum().into_scalar::<f32>().is_finite() || t.is_finite().all().into_scalar::<bool>()
}

/// Walks float parameters with their module paths (the same paths `ModuleOptimizer` matches
/// parameter groups against) and collects what `f` returns.
struct ParamWalker<T, F> {
    path: Vec<String>,
    f: F,
    results: Vec<T>,
    stop_at_first: bool,
    skip_buffers: bool,
}

/// The names burn's `BatchNorm` gives its running statistics: `RunningState` buffers that
/// burn's visitors see as float parameters, though no optimizer trains them (PyTorch counts
/// them as buffers, not parameters).
const BUFFER_NAMES: [&str; 2] = ["running_mean", "running_var"];

impl<T, F> ParamWalker<T, F>
where
    F: FnMut(&str, ParamId, Vec<usize>, ParamData) -> Option<T>,
{
    fn new(f: F) -> Self {
        Self {
            path: Vec::new(),
            f,
            results: Vec::new(),
            stop_at_first: false,
            skip_buffers: false,
        }
    }

    /// Leaves out BatchNorm's running statistics ([`BUFFER_NAMES`]).
    fn parameters_only(mut self) -> Self {
        self.skip_buffers = true;
        self
    }

    fn into_results(self) -> Vec<T> {
        self.results
    }
}

impl<T, F> ModuleVisitor for ParamWalker<T, F>
where
    F: FnMut(&str, ParamId, Vec<usize>, ParamData) -> Option<T>,
{
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.stop_at_first && !self.results.is_empty() {
            return;
        }
        let buffer = self
            .path
            .last()
            .is_some_and(|name| BUFFER_NAMES.contains(&name.as_str()));
        if self.skip_buffers && buffer {
            return;
        }
        let id = param.id;
        let value = param.val();
        let shape = value.dims().to_vec();
        let read = || value.to_data();
        let finite = || all_finite(value.clone());
        let grad_finite = |grads: &GradientsParams| grads.get::<D>(id).is_none_or(all_finite);
        let data = ParamData {
            read: &read,
            finite: &finite,
            grad_finite: &grad_finite,
        };
        let path = self.path.join(".");
        if let Some(result) = (self.f)(&path, id, shape, data) {
            self.results.push(result);
        }
    }
}
