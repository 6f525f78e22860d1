//! Crash recovery: what an earlier run left unfinished becomes a state of the lifecycle
//! again.
//!
//! At mount ([`load_tree`]) every row is brought to a state this run can act on: an edit
//! never closed drops its stage (the remote still has the truth); a small file closed in
//! write-back mode gets its stage back from the data the catalog kept with its journal
//! row, should the stage not have reached the disk; a pending file whose stage is lost
//! falls back to its remote copy or is dropped; `uploading` (the writer had
//! closed it) becomes `queued`; `staged` (the writer never closed it) becomes
//! `incomplete`, never uploaded on its own. Journal rows stay only for files still to
//! upload, so their sessions can be resumed.
//!
//! Then ([`Fs::recover`]) files left `queued` or `failed` are queued again in both modes;
//! the worker first looks remotely for an upload that finished just before the crash
//! (`adopt`) and checks that the stage still holds what was journaled. Files an earlier
//! run left after `unmount --force` during an outage come back the same way; should the
//! target still be unreachable, they wait for it in the queue like any upload an outage
//! stopped (`queue`), and go up when it answers.

use std::sync::Arc;

use crate::catalog::{Catalog, CatalogError, NodeKind, NodeRow, NodeState};
use crate::remote::Digests;
use crate::write::digests::Hashers;

use crate::fs::handle::OpenFile;
use crate::fs::inode::{Node, Tree};
use crate::fs::{Error, Fs, FsResult};

/// Load the catalog into a tree, bringing rows an earlier run left mid-lifecycle to a state
/// this run can act on (see the module documentation).
pub(in crate::fs) fn load_tree(
    catalog: &Catalog,
    case_insensitive: bool,
) -> Result<Tree, CatalogError> {
    let mut tree = Tree::new(case_insensitive);
    for mut row in catalog.load_nodes()? {
        let mut changed = false;
        if matches!(
            row.state,
            NodeState::Queued | NodeState::Uploading | NodeState::Failed
        ) {
            restore_stage(catalog, &row)?;
        }
        let stage_ok = row.stage.as_ref().is_some_and(|p| p.exists());
        match row.state {
            NodeState::Committed if row.stage.is_some() => {
                // An edit that was never closed; the remote still has the truth.
                if let Some(p) = &row.stage {
                    let _ = std::fs::remove_file(p);
                }
                row.stage = None;
                changed = true;
            }
            NodeState::Staged | NodeState::Queued | NodeState::Uploading | NodeState::Failed
                if !stage_ok && row.kind == NodeKind::File =>
            {
                if row.remote.is_some() {
                    row.state = NodeState::Committed;
                    row.stage = None;
                    changed = true;
                } else {
                    tracing::warn!(name = %row.name, "stage file lost; dropping the pending file");
                    catalog.delete_node(row.ino)?;
                    continue;
                }
            }
            NodeState::Uploading => {
                // The writer had closed the file (a commit only starts then): upload it
                // again, resuming the journaled session where the protocol can.
                row.state = NodeState::Queued;
                row.last_error =
                    Some("interrupted: the mount stopped during the upload".to_string());
                changed = true;
            }
            NodeState::Staged => {
                row.state = NodeState::Incomplete;
                // The size was only recorded at close: take what the stage holds.
                if let Some(len) = row
                    .stage
                    .as_ref()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map(|m| m.len())
                {
                    row.size = len;
                }
                row.last_error =
                    Some("the mount stopped while the file was open for writing".to_string());
                changed = true;
            }
            _ => {}
        }
        if changed {
            catalog.update_node(&row)?;
        }
        tree.insert(Node::new(row));
    }
    // Journal rows of files still to upload stay (their sessions can be resumed).
    for j in catalog.journal()? {
        let keep = tree.get(j.ino).is_some_and(|n| {
            n.row.stage.as_ref() == Some(&j.stage)
                && matches!(n.row.state, NodeState::Queued | NodeState::Failed)
        });
        if !keep {
            catalog.journal_end(j.ino)?;
        }
    }
    Ok(tree)
}

