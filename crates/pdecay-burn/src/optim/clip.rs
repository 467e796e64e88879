//! Gradient clipping by the global norm (PyTorch's `clip_grad_norm_`, nanoGPT's `grad_clip`).
//!
//! burn's `GradientClipping::Norm` clips each tensor by its own norm, which changes the
//! direction of the whole update; the global version scales every gradient by the same factor
//! `min(1, max_norm / ‖g‖)` with `‖g‖ = sqrt(Σ_tensors Σ_i g_i²)`, keeping the direction.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

/// Sums the squared gradients of a module's float parameters.
struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    sum: f64,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.sum += g.square().sum().into_scalar::<f32>() as f64;
        }
    }
}

/// Multiplies every gradient of a module's float parameters by `factor`.
struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// Scales `grads` so that their global L2 norm is at most `max_norm`; returns them and the norm
/// before clipping (NaN or infinite when a gradient is, in which case nothing is scaled: the
/// optimizer's finite check reports it).
pub fn clip_grad_norm<M: Module>(
    module: &M,
    mut grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, f64) {
    let mut squared = SquaredNorm {
        grads: &grads,
        sum: 0.0,
    };
    module.visit(&mut squared);
    let norm = squared.sum.sqrt();
    if norm.is_finite() && norm > max_norm {
        // PyTorch adds 1e-6 to the norm, so a clipped gradient lands just below max_norm
        let factor = max_norm / (norm + 1e-6);
        module.visit(&mut Scale {
            grads: &mut grads,
            factor,
        });
    }
    (grads, norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, TensorData};

    fn values<const D: usize>(t: Option<Tensor<D>>) -> Vec<f32> {
        t.unwrap().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn the_global_norm_scales_every_gradient_alike() {
        let device = Device::default();
        let layer = LinearConfig::new(2, 1).init(&device);
        let bias_id = layer.bias.as_ref().unwrap().id;
        let grads = || {
            let mut g = GradientsParams::new();
            g.register(
                layer.weight.id,
                Tensor::<2>::from_data(TensorData::new(vec![3.0f32, 0.0], [2, 1]), &device),
            );
            g.register(
                bias_id,
                Tensor::<1>::from_data(TensorData::new(vec![4.0f32], [1]), &device),
            );
            g
        };
        // ‖(3, 0, 4)‖ = 5: clipped to 1, every component is scaled by 1/5
        let (clipped, norm) = clip_grad_norm(&layer, grads(), 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        let (w, b) = (
            values(clipped.get::<2>(layer.weight.id)),
            values(clipped.get::<1>(bias_id)),
        );
        assert!((w[0] - 0.6).abs() < 1e-6 && w[1] == 0.0 && (b[0] - 0.8).abs() < 1e-6);
        // under the limit: untouched
        let (kept, norm) = clip_grad_norm(&layer, grads(), 10.0);
        assert!((norm - 5.0).abs() < 1e-6);
        assert_eq!(values(kept.get::<2>(layer.weight.id)), [3.0, 0.0]);
        assert_eq!(values(kept.get::<1>(bias_id)), [4.0]);
    }
}
