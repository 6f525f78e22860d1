//! The filesystem core: the inode table, handles and the semantics of every operation
//! (DESIGN.md §4), independent of FUSE so it can be driven and tested directly.
//!
//! - Namespace: the in-memory [`inode::Tree`] mirrors the catalog (written through on every
//!   change), so inode numbers and catalog-only folders survive remounts. Directory
//!   listings merge the target's own listing (cached for `list_ttl`) with local pending
//!   files; remote entries get stable inodes, matched by remote id first.
//! - Writes: a file's data is staged ([`crate::write::Stage`]) and committed when the
//!   writing handle is flushed with new data (so `close()` returns the upload's outcome),
//!   or on release when only the release has anything to commit (empty files, flushes from
//!   another process). A failed upload keeps the stage and leaves the file visible in
//!   state `failed`; the next writer's close retries it.
//! - Reads: local data from the stage; committed files through the block cache.
//!
//! Operations return `Result<_, i32>` with an errno; [`crate::fuse`] turns them into replies.

pub mod handle;
pub mod inode;
pub mod pool;
pub mod writeback;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::catalog::{now_ms, Catalog, NodeKind, NodeRow, NodeState, ROOT_INO};
use crate::read::fetcher::ReadError;
use crate::read::{BlockCache, ReadAhead};
use crate::remote::{Capabilities, DirRef, ErrorKind, RemoteFile, Target, TargetError};
use crate::write::{uploader, Stage};

use handle::{Handle, HandleState, OpenFile};
use inode::{Node, Tree};

/// An errno.
pub type Errno = i32;
pub type FsResult<T> = Result<T, Errno>;

/// Longest name a directory entry may have (bytes), as on local filesystems.
pub const NAME_MAX: usize = 255;

/// Size of one ranged read when an existing file is fetched into a stage for editing.
const LOAD_CHUNK: u64 = 8 * 1024 * 1024;

/// How long a local delete hides the deleted remote id from listings that started before it.
const TOMBSTONE_TTL: Duration = Duration::from_secs(120);

/// Settings of one mount.
#[derive(Debug, Clone)]
pub struct FsOptions {
    /// Target name (as given to `mount`), for the journal and messages.
    pub target_name: String,
    /// Where the target's token comes from (`$BOX_TOKEN`, ...), named when it is refused.
    pub token_source: String,
    /// Stage files live in `<cache_dir>/stage`.
    pub cache_dir: PathBuf,
    /// Byte budget of the block cache.
    pub cache_size: u64,
    /// Never delete remote files.
    pub keep_remote: bool,
    /// Owner reported for entries that came from the remote.
    pub uid: u32,
    pub gid: u32,
    /// Size limit from the configuration (the target's own limit also applies).
    pub max_file_size: Option<u64>,
    /// How long a directory listing of the target is trusted.
    pub list_ttl: Duration,
}

/// Attributes of a node, as the kernel sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    pub size: u64,
    pub mtime_ms: i64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub attr: Attr,
}

/// An opened file.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// The kernel may keep its cached pages of the file.
    pub keep_cache: bool,
}

/// Changes requested by `setattr`.
#[derive(Debug, Default, Clone)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime_ms: Option<i64>,
    pub fh: Option<u64>,
}

/// Filesystem statistics.
#[derive(Debug, Clone)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// Names of the read-only extended attributes.
pub const XATTR_STATE: &str = "user.uploadfs.state";
pub const XATTR_REMOTE_ID: &str = "user.uploadfs.remote_id";
pub const XATTR_SHA1: &str = "user.uploadfs.sha1";
pub const XATTR_URL: &str = "user.uploadfs.url";

/// The mounted filesystem.
pub struct Fs {
    target: Arc<dyn Target>,
    caps: Capabilities,
    opts: FsOptions,
    catalog: Arc<Catalog>,
    tree: Mutex<Tree>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    cache: Arc<BlockCache>,
    /// When each remote directory (key: remote id, "" for the root) was last listed.
    listed: Mutex<HashMap<String, Instant>>,
    list_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Remote ids deleted from this mount, and when.
    tombstones: Mutex<HashMap<String, Instant>>,
    /// Remote ids removed locally but kept remotely (mirrors the catalog's `hidden`).
    hidden: Mutex<HashSet<String>>,
    stage_dir: PathBuf,
    /// Background uploads and upload progress ([`writeback`]).
    uploads: writeback::Uploads,
    /// Stage files kept for reuse ([`pool`]).
    pool: pool::StagePool,
}

/// Smallest announced size that starts an upload before the file is written: below
/// it the whole upload after close takes a few tens of milliseconds on loopback-class
/// links, less than what starting early could save.
const EARLY_START_MIN: u64 = 8 << 20;

/// Stages up to this size are hashed on the committing thread (well under a millisecond).
const INLINE_DIGEST_MAX: u64 = 256 * 1024;

fn tgid_of(pid: u32) -> u32 {
    use std::io::Read;
    if pid == 0 {
        return 0;
    }
    // `Tgid:` is the fourth line of the status file, well inside its first 512 bytes: one
    // read instead of reading the whole file with a growing buffer (ten system calls, a
    // measurable share of a small file's create and close).
    let mut buf = [0u8; 512];
    let n = std::fs::File::open(format!("/proc/{pid}/status"))
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    let head = &buf[..n];
    head.windows(6)
        .position(|w| w == b"\nTgid:")
        .and_then(|at| {
            let rest = &head[at + 6..];
            let end = rest.iter().position(|b| *b == b'\n')?;
            std::str::from_utf8(&rest[..end]).ok()?.trim().parse().ok()
        })
        .unwrap_or(pid)
}

fn io_errno(e: &std::io::Error) -> Errno {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Validate a name for a new entry.
fn check_new_name(name: &std::ffi::OsStr) -> FsResult<&str> {
    if name.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    let s = name.to_str().ok_or(libc::EINVAL)?;
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
        return Err(libc::EINVAL);
    }
    Ok(s)
}

/// Prefix of GIO's safe-save temporary files (see [`Fs::waits_for_rename`]).
const SAVE_TEMP_PREFIX: &str = ".goutputstream-";

fn is_save_temp(name: &str) -> bool {
    name.starts_with(SAVE_TEMP_PREFIX)
}

