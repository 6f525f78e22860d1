//! Real-mount test support shared by the tests that drive a FUSE mount of the `uploadfs`
//! binary against `uploadfs serve` (include with
//! `#[path = "common/mount.rs"] mod mount;` next to `mod common;`): bounded tool runs, the
//! config file of one target, the [`Mount`] guard that always unmounts, and server-side
//! checks through introspection.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{sha1_hex, TestServer, TOKEN};
use uploadfs::config::TargetKind;

pub const BIN: &str = env!("CARGO_BIN_EXE_uploadfs");

/// Bound on any single tool run through the mount.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "REAL-MOUNT TESTS CANNOT RUN: /dev/fuse is missing (needs root or a FUSE-enabled host)"
    );
    let found = Command::new("sh")
        .args(["-c", "command -v fusermount3"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    // Root mounts and unmounts directly; everyone else needs the setuid helper.
    assert!(
        found || unsafe { libc::geteuid() } == 0,
        "REAL-MOUNT TESTS CANNOT RUN: fusermount3 is missing (apt-get install fuse3)"
    );
}

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

/// `sh -c script` in `dir`; panics with the output unless it succeeds.
pub fn sh(dir: &Path, script: &str) -> Output {
    let out = sh_status(dir, script);
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn sh_status(dir: &Path, script: &str) -> Output {
    run_bounded(
        Command::new("sh").arg("-c").arg(script).current_dir(dir),
        TOOL_TIMEOUT,
    )
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

/// A config file naming one target `t` of `kind` at the test server (mode 600).
pub fn write_config(s: &TestServer, kind: TargetKind, extra: &str) -> PathBuf {
    let c = s.config(kind);
    let mut text = format!(
        "[targets.t]\nkind = \"{}\"\nurl = \"{}\"\ntoken = \"{TOKEN}\"\nretry_seconds = 20\n",
        kind.as_str(),
        c.url
    );
    if let Some(u) = &c.upload_url {
        text.push_str(&format!("upload_url = \"{u}\"\n"));
    }
    match kind {
        TargetKind::Fluxer => text.push_str(&format!(
            "channel_id = \"{}\"\n",
            c.channel_id.as_deref().unwrap_or_default()
        )),
        TargetKind::Virola => text.push_str(&format!(
            "room_id = {}\nmessage_id = {}\n",
            c.room_id.unwrap_or_default(),
            c.message_id.unwrap_or_default()
        )),
        _ => {}
    }
    text.push_str(extra);
    let path = s.dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A running mount, unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, PathBuf)>,
    pub run_dir: PathBuf,
    pub mounted: bool,
}

impl Mount {
    /// `uploadfs mount <args...> <dir>` with the registry under `work/run`.
    pub fn start(work: &Path, target: &str, extra: &[&str], env: Vec<(String, PathBuf)>) -> Mount {
        require_fuse();
        let dir = work.join("mnt");
        std::fs::create_dir_all(&dir).unwrap();
        let run_dir = work.join("run");
        std::fs::create_dir_all(&run_dir).unwrap();
        let mut args = vec![
            "--log-file".to_string(),
            work.join("daemon.log").to_string_lossy().into_owned(),
            "mount".to_string(),
            target.to_string(),
            dir.to_string_lossy().into_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut m = Mount {
            dir,
            args,
            env,
            run_dir,
            mounted: false,
        };
        m.mount();
        m
    }

    /// Mount target `t` of `kind` at server `s` (config extra lines `config_extra`), with
    /// cache and state under the server's directory; `extra` adds mount options.
    pub fn for_kind(s: &TestServer, kind: TargetKind, config_extra: &str, extra: &[&str]) -> Mount {
        let work = s.dir.path();
        let cfg = write_config(s, kind, config_extra);
        let (cache, state) = (work.join("cache"), work.join("state"));
        let mut args = vec![
            "--config",
            cfg.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Mount::start(work, "t", &args, vec![])
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("XDG_RUNTIME_DIR", &self.run_dir)
            .env("UPLOADFS_LOG", "uploadfs=debug");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn mount(&mut self) {
        let out = run_bounded(self.command().args(&self.args), Duration::from_secs(60));
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = true;
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            mi.contains(&*self.dir.to_string_lossy()),
            "mount returned but {} is not in mountinfo",
            self.dir.display()
        );
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        registered_pid(&self.run_dir, &self.dir)
    }

    /// `uploadfs unmount`, which waits for the daemon to finish.
    pub fn unmount(&mut self) {
        let out = run_bounded(
            self.command().arg("unmount").arg(&self.dir),
            Duration::from_secs(120),
        );
        assert!(
            out.status.success(),
            "unmount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = false;
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mi.contains(&format!(" {} ", self.dir.to_string_lossy())));
    }

    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if self.mounted {
            let pid = self.daemon_pid();
            detach(&self.dir);
            stop_daemon(pid);
        }
    }
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

/// Wait up to 20 s for daemon `pid` to exit, then kill it.
pub fn stop_daemon(pid: Option<i32>) {
    let Some(pid) = pid else { return };
    let deadline = Instant::now() + Duration::from_secs(20);
    while unsafe { libc::kill(pid, 0) } == 0 {
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stored files of `proto` on the server: name → (size, sha1), asserting unique names.
pub fn server_files(s: &TestServer, proto: &str) -> BTreeMap<String, (u64, String)> {
    let mut m = BTreeMap::new();
    for (name, size, sha1) in s.files(proto) {
        assert!(
            m.insert(name.clone(), (size, sha1)).is_none(),
            "{proto}: the server holds two files named {name}"
        );
    }
    m
}

pub fn assert_on_server(s: &TestServer, proto: &str, name: &str, data: &[u8]) {
    let files = server_files(s, proto);
    let want = (data.len() as u64, sha1_hex(data));
    if proto == "dyson" && !files.contains_key(name) && files.values().any(|v| *v == want) {
        // Dyson stores one file per content (MD5 dedupe): this path shares it.
        return;
    }
    let got = files
        .get(name)
        .unwrap_or_else(|| panic!("{proto}: {name} is not on the server; it has {files:?}"));
    assert_eq!(
        got,
        &(data.len() as u64, sha1_hex(data)),
        "{proto}: {name} on the server differs"
    );
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
    getxattr_raw(path, name)
        .ok()
        .map(|v| String::from_utf8_lossy(&v).into_owned())
}
