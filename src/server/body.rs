//! Moving bytes in and out of the server without holding whole files in memory: request
//! bodies are streamed to disk while SHA-1 and MD5 are computed, and blobs are served as
//! streams with single-range support.

use std::path::Path;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::faults::Throttle;

/// What was received: length and lowercase hex digests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyInfo {
    pub len: u64,
    pub sha1: String,
    pub md5: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More than the allowed number of bytes arrived.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// The client went away or sent a broken body.
    #[error("body aborted: {0}")]
    Aborted(String),
    #[error("disk: {0}")]
    Io(#[from] std::io::Error),
}

/// Incremental SHA-1 + MD5 (or SHA-1 alone, where a part's MD5 is never used).
#[derive(Clone)]
pub struct Hashers {
    sha1: Sha1,
    md5: Option<Md5>,
    len: u64,
}

impl Default for Hashers {
    fn default() -> Self {
        Hashers {
            sha1: Sha1::default(),
            md5: Some(Md5::default()),
            len: 0,
        }
    }
}

impl Hashers {
    /// SHA-1 only: `BodyInfo::md5` comes back empty.
    pub fn sha1_only() -> Self {
        Hashers {
            md5: None,
            ..Default::default()
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        self.sha1.update(data);
        if let Some(m) = &mut self.md5 {
            m.update(data);
        }
        self.len += data.len() as u64;
    }
    pub fn finish(self) -> BodyInfo {
        BodyInfo {
            len: self.len,
            sha1: hex::encode(self.sha1.finalize()),
            md5: self
                .md5
                .map(|m| hex::encode(m.finalize()))
                .unwrap_or_default(),
        }
    }
}

/// A body arriving piece by piece into a new file, throttled and hashed on the way. What
/// to do about its size is the caller's (refuse at once, or read on and refuse at the end).
pub struct Intake {
    file: tokio::fs::File,
    hashers: Hashers,
    /// Bytes offered so far, written or not.
    seen: u64,
}

impl Intake {
    pub async fn create(path: &Path) -> std::io::Result<Intake> {
        Ok(Intake {
            file: tokio::fs::File::create(path).await?,
            hashers: Hashers::default(),
            seen: 0,
        })
    }

    /// Take one piece: wait for the bandwidth cap, hash it, write it.
    pub async fn write(&mut self, piece: &[u8], throttle: &Throttle) -> std::io::Result<()> {
        self.seen += piece.len() as u64;
        write_piece(&mut self.file, &mut self.hashers, piece, throttle).await
    }

    /// [`write`](Self::write) while the body stays within `limit` bytes in all; past it
    /// pieces are only counted, so a client still sending reads the refusal that follows
    /// instead of a reset.
    pub async fn write_within(
        &mut self,
        piece: &[u8],
        limit: u64,
        throttle: &Throttle,
    ) -> std::io::Result<()> {
        if self.seen + piece.len() as u64 > limit {
            self.seen += piece.len() as u64;
            return Ok(());
        }
        self.write(piece, throttle).await
    }

    /// Bytes offered so far (more than written once over a limit).
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Flush the file and return what was written.
    pub async fn finish(mut self) -> std::io::Result<BodyInfo> {
        self.file.flush().await?;
        Ok(self.hashers.finish())
    }
}

async fn write_piece(
    file: &mut tokio::fs::File,
    h: &mut Hashers,
    piece: &[u8],
    throttle: &Throttle,
) -> std::io::Result<()> {
    throttle.take(piece.len() as u64).await;
    h.update(piece);
    file.write_all(piece).await
}

/// Stream `body` into a new file at `path`, refusing more than `limit` bytes.
pub async fn body_to_file(
    body: Body,
    path: &Path,
    limit: u64,
    throttle: &Throttle,
) -> Result<BodyInfo, BodyError> {
    let mut file = tokio::fs::File::create(path).await?;
    let info = append_body(body, &mut file, limit, throttle).await;
    if info.is_err() {
        drop(file);
        let _ = tokio::fs::remove_file(path).await;
    }
    info
}

/// Stream `body` into an open file at its current position.
pub async fn append_body(
    body: Body,
    file: &mut tokio::fs::File,
    limit: u64,
    throttle: &Throttle,
) -> Result<BodyInfo, BodyError> {
    append_body_hashed(body, file, limit, throttle, Hashers::default()).await
}

/// [`append_body`] with the given hashers.
pub async fn append_body_hashed(
    body: Body,
    file: &mut tokio::fs::File,
    limit: u64,
    throttle: &Throttle,
    mut h: Hashers,
) -> Result<BodyInfo, BodyError> {
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Aborted(e.to_string()))?;
        if h.len + chunk.len() as u64 > limit {
            return Err(BodyError::TooLarge(limit));
        }
        write_piece(file, &mut h, &chunk, throttle).await?;
    }
    file.flush().await?;
    Ok(h.finish())
}

