//! Name rules and tool heuristics: which names a new entry may have (what a local disk
//! accepts; the target's own rules, applied to the encoded name, checked before anything
//! is staged), the desktop trash folders a flat target refuses, the temporary files of
//! GIO's safe save, rsync and `sed -i` whose upload waits for the rename into place, and
//! the caller's process (its thread group: a forked child's close does not commit; its
//! name: rsync's temporary names are recognised more widely).

use super::{Error, Fs, FsResult};

/// Longest name a directory entry may have (bytes), as on local filesystems.
pub const NAME_MAX: usize = 255;

/// What a file's creator is, as far as the name rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Caller {
    /// The thread group (the process) the request came from.
    pub tgid: u32,
    /// The process is rsync, which writes every file under an `mkstemp` name and renames
    /// it into place (see [`is_tool_temp`]).
    pub is_rsync: bool,
}

/// rsync's command name (`/proc/PID/status`'s `Name:`). sed is not trusted likewise: its
/// `w` command writes files of any name, `sedXXXXXX` included.
const RSYNC: &[u8] = b"rsync";

/// The caller of a request, from `/proc/PID/status`.
pub(super) fn caller(pid: u32) -> Caller {
    use std::io::Read;
    if pid == 0 {
        return Caller {
            tgid: 0,
            is_rsync: false,
        };
    }
    // `Name:` is the first line of the status file and `Tgid:` the fourth, well inside its
    // first 512 bytes: one read instead of reading the whole file with a growing buffer
    // (ten system calls, a measurable share of a small file's create and close).
    let mut buf = [0u8; 512];
    let n = std::fs::File::open(format!("/proc/{pid}/status"))
        .and_then(|mut f| f.read(&mut buf))
        .unwrap_or(0);
    let head = &buf[..n];
    let field = |key: &[u8]| {
        head.windows(key.len())
            .position(|w| w == key)
            .and_then(|at| {
                let rest = &head[at + key.len()..];
                let end = rest.iter().position(|b| *b == b'\n')?;
                Some(rest[..end].trim_ascii())
            })
    };
    let tgid = field(b"\nTgid:")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        .unwrap_or(pid);
    // The first line: no earlier `Name:` to find.
    let is_rsync = field(b"Name:") == Some(RSYNC);
    Caller { tgid, is_rsync }
}

