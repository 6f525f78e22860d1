//! The Box protocol of `uploadfs serve`: the API host (`/box/2.0`: file and folder items,
//! downloads) and the upload host (`/box/upload/2.0`: direct multipart uploads and chunked
//! upload sessions), as strict as api.box.com.
//!
//! Layout: this module holds what both hosts share — the session table, the ClientError
//! shape, token and name checks, and the File/Folder JSON renderings; `upload` has the
//! upload host's direct uploads and pre-flight, `sessions` its chunked upload sessions;
//! `items` the API host's handlers.
//!
//! Storage: files and folders are rows of the shared store (`proto = "box"`), ids are
//! numeric strings from one counter so a file and a folder never share an id, and the root
//! folder `"0"` is virtual (it always exists and has no row). Per-item Box fields (etag,
//! sequence_id, file version id, content times) live in the row's `extra` JSON. Upload
//! sessions live in memory; their parts are files in the session's store directory until
//! commit concatenates them into one blob.
//!
//! Emulator choices where Box does not document the answer (see PROTOCOLS.md §3):
//! - minimum session size 20,000,000 bytes;
//! - `part_size` 8 MiB up to 1 GiB, 32 MiB up to 8 GiB, 128 MiB above;
//! - a part whose `Digest` does not match its body: 400 `bad_digest`;
//! - every `Content-Range` violation: 416 with a specific code;
//! - a file larger than `--max-file-size`: 403 `file_size_limit_exceeded` (the status the
//!   Box error reference gives for that code);
//! - download links are signed URLs on this server valid for 15 minutes (control
//!   `box_link_lifetime_s` changes it), needing no token (as dl.boxcloud.com links); an
//!   expired link, or one of a replaced version, answers 403 `forbidden`.

mod items;
mod sessions;
mod upload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::auth::Credentials;
use super::names::{NameFault, NameRules};
use super::store::{now_ms, Object};
use super::{AppState, ServerState};

/// Protocol name in the store.
pub(crate) const PROTO: &str = "box";
/// The root folder id; always exists, never stored.
pub(crate) const ROOT_ID: &str = "0";
/// The counter all file and folder ids come from.
const ID_COUNTER: &str = "box_item";
/// The counter of file version ids.
const VERSION_COUNTER: &str = "box_file_version";
/// Smallest `file_size` an upload session accepts (Box: "20MB"; third-party code uses
/// 20,000,000). Smaller files go through `POST /files/content`.
pub const MIN_SESSION_SIZE: u64 = 20_000_000;
/// How long a download link stays valid by default, seconds (Box documents 15 minutes).
const LINK_LIFETIME_S: i64 = 15 * 60;
/// Upload sessions expire 7 days after creation (Box documents 7 days).
const SESSION_LIFETIME_MS: i64 = 7 * 24 * 3600 * 1000;
/// Largest page of folder items / session parts (larger `limit`s are capped).
const MAX_PAGE: u64 = 1000;
/// Where every error's `help_url` points (as Box's own errors).
const HELP_URL: &str =
    "https://developer.box.com/guides/api-calls/permissions-and-errors/common-errors/";

/// The part size the server picks for a session of `file_size` bytes. Box does not
/// document its rule; observed: 8 MiB for files of a few hundred MB, 32 MiB for 1 GB.
pub fn part_size_for(file_size: u64) -> u64 {
    const MIB: u64 = 1024 * 1024;
    const GIB: u64 = 1024 * MIB;
    if file_size <= GIB {
        8 * MIB
    } else if file_size <= 8 * GIB {
        32 * MIB
    } else {
        128 * MIB
    }
}

/// What an upload session will create when committed.
#[derive(Debug, Clone)]
pub(crate) enum SessionTarget {
    /// A new file `name` in folder `folder_id`.
    NewFile { folder_id: String, name: String },
    /// A new version of file `file_id`, optionally renamed.
    NewVersion {
        file_id: String,
        name: Option<String>,
    },
}

/// One accepted part of a session.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub part_id: String,
    pub offset: u64,
    pub size: u64,
    /// Lowercase hex SHA-1.
    pub sha1: String,
}

impl Part {
    fn json(&self) -> Value {
        json!({"part_id": self.part_id, "offset": self.offset, "size": self.size, "sha1": self.sha1})
    }
}

