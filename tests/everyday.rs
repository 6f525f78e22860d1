//! Everyday use, through real mounts against `uploadfs serve` on loopback:
//! - mount(8) and `/etc/fstab` lines through the `mount.fuse.uploadfs` helper (the same
//!   binary, symlinked for the test and removed afterwards), unmounted with umount(8) and
//!   `fusermount3 -u`;
//! - the GIO stack file managers use (`gio list/info/copy/move/mkdir/remove/trash`), for
//!   Box (folders) and Fluxer (flat);
//! - the read-only `user.uploadfs.*` xattrs in every state a file goes through;
//! - the systemd user unit example in scripts/ (it parses; it is not installed).
//!
//! What landed is checked on the server through introspection. The helper test needs root
//! (mount(8) with a helper in /sbin); the others need what tests/mount_scenarios.rs needs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::config::{write_config, TargetToml};
use common::mount::{
    assert_fails_with, expect_success, have, is_mounted, require_fuse, run_bounded, sh_run, text,
    wait_exit, Mount,
};
use common::{pattern, sha1_hex, TestServer, BIN};
use uploadfs::config::TargetKind;

/// Bound on any single tool run through a mount in these tests.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Where mount(8) looks for `mount.<type>` helpers (Debian: /sbin → /usr/sbin).
const HELPER: &str = "/sbin/mount.fuse.uploadfs";

/// GIO without D-Bus or gvfs daemons: the plain local-file backend Nautilus uses for a
/// FUSE mount's paths.
const GIO_ENV: &[(&str, &str)] = &[("GIO_USE_VFS", "local"), ("GIO_USE_VOLUME_MONITOR", "unix")];

/// `sh -c script` in `dir` with `env`: the output, whatever the status.
fn sh_env(dir: &Path, env: &[(&str, &str)], script: &str) -> Output {
    sh_run(dir, env, TOOL_TIMEOUT, script)
}

/// `sh -c script` in `dir` with `env`; panics with the output unless it succeeds.
fn sh_ok(dir: &Path, env: &[(&str, &str)], script: &str) -> Output {
    expect_success(script, sh_env(dir, env, script))
}

/// The helper symlink, removed (or the previous one restored) when dropped.
struct HelperLink {
    previous: Option<PathBuf>,
}

impl HelperLink {
    fn install() -> HelperLink {
        let path = Path::new(HELPER);
        let previous = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => std::fs::read_link(path).ok(),
            Ok(_) => panic!("{HELPER} is an installed file; refusing to replace it in a test"),
            Err(_) => None,
        };
        let _ = std::fs::remove_file(path);
        std::os::unix::fs::symlink(BIN, path)
            .unwrap_or_else(|e| panic!("cannot create {HELPER}: {e} (the helper test needs root)"));
        HelperLink { previous }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(HELPER);
        if let Some(p) = &self.previous {
            let _ = std::os::unix::fs::symlink(p, HELPER);
        }
    }
}

fn mount_cmd(run_dir: &Path) -> Command {
    let mut c = Command::new("mount");
    // The daemon's registry (how `uploadfs unmount/status` and the guard find it).
    c.env("XDG_RUNTIME_DIR", run_dir);
    c
}

/// Mount with `cmd` (mount(8), `what`) at `work/mnt`: it succeeds and returns once the
/// mount is ready; the guard owns the mount.
fn mount_by(cmd: &mut Command, work: &Path, what: &str) -> Mount {
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    let guard = Mount::adopt(work);
    assert!(
        is_mounted(&guard.dir),
        "{what} returned before the mount was ready"
    );
    guard
}

/// Unmount `dir` with `cmd` (`what`), as users do: it succeeds, the mount is gone and its
/// daemon `pid` exits.
fn unmount_by(cmd: &mut Command, dir: &Path, pid: i32, what: &str) {
    let out = run_bounded(cmd, Duration::from_secs(60));
    assert!(out.status.success(), "{what}: {}", text(&out.stderr));
    assert!(!is_mounted(dir));
    assert!(
        wait_exit(pid, Duration::from_secs(20)),
        "daemon still running after {what}"
    );
}

