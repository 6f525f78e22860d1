//! POSIX corners that real tools (build systems, git, editors, tar, package managers)
//! depend on, on a real mount of every kind: an empty file lands before `close()` returns,
//! so removing it and its directory never meets a late upload; a name removed and made
//! again at once is the new object; an open file that was unlinked keeps working (fstat
//! with a link count of 0, reads and writes) and never lands; directory link counts are
//! 2 + subdirectories; the parent's times advance; a non-empty directory answers
//! ENOTEMPTY, never EIO. Every case runs on every served kind and on a real S3 bucket;
//! the parts that need remote folders run where the target has them.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::mount::{assert_fails_with, bounded, sh, sh_status, Mount, TOOL_TIMEOUT};
use common::remote::Remote;
use common::TestServer;
use uploadfs::config::TargetKind;

fn remote(kind: TargetKind) -> Remote {
    Remote::serve(TestServer::new(), kind)
}

/// A remote that answers every request after `ms` milliseconds, as a real service does:
/// work left to run after `close()` returns then visibly races what follows.
fn slow_remote(kind: TargetKind, ms: u64) -> Remote {
    let s = TestServer::new();
    s.control(serde_json::json!({ "latency_ms": ms }));
    Remote::serve(s, kind)
}

/// Folders that exist remotely (not only in the mount's catalog).
fn has_folders(r: &Remote) -> bool {
    r.caps().folders
}

fn requests(r: &Remote) -> u64 {
    match r {
        Remote::Serve { s, .. } => s.requests(),
        Remote::S3(_) => 0,
    }
}

/// `touch d/x; rm d/x; rmdir d` and friends: an empty file is on the server when
/// `close()` returns, and nothing lands after it was removed.
fn empty_files(kind: TargetKind) {
    empty_files_on(&slow_remote(kind, 50));
}

fn empty_files_on(r: &Remote) {
    let kind = r.proto();
    let m = r.mount("", &[]);
    let work = r.work().to_path_buf();
    sh(
        &work,
        "mkdir mnt/d && touch mnt/d/x && rm mnt/d/x && rmdir mnt/d",
    );
    sh(
        &work,
        "mkdir mnt/e && : > mnt/e/y && rm -f mnt/e/y && rmdir mnt/e",
    );
    sh(&work, "mkdir -p mnt/f/g && touch mnt/f/g/z && rm -rf mnt/f");
    assert!(!m.dir.join("d").exists() && !m.dir.join("f").exists());
    // Landed before close() returned: checked at once, no waiting.
    sh(&work, ": > mnt/empty.txt");
    r.assert_stored("empty.txt", b"");
    // Nothing that was removed landed late.
    std::thread::sleep(Duration::from_millis(500));
    let stored = r.stored();
    for gone in ["x", "y", "z"] {
        assert!(
            !stored.contains_key(gone),
            "{kind}: {gone} landed after its removal"
        );
    }
    if has_folders(r) {
        let folders = r.folders();
        for gone in ["d", "e", "f", "g"] {
            assert!(
                !folders.contains(gone),
                "{kind}: folder {gone} is still on the server"
            );
        }
    }
    // A shell's redirection closes its own descriptor before the command writes: that
    // close uploads nothing (the same requests as one open-write-close).
    sh(&work, "echo warm > mnt/warm.txt");
    let before = requests(r);
    std::fs::write(m.dir.join("plain.txt"), b"hi\n").unwrap();
    let plain = requests(r) - before;
    let before = requests(r);
    sh(&work, "echo hi > mnt/redirected.txt");
    let redirected = requests(r) - before;
    assert!(
        redirected <= plain,
        "{kind}: a redirection cost {redirected} requests, a plain write {plain}"
    );
    r.assert_stored("redirected.txt", b"hi\n");
}

common::per_kind!(empty_files;
    box_empty_files => Box,
    cloudreve_empty_files => Cloudreve,
    fluxer_empty_files => Fluxer,
    virola_empty_files => Virola,
    dyson_empty_files => Dyson,
);

/// A name removed or renamed away and made again at once is the new object, through
/// listings too: no EEXIST, no ENOENT, and the remote holds the new content.
fn reused_names(kind: TargetKind) {
    reused_names_on(&slow_remote(kind, 20));
}

