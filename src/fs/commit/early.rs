//! Uploads that begin before their file is complete: the `Early` state of the lifecycle.
//!
//! Two triggers. A *size hint*: the writer announced the final size (`ftruncate`/
//! `fallocate` on an empty file), so the session opens at once. A *stream*: on targets that
//! need no final size before the first part (`Capabilities::size_later`, S3 multipart), the
//! first write at offset 0 of an empty file starts the upload, and its size is learnt at
//! close. Either way the parts go up as the writer fills the stage in order
//! ([`crate::write::stage::GrowingSource`]) and the final step of the upload waits on a
//! [`Seal`]. At close the commit seals it (the size promised, the same place, nothing sent
//! was rewritten) and takes its result, or cancels it and uploads the ordinary way — so a
//! writer that seeks back over bytes already sent costs one more upload, never a wrong file.

use std::sync::Arc;

use crate::catalog::NodeState;
use crate::remote::{Digests, DirRef, RemoteFile, Seal, TargetError};
use crate::write::{uploader, Stage};

use crate::fs::handle::OpenFile;
use crate::fs::names::is_save_temp;
use crate::fs::Fs;

/// Smallest announced size that starts an upload before the file is written: below
/// it the whole upload after close takes a few tens of milliseconds on loopback-class
/// links, less than what starting early could save.
const EARLY_START_MIN: u64 = 8 << 20;

/// What the writer promised when the upload started early; the closed file is held to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// `ftruncate`/`fallocate` announced the final size: the file must have exactly it.
    Size(u64),
    /// Written from offset 0 on a target that needs no size up front: any size fits, and
    /// the seal carries the size found at close.
    Stream,
}

impl Expected {
    /// The closed file's `size` is what was promised.
    fn fits(self, size: u64) -> bool {
        match self {
            Expected::Size(n) => n == size,
            Expected::Stream => true,
        }
    }

    /// The size the upload was started with (what the request announces; 0 for a stream,
    /// whose request is open-ended).
    fn announced(self) -> u64 {
        match self {
            Expected::Size(n) => n,
            Expected::Stream => 0,
        }
    }

    /// The seal the upload waits on: a stream's is open-ended (sealed with its size).
    fn seal(self) -> Arc<Seal> {
        match self {
            Expected::Size(_) => Seal::new(),
            Expected::Stream => Seal::open_ended(),
        }
    }

    /// Resolve `seal` for a closed file of `size` bytes with these digests.
    fn settle(self, seal: &Seal, size: u64, digests: Digests) {
        match self {
            Expected::Size(_) => seal.seal(digests),
            Expected::Stream => seal.seal_sized(size, digests),
        }
    }
}

/// Where an upload goes: the place an early upload started for, and the place the file
/// has when it is closed. They must be the same for the upload to be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place<'a> {
    pub parent: &'a DirRef,
    pub name: &'a str,
    /// Id of the remote file it replaces, if any.
    pub replaces: Option<&'a str>,
}

/// An upload started before its file was complete (the `Early` state of the lifecycle):
/// the parts go up while the writer writes. The commit at close seals it (the file is
/// what was promised, in the same place, and nothing sent was rewritten) and takes its
/// result, or cancels it and uploads the ordinary way.
pub struct EarlyUpload {
    pub expected: Expected,
    /// Where it goes: the commit checks the file is still there.
    pub parent: DirRef,
    pub name: String,
    pub replaces: Option<String>,
    pub seal: Arc<Seal>,
    pub stage: Arc<Stage>,
    pub task: tokio::task::JoinHandle<Result<RemoteFile, TargetError>>,
}

