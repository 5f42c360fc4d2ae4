//! The paper metrics of generated images against a data set, for `gandist eval --metric` and
//! for evaluation during training: Inception FID, KID and precision/recall on pool3 features,
//! against reference features of real images that are computed once and cached.
//!
//! The cache: `$GANDIST_CACHE/inception-reference/<key>.npz` (GANDIST_CACHE defaults to
//! `~/.cache/gandist`, as in launch/env.sh), holding `mu`, `sigma` (pytorch-fid's statistics:
//! the file also works as `gandist fid`'s or pytorch-fid's .npz) and `features`. The key is a
//! SHA-256 over the exact bytes of the reference images (count, shape and pixels, so any
//! change to the data or to how many images are taken gives a new key), the SHA-256 of the
//! weight file, and a format tag. It lives in the user's cache rather than in the data folder
//! because data folders may be read-only or shared between users, and because one data set
//! read by several runs should be featurised once.

use super::features;
use super::frechet::{pytorch_fid_distance, Gaussian};
use super::inception::FidInception;
use super::{kid, precision_recall};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// Changes when the cached contents or their computation change.
const CACHE_FORMAT: &str = "gandist-inception-reference-v1";

/// A metric on Inception features, by the name a user types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    InceptionFid,
    Kid,
    PrecisionRecall,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::InceptionFid => "inception-fid",
            Metric::Kid => "kid",
            Metric::PrecisionRecall => "precision-recall",
        }
    }
}

/// Features and statistics of the real images.
pub struct Reference {
    pub gaussian: Gaussian,
    /// (n, 2048) float32 on the CPU; None when the reference is a statistics file (FID only).
    pub features: Option<Tensor>,
    pub label: String,
}

impl Reference {
    /// A pytorch-fid statistics file.
    pub fn from_stats(path: &Path) -> Result<Reference> {
        Ok(Reference { gaussian: super::stats_file::read(path)?, features: None, label: format!("{} (statistics)", path.display()) })
    }

    /// A folder of images, read as pytorch-fid reads it (not cached: pytorch-fid does not
    /// cache either, and `gandist fid --save-stats` writes a folder's statistics once).
    pub fn from_folder(net: &FidInception, dir: &Path, batch: usize) -> Result<Reference> {
        let f = features::of_folder(net, dir, batch)?;
        let n = f.size()[0];
        Ok(Reference { gaussian: Gaussian::of_features(&f)?, features: Some(f), label: format!("{} ({n} images)", dir.display()) })
    }

    /// Real images as bytes (n, c, h, w), c = 1 or 3, featurised once per data set and
    /// weight file (see the module's note on the cache).
    pub fn cached(net: &FidInception, images: &Tensor, what: &str, batch: usize) -> Result<Reference> {
        let key = cache_key(net, images)?;
        let dir = cache_dir();
        let path = dir.join(format!("{key}.npz"));
        let n = images.size()[0];
        let label = format!("{what} ({n} images, cached as {})", path.display());
        if let Ok(arrays) = Tensor::read_npz(&path) {
            let get = |k: &str| arrays.iter().find(|(name, _)| name == k).map(|(_, t)| t.shallow_clone());
            if let (Some(mu), Some(sigma), Some(f)) = (get("mu"), get("sigma"), get("features")) {
                if f.size() == [n, super::inception::FEATURES] {
                    tracing::info!("reference features of {what}: {}", path.display());
                    return Ok(Reference { gaussian: Gaussian { mean: mu, cov: sigma, n: n as usize }, features: Some(f), label });
                }
            }
            tracing::warn!("{} is not a complete reference cache entry: computing it again", path.display());
        }
        tracing::info!("reference features of {what}: {n} images through Inception (once; cached in {})", dir.display());
        let f = features::of_generated(net, &(images.to_kind(Kind::Float) / 127.5 - 1.0), batch);
        let gaussian = Gaussian::of_features(&f)?;
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create the cache folder {}", dir.display()))?;
        let tmp = dir.join(format!(".{key}.npz.tmp"));
        let written = Tensor::write_npz(&[("mu", &gaussian.mean), ("sigma", &gaussian.cov), ("features", &f)], &tmp)
            .map_err(anyhow::Error::from)
            .and_then(|_| crate::fsutil::sync_and_rename(&tmp, &path));
        if let Err(e) = written {
            // A cache that cannot be written costs time, not correctness.
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!("cannot cache the reference features in {}: {e:#}", path.display());
        }
        Ok(Reference { gaussian, features: Some(f), label })
    }
}

/// The MNIST training images the reference is taken from: the first `n` (0 = all 60,000),
/// through the cache.
pub fn mnist_reference(net: &FidInception, data_dir: &Path, n: usize, batch: usize) -> Result<Reference> {
    let mut m = crate::data::mnist::Mnist::load(data_dir, crate::data::mnist::Split::Train)?;
    m.truncate(n);
    let side = crate::data::mnist::SIDE as i64;
    let images = Tensor::from_slice(&m.images).view([m.n as i64, 1, side, side]);
    Reference::cached(net, &images, &format!("the MNIST training set in {}", data_dir.display()), batch)
}

