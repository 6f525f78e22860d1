//! The error of every filesystem operation: the errno the kernel gets, what failed, and
//! the cause, so the cause reaches the log (once, where the error leaves the core: the
//! FUSE adapter or the background worker) and `uploadfs status` intact.
//!
//! Causes map to errnos in one place, [`ToErrno`]: the target's error kinds, local I/O,
//! the catalog and the read path.

use std::borrow::Cow;
use std::sync::Arc;

use crate::catalog::CatalogError;
use crate::read::fetcher::ReadError;
use crate::remote::{ErrorKind, TargetError};

/// An errno.
pub type Errno = i32;

/// The errno a failure is reported as.
pub trait ToErrno {
    fn to_errno(&self) -> Errno;
}

impl ToErrno for ErrorKind {
    fn to_errno(&self) -> Errno {
        match self {
            ErrorKind::Auth => libc::EACCES,
            ErrorKind::TooLarge => libc::EFBIG,
            ErrorKind::Quota => libc::EDQUOT,
            ErrorKind::InvalidName => libc::EINVAL,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Conflict => libc::EEXIST,
            ErrorKind::Unsupported => libc::ENOTSUP,
            ErrorKind::Unavailable | ErrorKind::Protocol | ErrorKind::LocalIo => libc::EIO,
            ErrorKind::Cancelled => libc::ECANCELED,
            ErrorKind::Changed => libc::EBUSY,
        }
    }
}

impl ToErrno for TargetError {
    fn to_errno(&self) -> Errno {
        self.kind.to_errno()
    }
}

impl ToErrno for std::io::Error {
    /// The OS's own errno (ENOSPC stays ENOSPC), else EIO.
    fn to_errno(&self) -> Errno {
        self.raw_os_error().unwrap_or(libc::EIO)
    }
}

impl ToErrno for CatalogError {
    fn to_errno(&self) -> Errno {
        match self {
            CatalogError::Sql { .. } | CatalogError::Invalid { .. } => libc::EIO,
        }
    }
}

impl ToErrno for ReadError {
    fn to_errno(&self) -> Errno {
        match self {
            ReadError::Target(e) => e.to_errno(),
            ReadError::Corrupt { .. } => libc::EIO,
        }
    }
}

/// A failed filesystem operation. A bare errno (ENOENT from a lookup) carries no message
/// and costs no allocation; a failure with a cause says what failed and keeps the cause.
#[derive(Debug, Clone, thiserror::Error)]
pub struct Error {
    pub errno: Errno,
    /// What failed, for people; empty for a bare errno.
    pub message: Cow<'static, str>,
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for Error {
    /// The message, else the cause, else the errno's own text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.source, self.message.is_empty()) {
            (_, false) => f.write_str(&self.message),
            (Some(s), true) => write!(f, "{s}"),
            (None, true) => write!(f, "{}", std::io::Error::from_raw_os_error(self.errno)),
        }
    }
}

impl Error {
    /// A bare errno: the answer itself (no such entry, not empty, ...), nothing to log.
    pub fn new(errno: Errno) -> Self {
        Self {
            errno,
            message: Cow::Borrowed(""),
            source: None,
        }
    }

    /// An errno with what failed.
    pub fn msg(errno: Errno, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            message: message.into(),
            ..Self::new(errno)
        }
    }

    /// A failure with its cause; the errno comes from the cause.
    pub fn caused<E>(cause: E) -> Self
    where
        E: ToErrno + std::error::Error + Send + Sync + 'static,
    {
        Self {
            errno: cause.to_errno(),
            message: Cow::Borrowed(""),
            source: Some(Arc::new(cause)),
        }
    }

    /// Say what failed: "`what`: cause".
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = Cow::Owned(format!("{what}: {self}"));
        self
    }

    /// The error has a cause worth logging (more than a bare errno).
    pub fn has_cause(&self) -> bool {
        self.source.is_some() || !self.message.is_empty()
    }

    /// The target's error kind, when the target caused it.
    pub fn remote_kind(&self) -> Option<ErrorKind> {
        self.source
            .as_deref()
            .and_then(|s| s.downcast_ref::<TargetError>())
            .map(|e| e.kind)
    }
}

impl From<Errno> for Error {
    fn from(errno: Errno) -> Self {
        Self::new(errno)
    }
}

impl From<TargetError> for Error {
    fn from(e: TargetError) -> Self {
        Self::caused(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::caused(e)
    }
}

impl From<CatalogError> for Error {
    fn from(e: CatalogError) -> Self {
        Self::caused(e)
    }
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        Self::caused(e)
    }
}

/// The errno alone, for callers that speak errnos (tests, the kernel reply).
impl From<Error> for Errno {
    fn from(e: Error) -> Self {
        e.errno
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_map_to_errnos_and_keep_their_text() {
        let e = Error::from(TargetError::new(ErrorKind::Auth, "token refused"));
        assert_eq!(e.errno, libc::EACCES);
        assert_eq!(e.to_string(), "token refused");
        assert_eq!(e.remote_kind(), Some(ErrorKind::Auth));
        let e = e.context("upload of a.txt");
        assert_eq!(e.to_string(), "upload of a.txt: token refused");
        assert!(std::error::Error::source(&e).is_some());

        let io = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(Error::from(io).errno, libc::ENOSPC);
        assert_eq!(Error::from(std::io::Error::other("x")).errno, libc::EIO);

        let bare = Error::new(libc::ENOENT);
        assert!(!bare.has_cause());
        assert!(!bare.to_string().is_empty());
    }
}
