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
const WRITTEN_MAX: usize = 256;

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
";

const NODE_COLUMNS: &str = "ino, parent, name, kind, size, mtime_ms, mode, uid, gid, remote, \
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

    /// Update a node and record its journal row in one transaction (a write-back close).
    pub fn update_node_and_journal(&self, row: &NodeRow, journal: &JournalRow) -> Result<()> {
        let mut written = self.written();
        let r = self.with(|c| {
            let tx = c.unchecked_transaction()?;
            if written.get(&row.ino) != Some(row) {
                write_node(&tx, row)?;
            }
            write_journal(&tx, journal)?;
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
            tx.prepare_cached("DELETE FROM journal WHERE ino = ?1")?
                .execute([ino as i64])?;
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

    pub fn journal_end(&self, ino: u64) -> Result<()> {
        self.with(|c| {
            c.prepare_cached("DELETE FROM journal WHERE ino = ?1")?
                .execute([ino as i64])
                .map(|_| ())
        })
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

struct RawNode {
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

fn raw_node(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawNode> {
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
fn write_node(c: &Connection, row: &NodeRow) -> rusqlite::Result<()> {
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

fn write_journal(c: &Connection, row: &JournalRow) -> rusqlite::Result<()> {
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

const JOURNAL_COLUMNS: &str = "ino, stage, target, parent_remote, name, size, sha1, md5, \
                               session_id, parts_done, bytes_done, started_ms";

fn journal_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JournalRow> {
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

fn encode_remote(r: &Option<RemoteFile>) -> Option<String> {
    r.as_ref().and_then(|r| serde_json::to_string(r).ok())
}

fn decode_remote(s: Option<&str>) -> std::result::Result<Option<RemoteFile>, serde_json::Error> {
    s.map(serde_json::from_str).transpose()
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
