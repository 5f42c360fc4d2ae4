//! Data-parallel training under real Open MPI: world-size invariance, agreement on clip and
//! skip decisions, the penalty's second-order terms inside the reduction, a killed rank, an
//! agreed stop on SIGTERM, resumption on a different number of ranks, errors on one rank
//! (at start-up, in training, in the bench) ending the whole job, the deadlines of rank 0's
//! work and of collectives kept apart, the node-local rank from MPI, and the collectives
//! self-test.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn mpirun(n: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", &n.to_string(), "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .arg(bin());
    c
}

/// `gandist train` on the smoke config under `mpirun -n n`, with extra overrides.
fn train_cmd(n: usize, run: &Path, sets: &[String], extra: &[&str]) -> Command {
    let mut c = mpirun(n);
    c.args(["train", "--config", smoke_config().to_str().unwrap(), "--data", mnist_dir().to_str().unwrap()]);
    c.args(["--run-dir", run.to_str().unwrap()]);
    for s in sets {
        c.args(["--set", s]);
    }
    c.args(extra);
    c
}

fn run_ok(mut c: Command) -> String {
    let o: Output = c.output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{c:?} failed: {t}");
    t
}

/// Largest |a - b| over a tensor, relative to the tensor's largest |a|: float32 summation
/// order changes each value by a few ulps of the tensor's scale, not of each tiny element.
fn worst_relative(a: &BTreeMap<String, Vec<f32>>, b: &BTreeMap<String, Vec<f32>>) -> (String, f64) {
    let mut worst = (String::new(), 0.0);
    for (k, va) in a {
        let vb = &b[k];
        let scale = va.iter().fold(0f64, |m, x| m.max(x.abs() as f64)).max(1e-12);
        let diff = va.iter().zip(vb).fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()));
        if diff / scale > worst.1 {
            worst = (k.clone(), diff / scale);
        }
    }
    worst
}

fn networks_only(m: BTreeMap<String, Vec<f32>>) -> BTreeMap<String, Vec<f32>> {
    m.into_iter().filter(|(k, _)| k.starts_with("generator.") || k.starts_with("critic.")).collect()
}

/// Per logged step: (critic clips, generator clipped, skipped updates so far).
fn decisions(run: &Path) -> Vec<(u64, bool, u64)> {
    gandist::scalar_log::read(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["d_clipped_updates"].as_u64().unwrap(),
                r.get("g_clipped").and_then(Value::as_bool).unwrap_or(false),
                r["skipped_updates"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn flagship_sets(nan_rank: usize) -> Vec<String> {
    [
        "train.iterations=10",
        "train.log_every=1",
        "train.checkpoint_every=10",
        "train.sample_every=10",
        // Thresholds inside the observed norm ranges, so that some updates clip and some do not.
        "critic.clip_norm=2.6",
        "generator.clip_norm=0.027",
        "faults.nan_critic_updates=[3, 11]",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("faults.nan_rank={nan_rank}")])
    .collect()
}

#[test]
fn same_result_on_1_2_and_4_ranks_with_clipping_and_skips() {
    let tmp = tempfile::tempdir().unwrap();
    let mut finals = Vec::new();
    let mut all_decisions = Vec::new();
    for n in [1usize, 2, 4] {
        let run = tmp.path().join(format!("n{n}"));
        // The last rank injects the NaN: every rank must still skip the same update.
        let out = run_ok(train_cmd(n, &run, &flagship_sets(n - 1), &[]));
        // The MPI backend's staging of reductions is counted apart from the trainer's reads.
        assert_eq!(out.contains("more staged the MPI backend's reductions"), n > 1, "{out}");
        finals.push(networks_only(state(&run.join("checkpoints/step-000000010"))));
        all_decisions.push(decisions(&run));
    }
    let d1 = &all_decisions[0];
    assert_eq!(d1.len(), 10);
    let clips: u64 = d1.iter().map(|d| d.0).sum();
    assert!(clips > 0 && clips < 20, "critic clipping should be mixed, got {clips} of 20: {d1:?}");
    assert!(d1.iter().any(|d| d.1) && d1.iter().any(|d| !d.1), "generator clipping should be mixed: {d1:?}");
    assert_eq!(d1.last().unwrap().2, 2, "two injected NaN updates skipped");
    for (i, n) in [(1, 2), (2, 4)] {
        assert_eq!(&all_decisions[i], d1, "clip/skip decisions on {n} ranks differ from 1 rank");
        let (name, rel) = worst_relative(&finals[0], &finals[i]);
        assert!(rel <= 1e-5, "{n} ranks: {name} differs by {rel:e} of its scale");
    }
}

#[test]
fn penalty_gradient_left_out_of_the_reduction_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("bad");
    let mut sets = flagship_sets(0);
    sets.push("faults.unreduced_penalty=true".into());
    sets.push("faults.nan_critic_updates=[]".into());
    let o = train_cmd(2, &run, &sets, &[]).output().unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "ranks applying only their own penalty gradient must diverge: {t}");
    assert!(t.contains("parameters differ between ranks"), "{t}");
    // The same setting is harmless on one rank (nothing to reduce), which shows the test
    // above fails for the reduction and not for the switch itself.
    let one = tmp.path().join("one");
    run_ok(train_cmd(1, &one, &sets, &[]));
}

