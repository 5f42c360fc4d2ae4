//! NCCL collectives on CUDA tensors, with libnccl loaded at run time so that the binary builds
//! and runs without CUDA. Exactly the libnccl that libtorch already loaded is used (a second,
//! different NCCL in one process corrupts communicators). MPI bootstraps the communicator
//! (the unique id is broadcast over it) and serves the small host-side collectives.
//!
//! Reductions run on the CUDA legacy default stream, the stream libtorch's kernels use here
//! (tch never switches streams), so they are ordered after the kernels that produced the
//! gradient. Every wait is bounded: a peer that died or hangs ends in ncclCommAbort and an error.

use super::mpi_backend::Mpi;
use super::Collective;
use anyhow::{bail, Context, Result};
use libloading::Library;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [u8; 128],
}

type Comm = *mut c_void;
type Stream = *mut c_void;
const NCCL_SUCCESS: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;
const NCCL_FLOAT32: c_int = 7;
const NCCL_SUM: c_int = 0;
const CUDA_SUCCESS: c_int = 0;
const CUDA_ERROR_NOT_READY: c_int = 600;
/// The legacy default stream.
const DEFAULT_STREAM: Stream = std::ptr::null_mut();

/// The NCCL and CUDA runtime entry points this backend calls.
struct Api {
    get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    comm_abort: unsafe extern "C" fn(Comm) -> c_int,
    comm_destroy: unsafe extern "C" fn(Comm) -> c_int,
    get_async_error: unsafe extern "C" fn(Comm, *mut c_int) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    cuda_set_device: unsafe extern "C" fn(c_int) -> c_int,
    cuda_stream_query: unsafe extern "C" fn(Stream) -> c_int,
    _nccl: Library,
    _cudart: Library,
}

/// The path of an already-loaded shared library whose file name starts with `prefix`.
fn loaded_library(prefix: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with(prefix)))
        .map(PathBuf::from)
}

fn open(prefix: &str, env: &str) -> Result<(Library, PathBuf)> {
    let path = match std::env::var_os(env) {
        Some(p) => PathBuf::from(p),
        None => loaded_library(prefix).with_context(|| {
            format!("libtorch has not loaded {prefix}* in this process (a CPU-only libtorch?): set {env} to the library, or use dist.backend = \"mpi\"")
        })?,
    };
    // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's libraries,
    // already loaded by libtorch, so this returns the existing handle.
    let lib = unsafe { Library::new(&path) }.with_context(|| format!("cannot load {}", path.display()))?;
    Ok((lib, path))
}

impl Api {
    fn load() -> Result<(Api, PathBuf)> {
        let (nccl, nccl_path) = open("libnccl.so", "GANDIST_NCCL_LIB")?;
        let (cudart, _) = open("libcudart.so", "GANDIST_CUDART_LIB")?;
        macro_rules! sym {
            ($lib:expr, $name:literal) => {
                // SAFETY: the signatures above follow nccl.h and cuda_runtime_api.h.
                *unsafe { $lib.get($name) }.with_context(|| format!("{} lacks {}", nccl_path.display(), String::from_utf8_lossy($name)))?
            };
        }
        let api = Api {
            get_version: sym!(nccl, b"ncclGetVersion\0"),
            get_unique_id: sym!(nccl, b"ncclGetUniqueId\0"),
            comm_init_rank: sym!(nccl, b"ncclCommInitRank\0"),
            all_reduce: sym!(nccl, b"ncclAllReduce\0"),
            broadcast: sym!(nccl, b"ncclBroadcast\0"),
            comm_abort: sym!(nccl, b"ncclCommAbort\0"),
            comm_destroy: sym!(nccl, b"ncclCommDestroy\0"),
            get_async_error: sym!(nccl, b"ncclCommGetAsyncError\0"),
            error_string: sym!(nccl, b"ncclGetErrorString\0"),
            cuda_set_device: sym!(cudart, b"cudaSetDevice\0"),
            cuda_stream_query: sym!(cudart, b"cudaStreamQuery\0"),
            _nccl: nccl,
            _cudart: cudart,
        };
        Ok((api, nccl_path))
    }

    fn check(&self, what: &str, r: c_int) -> Result<()> {
        if r == NCCL_SUCCESS {
            return Ok(());
        }
        // SAFETY: ncclGetErrorString returns a static string for any code.
        let msg = unsafe { CStr::from_ptr((self.error_string)(r)) }.to_string_lossy();
        bail!("{what} failed: NCCL error {r} ({msg})")
    }
}

/// The installed NCCL's version code (e.g. 22809 for 2.28.9), if libtorch loaded one.
pub fn version() -> Result<(i32, PathBuf)> {
    let (api, path) = Api::load()?;
    let mut v: c_int = 0;
    // SAFETY: writes one int.
    api.check("ncclGetVersion", unsafe { (api.get_version)(&mut v) })?;
    Ok((v, path))
}

pub struct Nccl {
    mpi: Mpi,
    api: Api,
    comm: Comm,
    device: usize,
    timeout: Duration,
}