/// Most bytes read and thrown away to deliver an error answer: above the largest part any
/// emulated API takes (Box's 128 MiB), so a client still sending a whole part reads the
/// refusal rather than a broken pipe, while a runaway body is still cut off.
pub const DRAIN_LIMIT: u64 = 160 * 1024 * 1024;

/// Read and drop what is left of a refused request body, up to about `limit` bytes, so
/// that a client still sending sees the error answer instead of a broken pipe.
pub async fn drain(body: Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len() as u64;
        if seen > limit {
            break;
        }
    }
}

/// [`drain`] for a multipart body whose parser is already running.
pub async fn drain_multipart(mp: &mut axum::extract::Multipart, limit: u64) {
    let mut seen = 0u64;
    while let Ok(Some(mut field)) = mp.next_field().await {
        while let Ok(Some(chunk)) = field.chunk().await {
            seen += chunk.len() as u64;
            if seen > limit {
                return;
            }
        }
    }
}

/// Concatenate chunk files, in order, into a new file at `out`, hashing what is written.
pub async fn concat_files(
    parts: impl IntoIterator<Item = std::path::PathBuf>,
    out: &Path,
) -> std::io::Result<BodyInfo> {
    let mut o = tokio::fs::File::create(out).await?;
    let mut h = Hashers::default();
    let mut buf = vec![0u8; 1 << 20];
    for part in parts {
        let mut f = tokio::fs::File::open(part).await?;
        loop {
            let n = f.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            o.write_all(&buf[..n]).await?;
        }
    }
    o.flush().await?;
    Ok(h.finish())
}

/// Join chunk files, in order, into a new file at `out` and return its digests. A single
/// chunk is the whole file: it is moved instead of copied (a file created and one deleted
/// less per small upload), hashed unless its digests are `known` already.
pub async fn join_chunks(
    parts: Vec<std::path::PathBuf>,
    out: &Path,
    known: Option<BodyInfo>,
) -> std::io::Result<BodyInfo> {
    let joined = match parts.as_slice() {
        [one] => {
            async {
                let info = match known {
                    Some(info) => info,
                    None => hash_file(one).await?,
                };
                tokio::fs::rename(one, out).await?;
                Ok(info)
            }
            .await
        }
        _ => concat_files(parts, out).await,
    };
    if joined.is_err() {
        let _ = tokio::fs::remove_file(out).await;
    }
    joined
}

/// Hash a whole file on disk (used when parts are concatenated).
pub async fn hash_file(path: &Path) -> std::io::Result<BodyInfo> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut h = Hashers::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// How a protocol treats a `Range` header it cannot satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRange {
    /// Answer 416 with `Content-Range: bytes */size` (Box, Cloudreve, Dyson, Virola).
    Refuse,
    /// Ignore the header and send the whole body with 200 (Fluxer's media proxy).
    Ignore,
}

/// A `Range` header that is malformed or cannot be satisfied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadRangeHeader;

/// Parse a single `bytes=` range against `size`. `Ok(None)`: no header. `Err`: the header
/// is present but unsatisfiable or malformed.
pub fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, BadRangeHeader> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let v = v.to_str().map_err(|_| BadRangeHeader)?.trim();
    let spec = v.strip_prefix("bytes=").ok_or(BadRangeHeader)?;
    if spec.contains(',') {
        return Err(BadRangeHeader);
    }
    let (a, b) = spec.split_once('-').ok_or(BadRangeHeader)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", "") => return Err(BadRangeHeader),
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| BadRangeHeader)?;
            if n == 0 || size == 0 {
                return Err(BadRangeHeader);
            }
            (size.saturating_sub(n), size - 1)
        }
        (s, "") => {
            let s: u64 = s.parse().map_err(|_| BadRangeHeader)?;
            if size == 0 {
                return Err(BadRangeHeader);
            }
            (s, size - 1)
        }
        (s, e) => {
            let s: u64 = s.parse().map_err(|_| BadRangeHeader)?;
            let e: u64 = e.parse().map_err(|_| BadRangeHeader)?;
            if e < s || size == 0 {
                return Err(BadRangeHeader);
            }
            (s, e.min(size - 1))
        }
    };
    if start >= size {
        return Err(BadRangeHeader);
    }
    Ok(Some((start, end)))
}

/// What to send for a file download.
pub struct FileAnswer<'a> {
    pub path: &'a Path,
    pub size: u64,
    pub content_type: &'a str,
    /// Extra headers, added as given.
    pub extra: &'a [(header::HeaderName, String)],
    pub bad_range: BadRange,
    /// Fail the body halfway (an injected connection drop mid-download).
    pub drop_midway: bool,
}

