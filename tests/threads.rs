//! libtorch's thread count per rank follows the cores each process may use (its affinity
//! mask) and the ranks that share them, under real Open MPI binding and `taskset`.

mod common;
use common::*;
use std::process::Command;

/// The CPUs this test process may use (the launchers below narrow or share this set).
fn my_cpus() -> Vec<usize> {
    gandist::cpus::allowed().unwrap()
}

/// Every "threads per rank N" of a `gandist bench` report, and every rank's log line.
fn threads_in(out: &str) -> (Vec<usize>, Vec<usize>) {
    let report = out
        .lines()
        .filter_map(|l| l.split("threads per rank ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    let logged = out
        .lines()
        .filter_map(|l| l.split("libtorch CPU threads: ").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    (report, logged)
}

fn mpirun(n: usize, extra: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", &n.to_string()])
        .args(extra)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_rmaps_base_oversubscribe", "1")
        .arg(bin());
    c
}

fn run(mut c: Command) -> String {
    let o = c.output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{c:?} failed: {t}");
    t
}

const BENCH: &[&str] = &["bench", "--iters", "1", "--warmup", "0", "--set", "critic.width=4", "--set", "generator.width=4", "--batch", "8"];

/// `mpirun -n 1` binds its rank to one core (Open MPI's default for two or fewer ranks): one
/// thread, not libtorch's default of every core. Unbound, one rank takes all cores and two
/// ranks split them.
#[test]
fn bench_threads_follow_open_mpi_binding() {
    let cores = my_cpus().len();
    let mut c = mpirun(1, &["--bind-to", "core"]);
    c.args(BENCH);
    assert_eq!(threads_in(&run(c)), (vec![1], vec![1]), "bound to one core");

    let mut c = mpirun(1, &["--bind-to", "none"]);
    c.args(BENCH);
    assert_eq!(threads_in(&run(c)), (vec![cores], vec![cores]), "one unbound rank");

    let mut c = mpirun(2, &["--bind-to", "none"]);
    c.args(BENCH);
    let each = (cores / 2).max(1);
    assert_eq!(threads_in(&run(c)), (vec![each], vec![each, each]), "two unbound ranks share {cores} cores");
}

/// A process narrowed to one CPU (taskset, as a cpuset or Slurm's binding would) uses one
/// thread; a task alone in its mask uses all of it, whatever Slurm says of the tasks per node
/// (they have masks of their own under `--cpus-per-task` binding).
#[test]
fn train_threads_follow_the_affinity_mask() {
    let data = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let cpus = my_cpus();
    let train = |name: &str, taskset: Option<usize>| {
        let mut c = match taskset {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        c.args(["train", "--config", smoke_config().to_str().unwrap(), "--data", data.to_str().unwrap()])
            .args(["--run-dir", tmp.path().join(name).to_str().unwrap(), "--set", "train.iterations=1", "--set", "train.threads=0"])
            .env("SLURM_NTASKS_PER_NODE", "2")
            .env("OMPI_COMM_WORLD_LOCAL_SIZE", "2");
        run(c)
    };
    assert_eq!(threads_in(&train("one", Some(cpus[cpus.len() - 1]))).1, vec![1]);
    assert_eq!(threads_in(&train("all", None)).1, vec![cpus.len()]);
}

/// `eval` takes the thread count a one-process `train` would (the cores of its mask), so that
/// it sums in the same order as periodic evaluation did; `--threads` overrides it.
#[test]
fn eval_threads_follow_the_affinity_mask_or_the_flag() {
    let data = mnist_dir();
    let samples = data.join("t10k-images-idx3-ubyte.gz");
    let cpus = my_cpus();
    // Any loadable classifier serves: the test reads the thread count, not the scores.
    let tmp = tempfile::tempdir().unwrap();
    let classifier = tmp.path().join("c.safetensors");
    let mut c = Command::new(bin());
    c.args(["classifier", "train", "--data", data.to_str().unwrap(), "--out", classifier.to_str().unwrap()])
        .args(["--epochs", "1", "--limit", "200", "--min-accuracy", "0"]);
    run(c);
    let eval = |taskset: Option<usize>, extra: &[&str]| {
        let mut c = match taskset {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.args(["-c", &cpu.to_string()]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        c.args(["eval", "--samples", samples.to_str().unwrap(), "--n", "50", "--data", data.to_str().unwrap()])
            .args(["--classifier", classifier.to_str().unwrap()])
            .args(extra);
        run(c)
    };
    assert_eq!(threads_in(&eval(Some(cpus[cpus.len() - 1]), &[])).1, vec![1]);
    assert_eq!(threads_in(&eval(None, &[])).1, vec![cpus.len()]);
    // An explicit count is taken as given: no affinity line is logged.
    assert_eq!(threads_in(&eval(None, &["--threads", "1"])).1, Vec::<usize>::new());
}