impl EarlyUpload {
    fn place(&self) -> Place<'_> {
        Place {
            parent: &self.parent,
            name: &self.name,
            replaces: self.replaces.as_deref(),
        }
    }
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
    /// Staged → Early. A stream: the first write at offset 0 of an empty file, on a target
    /// that takes parts before it knows the size (S3), so a `cp` of any size sends its parts
    /// while it writes and `close()` only completes. Or a size hint: an empty file open for writing was extended to its
    /// final size (`ftruncate`/`fallocate` before writing, as download managers and many
    /// copy tools do), so its upload starts now and sends the parts as the writer fills
    /// them in order. The commit at close seals it, or gives it up and uploads the
    /// ordinary way when the writer did something else. Not for small files (nothing to
    /// gain), not in write-back mode (close does not wait for the upload there), and not
    /// for targets that need the whole file first (Dyson's MD5, Virola's single request).
    pub(in crate::fs) fn start_early(&self, ino: u64, of: &Arc<OpenFile>, expected: Expected) {
        let wanted = match expected {
            Expected::Size(size) => self.caps.early_start && size >= EARLY_START_MIN,
            Expected::Stream => self.caps.size_later,
        };
        if !wanted || self.uploads.write_back() || of.has_early() {
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
        let seal = expected.seal();
        let size = expected.announced();
        let commit = uploader::Commit {
            // The digests are only known once sealed.
            dest: self.destination(
                ino,
                &parent,
                &name,
                expected.announced(),
                Digests::default(),
            ),
            mtime_ms,
            replaces: replaces.clone(),
            max_size: self.max_size(),
            progress: self.uploads.begin(ino, size),
            early: Some(seal.clone()),
            // The commit checks the remote file before it seals the upload.
            expect: None,
            journaled: None,
        };
        let (target, catalog, stage) =
            (self.target.clone(), self.catalog.clone(), of.stage.clone());
        let task = tokio::spawn(async move {
            uploader::upload(target.as_ref(), &catalog, &stage, commit).await
        });
        match expected {
            Expected::Size(_) => {
                tracing::info!(ino, name = %name, size, "size announced before writing: upload started")
            }
            Expected::Stream => {
                tracing::debug!(ino, name = %name, "first write: upload streams while the file is written")
            }
        }
        let early = EarlyUpload {
            expected,
            parent,
            name,
            replaces: replaces.map(|r| r.id),
            seal,
            stage: of.stage.clone(),
            task,
        };
        if !of.begin_early(early) {
            // A commit got in first: the upload was given up (dropped) before it could
            // complete.
            self.uploads.end(ino);
        }
    }

    /// Early → Landed, or back to an ordinary upload: seal the early upload when the
    /// closed file is what it promised (same size and place, nothing it read rewritten)
    /// and wait for it; else give it up. `Some` when it landed; `None` means "upload the
    /// ordinary way". Writers are kept out by the caller.
    pub(in crate::fs) async fn finish_early(
        &self,
        ino: u64,
        mut e: EarlyUpload,
        size: u64,
        place: Place<'_>,
        digests: &Digests,
    ) -> Option<RemoteFile> {
        let name = place.name;
        let same = e.expected.fits(size) && e.place() == place;
        let intact = same && e.stage.early_seal();
        if intact {
            e.expected.settle(&e.seal, size, digests.clone());
        } else {
            tracing::info!(
                ino,
                name,
                announced = e.expected.announced(),
                size,
                "the file changed after its upload started: uploading it the ordinary way"
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
                if let Err(e) = self.delete_remote(&r, ino).await {
                    tracing::warn!(ino, name, error = %e, "cannot delete the copy");
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

    /// Early → given up, waiting for its task: the file is not going where the upload
    /// was headed (a conflict copy goes up instead). An upload that completed without
    /// waiting for its seal is a client bug, logged.
    pub(in crate::fs) async fn give_up_early(&self, ino: u64, mut e: EarlyUpload) {
        e.seal.cancel();
        e.stage.early_cancel();
        let outcome = (&mut e.task).await;
        e.stage.early_end();
        self.uploads.end(ino);
        if let Ok(Ok(r)) = outcome {
            tracing::error!(ino, name = %e.name, id = %r.id, "an upload given up completed anyway");
        }
    }
}
