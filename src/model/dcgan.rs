//! The DCGAN family (Radford et al. 2016) for square images of side 16 to 256 (a power of
//! two) and 1 or 3 channels, without batch statistics.
//!
//! Generator: Linear(latent, w0 x 4 x 4), then one stride-2 4x4 transposed convolution per
//! doubling up to the image side, ReLU and pixel norm after every hidden layer, tanh at the
//! end. Critic: one stride-2 4x4 convolution per halving down to 4 x 4, leaky ReLU (0.2)
//! after each, then Linear(w x 4 x 4, 1); its features (for feature matching) are the last
//! convolution's output, flattened. Widths follow DCGAN: `dim` channels at the largest hidden
//! resolution, doubling per halving of the resolution, capped at 8 x dim.
//!
//! No batch norm anywhere: world-size invariance needs each sample's output to depend on that
//! sample alone (a batch statistic would depend on how the global batch is cut into ranks),
//! and the per-sample gradient penalties differentiate D at single points. The generator
//! uses pixel norm (Karras et al. 2018: each pixel's feature vector scaled to unit mean
//! square), which has no parameters and acts within a sample. The critic has no
//! normalisation: the penalties and spectral norm are what bound its slope, and a layer norm
//! would rescale activations outside the bound that spectral norm gives (the paper's critic
//! has none either).
//!
//! Parameters are laid out as PyTorch would name them (`fc`, `deconv1`..`deconvN`;
//! `conv1`..`convN`, `fc`) and drawn with PyTorch's default initialisation, like the paper's
//! networks in `super`. The forward passes are functions of the parameter tensors, so that a
//! test can run them in float64.

use super::params::ParamBuilder;
use super::{bound, ImageShape};
use anyhow::{bail, Result};
use tch::Tensor;

/// Smallest and largest image side.
pub const MIN_SIDE: i64 = 16;
pub const MAX_SIDE: i64 = 256;
/// Kernel size of every (transposed) convolution: stride 2 and padding 1 double or halve the side.
const K: i64 = 4;
/// Pixel norm's epsilon, as in Karras et al.
pub const PIXEL_NORM_EPS: f64 = 1e-8;
/// Widths stop doubling at this multiple of `dim`.
const MAX_WIDTH_FACTOR: i64 = 8;

/// Whether the family makes images of this shape; the error names what it can make.
pub fn check(shape: ImageShape) -> Result<()> {
    let s = shape.side;
    if !(MIN_SIDE..=MAX_SIDE).contains(&s) || (s as u64).count_ones() != 1 {
        bail!("model.arch = \"dcgan\" makes square images whose side is a power of two from {MIN_SIDE} to {MAX_SIDE} (32, 64, 128, ...): the data's side is {s} (set data.resolution)");
    }
    if shape.channels != 1 && shape.channels != 3 {
        bail!("model.arch = \"dcgan\" makes images of 1 or 3 channels: the data has {}", shape.channels);
    }
    Ok(())
}

/// Doublings from 4 x 4 to the image side.
fn stages(side: i64) -> i64 {
    (side / 4).trailing_zeros() as i64
}

/// Width of the generator's feature map at 4 x 2^i (i = 0 is 4 x 4), of `n` stages.
fn generator_width(dim: i64, n: i64, i: i64) -> i64 {
    dim * (1i64 << (n - 1 - i)).min(MAX_WIDTH_FACTOR)
}

/// Width of the critic's feature map after its j-th convolution (side / 2^j), j = 1..=n.
fn critic_width(dim: i64, j: i64) -> i64 {
    dim * (1i64 << (j - 1)).min(MAX_WIDTH_FACTOR)
}

/// The generator's parameters, in forward order (call `check` first).
pub(super) fn generator_params(b: &mut ParamBuilder, dim: i64, latent: i64, shape: ImageShape) {
    let n = stages(shape.side);
    let w0 = generator_width(dim, n, 0);
    b.uniform("fc.weight", &[w0 * 16, latent], bound(latent));
    b.uniform("fc.bias", &[w0 * 16], bound(latent));
    for i in 1..=n {
        let cin = generator_width(dim, n, i - 1);
        let cout = if i == n { shape.channels } else { generator_width(dim, n, i) };
        // ConvTranspose2d's weight is (in, out, k, k); PyTorch takes fan_in = out * k * k.
        b.uniform(&format!("deconv{i}.weight"), &[cin, cout, K, K], bound(cout * K * K));
        b.uniform(&format!("deconv{i}.bias"), &[cout], bound(cout * K * K));
    }
}

