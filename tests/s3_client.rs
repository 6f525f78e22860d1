//! The S3 client against a real SeaweedFS (tests/common/s3.rs): uploads straddling the part
//! boundaries, metadata in rclone's and s3fs's forms, listings past one page, folders
//! (markers, prefixes without one), renames of files and trees, deletes, refused keys,
//! ranged reads, no multipart upload left behind by a failed or dropped upload, and
//! `uploadfs put`/`get`/`config check --probe` through the command line.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::s3::{Weed, ACCESS_KEY, REGION, SECRET_KEY};
use rusty_s3::S3Action as _;
use uploadfs::remote::http::HttpClient;
use uploadfs::remote::s3::{S3Target, PART_SIZE};
use uploadfs::remote::{
    ByteCounter, Digests, DirRef, ErrorKind, PartSource, RemoteFile, Target, UploadRequest,
};

const BIN: &str = env!("CARGO_BIN_EXE_uploadfs");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A client on a fresh bucket of the shared cluster, below `prefix`.
fn target(weed: &Weed, hint: &str, prefix: &str) -> S3Target {
    let bucket = weed.bucket(hint);
    let cfg = weed.config(&bucket, prefix);
    S3Target::new(HttpClient::new(hint, &cfg).expect("http"), &cfg).expect("target")
}

/// Deterministic, position-dependent bytes (a shifted part shows as a mismatch).
fn pattern(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 31 + i / 7919) as u8) ^ seed)
        .collect()
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

fn request(parent: DirRef, name: &str, data: Bytes, mtime_ms: i64) -> UploadRequest {
    UploadRequest {
        parent,
        name: name.to_string(),
        size: data.len() as u64,
        digests: Digests::default(),
        mtime_ms,
        replaces: None,
        resume_session: None,
        source: Arc::new(Mem(data)),
        observer: Arc::new(ByteCounter::default()),
    }
}

async fn read_all(t: &S3Target, f: &RemoteFile) -> Vec<u8> {
    t.read_range(f, 0, f.size).await.expect("read").to_vec()
}

async fn find(t: &S3Target, dir: &DirRef, name: &str) -> Option<RemoteFile> {
    t.list(dir)
        .await
        .expect("list")
        .into_iter()
        .find(|e| e.name == name)
}

async fn assert_no_pending(t: &S3Target, prefix: &str) {
    let pending = t
        .client()
        .list_multipart_uploads(prefix)
        .await
        .expect("list uploads");
    assert!(pending.is_empty(), "unfinished uploads left: {pending:?}");
}

#[test]
fn sizes_around_part_boundaries_round_trip() {
    let weed = Weed::shared();
    let t = target(&weed, "sizes", "root/");
    runtime().block_on(async {
        let sizes = [
            0,
            1,
            PART_SIZE - 1,
            PART_SIZE,
            PART_SIZE + 1,
            3 * PART_SIZE + 12_345,
        ];
        for (i, size) in sizes.into_iter().enumerate() {
            let data = Bytes::from(pattern(size, i as u8));
            let name = format!("f{size}.bin");
            let got = t
                .upload(request(None, &name, data.clone(), 1_700_000_000_000))
                .await
                .unwrap_or_else(|e| panic!("upload of {size} bytes: {e}"));
            assert_eq!(got.id, format!("root/{name}"));
            assert_eq!(got.size, size);
            // Single-part objects carry their MD5 as ETag (checked by the read below).
            assert_eq!(got.md5.is_some(), size < PART_SIZE, "{got:?}");
            let listed = find(&t, &None, &name).await.expect("listed");
            assert_eq!(listed.size, size);
            let back = read_all(&t, &listed).await;
            assert!(back == data[..], "{size} bytes came back different");
        }
        assert_no_pending(&t, "root/").await;
        // Uploading over an existing name replaces it in place.
        let f = t
            .upload(request(None, "f1.bin", Bytes::from_static(b"new"), 5))
            .await
            .expect("overwrite");
        assert_eq!(read_all(&t, &f).await, b"new");
    });
}

