//! End-to-end tests of the burn adapter: pWD through `ModuleOptimizer` on real modules.

use burn::module::{Module, Param, ParamGroup};
use burn::nn::{Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer, Optimizer, OptimizerRecord};
use burn::tensor::{Device, Tensor, TensorData};
use pdecay_burn::{
    Decoupled, Kernel, MagnitudePruningConfig, NoDecay, PNormConfig, SparseOptimizer, StepError,
    adam_gmp, adam_l1, adam_naive_lp, adam_no_decay, adam_pytorch, adamw_pytorch,
    burn_adamw_pytorch, padagrad, padam, prmsprop, psgd,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Module, Debug)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            fc1: LinearConfig::new(8, 16).init(device),
            fc2: LinearConfig::new(16, 4).init(device),
        }
    }

    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2
            .forward(burn::tensor::activation::relu(self.fc1.forward(x)))
    }
}

/// A deterministic pseudo-random tensor (uniform, unit variance times `scale`), independent of
/// burn's global RNG, which tests running in parallel would share.
fn noise<const D: usize>(shape: [usize; D], seed: u64, scale: f32, device: &Device) -> Tensor<D> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-1.732f32..1.732) * scale)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn device() -> Device {
    Device::default().autodiff()
}

fn batches(device: &Device, n: usize) -> Vec<(Tensor<2>, Tensor<2>)> {
    (0..n as u64)
        .map(|i| {
            (
                noise([32, 8], 2 * i, 1.0, device),
                noise([32, 4], 2 * i + 1, 1.0, device),
            )
        })
        .collect()
}

