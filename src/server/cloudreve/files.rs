//! File management: login, listing (paged), info, delete, create folder/file, rename,
//! move/copy, signed download URLs and the content endpoint they point at.
//!
//! Shapes follow the v4 source (`service/explorer/file.go`): rename is
//! `POST /file/rename {uri, new_name}` answering the renamed `FileResponse`; move/copy is
//! `POST /file/move {uris, dst, copy}` into the folder `dst`, answering no data. Choices
//! where the real server depends on settings: deletes are permanent (no trash bin), a
//! listing is cursor-paged (`pagination.next_token`) with folders first, and `page_size`
//! is clamped to 2000.
//!
//! Signed URLs are `/file/content/{entity}/0/{name}?sign=<b64url HMAC-SHA1>:<exp>`: the
//! HMAC covers the entity id and the expiry, so a URL names one content version and dies
//! at `exp` (or when the server restarts, the key being per process).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Extension;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::super::auth::Credentials;
use super::super::body::{serve_file, BadRange, FileAnswer};
use super::super::store::{now_ms, Object};
use super::super::{AppState, ConnKill, ServerState};
use super::paths::{check_name, escape, CrPath};
use super::upload::{placeholder_at, placeholders_in};
use super::{
    auth, bind, code, fault_json, file_json, new_folder, new_id, ok, ok_empty, query_map, resolve,
    root_json, storage_policy, uri_param, ApiError, ApiResult, Node, DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE, PREFIX, PROTO, URL_TTL_SECS,
};

#[derive(Deserialize)]
pub struct LoginBody {
    email: Option<String>,
    password: Option<String>,
}

