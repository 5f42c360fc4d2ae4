//! A deadline for blocking waits on the host: a rank arms it before a call that waits for
//! its peers (a host barrier, an MPI collective, `ncclCommInitRank`) and disarms it after. If
//! the call is still running when the deadline passes, a helper thread reports what was
//! overdue and runs the expiry action, which ends the whole job (`MPI_Abort`): the waiting
//! thread itself cannot act, since it is blocked inside the call.
//!
//! The helper thread polls every `POLL` instead of being woken, so that arming and disarming
//! (once per iteration and more) cost a mutex and no context switch; a deadline then fires up
//! to `POLL` late, which is nothing against deadlines of seconds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

struct Armed {
    what: String,
    deadline: Instant,
    timeout: Duration,
}

#[derive(Default)]
struct State {
    armed: Option<Armed>,
    shutdown: bool,
}

pub struct Watchdog {
    state: Arc<Mutex<State>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Disarms the watchdog when dropped.
pub struct Guard<'a> {
    watchdog: &'a Watchdog,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.watchdog.state.lock().unwrap_or_else(|e| e.into_inner()).armed = None;
    }
}

impl Watchdog {
    /// Starts the helper thread. `on_expiry` receives a message naming the overdue wait and
    /// its limit; it runs at most once per arming, on the helper thread.
    pub fn start(on_expiry: impl Fn(&str) + Send + 'static) -> Watchdog {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("gandist-deadline".into())
            .spawn(move || loop {
                std::thread::sleep(POLL);
                let overdue = {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    if s.shutdown {
                        return;
                    }
                    match &s.armed {
                        Some(a) if Instant::now() >= a.deadline => s.armed.take(),
                        _ => None,
                    }
                };
                if let Some(a) = overdue {
                    on_expiry(&format!("{} did not complete within {:?}", a.what, a.timeout));
                }
            })
            .expect("a thread can be started");
        Watchdog { state, thread: Some(thread) }
    }

    /// Arms the deadline `timeout` from now for `what` until the guard is dropped. One wait
    /// at a time: arming again replaces the previous deadline.
    pub fn arm(&self, what: impl Into<String>, timeout: Duration) -> Guard<'_> {
        let armed = Armed { what: what.into(), deadline: Instant::now() + timeout, timeout };
        self.state.lock().unwrap_or_else(|e| e.into_inner()).armed = Some(armed);
        Guard { watchdog: self }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn watchdog() -> (Watchdog, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        (Watchdog::start(move |m| tx.lock().unwrap().send(m.to_string()).unwrap()), rx)
    }

    #[test]
    fn an_overdue_wait_fires_once_with_its_name_and_limit() {
        let (w, rx) = watchdog();
        let started = Instant::now();
        let g = w.arm("host barrier after rank 0's work", Duration::from_millis(100));
        let msg = rx.recv_timeout(Duration::from_secs(5)).expect("the deadline fires");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(2), "{took:?}");
        assert_eq!(msg, "host barrier after rank 0's work did not complete within 100ms");
        // It fired once, although the guard is still held.
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(g);
    }

    #[test]
    fn a_wait_that_ends_in_time_does_not_fire() {
        let (w, rx) = watchdog();
        for _ in 0..20 {
            let _g = w.arm("quick", Duration::from_millis(150));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(rx.recv_timeout(Duration::from_millis(400)).is_err(), "disarmed waits must not fire");
        // Re-arming after many quick waits still works.
        let _g = w.arm("slow", Duration::from_millis(50));
        assert!(rx.recv_timeout(Duration::from_secs(5)).unwrap().starts_with("slow"));
    }
}
