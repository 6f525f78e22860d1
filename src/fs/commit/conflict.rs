//! Shared files: what the remote holds now, and the conflict copy.
//!
//! Other writers (a second mount, the web app, `uploadfs put`) change files this mount
//! has cached or has open. Two questions get one answer here, [`Fs::remote_now`]: is the
//! remote file still the version this node stands for? One cheap metadata request
//! ([`crate::remote::Target::stat`]) answers it; a file gone by its id is looked up by name
//! in its folder's listing, since a target without in-place versions (Dyson) stores a
//! replaced file under a new id. Targets without a metadata request (Fluxer, Virola) are
//! checked by listing: before a commit here, at open through the TTL-bound listing.
//!
//! - At open (`fs/files.rs`), a stale answer revalidates the cached node.
//! - Right before a commit replaces a remote file ([`Fs::commit_check`]): when the file
//!   changed since this mount read it, the commit does not overwrite it. Our bytes land
//!   beside it as `NAME (conflict YYYY-MM-DD HHMMSS).ext` (UTC), the node becomes that
//!   copy, a warning is logged and `uploadfs status` lists it ([`Conflicts`]). Where the
//!   protocol has a precondition the upload also names the version it checked
//!   ([`crate::remote::Target::upload_unless_changed`]), so a change between the check and
//!   the commit is caught by the server: `ErrorKind::Changed`, and the same copy.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::catalog::now_ms;
use crate::remote::{same_version, DirRef, ErrorKind, RemoteFile, TargetError};
use crate::write::uploader;

use super::{Landed, Snapshot};
use crate::fs::handle::OpenFile;
use crate::fs::{Fs, FsResult};
use crate::remote::Digests;

/// How many conflicts `status` keeps (the oldest go first): a list for people, not a log.
const CONFLICTS_KEPT: usize = 100;

/// What the remote holds for a node's file now.
#[derive(Debug, Clone)]
pub(in crate::fs) enum RemoteNow {
    /// The version the node knows (its metadata as answered now: etag, name).
    Same(RemoteFile),
    /// Another version: replaced in place, or a new file under the same name.
    Changed(RemoteFile),
    /// No file by that id, and none by that name.
    Gone,
    /// The target has no metadata request: only its listings tell.
    Unknown,
}

/// What a commit that replaces a remote file does after [`Fs::commit_check`].
pub(super) enum Check {
    /// Replace it; `expected` is the version just seen, for a conditional upload.
    Replace { expected: Option<RemoteFile> },
    /// The file is gone remotely: upload ours as a new file.
    Gone,
    /// Someone else's version is there: keep it, upload ours beside it.
    Conflict(RemoteFile),
}

/// One conflict, as `uploadfs status` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConflictStatus {
    /// The file another writer changed (it keeps their version).
    pub path: String,
    /// Where this mount's version landed.
    pub copy: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
}

/// The conflicts of this mount since it started, newest last.
#[derive(Default)]
pub struct Conflicts(Mutex<Vec<ConflictStatus>>);

impl Conflicts {
    fn push(&self, c: ConflictStatus) {
        let mut v = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= CONFLICTS_KEPT {
            v.remove(0);
        }
        v.push(c);
    }

    pub fn list(&self) -> Vec<ConflictStatus> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `report.pdf` → `report (conflict 2026-12-04 101500).pdf`: the extension kept, so the
/// copy opens with the same application; a leading dot is no extension (`.bashrc`).
pub fn conflict_name(name: &str, at_ms: i64) -> String {
    numbered_conflict_name(name, at_ms, 1)
}

/// [`conflict_name`], with ` N` after the time from the second one of a second on.
fn numbered_conflict_name(name: &str, at_ms: i64, n: u32) -> String {
    let at = chrono::DateTime::from_timestamp_millis(at_ms).unwrap_or_default();
    let stamp = at.format("%Y-%m-%d %H%M%S");
    let counter = if n > 1 {
        format!(" {n}")
    } else {
        String::new()
    };
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 && i + 1 < name.len() => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    format!("{stem} (conflict {stamp}{counter}){ext}")
}

impl Fs {
    /// What the remote holds now for `known`, the version a node named `name` in `parent`
    /// stands for: one metadata request, plus a listing of `parent` when the id is gone.
    pub(in crate::fs) async fn remote_now(
        &self,
        parent: &DirRef,
        name: &str,
        known: &RemoteFile,
    ) -> Result<RemoteNow, TargetError> {
        match self.target.stat(known).await {
            Ok(Some(now)) if same_version(&now, known) => Ok(RemoteNow::Same(now)),
            Ok(Some(now)) => Ok(RemoteNow::Changed(now)),
            Ok(None) => self.remote_listed(parent, name, known).await,
            Err(e) if e.kind == ErrorKind::Unsupported => Ok(RemoteNow::Unknown),
            Err(e) => Err(e),
        }
    }