fn reused_names_on(r: &Remote) {
    let kind = r.proto();
    let m = r.mount("", &[]);
    let work = r.work().to_path_buf();
    sh(&work, "mkdir mnt/a && mkdir mnt/a/b && ls mnt/a >/dev/null");
    for _ in 0..3 {
        sh(
            &work,
            "rmdir mnt/a/b && mkdir mnt/a/b && ls mnt/a >/dev/null",
        );
    }
    sh(
        &work,
        "mv mnt/a/b mnt/c && mkdir mnt/a/b && ls mnt/a mnt >/dev/null && rmdir mnt/a/b",
    );
    sh(&work, "rmdir mnt/c && mkdir mnt/c && rmdir mnt/c");
    // Files: removed and written again with other content, listed in between.
    sh(
        &work,
        "echo one > mnt/a/reused.txt && ls -l mnt/a >/dev/null",
    );
    sh(
        &work,
        "rm mnt/a/reused.txt && echo two > mnt/a/reused.txt && ls -l mnt/a >/dev/null",
    );
    sh(
        &work,
        "mv mnt/a/reused.txt mnt/a/moved.txt && echo three > mnt/a/reused.txt",
    );
    // Past the listing cache's lifetime the remote listing is merged again: still right.
    std::thread::sleep(Duration::from_secs(6));
    let out = sh(&work, "ls mnt/a && cat mnt/a/reused.txt mnt/a/moved.txt");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("three\ntwo\n"), "{kind}: {text}");
    assert!(!m.dir.join("a/b").exists() && !m.dir.join("c").exists());
    if r.caps().rename {
        // (A target that cannot rename keeps a renamed file under its first name.)
        r.assert_stored("reused.txt", b"three\n");
        r.assert_stored("moved.txt", b"two\n");
    }
    sh(&work, "rm -r mnt/a && mkdir mnt/a && rmdir mnt/a");
}

common::per_kind!(reused_names;
    box_reused_names => Box,
    cloudreve_reused_names => Cloudreve,
    fluxer_reused_names => Fluxer,
    virola_reused_names => Virola,
    dyson_reused_names => Dyson,
);

/// fstat, reads and writes through a descriptor whose file was unlinked; nothing lands
/// under the removed name, and the name is free for a new file meanwhile.
fn open_unlinked(kind: TargetKind) {
    open_unlinked_on(&remote(kind));
}

fn open_unlinked_on(r: &Remote) {
    let m = r.mount("", &[]);
    let dir = m.dir.clone();
    bounded(TOOL_TIMEOUT, move || {
        let p = dir.join("tmpfile");
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        f.write_all(b"before unlink ").unwrap();
        std::fs::remove_file(&p).unwrap();
        assert!(!p.exists());
        let st = f.metadata().expect("fstat of an open, unlinked file");
        assert_eq!(st.nlink(), 0, "link count of an unlinked file");
        assert_eq!(st.len(), 14);
        f.write_all(b"and after").unwrap();
        f.set_len(23).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut back = String::new();
        f.read_to_string(&mut back).unwrap();
        assert_eq!(back, "before unlink and after");
        // The name is free: a new file takes it.
        std::fs::write(&p, b"new").unwrap();
        assert_eq!(f.metadata().unwrap().nlink(), 0);
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
    });
    r.assert_stored("tmpfile", b"new");
    // A landed file unlinked while a reader has it open: fstat still answers, and what
    // the reader has read reads again.
    std::fs::write(m.dir.join("held.txt"), b"held content").unwrap();
    let mut f = std::fs::File::open(m.dir.join("held.txt")).unwrap();
    let mut back = String::new();
    f.read_to_string(&mut back).unwrap();
    std::fs::remove_file(m.dir.join("held.txt")).unwrap();
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    assert_eq!(f.metadata().unwrap().len(), 12);
    back.clear();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut back).unwrap();
    assert_eq!(back, "held content");
    drop(f);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!r.stored().contains_key("held.txt"));
    // A landed file a fresh mount (no local copy) only reads, unlinked after the first
    // read: the blocks not read yet still arrive (the remote file stays until the last
    // close, hidden from listings), then it is deleted.
    let big: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(m.dir.join("read.bin"), &big).unwrap();
    drop(m);
    for d in ["state", "cache"] {
        let _ = std::fs::remove_dir_all(r.work().join(d));
    }
    let m = r.mount("", &[]);
    let p = m.dir.join("read.bin");
    let mut f = std::fs::File::open(&p).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact(&mut head).unwrap();
    std::fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    assert!(std::fs::read_dir(&m.dir)
        .unwrap()
        .all(|e| e.unwrap().file_name() != "read.bin"));
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    let mut tail = vec![0u8; 4096];
    f.seek(SeekFrom::Start(big.len() as u64 - 4096)).unwrap();
    f.read_exact(&mut tail)
        .expect("a block not read before the unlink");
    assert!(tail == big[big.len() - 4096..]);
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut all).unwrap();
    assert!(all == big, "the whole file reads back after the unlink");
    assert!(r.stored().contains_key("read.bin"), "kept while it is read");
    drop(f);
    let gone = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !r.stored().contains_key("read.bin")
    });
    assert!(gone, "deleted at the last close");
}

common::per_kind!(open_unlinked;
    box_open_unlinked => Box,
    cloudreve_open_unlinked => Cloudreve,
    fluxer_open_unlinked => Fluxer,
    virola_open_unlinked => Virola,
    dyson_open_unlinked => Dyson,
);

fn nlink(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().nlink()
}

fn mtime_ns(p: &Path) -> (i64, i64) {
    let st = std::fs::metadata(p).unwrap();
    (
        st.mtime() * 1_000_000_000 + st.mtime_nsec(),
        st.ctime() * 1_000_000_000 + st.ctime_nsec(),
    )
}

/// Directory link counts and the parent's times.
fn links_and_times(kind: TargetKind) {
    links_and_times_on(&remote(kind));
}

