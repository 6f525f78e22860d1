//! The Cloudreve v4 client.
//!
//! Every API answer is HTTP 200 with an envelope `{code, msg, data}`: the envelope `code`
//! decides, never the HTTP status alone (a proxy in front may still answer 429/5xx or cut
//! the connection; those are retried). Files are addressed by `cloudreve://my/...` uris
//! with path-escaped names; a [`DirRef`] and a [`RemoteFile::id`] are such uris, and
//! `RemoteFile::extra` carries the file's current entity id (its content version).
//!
//! Uploads: files up to [`SMALL_FILE_MAX`] go whole with `PUT /file/content` (create or
//! overwrite). Larger ones open a session (`PUT /file/upload`, `entity_type: "version"`
//! when replacing or when the name turns out to exist), then send chunks strictly in order
//! with the exact `Content-Length` the session's `chunk_size` implies, each retried on its
//! own; the server completes after the last chunk. A session given up on is cancelled
//! (`DELETE /file/upload`), otherwise its placeholder would lock the name for a day.
//!
//! Reads ask `POST /file/url` for a signed URL, cache it per (uri, entity) until shortly
//! before it expires, and fetch ranges from it without the token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::TargetConfig;
use crate::remote::http::{
    excerpt, parse_json, status_error, Attempt, Exchange, HttpClient, Request,
};
use crate::remote::session;
use crate::remote::{
    Capabilities, DirRef, ErrorKind, RemoteFile, Result, Target, TargetError, UploadRequest,
};

mod chunks;

/// The default local storage policy's chunk size (25 MiB); the session answer decides.
const PART_SIZE: u64 = 25 * 1024 * 1024;
/// Files up to this size go in one `PUT /file/content` (well under the real server's
/// online-edit limit, and small enough to hold in memory).
const SMALL_FILE_MAX: u64 = 4 * 1024 * 1024;
/// Listing page size (the real server's maximum is 2000).
const PAGE_SIZE: u64 = 1000;
/// A cached signed URL is dropped this long before it expires.
const URL_MARGIN: Duration = Duration::from_secs(60);
/// How long a signed URL is trusted when the answer gives no expiry.
const URL_DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Metadata key the server puts on upload placeholders.
const META_SESSION: &str = "sys:upload_session_id";

/// What Go's `url.PathEscape` leaves alone (the server unescapes names with it).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// Envelope codes the client reacts to (`pkg/serializer/error.go`).
mod code {
    pub const OBJECT_EXIST: i64 = 40004;
    pub const SESSION_EXPIRED: i64 = 40011;
}

fn escape(name: &str) -> String {
    utf8_percent_encode(name, SEGMENT).to_string()
}

/// A uri with every segment unescaped, for comparisons.
fn decoded(uri: &str) -> String {
    percent_decode_str(uri.trim_end_matches('/'))
        .decode_utf8_lossy()
        .into_owned()
}

/// The folder uri holding `uri`.
fn parent_uri(uri: &str) -> String {
    let u = uri.trim_end_matches('/');
    match u.rsplit_once('/') {
        Some((p, _)) if p.len() >= "cloudreve://my".len() => p.to_string(),
        _ => u.to_string(),
    }
}

#[derive(Deserialize)]
struct Envelope {
    code: i64,
    #[serde(default)]
    msg: String,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct FileResp {
    #[serde(rename = "type")]
    kind: i64,
    name: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    updated_at: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    metadata: Option<HashMap<String, Value>>,
    #[serde(default)]
    primary_entity: Option<String>,
}

impl FileResp {
    fn is_placeholder(&self) -> bool {
        self.metadata
            .as_ref()
            .is_some_and(|m| m.contains_key(META_SESSION))
    }
    fn into_remote(self, dir: &str) -> RemoteFile {
        let id = self
            .path
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| format!("{dir}/{}", escape(&self.name)));
        RemoteFile {
            id,
            mtime_ms: self
                .updated_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp_millis())
                .unwrap_or(0),
            name: self.name,
            size: self.size,
            is_dir: self.kind == 1,
            sha1: None,
            md5: None,
            url: None,
            extra: self.primary_entity,
        }
    }
}

#[derive(Deserialize)]
struct SessionResp {
    session_id: String,
    #[serde(default)]
    chunk_size: u64,
}

/// One attempt's outcome, before the retry policy.
enum Outcome {
    Data(Value),
    /// An envelope error.
    Code(i64, String),
    /// Worth another attempt (connection trouble, 429, 5xx).
    Transient(Option<Duration>, String),
    Fatal(TargetError),
}

