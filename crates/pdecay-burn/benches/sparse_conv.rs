//! One convolution, forward + backward, on the flex CPU backend: the sparse-training product
//! (`pdecay_burn::sparse_conv2d`, over the kernel's non-zeros) against the dense one a layer
//! runs otherwise (`pdecay_burn::dense_conv2d`: what `--sparse-training off` trains with, and
//! what `auto` times the sparse product against), at the sparsities pWD passes through.
//!
//! `cargo bench -p pdecay-burn --bench sparse_conv` prints, per shape and sparsity, the median
//! time of each (alternated call by call, same process, on a thread of rayon's pool as training
//! runs, every backward seeded with ones by `backward()` on the output so that no loss op is
//! timed) and sparse / dense; then, per shape,
//! burn's dense `conv2d` against `pdecay_burn::dense_conv2d` (the direct product over every
//! weight where the kernel has few taps, gemm per output position for stride 1 otherwise), the
//! input's gradient not asked for first layers; last, on the CNN's two convolution outputs,
//! burn's bias, ReLU and 2x2 max pooling (three ops) against `pdecay_burn::bias_relu_max_pool_2x2`
//! (one pass each way); and the CNN's conv2 block (convolution, bias, ReLU, pooling), dense
//! and at each sparsity from 50%, as the convolution then the fused pooling against
//! `pdecay_burn::conv2d_relu_max_pool_2x2` (one op, the pooling in the lanes' layout). Shapes:
//! the CNN's two convolutions and ResNet-20's 3×3 convolutions of
//! each stage on Fashion-MNIST, batch 128.
//! `SPARSE_CONV_REPEATS` sets the repeats (default 9), `SPARSE_CONV_ONLY` keeps the layers
//! whose name contains it, `SPARSE_CONV_SPARSITY` (a fraction) runs that sparsity alone, and
//! `SPARSE_BENCH_TSV` prints tab-separated rows (`layer shape sparsity dense_ms sparse_ms
//! ratio`) for bench/sparse_layers.sh.

use std::time::Instant;

use burn::tensor::activation::relu;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use pdecay_burn::{
    bias_relu_max_pool_2x2, conv2d_relu_max_pool_2x2, dense_conv2d, max_pool_2x2, sparse_conv2d,
};

/// (name, batch, input channels, side, output channels, kernel, stride, padding)
type Shape = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
);

const SHAPES: [Shape; 5] = [
    ("cnn conv1", 128, 1, 28, 32, 3, 1, 1),
    ("cnn conv2", 128, 32, 14, 64, 3, 1, 1),
    ("resnet20 layer1", 128, 16, 28, 16, 3, 1, 1),
    ("resnet20 layer2", 128, 32, 14, 32, 3, 1, 1),
    ("resnet20 layer3", 128, 64, 7, 64, 3, 1, 1),
];

/// The dense comparison's shapes: first layers over one or three channels (direct, no input
/// gradient), then the CNN's conv2 and ResNet-20's stages (gemm per position, with `∂x`).
const DENSE_SHAPES: [(Shape, bool); 7] = [
    (("cnn conv1", 128, 1, 28, 32, 3, 1, 1), false),
    (("resnet20 stem", 128, 1, 28, 16, 3, 1, 1), false),
    (("cifar stem", 128, 3, 32, 16, 3, 1, 1), false),
    (("cnn conv2", 128, 32, 14, 64, 3, 1, 1), true),
    (("resnet20 layer1", 128, 16, 28, 16, 3, 1, 1), true),
    (("resnet20 layer2", 128, 32, 14, 32, 3, 1, 1), true),
    (("resnet20 layer3", 128, 64, 7, 64, 3, 1, 1), true),
];

mod allocator;
mod timing;

use timing::alternated;

const SPARSITIES: [f64; 6] = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99];

/// An `[o, c, k, k]` kernel with `sparsity` of its entries exactly zero (positions by a hash,
/// so unstructured as pWD leaves them).
fn kernel(dims: [usize; 4], sparsity: f64, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|i| {
            let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let u = h as f64 / (1u64 << 24) as f64;
            if u < sparsity {
                0.0
            } else {
                (u as f32 - 0.5) * 0.1
            }
        })
        .collect();
    Tensor::from_data(TensorData::new(values, dims), device)
}

