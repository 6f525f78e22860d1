//! The upload lifecycle of one file, in one place.
//!
//! A file's data reaches the target through one state machine; the folder holds all of
//! it: the commit driver (here), write-back's queue (`queue`), the early start
//! (size-hinted, or streamed from the first write: [`early`]), adopting a copy that
//! already landed (`adopt`), crash recovery (`recover`), what `uploadfs status` shows
//! (`status`) and the check that another writer's version is never overwritten: the
//! conflict copy ([`conflict`]).
//!
//! ```text
//!                 write, truncate, O_TRUNC
//!        ┌─────────────────────────────────────────────┐
//!        ▼                                             │
//!     Staged ── size hint (empty file extended), ──► Early: session open, parts sent
//!        │       or the first write of an empty file  │  as the writer fills the stage
//!        │       on a size-later target (S3); not in  │
//!        │       write-back mode                      │
//!        │ close, write-back: stage fsynced,          │ close: seal if the file is what
//!        │ journal row written ──► Queued             │ was promised, else give it up
//!        │                           │ worker;        │
//!        │ close, fsync, release,    │ recovery       │
//!        │ a save's rename           ▼ at mount       ▼
//!        └───────────────────────► Uploading: digests → adopt a copy that landed?
//!                                    │        → session → parts → seal → commit
//!                          ┌─────────┴─────────┐
//!                          ▼                   ▼
//!                 Landed (row committed,     Failed(errno): sticky for the handle
//!                 journal row removed)       that committed; row `failed` + message,
//!                                            journal kept; next close/fsync/mount
//!                                            retries (write-back: backoff)
//! ```
//!
//! - In memory, an [`OpenFile`]'s [`UploadState`] says what is in flight for the inode:
//!   nothing (`Staged`), an [`early::EarlyUpload`], a write-back version waiting in the
//!   queue, or a running commit (`Uploading`). Every transition is a method here.
//! - On disk, the catalog row's `NodeState` is the same lifecycle as recovery needs it:
//!   `staged` → `queued` → `uploading` → `committed` | `failed` | `incomplete`, with a
//!   journal row (built once, by [`crate::write::uploader::Destination::journal_row`])
//!   from the queueing or the first attempt until the upload lands.
//! - Failed is sticky where a caller can see it: the handle whose close committed keeps
//!   the error and reports it to every later call ([`super::handle::HandleState::Failed`]);
//!   the row stays `failed` with its message (shown by `status`) until the next close,
//!   fsync or mount uploads it again.
//! - Session, parts and seal run inside the target's upload ([`crate::remote::Target`]),
//!   reported through the journal's [`crate::write::JournalObserver`].
//! - Landing is one step for every path ([`Fs::apply_committed`]): a commit, an early
//!   upload sealed at close, and a copy adopted after a failure or a crash.

mod adopt;
pub mod conflict;
pub mod early;
mod queue;
pub(super) mod recover;
mod status;

pub use conflict::ConflictStatus;
pub use queue::Uploads;
pub use status::{FileStatus, MountStatus};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::catalog::{JournalRow, NodeState};
use crate::remote::{Digests, DirRef, RemoteFile, TargetError};
use crate::write::uploader::{self, Destination};

use super::handle::OpenFile;
use super::inode::Tree;
use super::{Error, Fs, FsResult};

use early::EarlyUpload;

/// Stages up to this size are hashed on the committing thread (well under a millisecond).
pub(in crate::fs) const INLINE_DIGEST_MAX: u64 = 256 * 1024;

/// What is in flight for an inode's stage (the in-memory half of the lifecycle above).
#[derive(Default)]
pub enum UploadState {
    /// Nothing in flight: the stage holds the data (being written, or closed and not yet
    /// committed, or committed).
    #[default]
    Staged,
    /// A size hint started the upload while the writer fills the stage.
    Early(EarlyUpload),
    /// Write-back: stage version `version` is durable, journaled and queued.
    Queued { version: u64 },
    /// A commit is sending the stage (renames stay local meanwhile; the commit follows
    /// them up). `queued`: the version write-back had queued, kept for when it ends.
    Uploading { queued: Option<u64> },
}

