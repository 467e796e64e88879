//! Helpers shared by the end-to-end tests: run the real binary, make scratch folders.
// Each test file uses a subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `pdecay` binary with `args`, without `$PDECAY_DATA` and without backtraces.
pub fn pdecay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdecay"))
        .args(args)
        .env_remove("PDECAY_DATA")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the pdecay binary runs")
}

/// Runs `args`, which must succeed; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = pdecay(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `args`, which must fail with a message containing every one of `needles`; returns it.
pub fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = pdecay(args);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} should fail");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    }
    err
}

/// An empty scratch folder unique to this test process.
pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdecay-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A JSON file's contents.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A CSV file's header and rows.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut reader = csv::Reader::from_path(path).unwrap();
    let header = reader.headers().unwrap().iter().map(String::from).collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// A PNG that decodes, has a real size and more than a handful of colours (not blank).
pub fn assert_real_png(path: &Path) {
    let image = image::open(path)
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()))
        .to_rgb8();
    assert!(
        image.width() >= 400 && image.height() >= 300,
        "{}",
        path.display()
    );
    let mut colours: Vec<[u8; 3]> = image.pixels().map(|p| p.0).collect();
    colours.sort_unstable();
    colours.dedup();
    assert!(colours.len() > 8, "{} looks blank", path.display());
    let non_white = image.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    assert!(non_white > 2_000, "{} is almost empty", path.display());
}

/// An SVG document with text and many drawn elements.
pub fn assert_real_svg(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    let texts = text.matches("<text").count();
    assert!(texts >= 5, "{} has {texts} texts", path.display());
    let shapes = ["<line", "<polyline", "<rect", "<circle", "<path"]
        .iter()
        .map(|tag| text.matches(tag).count())
        .sum::<usize>();
    // the smallest figure, a 2 x 2 heatmap, has 4 cells and its axes
    assert!(shapes >= 8, "{} draws only {shapes} shapes", path.display());
}

/// The lines of `DIR/metrics.jsonl` without their wall-clock `seconds`.
pub fn metrics_without_time(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("seconds");
            v.as_object_mut().unwrap().remove("step_seconds");
            v
        })
        .collect()
}

/// Every weight of the run's last checkpoint, in module order.
pub fn checkpoint_weights(dir: &Path) -> Vec<Vec<f32>> {
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::tensor::{Device, Tensor};
    use pdecay_cli::{config::TrainConfig, models::Classifier, run::RunDir};

    struct Collect(Vec<Vec<f32>>);
    impl ModuleVisitor for Collect {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .push(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }
    let config: TrainConfig =
        toml::from_str(&std::fs::read_to_string(dir.join("config.toml")).unwrap()).unwrap();
    let device = Device::default();
    let model = Classifier::new(config.model, config.image_shape, config.widths(), &device);
    let (model, _, _) = RunDir::new(dir)
        .load_checkpoint(model, config.optimizer(1).unwrap())
        .unwrap()
        .unwrap();
    let mut collect = Collect(Vec::new());
    model.visit(&mut collect);
    assert!(!collect.0.is_empty());
    collect.0
}

/// `text` without the values of its timing keys (`"seconds": 1.25` becomes `"seconds":`).
pub fn without_times(text: &str) -> String {
    let mut out = text.to_string();
    for key in [
        "\"seconds\":",
        "\"step_seconds\":",
        "\"wall_seconds\":",
        "\"samples_per_second\":",
    ] {
        let mut kept = String::new();
        let mut rest = out.as_str();
        while let Some(at) = rest.find(key) {
            kept.push_str(&rest[..at + key.len()]);
            rest = &rest[at + key.len()..];
            let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
            rest = &rest[end..];
        }
        kept.push_str(rest);
        out = kept;
    }
    out
}
