//! The checkpoint format, and nothing of what it holds: a directory per step with
//! `state.safetensors` (float32 tensors by name) and `meta.json` (a header: format version,
//! step, configuration and its hash, world size, versions, the state's checksum; and the
//! trainer's own record, which this layer stores without reading: `train::snapshot` gives it
//! its meaning). Written into a temp directory, synced and renamed, so a checkpoint is either
//! whole or absent. Loading checks sizes, version, names, shapes, checksum and finiteness
//! before anything is used.

use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The version this build writes. 2: the trainer's record in its own field, `trainer`.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest version this build reads. 1: the trainer's fields (`critic_step`, `seed`,
/// `extra`, `health`) beside the header; they are read into `trainer` as they are.
pub const OLDEST_READABLE: u32 = 1;
const STATE_FILE: &str = "state.safetensors";
const META_FILE: &str = "meta.json";
/// A meta.json larger than this is not ours.
const MAX_META_BYTES: u64 = 1 << 20;
/// A state file larger than this is refused before it is read (models here are far smaller).
pub const MAX_STATE_BYTES: u64 = 16 << 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub format_version: u32,
    /// The step the checkpoint was taken at (its directory's name).
    pub step: u64,
    /// Hash of the trajectory-defining configuration (`Config::trajectory_hash`).
    pub config_hash: String,
    /// The resolved TOML configuration of the run that wrote it.
    pub config: String,
    pub world_size: usize,
    pub gandist_version: String,
    pub libtorch_version: String,
    /// SHA-256 of state.safetensors.
    pub state_sha256: String,
    /// The trainer's record (its counters and detectors), as the trainer wrote it.
    pub trainer: serde_json::Value,
}

/// Format version 1's meta.json: the same header, the trainer's fields beside it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaV1 {
    format_version: u32,
    step: u64,
    critic_step: u64,
    seed: u64,
    config_hash: String,
    config: String,
    world_size: usize,
    gandist_version: String,
    libtorch_version: String,
    state_sha256: String,
    #[serde(default)]
    extra: Option<serde_json::Value>,
    /// Absent in checkpoints older than the gradient-health detectors.
    #[serde(default)]
    health: Option<serde_json::Value>,
}

impl From<MetaV1> for Meta {
    fn from(m: MetaV1) -> Meta {
        let mut trainer = serde_json::json!({ "critic_step": m.critic_step, "seed": m.seed });
        for (k, v) in [("extra", m.extra), ("health", m.health)] {
            if let Some(v) = v {
                trainer[k] = v;
            }
        }
        Meta {
            format_version: m.format_version,
            step: m.step,
            config_hash: m.config_hash,
            config: m.config,
            world_size: m.world_size,
            gandist_version: m.gandist_version,
            libtorch_version: m.libtorch_version,
            state_sha256: m.state_sha256,
            trainer,
        }
    }
}

/// Reads and checks the meta.json of the checkpoint in `dir`: its size, then its format
/// version (named in the error when this build cannot read it), then its fields.
pub fn read_meta(dir: &Path) -> Result<Meta> {
    let path = dir.join(META_FILE);
    let len = std::fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > MAX_META_BYTES {
        bail!("{} is {len} bytes: expected at most {MAX_META_BYTES}", path.display());
    }
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let invalid = || format!("{} is not a valid checkpoint meta.json", path.display());
    #[derive(Deserialize)]
    struct Version {
        format_version: Option<u32>,
    }
    let version: Version = serde_json::from_slice(&bytes).with_context(invalid)?;
    match version.format_version {
        Some(FORMAT_VERSION) => serde_json::from_slice::<Meta>(&bytes).with_context(invalid),
        Some(1) => serde_json::from_slice::<MetaV1>(&bytes).map(Meta::from).with_context(invalid),
        Some(v) => bail!(
            "{}: checkpoint format version {v}, which gandist {} cannot read: it reads format versions {OLDEST_READABLE} to {FORMAT_VERSION} (a checkpoint of a newer gandist?)",
            path.display(),
            env!("CARGO_PKG_VERSION")
        ),
        None => bail!("{}: no format_version: not a gandist checkpoint meta.json", path.display()),
    }
}

/// Float32 tensors by name, as host vectors with shapes.
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Where a run directory keeps its checkpoints.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

pub fn dir_name(step: u64) -> String {
    format!("step-{step:09}")
}

