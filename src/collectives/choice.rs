//! What each rank brings (host, device, the GPU's identity, NCCL), the backend choice made
//! from every rank's facts (a pure function, so that every rank takes the same decision from
//! the same all-gathered input), and the start-up report each rank prints.

use super::cuda::GpuIdentity;
use crate::config::Backend;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One rank's facts, gathered from every rank before the backend is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankFacts {
    pub rank: usize,
    pub local_rank: usize,
    pub local_size: usize,
    pub host: String,
    /// "cpu" or "cuda:N" (N as this process numbers its visible GPUs).
    pub device: String,
    /// The physical GPU behind a CUDA device; None on the CPU.
    pub gpu: Option<GpuIdentity>,
    /// NCCL's version and where it comes from ("NCCL 2.28.9 (loaded by libtorch from ...)"),
    /// or why there is none to use. Only looked for on CUDA devices.
    pub nccl: Option<std::result::Result<NcclFacts, String>>,
    /// This rank could not set itself up: the error, which every rank then reports.
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NcclFacts {
    pub version: i32,
    pub description: String,
}

/// The backend every rank uses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub nccl: bool,
    pub reason: String,
}

/// "2.28.9" from NCCL's version code (X*10000 + Y*100 + Z from 2.9 on, X*1000 + Y*100 + Z before).
pub fn version_string(code: i32) -> String {
    if code >= 20900 {
        format!("{}.{}.{}", code / 10000, code % 10000 / 100, code % 100)
    } else {
        format!("{}.{}.{}", code / 1000, code % 1000 / 100, code % 100)
    }
}

/// Which physical GPU a rank uses: the UUID when the driver gives one (unique everywhere),
/// else the PCI bus id on its host. Never the device index: with one GPU per task (Slurm
/// --gpus-per-task, cgroups) every rank sees its own GPU as cuda:0.
fn gpu_key(f: &RankFacts) -> Option<String> {
    let g = f.gpu.as_ref()?;
    Some(if g.uuid.is_empty() { format!("{} on {}", g.pci_bus_id, f.host) } else { g.uuid.clone() })
}

fn gpu_text(f: &RankFacts) -> String {
    match &f.gpu {
        Some(g) => format!("{} ({}, PCI {}{})", f.device, g.name, g.pci_bus_id, if g.uuid.is_empty() { String::new() } else { format!(", {}", g.uuid) }),
        None => f.device.clone(),
    }
}

/// Chooses NCCL or MPI for a multi-rank job from every rank's facts. `auto` takes NCCL when
/// every rank has a GPU of its own and the same NCCL, and says why when it does not;
/// `nccl` refuses with that reason; `mpi` takes MPI.
pub fn choose(want: Backend, facts: &[RankFacts]) -> Result<Choice> {
    if want == Backend::Mpi {
        return Ok(Choice { nccl: false, reason: "dist.backend = \"mpi\"".into() });
    }
    let obstacle = nccl_obstacle(facts);
    match (want, obstacle) {
        (_, None) => Ok(Choice {
            nccl: true,
            reason: format!("every rank has a GPU of its own and the same NCCL (dist.backend = {})", if want == Backend::Nccl { "\"nccl\"" } else { "\"auto\"" }),
        }),
        (Backend::Nccl, Some(why)) => bail!("dist.backend = \"nccl\" cannot be used: {why}; use one rank per GPU with libtorch's NCCL on every rank, or dist.backend = \"mpi\""),
        (_, Some(why)) => Ok(Choice { nccl: false, reason: format!("dist.backend = \"auto\" chose MPI: {why}") }),
    }
}

