//! The Box client: uploads (direct multipart below 20,000,000 bytes, chunked upload
//! sessions above), ranged downloads, folder listings, rename/move, delete and mkdir
//! against the Box API (`url`, e.g. `https://api.box.com/2.0`) and upload host
//! (`upload_url`, e.g. `https://upload.box.com/api/2.0`).
//!
//! Sessions follow the vendor's rules: parts of exactly the server's `part_size` (never
//! assumed), each with `Content-Range` and a base64 SHA-1 `Digest`, up to
//! [`PARALLEL_PARTS`] at once, every part retried on its own. Box refuses to overwrite an
//! accepted part (`range_overlaps_existing_part`), so when a retried part meets that answer
//! — its first attempt landed but the answer was lost — the session's parts are listed and
//! the part is accepted if the server holds it with our SHA-1. Commit sends the parts as
//! the server returned them plus the whole-file SHA-1, and treats 202 + `Retry-After` as
//! "not yet". All calls go through the URLs in `session_endpoints`.
//!
//! A session is aborted (DELETE) when the upload fails for a reason retrying cannot fix;
//! when the server was unreachable it is left open so a later attempt can resume it
//! (`UploadRequest::resume_session`) by listing its parts and sending only the missing ones.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::{RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha1::Digest as _;

use super::http::{
    describe_reqwest, excerpt, parse_json, retry_after, status_error, Attempt, HttpClient,
};
use super::{
    Capabilities, DirRef, ErrorKind, PartSource, RemoteFile, Result, Target, TargetError,
    UploadRequest,
};
use crate::config::TargetConfig;

/// Files from this size go through upload sessions (Box refuses sessions below it).
pub const MIN_SESSION_SIZE: u64 = 20_000_000;
/// Parts sent at once (Box advises 3 to 5).
const PARALLEL_PARTS: usize = 4;
/// Box's usual part size, for planning; the real one comes from each session.
const TYPICAL_PART_SIZE: u64 = 8 * 1024 * 1024;
/// Largest page Box returns for folder items and session parts.
const PAGE_LIMIT: u32 = 1000;
/// Fields a listing must ask for: Box's default mini form has no size or times.
const LIST_FIELDS: &str = "name,size,modified_at,content_modified_at,sha1";
/// Box's public upload host, when the config names none.
const DEFAULT_UPLOAD_URL: &str = "https://upload.box.com/api/2.0";
/// Wait before retrying a 202 that carries no `Retry-After`.
const DEFAULT_NOT_READY_WAIT: Duration = Duration::from_secs(1);
/// Chunk size when streaming a direct upload body or hashing the source.
const READ_CHUNK: usize = 1024 * 1024;

/// `Debug` shows no token (the [`HttpClient`] keeps it as a `Secret`).
#[derive(Debug)]
pub struct BoxTarget {
    http: HttpClient,
    api: String,
    upload: String,
    root: String,
    max_file_size: Option<u64>,
}

impl BoxTarget {
    pub fn new(http: HttpClient, cfg: &TargetConfig) -> anyhow::Result<Self> {
        Ok(Self {
            http,
            api: cfg.url.trim_end_matches('/').to_string(),
            upload: cfg
                .upload_url
                .clone()
                .unwrap_or_else(|| DEFAULT_UPLOAD_URL.to_string())
                .trim_end_matches('/')
                .to_string(),
            root: cfg.folder_id.clone().unwrap_or_else(|| "0".to_string()),
            max_file_size: cfg.max_file_size,
        })
    }

    fn folder_id<'a>(&'a self, dir: &'a DirRef) -> &'a str {
        dir.as_deref().unwrap_or(&self.root)
    }
}

// ---------------------------------------------------------------------------------------
// Wire types

#[derive(Debug, Deserialize)]
struct Item {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    sha1: Option<String>,
    #[serde(default)]
    modified_at: Option<String>,
    #[serde(default)]
    content_modified_at: Option<String>,
}

