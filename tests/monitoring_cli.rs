//! The monitoring seen from the command line: a training run's exporter and targets file, the
//! per-layer gradient norms in the scalar log, a busy metrics port, and `gandist plot`.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn smoke(run: &Path, data: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["train", "--config", smoke_config().to_str().unwrap(), "--data", data.to_str().unwrap(), "--run-dir", run.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn http_get(url: &str) -> String {
    ureq::get(url).timeout(Duration::from_secs(5)).call().unwrap_or_else(|e| panic!("GET {url}: {e}")).into_string().unwrap()
}

fn is_png(p: &Path) -> bool {
    std::fs::read(p).map(|b| b.starts_with(b"\x89PNG\r\n\x1a\n") && image::load_from_memory(&b).is_ok()).unwrap_or(false)
}

/// A single-process run with metrics on: rank 0 lists its exporter in the targets file and in
/// the shared service-discovery folder (labelled with node and Slurm job), the exporter
/// answers while the run trains, and a clean end empties the one, removes the other and
/// leaves plots.
#[test]
fn run_with_metrics_serves_lists_and_cleans_up() {
    let data = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let sd = tmp.path().join("sd");
    let sd_set = format!("metrics.sd_dir={}", sd.display());
    let args = smoke(&run, &data, &["--set", "metrics.enabled=true", "--set", "metrics.port_base=0", "--set", "train.iterations=30", "--set", &sd_set]);
    let mut child = Command::new(bin()).args(&args).env("SLURM_JOB_ID", "4242").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let targets = run.join("prometheus-targets.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let listed = std::fs::read_to_string(&targets).ok().and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
        if let Some(a) = listed.as_ref().and_then(|v| v[0]["targets"][0].as_str()) {
            assert_eq!(listed.as_ref().unwrap()[0]["labels"]["rank"], "0");
            assert_eq!(listed.as_ref().unwrap()[0]["labels"]["run"], "run");
            break a.to_string();
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before writing its targets file");
        assert!(Instant::now() < deadline, "no targets file");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    let shared = sd.join("gandist-run-4242.json");
    let listed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&shared).unwrap()).unwrap();
    let node = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    assert_eq!(
        listed,
        serde_json::json!([{"targets": [addr], "labels": {"rank": "0", "run": "run", "node": node, "slurm_job_id": "4242"}}])
    );
    assert_eq!(http_get(&format!("http://{addr}/healthz")), "ok\n");
    let text = http_get(&format!("http://{addr}/metrics"));
    assert!(text.contains(r#"gandist_build_info{backend="local",device="cpu",version="#), "{text}");
    assert!(text.contains(r#"gandist_world_size{rank="0"} 1"#), "{text}");
    let out = child.wait_with_output().unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert_eq!(std::fs::read_to_string(&targets).unwrap(), "[]\n", "a clean end empties the targets file");
    assert_eq!(std::fs::read_dir(&sd).unwrap().count(), 0, "a clean end removes the run's file from metrics.sd_dir");
    assert!(is_png(&run.join("plots/losses.png")) && is_png(&run.join("plots/grad_norms.png")), "{log}");
}

/// The per-layer norms in the scalar log add up (root sum of squares) to the global norm that
/// clipping measured, for both networks: an independent check of the layer slicing.
#[test]
fn layer_norms_in_the_log_add_up_to_the_global_norm() {
    let data = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let args = smoke(&run, &data, &["--set", "train.iterations=4"]);
    ok(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let log = gandist::scalar_log::read(&run.join("metrics.jsonl")).unwrap();
    assert!(!log.is_empty());
    for rec in &log {
        for (p, layers) in [("d", ["conv1", "conv2", "conv3", "fc"].as_slice()), ("g", ["fc", "deconv1", "deconv2", "deconv3"].as_slice())] {
            let global = rec[&format!("{p}_grad_norm")].as_f64().unwrap();
            let rss = layers.iter().map(|l| rec[&format!("{p}_grad_norm.{l}")].as_f64().unwrap().powi(2)).sum::<f64>().sqrt();
            // float32 norms of float32 slices: agreement to a few ulps of float32.
            assert!((rss - global).abs() <= 1e-5 * global, "{p}: layers {rss} vs global {global}");
        }
    }
}

/// A taken port stops the run before any training, naming the address and the config key.
#[test]
fn busy_metrics_port_fails_before_training() {
    let data = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let args = smoke(&run, &data, &["--set", "metrics.enabled=true", "--set", &format!("metrics.port_base={port}")]);
    let out = fails(&args.iter().map(|s| s.as_str()).collect::<Vec<_>>(), &[&format!("127.0.0.1:{port}"), "metrics.port_base", "in use"]);
    assert!(!out.contains("step "), "trained anyway: {out}");
    assert!(!run.join("metrics.jsonl").exists());
    fails(&smoke(&run, &data, &["--set", "metrics.host=localhost"]).iter().map(|s| s.as_str()).collect::<Vec<_>>(), &["metrics.host", "an IP address"]);
}

#[test]
fn plot_command_writes_pngs_and_names_a_missing_log() {
    let data = mnist_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    ok(&smoke(&run, &data, &["--set", "train.iterations=4"]).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    std::fs::remove_dir_all(run.join("plots")).unwrap();
    let out = ok(&["plot", run.to_str().unwrap()]);
    for f in ["losses.png", "grad_norms.png"] {
        assert!(out.contains(f), "{out}");
        assert!(is_png(&run.join("plots").join(f)), "{f}");
    }
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails(&["plot", empty.to_str().unwrap()], &["metrics.jsonl"]);
}
