//! S3 uploads through injected failures: a fault proxy ([`common::fault_proxy`]) between our
//! client and a real SeaweedFS fails 20 % of the requests — 500 `InternalError` and 503
//! `SlowDown` answers, answers lost after the server acted, request bodies cut in the
//! middle — and still every file lands byte-identical, exactly once (no other keys, none
//! twice), with no multipart upload left behind. Files straddle the part boundaries
//! (0, 1, 8 MiB − 1, 8 MiB, 8 MiB + 1, 20 MiB + 3 bytes: one PutObject up to a multipart
//! upload of three parts). Uploaded by our S3 client through the `Target` trait, then
//! through a real FUSE mount (`cp`) and `uploadfs put`; checked against SeaweedFS directly,
//! never through the proxy. The proxy's counters must show faults of every kind, so the
//! tests cannot pass on a quiet network. A third test loses half of the answers to the two
//! steps that are not idempotent (CreateMultipartUpload, CompleteMultipartUpload) and
//! nothing else, where a client that retries blindly leaves uploads nobody knows of or
//! fails uploads that landed. `UPLOADFS_FAULT_SEED` replays other draws.
//! Needs SeaweedFS (tests/common/s3.rs); the mount test needs /dev/fuse and root or
//! fusermount3.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use common::config::{write_config_file, TargetToml};
use common::fault_proxy::{Fault, FaultProxy, Faults, Stats};
use common::mount::{sh, Mount};
use common::remote::{Remote, S3Remote};
use common::s3::Weed;
use common::{pattern, sha1_hex, BIN};
use futures_util::StreamExt;
use uploadfs::remote::http::HttpClient;
use uploadfs::remote::s3::{S3Target, PART_SIZE};
use uploadfs::remote::{ByteCounter, Digests, PartSource, Target, UploadRequest};

const MIB: u64 = 1024 * 1024;
/// The share of requests that fail.
const RATE: f64 = 0.2;
/// Retry budget per request: long enough for the backoff to ride out several faults in a
/// row (each at most a few seconds on loopback), short enough to fail a test that hangs.
const RETRY_SECONDS: u64 = 60;
/// Times the client test uploads the whole set (more uploads, more faults on each step).
const ROUNDS: usize = 4;
/// Client uploads in flight at once.
const PARALLEL: usize = 3;

/// Sizes around the part boundaries, largest last.
fn sizes() -> [u64; 6] {
    [0, 1, PART_SIZE - 1, PART_SIZE, PART_SIZE + 1, 20 * MIB + 3]
}

