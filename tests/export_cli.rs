//! `gandist export` and `gandist sample --noise`, judged by the tools users load the files
//! with: torch.jit.load, onnx.checker and onnxruntime, safetensors into the shipped PyTorch
//! module (python/gandist_generator.py), pytorch-fid's image loading. Every check runs on
//! one short training run shared by the tests of this file (6 iterations of configs/smoke.toml,
//! under a second), read by tests/python/check_export.py.
//!
//! Python's start (torch, torchvision) costs seconds, so one process reads every file the tests
//! of this file make (`checked`), reporting on each separately.
//!
//! The reference is gandist's own output for the same noise (`sample --noise --format npy`).
//! Tolerances: 1e-5 for TorchScript and safetensors (libtorch's kernels on the same values:
//! the differences seen are 0 to a few 1e-8 through tanh), 1e-4 for onnxruntime (its own
//! convolution and GEMM kernels sum in other orders; seen: about 5e-8). Each check also
//! reports the distance to the other weights' output (EMA against raw), which must be far
//! larger than the tolerance, so that a comparison that passes is one that could have failed.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The shared run: a run directory with an EMA generator, noise z.npy (7 x 16, a batch size
/// other than the one the TorchScript trace used), and gandist's output for it with EMA
/// (ema.npy) and raw (raw.npy) weights.
struct Shared {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let run = root.join("run");
        // A high learning rate and a short EMA half-life, so that the EMA and raw generators
        // differ clearly after 6 iterations.
        ok(&[
            "train",
            "--config",
            smoke_config().to_str().unwrap(),
            "--data",
            mnist_dir().to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
            "--set",
            "ema.half_life_steps=2",
            "--set",
            "generator.lr=5e-3",
            "--set",
            "critic.lr=5e-3",
        ]);
        tch::manual_seed(11);
        let z = tch::Tensor::randn([7, 16], (tch::Kind::Float, tch::Device::Cpu));
        let values: Vec<f32> = Vec::<f32>::try_from(z.flatten(0, -1)).unwrap();
        gandist::npy::write_f32(&root.join("z.npy"), &[7, 16], &values).unwrap();
        for (weights, out) in [("ema", "ema.npy"), ("raw", "raw.npy")] {
            let o = ok_s(&sample_args(&root, &["--noise", "z.npy", "--format", "npy", "--weights", weights, "--out", out]));
            assert!(o.contains("wrote 7 samples") && o.contains("noise"), "{o}");
        }
        Shared { _dir: dir, root }
    })
}

/// `gandist sample --checkpoint RUN` with paths relative to `root` made absolute.
fn sample_args(root: &Path, rest: &[&str]) -> Vec<String> {
    let mut v = vec!["sample".to_string(), "--checkpoint".into(), root.join("run").display().to_string()];
    let mut abs = false;
    for a in rest {
        v.push(if abs { root.join(a).display().to_string() } else { a.to_string() });
        abs = matches!(*a, "--noise" | "--out");
    }
    v
}

fn ok_s(args: &[String]) -> String {
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn fails_s(args: &[String], needles: &[&str]) -> String {
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), needles)
}

fn ok_sample(root: &Path, rest: &[&str]) -> String {
    ok_s(&sample_args(root, rest))
}

/// The torch venv's python (launch/env.sh sets GANDIST_TORCH_VENV; the set-up made it).
fn python() -> PathBuf {
    let venv = std::env::var_os("GANDIST_TORCH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/gandist/torch-2.11.0"));
    let py = venv.join("bin/python");
    assert!(py.exists(), "no python at {} (run launch/setup.sh and launch/test-tools.sh)", py.display());
    py
}

/// What the exports printed, and the Python reports on every file.
struct Checked {
    printed: std::collections::BTreeMap<&'static str, String>,
    reports: std::collections::BTreeMap<&'static str, Value>,
}