fn grads(model: &Mlp, (x, y): &(Tensor<2>, Tensor<2>)) -> GradientsParams {
    let loss = (model.forward(x.clone()) - y.clone()).square().mean();
    GradientsParams::from_grads(loss.backward(), model)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn weights(model: &Mlp) -> Vec<f32> {
    let mut all = values(model.fc1.weight.val());
    all.extend(values(model.fc2.weight.val()));
    all.extend(values(model.fc1.bias.as_ref().unwrap().val()));
    all
}

fn train(model: Mlp, optim: &mut SparseOptimizer, data: &[(Tensor<2>, Tensor<2>)], lr: f64) -> Mlp {
    data.iter().fold(model, |m, batch| {
        let g = grads(&m, batch);
        optim.step(lr, m, g).unwrap()
    })
}

#[test]
fn decay_summary_counts_weights_not_biases() {
    let device = device();
    let model = Mlp::new(&device);
    let optim = SparseOptimizer::new(padam(&PNormConfig::new(0.8, 1e-3)).unwrap());
    let summary = optim.decay_summary(&model);
    assert_eq!(
        (summary.decayed_tensors, summary.decayed_params),
        (2, 8 * 16 + 16 * 4)
    );
    assert_eq!((summary.other_tensors, summary.other_params), (2, 16 + 4));
    let names: Vec<&str> = summary.tensors.iter().map(|t| t.0.as_str()).collect();
    assert!(
        names.contains(&"fc1.weight") && names.contains(&"fc2.bias"),
        "{names:?}"
    );
    assert!(
        summary
            .to_string()
            .contains("decayed parameter tensors: 2, with 192 parameters")
    );
    // the rule itself is stated, so a reader sees why the biases are left alone
    assert!(
        summary
            .to_string()
            .contains("decay rule: tensors of rank >= 2 decay"),
        "{summary}"
    );
}

#[test]
fn groups_override_p_and_lambda_or_switch_decay_off() {
    let device = device();
    let model = Mlp::new(&device);
    let strong = padam(&PNormConfig::new(0.5, 1.0)).unwrap();
    let mut optim = SparseOptimizer::new(padam(&PNormConfig::new(0.8, 1e-6)).unwrap())
        .with_group(ParamGroup::from_predicate("fc1"), strong)
        .with_group(ParamGroup::from_predicate("fc2"), adam_no_decay());
    let summary = optim.decay_summary(&model);
    assert_eq!(summary.decayed_params, 8 * 16);
    assert!(
        summary
            .rule
            .ends_with("; 2 parameter groups have an optimizer of their own"),
        "{}",
        summary.rule
    );
    let data = batches(&device, 30);
    let model = train(model, &mut optim, &data, 1e-2);
    let report = optim.sparsity_report(&model, 1e-13, false);
    let fc1 = report
        .tensors
        .iter()
        .find(|t| t.name == "fc1.weight")
        .unwrap();
    let fc2 = report
        .tensors
        .iter()
        .find(|t| t.name == "fc2.weight")
        .unwrap();
    // p = 0.5, λ = 1: suppression scale (0.5)^(2/3) = 0.63 is above every initial weight.
    assert!(
        fc1.zeros as f64 > 0.5 * fc1.params as f64,
        "fc1 zeros {}/{}",
        fc1.zeros,
        fc1.params
    );
    assert_eq!(fc2.zeros, 0);
    assert!(!fc2.decayed);
}

#[test]
fn p2_matches_adamw_with_twice_lambda_to_first_order() {
    // With a constant gradient both runs see the same Adam update u_t (|u_t| <= 1), so the gap
    // obeys e_t = e_{t-1}/(1+k) + w·k²/(1+k) + η·u·k/(1+k), k = 2ηλ; over T steps
    // |e_T| <= T·(k²·W + η·k) = T·(4η²λ²·W + 2η²λ) with W the largest |w| on the way.
    let device = Device::default();
    let (lr, lambda, steps) = (1e-2, 1e-2, 100);
    let w0 = noise([16, 16], 3, 1.0, &device);
    let g = noise([16, 16], 4, 1.0, &device);
    let pwd = padam(&PNormConfig::new(2.0, lambda)).unwrap();
    let adamw = burn_adamw_pytorch(2.0 * lambda);
    let adam = adam_pytorch().build();
    let (mut a, mut b, mut c) = (w0.clone(), w0.clone(), w0.clone());
    let (mut sa, mut sb, mut sc) = (None, None, None);
    for _ in 0..steps {
        (a, sa) = pwd.step(lr, a, g.clone(), sa);
        (b, sb) = adamw.step(lr, b, g.clone(), sb);
        (c, sc) = adam.step(lr, c, g.clone(), sc);
    }
    let max_abs = |t: Tensor<2>| values(t).into_iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let w_max = max_abs(w0.clone()) + steps as f64 * lr;
    let bound = steps as f64 * (4.0 * lr * lr * lambda * lambda * w_max + 2.0 * lr * lr * lambda);
    let gap = max_abs(a.clone() - b);
    let zeroth_order = max_abs(a - c);
    println!(
        "p=2 vs AdamW(2λ): gap {gap:.3e}, bound {bound:.3e}, gap to plain Adam {zeroth_order:.3e}"
    );
    assert!(gap <= bound, "gap {gap} above the O(lr²λ) bound {bound}");
    assert!(
        zeroth_order > 20.0 * bound,
        "the decay itself ({zeroth_order}) must dwarf the bound"
    );
}

#[test]
fn adamw_baseline_equals_burns_adamw_on_decayed_tensors() {
    let device = Device::default();
    let w = noise([8, 8], 5, 1.0, &device);
    let ours = adamw_pytorch(0.1).unwrap();
    let burns = burn_adamw_pytorch(0.1);
    let (mut a, mut b, mut sa, mut sb) = (w.clone(), w, None, None);
    for t in 0..20 {
        let g = noise([8, 8], 100 + t, 1.0, &device).mul_scalar(t as f64);
        (a, sa) = ours.step(1e-2, a, g.clone(), sa);
        (b, sb) = burns.step(1e-2, b, g, sb);
    }
    let gap = values(a - b).into_iter().fold(0f32, |m, v| m.max(v.abs()));
    // same update, different rounding order: a few ulps of weights of magnitude ~3
    assert!(gap < 1e-5, "gap {gap}");
}

fn assert_resume_is_bit_identical(make: impl Fn() -> SparseOptimizer, what: &str) {
    let device = device();
    let data = batches(&device, 12);
    let (first, rest) = data.split_at(5);
    let model = Mlp::new(&device);
    let mut straight = make();
    let reference = train(
        train(model.clone(), &mut straight, first, 1e-2),
        &mut straight,
        rest,
        1e-2,
    );

    let mut before = make();
    let halfway = train(model, &mut before, first, 1e-2);
    let bytes = before.to_record().into_bytes().unwrap();
    let mut resumed = make().load_record(OptimizerRecord::from_bytes(bytes).unwrap());
    let resumed_model = train(halfway, &mut resumed, rest, 1e-2);
    assert_eq!(
        weights(&reference),
        weights(&resumed_model),
        "{what}: resume differs"
    );
}

#[test]
fn record_round_trip_resumes_bit_identically() {
    assert_resume_is_bit_identical(
        || SparseOptimizer::new(padam(&PNormConfig::new(0.8, 1e-2)).unwrap()),
        "pAdam",
    );
    let scheduled = PNormConfig::new(0.8, 1e-2)
        .with_p_schedule(pdecay::schedule::Schedule::linear(2.0, 0.8, 8).unwrap());
    assert_resume_is_bit_identical(
        || SparseOptimizer::new(padam(&scheduled).unwrap()),
        "p-scheduling",
    );
    let s_dyn = PNormConfig::new(0.8, 1e-2).s_dynamics(0.1);
    assert_resume_is_bit_identical(
        || SparseOptimizer::new(padam(&s_dyn).unwrap()),
        "s-dynamics",
    );
    let gmp = MagnitudePruningConfig {
        final_sparsity: 0.5,
        begin_step: 2,
        end_step: 8,
        frequency: 2,
        ..Default::default()
    };
    assert_resume_is_bit_identical(
        || SparseOptimizer::new(adam_gmp(&gmp).unwrap()),
        "magnitude pruning",
    );
}

#[test]
fn s_dynamics_state_is_in_the_record() {
    let device = device();
    let data = batches(&device, 3);
    let record_len = |cfg: PNormConfig| {
        let mut optim = SparseOptimizer::new(padam(&cfg).unwrap());
        train(Mlp::new(&device), &mut optim, &data, 1e-2);
        optim.to_record().len()
    };
    let plain = record_len(PNormConfig::new(0.8, 1e-2));
    let with_s = record_len(PNormConfig::new(0.8, 1e-2).s_dynamics(0.1));
    assert_eq!(with_s, plain + 2, "one s tensor per decayed weight");
}

#[test]
fn structured_pwd_kills_weak_neurons_as_a_whole() {
    // loss = ½·Σ(w - t)², t = 1 on the strong neuron, 0.01 on the weak one; penalty λ·Σ_g ||w_g||
    // (p = 1). A group of 4 equal entries a has ||w_g|| = 2a, so stationarity reads
    // a - t + λ·a/(2a) = 0: a = t - λ/2 = 0.95 for the strong group, and the weak group's
    // optimum is 0 (t < λ/2). Linear weights in burn are [in, out]: a group is a column.
    let device = Device::default();
    let targets: Vec<f32> = (0..4).flat_map(|_| [1.0, 0.01]).collect();
    let target = Tensor::<2>::from_data(TensorData::new(targets, [4, 2]), &device);
    let mut weight = Tensor::<2>::from_data(TensorData::new(vec![0.5f32; 8], [4, 2]), &device);
    let rule = PNormConfig::new(1.0, 0.1).structured().build().unwrap();
    let optim = Decoupled::new(pdecay_burn::sgd_pytorch(0.0, false).build(), rule);
    let mut state = None;
    for _ in 0..300 {
        let grad = weight.clone() - target.clone();
        (weight, state) = optim.step(0.1, weight, grad, state);
    }
    let v = values(weight);
    let alive: Vec<f32> = v.iter().step_by(2).copied().collect();
    let dead: Vec<f32> = v.iter().skip(1).step_by(2).copied().collect();
    assert!(
        dead.iter().all(|&x| x == 0.0),
        "weak neuron must vanish exactly: {dead:?}"
    );
    assert!(
        alive.iter().all(|&x| (x - 0.95).abs() < 1e-3),
        "strong neuron at t - λ/2: {alive:?}"
    );
}

#[test]
fn fused_kernel_equals_tensor_ops() {
    let device = Device::default();
    let w = noise([64, 64], 11, 0.1, &device);
    for late in [false, true] {
        for p in [0.5, 1.0, 1.5, 2.0, 3.0] {
            let mut cfg = PNormConfig::new(p, 0.05).with_lambda2(0.01);
            if late {
                cfg = cfg.late();
            }
            let fused = Decoupled::new(adam_pytorch().build(), cfg.clone().build().unwrap());
            let ops = Decoupled::new(
                adam_pytorch().build(),
                cfg.with_kernel(Kernel::TensorOps).build().unwrap(),
            );
            // one step: the same function to float precision (relative 1e-6, the pow's ~1 ulp)
            let g = noise([64, 64], 199, 1.0, &device);
            let (a1, _) = fused.step(0.05, w.clone(), g.clone(), None);
            let (b1, _) = ops.step(0.05, w.clone(), g, None);
            for (x, y) in values(a1).iter().zip(&values(b1)) {
                assert!(
                    (x - y).abs() <= 1e-6 * y.abs() + 1e-12,
                    "p={p} late={late}: {x} vs {y}"
                );
            }
            // twenty steps: Adam's normalisation amplifies ulps on weights near zero a little
            let (mut a, mut b, mut sa, mut sb) = (w.clone(), w.clone(), None, None);
            for t in 0..20 {
                let g = noise([64, 64], 200 + t, 1.0, &device);
                (a, sa) = fused.step(0.05, a, g.clone(), sa);
                (b, sb) = ops.step(0.05, b, g, sb);
            }
            let (a, b) = (values(a), values(b));
            let gap = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                gap < 1e-5,
                "p={p} late={late}: fused vs tensor ops differ by {gap}"
            );
            assert!(a.iter().all(|x| *x == 0.0 || x.is_normal()));
        }
    }
}

