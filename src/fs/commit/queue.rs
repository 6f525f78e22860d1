//! Background uploads: write-back's queue and its worker.
//!
//! In write-back mode a `close()` makes the stage durable (fsync of the stage file, its
//! journal row written and the catalog synced) and queues the inode here; a worker then
//! uploads queued files a few at a time ([`PARALLEL_UPLOADS`]) through the same
//! [`Fs::commit`] as the synchronous path, so renames, unlinks and replaced remote files
//! are handled identically. A failed upload (after the client's own retries) stays queued
//! with its error and is tried again with exponential backoff; it is never dropped.
//! Files recovered at mount (`recover`) go through the same queue in both modes.
//!
//! The same registry tracks the progress of every running upload, synchronous ones too,
//! for `uploadfs status` and `uploadfs unmount`.
//!
//! Outages: an upload that failed because the target could not be reached (in either
//! mode, synchronous ones included: [`Fs::failed_in_outage`]) stays queued, *waiting for
//! the target*, with its attempt count; the worker leaves it alone until the target's
//! health says it answers again, then tries every waiting file at once. The worker also
//! runs the health's probe while the target is down ([`Fs::run_uploads`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::catalog::NodeState;
use crate::fs::handle::OpenFile;
use crate::fs::{Error, Fs, FsResult};
use crate::write::digests::Hashers;
use crate::write::uploader::Progress;

/// as many as `uploadfs put -r` sends by default, so many small files drain as fast.
pub const PARALLEL_UPLOADS: usize = 8;
/// First wait before a failed background upload is tried again; doubles per failure.
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
/// Longest wait between two attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// On targets without remote rename, a closed file waits this long before its upload
/// starts, so the rename that tools do right after closing a temporary file (rsync's
/// `.name.XXXXXX`) is applied first and the file lands under its final name.
const SETTLE_NO_RENAME: Duration = Duration::from_secs(2);
/// The worker looks at the queue at least this often (a lost wake-up costs no more).
const WORKER_TICK: Duration = Duration::from_secs(5);

/// Files up to this size closed in write-back mode are made durable by a copy of their
/// data in the catalog, written with the journal row, instead of a sync of their stage:
/// one file synced per `close()` instead of two. Measured here, `cp -r` of 1000 files of
/// 16 KiB into a write-back mount with uploads discarded (the `null` target), medians of
/// 8 runs: 1.17 s with the stage synced, 1.00 s with the copy, 0.95 s with no sync of the
/// data at all. Larger files go the other way: the copy is written twice more (the log,
/// then the database at a checkpoint), which grows with the size while a sync does not.
pub(in crate::fs) const STAGE_COPY_MAX: u64 = 64 * 1024;

#[derive(Debug, Default)]
pub(super) struct Entry {
    /// Failed attempts so far.
    pub(super) attempts: u32,
    /// Not before this instant (backoff after a failure).
    pub(super) not_before: Option<Instant>,
    /// Queued again while its upload ran: upload once more after this attempt.
    pub(super) again: bool,
    /// Queued by recovery at mount: look for a finished upload remotely first.
    pub(super) recovered: bool,
    pub(super) running: bool,
    /// The last attempt failed because the target was unreachable: tried again when it
    /// answers, not on a timer.
    pub(super) waiting: bool,
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) write_back: bool,
    pub(super) queue: BTreeMap<u64, Entry>,
    /// Progress of uploads running now (write-back and synchronous).
    pub(super) active: HashMap<u64, Arc<Progress>>,
    /// Set by `unmount --force`: do not drain at exit.
    pub(super) abandon: bool,
}

/// The background upload registry of one mount.
#[derive(Debug, Default)]
pub struct Uploads {
    inner: Mutex<Inner>,
    wake: tokio::sync::Notify,
    changed: tokio::sync::Notify,
}

impl Uploads {
    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn write_back(&self) -> bool {
        self.lock().write_back
    }

    /// Queue an inode for a background upload, after `delay` if given.
    pub(in crate::fs) fn enqueue(&self, ino: u64, recovered: bool, delay: Option<Duration>) {
        {
            let mut g = self.lock();
            let e = g.queue.entry(ino).or_default();
            if e.running {
                e.again = true;
            }
            e.not_before = delay.map(|d| Instant::now() + d);
            e.waiting = false;
            if !recovered {
                // New data from a close: a fresh start, not a retry.
                e.attempts = 0;
            }
            e.recovered |= recovered;
        }
        self.wake.notify_one();
    }

    /// Progress handle of an upload that starts now.
    pub(in crate::fs) fn begin(&self, ino: u64, size: u64) -> Arc<Progress> {
        let p = Progress::new(size);
        self.lock().active.insert(ino, p.clone());
        self.changed.notify_waiters();
        p
    }

