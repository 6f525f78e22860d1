//! The one HTTP layer every target client uses: a reqwest client (rustls, certificates
//! verified unless the target is configured `insecure`), the bearer token kept as a
//! [`Secret`], and retries.
//!
//! Retry policy: 429, 5xx and connection errors are retried with exponential backoff and
//! full jitter, honouring `Retry-After` when the server sends it, until a total time
//! budget is spent. Retries are per request — per part for uploads — so one bad part never
//! re-sends a whole file. Protocols whose errors hide inside HTTP 200 (Cloudreve) classify
//! answers themselves with [`HttpClient::retry`] and [`Attempt`].

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use super::{ErrorKind, RemoteFile, Result, TargetError};
use crate::config::{Secret, TargetConfig};

/// First backoff delay; doubles each attempt up to [`MAX_DELAY`].
const BASE_DELAY: Duration = Duration::from_millis(100);
/// Longest single wait between attempts (a larger `Retry-After` is capped to this).
const MAX_DELAY: Duration = Duration::from_secs(10);
/// Attempts per request before giving up, whatever the time budget says.
const MAX_ATTEMPTS: u32 = 12;
/// Connect timeout; loopback and real services both answer far faster.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Whole-request timeout for one attempt without progress-sensitive streaming.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// What one attempt decided.
pub enum Attempt<T> {
    Done(T),
    /// Try again after the given delay (or backoff when `None`).
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    Fail(TargetError),
}

/// Shared HTTP client of one configured target.
#[derive(Clone)]
pub struct HttpClient {
    pub client: reqwest::Client,
    token: Secret,
    /// The config name of the target, used in error messages.
    pub target_name: String,
    /// Total time one request may spend retrying.
    pub retry_budget: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("target_name", &self.target_name)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    pub fn new(name: &str, cfg: &TargetConfig) -> anyhow::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .danger_accept_invalid_certs(cfg.insecure)
            .pool_max_idle_per_host(32)
            .user_agent(concat!("uploadfs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpClient {
            client,
            token: cfg.token.clone(),
            target_name: name.to_string(),
            retry_budget: Duration::from_secs(cfg.retry_seconds),
        })
    }

    /// The token, for protocols that put it somewhere other than `Authorization: Bearer`.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// `Authorization: Bearer <token>` on a request. `bearer_auth` marks the header value
    /// sensitive, so HTTP-level debug and trace output never prints it.
    pub fn auth(&self, rb: RequestBuilder) -> RequestBuilder {
        rb.bearer_auth(self.token.expose())
    }

    /// Run `attempt` until it is done, fails, or the retry budget is spent.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let start = Instant::now();
        let mut n = 0u32;
        loop {
            n += 1;
            match attempt().await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { after, reason } => {
                    let delay = after
                        .map(|d| d.min(MAX_DELAY))
                        .unwrap_or_else(|| backoff(n));
                    if n >= MAX_ATTEMPTS || start.elapsed() + delay > self.retry_budget {
                        return Err(TargetError::new(
                            ErrorKind::Unavailable,
                            format!("{what}: gave up after {n} attempts: {reason}"),
                        ));
                    }
                    tracing::debug!(what, attempt = n, ?delay, reason, "retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Send a request built by `build` (called again for each attempt), retrying 429, 5xx
    /// and connection errors. Any other answer — success or a 4xx — is returned for the
    /// caller to interpret.
    pub async fn send<F>(&self, what: &str, build: F) -> Result<Response>
    where
        F: Fn() -> RequestBuilder,
    {
        self.retry(what, || async {
            match build().send().await {
                Ok(resp) => classify(resp),
                Err(e) => connection_failed(e),
            }
        })
        .await
    }

    /// [`send`](Self::send), then read the body as bytes; a body cut short is retried too.
    pub async fn send_bytes<F>(
        &self,
        what: &str,
        build: F,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, bytes::Bytes)>
    where
        F: Fn() -> RequestBuilder,
    {
        self.retry(what, || async {
            let resp = match build().send().await {
                Ok(resp) => resp,
                Err(e) => return connection_failed(e),
            };
            let resp = match classify(resp) {
                Attempt::Done(r) => r,
                Attempt::Retry { after, reason } => return Attempt::Retry { after, reason },
                Attempt::Fail(e) => return Attempt::Fail(e),
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let expected = resp.content_length();
            match resp.bytes().await {
                Ok(b) if expected.is_none_or(|n| n == b.len() as u64) => {
                    Attempt::Done((status, headers, b))
                }
                Ok(b) => Attempt::Retry {
                    after: None,
                    reason: format!("body cut short: {} of {:?} bytes", b.len(), expected),
                },
                Err(e) => Attempt::Retry {
                    after: None,
                    reason: format!("body cut short: {}", describe_reqwest(e)),
                },
            }
        })
        .await
    }
}

/// A request that got no answer: retried, except a refused TLS certificate, which no
/// retry can fix.
pub fn connection_failed<T>(e: reqwest::Error) -> Attempt<T> {
    let text = describe_reqwest(e);
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("invalidcert")
        || lower.contains("unknownissuer")
    {
        return Attempt::Fail(TargetError::new(
            ErrorKind::Auth,
            format!(
                "the server's TLS certificate was not accepted ({text}); for a self-signed \
                 server set `insecure = true` in the target's config or pass --insecure"
            ),
        ));
    }
    Attempt::Retry {
        after: None,
        reason: format!("connection error: {text}"),
    }
}

/// Retry 429 and 5xx; pass everything else through.
fn classify(resp: Response) -> Attempt<Response> {
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Attempt::Retry {
            after: retry_after(resp.headers()),
            reason: format!("server answered {status}"),
        }
    } else {
        Attempt::Done(resp)
    }
}

/// Exponential backoff with full jitter for attempt `n` (1-based).
pub fn backoff(n: u32) -> Duration {
    let cap = BASE_DELAY
        .saturating_mul(1u32 << n.min(16).saturating_sub(1))
        .min(MAX_DELAY);
    let ms = rand::thread_rng().gen_range(cap.as_millis() as u64 / 2..=cap.as_millis() as u64);
    Duration::from_millis(ms.max(1))
}

/// `Retry-After` as seconds (integer or fractional); HTTP dates are not used by our services.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = v.trim().parse().ok()?;
    if secs.is_finite() && secs >= 0.0 {
        Some(Duration::from_secs_f64(secs))
    } else {
        None
    }
}

/// A reqwest error without its URL (signed URLs carry secrets in the query).
pub fn describe_reqwest(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Map a non-success HTTP status to an error category, for protocols with ordinary
/// status codes. `body` is a short excerpt of the answer, for the message.
pub fn status_error(what: &str, status: StatusCode, body: &str) -> TargetError {
    let kind = match status.as_u16() {
        401 | 403 => ErrorKind::Auth,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        413 => ErrorKind::TooLarge,
        507 => ErrorKind::Quota,
        _ => ErrorKind::Protocol,
    };
    let hint = if kind == ErrorKind::Auth {
        " — the token was refused; renew it"
    } else {
        ""
    };
    TargetError::new(
        kind,
        format!("{what}: server answered {status}: {}{hint}", excerpt(body)),
    )
}

/// At most 200 characters of a body, on one line, for error messages.
pub fn excerpt(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line.trim().to_string()
}

/// Parse a JSON body, mapping garbage (HTML error pages, truncated JSON) to a protocol
/// error that says what was expected.
pub fn parse_json<T: DeserializeOwned>(what: &str, body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        TargetError::protocol(format!(
            "{what}: the server's answer is not the expected JSON ({e}): {}",
            excerpt(&String::from_utf8_lossy(body))
        ))
    })
}

