//! The uploader: one stage → one [`UploadRequest`], with the upload journaled in the
//! catalog while it runs (session id, parts done) and removed when it succeeds.
//!
//! The target client cuts the parts, sends them in parallel where the protocol allows and
//! retries each part; this module only frames the request, enforces the size limit before
//! anything is sent, and records progress. A journaled session of the same stage content
//! (same stage file, size and SHA-1) is handed to the client as `resume_session`, so an
//! upload cut short by a failure or a crash continues where the protocol allows (Box lists
//! the parts it already has); a failed attempt keeps its journal row for that reason.
//!
//! A [`Destination`] (where the stage goes, its size and digests) is the one description
//! both the journal row and the request are built from, whether the row is written by a
//! write-back close before any attempt or by the attempt itself. A caller that writes
//! the attempt's row in its own transaction (the filesystem's commit writes it with the
//! node's `uploading` row, and removes it with the landed row) hands it over as
//! [`Commit::journaled`]: one catalog commit per step of a file instead of two.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::catalog::{Catalog, JournalRow};
use crate::remote::{
    Digests, DirRef, ErrorKind, PartSource, RemoteFile, Seal, Target, TargetError, UploadObserver,
    UploadRequest,
};

use super::stage::{GrowingSource, Stage, StageSource};

/// Live progress of one upload, shared with `status`.
#[derive(Debug)]
pub struct Progress {
    pub size: AtomicU64,
    /// Bytes accepted by the server in this attempt (resumed parts are not counted).
    pub bytes: AtomicU64,
    pub parts: AtomicU64,
    /// The upload goes through a session (parts are counted as they are accepted).
    pub session: std::sync::atomic::AtomicBool,
    /// Bytes read from the stage to be sent: the only measure while a file goes up in
    /// one request (no parts to count).
    pub read: AtomicU64,
    /// When the current attempt started sending.
    pub started: Mutex<Option<Instant>>,
}

impl Progress {
    pub fn new(size: u64) -> Arc<Self> {
        Arc::new(Self {
            size: AtomicU64::new(size),
            bytes: AtomicU64::new(0),
            parts: AtomicU64::new(0),
            read: AtomicU64::new(0),
            session: std::sync::atomic::AtomicBool::new(false),
            started: Mutex::new(None),
        })
    }

