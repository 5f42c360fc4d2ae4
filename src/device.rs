//! Which device a rank computes on (the configuration's `DeviceChoice`, resolved where CUDA's
//! presence is known), and copies to it that do not make the host wait.

use crate::config::DeviceChoice;
use anyhow::{bail, Result};
use tch::{Device, Tensor};

/// The device `choice` names for the rank of node-local index `local_rank`.
pub fn select(choice: DeviceChoice, local_rank: usize) -> Result<Device> {
    let cuda = tch::Cuda::is_available();
    let count = tch::Cuda::device_count().max(1) as usize;
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto if !cuda => Ok(Device::Cpu),
        DeviceChoice::Auto | DeviceChoice::Cuda if cuda => Ok(Device::Cuda(local_rank % count)),
        DeviceChoice::Cuda => bail!("train.device = \"cuda\" but libtorch sees no CUDA device (use \"cpu\" or \"auto\")"),
        DeviceChoice::CudaIndex(i) => {
            if !cuda || i >= count {
                bail!("train.device = \"{choice}\" but libtorch sees {} CUDA device(s)", if cuda { count } else { 0 });
            }
            Ok(Device::Cuda(i))
        }
        DeviceChoice::Auto => unreachable!("auto without CUDA is the CPU"),
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

/// Why `train.device = "auto"` ended on the CPU although the CUDA driver sees `driver_gpus`
/// GPUs, if it did (libtorch without CUDA, or a binary that lost libtorch_cuda at link time).
pub fn auto_cpu_reason(choice: DeviceChoice, chosen: Device, driver_gpus: impl FnOnce() -> Option<usize>) -> Option<String> {
    if choice != DeviceChoice::Auto || chosen != Device::Cpu {
        return None;
    }
    let gpus = driver_gpus().filter(|&n| n > 0)?;
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
        assert_eq!(auto_cpu_reason(DeviceChoice::Cpu, Device::Cpu, || Some(2)), None);
        assert_eq!(auto_cpu_reason(DeviceChoice::Auto, Device::Cpu, || Some(0)), None);
        assert!(auto_cpu_reason(DeviceChoice::Auto, Device::Cpu, || Some(2)).unwrap().contains("sees 2 GPU(s)"));
        assert_eq!(select(DeviceChoice::Cpu, 3).unwrap(), Device::Cpu);
    }
}
