//! Bad weather under a live mount: the server really goes away (its listener closes, its
//! connections end: the client sees connection refused) and comes back on the same
//! address, while the mount runs. A write in the default mode fails with EIO within the
//! configured outage bound and one log line names the target and the cause; `ls` answers
//! at once from the catalog; `status` shows the target down and each file retrying; every
//! file lands by itself when the server is back (default and write-back); `unmount` says
//! at once that uploads wait for a down target and names `--force`, which unmounts within
//! seconds and loses nothing (the next mount uploads it). A refused token is EACCES for
//! `ls` on every kind, a missing root folder ENOENT, and a mount whose daemon died shows in
//! `status` as dead.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::config::{TargetToml, Token};
use common::mount::{assert_fails_with, is_mounted, sh, sh_run, text, Mount};
use common::{pattern, sha1_hex, TestServer, TOKEN};
use uploadfs::config::TargetKind;
use uploadfs::server::ServeOptions;

/// The outage bound the mounts here are configured with (`outage_seconds`), short so the
/// tests are; the default is 15 s.
const OUTAGE: u64 = 4;
/// Slack on top of [`OUTAGE`] for a failing `cp` under a loaded machine.
const SLACK: Duration = Duration::from_secs(6);
/// How long a file may take to land after the server is back (probe interval, retry).
const LANDS: Duration = Duration::from_secs(40);

/// Stop the server: its listener closes and its connections end.
fn stop(s: &mut TestServer) {
    let srv = s.server.take().expect("the server runs");
    s.rt.block_on(srv.stop());
}

/// Start the server again on the same address, with the same data.
fn restart(s: &mut TestServer) {
    let addr = s
        .base
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let mut o = ServeOptions::ephemeral(s.dir.path().join("data"), TOKEN);
    o.listen = addr;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match s.rt.block_on(uploadfs::server::start(o.clone())) {
            Ok(srv) => {
                s.server = Some(srv);
                return;
            }
            Err(e) if Instant::now() < deadline => {
                eprintln!("restart: {e}; again");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("the server does not start again: {e}"),
        }
    }
}

fn mount(s: &TestServer, kind: TargetKind, extra: &[&str]) -> Mount {
    let cfg = TargetToml::new(s, kind)
        .extra(&format!("outage_seconds = {OUTAGE}\n"))
        .write(s);
    Mount::with_config(s.dir.path(), "t", &cfg, extra)
}

fn want(files: &[(&str, &[u8])]) -> BTreeMap<String, (u64, String)> {
    files
        .iter()
        .map(|(n, d)| (n.to_string(), (d.len() as u64, sha1_hex(d))))
        .collect()
}

fn health(m: &Mount) -> serde_json::Value {
    m.status_json()["mounts"][0]["health"].clone()
}

/// Default mode: the bounded failure, the log line, the instant cached listing, status
/// down with the file retrying, and the file landing by itself when the server is back.
fn default_mode_outage(kind: TargetKind) {
    let mut s = TestServer::new();
    let m = mount(&s, kind, &[]);
    let work = s.dir.path().to_path_buf();
    let a = pattern(10_000, 1);
    let b = pattern(300_000, 2);
    std::fs::write(work.join("a.bin"), &a).unwrap();
    std::fs::write(work.join("b.bin"), &b).unwrap();
    sh(&work, "cp a.bin mnt/a.bin && ls mnt");

    stop(&mut s);
    let t = Instant::now();
    let out = sh_run(&work, &[], Duration::from_secs(60), "cp b.bin mnt/b.bin");
    let took = t.elapsed();
    assert_fails_with(&out, "Input/output error", "cp while the server is away");
    assert!(
        took < Duration::from_secs(OUTAGE) + SLACK,
        "cp took {took:?} to fail (bound {OUTAGE} s)"
    );
    eprintln!("cp failed after {took:?}: {}", text(&out.stderr).trim());
    let log = m.log();
    let line = log
        .lines()
        .find(|l| l.contains("b.bin") && l.contains("target t unreachable"))
        .unwrap_or_else(|| panic!("no log line names the target and the cause:\n{log}"));
    assert!(line.contains("connection refused"), "{line}");

    // ls answers at once, from the catalog, with both files.
    let t = Instant::now();
    let out = sh(&work, "ls mnt");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ls took {:?} during the outage",
        t.elapsed()
    );
    let names = text(&out.stdout);
    assert!(
        names.contains("a.bin") && names.contains("b.bin"),
        "{names}"
    );

    let st = m.wait_pending("the file retrying", Duration::from_secs(10), |p| {
        p.get("/b.bin").is_some_and(|f| f["state"] == "retrying")
    });
    let f = &st["/b.bin"];
    assert!(f["attempts"].as_u64().unwrap_or(0) >= 1, "{f}");
    assert_eq!(f["waiting_for_target"], true, "{f}");
    assert!(
        f["error"].as_str().unwrap_or("").contains("unreachable"),
        "{f}"
    );
    let v = m.status_json();
    let mnt = &v["mounts"][0];
    assert_eq!(mnt["health"]["state"], "down", "{v}");
    assert!(
        mnt["health"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("connection refused"),
        "{v}"
    );
    assert_eq!(mnt["stale"], true, "{v}");
    let out = m.command().arg("status").arg(&m.dir).output().unwrap();
    let txt = text(&out.stdout);
    assert!(
        txt.contains("is down since") && txt.contains("retrying"),
        "{txt}"
    );

    restart(&mut s);
    s.wait_stored(kind.as_str(), &want(&[("a.bin", &a), ("b.bin", &b)]), LANDS);
    m.wait_pending("nothing pending", Duration::from_secs(10), |p| p.is_empty());
    assert_eq!(health(&m)["state"], "up");
    sh(&work, "cmp b.bin mnt/b.bin");
}

