//! The Virola Messenger Web API of `uploadfs serve` (`/virola/api/v1`): login/session
//! cookie or Web API bearer token, one room holding messages, and message attachments.
//!
//! Wire shape (spec: chat-attachments.md, PROTOCOLS.md §4): every error is
//! `{"errorText": "...", "httpStatusCode": N}` with the same HTTP status, every success
//! without a payload is `{"httpStatusCode": 200}`. Attachments arrive as one
//! `multipart/form-data` POST with one or more `files` parts; the answer carries no ids,
//! so clients find their attachment by listing the room's messages.
//!
//! Storage: attachments are `virola` store objects (id from the `virola-attachment`
//! counter, parent = message id, extra = `{message_id, room_id}`). Messages are kept as
//! store objects of the private kind `virola-message` (parent = room id) so they survive
//! restarts without showing up as files in introspection.
//!
//! Each `files` part is streamed to its own temp file while being hashed; the parts of a
//! request are committed (blob, then row) only after the whole multipart body arrived, so
//! a request cut short or refused stores nothing. Emulator choices where the real server
//! is undocumented: `fileChecksum` is the SHA-1 hex of the content; a file over
//! `--max-file-size` is refused with 413; file names that are empty, longer than 255
//! bytes, contain `/`, `\` or NUL, or are `.`/`..` are refused with 400; the download URL's
//! file name must match the attachment's (raw or percent-encoded) or the answer is 404;
//! downloads honour a single `Range` (206, or 416 when unsatisfiable); message listing
//! cursors are exclusive (`backward`: ids below the cursor, newest first; `forward`: ids
//! above it, oldest first).

// Helpers return ready-made error responses (`Result<_, Response>`) so handlers can
// answer with `?`-style early returns; those errors are the cold path, so their size
// does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{
    content_type_for, parse_range, serve_file, BadRange, BodyInfo, FileAnswer, Hashers,
};
use super::faults::{Fault, FaultOp};
use super::store::{now_ms, Object};
use super::{fault_status, AppState, ConnKill, ServerState, VIROLA_MESSAGE_ID, VIROLA_ROOM_ID};

/// Store kind of attachments (what introspection shows as Virola files).
const PROTO: &str = "virola";
/// Store kind of messages (private: not a file, not shown by introspection).
const MSG_PROTO: &str = "virola-message";
/// Store kind of a marker row saying the pre-existing message was created once (so a
/// deleted seed message stays deleted across restarts).
const META_PROTO: &str = "virola-meta";
/// The user id every login and token maps to (one account).
const USER_ID: u64 = 3;
/// Session cookie name (named in the docs' 401 text).
pub const SESSION_COOKIE: &str = "VirolaUserSessionId";
/// Default and largest page of `GET /rooms/{id}/messages` (emulator choice).
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;
/// How much of a refused upload is still read and dropped (see [`drain`]).
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;
/// Longest file name accepted, bytes.
const MAX_NAME_BYTES: usize = 255;

const WRONG_BEARER: &str = "Wrong Bearer, please renew Web API Access Token";
const NO_AUTH: &str = "The Authorization HTTP-header or VirolaUserSessionId cookie expected";
const BAD_SESSION: &str = "The user session is invalid or expired, please log in again";
const BAD_LOGIN: &str = "The username or password is invalid.";
const NOT_FOUND_ATTACHMENT: &str = "Attachment not found";

/// Sessions from `POST /login`, and uploads currently streaming (introspection).
#[derive(Default)]
pub struct ProtoState {
    sessions: Mutex<HashSet<String>>,
    uploads_in_flight: AtomicUsize,
    seed_lock: tokio::sync::Mutex<bool>,
}

impl ProtoState {
    /// Number of attachment uploads currently streaming in.
    pub fn open_sessions(&self) -> usize {
        self.uploads_in_flight.load(Ordering::Relaxed)
    }
    /// Virola has no upload sessions (one request carries a whole file), so there is
    /// nothing to forget; login sessions are not upload sessions and stay.
    pub fn clear_sessions(&self) -> Vec<String> {
        Vec::new()
    }
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/status", get(status))
        .route(
            "/rooms/{rid}/messages",
            get(list_messages).post(post_message),
        )
        .route("/messages/{mid}", delete(delete_message))
        .route("/messages/{mid}/attachments", post(upload))
        .route(
            "/attachments/{id}",
            get(attachment_info).delete(delete_attachment),
        )
        .route("/attachments/{id}/{name}", get(download))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not found") })
        // Attachments are streamed to disk with our own size limit.
        .layer(DefaultBodyLimit::disable())
}

