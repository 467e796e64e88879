//! The GPT's fused ops, forward + backward, on the flex CPU backend, against what the GPT ran
//! before: causal self-attention (`pdecay_burn::causal_attention`: strided products per head,
//! weights kept for the backward pass) against burn's composite of slices, batched products and
//! the causal softmax (`pdecay_burn::causal_attention_composite`), and layer normalisation
//! (`pdecay_burn::layer_norm`) against burn's `LayerNorm` (under autodiff, its decomposition).
//!
//! `cargo bench -p pdecay-burn --bench gpt_ops` prints, per shape, the median time of each
//! (alternated call by call, same process) and fused / burn. Shapes: the CPU GPT preset's
//! (batch 12 x 64 positions, 4 heads of 32) and nanoGPT's Shakespeare-char one (256 positions,
//! 6 heads of 64) at batch 4. `GPT_OPS_REPEATS` sets the repeats (default 100).

use std::time::Instant;

use burn::nn::LayerNormConfig;
use burn::tensor::{Device, Distribution, Tensor};
use pdecay_burn::{causal_attention, causal_attention_composite, layer_norm};

mod allocator;
mod timing;

use timing::alternated;

/// (name, batch, time, heads, head)
const SHAPES: [(&str, usize, usize, usize, usize); 2] =
    [("cpu gpt", 12, 64, 4, 32), ("nanogpt char", 4, 256, 6, 64)];

fn main() {
    allocator::keep_freed_pages();
    // on a pool thread, as `pdecay train` runs its loop: the ops split their work as there
    pdecay_burn::on_pool(run);
}

fn run() {
    let repeats: usize = std::env::var("GPT_OPS_REPEATS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let device = Device::flex().autodiff();
    println!("causal attention forward + backward, median of {repeats} alternated runs (ms):");
    println!(
        "{:<14} {:>22} {:>10} {:>9} {:>16}",
        "shape", "batch x time x heads·d", "composite", "fused", "fused/composite"
    );
    for (name, batch, time, heads, head) in SHAPES {
        let width = heads * head;
        let qkv = Tensor::<3>::random(
            [batch, time, 3 * width],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        let g = Tensor::<3>::random(
            [batch, time, width],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let step = |fused: bool| {
            let start = Instant::now();
            let out = if fused {
                causal_attention(qkv.clone(), heads)
            } else {
                causal_attention_composite(qkv.clone(), heads, |weights| weights)
            };
            let grads = (out * g.clone()).sum().backward();
            std::hint::black_box(qkv.grad(&grads).map(|g| g.into_data()));
            start.elapsed().as_secs_f64()
        };
        let [composite, fused] = alternated(repeats, step);
        println!(
            "{:<14} {:>22} {:>10.3} {:>9.3} {:>15.2}x",
            name,
            format!("{batch}x{time}x{heads}·{head}"),
            1e3 * composite,
            1e3 * fused,
            fused / composite
        );
    }
    println!(
        "\nlayer norm (no bias) forward + backward, median of {repeats} alternated runs (ms):"
    );
    println!(
        "{:<14} {:>22} {:>10} {:>9} {:>16}",
        "shape", "batch x time x width", "burn", "fused", "fused/burn"
    );
    for (name, batch, time, heads, head) in SHAPES {
        let width = heads * head;
        let norm = LayerNormConfig::new(width).with_bias(false).init(&device);
        let x = Tensor::<3>::random(
            [batch, time, width],
            Distribution::Normal(0.0, 1.0),
            &device,
        )
        .require_grad();
        let g = Tensor::<3>::random(
            [batch, time, width],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let step = |fused: bool| {
            let start = Instant::now();
            let y = if fused {
                layer_norm(x.clone(), norm.gamma.val(), None, 1e-5)
            } else {
                norm.forward(x.clone())
            };
            let grads = (y * g.clone()).sum().backward();
            std::hint::black_box(x.grad(&grads).map(|g| g.into_data()));
            start.elapsed().as_secs_f64()
        };
        let [burn, fused] = alternated(repeats, step);
        println!(
            "{:<14} {:>22} {:>10.3} {:>9.3} {:>15.2}x",
            name,
            format!("{batch}x{time}x{width}"),
            1e3 * burn,
            1e3 * fused,
            fused / burn
        );
    }
    println!("(ratios below 1: the fused op is faster)");
}
