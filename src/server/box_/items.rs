//! The Box API host: file and folder information, rename/move, delete, folder creation and
//! listings, and downloads (`GET /files/{id}/content` answers 302 to a signed link on this
//! server, which serves the blob with single-range support and needs no token).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use super::super::auth::Credentials;
use super::super::body::{content_type_for, serve_file, BadRange, FileAnswer};
use super::super::faults::FaultOp;
use super::super::store::{now_ms, Object};
use super::super::{AppState, ConnKill, Faulted, ServerState};
use super::upload::{check_if_match, fault_json};
use super::*;

/// Default page size of folder listings (Box's default).
const DEFAULT_PAGE: u64 = 100;

type Q = Query<HashMap<String, String>>;

fn json_body(body: &Bytes) -> BoxResult<Value> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    super::upload::parse_json_body(body)
}

/// `GET /files/{id}`.
pub(super) async fn get_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    Query(q): Q,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let f = file(&state, &id)?;
    Ok(Json(fields_json(&state, &f, q.get("fields").map(String::as_str))).into_response())
}

/// New name and parent from a `PUT /files|folders/{id}` body, validated.
fn rename_target(state: &ServerState, o: &Object, v: &Value) -> BoxResult<(String, String)> {
    let name = match &v["name"] {
        Value::Null => o.name.clone(),
        Value::String(s) => s.clone(),
        _ => return Err(BoxError::bad_request("name must be a string")),
    };
    let parent = match &v["parent"] {
        Value::Null => o.parent.clone(),
        p => p["id"]
            .as_str()
            .ok_or_else(|| BoxError::bad_request("parent.id must be a string"))?
            .to_string(),
    };
    check_name(&name)?;
    folder(state, &parent)?;
    check_conflict(state, &parent, &name, Some(&o.id), false)?;
    Ok((name, parent))
}

/// Give `o` its new name and parent, store it and answer its full form.
fn moved(state: &ServerState, mut o: Object, name: String, parent: String) -> BoxResult {
    o.name = name;
    o.parent = parent;
    bump(&mut o);
    state.store.update(&o)?;
    Ok(Json(full_json(state, &o)).into_response())
}

/// `PUT /files/{id}` `{name?, parent:{id}?}`: rename and/or move.
pub(super) async fn update_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    headers: HeaderMap,
    body: Bytes,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let f = file(&state, &id)?;
    check_if_match(&headers, &f)?;
    let v = json_body(&body)?;
    let (name, parent) = rename_target(&state, &f, &v)?;
    moved(&state, f, name, parent)
}