/// A small file closed in write-back mode kept its data in the catalog instead of syncing
/// its stage (see `queue::STAGE_COPY_MAX`): write the stage back from that copy when the
/// stage did not reach the disk (missing, short, or other bytes). Only a copy that matches
/// the journaled digests is used: a later upload attempt of another version journals its
/// own digests, and the stage it wrote is then checked against those as before.
fn restore_stage(catalog: &Catalog, row: &NodeRow) -> Result<(), CatalogError> {
    let Some(stage) = &row.stage else {
        return Ok(());
    };
    let Some(copy) = catalog.stage_copy(row.ino)? else {
        return Ok(());
    };
    let Some(j) = catalog.journal_get(row.ino)? else {
        return Ok(());
    };
    let digests = |data: &[u8]| Hashers::of(data, j.md5.is_some());
    let matches = |d: &Digests| {
        (j.sha1.is_some() || j.md5.is_some())
            && (j.sha1.is_none() || d.sha1 == j.sha1)
            && (j.md5.is_none() || d.md5 == j.md5)
    };
    if &j.stage != stage || copy.len() as u64 != j.size || !matches(&digests(&copy)) {
        return Ok(());
    }
    // Read only a stage of the copy's size: a larger one (a later version, never closed)
    // is not read whole into memory to learn that it differs.
    let intact = std::fs::metadata(stage).is_ok_and(|m| m.len() == j.size)
        && std::fs::read(stage).is_ok_and(|held| matches(&digests(&held)));
    if intact {
        return Ok(());
    }
    // No sync needed: the copy stays in the catalog until the upload lands.
    match std::fs::write(stage, &copy) {
        Ok(()) => tracing::info!(name = %row.name, "stage written back from the catalog's copy"),
        Err(e) => {
            tracing::warn!(name = %row.name, error = %e, "cannot write the stage back from the catalog's copy")
        }
    }
    Ok(())
}

impl Fs {
    /// Queue every file an earlier run left to upload (mount time, both modes). Returns
    /// how many were queued.
    pub fn recover(&self) -> usize {
        let inos: Vec<u64> = self
            .tree()
            .all()
            .filter(|n| {
                n.row.stage.is_some()
                    && matches!(n.row.state, NodeState::Queued | NodeState::Failed)
            })
            .map(|n| n.row.ino)
            .collect();
        for ino in &inos {
            self.uploads.enqueue(*ino, true, None);
        }
        inos.len()
    }

    /// A stage reopened after a crash must still hold what was journaled (an upload in
    /// flight in the default mode had no fsync): a mismatch makes it `incomplete`, never
    /// uploaded on its own. A match spares the commit a second hash.
    pub(in crate::fs) async fn check_recovered_stage(
        &self,
        ino: u64,
        of: &Arc<OpenFile>,
    ) -> FsResult<()> {
        let Ok(Some(j)) = self.catalog.journal_get(ino) else {
            return Ok(());
        };
        if j.stage != of.stage.path() || j.sha1.is_none() {
            return Ok(());
        }
        let version = of.stage.version();
        let stage = of.stage.clone();
        let d = tokio::task::spawn_blocking(move || stage.digests())
            .await
            .map_err(|_| libc::EIO)??;
        if of.stage.size() == j.size && d.sha1 == j.sha1 {
            of.set_known_digests(version, d);
            return Ok(());
        }
        self.set_state(
            ino,
            NodeState::Incomplete,
            "the mount stopped before this file's data reached the disk; its local data is incomplete",
        );
        let _ = self.catalog.journal_end(ino);
        Err(Error::msg(
            libc::EIO,
            format!(
                "the stage of {} no longer matches its journal; kept as incomplete",
                j.name
            ),
        ))
    }

    /// Upload again every file whose last upload failed (at mount time, in the
    /// background). Returns how many are in sync afterwards.
    pub async fn retry_failed(&self) -> usize {
        let failed: Vec<u64> = self
            .tree()
            .all()
            .filter(|n| n.row.state == NodeState::Failed && n.row.stage.is_some())
            .map(|n| n.row.ino)
            .collect();
        let mut ok = 0;
        for ino in failed {
            let Ok(of) = self.open_for_write(ino, false, true).await else {
                continue;
            };
            let r = self.commit(ino, &of).await;
            self.put_open(ino, &of, true);
            match r {
                Ok(()) => ok += 1,
                Err(e) => tracing::warn!(ino, error = %e, "retrying a failed upload failed again"),
            }
        }
        ok
    }
}
