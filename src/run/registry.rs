//! The mount registry: one small JSON file per mountpoint (runtime dir, else state dir)
//! naming the daemon's pid, state directory and control socket, so `unmount` can wait for
//! it and `status` can find it; and what `/proc/self/mountinfo` says is mounted.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a running daemon records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRecord {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub target: String,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub started_ms: i64,
    /// The daemon's control socket, when it has one.
    #[serde(default)]
    pub control: Option<PathBuf>,
}

pub(super) fn registry_dir() -> PathBuf {
    dirs::runtime_dir()
        .or_else(dirs::state_dir)
        .or_else(dirs::data_local_dir)
        .unwrap_or_else(std::env::temp_dir)
        .join("uploadfs")
        .join("mounts")
}

pub(super) fn registry_file(mountpoint: &Path) -> PathBuf {
    use sha1::Digest;
    let h = hex::encode(sha1::Sha1::digest(
        mountpoint.as_os_str().as_encoded_bytes(),
    ));
    registry_dir().join(format!("{}.json", &h[..16]))
}

pub(super) fn read_record(mountpoint: &Path) -> Option<MountRecord> {
    let text = std::fs::read_to_string(registry_file(mountpoint)).ok()?;
    serde_json::from_str(&text).ok()
}

pub(super) fn all_records() -> Vec<MountRecord> {
    every_record()
        .into_iter()
        .filter(|r| pid_alive(r.pid))
        .collect()
}

/// Every record, those of daemons that died included.
pub(super) fn every_record() -> Vec<MountRecord> {
    let Ok(rd) = std::fs::read_dir(registry_dir()) else {
        return vec![];
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|t| serde_json::from_str::<MountRecord>(&t).ok())
        .collect()
}

pub(super) fn pid_alive(pid: u32) -> bool {
    // Signal 0 only checks that the process exists; a killed daemon nobody reaped yet
    // (a zombie) is dead all the same.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesized command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => true,
    }
}

/// Unescape a mountinfo path field (`\040` for space, ...).
pub(super) fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The filesystem type mounted at `mountpoint`, if any (from /proc/self/mountinfo).
pub fn mounted_fstype(mountpoint: &Path) -> Option<String> {
    mounted(mountpoint).map(|(t, _)| t)
}

/// Type and source of the mount on top at `mountpoint` (uploadfs's source is
/// `uploadfs:TARGET`; a mount made without the setuid helper has type plain `fuse`).
pub(super) fn mounted(mountpoint: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mountpoint.to_string_lossy();
    let mut found = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 5 || unescape_mountinfo(fields[4]) != want {
            continue;
        }
        let sep = fields.iter().position(|f| *f == "-");
        let field = |k: usize| {
            sep.and_then(|i| fields.get(i + k))
                .map(|s| unescape_mountinfo(s))
                .unwrap_or_default()
        };
        let fstype = (field(1), field(2));
        // The last matching line is the mount on top.
        found = Some(fstype);
    }
    found
}
