//! The run configurations committed under `configs/`: each parses, validates and trains, and
//! each AdamW/pAdam pair differs only in the optimizer, so its comparison is a fair one; the
//! sweep behind the results holds that pair.

mod common;
use common::{json, ok, path, tempdir};

use std::path::{Path, PathBuf};

use pdecay_cli::config::{GPT_THRESHOLD, OptimKind, TrainConfig};

fn config_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name)
}

/// `pdecay train --config configs/NAME --out OUT FLAGS...` (which must succeed), and the run's
/// summary.json.
fn train_committed(out: &Path, name: &str, flags: &[&str]) -> serde_json::Value {
    let file = config_path(name);
    let mut args = vec!["train", "--config", path(&file), "--out", path(out)];
    args.extend_from_slice(flags);
    ok(&args);
    json(&out.join("summary.json"))
}

fn read(name: &str) -> TrainConfig {
    let text = std::fs::read_to_string(config_path(name)).unwrap();
    let config: TrainConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
    config
        .validate()
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    config
}

#[test]
fn the_shakespeare_pair_differs_only_in_the_optimizer() {
    let adamw = read("shakespeare-cpu-adamw.toml");
    let padam = read("shakespeare-cpu-padam.toml");
    assert_eq!(adamw.optim, OptimKind::Adamw);
    // nanoGPT's weight decay, and the p
    assert_eq!(adamw.lambda, 0.1);
    assert_eq!(padam.optim, OptimKind::Padam);
    assert_eq!(padam.p, 0.8);
    // everything else the same: model, data split, schedule, lr, seed, threshold, ...
    let padam_as_adamw = TrainConfig {
        optim: adamw.optim,
        lambda: adamw.lambda,
        p_start: adamw.p_start,
        lambda_release: adamw.lambda_release,
        ..padam.clone()
    };
    assert_eq!(padam_as_adamw, adamw);
    // the CPU preset's sizes
    let g = &adamw.gpt;
    assert_eq!(
        (
            g.layers,
            g.heads,
            g.width,
            g.block_size,
            g.batch_size,
            g.iters
        ),
        (4, 4, 128, 64, 12, 2000)
    );
    assert_eq!(g.dropout, 0.0);
    // the sparsity both count is the authors' threshold or stricter
    assert!(padam.threshold <= GPT_THRESHOLD);
}

#[test]
fn the_fashion_cnn_pair_differs_only_in_the_optimizer() {
    use pdecay_cli::models::ModelKind;
    let adamw = read("fashion-cnn-adamw.toml");
    let padam = read("fashion-cnn-padam.toml");
    assert_eq!((adamw.model, padam.model), (ModelKind::Cnn, ModelKind::Cnn));
    assert_eq!(adamw.optim, OptimKind::Adamw);
    // the showcase's pAdam: the p, lambda released over the last quarter
    assert_eq!(
        (padam.optim, padam.p, padam.lambda, padam.lambda_release),
        (OptimKind::Padam, 0.8, 1.3e-2, Some(0.25))
    );
    // at equal epochs, lr, schedule, batch and seed: AdamW's decay is its own, the rest shared
    assert_eq!(adamw.epochs, 30);
    let padam_as_adamw = TrainConfig {
        optim: adamw.optim,
        p: adamw.p,
        lambda: adamw.lambda,
        lambda_release: adamw.lambda_release,
        ..padam.clone()
    };
    assert_eq!(padam_as_adamw, adamw);
}

#[test]
fn each_committed_cnn_config_trains_an_epoch() {
    let root = tempdir("cnn-configs");
    for name in ["fashion-cnn-adamw.toml", "fashion-cnn-padam.toml"] {
        // the file's model and optimizer settings on the embedded subset, for one epoch
        let summary = train_committed(&root.join(name), name, &["--embedded", "--epochs", "1"]);
        let accuracy = summary["final_test_accuracy"].as_f64().unwrap();
        // ten classes: chance is 10%; one epoch of the subset gets well past it
        assert!(accuracy > 0.3, "{name}: {accuracy}");
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn each_committed_config_trains_a_few_iterations() {
    let root = tempdir("configs");
    let text = root.join("text.txt");
    std::fs::write(
        &text,
        "to be, or not to be: that is the question. ".repeat(60),
    )
    .unwrap();
    for name in ["shakespeare-cpu-adamw.toml", "shakespeare-cpu-padam.toml"] {
        // a tiny model and three iterations: the file's optimizer settings as they are
        let tiny = [
            "--data",
            path(&text),
            "--layers",
            "1",
            "--width",
            "16",
            "--heads",
            "2",
            "--block-size",
            "8",
            "--batch-size",
            "4",
            "--iters",
            "3",
            "--eval-interval",
            "3",
            "--eval-batches",
            "1",
        ];
        let summary = train_committed(&root.join(name), name, &tiny);
        assert_eq!(summary["iters"], 3, "{name}");
        assert!(summary["final_val_loss"].as_f64().unwrap().is_finite());
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_shakespeare_lr_sweep_holds_the_committed_pair() {
    let file = config_path("sweep-shakespeare-lr.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let plan = pdecay_cli::experiments::sweep::parse(&text, "sweep-shakespeare-lr.toml").unwrap();
    assert!(plan.is_gpt());
    assert_eq!(plan.runs.len(), 24);
    for run in &plan.runs {
        run.config.validate().unwrap();
    }
    // each committed config is one of the sweep's runs, exactly
    for name in ["shakespeare-cpu-adamw.toml", "shakespeare-cpu-padam.toml"] {
        let committed = read(name);
        let found = plan.runs.iter().filter(|r| r.config == committed).count();
        assert_eq!(found, 1, "{name} is not a run of the sweep");
    }
    // no run is planned twice
    for (i, a) in plan.runs.iter().enumerate() {
        for b in &plan.runs[i + 1..] {
            assert_ne!(a.config, b.config, "{} and {}", a.name, b.name);
        }
    }
}

#[test]
fn the_cifar_pair_is_the_papers_run_and_differs_only_in_the_optimizer() {
    use pdecay_cli::config::Preset;
    use pdecay_cli::models::ModelKind;
    let adamw = read("cifar-paper-adamw.toml");
    let padam = read("cifar-paper-padam.toml");
    assert_eq!(
        (padam.optim, padam.p, padam.lambda),
        (OptimKind::Padam, 0.8, 1e-2)
    );
    assert_eq!(adamw.optim, OptimKind::Adamw);
    // each file is `--preset cifar-paper` on the paper's ResNet-18, with crops and flips
    for config in [&adamw, &padam] {
        let mut preset = TrainConfig {
            model: ModelKind::Resnet18,
            optim: config.optim,
            p: config.p,
            lambda: config.lambda,
            augment: true,
            ..TrainConfig::default()
        };
        Preset::CifarPaper.apply(&mut preset).unwrap();
        assert_eq!(*config, preset);
        config.refuse_inapplicable_keys().unwrap();
    }
    let padam_as_adamw = TrainConfig {
        optim: adamw.optim,
        p: adamw.p,
        ..padam.clone()
    };
    assert_eq!(padam_as_adamw, adamw);
}