#[test]
fn mtime_and_mode_in_rclone_and_s3fs_forms() {
    let weed = Weed::shared();
    let bucket = weed.bucket("mtime");
    let cfg = weed.config(&bucket, "");
    let t = S3Target::new(HttpClient::new("m", &cfg).unwrap(), &cfg).unwrap();
    runtime().block_on(async {
        let ms = 1_700_000_000_123;
        t.upload(request(None, "ours.txt", Bytes::from_static(b"x"), ms))
            .await
            .expect("upload");
        let info = t
            .client()
            .head_object("ours.txt")
            .await
            .unwrap()
            .expect("head");
        assert_eq!(info.meta.mtime_ms, Some(ms));
        assert_eq!(info.meta.mode, Some(libc::S_IFREG | 0o644));
        assert_eq!(find(&t, &None, "ours.txt").await.unwrap().mtime_ms, ms);
        // What rclone writes (fractional) and what s3fs writes (integer seconds), by hand.
        for (key, value, want) in [
            ("rclone.txt", "1600000000.250000000", 1_600_000_000_250),
            ("s3fs.txt", "1600000001", 1_600_000_001_000),
        ] {
            let b = rusty_s3::Bucket::new(
                weed.endpoint.parse().unwrap(),
                rusty_s3::UrlStyle::Path,
                bucket.clone(),
                REGION,
            )
            .unwrap();
            let c = rusty_s3::Credentials::new(ACCESS_KEY, SECRET_KEY);
            let mut a = b.put_object(Some(&c), key);
            a.headers_mut().insert("x-amz-meta-mtime", value);
            let url = a.sign(Duration::from_secs(60));
            let resp = reqwest::Client::new()
                .put(url)
                .header("x-amz-meta-mtime", value)
                .body("y")
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
            assert_eq!(find(&t, &None, key).await.unwrap().mtime_ms, want, "{key}");
        }
        // No metadata at all: the server's Last-Modified.
        t.client()
            .put_object("plain.txt", &Default::default(), Bytes::from_static(b"z"))
            .await
            .unwrap();
        let plain = find(&t, &None, "plain.txt").await.unwrap();
        let now = uploadfs::catalog::now_ms();
        assert!((now - plain.mtime_ms).abs() < 120_000, "{plain:?}");
    });
}