fn wait_for(path: &Path, timeout: Duration) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < timeout, "{} did not appear within {timeout:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The rank processes under a running mpirun (found by their unique run directory).
fn rank_pids(mpirun: &Child, run: &Path) -> Vec<u32> {
    let out = Command::new("pgrep").args(["-f", &format!("gandist train .*{}", run.display())]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse().ok()).filter(|&p| p != mpirun.id()).collect()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> (std::process::ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return (s, start.elapsed());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("job still running {timeout:?} after the fault");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn long_run(n: usize, run: &Path) -> Child {
    let sets: Vec<String> = ["train.iterations=100000", "train.checkpoint_every=2", "train.log_every=1"].iter().map(|s| s.to_string()).collect();
    train_cmd(n, run, &sets, &[]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

#[test]
fn a_killed_rank_ends_the_job_and_the_last_checkpoint_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("killed");
    let mut child = long_run(2, &run);
    wait_for(&run.join("checkpoints/step-000000004"), Duration::from_secs(120));
    let pids = rank_pids(&child, &run);
    assert_eq!(pids.len(), 2, "expected 2 rank processes, found {pids:?}");
    Command::new("kill").args(["-KILL", &pids[1].to_string()]).status().unwrap();
    let (status, took) = wait_exit(&mut child, Duration::from_secs(30));
    assert!(!status.success(), "the job must fail when a rank dies");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("signal 9") || err.contains("Killed") || err.contains("exited on signal"), "mpirun should name the dead process: {err}");
    let png = tmp.path().join("after.png");
    ok(&["sample", "--checkpoint", run.to_str().unwrap(), "--n", "4", "--out", png.to_str().unwrap()]);
}

#[test]
fn sigterm_on_one_rank_stops_all_with_a_checkpoint_and_resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("stopped");
    let mut child = long_run(2, &run);
    wait_for(&run.join("checkpoints/step-000000002"), Duration::from_secs(120));
    let pids = rank_pids(&child, &run);
    assert_eq!(pids.len(), 2, "{pids:?}");
    Command::new("kill").args(["-TERM", &pids[1].to_string()]).status().unwrap();
    let (status, _) = wait_exit(&mut child, Duration::from_secs(60));
    assert!(!status.success(), "a stopped run reports the signal in its exit status");
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("stop requested"), "{err}");
    let (stopped_at, dir) = gandist::checkpoint::list(&run.join("checkpoints"))[0].clone();
    assert!(dir.exists());
    // Continue to stopped_at + 3 and compare with a straight run on the same ranks.
    let target = stopped_at + 3;
    let sets = vec![format!("train.iterations={target}"), "train.checkpoint_every=2".into(), "train.log_every=1".into()];
    run_ok(train_cmd(2, &run, &sets, &["--resume", "auto"]));
    let straight = tmp.path().join("straight");
    run_ok(train_cmd(2, &straight, &sets, &[]));
    let name = gandist::checkpoint::dir_name(target);
    let a = state(&run.join("checkpoints").join(&name));
    let b = state(&straight.join("checkpoints").join(&name));
    assert_eq!(worst_relative(&a, &b).1, 0.0, "resume after an agreed stop must be exact");
}

