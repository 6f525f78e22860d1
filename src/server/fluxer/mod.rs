//! The Fluxer protocol of `uploadfs serve`: one text channel
//! ([`FLUXER_CHANNEL_ID`]) with chunked uploads,
//! messages carrying attachments, and the CDN that serves them.
//!
//! API (`/fluxer/v1`, every route needs `Authorization: <token>` or `Bearer <token>`):
//! - `POST /channels/{cid}/chunked-uploads` → 201 session (8 MiB chunks, ≤ 128 of them).
//! - `PUT  /channels/{cid}/chunked-uploads/{uid}/chunks/{i}` → 200 `{etag}`.
//! - `POST /channels/{cid}/chunked-uploads/{uid}/complete` → 200; the assembled object
//!   becomes an "uploaded object", not yet a file: only a message makes it one.
//! - `POST /channels/{cid}/messages` (multipart `payload_json` + `files[N]`), `GET` the
//!   channel's messages (newest first, `limit`/`before`/`after`) or one message, `DELETE`
//!   a message or one of its attachments.
//!
//! CDN (`/fluxer/cdn`, no auth, as the real media proxy):
//! `GET /attachments/{cid}/{aid}/{filename}`; a bad or unsatisfiable `Range` is ignored
//! (200 with the whole body), never 416.
//!
//! Errors are `{"code": "...", "message": "..."}` (plus `errors` for form validation) with
//! the statuses of the spec. Choices where the real service is unknown (spec "emulator
//! choice"), documented here because clients see them:
//! - every chunk must be exactly `chunk_size` bytes except the last, which must be the
//!   exact remainder; anything else is `400 CHUNKED_UPLOAD_INVALID_CHUNK_SIZE`;
//! - a `complete` naming a chunk that was never uploaded is `400 CHUNKED_UPLOAD_INCOMPLETE`,
//!   one whose etag is not the chunk's current etag is `400 CHUNKED_UPLOAD_INVALID_ETAG`;
//! - an unknown (or already used) `uploaded_filename` in a message is
//!   `400 INVALID_FORM_BODY` with an error of code `UPLOADED_FILE_NOT_FOUND`; an uploaded
//!   object is consumed by the message that carries it;
//! - a message with neither content nor attachments is `400 CANNOT_SEND_EMPTY_MESSAGE`.
//!
//! Sessions and uploaded objects live in memory (their bytes on disk) and do not survive
//! a restart, like sessions lost from a flushed KV store. Messages survive: each is a
//! small JSON record under `fluxer-messages/` in the data directory, and each attachment is
//! a [`Store`](super::store::Store) object (parent = channel id, `extra` = message and
//! channel ids) inserted only once its blob is committed.
//!
//! Not emulated: the per-channel rate-limit buckets (only injected 429s occur, with the
//! real body `{"code":"RATE_LIMITED",...,"retry_after":0.1}`).

mod book;
mod cdn;
mod chunked;
mod messages;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde_json::json;

use super::auth::Credentials;
use super::body::BodyInfo;
use super::faults::Fault;
use super::names::{NameFault, NameRules};
use super::{AppState, ServerState, FLUXER_CHANNEL_ID};

/// Protocol name in the store and in introspection.
pub(crate) const PROTO: &str = "fluxer";
/// `CHUNKED_UPLOAD_CHUNK_SIZE` of the real service: 8 MiB, not negotiable.
pub const CHUNK_SIZE: u64 = 8 * 1024 * 1024;
/// `CHUNKED_UPLOAD_MAX_CHUNKS`: with 8 MiB chunks this caps a chunked file at 1 GiB.
pub const MAX_CHUNKS: u64 = 128;

/// In-memory state: open chunked sessions, completed uploaded objects, and the message
/// book (loaded from disk on first use).
#[derive(Default)]
pub struct ProtoState {
    sessions: Mutex<HashMap<String, chunked::Session>>,
    uploads: Mutex<HashMap<String, Uploaded>>,
    book: Mutex<Option<book::Book>>,
    /// Last snowflake handed out (message and attachment ids share the sequence).
    last_id: Mutex<u64>,
}

