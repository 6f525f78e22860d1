//! What `uploadfs status` shows of one mount: every file not in sync, with the progress of
//! its running upload, its last error and the background retries; and the target's
//! health, with what the mount does about it (views answered from the catalog, a refused
//! listing).
//!
//! A file's state is what will happen to it: `uploading` (while the target is unreachable,
//! with the outage as its error), `retrying` (its last attempt failed because the target
//! could not be reached: `attempts` so far, tried again when the target answers), `failed`
//! (with its error; write-back retries it after `retry_in_seconds`, the default mode at
//! the next close or mount), `queued`, `staged` or `incomplete`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::catalog::NodeState;
use crate::fs::Fs;
use crate::remote::health::HealthView;

/// One file in `status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileStatus {
    pub path: String,
    /// `queued`, `uploading`, `failed`, `staged` (open for writing) or `incomplete`.
    pub state: String,
    pub size: u64,
    /// Bytes the server accepted in the current attempt.
    pub bytes_done: u64,
    pub parts_done: u64,
    /// Bytes per second of the current attempt.
    pub rate: Option<f64>,
    /// Seconds left at that rate.
    pub eta_seconds: Option<f64>,
    pub error: Option<String>,
    /// Failed background attempts so far.
    pub attempts: u32,
    /// Seconds until the next attempt of a failed upload.
    pub retry_in_seconds: Option<f64>,
    /// The next attempt comes when the target answers again (state `retrying`).
    #[serde(default)]
    pub waiting_for_target: bool,
}

/// What a running daemon reports (`uploadfs status`, `unmount`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountStatus {
    pub write_back: bool,
    pub pending: Vec<FileStatus>,
    /// Queued or uploading background uploads (what `unmount` waits for).
    pub busy: usize,
    /// The target's health (`None`: a target without a network).
    #[serde(default)]
    pub health: Option<HealthView>,
    /// Uploads of `busy` that wait for the target to answer again.
    #[serde(default)]
    pub waiting: usize,
    /// Some directory is shown from the catalog because the target was unreachable.
    #[serde(default)]
    pub stale: bool,
    /// The target refused a listing (token, missing folder): what `ls` answers.
    #[serde(default)]
    pub listing_error: Option<String>,
    /// Files another writer changed while they were open here: their version kept the
    /// name, this mount's landed beside it ([`super::conflict`]).
    #[serde(default)]
    pub conflicts: Vec<super::ConflictStatus>,
}

impl Fs {
    /// Pending, uploading and failed files with their progress (`uploadfs status`).
    pub fn status(&self) -> MountStatus {
        let (queue, active, write_back) = {
            let g = self.uploads.lock();
            let q: HashMap<u64, (u32, Option<Instant>, bool)> = g
                .queue
                .iter()
                .map(|(i, e)| (*i, (e.attempts, e.not_before, e.waiting && !e.running)))
                .collect();
            (q, g.active.clone(), g.write_back)
        };
        let busy = self.uploads.busy();
        let health = self.target.health();
        let outage = health
            .filter(|h| h.unreachable_now())
            .map(|h| h.error().message);
        let now = Instant::now();
        let mut pending = vec![];
        for (path, row) in self.pending() {
            let p = active.get(&row.ino);
            let (bytes_done, parts_done, rate, eta) = match p {
                Some(p) => {
                    let b = p.done();
                    let size = p.size.load(Ordering::Relaxed);
                    let rate = p
                        .elapsed()
                        .filter(|s| *s > 0.2 && b > 0)
                        .map(|s| b as f64 / s);
                    let eta = rate.map(|r| size.saturating_sub(b) as f64 / r);
                    (b, p.parts.load(Ordering::Relaxed), rate, eta)
                }
                None => (0, 0, None, None),
            };
            let (attempts, retry, waiting) =
                queue.get(&row.ino).copied().unwrap_or((0, None, false));
            let state = match (p, row.state) {
                (Some(_), _) => "uploading".to_string(),
                (None, _) if waiting => "retrying".to_string(),
                (None, NodeState::Committed) => "staged".to_string(),
                (None, s) => s.as_str().to_string(),
            };
            // A running upload during an outage is waiting for the target: say so.
            let error = match (p, &outage) {
                (Some(_), Some(o)) => Some(o.clone()),
                _ => row.last_error.clone(),
            };
            pending.push(FileStatus {
                path,
                state,
                size: row.size,
                bytes_done,
                parts_done,
                rate,
                eta_seconds: eta,
                error,
                attempts,
                retry_in_seconds: retry.filter(|t| *t > now).map(|t| (t - now).as_secs_f64()),
                waiting_for_target: waiting,
            });
        }
        pending.sort_by(|a, b| a.path.cmp(&b.path));
        let (stale, listing_error) = self.listing_status();
        // During an outage every view comes from the catalog.
        let stale = stale || outage.is_some();
        MountStatus {
            write_back,
            pending,
            busy,
            health: health.map(|h| h.view()),
            waiting: queue.values().filter(|(_, _, w)| *w).count(),
            stale,
            listing_error,
            conflicts: self.conflicts(),
        }
    }
}
