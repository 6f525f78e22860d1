//! Open files and file handles.
//!
//! [`OpenFile`] is per inode: the stage holding its local data, the stage version of the
//! last commit (so a flush with nothing new does not upload again), and the locks that keep
//! writers out while a commit uploads. [`Handle`] is per `open()`: an explicit state
//! machine, and where a failure is sticky: a handle that failed keeps its [`super::Error`]
//! and reports its errno to every later call (see [`super::commit`] for the lifecycle).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::read::ReadAhead;
use crate::write::Stage;

use super::commit::UploadState;

/// Per-inode write state, shared by every handle of the inode.
pub struct OpenFile {
    pub stage: Arc<Stage>,
    /// Stage version at the last successful commit (or at load, for an edited file).
    committed_version: AtomicU64,
    /// The file must be (re)created remotely even without new bytes: it is new, or it was
    /// truncated by `O_TRUNC`.
    needs_commit: AtomicBool,
    /// Serializes commits of this inode.
    pub commit_lock: tokio::sync::Mutex<()>,
    /// Writers hold it shared; a commit holds it exclusively while it uploads.
    pub gate: tokio::sync::RwLock<()>,
    /// Handles open for writing.
    pub writers: AtomicUsize,
    /// All handles using this stage.
    pub handles: AtomicUsize,
    /// The inode was unlinked (or replaced by a rename): never commit it.
    pub unlinked: AtomicBool,
    /// The committed remote content this stage stands for but has not fetched yet: an
    /// existing file opened for writing is fetched on the first read, write or partial
    /// truncate, so `touch` or an open that writes nothing costs no download.
    unloaded: std::sync::Mutex<Option<crate::remote::RemoteFile>>,
    /// Serializes that fetch.
    pub load_lock: tokio::sync::Mutex<()>,
    /// Digests of the stage at a given version, computed when it was queued, so the
    /// background upload does not hash the file a second time.
    known_digests: std::sync::Mutex<Option<(u64, crate::remote::Digests)>>,
    /// What is in flight for this stage: an early upload, a queued version, a commit
    /// ([`UploadState`]; its transitions live with the lifecycle in [`super::commit`]).
    pub(super) upload: std::sync::Mutex<UploadState>,
}

impl OpenFile {
    /// `needs_commit`: the data must reach the remote even if nothing more is written.
    pub fn new(stage: Arc<Stage>, needs_commit: bool) -> Arc<Self> {
        Arc::new(Self {
            committed_version: AtomicU64::new(stage.version()),
            stage,
            needs_commit: AtomicBool::new(needs_commit),
            commit_lock: tokio::sync::Mutex::new(()),
            gate: tokio::sync::RwLock::new(()),
            writers: AtomicUsize::new(0),
            handles: AtomicUsize::new(0),
            unlinked: AtomicBool::new(false),
            unloaded: std::sync::Mutex::new(None),
            load_lock: tokio::sync::Mutex::new(()),
            known_digests: std::sync::Mutex::new(None),
            upload: std::sync::Mutex::new(UploadState::Staged),
        })
    }

    pub fn set_known_digests(&self, version: u64, digests: crate::remote::Digests) {
        *self.known_digests.lock().unwrap_or_else(|p| p.into_inner()) = Some((version, digests));
    }

    /// Digests known for stage version `version`.
    pub fn digests_at(&self, version: u64) -> Option<crate::remote::Digests> {
        self.known_digests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(v, _)| *v == version)
            .map(|(_, d)| d.clone())
    }

    /// A write state for an existing remote file whose content is fetched on first use.
    pub fn lazy(stage: Arc<Stage>, remote: crate::remote::RemoteFile) -> Arc<Self> {
        let of = Self::new(stage, false);
        *of.unloaded_lock() = Some(remote);
        of
    }

    fn unloaded_lock(&self) -> std::sync::MutexGuard<'_, Option<crate::remote::RemoteFile>> {
        self.unloaded.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remote content still to fetch, if any.
    pub fn unloaded(&self) -> Option<crate::remote::RemoteFile> {
        self.unloaded_lock().clone()
    }

    /// The content was fetched (stage version `version` equals the remote) or is no longer
    /// needed (truncated to zero).
    pub fn set_loaded(&self, version: Option<u64>) {
        *self.unloaded_lock() = None;
        if let Some(v) = version {
            self.committed_version.store(v, Ordering::SeqCst);
        }
    }

    /// The size the file has for its users.
    pub fn size(&self) -> u64 {
        match &*self.unloaded_lock() {
            Some(r) => r.size,
            None => self.stage.size(),
        }
    }

    /// Bytes were written or the size changed since the last commit.
    pub fn has_new_data(&self) -> bool {
        self.stage.version() != self.committed_version.load(Ordering::SeqCst)
    }

    /// Something must be uploaded before the file is in sync.
    pub fn dirty(&self) -> bool {
        self.needs_commit.load(Ordering::SeqCst) || self.has_new_data()
    }

    /// The stage was truncated to nothing by `O_TRUNC`: commit even if nothing follows.
    pub fn mark_needs_commit(&self) {
        self.needs_commit.store(true, Ordering::SeqCst);
    }

    /// A commit of stage version `version` succeeded.
    pub fn mark_committed(&self, version: u64) {
        self.committed_version.store(version, Ordering::SeqCst);
        self.needs_commit.store(false, Ordering::SeqCst);
    }
}

/// What a handle is doing.
pub enum HandleState {
    /// Reading a committed remote file through the block cache.
    Reading(Box<ReadAhead>),
    /// Reading local data (the inode's stage) without writing.
    Local,
    /// Open for writing; data goes to the inode's stage.
    Writing,
    /// A commit started by this handle is uploading.
    Committing,
    /// This handle's data was committed; a further write makes it `Writing` again.
    Committed,
    /// The upload (or a write) failed; every later call reports this error (sticky, as
    /// the lifecycle's Failed state is for the handle that committed).
    Failed(super::Error),
}

impl HandleState {
    /// Fail again as the handle failed: the same errno for every later call (the cause
    /// was logged when it happened).
    pub fn sticky(&self) -> Result<(), super::Error> {
        match self {
            HandleState::Failed(e) => Err(super::Error::new(e.errno)),
            _ => Ok(()),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            HandleState::Reading(_) => "reading",
            HandleState::Local => "local",
            HandleState::Writing => "writing",
            HandleState::Committing => "committing",
            HandleState::Committed => "committed",
            HandleState::Failed(_) => "failed",
        }
    }
}

/// One open file description.
pub struct Handle {
    pub ino: u64,
    pub writable: bool,
    /// The stage this handle reads or writes, when the inode has local data.
    pub open: Option<Arc<OpenFile>>,
    /// Thread-group id of the process that opened it (0 when unknown): a flush from
    /// another process (a forked child closing its copy) does not commit.
    pub opener_tgid: u32,
    pub state: tokio::sync::Mutex<HandleState>,
}
