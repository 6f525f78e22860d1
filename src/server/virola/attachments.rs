//! Attachments: the multipart upload into a message (every `files` part streamed to its
//! own temp file while hashed, all committed only once the whole body arrived), metadata,
//! deletion, and downloads with single-range support.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::super::auth::Credentials;
use super::super::body::{
    content_type_for, drain_multipart, parse_range, serve_file, BadRange, BodyInfo, FileAnswer,
    Intake, DRAIN_LIMIT,
};
use super::super::names::{NameFault, NameRules};
use super::super::store::Object;
use super::super::{AppState, ConnKill, ServerState, VIROLA_ROOM_ID};
use super::messages::find_message;
use super::{authenticate, fault_json, ok, VirolaError, VirolaResult, PROTO};

const NOT_FOUND_ATTACHMENT: &str = "Attachment not found";

/// Attachment metadata as `GET /attachments/{id}` answers it.
pub(super) fn attachment_json(o: &Object) -> Value {
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

/// The attachments of message `mid`, oldest first.
pub(super) fn attachments_of(state: &ServerState, mid: &str) -> VirolaResult<Vec<Object>> {
    let (mut v, _) = state.store.list(PROTO, mid, 0, u64::MAX)?;
    v.sort_by_key(|o| o.id.parse::<u64>().unwrap_or_default());
    Ok(v)
}

/// Why a file name is refused, if it is.
fn bad_name(name: &str) -> Option<&'static str> {
    match NameRules::default().check(name).err()? {
        NameFault::Empty => Some("File name is empty"),
        NameFault::TooLong => Some("File name is longer than 255 bytes"),
        NameFault::Separator | NameFault::Control => {
            Some("File name contains a forbidden character")
        }
        NameFault::Reserved | NameFault::EdgeSpace => Some("File name is not allowed"),
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
pub(super) async fn upload(
    State(state): State<AppState>,
    creds: Credentials,
    Path(mid): Path<String>,
    Extension(kill): Extension<ConnKill>,
    mut mp: Result<Multipart, MultipartRejection>,
) -> VirolaResult {
    let r = upload_inner(&state, &creds, &mid, &kill, &mut mp).await;
    // Whatever the answer, the rest of the body is read first: hyper closes a connection
    // whose body is left unread, and a client still sending would see a broken pipe
    // instead of the refusal.
    if let Ok(mp) = &mut mp {
        drain_multipart(mp, DRAIN_LIMIT).await;
    }
    r
}

async fn upload_inner(
    state: &AppState,
    creds: &Credentials,
    mid: &str,
    kill: &ConnKill,
    mp: &mut Result<Multipart, MultipartRejection>,
) -> VirolaResult {
    authenticate(state, creds)?;
    let msg = find_message(state, mid).await?;
    let drop_after = match state.upload_fault(kill, fault_json).await {
        Ok(d) => d,
        Err(answer) => return Ok(answer),
    };
    let _in_flight = InFlight::new(&state.virola.uploads_in_flight);
    let Ok(mp) = mp.as_mut() else {
        return Err(VirolaError::bad_request(
            "Content-Type multipart/form-data expected",
        ));
    };
    let mut received: Vec<Received> = Vec::new();
    if let Err(e) = receive_files(state, mp, &mut received).await {
        for r in &received {
            let _ = tokio::fs::remove_file(&r.temp).await;
        }
        return Err(e);
    }
    if received.is_empty() {
        return Err(VirolaError::bad_request("No files in the request"));
    }
    for r in received {
        let blob = state.store.commit_blob(&r.temp)?;
        let id = state.store.next_id("virola-attachment")?;
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
        state.store.insert(&o)?;
        tracing::info!(attachment = id, name = %r.name, size = r.info.len, "virola: attachment stored");
    }
    if drop_after {
        return Ok(kill.drop_connection().await);
    }
    Ok(ok())
}

/// Read every part; `files` parts go to temp files (pushed to `out` as they complete, so
/// the caller can clean up on error).
async fn receive_files(
    state: &ServerState,
    mp: &mut Multipart,
    out: &mut Vec<Received>,
) -> VirolaResult<()> {
    let max = state.max_file_size();
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => {
                return Err(VirolaError::bad_request(format!(
                    "Malformed multipart body: {e}"
                )))
            }
        };
        if field.name() != Some("files") {
            return Err(VirolaError::bad_request(
                "Only parts named \"files\" are accepted",
            ));
        }
        let name = field.file_name().unwrap_or_default().to_string();
        if let Some(why) = bad_name(&name) {
            return Err(VirolaError::bad_request(why));
        }
        let temp = state.store.temp_path();
        let mut intake = Intake::create(&temp).await?;
        let mut len = 0u64;
        let res: VirolaResult<()> = async {
            while let Some(chunk) = field
                .chunk()
                .await
                .map_err(|e| VirolaError::bad_request(format!("Upload interrupted: {e}")))?
            {
                let n = chunk.len() as u64;
                state.received(n);
                len += n;
                if len > max {
                    return Err(VirolaError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("File is too large (the limit is {max} bytes)"),
                    ));
                }
                intake.write(&chunk, &state.throttle).await?;
            }
            Ok(())
        }
        .await;
        let info = match res {
            Ok(()) => intake.finish().await.map_err(VirolaError::from),
            Err(e) => Err(e),
        };
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        out.push(Received { name, temp, info });
    }
}

/// The attachment `id` (404 in Virola's shape when unknown).
fn find_attachment(state: &ServerState, id: &str) -> VirolaResult<Object> {
    let nf = || VirolaError::new(StatusCode::NOT_FOUND, NOT_FOUND_ATTACHMENT);
    let id = id.parse::<u64>().map_err(|_| nf())?.to_string();
    state.store.get(PROTO, &id)?.ok_or_else(nf)
}

/// `GET /attachments/{id}`: metadata.
pub(super) async fn info(
    State(state): State<AppState>,
    creds: Credentials,
    Path(id): Path<String>,
) -> VirolaResult {
    authenticate(&state, &creds)?;
    let o = find_attachment(&state, &id)?;
    Ok(Json(attachment_json(&o)).into_response())
}

/// `DELETE /attachments/{id}`.
pub(super) async fn delete(
    State(state): State<AppState>,
    creds: Credentials,
    Path(id): Path<String>,
) -> VirolaResult {
    authenticate(&state, &creds)?;
    let o = find_attachment(&state, &id)?;
    state.store.delete(PROTO, &o.id)?;
    Ok(ok())
}

/// `GET /attachments/{id}/{name}`: the content, with single-range support.
pub(super) async fn download(
    State(state): State<AppState>,
    creds: Credentials,
    headers: HeaderMap,
    Path((id, _)): Path<(String, String)>,
    Extension(kill): Extension<ConnKill>,
    uri: axum::http::Uri,
) -> VirolaResult {
    authenticate(&state, &creds)?;
    let o = find_attachment(&state, &id)?;
    // The web client puts the name in the URL without encoding it; others encode it.
    let raw = uri.path().rsplit('/').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    if raw != o.name && decoded != o.name {
        return Err(VirolaError::new(
            StatusCode::NOT_FOUND,
            NOT_FOUND_ATTACHMENT,
        ));
    }
    if let Some(answer) = state.download_fault(&kill, fault_json).await {
        return Ok(answer);
    }
    if parse_range(&headers, o.size).is_err() {
        return Err(VirolaError::range_not_satisfiable(o.size));
    }
    let Some(blob) = o.blob.as_deref() else {
        return Err(VirolaError::internal("attachment without blob"));
    };
    let disposition = content_disposition(&o.name);
    Ok(serve_file(
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
    .await)
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
