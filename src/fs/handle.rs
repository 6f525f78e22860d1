//! Open files and file handles.
//!
//! [`OpenFile`] is per inode: the stage holding its local data, the stage version of the
//! last commit (so a flush with nothing new does not upload again), and the locks that keep
//! writers out while a commit uploads. [`Handle`] is per `open()`: an explicit state
//! machine. A handle that failed keeps its errno and reports it to every later call.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::read::ReadAhead;
use crate::write::Stage;

use super::commit::early::EarlyUpload;

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
    /// A commit is uploading right now (renames then stay local; the commit follows up).
    pub committing: AtomicBool,
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
    /// Write-back: the stage version last made durable and queued for upload (so a later
    /// release with nothing new does not queue it again).
    queued_version: std::sync::Mutex<Option<u64>>,
    /// Digests of the stage at a given version, computed when it was queued, so the
    /// background upload does not hash the file a second time.
    known_digests: std::sync::Mutex<Option<(u64, crate::remote::Digests)>>,
    /// An upload started by a size hint while the file is written, taken by the commit.
    early: std::sync::Mutex<Option<EarlyUpload>>,
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
            committing: AtomicBool::new(false),
            writers: AtomicUsize::new(0),
            handles: AtomicUsize::new(0),
            unlinked: AtomicBool::new(false),
            unloaded: std::sync::Mutex::new(None),
            load_lock: tokio::sync::Mutex::new(()),
            queued_version: std::sync::Mutex::new(None),
            known_digests: std::sync::Mutex::new(None),
            early: std::sync::Mutex::new(None),
        })
    }

    fn early_lock(&self) -> std::sync::MutexGuard<'_, Option<EarlyUpload>> {
        self.early.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An early upload runs for this stage.
    pub fn has_early(&self) -> bool {
        self.early_lock().is_some()
    }

    pub fn set_early(&self, e: EarlyUpload) {
        *self.early_lock() = Some(e);
    }

    pub fn take_early(&self) -> Option<EarlyUpload> {
        self.early_lock().take()
    }

    /// Give a running early upload up without waiting for it (the file was removed or
    /// nobody will close it for writing): its reads and its final step fail, so nothing
    /// becomes visible remotely.
    pub fn cancel_early(&self) -> bool {
        // Dropping it cancels it.
        self.take_early().is_some()
    }

    /// Write-back: stage version `version` is durable and queued, with these digests.
    pub fn mark_queued(&self, version: u64, digests: crate::remote::Digests) {
        *self
            .queued_version
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(version);
        self.set_known_digests(version, digests);
    }

    /// The current content is already queued (nothing new since).
    pub fn is_queued(&self) -> bool {
        *self
            .queued_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            == Some(self.stage.version())
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
    /// The upload (or a write) failed; every later call reports this errno.
    Failed(i32),
}

impl HandleState {
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
