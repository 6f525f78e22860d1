//! Where an upload's bytes come from, and the one reader every client uses on them.
//!
//! A [`PartSource`] is the staged file (or a local file for `uploadfs put`), readable at
//! any offset. A file still being written when its upload started has a [`Seal`]: reads
//! wait for the data ([`PartSource::wait_ready`]) and the seal says when the writer is done
//! — with the whole-file digests, and for an open-ended upload (size unknown when it
//! began) the final size. Reads always run on the blocking pool: [`wait_ready`],
//! [`read_source`], [`read_upto`], [`hash_source`] and [`source_body`] (a request body
//! streamed from the source, for single-request uploads and streamed parts).

use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{Digests, ErrorKind, Result, TargetError};

/// Where an upload's bytes come from: the stage file, or a local file for `uploadfs put`.
pub trait PartSource: Send + Sync {
    /// Read exactly `len` bytes at `offset` (short only at end of data).
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes>;
    /// Path of the whole data on disk, when there is one.
    fn path(&self) -> Option<&std::path::Path> {
        None
    }
    /// Block until `len` bytes at `offset` can be read: at once for data that is complete,
    /// later for a file still being written (see [`Seal`]); for an open-ended one, also
    /// once the writer is done (the data may then end before `offset + len`). The part
    /// driver calls it (through [`wait_ready`]) before it reserves memory or opens a
    /// request for a part.
    fn wait_ready(&self, _offset: u64, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
    /// The seal of a file still being written when its upload started; `None` when the
    /// data is complete.
    fn seal(&self) -> Option<Arc<Seal>> {
        None
    }
}

/// The end of a file that was still being written when its upload started. Either the
/// writer announced the final size (`ftruncate`/`fallocate` before writing: [`Seal::new`],
/// the request's `size` is final), or the size is known only when the writer closes
/// ([`Seal::open_ended`], sealed with [`Seal::seal_sized`]).
///
/// Whatever makes the file visible remotely (a commit, the last chunk, a completion call)
/// first waits here ([`super::UploadRequest::final_digests`]): the seal resolves with the
/// whole-file digests once the writer closed the file and what was read is what was
/// written, or is cancelled (the writer went back over bytes already sent, the size
/// changed, the file was removed) and the upload gives up before anything is visible.
pub struct Seal {
    open_ended: bool,
    state: tokio::sync::watch::Sender<SealState>,
}

#[derive(Clone)]
enum SealState {
    Open,
    Sealed(Sealed),
    Cancelled,
}

/// What a resolved seal says about the finished file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub digests: Digests,
    /// The final size, when the writer gave it ([`Seal::seal_sized`]).
    pub size: Option<u64>,
}

impl Seal {
    /// A seal for a file whose final size was announced up front.
    pub fn new() -> Arc<Self> {
        Self::make(false)
    }

    /// A seal for a file whose size is known only when the writer closes it: seal it with
    /// [`seal_sized`](Self::seal_sized). Only targets whose capabilities say
    /// `size_later` start sending before then.
    pub fn open_ended() -> Arc<Self> {
        Self::make(true)
    }

    fn make(open_ended: bool) -> Arc<Self> {
        Arc::new(Self {
            open_ended,
            state: tokio::sync::watch::channel(SealState::Open).0,
        })
    }

    /// The size is not known before the seal resolves.
    pub fn is_open_ended(&self) -> bool {
        self.open_ended
    }

    /// The writer closed the file; these are its digests.
    pub fn seal(&self, digests: Digests) {
        self.settle(SealState::Sealed(Sealed {
            digests,
            size: None,
        }));
    }

    /// The writer closed the file at `size` bytes; these are its digests.
    pub fn seal_sized(&self, size: u64, digests: Digests) {
        self.settle(SealState::Sealed(Sealed {
            digests,
            size: Some(size),
        }));
    }

    /// The upload must not complete (a no-op once sealed).
    pub fn cancel(&self) {
        self.settle(SealState::Cancelled);
    }

    fn settle(&self, to: SealState) {
        self.state.send_if_modified(|s| {
            let open = matches!(s, SealState::Open);
            if open {
                *s = to;
            }
            open
        });
    }

    /// The writer closed the file and the upload may complete.
    pub fn is_sealed(&self) -> bool {
        matches!(*self.state.borrow(), SealState::Sealed(_))
    }

    /// The final size, once sealed with one.
    pub fn final_size(&self) -> Option<u64> {
        match &*self.state.borrow() {
            SealState::Sealed(s) => s.size,
            _ => None,
        }
    }

    /// The upload was given up.
    pub fn is_cancelled(&self) -> bool {
        matches!(*self.state.borrow(), SealState::Cancelled)
    }

    /// Wait for the writer: the digests, or `ErrorKind::Cancelled`.
    pub async fn wait(&self) -> Result<Digests> {
        self.sealed().await.map(|s| s.digests)
    }

    /// Wait for the writer: digests and final size, or `ErrorKind::Cancelled`.
    pub async fn sealed(&self) -> Result<Sealed> {
        let mut rx = self.state.subscribe();
        let settled = rx
            .wait_for(|s| !matches!(s, SealState::Open))
            .await
            .map(|s| s.clone());
        match settled {
            Ok(SealState::Sealed(s)) => Ok(s),
            _ => Err(cancelled()),
        }
    }

    /// Resolves when the upload is given up; never when the seal resolves with digests.
    pub async fn cancelled(&self) {
        let mut rx = self.state.subscribe();
        let given_up = rx
            .wait_for(|s| !matches!(s, SealState::Open))
            .await
            .is_ok_and(|s| matches!(*s, SealState::Cancelled));
        if !given_up {
            std::future::pending::<()>().await;
        }
    }
}

