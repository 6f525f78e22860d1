//! The one HTTP layer every target client uses: a reqwest client (rustls, certificates
//! verified unless the target is configured `insecure`), the bearer token kept as a
//! [`Secret`], one raw attempt helper and the retry loop.
//!
//! Every request of every client goes through [`HttpClient::exchange`]: clients build a
//! [`Request`] (which cannot send itself), and `exchange` sends it once, reads the whole
//! answer, and sorts out what no protocol may treat differently — a refused TLS
//! certificate fails at once as `ErrorKind::Auth` (no retry can fix it), a connection
//! error or an answer cut short is a [`Exchange::Lost`] request. Protocols then classify
//! the [`Reply`] themselves where their errors hide in answers (Cloudreve's envelopes,
//! Box's 202, Fluxer's JSON `retry_after`), or take [`HttpClient::call`]'s default.
//!
//! Retry policy ([`RetryPolicy`]): 429, 5xx and lost requests are retried with exponential
//! backoff and full jitter, honouring `Retry-After` when the server sends it, until a total
//! time budget is spent. Retries are per request — per part for uploads — so one bad part
//! never re-sends a whole file.
//!
//! Outages ([`super::health`]): every attempt is reported to the target's one shared
//! [`Health`]. A request that cannot reach the server (the cause sorted out by
//! [`classify`]: refused, DNS, TLS, timeout) starts the outage clock, and every retry loop
//! of every layer stops where that clock runs out (`outage_seconds`), not at its own
//! budget: one bound per outage for a whole operation. While the target is down no request
//! goes out ([`HttpClient::exchange`] fails at once), but the probe's. Namespace reads
//! ([`super::health::quick`]) do not retry an unreachable server at all.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::health::{self, Cause, Health};
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

impl<T> Attempt<T> {
    /// Retry after backoff, for `reason`.
    pub fn again(reason: impl Into<String>) -> Self {
        Attempt::Retry {
            after: None,
            reason: reason.into(),
        }
    }
}

/// How long and how often one request is tried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total time one request may spend retrying.
    pub budget: Duration,
    /// The target's shared health: its outage clock ends the retries of an unreachable
    /// server, whatever is left of `budget`.
    pub health: Option<Arc<Health>>,
}

