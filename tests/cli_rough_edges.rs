//! Small things a new user meets first: the README's `--cache-size 512M`, a help text on
//! every argument, `serve --help` naming every option and the ids of what it hosts, the
//! man pages of the subcommands the top-level page refers to, and a mount on a non-empty
//! directory refused unless `-o nonempty`.

mod common;

use std::process::Command;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use common::config::write_config;
use common::mount::{run_bounded, text, Mount};
use common::{TestServer, BIN};
use uploadfs::cli::{Cli, Command as Sub};
use uploadfs::config::TargetKind;

#[test]
fn cache_size_takes_a_suffix() {
    let cli = Cli::try_parse_from(["uploadfs", "mount", "t", "/m", "--cache-size", "512M"])
        .expect("--cache-size 512M");
    let Sub::Mount(args) = cli.command else {
        panic!("not a mount");
    };
    assert_eq!(args.cache_size, 512 << 20);
    let cli = Cli::try_parse_from(["uploadfs", "mount", "t", "/m"]).unwrap();
    let Sub::Mount(args) = cli.command else {
        panic!("not a mount");
    };
    assert_eq!(args.cache_size, 64 << 20, "the default is unchanged");
    let err = Cli::try_parse_from(["uploadfs", "mount", "t", "/m", "--cache-size", "lots"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("512M"), "{err}");
}

/// Every argument of every subcommand says what it is for.
#[test]
fn every_argument_has_a_help_text() {
    fn walk(cmd: &clap::Command, path: &str, blank: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if a.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                blank.push(format!("{path} {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), blank);
        }
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut blank = vec![];
    walk(&cmd, "uploadfs", &mut blank);
    assert!(blank.is_empty(), "arguments without a help text: {blank:?}");
}

#[test]
fn serve_help_names_every_option_and_the_hosted_ids() {
    let out = Command::new(BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(help.contains("--fluxer-session-ttl"), "{help}");
    assert!(
        help.contains(uploadfs::server::FLUXER_CHANNEL_ID),
        "the Fluxer channel id: {help}"
    );
    assert!(help.contains("message_id"), "{help}");
}

#[test]
fn man_pages_of_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["generate", "man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let top = std::fs::read_to_string(dir.path().join("uploadfs.1")).unwrap();
    for page in [
        "uploadfs-mount",
        "uploadfs-unmount",
        "uploadfs-status",
        "uploadfs-serve",
        "uploadfs-put",
        "uploadfs-get",
        "uploadfs-config",
        "uploadfs-config-check",
        "uploadfs-generate",
    ] {
        let p = dir.path().join(format!("{page}.1"));
        let body = std::fs::read_to_string(&p).unwrap_or_else(|_| panic!("{page}.1 missing"));
        assert!(body.contains(".TH"), "{page}.1: {body}");
        if !page.starts_with("uploadfs-config-") {
            assert!(
                top.contains(&page.replace('-', "\\-")),
                "uploadfs.1 names {page}"
            );
        }
    }
    // Without --dir: the top-level page on standard output, as before.
    let out = Command::new(BIN)
        .args(["generate", "man"])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains(".TH uploadfs 1"));
}

#[test]
fn a_non_empty_mountpoint_is_refused_unless_nonempty() {
    common::mount::require_fuse();
    let s = TestServer::new();
    let work = s.dir.path().to_path_buf();
    let cfg = write_config(&s, TargetKind::Box, "");
    let dir = work.join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hidden.txt"), b"would be hidden").unwrap();
    let out = run_bounded(
        Command::new(BIN)
            .args(["mount", "t"])
            .arg(&dir)
            .arg("--config")
            .arg(&cfg)
            .arg("--cache-dir")
            .arg(work.join("cache"))
            .arg("--state-dir")
            .arg(work.join("state"))
            .env("XDG_RUNTIME_DIR", work.join("run")),
        Duration::from_secs(60),
    );
    assert!(!out.status.success(), "mounted over a non-empty directory");
    let err = text(&out.stderr);
    assert!(
        err.contains("not empty") && err.contains("-o nonempty"),
        "{err}"
    );
    assert!(!common::mount::is_mounted(&dir));
    // With -o nonempty it mounts (and shows the target, not the hidden file).
    let mut m = Mount::with_config(&work, "t", &cfg, &["-o", "nonempty"]);
    assert!(!m.path("hidden.txt").exists());
    std::fs::write(m.path("new.txt"), b"x").unwrap();
    m.unmount();
    assert_eq!(
        std::fs::read(dir.join("hidden.txt")).unwrap(),
        b"would be hidden"
    );
}

/// `uploadfs put` and `get` speak local names too: a name Box refuses goes up encoded
/// and comes back by the name it was given.
#[test]
fn put_and_get_encode_names() {
    let s = TestServer::new();
    let cfg = write_config(&s, TargetKind::Box, "");
    let home = s.dir.path();
    let src = home.join("payload.bin");
    std::fs::write(&src, b"odd name").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .env("HOME", home)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        out
    };
    run(&[
        "put",
        "-q",
        src.to_str().unwrap(),
        "t:back\\slash and tab\t ",
    ]);
    assert!(
        s.stored("box").contains_key("back＼slash and tab␉␠"),
        "{:?}",
        s.stored("box")
    );
    let out = run(&["get", "-q", "t:back\\slash and tab\t "]);
    assert_eq!(out.stdout, b"odd name");
}
