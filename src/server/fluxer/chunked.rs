//! Fluxer chunked uploads: create a session, PUT chunks (each stored as its own file in
//! the session directory, replaced atomically on re-upload so the newest ETag wins), and
//! complete (every chunk named with its current ETag; the chunks are concatenated into one
//! uploaded object that a message can then carry).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::super::auth::Credentials;
use super::super::body::{content_type_for, drain, join_chunks, Intake};
use super::super::faults::FaultOp;
use super::super::{AppState, ConnKill, Faulted, ServerState};
use super::{
    auth_user, bad_filename, check_channel, ensure_loaded, error, fault_json, form_error, lock,
    max_size, too_large, ApiError, Uploaded, CHUNK_SIZE, MAX_CHUNKS, PROTO,
};

/// Longest `upload_id` the path schema accepts.
const MAX_UPLOAD_ID_LEN: usize = 128;

/// One open chunked-upload session.
pub(super) struct Session {
    upload_filename: String,
    filename: String,
    file_size: u64,
    chunk_count: u64,
    pub(super) expires: Instant,
    dir: PathBuf,
    /// Current ETag of each uploaded chunk.
    etags: HashMap<u64, String>,
}

impl Session {
    /// Exact length chunk `i` must have.
    fn chunk_len(&self, i: u64) -> u64 {
        if i + 1 < self.chunk_count {
            CHUNK_SIZE
        } else {
            self.file_size - CHUNK_SIZE * (self.chunk_count - 1)
        }
    }
}

fn not_found() -> ApiError {
    error(
        StatusCode::NOT_FOUND,
        "CHUNKED_UPLOAD_NOT_FOUND",
        "Upload session wasn't found or has expired.",
    )
}

fn out_of_range() -> ApiError {
    error(
        StatusCode::BAD_REQUEST,
        "CHUNKED_UPLOAD_CHUNK_INDEX_OUT_OF_RANGE",
        "Chunk index is out of range.",
    )
}

fn incomplete() -> ApiError {
    error(
        StatusCode::BAD_REQUEST,
        "CHUNKED_UPLOAD_INCOMPLETE",
        "Not all chunks have been uploaded.",
    )
}

fn check_upload_id(uid: &str) -> Result<(), ApiError> {
    if uid.is_empty() || uid.chars().count() > MAX_UPLOAD_ID_LEN {
        return Err(form_error(
            "upload_id",
            "BASE_TYPE_BAD_LENGTH",
            "Must be between 1 and 128 characters.",
        ));
    }
    Ok(())
}

/// Parse a JSON body, or answer `INVALID_FORM_BODY`.
fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| form_error("", "INVALID_JSON", "Body must be a JSON object."))
}

/// A non-negative integer field (accepting only JSON integers).
fn uint_field(v: &Value, path: &str) -> Result<u64, ApiError> {
    match v {
        Value::Null => Err(form_error(
            path,
            "BASE_TYPE_REQUIRED",
            "This field is required.",
        )),
        Value::Number(n) => match n.as_u64() {
            Some(x) => Ok(x),
            None if n.as_i64().is_some() => {
                Err(form_error(path, "NUMBER_TYPE_MIN", "Must be at least 0."))
            }
            None => Err(form_error(
                path,
                "NUMBER_TYPE_INTEGER",
                "Must be an integer.",
            )),
        },
        _ => Err(form_error(
            path,
            "NUMBER_TYPE_COERCE",
            "Must be an integer.",
        )),
    }
}