/// The trash folders file managers create at a filesystem's top (`.Trash`, `.Trash-UID`;
/// freedesktop.org trash specification).
fn is_trash_dir(name: &str) -> bool {
    name == ".Trash"
        || name
            .strip_prefix(".Trash-")
            .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

/// Validate a name being looked up (a name that cannot exist is simply absent).
fn check_lookup_name(name: &std::ffi::OsStr) -> FsResult<&str> {
    if name.len() > NAME_MAX {
        return Err(libc::ENAMETOOLONG);
    }
    name.to_str().ok_or(libc::ENOENT)
}

impl Fs {
    /// Build the filesystem over an opened catalog. Nodes left `uploading` by a crash
    /// become `failed`, stages that were never closed become `incomplete`.
    pub fn new(
        target: Arc<dyn Target>,
        catalog: Arc<Catalog>,
        opts: FsOptions,
    ) -> anyhow::Result<Fs> {
        let caps = target.capabilities();
        let stage_dir = opts.cache_dir.join("stage");
        std::fs::create_dir_all(&stage_dir)?;
        catalog.ensure_root(0o755, opts.uid, opts.gid, now_ms())?;
        let mut tree = Tree::new(caps.case_insensitive_names);
        for mut row in catalog.load_nodes()? {
            let mut changed = false;
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
                NodeState::Staged
                | NodeState::Queued
                | NodeState::Uploading
                | NodeState::Failed
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
        let hidden = catalog.hidden()?.into_iter().collect();
        Ok(Fs {
            cache: BlockCache::new(opts.cache_size),
            target,
            caps,
            opts,
            catalog,
            tree: Mutex::new(tree),
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            listed: Mutex::new(HashMap::new()),
            list_locks: Mutex::new(HashMap::new()),
            tombstones: Mutex::new(HashMap::new()),
            hidden: Mutex::new(hidden),
            stage_dir,
            uploads: writeback::Uploads::default(),
            pool: pool::StagePool::default(),
        })
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn persist(&self, row: &NodeRow) -> FsResult<()> {
        self.catalog.update_node(row).map_err(|e| {
            tracing::error!(error = %e, "catalog update failed");
            libc::EIO
        })
    }

    /// Refuse (EINVAL) a name the target would refuse, before anything is staged, so no
    /// file that can never be uploaded is left behind. Folders of flat targets exist only
    /// in the catalog, so any name does for them.
    fn check_target_name(&self, name: &str, is_dir: bool) -> FsResult<()> {
        if is_dir && !self.caps.folders {
            return Ok(());
        }
        self.target.check_name(name).map_err(|e| {
            tracing::warn!(error = %e, "name refused");
            libc::EINVAL
        })
    }

    fn max_size(&self) -> Option<u64> {
        match (self.caps.max_file_size, self.opts.max_file_size) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn attr_of(&self, n: &Node) -> Attr {
        Attr {
            ino: n.row.ino,
            kind: n.row.kind,
            size: n.size(),
            mtime_ms: n.row.mtime_ms,
            mode: n.row.mode,
            uid: n.row.uid,
            gid: n.row.gid,
        }
    }

    /// The remote folder that holds the children of directory `dir`.
    fn dir_ref(&self, t: &Tree, dir: u64) -> DirRef {
        if !self.caps.folders || dir == ROOT_INO {
            return None;
        }
        t.get(dir)
            .and_then(|n| n.row.remote.as_ref().map(|r| r.id.clone()))
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    fn new_stage_path(&self) -> PathBuf {
        self.stage_dir
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// A stage for new data: a recycled empty file when one is free, else a new file.
    fn new_stage(&self) -> std::io::Result<Arc<Stage>> {
        let md5 = self.caps.needs_md5;
        if let Some(p) = self.pool.take() {
            let existed = p.exists();
            match Stage::create(&p, md5) {
                Ok(s) => {
                    if !existed {
                        self.pool.note_created();
                    }
                    return Ok(Arc::new(s));
                }
                Err(e) => {
                    tracing::debug!(path = %p.display(), error = %e, "pooled stage unusable")
                }
            }
        }
        let s = Stage::create(&self.new_stage_path(), md5)?;
        self.pool.note_created();
        Ok(Arc::new(s))
    }

    /// End the mount's use of recycled stage files (they are removed).
    pub fn clear_stage_pool(&self) {
        self.pool.clear();
    }

    fn tombstone(&self, id: &str) {
        let mut t = self.tombstones.lock().unwrap_or_else(|p| p.into_inner());
        t.retain(|_, at| at.elapsed() < TOMBSTONE_TTL);
        t.insert(id.to_string(), Instant::now());
    }

    fn new_row(
        &self,
        parent: u64,
        name: &str,
        kind: NodeKind,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> NodeRow {
        NodeRow {
            ino: 0,
            parent,
            name: name.to_string(),
            kind,
            size: 0,
            mtime_ms: now_ms(),
            mode: mode & 0o7777,
            uid,
            gid,
            remote: None,
            state: NodeState::Committed,
            sha1: None,
            md5: None,
            last_error: None,
            stage: None,
            replaces: None,
        }
    }

    /// Insert a new row into the catalog and the tree; returns its attributes.
    fn insert_row(&self, t: &mut Tree, mut row: NodeRow) -> FsResult<Attr> {
        let ino = self.catalog.insert_node(&row).map_err(|e| {
            tracing::error!(error = %e, "catalog insert failed");
            libc::EIO
        })?;
        row.ino = ino;
        let node = Node::new(row);
        let attr = self.attr_of(&node);
        t.insert(node);
        Ok(attr)
    }

    // ----- listing -------------------------------------------------------------------

    fn list_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.list_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_string())
            .or_default()
            .clone()
    }

    fn listing_fresh(&self, key: &str) -> bool {
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .is_some_and(|at| at.elapsed() < self.opts.list_ttl)
    }

    /// Merge the target's listing of directory `dir` into the tree when the cached one is
    /// older than the TTL (or `force`). Listing errors are logged; the local view stays.
    pub async fn refresh(&self, dir: u64, force: bool) {
        let dref = {
            let t = self.tree();
            match t.get(dir) {
                Some(n) if n.is_dir() => {}
                _ => return,
            }
            if self.caps.folders
                && dir != ROOT_INO
                && t.get(dir).is_some_and(|n| n.row.remote.is_none())
            {
                return;
            }
            self.dir_ref(&t, dir)
        };
        let key = dref.clone().unwrap_or_default();
        if !force && self.listing_fresh(&key) {
            return;
        }
        let lock = self.list_lock(&key);
        let _g = lock.lock().await;
        if !force && self.listing_fresh(&key) {
            return;
        }
        let started = Instant::now();
        match self.target.list(&dref).await {
            Ok(entries) => {
                let home = if self.caps.folders { dir } else { ROOT_INO };
                self.merge(home, entries, started);
            }
            Err(e) => {
                tracing::warn!(dir, error = %e, "listing the target failed; showing the local view")
            }
        }
        self.listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Instant::now());
    }

    fn merge(&self, home: u64, entries: Vec<RemoteFile>, started: Instant) {
        let flat = !self.caps.folders;
        let tomb: HashMap<String, Instant> = self
            .tombstones
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let hidden = self
            .hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut t = self.tree();
        let ids: HashSet<String> = entries.iter().map(|e| e.id.clone()).collect();
        let mut dirty: Vec<u64> = vec![];
        let mut inserts: Vec<RemoteFile> = vec![];
        let untouchable = |n: &Node| n.synced > started || n.is_pending() || n.open.is_some();
        for e in &entries {
            if flat && e.is_dir {
                continue;
            }
            let known = t.by_remote(&e.id);
            if known.is_empty()
                && (tomb.get(&e.id).is_some_and(|at| *at > started) || hidden.contains(&e.id))
            {
                continue;
            }
            if !known.is_empty() {
                for ino in known {
                    let Some(n) = t.get(ino) else { continue };
                    if untouchable(n) || n.is_dir() != e.is_dir {
                        continue;
                    }
                    let before = n.row.clone();
                    let relocate = !flat
                        && (n.row.parent != home || t.key(&n.row.name) != t.key(&e.name))
                        && t.child(home, &e.name).is_none();
                    if relocate {
                        t.relink(ino, home, &e.name);
                    }
                    if let Some(n) = t.get_mut(ino) {
                        apply_remote(&mut n.row, e);
                        if n.row != before {
                            dirty.push(ino);
                        }
                    }
                }
                continue;
            }
            match t.child(home, &e.name) {
                Some(c) => {
                    let Some(n) = t.get(c) else { continue };
                    if untouchable(n) || n.is_dir() != e.is_dir {
                        continue;
                    }
                    if n.row.remote.as_ref().is_some_and(|r| ids.contains(&r.id)) {
                        // Two remote entries with one name: the one we know wins.
                        continue;
                    }
                    t.set_remote(c, Some(e.clone()));
                    if let Some(n) = t.get_mut(c) {
                        apply_remote(&mut n.row, e);
                        n.row.size = e.size;
                        n.row.sha1 = e.sha1.clone();
                        n.row.md5 = e.md5.clone();
                    }
                    dirty.push(c);
                }
                None => inserts.push(e.clone()),
            }
        }
        // Entries that disappeared remotely (deleted elsewhere).
        let candidates: Vec<u64> = if flat {
            t.all()
                .filter(|n| !n.is_dir() && n.row.remote.is_some())
                .map(|n| n.row.ino)
                .collect()
        } else {
            t.children(home)
                .into_iter()
                .filter(|c| t.get(*c).is_some_and(|n| n.row.remote.is_some()))
                .collect()
        };
        let mut removes = vec![];
        for c in candidates {
            let Some(n) = t.get(c) else { continue };
            if untouchable(n) {
                continue;
            }
            if n.row.remote.as_ref().is_some_and(|r| !ids.contains(&r.id)) {
                if n.is_dir() && t.subtree_pending(c) {
                    continue;
                }
                removes.push(c);
            }
        }
        for c in removes {
            for ino in t.subtree(c) {
                t.remove(ino);
                if let Err(e) = self.catalog.delete_node(ino) {
                    tracing::error!(error = %e, "catalog delete failed");
                }
            }
        }
        for ino in dirty {
            if let Some(n) = t.get(ino) {
                let row = n.row.clone();
                let _ = self.persist(&row);
            }
        }
        for e in inserts {
            let (kind, mode) = if e.is_dir {
                (NodeKind::Dir, 0o755)
            } else {
                (NodeKind::File, 0o644)
            };
            let mut row = self.new_row(home, &e.name, kind, mode, self.opts.uid, self.opts.gid);
            row.size = if e.is_dir { 0 } else { e.size };
            if e.mtime_ms > 0 {
                row.mtime_ms = e.mtime_ms;
            }
            row.sha1 = e.sha1.clone();
            row.md5 = e.md5.clone();
            row.remote = Some(e);
            let _ = self.insert_row(&mut t, row);
        }
    }

    // ----- namespace -----------------------------------------------------------------

    /// Look a name up, merging the directory's remote listing first when it is older than
    /// the TTL (so files changed, added or deleted elsewhere show within the TTL).
    pub async fn lookup(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<Attr> {
        let name = check_lookup_name(name)?;
        {
            let t = self.tree();
            let p = t.get(parent).ok_or(libc::ENOENT)?;
            if !p.is_dir() {
                return Err(libc::ENOTDIR);
            }
        }
        self.refresh(parent, false).await;
        let t = self.tree();
        let c = t.child(parent, name).ok_or(libc::ENOENT)?;
        t.get(c).map(|n| self.attr_of(n)).ok_or(libc::ENOENT)
    }

    pub fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let t = self.tree();
        t.get(ino).map(|n| self.attr_of(n)).ok_or(libc::ENOENT)
    }

    pub async fn setattr(&self, ino: u64, s: SetAttr) -> FsResult<Attr> {
        if let Some(size) = s.size {
            self.truncate(ino, size, s.fh).await?;
        }
        let mut t = self.tree();
        let n = t.get_mut(ino).ok_or(libc::ENOENT)?;
        let before = n.row.clone();
        if let Some(m) = s.mode {
            n.row.mode = m & 0o7777;
        }
        if let Some(u) = s.uid {
            n.row.uid = u;
        }
        if let Some(g) = s.gid {
            n.row.gid = g;
        }
        if let Some(m) = s.mtime_ms {
            n.row.mtime_ms = m;
        }
        if n.row != before {
            let row = n.row.clone();
            self.persist(&row)?;
        }
        let n = t.get(ino).ok_or(libc::ENOENT)?;
        Ok(self.attr_of(n))
    }

    async fn truncate(&self, ino: u64, size: u64, fh: Option<u64>) -> FsResult<()> {
        {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            if n.is_dir() {
                return Err(libc::EISDIR);
            }
        }
        if self.max_size().is_some_and(|m| size > m) {
            return Err(libc::EFBIG);
        }
        // A committed file without local data: the same size is a no-op.
        {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            if n.open.is_none() && n.row.size == size && n.row.state == NodeState::Committed {
                return Ok(());
            }
        }
        let from_handle = fh
            .and_then(|f| self.handle(f).ok())
            .and_then(|h| h.open.clone());
        let (of, counted) = match from_handle {
            Some(of) => (of, false),
            None => (self.open_for_write(ino, size == 0, false).await?, true),
        };
        let r = async {
            let was_empty = of.size() == 0;
            self.truncate_stage(&of, size).await?;
            self.mark_modified(ino);
            if of.writers.load(Ordering::SeqCst) == 0 {
                // Nobody will close this file for writing: commit now.
                self.close_commit(ino, &of).await
            } else {
                if was_empty && size > 0 {
                    self.start_early(ino, &of, size);
                }
                Ok(())
            }
        }
        .await;
        if counted {
            self.put_open(ino, &of, false);
        }
        r
    }

    /// `fallocate(FALLOC_FL_KEEP_SIZE)` up to `end` on a handle: nothing to reserve in a
    /// sparse stage. Not a size hint: a reservation says "about this much" (rsync
    /// reserves one byte less than it writes), and an upload started with the wrong size
    /// would be sent twice.
    pub fn reserve(&self, fh: u64, end: u64) -> FsResult<()> {
        if self.max_size().is_some_and(|m| end > m) {
            return Err(libc::EFBIG);
        }
        if !self.handle(fh)?.writable {
            return Err(libc::EBADF);
        }
        Ok(())
    }

    /// A size hint: an empty file open for writing was extended to its final size
    /// (`ftruncate`/`fallocate` before writing, as download managers and many copy
    /// tools do), so its upload starts now and sends the
    /// parts as the writer fills them in order. The commit at close seals it, or gives it
    /// up and uploads the ordinary way when the writer did something else (see
    /// [`handle::EarlyUpload`]). Not for small files (nothing to gain), not
    /// in write-back mode (close does not wait for the upload there), and not for targets
    /// that need the whole file first (Dyson's MD5, Virola's single request).
    fn start_early(&self, ino: u64, of: &Arc<OpenFile>, size: u64) {
        if !self.caps.early_start
            || size < EARLY_START_MIN
            || self.uploads.write_back()
            || of.has_early()
        {
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
        let seal = crate::remote::Seal::new();
        let commit = uploader::Commit {
            ino,
            target_name: self.opts.target_name.clone(),
            parent: parent.clone(),
            name: name.clone(),
            size,
            digests: crate::remote::Digests::default(),
            mtime_ms,
            replaces: replaces.clone(),
            max_size: self.max_size(),
            progress: self.uploads.begin(ino, size),
            early: Some(seal.clone()),
        };
        let (target, catalog, stage) =
            (self.target.clone(), self.catalog.clone(), of.stage.clone());
        let task = tokio::spawn(async move {
            uploader::upload(target.as_ref(), &catalog, &stage, commit).await
        });
        tracing::info!(ino, name = %name, size, "size announced before writing: upload started");
        of.set_early(handle::EarlyUpload {
            size,
            parent,
            name,
            replaces: replaces.map(|r| r.id),
            seal,
            stage: of.stage.clone(),
            task,
        });
    }

    /// Truncate a stage; a not yet fetched one is fetched first unless it becomes empty.
    async fn truncate_stage(&self, of: &OpenFile, size: u64) -> FsResult<()> {
        if size > 0 {
            self.ensure_loaded(of).await?;
        }
        let _l = of.load_lock.lock().await;
        let _g = of.gate.read().await;
        of.stage.truncate(size).map_err(|e| io_errno(&e))?;
        if of.unloaded().is_some() {
            of.set_loaded(None);
            of.mark_needs_commit();
        }
        Ok(())
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Attr> {
        let name = check_new_name(name)?;
        self.check_target_name(name, true)?;
        if !self.caps.folders && parent == ROOT_INO && is_trash_dir(name) {
            // A desktop trash here would upload every trashed file's `.trashinfo` to the
            // flat target (a channel, a message): refuse, so file managers say the trash
            // is unavailable and offer a permanent delete instead.
            return Err(libc::EPERM);
        }
        self.refresh(parent, false).await;
        let pref = {
            let t = self.tree();
            let p = t.get(parent).ok_or(libc::ENOENT)?;
            if !p.is_dir() {
                return Err(libc::ENOTDIR);
            }
            if t.child(parent, name).is_some() {
                return Err(libc::EEXIST);
            }
            if self.caps.folders && parent != ROOT_INO && p.row.remote.is_none() {
                return Err(libc::EIO);
            }
            self.dir_ref(&t, parent)
        };
        let remote = if self.caps.folders {
            Some(self.target.mkdir(&pref, name).await.map_err(|e| {
                tracing::warn!(name, error = %e, "mkdir failed");
                e.kind.errno()
            })?)
        } else {
            None
        };
        let mut t = self.tree();
        if t.child(parent, name).is_some() {
            return Err(libc::EEXIST);
        }
        if let Some(r) = &remote {
            // A folder just made is empty: no need to list it soon.
            self.listed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(r.id.clone(), Instant::now());
        }
        let mut row = self.new_row(parent, name, NodeKind::Dir, mode, uid, gid);
        row.remote = remote;
        self.insert_row(&mut t, row)
    }

    /// Delete a remote file unless another path still uses it or the mount keeps remotes.
    async fn delete_remote(&self, remote: &RemoteFile, except: u64) -> FsResult<()> {
        if self.opts.keep_remote || !self.caps.delete {
            // The remote keeps it; later listings must not bring it back.
            self.hidden
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(remote.id.clone());
            if let Err(e) = self.catalog.hide(&remote.id) {
                tracing::error!(error = %e, "catalog update failed");
            }
            return Ok(());
        }
        let shared = self
            .tree()
            .by_remote(&remote.id)
            .into_iter()
            .any(|i| i != except);
        if shared {
            return Ok(());
        }
        match self.target.delete(remote).await {
            Ok(()) => {
                self.tombstone(&remote.id);
                Ok(())
            }
            Err(e) if e.kind == ErrorKind::NotFound => {
                self.tombstone(&remote.id);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(name = %remote.name, error = %e, "remote delete failed");
                Err(e.kind.errno())
            }
        }
    }

    pub async fn unlink(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<()> {
        let name = check_lookup_name(name)?;
        let (ino, remote, replaces) = {
            let t = self.tree();
            let c = t.child(parent, name).ok_or(libc::ENOENT)?;
            let n = t.get(c).ok_or(libc::ENOENT)?;
            if n.is_dir() {
                return Err(libc::EISDIR);
            }
            (c, n.row.remote.clone(), n.row.replaces.clone())
        };
        if let Some(r) = &remote {
            self.delete_remote(r, ino).await?;
        }
        if let Some(r) = &replaces {
            self.delete_remote(r, ino).await?;
        }
        self.forget_node(ino);
        Ok(())
    }

    /// Drop a file node locally (after its remote side was dealt with).
    fn forget_node(&self, ino: u64) {
        let node = self.tree().remove(ino);
        if let Some(n) = node {
            if let Some(of) = &n.open {
                of.unlinked.store(true, Ordering::SeqCst);
                of.stage.remove_file();
            } else if let Some(p) = &n.row.stage {
                let _ = std::fs::remove_file(p);
            }
        }
        if let Err(e) = self.catalog.delete_node(ino) {
            tracing::error!(error = %e, "catalog delete failed");
        }
    }

    pub async fn rmdir(&self, parent: u64, name: &std::ffi::OsStr) -> FsResult<()> {
        let name = check_lookup_name(name)?;
        let ino = {
            let t = self.tree();
            let c = t.child(parent, name).ok_or(libc::ENOENT)?;
            let n = t.get(c).ok_or(libc::ENOENT)?;
            if !n.is_dir() {
                return Err(libc::ENOTDIR);
            }
            c
        };
        self.refresh(ino, false).await;
        let remote = {
            let t = self.tree();
            if t.has_children(ino) {
                return Err(libc::ENOTEMPTY);
            }
            t.get(ino).ok_or(libc::ENOENT)?.row.remote.clone()
        };
        if let Some(r) = &remote {
            if self.caps.folders {
                self.delete_remote(r, ino).await.map_err(|e| {
                    if e == libc::EEXIST {
                        libc::ENOTEMPTY
                    } else {
                        e
                    }
                })?;
            }
        }
        self.tree().remove(ino);
        if let Err(e) = self.catalog.delete_node(ino) {
            tracing::error!(error = %e, "catalog delete failed");
        }
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        new_parent: u64,
        new_name: &std::ffi::OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if flags & (libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT) != 0 {
            return Err(libc::EINVAL);
        }
        let name = check_lookup_name(name)?;
        let new_name = check_new_name(new_name)?;
        self.refresh(new_parent, false).await;
        // Look at source and destination.
        let (src, dst, src_remote, src_is_dir, src_pending_only, src_shared) = {
            let t = self.tree();
            let src = t.child(parent, name).ok_or(libc::ENOENT)?;
            let np = t.get(new_parent).ok_or(libc::ENOENT)?;
            if !np.is_dir() {
                return Err(libc::ENOTDIR);
            }
            let s = t.get(src).ok_or(libc::ENOENT)?;
            if s.is_dir() && t.is_ancestor(src, new_parent) {
                return Err(libc::EINVAL);
            }
            let dst = t.child(new_parent, new_name).filter(|d| *d != src);
            if let Some(d) = dst {
                if flags & libc::RENAME_NOREPLACE != 0 {
                    return Err(libc::EEXIST);
                }
                let dn = t.get(d).ok_or(libc::ENOENT)?;
                match (s.is_dir(), dn.is_dir()) {
                    (false, true) => return Err(libc::EISDIR),
                    (true, false) => return Err(libc::ENOTDIR),
                    (true, true) if t.has_children(d) => return Err(libc::ENOTEMPTY),
                    _ => {}
                }
            }
            let committing = s
                .open
                .as_ref()
                .is_some_and(|o| o.committing.load(Ordering::SeqCst));
            // A remote file that other paths share (Dyson's content dedupe) keeps its
            // remote name: only this path moves.
            let shared = s
                .row
                .remote
                .as_ref()
                .is_some_and(|r| t.by_remote(&r.id).len() > 1);
            (
                src,
                dst,
                s.row.remote.clone(),
                s.is_dir(),
                s.row.remote.is_none() || committing,
                shared,
            )
        };
        self.check_target_name(new_name, src_is_dir)?;
        // The replaced destination: a pending source's upload replaces its remote file
        // (and deletes it afterwards where the target has no in-place versions); for a
        // committed source it is deleted first, so the remote rename finds the name free.
        let mut carry_replaces = None;
        if let Some(d) = dst {
            let (d_remote, d_replaces, d_is_dir) = {
                let t = self.tree();
                let dn = t.get(d).ok_or(libc::ENOENT)?;
                (dn.row.remote.clone(), dn.row.replaces.clone(), dn.is_dir())
            };
            if src_pending_only && !src_is_dir {
                carry_replaces = d_remote.clone();
            } else if let Some(r) = &d_remote {
                if !d_is_dir || self.caps.folders {
                    self.delete_remote(r, d).await?;
                }
            }
            if let Some(r) = &d_replaces {
                self.delete_remote(r, d).await?;
            }
            self.forget_node(d);
        }
        // Remote rename/move of a committed node.
        let mut new_remote = None;
        if let Some(r) = &src_remote {
            if !src_pending_only && !src_shared {
                let (old_pref, new_pref) = {
                    let t = self.tree();
                    (self.dir_ref(&t, parent), self.dir_ref(&t, new_parent))
                };
                let moved = self.caps.folders && old_pref != new_pref;
                let renamed = r.name != new_name;
                if (moved || renamed) && self.caps.rename && (!src_is_dir || self.caps.folders) {
                    let out = self.target.rename(r, &new_pref, new_name).await.map_err(|e| {
                        tracing::warn!(from = %r.name, to = new_name, error = %e, "remote rename failed");
                        e.kind.errno()
                    })?;
                    new_remote = Some(out);
                } else if moved && !self.caps.rename {
                    // A folder target that cannot move: refuse rather than lie.
                    return Err(libc::EXDEV);
                }
            }
        }
        let save_done = self.waits_for_rename(src) && !is_save_temp(new_name);
        {
            let mut t = self.tree();
            if t.get(src).is_none() {
                return Err(libc::ENOENT);
            }
            t.relink(src, new_parent, new_name);
            if let Some(r) = new_remote {
                t.set_remote(src, Some(r));
            }
            if let Some(n) = t.get_mut(src) {
                if carry_replaces.is_some() {
                    n.row.replaces = carry_replaces;
                }
                let row = n.row.clone();
                self.persist(&row)?;
            }
        }
        if save_done {
            // The save's temporary file is in place: upload it under its final name.
            let of = self.open_for_write(src, false, false).await?;
            let r = self.close_commit(src, &of).await;
            self.put_open(src, &of, false);
            r?;
        }
        Ok(())
    }

    /// A save through a temporary file on a target without remote rename: GIO's
    /// `g_file_replace` writes `.goutputstream-XXXXXX`, closes it and renames it over the
    /// original. Committed at close, the content would keep the temporary name remotely for
    /// good; so its upload waits for the rename (which then returns the upload's outcome).
    fn waits_for_rename(&self, ino: u64) -> bool {
        !self.caps.rename
            && self
                .tree()
                .get(ino)
                .is_some_and(|n| !n.is_dir() && n.row.remote.is_none() && is_save_temp(&n.row.name))
    }

    // ----- files ---------------------------------------------------------------------

    /// Fetch a committed file (its first `upto` bytes) into a stage.
    async fn load_remote(&self, stage: &Stage, remote: &RemoteFile) -> Result<(), TargetError> {
        let mut off = 0u64;
        while off < remote.size {
            let len = LOAD_CHUNK.min(remote.size - off);
            let b = self.target.read_range(remote, off, len).await?;
            if b.len() as u64 != len {
                return Err(TargetError::protocol(format!(
                    "reading {}: the server sent {} bytes at offset {off}, expected {len}",
                    remote.name,
                    b.len()
                )));
            }
            stage.write_at(off, &b)?;
            off += len;
        }
        Ok(())
    }

    /// Fetch the remote content a lazily opened stage stands for.
    async fn ensure_loaded(&self, of: &OpenFile) -> FsResult<()> {
        if of.unloaded().is_none() {
            return Ok(());
        }
        let _l = of.load_lock.lock().await;
        let Some(remote) = of.unloaded() else {
            return Ok(());
        };
        let _g = of.gate.read().await;
        if let Err(e) = self.load_remote(&of.stage, &remote).await {
            tracing::warn!(name = %remote.name, error = %e, "cannot fetch the file for editing");
            let _ = of.stage.truncate(0);
            return Err(e.kind.errno());
        }
        of.set_loaded(Some(of.stage.version()));
        Ok(())
    }

    /// The inode's write state, creating its stage if needed (an existing file's content is
    /// fetched lazily unless `trunc`). The returned state already counts the caller as one
    /// more handle (and writer, if `writer`): the counts move under the tree lock, so a
    /// concurrent release can never drop a stage that is being handed out. Undo with
    /// [`Fs::put_open`].
    async fn open_for_write(&self, ino: u64, trunc: bool, writer: bool) -> FsResult<Arc<OpenFile>> {
        let take = |of: &OpenFile| {
            of.handles.fetch_add(1, Ordering::SeqCst);
            if writer {
                of.writers.fetch_add(1, Ordering::SeqCst);
            }
        };
        loop {
            let (existing, remote, stage_path, state) = {
                let mut t = self.tree();
                if let Some(n) = t.get_mut(ino) {
                    // The content may change: the kernel's cached pages must go at the
                    // next read-only open.
                    n.page_cache = None;
                }
                let n = t.get(ino).ok_or(libc::ENOENT)?;
                if n.is_dir() {
                    return Err(libc::EISDIR);
                }
                if let Some(of) = &n.open {
                    take(of);
                }
                (
                    n.open.clone(),
                    n.row.remote.clone(),
                    n.row.stage.clone(),
                    n.row.state,
                )
            };
            if let Some(of) = existing {
                if trunc {
                    let r = async {
                        let _l = of.load_lock.lock().await;
                        let _g = of.gate.read().await;
                        of.stage.truncate(0).map_err(|e| io_errno(&e))?;
                        of.set_loaded(None);
                        of.mark_needs_commit();
                        Ok(())
                    }
                    .await;
                    if let Err(e) = r {
                        self.put_open(ino, &of, writer);
                        return Err(e);
                    }
                }
                return Ok(of);
            }
            let md5 = self.caps.needs_md5;
            let (stage, needs_commit, reused) = match &stage_path {
                Some(p) if state != NodeState::Committed && p.exists() => {
                    let s = Stage::open_existing(p, md5).map_err(|e| io_errno(&e))?;
                    if trunc {
                        s.truncate(0).map_err(|e| io_errno(&e))?;
                    }
                    // Pending data is uploaded at the next close; an incomplete stage
                    // only once something is written to it.
                    (Arc::new(s), trunc || state != NodeState::Incomplete, true)
                }
                _ => {
                    let s = self.new_stage().map_err(|e| io_errno(&e))?;
                    let needs_commit = remote.is_none() || trunc;
                    (s, needs_commit, false)
                }
            };
            let of = match (&remote, needs_commit) {
                (Some(r), false) => OpenFile::lazy(stage.clone(), r.clone()),
                _ => OpenFile::new(stage.clone(), needs_commit),
            };
            let mut t = self.tree();
            let Some(n) = t.get_mut(ino) else {
                if !reused {
                    stage.remove_file();
                }
                return Err(libc::ENOENT);
            };
            if n.open.is_some() {
                if !reused {
                    stage.remove_file();
                }
                continue;
            }
            take(&of);
            n.open = Some(of.clone());
            n.row.stage = Some(stage.path().to_path_buf());
            // A reader or the background uploader leaves a queued or failed file's state.
            if needs_commit && (writer || n.row.state == NodeState::Committed) {
                n.row.state = NodeState::Staged;
            }
            let row = n.row.clone();
            self.persist(&row)?;
            return Ok(of);
        }
    }

    /// Give back what [`Fs::open_for_write`] counted, dropping the stage if it was the last.
    fn put_open(&self, ino: u64, of: &Arc<OpenFile>, writer: bool) {
        if writer {
            of.writers.fetch_sub(1, Ordering::SeqCst);
        }
        of.handles.fetch_sub(1, Ordering::SeqCst);
        self.cleanup(ino, of);
    }

    fn register(&self, h: Handle) -> u64 {
        let fh = self.new_fh();
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(h));
        fh
    }

    pub async fn open(&self, ino: u64, flags: i32, pid: u32) -> FsResult<u64> {
        self.open_ext(ino, flags, pid).await.map(|o| o.fh)
    }

    /// `open`, also telling whether the kernel may keep the file's cached pages (a
    /// read-only open of the same remote version as the previous read-only open).
    pub async fn open_ext(&self, ino: u64, flags: i32, pid: u32) -> FsResult<Opened> {
        let acc = flags & libc::O_ACCMODE;
        let writable = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let trunc = writable && flags & libc::O_TRUNC != 0;
        if writable {
            let of = self.open_for_write(ino, trunc, true).await?;
            let fh = self.register(Handle {
                ino,
                writable: true,
                open: Some(of),
                opener_tgid: tgid_of(pid),
                state: tokio::sync::Mutex::new(HandleState::Writing),
            });
            return Ok(Opened {
                fh,
                keep_cache: false,
            });
        }
        let (local, remote) = {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            if n.is_dir() {
                return Err(libc::EISDIR);
            }
            let local =
                n.open.is_some() || (n.row.stage.is_some() && n.row.state != NodeState::Committed);
            (local, n.row.remote.clone())
        };
        // Local data (being written, or pending): read the stage.
        let open = if local {
            Some(self.open_for_write(ino, false, false).await?)
        } else {
            None
        };
        let mut keep_cache = false;
        let hstate = match (&open, remote) {
            (Some(_), _) => HandleState::Local,
            (None, Some(r)) => {
                let tag = crate::read::cache::file_tag(&r);
                if let Some(n) = self.tree().get_mut(ino) {
                    keep_cache = n.page_cache.as_ref() == Some(&tag);
                    n.page_cache = Some(tag);
                }
                HandleState::Reading(Box::new(ReadAhead::new(r)))
            }
            (None, None) => HandleState::Local,
        };
        let fh = self.register(Handle {
            ino,
            writable: false,
            open,
            opener_tgid: tgid_of(pid),
            state: tokio::sync::Mutex::new(hstate),
        });
        Ok(Opened { fh, keep_cache })
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        parent: u64,
        name: &std::ffi::OsStr,
        mode: u32,
        flags: i32,
        uid: u32,
        gid: u32,
        pid: u32,
    ) -> FsResult<(Attr, u64)> {
        let name = check_new_name(name)?;
        self.check_target_name(name, false)?;
        self.refresh(parent, false).await;
        let existing = {
            let t = self.tree();
            let p = t.get(parent).ok_or(libc::ENOENT)?;
            if !p.is_dir() {
                return Err(libc::ENOTDIR);
            }
            t.child(parent, name)
        };
        if let Some(ino) = existing {
            if flags & libc::O_EXCL != 0 {
                return Err(libc::EEXIST);
            }
            let fh = self.open(ino, flags, pid).await?;
            return Ok((self.getattr(ino)?, fh));
        }
        let (attr, of) = {
            let mut t = self.tree();
            if t.child(parent, name).is_some() {
                return Err(libc::EEXIST);
            }
            // The stage first, so the row is written once, with its stage.
            let stage = self.new_stage().map_err(|e| io_errno(&e))?;
            let mut row = self.new_row(parent, name, NodeKind::File, mode, uid, gid);
            row.state = NodeState::Staged;
            row.stage = Some(stage.path().to_path_buf());
            let attr = match self.insert_row(&mut t, row) {
                Ok(a) => a,
                Err(e) => {
                    self.pool.recycle(&stage);
                    return Err(e);
                }
            };
            let of = OpenFile::new(stage, true);
            of.writers.fetch_add(1, Ordering::SeqCst);
            of.handles.fetch_add(1, Ordering::SeqCst);
            if let Some(n) = t.get_mut(attr.ino) {
                n.open = Some(of.clone());
            }
            (attr, of)
        };
        let fh = self.register(Handle {
            ino: attr.ino,
            writable: true,
            open: Some(of),
            opener_tgid: tgid_of(pid),
            state: tokio::sync::Mutex::new(HandleState::Writing),
        });
        Ok((attr, fh))
    }

    /// Read from an open handle. A committed remote file is read through the block cache
    /// without holding the handle's lock while the blocks arrive, so the kernel's parallel
    /// read-ahead requests of one file are served in parallel.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let mut st = h.state.lock().await;
        let (name, pending) = match &mut *st {
            HandleState::Failed(e) => return Err(*e),
            HandleState::Reading(ra) => (
                ra.file().name.clone(),
                ra.start(&self.cache, &self.target, offset, size),
            ),
            _ => {
                return match &h.open {
                    Some(of) => {
                        self.ensure_loaded(of).await?;
                        of.stage
                            .read_at(offset, size as usize)
                            .map_err(|e| io_errno(&e))
                    }
                    None => Ok(Bytes::new()),
                }
            }
        };
        drop(st);
        let Some(pending) = pending else {
            return Ok(Bytes::new());
        };
        let failed = |e: ReadError| match e {
            ReadError::Target(e) => {
                tracing::warn!(name = %name, offset, error = %e, "read failed");
                e.kind.errno()
            }
            ReadError::Corrupt { expected, actual } => {
                tracing::error!(name = %name, %expected, %actual, "SHA-1 mismatch on read");
                // The kernel holds pages of the bad data: the next open must drop them.
                if let Some(n) = self.tree().get_mut(h.ino) {
                    n.page_cache = None;
                }
                libc::EIO
            }
        };
        let done = pending.wait().await.map_err(failed)?;
        let step = match &*h.state.lock().await {
            HandleState::Reading(ra) => ra.verify_step(),
            _ => None,
        };
        if let Some(step) = step {
            if let Err(e) = step.run(&self.cache, &self.target, &done).await {
                let corrupt = matches!(e, ReadError::Corrupt { .. });
                let errno = failed(e);
                if corrupt {
                    // Every later read of this handle fails too: the kernel retries a
                    // failed read-ahead page with a read of its own, which must not
                    // succeed now that the verdict is in.
                    *h.state.lock().await = HandleState::Failed(errno);
                }
                return Err(errno);
            }
        }
        Ok(done.data)
    }

    /// Note a local modification (state and mtime), once per transition.
    fn mark_modified(&self, ino: u64) {
        let mut t = self.tree();
        if let Some(n) = t.get_mut(ino) {
            n.row.mtime_ms = now_ms();
            // Closed data being changed again is not complete until the next close.
            if matches!(
                n.row.state,
                NodeState::Committed | NodeState::Queued | NodeState::Failed
            ) {
                n.row.state = NodeState::Staged;
                let row = n.row.clone();
                let _ = self.persist(&row);
            }
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(libc::EBADF);
        }
        let of = h.open.clone().ok_or(libc::EBADF)?;
        let mut st = h.state.lock().await;
        if let HandleState::Failed(e) = &*st {
            return Err(*e);
        }
        let end = offset + data.len() as u64;
        if let Some(max) = self.max_size() {
            if end > max {
                // Nothing of this file may reach the target: fail the handle for good.
                *st = HandleState::Failed(libc::EFBIG);
                // The stage now holds only the first part: never upload it on its own.
                self.set_state(
                    h.ino,
                    NodeState::Incomplete,
                    &format!("the file grew past the target's limit of {max} bytes; only the first part is kept locally"),
                );
                return Err(libc::EFBIG);
            }
        }
        self.ensure_loaded(&of).await?;
        let written = {
            let _g = of.gate.read().await;
            of.stage.write_at(offset, data)
        };
        if let Err(e) = written {
            // The stage lost this write (disk full, I/O error): what it holds is not what
            // the writer wrote, so it must never be uploaded as the file.
            let errno = io_errno(&e);
            *st = HandleState::Failed(errno);
            self.set_state(
                h.ino,
                NodeState::Incomplete,
                &format!("a write to the local stage failed ({e}); the data is incomplete and is not uploaded"),
            );
            return Err(errno);
        }
        *st = HandleState::Writing;
        drop(st);
        self.mark_modified(h.ino);
        Ok(data.len() as u32)
    }

    /// One line a person can act on: the file, the target, the cause, and for a refused
    /// token where it comes from.
    fn upload_failure(&self, path: &str, e: &crate::remote::TargetError) -> String {
        let mut m = format!("upload of {path} to {} failed: {e}", self.opts.target_name);
        if e.kind == crate::remote::ErrorKind::Auth && !self.opts.token_source.is_empty() {
            m.push_str(&format!(
                " (the token comes from {})",
                self.opts.token_source
            ));
        }
        m
    }

    fn set_failed(&self, ino: u64, message: &str) {
        self.set_state(ino, NodeState::Failed, message);
    }

    fn set_state(&self, ino: u64, state: NodeState, message: &str) {
        let mut t = self.tree();
        if let Some(n) = t.get_mut(ino) {
            n.row.state = state;
            n.row.last_error = Some(message.to_string());
            let row = n.row.clone();
            let _ = self.persist(&row);
        }
    }

    /// `close()` of a descriptor: commit if this handle's process wrote new data.
    pub async fn flush(&self, fh: u64, pid: u32) -> FsResult<()> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Ok(());
        }
        let Some(of) = h.open.clone() else {
            return Ok(());
        };
        let mut st = h.state.lock().await;
        if let HandleState::Failed(e) = &*st {
            return Err(*e);
        }
        if self.waits_for_rename(h.ino) {
            return Ok(());
        }
        if !of.has_new_data() {
            // Nothing new (a dup'ed descriptor closed, or an empty file): the release
            // commits what is left.
            return Ok(());
        }
        // The opener's main thread closing (the usual case) needs no look-up.
        let tgid = if pid == h.opener_tgid {
            pid
        } else {
            tgid_of(pid)
        };
        if h.opener_tgid != 0 && tgid != 0 && tgid != h.opener_tgid {
            // Another process (a forked child) closed its copy; the opener keeps writing.
            return Ok(());
        }
        *st = HandleState::Committing;
        let r = self.close_commit(h.ino, &of).await;
        *st = match r {
            Ok(()) => HandleState::Committed,
            Err(e) => HandleState::Failed(e),
        };
        r
    }

    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Ok(());
        }
        let Some(of) = h.open.clone() else {
            return Ok(());
        };
        let mut st = h.state.lock().await;
        if let HandleState::Failed(e) = &*st {
            return Err(*e);
        }
        if !of.dirty() || self.waits_for_rename(h.ino) {
            return Ok(());
        }
        *st = HandleState::Committing;
        let r = self.close_commit(h.ino, &of).await;
        *st = match r {
            Ok(()) => HandleState::Committed,
            Err(e) => HandleState::Failed(e),
        };
        r
    }

    /// Last close of a descriptor: commit what no flush committed, drop the stage when the
    /// file is in sync and nobody uses it. Errors here only reach the log and `status`.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh)
            .ok_or(libc::EBADF)?;
        let Some(of) = h.open.clone() else {
            return Ok(());
        };
        let failed = matches!(&*h.state.lock().await, HandleState::Failed(_));
        let mut result = Ok(());
        if h.writable {
            let left = of.writers.fetch_sub(1, Ordering::SeqCst) - 1;
            // A save's temporary file waits for its rename (checked under the commit lock,
            // which the rename's commit takes too); kept as failed, so that a later mount
            // still uploads it if the rename never comes.
            // Write-back: data already queued at close needs nothing here (and must not
            // wait for the commit lock its running upload holds).
            let todo = left == 0 && !failed && of.dirty() && !of.is_queued();
            let deferred = todo && {
                let _c = of.commit_lock.lock().await;
                let wait = of.dirty() && self.waits_for_rename(h.ino);
                if wait {
                    self.set_failed(
                        h.ino,
                        "a save's temporary file: uploaded once renamed into place",
                    );
                }
                wait
            };
            if todo && !deferred {
                result = self.close_commit(h.ino, &of).await;
                if let Err(e) = result {
                    tracing::warn!(ino = h.ino, errno = e, "commit at release failed");
                }
            }
        }
        // The writer count already went down above.
        self.put_open(h.ino, &of, false);
        result
    }

    /// Drop an inode's write state once no handle uses it.
    fn cleanup(&self, ino: u64, of: &Arc<OpenFile>) {
        // Counts only go up under the tree lock (open_for_write), so checking under it
        // is final.
        let mut t = self.tree();
        if of.handles.load(Ordering::SeqCst) != 0 {
            return;
        }
        // Nobody is left to close the file for writing: an early upload never completes.
        if of.cancel_early() {
            self.uploads.end(ino);
        }
        if of.unlinked.load(Ordering::SeqCst) {
            of.stage.remove_file();
            return;
        }
        let Some(n) = t.get_mut(ino) else {
            of.stage.remove_file();
            return;
        };
        if !n.open.as_ref().is_some_and(|o| Arc::ptr_eq(o, of)) {
            return;
        }
        n.open = None;
        n.row.size = of.size();
        let done = !of.dirty() && n.row.state == NodeState::Committed;
        if done {
            n.row.stage = None;
        } else if n.row.state == NodeState::Staged && of.dirty() {
            // Closed without a successful commit attempt (e.g. the commit was skipped).
            n.row.state = NodeState::Failed;
            if n.row.last_error.is_none() {
                n.row.last_error = Some("closed without being uploaded".to_string());
            }
        }
        let row = n.row.clone();
        let persisted = self.persist(&row);
        if done {
            // Reused only once no row names it any more (a crash must never find a
            // stage shared by two files).
            match persisted {
                Ok(()) => self.pool.recycle(&of.stage),
                Err(_) => of.stage.remove_file(),
            }
        }
    }

    /// Upload the inode's stage if it has anything the remote lacks; the outcome as errno.
    async fn commit(&self, ino: u64, of: &Arc<OpenFile>) -> FsResult<()> {
        let _c = of.commit_lock.lock().await;
        let _gate = of.gate.write().await;
        if !of.dirty() || of.unlinked.load(Ordering::SeqCst) {
            if of.cancel_early() {
                self.uploads.end(ino);
            }
            return Ok(());
        }
        let version = of.stage.version();
        let size = of.stage.size();
        let (name, parent_ref, mtime_ms, old_remote, extra_replaced, path, was_failed) = {
            let t = self.tree();
            let Some(n) = t.get(ino) else { return Ok(()) };
            (
                n.row.name.clone(),
                self.dir_ref(&t, n.row.parent),
                n.row.mtime_ms,
                n.row.remote.clone(),
                n.row.replaces.clone(),
                t.path(ino),
                // Reopening for write makes a failed node `staged`; its error stays.
                n.row.state == NodeState::Failed || n.row.last_error.is_some(),
            )
        };
        of.committing.store(true, Ordering::SeqCst);
        let stage = of.stage.clone();
        let known = of.digests_at(version);
        // A small stage is hashed in place: handing it to the blocking pool costs more.
        let digests = match known {
            Some(d) => Ok(Ok(d)),
            None if size <= INLINE_DIGEST_MAX => Ok(stage.digests()),
            None => tokio::task::spawn_blocking(move || stage.digests()).await,
        };
        let digests = match digests {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                of.committing.store(false, Ordering::SeqCst);
                self.set_failed(ino, &format!("reading the stage of {path}: {e}"));
                return Err(io_errno(&e));
            }
            Err(e) => {
                of.committing.store(false, Ordering::SeqCst);
                self.set_failed(ino, &format!("hashing {path}: {e}"));
                return Err(libc::EIO);
            }
        };
        {
            let mut t = self.tree();
            if let Some(n) = t.get_mut(ino) {
                n.row.state = NodeState::Uploading;
                n.row.size = size;
                let row = n.row.clone();
                let _ = self.persist(&row);
            }
        }
        // An upload started by a size hint: complete it when the file is what it expected.
        let early_landed = match of.take_early() {
            Some(e) => {
                self.finish_early(
                    ino,
                    e,
                    size,
                    &parent_ref,
                    &name,
                    &old_remote,
                    &extra_replaced,
                    &digests,
                )
                .await
            }
            None => None,
        };
        // A failed attempt may have landed anyway (the server stored the file, then its
        // answer was lost or spoiled): replace that copy instead of adding a second one.
        let landed = match &old_remote {
            None if was_failed && extra_replaced.is_none() => {
                self.landed_copy(ino, &parent_ref, &name).await
            }
            _ => None,
        };
        // When that copy provably holds this data, it is the upload.
        let adopt = landed.clone().filter(|e| {
            e.size == size
                && ((e.sha1.is_some() && e.sha1 == digests.sha1)
                    || (e.md5.is_some() && e.md5 == digests.md5))
        });
        let old_remote = old_remote.or(landed);
        let replaces = old_remote.clone().or(extra_replaced.clone());
        let result = if let Some(r) = early_landed {
            Ok(r)
        } else if let Some(e) = adopt {
            tracing::info!(name = %name, id = %e.id, "the earlier upload is complete; keeping it");
            Ok(e)
        } else {
            let progress = self.uploads.begin(ino, size);
            let r = uploader::upload(
                self.target.as_ref(),
                &self.catalog,
                &of.stage,
                uploader::Commit {
                    ino,
                    target_name: self.opts.target_name.clone(),
                    parent: parent_ref.clone(),
                    name: name.clone(),
                    size,
                    digests: digests.clone(),
                    mtime_ms,
                    replaces,
                    max_size: self.max_size(),
                    progress,
                    early: None,
                },
            )
            .await;
            self.uploads.end(ino);
            r
        };
        of.committing.store(false, Ordering::SeqCst);
        let remote = match result {
            Ok(r) => r,
            Err(e) => {
                let message = self.upload_failure(&path, &e);
                tracing::error!("{message}");
                self.set_failed(ino, &message);
                return Err(e.kind.errno());
            }
        };
        of.mark_committed(version);
        if self
            .hidden
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&remote.id)
        {
            // A deduplicating target handed back an id hidden earlier: it is in use again.
            let _ = self.catalog.unhide(&remote.id);
        }
        // Where the node is now (a rename may have happened during the upload).
        let now = {
            let mut t = self.tree();
            match t.get(ino) {
                None => None,
                Some(n) => {
                    let cur = (n.row.name.clone(), self.dir_ref(&t, n.row.parent));
                    t.set_remote(ino, Some(remote.clone()));
                    if let Some(n) = t.get_mut(ino) {
                        n.row.state = NodeState::Committed;
                        n.row.size = size;
                        n.row.sha1 = digests.sha1.clone().or(remote.sha1.clone());
                        n.row.md5 = digests.md5.clone().or(remote.md5.clone());
                        n.row.last_error = None;
                        // A replacing rename during the upload set a new one: handle it below.
                        let later = if n.row.replaces != extra_replaced {
                            n.row.replaces.take()
                        } else {
                            n.row.replaces = None;
                            None
                        };
                        let row = n.row.clone();
                        let _ = self.persist(&row);
                        Some((cur, later))
                    } else {
                        None
                    }
                }
            }
        };
        let Some(((cur_name, cur_parent), later_replaced)) = now else {
            // Unlinked while uploading: the upload must not outlive the file.
            let _ = self.delete_remote(&remote, ino).await;
            return Ok(());
        };
        if let Some(old) = &later_replaced {
            if old.id != remote.id {
                if let Err(e) = self.delete_remote(old, ino).await {
                    tracing::warn!(name = %old.name, errno = e, "cannot delete the replaced remote file");
                }
            }
        }
        let moved = remote.name != cur_name || (self.caps.folders && cur_parent != parent_ref);
        if moved && self.caps.rename {
            // Renamed while the upload ran: move the new remote file after it.
            match self.target.rename(&remote, &cur_parent, &cur_name).await {
                Ok(r) => self.tree().set_remote(ino, Some(r)),
                Err(e) => {
                    tracing::warn!(from = %remote.name, to = %cur_name, error = %e, "rename after upload failed")
                }
            }
        }
        for old in [old_remote, extra_replaced].into_iter().flatten() {
            if old.id != remote.id {
                if let Err(e) = self.delete_remote(&old, ino).await {
                    tracing::warn!(name = %old.name, errno = e, "cannot delete the replaced remote file");
                }
            }
        }
        if let Some(n) = self.tree().get(ino) {
            let row = n.row.clone();
            let _ = self.persist(&row);
        }
        Ok(())
    }

    /// Seal an early upload when the closed file is what it announced (same size and
    /// place, nothing it read rewritten) and wait for it; else give it up. `Some` when it
    /// landed; `None` means "upload the ordinary way". Writers are kept out by the caller.
    #[allow(clippy::too_many_arguments)]
    async fn finish_early(
        &self,
        ino: u64,
        mut e: handle::EarlyUpload,
        size: u64,
        parent: &DirRef,
        name: &str,
        old_remote: &Option<RemoteFile>,
        extra_replaced: &Option<RemoteFile>,
        digests: &crate::remote::Digests,
    ) -> Option<RemoteFile> {
        let replaces = old_remote
            .as_ref()
            .or(extra_replaced.as_ref())
            .map(|r| r.id.clone());
        let same =
            e.size == size && &e.parent == parent && e.name == name && e.replaces == replaces;
        let intact = same && e.stage.early_seal();
        if intact {
            e.seal.seal(digests.clone());
        } else {
            tracing::info!(
                ino,
                name,
                announced = e.size,
                size,
                "the file changed after its size was announced: uploading it the ordinary way"
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
                if let Err(errno) = self.delete_remote(&r, ino).await {
                    tracing::warn!(ino, name, errno, "cannot delete the copy");
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

    /// The remote file named `name` in `dir` that no other node uses: what an earlier
    /// failed upload of `ino` may have left after all. Listing errors mean "none".
    async fn landed_copy(&self, ino: u64, dir: &DirRef, name: &str) -> Option<RemoteFile> {
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

    // ----- directories ---------------------------------------------------------------

    /// Open a directory: refresh the listing if stale and snapshot the entries.
    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            if !n.is_dir() {
                return Err(libc::ENOTDIR);
            }
        }
        self.refresh(ino, false).await;
        let entries = {
            let t = self.tree();
            let n = t.get(ino).ok_or(libc::ENOENT)?;
            let parent = t.get(n.row.parent).unwrap_or(n);
            let mut v = vec![
                DirEntry {
                    name: ".".into(),
                    attr: self.attr_of(n),
                },
                DirEntry {
                    name: "..".into(),
                    attr: self.attr_of(parent),
                },
            ];
            for c in t.children(ino) {
                if let Some(cn) = t.get(c) {
                    v.push(DirEntry {
                        name: cn.row.name.clone(),
                        attr: self.attr_of(cn),
                    });
                }
            }
            v
        };
        let fh = self.new_fh();
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(fh, Arc::new(entries));
        Ok(fh)
    }

    /// Entries of an open directory from `offset` on.
    pub fn readdir(&self, fh: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(libc::EBADF)
    }

    /// The attributes of `ino` if it is still called `name` in `dir`. A directory snapshot
    /// can be older than a rename or unlink; readdirplus hands the kernel name → inode
    /// pairs it caches as lookups, so stale pairs must not reach it.
    pub fn current_entry(&self, dir: u64, name: &str, ino: u64) -> Option<Attr> {
        let t = self.tree();
        if name != "." && name != ".." && t.child(dir, name) != Some(ino) {
            return None;
        }
        t.get(ino).map(|n| self.attr_of(n))
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    // ----- misc ----------------------------------------------------------------------

    pub fn statfs(&self) -> StatFs {
        // No quota is known: report a large free space (file managers refuse to copy
        // onto a filesystem with 0 free), 1 PiB in 4 KiB blocks.
        let blocks = 1u64 << 38;
        StatFs {
            blocks,
            bfree: blocks,
            files: 1 << 32,
            ffree: (1 << 32) - self.tree().len() as u64,
            bsize: 4096,
            namelen: NAME_MAX as u32,
        }
    }

    fn xattrs(&self, ino: u64) -> FsResult<Vec<(&'static str, String)>> {
        let t = self.tree();
        let n = t.get(ino).ok_or(libc::ENOENT)?;
        let state = match (&n.row.state, &n.open) {
            (NodeState::Committed, Some(o)) if o.dirty() => "staged",
            (s, _) => s.as_str(),
        };
        let mut v = vec![(XATTR_STATE, state.to_string())];
        if let Some(r) = &n.row.remote {
            v.push((XATTR_REMOTE_ID, r.id.clone()));
            if let Some(sha1) = n.row.sha1.clone().or(r.sha1.clone()) {
                v.push((XATTR_SHA1, sha1));
            }
            if let Some(u) = &r.url {
                v.push((XATTR_URL, u.clone()));
            }
        }
        Ok(v)
    }

    /// The value of one of our read-only extended attributes.
    ///
    /// Only the `user.` namespace exists here: a name in any other (`security.selinux`,
    /// `system.posix_acl_access`, ...) gets EOPNOTSUPP rather than ENODATA. `ls -l` asks
    /// for the security label and the ACL of every entry, but stops asking on a file
    /// system that answers "not supported" once; with ENODATA a warm `ls -l` of 10 000
    /// entries spent two thirds of its time in these round trips.
    pub fn getxattr(&self, ino: u64, name: &std::ffi::OsStr) -> FsResult<Vec<u8>> {
        if !name.as_encoded_bytes().starts_with(b"user.") {
            // Still ENOENT for an inode that is gone.
            self.tree().get(ino).ok_or(libc::ENOENT)?;
            return Err(libc::EOPNOTSUPP);
        }
        let attrs = self.xattrs(ino)?;
        let name = name.to_str().ok_or(libc::ENODATA)?;
        attrs
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(libc::ENODATA)
    }

    /// NUL-separated names of the extended attributes present.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let mut out = vec![];
        for (k, _) in self.xattrs(ino)? {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
        }
        Ok(out)
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
                Err(e) => tracing::warn!(ino, errno = e, "retrying a failed upload failed again"),
            }
        }
        ok
    }

    /// Nodes not in sync with the remote, with their paths (for `status` and tests).
    pub fn pending(&self) -> Vec<(String, NodeRow)> {
        let t = self.tree();
        t.all()
            .filter(|n| n.is_pending())
            .map(|n| (t.path(n.row.ino), n.row.clone()))
            .collect()
    }
}

/// Take a listed remote entry's facts into a node that already uses it. The local mtime
/// stays when the content did not change (`utimens` after upload is only local).
fn apply_remote(row: &mut NodeRow, e: &RemoteFile) {
    let changed = row.remote.as_ref().is_none_or(|r| {
        r.size != e.size || (r.sha1.is_some() && e.sha1.is_some() && r.sha1 != e.sha1)
    });
    if changed && !e.is_dir {
        row.size = e.size;
        if e.mtime_ms > 0 {
            row.mtime_ms = e.mtime_ms;
        }
        row.sha1 = e.sha1.clone();
        row.md5 = e.md5.clone();
    }
    row.remote = Some(e.clone());
}