/// The critic's parameters, in forward order (call `check` first).
pub(super) fn critic_params(b: &mut ParamBuilder, dim: i64, shape: ImageShape) {
    let n = stages(shape.side);
    for j in 1..=n {
        let cin = if j == 1 { shape.channels } else { critic_width(dim, j - 1) };
        let cout = critic_width(dim, j);
        b.uniform(&format!("conv{j}.weight"), &[cout, cin, K, K], bound(cin * K * K));
        b.uniform(&format!("conv{j}.bias"), &[cout], bound(cin * K * K));
    }
    let features = critic_width(dim, n) * 16;
    b.uniform("fc.weight", &[1, features], bound(features));
    b.uniform("fc.bias", &[1], bound(features));
}

/// Each pixel's feature vector (dimension 1) divided by its root mean square.
pub fn pixel_norm(x: &Tensor) -> Tensor {
    x * (x.square().mean_dim(1, true, x.kind()) + PIXEL_NORM_EPS).rsqrt()
}

/// The generator on noise `z` (b, latent), with parameters `p` as `generator_params` lays
/// them out: images (b, channels, side, side) in [-1, 1].
pub fn generator_forward(p: &[Tensor], z: &Tensor) -> Tensor {
    let layers = p.len() / 2;
    let w0 = p[1].size()[0] / 16;
    let mut x = pixel_norm(&z.linear(&p[0], Some(&p[1])).relu().view([-1, w0, 4, 4]));
    for l in 1..layers {
        x = x.conv_transpose2d(&p[2 * l], Some(&p[2 * l + 1]), [2, 2], [1, 1], [0, 0], 1, [1, 1]);
        x = if l + 1 < layers { pixel_norm(&x.relu()) } else { x.tanh() };
    }
    x
}

/// The critic on images `x`, with parameters `p` as `critic_params` lays them out and the
/// leaky ReLU's slope as a one-element tensor of `x`'s kind: (features of the last
/// convolution, flattened; one output per sample).
pub fn critic_forward_features(p: &[Tensor], slope: &Tensor, x: &Tensor) -> (Tensor, Tensor) {
    let convs = p.len() / 2 - 1;
    let mut x = x.shallow_clone();
    for j in 0..convs {
        x = x.conv2d(&p[2 * j], Some(&p[2 * j + 1]), [2, 2], [1, 1], [1, 1], 1).prelu(slope);
    }
    let features = x.flatten(1, -1);
    let out = features.linear(&p[2 * convs], Some(&p[2 * convs + 1])).view([-1]);
    (features, out)
}

#[cfg(test)]
mod tests {
    use super::super::{Arch, Critic, Generator};
    use super::*;
    use tch::{Device, Kind};

    /// A network pair's settings: architecture, width, noise size, spectral norm.
    #[derive(Clone, Copy)]
    struct Cfg {
        arch: Arch,
        dim: i64,
        latent: i64,
        sn_iters: Option<u32>,
    }

    fn cfg(dim: i64, latent: i64, spectral_norm: bool) -> Cfg {
        Cfg { arch: Arch::Dcgan, dim, latent, sn_iters: spectral_norm.then_some(50) }
    }

    fn generator(c: &Cfg, shape: ImageShape) -> anyhow::Result<Generator> {
        Generator::new(c.arch, c.dim, c.latent, shape, Device::Cpu)
    }

    fn critic(c: &Cfg, shape: ImageShape) -> anyhow::Result<Critic> {
        Critic::new(c.arch, c.dim, shape, c.sn_iters, Device::Cpu)
    }

    /// Output and feature shapes at 32, 64 and 128 px, grey and colour; widths as DCGAN's
    /// (dim at the largest hidden resolution, doubling, capped at 8 x dim).
    #[test]
    fn shapes_scale_with_side_and_channels() {
        tch::manual_seed(0);
        for side in [32i64, 64, 128] {
            for channels in [1i64, 3] {
                let shape = ImageShape { channels, side };
                let g = generator(&cfg(4, 8, false), shape).unwrap();
                let d = critic(&cfg(4, 8, false), shape).unwrap();
                let x = g.forward(&Tensor::randn([2, 8], (Kind::Float, Device::Cpu)));
                assert_eq!(x.size(), vec![2, channels, side, side]);
                assert!(x.abs().max().double_value(&[]) <= 1.0);
                let (f, out) = d.forward_features(&x);
                let last = 4 * (1i64 << (stages(side) - 1)).min(8);
                assert_eq!(f.size(), vec![2, last * 16], "side {side}");
                assert_eq!(out.size(), vec![2]);
                assert_eq!(g.params.get(&format!("deconv{}.weight", stages(side))).size(), vec![4, channels, 4, 4]);
                assert_eq!(d.params.get("conv1.weight").size(), vec![4, channels, 4, 4]);
            }
        }
        // 64 px, dim 8: 64 channels at 4 x 4 (8 x dim), then 32, 16, 8, and the image.
        let g = generator(&cfg(8, 8, false), ImageShape { channels: 3, side: 64 }).unwrap();
        let widths: Vec<i64> = (1..=4).map(|i| g.params.get(&format!("deconv{i}.weight")).size()[0]).collect();
        assert_eq!(widths, vec![64, 32, 16, 8]);
        assert_eq!(g.params.get("fc.weight").size(), vec![64 * 16, 8]);
        // 128 px: the cap holds the first two widths at 8 x dim.
        let d = critic(&cfg(2, 8, false), ImageShape { channels: 1, side: 128 }).unwrap();
        let widths: Vec<i64> = (1..=5).map(|j| d.params.get(&format!("conv{j}.weight")).size()[0]).collect();
        assert_eq!(widths, vec![2, 4, 8, 16, 16]);
    }