impl Item {
    fn into_remote(self) -> RemoteFile {
        let mtime = self
            .content_modified_at
            .as_deref()
            .or(self.modified_at.as_deref())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
            .unwrap_or(0);
        RemoteFile {
            is_dir: self.kind == "folder",
            id: self.id,
            name: self.name.unwrap_or_default(),
            size: self.size.unwrap_or(0),
            mtime_ms: mtime,
            sha1: self.sha1.filter(|s| !s.is_empty()),
            md5: None,
            url: None,
            extra: None,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Files {
    entries: Vec<Item>,
}

#[derive(Debug, Deserialize)]
struct ItemsPage {
    entries: Vec<Item>,
    #[serde(default)]
    next_marker: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SessionEndpoints {
    upload_part: String,
    commit: String,
    abort: String,
    list_parts: String,
}

#[derive(Debug, Deserialize)]
struct UploadSession {
    id: String,
    part_size: u64,
    total_parts: u64,
    session_endpoints: SessionEndpoints,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
struct UploadPart {
    part_id: String,
    offset: u64,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha1: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UploadedPart {
    part: UploadPart,
}

#[derive(Debug, Deserialize)]
struct PartsPage {
    #[serde(default)]
    total_count: Option<u64>,
    entries: Vec<UploadPart>,
}

/// A Box ClientError, as far as we use it.
#[derive(Debug, Default, Deserialize)]
struct ClientError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    context_info: Option<Value>,
}

/// An answer that is not a success, kept for the caller to inspect.
struct Failure {
    status: StatusCode,
    error: ClientError,
    body: String,
}

impl Failure {
    fn from_body(status: StatusCode, body: &[u8]) -> Failure {
        Failure {
            status,
            error: serde_json::from_slice(body).unwrap_or_default(),
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }

    /// The id of the file a 409 `item_name_in_use` names (`conflicts` is an object for
    /// files, a list in some answers), or None when the conflict is a folder.
    fn conflicting_file(&self) -> Option<String> {
        if self.status != StatusCode::CONFLICT || self.error.code != "item_name_in_use" {
            return None;
        }
        let c = &self.error.context_info.as_ref()?["conflicts"];
        let items: Vec<&Value> = match c {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        items
            .into_iter()
            .find(|i| i["type"] == "file")
            .and_then(|i| i["id"].as_str().map(str::to_string))
    }

    fn into_error(self, what: &str) -> TargetError {
        let kind = match self.error.code.as_str() {
            "item_name_invalid" | "item_name_too_long" => Some(ErrorKind::InvalidName),
            "file_size_limit_exceeded" => Some(ErrorKind::TooLarge),
            "storage_limit_exceeded" => Some(ErrorKind::Quota),
            "item_name_in_use" => Some(ErrorKind::Conflict),
            "not_found" => Some(ErrorKind::NotFound),
            "unauthorized" => Some(ErrorKind::Auth),
            _ => None,
        };
        match kind {
            Some(kind) => TargetError::new(
                kind,
                format!(
                    "{what}: server answered {} {}: {}{}",
                    self.status,
                    self.error.code,
                    excerpt(&self.error.message),
                    if kind == ErrorKind::Auth {
                        " — the token was refused; renew it"
                    } else {
                        ""
                    }
                ),
            ),
            None => status_error(what, self.status, &self.body),
        }
    }
}

/// Answer of one request: success (status, headers, body) or a failure to inspect.
type Answer = std::result::Result<(StatusCode, HeaderMap, Bytes), Failure>;

fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

fn hex_to_b64(h: &str) -> Result<String> {
    hex::decode(h)
        .map(|raw| b64(&raw))
        .map_err(|_| TargetError::protocol(format!("not a hex SHA-1: {h}")))
}

fn rfc3339(ms: i64) -> Option<String> {
    (ms > 0)
        .then(|| chrono::DateTime::from_timestamp_millis(ms))
        .flatten()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// Read a part and its SHA-1 (hex) off the async threads.
async fn read_part(src: &Arc<dyn PartSource>, offset: u64, len: usize) -> Result<(Bytes, String)> {
    let data = super::read_source(src, offset, len).await?;
    let d = data.clone();
    let sha = tokio::task::spawn_blocking(move || hex::encode(sha1::Sha1::digest(&d)))
        .await
        .map_err(|e| TargetError::new(ErrorKind::LocalIo, format!("hashing: {e}")))?;
    Ok((data, sha))
}

impl BoxTarget {
    /// Send with the shared retry policy, read the body, split success from failure.
    async fn call<F>(&self, what: &str, build: F) -> Result<Answer>
    where
        F: Fn() -> RequestBuilder,
    {
        // An answer cut short is retried like a lost one (`send_bytes`).
        let (status, headers, body) = self
            .http
            .send_bytes(what, || self.http.auth(build()))
            .await?;
        if status.is_success() {
            Ok(Ok((status, headers, body)))
        } else {
            Ok(Err(Failure::from_body(status, &body)))
        }
    }

    /// [`call`](Self::call), with any failure turned into an error.
    async fn call_ok<F>(&self, what: &str, build: F) -> Result<(StatusCode, Bytes)>
    where
        F: Fn() -> RequestBuilder,
    {
        match self.call(what, build).await? {
            Ok((s, _, b)) => Ok((s, b)),
            Err(f) => Err(f.into_error(what)),
        }
    }

    fn item_to_file(what: &str, body: &[u8]) -> Result<RemoteFile> {
        let item: Item = parse_json(what, body)?;
        Ok(item.into_remote())
    }

    fn files_to_file(what: &str, body: &[u8]) -> Result<RemoteFile> {
        let files: Files = parse_json(what, body)?;
        files
            .entries
            .into_iter()
            .next()
            .map(Item::into_remote)
            .ok_or_else(|| TargetError::protocol(format!("{what}: the answer lists no file")))
    }

    // -----------------------------------------------------------------------------------
    // Direct uploads

    /// `POST {upload}/files/content` (or `/files/{id}/content` for a new version): the
    /// `attributes` part first, then `file`, streamed from the source.
    async fn direct_upload(
        &self,
        req: &UploadRequest,
        parent: &str,
        version_of: Option<&str>,
    ) -> Result<std::result::Result<RemoteFile, Failure>> {
        let what = format!("box upload of {}", req.name);
        let mut attributes = json!({ "name": req.name });
        if version_of.is_none() {
            attributes["parent"] = json!({ "id": parent });
        }
        if let Some(t) = rfc3339(req.mtime_ms) {
            attributes["content_modified_at"] = json!(t);
        }
        let attributes = attributes.to_string();
        let url = match version_of {
            Some(id) => format!("{}/files/{id}/content", self.upload),
            None => format!("{}/files/content", self.upload),
        };
        let size = req.size;
        let sha1 = req.final_digests().await?.sha1;
        let build = || {
            let src = req.source.clone();
            let stream = futures_util::stream::try_unfold(0u64, move |off| {
                let src = src.clone();
                async move {
                    if off >= size {
                        return Ok(None);
                    }
                    let want = (size - off).min(READ_CHUNK as u64) as usize;
                    let chunk = super::read_source(&src, off, want)
                        .await
                        .map_err(|e| std::io::Error::other(e.message))?;
                    Ok::<_, std::io::Error>(Some((chunk, off + want as u64)))
                }
            });
            let file = reqwest::multipart::Part::stream_with_length(
                reqwest::Body::wrap_stream(stream),
                size,
            )
            .file_name(req.name.clone())
            .mime_str("application/octet-stream")
            .unwrap_or_else(|_| {
                reqwest::multipart::Part::bytes(Vec::new()).file_name(req.name.clone())
            });
            let form = reqwest::multipart::Form::new()
                .part(
                    "attributes",
                    reqwest::multipart::Part::text(attributes.clone()),
                )
                .part("file", file);
            let mut rb = self.http.client.post(&url).multipart(form);
            // Box checks `Content-MD5` (which carries the hex SHA-1) when given.
            if let Some(sha) = &sha1 {
                rb = rb.header("content-md5", sha.as_str());
            }
            rb
        };
        match self.call(&what, build).await? {
            Ok((_, _, body)) => Ok(Ok(Self::files_to_file(&what, &body)?)),
            Err(f) => Ok(Err(f)),
        }
    }

    // -----------------------------------------------------------------------------------
    // Sessions

    async fn create_session(
        &self,
        req: &UploadRequest,
        parent: &str,
        version_of: Option<&str>,
    ) -> Result<std::result::Result<UploadSession, Failure>> {
        let what = format!("box upload session for {}", req.name);
        let (url, body) = match version_of {
            Some(id) => (
                format!("{}/files/{id}/upload_sessions", self.upload),
                json!({"file_size": req.size, "file_name": req.name}),
            ),
            None => (
                format!("{}/files/upload_sessions", self.upload),
                json!({"folder_id": parent, "file_size": req.size, "file_name": req.name}),
            ),
        };
        match self
            .call(&what, || self.http.client.post(&url).json(&body))
            .await?
        {
            Ok((_, _, b)) => Ok(Ok(self.check_session(&what, req.size, &b)?)),
            Err(f) => Ok(Err(f)),
        }
    }

    fn check_session(&self, what: &str, size: u64, body: &[u8]) -> Result<UploadSession> {
        let s: UploadSession = parse_json(what, body)?;
        if s.part_size == 0 || s.total_parts != size.div_ceil(s.part_size) {
            return Err(TargetError::protocol(format!(
                "{what}: the session's part size {} and {} parts do not fit {size} bytes",
                s.part_size, s.total_parts
            )));
        }
        Ok(s)
    }

    /// A journaled session, if the server still has it for a file of this size.
    async fn resume(&self, req: &UploadRequest, sid: &str) -> Result<Option<UploadSession>> {
        let what = format!("box resume of {}", req.name);
        let url = format!("{}/files/upload_sessions/{sid}", self.upload);
        match self.call(&what, || self.http.client.get(&url)).await? {
            Ok((_, _, b)) => match self.check_session(&what, req.size, &b) {
                Ok(s) => Ok(Some(s)),
                Err(e) => {
                    tracing::info!(session = sid, error = %e, "box: journaled session unusable");
                    Ok(None)
                }
            },
            Err(f) if f.status == StatusCode::NOT_FOUND => Ok(None),
            Err(f) => Err(f.into_error(&what)),
        }
    }

    /// Every part the server holds for a session (all pages).
    async fn list_parts(&self, what: &str, s: &UploadSession) -> Result<Vec<UploadPart>> {
        let mut out = Vec::new();
        loop {
            let url = s.session_endpoints.list_parts.clone();
            let offset = out.len();
            let (_, body) = self
                .call_ok(what, || {
                    self.http
                        .client
                        .get(&url)
                        .query(&[("offset", offset as u64), ("limit", PAGE_LIMIT as u64)])
                })
                .await?;
            let page: PartsPage = parse_json(what, &body)?;
            let n = page.entries.len();
            out.extend(page.entries);
            if n == 0 || page.total_count.is_some_and(|t| out.len() as u64 >= t) {
                return Ok(out);
            }
        }
    }

    /// Send one part, retried on its own; an overlap answer after a lost first answer is
    /// settled by listing the session's parts.
    async fn send_part(
        &self,
        req: &UploadRequest,
        s: &UploadSession,
        index: u64,
    ) -> Result<UploadPart> {
        let offset = index * s.part_size;
        let len = s.part_size.min(req.size - offset);
        let what = format!("box part {index} of {}", req.name);
        // A file still being written: its bytes first (holding no memory meanwhile).
        super::wait_ready(&req.source, offset, len).await?;
        // Held until the part's request is over: bounds the buffered parts of all uploads.
        let _mem = super::budget::reserve(len).await;
        let (data, sha) = read_part(&req.source, offset, len as usize).await?;
        let digest = format!("sha={}", hex_to_b64(&sha)?);
        let range = format!("bytes {}-{}/{}", offset, offset + len - 1, req.size);
        let url = &s.session_endpoints.upload_part;
        let part = self
            .http
            .retry(&what, || async {
                let rb = self
                    .http
                    .auth(self.http.client.put(url))
                    .header("digest", &digest)
                    .header(CONTENT_RANGE, &range)
                    .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                    .body(data.clone());
                let resp = match rb.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        return Attempt::Retry {
                            after: None,
                            reason: format!("connection error: {}", describe_reqwest(e)),
                        }
                    }
                };
                let status = resp.status();
                let after = retry_after(resp.headers());
                let body = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        return Attempt::Retry {
                            after: None,
                            reason: format!("answer cut short: {}", describe_reqwest(e)),
                        }
                    }
                };
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    return Attempt::Retry {
                        after,
                        reason: format!("server answered {status}"),
                    };
                }
                if status.is_success() {
                    return match parse_json::<UploadedPart>(&what, &body) {
                        Ok(p) => Attempt::Done(p.part),
                        Err(e) => Attempt::Fail(e),
                    };
                }
                let f = Failure::from_body(status, &body);
                if f.error.code != "range_overlaps_existing_part" {
                    return Attempt::Fail(f.into_error(&what));
                }
                // An earlier attempt may have landed with its answer lost.
                match self.list_parts(&what, s).await {
                    Ok(parts) => match parts.into_iter().find(|p| p.offset == offset) {
                        Some(p) if p.sha1.as_deref() == Some(sha.as_str()) && p.size == len => {
                            Attempt::Done(p)
                        }
                        Some(p) => Attempt::Fail(TargetError::protocol(format!(
                            "{what}: the server holds different data at offset {offset} (sha1 {:?})",
                            p.sha1
                        ))),
                        // Still being received from the earlier attempt: ask again later.
                        None => Attempt::Retry {
                            after: None,
                            reason: "part range busy on the server".to_string(),
                        },
                    },
                    Err(e) => Attempt::Fail(e),
                }
            })
            .await?;
        if part.offset != offset || part.size != len {
            return Err(TargetError::protocol(format!(
                "{what}: the server recorded {}+{} instead of {offset}+{len}",
                part.offset, part.size
            )));
        }
        if let Some(h) = &part.sha1 {
            if !h.eq_ignore_ascii_case(&sha) {
                return Err(TargetError::protocol(format!(
                    "{what}: the server's SHA-1 {h} differs from ours {sha}"
                )));
            }
        }
        req.observer.part_done(index, len);
        Ok(part)
    }

    /// Commit: `Digest` of the whole file, the parts as returned; 202 means "not yet".
    async fn commit(
        &self,
        req: &UploadRequest,
        s: &UploadSession,
        parts: &[UploadPart],
        sha1_hex: &str,
    ) -> Result<RemoteFile> {
        let what = format!("box commit of {}", req.name);
        let digest = format!("sha={}", hex_to_b64(sha1_hex)?);
        let mut body = json!({ "parts": parts });
        if let Some(t) = rfc3339(req.mtime_ms) {
            body["attributes"] = json!({ "content_modified_at": t });
        }
        let url = &s.session_endpoints.commit;
        self.http
            .retry(&what, || async {
                let rb = self
                    .http
                    .auth(self.http.client.post(url))
                    .header("digest", &digest)
                    .json(&body);
                let resp = match rb.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        return Attempt::Retry {
                            after: None,
                            reason: format!("connection error: {}", describe_reqwest(e)),
                        }
                    }
                };
                let status = resp.status();
                let after = retry_after(resp.headers());
                let bytes = match resp.bytes().await {
                    Ok(b) => b,
                    Err(e) => {
                        return Attempt::Retry {
                            after: None,
                            reason: format!("answer cut short: {}", describe_reqwest(e)),
                        }
                    }
                };
                if status == StatusCode::ACCEPTED {
                    return Attempt::Retry {
                        after: Some(after.unwrap_or(DEFAULT_NOT_READY_WAIT)),
                        reason: "the server is still processing the parts (202)".to_string(),
                    };
                }
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    return Attempt::Retry {
                        after,
                        reason: format!("server answered {status}"),
                    };
                }
                if status.is_success() {
                    return match Self::files_to_file(&what, &bytes) {
                        Ok(f) => Attempt::Done(f),
                        Err(e) => Attempt::Fail(e),
                    };
                }
                Attempt::Fail(Failure::from_body(status, &bytes).into_error(&what))
            })
            .await
    }

