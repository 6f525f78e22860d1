//! The Fluxer client: files are attachments of messages in one channel.
//!
//! Upload: a file of at most 8 MiB (including an empty one, which the chunked API refuses)
//! goes inline as `files[0]` of a `multipart/form-data` message post, streamed from the
//! source. A larger one uses a chunked upload: create a session, PUT chunks of exactly the
//! returned `chunk_size` (up to [`PARALLEL_CHUNKS`] at once, each retried on its own, ETags
//! kept verbatim), complete with every `{chunk_index, etag}`, then post a message whose
//! attachment names the `uploaded_filename`. A session that expires mid-upload
//! (`404 CHUNKED_UPLOAD_NOT_FOUND`) is restarted once.
//!
//! Posting a message is not idempotent, so an attempt whose answer was lost (connection
//! dropped, 5xx other than 503) is followed by a look at the messages posted since the
//! upload began: an attachment with our name and size, in a message without content, is
//! taken as ours instead of posting again. A lost `complete` answer followed by `404` on
//! the retry likewise means the first attempt completed.
//!
//! Reads GET the attachment's CDN `url` (no token: the CDN is another host) with `Range`;
//! the CDN ignores ranges it does not like and answers 200 with the whole body, which is
//! then sliced. Listing pages through all messages (newest first, `before` = oldest id
//! seen). Delete removes the attachment, then the message if nothing is left in it.
//! Rate limits: a 429's JSON `retry_after` (fractional seconds) is honoured.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::CONTENT_TYPE;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::http::{
    excerpt, parse_json, retry_after, status_error, Attempt, Exchange, HttpClient, Reply, Request,
};
use super::session::{self, Flow, Layout, Open, Opened, Part, PartPlan, PartProtocol, PartSession};
use super::{
    Capabilities, DirRef, ErrorKind, RemoteFile, Result, Sealed, Target, TargetError, UploadRequest,
};
use crate::config::TargetConfig;

/// Files up to this size go inline in the message post (the official client's threshold
/// for chunking is `size > 8 MiB`).
const INLINE_MAX: u64 = 8 * 1024 * 1024;
/// The chunk size the service announces (informational; the create answer decides).
const PART_SIZE: u64 = 8 * 1024 * 1024;
/// Chunks in flight at once (the official client's `MAX_CONCURRENT_CHUNKS`).
const PARALLEL_CHUNKS: usize = 4;
/// Largest `limit` of a message listing.
const PAGE: usize = 100;

