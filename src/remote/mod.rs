//! Remote upload targets: the [`Target`] trait the filesystem and `uploadfs put` speak, and
//! one client per protocol (`box_`, `cloudreve`, `fluxer`, `virola`, `dyson`).
//!
//! The caller hands a client an [`UploadRequest`]: a [`PartSource`] (the staged file,
//! readable at any offset, perhaps still being written: its [`Seal`]) and the final size.
//! Where things live:
//! - `session.rs`: the part-session seam and its one driver — wait for the data, reserve
//!   part memory, read, send parts with the protocol's parallelism (each retried on its
//!   own), complete in part order, abort on failure or a cancelled seal. Box, Cloudreve,
//!   Fluxer and Dyson sessions (and S3's) are protocol steps plugged into it.
//! - `http.rs`: the one raw attempt every request goes through, and the retry policy.
//! - `source.rs`: the source, the seal, and the one reader (parts, hashes, streamed bodies).
//! - `names.rs`: which names each service refuses; `encoding.rs`: how any local name is
//!   encoded into one the service accepts and back ([`build_encoded`] applies it).
//! - one file (or folder) per protocol with only its protocol steps: sessions, the
//!   single-request small-file path, reads, listing, rename, delete, mkdir. Virola has one
//!   streamed request per file, so no session.
//!
//! Directories are addressed by a [`DirRef`]: `None` is the target's configured root;
//! `Some(id)` is the remote id of a native folder (Box folder id, Cloudreve `cloudreve://`
//! uri). Flat targets (Fluxer, Virola, Dyson) have only the root; the filesystem keeps
//! their sub-directories in its catalog.

pub mod box_;
pub mod budget;
pub mod cloudreve;
pub mod dyson;
pub mod encoding;
pub mod fluxer;
pub mod health;
pub mod http;
pub mod names;
pub mod null;
pub mod s3;
pub mod session;
pub mod source;
pub mod virola;

pub use names::{check_plain_name, MAX_NAME_BYTES};
pub use source::{hash_source, read_source, wait_ready, FileSource, PartSource, Seal, Sealed};

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
    /// Parts can go up before the final size is known (an open-ended [`Seal`]): the
    /// protocol needs no size before its last step. Other targets wait for the seal.
    pub size_later: bool,
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
    /// The final size; ignored while an open-ended [`Seal`] is open (the seal gives it).
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
        self.sealed().await.map(|s| s.digests)
    }

    /// Digests and final size, once the writer is done (at once for complete data).
    pub async fn sealed(&self) -> Result<Sealed> {
        match self.source.seal() {
            Some(seal) => {
                let mut s = seal.sealed().await?;
                if !seal.is_open_ended() {
                    s.size = Some(self.size);
                }
                if s.size.is_none() {
                    return Err(TargetError::new(
                        ErrorKind::LocalIo,
                        format!(
                            "{}: the writer closed the file without a final size",
                            self.name
                        ),
                    ));
                }
                Ok(s)
            }
            None => Ok(Sealed {
                digests: self.digests.clone(),
                size: Some(self.size),
            }),
        }
    }

    /// The final size, when it is known: always, but for an open-ended [`Seal`] that
    /// has not resolved yet (its `size` field means nothing).
    pub fn known_size(&self) -> Option<u64> {
        match self.source.seal() {
            Some(seal) if seal.is_open_ended() => seal.final_size(),
            _ => Some(self.size),
        }
    }

    /// For targets that need the size up front: an open-ended request waits for the
    /// writer and takes the final size; any other is returned as it is.
    pub async fn with_final_size(mut self) -> Result<Self> {
        if self.source.seal().is_some_and(|s| s.is_open_ended()) {
            let sealed = self.sealed().await?;
            self.size = sealed.size.unwrap_or(self.size);
            self.digests = sealed.digests;
        }
        Ok(self)
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
    /// A conditional upload ([`Target::upload_unless_changed`]) found the remote file
    /// changed since it was read: the precondition failed and nothing was written.
    Changed,
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

    /// The target's health, shared by all its requests (`None`: no network, `null`).
    fn health(&self) -> Option<&Arc<health::Health>> {
        None
    }

    /// The file's current metadata (size, digests, version) in one cheap request, or
    /// `None` when the service no longer has a file with this id. Used to revalidate a
    /// cached file at open and to check, right before a commit, that nobody replaced the
    /// file meanwhile. The default: `ErrorKind::Unsupported` (the caller then relies on
    /// listings).
    async fn stat(&self, _file: &RemoteFile) -> Result<Option<RemoteFile>> {
        Err(TargetError::unsupported("a metadata request for one file"))
    }

    /// Upload `req` as a new version of `expected` (`req.replaces`) only if the remote
    /// file is still that version, as one step where the protocol has a precondition
    /// (Box `If-Match`, S3 conditional writes); `ErrorKind::Changed` when it is not, with
    /// nothing written. The default uploads: the caller checked with [`Target::stat`]
    /// right before.
    async fn upload_unless_changed(
        &self,
        req: UploadRequest,
        _expected: &RemoteFile,
    ) -> Result<RemoteFile> {
        self.upload(req).await
    }
}