pub struct CloudreveTarget {
    http: HttpClient,
    /// `.../api/v4`, no trailing slash.
    api: String,
    /// The site root (`api` without `/api/v4`), for relative signed URLs.
    site: String,
    /// The configured root folder uri, no trailing slash.
    root: String,
    /// Signed URLs by `uri#entity`, with the instant they stop being used.
    urls: Mutex<HashMap<String, (String, Instant)>>,
}

/// `Debug` shows no token and no signed URL (they carry signatures).
impl std::fmt::Debug for CloudreveTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.urls.lock().map(|u| u.len()).unwrap_or(0);
        f.debug_struct("CloudreveTarget")
            .field("http", &self.http)
            .field("api", &self.api)
            .field("root", &self.root)
            .field("cached_urls", &cached)
            .finish_non_exhaustive()
    }
}

impl CloudreveTarget {
    pub fn new(http: HttpClient, cfg: &TargetConfig) -> anyhow::Result<Self> {
        let api = cfg.url.trim_end_matches('/').to_string();
        let site = api.strip_suffix("/api/v4").unwrap_or(&api).to_string();
        let root = cfg
            .root
            .clone()
            .unwrap_or_else(|| "cloudreve://my".to_string())
            .trim_end_matches('/')
            .to_string();
        if !root.starts_with("cloudreve://") {
            anyhow::bail!("cloudreve root must be a cloudreve:// uri, e.g. cloudreve://my");
        }
        Ok(Self {
            http,
            api,
            site,
            root,
            urls: Mutex::new(HashMap::new()),
        })
    }

    fn dir_uri(&self, dir: &DirRef) -> String {
        dir.as_deref()
            .unwrap_or(&self.root)
            .trim_end_matches('/')
            .to_string()
    }

    fn endpoint(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    /// Send once and classify the answer.
    async fn attempt(&self, r: Request) -> Outcome {
        let reply = match self.http.exchange(r).await {
            Exchange::Answer(r) => r,
            Exchange::Lost(reason) => return Outcome::Transient(None, reason),
            Exchange::Fatal(e) => return Outcome::Fatal(e),
        };
        if let Some(Attempt::Retry { after, reason }) = reply.busy::<()>() {
            return Outcome::Transient(after, reason);
        }
        if !reply.status.is_success() {
            return Outcome::Fatal(status_error("request", reply.status, &reply.text()));
        }
        match parse_json::<Envelope>("request", &reply.body) {
            Ok(env) if env.code == 0 => Outcome::Data(env.data.unwrap_or(Value::Null)),
            Ok(env) => Outcome::Code(env.code, env.msg),
            Err(e) => Outcome::Fatal(e),
        }
    }

    /// An API call with the default policy: transient trouble is retried, any envelope
    /// error is final.
    async fn call<F>(&self, what: &str, build: F) -> Result<Value>
    where
        F: Fn() -> Request,
    {
        self.http
            .retry(what, || async {
                match self.attempt(self.http.auth(build())).await {
                    Outcome::Data(v) => Attempt::Done(v),
                    Outcome::Code(c, m) => Attempt::Fail(code_error(what, c, &m)),
                    Outcome::Transient(after, reason) => Attempt::Retry { after, reason },
                    Outcome::Fatal(e) => Attempt::Fail(prefix(what, e)),
                }
            })
            .await
    }

    /// Like [`call`](Self::call), but an envelope error comes back as `Err(Ok((code, msg)))`
    /// for the caller to handle.
    async fn call_code<F>(
        &self,
        what: &str,
        build: F,
    ) -> Result<std::result::Result<Value, (i64, String)>>
    where
        F: Fn() -> Request,
    {
        self.http
            .retry(what, || async {
                match self.attempt(self.http.auth(build())).await {
                    Outcome::Data(v) => Attempt::Done(Ok(v)),
                    Outcome::Code(c, m) => Attempt::Done(Err((c, m))),
                    Outcome::Transient(after, reason) => Attempt::Retry { after, reason },
                    Outcome::Fatal(e) => Attempt::Fail(prefix(what, e)),
                }
            })
            .await
    }

    async fn info(&self, uri: &str, what: &str) -> Result<RemoteFile> {
        let data = self
            .call(what, || {
                self.http
                    .get(self.endpoint("/file/info"))
                    .query(&[("uri", uri)])
            })
            .await?;
        let f: FileResp = from_value(what, data)?;
        Ok(f.into_remote(&parent_uri(uri)))
    }

    /// Drop cached signed URLs of `uri`.
    fn forget_urls(&self, uri: &str) {
        let key = format!("{uri}#");
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| !k.starts_with(&key));
    }

