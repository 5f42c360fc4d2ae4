//! The generator and the critic: the WGAN-GP paper's 28 x 28 MNIST networks (its reference
//! code's architecture, `model.arch = "paper"`) and the DCGAN family that scales with the
//! image side and channels (`model.arch = "dcgan"`, in `dcgan`), both with PyTorch's default
//! initialisation and parameters held in one flat buffer per network. (`Net` and `PerNet`, the
//! names of the two networks, live in the leaf module `crate::net` and are re-exported here.)

pub mod dcgan;
pub mod ema;
pub mod params;
pub mod spectral_norm;

use crate::config::{Arch, Config};
use anyhow::{bail, Result};
pub use crate::net::{Net, PerNet};
use params::{ParamBuilder, ParamSet};
use tch::{Device, Kind, Tensor};

/// The images a generator makes and a critic reads: channels, and the side of a square.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: i64,
    pub side: i64,
}

impl ImageShape {
    /// MNIST's digits.
    pub const MNIST: ImageShape = ImageShape { channels: 1, side: 28 };

    /// The images of the data `cfg` trains on.
    pub fn of(cfg: &Config) -> ImageShape {
        ImageShape { channels: cfg.data.dataset.channels(), side: PAPER_SIDE }
    }
}

/// Whether `arch` makes images of `shape`; the error says what it makes.
pub fn check_shape(arch: Arch, shape: ImageShape) -> Result<()> {
    match arch {
        Arch::Paper if shape.side != PAPER_SIDE => bail!(
            "model.arch = \"paper\" makes {PAPER_SIDE} x {PAPER_SIDE} images (the WGAN-GP paper's MNIST networks): the data's side is {} (use model.arch = \"dcgan\" for 32, 64 or 128, or data.resolution = {PAPER_SIDE})",
            shape.side
        ),
        Arch::Paper if shape.channels < 1 => bail!("the data has {} channels: expected at least 1", shape.channels),
        Arch::Paper => Ok(()),
        Arch::Dcgan => dcgan::check(shape),
    }
}

/// The paper's networks' image side.
pub const PAPER_SIDE: i64 = 28;

/// Slope of the critic's leaky ReLU, as in the paper's code.
pub const LEAKY_SLOPE: f64 = 0.2;

/// PyTorch's default bound for both weights and biases: 1/sqrt(fan_in).
fn bound(fan_in: i64) -> f64 {
    1.0 / (fan_in as f64).sqrt()
}

/// The generator. Paper: Linear(latent, 4*4*4*dim) + ReLU, then three stride-2 transposed
/// 5x5 convolutions 4x4 -> 8x8 (cropped to 7x7) -> 14x14 -> 28x28, then tanh for images in
/// [-1, 1]. DCGAN: see `dcgan`.
pub struct Generator {
    pub params: ParamSet,
    pub arch: Arch,
    pub dim: i64,
    pub latent: i64,
    /// Output image channels (1 for MNIST, 3 for stacked MNIST and colour images).
    pub channels: i64,
    /// Output image side.
    pub side: i64,
}

/// The critic. Paper: three stride-2 5x5 convolutions with leaky ReLU, 28 -> 14 -> 7 -> 4,
/// and a linear output. DCGAN: see `dcgan`. No batch norm: the gradient penalty is defined
/// per sample.
pub struct Critic {
    pub params: ParamSet,
    pub arch: Arch,
    pub dim: i64,
    /// Input image channels.
    pub channels: i64,
    slope: Tensor,
    /// Spectral normalisation of each weight (every `*.weight`: the convolutions and fc, not
    /// the biases), when enabled; in the order of `weights`.
    pub spectral: Option<Vec<spectral_norm::SpectralNorm>>,
    /// Indices of the weights (not biases) in the parameter list.
    weights: Vec<usize>,
    sn_iters: u32,
}

impl Generator {
    /// The generator `cfg` describes (`model.arch`, `generator.width`, `model.latent`, the
    /// data's image shape), its initial weights drawn from libtorch's global generator (seed
    /// it first).
    pub fn from_config(cfg: &Config, device: Device) -> Result<Self> {
        Generator::new(cfg.model.arch, cfg.generator.width, cfg.model.latent, ImageShape::of(cfg), device)
    }