    /// [`Fs::remote_now`] from a listing of `parent`: `known` by id, else a file by name.
    async fn remote_listed(
        &self,
        parent: &DirRef,
        name: &str,
        known: &RemoteFile,
    ) -> Result<RemoteNow, TargetError> {
        let key = |n: &str| {
            if self.caps.case_insensitive_names {
                n.to_lowercase()
            } else {
                n.to_string()
            }
        };
        let entries = self.target.list(parent).await?;
        if let Some(e) = entries.iter().find(|e| e.id == known.id && !e.is_dir) {
            return Ok(if same_version(e, known) {
                RemoteNow::Same(e.clone())
            } else {
                RemoteNow::Changed(e.clone())
            });
        }
        Ok(entries
            .into_iter()
            .find(|e| !e.is_dir && key(&e.name) == key(name))
            .map_or(RemoteNow::Gone, RemoteNow::Changed))
    }

    /// Right before a commit that replaces the remote file the node had: is it still the
    /// version this mount read? An unanswered check lets the commit go on (the protocol's
    /// precondition, where there is one, still guards it).
    pub(super) async fn commit_check(&self, snap: &Snapshot) -> Check {
        let Some(known) = &snap.remote else {
            return Check::Replace { expected: None };
        };
        match self.remote_now(&snap.parent, &snap.name, known).await {
            Ok(RemoteNow::Same(now)) => Check::Replace {
                expected: Some(now),
            },
            Ok(RemoteNow::Changed(theirs)) => Check::Conflict(theirs),
            Ok(RemoteNow::Gone) => Check::Gone,
            Ok(RemoteNow::Unknown) => {
                match self.remote_listed(&snap.parent, &snap.name, known).await {
                    Ok(RemoteNow::Changed(theirs)) => Check::Conflict(theirs),
                    Ok(RemoteNow::Gone) => Check::Gone,
                    Ok(_) => Check::Replace { expected: None },
                    Err(e) => {
                        tracing::warn!(path = %snap.path, error = %e, "cannot check whether the remote file changed; uploading over it");
                        Check::Replace { expected: None }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(path = %snap.path, error = %e, "cannot check whether the remote file changed; uploading over it");
                Check::Replace { expected: None }
            }
        }
    }

    /// Uploading → Landed as the conflict copy beside the other writer's version (or
    /// Failed, as any commit).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn commit_as_conflict(
        &self,
        ino: u64,
        of: &OpenFile,
        snap: &Snapshot,
        version: u64,
        size: u64,
        digests: &Digests,
        theirs: Option<RemoteFile>,
    ) -> FsResult<()> {
        let r = self
            .commit_conflict(ino, of, snap, size, digests, theirs)
            .await;
        of.end_upload(None);
        match r {
            Ok(landed) => {
                of.mark_committed(version);
                let remote = landed.remote.clone();
                if self
                    .apply_committed(&mut self.tree(), ino, &landed, false)
                    .is_none()
                {
                    // Unlinked while uploading: the copy must not outlive the file.
                    if let Err(e) = self.delete_remote(&remote, ino).await {
                        tracing::warn!(ino, error = %e, "cannot delete the upload of a removed file");
                    }
                }
                Ok(())
            }
            Err(e) => Err(self.commit_failed(ino, &snap.path, e)),
        }
    }

    /// A conditional upload was refused: is the version there ours after all (an attempt
    /// whose answer was lost had landed, and its retry met it)? Then it is kept.
    pub(super) async fn ours_after_all(
        &self,
        snap: &Snapshot,
        size: u64,
        digests: &Digests,
    ) -> Option<RemoteFile> {
        let known = snap.remote.as_ref()?;
        let now = self.target.stat(known).await.ok().flatten()?;
        super::adopt::Content::of(size, digests)
            .held_by(&now)
            .then_some(now)
    }

    /// The remote file changed since this mount read it: upload our stage beside it as the
    /// conflict copy and make the node that copy; theirs stays under the name and shows up
    /// at the next listing. `Ok` when ours landed (the writer's close succeeds).
    pub(super) async fn commit_conflict(
        &self,
        ino: u64,
        of: &OpenFile,
        snap: &Snapshot,
        size: u64,
        digests: &crate::remote::Digests,
        theirs: Option<RemoteFile>,
    ) -> Result<Landed, TargetError> {
        let at_ms = now_ms();
        let copy = self.free_conflict_name(ino, &snap.name, at_ms);
        let progress = self.uploads.begin(ino, size);
        let r = uploader::upload(
            self.target.as_ref(),
            &self.catalog,
            &of.stage,
            uploader::Commit {
                dest: self.destination(ino, &snap.parent, &copy, size, digests.clone()),
                mtime_ms: snap.mtime_ms,
                replaces: None,
                max_size: self.max_size(),
                progress,
                early: None,
                expect: None,
                journaled: None,
            },
        )
        .await;
        self.uploads.end(ino);
        let remote = r?;
        let copy_path = {
            let mut t = self.tree();
            if let Some(parent) = t.get(ino).map(|n| n.row.parent) {
                if t.child(parent, &copy).is_none() {
                    t.relink(ino, parent, &copy);
                }
            }
            t.path(ino)
        };
        // The name now belongs to their version: the next lookup or listing brings it in.
        self.forget_listing(&snap.parent);
        tracing::warn!(
            path = %snap.path,
            copy = %copy_path,
            theirs = theirs.as_ref().map(|t| t.id.as_str()).unwrap_or("?"),
            "the file changed remotely while it was open here: their version keeps the name, ours is saved beside it"
        );
        self.conflicts.push(ConflictStatus {
            path: snap.path.clone(),
            copy: copy_path,
            at_ms,
        });
        Ok(Landed {
            sha1: digests.sha1.clone().or(remote.sha1.clone()),
            md5: digests.md5.clone().or(remote.md5.clone()),
            remote,
            size,
        })
    }

    /// A conflict name not used in the node's folder (a second conflict of one file in
    /// the same second gets a counter).
    fn free_conflict_name(&self, ino: u64, name: &str, at_ms: i64) -> String {
        let t = self.tree();
        let parent = t.get(ino).map(|n| n.row.parent);
        let taken = |n: &str| parent.is_some_and(|p| t.child(p, n).is_some());
        (1..1000)
            .map(|i| numbered_conflict_name(name, at_ms, i))
            .find(|n| !taken(n))
            .unwrap_or_else(|| conflict_name(name, at_ms))
    }

    /// The listing of `dir` is no longer trusted: the next lookup or readdir lists it.
    pub(in crate::fs) fn forget_listing(&self, dir: &DirRef) {
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(dir.as_deref().unwrap_or_default());
    }

    /// The conflicts of this mount, for `status`.
    pub fn conflicts(&self) -> Vec<ConflictStatus> {
        self.conflicts.list()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflict_names_keep_the_extension() {
        // 2026-12-04 10:15:00 UTC
        let at = 1_796_379_300_000;
        assert_eq!(
            numbered_conflict_name("report.pdf", at, 2),
            "report (conflict 2026-12-04 101500 2).pdf"
        );
        assert_eq!(
            conflict_name("report.pdf", at),
            "report (conflict 2026-12-04 101500).pdf"
        );
        assert_eq!(
            conflict_name("notes", at),
            "notes (conflict 2026-12-04 101500)"
        );
        assert_eq!(
            conflict_name(".bashrc", at),
            ".bashrc (conflict 2026-12-04 101500)"
        );
        assert_eq!(
            conflict_name("a.tar.gz", at),
            "a.tar (conflict 2026-12-04 101500).gz"
        );
    }
}