pub(super) fn tgid_of(pid: u32) -> u32 {
    caller(pid).tgid
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
/// `mkstemp`'s: six ASCII letters and digits. The name must also hold a capital letter,
/// so that ordinary names (`.bashrc.backup`, `sediments`) do not match, unless rsync
/// itself created the file exclusively, as `mkstemp` does (`by_rsync`, [`Caller`]; with
/// `--inplace` rsync opens the final name without O_EXCL): otherwise one of its
/// temporary files in 26 (six characters of 62 with no capital letter: (36/62)^6) would
/// be uploaded before its rename and posted again after it.
pub(super) fn is_tool_temp(name: &str, by_rsync: bool) -> bool {
    let sed = || {
        name.strip_prefix("sed")
            .is_some_and(|x| is_mkstemp_suffix(x, false))
    };
    is_save_temp(name) || rsync_final_name(name, by_rsync).is_some() || sed()
}

/// `mkstemp`'s `XXXXXX` as [`is_tool_temp`] recognises it (`any_case`: without a
/// capital letter too).
fn is_mkstemp_suffix(x: &str, any_case: bool) -> bool {
    x.len() == MKSTEMP_SUFFIX
        && x.bytes().all(|b| b.is_ascii_alphanumeric())
        && (any_case || x.bytes().any(|b| b.is_ascii_uppercase()))
}

/// rsync writes `NAME` as `.NAME.XXXXXX` and renames it into place once closed: `NAME`
/// (`by_rsync` as for [`is_tool_temp`]).
pub(super) fn rsync_final_name(name: &str, by_rsync: bool) -> Option<&str> {
    name.strip_prefix('.')
        .and_then(|rest| rest.rsplit_once('.'))
        .filter(|(base, x)| !base.is_empty() && is_mkstemp_suffix(x, by_rsync))
        .map(|(base, _)| base)
}

/// Whether a file named `local` here holds the remote file named `remote` because it was
/// uploaded under its final name ahead of its rename ([`Fs::name_ahead`]). Any `mkstemp`
/// suffix counts: with the remote name equal to the rest, the local name can only come
/// from there.
pub(super) fn landed_ahead(local: &str, remote: &str) -> bool {
    rsync_final_name(local, true) == Some(remote)
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

    /// The name to upload a file under ahead of its rename: rsync writes each file as
    /// `.NAME.XXXXXX`, closes it (the upload) and renames it to `NAME` at once, which on
    /// a target with remote renames would cost a second remote operation per file. A new
    /// file whose final name is free in its folder (no file here has it, locally or as its
    /// remote name) is uploaded as `NAME` straight away, so the rename that follows is
    /// local only ([`Fs::rename`] sends nothing when the remote name is already the new
    /// one). Folder targets and Dyson (flat, with a remote rename). `close()` still
    /// returns the upload's outcome; the remote shows the complete file under its final
    /// name a moment before the rename. A file removed instead is deleted remotely as any
    /// other; renamed elsewhere, it is renamed remotely. Flat targets without a remote
    /// rename hold such files until their rename instead ([`Fs::waits_for_rename`]).
    pub(super) fn name_ahead(&self, ino: u64) -> Option<String> {
        if !self.caps.rename {
            return None;
        }
        let t = self.tree();
        let n = t.get(ino)?;
        if n.is_dir() || n.row.remote.is_some() || n.row.replaces.is_some() {
            return None;
        }
        let name = rsync_final_name(&n.row.name, n.by_rsync)?;
        let key = t.key(name);
        let taken = t.child(n.row.parent, name).is_some()
            || t.children(n.row.parent).into_iter().any(|c| {
                t.get(c)
                    .and_then(|s| s.row.remote.as_ref())
                    .is_some_and(|r| t.key(&r.name) == key)
            });
        (!taken).then(|| name.to_string())
    }

    /// A save through a temporary file on a target without remote rename: GIO's
    /// `g_file_replace` writes `.goutputstream-XXXXXX`, closes it and renames it over the
    /// original (rsync and `sed -i` likewise). Committed at close, the content would land
    /// under the temporary name and have to be posted again after the rename; so its
    /// upload waits for the rename (which then returns the upload's outcome).
    pub(super) fn waits_for_rename(&self, ino: u64) -> bool {
        !self.caps.rename
            && self.tree().get(ino).is_some_and(|n| {
                !n.is_dir() && n.row.remote.is_none() && is_tool_temp(&n.row.name, n.by_rsync)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::{caller, is_save_temp, is_tool_temp, landed_ahead};

    #[test]
    fn tools_temporary_names() {
        for temp in [
            ".goutputstream-AB12cd",
            ".f1.bin.QlhxxK",
            ".a.Xb3k9z",
            "sedrTewaY",
        ] {
            assert!(is_tool_temp(temp, false), "{temp}");
            assert!(is_tool_temp(temp, true), "{temp}");
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
            assert!(!is_tool_temp(plain, false), "{plain}");
        }
        // Created by rsync, its temporary name needs no capital letter (sed's still does).
        for temp in [".f1.bin.7imn95", ".a.bcdefg", ".b.123456"] {
            assert!(!is_tool_temp(temp, false), "{temp}");
            assert!(is_tool_temp(temp, true), "{temp}");
        }
        for plain in [
            "sediments",
            "sedq3kx9a",
            ".x.abcdefg",
            "..abcdef",
            "notes.abcdef",
        ] {
            assert!(!is_tool_temp(plain, true), "{plain}");
        }
        assert!(landed_ahead(".f1.bin.7imn95", "f1.bin") && landed_ahead(".f.Q2w3e4", "f"));
        assert!(!landed_ahead(".f1.bin.7imn95", "f2.bin"));
        // Only GIO's keeps an early upload from starting (on every target).
        assert!(is_save_temp(".goutputstream-AB12cd") && !is_save_temp(".f1.bin.QlhxxK"));
    }

    #[test]
    fn the_caller_is_read_from_proc() {
        let me = caller(std::process::id());
        assert_eq!(me.tgid, std::process::id());
        assert!(!me.is_rsync, "the test binary is not rsync");
        // rsync waiting for its standard input (the protocol's greeting) as a server.
        let mut rsync = std::process::Command::new("rsync")
            .args(["--server", "--sender", ".", "."])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("rsync runs (scripts/test.sh installs it)");
        let seen = caller(rsync.id());
        drop(rsync.stdin.take());
        let _ = rsync.wait();
        assert_eq!(seen.tgid, rsync.id());
        assert!(seen.is_rsync, "rsync is recognised");
    }
}
