//! Inception FID against pytorch-fid 0.3.0 itself (tests/reference/pytorch_fid_side.py, one
//! Python process): its real FID Inception built from a random state dict of the right shapes,
//! saved in the published weight file's (legacy) format and in the zip format, both sides
//! computing from that file on the same small image folders. Checks the features, the FID
//! (1e-3 relative, the bar), pytorch-fid's .npz in and gandist's .npz out, and that
//! the random features depend on the image (else agreement would prove nothing).
//!
//! About 2 minutes on 2 shared cores (117 s measured), most of it scipy's sqrtm of a 2048 x 2048 product
//! inside pytorch-fid (20-50 s) and four Inception passes over 6 + 6 small images per side.

mod common;
use common::*;
use gandist::eval::frechet::{pytorch_fid_distance, Gaussian};
use gandist::eval::{features, image_folder, inception::FidInception};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tch::{Device, Kind, Tensor};

fn python() -> PathBuf {
    let venv = std::env::var_os("GANDIST_TORCH_VENV").map(PathBuf::from).expect("GANDIST_TORCH_VENV (source launch/env.sh): the torch venv with pytorch-fid");
    venv.join("bin/python")
}

fn read_json(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> serde_json::Map<String, Value> {
    for line in lines {
        let line = line.unwrap();
        if let Ok(Value::Object(m)) = serde_json::from_str(&line) {
            return m;
        }
        eprintln!("python: {line}");
    }
    panic!("the pytorch-fid side ended without its JSON line (is pytorch-fid installed? launch/test-tools.sh)");
}

fn last_json(out: &str) -> serde_json::Map<String, Value> {
    match out.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()) {
        Some(Value::Object(m)) => m,
        _ => panic!("no JSON line in: {out}"),
    }
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

fn features_of(net: &FidInception, dir: &Path) -> Tensor {
    features::of_folder(net, dir, features::BATCH).unwrap()
}

#[test]
fn inception_fid_matches_pytorch_fid() {
    let dir = tempfile::tempdir().unwrap();
    let script = repo().join("tests/reference/pytorch_fid_side.py");
    let mut py = Command::new(python())
        .arg(&script)
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the torch venv's python runs");
    let mut lines = BufReader::new(py.stdout.take().unwrap()).lines();
    let p1 = read_json(&mut lines);
    let s = |k: &str| PathBuf::from(p1[k].as_str().unwrap());
    let (legacy, zipped, dir_a, dir_b) = (s("legacy"), s("zip"), s("dir_a"), s("dir_b"));
    let want_fid = p1["fid"].as_f64().unwrap();
    eprintln!("pytorch-fid: FID {want_fid}, times {}", p1["seconds"]);

    // Features: the same file, images and kernels (libtorch 2.11 on both sides).
    tch::set_num_threads(2);
    let net = FidInception::load(&legacy, Device::Cpu).unwrap();
    assert!(!net.published);
    let (fa, fb) = (features_of(&net, &dir_a), features_of(&net, &dir_b));
    let want_a = Tensor::read_npy(dir.path().join("features_a.npy")).unwrap();
    let want_b = Tensor::read_npy(dir.path().join("features_b.npy")).unwrap();
    assert_eq!(fa.size(), vec![6, 2048]);
    let diff = max_abs(&(&fa - &want_a)).max(max_abs(&(&fb - &want_b)));
    let scale = max_abs(&want_a).max(max_abs(&want_b));
    eprintln!("features: largest difference {diff:e} (largest feature {scale})");
    // float32 through 94 layers with the same kernels: a few ulps of the largest feature.
    // 1e-5 of it leaves room for another CPU's kernel blocking, far under the spread below.
    assert!(diff <= 1e-5 * scale, "features differ by {diff} (largest feature {scale})");
    // The features must depend on the image: the closest two images of a folder differ by far
    // more than the two implementations do (random weights can collapse every image to one
    // feature vector, and then any two implementations agree).
    for f in [&fa, &fb] {
        let d = (f.unsqueeze(0) - f.unsqueeze(1)).square().sum_dim_intlist(2, false, Kind::Double).sqrt()
            + Tensor::eye(6, (Kind::Double, Device::Cpu)) * 1e9;
        let closest = d.min().double_value(&[]);
        eprintln!("closest two images' features: {closest}");
        assert!(closest > 1e3 * diff && closest > 1e-3 * scale, "features barely depend on the image: closest pair {closest}");
    }
    // The zip format (torch >= 1.6), read by libtorch, gives the same network.
    let net_zip = FidInception::load(&zipped, Device::Cpu).unwrap();
    assert_eq!(max_abs(&(features_of(&net_zip, &dir_a) - &fa)), 0.0, "legacy and zip files must load the same tensors");

    // The command: two folders; pytorch-fid's statistics file against a folder.
    let rel = |got: f64| (got - want_fid).abs() / want_fid.abs();
    let (a, b, l, z) = (dir_a.to_str().unwrap(), dir_b.to_str().unwrap(), legacy.to_str().unwrap(), zipped.to_str().unwrap());
    let out = ok(&["fid", a, b, "--inception-weights", l]);
    assert!(out.contains("not the published pytorch-fid weight file"), "{out}");
    let got = last_json(&out)["inception_fid"].as_f64().unwrap();
    eprintln!("gandist fid: {got}, relative difference {:e}", rel(got));
    assert!(rel(got) <= 1e-3, "FID {got} vs pytorch-fid's {want_fid}");
    let stats_a = dir.path().join("stats_a.npz");
    let got2 = last_json(&ok(&["fid", stats_a.to_str().unwrap(), b, "--inception-weights", z]))["inception_fid"].as_f64().unwrap();
    eprintln!("gandist fid (pytorch-fid's .npz for a): {got2}, relative difference {:e}", rel(got2));
    assert!(rel(got2) <= 1e-3, "FID {got2} vs pytorch-fid's {want_fid}");

    // gandist's statistics file, read by numpy as pytorch-fid reads one.
    let ours = dir.path().join("ours.npz");
    ok(&["fid", "--save-stats", a, ours.to_str().unwrap(), "--inception-weights", l]);
    fails(&["fid", "--save-stats", a, ours.to_str().unwrap(), "--inception-weights", l], &["Existing output file"]);
    writeln!(py.stdin.as_mut().unwrap(), "{}", ours.display()).unwrap();
    let p2 = read_json(&mut lines);
    assert!(py.wait().unwrap().success());
    eprintln!("pytorch-fid reading gandist's .npz: {}", Value::Object(p2.clone()));
    assert_eq!(p2["dtype_sigma"], "float64");
    assert_eq!(p2["shape_sigma"], serde_json::json!([2048, 2048]));
    // The statistics of float32 features that agree to `diff`: mu to about diff, sigma to
    // about diff times the features' spread.
    assert!(p2["mu_max_abs_diff"].as_f64().unwrap() <= 1e-5 * scale);
    assert!(p2["sigma_max_abs_diff"].as_f64().unwrap() <= 1e-5 * scale * scale);

    // JPEG: gandist's decoder (zune-jpeg) against PIL's (libjpeg-turbo) on the same files.
    let jpeg = Tensor::read_npy(dir.path().join("jpeg_pixels.npy")).unwrap().to_kind(Kind::Int64);
    let files = image_folder::list(&s("dir_jpeg")).unwrap();
    let ours: Vec<u8> = files.iter().flat_map(|f| image_folder::read_rgb(f).unwrap().2).collect();
    let ours = Tensor::from_slice(&ours).to_kind(Kind::Int64).view(jpeg.size().as_slice());
    let jd = (&ours - &jpeg).abs();
    let (worst, differing) = (jd.max().int64_value(&[]), jd.gt(0).sum(Kind::Int64).int64_value(&[]));
    eprintln!("JPEG decode vs PIL: largest pixel difference {worst}, {differing} of {} values differ", jd.numel());
    // zune-jpeg and libjpeg-turbo round their transforms and chroma upsampling differently.
    // Measured here: up to 3 levels, on about a quarter of the values (4:2:0 files of quality 90).
    assert!(worst <= 4, "JPEG decoders differ by up to {worst} levels");
    // What that does to the FID: the JPEG folder's FID to the grey folder from gandist's
    // features against that from pytorch-fid's features of the same files.
    let fj = features_of(&net, &s("dir_jpeg"));
    let want_j = Tensor::read_npy(dir.path().join("features_jpeg.npy")).unwrap();
    let gb = Gaussian::of_features(&fb).unwrap();
    let fid_ours = pytorch_fid_distance(&Gaussian::of_features(&fj).unwrap(), &gb).unwrap();
    let fid_pil = pytorch_fid_distance(&Gaussian::of_features(&want_j).unwrap(), &gb).unwrap();
    let jrel = (fid_ours - fid_pil).abs() / fid_pil;
    eprintln!("JPEG folder: FID {fid_ours} from gandist's decode, {fid_pil} from PIL's: relative difference {jrel:e}");
    assert!(jrel <= 1e-2, "JPEG decoding moves the FID by {jrel} relative");

    // `gandist eval --samples` scores generated-range images as `gandist fid` scores the PNGs
    // they would be saved as: the same FID, to the last digit.
    let (n, side) = (6usize, 28usize);
    let bytes: Vec<u8> = (0..n * side * side).map(|i| ((i * 37 + (i / side) * 11 + (i / (side * side)) * 50) % 256) as u8).collect();
    let idx = dir.path().join("samples.idx");
    gandist::samples::write_idx(&idx, &bytes, n, side).unwrap();
    let pngs = dir.path().join("samples-png");
    std::fs::create_dir(&pngs).unwrap();
    for (i, img) in bytes.chunks(side * side).enumerate() {
        image::GrayImage::from_raw(side as u32, side as u32, img.to_vec()).unwrap().save(pngs.join(format!("{i}.png"))).unwrap();
    }
    let by_fid = last_json(&ok(&["fid", pngs.to_str().unwrap(), b, "--inception-weights", z]));
    let by_eval = last_json(&ok(&[
        "eval", "--samples", idx.to_str().unwrap(), "--metric", "inception-fid,kid,precision-recall", "--reference", b, "--inception-weights", z,
    ]));
    assert_eq!(by_eval["inception_fid"], by_fid["inception_fid"], "eval {by_eval:?} vs fid {by_fid:?}");
    for k in ["kid", "kid_std", "precision", "recall"] {
        assert!(by_eval[k].as_f64().is_some_and(f64::is_finite), "{k} in {by_eval:?}");
    }
    assert_eq!(by_eval["kid_subset_size"], 6);
    fails(&["eval", "--samples", idx.to_str().unwrap(), "--metric", "kid", "--reference", stats_a.to_str().unwrap(), "--inception-weights", z], &["kid needs the reference images' features"]);

    // Bad weight files are named.
    let bad = dir.path().join("truncated.pth");
    std::fs::write(&bad, &std::fs::read(&legacy).unwrap()[..100_000]).unwrap();
    fails(&["fid", a, b, "--inception-weights", bad.to_str().unwrap()], &["truncated.pth", "ends early"]);
    fails(&["fid", a, b, "--inception-weights", dir.path().join("none.pth").to_str().unwrap()], &["no Inception weights at", "pt_inception-2015-12-05-6726825d.pth"]);
}