/// `Debug` shows no token (the [`HttpClient`] keeps it as a `Secret`).
#[derive(Debug)]
pub struct FluxerTarget {
    http: HttpClient,
    /// API base, e.g. `https://api.fluxer.app/v1`.
    base: String,
    channel: String,
    max_file_size: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct CreateResp {
    upload_id: String,
    upload_filename: String,
    chunk_size: u64,
    chunk_count: u64,
}

#[derive(Debug, Deserialize)]
struct ChunkResp {
    etag: String,
}

#[derive(Debug, Deserialize)]
struct CompleteResp {
    upload_filename: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Message {
    id: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
}

#[derive(Debug, Clone, Deserialize)]
struct Attachment {
    id: String,
    filename: String,
    size: u64,
    #[serde(default)]
    url: Option<String>,
}

/// Fluxer's error body `{code, message, errors?, retry_after?}`.
#[derive(Debug, Default, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    retry_after: Option<f64>,
    #[serde(default)]
    errors: Vec<FieldError>,
}

#[derive(Debug, Default, Deserialize)]
struct FieldError {
    #[serde(default)]
    path: String,
    #[serde(default)]
    code: String,
}

fn api_error_of(body: &[u8]) -> ApiError {
    serde_json::from_slice(body).unwrap_or_default()
}

/// Map a non-success answer to an error naming the cause.
fn api_error(what: &str, status: StatusCode, body: &[u8]) -> TargetError {
    let e = api_error_of(body);
    let code = e.code.as_deref().unwrap_or("");
    let text = e
        .message
        .clone()
        .unwrap_or_else(|| excerpt(&String::from_utf8_lossy(body)));
    let kind = match code {
        "FILE_SIZE_TOO_LARGE" => Some(ErrorKind::TooLarge),
        "INVALID_FORM_BODY"
            if e.errors
                .iter()
                .any(|f| f.path.contains("filename") || f.code == "FILENAME_INVALID") =>
        {
            Some(ErrorKind::InvalidName)
        }
        "CHUNKED_UPLOAD_NOT_FOUND" | "UNKNOWN_MESSAGE" | "UNKNOWN_ATTACHMENT" => {
            Some(ErrorKind::NotFound)
        }
        _ => None,
    };
    match kind {
        Some(kind) => TargetError::new(
            kind,
            format!(
                "{what}: server answered {status} {code}: {}",
                excerpt(&text)
            ),
        ),
        None => {
            let detail = if code.is_empty() {
                text
            } else {
                format!("{code}: {text}")
            };
            status_error(what, status, &detail)
        }
    }
}

/// How to wait after a retryable answer: a 429's JSON `retry_after`, else `Retry-After`.
fn wait_for(
    status: StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> Option<Duration> {
    if status == StatusCode::TOO_MANY_REQUESTS {
        if let Some(s) = api_error_of(body).retry_after {
            if s.is_finite() && s >= 0.0 {
                return Some(Duration::from_secs_f64(s));
            }
        }
    }
    retry_after(headers)
}

/// 429 and 5xx mean "try later"; a 5xx other than 503 may come after the work was done.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// A retryable answer that does not say the request was left undone.
fn maybe_done(status: StatusCode) -> bool {
    status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE
}

/// One attempt's outcome, Fluxer's way: 429 waits as its JSON says. `ambiguous` is set
/// when the request may have been processed without our seeing the answer.
async fn attempt(http: &HttpClient, r: Request, ambiguous: Option<&AtomicBool>) -> Attempt<Reply> {
    let flag = |on: bool| {
        if let (true, Some(a)) = (on, ambiguous) {
            a.store(true, Ordering::SeqCst);
        }
    };
    match http.exchange(http.auth(r)).await {
        Exchange::Lost(reason) => {
            flag(true);
            Attempt::again(reason)
        }
        Exchange::Fatal(e) => Attempt::Fail(e),
        Exchange::Answer(reply) if retryable(reply.status) => {
            flag(maybe_done(reply.status));
            Attempt::Retry {
                after: wait_for(reply.status, &reply.headers, &reply.body),
                reason: format!("server answered {}", reply.status),
            }
        }
        Exchange::Answer(reply) => Attempt::Done(reply),
    }
}

impl FluxerTarget {
    pub fn new(http: HttpClient, cfg: &TargetConfig) -> anyhow::Result<Self> {
        let channel = cfg
            .channel_id
            .clone()
            .ok_or_else(|| anyhow::anyhow!("a fluxer target needs `channel_id`"))?;
        Ok(Self {
            http,
            base: cfg.url.trim_end_matches('/').to_string(),
            channel,
            max_file_size: cfg.max_file_size,
        })
    }

    fn channel_url(&self, rest: &str) -> String {
        format!("{}/channels/{}{rest}", self.base, self.channel)
    }

    /// Send with retries of 429/5xx/connection errors; any other answer is returned.
    async fn call<F>(&self, what: &str, build: F) -> Result<(StatusCode, Bytes)>
    where
        F: Fn() -> Request,
    {
        let r = self
            .http
            .retry(what, || attempt(&self.http, build(), None))
            .await?;
        Ok((r.status, r.body))
    }

    /// GET one page of messages (newest first).
    async fn messages_page(&self, what: &str, query: &[(&str, String)]) -> Result<Vec<Message>> {
        let url = self.channel_url("/messages");
        let (status, body) = self.call(what, || self.http.get(&url).query(query)).await?;
        if status != StatusCode::OK {
            return Err(api_error(what, status, &body));
        }
        parse_json(what, &body)
    }

    /// Id of the newest message in the channel, if any.
    async fn newest_message_id(&self, what: &str) -> Result<Option<u64>> {
        let page = self
            .messages_page(what, &[("limit", "1".to_string())])
            .await?;
        Ok(page.iter().filter_map(|m| m.id.parse::<u64>().ok()).max())
    }

    /// Find an attachment named `name` of `size` bytes in a content-less message posted
    /// after `baseline` (the newest message before our first post attempt).
    async fn find_posted(
        &self,
        what: &str,
        baseline: Option<u64>,
        name: &str,
        size: u64,
    ) -> Result<Option<(Message, Attachment)>> {
        let mut after = baseline.unwrap_or(0);
        let mut hit = None;
        loop {
            let page = self
                .messages_page(
                    what,
                    &[("limit", PAGE.to_string()), ("after", after.to_string())],
                )
                .await?;
            for m in &page {
                if m.content.as_deref().unwrap_or("").is_empty() {
                    if let Some(a) = m
                        .attachments
                        .iter()
                        .find(|a| a.filename == name && a.size == size)
                    {
                        let id = m.id.parse::<u64>().unwrap_or(0);
                        if hit.as_ref().is_none_or(|(hid, _, _)| id > *hid) {
                            hit = Some((id, m.clone(), a.clone()));
                        }
                    }
                }
            }
            let newest = page.iter().filter_map(|m| m.id.parse::<u64>().ok()).max();
            match newest {
                Some(n) if page.len() >= PAGE && n > after => after = n,
                _ => break,
            }
        }
        Ok(hit.map(|(_, m, a)| (m, a)))
    }

    /// Post the message carrying the file; `form` builds the multipart body for each
    /// attempt. A lost answer is resolved by looking for the message before posting again.
    async fn post_message<F>(
        &self,
        req: &UploadRequest,
        baseline: Option<u64>,
        form: F,
    ) -> Result<(Message, Attachment)>
    where
        F: Fn() -> Result<reqwest::multipart::Form>,
    {
        let what = format!("fluxer: posting the message for {}", req.name);
        let url = self.channel_url("/messages");
        let ambiguous = AtomicBool::new(false);
        self.http
            .retry(&what, || async {
                if ambiguous.swap(false, Ordering::SeqCst) {
                    match self.find_posted(&what, baseline, &req.name, req.size).await {
                        Ok(Some(hit)) => {
                            tracing::info!(name = %req.name, "fluxer: the lost post had landed");
                            return Attempt::Done(hit);
                        }
                        Ok(None) => {}
                        Err(e) => return Attempt::Fail(e),
                    }
                }
                let form = match form() {
                    Ok(f) => f,
                    Err(e) => return Attempt::Fail(e),
                };
                let r = self.http.post(&url).multipart(form);
                let reply = match attempt(&self.http, r, Some(&ambiguous)).await {
                    Attempt::Done(reply) => reply,
                    Attempt::Retry { after, reason } => return Attempt::Retry { after, reason },
                    Attempt::Fail(e) => return Attempt::Fail(e),
                };
                if reply.status != StatusCode::OK {
                    return Attempt::Fail(api_error(&what, reply.status, &reply.body));
                }
                let m: Message = match parse_json(&what, &reply.body) {
                    Ok(m) => m,
                    Err(e) => return Attempt::Fail(e),
                };
                match m.attachments.first().cloned() {
                    Some(a) => Attempt::Done((m, a)),
                    None => Attempt::Fail(TargetError::protocol(format!(
                        "{what}: the posted message has no attachment"
                    ))),
                }
            })
            .await
    }

    /// Small file: one message with the bytes inline as `files[0]`.
    async fn upload_inline(
        &self,
        req: &UploadRequest,
        baseline: Option<u64>,
    ) -> Result<(Message, Attachment)> {
        let payload = json!({ "attachments": [{ "id": 0, "filename": req.name }] }).to_string();
        // A local read failure inside the streamed body is not a network error to retry.
        let failure = std::sync::Mutex::new(None);
        let r = self
            .post_message(req, baseline, || {
                let (part, f) = super::source::file_part(&req.source, req.size, &req.name)?;
                *failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
                Ok(reqwest::multipart::Form::new()
                    .text("payload_json", payload.clone())
                    .part("files[0]", part))
            })
            .await;
        let local = failure.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(e) = local.and_then(|f| f.take(&format!("fluxer: posting {}", req.name))) {
            return Err(e);
        }
        let r = r?;
        req.observer.part_done(0, req.size);
        Ok(r)
    }

    /// Large file: chunked upload ([`session::drive`]), then a message naming the
    /// uploaded file.
    async fn upload_chunked(
        &self,
        req: &UploadRequest,
        baseline: Option<u64>,
    ) -> Result<(Message, Attachment)> {
        let upload_filename = session::drive(self.http.policy(), &Chunked { t: self }, req).await?;
        let payload = json!({
            "attachments": [{ "id": 0, "filename": req.name, "uploaded_filename": upload_filename }]
        })
        .to_string();
        self.post_message(req, baseline, || {
            Ok(reqwest::multipart::Form::new().text("payload_json", payload.clone()))
        })
        .await
    }

    async fn get_message(&self, what: &str, mid: &str) -> Result<Option<Message>> {
        let url = self.channel_url(&format!("/messages/{mid}"));
        let (status, body) = self.call(what, || self.http.get(&url)).await?;
        match status {
            StatusCode::OK => parse_json(what, &body).map(Some),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(api_error(what, status, &body)),
        }
    }

    /// DELETE; a 404 after a lost first attempt counts as done.
    async fn delete_url(&self, what: &str, url: &str) -> Result<()> {
        let attempts = AtomicU32::new(0);
        let (status, body) = self
            .call(what, || {
                attempts.fetch_add(1, Ordering::SeqCst);
                self.http.delete(url)
            })
            .await?;
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND if attempts.load(Ordering::SeqCst) > 1 => Ok(()),
            _ => Err(api_error(what, status, &body)),
        }
    }
}

/// The chunked-upload protocol of one upload.
struct Chunked<'a> {
    t: &'a FluxerTarget,
}