    /// Small file: the whole body in one `PUT /file/content`.
    async fn put_content(&self, uri: &str, req: &UploadRequest) -> Result<RemoteFile> {
        let what = format!("upload of {}", req.name);
        // Held until the request is over: bounds the buffered bodies of all uploads.
        let _mem = crate::remote::budget::reserve(req.size).await;
        let data = crate::remote::read_source(&req.source, 0, req.size as usize).await?;
        let v = self
            .call(&what, || {
                self.http
                    .put(self.endpoint("/file/content"))
                    .query(&[("uri", uri)])
                    .header(CONTENT_TYPE, "application/octet-stream")
                    // Explicit: an empty body would otherwise go without a length.
                    .header(CONTENT_LENGTH, data.len())
                    .body(data.clone())
            })
            .await?;
        req.observer.part_done(0, req.size);
        let f: FileResp = from_value(&what, v)?;
        Ok(f.into_remote(&parent_uri(uri)))
    }

    /// Create a session; when the name exists, as a new version.
    async fn create_session(&self, uri: &str, req: &UploadRequest) -> Result<SessionResp> {
        let what = format!("upload of {}: creating the upload session", req.name);
        let mut version = req.replaces.is_some();
        loop {
            let mut body = json!({
                "uri": uri,
                "size": req.size,
                "last_modified": req.mtime_ms,
                "mime_type": crate::mime::content_type_for(&req.name),
            });
            if version {
                body["entity_type"] = json!("version");
            }
            let r = self
                .call_code(&what, || {
                    self.http.put(self.endpoint("/file/upload")).json(&body)
                })
                .await?;
            match r {
                Ok(v) => return from_value(&what, v),
                Err((code::OBJECT_EXIST, _)) if !version => version = true,
                Err((c, m)) => return Err(code_error(&what, c, &m)),
            }
        }
    }

    /// Best-effort `DELETE /file/upload {id, uri}`.
    async fn cancel(&self, session_id: &str, uri: &str, name: &str) {
        let what = format!("upload of {name}: cancelling the upload session");
        let body = json!({"id": session_id, "uri": uri});
        if let Err(e) = self
            .call(&what, || {
                self.http.delete(self.endpoint("/file/upload")).json(&body)
            })
            .await
        {
            tracing::warn!(file = name, error = %e, "cancelling the upload session failed");
        }
    }

    /// A signed URL for `file`, from the cache unless `fresh`.
    async fn content_url(&self, file: &RemoteFile, fresh: bool) -> Result<String> {
        let key = format!("{}#{}", file.id, file.extra.as_deref().unwrap_or(""));
        if !fresh {
            let cache = self.urls.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((url, until)) = cache.get(&key) {
                if Instant::now() < *until {
                    return Ok(url.clone());
                }
            }
        }
        let what = format!("read of {}: getting a download URL", file.name);
        let body = json!({"uris": [file.id], "download": true});
        let v = self
            .call(&what, || {
                self.http.post(self.endpoint("/file/url")).json(&body)
            })
            .await?;
        let url = v["urls"][0]["url"]
            .as_str()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| TargetError::protocol(format!("{what}: the answer has no URL")))?;
        let url = if url.starts_with("http://") || url.starts_with("https://") {
            url.to_string()
        } else if url.starts_with("/api/") {
            // Relative to the site, as the server's own routes are.
            format!("{}{url}", self.site)
        } else {
            // Relative to the API base, as the vendor SDK resolves it.
            format!("{}/{}", self.api, url.trim_start_matches('/'))
        };
        let ttl = v["expires"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| {
                let left = t.timestamp() - chrono::Utc::now().timestamp();
                Duration::from_secs(left.max(0) as u64)
            })
            .unwrap_or(URL_DEFAULT_TTL);
        let until = Instant::now() + ttl.saturating_sub(URL_MARGIN);
        self.urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (url.clone(), until));
        Ok(url)
    }
}

fn short_source(name: &str, size: u64) -> TargetError {
    TargetError::new(
        ErrorKind::LocalIo,
        format!("upload of {name}: the staged data is shorter than its size {size}"),
    )
}

