//! Every pair of the switches that change a training step, as tiny CPU runs: an all-pairs
//! covering (tests/pairwise) of loss kind, penalty kind and laziness, label smoothing, norm
//! and value clipping, feature matching, historical averaging, L2, weight clipping, spectral
//! norm, EMA, TTUR, optimizer, data set, TensorBoard, the evaluation metric, the forced
//! reduction at world size 1 and world size (2 = real mpirun). Each row trains 4
//! iterations with a checkpoint at 2 and 4, and must end with finite parameters and no skipped
//! update; resumed from step 2 it must reach the same state at step 4, bit for bit; and
//! `sample` and `eval` must work on its checkpoint. The rows are printed before they run.

mod common;
mod pairwise;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A switch and its levels: a label and the settings it stands for.
struct Factor {
    name: &'static str,
    levels: &'static [(&'static str, &'static [&'static str])],
}

const OFF: (&str, &[&str]) = ("off", &[]);

const FACTORS: &[Factor] = &[
    Factor {
        name: "loss",
        levels: &[
            ("wgan", &["loss.kind=wgan"]),
            ("minimax", &["loss.kind=minimax"]),
            ("non-saturating", &["loss.kind=non-saturating"]),
            ("hinge", &["loss.kind=hinge"]),
            ("least-squares", &["loss.kind=least-squares"]),
        ],
    },
    Factor {
        name: "penalty",
        levels: &[
            ("two-sided", &["critic.penalty=two-sided"]),
            ("one-sided", &["critic.penalty=one-sided"]),
            ("r1", &["critic.penalty=r1"]),
            ("r2", &["critic.penalty=r2"]),
            ("none", &["critic.penalty=none"]),
        ],
    },
    Factor { name: "lazy", levels: &[("every", &[]), ("every-2", &["critic.penalty_every=2"])] },
    Factor {
        name: "smoothing",
        levels: &[("none", &[]), ("one-sided", &["critic.label_smoothing=one-sided"]), ("two-sided", &["critic.label_smoothing=two-sided"])],
    },
    Factor { name: "clip-norm", levels: &[OFF, ("on", &["critic.clip_norm=1.0", "generator.clip_norm=0.1"])] },
    Factor { name: "clip-value", levels: &[OFF, ("on", &["critic.clip_value=0.01", "generator.clip_value=0.01"])] },
    Factor {
        name: "feature-matching",
        levels: &[OFF, ("with-adv", &["generator.feature_matching=1.0"]), ("alone", &["generator.feature_matching=1.0", "generator.adversarial=0"])],
    },
    Factor { name: "hist-avg", levels: &[OFF, ("on", &["critic.hist_avg=1e-3", "generator.hist_avg=1e-3"])] },
    Factor { name: "l2", levels: &[OFF, ("on", &["critic.l2=1e-4", "generator.l2=1e-4"])] },
    Factor { name: "weight-clip", levels: &[OFF, ("on", &["critic.weight_clip=0.05"])] },
    Factor { name: "spectral", levels: &[OFF, ("on", &["critic.spectral_norm=true"])] },
    Factor { name: "ema", levels: &[OFF, ("on", &["ema.half_life_steps=2"])] },
    Factor { name: "ttur", levels: &[OFF, ("on", &["critic.lr=4e-4", "generator.lr=1e-4"])] },
    Factor { name: "optim", levels: &[("adam", &[]), ("sgd", &["critic.optimizer=sgd", "generator.optimizer=sgd"])] },
    Factor { name: "data", levels: &[("mnist", &[]), ("stacked", &["data.dataset=\"stacked-mnist\""])] },
    Factor { name: "tensorboard", levels: &[OFF, ("on", &["log.tensorboard=true"])] },
    // Every row evaluates at step 4 (see `EVAL`); this picks what it scores.
    Factor {
        name: "eval",
        levels: &[
            ("classifier-fid", &[]),
            ("inception-fid", &["eval.metric=\"inception-fid\""]),
            ("kid", &["eval.metric=\"kid\""]),
        ],
    },
    Factor { name: "force-reduce", levels: &[OFF, ("on", &["dist.force_reduce=true"])] },
    Factor { name: "ranks", levels: &[("1", &[]), ("2", &[])] },
];

/// Label smoothing needs a BCE loss (minimax or non-saturating): config validation refuses
/// anything else.
fn allowed(row: &[Option<usize>]) -> bool {
    !matches!((row[0], row[3]), (Some(kind), Some(smoothing)) if smoothing > 0 && !(1..=2).contains(&kind))
}

