//! Which device a rank computes on.

use anyhow::{bail, Context, Result};
use tch::Device;

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

