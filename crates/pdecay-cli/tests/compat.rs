//! Run folders written before the application was split into layers (pdecay 0.1, commit
//! 73f1288; see fixtures/runs-0.1/README.md) still resume, end where that version ends when it
//! trains straight through, and report. "Where it ends": every count, step and sparsity exactly,
//! every loss and accuracy to a relative 1e-6. (Until pWD divided the stepped weight instead of
//! multiplying in a rounded factor, the resumed runs matched bit for bit; the last bits of a
//! loss moved with that fix.)

mod common;
use common::{json, metrics_without_time, ok, path, tempdir};

use std::path::Path;

/// `got` equals `want`, numbers with a fractional part to a relative 1e-6, all else exactly.
fn assert_close(got: &serde_json::Value, want: &serde_json::Value, at: &str) {
    use serde_json::Value;
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let keys = |o: &serde_json::Map<String, Value>| o.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(g), keys(w), "{at}");
            for (key, value) in g {
                assert_close(value, &w[key], &format!("{at}.{key}"));
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{at}");
            for (i, (g, w)) in g.iter().zip(w).enumerate() {
                assert_close(g, w, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(g), Value::Number(w)) if w.is_f64() => {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!((g - w).abs() <= 1e-6 * w.abs(), "{at}: {g} vs {w}");
        }
        _ => assert_eq!(got, want, "{at}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/runs-0.1")
        .join(name)
}

#[test]
fn run_folders_of_version_0_1_resume_to_where_0_1_ends_and_report() {
    let root = tempdir("compat");
    let text = root.join("text.txt");
    std::fs::write(
        &text,
        "the quick brown fox jumps over the lazy dog. ".repeat(100),
    )
    .unwrap();
    for (name, unit, key) in [("mlp", "epoch", "epoch"), ("gpt", "iteration", "iter")] {
        let run = root.join(name);
        copy_dir(&fixture(name), &run);
        let config = run.join("config.toml");
        let with_data = std::fs::read_to_string(&config)
            .unwrap()
            .replace("TEXT_FILE", path(&text));
        std::fs::write(&config, with_data).unwrap();
        let before = metrics_without_time(&run);
        assert_eq!(before.len(), 1, "{name}: the fixture stopped halfway");

        ok(&["train", "--resume", path(&run)]);
        let straight = metrics_without_time(&fixture(&format!("{name}-straight")));
        let mut resumed = metrics_without_time(&run);
        // a key 0.1 did not write: a resumed run keeps its recorded (empty) sparse-training
        // plan, so the epoch after the checkpoint trains dense, as 0.1 did
        for line in resumed.iter_mut().skip(1) {
            if let Some(layers) = line.as_object_mut().unwrap().remove("sparse_layers") {
                assert_eq!(layers, serde_json::json!([]), "{name}");
            }
        }
        assert_eq!(straight.len(), 2, "{name}");
        assert_eq!(
            resumed[0], before[0],
            "{name}: the line before the checkpoint is kept"
        );
        assert_close(
            &serde_json::Value::from(resumed.clone()),
            &serde_json::Value::from(straight.clone()),
            name,
        );
        assert_eq!(resumed[1][key], straight[1][key]);
        let summary = json(&run.join("summary.json"));
        assert!(summary["sparsity"].as_f64().unwrap() > 0.0, "{name}");

        let said = ok(&["report", path(&run)]);
        assert!(said.contains("8 plot files"), "{name}: {said}");
        let report = std::fs::read_to_string(run.join("report.md")).unwrap();
        assert!(report.contains("| run | optimizer |"), "{report}");
        assert!(report.contains(&format!("best ({unit})")), "{report}");
    }
    // a GPT's checkpoint now counts iterations only
    let position = json(&root.join("gpt").join("checkpoint.json"));
    assert_eq!(position["step"], 30);
    assert!(position.get("epoch").is_none(), "{position}");
    std::fs::remove_dir_all(&root).unwrap();
}
