//! Fault injection and traffic shaping for `uploadfs serve`: a seeded random source that
//! decides, per part/chunk upload or download, whether to answer 503, 429 with
//! `Retry-After`, or drop the connection (before or after the request was processed);
//! a fixed per-request latency; and a server-wide bandwidth cap.
//!
//! Everything here can be changed at run time through the control endpoint, so a test can
//! turn faults on and off around the step it is checking.
//!
//! "Bad answers" ([`BadAnswers`]) model a broken proxy or captive portal between client and
//! service: `POST /_uploadfs/control {"bad_answers": {"mode": M, "count": N,
//! "path_contains": "...", "method": "PUT"}}` makes the next `N` protocol responses whose
//! request path contains `path_contains` (and, when given, whose method is `method`) come
//! back spoiled, whatever the protocol. Modes ([`BadMode`]):
//! - `html`: status 200, an HTML sign-in page instead of the answer;
//! - `garbage_json`: status 200, `application/json` body `{"unexpected": ` (cut JSON);
//! - `empty`: status 200 with an empty body;
//! - `truncate`: the original status and headers, `Content-Length` promising the whole
//!   body, half of it sent, then the connection ends;
//! - `wrong_length`: the original status and headers with half the body and a matching
//!   `Content-Length` (a consistent but short answer, e.g. a short download);
//! - `flip` (alias `wrong_content`): the original answer with every byte inverted (same
//!   length), so read-back verification can be tested.
//!
//! `count` 0 (or a rule with an unknown mode refused by the control endpoint) turns the
//! rule off; spoiled answers are counted in the introspection (`bad_answers_sent`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// Which kind of request a fault roll is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// A part or chunk upload (or a whole small upload).
    Upload,
    /// A content download.
    Download,
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 Service Unavailable with `Retry-After: 0`.
    Unavailable,
    /// 429 Too Many Requests with `Retry-After` (a fraction of a second, written "0" or "1").
    TooMany,
    /// Close the connection without answering, before doing anything.
    DropBefore,
    /// Do the work, then close the connection without answering.
    DropAfter,
}

/// Counters shown by the introspection endpoint.
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub requests: AtomicU64,
    pub faults_injected: AtomicU64,
    pub bytes_received: AtomicU64,
    /// Answers replaced by the bad-answer rule.
    pub bad_answers_sent: AtomicU64,
    /// Upload sessions dropped by the `forget_sessions` control.
    pub sessions_forgotten: AtomicU64,
}

pub struct Faults {
    rate: Mutex<f64>,
    rng: Mutex<SmallRng>,
}

impl Faults {
    pub fn new(rate: f64, seed: u64) -> Faults {
        Faults {
            rate: Mutex::new(rate.clamp(0.0, 1.0)),
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }

    pub fn set_rate(&self, rate: f64) {
        *self.rate.lock().unwrap_or_else(|p| p.into_inner()) = rate.clamp(0.0, 1.0);
    }

    pub fn rate(&self) -> f64 {
        *self.rate.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decide the fate of one request of kind `op`.
    pub fn roll(&self, op: FaultOp) -> Option<Fault> {
        let rate = self.rate();
        if rate <= 0.0 {
            return None;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        if rng.gen::<f64>() >= rate {
            return None;
        }
        Some(match (op, rng.gen_range(0..4)) {
            (_, 0) => Fault::Unavailable,
            (_, 1) => Fault::TooMany,
            (_, 2) => Fault::DropBefore,
            (FaultOp::Upload, _) => Fault::DropAfter,
            (FaultOp::Download, _) => Fault::DropBefore,
        })
    }
}

/// A server-wide bandwidth cap (token bucket with one slot timeline). Rate 0 = unlimited.
pub struct Throttle {
    rate: AtomicU64,
    next: Mutex<Instant>,
    /// File bytes sent by downloads (`bytes_served` in the introspection).
    served: AtomicU64,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            rate: AtomicU64::new(bytes_per_sec),
            next: Mutex::new(Instant::now()),
            served: AtomicU64::new(0),
        }
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    /// Count `n` file bytes sent by a download.
    pub fn add_served(&self, n: u64) {
        self.served.fetch_add(n, Ordering::Relaxed);
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Wait until `n` more bytes may pass.
    pub async fn take(&self, n: u64) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = (*next).max(now);
            *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
            start
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// How a bad answer is spoiled (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadMode {
    Html,
    GarbageJson,
    Empty,
    Truncate,
    WrongLength,
    #[serde(alias = "wrong_content")]
    Flip,
}

/// The control endpoint's `bad_answers` object.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BadRule {
    pub mode: BadMode,
    /// How many matching answers to spoil.
    pub count: u64,
    /// Only requests whose path contains this (empty: every protocol request).
    #[serde(default)]
    pub path_contains: String,
    /// Only requests of this method (any when absent), e.g. `PUT`.
    #[serde(default)]
    pub method: Option<String>,
}

/// The active bad-answer rule, if any.
#[derive(Default)]
pub struct BadAnswers {
    rule: Mutex<Option<BadRule>>,
}

impl BadAnswers {
    /// Replace the rule (count 0 clears it).
    pub fn set(&self, rule: BadRule) {
        *self.rule.lock().unwrap_or_else(|p| p.into_inner()) = (rule.count > 0).then_some(rule);
    }

    /// The mode to apply to this request, using up one of the rule's answers.
    pub fn take(&self, method: &str, path: &str) -> Option<BadMode> {
        let mut guard = self.rule.lock().unwrap_or_else(|p| p.into_inner());
        let rule = guard.as_mut()?;
        if !path.contains(&rule.path_contains)
            || rule
                .method
                .as_deref()
                .is_some_and(|m| !m.eq_ignore_ascii_case(method))
        {
            return None;
        }
        let mode = rule.mode;
        rule.count -= 1;
        if rule.count == 0 {
            *guard = None;
        }
        Some(mode)
    }
}
