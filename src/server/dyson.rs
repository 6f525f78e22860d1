//! The Solar Network / DysonNetwork "Drive" file API of `uploadfs serve`, served at both
//! `/dyson/api` (the service's own `/api/files/...`) and `/dyson/drive` (the public
//! gateway's `/drive/files/...`). Spec: drive-multipart-upload.md, PROTOCOLS.md §5 (the
//! Sep–Oct 2025 API).
//!
//! Upload: `POST /files/upload/create` answers either `file_exists: true` with an already
//! stored file whose MD5 equals the request's `hash` (global dedupe), or a task id with
//! `chunk_size`/`chunks_count`. Chunks arrive as multipart part `chunk` at
//! `POST /files/upload/chunk/{task}/{index}` (any order, re-upload overwrites, 6 MiB limit
//! per request including multipart overhead) and are written to
//! `sessions/dyson/<task>/<index>.chunk` through a temp file + rename. `POST
//! /files/upload/complete/{task}` concatenates chunks `0..chunks_count`, hashes the result
//! (MD5 is the file's `hash`), commits the blob and only then inserts the row. A missing
//! chunk answers `CHUNK_MISSING` and deletes the whole task, as the real server does. Tasks
//! live on disk (`task.json`), so they survive restarts; there is no expiry (as in that
//! version).
//!
//! JSON is snake_case; errors are `ApiError` `{code, message, status, detail?, errors?}`,
//! except where ASP.NET itself answers: model-binding failures use RFC 7807
//! `ValidationProblemDetails`, and `GET /files/{id}` / `/info` answer 404 with the plain
//! text "File not found.".
//!
//! Emulator choices: `hash` must be 32 lowercase hex characters (400 `VALIDATION_ERROR`
//! otherwise; the real server stores anything but only dedupes on that form); the only
//! pool is [`POOL_ID`] (another GUID is 404 `Pool`); encryption is not offered (403); a
//! chunk request over 6 MiB answers 413 `PAYLOAD_TOO_LARGE`; downloads are streamed
//! directly (200/206, 416) instead of redirecting to storage; files belong to the one
//! account [`ACCOUNT_ID`] that the server token stands for.

// Helpers return ready-made error responses (`Result<_, Response>`) so handlers can
// answer with `?`-style early returns; those errors are the cold path, so their size
// does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use futures_util::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::body::{serve_file, BadRange, FileAnswer};
use super::faults::{Fault, FaultOp};
use super::store::{now_ms, Object};
use super::{fault_status, AppState, ConnKill, ServerState};

const PROTO: &str = "dyson";
/// The account the server token authenticates as.
pub const ACCOUNT_ID: &str = "3f6d2a8e-5b1c-4e7f-9a0d-2c4b6e8f1a3d";
/// The one storage pool (the server's `Storage:PreferredRemote`).
pub const POOL_ID: &str = "7c1e9b42-0d3f-4a5e-8b6c-9f2a1d4e3b50";
/// Chunk size when the create request names none (`5 MiB`, `FileUploadController`).
pub const DEFAULT_CHUNK_SIZE: u64 = 5 * 1024 * 1024;
/// `[RequestSizeLimit(DefaultChunkSize + 1 MiB)]` on the chunk action: the whole request,
/// multipart overhead included.
pub const MAX_CHUNK_REQUEST: u64 = DEFAULT_CHUNK_SIZE + 1024 * 1024;
/// An oversized chunk request is still read (and dropped) up to this many bytes, so the
/// client sees the 413 instead of a broken pipe while it is still sending.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// Longest file name accepted, bytes.
const MAX_NAME_BYTES: usize = 255;
/// Length of a nanoid (task and file ids).
const NANOID_LEN: usize = 21;
const NANOID_ALPHABET: &[u8] = b"_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
/// Default page of `GET /files/me`.
const DEFAULT_TAKE: u64 = 20;

/// Upload tasks seen by this process (the tasks themselves live on disk).
#[derive(Default)]
pub struct ProtoState {
    tasks: Mutex<HashSet<String>>,
}

