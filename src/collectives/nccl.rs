//! NCCL collectives on CUDA tensors, with NCCL loaded at run time so that the binary builds
//! and runs without CUDA.
//!
//! Which NCCL: exactly the one libtorch uses (two NCCLs in one process corrupt
//! communicators). `discover` finds it among the process's mapped files (the PyPI build
//! loads `libnccl.so.2`), or inside `libtorch_cuda.so` itself when a standalone libtorch
//! links it statically and exports its symbols, and refuses when two different libnccl
//! files are mapped. It says what it found either way.
//!
//! Ordering: calls go on the legacy default stream, the stream libtorch's kernels use here
//! (tch never switches streams), so a reduction runs after the kernels that produced its
//! buffer and before those that read it. The host never waits for a collective: each call
//! records a CUDA event after it, and a monitor thread watches those events and NCCL's
//! asynchronous errors. An operation still queued after `dist.timeout_seconds`, or an error,
//! makes the monitor abort the communicator (which releases kernels stuck on a dead peer);
//! the error then surfaces on the rank's next call or `check`. A communicator ends exactly
//! once, by abort or by destroy, whoever asks first.
//!
//! What NCCL does with one rank (read in NCCL v2.28.9-1, the version libtorch 2.11.0's wheel
//! loads, and unchanged on master at 2.30.7): `taskAppend` (src/enqueue.cc) hands every
//! collective of a 1-rank communicator to `ncclLaunchOneRank` (src/device/onerank.cu), which
//! does nothing for an in-place sum or broadcast, a `cudaMemcpyAsync` on the caller's stream for
//! an out-of-place one, and launches its `oneRankReduce` kernel only for a pre-multiplied sum:
//! `ncclAvg` on floats (`hostToDevRedOp` makes it a sum pre-multiplied by 1/nRanks). So the
//! trainer reduces with `ncclAvg` in place (one kernel at any world size, and no separate
//! division), and the self-test's one-GPU rows use out-of-place calls and `ncclAvg`, which do
//! device work on the stream, instead of in-place sums, which do none.

use super::choice::version_string;
use super::cuda::{self, CuContext, CuEvent};
use super::mpi_backend::Mpi;
use super::Collective;
use anyhow::{bail, Context, Result};
use libloading::Library;
use std::collections::VecDeque;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
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
/// ncclAvg: on floats NCCL turns it into a sum of inputs pre-multiplied by 1/nRanks
/// (`hostToDevRedOp`, src/enqueue.cc), which with one rank is still a kernel (below).
const NCCL_AVG: c_int = 4;
/// The legacy default stream.
const DEFAULT_STREAM: Stream = std::ptr::null_mut();
/// How often the monitor looks at events and asynchronous errors.
const MONITOR_POLL: Duration = Duration::from_millis(1);

/// Where this process's NCCL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A libnccl file that libtorch loaded.
    Loaded(PathBuf),
    /// NCCL linked statically into libtorch_cuda, used through the symbols it exports.
    Static(PathBuf),
    /// GANDIST_NCCL_LIB, for a libtorch that brings no NCCL of its own.
    Override(PathBuf),
}

impl Source {
    pub fn path(&self) -> &Path {
        match self {
            Source::Loaded(p) | Source::Static(p) | Source::Override(p) => p,
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Loaded(p) => format!("loaded by libtorch from {}", p.display()),
            Source::Static(p) => format!("linked into {}", p.display()),
            Source::Override(p) => format!("from GANDIST_NCCL_LIB={}", p.display()),
        }
    }
}

/// The shared libraries of interest among a process's mapped files.
#[derive(Debug, Default, PartialEq)]
pub struct Mapped {
    /// Distinct libnccl files (libnccl-net plugins are not NCCL itself).
    pub nccl: Vec<PathBuf>,
    pub torch_cuda: Option<PathBuf>,
}

