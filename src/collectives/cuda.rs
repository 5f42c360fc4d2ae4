//! The CUDA driver API (`libcuda.so.1`, loaded at run time): which physical GPU a device
//! index is (PCI bus id, UUID), making a device current before MPI starts, and events that
//! tell when queued work has finished without making the host wait for it.
//!
//! The driver library has a stable soname and exactly one copy per process, unlike the
//! runtime (`libcudart`), which a standalone libtorch renames (`libcudart-<hash>.so.12`).
//! The runtime libtorch uses works on the driver's primary contexts, so a primary context
//! made current here is the one libtorch and NCCL then use.

use anyhow::{bail, Context, Result};
use libloading::Library;
use serde::{Deserialize, Serialize};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::OnceLock;

type CuResult = c_int;
type CuDevice = c_int;
pub type CuContext = *mut c_void;
pub type CuEvent = *mut c_void;
type CuStream = *mut c_void;
const CUDA_SUCCESS: CuResult = 0;
const CUDA_ERROR_NOT_READY: CuResult = 600;
const CU_EVENT_DISABLE_TIMING: c_uint = 0x2;
/// The legacy default stream, on which libtorch (which never switches streams here) and the
/// NCCL calls of `nccl.rs` run.
const LEGACY_STREAM: CuStream = std::ptr::null_mut();

/// A GPU as the hardware knows it: device indices differ between processes (each task may
/// see its GPU as 0), these do not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuIdentity {
    pub name: String,
    /// domain:bus:device.function, unique on its host.
    pub pci_bus_id: String,
    /// Unique across hosts ("GPU-..." as nvidia-smi prints it); empty when the driver lacks it.
    pub uuid: String,
}

struct Api {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult,
    device_get: unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult,
    device_get_name: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    device_get_pci_bus_id: unsafe extern "C" fn(*mut c_char, c_int, CuDevice) -> CuResult,
    device_get_uuid: Option<unsafe extern "C" fn(*mut [u8; 16], CuDevice) -> CuResult>,
    primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, CuDevice) -> CuResult,
    ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult,
    ctx_get_current: unsafe extern "C" fn(*mut CuContext) -> CuResult,
    event_create: unsafe extern "C" fn(*mut CuEvent, c_uint) -> CuResult,
    event_record: unsafe extern "C" fn(CuEvent, CuStream) -> CuResult,
    event_query: unsafe extern "C" fn(CuEvent) -> CuResult,
    event_destroy: unsafe extern "C" fn(CuEvent) -> CuResult,
    get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
    _lib: Library,
}

/// The loaded and initialised driver.
pub struct Driver {
    api: Api,
}

// SAFETY: the driver API is thread-safe; the struct only holds function pointers and the
// library handle.
unsafe impl Sync for Driver {}
unsafe impl Send for Driver {}

static DRIVER: OnceLock<std::result::Result<Driver, String>> = OnceLock::new();

/// The process's CUDA driver, loaded and initialised once.
pub fn driver() -> Result<&'static Driver> {
    match DRIVER.get_or_init(|| Driver::load().map_err(|e| format!("{e:#}"))) {
        Ok(d) => Ok(d),
        Err(e) => bail!("{e}"),
    }
}

