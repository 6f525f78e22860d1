//! The `nodes` and `hidden` tables: one row per file or directory (the local view, the
//! remote view and the upload state), and the remote ids removed locally but kept remotely.

use std::path::PathBuf;

use rusqlite::{params, Connection, OptionalExtension};

use crate::remote::RemoteFile;

use std::collections::HashMap;

use super::journal::write_journal;
use super::{
    Catalog, CatalogError, JournalRow, NodeKind, NodeRow, NodeState, Result, NODE_COLUMNS,
    ROOT_INO, WRITTEN_MAX,
};

/// What a journal write does with the data copy kept beside the row.
enum StageCopy<'a> {
    Keep,
    Set(&'a [u8]),
    Remove,
}

impl Catalog {
    /// Every node (mount time).
    pub fn load_nodes(&self) -> Result<Vec<NodeRow>> {
        let rows = self.with(|c| {
            let mut st = c.prepare(&format!("SELECT {NODE_COLUMNS} FROM nodes ORDER BY ino"))?;
            let rows = st.query_map([], raw_node)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(|r| self.decode(r)).collect()
    }

    /// One node.
    pub fn get_node(&self, ino: u64) -> Result<Option<NodeRow>> {
        let raw = self.with(|c| {
            c.query_row(
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE ino = ?1"),
                [ino as i64],
                raw_node,
            )
            .optional()
        })?;
        raw.map(|r| self.decode(r)).transpose()
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<u64, NodeRow>> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Remember `row` as the catalog's content for its inode.
    fn remember(written: &mut HashMap<u64, NodeRow>, row: NodeRow) {
        if written.len() >= WRITTEN_MAX && !written.contains_key(&row.ino) {
            written.clear();
        }
        written.insert(row.ino, row);
    }

    /// Insert a new node and return its inode number (`row.ino` is ignored; the root is
    /// created by [`Catalog::ensure_root`]).
    pub fn insert_node(&self, row: &NodeRow) -> Result<u64> {
        let remote = encode_remote(&row.remote);
        let replaces = encode_remote(&row.replaces);
        // Lock order everywhere: `written`, then the connection.
        let mut written = self.written();
        let ino = self.with(|c| {
            // Cached statements: parsing the SQL again cost as much as running it.
            c.prepare_cached(
                "INSERT INTO nodes(parent, name, kind, size, mtime_ms, mode, uid, gid, remote_id,
                                   remote, state, sha1, md5, last_error, stage, replaces)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
            )?
            .execute(params![
                row.parent as i64,
                row.name,
                row.kind.as_str(),
                row.size as i64,
                row.mtime_ms,
                row.mode,
                row.uid,
                row.gid,
                row.remote.as_ref().map(|r| r.id.clone()),
                remote,
                row.state.as_str(),
                row.sha1,
                row.md5,
                row.last_error,
                row.stage.as_ref().map(|p| p.to_string_lossy().into_owned()),
                replaces,
            ])?;
            Ok(c.last_insert_rowid() as u64)
        })?;
        Self::remember(&mut written, NodeRow { ino, ..row.clone() });
        Ok(ino)
    }

    /// Create the root row (inode 1) if the catalog is new; returns the root row.
    pub fn ensure_root(&self, mode: u32, uid: u32, gid: u32, now_ms: i64) -> Result<NodeRow> {
        if let Some(root) = self.get_node(ROOT_INO)? {
            return Ok(root);
        }
        self.with(|c| {
            c.execute(
                "INSERT INTO nodes(ino, parent, name, kind, size, mtime_ms, mode, uid, gid, state)
                 VALUES (?1, ?1, '', 'dir', 0, ?2, ?3, ?4, ?5, 'committed')",
                params![ROOT_INO as i64, now_ms, mode, uid, gid],
            )
            .map(|_| ())
        })?;
        self.get_node(ROOT_INO)?
            .ok_or_else(|| CatalogError::Invalid {
                path: self.path.clone(),
                message: "root row missing after insert".to_string(),
            })
    }

    /// Write every column of an existing node (nothing when the row is as last written).
    pub fn update_node(&self, row: &NodeRow) -> Result<()> {
        let mut written = self.written();
        if written.get(&row.ino) == Some(row) {
            return Ok(());
        }
        let r = self.with(|c| write_node(c, row));
        self.settle(&mut written, row, r)
    }

    /// Update a node and record its journal row in one transaction (an upload attempt
    /// starts; a data copy kept with an earlier row stays).
    pub fn update_node_and_journal(&self, row: &NodeRow, journal: &JournalRow) -> Result<()> {
        self.node_and_journal(row, journal, StageCopy::Keep)
    }

    /// A write-back close: the node, its journal row and, for a small file, a copy of the
    /// data, in one transaction. With the copy one sync of the log makes the data durable
    /// together with its row, instead of a sync of the stage beside the log's; recovery
    /// writes the stage back from it when the stage did not reach the disk. The copy lives
    /// as long as the journal row; `None` removes an earlier version's copy.
    pub fn update_node_and_journal_with_copy(
        &self,
        row: &NodeRow,
        journal: &JournalRow,
        copy: Option<&[u8]>,
    ) -> Result<()> {
        let copy = match copy {
            Some(data) => StageCopy::Set(data),
            None => StageCopy::Remove,
        };
        self.node_and_journal(row, journal, copy)
    }

    fn node_and_journal(
        &self,
        row: &NodeRow,
        journal: &JournalRow,
        copy: StageCopy<'_>,
    ) -> Result<()> {
        let mut written = self.written();
        let r = self.with(|c| {
            let tx = c.unchecked_transaction()?;
            if written.get(&row.ino) != Some(row) {
                write_node(&tx, row)?;
            }
            write_journal(&tx, journal)?;
            match copy {
                StageCopy::Keep => {}
                StageCopy::Set(data) => super::journal::write_copy(&tx, row.ino, data)?,
                StageCopy::Remove => super::journal::end_copy(&tx, row.ino)?,
            }
            tx.commit()
        });
        self.settle(&mut written, row, r)
    }

    /// Update a node and remove its journal row in one transaction: an upload landed
    /// (one commit instead of two for every file a `close()` uploads).
    pub fn update_node_and_end_journal(&self, row: &NodeRow) -> Result<()> {
        let mut written = self.written();
        let r = self.with(|c| {
            let tx = c.unchecked_transaction()?;
            if written.get(&row.ino) != Some(row) {
                write_node(&tx, row)?;
            }
            super::journal::end_journal(&tx, row.ino)?;
            tx.commit()
        });
        self.settle(&mut written, row, r)
    }

    /// After writing `row`: remember it, or forget the inode's row if the write failed.
    fn settle(
        &self,
        written: &mut HashMap<u64, NodeRow>,
        row: &NodeRow,
        r: Result<()>,
    ) -> Result<()> {
        match &r {
            Ok(()) => Self::remember(written, row.clone()),
            Err(_) => {
                written.remove(&row.ino);
            }
        }
        r
    }

    /// Remove a node (and its journal row), in one transaction.
    pub fn delete_node(&self, ino: u64) -> Result<()> {
        let mut written = self.written();
        written.remove(&ino);
        self.with(|c| {
            let tx = c.unchecked_transaction()?;
            tx.prepare_cached("DELETE FROM nodes WHERE ino = ?1")?
                .execute([ino as i64])?;
            super::journal::end_journal(&tx, ino)?;
            tx.commit()
        })
    }

    /// Nodes that are not committed (for `status`).
    pub fn pending_nodes(&self) -> Result<Vec<NodeRow>> {
        let rows = self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {NODE_COLUMNS} FROM nodes WHERE state != 'committed' ORDER BY ino"
            ))?;
            let rows = st.query_map([], raw_node)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(|r| self.decode(r)).collect()
    }

