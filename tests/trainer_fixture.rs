//! The trainer keeps its trajectory: five short runs (tests/fixtures/trainer-v1, one per loss
//! kind, between them every technique, lazy penalties, EMA, clipping, skipped updates and a
//! rollback) give the parameters, optimizer state, counters, detectors and scalar-log records
//! that the trainer before the redesign wrote (the fixture's README has the commit and the
//! command). Bit for bit on a host whose arithmetic is the fixture writer's, to float rounding
//! elsewhere.
//!
//! Which of the two is decided by a calibration that does not involve gandist's trainer: a
//! small fixed computation with the libtorch operations a step uses, at the fixture runs'
//! shapes (the CPU generator's draws, linear, conv2d, conv_transpose2d, prelu, tanh, softplus,
//! the penalty's double backward, Adam's arithmetic, norms, spectral normalisation's power
//! iteration), whose bits the writer stored beside the fixture. libtorch picks kernels by
//! instruction set, so a CPU that sums in another order changes these bits too.
//!
//! `GANDIST_WRITE_FIXTURE=1 cargo test --test trainer_fixture -- --ignored write` rewrites the
//! fixture (only with the trainer it is meant to record; see the README).

mod common;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The runs, by the name of their configuration in the fixture folder.
const RUNS: [&str; 5] = ["wgan", "minimax", "non-saturating", "hinge", "least-squares"];

/// Scalar-log keys whose values are wall-clock measurements, not part of the trajectory.
const TIMING_KEYS: [&str; 3] = ["images_per_second", "elapsed_seconds", "eval_seconds"];

fn fixture_dir() -> PathBuf {
    repo().join("tests/fixtures/trainer-v1")
}

// ---- The calibration: libtorch's arithmetic on this host, without gandist ----

/// Deterministic values in [-scale, scale), from a hash of their index (no libtorch RNG).
fn fixed(shape: &[i64], salt: u64, scale: f32) -> Tensor {
    let n: i64 = shape.iter().product();
    let mut s = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_slice(&v).view(shape)
}

