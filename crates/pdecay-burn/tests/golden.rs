//! Golden parity with the paper authors' own optimizers.
//!
//! Every `*.json` in the shared golden folder (`$PDECAY_GOLDEN_DIR`, default the workspace's
//! `../shared/golden`: trajectories computed in float64 by the authors' PyTorch code) and in
//! `tests/golden/` (ours, from `scripts/golden_cases.py`: the authors' formulas in float64 at
//! small p, with SGD and Adam, constant and cosine lr) is one trajectory of `PAdam` /
//! `PAdam_late` / SGD(momentum)+pWD on a separable quadratic. Each case runs through every path
//! of the real burn optimizer (`SparseOptimizer` -> `ModuleOptimizer` -> `Decoupled<Adam|Sgd,
//! PNorm>` with the slice kernel and with composite tensor ops, and the fused `PAdam`, on flex
//! tensors with gradients from autodiff; the two kernels once per instruction set the CPU has),
//! and beside them a plain f32 implementation of the same
//! formulas written here. Every path of every case runs even when one fails; at every recorded
//! step each must be within an absolute 5e-5 of the golden values and within 2x the plain f32
//! reference's deviation (a floor of 1e-6 keeps the first steps, where both are at the f32
//! rounding of the weights, from turning noise into ratios).

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::module::{Module, Param, ParamGroup};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use pdecay_burn::pdecay::kernel::{SimdLevel, limit_simd};
use pdecay_burn::{
    Decoupled, Kernel, NoDecay, PNormConfig, SparseOptimizer, adam_pytorch, padam_with, sgd_pytorch,
};
use serde::Deserialize;

/// The largest absolute deviation from the golden values at any recorded step.
const TOLERANCE: f32 = 5e-5;
/// How much worse than the plain f32 reference a path may be at a recorded step...
const RATIO: f32 = 2.0;
/// ...counting deviations below this as this (both are then at the weights' f32 rounding).
const FLOOR: f32 = 1e-6;

#[derive(Deserialize)]
struct Case {
    name: String,
    optimizer: String,
    variant: String,
    p: f64,
    lambda: f64,
    betas: Option<[f64; 2]>,
    eps: Option<f64>,
    momentum: Option<f64>,
    weight_shape: [usize; 2],
    weight_decayed: bool,
    bias_decayed: bool,
    lr_per_step: Vec<f64>,
    weight_init: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    bias_init: Vec<f32>,
    bias_target: Vec<f32>,
    after_step: BTreeMap<String, Snapshot>,
}