/// An open chunked upload.
struct ChunkSession<'a> {
    t: &'a FluxerTarget,
    s: CreateResp,
    name: String,
}

#[async_trait]
impl<'a> PartProtocol for Chunked<'a> {
    type Session = ChunkSession<'a>;

    async fn open(&self, req: &UploadRequest, _round: u32) -> Result<Open<ChunkSession<'a>>> {
        let what = format!("fluxer: starting the upload of {}", req.name);
        let url = self.t.channel_url("/chunked-uploads");
        let body = json!({ "filename": req.name, "file_size": req.size });
        let (status, answer) = self
            .t
            .call(&what, || self.t.http.post(&url).json(&body))
            .await?;
        if status != StatusCode::CREATED && status != StatusCode::OK {
            return Err(api_error(&what, status, &answer));
        }
        let s: CreateResp = parse_json(&what, &answer)?;
        if s.chunk_size == 0 || s.chunk_count != req.size.div_ceil(s.chunk_size) {
            return Err(TargetError::protocol(format!(
                "{what}: the server announced {} chunks of {} bytes for {} bytes",
                s.chunk_count, s.chunk_size, req.size
            )));
        }
        Ok(Open::Session(Opened {
            id: s.upload_id.clone(),
            layout: Layout {
                label: "fluxer",
                plan: PartPlan::fixed(s.chunk_size),
                flow: Flow::Parallel(PARALLEL_CHUNKS),
                part_sha1: false,
                streamed: false,
                last_part_completes: false,
            },
            session: ChunkSession {
                t: self.t,
                s,
                name: req.name.clone(),
            },
            done: Vec::new(),
        }))
    }
}

