//! The server side of a test: `uploadfs serve` started in-process on an ephemeral
//! loopback port with its own temporary data directory (stopped when the [`TestServer`]
//! is dropped), its fault knobs (`POST /_uploadfs/control`), its counters and stored files
//! (`GET /_uploadfs/state`), and clients for each protocol pointed at it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use uploadfs::config::{TargetConfig, TargetKind};
use uploadfs::remote::{ByteCounter, Digests, FileSource, RemoteFile, Target, UploadRequest};
use uploadfs::server::{RunningServer, ServeOptions};

use super::{md5_hex, sha1_hex};

/// The token the server starts with and every test client uses.
pub const TOKEN: &str = "test-token-0123456789";

/// Cloudreve chunk size for [`TestServer::small_chunks`]: files above the client's 4 MiB
/// single-request limit then take several chunks without being huge (the server's
/// default, 25 MiB, would make every multi-chunk test file large and slow).
pub const SMALL_CLOUDREVE_CHUNK: u64 = 4 * 1024 * 1024;

pub struct TestServer {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub base: String,
    /// The Cloudreve chunk size the server was started with (its part size).
    cloudreve_chunk: u64,
}

impl TestServer {
    /// Start a server; `tweak` may change the options (fault rate, limits, ...).
    pub fn start(tweak: impl FnOnce(&mut ServeOptions)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        let mut opts = ServeOptions::ephemeral(dir.path().join("data"), TOKEN);
        tweak(&mut opts);
        let cloudreve_chunk = opts.cloudreve_chunk_size;
        let server = rt
            .block_on(uploadfs::server::start(opts))
            .expect("server starts");
        let base = server.base_url();
        TestServer {
            rt,
            server: Some(server),
            dir,
            base,
            cloudreve_chunk,
        }
    }

    /// Start with default options.
    pub fn new() -> TestServer {
        Self::start(|_| {})
    }

