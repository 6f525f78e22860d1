//! Remote upload targets: the [`Target`] trait the filesystem and `uploadfs put` speak, and
//! one client per protocol (`box_`, `cloudreve`, `fluxer`, `virola`, `dyson`).
//!
//! A target client owns its whole wire protocol. The caller hands it a [`PartSource`] (the
//! staged file, readable at any offset) and the final size; the client cuts the data into
//! the protocol's parts, sends them with the parallelism the protocol allows, retries each
//! part on its own (never the whole file), and commits. This keeps protocol quirks — Box's
//! server-chosen part size, Cloudreve's in-order chunks, Fluxer's message step, Virola's
//! single multipart body, Dyson's MD5 dedupe — inside one file each.
//!
//! Directories are addressed by a [`DirRef`]: `None` is the target's configured root;
//! `Some(id)` is the remote id of a native folder (Box folder id, Cloudreve `cloudreve://`
//! uri). Flat targets (Fluxer, Virola, Dyson) have only the root; the filesystem keeps
//! their sub-directories in its catalog.

pub mod box_;
pub mod budget;
pub mod cloudreve;
pub mod dyson;
pub mod fluxer;
pub mod http;
pub mod null;
pub mod s3;
pub mod virola;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::TargetConfig;

/// The remote id of a native folder; `None` means the target's configured root.
pub type DirRef = Option<String>;

/// What a target can do, so the filesystem and uploader can plan without knowing the protocol.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// Protocol name as in the config `kind` (`box`, `cloudreve`, ...).
    pub kind: &'static str,
    /// Part size the uploader should expect (informational; the client decides).
    pub part_size: u64,
    /// How many parts the client sends at once.
    pub max_parallel_parts: usize,
    /// Largest file the target accepts, when known up front.
    pub max_file_size: Option<u64>,
    /// Ranged reads are supported (otherwise reads fetch from offset 0).
    pub range_reads: bool,
    /// Native folders exist remotely (mkdir/rmdir/move go to the server).
    pub folders: bool,
    /// Files can be renamed (and, with `folders`, moved) remotely.
    pub rename: bool,
    /// Remote delete exists.
    pub delete: bool,
    /// The upload needs the MD5 of the whole file before it starts (Dyson).
    pub needs_md5: bool,
    /// The upload can use the SHA-1 of the whole file (Box commit digest).
    pub wants_sha1: bool,
    /// Names compare case-insensitively (Box).
    pub case_insensitive_names: bool,
    /// Uploading over an existing name replaces that file in place (new version),
    /// so the caller must not delete the old one afterwards.
    pub replaces_in_place: bool,
    /// Parts can go up while the file is still being written (a size hint): the protocol
    /// needs no whole-file digest before its last step and sends more than one request.
    pub early_start: bool,
}

/// Whole-file digests, computed by the caller while writing when possible.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Digests {
    /// Lowercase hex SHA-1.
    pub sha1: Option<String>,
    /// Lowercase hex MD5.
    pub md5: Option<String>,
}

impl fmt::Debug for Digests {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Digests")
            .field("sha1", &self.sha1)
            .field("md5", &self.md5)
            .finish()
    }
}

/// A file or folder as the target knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RemoteFile {
    /// The target's id: Box file/folder id, Cloudreve uri, Fluxer attachment id,
    /// Virola attachment id, Dyson file id.
    pub id: String,
    pub name: String,
    pub size: u64,
    /// Modification time, milliseconds since the epoch (0 when unknown).
    pub mtime_ms: i64,
    pub is_dir: bool,
    /// Lowercase hex SHA-1 when the target reports one.
    pub sha1: Option<String>,
    /// Lowercase hex MD5 when the target reports one.
    pub md5: Option<String>,
    /// A download URL when the target gives one (Fluxer CDN url).
    pub url: Option<String>,
    /// Protocol-specific extra locator (Fluxer message id, Virola message id, ...).
    pub extra: Option<String>,
}

