//! Which device a rank computes on, and copies to it that do not make the host wait.

use anyhow::{bail, Context, Result};
use tch::{Device, Tensor};

/// Picks the device from the config and the rank's node-local index.
pub fn select(name: &str, local_rank: usize) -> Result<Device> {
    let cuda = tch::Cuda::is_available();
    let count = tch::Cuda::device_count().max(1) as usize;
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" if !cuda => Ok(Device::Cpu),
        "auto" | "cuda" if cuda => Ok(Device::Cuda(local_rank % count)),
        "cuda" => bail!("train.device = \"cuda\" but libtorch sees no CUDA device (use \"cpu\" or \"auto\")"),
        s => {
            let i: usize = s.strip_prefix("cuda:").and_then(|i| i.parse().ok()).context("train.device")?;
            if !cuda || i >= count {
                bail!("train.device = {s:?} but libtorch sees {} CUDA device(s)", if cuda { count } else { 0 });
            }
            Ok(Device::Cuda(i))
        }
    }
}

/// `cpu` or `cuda:N`.
pub fn label(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Why `train.device = "auto"` ended on the CPU although the CUDA driver sees GPUs, if it
/// did (libtorch without CUDA, or a binary that lost libtorch_cuda at link time).
pub fn auto_cpu_reason(name: &str, chosen: Device) -> Option<String> {
    if name != "auto" || chosen != Device::Cpu {
        return None;
    }
    let gpus = crate::collectives::cuda::driver().and_then(|d| d.device_count()).ok().filter(|&n| n > 0)?;
    Some(format!(
        "train.device = \"auto\" chose the CPU although the CUDA driver sees {gpus} GPU(s): libtorch reports no CUDA (a CPU-only libtorch, a binary linked without libtorch_cuda, or a driver too old for libtorch's CUDA)"
    ))
}

/// `t` (a host tensor) on `device`, without making the host wait for the device: on CUDA the
/// copy goes through pinned memory and is queued (libtorch's pinned-memory allocator keeps
/// the block until the copy has run); on the CPU it is `t` itself. `_pin_memory` is called
/// directly: `pin_memory` with a device argument warns on every call that the argument is
/// deprecated, and tch offers no form without it.
pub fn upload(t: &Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(_) => t.internal_pin_memory(device).to_device_(device, t.kind(), true, false),
        _ => t.to_device(device),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_to_the_cpu_is_the_tensor_itself() {
        let t = Tensor::from_slice(&[1.0f32, 2.0]);
        let u = upload(&t, Device::Cpu);
        assert_eq!(u.data_ptr(), t.data_ptr());
        assert_eq!(label(Device::Cuda(3)), "cuda:3");
        assert_eq!(auto_cpu_reason("cpu", Device::Cpu), None);
    }
}
