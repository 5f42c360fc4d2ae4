//! The generator as data: an ordered list of layers and the weights they name, the one
//! description that every export format is written from (the TorchScript trace, the ONNX
//! graph, the safetensors file and its Python module, `python/gandist_generator.py`).
//!
//! `of` is the one place that knows each architecture: a new `model.arch` is one more arm
//! there (and, for a layer kind not yet listed, one variant of `Layer` with its line in the
//! interpreter below, the ONNX writer and the Python module). Weights are taken as the
//! forward pass uses them, so a normalisation that rescales weights (spectral norm) is folded
//! into plain weights here. A test checks that running the list gives `Generator::forward`'s
//! output bit for bit.

use crate::config::Arch;
use crate::model::Generator;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// One layer. The weight of a layer named `n` is `n.weight`, its bias `n.bias`, shaped as
/// PyTorch's module of the same kind holds them, so that the names load into
/// `torch.nn.Linear` / `torch.nn.ConvTranspose2d` with `load_state_dict`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Layer {
    /// y = x W^T + b, W of shape (out_features, in_features).
    Linear { name: String, in_features: i64, out_features: i64 },
    /// PyTorch's ConvTranspose2d (square kernel, stride and padding), W of shape
    /// (in_channels, out_channels, kernel, kernel).
    ConvTranspose2d { name: String, in_channels: i64, out_channels: i64, kernel: i64, stride: i64, padding: i64, output_padding: i64 },
    Relu,
    Tanh,
    /// x.view(-1, *shape): the batch dimension first, then `shape`.
    Reshape { shape: Vec<i64> },
    /// x[:, :, :height, :width]: the top-left corner of each feature map.
    Crop { height: i64, width: i64 },
    /// Pixel norm (Karras et al. 2018): x * rsqrt(mean over channels of x^2 + eps).
    PixelNorm { eps: f64 },
}

/// A generator as layers and weights.
pub struct Graph {
    /// The architecture's name (`model.arch`).
    pub arch: String,
    pub layers: Vec<Layer>,
    /// Each layer's weights by name ("fc.weight"), detached, contiguous float32 on the CPU.
    pub weights: Vec<(String, Tensor)>,
    /// The noise width: input of shape (N, latent).
    pub latent: i64,
    /// One output image: (channels, height, width).
    pub image: [i64; 3],
}

/// The generator `g` as a graph: one arm per `model.arch`.
pub fn of(g: &Generator) -> Graph {
    let layers = match g.arch {
        Arch::Paper => paper_layers(g),
        Arch::Dcgan => dcgan_layers(g),
    };
    // No normalisation rescales these generators' weights (spectral norm is the critic's):
    // the weights are the parameters.
    let weights = g.params.names.iter().zip(&g.params.tensors).map(|(n, t)| (n.clone(), host_copy(t))).collect();
    let arch = serde_json::to_value(g.arch).ok().and_then(|v| v.as_str().map(String::from)).expect("an architecture serialises to its name");
    Graph { arch, layers, weights, latent: g.latent, image: [g.channels, g.side, g.side] }
}

/// The paper's generator (src/model/mod.rs): fc + ReLU, reshape to (4 dim, 4, 4), three
/// stride-2 5x5 transposed convolutions with padding 2 and output padding 1, the first
/// cropped from 8x8 to 7x7; ReLU between them, tanh at the end.
fn paper_layers(g: &Generator) -> Vec<Layer> {
    let d = g.dim;
    let deconv = |name: &str, cin: i64, cout: i64| Layer::ConvTranspose2d {
        name: name.into(),
        in_channels: cin,
        out_channels: cout,
        kernel: 5,
        stride: 2,
        padding: 2,
        output_padding: 1,
    };
    vec![
        Layer::Linear { name: "fc".into(), in_features: g.latent, out_features: 4 * 4 * 4 * d },
        Layer::Relu,
        Layer::Reshape { shape: vec![4 * d, 4, 4] },
        deconv("deconv1", 4 * d, 2 * d),
        Layer::Relu,
        Layer::Crop { height: 7, width: 7 },
        deconv("deconv2", 2 * d, d),
        Layer::Relu,
        deconv("deconv3", d, g.channels),
        Layer::Tanh,
    ]
}

/// The DCGAN family's generator (src/model/dcgan.rs): fc + ReLU, reshape to (w0, 4, 4), pixel
/// norm; then per doubling a stride-2 4x4 transposed convolution with padding 1, followed by
/// ReLU and pixel norm, or tanh after the last. Widths are read off the parameters' shapes.
fn dcgan_layers(g: &Generator) -> Vec<Layer> {
    let shape = |name: &str| g.params.shapes[g.params.names.iter().position(|n| n == name).unwrap_or_else(|| panic!("no {name}"))].clone();
    let fc = shape("fc.weight");
    let eps = crate::model::dcgan::PIXEL_NORM_EPS;
    let mut layers = vec![
        Layer::Linear { name: "fc".into(), in_features: fc[1], out_features: fc[0] },
        Layer::Relu,
        Layer::Reshape { shape: vec![fc[0] / 16, 4, 4] },
        Layer::PixelNorm { eps },
    ];
    let stages = g.params.names.iter().filter(|n| n.starts_with("deconv") && n.ends_with(".weight")).count();
    for i in 1..=stages {
        let name = format!("deconv{i}");
        let w = shape(&format!("{name}.weight"));
        layers.push(Layer::ConvTranspose2d { name, in_channels: w[0], out_channels: w[1], kernel: w[2], stride: 2, padding: 1, output_padding: 0 });
        if i < stages {
            layers.extend([Layer::Relu, Layer::PixelNorm { eps }]);
        } else {
            layers.push(Layer::Tanh);
        }
    }
    layers
}