/// Mutable part of a session, under a short-held lock (never across an await).
#[derive(Default)]
pub(crate) struct SessionInner {
    /// Accepted parts by offset.
    pub parts: std::collections::BTreeMap<u64, Part>,
    /// Offsets whose body is being received right now (a second request for the same range
    /// is an overlap too).
    pub in_flight: std::collections::HashSet<u64>,
    /// How many commits were answered 202 so far.
    pub commit_202s: u32,
    /// The session was aborted or committed while a request was using it.
    pub closed: bool,
}

pub(crate) struct Session {
    pub id: String,
    pub target: SessionTarget,
    pub file_size: u64,
    pub part_size: u64,
    pub created_ms: i64,
    pub inner: Mutex<SessionInner>,
    /// Serializes commits and aborts of this session (held across the final hashing).
    pub commit_lock: tokio::sync::Mutex<()>,
    /// The file being assembled: parts land at their offsets, hashed as they become
    /// contiguous.
    pub data: Arc<crate::server::body::AssembledFile>,
}

impl Session {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SessionInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn total_parts(&self) -> u64 {
        self.file_size.div_ceil(self.part_size)
    }
    pub fn expires_ms(&self) -> i64 {
        self.created_ms + SESSION_LIFETIME_MS
    }
}

/// In-memory state of open upload sessions (and recently committed ones, so a commit whose
/// answer was lost can be repeated).
pub struct ProtoState {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    /// Session id → id of the file its commit produced.
    committed: Mutex<HashMap<String, String>>,
    /// Key that signs download links (random per process: links die with the server).
    link_key: String,
    /// Seconds a new download link stays valid (control `box_link_lifetime_s`, so a test
    /// can watch a link expire).
    link_lifetime_s: AtomicI64,
}

impl Default for ProtoState {
    fn default() -> Self {
        ProtoState {
            sessions: Mutex::new(HashMap::new()),
            committed: Mutex::new(HashMap::new()),
            link_key: uuid::Uuid::new_v4().simple().to_string(),
            link_lifetime_s: AtomicI64::new(LINK_LIFETIME_S),
        }
    }
}

impl ProtoState {
    /// Number of upload sessions currently open (introspection).
    pub fn open_sessions(&self) -> usize {
        let now = now_ms();
        self.lock_sessions()
            .values()
            .filter(|s| s.expires_ms() > now)
            .count()
    }

    /// Forget every open session (control `forget_sessions`): later requests for them get
    /// 404 and parts still streaming in are refused. Returns their ids.
    pub fn clear_sessions(&self) -> Vec<String> {
        let drained: Vec<(String, Arc<Session>)> = self.lock_sessions().drain().collect();
        drained
            .into_iter()
            .map(|(id, s)| {
                s.lock().closed = true;
                id
            })
            .collect()
    }

    fn lock_sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert_session(&self, s: Arc<Session>) {
        self.lock_sessions().insert(s.id.clone(), s);
    }

    /// An open, unexpired session.
    pub(crate) fn session(&self, id: &str) -> Option<Arc<Session>> {
        let mut map = self.lock_sessions();
        let s = map.get(id)?.clone();
        if s.expires_ms() <= now_ms() {
            map.remove(id);
            return None;
        }
        Some(s)
    }

    pub(crate) fn remove_session(&self, id: &str) -> Option<Arc<Session>> {
        self.lock_sessions().remove(id)
    }

