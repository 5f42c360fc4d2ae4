//! The Prometheus file_sd targets file: every rank's exporter address, gathered to rank 0 and
//! written there as `<run_dir>/prometheus-targets.json`, so that one Prometheus scrape job
//! follows a run on any number of nodes. At the clean end of a run the file is emptied, so
//! that a finished run is not reported as a rank that went down.

use crate::dist::Collective;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::net::IpAddr;
use std::path::Path;

/// The file name of the targets file inside a run directory.
pub const FILE_NAME: &str = "prometheus-targets.json";

/// Longest host name a rank can advertise (Linux's HOST_NAME_MAX).
const MAX_HOST: usize = 64;

/// One rank's exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub rank: usize,
    pub host: String,
    pub port: u16,
}

/// The host other machines reach this rank's exporter at: the bound address, or this node's
/// host name when the exporter listens on every interface.
pub fn advertised_host(bind_host: &str) -> String {
    match bind_host.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into()),
        _ => bind_host.to_string(),
    }
}

/// Every rank's (host, port), in rank order. A collective: every rank must call it.
/// Host names travel as 8-byte words through `all_gather_u64`.
pub fn gather(comm: &dyn Collective, host: &str, port: u16) -> Result<Vec<Target>> {
    if host.len() > MAX_HOST {
        bail!("metrics host name {host:?} is longer than {MAX_HOST} bytes");
    }
    let mut bytes = host.as_bytes().to_vec();
    bytes.resize(MAX_HOST, 0);
    let ports = comm.all_gather_u64(port as u64)?;
    let mut words = Vec::with_capacity(MAX_HOST / 8);
    for chunk in bytes.chunks_exact(8) {
        words.push(comm.all_gather_u64(u64::from_le_bytes(chunk.try_into().expect("8 bytes")))?);
    }
    (0..ports.len())
        .map(|rank| {
            let raw: Vec<u8> = words.iter().flat_map(|w| w[rank].to_le_bytes()).take_while(|&b| b != 0).collect();
            let host = String::from_utf8(raw).with_context(|| format!("rank {rank} sent a host name that is not UTF-8"))?;
            Ok(Target { rank, host, port: ports[rank] as u16 })
        })
        .collect()
}

/// The file_sd JSON: one group per rank, labelled with its rank and the run's name.
pub fn render(targets: &[Target], run: &str) -> String {
    let groups: Vec<_> = targets
        .iter()
        .map(|t| {
            json!({
                "targets": [super::server::display_addr(&t.host, t.port)],
                "labels": { "rank": t.rank.to_string(), "run": run },
            })
        })
        .collect();
    serde_json::to_string_pretty(&groups).expect("JSON of strings") + "\n"
}

/// Writes the targets of a run atomically (Prometheus may read the file at any moment).
pub fn write(path: &Path, targets: &[Target], run: &str) -> Result<()> {
    crate::fsutil::write_atomic(path, render(targets, run).as_bytes())
}

/// Empties the targets file: Prometheus stops scraping the run.
pub fn clear(path: &Path) -> Result<()> {
    crate::fsutil::write_atomic(path, b"[]\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_rank_gather_and_file_sd_format() {
        let t = gather(&crate::dist::Local, "node-17.cluster.example", 9400).unwrap();
        assert_eq!(t, vec![Target { rank: 0, host: "node-17.cluster.example".into(), port: 9400 }]);
        let t2 = vec![t[0].clone(), Target { rank: 1, host: "::1".into(), port: 9401 }];
        let v: serde_json::Value = serde_json::from_str(&render(&t2, "smoke")).unwrap();
        assert_eq!(
            v,
            json!([
                {"targets": ["node-17.cluster.example:9400"], "labels": {"rank": "0", "run": "smoke"}},
                {"targets": ["[::1]:9401"], "labels": {"rank": "1", "run": "smoke"}},
            ])
        );
        let long = "x".repeat(65);
        assert!(gather(&crate::dist::Local, &long, 1).is_err());
        // A host of exactly 64 bytes survives the trip.
        let h64 = "h".repeat(64);
        assert_eq!(gather(&crate::dist::Local, &h64, 1).unwrap()[0].host, h64);
    }

    #[test]
    fn advertised_host_names_this_node_for_wildcard_binds() {
        assert_eq!(advertised_host("127.0.0.1"), "127.0.0.1");
        let h = advertised_host("0.0.0.0");
        assert!(!h.is_empty() && h != "0.0.0.0", "{h}");
    }

    #[test]
    fn write_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(FILE_NAME);
        write(&p, &[Target { rank: 0, host: "127.0.0.1".into(), port: 1 }], "r").unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("127.0.0.1:1"));
        clear(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "[]\n");
    }
}