/// Reads `/proc/self/maps`-formatted text.
pub fn mapped(maps: &str) -> Mapped {
    let mut m = Mapped::default();
    for line in maps.lines() {
        let path = line.split_whitespace().skip(5).collect::<Vec<_>>().join(" ");
        let Some(name) = path.rsplit('/').next().filter(|_| path.starts_with('/')) else { continue };
        if name.starts_with("libnccl.so") {
            let p = PathBuf::from(&path);
            if !m.nccl.contains(&p) {
                m.nccl.push(p);
            }
        } else if (name == "libtorch_cuda.so" || name.starts_with("libtorch_cuda.so.")) && m.torch_cuda.is_none() {
            m.torch_cuda = Some(PathBuf::from(&path));
        }
    }
    m
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Decides which library to take NCCL's symbols from. `exports_nccl` tells whether a library
/// (libtorch_cuda) exports ncclGetVersion, as one with a statically linked NCCL may.
pub fn plan(m: &Mapped, override_lib: Option<PathBuf>, exports_nccl: impl FnOnce(&Path) -> bool) -> Result<Source> {
    const TWO: &str = "two NCCLs in one process corrupt communicators";
    if m.nccl.len() > 1 {
        let list = m.nccl.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and ");
        bail!("two different NCCL libraries are loaded in this process ({list}): {TWO}; fix the library path so that only libtorch's NCCL loads, or use dist.backend = \"mpi\"");
    }
    if let Some(loaded) = m.nccl.first() {
        if let Some(p) = override_lib.filter(|p| !same_file(p, loaded)) {
            bail!("GANDIST_NCCL_LIB={} is another NCCL than the one libtorch loaded ({}): {TWO}; unset GANDIST_NCCL_LIB", p.display(), loaded.display());
        }
        return Ok(Source::Loaded(loaded.clone()));
    }
    let Some(torch_cuda) = &m.torch_cuda else {
        bail!("no NCCL: libtorch_cuda is not loaded in this process (a CPU-only libtorch, or a binary linked without libtorch_cuda)");
    };
    if exports_nccl(torch_cuda) {
        if let Some(p) = override_lib {
            bail!("{} links NCCL statically; GANDIST_NCCL_LIB={} would load a second NCCL beside it ({TWO}): unset GANDIST_NCCL_LIB", torch_cuda.display(), p.display());
        }
        return Ok(Source::Static(torch_cuda.clone()));
    }
    match override_lib {
        // libtorch uses no NCCL at all: one loaded for gandist alone is the only one.
        Some(p) => Ok(Source::Override(p)),
        None => bail!(
            "{} loaded no libnccl and exports no NCCL symbols (NCCL linked in with hidden symbols, or built without NCCL): gandist cannot use the NCCL libtorch uses; use dist.backend = \"mpi\", or set GANDIST_NCCL_LIB if this libtorch has no NCCL at all",
            torch_cuda.display()
        ),
    }
}

/// The NCCL entry points this backend calls.
struct Api {
    get_version: unsafe extern "C" fn(*mut c_int) -> c_int,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    broadcast: unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int,
    comm_abort: unsafe extern "C" fn(Comm) -> c_int,
    comm_destroy: unsafe extern "C" fn(Comm) -> c_int,
    get_async_error: unsafe extern "C" fn(Comm, *mut c_int) -> c_int,
    comm_cu_device: unsafe extern "C" fn(Comm, *mut c_int) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
    /// NCCL's text of its last error (from 2.13 on; the argument is unused, NULL is allowed).
    last_error: Option<unsafe extern "C" fn(Comm) -> *const c_char>,
    _lib: Library,
}

/// NCCL as this process has it.
pub struct NcclLib {
    api: Api,
    pub source: Source,
    /// NCCL's version code (22809 for 2.28.9).
    pub version: i32,
}

impl NcclLib {
    fn open(source: Source) -> Result<NcclLib> {
        let path = source.path().to_path_buf();
        // SAFETY: the library is NVIDIA's NCCL (or libtorch_cuda holding it), in the loaded
        // cases already mapped, so this returns the existing handle.
        let lib = unsafe { Library::new(&path) }.with_context(|| format!("cannot load {}", path.display()))?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the signatures follow nccl.h.
                *unsafe { lib.get($name) }.with_context(|| format!("{} lacks {}", path.display(), String::from_utf8_lossy($name)))?
            };
        }
        let api = Api {
            get_version: sym!(b"ncclGetVersion\0"),
            get_unique_id: sym!(b"ncclGetUniqueId\0"),
            comm_init_rank: sym!(b"ncclCommInitRank\0"),
            all_reduce: sym!(b"ncclAllReduce\0"),
            broadcast: sym!(b"ncclBroadcast\0"),
            comm_abort: sym!(b"ncclCommAbort\0"),
            comm_destroy: sym!(b"ncclCommDestroy\0"),
            get_async_error: sym!(b"ncclCommGetAsyncError\0"),
            comm_cu_device: sym!(b"ncclCommCuDevice\0"),
            error_string: sym!(b"ncclGetErrorString\0"),
            // SAFETY: as above.
            last_error: unsafe { lib.get(b"ncclGetLastError\0") }.ok().map(|s| *s),
            _lib: lib,
        };
        let mut v: c_int = 0;
        // SAFETY: writes one int.
        let r = unsafe { (api.get_version)(&mut v) };
        let lib = NcclLib { api, source, version: 0 };
        lib.check("ncclGetVersion", r)?;
        Ok(NcclLib { version: v, ..lib })
    }

    fn check(&self, what: &str, r: c_int) -> Result<()> {
        if r == NCCL_SUCCESS {
            return Ok(());
        }
        bail!("{}", self.error(what, r))
    }

    /// "WHAT failed: NCCL error R (its name); ncclGetLastError: ...": every NCCL error says
    /// what NCCL itself recorded about it (a peer's address, a CUDA error, a missing plugin).
    fn error(&self, what: &str, r: c_int) -> String {
        error_message(what, r, &self.error_text(r), self.last_error().as_deref())
    }

    fn error_text(&self, r: c_int) -> String {
        // SAFETY: ncclGetErrorString returns a static string for any code.
        unsafe { CStr::from_ptr((self.api.error_string)(r)) }.to_string_lossy().into_owned()
    }

    /// ncclGetLastError's text (process-wide in NCCL: it ignores its argument), if this NCCL
    /// has the call.
    fn last_error(&self) -> Option<String> {
        let f = self.api.last_error?;
        // SAFETY: returns a pointer to NCCL's static, NUL-terminated buffer.
        let p = unsafe { f(std::ptr::null_mut()) };
        if p.is_null() {
            return Some(String::new());
        }
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().trim().to_string())
    }

    /// "NCCL 2.28.9 (loaded by libtorch from /path/libnccl.so.2)".
    pub fn describe(&self) -> String {
        format!("NCCL {} ({})", version_string(self.version), self.source.describe())
    }
}

