//! Write-back mode, crash recovery, `status` and `unmount` on real mounts: the `uploadfs`
//! binary mounts against `uploadfs serve` on loopback, uploads are slowed with the server's
//! bandwidth cap so they are still queued or running when the test acts, and what landed is
//! checked through introspection (names unique, sizes and SHA-1 exact, bytes received).
//! Needs /dev/fuse and root or fusermount3, like tests/mount_scenarios.rs.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::config::TargetToml;
use common::mount::{sh, Mount};
use common::{pattern, sha1_hex, TestServer};
use uploadfs::config::TargetKind;

const MIB: usize = 1024 * 1024;

/// A write-back mount of target `t` of `kind` at `s`, with a 5 s retry budget.
fn mount_write_back(s: &TestServer, kind: TargetKind) -> Mount {
    let cfg = TargetToml::new(s, kind).retry_seconds(5).write(s);
    Mount::with_config(s.dir.path(), "t", &cfg, &["--write-back"])
}

/// name → (size, sha1) of `files`, as [`TestServer::wait_stored`] wants them.
fn digests(files: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, (u64, String)> {
    files
        .iter()
        .map(|(n, d)| (n.clone(), (d.len() as u64, sha1_hex(d))))
        .collect()
}

fn wait_server(s: &TestServer, proto: &str, want: &BTreeMap<String, Vec<u8>>, timeout: Duration) {
    s.wait_stored(proto, &digests(want), timeout);
}

/// Every file of `want` is stored now.
fn assert_landed(s: &TestServer, proto: &str, want: &BTreeMap<String, Vec<u8>>) {
    s.wait_stored(proto, &digests(want), Duration::ZERO);
}

/// cp of several files returns before they are uploaded; reads come from the stage;
/// renames and unlinks of queued files stay correct; `status` shows progress; `unmount`
/// drains and everything lands byte-identical, once.
#[test]
fn write_back_cp_then_unmount_drains() {
    let s = TestServer::new();
    // 1 MB/s: the 3 MiB file takes seconds, long enough to watch.
    s.set_bandwidth(1_000_000);
    let mut m = mount_write_back(&s, TargetKind::Box);
    let src = s.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut want = BTreeMap::new();
    for (name, len, seed) in [
        ("empty.txt", 0, 1),
        ("one.txt", 1, 2),
        ("small.bin", 100_000, 3),
        ("slow.bin", 3 * MIB, 4),
        ("renamed-from.bin", 200_000, 5),
        ("removed.bin", 300_000, 6),
    ] {
        let data = pattern(len, seed);
        std::fs::write(src.join(name), &data).unwrap();
        want.insert(name.to_string(), data);
    }
    sh(s.dir.path(), "cp src/* mnt/");
    // Pending data reads back from the stage.
    sh(s.dir.path(), "cmp src/slow.bin mnt/slow.bin");
    // Rename and unlink while queued or uploading.
    sh(
        s.dir.path(),
        "mv mnt/renamed-from.bin mnt/renamed-to.bin && rm mnt/removed.bin",
    );
    let data = want.remove("renamed-from.bin").unwrap();
    want.insert("renamed-to.bin".to_string(), data);
    want.remove("removed.bin");
    // The slow upload shows with progress.
    let st = m.wait_pending("progress of slow.bin", Duration::from_secs(30), |st| {
        st.get("/slow.bin")
            .is_some_and(|f| f["state"] == "uploading" && f["bytes_done"].as_u64().unwrap_or(0) > 0)
    });
    let f = &st["/slow.bin"];
    assert_eq!(f["size"], 3 * MIB as u64);
    assert_eq!(m.state_of("slow.bin").as_deref(), Some("uploading"));
    // unmount waits for every upload.
    let before = s.bytes_received();
    let stderr = m.unmount();
    assert!(
        before < s.bytes_received(),
        "unmount returned before uploading; {stderr}"
    );
    assert_landed(&s, "box", &want);
    let files = s.stored("box");
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        want.keys().cloned().collect::<Vec<_>>(),
        "exactly the expected files (renamed-from and removed must not remain)"
    );
}