fn main() {
    allocator::keep_freed_pages();
    // on a pool thread, as `pdecay train` runs its loop: the ops split their work as there
    pdecay_burn::on_pool(run);
}

fn run() {
    let env = |key: &str| std::env::var(key).ok();
    let repeats: usize = env("SPARSE_CONV_REPEATS")
        .and_then(|r| r.parse().ok())
        .unwrap_or(9);
    let only = env("SPARSE_CONV_ONLY").unwrap_or_default();
    let sparsities = match env("SPARSE_CONV_SPARSITY") {
        Some(s) => vec![
            s.parse::<f64>()
                .expect("SPARSE_CONV_SPARSITY is a fraction"),
        ],
        None => SPARSITIES.to_vec(),
    };
    let device = Device::flex().autodiff();
    let tsv = env("SPARSE_BENCH_TSV").is_some();
    if !tsv {
        println!("convolution forward + backward, median of {repeats} alternated runs (ms):");
        println!(
            "{:<16} {:>22} {:>9} {:>9} {:>9} {:>14}",
            "layer", "batch x c x side->out", "sparsity", "dense", "sparse", "sparse/dense"
        );
    }
    for (name, batch, channels, side, outputs, k, stride, padding) in
        SHAPES.into_iter().filter(|s| s.0.contains(&only))
    {
        let x = Tensor::<4>::random(
            [batch, channels, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        for &sparsity in &sparsities {
            let w = kernel([outputs, channels, k, k], sparsity, &device).require_grad();
            let step = |sparse: bool| {
                let start = Instant::now();
                let y = if sparse {
                    sparse_conv2d(x.clone(), w.clone(), None, stride, padding)
                } else {
                    dense_conv2d(x.clone(), w.clone(), None, stride, padding)
                };
                let grads = y.backward();
                std::hint::black_box(w.grad(&grads));
                std::hint::black_box(x.grad(&grads));
                start.elapsed().as_secs_f64()
            };
            let [dense, sparse] = alternated(repeats, step);
            let shape = format!("{batch}x{channels}x{side}->{outputs}");
            if tsv {
                // bench/sparse_layers.sh joins these rows with SparseProp's
                println!(
                    "{name}\t{shape}\t{sparsity}\t{:.3}\t{:.3}\t{:.3}",
                    1e3 * dense,
                    1e3 * sparse,
                    sparse / dense
                );
                continue;
            }
            println!(
                "{:<16} {:>22} {:>8.0}% {:>9.3} {:>9.3} {:>13.2}x",
                name,
                shape,
                100.0 * sparsity,
                1e3 * dense,
                1e3 * sparse,
                sparse / dense
            );
        }
    }
    if tsv {
        return;
    }
    println!("(ratios below 1: the sparse convolution is faster)");
    println!(
        "dense convolution forward + backward (no input gradient for first layers), median of {repeats} alternated runs (ms):"
    );
    println!(
        "{:<16} {:>22} {:>9} {:>9} {:>14}",
        "layer", "batch x c x side->out", "burn", "pdecay", "pdecay/burn"
    );
    for ((name, batch, channels, side, outputs, k, stride, padding), input_grad) in
        DENSE_SHAPES.into_iter().filter(|s| s.0.0.contains(&only))
    {
        let x = Tensor::<4>::random(
            [batch, channels, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let x = if input_grad { x.require_grad() } else { x };
        let w = kernel([outputs, channels, k, k], 0.0, &device).require_grad();
        let options = ConvOptions::new([stride; 2], [padding; 2], [1; 2], 1);
        let step = |ours: bool| {
            let start = Instant::now();
            let y = if ours {
                dense_conv2d(x.clone(), w.clone(), None, stride, padding)
            } else {
                burn::tensor::module::conv2d(x.clone(), w.clone(), None, options.clone())
            };
            let grads = y.backward();
            std::hint::black_box(w.grad(&grads));
            std::hint::black_box(x.grad(&grads));
            start.elapsed().as_secs_f64()
        };
        let [burn, ours] = alternated(repeats, step);
        println!(
            "{:<16} {:>22} {:>9.3} {:>9.3} {:>13.2}x",
            name,
            format!("{batch}x{channels}x{side}->{outputs}"),
            1e3 * burn,
            1e3 * ours,
            ours / burn
        );
    }
    println!(
        "bias + ReLU + 2x2 max pooling of a convolution's output, forward + backward, median of {repeats} alternated runs (ms):"
    );
    println!(
        "{:<16} {:>22} {:>9} {:>9} {:>14}",
        "after", "batch x c x side", "3 ops", "fused", "fused/3 ops"
    );
    for (name, batch, channels, side) in [("cnn conv1", 128, 32, 28), ("cnn conv2", 128, 64, 14)]
        .into_iter()
        .filter(|s| s.0.contains(&only))
    {
        let dims = [batch, channels, side, side];
        let y = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device).require_grad();
        let b =
            Tensor::<1>::random([channels], Distribution::Normal(0.0, 0.1), &device).require_grad();
        let step = |fused: bool| {
            let start = Instant::now();
            let out = if fused {
                bias_relu_max_pool_2x2(y.clone(), Some(b.clone()))
            } else {
                max_pool_2x2(relu(y.clone() + b.clone().reshape([1, channels, 1, 1])))
            };
            let grads = out.backward();
            std::hint::black_box(y.grad(&grads));
            std::hint::black_box(b.grad(&grads));
            start.elapsed().as_secs_f64()
        };
        let [composite, fused] = alternated(repeats, step);
        println!(
            "{:<16} {:>22} {:>9.3} {:>9.3} {:>13.2}x",
            name,
            format!("{batch}x{channels}x{side}"),
            1e3 * composite,
            1e3 * fused,
            fused / composite
        );
    }
    println!(
        "the CNN's convolution blocks (convolution, bias, ReLU, 2x2 max pooling), forward + backward (no input gradient for conv1), median of {repeats} alternated runs (ms):"
    );
    println!(
        "{:<16} {:>22} {:>9} {:>9} {:>14}",
        "block", "zeros", "2 ops", "1 op", "1 op/2 ops"
    );
    for (name, channels, side, outputs) in [("cnn conv1", 1, 28, 32), ("cnn conv2", 32, 14, 64)]
        .into_iter()
        .filter(|s| s.0.contains(&only))
    {
        let batch = 128;
        let blocks = [(false, 0.0)]
            .into_iter()
            .chain(sparsities.iter().filter(|&&z| z >= 0.5).map(|&z| (true, z)));
        for (sparse, zeros) in blocks {
            let dims = [batch, channels, side, side];
            let x = Tensor::<4>::random(dims, Distribution::Normal(0.0, 1.0), &device);
            let x = if channels > 1 { x.require_grad() } else { x };
            let w = kernel([outputs, channels, 3, 3], zeros, &device).require_grad();
            let b = Tensor::<1>::random([outputs], Distribution::Normal(0.0, 0.1), &device)
                .require_grad();
            let step = |one_op: bool| {
                let start = Instant::now();
                let out = if one_op {
                    conv2d_relu_max_pool_2x2(x.clone(), w.clone(), b.clone(), 1, 1, sparse)
                } else if sparse {
                    let y = sparse_conv2d(x.clone(), w.clone(), None, 1, 1);
                    bias_relu_max_pool_2x2(y, Some(b.clone()))
                } else {
                    let y = dense_conv2d(x.clone(), w.clone(), None, 1, 1);
                    bias_relu_max_pool_2x2(y, Some(b.clone()))
                };
                let grads = out.backward();
                for grad in [x.grad(&grads), w.grad(&grads)] {
                    std::hint::black_box(grad);
                }
                std::hint::black_box(b.grad(&grads));
                start.elapsed().as_secs_f64()
            };
            let [two_ops, one_op] = alternated(repeats, step);
            println!(
                "{:<16} {:>22} {:>9.3} {:>9.3} {:>13.2}x",
                format!("{name} {}", if sparse { "sparse" } else { "dense" }),
                format!("{:.0}%", 100.0 * zeros),
                1e3 * two_ops,
                1e3 * one_op,
                one_op / two_ops
            );
        }
    }
}
