//! `uploadfs serve`: one axum server hosting all five upload protocols under fixed
//! prefixes (`/box/2.0`, `/box/upload/2.0`, `/cloudreve/api/v4`, `/fluxer/v1` and the CDN
//! `/fluxer/cdn`, `/virola/api/v1`, `/dyson/api`), as strict as the real services. The
//! emulator keeps its own rules: it never uses the client code (`crate::remote`).
//!
//! Shared pieces live here: the options, the state every protocol handler gets
//! ([`ServerState`]), fault injection hooks ([`Faulted`]), the router and the accept loop. The test
//! endpoints under `/_uploadfs/` (introspection of what really landed, run-time control
//! of faults) and the bad-answer layer live in `control`.
//! Beside them: [`auth`] (the credentials a request carries), [`body`] (bodies to disk,
//! hashing, ranged downloads), [`names`] (the file-name rules), [`store`] (committed
//! objects), [`faults`] (fault and shaping settings).
//!
//! One handler idiom for every protocol: a handler takes the [`auth::Credentials`]
//! extractor, applies its protocol's caller check, and returns `Result<Response, E>`, where
//! `E` is the protocol's error type (`BoxError`, Cloudreve's `ApiError`, Fluxer's
//! `ApiError`, `VirolaError`, `DysonError`) whose `IntoResponse` writes that protocol's
//! exact error body and status; store and I/O failures convert into it with `?`. A handler
//! that takes file bytes and refuses them before reading them reads the rest first
//! ([`body::drain`], up to [`body::DRAIN_LIMIT`]), as a real server's front does: hyper
//! would otherwise close the connection and a client still sending would see a broken pipe
//! instead of the answer.
//!
//! Connections are served by our own accept loop instead of `axum::serve` so that a
//! handler can really drop its connection ([`ConnKill`]): that is how "connection reset"
//! faults reach clients as they would on a real network.

pub mod auth;
pub mod body;
pub mod box_;
pub mod cloudreve;
mod control;
pub mod dyson;
pub mod faults;
pub mod fluxer;
pub mod names;
pub mod store;
pub mod virola;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;

use auth::Credentials;
use faults::{BadAnswers, Counters, Fault, FaultOp, Faults, Throttle};
use store::Store;

/// The channel id of the one Fluxer channel the server hosts.
pub const FLUXER_CHANNEL_ID: &str = "1000000000000000001";
/// The Virola room and message that hold uploaded attachments.
pub const VIROLA_ROOM_ID: u64 = 6;
pub const VIROLA_MESSAGE_ID: u64 = 1234567;
/// What a client config needs besides the URL and token: the ids of what the server
/// hosts (in `serve --help` and on the startup line).
fn served_ids() -> String {
    format!(
        "fluxer: channel_id = \"{FLUXER_CHANNEL_ID}\"; virola: room_id = {VIROLA_ROOM_ID}, \
         message_id = {VIROLA_MESSAGE_ID}; box: folder_id = \"0\"; cloudreve: root = \
         \"cloudreve://my\""
    )
}

/// Default token when `--token` is not given.
pub const DEFAULT_TOKEN: &str = "uploadfs-dev-token";

/// Options of `uploadfs serve` (also used in-process by the `local` target and tests).
/// `Debug` leaves the token out.
#[derive(Clone, clap::Args)]
#[command(after_help = format!("Client config ids of the hosted targets: {}", served_ids()))]
pub struct ServeOptions {
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where stored files live (survives restarts).
    #[arg(long, default_value = "./uploadfs-data")]
    pub data: PathBuf,
    /// The token every protocol requires.
    #[arg(long, env = "UPLOADFS_SERVE_TOKEN", default_value = DEFAULT_TOKEN, hide_env_values = true)]
    pub token: String,
    /// Probability that a part/chunk upload or a download fails (503, 429, dropped connection).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Seed of the fault injection random source.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Delay added to every request, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Server-wide bandwidth cap in bytes per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub bandwidth: u64,
    /// How many times each Box commit answers 202 + Retry-After before succeeding.
    #[arg(long, default_value_t = 0)]
    pub box_commit_202: u32,
    /// Fluxer account upload limit in bytes (non-premium default: 25 MiB).
    #[arg(long, default_value_t = 25 * 1024 * 1024)]
    pub fluxer_max_size: u64,
    /// Lifetime of a Fluxer chunked-upload session in seconds, counted from creation.
    #[arg(long, default_value_t = 3600)]
    pub fluxer_session_ttl: u64,
    /// Largest file any protocol accepts, bytes (each answers in its own error shape).
    #[arg(long, default_value_t = 64 * 1024 * 1024 * 1024)]
    pub max_file_size: u64,
    /// Cloudreve storage policy chunk size in bytes (default policy: 25 MiB; 0 = one chunk).
    #[arg(long, default_value_t = 25 * 1024 * 1024)]
    pub cloudreve_chunk_size: u64,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("listen", &self.listen)
            .field("data", &self.data)
            .field("token", &"***")
            .field("fail_rate", &self.fail_rate)
            .field("seed", &self.seed)
            .field("latency_ms", &self.latency_ms)
            .field("bandwidth", &self.bandwidth)
            .field("box_commit_202", &self.box_commit_202)
            .field("fluxer_max_size", &self.fluxer_max_size)
            .field("fluxer_session_ttl", &self.fluxer_session_ttl)
            .field("max_file_size", &self.max_file_size)
            .field("cloudreve_chunk_size", &self.cloudreve_chunk_size)
            .finish()
    }
}