/// The token structure of login and refresh: the access token is the server token.
fn token_answer(state: &ServerState) -> Value {
    let now = chrono::Utc::now();
    let token = state.live().token;
    json!({
        "access_token": token,
        "refresh_token": token,
        "access_expires": (now + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "refresh_expires": (now + chrono::Duration::days(90)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// `POST /session/token {email, password}`: any email, the password is the server token.
pub async fn login(State(state): State<AppState>, body: Bytes) -> ApiResult {
    let req: LoginBody = bind(&body)?;
    let email = req.email.filter(|e| !e.is_empty());
    let (Some(email), Some(password)) = (email, req.password) else {
        return Err(ApiError::param("email and password are required"));
    };
    if !state.token_matches(&password) {
        return Err(ApiError::new(
            code::CREDENTIAL_INVALID,
            "Wrong password or email address",
        ));
    }
    Ok(ok(json!({
        "user": {"id": "lpua", "email": email, "nickname": email.split('@').next().unwrap_or(""),
                 "status": "active", "created_at": super::rfc3339(0),
                 "group": {"id": "lpua", "name": "Admin"}},
        "token": token_answer(&state),
    })))
}

#[derive(Deserialize)]
pub struct RefreshBody {
    refresh_token: Option<String>,
}

/// `POST /session/token/refresh {refresh_token}`.
pub async fn refresh(State(state): State<AppState>, body: Bytes) -> ApiResult {
    let req: RefreshBody = bind(&body)?;
    let t = req
        .refresh_token
        .ok_or_else(|| ApiError::param("refresh_token is required"))?;
    if !state.token_matches(&t) {
        return Err(ApiError::new(
            code::CREDENTIAL_INVALID,
            "Invalid refresh token",
        ));
    }
    Ok(ok(token_answer(&state)))
}

/// One child in a listing: a stored object or a placeholder.
enum Entry {
    Obj(Box<Object>),
    Placeholder(std::sync::Arc<super::upload::SessionInfo>),
}

impl Entry {
    fn is_dir(&self) -> bool {
        matches!(self, Entry::Obj(o) if o.is_dir)
    }
    fn name(&self) -> &str {
        match self {
            Entry::Obj(o) => &o.name,
            Entry::Placeholder(p) => &p.name,
        }
    }
    fn size(&self) -> u64 {
        match self {
            Entry::Obj(o) => o.size,
            Entry::Placeholder(p) => p.size,
        }
    }
    fn created(&self) -> i64 {
        match self {
            Entry::Obj(o) => o.created_ms,
            Entry::Placeholder(p) => p.created_ms,
        }
    }
    fn updated(&self) -> i64 {
        match self {
            Entry::Obj(o) => o.modified_ms,
            Entry::Placeholder(p) => p.created_ms,
        }
    }
    fn json(&self, dir: &CrPath) -> Value {
        match self {
            Entry::Obj(o) => file_json(o, &dir.child(&o.name)),
            Entry::Placeholder(p) => p.placeholder_json(),
        }
    }
}

/// The opaque `next_page_token`: the offset of the next page.
fn page_token(offset: u64) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn parse_page_token(t: &str) -> Option<u64> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(t)
        .ok()?;
    String::from_utf8(raw)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

fn num_param(
    q: &std::collections::HashMap<String, String>,
    k: &str,
) -> Result<Option<u64>, ApiError> {
    match q.get(k).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| ApiError::param(format!("Invalid parameters: {k}"))),
    }
}

/// `GET /file?uri=&page=&page_size=&order_by=&order_direction=&next_page_token=`.
pub async fn list(
    State(state): State<AppState>,
    creds: Credentials,
    RawQuery(q): RawQuery,
) -> ApiResult {
    auth(&state, &creds)?;
    let q = query_map(q.as_deref());
    let path = uri_param(&q)?;
    let page = num_param(&q, "page")?.unwrap_or(0);
    let page_size = num_param(&q, "page_size")?
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_PAGE_SIZE)
        .min(MAX_PAGE_SIZE);
    let offset = match q.get("next_page_token").filter(|t| !t.is_empty()) {
        Some(t) => parse_page_token(t).ok_or_else(|| ApiError::param("invalid next_page_token"))?,
        None => page.saturating_mul(page_size),
    };
    let dir = resolve(&state, &path)?.ok_or_else(ApiError::not_found)?;
    let parent_json = match &dir {
        Node::Root => root_json(0),
        Node::Obj(o) if o.is_dir => file_json(o, &path),
        Node::Obj(_) => return Err(ApiError::new(code::PATH_NOT_EXIST, "Not a folder")),
    };
    let (objs, _) = state.store.list(PROTO, dir.id(), 0, u64::MAX)?;
    let mut entries: Vec<Entry> = objs.into_iter().map(|o| Entry::Obj(Box::new(o))).collect();
    entries.extend(
        placeholders_in(&state, dir.id())
            .into_iter()
            .map(Entry::Placeholder),
    );
    let desc = q
        .get("order_direction")
        .or_else(|| q.get("order"))
        .map(String::as_str)
        == Some("desc");
    let order_by = q.get("order_by").map(String::as_str).unwrap_or("name");
    // Folders first (mixed_type false), then the asked order, name breaking ties.
    entries.sort_by(|a, b| {
        let primary = match order_by {
            "size" => a.size().cmp(&b.size()),
            "created_at" => a.created().cmp(&b.created()),
            "updated_at" => a.updated().cmp(&b.updated()),
            _ => std::cmp::Ordering::Equal,
        }
        .then_with(|| a.name().cmp(b.name()));
        b.is_dir()
            .cmp(&a.is_dir())
            .then(if desc { primary.reverse() } else { primary })
    });
    let total = entries.len() as u64;
    let files: Vec<Value> = entries
        .iter()
        .skip(offset.min(total) as usize)
        .take(page_size as usize)
        .map(|e| e.json(&path))
        .collect();
    let mut pagination = json!({"page": page, "page_size": page_size, "is_cursor": true});
    if offset + page_size < total {
        pagination["next_token"] = json!(page_token(offset + page_size));
    }
    Ok(ok(json!({
        "files": files,
        "parent": parent_json,
        "pagination": pagination,
        "props": {
            "capability": "39/9",
            "max_page_size": MAX_PAGE_SIZE,
            "order_by_options": ["name", "size", "updated_at", "created_at"],
            "order_direction_options": ["asc", "desc"],
        },
        "context_hint": uuid::Uuid::new_v4().to_string(),
        "mixed_type": false,
        "storage_policy": storage_policy(),
    })))
}

/// `GET /file/info?uri=`.
pub async fn info(
    State(state): State<AppState>,
    creds: Credentials,
    RawQuery(q): RawQuery,
) -> ApiResult {
    auth(&state, &creds)?;
    let q = query_map(q.as_deref());
    let path = uri_param(&q)?;
    match resolve(&state, &path)? {
        Some(Node::Root) => Ok(ok(root_json(0))),
        Some(Node::Obj(o)) => Ok(ok(file_json(&o, &path))),
        None => match placeholder_at(&state, &path) {
            Some(p) => Ok(ok(p.placeholder_json())),
            None => Err(ApiError::not_found()),
        },
    }
}

#[derive(Deserialize)]
pub struct UrisBody {
    uris: Option<Vec<String>>,
}

/// Delete an object and, for a folder, everything below it.
fn delete_tree(state: &ServerState, o: &Object) -> Result<(), ApiError> {
    if o.is_dir {
        let (children, _) = state.store.list(PROTO, &o.id, 0, u64::MAX)?;
        for c in &children {
            delete_tree(state, c)?;
        }
    }
    state.store.delete(PROTO, &o.id)?;
    Ok(())
}

/// `DELETE /file {uris, unlink?, skip_soft_delete?}` (deletes are permanent here).
pub async fn delete(State(state): State<AppState>, creds: Credentials, body: Bytes) -> ApiResult {
    auth(&state, &creds)?;
    let req: UrisBody = bind(&body)?;
    let uris = req
        .uris
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::param("uris is required"))?;
    let paths = uris
        .iter()
        .map(|u| CrPath::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let mut failures = serde_json::Map::new();
    let mut last_err = None;
    for (uri, path) in uris.iter().zip(&paths) {
        let r = (|| {
            if state.cloudreve.locked_under(path) {
                return Err(ApiError::locked());
            }
            match resolve(&state, path)? {
                None => Err(ApiError::not_found()),
                Some(Node::Root) => Err(ApiError::param("cannot delete the root folder")),
                Some(Node::Obj(o)) => delete_tree(&state, &o),
            }
        })();
        if let Err(e) = r {
            failures.insert(uri.clone(), json!({"code": e.code, "error": e.msg}));
            last_err = Some(e);
        }
    }
    match last_err {
        None => Ok(ok_empty()),
        Some(e) if uris.len() == 1 => Err(e),
        Some(_) => {
            let mut e = ApiError::new(
                code::BATCH_INCOMPLETE,
                "Batch operation not fully completed",
            );
            e.aggregated = Some(Value::Object(failures));
            Err(e)
        }
    }
}

#[derive(Deserialize)]
pub struct CreateBody {
    uri: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    err_on_conflict: bool,
}

/// `POST /file/create {uri, type, err_on_conflict}`: a folder (parents too) or an empty file.
pub async fn create(State(state): State<AppState>, creds: Credentials, body: Bytes) -> ApiResult {
    auth(&state, &creds)?;
    let req: CreateBody = bind(&body)?;
    let uri = req
        .uri
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::param("uri is required"))?;
    let folder = match req.kind.as_deref() {
        Some("folder") => true,
        Some("file") => false,
        _ => return Err(ApiError::param("type must be file or folder")),
    };
    let path = CrPath::parse(&uri)?;
    let (Some(name), Some(parent)) = (path.name().map(str::to_string), path.parent()) else {
        return Err(ApiError::exists());
    };
    if state.cloudreve.locked_under(&path) {
        return Err(ApiError::locked());
    }
    let parent_id = super::ensure_dirs(&state, &parent)?;
    if let Some(o) = state.store.find_child(PROTO, &parent_id, &name, false)? {
        if req.err_on_conflict || o.is_dir != folder {
            return Err(ApiError::exists());
        }
        return Ok(ok(file_json(&o, &path)));
    }
    let o = if folder {
        new_folder(&state, &parent_id, &name)?
    } else {
        let temp = state.store.temp_path();
        std::fs::File::create(&temp)?;
        let blob = state.store.commit_blob(&temp)?;
        let info = super::super::body::BodyInfo {
            len: 0,
            sha1: hex::encode(Sha1::digest(b"")),
            md5: hex::encode(<md5::Md5 as Digest>::digest(b"")),
        };
        let mut o = Object::file(PROTO, new_id(&state)?, parent_id, name, &info, blob);
        o.extra = json!({"entity": super::new_entity(&state)?, "metadata": {}});
        state.store.insert(&o)?;
        o
    };
    Ok(ok(file_json(&o, &path)))
}

#[derive(Deserialize)]
pub struct RenameBody {
    uri: Option<String>,
    new_name: Option<String>,
}

/// `POST /file/rename {uri, new_name}` → the renamed `FileResponse`.
pub async fn rename(State(state): State<AppState>, creds: Credentials, body: Bytes) -> ApiResult {
    auth(&state, &creds)?;
    let req: RenameBody = bind(&body)?;
    let (Some(uri), Some(new_name)) = (req.uri.filter(|u| !u.is_empty()), req.new_name) else {
        return Err(ApiError::param("uri and new_name are required"));
    };
    check_name(&new_name)?;
    let path = CrPath::parse(&uri)?;
    let Some(parent) = path.parent() else {
        return Err(ApiError::param("cannot rename the root folder"));
    };
    let new_path = parent.child(&new_name);
    if state.cloudreve.locked_under(&path) || state.cloudreve.locked_under(&new_path) {
        return Err(ApiError::locked());
    }
    let Some(Node::Obj(mut o)) = resolve(&state, &path)? else {
        return Err(ApiError::not_found());
    };
    if new_name != o.name {
        if state
            .store
            .find_child(PROTO, &o.parent, &new_name, false)?
            .is_some()
        {
            return Err(ApiError::exists());
        }
        o.name = new_name;
        state.store.update(&o)?;
    }
    Ok(ok(file_json(&o, &new_path)))
}

#[derive(Deserialize)]
pub struct MoveBody {
    uris: Option<Vec<String>>,
    dst: Option<String>,
    #[serde(default)]
    copy: bool,
}

/// Copy `o` (recursively) under folder `parent`; copies share blobs.
fn copy_tree(state: &ServerState, o: &Object, parent: &str) -> Result<(), ApiError> {
    let mut c = o.clone();
    c.id = new_id(state)?;
    c.parent = parent.to_string();
    c.created_ms = now_ms();
    if !c.is_dir {
        let mut extra = c.extra.as_object().cloned().unwrap_or_default();
        extra.insert("entity".into(), json!(super::new_entity(state)?));
        c.extra = Value::Object(extra);
    }
    state.store.insert(&c)?;
    if o.is_dir {
        let (children, _) = state.store.list(PROTO, &o.id, 0, u64::MAX)?;
        for child in &children {
            copy_tree(state, child, &c.id)?;
        }
    }
    Ok(())
}

/// `POST /file/move {uris, dst, copy}`: move (or copy) into the folder `dst`.
pub async fn move_or_copy(
    State(state): State<AppState>,
    creds: Credentials,
    body: Bytes,
) -> ApiResult {
    auth(&state, &creds)?;
    let req: MoveBody = bind(&body)?;
    let (Some(uris), Some(dst)) = (req.uris.filter(|u| !u.is_empty()), req.dst) else {
        return Err(ApiError::param("uris and dst are required"));
    };
    let dst = CrPath::parse(&dst)?;
    let target = resolve(&state, &dst)?.ok_or_else(ApiError::not_found)?;
    if !target.is_dir() {
        return Err(ApiError::new(
            code::PATH_NOT_EXIST,
            "Destination is not a folder",
        ));
    }
    for uri in &uris {
        let path = CrPath::parse(uri)?;
        let Some(name) = path.name() else {
            return Err(ApiError::param("cannot move the root folder"));
        };
        if dst.is_within(&path) {
            return Err(ApiError::param("cannot move a folder into itself"));
        }
        if !req.copy && state.cloudreve.locked_under(&path) {
            return Err(ApiError::locked());
        }
        if state.cloudreve.locked_under(&dst.child(name)) {
            return Err(ApiError::locked());
        }
        let Some(Node::Obj(mut o)) = resolve(&state, &path)? else {
            return Err(ApiError::not_found());
        };
        if state
            .store
            .find_child(PROTO, target.id(), &o.name, false)?
            .is_some()
        {
            if o.parent == target.id() && !req.copy {
                continue;
            }
            return Err(ApiError::exists());
        }
        if req.copy {
            copy_tree(&state, &o, target.id())?;
        } else {
            o.parent = target.id().to_string();
            state.store.update(&o)?;
        }
    }
    Ok(ok_empty())
}

/// HMAC-SHA1 (RFC 2104); the crate has SHA-1 but no HMAC.
fn hmac_sha1(key: &[u8], msg: &[u8]) -> [u8; 20] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let inner = Sha1::new().chain_update(&ipad).chain_update(msg).finalize();
    Sha1::new()
        .chain_update(&opad)
        .chain_update(inner)
        .finalize()
        .into()
}