fn parse_dir_name(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

/// Writes a checkpoint for `meta.step` under `root`; returns its directory.
pub fn save(root: &Path, mut meta: Meta, tensors: &TensorMap) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("cannot create checkpoint directory {}", root.display()))?;
    let bytes = serialize(tensors)?;
    meta.state_sha256 = hex::encode(Sha256::digest(&bytes));
    let name = dir_name(meta.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let dst = root.join(&name);
    let result = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove stale {}", tmp.display()))?;
        }
        std::fs::create_dir(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        write_synced(&tmp.join(STATE_FILE), &bytes)?;
        write_synced(&tmp.join(META_FILE), serde_json::to_string_pretty(&meta)?.as_bytes())?;
        crate::fsutil::sync_dir(&tmp)?;
        if dst.exists() {
            std::fs::remove_dir_all(&dst).with_context(|| format!("cannot replace {}", dst.display()))?;
        }
        std::fs::rename(&tmp, &dst).with_context(|| format!("cannot rename {} to {}", tmp.display(), dst.display()))?;
        crate::fsutil::sync_dir(root)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "checkpoint at step {} was not written; earlier checkpoints in {} are untouched",
            meta.step,
            root.display()
        )));
    }
    Ok(dst)
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))
}

fn serialize(tensors: &TensorMap) -> Result<Vec<u8>> {
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, (shape, data))| {
            let bytes: &[u8] = f32_bytes(data);
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<_, _>>()?;
    Ok(safetensors::serialize(views, &None)?)
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // f32 has no padding and any bit pattern is a valid u8; the host is little-endian
    // (checked at load), as safetensors requires.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// A loaded, checked checkpoint.
pub struct Loaded {
    pub dir: PathBuf,
    pub meta: Meta,
    pub tensors: TensorMap,
}

/// Reads and checks the checkpoint in `dir`. `expected` gives each required tensor's shape.
pub fn load(dir: &Path, expected: &BTreeMap<String, Vec<usize>>) -> Result<Loaded> {
    load_inner(dir, expected).with_context(|| format!("checkpoint {} is unusable", dir.display()))
}

fn load_inner(dir: &Path, expected: &BTreeMap<String, Vec<usize>>) -> Result<Loaded> {
    if !cfg!(target_endian = "little") {
        bail!("safetensors checkpoints need a little-endian host");
    }
    let meta = read_meta(dir)?;
    let state_path = dir.join(STATE_FILE);
    let state_len = std::fs::metadata(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?.len();
    if state_len > MAX_STATE_BYTES {
        bail!("{} is {state_len} bytes: expected at most {MAX_STATE_BYTES}", state_path.display());
    }
    let bytes = std::fs::read(&state_path).with_context(|| format!("cannot read {}", state_path.display()))?;
    let sha = hex::encode(Sha256::digest(&bytes));
    if sha != meta.state_sha256 {
        bail!("{}: SHA-256 {sha} does not match {} recorded in meta.json (truncated or corrupted)", state_path.display(), meta.state_sha256);
    }
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not a valid safetensors file", state_path.display()))?;
    let mut tensors = TensorMap::new();
    for (name, shape) in expected {
        let view = st.tensor(name).map_err(|_| anyhow::anyhow!("{}: tensor {name} is missing", state_path.display()))?;
        if view.dtype() != Dtype::F32 {
            bail!("{}: tensor {name} has dtype {:?}, expected F32", state_path.display(), view.dtype());
        }
        if view.shape() != shape.as_slice() {
            bail!("{}: tensor {name} has shape {:?}, expected {:?} (a different model configuration?)", state_path.display(), view.shape(), shape);
        }
        let data: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            bail!("{}: tensor {name} holds a non-finite value at element {i}", state_path.display());
        }
        tensors.insert(name.clone(), (shape.clone(), data));
    }
    Ok(Loaded { dir: dir.to_path_buf(), meta, tensors })
}

/// Checkpoint directories under `root`, newest (highest step) first.
pub fn list(root: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((parse_dir_name(e.file_name().to_str()?)?, e.path())))
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.0));
    out
}

