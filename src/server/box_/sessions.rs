//! The Box upload host's chunked upload sessions: create, status, parts, list, commit,
//! abort.
//!
//! A part is streamed straight to its offset in the session's data file and checked
//! against its `Digest`; only then is it recorded (a refused part's bytes are overwritten
//! by the retry). The whole-file digest is computed as parts become contiguous
//! ([`AssembledFile`](crate::server::body::AssembledFile)), so commit only finishes the
//! hash, compares it, moves the data file into the blob store and then inserts or updates
//! the file row: a listing never shows a partial file.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use super::super::auth::Credentials;
use super::super::body::{drain, AssembledFile, BodyError, Hashers, DRAIN_LIMIT};
use super::super::faults::FaultOp;
use super::super::{AppState, ConnKill, Faulted, ServerState};
use super::upload::{
    fault_json, files_answer, parse_json_body, resolve_dest, store_upload, too_large, Dest,
};
use super::*;

/// Offsets beyond this in `GET …/parts` are refused (documented by Box).
const MAX_PARTS_OFFSET: u64 = 10_000;
/// `Retry-After` of a 202 commit answer, seconds.
const COMMIT_RETRY_AFTER: &str = "1";

fn session_json(state: &ServerState, s: &Session, processed: usize) -> Value {
    let base = format!(
        "{}/box/upload/2.0/files/upload_sessions/{}",
        state.base_url(),
        s.id
    );
    json!({
        "id": s.id,
        "type": "upload_session",
        "session_expires_at": rfc3339(s.expires_ms()),
        "part_size": s.part_size,
        "total_parts": s.total_parts(),
        "num_parts_processed": processed,
        "session_endpoints": {
            "upload_part": base,
            "commit": format!("{base}/commit"),
            "abort": base,
            "list_parts": format!("{base}/parts"),
            "status": base,
            "log_event": format!("{base}/log"),
        },
    })
}

/// `file_size` of a create-session body: required, a non-negative integer.
fn session_size(state: &ServerState, v: &Value) -> BoxResult<u64> {
    let size = match &v["file_size"] {
        Value::Null => {
            return Err(BoxError::new(
                StatusCode::BAD_REQUEST,
                "missing_file_size",
                "file_size is required",
            ))
        }
        n => n.as_u64().ok_or_else(|| {
            BoxError::new(
                StatusCode::BAD_REQUEST,
                "invalid_file_size",
                "file_size must be a non-negative integer",
            )
        })?,
    };
    if size < MIN_SESSION_SIZE {
        return Err(BoxError::new(
            StatusCode::BAD_REQUEST,
            "file_size_too_small",
            format!(
                "File size {size} is less than the minimum allowed for this API: {MIN_SESSION_SIZE}"
            ),
        ));
    }
    too_large(state, size)?;
    Ok(size)
}

fn open_session(state: &ServerState, target: SessionTarget, file_size: u64) -> BoxResult {
    let id = uuid::Uuid::new_v4().simple().to_string().to_uppercase();
    // Box files carry a SHA-1 only; their MD5 would never be read.
    let data = AssembledFile::create(
        state.store.session_dir(PROTO, &id)?.join("data"),
        file_size,
        Hashers::sha1_only(),
    )?;
    let s = Arc::new(Session {
        id,
        target,
        file_size,
        part_size: part_size_for(file_size),
        created_ms: now_ms(),
        inner: Default::default(),
        commit_lock: Default::default(),
        data: Arc::new(data),
    });
    state.box_.insert_session(s.clone());
    tracing::info!(session = %s.id, file_size, part_size = s.part_size, "box: session created");
    Ok((StatusCode::CREATED, Json(session_json(state, &s, 0))).into_response())
}

/// `POST /files/upload_sessions` `{folder_id, file_size, file_name}`.
pub(super) async fn create_session(
    State(state): State<AppState>,
    creds: Credentials,
    body: Bytes,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let v = parse_json_body(&body)?;
    let folder_id = match &v["folder_id"] {
        Value::Null => {
            return Err(BoxError::new(
                StatusCode::BAD_REQUEST,
                "missing_destination",
                "folder_id is required",
            ))
        }
        Value::String(s) => s.clone(),
        _ => {
            return Err(BoxError::new(
                StatusCode::BAD_REQUEST,
                "invalid_folder_id",
                "folder_id must be a string",
            ))
        }
    };
    let name = match &v["file_name"] {
        Value::Null => {
            return Err(BoxError::new(
                StatusCode::BAD_REQUEST,
                "missing_file_name",
                "file_name is required",
            ))
        }
        Value::String(s) => s.clone(),
        _ => return Err(BoxError::bad_request("file_name must be a string")),
    };
    let size = session_size(&state, &v)?;
    check_name(&name)?;
    folder(&state, &folder_id)?;
    check_conflict(&state, &folder_id, &name, None, false)?;
    open_session(&state, SessionTarget::NewFile { folder_id, name }, size)
}

