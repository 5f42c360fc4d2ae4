//! Log lines that still make sense in a batch job's output file: every `tracing` event goes to
//! stderr as one line with a UTC timestamp, its level and this process's rank, e.g.
//! `2026-11-29T19:22:28.123456Z  INFO rank=1: resumed from runs/x/checkpoints/step-000000040 at step 40`.
//! `RUST_LOG` filters (default `info`; e.g. `RUST_LOG=warn`, `RUST_LOG=gandist::train=debug`).

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

const UNKNOWN: usize = usize::MAX;
static RANK: AtomicUsize = AtomicUsize::new(UNKNOWN);

/// The rank a launcher gave this process in its environment (Open MPI, PMIx, Slurm, MPICH),
/// known before MPI starts, so that the first lines carry it too.
pub fn rank_from_env() -> Option<usize> {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", "PMI_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The rank every later line carries (MPI's answer, once it has started).
pub fn set_rank(rank: usize) {
    RANK.store(rank, Ordering::Relaxed);
}

fn rank() -> Option<usize> {
    Some(RANK.load(Ordering::Relaxed)).filter(|&r| r != UNKNOWN)
}

/// Installs the stderr subscriber. Call once, first thing in `main`.
pub fn init() {
    set_rank(rank_from_env().unwrap_or(0));
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => match EnvFilter::try_new(&s) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some(format!("RUST_LOG={s:?} is not a valid filter ({e}); logging at info"))),
        },
        _ => (EnvFilter::new("info"), None),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .event_format(Line { timer: SystemTime })
        .try_init()
        .is_ok();
    if let (true, Some(msg)) = (installed, bad) {
        tracing::warn!("{msg}");
    }
}

/// `TIMESTAMP LEVEL rank=R: message key=value ...`
struct Line {
    timer: SystemTime,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        self.timer.format_time(&mut w)?;
        write!(w, " {:>5} ", event.metadata().level())?;
        match rank() {
            Some(r) => write!(w, "rank={r}: ")?,
            None => write!(w, "rank=?: ")?,
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn a_line_has_time_level_rank_and_message() {
        let buf = Buffer::default();
        let sub = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("info"))
            .with_writer(buf.clone())
            .event_format(Line { timer: SystemTime })
            .finish();
        set_rank(3);
        tracing::subscriber::with_default(sub, || {
            tracing::info!("resumed from {} at step {}", "x", 40);
            tracing::debug!("not shown at info");
            tracing::warn!(step = 7, "skipped");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        // 2026-11-29T19:22:28.123456Z  INFO rank=3: resumed from x at step 40
        let (stamp, rest) = lines[0].split_once(' ').unwrap();
        assert!(stamp.len() >= 20 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T', "{stamp}");
        assert!(stamp.starts_with("20"), "{stamp}");
        assert_eq!(rest.trim_start(), "INFO rank=3: resumed from x at step 40");
        assert!(lines[1].ends_with(" WARN rank=3: skipped step=7"), "{}", lines[1]);
    }
}