#[derive(Deserialize)]
struct Snapshot {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

#[derive(Module, Debug)]
struct Quadratic {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

/// The folders of golden cases: the shared one (the authors' code) and ours.
fn golden_dirs() -> [PathBuf; 2] {
    let shared = match std::env::var_os("PDECAY_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
    };
    [
        shared,
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden"),
    ]
}

/// Which implementation of the case's optimizer runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// `Decoupled<Adam | Sgd, PNorm>` with pWD in `pdecay::kernel`'s slice kernel.
    Slice,
    /// `Decoupled<Adam | Sgd, PNorm>` with pWD as composite tensor ops (the GPU path).
    TensorOps,
    /// `PAdam`: Adam and pWD fused into one pass (Adam cases only).
    Fused,
}

/// The optimizer of one case: the default group does not decay; `weight` and `bias` get pWD
/// (from rank 1, so the bias can decay too) when the case says so.
fn optimizer(case: &Case, path: Path) -> SparseOptimizer {
    let mut decay = PNormConfig::new(case.p, case.lambda);
    match case.variant.as_str() {
        "old" => {}
        "late" => decay = decay.late(),
        other => panic!(
            "{}: unknown variant {other:?} (expected old or late)",
            case.name
        ),
    }
    if path == Path::TensorOps {
        decay = decay.with_kernel(Kernel::TensorOps);
    }
    let rule = decay.build().expect("golden p and lambda are valid");
    macro_rules! build {
        ($base:expr) => {{
            let mut optim = SparseOptimizer::new(Decoupled::new($base, NoDecay));
            for (path, decayed) in [("weight", case.weight_decayed), ("bias", case.bias_decayed)] {
                if decayed {
                    let pwd = Decoupled::new($base, rule.clone()).with_min_rank(1);
                    optim = optim.with_group(ParamGroup::from_path(path), pwd);
                }
            }
            optim
        }};
    }
    match case.optimizer.as_str() {
        "adam" => {
            let [beta_1, beta_2] = case.betas.expect("adam case has betas");
            let adam = adam_pytorch()
                .with_beta_1(beta_1 as f32)
                .with_beta_2(beta_2 as f32)
                .with_epsilon(case.eps.expect("adam case has eps") as f32)
                .build();
            if path == Path::Fused {
                let mut optim = SparseOptimizer::new(Decoupled::new(adam, NoDecay));
                for (name, decayed) in
                    [("weight", case.weight_decayed), ("bias", case.bias_decayed)]
                {
                    if decayed {
                        let fused = padam_with(
                            beta_1 as f32,
                            beta_2 as f32,
                            case.eps.unwrap() as f32,
                            &decay,
                        )
                        .expect("golden p and lambda are valid")
                        .with_min_rank(1);
                        optim = optim.with_group(ParamGroup::from_path(name), fused);
                    }
                }
                return optim;
            }
            build!(adam.clone())
        }
        "sgd" => {
            let sgd = sgd_pytorch(case.momentum.unwrap_or(0.0), false).build();
            build!(sgd.clone())
        }
        other => panic!(
            "{}: unknown optimizer {other:?} (expected adam or sgd)",
            case.name
        ),
    }
}

/// The weights and bias after each recorded step, by step.
type Trajectory = BTreeMap<usize, (Vec<f32>, Vec<f32>)>;

/// The recorded steps of one case through `path`.
fn run(case: &Case, path: Path, device: &Device) -> Trajectory {
    let [rows, cols] = case.weight_shape;
    let tensor2 =
        |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), device);
    let tensor1 =
        |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [v.len()]), device);
    let (a, b) = (tensor2(&case.a), tensor2(&case.b));
    let bias_target = tensor1(&case.bias_target);
    let mut model = Quadratic {
        weight: Param::from_tensor(tensor2(&case.weight_init)),
        bias: Param::from_tensor(tensor1(&case.bias_init)),
    };
    let mut optim = optimizer(case, path);
    // The groups must route as the case says, or a passing run would prove nothing.
    let plan = optim.decay_summary(&model);
    let decayed = |name: &str| plan.tensors.iter().any(|(path, _, d)| path == name && *d);
    assert_eq!(
        decayed("weight"),
        case.weight_decayed,
        "{}: weight routing",
        case.name
    );
    assert_eq!(
        decayed("bias"),
        case.bias_decayed,
        "{}: bias routing",
        case.name
    );
    let mut recorded = Trajectory::new();
    for (t, &lr) in case.lr_per_step.iter().enumerate() {
        let diff = model.weight.val() - b.clone();
        let loss = (a.clone() * diff.clone() * diff).sum().mul_scalar(0.5)
            + (model.bias.val() - bias_target.clone())
                .square()
                .sum()
                .mul_scalar(0.5);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim
            .step(lr, model, grads)
            .expect("golden steps are finite");
        if case.after_step.contains_key(&(t + 1).to_string()) {
            let weight = model.weight.val().into_data().try_to_vec::<f32>().unwrap();
            let bias = model.bias.val().into_data().try_to_vec::<f32>().unwrap();
            recorded.insert(t + 1, (weight, bias));
        }
    }
    recorded
}

/// The case's optimizer written out in plain f32, the textbook order of operations (the
/// bias corrections from f32 `powi`, `1 - β` in f32): Adam
/// (`m ← β₁m + (1-β₁)g`, `v ← β₂v + (1-β₂)g²`, `w_step = w - (η/(1-β₁ᵗ))·m/(√v/√(1-β₂ᵗ) + ε)`)
/// or SGD with momentum (`b ← μb + g`, `w_step = w - η·b`), then pWD
/// `w ← w_step / (1 + p·η·λ·|w_ref|^(p-2))` with std's `powf`, results below the normal range
/// flushed to zero. The yardstick: what f32 arithmetic alone costs against the float64 golden.
fn plain_f32(case: &Case) -> Trajectory {
    let n = case.weight_init.len();
    let (p, lambda) = (case.p as f32, case.lambda as f32);
    let late = case.variant == "late";
    let mut w = case.weight_init.clone();
    let mut bias = case.bias_init.clone();
    let state = |len| (vec![0.0f32; len], vec![0.0f32; len]);
    let (mut m_w, mut v_w) = state(n);
    let (mut m_b, mut v_b) = state(bias.len());
    let mut recorded = Trajectory::new();
    for (t, &lr) in case.lr_per_step.iter().enumerate() {
        let lr = lr as f32;
        let step = |x: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], decays: bool| {
            for i in 0..x.len() {
                let before = x[i];
                let stepped = match case.optimizer.as_str() {
                    "adam" => {
                        let [b1, b2] = case.betas.unwrap().map(|b| b as f32);
                        let eps = case.eps.unwrap() as f32;
                        m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                        v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                        let bc1 = 1.0 - b1.powi(t as i32 + 1);
                        let bc2 = 1.0 - b2.powi(t as i32 + 1);
                        before - (lr / bc1) * m[i] / (v[i].sqrt() / bc2.sqrt() + eps)
                    }
                    _ => {
                        let mu = case.momentum.unwrap_or(0.0) as f32;
                        m[i] = if t == 0 { g[i] } else { mu * m[i] + g[i] };
                        before - lr * m[i]
                    }
                };
                x[i] = if decays {
                    let reference = if late { stepped } else { before };
                    let penalty = p * lr * lambda * reference.abs().powf(p - 2.0);
                    let decayed = stepped / (1.0 + penalty);
                    if decayed.abs() < f32::MIN_POSITIVE {
                        0.0
                    } else {
                        decayed
                    }
                } else {
                    stepped
                };
            }
        };
        let g_w: Vec<f32> = (0..n).map(|i| case.a[i] * (w[i] - case.b[i])).collect();
        let g_b: Vec<f32> = (0..bias.len())
            .map(|i| bias[i] - case.bias_target[i])
            .collect();
        step(&mut w, &g_w, &mut m_w, &mut v_w, case.weight_decayed);
        step(&mut bias, &g_b, &mut m_b, &mut v_b, case.bias_decayed);
        if case.after_step.contains_key(&(t + 1).to_string()) {
            recorded.insert(t + 1, (w.clone(), bias.clone()));
        }
    }
    recorded
}

