//! Uploads: `POST /files/upload/create` (global dedupe by MD5, or a task on disk),
//! chunks as multipart part `chunk` (any order, re-upload overwrites, through a temp file
//! and a rename), and `complete`, which joins chunks `0..chunks_count`, commits the blob
//! and only then inserts the row.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::super::auth::Credentials;
use super::super::body::{drain, join_chunks, BodyInfo, DRAIN_LIMIT};
use super::super::store::Object;
use super::super::{AppState, ConnKill, ServerState};
use super::{
    authenticate, bad_name, cloud_file, fault_json, is_nanoid_like, nanoid, DysonError,
    DysonResult, ACCOUNT_ID, DEFAULT_CHUNK_SIZE, MAX_CHUNK_REQUEST, POOL_ID, PROTO,
};

/// What `task.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Task {
    file_name: String,
    file_size: u64,
    content_type: String,
    hash: String,
    pool_id: String,
    chunk_size: u64,
    chunks_count: u64,
    account_id: String,
}

#[derive(Deserialize)]
struct CreateBody {
    hash: Option<String>,
    file_name: Option<String>,
    file_size: Option<i64>,
    content_type: Option<String>,
    pool_id: Option<String>,
    encrypt_password: Option<String>,
    chunk_size: Option<i64>,
}

/// Where a task's files live (not created); `None` for ids that cannot be ours.
fn task_dir(state: &ServerState, task: &str) -> Option<PathBuf> {
    is_nanoid_like(task).then(|| state.store.root().join("sessions").join(PROTO).join(task))
}

async fn load_task(state: &ServerState, task: &str) -> DysonResult<(PathBuf, Task)> {
    let dir = task_dir(state, task).ok_or_else(|| DysonError::not_found("Upload task"))?;
    if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
        return Err(DysonError::not_found("Upload task"));
    }
    let Ok(raw) = tokio::fs::read(dir.join("task.json")).await else {
        return Err(DysonError::not_found("Upload task metadata"));
    };
    match serde_json::from_slice::<Task>(&raw) {
        Ok(t) => Ok((dir, t)),
        Err(_) => Err(DysonError::api(
            StatusCode::BAD_REQUEST,
            "BAD_REQUEST",
            "Invalid task metadata.",
        )),
    }
}

/// `POST /files/upload/create`.
pub(super) async fn create(
    State(state): State<AppState>,
    creds: Credentials,
    body: axum::body::Bytes,
) -> DysonResult {
    authenticate(&state, &creds)?;
    let b: CreateBody = serde_json::from_slice(&body).map_err(|e| {
        DysonError::problem("request", &format!("The request body is invalid: {e}"))
    })?;
    let hash = b.hash.unwrap_or_default();
    if hash.len() != 32 || !hash.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(DysonError::validation(
            "hash",
            "The hash must be the lowercase hex MD5 of the file (32 characters).",
        ));
    }
    let name = b.file_name.unwrap_or_default();
    if let Some(why) = bad_name(&name) {
        return Err(DysonError::validation("file_name", why));
    }
    let size = match b.file_size {
        Some(s) if s >= 0 => s as u64,
        _ => {
            return Err(DysonError::validation(
                "file_size",
                "The file size must be zero or more.",
            ))
        }
    };
    let chunk_size = match b.chunk_size {
        None => DEFAULT_CHUNK_SIZE,
        Some(c) if c > 0 => c as u64,
        Some(_) => {
            return Err(DysonError::validation(
                "chunk_size",
                "The chunk size must be positive.",
            ))
        }
    };
    let pool_id = match b.pool_id.as_deref() {
        None => POOL_ID.to_string(),
        Some(p) => match uuid::Uuid::parse_str(p) {
            Ok(u) if u.to_string() == POOL_ID => POOL_ID.to_string(),
            Ok(_) => return Err(DysonError::not_found("Pool")),
            Err(_) => {
                return Err(DysonError::validation(
                    "pool_id",
                    "The pool id must be a GUID.",
                ))
            }
        },
    };
    if b.encrypt_password.is_some_and(|p| !p.is_empty()) {
        return Err(DysonError::api(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            "File encryption is not allowed in this pool.",
        ));
    }
    let max = state.max_file_size();
    if size > max {
        return Err(DysonError::api(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("File size {size} is larger than the pool's maximum file size {max}."),
        ));
    }
    if let Some(existing) = state.store.find_by_md5(PROTO, &hash)? {
        return Ok(Json(json!({
            "file_exists": true, "file": cloud_file(&existing, false),
            "task_id": null, "chunk_size": null, "chunks_count": null,
        }))
        .into_response());
    }
    let chunks_count = size.div_ceil(chunk_size);
    if chunks_count > i32::MAX as u64 {
        return Err(DysonError::validation(
            "chunk_size",
            "The chunk size is too small for this file.",
        ));
    }
    let content_type = b
        .content_type
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "application/octet-stream".to_string());
    let task_id = nanoid();
    let task = Task {
        file_name: name,
        file_size: size,
        content_type,
        hash,
        pool_id,
        chunk_size,
        chunks_count,
        account_id: ACCOUNT_ID.to_string(),
    };
    let dir = state.store.session_dir(PROTO, &task_id)?;
    let task_json = serde_json::to_vec(&task).map_err(DysonError::internal)?;
    tokio::fs::write(dir.join("task.json"), task_json).await?;
    state.dyson.tasks().insert(task_id.clone());
    tracing::info!(task = %task_id, name = %task.file_name, size, chunks_count, "dyson: task created");
    Ok(Json(json!({
        "file_exists": false, "file": null, "task_id": task_id,
        "chunk_size": chunk_size, "chunks_count": chunks_count,
    }))
    .into_response())
}