fn bits(ts: &[&Tensor]) -> String {
    let mut h = Sha256::new();
    for t in ts {
        let t = t.detach().to_kind(Kind::Float).contiguous().view([-1]);
        let v: Vec<f32> = Vec::<f32>::try_from(&t).unwrap();
        for x in v {
            h.update(x.to_le_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// The paper's networks at width 1 (the fixture runs' width) for `ch`-channel images.
struct Nets {
    g: Vec<Tensor>,
    d: Vec<Tensor>,
}

impl Nets {
    fn new(ch: i64, latent: i64) -> Nets {
        let leaf = |shape: &[i64], salt: u64, scale: f32| fixed(shape, salt, scale).set_requires_grad(true);
        let g = vec![
            leaf(&[64, latent], 1, 0.5),
            leaf(&[64], 2, 0.5),
            leaf(&[4, 2, 5, 5], 3, 0.14),
            leaf(&[2], 4, 0.14),
            leaf(&[2, 1, 5, 5], 5, 0.2),
            leaf(&[1], 6, 0.2),
            leaf(&[1, ch, 5, 5], 7, 0.2),
            leaf(&[ch], 8, 0.2),
        ];
        let d = vec![
            leaf(&[1, ch, 5, 5], 11, 0.2),
            leaf(&[1], 12, 0.2),
            leaf(&[2, 1, 5, 5], 13, 0.2),
            leaf(&[2], 14, 0.2),
            leaf(&[4, 2, 5, 5], 15, 0.14),
            leaf(&[4], 16, 0.14),
            leaf(&[1, 64], 17, 0.125),
            leaf(&[1], 18, 0.125),
        ];
        Nets { g, d }
    }

    fn generate(&self, z: &Tensor) -> Tensor {
        let p = &self.g;
        let deconv = |x: &Tensor, w: &Tensor, b: &Tensor| x.conv_transpose2d(w, Some(b), [2, 2], [2, 2], [1, 1], 1, [1, 1]);
        let x = z.linear(&p[0], Some(&p[1])).relu().view([-1, 4, 4, 4]);
        let x = deconv(&x, &p[2], &p[3]).relu().narrow(2, 0, 7).narrow(3, 0, 7);
        let x = deconv(&x, &p[4], &p[5]).relu();
        deconv(&x, &p[6], &p[7]).tanh()
    }

    fn critic(&self, x: &Tensor, weights: &[Tensor]) -> (Tensor, Tensor) {
        let slope = Tensor::from_slice(&[0.2f32]);
        let conv = |x: &Tensor, w: &Tensor, b: &Tensor| x.conv2d(w, Some(b), [2, 2], [2, 2], [1, 1], 1).prelu(&slope);
        let x = conv(x, &weights[0], &self.d[1]);
        let x = conv(&x, &weights[1], &self.d[3]);
        let features = conv(&x, &weights[2], &self.d[5]).flatten(1, -1);
        let out = features.linear(&weights[3], Some(&self.d[7])).view([-1]);
        (features, out)
    }
}

/// Adam's arithmetic as gandist's optimizer does it (moments by lerp and scale, bias
/// corrections from a float64 step count, addcdiv), then a select by a 0-dim condition.
fn adam(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, step: &Tensor, lr: f64, b1: f64, b2: f64) -> Vec<Tensor> {
    let m = m.lerp(g, 1.0 - b1);
    let v = v * b2 + g.square() * (1.0 - b2);
    let bias1 = Tensor::pow_scalar(b1, step).neg() + 1.0;
    let bias2 = (Tensor::pow_scalar(b2, step).neg() + 1.0).sqrt();
    let denom = v.sqrt() / bias2 + 1e-8;
    let new = p.addcdiv(&(&m * (bias1.reciprocal() * -lr)), &denom);
    let keep = Tensor::from(true);
    vec![new.where_self(&keep, p), m, v]
}

/// The calibration: each stage's output bits (SHA-256 of their float32 values).
fn calibration() -> BTreeMap<String, String> {
    tch::set_num_threads(1);
    let mut out = BTreeMap::new();
    tch::no_grad(|| {
        // libtorch's CPU generator: normal draws below and at its 16-value vector threshold,
        // uniform draws, in the fixture runs' sizes (noise, interpolation weights, init).
        tch::manual_seed(12345);
        let a = Tensor::randn([4, 4], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([4], (Kind::Float, Device::Cpu));
        let c = Tensor::rand([4, 1, 1, 1], (Kind::Float, Device::Cpu));
        let d = Tensor::empty([64, 4], (Kind::Float, Device::Cpu)).uniform_(-0.5, 0.5);
        let e = Tensor::randn([12, 4], (Kind::Float, Device::Cpu));
        out.insert("rng".to_string(), bits(&[&a, &b, &c, &d, &e]));
    });
    for ch in [1, 3] {
        let nets = Nets::new(ch, 4);
        let z = fixed(&[4, 4], 21, 2.0);
        let fake = nets.generate(&z);
        out.insert(format!("generator-{ch}"), bits(&[&fake]));
        let real = fixed(&[4, ch, 28, 28], 22, 1.0);
        // Spectral normalisation: power iteration on each critic weight, then W / sigma.
        let mut weights = Vec::new();
        let mut us = Vec::new();
        for (i, w) in [&nets.d[0], &nets.d[2], &nets.d[4], &nets.d[6]].into_iter().enumerate() {
            let wm = w.flatten(1, -1);
            let normalize = |v: &Tensor| v / (v.norm() + 1e-12);
            let mut u = normalize(&fixed(&[wm.size()[0]], 30 + i as u64, 1.0));
            tch::no_grad(|| {
                for _ in 0..2 {
                    let v = normalize(&wm.detach().tr().mv(&u));
                    u = normalize(&wm.detach().mv(&v));
                }
            });
            let v = tch::no_grad(|| normalize(&wm.tr().mv(&u)));
            let sigma = u.dot(&wm.mv(&v));
            weights.push(w / sigma);
            us.push(u);
        }
        out.insert(format!("spectral-{ch}"), bits(&weights.iter().chain(&us).collect::<Vec<_>>()));
        let (_, both) = nets.critic(&Tensor::cat(&[&real, &fake.detach()], 0), &weights);
        let (r, f) = (both.narrow(0, 0, 4), both.narrow(0, 4, 4));
        let bce = |x: &Tensor, t: f64| (x.softplus() - x * t).mean(None);
        let losses = [
            f.mean(None) - r.mean(None),
            bce(&r, 0.9) + bce(&f, 0.1),
            (-&f).softplus().mean(None),
            (-&r + 1.0).relu().mean(None) + (&f + 1.0).relu().mean(None),
            ((&r - 1.0).square().mean(None) + f.square().mean(None)) * 0.5,
        ];
        out.insert(format!("losses-{ch}"), bits(&losses.iter().collect::<Vec<_>>()));
        // The gradient penalty: input gradients with create_graph, their norms, then the
        // parameter gradient through the double backward.
        let eps = fixed(&[4, 1, 1, 1], 23, 0.5) + 0.5;
        let x_hat = (&eps * &real + (-&eps + 1.0) * fake.detach()).detach().set_requires_grad(true);
        let (_, out_hat) = nets.critic(&x_hat, &weights);
        let grad = &Tensor::run_backward(&[out_hat.sum(None)], &[&x_hat], true, true)[0];
        let norms = grad.flatten(1, -1).norm_scalaropt_dim(2, [1], false);
        let gp = (&norms - 1.0).square().mean(None) * 10.0 + norms.square().mean(None);
        let loss = &losses[0] + &gp;
        let d_grads = Tensor::run_backward(&[&loss], &nets.d, true, false);
        out.insert(format!("penalty-{ch}"), bits(&d_grads.iter().chain([&norms, &gp]).collect::<Vec<_>>()));
        // The generator's gradient through the critic, with feature matching.
        let (feat_fake, out_fake) = nets.critic(&fake, &weights);
        let (feat_real, _) = nets.critic(&real, &weights);
        let fm = (feat_real.detach().mean_dim([0i64].as_slice(), false, Kind::Float) - feat_fake.mean_dim([0i64].as_slice(), false, Kind::Float)).square().sum(Kind::Float);
        let g_loss = (-&out_fake).softplus().mean(None) + fm;
        let g_grads = Tensor::run_backward(&[&g_loss], &nets.g, false, false);
        out.insert(format!("generator-backward-{ch}"), bits(&g_grads.iter().collect::<Vec<_>>()));
        // After the reduction: the flat gradient, its flag, norms, clipping, L2, historical
        // average, Adam, weight clipping, EMA, each selected by a condition.
        tch::no_grad(|| {
            let flat = Tensor::cat(&d_grads.iter().map(|g| g.flatten(0, -1)).collect::<Vec<_>>(), 0);
            let params = Tensor::cat(&nets.d.iter().map(|p| p.detach().flatten(0, -1)).collect::<Vec<_>>(), 0);
            let nonfinite = flat.isfinite().logical_not().any().to_kind(Kind::Float);
            let flat = flat.nan_to_num(0.0, 0.0, 0.0);
            let mut offset = 0;
            let mut per_param = Vec::new();
            for p in &nets.d {
                let n = p.numel() as i64;
                per_param.push(flat.narrow(0, offset, n).norm());
                offset += n;
            }
            let per_param = Tensor::stack(&per_param, 0);
            let l2 = params.square().sum(Kind::Float);
            let mut g = &flat + &params * 2e-3;
            let mean = params.detach() * 0.5;
            let diff = &params - &mean;
            g += &diff * 2e-2;
            let hist = diff.square().sum(Kind::Float);
            let raw = g.norm();
            let g = g.clamp(-0.05, 0.05);
            let norm = g.norm();
            let over = norm.gt(0.01);
            let coef = (&norm + 1e-6).reciprocal() * 0.01;
            let coef = coef.where_self(&over, &coef.ones_like());
            let g = &g * &coef;
            let step = Tensor::ones([], (Kind::Double, Device::Cpu)) * 3.0;
            let m = &g * 0.3;
            let v = g.square() * 0.7;
            let stepped = adam(&params, &g, &m, &v, &step, 1e-3, 0.5, 0.9);
            let sgd = &params - &g * 0.05;
            let clamped = stepped[0].clamp(-0.1, 0.1);
            let ema = params.lerp(&stepped[0], 1.0 - 0.5f64.powf(0.5));
            let count = Tensor::from_slice(&[3.0f32]) + 1.0;
            let avg = mean.lerp_tensor(&stepped[0], &count.reciprocal());
            let figures = Tensor::cat(&[nonfinite.view([1]), raw.view([1]), norm.view([1]), (&norm * &coef).view([1]), l2.view([1]), hist.view([1]), per_param], 0);
            out.insert(format!("update-{ch}"), bits(&[&figures, &stepped[0], &stepped[1], &stepped[2], &sgd, &clamped, &ema, &avg]));
        });
    }
    out
}

// ---- The runs ----

/// The final checkpoint of a run (`dir`), its scalar log without timings.
struct Outcome {
    state: BTreeMap<String, Vec<f32>>,
    trainer: Value,
    log: Vec<Value>,
}

fn train(name: &str, run: &Path) -> Outcome {
    let cfg = fixture_dir().join(format!("{name}.toml"));
    let out = ok(&["train", "--config", cfg.to_str().unwrap(), "--data", mnist_dir().to_str().unwrap(), "--run-dir", run.to_str().unwrap()]);
    if name == "wgan" {
        // Its configuration is in the keys the fixture was written with: they still work, and
        // the user is told the new names.
        assert!(out.contains("config key optim.lr_d is deprecated") && out.contains("use critic.lr"), "{out}");
    }
    let (_, last) = gandist::checkpoint::list(&run.join("checkpoints")).into_iter().next().expect("a final checkpoint");
    read_outcome(&last, &run.join("metrics.jsonl"))
}

fn read_outcome(checkpoint: &Path, log: &Path) -> Outcome {
    let meta: Value = serde_json::from_slice(&std::fs::read(checkpoint.join("meta.json")).unwrap()).unwrap();
    let log = std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|l| {
            let mut r: serde_json::Map<String, Value> = serde_json::from_str(l).unwrap();
            for k in TIMING_KEYS {
                r.remove(k);
            }
            Value::Object(r)
        })
        .collect();
    Outcome { state: state(checkpoint), trainer: meta["trainer"].clone(), log }
}

/// Equal JSON; numbers to float rounding (`ROUNDING_TOLERANCE` relative to max(1, |x|))
/// unless `bits`, where they must be equal.
fn json_agrees(a: &Value, b: &Value, bits: bool) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if !bits => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= ROUNDING_TOLERANCE * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_agrees(x, y, bits)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_agrees(v, w, bits))),
        _ => a == b,
    }
}

