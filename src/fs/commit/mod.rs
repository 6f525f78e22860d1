//! The upload lifecycle of one file, in one place.
//!
//! (state machine documentation: see below)

pub mod adopt;
pub mod early;
pub mod queue;
pub mod recover;
pub mod status;

pub use queue::Uploads;
pub use status::{FileStatus, MountStatus};

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::catalog::NodeState;
use crate::write::uploader;

use super::handle::OpenFile;
use super::{io_errno, Fs, FsResult};

/// Stages up to this size are hashed on the committing thread (well under a millisecond).
pub(in crate::fs) const INLINE_DIGEST_MAX: u64 = 256 * 1024;

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
    /// Upload the inode's stage if it has anything the remote lacks; the outcome as errno.
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
        let (name, parent_ref, mtime_ms, old_remote, extra_replaced, path, was_failed) = {
            let t = self.tree();
            let Some(n) = t.get(ino) else { return Ok(()) };
            (
                n.row.name.clone(),
                self.dir_ref(&t, n.row.parent),
                n.row.mtime_ms,
                n.row.remote.clone(),
                n.row.replaces.clone(),
                t.path(ino),
                // Reopening for write makes a failed node `staged`; its error stays.
                n.row.state == NodeState::Failed || n.row.last_error.is_some(),
            )
        };
        of.committing.store(true, Ordering::SeqCst);
        let stage = of.stage.clone();
        let known = of.digests_at(version);
        // A small stage is hashed in place: handing it to the blocking pool costs more.
        let digests = match known {
            Some(d) => Ok(Ok(d)),
            None if size <= INLINE_DIGEST_MAX => Ok(stage.digests()),
            None => tokio::task::spawn_blocking(move || stage.digests()).await,
        };
        let digests = match digests {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                of.committing.store(false, Ordering::SeqCst);
                self.set_failed(ino, &format!("reading the stage of {path}: {e}"));
                return Err(io_errno(&e));
            }
            Err(e) => {
                of.committing.store(false, Ordering::SeqCst);
                self.set_failed(ino, &format!("hashing {path}: {e}"));
                return Err(libc::EIO);
            }
        };
        {
            let mut t = self.tree();
            if let Some(n) = t.get_mut(ino) {
                n.row.state = NodeState::Uploading;
                n.row.size = size;
                let row = n.row.clone();
                let _ = self.persist(&row);
            }
        }
        // An upload started by a size hint: complete it when the file is what it expected.
        let early_landed = match of.take_early() {
            Some(e) => {
                self.finish_early(
                    ino,
                    e,
                    size,
                    &parent_ref,
                    &name,
                    &old_remote,
                    &extra_replaced,
                    &digests,
                )
                .await
            }
            None => None,
        };
        // A failed attempt may have landed anyway (the server stored the file, then its
        // answer was lost or spoiled): replace that copy instead of adding a second one.
        let landed = match &old_remote {
            None if was_failed && extra_replaced.is_none() => {
                self.landed_copy(ino, &parent_ref, &name).await
            }
            _ => None,
        };
        // When that copy provably holds this data, it is the upload.
        let adopt = landed.clone().filter(|e| {
            e.size == size
                && ((e.sha1.is_some() && e.sha1 == digests.sha1)
                    || (e.md5.is_some() && e.md5 == digests.md5))
        });
        let old_remote = old_remote.or(landed);
        let replaces = old_remote.clone().or(extra_replaced.clone());
        let result = if let Some(r) = early_landed {
            Ok(r)
        } else if let Some(e) = adopt {
            tracing::info!(name = %name, id = %e.id, "the earlier upload is complete; keeping it");
            Ok(e)
        } else {
            let progress = self.uploads.begin(ino, size);
            let r = uploader::upload(
                self.target.as_ref(),
                &self.catalog,
                &of.stage,
                uploader::Commit {
                    ino,
                    target_name: self.opts.target_name.clone(),
                    parent: parent_ref.clone(),
                    name: name.clone(),
                    size,
                    digests: digests.clone(),
                    mtime_ms,
                    replaces,
                    max_size: self.max_size(),
                    progress,
                    early: None,
                },
            )
            .await;
            self.uploads.end(ino);
            r
        };
        of.committing.store(false, Ordering::SeqCst);
        let remote = match result {
            Ok(r) => r,
            Err(e) => {
                let message = self.upload_failure(&path, &e);
                tracing::error!("{message}");
                self.set_failed(ino, &message);
                return Err(e.kind.errno());
            }
        };
        of.mark_committed(version);
        if self
            .hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&remote.id)
        {
            // A deduplicating target handed back an id hidden earlier: it is in use again.
            let _ = self.catalog.unhide(&remote.id);
        }
        // Where the node is now (a rename may have happened during the upload).
        let now = {
            let mut t = self.tree();
            match t.get(ino) {
                None => None,
                Some(n) => {
                    let cur = (n.row.name.clone(), self.dir_ref(&t, n.row.parent));
                    t.set_remote(ino, Some(remote.clone()));
                    if let Some(n) = t.get_mut(ino) {
                        n.row.state = NodeState::Committed;
                        n.row.size = size;
                        n.row.sha1 = digests.sha1.clone().or(remote.sha1.clone());
                        n.row.md5 = digests.md5.clone().or(remote.md5.clone());
                        n.row.last_error = None;
                        // A replacing rename during the upload set a new one: handle it below.
                        let later = if n.row.replaces != extra_replaced {
                            n.row.replaces.take()
                        } else {
                            n.row.replaces = None;
                            None
                        };
                        let row = n.row.clone();
                        let _ = self.persist(&row);
                        Some((cur, later))
                    } else {
                        None
                    }
                }
            }
        };
        let Some(((cur_name, cur_parent), later_replaced)) = now else {
            // Unlinked while uploading: the upload must not outlive the file.
            let _ = self.delete_remote(&remote, ino).await;
            return Ok(());
        };
        if let Some(old) = &later_replaced {
            if old.id != remote.id {
                if let Err(e) = self.delete_remote(old, ino).await {
                    tracing::warn!(name = %old.name, errno = e, "cannot delete the replaced remote file");
                }
            }
        }
        let moved = remote.name != cur_name || (self.caps.folders && cur_parent != parent_ref);
        if moved && self.caps.rename {
            // Renamed while the upload ran: move the new remote file after it.
            match self.target.rename(&remote, &cur_parent, &cur_name).await {
                Ok(r) => self.tree().set_remote(ino, Some(r)),
                Err(e) => {
                    tracing::warn!(from = %remote.name, to = %cur_name, error = %e, "rename after upload failed")
                }
            }
        }
        for old in [old_remote, extra_replaced].into_iter().flatten() {
            if old.id != remote.id {
                if let Err(e) = self.delete_remote(&old, ino).await {
                    tracing::warn!(name = %old.name, errno = e, "cannot delete the replaced remote file");
                }
            }
        }
        if let Some(n) = self.tree().get(ino) {
            let row = n.row.clone();
            let _ = self.persist(&row);
        }
        Ok(())
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