#[async_trait]
impl PartSession for ChunkSession<'_> {
    /// The chunk's ETag, kept verbatim.
    type Receipt = String;
    /// The `upload_filename` a message then names.
    type Output = String;

    async fn put_part(&self, part: &Part, _attempt: u32) -> Attempt<String> {
        let what = format!("fluxer: uploading chunk {} of {}", part.index, self.name);
        let url = self.t.channel_url(&format!(
            "/chunked-uploads/{}/chunks/{}",
            self.s.upload_id, part.index
        ));
        let r = self
            .t
            .http
            .put(&url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(part.body().0);
        let reply = match attempt(&self.t.http, r, None).await {
            Attempt::Done(reply) => reply,
            Attempt::Retry { after, reason } => return Attempt::Retry { after, reason },
            Attempt::Fail(e) => return Attempt::Fail(e),
        };
        if reply.status != StatusCode::OK {
            return Attempt::Fail(api_error(&what, reply.status, &reply.body));
        }
        match parse_json::<ChunkResp>(&what, &reply.body) {
            Ok(r) if !r.etag.is_empty() => Attempt::Done(r.etag),
            Ok(_) => Attempt::Fail(TargetError::protocol(format!("{what}: empty etag"))),
            Err(e) => Attempt::Fail(e),
        }
    }

    async fn complete(&self, etags: Vec<(u64, String)>, _sealed: &Sealed) -> Result<String> {
        let what = format!("fluxer: completing the upload of {}", self.name);
        let url = self
            .t
            .channel_url(&format!("/chunked-uploads/{}/complete", self.s.upload_id));
        let body = json!({
            "etags": etags.iter().map(|(i, e)| json!({ "chunk_index": i, "etag": e })).collect::<Vec<_>>()
        });
        let lost_once = AtomicBool::new(false);
        let http = &self.t.http;
        let reply = http
            .retry(&what, || {
                attempt(http, http.post(&url).json(&body), Some(&lost_once))
            })
            .await?;
        if reply.status == StatusCode::NOT_FOUND && lost_once.load(Ordering::SeqCst) {
            // The earlier attempt completed the session; its upload is ours.
            return Ok(self.s.upload_filename.clone());
        }
        if reply.status != StatusCode::OK {
            return Err(api_error(&what, reply.status, &reply.body));
        }
        let r: CompleteResp = parse_json(&what, &reply.body)?;
        Ok(r.upload_filename)
    }
}