impl ProtoState {
    /// Number of upload tasks created or touched and not yet completed.
    pub fn open_sessions(&self) -> usize {
        self.tasks().len()
    }
    /// Forget the known upload tasks (control `forget_sessions`); the caller removes their
    /// directories, so their chunks and completion answer 404. Returns their ids.
    pub fn clear_sessions(&self) -> Vec<String> {
        self.tasks().drain().collect()
    }
    fn tasks(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/files/upload/create", post(create))
        .route("/files/upload/chunk/{task}/{index}", post(chunk))
        .route("/files/upload/complete/{task}", post(complete))
        .route("/files/me", get(list_mine))
        .route("/files/{id}", get(download).delete(delete_file))
        .route("/files/{id}/info", get(info))
        .route("/files/{id}/name", patch(rename))
        .fallback(|| async {
            api_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource was not found.",
                None,
            )
        })
        // Chunk bodies are counted and limited by the handler itself.
        .layer(DefaultBodyLimit::disable())
}

/// `ApiError` (`DysonNetwork.Shared/Http/ApiError.cs`); null members are omitted.
fn api_error(status: StatusCode, code: &str, message: &str, detail: Option<&str>) -> Response {
    (status, Json(api_error_json(status, code, message, detail))).into_response()
}

fn api_error_json(status: StatusCode, code: &str, message: &str, detail: Option<&str>) -> Value {
    let mut v = json!({"code": code, "message": message, "status": status.as_u16()});
    if let Some(d) = detail {
        v["detail"] = json!(d);
    }
    v
}

/// The error body of an injected 503/429, with the matching status inside.
fn fault_json(f: Fault) -> Value {
    match f {
        Fault::TooMany => api_error_json(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            "Too many requests.",
            None,
        ),
        _ => api_error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "The service is temporarily unavailable.",
            None,
        ),
    }
}

fn not_found(what: &str) -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!("The requested resource '{what}' was not found."),
        Some(what),
    )
}

fn validation(field: &str, message: &str) -> Response {
    let mut v = api_error_json(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message, None);
    v["errors"] = json!({ field: [message] });
    (StatusCode::BAD_REQUEST, Json(v)).into_response()
}

/// ASP.NET's automatic 400 for a model-binding failure (RFC 7807).
fn problem(field: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/problem+json")],
        json!({
            "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
            "title": "One or more validation errors occurred.",
            "status": 400,
            "errors": { field: [message] },
            "traceId": trace_id(),
        })
        .to_string(),
    )
        .into_response()
}

fn trace_id() -> String {
    format!("00-{}-01", uuid::Uuid::new_v4().simple())
}

fn file_not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "File not found.",
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "dyson: internal error");
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
        "An internal error occurred.",
        None,
    )
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return internal(e),
        }
    };
}

/// The token from `Authorization: Bearer|AtField`, `?tk=` or the `AuthToken` cookie.
fn authenticate(state: &ServerState, headers: &HeaderMap, uri: &Uri) -> Result<(), Response> {
    let unauthorized = || {
        api_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "You need to be logged in to perform this action.",
            None,
        )
    };
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or_default().trim();
        let tok = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("AtField "));
        return match tok {
            Some(t) if state.token_matches(t.trim()) => Ok(()),
            _ => Err(unauthorized()),
        };
    }
    if let Some(q) = uri.query() {
        if let Some((_, tk)) = url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "tk") {
            return if state.token_matches(&tk) {
                Ok(())
            } else {
                Err(unauthorized())
            };
        }
    }
    let cookie = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == "AuthToken")
        .map(|(_, v)| v.trim().to_string());
    match cookie {
        Some(t) if state.token_matches(&t) => Ok(()),
        _ => Err(unauthorized()),
    }
}

macro_rules! auth {
    ($state:expr, $headers:expr, $uri:expr) => {
        if let Err(r) = authenticate(&$state, &$headers, &$uri) {
            return r;
        }
    };
}

fn nanoid() -> String {
    let mut rng = rand::thread_rng();
    (0..NANOID_LEN)
        .map(|_| NANOID_ALPHABET[rng.gen_range(0..NANOID_ALPHABET.len())] as char)
        .collect()
}

fn is_nanoid_like(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| NANOID_ALPHABET.contains(&b))
}

fn iso(ms: i64) -> Value {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|d| json!(d.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)))
        .unwrap_or(Value::Null)
}

fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("The file name is empty.")
    } else if name.len() > MAX_NAME_BYTES {
        Some("The file name is longer than 255 bytes.")
    } else if name.contains(['/', '\\', '\0']) {
        Some("The file name contains a forbidden character.")
    } else if name == "." || name == ".." {
        Some("The file name is not allowed.")
    } else {
        None
    }
}

