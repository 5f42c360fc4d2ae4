//! Launchers that start several copies of gandist without joining them into one MPI job:
//! torchrun (and any launcher that sets `WORLD_SIZE`: accelerate, DeepSpeed), srun without
//! PMIx (Slurm's default `MpiDefault=none`, `--mpi=none` or `pmi2`: Debian's Open MPI has no
//! Slurm PMI), MPICH's or Intel MPI's Hydra starting this Open MPI build. Each copy then
//! starts alone as rank 0 of 1, trains on its own and writes the same run directory.
//!
//! `verdict` compares the launcher's variables, read before MPI starts (Open MPI writes
//! `OMPI_COMM_WORLD_*` into a singleton's own environment during MPI_Init), with the world size
//! the process would train with; every process refuses at start, naming what it saw and the
//! command that works. A job that MPI joined (world size > 1) is never refused: its ranks agree
//! on everything through MPI, whatever the launcher's variables say (mpirun inside a Slurm
//! allocation inherits the counts of Slurm's own steps).

use anyhow::{bail, Result};

/// The variables that tell which launcher started this process, and how many copies.
const VARS: &[&str] = &[
    "OMPI_COMM_WORLD_SIZE",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
    "SLURM_JOB_ID",
    "SLURM_STEP_ID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_MPI_TYPE",
    "PMI_SIZE",
    "PMI_RANK",
];

/// This process's launcher variables, as read before MPI starts.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    vars: Vec<(&'static str, String)>,
}

impl Seen {
    /// Reads the variables through `env` (std::env::var in the binary, a table in tests).
    pub fn read(env: impl Fn(&str) -> Option<String>) -> Seen {
        Seen { vars: VARS.iter().filter_map(|&k| env(k).map(|v| (k, v))).collect() }
    }

