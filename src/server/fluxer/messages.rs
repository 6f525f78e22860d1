//! Fluxer messages: posting a message turns inline `files[N]` parts and completed chunked
//! uploads into attachments (store objects); listing and reading messages; deleting
//! attachments or messages.
//!
//! A message is saved (see [`Book`]) only after all its attachments are in the store, so a
//! listing never shows an attachment whose bytes are incomplete.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use axum::extract::multipart::{Field, MultipartRejection};
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::super::auth::Credentials;
use super::super::body::{content_type_for, drain_multipart, BodyInfo, Intake};
use super::super::faults::FaultOp;
use super::super::store::{now_ms, Object};
use super::super::{AppState, ConnKill, Faulted, ServerState};
use super::book::MessageRec;
use super::cdn::attachment_url;
use super::{
    auth, bad_filename, book, check_channel, error, fault_json, form_error, internal, lock,
    max_size, parse_snowflake, too_large, ApiError, PROTO,
};

/// Longest message content, characters.
const MAX_CONTENT_CHARS: usize = 2000;
/// Most attachments one message may carry.
const MAX_ATTACHMENTS: usize = 10;
/// Default and largest `limit` of a message listing.
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 100;

fn unknown_message() -> ApiError {
    error(StatusCode::NOT_FOUND, "UNKNOWN_MESSAGE", "Unknown Message")
}

fn io_500(what: &'static str) -> impl Fn(std::io::Error) -> ApiError {
    move |e| {
        tracing::error!(error = %e, what, "fluxer: I/O failure");
        internal()
    }
}

fn attachment_json(state: &ServerState, o: &Object) -> Value {
    let cid = o.parent.as_str();
    let url = attachment_url(state, cid, &o.id, &o.name);
    json!({
        "id": o.id,
        "filename": o.name,
        "size": o.size,
        "content_type": content_type_for(&o.name),
        "url": url,
        "proxy_url": url,
        "flags": 0,
    })
}

fn timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A `MessageResponse`. Attachments missing from the store (deleted concurrently) are
/// left out.
fn message_json(state: &ServerState, m: &MessageRec) -> Value {
    let attachments: Vec<Value> = m
        .attachments
        .iter()
        .filter_map(|aid| state.store.get(PROTO, aid).ok().flatten())
        .map(|o| attachment_json(state, &o))
        .collect();
    json!({
        "id": m.id.to_string(),
        "channel_id": m.channel_id,
        "type": 0,
        "content": m.content,
        "timestamp": timestamp(m.created_ms),
        "edited_timestamp": null,
        "pinned": false,
        "mention_everyone": false,
        "attachments": attachments,
        "embeds": [],
        "flags": 0,
    })
}

/// Temp files of a request, removed unless consumed (renamed into blobs).
#[derive(Default)]
struct Temps(Vec<PathBuf>);

impl Drop for Temps {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// An inline `files[N]` part, on disk.
struct Inline {
    path: PathBuf,
    info: BodyInfo,
}

/// `files[N]` → N.
fn files_index(name: &str) -> Option<u64> {
    name.strip_prefix("files[")?
        .strip_suffix(']')
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))?
        .parse()
        .ok()
}

/// Read and drop the rest of one part.
async fn drain_field(field: &mut Field<'_>) {
    while let Ok(Some(_)) = field.chunk().await {}
}

/// What one multipart field turned out to be.
enum FileOutcome {
    Stored(Inline),
    TooLarge,
}

/// Stream one file part to `path`, refusing more than `limit` bytes (the rest of the
/// part is still read, so the client gets the 400 instead of a reset).
async fn field_to_file(
    state: &ServerState,
    field: &mut Field<'_>,
    path: &std::path::Path,
    limit: u64,
) -> Result<FileOutcome, ApiError> {
    let mut intake = Intake::create(path).await.map_err(io_500("inline file"))?;
    loop {
        let piece = match field.chunk().await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(e) => return Err(form_error("files", "INVALID_MULTIPART", e.body_text())),
        };
        state.received(piece.len() as u64);
        intake
            .write_within(&piece, limit, &state.throttle)
            .await
            .map_err(io_500("inline file"))?;
    }
    if intake.seen() > limit {
        return Ok(FileOutcome::TooLarge);
    }
    let info = intake.finish().await.map_err(io_500("inline file"))?;
    Ok(FileOutcome::Stored(Inline {
        path: path.to_path_buf(),
        info,
    }))
}

/// Where an attachment's bytes come from.
enum Source {
    Inline(Inline),
    Uploaded(String),
}

struct NewAttachment {
    filename: String,
    source: Source,
}