impl RetryPolicy {
    /// Run `attempt` until it is done, fails, or the retry budget is spent. `attempt` gets
    /// the attempt number (1-based).
    pub async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let start = Instant::now();
        let mut n = 0u32;
        loop {
            n += 1;
            match attempt(n).await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { after, reason } => {
                    let mut delay = after
                        .map(|d| d.min(MAX_DELAY))
                        .unwrap_or_else(|| backoff(n));
                    let outage = self.health.as_ref().filter(|h| h.unreachable_now());
                    if let Some(h) = outage {
                        // A namespace read or the probe does not wait for an unreachable
                        // server; anyone else waits no longer than the outage clock: the
                        // next attempt, at the deadline at the latest, is refused at once
                        // by the gate if the server is still away.
                        if health::is_quick() || health::is_probe() {
                            return Err(h.error());
                        }
                        if let Some(deadline) = h.deadline() {
                            delay = delay.min(deadline.saturating_duration_since(Instant::now()));
                        }
                    } else if health::is_probe() {
                        return Err(TargetError::new(
                            ErrorKind::Unavailable,
                            format!("{what}: {reason}"),
                        ));
                    }
                    if n >= MAX_ATTEMPTS || start.elapsed() + delay > self.budget {
                        return Err(match outage {
                            Some(h) => h.error(),
                            None => TargetError::new(
                                ErrorKind::Unavailable,
                                format!("{what}: gave up after {n} attempts: {reason}"),
                            ),
                        });
                    }
                    tracing::debug!(what, attempt = n, ?delay, reason, "retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// A request being built. It has no way to send itself: only [`HttpClient::exchange`]
/// sends, so every request meets the same connection-failure rules.
pub struct Request {
    rb: RequestBuilder,
    /// A header value that could not be built; the request fails instead of going without.
    bad: Option<String>,
}

impl Request {
    fn map(self, f: impl FnOnce(RequestBuilder) -> RequestBuilder) -> Self {
        Request {
            rb: f(self.rb),
            bad: self.bad,
        }
    }

    pub fn header<V>(mut self, name: HeaderName, value: V) -> Self
    where
        V: TryInto<HeaderValue>,
        V::Error: std::fmt::Display,
    {
        match value.try_into() {
            Ok(v) => self.map(|rb| rb.header(name, v)),
            Err(e) => {
                self.bad = Some(format!("header {name}: {e}"));
                self
            }
        }
    }

    pub fn query<T: Serialize + ?Sized>(self, query: &T) -> Self {
        self.map(|rb| rb.query(query))
    }

    pub fn json<T: Serialize + ?Sized>(self, json: &T) -> Self {
        self.map(|rb| rb.json(json))
    }

    pub fn body(self, body: impl Into<reqwest::Body>) -> Self {
        self.map(|rb| rb.body(body))
    }

    pub fn multipart(self, form: reqwest::multipart::Form) -> Self {
        self.map(|rb| rb.multipart(form))
    }
}

/// A whole answer: status, headers and body.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// 429 or 5xx: the server asks to be tried again (after `Retry-After` when given).
    pub fn busy<T>(&self) -> Option<Attempt<T>> {
        (self.status == StatusCode::TOO_MANY_REQUESTS || self.status.is_server_error()).then(|| {
            Attempt::Retry {
                after: retry_after(&self.headers),
                reason: format!("server answered {}", self.status),
            }
        })
    }

    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One attempt's outcome, before any protocol reads the answer.
pub enum Exchange {
    /// A whole answer, whatever its status.
    Answer(Reply),
    /// No whole answer (connection refused or reset, body cut short): the request may or
    /// may not have been processed. Worth another attempt.
    Lost(String),
    /// No attempt can succeed (a refused TLS certificate).
    Fatal(TargetError),
}

/// Shared HTTP client of one configured target.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    /// The same client with redirects handed back to the caller instead of followed (Box
    /// answers a download with a 302 to a signed link worth keeping). Built on first use:
    /// the other kinds never need it, and building a client loads the TLS roots.
    unfollowed: Arc<OnceLock<Result<reqwest::Client, String>>>,
    insecure: bool,
    token: Secret,
    /// The config name of the target, used in error messages.
    pub target_name: String,
    /// Total time one request may spend retrying.
    pub retry_budget: Duration,
    /// The target's health, shared by every clone of this client.
    health: Arc<Health>,
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
    /// The settings every client of a target shares.
    fn builder(insecure: bool) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .danger_accept_invalid_certs(insecure)
            .pool_max_idle_per_host(32)
            .user_agent(concat!("uploadfs/", env!("CARGO_PKG_VERSION")))
    }

    pub fn new(name: &str, cfg: &TargetConfig) -> anyhow::Result<HttpClient> {
        Ok(HttpClient {
            client: Self::builder(cfg.insecure).build()?,
            unfollowed: Arc::new(OnceLock::new()),
            insecure: cfg.insecure,
            token: cfg.token.clone(),
            target_name: name.to_string(),
            retry_budget: Duration::from_secs(cfg.retry_seconds),
            health: Health::new(name, Duration::from_secs(cfg.outage_seconds)),
        })
    }

    /// The target's health, shared by every request of this client.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The token, for protocols that put it somewhere other than `Authorization: Bearer`.
    pub fn token(&self) -> &Secret {
        &self.token
    }

    /// The retry policy of this target's requests.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            budget: self.retry_budget,
            health: Some(self.health.clone()),
        }
    }

    /// A request of any method: for protocols whose requests are not the common verbs
    /// (S3's HEAD) or come as a method and a signed URL. Like every request it is sent
    /// only by [`HttpClient::exchange`].
    pub fn request(&self, method: reqwest::Method, url: impl AsRef<str>) -> Request {
        Request {
            rb: self.client.request(method, url.as_ref()),
            bad: None,
        }
    }

