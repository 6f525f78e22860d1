//! Write-back mode, crash recovery, `status` and `unmount` on real mounts: the `uploadfs`
//! binary mounts against `uploadfs serve` on loopback, uploads are slowed with the server's
//! bandwidth cap so they are still queued or running when the test acts, and what landed is
//! checked through introspection (names unique, sizes and SHA-1 exact, bytes received).
//! Needs /dev/fuse and root or fusermount3, like tests/mount_scenarios.rs.

mod common;
#[path = "common/mount.rs"]
mod mount;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{pattern, sha1_hex, TestServer, TOKEN};
use mount::{require_fuse, run_bounded, sh, BIN};
use uploadfs::config::TargetKind;

const MIB: usize = 1024 * 1024;

fn write_config(s: &TestServer, kind: TargetKind) -> PathBuf {
    let c = s.config(kind);
    let mut text = format!(
        "[targets.t]\nkind = \"{}\"\nurl = \"{}\"\ntoken = \"{TOKEN}\"\nretry_seconds = 5\n",
        kind.as_str(),
        c.url
    );
    if let Some(u) = &c.upload_url {
        text.push_str(&format!("upload_url = \"{u}\"\n"));
    }
    if let Some(ch) = &c.channel_id {
        text.push_str(&format!("channel_id = \"{ch}\"\n"));
    }
    let path = s.dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A write-back mount of target `t`, detached (and its daemon killed) on drop.
struct Mount {
    work: PathBuf,
    dir: PathBuf,
    cfg: PathBuf,
    mounted: bool,
}

impl Mount {
    fn start(s: &TestServer, kind: TargetKind) -> Mount {
        require_fuse();
        let work = s.dir.path().to_path_buf();
        let dir = work.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(work.join("run")).unwrap();
        let mut m = Mount {
            cfg: write_config(s, kind),
            work,
            dir,
            mounted: false,
        };
        m.mount();
        m
    }

    fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("XDG_RUNTIME_DIR", self.work.join("run"))
            .env("UPLOADFS_LOG", "uploadfs=debug");
        c
    }

    fn mount(&mut self) {
        let out = run_bounded(
            self.command()
                .arg("--log-file")
                .arg(self.work.join("daemon.log"))
                .args(["mount", "t"])
                .arg(&self.dir)
                .arg("--config")
                .arg(&self.cfg)
                .arg("--cache-dir")
                .arg(self.work.join("cache"))
                .arg("--state-dir")
                .arg(self.work.join("state"))
                .arg("--write-back"),
            Duration::from_secs(60),
        );
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = true;
    }

    fn pid(&self) -> i32 {
        let dir = self.work.join("run").join("uploadfs").join("mounts");
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
            if v["mountpoint"].as_str() == Some(&*self.dir.to_string_lossy()) {
                return v["pid"].as_i64().unwrap() as i32;
            }
        }
        panic!("no registry record for {}", self.dir.display());
    }

    /// `uploadfs unmount [--force]`; returns its stderr.
    fn unmount(&mut self, force: bool) -> String {
        let mut c = self.command();
        c.arg("unmount").arg(&self.dir);
        if force {
            c.arg("--force");
        }
        let out = run_bounded(&mut c, Duration::from_secs(120));
        assert!(
            out.status.success(),
            "unmount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = false;
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mi.contains(&format!(" {} ", self.dir.to_string_lossy())));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// SIGKILL the daemon: the mount is left dead, as after a crash.
    fn kill(&mut self) {
        let pid = self.pid();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&self.dir).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `status --json` of this mount: its pending files by path.
    fn status(&self) -> BTreeMap<String, serde_json::Value> {
        let out = run_bounded(
            self.command().args(["status", "--json"]).arg(&self.dir),
            Duration::from_secs(30),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert_eq!(v["mounts"][0]["source"], "daemon", "status: {v}");
        v["mounts"][0]["pending"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["path"].as_str().unwrap().to_string(), f.clone()))
            .collect()
    }

    /// Poll `status` until `pred` holds.
    fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&BTreeMap<String, serde_json::Value>) -> bool,
    ) -> BTreeMap<String, serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.status();
            if pred(&st) {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn xattr_state(&self, rel: &str) -> String {
        let out = sh(
            &self.work,
            &format!(
                "getfattr --only-values -n user.uploadfs.state mnt/{}",
                rel.trim_start_matches('/')
            ),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let pid = std::panic::catch_unwind(|| self.pid()).ok();
        if let Some(pid) = pid {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

/// Stored files of `proto`: name → (size, sha1); two files with one name fail the test.
fn server_files(s: &TestServer, proto: &str) -> BTreeMap<String, (u64, String)> {
    let mut m = BTreeMap::new();
    for (name, size, sha1) in s.files(proto) {
        assert!(
            m.insert(name.clone(), (size, sha1)).is_none(),
            "{proto}: the server holds two files named {name}"
        );
    }
    m
}

fn bytes_received(s: &TestServer) -> u64 {
    s.state()["bytes_received"].as_u64().unwrap()
}

fn wait_server(s: &TestServer, proto: &str, want: &BTreeMap<String, Vec<u8>>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let files = server_files(s, proto);
        let missing: Vec<&String> = want
            .iter()
            .filter(|(n, d)| files.get(*n) != Some(&(d.len() as u64, sha1_hex(d))))
            .map(|(n, _)| n)
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{proto}: not on the server (or different): {missing:?}; it has {files:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_landed(s: &TestServer, proto: &str, want: &BTreeMap<String, Vec<u8>>) {
    let files = server_files(s, proto);
    for (name, data) in want {
        assert_eq!(
            files.get(name),
            Some(&(data.len() as u64, sha1_hex(data))),
            "{proto}: {name} on the server"
        );
    }
}

/// cp of several files returns before they are uploaded; reads come from the stage;
/// renames and unlinks of queued files stay correct; `status` shows progress; `unmount`
/// drains and everything lands byte-identical, once.
#[test]
fn write_back_cp_then_unmount_drains() {
    let s = TestServer::new();
    // 1 MB/s: the 3 MiB file takes seconds, long enough to watch.
    s.control(serde_json::json!({ "bandwidth": 1_000_000 }));
    let mut m = Mount::start(&s, TargetKind::Box);
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
    let st = m.wait_status("progress of slow.bin", Duration::from_secs(30), |st| {
        st.get("/slow.bin")
            .is_some_and(|f| f["state"] == "uploading" && f["bytes_done"].as_u64().unwrap_or(0) > 0)
    });
    let f = &st["/slow.bin"];
    assert_eq!(f["size"], 3 * MIB as u64);
    assert_eq!(m.xattr_state("slow.bin"), "uploading");
    // unmount waits for every upload.
    let before = bytes_received(&s);
    let stderr = m.unmount(false);
    assert!(
        before < bytes_received(&s),
        "unmount returned before uploading; {stderr}"
    );
    assert_landed(&s, "box", &want);
    let files = server_files(&s, "box");
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
    s.control(serde_json::json!({ "bandwidth": 8 * MIB }));
    let mut m = Mount::start(&s, TargetKind::Box);
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
    m.wait_status("four parts of big.bin", Duration::from_secs(60), |st| {
        st.get("/big.bin")
            .is_some_and(|f| f["parts_done"].as_u64().unwrap_or(0) >= 4)
    });
    m.kill();
    drop(holder);
    let at_kill = server_files(&s, "box");
    assert!(
        want.keys().any(|n| !at_kill.contains_key(n)),
        "every file had landed before the kill; the test proves nothing"
    );
    assert!(!at_kill.contains_key("big.bin"));
    // Remount on the dead mountpoint: the mount is there at once, recovery runs behind it.
    s.control(serde_json::json!({ "bandwidth": 0 }));
    m.mount();
    assert_eq!(m.xattr_state("open.bin"), "incomplete");
    let open_data = std::fs::read(m.dir.join("open.bin")).unwrap();
    assert_eq!(
        open_data, b"data",
        "the incomplete file keeps its local data"
    );
    wait_server(&s, "box", &want, Duration::from_secs(90));
    m.wait_status("recovery to finish", Duration::from_secs(30), |st| {
        st.values()
            .all(|f| f["state"] != "queued" && f["state"] != "uploading")
    });
    m.unmount(false);
    assert_landed(&s, "box", &want);
    let files = server_files(&s, "box");
    assert!(
        !files.contains_key("open.bin"),
        "a never-closed file was uploaded"
    );
    assert_eq!(files.len(), want.len(), "{files:?}");
    // The resumed session sent only the missing parts: far less than a second copy of
    // the accepted 32 MiB (small files cut off in flight are sent again, at most 2 MiB each).
    let received = bytes_received(&s);
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
    s.control(serde_json::json!({ "bandwidth": 2 * MIB }));
    let mut m = Mount::start(&s, TargetKind::Box);
    let data = pattern(24 * MIB, 7);
    std::fs::write(s.dir.path().join("f.bin"), &data).unwrap();
    sh(s.dir.path(), "cp f.bin mnt/f.bin");
    m.wait_status("f.bin uploading", Duration::from_secs(30), |st| {
        st.get("/f.bin").is_some_and(|f| f["state"] == "uploading")
    });
    m.unmount(true);
    assert!(!server_files(&s, "box").contains_key("f.bin"));
    s.control(serde_json::json!({ "bandwidth": 0 }));
    m.mount();
    let want = BTreeMap::from([("f.bin".to_string(), data)]);
    wait_server(&s, "box", &want, Duration::from_secs(60));
    m.unmount(false);
    assert_landed(&s, "box", &want);
}

/// A background upload that fails is kept, shown as failed with its error in `status` and
/// the xattr, and retried once the fault is gone.
#[test]
fn failed_background_upload_is_shown_and_retried() {
    let s = TestServer::new();
    s.control(serde_json::json!({ "max_file_size": 1000 }));
    let mut m = Mount::start(&s, TargetKind::Box);
    let data = pattern(5000, 8);
    std::fs::write(s.dir.path().join("big.txt"), &data).unwrap();
    // close() succeeds: the data is durable locally.
    sh(s.dir.path(), "cp big.txt mnt/big.txt");
    let st = m.wait_status("big.txt failed", Duration::from_secs(30), |st| {
        st.get("/big.txt").is_some_and(|f| f["state"] == "failed")
    });
    assert!(st["/big.txt"]["error"].is_string(), "{st:?}");
    assert_eq!(m.xattr_state("big.txt"), "failed");
    sh(s.dir.path(), "cmp big.txt mnt/big.txt");
    s.control(serde_json::json!({ "max_file_size": 1u64 << 40 }));
    let want = BTreeMap::from([("big.txt".to_string(), data)]);
    wait_server(&s, "box", &want, Duration::from_secs(60));
    m.wait_status("big.txt committed", Duration::from_secs(10), |st| {
        !st.contains_key("/big.txt")
    });
    assert_eq!(m.xattr_state("big.txt"), "committed");
    m.unmount(false);
    assert_landed(&s, "box", &want);
}

/// A target without remote rename (Fluxer): the rsync pattern (write a temporary file,
/// close, rename into place) lands under the final name, once, in write-back mode.
#[test]
fn write_back_rename_after_close_lands_under_the_final_name_on_fluxer() {
    let s = TestServer::new();
    let mut m = Mount::start(&s, TargetKind::Fluxer);
    let data = pattern(300_000, 9);
    std::fs::write(s.dir.path().join("doc.bin"), &data).unwrap();
    sh(
        s.dir.path(),
        "cp doc.bin mnt/.doc.bin.XyZ123 && mv mnt/.doc.bin.XyZ123 mnt/doc.bin",
    );
    m.unmount(false);
    let files = server_files(&s, "fluxer");
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
