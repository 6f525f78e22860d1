//! Bad input through a real mount, written once and run per target kind: names the
//! target refuses (EINVAL), names over 255 bytes (ENAMETOOLONG), a revoked token (EACCES,
//! logged without the token), garbage answers (EIO, logged, the file kept in state
//! `failed` and uploaded by the retry at the next mount) and a full stage disk (ENOSPC,
//! nothing already written is lost). Faults and heavy load are in `mount_robust`,
//! oversized files (EFBIG) in `mount_scenarios`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::mount::{assert_fails_with, bounded, run_bounded, sh, sh_status, Mount, TOOL_TIMEOUT};
use common::{pattern, sha1_hex, TestServer, TOKEN};
use serde_json::json;
use uploadfs::config::TargetKind;

const MIB: usize = 1024 * 1024;
/// Token the server switches to when the client's token is revoked.
const OTHER_TOKEN: &str = "another-token-9876543210";

/// Wait until the server holds `name` exactly once, with exactly `data` (a replacement
/// may list the old and the new copy for a moment; both are complete).
fn wait_landed(s: &TestServer, proto: &str, name: &str, data: &[u8], timeout: Duration) {
    let want = (data.len() as u64, sha1_hex(data));
    let deadline = Instant::now() + timeout;
    loop {
        let copies: Vec<_> = s
            .files(proto)
            .into_iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, size, sha1)| (size, sha1))
            .collect();
        if copies == [want.clone()] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{proto}: {name} is not on the server once as written: {copies:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ----- names, tokens and answers -------------------------------------------------------

/// A request path substring and method of a call every small upload depends on: the one
/// that carries the file's bytes (Dyson: completes it; Virola: lists the message).
fn small_upload_call(kind: TargetKind) -> (&'static str, &'static str) {
    match kind {
        TargetKind::Box => ("/box/upload/2.0/files/content", "POST"),
        TargetKind::Cloudreve => ("/cloudreve/api/v4/file/content", "PUT"),
        TargetKind::Fluxer => ("/messages", "POST"),
        // The upload's own answer carries nothing Virola's client needs (it finds the
        // attachment in the message listing): spoil that listing.
        TargetKind::Virola => ("/rooms/", "GET"),
        TargetKind::Dyson => ("/files/upload/complete/", "POST"),
        TargetKind::Null | TargetKind::S3 => unreachable!("not a protocol"),
    }
}

/// Names each target refuses (beyond `/` and NUL, which no path can carry). Backslashes,
/// control characters and edge spaces are encoded into names the service accepts (see
/// `odd_names`); what is left: a name its stand-ins grow past 255 bytes (`\` is one byte,
/// `＼` three), and on Box and Fluxer a C1 control character, which has no stand-in.
fn refused_names(kind: TargetKind) -> Vec<String> {
    let mut v = vec!["\\".repeat(86)];
    if matches!(kind, TargetKind::Box | TargetKind::Fluxer) {
        v.push("c1\u{85}control.txt".to_string());
    }
    v
}

/// Refused names, too-long names, a revoked token and garbage answers, on one mount.
fn bad_input(kind: TargetKind) {
    let s = TestServer::small_chunks();
    let proto = kind.as_str();
    let work = s.dir.path().to_path_buf();
    let caps = s.target(kind).capabilities();
    let mut m = Mount::for_kind(&s, kind, "", &[]);
    let data = pattern(70_000, 3);
    std::fs::write(work.join("data.bin"), &data).unwrap();

    // Names the target refuses: EINVAL, nothing remote.
    for name in refused_names(kind) {
        let name = name.as_str();
        let out = run_bounded(
            Command::new("cp")
                .arg("data.bin")
                .arg(format!("mnt/{name}"))
                .current_dir(&work),
            TOOL_TIMEOUT,
        );
        assert_fails_with(
            &out,
            "Invalid argument",
            &format!("{proto}: cp to {name:?}"),
        );
        assert!(
            !s.stored(proto).contains_key(name),
            "{proto}: {name:?} reached the server"
        );
        // Refused before anything was staged: no local file that can never upload.
        assert!(!m.path(name).exists(), "{proto}: {name:?} exists locally");
        // Renaming to it or (where folders are remote) making a folder of it: EINVAL too.
        std::fs::write(m.path("to-rename.txt"), b"x").unwrap();
        let e = std::fs::rename(m.path("to-rename.txt"), m.path(name)).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EINVAL),
            "{proto}: mv to {name:?}"
        );
        assert!(m.path("to-rename.txt").exists());
        std::fs::remove_file(m.path("to-rename.txt")).unwrap();
        if caps.folders {
            let e = std::fs::create_dir(m.path(name)).unwrap_err();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EINVAL),
                "{proto}: mkdir {name:?}"
            );
        }
    }
    // Longer than 255 bytes: ENAMETOOLONG; exactly 255 (multi-byte) is fine.
    let long = "x".repeat(256);
    let out = sh_status(&work, &format!("cp data.bin mnt/{long}"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("File name too long"),
        "{proto}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let max = format!("{}{}", "é".repeat(126), "abc");
    assert_eq!(max.len(), 255);
    sh(&work, &format!("cp data.bin mnt/{max}"));
    wait_landed(&s, proto, &max, &data, Duration::from_secs(10));

    // A revoked token: EACCES, a log line that says so, never the token.
    sh(&work, "cp data.bin mnt/before-revoke.bin");
    s.control(json!({ "token": OTHER_TOKEN }));
    let revoked = pattern(50_000, 4);
    std::fs::write(work.join("revoked.bin"), &revoked).unwrap();
    let out = sh_status(&work, "cp revoked.bin mnt/revoked.bin");
    assert_fails_with(
        &out,
        "Permission denied",
        &format!("{proto}: cp with a revoked token"),
    );
    s.control_as(OTHER_TOKEN, json!({ "token": TOKEN }));
    let log = m.log();
    assert!(
        !log.contains(TOKEN),
        "{proto}: the token is in the daemon log"
    );
    assert!(
        !log.contains(OTHER_TOKEN),
        "{proto}: a token is in the daemon log"
    );
    let line = log
        .lines()
        .find(|l| l.contains("revoked.bin to t failed") && l.to_lowercase().contains("token"))
        .unwrap_or_else(|| panic!("{proto}: no log line says the token was refused:\n{log}"));
    eprintln!("{proto}: revoked token logged as: {line}");
    assert!(
        line.contains("upload of")
            && line.contains("to t failed")
            && line.contains("the token comes from"),
        "{proto}: the log line names the file, the target and where the token comes from: {line}"
    );
    assert_eq!(m.state_of("revoked.bin").as_deref(), Some("failed"));

    // Garbage answers on the upload call: EIO, a log line naming the file and the cause,
    // the file kept locally in state failed.
    let garbage = pattern(60_000, 5);
    std::fs::write(work.join("garbage.bin"), &garbage).unwrap();
    let (path, method) = small_upload_call(kind);
    s.spoil_answers("garbage_json", 1000, path, method);
    let out = sh_status(&work, "cp garbage.bin mnt/garbage.bin");
    s.heal_answers();
    assert_fails_with(
        &out,
        "Input/output error",
        &format!("{proto}: cp with garbage answers"),
    );
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("garbage.bin") && l.contains("upload failed"))
        .unwrap_or_else(|| panic!("{proto}: no log line names garbage.bin:\n{log}"));
    eprintln!("{proto}: garbage answer logged as: {line}");
    let lower = line.to_lowercase();
    assert!(
        [
            "json",
            "answer",
            "response",
            "unexpected",
            "parse",
            "decode"
        ]
        .iter()
        .any(|w| lower.contains(w)),
        "{proto}: the log line does not say what was wrong: {line}"
    );
    assert_eq!(m.state_of("garbage.bin").as_deref(), Some("failed"));
    sh(&work, "cmp garbage.bin mnt/garbage.bin");

    // The failed uploads are retried at the next mount and land exactly once.
    m.remount();
    wait_landed(&s, proto, "revoked.bin", &revoked, Duration::from_secs(30));
    wait_landed(&s, proto, "garbage.bin", &garbage, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.state_of("garbage.bin").as_deref() != Some("committed") {
        assert!(
            Instant::now() < deadline,
            "{proto}: garbage.bin never became committed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    sh(
        &work,
        "cmp garbage.bin mnt/garbage.bin && cmp revoked.bin mnt/revoked.bin",
    );
    // Nothing is listed twice, and the refused names never reached the server.
    let files = s.stored(proto);
    for name in refused_names(kind) {
        let name = name.as_str();
        assert!(
            !files.contains_key(name),
            "{proto}: {name:?} reached the server"
        );
    }
    drop(m);
}

// ----- full stage disk --------------------------------------------------------------------

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = run_bounded(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
                .arg(dir),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn stage_disk_full(kind: TargetKind) {
    let s = TestServer::small_chunks();
    let proto = kind.as_str();
    let work = s.dir.path().to_path_buf();
    // Declared before the mount so the mount's guard (dropped first) releases it.
    let cache = Tmpfs::mount(&work.join("cache"), "8m");
    let m = Mount::for_kind(&s, kind, "", &[]);

    // Committed before the disk fills.
    let done = pattern(MIB, 21);
    std::fs::write(work.join("done.bin"), &done).unwrap();
    sh(&work, "cp done.bin mnt/done.bin");
    // Staged and still open while the disk fills.
    let open = pattern(MIB + 5, 22);
    let f = std::fs::File::create(m.path("open.bin")).unwrap();
    {
        use std::io::Write;
        (&f).write_all(&open).unwrap();
    }
    // A write bigger than what is left: ENOSPC to the writer.
    std::fs::write(work.join("big.bin"), pattern(12 * MIB, 23)).unwrap();
    let out = sh_status(&work, "cp big.bin mnt/big.bin");
    assert_fails_with(
        &out,
        "No space left on device",
        &format!("{proto}: cp onto a full stage disk"),
    );
    // Nothing of it is remote, ever.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !s.stored(proto).contains_key("big.bin"),
        "{proto}: a cut-short file was uploaded"
    );
    // Kept locally, marked as not uploadable on its own.
    assert_eq!(m.state_of("big.bin").as_deref(), Some("incomplete"));
    // The open file still closes fine and lands; the committed one still reads back.
    bounded(TOOL_TIMEOUT, move || drop(f));
    wait_landed(&s, proto, "open.bin", &open, Duration::from_secs(20));
    std::fs::write(work.join("open.bin"), &open).unwrap();
    sh(
        &work,
        "cmp done.bin mnt/done.bin && cmp open.bin mnt/open.bin",
    );
    wait_landed(&s, proto, "done.bin", &done, Duration::from_secs(5));
    // Removing the failed file gives its space back: the next copy works.
    sh(&work, "rm -f mnt/big.bin");
    let after = pattern(2 * MIB, 24);
    std::fs::write(work.join("after.bin"), &after).unwrap();
    sh(&work, "cp after.bin mnt/after.bin");
    wait_landed(&s, proto, "after.bin", &after, Duration::from_secs(10));
    drop(m);
    drop(cache);
}

common::per_kind!(bad_input;
    box_bad_input => Box,
    cloudreve_bad_input => Cloudreve,
    fluxer_bad_input => Fluxer,
    virola_bad_input => Virola,
    dyson_bad_input => Dyson,
);

common::per_kind!(stage_disk_full; box_stage_disk_full => Box);
