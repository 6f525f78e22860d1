//! Renames on flat targets that cannot rename remotely (Fluxer, Virola): the file is
//! posted again under its new name and the old post deleted, so the server holds the
//! final names (an editor's save-by-rename, a plain `mv`) and a fresh mount of the same
//! channel shows what this one shows.
//!
//! Cost: nothing here for a file not yet landed when it is renamed: its upload takes the
//! name it has when it starts (write-back: the queue, so the common rename right after a
//! close; the temporary files of GIO, rsync and `sed -i`, whose upload waits for the
//! rename, see `names.rs`; a file still being written, uploaded by its writer's close). A
//! file renamed while its upload runs is re-posted once that upload lands. A landed file
//! is sent again from its local copy (the stage, while the file is open) or, failing
//! that, downloaded first; the one upload path (`close_commit`) then lands it under the
//! new name and deletes the post it replaces. Targets with a remote rename (Dyson, and
//! the folder targets) rename in [`Fs::rename`] itself and never come here.

use std::sync::atomic::Ordering;

use super::{Fs, FsResult};

impl Fs {
    /// After [`Fs::rename`] relinked `ino`: make the remote name follow where the target
    /// cannot rename. The local rename stands either way: a failed re-post is logged and
    /// leaves the file `failed` in `status` (its stage kept), retried like any upload.
    pub(super) async fn follow_rename(&self, ino: u64) {
        if let Err(e) = self.repost_renamed(ino).await {
            tracing::warn!(ino, error = %e, "re-posting a renamed file failed");
        }
    }

    async fn repost_renamed(&self, ino: u64) -> FsResult<()> {
        if self.caps.rename || self.caps.folders || !self.caps.delete || self.opts.keep_remote {
            // A remote rename exists, or the old post could not be removed (a second copy
            // under the new name would only add one).
            return Ok(());
        }
        let open = {
            let t = self.tree();
            let Some(n) = t.get(ino) else {
                return Ok(());
            };
            if n.is_dir() || n.row.remote.is_none() {
                // Catalog-only folders; a pending file lands under its current name.
                return Ok(());
            }
            n.open.clone()
        };
        if let Some(of) = &open {
            // An upload in flight posts under the old name: let it land first.
            drop(of.commit_lock.lock().await);
            if of.writers.load(Ordering::SeqCst) > 0 && of.dirty() {
                // Still being written: the writer's close uploads it under the new name
                // (and deletes the old post).
                return Ok(());
            }
        }
        let misnamed = {
            let t = self.tree();
            // A deduplicating target's shared copy keeps the name the first one has.
            t.get(ino)
                .and_then(|n| n.row.remote.as_ref().map(|r| (r.name != n.row.name, &r.id)))
                .is_some_and(|(differs, id)| differs && t.by_remote(id).len() <= 1)
        };
        if !misnamed {
            return Ok(());
        }
        let of = self.open_for_write(ino, false, false).await?;
        let r = async {
            if of.unlinked.load(Ordering::SeqCst) {
                return Ok(());
            }
            // The content comes from the stage when it holds it, else from the server.
            self.ensure_loaded(&of).await?;
            of.mark_needs_commit();
            tracing::info!(ino, "re-posting a renamed file under its new name");
            self.close_commit(ino, &of).await
        }
        .await;
        self.put_open(ino, &of, false);
        r
    }
}