    /// Remote ids that listings must not show again.
    pub fn hidden(&self) -> Result<Vec<String>> {
        self.with(|c| {
            let mut st = c.prepare("SELECT remote_id FROM hidden")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    pub fn hide(&self, remote_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO hidden(remote_id) VALUES (?1)",
                [remote_id],
            )
            .map(|_| ())
        })
    }

    pub fn unhide(&self, remote_id: &str) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM hidden WHERE remote_id = ?1", [remote_id])
                .map(|_| ())
        })
    }

    fn decode(&self, r: RawNode) -> Result<NodeRow> {
        let invalid = |message: String| CatalogError::Invalid {
            path: self.path.clone(),
            message,
        };
        let kind = NodeKind::parse(&r.kind)
            .ok_or_else(|| invalid(format!("node {}: unknown kind {:?}", r.ino, r.kind)))?;
        let state = NodeState::parse(&r.state)
            .ok_or_else(|| invalid(format!("node {}: unknown state {:?}", r.ino, r.state)))?;
        let remote = decode_remote(r.remote.as_deref())
            .map_err(|e| invalid(format!("node {}: remote: {e}", r.ino)))?;
        let replaces = decode_remote(r.replaces.as_deref())
            .map_err(|e| invalid(format!("node {}: replaces: {e}", r.ino)))?;
        Ok(NodeRow {
            ino: r.ino,
            parent: r.parent,
            name: r.name,
            kind,
            size: r.size,
            mtime_ms: r.mtime_ms,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            remote,
            state,
            sha1: r.sha1,
            md5: r.md5,
            last_error: r.last_error,
            stage: r.stage.map(PathBuf::from),
            replaces,
        })
    }
}