fn prefix(what: &str, e: TargetError) -> TargetError {
    TargetError::new(e.kind, format!("{what}: {}", e.message))
}

fn from_value<T: serde::de::DeserializeOwned>(what: &str, v: Value) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| {
        TargetError::protocol(format!(
            "{what}: unexpected answer ({e}): {}",
            excerpt(&v.to_string())
        ))
    })
}

/// An envelope error as a [`TargetError`].
fn code_error(what: &str, code: i64, msg: &str) -> TargetError {
    let kind = match code {
        401 | 403 | 40020 | 40082 => ErrorKind::Auth,
        404 | 40016 => ErrorKind::NotFound,
        409 | 40004 | 40073 => ErrorKind::Conflict,
        40049 => ErrorKind::TooLarge,
        40051 => ErrorKind::Quota,
        40052 => ErrorKind::InvalidName,
        -1 | 50000..=59999 => ErrorKind::Unavailable,
        _ => ErrorKind::Protocol,
    };
    let hint = match kind {
        ErrorKind::Auth => " — the token was refused; renew it",
        _ => "",
    };
    let msg = if msg.is_empty() { "(no message)" } else { msg };
    TargetError::new(
        kind,
        format!("{what}: Cloudreve error {code}: {}{hint}", excerpt(msg)),
    )
}

#[async_trait]
impl Target for CloudreveTarget {
    fn health(&self) -> Option<&std::sync::Arc<crate::remote::health::Health>> {
        Some(self.http.health())
    }