/// A stored file as `CloudFile` JSON. `just_completed`: the completion answer, where the
/// real server has not yet set `pool_id` (its background job does that later).
fn cloud_file(o: &Object, just_completed: bool) -> Value {
    let pool = if just_completed {
        Value::Null
    } else {
        o.extra["pool_id"].clone()
    };
    json!({
        "id": o.id,
        "name": o.name,
        "description": null,
        "file_meta": {},
        "user_meta": null,
        "sensitive_marks": [],
        "mime_type": o.extra["mime_type"],
        "hash": o.md5,
        "expired_at": null,
        "size": o.size,
        "uploaded_at": null,
        "has_compression": false,
        "has_thumbnail": false,
        "is_encrypted": false,
        "pool": null,
        "pool_id": pool,
        "bundle_id": null,
        "is_marked_recycle": false,
        "storage_id": o.id,
        "storage_url": null,
        "references": [],
        "account_id": o.extra["account_id"],
        "resource_identifier": format!("file:{}", o.id),
        "created_at": iso(o.created_ms),
        "updated_at": iso(o.modified_ms),
        "deleted_at": null,
    })
}

/// What `task.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Task {
    file_name: String,
    file_size: u64,
    content_type: String,
    hash: String,
    pool_id: String,
    chunk_size: u64,
    chunks_count: u64,
    account_id: String,
}

#[derive(Deserialize)]
struct CreateBody {
    hash: Option<String>,
    file_name: Option<String>,
    file_size: Option<i64>,
    content_type: Option<String>,
    pool_id: Option<String>,
    encrypt_password: Option<String>,
    chunk_size: Option<i64>,
}

/// Where a task's files live (not created); `None` for ids that cannot be ours.
fn task_dir(state: &ServerState, task: &str) -> Option<PathBuf> {
    is_nanoid_like(task).then(|| state.store.root().join("sessions").join(PROTO).join(task))
}

async fn load_task(state: &ServerState, task: &str) -> Result<(PathBuf, Task), Response> {
    let dir = task_dir(state, task).ok_or_else(|| not_found("Upload task"))?;
    if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
        return Err(not_found("Upload task"));
    }
    let raw = match tokio::fs::read(dir.join("task.json")).await {
        Ok(r) => r,
        Err(_) => return Err(not_found("Upload task metadata")),
    };
    match serde_json::from_slice::<Task>(&raw) {
        Ok(t) => Ok((dir, t)),
        Err(_) => Err(api_error(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "Invalid task metadata.",
            None,
        )),
    }
}

/// `POST /files/upload/create`.
async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    body: axum::body::Bytes,
) -> Response {
    auth!(state, headers, uri);
    let b: CreateBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return problem("request", &format!("The request body is invalid: {e}")),
    };
    let hash = b.hash.unwrap_or_default();
    if hash.len() != 32 || !hash.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return validation(
            "hash",
            "The hash must be the lowercase hex MD5 of the file (32 characters).",
        );
    }
    let name = b.file_name.unwrap_or_default();
    if let Some(why) = bad_name(&name) {
        return validation("file_name", why);
    }
    let size = match b.file_size {
        Some(s) if s >= 0 => s as u64,
        _ => return validation("file_size", "The file size must be zero or more."),
    };
    let chunk_size = match b.chunk_size {
        None => DEFAULT_CHUNK_SIZE,
        Some(c) if c > 0 => c as u64,
        Some(_) => return validation("chunk_size", "The chunk size must be positive."),
    };
    let pool_id = match b.pool_id.as_deref() {
        None => POOL_ID.to_string(),
        Some(p) => match uuid::Uuid::parse_str(p) {
            Ok(u) if u.to_string() == POOL_ID => POOL_ID.to_string(),
            Ok(_) => return not_found("Pool"),
            Err(_) => return validation("pool_id", "The pool id must be a GUID."),
        },
    };
    if b.encrypt_password.is_some_and(|p| !p.is_empty()) {
        return api_error(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "File encryption is not allowed in this pool.",
            None,
        );
    }
    let max = state.max_file_size();
    if size > max {
        return api_error(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            &format!("File size {size} is larger than the pool's maximum file size {max}."),
            None,
        );
    }
    if let Some(existing) = tri!(state.store.find_by_md5(PROTO, &hash)) {
        return Json(json!({
            "file_exists": true, "file": cloud_file(&existing, false),
            "task_id": null, "chunk_size": null, "chunks_count": null,
        }))
        .into_response();
    }
    let chunks_count = size.div_ceil(chunk_size);
    if chunks_count > i32::MAX as u64 {
        return validation("chunk_size", "The chunk size is too small for this file.");
    }
    let content_type = b
        .content_type
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "application/octet-stream".to_string());
    let task_id = nanoid();
    let task = Task {
        file_name: name,
        file_size: size,
        content_type,
        hash,
        pool_id,
        chunk_size,
        chunks_count,
        account_id: ACCOUNT_ID.to_string(),
    };
    let dir = tri!(state.store.session_dir(PROTO, &task_id));
    tri!(tokio::fs::write(dir.join("task.json"), tri!(serde_json::to_vec(&task))).await);
    state.dyson.tasks().insert(task_id.clone());
    tracing::info!(task = %task_id, name = %task.file_name, size, chunks_count, "dyson: task created");
    Json(json!({
        "file_exists": false, "file": null, "task_id": task_id,
        "chunk_size": chunk_size, "chunks_count": chunks_count,
    }))
    .into_response()
}