/// An error in Virola's envelope.
fn error(status: StatusCode, text: &str) -> Response {
    (status, Json(error_json(status, text))).into_response()
}

fn error_json(status: StatusCode, text: &str) -> Value {
    json!({"errorText": text, "httpStatusCode": status.as_u16()})
}

/// The error body of an injected 503/429, with the matching status inside.
fn fault_json(f: Fault) -> Value {
    match f {
        Fault::TooMany => error_json(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests, slow down",
        ),
        _ => error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            "Server is busy, try again later",
        ),
    }
}

/// A success without payload.
fn ok() -> Response {
    Json(json!({"httpStatusCode": 200})).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "virola: internal error");
    error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
}

/// Who is calling.
enum Caller {
    Token,
    Session(String),
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// `Authorization: Bearer <token>` wins when present; otherwise the session cookie.
fn authenticate(state: &ServerState, headers: &HeaderMap) -> Result<Caller, Response> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().unwrap_or_default().trim();
        let ok = v
            .strip_prefix("Bearer ")
            .is_some_and(|tok| state.token_matches(tok.trim()));
        return if ok {
            Ok(Caller::Token)
        } else {
            Err(error(StatusCode::UNAUTHORIZED, WRONG_BEARER))
        };
    }
    match cookie(headers, SESSION_COOKIE) {
        Some(sid) if state.virola.sessions().contains(sid) => Ok(Caller::Session(sid.to_string())),
        Some(_) => Err(error(StatusCode::UNAUTHORIZED, BAD_SESSION)),
        None => Err(error(StatusCode::UNAUTHORIZED, NO_AUTH)),
    }
}

macro_rules! auth {
    ($state:expr, $headers:expr) => {
        match authenticate(&$state, &$headers) {
            Ok(c) => c,
            Err(r) => return r,
        }
    };
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return internal(e),
        }
    };
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginBody {
    user_name: String,
    password: String,
}

