//! The Box upload host's direct uploads (`POST /files/content`, new versions via
//! `POST /files/{id}/content`) and the pre-flight check, and what chunked sessions share
//! with them: where a committed upload goes ([`Dest`]) and how it is stored.

use axum::extract::multipart::{Multipart, MultipartRejection};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::{json, Value};

use super::super::auth::Credentials;
use super::super::body::{drain_multipart, Intake, DRAIN_LIMIT};
use super::super::faults::Fault;
use super::super::store::{now_ms, Object};
use super::super::{AppState, ConnKill, ServerState};
use super::*;

/// Largest `attributes` part accepted (it is a small JSON object).
const MAX_ATTRIBUTES_BYTES: usize = 64 * 1024;
/// Multipart framing allowance on top of the file size when checking `Content-Length`.
const MULTIPART_SLACK: u64 = 256 * 1024;

/// The error body of an injected 429 or 503, in Box's shape.
pub(super) fn fault_json(f: Fault) -> Value {
    let err = match f {
        Fault::TooMany => BoxError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Request rate limit exceeded, please try again later",
        ),
        _ => BoxError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Unavailable",
        ),
    };
    err.body()
}

pub(super) fn parse_json_body(body: &Bytes) -> BoxResult<Value> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| BoxError::bad_request(format!("Invalid JSON body: {e}")))?;
    if !v.is_object() {
        return Err(BoxError::bad_request("The body must be a JSON object"));
    }
    Ok(v)
}

/// The `name` and `parent.id` a creation request must carry.
pub(super) fn name_and_parent(v: &Value) -> BoxResult<(&str, &str)> {
    let name = v["name"]
        .as_str()
        .ok_or_else(|| BoxError::bad_request("name is required"))?;
    let parent = v["parent"]["id"]
        .as_str()
        .ok_or_else(|| BoxError::bad_request("parent.id is required"))?;
    Ok((name, parent))
}

/// 412 when `If-Match` is given and is not the item's etag.
pub(super) fn check_if_match(headers: &HeaderMap, o: &Object) -> BoxResult<()> {
    if let Some(v) = headers.get(header::IF_MATCH).and_then(|v| v.to_str().ok()) {
        let want = v.trim().trim_matches('"');
        if want != "*" && want != etag_of(o).to_string() {
            return Err(BoxError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "The resource has been modified. Please retrieve the resource again and retry",
            ));
        }
    }
    Ok(())
}