fn too_large() -> Response {
    api_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        &format!("Request body too large. The max request body size is {MAX_CHUNK_REQUEST} bytes."),
        None,
    )
}

/// `POST /files/upload/chunk/{task}/{index}`: multipart file part `chunk`.
async fn chunk(
    State(state): State<AppState>,
    Path((task, index)): Path<(String, String)>,
    Extension(kill): Extension<ConnKill>,
    req: Request,
) -> Response {
    auth!(state, req.headers(), req.uri());
    let Ok(index) = index.parse::<i64>() else {
        return problem("chunkIndex", &format!("The value '{index}' is not valid."));
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > MAX_CHUNK_REQUEST) {
        if n <= DRAIN_LIMIT {
            let mut body = req.into_body().into_data_stream();
            while let Some(Ok(_)) = body.next().await {}
        }
        return too_large();
    }
    let dir = match load_task(&state, &task).await {
        Ok((dir, _)) => dir,
        Err(r) => return r,
    };
    state.dyson.tasks().insert(task.clone());
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_form {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(header::CONTENT_TYPE, "application/problem+json")],
            json!({
                "type": "https://tools.ietf.org/html/rfc9110#section-15.5.16",
                "title": "Unsupported Media Type",
                "status": 415,
                "traceId": trace_id(),
            })
            .to_string(),
        )
            .into_response();
    }
    let mut drop_after = false;
    if let Some(f) = state.fault(FaultOp::Upload) {
        if let Some(r) = fault_status(f, fault_json(f)) {
            return r;
        }
        if f == Fault::DropBefore {
            return kill.drop_connection().await;
        }
        drop_after = true;
    }
    // Count the raw body (multipart overhead included) against the request limit, also
    // when no Content-Length was sent.
    let over = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    let counted = {
        let over = over.clone();
        let state = state.clone();
        let mut total = 0u64;
        // Past the limit the rest is drained and dropped (the multipart parser then sees
        // a truncated body), up to DRAIN_LIMIT where the stream fails outright.
        body.into_data_stream().filter_map(move |r| {
            let item = match r {
                Ok(b) => {
                    total += b.len() as u64;
                    state
                        .counters
                        .bytes_received
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    if total <= MAX_CHUNK_REQUEST {
                        Some(Ok(b))
                    } else {
                        over.store(true, Ordering::Relaxed);
                        (total > DRAIN_LIMIT)
                            .then(|| Err(std::io::Error::other("request body too large")))
                    }
                }
                Err(e) => Some(Err(std::io::Error::other(e))),
            };
            std::future::ready(item)
        })
    };
    let req = Request::from_parts(parts, Body::from_stream(counted));
    let mut mp = match Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(_) => return problem("Chunk", "The multipart body has no valid boundary."),
    };
    let temp = dir.join(format!(".{index}.{}.part", uuid::Uuid::new_v4().simple()));
    let got = receive_chunk(&state, &mut mp, &temp).await;
    let cleanup = || async {
        let _ = tokio::fs::remove_file(&temp).await;
    };
    if over.load(Ordering::Relaxed) {
        cleanup().await;
        return too_large();
    }
    match got {
        Ok(true) => {}
        Ok(false) => {
            cleanup().await;
            return problem("Chunk", "The Chunk field is required.");
        }
        Err(r) => {
            cleanup().await;
            return r;
        }
    }
    // Overwrite atomically: a re-upload replaces the chunk, a cut one never lands.
    if tokio::fs::rename(&temp, dir.join(format!("{index}.chunk")))
        .await
        .is_err()
    {
        cleanup().await;
        // The task was completed or deleted meanwhile.
        return not_found("Upload task");
    }
    if drop_after {
        return kill.drop_connection().await;
    }
    StatusCode::OK.into_response()
}

