//! Real-mount scenarios, written once and run for every target kind: the `uploadfs`
//! binary mounts a FUSE filesystem against `uploadfs serve` on loopback, and ordinary tools
//! (cp, cp -r, rsync -a, diff -r, mv, rm, touch, shell redirection, dd conv=notrunc, find)
//! drive it. What landed is checked on the server side through introspection, not only
//! through the mount. Needs root (or fuse permissions), /dev/fuse and fusermount3; where
//! they are missing the tests say so loudly and fail.
//!
//! Every mount is owned by a guard that unmounts (and, if that fails, detaches the mount
//! and kills the daemon) when the test ends, so a failing test never leaves a stale mount.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::mount::{
    assert_fails_with, bounded, run_bounded, sh, sh_status, wait_exit, Mount, TOOL_TIMEOUT,
};
use common::remote::Remote;
use common::{pattern, sha1_hex, TestServer};
use uploadfs::config::TargetKind;

/// Like [`Remote::assert_stored`], for work done in `release`, which the kernel sends after
/// `close()` has returned (e.g. the upload of a file that was created and never written).
fn wait_on_server(r: &Remote, name: &str, data: &[u8]) {
    r.wait_stored_one(name, data, Duration::from_secs(10));
}

/// Every path below `root` → `None` for a directory, the SHA-1 for a file.
fn snapshot(root: &Path) -> BTreeMap<String, Option<String>> {
    let root = root.to_path_buf();
    bounded(TOOL_TIMEOUT, move || {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let rel = p
                    .strip_prefix(&root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if e.file_type().unwrap().is_dir() {
                    out.insert(rel, None);
                    stack.push(p);
                } else {
                    out.insert(rel, Some(sha1_hex(&std::fs::read(&p).unwrap())));
                }
            }
        }
        out
    })
}

/// A small tree: nested folders, names unique across the tree (flat targets keep every
/// file in one remote folder), sizes from 0 to 200 KiB.
fn make_tree(root: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let files = [
        ("top.txt", 11usize),
        ("a/one.bin", 200 * 1024),
        ("a/b/two.txt", 0),
        ("a/b/c/three.bin", 70_001),
        ("d/four.txt", 1),
        ("d/five.bin", 4096),
    ];
    let mut v = vec![];
    for (i, (rel, len)) in files.iter().enumerate() {
        let rel = match rel.rsplit_once('/') {
            Some((d, f)) => format!("{d}/{prefix}{f}"),
            None => format!("{prefix}{rel}"),
        };
        let p = root.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let data = pattern(*len, 100 + i as u64);
        std::fs::write(&p, &data).unwrap();
        v.push((rel, data));
    }
    v
}

/// The whole scenario for one kind of the test server.
fn scenario(kind: TargetKind) {
    // Small Cloudreve chunks keep the test quick.
    scenario_on(&Remote::serve(TestServer::small_chunks(), kind));
}

