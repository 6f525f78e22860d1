//! The commands that run above the filesystem core: `uploadfs mount` (the daemon, its
//! fuser session and signals), `unmount` and `status`, the mount registry and the
//! control socket. Arrows point down from here: `run` → [`crate::fuse`] → [`crate::fs`].
//!
//!
//! `mount` without `--foreground` re-executes itself with `--foreground` as a detached
//! child (new session, stdio to `/dev/null` or `--log-file`) and waits on a ready pipe:
//! the child writes `ok` once the kernel has answered the FUSE handshake, or `error: ...`
//! if it cannot mount; a child that dies first is reported with its exit status.
//!
//! The daemon records itself in a small registry file per mountpoint (runtime dir, else
//! state dir) so `unmount` can wait for it to exit and `status` can find it: live progress
//! comes from its control socket ([`super::control`]), else from its catalog.
//!
//! Stopping: `unmount` first waits (showing progress) until no background upload is queued
//! or running, then unmounts and waits for the daemon to exit. However the kernel mount goes
//! away (`unmount`, `fusermount3 -u`, `umount`, or SIGTERM/SIGINT, which make the daemon
//! unmount itself), the daemon finishes queued uploads before it exits; failed ones and,
//! after `unmount --force` or a second signal, unfinished ones stay journaled and resume at
//! the next mount. A mount left dead by a killed daemon is cleaned up by the next `mount`.

pub mod control;
mod daemon;
pub mod mount_helper;
mod registry;
mod status;

pub use daemon::run;
pub use registry::{mounted_fstype, MountRecord};
pub use status::{status, unmount};