/// Why NCCL cannot serve these ranks, if it cannot.
fn nccl_obstacle(facts: &[RankFacts]) -> Option<String> {
    for f in facts {
        if f.gpu.is_none() {
            return Some(format!("rank {} on {} computes on {} (NCCL needs a CUDA device on every rank)", f.rank, f.host, f.device));
        }
        match &f.nccl {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Some(format!("rank {} has no usable NCCL: {e}", f.rank)),
            None => return Some(format!("rank {} did not look for NCCL", f.rank)),
        }
    }
    let versions: Vec<(usize, i32)> = facts.iter().filter_map(|f| Some((f.rank, f.nccl.as_ref()?.as_ref().ok()?.version))).collect();
    if let Some((r, v)) = versions.iter().find(|(_, v)| *v != versions[0].1) {
        return Some(format!("ranks {} and {r} load different NCCL versions ({} and {})", versions[0].0, version_string(versions[0].1), version_string(*v)));
    }
    for (i, a) in facts.iter().enumerate() {
        for b in &facts[i + 1..] {
            if gpu_key(a).is_some() && gpu_key(a) == gpu_key(b) {
                return Some(format!(
                    "ranks {} and {} share one GPU, {} on host {} (NCCL cannot put two ranks on one GPU)",
                    a.rank,
                    b.rank,
                    gpu_text(a),
                    a.host
                ));
            }
        }
    }
    None
}

/// What a rank says at start: where it runs, on which device, over which backend.
#[derive(Debug, Clone, PartialEq)]
pub struct StartupReport {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    pub local_size: usize,
    pub host: String,
    /// The device, with its GPU's name, PCI bus id and UUID on CUDA.
    pub device: String,
    pub backend: &'static str,
    /// NCCL's version and library, when the backend is NCCL.
    pub nccl: Option<String>,
    /// Why the backend and device are what they are; rank 0 prints these.
    pub notes: Vec<String>,
}

/// The report of rank `f.rank` in a job of `world_size` ranks.
pub fn startup_report(f: &RankFacts, world_size: usize, backend: &'static str, notes: Vec<String>) -> StartupReport {
    let nccl = (backend == "nccl").then(|| f.nccl.as_ref().and_then(|n| n.as_ref().ok()).map(|n| n.description.clone())).flatten();
    StartupReport {
        rank: f.rank,
        world_size,
        local_rank: f.local_rank,
        local_size: f.local_size,
        host: f.host.clone(),
        device: gpu_text(f),
        backend,
        nccl,
        notes,
    }
}