/// The exports (each format, and safetensors with raw weights), a PNG folder of z's samples,
/// and one Python process that reads them all.
fn checked() -> &'static Checked {
    static CHECKED: OnceLock<Checked> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let s = shared();
        let run = s.root.join("run");
        let p = |f: &str| s.root.join(f).display().to_string();
        let mut printed = std::collections::BTreeMap::new();
        let mut checks = Vec::new();
        for (name, format, file, weights, reference, other) in [
            ("torchscript", "torchscript", "g.pt", "auto", "ema.npy", "raw.npy"),
            ("onnx", "onnx", "g.onnx", "auto", "ema.npy", "raw.npy"),
            ("safetensors", "safetensors", "g.safetensors", "auto", "ema.npy", "raw.npy"),
            ("safetensors-raw", "safetensors", "raw.safetensors", "raw", "raw.npy", "ema.npy"),
        ] {
            let out = ok(&["export", "--checkpoint", run.to_str().unwrap(), "--format", format, "--weights", weights, "--out", &p(file)]);
            printed.insert(name, out);
            checks.push(serde_json::json!({"kind": format, "file": p(file), "z": p("z.npy"), "ref": p(reference), "other": p(other)}));
        }
        let o = ok_sample(&s.root, &["--noise", "z.npy", "--format", "png-dir", "--out", "pngs"]);
        printed.insert("png-dir", o);
        checks.push(serde_json::json!({"kind": "png-dir", "file": p("pngs"), "ref": p("ema.npy")}));
        for format in ["torchscript", "onnx", "safetensors"] {
            checks.push(serde_json::json!({"kind": format, "file": p(&format!("dcgan.{format}")), "z": p("z-dcgan.npy"), "ref": p("dcgan.npy"), "other": p("dcgan-other.npy")}));
        }
        export_dcgan(&s.root);
        let spec = s.root.join("checks.json");
        std::fs::write(&spec, serde_json::to_vec(&checks).unwrap()).unwrap();
        let out = Command::new(python())
            .arg(repo().join("tests/python/check_export.py"))
            .arg(&spec)
            .env("PYTHONPATH", repo().join("python"))
            .output()
            .expect("python runs");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "check_export.py failed: {text}{}", String::from_utf8_lossy(&out.stderr));
        let list: Vec<Value> = serde_json::from_str(text.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("check_export.py: {e}: {text}"));
        let names = ["torchscript", "onnx", "safetensors", "safetensors-raw", "png-dir", "dcgan-torchscript", "dcgan-onnx", "dcgan-safetensors"];
        Checked { printed, reports: names.into_iter().zip(list).collect() }
    })
}

/// A DCGAN generator (64 px, RGB) exported in each format through the library, beside its
/// own output for noise z-dcgan.npy (5 x 8) and another one's (differently drawn weights).
/// No DCGAN run can be trained on MNIST (28 px), so the generator is a freshly initialised
/// one: its export path is the one `gandist export` takes.
fn export_dcgan(root: &Path) {
    use gandist::config::Arch;
    use gandist::export::{graph, onnx, torchscript, weights, Metadata};
    let shape = gandist::model::ImageShape { channels: 3, side: 64 };
    let z = tch::Tensor::randn([5, 8], (tch::Kind::Float, tch::Device::Cpu));
    let npy = |name: &str, t: &tch::Tensor| {
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        gandist::npy::write_f32(&root.join(name), &shape, &Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()).unwrap();
    };
    npy("z-dcgan.npy", &z);
    for (seed, out) in [(21, "dcgan.npy"), (22, "dcgan-other.npy")] {
        tch::manual_seed(seed);
        let g = gandist::model::Generator::new(Arch::Dcgan, 4, 8, shape, tch::Device::Cpu).unwrap();
        npy(out, &tch::no_grad(|| g.forward(&z)));
        if seed == 21 {
            let graph = graph::of(&g);
            graph.check().unwrap();
            let meta = Metadata::new(&graph, 0, false, "initialised".into());
            torchscript::write(&graph, &meta, &root.join("dcgan.torchscript")).unwrap();
            onnx::write(&graph, &meta, &root.join("dcgan.onnx")).unwrap();
            weights::write(&graph, &meta, &root.join("dcgan.safetensors")).unwrap();
        }
    }
}

