//! The filesystem core: the inode table, handles and the semantics of every operation
//! (DESIGN.md §4), independent of FUSE so it can be driven and tested directly.
//!
//! One file per family of operations:
//! - `namespace`: lookup, getattr/setattr, mkdir, unlink, rmdir, rename. The in-memory
//!   [`inode::Tree`] mirrors the catalog (written through on every change), so inode
//!   numbers and catalog-only folders survive remounts.
//! - `listing`: the target's own listing (cached for `list_ttl`) merged with local
//!   pending files; remote entries get stable inodes, matched by remote id first;
//!   tombstones keep a listing that started before a delete from bringing it back.
//! - `files`: open, create, read, write, truncate. A file's data is staged
//!   ([`crate::write::Stage`]); committed files are read through the block cache. An open
//!   after the listing TTL checks the file against the remote first (close-to-open).
//! - `close`: flush, fsync, release: where a writer's data enters the upload lifecycle.
//! - [`commit`]: the upload lifecycle itself, one state machine (stage → session → parts →
//!   seal → commit → landed/failed), with write-back's queue, the size-hinted early start,
//!   adopting a copy that already landed and crash recovery.
//! - `xattr`: the read-only extended attributes and statfs; `names`: name rules and
//!   the heuristics for tools' temporary files; `repost`: a renamed file posted again
//!   under its new name on flat targets that cannot rename remotely.
//! - `outage`: listings while the target is unreachable (from the catalog, marked stale)
//!   or refuses the mount (an errno for `ls`, never an empty directory).
//!
//! Operations return [`FsResult`]: an [`Error`] is an errno plus what failed and why;
//! [`crate::fuse`] turns it into the reply and logs the cause.

mod close;
pub mod commit;
pub mod error;
mod files;
pub mod handle;
pub mod inode;
mod listing;
mod names;
mod namespace;
mod outage;
pub mod pool;
mod repost;
mod xattr;

pub use commit::{ConflictStatus, FileStatus, MountStatus, Uploads};
pub use error::{Errno, Error, ToErrno};
pub use names::NAME_MAX;
pub use xattr::{XATTR_REMOTE_ID, XATTR_SHA1, XATTR_STATE, XATTR_URL, XATTR_VALIDATED};

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::catalog::{now_ms, Catalog, NodeKind, NodeRow, NodeState, ROOT_INO};
use crate::read::BlockCache;
use crate::remote::{Capabilities, DirRef, RemoteFile, Target};
use crate::write::Stage;

use handle::Handle;
use inode::{Node, Tree};

/// What every operation returns.
pub type FsResult<T> = std::result::Result<T, Error>;

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
    /// Link count: 2 + subdirectories for a directory, 1 for a file, 0 once an open
    /// file was unlinked.
    pub nlink: u32,
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
    /// Landed files unlinked while descriptors read them, by inode: deleted remotely at
    /// the last close ([`namespace`]).
    unlinked_reads: Mutex<HashMap<u64, RemoteFile>>,
    stage_dir: PathBuf,
    /// Background uploads and upload progress ([`commit`]).
    uploads: commit::Uploads,
    /// Stage files kept for reuse ([`pool`]).
    pool: pool::StagePool,
    /// Listings during outages and refused listings ([`outage`]).
    outage: outage::Outage,
    /// When each file's remote metadata was last checked by itself, ms since the epoch
    /// (a listing of its folder checks it too).
    validated: Mutex<HashMap<u64, i64>>,
    /// Conflict copies made by this mount ([`commit::conflict`]).
    conflicts: commit::conflict::Conflicts,
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
        let tree = commit::recover::load_tree(&catalog, caps.case_insensitive_names)?;
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
            unlinked_reads: Mutex::new(HashMap::new()),
            stage_dir,
            uploads: commit::Uploads::default(),
            pool: pool::StagePool::default(),
            outage: outage::Outage::default(),
            validated: Mutex::new(HashMap::new()),
            conflicts: commit::conflict::Conflicts::default(),
        })
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub(super) fn tree(&self) -> MutexGuard<'_, Tree> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write a changed row through to the catalog.
    pub(super) fn persist(&self, row: &NodeRow) -> FsResult<()> {
        self.catalog
            .update_node(row)
            .map_err(|e| Error::from(e).context(format_args!("recording {}", row.name)))
    }

    /// Write a changed row through where the operation goes on regardless (the tree is
    /// right; the catalog catches up at the node's next change): a failure is logged here.
    pub(super) fn persist_or_log(&self, row: &NodeRow) {
        if let Err(e) = self.persist(row) {
            tracing::error!(ino = row.ino, error = %e, "catalog update failed");
        }
    }

    pub(super) fn max_size(&self) -> Option<u64> {
        match (self.caps.max_file_size, self.opts.max_file_size) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub(super) fn attr_of(&self, t: &Tree, n: &Node) -> Attr {
        Attr {
            nlink: t.nlink(n.row.ino),
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
    pub(super) fn dir_ref(&self, t: &Tree, dir: u64) -> DirRef {
        if !self.caps.folders || dir == ROOT_INO {
            return None;
        }
        t.get(dir)
            .and_then(|n| n.row.remote.as_ref().map(|r| r.id.clone()))
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&fh)
            .cloned()
            .ok_or(Error::new(libc::EBADF))
    }

    pub(super) fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn new_stage_path(&self) -> PathBuf {
        self.stage_dir
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// A stage for new data: a recycled empty file when one is free, else a new file.
    pub(super) fn new_stage(&self) -> std::io::Result<Arc<Stage>> {
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

    pub(super) fn new_row(
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
    pub(super) fn insert_row(&self, t: &mut Tree, mut row: NodeRow) -> FsResult<Attr> {
        let ino = self
            .catalog
            .insert_node(&row)
            .map_err(|e| Error::from(e).context("catalog insert failed"))?;
        row.ino = ino;
        t.insert(Node::new(row));
        let n = t.get(ino).ok_or(libc::ENOENT)?;
        Ok(self.attr_of(t, n))
    }

    pub(super) fn set_failed(&self, ino: u64, message: &str) {
        self.set_state(ino, NodeState::Failed, message);
    }

    pub(super) fn set_state(&self, ino: u64, state: NodeState, message: &str) {
        let mut t = self.tree();
        if let Some(n) = t.get_mut(ino) {
            n.row.state = state;
            n.row.last_error = Some(message.to_string());
            let row = n.row.clone();
            self.persist_or_log(&row);
        }
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