#[test]
fn fused_padam_is_bit_identical_to_adam_then_pwd() {
    let device = Device::default();
    let cfg = PNormConfig::new(0.8, 0.05);
    let fused = padam(&cfg).unwrap();
    let composite = Decoupled::new(adam_pytorch().build(), cfg.build().unwrap());
    let w = noise([300, 200], 21, 0.1, &device); // 60,000 values: the parallel path
    assert!(
        fused.fuses(&w),
        "a flex f32 matrix must take the fused path"
    );
    assert!(
        !fused.fuses(&noise([7], 1, 1.0, &device)),
        "biases are not decayed"
    );
    assert!(!padam(&cfg.clone().structured()).unwrap().fuses(&w));
    let (mut a, mut b, mut sa, mut sb) = (w.clone(), w, None, None);
    for t in 0..10 {
        let g = noise([300, 200], 300 + t, 1.0, &device);
        (a, sa) = fused.step(1e-2, a, g.clone(), sa);
        (b, sb) = composite.step(1e-2, b, g, sb);
    }
    assert_eq!(values(a), values(b));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa.step, sb.step);
    let (ma, mb) = (sa.base.unwrap().momentum, sb.base.unwrap().momentum);
    assert_eq!(ma.time, mb.time);
    assert_eq!(values(ma.moment_2), values(mb.moment_2));
}

