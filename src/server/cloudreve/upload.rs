//! Uploads: sessions (`PUT /file/upload`), chunks (`POST /file/upload/{id}/{index}`),
//! cancel (`DELETE /file/upload`) and small whole-file writes (`PUT /file/content`).
//!
//! A session's chunks must arrive in order from 0 with the exact Content-Length; a chunk
//! already received may be sent again (it overwrites its own file, as the real local
//! driver rewrites the same byte range), which makes a retried chunk harmless. Each chunk
//! is streamed to `sessions/cloudreve/<id>/<index>`; after the last one the chunks are
//! concatenated into a temp file while hashing, committed as a blob, and only then is the
//! object row inserted (or updated in place for a new version) and the placeholder gone.
//!
//! Choices where the source leaves room: a missing `Content-Length` (and no
//! `X-Expected-Entity-Length`) is a parameter error 40001; `entity_type: "live_photo"`
//! is refused with 40001; cancelling an unknown session succeeds (it is already gone),
//! cancelling with a uri other than the session's is 40016.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::Extension;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::auth::Credentials;
use super::super::body::{body_to_file, drain, join_chunks, BodyError, BodyInfo, DRAIN_LIMIT};
use super::super::store::{now_ms, Object};
use super::super::{AppState, ConnKill, ServerState};
use super::paths::CrPath;
use super::{
    auth, bind, code, ensure_dirs, fault_json, file_json, new_entity, new_id, ok, ok_empty,
    query_map, resolve, storage_policy, uri_param, ApiError, ApiResult, Node, META_SESSION,
    POLICY_ID, PROTO, SESSION_TTL_SECS,
};

/// Most metadata entries one session may carry (the real binding limit).
const MAX_METADATA: usize = 256;

/// What a session was created with; never changes.
#[derive(Debug)]
pub struct SessionInfo {
    pub id: String,
    pub path: CrPath,
    pub parent_id: String,
    pub name: String,
    pub size: u64,
    pub chunk_size: u64,
    /// Unix seconds.
    pub expires: i64,
    pub mime_type: String,
    pub metadata: Map<String, Value>,
    pub last_modified_ms: i64,
    /// `entity_type: "version"`: a new version of the existing file (no placeholder).
    pub version: bool,
    /// Id the placeholder shows in listings.
    pub placeholder_id: String,
    pub created_ms: i64,
}

impl SessionInfo {
    /// How many chunks make the file (an empty file is one empty chunk).
    fn chunks(&self) -> u64 {
        if self.chunk_size == 0 || self.size == 0 {
            1
        } else {
            self.size.div_ceil(self.chunk_size)
        }
    }

    /// The placeholder's `FileResponse`.
    pub fn placeholder_json(&self) -> Value {
        let mut meta = self.metadata.clone();
        meta.insert(META_SESSION.to_string(), json!(self.id));
        json!({
            "type": 0,
            "id": self.placeholder_id,
            "name": self.name,
            "created_at": super::rfc3339(self.created_ms),
            "updated_at": super::rfc3339(self.created_ms),
            "size": self.size,
            "metadata": meta,
            "path": self.path.uri(),
            "owned": true,
        })
    }
}

/// Mutable progress of one session, locked while a chunk is being received.
#[derive(Debug, Default)]
pub struct Progress {
    /// Lowest chunk index not yet received.
    next_index: u64,
    /// Completed or cancelled: the session is gone.
    closed: bool,
}

#[derive(Clone)]
pub struct SessionEntry {
    pub info: Arc<SessionInfo>,
    progress: Arc<tokio::sync::Mutex<Progress>>,
}

/// Placeholders of open non-version sessions whose parent folder is `parent_id`.
pub fn placeholders_in(state: &ServerState, parent_id: &str) -> Vec<Arc<SessionInfo>> {
    let now = chrono::Utc::now().timestamp();
    state
        .cloudreve
        .lock()
        .values()
        .filter(|s| !s.info.version && s.info.expires > now && s.info.parent_id == parent_id)
        .map(|s| s.info.clone())
        .collect()
}