impl Driver {
    fn load() -> Result<Driver> {
        // SAFETY: loading the NVIDIA driver library runs its initialisers, as libtorch's own
        // loading of it does.
        let lib = unsafe { Library::new("libcuda.so.1") }.context("cannot load libcuda.so.1 (the NVIDIA driver)")?;
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the signatures follow cuda.h.
                *unsafe { lib.get($name) }.with_context(|| format!("libcuda.so.1 lacks {}", String::from_utf8_lossy($name)))?
            };
        }
        let api = Api {
            init: sym!(b"cuInit\0"),
            device_get_count: sym!(b"cuDeviceGetCount\0"),
            device_get: sym!(b"cuDeviceGet\0"),
            device_get_name: sym!(b"cuDeviceGetName\0"),
            device_get_pci_bus_id: sym!(b"cuDeviceGetPCIBusId\0"),
            // SAFETY: as above; cuDeviceGetUuid_v2 exists from CUDA 11.4, cuDeviceGetUuid before.
            device_get_uuid: unsafe { lib.get(b"cuDeviceGetUuid_v2\0").or_else(|_| lib.get(b"cuDeviceGetUuid\0")) }.ok().map(|s| *s),
            primary_ctx_retain: sym!(b"cuDevicePrimaryCtxRetain\0"),
            ctx_set_current: sym!(b"cuCtxSetCurrent\0"),
            ctx_get_current: sym!(b"cuCtxGetCurrent\0"),
            event_create: sym!(b"cuEventCreate\0"),
            event_record: sym!(b"cuEventRecord\0"),
            event_query: sym!(b"cuEventQuery\0"),
            event_destroy: sym!(b"cuEventDestroy_v2\0"),
            get_error_string: sym!(b"cuGetErrorString\0"),
            _lib: lib,
        };
        let d = Driver { api };
        // SAFETY: cuInit takes flags 0.
        d.check("cuInit", unsafe { (d.api.init)(0) })?;
        Ok(d)
    }

    fn check(&self, what: &str, r: CuResult) -> Result<()> {
        if r == CUDA_SUCCESS {
            return Ok(());
        }
        let mut s: *const c_char = std::ptr::null();
        // SAFETY: writes a pointer to a static string, or leaves it null for unknown codes.
        unsafe { (self.api.get_error_string)(r, &mut s) };
        let msg = if s.is_null() { "unknown error".into() } else { unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned() };
        bail!("{what} failed: CUDA error {r} ({msg})")
    }

    /// GPUs this process may use (after CUDA_VISIBLE_DEVICES and cgroup limits).
    pub fn device_count(&self) -> Result<usize> {
        let mut n: c_int = 0;
        // SAFETY: writes one int.
        self.check("cuDeviceGetCount", unsafe { (self.api.device_get_count)(&mut n) })?;
        Ok(n.max(0) as usize)
    }

    fn device(&self, ordinal: usize) -> Result<CuDevice> {
        let mut d: CuDevice = 0;
        // SAFETY: writes one handle.
        self.check(&format!("cuDeviceGet({ordinal})"), unsafe { (self.api.device_get)(&mut d, ordinal as c_int) })?;
        Ok(d)
    }

    /// Name, PCI bus id and UUID of device index `ordinal` (the index libtorch uses).
    pub fn identity(&self, ordinal: usize) -> Result<GpuIdentity> {
        let d = self.device(ordinal)?;
        let mut name = [0 as c_char; 256];
        // SAFETY: the buffer holds `len` bytes; the driver writes a NUL-terminated string.
        self.check("cuDeviceGetName", unsafe { (self.api.device_get_name)(name.as_mut_ptr(), name.len() as c_int, d) })?;
        let mut bus = [0 as c_char; 64];
        self.check("cuDeviceGetPCIBusId", unsafe { (self.api.device_get_pci_bus_id)(bus.as_mut_ptr(), bus.len() as c_int, d) })?;
        let uuid = match self.api.device_get_uuid {
            Some(f) => {
                let mut u = [0u8; 16];
                // SAFETY: writes 16 bytes.
                self.check("cuDeviceGetUuid", unsafe { f(&mut u, d) })?;
                format_uuid(&u)
            }
            None => String::new(),
        };
        // SAFETY: both buffers are NUL-terminated by the driver (and zero-filled before).
        let text = |b: &[c_char]| unsafe { CStr::from_ptr(b.as_ptr()) }.to_string_lossy().into_owned();
        Ok(GpuIdentity { name: text(&name), pci_bus_id: text(&bus).to_ascii_lowercase(), uuid })
    }

    /// Makes device `ordinal`'s primary context (the one the runtime and libtorch use)
    /// current on this thread, creating it if needed.
    pub fn make_current(&self, ordinal: usize) -> Result<CuContext> {
        let d = self.device(ordinal)?;
        let mut ctx: CuContext = std::ptr::null_mut();
        // SAFETY: retains (and keeps for the process's life) the device's primary context.
        self.check("cuDevicePrimaryCtxRetain", unsafe { (self.api.primary_ctx_retain)(&mut ctx, d) })?;
        self.set_current(ctx)?;
        Ok(ctx)
    }

    pub fn set_current(&self, ctx: CuContext) -> Result<()> {
        // SAFETY: ctx is a retained primary context.
        self.check("cuCtxSetCurrent", unsafe { (self.api.ctx_set_current)(ctx) })
    }

    pub fn current(&self) -> Result<CuContext> {
        let mut ctx: CuContext = std::ptr::null_mut();
        // SAFETY: writes one handle.
        self.check("cuCtxGetCurrent", unsafe { (self.api.ctx_get_current)(&mut ctx) })?;
        Ok(ctx)
    }

    pub fn event_create(&self) -> Result<CuEvent> {
        let mut e: CuEvent = std::ptr::null_mut();
        // SAFETY: creates an event in the current context.
        self.check("cuEventCreate", unsafe { (self.api.event_create)(&mut e, CU_EVENT_DISABLE_TIMING) })?;
        Ok(e)
    }

    /// Marks the point the legacy default stream has reached in the queue.
    pub fn event_record(&self, e: CuEvent) -> Result<()> {
        // SAFETY: e was created by event_create.
        self.check("cuEventRecord", unsafe { (self.api.event_record)(e, LEGACY_STREAM) })
    }

    /// Whether the work before the event's record has finished; never waits.
    pub fn event_done(&self, e: CuEvent) -> Result<bool> {
        // SAFETY: as above.
        match unsafe { (self.api.event_query)(e) } {
            CUDA_ERROR_NOT_READY => Ok(false),
            r => self.check("cuEventQuery", r).map(|_| true),
        }
    }

    pub fn event_destroy(&self, e: CuEvent) {
        // SAFETY: e is not used after this.
        unsafe { (self.api.event_destroy)(e) };
    }
}