    #[test]
    fn unsupported_shapes_are_named() {
        for (side, channels, want) in [(28, 1, "side is 28"), (48, 3, "side is 48"), (512, 3, "side is 512"), (32, 2, "1 or 3 channels")] {
            let e = generator(&cfg(2, 4, false), ImageShape { channels, side }).err().unwrap();
            assert!(format!("{e}").contains(want), "{e}");
            assert!(critic(&cfg(2, 4, false), ImageShape { channels, side }).is_err());
        }
        // The paper's networks make 28 x 28 images only.
        let paper = Cfg { arch: Arch::Paper, ..cfg(2, 4, false) };
        let e = generator(&paper, ImageShape { channels: 3, side: 32 }).err().unwrap();
        assert!(format!("{e}").contains("model.arch = \"paper\" makes 28 x 28") && format!("{e}").contains("side is 32"), "{e}");
    }

    /// PyTorch's defaults: every weight and bias in U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in
    /// = in x k x k for a convolution and out x k x k for a transposed one; with thousands of
    /// draws the sample maximum comes within 2% of the bound.
    #[test]
    fn initialisation_matches_pytorch_bounds() {
        tch::manual_seed(3);
        let shape = ImageShape { channels: 3, side: 32 };
        let g = generator(&cfg(16, 64, false), shape).unwrap();
        let d = critic(&cfg(16, 64, false), shape).unwrap();
        // Linear (out, in): fan_in = in; Conv2d (out, in, k, k) and ConvTranspose2d (in, out,
        // k, k): dimension 1 times k x k.
        let fan_in = |s: &[i64]| if s.len() == 4 { s[1] * s[2] * s[3] } else { s[1] };
        for (net, params) in [("g", &g.params), ("d", &d.params)] {
            for (name, t) in params.names.iter().zip(&params.tensors) {
                let layer = name.split('.').next().unwrap();
                let weight = params.get(&format!("{layer}.weight")).size();
                let f = fan_in(&weight) as f64;
                let b = 1.0 / f.sqrt();
                let m = t.abs().max().double_value(&[]);
                assert!(m <= b, "{net} {name}: max |w| {m} over the bound {b}");
                if t.numel() >= 1000 {
                    assert!(m > 0.98 * b, "{net} {name}: max |w| {m}, bound {b}");
                }
            }
        }
        // The generator's transposed convolutions use out x k x k: deconv1 of 32 px at dim 16
        // is (64, 32, 4, 4), so fan_in 512, not 1024.
        let m = g.params.get("deconv1.weight").abs().max().double_value(&[]);
        assert!(m > 0.98 / 512f64.sqrt() && m <= 1.0 / 512f64.sqrt());
    }

    /// Spectral norm covers every critic weight (not the biases): after enough power
    /// iterations each weight the forward pass uses has largest singular value 1 (libtorch's
    /// SVD), and turning it on leaves the initial weights alone.
    #[test]
    fn spectral_norm_normalises_every_critic_weight() {
        let shape = ImageShape { channels: 3, side: 64 };
        tch::manual_seed(5);
        let mut d = critic(&cfg(4, 8, true), shape).unwrap();
        tch::manual_seed(5);
        let plain = critic(&cfg(4, 8, false), shape).unwrap();
        assert!(d.params.flat.equal(&plain.params.flat));
        let weights: Vec<&String> = d.params.names.iter().filter(|n| n.ends_with(".weight")).collect();
        assert_eq!(weights.len(), 5, "conv1..conv4 and fc");
        assert_eq!(d.spectral.as_ref().unwrap().len(), 5);
        d.power_iterate();
        let eff = d.effective_params();
        for (i, name) in d.params.names.iter().enumerate() {
            if name.ends_with(".weight") {
                let (_, s, _) = eff[i].detach().flatten(1, -1).svd(true, true);
                let top = s.double_value(&[0]);
                assert!((top - 1.0).abs() < 1e-3, "{name}: top singular value {top}");
            } else {
                assert!(eff[i].equal(&d.params.tensors[i]), "{name} is not normalised");
            }
        }
    }

