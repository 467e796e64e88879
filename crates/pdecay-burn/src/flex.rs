//! The flex CPU backend, where the fast paths run: the one device test that the optimizers'
//! fused kernels and the ops' extensions share, owned contiguous buffers, and splitting a slice
//! loop across rayon's pool.

use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Device};
use rayon::prelude::*;

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
}
