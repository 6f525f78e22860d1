//! Stored files: the content (200, 206 for a single range, 416 when unsatisfiable),
//! `CloudFile` info, the caller's listing (newest first, total in `X-Total`), rename and
//! delete (owner only).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;

use super::super::auth::Credentials;
use super::super::body::{serve_file, BadRange, FileAnswer};
use super::super::store::{now_ms, Object};
use super::super::{AppState, ConnKill};
use super::{
    authenticate, bad_name, cloud_file, fault_json, lookup, owned, DysonError, DysonResult,
    ACCOUNT_ID, PROTO,
};

/// Default page of `GET /files/me`.
const DEFAULT_TAKE: u64 = 20;

#[derive(Deserialize)]
pub(super) struct DownloadQuery {
    download: Option<bool>,
}

/// `GET /files/{id}`: the content (200, or 206 for a single range; 416 when unsatisfiable).
pub(super) async fn download(
    State(state): State<AppState>,
    creds: Credentials,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
    Extension(kill): Extension<ConnKill>,
) -> DysonResult {
    authenticate(&state, &creds)?;
    let o = lookup(&state, &id)?.ok_or(DysonError::FileNotFound)?;
    if let Some(answer) = state.download_fault(&kill, fault_json).await {
        return Ok(answer);
    }
    let Some(blob) = o.blob.as_deref() else {
        return Err(DysonError::internal("file without blob"));
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
    Ok(serve_file(
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
    .await)
}

/// `GET /files/{id}/info`.
pub(super) async fn info(
    State(state): State<AppState>,
    creds: Credentials,
    Path(id): Path<String>,
) -> DysonResult {
    authenticate(&state, &creds)?;
    let o = lookup(&state, &id)?.ok_or(DysonError::FileNotFound)?;
    Ok(Json(cloud_file(&o, false)).into_response())
}

#[derive(Deserialize)]
pub(super) struct MeQuery {
    offset: Option<String>,
    take: Option<String>,
    pool: Option<String>,
}

/// `GET /files/me?offset=&take=&pool=`: newest first, total in `X-Total`.
pub(super) async fn list_mine(
    State(state): State<AppState>,
    creds: Credentials,
    Query(q): Query<MeQuery>,
) -> DysonResult {
    authenticate(&state, &creds)?;
    let num = |v: Option<&str>, default: u64, field: &str| -> DysonResult<u64> {
        match v.filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(s) => s
                .parse::<u64>()
                .map_err(|_| DysonError::problem(field, &format!("The value '{s}' is not valid."))),
        }
    };
    let offset = num(q.offset.as_deref(), 0, "offset")?;
    let take = num(q.take.as_deref(), DEFAULT_TAKE, "take")?;
    let pool = match q.pool.as_deref().filter(|p| !p.is_empty()) {
        None => None,
        Some(p) => Some(
            uuid::Uuid::parse_str(p)
                .map_err(|_| {
                    DysonError::problem("pool", &format!("The value '{p}' is not valid."))
                })?
                .to_string(),
        ),
    };
    let mut matching = vec![("account_id", ACCOUNT_ID)];
    if let Some(p) = pool.as_deref() {
        matching.push(("pool_id", p));
    }
    // Newest first (insertion order reversed).
    let (mine, total) = state.store.page_newest(PROTO, &matching, offset, take)?;
    let page: Vec<Value> = mine.iter().map(|o| cloud_file(o, false)).collect();
    let mut resp = Json(page).into_response();
    resp.headers_mut()
        .insert("x-total", HeaderValue::from(total));
    Ok(resp)
}

/// The caller's own file `id`, or 404 `NOT_FOUND` naming `File`.
fn own_file(state: &AppState, id: &str) -> DysonResult<Object> {
    match lookup(state, id)? {
        Some(o) if owned(&o) => Ok(o),
        _ => Err(DysonError::not_found("File")),
    }
}

/// `DELETE /files/{id}`: owner only, 204.
pub(super) async fn delete_file(
    State(state): State<AppState>,
    creds: Credentials,
    Path(id): Path<String>,
) -> DysonResult {
    authenticate(&state, &creds)?;
    let o = own_file(&state, &id)?;
    state.store.delete(PROTO, &o.id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PATCH /files/{id}/name` with a JSON string body.
pub(super) async fn rename(
    State(state): State<AppState>,
    creds: Credentials,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> DysonResult {
    authenticate(&state, &creds)?;
    let Ok(name) = serde_json::from_slice::<String>(&body) else {
        return Err(DysonError::problem(
            "name",
            "A JSON string body is required.",
        ));
    };
    if let Some(why) = bad_name(&name) {
        return Err(DysonError::validation("name", why));
    }
    let mut o = own_file(&state, &id)?;
    o.name = name;
    o.modified_ms = now_ms();
    state.store.update(&o)?;
    Ok(Json(cloud_file(&o, false)).into_response())
}
