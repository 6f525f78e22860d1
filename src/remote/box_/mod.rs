//! The Box client: uploads (direct multipart below 20,000,000 bytes, chunked upload
//! sessions above), ranged downloads, folder listings, rename/move, delete and mkdir
//! against the Box API (`url`, e.g. `https://api.box.com/2.0`) and upload host
//! (`upload_url`, e.g. `https://upload.box.com/api/2.0`). Downloads and their signed links:
//! `download.rs`.
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

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::HeaderName;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::TargetConfig;
use crate::remote::http::{
    excerpt, parse_json, status_error, Attempt, Exchange, HttpClient, Reply, Request,
};
use crate::remote::{
    Capabilities, DirRef, ErrorKind, RemoteFile, Result, Target, TargetError, UploadRequest,
};

mod download;
mod sessions;

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

/// The fields of one file's metadata request ([`Target::stat`]): a listing's, plus the
/// etag a conditional new version names in `If-Match`.
const STAT_FIELDS: &str = "name,size,modified_at,content_modified_at,sha1,etag";
/// Box's public upload host, when the config names none.
const DEFAULT_UPLOAD_URL: &str = "https://upload.box.com/api/2.0";
/// Wait before retrying a 202 that carries no `Retry-After`.
const DEFAULT_NOT_READY_WAIT: Duration = Duration::from_secs(1);
/// Box's `Digest` header (`sha=<base64 SHA-1>`) on parts and commits.
const DIGEST: HeaderName = HeaderName::from_static("digest");
/// Box checks `Content-MD5` (which carries the hex SHA-1) on direct uploads when given.
const CONTENT_MD5: HeaderName = HeaderName::from_static("content-md5");

/// `Debug` shows no token (the [`HttpClient`] keeps it as a `Secret`).
#[derive(Debug)]
pub struct BoxTarget {
    http: HttpClient,
    api: String,
    upload: String,
    root: String,
    max_file_size: Option<u64>,
    /// Signed download links kept per file version (`download.rs`).
    links: download::Links,
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
            links: download::Links::default(),
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
    /// Only asked for by [`Target::stat`]; kept in [`RemoteFile::extra`].
    #[serde(default)]
    etag: Option<String>,
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
            // The etag, when asked for: what a conditional new version names.
            extra: self.etag.filter(|e| !e.is_empty()),
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
            // `If-Match` named an older etag: someone changed the file meanwhile.
            "precondition_failed" => Some(ErrorKind::Changed),
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

/// Answer of one request: success or a failure to inspect.
type Answer = std::result::Result<Reply, Failure>;

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

impl BoxTarget {
    /// Send with the shared retry policy, read the body, split success from failure.
    async fn call<F>(&self, what: &str, build: F) -> Result<Answer>
    where
        F: Fn() -> Request,
    {
        let reply = self.http.call(what, || self.http.auth(build())).await?;
        if reply.status.is_success() {
            Ok(Ok(reply))
        } else {
            Ok(Err(Failure::from_body(reply.status, &reply.body)))
        }
    }