/// The seed of a test's fault draws: `UPLOADFS_FAULT_SEED`, else `default`.
fn seed(default: u64) -> u64 {
    std::env::var("UPLOADFS_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Data in memory as an upload's source.
struct Mem(Bytes);

impl PartSource for Mem {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let start = (offset as usize).min(self.0.len());
        let end = (start + len).min(self.0.len());
        Ok(self.0.slice(start..end))
    }
}

fn request(name: &str, data: Bytes) -> UploadRequest {
    UploadRequest {
        parent: None,
        name: name.to_string(),
        size: data.len() as u64,
        digests: Digests::default(),
        mtime_ms: 1_700_000_000_000,
        replaces: None,
        resume_session: None,
        source: Arc::new(Mem(data)),
        observer: Arc::new(ByteCounter::default()),
    }
}

/// A client of `bucket` that talks to `endpoint` (the proxy) with the cluster's keys.
fn client_via(weed: &Weed, bucket: &str, endpoint: &str) -> S3Target {
    let mut cfg = weed.config(bucket, "");
    cfg.url = endpoint.to_string();
    cfg.retry_seconds = RETRY_SECONDS;
    if let Some(s3) = cfg.s3.as_mut() {
        s3.endpoint = endpoint.to_string();
    }
    S3Target::new(HttpClient::new("faults", &cfg).expect("http"), &cfg).expect("target")
}

/// The proxy injected every kind of fault, and the drawn share is about the rate asked for.
fn assert_faults_injected(stats: &Stats) {
    eprintln!("fault proxy: {stats}");
    for kind in Fault::ALL {
        assert!(
            stats.of(kind) > 0,
            "no {kind:?} was injected, the test proves less than it says: {stats}"
        );
    }
    let share = stats.total() as f64 / stats.requests.max(1) as f64;
    assert!(
        (0.1..0.3).contains(&share),
        "{share:.3} of the requests failed, not about {RATE}: {stats}"
    );
}

/// The bucket as SeaweedFS holds it (read directly, not through the proxy): exactly the
/// keys of `want` that did not fail, each once and byte-identical; a key whose upload
/// failed is absent or complete, never partial; no multipart upload left.
fn assert_landed(s3: &S3Remote, want: &BTreeMap<String, Bytes>, failed: &BTreeSet<String>) {
    let mut seen = BTreeSet::new();
    for o in s3.objects() {
        assert!(seen.insert(o.key.clone()), "{} is listed twice", o.key);
        // The empty marker of a folder the files went into (`uploadfs put` makes them).
        if o.key.ends_with('/') && o.size == 0 && want.keys().any(|k| k.starts_with(&o.key)) {
            continue;
        }
        let Some(data) = want.get(&o.key) else {
            panic!("unexpected object {} ({} bytes)", o.key, o.size);
        };
        assert_eq!(o.size, data.len() as u64, "{}: size", o.key);
        if o.size > 0 {
            let back = s3
                .rt
                .block_on(s3.target.client().get_range(&o.key, 0, o.size))
                .unwrap_or_else(|e| panic!("read of {}: {e}", o.key));
            assert!(
                sha1_hex(&back) == sha1_hex(data),
                "{} came back different",
                o.key
            );
        }
    }
    for key in want.keys() {
        assert!(
            seen.contains(key) || failed.contains(key),
            "{key} was reported uploaded but is not in the bucket"
        );
    }
    let pending = s3
        .rt
        .block_on(s3.target.client().list_multipart_uploads(""))
        .expect("list uploads");
    assert!(
        pending.is_empty(),
        "{} multipart upload(s) left behind: {pending:?}",
        pending.len()
    );
}

/// At most one upload in ten may run out of retries; report the counts.
fn assert_mostly_succeeded(what: &str, total: usize, failed: &BTreeSet<String>) {
    eprintln!(
        "{what}: {} of {total} uploads succeeded; failed: {failed:?}",
        total - failed.len()
    );
    assert!(
        failed.len() * 10 <= total,
        "{what}: {} of {total} uploads failed: {failed:?}",
        failed.len()
    );
}

/// An S3 remote (a fresh bucket, checked directly) with the test's name.
fn s3_remote(hint: &str) -> Remote {
    Remote::s3(hint)
}

fn s3_of(r: &Remote) -> &S3Remote {
    match r {
        Remote::S3(s3) => s3,
        _ => unreachable!("an S3 remote"),
    }
}

#[test]
fn client_uploads_land_once_through_faults() {
    let r = s3_remote("faults-client");
    let s3 = s3_of(&r);
    let proxy = FaultProxy::start(&s3.weed.endpoint, Faults::all(RATE, seed(13)));
    let t = Arc::new(client_via(&s3.weed, &s3.bucket, &proxy.endpoint));
    let mut want = BTreeMap::new();
    for round in 0..ROUNDS {
        for (i, size) in sizes().into_iter().enumerate() {
            let data = Bytes::from(pattern(size as usize, (round * 10 + i) as u64));
            want.insert(format!("r{round}/f{size}.bin"), data);
        }
    }
    let rt = runtime();
    let outcomes: Vec<(String, Result<u64, String>)> = rt.block_on(async {
        futures_util::stream::iter(want.clone())
            .map(|(key, data)| {
                let t = t.clone();
                async move {
                    // Keys are `rN/name`: the name goes in folder `rN/`.
                    let (dir, name) = key.split_once('/').expect("a folder");
                    let mut req = request(name, data);
                    req.parent = Some(format!("{dir}/"));
                    let got = t.upload(req).await;
                    (key, got.map(|f| f.size).map_err(|e| e.to_string()))
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await
    });
    drop(rt);
    let mut failed = BTreeSet::new();
    for (key, got) in &outcomes {
        match got {
            Ok(size) => assert_eq!(*size, want[key].len() as u64, "{key}: reported size"),
            Err(e) => {
                eprintln!("{key}: upload failed: {e}");
                failed.insert(key.clone());
            }
        }
    }
    let stats = proxy.stats();
    drop(proxy);
    assert_faults_injected(&stats);
    assert_landed(s3, &want, &failed);
    assert_mostly_succeeded("client", want.len(), &failed);
}

/// `uploadfs put -q SRC DEST --config CFG` with a home of its own: success or stderr.
fn put(home: &Path, cfg: &Path, src: &Path, dest: &str) -> Result<(), String> {
    let out = Command::new(BIN)
        .args(["put", "-q"])
        .arg(src)
        .arg(dest)
        .arg("--config")
        .arg(cfg)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env("XDG_CACHE_HOME", home.join(".cache"))
        .output()
        .expect("run uploadfs");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn mount_cp_and_put_land_once_through_faults() {
    let r = s3_remote("faults-mount");
    let s3 = s3_of(&r);
    let proxy = FaultProxy::start(&s3.weed.endpoint, Faults::all(RATE, seed(31)));
    let work = r.work().to_path_buf();
    let cfg = write_config_file(
        &work.join("config.toml"),
        &[TargetToml::s3(&proxy.endpoint, &s3.bucket, "").retry_seconds(RETRY_SECONDS)],
    );
    let src = work.join("src");
    let home = work.join("home");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let mut want = BTreeMap::new();
    let mut names = Vec::new();
    for (i, size) in sizes().into_iter().enumerate() {
        let name = format!("f{size}.bin");
        let data = Bytes::from(pattern(size as usize, 100 + i as u64));
        std::fs::write(src.join(&name), &data).unwrap();
        want.insert(name.clone(), data.clone());
        want.insert(format!("again/{name}"), data.clone());
        want.insert(format!("put/{name}"), data);
        names.push(name);
    }

    // Through the mount: `cp` returns once every file's close() has its upload's outcome.
    let mut m = Mount::with_config(&work, "t", &cfg, &[]);
    sh(
        &work,
        "cp src/*.bin mnt/ && mkdir mnt/again && cp src/*.bin mnt/again/",
    );
    m.unmount();
    let after_mount = proxy.stats();
    eprintln!("after the mount: {after_mount}");

    // Through `uploadfs put`.
    let mut failed = BTreeSet::new();
    for name in &names {
        if let Err(e) = put(&home, &cfg, &src.join(name), &format!("t:put/{name}")) {
            eprintln!("put of {name} failed: {e}");
            failed.insert(format!("put/{name}"));
        }
    }
    let stats = proxy.stats();
    drop(proxy);
    eprintln!("fault proxy: {stats}");
    assert!(
        after_mount.total() > 0,
        "no fault was injected during the mount: {after_mount}"
    );
    assert!(
        stats.total() > after_mount.total(),
        "no fault was injected during `uploadfs put`: {stats}"
    );
    assert_landed(s3, &want, &failed);
    assert_mostly_succeeded("put", names.len(), &failed);
    let log = m.log();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

/// The two steps of a multipart upload that are not idempotent, with half of their answers
/// lost after the server acted: a lost CreateMultipartUpload answer leaves an upload the
/// client never learns of, a lost CompleteMultipartUpload answer a finished object the
/// client must not take for a failure.
#[test]
fn lost_create_and_complete_answers_leave_nothing_behind() {
    let r = s3_remote("faults-lost");
    let s3 = s3_of(&r);
    let proxy = FaultProxy::start(
        &s3.weed.endpoint,
        Faults::only(
            Fault::DropAnswer,
            &["CreateMultipartUpload", "CompleteMultipartUpload"],
            0.5,
            seed(7),
        ),
    );
    let t = Arc::new(client_via(&s3.weed, &s3.bucket, &proxy.endpoint));
    let mut want = BTreeMap::new();
    for i in 0..6u64 {
        let data = Bytes::from(pattern((PART_SIZE + 1 + i) as usize, 200 + i));
        want.insert(format!("m{i}.bin"), data);
    }
    let rt = runtime();
    let mut failed = BTreeSet::new();
    for (key, data) in &want {
        if let Err(e) = rt.block_on(t.upload(request(key, data.clone()))) {
            eprintln!("{key}: upload failed: {e}");
            failed.insert(key.clone());
        }
    }
    drop(rt);
    let stats = proxy.stats();
    drop(proxy);
    eprintln!("fault proxy: {stats}");
    for op in ["CreateMultipartUpload", "CompleteMultipartUpload"] {
        assert!(
            stats
                .faults
                .get(&(Fault::DropAnswer, op))
                .is_some_and(|n| *n > 0),
            "no {op} answer was lost: {stats}"
        );
    }
    assert_landed(s3, &want, &failed);
    assert!(failed.is_empty(), "uploads failed: {failed:?}");
}