/// `DELETE /files/{id}`: 204.
pub(super) async fn delete_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    headers: HeaderMap,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let f = file(&state, &id)?;
    check_if_match(&headers, &f)?;
    state.store.delete(PROTO, &f.id)?;
    tracing::info!(id = %f.id, name = %f.name, "box: file deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /files/{id}/content`: 302 to a signed download link.
pub(super) async fn download_redirect(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let f = file(&state, &id)?;
    let exp = now_ms() / 1000 + state.box_.link_lifetime_s();
    let sig = state.box_.sign_link(&f.id, &f.sha1, exp);
    let location = format!("{}/box/2.0/dl/{}/{exp}/{sig}", state.base_url(), f.id);
    Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// `GET /dl/{id}/{exp}/{sig}`: the signed link; Range gives 206, a bad range 416.
pub(super) async fn download_signed(
    State(state): State<AppState>,
    Path((id, exp, sig)): Path<(String, i64, String)>,
    headers: HeaderMap,
    Extension(kill): Extension<ConnKill>,
) -> BoxResult {
    let forbidden = || {
        BoxError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The download link is invalid or expired",
        )
    };
    let f = file(&state, &id).map_err(|_| forbidden())?;
    if exp < now_ms() / 1000 || state.box_.sign_link(&f.id, &f.sha1, exp) != sig {
        return Err(forbidden());
    }
    let drop_midway = match state.roll(FaultOp::Download, fault_json) {
        Faulted::Answer(r) => return Ok(r),
        // A dropped download breaks off in the middle of the body when there is one.
        Faulted::DropNow | Faulted::DropAfter if f.size >= 2 => true,
        Faulted::DropNow | Faulted::DropAfter => return Ok(kill.drop_connection().await),
        Faulted::None => false,
    };
    let Some(blob) = &f.blob else {
        return Err(BoxError::internal(format!("file {} has no blob", f.id)));
    };
    let etag = format!("\"{}\"", etag_of(&f));
    Ok(serve_file(
        &headers,
        FileAnswer {
            path: &state.store.blob_path(blob),
            size: f.size,
            content_type: content_type_for(&f.name),
            extra: &[(header::ETAG, etag)],
            bad_range: BadRange::Refuse,
            drop_midway,
        },
        state.throttle.clone(),
    )
    .await)
}

/// A page of a folder's children as Box `Items`, mini form plus `fields`.
fn items_page(
    state: &ServerState,
    folder_id: &str,
    q: &HashMap<String, String>,
) -> BoxResult<Value> {
    let limit = query_u64(q, "limit", "invalid_limit")?
        .unwrap_or(DEFAULT_PAGE)
        .clamp(1, MAX_PAGE);
    let fields = q.get("fields").map(String::as_str);
    let use_marker = q.get("usemarker").is_some_and(|v| v == "true");
    let order = json!([{"by": "type", "direction": "ASC"}, {"by": "name", "direction": "ASC"}]);
    let offset = if use_marker {
        match q.get("marker").filter(|m| !m.is_empty()) {
            None => 0,
            Some(m) => decode_marker(m)?,
        }
    } else {
        query_u64(q, "offset", "invalid_offset")?.unwrap_or(0)
    };
    let (rows, total) = state.store.list(PROTO, folder_id, offset, limit)?;
    // Listings are the mini form unless fields are asked for.
    let entries: Vec<Value> = rows
        .iter()
        .map(|o| match fields {
            Some(_) => fields_json(state, o, fields),
            None => mini_json(o),
        })
        .collect();
    if use_marker {
        let next = offset + rows.len() as u64;
        let next_marker = if next < total {
            json!(encode_marker(next))
        } else {
            json!(null)
        };
        Ok(json!({"entries": entries, "limit": limit, "next_marker": next_marker, "order": order}))
    } else {
        Ok(json!({
            "total_count": total, "entries": entries, "offset": offset, "limit": limit,
            "order": order,
        }))
    }
}

/// Markers are opaque to clients; here they wrap the next offset.
fn encode_marker(offset: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("o:{offset}"))
}

fn decode_marker(m: &str) -> BoxResult<u64> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(m)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("o:").and_then(|n| n.parse().ok()))
        .ok_or_else(|| {
            BoxError::new(
                StatusCode::BAD_REQUEST,
                "invalid_parameter",
                "The marker is invalid",
            )
        })
}

/// `GET /folders/{id}`: Folder--Full with the first page of `item_collection`.
pub(super) async fn get_folder(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    Query(q): Q,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let f = folder(&state, &id)?;
    let mut v = match &f {
        None => root_full(),
        Some(o) => fields_json(&state, o, q.get("fields").map(String::as_str)),
    };
    let mut page_q = HashMap::new();
    page_q.insert("limit".to_string(), DEFAULT_PAGE.to_string());
    v["item_collection"] = items_page(&state, &id, &page_q)?;
    Ok(Json(v).into_response())
}

/// `GET /folders/{id}/items?offset&limit&fields&usemarker&marker`.
pub(super) async fn folder_items(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    Query(q): Q,
) -> BoxResult {
    check_auth(&state, &creds)?;
    folder(&state, &id)?;
    Ok(Json(items_page(&state, &id, &q)?).into_response())
}

