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
//!
//! Layout: this module holds the account side (login, logout, status, the caller check)
//! and the error shape; `messages` the room's messages; `attachments` uploads, metadata,
//! downloads and deletes of attachments.

mod attachments;
mod messages;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Credentials;
use super::faults::Fault;
use super::store::StoreError;
use super::{AppState, ServerState};

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

const WRONG_BEARER: &str = "Wrong Bearer, please renew Web API Access Token";
const NO_AUTH: &str = "The Authorization HTTP-header or VirolaUserSessionId cookie expected";
const BAD_SESSION: &str = "The user session is invalid or expired, please log in again";
const BAD_LOGIN: &str = "The username or password is invalid.";

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
            get(messages::list_messages).post(messages::post_message),
        )
        .route("/messages/{mid}", delete(messages::delete_message))
        .route("/messages/{mid}/attachments", post(attachments::upload))
        .route(
            "/attachments/{id}",
            get(attachments::info).delete(attachments::delete),
        )
        .route("/attachments/{id}/{name}", get(attachments::download))
        .fallback(|| async { VirolaError::new(StatusCode::NOT_FOUND, "Not found") })
        // Attachments are streamed to disk with our own size limit.
        .layer(DefaultBodyLimit::disable())
}

/// An error in Virola's envelope: `{"errorText", "httpStatusCode"}` with that status.
#[derive(Debug)]
pub(crate) struct VirolaError {
    status: StatusCode,
    text: String,
    /// A 416 names the size in `Content-Range: bytes */<size>`.
    unsatisfiable: Option<u64>,
}

impl VirolaError {
    fn new(status: StatusCode, text: impl Into<String>) -> VirolaError {
        VirolaError {
            status,
            text: text.into(),
            unsatisfiable: None,
        }
    }

    fn bad_request(text: impl Into<String>) -> VirolaError {
        VirolaError::new(StatusCode::BAD_REQUEST, text)
    }

    /// 416 for a `Range` a file of `size` bytes cannot satisfy.
    fn range_not_satisfiable(size: u64) -> VirolaError {
        VirolaError {
            unsatisfiable: Some(size),
            ..VirolaError::new(StatusCode::RANGE_NOT_SATISFIABLE, "Range not satisfiable")
        }
    }

    fn internal(e: impl std::fmt::Display) -> VirolaError {
        tracing::error!(error = %e, "virola: internal error");
        VirolaError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
    }
}

impl IntoResponse for VirolaError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(error_json(self.status, &self.text))).into_response();
        if let Some(size) = self.unsatisfiable {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        r
    }
}

impl From<StoreError> for VirolaError {
    fn from(e: StoreError) -> Self {
        VirolaError::internal(e)
    }
}

impl From<std::io::Error> for VirolaError {
    fn from(e: std::io::Error) -> Self {
        VirolaError::internal(e)
    }
}

type VirolaResult<T = Response> = Result<T, VirolaError>;

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

/// Who is calling.
enum Caller {
    Token,
    Session(String),
}

/// `Authorization: Bearer <token>` wins when present; otherwise the session cookie.
fn authenticate(state: &ServerState, creds: &Credentials) -> VirolaResult<Caller> {
    let unauthorized = |text| VirolaError::new(StatusCode::UNAUTHORIZED, text);
    if creds.authorization().is_some() {
        return match creds.scheme_token(&["Bearer "]) {
            Some(tok) if state.token_matches(tok) => Ok(Caller::Token),
            _ => Err(unauthorized(WRONG_BEARER)),
        };
    }
    match creds.cookie(SESSION_COOKIE) {
        Some(sid) if state.virola.sessions().contains(sid) => Ok(Caller::Session(sid.to_string())),
        Some(_) => Err(unauthorized(BAD_SESSION)),
        None => Err(unauthorized(NO_AUTH)),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LoginBody {
    user_name: String,
    password: String,
}

/// `POST /login {userName, password}`: the password is the server token (one account).
async fn login(State(state): State<AppState>, body: axum::body::Bytes) -> VirolaResult {
    let Ok(b) = serde_json::from_slice::<LoginBody>(&body) else {
        return Err(VirolaError::bad_request(
            "JSON body {\"userName\",\"password\"} expected",
        ));
    };
    if b.user_name.is_empty() || !state.token_matches(&b.password) {
        return Err(VirolaError::new(StatusCode::UNAUTHORIZED, BAD_LOGIN));
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
    Ok(resp)
}

/// `POST /logout`: ends the cookie session (a token caller just gets 200).
async fn logout(State(state): State<AppState>, creds: Credentials) -> VirolaResult {
    if let Caller::Session(sid) = authenticate(&state, &creds)? {
        state.virola.sessions().remove(&sid);
    }
    let mut resp = ok();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("VirolaUserSessionId=; Path=/; Max-Age=0; HttpOnly"),
    );
    Ok(resp)
}

/// `GET /status`.
async fn status(State(state): State<AppState>, creds: Credentials) -> VirolaResult {
    Ok(match authenticate(&state, &creds)? {
        Caller::Session(sid) => Json(json!({
            "httpStatusCode": 200, "userId": USER_ID, "userSessionId": sid,
        }))
        .into_response(),
        Caller::Token => Json(json!({"httpStatusCode": 200, "userId": USER_ID})).into_response(),
    })
}