/// SIGKILL while uploads are queued and in flight: after remounting, every closed file
/// lands exactly once, the Box session resumes (bytes do not double), and a file that was
/// still open for writing is not uploaded and shows as incomplete.
#[test]
fn sigkill_then_remount_uploads_each_closed_file_once() {
    let s = TestServer::new();
    // 8 MiB/s: the first four 8 MiB parts of the big file take a few seconds.
    s.set_bandwidth(8 * MIB as u64);
    let mut m = mount_write_back(&s, TargetKind::Box);
    let src = s.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut want = BTreeMap::new();
    // 48 MiB goes through a Box upload session with six 8 MiB parts.
    let big = pattern(48 * MIB, 10);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    want.insert("big.bin".to_string(), big);
    for i in 0..8 {
        let data = pattern(2 * MIB, 20 + i);
        std::fs::write(src.join(format!("m{i}.bin")), &data).unwrap();
        want.insert(format!("m{i}.bin"), data);
    }
    let total: u64 = want.values().map(|d| d.len() as u64).sum();
    sh(s.dir.path(), "cp src/big.bin mnt/ && cp src/m*.bin mnt/");
    // A writer that never closes (held open by this process until after the kill; a
    // shell redirection would close a duplicate, which is a close to the filesystem).
    let mut holder = std::fs::File::create(m.dir.join("open.bin")).unwrap();
    std::io::Write::write_all(&mut holder, b"data").unwrap();
    // Kill once the first wave of parts is accepted.
    m.wait_pending("four parts of big.bin", Duration::from_secs(60), |st| {
        st.get("/big.bin")
            .is_some_and(|f| f["parts_done"].as_u64().unwrap_or(0) >= 4)
    });
    m.kill();
    drop(holder);
    let at_kill = s.stored("box");
    assert!(
        want.keys().any(|n| !at_kill.contains_key(n)),
        "every file had landed before the kill; the test proves nothing"
    );
    assert!(!at_kill.contains_key("big.bin"));
    // Remount on the dead mountpoint: the mount is there at once, recovery runs behind it.
    s.set_bandwidth(0);
    m.mount();
    assert_eq!(m.state_of("open.bin").as_deref(), Some("incomplete"));
    let open_data = std::fs::read(m.dir.join("open.bin")).unwrap();
    assert_eq!(
        open_data, b"data",
        "the incomplete file keeps its local data"
    );
    wait_server(&s, "box", &want, Duration::from_secs(90));
    m.wait_pending("recovery to finish", Duration::from_secs(30), |st| {
        st.values()
            .all(|f| f["state"] != "queued" && f["state"] != "uploading")
    });
    m.unmount();
    assert_landed(&s, "box", &want);
    let files = s.stored("box");
    assert!(
        !files.contains_key("open.bin"),
        "a never-closed file was uploaded"
    );
    assert_eq!(files.len(), want.len(), "{files:?}");
    // The resumed session sent only the missing parts: far less than a second copy of
    // the accepted 32 MiB (small files cut off in flight are sent again, at most 2 MiB each).
    let received = s.bytes_received();
    assert!(
        received < total + 20 * MIB as u64,
        "server received {received} bytes for {total} bytes of files: the session was not resumed"
    );
}

/// `unmount --force` leaves a running upload journaled; the next mount uploads it.
#[test]
fn unmount_force_leaves_uploads_journaled_for_the_next_mount() {
    let s = TestServer::new();
    // 24 MiB at 2 MiB/s: far more than socket buffers hold, so the upload cannot have
    // completed when --force returns.
    s.set_bandwidth(2 * MIB as u64);
    let mut m = mount_write_back(&s, TargetKind::Box);
    let data = pattern(24 * MIB, 7);
    std::fs::write(s.dir.path().join("f.bin"), &data).unwrap();
    sh(s.dir.path(), "cp f.bin mnt/f.bin");
    m.wait_pending("f.bin uploading", Duration::from_secs(30), |st| {
        st.get("/f.bin").is_some_and(|f| f["state"] == "uploading")
    });
    m.unmount_force();
    assert!(!s.stored("box").contains_key("f.bin"));
    s.set_bandwidth(0);
    m.mount();
    let want = BTreeMap::from([("f.bin".to_string(), data)]);
    wait_server(&s, "box", &want, Duration::from_secs(60));
    m.unmount();
    assert_landed(&s, "box", &want);
}

/// A background upload that fails is kept, shown as failed with its error in `status` and
/// the xattr, and retried once the fault is gone.
#[test]
fn failed_background_upload_is_shown_and_retried() {
    let s = TestServer::new();
    s.set_max_file_size(1000);
    let mut m = mount_write_back(&s, TargetKind::Box);
    let data = pattern(5000, 8);
    std::fs::write(s.dir.path().join("big.txt"), &data).unwrap();
    // close() succeeds: the data is durable locally.
    sh(s.dir.path(), "cp big.txt mnt/big.txt");
    let st = m.wait_pending("big.txt failed", Duration::from_secs(30), |st| {
        st.get("/big.txt").is_some_and(|f| f["state"] == "failed")
    });
    assert!(st["/big.txt"]["error"].is_string(), "{st:?}");
    assert_eq!(m.state_of("big.txt").as_deref(), Some("failed"));
    sh(s.dir.path(), "cmp big.txt mnt/big.txt");
    s.set_max_file_size(1u64 << 40);
    let want = BTreeMap::from([("big.txt".to_string(), data)]);
    wait_server(&s, "box", &want, Duration::from_secs(60));
    m.wait_pending("big.txt committed", Duration::from_secs(10), |st| {
        !st.contains_key("/big.txt")
    });
    assert_eq!(m.state_of("big.txt").as_deref(), Some("committed"));
    m.unmount();
    assert_landed(&s, "box", &want);
}