/// A completed chunked upload waiting for a message to carry it.
struct Uploaded {
    /// The assembled bytes (a temp file, turned into a blob when a message uses it).
    path: PathBuf,
    info: BodyInfo,
}

impl Drop for Uploaded {
    fn drop(&mut self) {
        // Consumed uploads have been renamed away already; this only removes leftovers.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ProtoState {
    /// Number of chunked-upload sessions open: created, not completed, not expired.
    pub fn open_sessions(&self) -> usize {
        let now = Instant::now();
        lock(&self.sessions)
            .values()
            .filter(|s| s.expires > now)
            .count()
    }

    /// Forget every open chunked-upload session (control `forget_sessions`); its chunks
    /// then answer 404 `CHUNKED_UPLOAD_NOT_FOUND` as for an expired one. Returns their ids.
    pub fn clear_sessions(&self) -> Vec<String> {
        lock(&self.sessions).drain().map(|(id, _)| id).collect()
    }

    /// A new snowflake: milliseconds since the Fluxer epoch in the high bits, strictly
    /// increasing even within one millisecond.
    fn next_id(&self) -> u64 {
        let ms = (super::store::now_ms() - FLUXER_EPOCH_MS).max(0) as u64;
        let mut last = lock(&self.last_id);
        *last = (ms << 22).max(*last + 1);
        *last
    }

    fn bump_ids(&self, seen: u64) {
        let mut last = lock(&self.last_id);
        *last = (*last).max(seen);
    }
}

/// Snowflake epoch (2015-01-01T00:00:00Z), shared with the Discord-style id scheme.
const FLUXER_EPOCH_MS: i64 = 1_420_070_400_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/channels/{cid}/chunked-uploads",
            post(chunked::create_upload),
        )
        .route(
            "/channels/{cid}/chunked-uploads/{uid}/chunks/{index}",
            put(chunked::put_chunk),
        )
        .route(
            "/channels/{cid}/chunked-uploads/{uid}/complete",
            post(chunked::complete_upload),
        )
        .route(
            "/channels/{cid}/messages",
            post(messages::post_message).get(messages::list_messages),
        )
        .route(
            "/channels/{cid}/messages/{mid}",
            get(messages::get_message).delete(messages::delete_message),
        )
        .route(
            "/channels/{cid}/messages/{mid}/attachments/{aid}",
            delete(messages::delete_attachment),
        )
        // Inline files are streamed to disk with our own size limit.
        .layer(DefaultBodyLimit::disable())
}

pub fn cdn_router() -> Router<AppState> {
    Router::new().route("/attachments/{cid}/{aid}/{filename}", get(cdn::download))
}

/// A Fluxer error answer: a status and `{"code","message", ...}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        body: json!({ "code": code, "message": message.into() }),
    }
}

/// `400 INVALID_FORM_BODY` with one field error.
fn form_error(path: &str, code: &str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "code": "INVALID_FORM_BODY",
            "message": "Input Validation Error",
            "errors": [{ "path": path, "message": message, "code": code }],
        }),
    }
}

fn too_large(max: u64) -> ApiError {
    error(
        StatusCode::BAD_REQUEST,
        "FILE_SIZE_TOO_LARGE",
        format!("File size is too large. Maximum file size is {max}."),
    )
}

/// The error body of an injected 429/503, in Fluxer's shape (429 carries `retry_after`
/// in fractional seconds as the real rate limiter does).
fn fault_json(fault: Fault) -> serde_json::Value {
    match fault {
        Fault::TooMany => json!({
            "code": "RATE_LIMITED",
            "message": "You are being rate limited.",
            "global": false,
            "retry_after": 0.1,
        }),
        _ => json!({ "code": "SERVICE_UNAVAILABLE", "message": "Service unavailable." }),
    }
}