    /// A generator of architecture `arch` and width `d` from `l`-dimensional noise to `shape`
    /// images. An error when `arch` does not make images of that shape.
    pub fn new(arch: Arch, d: i64, l: i64, shape: ImageShape, device: Device) -> Result<Self> {
        check_shape(arch, shape)?;
        let mut b = ParamBuilder::new(device);
        match arch {
            Arch::Paper => {
                b.uniform("fc.weight", &[4 * 4 * 4 * d, l], bound(l));
                b.uniform("fc.bias", &[4 * 4 * 4 * d], bound(l));
                // ConvTranspose2d's weight is (in, out, k, k); PyTorch takes fan_in = out * k * k.
                for (name, cin, cout) in [("deconv1", 4 * d, 2 * d), ("deconv2", 2 * d, d), ("deconv3", d, shape.channels)] {
                    b.uniform(&format!("{name}.weight"), &[cin, cout, 5, 5], bound(cout * 25));
                    b.uniform(&format!("{name}.bias"), &[cout], bound(cout * 25));
                }
            }
            Arch::Dcgan => dcgan::generator_params(&mut b, d, l, shape),
        }
        Ok(Generator { params: b.build(), arch, dim: d, latent: l, channels: shape.channels, side: shape.side })
    }

    /// The shape of the images it makes.
    pub fn shape(&self) -> ImageShape {
        ImageShape { channels: self.channels, side: self.side }
    }

    /// The same network with weights of its own, equal to these; draws nothing.
    pub fn copy(&self) -> Generator {
        Generator { params: self.params.copy(), ..*self }
    }

    pub fn forward(&self, z: &Tensor) -> Tensor {
        let p = &self.params.tensors;
        if self.arch == Arch::Dcgan {
            return dcgan::generator_forward(p, z);
        }
        let d = self.dim;
        let deconv = |x: &Tensor, w: &Tensor, b: &Tensor| {
            x.conv_transpose2d(w, Some(b), [2, 2], [2, 2], [1, 1], 1, [1, 1])
        };
        let x = z.linear(&p[0], Some(&p[1])).relu().view([-1, 4 * d, 4, 4]);
        let x = deconv(&x, &p[2], &p[3]).relu();
        let x = x.narrow(2, 0, 7).narrow(3, 0, 7);
        let x = deconv(&x, &p[4], &p[5]).relu();
        deconv(&x, &p[6], &p[7]).tanh()
    }
}

impl Critic {
    /// The critic `cfg` describes (`model.arch`, `critic.width`, its spectral norm, the data's
    /// image shape), its initial weights and spectral-norm vectors drawn from libtorch's global
    /// generator (seed it first).
    pub fn from_config(cfg: &Config, device: Device) -> Result<Self> {
        let c = &cfg.critic;
        Critic::new(cfg.model.arch, c.width, ImageShape::of(cfg), c.spectral_norm.then_some(c.sn_power_iterations), device)
    }

    /// A critic of architecture `arch` and width `d` for `shape` images, with spectral
    /// normalisation of `sn_iters` power iterations per update when given. An error when
    /// `arch` does not take images of that shape.
    pub fn new(arch: Arch, d: i64, shape: ImageShape, sn_iters: Option<u32>, device: Device) -> Result<Self> {
        check_shape(arch, shape)?;
        let mut b = ParamBuilder::new(device);
        match arch {
            Arch::Paper => {
                for (name, cin, cout) in [("conv1", shape.channels, d), ("conv2", d, 2 * d), ("conv3", 2 * d, 4 * d)] {
                    b.uniform(&format!("{name}.weight"), &[cout, cin, 5, 5], bound(cin * 25));
                    b.uniform(&format!("{name}.bias"), &[cout], bound(cin * 25));
                }
                b.uniform("fc.weight", &[1, 4 * 4 * 4 * d], bound(4 * 4 * 4 * d));
                b.uniform("fc.bias", &[1], bound(4 * 4 * 4 * d));
            }
            Arch::Dcgan => dcgan::critic_params(&mut b, d, shape),
        }
        let slope = Tensor::from_slice(&[LEAKY_SLOPE as f32]).to_device(device);
        let params = b.build();
        let weights: Vec<usize> = params.names.iter().enumerate().filter(|(_, n)| n.ends_with(".weight")).map(|(i, _)| i).collect();
        // Drawn after the weights, so that turning spectral norm on leaves the initial weights alone.
        let spectral = sn_iters.map(|_| weights.iter().map(|&i| spectral_norm::SpectralNorm::new(params.shapes[i][0], device)).collect());
        Ok(Critic { params, arch, dim: d, channels: shape.channels, slope, spectral, weights, sn_iters: sn_iters.unwrap_or(1) })
    }

