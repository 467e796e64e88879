//! Data-parallel training through the trainer itself: two replicas (both on the CPU here; on
//! a GPU machine, `--device cuda:0,1`) train the same run as one device, up to the order of
//! float additions.

use burn::tensor::Device;
use pdecay_cli::config::{OptimKind, TrainConfig};
use pdecay_cli::data::mnist;
use pdecay_cli::train::{PlainProgress, RunOptions, train_classifier};

#[test]
fn two_replicas_train_the_same_run_as_one_device() {
    let data = mnist::embedded();
    let config = TrainConfig {
        hidden: vec![32],
        epochs: 2,
        optim: OptimKind::Padam,
        lambda: 0.1,
        augment: true,
        ..TrainConfig::default()
    };
    let run = |replicas: Vec<Device>| {
        let options = RunOptions {
            replicas,
            ..RunOptions::default()
        };
        train_classifier(&config, &data, &options, &mut PlainProgress::default()).unwrap()
    };
    let one = run(Vec::new());
    let two = run(vec![Device::flex()]);
    let pp = |a: f64, b: f64| 100.0 * (a - b).abs();
    assert!(
        pp(one.final_test_accuracy, two.final_test_accuracy) < 2.0,
        "{one:?}\n{two:?}"
    );
    assert!(pp(one.sparsity, two.sparsity) < 2.0, "{one:?}\n{two:?}");
    assert!(
        (one.final_test_loss - two.final_test_loss).abs() < 0.05 * one.final_test_loss,
        "{one:?}\n{two:?}"
    );
    // it learned and pWD pruned, on both
    assert!(
        two.final_test_accuracy > 0.6 && two.sparsity > 0.2,
        "{two:?}"
    );
}