/// The largest deviation from the golden values at each recorded step, and where.
fn deviations(case: &Case, run: &Trajectory) -> BTreeMap<usize, (f32, String)> {
    run.iter()
        .map(|(&step, (weight, bias))| {
            let golden = &case.after_step[&step.to_string()];
            let mut worst = (0.0f32, String::new());
            for (what, got, want) in [
                ("weight", weight, &golden.weight),
                ("bias", bias, &golden.bias),
            ] {
                assert_eq!(got.len(), want.len(), "{}: {what} length", case.name);
                for (i, (g, w)) in got.iter().zip(want).enumerate() {
                    let dev = (g - w).abs();
                    // NaN counts as the worst
                    if dev.is_nan() || dev > worst.0 {
                        worst = (dev, format!("{what}[{i}] = {g}, golden {w}"));
                    }
                }
            }
            (step, worst)
        })
        .collect()
}

#[test]
fn golden_parity_with_the_authors_optimizers() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in golden_dirs() {
        let before = files.len();
        files.extend(
            std::fs::read_dir(&dir)
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot read golden directory {}: {e} (set PDECAY_GOLDEN_DIR)",
                        dir.display()
                    )
                })
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "json")),
        );
        assert!(
            files.len() > before,
            "no *.json golden case in {}",
            dir.display()
        );
    }
    files.sort();
    let device = Device::default().autodiff();
    let levels = limit_simd(SimdLevel::Avx512);
    println!("instruction sets of this CPU: {levels:?}");
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let case: Case = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a golden case: {e}", file.display()));
        let reference = deviations(&case, &plain_f32(&case));
        assert_eq!(
            reference.len(),
            case.after_step.len(),
            "{}: a recorded step lies beyond lr_per_step",
            case.name
        );
        let paths: &[Path] = match case.optimizer.as_str() {
            "adam" => &[Path::Slice, Path::TensorOps, Path::Fused],
            _ => &[Path::Slice, Path::TensorOps],
        };
        // the slice and fused kernels once per instruction set this CPU has; tensor ops once
        let mut runs = Vec::new();
        for &path in paths {
            let levels = match path {
                Path::TensorOps => vec![SimdLevel::Avx512],
                Path::Slice | Path::Fused => levels.clone(),
            };
            for level in levels {
                limit_simd(level);
                let label = match path {
                    Path::TensorOps => format!("{path:?}"),
                    _ => format!("{path:?}/{level:?}"),
                };
                runs.push((label, deviations(&case, &run(&case, path, &device))));
            }
        }
        limit_simd(SimdLevel::Avx512);
        println!(
            "golden {} ({} {}, p {}, lambda {}, {} steps): worst |diff| per recorded step, and / plain f32's",
            case.name,
            case.optimizer,
            case.variant,
            case.p,
            case.lambda,
            case.lr_per_step.len()
        );
        for (step, (plain, _)) in &reference {
            let mut line = format!("  step {step:>4}  plain f32 {plain:.2e}");
            for (path, devs) in &runs {
                let (dev, at) = &devs[step];
                let ratio = dev.max(FLOOR) / plain.max(FLOOR);
                line += &format!("  {path} {dev:.2e} ({ratio:.2}x)");
                if dev.is_nan() || *dev > TOLERANCE || ratio > RATIO {
                    failures.push(format!(
                        "{} {path} step {step}: {at} (|diff| {dev:.2e}, tolerance {TOLERANCE:.0e}; {ratio:.2}x plain f32's {plain:.2e}, at most {RATIO}x)",
                        case.name
                    ));
                }
            }
            println!("{line}");
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the recorded steps fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
