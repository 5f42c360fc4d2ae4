//! Checkpoints of the format before this one (version 1, written by gandist at commit 0ac1dc9:
//! tests/fixtures/checkpoint-v1, whose README has the command) resume with this build and
//! continue exactly as the trainer that wrote them did (bit for bit on a host whose
//! arithmetic is the writer's, to float rounding on another CPU); `sample` reads them; a checkpoint of
//! a format this build does not know is refused with a message naming its version.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixture(step: u64) -> PathBuf {
    repo().join("tests/fixtures/checkpoint-v1").join(gandist::checkpoint::dir_name(step))
}

/// The fixture run's settings (on configs/smoke.toml).
const SETS: &[&str] = &[
    "critic.width=1", "generator.width=1",
    "model.latent=4",
    "data.batch_size=4",
    "data.limit=64",
    "train.iterations=4",
    "train.checkpoint_every=2",
    "train.sample_every=2",
    "train.log_every=1",
    "ema.half_life_steps=2",
    "critic.hist_avg=1e-3",
    "generator.hist_avg=1e-3",
    "critic.spectral_norm=true",
    "faults.nan_critic_updates=[1]",
];

fn train_args(run: &Path, resume: &str) -> Vec<String> {
    let mut v: Vec<String> = ["train", "--config", smoke_config().to_str().unwrap(), "--data", mnist_dir().to_str().unwrap(), "--run-dir", run.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in SETS {
        v.extend(["--set".to_string(), s.to_string()]);
    }
    v.extend(["--resume".to_string(), resume.to_string()]);
    v
}

/// A run directory holding a copy of the fixture's step-2 checkpoint.
fn run_with_step_2(tmp: &Path) -> PathBuf {
    let run = tmp.join("run");
    let dst = run.join("checkpoints").join(gandist::checkpoint::dir_name(2));
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["meta.json", "state.safetensors"] {
        std::fs::copy(fixture(2).join(f), dst.join(f)).unwrap();
    }
    run
}

/// Equal JSON, numbers within float rounding (ROUNDING_TOLERANCE relative).
fn json_close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= ROUNDING_TOLERANCE * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_close(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_close(v, w))),
        _ => a == b,
    }
}

fn meta(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap()
}

/// Whether this host's arithmetic is that of the machine that wrote the fixture: a run from
/// scratch to step 2 with today's trainer gives the fixture's step 2 bit for bit there (the
/// trainer keeps the old one's step bit for bit), and to float rounding on another CPU.
fn host_reproduces_the_fixture(tmp: &Path) -> Agreement {
    let run = tmp.join("scratch");
    let mut args = train_args(&run, "auto");
    args.truncate(args.len() - 2);
    args.extend(["--set".to_string(), "train.iterations=2".to_string()]);
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let got = state(&run.join("checkpoints/step-000000002"));
    if assert_states_agree(&got, &state(&fixture(2)), Agreement::Rounding, "a run from scratch to the fixture's step 2") {
        Agreement::Bits
    } else {
        eprintln!("this host's float arithmetic differs from the fixture writer's (step 2 from scratch differs in the last bits): comparing to float rounding");
        Agreement::Rounding
    }
}

#[test]
fn a_format_1_checkpoint_resumes_and_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let how = host_reproduces_the_fixture(tmp.path());
    let run = run_with_step_2(tmp.path());
    let args = train_args(&run, "auto");
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.contains("resumed from") && out.contains("at step 2"), "{out}");
    // Every tensor as the old trainer reached it: bit for bit where the host computes as the
    // fixture's writer did.
    let got = state(&run.join("checkpoints/step-000000004"));
    assert_states_agree(&got, &state(&fixture(4)), how, "resumed step 4 against the old trainer's");
    // The counters and detectors came through: the new record says what the old one did.
    let (new, old) = (meta(&run.join("checkpoints/step-000000004")), meta(&fixture(4)));
    assert_eq!((new["format_version"].as_u64(), old["format_version"].as_u64()), (Some(2), Some(1)));
    let c = &new["trainer"]["counters"];
    assert_eq!(c["step"].as_u64(), old["step"].as_u64());
    assert_eq!(c["critic_step"].as_u64(), old["critic_step"].as_u64());
    assert_eq!(c["applied"]["critic"].as_f64(), old["extra"]["opt_d_steps"].as_f64());
    assert_eq!(c["applied"]["generator"].as_f64(), old["extra"]["opt_g_steps"].as_f64());
    assert_eq!(c["skipped_updates"].as_f64(), old["extra"]["skipped_updates"].as_f64());
    assert_eq!(c["skipped_updates"].as_u64(), Some(1), "the fixture's run skipped one update");
    assert_eq!(c["lr_scale"].as_f64(), old["extra"]["lr_scale"].as_f64());
    for net in ["critic", "generator"] {
        let (n, o) = (&new["trainer"]["health"][net], &old["health"][net]);
        match how {
            Agreement::Bits => assert_eq!(n, o, "{net} detector"),
            // The detector's window holds gradient norms, which carry the host's rounding.
            Agreement::Rounding => assert!(json_close(n, o), "{net} detector: {n} against {o}"),
        }
    }
    assert_eq!(new["world_size"], old["world_size"]);
    // The old checkpoint's configuration is in the old keys (optim.lr_d, model.dim, ...), the
    // new one's in [critic] and [generator]: the same configuration.
    let config = |m: &Value| gandist::config::Config::from_embedded(m["config"].as_str().unwrap()).unwrap();
    assert!(old["config"].as_str().unwrap().contains("[regularize]") && !new["config"].as_str().unwrap().contains("[regularize]"));
    assert_eq!(config(&new), config(&old));
    // `sample` reads a format-1 checkpoint (its EMA weights) directly.
    let png = tmp.path().join("old.png");
    let out = ok(&["sample", "--checkpoint", fixture(2).to_str().unwrap(), "--n", "4", "--out", png.to_str().unwrap()]);
    assert!(out.contains("EMA weights") && out.contains("step 2"), "{out}");
}

#[test]
fn an_unknown_format_version_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let run = run_with_step_2(tmp.path());
    let dir = run.join("checkpoints/step-000000002");
    let text = std::fs::read_to_string(dir.join("meta.json")).unwrap();
    std::fs::write(dir.join("meta.json"), text.replace("\"format_version\": 1", "\"format_version\": 7")).unwrap();
    let needles = ["format version 7", "reads format versions 1 to 2"];
    let args = train_args(&run, dir.to_str().unwrap());
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &needles);
    // With --resume auto it is the only checkpoint, so none is usable: the reason is named.
    let args = train_args(&run, "auto");
    fails(&args.iter().map(String::as_str).collect::<Vec<_>>(), &["no usable checkpoint", needles[0]]);
    let png = tmp.path().join("x.png");
    fails(&["sample", "--checkpoint", dir.to_str().unwrap(), "--out", png.to_str().unwrap()], &needles);
    assert!(!png.exists());
}