/// Tiny and quick: 4 iterations of 2 critic updates at batch 4 on 64 images.
const BASE: &[&str] = &[
    "critic.width=2", "generator.width=2",
    "model.latent=4",
    "data.batch_size=4",
    "data.limit=64",
    "train.iterations=4",
    "train.checkpoint_every=2",
    "train.sample_every=4",
    "train.log_every=2",
];

/// What every row's evaluation needs: the classifier, a random-weight Inception file (pytorch-fid's
/// architecture, written by tests/reference/random_inception_weights.py) and a reference cache
/// shared by the rows. Two generated images against 8 training images keep the Inception
/// passes to a few seconds a row.
struct Eval {
    classifier: PathBuf,
    weights: PathBuf,
    cache: PathBuf,
}

static EVAL: std::sync::OnceLock<Eval> = std::sync::OnceLock::new();

fn eval_sets() -> Vec<String> {
    let e = EVAL.get().expect("set before the rows run");
    vec![
        "eval.every=4".into(),
        "eval.n=2".into(),
        "eval.reference_n=8".into(),
        format!("eval.classifier=\"{}\"", e.classifier.display()),
        format!("eval.inception_weights=\"{}\"", e.weights.display()),
    ]
}

/// The key of a row's evaluation in metrics.jsonl.
fn eval_key(row: &[usize]) -> &'static str {
    let i = FACTORS.iter().position(|f| f.name == "eval").unwrap();
    match FACTORS[i].levels[row[i]].0 {
        "inception-fid" => "inception_fid",
        "kid" => "kid",
        _ => "fid",
    }
}

fn ranks(row: &[usize]) -> usize {
    if FACTORS.last().unwrap().levels[row[FACTORS.len() - 1]].0 == "2" { 2 } else { 1 }
}

fn describe(row: &[usize]) -> String {
    FACTORS.iter().zip(row).map(|(f, &l)| format!("{}={}", f.name, f.levels[l].0)).collect::<Vec<_>>().join(" ")
}

/// `gandist train` for a row, with 1 rank or under mpirun with 2.
fn train(row: &[usize], run: &Path, resume: bool) -> Command {
    let mut c = match ranks(row) {
        1 => Command::new(bin()),
        n => {
            let mut c = Command::new("mpirun");
            c.args(["-n", &n.to_string(), "--oversubscribe", "-x", "GANDIST_CACHE"]).env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1").arg(bin());
            c
        }
    };
    c.args(["train", "--config", smoke_config().to_str().unwrap(), "--data", mnist_dir().to_str().unwrap(), "--run-dir", run.to_str().unwrap()]);
    let sets = BASE.iter().chain(FACTORS.iter().zip(row).flat_map(|(f, &l)| f.levels[l].1.iter()));
    for s in sets.map(|s| s.to_string()).chain(eval_sets()) {
        c.args(["--set", &s]);
    }
    c.env("GANDIST_CACHE", &EVAL.get().unwrap().cache);
    if resume {
        // The resumed run is checked for its state only; an evaluation does not change the
        // trajectory (eval.every is outside the trajectory hash), and an Inception pass on
        // one CPU thread costs about 6 s a row.
        c.args(["--set", "eval.every=0", "--resume", "auto"]);
    }
    c
}

fn run_ok(c: &mut Command, what: &str) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{what} failed: {t}");
    assert!(!t.contains("panicked"), "{what}: {t}");
    t
}

