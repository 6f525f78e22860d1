//! The command line against a real server: `uploadfs put` / `get` for every target kind,
//! and `uploadfs config check` (unknown keys named, group-readable token files refused,
//! tokens probed).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::config::{write_config_file, TargetToml, Token};
use common::{pattern, sha1_hex, TestServer, BIN, TOKEN};
use uploadfs::config::TargetKind;

/// A config file with one target per kind, named after the kind, holding `token`.
fn write_config(s: &TestServer, token: &str) -> PathBuf {
    let targets: Vec<TargetToml> = TargetKind::ALL
        .into_iter()
        .map(|kind| {
            TargetToml::new(s, kind)
                .name(kind.as_str())
                .token(Token::Inline(token.to_string()))
                .retry_seconds(30)
        })
        .collect();
    let path = s.dir.path().join(format!("config-{}.toml", token.len()));
    write_config_file(&path, &targets)
}

fn run(args: &[&str], home: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .output()
        .expect("run uploadfs")
}

/// [`run`], failing the test with `what` and the stderr unless it succeeds.
fn run_ok(args: &[&str], home: &Path, what: &str) -> Output {
    let out = run(args, home);
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn put_get_round_trip(kind: TargetKind) {
    let s = TestServer::new();
    let cfg = write_config(&s, TOKEN);
    let cfg = cfg.to_str().unwrap();
    let home = s.dir.path();
    let data = pattern(9 * 1024 * 1024 + 3, 5);
    let src = home.join("payload.bin");
    std::fs::write(&src, &data).unwrap();
    let k = kind.as_str();
    run_ok(
        &[
            "put",
            "--quiet",
            src.to_str().unwrap(),
            &format!("{k}:copy.bin"),
            "--config",
            cfg,
        ],
        home,
        "put",
    );
    let stored = s.files(k);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(
        stored[0],
        ("copy.bin".to_string(), data.len() as u64, sha1_hex(&data))
    );

    if kind == TargetKind::Box {
        // Box gives the SHA-1: a download spoiled in transit (same length, in a block of
        // its own so no ranged read covers the whole file) is refused.
        s.spoil_answers("flip", 1, "/box/2.0/dl/", "GET");
        let out = run(
            &[
                "get",
                "-q",
                &format!("{k}:copy.bin"),
                home.join("spoiled.bin").to_str().unwrap(),
                "--config",
                cfg,
            ],
            home,
        );
        assert_eq!(s.counter("bad_answers_sent"), 1, "no spoiled answer sent");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("corrupt"),
            "a corrupted download was accepted: {err}"
        );
    }

    // The same name again replaces it: still one file, new content.
    let newer = pattern(1000, 6);
    std::fs::write(&src, &newer).unwrap();
    run_ok(
        &[
            "put",
            "-q",
            src.to_str().unwrap(),
            &format!("{k}:copy.bin"),
            "--config",
            cfg,
        ],
        home,
        "second put",
    );
    let stored = s.files(k);
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].2, sha1_hex(&newer));

    let dst = home.join("back.bin");
    run_ok(
        &[
            "get",
            "-q",
            &format!("{k}:copy.bin"),
            dst.to_str().unwrap(),
            "--config",
            cfg,
        ],
        home,
        "get",
    );
    assert_eq!(std::fs::read(&dst).unwrap(), newer);
    // A tree with --recursive: folders where the target has them, else flat.
    let tree = home.join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let mut expect = Vec::new();
    for (i, rel) in ["a.txt", "b.bin", "sub/c.txt", "sub/d.bin"]
        .iter()
        .enumerate()
    {
        let data = pattern(1000 + i * 4096, 40 + i as u64);
        std::fs::write(tree.join(rel), &data).unwrap();
        expect.push((rel.rsplit('/').next().unwrap().to_string(), sha1_hex(&data)));
    }
    let dest = if s.target(kind).capabilities().folders {
        format!("{k}:tree")
    } else {
        k.to_string()
    };
    run_ok(
        &[
            "put",
            "-q",
            "-r",
            "-j",
            "3",
            tree.to_str().unwrap(),
            &dest,
            "--config",
            cfg,
        ],
        home,
        "put -r",
    );
    let stored = s.files(k);
    for (name, sha) in &expect {
        assert_eq!(
            stored
                .iter()
                .filter(|(n, _, h)| n == name && h == sha)
                .count(),
            1,
            "{name} stored once: {stored:?}"
        );
    }

    // A missing remote file is a clear error.
    let out = run(&["get", &format!("{k}:nope.bin"), "--config", cfg], home);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.bin"));
}

common::per_kind!(put_get_round_trip;
    put_get_box => Box,
    put_get_cloudreve => Cloudreve,
    put_get_fluxer => Fluxer,
    put_get_virola => Virola,
    put_get_dyson => Dyson,
);

#[test]
fn put_to_local_needs_no_config() {
    let home = tempfile::tempdir().unwrap();
    let src = home.path().join("hello.txt");
    std::fs::write(&src, b"hello local\n").unwrap();
    let out = run(&["put", "-q", src.to_str().unwrap(), "local"], home.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["get", "local:hello.txt"], home.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"hello local\n");
}

#[test]
fn config_check_names_problems_and_probes_tokens() {
    let s = TestServer::new();
    let home = s.dir.path();
    let good = write_config(&s, TOKEN);
    let out = run(
        &[
            "config",
            "check",
            "--probe",
            "--config",
            good.to_str().unwrap(),
        ],
        home,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for kind in TargetKind::ALL {
        assert!(
            stdout.contains(&format!("{}: ok", kind.as_str())),
            "{stdout}"
        );
    }

    // A wrong token is caught by the probe, per target, with the cause.
    let bad = write_config(&s, "a-wrong-token-value");
    let out = run(
        &[
            "config",
            "check",
            "--probe",
            "--config",
            bad.to_str().unwrap(),
        ],
        home,
    );
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("box: error"), "{stdout}");
    assert!(
        !stdout.contains("a-wrong-token-value"),
        "token leaked: {stdout}"
    );

    // Unknown keys are named.
    let typo = home.join("typo.toml");
    std::fs::write(
        &typo,
        "[targets.a]\nkind = \"box\"\nurl = \"http://127.0.0.1:1\"\ntoken_evn = \"X\"\n",
    )
    .unwrap();
    let out = run(
        &["config", "check", "--config", typo.to_str().unwrap()],
        home,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("token_evn"));

    // A token in a group-readable file is refused with the fix.
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(
        &["config", "check", "--config", good.to_str().unwrap()],
        home,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));

    // Missing fields are named.
    let missing = home.join("missing.toml");
    std::fs::write(&missing, "[targets.v]\nkind = \"virola\"\nurl = \"http://127.0.0.1:1\"\ntoken_env = \"UPLOADFS_TEST_UNSET_VAR\"\n").unwrap();
    let out = run(
        &["config", "check", "--config", missing.to_str().unwrap()],
        home,
    );
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("UPLOADFS_TEST_UNSET_VAR"), "{stdout}");
}

#[test]
fn man_page_and_completions_are_generated() {
    let home = tempfile::tempdir().unwrap();
    let out = run(&["generate", "man"], home.path());
    assert!(out.status.success());
    let man = String::from_utf8_lossy(&out.stdout);
    assert!(
        man.contains(".TH uploadfs 1") && man.contains("mount"),
        "{man}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["generate", "completions", shell], home.path());
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("unmount"),
            "{shell}"
        );
    }
}