/// `POST /channels/{cid}/chunked-uploads` `{filename, file_size}` → 201 session.
pub(super) async fn create_upload(
    State(state): State<AppState>,
    creds: Credentials,
    UrlPath(cid): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    auth_user(&state, &creds)?;
    check_channel(&cid)?;
    let v = parse_body(&body)?;
    let filename = match &v["filename"] {
        Value::String(s) => s.clone(),
        Value::Null => {
            return Err(form_error(
                "filename",
                "BASE_TYPE_REQUIRED",
                "This field is required.",
            ))
        }
        _ => {
            return Err(form_error(
                "filename",
                "BASE_TYPE_STRING",
                "Must be a string.",
            ))
        }
    };
    if let Some(why) = bad_filename(&filename) {
        return Err(form_error("filename", "FILENAME_INVALID", why));
    }
    let file_size = uint_field(&v["file_size"], "file_size")?;
    if file_size == 0 {
        return Err(form_error(
            "file_size",
            "NUMBER_TYPE_MIN",
            "Must be at least 1.",
        ));
    }
    let max = max_size(&state);
    let chunk_count = file_size.div_ceil(CHUNK_SIZE);
    if file_size > max || chunk_count > MAX_CHUNKS {
        return Err(too_large(max.min(CHUNK_SIZE * MAX_CHUNKS)));
    }
    ensure_loaded(&state)?;
    let upload_id = uuid::Uuid::new_v4().to_string();
    let upload_filename = uuid::Uuid::new_v4().to_string();
    let dir = state.store.session_dir(PROTO, &upload_id).map_err(|e| {
        tracing::error!(error = %e, "fluxer: session dir");
        super::internal()
    })?;
    let ttl = Duration::from_secs(state.opts.fluxer_session_ttl);
    let mut sessions = lock(&state.fluxer.sessions);
    sweep_expired(&mut sessions);
    sessions.insert(
        upload_id.clone(),
        Session {
            upload_filename: upload_filename.clone(),
            filename,
            file_size,
            chunk_count,
            expires: Instant::now() + ttl,
            dir,
            etags: HashMap::new(),
        },
    );
    tracing::debug!(%upload_id, file_size, chunk_count, "fluxer: session created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "upload_id": upload_id,
            "upload_filename": upload_filename,
            "chunk_size": CHUNK_SIZE,
            "chunk_count": chunk_count,
        })),
    )
        .into_response())
}

/// Forget expired sessions and delete their parts.
fn sweep_expired(sessions: &mut HashMap<String, Session>) {
    let now = Instant::now();
    sessions.retain(|_, s| {
        let keep = s.expires > now;
        if !keep {
            let _ = std::fs::remove_dir_all(&s.dir);
        }
        keep
    });
}

/// The live session `uid`, or 404 (expired ones are removed on the way).
fn with_session<T>(
    state: &ServerState,
    uid: &str,
    f: impl FnOnce(&mut Session) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut sessions = lock(&state.fluxer.sessions);
    sweep_expired(&mut sessions);
    match sessions.get_mut(uid) {
        Some(s) => f(s),
        None => Err(not_found()),
    }
}

/// `PUT /channels/{cid}/chunked-uploads/{uid}/chunks/{index}` raw bytes → `{etag}`.
pub(super) async fn put_chunk(
    State(state): State<AppState>,
    creds: Credentials,
    UrlPath((cid, uid, index)): UrlPath<(String, String, String)>,
    Extension(kill): Extension<ConnKill>,
    body: Body,
) -> Result<Response, ApiError> {
    let pre = (|| {
        auth_user(&state, &creds)?;
        check_channel(&cid)?;
        check_upload_id(&uid)?;
        let index: u64 = match index.parse::<u64>() {
            Ok(i) if i <= i32::MAX as u64 && index.bytes().all(|b| b.is_ascii_digit()) => i,
            _ => {
                return Err(form_error(
                    "chunk_index",
                    "NUMBER_TYPE_COERCE",
                    "Must be an integer of at least 0.",
                ))
            }
        };
        with_session(&state, &uid, |s| {
            if index >= s.chunk_count {
                return Err(out_of_range());
            }
            Ok((index, s.chunk_len(index), s.dir.clone()))
        })
    })();
    let (index, want, dir) = match pre {
        Ok(v) => v,
        Err(e) => {
            // Read the rest of the body, so the client gets to read our answer.
            drain(body, u64::MAX).await;
            return Err(e);
        }
    };
    let drop_after = match state.roll(FaultOp::Upload, fault_json) {
        Faulted::DropNow => return Ok(kill.drop_connection().await),
        Faulted::Answer(r) => {
            drain(body, u64::MAX).await;
            return Ok(r);
        }
        Faulted::DropAfter => true,
        Faulted::None => false,
    };
    let temp = dir.join(format!(
        "chunk-{index}.{}.part",
        uuid::Uuid::new_v4().simple()
    ));
    let received = match receive(&state, body.into_data_stream(), &temp, want).await {
        Ok(r) => r,
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
    };
    let etag = format!("\"{}\"", received.md5);
    // Publish the chunk under the session lock, so the stored file and its recorded ETag
    // always belong to the same upload of this index.
    let published = with_session(&state, &uid, |s| {
        std::fs::rename(&temp, chunk_path(&s.dir, index)).map_err(|e| {
            tracing::error!(error = %e, "fluxer: publishing chunk");
            super::internal()
        })?;
        s.etags.insert(index, etag.clone());
        Ok(())
    });
    if let Err(e) = published {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(e);
    }
    tracing::debug!(%uid, index, len = received.len, "fluxer: chunk stored");
    if drop_after {
        return Ok(kill.drop_connection().await);
    }
    Ok(Json(json!({ "etag": etag })).into_response())
}

fn chunk_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("chunk-{index}"))
}

