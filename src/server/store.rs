//! Durable storage of `uploadfs serve`: committed files and folders of every protocol in
//! one SQLite table, file contents as immutable blobs on disk.
//!
//! Atomicity: an upload's bytes are first written to `tmp/`, fsynced, then renamed into
//! `blobs/`; only after that is the object row inserted (one SQLite transaction). A crash
//! at any point leaves at most an orphan blob, never a row that lists a partial file.
//! Blobs orphaned that way are swept when the store is opened.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("store I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// One committed file or folder of one protocol.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Object {
    /// Protocol name (`box`, `cloudreve`, `fluxer`, `virola`, `dyson`).
    pub proto: String,
    pub id: String,
    /// Parent id in the protocol's own terms ("" for flat protocols' root).
    pub parent: String,
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    /// Lowercase hex SHA-1 of the content ("" for folders).
    pub sha1: String,
    /// Lowercase hex MD5 of the content ("" for folders).
    pub md5: String,
    /// Blob key under `blobs/` (None for folders).
    #[serde(skip)]
    pub blob: Option<String>,
    pub created_ms: i64,
    pub modified_ms: i64,
    /// Protocol-specific fields (Fluxer message id, Dyson owner, Box etag, ...).
    pub extra: serde_json::Value,
}

impl Object {
    /// A new file object with no extra fields; created/modified now.
    pub fn file(
        proto: &str,
        id: String,
        parent: String,
        name: String,
        body: &super::body::BodyInfo,
        blob: String,
    ) -> Object {
        Object {
            size: body.len,
            sha1: body.sha1.clone(),
            md5: body.md5.clone(),
            blob: Some(blob),
            ..Object::empty(proto, id, parent, name, false)
        }
    }

    /// A new folder `name` in `parent`, with the given extra fields; created/modified now.
    pub fn folder(
        proto: &str,
        id: String,
        parent: String,
        name: String,
        extra: serde_json::Value,
    ) -> Object {
        Object {
            extra,
            ..Object::empty(proto, id, parent, name, true)
        }
    }

    /// A new record without content (a message, a marker row): not a folder, no blob,
    /// size 0; created/modified now.
    pub fn record(proto: &str, id: String, parent: String, extra: serde_json::Value) -> Object {
        Object {
            extra,
            ..Object::empty(proto, id, parent, String::new(), false)
        }
    }