/// The whole scenario, on any remote.
fn scenario_on(s: &Remote) {
    let proto = s.proto();
    let caps = s.caps();
    let part = s.part_size();
    let work = s.work().to_path_buf();
    let src = work.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut m = s.mount("", &[]);
    let mnt = m.dir.clone();

    // 1. cp of files around the part size; content checked on the server and read back.
    let sizes = [0, 1, part - 1, part + 1, 3 * part + 7];
    for (i, &size) in sizes.iter().enumerate() {
        let name = format!("f{i}.bin");
        let data = pattern(size, i as u64 + 1);
        std::fs::write(src.join(&name), &data).unwrap();
        sh(&work, &format!("cp src/{name} mnt/{name}"));
        // An empty file is committed by the release that follows close().
        wait_on_server(s, &name, &data);
        sh(&work, &format!("cmp src/{name} mnt/{name}"));
        let st = std::fs::metadata(mnt.join(&name)).unwrap();
        assert_eq!(st.len(), size as u64, "{name}: size through the mount");
    }

    // 2. cp -r of a small tree, compared with diff -r.
    let tree_src = work.join("tree");
    let tree = make_tree(&tree_src, "cp-");
    sh(&work, "cp -r tree mnt/tree");
    sh(&work, "diff -r tree mnt/tree");
    for (rel, data) in &tree {
        let name = rel.rsplit('/').next().unwrap();
        wait_on_server(s, name, data);
    }

    // 3. rsync -a (temp file + rename, chmod, utimes) exits 0; a second run sends nothing.
    let rs_src = work.join("rs");
    let rs = make_tree(&rs_src, "rs-");
    sh(&work, "rsync -a rs/ mnt/rs/");
    sh(&work, "diff -r rs mnt/rs");
    for (rel, data) in &rs {
        let name = rel.rsplit('/').next().unwrap();
        if caps.rename {
            wait_on_server(s, name, data);
        } else {
            // Without remote rename the data stays under rsync's temporary name.
            let want = (data.len() as u64, sha1_hex(data));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !s.stored().values().any(|v| *v == want) {
                assert!(
                    Instant::now() < deadline,
                    "{proto}: content of {rel} is not on the server"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let files_after_first = s.stored();
    let bytes_before = s.uploads();
    let out = sh(&work, "rsync -a --itemize-changes rs/ mnt/rs/");
    let changes = String::from_utf8_lossy(&out.stdout);
    assert!(
        !changes
            .lines()
            .any(|l| l.starts_with('>') || l.starts_with('<')),
        "second rsync transferred files:\n{changes}"
    );
    assert_eq!(s.uploads(), bytes_before, "second rsync uploaded data");
    assert_eq!(s.stored(), files_after_first);

    // 4. mv of a file and of a folder.
    sh(
        &work,
        "mv mnt/f1.bin mnt/f1-moved.bin && mv mnt/tree mnt/tree-moved",
    );
    sh(
        &work,
        "diff -r tree mnt/tree-moved && test ! -e mnt/tree && test ! -e mnt/f1.bin",
    );
    sh(&work, "cmp src/f1.bin mnt/f1-moved.bin");
    if caps.rename {
        let files = s.stored();
        assert!(files.contains_key("f1-moved.bin") && !files.contains_key("f1.bin"));
    }
    if caps.folders {
        let folders = s.folders();
        assert!(
            folders.contains("tree-moved") && !folders.contains("tree"),
            "{proto}: folders on the server after mv: {folders:?}"
        );
    }

    // 5. rm removes the remote file.
    sh(
        &work,
        "rm mnt/f0.bin mnt/f1-moved.bin && test ! -e mnt/f0.bin",
    );
    if caps.delete {
        let files = s.stored();
        let f1 = pattern(1, 2);
        assert!(
            !files.values().any(|v| *v == (1, sha1_hex(&f1))),
            "{proto}: the removed file is still on the server: {files:?}"
        );
        // Dyson keeps the empty content: other paths (empty files) share it.
        assert!(proto == "dyson" || !files.contains_key("f0.bin"));
    }

    // 6. touch: a new empty file is created remotely; touching an existing one uploads nothing.
    sh(&work, "touch mnt/empty.txt");
    wait_on_server(s, "empty.txt", b"");
    let bytes_before = s.uploads();
    sh(&work, "touch mnt/f2.bin");
    assert_eq!(s.uploads(), bytes_before);

    // 7. Shell redirection: echo > then echo >> (open existing without O_TRUNC, append).
    sh(&work, "echo a > mnt/echo.txt && echo b >> mnt/echo.txt");
    assert_eq!(std::fs::read(mnt.join("echo.txt")).unwrap(), b"a\nb\n");
    s.assert_stored("echo.txt", b"a\nb\n");

    // 8. dd conv=notrunc into the middle of an existing file.
    let mut f3 = pattern(part + 1, 4);
    sh(
        &work,
        "printf XXXXX | dd of=mnt/f3.bin bs=1 seek=1000 conv=notrunc status=none",
    );
    f3[1000..1005].copy_from_slice(b"XXXXX");
    s.assert_stored("f3.bin", &f3);
    assert_eq!(
        std::fs::metadata(mnt.join("f3.bin")).unwrap().len(),
        f3.len() as u64
    );

    // 9. Random-order writes before close (pwrite), plus an overwrite and a seek past EOF.
    let rnd = pattern(3 * 1024 * 1024 + 17, 9);
    {
        let (p, data) = (mnt.join("random.bin"), rnd.clone());
        bounded(TOOL_TIMEOUT, move || {
            let f = std::fs::File::create(&p).unwrap();
            let chunk = 256 * 1024;
            let n = data.len().div_ceil(chunk);
            let mut order: Vec<usize> = (0..n).collect();
            order.reverse();
            order.swap(1, n / 2);
            for i in order {
                let end = ((i + 1) * chunk).min(data.len());
                f.write_all_at(&data[i * chunk..end], (i * chunk) as u64)
                    .unwrap();
            }
            f.write_all_at(&data[10..20], 10).unwrap();
            drop(f);
        });
    }
    s.assert_stored("random.bin", &rnd);

    // 10. cp over an existing file replaces it (one file with the new content).
    let newer = pattern(part / 2 + 3, 77);
    std::fs::write(src.join("newer.bin"), &newer).unwrap();
    sh(&work, "cp src/newer.bin mnt/f4.bin");
    s.assert_stored("f4.bin", &newer);
    sh(&work, "cmp src/newer.bin mnt/f4.bin");

    // 11. Eight parallel writers.
    let par: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            (
                format!("par{i}.bin"),
                pattern(300 * 1024 + i, 200 + i as u64),
            )
        })
        .collect();
    {
        let jobs: Vec<_> = par
            .iter()
            .map(|(n, d)| {
                let (p, d) = (mnt.join(n), d.clone());
                std::thread::spawn(move || std::fs::write(p, d).unwrap())
            })
            .collect();
        bounded(TOOL_TIMEOUT, move || {
            for j in jobs {
                j.join().unwrap();
            }
        });
    }
    for (n, d) in &par {
        s.assert_stored(n, d);
    }

    // 12. A crawler (file manager style): list everything, read the first 4 KiB of each.
    let out = sh(&work, "find mnt -type f | sort");
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert!(listed.len() >= 25, "find listed {listed:?}");
    {
        let paths: Vec<PathBuf> = listed.iter().map(|l| work.join(l)).collect();
        let f1 = pattern(part + 1, 4);
        bounded(TOOL_TIMEOUT, move || {
            for p in paths {
                let mut f = std::fs::File::open(&p).unwrap();
                let mut buf = vec![0u8; 4096];
                let n = f.read(&mut buf).unwrap();
                let len = std::fs::metadata(&p).unwrap().len();
                assert_eq!(n as u64, len.min(4096), "{}: first read", p.display());
                if p.ends_with("f3.bin") {
                    assert_eq!(&buf[..1000], &f1[..1000]);
                }
                // And a read in the middle of bigger files.
                if len > 10_000 {
                    f.seek(SeekFrom::Start(len / 2)).unwrap();
                    let _ = f.read(&mut buf).unwrap();
                }
            }
        });
    }

    // Nothing is left pending, and there are no leftovers of rsync's temporary files.
    let out = sh(&work, "find mnt -name '.*' | wc -l");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    // 13. Unmount + remount: the same tree and contents (read from the remote now).
    let before = snapshot(&mnt);
    let ino_before = std::fs::metadata(mnt.join("echo.txt")).unwrap();
    m.remount();
    let after = snapshot(&mnt);
    assert_eq!(before, after, "tree changed across remount");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(mnt.join("echo.txt")).unwrap().ino(),
        ino_before.ino(),
        "inode numbers must survive remounts"
    );
    sh(&work, "diff -r rs mnt/rs && diff -r tree mnt/tree-moved");

    // 14. Over the server's size limit (where it has one to set): cp fails with EFBIG and
    // nothing lands remotely.
    if s.set_max_file_size(1024 * 1024) {
        std::fs::write(src.join("huge.bin"), pattern(2 * 1024 * 1024, 3)).unwrap();
        let out = sh_status(&work, "cp src/huge.bin mnt/huge.bin");
        assert_fails_with(&out, "File too large", "cp of an oversized file");
        assert!(!s.stored().contains_key("huge.bin"));
        // The failed file stays visible locally, marked failed, with its error in `status`.
        assert_eq!(m.state_of("huge.bin").as_deref(), Some("failed"));
        assert_eq!(
            std::fs::metadata(mnt.join("huge.bin")).unwrap().len(),
            2 * 1024 * 1024,
            "the staged data of a failed upload is kept"
        );
        let st = m.status_json();
        let pending = st["mounts"][0]["pending"].as_array().unwrap();
        assert!(
            pending.iter().any(|p| p["path"] == "/huge.bin"
                && p["state"] == "failed"
                && p["error"].is_string()),
            "status: {st}"
        );
    }
    // Committed files carry their remote id and SHA-1 as read-only xattrs.
    let out = sh(&work, "getfattr -d mnt/echo.txt");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("user.uploadfs.state=\"committed\""), "{text}");
    assert!(text.contains("user.uploadfs.remote_id="), "{text}");
    assert!(
        text.contains(&format!("user.uploadfs.sha1=\"{}\"", sha1_hex(b"a\nb\n"))),
        "{text}"
    );
    let out = sh_status(&work, "setfattr -n user.x -v 1 mnt/echo.txt");
    assert!(!out.status.success(), "xattrs are read-only");
    let out = sh_status(&work, "ln -s echo.txt mnt/link");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not supported"),
        "symlink: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.set_max_file_size(64u64 * 1024 * 1024 * 1024);

    m.unmount();
}