/// The text of an NCCL error: the failed call, NCCL's code and name, and ncclGetLastError's
/// text (None: this NCCL has no ncclGetLastError).
pub fn error_message(what: &str, code: i32, code_text: &str, last: Option<&str>) -> String {
    let last = match last {
        None => "this NCCL has no ncclGetLastError".to_string(),
        Some("") => "ncclGetLastError: (empty)".to_string(),
        Some(t) => format!("ncclGetLastError: {t}"),
    };
    format!("{what} failed: NCCL error {code} ({code_text}); {last}")
}

/// Refuses a communicator that NCCL put on another device than the one gandist chose: its
/// kernels would then run on one GPU against buffers on another.
pub fn check_device(chosen: usize, nccl_device: i32) -> Result<()> {
    if nccl_device == chosen as i32 {
        return Ok(());
    }
    bail!(
        "NCCL's communicator is on CUDA device {nccl_device} (ncclCommCuDevice), but gandist chose cuda:{chosen} for this rank: NCCL takes the device current on the calling thread, and something made another one current; refusing to reduce buffers of cuda:{chosen} on device {nccl_device}"
    )
}

/// Whether the library at `path` exports NCCL (`ncclGetVersion`).
fn exports_nccl(path: &Path) -> bool {
    // SAFETY: `path` is libtorch_cuda, already loaded: this only takes another reference.
    match unsafe { Library::new(path) } {
        Ok(lib) => unsafe { lib.get::<unsafe extern "C" fn(*mut c_int) -> c_int>(b"ncclGetVersion\0") }.is_ok(),
        Err(_) => false,
    }
}

static NCCL: OnceLock<std::result::Result<Arc<NcclLib>, String>> = OnceLock::new();

/// The NCCL libtorch uses in this process (found once), or why there is none to use.
pub fn discover() -> Result<Arc<NcclLib>> {
    let found = NCCL.get_or_init(|| {
        // Make sure libtorch's CUDA part (and so its NCCL) is loaded before looking.
        let _ = tch::Cuda::is_available();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let over = std::env::var_os("GANDIST_NCCL_LIB").map(PathBuf::from);
        plan(&mapped(&maps), over, exports_nccl).and_then(NcclLib::open).map(Arc::new).map_err(|e| format!("{e:#}"))
    });
    match found {
        Ok(l) => Ok(l.clone()),
        Err(e) => bail!("{e}"),
    }
}

/// How a communicator ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Aborted,
    Destroyed,
}

/// A communicator is live until the first of abort and destroy: exactly one of them runs,
/// once, whichever thread asks first (the monitor, an error path, the drop).
#[derive(Default)]
pub struct Ending(AtomicU8);

impl Ending {
    /// True for the single caller that ends the communicator.
    pub fn claim(&self, how: End) -> bool {
        let code = match how {
            End::Aborted => 1,
            End::Destroyed => 2,
        };
        self.0.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst).is_ok()
    }

    pub fn ended(&self) -> Option<End> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(End::Aborted),
            2 => Some(End::Destroyed),
            _ => None,
        }
    }
}

struct CommPtr(Comm);
// SAFETY: an NCCL communicator handle may be used from any thread; this module serialises
// the calls that need it (enqueues against abort) and ends it exactly once.
unsafe impl Send for CommPtr {}
unsafe impl Sync for CommPtr {}
struct EventPtr(CuEvent);
// SAFETY: CUDA events may be queried and recorded from any thread.
unsafe impl Send for EventPtr {}
struct CtxPtr(CuContext);
unsafe impl Send for CtxPtr {}
unsafe impl Sync for CtxPtr {}

/// An enqueued collective whose completion is not yet seen.
struct InFlight {
    event: EventPtr,
    what: &'static str,
    since: Instant,
}

