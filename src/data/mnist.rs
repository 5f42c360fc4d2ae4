//! The four MNIST files: where they live, their checksums, strict loading, verification,
//! fetching from public mirrors and importing from a local folder (both verified and atomic).

use super::idx::{open_decompressed, read_idx};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// One MNIST file: its name and the SHA-256 of its decompressed bytes.
pub struct MnistFile {
    pub name: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
}

pub const FILES: [MnistFile; 4] = [
    MnistFile { name: "train-images-idx3-ubyte", sha256: "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db", bytes: 47_040_016 },
    MnistFile { name: "train-labels-idx1-ubyte", sha256: "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5", bytes: 60_008 },
    MnistFile { name: "t10k-images-idx3-ubyte", sha256: "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7", bytes: 7_840_016 },
    MnistFile { name: "t10k-labels-idx1-ubyte", sha256: "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2", bytes: 10_008 },
];

/// Public mirrors serving `<name>.gz`, tried in order. GANDIST_MNIST_MIRRORS (comma-separated
/// base URLs) replaces the list.
pub const MIRRORS: [&str; 3] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
];

pub const SIDE: usize = 28;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

/// Images (n x 28 x 28, row-major bytes) and their labels.
pub struct Mnist {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub n: usize,
}

/// The data directory: `--data`, else GANDIST_DATA, else `data/mnist`.
pub fn resolve_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(p) = flag {
        return p.to_path_buf();
    }
    match std::env::var_os("GANDIST_DATA") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from("data/mnist"),
    }
}

/// The path of `name` in `dir`, gzip or raw, whichever exists.
pub fn locate(dir: &Path, name: &str) -> Result<PathBuf> {
    for candidate in [format!("{name}.gz"), name.to_string()] {
        let p = dir.join(candidate);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "MNIST file {name}(.gz) not found in {}: run `gandist data fetch` (or `gandist data fetch --from DIR`), or point --data / GANDIST_DATA at the folder that holds it",
        dir.display()
    )
}

impl Mnist {
    /// Loads and checks a split: IDX structure, 28x28 images, equal counts, labels 0..=9.
    pub fn load(dir: &Path, split: Split) -> Result<Mnist> {
        let (img_name, lbl_name) = match split {
            Split::Train => (FILES[0].name, FILES[1].name),
            Split::Test => (FILES[2].name, FILES[3].name),
        };
        let img_path = locate(dir, img_name)?;
        let lbl_path = locate(dir, lbl_name)?;
        let images = read_idx(&img_path, 3)?;
        let labels = read_idx(&lbl_path, 1)?;
        if images.dims[1] != SIDE || images.dims[2] != SIDE {
            bail!("{}: images are {}x{}, expected {SIDE}x{SIDE}", img_path.display(), images.dims[1], images.dims[2]);
        }
        if images.dims[0] != labels.dims[0] {
            bail!(
                "{} holds {} images but {} holds {} labels: expected equal counts",
                img_path.display(),
                images.dims[0],
                lbl_path.display(),
                labels.dims[0]
            );
        }
        if let Some((i, &l)) = labels.data.iter().enumerate().find(|(_, &l)| l > 9) {
            bail!("{}: label {l} at index {i}: expected 0..=9", lbl_path.display());
        }
        Ok(Mnist { n: images.dims[0], images: images.data, labels: labels.data })
    }

    /// Keeps the first `n` examples (0 = all).
    pub fn truncate(&mut self, n: usize) {
        if n > 0 && n < self.n {
            self.n = n;
            self.images.truncate(n * SIDE * SIDE);
            self.labels.truncate(n);
        }
    }
}

/// SHA-256 and length of a file's decompressed bytes.
pub fn decompressed_sha256(path: &Path) -> Result<(String, u64)> {
    let mut reader = open_decompressed(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

fn check_file(path: &Path, f: &MnistFile) -> Result<()> {
    let (sha, len) = decompressed_sha256(path)?;
    if sha != f.sha256 {
        bail!(
            "{}: checksum mismatch: decompressed SHA-256 is {sha} ({len} bytes), expected {} ({} bytes)",
            path.display(),
            f.sha256,
            f.bytes
        );
    }
    Ok(())
}

/// Verifies all four files in `dir`; returns one line per file.
pub fn verify(dir: &Path) -> Result<Vec<String>> {
    let mut report = Vec::new();
    for f in &FILES {
        let p = locate(dir, f.name)?;
        check_file(&p, f)?;
        report.push(format!("ok  {}  {}", f.sha256, p.display()));
    }
    Ok(report)
}

/// Copies the four files from `src` into `dir`, verifying each before it takes its place.
pub fn import(src: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    for f in &FILES {
        let from = locate(src, f.name)?;
        check_file(&from, f)?;
        let file_name = from.file_name().expect("located files have names");
        let to = dir.join(file_name);
        if to == from {
            continue;
        }
        let tmp = dir.join(format!(".{}.part", file_name.to_string_lossy()));
        std::fs::copy(&from, &tmp).with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
        crate::fsutil::sync_and_rename(&tmp, &to)?;
        tracing::info!("imported {}", to.display());
    }
    Ok(())
}

/// Downloads each missing or bad file from the mirrors in turn, keeping only verified copies.
pub fn fetch(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let mirrors: Vec<String> = match std::env::var("GANDIST_MNIST_MIRRORS") {
        Ok(list) if !list.trim().is_empty() => list.split(',').map(|s| s.trim().to_string()).collect(),
        _ => MIRRORS.iter().map(|s| s.to_string()).collect(),
    };
    for f in &FILES {
        if let Ok(p) = locate(dir, f.name) {
            if check_file(&p, f).is_ok() {
                tracing::info!("present and verified: {}", p.display());
                continue;
            }
        }
        let to = dir.join(format!("{}.gz", f.name));
        let tmp = dir.join(format!(".{}.gz.part", f.name));
        let mut failures = Vec::new();
        let mut done = false;
        for base in &mirrors {
            let url = format!("{}/{}.gz", base.trim_end_matches('/'), f.name);
            match download(&url, &tmp).and_then(|_| check_file(&tmp, f)) {
                Ok(()) => {
                    crate::fsutil::sync_and_rename(&tmp, &to)?;
                    tracing::info!("fetched and verified {}", to.display());
                    done = true;
                    break;
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    tracing::warn!("{url}: {e:#}");
                    failures.push(format!("{url}: {e:#}"));
                }
            }
        }
        if !done {
            bail!("could not fetch {} from any mirror:\n  {}", f.name, failures.join("\n  "));
        }
    }
    Ok(())
}

fn download(url: &str, to: &Path) -> Result<()> {
    let resp = ureq::get(url).timeout(std::time::Duration::from_secs(60)).call().with_context(|| format!("GET {url}"))?;
    let len = resp.header("Content-Length").and_then(|v| v.parse::<u64>().ok());
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .expect("static template"),
    );
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    let mut out = std::fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut reader = bar.wrap_read(resp.into_reader());
    std::io::copy(&mut reader, &mut out).with_context(|| format!("download of {url} into {}", to.display()))?;
    out.flush()?;
    bar.finish_and_clear();
    Ok(())
}
