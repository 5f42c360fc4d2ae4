//! Helpers shared by the integration tests: the binary, the MNIST folder, command runs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_gandist"))
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The MNIST folder for tests: GANDIST_TEST_DATA (launch/test.sh sets it to the clone's
/// data/mnist, which it makes first), else this clone's data/mnist. Panics when it is missing,
/// so that a test machine without the data fails loudly rather than passing vacuously.
pub fn mnist_dir() -> PathBuf {
    let p = std::env::var_os("GANDIST_TEST_DATA").map(PathBuf::from).unwrap_or_else(|| repo().join("data/mnist"));
    assert!(
        p.join("train-images-idx3-ubyte.gz").exists() || p.join("train-images-idx3-ubyte").exists(),
        "MNIST not found in {} (run launch/test.sh, which makes data/mnist, or set GANDIST_TEST_DATA)",
        p.display()
    );
    p
}

pub fn gandist(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("gandist runs")
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Runs gandist and asserts success, returning its combined output.
pub fn ok(args: &[&str]) -> String {
    let o = gandist(args);
    let t = text(&o);
    assert!(o.status.success(), "gandist {args:?} failed: {t}");
    t
}

/// Runs gandist and asserts failure with a message containing every `needles`.
pub fn fails(args: &[&str], needles: &[&str]) -> String {
    let o = gandist(args);
    let t = text(&o);
    assert!(!o.status.success(), "gandist {args:?} should fail: {t}");
    for n in needles {
        assert!(t.contains(n), "gandist {args:?}: expected {n:?} in: {t}");
    }
    assert!(!t.contains("panicked"), "gandist {args:?} panicked: {t}");
    t
}

pub fn smoke_config() -> PathBuf {
    repo().join("configs/smoke.toml")
}

/// Reads a checkpoint's state tensors by name.
pub fn state(dir: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(dir.join("state.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| (name, v.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()))
        .collect()
}

/// How closely two runs' tensors must agree. libtorch's CPU kernels (and MKL's, oneDNN's)
/// pick code paths by instruction set, so the same build sums in another order on another
/// CPU (an AVX2 Xeon and an AVX-512 EPYC differ in the last bit after one update): bit for
/// bit is only a fair demand on a host whose arithmetic is the fixture writer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agreement {
    Bits,
    /// Per tensor, max |a - b| <= 2e-6 * max(1, max |b|): about 10x the differences seen
    /// between two CPUs after a few updates (2.2e-7 relative, Adam's moments), and 50x under
    /// one Adam step of the runs these fixtures come from (1e-4), so a changed update fails.
    Rounding,
}

pub const ROUNDING_TOLERANCE: f64 = 2e-6;

/// Asserts that `got` holds the tensors of `want` (same names) agreeing as `how` says;
/// returns whether they are also bit-identical.
pub fn assert_states_agree(
    got: &std::collections::BTreeMap<String, Vec<f32>>,
    want: &std::collections::BTreeMap<String, Vec<f32>>,
    how: Agreement,
    what: &str,
) -> bool {
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "{what}: tensor names");
    let mut identical = true;
    for (k, w) in want {
        let g = &got[k];
        assert_eq!(g.len(), w.len(), "{what}: {k} has {} values, expected {}", g.len(), w.len());
        let same = w.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits());
        identical &= same;
        match how {
            Agreement::Bits => assert!(same, "{what}: {k} differs in its bits"),
            Agreement::Rounding => {
                let scale = w.iter().fold(1.0f64, |m, x| m.max(x.abs() as f64));
                let diff = w.iter().zip(g).fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
                assert!(diff <= ROUNDING_TOLERANCE * scale, "{what}: {k} differs by {diff:e} (tolerance {:e})", ROUNDING_TOLERANCE * scale);
            }
        }
    }
    identical
}
