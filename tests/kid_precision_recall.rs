//! KID and precision/recall against torch-fidelity 0.4.0 on the same features, and against an
//! independent numpy computation (tests/reference/torch_fidelity_side.py, one Python process,
//! about 10 s).

mod common;
use common::*;
use gandist::eval::{kid, precision_recall};
use std::path::PathBuf;
use std::process::Command;
use tch::{Kind, Tensor};

#[test]
fn kid_and_precision_recall_match_torch_fidelity() {
    let dir = tempfile::tempdir().unwrap();
    let venv = std::env::var_os("GANDIST_TORCH_VENV").map(PathBuf::from).expect("GANDIST_TORCH_VENV (source launch/env.sh): the torch venv with torch-fidelity");
    let o = Command::new(venv.join("bin/python")).arg(repo().join("tests/reference/torch_fidelity_side.py")).arg(dir.path()).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "the torch-fidelity side failed (launch/test-tools.sh installs it): {t}");
    let line = String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or_default().to_string();
    let r: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("no JSON from the torch-fidelity side: {t}"));
    let pair = |k: &str| (r[k][0].as_f64().unwrap(), r[k][1].as_f64().unwrap());
    let load = |n: &str| Tensor::read_npy(dir.path().join(format!("{n}.npy"))).unwrap();
    let (k1, k2) = (load("k1"), load("k2"));

    // Random subsets, float64 features: the same subsets (numpy's MT19937 reproduced), the
    // same sums up to summation order, so float64 rounding (relative 1e-12 of values ~5e-3
    // that are differences of kernel means ~8).
    let close = |got: f64, want: f64, tol: f64, what: &str| {
        eprintln!("{what}: gandist {got}, reference {want}, difference {:e}", (got - want).abs());
        assert!((got - want).abs() <= tol, "{what}: {got} vs {want}");
    };
    let g = kid::kid(&k1, &k2, 10, 100, kid::SEED).unwrap();
    let (m, s) = pair("kid_random64");
    close(g.mean, m, 1e-12, "KID mean, 10 subsets of 100, float64");
    close(g.std, s, 1e-12, "KID std, 10 subsets of 100, float64");
    // The subset statistics against the independent computation on the same subsets.
    let (im, is) = pair("kid_independent_random64");
    close(g.mean, im, 1e-12, "KID mean vs independent numpy");
    close(g.std, is, 1e-12, "KID std vs independent numpy");
    // One subset holding every feature: no randomness left at all.
    let g = kid::kid(&k1.narrow(0, 0, 260), &k2, 1, 260, kid::SEED).unwrap();
    let (m, s) = pair("kid_full64");
    close(g.mean, m, 1e-12, "KID, one subset of all 260, float64");
    assert_eq!((g.std, s), (0.0, 0.0));
    // float32 features, as torch-fidelity receives them from its extractor: it then computes
    // the kernels in float32 (sums of 10^4 terms near 8, rounding about 1e-7 relative each),
    // gandist in float64 from the same float32 values: agreement to 1e-6 absolute on 7e-3.
    let g = kid::kid(&k1.to_kind(Kind::Float), &k2.to_kind(Kind::Float), 10, 100, kid::SEED).unwrap();
    let (m, s) = pair("kid_random32");
    close(g.mean, m, 1e-6, "KID mean, float32 features");
    close(g.std, s, 1e-6, "KID std, float32 features");

    // Precision and recall: counts over 400 and 350 points, so any disagreement is at least
    // 1/400; torch-fidelity returns float32 means (1e-7 rounding).
    let pr = precision_recall::precision_recall(&load("p1"), &load("p2"), precision_recall::K).unwrap();
    let (p, rc) = pair("prc");
    close(pr.precision, p, 1e-6, "precision vs torch-fidelity");
    close(pr.recall, rc, 1e-6, "recall vs torch-fidelity");
    let (p, rc) = pair("prc_independent");
    assert_eq!((pr.precision, pr.recall), (p, rc), "precision/recall vs the independent numpy computation");
    assert!(pr.precision > 0.05 && pr.precision < 0.95 && pr.recall > 0.05, "the features must make the balls overlap partly: {pr:?}");
}