    pub(in crate::fs) fn end(&self, ino: u64) {
        self.lock().active.remove(&ino);
        self.changed.notify_waiters();
    }

    /// Queued or running background uploads (failed ones waiting for a retry excluded).
    pub fn busy(&self) -> usize {
        let g = self.lock();
        g.queue
            .values()
            .filter(|e| e.running || e.not_before.is_none() || e.attempts == 0)
            .count()
    }

    /// Uploads waiting for the target to answer again (counted in [`Uploads::busy`]:
    /// `unmount` waits for them, and says so).
    pub fn waiting(&self) -> usize {
        self.lock()
            .queue
            .values()
            .filter(|e| e.waiting && !e.running)
            .count()
    }

    pub fn set_abandon(&self) {
        self.lock().abandon = true;
        self.changed.notify_waiters();
    }

    pub fn abandoned(&self) -> bool {
        self.lock().abandon
    }

    /// The target answers again: every upload waiting for it is tried now. How many.
    fn resume_waiting(&self) -> usize {
        let n = {
            let mut g = self.lock();
            let mut n = 0;
            for e in g.queue.values_mut().filter(|e| e.waiting) {
                e.waiting = false;
                e.not_before = None;
                n += 1;
            }
            n
        };
        if n > 0 {
            self.wake.notify_one();
            self.changed.notify_waiters();
        }
        n
    }
}

