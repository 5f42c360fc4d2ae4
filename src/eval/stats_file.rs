//! Feature statistics in pytorch-fid's `.npz` format: arrays `mu` (d,) and `sigma` (d, d),
//! float64, as `python -m pytorch_fid --save-stats` writes them and `np.load` reads them.

use super::frechet::Gaussian;
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Kind, Tensor};

/// Whether a path names a statistics file (pytorch-fid's test: the name ends in `.npz`).
pub fn is_stats(path: &Path) -> bool {
    path.to_string_lossy().ends_with(".npz")
}

/// Reads `mu` and `sigma` (any float type, used as float64); other arrays are ignored, as
/// pytorch-fid ignores them. `n` is unknown (0): the file does not record it.
pub fn read(path: &Path) -> Result<Gaussian> {
    if !path.is_file() {
        bail!("no statistics file at {}", path.display());
    }
    let arrays = Tensor::read_npz(path)
        .with_context(|| format!("{} is not a readable .npz file (expected pytorch-fid's statistics: arrays mu and sigma)", path.display()))?;
    let get = |name: &str| {
        arrays
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.shallow_clone())
            .with_context(|| format!("{} holds no array {name:?} (it has {:?}): expected pytorch-fid's statistics, mu and sigma", path.display(), arrays.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()))
    };
    let (mu, sigma) = (get("mu")?, get("sigma")?);
    for (name, t) in [("mu", &mu), ("sigma", &sigma)] {
        if !t.is_floating_point() {
            bail!("{}: {name} holds {:?} values, expected floats", path.display(), t.kind());
        }
    }
    let d = mu.size();
    if d.len() != 1 || sigma.size() != [d[0], d[0]] {
        bail!("{}: mu has shape {:?} and sigma {:?}: expected (d,) and (d, d)", path.display(), mu.size(), sigma.size());
    }
    Ok(Gaussian { mean: mu.to_kind(Kind::Double), cov: sigma.to_kind(Kind::Double), n: 0 })
}

/// Writes `mu` and `sigma` as float64 to a temporary name beside `path`, then renames it.
pub fn write(path: &Path, g: &Gaussian) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().context("a statistics file path has a file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let (mu, sigma) = (g.mean.to_kind(Kind::Double), g.cov.to_kind(Kind::Double));
        Tensor::write_npz(&[("mu", &mu), ("sigma", &sigma)], &tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        crate::fsutil::sync_and_rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        let g = Gaussian::of_features(&Tensor::randn([5, 3], (Kind::Float, tch::Device::Cpu))).unwrap();
        write(&p, &g).unwrap();
        assert!(is_stats(&p) && !is_stats(dir.path()));
        let back = read(&p).unwrap();
        assert!(back.mean.equal(&g.mean) && back.cov.equal(&g.cov));
        assert!(!dir.path().join(".s.npz.tmp").exists());
        let other = dir.path().join("o.npz");
        Tensor::write_npz(&[("mean", &g.mean)], &other).unwrap();
        let e = format!("{:#}", read(&other).unwrap_err());
        assert!(e.contains("no array \"mu\""), "{e}");
        Tensor::write_npz(&[("mu", &g.mean), ("sigma", &g.mean)], &other).unwrap();
        let e = format!("{:#}", read(&other).unwrap_err());
        assert!(e.contains("expected (d,) and (d, d)"), "{e}");
        std::fs::write(&other, b"not a zip").unwrap();
        let e = format!("{:#}", read(&other).unwrap_err());
        assert!(e.contains("not a readable .npz"), "{e}");
    }
}