    /// One round of power iteration per normalised weight (call once per update).
    pub fn power_iterate(&mut self) {
        if let Some(sn) = self.spectral.as_mut() {
            for (s, &i) in sn.iter_mut().zip(&self.weights) {
                s.power_iterate(&self.params.tensors[i], self.sn_iters);
            }
        }
    }

    /// The parameters as the forward pass uses them: weights divided by their spectral norm
    /// estimate when spectral normalisation is on.
    fn effective_params(&self) -> Vec<Tensor> {
        let mut p: Vec<Tensor> = self.params.tensors.iter().map(|t| t.shallow_clone()).collect();
        if let Some(sn) = &self.spectral {
            for (s, &i) in sn.iter().zip(&self.weights) {
                p[i] = s.normalized(&self.params.tensors[i]);
            }
        }
        p
    }

    /// Returns (features of the last convolution, flattened; critic output per sample).
    pub fn forward_features(&self, x: &Tensor) -> (Tensor, Tensor) {
        let p = &self.effective_params();
        if self.arch == Arch::Dcgan {
            return dcgan::critic_forward_features(p, &self.slope, x);
        }
        let conv = |x: &Tensor, w: &Tensor, b: &Tensor| x.conv2d(w, Some(b), [2, 2], [2, 2], [1, 1], 1);
        let x = conv(x, &p[0], &p[1]).prelu(&self.slope);
        let x = conv(&x, &p[2], &p[3]).prelu(&self.slope);
        let x = conv(&x, &p[4], &p[5]).prelu(&self.slope);
        let features = x.flatten(1, -1);
        let out = features.linear(&p[6], Some(&p[7])).view([-1]);
        (features, out)
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.forward_features(x).1
    }
}

/// Per-layer grouping of a network's parameters (weight and bias share a layer name).
pub fn layer_of(param_name: &str) -> &str {
    param_name.split('.').next().unwrap_or(param_name)
}

