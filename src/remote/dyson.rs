//! The Solar Network / DysonNetwork Drive client (`url` = the part before `/files`, e.g.
//! `https://HOST/api` or the gateway's `https://HOST/drive`).
//!
//! Upload: `POST /files/upload/create` with the lowercase hex MD5 of the whole file as
//! `hash`. The server dedupes globally on that hash: `file_exists: true` means nothing is
//! uploaded and the existing file is returned. Otherwise the file goes as chunks of at
//! most [`CHUNK_SIZE`] (multipart file part `chunk`, up to [`PARALLEL`] at once, each
//! retried on its own), then `POST /files/upload/complete/{task}`. The server refuses any
//! chunk request over 6 MiB including multipart overhead, so the client always asks for
//! 5 MiB chunks and refuses a task that wants larger ones. A `CHUNK_MISSING` answer (or a
//! task that vanished, 404) deletes the task on the server, so the upload starts again
//! from `create` — which also recovers a completion whose answer was lost: the retried
//! create finds the stored file by its hash.

use std::collections::HashSet;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::http::{excerpt, parse_json, status_error, Attempt, Exchange, HttpClient};
use super::session::{self, Flow, Layout, Open, Opened, Part, PartPlan, PartProtocol, PartSession};
use super::{
    Capabilities, DirRef, ErrorKind, RemoteFile, Result, Sealed, Target, TargetError, UploadRequest,
};
use crate::config::TargetConfig;

/// Chunk size asked for and never exceeded: the server's default, which keeps every
/// chunk request (chunk + multipart overhead) under its 6 MiB request limit.
pub const CHUNK_SIZE: u64 = 5 * 1024 * 1024;
/// Chunks in flight at once (the server accepts any order and parallelism).
const PARALLEL: usize = 4;
/// How many times an upload starts over from `create` after the task was lost.
const MAX_ROUNDS: u32 = 3;
/// Files asked for per page of `GET /files/me`.
const PAGE: u64 = 100;

/// `Debug` shows no token (the [`HttpClient`] keeps it as a `Secret`).
#[derive(Debug)]
pub struct DysonTarget {
    http: HttpClient,
    base: String,
    pool_id: Option<String>,
}

