//! The filesystem core driven directly (no FUSE) against `uploadfs serve` over loopback,
//! for the semantics that tools only hit by timing: when a commit happens (flush with new
//! data, not twice, not from another process, deferred to release for empty files),
//! renames of pending files, replacing renames, sticky failures that keep the stage and are
//! retried, unlink of an open file, remote changes merged into listings, hidden files with
//! `--keep-remote`, and inode numbers that survive a restart.

mod common;

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, sha1_hex, TestServer};
use uploadfs::catalog::{Catalog, NodeState, ROOT_INO};
use uploadfs::config::TargetKind;
use uploadfs::fs::{Fs, FsOptions};
use uploadfs::remote::Target;

/// The kind these tests use: Box is the `local` target's protocol (folders, rename,
/// versions, case-insensitive names).
const KIND: TargetKind = TargetKind::Box;

struct Env {
    s: TestServer,
    target: Arc<dyn Target>,
    state: tempfile::TempDir,
    probes: std::cell::Cell<u64>,
}

impl Env {
    fn new() -> Env {
        let s = TestServer::new();
        let target = s.target(KIND);
        Env {
            s,
            target,
            state: tempfile::tempdir().unwrap(),
            probes: std::cell::Cell::new(0),
        }
    }

    fn fs(&self, keep_remote: bool) -> Arc<Fs> {
        self.fs_limited(keep_remote, None)
    }

    fn fs_limited(&self, keep_remote: bool, max_file_size: Option<u64>) -> Arc<Fs> {
        let catalog =
            Arc::new(Catalog::open(&self.state.path().join("catalog.db")).expect("catalog"));
        Arc::new(
            Fs::new(
                self.target.clone(),
                catalog,
                FsOptions {
                    target_name: "t".into(),
                    token_source: "$TEST_TOKEN".to_string(),
                    cache_dir: self.state.path().join("cache"),
                    cache_size: 64 << 20,
                    keep_remote,
                    uid: 0,
                    gid: 0,
                    max_file_size,
                    list_ttl: Duration::from_secs(5),
                },
            )
            .expect("fs"),
        )
    }

    fn files(&self) -> Vec<(String, u64, String)> {
        let mut v = self.s.files(KIND.as_str());
        v.sort();
        v
    }

    /// Requests the server has answered, not counting the introspection calls made here.
    fn requests(&self) -> u64 {
        let n = self.s.requests();
        let probes = self.probes.get() + 1;
        self.probes.set(probes);
        n - probes
    }
}

fn me() -> u32 {
    std::process::id()
}

fn create(e: &Env, fs: &Fs, name: &str) -> (u64, u64) {
    let (attr, fh) =
        e.s.rt
            .block_on(fs.create(
                ROOT_INO,
                OsStr::new(name),
                0o644,
                libc::O_WRONLY | libc::O_CREAT,
                0,
                0,
                me(),
            ))
            .expect("create");
    (attr.ino, fh)
}

#[test]
fn flush_commits_once_and_dup_flushes_wait_for_data() {
    let e = Env::new();
    let fs = e.fs(false);
    let rt = &e.s.rt;
    let (_ino, fh) = create(&e, &fs, "a.txt");
    // A flush before any data from a process that holds no other descriptor of the file
    // is the file's last close: the empty file lands before it returns. (A shell's
    // redirection closing its duplicate holds one: tests/posix_corners.rs.)
    rt.block_on(fs.flush(fh, me())).unwrap();
    assert_eq!(e.files(), vec![("a.txt".into(), 0, sha1_hex(b""))]);
    rt.block_on(fs.write(fh, 0, b"hello")).unwrap();
    rt.block_on(fs.flush(fh, me())).unwrap();
    assert_eq!(
        e.files(),
        vec![("a.txt".into(), 5, sha1_hex(b"hello"))],
        "the flush with data commits and its result is close()'s"
    );
    let before = e.requests();
    rt.block_on(fs.flush(fh, me())).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    assert_eq!(e.requests(), before, "nothing new: no second upload");
}

