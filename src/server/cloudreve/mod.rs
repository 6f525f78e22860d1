//! The Cloudreve v4 protocol of `uploadfs serve`, nested at `/cloudreve/api/v4`.
//!
//! Like the real service, every API answer is HTTP 200 with the envelope
//! `{code, data?, msg, correlation_id?}` (success is `{"code":0,"msg":""}`); only the
//! signed content URL answers with real HTTP statuses (200/206/416, 403 on a bad sign).
//! Every API endpoint but login/refresh/ping needs `Authorization: Bearer <token>`.
//!
//! Files live in the shared [`Store`](super::store::Store) as a tree: each object's
//! `parent` is its folder's id (`""` for the root `cloudreve://my`), `extra` holds the
//! user metadata, the MIME type and the current entity id (the id signed URLs point at).
//! Upload sessions and their placeholders live only in memory ([`ProtoState`]): a
//! placeholder is listed at the session's uri (declared size, metadata
//! `sys:upload_session_id`) and locks that path, but never reaches the store, so the store
//! only ever holds complete files. Sessions do not survive a restart (a chunk for a lost
//! session answers 40011, as an expired one does).
//!
//! Submodules: `upload` (sessions, chunks, `PUT /file/content`), `files` (list, info,
//! delete, create, rename, move, signed URLs and the content endpoint), `paths` (the
//! `cloudreve://my/...` uri grammar and name rules).

mod files;
mod paths;
mod upload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::auth::Credentials;
use super::faults::Fault;
use super::store::{Object, StoreError};
use super::{AppState, ServerState};
use paths::CrPath;
use upload::SessionEntry;

/// Where `super::router` nests this protocol (signed URLs are absolute and need it).
pub const PREFIX: &str = "/cloudreve/api/v4";
/// The protocol name in the store.
pub const PROTO: &str = "cloudreve";
/// Hashid of the one storage policy (the default local policy).
pub const POLICY_ID: &str = "J7uV";
/// Largest `page_size` of a listing (`props.max_page_size`, the real default).
pub const MAX_PAGE_SIZE: u64 = 2000;
/// Listing page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u64 = 100;
/// Upload session lifetime, seconds (the real `upload_session_timeout` default).
pub const SESSION_TTL_SECS: i64 = 86_400;
/// Signed content URL lifetime, seconds (the real entity URL default is one hour).
pub const URL_TTL_SECS: i64 = 3_600;
/// Metadata key marking an upload placeholder.
pub const META_SESSION: &str = "sys:upload_session_id";
/// The `capability` bitmap the real server sends for a user's own files.
const CAPABILITY: &str = "39/9";

/// Error codes of `pkg/serializer/error.go` used here.
pub mod code {
    pub const LOGIN_REQUIRED: i64 = 401;
    pub const NOT_FOUND: i64 = 404;
    pub const PARAM: i64 = 40001;
    pub const OBJECT_EXIST: i64 = 40004;
    pub const POLICY_NOT_ALLOWED: i64 = 40006;
    pub const SESSION_EXPIRED: i64 = 40011;
    pub const INVALID_CHUNK_INDEX: i64 = 40012;
    pub const INVALID_CONTENT_LENGTH: i64 = 40013;
    pub const PATH_NOT_EXIST: i64 = 40016;
    pub const CREDENTIAL_INVALID: i64 = 40020;
    pub const FILE_TOO_LARGE: i64 = 40049;
    pub const ILLEGAL_NAME: i64 = 40052;
    pub const INVALID_SIGN: i64 = 40071;
    pub const LOCK_CONFLICT: i64 = 40073;
    pub const BATCH_INCOMPLETE: i64 = 40081;
    pub const DB_ERROR: i64 = 50001;
    pub const IO_FAILED: i64 = 50004;
}

/// In-memory protocol state: open upload sessions and the URL signing key.
pub struct ProtoState {
    sessions: Mutex<HashMap<String, SessionEntry>>,
    /// HMAC key of signed content URLs; random per process, so URLs die with the server.
    sign_key: [u8; 32],
    /// Which object an entity (content version) belongs to, remembered when its URL is
    /// handed out: the content endpoint then finds the object by id instead of scanning
    /// every object of the protocol on each ranged GET. Only a hint; checked on use.
    entity_objects: Mutex<HashMap<String, String>>,
}

impl Default for ProtoState {
    fn default() -> Self {
        let mut sign_key = [0u8; 32];
        sign_key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        sign_key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        Self {
            sessions: Mutex::new(HashMap::new()),
            sign_key,
            entity_objects: Mutex::new(HashMap::new()),
        }
    }
}