/// Converts generator output in [-1, 1] to bytes 0..255, in (n, channels, side, side) order.
pub fn to_bytes(images: &Tensor) -> Vec<u8> {
    // Rounded on the device: only bytes travel to the host.
    let t = images.detach().g_add_scalar(1.0).g_mul_scalar(127.5).round().clamp(0.0, 255.0).to_kind(Kind::Uint8);
    crate::hostread::bytes(&t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_ranges() {
        tch::manual_seed(0);
        let g = Generator::new(Arch::Paper, 8, 16, ImageShape::MNIST, Device::Cpu).unwrap();
        let d = Critic::new(Arch::Paper, 8, ImageShape::MNIST, None, Device::Cpu).unwrap();
        let x = g.forward(&Tensor::randn([3, 16], (Kind::Float, Device::Cpu)));
        assert_eq!(x.size(), vec![3, 1, 28, 28]);
        assert!(x.abs().max().double_value(&[]) <= 1.0);
        let (f, out) = d.forward_features(&x);
        assert_eq!(f.size(), vec![3, 4 * 4 * 4 * 8]);
        assert_eq!(out.size(), vec![3]);
    }

    #[test]
    fn three_channel_networks_for_stacked_mnist() {
        let stacked = ImageShape { channels: 3, side: 28 };
        let g = Generator::new(Arch::Paper, 4, 8, stacked, Device::Cpu).unwrap();
        let d = Critic::new(Arch::Paper, 4, stacked, None, Device::Cpu).unwrap();
        let x = g.forward(&Tensor::randn([2, 8], (Kind::Float, Device::Cpu)));
        assert_eq!(x.size(), vec![2, 3, 28, 28]);
        assert_eq!(d.forward(&x).size(), vec![2]);
        assert_eq!(d.params.get("conv1.weight").size(), vec![4, 3, 5, 5]);
        // A copy (the EMA generator's start) has the original's channels and values, and
        // storage of its own.
        let c = g.copy();
        assert_eq!(c.channels, 3);
        assert!(c.params.flat.equal(&g.params.flat));
        assert_eq!(c.forward(&Tensor::zeros([1, 8], (Kind::Float, Device::Cpu))).size(), vec![1, 3, 28, 28]);
        tch::no_grad(|| {
            let _ = c.params.flat.shallow_clone().g_add_scalar_(1.0);
        });
        assert!(!c.params.flat.equal(&g.params.flat));
    }

    #[test]
    fn parameters_are_views_of_the_flat_buffer() {
        tch::manual_seed(0);
        let d = Critic::new(Arch::Paper, 4, ImageShape::MNIST, None, Device::Cpu).unwrap();
        let before = d.params.get("fc.bias").double_value(&[0]);
        tch::no_grad(|| {
            let _ = d.params.flat.shallow_clone().g_add_scalar_(1.0);
        });
        let after = d.params.get("fc.bias").double_value(&[0]);
        assert!((after - before - 1.0).abs() < 1e-6);
        assert!(d.params.tensors.iter().all(|t| t.requires_grad()));
    }

    /// With spectral normalisation on, after enough power iterations every weight the forward
    /// pass uses has largest singular value 1 (checked by libtorch's SVD), and the raw weights
    /// (and so the initialisation) are the same as without it.
    #[test]
    fn spectral_norm_makes_each_critic_weight_1_lipschitz() {
        tch::manual_seed(5);
        let mut d = Critic::new(Arch::Paper, 4, ImageShape::MNIST, Some(50), Device::Cpu).unwrap();
        tch::manual_seed(5);
        let plain = Critic::new(Arch::Paper, 4, ImageShape::MNIST, None, Device::Cpu).unwrap();
        assert!(d.params.flat.equal(&plain.params.flat));
        d.power_iterate();
        let eff = d.effective_params();
        assert_eq!(d.weights, vec![0, 2, 4, 6], "conv1..3 and fc, as checkpoints number them");
        for &i in &d.weights {
            let (_, s, _) = eff[i].detach().flatten(1, -1).svd(true, true);
            let top = s.double_value(&[0]);
            assert!((top - 1.0).abs() < 1e-3, "weight {i}: top singular value {top}");
            let (_, s_raw, _) = d.params.tensors[i].detach().flatten(1, -1).svd(true, true);
            assert!((s_raw.double_value(&[0]) - 1.0).abs() > 1e-2, "the raw weight {i} is not already normalised");
        }
    }

    #[test]
    fn initialisation_matches_pytorch_bounds() {
        // PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the sample max approaches the bound.
        tch::manual_seed(1);
        let g = Generator::new(Arch::Paper, 16, 128, ImageShape::MNIST, Device::Cpu).unwrap();
        let w = g.params.get("fc.weight");
        let b = 1.0 / 128f64.sqrt();
        let m = w.abs().max().double_value(&[]);
        assert!(m <= b && m > 0.99 * b, "max |w| = {m}, bound {b}");
        let wt = g.params.get("deconv1.weight"); // (64, 32, 5, 5): fan_in = 32 * 25
        let bt = 1.0 / (32.0f64 * 25.0).sqrt();
        let mt = wt.abs().max().double_value(&[]);
        assert!(mt <= bt && mt > 0.99 * bt, "max |w| = {mt}, bound {bt}");
    }
}