/// `mount -t fuse.uploadfs` and an fstab line (`mount -T FSTAB DIR`), each unmounted the
/// way users do (umount(8), `fusermount3 -u`), with the daemon exiting every time.
#[test]
fn mount_helper_and_fstab() {
    require_fuse();
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "THE MOUNT HELPER TEST NEEDS ROOT: mount(8) runs helpers from /sbin"
    );
    let s = TestServer::new();
    let work = s.dir.path().to_path_buf();
    let cfg = TargetToml::new(&s, TargetKind::Box).name("work").write(&s);
    let dir = work.join("mnt");
    let run_dir = work.join("run");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::create_dir_all(&run_dir).unwrap();
    let _link = HelperLink::install();
    let opts = format!(
        "config={},cache_dir={},state_dir={},log_file={},cache_size=64M",
        cfg.display(),
        work.join("cache").display(),
        work.join("state").display(),
        work.join("daemon.log").display()
    );

    // An unknown option is refused by name, and nothing is mounted.
    let out = run_bounded(
        mount_cmd(&run_dir)
            .args(["-t", "fuse.uploadfs", "work"])
            .arg(&dir)
            .arg("-o")
            .arg(format!("{opts},bogus_option")),
        Duration::from_secs(60),
    );
    assert_fails_with(
        &out,
        "unknown mount option \"bogus_option\"",
        "mount with an unknown option",
    );
    assert!(!is_mounted(&dir));

    // 1. mount -t fuse.uploadfs NAME DIR -o ...: returns once mounted.
    let guard = mount_by(
        mount_cmd(&run_dir)
            .args(["-t", "fuse.uploadfs", "work"])
            .arg(&dir)
            .arg("-o")
            .arg(&opts),
        &work,
        "mount -t",
    );
    let pid = guard.daemon_pid().expect("the daemon registered itself");
    let one = pattern(300_000, 1);
    std::fs::write(work.join("one.bin"), &one).unwrap();
    sh_ok(&work, &[], "cp one.bin mnt/");
    s.assert_stored("box", "one.bin", &one);
    // Plain umount(8): the kernel lets go and the daemon exits.
    unmount_by(Command::new("umount").arg(&dir), &dir, pid, "umount");
    drop(guard);

    // 2. An fstab line, used through an alternative fstab (mount -T).
    let fstab = work.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# uploadfs test\nwork  {}  fuse.uploadfs  noauto,nofail,_netdev,x-systemd.automount,{opts}  0  0\n",
            dir.display()
        ),
    )
    .unwrap();
    let guard = mount_by(
        mount_cmd(&run_dir).arg("-T").arg(&fstab).arg(&dir),
        &work,
        "mount -T",
    );
    let pid = guard.daemon_pid().expect("the daemon registered itself");
    let two = pattern(70_001, 2);
    std::fs::write(work.join("two.bin"), &two).unwrap();
    sh_ok(&work, &[], "cp two.bin mnt/ && cmp one.bin mnt/one.bin");
    s.assert_stored("box", "two.bin", &two);
    // fusermount3 -u works on it too.
    unmount_by(
        Command::new("fusermount3").arg("-u").arg(&dir),
        &dir,
        pid,
        "fusermount3 -u",
    );
    drop(guard);
}

/// The parent folder id of the Box file or folder `name` on the server.
fn box_parent(s: &TestServer, name: &str) -> Option<String> {
    let st = s.state();
    let box_ = &st["protocols"]["box"];
    box_["files"]
        .as_array()
        .into_iter()
        .chain(box_["folders"].as_array())
        .flatten()
        .find(|o| o["name"] == name)
        .map(|o| o["parent"].as_str().unwrap_or_default().to_string())
}

fn box_folder_id(s: &TestServer, name: &str) -> Option<String> {
    s.state()["protocols"]["box"]["folders"]
        .as_array()?
        .iter()
        .find(|o| o["name"] == name)
        .and_then(|o| o["id"].as_str().map(String::from))
}