impl ProtoState {
    /// Remember that `entity` is the content of object `id`.
    pub fn remember_entity(&self, entity: &str, id: &str) {
        self.entity_objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entity.to_string(), id.to_string());
    }

    /// The object id remembered for `entity`, if any (may be stale: check it).
    pub fn entity_object(&self, entity: &str) -> Option<String> {
        self.entity_objects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(entity)
            .cloned()
    }

    /// Number of upload sessions currently open and not expired (introspection).
    pub fn open_sessions(&self) -> usize {
        let now = chrono::Utc::now().timestamp();
        self.lock()
            .values()
            .filter(|s| s.info.expires > now)
            .count()
    }

    /// Forget every open session and its placeholder (control `forget_sessions`); chunks
    /// for them then answer 40011 as for an expired one. Returns their ids.
    pub fn clear_sessions(&self) -> Vec<String> {
        self.lock().drain().map(|(id, _)| id).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SessionEntry>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when an open session locks `path` or anything under it.
    fn locked_under(&self, path: &CrPath) -> bool {
        let now = chrono::Utc::now().timestamp();
        self.lock()
            .values()
            .any(|s| s.info.expires > now && s.info.path.is_within(path))
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/site/ping", get(ping))
        .route("/session/token", post(files::login))
        .route("/session/token/refresh", post(files::refresh))
        .route("/file", get(files::list).delete(files::delete))
        .route("/file/info", get(files::info))
        .route("/file/create", post(files::create))
        .route("/file/rename", post(files::rename))
        .route("/file/move", post(files::move_or_copy))
        .route("/file/url", post(files::url))
        .route("/file/content", put(upload::put_content))
        .route("/file/content/{entity}/{speed}/{name}", get(files::content))
        .route(
            "/file/upload",
            put(upload::create_session).delete(upload::cancel_session),
        )
        .route("/file/upload/{session_id}/{index}", post(upload::chunk))
}

/// `GET /site/ping`: the server version, no auth (as the real one).
async fn ping() -> ApiResult {
    Ok(ok(json!("4.18.0")))
}

/// A failure in the envelope's terms (HTTP 200), or, from the content endpoint, with a
/// real HTTP status.
#[derive(Debug)]
pub struct ApiError {
    pub code: i64,
    pub msg: String,
    pub data: Option<Value>,
    pub aggregated: Option<Value>,
    /// The content endpoint's real status: the body is then only `{code, msg}`.
    pub status: Option<StatusCode>,
}

impl ApiError {
    pub fn new(code: i64, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            data: None,
            aggregated: None,
            status: None,
        }
    }
    /// A refusal of the content endpoint, with a real HTTP status.
    pub fn http(status: StatusCode, code: i64, msg: impl Into<String>) -> Self {
        Self {
            status: Some(status),
            ..Self::new(code, msg)
        }
    }
    pub fn param(msg: impl Into<String>) -> Self {
        Self::new(code::PARAM, msg)
    }
    pub fn not_found() -> Self {
        Self::new(code::PATH_NOT_EXIST, "Path not exist")
    }
    pub fn exists() -> Self {
        Self::new(code::OBJECT_EXIST, "Object existed")
    }
    pub fn locked() -> Self {
        Self::new(code::LOCK_CONFLICT, "Lock conflict")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "cloudreve store failure");
        match e {
            StoreError::Db(_) => ApiError::new(code::DB_ERROR, "Database operation failed"),
            StoreError::Io(_) => ApiError::new(code::IO_FAILED, "Failed to access storage"),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        tracing::error!(error = %e, "cloudreve I/O failure");
        ApiError::new(code::IO_FAILED, "Failed to access storage")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Some(status) = self.status {
            return (
                status,
                axum::Json(json!({"code": self.code, "msg": self.msg})),
            )
                .into_response();
        }
        let mut body = json!({
            "code": self.code,
            "msg": self.msg,
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        });
        if let Some(d) = self.data {
            body["data"] = d;
        }
        if let Some(a) = self.aggregated {
            body["aggregated_error"] = a;
        }
        envelope(body)
    }
}

pub type ApiResult = Result<Response, ApiError>;

/// HTTP 200 with a JSON body (the envelope is always 200).
fn envelope(body: Value) -> Response {
    let mut r = axum::Json(body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

/// `{"code":0,"data":…,"msg":""}`.
pub fn ok(data: Value) -> Response {
    envelope(json!({"code": 0, "data": data, "msg": ""}))
}

/// `{"code":0,"msg":""}`.
pub fn ok_empty() -> Response {
    envelope(json!({"code": 0, "msg": ""}))
}

/// The login check of every API endpoint.
pub fn auth(state: &ServerState, creds: &Credentials) -> Result<(), ApiError> {
    if state.bearer_ok(creds) {
        Ok(())
    } else {
        Err(ApiError::new(code::LOGIN_REQUIRED, "Login required"))
    }
}

/// The error body of an injected 429 or 503 (the same for both).
pub fn fault_json(_: Fault) -> Value {
    json!({"code": 503, "msg": "Service temporarily unavailable"})
}

/// Bind a JSON body as gin's `ShouldBindJSON` would: garbage is 40001.
pub fn bind<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::param(format!("Invalid parameters: {e}")))
}

