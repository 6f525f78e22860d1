//! Make-like workloads on a real mount: the tools that create, rename and delete names in
//! quick succession and keep files open after unlinking them. In a mounted directory:
//! `git init`, add and commit a few files, `git gc`, then `tar -x` of a small archive and
//! `rm -rf` of what it made. Every step must exit 0 (one EIO fails the whole tool).
//! Needs git and tar (scripts/test.sh installs them).

mod common;

use std::path::Path;

use common::mount::{have, sh_run, Mount, TOOL_TIMEOUT};
use common::remote::Remote;
use common::{pattern, TestServer};
use uploadfs::config::TargetKind;

/// `script` in `dir` with a fixed git identity; panics with its output unless it succeeds.
fn run(m: &Mount, dir: &Path, script: &str) {
    let home = m.work.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let env = [
        ("HOME", home.to_str().unwrap()),
        ("GIT_AUTHOR_NAME", "t"),
        ("GIT_AUTHOR_EMAIL", "t@example.invalid"),
        ("GIT_COMMITTER_NAME", "t"),
        ("GIT_COMMITTER_EMAIL", "t@example.invalid"),
        ("GIT_CONFIG_NOSYSTEM", "1"),
    ];
    let out = sh_run(dir, &env, TOOL_TIMEOUT, script);
    assert!(
        out.status.success(),
        "`{script}` failed ({}):\nstdout: {}\nstderr: {}\n--- daemon log (tail) ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        tail(&m.log(), 40)
    );
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// A small archive outside the mount: nested folders, empty and non-empty files.
fn make_archive(work: &Path) -> std::path::PathBuf {
    let src = work.join("archive-src");
    for (i, rel) in [
        "pkg/README",
        "pkg/src/main.c",
        "pkg/src/util.c",
        "pkg/src/empty.h",
        "pkg/doc/guide.txt",
        "pkg/doc/img/logo.bin",
        "pkg/build/.keep",
    ]
    .iter()
    .enumerate()
    {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let len = if rel.ends_with(".h") || rel.ends_with(".keep") {
            0
        } else {
            300 * (i + 1)
        };
        std::fs::write(&p, pattern(len, i as u64 + 7)).unwrap();
    }
    let tarball = work.join("pkg.tar");
    let out = sh_run(
        work,
        &[],
        TOOL_TIMEOUT,
        "tar -cf pkg.tar -C archive-src pkg",
    );
    assert!(out.status.success(), "tar -c: {:?}", out);
    tarball
}

fn workload(kind: TargetKind) {
    workload_on(&Remote::serve(TestServer::new(), kind));
}

fn workload_on(r: &Remote) {
    assert!(
        have("git") && have("tar"),
        "git and tar are needed (scripts/test.sh installs them)"
    );
    let m = r.mount("", &[]);
    let work = r.work().to_path_buf();
    let tarball = make_archive(&work);

    // git: init, commits, gc (packs, prunes loose objects, rewrites refs).
    let repo = m.dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    run(&m, &repo, "git init -q . && git config gc.auto 0");
    for i in 0..4 {
        std::fs::write(repo.join(format!("f{i}.txt")), format!("file {i}\n")).unwrap();
    }
    run(&m, &repo, "git add . && git commit -q -m first");
    run(
        &m,
        &repo,
        "echo more >> f0.txt && rm f1.txt && git add -A && git commit -q -m second",
    );
    run(
        &m,
        &repo,
        "git gc -q && git fsck --no-progress && git log --oneline | wc -l | grep -qx 2",
    );
    run(&m, &repo, "git status --porcelain | wc -l | grep -qx 0");

    // tar -x of a small archive, checked, then rm -rf of it.
    run(
        &m,
        &m.dir,
        &format!(
            "tar -xf {} && tar -df {} ",
            tarball.display(),
            tarball.display()
        ),
    );
    run(&m, &m.dir, "rm -rf pkg && test ! -e pkg");
    // Once more over the same names (removed a moment ago).
    run(
        &m,
        &m.dir,
        &format!("tar -xf {} && rm -rf pkg repo", tarball.display()),
    );
    run(&m, &m.dir, "test -z \"$(ls -A)\"");
}

common::per_kind!(workload;
    box_git_and_tar => Box,
    cloudreve_git_and_tar => Cloudreve,
    dyson_git_and_tar => Dyson,
    fluxer_git_and_tar => Fluxer,
    virola_git_and_tar => Virola,
);

/// The same on a bucket of a real S3 server.
#[test]
fn s3_git_and_tar() {
    workload_on(&Remote::s3("workload"));
}