/// `POST /files/{id}/upload_sessions` `{file_size, file_name?}`: a new version.
pub(super) async fn create_version_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    body: Bytes,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let f = super::file(&state, &id)?;
    let v = parse_json_body(&body)?;
    let size = session_size(&state, &v)?;
    let name = match &v["file_name"] {
        Value::Null => None,
        Value::String(s) => {
            check_name(s)?;
            check_conflict(&state, &f.parent, s, Some(&f.id), false)?;
            Some(s.clone())
        }
        _ => return Err(BoxError::bad_request("file_name must be a string")),
    };
    open_session(
        &state,
        SessionTarget::NewVersion { file_id: id, name },
        size,
    )
}

fn session_or_404(state: &ServerState, id: &str) -> BoxResult<Arc<Session>> {
    state
        .box_
        .session(id)
        .ok_or_else(|| BoxError::not_found(&format!("upload session {id}")))
}

/// `GET /files/upload_sessions/{id}`.
pub(super) async fn get_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let s = session_or_404(&state, &id)?;
    let n = s.lock().parts.len();
    Ok(Json(session_json(&state, &s, n)).into_response())
}

/// `DELETE /files/upload_sessions/{id}`: abort, discarding the parts.
pub(super) async fn abort_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let s = session_or_404(&state, &id)?;
    let _commit = s.commit_lock.lock().await;
    if state.box_.remove_session(&id).is_none() {
        return Err(BoxError::not_found(&format!("upload session {id}")));
    }
    s.lock().closed = true;
    remove_session_dir(&state, &id).await;
    tracing::info!(session = %id, "box: session aborted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn remove_session_dir(state: &ServerState, id: &str) {
    if let Ok(dir) = state.store.session_dir(PROTO, id) {
        let _ = tokio::fs::remove_dir_all(dir).await;
    }
}

/// `Digest: sha=<base64 SHA-1>` (other algorithms may be listed too) as lowercase hex.
fn parse_digest(headers: &HeaderMap) -> BoxResult<String> {
    let v = headers
        .get("digest")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            BoxError::new(
                StatusCode::BAD_REQUEST,
                "missing_digest",
                "The Digest header is required: sha=<base64 SHA-1>",
            )
        })?;
    let invalid = || {
        BoxError::new(
            StatusCode::BAD_REQUEST,
            "invalid_digest",
            "The Digest header must be sha=<base64 SHA-1>",
        )
    };
    let b64 = v
        .split(',')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(alg, _)| alg.trim().eq_ignore_ascii_case("sha"))
        .map(|(_, val)| val.trim())
        .ok_or_else(invalid)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| invalid())?;
    if raw.len() != 20 {
        return Err(invalid());
    }
    Ok(hex::encode(raw))
}

fn b64_of_hex(h: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(hex::decode(h).unwrap_or_default())
}

fn range_error(code: &'static str, message: String) -> BoxError {
    BoxError::new(StatusCode::RANGE_NOT_SATISFIABLE, code, message)
}

/// `Content-Range: bytes lo-hi/total` checked against the session: returns (lo, size).
fn parse_part_range(headers: &HeaderMap, s: &Session) -> BoxResult<(u64, u64)> {
    let raw = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bad = || {
        range_error(
            "invalid_content_range",
            format!("Content-Range must be 'bytes <lo>-<hi>/<total>', got '{raw}'"),
        )
    };
    let spec = raw.trim().strip_prefix("bytes ").ok_or_else(bad)?;
    let (range, total) = spec.split_once('/').ok_or_else(bad)?;
    let (lo, hi) = range.split_once('-').ok_or_else(bad)?;
    let lo: u64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u64 = hi.trim().parse().map_err(|_| bad())?;
    let total: u64 = total.trim().parse().map_err(|_| bad())?;
    if hi < lo {
        return Err(bad());
    }
    if total != s.file_size {
        return Err(range_error(
            "content_range_total_mismatch",
            format!(
                "Content-Range total {total} does not match the session's file size {}",
                s.file_size
            ),
        ));
    }
    if lo % s.part_size != 0 {
        return Err(range_error(
            "unaligned_part_offset",
            format!(
                "The part offset {lo} is not a multiple of the part size {}",
                s.part_size
            ),
        ));
    }
    let want = s.part_size.min(s.file_size.saturating_sub(lo));
    let size = hi - lo + 1;
    if lo >= s.file_size || size != want {
        return Err(range_error(
            "invalid_part_size",
            format!(
                "The part at offset {lo} must be {want} bytes (part size {}), got {size}",
                s.part_size
            ),
        ));
    }
    Ok((lo, size))
}