pub(super) fn too_large(state: &ServerState, size: u64) -> BoxResult<()> {
    if size > state.max_file_size() {
        return Err(BoxError::new(
            StatusCode::FORBIDDEN,
            "file_size_limit_exceeded",
            format!(
                "File size exceeds the folder owner's file size limit ({} bytes)",
                state.max_file_size()
            ),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Pre-flight

/// `OPTIONS /files/content` `{name, parent:{id}, size?}`: 200 when an upload would be
/// accepted, otherwise the error the upload would get.
pub(super) async fn preflight_new(
    State(state): State<AppState>,
    creds: Credentials,
    body: Bytes,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let v = parse_json_body(&body)?;
    let (name, parent) = name_and_parent(&v)?;
    check_name(name)?;
    folder(&state, parent)?;
    if let Some(size) = v["size"].as_u64() {
        too_large(&state, size)?;
    }
    check_conflict(&state, parent, name, None, false)?;
    Ok(Json(json!({
        "upload_url": format!("{}/box/upload/2.0/files/content", state.base_url()),
        "upload_token": null,
    }))
    .into_response())
}

// ---------------------------------------------------------------------------------------
// Direct uploads

/// `POST /files/content`: a new file from `attributes` + `file` multipart parts.
pub(super) async fn upload_new(
    State(state): State<AppState>,
    creds: Credentials,
    headers: HeaderMap,
    Extension(kill): Extension<ConnKill>,
    mp: Result<Multipart, MultipartRejection>,
) -> BoxResult {
    direct_upload(state, creds, headers, kill, mp, None).await
}

/// `POST /files/{id}/content`: a new version of file `id`.
pub(super) async fn upload_version(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    headers: HeaderMap,
    Extension(kill): Extension<ConnKill>,
    mp: Result<Multipart, MultipartRejection>,
) -> BoxResult {
    direct_upload(state, creds, headers, kill, mp, Some(id)).await
}

/// Where a committed upload goes.
pub(super) enum Dest {
    New {
        parent: String,
        name: String,
    },
    Version {
        file: Box<Object>,
        name: Option<String>,
    },
}

/// Validate the destination of a new file or version (name rules, parent, conflicts).
pub(super) fn resolve_dest(state: &ServerState, dest: &Dest) -> BoxResult<()> {
    match dest {
        Dest::New { parent, name } => {
            check_name(name)?;
            folder(state, parent)?;
            check_conflict(state, parent, name, None, false)
        }
        Dest::Version { file: f, name } => {
            let cur = super::file(state, &f.id)?;
            if let Some(n) = name {
                check_name(n)?;
                check_conflict(state, &cur.parent, n, Some(&cur.id), false)?;
            }
            Ok(())
        }
    }
}

/// Insert the new file or update the version, once its blob is complete.
pub(super) fn store_upload(
    state: &ServerState,
    dest: &Dest,
    info: &super::super::body::BodyInfo,
    blob: String,
    content_modified_ms: Option<i64>,
    content_created_ms: Option<i64>,
) -> BoxResult<Object> {
    let now = now_ms();
    let version_id = new_version_id(state)?;
    match dest {
        Dest::New { parent, name } => {
            let id = new_id(state)?;
            let mut o = Object::file(PROTO, id, parent.clone(), name.clone(), info, blob);
            o.extra = box_extra(
                0,
                Some(&version_id),
                content_created_ms.unwrap_or(now),
                content_modified_ms.unwrap_or(now),
            );
            state.store.insert(&o)?;
            Ok(o)
        }
        Dest::Version { file: f, name } => {
            let mut o = super::file(state, &f.id)?;
            if let Some(n) = name {
                o.name = n.clone();
            }
            o.size = info.len;
            o.sha1 = info.sha1.clone();
            o.md5 = info.md5.clone();
            o.blob = Some(blob);
            bump(&mut o);
            o.extra["version_id"] = json!(version_id);
            o.extra["content_modified_ms"] = json!(content_modified_ms.unwrap_or(now));
            state.store.update(&o)?;
            Ok(o)
        }
    }
}

pub(super) fn files_answer(state: &ServerState, o: &Object) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({"total_count": 1, "entries": [full_json(state, o)]})),
    )
        .into_response()
}

async fn direct_upload(
    state: AppState,
    creds: Credentials,
    headers: HeaderMap,
    kill: ConnKill,
    mp: Result<Multipart, MultipartRejection>,
    version_of: Option<String>,
) -> BoxResult {
    let mut mp =
        mp.map_err(|e| BoxError::bad_request(format!("The body must be multipart/form-data: {e}")));
    let r = direct_upload_inner(&state, &creds, &headers, &kill, &mut mp, version_of).await;
    if let Ok(mp) = &mut mp {
        drain_multipart(mp, DRAIN_LIMIT).await;
    }
    r
}

async fn direct_upload_inner(
    state: &AppState,
    creds: &Credentials,
    headers: &HeaderMap,
    kill: &ConnKill,
    mp: &mut BoxResult<Multipart>,
    version_of: Option<String>,
) -> BoxResult {
    let state = state.clone();
    let headers = headers.clone();
    check_auth(&state, creds)?;
    let drop_after = match state.upload_fault(kill, fault_json).await {
        Ok(d) => d,
        Err(answer) => return Ok(answer),
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        too_large(&state, len.saturating_sub(MULTIPART_SLACK))?;
    }
    let existing = match &version_of {
        Some(id) => {
            let f = super::file(&state, id)?;
            check_if_match(&headers, &f)?;
            Some(f)
        }
        None => None,
    };
    let mp = match mp {
        Ok(mp) => mp,
        Err(e) => return Err(BoxError::bad_request(e.message.clone())),
    };

    // The attributes part must come before the file part.
    let attributes: Value = loop {
        let field = mp
            .next_field()
            .await
            .map_err(|e| BoxError::bad_request(format!("Malformed multipart body: {e}")))?
            .ok_or_else(|| BoxError::bad_request("The attributes part is missing"))?;
        match field.name() {
            Some("attributes") => {
                let text = field
                    .bytes()
                    .await
                    .map_err(|e| BoxError::bad_request(format!("Malformed multipart body: {e}")))?;
                if text.len() > MAX_ATTRIBUTES_BYTES {
                    return Err(BoxError::bad_request("The attributes part is too large"));
                }
                break parse_json_body(&text)?;
            }
            Some("file") => {
                return Err(BoxError::new(
                    StatusCode::BAD_REQUEST,
                    "metadata_after_file_contents",
                    "Metadata is included after file contents in a file upload request",
                ))
            }
            _ => continue,
        }
    };
    let name = match &attributes["name"] {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        _ => return Err(BoxError::bad_request("attributes.name must be a string")),
    };
    let dest = match existing {
        Some(f) => Dest::Version {
            file: Box::new(f),
            name,
        },
        None => Dest::New {
            name: name.ok_or_else(|| BoxError::bad_request("attributes.name is required"))?,
            parent: attributes["parent"]["id"]
                .as_str()
                .ok_or_else(|| BoxError::bad_request("attributes.parent.id is required"))?
                .to_string(),
        },
    };
    let content_modified = parse_time("content_modified_at", &attributes["content_modified_at"])?;
    let content_created = parse_time("content_created_at", &attributes["content_created_at"])?;
    resolve_dest(&state, &dest)?;

    let mut field = loop {
        let field = mp
            .next_field()
            .await
            .map_err(|e| BoxError::bad_request(format!("Malformed multipart body: {e}")))?
            .ok_or_else(|| BoxError::bad_request("The file part is missing"))?;
        if field.name() == Some("file") {
            break field;
        }
    };
    let temp = state.store.temp_path();
    let received = async {
        let mut intake = Intake::create(&temp).await?;
        let mut len = 0u64;
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| BoxError::bad_request(format!("The upload body broke off: {e}")))?
        {
            len += chunk.len() as u64;
            too_large(&state, len)?;
            intake.write(&chunk, &state.throttle).await?;
            state.received(chunk.len() as u64);
        }
        Ok::<_, BoxError>(intake.finish().await?)
    }
    .await;
    let info = match received {
        Ok(i) => i,
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
    };
    // `Content-MD5` carries the hex SHA-1 of the file on Box.
    if let Some(want) = headers.get("content-md5").and_then(|v| v.to_str().ok()) {
        if !want.trim().eq_ignore_ascii_case(&info.sha1) {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(BoxError::new(
                StatusCode::BAD_REQUEST,
                "bad_digest",
                "The specified content-md5 did not match what we received",
            ));
        }
    }
    // The destination may have changed while the body arrived.
    if let Err(e) = resolve_dest(&state, &dest) {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(e);
    }
    let blob = state.store.commit_blob(&temp)?;
    let o = store_upload(
        &state,
        &dest,
        &info,
        blob,
        content_modified,
        content_created,
    )?;
    tracing::info!(id = %o.id, name = %o.name, size = o.size, "box: direct upload stored");
    if drop_after {
        return Ok(kill.drop_connection().await);
    }
    Ok(files_answer(&state, &o))
}
