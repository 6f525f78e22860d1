//! A fault-injecting HTTP/1.1 reverse proxy in front of a real S3 server, for the fault
//! tests: the client under test is pointed at the proxy, the proxy forwards to the server,
//! and for a seeded share of the requests it does something bad instead:
//! - [`Fault::InternalError`] / [`Fault::SlowDown`]: answers 500 / 503 with an S3 error
//!   document itself, without forwarding (the request body is read and dropped first, so
//!   the client sees the answer and not a broken pipe);
//! - [`Fault::DropAnswer`]: forwards the request, reads the server's whole answer — the
//!   server has acted — and closes the client's connection without answering. The nastiest
//!   case for non-idempotent steps (CreateMultipartUpload, CompleteMultipartUpload);
//! - [`Fault::ResetMidBody`]: for a request whose body is at least [`Faults::reset_min_body`]
//!   bytes, forwards half of the body, then cuts both connections (the server sees a
//!   truncated body, the client a reset while sending).
//!
//! What was injected is counted per fault and S3 operation ([`FaultProxy::stats`]), so a
//! test can show it was not run against a quiet network. The proxy keeps the client's
//! `Host` header when forwarding: S3 signatures (SigV4, presigned or not) cover `Host`,
//! and the client signed for the proxy's address. It runs on a thread and runtime of its
//! own (usable from async and blocking tests alike), takes at most [`MAX_CONNECTIONS`]
//! connections at once, gives each at most [`CONNECTION_LIFETIME`], and stops when
//! dropped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use hyper::{Method, Request, Response, StatusCode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Connections served at once; more wait to be accepted (the clients under test keep a
/// handful of parts and lookups in flight).
pub const MAX_CONNECTIONS: usize = 64;
/// Longest life of one client connection (a stuck exchange ends instead of hanging a test).
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Longest wait for the server's answer to one forwarded request.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);
/// Rates are kept in parts per million (an atomic integer the test can change live).
const PPM: u32 = 1_000_000;

/// One kind of injected failure (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    InternalError,
    SlowDown,
    DropAnswer,
    ResetMidBody,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::InternalError,
        Fault::SlowDown,
        Fault::DropAnswer,
        Fault::ResetMidBody,
    ];
}

/// What the proxy injects.
#[derive(Debug, Clone)]
pub struct Faults {
    /// Share of requests that get a fault, 0.0..=1.0.
    pub rate: f64,
    /// Seed of the draws (the order requests arrive in still varies between runs).
    pub seed: u64,
    /// Kinds to choose from: [`Fault::ResetMidBody`] for the first fault on a large body
    /// and half of the later ones (and only there), the others uniformly.
    pub kinds: Vec<Fault>,
    /// Smallest request body that may be cut in the middle.
    pub reset_min_body: u64,
    /// Only requests of these S3 operations ([`operation`]) get faults; all when empty.
    pub ops: Vec<&'static str>,
}

impl Faults {
    /// Every kind at `rate`, seeded with `seed`; bodies of 1 MiB and more may be cut.
    pub fn all(rate: f64, seed: u64) -> Faults {
        Faults {
            rate,
            seed,
            kinds: Fault::ALL.to_vec(),
            reset_min_body: 1 << 20,
            ops: Vec::new(),
        }
    }

