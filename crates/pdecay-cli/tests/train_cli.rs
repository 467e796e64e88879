//! End-to-end tests of `pdecay train` through the real binary, on the embedded subset.

mod common;
use common::{
    checkpoint_weights, fails as assert_fails, json, metrics_without_time, ok, path, pdecay,
    stderr, tempdir, without_times,
};

use std::path::Path;

fn summary(dir: &Path) -> serde_json::Value {
    json(&dir.join("summary.json"))
}

#[test]
fn padam_learns_and_ends_far_sparser_than_adamw() {
    let root = tempdir("learn");
    let run = |optim: &str, lambda: &str| {
        let dir = root.join(optim);
        let out = pdecay(&[
            "train",
            "--embedded",
            "--epochs",
            "2",
            "--optim",
            optim,
            "--lambda",
            lambda,
            "--lr",
            "2e-3",
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{optim}: {}", stderr(&out));
        dir
    };
    let adamw = run("adamw", "1e-2");
    let padam = run("padam", "3e-1");

    // every file and key, with sane values
    for dir in [&adamw, &padam] {
        let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
        assert!(config.contains("epochs = 2"), "{config}");
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for key in [
            "epoch",
            "step",
            "lr",
            "train_loss",
            "test_loss",
            "test_accuracy",
            "sparsity",
            "sparsity_exact_zero",
            "sparsity_all_params",
            "layers",
            "seconds",
        ] {
            assert!(lines[1].get(key).is_some(), "metrics.jsonl lacks {key}");
        }
        assert_eq!(lines[1]["step"], 2 * 43); // 5,500 images in batches of 128
        let layers = lines[1]["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 6);
        assert!(
            layers
                .iter()
                .any(|l| l["name"] == "Mlp.hidden.0.weight" && l["decayed"] == true),
            "{layers:?}"
        );
        let s = summary(dir);
        for key in [
            "final_test_accuracy",
            "best_test_accuracy",
            "best_epoch",
            "final_test_loss",
            "sparsity",
            "sparsity_exact_zero",
            "sparsity_all_params",
            "nonzero_params",
            "total_params",
            "decayed_params",
            "epochs",
            "wall_seconds",
            "samples_per_second",
        ] {
            assert!(s.get(key).is_some(), "summary.json lacks {key}");
        }
        assert_eq!(s["total_params"], 266_610);
        assert_eq!(s["decayed_params"], 266_200);
        // well above chance (10%)
        assert!(s["final_test_accuracy"].as_f64().unwrap() > 0.7, "{s}");
    }
    let (sa, sp) = (summary(&adamw), summary(&padam));
    assert!(sa["sparsity"].as_f64().unwrap() < 0.05, "{sa}");
    assert!(sp["sparsity"].as_f64().unwrap() > 0.5, "{sp}");
}

#[test]
fn bad_inputs_are_clear_errors_and_never_overwrite_a_run() {
    let root = tempdir("bad");
    assert_fails(
        &["train", "--embedded", "--p", "0", "--epochs", "1"],
        &["p = 0"],
    );
    assert_fails(
        &["train", "--embedded", "--lambda=-1", "--epochs", "1"],
        &["lambda = -1"],
    );
    assert_fails(
        &["train", "--embedded", "--optim", "sgd-unknown"],
        &["invalid value 'sgd-unknown'"],
    );

    // missing data: names the folder and the files it needs
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    assert_fails(
        &["train", "--data", empty.to_str().unwrap(), "--epochs", "1"],
        &["train-images-idx3-ubyte"],
    );

    // a corrupt IDX file
    let corrupt = root.join("corrupt");
    std::fs::create_dir_all(&corrupt).unwrap();
    for f in [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ] {
        std::fs::write(corrupt.join(f), [0u8, 0, 8, 9, 1, 2]).unwrap();
    }
    assert_fails(
        &[
            "train",
            "--data",
            corrupt.to_str().unwrap(),
            "--epochs",
            "1",
        ],
        &["magic number"],
    );

    // unknown key in a config file names the key and the file
    let cfg = root.join("bad.toml");
    std::fs::write(&cfg, "epochs = 1\nlearning_rate = 0.1\n").unwrap();
    assert_fails(
        &["train", "--embedded", "--config", cfg.to_str().unwrap()],
        &["learning_rate", "bad.toml"],
    );

    // an unwritable --out
    let unwritable = [
        "train",
        "--embedded",
        "--epochs",
        "1",
        "--out",
        "/proc/pdecay-cannot-write-here",
    ];
    assert_fails(&unwritable, &["cannot create run folder"]);

    // a diverging run stops with the epoch and step, not a silent NaN
    let diverged = root.join("diverged");
    let args = [
        "train",
        "--embedded",
        "--epochs",
        "2",
        "--optim",
        "adam",
        "--lr",
        "1e30",
        "--out",
        diverged.to_str().unwrap(),
    ];
    let err = assert_fails(&args, &["at epoch 1, step"]);
    assert!(
        err.contains("NaN or Inf") || err.contains("diverged"),
        "{err}"
    );
    assert!(!diverged.join("summary.json").exists());

    // an existing run folder is never overwritten
    let run = root.join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("config.toml"), "epochs = 7\n").unwrap();
    assert_fails(
        &[
            "train",
            "--embedded",
            "--epochs",
            "1",
            "--out",
            run.to_str().unwrap(),
        ],
        &["already holds a run"],
    );
    assert_eq!(
        std::fs::read_to_string(run.join("config.toml")).unwrap(),
        "epochs = 7\n"
    );
}

/// Trains `epochs` epochs straight, and `epochs - 1` then `--resume`; both must end identical.
/// Sparse training is on (its plan is part of what resumes; `auto` would time the products and
/// could choose differently in the two runs).
fn assert_resume_matches(name: &str, epochs: usize, model_args: &[&str]) {
    let root = tempdir(name);
    let (straight, resumed) = (root.join("straight"), root.join("resumed"));
    let (total, stop) = (epochs.to_string(), (epochs - 1).to_string());
    let mut common = vec![
        "train",
        "--embedded",
        "--epochs",
        &total,
        "--optim",
        "padam",
        "--lambda",
        "0.1",
        "--lr",
        "2e-3",
        "--seed",
        "3",
        "--sparse-training",
        "on",
    ];
    common.extend_from_slice(model_args);
    let run = |extra: &[&str]| {
        let mut args = common.clone();
        args.extend_from_slice(extra);
        let out = pdecay(&args);
        assert!(out.status.success(), "{name} {extra:?}: {}", stderr(&out));
    };
    run(&["--out", straight.to_str().unwrap()]);
    run(&["--out", resumed.to_str().unwrap(), "--stop-after", &stop]);
    let position: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(resumed.join("checkpoint.json")).unwrap())
            .unwrap();
    assert_eq!(position["epoch"], epochs - 1);
    assert!(
        !resumed.join("summary.json").exists(),
        "a stopped run is not finished"
    );
    let out = pdecay(&["train", "--resume", resumed.to_str().unwrap()]);
    assert!(out.status.success(), "{name} resume: {}", stderr(&out));
    // the weights, bit for bit (the files themselves differ in their random parameter ids)
    assert_eq!(
        checkpoint_weights(&straight),
        checkpoint_weights(&resumed),
        "{name}: weights differ"
    );
    assert!(
        !resumed
            .join(format!("checkpoint-{:05}.model.bpk", epochs - 1))
            .exists(),
        "old checkpoints are removed"
    );
    assert_eq!(
        metrics_without_time(&straight),
        metrics_without_time(&resumed),
        "{name}: metrics differ"
    );
    assert_eq!(
        summary(&straight)["final_test_loss"],
        summary(&resumed)["final_test_loss"]
    );
    // and the files byte for byte, but for the clock: resume once rewrote numbers one ULP off
    let text = |dir: &Path, file: &str| {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        without_times(&text)
    };
    for file in ["metrics.jsonl", "summary.json"] {
        assert_eq!(
            text(&straight, file),
            text(&resumed, file),
            "{name}: {file}"
        );
    }
}

#[test]
fn resumed_mlp_run_ends_bit_identical_to_one_that_never_stopped() {
    assert_resume_matches("resume-mlp", 3, &[]);
}

#[test]
fn resumed_cnn_run_with_dropout_ends_bit_identical() {
    // dropout draws from burn's RNG, reseeded per epoch from the run's seed
    assert_resume_matches("resume-cnn", 2, &["--model", "cnn"]);
}

#[test]
fn sparse_training_on_follows_the_dense_run_and_is_refused_where_zeros_move() {
    let root = tempdir("sparse-training");
    let run = |model: &str, epochs: &str, mode: &str| {
        let dir = root.join(format!("{model}-{mode}"));
        ok(&[
            "train",
            "--embedded",
            "--model",
            model,
            "--epochs",
            epochs,
            "--optim",
            "padam",
            "--lambda",
            "0.1",
            "--lr",
            "2e-3",
            "--seed",
            "4",
            "--sparse-training",
            mode,
            "--out",
            path(&dir),
        ]);
        metrics_without_time(&dir)
    };
    let names = |m: &serde_json::Value| -> Vec<(String, u64)> {
        m["sparse_layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().into(),
                    l["since_step"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    for (model, epochs, layers) in [
        ("mlp", "2", &["hidden.0", "hidden.1", "output"][..]),
        ("cnn", "1", &["conv1", "conv2", "dense", "output"][..]),
    ] {
        let (on, off) = (run(model, epochs, "on"), run(model, epochs, "off"));
        // every layer (the CNN's convolutions too) from the first step; none with off
        let expected: Vec<(String, u64)> = layers.iter().map(|l| (l.to_string(), 0)).collect();
        assert_eq!(names(on.last().unwrap()), expected, "{model}");
        assert!(names(off.last().unwrap()).is_empty());
        // the same run up to summation order: after 43-86 steps of Adam the two drift apart
        // only by rounding, far less than the spread of two seeds (~1 pp accuracy here)
        for (a, b) in on.iter().zip(&off) {
            let close = |key: &str, tolerance: f64| {
                let (x, y) = (a[key].as_f64().unwrap(), b[key].as_f64().unwrap());
                assert!((x - y).abs() <= tolerance, "{model} {key}: on {x} off {y}");
            };
            close("train_loss", 2e-3);
            close("test_loss", 2e-3);
            close("test_accuracy", 3e-3);
            close("sparsity", 2e-3);
            assert!(
                a["step_seconds"].is_null(),
                "removed by metrics_without_time"
            );
        }
    }
    for (args, said) in [
        (
            &["--optim", "adamw", "--lambda", "0.01"][..],
            "--optim adamw lets a zero weight move again",
        ),
        (&["--late"][..], "the late variant"),
        (&["--p", "2"][..], "p is 2"),
    ] {
        let mut all = vec![
            "train",
            "--embedded",
            "--epochs",
            "1",
            "--sparse-training",
            "on",
        ];
        all.extend_from_slice(args);
        assert_fails(
            &all,
            &["sparse_training = on needs zeros that stay zero", said],
        );
    }
}

#[test]
fn resume_refuses_other_settings_and_non_run_folders() {
    let root = tempdir("resume-bad");
    let run = root.join("run");
    let out = pdecay(&[
        "train",
        "--embedded",
        "--epochs",
        "2",
        "--stop-after",
        "1",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_fails(
        &[
            "train",
            "--resume",
            run.to_str().unwrap(),
            "--lambda",
            "0.5",
        ],
        &["lambda = 0.5"],
    );
    assert_fails(
        &["train", "--resume", root.to_str().unwrap()],
        &["not a run folder"],
    );
}

/// A data folder of `train` and `test` images of `side`x`side` pixels (all zero, label 0).
fn image_folder(dir: &Path, train: usize, test: usize, side: usize) {
    use pdecay_cli::data::idx::encode_idx;
    std::fs::create_dir_all(dir).unwrap();
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let images = encode_idx(&[n, side, side], &vec![0; n * side * side]);
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        let labels = encode_idx(&[n], &vec![0; n]);
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

#[test]
fn a_run_that_would_train_nothing_or_ignore_a_setting_is_refused_before_it_starts() {
    let root = tempdir("nothing-trained");
    let out = root.join("run");
    let with_out = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--out".to_string(), out.display().to_string()]);
        all
    };
    let refused = |args: &[&str], words: &[&str]| {
        let all = with_out(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let message = assert_fails(&all, words);
        assert!(!out.exists(), "{args:?} left a run folder: {message}");
    };
    // item 8: nothing to train on, one short batch at warm-up lr 0, a pruning that never prunes
    let empty = root.join("no-train-images");
    image_folder(&empty, 0, 10, 28);
    let empty = empty.display().to_string();
    refused(
        &["train", "--data", &empty, "--epochs", "1"],
        &["no training images"],
    );
    refused(
        &[
            "train",
            "--embedded",
            "--epochs",
            "1",
            "--batch-size",
            "10000",
        ],
        &[
            "batch_size 10000 is larger than the 5500 training images",
            "--batch-size 5500",
        ],
    );
    refused(
        &[
            "train",
            "--embedded",
            "--epochs",
            "1",
            "--optim",
            "gmp",
            "--gmp-frequency",
            "500",
        ],
        &["would never prune", "at most 32"],
    );
    // item 9: settings the model or optimizer does not read, in flags and config files alike
    for (args, words) in [
        (
            &["--optim", "adamw", "--p", "0.5"][..],
            &["`p` (--p)", "--optim adamw"][..],
        ),
        (
            &["--model", "cnn", "--hidden", "64"],
            &["`hidden`", "--model cnn"],
        ),
        (
            &["--optim", "adam", "--structured"],
            &["`structured`", "pWD"],
        ),
        (
            &["--optim", "adam", "--lambda", "0.1"],
            &["`lambda`", "--optim adam"],
        ),
        (
            &["--optim", "padam", "--gmp-frequency", "7"],
            &["`gmp_frequency`", "magnitude pruning"],
        ),
        (
            &["--lambda-release-ratio", "0.5"],
            &["`lambda_release_ratio`", "--lambda-release"],
        ),
        (
            &["--model", "gpt", "--hidden", "64"],
            &["`hidden`", "--model gpt"],
        ),
    ] {
        let mut all = vec!["train", "--embedded", "--epochs", "1"];
        all.extend_from_slice(args);
        refused(&all, words);
    }
    let file = root.join("adamw.toml");
    std::fs::write(&file, "optim = \"adamw\"\np_start = 2.0\n").unwrap();
    refused(
        &["train", "--embedded", "--config", file.to_str().unwrap()],
        &["`p_start`", "--optim adamw"],
    );
    // a layer's own lambda for a layer the model does not have: refused with the names it has
    let file = root.join("layer-typo.toml");
    std::fs::write(
        &file,
        "model = \"cnn\"\nepochs = 1\n[layer_lambda]\n\"Cnn.conv3\" = 1e-3\n",
    )
    .unwrap();
    refused(
        &["train", "--embedded", "--config", file.to_str().unwrap()],
        &["`Cnn.conv3`", "Cnn.conv1, Cnn.conv2, Cnn.dense, Cnn.output"],
    );
    let file = root.join("mlp.toml");
    std::fs::write(&file, "epochs = 1\n[gpt]\nlayers = 2\n").unwrap();
    refused(
        &["train", "--embedded", "--config", file.to_str().unwrap()],
        &["[gpt] table", "--model mlp"],
    );
    // item 10: images that are not 28x28 train (the networks take the data's shape), export
    // to a file of that shape, and evaluating it on other images is refused with both shapes
    let big = root.join("32x32");
    image_folder(&big, 20, 10, 32);
    let run = root.join("run-32x32");
    let (data, run) = (big.to_str().unwrap(), run.to_str().unwrap());
    ok(&[
        "train",
        "--data",
        data,
        "--epochs",
        "1",
        "--batch-size",
        "10",
        "--out",
        run,
    ]);
    let file = root.join("32x32.safetensors");
    ok(&["export", run, "--out", file.to_str().unwrap()]);
    assert_fails(
        &["eval", file.to_str().unwrap(), "--embedded"],
        &["1x32x32", "1x28x28"],
    );
    // item 11: sizes no machine holds, refused with the estimate before anything is allocated
    refused(
        &[
            "train",
            "--embedded",
            "--epochs",
            "1",
            "--hidden",
            "100000000000",
        ],
        &["GiB to train", "--hidden"],
    );
    // item 12: absurd thread counts
    refused(
        &["train", "--embedded", "--threads", "100000"],
        &["--threads 100000", "at most"],
    );
    // item 13: messages that named internals
    for (args, words) in [
        (&["--min-lr-ratio", "nan"][..], &["min_lr_ratio"][..]),
        (&["--p-start", "nan"], &["p_start"]),
        (&["--s-dynamics", "nan"], &["s_dynamics"]),
        (
            &["--optim", "gmp", "--gmp-final-sparsity", "2"],
            &["gmp_final_sparsity"],
        ),
    ] {
        let mut all = vec!["train", "--embedded", "--epochs", "1"];
        all.extend_from_slice(args);
        refused(&all, words);
    }
    let missing = root.join("no-such-folder");
    refused(
        &[
            "train",
            "--data",
            missing.to_str().unwrap(),
            "--epochs",
            "1",
        ],
        &["no-such-folder does not exist"],
    );
    let said = String::from_utf8_lossy(
        &std::process::Command::new(env!("CARGO_BIN_EXE_pdecay"))
            .args(with_out(&["train", "--epochs", "1"]))
            .env("PDECAY_DATA", "")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
            .stderr,
    )
    .into_owned();
    assert!(said.contains("$PDECAY_DATA (not set)"), "{said}");
    // found by a hostile-input sweep: a count past any run, settings that cannot work
    refused(
        &["train", "--embedded", "--epochs", "18446744073709551615"],
        &["more steps than a run can count"],
    );
    refused(
        &[
            "train",
            "--embedded",
            "--epochs",
            "1",
            "--optim",
            "gmp",
            "--gmp-end-fraction",
            "0",
        ],
        &["gmp_end_fraction must be > 0"],
    );
    refused(
        &[
            "train",
            "--embedded",
            "--epochs",
            "1",
            "--schedule",
            "geometric",
            "--min-lr-ratio",
            "0",
        ],
        &["geometric schedule needs min_lr_ratio > 0"],
    );
    // a p schedule from a huge p once reached p = 0 mid-run and panicked
    let big_p = pdecay_cli_ok(&with_out(&[
        "train",
        "--embedded",
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--p-start",
        "1.8e19",
    ]));
    assert!(big_p.contains("final test accuracy"), "{big_p}");
    std::fs::remove_dir_all(&out).unwrap();
    // a run that learned nothing says so
    let all = with_out(&[
        "train",
        "--embedded",
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--lambda",
        "1e30",
    ]);
    let dead = std::process::Command::new(env!("CARGO_BIN_EXE_pdecay"))
        .args(&all)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(dead.status.success(), "{}", stderr(&dead));
    let said = stderr(&dead);
    assert!(
        said.contains("learned nothing") && said.contains("--lambda"),
        "{said}"
    );
    std::fs::remove_dir_all(&out).unwrap();

    // optimizers are named as their flags spell them, never by Rust variant ("Padam")
    let trained = pdecay_cli_ok(&with_out(&[
        "train",
        "--embedded",
        "--epochs",
        "1",
        "--hidden",
        "8",
    ]));
    assert!(trained.contains("training the mlp with padam"), "{trained}");
    assert!(
        !trained.contains("Padam") && !trained.contains("Mlp"),
        "{trained}"
    );
}

fn pdecay_cli_ok(args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    common::ok(&args)
}