impl UploadState {
    fn queued(&self) -> Option<u64> {
        match self {
            UploadState::Queued { version } => Some(*version),
            UploadState::Uploading { queued } => *queued,
            _ => None,
        }
    }
}

/// The transitions of [`UploadState`].
impl OpenFile {
    fn upload_state(&self) -> std::sync::MutexGuard<'_, UploadState> {
        self.upload.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A commit is uploading right now.
    pub fn is_uploading(&self) -> bool {
        matches!(*self.upload_state(), UploadState::Uploading { .. })
    }

    /// An early upload runs for this stage.
    pub fn has_early(&self) -> bool {
        matches!(*self.upload_state(), UploadState::Early(_))
    }

    /// Staged → Early. `false` (and `e` dropped, which gives it up) from any other state.
    fn begin_early(&self, e: EarlyUpload) -> bool {
        let mut st = self.upload_state();
        if !matches!(*st, UploadState::Staged) {
            return false;
        }
        *st = UploadState::Early(e);
        true
    }

    /// Early → Staged without waiting for the upload (the file was removed or nobody will
    /// close it for writing): dropping it cancels it, so nothing becomes visible
    /// remotely. `true` when there was one.
    pub fn cancel_early(&self) -> bool {
        let e = {
            let mut st = self.upload_state();
            match std::mem::take(&mut *st) {
                UploadState::Early(e) => Some(e),
                other => {
                    *st = other;
                    None
                }
            }
        };
        e.is_some()
    }

    /// Staged | Queued → Queued: stage version `version` is durable and queued.
    fn mark_queued(&self, version: u64, digests: Digests) {
        {
            let mut st = self.upload_state();
            match &mut *st {
                UploadState::Uploading { queued } => *queued = Some(version),
                UploadState::Early(_) => {}
                other => *other = UploadState::Queued { version },
            }
        }
        self.set_known_digests(version, digests);
    }

    /// The current content is already queued (nothing new since).
    pub fn is_queued(&self) -> bool {
        self.upload_state().queued() == Some(self.stage.version())
    }

    /// Any state → Uploading; hands over the early upload to seal, if one runs.
    fn begin_upload(&self) -> Option<EarlyUpload> {
        let mut st = self.upload_state();
        let queued = st.queued();
        match std::mem::replace(&mut *st, UploadState::Uploading { queued }) {
            UploadState::Early(e) => Some(e),
            _ => None,
        }
    }

    /// Uploading → Staged, or back to Queued when write-back had queued it (its worker
    /// owns the retries), or back to Early when the commit stopped before touching it.
    fn end_upload(&self, early: Option<EarlyUpload>) {
        let mut st = self.upload_state();
        let queued = st.queued();
        *st = match (early, queued) {
            (Some(e), _) => UploadState::Early(e),
            (None, Some(version)) => UploadState::Queued { version },
            (None, None) => UploadState::Staged,
        };
    }
}

/// Where the node stood when its commit began: where the upload goes and what it replaces.
struct Snapshot {
    name: String,
    parent: DirRef,
    mtime_ms: i64,
    /// The remote file the node had.
    remote: Option<RemoteFile>,
    /// The remote file a replacing rename put in its way.
    replaces: Option<RemoteFile>,
    path: String,
    /// An earlier attempt failed (reopening for write makes a failed node `staged`; its
    /// error stays).
    retried: bool,
    /// `remote` as the check right before the upload saw it: the version a conditional
    /// upload names ([`conflict`]).
    expected: Option<RemoteFile>,
}

/// An upload that landed: the remote file and the content it holds.
pub(in crate::fs) struct Landed {
    pub remote: RemoteFile,
    pub size: u64,
    pub sha1: Option<String>,
    pub md5: Option<String>,
}