fn links_and_times_on(r: &Remote) {
    let kind = r.proto();
    let m = r.mount("", &[]);
    let work = r.work().to_path_buf();
    let root_links = nlink(&m.dir);
    sh(&work, "mkdir mnt/p && touch mnt/p/file");
    assert_eq!(nlink(&m.dir), root_links + 1, "{kind}: root after mkdir");
    assert_eq!(nlink(&m.dir.join("p")), 2);
    assert_eq!(nlink(&m.dir.join("p/file")), 1);
    sh(&work, "mkdir mnt/p/s1 mnt/p/s2");
    assert_eq!(nlink(&m.dir.join("p")), 4, "{kind}: 2 + two subdirectories");
    sh(&work, "mv mnt/p/s2 mnt/s2");
    assert_eq!(nlink(&m.dir.join("p")), 3);
    assert_eq!(nlink(&m.dir), root_links + 2);
    let before = mtime_ns(&m.dir.join("p"));
    std::thread::sleep(Duration::from_millis(20));
    sh(&work, "rmdir mnt/p/s1");
    let after = mtime_ns(&m.dir.join("p"));
    assert!(
        after.0 > before.0 && after.1 > before.1,
        "{kind}: rmdir: {before:?} → {after:?}"
    );
    assert_eq!(nlink(&m.dir.join("p")), 2);
    for op in [
        "touch mnt/p/new",
        "rm mnt/p/new",
        "mkdir mnt/p/sub",
        "mv mnt/p/sub mnt/p/sub2",
    ] {
        let before = mtime_ns(&m.dir.join("p"));
        std::thread::sleep(Duration::from_millis(20));
        sh(&work, op);
        let after = mtime_ns(&m.dir.join("p"));
        assert!(after.0 > before.0, "{kind}: {op}: {before:?} → {after:?}");
    }
    // An O_TRUNC open of an existing file advances its times, even with nothing written.
    sh(&work, "echo data > mnt/p/t");
    let before = mtime_ns(&m.dir.join("p/t"));
    std::thread::sleep(Duration::from_millis(20));
    sh(&work, ": > mnt/p/t");
    let after = mtime_ns(&m.dir.join("p/t"));
    assert!(
        after.0 > before.0,
        "{kind}: O_TRUNC: {before:?} → {after:?}"
    );
    assert_eq!(std::fs::metadata(m.dir.join("p/t")).unwrap().len(), 0);
}

common::per_kind!(links_and_times;
    box_links_and_times => Box,
    cloudreve_links_and_times => Cloudreve,
    fluxer_links_and_times => Fluxer,
    virola_links_and_times => Virola,
    dyson_links_and_times => Dyson,
);

/// rmdir of a non-empty directory and a rename of a directory onto a non-empty one answer
/// ENOTEMPTY, also when the content came from elsewhere and this mount's cached listing
/// does not show it yet.
fn not_empty(kind: TargetKind) {
    not_empty_on(&remote(kind));
}

fn not_empty_on(r: &Remote) {
    let m = r.mount("", &[]);
    let work = r.work().to_path_buf();
    sh(&work, "mkdir mnt/n mnt/m && echo x > mnt/n/f");
    let out = sh_status(&work, "rmdir mnt/n");
    assert_fails_with(
        &out,
        "Directory not empty",
        "rmdir of a non-empty directory",
    );
    let out = sh_status(&work, "mv -T mnt/m mnt/n");
    assert_fails_with(
        &out,
        "Directory not empty",
        "rename onto a non-empty directory",
    );
    sh(
        &work,
        "mkdir mnt/e && mv -T mnt/m mnt/e && test -d mnt/e && test ! -e mnt/m",
    );
    if !has_folders(r) {
        return;
    }
    // Another mount of the target adds a file to `e`, which this one listed moments ago.
    sh(&work, "ls mnt/e");
    let other = work.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let cfg = r.config("", common::config::RETRY_SECONDS);
    let m2 = Mount::with_config(&other, "t", &cfg, &[]);
    sh(&other, "echo elsewhere > mnt/e/theirs.txt");
    let out = sh_status(&work, "rmdir mnt/e");
    assert_fails_with(
        &out,
        "Directory not empty",
        "rmdir of a folder with remote content",
    );
    assert!(m.dir.join("e/theirs.txt").exists());
    drop(m2);
}

common::per_kind!(not_empty;
    box_not_empty => Box,
    cloudreve_not_empty => Cloudreve,
    fluxer_not_empty => Fluxer,
    virola_not_empty => Virola,
    dyson_not_empty => Dyson,
);

// The same cases on a bucket of a real S3 server (no latency knob there).
#[test]
fn s3_empty_files() {
    empty_files_on(&Remote::s3("posix-empty"));
}

#[test]
fn s3_reused_names() {
    reused_names_on(&Remote::s3("posix-reused"));
}

#[test]
fn s3_open_unlinked() {
    open_unlinked_on(&Remote::s3("posix-unlinked"));
}

#[test]
fn s3_links_and_times() {
    links_and_times_on(&Remote::s3("posix-links"));
}

#[test]
fn s3_not_empty() {
    not_empty_on(&Remote::s3("posix-notempty"));
}
