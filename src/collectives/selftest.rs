//! The collectives self-test (`gandist selftest-collectives`, a hidden subcommand for the GPU
//! check): the chosen backend's all-reduces (sum and mean, in place and out of place),
//! broadcasts (in place and into another buffer), the ordering of a reduction between the
//! device work that produces its input and the work that reads its output, the host agreement,
//! and on NCCL the abort path. Each check compares against values computed independently on
//! the host, and each row is handed to the caller the moment it ends, so that a job ended by a
//! later row (MPI_Abort) still shows the rows before it.
//!
//! With one rank NCCL does no device work for an in-place sum or broadcast (see `nccl`): the
//! out-of-place rows (a copy on the stream) and the mean rows (NCCL's kernel) are the ones that
//! exercise it on one GPU, and each row says which it is.

use super::{Collective, ReduceOp, Started};
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

/// Runs every check on this rank (all ranks call it together), handing each row to `done` as
/// soon as it ends.
pub fn run(s: &Started, mut done: impl FnMut(&Check)) -> Vec<Check> {
    let comm = s.comm.as_ref();
    let d = s.device;
    let rows: [(&'static str, &dyn Fn() -> Result<String>); 9] = [
        ("all-reduce", &|| all_reduce(comm, d)),
        ("all-reduce out of place", &|| all_reduce_out_of_place(comm, d)),
        ("all-reduce mean", &|| all_reduce_mean(comm, d)),
        ("stream order", &|| stream_order(comm, d)),
        ("broadcast", &|| broadcast(comm, d, false)),
        ("broadcast out of place", &|| broadcast(comm, d, true)),
        ("agreement", &|| agreement(comm)),
        ("abort path", &|| comm.exercise_abort().map(|r| r.unwrap_or_else(|| "n/a: this backend's collectives block the host, and their deadline ends the job".into()))),
        ("no pending error", &|| comm.check().map(|_| "ok".into())),
    ];
    let mut out = Vec::new();
    for (name, f) in rows {
        let c = check(name, f());
        done(&c);
        out.push(c);
    }
    out
}

/// What NCCL does for this kind of call with one rank (NCCL's `ncclLaunchOneRank`), or "" on
/// other backends and world sizes.
fn one_rank_work(comm: &dyn Collective, what: &str) -> String {
    if comm.backend_name() != "nccl" || comm.world_size() != 1 {
        return String::new();
    }
    format!("; with 1 rank NCCL {what}")
}

/// The value of element `i` on `rank`: distinct per row (`offset`), so that a buffer left over
/// from another row never passes for this one's result.
fn pattern(n: i64, rank: usize, offset: f64, device: Device) -> Tensor {
    let base = Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(1000).to_kind(Kind::Float) + offset;
    crate::device::upload(&(base * (rank + 1) as f64), device)
}

/// Compares `got` with `want(i)`; `tol(w)` is the allowed absolute difference.
fn compare(what: &str, got: &[f32], want: impl Fn(usize) -> f32, tol: impl Fn(f32) -> f32) -> Result<()> {
    if let Some(i) = (0..got.len()).find(|&i| !((got[i] - want(i)).abs() <= tol(want(i)))) {
        bail!("{what}: element {i} is {}, expected {}", got[i], want(i));
    }
    Ok(())
}

/// The tolerance of a mean over `world` ranks: exact when 1/world is a power of two (every
/// term and partial sum of these small values is then representable); otherwise NCCL
/// pre-multiplies each term by the rounded 1/world and sums in its own order, MPI sums then
/// divides: within `world` roundings of the result.
fn mean_tolerance(world: usize) -> impl Fn(f32) -> f32 {
    move |w| if world.is_power_of_two() { 0.0 } else { world as f32 * f32::EPSILON * w.abs() }
}

/// Sums (i mod 1000) x (rank + 1) over ranks, in place: exact in float32 for these sizes.
fn all_reduce(comm: &dyn Collective, device: Device) -> Result<String> {
    let (n, world) = (1_000_003i64, comm.world_size());
    let mut buf = pattern(n, comm.rank(), 0.0, device);
    let started = Instant::now();
    comm.all_reduce_sum(&mut buf)?;
    let got = crate::hostread::vec_f32(&buf)?;
    let seconds = started.elapsed().as_secs_f64();
    comm.check()?;
    let factor = (world * (world + 1) / 2) as f32;
    compare("after the all-reduce", &got, |i| (i % 1000) as f32 * factor, |_| 0.0)?;
    Ok(format!(
        "{n} floats on {} summed exactly in place over {world} rank(s) in {:.1} ms (with the read back){}",
        crate::device::label(device),
        seconds * 1e3,
        one_rank_work(comm, "does no device work for this (in place)")
    ))
}

/// The same sum from one buffer into another: the source stays as it was.
fn all_reduce_out_of_place(comm: &dyn Collective, device: Device) -> Result<String> {
    let (n, world, rank) = (1_000_003i64, comm.world_size(), comm.rank());
    let src = pattern(n, rank, 0.125, device);
    let mut dst = Tensor::full([n], f64::NAN, (Kind::Float, device));
    comm.all_reduce_into(&src, &mut dst, ReduceOp::Sum)?;
    let (got, kept) = (crate::hostread::vec_f32(&dst)?, crate::hostread::vec_f32(&src)?);
    comm.check()?;
    let factor = (world * (world + 1) / 2) as f32;
    compare("in the destination", &got, |i| ((i % 1000) as f32 + 0.125) * factor, |_| 0.0)?;
    compare("in the source (must be left alone)", &kept, |i| ((i % 1000) as f32 + 0.125) * (rank + 1) as f32, |_| 0.0)?;
    Ok(format!("{n} floats summed exactly into another buffer, the source unchanged{}", one_rank_work(comm, "copies with cudaMemcpyAsync on the stream")))
}

/// The trainer's reduction: the mean, in place.
fn all_reduce_mean(comm: &dyn Collective, device: Device) -> Result<String> {
    let (n, world) = (1_000_003i64, comm.world_size());
    let mut buf = pattern(n, comm.rank(), 0.25, device);
    comm.all_reduce_mean(&mut buf)?;
    let got = crate::hostread::vec_f32(&buf)?;
    comm.check()?;
    let factor = (world + 1) as f32 / 2.0;
    compare("after the mean", &got, |i| ((i % 1000) as f32 + 0.25) * factor, mean_tolerance(world))?;
    Ok(format!(
        "{n} floats averaged in place over {world} rank(s), {}{}",
        if world.is_power_of_two() { "exactly" } else { "within world-size roundings" },
        one_rank_work(comm, "runs its oneRankReduce kernel (ncclAvg: a sum pre-multiplied by 1/nRanks)")
    ))
}

/// Device work that takes a while (about 100 ms on a GPU) and yields 0: adding it to a buffer
/// makes that buffer depend on the work without changing its values.
fn slow_zero(device: Device) -> Tensor {
    let (side, rounds) = if device.is_cuda() { (4096, 100) } else { (64, 4) };
    let a = Tensor::randn([side, side], (Kind::Float, device));
    let mut x = a.shallow_clone();
    for _ in 0..rounds {
        x = x.matmul(&a) / (side as f64).sqrt();
    }
    x.sum(Kind::Float).nan_to_num(0.0, 0.0, 0.0) * 0.0
}

/// The mean from one buffer into another, queued behind slow device work that produces its
/// input and before a device computation that reads its output, without the host waiting in
/// between: the reduction must run after the one and before the other. The destination starts
/// as NaN, and the input's values are this row's own, so a reduction that ran too early (on
/// the unfinished input) or too late (after the reader) shows as wrong values.
fn stream_order(comm: &dyn Collective, device: Device) -> Result<String> {
    let (n, world, rank) = (1i64 << 20, comm.world_size(), comm.rank());
    let src = pattern(n, rank, 0.375, device) + slow_zero(device);
    let mut dst = Tensor::full([n], f64::NAN, (Kind::Float, device));
    comm.all_reduce_into(&src, &mut dst, ReduceOp::Mean)?;
    let read = &dst * 2.0 + 1.0;
    let got = crate::hostread::vec_f32(&read)?;
    comm.check()?;
    let factor = (world + 1) as f32 / 2.0;
    let tol = mean_tolerance(world);
    compare("read after the mean", &got, |i| ((i % 1000) as f32 + 0.375) * factor * 2.0 + 1.0, move |w| 2.0 * tol(w))?;
    Ok(format!(
        "a mean into another buffer, between queued device work that made its input and a kernel that read its output, gave the expected values{}",
        one_rank_work(comm, "runs its oneRankReduce kernel on the stream")
    ))
}

/// Every root in turn: each rank ends with the root's values (into another buffer: the
/// source stays the rank's own).
fn broadcast(comm: &dyn Collective, device: Device, out_of_place: bool) -> Result<String> {
    let (world, rank) = (comm.world_size(), comm.rank());
    let mine = [rank as f32 + 0.5, -(rank as f32), 7.0];
    for root in 0..world {
        let src = crate::device::upload(&Tensor::from_slice(&mine), device);
        let want = vec![root as f32 + 0.5, -(root as f32), 7.0];
        let got = if out_of_place {
            let mut dst = Tensor::full([3], f64::NAN, (Kind::Float, device));
            comm.broadcast_into(&src, &mut dst, root)?;
            let kept = crate::hostread::vec_f32(&src)?;
            if kept != mine {
                bail!("broadcast from root {root}: rank {rank}'s source became {kept:?}, expected it left at {mine:?}");
            }
            crate::hostread::vec_f32(&dst)?
        } else {
            let mut buf = src;
            comm.broadcast(&mut buf, root)?;
            crate::hostread::vec_f32(&buf)?
        };
        if got != want {
            bail!("broadcast from root {root}: rank {rank} holds {got:?}, expected {want:?}");
        }
    }
    comm.check()?;
    Ok(if out_of_place {
        format!("into another buffer from each of {world} root(s), exact, sources unchanged{}", one_rank_work(comm, "copies with cudaMemcpyAsync on the stream"))
    } else {
        format!("from each of {world} root(s), exact{}", one_rank_work(comm, "does no device work for this (in place)"))
    })
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
