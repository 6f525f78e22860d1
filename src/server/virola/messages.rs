//! The room's messages: the pre-existing message that holds attachments (created on first
//! use), listing with exclusive cursors, posting (no id in the answer, as the real API)
//! and deleting a message with its attachments.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::auth::Credentials;
use super::super::store::Object;
use super::super::{AppState, ServerState, VIROLA_MESSAGE_ID, VIROLA_ROOM_ID};
use super::attachments::{attachment_json, attachments_of};
use super::{authenticate, ok, VirolaError, VirolaResult, META_PROTO, MSG_PROTO, PROTO};

/// Default and largest page of `GET /rooms/{id}/messages` (emulator choice).
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 200;

/// Create the pre-existing message the first time the store is used.
async fn ensure_seed(state: &ServerState) -> VirolaResult<()> {
    let mut seeded = state.virola.seed_lock.lock().await;
    if *seeded {
        return Ok(());
    }
    if state.store.get(META_PROTO, "seeded")?.is_none() {
        state
            .store
            .insert(&message_object(VIROLA_MESSAGE_ID, "Files"))?;
        let marker = Object::record(
            META_PROTO,
            "seeded".to_string(),
            VIROLA_ROOM_ID.to_string(),
            json!({"content": "", "room_id": VIROLA_ROOM_ID}),
        );
        state.store.insert(&marker)?;
    }
    *seeded = true;
    Ok(())
}

fn message_object(id: u64, content: &str) -> Object {
    Object::record(
        MSG_PROTO,
        id.to_string(),
        VIROLA_ROOM_ID.to_string(),
        json!({"content": content, "room_id": VIROLA_ROOM_ID}),
    )
}

/// The message `mid` (404 in Virola's shape when unknown).
pub(super) async fn find_message(state: &ServerState, mid: &str) -> VirolaResult<Object> {
    ensure_seed(state).await?;
    let not_found = || VirolaError::new(StatusCode::NOT_FOUND, "Message not found");
    let id: u64 = mid.parse().map_err(|_| not_found())?;
    state
        .store
        .get(MSG_PROTO, &id.to_string())?
        .ok_or_else(not_found)
}

fn check_room(rid: &str) -> VirolaResult<u64> {
    match rid.parse::<u64>() {
        Ok(id) if id == VIROLA_ROOM_ID => Ok(id),
        _ => Err(VirolaError::new(StatusCode::NOT_FOUND, "Room not found")),
    }
}

fn message_json(state: &ServerState, m: &Object) -> VirolaResult<Value> {
    let atts: Vec<Value> = attachments_of(state, &m.id)?
        .iter()
        .map(attachment_json)
        .collect();
    Ok(json!({
        "messageId": m.id.parse::<u64>().unwrap_or_default(),
        "roomId": VIROLA_ROOM_ID,
        "content": m.extra["content"],
        "createdUtc": m.created_ms,
        "attachments": atts,
    }))
}

#[derive(Deserialize)]
pub(super) struct MessagesQuery {
    cursor: Option<String>,
    limit: Option<String>,
    direction: Option<String>,
}

/// `GET /rooms/{rid}/messages?cursor=&limit=&direction=backward|forward`.
pub(super) async fn list_messages(
    State(state): State<AppState>,
    creds: Credentials,
    Path(rid): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> VirolaResult {
    authenticate(&state, &creds)?;
    ensure_seed(&state).await?;
    let rid = check_room(&rid)?;
    let bad = |what: &str| VirolaError::bad_request(format!("Invalid {what}"));
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| bad("cursor"))?),
    };
    let limit = match q.limit.as_deref().filter(|l| !l.is_empty()) {
        None => DEFAULT_PAGE,
        Some(l) => match l.parse::<usize>() {
            Ok(l) if (1..=MAX_PAGE).contains(&l) => l,
            _ => return Err(bad("limit")),
        },
    };
    let forward = match q.direction.as_deref().unwrap_or("backward") {
        "backward" | "" => false,
        "forward" => true,
        _ => return Err(bad("direction")),
    };
    let mut msgs: Vec<(u64, Object)> = state
        .store
        .all(MSG_PROTO)?
        .into_iter()
        .filter(|m| m.parent == rid.to_string())
        .filter_map(|m| m.id.parse::<u64>().ok().map(|id| (id, m)))
        .filter(|(id, _)| match (cursor, forward) {
            (None, _) => true,
            (Some(c), true) => *id > c,
            (Some(c), false) => *id < c,
        })
        .collect();
    msgs.sort_by_key(|(id, _)| *id);
    if !forward {
        msgs.reverse();
    }
    msgs.truncate(limit);
    let out = msgs
        .iter()
        .map(|(_, m)| message_json(&state, m))
        .collect::<VirolaResult<Vec<Value>>>()?;
    Ok(Json(json!({"httpStatusCode": 200, "roomId": rid, "messages": out})).into_response())
}

#[derive(Deserialize)]
struct NewMessage {
    content: String,
}

/// `POST /rooms/{rid}/messages {content}`: no id in the answer (as the real API).
pub(super) async fn post_message(
    State(state): State<AppState>,
    creds: Credentials,
    Path(rid): Path<String>,
    body: axum::body::Bytes,
) -> VirolaResult {
    authenticate(&state, &creds)?;
    check_room(&rid)?;
    ensure_seed(&state).await?;
    let Ok(b) = serde_json::from_slice::<NewMessage>(&body) else {
        return Err(VirolaError::bad_request("JSON body {\"content\"} expected"));
    };
    // Counter values start at 1000; offset them past the seed message so ids grow with time.
    let id = VIROLA_MESSAGE_ID + state.store.next_id(MSG_PROTO)?;
    state.store.insert(&message_object(id, &b.content))?;
    Ok(ok())
}

/// `DELETE /messages/{mid}`: the message and its attachments.
pub(super) async fn delete_message(
    State(state): State<AppState>,
    creds: Credentials,
    Path(mid): Path<String>,
) -> VirolaResult {
    authenticate(&state, &creds)?;
    let m = find_message(&state, &mid).await?;
    for a in attachments_of(&state, &m.id)? {
        state.store.delete(PROTO, &a.id)?;
    }
    state.store.delete(MSG_PROTO, &m.id)?;
    Ok(ok())
}
