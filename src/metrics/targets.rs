//! The Prometheus file_sd targets of a run: every rank's exporter address and node, gathered to
//! rank 0 and written there as `<run_dir>/prometheus-targets.json`, and, when `metrics.sd_dir`
//! names a folder that a shared Prometheus watches, as `<sd_dir>/gandist-<run>-<job>.json`,
//! one file per run, so that one scrape job with a glob follows every run on the cluster.
//! Targets carry `rank`, `run`, `node` and (under Slurm) `slurm_job_id` labels, so that a
//! run's series can be joined with a node's or a job's GPU series (dcgm-exporter's). At the
//! clean end of a run the run directory's file is emptied and the shared folder's file is
//! removed, so that a finished run is not reported as ranks that went down.

use crate::collectives::Collective;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The file name of the targets file inside a run directory.
pub const FILE_NAME: &str = "prometheus-targets.json";

/// Longest host name a rank can advertise (Linux's HOST_NAME_MAX).
const MAX_HOST: usize = 64;

/// One rank's exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub rank: usize,
    /// Where Prometheus reaches the exporter.
    pub host: String,
    pub port: u16,
    /// The host name of the node the rank runs on.
    pub node: String,
}

/// The run as Prometheus labels it: its name, and the Slurm job it belongs to, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLabels {
    pub run: String,
    pub slurm_job_id: Option<String>,
}

impl RunLabels {
    /// `run` (the run directory's name) and the Slurm job id of this process's environment:
    /// `<array job>_<task>` for an array task, else SLURM_JOB_ID (stable across requeues).
    pub fn from_env(run: &str) -> RunLabels {
        let var = |v: &str| std::env::var(v).ok().filter(|s| !s.is_empty());
        let slurm_job_id = match (var("SLURM_ARRAY_JOB_ID"), var("SLURM_ARRAY_TASK_ID")) {
            (Some(a), Some(t)) => Some(format!("{a}_{t}")),
            _ => var("SLURM_JOB_ID"),
        };
        RunLabels { run: run.to_string(), slurm_job_id }
    }

    /// The job part of the shared file's name: the Slurm job id, else `<node>-<pid>` of rank 0.
    fn job(&self) -> String {
        self.slurm_job_id.clone().unwrap_or_else(|| format!("{}-{}", this_node(), std::process::id()))
    }
}

/// This node's host name.
pub fn this_node() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The host other machines reach this rank's exporter at: the bound address, or this node's
/// host name when the exporter listens on every interface.
pub fn advertised_host(bind_host: &str) -> String {
    match bind_host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => this_node(),
        _ => bind_host.to_string(),
    }
}

/// Every rank's `s` (at most 64 bytes), in rank order, as 8-byte words through
/// `all_gather_u64`. A collective.
fn gather_str(comm: &dyn Collective, s: &str, what: &str) -> Result<Vec<String>> {
    if s.len() > MAX_HOST {
        bail!("{what} {s:?} is longer than {MAX_HOST} bytes");
    }
    let mut bytes = s.as_bytes().to_vec();
    bytes.resize(MAX_HOST, 0);
    let mut words = Vec::with_capacity(MAX_HOST / 8);
    for chunk in bytes.chunks_exact(8) {
        words.push(comm.all_gather_u64(u64::from_le_bytes(chunk.try_into().expect("8 bytes")))?);
    }
    (0..comm.world_size())
        .map(|rank| {
            let raw: Vec<u8> = words.iter().flat_map(|w| w[rank].to_le_bytes()).take_while(|&b| b != 0).collect();
            String::from_utf8(raw).with_context(|| format!("rank {rank} sent a {what} that is not UTF-8"))
        })
        .collect()
}

/// Every rank's (host, port, node), in rank order. A collective: every rank must call it.
pub fn gather(comm: &dyn Collective, host: &str, port: u16, node: &str) -> Result<Vec<Target>> {
    let ports = comm.all_gather_u64(port as u64)?;
    let hosts = gather_str(comm, host, "metrics host name")?;
    let nodes = gather_str(comm, node, "node name")?;
    Ok((0..ports.len())
        .map(|rank| Target { rank, host: hosts[rank].clone(), port: ports[rank] as u16, node: nodes[rank].clone() })
        .collect())
}

/// The file_sd JSON: one group per rank, labelled with its rank, node, the run's name and its
/// Slurm job.
pub fn render(targets: &[Target], labels: &RunLabels) -> String {
    let groups: Vec<_> = targets
        .iter()
        .map(|t| {
            let mut l = json!({ "rank": t.rank.to_string(), "run": labels.run, "node": t.node });
            if let Some(j) = &labels.slurm_job_id {
                l["slurm_job_id"] = json!(j);
            }
            json!({ "targets": [super::server::display_addr(&t.host, t.port)], "labels": l })
        })
        .collect();
    serde_json::to_string_pretty(&groups).expect("JSON of strings") + "\n"
}

/// Writes the targets of a run atomically (Prometheus may read the file at any moment).
pub fn write(path: &Path, targets: &[Target], labels: &RunLabels) -> Result<()> {
    crate::fsutil::write_atomic(path, render(targets, labels).as_bytes())
}

/// Empties the targets file: Prometheus stops scraping the run.
pub fn clear(path: &Path) -> Result<()> {
    crate::fsutil::write_atomic(path, b"[]\n")
}