struct Shared {
    lib: Arc<NcclLib>,
    comm: CommPtr,
    ctx: CtxPtr,
    timeout: Duration,
    ending: Ending,
    /// Held while the main thread is inside an NCCL call, so that the monitor does not abort
    /// under it (unless that call is itself stuck: see `fail`).
    gate: Mutex<()>,
    /// Held by the monitor while it looks at the communicator, and by an abort from the main
    /// thread, so that the monitor never touches an aborted communicator.
    watching: Mutex<()>,
    in_flight: Mutex<VecDeque<InFlight>>,
    spare_events: Mutex<Vec<EventPtr>>,
    failure: Mutex<Option<String>>,
    stop_monitor: AtomicBool,
    /// Calls of ncclCommAbort and ncclCommDestroy made (the self-test checks them).
    aborts: AtomicU32,
    destroys: AtomicU32,
    /// Collectives enqueued: (all-reduces, broadcasts), said when the communicator ends.
    enqueued: (AtomicU64, AtomicU64),
}

impl Shared {
    fn driver(&self) -> &'static cuda::Driver {
        cuda::driver().expect("the driver was loaded before any communicator")
    }

    /// Keeps the first failure: it is what every later call reports.
    fn record(&self, msg: String) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(msg);
        }
    }

    /// The monitor's way out (it holds `watching`): record, then abort.
    fn fail(&self, msg: String) {
        self.record(msg);
        // Wait a little for a main-thread call to leave NCCL; if it does not (it is queued
        // behind the hung operation), abort anyway: ncclCommAbort is what releases it.
        let deadline = Instant::now() + Duration::from_secs(2);
        let _gate = loop {
            match self.gate.try_lock() {
                Ok(g) => break Some(g),
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(_) => break None,
            }
        };
        self.abort();
    }

    fn abort(&self) {
        if self.ending.claim(End::Aborted) {
            self.aborts.fetch_add(1, Ordering::SeqCst);
            // SAFETY: the communicator is live (the claim succeeded) and is never used again.
            unsafe { (self.lib.api.comm_abort)(self.comm.0) };
        }
    }

    fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One look at asynchronous errors and the in-flight operations. Returns false once the
    /// communicator has failed.
    fn watch(&self) -> bool {
        let _watching = self.watching.lock().unwrap_or_else(|e| e.into_inner());
        if self.ending.ended().is_some() {
            return false;
        }
        let mut async_err: c_int = NCCL_SUCCESS;
        // SAFETY: the communicator is live (the monitor is stopped before it is destroyed,
        // and only this thread or a failure path aborts it).
        let r = unsafe { (self.lib.api.get_async_error)(self.comm.0, &mut async_err) };
        if r != NCCL_SUCCESS {
            // The call itself failed: the communicator's state is unknown, so treat it as failed.
            self.fail(format!("{}; the communicator was aborted", self.lib.error("ncclCommGetAsyncError", r)));
            return false;
        }
        if async_err != NCCL_SUCCESS && async_err != NCCL_IN_PROGRESS {
            self.fail(format!("{}; the communicator was aborted", self.lib.error("an earlier NCCL operation (ncclCommGetAsyncError)", async_err)));
            return false;
        }
        let d = self.driver();
        let mut q = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(front) = q.front() {
            match d.event_done(front.event.0) {
                Ok(true) => {
                    let done = q.pop_front().expect("front exists");
                    self.spare_events.lock().unwrap_or_else(|e| e.into_inner()).push(done.event);
                }
                Ok(false) if front.since.elapsed() > self.timeout => {
                    let msg = format!(
                        "{} did not complete within {:?} (dist.timeout_seconds): a peer rank died or hangs; the communicator was aborted",
                        front.what, self.timeout
                    );
                    drop(q);
                    self.fail(msg);
                    return false;
                }
                Ok(false) => break,
                Err(e) => {
                    let msg = format!("waiting for {}: {e:#}; the communicator was aborted", front.what);
                    drop(q);
                    self.fail(msg);
                    return false;
                }
            }
        }
        true
    }
}

/// One NCCL communicator over all MPI ranks, on one CUDA device.
pub struct Communicator {
    shared: Arc<Shared>,
    monitor: Option<std::thread::JoinHandle<()>>,
    device: usize,
}