/// The report on `name`, which must not be an error.
fn report(name: &str) -> &'static Value {
    let r = &checked().reports[name];
    assert!(r.get("error").is_none(), "{name}: {}", r["error"]);
    r
}

/// The export `name`: gandist's output within `tolerance`, the metadata as the run says.
fn export_agrees(name: &str, tolerance: f64, weights: &str) -> (&'static Value, &'static str) {
    let r = report(name);
    let printed = checked().printed[name].as_str();
    for needle in ["latent 16", "NCHW 1x28x28 in [-1, 1]", "step 6", &format!("{weights} weights")] {
        assert!(printed.contains(needle), "export did not print {needle:?}: {printed}");
    }
    assert_eq!(r["shape"], serde_json::json!([7, 1, 28, 28]), "{r}");
    let (diff, other) = (r["max_diff"].as_f64().unwrap(), r["max_diff_other"].as_f64().unwrap());
    eprintln!("{name}: max |difference| to gandist's output {diff:e}, to the other weights' {other:e}");
    assert!(diff <= tolerance, "{name}: differs from gandist's output by {diff:e} (tolerance {tolerance:e})");
    assert!(other > 100.0 * tolerance, "{name}: the other weights' output is only {other:e} away: the check could not tell them apart");
    let m = &r["metadata"];
    let num = |k: &str| m[k].as_f64().or_else(|| m[k].as_str().and_then(|s| s.parse().ok()));
    assert_eq!((num("latent"), num("channels"), num("height"), num("width"), num("step")), (Some(16.0), Some(1.0), Some(28.0), Some(28.0), Some(6.0)), "{m}");
    assert_eq!((m["layout"].as_str(), m["weights"].as_str(), m["arch"].as_str()), (Some("NCHW"), Some(weights), Some("paper")), "{m}");
    (r, printed)
}

#[test]
fn torchscript_gives_gandists_output() {
    let (r, printed) = export_agrees("torchscript", 1e-5, "ema");
    assert!(printed.contains("gandist.json"), "{printed}");
    assert_eq!(r["metadata"]["output_range"], serde_json::json!([-1.0, 1.0]));
    assert!(r["metadata"]["layers"].as_array().is_some_and(|l| l.len() == 10), "{r}");
}

#[test]
fn onnx_passes_the_checker_and_gives_gandists_output_in_onnxruntime() {
    let (r, printed) = export_agrees("onnx", 1e-4, "ema");
    assert!(printed.contains("opset 17"), "{printed}");
    assert_eq!(r["opset"], serde_json::json!([17]));
    assert_eq!(r["ir_version"], serde_json::json!(8));
    // A symbolic batch: onnxruntime reports it by name.
    assert_eq!(r["inputs"], serde_json::json!([["z", ["N", 16]]]));
    assert_eq!(r["outputs"], serde_json::json!([["images", ["N", 1, 28, 28]]]));
    // metadata_props are strings: numbers as JSON, strings as they are.
    assert_eq!(r["metadata"]["output_range"], serde_json::json!("[-1.0,1.0]"));
}

#[test]
fn safetensors_loads_into_the_shipped_pytorch_module() {
    let (r, _) = export_agrees("safetensors", 1e-5, "ema");
    assert_eq!(r["missing"], serde_json::json!([]));
    assert_eq!(r["unexpected"], serde_json::json!([]));
    let names = ["deconv1.bias", "deconv1.weight", "deconv2.bias", "deconv2.weight", "deconv3.bias", "deconv3.weight", "fc.bias", "fc.weight"];
    assert_eq!(r["state_dict"], serde_json::json!(names));
    assert_eq!(r["load_agrees"], serde_json::json!(true));
}