/// Runs one row in `dir`; an error names the row.
fn check_row(row: &[usize], dir: &Path, classifier: &Path) {
    let what = describe(row);
    let straight = dir.join("straight");
    run_ok(&mut train(row, &straight, false), &what);
    let at4 = straight.join("checkpoints/step-000000004");
    let a = state(&at4);
    for (k, v) in &a {
        assert!(v.iter().all(|x| x.is_finite()), "{what}: {k} holds a non-finite value");
    }
    let log = gandist::scalar_log::read(&straight.join("metrics.jsonl")).unwrap();
    let last = log.last().unwrap();
    assert_eq!(last["step"].as_u64(), Some(4), "{what}");
    assert_eq!(last["skipped_updates"].as_u64(), Some(0), "{what}: {last:?}");
    assert_eq!(last["world_size"].as_u64(), Some(ranks(row) as u64), "{what}");
    for k in ["d_loss", "g_loss", eval_key(row)] {
        assert!(last[k].as_f64().is_some_and(f64::is_finite), "{what}: {k} in {last:?}");
    }
    // TensorBoard: one event file, rank 0's, when on.
    let event_files = std::fs::read_dir(&straight).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("tfevents")).count();
    assert_eq!(event_files, what.contains("tensorboard=on") as usize, "{what}: event files");

    // Resumed from step 2, the run reaches the same state at step 4.
    let resumed = dir.join("resumed");
    std::fs::create_dir_all(resumed.join("checkpoints")).unwrap();
    copy_dir(&straight.join("checkpoints/step-000000002"), &resumed.join("checkpoints/step-000000002"));
    let out = run_ok(&mut train(row, &resumed, true), &format!("resume of {what}"));
    assert!(out.contains("resumed from") && out.contains("at step 2"), "{what}: {out}");
    let b = state(&resumed.join("checkpoints/step-000000004"));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}");
    for (k, va) in &a {
        assert!(va.iter().zip(&b[k]).all(|(x, y)| x.to_bits() == y.to_bits()), "{what}: {k} differs after resume");
    }

    // `sample` and `eval` on the checkpoint.
    let stacked = what.contains("data=stacked");
    let png = dir.join("s.png");
    run_ok(Command::new(bin()).args(["sample", "--checkpoint", straight.to_str().unwrap(), "--n", "4", "--out", png.to_str().unwrap()]), &format!("sample of {what}"));
    let img = image::open(&png).unwrap();
    assert_eq!(img.color().channel_count(), if stacked { 3 } else { 1 }, "{what}");
    let out = run_ok(
        Command::new(bin()).args(["eval", "--checkpoint", at4.to_str().unwrap(), "--n", "16", "--classifier", classifier.to_str().unwrap()]),
        &format!("eval of {what}"),
    );
    let json: serde_json::Map<String, Value> = serde_json::from_str(out.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert!(json["fid"].as_f64().is_some_and(f64::is_finite), "{what}: {json:?}");
    assert_eq!(json["eval_n"].as_u64(), Some(16), "{what}");
    assert_eq!(json.contains_key("modes_covered"), stacked, "{what}: {json:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A classifier good enough to run `eval` (its accuracy does not matter here).
fn classifier(dir: &Path) -> PathBuf {
    let path = dir.join("classifier.safetensors");
    let data = mnist_dir();
    ok(&["classifier", "train", "--data", data.to_str().unwrap(), "--out", path.to_str().unwrap(), "--epochs", "1", "--limit", "256", "--min-accuracy", "0"]);
    path
}

#[test]
fn every_pair_of_step_switches_trains_resumes_samples_and_evaluates() {
    let sizes: Vec<usize> = FACTORS.iter().map(|f| f.levels.len()).collect();
    let rows = pairwise::all_pairs(&sizes, allowed);
    // Written past the test harness's capture, so that CI's log shows what was covered.
    let mut err = std::io::stderr();
    writeln!(err, "switch pairs: {} rows cover every pair of {} switches", rows.len(), FACTORS.len()).unwrap();
    for (i, r) in rows.iter().enumerate() {
        writeln!(err, "  row {i:2}: {}", describe(r)).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let classifier = classifier(tmp.path());
    let weights = tmp.path().join("inception-random.pth");
    let venv = std::env::var_os("GANDIST_TORCH_VENV").map(PathBuf::from).expect("GANDIST_TORCH_VENV (source launch/env.sh)");
    let o = Command::new(venv.join("bin/python")).arg(repo().join("tests/reference/random_inception_weights.py")).arg(&weights).output().unwrap();
    assert!(o.status.success(), "random Inception weights: {}", text(&o));
    let _ = EVAL.set(Eval { classifier: classifier.clone(), weights, cache: tmp.path().join("cache") });
    // Two rows at a time (each process uses one thread); after a failure no new row starts.
    let queue = std::sync::Mutex::new(rows.iter().enumerate().collect::<std::collections::VecDeque<_>>());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let start = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let Some((i, row)) = queue.lock().unwrap().pop_front() else { break };
                if failed.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let t = std::time::Instant::now();
                let done = std::panic::catch_unwind(|| check_row(row, &tmp.path().join(format!("row-{i}")), &classifier));
                if let Err(e) = done {
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                    std::panic::resume_unwind(e);
                }
                writeln!(std::io::stderr(), "  row {i:2} ok in {:.1} s", t.elapsed().as_secs_f64()).unwrap();
            });
        }
    });
    writeln!(err, "switch pairs: {} rows passed in {:.0} s", rows.len(), start.elapsed().as_secs_f64()).unwrap();
}