impl Communicator {
    /// Joins the communicator of all MPI ranks on CUDA device `device`. Every rank calls it.
    /// `setup` bounds the wait for the others in ncclCommInitRank (the job ends past it: a
    /// communicator takes half a second or more to set up); `ops` bounds each later
    /// operation, from its enqueue to its completion on the device (the monitor aborts the
    /// communicator past it).
    pub fn init(lib: Arc<NcclLib>, mpi: &Mpi, device: usize, setup: Duration, ops: Duration) -> Result<Communicator> {
        let driver = cuda::driver()?;
        let ctx = driver.make_current(device).with_context(|| format!("CUDA device {device}"))?;
        let mut id = UniqueId { internal: [0; 128] };
        if mpi.rank() == 0 {
            // SAFETY: fills the 128-byte id.
            lib.check("ncclGetUniqueId", unsafe { (lib.api.get_unique_id)(&mut id) })?;
        }
        mpi.broadcast_bytes(&mut id.internal, 0)?;
        let mut comm: Comm = std::ptr::null_mut();
        let (n, rank) = (mpi.world_size() as c_int, mpi.rank() as c_int);
        let r = {
            let _deadline = mpi.deadline(format!("ncclCommInitRank on CUDA device {device} ({}, dist.timeout_seconds)", lib.describe()), setup);
            // SAFETY: blocks until all ranks join; the id came from rank 0.
            unsafe { (lib.api.comm_init_rank)(&mut comm, n, id, rank) }
        };
        lib.check("ncclCommInitRank", r).with_context(|| format!("{} on CUDA device {device}", lib.describe()))?;
        let mut on: c_int = -1;
        // SAFETY: the communicator is live; writes one int.
        let r = unsafe { (lib.api.comm_cu_device)(comm, &mut on) };
        if let Err(e) = lib.check("ncclCommCuDevice", r).and_then(|_| check_device(device, on)) {
            // SAFETY: live, never used again.
            unsafe { (lib.api.comm_abort)(comm) };
            return Err(e);
        }
        let shared = Arc::new(Shared {
            lib,
            comm: CommPtr(comm),
            ctx: CtxPtr(ctx),
            timeout: ops,
            ending: Ending::default(),
            gate: Mutex::new(()),
            watching: Mutex::new(()),
            in_flight: Mutex::new(VecDeque::new()),
            spare_events: Mutex::new(Vec::new()),
            failure: Mutex::new(None),
            stop_monitor: AtomicBool::new(false),
            aborts: AtomicU32::new(0),
            destroys: AtomicU32::new(0),
            enqueued: (AtomicU64::new(0), AtomicU64::new(0)),
        });
        let s = shared.clone();
        let monitor = std::thread::Builder::new()
            .name("gandist-nccl-monitor".into())
            .spawn(move || {
                // Event queries need the device's context on this thread too.
                if let Err(e) = s.driver().set_current(s.ctx.0) {
                    let _watching = s.watching.lock().unwrap_or_else(|e| e.into_inner());
                    s.fail(format!("the NCCL monitor cannot use the CUDA context: {e:#}"));
                    return;
                }
                while !s.stop_monitor.load(Ordering::SeqCst) && s.watch() {
                    std::thread::sleep(MONITOR_POLL);
                }
            })
            .context("cannot start the NCCL monitor thread")?;
        Ok(Communicator { shared, monitor: Some(monitor), device })
    }

    /// The error that ended this communicator, if one did.
    pub fn check(&self) -> Result<()> {
        match self.shared.failure() {
            Some(msg) => bail!("{msg}"),
            None if self.shared.ending.ended().is_some() => bail!("the NCCL communicator was already ended"),
            None => Ok(()),
        }
    }

    /// (ncclCommAbort calls, ncclCommDestroy calls) so far.
    pub fn ends(&self) -> (u32, u32) {
        (self.shared.aborts.load(Ordering::SeqCst), self.shared.destroys.load(Ordering::SeqCst))
    }

    /// Enqueues one collective reading `src` (None: in place) and writing `dst`, and returns
    /// without waiting for it.
    fn enqueue(&self, src: Option<&Tensor>, dst: &Tensor, what: &'static str, f: impl FnOnce(Comm, *const c_void, *mut c_void, usize) -> c_int) -> Result<()> {
        let want = Device::Cuda(self.device);
        for t in std::iter::once(dst).chain(src) {
            if t.device() != want || t.kind() != Kind::Float || !t.is_contiguous() {
                bail!("{what} takes contiguous float32 tensors on cuda:{}, got {:?} on {:?}", self.device, t.kind(), t.device());
            }
        }
        if let Some(s) = src.filter(|s| s.numel() != dst.numel()) {
            bail!("{what}: the source holds {} values and the destination {}", s.numel(), dst.numel());
        }
        self.check()?;
        let s = &self.shared;
        let d = s.driver();
        let event = match s.spare_events.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            Some(e) => e,
            None => EventPtr(d.event_create()?),
        };
        {
            let _gate = s.gate.lock().unwrap_or_else(|e| e.into_inner());
            if s.ending.ended().is_some() {
                drop(_gate);
                return self.check();
            }
            let out = dst.data_ptr();
            let r = f(s.comm.0, src.map_or(out, |t| t.data_ptr()), out, dst.numel());
            if r != NCCL_SUCCESS {
                s.record(format!("{}; the communicator was aborted", s.lib.error(what, r)));
                drop(_gate);
                self.abort();
                return self.check();
            }
            d.event_record(event.0)?;
        }
        let counter = if what == "ncclBroadcast" { &s.enqueued.1 } else { &s.enqueued.0 };
        counter.fetch_add(1, Ordering::Relaxed);
        s.in_flight.lock().unwrap_or_else(|e| e.into_inner()).push_back(InFlight { event, what, since: Instant::now() });
        Ok(())
    }

    fn all_reduce(&self, src: Option<&Tensor>, dst: &Tensor, op: c_int) -> Result<()> {
        let f = self.shared.lib.api.all_reduce;
        // SAFETY: on the tensors' own device memory (checked above), ordered on the default stream.
        self.enqueue(src, dst, "ncclAllReduce", |comm, s, d, n| unsafe { f(s, d, n, NCCL_FLOAT32, op, comm, DEFAULT_STREAM) })
    }

    /// Sums in place (with one rank NCCL does no device work for this).
    pub fn all_reduce_sum(&self, buf: &mut Tensor) -> Result<()> {
        self.all_reduce(None, buf, NCCL_SUM)
    }

    /// Averages in place with ncclAvg: a kernel at every world size, one rank included.
    pub fn all_reduce_mean(&self, buf: &mut Tensor) -> Result<()> {
        self.all_reduce(None, buf, NCCL_AVG)
    }

    pub fn all_reduce_into(&self, src: &Tensor, dst: &mut Tensor, op: super::ReduceOp) -> Result<()> {
        self.all_reduce(Some(src), dst, match op {
            super::ReduceOp::Sum => NCCL_SUM,
            super::ReduceOp::Mean => NCCL_AVG,
        })
    }

    pub fn broadcast(&self, src: Option<&Tensor>, dst: &mut Tensor, root: usize) -> Result<()> {
        let f = self.shared.lib.api.broadcast;
        // SAFETY: as above.
        self.enqueue(src, dst, "ncclBroadcast", |comm, s, d, n| unsafe { f(s, d, n, NCCL_FLOAT32, root as c_int, comm, DEFAULT_STREAM) })
    }

    fn stop_monitor(&mut self) {
        self.shared.stop_monitor.store(true, Ordering::SeqCst);
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
    }

    /// Aborts the communicator (if nothing ended it yet), for an error path. Does not wait
    /// for the monitor thread, which may itself be aborting.
    pub fn abort(&self) {
        let s = &self.shared;
        s.stop_monitor.store(true, Ordering::SeqCst);
        let _watching = s.watching.lock().unwrap_or_else(|e| e.into_inner());
        s.abort();
    }
}