    /// Only `kind`, on requests of the operations `ops` only, at `rate`.
    pub fn only(kind: Fault, ops: &[&'static str], rate: f64, seed: u64) -> Faults {
        Faults {
            rate,
            seed,
            kinds: vec![kind],
            reset_min_body: 1 << 20,
            ops: ops.to_vec(),
        }
    }
}

/// What the proxy saw and did so far.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Requests received from clients.
    pub requests: u64,
    /// Requests received, by S3 operation.
    pub by_op: BTreeMap<&'static str, u64>,
    /// Faults injected, by kind and S3 operation.
    pub faults: BTreeMap<(Fault, &'static str), u64>,
}

impl Stats {
    /// Faults of `kind` injected, all operations.
    pub fn of(&self, kind: Fault) -> u64 {
        self.faults
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    /// Faults injected, all kinds.
    pub fn total(&self) -> u64 {
        self.faults.values().sum()
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} requests, {} faults (", self.requests, self.total())?;
        for (i, kind) in Fault::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{kind:?} {}", self.of(*kind))?;
        }
        write!(f, ")\n  requests:")?;
        for (op, n) in &self.by_op {
            write!(f, " {op} {n}")?;
        }
        for ((kind, op), n) in &self.faults {
            write!(f, "\n  {kind:?} on {op}: {n}")?;
        }
        Ok(())
    }
}

/// State shared by the proxy's connections.
struct Shared {
    upstream: String,
    client: reqwest::Client,
    rate_ppm: AtomicU32,
    kinds: Vec<Fault>,
    reset_min_body: u64,
    ops: Vec<&'static str>,
    /// A body was cut already (see [`Shared::draw`]).
    reset_seen: std::sync::atomic::AtomicBool,
    rng: Mutex<StdRng>,
    requests: AtomicU64,
    stats: Mutex<Stats>,
}

/// The proxy's refusal to answer: hyper closes the connection without writing anything.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

type Body = BoxBody<Bytes, std::io::Error>;

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, to give the client as its S3 endpoint.
    pub endpoint: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// A proxy on a free loopback port forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy address"));
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(UPSTREAM_TIMEOUT)
            .build()
            .expect("proxy client");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client,
            rate_ppm: AtomicU32::new(to_ppm(faults.rate)),
            kinds: faults.kinds.clone(),
            reset_min_body: faults.reset_min_body,
            ops: faults.ops.clone(),
            reset_seen: std::sync::atomic::AtomicBool::new(false),
            rng: Mutex::new(StdRng::seed_from_u64(faults.seed)),
            requests: AtomicU64::new(0),
            stats: Mutex::new(Stats::default()),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let sh = shared.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("fault-proxy")
                    .enable_all()
                    .build()
                    .expect("proxy runtime");
                rt.block_on(serve(listener, sh, stopped));
                rt.shutdown_timeout(Duration::from_secs(2));
            })
            .expect("proxy thread");
        FaultProxy {
            endpoint,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Change the share of requests that get a fault (0.0 turns injection off).
    pub fn set_rate(&self, rate: f64) {
        self.shared.rate_ppm.store(to_ppm(rate), Ordering::Relaxed);
    }

    /// What was seen and injected so far.
    pub fn stats(&self) -> Stats {
        let mut s = self
            .shared
            .stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        s.requests = self.shared.requests.load(Ordering::Relaxed);
        s
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn to_ppm(rate: f64) -> u32 {
    (rate.clamp(0.0, 1.0) * PPM as f64).round() as u32
}

/// Accept connections until told to stop; each is served on a task of its own.
async fn serve(
    listener: std::net::TcpListener,
    sh: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("proxy listener");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = &mut stopped => return,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        let sock = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => sock,
                Err(_) => continue,
            },
        };
        let sh = sh.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req| handle(sh.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(sock), svc);
            // A connection ends with an error when a fault drops it: that is the point.
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
        });
    }
}

impl Shared {
    /// The fault for a request of `op` with a body of `len` bytes, if it gets one.
    fn draw(&self, op: &str, len: Option<u64>) -> Option<Fault> {
        if !self.ops.is_empty() && !self.ops.contains(&op) {
            return None;
        }
        let rate = self.rate_ppm.load(Ordering::Relaxed);
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        if rng.gen_range(0..PPM) >= rate {
            return None;
        }
        let big = len.is_some_and(|n| n >= self.reset_min_body);
        // Few requests are large (the parts and one-part objects), so a large one's fault
        // is a cut body half of the time, and always the first time: every run sees some.
        if big
            && self.kinds.contains(&Fault::ResetMidBody)
            && (!self.reset_seen.swap(true, Ordering::Relaxed) || rng.gen_bool(0.5))
        {
            return Some(Fault::ResetMidBody);
        }
        let choices: Vec<Fault> = self
            .kinds
            .iter()
            .copied()
            .filter(|k| *k != Fault::ResetMidBody)
            .collect();
        if choices.is_empty() {
            return None;
        }
        Some(choices[rng.gen_range(0..choices.len())])
    }

    fn count(&self, kind: Fault, op: &'static str) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        *s.faults.entry((kind, op)).or_default() += 1;
    }
}