/// The query string as pairs (later duplicates win).
pub fn query_map(q: Option<&str>) -> HashMap<String, String> {
    url::form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The path of the `uri` query parameter (40001 when missing or empty).
pub fn uri_param(q: &HashMap<String, String>) -> Result<CrPath, ApiError> {
    let uri = q
        .get("uri")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::param("uri is required"))?;
    CrPath::parse(uri)
}

/// A short hashid-like id from a counter (base62).
pub fn hashid(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut s = Vec::new();
    loop {
        s.push(DIGITS[(n % 62) as usize]);
        n /= 62;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

/// RFC 3339 time of a millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// The storage policy object of session and listing answers.
pub fn storage_policy() -> Value {
    json!({"id": POLICY_ID, "name": "Default storage policy", "type": "local", "max_size": 0})
}

/// A stored object's `FileResponse` at `path`.
pub fn file_json(o: &Object, path: &CrPath) -> Value {
    let mut v = json!({
        "type": if o.is_dir { 1 } else { 0 },
        "id": o.id,
        "name": o.name,
        "created_at": rfc3339(o.created_ms),
        "updated_at": rfc3339(o.modified_ms),
        "size": o.size,
        "path": path.uri(),
        "owned": true,
        "capability": CAPABILITY,
    });
    if let Some(m) = o
        .extra
        .get("metadata")
        .filter(|m| m.as_object().is_some_and(|m| !m.is_empty()))
    {
        v["metadata"] = m.clone();
    }
    if let Some(e) = o.extra.get("entity").and_then(Value::as_str) {
        v["primary_entity"] = json!(e);
    }
    v
}

/// The `FileResponse` of the root folder `cloudreve://my`.
pub fn root_json(created_ms: i64) -> Value {
    json!({
        "type": 1,
        "id": "root",
        "name": "",
        "created_at": rfc3339(created_ms),
        "updated_at": rfc3339(created_ms),
        "size": 0,
        "path": CrPath::root().uri(),
        "owned": true,
        "capability": CAPABILITY,
    })
}

/// What a path names.
pub enum Node {
    Root,
    Obj(Box<Object>),
}

impl Node {
    pub fn is_dir(&self) -> bool {
        match self {
            Node::Root => true,
            Node::Obj(o) => o.is_dir,
        }
    }
    /// Folder id in store terms ("" for the root).
    pub fn id(&self) -> &str {
        match self {
            Node::Root => "",
            Node::Obj(o) => &o.id,
        }
    }
}

/// Resolve a path to a committed object. A file in the middle of the path is "not found".
pub fn resolve(state: &ServerState, path: &CrPath) -> Result<Option<Node>, ApiError> {
    let mut parent = String::new();
    let mut found: Option<Object> = None;
    for (i, seg) in path.segs.iter().enumerate() {
        let Some(o) = state.store.find_child(PROTO, &parent, seg, false)? else {
            return Ok(None);
        };
        if !o.is_dir && i + 1 < path.segs.len() {
            return Ok(None);
        }
        parent = o.id.clone();
        found = Some(o);
    }
    Ok(Some(match found {
        None => Node::Root,
        Some(o) => Node::Obj(Box::new(o)),
    }))
}

/// Make sure the folder `path` exists (creating missing folders) and return its id.
/// A file in the way is a conflict (40004), as in the real `dbfs` create.
pub fn ensure_dirs(state: &ServerState, path: &CrPath) -> Result<String, ApiError> {
    let mut parent = String::new();
    for seg in &path.segs {
        match state.store.find_child(PROTO, &parent, seg, false)? {
            Some(o) if o.is_dir => parent = o.id,
            Some(_) => return Err(ApiError::exists()),
            None => {
                let o = new_folder(state, &parent, seg)?;
                parent = o.id;
            }
        }
    }
    Ok(parent)
}

/// Insert a new folder row.
pub fn new_folder(state: &ServerState, parent: &str, name: &str) -> Result<Object, ApiError> {
    let o = Object::folder(
        PROTO,
        new_id(state)?,
        parent.to_string(),
        name.to_string(),
        json!({}),
    );
    state.store.insert(&o)?;
    Ok(o)
}

/// A fresh file/folder hashid.
pub fn new_id(state: &ServerState) -> Result<String, ApiError> {
    Ok(hashid(state.store.next_id("cloudreve-file")?))
}

/// A fresh entity (content version) hashid.
pub fn new_entity(state: &ServerState) -> Result<String, ApiError> {
    Ok(hashid(state.store.next_id("cloudreve-entity")?))
}

/// Shared handle type used by submodules.
pub type Shared = Arc<ServerState>;