/// A target without remote rename (Fluxer): the rsync pattern (write a temporary file,
/// close, rename into place) lands under the final name, once, in write-back mode.
#[test]
fn write_back_rename_after_close_lands_under_the_final_name_on_fluxer() {
    let s = TestServer::new();
    let mut m = mount_write_back(&s, TargetKind::Fluxer);
    let data = pattern(300_000, 9);
    std::fs::write(s.dir.path().join("doc.bin"), &data).unwrap();
    sh(
        s.dir.path(),
        "cp doc.bin mnt/.doc.bin.XyZ123 && mv mnt/.doc.bin.XyZ123 mnt/doc.bin",
    );
    m.unmount();
    let files = s.stored("fluxer");
    assert_eq!(
        files.keys().cloned().collect::<Vec<_>>(),
        vec!["doc.bin".to_string()],
        "{files:?}"
    );
    assert_landed(
        &s,
        "fluxer",
        &BTreeMap::from([("doc.bin".to_string(), data)]),
    );
}

/// Stage files of the mount's cache (`cache/**/stage/*`).
fn stage_files(work: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![work.join("cache")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if d.file_name().is_some_and(|n| n == "stage") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A small file's `close()` in write-back mode makes its data durable in the catalog, not
/// by syncing its stage: after a crash in which the stages of small files did not reach
/// the disk (missing, emptied, or holding other bytes), every closed file still lands
/// byte-exact. A file above the limit keeps its synced stage. Box (SHA-1) and Dyson (MD5
/// too).
#[test]
fn small_files_closed_in_write_back_survive_a_crash_that_loses_their_stages() {
    for kind in [TargetKind::Box, TargetKind::Dyson] {
        let s = TestServer::new();
        // Slow enough that none of the larger files lands before the kill.
        s.set_bandwidth(2_000);
        let mut m = mount_write_back(&s, kind);
        let src = s.dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        // Around the copy limit (64 KiB) and a 4 KiB page.
        let limit = 64 * 1024;
        let mut want = BTreeMap::new();
        for (i, len) in [0, 1, 4095, 4096, 16_384, limit - 1, limit, limit + 1]
            .into_iter()
            .enumerate()
        {
            let data = pattern(len, 40 + i as u64);
            let name = format!("f{i}-{len}.bin");
            std::fs::write(src.join(&name), &data).unwrap();
            want.insert(name, data);
        }
        sh(s.dir.path(), "cp src/* mnt/");
        m.kill();
        let proto = match kind {
            TargetKind::Box => "box",
            _ => "dyson",
        };
        let at_kill = s.stored(proto);
        assert!(
            want.iter()
                .any(|(n, d)| d.len() > 4096 && !at_kill.contains_key(n)),
            "the files had landed before the kill; the test proves nothing"
        );
        // What a power cut can do to data that was never synced; the stage of the file
        // above the limit was synced at its close and is left alone.
        let mut damaged = 0;
        for (i, p) in stage_files(s.dir.path()).iter().enumerate() {
            let len = std::fs::metadata(p).unwrap().len();
            if len > limit as u64 {
                continue;
            }
            match i % 3 {
                0 => std::fs::remove_file(p).unwrap(),
                1 => std::fs::write(p, b"").unwrap(),
                _ => std::fs::write(p, vec![0xA5; len as usize]).unwrap(),
            }
            damaged += 1;
        }
        let unlanded_small = want
            .iter()
            .filter(|(n, d)| d.len() <= limit && !at_kill.contains_key(*n))
            .count();
        assert!(
            unlanded_small >= 3 && damaged >= unlanded_small,
            "{damaged} stages damaged for {unlanded_small} small files not landed"
        );
        s.set_bandwidth(0);
        m.mount();
        wait_server(&s, proto, &want, Duration::from_secs(60));
        m.wait_pending("recovery to finish", Duration::from_secs(30), |st| {
            st.is_empty()
        });
        for (name, data) in &want {
            assert_eq!(&std::fs::read(m.dir.join(name)).unwrap(), data, "{name}");
        }
        m.unmount();
        assert_landed(&s, proto, &want);
        assert_eq!(s.stored(proto).len(), want.len());
    }
}