/// The newest checkpoint under `root` that loads; earlier ones are tried when it does not.
/// Ok(None) when there is none at all; an error when some exist but none loads.
pub fn load_latest(root: &Path, expected: &BTreeMap<String, Vec<usize>>) -> Result<Option<Loaded>> {
    let all = list(root);
    if all.is_empty() {
        return Ok(None);
    }
    let mut errors = Vec::new();
    for (_, dir) in &all {
        match load(dir, expected) {
            Ok(l) => {
                for e in &errors {
                    tracing::warn!("skipped {e}");
                }
                return Ok(Some(l));
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("no usable checkpoint in {}:\n  {}", root.display(), errors.join("\n  "))
}

/// Steps to delete so that only the newest `keep` remain (a policy, apart from I/O).
pub fn steps_to_prune(steps: &[u64], keep: usize) -> Vec<u64> {
    let mut s = steps.to_vec();
    s.sort_unstable_by(|a, b| b.cmp(a));
    s.into_iter().skip(keep).collect()
}

pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let all = list(root);
    let steps: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
    for s in steps_to_prune(&steps, keep) {
        let dir = root.join(dir_name(s));
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove old checkpoint {}", dir.display()))?;
    }
    Ok(())
}

/// A checkpoint directory as given, or a run directory's newest checkpoint.
pub fn resolve(path: &Path) -> Result<PathBuf> {
    if path.join(META_FILE).exists() {
        return Ok(path.to_path_buf());
    }
    list(&path.join("checkpoints")).first().map(|(_, p)| p.clone()).with_context(|| {
        format!("{} is neither a checkpoint directory (no meta.json) nor a run directory with checkpoints", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(step: u64) -> Meta {
        Meta {
            format_version: FORMAT_VERSION,
            step,
            config_hash: "h".into(),
            config: String::new(),
            world_size: 1,
            gandist_version: "t".into(),
            libtorch_version: "t".into(),
            state_sha256: String::new(),
            trainer: serde_json::json!({ "critic_step": step * 5 }),
        }
    }

    fn sample() -> (TensorMap, BTreeMap<String, Vec<usize>>) {
        let mut t = TensorMap::new();
        t.insert("a".into(), (vec![2, 2], vec![1.0, 2.0, 3.0, 4.5]));
        t.insert("b".into(), (vec![1], vec![-7.0]));
        let shapes = t.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        (t, shapes)
    }

    #[test]
    fn round_trip_and_keep_last() {
        let root = tempfile::tempdir().unwrap();
        let (t, shapes) = sample();
        for s in [10, 20, 30] {
            save(root.path(), meta(s), &t).unwrap();
        }
        prune(root.path(), 2).unwrap();
        let steps: Vec<u64> = list(root.path()).iter().map(|x| x.0).collect();
        assert_eq!(steps, vec![30, 20]);
        let l = load_latest(root.path(), &shapes).unwrap().unwrap();
        assert_eq!(l.meta.step, 30);
        assert_eq!(l.tensors, t);
    }

    #[test]
    fn prune_policy() {
        assert_eq!(steps_to_prune(&[5, 1, 3, 9], 2), vec![3, 1]);
        assert!(steps_to_prune(&[5], 3).is_empty());
    }

    #[test]
    fn corruption_is_detected_and_auto_falls_back() {
        let root = tempfile::tempdir().unwrap();
        let (t, shapes) = sample();
        save(root.path(), meta(1), &t).unwrap();
        let newest = save(root.path(), meta(2), &t).unwrap();
        let state = newest.join(STATE_FILE);
        let mut bytes = std::fs::read(&state).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&state, &bytes).unwrap();
        let e = format!("{:#}", load(&newest, &shapes).err().unwrap());
        assert!(e.contains("does not match"), "{e}");
        assert_eq!(load_latest(root.path(), &shapes).unwrap().unwrap().meta.step, 1);
        // Truncation, a missing tensor and a wrong shape, each named.
        std::fs::write(&state, &bytes[..10]).unwrap();
        assert!(format!("{:#}", load(&newest, &shapes).err().unwrap()).contains("truncated or corrupted"));
        let mut wrong = shapes.clone();
        wrong.insert("c".into(), vec![1]);
        assert!(format!("{:#}", load(&root.path().join(dir_name(1)), &wrong).err().unwrap()).contains("tensor c is missing"));
        let mut wrong = shapes.clone();
        wrong.insert("a".into(), vec![4]);
        assert!(format!("{:#}", load(&root.path().join(dir_name(1)), &wrong).err().unwrap()).contains("expected [4]"));
    }

    #[test]
    fn failed_write_leaves_previous_checkpoint_intact() {
        let root = tempfile::tempdir().unwrap();
        let (t, shapes) = sample();
        save(root.path(), meta(1), &t).unwrap();
        // A plain file where step 2's directory must go makes the final replace fail after
        // the state was written: the temp directory must vanish and step 1 stay loadable.
        std::fs::write(root.path().join(dir_name(2)), b"not a directory").unwrap();
        let e = format!("{:#}", save(root.path(), meta(2), &t).unwrap_err());
        assert!(e.contains("earlier checkpoints") && e.contains("cannot replace"), "{e}");
        assert!(!root.path().join(format!(".{}.tmp", dir_name(2))).exists());
        assert_eq!(load_latest(root.path(), &shapes).unwrap().unwrap().meta.step, 1);
    }

    /// A format-1 meta.json is read with its trainer fields moved, unread, into `trainer`;
    /// a version this build does not know, or none, is refused by name.
    #[test]
    fn format_versions_are_read_or_named() {
        let root = tempfile::tempdir().unwrap();
        let (t, shapes) = sample();
        let dir = save(root.path(), meta(3), &t).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join(META_FILE)).unwrap()).unwrap();
        let o = v.as_object_mut().unwrap();
        o.remove("trainer");
        o.insert("format_version".into(), 1.into());
        for (k, x) in [("critic_step", serde_json::json!(15)), ("seed", serde_json::json!(4)), ("extra", serde_json::json!({"lr_scale": 0.5}))] {
            o.insert(k.into(), x);
        }
        std::fs::write(dir.join(META_FILE), serde_json::to_vec(&v).unwrap()).unwrap();
        let l = load(&dir, &shapes).unwrap();
        assert_eq!((l.meta.format_version, l.meta.step), (1, 3));
        assert_eq!(l.meta.trainer, serde_json::json!({"critic_step": 15, "seed": 4, "extra": {"lr_scale": 0.5}}));
        assert_eq!(l.tensors, t);
        for (version, needle) in [(serde_json::json!(3), "format version 3"), (serde_json::json!(0), "format version 0"), (serde_json::Value::Null, "no format_version")] {
            v["format_version"] = version;
            std::fs::write(dir.join(META_FILE), serde_json::to_vec(&v).unwrap()).unwrap();
            let e = format!("{:#}", load(&dir, &shapes).err().unwrap());
            assert!(e.contains(needle) && e.contains(META_FILE), "{e}");
        }
    }

    #[test]
    fn non_finite_values_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let (mut t, shapes) = sample();
        t.get_mut("b").unwrap().1[0] = f32::NAN;
        let d = save(root.path(), meta(1), &t).unwrap();
        assert!(format!("{:#}", load(&d, &shapes).err().unwrap()).contains("non-finite"));
    }

    /// Property test: bit flips and truncations anywhere in either file are refused with an
    /// error (never a panic); a checkpoint only loads when its state file is intact.
    #[test]
    fn mutated_checkpoints_never_panic() {
        let root = tempfile::tempdir().unwrap();
        let (t, shapes) = sample();
        let dir = save(root.path(), meta(1), &t).unwrap();
        let state0 = std::fs::read(dir.join(STATE_FILE)).unwrap();
        let meta0 = std::fs::read(dir.join(META_FILE)).unwrap();
        let mut rng = crate::seeds::SplitMix64::new(7);
        for round in 0..400 {
            let (file, orig) = if round % 2 == 0 { (STATE_FILE, &state0) } else { (META_FILE, &meta0) };
            let mut b = orig.clone();
            if rng.below(2) == 0 {
                b.truncate(rng.below(b.len() as u64) as usize);
            } else {
                let i = rng.below(b.len() as u64) as usize;
                b[i] ^= 1 << rng.below(8);
            }
            std::fs::write(dir.join(file), &b).unwrap();
            let r = std::panic::catch_unwind(|| load(&dir, &shapes).map(|l| l.tensors)).expect("loader panicked");
            if file == STATE_FILE {
                assert!(r.is_err(), "a damaged state file loaded (round {round})");
            } else if let Ok(tensors) = r {
                // A flip inside a meta value that still parses (e.g. a digit of the step) may
                // load, but the tensors are then the intact ones.
                assert_eq!(tensors, t);
            }
            std::fs::write(dir.join(file), orig).unwrap();
        }
    }
}
