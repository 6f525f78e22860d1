//! Adopting a copy that already landed: an upload whose answer was lost (a failed attempt,
//! or a crash before the catalog heard of the result) may have completed on the server.
//! Before sending the file again, the target's listing is searched for that copy with one
//! matcher ([`Fs::find_landed`]); when it provably holds this data ([`Content`]) it
//! becomes the upload, else the new upload replaces it.

use crate::catalog::NodeState;
use crate::remote::{Digests, DirRef, RemoteFile};

use super::Landed;
use crate::fs::Fs;

/// What a landed copy must hold to be this upload: the size and a digest the remote
/// reports (SHA-1 when both sides have one, else MD5; hex compared without case).
#[derive(Debug, Clone, Copy)]
pub struct Content<'a> {
    pub size: u64,
    pub sha1: Option<&'a str>,
    pub md5: Option<&'a str>,
}

impl<'a> Content<'a> {
    pub fn of(size: u64, d: &'a Digests) -> Self {
        Self {
            size,
            sha1: d.sha1.as_deref(),
            md5: d.md5.as_deref(),
        }
    }

    pub fn held_by(&self, e: &RemoteFile) -> bool {
        let same = match (e.sha1.as_deref(), self.sha1, e.md5.as_deref(), self.md5) {
            (Some(a), Some(b), _, _) => a.eq_ignore_ascii_case(b),
            (_, _, Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        };
        e.size == self.size && same
    }
}

impl Fs {
    /// The one "landed copy" matcher: the remote file named `name` in `dir` (as the
    /// target compares names) that is not hidden and that no other node uses, holding
    /// `content` when given: what an earlier attempt of `ino`'s upload may have left.
    /// Listing errors mean "none".
    pub(in crate::fs) async fn find_landed(
        &self,
        ino: u64,
        dir: &DirRef,
        name: &str,
        content: Option<Content<'_>>,
    ) -> Option<RemoteFile> {
        let entries = match self.target.list(dir).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(name, error = %e, "cannot list the target to look for an earlier attempt");
                return None;
            }
        };
        let hidden = self
            .hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let t = self.tree();
        entries.into_iter().find(|e| {
            !e.is_dir
                && t.key(&e.name) == t.key(name)
                && !hidden.contains(&e.id)
                && t.by_remote(&e.id).iter().all(|i| *i == ino)
                && content.is_none_or(|c| c.held_by(e))
        })
    }

    /// Recovery's adopt (Queued | Failed → Landed without uploading): an upload whose
    /// journal shows it had started may have completed on the server before the catalog
    /// heard of it. A remote file with the journaled name, size and digest is that
    /// upload: adopt it instead of uploading a second copy.
    pub(in crate::fs) async fn adopt_finished_upload(&self, ino: u64) -> bool {
        let Ok(Some(j)) = self.catalog.journal_get(ino) else {
            return false;
        };
        if j.started_ms == 0 {
            return false;
        }
        let content = Content {
            size: j.size,
            sha1: j.sha1.as_deref(),
            md5: j.md5.as_deref(),
        };
        let Some(found) = self
            .find_landed(ino, &j.parent_remote, &j.name, Some(content))
            .await
        else {
            return false;
        };
        let landed = Landed {
            sha1: j.sha1.clone().or(found.sha1.clone()),
            md5: j.md5.clone().or(found.md5.clone()),
            size: found.size,
            remote: found.clone(),
        };
        let applied = {
            let mut t = self.tree();
            let Some(n) = t.get(ino) else { return false };
            if n.open.is_some() || !matches!(n.row.state, NodeState::Queued | NodeState::Failed) {
                return false;
            }
            self.apply_committed(&mut t, ino, &landed, true)
        };
        let Some(before) = applied else { return false };
        let _ = self.catalog.journal_end(ino);
        tracing::info!(ino, name = %j.name, id = %found.id, "the interrupted upload had completed; adopted it");
        self.delete_replaced(ino, &found, [before.remote, before.replaces])
            .await;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(size: u64, sha1: Option<&str>, md5: Option<&str>) -> RemoteFile {
        RemoteFile {
            id: "1".into(),
            name: "a".into(),
            size,
            sha1: sha1.map(str::to_string),
            md5: md5.map(str::to_string),
            mtime_ms: 0,
            is_dir: false,
            url: None,
            extra: None,
        }
    }

    #[test]
    fn a_copy_holds_the_content_only_with_the_size_and_a_digest() {
        let d = Digests {
            sha1: Some("ABCD".into()),
            md5: Some("ef01".into()),
        };
        let c = Content::of(4, &d);
        assert!(
            c.held_by(&remote(4, Some("abcd"), None)),
            "hex without case"
        );
        assert!(
            c.held_by(&remote(4, None, Some("EF01"))),
            "MD5 when no SHA-1"
        );
        assert!(!c.held_by(&remote(5, Some("abcd"), None)), "size differs");
        assert!(
            !c.held_by(&remote(4, Some("0000"), Some("ef01"))),
            "SHA-1 decides"
        );
        assert!(
            !c.held_by(&remote(4, None, None)),
            "no digest proves nothing"
        );
    }
}