    /// Pixel norm's closed form: every pixel's channel vector has mean square 1 afterwards
    /// (to the epsilon), and its direction is unchanged.
    #[test]
    fn pixel_norm_gives_unit_mean_square_per_pixel() {
        tch::manual_seed(1);
        let x = Tensor::randn([3, 5, 4, 4], (Kind::Double, Device::Cpu)) * 7.0;
        let y = pixel_norm(&x);
        let ms = y.square().mean_dim(1, false, Kind::Double);
        assert!((ms - 1.0).abs().max().double_value(&[]) < 1e-9);
        let cos = (&x * &y).sum_dim_intlist(1, false, Kind::Double) / (x.norm_scalaropt_dim(2.0, [1], false) * y.norm_scalaropt_dim(2.0, [1], false));
        assert!((cos - 1.0).abs().max().double_value(&[]) < 1e-12);
    }

    /// The penalty's second-order path through both networks, against central finite
    /// differences in float64: for f(theta) = ||grad_x D(x)||^2 (the critic's gradient
    /// penalty at x) and g(phi) = sum D(G_phi(z)) (the generator's loss path), the directional
    /// derivative along a random v computed by (double) backward equals (f(theta + h v) -
    /// f(theta - h v)) / 2h. Step 1e-7 in float64: the leaky ReLUs make the penalty jump
    /// where a pre-activation crosses zero (its input gradient changes there), and a step this
    /// small makes crossing one improbable; the rounding error (about 1e-16 |f| / h = 1e-9
    /// relative) is far under the 1e-6 tolerance (measured: 2e-10 and 4e-10).
    #[test]
    fn gradients_through_both_networks_match_finite_differences() {
        tch::manual_seed(11);
        let shape = ImageShape { channels: 3, side: 32 };
        let g = generator(&cfg(3, 6, false), shape).unwrap();
        let d = critic(&cfg(3, 6, false), shape).unwrap();
        let dbl = |ts: &[Tensor]| -> Vec<Tensor> { ts.iter().map(|t| t.detach().to_kind(Kind::Double).set_requires_grad(true)).collect() };
        let (gp, dp) = (dbl(&g.params.tensors), dbl(&d.params.tensors));
        let slope = Tensor::from_slice(&[0.2f64]);
        let x = Tensor::randn([2, 3, 32, 32], (Kind::Double, Device::Cpu));
        let z = Tensor::randn([2, 6], (Kind::Double, Device::Cpu));
        let penalty = |p: &[Tensor]| -> Tensor {
            let xr = x.shallow_clone().set_requires_grad(true);
            let out = critic_forward_features(p, &slope, &xr).1;
            let gx = Tensor::run_backward(&[out.sum(Kind::Double)], &[&xr], true, true).pop().unwrap();
            gx.square().sum(Kind::Double)
        };
        let through_g = |p: &[Tensor]| -> Tensor { critic_forward_features(&dp, &slope, &generator_forward(p, &z)).1.sum(Kind::Double) };
        for (params, f) in [(&dp, &penalty as &dyn Fn(&[Tensor]) -> Tensor), (&gp, &through_g)] {
            let v: Vec<Tensor> = params.iter().map(|t| Tensor::randn_like(t)).collect();
            let grads = Tensor::run_backward(&[f(params)], &params.iter().collect::<Vec<_>>(), false, false);
            // The penalty does not depend on the output bias: its gradient is undefined (zero).
            let analytic: f64 = grads.iter().zip(&v).filter(|(g, _)| g.defined()).map(|(g, v)| (g * v).sum(Kind::Double).double_value(&[])).sum();
            let h = 1e-7;
            let shifted = |s: f64| -> f64 {
                let p: Vec<Tensor> = params.iter().zip(&v).map(|(t, v)| (t.detach() + v * s).set_requires_grad(true)).collect();
                f(&p).double_value(&[])
            };
            let numeric = (shifted(h) - shifted(-h)) / (2.0 * h);
            assert!((analytic - numeric).abs() <= 1e-6 * analytic.abs().max(1.0), "analytic {analytic} vs finite differences {numeric}");
        }
    }
}
