//! The TorchScript export: libtorch traces the graph's forward pass (its weights become the
//! module's constants) into a module whose `forward(z)` takes (N, latent) float32 noise for
//! any N, and saves it. The metadata goes into the archive as the extra file `gandist.json`,
//! which PyTorch reads with `torch.jit.load(FILE, _extra_files={"gandist.json": ""})` and
//! libtorch with `torch::jit::load(FILE, device, extra_files)`.
//!
//! tch saves no extra files, so the entry is appended to the archive that libtorch wrote (a
//! zip: the new entry and a new central directory go after the existing entries, which stay
//! byte for byte where libtorch put them, 64-byte alignment included), under the archive's
//! own top-level folder as PyTorch's reader expects.

use super::graph::Graph;
use super::Metadata;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::Path;
use tch::{Kind, Tensor};

/// The extra file's name, as `torch.jit.load`'s `_extra_files` takes it.
pub const EXTRA_FILE: &str = "gandist.json";

pub fn write(graph: &Graph, meta: &Metadata, out: &Path) -> Result<String> {
    // Two samples, so that nothing in the trace can specialise on a batch of one.
    let z = Tensor::zeros([2, graph.latent], (Kind::Float, tch::Device::Cpu));
    let module = tch::no_grad(|| {
        tch::CModule::create_by_tracing("GandistGenerator", "forward", &[z], &mut |inputs| vec![graph.forward(&inputs[0])])
    })
    .context("tracing the generator")?;
    let dir = crate::fsutil::parent_dir(out);
    let name = out.file_name().context("--out names a file")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| -> Result<()> {
        module.save(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        let json = serde_json::to_vec_pretty(meta)?;
        add_extra_file(&tmp, EXTRA_FILE, &json)?;
        crate::fsutil::sync_and_rename(&tmp, out)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    Ok(format!("TorchScript (torch.jit.load; metadata in the extra file {EXTRA_FILE})"))
}

/// Appends `extra/NAME` (stored, 64-byte aligned as PyTorch's writer aligns records) to the
/// TorchScript archive at `path`.
fn add_extra_file(path: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let prefix = {
        let archive = zip::ZipArchive::new(&file).with_context(|| format!("{} is not a zip archive", path.display()))?;
        let first = archive.name_for_index(0).context("an empty TorchScript archive")??.to_string();
        match first.split_once('/') {
            Some((top, _)) if !top.is_empty() => top.to_string(),
            _ => bail!("{}: entry {first:?} is not inside the archive's top-level folder", path.display()),
        }
    };
    let mut writer = zip::ZipWriter::new_append(file).with_context(|| format!("cannot append to {}", path.display()))?;
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).with_alignment(64);
    writer.start_file(format!("{prefix}/extra/{name}"), options)?;
    writer.write_all(bytes)?;
    writer.finish().with_context(|| format!("cannot finish {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libtorch loads the archive back with the extra entry in it, and the loaded module gives
    /// the graph's output for a batch size other than the traced one.
    #[test]
    fn the_saved_module_loads_and_computes_the_graph() {
        tch::manual_seed(1);
        let g = crate::model::Generator::new(crate::config::Arch::Paper, 2, 4, crate::model::ImageShape::MNIST, tch::Device::Cpu).unwrap();
        let graph = crate::export::graph::of(&g);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.pt");
        let meta = Metadata::new(&graph, 0, false, "test".into());
        write(&graph, &meta, &path).unwrap();
        let archive = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
        let names: Vec<String> = archive.file_names().map(|n| n.unwrap().to_string()).collect();
        assert!(names.iter().any(|n| n.ends_with("/extra/gandist.json")), "{names:?}");
        let m = tch::CModule::load(&path).unwrap();
        let z = Tensor::randn([3, 4], (Kind::Float, tch::Device::Cpu));
        let got = m.forward_ts(&[&z]).unwrap();
        let want = tch::no_grad(|| graph.forward(&z));
        assert!(got.allclose(&want, 0.0, 0.0, false), "the loaded module differs from the graph");
        assert!(!dir.path().join(".g.pt.tmp").exists());
    }
}
