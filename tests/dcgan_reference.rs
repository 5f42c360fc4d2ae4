//! The DCGAN networks against an independent PyTorch implementation (tests/reference/dcgan.py,
//! torch.nn layers in the torch 2.11.0 venv): the same parameters and inputs give the same
//! images, critic features and outputs, and the same gradient of the gradient penalty with
//! respect to every critic parameter (the double backward), at 32 px in colour and 64 px in
//! grey. About 5 s.

mod common;
use gandist::config::Arch;
use gandist::model::{Critic, Generator, ImageShape};
use safetensors::tensor::{Dtype, TensorView};
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// The torch venv's python (launch/env.sh and launch/setup.sh make it).
fn python() -> PathBuf {
    let venv = std::env::var_os("GANDIST_TORCH_VENV").map(PathBuf::from).expect("GANDIST_TORCH_VENV is not set: source launch/env.sh (the reference check needs torch from the venv)");
    let py = venv.join("bin/python");
    assert!(py.exists(), "{} not found: run launch/setup.sh", py.display());
    py
}

fn bytes(t: &Tensor) -> Vec<u8> {
    let v: Vec<f32> = Vec::try_from(t.detach().to_kind(Kind::Float).flatten(0, -1)).unwrap();
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes gandist's parameters, inputs and outputs for one shape into `dir`.
fn case(dir: &std::path::Path, shape: ImageShape, dim: i64, latent: i64, seed: i64) -> PathBuf {
    tch::manual_seed(seed);
    let g = Generator::new(Arch::Dcgan, dim, latent, shape, Device::Cpu).unwrap();
    let d = Critic::new(Arch::Dcgan, dim, shape, None, Device::Cpu).unwrap();
    let z = Tensor::randn([3, latent], (Kind::Float, Device::Cpu));
    let x = Tensor::rand([3, shape.channels, shape.side, shape.side], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let images = tch::no_grad(|| g.forward(&z));
    let (features, out) = tch::no_grad(|| d.forward_features(&x));
    let xr = x.shallow_clone().set_requires_grad(true);
    let gx = Tensor::run_backward(&[d.forward(&xr).sum(Kind::Float)], &[&xr], true, true).pop().unwrap();
    let grads = Tensor::run_backward(&[gx.square().sum(Kind::Float)], &d.params.tensors, false, false);
    let mut tensors: Vec<(String, Tensor)> = vec![("z".into(), z), ("x".into(), x), ("images".into(), images), ("features".into(), features), ("out".into(), out)];
    tensors.extend(g.params.names.iter().zip(&g.params.tensors).map(|(n, t)| (format!("generator.{n}"), t.detach())));
    tensors.extend(d.params.names.iter().zip(&d.params.tensors).map(|(n, t)| (format!("critic.{n}"), t.detach())));
    for ((n, p), gr) in d.params.names.iter().zip(&d.params.tensors).zip(grads) {
        tensors.push((format!("penalty_grad.{n}"), if gr.defined() { gr } else { p.zeros_like() }));
    }
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors.iter().map(|(n, t)| (n.clone(), t.size().iter().map(|&s| s as usize).collect(), bytes(t))).collect();
    let views: Vec<(String, TensorView)> = data.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
    let file = dir.join(format!("case-{}.safetensors", shape.side));
    std::fs::write(&file, safetensors::serialize(views, &None).unwrap()).unwrap();
    file
}

#[test]
fn dcgan_matches_pytorch_in_forward_and_penalty_gradient() {
    let tmp = tempfile::tempdir().unwrap();
    // Width 4 at least: with 2 channels, pixel norm of near-zero activations is so
    // ill-conditioned that PyTorch's own float32 result is 3e-5 from its float64 one.
    let files = [case(tmp.path(), ImageShape { channels: 3, side: 32 }, 4, 8, 1), case(tmp.path(), ImageShape { channels: 1, side: 64 }, 4, 5, 2)];
    let o = Command::new(python()).arg(common::repo().join("tests/reference/dcgan.py")).args(&files).output().unwrap();
    let t = common::text(&o);
    assert!(o.status.success(), "PyTorch disagrees with gandist:\n{t}");
    // G(z), features, D(x), and 10 + 12 penalty gradients (conv1..3 + fc, conv1..4 + fc).
    assert_eq!(t.matches(") ok").count(), 2 * 3 + 8 + 10, "{t}");
}