/// Read a response body and parse it as JSON.
pub async fn json<T: DeserializeOwned>(what: &str, resp: Response) -> Result<T> {
    let body = resp.bytes().await.map_err(|e| {
        TargetError::new(
            ErrorKind::Unavailable,
            format!("{what}: reading the answer failed: {}", describe_reqwest(e)),
        )
    })?;
    parse_json(what, &body)
}

/// Check what a read of `len` bytes at `offset` of `file` returned before handing it on:
/// exactly as many bytes as the file's size says are there (a short or long answer is a
/// broken server or proxy, never data to pass off as complete), and for a whole-file read
/// the digest the target reported for the file, when it reported one.
pub fn check_read(
    what: &str,
    file: &RemoteFile,
    offset: u64,
    len: u64,
    data: bytes::Bytes,
) -> Result<bytes::Bytes> {
    let expected = len.min(file.size.saturating_sub(offset));
    if data.len() as u64 != expected {
        return Err(TargetError::protocol(format!(
            "{what}: the server sent {} bytes where {expected} were asked for at offset \
             {offset} of a {}-byte file",
            data.len(),
            file.size
        )));
    }
    if offset == 0 && expected == file.size && expected > 0 {
        use sha1::Digest as _;
        let mismatch = if let Some(h) = &file.sha1 {
            (!h.eq_ignore_ascii_case(&hex::encode(sha1::Sha1::digest(&data)))).then_some("SHA-1")
        } else if let Some(h) = &file.md5 {
            (!h.eq_ignore_ascii_case(&hex::encode(md5::Md5::digest(&data)))).then_some("MD5")
        } else {
            None
        };
        if let Some(algo) = mismatch {
            return Err(TargetError::protocol(format!(
                "{what}: the downloaded data does not match the file's {algo} digest \
                 (corrupted on the way or a different file)"
            )));
        }
    }
    Ok(data)
}