#[test]
fn any_burn_optimizer_can_be_wrapped() {
    // Lion is not named anywhere in this crate.
    let device = device();
    let lion = burn::optim::LionConfig::new().build();
    let mut optim = SparseOptimizer::new(Decoupled::new(
        lion,
        PNormConfig::new(0.8, 0.5).build().unwrap(),
    ));
    let data = batches(&device, 40);
    let model = train(Mlp::new(&device), &mut optim, &data, 1e-2);
    let report = optim.sparsity_report(&model, 1e-13, false);
    assert!(
        report.decayed().sparsity() > 0.5,
        "Lion + pWD sparsity {}",
        report.decayed().sparsity()
    );
    assert_eq!(report.all().params - report.decayed().params, 20);
}

#[test]
fn ready_made_optimizers_all_sparsify() {
    let device = device();
    let data = batches(&device, 60);
    let cfg = PNormConfig::new(0.8, 0.3);
    let optimizers = [
        ("pAdam", SparseOptimizer::new(padam(&cfg).unwrap())),
        (
            "pSGD",
            SparseOptimizer::new(psgd(0.9, false, &cfg).unwrap()),
        ),
        (
            "pSGD-nesterov",
            SparseOptimizer::new(psgd(0.9, true, &cfg).unwrap()),
        ),
        ("pRMSProp", SparseOptimizer::new(prmsprop(&cfg).unwrap())),
        ("pAdaGrad", SparseOptimizer::new(padagrad(&cfg).unwrap())),
        ("Adam", SparseOptimizer::new(adam_no_decay())),
    ];
    for (name, mut optim) in optimizers {
        let model = train(Mlp::new(&device), &mut optim, &data, 5e-2);
        let sparsity = optim
            .sparsity_report(&model, 1e-13, false)
            .decayed()
            .sparsity();
        if name == "Adam" {
            assert_eq!(sparsity, 0.0, "{name}");
        } else {
            assert!(sparsity > 0.3, "{name}: sparsity {sparsity}");
        }
    }
}

