//! The filesystem's side of its target's weather (the target's health itself is
//! [`crate::remote::health`]): what a namespace read does when the target cannot be
//! reached or refuses the mount, and what `status` says about it.
//!
//! - During an outage a directory listing is not even tried: the view comes from the
//!   catalog at once and is marked stale until a listing succeeds again. The listing that
//!   discovers the outage runs as a quick read ([`crate::remote::health::quick`]): one
//!   attempt, then the catalog.
//! - A listing the target refuses — the token (401/403) on any directory, or the root
//!   folder missing (404) — is an error for `ls` (EACCES, ENOENT) as long as that
//!   directory has not been listed in this mount, never an empty directory; `status`
//!   shows the error until a listing succeeds.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use crate::catalog::ROOT_INO;
use crate::remote::{ErrorKind, TargetError};

use super::{Error, Fs, FsResult};

#[derive(Debug, Default)]
struct Inner {
    /// Directories listed by the target in this mount.
    listed: HashSet<u64>,
    /// Directories whose listing was refused, with the error, until one succeeds.
    refused: HashMap<u64, Error>,
    /// Directories shown from the catalog because the target was unreachable.
    stale: HashSet<u64>,
}

/// The listing side of outages, one per mount.
#[derive(Debug, Default)]
pub(super) struct Outage {
    inner: Mutex<Inner>,
}

impl Outage {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Fs {
    /// The target cannot be reached now: a listing would only wait for it.
    pub(super) fn target_unreachable(&self) -> bool {
        self.target.health().is_some_and(|h| h.unreachable_now())
    }

    /// `dir` is shown from the catalog without asking the target (it is unreachable).
    pub(super) fn listing_skipped(&self, dir: u64) {
        self.outage.lock().stale.insert(dir);
    }

    /// The target listed `dir`.
    pub(super) fn listing_answered(&self, dir: u64) {
        let mut g = self.outage.lock();
        g.listed.insert(dir);
        g.refused.remove(&dir);
        g.stale.remove(&dir);
    }

    /// The listing of `dir` failed with `e`: an outage makes the view stale, a refusal is
    /// remembered for [`Fs::listing_refused`].
    pub(super) fn listing_failed(&self, dir: u64, e: &TargetError) {
        let mut g = self.outage.lock();
        let refused =
            e.kind == ErrorKind::Auth || (e.kind == ErrorKind::NotFound && dir == ROOT_INO);
        if refused {
            let mut err = Error::from(e.clone());
            let mut message = format!("listing {} refused: {e}", self.opts.target_name);
            if e.kind == ErrorKind::Auth && !self.opts.token_source.is_empty() {
                message.push_str(&format!(
                    " (the token comes from {})",
                    self.opts.token_source
                ));
            }
            err.message = message.into();
            g.refused.insert(dir, err);
        } else if e.kind == ErrorKind::Unavailable {
            g.stale.insert(dir);
        }
    }

    /// `Err` for a directory whose listing the target refused and that this mount never
    /// listed: `ls` says so instead of showing it empty.
    pub(super) fn listing_refused(&self, dir: u64) -> FsResult<()> {
        let g = self.outage.lock();
        match g.refused.get(&dir) {
            Some(e) if !g.listed.contains(&dir) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// For `status`: whether some view is answered from the catalog during an outage, and
    /// the refused listing, if any (the root's first).
    pub(super) fn listing_status(&self) -> (bool, Option<String>) {
        let g = self.outage.lock();
        let refused = g
            .refused
            .get(&ROOT_INO)
            .or_else(|| g.refused.values().next())
            .map(|e| e.to_string());
        (!g.stale.is_empty(), refused)
    }
}
