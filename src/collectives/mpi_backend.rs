//! Open MPI collectives on host buffers (device tensors are staged through host memory), and
//! the host-side waits every backend shares: the agreement on a stop, barriers, gathers.
//!
//! The node-local rank and size come from MPI itself (`MPI_Comm_split_type` with
//! `MPI_COMM_TYPE_SHARED`), not from launcher variables, which some launchers set wrongly
//! (MPICH or Intel MPI inside a Slurm allocation leave SLURM_LOCALID at 0 on every rank).
//!
//! Every blocking call is bounded: tensor collectives by `dist.timeout_seconds`, host waits
//! (which include rank 0's evaluation, samples and checkpoints) by
//! `dist.root_work_timeout_seconds`. Past its deadline a watchdog thread names the wait and
//! ends the whole job with `MPI_Abort` (MPI is initialised with MPI_THREAD_MULTIPLE so that it
//! may be called from that thread).

use super::watchdog::{Guard, Watchdog};
use super::Collective;
use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::time::Duration;
use tch::{Kind, Tensor};

/// The deadlines of the two kinds of waits.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    /// One tensor collective (`dist.timeout_seconds`).
    pub collective: Duration,
    /// A host wait for the other ranks (`dist.root_work_timeout_seconds`).
    pub host: Duration,
}

pub struct Mpi {
    // Declared first: its thread stops before MPI is finalised.
    watchdog: Watchdog,
    world: SimpleCommunicator,
    local_rank: usize,
    local_size: usize,
    deadlines: Deadlines,
    // Finalises MPI when dropped; keep it as long as the communicators.
    _universe: Universe,
}

impl Mpi {
    pub fn init(deadlines: Deadlines) -> Result<Mpi> {
        let Some((universe, _provided)) = mpi::initialize_with_threading(mpi::Threading::Multiple) else {
            bail!("MPI was already initialised in this process");
        };
        let world = universe.world();
        let node = world.split_shared(world.rank());
        let (local_rank, local_size) = (node.rank() as usize, node.size() as usize);
        let watchdog = Watchdog::start(move |msg| {
            tracing::error!("{msg}; ending the job");
            // SAFETY: MPI is initialised (this thread stops before it is finalised).
            unsafe { mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, 1) };
        });
        Ok(Mpi { watchdog, world, local_rank, local_size, deadlines, _universe: universe })
    }

    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Bounds a blocking call: past `timeout` the job ends with a message naming `what`.
    pub fn deadline(&self, what: impl Into<String>, timeout: Duration) -> Guard<'_> {
        self.watchdog.arm(what, timeout)
    }

    fn host_wait(&self, what: &str) -> Guard<'_> {
        self.deadline(format!("{what} (waiting for the other ranks, dist.root_work_timeout_seconds)"), self.deadlines.host)
    }

    fn collective_wait(&self, what: &str) -> Guard<'_> {
        self.deadline(format!("{what} (dist.timeout_seconds)"), self.deadlines.collective)
    }

    /// Copies `root`'s bytes into every rank's `buf`.
    pub fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<()> {
        let _d = self.host_wait("a broadcast of set-up data");
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }

    /// Every rank's bytes (of any length), in rank order.
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let _d = self.host_wait("a gather of set-up data");
        let n = self.world_size();
        let mut lens = vec![0u64; n];
        self.world.all_gather_into(&(bytes.len() as u64), &mut lens[..]);
        let width = lens.iter().copied().max().unwrap_or(0) as usize;
        let mut mine = bytes.to_vec();
        mine.resize(width, 0);
        let mut all = vec![0u8; width * n];
        self.world.all_gather_into(&mine[..], &mut all[..]);
        Ok(all.chunks(width.max(1)).zip(&lens).map(|(c, &l)| c[..l as usize].to_vec()).collect())
    }
}

fn to_host(buf: &Tensor) -> Result<Vec<f32>> {
    if buf.kind() != Kind::Float {
        bail!("collectives take float32 tensors, got {:?}", buf.kind());
    }
    // Staging a device tensor is a host read by design of this backend (nccl avoids it).
    Ok(crate::hostread::stage_f32(buf)?)
}

fn from_host(buf: &mut Tensor, v: &[f32]) {
    let src = crate::device::upload(&Tensor::from_slice(v).view(buf.size().as_slice()), buf.device());
    tch::no_grad(|| buf.copy_(&src));
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn world_size(&self) -> usize {
        self.world.size() as usize
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_size(&self) -> usize {
        self.local_size
    }
    fn backend_name(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_sum(&self, buf: &mut Tensor) -> Result<()> {
        let send = to_host(buf)?;
        let mut recv = vec![0f32; send.len()];
        {
            let _d = self.collective_wait("an MPI all-reduce");
            self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        }
        from_host(buf, &recv);
        Ok(())
    }
    fn broadcast(&self, buf: &mut Tensor, root: usize) -> Result<()> {
        let mut v = to_host(buf)?;
        {
            let _d = self.collective_wait("an MPI broadcast");
            self.world.process_at_rank(root as i32).broadcast_into(&mut v[..]);
        }
        from_host(buf, &v);
        Ok(())
    }
    fn all_gather_u64(&self, x: u64) -> Result<Vec<u64>> {
        let _d = self.host_wait("a gather");
        let mut out = vec![0u64; self.world_size()];
        self.world.all_gather_into(&x, &mut out[..]);
        Ok(out)
    }
    fn any(&self, flag: bool) -> Result<bool> {
        let _d = self.host_wait("the per-iteration agreement on a stop");
        let mut out = 0u32;
        self.world.all_reduce_into(&(flag as u32), &mut out, SystemOperation::max());
        Ok(out > 0)
    }
    fn barrier(&self) -> Result<()> {
        let _d = self.host_wait("a barrier");
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