/// Stream the first file part named `chunk` (ASP.NET binds names case-insensitively) to
/// `temp`; other parts are read and dropped. `Ok(false)`: no such part.
async fn receive_chunk(
    state: &ServerState,
    mp: &mut Multipart,
    temp: &FsPath,
) -> Result<bool, Response> {
    let mut got = false;
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(got),
            Err(e) => {
                return Err(problem(
                    "Chunk",
                    &format!("The multipart body is invalid: {e}"),
                ))
            }
        };
        let wanted = !got
            && field.file_name().is_some()
            && field
                .name()
                .is_some_and(|n| n.eq_ignore_ascii_case("chunk"));
        let mut file = if wanted {
            Some(tokio::fs::File::create(temp).await.map_err(internal)?)
        } else {
            None
        };
        loop {
            match field.chunk().await {
                Ok(Some(c)) => {
                    state.throttle.take(c.len() as u64).await;
                    if let Some(f) = file.as_mut() {
                        f.write_all(&c).await.map_err(internal)?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(problem(
                        "Chunk",
                        &format!("The multipart body is invalid: {e}"),
                    ))
                }
            }
        }
        if let Some(mut f) = file {
            f.flush().await.map_err(internal)?;
            got = true;
        }
    }
}

/// `POST /files/upload/complete/{task}`.
async fn complete(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(task_id): Path<String>,
) -> Response {
    auth!(state, headers, uri);
    let (dir, task) = match load_task(&state, &task_id).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // Take the task out of reach first: concurrent completes and late chunks now see 404.
    let work = dir.with_file_name(format!(
        ".completing-{task_id}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    if tokio::fs::rename(&dir, &work).await.is_err() {
        return not_found("Upload task");
    }
    state.dyson.tasks().remove(&task_id);
    let result = merge(&state, &work, &task).await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    let (temp, info) = match result {
        Ok(v) => v,
        Err(r) => return r,
    };
    let blob = match state.store.commit_blob(&temp) {
        Ok(b) => b,
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return internal(e);
        }
    };
    let mut o = Object::file(PROTO, nanoid(), String::new(), task.file_name, &info, blob);
    o.extra = json!({
        "account_id": task.account_id,
        "mime_type": task.content_type,
        "pool_id": task.pool_id,
    });
    tri!(state.store.insert(&o));
    tracing::info!(task = %task_id, id = %o.id, size = o.size, "dyson: file stored");
    Json(cloud_file(&o, true)).into_response()
}

/// Concatenate chunks `0..chunks_count` of the task in `dir` into a temp file.
async fn merge(
    state: &ServerState,
    dir: &FsPath,
    task: &Task,
) -> Result<(PathBuf, super::body::BodyInfo), Response> {
    for i in 0..task.chunks_count {
        if !tokio::fs::try_exists(dir.join(format!("{i}.chunk")))
            .await
            .unwrap_or(false)
        {
            return Err(api_error(
                StatusCode::BAD_REQUEST,
                "CHUNK_MISSING",
                &format!("Chunk {i} is missing."),
                None,
            ));
        }
    }
    let temp = state.store.temp_path();
    if task.chunks_count == 1 {
        // One chunk is the whole file: hash it and move it, instead of copying it into a
        // new file (a file created and one deleted less per small upload).
        let chunk = dir.join("0.chunk");
        let moved = async {
            let info = super::body::hash_file(&chunk).await?;
            tokio::fs::rename(&chunk, &temp).await?;
            Ok::<_, std::io::Error>(info)
        }
        .await;
        return match moved {
            Ok(info) => Ok((temp, info)),
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                Err(internal(e))
            }
        };
    }
    let res: std::io::Result<super::body::BodyInfo> = async {
        let parts = (0..task.chunks_count).map(|i| dir.join(format!("{i}.chunk")));
        super::body::concat_files(parts, &temp).await
    }
    .await;
    match res {
        Ok(info) => Ok((temp, info)),
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            Err(internal(e))
        }
    }
}

/// A file by id; `/files/{id}.{ext}` is accepted too (ids never contain a dot).
fn lookup(state: &ServerState, id: &str) -> Result<Option<Object>, Response> {
    let id = id.split('.').next().unwrap_or_default();
    if !is_nanoid_like(id) {
        return Ok(None);
    }
    state.store.get(PROTO, id).map_err(internal)
}

fn owned(o: &Object) -> bool {
    o.extra["account_id"].as_str() == Some(ACCOUNT_ID)
}