#[test]
fn a_checkpoint_from_4_ranks_resumes_on_2_and_on_1() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = |iters: u64| -> Vec<String> { vec![format!("train.iterations={iters}"), "train.checkpoint_every=5".into(), "train.log_every=5".into()] };
    let first = tmp.path().join("four");
    let out = run_ok(train_cmd(4, &first, &sets(5), &[]));
    // Steps 1, 2 and 4 are not sync steps (samples every 3, log and checkpoint at 5): no
    // rank read from the device in them.
    assert!(out.contains("at 2 sync steps, 0 between them"), "{out}");
    let straight = tmp.path().join("straight");
    run_ok(train_cmd(1, &straight, &sets(10), &[]));
    let reference = networks_only(state(&straight.join("checkpoints/step-000000010")));
    for n in [2usize, 1] {
        let run = tmp.path().join(format!("resumed-on-{n}"));
        copy_dir(&first, &run);
        let out = run_ok(train_cmd(n, &run, &sets(10), &["--resume", "auto"]));
        assert!(out.contains("resumed from"), "{out}");
        let got = networks_only(state(&run.join("checkpoints/step-000000010")));
        let (name, rel) = worst_relative(&reference, &got);
        assert!(rel <= 1e-5, "resumed on {n}: {name} differs by {rel:e}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst: PathBuf = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn nccl_without_gpus_is_a_clear_error_and_auto_falls_back_to_mpi() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("nccl");
    let sets = vec!["dist.backend=\"nccl\"".to_string(), "train.iterations=2".into()];
    let o = train_cmd(2, &run, &sets, &[]).output().unwrap();
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("dist.backend = \"nccl\" cannot be used: rank 0 on") && t.contains("computes on cpu"), "{t}");
    let o = mpirun(2).args(["bench", "--iters", "1", "--warmup", "0", "--batch", "8", "--set", "critic.width=4", "--set", "generator.width=4", "--set", "train.threads=1"]).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("backend mpi ranks 2") && t.contains("all-reduce: 6 calls"), "{t}");
}

/// Runs `c` and waits at most `limit` for it, killing it past that.
fn output_within(mut c: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let (status, took) = wait_exit(&mut child, limit);
    let mut out = child.wait_with_output().unwrap();
    out.status = status;
    assert!(start.elapsed() >= took);
    (out, took)
}

