//! The Fluxer CDN (`/fluxer/cdn`, no auth, as the real media proxy): attachment URLs and
//! the bytes behind them. A bad or unsatisfiable `Range` is ignored (200, whole body).

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use super::super::body::{content_type_for, serve_file, BadRange, FileAnswer};
use super::super::{AppState, ConnKill, ServerState};
use super::{fault_json, parse_snowflake, PROTO};

/// The media proxy's refusal of an unknown attachment: a bare 404.
pub(super) struct NotFound;

impl IntoResponse for NotFound {
    fn into_response(self) -> Response {
        (StatusCode::NOT_FOUND, "Not Found").into_response()
    }
}

/// Characters left as they are in a URL path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `{base}/fluxer/cdn/attachments/{cid}/{aid}/{filename}` with the name percent-encoded.
pub(super) fn attachment_url(state: &ServerState, cid: &str, aid: &str, name: &str) -> String {
    format!(
        "{}/fluxer/cdn/attachments/{cid}/{aid}/{}",
        state.base_url(),
        utf8_percent_encode(name, SEGMENT)
    )
}

/// CDN `GET /attachments/{cid}/{aid}/{filename}`: no auth; single ranges → 206, anything
/// else about `Range` is ignored (200, whole body).
pub(super) async fn download(
    State(state): State<AppState>,
    UrlPath((cid, aid, filename)): UrlPath<(String, String, String)>,
    Extension(kill): Extension<ConnKill>,
    headers: HeaderMap,
) -> Result<Response, NotFound> {
    let found = parse_snowflake(&aid)
        .and_then(|_| state.store.get(PROTO, &aid).ok().flatten())
        .filter(|o| o.parent == cid && o.name == filename && !o.is_dir);
    let (Some(o), Some(blob)) = (found.as_ref(), found.as_ref().and_then(|o| o.blob.clone()))
    else {
        return Err(NotFound);
    };
    if let Some(answer) = state.download_fault(&kill, fault_json).await {
        return Ok(answer);
    }
    let extra = [
        (
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"{}\"",
                utf8_percent_encode(&o.name, SEGMENT)
            ),
        ),
        (
            header::CACHE_CONTROL,
            "public, max-age=31536000".to_string(),
        ),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".to_string()),
    ];
    Ok(serve_file(
        &headers,
        FileAnswer {
            path: &state.store.blob_path(&blob),
            size: o.size,
            content_type: content_type_for(&o.name),
            extra: &extra,
            bad_range: BadRange::Ignore,
            drop_midway: false,
        },
        state.throttle.clone(),
    )
    .await)
}