#[derive(Deserialize)]
struct DownloadQuery {
    download: Option<bool>,
}

/// `GET /files/{id}`: the content (200, or 206 for a single range; 416 when unsatisfiable).
async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
    Extension(kill): Extension<ConnKill>,
) -> Response {
    auth!(state, headers, uri);
    let o = match lookup(&state, &id) {
        Ok(Some(o)) => o,
        Ok(None) => return file_not_found(),
        Err(r) => return r,
    };
    if let Some(f) = state.fault(FaultOp::Download) {
        if let Some(r) = fault_status(f, fault_json(f)) {
            return r;
        }
        return kill.drop_connection().await;
    }
    let Some(blob) = o.blob.as_deref() else {
        return internal("file without blob");
    };
    let mime = o.extra["mime_type"]
        .as_str()
        .unwrap_or("application/octet-stream")
        .to_string();
    let kind = if q.download == Some(true) {
        "attachment"
    } else {
        "inline"
    };
    let enc = percent_encoding::utf8_percent_encode(&o.name, percent_encoding::NON_ALPHANUMERIC);
    serve_file(
        &headers,
        FileAnswer {
            path: &state.store.blob_path(blob),
            size: o.size,
            content_type: &mime,
            extra: &[(
                header::CONTENT_DISPOSITION,
                format!("{kind}; filename*=UTF-8''{enc}"),
            )],
            bad_range: BadRange::Refuse,
            drop_midway: false,
        },
        Arc::clone(&state.throttle),
    )
    .await
}

/// `GET /files/{id}/info`.
async fn info(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    auth!(state, headers, uri);
    match lookup(&state, &id) {
        Ok(Some(o)) => Json(cloud_file(&o, false)).into_response(),
        Ok(None) => file_not_found(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
struct MeQuery {
    offset: Option<String>,
    take: Option<String>,
    pool: Option<String>,
}

/// `GET /files/me?offset=&take=&pool=`: newest first, total in `X-Total`.
async fn list_mine(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Query(q): Query<MeQuery>,
) -> Response {
    auth!(state, headers, uri);
    let num = |v: Option<&str>, default: u64, field: &str| -> Result<u64, Response> {
        match v.filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(s) => s
                .parse::<u64>()
                .map_err(|_| problem(field, &format!("The value '{s}' is not valid."))),
        }
    };
    let offset = match num(q.offset.as_deref(), 0, "offset") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let take = match num(q.take.as_deref(), DEFAULT_TAKE, "take") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let pool = match q.pool.as_deref().filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => match uuid::Uuid::parse_str(p) {
            Ok(u) => Some(u.to_string()),
            Err(_) => return problem("pool", &format!("The value '{p}' is not valid.")),
        },
    };
    let mut mine: Vec<Object> = tri!(state.store.all(PROTO))
        .into_iter()
        .filter(owned)
        .filter(|o| {
            pool.as_deref()
                .is_none_or(|p| o.extra["pool_id"].as_str() == Some(p))
        })
        .collect();
    // Insertion order reversed = newest first, stable for equal timestamps.
    mine.reverse();
    let total = mine.len();
    let page: Vec<Value> = mine
        .iter()
        .skip(offset.min(usize::MAX as u64) as usize)
        .take(take.min(usize::MAX as u64) as usize)
        .map(|o| cloud_file(o, false))
        .collect();
    let mut resp = Json(page).into_response();
    resp.headers_mut()
        .insert("x-total", HeaderValue::from(total as u64));
    resp
}

/// `DELETE /files/{id}`: owner only, 204.
async fn delete_file(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
) -> Response {
    auth!(state, headers, uri);
    match lookup(&state, &id) {
        Ok(Some(o)) if owned(&o) => {
            tri!(state.store.delete(PROTO, &o.id));
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(_) => not_found("File"),
        Err(r) => r,
    }
}

/// `PATCH /files/{id}/name` with a JSON string body.
async fn rename(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    auth!(state, headers, uri);
    let Ok(name) = serde_json::from_slice::<String>(&body) else {
        return problem("name", "A JSON string body is required.");
    };
    if let Some(why) = bad_name(&name) {
        return validation("name", why);
    }
    let mut o = match lookup(&state, &id) {
        Ok(Some(o)) if owned(&o) => o,
        Ok(_) => return not_found("File"),
        Err(r) => return r,
    };
    o.name = name;
    o.modified_ms = now_ms();
    tri!(state.store.update(&o));
    Json(cloud_file(&o, false)).into_response()
}