/// What [`Fs::apply_committed`] found in the row it changed.
pub(in crate::fs) struct Applied {
    /// Where the node is now (a rename may have happened during the upload).
    pub name: String,
    pub parent: DirRef,
    /// The row's remote file and `replaces` before the change.
    pub remote: Option<RemoteFile>,
    pub replaces: Option<RemoteFile>,
}

impl Fs {
    /// Commit as `close()` does in this mode: upload now, or (write-back) make the stage
    /// durable and queue it.
    pub(in crate::fs) async fn close_commit(&self, ino: u64, of: &Arc<OpenFile>) -> FsResult<()> {
        if self.uploads.write_back() {
            self.queue_durably(ino, of).await
        } else {
            self.commit(ino, of).await
        }
    }

    /// Upload the inode's stage if it has anything the remote lacks: Uploading, then
    /// Landed or Failed. Writers are kept out until it ends.
    pub(in crate::fs) async fn commit(&self, ino: u64, of: &Arc<OpenFile>) -> FsResult<()> {
        let _c = of.commit_lock.lock().await;
        let _gate = of.gate.write().await;
        if !of.dirty() || of.unlinked.load(Ordering::SeqCst) {
            if of.cancel_early() {
                self.uploads.end(ino);
            }
            return Ok(());
        }
        let version = of.stage.version();
        let size = of.stage.size();
        let Some(mut snap) = self.snapshot(ino) else {
            return Ok(());
        };
        let early = of.begin_upload();
        if early.is_none() {
            // An early upload keeps the name it was started under.
            if let Some(name) = self.name_ahead(ino) {
                snap.name = name;
            }
        }
        let digests = match self.stage_digests(of, version, size).await {
            Ok(d) => d,
            Err(e) => {
                of.end_upload(early);
                let e = e.context(format_args!("reading the stage of {}", snap.path));
                self.set_failed(ino, &e.message);
                return Err(e);
            }
        };
        // Without an early upload (which journals its own session), the attempt's journal
        // row is written with the `uploading` row, in one transaction.
        let journaled = early.is_none().then(|| {
            let dest = self.destination(ino, &snap.parent, &snap.name, size, digests.clone());
            uploader::attempt_journal(&self.catalog, &of.stage, &dest)
        });
        self.set_uploading(ino, size, journaled.as_ref());
        // Shared files: never overwrite a version this mount has not seen.
        match self.commit_check(&snap).await {
            conflict::Check::Replace { expected } => snap.expected = expected,
            conflict::Check::Gone => snap.remote = None,
            conflict::Check::Conflict(theirs) => {
                if let Some(e) = early {
                    self.give_up_early(ino, e).await;
                }
                return self
                    .commit_as_conflict(ino, of, &snap, version, size, &digests, Some(theirs))
                    .await;
            }
        };
        let ends_journal = journaled.is_some();
        let (result, found) = self
            .send(ino, of, &snap, size, &digests, early, journaled)
            .await;
        of.end_upload(None);
        let remote = match result {
            Ok(r) => r,
            Err(e) if e.kind == crate::remote::ErrorKind::Changed => {
                // The protocol's precondition caught a change after the check (or the
                // retry of an attempt that landed met our own version).
                match self.ours_after_all(&snap, size, &digests).await {
                    Some(r) => r,
                    None => {
                        return self
                            .commit_as_conflict(ino, of, &snap, version, size, &digests, None)
                            .await
                    }
                }
            }
            Err(e) => return Err(self.commit_failed(ino, &snap.path, e)),
        };
        of.mark_committed(version);
        let landed = Landed {
            sha1: digests.sha1.clone().or(remote.sha1.clone()),
            md5: digests.md5.clone().or(remote.md5.clone()),
            remote,
            size,
        };
        self.after_landing(ino, &snap, found, landed, ends_journal)
            .await;
        Ok(())
    }

