//! The flex CPU backend, where the fast paths run: the one device test that the optimizers'
//! fused kernels and the ops' extensions share, owned contiguous buffers, splitting a slice
//! loop across rayon's pool, and running a training loop on that pool.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Device};
use rayon::prelude::*;

/// Runs `work` on a thread of rayon's global pool while the calling thread waits (size the
/// pool first, if at all). From outside the pool every parallel op (burn's flex ops, the gemm,
/// pdecay's kernels) is a job pushed to the pool's queue: the caller sleeps until woken
/// threads finish it, and between ops the pool's idle threads spin beside the caller's serial
/// work for the same cores. On a pool thread an op's first half runs where it was called and
/// only the rest is stolen. `pdecay train` runs its loop so (whole MLP runs 1.2x faster, the
/// GPT 1.1x: bench/README.md), and the layer benches time their ops so.
pub fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    // `rayon::scope` runs its body in the global pool, on a worker thread
    rayon::scope(|_| work())
}

/// Elements per rayon task in [`in_chunks`]: a few microseconds of work, so short tensors stay
/// on one thread.
pub(crate) const CHUNK: usize = 1 << 14;

/// Whether `device` is the flex CPU backend: the plain one, or with `autodiff` also flex
/// wrapped in autodiff (the ops' extensions record their own backward; the optimizers step the
/// inner, plain tensors).
pub(crate) fn on_flex(device: &Device, autodiff: bool) -> bool {
    // burn's `Device` equality ignores autodiff (`Device::flex() == Device::flex().autodiff()`)
    *device == Device::flex() && (autodiff || !device.is_autodiff())
}

/// Whether every tensor holds f32 values (the ops' loops are written for f32; other dtypes
/// take burn's own ops).
pub(crate) fn all_f32(tensors: &[&FlexTensor]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

/// A contiguous copy-on-need of `tensor`, owning its buffer alone when nobody else holds it (so
/// `storage_mut` writes in place instead of copying).
pub(crate) fn sole_contiguous(tensor: FlexTensor) -> FlexTensor {
    let copy = tensor.to_contiguous();
    drop(tensor);
    copy
}

/// Runs `body(task_index, input_chunk, output_chunk)` over `chunk`-long pieces of `input` and
/// `output`, on rayon's pool when there is more than one piece.
pub(crate) fn in_chunks(
    input: &[f32],
    output: &mut [f32],
    chunk: usize,
    body: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) {
    if input.len() <= chunk {
        body(0, input, output);
    } else {
        input
            .par_chunks(chunk)
            .zip(output.par_chunks_mut(chunk))
            .enumerate()
            .for_each(|(i, (input, output))| body(i, input, output));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// burn's device equality does not tell autodiff apart, so `on_flex` asks for it itself.
    #[test]
    fn on_flex_tells_autodiff_apart() {
        let (plain, autodiff) = (Device::flex(), Device::flex().autodiff());
        assert!(on_flex(&plain, false) && on_flex(&plain, true));
        assert!(on_flex(&autodiff, true));
        assert!(!on_flex(&autodiff, false));
    }

    #[test]
    fn on_pool_runs_its_work_on_a_pool_thread() {
        assert_eq!(
            rayon::current_thread_index(),
            None,
            "a test thread is not the pool's"
        );
        let (index, sum) = on_pool(|| {
            let sum: u64 = (1..=1000u64).into_par_iter().sum();
            (rayon::current_thread_index(), sum)
        });
        assert!(index.is_some(), "the work ran outside rayon's pool");
        assert_eq!(sum, 500_500);
    }
}