/// Largest file accepted: the account limit, and the server-wide limit.
fn max_size(state: &ServerState) -> u64 {
    state.live().fluxer_max_size.min(state.max_file_size())
}

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    User,
    Bot,
}

/// `Authorization: <token>`, `Bearer <token>` (users) or `Bot <token>` (bots).
fn auth(state: &ServerState, creds: &Credentials) -> Result<Caller, ApiError> {
    let (caller, token) = match creds.scheme_token(&["Bot "]) {
        Some(t) => (Caller::Bot, Some(t)),
        None => (Caller::User, creds.bearer_or_bare()),
    };
    if token.is_some_and(|t| state.token_matches(t)) {
        Ok(caller)
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Unauthorized",
        ))
    }
}

/// Users only (the chunked-upload routes refuse bots with 403 `ACCESS_DENIED`).
fn auth_user(state: &ServerState, creds: &Credentials) -> Result<(), ApiError> {
    match auth(state, creds)? {
        Caller::User => Ok(()),
        Caller::Bot => Err(error(
            StatusCode::FORBIDDEN,
            "ACCESS_DENIED",
            "Bots cannot use this endpoint.",
        )),
    }
}

/// A snowflake path/query value: decimal digits that fit in 64 bits.
fn parse_snowflake(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// The channel must be a snowflake and the one channel this server hosts.
fn check_channel(cid: &str) -> Result<(), ApiError> {
    if parse_snowflake(cid).is_none() {
        return Err(form_error(
            "channel_id",
            "SNOWFLAKE_TYPE_INVALID",
            "Value is not a snowflake.",
        ));
    }
    if cid != FLUXER_CHANNEL_ID {
        return Err(error(
            StatusCode::NOT_FOUND,
            "UNKNOWN_CHANNEL",
            "Unknown Channel",
        ));
    }
    Ok(())
}

/// Why a file name is refused (a path segment of the CDN URL), or `None` when it is fine.
fn bad_filename(name: &str) -> Option<&'static str> {
    let rules = NameRules {
        no_control: true,
        no_edge_spaces: false,
    };
    match rules.check(name).err()? {
        NameFault::Empty => Some("Filename must not be empty."),
        NameFault::TooLong => Some("Filename must be at most 255 bytes."),
        NameFault::Separator => Some("Filename must not contain slashes or backslashes."),
        NameFault::Control => Some("Filename must not contain control characters."),
        NameFault::Reserved | NameFault::EdgeSpace => Some("Filename must not be a relative path."),
    }
}

/// The message book, loaded from disk on first use.
fn book<'a>(state: &'a ServerState) -> Result<MutexGuard<'a, Option<book::Book>>, ApiError> {
    let mut g = lock(&state.fluxer.book);
    if g.is_none() {
        let b = book::Book::load(state.store.root().join("fluxer-messages")).map_err(|e| {
            tracing::error!(error = %e, "fluxer: cannot load messages");
            internal()
        })?;
        state.fluxer.bump_ids(b.max_id());
        // Attachment ids come from the same sequence; never hand one out twice.
        if let Ok(objects) = state.store.all(PROTO) {
            for o in objects {
                state.fluxer.bump_ids(o.id.parse().unwrap_or(0));
            }
        }
        // Session parts left from before a restart belong to sessions that are gone.
        let _ = std::fs::remove_dir_all(state.store.root().join("sessions").join(PROTO));
        *g = Some(b);
    }
    Ok(g)
}

fn internal() -> ApiError {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "INTERNAL_SERVER_ERROR",
        "Internal server error.",
    )
}

/// Ensures the lazily loaded parts exist before the first session (ids, stale parts).
fn ensure_loaded(state: &ServerState) -> Result<(), ApiError> {
    book(state).map(|_| ())
}
