//! The application's layers (see `src/lib.rs`): each folder of `src/` imports only from the
//! folders below it, so the arrows run one way and no two layers depend on each other.

use std::path::Path;

/// Each layer and the layers it may import from.
const LAYERS: [(&str, &[&str]); 8] = [
    (
        "cli",
        &[
            "experiments",
            "deploy",
            "train",
            "run",
            "config",
            "models",
            "data",
        ],
    ),
    ("experiments", &["train", "run", "config", "models", "data"]),
    ("deploy", &["run", "config", "models", "data"]),
    ("train", &["run", "config", "models", "data"]),
    ("run", &["config", "models", "data"]),
    ("config", &["models", "data"]),
    ("models", &["data"]),
    ("data", &[]),
];

/// Every `crate::LAYER` that `text` names, e.g. in `use crate::run::RunDir;` or
/// `crate::data::RunData`.
fn layers_named(text: &str) -> Vec<String> {
    text.match_indices("crate::")
        .map(|(i, _)| {
            text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_layer_imports_only_from_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut checked = 0;
    for (layer, allowed) in LAYERS {
        let mut files = Vec::new();
        rust_files(&src.join(layer), &mut files);
        assert!(!files.is_empty(), "src/{layer} is missing");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for named in layers_named(&text) {
                assert!(
                    named == layer || allowed.contains(&named.as_str()),
                    "{} (layer {layer}) imports from crate::{named}, which is not below it",
                    file.display()
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 50,
        "only {checked} imports seen: is the scan broken?"
    );
    // every folder of src/ is a layer of the table
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(
                LAYERS.iter().any(|(l, _)| *l == name),
                "src/{name} is not in the layer table"
            );
        }
    }
}

#[test]
fn the_scan_sees_paths_in_use_lines_and_in_code() {
    let text = "use crate::run::RunDir;\nlet x = crate::data::mnist::IMAGE_SIDE;";
    assert_eq!(layers_named(text), ["run", "data"]);
}