/// Bits when every calibration stage matches the writer's; else, naming the stages that
/// differ, float rounding.
fn host_agreement() -> Agreement {
    let want: BTreeMap<String, String> = serde_json::from_slice(&std::fs::read(fixture_dir().join("calibration.json")).unwrap()).unwrap();
    let got = calibration();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "calibration stages");
    let differ: Vec<&String> = got.iter().filter(|(k, v)| want[*k] != **v).map(|(k, _)| k).collect();
    if differ.is_empty() {
        Agreement::Bits
    } else {
        eprintln!("this host's libtorch arithmetic differs from the fixture writer's in {differ:?}: comparing to float rounding");
        Agreement::Rounding
    }
}

#[test]
fn the_calibration_is_deterministic_and_sensitive() {
    let a = calibration();
    assert_eq!(a, calibration(), "the same computation twice");
    // One ulp in one input changes its stage: the hashes see every bit.
    let mut v: Vec<f32> = Vec::try_from(&fixed(&[3], 1, 1.0)).unwrap();
    let before = bits(&[&Tensor::from_slice(&v)]);
    v[2] = f32::from_bits(v[2].to_bits() + 1);
    assert_ne!(before, bits(&[&Tensor::from_slice(&v)]));
}

#[test]
fn the_trainer_reproduces_the_fixture_runs() {
    let how = host_agreement();
    let tmp = tempfile::tempdir().unwrap();
    for name in RUNS {
        let got = train(name, &tmp.path().join(name));
        let want = read_outcome(&fixture_dir().join(name), &fixture_dir().join(name).join("metrics.jsonl"));
        assert_states_agree(&got.state, &want.state, how, name);
        let bits = how == Agreement::Bits;
        // Counters are integers (and the learning-rate scale a power of 2): exact everywhere.
        assert_eq!(got.trainer["counters"], want.trainer["counters"], "{name}: counters");
        assert!(json_agrees(&got.trainer["health"], &want.trainer["health"], bits), "{name}: detectors {} against {}", got.trainer["health"], want.trainer["health"]);
        assert_eq!(got.log.len(), want.log.len(), "{name}: scalar-log records");
        for (i, (g, w)) in got.log.iter().zip(&want.log).enumerate() {
            let (gk, wk): (Vec<&String>, Vec<&String>) = (g.as_object().unwrap().keys().collect(), w.as_object().unwrap().keys().collect());
            assert_eq!(gk, wk, "{name}: keys of scalar-log record {i}");
            assert!(json_agrees(g, w, bits), "{name}: scalar-log record {i}:\n{g}\nagainst the fixture's\n{w}");
        }
    }
}

/// Rewrites the fixture from this build (see the module's comment and the README).
#[test]
#[ignore]
fn write() {
    if std::env::var_os("GANDIST_WRITE_FIXTURE").is_none() {
        eprintln!("set GANDIST_WRITE_FIXTURE=1 to rewrite {}", fixture_dir().display());
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for name in RUNS {
        let run = tmp.path().join(name);
        train(name, &run);
        let (_, last) = gandist::checkpoint::list(&run.join("checkpoints")).into_iter().next().unwrap();
        let dst = fixture_dir().join(name);
        std::fs::create_dir_all(&dst).unwrap();
        for f in ["meta.json", "state.safetensors"] {
            std::fs::copy(last.join(f), dst.join(f)).unwrap();
        }
        let log: Vec<String> = read_outcome(&last, &run.join("metrics.jsonl")).log.iter().map(|r| r.to_string()).collect();
        std::fs::write(dst.join("metrics.jsonl"), log.join("\n") + "\n").unwrap();
    }
    let cal = serde_json::to_string_pretty(&calibration()).unwrap();
    std::fs::write(fixture_dir().join("calibration.json"), cal + "\n").unwrap();
}
