//! Shared folders on real mounts: two daemons of one target (two mount points, two state
//! and cache directories, one `uploadfs serve`) and `uploadfs put` straight to the server.
//! With a short listing TTL, each mount sees the other's writes, deletes and new files
//! after the TTL; a file edited in one mount while the other holds it open for writing is
//! never overwritten: the second close lands beside it as the conflict copy, and both
//! writers' bytes are on the server. Every kind with remote overwrite or versions (Box,
//! Cloudreve, Dyson) and S3; Fluxer and Virola (checked by listing) for the main two.
//! Needs /dev/fuse and root or fusermount3, like tests/mount_scenarios.rs.

mod common;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::IntoRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::mount::{run_bounded, text, xattr, Mount};
use common::remote::Remote;
use common::{sha1_hex, TestServer, BIN};
use uploadfs::config::TargetKind;

/// The listing TTL of these mounts, ms: short so the tests wait little.
const TTL_MS: u64 = 400;

/// Long enough for the listing TTL and the kernel's 1 s attribute and entry caches.
const SETTLE: Duration = Duration::from_millis(1600);

/// The remote end for `kind`: a test server, or a fresh bucket of the S3 cluster.
fn remote(kind: TargetKind) -> Remote {
    match kind {
        TargetKind::S3 => Remote::s3("shared"),
        _ => Remote::serve(TestServer::new(), kind),
    }
}

/// Two mounts `a` and `b` of target `t` at `r`, and the config file.
fn two_mounts(r: &Remote) -> (Mount, Mount, std::path::PathBuf) {
    let cfg = r.config(&format!("list_ttl_ms = {TTL_MS}\n"), 10);
    let wa = r.work().join("a");
    let wb = r.work().join("b");
    std::fs::create_dir_all(&wa).unwrap();
    std::fs::create_dir_all(&wb).unwrap();
    let a = Mount::with_config(&wa, "t", &cfg, &[]);
    let b = Mount::with_config(&wb, "t", &cfg, &[]);
    (a, b, cfg)
}

/// Close `f` and fail the test unless `close()` returned 0 (dropping a `File` ignores it).
fn close(f: File) {
    let fd = f.into_raw_fd();
    let r = unsafe { libc::close(fd) };
    assert_eq!(r, 0, "close failed: {}", std::io::Error::last_os_error());
}

