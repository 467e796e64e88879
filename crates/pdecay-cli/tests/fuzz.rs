//! Damaged real files against every reader pdecay has: IDX (gzip'd and raw), model files
//! (dense, CSR and compact safetensors, image classifiers and GPTs), CSR arrays, config and sweep TOML. A reader returns
//! a value or an error, never panics, and what it accepts is consistent (an IDX array holds
//! what its header announces; a model file runs).
//!
//! Bounded: `PDECAY_FUZZ_CASES` damaged files per reader and damage kind (default 1000, about
//! five seconds in all on two cores; set it higher for a longer search).

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use pdecay_cli::config::TrainConfig;
use pdecay_cli::data::idx::read_idx;
use pdecay_cli::data::mnist;
use pdecay_cli::data::text::Vocabulary;
use pdecay_cli::deploy::compact::compact;
use pdecay_cli::deploy::gpt_compact::compact_gpt;
use pdecay_cli::deploy::gpt_file::GptFile;
use pdecay_cli::deploy::gpt_infer::{Decoder, GptEngine, SparseMode};
use pdecay_cli::deploy::infer::Engine;
use pdecay_cli::deploy::model_file::{Format, ModelFile, Stored};
use pdecay_cli::experiments::sweep;
use pdecay_cli::models::{Classifier, Gpt, ModelKind};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn cases() -> u32 {
    std::env::var("PDECAY_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

fn config() -> Config {
    Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A fresh runner per reader and damage kind: one runner counts its cases over all its runs.
fn runner() -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new(config())
}

fn manifest(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A damage: `(position, byte)` pairs written over the file, then a cut to `length` (a share
/// of the file; 1.0 keeps it whole), then bytes appended.
#[derive(Debug, Clone)]
struct Damage {
    writes: Vec<(f64, u8)>,
    keep: f64,
    appended: Vec<u8>,
}

impl Damage {
    fn apply(&self, bytes: &[u8], within: usize) -> Vec<u8> {
        let mut damaged = bytes.to_vec();
        let span = within.min(damaged.len()).max(1);
        for &(at, value) in &self.writes {
            let i = ((at * span as f64) as usize).min(damaged.len().saturating_sub(1));
            if let Some(b) = damaged.get_mut(i) {
                *b = value;
            }
        }
        damaged.truncate((self.keep * damaged.len() as f64).ceil() as usize);
        damaged.extend_from_slice(&self.appended);
        damaged
    }
}

/// Writes over the first `within` bytes (`within` = everything, or a header), cuts one time
/// in four, appends one time in eight.
fn damage() -> impl Strategy<Value = Damage> {
    (
        prop::collection::vec((0.0..1.0f64, any::<u8>()), 0..6),
        prop_oneof![3 => Just(1.0), 1 => 0.0..1.0f64],
        prop_oneof![7 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..64)],
    )
        .prop_map(|(writes, keep, appended)| Damage {
            writes,
            keep,
            appended,
        })
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdecay-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An accepted IDX array holds exactly what its dimensions announce.
fn check_idx(path: &Path, rank: u8) {
    if let Ok(array) = read_idx(path, rank) {
        assert_eq!(array.dims.len(), rank as usize);
        assert_eq!(array.data.len(), array.dims.iter().product::<usize>());
    }
}

#[test]
fn damaged_idx_files_are_errors_or_exactly_what_they_announce() {
    let dir = scratch("idx");
    let real = [
        ("t10k-labels-idx1-ubyte.gz", 1u8),
        ("t10k-images-idx3-ubyte.gz", 3),
    ];
    for (name, rank) in real {
        let gz = std::fs::read(manifest(&format!("data/fashion-mnist-subset/{name}"))).unwrap();
        let raw = {
            use std::io::Read;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let header = 4 + 4 * rank as usize;
        // the compressed stream anywhere; the raw file's header (dims) and anywhere
        for (kind, bytes, within, suffix) in [
            ("gz", &gz, gz.len(), ".gz"),
            ("raw header", &raw, header, ""),
            ("raw", &raw, raw.len(), ""),
        ] {
            let path = dir.join(format!("{kind}-{name}{suffix}").replace(' ', "-"));
            runner()
                .run(&damage(), |d| {
                    std::fs::write(&path, d.apply(bytes, within)).unwrap();
                    check_idx(&path, rank);
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{name} ({kind}): {e}"));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A small MLP's, CNN's and ResNet-20's model files in every format, as export and compact write them.
fn model_files() -> Vec<(String, Vec<u8>)> {
    let device = Device::flex();
    let mut files = Vec::new();
    for (kind, widths) in [
        (ModelKind::Mlp, vec![16]),
        (ModelKind::Cnn, vec![2, 3, 8]),
        (ModelKind::Resnet20, vec![2]),
    ] {
        let config = TrainConfig {
            model: kind,
            resnet_width: kind.is_resnet().then_some(widths[0]),
            hidden: if kind == ModelKind::Mlp {
                widths.clone()
            } else {
                vec![]
            },
            cnn_widths: if kind == ModelKind::Cnn {
                widths.clone()
            } else {
                vec![4, 8, 16]
            },
            ..TrainConfig::default()
        };
        let model = Classifier::new(
            kind,
            pdecay_cli::data::ImageShape::FASHION_MNIST,
            &widths,
            &device,
        );
        // a threshold that zeroes about half the weights, so CSR and compaction have work
        let dense = ModelFile::from_model(&model, &config, Format::Dense, 0.02, vec![(0.3, 0.35)]);
        for (format, file) in [
            ("dense", dense.clone()),
            ("sparse", dense.with_format(Format::Sparse)),
        ] {
            files.push((format!("{kind:?} {format}"), file.to_bytes().unwrap()));
        }
        if let Ok((compacted, _)) = compact(&dense) {
            files.push((format!("{kind:?} compact"), compacted.to_bytes().unwrap()));
        }
    }
    assert!(files.len() >= 4);
    files
}

#[test]
fn damaged_model_files_are_errors_or_models_that_run() {
    let images = mnist::embedded();
    let pixels = images.test.image_size();
    let batch = images.test.normalized(&[0, 1], &[(0.3, 0.35)]);
    for (name, bytes) in model_files() {
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (kind, within) in [("header", header), ("anywhere", bytes.len())] {
            runner()
                .run(&damage(), |d| {
                    if let Ok(file) = ModelFile::from_bytes(&d.apply(&bytes, within))
                        && let Ok(engine) = Engine::new(&file)
                    {
                        assert_eq!(engine.logits(&batch, 2).len(), 2 * 10);
                        assert_eq!(batch.len(), 2 * pixels);
                    }
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{name} ({kind}): {e}"));
        }
    }
}

/// A small GPT with about half its weights zero, dense, sparse and compacted.
fn gpt_files() -> Vec<(String, Vec<u8>)> {
    let mut config = TrainConfig {
        model: ModelKind::Gpt,
        ..TrainConfig::default()
    };
    (config.gpt.layers, config.gpt.heads, config.gpt.width) = (1, 2, 8);
    config.gpt.block_size = 4;
    config.gpt.bias = true;
    let vocab = Vocabulary::from_text("abcde");
    let model = Gpt::new(&config.gpt.model(vocab.len()), &Device::flex());
    let mut dense = GptFile::from_model(&model, &config, &vocab, Format::Dense, 0.02).unwrap();
    for t in dense.tensors.iter_mut().filter(|t| t.shape.len() == 2) {
        let values = t
            .dense()
            .iter()
            .map(|&v| if v.abs() < 0.02 { 0.0 } else { v })
            .collect();
        t.stored = Stored::Dense(values);
    }
    let (compacted, _) = compact_gpt(&dense).unwrap();
    [
        ("gpt dense", dense.clone()),
        ("gpt sparse", dense.with_format(Format::Sparse)),
        ("gpt compact", compacted),
    ]
    .into_iter()
    .map(|(name, f)| (name.to_string(), f.to_bytes().unwrap()))
    .collect()
}

#[test]
fn damaged_gpt_files_are_errors_or_models_that_decode() {
    for (name, bytes) in gpt_files() {
        let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        for (kind, within) in [("header", header), ("anywhere", bytes.len())] {
            runner()
                .run(&damage(), |d| {
                    let damaged = d.apply(&bytes, within);
                    // an image reader given a damaged GPT file refuses it too
                    assert!(ModelFile::from_bytes(&damaged).is_err());
                    if let Ok(file) = GptFile::from_bytes(&damaged)
                        && let Ok(engine) = GptEngine::new(&file, SparseMode::On)
                    {
                        let mut decoder = Decoder::new(&engine, true);
                        let vocab = file.vocab.len() as u32;
                        for t in 0..2 * file.config.gpt.block_size as u32 {
                            assert_eq!(decoder.push(t % vocab).len(), vocab as usize);
                        }
                    }
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{name} ({kind}): {e}"));
        }
    }
}

#[test]
fn damaged_csr_arrays_are_errors_or_products_in_bounds() {
    use pdecay::csr::Csr;
    let (rows, cols) = (7, 9);
    let dense: Vec<f32> = (0..rows * cols)
        .map(|i| if i % 3 == 0 { i as f32 } else { 0.0 })
        .collect();
    let real = Csr::from_dense(&dense, rows, cols, 0.5);
    let strategy = (
        prop::collection::vec((any::<prop::sample::Index>(), 0u32..80), 0..4),
        prop::collection::vec((any::<prop::sample::Index>(), 0u32..20), 0..4),
        0usize..3,
    );
    runner()
        .run(&strategy, |(offsets_at, indices_at, drop)| {
            let (mut offsets, mut indices, mut values) = (
                real.row_offsets.clone(),
                real.col_indices.clone(),
                real.values.clone(),
            );
            for (at, v) in offsets_at {
                let i = at.index(offsets.len());
                offsets[i] = v;
            }
            for (at, v) in indices_at {
                let i = at.index(indices.len());
                indices[i] = v;
            }
            values.truncate(values.len().saturating_sub(drop));
            if let Ok(csr) = Csr::new(rows, cols, offsets, indices, values) {
                let mut y = vec![0.0; rows];
                csr.matvec(&vec![1.0; cols], None, &mut y);
                prop_assert_eq!(csr.to_dense().len(), rows * cols);
            }
            Ok(())
        })
        .unwrap();
}

/// Text damage: a line deleted, a line repeated, a character replaced.
fn text_damage() -> impl Strategy<Value = (usize, usize, usize, char)> {
    (
        0usize..4,
        any::<usize>(),
        any::<usize>(),
        prop::char::range(' ', '~'),
    )
}

fn damage_text(text: &str, (kind, line, at, c): (usize, usize, usize, char)) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let i = line % lines.len().max(1);
    match kind {
        0 => {
            lines.remove(i);
        }
        1 => lines.insert(i, lines[i].clone()),
        _ => {
            let mut chars: Vec<char> = lines[i].chars().collect();
            if !chars.is_empty() {
                let j = at % chars.len();
                chars[j] = c;
            } else {
                chars.push(c);
            }
            lines[i] = chars.into_iter().collect();
        }
    }
    lines.join("\n")
}

#[test]
fn damaged_config_and_sweep_files_are_errors_or_valid_plans() {
    let mut files: Vec<(String, String)> = Vec::new();
    for dir in ["../../configs", "presets"] {
        for entry in std::fs::read_dir(manifest(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                files.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    assert!(files.len() >= 4, "{files:?}");
    for (name, text) in &files {
        runner()
            .run(&text_damage(), |d| {
                let damaged = damage_text(text, d);
                if name.starts_with("sweep") {
                    if let Ok(plan) = sweep::parse(&damaged, name) {
                        for run in &plan.runs {
                            prop_assert!(run.config.validate().is_ok(), "{}", run.name);
                        }
                    }
                } else if let Ok(config) = TrainConfig::from_toml(&damaged, name) {
                    let _ = config
                        .validate()
                        .and_then(|()| config.refuse_inapplicable_keys());
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