impl ServeOptions {
    /// Options for an in-process server on an ephemeral loopback port.
    pub fn ephemeral(data: PathBuf, token: &str) -> ServeOptions {
        ServeOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data,
            token: token.to_string(),
            fail_rate: 0.0,
            seed: 1,
            latency_ms: 0,
            bandwidth: 0,
            box_commit_202: 0,
            fluxer_max_size: 25 * 1024 * 1024,
            fluxer_session_ttl: 3600,
            max_file_size: 64 * 1024 * 1024 * 1024,
            cloudreve_chunk_size: 25 * 1024 * 1024,
        }
    }
}

/// Run-time adjustable settings. `Debug` leaves the token out.
#[derive(Clone)]
pub struct Live {
    pub token: String,
    pub latency: Duration,
    pub box_commit_202: u32,
    pub fluxer_max_size: u64,
    pub max_file_size: u64,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("token", &"***")
            .field("latency", &self.latency)
            .field("box_commit_202", &self.box_commit_202)
            .field("fluxer_max_size", &self.fluxer_max_size)
            .field("max_file_size", &self.max_file_size)
            .finish()
    }
}

/// State shared by every handler.
pub struct ServerState {
    pub opts: ServeOptions,
    pub live: Mutex<Live>,
    pub store: Store,
    pub faults: Faults,
    pub throttle: Arc<Throttle>,
    pub counters: Counters,
    /// The bad-answer rule set through the control endpoint.
    pub bad_answers: BadAnswers,
    /// The address the server listens on (for absolute URLs in answers).
    pub base_url: Mutex<String>,
    pub box_: box_::ProtoState,
    pub cloudreve: cloudreve::ProtoState,
    pub fluxer: fluxer::ProtoState,
    pub virola: virola::ProtoState,
    pub dyson: dyson::ProtoState,
}

pub type AppState = Arc<ServerState>;

