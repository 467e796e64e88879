//! pdecay-burn's two halves stay apart: the optimizers (`src/optim/`) and the model ops
//! (`src/ops/`) share only `src/flex.rs`, the flex CPU backend's helpers.

use std::path::Path;

#[test]
fn optimizers_and_ops_do_not_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (half, other) in [("optim", "ops"), ("ops", "optim")] {
        let mut seen = 0;
        for entry in std::fs::read_dir(src.join(half)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains(&format!("crate::{other}")),
                "{} imports from crate::{other}",
                path.display()
            );
            seen += 1;
        }
        assert!(seen >= 3, "src/{half} has {seen} files");
    }
    let flex = std::fs::read_to_string(src.join("flex.rs")).unwrap();
    assert!(!flex.contains("crate::optim") && !flex.contains("crate::ops"));
}