    /// [`call`](Self::call), with any failure turned into an error.
    async fn call_ok<F>(&self, what: &str, build: F) -> Result<Bytes>
    where
        F: Fn() -> Request,
    {
        match self.call(what, build).await? {
            Ok(r) => Ok(r.body),
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

    /// Upload; a new version only if the file still has etag `if_match` (when given).
    async fn upload_if(&self, req: UploadRequest, if_match: Option<&str>) -> Result<RemoteFile> {
        let req = req.with_final_size().await?;
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
                .direct_upload(&req, &parent, version_of.as_deref(), if_match)
                .await?;
            // The replaced file vanished: upload as a new file instead.
            if let (Some(_), Err(f)) = (&version_of, &answer) {
                if f.status == StatusCode::NOT_FOUND {
                    version_of = None;
                    answer = self.direct_upload(&req, &parent, None, None).await?;
                }
            }
            return match answer {
                Ok(f) => Ok(f),
                Err(f) => match (version_of, f.conflicting_file()) {
                    // The name is taken by a file: upload as its new version.
                    (None, Some(id)) => self
                        .direct_upload(&req, &parent, Some(&id), None)
                        .await?
                        .map_err(|f| f.into_error(&what)),
                    _ => Err(f.into_error(&what)),
                },
            };
        }
        match self
            .session_upload(&req, &parent, version_of.as_deref(), if_match)
            .await
        {
            Err(e) if e.kind == ErrorKind::NotFound && version_of.is_some() => {
                // The replaced file vanished before the session was created.
                self.session_upload(&req, &parent, None, None).await
            }
            r => r,
        }
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
        if_match: Option<&str>,
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
        let sha1 = req.final_digests().await?.sha1;
        let answer = self
            .http
            .retry(&what, || async {
                let (file, failure) =
                    match crate::remote::source::file_part(&req.source, req.size, &req.name) {
                        Ok(p) => p,
                        Err(e) => return Attempt::Fail(e),
                    };
                let form = reqwest::multipart::Form::new()
                    .part(
                        "attributes",
                        reqwest::multipart::Part::text(attributes.clone()),
                    )
                    .part("file", file);
                let mut rb = self.http.auth(self.http.post(&url)).multipart(form);
                if let Some(sha) = &sha1 {
                    rb = rb.header(CONTENT_MD5, sha.as_str());
                }
                if let (Some(_), Some(etag)) = (version_of, if_match) {
                    rb = rb.header(reqwest::header::IF_MATCH, etag);
                }
                let ex = self.http.exchange(rb).await;
                if let Some(e) = failure.take(&what) {
                    return Attempt::Fail(e);
                }
                match ex {
                    Exchange::Answer(r) => r.busy().unwrap_or(Attempt::Done(r)),
                    Exchange::Lost(reason) => Attempt::again(reason),
                    Exchange::Fatal(e) => Attempt::Fail(e),
                }
            })
            .await?;
        if answer.status.is_success() {
            Ok(Ok(Self::files_to_file(&what, &answer.body)?))
        } else {
            Ok(Err(Failure::from_body(answer.status, &answer.body)))
        }
    }
}

#[async_trait]
impl Target for BoxTarget {
    fn health(&self) -> Option<&std::sync::Arc<crate::remote::health::Health>> {
        Some(self.http.health())
    }

    fn check_name(&self, name: &str) -> Result<()> {
        crate::remote::names::check_box_name(name)
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
            size_later: false,
        }
    }

    async fn upload(&self, req: UploadRequest) -> Result<RemoteFile> {
        self.upload_if(req, None).await
    }

    /// `stat`: `GET /files/{id}` with the listing's fields and the etag; 404 is "gone".
    async fn stat(&self, file: &RemoteFile) -> Result<Option<RemoteFile>> {
        let what = format!("box metadata of {}", file.name);
        let kind = if file.is_dir { "folders" } else { "files" };
        let url = format!("{}/{kind}/{}", self.api, file.id);
        match self
            .call(&what, || {
                self.http.get(&url).query(&[("fields", STAT_FIELDS)])
            })
            .await?
        {
            Ok(r) => Self::item_to_file(&what, &r.body).map(Some),
            Err(f) if f.status == StatusCode::NOT_FOUND => Ok(None),
            Err(f) => Err(f.into_error(&what)),
        }
    }

    /// A new version committed with `If-Match: <etag>` (the direct upload, or the
    /// session's commit): Box answers 412 when the file changed since that etag.
    async fn upload_unless_changed(
        &self,
        req: UploadRequest,
        expected: &RemoteFile,
    ) -> Result<RemoteFile> {
        self.upload_if(req, expected.extra.as_deref()).await
    }

    async fn read_range(&self, file: &RemoteFile, offset: u64, len: u64) -> Result<Bytes> {
        let data = self.read_unchecked(file, offset, len).await?;
        crate::remote::http::check_read(&read_what(file), file, offset, len, data)
    }

    async fn list(&self, dir: &DirRef) -> Result<Vec<RemoteFile>> {
        let id = self.folder_id(dir);
        let what = format!("box listing of folder {id}");
        let url = format!("{}/folders/{id}/items", self.api);
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let body = self
                .call_ok(&what, || {
                    let mut q = vec![
                        ("fields", LIST_FIELDS.to_string()),
                        ("limit", PAGE_LIMIT.to_string()),
                        ("usemarker", "true".to_string()),
                    ];
                    if let Some(m) = &marker {
                        q.push(("marker", m.clone()));
                    }
                    self.http.get(&url).query(&q)
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
        self.call_ok(&what, || self.http.delete(&url))
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
        let b = self
            .call_ok(&what, || {
                self.http
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
        let b = self
            .call_ok(&what, || self.http.post(&url).json(&body))
            .await?;
        Self::item_to_file(&what, &b)
    }

    async fn check(&self) -> Result<()> {
        let what = format!("box check of folder {}", self.root);
        let url = format!("{}/folders/{}", self.api, self.root);
        self.call_ok(&what, || self.http.get(&url).query(&[("fields", "id")]))
            .await
            .map(|_| ())
    }
}

/// How reads of `file` are named in messages.
fn read_what(file: &RemoteFile) -> String {
    format!("box read of {}", file.name)
}
