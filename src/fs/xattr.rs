//! The read-only extended attributes (`user.uploadfs.*`: upload state, remote id, SHA-1,
//! URL) and `statfs`.

use crate::catalog::NodeState;

use super::names::NAME_MAX;
use super::{Error, Fs, FsResult, StatFs};

/// Names of the read-only extended attributes.
pub const XATTR_STATE: &str = "user.uploadfs.state";
pub const XATTR_REMOTE_ID: &str = "user.uploadfs.remote_id";
pub const XATTR_SHA1: &str = "user.uploadfs.sha1";
pub const XATTR_URL: &str = "user.uploadfs.url";
/// When the file's remote metadata was last checked (UTC, RFC 3339; see `files.rs`).
pub const XATTR_VALIDATED: &str = "user.uploadfs.validated";

impl Fs {
    pub fn statfs(&self) -> StatFs {
        // No quota is known: report a large free space (file managers refuse to copy
        // onto a filesystem with 0 free), 1 PiB in 4 KiB blocks.
        let blocks = 1u64 << 38;
        StatFs {
            blocks,
            bfree: blocks,
            files: 1 << 32,
            ffree: (1 << 32) - self.tree().len() as u64,
            bsize: 4096,
            namelen: NAME_MAX as u32,
        }
    }

    pub(super) fn xattrs(&self, ino: u64) -> FsResult<Vec<(&'static str, String)>> {
        let t = self.tree();
        let n = t.get(ino).ok_or(libc::ENOENT)?;
        let state = match (&n.row.state, &n.open) {
            (NodeState::Committed, Some(o)) if o.dirty() => "staged",
            (s, _) => s.as_str(),
        };
        let mut v = vec![(XATTR_STATE, state.to_string())];
        if let Some(r) = &n.row.remote {
            v.push((XATTR_REMOTE_ID, r.id.clone()));
            if let Some(sha1) = n.row.sha1.clone().or(r.sha1.clone()) {
                v.push((XATTR_SHA1, sha1));
            }
            if let Some(u) = &r.url {
                v.push((XATTR_URL, u.clone()));
            }
        }
        let has_remote = n.row.remote.is_some();
        drop(t);
        if let Some(at) = self.last_validated(ino).filter(|_| has_remote) {
            let at = chrono::DateTime::from_timestamp_millis(at).unwrap_or_default();
            v.push((
                XATTR_VALIDATED,
                at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ));
        }
        Ok(v)
    }

    /// The value of one of our read-only extended attributes.
    ///
    /// Only the `user.` namespace exists here: a name in any other (`security.selinux`,
    /// `system.posix_acl_access`, ...) gets EOPNOTSUPP rather than ENODATA. `ls -l` asks
    /// for the security label and the ACL of every entry, but stops asking on a file
    /// system that answers "not supported" once; with ENODATA a warm `ls -l` of 10 000
    /// entries spent two thirds of its time in these round trips.
    pub fn getxattr(&self, ino: u64, name: &std::ffi::OsStr) -> FsResult<Vec<u8>> {
        if !name.as_encoded_bytes().starts_with(b"user.") {
            // Still ENOENT for an inode that is gone.
            self.tree().get(ino).ok_or(libc::ENOENT)?;
            return Err(Error::new(libc::EOPNOTSUPP));
        }
        let attrs = self.xattrs(ino)?;
        let name = name.to_str().ok_or(libc::ENODATA)?;
        attrs
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.into_bytes())
            .ok_or(Error::new(libc::ENODATA))
    }

    /// NUL-separated names of the extended attributes present.
    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let mut out = vec![];
        for (k, _) in self.xattrs(ino)? {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
        }
        Ok(out)
    }
}