    /// Start with [`SMALL_CLOUDREVE_CHUNK`] Cloudreve chunks.
    pub fn small_chunks() -> TestServer {
        Self::start(|o| o.cloudreve_chunk_size = SMALL_CLOUDREVE_CHUNK)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Client configuration for protocol `kind` against this server.
    pub fn config(&self, kind: TargetKind) -> TargetConfig {
        let mut c = TargetConfig::for_local_server(kind, &self.base, TOKEN);
        // Tests must not wait minutes for a retry budget to run out.
        c.retry_seconds = 60;
        c
    }

    /// A client for protocol `kind`.
    pub fn target(&self, kind: TargetKind) -> Arc<dyn Target> {
        uploadfs::remote::build(kind.as_str(), &self.config(kind)).expect("client builds")
    }

    /// A request to upload `data` as `name` in the root, replacing `replaces`, with both
    /// digests, read from a file `src-NAME` written in the server's directory.
    pub fn upload_request(
        &self,
        name: &str,
        data: &[u8],
        replaces: Option<RemoteFile>,
    ) -> UploadRequest {
        file_request(self.dir.path(), name, data, replaces)
    }

    /// The size of one part of a multi-part upload of `kind` to this server: Cloudreve's
    /// is the chunk size the server was started with, the others' the client's own.
    pub fn part_size(&self, kind: TargetKind) -> usize {
        match kind {
            TargetKind::Cloudreve => self.cloudreve_chunk as usize,
            _ => self.target(kind).capabilities().part_size as usize,
        }
    }

    // ----- introspection --------------------------------------------------------------

    /// The introspection JSON.
    pub fn state(&self) -> serde_json::Value {
        self.rt.block_on(async {
            reqwest::Client::new()
                .get(self.url("/_uploadfs/state"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .expect("state request")
                .json()
                .await
                .expect("state json")
        })
    }

    /// A top-level counter of the introspection (`bytes_received`, `bytes_served`,
    /// `requests`, `faults_injected`, `bad_answers_sent`, ...); panics when it is absent.
    pub fn counter(&self, name: &str) -> u64 {
        self.state()[name]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} in the introspection"))
    }

    /// Bytes of uploads the server has received so far.
    pub fn bytes_received(&self) -> u64 {
        self.counter("bytes_received")
    }

    /// Bytes the server has sent for downloads so far.
    pub fn bytes_served(&self) -> u64 {
        self.counter("bytes_served")
    }

    /// Requests the server has answered so far (introspection calls included).
    pub fn requests(&self) -> u64 {
        self.counter("requests")
    }

    /// Stored files of one protocol, from introspection: (name, size, sha1).
    pub fn files(&self, proto: &str) -> Vec<(String, u64, String)> {
        let s = self.state();
        s["protocols"][proto]["files"]
            .as_array()
            .expect("files array")
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap_or_default().to_string(),
                    f["size"].as_u64().unwrap_or_default(),
                    f["sha1"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }

    /// Stored files of `proto`: name → (size, sha1); two files with one name fail the test.
    pub fn stored(&self, proto: &str) -> BTreeMap<String, (u64, String)> {
        let mut m = BTreeMap::new();
        for (name, size, sha1) in self.files(proto) {
            assert!(
                m.insert(name.clone(), (size, sha1)).is_none(),
                "{proto}: the server holds two files named {name}"
            );
        }
        m
    }

    /// `name` is stored by `proto` with exactly `data` (on Dyson, which stores one file
    /// per content, another path holding the same content counts too).
    pub fn assert_stored(&self, proto: &str, name: &str, data: &[u8]) {
        let files = self.stored(proto);
        let want = (data.len() as u64, sha1_hex(data));
        if proto == "dyson" && !files.contains_key(name) && files.values().any(|v| *v == want) {
            return;
        }
        let got = files
            .get(name)
            .unwrap_or_else(|| panic!("{proto}: {name} is not on the server; it has {files:?}"));
        assert_eq!(got, &want, "{proto}: {name} on the server differs");
    }

    /// Wait until `proto` stores every file of `want` (name → (size, sha1)) as given;
    /// fail after `timeout` naming the missing or different ones (a zero `timeout` checks
    /// once). Other files may be stored too.
    pub fn wait_stored(
        &self,
        proto: &str,
        want: &BTreeMap<String, (u64, String)>,
        timeout: Duration,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let files = self.stored(proto);
            let missing: Vec<&String> = want
                .iter()
                .filter(|(n, v)| files.get(*n) != Some(v))
                .map(|(n, _)| n)
                .collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{proto}: not on the server as written: {missing:?}; it has {files:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // ----- fault knobs -----------------------------------------------------------------

    /// `POST /_uploadfs/control` with the given JSON.
    pub fn control(&self, body: serde_json::Value) {
        self.control_as(TOKEN, body)
    }

    /// `POST /_uploadfs/control` authenticated with `token` (after `{"token": ...}` has
    /// changed the server's token).
    pub fn control_as(&self, token: &str, body: serde_json::Value) {
        self.rt.block_on(async {
            let r = reqwest::Client::new()
                .post(self.url("/_uploadfs/control"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("control request");
            assert!(r.status().is_success(), "control failed: {}", r.status());
        })
    }

    /// Cap the server's upload bandwidth at `bytes_per_second` (0: no cap).
    pub fn set_bandwidth(&self, bytes_per_second: u64) {
        self.control(json!({ "bandwidth": bytes_per_second }));
    }

    /// Refuse files larger than `bytes`.
    pub fn set_max_file_size(&self, bytes: u64) {
        self.control(json!({ "max_file_size": bytes }));
    }

    /// Fail this share of part uploads and downloads (503, 429, dropped connections).
    pub fn set_fail_rate(&self, rate: f64) {
        self.control(json!({ "fail_rate": rate }));
    }

    /// Spoil the next `count` answers to `method` requests whose path contains
    /// `path_contains`, as `mode` (`flip`, `garbage_json`, `html`, ...).
    pub fn spoil_answers(&self, mode: &str, count: u64, path_contains: &str, method: &str) {
        self.control(json!({"bad_answers": {
            "mode": mode, "count": count, "path_contains": path_contains, "method": method
        }}));
    }

    /// Stop spoiling answers.
    pub fn heal_answers(&self) {
        self.control(json!({"bad_answers": {"mode": "html", "count": 0}}));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
    }
}

/// A request to upload `data` as `name` in the root, replacing `replaces`, with both
/// digests, read from a file `src-NAME` written in `dir`.
pub fn file_request(
    dir: &std::path::Path,
    name: &str,
    data: &[u8],
    replaces: Option<RemoteFile>,
) -> UploadRequest {
    let path = dir.join(format!("src-{name}"));
    std::fs::write(&path, data).unwrap();
    UploadRequest {
        parent: None,
        name: name.to_string(),
        size: data.len() as u64,
        digests: Digests {
            sha1: Some(sha1_hex(data)),
            md5: Some(md5_hex(data)),
        },
        mtime_ms: 1_700_000_000_000,
        replaces,
        resume_session: None,
        source: Arc::new(FileSource::open(&path).unwrap()),
        observer: Arc::new(ByteCounter::default()),
    }
}