/// Where an upload's bytes come from: the stage file, or a local file for `uploadfs put`.
pub trait PartSource: Send + Sync {
    /// Read exactly `len` bytes at `offset` (short only at end of data).
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes>;
    /// Path of the whole data on disk, for protocols that stream one body (Virola).
    fn path(&self) -> Option<&std::path::Path> {
        None
    }
    /// Block until `len` bytes at `offset` can be read: at once for data that is complete,
    /// later for a file still being written (see [`Seal`]). Clients call it (through
    /// [`wait_ready`]) before they reserve memory or open a request for a part.
    fn wait_ready(&self, _offset: u64, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
    /// The seal of a file still being written when its upload started; `None` when the
    /// data is complete.
    fn seal(&self) -> Option<Arc<Seal>> {
        None
    }
}

/// The end of a file that was still being written when its upload started: the writer
/// announced the final size (`ftruncate`/`fallocate` before writing), so the upload began
/// at once and reads its parts as the data arrives ([`PartSource::wait_ready`]).
///
/// Whatever makes the file visible remotely (a commit, the last chunk, a completion call)
/// first waits here ([`UploadRequest::final_digests`]): the seal resolves with the
/// whole-file digests once the writer closed the file and what was read is what was
/// written, or is cancelled (the writer went back over bytes already sent, the size
/// changed, the file was removed) and the upload gives up before anything is visible.
pub struct Seal {
    state: tokio::sync::watch::Sender<SealState>,
}

#[derive(Clone)]
enum SealState {
    Open,
    Sealed(Digests),
    Cancelled,
}

impl Seal {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: tokio::sync::watch::channel(SealState::Open).0,
        })
    }

    /// The writer closed the file; these are its digests.
    pub fn seal(&self, digests: Digests) {
        self.state.send_if_modified(|s| {
            let open = matches!(s, SealState::Open);
            if open {
                *s = SealState::Sealed(digests);
            }
            open
        });
    }

    /// The upload must not complete (a no-op once sealed).
    pub fn cancel(&self) {
        self.state.send_if_modified(|s| {
            let open = matches!(s, SealState::Open);
            if open {
                *s = SealState::Cancelled;
            }
            open
        });
    }

    /// The writer closed the file and the upload may complete.
    pub fn is_sealed(&self) -> bool {
        matches!(*self.state.borrow(), SealState::Sealed(_))
    }

    /// Wait for the writer: the digests, or `ErrorKind::Cancelled`.
    pub async fn wait(&self) -> Result<Digests> {
        let mut rx = self.state.subscribe();
        let settled = rx
            .wait_for(|s| !matches!(s, SealState::Open))
            .await
            .map(|s| s.clone());
        match settled {
            Ok(SealState::Sealed(d)) => Ok(d),
            _ => Err(TargetError::new(
                ErrorKind::Cancelled,
                "the upload started early was given up: the file changed after its size was announced",
            )),
        }
    }
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match *self.state.borrow() {
            SealState::Open => "open",
            SealState::Sealed(_) => "sealed",
            SealState::Cancelled => "cancelled",
        };
        f.debug_struct("Seal").field("state", &state).finish()
    }
}

/// [`PartSource::wait_ready`] off the async threads.
pub async fn wait_ready(src: &Arc<dyn PartSource>, offset: u64, len: u64) -> Result<()> {
    if src.seal().is_none() {
        return Ok(());
    }
    let src = src.clone();
    tokio::task::spawn_blocking(move || src.wait_ready(offset, len))
        .await
        .map_err(|e| TargetError::new(ErrorKind::LocalIo, format!("reading the stage: {e}")))??;
    Ok(())
}