    async fn abort(&self, req: &UploadRequest, s: &UploadSession) {
        let what = format!("box abort of the session for {}", req.name);
        let url = &s.session_endpoints.abort;
        match self.call(&what, || self.http.client.delete(url)).await {
            Ok(Ok(_)) => tracing::info!(session = %s.id, name = %req.name, "box: session aborted"),
            Ok(Err(f)) => tracing::warn!(session = %s.id, status = %f.status, "box: abort refused"),
            Err(e) => tracing::warn!(session = %s.id, error = %e, "box: abort failed"),
        }
    }

    /// Parts already on the server that match our data, by index; a session holding
    /// different data is unusable (None).
    async fn usable_parts(
        &self,
        req: &UploadRequest,
        s: &UploadSession,
    ) -> Result<Option<Vec<(u64, UploadPart)>>> {
        let what = format!("box resume of {}", req.name);
        let mut out = Vec::new();
        for p in self.list_parts(&what, s).await? {
            let index = p.offset / s.part_size;
            let len = s.part_size.min(req.size.saturating_sub(p.offset));
            if p.offset % s.part_size != 0 || p.offset >= req.size || p.size != len {
                return Ok(None);
            }
            let (_, sha) = read_part(&req.source, p.offset, len as usize).await?;
            if p.sha1
                .as_deref()
                .is_some_and(|h| !h.eq_ignore_ascii_case(&sha))
            {
                return Ok(None);
            }
            out.push((index, p));
        }
        Ok(Some(out))
    }

