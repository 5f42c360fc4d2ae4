//! End-to-end runs of `gandist train` and `gandist sample` on real MNIST.

mod common;
use common::*;

fn train_args<'a>(run: &'a str, data: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let cfg = Box::leak(smoke_config().to_string_lossy().to_string().into_boxed_str());
    let mut v = vec!["train", "--config", cfg, "--data", data, "--run-dir", run];
    v.extend_from_slice(extra);
    v
}

#[test]
fn short_run_has_finite_losses_grids_and_checkpoints() {
    let data = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&train_args(run.to_str().unwrap(), data.to_str().unwrap(), &[]));
    let log = gandist::scalar_log::read(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(log.len(), 3, "log_every = 2 over 6 iterations");
    for rec in &log {
        for k in ["d_loss", "g_loss", "wasserstein", "d_gp", "d_grad_norm", "g_grad_norm"] {
            let v = rec[k].as_f64().unwrap_or(f64::NAN);
            assert!(v.is_finite(), "{k} = {v} in {rec:?}");
        }
    }
    let png = image::open(run.join("samples/latest.png")).unwrap().to_luma8();
    assert_eq!((png.width(), png.height()), (8 * 30 + 2, 8 * 30 + 2));
    let distinct: std::collections::BTreeSet<u8> = png.pixels().map(|p| p.0[0]).collect();
    assert!(distinct.len() > 10, "the grid should hold generated images, not a blank");
    assert!(run.join("samples/step-000000003.png").exists());
    let ckpts = gandist::checkpoint::list(&run.join("checkpoints"));
    assert_eq!(ckpts.iter().map(|c| c.0).collect::<Vec<_>>(), vec![6, 3]);
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("batch_size = 16"));
}

/// 2N iterations straight and N + resume + N give bit-identical state on CPU, and the same
/// gradient-health counts (a threshold that classes every norm as vanishing makes them grow).
#[test]
fn resume_is_exact() {
    let data = mnist_dir();
    let d = data.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let split = tmp.path().join("split");
    let health = ["--set", "health.vanish_threshold=1e9", "--set", "health.vanish_patience=2"];
    ok(&train_args(straight.to_str().unwrap(), d, &[&["--set", "train.iterations=6"][..], &health].concat()));
    ok(&train_args(split.to_str().unwrap(), d, &[&["--set", "train.iterations=3"][..], &health].concat()));
    let out = ok(&train_args(split.to_str().unwrap(), d, &[&["--set", "train.iterations=6", "--resume", "auto"][..], &health].concat()));
    assert!(out.contains("resumed from"), "{out}");
    let a = state(&straight.join("checkpoints/step-000000006"));
    let b = state(&split.join("checkpoints/step-000000006"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, va) in &a {
        assert!(va.iter().zip(&b[k]).all(|(x, y)| x.to_bits() == y.to_bits()), "{k} differs after resume");
    }
    let last = |run: &std::path::Path| gandist::scalar_log::read(&run.join("metrics.jsonl")).unwrap().pop().unwrap();
    let (a_log, b_log) = (last(&straight), last(&split));
    assert_eq!(b_log["step"].as_u64(), Some(6));
    assert_eq!(a_log["g_vanishing_updates"].as_u64(), Some(5), "updates 2..=6 under the threshold: {a_log:?}");
    for k in ["g_vanishing_updates", "d_vanishing_updates", "g_health", "d_health"] {
        assert_eq!(a_log[k], b_log[k], "{k} after resume");
    }
    // And the run really moved: the state differs from step 3.
    let c = state(&split.join("checkpoints/step-000000003"));
    assert_ne!(c["generator.fc.weight"], a["generator.fc.weight"]);
}

#[test]
fn bad_configs_and_run_dirs_fail_clearly() {
    let data = mnist_dir();
    let d = data.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    let r = run.to_str().unwrap();
    fails(&train_args(r, d, &["--set", "critic.lr=0"]), &["critic.lr", "expected a finite value > 0"]);
    // The old name still works, and its error names both.
    fails(&train_args(r, d, &["--set", "optim.lr_d=0"]), &["critic.lr", "optim.lr_d", "expected a finite value > 0"]);
    fails(&train_args(r, d, &["--set", "train.n_critic=0"]), &["train.n_critic"]);
    fails(&train_args(r, d, &["--set", "data.batch_size=0"]), &["data.batch_size"]);
    fails(&train_args(r, d, &["--set", "critic.penalty_weight=-1"]), &["critic.penalty_weight"]);
    fails(&train_args(r, d, &["--set", "model.widht=3"]), &["widht"]);
    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, "[train]\niterations = \"many\"\n").unwrap();
    fails(&["train", "--config", bad.to_str().unwrap(), "--data", d, "--run-dir", r], &["bad.toml", "iterations"]);
    fails(&["train", "--config", "/nonexistent.toml", "--data", d], &["/nonexistent.toml"]);
    // Missing data names the folder and the way to get it.
    fails(&train_args(r, tmp.path().to_str().unwrap(), &[]), &["not found", "gandist data fetch"]);
    // A run directory that cannot be created.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let under_file = file.join("run");
    fails(&train_args(under_file.to_str().unwrap(), d, &[]), &["cannot create run directory"]);
    // A finished run is not overwritten without --resume.
    ok(&train_args(r, d, &["--set", "train.iterations=3"]));
    fails(&train_args(r, d, &[]), &["already holds checkpoints", "--resume auto"]);
    // Resuming with a different trajectory-defining setting is refused.
    fails(&train_args(r, d, &["--set", "critic.lr=3e-4", "--resume", "auto"]), &["different configuration"]);
    // A corrupted newest checkpoint: --resume auto falls back; an explicit path fails clearly.
    std::fs::create_dir_all(run.join("checkpoints/step-000000005")).unwrap();
    std::fs::write(run.join("checkpoints/step-000000005/meta.json"), "{").unwrap();
    fails(
        &train_args(r, d, &["--resume", run.join("checkpoints/step-000000005").to_str().unwrap()]),
        &["step-000000005", "not a valid checkpoint meta.json"],
    );
    let out = ok(&train_args(r, d, &["--resume", "auto"]));
    assert!(out.contains("skipped") && out.contains("resumed from"), "{out}");
}

