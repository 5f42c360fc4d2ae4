//! The read-only HTTP exporter: `GET /metrics` (Prometheus text format) and `GET /healthz`,
//! nothing else, served by axum on a current-thread tokio runtime in a thread of its own so
//! that a scrape never waits on, or delays, the training loop.

use anyhow::{Context, Result};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

/// The content type of the Prometheus text exposition format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A running exporter; dropping it stops the server and joins its thread.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Receives once the server thread has finished.
    done: std::sync::mpsc::Receiver<()>,
}

impl Server {
    /// Binds `host:port` now (so that a busy port is an error before training starts) and
    /// serves `registry` from a new thread. Port 0 takes any free port; see `addr`.
    pub fn start(registry: Registry, host: &str, port: u16) -> Result<Server> {
        let shown = display_addr(host, port);
        let ip: std::net::IpAddr = host.parse().with_context(|| format!("metrics host {host:?} is not an IP address"))?;
        let listener = TcpListener::bind((ip, port)).with_context(|| format!("cannot serve metrics on {shown}"))?;
        let addr = listener.local_addr().context("metrics listener address")?;
        listener.set_nonblocking(true).context("metrics listener")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("cannot start the metrics server's runtime")?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(registry);
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = rx.await;
                        })
                        .await
                });
                if let Err(e) = served {
                    tracing::error!("metrics server on {addr} stopped: {e}");
                }
                let _ = done_tx.send(());
            })
            .context("cannot start the metrics server thread")?;
        Ok(Server { addr, shutdown: Some(tx), thread: Some(thread), done })
    }

    /// The address actually bound (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // A scraper holding a connection open must not keep the process from ending: wait a
        // little for the server to close, then leave the thread to end with the process.
        if self.done.recv_timeout(std::time::Duration::from_secs(2)).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// `host:port`, with brackets around an IPv6 host.
pub fn display_addr(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn router(registry: Registry) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    match super::encode(&registry) {
                        Ok(body) => ([(header::CONTENT_TYPE, TEXT_FORMAT)], body).into_response(),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found: this server has /metrics and /healthz\n") })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn get(url: &str) -> (u16, String, String) {
        match ureq::get(url).call() {
            Ok(r) => {
                let ct = r.content_type().to_string();
                (r.status(), ct, r.into_string().unwrap())
            }
            Err(ureq::Error::Status(code, r)) => (code, String::new(), r.into_string().unwrap()),
            Err(e) => panic!("GET {url}: {e}"),
        }
    }

    #[test]
    fn serves_metrics_and_healthz_and_nothing_else() {
        let m = Metrics::new(1).unwrap();
        m.set_world_size(2);
        let s = Server::start(m.registry(), "127.0.0.1", 0).unwrap();
        let base = format!("http://{}", s.addr());
        let (code, ct, body) = get(&format!("{base}/metrics"));
        assert_eq!(code, 200);
        assert_eq!(ct, "text/plain");
        assert!(body.contains("gandist_world_size{rank=\"1\"} 2"), "{body}");
        // The served text is the registry's current state, not a snapshot taken at start.
        m.set_world_size(5);
        assert!(get(&format!("{base}/metrics")).2.contains("gandist_world_size{rank=\"1\"} 5"));
        assert_eq!(get(&format!("{base}/healthz")).0, 200);
        assert_eq!(get(&format!("{base}/healthz")).2, "ok\n");
        for path in ["/", "/metrics/x", "/api/v1/query", "/healthz2"] {
            assert_eq!(get(&format!("{base}{path}")).0, 404, "{path}");
        }
        // Read-only: other methods are refused.
        let post = ureq::post(&format!("{base}/metrics")).send_string("x");
        assert!(matches!(post, Err(ureq::Error::Status(405, _))), "{post:?}");
        drop(s);
        assert!(ureq::get(&format!("{base}/healthz")).call().is_err(), "the server stops when dropped");
    }

    #[test]
    fn busy_port_fails_at_start_naming_the_address() {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let err = Server::start(Metrics::new(0).unwrap().registry(), "127.0.0.1", port).err().expect("port is taken");
        let msg = format!("{err:#}");
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(msg.to_lowercase().contains("in use"), "{msg}");
        let err = Server::start(Metrics::new(0).unwrap().registry(), "localhost", 0).err().expect("not an IP");
        assert!(format!("{err:#}").contains("\"localhost\""), "{err:#}");
        assert_eq!(display_addr("::1", 9400), "[::1]:9400");
    }
}