    fn check_name(&self, name: &str) -> Result<()> {
        crate::remote::names::check_cloudreve_name(name)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            kind: "cloudreve",
            part_size: PART_SIZE,
            max_parallel_parts: 1,
            max_file_size: None,
            range_reads: true,
            folders: true,
            rename: true,
            delete: true,
            needs_md5: false,
            wants_sha1: false,
            case_insensitive_names: false,
            replaces_in_place: true,
            early_start: true,
            size_later: false,
        }
    }

    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile> {
        let req = req.with_final_size().await?;
        let dir = self.dir_uri(&req.parent);
        let uri = format!("{dir}/{}", escape(&req.name));
        self.forget_urls(&uri);
        if let Some(old) = &req.resume_session {
            // The server cannot tell how far an old session got: drop it so its
            // placeholder does not lock the name, and start over.
            self.cancel(old, &uri, &req.name).await;
        }
        if req.size <= SMALL_FILE_MAX {
            // One request makes the file visible: a file still being written is complete first.
            req.final_digests().await?;
            return self.put_content(&uri, &req).await;
        }
        if req.source.seal().is_none() {
            // A source shorter than announced fails here, before a session holds the name.
            let tail = crate::remote::source::read_upto(&req.source, req.size - 1, 1).await?;
            if tail.len() != 1 {
                return Err(short_source(&req.name, req.size));
            }
        }
        // A session that vanishes mid-upload (chunks answer 40011) is replaced once.
        session::drive(
            self.http.policy(),
            &chunks::Chunks { t: self, uri: &uri },
            &req,
        )
        .await
    }

    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.read_unchecked(file, offset, len).await?;
        crate::remote::http::check_read(&read_what(file), file, offset, len, data)
    }

    async fn list(&self, dir: &DirRef) -> Result<Vec<RemoteFile>> {
        let uri = self.dir_uri(dir);
        let what = format!("listing of {uri}");
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut page = 0u64;
        loop {
            let page_s = page.to_string();
            let size_s = PAGE_SIZE.to_string();
            let data = self
                .call(&what, || {
                    let mut q = vec![
                        ("uri", uri.as_str()),
                        ("page", page_s.as_str()),
                        ("page_size", size_s.as_str()),
                        ("order_by", "name"),
                        ("order_direction", "asc"),
                    ];
                    if let Some(t) = &token {
                        q.push(("next_page_token", t.as_str()));
                    }
                    self.http.get(self.endpoint("/file")).query(&q)
                })
                .await?;
            let files: Vec<FileResp> = from_value(&what, data["files"].clone())?;
            let got = files.len();
            out.extend(
                files
                    .into_iter()
                    .filter(|f| !f.is_placeholder())
                    .map(|f| f.into_remote(&uri)),
            );
            let p = &data["pagination"];
            match p["next_token"].as_str().filter(|t| !t.is_empty()) {
                Some(t) => {
                    if token.as_deref() == Some(t) {
                        return Err(TargetError::protocol(format!(
                            "{what}: the server repeated the same page token"
                        )));
                    }
                    token = Some(t.to_string());
                }
                None => {
                    // Page-numbered servers give a total instead of a cursor.
                    let total = p["total_items"].as_u64().unwrap_or(0);
                    if got == 0 || (page + 1) * PAGE_SIZE >= total {
                        break;
                    }
                    token = None;
                }
            }
            page += 1;
        }
        Ok(out)
    }

    async fn delete(&self, file: &RemoteFile) -> Result<()> {
        let what = format!("delete of {}", file.name);
        self.forget_urls(&file.id);
        let body = json!({"uris": [file.id], "unlink": false, "skip_soft_delete": true});
        self.call(&what, || {
            self.http.delete(self.endpoint("/file")).json(&body)
        })
        .await?;
        Ok(())
    }

    /// `stat`: `GET /file/info?uri=`; the primary entity (in `extra`) names the version.
    async fn stat(&self, file: &RemoteFile) -> Result<Option<RemoteFile>> {
        let what = format!("metadata of {}", file.name);
        match self.info(&file.id, &what).await {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn rename(
        &self,
        file: &RemoteFile,
        new_parent: &DirRef,
        new_name: &str,
    ) -> Result<RemoteFile> {
        let what = format!("rename of {} to {new_name}", file.name);
        self.forget_urls(&file.id);
        let dst = self.dir_uri(new_parent);
        let mut uri = file.id.clone();
        if decoded(&dst) != decoded(&parent_uri(&file.id)) {
            let body = json!({"uris": [uri], "dst": dst, "copy": false});
            self.call(&what, || {
                self.http.post(self.endpoint("/file/move")).json(&body)
            })
            .await?;
            uri = format!("{dst}/{}", escape(&file.name));
        }
        if new_name == file.name {
            return self.info(&uri, &what).await;
        }
        let body = json!({"uri": uri, "new_name": new_name});
        let v = self
            .call(&what, || {
                self.http.post(self.endpoint("/file/rename")).json(&body)
            })
            .await?;
        let f: FileResp = from_value(&what, v)?;
        Ok(f.into_remote(&dst))
    }

    async fn mkdir(&self, parent: &DirRef, name: &str) -> Result<RemoteFile> {
        let dir = self.dir_uri(parent);
        let what = format!("mkdir of {name}");
        let body = json!({"uri": format!("{dir}/{}", escape(name)), "type": "folder", "err_on_conflict": true});
        let v = self
            .call(&what, || {
                self.http.post(self.endpoint("/file/create")).json(&body)
            })
            .await?;
        let f: FileResp = from_value(&what, v)?;
        Ok(f.into_remote(&dir))
    }
}

impl CloudreveTarget {
    /// A ranged read as the server answered it ([`crate::remote::http::check_read`] checks it).
    async fn read_unchecked(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let what = read_what(file);
        for fresh in [false, true] {
            let url = self.content_url(file, fresh).await?;
            match self.http.get_range(&what, &url, offset, len, false).await? {
                Ok(data) => return Ok(data),
                // An expired or stale URL (new content, server restart): ask for a new one.
                Err(r)
                    if !fresh
                        && matches!(r.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) =>
                {
                    continue
                }
                Err(r) => return Err(status_error(&what, r.status, &r.text())),
            }
        }
        Err(TargetError::protocol(format!(
            "{what}: no usable download URL"
        )))
    }
}

/// How reads of `file` are named in messages.
fn read_what(file: &RemoteFile) -> String {
    format!("read of {}", file.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_helpers() {
        assert_eq!(escape("a b(1)#?.bin"), "a%20b(1)%23%3F.bin");
        assert_eq!(parent_uri("cloudreve://my/a/b%20c"), "cloudreve://my/a");
        assert_eq!(parent_uri("cloudreve://my/a"), "cloudreve://my");
        assert_eq!(decoded("cloudreve://my/a%20b/"), "cloudreve://my/a b");
    }

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(code_error("x", 401, "Login required").kind, ErrorKind::Auth);
        assert_eq!(code_error("x", 40049, "").kind, ErrorKind::TooLarge);
        assert_eq!(code_error("x", 40052, "").kind, ErrorKind::InvalidName);
        assert_eq!(code_error("x", 40004, "").kind, ErrorKind::Conflict);
        assert_eq!(code_error("x", 40016, "").kind, ErrorKind::NotFound);
        assert_eq!(code_error("x", 12345, "").kind, ErrorKind::Protocol);
    }
}