/// `POST /login {userName, password}`: the password is the server token (one account).
async fn login(State(state): State<AppState>, body: axum::body::Bytes) -> Response {
    let Ok(b) = serde_json::from_slice::<LoginBody>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "JSON body {\"userName\",\"password\"} expected",
        );
    };
    if b.user_name.is_empty() || !state.token_matches(&b.password) {
        return error(StatusCode::UNAUTHORIZED, BAD_LOGIN);
    }
    let sid = uuid::Uuid::new_v4().simple().to_string();
    state.virola.sessions().insert(sid.clone());
    let cookie = format!("{SESSION_COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict");
    let mut resp = Json(json!({
        "httpStatusCode": 200, "userId": USER_ID, "userSessionId": sid,
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /logout`: ends the cookie session (a token caller just gets 200).
async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Caller::Session(sid) = auth!(state, headers) {
        state.virola.sessions().remove(&sid);
    }
    let mut resp = ok();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("VirolaUserSessionId=; Path=/; Max-Age=0; HttpOnly"),
    );
    resp
}

/// `GET /status`.
async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    match auth!(state, headers) {
        Caller::Session(sid) => Json(json!({
            "httpStatusCode": 200, "userId": USER_ID, "userSessionId": sid,
        }))
        .into_response(),
        Caller::Token => Json(json!({"httpStatusCode": 200, "userId": USER_ID})).into_response(),
    }
}

/// Create the pre-existing message the first time the store is used.
async fn ensure_seed(state: &ServerState) -> Result<(), Response> {
    let mut seeded = state.virola.seed_lock.lock().await;
    if *seeded {
        return Ok(());
    }
    let marker = state.store.get(META_PROTO, "seeded").map_err(internal)?;
    if marker.is_none() {
        let mut msg = message_object(VIROLA_MESSAGE_ID, "Files");
        msg.created_ms = now_ms();
        state.store.insert(&msg).map_err(internal)?;
        let mut m = message_object(0, "");
        m.proto = META_PROTO.to_string();
        m.id = "seeded".to_string();
        state.store.insert(&m).map_err(internal)?;
    }
    *seeded = true;
    Ok(())
}

fn message_object(id: u64, content: &str) -> Object {
    let now = now_ms();
    Object {
        proto: MSG_PROTO.to_string(),
        id: id.to_string(),
        parent: VIROLA_ROOM_ID.to_string(),
        name: String::new(),
        is_dir: false,
        size: 0,
        sha1: String::new(),
        md5: String::new(),
        blob: None,
        created_ms: now,
        modified_ms: now,
        extra: json!({"content": content, "room_id": VIROLA_ROOM_ID}),
    }
}

/// The message `mid` (404 in Virola's shape when unknown).
async fn find_message(state: &ServerState, mid: &str) -> Result<Object, Response> {
    ensure_seed(state).await?;
    let not_found = || error(StatusCode::NOT_FOUND, "Message not found");
    let id: u64 = mid.parse().map_err(|_| not_found())?;
    state
        .store
        .get(MSG_PROTO, &id.to_string())
        .map_err(internal)?
        .ok_or_else(not_found)
}

fn check_room(rid: &str) -> Result<u64, Response> {
    match rid.parse::<u64>() {
        Ok(id) if id == VIROLA_ROOM_ID => Ok(id),
        _ => Err(error(StatusCode::NOT_FOUND, "Room not found")),
    }
}

/// Attachment metadata as `GET /attachments/{id}` answers it.
fn attachment_json(o: &Object) -> Value {
    json!({
        "attachmentId": o.id.parse::<u64>().unwrap_or_default(),
        "attachmentState": "ReadyForDownloadFromServerToClient",
        "createdUtc": o.created_ms,
        "fileChecksum": o.sha1,
        "fileName": o.name,
        "fileSize": o.size,
        "hasThumbnail": false,
        "lastModifiedUtc": o.modified_ms,
        "roomId": o.extra["room_id"],
        "textMessageId": o.extra["message_id"],
    })
}

fn attachments_of(state: &ServerState, mid: &str) -> Result<Vec<Object>, Response> {
    let (mut v, _) = state
        .store
        .list(PROTO, mid, 0, u64::MAX)
        .map_err(internal)?;
    v.sort_by_key(|o| o.id.parse::<u64>().unwrap_or_default());
    Ok(v)
}

fn message_json(state: &ServerState, m: &Object) -> Result<Value, Response> {
    let atts: Vec<Value> = attachments_of(state, &m.id)?
        .iter()
        .map(attachment_json)
        .collect();
    Ok(json!({
        "messageId": m.id.parse::<u64>().unwrap_or_default(),
        "roomId": VIROLA_ROOM_ID,
        "content": m.extra["content"],
        "createdUtc": m.created_ms,
        "attachments": atts,
    }))
}

#[derive(Deserialize)]
struct MessagesQuery {
    cursor: Option<String>,
    limit: Option<String>,
    direction: Option<String>,
}

/// `GET /rooms/{rid}/messages?cursor=&limit=&direction=backward|forward`.
async fn list_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(rid): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Response {
    auth!(state, headers);
    if let Err(r) = ensure_seed(&state).await {
        return r;
    }
    let rid = match check_room(&rid) {
        Ok(r) => r,
        Err(r) => return r,
    };
    let bad = |what: &str| error(StatusCode::BAD_REQUEST, &format!("Invalid {what}"));
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match c.parse::<u64>() {
            Ok(c) => Some(c),
            Err(_) => return bad("cursor"),
        },
    };
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => DEFAULT_PAGE,
        Some(l) => match l.parse::<usize>() {
            Ok(l) if (1..=MAX_PAGE).contains(&l) => l,
            _ => return bad("limit"),
        },
    };
    let forward = match q.direction.as_deref().unwrap_or("backward") {
        "backward" | "" => false,
        "forward" => true,
        _ => return bad("direction"),
    };
    let mut msgs: Vec<(u64, Object)> = tri!(state.store.all(MSG_PROTO))
        .into_iter()
        .filter(|m| m.parent == rid.to_string())
        .filter_map(|m| m.id.parse::<u64>().ok().map(|id| (id, m)))
        .filter(|(id, _)| match (cursor, forward) {
            (None, _) => true,
            (Some(c), true) => *id > c,
            (Some(c), false) => *id < c,
        })
        .collect();
    msgs.sort_by_key(|(id, _)| *id);
    if !forward {
        msgs.reverse();
    }
    msgs.truncate(limit);
    let mut out = Vec::with_capacity(msgs.len());
    for (_, m) in &msgs {
        match message_json(&state, m) {
            Ok(v) => out.push(v),
            Err(r) => return r,
        }
    }
    Json(json!({"httpStatusCode": 200, "roomId": rid, "messages": out})).into_response()
}

#[derive(Deserialize)]
struct NewMessage {
    content: String,
}

/// `POST /rooms/{rid}/messages {content}`: no id in the answer (as the real API).
async fn post_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(rid): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    auth!(state, headers);
    if let Err(r) = check_room(&rid) {
        return r;
    }
    if let Err(r) = ensure_seed(&state).await {
        return r;
    }
    let Ok(b) = serde_json::from_slice::<NewMessage>(&body) else {
        return error(StatusCode::BAD_REQUEST, "JSON body {\"content\"} expected");
    };
    // Counter values start at 1000; offset them past the seed message so ids grow with time.
    let id = VIROLA_MESSAGE_ID + tri!(state.store.next_id(MSG_PROTO));
    tri!(state.store.insert(&message_object(id, &b.content)));
    ok()
}

/// `DELETE /messages/{mid}`: the message and its attachments.
async fn delete_message(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(mid): Path<String>,
) -> Response {
    auth!(state, headers);
    let m = match find_message(&state, &mid).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let atts = match attachments_of(&state, &m.id) {
        Ok(a) => a,
        Err(r) => return r,
    };
    for a in atts {
        tri!(state.store.delete(PROTO, &a.id));
    }
    tri!(state.store.delete(MSG_PROTO, &m.id));
    ok()
}

/// Why a file name is refused, if it is.
fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("File name is empty")
    } else if name.len() > MAX_NAME_BYTES {
        Some("File name is longer than 255 bytes")
    } else if name.contains(['/', '\\', '\0']) {
        Some("File name contains a forbidden character")
    } else if name == "." || name == ".." {
        Some("File name is not allowed")
    } else {
        None
    }
}

/// Decrements the in-flight upload count when the request ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One `files` part received completely into a temp file.
struct Received {
    name: String,
    temp: PathBuf,
    info: BodyInfo,
}

/// `POST /messages/{mid}/attachments`: multipart `files` parts, streamed to disk.
async fn upload(
    State(state): State<AppState>,
    Path(mid): Path<String>,
    Extension(kill): Extension<ConnKill>,
    req: Request,
) -> Response {
    auth!(state, req.headers());
    let msg = match find_message(&state, &mid).await {
        Ok(m) => m,
        Err(r) => return r,
    };
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
    let _in_flight = InFlight::new(&state.virola.uploads_in_flight);
    let mut mp = match Multipart::from_request(req, &()).await {
        Ok(m) => m,
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Content-Type multipart/form-data expected",
            )
        }
    };
    let mut received: Vec<Received> = Vec::new();
    let outcome = receive_files(&state, &mut mp, &mut received).await;
    if let Err(r) = outcome {
        for r in &received {
            let _ = tokio::fs::remove_file(&r.temp).await;
        }
        drain(&mut mp).await;
        return r;
    }
    if received.is_empty() {
        return error(StatusCode::BAD_REQUEST, "No files in the request");
    }
    for r in received {
        let blob = tri!(state.store.commit_blob(&r.temp));
        let id = tri!(state.store.next_id("virola-attachment"));
        let mut o = Object::file(
            PROTO,
            id.to_string(),
            msg.id.clone(),
            r.name.clone(),
            &r.info,
            blob,
        );
        o.extra = json!({
            "message_id": msg.id.parse::<u64>().unwrap_or_default(),
            "room_id": VIROLA_ROOM_ID,
        });
        tri!(state.store.insert(&o));
        tracing::info!(attachment = id, name = %r.name, size = r.info.len, "virola: attachment stored");
    }
    if drop_after {
        return kill.drop_connection().await;
    }
    ok()
}

/// Read and drop what is left of a refused request (bounded), so that a client still
/// sending sees the error answer instead of a broken pipe.
async fn drain(mp: &mut Multipart) {
    let mut left = DRAIN_LIMIT;
    while let Ok(Some(mut f)) = mp.next_field().await {
        while let Ok(Some(c)) = f.chunk().await {
            left = left.saturating_sub(c.len() as u64);
            if left == 0 {
                return;
            }
        }
    }
}

/// Read every part; `files` parts go to temp files (pushed to `out` as they complete, so
/// the caller can clean up on error).
async fn receive_files(
    state: &ServerState,
    mp: &mut Multipart,
    out: &mut Vec<Received>,
) -> Result<(), Response> {
    let max = state.max_file_size();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("Malformed multipart body: {e}"),
                ))
            }
        };
        if field.name() != Some("files") {
            return Err(error(
                StatusCode::BAD_REQUEST,
                "Only parts named \"files\" are accepted",
            ));
        }
        let name = field.file_name().unwrap_or_default().to_string();
        if let Some(why) = bad_name(&name) {
            return Err(error(StatusCode::BAD_REQUEST, why));
        }
        let temp = state.store.temp_path();
        let mut file = tokio::fs::File::create(&temp).await.map_err(internal)?;
        let mut h = Hashers::default();
        let mut len = 0u64;
        let mut field = field;
        let res: Result<(), Response> = async {
            use tokio::io::AsyncWriteExt;
            loop {
                let chunk = match field.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        return Err(error(
                            StatusCode::BAD_REQUEST,
                            &format!("Upload interrupted: {e}"),
                        ))
                    }
                };
                let n = chunk.len() as u64;
                state
                    .counters
                    .bytes_received
                    .fetch_add(n, Ordering::Relaxed);
                len += n;
                if len > max {
                    return Err(error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("File is too large (the limit is {max} bytes)"),
                    ));
                }
                state.throttle.take(n).await;
                h.update(&chunk);
                file.write_all(&chunk).await.map_err(internal)?;
            }
            file.flush().await.map_err(internal)?;
            Ok(())
        }
        .await;
        drop(file);
        if let Err(r) = res {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(r);
        }
        out.push(Received {
            name,
            temp,
            info: h.finish(),
        });
    }
}

fn parse_attachment_id(id: &str) -> Option<String> {
    id.parse::<u64>().ok().map(|n| n.to_string())
}

async fn find_attachment(state: &ServerState, id: &str) -> Result<Object, Response> {
    let nf = || error(StatusCode::NOT_FOUND, NOT_FOUND_ATTACHMENT);
    let id = parse_attachment_id(id).ok_or_else(nf)?;
    state
        .store
        .get(PROTO, &id)
        .map_err(internal)?
        .ok_or_else(nf)
}

/// `GET /attachments/{id}`: metadata.
async fn attachment_info(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    auth!(state, headers);
    match find_attachment(&state, &id).await {
        Ok(o) => Json(attachment_json(&o)).into_response(),
        Err(r) => r,
    }
}

/// `DELETE /attachments/{id}`.
async fn delete_attachment(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    auth!(state, headers);
    let o = match find_attachment(&state, &id).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    tri!(state.store.delete(PROTO, &o.id));
    ok()
}

/// `GET /attachments/{id}/{name}`: the content, with single-range support.
async fn download(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((id, _)): Path<(String, String)>,
    Extension(kill): Extension<ConnKill>,
    uri: axum::http::Uri,
) -> Response {
    auth!(state, headers);
    let o = match find_attachment(&state, &id).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    // The web client puts the name in the URL without encoding it; others encode it.
    let raw = uri.path().rsplit('/').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if raw != o.name && decoded != o.name {
        return error(StatusCode::NOT_FOUND, NOT_FOUND_ATTACHMENT);
    }
    if let Some(f) = state.fault(FaultOp::Download) {
        if let Some(r) = fault_status(f, fault_json(f)) {
            return r;
        }
        return kill.drop_connection().await;
    }
    if parse_range(&headers, o.size).is_err() {
        let mut r = error(StatusCode::RANGE_NOT_SATISFIABLE, "Range not satisfiable");
        if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", o.size)) {
            r.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        return r;
    }
    let Some(blob) = o.blob.as_deref() else {
        return internal("attachment without blob");
    };
    let disposition = content_disposition(&o.name);
    serve_file(
        &headers,
        FileAnswer {
            path: &state.store.blob_path(blob),
            size: o.size,
            content_type: content_type_for(&o.name),
            extra: &[(header::CONTENT_DISPOSITION, disposition)],
            bad_range: BadRange::Refuse,
            drop_midway: false,
        },
        Arc::clone(&state.throttle),
    )
    .await
}

/// `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded>`.
fn content_disposition(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let enc = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{enc}")
}