/// `$GANDIST_CACHE/inception-reference`, GANDIST_CACHE defaulting to $XDG_CACHE_HOME/gandist,
/// then ~/.cache/gandist.
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let root = var("GANDIST_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|c| c.join("gandist")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/gandist")))
        .unwrap_or_else(|| PathBuf::from(".gandist-cache"));
    root.join("inception-reference")
}

fn cache_key(net: &FidInception, images: &Tensor) -> Result<String> {
    if net.sha256.is_empty() {
        bail!("reference features are cached by the weight file's checksum: random weights have none");
    }
    let mut h = Sha256::new();
    h.update(CACHE_FORMAT.as_bytes());
    h.update(net.sha256.as_bytes());
    for d in images.size() {
        h.update((d as u64).to_le_bytes());
    }
    h.update(crate::hostread::bytes(&images.to_kind(Kind::Uint8).contiguous()));
    Ok(hex::encode(h.finalize()))
}

/// Scores generated images against a reference.
pub struct InceptionEvaluator {
    pub net: FidInception,
    pub reference: Reference,
    pub metrics: Vec<Metric>,
    pub batch: usize,
}

impl InceptionEvaluator {
    pub fn new(net: FidInception, reference: Reference, metrics: Vec<Metric>, batch: usize) -> Result<InceptionEvaluator> {
        if reference.features.is_none() {
            if let Some(m) = metrics.iter().find(|m| **m != Metric::InceptionFid) {
                bail!("{} needs the reference images' features: give a folder of images or the data set, not a statistics file ({})", m.name(), reference.label);
            }
        }
        Ok(InceptionEvaluator { net, reference, metrics, batch })
    }

    /// The scores of generated images (n, c, h, w) in [-1, 1], as flat key/value pairs for
    /// the scalar log and the JSON line: `inception_fid`, `kid` and `kid_std`, `precision`
    /// and `recall`, and `eval_n`.
    pub fn evaluate(&self, images: &Tensor) -> Result<Map<String, Value>> {
        let size = images.size();
        if size.len() != 4 || (size[1] != 1 && size[1] != 3) {
            bail!("generated images have shape {size:?}: expected (n, 1 or 3, h, w)");
        }
        let n = size[0];
        if n < 2 {
            bail!("{n} sample(s): the Frechet distance needs at least 2");
        }
        let f = features::of_generated(&self.net, images, self.batch);
        let mut m = Map::new();
        m.insert("eval_n".into(), json!(n));
        for metric in &self.metrics {
            match metric {
                Metric::InceptionFid => {
                    m.insert("inception_fid".into(), json!(pytorch_fid_distance(&Gaussian::of_features(&f)?, &self.reference.gaussian)?));
                }
                Metric::Kid => {
                    let r = self.reference.features.as_ref().expect("checked in new");
                    // torch-fidelity's subset size, or all samples when there are fewer.
                    let size = kid::SUBSET_SIZE.min(n as usize).min(r.size()[0] as usize);
                    let k = kid::kid(&f, r, kid::SUBSETS, size, kid::SEED)?;
                    m.insert("kid".into(), json!(k.mean));
                    m.insert("kid_std".into(), json!(k.std));
                    m.insert("kid_subset_size".into(), json!(size));
                }
                Metric::PrecisionRecall => {
                    let r = self.reference.features.as_ref().expect("checked in new");
                    let pr = precision_recall::precision_recall(&f, r, precision_recall::K)?;
                    m.insert("precision".into(), json!(pr.precision));
                    m.insert("recall".into(), json!(pr.recall));
                }
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn cache_key_follows_the_images_and_the_weights() {
        tch::manual_seed(0);
        let mut net = FidInception::random(Device::Cpu);
        let images = Tensor::randint(256, [3, 1, 8, 8], (Kind::Uint8, Device::Cpu));
        assert!(cache_key(&net, &images).is_err(), "random weights have no checksum to key by");
        net.sha256 = "a".into();
        let k = cache_key(&net, &images).unwrap();
        assert_eq!(k, cache_key(&net, &images.copy()).unwrap());
        let other = images.copy();
        let _ = other.get(2).get(0).get(7).get(7).fill_(7 + images.int64_value(&[2, 0, 7, 7]) % 200);
        assert_ne!(k, cache_key(&net, &other).unwrap(), "one pixel changes the key");
        assert_ne!(k, cache_key(&net, &images.narrow(0, 0, 2)).unwrap());
        net.sha256 = "b".into();
        assert_ne!(k, cache_key(&net, &images).unwrap());
    }
}
