//! The catalog: a small SQLite database under the state directory that remembers what the
//! mount knows, so the namespace (and every inode number) survives remounts.
//!
//! Two tables:
//! - `nodes`: one row per file or directory. `ino` is the primary key and is never reused
//!   (AUTOINCREMENT), so the kernel never sees one inode number name two different files.
//!   A row carries the local view (parent, name, size, mtime, mode, owner), the remote view
//!   (remote id plus the serialized [`RemoteFile`]), the upload state and digests, the stage
//!   file of pending data, and the remote file a pending upload will replace.
//! - `journal`: one row per upload that has not finished: stage path, target, remote
//!   parent, name, size, digests, the protocol's session id and the parts done. A
//!   write-back `close()` writes the row (with `started_ms` 0) before it returns; an upload
//!   attempt fills in the session; success removes the row, a failure keeps it so the next
//!   attempt (or the next mount, after a crash) resumes the session where the protocol can.
//! - `hidden`: remote ids removed locally but kept remotely (`--keep-remote`, or a target
//!   without delete), so later listings do not bring them back.
//!
//! The filesystem keeps its own in-memory tree and writes through to the catalog on every
//! namespace change; the catalog is read in full only at mount time. All statements run on
//! one connection behind a mutex (they are short; WAL keeps commits cheap).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

use crate::remote::RemoteFile;

mod journal;
mod nodes;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Inode number of the mount's root directory (FUSE's fixed root inode).
pub const ROOT_INO: u64 = 1;

/// Schema version stored in `meta`; bump when the tables change incompatibly.
const SCHEMA_VERSION: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("catalog {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, CatalogError>;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Dir,
}

impl NodeKind {
    fn as_str(self) -> &'static str {
        match self {
            NodeKind::File => "file",
            NodeKind::Dir => "dir",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "file" => Some(NodeKind::File),
            "dir" => Some(NodeKind::Dir),
            _ => None,
        }
    }
}

/// Where a node stands relative to the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// The remote has exactly this content (or, for a folder, it exists remotely or is a
    /// catalog-only folder of a flat target).
    Committed,
    /// Local data in a stage file that has not been uploaded yet (a writer may still be
    /// changing it).
    Staged,
    /// Closed in write-back mode: the stage is durable and journaled, and a background
    /// upload will send it (after a crash too).
    Queued,
    /// An upload of the stage is running.
    Uploading,
    /// The last upload failed; the stage is kept and the error recorded.
    Failed,
    /// The stage is known to be incomplete (the daemon stopped while it was being written
    /// or fetched); its data is kept for inspection but it is never uploaded on its own.
    Incomplete,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Committed => "committed",
            NodeState::Staged => "staged",
            NodeState::Queued => "queued",
            NodeState::Uploading => "uploading",
            NodeState::Failed => "failed",
            NodeState::Incomplete => "incomplete",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "committed" => NodeState::Committed,
            "staged" => NodeState::Staged,
            "queued" => NodeState::Queued,
            "uploading" => NodeState::Uploading,
            "failed" => NodeState::Failed,
            "incomplete" => NodeState::Incomplete,
            _ => return None,
        })
    }
}

/// One `nodes` row.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRow {
    pub ino: u64,
    pub parent: u64,
    pub name: String,
    pub kind: NodeKind,
    pub size: u64,
    pub mtime_ms: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub remote: Option<RemoteFile>,
    pub state: NodeState,
    pub sha1: Option<String>,
    pub md5: Option<String>,
    pub last_error: Option<String>,
    /// Stage file holding this node's pending data.
    pub stage: Option<PathBuf>,
    /// A remote file the next upload of this node replaces (set by a replacing rename of a
    /// pending file onto a committed one).
    pub replaces: Option<RemoteFile>,
}

/// One `journal` row: an upload in progress.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalRow {
    pub ino: u64,
    pub stage: PathBuf,
    pub target: String,
    /// Remote id of the parent folder (`None` = the target's root).
    pub parent_remote: Option<String>,
    pub name: String,
    pub size: u64,
    pub sha1: Option<String>,
    pub md5: Option<String>,
    pub session_id: Option<String>,
    pub parts_done: u64,
    pub bytes_done: u64,
    pub started_ms: i64,
}

/// The catalog database.
pub struct Catalog {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The rows as last written, for the nodes written most recently: an update that
    /// changes nothing is skipped (a file's create, upload and close used to write the
    /// same row twice in a row).
    written: Mutex<HashMap<u64, NodeRow>>,
    /// Statements run so far (reads too: counting them costs nothing and only makes a
    /// sync cover more).
    writes: AtomicU64,
    sync_state: Mutex<SyncState>,
    sync_done: Condvar,
}

