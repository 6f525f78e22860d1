//! The health of one target: one state shared by every request a mount (or `put`) sends
//! to it, so an outage is noticed once and every operation agrees on it.
//!
//! [`super::http::HttpClient::exchange`] reports each attempt here: a whole answer means
//! the server is reachable (a 429 or 5xx: `degraded`, anything else: `up`); a request
//! that could not reach it at all (connection refused, DNS, TLS handshake, connect
//! timeout: a [`Cause`]) starts the *outage clock*. The clock is shared: every retry loop,
//! of every layer (a listing, an upload's session, each of its parts), gives up when it
//! runs past [`Health::outage_timeout`], so a write during an outage fails within that
//! bound however many requests it takes, instead of one retry budget per request.
//!
//! ```text
//!   up ──(429/5xx)──► degraded ──(good answer)──► up
//!    │                   │
//!    └─(unreachable)─────┴─► degraded, outage clock running
//!                              │ outage_timeout without an answer
//!                              ▼
//!                            down: requests fail at once (no request leaves), the
//!                              │   probe alone sends one request every PROBE_* seconds
//!                              └─(any answer to the probe)──► up (or degraded)
//! ```
//!
//! Subscribers ([`Health::subscribe`]) see each change: the filesystem retries the uploads
//! that waited for the target when it answers again. The probe ([`Health::probe`]) runs
//! while the target is down, as the one caller let through.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ErrorKind, Target, TargetError};

/// First wait between two probes of a down target; doubles up to [`PROBE_MAX`].
const PROBE_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two probes: a target that comes back is noticed within this.
const PROBE_MAX: Duration = Duration::from_secs(10);

/// The three states of a target (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Up,
    Degraded,
    Down,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Up => "up",
            Phase::Degraded => "degraded",
            Phase::Down => "down",
        }
    }
}

/// Why a request could not reach the server at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Nothing listens at the address (the server or its proxy is stopped).
    Refused,
    /// The host name does not resolve.
    Dns,
    /// The TLS handshake failed (a refused certificate is an `Auth` error instead).
    Tls,
    /// No connection within the connect timeout.
    Timeout,
    /// Any other failure to connect (unreachable network, reset during the handshake).
    Connect,
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cause::Refused => "connection refused",
            Cause::Dns => "DNS lookup failed",
            Cause::Tls => "TLS handshake failed",
            Cause::Timeout => "connection timed out",
            Cause::Connect => "cannot connect",
        })
    }
}

/// What `uploadfs status` shows of a target's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthView {
    pub state: Phase,
    /// Since when the target is in this state, ms since the epoch.
    pub since_ms: i64,
    /// The last failure, with its cause (`connection refused: ...`).
    pub last_error: Option<String>,
    /// Requests cannot reach the server now (down, or an outage's clock runs).
    #[serde(default)]
    pub unreachable: bool,
}

struct State {
    phase: Phase,
    since_ms: i64,
    /// When the first of the unanswered requests of this outage failed (`None`: the server
    /// answered since).
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

/// The shared health of one configured target.
pub struct Health {
    target: String,
    outage: Duration,
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<Phase>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("target", &self.target)
            .field("view", &self.view())
            .finish()
    }
}

tokio::task_local! {
    /// Set for the probe: its request goes out although the target is down, once.
    static PROBING: ();
    /// Set for namespace reads: a request that cannot reach the server is not retried.
    static QUICK: ();
}

/// Run `f` as a probe: let through while the target is down, and tried once.
pub async fn probing<F: Future>(f: F) -> F::Output {
    PROBING.scope((), f).await
}

/// Run `f` as a namespace read: it answers from what is known at once rather than wait
/// for an unreachable server (a request that cannot connect is not tried again).
pub async fn quick<F: Future>(f: F) -> F::Output {
    QUICK.scope((), f).await
}

/// The current task is a probe.
pub fn is_probe() -> bool {
    PROBING.try_with(|_| ()).is_ok()
}

/// The current task is a namespace read ([`quick`]).
pub fn is_quick() -> bool {
    QUICK.try_with(|_| ()).is_ok()
}