/// `a` and `b` are the same content version of one remote file: same id and size, and
/// the same digest where both report one; without digests the same protocol version
/// locator (`extra`: Cloudreve's entity) where both have one, else the same
/// modification time. Box's etag (its `extra`) also moves on a rename, so the digest
/// decides first.
pub fn same_version(a: &RemoteFile, b: &RemoteFile) -> bool {
    if a.id != b.id || a.size != b.size || a.is_dir != b.is_dir {
        return false;
    }
    match (&a.sha1, &b.sha1, &a.md5, &b.md5) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => match (&a.extra, &b.extra) {
            (Some(x), Some(y)) => x == y,
            _ => a.mtime_ms == 0 || b.mtime_ms == 0 || a.mtime_ms == b.mtime_ms,
        },
    }
}

/// Build the client for a configured target, with names encoded into what the service
/// accepts and decoded back ([`encoding::Encoded`]): what the mount and `put`/`get` speak.
pub fn build_encoded(name: &str, cfg: &TargetConfig) -> anyhow::Result<Arc<dyn Target>> {
    Ok(encoding::Encoded::wrap(build(name, cfg)?))
}

/// Build the raw client for a configured target: names go out as given, and the client
/// refuses those its service refuses.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(id: &str, size: u64) -> RemoteFile {
        RemoteFile {
            id: id.into(),
            name: "f".into(),
            size,
            mtime_ms: 1000,
            is_dir: false,
            sha1: None,
            md5: None,
            url: None,
            extra: None,
        }
    }

    #[test]
    fn versions_compare_by_digest_then_locator_then_time() {
        let a = file("1", 5);
        assert!(same_version(&a, &a.clone()));
        assert!(!same_version(&a, &file("2", 5)), "another id");
        assert!(!same_version(&a, &file("1", 6)), "another size");
        // A digest decides over everything else (Box's etag moves on a rename).
        let mut x = a.clone();
        x.sha1 = Some("aa".into());
        let mut y = x.clone();
        y.extra = Some("etag-2".into());
        y.mtime_ms = 2000;
        assert!(same_version(&x, &y));
        y.sha1 = Some("bb".into());
        assert!(!same_version(&x, &y));
        // Without digests: the version locator (Cloudreve's entity), else the time.
        let mut c = a.clone();
        c.extra = Some("entity-1".into());
        let mut d = c.clone();
        d.mtime_ms = 3000;
        assert!(same_version(&c, &d));
        d.extra = Some("entity-2".into());
        assert!(!same_version(&c, &d));
        let mut e = a.clone();
        e.mtime_ms = 4000;
        assert!(!same_version(&a, &e));
    }
}
