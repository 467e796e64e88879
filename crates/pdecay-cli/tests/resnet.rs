//! End-to-end tests of the ResNets and CIFAR-10 through the real binary, on CIFAR-10 batch
//! files the tests write (small, so that a narrow ResNet-20 trains in seconds).

mod common;
use common::{checkpoint_weights, fails, json, metrics_without_time, ok, path, tempdir};

use std::path::{Path, PathBuf};

use pdecay_cli::data::cifar::{TEST_BATCH, TRAIN_BATCHES, encode_batch};

/// Image `i`: label `i % 10`, pixels from a fixed pseudo-random stream (no two alike).
fn image(i: usize) -> (u8, Vec<u8>) {
    let mut state = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let pixels = (0..3072)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect();
    ((i % 10) as u8, pixels)
}

/// A CIFAR-10 folder: `per_batch` images in each training batch; the test batch holds
/// training images `0..test` (so a network that memorised them scores on it).
fn cifar(name: &str, per_batch: usize, test: usize) -> PathBuf {
    let dir = tempdir(name).join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    for (b, batch) in TRAIN_BATCHES.iter().enumerate() {
        let records: Vec<_> = (b * per_batch..(b + 1) * per_batch).map(image).collect();
        std::fs::write(dir.join(batch), encode_batch(&records)).unwrap();
    }
    let records: Vec<_> = (0..test).map(image).collect();
    std::fs::write(dir.join(TEST_BATCH), encode_batch(&records)).unwrap();
    dir
}

fn summary(dir: &Path) -> serde_json::Value {
    json(&dir.join("summary.json"))
}

#[test]
fn a_narrow_resnet20_memorises_32_images() {
    let data = cifar("overfit", 32 / 5 + 1, 32);
    let run = data.parent().unwrap().join("run");
    ok(&[
        "train",
        "--data",
        path(&data),
        "--model",
        "resnet20",
        "--resnet-width",
        "8",
        "--optim",
        "adam",
        "--lr",
        "3e-3",
        "--epochs",
        "30",
        "--batch-size",
        "8",
        "--warmup-epochs",
        "0",
        "--out",
        path(&run),
    ]);
    let s = summary(&run);
    // ten classes at random labels: chance is 10%; memorised, the 32 images score near 100%
    let accuracy = s["final_test_accuracy"].as_f64().unwrap();
    assert!(
        accuracy >= 0.9,
        "test accuracy {accuracy} on the training images"
    );
    // the run recorded its data's shape, which rebuilds the network from the folder
    let text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let config = pdecay_cli::config::TrainConfig::from_toml(&text, "config.toml").unwrap();
    assert_eq!(config.image_shape, pdecay_cli::data::ImageShape::CIFAR10);
}

#[test]
fn a_resnet_run_resumes_bit_identical_with_its_batch_norm_statistics() {
    let data = cifar("resume", 8, 16);
    let root = data.parent().unwrap().to_path_buf();
    let (straight, resumed) = (root.join("straight"), root.join("resumed"));
    let common = [
        "train",
        "--data",
        path(&data),
        "--model",
        "resnet20",
        "--resnet-width",
        "4",
        "--optim",
        "padam",
        "--lambda",
        "0.1",
        "--lr",
        "3e-3",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--augment",
        "--sparse-training",
        "on",
        "--seed",
        "5",
    ];
    let run = |extra: &[&str]| ok(&[&common[..], extra].concat());
    run(&["--out", path(&straight)]);
    run(&["--out", path(&resumed), "--stop-after", "2"]);
    ok(&["train", "--resume", path(&resumed)]);
    // every float of the checkpoint, BatchNorm's running mean and variance included
    assert_eq!(checkpoint_weights(&straight), checkpoint_weights(&resumed));
    let metrics = metrics_without_time(&straight);
    assert_eq!(metrics, metrics_without_time(&resumed));
    assert_eq!(
        summary(&straight)["final_test_loss"],
        summary(&resumed)["final_test_loss"]
    );
    // pWD decays the conv and linear weights only: BatchNorm's gains and biases are not
    // decayed, and its running statistics are not parameters at all
    let layers = metrics.last().unwrap()["layers"]
        .as_array()
        .unwrap()
        .clone();
    let decayed = |name: &str| {
        layers
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("no layer {name} in {layers:?}"))["decayed"]
            .as_bool()
            .unwrap()
    };
    assert!(decayed("ResNet.conv1.weight") && decayed("ResNet.stages.1.0.shortcut.conv.weight"));
    assert!(decayed("ResNet.linear.weight") && !decayed("ResNet.linear.bias"));
    assert!(!decayed("ResNet.bn1.gamma") && !decayed("ResNet.stages.2.2.bn2.beta"));
    assert!(
        layers
            .iter()
            .all(|l| !l["name"].as_str().unwrap().contains("running")),
        "{layers:?}"
    );
    assert_eq!(
        summary(&straight)["total_params"],
        // the width-4 ResNet-20 on RGB images, counted as PyTorch counts parameters
        serde_json::json!(17_534)
    );
}

#[test]
fn every_classifier_trains_on_cifar_and_its_files_evaluate_to_the_runs_accuracy() {
    let data = cifar("others", 4, 10);
    let root = data.parent().unwrap().to_path_buf();
    for model in ["mlp", "cnn", "resnet20"] {
        let run = root.join(model);
        let mut args = vec![
            "train",
            "--data",
            path(&data),
            "--model",
            model,
            "--epochs",
            "1",
            "--batch-size",
            "10",
            "--out",
            path(&run),
        ];
        if model == "resnet20" {
            args.extend(["--resnet-width", "2"]);
        }
        ok(&args);
        let accuracy = summary(&run)["final_test_accuracy"].as_f64().unwrap();
        // model files hold networks on any image shape, with per-channel normalisation
        for format in ["dense", "sparse"] {
            let file = root.join(format!("{model}-{format}.safetensors"));
            ok(&[
                "export",
                path(&run),
                "--format",
                format,
                "--out",
                path(&file),
            ]);
            let said = ok(&["eval", path(&file), "--data", path(&data)]);
            let tail = said.split("test accuracy ").nth(1).expect("an accuracy");
            let evaluated: f64 = tail.split('%').next().unwrap().parse().unwrap();
            assert!(
                (evaluated - 100.0 * accuracy).abs() < 1e-9,
                "{model} {format}: {said} vs {accuracy}"
            );
            // Fashion-MNIST's grey 28x28 images do not fit an RGB network
            fails(
                &["eval", path(&file), "--embedded"],
                &["3x32x32", "1x28x28"],
            );
        }
    }
    // ResNets train on one device: replicas would share BatchNorm's statistics (the CLI
    // makes replicas of GPUs only, so this goes through the library)
    use burn::tensor::Device;
    use pdecay_cli::config::TrainConfig;
    use pdecay_cli::models::ModelKind;
    use pdecay_cli::train::{RunOptions, Silent, train_classifier};
    let config = TrainConfig {
        model: ModelKind::Resnet20,
        resnet_width: Some(2),
        epochs: 1,
        batch_size: 10,
        ..TrainConfig::default()
    };
    let images = pdecay_cli::data::cifar::load(&data).unwrap();
    let options = RunOptions {
        replicas: vec![Device::flex()],
        ..RunOptions::default()
    };
    let message = train_classifier(&config, &images, &options, &mut Silent)
        .unwrap_err()
        .to_string();
    assert!(message.contains("one device"), "{message}");
}