impl fmt::Display for StartupReport {
    fn fmt(&self, out: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            out,
            "rank {}/{} (local {}/{}) on host {}: device {}, backend {}",
            self.rank, self.world_size, self.local_rank, self.local_size, self.host, self.device, self.backend
        )?;
        if let Some(n) = &self.nccl {
            write!(out, ", {n}")?;
        }
        if self.rank == 0 {
            for n in &self.notes {
                write!(out, "\n  {n}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu_rank(rank: usize, host: &str, bus: &str, uuid: &str) -> RankFacts {
        RankFacts {
            rank,
            local_rank: rank,
            local_size: 2,
            host: host.into(),
            device: "cuda:0".into(),
            gpu: Some(GpuIdentity { name: "NVIDIA H200".into(), pci_bus_id: bus.into(), uuid: uuid.into() }),
            nccl: Some(Ok(NcclFacts { version: 22809, description: "NCCL 2.28.9 (loaded by libtorch from /x/libnccl.so.2)".into() })),
            error: None,
        }
    }

    /// One GPU per task: both ranks see cuda:0, but they are two GPUs.
    #[test]
    fn ranks_on_cuda_0_with_different_bus_ids_are_distinct_gpus() {
        let facts = [gpu_rank(0, "n1", "0000:19:00.0", "GPU-a"), gpu_rank(1, "n1", "0000:3b:00.0", "GPU-b")];
        for want in [Backend::Auto, Backend::Nccl] {
            let c = choose(want, &facts).unwrap();
            assert!(c.nccl, "{c:?}");
        }
        // Without UUIDs the bus id decides, per host: the same bus id on two hosts is two GPUs.
        let facts = [gpu_rank(0, "n1", "0000:19:00.0", ""), gpu_rank(1, "n2", "0000:19:00.0", "")];
        assert!(choose(Backend::Auto, &facts).unwrap().nccl);
    }

    #[test]
    fn one_gpu_shared_by_two_ranks_refuses_nccl_and_says_why() {
        let facts = [gpu_rank(0, "n1", "0000:19:00.0", "GPU-a"), gpu_rank(1, "n1", "0000:19:00.0", "GPU-a")];
        let e = format!("{:#}", choose(Backend::Nccl, &facts).unwrap_err());
        assert!(e.contains("ranks 0 and 1 share one GPU") && e.contains("PCI 0000:19:00.0") && e.contains("host n1"), "{e}");
        let c = choose(Backend::Auto, &facts).unwrap();
        assert!(!c.nccl && c.reason.contains("auto\" chose MPI") && c.reason.contains("share one GPU"), "{c:?}");
        let facts = [gpu_rank(0, "n1", "0000:19:00.0", ""), gpu_rank(1, "n1", "0000:19:00.0", "")];
        assert!(!choose(Backend::Auto, &facts).unwrap().nccl);
    }

    #[test]
    fn a_cpu_rank_a_missing_nccl_or_mixed_versions_mean_mpi() {
        let mut cpu = gpu_rank(1, "n1", "", "");
        cpu.gpu = None;
        cpu.device = "cpu".into();
        cpu.nccl = None;
        let c = choose(Backend::Auto, &[gpu_rank(0, "n1", "0000:19:00.0", "GPU-a"), cpu.clone()]).unwrap();
        assert!(!c.nccl && c.reason.contains("rank 1 on n1 computes on cpu"), "{c:?}");
        let e = format!("{:#}", choose(Backend::Nccl, &[gpu_rank(0, "n1", "0000:19:00.0", "GPU-a"), cpu]).unwrap_err());
        assert!(e.contains("dist.backend = \"nccl\" cannot be used") && e.contains("computes on cpu"), "{e}");
        let mut no_nccl = gpu_rank(1, "n1", "0000:3b:00.0", "GPU-b");
        no_nccl.nccl = Some(Err("two different NCCL libraries are loaded".into()));
        let c = choose(Backend::Auto, &[gpu_rank(0, "n1", "0000:19:00.0", "GPU-a"), no_nccl]).unwrap();
        assert!(!c.nccl && c.reason.contains("rank 1 has no usable NCCL: two different"), "{c:?}");
        let mut old = gpu_rank(1, "n1", "0000:3b:00.0", "GPU-b");
        old.nccl = Some(Ok(NcclFacts { version: 22803, description: String::new() }));
        let c = choose(Backend::Auto, &[gpu_rank(0, "n1", "0000:19:00.0", "GPU-a"), old]).unwrap();
        assert!(!c.nccl && c.reason.contains("2.28.9 and 2.28.3"), "{c:?}");
        assert!(!choose(Backend::Mpi, &[gpu_rank(0, "n1", "a", "GPU-a")]).unwrap().nccl);
    }

    #[test]
    fn version_codes() {
        assert_eq!(version_string(22809), "2.28.9");
        assert_eq!(version_string(21903), "2.19.3");
        assert_eq!(version_string(2804), "2.8.4");
    }

    #[test]
    fn the_report_names_rank_host_gpu_backend_and_nccl() {
        let f = gpu_rank(0, "n1", "0000:19:00.0", "GPU-a");
        let r = startup_report(&f, 8, "nccl", vec!["why: because".into()]);
        let text = r.to_string();
        assert_eq!(
            text,
            "rank 0/8 (local 0/2) on host n1: device cuda:0 (NVIDIA H200, PCI 0000:19:00.0, GPU-a), backend nccl, NCCL 2.28.9 (loaded by libtorch from /x/libnccl.so.2)\n  why: because"
        );
        // Other ranks print their own line only; the MPI backend names no NCCL.
        let r1 = startup_report(&gpu_rank(1, "n1", "0000:3b:00.0", "GPU-b"), 8, "mpi", vec!["why".into()]);
        assert!(!r1.to_string().contains("NCCL") && !r1.to_string().contains("why"), "{r1}");
    }
}
