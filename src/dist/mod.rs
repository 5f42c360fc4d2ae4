//! Collectives between ranks: a `Collective` trait with a single-process backend and an Open
//! MPI one. Gradients travel as one flat float32 buffer per network per update.

#[cfg(feature = "mpi")]
pub mod mpi_backend;

use crate::config::Backend;
use anyhow::{bail, Result};
use tch::Tensor;

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

/// Starts the collective backend the config asks for.
pub fn init(backend: Backend) -> Result<Box<dyn Collective>> {
    let want_mpi = match backend {
        Backend::Local => false,
        Backend::Auto => launched_by_mpi(),
        Backend::Mpi => true,
        Backend::Nccl => bail!("dist.backend = \"nccl\" is not available in this build: expected \"auto\", \"local\" or \"mpi\""),
    };
    if !want_mpi {
        return Ok(Box::new(Local));
    }
    #[cfg(feature = "mpi")]
    {
        Ok(Box::new(mpi_backend::Mpi::init()?))
    }
    #[cfg(not(feature = "mpi"))]
    {
        bail!("this gandist was built without the `mpi` feature: rebuild with it, or set dist.backend = \"local\"")
    }
}