#[test]
fn sample_writes_png_and_idx() {
    let data = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&train_args(run.to_str().unwrap(), data.to_str().unwrap(), &["--set", "train.iterations=3"]));
    let png = tmp.path().join("g.png");
    ok(&["sample", "--checkpoint", run.to_str().unwrap(), "--n", "10", "--out", png.to_str().unwrap()]);
    let img = image::open(&png).unwrap().to_luma8();
    assert_eq!((img.width(), img.height()), (4 * 30 + 2, 3 * 30 + 2));
    let idx = tmp.path().join("s.idx");
    let ck = run.join("checkpoints/step-000000003");
    ok(&["sample", "--checkpoint", ck.to_str().unwrap(), "--n", "7", "--out", idx.to_str().unwrap(), "--format", "idx"]);
    let parsed = gandist::data::idx::read_idx(&idx, 3).unwrap();
    assert_eq!(parsed.dims, vec![7, 28, 28]);
    fails(&["sample", "--checkpoint", tmp.path().to_str().unwrap(), "--out", png.to_str().unwrap()], &["neither a checkpoint directory"]);
}

/// `gandist checkpoint latest` answers what `train --resume auto` takes, by the same code: the
/// newest checkpoint that checks (an older one when the newest is damaged), nothing for a run
/// without checkpoints, an error when none is usable or the configuration is another's; as
/// KEY=VALUE lines and as JSON; for a format-1 checkpoint written in the old keys too.
#[test]
fn checkpoint_latest_is_what_resume_auto_takes() {
    let data = mnist_dir();
    let d = data.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let r = run.to_str().unwrap();
    let latest = |extra: &[&str]| ok(&[&["checkpoint", "latest", "--run-dir", r][..], extra].concat());
    // Stdout holds the answer alone (warnings go to stderr).
    let stdout_json = |args: &[&str]| -> serde_json::Value {
        let o = gandist(args);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
    };
    let json = |extra: &[&str]| stdout_json(&[&["checkpoint", "latest", "--run-dir", r, "--json"][..], extra].concat());
    assert_eq!(json(&[]), serde_json::json!({"run_dir": r, "checkpoint": null, "step": null, "batch_size": null, "world_size": null}));
    assert!(latest(&[]).contains("checkpoint=\nstep=\n"), "no checkpoint: empty values");
    ok(&train_args(r, d, &[]));
    let ck = |step: u64| run.join("checkpoints").join(gandist::checkpoint::dir_name(step)).to_str().unwrap().to_string();
    assert_eq!(json(&[]), serde_json::json!({"run_dir": r, "checkpoint": ck(6), "step": 6, "batch_size": 16, "world_size": 1}));
    let text = latest(&[]);
    assert!(text.contains(&format!("checkpoint={}\nstep=6\nbatch_size=16\nworld_size=1\n", ck(6))), "{text}");
    // With the run's own configuration: the same answer; with another trajectory, the refusal
    // `train --resume auto` would give.
    let cfg = smoke_config();
    let c = cfg.to_str().unwrap();
    assert_eq!(json(&["--config", c])["step"], 6);
    fails(&["checkpoint", "latest", "--run-dir", r, "--config", c, "--set", "critic.lr=3e-4"], &["different configuration", "critic.lr"]);
    // A damaged newest checkpoint: both take step 3.
    std::fs::write(run.join("checkpoints/step-000000006/state.safetensors"), b"truncated").unwrap();
    let out = ok(&["checkpoint", "latest", "--run-dir", r, "--json"]);
    assert!(out.contains("skipped") && out.contains("step-000000006"), "the skipped checkpoint is named: {out}");
    assert_eq!(json(&[])["step"], 3);
    let out = ok(&train_args(r, d, &["--set", "train.iterations=4", "--resume", "auto"]));
    assert!(out.contains("resumed from") && out.contains("at step 3"), "{out}");
    // Nothing usable: an error naming why, as --resume auto fails.
    for step in [3, 4, 6] {
        let _ = std::fs::write(run.join(format!("checkpoints/step-00000000{step}/meta.json")), "{");
    }
    fails(&["checkpoint", "latest", "--run-dir", r], &["no usable checkpoint"]);
    // A format-1 checkpoint, its configuration in the old keys.
    let old = tmp.path().join("old");
    let dst = old.join("checkpoints/step-000000004");
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["meta.json", "state.safetensors"] {
        std::fs::copy(repo().join("tests/fixtures/checkpoint-v1/step-000000004").join(f), dst.join(f)).unwrap();
    }
    let v = stdout_json(&["checkpoint", "latest", "--run-dir", old.to_str().unwrap(), "--json"]);
    assert_eq!((v["step"].clone(), v["batch_size"].clone()), (serde_json::json!(4), serde_json::json!(4)));
}

