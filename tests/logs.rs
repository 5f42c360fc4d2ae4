//! What a batch job's output file gets: every stderr line with a timestamp, a level and the
//! rank; progress lines with percent done, elapsed time and the estimate of the time left;
//! RUST_LOG filtering.

mod common;
use common::*;
use std::process::Command;

fn train(run: &std::path::Path, iterations: u64, rust_log: Option<&str>) -> (String, String) {
    let mut c = Command::new(bin());
    c.args(["train", "--config", smoke_config().to_str().unwrap(), "--data", mnist_dir().to_str().unwrap()])
        .args(["--run-dir", run.to_str().unwrap()])
        .args(["--set", &format!("train.iterations={iterations}"), "--set", "train.log_every=2"]);
    match rust_log {
        Some(v) => c.env("RUST_LOG", v),
        None => c.env_remove("RUST_LOG"),
    };
    let o = c.output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    assert!(o.status.success(), "{out}{err}");
    (out, err)
}

/// `2026-11-29T19:22:28.123456Z  INFO rank=0: message` -> (level, rank, message).
fn parse(line: &str) -> Option<(&str, &str, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let b = stamp.as_bytes();
    let stamp_ok = stamp.len() >= 20
        && stamp.ends_with('Z')
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && stamp[..4].parse::<u32>().is_ok();
    if !stamp_ok {
        return None;
    }
    let (level, rest) = rest.trim_start().split_once(' ')?;
    let (rank, msg) = rest.strip_prefix("rank=")?.split_once(": ")?;
    Some((level, rank, msg))
}

#[test]
fn every_line_has_time_level_and_rank_and_progress_has_percent_elapsed_and_eta() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, err) = train(&tmp.path().join("run"), 6, None);
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in &lines {
        let (level, rank, _) = parse(l).unwrap_or_else(|| panic!("not a log line: {l:?} in\n{err}"));
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level), "{l}");
        assert_eq!(rank, "0", "{l}");
    }
    // step 2/6 (33.3%) elapsed 0:00:01 ETA 0:00:02 d_loss ...
    let progress: Vec<_> = lines.iter().filter_map(|l| parse(l)).filter(|(_, _, m)| m.starts_with("step ")).collect();
    let steps: Vec<&str> = progress.iter().map(|(_, _, m)| m.split(' ').nth(1).unwrap()).collect();
    assert_eq!(steps, ["2/6", "4/6", "6/6"], "{err}");
    for ((level, _, m), pct) in progress.iter().zip(["(33.3%)", "(66.7%)", "(100.0%)"]) {
        assert_eq!(*level, "INFO");
        let w: Vec<&str> = m.split(' ').collect();
        assert_eq!(w[2], pct, "{m}");
        assert_eq!((w[3], w[5]), ("elapsed", "ETA"), "{m}");
        for clock in [w[4], w[6]] {
            let parts: Vec<&str> = clock.split(':').collect();
            assert!(parts.len() == 3 && parts.iter().all(|p| p.parse::<u64>().is_ok()), "{m}");
        }
        assert!(w[7..].contains(&"d_loss"), "{m}");
    }
    assert!(progress.last().unwrap().2.contains("ETA 0:00:00"), "nothing is left at the end");
}

#[test]
fn rust_log_filters_by_level() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, err) = train(&tmp.path().join("run"), 2, Some("warn"));
    assert!(err.lines().all(|l| !l.contains(" INFO ")), "{err}");
    let (_, err) = train(&tmp.path().join("run2"), 2, Some("not a [valid filter"));
    assert!(err.contains("RUST_LOG=") && err.contains("logging at info"), "{err}");
    assert!(err.contains(" INFO rank=0: step 2/2"), "{err}");
}

#[test]
fn both_ranks_say_who_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Command::new("mpirun")
        .args(["-n", "2", "--oversubscribe"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .arg(bin())
        .args(["train", "--config", smoke_config().to_str().unwrap(), "--data", mnist_dir().to_str().unwrap()])
        .args(["--run-dir", tmp.path().join("run").to_str().unwrap(), "--set", "train.iterations=2"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let ranks: std::collections::BTreeSet<&str> = t.lines().filter_map(parse).map(|(_, r, _)| r).collect();
    assert_eq!(ranks.into_iter().collect::<Vec<_>>(), ["0", "1"], "{t}");
}
