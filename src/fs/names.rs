//! Name rules and tool heuristics: which names a new entry may have (local limits and the
//! target's own rules, checked before anything is staged), the desktop trash folders a
//! flat target refuses, GIO's safe-save temporary files whose upload waits for the rename
//! into place, and the caller's thread group (a forked child's close does not commit).

use super::{Error, Fs, FsResult};

/// Longest name a directory entry may have (bytes), as on local filesystems.
pub const NAME_MAX: usize = 255;

pub(super) fn tgid_of(pid: u32) -> u32 {
    use std::io::Read;
    if pid == 0 {
        return 0;
    }
    // `Tgid:` is the fourth line of the status file, well inside its first 512 bytes: one
    // read instead of reading the whole file with a growing buffer (ten system calls, a
    // measurable share of a small file's create and close).
    let mut buf = [0u8; 512];
    let n = std::fs::File::open(format!("/proc/{pid}/status"))
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    let head = &buf[..n];
    head.windows(6)
        .position(|w| w == b"\nTgid:")
        .and_then(|at| {
            let rest = &head[at + 6..];
            let end = rest.iter().position(|b| *b == b'\n')?;
            std::str::from_utf8(&rest[..end]).ok()?.trim().parse().ok()
        })
        .unwrap_or(pid)
}

/// Validate a name for a new entry.
pub(super) fn check_new_name(name: &std::ffi::OsStr) -> FsResult<&str> {
    if name.len() > NAME_MAX {
        return Err(Error::new(libc::ENAMETOOLONG));
    }
    let s = name.to_str().ok_or(libc::EINVAL)?;
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
        return Err(Error::new(libc::EINVAL));
    }
    Ok(s)
}

/// Prefix of GIO's safe-save temporary files (see [`Fs::waits_for_rename`]).
const SAVE_TEMP_PREFIX: &str = ".goutputstream-";

pub(super) fn is_save_temp(name: &str) -> bool {
    name.starts_with(SAVE_TEMP_PREFIX)
}

/// The trash folders file managers create at a filesystem's top (`.Trash`, `.Trash-UID`;
/// freedesktop.org trash specification).
pub(super) fn is_trash_dir(name: &str) -> bool {
    name == ".Trash"
        || name
            .strip_prefix(".Trash-")
            .is_some_and(|uid| !uid.is_empty() && uid.bytes().all(|b| b.is_ascii_digit()))
}

/// Validate a name being looked up (a name that cannot exist is simply absent).
pub(super) fn check_lookup_name(name: &std::ffi::OsStr) -> FsResult<&str> {
    if name.len() > NAME_MAX {
        return Err(Error::new(libc::ENAMETOOLONG));
    }
    name.to_str().ok_or(Error::new(libc::ENOENT))
}

impl Fs {
    /// Refuse (EINVAL) a name the target would refuse, before anything is staged, so no
    /// file that can never be uploaded is left behind. Folders of flat targets exist only
    /// in the catalog, so any name does for them.
    pub(super) fn check_target_name(&self, name: &str, is_dir: bool) -> FsResult<()> {
        if is_dir && !self.caps.folders {
            return Ok(());
        }
        self.target.check_name(name).map_err(|e| {
            let mut e = Error::from(e).context(format_args!("name {name:?} refused"));
            e.errno = libc::EINVAL;
            e
        })
    }

    /// A save through a temporary file on a target without remote rename: GIO's
    /// `g_file_replace` writes `.goutputstream-XXXXXX`, closes it and renames it over the
    /// original. Committed at close, the content would keep the temporary name remotely for
    /// good; so its upload waits for the rename (which then returns the upload's outcome).
    pub(super) fn waits_for_rename(&self, ino: u64) -> bool {
        !self.caps.rename
            && self
                .tree()
                .get(ino)
                .is_some_and(|n| !n.is_dir() && n.row.remote.is_none() && is_save_temp(&n.row.name))
    }
}