common::per_kind!(default_mode_outage;
    box_default_mode_outage => Box,
    cloudreve_default_mode_outage => Cloudreve,
    fluxer_default_mode_outage => Fluxer,
    virola_default_mode_outage => Virola,
    dyson_default_mode_outage => Dyson,
);

/// Write-back: a file closed during the outage lands by itself when the server is back;
/// a second outage: `unmount` names `--force` at once, `--force` unmounts within seconds,
/// and the next mount uploads what was left.
#[test]
fn write_back_outage_and_forced_unmount() {
    let mut s = TestServer::new();
    let kind = TargetKind::Box;
    let mut m = mount(&s, kind, &["--write-back"]);
    let work = s.dir.path().to_path_buf();
    let c = pattern(200_000, 3);
    let d = pattern(50_000, 4);
    std::fs::write(work.join("c.bin"), &c).unwrap();
    std::fs::write(work.join("d.bin"), &d).unwrap();
    sh(&work, "ls mnt");

    stop(&mut s);
    let t = Instant::now();
    sh(&work, "cp c.bin mnt/c.bin");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "write-back close waited"
    );
    m.wait_pending(
        "c.bin waiting for the target",
        Duration::from_secs(OUTAGE) + SLACK + Duration::from_secs(5),
        |p| p.get("/c.bin").is_some_and(|f| f["state"] == "retrying"),
    );
    assert_eq!(health(&m)["state"], "down");
    restart(&mut s);
    s.wait_stored(kind.as_str(), &want(&[("c.bin", &c)]), LANDS);

    // The second outage, and an unmount during it.
    stop(&mut s);
    sh(&work, "cp d.bin mnt/d.bin");
    m.wait_pending(
        "d.bin waiting for the target",
        Duration::from_secs(OUTAGE) + SLACK + Duration::from_secs(5),
        |p| p.get("/d.bin").is_some_and(|f| f["state"] == "retrying"),
    );
    let mut child = m
        .command()
        .arg("unmount")
        .arg(&m.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let t = Instant::now();
    let mut said = String::new();
    while !said.contains("--force") {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => {
                said.push_str(&l);
                said.push('\n');
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        said.contains("--force") && said.contains("down"),
        "unmount did not name --force for a down target: {said}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the hint took {:?}",
        t.elapsed()
    );
    assert!(
        is_mounted(&m.dir),
        "the plain unmount must not have unmounted"
    );

    let t = Instant::now();
    m.unmount_force();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "unmount --force took {:?}",
        t.elapsed()
    );
    let log = m.log();
    assert!(log.contains("stay journaled"), "{log}");

    restart(&mut s);
    m.mount();
    s.wait_stored(kind.as_str(), &want(&[("c.bin", &c), ("d.bin", &d)]), LANDS);
    sh(&work, "cmp d.bin mnt/d.bin && cmp c.bin mnt/c.bin");
}

/// A refused token is EACCES for `ls` of the fresh mount, and `status` says why.
fn wrong_token(kind: TargetKind) {
    let s = TestServer::new();
    let cfg = TargetToml::new(&s, kind)
        .token(Token::Inline("not-the-token".into()))
        .write(&s);
    let m = Mount::with_config(s.dir.path(), "t", &cfg, &[]);
    let out = sh_run(s.dir.path(), &[], Duration::from_secs(60), "ls mnt");
    assert_fails_with(
        &out,
        "Permission denied",
        &format!("{kind:?}: ls with a wrong token"),
    );
    let v = m.status_json();
    let e = v["mounts"][0]["listing_error"].as_str().unwrap_or("");
    assert!(
        e.contains("refused") && e.contains("token"),
        "{kind:?}: {v}"
    );
}