/// Grouped syncs ([`Catalog::sync`]).
#[derive(Debug, Default)]
struct SyncState {
    /// Every statement counted up to this value is durable.
    synced: u64,
    /// A sync is running.
    running: bool,
}

/// Rows kept in [`Catalog::written`]; the map is emptied when it grows past this, which
/// only costs the next update of each node its full form.
pub(super) const WRITTEN_MAX: usize = 256;

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    ino        INTEGER PRIMARY KEY AUTOINCREMENT,
    parent     INTEGER NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ms   INTEGER NOT NULL,
    mode       INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    gid        INTEGER NOT NULL,
    remote_id  TEXT,
    remote     TEXT,
    state      TEXT NOT NULL,
    sha1       TEXT,
    md5        TEXT,
    last_error TEXT,
    stage      TEXT,
    replaces   TEXT
);
-- Earlier versions indexed parent and remote_id; no statement looks nodes up by either
-- (the in-memory tree does), and each index cost every insert and update a page.
DROP INDEX IF EXISTS nodes_parent;
DROP INDEX IF EXISTS nodes_remote;
CREATE TABLE IF NOT EXISTS hidden (remote_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS journal (
    ino           INTEGER PRIMARY KEY,
    stage         TEXT NOT NULL,
    target        TEXT NOT NULL,
    parent_remote TEXT,
    name          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    sha1          TEXT,
    md5           TEXT,
    session_id    TEXT,
    parts_done    INTEGER NOT NULL DEFAULT 0,
    bytes_done    INTEGER NOT NULL DEFAULT 0,
    started_ms    INTEGER NOT NULL
);
-- The data of a small file closed in write-back mode, written with its journal row so one
-- sync of the log makes both durable; removed with the journal row (see
-- `Catalog::update_node_and_journal_with_copy`).
CREATE TABLE IF NOT EXISTS stage_copies (
    ino  INTEGER PRIMARY KEY,
    data BLOB NOT NULL
);
";

pub(super) const NODE_COLUMNS: &str =
    "ino, parent, name, kind, size, mtime_ms, mode, uid, gid, remote, \
                            state, sha1, md5, last_error, stage, replaces";

impl Catalog {
    /// Open (creating if needed) the catalog at `path`.
    pub fn open(path: &Path) -> Result<Catalog> {
        let err = |source| CatalogError::Sql {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        Self::init(conn, path)
    }

    /// Open an existing catalog read-only (for `uploadfs status` next to a running mount).
    pub fn open_read_only(path: &Path) -> Result<Catalog> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| CatalogError::Sql {
            path: path.to_path_buf(),
            source,
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|source| CatalogError::Sql {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Catalog {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            written: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
            sync_state: Mutex::new(SyncState::default()),
            sync_done: Condvar::new(),
        })
    }

    /// An in-memory catalog (unit tests).
    pub fn in_memory() -> Result<Catalog> {
        let conn = Connection::open_in_memory().map_err(|source| CatalogError::Sql {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn, Path::new(":memory:"))
    }

    fn init(conn: Connection, path: &Path) -> Result<Catalog> {
        let err = |source| CatalogError::Sql {
            path: path.to_path_buf(),
            source,
        };
        // One process owns the catalog (the daemon holds the state directory's lock), so
        // it keeps SQLite's lock for as long as it runs: no file-lock calls and no shared
        // memory on every statement (they were a quarter of the catalog's cost for a small
        // file). Must be set before WAL is entered to take effect. `uploadfs status`
        // reads the catalog only when no daemon answers on its socket.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(err)?;
        // WAL + NORMAL: a namespace change costs one small append, not an fsync per row;
        // a crash can lose the last few changes but never corrupts the file.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // Checkpoint every 8000 pages (32 MiB of log) instead of SQLite's 1000: the same
        // few pages are rewritten for every file, so a checkpoint copies about as much
        // either way, eight times less often.
        conn.pragma_update(None, "wal_autocheckpoint", 8000)
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(err)?;
        match version.as_deref() {
            None => {
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema', ?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(err)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(CatalogError::Invalid {
                    path: path.to_path_buf(),
                    message: format!(
                        "schema version {other} is not supported (expected {SCHEMA_VERSION})"
                    ),
                })
            }
        }
        Ok(Catalog {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            written: Mutex::new(HashMap::new()),
            writes: AtomicU64::new(0),
            sync_state: Mutex::new(SyncState::default()),
            sync_done: Condvar::new(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql_err(&self, source: rusqlite::Error) -> CatalogError {
        CatalogError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&conn).map_err(|e| self.sql_err(e));
        // Counted once the statement is done: a sync that starts later covers it.
        self.writes.fetch_add(1, Ordering::SeqCst);
        r
    }

    /// A value from the `meta` table (e.g. which target this catalog belongs to).
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.with(|c| {
            c.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        })
    }

    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
        })
    }

    /// Make every change committed so far durable: `close()` in write-back mode returns
    /// only after this.
    ///
    /// Only the write-ahead log is synced: in WAL mode a commit only appends to the log,
    /// and with `synchronous=NORMAL` SQLite itself syncs the log before a checkpoint
    /// copies it into the database file and the database file after. Syncs are grouped:
    /// a caller whose changes were covered by a sync that started after them returns at
    /// once, and while one sync runs the others wait for it instead of queueing their own.
    pub fn sync(&self) -> Result<()> {
        let mine = self.writes.load(Ordering::SeqCst);
        let mut st = self.sync_state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.synced >= mine {
                return Ok(());
            }
            if !st.running {
                break;
            }
            st = self.sync_done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.running = true;
        // Every statement counted here has finished writing: the sync covers it.
        let upto = self.writes.load(Ordering::SeqCst);
        drop(st);
        let r = self.sync_wal();
        let mut st = self.sync_state.lock().unwrap_or_else(|p| p.into_inner());
        st.running = false;
        if r.is_ok() {
            st.synced = st.synced.max(upto);
        }
        self.sync_done.notify_all();
        r
    }

    fn sync_wal(&self) -> Result<()> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let p = PathBuf::from(wal);
        match std::fs::OpenOptions::new().write(true).open(&p) {
            Ok(f) => f.sync_data().map_err(|e| CatalogError::Invalid {
                path: p.clone(),
                message: format!("fsync: {e}"),
            }),
            // In-memory catalogs (tests) have no files.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CatalogError::Invalid {
                path: p.clone(),
                message: format!("open for fsync: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_row(parent: u64, name: &str) -> NodeRow {
        NodeRow {
            ino: 0,
            parent,
            name: name.to_string(),
            kind: NodeKind::File,
            size: 3,
            mtime_ms: 1_700_000_000_000,
            mode: 0o644,
            uid: 0,
            gid: 0,
            remote: Some(RemoteFile {
                id: "42".into(),
                name: name.into(),
                size: 3,
                mtime_ms: 5,
                is_dir: false,
                sha1: Some("ab".into()),
                md5: None,
                url: None,
                extra: Some("m1".into()),
            }),
            state: NodeState::Committed,
            sha1: Some("ab".into()),
            md5: None,
            last_error: None,
            stage: None,
            replaces: None,
        }
    }

    #[test]
    fn nodes_round_trip_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let ino;
        {
            let c = Catalog::open(&path).unwrap();
            let root = c.ensure_root(0o755, 0, 0, 1).unwrap();
            assert_eq!(root.ino, ROOT_INO);
            ino = c.insert_node(&file_row(ROOT_INO, "a.txt")).unwrap();
            assert!(ino > ROOT_INO);
            let mut row = c.get_node(ino).unwrap().unwrap();
            row.name = "b.txt".into();
            row.state = NodeState::Failed;
            row.last_error = Some("upload of b.txt failed: 503".into());
            row.stage = Some(dir.path().join("stage-1"));
            c.update_node(&row).unwrap();
        }
        let c = Catalog::open(&path).unwrap();
        let nodes = c.load_nodes().unwrap();
        assert_eq!(nodes.len(), 2);
        let row = &nodes[1];
        assert_eq!(row.ino, ino);
        assert_eq!(row.name, "b.txt");
        assert_eq!(row.state, NodeState::Failed);
        assert_eq!(row.remote.as_ref().unwrap().extra.as_deref(), Some("m1"));
        assert_eq!(c.pending_nodes().unwrap().len(), 1);
        // Inode numbers are never reused, even after the highest one is deleted.
        c.delete_node(ino).unwrap();
        let next = c.insert_node(&file_row(ROOT_INO, "c.txt")).unwrap();
        assert!(next > ino, "{next} must be above the deleted {ino}");
    }

    /// The journal row of a 3-byte `a.bin` at inode `ino`.
    fn journal_of_a(ino: u64) -> JournalRow {
        JournalRow {
            ino,
            stage: PathBuf::from("/s/a"),
            target: "work".into(),
            parent_remote: None,
            name: "a.bin".into(),
            size: 3,
            sha1: Some("ab".into()),
            md5: None,
            session_id: None,
            parts_done: 0,
            bytes_done: 0,
            started_ms: 1,
        }
    }

    #[test]
    fn a_landed_row_ends_its_journal_in_the_same_transaction() {
        let c = Catalog::in_memory().unwrap();
        c.ensure_root(0o755, 0, 0, 1).unwrap();
        let mut row = file_row(ROOT_INO, "a.bin");
        row.state = NodeState::Uploading;
        row.ino = c.insert_node(&row).unwrap();
        let journal = journal_of_a(row.ino);
        c.update_node_and_journal(&row, &journal).unwrap();
        assert_eq!(c.journal().unwrap(), vec![journal]);
        row.state = NodeState::Committed;
        c.update_node_and_end_journal(&row).unwrap();
        assert!(c.journal().unwrap().is_empty());
        assert_eq!(
            c.get_node(row.ino).unwrap().unwrap().state,
            NodeState::Committed
        );
    }

    #[test]
    fn a_stage_copy_lives_as_long_as_its_journal_row() {
        let c = Catalog::in_memory().unwrap();
        let mut row = file_row(1, "a.bin");
        row.state = NodeState::Queued;
        row.ino = c.insert_node(&row).unwrap();
        let journal = journal_of_a(row.ino);
        c.update_node_and_journal_with_copy(&row, &journal, Some(b"abc"))
            .unwrap();
        assert_eq!(c.stage_copy(row.ino).unwrap().as_deref(), Some(&b"abc"[..]));
        // An upload attempt rewrites the journal row: the copy stays.
        row.state = NodeState::Uploading;
        c.update_node_and_journal(&row, &journal).unwrap();
        c.journal_begin(&journal).unwrap();
        assert_eq!(c.stage_copy(row.ino).unwrap().as_deref(), Some(&b"abc"[..]));
        // A larger version closed again: no copy.
        row.state = NodeState::Queued;
        c.update_node_and_journal_with_copy(&row, &journal, None)
            .unwrap();
        assert_eq!(c.stage_copy(row.ino).unwrap(), None);
        // The upload lands: journal row and copy end together.
        c.update_node_and_journal_with_copy(&row, &journal, Some(b"xyz"))
            .unwrap();
        row.state = NodeState::Committed;
        c.update_node_and_end_journal(&row).unwrap();
        assert_eq!(c.stage_copy(row.ino).unwrap(), None);
        // Likewise journal_end and delete_node.
        c.update_node_and_journal_with_copy(&row, &journal, Some(b"xyz"))
            .unwrap();
        c.journal_end(row.ino).unwrap();
        assert_eq!(c.stage_copy(row.ino).unwrap(), None);
        c.update_node_and_journal_with_copy(&row, &journal, Some(b"xyz"))
            .unwrap();
        c.delete_node(row.ino).unwrap();
        assert_eq!(c.stage_copy(row.ino).unwrap(), None);
        assert!(c.journal().unwrap().is_empty());
    }

    #[test]
    fn journal_tracks_parts() {
        let c = Catalog::in_memory().unwrap();
        c.journal_begin(&JournalRow {
            ino: 7,
            stage: PathBuf::from("/s/7"),
            target: "work".into(),
            parent_remote: Some("0".into()),
            name: "big.bin".into(),
            size: 100,
            sha1: None,
            md5: None,
            session_id: None,
            parts_done: 0,
            bytes_done: 0,
            started_ms: 1,
        })
        .unwrap();
        c.journal_session(7, "S1").unwrap();
        c.journal_part(7, 60).unwrap();
        c.journal_part(7, 40).unwrap();
        let j = c.journal().unwrap();
        assert_eq!(j.len(), 1);
        assert_eq!(j[0].session_id.as_deref(), Some("S1"));
        assert_eq!((j[0].parts_done, j[0].bytes_done), (2, 100));
        c.journal_end(7).unwrap();
        assert!(c.journal().unwrap().is_empty());
        c.hide("r1").unwrap();
        c.hide("r1").unwrap();
        assert_eq!(c.hidden().unwrap(), vec!["r1".to_string()]);
        c.unhide("r1").unwrap();
        assert!(c.hidden().unwrap().is_empty());
    }
}