#[test]
fn empty_file_commits_at_release_and_other_process_flush_defers() {
    let e = Env::new();
    let fs = e.fs(false);
    let rt = &e.s.rt;
    let (_, fh) = create(&e, &fs, "empty");
    // An empty file lands before close() returns, like a written one.
    rt.block_on(fs.flush(fh, me())).unwrap();
    assert_eq!(e.files(), vec![("empty".into(), 0, sha1_hex(b""))]);
    let before = e.requests();
    rt.block_on(fs.release(fh)).unwrap();
    assert_eq!(
        e.requests(),
        before,
        "the release has nothing left to upload"
    );

    // A forked child closing its copy of the descriptor must not commit half a file.
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let (_, fh) = create(&e, &fs, "forked");
    rt.block_on(fs.write(fh, 0, b"part one ")).unwrap();
    rt.block_on(fs.flush(fh, child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(!e.files().iter().any(|f| f.0 == "forked"));
    rt.block_on(fs.write(fh, 9, b"part two")).unwrap();
    rt.block_on(fs.flush(fh, me())).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    assert!(e
        .files()
        .contains(&("forked".into(), 17, sha1_hex(b"part one part two"))));
}

#[test]
fn rename_of_pending_file_is_local_and_replacing_rename_replaces() {
    let e = Env::new();
    let fs = e.fs(false);
    let rt = &e.s.rt;
    // A committed "target.bin".
    let (_, fh) = create(&e, &fs, "target.bin");
    rt.block_on(fs.write(fh, 0, b"old content")).unwrap();
    rt.block_on(fs.flush(fh, me())).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    // rsync style: write a temporary name, rename over the target before closing.
    let (_, fh) = create(&e, &fs, ".target.bin.XyZ123");
    rt.block_on(fs.write(fh, 0, b"new content!")).unwrap();
    rt.block_on(fs.rename(
        ROOT_INO,
        OsStr::new(".target.bin.XyZ123"),
        ROOT_INO,
        OsStr::new("target.bin"),
        0,
    ))
    .unwrap();
    assert_eq!(
        e.files(),
        vec![("target.bin".into(), 11, sha1_hex(b"old content"))],
        "a pending rename is local only"
    );
    rt.block_on(fs.flush(fh, me())).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    assert_eq!(
        e.files(),
        vec![("target.bin".into(), 12, sha1_hex(b"new content!"))]
    );
    assert!(rt
        .block_on(fs.lookup(ROOT_INO, OsStr::new(".target.bin.XyZ123")))
        .is_err());
    // Case-insensitive names (Box): another case finds the same file.
    let a = rt
        .block_on(fs.lookup(ROOT_INO, OsStr::new("TARGET.BIN")))
        .unwrap();
    assert_eq!(a.size, 12);
}

#[test]
fn failed_upload_is_sticky_keeps_the_stage_and_is_retried() {
    let e = Env::new();
    let fs = e.fs(false);
    let rt = &e.s.rt;
    e.s.control(serde_json::json!({ "max_file_size": 1000 }));
    let data = pattern(5000, 1);
    let (ino, fh) = create(&e, &fs, "big.bin");
    rt.block_on(fs.write(fh, 0, &data)).unwrap();
    assert_eq!(
        rt.block_on(fs.flush(fh, me())).map_err(|e| e.errno),
        Err(libc::EFBIG)
    );
    assert_eq!(
        rt.block_on(fs.write(fh, 5000, b"x")).map_err(|e| e.errno),
        Err(libc::EFBIG)
    );
    assert_eq!(
        rt.block_on(fs.flush(fh, me())).map_err(|e| e.errno),
        Err(libc::EFBIG)
    );
    rt.block_on(fs.release(fh)).unwrap();
    assert!(e.files().is_empty(), "nothing partial may land remotely");
    let pending = fs.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.state, NodeState::Failed);
    assert!(pending[0]
        .1
        .last_error
        .as_deref()
        .unwrap()
        .contains("big.bin"));
    assert_eq!(fs.getattr(ino).unwrap().size, 5000, "staged data kept");
    assert_eq!(
        fs.getxattr(ino, OsStr::new("user.uploadfs.state")).unwrap(),
        b"failed"
    );
    // The limit goes away; the next writer's close uploads the kept data.
    e.s.control(serde_json::json!({ "max_file_size": 1u64 << 40 }));
    let fh = rt.block_on(fs.open(ino, libc::O_WRONLY, me())).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    assert_eq!(e.files(), vec![("big.bin".into(), 5000, sha1_hex(&data))]);
    assert!(fs.pending().is_empty());
}

#[test]
fn unlink_of_open_file_uploads_nothing() {
    let e = Env::new();
    let fs = e.fs(false);
    let rt = &e.s.rt;
    let (_, fh) = create(&e, &fs, "gone.txt");
    rt.block_on(fs.write(fh, 0, b"data")).unwrap();
    rt.block_on(fs.unlink(ROOT_INO, OsStr::new("gone.txt")))
        .unwrap();
    rt.block_on(fs.flush(fh, me())).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    assert!(e.files().is_empty());
    assert!(std::fs::read_dir(e.state.path().join("cache/stage"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn listings_merge_remote_changes_and_inodes_survive_restart() {
    let e = Env::new();
    let rt = &e.s.rt;
    let fs = e.fs(false);
    let (ino, fh) = create(&e, &fs, "mine.txt");
    rt.block_on(fs.write(fh, 0, b"mine")).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    let dir = rt
        .block_on(fs.mkdir(ROOT_INO, OsStr::new("sub"), 0o755, 0, 0))
        .unwrap();
    // Someone else deletes mine.txt and uploads other.txt.
    let remote = rt.block_on(e.target.list(&None)).unwrap();
    let mine = remote.iter().find(|f| f.name == "mine.txt").unwrap();
    rt.block_on(e.target.delete(mine)).unwrap();
    let src = e.state.path().join("other");
    std::fs::write(&src, b"theirs").unwrap();
    rt.block_on(e.target.upload(uploadfs::remote::UploadRequest {
        parent: None,
        name: "other.txt".into(),
        size: 6,
        digests: Default::default(),
        mtime_ms: 0,
        replaces: None,
        resume_session: None,
        source: Arc::new(uploadfs::remote::FileSource::open(&src).unwrap()),
        observer: Arc::new(uploadfs::remote::ByteCounter::default()),
    }))
    .unwrap();
    rt.block_on(fs.refresh(ROOT_INO, true));
    assert_eq!(
        rt.block_on(fs.lookup(ROOT_INO, OsStr::new("mine.txt")))
            .map_err(|e| e.errno),
        Err(libc::ENOENT)
    );
    let other = rt
        .block_on(fs.lookup(ROOT_INO, OsStr::new("other.txt")))
        .unwrap();
    let fh = rt
        .block_on(fs.open(other.ino, libc::O_RDONLY, me()))
        .unwrap();
    assert_eq!(&rt.block_on(fs.read(fh, 0, 100)).unwrap()[..], b"theirs");
    rt.block_on(fs.release(fh)).unwrap();
    assert_ne!(other.ino, ino, "inode numbers are never reused");
    drop(fs);
    // A new instance on the same catalog: same inode numbers.
    let fs = e.fs(false);
    assert_eq!(
        rt.block_on(fs.lookup(ROOT_INO, OsStr::new("other.txt")))
            .unwrap()
            .ino,
        other.ino
    );
    assert_eq!(
        rt.block_on(fs.lookup(ROOT_INO, OsStr::new("sub")))
            .unwrap()
            .ino,
        dir.ino
    );
}

#[test]
fn keep_remote_hides_deleted_files_from_later_listings() {
    let e = Env::new();
    let rt = &e.s.rt;
    let fs = e.fs(true);
    let (_, fh) = create(&e, &fs, "kept.txt");
    rt.block_on(fs.write(fh, 0, b"keep me")).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    rt.block_on(fs.unlink(ROOT_INO, OsStr::new("kept.txt")))
        .unwrap();
    assert_eq!(e.files().len(), 1, "--keep-remote never deletes");
    rt.block_on(fs.refresh(ROOT_INO, true));
    assert_eq!(
        rt.block_on(fs.lookup(ROOT_INO, OsStr::new("kept.txt")))
            .map_err(|e| e.errno),
        Err(libc::ENOENT)
    );
    drop(fs);
    let fs = e.fs(true);
    rt.block_on(fs.refresh(ROOT_INO, true));
    assert_eq!(
        rt.block_on(fs.lookup(ROOT_INO, OsStr::new("kept.txt")))
            .map_err(|e| e.errno),
        Err(libc::ENOENT),
        "hidden across restarts"
    );
}

#[test]
fn truncate_without_handle_rewrites_and_edit_keeps_the_rest() {
    let e = Env::new();
    let rt = &e.s.rt;
    let fs = e.fs(false);
    let (ino, fh) = create(&e, &fs, "t.bin");
    rt.block_on(fs.write(fh, 0, b"0123456789")).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    // truncate(1) style: no handle, commits at once.
    rt.block_on(fs.setattr(
        ino,
        uploadfs::fs::SetAttr {
            size: Some(4),
            ..Default::default()
        },
    ))
    .unwrap();
    assert_eq!(e.files(), vec![("t.bin".into(), 4, sha1_hex(b"0123"))]);
    // Open without O_TRUNC, write in the middle: the rest is fetched and kept.
    let fh = rt.block_on(fs.open(ino, libc::O_RDWR, me())).unwrap();
    rt.block_on(fs.write(fh, 1, b"X")).unwrap();
    assert_eq!(&rt.block_on(fs.read(fh, 0, 100)).unwrap()[..], b"0X23");
    rt.block_on(fs.flush(fh, me())).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    assert_eq!(e.files(), vec![("t.bin".into(), 4, sha1_hex(b"0X23"))]);
    // An open for writing that writes nothing fetches and uploads nothing.
    let before = e.requests();
    let fh = rt.block_on(fs.open(ino, libc::O_WRONLY, me())).unwrap();
    rt.block_on(fs.flush(fh, me())).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    assert_eq!(e.requests(), before);
}

#[test]
fn corrupted_remote_content_fails_a_whole_read_with_eio() {
    let e = Env::new();
    let rt = &e.s.rt;
    let fs = e.fs(false);
    let data = pattern(3 * 1024 * 1024 + 5, 3);
    let (ino, fh) = create(&e, &fs, "v.bin");
    rt.block_on(fs.write(fh, 0, &data)).unwrap();
    rt.block_on(fs.release(fh)).unwrap();
    // A clean sequential read passes the SHA-1 check.
    let read_all = |fs: &Fs| -> Result<Vec<u8>, i32> {
        let fh = rt.block_on(fs.open(ino, libc::O_RDONLY, me()))?;
        let mut out = vec![];
        let r = loop {
            match rt.block_on(fs.read(fh, out.len() as u64, 1 << 20)) {
                Ok(b) if b.is_empty() => break Ok(()),
                Ok(b) => out.extend_from_slice(&b),
                Err(e) => break Err(e),
            }
        };
        rt.block_on(fs.release(fh)).unwrap();
        r.map(|_| out).map_err(|e| e.errno)
    };
    assert_eq!(read_all(&fs).unwrap(), data);
    // Flip bytes in the stored blob behind the server's back (same size).
    let mut stack = vec![e.s.dir.path().join("data").join("blobs")];
    let mut path = None;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.metadata().unwrap().len() == data.len() as u64 {
                path = Some(p);
            }
        }
    }
    let path = path.expect("the stored blob");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2 * 1024 * 1024] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    // A fresh mount instance (empty block cache) must refuse to hand out the bad file.
    drop(fs);
    let fs = e.fs(false);
    assert_eq!(read_all(&fs), Err(libc::EIO));
}

#[test]
fn failed_uploads_are_retried_by_the_next_mount_but_incomplete_ones_never() {
    let e = Env::new();
    let rt = &e.s.rt;
    e.s.control(serde_json::json!({ "max_file_size": 100 }));
    let fs = e.fs_limited(false, Some(1000));
    // Fails remotely (server limit): complete data, state failed.
    let (_, fh) = create(&e, &fs, "retry.bin");
    rt.block_on(fs.write(fh, 0, &pattern(500, 1))).unwrap();
    assert_eq!(
        rt.block_on(fs.flush(fh, me())).map_err(|e| e.errno),
        Err(libc::EFBIG)
    );
    rt.block_on(fs.release(fh)).unwrap();
    // Over the configured limit while writing: EFBIG at write, only a prefix staged.
    let (ino, fh) = create(&e, &fs, "partial.bin");
    rt.block_on(fs.write(fh, 0, &pattern(800, 2))).unwrap();
    assert_eq!(
        rt.block_on(fs.write(fh, 800, &[0u8; 400]))
            .map_err(|e| e.errno),
        Err(libc::EFBIG)
    );
    assert_eq!(
        rt.block_on(fs.flush(fh, me())).map_err(|e| e.errno),
        Err(libc::EFBIG)
    );
    rt.block_on(fs.release(fh)).unwrap();
    assert_eq!(
        fs.getxattr(ino, OsStr::new("user.uploadfs.state")).unwrap(),
        b"incomplete"
    );
    drop(fs);
    e.s.control(serde_json::json!({ "max_file_size": 1u64 << 40 }));
    let fs = e.fs_limited(false, Some(1000));
    assert_eq!(rt.block_on(fs.retry_failed()), 1);
    assert_eq!(
        e.files(),
        vec![("retry.bin".into(), 500, sha1_hex(&pattern(500, 1)))],
        "the failed file is uploaded; the incomplete one never"
    );
    let pending = fs.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.state, NodeState::Incomplete);
}