    /// The node's place and remote state as the commit begins; `None` when it is gone.
    fn snapshot(&self, ino: u64) -> Option<Snapshot> {
        let t = self.tree();
        let n = t.get(ino)?;
        Some(Snapshot {
            name: n.row.name.clone(),
            parent: self.dir_ref(&t, n.row.parent),
            mtime_ms: n.row.mtime_ms,
            remote: n.row.remote.clone(),
            replaces: n.row.replaces.clone(),
            path: t.path(ino),
            retried: n.row.state == NodeState::Failed || n.row.last_error.is_some(),
            expected: None,
        })
    }

    /// The stage's digests at `version`: known from queueing, or computed now.
    async fn stage_digests(&self, of: &OpenFile, version: u64, size: u64) -> FsResult<Digests> {
        if let Some(d) = of.digests_at(version) {
            return Ok(d);
        }
        let stage = of.stage.clone();
        // A small stage is hashed in place: handing it to the blocking pool costs more.
        let digests = if size <= INLINE_DIGEST_MAX {
            Ok(stage.digests())
        } else {
            tokio::task::spawn_blocking(move || stage.digests()).await
        };
        match digests {
            Ok(r) => Ok(r?),
            Err(e) => Err(Error::msg(libc::EIO, format!("hashing: {e}"))),
        }
    }

    /// The row enters `uploading` (recovery turns it back into `queued`), with the
    /// attempt's journal row when given, in one transaction.
    fn set_uploading(&self, ino: u64, size: u64, journal: Option<&JournalRow>) {
        let mut t = self.tree();
        if let Some(n) = t.get_mut(ino) {
            n.row.state = NodeState::Uploading;
            n.row.size = size;
            let row = n.row.clone();
            match journal {
                None => self.persist_or_log(&row),
                Some(j) => {
                    if let Err(e) = self.catalog.update_node_and_journal(&row, j) {
                        tracing::error!(ino, error = %e, "catalog update failed");
                    }
                }
            }
        }
    }

