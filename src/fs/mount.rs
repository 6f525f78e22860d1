//! `uploadfs mount`, `unmount` and `status` (being built).

use std::path::PathBuf;

use crate::cli::{MountArgs, StatusArgs, UnmountArgs};

pub fn run(_args: MountArgs, _log_file: Option<PathBuf>) -> anyhow::Result<()> {
    anyhow::bail!("mount is not implemented yet")
}

pub fn unmount(_args: UnmountArgs) -> anyhow::Result<()> {
    anyhow::bail!("unmount is not implemented yet")
}

pub fn status(_args: StatusArgs) -> anyhow::Result<()> {
    anyhow::bail!("status is not implemented yet")
}