    pub(crate) fn mark_committed(&self, session_id: &str, file_id: &str) {
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session_id.to_string(), file_id.to_string());
    }

    pub(crate) fn committed_file(&self, session_id: &str) -> Option<String> {
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(session_id)
            .cloned()
    }

    /// Seconds a download link handed out now stays valid.
    pub(crate) fn link_lifetime_s(&self) -> i64 {
        self.link_lifetime_s.load(Ordering::Relaxed)
    }

    /// Change how long download links handed out from now on stay valid.
    pub fn set_link_lifetime_s(&self, seconds: u64) {
        self.link_lifetime_s.store(
            i64::try_from(seconds).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Hex signature of a download link for file `id` with content `sha1` until `exp`.
    pub(crate) fn sign_link(&self, id: &str, sha1: &str, exp: i64) -> String {
        use sha1::Digest;
        let mut h = sha1::Sha1::new();
        h.update(self.link_key.as_bytes());
        h.update(format!("|{id}|{sha1}|{exp}").as_bytes());
        hex::encode(h.finalize())
    }
}

/// The routes of the API host (nested at `/box/2.0`).
pub fn api_router() -> Router<AppState> {
    Router::new()
        .route(
            "/files/{id}",
            get(items::get_file)
                .put(items::update_file)
                .delete(items::delete_file),
        )
        .route("/files/{id}/content", get(items::download_redirect))
        .route(
            "/files/content",
            axum::routing::options(upload::preflight_new),
        )
        .route("/dl/{id}/{exp}/{sig}", get(items::download_signed))
        .route("/folders", post(items::create_folder))
        .route(
            "/folders/{id}",
            get(items::get_folder)
                .put(items::update_folder)
                .delete(items::delete_folder),
        )
        .route("/folders/{id}/items", get(items::folder_items))
        .fallback(not_found_route)
}

/// The routes of the upload host (nested at `/box/upload/2.0`).
pub fn upload_router() -> Router<AppState> {
    // Uploads stream to disk; the size rules are the protocol's own, not axum's default
    // 2 MB extractor limit.
    let no_limit = axum::extract::DefaultBodyLimit::disable();
    Router::new()
        .route(
            "/files/content",
            post(upload::upload_new)
                .options(upload::preflight_new)
                .layer(no_limit),
        )
        .route(
            "/files/{id}/content",
            post(upload::upload_version).layer(no_limit),
        )
        .route("/files/upload_sessions", post(sessions::create_session))
        .route(
            "/files/{id}/upload_sessions",
            post(sessions::create_version_session),
        )
        .route(
            "/files/upload_sessions/{id}",
            get(sessions::get_session)
                .put(sessions::upload_part)
                .delete(sessions::abort_session),
        )
        .route(
            "/files/upload_sessions/{id}/parts",
            get(sessions::list_parts),
        )
        .route("/files/upload_sessions/{id}/commit", post(sessions::commit))
        .fallback(not_found_route)
}

async fn not_found_route() -> BoxError {
    BoxError::new(StatusCode::NOT_FOUND, "not_found", "Not Found")
}

/// A Box ClientError answer: `{type:"error", status, code, message, context_info?,
/// help_url, request_id}`.
#[derive(Debug)]
pub(crate) struct BoxError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub context_info: Option<Value>,
}

impl BoxError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> BoxError {
        BoxError {
            status,
            code,
            message: message.into(),
            context_info: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> BoxError {
        BoxError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn not_found(what: &str) -> BoxError {
        BoxError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("Not Found: {what}"),
        )
    }
    pub fn internal(e: impl std::fmt::Display) -> BoxError {
        tracing::error!(error = %e, "box: internal error");
        BoxError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_server_error",
            "Internal Server Error",
        )
    }
    pub fn with_context(mut self, ctx: Value) -> BoxError {
        self.context_info = Some(ctx);
        self
    }
    /// The JSON body (also used for injected 429/503 faults).
    pub fn body(&self) -> Value {
        let mut v = json!({
            "type": "error",
            "status": self.status.as_u16(),
            "code": self.code,
            "message": self.message,
            "help_url": HELP_URL,
            "request_id": uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
        });
        if let Some(c) = &self.context_info {
            v["context_info"] = c.clone();
        }
        v
    }
}

impl IntoResponse for BoxError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(
                    "Bearer realm=\"Service\", error=\"invalid_token\", error_description=\"The access token provided is invalid.\"",
                ),
            );
        }
        resp
    }
}

impl From<super::store::StoreError> for BoxError {
    fn from(e: super::store::StoreError) -> Self {
        BoxError::internal(e)
    }
}

impl From<std::io::Error> for BoxError {
    fn from(e: std::io::Error) -> Self {
        BoxError::internal(e)
    }
}

pub(crate) type BoxResult<T = Response> = Result<T, BoxError>;

/// 401 `unauthorized` unless the request carries the right bearer token.
pub(crate) fn check_auth(state: &ServerState, creds: &Credentials) -> BoxResult<()> {
    if state.bearer_ok(creds) {
        Ok(())
    } else {
        Err(BoxError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
        ))
    }
}

/// A non-negative integer query parameter; `code` names it in the 400.
pub(crate) fn query_u64(
    q: &std::collections::HashMap<String, String>,
    key: &str,
    code: &'static str,
) -> BoxResult<Option<u64>> {
    match q.get(key) {
        None => Ok(None),
        Some(v) => v.trim().parse::<u64>().map(Some).map_err(|_| {
            BoxError::new(
                StatusCode::BAD_REQUEST,
                code,
                format!("{key} is not a valid number: {v}"),
            )
        }),
    }
}

