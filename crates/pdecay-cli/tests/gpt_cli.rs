//! End-to-end tests of `pdecay train --model gpt` and `pdecay sample` on a small text the test
//! writes (a tiny model, a few dozen iterations: seconds).

mod common;
use common::{assert_real_png, assert_real_svg, fails, json, ok, path, read_csv, tempdir};

use std::path::Path;

/// A small model and run: 1 layer, width 16, 30 iterations, evaluations at 15 and 30.
const TINY: [&str; 20] = [
    "--model",
    "gpt",
    "--layers",
    "1",
    "--heads",
    "2",
    "--width",
    "16",
    "--block-size",
    "16",
    "--batch-size",
    "8",
    "--iters",
    "30",
    "--eval-interval",
    "15",
    "--eval-batches",
    "2",
    "--lr",
    "3e-3",
];

fn text() -> String {
    "the quick brown fox jumps over the lazy dog. ".repeat(100)
}

#[test]
fn a_gpt_run_learns_resumes_bit_identically_and_samples_deterministically() {
    let root = tempdir("gpt");
    let file = root.join("text.txt");
    std::fs::write(&file, text()).unwrap();
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec!["train", "--data", path(&file), "--out", path(out)];
        args.extend_from_slice(&TINY);
        args.extend_from_slice(extra);
        ok(&args)
    };
    // sparse training on: every linear layer on its sparse product from the first step
    let padam_on = [
        "--optim",
        "padam",
        "--lambda",
        "0.01",
        "--sparse-training",
        "on",
    ];
    let straight = root.join("straight");
    train(&straight, &padam_on);

    // one object per evaluation, with the keys others script against
    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).unwrap();
    let evals: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(evals.len(), 2);
    assert_eq!(
        (evals[0]["iter"].as_u64(), evals[1]["iter"].as_u64()),
        (Some(15), Some(30))
    );
    for key in [
        "train_loss",
        "val_loss",
        "val_accuracy",
        "sparsity",
        "sparsity_1e10",
        "layers",
        "step_seconds",
    ] {
        assert!(!evals[1][key].is_null(), "{key} missing");
    }
    assert!(evals[1]["step_seconds"].as_f64().unwrap() > 0.0);
    let summary = json(&straight.join("summary.json"));
    let sparse_layers: Vec<(&str, u64)> = summary["sparse_layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["name"].as_str().unwrap(),
                l["since_step"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        sparse_layers,
        [
            ("blocks.0.attn.qkv", 0),
            ("blocks.0.attn.proj", 0),
            ("blocks.0.fc", 0),
            ("blocks.0.fc_proj", 0)
        ]
    );
    assert_eq!(evals[0]["sparse_layers"], summary["sparse_layers"]);
    // the dense products give the same run up to summation order and the clipping norm, which
    // on the dense products also counts the few dead weights' gradients of 30 steps
    let off = root.join("off");
    train(
        &off,
        &[
            "--optim",
            "padam",
            "--lambda",
            "0.01",
            "--sparse-training",
            "off",
        ],
    );
    let off_summary = json(&off.join("summary.json"));
    assert_eq!(off_summary["sparse_layers"], serde_json::json!([]));
    for key in ["final_val_loss", "best_val_loss"] {
        let (a, b) = (
            summary[key].as_f64().unwrap(),
            off_summary[key].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 2e-3, "{key}: on {a} off {b}");
    }
    let vocab: serde_json::Value = json(&straight.join("vocab.json"));
    let vocab_size = vocab["chars"].as_array().unwrap().len();
    assert_eq!(vocab_size, 28); // 26 letters, space and the period
    // it learned: from ln(28) = 3.33 at random to clearly below
    let final_loss = summary["final_val_loss"].as_f64().unwrap();
    assert!(final_loss < 3.0, "val loss {final_loss}");
    assert!(summary["best_val_loss"].as_f64().unwrap() <= final_loss);

    // stopped after the first evaluation and resumed: the same run
    let resumed = root.join("resumed");
    train(&resumed, &[&padam_on[..], &["--stop-after", "15"]].concat());
    assert!(!resumed.join("summary.json").exists());
    ok(&["train", "--resume", path(&resumed)]);
    let again = json(&resumed.join("summary.json"));
    for key in [
        "final_val_loss",
        "best_val_loss",
        "sparsity",
        "nonzero_params",
        "sparse_layers",
    ] {
        assert_eq!(again[key], summary[key], "{key}");
    }

    // killed before its first checkpoint, and before it wrote vocab.json: the resume writes it
    let early = root.join("early");
    fails(
        &[
            &[
                "train",
                "--data",
                path(&file),
                "--out",
                path(&early),
                "--stop-after",
                "0",
            ][..],
            &TINY,
        ]
        .concat(),
        &["no iteration was trained"],
    );
    std::fs::remove_file(early.join("vocab.json")).unwrap();
    ok(&["train", "--resume", path(&early)]);
    assert_eq!(json(&early.join("vocab.json")), vocab);

    // sampling: deterministic for a seed, and starts with the prompt
    let sample = |seed: &str| {
        ok(&[
            "sample",
            path(&straight),
            "--prompt",
            "the ",
            "--tokens",
            "40",
            "--seed",
            seed,
        ])
    };
    let a = sample("7");
    assert!(a.starts_with("the "), "{a}");
    assert_eq!(a.trim_end().chars().count(), 4 + 40);
    assert_eq!(a, sample("7"));
    fails(
        &["sample", path(&straight), "--prompt", "THE"],
        &["'T'", "vocabulary"],
    );
    // an edited vocabulary once blamed `--model or --hidden`; now its hash names it
    let vocab_file = straight.join("vocab.json");
    let text = std::fs::read_to_string(&vocab_file).unwrap();
    std::fs::write(&vocab_file, text.replacen("\"a\"", "\"A\"", 1)).unwrap();
    fails(
        &["sample", path(&straight)],
        &["vocab.json was edited or damaged", "SHA-256"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_gpt_sweep_resumes_and_is_reported_by_validation_loss() {
    let root = tempdir("gpt-sweep");
    let file = root.join("text.txt");
    std::fs::write(&file, text()).unwrap();
    let grid = root.join("gpt.toml");
    std::fs::write(
        &grid,
        format!(
            r#"
model = "gpt"
data = "{}"
lr = 3e-3
[gpt]
layers = 1
heads = 2
width = 16
block_size = 16
batch_size = 8
iters = 20
eval_interval = 10
eval_batches = 2
warmup_iters = 2
[[grid]]
optim = "adamw"
lambda = 0.1
[[grid]]
optim = "padam"
lambda = [1e-3, 1.0]
"#,
            path(&file)
        ),
    )
    .unwrap();
    let out = root.join("out");
    let sweep = || ok(&["sweep", "--config", path(&grid), "--out", path(&out)]);
    let said = sweep();
    assert!(said.contains("val loss"), "{said}");
    assert!(said.contains("iter    20/20"), "{said}");

    // one CSV row per run with the GPT's columns
    let (header, rows) = read_csv(&out.join("sweep.csv"));
    assert_eq!(rows.len(), 3);
    for column in [
        "final_val_loss",
        "best_iter",
        "sparsity_1e10",
        "seconds_per_iter",
    ] {
        assert!(header.iter().any(|h| h == column), "{column} missing");
    }
    assert!(!header.iter().any(|h| h == "final_test_accuracy"));
    let cell = |row: &Vec<String>, column: &str| -> f64 {
        let i = header.iter().position(|h| h == column).unwrap();
        row[i].parse().unwrap()
    };
    for row in &rows {
        assert_eq!(row[1], "finished");
        let loss = cell(row, "final_val_loss");
        assert!(loss.is_finite() && loss < 28f64.ln(), "{loss}");
    }
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        names,
        [
            "optim=adamw_lambda=0.1",
            "optim=padam_lambda=0.001",
            "optim=padam_lambda=1"
        ]
    );
    // a strong lambda zeroes weights that a weak one leaves
    let sparsity = |run: usize| cell(&rows[run], "sparsity");
    assert!(sparsity(2) > sparsity(1) + 0.1, "{rows:?}");

    // a second sweep trains nothing
    let again = sweep();
    assert_eq!(
        again.matches("finished before, skipped").count(),
        3,
        "{again}"
    );
    assert!(!again.contains("iter "), "{again}");

    // the report scores by validation loss and draws every plot
    let said = ok(&["report", path(&out)]);
    // no phase diagram: the grid has one p
    assert!(said.contains("8 plot files"), "{said}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for needle in [
        "validation loss",
        "iterations of batch 8",
        "best (iteration)",
        "ms/iter",
        "0.05 of AdamW's validation loss",
    ] {
        assert!(report.contains(needle), "{needle:?} missing from {report}");
    }
    for row in &rows {
        assert!(report.contains(&row[0]), "{} missing", row[0]);
    }
    for stem in ["accuracy_vs_sparsity", "curves", "weights", "layers"] {
        assert_real_png(&out.join("plots").join(format!("{stem}.png")));
        assert_real_svg(&out.join("plots").join(format!("{stem}.svg")));
    }

    // GPT and image runs in one folder are refused, and a GPT sweep needs a text file
    let mixed = root.join("mixed");
    ok(&[
        "train",
        "--data",
        "embedded",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--out",
        path(&mixed.join("mlp")),
    ]);
    let gpt_run = &rows[0][0];
    std::fs::rename(out.join(gpt_run), mixed.join(gpt_run)).unwrap();
    fails(&["report", path(&mixed)], &["GPT runs", "separate folders"]);
    fails(
        &["sweep", "--config", path(&grid), "--data", path(&root)],
        &["not a file", "text file"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_gpt_inputs_are_clear_errors() {
    let root = tempdir("gpt-bad");
    let short = root.join("short.txt");
    std::fs::write(&short, "too short").unwrap();
    let latin1 = root.join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 ".repeat(100)).unwrap();
    let out = root.join("run");
    for (data, needles) in [
        (&short, &["too few", "block_size"][..]),
        (&latin1, &["not UTF-8"][..]),
    ] {
        let mut args = vec!["train", "--data", path(data), "--out", path(&out)];
        args.extend_from_slice(&TINY);
        fails(&args, needles);
    }
    fails(
        &["train", "--model", "gpt", "--iters", "5"],
        &["--data FILE"],
    );
    fails(
        &["train", "--model", "mlp", "--iters", "5"],
        &["--model gpt"],
    );
    let file = root.join("ok.txt");
    std::fs::write(&file, text()).unwrap();
    fails(
        &[
            "train",
            "--model",
            "gpt",
            "--data",
            path(&file),
            "--width",
            "10",
            "--heads",
            "3",
        ],
        &["multiple of gpt.heads"],
    );
    // a model no machine holds is refused with its estimate, where allocating it aborted
    fails(
        &[
            "train",
            "--model",
            "gpt",
            "--data",
            path(&file),
            "--width",
            "100000",
            "--layers",
            "100",
            "--heads",
            "1",
            "--out",
            path(&out),
        ],
        &["GiB to train", "--width"],
    );
    assert!(!out.exists(), "a refused run leaves no folder");
    // a GPT sweep over the classifiers' epochs once trained the same run twice
    let grid = root.join("epochs.toml");
    std::fs::write(
        &grid,
        format!(
            "model = \"gpt\"\ndata = {:?}\nepochs = [1, 2]\n",
            path(&file)
        ),
    )
    .unwrap();
    fails(
        &[
            "sweep",
            "--config",
            path(&grid),
            "--out",
            path(&root.join("sweep")),
        ],
        &["`epochs`", "gpt.iters"],
    );
    fails(&["sample", path(&root)], &["not a run folder"]);
    // a GPU that this build cannot use fails first, before any data is read
    for command in ["train", "sweep", "demo"] {
        let mut args = vec![command, "--device", "cuda:0"];
        if command == "sweep" {
            args.extend(["--preset", "demo"]);
        }
        fails(
            &args,
            &["built without CUDA", "--features cuda", "--device cpu"],
        );
    }
    fails(&["demo", "--device", "gpu"], &["unknown device `gpu`"]);
    std::fs::remove_dir_all(&root).unwrap();
}

/// The number after `key ` in a line of `text`.
fn number_after(text: &str, key: &str) -> f64 {
    let at = text
        .find(key)
        .unwrap_or_else(|| panic!("{key:?} not in {text}"))
        + key.len();
    text[at..]
        .trim_start()
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_gpt_is_exported_compacted_evaluated_and_sampled_from_its_files() {
    let root = tempdir("gpt-deploy");
    let text_file = root.join("text.txt");
    std::fs::write(&text_file, text()).unwrap();
    let run = root.join("run");
    let mut args = vec!["train", "--data", path(&text_file), "--out", path(&run)];
    args.extend_from_slice(&TINY);
    args.extend_from_slice(&["--optim", "padam", "--lambda", "0.05", "--bias"]);
    ok(&args);
    let summary = json(&run.join("summary.json"));

    let (dense, sparse, compact) = (
        root.join("dense.safetensors"),
        root.join("sparse.safetensors"),
        root.join("compact.safetensors"),
    );
    let out = ok(&[
        "export",
        path(&run),
        "--format",
        "dense",
        "--out",
        path(&dense),
    ]);
    assert!(out.contains("nanoGPT names"), "{out}");
    ok(&["export", path(&run), "--out", path(&sparse)]);
    let out = ok(&["compact", path(&run), "--out", path(&compact)]);
    assert!(out.contains("heads per block"), "{out}");
    let difference = number_after(&out, "max |logit difference| over 48 decoded tokens:");
    assert!(difference < 1e-5, "{out}");
    // the exported file keeps nanoGPT's names and the sparsity the run reported
    let bytes = std::fs::read(&dense).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8_lossy(&bytes[8..8 + header_len]).into_owned();
    for name in [
        "transformer.wte.weight",
        "transformer.h.0.attn.c_attn.weight",
        "transformer.h.0.attn.c_attn.bias",
        "transformer.h.0.mlp.c_proj.weight",
        "transformer.ln_f.bias",
        "gpt_config",
    ] {
        assert!(header.contains(name), "{name} missing from {header}");
    }
    assert!(
        !header.contains("\"lm_head.weight\":{"),
        "the tied output layer is left out"
    );

    // every file gives the same validation loss on the training text's last 10%
    let losses: Vec<f64> = [&dense, &sparse, &compact]
        .iter()
        .map(|f| {
            let out = ok(&["eval", path(f), "--data", path(&text_file)]);
            number_after(&out, "validation loss")
        })
        .collect();
    for loss in &losses {
        assert!((loss - losses[0]).abs() < 1e-4, "{losses:?}");
    }
    // the run's own estimate (seeded windows, chars with less context) is near it
    let run_loss = summary["final_val_loss"].as_f64().unwrap();
    assert!(
        (losses[0] - run_loss).abs() < 0.3,
        "{losses:?} vs {run_loss}"
    );
    assert!(losses[0] < 3.0);

    // the same seed gives the same text from the run, each file, each path
    let sample = |model: &Path, extra: &[&str]| {
        let mut args = vec![
            "sample",
            path(model),
            "--prompt",
            "the ",
            "--tokens",
            "50",
            "--seed",
            "5",
        ];
        args.extend_from_slice(extra);
        ok(&args)
    };
    let reference = sample(&run, &[]);
    assert_eq!(reference.trim_end().chars().count(), 54);
    for (model, extra) in [
        (&dense, &[][..]),
        (&sparse, &["--sparse", "on"][..]),
        (&sparse, &["--no-kv-cache"][..]),
        (&compact, &["--sparse", "off"][..]),
        (&run, &["--sparse", "on", "--no-kv-cache"][..]),
    ] {
        assert_eq!(sample(model, extra), reference, "{model:?} {extra:?}");
    }

    let out = ok(&["bench-infer", path(&sparse), "--repeats", "2"]);
    for needle in [
        "dense",
        "sparse",
        "compact",
        "KV cache",
        "burn, whole window",
    ] {
        assert!(out.contains(needle), "{needle} missing from {out}");
    }

    // what does not fit is said
    fails(
        &["eval", path(&dense)],
        &["is a GPT file", "--data input.txt"],
    );
    fails(
        &["eval", path(&dense), "--embedded"],
        &["GPT file", "--data input.txt"],
    );
    fails(
        &["eval", path(&dense), "--data", path(&root)],
        &["is a folder"],
    );
    let other = root.join("other.txt");
    std::fs::write(&other, "ABC DEF GHI. ".repeat(100)).unwrap();
    fails(
        &["eval", path(&dense), "--data", path(&other)],
        &["vocabulary", "trained on"],
    );
    fails(
        &[
            "export",
            path(&run),
            "--out",
            path(&root.join("x.safetensors")),
            "--data",
            path(&root),
        ],
        &["GPT run", "--data"],
    );
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn an_image_model_file_given_to_sample_is_named() {
    let root = tempdir("gpt-image-file");
    let run = root.join("mlp");
    ok(&[
        "train",
        "--data",
        "embedded",
        "--hidden",
        "8",
        "--epochs",
        "1",
        "--out",
        path(&run),
    ]);
    let file = root.join("mlp.safetensors");
    ok(&["export", path(&run), "--out", path(&file)]);
    fails(
        &["sample", path(&file)],
        &["image classifier file", "pdecay eval"],
    );
    fails(&["sample", path(&run)], &["not a GPT run"]);
    std::fs::remove_dir_all(&root).unwrap();
}
