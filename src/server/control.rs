//! The test side of `uploadfs serve`: the endpoints under `/_uploadfs/` (introspection of
//! what really landed, run-time control of faults) and the layer that spoils chosen
//! answers. They need the server token (the common bearer rule) and answer in plain text:
//! they speak no protocol.
//!
//! Control (`POST /_uploadfs/control`, JSON) changes at run time: `fail_rate`, `token`
//! (revokes the client's), `latency_ms`, `bandwidth`, `box_commit_202`,
//! `box_link_lifetime_s` (Box download links handed out from then on), `fluxer_max_size`,
//! `max_file_size`, `bad_answers` (spoiled answers of chosen requests, see
//! [`faults`](super::faults)), and `forget_sessions: true`, which drops every protocol's
//! open upload sessions (and their parts) as an expiry or a server restart would.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::Credentials;
use super::faults::{BadMode, BadRule};
use super::{store, AppState, ServerState};

/// Spoils the answers the bad-answer rule picks (never those of `/_uploadfs/`).
pub(super) async fn bad_answer_layer(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    if path.starts_with("/_uploadfs/") {
        return next.run(req).await;
    }
    let Some(mode) = state.bad_answers.take(req.method().as_str(), &path) else {
        return next.run(req).await;
    };
    let resp = next.run(req).await;
    state
        .counters
        .bad_answers_sent
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(%path, ?mode, "serving a bad answer");
    spoil(mode, resp).await
}

/// The page a captive portal or a login proxy answers instead of the service.
const PORTAL_PAGE: &str = "<!DOCTYPE html><html><head><title>Sign in to the network</title>\
    </head><body><h1>Network login required</h1><p>Please sign in to continue.</p></body></html>";
/// How long a truncated answer waits after its first half before the connection ends.
const TRUNCATE_PAUSE: Duration = Duration::from_millis(50);
/// Largest answer body [`spoil`] reads into memory to cut or flip it (test sizes only).
const MAX_SPOILED_BODY: usize = 256 * 1024 * 1024;

/// Replace `resp` as `mode` says (see [`faults`](super::faults)).
async fn spoil(mode: BadMode, resp: Response) -> Response {
    let fixed = |ct: &'static str, body: &'static str| {
        (StatusCode::OK, [(header::CONTENT_TYPE, ct)], body).into_response()
    };
    match mode {
        BadMode::Html => return fixed("text/html; charset=utf-8", PORTAL_PAGE),
        BadMode::GarbageJson => return fixed("application/json", "{\"unexpected\": "),
        BadMode::Empty => return fixed("application/json", ""),
        BadMode::Truncate | BadMode::WrongLength | BadMode::Flip => {}
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_SPOILED_BODY)
        .await
        .unwrap_or_default();
    let length = |n: usize| header::HeaderValue::from(n as u64);
    match mode {
        BadMode::Flip => {
            let flipped: Vec<u8> = bytes.iter().map(|b| !b).collect();
            parts
                .headers
                .insert(header::CONTENT_LENGTH, length(flipped.len()));
            Response::from_parts(parts, axum::body::Body::from(flipped))
        }
        BadMode::WrongLength => {
            let half = bytes.slice(..bytes.len() / 2);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, length(half.len()));
            Response::from_parts(parts, axum::body::Body::from(half))
        }
        _ => {
            // Promise the whole body (at least a few bytes), send half, then fail the
            // stream: hyper closes the connection mid-body. The failure waits a moment so
            // the head and the first half really leave (else hyper drops them unsent).
            use futures_util::StreamExt as _;
            let promised = bytes.len().max(16);
            let half = bytes.slice(..bytes.len() / 2);
            parts
                .headers
                .insert(header::CONTENT_LENGTH, length(promised));
            let first = futures_util::stream::once(async move { Ok::<_, std::io::Error>(half) });
            let cut = futures_util::stream::once(async {
                tokio::time::sleep(TRUNCATE_PAUSE).await;
                Err(std::io::Error::other("bad answer: connection cut mid-body"))
            });
            Response::from_parts(parts, axum::body::Body::from_stream(first.chain(cut)))
        }
    }
}

/// How the test endpoints fail: plain-text answers, they speak no protocol.
#[derive(Debug)]
pub(super) enum TestEndpointError {
    /// The token is missing or wrong: 401.
    TokenRequired,
    /// The store could not be read: 500.
    Store(store::StoreError),
}