/// Releases a part's in-flight reservation however the request ends (including the
/// connection going away mid-body, which drops the handler).
struct InFlight {
    session: Arc<Session>,
    offset: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.session.lock().in_flight.remove(&self.offset);
    }
}

/// The session, digest, offset and size of a part upload, and its range reservation.
fn check_part(
    state: &ServerState,
    id: &str,
    headers: &HeaderMap,
) -> BoxResult<(Arc<Session>, String, u64, u64, InFlight)> {
    let s = session_or_404(state, id)?;
    let digest = parse_digest(headers)?;
    let (offset, size) = parse_part_range(headers, &s)?;
    let mut inner = s.lock();
    if inner.parts.contains_key(&offset) || inner.in_flight.contains(&offset) {
        return Err(range_error(
            "range_overlaps_existing_part",
            format!(
                "Part range {offset}-{} overlaps with another part",
                offset + size - 1
            ),
        ));
    }
    inner.in_flight.insert(offset);
    drop(inner);
    let reservation = InFlight {
        session: s.clone(),
        offset,
    };
    Ok((s, digest, offset, size, reservation))
}

/// `PUT /files/upload_sessions/{id}`: one part, raw body.
pub(super) async fn upload_part(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    headers: HeaderMap,
    Extension(kill): Extension<ConnKill>,
    body: Body,
) -> BoxResult {
    if let Err(e) = check_auth(&state, &creds) {
        drain(body, DRAIN_LIMIT).await;
        return Err(e);
    }
    let drop_after = match state.roll(FaultOp::Upload, fault_json) {
        Faulted::Answer(r) => {
            drain(body, DRAIN_LIMIT).await;
            return Ok(r);
        }
        Faulted::DropNow => return Ok(kill.drop_connection().await),
        Faulted::DropAfter => true,
        Faulted::None => false,
    };
    let (s, digest, offset, size, _reservation) = match check_part(&state, &id, &headers) {
        Ok(v) => v,
        Err(e) => {
            drain(body, DRAIN_LIMIT).await;
            return Err(e);
        }
    };
    let info = match s.data.write_part(offset, body, size, &state.throttle).await {
        Ok(i) => i,
        Err(BodyError::TooLarge(_)) => {
            return Err(BoxError::bad_request(format!(
                "The part body is larger than its Content-Range ({size} bytes)"
            )))
        }
        Err(BodyError::Aborted(e)) => {
            return Err(BoxError::bad_request(format!(
                "The part body broke off: {e}"
            )))
        }
        Err(BodyError::Io(e)) => return Err(BoxError::internal(e)),
    };
    state.received(info.len);
    if info.len != size {
        return Err(BoxError::bad_request(format!(
            "The part body has {} bytes, its Content-Range says {size}",
            info.len
        )));
    }
    if info.sha1 != digest {
        return Err(BoxError::new(
            StatusCode::BAD_REQUEST,
            "bad_digest",
            format!(
                "The Digest of the part does not match its body. Actual: {} Expected: {}",
                b64_of_hex(&info.sha1),
                b64_of_hex(&digest)
            ),
        ));
    }
    let part = Part {
        part_id: format!("{:08X}", rand::random::<u32>()),
        offset,
        size,
        sha1: info.sha1,
    };
    {
        let mut inner = s.lock();
        if inner.closed {
            return Err(BoxError::not_found(&format!("upload session {id}")));
        }
        inner.parts.insert(offset, part.clone());
    }
    s.data.accept(offset, size);
    tracing::debug!(session = %id, offset, size, "box: part stored");
    if drop_after {
        return Ok(kill.drop_connection().await);
    }
    Ok(Json(json!({"part": part.json()})).into_response())
}

/// `GET /files/upload_sessions/{id}/parts?offset&limit`.
pub(super) async fn list_parts(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let s = session_or_404(&state, &id)?;
    let offset = query_u64(&q, "offset", "invalid_offset")?.unwrap_or(0);
    if offset > MAX_PARTS_OFFSET {
        return Err(BoxError::bad_request(format!(
            "offset {offset} exceeds {MAX_PARTS_OFFSET}"
        )));
    }
    let limit = query_u64(&q, "limit", "invalid_limit")?
        .unwrap_or(MAX_PAGE)
        .clamp(1, MAX_PAGE);
    let inner = s.lock();
    let entries: Vec<Value> = inner
        .parts
        .values()
        .skip(offset as usize)
        .take(limit as usize)
        .map(Part::json)
        .collect();
    Ok(Json(json!({
        "total_count": inner.parts.len(),
        "limit": limit,
        "offset": offset,
        "order": [{"by": "offset", "direction": "ASC"}],
        "entries": entries,
    }))
    .into_response())
}

