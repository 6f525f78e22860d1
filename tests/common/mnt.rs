//! Real-mount support for the everyday-use tests (the same approach as
//! tests/mount_scenarios.rs): bounded tool runs, a config file pointing at the test server,
//! and a guard that owns a mount however it was made (`uploadfs mount`, mount(8), an fstab
//! line) and unmounts it — detaching and killing the daemon if need be — when dropped.
//! Included with `#[path = "common/mnt.rs"] mod mnt;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestServer, TOKEN};
use uploadfs::config::TargetKind;

pub const BIN: &str = env!("CARGO_BIN_EXE_uploadfs");

/// Bound on any single tool run through a mount.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "REAL-MOUNT TESTS CANNOT RUN: /dev/fuse is missing (needs root or a FUSE-enabled host)"
    );
    assert!(
        have("fusermount3") || unsafe { libc::geteuid() } == 0,
        "REAL-MOUNT TESTS CANNOT RUN: fusermount3 is missing (apt-get install fuse3)"
    );
}

/// Whether `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Run a command with a timeout; kill it when the time is up.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let start = Instant::now();
    // Drain output in threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = so.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = vec![];
        let _ = se.read_to_end(&mut v);
        v
    });
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Output {
                status,
                stdout: to.join().unwrap(),
                stderr: te.join().unwrap(),
            };
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command timed out after {timeout:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sh -c script` in `dir` with `env`; the output, whatever the status.
pub fn sh_env(dir: &Path, env: &[(&str, &str)], script: &str) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    run_bounded(&mut c, TOOL_TIMEOUT)
}

/// `sh -c script` in `dir`; panics with the output unless it succeeds.
pub fn sh_ok(dir: &Path, env: &[(&str, &str)], script: &str) -> Output {
    let out = sh_env(dir, env, script);
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A config file naming one target `name` of `kind` at the test server (mode 600).
pub fn write_config(s: &TestServer, kind: TargetKind, name: &str, extra: &str) -> PathBuf {
    let c = s.config(kind);
    let mut text = format!(
        "[targets.{name}]\nkind = \"{}\"\nurl = \"{}\"\ntoken = \"{TOKEN}\"\nretry_seconds = 20\n",
        kind.as_str(),
        c.url
    );
    if let Some(u) = &c.upload_url {
        text.push_str(&format!("upload_url = \"{u}\"\n"));
    }
    if let Some(ch) = &c.channel_id {
        if kind == TargetKind::Fluxer {
            text.push_str(&format!("channel_id = \"{ch}\"\n"));
        }
    }
    if kind == TargetKind::Virola {
        text.push_str(&format!(
            "room_id = {}\nmessage_id = {}\n",
            c.room_id.unwrap_or_default(),
            c.message_id.unwrap_or_default()
        ));
    }
    text.push_str(extra);
    let path = s.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Stored files of `proto` on the server: name → (size, sha1).
pub fn server_files(s: &TestServer, proto: &str) -> BTreeMap<String, (u64, String)> {
    s.files(proto)
        .into_iter()
        .map(|(n, size, sha1)| (n, (size, sha1)))
        .collect()
}

/// Whether `dir` is a mountpoint right now.
pub fn is_mounted(dir: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.to_string_lossy();
    mi.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p == want))
}

/// Read an extended attribute (None when absent).
pub fn xattr(path: &Path, name: &str) -> Option<String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    let r = unsafe {
        libc::getxattr(
            p.as_ptr(),
            n.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// An uploadfs mount at `dir`, unmounted on drop. The daemon registers itself under
/// `run_dir` (its `XDG_RUNTIME_DIR`), which is how the guard finds its pid.
pub struct MountGuard {
    pub dir: PathBuf,
    pub run_dir: PathBuf,
}

impl MountGuard {
    /// Own a mount made some other way (mount(8), fstab) at `dir`.
    pub fn adopt(dir: &Path, run_dir: &Path) -> MountGuard {
        MountGuard {
            dir: dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
        }
    }

    /// `uploadfs mount NAME work/mnt --config CFG` with cache and state under `work`.
    pub fn start(work: &Path, name: &str, cfg: &Path) -> MountGuard {
        require_fuse();
        let dir = work.join("mnt");
        let run_dir = work.join("run");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&run_dir).unwrap();
        let out = run_bounded(
            Command::new(BIN)
                .env("XDG_RUNTIME_DIR", &run_dir)
                .env("UPLOADFS_LOG", "uploadfs=debug")
                .arg("--log-file")
                .arg(work.join("daemon.log"))
                .args(["mount", name])
                .arg(&dir)
                .arg("--config")
                .arg(cfg)
                .arg("--cache-dir")
                .arg(work.join("cache"))
                .arg("--state-dir")
                .arg(work.join("state")),
            Duration::from_secs(60),
        );
        assert!(out.status.success(), "mount failed: {}", text(&out.stderr));
        assert!(
            is_mounted(&dir),
            "mount returned but {} is not mounted",
            dir.display()
        );
        MountGuard { dir, run_dir }
    }

    /// The daemon's pid, from its registry record.
    pub fn daemon_pid(&self) -> Option<i32> {
        let dir = self.run_dir.join("uploadfs").join("mounts");
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let text = std::fs::read_to_string(e.path()).ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            if v["mountpoint"].as_str() == Some(&*self.dir.to_string_lossy()) {
                return v["pid"].as_i64().map(|p| p as i32);
            }
        }
        None
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// Wait until process `pid` is gone; false after `timeout`.
pub fn wait_exit(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while unsafe { libc::kill(pid, 0) } == 0 {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let pid = self.daemon_pid();
        if is_mounted(&self.dir) {
            let ok = [("fusermount3", "-u"), ("umount", "-v")]
                .iter()
                .any(|(bin, flag)| {
                    Command::new(bin)
                        .arg(flag)
                        .arg(&self.dir)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
                });
            if !ok {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.dir)
                    .stderr(Stdio::null())
                    .status();
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        if let Some(pid) = pid {
            if !wait_exit(pid, Duration::from_secs(20)) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}
