//! The size-hinted early start: an upload that begins before its file is complete.
//!
//! The writer announced the final size (`ftruncate`/`fallocate` on an empty file), so the
//! session opens at once and the parts go up as the writer fills the stage in order
//! ([`crate::write::stage::GrowingSource`]); the final step of the upload waits on a
//! [`Seal`]. At close the commit seals it (same size, same place, nothing sent was
//! rewritten) and takes its result, or cancels it and uploads the ordinary way.

use std::sync::Arc;

use crate::catalog::NodeState;
use crate::remote::{DirRef, RemoteFile, Seal, TargetError};
use crate::write::{uploader, Stage};

use crate::fs::handle::OpenFile;
use crate::fs::names::is_save_temp;
use crate::fs::Fs;

/// Smallest announced size that starts an upload before the file is written: below
/// it the whole upload after close takes a few tens of milliseconds on loopback-class
/// links, less than what starting early could save.
const EARLY_START_MIN: u64 = 8 << 20;

/// An upload started before its file was complete: the writer announced the final size
/// (`ftruncate`/`fallocate` on an empty file), so the parts go up while it writes. The
/// commit seals it (same size, same place, nothing sent was rewritten) and takes its
/// result, or cancels it and uploads the ordinary way.
pub struct EarlyUpload {
    /// The size announced; the file must have exactly this size at close.
    pub size: u64,
    /// Where it goes: the commit checks the file is still there.
    pub parent: DirRef,
    pub name: String,
    /// Id of the remote file it replaces, if any.
    pub replaces: Option<String>,
    pub seal: Arc<Seal>,
    pub stage: Arc<Stage>,
    pub task: tokio::task::JoinHandle<Result<RemoteFile, TargetError>>,
}

impl Drop for EarlyUpload {
    /// Dropped without being sealed: give the upload up, so that it ends (its reads and
    /// its final step fail) and nothing becomes visible remotely.
    fn drop(&mut self) {
        if !self.seal.is_sealed() {
            self.seal.cancel();
            self.stage.early_cancel();
        }
    }
}

impl Fs {
    /// A size hint: an empty file open for writing was extended to its final size
    /// (`ftruncate`/`fallocate` before writing, as download managers and many copy
    /// tools do), so its upload starts now and sends the
    /// parts as the writer fills them in order. The commit at close seals it, or gives it
    /// up and uploads the ordinary way when the writer did something else (see
    /// [`EarlyUpload`]). Not for small files (nothing to gain), not
    /// in write-back mode (close does not wait for the upload there), and not for targets
    /// that need the whole file first (Dyson's MD5, Virola's single request).
    pub(in crate::fs) fn start_early(&self, ino: u64, of: &Arc<OpenFile>, size: u64) {
        if !self.caps.early_start
            || size < EARLY_START_MIN
            || self.uploads.write_back()
            || of.has_early()
        {
            return;
        }
        let (name, parent, mtime_ms, replaces) = {
            let t = self.tree();
            let Some(n) = t.get(ino) else { return };
            // After a failed attempt the commit has more to decide (an earlier copy may
            // have landed): leave it to the commit.
            if n.row.last_error.is_some() || n.row.state == NodeState::Failed {
                return;
            }
            (
                n.row.name.clone(),
                self.dir_ref(&t, n.row.parent),
                n.row.mtime_ms,
                n.row.remote.clone().or(n.row.replaces.clone()),
            )
        };
        // A save's temporary file is uploaded under its final name, once renamed.
        if is_save_temp(&name) || self.waits_for_rename(ino) {
            return;
        }
        if !of.stage.early_begin() {
            return;
        }
        let seal = crate::remote::Seal::new();
        let commit = uploader::Commit {
            ino,
            target_name: self.opts.target_name.clone(),
            parent: parent.clone(),
            name: name.clone(),
            size,
            digests: crate::remote::Digests::default(),
            mtime_ms,
            replaces: replaces.clone(),
            max_size: self.max_size(),
            progress: self.uploads.begin(ino, size),
            early: Some(seal.clone()),
        };
        let (target, catalog, stage) =
            (self.target.clone(), self.catalog.clone(), of.stage.clone());
        let task = tokio::spawn(async move {
            uploader::upload(target.as_ref(), &catalog, &stage, commit).await
        });
        tracing::info!(ino, name = %name, size, "size announced before writing: upload started");
        of.set_early(EarlyUpload {
            size,
            parent,
            name,
            replaces: replaces.map(|r| r.id),
            seal,
            stage: of.stage.clone(),
            task,
        });
    }

    /// Seal an early upload when the closed file is what it announced (same size and
    /// place, nothing it read rewritten) and wait for it; else give it up. `Some` when it
    /// landed; `None` means "upload the ordinary way". Writers are kept out by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(in crate::fs) async fn finish_early(
        &self,
        ino: u64,
        mut e: EarlyUpload,
        size: u64,
        parent: &DirRef,
        name: &str,
        old_remote: &Option<RemoteFile>,
        extra_replaced: &Option<RemoteFile>,
        digests: &crate::remote::Digests,
    ) -> Option<RemoteFile> {
        let replaces = old_remote
            .as_ref()
            .or(extra_replaced.as_ref())
            .map(|r| r.id.clone());
        let same =
            e.size == size && &e.parent == parent && e.name == name && e.replaces == replaces;
        let intact = same && e.stage.early_seal();
        if intact {
            e.seal.seal(digests.clone());
        } else {
            tracing::info!(
                ino,
                name,
                announced = e.size,
                size,
                "the file changed after its size was announced: uploading it the ordinary way"
            );
            e.seal.cancel();
            e.stage.early_cancel();
        }
        let outcome = (&mut e.task).await;
        e.stage.early_end();
        self.uploads.end(ino);
        match outcome {
            Ok(Ok(r)) if intact => Some(r),
            Ok(Ok(r)) => {
                // A client completed without waiting for the seal: never keep that copy.
                tracing::error!(ino, name, id = %r.id, "an upload given up completed anyway; replacing it");
                if let Err(errno) = self.delete_remote(&r, ino).await {
                    tracing::warn!(ino, name, errno, "cannot delete the copy");
                }
                None
            }
            Ok(Err(err)) => {
                if intact {
                    tracing::info!(ino, name, error = %err, "the upload started early failed; uploading the file again");
                }
                None
            }
            Err(join) => {
                tracing::warn!(ino, name, error = %join, "the upload started early ended abnormally");
                None
            }
        }
    }
}
