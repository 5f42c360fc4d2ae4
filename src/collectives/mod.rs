//! Collectives between ranks: a `Collective` trait with single-process, Open MPI and NCCL
//! backends, the choice among them, and the start-up every rank goes through. Gradients
//! travel as one flat float32 buffer per network per update.
//!
//! Start-up (`init`): the launcher's environment hints which GPU is this rank's before MPI
//! starts (a CUDA-aware MPI opens a context on the current device in MPI_Init); MPI then
//! gives the node-local rank; each rank picks its device and gathers its facts (host, GPU
//! identity by PCI bus id and UUID, NCCL) to every rank, which all take the same decision.
//! A rank that cannot set itself up says so in that gather, so the job fails on every rank
//! at once instead of leaving the others waiting; after the gather, a failure (NCCL's
//! initialisation) ends the job with MPI_Abort, and every wait is bounded.

pub mod choice;
pub mod cuda;
pub mod launcher;
#[cfg(feature = "mpi")]
pub mod mpi_backend;
#[cfg(feature = "mpi")]
pub mod nccl;
pub mod selftest;
pub mod watchdog;

use crate::config::{Backend, DeviceChoice, DistConfig};
use anyhow::Result;
use choice::{RankFacts, StartupReport};
use tch::{Device, Tensor};