#[test]
fn listing_pages_and_folders() {
    let weed = Weed::shared();
    let t = Arc::new(target(&weed, "listing", "top/"));
    runtime().block_on(async {
        use futures_util::StreamExt;
        // 1100 keys (past one 1000-key page), a marker for the folder itself, three
        // sub-folders (one with a marker, two only as prefixes), and a sibling folder.
        let mut keys: Vec<String> = (0..1100).map(|i| format!("top/many/k{i:04}")).collect();
        keys.push("top/many/".to_string());
        keys.push("top/many/sub0/".to_string());
        keys.push("top/many/sub0/x".to_string());
        keys.push("top/many/sub1/y".to_string());
        keys.push("top/many/sub2/deeper/z".to_string());
        keys.push("top/other/w".to_string());
        let results: Vec<_> = futures_util::stream::iter(keys)
            .map(|k| {
                let t = t.clone();
                async move {
                    t.client()
                        .put_object(&k, &Default::default(), Bytes::from_static(b"."))
                        .await
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        for r in results {
            r.expect("put");
        }
        let root = t.list(&None).await.expect("root");
        let mut names: Vec<_> = root.iter().map(|e| (e.name.as_str(), e.is_dir)).collect();
        names.sort();
        assert_eq!(names, vec![("many", true), ("other", true)]);
        let many = root.iter().find(|e| e.name == "many").unwrap();
        assert_eq!(many.id, "top/many/");
        let entries = t.list(&Some(many.id.clone())).await.expect("many");
        let files = entries.iter().filter(|e| !e.is_dir).count();
        let mut dirs: Vec<_> = entries
            .iter()
            .filter(|e| e.is_dir)
            .map(|e| (e.name.as_str(), e.id.as_str()))
            .collect();
        dirs.sort();
        assert_eq!(files, 1100, "the folder's own marker is not a child");
        assert_eq!(
            dirs,
            vec![
                ("sub0", "top/many/sub0/"),
                ("sub1", "top/many/sub1/"),
                ("sub2", "top/many/sub2/")
            ]
        );
        let sub2 = t.list(&Some("top/many/sub2/".into())).await.unwrap();
        assert_eq!(sub2.len(), 1);
        assert!(sub2[0].is_dir && sub2[0].name == "deeper");
    });
}

#[test]
fn mkdir_rename_and_delete() {
    let weed = Weed::shared();
    let t = target(&weed, "tree", "r/");
    runtime().block_on(async {
        let a = t.mkdir(&None, "a").await.expect("mkdir a");
        assert_eq!(a.id, "r/a/");
        assert!(a.is_dir);
        let marker = t
            .client()
            .head_object("r/a/")
            .await
            .unwrap()
            .expect("marker");
        assert_eq!(marker.size, 0);
        // SeaweedFS keeps `dir/` keys as filer folders and drops their metadata.
        assert!(
            matches!(marker.meta.mode, None | Some(0o40755)),
            "{marker:?}"
        );
        // An empty folder survives as its marker.
        assert!(find(&t, &None, "a").await.unwrap().is_dir);
        assert!(t.list(&Some(a.id.clone())).await.unwrap().is_empty());
        let b = t.mkdir(&Some(a.id.clone()), "b").await.expect("mkdir b");
        let big = Bytes::from(pattern(PART_SIZE + 5, 7));
        t.upload(request(Some(a.id.clone()), "f1", big.clone(), 1_000))
            .await
            .unwrap();
        t.upload(request(
            Some(b.id.clone()),
            "f2",
            Bytes::from_static(b"two"),
            2_000,
        ))
        .await
        .unwrap();
        // A file: renamed and moved (multipart-sized; read back whole).
        let f1 = find(&t, &Some(a.id.clone()), "f1").await.unwrap();
        let moved = t.rename(&f1, &None, "g1").await.expect("rename file");
        assert_eq!(moved.id, "r/g1");
        assert_eq!(moved.mtime_ms, 1_000, "metadata goes along");
        assert!(read_all(&t, &moved).await == big[..]);
        assert!(find(&t, &Some(a.id.clone()), "f1").await.is_none());
        // A tree: every key below it, the marker too.
        let c = t.rename(&a, &None, "c").await.expect("rename dir");
        assert_eq!(c.id, "r/c/");
        assert!(
            find(&t, &None, "a").await.is_none(),
            "the old folder is gone"
        );
        assert!(find(&t, &None, "c").await.is_some());
        assert!(t.client().head_object("r/c/").await.unwrap().is_some());
        let c_entries = t.list(&Some("r/c/".into())).await.unwrap();
        assert_eq!(c_entries.len(), 1);
        assert_eq!(c_entries[0].id, "r/c/b/");
        let f2 = find(&t, &Some("r/c/b/".into()), "f2")
            .await
            .expect("f2 moved");
        assert_eq!(f2.mtime_ms, 2_000);
        assert_eq!(read_all(&t, &f2).await, b"two");
        let left = t.client().list_page("r/a/", None, None).await.unwrap();
        assert!(left.objects.is_empty(), "{:?}", left.objects);
        // A folder cannot go into itself.
        let err = t.rename(&c, &Some("r/c/b/".into()), "c").await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidName);
        // Delete: a file, then an empty folder (its marker).
        t.delete(&f2).await.expect("delete file");
        assert!(find(&t, &Some("r/c/b/".into()), "f2").await.is_none());
        // SeaweedFS may remove a folder its last delete emptied on its own, a moment later:
        // the folder deleted here never held anything.
        let e = t.mkdir(&Some("r/c/".into()), "e").await.expect("mkdir e");
        assert!(find(&t, &Some("r/c/".into()), "e").await.is_some());
        t.delete(&e).await.expect("delete dir");
        assert!(find(&t, &Some("r/c/".into()), "e").await.is_none());
        // Names that need escaping in URLs and in x-amz-copy-source.
        let odd = "a b+c&d%e ü=?#.txt";
        t.upload(request(None, odd, Bytes::from_static(b"odd"), 3_000))
            .await
            .expect("odd name");
        let f = find(&t, &None, odd).await.expect("odd name listed");
        let g = t
            .rename(&f, &None, "x y+ü%20.txt")
            .await
            .expect("odd rename");
        assert_eq!(g.id, "r/x y+ü%20.txt");
        assert_eq!(read_all(&t, &g).await, b"odd");
        assert!(find(&t, &None, odd).await.is_none());
        assert!(t.check_name("a/b").is_err());
        let long = "x".repeat(255);
        let deep: DirRef = Some(format!("r/{}/", "d".repeat(900)));
        let err = t
            .upload(request(deep, &long, Bytes::from_static(b"x"), 0))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidName);
    });
}

#[test]
fn large_objects_are_copied_in_parts() {
    let weed = Weed::shared();
    // Copies above 6 MiB go as UploadPartCopy in 5 MiB parts.
    let t = target(&weed, "copyparts", "").with_copy_limits(6 << 20, 5 << 20);
    runtime().block_on(async {
        let data = Bytes::from(pattern(13 << 20, 3));
        let f = t
            .upload(request(None, "big", data.clone(), 42_000))
            .await
            .unwrap();
        let g = t.rename(&f, &None, "big2").await.expect("copy in parts");
        assert_eq!(g.size, data.len() as u64);
        assert_eq!(g.mtime_ms, 42_000, "the metadata goes to the new upload");
        assert!(read_all(&t, &g).await == data[..]);
        assert!(find(&t, &None, "big").await.is_none());
        assert_no_pending(&t, "").await;
    });
}

#[test]
fn ranged_reads() {
    let weed = Weed::shared();
    let t = target(&weed, "ranges", "");
    runtime().block_on(async {
        let data = Bytes::from(pattern(2 * PART_SIZE + 100, 9));
        let f = t.upload(request(None, "r", data.clone(), 0)).await.unwrap();
        let size = data.len() as u64;
        for (off, len) in [
            (0, 1),
            (PART_SIZE - 10, 20),
            (PART_SIZE, PART_SIZE),
            (size - 5, 5),
            (size - 5, 100),
            (size, 10),
            (12_345, 0),
        ] {
            let got = t.read_range(&f, off, len).await.expect("range");
            let end = (off + len).min(size) as usize;
            let want = &data[(off as usize).min(end)..end];
            assert!(got == want, "range {off}+{len}: {} bytes", got.len());
        }
    });
}

#[test]
fn wrong_secret_is_auth() {
    let weed = Weed::shared();
    let bucket = weed.bucket("auth");
    let cfg = weed.config_with_secret(&bucket, "", "not-the-secret");
    let t = S3Target::new(HttpClient::new("bad", &cfg).unwrap(), &cfg).unwrap();
    runtime().block_on(async {
        let e = t.list(&None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(!e.message.contains("not-the-secret"));
        let e = t
            .upload(request(None, "x", Bytes::from_static(b"x"), 0))
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        let e = t.check().await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        // An object that is not there.
        let good = weed.config(&bucket, "");
        let t = S3Target::new(HttpClient::new("good", &good).unwrap(), &good).unwrap();
        let ghost = RemoteFile {
            id: "ghost".into(),
            name: "ghost".into(),
            size: 10,
            mtime_ms: 0,
            is_dir: false,
            sha1: None,
            md5: None,
            url: None,
            extra: None,
        };
        let e = t.read_range(&ghost, 0, 10).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    });
}

/// A source that fails (or stalls until released) when asked for bytes at or past `from`.
struct Breaks {
    data: Bytes,
    from: u64,
    stall: bool,
    reached: AtomicBool,
    release: AtomicBool,
}

impl PartSource for Breaks {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        if offset >= self.from {
            self.reached.store(true, Ordering::SeqCst);
            while self.stall && !self.release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(std::io::Error::other("the disk went away"));
        }
        Mem(self.data.clone()).read_at(offset, len)
    }
}

#[test]
fn failed_and_dropped_uploads_leave_no_parts() {
    let weed = Weed::shared();
    let t = target(&weed, "aborts", "p/");
    runtime().block_on(async {
        let data = Bytes::from(pattern(3 * PART_SIZE, 1));
        // A read error on the third part: the upload fails and is aborted.
        let src = Arc::new(Breaks {
            data: data.clone(),
            from: 2 * PART_SIZE,
            stall: false,
            reached: AtomicBool::new(false),
            release: AtomicBool::new(false),
        });
        let mut req = request(None, "broken", data.clone(), 0);
        req.source = src;
        let e = t.upload(req).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::LocalIo, "{e}");
        assert_no_pending(&t, "p/").await;
        assert!(find(&t, &None, "broken").await.is_none());
        // An upload abandoned half-way (its future dropped): aborted in the background.
        let src = Arc::new(Breaks {
            data: data.clone(),
            from: 2 * PART_SIZE,
            stall: true,
            reached: AtomicBool::new(false),
            release: AtomicBool::new(false),
        });
        let mut req = request(None, "dropped", data.clone(), 0);
        req.source = src.clone();
        let started = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::select! {
                _ = t.upload(req) => panic!("the stalled upload finished"),
                _ = async {
                    while !src.reached.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // Let the first parts land.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                } => {}
            }
        })
        .await;
        src.release.store(true, Ordering::SeqCst);
        assert!(started.is_ok(), "the upload never reached its third part");
        let mut pending = vec![];
        for _ in 0..100 {
            pending = t.client().list_multipart_uploads("p/").await.unwrap();
            if pending.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            pending.is_empty(),
            "the dropped upload was not aborted: {pending:?}"
        );
        // ListParts and an explicit abort, as crash recovery will use them.
        let id = t
            .client()
            .create_multipart("p/manual", &Default::default())
            .await
            .unwrap();
        let etag = t
            .client()
            .upload_part("p/manual", &id, 1, data.slice(..PART_SIZE as usize))
            .await
            .unwrap();
        let parts = t.client().list_parts("p/manual", &id).await.unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].number, parts[0].size), (1, PART_SIZE));
        assert_eq!(parts[0].etag, etag);
        let pending = t.client().list_multipart_uploads("p/").await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].upload_id, id);
        t.client().abort_multipart("p/manual", &id).await.unwrap();
        // Aborting again is harmless.
        t.client().abort_multipart("p/manual", &id).await.unwrap();
        assert_no_pending(&t, "p/").await;
    });
}