/// A float32 copy on the CPU, through the one counted place where tensor data reaches the host.
fn host_copy(t: &Tensor) -> Tensor {
    let values = crate::hostread::vec_f32(&t.detach().to_kind(Kind::Float).flatten(0, -1)).expect("a parameter reads back");
    Tensor::from_slice(&values).view(t.size().as_slice())
}

impl Graph {
    /// The weight `name`, which `of` must have put there.
    pub fn weight(&self, name: &str) -> &Tensor {
        self.weights.iter().find(|(n, _)| n == name).map(|(_, t)| t).unwrap_or_else(|| panic!("the graph has no weight {name}"))
    }

    /// The layers run on `z` with libtorch, on the weights' device: what the TorchScript
    /// export traces, and the reference that the other formats' writers follow.
    pub fn forward(&self, z: &Tensor) -> Tensor {
        let mut x = z.shallow_clone();
        for layer in &self.layers {
            x = match layer {
                Layer::Linear { name, .. } => x.linear(self.weight(&format!("{name}.weight")), Some(self.weight(&format!("{name}.bias")))),
                Layer::ConvTranspose2d { name, stride, padding, output_padding, .. } => x.conv_transpose2d(
                    self.weight(&format!("{name}.weight")),
                    Some(self.weight(&format!("{name}.bias"))),
                    [*stride, *stride],
                    [*padding, *padding],
                    [*output_padding, *output_padding],
                    1,
                    [1, 1],
                ),
                Layer::Relu => x.relu(),
                Layer::Tanh => x.tanh(),
                Layer::Reshape { shape } => {
                    let mut s = vec![-1];
                    s.extend_from_slice(shape);
                    x.view(s.as_slice())
                }
                Layer::Crop { height, width } => x.narrow(2, 0, *height).narrow(3, 0, *width),
                Layer::PixelNorm { eps } => &x * (x.square().mean_dim(1, true, x.kind()) + *eps).rsqrt(),
            };
        }
        x
    }

    /// The weights' names and shapes in layer order, as each layer's kind holds them: a
    /// check that `of` gave every layer its weights with the shapes its fields say.
    pub fn check(&self) -> Result<(), String> {
        let mut expected: Vec<(String, Vec<i64>)> = Vec::new();
        for layer in &self.layers {
            match layer {
                Layer::Linear { name, in_features, out_features } => {
                    expected.push((format!("{name}.weight"), vec![*out_features, *in_features]));
                    expected.push((format!("{name}.bias"), vec![*out_features]));
                }
                Layer::ConvTranspose2d { name, in_channels, out_channels, kernel, .. } => {
                    expected.push((format!("{name}.weight"), vec![*in_channels, *out_channels, *kernel, *kernel]));
                    expected.push((format!("{name}.bias"), vec![*out_channels]));
                }
                _ => {}
            }
        }
        let got: Vec<(String, Vec<i64>)> = self.weights.iter().map(|(n, t)| (n.clone(), t.size())).collect();
        if got != expected {
            return Err(format!("the {} graph's weights are {got:?}, its layers expect {expected:?}", self.arch));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ImageShape;
    use tch::Device;

    /// The layer list is the generator: the same output, bit for bit (the same kernels on the
    /// same values), for every architecture, grey and colour, every DCGAN side tested in
    /// src/model/dcgan.rs; and its weights are named and shaped as the layers say.
    #[test]
    fn the_graph_computes_the_generators_forward() {
        let cases = [(Arch::Paper, 28, 1), (Arch::Paper, 28, 3), (Arch::Dcgan, 32, 1), (Arch::Dcgan, 64, 3), (Arch::Dcgan, 128, 3)];
        for (arch, side, channels) in cases {
            tch::manual_seed(3);
            let g = Generator::new(arch, 4, 8, ImageShape { channels, side }, Device::Cpu).unwrap();
            let graph = of(&g);
            graph.check().unwrap();
            assert_eq!(graph.arch, serde_json::to_value(arch).unwrap().as_str().unwrap());
            let z = Tensor::randn([5, 8], (Kind::Float, Device::Cpu));
            let want = tch::no_grad(|| g.forward(&z));
            let got = tch::no_grad(|| graph.forward(&z));
            assert_eq!(got.size(), vec![5, channels, side, side]);
            assert_eq!(graph.image, [channels, side, side]);
            assert!(got.equal(&want), "{arch:?} {side} px, {channels} channels: the graph differs from Generator::forward");
            // The graph holds copies: later training steps do not reach an export.
            tch::no_grad(|| {
                let _ = g.params.flat.shallow_clone().g_add_scalar_(1.0);
            });
            assert!(tch::no_grad(|| graph.forward(&z)).equal(&want));
        }
    }

    #[test]
    fn layers_serialise_with_their_kind() {
        let l = Layer::Crop { height: 7, width: 7 };
        assert_eq!(serde_json::to_string(&l).unwrap(), r#"{"op":"crop","height":7,"width":7}"#);
        let back: Layer = serde_json::from_str(r#"{"op":"relu"}"#).unwrap();
        assert_eq!(back, Layer::Relu);
    }
}