    /// Upload through a session. `fresh` skips the journaled session: set when starting
    /// over because the session vanished (expired, or lost by the server) mid-upload.
    async fn session_upload(
        &self,
        req: &UploadRequest,
        parent: &str,
        version_of: Option<&str>,
        fresh: bool,
    ) -> Result<RemoteFile> {
        let what = format!("box upload of {}", req.name);
        // A journaled session first; a session that is gone or holds other data is dropped.
        let mut resumed = None;
        if let Some(sid) = req.resume_session.as_ref().filter(|_| !fresh) {
            if let Some(s) = self.resume(req, sid).await? {
                match self.usable_parts(req, &s).await? {
                    Some(parts) => resumed = Some((s, parts)),
                    None => self.abort(req, &s).await,
                }
            }
        }
        let (session, done) = match resumed {
            Some(r) => r,
            None => {
                let s = match self.create_session(req, parent, version_of).await? {
                    Ok(s) => s,
                    Err(f) => match (version_of, f.conflicting_file()) {
                        // The name is taken by a file: upload as its new version.
                        (None, Some(id)) => self
                            .create_session(req, parent, Some(&id))
                            .await?
                            .map_err(|f| f.into_error(&what))?,
                        _ => return Err(f.into_error(&what)),
                    },
                };
                (s, Vec::new())
            }
        };
        req.observer.session_started(&session.id);
        tracing::info!(session = %session.id, name = %req.name, part_size = session.part_size,
            parts = session.total_parts, resumed = done.len(), "box: session upload");

        let have: std::collections::HashSet<u64> = done.iter().map(|(i, _)| *i).collect();
        let missing: Vec<u64> = (0..session.total_parts)
            .filter(|i| !have.contains(i))
            .collect();
        let sent: Result<Vec<UploadPart>> = futures_util::stream::iter(missing)
            .map(|i| self.send_part(req, &session, i))
            .buffer_unordered(PARALLEL_PARTS)
            .try_collect()
            .await;
        let result = match sent {
            Ok(mut parts) => {
                parts.extend(done.into_iter().map(|(_, p)| p));
                parts.sort_by_key(|p| p.offset);
                // The commit makes the file visible: a file still being written waits for
                // its writer here, and its digest is only known then.
                match req.final_digests().await {
                    Ok(d) => {
                        let sha1 = match d.sha1 {
                            Some(h) => h,
                            None => super::hash_source::<sha1::Sha1>(&req.source, req.size).await?,
                        };
                        self.commit(req, &session, &parts, &sha1).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(f) => Ok(f),
            // The server could not be reached: leave the session for a later resume.
            Err(e) if e.kind == ErrorKind::Unavailable => Err(e),
            // Parts and commit only name the session, so a 404 means it vanished under us
            // (expired, or lost by the server): start over once with a new session.
            Err(e) if e.kind == ErrorKind::NotFound && !fresh => {
                tracing::warn!(session = %session.id, name = %req.name, error = %e,
                    "box: the upload session vanished; starting again with a new one");
                Box::pin(self.session_upload(req, parent, version_of, true)).await
            }
            Err(e) => {
                self.abort(req, &session).await;
                Err(e)
            }
        }
    }
}

#[async_trait]
impl Target for BoxTarget {
    fn check_name(&self, name: &str) -> Result<()> {
        // Box's rules: 1..=255 bytes, no `/` or `\`, nothing non-printable, no leading or
        // trailing spaces, not `.` or `..` (else 400 `item_name_invalid`).
        let why = if name.is_empty() {
            "the name is empty"
        } else if name.len() > 255 {
            "the name is longer than 255 bytes"
        } else if name.contains(['/', '\\']) {
            "the name contains / or \\"
        } else if name.chars().any(char::is_control) {
            "the name contains non-printable characters"
        } else if name == "." || name == ".." {
            "the names . and .. are reserved"
        } else if name.starts_with(' ') || name.ends_with(' ') {
            "the name has leading or trailing spaces"
        } else {
            return Ok(());
        };
        Err(TargetError::new(
            ErrorKind::InvalidName,
            format!("{name:?}: Box refuses this name: {why}"),
        ))
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "box",
            part_size: TYPICAL_PART_SIZE,
            max_parallel_parts: PARALLEL_PARTS,
            max_file_size: self.max_file_size,
            range_reads: true,
            folders: true,
            rename: true,
            delete: true,
            needs_md5: false,
            wants_sha1: true,
            case_insensitive_names: true,
            replaces_in_place: true,
            early_start: true,
        }
    }

    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile> {
        let what = format!("box upload of {}", req.name);
        if let Some(max) = self.max_file_size {
            if req.size > max {
                return Err(TargetError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "{what}: {} bytes is over the target's limit of {max}",
                        req.size
                    ),
                ));
            }
        }
        let parent = self.folder_id(&req.parent).to_string();
        let mut version_of = req.replaces.as_ref().map(|r| r.id.clone());
        if req.size < MIN_SESSION_SIZE {
            // One request makes the file visible: a file still being written is complete first.
            req.final_digests().await?;
            let mut answer = self
                .direct_upload(&req, &parent, version_of.as_deref())
                .await?;
            // The replaced file vanished: upload as a new file instead.
            if let (Some(_), Err(f)) = (&version_of, &answer) {
                if f.status == StatusCode::NOT_FOUND {
                    version_of = None;
                    answer = self.direct_upload(&req, &parent, None).await?;
                }
            }
            return match answer {
                Ok(f) => Ok(f),
                Err(f) => match (version_of, f.conflicting_file()) {
                    // The name is taken by a file: upload as its new version.
                    (None, Some(id)) => self
                        .direct_upload(&req, &parent, Some(&id))
                        .await?
                        .map_err(|f| f.into_error(&what)),
                    _ => Err(f.into_error(&what)),
                },
            };
        }
        match self
            .session_upload(&req, &parent, version_of.as_deref(), false)
            .await
        {
            Err(e) if e.kind == ErrorKind::NotFound && version_of.is_some() => {
                // The replaced file vanished before the session was created.
                self.session_upload(&req, &parent, None, false).await
            }
            r => r,
        }
    }

    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.read_unchecked(file, offset, len).await?;
        super::http::check_read(&read_what(file), file, offset, len, data)
    }

    async fn list(&self, dir: &DirRef) -> Result<Vec<RemoteFile>> {
        let id = self.folder_id(dir);
        let what = format!("box listing of folder {id}");
        let url = format!("{}/folders/{id}/items", self.api);
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let (_, body) = self
                .call_ok(&what, || {
                    let mut q = vec![
                        ("fields", LIST_FIELDS.to_string()),
                        ("limit", PAGE_LIMIT.to_string()),
                        ("usemarker", "true".to_string()),
                    ];
                    if let Some(m) = &marker {
                        q.push(("marker", m.clone()));
                    }
                    self.http.client.get(&url).query(&q)
                })
                .await?;
            let page: ItemsPage = parse_json(&what, &body)?;
            out.extend(
                page.entries
                    .into_iter()
                    .filter(|i| i.kind == "file" || i.kind == "folder")
                    .map(Item::into_remote),
            );
            match page.next_marker.filter(|m| !m.is_empty()) {
                Some(m) if Some(&m) != marker.as_ref() => marker = Some(m),
                _ => return Ok(out),
            }
        }
    }

    async fn delete(&self, file: &RemoteFile) -> Result<()> {
        let what = format!("box delete of {}", file.name);
        let url = if file.is_dir {
            format!("{}/folders/{}?recursive=false", self.api, file.id)
        } else {
            format!("{}/files/{}", self.api, file.id)
        };
        self.call_ok(&what, || self.http.client.delete(&url))
            .await
            .map(|_| ())
    }

    async fn rename(
        &self,
        file: &RemoteFile,
        new_parent: &DirRef,
        new_name: &str,
    ) -> Result<RemoteFile> {
        let what = format!("box rename of {} to {new_name}", file.name);
        let kind = if file.is_dir { "folders" } else { "files" };
        let url = format!("{}/{kind}/{}", self.api, file.id);
        let body = json!({"name": new_name, "parent": {"id": self.folder_id(new_parent)}});
        let (_, b) = self
            .call_ok(&what, || {
                self.http
                    .client
                    .put(&url)
                    .query(&[("fields", LIST_FIELDS)])
                    .json(&body)
            })
            .await?;
        Self::item_to_file(&what, &b)
    }

    async fn mkdir(&self, parent: &DirRef, name: &str) -> Result<RemoteFile> {
        let what = format!("box mkdir of {name}");
        let url = format!("{}/folders", self.api);
        let body = json!({"name": name, "parent": {"id": self.folder_id(parent)}});
        let (_, b) = self
            .call_ok(&what, || self.http.client.post(&url).json(&body))
            .await?;
        Self::item_to_file(&what, &b)
    }

    async fn check(&self) -> Result<()> {
        let what = format!("box check of folder {}", self.root);
        let url = format!("{}/folders/{}", self.api, self.root);
        self.call_ok(&what, || {
            self.http.client.get(&url).query(&[("fields", "id")])
        })
        .await
        .map(|_| ())
    }
}