    /// A new attempt begins.
    pub fn restart(&self, size: u64) {
        self.size.store(size, Ordering::Relaxed);
        self.bytes.store(0, Ordering::Relaxed);
        self.parts.store(0, Ordering::Relaxed);
        self.read.store(0, Ordering::Relaxed);
        self.session.store(false, Ordering::Relaxed);
        *self.started.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Bytes done as far as can be told: accepted parts in a session upload (parts are
    /// read ahead of the network), else bytes read for the single request.
    pub fn done(&self) -> u64 {
        let size = self.size.load(Ordering::Relaxed);
        if self.session.load(Ordering::Relaxed) || self.parts.load(Ordering::Relaxed) > 0 {
            self.bytes.load(Ordering::Relaxed).min(size)
        } else {
            self.read.load(Ordering::Relaxed).min(size)
        }
    }

    /// Seconds since the attempt started, if one runs.
    pub fn elapsed(&self) -> Option<f64> {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| t.elapsed().as_secs_f64())
    }
}

/// The stage as the upload reads it, counting bytes for progress.
struct CountingSource {
    inner: Box<dyn PartSource>,
    progress: Arc<Progress>,
}

impl PartSource for CountingSource {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<bytes::Bytes> {
        let b = self.inner.read_at(offset, len)?;
        self.progress
            .read
            .fetch_add(b.len() as u64, Ordering::Relaxed);
        Ok(b)
    }
    fn path(&self) -> Option<&std::path::Path> {
        self.inner.path()
    }
    fn wait_ready(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.inner.wait_ready(offset, len)
    }
    fn seal(&self) -> Option<Arc<Seal>> {
        self.inner.seal()
    }
}

/// Records an upload's progress in the catalog journal.
pub struct JournalObserver {
    catalog: Arc<Catalog>,
    ino: u64,
    /// What `status` shows.
    pub progress: Arc<Progress>,
}

impl JournalObserver {
    pub fn new(catalog: Arc<Catalog>, ino: u64, progress: Arc<Progress>) -> Self {
        Self {
            catalog,
            ino,
            progress,
        }
    }
}

impl UploadObserver for JournalObserver {
    fn session_started(&self, session_id: &str) {
        self.progress.session.store(true, Ordering::Relaxed);
        if let Err(e) = self.catalog.journal_session(self.ino, session_id) {
            tracing::warn!(ino = self.ino, error = %e, "cannot journal upload session");
        }
    }
    fn part_done(&self, index: u64, bytes: u64) {
        self.progress.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.progress.parts.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(ino = self.ino, part = index, bytes, "part accepted");
        if let Err(e) = self.catalog.journal_part(self.ino, bytes) {
            tracing::warn!(ino = self.ino, error = %e, "cannot journal upload part");
        }
    }
}

/// Where one stage goes and what it holds: what a journal row and an upload request
/// share, so both are built from one description.
#[derive(Debug, Clone)]
pub struct Destination {
    pub ino: u64,
    pub target_name: String,
    pub parent: DirRef,
    pub name: String,
    pub size: u64,
    pub digests: Digests,
}

impl Destination {
    /// The journal row of this upload before any attempt: no session, nothing sent,
    /// `started_ms` 0 (what a write-back close records). An attempt fills in the rest.
    pub fn journal_row(&self, stage: &Path) -> JournalRow {
        JournalRow {
            ino: self.ino,
            stage: stage.to_path_buf(),
            target: self.target_name.clone(),
            parent_remote: self.parent.clone(),
            name: self.name.clone(),
            size: self.size,
            sha1: self.digests.sha1.clone(),
            md5: self.digests.md5.clone(),
            session_id: None,
            parts_done: 0,
            bytes_done: 0,
            started_ms: 0,
        }
    }
}

/// Everything one commit needs to know.
pub struct Commit {
    pub dest: Destination,
    pub mtime_ms: i64,
    pub replaces: Option<RemoteFile>,
    /// Largest size the target accepts, when known.
    pub max_size: Option<u64>,
    /// Where progress is reported.
    pub progress: Arc<Progress>,
    /// The file is still being written (a size hint started the upload early): parts
    /// are read as the data arrives and the upload completes only once this is sealed;
    /// `digests` are empty until then.
    pub early: Option<Arc<Seal>>,
    /// Replace `replaces` only if the remote file is still this version
    /// ([`Target::upload_unless_changed`]); `ErrorKind::Changed` otherwise.
    pub expect: Option<RemoteFile>,
    /// The journal row ([`attempt_journal`]) the caller already wrote, in the same
    /// transaction as the node's `uploading` row; the caller also removes it when the
    /// upload lands, with the landed row. `None`: this module writes and removes it, each
    /// as a statement of its own.
    pub journaled: Option<JournalRow>,
}

/// The journal row of an attempt to upload `stage` as `d`, starting now: a session
/// journaled for exactly this content (same stage file, size and SHA-1) is carried over,
/// so the attempt resumes it.
pub fn attempt_journal(catalog: &Catalog, stage: &Stage, d: &Destination) -> JournalRow {
    let earlier = catalog.journal_get(d.ino).ok().flatten().filter(|j| {
        j.session_id.is_some()
            && j.stage == stage.path()
            && j.size == d.size
            && j.sha1.is_some()
            && j.sha1 == d.digests.sha1
    });
    JournalRow {
        session_id: earlier.as_ref().and_then(|j| j.session_id.clone()),
        parts_done: earlier.as_ref().map_or(0, |j| j.parts_done),
        bytes_done: earlier.as_ref().map_or(0, |j| j.bytes_done),
        started_ms: crate::catalog::now_ms(),
        ..d.journal_row(stage.path())
    }
}

/// Upload `stage` as described by `c`, journaling it in `catalog`.
pub async fn upload(
    target: &dyn Target,
    catalog: &Arc<Catalog>,
    stage: &Arc<Stage>,
    c: Commit,
) -> Result<RemoteFile, TargetError> {
    let d = &c.dest;
    if let Some(max) = c.max_size {
        if d.size > max {
            return Err(TargetError::new(
                ErrorKind::TooLarge,
                format!(
                    "{} is {} bytes; the target accepts at most {max}",
                    d.name, d.size
                ),
            ));
        }
    }
    // A session journaled for exactly this content is resumed.
    let own_journal = c.journaled.is_none();
    let journal = match c.journaled {
        Some(j) => j,
        None => attempt_journal(catalog, stage, d),
    };
    let resume_session = journal.session_id.clone();
    if let Some(sid) = &resume_session {
        tracing::info!(name = %d.name, session = %sid, "resuming a journaled upload session");
    }
    c.progress.restart(d.size);
    if own_journal {
        if let Err(e) = catalog.journal_begin(&journal) {
            tracing::warn!(ino = d.ino, error = %e, "cannot journal upload");
        }
    }
    let req = UploadRequest {
        parent: d.parent.clone(),
        name: d.name.clone(),
        size: d.size,
        digests: d.digests.clone(),
        mtime_ms: c.mtime_ms,
        replaces: c.replaces,
        resume_session,
        source: Arc::new(CountingSource {
            inner: match c.early {
                Some(seal) => Box::new(GrowingSource::new(stage.clone(), d.size, seal)),
                None => Box::new(StageSource::new(stage.clone(), d.size)),
            },
            progress: c.progress.clone(),
        }),
        observer: Arc::new(JournalObserver::new(
            catalog.clone(),
            d.ino,
            c.progress.clone(),
        )),
    };
    let started = std::time::Instant::now();
    let result = match &c.expect {
        Some(expected) => target.upload_unless_changed(req, expected).await,
        None => target.upload(req).await,
    };
    // A failed attempt keeps its row: the next one resumes the session.
    if result.is_ok() && own_journal {
        if let Err(e) = catalog.journal_end(d.ino) {
            tracing::warn!(ino = d.ino, error = %e, "cannot close upload journal");
        }
    }
    match &result {
        Ok(r) => tracing::info!(
            name = %d.name, size = d.size, id = %r.id,
            ms = started.elapsed().as_millis() as u64, "uploaded"
        ),
        // The filesystem logs the failure as one line for people (file, target, cause).
        Err(e) => tracing::debug!(name = %d.name, size = d.size, error = %e, "upload failed"),
    }
    result
}
