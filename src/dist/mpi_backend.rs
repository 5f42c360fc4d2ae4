//! Open MPI collectives on host buffers (device tensors are staged through host memory).

use super::Collective;
use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use tch::{Device, Kind, Tensor};

pub struct Mpi {
    // Finalises MPI when dropped; keep it as long as the communicator.
    _universe: Universe,
    world: SimpleCommunicator,
    local_rank: usize,
}

impl Mpi {
    pub fn init() -> Result<Mpi> {
        let Some(universe) = mpi::initialize() else {
            bail!("MPI was already initialised in this process");
        };
        let world = universe.world();
        let local_rank = super::local_rank_from_env().unwrap_or(world.rank() as usize);
        Ok(Mpi { _universe: universe, world, local_rank })
    }
}

fn to_host(buf: &Tensor) -> Result<Vec<f32>> {
    if buf.kind() != Kind::Float {
        bail!("collectives take float32 tensors, got {:?}", buf.kind());
    }
    let host = buf.to_device(Device::Cpu).contiguous();
    let n = host.numel();
    let mut v = vec![0f32; n];
    host.copy_data(&mut v, n);
    Ok(v)
}

fn from_host(buf: &mut Tensor, v: &[f32]) {
    let src = Tensor::from_slice(v).view(buf.size().as_slice()).to_device(buf.device());
    tch::no_grad(|| buf.copy_(&src));
}

impl Mpi {
    /// Copies `root`'s bytes into every rank's `buf`.
    pub fn broadcast_bytes(&self, buf: &mut [u8], root: usize) -> Result<()> {
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }
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
    fn backend_name(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_sum(&self, buf: &mut Tensor) -> Result<()> {
        let send = to_host(buf)?;
        let mut recv = vec![0f32; send.len()];
        self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        from_host(buf, &recv);
        Ok(())
    }
    fn broadcast(&self, buf: &mut Tensor, root: usize) -> Result<()> {
        let mut v = to_host(buf)?;
        self.world.process_at_rank(root as i32).broadcast_into(&mut v[..]);
        from_host(buf, &v);
        Ok(())
    }
    fn all_gather_u64(&self, x: u64) -> Result<Vec<u64>> {
        let mut out = vec![0u64; self.world_size()];
        self.world.all_gather_into(&x, &mut out[..]);
        Ok(out)
    }
    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}
