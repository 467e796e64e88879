//! Sparse inference products: our CSR kernels against `sprs` (the well-kept Rust CSR crate) on
//! the MLP's first layer (300 x 784, PyTorch orientation) at the densities pWD leaves. (Dense
//! against sparse, with burn's gemm as the dense side, is `pdecay bench-infer`.)
//!
//! `cargo bench -p pdecay --bench csr` prints, per density and batch size, the median time of
//! each (alternated, same process) and the ratios; then our batch-1 CSR product against the SELL
//! layout the GPT decoder uses, on the GPT's shapes.

use std::time::Instant;

use ndarray::{Array1, Array2};
use pdecay::csr::{Csr, transpose};
use pdecay::sell::Sell;
use sprs::CsMat;

const ROWS: usize = 300;
const COLS: usize = 784;

/// A deterministic `ROWS x COLS` matrix with about `density` of its entries non-zero.
fn matrix(density: f64) -> Vec<f32> {
    matrix_of(ROWS, COLS, density)
}

/// A deterministic `rows x cols` matrix with about `density` of its entries non-zero.
fn matrix_of(rows: usize, cols: usize, density: f64) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            if (h as f64 / (1u64 << 24) as f64) < density {
                ((i % 17) as f32 - 8.0) * 0.01
            } else {
                0.0
            }
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    println!("CSR products, {ROWS} x {COLS} (median of alternated runs, microseconds):");
    println!(
        "{:>8} {:>6} {:>10} {:>10} {:>14}",
        "density", "batch", "sprs", "pdecay", "pdecay/sprs"
    );
    for density in [0.02, 0.05, 0.2] {
        let dense = matrix(density);
        let ours = Csr::from_dense(&dense, ROWS, COLS, 0.0);
        let theirs: CsMat<f32> = CsMat::new(
            (ROWS, COLS),
            ours.row_offsets.iter().map(|&o| o as usize).collect(),
            ours.col_indices.iter().map(|&c| c as usize).collect(),
            ours.values.clone(),
        );
        for batch in [1usize, 64] {
            let x: Vec<f32> = (0..batch * COLS)
                .map(|i| (i % 29) as f32 * 0.1 - 1.4)
                .collect();
            let x_t = transpose(&x, batch, COLS);
            let x_cols = Array2::from_shape_vec((COLS, batch), x_t.clone()).unwrap();
            let x_vec = Array1::from_vec(x[..COLS].to_vec());
            let mut times = [Vec::new(), Vec::new()];
            let repeats = if batch == 1 { 2000 } else { 200 };
            let mut y_ours = vec![0.0; ROWS * batch];
            for _ in 0..repeats {
                let start = Instant::now();
                if batch == 1 {
                    std::hint::black_box(&theirs * &x_vec);
                } else {
                    std::hint::black_box(&theirs * &x_cols);
                }
                times[0].push(start.elapsed().as_secs_f64());
                let start = Instant::now();
                if batch == 1 {
                    ours.matvec(&x[..COLS], None, &mut y_ours);
                } else {
                    ours.matmul_t(&x_t, batch, None, &mut y_ours);
                }
                times[1].push(start.elapsed().as_secs_f64());
                std::hint::black_box(&y_ours);
            }
            let [s, o] = times.map(median);
            println!(
                "{:>7.0}% {:>6} {:>10.1} {:>10.1} {:>13.2}x",
                100.0 * density,
                batch,
                1e6 * s,
                1e6 * o,
                o / s
            );
        }
    }
    println!("(ratios below 1: pdecay's kernel is faster)");
    sell_against_csr();
}

/// The GPT decoder's batch-1 product: CSR's row-by-row dot products against the SELL layout
/// (`pdecay::sell`), on the Shakespeare GPT's linear shapes at the densities of its pAdam run.
fn sell_against_csr() {
    println!(
        "\nbatch-1 products on the GPT's shapes, CSR against SELL (median of alternated runs, microseconds):"
    );
    println!(
        "{:>10} {:>8} {:>10} {:>10} {:>11}",
        "shape", "density", "CSR", "SELL", "SELL/CSR"
    );
    for (rows, cols) in [(384, 128), (512, 128), (128, 512)] {
        for density in [0.05, 0.15, 0.25] {
            let csr = Csr::from_dense(&matrix_of(rows, cols, density), rows, cols, 0.0);
            let sell = Sell::from_csr(&csr);
            let x: Vec<f32> = (0..cols).map(|i| (i % 29) as f32 * 0.1 - 1.4).collect();
            let mut y = vec![0.0; rows];
            let mut times = [Vec::new(), Vec::new()];
            for _ in 0..20_000 {
                let start = Instant::now();
                csr.matvec(&x, None, &mut y);
                times[0].push(start.elapsed().as_secs_f64());
                std::hint::black_box(&y);
                let start = Instant::now();
                sell.matvec(&x, None, &mut y);
                times[1].push(start.elapsed().as_secs_f64());
                std::hint::black_box(&y);
            }
            let [c, s] = times.map(median);
            println!(
                "{:>10} {:>7.0}% {:>10.2} {:>10.2} {:>10.2}x",
                format!("{rows}x{cols}"),
                100.0 * density,
                1e6 * c,
                1e6 * s,
                s / c
            );
        }
    }
}