    pub fn get(&self, url: impl AsRef<str>) -> Request {
        self.request(reqwest::Method::GET, url)
    }
    /// A GET whose redirect comes back as the answer (3xx with `Location`) instead of
    /// being followed.
    pub fn get_unfollowed(&self, url: impl AsRef<str>) -> Request {
        let built = self.unfollowed.get_or_init(|| {
            Self::builder(self.insecure)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())
        });
        match built {
            Ok(c) => Request {
                rb: c.get(url.as_ref()),
                bad: None,
            },
            // Never sent: `exchange` fails it with this message.
            Err(e) => Request {
                rb: self.client.get(url.as_ref()),
                bad: Some(format!("the client that does not follow redirects: {e}")),
            },
        }
    }
    pub fn post(&self, url: impl AsRef<str>) -> Request {
        self.request(reqwest::Method::POST, url)
    }
    pub fn put(&self, url: impl AsRef<str>) -> Request {
        self.request(reqwest::Method::PUT, url)
    }
    pub fn patch(&self, url: impl AsRef<str>) -> Request {
        self.request(reqwest::Method::PATCH, url)
    }
    pub fn delete(&self, url: impl AsRef<str>) -> Request {
        self.request(reqwest::Method::DELETE, url)
    }

    /// `Authorization: Bearer <token>` on a request. `bearer_auth` marks the header value
    /// sensitive, so HTTP-level debug and trace output never prints it.
    pub fn auth(&self, r: Request) -> Request {
        r.map(|rb| rb.bearer_auth(self.token.expose()))
    }

    /// Send a request once and read its whole answer: the one place a request goes out.
    pub async fn exchange(&self, r: Request) -> Exchange {
        if let Some(bad) = r.bad {
            return Exchange::Fatal(TargetError::protocol(format!(
                "building the request: {bad}"
            )));
        }
        if let Err(e) = self.health.gate() {
            return Exchange::Fatal(e);
        }
        let resp = match r.rb.send().await {
            Ok(resp) => resp,
            Err(e) => {
                let cause = classify(&e);
                // Where it could not connect: host and port only (a signed URL's query
                // holds secrets).
                let server = e
                    .url()
                    .map(|u| {
                        format!(
                            "{}:{}",
                            u.host_str().unwrap_or(""),
                            u.port_or_known_default().unwrap_or(0)
                        )
                    })
                    .unwrap_or_default();
                let x = connection_failed(e);
                if let (Some(cause), Exchange::Lost(_)) = (cause, &x) {
                    self.health.unreachable(cause, &server);
                }
                return x;
            }
        };
        let status = resp.status();
        let busy = (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
            .then(|| format!("server answered {status}"));
        self.health.answered(busy.as_deref());
        let headers = resp.headers().clone();
        let expected = resp.content_length();
        match resp.bytes().await {
            Ok(body) if expected.is_none_or(|n| n == body.len() as u64) => {
                Exchange::Answer(Reply {
                    status,
                    headers,
                    body,
                })
            }
            Ok(b) => Exchange::Lost(format!(
                "answer cut short: {} of {expected:?} bytes",
                b.len()
            )),
            Err(e) => Exchange::Lost(format!("answer cut short: {}", describe_reqwest(e))),
        }
    }

    /// Run `attempt` until it is done, fails, or the retry budget is spent.
    pub async fn retry<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        self.policy().run(what, |_| attempt()).await
    }

    /// Send a request built by `build` (called again for each attempt), retrying 429, 5xx
    /// and lost requests. Any other answer — success or a 4xx — is returned for the
    /// caller to interpret.
    pub async fn call<F>(&self, what: &str, build: F) -> Result<Reply>
    where
        F: Fn() -> Request,
    {
        self.retry(what, || async {
            match self.exchange(build()).await {
                Exchange::Answer(reply) => reply.busy().unwrap_or(Attempt::Done(reply)),
                Exchange::Lost(reason) => Attempt::again(reason),
                Exchange::Fatal(e) => Attempt::Fail(e),
            }
        })
        .await
    }
}

impl HttpClient {
    /// A ranged GET of `len` bytes at `offset` (`len > 0`), with the token when `authed`
    /// (a CDN or a signed URL needs none), cut to the range by [`ranged_body`]; `Err(reply)`
    /// for any other answer, for the protocol to map.
    pub async fn get_range(
        &self,
        what: &str,
        url: &str,
        offset: u64,
        len: u64,
        authed: bool,
    ) -> Result<std::result::Result<Bytes, Reply>> {
        let range = format!("bytes={}-{}", offset, offset.saturating_add(len - 1));
        let r = self
            .call(what, || {
                let r = self.get(url).header(reqwest::header::RANGE, range.as_str());
                if authed {
                    self.auth(r)
                } else {
                    r
                }
            })
            .await?;
        match ranged_body(what, &r, offset, len) {
            Some(read) => read.map(Ok),
            None => Ok(Err(r)),
        }
    }
}

