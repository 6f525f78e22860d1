//! Adopting a copy that already landed: an upload whose answer was lost (a failed attempt,
//! or a crash before the catalog heard of the result) may have completed on the server.
//! Before sending the file again, the target's listing is searched for that copy; when it
//! provably holds this data it becomes the upload, else the new upload replaces it.

use crate::catalog::NodeState;
use crate::remote::{DirRef, RemoteFile};

use crate::fs::Fs;

impl Fs {
    /// The remote file named `name` in `dir` that no other node uses: what an earlier
    /// failed upload of `ino` may have left after all. Listing errors mean "none".
    pub(in crate::fs) async fn landed_copy(
        &self,
        ino: u64,
        dir: &DirRef,
        name: &str,
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
        let found = entries.into_iter().find(|e| {
            !e.is_dir
                && t.key(&e.name) == t.key(name)
                && !hidden.contains(&e.id)
                && t.by_remote(&e.id).iter().all(|i| *i == ino)
        });
        if let Some(e) = &found {
            tracing::info!(name, id = %e.id, "an earlier failed upload had landed; replacing it");
        }
        found
    }

    /// After a crash: an upload whose journal shows it had started may have completed on
    /// the server before the catalog heard of it. A remote file with the journaled name,
    /// size and digest is that upload: adopt it instead of uploading a second copy.
    pub(in crate::fs) async fn adopt_finished_upload(&self, ino: u64) -> bool {
        let Ok(Some(j)) = self.catalog.journal_get(ino) else {
            return false;
        };
        if j.started_ms == 0 {
            return false;
        }
        let Ok(list) = self.target.list(&j.parent_remote).await else {
            return false;
        };
        let same_digest = |e: &crate::remote::RemoteFile| match (&e.sha1, &j.sha1, &e.md5, &j.md5) {
            (Some(a), Some(b), _, _) => a.eq_ignore_ascii_case(b),
            (_, _, Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        };
        let Some(found) = list
            .into_iter()
            .find(|e| !e.is_dir && e.name == j.name && e.size == j.size && same_digest(e))
        else {
            return false;
        };
        let replaced = {
            let mut t = self.tree();
            let Some(n) = t.get(ino) else { return false };
            if n.open.is_some() || !matches!(n.row.state, NodeState::Queued | NodeState::Failed) {
                return false;
            }
            let old = [n.row.remote.clone(), n.row.replaces.clone()];
            let stage = n.row.stage.clone();
            t.set_remote(ino, Some(found.clone()));
            if let Some(n) = t.get_mut(ino) {
                n.row.state = NodeState::Committed;
                n.row.sha1 = j.sha1.clone().or(found.sha1.clone());
                n.row.md5 = j.md5.clone().or(found.md5.clone());
                n.row.size = found.size;
                n.row.last_error = None;
                n.row.replaces = None;
                n.row.stage = None;
                let row = n.row.clone();
                let _ = self.persist(&row);
            }
            if let Some(p) = stage {
                let _ = std::fs::remove_file(p);
            }
            old
        };
        let _ = self.catalog.journal_end(ino);
        tracing::info!(ino, name = %j.name, id = %found.id, "the interrupted upload had completed; adopted it");
        for old in replaced.into_iter().flatten() {
            if old.id != found.id {
                let _ = self.delete_remote(&old, ino).await;
            }
        }
        true
    }
}
