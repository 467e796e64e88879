//! # pdecay — p-norm decoupled weight decay (pWD), framework-free
//!
//! The maths of Outmezguine & Levi, *Decoupled Weight Decay for Any p Norm* (2024), with no
//! tensor library: decay factors and their variants ([`factor`]), the slice kernel that applies
//! them ([`kernel`]), schedules for lr, p and lambda ([`schedule`]), sparsity statistics
//! ([`sparsity`]), input validation ([`validate`]), causal self-attention ([`attention`]), layer normalisation ([`layer_norm`]), the CSR matrices sparse inference and sparse
//! training run on ([`csr`]) and the row-sliced layout of its batch-1 product ([`sell`]), convolutions as their products ([`im2col`]), directly over a
//! sparse kernel ([`sparse_conv`]), with the batch innermost over a sparse kernel ([`lane_conv`])
//! or a dense one ([`lane_gemm`]), 2x2 max pooling ([`pool`], and in the lanes' layout
//! [`lane_pool`]), and dense products on strided views of slices through the `gemm` crate
//! ([`matmul`]).
//!
//! The objective is `L(w) = L0(w) + lambda * sum_i |w_i|^p`. After any base optimizer step,
//! pWD sets
//!
//! ```text
//! w_t = w_step * |w_{t-1}|^(2-p) / (|w_{t-1}|^(2-p) + p*lr_t*lambda)
//! ```
//!
//! where `w_step` is the base optimizer's result and `w_{t-1}` the weight before that step.
//!
//! ```
//! use pdecay::factor::{DecayCoefficients, decay_factor};
//! let c = DecayCoefficients::new(0.8, 1e-3, 1e-2, 0.0).unwrap(); // p, lr, lambda, lambda2
//! let f = decay_factor(0.5, &c);
//! assert!(f > 0.0 && f < 1.0);
//! ```

#![warn(missing_docs)]

pub mod attention;
pub mod csr;
pub mod factor;
pub mod im2col;
pub mod kernel;
pub mod lane_conv;
pub mod lane_gemm;
pub mod lane_pool;
pub mod layer_norm;
pub mod matmul;
pub mod pool;
pub mod schedule;
pub mod sell;
pub mod sparse_conv;
pub mod sparsity;
#[cfg(test)]
mod test_support;
pub mod validate;

/// The README's quick start, run as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