/// Box's name rules: 1..=255 bytes, no `/` or `\`, no non-printable characters, no leading
/// or trailing spaces, not `.` or `..`. Violations are 400 `item_name_invalid`.
pub(crate) fn check_name(name: &str) -> BoxResult<()> {
    let rules = NameRules {
        no_control: true,
        no_edge_spaces: true,
    };
    let why = match rules.check(name) {
        Ok(()) => return Ok(()),
        Err(NameFault::Empty) => "the name is empty",
        Err(NameFault::TooLong) => "the name is longer than 255 bytes",
        Err(NameFault::Separator) => "the name contains / or \\",
        Err(NameFault::Control) => "the name contains non-printable characters",
        Err(NameFault::Reserved) => "the names . and .. are reserved",
        Err(NameFault::EdgeSpace) => "the name has leading or trailing spaces",
    };
    Err(BoxError::new(
        StatusCode::BAD_REQUEST,
        "item_name_invalid",
        format!("Item name invalid: {why}"),
    ))
}

/// 409 `item_name_in_use` when `parent` already holds `name` (case-insensitively) other
/// than `except_id`. `conflicts_as_array`: folder creation reports a list, as Box does.
pub(crate) fn check_conflict(
    state: &ServerState,
    parent: &str,
    name: &str,
    except_id: Option<&str>,
    conflicts_as_array: bool,
) -> BoxResult<()> {
    if let Some(o) = state.store.find_child(PROTO, parent, name, true)? {
        if Some(o.id.as_str()) != except_id {
            let mini = mini_json(&o);
            let conflicts = if conflicts_as_array {
                json!([mini])
            } else {
                mini
            };
            return Err(BoxError::new(
                StatusCode::CONFLICT,
                "item_name_in_use",
                "Item with the same name already exists",
            )
            .with_context(json!({ "conflicts": conflicts })));
        }
    }
    Ok(())
}

/// The folder `id` (root included) or 404.
pub(crate) fn folder(state: &ServerState, id: &str) -> BoxResult<Option<Object>> {
    if id == ROOT_ID {
        return Ok(None);
    }
    match state.store.get(PROTO, id)? {
        Some(o) if o.is_dir => Ok(Some(o)),
        _ => Err(BoxError::not_found(&format!("folder {id}"))),
    }
}

/// The file `id` or 404.
pub(crate) fn file(state: &ServerState, id: &str) -> BoxResult<Object> {
    match state.store.get(PROTO, id)? {
        Some(o) if !o.is_dir => Ok(o),
        _ => Err(BoxError::not_found(&format!("file {id}"))),
    }
}

pub(crate) fn new_id(state: &ServerState) -> BoxResult<String> {
    Ok(state.store.next_id(ID_COUNTER)?.to_string())
}

pub(crate) fn new_version_id(state: &ServerState) -> BoxResult<String> {
    Ok(state.store.next_id(VERSION_COUNTER)?.to_string())
}

/// RFC 3339 with an explicit offset, as Box writes times.
pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// Parse an RFC 3339 time (`content_modified_at`) into ms since the epoch.
pub(crate) fn parse_time(field: &str, v: &Value) -> BoxResult<Option<i64>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| Some(t.timestamp_millis()))
            .map_err(|_| BoxError::bad_request(format!("{field} is not an RFC 3339 time: {s}"))),
        _ => Err(BoxError::bad_request(format!("{field} must be a string"))),
    }
}

fn extra_str(o: &Object, key: &str) -> String {
    match &o.extra[key] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => "0".to_string(),
    }
}

fn extra_i64(o: &Object, key: &str, default: i64) -> i64 {
    o.extra[key].as_i64().unwrap_or(default)
}

/// The Box fields kept in a row's `extra`.
pub(crate) fn box_extra(
    etag: u64,
    version_id: Option<&str>,
    content_created_ms: i64,
    content_modified_ms: i64,
) -> Value {
    let mut v = json!({
        "etag": etag.to_string(),
        "sequence_id": etag.to_string(),
        "content_created_ms": content_created_ms,
        "content_modified_ms": content_modified_ms,
    });
    if let Some(id) = version_id {
        v["version_id"] = json!(id);
    }
    v
}

/// Current etag of an object as a number (etag and sequence_id move together).
pub(crate) fn etag_of(o: &Object) -> u64 {
    extra_str(o, "etag").parse().unwrap_or(0)
}

/// Bump etag/sequence_id after a change.
pub(crate) fn bump(o: &mut Object) {
    let next = etag_of(o) + 1;
    if !o.extra.is_object() {
        o.extra = json!({});
    }
    o.extra["etag"] = json!(next.to_string());
    o.extra["sequence_id"] = json!(next.to_string());
    o.modified_ms = now_ms();
}