/// The error of an upload whose seal was cancelled.
pub fn cancelled() -> TargetError {
    TargetError::new(
        ErrorKind::Cancelled,
        "the upload started early was given up: the file changed after its size was announced",
    )
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match *self.state.borrow() {
            SealState::Open => "open",
            SealState::Sealed(_) => "sealed",
            SealState::Cancelled => "cancelled",
        };
        f.debug_struct("Seal")
            .field("state", &state)
            .field("open_ended", &self.open_ended)
            .finish()
    }
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

/// Run `f` on the blocking pool (source reads and hashing never block the async threads).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| TargetError::new(ErrorKind::LocalIo, format!("reading the stage: {e}")))?
}

/// [`PartSource::wait_ready`] off the async threads.
pub async fn wait_ready(src: &Arc<dyn PartSource>, offset: u64, len: u64) -> Result<()> {
    if src.seal().is_none() {
        return Ok(());
    }
    let src = src.clone();
    blocking(move || Ok(src.wait_ready(offset, len)?)).await
}

/// Up to `len` bytes at `offset` of a source (short only at the end of data), off the
/// async threads.
pub async fn read_upto(src: &Arc<dyn PartSource>, offset: u64, len: usize) -> Result<Bytes> {
    let src = src.clone();
    blocking(move || Ok(src.read_at(offset, len)?)).await
}

/// Read exactly `len` bytes at `offset` of a source, off the async threads.
pub async fn read_source(src: &Arc<dyn PartSource>, offset: u64, len: usize) -> Result<Bytes> {
    let data = read_upto(src, offset, len).await?;
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
    blocking(move || {
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
}

/// A whole-file digest as lowercase hex: the one `given` (the writer's, computed while
/// writing), else hashed from the first `size` bytes of the source.
pub async fn given_or_hashed<D>(
    given: Option<&str>,
    src: &Arc<dyn PartSource>,
    size: u64,
) -> Result<String>
where
    D: sha1::Digest + Send + 'static,
{
    match given {
        Some(h) => Ok(h.to_ascii_lowercase()),
        None => hash_source::<D>(src, size).await,
    }
}

/// Lowercase hex digest of bytes already read, off the async threads.
pub async fn hash_bytes<D>(data: &Bytes) -> Result<String>
where
    D: sha1::Digest + Send + 'static,
{
    let data = data.clone();
    blocking(move || Ok(hex::encode(D::digest(&data)))).await
}

/// Bytes read per piece when a body is streamed from a source.
const STREAM_PIECE: u64 = 1024 * 1024;

/// A complete body up to this size is read at once on the calling thread instead of
/// streamed through the blocking pool: a just-closed stage is in the page cache, so the
/// read takes microseconds, less than the two thread hops of a piece through the pool
/// (which cost a small file's upload more than its bytes do).
const INLINE_BODY_MAX: u64 = 256 * 1024;

/// The local read failure that cut a streamed body short, if any: kept so a failing stage
/// is reported as `ErrorKind::LocalIo` instead of being retried as a network error.
#[derive(Clone, Default)]
pub struct LocalFailure(Arc<Mutex<Option<String>>>);

impl LocalFailure {
    fn set(&self, cause: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause);
    }

    /// The failure, as an error naming `what`.
    pub fn take(&self, what: &str) -> Option<TargetError> {
        let cause = self.0.lock().unwrap_or_else(|p| p.into_inner()).take()?;
        Some(TargetError::new(
            ErrorKind::LocalIo,
            format!("{what}: {cause}"),
        ))
    }
}

/// Stream `len` bytes at `offset` of `src` as a request body (build one per attempt).
pub fn source_body(
    src: Arc<dyn PartSource>,
    offset: u64,
    len: u64,
) -> (reqwest::Body, LocalFailure) {
    let failure = LocalFailure::default();
    if len <= INLINE_BODY_MAX && src.seal().is_none() {
        match src.read_at(offset, len as usize) {
            Ok(b) if b.len() as u64 == len => return (reqwest::Body::from(b), failure),
            // Short or failed: the stream below meets it again and reports it.
            _ => {}
        }
    }
    let seen = failure.clone();
    let stream = futures_util::stream::unfold((src, offset, len), move |(src, pos, left)| {
        let failure = seen.clone();
        async move {
            if left == 0 {
                return None;
            }
            let want = left.min(STREAM_PIECE) as usize;
            let msg = match read_upto(&src, pos, want).await {
                Ok(b) if b.len() == want => {
                    return Some((Ok(b), (src, pos + want as u64, left - want as u64)))
                }
                Ok(_) => "the staged data is shorter than its size".to_string(),
                Err(e) => format!("reading the staged data: {}", e.message),
            };
            failure.set(msg.clone());
            Some((Err(std::io::Error::other(msg)), (src, pos, 0)))
        }
    });
    (reqwest::Body::wrap_stream(stream), failure)
}

/// A `multipart/form-data` file part streamed from the first `size` bytes of a source.
pub fn file_part(
    src: &Arc<dyn PartSource>,
    size: u64,
    file_name: &str,
) -> Result<(reqwest::multipart::Part, LocalFailure)> {
    let (body, failure) = source_body(src.clone(), 0, size);
    let part = reqwest::multipart::Part::stream_with_length(body, size)
        .file_name(file_name.to_string())
        .mime_str("application/octet-stream")
        .map_err(|e| TargetError::protocol(format!("{file_name}: building the form: {e}")))?;
    Ok((part, failure))
}
