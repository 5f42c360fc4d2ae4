//! Durable file writes: temp file, fsync, rename, fsync of the directory.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// The directory that holds `path`: its parent, or "." for a bare file name.
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Flushes `tmp` to disk and renames it over `to`, then syncs the directory entry.
pub fn sync_and_rename(tmp: &Path, to: &Path) -> Result<()> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync {}", tmp.display()))?;
    std::fs::rename(tmp, to).with_context(|| format!("cannot rename {} to {}", tmp.display(), to.display()))?;
    sync_dir(parent_dir(to))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))
}

/// Writes `bytes` to `path` atomically: readers see the old file or the whole new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().context("a file path has a name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut f = File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().with_context(|| format!("cannot sync {}", tmp.display()))?;
        drop(f);
        sync_and_rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Flushes every written file of the file system that holds `dir` to disk (one `syncfs`:
/// for a folder of many small files, far cheaper than a sync per file).
pub fn sync_file_system(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    // SAFETY: syncfs takes an open descriptor, which `f` holds until after the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("cannot sync the file system of {}", dir.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// A bare file name is written in the current directory (its parent is "", which no
    /// directory sync can open).
    #[test]
    fn a_bare_file_name_has_the_current_directory_as_parent() {
        assert_eq!(super::parent_dir(std::path::Path::new("grid.png")), std::path::Path::new("."));
        assert_eq!(super::parent_dir(std::path::Path::new("a/grid.png")), std::path::Path::new("a"));
        assert_eq!(super::parent_dir(std::path::Path::new("/grid.png")), std::path::Path::new("/"));
    }
}
