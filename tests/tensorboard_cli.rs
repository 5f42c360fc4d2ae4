//! `[log] tensorboard = true`, judged by tensorboard's own reader (EventAccumulator from the
//! PyPI package, tests/python/check_tensorboard.py): every scalar of metrics.jsonl under its
//! name with its value (rounded to float32, as TensorBoard stores scalars), the sample grids
//! as images equal to samples/step-N.png, and one continuous curve after a resume that went
//! back in steps (a run to step 6, a resume from its step-3 checkpoint to step 8, the first
//! event file torn in its last record as a killed process leaves it). Two smoke runs of a
//! second or two and one Python process.

mod common;

use common::*;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn python() -> PathBuf {
    let venv = std::env::var_os("GANDIST_TORCH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/gandist/torch-2.11.0"));
    let py = venv.join("bin/python");
    assert!(py.exists(), "no python at {} (run launch/setup.sh and launch/test-tools.sh)", py.display());
    py
}

fn train(run: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "train",
        "--config",
        smoke_config().to_str().unwrap(),
        "--data",
        mnist_dir().to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--set",
        "log.tensorboard=true",
        "--set",
        "train.log_every=1",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn records(run: &Path) -> Vec<Map<String, Value>> {
    std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// The scalars a record should give TensorBoard: numbers, and booleans as 0/1, as float32.
fn scalars(r: &Map<String, Value>) -> Vec<(String, f64)> {
    r.iter()
        .filter(|(k, _)| k.as_str() != "step")
        .filter_map(|(k, v)| match v {
            Value::Number(n) => Some((k.clone(), n.as_f64().unwrap())),
            Value::Bool(b) => Some((k.clone(), *b as u8 as f64)),
            _ => None,
        })
        .map(|(k, v)| (k, v as f32 as f64))
        .collect()
}

#[test]
fn tensorboard_reads_every_logged_value_and_one_curve_across_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    train(&run, &[]);
    let first = records(&run);
    assert_eq!(first.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    let events: Vec<PathBuf> = std::fs::read_dir(&run).unwrap().flatten().map(|e| e.path()).filter(|p| p.to_string_lossy().contains("tfevents")).collect();
    assert_eq!(events.len(), 1, "{events:?}");
    // A killed writer's last record is torn: cut the file inside it.
    let bytes = std::fs::read(&events[0]).unwrap();
    std::fs::write(&events[0], &bytes[..bytes.len() - 7]).unwrap();
    // Back to step 3, on to step 8: steps 4-6 are trained (and logged) again.
    let resumed = train(&run, &["--resume", run.join("checkpoints/step-000000003").to_str().unwrap(), "--set", "train.iterations=8"]);
    assert!(resumed.contains("resumed from"), "{resumed}");
    let all = records(&run);
    let second = &all[first.len()..];
    assert_eq!(second.iter().map(|r| r["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![4, 5, 6, 7, 8]);

    // What TensorBoard should show: the first run up to the checkpoint, then the second.
    let mut want: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    for r in first.iter().filter(|r| r["step"].as_u64().unwrap() <= 3).chain(second) {
        for (tag, v) in scalars(r) {
            want.entry(tag).or_default().push((r["step"].as_u64().unwrap(), v));
        }
    }
    // The two runs' values at steps 4-6 differ somewhere (the elapsed time at least), so
    // keeping the orphaned points would fail the comparison.
    let orphaned: Vec<(String, u64, f64)> = first[3..].iter().flat_map(|r| scalars(r).into_iter().map(move |(t, v)| (t, r["step"].as_u64().unwrap(), v))).collect();
    assert!(orphaned.iter().any(|(t, s, v)| want[t].iter().any(|(ws, wv)| ws == s && wv != v)), "the runs agree at every point: the test cannot tell");

    let out = std::process::Command::new(python()).arg(repo().join("tests/python/check_tensorboard.py")).arg(&run).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "check_tensorboard.py failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    let tb: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(tb["file_version"].as_f64(), Some(2.0));
    let got: BTreeMap<String, Vec<(u64, f64)>> = tb["scalars"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, pts)| (t.clone(), pts.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap())).collect()))
        .collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "tags");
    for (tag, points) in &want {
        assert_eq!(&got[tag], points, "{tag}: TensorBoard's points against metrics.jsonl's");
    }
    for layer in ["d_grad_norm.conv1", "d_grad_norm.fc", "g_grad_norm.fc", "g_grad_norm.deconv3"] {
        assert_eq!(got[layer].len(), 8, "{layer}: per-layer gradient norms at every logged step");
    }
    // The sample grids: step 3 from the first run, 6 and 8 from the second (which rewrote
    // samples/step-000000006.png), each the PNG file's bytes.
    let images: Vec<(u64, String)> = tb["images"]["samples"].as_array().unwrap().iter().map(|e| (e[0].as_u64().unwrap(), e[3].as_str().unwrap().to_string())).collect();
    let file_sha = |step: u64| hex::encode(Sha256::digest(std::fs::read(run.join(format!("samples/step-{step:09}.png"))).unwrap()));
    assert_eq!(images, [3, 6, 8].map(|s| (s, file_sha(s))).to_vec());
    let png = image::open(run.join("samples/step-000000003.png")).unwrap();
    let first_image = &tb["images"]["samples"][0];
    assert_eq!((first_image[1].as_u64(), first_image[2].as_u64()), (Some(png.width() as u64), Some(png.height() as u64)));
    // Each process wrote a file of its own, and they sort in writing order.
    let mut names: Vec<String> = std::fs::read_dir(&run).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.contains("tfevents")).collect();
    names.sort();
    assert_eq!(names.len(), 2);
    assert_eq!(names[0], events[0].file_name().unwrap().to_string_lossy());
}