/// The configured `max_file_size` is enforced at write time (EFBIG before any upload),
/// and a file uploaded elsewhere shows up in the mount's listing.
fn limits_and_foreign_files(kind: TargetKind) {
    limits_and_foreign_files_on(&Remote::serve(TestServer::new(), kind));
}

/// [`limits_and_foreign_files`] on any remote.
fn limits_and_foreign_files_on(s: &Remote) {
    let work = s.work().to_path_buf();
    let m = s.mount("max_file_size = 1048576\n", &[]);
    // The daemon's start-up error reaches `mount`'s caller.
    std::fs::create_dir_all(work.join("mnt2")).unwrap();
    let out = run_bounded(
        m.command()
            .args(["mount", "nosuch"])
            .arg(work.join("mnt2"))
            .arg("--config")
            .arg(work.join("config.toml"))
            .arg("--state-dir")
            .arg(work.join("state2")),
        Duration::from_secs(60),
    );
    assert_fails_with(
        &out,
        "no target named 'nosuch'",
        "mount of an unknown target",
    );
    std::fs::write(work.join("big.bin"), pattern(1024 * 1024 + 1, 1)).unwrap();
    let out = sh_status(&work, "cp big.bin mnt/big.bin");
    assert_fails_with(&out, "File too large", "cp over the configured limit");
    assert!(!s.stored().contains_key("big.bin"));
    // Exactly at the limit is fine.
    let ok = pattern(1024 * 1024, 2);
    std::fs::write(work.join("ok.bin"), &ok).unwrap();
    sh(&work, "cp ok.bin mnt/ok.bin");
    s.assert_stored("ok.bin", &ok);

    // Uploaded by someone else: visible after the listing TTL.
    let other = pattern(5000, 8);
    let path = work.join("other.bin");
    std::fs::write(&path, &other).unwrap();
    let t = s.target();
    s.block_on(t.upload(s.upload_request("foreign.bin", &other, None)))
        .expect("direct upload");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = sh(&work, "ls mnt");
        if String::from_utf8_lossy(&out.stdout).contains("foreign.bin") {
            break;
        }
        assert!(Instant::now() < deadline, "foreign.bin never appeared");
        std::thread::sleep(Duration::from_millis(500));
    }
    sh(
        &work,
        "cmp other.bin mnt/foreign.bin && cmp other.bin mnt/foreign.bin",
    );
    // Replaced remotely (same name, new content): a later read shows the new content,
    // never pages the kernel cached from the old version.
    let newer = pattern(7000, 9);
    std::fs::write(&path, &newer).unwrap();
    let old = s
        .block_on(t.list(&None))
        .unwrap()
        .into_iter()
        .find(|f| f.name == "foreign.bin")
        .unwrap();
    let caps = t.capabilities();
    let mut req = s.upload_request("foreign.bin", &newer, Some(old.clone()));
    req.mtime_ms = 1_700_000_100_000;
    let replaced = s.block_on(t.upload(req)).expect("direct replacing upload");
    if !caps.replaces_in_place && replaced.id != old.id {
        s.block_on(t.delete(&old)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sh_status(&work, "cmp other.bin mnt/foreign.bin")
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the new remote content never showed"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Case-insensitive names (Box): looking up a.txt finds A.TXT.
    if s.caps().case_insensitive_names {
        sh(
            &work,
            "echo hi > mnt/CASE.TXT && test \"$(cat mnt/case.txt)\" = hi",
        );
        let out = sh_status(&work, "ls mnt | grep -ic '^case.txt$'");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }
    // Names longer than 255 bytes.
    let long = "x".repeat(256);
    let out = sh_status(&work, &format!("touch mnt/{long}"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("File name too long"));
    drop(m);
}

common::per_kind!(scenario;
    box_tools => Box,
    cloudreve_tools => Cloudreve,
    fluxer_tools => Fluxer,
    virola_tools => Virola,
    dyson_tools => Dyson,
);

/// The scenario on a bucket of a real S3 server.
#[test]
fn s3_tools() {
    scenario_on(&Remote::s3("tools"));
}

#[test]
fn s3_limits() {
    limits_and_foreign_files_on(&Remote::s3("limits"));
}

common::per_kind!(limits_and_foreign_files;
    box_limits => Box,
    cloudreve_limits => Cloudreve,
    fluxer_limits => Fluxer,
    virola_limits => Virola,
    dyson_limits => Dyson,
);

/// `uploadfs mount local DIR` with no configuration at all: the built-in local target.
#[test]
fn local_target_needs_no_config() {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_path_buf();
    let env = vec![
        ("HOME".to_string(), h.clone()),
        ("XDG_CONFIG_HOME".to_string(), h.join(".config")),
        ("XDG_DATA_HOME".to_string(), h.join(".local/share")),
        ("XDG_STATE_HOME".to_string(), h.join(".local/state")),
        ("XDG_CACHE_HOME".to_string(), h.join(".cache")),
    ];
    let mut m = Mount::start(&h, "local", &[], env);
    std::fs::create_dir_all(h.join("src")).unwrap();
    let data = pattern(3 * 1024 * 1024 + 5, 11);
    std::fs::write(h.join("src/hello.bin"), &data).unwrap();
    sh(
        &h,
        "cp src/hello.bin mnt/ && mkdir mnt/sub && echo x > mnt/sub/x.txt",
    );
    m.remount();
    sh(
        &h,
        "cmp src/hello.bin mnt/hello.bin && test \"$(cat mnt/sub/x.txt)\" = x",
    );
    assert!(h.join(".local/state/uploadfs/local/catalog.db").exists());
    assert!(h.join(".local/share/uploadfs/local").is_dir());
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("sub/x.txt"))
        .unwrap();
    f.write_all(b"y\n").unwrap();
    drop(f);
    sh(&h, "test \"$(cat mnt/sub/x.txt)\" = \"$(printf 'x\\ny')\"");
    // A second mount on top of a running one is refused.
    let out = run_bounded(
        m.command().args(["mount", "local"]).arg(&m.dir),
        Duration::from_secs(60),
    );
    assert_fails_with(
        &out,
        "already mounted",
        "a second mount on top of a running one",
    );
    // SIGTERM makes the daemon unmount cleanly.
    let pid = m.daemon_pid().expect("daemon registered");
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(
        wait_exit(pid, Duration::from_secs(20)),
        "daemon did not exit on SIGTERM"
    );
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains(&*m.dir.to_string_lossy()),
        "still mounted after SIGTERM"
    );
}