/// `gandist-<run>-<job>.json`, with every character outside `[A-Za-z0-9._-]` made `_`, so
/// that any run name gives one plain file name that the glob `gandist-*.json` matches.
pub fn sd_file_name(labels: &RunLabels) -> String {
    let clean = |s: &str| s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect::<String>();
    format!("gandist-{}-{}.json", clean(&labels.run), clean(&labels.job()))
}

/// Writes this run's file into the shared service-discovery folder (created if missing),
/// atomically (a temp file that the glob does not match, then a rename). Returns its path.
pub fn write_shared(sd_dir: &Path, targets: &[Target], labels: &RunLabels) -> Result<PathBuf> {
    std::fs::create_dir_all(sd_dir).with_context(|| format!("metrics.sd_dir: cannot create {}", sd_dir.display()))?;
    let path = sd_dir.join(sd_file_name(labels));
    write(&path, targets, labels).with_context(|| format!("metrics.sd_dir: cannot write {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(rank: usize, host: &str, port: u16, node: &str) -> Target {
        Target { rank, host: host.into(), port, node: node.into() }
    }

    #[test]
    fn single_rank_gather_and_file_sd_format() {
        let t = gather(&crate::collectives::Local, "node-17.cluster.example", 19400, "node-17").unwrap();
        assert_eq!(t, vec![target(0, "node-17.cluster.example", 19400, "node-17")]);
        let t2 = vec![t[0].clone(), target(1, "::1", 19401, "node-18")];
        let labels = RunLabels { run: "smoke".into(), slurm_job_id: Some("4242".into()) };
        let v: serde_json::Value = serde_json::from_str(&render(&t2, &labels)).unwrap();
        assert_eq!(
            v,
            json!([
                {"targets": ["node-17.cluster.example:19400"], "labels": {"rank": "0", "run": "smoke", "node": "node-17", "slurm_job_id": "4242"}},
                {"targets": ["[::1]:19401"], "labels": {"rank": "1", "run": "smoke", "node": "node-18", "slurm_job_id": "4242"}},
            ])
        );
        // Outside Slurm there is no job label.
        let v: serde_json::Value = serde_json::from_str(&render(&t2[..1], &RunLabels { run: "r".into(), slurm_job_id: None })).unwrap();
        assert_eq!(v[0]["labels"], json!({"rank": "0", "run": "r", "node": "node-17"}));
        let long = "x".repeat(65);
        assert!(gather(&crate::collectives::Local, &long, 1, "n").is_err());
        assert!(gather(&crate::collectives::Local, "h", 1, &long).is_err());
        // A host of exactly 64 bytes survives the trip.
        let h64 = "h".repeat(64);
        assert_eq!(gather(&crate::collectives::Local, &h64, 1, "n").unwrap()[0].host, h64);
    }

    #[test]
    fn advertised_host_names_this_node_for_wildcard_binds() {
        assert_eq!(advertised_host("127.0.0.1"), "127.0.0.1");
        let h = advertised_host("0.0.0.0");
        assert!(!h.is_empty() && h != "0.0.0.0", "{h}");
        assert_eq!(h, this_node());
    }

    #[test]
    fn write_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        let labels = RunLabels { run: "r".into(), slurm_job_id: None };
        write(&p, &[target(0, "127.0.0.1", 1, "n")], &labels).unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("127.0.0.1:1"));
        clear(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "[]\n");
    }

    #[test]
    fn shared_file_names_are_per_run_and_job_and_match_the_glob() {
        let a = RunLabels { run: "wgan gp/1".into(), slurm_job_id: Some("77_3".into()) };
        assert_eq!(sd_file_name(&a), "gandist-wgan_gp_1-77_3.json");
        let b = RunLabels { run: "wgan gp/1".into(), slurm_job_id: Some("78".into()) };
        assert_ne!(sd_file_name(&a), sd_file_name(&b), "two jobs with one run name");
        let local = sd_file_name(&RunLabels { run: "r".into(), slurm_job_id: None });
        assert_eq!(local, format!("gandist-r-{}-{}.json", this_node(), std::process::id()));

        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("sd/nested");
        let p = write_shared(&sd, &[target(0, "127.0.0.1", 5, "n")], &a).unwrap();
        assert_eq!(p, sd.join("gandist-wgan_gp_1-77_3.json"));
        let names: Vec<_> = std::fs::read_dir(&sd).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names, ["gandist-wgan_gp_1-77_3.json"], "no temp file left behind");
        // A folder that cannot be created names the setting.
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let e = write_shared(&file.join("sub"), &[], &a).unwrap_err();
        assert!(format!("{e:#}").contains("metrics.sd_dir"), "{e:#}");
    }

    #[test]
    fn slurm_job_id_from_the_environment() {
        // One test touches these variables, so no other test sees them change.
        std::env::remove_var("SLURM_ARRAY_JOB_ID");
        std::env::remove_var("SLURM_ARRAY_TASK_ID");
        std::env::set_var("SLURM_JOB_ID", "4242");
        assert_eq!(RunLabels::from_env("r").slurm_job_id.as_deref(), Some("4242"));
        std::env::set_var("SLURM_ARRAY_JOB_ID", "4000");
        std::env::set_var("SLURM_ARRAY_TASK_ID", "7");
        assert_eq!(RunLabels::from_env("r").slurm_job_id.as_deref(), Some("4000_7"));
        for v in ["SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"] {
            std::env::remove_var(v);
        }
        assert_eq!(RunLabels::from_env("r").slurm_job_id, None);
    }
}