fn to_remote(m: &Message, a: &Attachment) -> RemoteFile {
    let mtime_ms = m
        .timestamp
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp_millis())
        .unwrap_or(0);
    RemoteFile {
        id: a.id.clone(),
        name: a.filename.clone(),
        size: a.size,
        mtime_ms,
        is_dir: false,
        sha1: None,
        md5: None,
        url: a.url.clone(),
        extra: Some(m.id.clone()),
    }
}

#[async_trait]
impl Target for FluxerTarget {
    fn health(&self) -> Option<&std::sync::Arc<crate::remote::health::Health>> {
        Some(self.http.health())
    }

    fn check_name(&self, name: &str) -> Result<()> {
        super::names::check_fluxer_name(name)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "fluxer",
            part_size: PART_SIZE,
            max_parallel_parts: PARALLEL_CHUNKS,
            max_file_size: self.max_file_size,
            range_reads: true,
            folders: false,
            rename: false,
            delete: true,
            needs_md5: false,
            wants_sha1: false,
            case_insensitive_names: false,
            replaces_in_place: false,
            early_start: true,
            size_later: false,
        }
    }

    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile> {
        super::names::check_fluxer_name(&req.name)?;
        let req = req.with_final_size().await?;
        if let Some(max) = self.max_file_size {
            if req.size > max {
                return Err(TargetError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "fluxer: {} is {} bytes, over the configured limit of {max} bytes",
                        req.name, req.size
                    ),
                ));
            }
        }
        let what = format!("fluxer: uploading {}", req.name);
        let baseline = self.newest_message_id(&what).await?;
        let (m, a) = if req.size <= INLINE_MAX {
            // One request posts the file: a file still being written is complete first.
            req.final_digests().await?;
            self.upload_inline(&req, baseline).await?
        } else {
            self.upload_chunked(&req, baseline).await?
        };
        if a.size != req.size {
            return Err(TargetError::protocol(format!(
                "{what}: the server stored {} bytes instead of {}",
                a.size, req.size
            )));
        }
        if a.filename != req.name {
            tracing::warn!(name = %req.name, stored = %a.filename, "fluxer: the server changed the file name");
        }
        Ok(to_remote(&m, &a))
    }

    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.read_unchecked(file, offset, len).await?;
        super::http::check_read(&read_what(file), file, offset, len, data)
    }

    async fn list(&self, _dir: &DirRef) -> Result<Vec<RemoteFile>> {
        let what = "fluxer: listing the channel";
        let mut out = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let mut query = vec![("limit", PAGE.to_string())];
            if let Some(b) = before {
                query.push(("before", b.to_string()));
            }
            let page = self.messages_page(what, &query).await?;
            for m in &page {
                for a in &m.attachments {
                    out.push(to_remote(m, a));
                }
            }
            let oldest = page.iter().filter_map(|m| m.id.parse::<u64>().ok()).min();
            match oldest {
                Some(o) if page.len() >= PAGE && before.is_none_or(|b| o < b) => before = Some(o),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn delete(&self, file: &RemoteFile) -> Result<()> {
        let what = format!("fluxer: deleting {}", file.name);
        let mid = file
            .extra
            .as_deref()
            .ok_or_else(|| TargetError::protocol(format!("{what}: no message id")))?;
        let url = self.channel_url(&format!("/messages/{mid}/attachments/{}", file.id));
        self.delete_url(&what, &url).await?;
        // A message left with nothing in it is removed too.
        if let Some(m) = self.get_message(&what, mid).await? {
            if m.attachments.is_empty() && m.content.as_deref().unwrap_or("").is_empty() {
                self.delete_url(&what, &self.channel_url(&format!("/messages/{mid}")))
                    .await
                    .or_else(|e| {
                        if e.kind == ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })?;
            }
        }
        Ok(())
    }

    async fn rename(&self, _file: &RemoteFile, _p: &DirRef, _n: &str) -> Result<RemoteFile> {
        Err(TargetError::unsupported("rename"))
    }

    async fn mkdir(&self, _parent: &DirRef, _name: &str) -> Result<RemoteFile> {
        Err(TargetError::unsupported("mkdir"))
    }

    async fn check(&self) -> Result<()> {
        self.newest_message_id("fluxer: checking the token")
            .await
            .map(|_| ())
    }
}

impl FluxerTarget {
    /// A ranged read as the server answered it ([`super::http::check_read`] checks it).
    async fn read_unchecked(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let what = read_what(file);
        if len == 0 || offset >= file.size {
            return Ok(Bytes::new());
        }
        let url = match &file.url {
            Some(u) => u.clone(),
            None => {
                let mid = file.extra.as_deref().ok_or_else(|| {
                    TargetError::protocol(format!("{what}: no download URL and no message id"))
                })?;
                self.get_message(&what, mid)
                    .await?
                    .and_then(|m| m.attachments.into_iter().find(|a| a.id == file.id))
                    .and_then(|a| a.url)
                    .ok_or_else(|| {
                        TargetError::new(
                            ErrorKind::NotFound,
                            format!("{what}: the attachment is gone"),
                        )
                    })?
            }
        };
        let end = (offset + len).min(file.size) - 1;
        // No token here: the CDN needs none and is another host.
        match self
            .http
            .get_range(&what, &url, offset, end - offset + 1, false)
            .await?
        {
            Ok(data) => Ok(data),
            Err(r) => Err(status_error(&what, r.status, &r.text())),
        }
    }
}

/// How reads of `file` are named in messages.
fn read_what(file: &RemoteFile) -> String {
    format!("fluxer: reading {}", file.name)
}