fn too_large() -> DysonError {
    DysonError::api(
        StatusCode::PAYLOAD_TOO_LARGE,
        "PAYLOAD_TOO_LARGE",
        format!("Request body too large. The max request body size is {MAX_CHUNK_REQUEST} bytes."),
    )
}

/// `POST /files/upload/chunk/{task}/{index}`: multipart file part `chunk`.
pub(super) async fn chunk(
    State(state): State<AppState>,
    creds: Credentials,
    Path((task, index)): Path<(String, String)>,
    Extension(kill): Extension<ConnKill>,
    req: Request,
) -> DysonResult {
    // A request refused before its body was read still has it read before the answer goes
    // out, as Kestrel does: hyper closes a connection whose body is left unread, and a
    // client still sending would see a broken pipe instead of the answer.
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let r = chunk_inner(&state, &creds, &task, &index, &kill, parts, &mut body).await;
    if let Some(b) = body {
        drain(b, DRAIN_LIMIT).await;
    }
    r
}

async fn chunk_inner(
    state: &AppState,
    creds: &Credentials,
    task: &str,
    index: &str,
    kill: &ConnKill,
    parts: axum::http::request::Parts,
    body: &mut Option<Body>,
) -> DysonResult {
    authenticate(state, creds)?;
    let Ok(index) = index.parse::<i64>() else {
        return Err(DysonError::problem(
            "chunkIndex",
            &format!("The value '{index}' is not valid."),
        ));
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > MAX_CHUNK_REQUEST) {
        if n > DRAIN_LIMIT {
            // Too much to read: the connection is closed instead.
            body.take();
        }
        return Err(too_large());
    }
    let (dir, _) = load_task(state, task).await?;
    state.dyson.tasks().insert(task.to_string());
    let is_form = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_form {
        return Err(DysonError::unsupported_media_type());
    }
    let drop_after = match state.upload_fault(kill, fault_json).await {
        Ok(d) => d,
        Err(answer) => return Ok(answer),
    };
    // Count the raw body (multipart overhead included) against the request limit, also
    // when no Content-Length was sent.
    let over = Arc::new(AtomicBool::new(false));
    // Only the oversize refusal above takes the body before this point.
    let Some(body) = body.take() else {
        return Err(too_large());
    };
    let counted = {
        let over = over.clone();
        let state = state.clone();
        let mut total = 0u64;
        // Past the limit the rest is drained and dropped (the multipart parser then sees
        // a truncated body), up to DRAIN_LIMIT where the stream fails outright.
        body.into_data_stream().filter_map(move |r| {
            let item = match r {
                Ok(b) => {
                    total += b.len() as u64;
                    state.received(b.len() as u64);
                    if total <= MAX_CHUNK_REQUEST {
                        Some(Ok(b))
                    } else {
                        over.store(true, Ordering::Relaxed);
                        (total > DRAIN_LIMIT)
                            .then(|| Err(std::io::Error::other("request body too large")))
                    }
                }
                Err(e) => Some(Err(std::io::Error::other(e))),
            };
            std::future::ready(item)
        })
    };
    let req = Request::from_parts(parts, Body::from_stream(counted));
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|_| DysonError::problem("Chunk", "The multipart body has no valid boundary."))?;
    let temp = dir.join(format!(".{index}.{}.part", uuid::Uuid::new_v4().simple()));
    let got = receive_chunk(state, &mut mp, &temp).await;
    let refused = if over.load(Ordering::Relaxed) {
        Some(too_large())
    } else {
        match got {
            Ok(true) => None,
            Ok(false) => Some(DysonError::problem("Chunk", "The Chunk field is required.")),
            Err(e) => Some(e),
        }
    };
    if let Some(e) = refused {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(e);
    }
    // Overwrite atomically: a re-upload replaces the chunk, a cut one never lands.
    if tokio::fs::rename(&temp, dir.join(format!("{index}.chunk")))
        .await
        .is_err()
    {
        let _ = tokio::fs::remove_file(&temp).await;
        // The task was completed or deleted meanwhile.
        return Err(DysonError::not_found("Upload task"));
    }
    if drop_after {
        return Ok(kill.drop_connection().await);
    }
    Ok(StatusCode::OK.into_response())
}

