//! What `uploadfs status` shows of one mount: every file not in sync, with the progress of
//! its running upload, its last error and the background retries.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::catalog::NodeState;
use crate::fs::Fs;

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
}

/// What a running daemon reports (`uploadfs status`, `unmount`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountStatus {
    pub write_back: bool,
    pub pending: Vec<FileStatus>,
    /// Queued or uploading background uploads (what `unmount` waits for).
    pub busy: usize,
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
            let q: HashMap<u64, (u32, Option<Instant>)> = g
                .queue
                .iter()
                .map(|(i, e)| (*i, (e.attempts, e.not_before)))
                .collect();
            (q, g.active.clone(), g.write_back)
        };
        let busy = self.uploads.busy();
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
            let state = match (p, row.state) {
                (Some(_), _) => "uploading".to_string(),
                (None, NodeState::Committed) => "staged".to_string(),
                (None, s) => s.as_str().to_string(),
            };
            let (attempts, retry) = queue.get(&row.ino).copied().unwrap_or((0, None));
            pending.push(FileStatus {
                path,
                state,
                size: row.size,
                bytes_done,
                parts_done,
                rate,
                eta_seconds: eta,
                error: row.last_error.clone(),
                attempts,
                retry_in_seconds: retry.filter(|t| *t > now).map(|t| (t - now).as_secs_f64()),
            });
        }
        pending.sort_by(|a, b| a.path.cmp(&b.path));
        MountStatus {
            write_back,
            pending,
            busy,
            conflicts: self.conflicts(),
        }
    }
}
