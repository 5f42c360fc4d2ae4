//! One job per run directory: rank 0 holds `RUN_DIR/gandist.lock` from its start to its end,
//! and a second job on the same directory is refused, naming the holder's host and pid.
//!
//! The lock is an advisory `flock` on that file, which holds the holder's host, pid and start
//! time. The kernel (or the NFS server, for a shared directory) releases a flock when its
//! process ends, however it ends, so a job killed by SIGKILL, the OOM killer or a lost node
//! leaves no lock behind: its file stays, and the next job takes the lock over with a warning
//! that names the previous holder and whether it still runs (checked when it ran on this
//! host). On file systems without flock (some Lustre and FUSE mounts answer ENOSYS or
//! EOPNOTSUPP, NFS without a lock daemon ENOLCK) the file itself is the lock, created
//! exclusively; a leftover file of a process that no longer runs on this host is taken over
//! with a warning, and one from another host is refused (it cannot be checked from here)
//! with the command that removes it.

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const FILE_NAME: &str = "gandist.lock";

/// Who holds (or held) a run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

impl Holder {
    fn this_process() -> Holder {
        Holder { host: host_name(), pid: std::process::id(), started: now() }
    }

    fn to_text(&self) -> String {
        format!("host={}\npid={}\nstarted={}\n", self.host, self.pid, self.started)
    }

    /// Reads what `to_text` wrote; None for anything else (an empty file, a partial write).
    pub fn parse(text: &str) -> Option<Holder> {
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)?.strip_prefix('=')).map(str::trim);
        Some(Holder { host: field("host")?.to_string(), pid: field("pid")?.parse().ok()?, started: field("started")?.parse().ok()? })
    }

    /// Whether the holder still runs: known only on its own host.
    fn alive(&self) -> Option<bool> {
        (self.host == host_name()).then(|| process_alive(self.pid))
    }

    fn describe(&self) -> String {
        format!("gandist pid {} on host {} (started {} s ago)", self.pid, self.host, now().saturating_sub(self.started))
    }
}

/// How the lock excludes a second job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Flock,
    /// The file's exclusive creation, for file systems without flock.
    Exclusive,
}

/// A held run directory; released (its file removed) when dropped.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
    method: Method,
    /// The previous holder whose lock this one took over, if any.
    pub took_over: Option<Holder>,
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists (EPERM: it exists, another user's).
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    Holder::parse(&text)
}

/// The holder of a held lock. A job that has just taken it may not have written its name yet:
/// look again for a moment before saying so.
fn holder_of(path: &Path) -> String {
    for _ in 0..20 {
        if let Some(h) = std::fs::read_to_string(path).ok().as_deref().and_then(Holder::parse) {
            return h.describe();
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    "a process that has not written its name into it".into()
}

/// Whether `file` is still the file at `path` (a releasing holder removes it).
fn still_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl RunLock {
    /// Takes the lock of run directory `dir` (created if missing), or says who holds it.
    pub fn take(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create run directory {}", dir.display()))?;
        Self::take_with(dir, Method::Flock)
    }

    fn take_with(dir: &Path, method: Method) -> Result<RunLock> {
        let path = dir.join(FILE_NAME);
        let lock = match method {
            Method::Flock => Self::take_flock(dir, &path)?,
            Method::Exclusive => Self::take_exclusive(dir, &path)?,
        };
        if let Some(prev) = &lock.took_over {
            let state = match prev.alive() {
                Some(false) => "which no longer runs".to_string(),
                Some(true) => "which runs but no longer holds it (its pid was reused, or it lost its lock)".to_string(),
                None => format!("which ended without releasing it (it ran on another host, {}; not checked from here)", prev.host),
            };
            tracing::warn!("run directory {}: taking over the lock left by {}, {state}", dir.display(), prev.describe());
        }
        Ok(lock)
    }

    fn take_flock(dir: &Path, path: &Path) -> Result<RunLock> {
        for _ in 0..100 {
            let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).with_context(|| format!("cannot open the run directory's lock file {}", path.display()))?;
            // SAFETY: flock on an open descriptor.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EWOULDBLOCK) => bail!(
                        "run directory {} is in use: {} holds its lock {}; two jobs must not share a run directory: wait for that job to end, or choose another --run-dir",
                        dir.display(),
                        holder_of(path),
                        path.display()
                    ),
                    Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS) => {
                        tracing::warn!("run directory {}: its file system has no flock ({e}); locking by exclusive creation of {} instead", dir.display(), path.display());
                        drop(file);
                        return Self::take_exclusive(dir, path);
                    }
                    _ => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
                }
            }
            // Between the open and the flock, the holder may have released: then this is a
            // removed file, and another job may already hold a new one. Start again.
            if !still_at(&file, path) {
                continue;
            }
            let took_over = read_holder(&mut file);
            write_holder(&mut file, path)?;
            return Ok(RunLock { file, path: path.to_path_buf(), method: Method::Flock, took_over });
        }
        bail!("cannot lock {}: it kept being removed and created again by other jobs", path.display())
    }

    fn take_exclusive(dir: &Path, path: &Path) -> Result<RunLock> {
        let mut took_over = None;
        for _ in 0..3 {
            match OpenOptions::new().read(true).write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    write_holder(&mut file, path)?;
                    return Ok(RunLock { file, path: path.to_path_buf(), method: Method::Exclusive, took_over });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(path).ok().as_deref().and_then(Holder::parse);
                    match holder {
                        Some(h) if h.alive() == Some(false) => {
                            std::fs::remove_file(path).with_context(|| format!("cannot remove the stale lock {}", path.display()))?;
                            took_over = Some(h);
                        }
                        Some(h) if h.alive().is_none() => bail!(
                            "run directory {} is in use: {} holds its lock {} (this file system has no flock, so a job that ended without releasing it leaves it behind, and another host's process cannot be checked from here); if that job no longer runs, remove it (rm {}) and start again, else choose another --run-dir",
                            dir.display(),
                            h.describe(),
                            path.display(),
                            path.display()
                        ),
                        _ => bail!(
                            "run directory {} is in use: {} holds its lock {}; two jobs must not share a run directory: wait for that job to end, or choose another --run-dir",
                            dir.display(),
                            holder_of(path),
                            path.display()
                        ),
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create the run directory's lock file {}", path.display())),
            }
        }
        bail!("cannot lock {}: other jobs keep taking it", path.display())
    }
}