/// What `gio` does in a file manager's place, for one kind.
fn gio_scenario(kind: TargetKind) {
    assert!(
        have("gio"),
        "GIO TESTS CANNOT RUN: gio is missing (apt-get install libglib2.0-bin)"
    );
    let s = TestServer::new();
    let proto = kind.as_str();
    let folders = s.target(kind).capabilities().folders;
    let work = s.dir.path().to_path_buf();
    let cfg = write_config(&s, kind, "");
    let m = Mount::with_config(&work, "t", &cfg, &[]);
    let gio = |script: &str| sh_ok(&work, GIO_ENV, script);

    // Copy in: the content lands on the server.
    let data = pattern(300_000, 7);
    std::fs::write(work.join("in.bin"), &data).unwrap();
    gio("gio copy in.bin mnt/");
    let want = (data.len() as u64, sha1_hex(&data));
    assert_eq!(s.stored(proto).get("in.bin"), Some(&want));

    // Browse: list and info (size, type, our xattrs).
    let out = gio("gio list -l mnt");
    assert!(
        text(&out.stdout).contains("in.bin\t300000\t(regular)"),
        "{}",
        text(&out.stdout)
    );
    let info = text(&gio("gio info mnt/in.bin").stdout);
    for want in [
        "type: regular",
        "size:  300000",
        "xattr::uploadfs.state: committed",
        "xattr::uploadfs.remote_id: ",
        &format!("xattr::uploadfs.sha1: {}", sha1_hex(&data)),
    ] {
        assert!(info.contains(want), "gio info lacks {want:?}:\n{info}");
    }

    // Copy out: the same bytes come back.
    gio("gio copy mnt/in.bin out.bin");
    assert_eq!(std::fs::read(work.join("out.bin")).unwrap(), data);

    // Copy over an existing file (gio overwrites; both go through a temporary file
    // renamed over the original), and an editor-style save
    // (g_file_replace: a `.goutputstream-XXXXXX` temp file renamed over the original).
    std::fs::write(work.join("doc.txt"), b"first\n").unwrap();
    gio("gio copy doc.txt mnt/ && echo second > doc.txt && gio copy doc.txt mnt/");
    gio("test \"$(cat mnt/doc.txt)\" = second");
    assert_eq!(
        s.stored(proto).get("doc.txt"),
        Some(&(7, sha1_hex(b"second\n")))
    );
    gio("echo third | gio save mnt/doc.txt");
    gio("test \"$(cat mnt/doc.txt)\" = third && test \"$(ls -A mnt | grep -c goutputstream)\" = 0");
    // Also on targets without remote rename, the content lands under the final name: the
    // temporary file's upload waits for the rename.
    let files = s.stored(proto);
    assert_eq!(
        files.get("doc.txt"),
        Some(&(6, sha1_hex(b"third\n"))),
        "{files:?}"
    );
    assert!(
        !files.keys().any(|n| n.contains("goutputstream")),
        "a temporary name reached the server: {files:?}"
    );
    assert!(
        !files.values().any(|v| v.1 == sha1_hex(b"second\n")),
        "the replaced version is left on the server: {files:?}"
    );

    // mkdir, rename within the mount, move into the sub-folder.
    gio("gio mkdir mnt/sub");
    assert!(m.path("sub").is_dir());
    if folders {
        assert!(box_folder_id(&s, "sub").is_some(), "no remote folder");
    }
    gio("gio move mnt/in.bin mnt/renamed.bin");
    assert!(!m.path("in.bin").exists());
    gio("cmp in.bin mnt/renamed.bin");
    gio("gio move mnt/renamed.bin mnt/sub/");
    gio("cmp in.bin mnt/sub/renamed.bin && test ! -e mnt/renamed.bin");
    let files = s.stored(proto);
    if folders {
        // A real remote rename and move.
        assert_eq!(files.get("renamed.bin"), Some(&want), "{files:?}");
        assert!(!files.contains_key("in.bin"));
        assert_eq!(box_parent(&s, "renamed.bin"), box_folder_id(&s, "sub"));
    } else {
        // Flat: the move is catalog-only; the remote file is untouched.
        assert_eq!(
            files.values().filter(|v| **v == want).count(),
            1,
            "{files:?}"
        );
    }
    // After a remount the moved file is still where it was put (catalog).
    drop(m);
    let m = Mount::with_config(&work, "t", &cfg, &[]);
    gio("cmp in.bin mnt/sub/renamed.bin");

    // Remove a file and the emptied folder: gone locally and remotely.
    gio("gio remove mnt/sub/renamed.bin && gio remove mnt/sub");
    assert!(!m.path("sub").exists());
    let files = s.stored(proto);
    assert!(!files.values().any(|v| *v == want), "{files:?}");
    if folders {
        assert!(
            box_folder_id(&s, "sub").is_none(),
            "remote folder left behind"
        );
    }

    // Trash.
    let small = b"to the trash\n".to_vec();
    std::fs::write(work.join("t.txt"), &small).unwrap();
    gio("gio copy t.txt mnt/");
    let uid = unsafe { libc::geteuid() };
    let out = sh_env(&work, GIO_ENV, "gio trash mnt/t.txt");
    if folders {
        // Like on removable media: moved into .Trash-UID/files, described in info/.
        assert!(out.status.success(), "gio trash: {}", text(&out.stderr));
        assert!(!m.path("t.txt").exists());
        let trashed = m.path(&format!(".Trash-{uid}/files/t.txt"));
        assert_eq!(std::fs::read(&trashed).unwrap(), small);
        let info =
            std::fs::read_to_string(m.path(&format!(".Trash-{uid}/info/t.txt.trashinfo"))).unwrap();
        assert!(
            info.starts_with("[Trash Info]") && info.contains("Path="),
            "{info}"
        );
        assert_eq!(box_parent(&s, "t.txt"), box_folder_id(&s, "files"));
        // Emptying it is an ordinary delete.
        gio(&format!("gio remove mnt/.Trash-{uid}/files/t.txt"));
        assert!(!s.stored(proto).contains_key("t.txt"));
    } else {
        // Flat targets refuse a trash (its .trashinfo files would be uploaded too).
        assert_fails_with(
            &out,
            "Unable to find or create trash directory",
            "gio trash on a flat target",
        );
        gio("cmp t.txt mnt/t.txt");
        let files = s.stored(proto);
        assert!(files.contains_key("t.txt"), "{files:?}");
        assert!(!files.keys().any(|n| n.contains("trashinfo")), "{files:?}");
    }
    drop(m);
}

