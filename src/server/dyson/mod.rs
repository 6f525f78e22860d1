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
//!
//! Layout: this module holds the shared pieces (error shapes, the caller check, ids, the
//! `CloudFile` rendering, look-ups); `upload` the create/chunk/complete flow; `files`
//! reading, listing, renaming and deleting stored files.

mod files;
mod upload;

use std::collections::HashSet;
use std::sync::Mutex;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};

use super::auth::Credentials;
use super::faults::Fault;
use super::names::{NameFault, NameRules};
use super::store::{Object, StoreError};
use super::{AppState, ServerState};

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
/// Length of a nanoid (task and file ids).
const NANOID_LEN: usize = 21;
const NANOID_ALPHABET: &[u8] = b"_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

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
        .route("/files/upload/create", post(upload::create))
        .route("/files/upload/chunk/{task}/{index}", post(upload::chunk))
        .route("/files/upload/complete/{task}", post(upload::complete))
        .route("/files/me", get(files::list_mine))
        .route(
            "/files/{id}",
            get(files::download).delete(files::delete_file),
        )
        .route("/files/{id}/info", get(files::info))
        .route("/files/{id}/name", patch(files::rename))
        .fallback(|| async {
            DysonError::api(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource was not found.",
            )
        })
        // Chunk bodies are counted and limited by the handler itself.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// The three shapes a Dyson answer fails in.
#[derive(Debug)]
pub(crate) enum DysonError {
    /// `ApiError` (`DysonNetwork.Shared/Http/ApiError.cs`); null members are omitted.
    Api {
        status: StatusCode,
        code: &'static str,
        message: String,
        detail: Option<String>,
        /// Field → messages (`VALIDATION_ERROR`).
        errors: Option<Value>,
    },
    /// ASP.NET's own RFC 7807 answer (model binding, media type).
    Problem {
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        /// Field → messages, when a field is at fault.
        errors: Option<Value>,
    },
    /// `GET /files/{id}` and `/info` of an unknown file: plain text.
    FileNotFound,
}

impl DysonError {
    fn api(status: StatusCode, code: &'static str, message: impl Into<String>) -> DysonError {
        DysonError::Api {
            status,
            code,
            message: message.into(),
            detail: None,
            errors: None,
        }
    }

    /// 404 `NOT_FOUND` naming `what`.
    fn not_found(what: &str) -> DysonError {
        DysonError::Api {
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: format!("The requested resource '{what}' was not found."),
            detail: Some(what.to_string()),
            errors: None,
        }
    }

    /// 400 `VALIDATION_ERROR` on `field`.
    fn validation(field: &str, message: &str) -> DysonError {
        DysonError::Api {
            status: StatusCode::BAD_REQUEST,
            code: "VALIDATION_ERROR",
            message: message.to_string(),
            detail: None,
            errors: Some(json!({ field: [message] })),
        }
    }

    /// ASP.NET's automatic 400 for a model-binding failure.
    fn problem(field: &str, message: &str) -> DysonError {
        DysonError::Problem {
            status: StatusCode::BAD_REQUEST,
            kind: "https://tools.ietf.org/html/rfc9110#section-15.5.1",
            title: "One or more validation errors occurred.",
            errors: Some(json!({ field: [message] })),
        }
    }

    /// ASP.NET's 415 for a body that is not `multipart/form-data`.
    fn unsupported_media_type() -> DysonError {
        DysonError::Problem {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            kind: "https://tools.ietf.org/html/rfc9110#section-15.5.16",
            title: "Unsupported Media Type",
            errors: None,
        }
    }

    fn internal(e: impl std::fmt::Display) -> DysonError {
        tracing::error!(error = %e, "dyson: internal error");
        DysonError::api(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "An internal error occurred.",
        )
    }
}

impl IntoResponse for DysonError {
    fn into_response(self) -> Response {
        match self {
            DysonError::Api {
                status,
                code,
                message,
                detail,
                errors,
            } => {
                let mut v = api_error_json(status, code, &message);
                if let Some(d) = detail {
                    v["detail"] = json!(d);
                }
                if let Some(e) = errors {
                    v["errors"] = e;
                }
                (status, Json(v)).into_response()
            }
            DysonError::Problem {
                status,
                kind,
                title,
                errors,
            } => {
                let mut v = json!({
                    "type": kind,
                    "title": title,
                    "status": status.as_u16(),
                });
                if let Some(e) = errors {
                    v["errors"] = e;
                }
                v["traceId"] = json!(format!("00-{}-01", uuid::Uuid::new_v4().simple()));
                (
                    status,
                    [(header::CONTENT_TYPE, "application/problem+json")],
                    v.to_string(),
                )
                    .into_response()
            }
            DysonError::FileNotFound => (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "File not found.",
            )
                .into_response(),
        }
    }
}

impl From<StoreError> for DysonError {
    fn from(e: StoreError) -> Self {
        DysonError::internal(e)
    }
}

impl From<std::io::Error> for DysonError {
    fn from(e: std::io::Error) -> Self {
        DysonError::internal(e)
    }
}

type DysonResult<T = Response> = Result<T, DysonError>;

fn api_error_json(status: StatusCode, code: &str, message: &str) -> Value {
    json!({"code": code, "message": message, "status": status.as_u16()})
}

/// The error body of an injected 503/429, with the matching status inside.
fn fault_json(f: Fault) -> Value {
    match f {
        Fault::TooMany => api_error_json(
            StatusCode::TOO_MANY_REQUESTS,
            "TOO_MANY_REQUESTS",
            "Too many requests.",
        ),
        _ => api_error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "The service is temporarily unavailable.",
        ),
    }
}

/// The token from `Authorization: Bearer|AtField`, `?tk=` or the `AuthToken` cookie, in
/// that order: the first one present decides.
fn authenticate(state: &ServerState, creds: &Credentials) -> DysonResult<()> {
    let presented = if creds.authorization().is_some() {
        creds
            .scheme_token(&["Bearer ", "AtField "])
            .map(str::to_string)
    } else if let Some(tk) = creds.query("tk") {
        Some(tk)
    } else {
        creds.cookie("AuthToken").map(str::to_string)
    };
    match presented {
        Some(t) if state.token_matches(&t) => Ok(()),
        _ => Err(DysonError::api(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "You need to be logged in to perform this action.",
        )),
    }
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
    match NameRules::default().check(name).err()? {
        NameFault::Empty => Some("The file name is empty."),
        NameFault::TooLong => Some("The file name is longer than 255 bytes."),
        NameFault::Separator | NameFault::Control => {
            Some("The file name contains a forbidden character.")
        }
        NameFault::Reserved | NameFault::EdgeSpace => Some("The file name is not allowed."),
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

/// A file by id; `/files/{id}.{ext}` is accepted too (ids never contain a dot).
fn lookup(state: &ServerState, id: &str) -> DysonResult<Option<Object>> {
    let id = id.split('.').next().unwrap_or_default();
    if !is_nanoid_like(id) {
        return Ok(None);
    }
    Ok(state.store.get(PROTO, id)?)
}

fn owned(o: &Object) -> bool {
    o.extra["account_id"].as_str() == Some(ACCOUNT_ID)
}
