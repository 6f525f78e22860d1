//! The remote end of a mount scenario, so one scenario body runs against either: one
//! protocol of `uploadfs serve` (checked through its introspection) or a bucket of the real
//! S3 server ([`super::s3::Weed`], checked through our S3 client's ListObjectsV2 and
//! GetObject, the way any other S3 program sees the bucket).
//!
//! What a scenario asks of the remote: the files stored (name → size and SHA-1, names
//! unique across the tree, as the test server reports them), the folders, a fingerprint of
//! everything uploaded (to see that nothing was sent), the part size, and a mount on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uploadfs::config::TargetKind;
use uploadfs::remote::http::HttpClient;
use uploadfs::remote::s3::{ObjectInfo, S3Target};
use uploadfs::remote::{Capabilities, RemoteFile, Target};

use super::config::{write_config_file, TargetToml};
use super::mount::Mount;
use super::s3::Weed;
use super::server::TestServer;
use super::sha1_hex;

/// A bucket of the shared S3 cluster, with a client on it for checks.
pub struct S3Remote {
    pub weed: Arc<Weed>,
    pub bucket: String,
    pub target: Arc<S3Target>,
    pub rt: tokio::runtime::Runtime,
    /// The scenario's working directory (mountpoint, cache, state, sources).
    pub work: tempfile::TempDir,
    /// SHA-1 of objects already read, by key and ETag.
    sha1s: Mutex<HashMap<(String, String), String>>,
}

/// Where a scenario's files go.
pub enum Remote {
    Serve { s: TestServer, kind: TargetKind },
    S3(S3Remote),
}

impl Remote {
    /// `kind` of the test server `s`.
    pub fn serve(s: TestServer, kind: TargetKind) -> Remote {
        Remote::Serve { s, kind }
    }

    /// A fresh bucket of the shared S3 cluster (its name from `hint`).
    pub fn s3(hint: &str) -> Remote {
        let weed = Weed::shared();
        let bucket = weed.bucket(hint);
        let cfg = weed.config(&bucket, "");
        let target =
            S3Target::new(HttpClient::new(hint, &cfg).expect("http"), &cfg).expect("s3 target");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        Remote::S3(S3Remote {
            weed,
            bucket,
            target: Arc::new(target),
            rt,
            work: tempfile::tempdir().expect("tempdir"),
            sha1s: Mutex::new(HashMap::new()),
        })
    }

    /// The scenario's working directory.
    pub fn work(&self) -> &Path {
        match self {
            Remote::Serve { s, .. } => s.dir.path(),
            Remote::S3(r) => r.work.path(),
        }
    }