/// `POST /channels/{cid}/messages` (multipart: `payload_json` + `files[N]`).
pub(super) async fn post_message(
    State(state): State<AppState>,
    creds: Credentials,
    UrlPath(cid): UrlPath<String>,
    Extension(kill): Extension<ConnKill>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let early = auth(&state, &creds)
        .map(|_| ())
        .and_then(|_| check_channel(&cid))
        .and_then(|_| super::ensure_loaded(&state));
    let mut mp = match (early, multipart) {
        (Ok(()), Ok(m)) => m,
        (Err(e), Ok(mut m)) => {
            // Read the body anyway, so the client gets the answer rather than a reset.
            drain_multipart(&mut m, u64::MAX).await;
            return Err(e);
        }
        (Err(e), Err(_)) => return Err(e),
        (Ok(()), Err(e)) => {
            return Err(form_error(
                "",
                "INVALID_MULTIPART",
                format!("Expected a multipart/form-data body: {}", e.body_text()),
            ))
        }
    };
    let limit = max_size(&state);
    let mut temps = Temps::default();
    let mut payload: Option<String> = None;
    let mut files: BTreeMap<u64, Inline> = BTreeMap::new();
    let mut refusal: Option<ApiError> = None;
    loop {
        let mut field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(form_error("", "INVALID_MULTIPART", e.body_text())),
        };
        let name = field.name().unwrap_or_default().to_string();
        if refusal.is_some() {
            drain_field(&mut field).await;
            continue;
        }
        if name == "payload_json" {
            match field.text().await {
                Ok(t) if payload.is_none() => payload = Some(t),
                Ok(_) => {
                    refusal = Some(form_error(
                        "payload_json",
                        "DUPLICATE_FIELD",
                        "payload_json given twice.",
                    ))
                }
                Err(e) => {
                    return Err(form_error(
                        "payload_json",
                        "INVALID_MULTIPART",
                        e.body_text(),
                    ))
                }
            }
        } else if let Some(n) = files_index(&name) {
            if files.contains_key(&n) {
                refusal = Some(form_error(
                    &format!("files[{n}]"),
                    "DUPLICATE_FIELD",
                    "File part given twice.",
                ));
                drain_field(&mut field).await;
                continue;
            }
            let path = state.store.temp_path();
            temps.0.push(path.clone());
            match field_to_file(&state, &mut field, &path, limit).await {
                Ok(FileOutcome::Stored(f)) => {
                    files.insert(n, f);
                }
                Ok(FileOutcome::TooLarge) => refusal = Some(too_large(limit)),
                Err(e) => return Err(e),
            }
        } else {
            // Other form fields carry nothing this emulator uses.
            drain_field(&mut field).await;
        }
    }
    if let Some(e) = refusal {
        return Err(e);
    }
    let (content, attachments) = parse_payload(payload.as_deref(), files)?;
    // Every referenced upload must exist before anything is committed.
    {
        let uploads = lock(&state.fluxer.uploads);
        let mut seen = std::collections::HashSet::new();
        for (n, a) in attachments.iter().enumerate() {
            if let Source::Uploaded(uf) = &a.source {
                if !uploads.contains_key(uf) || !seen.insert(uf.clone()) {
                    return Err(form_error(
                        &format!("attachments.{n}.uploaded_filename"),
                        "UPLOADED_FILE_NOT_FOUND",
                        "The uploaded file was not found.",
                    ));
                }
            }
        }
    }
    let has_inline = attachments
        .iter()
        .any(|a| matches!(a.source, Source::Inline(_)));
    let fault = if has_inline {
        state.roll(FaultOp::Upload, fault_json)
    } else {
        Faulted::None
    };
    let drop_after = match fault.before_upload(&kill).await {
        Ok(d) => d,
        Err(answer) => return Ok(answer),
    };
    let msg = commit(&state, &cid, content, attachments)?;
    drop(temps);
    tracing::info!(
        message_id = msg.id,
        attachments = msg.attachments.len(),
        "fluxer: message posted"
    );
    if drop_after {
        return Ok(kill.drop_connection().await);
    }
    Ok(Json(message_json(&state, &msg)).into_response())
}