/// A request that got no answer: lost (worth retrying), except a refused TLS certificate,
/// which no retry can fix.
fn connection_failed(e: reqwest::Error) -> Exchange {
    let text = describe_reqwest(e);
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("invalidcert")
        || lower.contains("unknownissuer")
    {
        return Exchange::Fatal(TargetError::new(
            ErrorKind::Auth,
            format!(
                "the server's TLS certificate was not accepted ({text}); for a self-signed \
                 server set `insecure = true` in the target's config or pass --insecure"
            ),
        ));
    }
    Exchange::Lost(format!("connection error: {text}"))
}

/// Why a request that got no answer could not reach the server at all, when that is the
/// reason (`None`: it reached the server and was cut off, or failed on our side).
pub fn classify(e: &reqwest::Error) -> Option<Cause> {
    // The causes only: the error's own text names the URL, whose host could say anything.
    let mut io_kind = None;
    let mut text = String::new();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            io_kind = Some(io.kind());
        }
        text.push_str(&inner.to_string().to_ascii_lowercase());
        text.push(' ');
        src = inner.source();
    }
    if io_kind == Some(std::io::ErrorKind::ConnectionRefused) || text.contains("refused") {
        return Some(Cause::Refused);
    }
    if text.contains("dns error") || text.contains("lookup address") {
        return Some(Cause::Dns);
    }
    if !e.is_connect() {
        return None;
    }
    if e.is_timeout() || io_kind == Some(std::io::ErrorKind::TimedOut) {
        Some(Cause::Timeout)
    } else if text.contains("tls") || text.contains("handshake") {
        Some(Cause::Tls)
    } else {
        Some(Cause::Connect)
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

/// The first byte of a `Content-Range: bytes A-B/N` answer.
pub fn range_start(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .parse()
        .ok()
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

/// A ranged GET's answer cut to the `len` bytes asked for at `offset`: 206 must start at
/// `offset`; a 200 is the whole file (the server ignored the range), sliced here; 416 means
/// the range starts at or past the end. `None` for any other status, for the protocol to
/// map.
pub fn ranged_body(what: &str, reply: &Reply, offset: u64, len: u64) -> Option<Result<Bytes>> {
    let body = &reply.body;
    Some(match reply.status {
        StatusCode::PARTIAL_CONTENT => match range_start(&reply.headers) {
            Some(start) if start == offset => Ok(body.slice(..body.len().min(len as usize))),
            start => Err(TargetError::protocol(format!(
                "{what}: asked for offset {offset}, got a range starting at {start:?}"
            ))),
        },
        StatusCode::OK => {
            let from = offset.min(body.len() as u64) as usize;
            let to = offset.saturating_add(len).min(body.len() as u64) as usize;
            Ok(body.slice(from..to))
        }
        StatusCode::RANGE_NOT_SATISFIABLE => Ok(Bytes::new()),
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A port nothing listens on: bound, then closed.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn an_unreachable_server_is_classified_and_ends_retries_at_the_outage_bound() {
        let mut cfg = TargetConfig::null();
        cfg.outage_seconds = 1;
        let http = HttpClient::new("t", &cfg).unwrap();
        let url = format!("http://127.0.0.1:{}/x", closed_port());
        let e = reqwest::get(&url).await.unwrap_err();
        assert_eq!(classify(&e), Some(Cause::Refused));
        let e = reqwest::get("http://no-such-host.invalid/x")
            .await
            .unwrap_err();
        assert_eq!(classify(&e), Some(Cause::Dns));

        // Retried until the outage clock runs out, then refused at once while down.
        let start = Instant::now();
        let e = http.call("get", || http.get(&url)).await.unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert!(e.message.contains("target t unreachable"), "{e}");
        assert!(e.message.contains("connection refused (127.0.0.1:"), "{e}");
        assert_eq!(http.health().phase(), health::Phase::Down);
        let start = Instant::now();
        assert!(http.call("get", || http.get(&url)).await.is_err());
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "down: no request goes out"
        );
    }
}