common::per_kind!(wrong_token;
    box_wrong_token => Box,
    cloudreve_wrong_token => Cloudreve,
    fluxer_wrong_token => Fluxer,
    virola_wrong_token => Virola,
    dyson_wrong_token => Dyson,
);

/// A root folder that does not exist is ENOENT for `ls`, not an empty directory.
#[test]
fn missing_root_folder() {
    let s = TestServer::new();
    let cfg = TargetToml::new(&s, TargetKind::Box)
        .extra("folder_id = \"987654321\"\n")
        .write(&s);
    let m = Mount::with_config(s.dir.path(), "t", &cfg, &[]);
    let out = sh_run(s.dir.path(), &[], Duration::from_secs(60), "ls mnt");
    assert_fails_with(
        &out,
        "No such file or directory",
        "ls of a missing root folder",
    );
    let v = m.status_json();
    assert!(
        v["mounts"][0]["listing_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{v}"
    );
}

/// A mount whose daemon died shows in `status` as dead, with what to do.
#[test]
fn status_shows_a_dead_mount() {
    let s = TestServer::new();
    let mut m = mount(&s, TargetKind::Box, &[]);
    sh(s.dir.path(), "echo x > mnt/x.txt");
    m.kill();
    let out = m
        .command()
        .args(["status", "--json"])
        .arg(&m.dir)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&out.stderr)));
    assert_eq!(v["mounts"][0]["mount"], "dead", "{v}");
    assert!(
        v["mounts"][0]["note"]
            .as_str()
            .unwrap_or("")
            .contains("ENOTCONN"),
        "{v}"
    );
    let out = m.command().arg("status").output().unwrap();
    let txt = text(&out.stdout);
    assert!(
        txt.contains("DEAD") && txt.contains("uploadfs mount"),
        "{txt}"
    );
}

/// S3: a refused secret key is EACCES for `ls` as well (the real S3 server).
#[test]
fn s3_wrong_secret() {
    let weed = common::s3::Weed::shared();
    let bucket = weed.bucket("wrongsecret");
    let work = tempfile::tempdir().unwrap();
    let cfg = weed.config_file(work.path(), "t", &bucket, "");
    let toml = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(common::s3::SECRET_KEY, "not-the-secret-key-0123456789");
    std::fs::write(&cfg, toml).unwrap();
    let m = Mount::with_config(work.path(), "t", &cfg, &[]);
    let out = sh_run(work.path(), &[], Duration::from_secs(60), "ls mnt");
    assert_fails_with(&out, "Permission denied", "s3: ls with a wrong secret key");
    let v = m.status_json();
    let e = v["mounts"][0]["listing_error"].as_str().unwrap_or("");
    assert!(e.contains("refused"), "s3: {v}");
}

/// The listing that discovers an outage is tried once: `ls` and `stat` answer at once
/// from the catalog, and status marks the view stale.
#[test]
fn the_first_listing_in_an_outage_answers_at_once() {
    let mut s = TestServer::new();
    let m = mount(&s, TargetKind::Box, &[]);
    let work = s.dir.path().to_path_buf();
    sh(&work, "echo hello > mnt/known.txt && ls mnt");
    stop(&mut s);
    // Past the listing cache's lifetime (5 s), so the next `ls` asks the target.
    std::thread::sleep(Duration::from_millis(5500));
    let t = Instant::now();
    let out = sh(&work, "ls mnt");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "ls took {:?} discovering the outage",
        t.elapsed()
    );
    assert!(
        text(&out.stdout).contains("known.txt"),
        "{}",
        text(&out.stdout)
    );
    let t = Instant::now();
    let out = sh_run(&work, &[], Duration::from_secs(30), "stat mnt/nothing-here");
    assert_fails_with(
        &out,
        "No such file",
        "stat of a missing name during the outage",
    );
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "stat took {:?}",
        t.elapsed()
    );
    // Data neither staged nor cached needs the server: EIO within the outage bound.
    let t = Instant::now();
    let out = sh_run(&work, &[], Duration::from_secs(60), "cat mnt/known.txt");
    assert_fails_with(&out, "Input/output error", "a read during the outage");
    assert!(
        t.elapsed() < Duration::from_secs(OUTAGE) + SLACK,
        "the read took {:?}",
        t.elapsed()
    );
    let v = m.status_json();
    let mnt = &v["mounts"][0];
    assert_eq!(mnt["stale"], true, "{v}");
    assert_eq!(mnt["health"]["unreachable"], true, "{v}");
    restart(&mut s);
}