    /// The protocol's name, for messages.
    pub fn proto(&self) -> &'static str {
        match self {
            Remote::Serve { kind, .. } => kind.as_str(),
            Remote::S3(_) => "s3",
        }
    }

    /// A client of the target, for direct uploads and listings.
    pub fn target(&self) -> Arc<dyn Target> {
        match self {
            Remote::Serve { s, kind } => s.target(*kind),
            Remote::S3(r) => r.target.clone(),
        }
    }

    pub fn caps(&self) -> Capabilities {
        self.target().capabilities()
    }

    /// Block on `f` with the remote's runtime.
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        match self {
            Remote::Serve { s, .. } => s.rt.block_on(f),
            Remote::S3(r) => r.rt.block_on(f),
        }
    }

    /// One part of a multi-part upload.
    pub fn part_size(&self) -> usize {
        match self {
            Remote::Serve { s, kind } => s.part_size(*kind),
            Remote::S3(_) => self.caps().part_size as usize,
        }
    }

    /// The config file of target `t` (extra lines `config_extra`, retry budget
    /// `retry_seconds`), written in the working directory.
    pub fn config(&self, config_extra: &str, retry_seconds: u64) -> std::path::PathBuf {
        let t = match self {
            Remote::Serve { s, kind } => TargetToml::new(s, *kind),
            Remote::S3(r) => TargetToml::s3(&r.weed.endpoint, &r.bucket, ""),
        };
        let t = t.retry_seconds(retry_seconds).extra(config_extra);
        write_config_file(&self.work().join("config.toml"), &[t])
    }

    /// Mount target `t` with everything under the working directory.
    pub fn mount(&self, config_extra: &str, extra: &[&str]) -> Mount {
        let cfg = self.config(config_extra, super::config::RETRY_SECONDS);
        Mount::with_config(self.work(), "t", &cfg, extra)
    }

    /// Stored files: name → (size, SHA-1); two files with one name fail the test.
    pub fn stored(&self) -> BTreeMap<String, (u64, String)> {
        match self {
            Remote::Serve { s, kind } => s.stored(kind.as_str()),
            Remote::S3(r) => {
                let mut m = BTreeMap::new();
                for o in r.objects().into_iter().filter(|o| !o.key.ends_with('/')) {
                    let name = o.key.rsplit('/').next().unwrap_or_default().to_string();
                    let v = (o.size, r.sha1(&o));
                    assert!(
                        m.insert(name.clone(), v).is_none(),
                        "s3: the bucket holds two files named {name}"
                    );
                }
                m
            }
        }
    }

    /// `name` is stored with exactly `data` (see [`TestServer::assert_stored`]).
    pub fn assert_stored(&self, name: &str, data: &[u8]) {
        match self {
            Remote::Serve { s, kind } => s.assert_stored(kind.as_str(), name, data),
            Remote::S3(_) => {
                let files = self.stored();
                let got = files
                    .get(name)
                    .unwrap_or_else(|| panic!("s3: {name} is not in the bucket; it has {files:?}"));
                assert_eq!(
                    got,
                    &(data.len() as u64, sha1_hex(data)),
                    "s3: {name} differs"
                );
            }
        }
    }

    /// Wait until `name` is stored with `data` (work done after `close()` returned), then
    /// assert it.
    pub fn wait_stored_one(&self, name: &str, data: &[u8], timeout: Duration) {
        let want = (data.len() as u64, sha1_hex(data));
        let deadline = Instant::now() + timeout;
        loop {
            let files = self.stored();
            let landed = files.get(name) == Some(&want)
                || (self.proto() == "dyson" && files.values().any(|v| *v == want));
            if landed || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.assert_stored(name, data);
    }

    /// Wait until every file of `want` (name → (size, SHA-1)) is stored as given.
    pub fn wait_stored(&self, want: &BTreeMap<String, (u64, String)>, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let files = self.stored();
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
                "{}: not stored as written: {missing:?}; it has {files:?}",
                self.proto()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Names of the folders on the remote.
    pub fn folders(&self) -> BTreeSet<String> {
        match self {
            Remote::Serve { s, kind } => s.state()["protocols"][kind.as_str()]["folders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["name"].as_str().unwrap_or_default().to_string())
                .collect(),
            // Every `/`-separated step of a key (markers included) is a folder.
            Remote::S3(r) => r
                .objects()
                .iter()
                .flat_map(|o| {
                    let parts: Vec<&str> = o.key.split('/').collect();
                    parts[..parts.len() - 1]
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                })
                .collect(),
        }
    }

    /// Changes whenever anything is uploaded: bytes received by the test server, or every
    /// key of the bucket with its ETag and modification time.
    pub fn uploads(&self) -> String {
        match self {
            Remote::Serve { s, .. } => s.bytes_received().to_string(),
            Remote::S3(r) => r
                .objects()
                .iter()
                .map(|o| format!("{} {} {}\n", o.key, o.etag, o.last_modified_ms))
                .collect(),
        }
    }

    /// Make the remote refuse files over `bytes`; false where it cannot (S3).
    pub fn set_max_file_size(&self, bytes: u64) -> bool {
        match self {
            Remote::Serve { s, .. } => {
                s.set_max_file_size(bytes);
                true
            }
            Remote::S3(_) => false,
        }
    }

    /// A request to upload `data` as `name` in the remote root (see
    /// [`super::server::file_request`]).
    pub fn upload_request(
        &self,
        name: &str,
        data: &[u8],
        replaces: Option<RemoteFile>,
    ) -> uploadfs::remote::UploadRequest {
        super::server::file_request(self.work(), name, data, replaces)
    }

    /// The entry `name` of the remote root, by listing.
    pub fn find(&self, name: &str) -> Option<RemoteFile> {
        let t = self.target();
        self.block_on(t.list(&None))
            .expect("list")
            .into_iter()
            .find(|f| f.name == name)
    }
}

impl S3Remote {
    /// Every object of the bucket (all levels, all pages).
    pub fn objects(&self) -> Vec<ObjectInfo> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let page = self
                    .target
                    .client()
                    .list_page("", None, token.as_deref())
                    .await
                    .expect("s3 listing");
                out.extend(page.objects);
                match page.next {
                    Some(t) => token = Some(t),
                    None => return out,
                }
            }
        })
    }

    /// The SHA-1 of an object's content (read once per key and ETag).
    fn sha1(&self, o: &ObjectInfo) -> String {
        let k = (o.key.clone(), o.etag.clone());
        if let Some(h) = self.sha1s.lock().unwrap().get(&k) {
            return h.clone();
        }
        let data = self
            .rt
            .block_on(self.target.client().get_range(&o.key, 0, o.size))
            .unwrap_or_else(|e| panic!("s3: read of {}: {e}", o.key));
        let h = sha1_hex(&data);
        self.sha1s.lock().unwrap().insert(k, h.clone());
        h
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn pending_uploads(&self) -> usize {
        self.rt
            .block_on(self.target.client().list_multipart_uploads(""))
            .expect("list uploads")
            .len()
    }
}