#[test]
fn l1_prox_soft_thresholds_by_hand() {
    let device = Device::default();
    let w = Tensor::<1>::from_floats([0.5, -0.5, 0.001, -0.002, 0.0], &device);
    // SGD without momentum and zero gradient: the base step is the identity.
    let l1 = Decoupled::new(
        pdecay_burn::sgd_pytorch(0.0, false).build(),
        pdecay_burn::L1Prox::new(0.1).unwrap(),
    )
    .with_min_rank(1);
    let (w, _) = l1.step(0.05, w.clone(), w.zeros_like(), None);
    // threshold η·λ = 0.005
    assert_eq!(values(w), vec![0.495, -0.495, 0.0, 0.0, 0.0]);
    assert!(adam_l1(-1.0).is_err());
}

#[test]
fn naive_lp_gradient_by_hand_and_its_divergence() {
    let device = Device::default();
    let w = Tensor::<1>::from_floats([0.25, -4.0, 0.0], &device);
    let naive = Decoupled::new(
        pdecay_burn::sgd_pytorch(0.0, false).build(),
        pdecay_burn::NaiveLp::new(0.5, 0.1).unwrap(),
    )
    .with_min_rank(1);
    let (w1, _) = naive.step(1.0, w.clone(), w.zeros_like(), None);
    // g = p·λ·|w|^(p-1)·sign(w): 0.05·0.25^-0.5 = 0.1; -0.05·4^-0.5 = -0.025; 0 at w = 0
    let got = values(w1);
    for (g, e) in got.iter().zip([0.15f32, -3.975, 0.0]) {
        assert!((g - e).abs() < 1e-6, "{got:?}");
    }
    // p < 1 on a tiny weight: the gradient p·λ·|w|^(p-1) explodes, SGD throws the weight far
    // past zero instead of settling there. pWD at the same p and λ sends it to exact 0.
    let tiny = Tensor::<1>::from_floats([1e-8], &device);
    let (thrown, _) = naive.step(0.1, tiny.clone(), tiny.zeros_like(), None);
    let thrown = values(thrown)[0];
    assert!(thrown < -1e-3, "naive Lp should overshoot: {thrown}");
    let pwd = Decoupled::new(
        pdecay_burn::sgd_pytorch(0.0, false).build(),
        PNormConfig::new(0.5, 0.1).build().unwrap(),
    )
    .with_min_rank(1);
    // 1e-8 -> 1e-8/(1 + 0.005·1e12) = 2e-18 -> ~1e-42 (subnormal) -> flushed to exact 0
    let (once, state) = pwd.step(0.1, tiny.clone(), tiny.zeros_like(), None);
    assert!((values(once.clone())[0] - 2e-18).abs() < 1e-20);
    let (twice, _) = pwd.step(0.1, once.clone(), once.zeros_like(), state);
    assert_eq!(values(twice)[0], 0.0);
    assert!(adam_naive_lp(0.0, 0.1).is_err());
}

