//! The one place where tensor data is read into host memory, and the count of those reads.
//!
//! On a GPU every such read waits until the device has run all the work queued before it,
//! so the training step keeps flags, norms and losses on the device and reads them only at
//! sync steps (see `train::trainer`). Every read counts, whatever the tensor's device: a read
//! of a CPU tensor costs nothing, but the same line on CUDA would stall the queue, so a test
//! on the CPU can check that an update between sync steps makes none. The count is per
//! thread (the training loop runs on one), so that tests running side by side and helper
//! threads do not disturb it. A unit test below checks that no other module reads directly.
//!
//! The MPI backend stages every reduction through host memory by design (NCCL does not):
//! those reads go through `stage_f32` and are counted apart (`staged`), so that the rule "no
//! reads between sync steps" speaks of the trainer, and the staging cost is still reported.

use std::cell::Cell;
use tch::{Device, Kind, TchError, Tensor};

thread_local! {
    static READS: Cell<u64> = const { Cell::new(0) };
    static STAGED: Cell<u64> = const { Cell::new(0) };
}

/// Host reads made by this thread so far (staging by a backend apart).
pub fn count() -> u64 {
    READS.with(Cell::get)
}

/// Reads made by a backend's host staging (MPI's reductions) on this thread so far.
pub fn staged() -> u64 {
    STAGED.with(Cell::get)
}

fn note() {
    READS.with(|r| r.set(r.get() + 1));
}

/// A buffer's values for a backend that reduces on the host (`vec_f32`, counted as staging).
pub fn stage_f32(t: &Tensor) -> Result<Vec<f32>, TchError> {
    STAGED.with(|r| r.set(r.get() + 1));
    Vec::<f32>::try_from(&t.to_device(Device::Cpu).contiguous().flatten(0, -1))
}

/// The value of a one-element tensor, as f64.
pub fn scalar(t: &Tensor) -> f64 {
    note();
    t.double_value(&[])
}

/// A tensor (any shape) as host values in row-major order.
pub fn vec_f32(t: &Tensor) -> Result<Vec<f32>, TchError> {
    note();
    Vec::<f32>::try_from(&t.to_device(Device::Cpu).contiguous().flatten(0, -1))
}

pub fn vec_f64(t: &Tensor) -> Result<Vec<f64>, TchError> {
    note();
    Vec::<f64>::try_from(&t.to_device(Device::Cpu).contiguous().flatten(0, -1))
}

pub fn vec_i64(t: &Tensor) -> Result<Vec<i64>, TchError> {
    note();
    Vec::<i64>::try_from(&t.to_device(Device::Cpu).contiguous().flatten(0, -1))
}

/// A uint8 tensor's bytes in row-major order.
pub fn bytes(t: &Tensor) -> Vec<u8> {
    note();
    let host = t.to_device(Device::Cpu).to_kind(Kind::Uint8).contiguous();
    let n = host.numel();
    let mut out = vec![0u8; n];
    host.copy_data(&mut out, n);
    out
}

/// A copy in host memory, for host-side computation (evaluation statistics).
pub fn to_cpu(t: &Tensor) -> Tensor {
    note();
    t.to_device(Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_read_counts_once() {
        let t = Tensor::from_slice(&[1.5f32, 2.0]);
        let before = count();
        assert_eq!(scalar(&t.sum(Kind::Float)), 3.5);
        assert_eq!(vec_f32(&t).unwrap(), vec![1.5, 2.0]);
        assert_eq!(vec_i64(&Tensor::from_slice(&[3i64])).unwrap(), vec![3]);
        assert_eq!(bytes(&Tensor::from_slice(&[7u8, 9])), vec![7, 9]);
        assert_eq!(count() - before, 4);
        let staged_before = staged();
        assert_eq!(stage_f32(&t).unwrap(), vec![1.5, 2.0]);
        assert_eq!((count() - before, staged() - staged_before), (4, 1));
    }

    /// Calls that copy tensor data to the host, anywhere in the crate's non-test code outside
    /// this module, would escape the count: none may exist.
    #[test]
    fn no_module_reads_tensors_directly() {
        let forbidden = [".double_value(", ".int64_value(", "Vec::try_from(", "::try_from(&", ".copy_data(", "to_device(Device::Cpu)", "to_device(tch::Device::Cpu)"];
        let mut offenders = Vec::new();
        let mut files = Vec::new();
        collect_rs(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        assert!(files.len() > 20, "found only {} source files", files.len());
        for f in files {
            if f.ends_with("hostread.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).unwrap();
            // Test modules sit at the end of each file.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (i, line) in code.lines().enumerate() {
                if !line.trim_start().starts_with("//") && forbidden.iter().any(|p| line.contains(p)) {
                    offenders.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
                }
            }
        }
        assert!(offenders.is_empty(), "host reads outside hostread (route them through it):\n{}", offenders.join("\n"));
    }

    fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                collect_rs(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
}
