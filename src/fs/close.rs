//! Closing: `flush` (a descriptor's `close()`), `fsync` and `release` (the last close of
//! a descriptor), where written data enters the upload lifecycle ([`super::commit`]), and
//! the cleanup that drops an inode's write state once no handle uses it.
//!
//! A file's data is committed by the `close()` of the writer, also when nothing was
//! written (a file created empty, or truncated by `O_TRUNC`): `close()` returns once the
//! file landed (default mode), so a namespace operation that follows never races it.
//! Except for a `close()` that leaves the process another descriptor of the file with
//! nothing written yet: a shell's `cmd > f` opens `f`, duplicates the descriptor onto
//! stdout and closes the original before `cmd` writes; that close must not upload an
//! empty `f` that the real close replaces a moment later.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::catalog::NodeState;

use super::handle::{HandleState, OpenFile};
use super::names::tgid_of;
use super::{Fs, FsResult};

impl Fs {
    /// `close()` of a descriptor: commit if this handle's process wrote new data.
    pub async fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Ok(());
        }
        let Some(of) = h.open.clone() else {
            return Ok(());
        };
        let mut st = h.state.lock().await;
        st.sticky()?;
        if self.waits_for_rename(h.ino) {
            return Ok(());
        }
        if !of.dirty() {
            // Nothing the remote lacks (a dup'ed descriptor closed after a commit).
            return Ok(());
        }
        // The opener's main thread closing (the usual case) needs no look-up.
        let tgid = if pid == h.opener_tgid {
            pid
        } else {
            tgid_of(pid)
        };
        if h.opener_tgid != 0 && tgid != 0 && tgid != h.opener_tgid {
            // Another process (a forked child) closed its copy; the opener keeps writing.
            return Ok(());
        }
        if !of.has_new_data() && holds_inode(pid, h.ino) {
            // Nothing written yet, and the process keeps a duplicate of the descriptor:
            // the writes, and the close that commits them, are still to come.
            return Ok(());
        }
        *st = HandleState::Committing;
        let r = self.close_commit(h.ino, &of).await;
        *st = match r {
            Ok(()) => HandleState::Committed,
            Err(ref e) => HandleState::Failed(e.clone()),
        };
        r
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Ok(());
        }
        let Some(of) = h.open.clone() else {
            return Ok(());
        };
        let mut st = h.state.lock().await;
        st.sticky()?;
        if !of.dirty() || self.waits_for_rename(h.ino) {
            return Ok(());
        }
        *st = HandleState::Committing;
        let r = self.close_commit(h.ino, &of).await;
        *st = match r {
            Ok(()) => HandleState::Committed,
            Err(ref e) => HandleState::Failed(e.clone()),
        };
        r
    }

    /// Last close of a descriptor: commit what no flush committed, drop the stage when the
    /// file is in sync and nobody uses it. Errors here only reach the log and `status`.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
            .ok_or(libc::EBADF)?;
        let Some(of) = h.open.clone() else {
            if self.drop_orphan_if_unused(h.ino) {
                self.delete_kept_for_readers(h.ino).await;
            }
            return Ok(());
        };
        let failed = matches!(&*h.state.lock().await, HandleState::Failed(_));
        let mut result = Ok(());
        if h.writable {
            let left = of.writers.fetch_sub(1, Ordering::SeqCst) - 1;
            // A save's temporary file waits for its rename (checked under the commit lock,
            // which the rename's commit takes too); kept as failed, so that a later mount
            // still uploads it if the rename never comes.
            // Write-back: data already queued at close needs nothing here (and must not
            // wait for the commit lock its running upload holds).
            let todo = left == 0 && !failed && of.dirty() && !of.is_queued();
            let deferred = todo && {
                let _c = of.commit_lock.lock().await;
                let wait = of.dirty() && self.waits_for_rename(h.ino);
                if wait {
                    self.set_failed(
                        h.ino,
                        "a save's temporary file: uploaded once renamed into place",
                    );
                }
                wait
            };
            if todo && !deferred {
                // The adapter logs a failure (and `status` shows it).
                result = self.close_commit(h.ino, &of).await;
            }
        }
        // The writer count already went down above.
        self.put_open(h.ino, &of, false);
        self.drop_orphan_if_unused(h.ino);
        result
    }

    /// Whether any descriptor has `ino` open.
    pub(super) fn has_handles(&self, ino: u64) -> bool {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|h| h.ino == ino)
    }

    /// The last close of a file unlinked while open: the orphan goes (`true` when it did).
    fn drop_orphan_if_unused(&self, ino: u64) -> bool {
        !self.has_handles(ino) && self.tree().drop_orphan(ino).is_some()
    }

    /// Drop an inode's write state once no handle uses it.
    pub(super) fn cleanup(&self, ino: u64, of: &Arc<OpenFile>) {
        // Counts only go up under the tree lock (open_for_write), so checking under it
        // is final.
        let mut t = self.tree();
        if of.handles.load(Ordering::SeqCst) != 0 {
            return;
        }
        // Nobody is left to close the file for writing: an early upload never completes.
        if of.cancel_early() {
            self.uploads.end(ino);
        }
        if of.unlinked.load(Ordering::SeqCst) {
            of.stage.remove_file();
            return;
        }
        let Some(n) = t.get_mut(ino) else {
            of.stage.remove_file();
            return;
        };
        if !n.open.as_ref().is_some_and(|o| Arc::ptr_eq(o, of)) {
            return;
        }
        n.open = None;
        n.row.size = of.size();
        let done = !of.dirty() && n.row.state == NodeState::Committed;
        if done {
            n.row.stage = None;
        } else if n.row.state == NodeState::Staged && of.dirty() {
            // Closed without a successful commit attempt (e.g. the commit was skipped).
            n.row.state = NodeState::Failed;
            if n.row.last_error.is_none() {
                n.row.last_error = Some("closed without being uploaded".to_string());
            }
        }
        let row = n.row.clone();
        let persisted = self.persist(&row);
        if let Err(e) = &persisted {
            tracing::error!(ino, error = %e, "catalog update failed");
        }
        if done {
            // Reused only once no row names it any more (a crash must never find a
            // stage shared by two files).
            match persisted {
                Ok(()) => self.pool.recycle(&of.stage),
                Err(_) => of.stage.remove_file(),
            }
        }
    }
}

/// Whether process `pid` still has a descriptor open on inode `ino`. At a FUSE flush the
/// closing descriptor has already left the process's table, so any descriptor naming
/// the inode in `/proc/<pid>/fdinfo` is another one. Unknown (no `/proc`, or the process
/// is gone) counts as none. An inode of another filesystem with the same number can only
/// defer the commit to the release, as before the empty-file rule.
fn holds_inode(pid: u32, ino: u64) -> bool {
    if pid == 0 {
        return false;
    }
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return false;
    };
    let want = format!("\nino:\t{ino}\n");
    dir.flatten()
        .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|info| info.contains(&want)))
}
