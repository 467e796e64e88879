//! End-to-end tests of `pdecay export`, `compact`, `eval` and `bench-infer` on small pAdam runs
//! (embedded subset): the exported and compacted models keep the run's accuracy and outputs.

mod common;
use common::{fails, ok, path, pdecay, tempdir};

use std::path::Path;

use burn::tensor::Device;
use pdecay_cli::deploy::infer::Engine;
use pdecay_cli::deploy::model_file::{Format, ModelFile, Stored};
use pdecay_cli::models::Classifier;
use pdecay_cli::run::RunDir;

/// The accuracy `pdecay eval` prints, in percent.
fn evaluated(file: &Path) -> f64 {
    let said = ok(&["eval", path(file), "--embedded"]);
    let tail = said.split("test accuracy ").nth(1).expect("an accuracy");
    tail.split('%').next().unwrap().parse().unwrap()
}

/// Trains a sparse run (pAdam, lambda 0.1 and lr 3e-3 unless `model_args` name them),
/// exports it every way, and checks accuracy, weights and outputs. `max_size_ratio` bounds
/// the sparse file's size over the dense one's.
fn check_deploy(name: &str, model_args: &[&str], max_size_ratio: f64) {
    let root = tempdir(name);
    let run = root.join("run");
    let mut args = vec![
        "train",
        "--embedded",
        "--optim",
        "padam",
        "--p",
        "0.8",
        "--out",
        path(&run),
    ];
    for (flag, default) in [("--lambda", "0.1"), ("--lr", "3e-3")] {
        if !model_args.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend_from_slice(model_args);
    ok(&args);
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    let run_accuracy = 100.0 * summary["final_test_accuracy"].as_f64().unwrap();
    assert!(
        summary["sparsity"].as_f64().unwrap() > 0.3,
        "{name}: {summary}"
    );

    let (dense, sparse, compact) = (
        root.join("dense.safetensors"),
        root.join("sparse.safetensors"),
        root.join("compact.safetensors"),
    );
    let said = ok(&[
        "export",
        path(&run),
        "--format",
        "dense",
        "--out",
        path(&dense),
    ]);
    assert!(said.contains("sparse file"), "{said}");
    ok(&[
        "export",
        path(&run),
        "--format",
        "sparse",
        "--out",
        path(&sparse),
    ]);
    let said = ok(&["compact", path(&run), "--out", path(&compact)]);
    assert!(said.contains("max |logit difference|"), "{said}");

    // the same test accuracy as the run's final checkpoint: exactly from the dense file (the
    // same burn model); the CSR products and the compacted model add in another order, which
    // may move a logit by ~1e-6 and flip a tie, so one image (0.1 pp) of slack
    for (file, slack) in [(&dense, 0.001), (&sparse, 0.101), (&compact, 0.101)] {
        let accuracy = evaluated(file);
        assert!(
            (accuracy - run_accuracy).abs() <= slack,
            "{name} {}: {accuracy} vs {run_accuracy}",
            file.display()
        );
    }

    let (d, s, c) = (
        ModelFile::load(&dense).unwrap(),
        ModelFile::load(&sparse).unwrap(),
        ModelFile::load(&compact).unwrap(),
    );
    // dense and sparse hold the same weights, except that CSR drops |w| below the threshold
    // (a tensor too dense for CSR stays dense, tiny values and all)
    for (a, b) in d.tensors.iter().zip(&s.tensors) {
        let threshold = match b.stored {
            Stored::Sparse(_) => d.threshold as f32,
            Stored::Dense(_) => 0.0,
        };
        let (a, b) = (a.dense(), b.dense());
        let mismatch = a.iter().zip(&b).position(|(x, y)| {
            let expected = if x.abs() >= threshold { *x } else { 0.0 };
            expected != *y
        });
        assert!(
            mismatch.is_none(),
            "{name}: weights differ at {mismatch:?}: {:?}",
            mismatch.map(|i| (a[i], b[i]))
        );
    }
    // and the dense file holds the last checkpoint's weights exactly
    let fresh = Classifier::new(
        d.config.model,
        d.config.image_shape,
        d.config.widths(),
        &Device::default(),
    );
    let (model, _) = RunDir::new(&run).load_model(fresh).unwrap().unwrap();
    let from_checkpoint = ModelFile::from_model(
        &model,
        &d.config,
        Format::Dense,
        d.threshold,
        d.input_stats.clone(),
    );
    assert!(
        from_checkpoint.tensors == d.tensors,
        "{name}: the dense file is not the checkpoint"
    );
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let ratio = size(&sparse) as f64 / size(&dense) as f64;
    assert!(
        ratio < max_size_ratio,
        "{name}: sparse file {ratio} of dense"
    );
    assert!(
        c.params() <= d.params(),
        "{name}: compaction grew the model"
    );
    if name.contains("mlp") {
        assert!(c.params() < d.params(), "{name}: nothing compacted");
    }
    assert_eq!(c.format, Format::Compact);

    // compaction keeps the outputs, and the sparse engines (a ResNet's with BatchNorm folded
    // into its convolutions) give burn's: the largest logit difference on the test images
    let data = pdecay_cli::data::mnist::embedded();
    let indices: Vec<usize> = (0..data.test.len()).collect();
    let x = data.test.normalized(&indices, &d.input_stats);
    let logits = |file: &ModelFile| Engine::new(file).unwrap().logits(&x, indices.len());
    let worst = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max)
    };
    let (full, small, csr) = (logits(&d), logits(&c), logits(&s));
    let resnet = d.config.model.is_resnet();
    // a compact ResNet runs folded, as the sparse one does: compare like with like
    let before = if resnet { &csr } else { &full };
    let changed = worst(before, &small);
    assert!(
        changed <= 1e-5,
        "{name}: compaction changed a logit by {changed}"
    );
    let folded = worst(&full, &csr);
    assert!(folded <= 1e-4, "{name}: the sparse engine is {folded} off");

    // the burn model built from the dense file has the file's weights
    let model = d.to_model(&Device::default()).unwrap();
    let back = ModelFile::from_model(
        &model,
        &d.config,
        Format::Dense,
        d.threshold,
        d.input_stats.clone(),
    );
    assert!(
        back.tensors == from_checkpoint.tensors,
        "{name}: loading changed the weights"
    );

    // `pdecay logits` (for bench/resnet_check.sh) writes the dense model's logits on the
    // first test images, inputs normalised as the file says
    let json = root.join("logits.json");
    ok(&[
        "logits",
        path(&dense),
        "--embedded",
        "--images",
        "3",
        "--out",
        path(&json),
    ]);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let row = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let inputs: Vec<f32> = written["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(row)
        .collect();
    assert_eq!(inputs, x[..inputs.len()]);
    let logits: Vec<f32> = written["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(row)
        .collect();
    // a batch of 3, not of the whole test set: gemm may add in another order
    let off = worst(&logits, &full[..3 * 10]);
    assert!(logits.len() == 30 && off <= 1e-5, "{off}");
    fails(
        &["logits", path(&dense), "--text", "ab", "--out", path(&json)],
        &["--text is for GPTs"],
    );

    // from the run, and from the compacted file (a compacted ResNet has no burn model: every
    // row runs on the folded engine)
    for model in [&run, &compact] {
        let said = ok(&["bench-infer", path(model), "--repeats", "4"]);
        for row in ["dense", "sparse", "compact"] {
            assert!(said.lines().any(|l| l.starts_with(row)), "{said}");
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_mlp_exports_compacts_and_evaluates_to_the_runs_accuracy() {
    check_deploy("deploy-mlp", &["--hidden", "64,32", "--epochs", "6"], 0.6);
}

#[test]
fn a_cnn_exports_compacts_and_evaluates_to_the_runs_accuracy() {
    // one epoch leaves the CNN about half sparse: CSR pays only for some tensors, and no
    // whole channel is dead yet (compact.rs tests the CNN's channel removal by hand)
    check_deploy("deploy-cnn", &["--model", "cnn", "--epochs", "1"], 1.0);
}

#[test]
fn a_resnet_exports_compacts_and_evaluates_to_the_runs_accuracy() {
    // a narrow ResNet-20, two epochs (about 70% sparse, 38% accurate): BatchNorm's running
    // statistics go into the files and are folded into the convolutions by the sparse and
    // compact engines
    check_deploy(
        "deploy-resnet",
        &[
            "--model",
            "resnet20",
            "--resnet-width",
            "4",
            "--epochs",
            "2",
            "--lambda",
            "1",
            "--lr",
            "1e-3",
        ],
        0.8,
    );
}

#[test]
fn bad_model_files_are_clear_errors() {
    let root = tempdir("deploy-bad");
    let garbage = root.join("garbage.safetensors");
    std::fs::write(&garbage, b"\x10\0\0\0\0\0\0\0{not json at all").unwrap();
    let out = pdecay(&["eval", path(&garbage), "--embedded"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("corrupt or truncated"), "{err}");
    let out = pdecay(&[
        "eval",
        path(&root.join("missing.safetensors")),
        "--embedded",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let out = pdecay(&["export", path(&root), "--out", path(&garbage)]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a run folder"));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn export_and_compact_never_overwrite_a_file_unasked_nor_write_into_a_run() {
    let root = tempdir("deploy-out");
    let run = root.join("run");
    ok(&[
        "train",
        "--embedded",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--out",
        path(&run),
    ]);
    let checkpoint = run.join("checkpoint-00001.model.bpk");
    let before = std::fs::read(&checkpoint).unwrap();
    let config = std::fs::read(run.join("config.toml")).unwrap();
    for command in ["export", "compact"] {
        // the run's own files, with or without --force
        for target in [
            &checkpoint,
            &run.join("config.toml"),
            &run.join("new.safetensors"),
        ] {
            for force in [false, true] {
                let mut args = vec![command, path(&run), "--out", path(target)];
                if force {
                    args.push("--force");
                }
                fails(&args, &["inside the run folder"]);
            }
        }
        // an existing file elsewhere: only with --force
        let other = root.join(format!("{command}.safetensors"));
        std::fs::write(&other, b"keep me").unwrap();
        fails(
            &[command, path(&run), "--out", path(&other)],
            &["exists", "--force"],
        );
        assert_eq!(std::fs::read(&other).unwrap(), b"keep me");
        ok(&[command, path(&run), "--out", path(&other), "--force"]);
        assert!(ModelFile::load(&other).is_ok(), "{command}");
        // a folder, a path that names one, a folder that does not exist (these named the
        // temporary file instead)
        fails(
            &[command, path(&run), "--out", path(&root)],
            &["is a folder"],
        );
        let slash = format!("{}/new-folder/", root.display());
        fails(&[command, path(&run), "--out", &slash], &["ends with '/'"]);
        let orphan = root.join("no").join("such").join("m.safetensors");
        fails(
            &[command, path(&run), "--out", path(&orphan)],
            &["does not exist", "create it first"],
        );
    }
    fails(
        &[
            "bench-infer",
            path(&run),
            "--repeats",
            "18446744073709551615",
        ],
        &["--repeats must lie in"],
    );
    assert_eq!(std::fs::read(&checkpoint).unwrap(), before);
    assert_eq!(std::fs::read(run.join("config.toml")).unwrap(), config);
    assert!(!run.join("new.safetensors").exists());
    // and no temporary file was left anywhere
    for dir in [&root, &run] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.ends_with(".tmp"), "{name} left in {}", dir.display());
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}