fn backoff(attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

impl Fs {
    /// Turn write-back mode on (before the mount serves requests).
    pub fn enable_write_back(&self) {
        self.uploads.lock().write_back = true;
    }

    pub fn uploads(&self) -> &Uploads {
        &self.uploads
    }

    /// Write-back close: make the data durable (a small file's copy in the catalog, else a
    /// sync of the stage), journal it, sync the catalog, queue the upload.
    pub(in crate::fs) async fn queue_durably(&self, ino: u64, of: &Arc<OpenFile>) -> FsResult<()> {
        if of.is_queued() || of.unlinked.load(Ordering::SeqCst) || !of.dirty() {
            return Ok(());
        }
        // Writers stay out while the stage is synced (or copied) and hashed, so the digests
        // match the version queued.
        let _g = of.gate.write().await;
        let version = of.stage.version();
        let size = of.stage.size();
        // A small file's data goes into the catalog with its journal row: the catalog's
        // sync below makes it durable, and recovery writes the stage back from it, so
        // neither the stage nor its directory entry needs a sync of its own.
        let copy = if size <= STAGE_COPY_MAX {
            let data = of
                .stage
                .read_at(0, size as usize)
                .map_err(|e| Error::from(e).context("cannot read the stage"))?;
            Some(data)
        } else {
            None
        };
        // The stage's directory entry must survive too: synced when a stage file was
        // created since the last sync of the directory (a recycled file's name is on disk).
        let dir_sync = match copy {
            Some(_) => None,
            None => self.pool.dir_sync_needed(),
        };
        // The stage's data is synced on another thread while the digests are computed and
        // the catalog is written and synced here: the two syncs overlap instead of adding
        // up. Should the catalog reach the disk first and the daemon die before the stage
        // does, recovery finds a stage that does not match its journaled digests and keeps
        // it as `incomplete`, never uploaded; and this close has not returned.
        // The directory's sync (when needed) runs beside the stage's, not after it: both
        // must be on disk before this close returns, in no order.
        let synced_dir = dir_sync.map(|_| {
            let stage_dir = self.stage_dir.clone();
            tokio::task::spawn_blocking(move || std::fs::File::open(&stage_dir)?.sync_all())
        });
        let synced_stage = copy.is_none().then(|| {
            let stage = of.stage.clone();
            tokio::task::spawn_blocking(move || stage.sync())
        });
        let stage = of.stage.clone();
        // The copy holds the whole version: hashed from it, the stage is not read again.
        // Another small stage is hashed on this (kernel request) thread: the hop to the
        // blocking pool and back costs more than the hashing.
        let digests = match &copy {
            Some(data) => Ok(Hashers::of(data, stage.with_md5())),
            None if size <= super::INLINE_DIGEST_MAX => stage.digests(),
            None => tokio::task::spawn_blocking(move || stage.digests())
                .await
                .map_err(|e| Error::msg(libc::EIO, format!("hashing the stage: {e}")))?,
        }
        .map_err(|e| Error::from(e).context("cannot hash the stage"));
        let journaled = match digests {
            Ok(d) => self
                .journal_queued(ino, of, size, &d, copy.as_deref())
                .map(|queued| (queued, d)),
            Err(e) => Err(e),
        };
        let stage_synced = match synced_stage {
            None => Ok(()),
            Some(synced) => match synced.await {
                Ok(r) => r.map_err(Error::from),
                Err(e) => Err(Error::msg(libc::EIO, format!("syncing the stage: {e}"))),
            },
        };
        let stage_synced = match synced_dir {
            None => stage_synced,
            Some(dir) => match (stage_synced, dir.await) {
                (Err(e), _) => Err(e),
                (Ok(()), Ok(r)) => r.map_err(Error::from),
                (Ok(()), Err(e)) => Err(Error::msg(
                    libc::EIO,
                    format!("syncing the stage directory: {e}"),
                )),
            },
        };
        let digests = match (journaled, stage_synced) {
            (Ok((true, d)), Ok(())) => d,
            // Unlinked meanwhile: nothing to upload.
            (Ok((false, _)), _) => return Ok(()),
            (Err(e), _) => return Err(e),
            (Ok(_), Err(e)) => {
                // Journaled but not durable: not queued now; retried at the next mount.
                let e = e.context("the stage could not be synced to disk at close");
                self.set_failed(ino, &e.message);
                return Err(e);
            }
        };
        if let Some(created) = dir_sync {
            self.pool.dir_synced(created);
        }
        of.mark_queued(version, digests);
        let settle = (!self.caps.rename).then_some(SETTLE_NO_RENAME);
        self.uploads.enqueue(ino, false, settle);
        tracing::debug!(ino, size, "queued for upload");
        Ok(())
    }

    /// Mark `ino` queued and journal it (with `copy`, a small file's data) in one
    /// transaction, then sync the catalog. `false`: the node is gone (unlinked meanwhile),
    /// nothing to queue.
    pub(in crate::fs) fn journal_queued(
        &self,
        ino: u64,
        of: &Arc<OpenFile>,
        size: u64,
        digests: &crate::remote::Digests,
        copy: Option<&[u8]>,
    ) -> FsResult<bool> {
        let written = {
            let mut t = self.tree();
            let Some(n) = t.get(ino) else {
                return Ok(false);
            };
            let parent_remote = self.dir_ref(&t, n.row.parent);
            let name = n.row.name.clone();
            let n = t.get_mut(ino).ok_or(libc::ENOENT)?;
            n.row.state = NodeState::Queued;
            n.row.size = size;
            n.row.last_error = None;
            let journal = self
                .destination(ino, &parent_remote, &name, size, digests.clone())
                .journal_row(of.stage.path());
            // Under the tree lock, so the catalog never lags a later change of the node.
            self.catalog
                .update_node_and_journal_with_copy(&n.row, &journal, copy)
        };
        // Synced once the lock is released: other closes may write meanwhile and share
        // this sync.
        if let Err(e) = written.and_then(|()| self.catalog.sync()) {
            tracing::error!(ino, error = %e, "cannot journal the closed file");
            return Err(Error::new(libc::EIO));
        }
        Ok(true)
    }

    /// `e`, the failure of an upload of `ino`, came from an outage: the target could not be
    /// reached. Only the uploads of which the target is the cause wait for it.
    fn is_outage(&self, e: &Error) -> bool {
        e.remote_kind() == Some(crate::remote::ErrorKind::Unavailable)
            && self.target.health().is_some_and(|h| h.unreachable_now())
    }

    /// A synchronous upload of `ino` failed with `e` (the default mode's close, fsync): if
    /// the target could not be reached, the file waits in the queue for the target to
    /// answer again, so it lands without another close or a remount. The worker's own
    /// attempts are counted by [`Fs::upload_finished`].
    pub(in crate::fs) fn failed_in_outage(&self, ino: u64, e: &Error) {
        if !self.is_outage(e) {
            return;
        }
        {
            let mut g = self.uploads.lock();
            let entry = g.queue.entry(ino).or_default();
            if entry.running {
                return;
            }
            entry.attempts += 1;
            entry.waiting = true;
            entry.not_before = None;
        }
        self.uploads.changed.notify_waiters();
    }

    /// Follow the target's health: probe it while it is down, and try every upload that
    /// waits for it as soon as it answers again.
    fn watch_health(self: &Arc<Self>) {
        let Some(health) = self.target.health().cloned() else {
            return;
        };
        tokio::spawn(health.clone().probe(self.target.clone()));
        let fs = self.clone();
        tokio::spawn(async move {
            let mut changes = health.subscribe();
            while changes.changed().await.is_ok() {
                if !health.unreachable_now() {
                    let n = fs.uploads.resume_waiting();
                    if n > 0 {
                        tracing::info!(files = n, "the target answers again; retrying uploads");
                    }
                }
            }
        });
    }

    /// The worker: uploads queued files, [`PARALLEL_UPLOADS`] at a time, until the process
    /// ends. It also follows the target's health (probe, retries when it answers again).
    pub async fn run_uploads(self: Arc<Self>) {
        self.watch_health();
        loop {
            // Also here, not only on the health's change: an upload that failed just as
            // the target came back must not wait for the next outage to end.
            if !self.target_unreachable() {
                self.uploads.resume_waiting();
            }
            let (ready, next) = {
                let mut g = self.uploads.lock();
                let now = Instant::now();
                let running = g.queue.values().filter(|e| e.running).count();
                let mut ready = vec![];
                let mut next: Option<Instant> = None;
                for (ino, e) in g.queue.iter_mut() {
                    if e.running || e.waiting {
                        continue;
                    }
                    match e.not_before {
                        Some(t) if t > now => {
                            next = Some(next.map_or(t, |n| n.min(t)));
                        }
                        _ if running + ready.len() < PARALLEL_UPLOADS => {
                            e.running = true;
                            e.again = false;
                            ready.push((*ino, e.recovered));
                        }
                        _ => {}
                    }
                }
                (ready, next)
            };
            for (ino, recovered) in ready {
                let fs = self.clone();
                tokio::spawn(async move {
                    let r = fs.upload_queued(ino, recovered).await;
                    fs.upload_finished(ino, r);
                });
            }
            let wait = next
                .map(|t| t.saturating_duration_since(Instant::now()))
                .unwrap_or(WORKER_TICK)
                .min(WORKER_TICK);
            let _ = tokio::time::timeout(wait, self.uploads.wake.notified()).await;
        }
    }

    pub(in crate::fs) fn upload_finished(&self, ino: u64, r: FsResult<()>) {
        // No caller waits for a background upload: its failure is logged here, once.
        if let Err(e) = &r {
            tracing::error!(ino, errno = e.errno, error = %e, "background upload failed");
        }
        let outage = r.as_ref().err().is_some_and(|e| self.is_outage(e));
        {
            let mut g = self.uploads.lock();
            let write_back = g.write_back;
            if let Some(e) = g.queue.get_mut(&ino) {
                e.running = false;
                e.recovered = false;
                if e.again {
                    e.again = false;
                    e.not_before = None;
                } else if r.is_ok() {
                    g.queue.remove(&ino);
                } else if outage {
                    // Both modes: tried again when the target answers.
                    e.attempts += 1;
                    e.waiting = true;
                    e.not_before = None;
                    // The failure itself is logged above, with its cause.
                    tracing::debug!(
                        ino,
                        attempts = e.attempts,
                        "the target is unreachable; the upload waits for it"
                    );
                } else if write_back {
                    e.attempts += 1;
                    let wait = backoff(e.attempts);
                    e.not_before = Some(Instant::now() + wait);
                    tracing::warn!(
                        ino,
                        attempts = e.attempts,
                        retry_in_s = wait.as_secs(),
                        "will retry the background upload"
                    );
                } else {
                    // Default mode: the failure stays visible; the next close or mount
                    // tries again.
                    g.queue.remove(&ino);
                }
            }
        }
        self.uploads.changed.notify_waiters();
        self.uploads.wake.notify_one();
    }

    /// One background attempt for `ino`.
    pub(in crate::fs) async fn upload_queued(&self, ino: u64, recovered: bool) -> FsResult<()> {
        let state = {
            let t = self.tree();
            match t.get(ino) {
                None => return Ok(()),
                Some(n) => (n.row.state, n.row.stage.is_some(), n.open.is_some()),
            }
        };
        match state {
            // A writer reopened it: its close queues it again.
            (NodeState::Staged, _, _) => return Ok(()),
            // Never uploaded on its own.
            (NodeState::Incomplete, _, _) => return Ok(()),
            (NodeState::Committed, _, false) => return Ok(()),
            (_, false, false) => return Ok(()),
            _ => {}
        }
        if recovered && self.adopt_finished_upload(ino).await {
            return Ok(());
        }
        let of = self.open_for_write(ino, false, false).await?;
        if recovered {
            if let Err(e) = self.check_recovered_stage(ino, &of).await {
                self.put_open(ino, &of, false);
                return Err(e);
            }
        }
        let r = self.commit(ino, &of).await;
        self.put_open(ino, &of, false);
        r
    }

    /// Wait until no background upload is queued or running (failed ones waiting for
    /// their retry, and those waiting for an unreachable target, are left journaled), or
    /// until `abandon` is set.
    pub async fn drain(&self) {
        loop {
            let notified = self.uploads.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.uploads.busy() == self.uploads.waiting() || self.uploads.abandoned() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), notified).await;
        }
    }
}