/// The open placeholder at `path`, if any.
pub fn placeholder_at(state: &ServerState, path: &CrPath) -> Option<Arc<SessionInfo>> {
    let now = chrono::Utc::now().timestamp();
    state
        .cloudreve
        .lock()
        .values()
        .find(|s| !s.info.version && s.info.expires > now && s.info.path == *path)
        .map(|s| s.info.clone())
}

/// Look a live session up; expired ones are dropped on the way.
fn session(state: &ServerState, id: &str) -> Option<SessionEntry> {
    let now = chrono::Utc::now().timestamp();
    let mut map = state.cloudreve.lock();
    let expired: Vec<String> = map
        .iter()
        .filter(|(_, s)| s.info.expires <= now)
        .map(|(k, _)| k.clone())
        .collect();
    for k in expired {
        map.remove(&k);
        remove_session_dir(state, &k);
    }
    map.get(id).cloned()
}

fn remove_session_dir(state: &ServerState, id: &str) {
    let dir = state.store.root().join("sessions").join(PROTO).join(id);
    let _ = std::fs::remove_dir_all(dir);
}

#[derive(Deserialize)]
struct CreateBody {
    uri: Option<String>,
    size: Option<i64>,
    last_modified: Option<i64>,
    mime_type: Option<String>,
    policy_id: Option<String>,
    metadata: Option<HashMap<String, String>>,
    entity_type: Option<String>,
}

/// `PUT /file/upload`: create a session and its locked placeholder.
pub async fn create_session(
    State(state): State<AppState>,
    creds: Credentials,
    body: Bytes,
) -> ApiResult {
    auth(&state, &creds)?;
    let req: CreateBody = bind(&body)?;
    let uri = req
        .uri
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::param("uri is required"))?;
    let size = req.size.unwrap_or(0);
    if size < 0 {
        return Err(ApiError::param("size must not be negative"));
    }
    let size = size as u64;
    let version = match req.entity_type.as_deref().unwrap_or("") {
        "" => false,
        "version" => true,
        other => {
            return Err(ApiError::param(format!(
                "entity_type {other:?} is not supported by this server"
            )))
        }
    };
    if let Some(p) = req.policy_id.as_deref().filter(|p| !p.is_empty()) {
        if p != POLICY_ID {
            return Err(ApiError::new(
                code::POLICY_NOT_ALLOWED,
                "Storage policy not allowed",
            ));
        }
    }
    let metadata = req.metadata.unwrap_or_default();
    if metadata.len() > MAX_METADATA {
        return Err(ApiError::param("too many metadata entries"));
    }
    let path = CrPath::parse(&uri)?;
    let (Some(name), Some(parent)) = (path.name().map(str::to_string), path.parent()) else {
        return Err(ApiError::param("cannot upload to the root folder"));
    };
    if size > state.max_file_size() {
        return Err(ApiError::new(code::FILE_TOO_LARGE, "File is too large"));
    }
    let chunk_size = state.opts.cloudreve_chunk_size;

    // Existence and lock checks and the insertion happen under the session lock, so two
    // racing creates for one uri cannot both win.
    let mut map = state.cloudreve.lock();
    let now = chrono::Utc::now().timestamp();
    if let Some(open) = map
        .values()
        .find(|s| s.info.expires > now && s.info.path == path)
    {
        // The second session meets the placeholder (40004), or the lock of a version.
        return Err(if version || open.info.version {
            ApiError::locked()
        } else {
            ApiError::exists()
        });
    }
    let parent_id = ensure_dirs(&state, &parent)?;
    match state.store.find_child(PROTO, &parent_id, &name, false)? {
        Some(o) if o.is_dir => return Err(ApiError::exists()),
        Some(_) if !version => return Err(ApiError::exists()),
        _ => {}
    }
    let id = uuid::Uuid::new_v4().to_string();
    let info = SessionInfo {
        id: id.clone(),
        path: path.clone(),
        parent_id,
        name,
        size,
        chunk_size,
        expires: now + SESSION_TTL_SECS,
        mime_type: req.mime_type.unwrap_or_default(),
        metadata: metadata.into_iter().map(|(k, v)| (k, json!(v))).collect(),
        last_modified_ms: req.last_modified.filter(|&t| t > 0).unwrap_or_else(now_ms),
        version,
        placeholder_id: new_id(&state)?,
        created_ms: now_ms(),
    };
    let answer = json!({
        "session_id": id,
        "upload_id": "",
        "chunk_size": chunk_size,
        "expires": info.expires,
        "storage_policy": storage_policy(),
        "uri": path.uri(),
        "callback_secret": uuid::Uuid::new_v4().simple().to_string(),
        "mime_type": info.mime_type,
    });
    map.insert(
        id.clone(),
        SessionEntry {
            info: Arc::new(info),
            progress: Default::default(),
        },
    );
    tracing::info!(session = %id, uri = %path.uri(), size, version, "cloudreve session created");
    Ok(ok(answer))
}