/// The arguments of a smoke training (without the binary).
fn train_args(run: &Path, sets: &[String]) -> Vec<String> {
    let mut v: Vec<String> = ["train", "--config", smoke_config().to_str().unwrap(), "--data", mnist_dir().to_str().unwrap(), "--run-dir", run.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for s in sets {
        v.extend(["--set".to_string(), s.clone()]);
    }
    v
}

/// A setting that only rank 1 sees (an impossible device) fails it in `collectives::init`, after MPI
/// started: the job ends at once on every rank, naming the rank and the setting, instead of
/// leaving rank 0 waiting in the start-up gather.
#[test]
fn a_start_up_error_on_one_rank_ends_the_job_with_its_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    let sets = |dev: &str| vec![format!("train.device=\"{dev}\""), "train.iterations=3".into()];
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-n", "1"]).arg(bin()).args(train_args(&run, &sets("cpu")));
    c.args([":", "-n", "1"]).arg(bin()).args(train_args(&run, &sets("cuda:3")));
    let (o, took) = output_within(c, Duration::from_secs(60));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("1 of 2 ranks could not start: rank 1 on") && t.contains("train.device = \"cuda:3\""), "{t}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

/// An error on one rank in the middle of training (an injected fault, as a device error
/// would be) ends the whole job within seconds with that rank's message.
#[test]
fn an_error_on_one_rank_during_training_ends_the_job() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("r");
    let sets: Vec<String> = ["train.iterations=1000", "faults.fail_critic_update=5", "faults.fail_rank=1"].iter().map(|s| s.to_string()).collect();
    let (o, took) = output_within(train_cmd(2, &run, &sets, &[]), Duration::from_secs(90));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("ERROR rank=1: injected fault at critic update 5 on rank 1"), "{t}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// The bench ends the whole job on an error too (it used to return on the failing rank alone
/// and leave the other in its all-reduce).
#[test]
fn an_error_on_one_rank_in_the_bench_ends_the_job() {
    let mut c = mpirun(2);
    c.args(["bench", "--iters", "50", "--warmup", "0", "--batch", "8", "--set", "critic.width=4", "--set", "generator.width=4", "--set", "train.threads=1"]);
    c.args(["--set", "faults.fail_critic_update=3", "--set", "faults.fail_rank=1"]);
    let (o, took) = output_within(c, Duration::from_secs(90));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("ERROR rank=1: injected fault at critic update 3 on rank 1"), "{t}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// Rank 0's own work (here a 4 s stall at each sample and checkpoint step, as slow storage
/// would cause) is bounded by dist.root_work_timeout_seconds and not by the collective
/// deadline: with a 1 s collective deadline the run finishes, since the others wait for rank 0
/// at a host barrier, not inside a collective; with a 1 s root-work deadline the job ends
/// with a message naming that setting.
#[test]
fn rank_0_work_has_its_own_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let base = ["train.iterations=4", "train.sample_every=2", "train.checkpoint_every=2", "faults.root_work_delay_seconds=4"];
    let sets = |extra: &[&str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let ok_run = tmp.path().join("ok");
    run_ok(train_cmd(2, &ok_run, &sets(&["dist.timeout_seconds=1", "dist.root_work_timeout_seconds=60"]), &[]));
    assert!(ok_run.join("checkpoints/step-000000004").exists());
    let late = tmp.path().join("late");
    let (o, took) = output_within(train_cmd(2, &late, &sets(&["dist.root_work_timeout_seconds=1"]), &[]), Duration::from_secs(90));
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(t.contains("ERROR rank=1:") && t.contains("did not complete within 1s") && t.contains("dist.root_work_timeout_seconds"), "{t}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

/// The node-local rank comes from MPI (MPI_Comm_split_type), not from launcher variables:
/// with Open MPI's own variable removed and SLURM_LOCALID = 0 on every rank (what MPICH or
/// Intel MPI inside a Slurm allocation leave), the two ranks on this node are still local
/// ranks 0 and 1. The collectives self-test passes over MPI on both.
#[test]
fn local_ranks_come_from_mpi_and_the_collectives_self_test_passes() {
    let mut c = Command::new("mpirun");
    c.args(["-n", "2", "--oversubscribe", "env", "-u", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID=0", "SLURM_STEP_ID=0"]);
    c.arg(bin()).args(["selftest-collectives", "--device", "cpu", "--set", "dist.backend=\"mpi\""]);
    let t = run_ok(c);
    assert!(t.contains("rank 0/2 (local 0/2) on host") && t.contains("rank 1/2 (local 1/2) on host"), "{t}");
    assert_self_test_rows(&t, 2);
    assert!(t.contains("1000003 floats on cpu summed exactly in place over 2 rank(s)"), "{t}");
    assert!(t.contains("averaged in place over 2 rank(s), exactly"), "{t}");
    // Three ranks: a mean whose 1/3 rounds (within the stated tolerance).
    let mut c = mpirun(3);
    c.args(["selftest-collectives", "--device", "cpu", "--set", "dist.backend=\"mpi\""]);
    let t = run_ok(c);
    assert_self_test_rows(&t, 3);
    assert!(t.contains("averaged in place over 3 rank(s), within world-size roundings"), "{t}");
}

/// Every row of the collectives self-test passed on every rank, printed in order.
fn assert_self_test_rows(t: &str, ranks: usize) {
    let rows = ["all-reduce", "all-reduce out of place", "all-reduce mean", "stream order", "broadcast", "broadcast out of place", "agreement", "abort path", "no pending error"];
    for rank in 0..ranks {
        let mine: Vec<&str> = t.lines().filter_map(|l| l.strip_prefix(&format!("rank {rank} selftest "))).collect();
        let names: Vec<&str> = mine.iter().map(|l| l.split(": ").next().unwrap()).collect();
        assert_eq!(names, rows, "rank {rank}: {t}");
        assert!(mine.iter().all(|l| l.contains(": ok (")), "rank {rank}: {t}");
    }
}

/// `dist.force_reduce`: with one rank every update takes the reduction path the trainer
/// otherwise skips (flatten, the backend's mean, unflatten, apply). Bit for bit, not to float
/// rounding: on the local backend the mean is the identity and a division by 1, and under
/// `mpirun -n 1` MPI_Allreduce over one rank copies its input; IEEE division by 1 returns its
/// operand exactly, and the rest of the update is the same computation in the same order on
/// the same host and thread count. That the path was taken is seen from outside: the MPI
/// run stages its reductions through the host (and says so), the unforced one does not, and
/// the bench counts the local backend's forced all-reduces.
#[test]
fn forced_reduction_at_world_size_1_gives_the_same_parameters_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = |backend: &str, force: bool| -> Vec<String> {
        vec!["train.iterations=4".into(), "train.checkpoint_every=4".into(), format!("dist.backend=\"{backend}\""), format!("dist.force_reduce={force}")]
    };
    let plain = tmp.path().join("plain");
    let mut c = Command::new(bin());
    c.args(train_args(&plain, &sets("local", false)));
    run_ok(c);
    let reference = state(&plain.join("checkpoints/step-000000004"));
    let mut c = Command::new(bin());
    let local = tmp.path().join("local-forced");
    c.args(train_args(&local, &sets("local", true)));
    run_ok(c);
    let written = std::fs::read_to_string(local.join("config.toml")).unwrap();
    assert!(written.contains("force_reduce = true"), "the run's configuration keeps the switch: {written}");
    let mpi = tmp.path().join("mpi-forced");
    let out = run_ok(train_cmd(1, &mpi, &sets("mpi", true), &[]));
    assert!(out.contains("more staged the MPI backend's reductions through the host"), "the forced MPI run reduced nothing: {out}");
    let unforced = run_ok(train_cmd(1, &tmp.path().join("mpi"), &sets("mpi", false), &[]));
    assert!(!unforced.contains("staged the MPI backend's reductions"), "one rank without force_reduce must skip the reduction: {unforced}");
    for (what, run) in [("local backend, forced", &local), ("mpirun -n 1, MPI, forced", &mpi)] {
        assert_states_agree(&state(&run.join("checkpoints/step-000000004")), &reference, Agreement::Bits, what);
    }
    let bench = |force: bool| {
        let mut c = Command::new(bin());
        c.args(["bench", "--device", "cpu", "--batch", "8", "--iters", "1", "--warmup", "0", "--set", "critic.width=2", "--set", "generator.width=2", "--set", "train.threads=1"]);
        c.args(["--set", "dist.backend=\"local\"", "--set", &format!("dist.force_reduce={force}")]);
        run_ok(c)
    };
    let forced = bench(true);
    assert!(forced.lines().any(|l| l.starts_with("all-reduce: ") && !l.starts_with("all-reduce: 0 calls")), "{forced}");
    assert!(!bench(false).contains("all-reduce: "), "one process without force_reduce reduces nothing");
}