impl DysonTarget {
    pub fn new(http: HttpClient, cfg: &TargetConfig) -> anyhow::Result<Self> {
        Ok(Self {
            http,
            base: cfg.url.trim_end_matches('/').to_string(),
            pool_id: cfg.pool_id.clone(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Map a non-success answer, using the `ApiError` body when there is one.
    fn fail(&self, what: &str, status: StatusCode, body: &[u8]) -> TargetError {
        let err: Option<ApiError> = serde_json::from_slice(body).ok();
        let text = err
            .as_ref()
            .map(|e| format!("{} {}", e.code, e.message))
            .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
        match status {
            StatusCode::UNAUTHORIZED => TargetError::new(
                ErrorKind::Auth,
                format!(
                    "{what}: the token was refused ({status}: {}); renew it",
                    excerpt(&text)
                ),
            ),
            // FORBIDDEN covers permissions, pool policy (size) and quota alike.
            StatusCode::FORBIDDEN => {
                let lower = text.to_ascii_lowercase();
                let kind = if lower.contains("quota") {
                    ErrorKind::Quota
                } else if lower.contains("size") {
                    ErrorKind::TooLarge
                } else {
                    ErrorKind::Auth
                };
                TargetError::new(
                    kind,
                    format!("{what}: refused ({status}): {}", excerpt(&text)),
                )
            }
            StatusCode::BAD_REQUEST
                if err
                    .as_ref()
                    .is_some_and(|e| e.message.to_ascii_lowercase().contains("name")) =>
            {
                TargetError::new(
                    ErrorKind::InvalidName,
                    format!("{what}: name refused: {}", excerpt(&text)),
                )
            }
            _ => status_error(what, status, &text),
        }
    }

    async fn create(&self, req: &UploadRequest, md5: &str) -> Result<CreateAnswer> {
        let what = format!("creating the upload of {}", req.name);
        let mut body = json!({
            "hash": md5,
            "file_name": req.name,
            "file_size": req.size,
            "content_type": crate::mime::content_type_for(&req.name),
            "chunk_size": CHUNK_SIZE,
        });
        if let Some(p) = &self.pool_id {
            body["pool_id"] = json!(p);
        }
        let url = self.url("/files/upload/create");
        // An answer cut short is retried: creating a task twice is harmless.
        let r = self
            .http
            .call(&what, || self.http.auth(self.http.post(&url)).json(&body))
            .await?;
        if !r.status.is_success() {
            return Err(self.fail(&what, r.status, &r.body));
        }
        parse_json(&what, &r.body)
    }
}

/// One Dyson upload: the whole file's MD5 opens it.
struct DysonUpload<'a> {
    t: &'a DysonTarget,
    md5: String,
}

/// An open upload task.
struct Task<'a> {
    t: &'a DysonTarget,
    id: String,
    name: String,
    size: u64,
    md5: String,
}

#[async_trait]
impl<'a> PartProtocol for DysonUpload<'a> {
    type Session = Task<'a>;

    async fn open(&self, req: &UploadRequest, _round: u32) -> Result<Open<Task<'a>>> {
        let created = self.t.create(req, &self.md5).await?;
        if created.file_exists {
            let f = created.file.ok_or_else(|| {
                TargetError::protocol(format!(
                    "creating the upload of {}: file_exists without a file",
                    req.name
                ))
            })?;
            tracing::info!(name = %req.name, id = %f.id, "dyson: content already stored, nothing uploaded");
            // The server keeps one file per content; the caller maps its own name onto it,
            // so report the requested name (the remote one may belong to another path).
            let mut r = to_remote(f);
            r.name = req.name.clone();
            if r.size != req.size {
                return Err(TargetError::protocol(format!(
                    "{}: the server's deduplicated file has {} bytes, expected {}",
                    req.name, r.size, req.size
                )));
            }
            return Ok(Open::Landed(r));
        }
        let bad = |why: &str| {
            TargetError::protocol(format!("creating the upload of {}: {why}", req.name))
        };
        let id = created.task_id.ok_or_else(|| bad("no task_id"))?;
        let chunk_size = created.chunk_size.unwrap_or(CHUNK_SIZE);
        if chunk_size == 0 || chunk_size > CHUNK_SIZE {
            return Err(bad(&format!(
                "the server asks for {chunk_size}-byte chunks; over {CHUNK_SIZE} a chunk request exceeds its 6 MiB limit"
            )));
        }
        let count = req.size.div_ceil(chunk_size);
        if created.chunks_count.is_some_and(|c| c != count) {
            return Err(bad(&format!(
                "chunks_count {:?} does not match {count} chunks of {chunk_size} bytes",
                created.chunks_count
            )));
        }
        Ok(Open::Session(Opened {
            id: id.clone(),
            session: Task {
                t: self.t,
                id,
                name: req.name.clone(),
                size: req.size,
                md5: self.md5.clone(),
            },
            layout: Layout {
                label: "dyson",
                plan: PartPlan::fixed(chunk_size),
                flow: Flow::Parallel(PARALLEL),
                part_sha1: false,
                streamed: false,
                last_part_completes: false,
            },
            done: Vec::new(),
        }))
    }

    /// A lost task starts over from `create`, which also finds a completed file by its hash.
    fn restarts(&self) -> u32 {
        MAX_ROUNDS - 1
    }
}

#[async_trait]
impl PartSession for Task<'_> {
    type Receipt = ();
    type Output = RemoteFile;