impl Health {
    pub fn new(target: &str, outage: Duration) -> Arc<Health> {
        let (changed, _) = tokio::sync::watch::channel(Phase::Up);
        Arc::new(Health {
            target: target.to_string(),
            outage,
            state: Mutex::new(State {
                phase: Phase::Up,
                since_ms: crate::catalog::now_ms(),
                failing_since: None,
                last_error: None,
            }),
            changed,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long operations keep trying an unreachable target before they fail.
    pub fn outage_timeout(&self) -> Duration {
        self.outage
    }

    /// The config name of the target.
    pub fn target(&self) -> &str {
        &self.target
    }

    fn enter(&self, st: &mut State, phase: Phase) {
        if st.phase == phase {
            return;
        }
        let was = st.phase;
        st.phase = phase;
        st.since_ms = crate::catalog::now_ms();
        match phase {
            Phase::Down => tracing::warn!(
                target_name = %self.target,
                cause = st.last_error.as_deref().unwrap_or(""),
                "the target is down; writes fail, listings answer from the catalog, \
                 uploads wait for it"
            ),
            Phase::Up if was == Phase::Down => {
                tracing::info!(target_name = %self.target, "the target answers again")
            }
            _ => tracing::debug!(target_name = %self.target, from = was.as_str(),
                to = phase.as_str(), "target health"),
        }
        self.changed.send_replace(phase);
    }

    /// A whole answer came back: the server is reachable. `busy`: it asked to be tried
    /// again (429, 5xx).
    pub fn answered(&self, busy: Option<&str>) {
        let mut st = self.lock();
        st.failing_since = None;
        match busy {
            Some(reason) => {
                st.last_error = Some(reason.to_string());
                self.enter(&mut st, Phase::Degraded);
            }
            None => self.enter(&mut st, Phase::Up),
        }
    }

    /// A request to `server` (host:port) could not reach it: the outage clock starts (or
    /// runs on).
    pub fn unreachable(&self, cause: Cause, server: &str) {
        let mut st = self.lock();
        let now = Instant::now();
        let since = *st.failing_since.get_or_insert(now);
        st.last_error = Some(if server.is_empty() {
            cause.to_string()
        } else {
            format!("{cause} ({server})")
        });
        if now.duration_since(since) >= self.outage {
            self.enter(&mut st, Phase::Down);
        } else if st.phase == Phase::Up {
            self.enter(&mut st, Phase::Degraded);
        }
    }

    /// `Err` when no request should go out now: the target is down (or its outage clock
    /// ran out). The probe is let through.
    pub fn gate(&self) -> Result<(), TargetError> {
        if is_probe() {
            return Ok(());
        }
        let mut st = self.lock();
        if st.phase != Phase::Down {
            match st.failing_since {
                Some(t) if t.elapsed() >= self.outage => self.enter(&mut st, Phase::Down),
                _ => return Ok(()),
            }
        }
        Err(self.error_locked(&st))
    }

    /// When retries of an unreachable server must stop (the running outage's clock).
    pub fn deadline(&self) -> Option<Instant> {
        self.lock().failing_since.map(|t| t + self.outage)
    }

    /// Requests cannot reach the server right now (down, or its outage clock runs).
    pub fn unreachable_now(&self) -> bool {
        let st = self.lock();
        st.phase == Phase::Down || st.failing_since.is_some()
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    pub fn view(&self) -> HealthView {
        let st = self.lock();
        HealthView {
            state: st.phase,
            since_ms: st.since_ms,
            last_error: st.last_error.clone(),
            unreachable: st.phase == Phase::Down || st.failing_since.is_some(),
        }
    }

    /// The error of an operation the outage stopped: the target and the cause.
    pub fn error(&self) -> TargetError {
        self.error_locked(&self.lock())
    }

    fn error_locked(&self, st: &State) -> TargetError {
        let cause = st
            .last_error
            .clone()
            .unwrap_or_else(|| "no answer".to_string());
        let secs = st
            .failing_since
            .map(|t| format!(" for {} s", t.elapsed().as_secs()))
            .unwrap_or_default();
        TargetError::new(
            ErrorKind::Unavailable,
            format!("target {} unreachable{secs}: {cause}", self.target),
        )
    }

    /// Each change of phase, for those who act on it.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Phase> {
        self.changed.subscribe()
    }

    /// While the target is down, send it one cheap request ([`Target::check`]) now and
    /// then until it answers; runs until the process ends. Any answer, even a refusal of
    /// the token, means it is reachable again.
    pub async fn probe(self: Arc<Self>, target: Arc<dyn Target>) {
        let mut changes = self.subscribe();
        loop {
            while self.phase() != Phase::Down {
                if changes.changed().await.is_err() {
                    return;
                }
            }
            let mut wait = PROBE_FIRST;
            while self.phase() == Phase::Down {
                tokio::time::sleep(wait).await;
                let r = probing(target.check()).await;
                tracing::debug!(target_name = %self.target, ok = r.is_ok(), "probed the target");
                wait = (wait * 2).min(PROBE_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_outage_runs_its_clock_then_goes_down_and_an_answer_ends_it() {
        let h = Health::new("t", Duration::from_millis(50));
        let mut rx = h.subscribe();
        assert!(h.gate().is_ok());
        h.unreachable(Cause::Refused, "127.0.0.1:9");
        assert_eq!(h.phase(), Phase::Degraded);
        assert!(h.gate().is_ok(), "the clock still runs");
        assert!(h.deadline().is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let e = h.gate().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("target t unreachable"), "{e}");
        assert!(e.message.contains("connection refused"), "{e}");
        assert_eq!(h.phase(), Phase::Down);
        assert!(
            probing(async { h.gate() }).await.is_ok(),
            "the probe goes out"
        );
        h.answered(None);
        assert_eq!(h.phase(), Phase::Up);
        assert!(h.deadline().is_none());
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), Phase::Up);
    }

    #[test]
    fn a_busy_server_is_degraded_but_reachable() {
        let h = Health::new("t", Duration::from_secs(15));
        h.answered(Some("server answered 503"));
        assert_eq!(h.phase(), Phase::Degraded);
        assert!(!h.unreachable_now());
        assert_eq!(h.view().last_error.as_deref(), Some("server answered 503"));
        h.answered(None);
        assert_eq!(h.phase(), Phase::Up);
    }
}