/// Write a whole file through a mount, checking `close()`.
fn write_file(p: &Path, data: &[u8]) {
    let mut f = File::create(p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    f.write_all(data).unwrap();
    close(f);
}

/// Poll until reading `p` gives `want` (the TTL and the kernel's caches pass first).
fn wait_read(p: &Path, want: &[u8], what: &str) {
    std::thread::sleep(SETTLE);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = std::fs::read(p).ok();
        if got.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} reads {:?}, expected {:?}",
            p.display(),
            got.map(|g| String::from_utf8_lossy(&g).into_owned()),
            String::from_utf8_lossy(want)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Names in directory `d`, sorted.
fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// The remote's files: name → sha1.
fn on_server(r: &Remote) -> std::collections::BTreeMap<String, String> {
    r.stored()
        .into_iter()
        .map(|(n, (_, sha))| (n, sha))
        .collect()
}

/// A file written in one mount is read right in the other after the TTL, also when the
/// other has an older version cached; a delete and a new file are seen too.
fn writes_are_seen_across_mounts(kind: TargetKind) {
    let r = remote(kind);
    let (a, b, _) = two_mounts(&r);
    write_file(&a.path("f.txt"), b"one from a\n");
    wait_read(&b.path("f.txt"), b"one from a\n", "b after a's create");

    // b has it cached now: a new, longer version from a replaces what b reads.
    write_file(&a.path("f.txt"), b"two from a, longer than the first\n");
    wait_read(
        &b.path("f.txt"),
        b"two from a, longer than the first\n",
        "b after a's overwrite",
    );
    // The other way, shorter.
    write_file(&b.path("f.txt"), b"three\n");
    wait_read(&a.path("f.txt"), b"three\n", "a after b's overwrite");
    assert!(
        xattr(&a.path("f.txt"), "user.uploadfs.validated").is_some(),
        "no validation time on a's copy"
    );

    // A new file appears, a deleted one goes.
    write_file(&a.path("g.txt"), b"new\n");
    std::fs::remove_file(a.path("f.txt")).unwrap();
    std::thread::sleep(SETTLE);
    assert_eq!(names(&b.dir), vec!["g.txt".to_string()], "b's listing");
    let err = File::open(b.path("f.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    assert_eq!(std::fs::read(b.path("g.txt")).unwrap(), b"new\n");
    drop((a, b));
}

/// A file deleted remotely while a mount has it cached, and even open for reading,
/// answers ENOENT at the next open after the TTL.
fn a_remote_delete_is_enoent_at_open(kind: TargetKind) {
    let r = remote(kind);
    let (a, b, _) = two_mounts(&r);
    write_file(&a.path("gone.txt"), b"soon gone\n");
    wait_read(&b.path("gone.txt"), b"soon gone\n", "b before the delete");
    let held = File::open(b.path("gone.txt")).unwrap();
    std::fs::remove_file(a.path("gone.txt")).unwrap();
    std::thread::sleep(SETTLE);
    let err = File::open(b.path("gone.txt")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    drop(held);
    assert!(!names(&b.dir).contains(&"gone.txt".to_string()));
}

/// Mount `b` holds a file open for writing while `a` replaces it: `b`'s close succeeds,
/// but lands beside `a`'s version as the conflict copy; both contents are on the server
/// and in both mounts, and `b`'s status lists the conflict.
fn an_edit_during_an_open_write_makes_a_conflict_copy(kind: TargetKind) {
    conflict_scenario(kind, false);
}

/// The same with `b` in write-back mode: its background upload finds the other version.
fn write_back_makes_the_same_conflict_copy(kind: TargetKind) {
    conflict_scenario(kind, true);
}

fn conflict_scenario(kind: TargetKind, write_back: bool) {
    let r = remote(kind);
    let (a, mut b, _) = two_mounts(&r);
    if write_back {
        b.unmount();
        b.set_extra(&["--write-back"]);
        b.mount();
    }
    write_file(&a.path("report.txt"), b"the first version\n");
    wait_read(
        &b.path("report.txt"),
        b"the first version\n",
        "b before editing",
    );

    // b opens the file for writing and starts its edit (an editor reads it first).
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(b.path("report.txt"))
        .unwrap();
    let mut head = [0u8; 4];
    f.read_at(&mut head, 0).unwrap();
    f.write_at(b"B's edit of the file\n", 0).unwrap();

    // Meanwhile a commits another version.
    let theirs = b"A's version, committed while B had it open\n".to_vec();
    write_file(&a.path("report.txt"), &theirs);

    // b's close: no error, and a's version is not overwritten.
    f.set_len(b"B's edit of the file\n".len() as u64).unwrap();
    close(f);
    let ours = b"B's edit of the file\n".to_vec();

    // Write-back: the queue uploads after close.
    let deadline = Instant::now() + Duration::from_secs(30);
    let copy_landed = |files: &std::collections::BTreeMap<String, String>| {
        files.keys().any(|n| n.starts_with("report (conflict "))
    };
    while write_back && !copy_landed(&on_server(&r)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let files = on_server(&r);
    assert_eq!(
        files.get("report.txt"),
        Some(&sha1_hex(&theirs)),
        "the other writer's version was overwritten: {files:?}"
    );
    let copies: Vec<&String> = files
        .keys()
        .filter(|n| n.starts_with("report (conflict ") && n.ends_with(").txt"))
        .collect();
    assert_eq!(copies.len(), 1, "one conflict copy expected: {files:?}");
    let copy = copies[0].clone();
    assert_eq!(files[&copy], sha1_hex(&ours), "the copy holds our edit");

    let st = b.status_json();
    let conflicts = st["mounts"][0]["conflicts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(conflicts.len(), 1, "status lists the conflict: {st}");
    assert_eq!(conflicts[0]["path"], "/report.txt", "{st}");
    assert!(
        b.log().contains("changed remotely while it was open here"),
        "no warning logged"
    );

    // Both mounts show both files with their contents.
    for m in [&a, &b] {
        wait_read(
            &m.path("report.txt"),
            &theirs,
            "their version under the name",
        );
        wait_read(&m.path(&copy), &ours, "our version as the copy");
    }
}

/// A change made with `uploadfs put` straight to the server, while a mount has the file
/// cached (and open for reading), is read by the mount after the TTL.
fn a_put_to_the_server_is_read_after_the_ttl(kind: TargetKind) {
    let r = remote(kind);
    let (a, b, cfg) = two_mounts(&r);
    drop(b);
    write_file(&a.path("data.bin"), b"the mount's version\n");
    assert_eq!(
        std::fs::read(a.path("data.bin")).unwrap(),
        b"the mount's version\n"
    );
    // The kernel sends the releases of the write and of that read after close() has
    // returned; a descriptor opened before they arrive shares the local copy, which keeps
    // its version until every descriptor on it is closed (SEMANTICS, Shared folders). Let
    // them arrive, so the held descriptor reads the landed remote file.
    std::thread::sleep(SETTLE);
    let held = File::open(a.path("data.bin")).unwrap();
    let src = r.work().join("newer.bin");
    let newer = b"a newer version, put straight to the server by someone else\n";
    std::fs::write(&src, newer).unwrap();
    let out = run_bounded(
        Command::new(BIN).args([
            "put",
            "--quiet",
            src.to_str().unwrap(),
            "t:data.bin",
            "--config",
            cfg.to_str().unwrap(),
        ]),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "put: {}", text(&out.stderr));
    wait_read(&a.path("data.bin"), newer, "the mount after the put");
    drop(held);
}

common::per_kind!(writes_are_seen_across_mounts;
    seen_box => Box, seen_cloudreve => Cloudreve, seen_dyson => Dyson, seen_s3 => S3);
common::per_kind!(a_remote_delete_is_enoent_at_open;
    delete_box => Box, delete_cloudreve => Cloudreve, delete_dyson => Dyson, delete_s3 => S3);
common::per_kind!(an_edit_during_an_open_write_makes_a_conflict_copy;
    conflict_box => Box, conflict_cloudreve => Cloudreve, conflict_dyson => Dyson,
    conflict_s3 => S3);
// The kinds without versions or a metadata request: checked by listing.
common::per_kind!(an_edit_during_an_open_write_makes_a_conflict_copy;
    conflict_fluxer => Fluxer, conflict_virola => Virola);
common::per_kind!(writes_are_seen_across_mounts;
    seen_fluxer => Fluxer, seen_virola => Virola);
common::per_kind!(write_back_makes_the_same_conflict_copy;
    write_back_conflict_box => Box, write_back_conflict_dyson => Dyson);
common::per_kind!(a_put_to_the_server_is_read_after_the_ttl;
    put_box => Box, put_cloudreve => Cloudreve, put_dyson => Dyson, put_s3 => S3);

// ----- the clients' metadata request and conditional upload ------------------------------

/// `stat` answers the version a file has now: the same after nothing happened, another
/// after a new version (Box, Cloudreve: same id; Dyson: the old id is gone), nothing
/// after a delete.
fn stat_follows_versions(kind: TargetKind) {
    use uploadfs::remote::same_version;
    let s = TestServer::new();
    let t = s.target(kind);
    let v1 =
        s.rt.block_on(t.upload(s.upload_request("v.txt", b"version one\n", None)))
            .unwrap();
    let now = s.rt.block_on(t.stat(&v1)).unwrap().expect("stat finds it");
    assert!(same_version(&now, &v1), "{now:?} vs {v1:?}");
    let v2 =
        s.rt.block_on(t.upload(s.upload_request("v.txt", b"version two!\n", Some(v1.clone()))))
            .unwrap();
    if !t.capabilities().replaces_in_place {
        // The caller deletes the old file (what the mount and `put` do).
        s.rt.block_on(t.delete(&v1)).unwrap();
    }
    match s.rt.block_on(t.stat(&v1)).unwrap() {
        Some(now) => assert!(!same_version(&now, &v1), "a new version looks the same"),
        None => assert_ne!(v2.id, v1.id, "the file vanished, yet kept its id"),
    }
    s.rt.block_on(t.delete(&v2)).unwrap();
    assert_eq!(
        s.rt.block_on(t.stat(&v2)).unwrap(),
        None,
        "stat of a deleted file"
    );
}

common::per_kind!(stat_follows_versions;
    stat_box => Box, stat_cloudreve => Cloudreve, stat_dyson => Dyson);

/// Box: a new version names the etag it replaces (`If-Match`), on the direct upload and
/// on a session's commit; a stale etag gets `ErrorKind::Changed` and nothing is written.
#[test]
fn box_new_versions_are_conditional() {
    use uploadfs::remote::ErrorKind;
    let s = TestServer::new();
    let t = s.target(TargetKind::Box);
    for (name, size) in [("small.bin", 1000usize), ("big.bin", 20_000_000 + 7)] {
        let first = common::pattern(size, 1);
        let v1 =
            s.rt.block_on(t.upload(s.upload_request(name, &first, None)))
                .unwrap();
        let seen = s.rt.block_on(t.stat(&v1)).unwrap().unwrap();
        assert!(seen.extra.is_some(), "stat gives the etag");
        // Someone else commits a version.
        let theirs = common::pattern(size, 2);
        s.rt.block_on(t.upload(s.upload_request(name, &theirs, Some(v1.clone()))))
            .unwrap();
        // Ours names the etag seen before theirs: refused, theirs stays.
        let ours = common::pattern(size, 3);
        let err =
            s.rt.block_on(
                t.upload_unless_changed(s.upload_request(name, &ours, Some(v1.clone())), &seen),
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Changed, "{name}: {err}");
        s.assert_stored("box", name, &theirs);
        // With the current etag it goes through.
        let fresh = s.rt.block_on(t.stat(&v1)).unwrap().unwrap();
        s.rt.block_on(
            t.upload_unless_changed(s.upload_request(name, &ours, Some(v1.clone())), &fresh),
        )
        .unwrap();
        s.assert_stored("box", name, &ours);
    }
}

/// S3: the same with `If-Match` on PutObject and on CompleteMultipartUpload.
#[test]
fn s3_new_versions_are_conditional() {
    use common::server::file_request;
    use uploadfs::remote::ErrorKind;
    let r = Remote::s3("conditional");
    let t = r.target();
    let dir = r.work().to_path_buf();
    for (name, size) in [("small.bin", 1000usize), ("big.bin", 9 * 1024 * 1024 + 7)] {
        let v1 = r
            .block_on(t.upload(file_request(&dir, name, &common::pattern(size, 1), None)))
            .unwrap();
        let seen = r.block_on(t.stat(&v1)).unwrap().unwrap();
        assert!(seen.extra.is_some(), "stat gives the ETag");
        let theirs = common::pattern(size, 2);
        r.block_on(t.upload(file_request(&dir, name, &theirs, Some(v1.clone()))))
            .unwrap();
        let ours = common::pattern(size, 3);
        let err = r
            .block_on(
                t.upload_unless_changed(file_request(&dir, name, &ours, Some(v1.clone())), &seen),
            )
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Changed, "{name}: {err}");
        r.assert_stored(name, &theirs);
        let fresh = r.block_on(t.stat(&v1)).unwrap().unwrap();
        r.block_on(
            t.upload_unless_changed(file_request(&dir, name, &ours, Some(v1.clone())), &fresh),
        )
        .unwrap();
        r.assert_stored(name, &ours);
    }
}

// ----- close-to-open in the core, without FUSE ---------------------------------------------

/// An open after the TTL checks the file by itself (no lookup or listing in between, as
/// when the kernel still holds the name): a new version is read, a deleted file is ENOENT.
fn open_revalidates_by_itself(kind: TargetKind) {
    use std::ffi::OsStr;
    use std::sync::Arc;
    use uploadfs::catalog::{Catalog, ROOT_INO};
    use uploadfs::fs::{Fs, FsOptions};
    let s = TestServer::new();
    let t = s.target(kind);
    let state = tempfile::tempdir().unwrap();
    let catalog = Arc::new(Catalog::open(&state.path().join("catalog.db")).unwrap());
    let ttl = Duration::from_millis(TTL_MS);
    let fs = Fs::new(
        t.clone(),
        catalog,
        FsOptions {
            target_name: "t".into(),
            token_source: String::new(),
            cache_dir: state.path().join("cache"),
            cache_size: 16 << 20,
            keep_remote: false,
            uid: 0,
            gid: 0,
            max_file_size: None,
            list_ttl: ttl,
        },
    )
    .unwrap();
    let rt = &s.rt;
    let read_all = |ino: u64| -> Result<Vec<u8>, i32> {
        let fh = rt
            .block_on(fs.open(ino, libc::O_RDONLY, 0))
            .map_err(|e| e.errno)?;
        let data = rt.block_on(fs.read(fh, 0, 1 << 20)).unwrap().to_vec();
        rt.block_on(fs.release(fh)).unwrap();
        Ok(data)
    };
    let v1 = rt
        .block_on(t.upload(s.upload_request("f.txt", b"version one\n", None)))
        .unwrap();
    let ino = rt
        .block_on(fs.lookup(ROOT_INO, OsStr::new("f.txt")))
        .unwrap()
        .ino;
    assert_eq!(read_all(ino).unwrap(), b"version one\n");

    let newer = b"version two, from another writer\n";
    let v2 = rt
        .block_on(t.upload(s.upload_request("f.txt", newer, Some(v1.clone()))))
        .unwrap();
    if !t.capabilities().replaces_in_place {
        rt.block_on(t.delete(&v1)).unwrap();
    }
    std::thread::sleep(ttl + Duration::from_millis(100));
    let before = s.requests();
    assert_eq!(
        read_all(ino).unwrap(),
        newer,
        "an open after the TTL reads the new version"
    );
    assert_eq!(fs.getattr(ino).unwrap().size, newer.len() as u64);
    assert!(s.requests() > before, "the open asked the server");
    // Within the TTL the next open asks nothing.
    let before = s.requests();
    assert_eq!(read_all(ino).unwrap(), newer);
    assert_eq!(
        s.requests() - before,
        1,
        "only the introspection call itself"
    );

    rt.block_on(t.delete(&v2)).unwrap();
    std::thread::sleep(ttl + Duration::from_millis(100));
    assert_eq!(read_all(ino).unwrap_err(), libc::ENOENT, "a deleted file");
    assert!(fs.getattr(ino).is_err(), "the node is gone");
}

common::per_kind!(open_revalidates_by_itself;
    open_box => Box, open_cloudreve => Cloudreve, open_dyson => Dyson);
