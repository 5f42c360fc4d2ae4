//! The commands the docs give for exports, sampling and TensorBoard, run as written: the
//! fenced `sh` and `python` blocks of README.md's "Using the generator from Python", of
//! docs/export.md's "Quick start" and "Sampling from given noise", and of docs/monitoring.md's
//! "TensorBoard", extracted from the markdown so that the docs cannot drift from the code.
//!
//! Each section runs in a fresh folder holding `configs` (a link to the repository's), with
//! the binary and the torch venv first on PATH (`gandist`, `python`, `tensorboard`),
//! `GANDIST_DATA` at the test MNIST and python/ on PYTHONPATH. `sh` lines run one by one under
//! bash, except those marked "serves until stopped"; a `python` block runs as one script;
//! `text` blocks (output shown to the reader) are skipped.
//! README's section uses a run directory `runs/NAME`, which the test trains first (the smoke
//! configuration, seconds); the others make their own.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn venv() -> PathBuf {
    let v = std::env::var_os("GANDIST_TORCH_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/gandist/torch-2.11.0"));
    assert!(v.join("bin/python").exists(), "no python in {} (run launch/setup.sh and launch/test-tools.sh)", v.display());
    v
}

/// The `## `/`### ` section of `doc` titled `title`, up to the next heading of its level or above.
fn section<'a>(doc: &'a str, title: &str) -> &'a str {
    let (start, level) = ["## ", "### "]
        .iter()
        .find_map(|h| doc.find(&format!("\n{h}{title}\n")).map(|i| (i + 1, h.len() - 1)))
        .unwrap_or_else(|| panic!("no section {title:?}"));
    let rest = &doc[start..];
    let body_start = rest.find('\n').unwrap() + 1;
    let end = rest[body_start..]
        .lines()
        .scan(body_start, |at, l| {
            let here = *at;
            *at += l.len() + 1;
            Some((here, l))
        })
        .find(|(_, l)| l.starts_with('#') && l.chars().take_while(|c| *c == '#').count() <= level && !l.starts_with("#!"))
        .map_or(rest.len(), |(i, _)| i);
    &rest[..end]
}

/// The fenced blocks of `text`: (language, body).
fn blocks(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        match (&mut current, line.strip_prefix("```")) {
            (None, Some(lang)) => current = Some((lang.trim().to_string(), String::new())),
            (Some(_), Some(_)) => out.push(current.take().unwrap()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    out
}

/// Runs every `sh` line and `python` block of `text` in `dir`; returns how many ran.
fn run_blocks(doc_text: &str, dir: &Path, what: &str) -> usize {
    let bin_dir = bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}:{}", bin_dir.display(), venv().join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let run = |mut c: Command, shown: &str| {
        let o = c.current_dir(dir).env("PATH", &path).env("GANDIST_DATA", mnist_dir()).env("PYTHONPATH", repo().join("python")).output().unwrap();
        let t = text(&o);
        assert!(o.status.success(), "{what}: `{shown}` failed: {t}");
        assert!(!t.contains("panicked"), "{what}: `{shown}`: {t}");
    };
    let mut ran = 0;
    for (lang, body) in blocks(doc_text) {
        match lang.as_str() {
            "sh" => {
                for line in body.lines().filter(|l| !l.trim().is_empty() && !l.contains("serves until stopped")) {
                    let mut c = Command::new("bash");
                    c.args(["-euo", "pipefail", "-c", line]);
                    run(c, line);
                    ran += 1;
                }
            }
            "python" => {
                let mut c = Command::new(venv().join("bin/python"));
                c.args(["-c", &body]);
                run(c, body.lines().next().unwrap_or(""));
                ran += 1;
            }
            // Output shown to the reader.
            "text" => {}
            other => panic!("{what}: a block in {other:?}: expected sh, python or text"),
        }
    }
    ran
}

fn fresh_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo().join("configs"), d.path().join("configs")).unwrap();
    d
}

fn doc(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

#[test]
fn readme_python_section_runs() {
    let d = fresh_dir();
    let run = d.path().join("runs/NAME");
    ok(&["train", "--config", smoke_config().to_str().unwrap(), "--data", mnist_dir().to_str().unwrap(), "--run-dir", run.to_str().unwrap()]);
    let readme = doc("README.md");
    let ran = run_blocks(section(&readme, "Using the generator from Python"), d.path(), "README.md");
    assert!(ran >= 2, "README.md's section ran {ran} commands");
}

#[test]
fn export_docs_run() {
    let d = fresh_dir();
    let text = doc("docs/export.md");
    let ran = run_blocks(section(&text, "Quick start"), d.path(), "docs/export.md");
    assert!(ran >= 6, "docs/export.md's quick start ran {ran} commands");
    assert!(d.path().join("generator.onnx").exists());
    let ran = run_blocks(section(&text, "Sampling from given noise"), d.path(), "docs/export.md");
    assert!(ran >= 4, "docs/export.md's sampling ran {ran} commands");
}

#[test]
fn tensorboard_docs_run() {
    let d = fresh_dir();
    let text = doc("docs/monitoring.md");
    let ran = run_blocks(section(&text, "TensorBoard"), d.path(), "docs/monitoring.md");
    assert!(ran >= 2, "docs/monitoring.md's TensorBoard section ran {ran} commands");
    let events = std::fs::read_dir(d.path().join("runs/tb-demo")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("tfevents")).count();
    assert_eq!(events, 1);
}
