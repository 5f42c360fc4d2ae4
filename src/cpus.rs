//! The CPU cores this process may run on: its affinity mask, which Open MPI's binding
//! (`--bind-to core` is its default for two or fewer ranks), Slurm's `--cpus-per-task`
//! binding, `taskset` or a cpuset cgroup narrow. libtorch's own default counts every core of
//! the machine, so ranks bound to a few cores would each start too many threads. The one
//! thread policy of every command that trains (`train`, `bench`, `ablate`) is `set_threads`;
//! `eval` follows the same policy as one process alone, so it computes with the thread count
//! (and so the summation order) that periodic evaluation in a one-process run used.

use anyhow::{bail, Result};
use std::hash::{Hash, Hasher};

/// The ids of the CPUs this process may run on, in increasing order.
#[cfg(target_os = "linux")]
pub fn allowed() -> Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain bits, zeroed is the empty set; sched_getaffinity writes at
    // most size_of::<cpu_set_t>() bytes into it, and CPU_ISSET reads within it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect())
    }
}

#[cfg(not(target_os = "linux"))]
pub fn allowed() -> Result<Vec<usize>> {
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    Ok((0..n).collect())
}

/// A 64-bit key of (this node, this CPU set): ranks with equal keys share their cores.
pub fn share_key(cpus: &[usize]) -> u64 {
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.trim().hash(&mut h);
    cpus.hash(&mut h);
    h.finish()
}

/// Threads for one rank: its cores divided among the ranks that share exactly those cores,
/// at least one.
pub fn threads_for(cores: usize, ranks_sharing: usize) -> usize {
    (cores / ranks_sharing.max(1)).max(1)
}

/// libtorch's CPU threads for this rank: `train.threads` when set, else the cores of this
/// process's affinity mask divided among the ranks on this node that have the same mask (all
/// of them when nothing binds, one when the launcher gave each rank cores of its own). Also on
/// GPU runs, where the CPU still draws noise and stages data. libtorch's own default depends
/// on the launcher (every core in a plain process, 1 under mpirun), not on the cores a rank
/// has. A collective when the count is not configured. Returns the count and how it was
/// chosen, for the log.
pub fn threads_per_rank(cfg: &crate::config::Config, comm: &dyn crate::collectives::Collective) -> Result<(i32, String)> {
    if cfg.train.threads > 0 {
        return Ok((cfg.train.threads, "train.threads".into()));
    }
    let cpus = allowed()?;
    let key = share_key(&cpus);
    let sharing = comm.all_gather_u64(key)?.iter().filter(|&&k| k == key).count();
    let n = threads_for(cpus.len(), sharing);
    let how = format!("affinity mask of {} CPU(s), shared by {sharing} rank(s) on this node", cpus.len());
    Ok((n as i32, how))
}

/// Sets libtorch's thread count for this rank (see `threads_per_rank`) and logs it.
pub fn set_threads(cfg: &crate::config::Config, comm: &dyn crate::collectives::Collective) -> Result<()> {
    let (n, how) = threads_per_rank(cfg, comm)?;
    tch::set_num_threads(n);
    tracing::info!("libtorch CPU threads: {n} ({how})");
    Ok(())
}

/// The thread count of a one-process run (`threads_per_rank` with no other rank): every CPU
/// of the affinity mask. For commands that score what training wrote (`eval`): libtorch's own
/// default may differ, and a different count sums in a different order (FID then differs in
/// the sixth digit).
pub fn set_threads_alone() -> Result<()> {
    let n = threads_for(allowed()?.len(), 1);
    tch::set_num_threads(n as i32);
    tracing::info!("libtorch CPU threads: {n} (affinity mask, one process)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_of_a_mask() {
        // One rank alone on a 2-core mask (Open MPI's `-n 1`, bound or not): both cores.
        assert_eq!(threads_for(2, 1), 2);
        // Two unbound ranks on 2 cores; two bound ones each see a 1-core mask of its own.
        assert_eq!(threads_for(2, 2), 1);
        assert_eq!(threads_for(1, 1), 1);
        // More ranks than cores still get a thread each.
        assert_eq!(threads_for(2, 4), 1);
        // Slurm --cpus-per-task=8 with task binding: 8 cores per task, not 64 / 8 ranks.
        assert_eq!(threads_for(8, 1), 8);
        // 8 unbound ranks on a 64-core node.
        assert_eq!(threads_for(64, 8), 8);
    }

    #[test]
    fn the_mask_is_what_sched_getaffinity_says() {
        let cpus = allowed().unwrap();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]), "{cpus:?}");
        // std's count reads the same mask (and cgroup quotas, which can only lower it).
        let std_count = std::thread::available_parallelism().unwrap().get();
        assert!(std_count <= cpus.len(), "{std_count} vs {cpus:?}");
        assert_ne!(share_key(&cpus), share_key(&cpus[..cpus.len() - 1]), "a different mask is a different key");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_narrowed_mask_is_seen() {
        let first = allowed().unwrap()[0];
        // In a thread of its own (the mask is per thread), as a launcher's binding would set it.
        let seen = std::thread::spawn(move || {
            // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET stays within it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(first, &mut set);
                assert_eq!(libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set), 0);
            }
            allowed().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen, vec![first]);
    }
}