/// One client request: forwarded, or failed as drawn.
async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Dropped> {
    let op = operation(req.method(), req.uri(), req.headers());
    sh.requests.fetch_add(1, Ordering::Relaxed);
    {
        let mut s = sh.stats.lock().unwrap_or_else(|e| e.into_inner());
        *s.by_op.entry(op).or_default() += 1;
    }
    let len = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let fault = sh.draw(op, len);
    if let Some(kind @ (Fault::InternalError | Fault::SlowDown)) = fault {
        let path = req.uri().path().to_string();
        // Read the body out so the client gets to read this answer.
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            if frame.is_err() {
                break;
            }
        }
        sh.count(kind, op);
        return Ok(error_answer(kind, &path));
    }
    let (parts, body) = req.into_parts();
    let cut_at = match fault {
        Some(Fault::ResetMidBody) => len.map(|n| n / 2),
        _ => None,
    };
    let url = format!(
        "{}{}",
        sh.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut rb = sh.client.request(parts.method.clone(), url);
    for (k, v) in &parts.headers {
        if !hop_by_hop(k) {
            rb = rb.header(k, v);
        }
    }
    let chunked = parts
        .headers
        .get(TRANSFER_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if len.is_some_and(|n| n > 0) || chunked {
        // Streamed on with the client's Content-Length (the server needs it on PUT).
        rb = rb.body(reqwest::Body::wrap_stream(cut(
            body.into_data_stream(),
            cut_at,
        )));
    }
    let sent = rb.send().await;
    if fault == Some(Fault::ResetMidBody) {
        // The server got half a body (and may have answered it); the client gets a reset.
        sh.count(Fault::ResetMidBody, op);
        return Err(Dropped);
    }
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            let text = format!("fault proxy: upstream failed: {}", e.without_url());
            let mut r = Response::new(full(text));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            return Ok(r);
        }
    };
    if fault == Some(Fault::DropAnswer) {
        // Let the server finish: it has acted, only its answer is lost.
        let _ = resp.bytes().await;
        sh.count(Fault::DropAnswer, op);
        return Err(Dropped);
    }
    let mut answer = Response::builder().status(resp.status());
    for (k, v) in resp.headers() {
        if !hop_by_hop(k) {
            answer = answer.header(k, v);
        }
    }
    let body = StreamBody::new(
        resp.bytes_stream()
            .map_ok(Frame::data)
            .map_err(std::io::Error::other),
    );
    answer.body(BodyExt::boxed(body)).map_err(|_| Dropped)
}

/// The body stream, failing after `at` bytes when `at` is given.
fn cut(
    body: impl Stream<Item = Result<Bytes, hyper::Error>> + Send + 'static,
    at: Option<u64>,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let mut left = at;
    body.map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        match left.as_mut() {
            None => Ok(chunk),
            Some(n) if (chunk.len() as u64) < *n => {
                *n -= chunk.len() as u64;
                Ok(chunk)
            }
            Some(_) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "fault proxy: request body cut",
            )),
        }
    })
}

fn full(text: impl Into<Bytes>) -> Body {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An S3 error answer of `kind`, as the server would send it.
fn error_answer(kind: Fault, path: &str) -> Response<Body> {
    let (status, code, message) = match kind {
        Fault::SlowDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        ),
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
    };
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><Resource>{path}</Resource>\
         <RequestId>fault-proxy</RequestId></Error>"
    );
    let mut r = Response::new(full(xml));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    r
}

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The S3 operation a request is, for the counters.
pub fn operation(method: &Method, uri: &hyper::Uri, headers: &HeaderMap) -> &'static str {
    let query = uri.query().unwrap_or("");
    let has = |name: &str| {
        query
            .split('&')
            .any(|kv| kv.split('=').next() == Some(name))
    };
    let copy = headers.contains_key("x-amz-copy-source");
    match *method {
        Method::POST if has("uploads") => "CreateMultipartUpload",
        Method::POST if has("uploadId") => "CompleteMultipartUpload",
        Method::POST if has("delete") => "DeleteObjects",
        Method::PUT if has("partNumber") && copy => "UploadPartCopy",
        Method::PUT if has("partNumber") => "UploadPart",
        Method::PUT if copy => "CopyObject",
        Method::PUT => "PutObject",
        Method::DELETE if has("uploadId") => "AbortMultipartUpload",
        Method::DELETE => "DeleteObject",
        Method::GET if has("uploads") => "ListMultipartUploads",
        Method::GET if has("uploadId") => "ListParts",
        Method::GET if has("list-type") => "ListObjectsV2",
        Method::GET => "GetObject",
        Method::HEAD => "HeadObject",
        _ => "other",
    }
}
