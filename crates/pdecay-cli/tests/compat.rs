//! Run folders written before the application was split into layers (pdecay 0.1, commit
//! 73f1288; see fixtures/runs-0.1/README.md) still resume, end exactly where that version ends
//! when it trains straight through, and report.

mod common;
use common::{json, metrics_without_time, ok, path, tempdir};

use std::path::Path;

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
fn run_folders_of_version_0_1_resume_bit_identically_and_report() {
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
        let resumed = metrics_without_time(&run);
        assert_eq!(straight.len(), 2, "{name}");
        assert_eq!(
            resumed, straight,
            "{name}: resumed differs from 0.1's straight run"
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
