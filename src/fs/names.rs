//! Name rules and tool heuristics: which names a new entry may have (what a local disk
//! accepts; the target's own rules, applied to the encoded name, checked before anything
//! is staged), the desktop trash folders a flat target refuses, the temporary files of
//! GIO's safe save, rsync and `sed -i` whose upload waits for the rename into place, and
//! the caller's thread group (a forked child's close does not commit).

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

/// Length of the random suffix `mkstemp(3)` puts in a temporary name (`XXXXXX`).
const MKSTEMP_SUFFIX: usize = 6;

/// GIO's safe-save temporary file (`.goutputstream-XXXXXX`): on no target does it start
/// an early upload, and it waits for its rename where that is local.
pub(super) fn is_save_temp(name: &str) -> bool {
    name.starts_with(SAVE_TEMP_PREFIX)
}

/// A temporary file a tool writes, closes and then renames into place: GIO's safe save,
/// rsync's `.NAME.XXXXXX` and `sed -i`'s `sedXXXXXX`. The `XXXXXX` of the last two is
/// `mkstemp`'s: six ASCII letters and digits; at least one capital letter is asked for
/// too, so ordinary names (`.bashrc.backup`, `sediments`) do not match (the few temporary
/// names without one are re-posted after their rename instead).
pub(super) fn is_tool_temp(name: &str) -> bool {
    let mkstemp = |x: &str| {
        x.len() == MKSTEMP_SUFFIX
            && x.bytes().all(|b| b.is_ascii_alphanumeric())
            && x.bytes().any(|b| b.is_ascii_uppercase())
    };
    let rsync = || {
        name.strip_prefix('.')
            .and_then(|rest| rest.rsplit_once('.'))
            .is_some_and(|(base, x)| !base.is_empty() && mkstemp(x))
    };
    let sed = || name.strip_prefix("sed").is_some_and(mkstemp);
    is_save_temp(name) || rsync() || sed()
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
    /// original (rsync and `sed -i` likewise). Committed at close, the content would land
    /// under the temporary name and have to be posted again after the rename; so its
    /// upload waits for the rename (which then returns the upload's outcome).
    pub(super) fn waits_for_rename(&self, ino: u64) -> bool {
        !self.caps.rename
            && self
                .tree()
                .get(ino)
                .is_some_and(|n| !n.is_dir() && n.row.remote.is_none() && is_tool_temp(&n.row.name))
    }
}

#[cfg(test)]
mod tests {
    use super::{is_save_temp, is_tool_temp};

    #[test]
    fn tools_temporary_names() {
        for temp in [
            ".goutputstream-AB12cd",
            ".f1.bin.QlhxxK",
            ".a.Xb3k9z",
            "sedrTewaY",
        ] {
            assert!(is_tool_temp(temp), "{temp}");
        }
        for plain in [
            ".bashrc.backup",
            "sediments",
            "sed",
            ".x.ABCDEFG",
            "..ABCdef",
            "notes.ABCdef",
            "sedABC-ef",
        ] {
            assert!(!is_tool_temp(plain), "{plain}");
        }
        // Only GIO's keeps an early upload from starting (on every target).
        assert!(is_save_temp(".goutputstream-AB12cd") && !is_save_temp(".f1.bin.QlhxxK"));
    }
}