common::per_kind!(gio_scenario; gio_box => Box, gio_fluxer => Fluxer);

/// `getfattr -d -m user.uploadfs` output of one path: name → value.
fn getfattr(work: &Path, rel: &str) -> std::collections::BTreeMap<String, String> {
    let out = sh_ok(work, &[], &format!("getfattr -d -m user.uploadfs {rel}"));
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The xattrs in each state: staged (open, written), uploading, committed (with remote
/// id, SHA-1 and the URL where the target gives one), failed (server refused), incomplete
/// (grew past the configured limit while written); folders too; writes refused.
fn xattr_scenario(kind: TargetKind) {
    assert!(
        have("getfattr"),
        "XATTR TESTS CANNOT RUN: getfattr is missing (apt-get install attr)"
    );
    let s = TestServer::new();
    let proto = kind.as_str();
    let caps = s.target(kind).capabilities();
    let work = s.dir.path().to_path_buf();
    let cfg = write_config(&s, kind, "max_file_size = 1048576\n");
    let m = Mount::with_config(&work, "t", &cfg, &[]);

    // Committed.
    std::fs::write(work.join("a.txt"), b"alpha\n").unwrap();
    sh_ok(&work, &[], "cp a.txt mnt/");
    let a = getfattr(&work, "mnt/a.txt");
    assert_eq!(a["user.uploadfs.state"], "committed", "{a:?}");
    assert_eq!(a["user.uploadfs.sha1"], sha1_hex(b"alpha\n"));
    let remote =
        s.rt.block_on(s.target(kind).list(&None))
            .unwrap()
            .into_iter()
            .find(|f| f.name == "a.txt")
            .expect("a.txt listed remotely");
    assert_eq!(a["user.uploadfs.remote_id"], remote.id);
    match &remote.url {
        Some(u) => assert_eq!(&a["user.uploadfs.url"], u),
        None => assert!(!a.contains_key("user.uploadfs.url"), "{a:?}"),
    }
    if kind == TargetKind::Fluxer {
        assert!(a["user.uploadfs.url"].ends_with("/a.txt"), "{a:?}");
    }

    // Folders: native ones have a remote id, catalog-only ones only a state.
    std::fs::create_dir(m.path("sub")).unwrap();
    let d = getfattr(&work, "mnt/sub");
    assert_eq!(d["user.uploadfs.state"], "committed");
    assert_eq!(
        d.contains_key("user.uploadfs.remote_id"),
        caps.folders,
        "{d:?}"
    );

    // Staged: written, not yet closed.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(m.path("open.txt")).unwrap();
        f.write_all(b"being written").unwrap();
        assert_eq!(m.state_of("open.txt").as_deref(), Some("staged"));
    }
    assert_eq!(m.state_of("open.txt").as_deref(), Some("committed"));
    // An edit of a committed file is staged again until closed.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(m.path("a.txt"))
            .unwrap();
        f.write_all(b"beta\n").unwrap();
        assert_eq!(m.state_of("a.txt").as_deref(), Some("staged"));
    }
    assert_eq!(
        getfattr(&work, "mnt/a.txt")["user.uploadfs.sha1"],
        sha1_hex(b"alpha\nbeta\n")
    );

    // Uploading: the server is slowed down so the upload can be watched.
    s.set_bandwidth(200_000);
    let slow = pattern(600_000, 3);
    std::fs::write(work.join("slow.bin"), &slow).unwrap();
    let w = work.clone();
    let cp = std::thread::spawn(move || sh_env(&w, &[], "cp slow.bin mnt/"));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = vec![];
    while !cp.is_finished() && Instant::now() < deadline {
        if let Some(v) = m.state_of("slow.bin") {
            if seen.last() != Some(&v) {
                seen.push(v);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = cp.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.set_bandwidth(0);
    assert!(
        seen.iter().any(|v| v == "uploading"),
        "states seen: {seen:?}"
    );
    assert_eq!(
        getfattr(&work, "mnt/slow.bin")["user.uploadfs.state"],
        "committed"
    );

    // Failed: the server refuses the size; the data stays, without a remote id.
    s.set_max_file_size(100_000);
    std::fs::write(work.join("refused.bin"), pattern(200_000, 4)).unwrap();
    let out = sh_env(&work, &[], "cp refused.bin mnt/");
    assert!(!out.status.success());
    let f = getfattr(&work, "mnt/refused.bin");
    assert_eq!(f["user.uploadfs.state"], "failed", "{f:?}");
    assert!(!f.contains_key("user.uploadfs.remote_id"), "{f:?}");
    s.set_max_file_size(64u64 << 30);

    // Incomplete: grew past the configured limit while being written.
    std::fs::write(work.join("huge.bin"), pattern(1024 * 1024 + 1, 5)).unwrap();
    let out = sh_env(&work, &[], "cp huge.bin mnt/");
    assert!(!out.status.success());
    assert_eq!(
        getfattr(&work, "mnt/huge.bin")["user.uploadfs.state"],
        "incomplete"
    );
    assert!(!s.stored(proto).contains_key("huge.bin"));

    // Every entry carries a state (getfattr -R over the whole mount).
    let out = sh_ok(&work, &[], "getfattr -R -d -m user.uploadfs mnt");
    let all = text(&out.stdout);
    let entries = all.matches("# file: ").count();
    assert!(entries >= 7, "{all}");
    assert_eq!(
        all.matches("user.uploadfs.state=").count(),
        entries,
        "{all}"
    );

    // Read-only: setting or removing is refused.
    let out = sh_env(
        &work,
        &[],
        "setfattr -n user.uploadfs.state -v committed mnt/huge.bin",
    );
    assert!(
        text(&out.stderr).contains("Operation not supported"),
        "{}",
        text(&out.stderr)
    );
    let out = sh_env(&work, &[], "setfattr -x user.uploadfs.state mnt/a.txt");
    assert!(
        text(&out.stderr).contains("Operation not supported"),
        "{}",
        text(&out.stderr)
    );
    drop(m);
}

common::per_kind!(xattr_scenario; xattrs_box => Box, xattrs_fluxer => Fluxer);

/// The systemd user unit example parses: `systemd-analyze verify` where available (on a
/// copy naming an instance and the built binary), and its structure in any case.
#[test]
fn systemd_unit_example() {
    let unit_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/uploadfs@.service");
    let unit = std::fs::read_to_string(&unit_path).expect("scripts/uploadfs@.service exists");
    let mut section = String::new();
    let mut keys: Vec<(String, String, String)> = vec![];
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line:?}"));
        assert!(!section.is_empty(), "{k} outside a section");
        keys.push((section.clone(), k.trim().to_string(), v.trim().to_string()));
    }
    let get = |sec: &str, key: &str| {
        keys.iter()
            .filter(|(s, k, _)| s == sec && k == key)
            .map(|(_, _, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    let start = get("Service", "ExecStart");
    assert_eq!(start.len(), 1, "{start:?}");
    assert!(
        start[0].contains("uploadfs mount %i ") && start[0].contains("--foreground"),
        "{start:?}"
    );
    let stop = get("Service", "ExecStop");
    assert!(
        stop.iter().any(|v| v.contains("uploadfs unmount")),
        "{stop:?}"
    );
    assert_eq!(get("Install", "WantedBy"), ["default.target"]);
    assert!(!get("Unit", "Description").is_empty());

    if !have("systemd-analyze") {
        eprintln!("systemd-analyze is not installed: only the structure was checked");
        return;
    }
    // verify wants an instance, and executables that exist in systemd's own search path:
    // point the copy at the built binary. It warns about (and ignores) unknown keys and
    // bad values, so any line about the unit fails the test.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("uploadfs@work.service");
    std::fs::write(&copy, unit.replace("=uploadfs ", &format!("={BIN} "))).unwrap();
    let out = run_bounded(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&copy),
        Duration::from_secs(60),
    );
    let err = text(&out.stderr);
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("uploadfs@")).collect();
    assert!(
        ours.is_empty() && out.status.success(),
        "systemd-analyze verify:\n{err}"
    );
}