    /// Get the stage to the target: seal the early upload if the file is what it
    /// announced, else keep a copy an earlier attempt left that holds this data, else
    /// upload (replacing such a copy that holds something else). Also returns the copy
    /// found, which the new upload replaces.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        ino: u64,
        of: &OpenFile,
        snap: &Snapshot,
        size: u64,
        digests: &Digests,
        early: Option<EarlyUpload>,
        journaled: Option<JournalRow>,
    ) -> (Result<RemoteFile, TargetError>, Option<RemoteFile>) {
        let replaces_id = snap
            .remote
            .as_ref()
            .or(snap.replaces.as_ref())
            .map(|r| r.id.clone());
        if let Some(e) = early {
            let dest = early::Place {
                parent: &snap.parent,
                name: &snap.name,
                replaces: replaces_id.as_deref(),
            };
            if let Some(r) = self.finish_early(ino, e, size, dest, digests).await {
                return (Ok(r), None);
            }
        }
        // A failed attempt may have landed anyway (the server stored the file, then its
        // answer was lost or spoiled): replace that copy instead of adding a second one,
        // or keep it when it provably holds this data.
        let landed = match &snap.remote {
            None if snap.retried && snap.replaces.is_none() => {
                self.find_landed(ino, &snap.parent, &snap.name, None).await
            }
            _ => None,
        };
        if let Some(e) = &landed {
            if adopt::Content::of(size, digests).held_by(e) {
                tracing::info!(name = %snap.name, id = %e.id, "the earlier upload is complete; keeping it");
                return (Ok(e.clone()), landed);
            }
            tracing::info!(name = %snap.name, id = %e.id, "an earlier failed upload had landed; replacing it");
        }
        let replaces = snap
            .remote
            .clone()
            .or(landed.clone())
            .or(snap.replaces.clone());
        let progress = self.uploads.begin(ino, size);
        let r = uploader::upload(
            self.target.as_ref(),
            &self.catalog,
            &of.stage,
            uploader::Commit {
                dest: self.destination(ino, &snap.parent, &snap.name, size, digests.clone()),
                mtime_ms: snap.mtime_ms,
                replaces,
                max_size: self.max_size(),
                progress,
                early: None,
                // Only where the node's own remote file is replaced, as checked.
                expect: snap.expected.clone().filter(|_| landed.is_none()),
                journaled,
            },
        )
        .await;
        self.uploads.end(ino);
        (r, landed)
    }

    /// Landed: record it in the row (`ends_journal`: and remove the attempt's journal row
    /// in the same transaction), then follow up what happened while it uploaded (an
    /// unlink, a replacing rename, a rename) and delete the remote files it replaces
    /// (`found`: a copy an earlier attempt left).
    async fn after_landing(
        &self,
        ino: u64,
        snap: &Snapshot,
        found: Option<RemoteFile>,
        landed: Landed,
        ends_journal: bool,
    ) {
        let remote = landed.remote.clone();
        let applied = self.apply_landed(&mut self.tree(), ino, &landed, false, ends_journal);
        let Some(now) = applied else {
            // Unlinked while uploading: the upload must not outlive the file.
            if let Err(e) = self.delete_remote(&remote, ino).await {
                tracing::warn!(ino, error = %e, "cannot delete the upload of a removed file");
            }
            return;
        };
        // A replacing rename during the upload set a new file to replace.
        let later = now.replaces.filter(|r| Some(r) != snap.replaces.as_ref());
        self.delete_replaced(ino, &remote, [later]).await;
        let renamed =
            remote.name != now.name && !super::names::landed_ahead(&now.name, &remote.name);
        let moved = renamed || (self.caps.folders && now.parent != snap.parent);
        if moved && self.caps.rename {
            // Renamed while the upload ran: move the new remote file after it.
            match self.target.rename(&remote, &now.parent, &now.name).await {
                Ok(r) => {
                    // The row written at landing named the file before this move.
                    let mut t = self.tree();
                    t.set_remote(ino, Some(r));
                    if let Some(n) = t.get(ino) {
                        self.persist_or_log(&n.row);
                    }
                }
                Err(e) => {
                    tracing::warn!(from = %remote.name, to = %now.name, error = %e, "rename after upload failed")
                }
            }
        }
        let old = snap.remote.clone().or(found);
        self.delete_replaced(ino, &remote, [old, snap.replaces.clone()])
            .await;
    }

    /// Delete the remote files an upload that landed as `remote` replaces.
    pub(in crate::fs) async fn delete_replaced<const N: usize>(
        &self,
        ino: u64,
        remote: &RemoteFile,
        old: [Option<RemoteFile>; N],
    ) {
        for old in old.into_iter().flatten() {
            if old.id != remote.id {
                if let Err(e) = self.delete_remote(&old, ino).await {
                    tracing::warn!(name = %old.name, error = %e, "cannot delete the replaced remote file");
                }
            }
        }
    }

    /// The one apply-the-committed-row step, for a commit, a sealed early upload and a
    /// copy adopted after a failure or a crash: the node becomes `committed` with the
    /// landed remote file, its size and digests, no error and nothing left to replace
    /// (`drop_stage`: and no stage; the file is removed). `None` when the node is gone.
    pub(in crate::fs) fn apply_committed(
        &self,
        t: &mut Tree,
        ino: u64,
        landed: &Landed,
        drop_stage: bool,
    ) -> Option<Applied> {
        self.apply_landed(t, ino, landed, drop_stage, false)
    }

    /// [`Fs::apply_committed`]; `ends_journal`: the inode's journal row is removed in the
    /// same transaction as the row is written (the commit journaled the attempt itself).
    fn apply_landed(
        &self,
        t: &mut Tree,
        ino: u64,
        landed: &Landed,
        drop_stage: bool,
        ends_journal: bool,
    ) -> Option<Applied> {
        let id = &landed.remote.id;
        if self
            .hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id)
        {
            // A deduplicating target handed back an id hidden earlier: it is in use again.
            let _ = self.catalog.unhide(id);
        }
        self.untombstone(id);
        let n = t.get(ino)?;
        let (name, parent, remote) = (
            n.row.name.clone(),
            self.dir_ref(t, n.row.parent),
            n.row.remote.clone(),
        );
        t.set_remote(ino, Some(landed.remote.clone()));
        let n = t.get_mut(ino)?;
        n.row.state = NodeState::Committed;
        n.row.size = landed.size;
        n.row.sha1 = landed.sha1.clone();
        n.row.md5 = landed.md5.clone();
        n.row.last_error = None;
        let replaces = n.row.replaces.take();
        let stage = if drop_stage { n.row.stage.take() } else { None };
        let row = n.row.clone();
        if ends_journal {
            if let Err(e) = self.catalog.update_node_and_end_journal(&row) {
                tracing::error!(ino, error = %e, "catalog update failed");
            }
        } else {
            self.persist_or_log(&row);
        }
        if let Some(p) = stage {
            let _ = std::fs::remove_file(p);
        }
        Some(Applied {
            name,
            parent,
            remote,
            replaces,
        })
    }

    /// Where an upload of `ino` goes, as the journal and the request describe it.
    pub(in crate::fs) fn destination(
        &self,
        ino: u64,
        parent: &DirRef,
        name: &str,
        size: u64,
        digests: Digests,
    ) -> Destination {
        Destination {
            ino,
            target_name: self.opts.target_name.clone(),
            parent: parent.clone(),
            name: name.to_string(),
            size,
            digests,
        }
    }
    /// Uploading → Failed: the row keeps the line for people (`status`), the caller gets
    /// it with its cause and logs it once.
    pub(in crate::fs) fn commit_failed(&self, ino: u64, path: &str, e: TargetError) -> Error {
        let message = self.upload_failure(path, &e);
        self.set_failed(ino, &message);
        let mut err = Error::from(e);
        err.message = message.into();
        self.failed_in_outage(ino, &err);
        err
    }

    /// One line a person can act on: the file, the target, the cause, and for a refused
    /// token where it comes from.
    pub(in crate::fs) fn upload_failure(
        &self,
        path: &str,
        e: &crate::remote::TargetError,
    ) -> String {
        let mut m = format!("upload of {path} to {} failed: {e}", self.opts.target_name);
        if e.kind == crate::remote::ErrorKind::Auth && !self.opts.token_source.is_empty() {
            m.push_str(&format!(
                " (the token comes from {})",
                self.opts.token_source
            ));
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::Stage;

    fn open_file() -> (tempfile::TempDir, Arc<OpenFile>) {
        let dir = tempfile::tempdir().unwrap();
        let stage = Stage::create(&dir.path().join("s"), false).unwrap();
        (dir, OpenFile::new(Arc::new(stage), true))
    }

    #[test]
    fn a_commit_moves_through_uploading_and_back() {
        let (_d, of) = open_file();
        assert!(!of.is_uploading());
        assert!(of.begin_upload().is_none(), "no early upload to hand over");
        assert!(of.is_uploading());
        assert!(!of.cancel_early(), "nothing early while uploading");
        of.end_upload(None);
        assert!(matches!(*of.upload_state(), UploadState::Staged));
    }

    #[test]
    fn a_queued_version_outlives_its_upload_until_new_data() {
        let (_d, of) = open_file();
        of.stage.write_at(0, b"data").unwrap();
        let v = of.stage.version();
        of.mark_queued(v, Digests::default());
        assert!(of.is_queued());
        assert!(of.digests_at(v) == Some(Digests::default()));
        of.begin_upload();
        assert!(of.is_queued(), "the worker's upload does not unqueue it");
        of.end_upload(None);
        assert!(matches!(*of.upload_state(), UploadState::Queued { version } if version == v));
        of.stage.write_at(4, b"more").unwrap();
        assert!(!of.is_queued(), "new data is not queued yet");
    }

    #[test]
    fn a_close_during_an_upload_queues_for_after_it() {
        let (_d, of) = open_file();
        of.begin_upload();
        let v = of.stage.version();
        of.mark_queued(v, Digests::default());
        assert!(of.is_uploading());
        of.end_upload(None);
        assert!(of.is_queued());
    }
}
