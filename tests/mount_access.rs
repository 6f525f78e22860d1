//! The mount is private to the user who mounted it unless `-o allow_other`: another user
//! (here `nobody`, via `setpriv`) cannot even list it; with `allow_other` it can.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::config::write_config;
use common::mount::{run_bounded, Mount};
use common::TestServer;
use uploadfs::config::TargetKind;

/// `ls DIR` as user and group 65534 (nobody): (succeeded, stderr).
fn ls_as_nobody(dir: &std::path::Path) -> (bool, String) {
    let out = run_bounded(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ls"])
            .arg(dir),
        Duration::from_secs(30),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn mount_is_private_unless_allow_other() {
    assert!(
        nix_is_root(),
        "this test needs root: it mounts and switches to another user"
    );
    let s = TestServer::new();
    let work = s.dir.path();
    // Every directory above the mountpoint must be traversable by the other user, so that
    // only the mount's own access rule decides.
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = write_config(&s, TargetKind::Box, "");

    let mut m = Mount::with_config(work, "t", &cfg, &[]);
    std::fs::set_permissions(&m.dir, std::fs::Permissions::from_mode(0o755)).ok();
    std::fs::write(m.path("hello.txt"), b"hi").unwrap();
    let (ok, err) = ls_as_nobody(&m.dir);
    assert!(!ok, "another user listed a private mount");
    assert!(err.contains("Permission denied"), "{err}");
    m.unmount();

    m.set_extra(&["-o", "allow_other"]);
    m.mount();
    let (ok, err) = ls_as_nobody(&m.dir);
    assert!(ok, "allow_other: another user cannot list the mount: {err}");
    m.unmount();
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