fn run(args: &[&str], home: &Path) -> std::process::Output {
    run_env(args, home, &[])
}

fn run_env(args: &[&str], home: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--log-file")
        .arg(home.join("log"))
        .args(args)
        .env("UPLOADFS_LOG", "trace")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .env_remove("AWS_CONFIG_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run uploadfs")
}

#[test]
fn cli_put_get_and_probe() {
    let weed = Weed::shared();
    let bucket = weed.bucket("cli");
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    let config = weed.config_file(h, "bucket", &bucket, "team");
    let cfg = config.to_str().unwrap();
    let out = run(&["config", "check", "--probe", "--config", cfg], h);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bucket: ok (s3 at"));
    for size in [10, PART_SIZE * 2 + 3] {
        let src = h.join(format!("in{size}"));
        std::fs::write(&src, pattern(size, 5)).unwrap();
        let dest = format!("bucket:docs/sub/in{size}");
        let out = run(
            &["put", "-q", src.to_str().unwrap(), &dest, "--config", cfg],
            h,
        );
        assert!(
            out.status.success(),
            "put: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let back = h.join(format!("out{size}"));
        let out = run(
            &["get", "-q", &dest, back.to_str().unwrap(), "--config", cfg],
            h,
        );
        assert!(
            out.status.success(),
            "get: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(std::fs::read(&back).unwrap() == pattern(size, 5), "{size}");
    }
    // Keys land below the prefix, folders as key prefixes.
    let c = weed.config(&bucket, "");
    let t = S3Target::new(HttpClient::new("c", &c).unwrap(), &c).unwrap();
    runtime().block_on(async {
        let info = t.client().head_object("team/docs/sub/in10").await.unwrap();
        assert_eq!(info.expect("key").size, 10);
    });
    // A wrong secret: refused, named, never printed.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(SECRET_KEY, "wrong-secret-0123456789");
    std::fs::write(&config, text).unwrap();
    let src = h.join("in10");
    let out = run(
        &[
            "put",
            "-q",
            src.to_str().unwrap(),
            "bucket:x",
            "--config",
            cfg,
        ],
        h,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused"), "{err}");
    assert!(err.contains("secret_access_key"), "{err}");
    let log = std::fs::read_to_string(h.join("log")).unwrap_or_default();
    assert!(!log.is_empty());
    for text in [&log, &err.to_string()] {
        assert!(!text.contains(SECRET_KEY));
        assert!(!text.contains("wrong-secret-0123456789"));
    }
}

#[test]
fn keys_from_the_environment_and_aws_files() {
    use std::os::unix::fs::PermissionsExt;
    let weed = Weed::shared();
    let bucket = weed.bucket("chain");
    let home = tempfile::tempdir().unwrap();
    let h = home.path();
    // No keys in the table: the file needs no mode 600.
    let config = h.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[targets.b]\nkind = \"s3\"\nendpoint = \"{}\"\nbucket = \"{bucket}\"\n\
             path_style = true\nretry_seconds = 5\n",
            weed.endpoint
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = config.to_str().unwrap();
    let probe = |env: &[(&str, &str)]| {
        let out = run_env(&["config", "check", "--probe", "--config", cfg], h, env);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!text.contains(SECRET_KEY), "a secret was printed: {text}");
        assert!(
            !text.contains("wrong-secret-456"),
            "a secret was printed: {text}"
        );
        (out.status.success(), text)
    };
    let (ok, text) = probe(&[]);
    assert!(!ok && text.contains("no S3 keys"), "{text}");
    let (ok, text) = probe(&[
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = probe(&[
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", "wrong-secret-456"),
    ]);
    assert!(!ok && text.contains("refused"), "{text}");
    std::fs::create_dir_all(h.join(".aws")).unwrap();
    std::fs::write(
        h.join(".aws/credentials"),
        format!(
            "[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    let (ok, text) = probe(&[]);
    assert!(ok, "{text}");
    std::fs::write(
        h.join(".aws/config"),
        format!(
            "[profile other]\nregion = us-east-1\naws_access_key_id = {ACCESS_KEY}\n\
             aws_secret_access_key = {SECRET_KEY}\n"
        ),
    )
    .unwrap();
    let (ok, text) = probe(&[("AWS_PROFILE", "other")]);
    assert!(ok, "{text}");
    let (ok, text) = probe(&[("AWS_PROFILE", "missing")]);
    assert!(!ok && text.contains("profile missing"), "{text}");
    // A session token rides in the signed URL's query: it must not reach the trace log.
    let token = "session-token-secret-789";
    let _ = probe(&[
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_SESSION_TOKEN", token),
    ]);
    let log = std::fs::read_to_string(h.join("log")).unwrap_or_default();
    assert!(
        !log.is_empty(),
        "the trace log is empty, so it proves nothing"
    );
    assert!(!log.contains(token), "the session token is in the log");
    assert!(!log.contains(SECRET_KEY), "the secret key is in the log");
}

#[test]
fn debug_output_has_no_secret() {
    let weed = Weed::shared();
    let cfg = weed.config("any-bucket", "p/");
    let http = HttpClient::new("d", &cfg).unwrap();
    let t = S3Target::new(http.clone(), &cfg).unwrap();
    for text in [
        format!("{cfg:?}"),
        format!("{http:?}"),
        format!("{t:?}"),
        format!("{:?}", t.client()),
    ] {
        assert!(!text.contains(SECRET_KEY), "secret in Debug output: {text}");
        assert!(!text.is_empty());
    }
}
