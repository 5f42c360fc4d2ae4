//! The collectives self-test (`gandist selftest-collectives`, a hidden subcommand for the GPU
//! check): the chosen backend's all-reduce, broadcast and host agreement on known values,
//! even at world size 1 (where the trainer skips every reduction), and on NCCL the abort path.
//! Each check compares against values computed independently on the host.

use super::{Collective, Started};
use anyhow::{bail, Result};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// One check's outcome, as a table row.
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn check(name: &'static str, r: Result<String>) -> Check {
    match r {
        Ok(detail) => Check { name, ok: true, detail },
        Err(e) => Check { name, ok: false, detail: format!("{e:#}") },
    }
}

/// Runs every check on this rank (all ranks call it together).
pub fn run(s: &Started) -> Vec<Check> {
    let comm = s.comm.as_ref();
    let mut out = vec![
        check("all-reduce", all_reduce(comm, s.device)),
        check("broadcast", broadcast(comm, s.device)),
        check("agreement", agreement(comm)),
    ];
    out.push(check("abort path", comm.exercise_abort().map(|r| r.unwrap_or_else(|| "n/a: this backend's collectives block the host, and their deadline ends the job".into()))));
    out.push(check("no pending error", comm.check().map(|_| "ok".into())));
    out
}

/// Sums (i mod 1000) x (rank + 1) over ranks: exact in float32 for the sizes used here.
fn all_reduce(comm: &dyn Collective, device: Device) -> Result<String> {
    let (n, world, rank) = (1_000_003i64, comm.world_size() as i64, comm.rank() as i64);
    let base = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(1000).to_kind(Kind::Float);
    let mut buf = crate::device::upload(&(&base * (rank + 1) as f64), device);
    let started = Instant::now();
    comm.all_reduce_sum(&mut buf)?;
    let got = crate::hostread::vec_f32(&buf)?;
    let seconds = started.elapsed().as_secs_f64();
    comm.check()?;
    let factor = (world * (world + 1) / 2) as f32;
    if let Some(i) = (0..n as usize).find(|&i| got[i] != (i % 1000) as f32 * factor) {
        bail!("element {i} is {} after the all-reduce, expected {}", got[i], (i % 1000) as f32 * factor);
    }
    Ok(format!("{n} floats on {} summed exactly over {world} rank(s) in {:.1} ms (with the read back)", crate::device::label(device), seconds * 1e3))
}

/// Every root in turn: each rank ends with the root's values.
fn broadcast(comm: &dyn Collective, device: Device) -> Result<String> {
    let (world, rank) = (comm.world_size(), comm.rank());
    for root in 0..world {
        let mut buf = crate::device::upload(&Tensor::from_slice(&[rank as f32 + 0.5, -(rank as f32), 7.0]), device);
        comm.broadcast(&mut buf, root)?;
        let got = crate::hostread::vec_f32(&buf)?;
        let want = vec![root as f32 + 0.5, -(root as f32), 7.0];
        if got != want {
            bail!("broadcast from root {root}: rank {rank} holds {got:?}, expected {want:?}");
        }
    }
    comm.check()?;
    Ok(format!("from each of {world} root(s), exact"))
}

fn agreement(comm: &dyn Collective) -> Result<String> {
    let last = comm.world_size() - 1;
    if comm.any(false)? {
        bail!("no rank set the flag, yet the agreement says one did");
    }
    if !comm.any(comm.rank() == last)? {
        bail!("rank {last} set the flag, yet the agreement says none did");
    }
    Ok("a flag set on one rank reaches every rank, and only then".into())
}
