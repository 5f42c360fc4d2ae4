//! Collectives between ranks: a `Collective` trait with single-process, Open MPI and NCCL
//! backends, and the choice among them. Gradients travel as one flat float32 buffer per network per update.

#[cfg(feature = "mpi")]
pub mod mpi_backend;
#[cfg(feature = "mpi")]
pub mod nccl;

use crate::config::{Backend, DistConfig};
use anyhow::{bail, Result};
use tch::{Device, Tensor};

pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Rank among the processes on this node (chooses the GPU).
    fn local_rank(&self) -> usize;
    fn backend_name(&self) -> &'static str;
    /// Sums a contiguous float32 tensor over all ranks, in place.
    fn all_reduce_sum(&self, buf: &mut Tensor) -> Result<()>;
    /// Copies `root`'s float32 tensor into every rank's `buf`, in place.
    fn broadcast(&self, buf: &mut Tensor, root: usize) -> Result<()>;
    /// Every rank's value of `x`, in rank order.
    fn all_gather_u64(&self, x: u64) -> Result<Vec<u64>>;
    fn barrier(&self) -> Result<()>;
    /// Ends every rank of the job (after an error on one of them).
    fn abort(&self, code: i32) -> !;
}

/// One process: every collective is the identity.
pub struct Local;

impl Collective for Local {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn backend_name(&self) -> &'static str {
        "local"
    }
    fn all_reduce_sum(&self, _buf: &mut Tensor) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut Tensor, _root: usize) -> Result<()> {
        Ok(())
    }
    fn all_gather_u64(&self, x: u64) -> Result<Vec<u64>> {
        Ok(vec![x])
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// True when a launcher (mpirun, srun with PMIx) started this process as part of a job.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"].iter().any(|v| std::env::var_os(v).is_some())
}

/// The node-local rank from the launcher's environment, if it gives one.
pub fn local_rank_from_env() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Starts the collective backend the config asks for and picks this rank's device.
/// `auto` chooses NCCL when every rank has a CUDA device of its own and NCCL loads everywhere,
/// MPI otherwise; all ranks take the same decision (their facts travel in one all-gather).
pub fn init(cfg: &DistConfig, device_name: &str) -> Result<(Box<dyn Collective>, Device)> {
    let launched = launched_by_mpi();
    let want_mpi = match cfg.backend {
        Backend::Local => false,
        Backend::Auto => launched,
        Backend::Mpi | Backend::Nccl => true,
    };
    if !want_mpi {
        return Ok((Box::new(Local), crate::device::select(device_name, 0)?));
    }
    #[cfg(feature = "mpi")]
    {
        let mpi = mpi_backend::Mpi::init()?;
        let device = crate::device::select(device_name, mpi.local_rank())?;
        let nccl_ok = matches!(device, Device::Cuda(_)) && nccl::version().is_ok();
        // One all-gather of (node, device, NCCL usable) decides for everyone.
        let me = node_id() << 9 | (device_index(device) as u64) << 1 | nccl_ok as u64;
        let all = mpi.all_gather_u64(me)?;
        let every_rank_ok = all.iter().all(|x| x & 1 == 1);
        let mut places: Vec<u64> = all.iter().map(|x| x >> 1).collect();
        places.sort_unstable();
        let own_gpus = places.windows(2).all(|w| w[0] != w[1]);
        let use_nccl = match cfg.backend {
            Backend::Nccl => {
                if !every_rank_ok {
                    bail!("dist.backend = \"nccl\" needs a CUDA device and a loadable NCCL on every rank (this rank: device {device:?}, NCCL {})",
                        nccl::version().map(|v| format!("{}", v.0)).unwrap_or_else(|e| format!("{e:#}")));
                }
                if !own_gpus {
                    bail!("dist.backend = \"nccl\": NCCL cannot put two ranks on one GPU; use one rank per GPU or dist.backend = \"mpi\"");
                }
                true
            }
            _ => every_rank_ok && own_gpus,
        };
        if use_nccl {
            let Device::Cuda(i) = device else { unreachable!("checked above") };
            let timeout = std::time::Duration::from_secs_f64(cfg.timeout_seconds);
            return Ok((Box::new(nccl::Nccl::init(mpi, i, timeout)?), device));
        }
        Ok((Box::new(mpi), device))
    }
    #[cfg(not(feature = "mpi"))]
    {
        bail!("this gandist was built without the `mpi` feature: rebuild with it, or set dist.backend = \"local\"")
    }
}

fn device_index(d: Device) -> usize {
    match d {
        Device::Cuda(i) => i + 1,
        _ => 0,
    }
}

/// A 54-bit identifier of this machine, to tell which ranks share a node.
fn node_id() -> u64 {
    use std::hash::{Hash, Hasher};
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.trim().hash(&mut h);
    h.finish() >> 10
}
