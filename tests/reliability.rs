//! Faults the trainer survives: non-finite updates with rollback, a checkpoint write that
//! runs out of space, and a corpus of malformed configs.

mod common;
use common::*;
use std::process::Command;

fn smoke_args(run: &std::path::Path, sets: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["train", "--config", smoke_config().to_str().unwrap(), "--data", mnist_dir().to_str().unwrap(), "--run-dir", run.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in sets {
        v.push("--set".into());
        v.push(s.to_string());
    }
    v
}

#[test]
fn consecutive_nan_updates_roll_back_with_a_lower_learning_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("nan");
    // n_critic = 2: critic attempts 6, 7 (iteration 4) and 8 (iteration 5) are poisoned; three in
    // a row trigger a rollback to the checkpoint of step 4, after which training goes on.
    let args = smoke_args(
        &run,
        &["train.iterations=8", "train.checkpoint_every=2", "train.max_consecutive_skips=3", "train.rollback_lr_scale=0.5", "faults.nan_critic_updates=[6, 7, 8]", "train.log_every=1"],
    );
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let out = ok(&args);
    assert!(out.contains("rolled back to step 4 after 3 consecutive non-finite updates; learning rates now x0.5"), "{out}");
    let log = gandist::scalar_log::read(&run.join("metrics.jsonl")).unwrap();
    assert!(log.iter().any(|r| r.get("event").and_then(|e| e.as_str()) == Some("rollback")));
    let last = log.last().unwrap();
    assert_eq!(last["step"].as_u64(), Some(8));
    assert_eq!(last["lr_scale"].as_f64(), Some(0.5));
    // Every checkpoint loads (the loader refuses non-finite values) and keeps the scale.
    for (step, dir) in gandist::checkpoint::list(&run.join("checkpoints")) {
        let png = tmp.path().join(format!("{step}.png"));
        ok(&["sample", "--checkpoint", dir.to_str().unwrap(), "--n", "1", "--out", png.to_str().unwrap()]);
        let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
        assert_eq!(meta["trainer"]["counters"]["lr_scale"].as_f64(), Some(0.5), "step {step}");
    }
}

#[test]
fn endless_nan_updates_end_in_a_clear_error_without_bad_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("nan");
    let poisoned: Vec<String> = (4..200).map(|i| i.to_string()).collect();
    let nan_list = format!("faults.nan_critic_updates=[{}]", poisoned.join(","));
    let args = smoke_args(&run, &["train.iterations=50", "train.checkpoint_every=2", "train.max_consecutive_skips=2", "train.max_rollbacks=2", &nan_list]);
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    fails(&args, &["after 2 rollbacks", "train.max_rollbacks"]);
    for (_, dir) in gandist::checkpoint::list(&run.join("checkpoints")) {
        let png = tmp.path().join("x.png");
        ok(&["sample", "--checkpoint", dir.to_str().unwrap(), "--n", "1", "--out", png.to_str().unwrap()]);
    }
}

/// A file-size limit (as a full disk would) makes the next checkpoint fail: the error says
/// the earlier checkpoints are untouched, and they still load.
#[test]
fn a_failed_checkpoint_write_keeps_the_previous_one() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("full");
    let first = smoke_args(&run, &["train.iterations=3"]);
    ok(&first.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let mut resumed = smoke_args(&run, &["train.iterations=6"]);
    resumed.extend(["--resume".to_string(), "auto".to_string()]);
    // 100 KiB: enough for logs and sample grids, too little for the ~500 KB state file.
    let o = Command::new("bash")
        .arg("-c")
        .arg("ulimit -f 100; exec \"$0\" \"$@\"")
        .arg(bin())
        .args(&resumed)
        .output()
        .unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("was not written") && t.contains("earlier checkpoints") && t.contains("untouched"), "{t}");
    let list: Vec<u64> = gandist::checkpoint::list(&run.join("checkpoints")).iter().map(|c| c.0).collect();
    assert_eq!(list, vec![3], "no partial checkpoint may be left: {list:?}");
    let leftovers: Vec<_> = std::fs::read_dir(run.join("checkpoints")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    let png = tmp.path().join("x.png");
    ok(&["sample", "--checkpoint", run.to_str().unwrap(), "--n", "1", "--out", png.to_str().unwrap()]);
}

/// Malformed configurations: every one is an error that names the problem, never a panic.
#[test]
fn malformed_config_corpus() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &[u8], &str)] = &[
        ("syntax", b"[train\niterations = 3\n", "invalid config file"),
        ("negative", b"[train]\niterations = -1\n", "iterations"),
        ("float for int", b"[critic]\nwidth = 1.5\n", "critic.width"),
        ("huge", b"[generator]\nwidth = 99999999999\n", "generator.width"),
        // The old keys' errors name the key the user wrote.
        ("float for int, old key", b"[model]\ndim = 1.5\n", "model.dim"),
        ("huge, old key", b"[model]\ndim = 99999999999\n", "model.dim"),
        ("table as value", b"model = 3\n", "model"),
        ("wrong enum", b"[loss]\nkind = \"wasserstein-ish\"\n", "wasserstein-ish"),
        ("unknown section", b"[optimiser]\nlr = 1\n", "optimiser"),
        ("unknown key in a retired table", b"[clip]\nmax_norm = 1\n", "clip.max_norm"),
        ("nan", b"[optim]\nlr_g = nan\n", "generator.lr"),
        ("inf", b"[optim]\nlr_d = inf\n", "critic.lr"),
        ("not utf-8", b"\xff\xfe\x00garbage", "cannot read config file"),
        ("empty device", b"[train]\ndevice = \"\"\n", "train.device"),
        ("batch over data", b"[data]\nbatch_size = 5000\nlimit = 100\n", "larger than the data set"),
    ];
    for (name, bytes, needle) in cases {
        let p = tmp.path().join(format!("{}.toml", name.replace(' ', "-")));
        std::fs::write(&p, bytes).unwrap();
        let run = tmp.path().join(format!("run-{}", name.replace(' ', "-")));
        let o = gandist(&["train", "--config", p.to_str().unwrap(), "--data", mnist_dir().to_str().unwrap(), "--run-dir", run.to_str().unwrap()]);
        let t = text(&o);
        assert!(!o.status.success(), "{name}: should fail: {t}");
        assert!(t.contains(needle), "{name}: expected {needle:?} in {t}");
        assert!(!t.contains("panicked"), "{name}: {t}");
    }
}