fn sign(state: &ServerState, entity: &str, exp: i64) -> String {
    let mac = hmac_sha1(
        &state.cloudreve.sign_key,
        format!("content:{entity}:{exp}").as_bytes(),
    );
    format!(
        "{}:{exp}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
    )
}

#[derive(Deserialize)]
pub struct UrlBody {
    uris: Option<Vec<String>>,
    #[serde(default)]
    download: bool,
}

/// `POST /file/url {uris, download}` → `{urls:[{url}], expires}`.
pub async fn url(State(state): State<AppState>, creds: Credentials, body: Bytes) -> ApiResult {
    auth(&state, &creds)?;
    let req: UrlBody = bind(&body)?;
    let uris = req
        .uris
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::param("uris is required"))?;
    let exp = chrono::Utc::now().timestamp() + URL_TTL_SECS;
    let mut urls = Vec::new();
    for uri in &uris {
        let path = CrPath::parse(uri)?;
        let o = match resolve(&state, &path)? {
            Some(Node::Obj(o)) if !o.is_dir => o,
            Some(_) => return Err(ApiError::param("cannot get the URL of a folder")),
            None => return Err(ApiError::not_found()),
        };
        let entity = o.extra.get("entity").and_then(Value::as_str).unwrap_or("");
        state.cloudreve.remember_entity(entity, &o.id);
        let dl = if req.download { "download=true&" } else { "" };
        urls.push(json!({
            "url": format!("{}{PREFIX}/file/content/{entity}/0/{}?{dl}sign={}",
                state.base_url(), escape(&o.name), sign(&state, entity, exp)),
            "stream_saver_display_name": o.name,
        }));
    }
    Ok(ok(json!({
        "urls": urls,
        "expires": super::rfc3339(exp * 1000),
    })))
}

