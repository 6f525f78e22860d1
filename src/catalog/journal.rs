//! The `journal` table: one row per upload that has not finished (stage, destination,
//! digests, the protocol's session id and the parts done), so a failed attempt or a crash
//! resumes the session where the protocol can.

use std::path::PathBuf;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Catalog, JournalRow, Result};

impl Catalog {
    /// Record that an upload started (replacing any earlier row for the inode).
    pub fn journal_begin(&self, row: &JournalRow) -> Result<()> {
        self.with(|c| write_journal(c, row))
    }

    /// The protocol's session id of a running upload.
    pub fn journal_session(&self, ino: u64, session_id: &str) -> Result<()> {
        self.with(|c| {
            c.prepare_cached("UPDATE journal SET session_id = ?2 WHERE ino = ?1")?
                .execute(params![ino as i64, session_id])
                .map(|_| ())
        })
    }

    /// One more part accepted.
    pub fn journal_part(&self, ino: u64, bytes: u64) -> Result<()> {
        self.with(|c| {
            c.prepare_cached(
                "UPDATE journal SET parts_done = parts_done + 1, bytes_done = bytes_done + ?2
                 WHERE ino = ?1",
            )?
            .execute(params![ino as i64, bytes as i64])
            .map(|_| ())
        })
    }

    /// The journal row of one inode, if an upload of it is journaled.
    pub fn journal_get(&self, ino: u64) -> Result<Option<JournalRow>> {
        self.with(|c| {
            c.prepare_cached(&format!(
                "SELECT {JOURNAL_COLUMNS} FROM journal WHERE ino = ?1"
            ))?
            .query_row([ino as i64], journal_row)
            .optional()
        })
    }

    /// The data copy a write-back close kept with the journal row of `ino`, if any.
    pub fn stage_copy(&self, ino: u64) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.prepare_cached("SELECT data FROM stage_copies WHERE ino = ?1")?
                .query_row([ino as i64], |r| r.get(0))
                .optional()
        })
    }

    pub fn journal_end(&self, ino: u64) -> Result<()> {
        self.with(|c| end_journal(c, ino))
    }

    pub fn journal(&self) -> Result<Vec<JournalRow>> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOURNAL_COLUMNS} FROM journal ORDER BY ino"
            ))?;
            let rows = st.query_map([], journal_row)?;
            rows.collect()
        })
    }
}

/// The journal row ends, and the data copy kept with it (if any).
pub(super) fn end_journal(c: &Connection, ino: u64) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM journal WHERE ino = ?1")?
        .execute([ino as i64])?;
    end_copy(c, ino)
}

pub(super) fn write_copy(c: &Connection, ino: u64, data: &[u8]) -> rusqlite::Result<()> {
    c.prepare_cached("INSERT OR REPLACE INTO stage_copies(ino, data) VALUES (?1, ?2)")?
        .execute(params![ino as i64, data])
        .map(|_| ())
}

pub(super) fn end_copy(c: &Connection, ino: u64) -> rusqlite::Result<()> {
    c.prepare_cached("DELETE FROM stage_copies WHERE ino = ?1")?
        .execute([ino as i64])
        .map(|_| ())
}

pub(super) fn write_journal(c: &Connection, row: &JournalRow) -> rusqlite::Result<()> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO journal(ino, stage, target, parent_remote, name, size,
                sha1, md5, session_id, parts_done, bytes_done, started_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        row.ino as i64,
        row.stage.to_string_lossy(),
        row.target,
        row.parent_remote,
        row.name,
        row.size as i64,
        row.sha1,
        row.md5,
        row.session_id,
        row.parts_done as i64,
        row.bytes_done as i64,
        row.started_ms,
    ])
    .map(|_| ())
}

pub(super) const JOURNAL_COLUMNS: &str =
    "ino, stage, target, parent_remote, name, size, sha1, md5, \
                               session_id, parts_done, bytes_done, started_ms";

pub(super) fn journal_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalRow> {
    Ok(JournalRow {
        ino: r.get::<_, i64>(0)? as u64,
        stage: PathBuf::from(r.get::<_, String>(1)?),
        target: r.get(2)?,
        parent_remote: r.get(3)?,
        name: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        sha1: r.get(6)?,
        md5: r.get(7)?,
        session_id: r.get(8)?,
        parts_done: r.get::<_, i64>(9)? as u64,
        bytes_done: r.get::<_, i64>(10)? as u64,
        started_ms: r.get(11)?,
    })
}