/// The loop reads from the device only at its sync steps (here the logging steps 3, 6 and 9,
/// which are also the sample and checkpoint steps), never in the iterations between them;
/// each rank says so at the end.
#[test]
fn host_reads_happen_at_sync_steps_only() {
    let data = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let sets = ["--set", "train.iterations=9", "--set", "train.log_every=3", "--set", "train.sample_every=9", "--set", "train.checkpoint_every=9"];
    let out = ok(&train_args(run.to_str().unwrap(), data.to_str().unwrap(), &sets));
    // The message after the log line's time, level and rank.
    let line = out
        .lines()
        .find_map(|l| l.find("host reads of device data:").map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no host-read line in {out}"));
    assert!(line.ends_with("at 3 sync steps, 0 between them"), "{line}");
    let at_sync: u64 = line.split_whitespace().nth(5).unwrap().parse().unwrap();
    assert!(at_sync >= 3, "{line}");
    assert!(out.contains("rank 0/1 (local 0/1) on host") && out.contains("backend local"), "{out}");
}

/// With a lazy penalty (every 4th critic update) no logged update of this run applies it, yet
/// every progress line shows the newest computed penalty value, never NaN.
#[test]
fn lazy_penalty_progress_lines_show_the_newest_value() {
    let data = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // Smoke: 2 critic updates per iteration, a log every 2 iterations: the penalty falls on
    // critic updates 0, 4, 8, the logged ones are 3, 7, 11.
    let sets = ["--set", "critic.penalty_every=4", "--set", "train.log_every=2"];
    let out = ok(&train_args(run.to_str().unwrap(), data.to_str().unwrap(), &sets));
    let lines: Vec<&str> = out.lines().filter(|l| l.contains(" d_loss ")).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines.iter().all(|l| l.contains(" gp ") && !l.contains("NaN")), "{out}");
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert!(!log.contains("\"d_gp\""), "the logged updates should not be penalty updates: {log}");
}