impl ServerState {
    pub fn live(&self) -> Live {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// True when `value` is the server's token.
    pub fn token_matches(&self, value: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        !value.is_empty() && constant_time_eq(value.as_bytes(), live.token.as_bytes())
    }

    /// The common rule (Box, Cloudreve, the test endpoints): `Authorization: Bearer
    /// <token>` (or the bare token) is present and right.
    pub fn bearer_ok(&self, creds: &Credentials) -> bool {
        creds
            .bearer_or_bare()
            .is_some_and(|t| self.token_matches(t))
    }

    /// Roll for a fault on a request of kind `op` (counted when one is injected).
    pub fn fault(&self, op: FaultOp) -> Option<Fault> {
        let f = self.faults.roll(op);
        if f.is_some() {
            self.counters
                .faults_injected
                .fetch_add(1, Ordering::Relaxed);
        }
        f
    }

    /// Roll for a fault on a request of kind `op` and say what the handler must do;
    /// `body` gives the protocol's own error JSON of an injected 429 or 503.
    pub fn roll(&self, op: FaultOp, body: impl FnOnce(Fault) -> serde_json::Value) -> Faulted {
        match self.fault(op) {
            None => Faulted::None,
            Some(Fault::DropBefore) => Faulted::DropNow,
            Some(Fault::DropAfter) => Faulted::DropAfter,
            Some(f) => Faulted::Answer(fault_status(f, body(f))),
        }
    }

    /// Count `n` bytes of upload bodies received (introspection `bytes_received`).
    pub fn received(&self, n: u64) {
        self.counters.bytes_received.fetch_add(n, Ordering::Relaxed);
    }

    /// Roll for a fault on an upload and settle it (see [`Faulted::before_upload`]).
    pub async fn upload_fault(
        &self,
        kill: &ConnKill,
        body: impl FnOnce(Fault) -> serde_json::Value,
    ) -> Result<bool, Response> {
        self.roll(FaultOp::Upload, body).before_upload(kill).await
    }

    /// Roll for a fault on a download and settle it (see [`Faulted::before_download`]).
    pub async fn download_fault(
        &self,
        kill: &ConnKill,
        body: impl FnOnce(Fault) -> serde_json::Value,
    ) -> Option<Response> {
        self.roll(FaultOp::Download, body)
            .before_download(kill)
            .await
    }

    /// The server's own base URL, e.g. `http://127.0.0.1:8080`.
    pub fn base_url(&self) -> String {
        self.base_url
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The largest upload accepted, bytes.
    pub fn max_file_size(&self) -> u64 {
        self.live().max_file_size
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Lets a handler close its own connection without answering (injected resets).
#[derive(Clone)]
pub struct ConnKill(CancellationToken);

impl ConnKill {
    /// Close the connection now. The returned future never completes.
    pub async fn drop_connection(&self) -> Response {
        self.0.cancel();
        std::future::pending::<()>().await;
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

/// What an injected fault leaves a handler to do.
pub enum Faulted {
    /// Nothing was injected.
    None,
    /// Answer this now (a 429 or 503 in the protocol's error shape).
    Answer(Response),
    /// Close the connection now, without answering.
    DropNow,
    /// Do the work, then close the connection without answering.
    DropAfter,
}

impl Faulted {
    /// Settle an upload's fault before its work: `Err(answer)` ends the request now (a
    /// 429 or 503, or the connection dropped); `Ok(true)`: do the work, then drop the
    /// connection without answering.
    pub async fn before_upload(self, kill: &ConnKill) -> Result<bool, Response> {
        match self {
            Faulted::None => Ok(false),
            Faulted::DropAfter => Ok(true),
            Faulted::Answer(r) => Err(r),
            Faulted::DropNow => Err(kill.drop_connection().await),
        }
    }

    /// The answer that replaces a download, if any: a 429 or 503, or the connection
    /// dropped (a download has nothing to do "before" dropping).
    pub async fn before_download(self, kill: &ConnKill) -> Option<Response> {
        match self {
            Faulted::None => None,
            Faulted::Answer(r) => Some(r),
            Faulted::DropNow | Faulted::DropAfter => Some(kill.drop_connection().await),
        }
    }
}

/// A 429/503 answer for an injected fault (`Retry-After: 0`); `body` is the protocol's
/// own error JSON. A dropped connection has no answer: 503 is only a fallback there.
fn fault_status(fault: Fault, body: serde_json::Value) -> Response {
    let status = match fault {
        Fault::TooMany => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, [(header::RETRY_AFTER, "0")], Json(body)).into_response()
}

/// Build the router of all protocols plus the test endpoints.
pub fn router(state: AppState) -> Router {
    Router::new()
        .nest("/box/2.0", box_::api_router())
        .nest("/box/upload/2.0", box_::upload_router())
        .nest("/cloudreve/api/v4", cloudreve::router())
        .nest("/fluxer/v1", fluxer::router())
        .nest("/fluxer/cdn", fluxer::cdn_router())
        .nest("/virola/api/v1", virola::router())
        .nest("/dyson/api", dyson::router())
        // The public Dyson gateway maps /drive/{**} onto /api/{**}.
        .nest("/dyson/drive", dyson::router())
        .route("/_uploadfs/state", get(control::introspect))
        .route("/_uploadfs/control", post(control::control))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            control::bad_answer_layer,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            common_layer,
        ))
        .with_state(state)
}

/// Counts requests and applies the configured latency.
async fn common_layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    state.counters.requests.fetch_add(1, Ordering::Relaxed);
    let latency = state.live().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    next.run(req).await
}

/// A running server: its address, and a handle to stop it.
pub struct RunningServer {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// `http://ADDR`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stop accepting connections and end open ones.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open data directory: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Open the store, bind, and serve in the background on the current tokio runtime.
pub async fn start(opts: ServeOptions) -> Result<RunningServer, ServeError> {
    let store = Store::open(&opts.data)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    let state = Arc::new(ServerState {
        live: Mutex::new(Live {
            token: opts.token.clone(),
            latency: Duration::from_millis(opts.latency_ms),
            box_commit_202: opts.box_commit_202,
            fluxer_max_size: opts.fluxer_max_size,
            max_file_size: opts.max_file_size,
        }),
        faults: Faults::new(opts.fail_rate, opts.seed),
        throttle: Arc::new(Throttle::new(opts.bandwidth)),
        counters: Counters::default(),
        bad_answers: BadAnswers::default(),
        base_url: Mutex::new(format!("http://{addr}")),
        store,
        box_: Default::default(),
        cloudreve: Default::default(),
        fluxer: Default::default(),
        virola: Default::default(),
        dyson: Default::default(),
        opts,
    });
    let app = router(state.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(accept_loop(listener, app, shutdown.clone()));
    tracing::info!(%addr, "uploadfs serve listening");
    Ok(RunningServer {
        addr,
        state,
        shutdown,
        task,
    })
}

async fn accept_loop(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) {
    use hyper_util::rt::TokioIo;
    use tower::ServiceExt;
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let kill = CancellationToken::new();
        let kill_ext = ConnKill(kill.clone());
        let svc =
            app.clone()
                .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(kill_ext.clone());
                    req
                });
        let svc = hyper_util::service::TowerToHyperService::new(svc);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.cancelled() => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// `uploadfs serve`: run until SIGINT/SIGTERM.
pub async fn run(opts: ServeOptions) -> anyhow::Result<()> {
    let server = start(opts).await?;
    println!("uploadfs serve listening on {}", server.base_url());
    println!("targets' ids: {}", served_ids());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.stop().await;
    Ok(())
}