impl Drop for Communicator {
    fn drop(&mut self) {
        self.stop_monitor();
        let s = &self.shared;
        if s.ending.claim(End::Destroyed) {
            s.destroys.fetch_add(1, Ordering::SeqCst);
            // SAFETY: the communicator is live and nothing uses it after this.
            unsafe { (s.lib.api.comm_destroy)(s.comm.0) };
        }
        tracing::info!(
            "NCCL communicator on cuda:{}: {} all-reduces and {} broadcasts enqueued; {}",
            self.device,
            s.enqueued.0.load(Ordering::Relaxed),
            s.enqueued.1.load(Ordering::Relaxed),
            match s.ending.ended() {
                Some(End::Aborted) => "aborted",
                _ => "destroyed",
            }
        );
        let d = s.driver();
        let in_flight: Vec<InFlight> = s.in_flight.lock().unwrap_or_else(|e| e.into_inner()).drain(..).collect();
        for e in in_flight.into_iter().map(|f| f.event).chain(s.spare_events.lock().unwrap_or_else(|e| e.into_inner()).drain(..)) {
            d.event_destroy(e.0);
        }
    }
}

/// The NCCL backend: NCCL for device tensors, MPI for everything on the host.
pub struct Nccl {
    // Declared before `mpi`: the communicator ends before MPI is finalised.
    comm: Communicator,
    mpi: Mpi,
}