pub trait Collective {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Rank among the processes on this node (chooses the GPU).
    fn local_rank(&self) -> usize;
    /// Processes on this node.
    fn local_size(&self) -> usize;
    fn backend_name(&self) -> &'static str;
    /// Sums a contiguous float32 tensor over all ranks, in place. On the device backends it
    /// may return before the sum is done: later device work is ordered after it.
    fn all_reduce_sum(&self, buf: &mut Tensor) -> Result<()>;
    /// Averages a contiguous float32 tensor over all ranks, in place: the sum divided by the
    /// world size. NCCL does it in one kernel (ncclAvg), which it launches even with one rank,
    /// where a sum in place does nothing (see `nccl`); the others sum, then divide.
    fn all_reduce_mean(&self, buf: &mut Tensor) -> Result<()> {
        self.all_reduce_sum(buf)?;
        let _ = buf.g_div_scalar_(self.world_size() as f64);
        Ok(())
    }
    /// The reduction of every rank's `src` into `dst` (same size), leaving `src` as it was.
    fn all_reduce_into(&self, src: &Tensor, dst: &mut Tensor, op: ReduceOp) -> Result<()> {
        tch::no_grad(|| dst.copy_(src));
        match op {
            ReduceOp::Sum => self.all_reduce_sum(dst),
            ReduceOp::Mean => self.all_reduce_mean(dst),
        }
    }
    /// Copies `root`'s float32 tensor into every rank's `buf`, in place (ordered likewise).
    fn broadcast(&self, buf: &mut Tensor, root: usize) -> Result<()>;
    /// Copies `root`'s `src` into every rank's `dst` (same size).
    fn broadcast_into(&self, src: &Tensor, dst: &mut Tensor, root: usize) -> Result<()> {
        tch::no_grad(|| dst.copy_(src));
        self.broadcast(dst, root)
    }
    /// Every rank's value of `x`, in rank order.
    fn all_gather_u64(&self, x: u64) -> Result<Vec<u64>>;
    /// Whether `flag` is set on any rank: a host-side agreement that never touches the device.
    fn any(&self, flag: bool) -> Result<bool>;
    fn barrier(&self) -> Result<()>;
    /// The error of an earlier collective that completed asynchronously, if one failed.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// For the self-test: exercises the abort path on a second, throwaway communicator and
    /// says what happened; None for backends without one.
    fn exercise_abort(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Ends every rank of the job (after an error on one of them).
    fn abort(&self, code: i32) -> !;
}

/// What an all-reduce computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// The sum divided by the world size.
    Mean,
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
    fn local_size(&self) -> usize {
        1
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
    fn any(&self, flag: bool) -> Result<bool> {
        Ok(flag)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

/// A started rank: its collectives, its device, and what it says about them.
pub struct Started {
    pub comm: Box<dyn Collective>,
    pub device: Device,
    pub report: StartupReport,
}

/// True when a launcher (mpirun, srun with PMIx) started this process as part of a job.
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"].iter().any(|v| std::env::var_os(v).is_some())
}

/// Ends every rank of a multi-rank job when `result` is an error on this one: a rank that
/// fails alone would leave the others waiting in a collective.
pub fn or_abort<T>(comm: &dyn Collective, result: Result<T>) -> Result<T> {
    if let Err(e) = &result {
        if comm.world_size() > 1 {
            tracing::error!("{e:#}");
            comm.abort(1);
        }
    }
    result
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

/// This rank's facts on `device`; NCCL is looked for only when it could be used.
fn rank_facts(rank: usize, local_rank: usize, local_size: usize, device: Device, look_for_nccl: bool) -> RankFacts {
    let mut f = RankFacts {
        rank,
        local_rank,
        local_size,
        host: host_name(),
        device: crate::device::label(device),
        gpu: None,
        nccl: None,
        error: None,
    };
    if let Device::Cuda(i) = device {
        match cuda::driver().and_then(|d| d.identity(i)) {
            Ok(id) => f.gpu = Some(id),
            Err(e) => f.nccl = Some(Err(format!("cannot identify the GPU of cuda:{i}: {e:#}"))),
        }
        #[cfg(feature = "mpi")]
        if look_for_nccl && f.nccl.is_none() {
            f.nccl = Some(nccl::discover().map(|l| choice::NcclFacts { version: l.version, description: l.describe() }).map_err(|e| format!("{e:#}")));
        }
    }
    let _ = look_for_nccl;
    f
}

/// The GPUs the CUDA driver sees, for `device::auto_cpu_reason`.
fn driver_gpus() -> Option<usize> {
    cuda::driver().and_then(|d| d.device_count()).ok()
}

/// Starts the collective backend the config asks for and picks this rank's device.
/// A process that would train alone while its launcher started several refuses here, on
/// every process (`launcher`).
pub fn init(cfg: &DistConfig, device_name: DeviceChoice) -> Result<Started> {
    // Before MPI_Init, which writes Open MPI's own variables into a singleton's environment.
    let seen = launcher::Seen::from_env();
    let want_mpi = match cfg.backend {
        Backend::Local => false,
        Backend::Auto => launched_by_mpi(),
        Backend::Mpi | Backend::Nccl => true,
    };
    if !want_mpi {
        let alone = if cfg.backend == Backend::Local { "dist.backend = \"local\"" } else { "no MPI launcher started it, so gandist runs as one process" };
        launcher::verdict(&seen, 1, alone)?;
        let device = crate::device::select(device_name, 0)?;
        let facts = rank_facts(0, 0, 1, device, false);
        let notes = crate::device::auto_cpu_reason(device_name, device, driver_gpus).into_iter().collect();
        return Ok(Started { comm: Box::new(Local), device, report: choice::startup_report(&facts, 1, "local", notes) });
    }
    #[cfg(feature = "mpi")]
    {
        init_mpi(cfg, device_name, &seen)
    }
    #[cfg(not(feature = "mpi"))]
    {
        anyhow::bail!(
            "this gandist was built without MPI (cargo build --no-default-features), so it runs one process only: dist.backend = {:?} needs the default build (with Open MPI); for one process set dist.backend = \"local\" and start it without mpirun",
            cfg.backend
        )
    }
}

#[cfg(feature = "mpi")]
fn init_mpi(cfg: &DistConfig, device_name: DeviceChoice, seen: &launcher::Seen) -> Result<Started> {
    use anyhow::{bail, Context};
    use std::time::Duration;
    set_device_before_mpi(device_name);
    let deadlines = mpi_backend::Deadlines {
        collective: Duration::from_secs_f64(cfg.timeout_seconds),
        host: Duration::from_secs_f64(cfg.root_work_timeout_seconds),
    };
    let mpi = mpi_backend::Mpi::init(deadlines)?;
    let (rank, local_rank, local_size, world) = (mpi.rank(), mpi.local_rank(), mpi.local_size(), mpi.world_size());
    // A world of 1 has no peers to wait for this refusal.
    launcher::verdict(seen, world, "MPI reports a world of 1")?;
    // Errors before the gather travel in it: every rank then fails together.
    let device = crate::device::select(device_name, local_rank);
    let mine = match &device {
        Ok(d) => rank_facts(rank, local_rank, local_size, *d, cfg.backend != Backend::Mpi),
        Err(e) => RankFacts { error: Some(format!("{e:#}")), ..rank_facts(rank, local_rank, local_size, Device::Cpu, false) },
    };
    let all: Vec<RankFacts> = mpi
        .all_gather_bytes(&serde_json::to_vec(&mine)?)?
        .iter()
        .map(|b| serde_json::from_slice(b).context("a rank sent unreadable set-up facts (different gandist versions?)"))
        .collect::<Result<_>>()?;
    let failed: Vec<String> = all.iter().filter_map(|f| Some(format!("rank {} on {}: {}", f.rank, f.host, f.error.as_ref()?))).collect();
    if !failed.is_empty() {
        bail!("{} of {world} ranks could not start: {}", failed.len(), failed.join("; "));
    }
    let device = device?;
    let choice = choice::choose(cfg.backend, &all)?;
    let mut notes = vec![choice.reason.clone()];
    notes.extend(crate::device::auto_cpu_reason(device_name, device, driver_gpus));
    if !choice.nccl {
        return Ok(Started { comm: Box::new(mpi), device, report: choice::startup_report(&mine, world, "mpi", notes) });
    }
    // After the gather the others are inside ncclCommInitRank: a failure here must end the job.
    let Device::Cuda(i) = device else { unreachable!("NCCL is chosen for CUDA devices only") };
    let comm = nccl::discover().and_then(|lib| nccl::Communicator::init(lib, &mpi, i, deadlines.collective, deadlines.collective));
    match comm {
        Ok(c) => Ok(Started { comm: Box::new(nccl::Nccl::from_parts(c, mpi)), device, report: choice::startup_report(&mine, world, "nccl", notes) }),
        Err(e) => {
            tracing::error!("{e:#}");
            mpi.abort(1)
        }
    }
}

/// Before MPI_Init, a CUDA-aware MPI may open a context on the current device (GPU 0 unless
/// told otherwise) in every rank. Only the launcher's environment can tell a rank's GPU this
/// early (`cuda::local_rank_hint`); when it does, that GPU's context is made current.
/// Without a hint nothing is done, and MPI's own node-local rank picks the device after.
#[cfg(feature = "mpi")]
fn set_device_before_mpi(device_name: DeviceChoice) {
    if device_name == DeviceChoice::Cpu || !tch::Cuda::is_available() {
        return;
    }
    let count = tch::Cuda::device_count().max(1) as usize;
    let ordinal = match device_name {
        DeviceChoice::CudaIndex(i) => Some(i),
        _ => cuda::local_rank_hint(|v| std::env::var(v).ok()).map(|(r, _)| r % count),
    };
    if let Some(i) = ordinal.filter(|&i| i < count) {
        if let Err(e) = cuda::driver().and_then(|d| d.make_current(i)) {
            tracing::warn!("cannot make CUDA device {i} current before MPI starts: {e:#}");
        }
    }
}
