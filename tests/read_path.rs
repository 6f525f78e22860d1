//! The read path through a real mount: random reads fetch small ranges (counted by the
//! server), a whole-file read is verified against the remote's SHA-1 and a corrupted
//! download fails the read with EIO (and is not served again from any cache), the kernel
//! read-ahead is raised, and extended attributes outside `user.` are "not supported" (so
//! `ls -l` stops asking for them) while ours still read.

mod common;

use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use common::mount::{assert_fails_with, getxattr_raw, sh, sh_status, xattr, Mount};
use common::{pattern, sha1_hex, TestServer};
use uploadfs::config::TargetKind;

/// The mount's fetch unit for reads that are not sequential (`read::BLOCK_SIZE`).
const SMALL_FETCH: u64 = 32 * 1024;

/// Bigger than one 8 MiB GET, so a whole-file read is verified by the mount's own
/// hashing, not by the target's check of a single whole-file answer.
const BIG: usize = 20 * 1024 * 1024 + 12_345;

fn mount_box(s: &TestServer) -> Mount {
    Mount::for_kind(s, TargetKind::Box, "", &[])
}

/// Committed files of `len` bytes each (contents by seed), written through the mount,
/// then a remount so the daemon's block cache and the kernel's page cache are both cold.
fn committed_files(
    s: &TestServer,
    m: &mut Mount,
    files: &[(&str, u64)],
    len: usize,
) -> Vec<Vec<u8>> {
    let mut out = vec![];
    for (name, seed) in files {
        let data = pattern(len, *seed);
        let src = s.dir.path().join(format!("src-{name}"));
        std::fs::write(&src, &data).unwrap();
        sh(
            s.dir.path(),
            &format!("cp '{}' 'mnt/{name}'", src.display()),
        );
        out.push(data);
    }
    m.remount();
    out
}

#[test]
fn random_reads_fetch_small_ranges() {
    let s = TestServer::new();
    let mut m = mount_box(&s);
    let mut files = committed_files(&s, &mut m, &[("big.bin", 77), ("seq.bin", 78)], BIG);
    let seq = files.pop().unwrap();
    let data = files.pop().unwrap();
    let f = std::fs::File::open(m.path("big.bin")).unwrap();
    // No kernel read-ahead: each pread below reaches the daemon as one 4 KiB read.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(r, 0, "posix_fadvise");
    let before = s.bytes_served();
    // Offsets in no order, each more than a MiB from the one before (none at the start,
    // none in the same block).
    let offsets: Vec<u64> = [7u64, 2, 10, 4, 0, 9, 5, 11, 1, 8, 3, 6]
        .iter()
        .map(|i| 1_000_003 + i * 1_600_033)
        .collect();
    for &off in &offsets {
        let mut buf = [0u8; 4096];
        f.read_exact_at(&mut buf, off).unwrap();
        assert!(
            buf[..] == data[off as usize..off as usize + 4096],
            "wrong data at {off}"
        );
    }
    let sent = s.bytes_served() - before;
    let n = offsets.len() as u64;
    assert!(
        sent >= n * 4096,
        "the reads were not served by the server ({sent} bytes)"
    );
    // One small fetch per read (two where a read straddles a block boundary), not a MiB.
    assert!(
        sent <= n * 2 * SMALL_FETCH,
        "{n} random 4 KiB reads made the server send {sent} bytes (over {} each)",
        2 * SMALL_FETCH
    );
    drop(f);

    // A sequential read (of a file not read before) still fetches with large GETs.
    let (before, before_requests) = (s.bytes_served(), s.requests());
    let out = sh(&m.dir, "sha1sum seq.bin");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&sha1_hex(&seq)), "sequential read: {text}");
    let gets = s.requests() - before_requests;
    let sent = s.bytes_served() - before;
    assert!(sent >= BIG as u64, "the sequential read got {sent} bytes");
    assert!(
        gets <= 20,
        "a sequential read of {BIG} bytes took {gets} requests (1 MiB or less each)"
    );
}

#[test]
fn whole_read_is_verified_and_corruption_fails_with_eio() {
    let s = TestServer::new();
    let mut m = mount_box(&s);
    let data = committed_files(&s, &mut m, &[("big.bin", 77)], BIG).remove(0);
    let want = sha1_hex(&data);

    // Healthy: the read is right and the daemon verified it.
    let out = sh(&m.dir, "sha1sum big.bin");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&want));
    let log = m.log();
    assert!(
        log.contains("whole-file read verified"),
        "the whole-file read was not verified"
    );

    // One download answered with every byte inverted (same length), on a cold cache.
    m.remount();
    s.spoil_answers("flip", 1, "/box/2.0/dl/", "GET");
    let out = sh_status(&m.dir, "cat big.bin > /dev/null");
    assert_eq!(
        s.counter("bad_answers_sent"),
        1,
        "the corrupted answer was not sent"
    );
    assert_fails_with(&out, "Input/output error", "a read of corrupted data");
    let log = m.log();
    assert!(
        log.contains("SHA-1 mismatch on read"),
        "mismatch not logged"
    );

    // The server is healthy again: the next read is right (nothing corrupted is kept by
    // the block cache or the kernel's page cache).
    let out = sh(&m.dir, "sha1sum big.bin");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(&want), "read after the failure: {text}");
}

#[test]
fn xattrs_outside_user_are_not_supported_and_read_ahead_is_raised() {
    let s = TestServer::new();
    let m = mount_box(&s);
    std::fs::write(m.path("a.txt"), b"hello").unwrap();
    let p = m.path("a.txt");
    for name in ["security.selinux", "system.posix_acl_access", "trusted.x"] {
        assert_eq!(
            getxattr_errno(&p, name),
            Some(libc::EOPNOTSUPP),
            "{name} must be 'not supported'"
        );
    }
    assert_eq!(getxattr_errno(&p, "user.other"), Some(libc::ENODATA));
    assert_eq!(m.state_of("a.txt").as_deref(), Some("committed"));
    assert_eq!(
        xattr(&p, "user.uploadfs.sha1").as_deref(),
        Some(&*sha1_hex(b"hello"))
    );

    // Root may raise the mount's read-ahead (others keep the kernel default).
    if unsafe { libc::geteuid() } == 0 {
        let dev = mount_dev(&m.dir).expect("mount in mountinfo");
        let kb = std::fs::read_to_string(format!("/sys/class/bdi/{dev}/read_ahead_kb")).unwrap();
        assert_eq!(kb.trim(), "1024", "read-ahead of the mount");
    }
}

/// The errno of getxattr(path, name), None when it succeeds.
fn getxattr_errno(path: &Path, name: &str) -> Option<i32> {
    getxattr_raw(path, name).err()
}

/// `major:minor` of the mount at `dir`.
fn mount_dev(dir: &Path) -> Option<String> {
    let want = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 4 && f[4] == want).then(|| f[2].to_string())
        })
}