/// `POST /files/upload_sessions/{id}/commit` with `Digest` of the whole file and
/// `{parts:[…], attributes?}`.
pub(super) async fn commit(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    headers: HeaderMap,
    body: Bytes,
) -> BoxResult {
    check_auth(&state, &creds)?;
    // A repeated commit of a committed session (its answer was lost) gets the file again.
    let already = |state: &ServerState| -> BoxResult {
        match state.box_.committed_file(&id) {
            Some(fid) => Ok(files_answer(state, &super::file(state, &fid)?)),
            None => Err(BoxError::not_found(&format!("upload session {id}"))),
        }
    };
    let Some(s) = state.box_.session(&id) else {
        return already(&state);
    };
    let _commit = s.commit_lock.lock().await;
    if s.lock().closed {
        return already(&state);
    }
    let digest = parse_digest(&headers)?;
    let v = parse_json_body(&body)?;
    let given = v["parts"]
        .as_array()
        .ok_or_else(|| BoxError::bad_request("parts is required: the list of uploaded parts"))?;
    let parts: Vec<Part> = s.lock().parts.values().cloned().collect();
    let have: u64 = parts.iter().map(|p| p.size).sum();
    if have != s.file_size {
        return Err(BoxError::new(
            StatusCode::BAD_REQUEST,
            "upload_incomplete",
            format!(
                "{} of {} bytes were uploaded ({} of {} parts)",
                have,
                s.file_size,
                parts.len(),
                s.total_parts()
            ),
        ));
    }
    let mut listed = Vec::with_capacity(given.len());
    for g in given {
        let (Some(pid), Some(off), Some(size)) = (
            g["part_id"].as_str(),
            g["offset"].as_u64(),
            g["size"].as_u64(),
        ) else {
            return Err(BoxError::new(
                StatusCode::BAD_REQUEST,
                "parts_mismatch",
                "Every part needs part_id, offset and size",
            ));
        };
        listed.push((
            pid.to_string(),
            off,
            size,
            g["sha1"].as_str().map(str::to_string),
        ));
    }
    listed.sort_by_key(|p| p.1);
    let matches = listed.len() == parts.len()
        && listed.iter().zip(&parts).all(|(g, p)| {
            g.0 == p.part_id
                && g.1 == p.offset
                && g.2 == p.size
                && g.3
                    .as_deref()
                    .is_none_or(|h| h.eq_ignore_ascii_case(&p.sha1))
        });
    if !matches {
        return Err(BoxError::new(
            StatusCode::BAD_REQUEST,
            "parts_mismatch",
            format!(
                "The parts list ({} parts) does not match the {} uploaded parts",
                listed.len(),
                parts.len()
            ),
        ));
    }
    {
        let mut inner = s.lock();
        if inner.commit_202s < state.live().box_commit_202 {
            inner.commit_202s += 1;
            return Ok((
                StatusCode::ACCEPTED,
                [(header::RETRY_AFTER, COMMIT_RETRY_AFTER)],
            )
                .into_response());
        }
    }
    let attributes = &v["attributes"];
    let content_modified = parse_time(
        "attributes.content_modified_at",
        &attributes["content_modified_at"],
    )?;
    let dest = match &s.target {
        SessionTarget::NewFile { folder_id, name } => Dest::New {
            parent: folder_id.clone(),
            name: name.clone(),
        },
        SessionTarget::NewVersion { file_id, name } => {
            let file = super::file(&state, file_id)?;
            // A conditional commit: 412 when the file changed since the etag it names.
            super::upload::check_if_match(&headers, &file)?;
            Dest::Version {
                file: Box::new(file),
                name: name.clone(),
            }
        }
    };
    resolve_dest(&state, &dest)?;

    let Some(info) = s.data.finish(s.file_size).await? else {
        return Err(BoxError::new(
            StatusCode::BAD_REQUEST,
            "upload_incomplete",
            "The uploaded parts do not cover the file contiguously",
        ));
    };
    if info.sha1 != digest {
        return Err(BoxError::new(
            StatusCode::BAD_REQUEST,
            "digest_mismatch",
            format!(
                "File digest was incorrect. Actual: {} Expected: {}",
                b64_of_hex(&info.sha1),
                b64_of_hex(&digest)
            ),
        ));
    }
    let blob = state.store.commit_blob(s.data.path())?;
    let o = store_upload(&state, &dest, &info, blob, content_modified, None)?;
    s.lock().closed = true;
    state.box_.remove_session(&id);
    state.box_.mark_committed(&id, &o.id);
    remove_session_dir(&state, &id).await;
    tracing::info!(session = %id, file = %o.id, size = o.size, "box: session committed");
    Ok(files_answer(&state, &o))
}