/// --weights raw exports the raw weights (their output is raw.npy's), and bad requests fail
/// with the reason and leave no file behind.
#[test]
fn export_weights_choice_and_bad_requests() {
    export_agrees("safetensors-raw", 1e-5, "raw");
    let s = shared();
    let run = s.root.join("run");
    fails(&["export", "--checkpoint", run.to_str().unwrap(), "--format", "keras", "--out", "x"], &["keras", "torchscript"]);
    fails(&["export", "--checkpoint", s.root.join("nowhere").to_str().unwrap(), "--format", "onnx", "--out", "x.onnx"], &["nowhere", "neither a checkpoint"]);
    fails(&["export", "--checkpoint", run.to_str().unwrap(), "--format", "onnx", "--out", s.root.to_str().unwrap()], &["is a directory"]);
    let missing_dir = s.root.join("no/such/dir/g.pt");
    fails(&["export", "--checkpoint", run.to_str().unwrap(), "--format", "torchscript", "--out", missing_dir.to_str().unwrap()], &["cannot write"]);
    assert!(!s.root.join("x").exists() && !s.root.join("x.onnx").exists());
}

/// `--format png-dir` writes one PNG per sample that pytorch-fid's own listing and loading
/// read back in order with gandist's pixels; the folder appears whole or not at all.
#[test]
fn png_dir_reads_back_through_pytorch_fid() {
    let s = shared();
    let dir = s.root.join("pngs");
    let r = report("png-dir");
    assert_eq!(r["count"], 7, "{r}");
    assert_eq!(r["names"], serde_json::json!(["000000.png", "000001.png", "000006.png"]));
    assert_eq!(r["shape"], serde_json::json!([7, 3, 28, 28]));
    // Rounded from the same float output: the same byte in every pixel.
    assert_eq!(r["max_diff_levels"], 0, "{r}");
    assert!(!s.root.join(".pngs.tmp").exists());
    // An existing folder is refused, not mixed into.
    fails_s(&sample_args(&s.root, &["--n", "3", "--format", "png-dir", "--out", "pngs"]), &["already exists"]);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 7);
}

/// Bad noise files fail with the file named and what was expected, and write nothing.
#[test]
fn bad_noise_files_are_refused_by_the_command() {
    let s = shared();
    let root = &s.root;
    let write = |name: &str, shape: &[usize], v: &[f32]| gandist::npy::write_f32(&root.join(name), shape, v).unwrap();
    write("wide.npy", &[2, 17], &[0.0; 34]);
    write("nan.npy", &[1, 16], &[f32::NAN; 16]);
    let f64_bytes = {
        // A float64 file as np.save writes it: the header of a float32 one with <f8.
        let mut b = gandist::npy::encode_f32(&[1, 8], &[0.0; 8]).unwrap();
        let at = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[at + 2] = b'8';
        b
    };
    std::fs::write(root.join("f64.npy"), f64_bytes).unwrap();
    let full = gandist::npy::encode_f32(&[4, 16], &[0.5; 64]).unwrap();
    std::fs::write(root.join("short.npy"), &full[..full.len() - 10]).unwrap();
    for (file, needles) in [
        ("wide.npy", vec!["wide.npy", "17 values per row: expected 16"]),
        ("nan.npy", vec!["nan.npy", "row 0, column 0 is NaN"]),
        ("f64.npy", vec!["f64.npy", "float64 (<f8)", "expected a float32 array of shape (N, 16)"]),
        ("short.npy", vec!["short.npy", "truncated"]),
        ("absent.npy", vec!["absent.npy", "cannot read noise file"]),
    ] {
        fails_s(&sample_args(root, &["--noise", file, "--format", "npy", "--out", "bad-out.npy"]), &needles);
    }
    fails_s(&sample_args(root, &["--noise", "z.npy", "--n", "5", "--out", "bad-out.npy"]), &["--n 5", "holds 7 rows"]);
    assert!(!root.join("bad-out.npy").exists());
}