/// `POST /folders` `{name, parent:{id}}`: 201 Folder--Full.
pub(super) async fn create_folder(
    State(state): State<AppState>,
    creds: Credentials,
    body: Bytes,
) -> BoxResult {
    check_auth(&state, &creds)?;
    let v = json_body(&body)?;
    let (name, parent) = super::upload::name_and_parent(&v)?;
    check_name(name)?;
    folder(&state, parent)?;
    check_conflict(&state, parent, name, None, true)?;
    let mut o = Object::folder(
        PROTO,
        new_id(&state)?,
        parent.to_string(),
        name.to_string(),
        serde_json::Value::Null,
    );
    o.extra = box_extra(0, None, o.created_ms, o.modified_ms);
    state.store.insert(&o)?;
    Ok((StatusCode::CREATED, Json(full_json(&state, &o))).into_response())
}

fn root_untouchable() -> BoxError {
    BoxError::new(
        StatusCode::FORBIDDEN,
        "access_denied_insufficient_permissions",
        "The root folder cannot be changed or deleted",
    )
}

/// `PUT /folders/{id}` `{name?, parent:{id}?}`: rename and/or move.
pub(super) async fn update_folder(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    headers: HeaderMap,
    body: Bytes,
) -> BoxResult {
    check_auth(&state, &creds)?;
    if id == ROOT_ID {
        return Err(root_untouchable());
    }
    let Some(f) = folder(&state, &id)? else {
        return Err(root_untouchable());
    };
    check_if_match(&headers, &f)?;
    let v = json_body(&body)?;
    let (name, parent) = rename_target(&state, &f, &v)?;
    // Moving a folder under itself would detach a cycle from the tree.
    let mut cur = parent.clone();
    for _ in 0..10_000 {
        if cur == f.id {
            return Err(BoxError::new(
                StatusCode::BAD_REQUEST,
                "cyclical_folder_structure",
                "Folder move creates cyclical folder structure",
            ));
        }
        if cur == ROOT_ID {
            break;
        }
        match state.store.get(PROTO, &cur)? {
            Some(o) => cur = o.parent,
            None => break,
        }
    }
    moved(&state, f, name, parent)
}

/// `DELETE /folders/{id}?recursive=true|false`: 204; a non-empty folder needs recursive.
pub(super) async fn delete_folder(
    State(state): State<AppState>,
    Path(id): Path<String>,
    creds: Credentials,
    headers: HeaderMap,
    Query(q): Q,
) -> BoxResult {
    check_auth(&state, &creds)?;
    if id == ROOT_ID {
        return Err(root_untouchable());
    }
    let Some(f) = folder(&state, &id)? else {
        return Err(root_untouchable());
    };
    check_if_match(&headers, &f)?;
    let recursive = q.get("recursive").is_some_and(|v| v == "true");
    let (_, children) = state.store.list(PROTO, &id, 0, 1)?;
    if children > 0 && !recursive {
        return Err(BoxError::new(
            StatusCode::BAD_REQUEST,
            "folder_not_empty",
            "Cannot delete – folder not empty",
        ));
    }
    delete_tree(&state, &id)?;
    tracing::info!(id = %id, name = %f.name, recursive, "box: folder deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Delete a folder and everything under it (children first).
fn delete_tree(state: &ServerState, id: &str) -> BoxResult<()> {
    let mut stack = vec![(id.to_string(), false)];
    while let Some((cur, expanded)) = stack.pop() {
        if expanded {
            state.store.delete(PROTO, &cur)?;
            continue;
        }
        stack.push((cur.clone(), true));
        let (children, _) = state.store.list(PROTO, &cur, 0, u64::MAX)?;
        for c in children {
            if c.is_dir {
                stack.push((c.id, false));
            } else {
                state.store.delete(PROTO, &c.id)?;
            }
        }
    }
    Ok(())
}
