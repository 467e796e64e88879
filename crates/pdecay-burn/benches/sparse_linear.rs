//! One linear layer, forward + backward, on the flex CPU backend: the sparse-training product
//! (`pdecay_burn::sparse_linear`, over the weight's non-zeros) against the dense one a layer
//! trains with otherwise (`pdecay_burn::dense_linear`: burn's `X·W` bit for bit, without
//! burn's output copies), at the sparsities pWD passes through.
//!
//! `cargo bench -p pdecay-burn --bench sparse_linear` prints, per shape and sparsity, the
//! median time of each (alternated call by call, same process, on a thread of rayon's pool as
//! training runs, the backward seeded with ones by `y.backward()` so that no loss op is timed)
//! and sparse / dense. Shapes:
//! the MLP's layers and the CNN's dense layer (its 64x7x7 pooled maps in) at batch 128, the
//! CPU GPT's (batch 12 x 64 positions), and 1024x1024 and 4096x1024 (`out x in`) at batch 256.
//! `SPARSE_LINEAR_REPEATS` sets the repeats (default 15),
//! `SPARSE_LINEAR_ONLY` keeps the layers whose name contains it, `SPARSE_LINEAR_SPARSITY` (a
//! fraction) runs that sparsity alone, and `SPARSE_BENCH_TSV` prints tab-separated rows
//! (`layer shape sparsity dense_ms sparse_ms ratio`) for bench/sparse_layers.sh.

use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use pdecay_burn::{dense_linear, sparse_linear};

/// (name, batch, inputs, outputs)
const SHAPES: [(&str, usize, usize, usize); 10] = [
    ("mlp hidden.0", 128, 784, 300),
    ("mlp hidden.1", 128, 300, 100),
    ("mlp output", 128, 100, 10),
    ("cnn dense", 128, 3136, 128),
    ("gpt c_attn", 768, 128, 384),
    ("gpt attn c_proj", 768, 128, 128),
    ("gpt c_fc", 768, 128, 512),
    ("gpt mlp c_proj", 768, 512, 128),
    ("1024x1024", 256, 1024, 1024),
    ("4096x1024", 256, 1024, 4096),
];

mod allocator;
mod timing;

use timing::alternated;

const SPARSITIES: [f64; 6] = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99];

/// A `[inputs, outputs]` weight with `sparsity` of its entries exactly zero (positions by a
/// hash, so unstructured as pWD leaves them).
fn weight(inputs: usize, outputs: usize, sparsity: f64, device: &Device) -> Tensor<2> {
    let values: Vec<f32> = (0..inputs * outputs)
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
    Tensor::from_data(TensorData::new(values, [inputs, outputs]), device)
}

fn main() {
    allocator::keep_freed_pages();
    // on a pool thread, as `pdecay train` runs its loop: the ops split their work as there
    pdecay_burn::on_pool(run);
}

fn run() {
    let repeats: usize = std::env::var("SPARSE_LINEAR_REPEATS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(15);
    let device = Device::flex().autodiff();
    let tsv = std::env::var_os("SPARSE_BENCH_TSV").is_some();
    if !tsv {
        println!("linear layer forward + backward, median of {repeats} alternated runs (ms):");
        println!(
            "{:<16} {:>16} {:>9} {:>9} {:>9} {:>14}",
            "layer", "batch x in->out", "sparsity", "dense", "sparse", "sparse/dense"
        );
    }
    let only = std::env::var("SPARSE_LINEAR_ONLY").unwrap_or_default();
    for (name, batch, inputs, outputs) in SHAPES.into_iter().filter(|s| s.0.contains(&only)) {
        let x = Tensor::<2>::random([batch, inputs], Distribution::Normal(0.0, 1.0), &device)
            .require_grad();
        let sparsities = match std::env::var("SPARSE_LINEAR_SPARSITY") {
            Ok(s) => vec![
                s.parse::<f64>()
                    .expect("SPARSE_LINEAR_SPARSITY is a fraction"),
            ],
            Err(_) => SPARSITIES.to_vec(),
        };
        for sparsity in sparsities {
            let w = weight(inputs, outputs, sparsity, &device).require_grad();
            let step = |sparse: bool| {
                let start = Instant::now();
                let y = if sparse {
                    sparse_linear(x.clone(), w.clone(), None)
                } else {
                    dense_linear(x.clone(), w.clone(), None)
                };
                let grads = y.backward();
                std::hint::black_box(w.grad(&grads));
                std::hint::black_box(x.grad(&grads));
                start.elapsed().as_secs_f64()
            };
            let [dense, sparse] = alternated(repeats, step);
            let shape = format!("{batch}x{inputs}->{outputs}");
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
                "{:<16} {:>16} {:>8.0}% {:>9.3} {:>9.3} {:>13.2}x",
                name,
                shape,
                100.0 * sparsity,
                1e3 * dense,
                1e3 * sparse,
                sparse / dense
            );
        }
    }
    if !tsv {
        println!("(ratios below 1: the sparse product is faster)");
    }
}