impl Nccl {
    /// Joins the NCCL communicator of all MPI ranks on CUDA device `device`.
    pub fn init(mpi: Mpi, device: usize, timeout: Duration) -> Result<Nccl> {
        let (api, path) = Api::load()?;
        // SAFETY: plain CUDA runtime call.
        let r = unsafe { (api.cuda_set_device)(device as c_int) };
        if r != CUDA_SUCCESS {
            bail!("cudaSetDevice({device}) failed with CUDA error {r}");
        }
        let mut id = UniqueId { internal: [0; 128] };
        if mpi.rank() == 0 {
            // SAFETY: fills the 128-byte id.
            api.check("ncclGetUniqueId", unsafe { (api.get_unique_id)(&mut id) })?;
        }
        mpi.broadcast_bytes(&mut id.internal, 0)?;
        let mut comm: Comm = std::ptr::null_mut();
        let (n, rank) = (mpi.world_size() as c_int, mpi.rank() as c_int);
        // SAFETY: blocks until all ranks join; the id came from rank 0.
        api.check("ncclCommInitRank", unsafe { (api.comm_init_rank)(&mut comm, n, id, rank) })
            .with_context(|| format!("NCCL from {} on CUDA device {device}", path.display()))?;
        Ok(Nccl { mpi, api, comm, device, timeout })
    }

    /// Waits for the default stream with a deadline, watching for NCCL's asynchronous errors.
    fn wait(&self, what: &str) -> Result<()> {
        let start = Instant::now();
        loop {
            // SAFETY: queries the legacy default stream of the current device.
            match unsafe { (self.api.cuda_stream_query)(DEFAULT_STREAM) } {
                CUDA_SUCCESS => return Ok(()),
                CUDA_ERROR_NOT_READY => {}
                e => bail!("{what}: CUDA error {e} on device {}", self.device),
            }
            let mut async_err: c_int = NCCL_SUCCESS;
            // SAFETY: reads the communicator's error state.
            unsafe { (self.api.get_async_error)(self.comm, &mut async_err) };
            if async_err != NCCL_SUCCESS && async_err != NCCL_IN_PROGRESS {
                unsafe { (self.api.comm_abort)(self.comm) };
                self.api.check(what, async_err)?;
            }
            if start.elapsed() > self.timeout {
                unsafe { (self.api.comm_abort)(self.comm) };
                bail!(
                    "{what} did not complete within {:?} (dist.timeout_seconds): a peer rank died or hangs; the communicator was aborted",
                    self.timeout
                );
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn collective(&self, buf: &Tensor, what: &str, f: impl FnOnce(*mut c_void, usize) -> c_int) -> Result<()> {
        if buf.device() != Device::Cuda(self.device) || buf.kind() != Kind::Float || !buf.is_contiguous() {
            bail!("{what} takes a contiguous float32 tensor on cuda:{}, got {:?} on {:?}", self.device, buf.kind(), buf.device());
        }
        let r = f(buf.data_ptr(), buf.numel());
        self.api.check(what, r)?;
        self.wait(what)
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        // SAFETY: the communicator is not used after this.
        unsafe { (self.api.comm_destroy)(self.comm) };
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }
    fn world_size(&self) -> usize {
        self.mpi.world_size()
    }
    fn local_rank(&self) -> usize {
        self.mpi.local_rank()
    }
    fn backend_name(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum(&self, buf: &mut Tensor) -> Result<()> {
        if !buf.device().is_cuda() {
            return self.mpi.all_reduce_sum(buf);
        }
        let (f, comm) = (self.api.all_reduce, self.comm);
        // SAFETY: in place on the tensor's own device memory, ordered on the default stream.
        self.collective(buf, "ncclAllReduce", |p, n| unsafe { f(p, p, n, NCCL_FLOAT32, NCCL_SUM, comm, DEFAULT_STREAM) })
    }
    fn broadcast(&self, buf: &mut Tensor, root: usize) -> Result<()> {
        if !buf.device().is_cuda() {
            return self.mpi.broadcast(buf, root);
        }
        let (f, comm) = (self.api.broadcast, self.comm);
        // SAFETY: as above.
        self.collective(buf, "ncclBroadcast", |p, n| unsafe { f(p, p, n, NCCL_FLOAT32, root as c_int, comm, DEFAULT_STREAM) })
    }
    fn all_gather_u64(&self, x: u64) -> Result<Vec<u64>> {
        self.mpi.all_gather_u64(x)
    }
    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }
    fn abort(&self, code: i32) -> ! {
        // SAFETY: ends outstanding NCCL work so that the MPI abort is not stuck behind it.
        unsafe { (self.api.comm_abort)(self.comm) };
        self.mpi.abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loader finds the NCCL that libtorch itself loaded (when libtorch has CUDA
    /// libraries, as the PyPI build does even on machines without a GPU) and reads its version.
    #[test]
    fn finds_the_nccl_libtorch_loaded() {
        // Make sure libtorch_cuda (and so its NCCL) is loaded in this test process.
        let _ = tch::Cuda::is_available();
        match loaded_library("libtorch_cuda") {
            Some(_) => {
                let (v, path) = version().unwrap();
                assert!(v >= 20000, "NCCL version code {v} from {}", path.display());
                assert_eq!(Some(path), loaded_library("libnccl.so"));
            }
            None => {
                let e = format!("{:#}", version().unwrap_err());
                assert!(e.contains("dist.backend = \"mpi\""), "{e}");
            }
        }
    }
}