/// A [`PartSource`] over a file on disk.
pub struct FileSource {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl FileSource {
    pub fn open(path: &std::path::Path) -> std::io::Result<Self> {
        Ok(Self {
            file: std::fs::File::open(path)?,
            path: path.to_path_buf(),
        })
    }
}

impl PartSource for FileSource {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = self.file.read_at(&mut buf[done..], offset + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(Bytes::from(buf))
    }
    fn path(&self) -> Option<&std::path::Path> {
        Some(&self.path)
    }
}

/// Read exactly `len` bytes at `offset` of a source, off the async threads.
pub async fn read_source(src: &Arc<dyn PartSource>, offset: u64, len: usize) -> Result<Bytes> {
    let src = src.clone();
    let data = tokio::task::spawn_blocking(move || src.read_at(offset, len))
        .await
        .map_err(|e| TargetError::new(ErrorKind::LocalIo, format!("reading the stage: {e}")))??;
    if data.len() != len {
        return Err(TargetError::new(
            ErrorKind::LocalIo,
            format!(
                "the staged data ended early: {} of {len} bytes at offset {offset}",
                data.len()
            ),
        ));
    }
    Ok(data)
}

/// Bytes hashed per read when a whole source is hashed.
const HASH_READ: u64 = 8 << 20;

/// Lowercase hex digest (SHA-1, MD5, …) of the first `size` bytes of a source, computed
/// off the async threads (for callers that were not given the digest).
pub async fn hash_source<D>(src: &Arc<dyn PartSource>, size: u64) -> Result<String>
where
    D: sha1::Digest + Send + 'static,
{
    let src = src.clone();
    tokio::task::spawn_blocking(move || {
        let mut h = D::new();
        let mut off = 0u64;
        while off < size {
            let want = (size - off).min(HASH_READ) as usize;
            let b = src.read_at(off, want)?;
            if b.len() != want {
                return Err(TargetError::new(
                    ErrorKind::LocalIo,
                    format!("the staged data ended early at offset {off}"),
                ));
            }
            h.update(&b);
            off += want as u64;
        }
        Ok(hex::encode(h.finalize()))
    })
    .await
    .map_err(|e| TargetError::new(ErrorKind::LocalIo, format!("hashing: {e}")))?
}

/// The longest name any target takes, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// The name rules every target shares: not empty, at most 255 bytes, no `/`, `\` or NUL,
/// not `.` or `..`. `what` says who refuses, e.g. "Virola refuses this attachment name".
pub fn check_plain_name(name: &str, what: &str) -> Result<()> {
    let why = if name.is_empty() {
        "the name is empty"
    } else if name.len() > MAX_NAME_BYTES {
        "the name is longer than 255 bytes"
    } else if name.contains(['/', '\\', '\0']) {
        "the name contains '/', '\\' or NUL"
    } else if name == "." || name == ".." {
        "the name is '.' or '..'"
    } else {
        return Ok(());
    };
    Err(TargetError::new(
        ErrorKind::InvalidName,
        format!("{name:?}: {what}: {why}"),
    ))
}

/// Progress and resume hooks for one upload. All methods have no-op defaults.
pub trait UploadObserver: Send + Sync {
    /// A session was created remotely (id is protocol-specific), so it can be journaled.
    fn session_started(&self, _session_id: &str) {}
    /// A part was accepted by the server.
    fn part_done(&self, _index: u64, _bytes: u64) {}
}

/// Counts bytes sent; the default observer.
#[derive(Default)]
pub struct ByteCounter(pub AtomicU64);

impl UploadObserver for ByteCounter {
    fn part_done(&self, _index: u64, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::Relaxed);
    }
}

/// One upload: name, parent, final size and what is known about the data.
pub struct UploadRequest {
    pub parent: DirRef,
    pub name: String,
    pub size: u64,
    pub digests: Digests,
    /// Modification time to record remotely, ms since the epoch.
    pub mtime_ms: i64,
    /// The existing remote file this upload replaces (new version where the target has
    /// versions; otherwise the caller deletes it after success).
    pub replaces: Option<RemoteFile>,
    /// A session id journaled by an earlier attempt, to resume where the protocol allows.
    pub resume_session: Option<String>,
    pub source: Arc<dyn PartSource>,
    pub observer: Arc<dyn UploadObserver>,
}

impl UploadRequest {
    /// The whole-file digests: known up front, or, for a file still being written when
    /// the upload started, once the writer closed it. Every client calls this before the
    /// step that makes the file visible remotely (and before it needs the digests).
    pub async fn final_digests(&self) -> Result<Digests> {
        match self.source.seal() {
            Some(seal) => seal.wait().await,
            None => Ok(self.digests.clone()),
        }
    }
}

impl fmt::Debug for UploadRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadRequest")
            .field("parent", &self.parent)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("digests", &self.digests)
            .finish_non_exhaustive()
    }
}