/// Validate `payload_json` against the inline files received.
fn parse_payload(
    payload: Option<&str>,
    mut files: BTreeMap<u64, Inline>,
) -> Result<(String, Vec<NewAttachment>), ApiError> {
    let Some(payload) = payload else {
        return Err(form_error(
            "payload_json",
            "BASE_TYPE_REQUIRED",
            "This field is required.",
        ));
    };
    let v: Value = serde_json::from_str(payload)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| form_error("payload_json", "INVALID_JSON", "Must be a JSON object."))?;
    let content = match &v["content"] {
        Value::Null => String::new(),
        Value::String(s) if s.chars().count() <= MAX_CONTENT_CHARS => s.clone(),
        Value::String(_) => {
            return Err(form_error(
                "content",
                "BASE_TYPE_BAD_LENGTH",
                "Must be at most 2000 characters.",
            ))
        }
        _ => {
            return Err(form_error(
                "content",
                "BASE_TYPE_STRING",
                "Must be a string.",
            ))
        }
    };
    let list = match &v["attachments"] {
        Value::Null => Vec::new(),
        Value::Array(a) if a.len() <= MAX_ATTACHMENTS => a.clone(),
        Value::Array(_) => {
            return Err(form_error(
                "attachments",
                "ARRAY_TOO_LONG",
                "Must contain at most 10 elements.",
            ))
        }
        _ => {
            return Err(form_error(
                "attachments",
                "BASE_TYPE_ARRAY",
                "Must be an array.",
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    let mut ids = std::collections::HashSet::new();
    for (n, a) in list.iter().enumerate() {
        let at = |f: &str| format!("attachments.{n}.{f}");
        let id = match &a["id"] {
            Value::Number(x) => x.as_u64(),
            Value::String(s) => parse_snowflake(s),
            _ => None,
        }
        .ok_or_else(|| form_error(&at("id"), "NUMBER_TYPE_COERCE", "Must be an integer."))?;
        if !ids.insert(id) {
            return Err(form_error(
                &at("id"),
                "DUPLICATE_ID",
                "Attachment ids must be unique.",
            ));
        }
        let filename = a["filename"]
            .as_str()
            .ok_or_else(|| {
                form_error(
                    &at("filename"),
                    "BASE_TYPE_REQUIRED",
                    "This field is required.",
                )
            })?
            .to_string();
        if let Some(why) = bad_filename(&filename) {
            return Err(form_error(&at("filename"), "FILENAME_INVALID", why));
        }
        let uploaded = match &a["uploaded_filename"] {
            Value::Null => None,
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => {
                return Err(form_error(
                    &at("uploaded_filename"),
                    "BASE_TYPE_STRING",
                    "Must be a non-empty string.",
                ))
            }
        };
        let source = match (files.remove(&id), uploaded) {
            (Some(f), _) => Source::Inline(f),
            (None, Some(uf)) => Source::Uploaded(uf),
            (None, None) => {
                return Err(form_error(
                    &format!("attachments.{n}"),
                    "NO_FILE_FOR_ATTACHMENT_METADATA",
                    "No file was sent for this attachment.",
                ))
            }
        };
        out.push(NewAttachment { filename, source });
    }
    if let Some(n) = files.keys().next() {
        return Err(form_error(
            &format!("files[{n}]"),
            "NO_ATTACHMENT_METADATA_FOR_FILE",
            "Every file needs an entry in attachments.",
        ));
    }
    if content.is_empty() && out.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "CANNOT_SEND_EMPTY_MESSAGE",
            "Cannot send an empty message.",
        ));
    }
    Ok((content, out))
}

/// Turn the attachments into store objects (blob first, then row) and save the message.
fn commit(
    state: &ServerState,
    cid: &str,
    content: String,
    attachments: Vec<NewAttachment>,
) -> Result<MessageRec, ApiError> {
    let mid = state.fluxer.next_id();
    let mut ids = Vec::with_capacity(attachments.len());
    let rollback = |ids: &[String]| {
        for id in ids {
            let _ = state.store.delete(PROTO, id);
        }
    };
    for a in attachments {
        let (path, info, _keep) = match a.source {
            Source::Inline(f) => (f.path, f.info, None),
            Source::Uploaded(uf) => match lock(&state.fluxer.uploads).remove(&uf) {
                Some(u) => (u.path.clone(), u.info.clone(), Some(u)),
                None => {
                    rollback(&ids);
                    return Err(form_error(
                        "attachments",
                        "UPLOADED_FILE_NOT_FOUND",
                        "The uploaded file was not found.",
                    ));
                }
            },
        };
        let aid = state.fluxer.next_id().to_string();
        let stored = state.store.commit_blob(&path).and_then(|blob| {
            let mut o = Object::file(
                PROTO,
                aid.clone(),
                cid.to_string(),
                a.filename.clone(),
                &info,
                blob,
            );
            o.extra = json!({ "message_id": mid.to_string(), "channel_id": cid });
            state.store.insert(&o)
        });
        if let Err(e) = stored {
            tracing::error!(error = %e, "fluxer: storing attachment");
            rollback(&ids);
            return Err(internal());
        }
        ids.push(aid);
    }
    let rec = MessageRec {
        id: mid,
        channel_id: cid.to_string(),
        content,
        created_ms: now_ms(),
        attachments: ids.clone(),
    };
    let mut g = book(state)?;
    let Some(b) = g.as_mut() else {
        return Err(internal());
    };
    if let Err(e) = b.save(rec.clone()) {
        tracing::error!(error = %e, "fluxer: saving message");
        rollback(&ids);
        return Err(internal());
    }
    Ok(rec)
}