/// Stream a chunk to `path`, insisting on exactly `want` bytes.
async fn receive(
    state: &ServerState,
    mut stream: axum::body::BodyDataStream,
    path: &Path,
    want: u64,
) -> Result<super::BodyInfo, ApiError> {
    let io_err = |e: std::io::Error| {
        tracing::error!(error = %e, "fluxer: writing chunk");
        super::internal()
    };
    let mut intake = Intake::create(path).await.map_err(io_err)?;
    while let Some(piece) = stream.next().await {
        let piece = piece.map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                "INVALID_REQUEST",
                format!("Request body aborted: {e}"),
            )
        })?;
        state.received(piece.len() as u64);
        intake
            .write_within(&piece, want, &state.throttle)
            .await
            .map_err(io_err)?;
    }
    let total = intake.seen();
    if total != want {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "CHUNKED_UPLOAD_INVALID_CHUNK_SIZE",
            format!("Chunk must be exactly {want} bytes, got {total}."),
        ));
    }
    intake.finish().await.map_err(io_err)
}

/// `POST /channels/{cid}/chunked-uploads/{uid}/complete` `{etags:[{chunk_index, etag}]}`.
pub(super) async fn complete_upload(
    State(state): State<AppState>,
    creds: Credentials,
    UrlPath((cid, uid)): UrlPath<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let session = complete_check(&state, &creds, &cid, &uid, &body)?;
    let temp = state.store.temp_path();
    let parts = (0..session.chunk_count)
        .map(|i| chunk_path(&session.dir, i))
        .collect();
    let assembled = join_chunks(parts, &temp, None).await;
    let _ = tokio::fs::remove_dir_all(&session.dir).await;
    let info = match assembled {
        Ok(info) if info.len == session.file_size => info,
        other => {
            tracing::error!(?other, "fluxer: assembling chunks failed");
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(super::internal());
        }
    };
    let content_type = content_type_for(&session.filename);
    tracing::info!(
        upload_filename = %session.upload_filename,
        size = info.len,
        "fluxer: chunked upload completed"
    );
    super::lock(&state.fluxer.uploads).insert(
        session.upload_filename.clone(),
        Uploaded { path: temp, info },
    );
    Ok(Json(json!({
        "upload_filename": session.upload_filename,
        "file_size": session.file_size,
        "content_type": content_type,
    }))
    .into_response())
}

/// Validate a complete request; on success the session is taken out of the open set.
fn complete_check(
    state: &ServerState,
    creds: &Credentials,
    cid: &str,
    uid: &str,
    body: &Bytes,
) -> Result<Session, ApiError> {
    auth_user(state, creds)?;
    check_channel(cid)?;
    check_upload_id(uid)?;
    let v = parse_body(body)?;
    let list = match &v["etags"] {
        Value::Array(a) if !a.is_empty() => a,
        Value::Array(_) => {
            return Err(form_error(
                "etags",
                "ARRAY_TOO_SHORT",
                "Must contain at least 1 element.",
            ))
        }
        Value::Null => {
            return Err(form_error(
                "etags",
                "BASE_TYPE_REQUIRED",
                "This field is required.",
            ))
        }
        _ => return Err(form_error("etags", "BASE_TYPE_ARRAY", "Must be an array.")),
    };
    let mut pairs = Vec::with_capacity(list.len());
    for (n, e) in list.iter().enumerate() {
        let idx = uint_field(&e["chunk_index"], &format!("etags.{n}.chunk_index"))?;
        let Some(tag) = e["etag"].as_str() else {
            return Err(form_error(
                &format!("etags.{n}.etag"),
                "BASE_TYPE_STRING",
                "Must be a string.",
            ));
        };
        pairs.push((idx, tag.to_string()));
    }
    let mut sessions = lock(&state.fluxer.sessions);
    sweep_expired(&mut sessions);
    let s = sessions.get(uid).ok_or_else(not_found)?;
    if pairs.len() as u64 != s.chunk_count {
        return Err(incomplete());
    }
    let mut seen = std::collections::HashSet::new();
    for (idx, _) in &pairs {
        if *idx >= s.chunk_count {
            return Err(out_of_range());
        }
        if !seen.insert(*idx) {
            return Err(incomplete());
        }
    }
    for (idx, tag) in &pairs {
        match s.etags.get(idx) {
            None => return Err(incomplete()),
            Some(cur) if cur != tag => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "CHUNKED_UPLOAD_INVALID_ETAG",
                    format!("The ETag given for chunk {idx} does not match the uploaded chunk."),
                ))
            }
            Some(_) => {}
        }
    }
    sessions.remove(uid).ok_or_else(not_found)
}