#[test]
fn magnitude_pruning_reaches_its_targets_and_masks_stick() {
    let device = device();
    let data = batches(&device, 30);
    let cfg = MagnitudePruningConfig {
        initial_sparsity: 0.0,
        final_sparsity: 0.75,
        begin_step: 0,
        end_step: 20,
        frequency: 5,
    };
    let rule = cfg.build().unwrap();
    // cubic schedule by hand: s_t = 0.75·(1 - (1 - t/20)^3)
    assert!((rule.sparsity_at(10) - 0.75 * (1.0 - 0.125)).abs() < 1e-12);
    assert_eq!(rule.sparsity_at(20), 0.75);
    assert_eq!(rule.sparsity_at(100), 0.75);
    let mut optim = SparseOptimizer::new(adam_gmp(&cfg).unwrap());
    let model = train(Mlp::new(&device), &mut optim, &data, 1e-2);
    let report = optim.sparsity_report(&model, 0.0, false);
    for t in report.tensors.iter().filter(|t| t.decayed) {
        // floor(0.75·n) exact zeros in each decayed tensor, still zero 10 steps after the last update
        assert_eq!(
            t.zeros,
            (t.params as f64 * 0.75).floor() as u64,
            "{}",
            t.name
        );
    }
    assert!(
        MagnitudePruningConfig {
            final_sparsity: 1.5,
            ..Default::default()
        }
        .build()
        .is_err()
    );
}

#[test]
fn nan_gradient_is_an_error_naming_the_parameter() {
    let device = device();
    let model = Mlp::new(&device);
    let mut optim = SparseOptimizer::new(padam(&PNormConfig::default()).unwrap());
    let x = Tensor::<2>::from_data(TensorData::new(vec![f32::NAN; 8], [1, 8]), &device);
    let loss = model.forward(x).sum();
    let g = GradientsParams::from_grads(loss.backward(), &model);
    let err = optim.step(1e-3, model, g).unwrap_err();
    match &err {
        StepError::NonFiniteGradient { name } => assert!(name.starts_with("fc"), "{name}"),
        other => panic!("expected a gradient error, got {other}"),
    }
    assert!(err.to_string().contains("NaN or Inf"));
    let model = Mlp::new(&device);
    let g = grads(&model, &batches(&device, 1)[0]);
    let err = optim.step(-1e-3, model, g).unwrap_err();
    assert_eq!(err, StepError::InvalidLr { lr: -1e-3 });
}

#[test]
fn non_finite_weight_after_a_step_is_an_error() {
    let device = device();
    let mut model = Mlp::new(&device);
    let infinite = TensorData::new(vec![f32::INFINITY; 16 * 4], [16, 4]);
    model.fc2.weight = Param::from_tensor(Tensor::from_data(infinite, &device));
    let mut optim = SparseOptimizer::new(adam_no_decay());
    let g = grads(&Mlp::new(&device), &batches(&device, 1)[0]);
    // the gradients are of another (finite) model; the weights themselves are infinite
    let err = optim.step(1e-3, model, g).unwrap_err();
    assert_eq!(
        err,
        StepError::NonFiniteWeight {
            name: "fc2.weight".into()
        }
    );
}

#[test]
fn invalid_settings_are_rejected_before_training() {
    assert!(padam(&PNormConfig::new(0.0, 1e-3)).is_err());
    assert!(padam(&PNormConfig::new(0.8, -1e-3)).is_err());
    assert!(padam(&PNormConfig::new(0.8, 1e-3).with_lambda2(f64::NAN)).is_err());
    let bad_p = PNormConfig::new(0.8, 1e-3)
        .with_p_schedule(pdecay::schedule::Schedule::linear(2.0, -0.5, 10).unwrap());
    let msg = padam(&bad_p).err().unwrap().to_string();
    assert!(msg.contains("p = -0.5"), "{msg}");
    assert!(padam(&PNormConfig::new(2.0, 1e-3).s_dynamics(0.1)).is_err());
    let _unused: Option<ModuleOptimizer> = None;
    let _rule = NoDecay;
}
