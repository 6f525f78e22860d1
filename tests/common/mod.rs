//! Shared test support: an `uploadfs serve` started in-process on an ephemeral loopback
//! port with its own temporary data directory, plus helpers to reach its introspection
//! and control endpoints and to build clients for each protocol.
#![allow(dead_code)]

pub mod s3;

use std::sync::Arc;

use uploadfs::config::{TargetConfig, TargetKind};
use uploadfs::remote::Target;
use uploadfs::server::{RunningServer, ServeOptions};

pub const TOKEN: &str = "test-token-0123456789";

pub struct TestServer {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub base: String,
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
        let server = rt
            .block_on(uploadfs::server::start(opts))
            .expect("server starts");
        let base = server.base_url();
        TestServer {
            rt,
            server: Some(server),
            dir,
            base,
        }
    }

    /// Start with default options.
    pub fn new() -> TestServer {
        Self::start(|_| {})
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

    /// `POST /_uploadfs/control` with the given JSON.
    pub fn control(&self, body: serde_json::Value) {
        self.rt.block_on(async {
            let r = reqwest::Client::new()
                .post(self.url("/_uploadfs/control"))
                .bearer_auth(TOKEN)
                .json(&body)
                .send()
                .await
                .expect("control request");
            assert!(r.status().is_success(), "control failed: {}", r.status());
        })
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.stop());
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), distinct per seed.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

pub fn sha1_hex(data: &[u8]) -> String {
    use sha1::Digest;
    hex::encode(sha1::Sha1::digest(data))
}

pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}
