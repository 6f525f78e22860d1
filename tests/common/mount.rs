//! Real mounts: the tests that drive the `uploadfs` binary's FUSE mount against the test
//! server. The [`Mount`] guard owns one mount however it was made (`uploadfs mount`, or
//! mount(8) and an fstab line through [`Mount::adopt`]) and always lets go of it when
//! dropped: unmounted (lazily if busy or hung) and its daemon stopped, killed if it does
//! not exit, so a failing test never leaves a stale mount. Around it: bounded tool runs
//! (a hang fails the test instead of blocking it) and probes of a mount (mountinfo, the
//! daemon registry, xattrs).
//!
//! A guard's files live in one working directory: `mnt/` (the mountpoint), `run/` (the
//! daemon registry, the daemon's `$XDG_RUNTIME_DIR`), `daemon.log`, and for mounts with a
//! config file `cache/` and `state/`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use uploadfs::config::TargetKind;

use super::config::write_config;
use super::server::TestServer;
use super::BIN;

/// Bound on any single tool run through a mount.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// Bound on `uploadfs mount` (it returns once the mount is ready).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on `uploadfs unmount`, which waits for uploads to finish.
const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a daemon may take to exit once its mount is gone before it is killed.
const DAEMON_EXIT: Duration = Duration::from_secs(20);

/// The xattr holding a file's upload state.
pub const STATE_XATTR: &str = "user.uploadfs.state";

/// Fail loudly when real mounts cannot be made here.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "REAL-MOUNT TESTS CANNOT RUN: /dev/fuse is missing (needs root or a FUSE-enabled host)"
    );
    // Root mounts and unmounts directly; everyone else needs the setuid helper.
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

// ----- bounded runs ---------------------------------------------------------------------

/// Run a command with a timeout; kill it when the time is up.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
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

/// `sh -c script` in `dir` with `env` added, killed after `timeout`: the output, whatever
/// the status.
pub fn sh_run(dir: &Path, env: &[(&str, &str)], timeout: Duration, script: &str) -> Output {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script).current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    run_bounded(&mut c, timeout)
}