    pub fn from_env() -> Seen {
        Seen::read(|k| std::env::var(k).ok())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    fn count(&self, key: &str) -> Option<usize> {
        self.get(key).and_then(|v| v.trim().parse().ok())
    }

    /// "A=1, B=2" for those of `keys` that are set.
    fn show(&self, keys: &[&str]) -> String {
        keys.iter().filter_map(|k| Some(format!("{k}={}", self.get(k)?))).collect::<Vec<_>>().join(", ")
    }
}

/// Whether a process that would train with `world` ranks may start. `alone` says why it would
/// be alone when `world` is 1 ("MPI reports a world of 1", "dist.backend = \"local\"", ...).
pub fn verdict(seen: &Seen, world: usize, alone: &str) -> Result<()> {
    if world > 1 {
        return Ok(());
    }
    // Open MPI's own launcher counts its ranks exactly; its word wins over Slurm's variables,
    // which `mpirun -n 1` inside an allocation inherits from the step of its daemons.
    if let Some(n) = seen.count("OMPI_COMM_WORLD_SIZE") {
        if n > 1 {
            bail!(
                "Open MPI's launcher started this process as one of {n} ranks ({}), but it would train alone ({alone}): with dist.backend = \"local\" every rank trains on its own; otherwise this gandist loaded another MPI library than that mpirun's (compare `ldd gandist | grep libmpi` with `which mpirun`). Refusing to start: use dist.backend = \"auto\" (or \"mpi\", \"nccl\") with `mpirun -n {n} gandist ...`",
                seen.show(&["OMPI_COMM_WORLD_SIZE"])
            );
        }
        return Ok(());
    }
    if let Some(n) = seen.count("WORLD_SIZE").filter(|&n| n > 1) {
        bail!(
            "torchrun (or another PyTorch launcher) started this process as one of {n} ({}), but it would train alone ({alone}): gandist's ranks are joined by MPI, not by torchrun's rendezvous, so each of the {n} copies would train on its own and write the same run directory. Refusing to start: use `mpirun -n {n} gandist ...` (under Slurm: `srun --mpi=pmix -n {n} gandist ...`)",
            seen.show(&["WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"])
        );
    }
    // SLURM_STEP_ID is set in the tasks of an srun step, not in a batch script itself, where
    // SLURM_NTASKS counts the allocation's tasks while one process runs.
    if seen.get("SLURM_STEP_ID").is_some() {
        if let Some(n) = seen.count("SLURM_STEP_NUM_TASKS").or_else(|| seen.count("SLURM_NTASKS")).filter(|&n| n > 1) {
            bail!(
                "srun started this process as one of {n} tasks ({}), but it would train alone ({alone}): srun joins the tasks into one MPI job only through PMIx, and this step ran without it (the cluster's MpiDefault, or --mpi=none or pmi2), so each task would train on its own and write the same run directory. Refusing to start: use `srun --mpi=pmix -n {n} gandist ...` (launch/slurm/gandist.sbatch does), or `mpirun -n {n} gandist ...` inside the allocation",
                seen.show(&["SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_MPI_TYPE"])
            );
        }
    }
    if let Some(n) = seen.count("PMI_SIZE").filter(|&n| n > 1) {
        bail!(
            "a PMI launcher (MPICH's or Intel MPI's mpiexec/Hydra) started this process as one of {n} ({}), but it would train alone ({alone}): this gandist is built on Open MPI, which cannot join that launcher's job, so each copy would train on its own and write the same run directory. Refusing to start: use Open MPI's `mpirun -n {n} gandist ...` (under Slurm: `srun --mpi=pmix -n {n} gandist ...`)",
            seen.show(&["PMI_SIZE", "PMI_RANK"])
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(pairs: &[(&str, &str)]) -> Seen {
        let owned: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Seen::read(|k| owned.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    fn refusal(pairs: &[(&str, &str)]) -> String {
        format!("{:#}", verdict(&seen(pairs), 1, "MPI reports a world of 1").expect_err("must refuse"))
    }

    #[test]
    fn torchrun_with_two_processes_is_refused_with_the_mpirun_command() {
        let e = refusal(&[("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2"), ("TORCHELASTIC_RUN_ID", "none"), ("MASTER_PORT", "29500")]);
        assert!(e.starts_with("torchrun (or another PyTorch launcher) started this process as one of 2 (WORLD_SIZE=2, RANK=1, LOCAL_RANK=1, LOCAL_WORLD_SIZE=2, TORCHELASTIC_RUN_ID=none), but it would train alone (MPI reports a world of 1)"), "{e}");
        assert!(e.contains("`mpirun -n 2 gandist ...`") && e.contains("`srun --mpi=pmix -n 2 gandist ...`"), "{e}");
        // One process under torchrun is one process.
        assert!(verdict(&seen(&[("WORLD_SIZE", "1"), ("RANK", "0")]), 1, "x").is_ok());
    }

    #[test]
    fn srun_without_pmix_is_refused_but_a_batch_script_is_not() {
        let e = refusal(&[("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "0"), ("SLURM_STEP_NUM_TASKS", "4"), ("SLURM_NTASKS", "4"), ("SLURM_PROCID", "3")]);
        assert!(e.starts_with("srun started this process as one of 4 tasks (SLURM_JOB_ID=7, SLURM_STEP_ID=0, SLURM_STEP_NUM_TASKS=4, SLURM_NTASKS=4, SLURM_PROCID=3)"), "{e}");
        assert!(e.contains("`srun --mpi=pmix -n 4 gandist ...`"), "{e}");
        // Without SLURM_STEP_NUM_TASKS (older Slurm), SLURM_NTASKS of the step counts.
        assert!(refusal(&[("SLURM_STEP_ID", "2"), ("SLURM_NTASKS", "2")]).contains("one of 2 tasks"));
        // The batch script of a 4-task allocation runs one process: no step, no refusal.
        assert!(verdict(&seen(&[("SLURM_JOB_ID", "7"), ("SLURM_NTASKS", "4")]), 1, "x").is_ok());
        // A 1-task step is one process.
        assert!(verdict(&seen(&[("SLURM_STEP_ID", "0"), ("SLURM_STEP_NUM_TASKS", "1"), ("SLURM_NTASKS", "4")]), 1, "x").is_ok());
    }

    #[test]
    fn hydra_is_refused_and_open_mpi_counts_win() {
        let e = refusal(&[("PMI_SIZE", "3"), ("PMI_RANK", "0")]);
        assert!(e.starts_with("a PMI launcher (MPICH's or Intel MPI's mpiexec/Hydra) started this process as one of 3 (PMI_SIZE=3, PMI_RANK=0)") && e.contains("Open MPI's `mpirun -n 3 gandist ...`"), "{e}");
        // mpirun -n 1 inside a 2-node allocation: its rank inherits the daemons' 2-task step.
        assert!(verdict(&seen(&[("OMPI_COMM_WORLD_SIZE", "1"), ("SLURM_STEP_ID", "0"), ("SLURM_STEP_NUM_TASKS", "2")]), 1, "x").is_ok());
        // mpirun -n 2 with dist.backend = "local": both would train alone.
        let e = format!("{:#}", verdict(&seen(&[("OMPI_COMM_WORLD_SIZE", "2")]), 1, "dist.backend = \"local\"").unwrap_err());
        assert!(e.contains("one of 2 ranks (OMPI_COMM_WORLD_SIZE=2), but it would train alone (dist.backend = \"local\")"), "{e}");
    }

    #[test]
    fn a_job_that_mpi_joined_is_never_refused() {
        for pairs in [&[("WORLD_SIZE", "8")][..], &[("SLURM_STEP_ID", "0"), ("SLURM_STEP_NUM_TASKS", "2")], &[("PMI_SIZE", "4")], &[("OMPI_COMM_WORLD_SIZE", "4")]] {
            assert!(verdict(&seen(pairs), 4, "x").is_ok(), "{pairs:?}");
        }
        assert!(verdict(&seen(&[]), 1, "x").is_ok(), "a plain process starts");
    }
}