/// `GET|HEAD /file/content/{entity}/{speed}/{name}?sign=…`: no auth, the sign is checked.
/// A bad or expired sign answers HTTP 403 with `{"code":40071}` (the real server sends
/// the envelope with 200; a real status keeps a careless client from saving the error
/// JSON as file content).
pub async fn content(
    State(state): State<AppState>,
    Extension(kill): Extension<ConnKill>,
    Path((entity, _speed, _name)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> ApiResult {
    let q = query_map(q.as_deref());
    let valid = q
        .get("sign")
        .and_then(|s| s.rsplit_once(':'))
        .and_then(|(_, exp)| exp.parse::<i64>().ok())
        .filter(|&exp| exp > chrono::Utc::now().timestamp())
        .is_some_and(|exp| {
            let want = sign(&state, &entity, exp);
            q.get("sign").is_some_and(|s| {
                s.len() == want.len()
                    && s.bytes()
                        .zip(want.bytes())
                        .fold(0u8, |a, (x, y)| a | (x ^ y))
                        == 0
            })
        });
    if !valid {
        return Err(ApiError::http(
            StatusCode::FORBIDDEN,
            code::INVALID_SIGN,
            "Invalid sign",
        ));
    }
    if let Some(answer) = state.download_fault(&kill, fault_json).await {
        return Ok(answer);
    }
    let is_it =
        |o: &Object| !o.is_dir && o.extra.get("entity").and_then(Value::as_str) == Some(&entity);
    // The object its URL was handed out for, else a scan of every object.
    let hinted = state
        .cloudreve
        .entity_object(&entity)
        .and_then(|id| state.store.get(PROTO, &id).ok().flatten())
        .filter(is_it);
    let found = match hinted {
        Some(o) => Ok(Some(o)),
        None => state
            .store
            .all(PROTO)
            .map(|all| all.into_iter().find(|o| is_it(o))),
    };
    let gone = || ApiError::http(StatusCode::NOT_FOUND, code::NOT_FOUND, "Entity not exist");
    let o = match found {
        Ok(Some(o)) => o,
        Ok(None) => return Err(gone()),
        Err(e) => {
            tracing::error!(error = %e, "cloudreve content lookup");
            return Err(ApiError::http(
                StatusCode::INTERNAL_SERVER_ERROR,
                code::DB_ERROR,
                "Database error",
            ));
        }
    };
    let Some(blob) = o.blob.as_deref() else {
        return Err(gone());
    };
    let mut extra = vec![(header::CACHE_CONTROL, "no-cache".to_string())];
    if q.get("download").map(String::as_str) == Some("true") {
        extra.push((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename*=UTF-8''{}", escape(&o.name)),
        ));
    }
    let ct = o
        .extra
        .get("mime_type")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| super::super::body::content_type_for(&o.name))
        .to_string();
    Ok(serve_file(
        &headers,
        FileAnswer {
            path: &state.store.blob_path(blob),
            size: o.size,
            content_type: &ct,
            extra: &extra,
            bad_range: BadRange::Refuse,
            drop_midway: false,
        },
        state.throttle.clone(),
    )
    .await)
}