    fn empty(proto: &str, id: String, parent: String, name: String, is_dir: bool) -> Object {
        let now = now_ms();
        Object {
            proto: proto.to_string(),
            id,
            parent,
            name,
            is_dir,
            size: 0,
            sha1: String::new(),
            md5: String::new(),
            blob: None,
            created_ms: now,
            modified_ms: now,
            extra: serde_json::Value::Null,
        }
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The store: a SQLite catalog and a blob directory under `--data`.
pub struct Store {
    root: PathBuf,
    db: Mutex<Connection>,
    tmp_seq: AtomicU64,
    /// Ids reserved from each counter and not handed out yet: (next, end exclusive).
    ids: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// Changes to `objects` so far: a cached listing is good while this stays the same.
    generation: AtomicU64,
    /// The last listing [`Store::page_newest`] filtered, for its next pages.
    listing: Mutex<Option<Listing>>,
}

/// One filtered listing, newest first, as of a store generation.
struct Listing {
    key: String,
    generation: u64,
    rows: std::sync::Arc<Vec<Object>>,
}

/// Ids a counter reserves at once. Each upload used to write its counters (two for a Box
/// file: id and version) in transactions of their own, as many as the object itself; a
/// block costs one write per this many ids. Ids stay unique across restarts and across
/// processes sharing the data directory (each reserves its own blocks); a restart skips
/// what was left of its blocks.
const ID_BLOCK: u64 = 64;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

const COLUMNS: &str =
    "proto, id, parent, name, is_dir, size, sha1, md5, blob, created_ms, modified_ms, extra";

impl Store {
    pub fn open(root: &Path) -> StoreResult<Store> {
        for d in ["blobs", "tmp", "sessions"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        // Anything old in tmp/ belongs to an upload that never committed. Recent files may
        // be another process's upload in progress (a `put local` beside a mount).
        for e in std::fs::read_dir(root.join("tmp"))? {
            let e = e?;
            if !is_stale(&e) {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
        let db = Connection::open(root.join("store.sqlite"))?;
        db.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS objects (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                proto TEXT NOT NULL, id TEXT NOT NULL, parent TEXT NOT NULL, name TEXT NOT NULL,
                is_dir INTEGER NOT NULL, size INTEGER NOT NULL, sha1 TEXT NOT NULL,
                md5 TEXT NOT NULL, blob TEXT, created_ms INTEGER NOT NULL,
                modified_ms INTEGER NOT NULL, extra TEXT NOT NULL,
                UNIQUE(proto, id));
             CREATE INDEX IF NOT EXISTS objects_parent ON objects(proto, parent, name);
             -- Box compares names case-insensitively: without this index each of its
             -- look-ups scanned every child of the folder (the name part of the index
             -- above compares bytes), so uploads into a big folder slowed with its size.
             CREATE INDEX IF NOT EXISTS objects_parent_nocase
                 ON objects(proto, parent, name COLLATE NOCASE);
             CREATE INDEX IF NOT EXISTS objects_md5 ON objects(proto, md5);
             CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
        )?;
        let store = Store {
            root: root.to_path_buf(),
            db: Mutex::new(db),
            tmp_seq: AtomicU64::new(0),
            ids: Mutex::new(std::collections::HashMap::new()),
            generation: AtomicU64::new(0),
            listing: Mutex::new(None),
        };
        store.sweep_orphan_blobs()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (transactions),
        // so a poisoned lock is still usable.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh path under `tmp/` for an incoming body.
    pub fn temp_path(&self) -> PathBuf {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        self.root
            .join("tmp")
            .join(format!("{}-{n}", uuid::Uuid::new_v4().simple()))
    }

    /// A directory for one upload session's parts (`sessions/<proto>/<id>`), created.
    pub fn session_dir(&self, proto: &str, id: &str) -> std::io::Result<PathBuf> {
        let d = self.root.join("sessions").join(proto).join(id);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    }

    /// Move a complete, fsynced temp file into `blobs/` and return its key.
    pub fn commit_blob(&self, temp: &Path) -> StoreResult<String> {
        let key = uuid::Uuid::new_v4().simple().to_string();
        let f = std::fs::File::open(temp)?;
        f.sync_all()?;
        std::fs::rename(temp, self.blob_path(&key))?;
        Ok(key)
    }

    pub fn blob_path(&self, key: &str) -> PathBuf {
        self.root.join("blobs").join(key)
    }

    /// Next value of a named counter (ids for Box files, Virola attachments, ...): 1000,
    /// 1001, ... within one run of the server.
    pub fn next_id(&self, name: &str) -> StoreResult<u64> {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((next, end)) = ids.get_mut(name) {
            if *next < *end {
                *next += 1;
                return Ok(*next - 1);
            }
        }
        // The stored value is the last id reserved. One statement: the reservation and
        // its result in one transaction (cached: parsing cost as much as running it).
        let last = self
            .conn()
            .prepare_cached(
                "INSERT INTO counters(name, value) VALUES (?1, 999 + ?2)
                 ON CONFLICT(name) DO UPDATE SET value = value + ?2
                 RETURNING value",
            )?
            .query_row(params![name, ID_BLOCK as i64], |r| r.get::<_, i64>(0))?
            as u64;
        let first = last + 1 - ID_BLOCK;
        ids.insert(name.to_string(), (first + 1, last + 1));
        Ok(first)
    }

    pub fn insert(&self, o: &Object) -> StoreResult<()> {
        self.conn()
            .prepare_cached(&format!(
                "INSERT INTO objects ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12)"
            ))?
            .execute(object_params(o))?;
        self.changed();
        Ok(())
    }

    /// Every write to `objects` ends here: cached listings are stale from now on.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Replace every field of the object with the same (proto, id). The old blob is
    /// released when the content changed and no other object uses it.
    pub fn update(&self, o: &Object) -> StoreResult<()> {
        let old = self.get(&o.proto, &o.id)?;
        self.conn().execute(
            "UPDATE objects SET parent=?3, name=?4, is_dir=?5, size=?6, sha1=?7, md5=?8, blob=?9,
             created_ms=?10, modified_ms=?11, extra=?12 WHERE proto=?1 AND id=?2",
            object_params(o),
        )?;
        self.changed();
        if let Some(old_blob) = old.and_then(|o| o.blob) {
            if o.blob.as_deref() != Some(old_blob.as_str()) {
                self.release_blob(&old_blob)?;
            }
        }
        Ok(())
    }

    pub fn get(&self, proto: &str, id: &str) -> StoreResult<Option<Object>> {
        Ok(self
            .conn()
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM objects WHERE proto=?1 AND id=?2"
            ))?
            .query_row(params![proto, id], row_to_object)
            .optional()?)
    }

    /// Delete an object row; its blob goes too when nothing else references it.
    pub fn delete(&self, proto: &str, id: &str) -> StoreResult<Option<Object>> {
        let old = self.get(proto, id)?;
        if let Some(o) = &old {
            self.conn().execute(
                "DELETE FROM objects WHERE proto=?1 AND id=?2",
                params![proto, id],
            )?;
            self.changed();
            if let Some(b) = &o.blob {
                self.release_blob(b)?;
            }
        }
        Ok(old)
    }

    fn release_blob(&self, key: &str) -> StoreResult<()> {
        let users: i64 = self.conn().query_row(
            "SELECT COUNT(*) FROM objects WHERE blob=?1",
            params![key],
            |r| r.get(0),
        )?;
        if users == 0 {
            match std::fs::remove_file(self.blob_path(key)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Children of `parent`, ordered by name, with paging; and the total count.
    pub fn list(
        &self,
        proto: &str,
        parent: &str,
        offset: u64,
        limit: u64,
    ) -> StoreResult<(Vec<Object>, u64)> {
        let db = self.conn();
        let total: i64 = db.query_row(
            "SELECT COUNT(*) FROM objects WHERE proto=?1 AND parent=?2",
            params![proto, parent],
            |r| r.get(0),
        )?;
        let mut st = db.prepare(&format!(
            "SELECT {COLUMNS} FROM objects WHERE proto=?1 AND parent=?2
             ORDER BY name, seq LIMIT ?3 OFFSET ?4"
        ))?;
        let rows = st
            .query_map(
                params![
                    proto,
                    parent,
                    limit.min(i64::MAX as u64) as i64,
                    offset as i64
                ],
                row_to_object,
            )?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, total as u64))
    }

    /// Every object of a protocol in insertion order (introspection, flat listings).
    pub fn all(&self, proto: &str) -> StoreResult<Vec<Object>> {
        let db = self.conn();
        let mut st = db.prepare(&format!(
            "SELECT {COLUMNS} FROM objects WHERE proto=?1 ORDER BY seq"
        ))?;
        let rows = st
            .query_map(params![proto], row_to_object)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// One page of `proto`'s objects, newest first, whose `extra` holds every `(key,
    /// value)` of `matching` as a string, and how many match in all. A client walks a
    /// listing page by page; filtering every object again for each page made a walk of
    /// ten thousand files take seconds, so the filtered listing is kept until the next
    /// change to the store, and the next pages are cut from it.
    pub fn page_newest(
        &self,
        proto: &str,
        matching: &[(&str, &str)],
        offset: u64,
        take: u64,
    ) -> StoreResult<(Vec<Object>, u64)> {
        let key = format!("{proto}\0{matching:?}");
        // Read before the query: a change that lands meanwhile makes this copy stale.
        let generation = self.generation.load(Ordering::SeqCst);
        let cached = self
            .listing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|l| l.key == key && l.generation == generation)
            .map(|l| l.rows.clone());
        let rows = match cached {
            Some(rows) => rows,
            None => {
                let rows: Vec<Object> = self
                    .all(proto)?
                    .into_iter()
                    .rev()
                    .filter(|o| {
                        matching
                            .iter()
                            .all(|(k, v)| o.extra[*k].as_str() == Some(*v))
                    })
                    .collect();
                let rows = std::sync::Arc::new(rows);
                *self.listing.lock().unwrap_or_else(|p| p.into_inner()) = Some(Listing {
                    key,
                    generation,
                    rows: rows.clone(),
                });
                rows
            }
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        let take = usize::try_from(take).unwrap_or(usize::MAX);
        let page = rows.iter().skip(skip).take(take).cloned().collect();
        Ok((page, rows.len() as u64))
    }

    /// The child of `parent` called `name` (ASCII case-insensitive when asked, as Box).
    pub fn find_child(
        &self,
        proto: &str,
        parent: &str,
        name: &str,
        case_insensitive: bool,
    ) -> StoreResult<Option<Object>> {
        let sql = if case_insensitive {
            format!("SELECT {COLUMNS} FROM objects WHERE proto=?1 AND parent=?2 AND name=?3 COLLATE NOCASE")
        } else {
            format!("SELECT {COLUMNS} FROM objects WHERE proto=?1 AND parent=?2 AND name=?3")
        };
        Ok(self
            .conn()
            .prepare_cached(&sql)?
            .query_row(params![proto, parent, name], row_to_object)
            .optional()?)
    }

    /// Any object of `proto` whose MD5 is `md5` (Dyson dedupe).
    pub fn find_by_md5(&self, proto: &str, md5: &str) -> StoreResult<Option<Object>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM objects WHERE proto=?1 AND md5=?2 AND is_dir=0 ORDER BY seq LIMIT 1"),
                params![proto, md5],
                row_to_object,
            )
            .optional()?)
    }

    fn sweep_orphan_blobs(&self) -> StoreResult<()> {
        let known: std::collections::HashSet<String> = {
            let db = self.conn();
            let mut st = db.prepare("SELECT blob FROM objects WHERE blob IS NOT NULL")?;
            let rows = st
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<_, _>>()?;
            rows
        };
        for e in std::fs::read_dir(self.root.join("blobs"))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            if !known.contains(&name) && is_stale(&e) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(())
    }
}

/// Leftovers are swept only when older than this, so a second process sharing the data
/// directory never loses a file it is about to commit.
const STALE_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

fn is_stale(e: &std::fs::DirEntry) -> bool {
    e.metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > STALE_AFTER)
}

/// The twelve columns of [`COLUMNS`] as statement parameters `?1..?12`.
#[allow(clippy::type_complexity)]
fn object_params(
    o: &Object,
) -> (
    &str,
    &str,
    &str,
    &str,
    bool,
    i64,
    &str,
    &str,
    Option<&str>,
    i64,
    i64,
    String,
) {
    (
        &o.proto,
        &o.id,
        &o.parent,
        &o.name,
        o.is_dir,
        o.size as i64,
        &o.sha1,
        &o.md5,
        o.blob.as_deref(),
        o.created_ms,
        o.modified_ms,
        o.extra.to_string(),
    )
}

fn row_to_object(r: &rusqlite::Row<'_>) -> rusqlite::Result<Object> {
    let extra: String = r.get(11)?;
    Ok(Object {
        proto: r.get(0)?,
        id: r.get(1)?,
        parent: r.get(2)?,
        name: r.get(3)?,
        is_dir: r.get(4)?,
        size: r.get::<_, i64>(5)? as u64,
        sha1: r.get(6)?,
        md5: r.get(7)?,
        blob: r.get(8)?,
        created_ms: r.get(9)?,
        modified_ms: r.get(10)?,
        extra: serde_json::from_str(&extra).unwrap_or(serde_json::Value::Null),
    })
}