impl Nccl {
    /// The backend over a communicator joined with `Communicator::init` on these ranks.
    pub fn from_parts(comm: Communicator, mpi: Mpi) -> Nccl {
        Nccl { comm, mpi }
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
    fn local_size(&self) -> usize {
        self.mpi.local_size()
    }
    fn backend_name(&self) -> &'static str {
        "nccl"
    }
    fn all_reduce_sum(&self, buf: &mut Tensor) -> Result<()> {
        if !buf.device().is_cuda() {
            return self.mpi.all_reduce_sum(buf);
        }
        self.comm.all_reduce_sum(buf)
    }
    fn all_reduce_mean(&self, buf: &mut Tensor) -> Result<()> {
        if !buf.device().is_cuda() {
            return self.mpi.all_reduce_mean(buf);
        }
        self.comm.all_reduce_mean(buf)
    }
    fn all_reduce_into(&self, src: &Tensor, dst: &mut Tensor, op: super::ReduceOp) -> Result<()> {
        if !dst.device().is_cuda() {
            return self.mpi.all_reduce_into(src, dst, op);
        }
        self.comm.all_reduce_into(src, dst, op)
    }
    fn broadcast(&self, buf: &mut Tensor, root: usize) -> Result<()> {
        if !buf.device().is_cuda() {
            return self.mpi.broadcast(buf, root);
        }
        self.comm.broadcast(None, buf, root)
    }
    fn broadcast_into(&self, src: &Tensor, dst: &mut Tensor, root: usize) -> Result<()> {
        if !dst.device().is_cuda() {
            return self.mpi.broadcast_into(src, dst, root);
        }
        self.comm.broadcast(Some(src), dst, root)
    }
    fn all_gather_u64(&self, x: u64) -> Result<Vec<u64>> {
        self.mpi.all_gather_u64(x)
    }
    fn any(&self, flag: bool) -> Result<bool> {
        self.comm.check()?;
        self.mpi.any(flag)
    }
    fn barrier(&self) -> Result<()> {
        self.comm.check()?;
        self.mpi.barrier()
    }
    fn check(&self) -> Result<()> {
        self.comm.check()
    }
    fn exercise_abort(&self) -> Result<Option<String>> {
        self.comm.check()?;
        let (lib, dev) = (self.comm.shared.lib.clone(), self.comm.device);
        // The probe's set-up has the job's own bound (dist.timeout_seconds, like the job's
        // communicator): ncclCommInitRank takes half a second or more, so the short deadline
        // applies to the probe's all-reduce alone.
        let deadline = Duration::from_millis(20);
        let probe = Communicator::init(lib, &self.mpi, dev, self.comm.shared.timeout, deadline)?;
        // Keep the device busy far past the deadline, then queue a reduction behind that work:
        // its event cannot complete in time, so the monitor must abort the probe.
        let a = Tensor::randn([4096, 4096], (Kind::Float, Device::Cuda(dev)));
        let mut x = a.shallow_clone();
        for _ in 0..100 {
            x = x.matmul(&a) / 64.0;
        }
        let mut buf = Tensor::ones([1024], (Kind::Float, Device::Cuda(dev)));
        let queued = Instant::now();
        // The mean: NCCL's kernel even with one rank, queued behind that work.
        probe.all_reduce_mean(&mut buf)?;
        let err = loop {
            if let Err(e) = probe.check() {
                break format!("{e:#}");
            }
            if queued.elapsed() > Duration::from_secs(60) {
                bail!("an all-reduce overdue by a minute was not aborted (deadline {deadline:?})");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let noticed = queued.elapsed();
        if !err.contains("did not complete within") {
            bail!("the probe failed for another reason than its deadline: {err}");
        }
        if probe.all_reduce_sum(&mut buf).is_ok() {
            bail!("a call on the aborted communicator succeeded");
        }
        let shared = probe.shared.clone();
        drop(probe);
        let ends = (shared.aborts.load(Ordering::SeqCst), shared.destroys.load(Ordering::SeqCst));
        if ends != (1, 0) {
            bail!("the aborted communicator saw {} ncclCommAbort and {} ncclCommDestroy calls, expected 1 and 0", ends.0, ends.1);
        }
        // The device work finishes, and the job's own communicator still works.
        let _ = crate::hostread::scalar(&x.sum(Kind::Float));
        // Out of place, so that it does device work with one rank too.
        let ones = Tensor::ones([3], (Kind::Float, Device::Cuda(dev)));
        let mut into = Tensor::full([3], f64::NAN, (Kind::Float, Device::Cuda(dev)));
        self.comm.all_reduce_into(&ones, &mut into, super::ReduceOp::Sum)?;
        let sum = crate::hostread::vec_f32(&into)?;
        if sum != vec![self.world_size() as f32; 3] {
            bail!("the job's communicator gave {sum:?} after the probe's abort");
        }
        self.comm.check()?;
        Ok(Some(format!(
            "an all-reduce (mean) queued behind ~100 ms of work was aborted {:.0} ms after it was queued (deadline {deadline:?}; the probe's set-up within dist.timeout_seconds); ncclCommAbort 1x, ncclCommDestroy 0x; later calls fail; the job's communicator still works; error: {err}",
            noticed.as_secs_f64() * 1e3
        )))
    }
    fn abort(&self, code: i32) -> ! {
        // End the communicator first, so that the MPI abort is not stuck behind NCCL work.
        self.comm.abort();
        self.mpi.abort(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
7f00-7f01 r-xp 00000000 08:01 11 /usr/lib/libc.so.6
7f02-7f03 r-xp 00000000 08:01 12 /venv/torch/lib/libtorch_cuda.so
7f04-7f05 r-xp 00000000 08:01 13 /venv/nvidia/nccl/lib/libnccl.so.2
7f06-7f07 r--p 00010000 08:01 13 /venv/nvidia/nccl/lib/libnccl.so.2
7f08-7f09 r-xp 00000000 08:01 14 /venv/torch/lib/libtorch_cuda_linalg.so
7f0a-7f0b r-xp 00000000 08:01 15 /opt/nccl-net/libnccl-net.so
7f0c-7f0d rw-p 00000000 00:00 0 [heap]
";

    #[test]
    fn maps_name_the_loaded_nccl_and_libtorch_cuda() {
        let m = mapped(MAPS);
        assert_eq!(m.nccl, vec![PathBuf::from("/venv/nvidia/nccl/lib/libnccl.so.2")]);
        assert_eq!(m.torch_cuda, Some(PathBuf::from("/venv/torch/lib/libtorch_cuda.so")));
        let never = |_: &Path| panic!("not asked when a libnccl is mapped");
        assert_eq!(plan(&m, None, never).unwrap(), Source::Loaded("/venv/nvidia/nccl/lib/libnccl.so.2".into()));
    }

    #[test]
    fn two_nccls_are_refused() {
        let maps = format!("{MAPS}7f10-7f11 r-xp 00000000 08:01 16 /usr/lib/x86_64-linux-gnu/libnccl.so.2.28.3\n");
        let e = format!("{:#}", plan(&mapped(&maps), None, |_| false).unwrap_err());
        assert!(e.contains("two different NCCL libraries") && e.contains("/venv/nvidia/nccl/lib/libnccl.so.2") && e.contains("libnccl.so.2.28.3"), "{e}");
        // An override naming another NCCL than the loaded one is refused too.
        let e = format!("{:#}", plan(&mapped(MAPS), Some("/opt/other/libnccl.so.2".into()), |_| false).unwrap_err());
        assert!(e.contains("GANDIST_NCCL_LIB") && e.contains("corrupt"), "{e}");
    }

    #[test]
    fn static_nccl_in_libtorch_cuda_or_none_is_said_exactly() {
        // A standalone libtorch: no libnccl file, NCCL inside libtorch_cuda.
        let maps = "7f02-7f03 r-xp 00000000 08:01 12 /opt/libtorch/lib/libtorch_cuda.so\n";
        let m = mapped(maps);
        assert_eq!(plan(&m, None, |_| true).unwrap(), Source::Static("/opt/libtorch/lib/libtorch_cuda.so".into()));
        let e = format!("{:#}", plan(&m, Some("/x/libnccl.so.2".into()), |_| true).unwrap_err());
        assert!(e.contains("links NCCL statically") && e.contains("second NCCL"), "{e}");
        let e = format!("{:#}", plan(&m, None, |_| false).unwrap_err());
        assert!(e.contains("/opt/libtorch/lib/libtorch_cuda.so loaded no libnccl and exports no NCCL symbols"), "{e}");
        assert_eq!(plan(&m, Some("/x/libnccl.so.2".into()), |_| false).unwrap(), Source::Override("/x/libnccl.so.2".into()));
        // No CUDA part at all.
        let e = format!("{:#}", plan(&mapped("7f00-7f01 r-xp 00000000 08:01 11 /usr/lib/libc.so.6\n"), None, |_| true).unwrap_err());
        assert!(e.contains("libtorch_cuda is not loaded"), "{e}");
    }

    #[test]
    fn error_messages_carry_nccl_last_error() {
        assert_eq!(
            error_message("ncclCommInitRank", 2, "unhandled system error", Some("socket.cc:123 connect to 10.0.0.2<5000> failed")),
            "ncclCommInitRank failed: NCCL error 2 (unhandled system error); ncclGetLastError: socket.cc:123 connect to 10.0.0.2<5000> failed"
        );
        assert!(error_message("ncclAllReduce", 3, "internal error", Some("")).ends_with("; ncclGetLastError: (empty)"));
        assert!(error_message("ncclAllReduce", 3, "internal error", None).ends_with("; this NCCL has no ncclGetLastError"));
    }

    #[test]
    fn check_device_refuses_another_device() {
        assert!(check_device(1, 1).is_ok());
        let e = format!("{:#}", check_device(1, 0).unwrap_err());
        assert!(e.starts_with("NCCL's communicator is on CUDA device 0 (ncclCommCuDevice), but gandist chose cuda:1 for this rank"), "{e}");
    }

    #[test]
    fn a_communicator_ends_exactly_once() {
        let e = Ending::default();
        assert_eq!(e.ended(), None);
        assert!(e.claim(End::Aborted));
        assert!(!e.claim(End::Aborted), "a second abort must not run");
        assert!(!e.claim(End::Destroyed), "an aborted communicator must not be destroyed");
        assert_eq!(e.ended(), Some(End::Aborted));
        // Racing threads: one winner.
        let e = Arc::new(Ending::default());
        let wins: usize = (0..8)
            .map(|i| {
                let e = e.clone();
                std::thread::spawn(move || e.claim(if i % 2 == 0 { End::Aborted } else { End::Destroyed }) as usize)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(wins, 1);
    }

    /// In this process: libtorch from PyPI loads its libnccl even without a GPU; discovery
    /// finds exactly that file and reads its version.
    #[test]
    fn finds_the_nccl_libtorch_loaded() {
        let _ = tch::Cuda::is_available();
        let m = mapped(&std::fs::read_to_string("/proc/self/maps").unwrap());
        match discover() {
            Ok(lib) => {
                assert!(lib.version >= 20000, "{}", lib.describe());
                if let Some(p) = m.nccl.first() {
                    assert_eq!(lib.source, Source::Loaded(p.clone()));
                }
            }
            Err(e) => assert!(m.torch_cuda.is_none() || m.nccl.is_empty(), "{e:#}"),
        }
    }
}