/// `GET /channels/{cid}/messages?limit=&before=&after=`: newest first.
pub(super) async fn list_messages(
    State(state): State<AppState>,
    creds: Credentials,
    UrlPath(cid): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    auth(&state, &creds)?;
    check_channel(&cid)?;
    let limit = match q.get("limit") {
        None => DEFAULT_LIMIT,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(form_error(
                    "limit",
                    "NUMBER_TYPE_RANGE",
                    "Must be between 1 and 100.",
                ))
            }
        },
    };
    let snow = |k: &str| -> Result<Option<u64>, ApiError> {
        match q.get(k) {
            None => Ok(None),
            Some(s) => parse_snowflake(s).map(Some).ok_or_else(|| {
                form_error(k, "SNOWFLAKE_TYPE_INVALID", "Value is not a snowflake.")
            }),
        }
    };
    let before = snow("before")?;
    let after = snow("after")?;
    let g = book(&state)?;
    let Some(b) = g.as_ref() else {
        return Err(internal());
    };
    let range = b
        .map
        .range(after.map_or(0, |a| a.saturating_add(1))..before.unwrap_or(u64::MAX))
        .filter(|(_, m)| m.channel_id == cid)
        .map(|(_, m)| m);
    // With only `after`, the messages right after it; otherwise the newest ones.
    let mut page: Vec<&MessageRec> = if after.is_some() && before.is_none() {
        range.take(limit).collect()
    } else {
        range.rev().take(limit).collect()
    };
    page.sort_by_key(|m| std::cmp::Reverse(m.id));
    let out: Vec<Value> = page.into_iter().map(|m| message_json(&state, m)).collect();
    Ok(Json(out).into_response())
}

fn parse_mid(mid: &str) -> Result<u64, ApiError> {
    parse_snowflake(mid).ok_or_else(|| {
        form_error(
            "message_id",
            "SNOWFLAKE_TYPE_INVALID",
            "Value is not a snowflake.",
        )
    })
}

/// `GET /channels/{cid}/messages/{mid}`.
pub(super) async fn get_message(
    State(state): State<AppState>,
    creds: Credentials,
    UrlPath((cid, mid)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    auth(&state, &creds)?;
    check_channel(&cid)?;
    let mid = parse_mid(&mid)?;
    let g = book(&state)?;
    let m = g
        .as_ref()
        .and_then(|b| b.map.get(&mid))
        .filter(|m| m.channel_id == cid)
        .ok_or_else(unknown_message)?;
    Ok(Json(message_json(&state, m)).into_response())
}

/// `DELETE /channels/{cid}/messages/{mid}` → 204; its attachments go with it.
pub(super) async fn delete_message(
    State(state): State<AppState>,
    creds: Credentials,
    UrlPath((cid, mid)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    auth(&state, &creds)?;
    check_channel(&cid)?;
    let mid = parse_mid(&mid)?;
    let mut g = book(&state)?;
    let b = g.as_mut().ok_or_else(internal)?;
    if b.map.get(&mid).is_none_or(|m| m.channel_id != cid) {
        return Err(unknown_message());
    }
    let m = b.remove(mid).map_err(io_500("message record"))?;
    for aid in m.iter().flat_map(|m| &m.attachments) {
        state.store.delete(PROTO, aid).map_err(|e| {
            tracing::error!(error = %e, "fluxer: deleting attachment");
            internal()
        })?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /channels/{cid}/messages/{mid}/attachments/{aid}` → 204. The message stays,
/// even when it has no attachments and no content left.
pub(super) async fn delete_attachment(
    State(state): State<AppState>,
    creds: Credentials,
    UrlPath((cid, mid, aid)): UrlPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    auth(&state, &creds)?;
    check_channel(&cid)?;
    let mid = parse_mid(&mid)?;
    let mut g = book(&state)?;
    let b = g.as_mut().ok_or_else(internal)?;
    let mut m = b
        .map
        .get(&mid)
        .filter(|m| m.channel_id == cid)
        .cloned()
        .ok_or_else(unknown_message)?;
    let Some(pos) = m.attachments.iter().position(|a| *a == aid) else {
        return Err(error(
            StatusCode::NOT_FOUND,
            "UNKNOWN_ATTACHMENT",
            "Unknown Attachment",
        ));
    };
    m.attachments.remove(pos);
    b.save(m).map_err(io_500("message record"))?;
    state.store.delete(PROTO, &aid).map_err(|e| {
        tracing::error!(error = %e, "fluxer: deleting attachment");
        internal()
    })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