#[derive(Deserialize)]
struct CancelBody {
    id: Option<String>,
    uri: Option<String>,
}

/// `DELETE /file/upload {id, uri}`: drop the session, its chunks and its placeholder.
/// Idempotent: an unknown session is already gone.
pub async fn cancel_session(
    State(state): State<AppState>,
    creds: Credentials,
    body: Bytes,
) -> ApiResult {
    auth(&state, &creds)?;
    let req: CancelBody = bind(&body)?;
    let (Some(id), Some(uri)) = (
        req.id.filter(|s| !s.is_empty()),
        req.uri.filter(|s| !s.is_empty()),
    ) else {
        return Err(ApiError::param("id and uri are required"));
    };
    let path = CrPath::parse(&uri)?;
    let entry = session(&state, &id);
    if let Some(entry) = entry {
        if entry.info.path != path {
            return Err(ApiError::not_found());
        }
        let mut progress = entry.progress.lock().await;
        progress.closed = true;
        state.cloudreve.lock().remove(&id);
        remove_session_dir(&state, &id);
        tracing::info!(session = %id, "cloudreve session cancelled");
    }
    Ok(ok_empty())
}

/// The declared body length: `Content-Length`, or `X-Expected-Entity-Length`.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    [header::CONTENT_LENGTH.as_str(), "x-expected-entity-length"]
        .iter()
        .find_map(|h| headers.get(*h))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `POST /file/upload/{sessionId}/{index}`: one chunk.