/// `--interpolate K`: a grid of one walk per row whose ends are the samples of the noise
/// rows it walks between, and a looping GIF of the 2K - 2 frames (forwards, then back).
#[test]
fn interpolation_writes_a_walk_grid_and_a_gif() {
    let s = shared();
    let k = 5;
    let out = ok_sample(&s.root, &["--noise", "z.npy", "--interpolate", "5", "--out", "walk.png"]);
    assert!(out.contains("walk.gif"), "{out}");
    // 6 walks (7 rows) of 5 frames.
    let grid = image::open(s.root.join("walk.png")).unwrap().to_luma8();
    let (side, pad) = (28u32, 2u32);
    assert_eq!(grid.dimensions(), (k * (side + pad) + pad, 6 * (side + pad) + pad));
    // The ends of walk w are rows w and w + 1 of the noise: the samples in ema.npy.
    let ema = read_npy_f32(&s.root.join("ema.npy"));
    let pixel = |img: usize, x: u32, y: u32| ((ema[img * 784 + (y * 28 + x) as usize] as f64 + 1.0) * 127.5).round().clamp(0.0, 255.0) as i32;
    let mut worst = 0;
    for w in 0..6u32 {
        for (col, row) in [(0, w as usize), (k - 1, w as usize + 1)] {
            for y in 0..side {
                for x in 0..side {
                    let g = grid.get_pixel(pad + col * (side + pad) + x, pad + w * (side + pad) + y).0[0] as i32;
                    worst = worst.max((g - pixel(row, x, y)).abs());
                }
            }
        }
    }
    // Another batch composition may round a pixel the other way: at most one level.
    assert!(worst <= 1, "walk ends differ from the noise rows' samples by {worst} levels");
    let gif = std::fs::File::open(s.root.join("walk.gif")).unwrap();
    let frames = image::AnimationDecoder::into_frames(image::codecs::gif::GifDecoder::new(std::io::BufReader::new(gif)).unwrap()).collect_frames().unwrap();
    assert_eq!(frames.len(), 2 * k as usize - 2);
    fails_s(&sample_args(&s.root, &["--interpolate", "1", "--out", "w.png"]), &["K >= 2"]);
    fails_s(&sample_args(&s.root, &["--interpolate", "3", "--out", "w.gif"]), &["names the grid"]);
}

/// The old `--format png` still writes the grid, with a warning naming `grid`.
#[test]
fn format_png_is_the_old_name_of_grid() {
    let s = shared();
    let out = ok_sample(&s.root, &["--n", "4", "--format", "png", "--out", "old.png"]);
    assert!(out.contains("deprecated") && out.contains("--format grid"), "{out}");
    ok_sample(&s.root, &["--n", "4", "--format", "grid", "--out", "new.png"]);
    assert_eq!(std::fs::read(s.root.join("old.png")).unwrap(), std::fs::read(s.root.join("new.png")).unwrap());
}

/// A float32 .npy file's values (the C-order ones gandist writes).
fn read_npy_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    bytes[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// The DCGAN family (pixel norm, 4x4 transposed convolutions, 64 px RGB) exports in every
/// format with the same tolerances.
#[test]
fn dcgan_exports_give_the_generators_output() {
    for (format, tolerance) in [("torchscript", 1e-5), ("onnx", 1e-4), ("safetensors", 1e-5)] {
        let name = format!("dcgan-{format}");
        let r = report(&name);
        assert_eq!(r["shape"], serde_json::json!([5, 3, 64, 64]), "{name}: {r}");
        let (diff, other) = (r["max_diff"].as_f64().unwrap(), r["max_diff_other"].as_f64().unwrap());
        eprintln!("{name}: max |difference| to gandist's output {diff:e}, to another generator's {other:e}");
        assert!(diff <= tolerance, "{name}: differs from gandist's output by {diff:e} (tolerance {tolerance:e})");
        assert!(other > 100.0 * tolerance, "{name}: another generator's output is only {other:e} away");
        let arch = &r["metadata"]["arch"];
        assert_eq!(arch, "dcgan", "{name}: {r}");
    }
}
