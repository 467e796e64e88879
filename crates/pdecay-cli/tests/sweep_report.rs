//! End-to-end tests of `pdecay sweep` and `pdecay report` through the real binary, on the
//! embedded subset with a small MLP (each run takes well under a second).

mod common;
use common::{assert_real_png, assert_real_svg, json, ok, path, pdecay, read_csv, tempdir};

const GRID: &str = r#"
data = "embedded"
hidden = [32]
epochs = 2
lr = 3e-3
[[grid]]
optim = "padam"
p = [0.5, 1.0]
lambda = [1e-2, 1e-1]
"#;

const RUNS: [&str; 4] = [
    "optim=padam_p=0.5_lambda=0.01",
    "optim=padam_p=0.5_lambda=0.1",
    "optim=padam_p=1_lambda=0.01",
    "optim=padam_p=1_lambda=0.1",
];

#[test]
fn a_sweep_trains_each_run_once_resumes_and_is_reported_with_every_plot() {
    let root = tempdir("sweep");
    let grid = root.join("grid.toml");
    std::fs::write(&grid, GRID).unwrap();
    let out = root.join("out");
    let first = ok(&["sweep", "--config", path(&grid), "--out", path(&out)]);
    assert_eq!(first.matches("(training)").count(), 4, "{first}");

    // four run folders, a four-row CSV with the swept keys and the summary
    for run in RUNS {
        assert!(out.join(run).join("summary.json").exists(), "{run}");
    }
    let (header, rows) = read_csv(&out.join("sweep.csv"));
    assert_eq!(header[..5], ["run", "status", "optim", "p", "lambda"]);
    for column in [
        "final_test_accuracy",
        "sparsity",
        "nonzero_params",
        "samples_per_second",
    ] {
        assert!(header.iter().any(|h| h == column), "{column} missing");
    }
    assert_eq!(rows.len(), 4);
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    for (row, run) in rows.iter().zip(RUNS) {
        assert_eq!(row[0], run);
        assert_eq!(row[col("status")], "finished");
        let summary = json(&out.join(run).join("summary.json"));
        let csv_accuracy: f64 = row[col("final_test_accuracy")].parse().unwrap();
        assert_eq!(
            csv_accuracy,
            summary["final_test_accuracy"].as_f64().unwrap()
        );
        let config: toml::Table =
            toml::from_str(&std::fs::read_to_string(out.join(run).join("config.toml")).unwrap())
                .unwrap();
        for key in ["p", "lambda"] {
            let in_csv: f64 = row[col(key)].parse().unwrap();
            assert_eq!(Some(in_csv), config[key].as_float(), "{run}: {key}");
        }
        assert!(csv_accuracy > 0.5, "{run} did not learn: {csv_accuracy}");
    }
    // larger lambda at the same p: sparser
    let sparsity = |i: usize| rows[i][col("sparsity")].parse::<f64>().unwrap();
    assert!(sparsity(1) > sparsity(0) && sparsity(3) > sparsity(2));

    // re-running trains nothing and changes no file
    let stamp = |run: &str| {
        std::fs::metadata(out.join(run).join("metrics.jsonl"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let before: Vec<_> = RUNS.iter().map(|r| stamp(r)).collect();
    let again = ok(&["sweep", "--config", path(&grid), "--out", path(&out)]);
    assert_eq!(
        again.matches("finished before, skipped").count(),
        4,
        "{again}"
    );
    assert!(!again.contains("(training)"));
    assert_eq!(RUNS.iter().map(|r| stamp(r)).collect::<Vec<_>>(), before);

    // an interrupted run is resumed and ends exactly as the uninterrupted one
    let resumed = root.join("resumed");
    let run = RUNS[1];
    let config = out.join(run).join("config.toml");
    ok(&[
        "train",
        "--config",
        path(&config),
        "--stop-after",
        "1",
        "--out",
        path(&resumed.join(run)),
    ]);
    let third = ok(&["sweep", "--config", path(&grid), "--out", path(&resumed)]);
    assert_eq!(third.matches("(resuming)").count(), 1, "{third}");
    assert_eq!(third.matches("(training)").count(), 3, "{third}");
    let (a, b) = (
        json(&out.join(run).join("summary.json")),
        json(&resumed.join(run).join("summary.json")),
    );
    for key in [
        "final_test_accuracy",
        "final_test_loss",
        "sparsity",
        "nonzero_params",
    ] {
        assert_eq!(a[key], b[key], "{key}");
    }

    // the report lists every run and draws every plot
    let said = ok(&["report", path(&out)]);
    assert!(said.contains("12 plot files"), "{said}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    for run in RUNS {
        assert!(report.contains(run), "{run} missing from the report");
    }
    // one lr for all runs: said once in the header, not in every run's settings
    assert!(report.contains("lr 3e-3 ("), "{report}");
    let rows: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("| optim="))
        .collect();
    assert_eq!(rows.len(), 4, "{report}");
    assert!(rows.iter().all(|r| !r.contains("lr 3e-3")), "{report}");
    for stem in [
        "accuracy_vs_sparsity",
        "phase_accuracy",
        "phase_sparsity",
        "curves",
        "weights",
        "layers",
    ] {
        let png = out.join("plots").join(format!("{stem}.png"));
        assert_real_png(&png);
        assert_real_svg(&out.join("plots").join(format!("{stem}.svg")));
        assert!(
            report.contains(&format!("plots/{stem}.png")),
            "{stem} not linked"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn a_diverging_run_is_recorded_and_the_sweep_goes_on() {
    let root = tempdir("sweep-diverge");
    let grid = root.join("diverge.toml");
    std::fs::write(
        &grid,
        "data = \"embedded\"\nhidden = [16]\nepochs = 1\noptim = \"adam\"\nlr = [1e30, 1e-3]\n",
    )
    .unwrap();
    let out = root.join("out");
    let said = ok(&["sweep", "--config", path(&grid), "--out", path(&out)]);
    assert!(said.contains("diverged at epoch 1"), "{said}");
    let (header, rows) = read_csv(&out.join("sweep.csv"));
    let status = header.iter().position(|h| h == "status").unwrap();
    let accuracy = header
        .iter()
        .position(|h| h == "final_test_accuracy")
        .unwrap();
    assert_eq!(rows[0][status], "diverged");
    assert_eq!(rows[0][accuracy], "");
    assert_eq!(rows[1][status], "finished");
    let diverged = json(&out.join("lr=1e30").join("diverged.json"));
    assert_eq!(diverged["epoch"], 1);
    assert!(diverged["reason"].as_str().unwrap().contains("NaN"));
    // a diverged run is not retried
    let again = ok(&["sweep", "--config", path(&grid), "--out", path(&out)]);
    assert!(again.contains("diverged before, skipped"), "{again}");
    ok(&["report", path(&out)]);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("diverged at epoch 1"), "{report}");
    // the runs differ only in lr: each run's settings name it, so the two rows differ
    assert!(
        report.contains("the peak lr of each run's settings"),
        "{report}"
    );
    let rows: Vec<&str> = report.lines().filter(|l| l.starts_with("| lr=")).collect();
    assert_eq!(rows.len(), 2, "{report}");
    assert!(rows[0].contains("| lr 1e30 |"), "{report}");
    assert!(rows[1].contains("lr 1e-3"), "{report}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_sweep_files_and_paths_give_clear_errors() {
    let root = tempdir("sweep-bad");
    let cases: [(&str, &str, &[&str]); 4] = [
        (
            "unknown.toml",
            "[[grid]]\nlamda = [0.1, 0.2]\n",
            &["lamda", "unknown.toml", "grid 1"],
        ),
        (
            "empty.toml",
            "p = []\n",
            &["`p`", "empty list", "empty.toml"],
        ),
        ("type.toml", "epochs = \"many\"\n", &["epochs", "type.toml"]),
        ("range.toml", "p = [0.5, -1.0]\n", &["p", "range.toml"]),
    ];
    for (name, text, needles) in cases {
        let file = root.join(name);
        std::fs::write(&file, text).unwrap();
        let out = pdecay(&[
            "sweep",
            "--config",
            path(&file),
            "--out",
            path(&root.join("o")),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} should fail");
        for needle in needles {
            assert!(
                err.contains(needle),
                "{name}: expected {needle:?} in: {err}"
            );
        }
        assert!(!root.join("o").exists(), "{name}: nothing may be written");
    }
    let missing = pdecay(&["sweep", "--config", "/nonexistent/sweep.toml"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read sweep file"));
    let preset = pdecay(&["sweep", "--preset", "huge"]);
    assert!(String::from_utf8_lossy(&preset.stderr).contains("fashion-mlp"));
    let report = pdecay(&["report", path(&root)]);
    assert!(!report.status.success());
    assert!(String::from_utf8_lossy(&report.stderr).contains("holds no run"));
    std::fs::remove_dir_all(&root).unwrap();
}
