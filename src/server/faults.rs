//! Fault injection and traffic shaping for `uploadfs serve`: a seeded random source that
//! decides, per part/chunk upload or download, whether to answer 503, 429 with
//! `Retry-After`, or drop the connection (before or after the request was processed);
//! a fixed per-request latency; and a server-wide bandwidth cap.
//!
//! Everything here can be changed at run time through the control endpoint, so a test can
//! turn faults on and off around the step it is checking.

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
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            rate: AtomicU64::new(bytes_per_sec),
            next: Mutex::new(Instant::now()),
        }
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
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