/// nvidia-smi's form: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!("GPU-{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The node-local rank the launcher announces in the environment, before MPI starts.
/// SLURM_LOCALID counts only under srun (SLURM_STEP_ID set): inside an allocation, mpirun
/// (MPICH's or Intel's) inherits the batch step's SLURM_LOCALID, 0 for every rank.
pub fn local_rank_hint(env: impl Fn(&str) -> Option<String>) -> Option<(usize, &'static str)> {
    for var in ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PMIX_LOCAL_RANK"] {
        if let Some(v) = env(var).and_then(|v| v.trim().parse().ok()) {
            return Some((v, var));
        }
    }
    if env("SLURM_STEP_ID").is_some() {
        if let Some(v) = env("SLURM_LOCALID").and_then(|v| v.trim().parse().ok()) {
            return Some((v, "SLURM_LOCALID"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_in_nvidia_smi_form() {
        let u: [u8; 16] = [0x5c, 0x3b, 0x1a, 0x2d, 0x01, 0x02, 0x03, 0x04, 0xab, 0xcd, 0, 1, 2, 3, 4, 0xff];
        assert_eq!(format_uuid(&u), "GPU-5c3b1a2d-0102-0304-abcd-0001020304ff");
    }

    #[test]
    fn launcher_hints_for_the_local_rank() {
        let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(local_rank_hint(env(&[("OMPI_COMM_WORLD_LOCAL_RANK", "3"), ("SLURM_LOCALID", "0")])), Some((3, "OMPI_COMM_WORLD_LOCAL_RANK")));
        assert_eq!(local_rank_hint(env(&[("MPI_LOCALRANKID", "2")])), Some((2, "MPI_LOCALRANKID")));
        // Inside an allocation but not under srun: the batch step's SLURM_LOCALID says nothing.
        assert_eq!(local_rank_hint(env(&[("SLURM_LOCALID", "0"), ("SLURM_JOB_ID", "7")])), None);
        assert_eq!(local_rank_hint(env(&[("SLURM_LOCALID", "5"), ("SLURM_STEP_ID", "0")])), Some((5, "SLURM_LOCALID")));
        assert_eq!(local_rank_hint(env(&[])), None);
    }

    /// Without an NVIDIA driver (as on the CI machines) loading says so; with one, the
    /// identity of device 0 has a PCI bus id.
    #[test]
    fn driver_loads_or_says_why() {
        match driver() {
            Ok(d) => {
                if d.device_count().unwrap() > 0 {
                    let id = d.identity(0).unwrap();
                    assert!(id.pci_bus_id.contains(':'), "{id:?}");
                }
            }
            Err(e) => assert!(format!("{e:#}").contains("libcuda.so.1"), "{e:#}"),
        }
    }
}