impl BoxTarget {
    /// A ranged read as the server answered it ([`super::http::check_read`] checks it).
    async fn read_unchecked(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 || (file.size > 0 && offset >= file.size) {
            return Ok(Bytes::new());
        }
        let what = read_what(file);
        let url = format!("{}/files/{}/content", self.api, file.id);
        let range = format!("bytes={}-{}", offset, offset + len - 1);
        self.http
            .retry(&what, || async {
                // reqwest follows the 302 to the download link (Range is kept).
                let rb = self
                    .http
                    .auth(self.http.client.get(&url))
                    .header(RANGE, &range);
                let resp = match rb.send().await {
                    Ok(r) => r,
                    Err(e) => {
                        return Attempt::Retry {
                            after: None,
                            reason: format!("connection error: {}", describe_reqwest(e)),
                        }
                    }
                };
                let status = resp.status();
                let after = retry_after(resp.headers());
                let expected = resp
                    .headers()
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let start = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes "))
                    .and_then(|v| v.split('-').next())
                    .and_then(|v| v.parse::<u64>().ok());
                if status == StatusCode::ACCEPTED {
                    return Attempt::Retry {
                        after: Some(after.unwrap_or(DEFAULT_NOT_READY_WAIT)),
                        reason: "the file is not ready for download yet (202)".to_string(),
                    };
                }
                if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                    return Attempt::Retry {
                        after,
                        reason: format!("server answered {status}"),
                    };
                }
                if status == StatusCode::RANGE_NOT_SATISFIABLE {
                    // The range starts at or past the end of the file.
                    return Attempt::Done(Bytes::new());
                }
                let body = match resp.bytes().await {
                    Ok(b) if expected.is_none_or(|n| n == b.len() as u64) => b,
                    Ok(b) => {
                        return Attempt::Retry {
                            after: None,
                            reason: format!("body cut short: {} of {expected:?} bytes", b.len()),
                        }
                    }
                    Err(e) => {
                        return Attempt::Retry {
                            after: None,
                            reason: format!("body cut short: {}", describe_reqwest(e)),
                        }
                    }
                };
                match status {
                    StatusCode::PARTIAL_CONTENT if start == Some(offset) => {
                        Attempt::Done(body.slice(..body.len().min(len as usize)))
                    }
                    StatusCode::PARTIAL_CONTENT => Attempt::Fail(TargetError::protocol(format!(
                        "{what}: asked for offset {offset}, got a range starting at {start:?}"
                    ))),
                    // The whole file: cut our range out of it.
                    StatusCode::OK => {
                        let from = (offset as usize).min(body.len());
                        let to = (offset.saturating_add(len) as usize).min(body.len());
                        Attempt::Done(body.slice(from..to))
                    }
                    _ => Attempt::Fail(Failure::from_body(status, &body).into_error(&what)),
                }
            })
            .await
    }
}

/// How reads of `file` are named in messages.
fn read_what(file: &RemoteFile) -> String {
    format!("box read of {}", file.name)
}