/// The one user every item belongs to (the server has a single account).
fn user_json() -> Value {
    json!({"type": "user", "id": "1", "name": "uploadfs", "login": "uploadfs@localhost"})
}

/// Mini form: what listings carry without `fields=`.
pub(crate) fn mini_json(o: &Object) -> Value {
    if o.is_dir {
        json!({
            "type": "folder", "id": o.id, "sequence_id": extra_str(o, "sequence_id"),
            "etag": extra_str(o, "etag"), "name": o.name,
        })
    } else {
        json!({
            "type": "file", "id": o.id, "sequence_id": extra_str(o, "sequence_id"),
            "etag": extra_str(o, "etag"), "name": o.name, "sha1": o.sha1,
            "file_version": {"type": "file_version", "id": extra_str(o, "version_id"), "sha1": o.sha1},
        })
    }
}

fn root_mini() -> Value {
    json!({"type": "folder", "id": ROOT_ID, "sequence_id": null, "etag": null, "name": "All Files"})
}

/// Mini JSON of folder `id` (root included); unknown parents render as the root.
fn folder_mini(state: &ServerState, id: &str) -> Value {
    match state.store.get(PROTO, id) {
        Ok(Some(o)) if id != ROOT_ID => mini_json(&o),
        _ => root_mini(),
    }
}

/// `path_collection` of an item whose parent is `parent`: the folders from the root down.
fn path_collection(state: &ServerState, parent: &str) -> Value {
    let mut chain = Vec::new();
    let mut cur = parent.to_string();
    // Bounded walk: a cycle in stored data must not hang the server.
    for _ in 0..1000 {
        if cur == ROOT_ID {
            chain.push(root_mini());
            break;
        }
        match state.store.get(PROTO, &cur) {
            Ok(Some(o)) => {
                chain.push(mini_json(&o));
                cur = o.parent.clone();
            }
            _ => {
                chain.push(root_mini());
                break;
            }
        }
    }
    chain.reverse();
    json!({"total_count": chain.len(), "entries": chain})
}

/// File--Full / Folder--Full.
pub(crate) fn full_json(state: &ServerState, o: &Object) -> Value {
    let mut v = mini_json(o);
    let created = rfc3339(o.created_ms);
    let modified = rfc3339(o.modified_ms);
    let common = json!({
        "description": "",
        "size": o.size,
        "path_collection": path_collection(state, &o.parent),
        "created_at": created,
        "modified_at": modified,
        "trashed_at": null,
        "purged_at": null,
        "content_created_at": rfc3339(extra_i64(o, "content_created_ms", o.created_ms)),
        "content_modified_at": rfc3339(extra_i64(o, "content_modified_ms", o.modified_ms)),
        "created_by": user_json(),
        "modified_by": user_json(),
        "owned_by": user_json(),
        "shared_link": null,
        "parent": folder_mini(state, &o.parent),
        "item_status": "active",
    });
    if let (Some(m), Some(c)) = (v.as_object_mut(), common.as_object()) {
        for (k, val) in c {
            m.insert(k.clone(), val.clone());
        }
    }
    if !o.is_dir {
        v["extension"] = json!(o
            .name
            .rsplit_once('.')
            .map(|(_, e)| e.to_string())
            .unwrap_or_default());
    }
    v
}

/// Mini form plus the requested `fields` (Box: asking for fields drops the standard ones).
pub(crate) fn fields_json(state: &ServerState, o: &Object, fields: Option<&str>) -> Value {
    let Some(fields) = fields else {
        return full_json(state, o);
    };
    let full = full_json(state, o);
    let mut v = mini_json(o);
    for f in fields.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        if let Some(val) = full.get(f) {
            v[f] = val.clone();
        }
    }
    v
}

/// Folder--Full of the root.
pub(crate) fn root_full() -> Value {
    let mut v = root_mini();
    for (k, val) in [
        ("description", json!("")),
        ("size", json!(0)),
        ("path_collection", json!({"total_count": 0, "entries": []})),
        ("created_at", json!(null)),
        ("modified_at", json!(null)),
        ("content_created_at", json!(null)),
        ("content_modified_at", json!(null)),
        ("created_by", user_json()),
        ("modified_by", user_json()),
        ("owned_by", user_json()),
        ("parent", json!(null)),
        ("item_status", json!("active")),
        ("trashed_at", json!(null)),
        ("purged_at", json!(null)),
        ("shared_link", json!(null)),
    ] {
        v[k] = val;
    }
    v
}