fn write_holder(file: &mut File, path: &Path) -> Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(Holder::this_process().to_text().as_bytes())?;
    file.sync_all().with_context(|| format!("cannot write {}", path.display()))
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Remove the file while holding the lock; a job that opened it meanwhile sees that it
        // was removed (`still_at`) and starts again.
        let ours = match self.method {
            Method::Flock => still_at(&self.file, &self.path),
            Method::Exclusive => read_holder(&mut self.file).is_some_and(|h| h.pid == std::process::id() && h.host == host_name()) && still_at(&self.file, &self.path),
        };
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
        // Closing the file releases the flock.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let pid = c.id();
        c.wait().unwrap();
        pid
    }

    #[test]
    fn a_second_job_is_refused_with_the_holders_host_and_pid_and_the_lock_goes_on_release() {
        for method in [Method::Flock, Method::Exclusive] {
            let dir = tempfile::tempdir().unwrap();
            let first = RunLock::take_with(dir.path(), method).unwrap();
            assert!(first.took_over.is_none());
            let held = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
            assert_eq!(Holder::parse(&held).unwrap().pid, std::process::id(), "{held}");
            // A second open file description conflicts with the first, also in one process.
            let e = format!("{:#}", RunLock::take_with(dir.path(), method).unwrap_err());
            let want = format!("run directory {} is in use: gandist pid {} on host {} (started ", dir.path().display(), std::process::id(), host_name());
            assert!(e.starts_with(&want), "{method:?}: {e}");
            assert!(e.contains("choose another --run-dir"), "{e}");
            drop(first);
            assert!(!dir.path().join(FILE_NAME).exists(), "{method:?}: released locks leave no file");
            let again = RunLock::take_with(dir.path(), method).unwrap();
            assert!(again.took_over.is_none());
        }
    }

    #[test]
    fn a_stale_lock_of_a_dead_process_on_this_host_is_taken_over() {
        for method in [Method::Flock, Method::Exclusive] {
            let dir = tempfile::tempdir().unwrap();
            let stale = Holder { host: host_name(), pid: dead_pid(), started: 5 };
            std::fs::write(dir.path().join(FILE_NAME), stale.to_text()).unwrap();
            let lock = RunLock::take_with(dir.path(), method).unwrap();
            assert_eq!(lock.took_over.as_ref(), Some(&stale), "{method:?}");
            let now_held = Holder::parse(&std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap()).unwrap();
            assert_eq!(now_held.pid, std::process::id());
        }
    }

    #[test]
    fn another_hosts_leftover_is_taken_over_with_flock_and_refused_without() {
        let dir = tempfile::tempdir().unwrap();
        let other = Holder { host: "some-other-node".into(), pid: 4242, started: 5 };
        std::fs::write(dir.path().join(FILE_NAME), other.to_text()).unwrap();
        // No process holds a flock on it: its holder's lock was released when it ended.
        let lock = RunLock::take_with(dir.path(), Method::Flock).unwrap();
        assert_eq!(lock.took_over, Some(other.clone()));
        drop(lock);
        std::fs::write(dir.path().join(FILE_NAME), other.to_text()).unwrap();
        let e = format!("{:#}", RunLock::take_with(dir.path(), Method::Exclusive).unwrap_err());
        assert!(e.contains("gandist pid 4242 on host some-other-node") && e.contains(&format!("rm {}", dir.path().join(FILE_NAME).display())), "{e}");
    }

    #[test]
    fn holder_text_round_trips_and_garbage_is_none() {
        let h = Holder { host: "n1".into(), pid: 17, started: 1_700_000_000 };
        assert_eq!(Holder::parse(&h.to_text()), Some(h));
        assert_eq!(Holder::parse(""), None);
        assert_eq!(Holder::parse("host=n1\npid=x\nstarted=1\n"), None);
    }
}
