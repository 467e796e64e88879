//! Golden parity with the paper authors' own optimizers.
//!
//! Every `*.json` in `$PDECAY_GOLDEN_DIR` (default: the workspace's `../shared/golden`) is one
//! trajectory of `PAdam` / `PAdam_late` / SGD(momentum)+pWD, computed in float64 by the authors'
//! PyTorch code on a separable quadratic. Each case runs here through the real burn path
//! (`SparseOptimizer` -> `ModuleOptimizer` -> `Decoupled<Adam|Sgd, PNorm>` on flex tensors, with
//! gradients from autodiff), and every recorded step must agree to an absolute 5e-5.

use std::path::PathBuf;

use burn::module::{Module, Param, ParamGroup};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use pdecay_burn::{
    Decoupled, NoDecay, PNormConfig, SparseOptimizer, adam_pytorch, padam_with, sgd_pytorch,
};
use serde::Deserialize;

const TOLERANCE: f32 = 5e-5;

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
    after_step: std::collections::BTreeMap<String, Snapshot>,
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

fn golden_dir() -> PathBuf {
    match std::env::var_os("PDECAY_GOLDEN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
    }
}

/// Which implementation of the case's optimizer runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    /// `Decoupled<Adam | Sgd, PNorm>`: burn's optimizer, then the pWD rule.
    Composite,
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

/// Runs one case; returns the largest deviation over every recorded step.
fn run(case: &Case, path: Path, device: &Device) -> f32 {
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
    let mut worst = 0.0f32;
    let mut checked = 0;
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
        if let Some(expected) = case.after_step.get(&(t + 1).to_string()) {
            for (what, got, want) in [
                ("weight", model.weight.val().into_data(), &expected.weight),
                ("bias", model.bias.val().into_data(), &expected.bias),
            ] {
                let got = got.try_to_vec::<f32>().unwrap();
                assert_eq!(got.len(), want.len(), "{}: {what} length", case.name);
                for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
                    let dev = (g - w).abs();
                    assert!(
                        dev <= TOLERANCE,
                        "{}: step {} {what}[{i}] = {g}, golden {w} (|diff| {dev} > {TOLERANCE})",
                        case.name,
                        t + 1
                    );
                    worst = worst.max(dev);
                }
            }
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        case.after_step.len(),
        "{}: a recorded step lies beyond lr_per_step",
        case.name
    );
    worst
}

#[test]
fn golden_parity_with_the_authors_optimizers() {
    let dir = golden_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read golden directory {}: {e} (set PDECAY_GOLDEN_DIR)",
                dir.display()
            )
        })
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no *.json golden case in {}",
        dir.display()
    );
    let device = Device::default().autodiff();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let case: Case = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a golden case: {e}", file.display()));
        let paths: &[Path] = match case.optimizer.as_str() {
            "adam" => &[Path::Composite, Path::Fused],
            _ => &[Path::Composite],
        };
        for &path in paths {
            let worst = run(&case, path, &device);
            println!(
                "golden {:<24} {} {} {:?} p={} lambda={} steps={} max|diff|={worst:.2e}",
                case.name,
                case.optimizer,
                case.variant,
                path,
                case.p,
                case.lambda,
                case.lr_per_step.len()
            );
        }
    }
}