pub(super) struct RawNode {
    ino: u64,
    parent: u64,
    name: String,
    kind: String,
    size: u64,
    mtime_ms: i64,
    mode: u32,
    uid: u32,
    gid: u32,
    remote: Option<String>,
    state: String,
    sha1: Option<String>,
    md5: Option<String>,
    last_error: Option<String>,
    stage: Option<String>,
    replaces: Option<String>,
}

pub(super) fn raw_node(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawNode> {
    Ok(RawNode {
        ino: r.get::<_, i64>(0)? as u64,
        parent: r.get::<_, i64>(1)? as u64,
        name: r.get(2)?,
        kind: r.get(3)?,
        size: r.get::<_, i64>(4)? as u64,
        mtime_ms: r.get(5)?,
        mode: r.get(6)?,
        uid: r.get(7)?,
        gid: r.get(8)?,
        remote: r.get(9)?,
        state: r.get(10)?,
        sha1: r.get(11)?,
        md5: r.get(12)?,
        last_error: r.get(13)?,
        stage: r.get(14)?,
        replaces: r.get(15)?,
    })
}

/// Write every column of `row` over its inode's row.
pub(super) fn write_node(c: &Connection, row: &NodeRow) -> rusqlite::Result<()> {
    c.prepare_cached(
        "UPDATE nodes SET parent = ?2, name = ?3, kind = ?4, size = ?5, mtime_ms = ?6,
                mode = ?7, uid = ?8, gid = ?9, remote_id = ?10, remote = ?11, state = ?12,
                sha1 = ?13, md5 = ?14, last_error = ?15, stage = ?16, replaces = ?17
         WHERE ino = ?1",
    )?
    .execute(params![
        row.ino as i64,
        row.parent as i64,
        row.name,
        row.kind.as_str(),
        row.size as i64,
        row.mtime_ms,
        row.mode,
        row.uid,
        row.gid,
        row.remote.as_ref().map(|r| r.id.clone()),
        encode_remote(&row.remote),
        row.state.as_str(),
        row.sha1,
        row.md5,
        row.last_error,
        row.stage.as_ref().map(|p| p.to_string_lossy().into_owned()),
        encode_remote(&row.replaces),
    ])
    .map(|_| ())
}

pub(super) fn encode_remote(r: &Option<RemoteFile>) -> Option<String> {
    r.as_ref().and_then(|r| serde_json::to_string(r).ok())
}

pub(super) fn decode_remote(
    s: Option<&str>,
) -> std::result::Result<Option<RemoteFile>, serde_json::Error> {
    s.map(serde_json::from_str).transpose()
}