pub async fn chunk(
    State(state): State<AppState>,
    creds: Credentials,
    Extension(kill): Extension<ConnKill>,
    Path((session_id, index)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let what = BodyRequest::Chunk {
        session_id: &session_id,
        index: &index,
    };
    body_request(&state, &creds, &kill, &headers, body, what).await
}

/// The two requests that carry file bytes.
enum BodyRequest<'a> {
    Chunk { session_id: &'a str, index: &'a str },
    Content { query: Option<&'a str> },
}

/// Around a request that carries file bytes: authentication, the injected faults, and the
/// body read to its end whatever the answer. A request refused before its body was read
/// still has it read (up to [`DRAIN_LIMIT`]) before the answer goes out: hyper closes a
/// connection whose body is left unread, and a client still sending a chunk would see a
/// broken pipe instead of the error code (a real server behind its reverse proxy answers
/// after the whole body).
async fn body_request(
    state: &AppState,
    creds: &Credentials,
    kill: &ConnKill,
    headers: &HeaderMap,
    body: Body,
    what: BodyRequest<'_>,
) -> ApiResult {
    let mut body = Some(body);
    let r = body_request_inner(state, creds, kill, headers, &mut body, what).await;
    if let Some(b) = body {
        drain(b, DRAIN_LIMIT).await;
    }
    r
}

async fn body_request_inner(
    state: &AppState,
    creds: &Credentials,
    kill: &ConnKill,
    headers: &HeaderMap,
    body: &mut Option<Body>,
    what: BodyRequest<'_>,
) -> ApiResult {
    auth(state, creds)?;
    let drop_after = match state.upload_fault(kill, fault_json).await {
        Ok(d) => d,
        Err(answer) => return Ok(answer),
    };
    let r = match what {
        BodyRequest::Chunk { session_id, index } => {
            chunk_inner(state, session_id, index, headers, body).await
        }
        BodyRequest::Content { query } => put_content_inner(state, query, headers, body).await,
    };
    if drop_after {
        return Ok(kill.drop_connection().await);
    }
    r
}

async fn chunk_inner(
    state: &ServerState,
    session_id: &str,
    index: &str,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> ApiResult {
    let index: u64 = index
        .parse()
        .map_err(|_| ApiError::param("invalid chunk index"))?;
    let entry =
        session(state, session_id).ok_or_else(|| ApiError::new(code::SESSION_EXPIRED, ""))?;
    let info = entry.info.clone();
    let declared = declared_length(headers)
        .ok_or_else(|| ApiError::param("invalid content length: Content-Length is required"))?;
    if info.chunk_size == 0 && index > 0 {
        return Err(ApiError::new(
            code::INVALID_CHUNK_INDEX,
            "Chunk index cannot be greater than 0",
        ));
    }
    if (info.size > 0 && index.saturating_mul(info.chunk_size) >= info.size)
        || (info.size == 0 && index > 0)
    {
        return Err(ApiError::new(
            code::INVALID_CHUNK_INDEX,
            "Chunk offset cannot be greater than file size",
        ));
    }
    let last = index + 1 == info.chunks();
    let expected = if last {
        info.size - index * info.chunk_size
    } else {
        info.chunk_size
    };
    if declared != expected {
        return Err(ApiError::new(
            code::INVALID_CONTENT_LENGTH,
            format!("Invalid Content-Length (expected: {expected})"),
        ));
    }
    // One chunk at a time per session: the next request waits for this one.
    let mut progress = entry.progress.lock().await;
    if progress.closed {
        return Err(ApiError::new(code::SESSION_EXPIRED, ""));
    }
    if index > progress.next_index {
        return Err(ApiError::new(
            code::INVALID_CHUNK_INDEX,
            format!(
                "Chunks must be uploaded in order (expected chunk {})",
                progress.next_index
            ),
        ));
    }
    let dir = state.store.session_dir(PROTO, session_id)?;
    let part = dir.join(format!("{index}.part"));
    let got = receive_exact(state, body, &part, expected).await?;
    std::fs::rename(&part, dir.join(index.to_string()))?;
    progress.next_index = progress.next_index.max(index + 1);
    if progress.next_index < info.chunks() {
        return Ok(ok_empty());
    }
    // Last chunk in: complete now, as the local policy does. A file of one chunk is that
    // chunk, already hashed as it arrived.
    let single = (info.chunks() == 1).then_some(got);
    let result = complete(state, &info, &dir, single).await;
    progress.closed = true;
    state.cloudreve.lock().remove(session_id);
    remove_session_dir(state, session_id);
    result?;
    Ok(ok_empty())
}

/// Stream a body of exactly `len` bytes into a new file at `path` (50004 otherwise); the
/// body is taken, so the caller does not drain it.
async fn receive_exact(
    state: &ServerState,
    body: &mut Option<Body>,
    path: &std::path::Path,
    len: u64,
) -> Result<BodyInfo, ApiError> {
    let mismatch = || {
        ApiError::new(
            code::IO_FAILED,
            "Uploaded data does not match purposed size",
        )
    };
    let Some(body) = body.take() else {
        return Err(mismatch());
    };
    let got = match body_to_file(body, path, len, &state.throttle).await {
        Ok(b) => b,
        Err(BodyError::Io(x)) => return Err(x.into()),
        Err(BodyError::TooLarge(_) | BodyError::Aborted(_)) => return Err(mismatch()),
    };
    state.received(got.len);
    if got.len != len {
        let _ = std::fs::remove_file(path);
        return Err(mismatch());
    }
    Ok(got)
}

/// Concatenate the chunks, commit the blob, then insert or update the object.
async fn complete(
    state: &ServerState,
    info: &SessionInfo,
    dir: &std::path::Path,
    single: Option<BodyInfo>,
) -> Result<Object, ApiError> {
    let temp = state.store.temp_path();
    let parts = (0..info.chunks())
        .map(|i| dir.join(i.to_string()))
        .collect();
    let body = join_chunks(parts, &temp, single).await?;
    if body.len != info.size {
        let _ = std::fs::remove_file(&temp);
        return Err(ApiError::new(
            code::IO_FAILED,
            "Uploaded data does not match purposed size",
        ));
    }
    let blob = state.store.commit_blob(&temp)?;
    let o = store_file(
        state,
        &info.parent_id,
        &info.name,
        &body,
        blob,
        info.last_modified_ms,
        &info.mime_type,
        Some(&info.metadata),
    )?;
    tracing::info!(session = %info.id, uri = %info.path.uri(), size = o.size, "cloudreve upload complete");
    Ok(o)
}

/// Insert a new file, or give the existing file at that name a new entity in place.
#[allow(clippy::too_many_arguments)]
fn store_file(
    state: &ServerState,
    parent_id: &str,
    name: &str,
    body: &BodyInfo,
    blob: String,
    modified_ms: i64,
    mime_type: &str,
    metadata: Option<&Map<String, Value>>,
) -> Result<Object, ApiError> {
    let entity = new_entity(state)?;
    let existing = state.store.find_child(PROTO, parent_id, name, false)?;
    match existing {
        Some(o) if o.is_dir => {
            let _ = std::fs::remove_file(state.store.blob_path(&blob));
            Err(ApiError::exists())
        }
        Some(mut o) => {
            o.size = body.len;
            o.sha1 = body.sha1.clone();
            o.md5 = body.md5.clone();
            o.blob = Some(blob);
            o.modified_ms = modified_ms;
            let mut extra = o.extra.as_object().cloned().unwrap_or_default();
            extra.insert("entity".into(), json!(entity));
            if !mime_type.is_empty() {
                extra.insert("mime_type".into(), json!(mime_type));
            }
            if let Some(m) = metadata.filter(|m| !m.is_empty()) {
                let mut all = extra
                    .get("metadata")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                all.extend(m.clone());
                extra.insert("metadata".into(), Value::Object(all));
            }
            o.extra = Value::Object(extra);
            state.store.update(&o)?;
            Ok(o)
        }
        None => {
            let mut o = Object::file(
                PROTO,
                new_id(state)?,
                parent_id.to_string(),
                name.to_string(),
                body,
                blob,
            );
            o.modified_ms = modified_ms;
            o.extra = json!({
                "entity": entity,
                "mime_type": mime_type,
                "metadata": metadata.cloned().unwrap_or_default(),
            });
            state.store.insert(&o)?;
            Ok(o)
        }
    }
}

/// `PUT /file/content?uri=`: create or overwrite a file with the whole body.
pub async fn put_content(
    State(state): State<AppState>,
    creds: Credentials,
    Extension(kill): Extension<ConnKill>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let what = BodyRequest::Content {
        query: q.as_deref(),
    };
    body_request(&state, &creds, &kill, &headers, body, what).await
}

async fn put_content_inner(
    state: &ServerState,
    q: Option<&str>,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> ApiResult {
    let q = query_map(q);
    let path = uri_param(&q)?;
    let (Some(name), Some(parent)) = (path.name().map(str::to_string), path.parent()) else {
        return Err(ApiError::param("cannot write the root folder"));
    };
    let len = declared_length(headers)
        .ok_or_else(|| ApiError::param("invalid content length: Content-Length is required"))?;
    if len > state.max_file_size() {
        return Err(ApiError::new(code::FILE_TOO_LARGE, "File is too large"));
    }
    if state.cloudreve.locked_under(&path) {
        return Err(ApiError::locked());
    }
    if let Some(Node::Obj(o)) = resolve(state, &path)? {
        if o.is_dir {
            return Err(ApiError::exists());
        }
    }
    let temp = state.store.temp_path();
    let got = receive_exact(state, body, &temp, len).await?;
    // The lock may have been taken while the body streamed in.
    if state.cloudreve.locked_under(&path) {
        let _ = std::fs::remove_file(&temp);
        return Err(ApiError::locked());
    }
    let parent_id = ensure_dirs(state, &parent)?;
    let blob = state.store.commit_blob(&temp)?;
    let mime = super::super::body::content_type_for(&name);
    let o = store_file(state, &parent_id, &name, &got, blob, now_ms(), mime, None)?;
    Ok(ok(file_json(&o, &path)))
}
