//! The uploader: one stage → one [`UploadRequest`], with the upload journaled in the
//! catalog while it runs (session id, parts done) and removed when it ends.
//!
//! The target client cuts the parts, sends them in parallel where the protocol allows and
//! retries each part; this module only frames the request, enforces the size limit before
//! anything is sent, and records progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::catalog::{Catalog, JournalRow};
use crate::target::{
    Digests, DirRef, ErrorKind, RemoteFile, Target, TargetError, UploadObserver, UploadRequest,
};

use super::stage::{Stage, StageSource};

/// Records an upload's progress in the catalog journal.
pub struct JournalObserver {
    catalog: Arc<Catalog>,
    ino: u64,
    /// Bytes accepted by the server so far (for `status`).
    pub bytes: AtomicU64,
}

impl JournalObserver {
    pub fn new(catalog: Arc<Catalog>, ino: u64) -> Self {
        Self {
            catalog,
            ino,
            bytes: AtomicU64::new(0),
        }
    }
}

impl UploadObserver for JournalObserver {
    fn session_started(&self, session_id: &str) {
        if let Err(e) = self.catalog.journal_session(self.ino, session_id) {
            tracing::warn!(ino = self.ino, error = %e, "cannot journal upload session");
        }
    }
    fn part_done(&self, index: u64, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        tracing::debug!(ino = self.ino, part = index, bytes, "part accepted");
        if let Err(e) = self.catalog.journal_part(self.ino, bytes) {
            tracing::warn!(ino = self.ino, error = %e, "cannot journal upload part");
        }
    }
}

/// Everything one commit needs to know.
pub struct Commit {
    pub ino: u64,
    pub target_name: String,
    pub parent: DirRef,
    pub name: String,
    pub size: u64,
    pub digests: Digests,
    pub mtime_ms: i64,
    pub replaces: Option<RemoteFile>,
    /// Largest size the target accepts, when known.
    pub max_size: Option<u64>,
}

/// Upload `stage` as described by `c`, journaling it in `catalog`.
pub async fn upload(
    target: &dyn Target,
    catalog: &Arc<Catalog>,
    stage: &Arc<Stage>,
    c: Commit,
) -> Result<RemoteFile, TargetError> {
    if let Some(max) = c.max_size {
        if c.size > max {
            return Err(TargetError::new(
                ErrorKind::TooLarge,
                format!(
                    "{} is {} bytes; the target accepts at most {max}",
                    c.name, c.size
                ),
            ));
        }
    }
    let journal = JournalRow {
        ino: c.ino,
        stage: stage.path().to_path_buf(),
        target: c.target_name.clone(),
        parent_remote: c.parent.clone(),
        name: c.name.clone(),
        size: c.size,
        sha1: c.digests.sha1.clone(),
        md5: c.digests.md5.clone(),
        session_id: None,
        parts_done: 0,
        bytes_done: 0,
        started_ms: crate::fs::now_ms(),
    };
    if let Err(e) = catalog.journal_begin(&journal) {
        tracing::warn!(ino = c.ino, error = %e, "cannot journal upload");
    }
    let req = UploadRequest {
        parent: c.parent,
        name: c.name.clone(),
        size: c.size,
        digests: c.digests,
        mtime_ms: c.mtime_ms,
        replaces: c.replaces,
        resume_session: None,
        source: Arc::new(StageSource::new(stage.clone(), c.size)),
        observer: Arc::new(JournalObserver::new(catalog.clone(), c.ino)),
    };
    let started = std::time::Instant::now();
    let result = target.upload(req).await;
    if let Err(e) = catalog.journal_end(c.ino) {
        tracing::warn!(ino = c.ino, error = %e, "cannot close upload journal");
    }
    match &result {
        Ok(r) => tracing::info!(
            name = %c.name, size = c.size, id = %r.id,
            ms = started.elapsed().as_millis() as u64, "uploaded"
        ),
        Err(e) => tracing::warn!(name = %c.name, size = c.size, error = %e, "upload failed"),
    }
    result
}