impl IntoResponse for TestEndpointError {
    fn into_response(self) -> Response {
        match self {
            TestEndpointError::TokenRequired => {
                (StatusCode::UNAUTHORIZED, "token required").into_response()
            }
            TestEndpointError::Store(e) => {
                (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
            }
        }
    }
}

/// The test endpoints' token check (the common bearer rule).
fn check_test_auth(state: &ServerState, creds: &Credentials) -> Result<(), TestEndpointError> {
    if state.bearer_ok(creds) {
        Ok(())
    } else {
        Err(TestEndpointError::TokenRequired)
    }
}

/// `GET /_uploadfs/state`: stored files per protocol (name, size, SHA-1), open sessions,
/// counters.
pub(super) async fn introspect(
    State(state): State<AppState>,
    creds: Credentials,
) -> Result<Response, TestEndpointError> {
    check_test_auth(&state, &creds)?;
    let mut protocols = serde_json::Map::new();
    for (proto, sessions) in [
        ("box", state.box_.open_sessions()),
        ("cloudreve", state.cloudreve.open_sessions()),
        ("fluxer", state.fluxer.open_sessions()),
        ("virola", state.virola.open_sessions()),
        ("dyson", state.dyson.open_sessions()),
    ] {
        let objects = state.store.all(proto).map_err(TestEndpointError::Store)?;
        let (dirs, files): (Vec<_>, Vec<_>) = objects.into_iter().partition(|o| o.is_dir);
        protocols.insert(
            proto.to_string(),
            serde_json::json!({ "files": files, "folders": dirs, "open_sessions": sessions }),
        );
    }
    Ok(Json(serde_json::json!({
        "protocols": protocols,
        "requests": state.counters.requests.load(Ordering::Relaxed),
        "faults_injected": state.counters.faults_injected.load(Ordering::Relaxed),
        "bytes_received": state.counters.bytes_received.load(Ordering::Relaxed),
        "bytes_served": state.throttle.served(),
        "bad_answers_sent": state.counters.bad_answers_sent.load(Ordering::Relaxed),
        "sessions_forgotten": state.counters.sessions_forgotten.load(Ordering::Relaxed),
        "fail_rate": state.faults.rate(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct ControlBody {
    fail_rate: Option<f64>,
    /// Replace the token (a test "revokes" the client's token this way).
    token: Option<String>,
    latency_ms: Option<u64>,
    bandwidth: Option<u64>,
    box_commit_202: Option<u32>,
    /// Seconds Box download links handed out from now on stay valid.
    box_link_lifetime_s: Option<u64>,
    fluxer_max_size: Option<u64>,
    max_file_size: Option<u64>,
    /// Spoil the next answers of matching requests.
    bad_answers: Option<BadRule>,
    /// Drop every protocol's open upload sessions now.
    #[serde(default)]
    forget_sessions: bool,
}

/// `POST /_uploadfs/control`: change fault and shaping settings at run time.
pub(super) async fn control(
    State(state): State<AppState>,
    creds: Credentials,
    Json(body): Json<ControlBody>,
) -> Result<Response, TestEndpointError> {
    check_test_auth(&state, &creds)?;
    if let Some(r) = body.fail_rate {
        state.faults.set_rate(r);
    }
    if let Some(b) = body.bandwidth {
        state.throttle.set_rate(b);
    }
    if let Some(rule) = body.bad_answers {
        state.bad_answers.set(rule);
    }
    if body.forget_sessions {
        forget_sessions(&state);
    }
    if let Some(s) = body.box_link_lifetime_s {
        state.box_.set_link_lifetime_s(s);
    }
    {
        let mut live = state.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = body.token {
            live.token = t;
        }
        if let Some(l) = body.latency_ms {
            live.latency = Duration::from_millis(l);
        }
        if let Some(n) = body.box_commit_202 {
            live.box_commit_202 = n;
        }
        if let Some(n) = body.fluxer_max_size {
            live.fluxer_max_size = n;
        }
        if let Some(n) = body.max_file_size {
            live.max_file_size = n;
        }
    }
    Ok(Json(serde_json::json!({"ok": true})).into_response())
}

/// Drop every protocol's open upload sessions and the parts they hold on disk.
fn forget_sessions(state: &ServerState) {
    let mut n = 0u64;
    for (proto, ids) in [
        ("box", state.box_.clear_sessions()),
        ("cloudreve", state.cloudreve.clear_sessions()),
        ("fluxer", state.fluxer.clear_sessions()),
        ("virola", state.virola.clear_sessions()),
        ("dyson", state.dyson.clear_sessions()),
    ] {
        for id in ids {
            n += 1;
            let dir = state.store.root().join("sessions").join(proto).join(&id);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    state
        .counters
        .sessions_forgotten
        .fetch_add(n, Ordering::Relaxed);
    tracing::info!(sessions = n, "control: open upload sessions forgotten");
}