/// `out` of `script`; panics with it unless it succeeded.
pub fn expect_success(script: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// `sh -c script` in `dir`; panics with the output unless it succeeds.
pub fn sh(dir: &Path, script: &str) -> Output {
    expect_success(script, sh_status(dir, script))
}

/// `sh -c script` in `dir`: the output, whatever the status.
pub fn sh_status(dir: &Path, script: &str) -> Output {
    sh_run(dir, &[], TOOL_TIMEOUT, script)
}

/// `out` of `what` failed, and its stderr says `error` (an errno's text, say).
pub fn assert_fails_with(out: &Output, error: &str, what: &str) {
    assert!(!out.status.success(), "{what} succeeded");
    let stderr = text(&out.stderr);
    assert!(stderr.contains(error), "{what}: {stderr}");
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run `f` on another thread, failing the test if it takes longer than `timeout` (a hung
/// FUSE call is then released by the mount guard killing the daemon).
pub fn bounded<T: Send + 'static>(timeout: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(v)) => v,
        Ok(Err(p)) => std::panic::resume_unwind(p),
        Err(_) => panic!("operation through the mount timed out after {timeout:?}"),
    }
}

// ----- the guard ------------------------------------------------------------------------

/// A mount at `work/mnt`, let go of on drop (see the module documentation).
pub struct Mount {
    pub work: PathBuf,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    /// `uploadfs` arguments up to the mount options: log file, `mount`, target, mountpoint,
    /// and the config, cache and state options where the guard was given them.
    args: Vec<String>,
    /// The mount options after `args` ([`Mount::set_extra`] changes them for remounts).
    extra: Vec<String>,
    env: Vec<(String, PathBuf)>,
}

impl Mount {
    fn new(work: &Path, args: Vec<String>, extra: &[&str], env: Vec<(String, PathBuf)>) -> Mount {
        Mount {
            work: work.to_path_buf(),
            dir: work.join("mnt"),
            run_dir: work.join("run"),
            args,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
        }
    }

    /// `uploadfs mount TARGET work/mnt FIXED... EXTRA...` with `env` added, logging to
    /// `work/daemon.log`.
    fn launch(
        work: &Path,
        target: &str,
        fixed: &[&str],
        extra: &[&str],
        env: Vec<(String, PathBuf)>,
    ) -> Mount {
        require_fuse();
        let dir = work.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(work.join("run")).unwrap();
        let mut args = vec![
            "--log-file".to_string(),
            work.join("daemon.log").to_string_lossy().into_owned(),
            "mount".to_string(),
            target.to_string(),
            dir.to_string_lossy().into_owned(),
        ];
        args.extend(fixed.iter().map(|s| s.to_string()));
        let mut m = Mount::new(work, args, extra, env);
        m.mount();
        m
    }

    /// `uploadfs mount TARGET work/mnt EXTRA...` with `env` added (no config file: the
    /// built-in `local` target).
    pub fn start(work: &Path, target: &str, extra: &[&str], env: Vec<(String, PathBuf)>) -> Mount {
        Mount::launch(work, target, &[], extra, env)
    }

    /// Mount `target` of config file `cfg` with cache and state under `work`; `extra` adds
    /// mount options.
    pub fn with_config(work: &Path, target: &str, cfg: &Path, extra: &[&str]) -> Mount {
        let (cache, state) = (work.join("cache"), work.join("state"));
        let fixed = [
            "--config",
            cfg.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        Mount::launch(work, target, &fixed, extra, vec![])
    }

    /// Mount target `t` of `kind` at server `s` (extra config lines `config_extra`), with
    /// everything under the server's directory; `extra` adds mount options.
    pub fn for_kind(s: &TestServer, kind: TargetKind, config_extra: &str, extra: &[&str]) -> Mount {
        let cfg = write_config(s, kind, config_extra);
        Mount::with_config(s.dir.path(), "t", &cfg, extra)
    }

    /// Own a mount made some other way (mount(8), fstab) at `work/mnt`, whose daemon
    /// registers under `work/run`. Such a guard cannot mount again.
    pub fn adopt(work: &Path) -> Mount {
        Mount::new(work, vec![], &[], vec![])
    }

    /// Replace the mount options used by the next [`Mount::mount`].
    pub fn set_extra(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// The `uploadfs` binary with this mount's registry and environment.
    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("XDG_RUNTIME_DIR", &self.run_dir)
            .env("UPLOADFS_LOG", "uploadfs=debug");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Mount (again); asserts that it worked.
    pub fn mount(&mut self) {
        assert!(
            !self.args.is_empty(),
            "an adopted mount cannot be remounted"
        );
        let out = run_bounded(
            self.command().args(&self.args).args(&self.extra),
            MOUNT_TIMEOUT,
        );
        assert!(out.status.success(), "mount failed: {}", text(&out.stderr));
        assert!(
            is_mounted(&self.dir),
            "mount returned but {} is not mounted",
            self.dir.display()
        );
    }

    fn unmount_with(&mut self, flags: &[&str]) -> String {
        let out = run_bounded(
            self.command().arg("unmount").arg(&self.dir).args(flags),
            UNMOUNT_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "unmount failed: {}",
            text(&out.stderr)
        );
        assert!(
            !is_mounted(&self.dir),
            "unmount returned but {} is still mounted",
            self.dir.display()
        );
        text(&out.stderr)
    }

    /// `uploadfs unmount`, which waits for the daemon to finish; returns its stderr.
    pub fn unmount(&mut self) -> String {
        self.unmount_with(&[])
    }

    /// `uploadfs unmount --force`, which leaves running uploads journaled; returns its
    /// stderr.
    pub fn unmount_force(&mut self) -> String {
        self.unmount_with(&["--force"])
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// The daemon's pid, from its registry record.
    pub fn daemon_pid(&self) -> Option<i32> {
        registered_pid(&self.run_dir, &self.dir)
    }

    /// SIGKILL the daemon: the mount is left dead, as after a crash.
    pub fn kill(&mut self) {
        let pid = self
            .daemon_pid()
            .unwrap_or_else(|| panic!("no registry record for {}", self.dir.display()));
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&self.dir).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `uploadfs status --json` of this mount.
    pub fn status_json(&self) -> serde_json::Value {
        let out = run_bounded(
            self.command().args(["status", "--json"]).arg(&self.dir),
            Duration::from_secs(30),
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&out.stderr)))
    }

    /// The pending files of this mount by path, as its running daemon reports them.
    pub fn pending(&self) -> BTreeMap<String, serde_json::Value> {
        let v = self.status_json();
        assert_eq!(v["mounts"][0]["source"], "daemon", "status: {v}");
        v["mounts"][0]["pending"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| (f["path"].as_str().unwrap().to_string(), f.clone()))
            .collect()
    }

    /// Poll [`Mount::pending`] until `pred` holds.
    pub fn wait_pending(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&BTreeMap<String, serde_json::Value>) -> bool,
    ) -> BTreeMap<String, serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.pending();
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

    /// The upload state xattr of `rel` (None when it cannot be read).
    pub fn state_of(&self, rel: &str) -> Option<String> {
        xattr(&self.path(rel), STATE_XATTR)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.join("daemon.log")).unwrap_or_default()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let pid = self.daemon_pid();
        if is_mounted(&self.dir) {
            detach(&self.dir);
        }
        stop_daemon(pid);
    }
}

// ----- probes ---------------------------------------------------------------------------

/// Whether `dir` is a mountpoint right now.
pub fn is_mounted(dir: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = dir.to_string_lossy();
    mi.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|p| p == want))
}

/// The pid of the daemon serving `mountpoint`, from the registry under `run_dir`
/// (`$XDG_RUNTIME_DIR`).
pub fn registered_pid(run_dir: &Path, mountpoint: &Path) -> Option<i32> {
    let dir = run_dir.join("uploadfs").join("mounts");
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let text = std::fs::read_to_string(e.path()).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        if v["mountpoint"].as_str() == Some(&*mountpoint.to_string_lossy()) {
            return v["pid"].as_i64().map(|p| p as i32);
        }
    }
    None
}

/// Unmount `dir` however it can be done (lazily if it is busy or its daemon hung).
pub fn detach(dir: &Path) {
    let ok = [("fusermount3", "-u"), ("umount", "-v")]
        .iter()
        .any(|(bin, flag)| {
            Command::new(bin)
                .arg(flag)
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        });
    if !ok {
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(dir)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount").arg("-l").arg(dir).status();
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

/// Give daemon `pid` time to exit, then kill it.
pub fn stop_daemon(pid: Option<i32>) {
    let Some(pid) = pid else { return };
    if !wait_exit(pid, DAEMON_EXIT) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// getxattr(path, name): the value, or the errno.
pub fn getxattr_raw(path: &Path, name: &str) -> Result<Vec<u8>, i32> {
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
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(r as usize);
    Ok(buf)
}

/// Read an extended attribute (None when absent).
pub fn xattr(path: &Path, name: &str) -> Option<String> {
    getxattr_raw(path, name).ok().map(|v| text(&v))
}