/// Category of a target failure; the filesystem maps it to an errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 401/403: the token was refused.
    Auth,
    /// The file is larger than the target accepts.
    TooLarge,
    /// Out of quota / storage.
    Quota,
    /// The target rejects the name.
    InvalidName,
    /// The remote object does not exist.
    NotFound,
    /// A name conflict the client could not resolve.
    Conflict,
    /// The target has no such operation.
    Unsupported,
    /// Network or server trouble that outlasted the retries.
    Unavailable,
    /// The server answered something we cannot understand (HTML, garbage JSON, wrong sizes
    /// or digests).
    Protocol,
    /// Local I/O failed (reading the stage).
    LocalIo,
    /// An upload started before its file was complete was given up by the caller.
    Cancelled,
}

impl ErrorKind {
    /// The errno a filesystem call reports for this failure.
    pub fn errno(self) -> i32 {
        match self {
            ErrorKind::Auth => libc::EACCES,
            ErrorKind::TooLarge => libc::EFBIG,
            ErrorKind::Quota => libc::EDQUOT,
            ErrorKind::InvalidName => libc::EINVAL,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Conflict => libc::EEXIST,
            ErrorKind::Unsupported => libc::ENOTSUP,
            ErrorKind::Unavailable => libc::EIO,
            ErrorKind::Protocol => libc::EIO,
            ErrorKind::LocalIo => libc::EIO,
            ErrorKind::Cancelled => libc::ECANCELED,
        }
    }
}

/// A target failure: a category plus a message naming the cause (never a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TargetError {
    pub kind: ErrorKind,
    pub message: String,
}

impl TargetError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Protocol, message)
    }
    pub fn unsupported(what: &str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!("{what} is not supported by this target"),
        )
    }
}

impl From<std::io::Error> for TargetError {
    fn from(e: std::io::Error) -> Self {
        TargetError::new(ErrorKind::LocalIo, format!("local I/O: {e}"))
    }
}

pub type Result<T, E = TargetError> = std::result::Result<T, E>;

/// One remote upload target. Every method is a whole operation with retries inside.
#[async_trait]
pub trait Target: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;

    /// Upload a whole file (create, parts, commit) and return what landed.
    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile>;

    /// Read `len` bytes at `offset` of a committed file (short at EOF).
    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes>;

    /// Every entry of a directory (all pages).
    async fn list(&self, dir: &DirRef) -> Result<Vec<RemoteFile>>;

    /// Delete a file (or an empty folder where folders exist).
    async fn delete(&self, file: &RemoteFile) -> Result<()>;

    /// Rename and/or move. `new_parent` is only honoured by targets with folders.
    async fn rename(
        &self,
        file: &RemoteFile,
        new_parent: &DirRef,
        new_name: &str,
    ) -> Result<RemoteFile>;

    /// Create a folder (targets with native folders only).
    async fn mkdir(&self, parent: &DirRef, name: &str) -> Result<RemoteFile>;

    /// Refuse, before anything is staged or sent, a file or folder name the service
    /// would refuse (`ErrorKind::InvalidName`, naming the rule). The default accepts all.
    fn check_name(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    /// One cheap authenticated request, to check the token (`config check`).
    async fn check(&self) -> Result<()> {
        self.list(&None).await.map(|_| ())
    }
}

/// Build the client for a configured target.
pub fn build(name: &str, cfg: &TargetConfig) -> anyhow::Result<Arc<dyn Target>> {
    use crate::config::TargetKind;
    if cfg.kind == TargetKind::Null {
        return Ok(Arc::new(null::NullTarget::new()));
    }
    let http = http::HttpClient::new(name, cfg)?;
    Ok(match cfg.kind {
        TargetKind::Box => Arc::new(box_::BoxTarget::new(http, cfg)?),
        TargetKind::Cloudreve => Arc::new(cloudreve::CloudreveTarget::new(http, cfg)?),
        TargetKind::Fluxer => Arc::new(fluxer::FluxerTarget::new(http, cfg)?),
        TargetKind::Virola => Arc::new(virola::VirolaTarget::new(http, cfg)?),
        TargetKind::Dyson => Arc::new(dyson::DysonTarget::new(http, cfg)?),
        TargetKind::S3 => Arc::new(s3::S3Target::new(http, cfg)?),
        TargetKind::Null => Arc::new(null::NullTarget::new()),
    })
}