    async fn put_part(&self, part: &Part, _attempt: u32) -> Attempt<()> {
        let what = format!("uploading chunk {} of {}", part.index, self.name);
        let url = self
            .t
            .url(&format!("/files/upload/chunk/{}/{}", self.id, part.index));
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        let chunk = reqwest::multipart::Part::stream_with_length(part.body().0, part.len)
            .file_name(format!("chunk_{}", part.index))
            .headers(headers);
        let form = reqwest::multipart::Form::new().part("chunk", chunk);
        let http = &self.t.http;
        let reply = match http
            .exchange(http.auth(http.post(&url)).multipart(form))
            .await
        {
            Exchange::Answer(r) => r,
            Exchange::Lost(reason) => return Attempt::again(reason),
            Exchange::Fatal(e) => return Attempt::Fail(e),
        };
        if let Some(busy) = reply.busy() {
            return busy;
        }
        match reply.status {
            s if s.is_success() => Attempt::Done(()),
            StatusCode::NOT_FOUND => Attempt::Fail(TargetError::new(
                ErrorKind::NotFound,
                format!("{what}: the upload task vanished"),
            )),
            s => Attempt::Fail(self.t.fail(&what, s, &reply.body)),
        }
    }

    async fn complete(&self, _receipts: Vec<(u64, ())>, _sealed: &Sealed) -> Result<RemoteFile> {
        let what = format!("completing the upload of {}", self.name);
        let url = self.t.url(&format!("/files/upload/complete/{}", self.id));
        // A completion answer cut short is sent again; the task is gone by then (404), so
        // the next round's create finds the stored file by its hash.
        let http = &self.t.http;
        let r = http.call(&what, || http.auth(http.post(&url))).await?;
        if r.status.is_success() {
            let f = to_remote(parse_json::<CloudFile>(&what, &r.body)?);
            if f.size != self.size {
                return Err(TargetError::protocol(format!(
                    "{what}: the server stored {} bytes, expected {}",
                    f.size, self.size
                )));
            }
            if f.md5.as_deref().is_some_and(|h| h != self.md5) {
                return Err(TargetError::protocol(format!(
                    "{what}: the stored file's MD5 differs from the data sent"
                )));
            }
            return Ok(f);
        }
        let err: Option<ApiError> = serde_json::from_slice(&r.body).ok();
        if err.as_ref().is_some_and(|e| e.code == "CHUNK_MISSING")
            || r.status == StatusCode::NOT_FOUND
        {
            // Either way the task is gone on the server; a lost completion answer also
            // ends here, and the next create finds the file by its hash.
            return Err(TargetError::new(
                ErrorKind::NotFound,
                format!("{what}: the server lost the upload task ({})", r.status),
            ));
        }
        Err(self.t.fail(&what, r.status, &r.body))
    }
}