/// Serve a blob with optional single-range support.
pub async fn serve_file(
    req_headers: &HeaderMap,
    answer: FileAnswer<'_>,
    throttle: std::sync::Arc<Throttle>,
) -> Response {
    let FileAnswer {
        path,
        size,
        content_type,
        extra,
        bad_range,
        drop_midway,
    } = answer;
    let range = match parse_range(req_headers, size) {
        Ok(r) => r,
        Err(BadRangeHeader) => match bad_range {
            BadRange::Ignore => None,
            BadRange::Refuse => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response()
            }
        },
    };
    let (status, start, len) = match range {
        Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        None => (StatusCode::OK, 0, size),
    };
    let mut file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "blob missing");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if start > 0 {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            tracing::error!(error = %e, "blob seek");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    }
    // With `drop_midway` the stream fails after half the bytes: the client sees the
    // connection break in the middle of the body.
    let cut = if drop_midway { len / 2 } else { u64::MAX };
    let stream = futures_util::stream::unfold(
        (file, len, 0u64, throttle),
        move |(mut file, len, sent, throttle)| async move {
            if sent >= len {
                return None;
            }
            if sent >= cut {
                return Some((
                    Err(std::io::Error::other("injected fault: connection dropped")),
                    (file, len, len, throttle),
                ));
            }
            let want = (len - sent)
                .min(256 * 1024)
                .min(cut.saturating_sub(sent).max(1)) as usize;
            let mut buf = vec![0u8; want];
            match file.read_exact(&mut buf).await {
                Ok(_) => {
                    throttle.add_served(want as u64);
                    throttle.take(want as u64).await;
                    Some((
                        Ok(bytes::Bytes::from(buf)),
                        (file, len, sent + want as u64, throttle),
                    ))
                }
                Err(e) => Some((Err(e), (file, len, len, throttle))),
            }
        },
    );
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if let Ok(v) = HeaderValue::from_str(content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {}-{}/{}", start, start + len - 1, size))
        {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k.clone(), v);
        }
    }
    resp
}

pub use crate::mime::content_type_for;

/// A file assembled from parts written at their own offsets, in any order, with its
/// whole-file digests computed along the way: a part is hashed as soon as it extends the
/// contiguous prefix (the "frontier"), reading it back while it is still in the page cache.
/// At commit almost nothing is left to hash, and the file is renamed into the blob store
/// instead of being copied.
pub struct AssembledFile {
    path: std::path::PathBuf,
    /// Accepted parts not yet hashed: offset → length.
    pending: std::sync::Mutex<std::collections::BTreeMap<u64, u64>>,
    frontier: tokio::sync::Mutex<Frontier>,
}

struct Frontier {
    next: u64,
    hashers: Hashers,
}

impl AssembledFile {
    /// Create the (sparse) file of the final size; `whole` hashes the whole file (e.g.
    /// [`Hashers::sha1_only`] where its MD5 is never used).
    pub fn create(
        path: std::path::PathBuf,
        size: u64,
        whole: Hashers,
    ) -> std::io::Result<AssembledFile> {
        let f = std::fs::File::create(&path)?;
        f.set_len(size)?;
        Ok(AssembledFile {
            path,
            pending: Default::default(),
            frontier: tokio::sync::Mutex::new(Frontier {
                next: 0,
                hashers: whole,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stream one part's body to `offset`, refusing more than `limit` bytes; returns the
    /// part's SHA-1 (its MD5 is not computed). The part counts only once
    /// [`accept`](Self::accept)ed.
    pub async fn write_part(
        &self,
        offset: u64,
        body: Body,
        limit: u64,
        throttle: &Throttle,
    ) -> Result<BodyInfo, BodyError> {
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .await?;
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        append_body_hashed(body, &mut f, limit, throttle, Hashers::sha1_only()).await
    }

    /// Record an accepted part and, in the background, hash whatever is now contiguous
    /// (unless that is already running; it will pick this part up). Errors there are left
    /// for [`finish`](Self::finish) to meet again.
    pub fn accept(self: &std::sync::Arc<Self>, offset: u64, len: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(offset, len);
        let this = self.clone();
        tokio::spawn(async move {
            if let Ok(mut fr) = this.frontier.try_lock() {
                let _ = this.advance(&mut fr).await;
            }
        });
    }

    async fn advance(&self, fr: &mut Frontier) -> std::io::Result<()> {
        loop {
            let next = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                pending.remove(&fr.next).map(|len| (fr.next, len))
            };
            let Some((offset, len)) = next else {
                return Ok(());
            };
            let mut f = tokio::fs::File::open(&self.path).await?;
            f.seek(std::io::SeekFrom::Start(offset)).await?;
            let mut left = len;
            let mut buf = vec![0u8; (1 << 20).min(len.max(1) as usize)];
            while left > 0 {
                let want = buf.len().min(left as usize);
                f.read_exact(&mut buf[..want]).await?;
                fr.hashers.update(&buf[..want]);
                left -= want as u64;
            }
            fr.next += len;
        }
    }

    /// Hash what is left; the whole-file digests when the parts cover exactly `size` bytes
    /// from offset 0, else `None`.
    pub async fn finish(&self, size: u64) -> std::io::Result<Option<BodyInfo>> {
        let mut fr = self.frontier.lock().await;
        self.advance(&mut fr).await?;
        if fr.next != size {
            return Ok(None);
        }
        Ok(Some(fr.hashers.clone().finish()))
    }
}