/// Stream the first file part named `chunk` (ASP.NET binds names case-insensitively) to
/// `temp`; other parts are read and dropped. `Ok(false)`: no such part.
async fn receive_chunk(
    state: &ServerState,
    mp: &mut Multipart,
    temp: &FsPath,
) -> DysonResult<bool> {
    let invalid = |e: axum::extract::multipart::MultipartError| {
        DysonError::problem("Chunk", &format!("The multipart body is invalid: {e}"))
    };
    let mut got = false;
    loop {
        let Some(mut field) = mp.next_field().await.map_err(invalid)? else {
            return Ok(got);
        };
        let wanted = !got
            && field.file_name().is_some()
            && field
                .name()
                .is_some_and(|n| n.eq_ignore_ascii_case("chunk"));
        let mut file = if wanted {
            Some(tokio::fs::File::create(temp).await?)
        } else {
            None
        };
        while let Some(c) = field.chunk().await.map_err(invalid)? {
            state.throttle.take(c.len() as u64).await;
            if let Some(f) = file.as_mut() {
                f.write_all(&c).await?;
            }
        }
        if let Some(mut f) = file {
            f.flush().await?;
            got = true;
        }
    }
}

/// `POST /files/upload/complete/{task}`.
pub(super) async fn complete(
    State(state): State<AppState>,
    creds: Credentials,
    Path(task_id): Path<String>,
) -> DysonResult {
    authenticate(&state, &creds)?;
    let (dir, task) = load_task(&state, &task_id).await?;
    // Take the task out of reach first: concurrent completes and late chunks now see 404.
    let work = dir.with_file_name(format!(
        ".completing-{task_id}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    if tokio::fs::rename(&dir, &work).await.is_err() {
        return Err(DysonError::not_found("Upload task"));
    }
    state.dyson.tasks().remove(&task_id);
    let result = merge(&state, &work, &task).await;
    let _ = tokio::fs::remove_dir_all(&work).await;
    let (temp, info) = result?;
    let blob = match state.store.commit_blob(&temp) {
        Ok(b) => b,
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e.into());
        }
    };
    let mut o = Object::file(PROTO, nanoid(), String::new(), task.file_name, &info, blob);
    o.extra = json!({
        "account_id": task.account_id,
        "mime_type": task.content_type,
        "pool_id": task.pool_id,
    });
    state.store.insert(&o)?;
    tracing::info!(task = %task_id, id = %o.id, size = o.size, "dyson: file stored");
    Ok(Json(cloud_file(&o, true)).into_response())
}

/// Join chunks `0..chunks_count` of the task in `dir` into a temp file.
async fn merge(state: &ServerState, dir: &FsPath, task: &Task) -> DysonResult<(PathBuf, BodyInfo)> {
    let parts: Vec<PathBuf> = (0..task.chunks_count)
        .map(|i| dir.join(format!("{i}.chunk")))
        .collect();
    for (i, p) in parts.iter().enumerate() {
        if !tokio::fs::try_exists(p).await.unwrap_or(false) {
            return Err(DysonError::api(
                StatusCode::BAD_REQUEST,
                "CHUNK_MISSING",
                format!("Chunk {i} is missing."),
            ));
        }
    }
    let temp = state.store.temp_path();
    let info = join_chunks(parts, &temp, None).await?;
    Ok((temp, info))
}