fn to_remote(f: CloudFile) -> RemoteFile {
    let mtime_ms = f
        .updated_at
        .as_deref()
        .or(f.created_at.as_deref())
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    RemoteFile {
        id: f.id,
        name: f.name,
        size: f.size,
        mtime_ms,
        is_dir: false,
        sha1: None,
        md5: f
            .hash
            .filter(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(|h| h.to_ascii_lowercase()),
        url: None,
        extra: None,
    }
}

fn check_name(name: &str) -> Result<()> {
    super::check_plain_name(name, "Dyson Drive refuses this file name")
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct CreateAnswer {
    file_exists: bool,
    file: Option<CloudFile>,
    task_id: Option<String>,
    chunk_size: Option<u64>,
    chunks_count: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CloudFile {
    id: String,
    name: String,
    size: u64,
    hash: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

#[async_trait]
impl Target for DysonTarget {
    fn health(&self) -> Option<&std::sync::Arc<crate::remote::health::Health>> {
        Some(self.http.health())
    }

    fn check_name(&self, name: &str) -> Result<()> {
        check_name(name)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "dyson",
            part_size: CHUNK_SIZE,
            max_parallel_parts: PARALLEL,
            max_file_size: None,
            range_reads: true,
            folders: false,
            rename: true,
            delete: true,
            needs_md5: true,
            wants_sha1: false,
            case_insensitive_names: false,
            replaces_in_place: false,
            early_start: false,
            size_later: false,
        }
    }

    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile> {
        check_name(&req.name)?;
        let req = req.with_final_size().await?;
        // The MD5 opens the upload: a file still being written is complete first.
        let digests = req.final_digests().await?;
        let md5 = super::source::given_or_hashed::<md5::Md5>(
            digests.md5.as_deref(),
            &req.source,
            req.size,
        )
        .await?;
        if md5.len() != 32 || !md5.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TargetError::new(
                ErrorKind::LocalIo,
                format!(
                    "{}: the MD5 given for the upload is not 32 hex digits",
                    req.name
                ),
            ));
        }
        let proto = DysonUpload { t: self, md5 };
        session::drive(self.http.policy(), &proto, &req).await
    }

    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.read_unchecked(file, offset, len).await?;
        super::http::check_read(&read_what(file), file, offset, len, data)
    }

    async fn list(&self, dir: &DirRef) -> Result<Vec<RemoteFile>> {
        if dir.is_some() {
            return Err(TargetError::new(
                ErrorKind::NotFound,
                "Dyson Drive has no folders; only the account's files exist",
            ));
        }
        let what = "listing files";
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut offset = 0u64;
        loop {
            let mut url = format!("{}?offset={offset}&take={PAGE}", self.url("/files/me"));
            if let Some(p) = &self.pool_id {
                url.push_str(&format!("&pool={p}"));
            }
            let r = self
                .http
                .call(what, || self.http.auth(self.http.get(&url)))
                .await?;
            if !r.status.is_success() {
                return Err(self.fail(what, r.status, &r.body));
            }
            let page: Vec<CloudFile> = parse_json(what, &r.body)?;
            let total = r
                .headers
                .get("x-total")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let n = page.len() as u64;
            for f in page {
                if seen.insert(f.id.clone()) {
                    out.push(to_remote(f));
                }
            }
            offset += n;
            if n == 0 || total.is_some_and(|t| offset >= t) {
                return Ok(out);
            }
        }
    }

    async fn delete(&self, file: &RemoteFile) -> Result<()> {
        let what = format!("deleting {}", file.name);
        let url = self.url(&format!("/files/{}", file.id));
        let r = self
            .http
            .call(&what, || self.http.auth(self.http.delete(&url)))
            .await?;
        if r.status.is_success() {
            Ok(())
        } else {
            Err(self.fail(&what, r.status, &r.body))
        }
    }

    /// `stat`: `GET /files/{id}/info`; 404 is "gone" (a replaced file has a new id).
    async fn stat(&self, file: &RemoteFile) -> Result<Option<RemoteFile>> {
        let what = format!("metadata of {}", file.name);
        let url = self.url(&format!("/files/{}/info", file.id));
        let r = self
            .http
            .call(&what, || self.http.auth(self.http.get(&url)))
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(self.fail(&what, r.status, &r.body));
        }
        Ok(Some(to_remote(parse_json(&what, &r.body)?)))
    }

    async fn rename(&self, file: &RemoteFile, _p: &DirRef, new_name: &str) -> Result<RemoteFile> {
        check_name(new_name)?;
        let what = format!("renaming {} to {new_name}", file.name);
        let url = self.url(&format!("/files/{}/name", file.id));
        let body = json!(new_name);
        let r = self
            .http
            .call(&what, || self.http.auth(self.http.patch(&url)).json(&body))
            .await?;
        if !r.status.is_success() {
            return Err(self.fail(&what, r.status, &r.body));
        }
        Ok(to_remote(parse_json(&what, &r.body)?))
    }

    async fn mkdir(&self, _parent: &DirRef, _name: &str) -> Result<RemoteFile> {
        Err(TargetError::unsupported("mkdir"))
    }
}

impl DysonTarget {
    /// A ranged read as the server answered it ([`super::http::check_read`] checks it).
    async fn read_unchecked(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let what = read_what(file);
        let url = self.url(&format!("/files/{}", file.id));
        // Stored files answer with a redirect to storage; reqwest follows it.
        match self.http.get_range(&what, &url, offset, len, true).await? {
            Ok(data) => Ok(data),
            Err(r) => Err(self.fail(&what, r.status, &r.body)),
        }
    }
}

/// How reads of `file` are named in messages.
fn read_what(file: &RemoteFile) -> String {
    format!("reading {}", file.name)
}
