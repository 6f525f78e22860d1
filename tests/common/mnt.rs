//! Real-mount support for the everyday-use tests (the same approach as
//! tests/mount_scenarios.rs): bounded tool runs, a config file pointing at the test server,
//! and a guard that owns a mount however it was made (`uploadfs mount`, mount(8), an fstab
//! line) and unmounts it — detaching and killing the daemon if need be — when dropped.
//! Included with `#[path = "common/mnt.rs"] mod mnt;` next to `mod common;` and
//! `#[path = "common/mount.rs"] mod mount;`, whose shared pieces it re-exports.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestServer, TOKEN};
pub use crate::mount::{
    detach, registered_pid, require_fuse, run_bounded, server_files, stop_daemon, xattr, BIN,
};
use uploadfs::config::TargetKind;

/// Bound on any single tool run through a mount.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

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

/// Whether `dir` is a mountpoint right now.
pub fn is_mounted(dir: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.to_string_lossy();
    mi.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p == want))
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
        registered_pid(&self.run_dir, &self.dir)
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
            detach(&self.dir);
        }
        stop_daemon(pid);
    }
}
