//! Names a local disk accepts but a service refuses (a trailing space, a backslash, a tab,
//! a newline, DEL, `:*?"<>|`), and names that already hold the stand-ins the encoding uses, written
//! through a real mount of every kind, moved with `mv`, and read back by a fresh mount
//! (new cache and state directories) of the same target: the names and contents round-trip
//! and the server holds only names it accepts.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::config::RETRY_SECONDS;
use common::mount::{sh, Mount};
use common::pattern;
use common::remote::Remote;
use common::TestServer;
use uploadfs::config::TargetKind;
use uploadfs::remote::encoding::Rules;

/// Written as they are.
const WRITTEN: &[&str] = &[
    "trailing space ",
    " leading space",
    "back\\slash.txt",
    "tab\there",
    "new\nline",
    "del\u{7f}.bin",
    // Windows' reserved characters (Cloudreve refuses them).
    "12:30 <why?> \"q\" *|.txt",
    // The stand-ins themselves, and the quote, as ordinary characters.
    "full＼width",
    "␠symbols␠",
    "quote‛＼and‛",
    "full：width？",
];

/// Moved with `mv`: from → to.
const MOVED: &[(&str, &str)] = &[("plain-1.txt", "moved\\to "), ("tab\there", "tab\tmoved ")];

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn odd_names_on(r: &Remote, kind: &str) {
    let mut m = r.mount("", &[]);
    let mut want = std::collections::BTreeMap::new();
    for (i, name) in WRITTEN.iter().enumerate() {
        let data = pattern(1000 + i, 40 + i as u64);
        std::fs::write(m.path(name), &data).unwrap();
        want.insert(name.to_string(), data);
    }
    std::fs::write(m.path("plain-1.txt"), b"moved").unwrap();
    want.insert("plain-1.txt".into(), b"moved".to_vec());
    for (from, to) in MOVED {
        // `mv`, as users do (it used to say "cannot move ... to a subdirectory of itself").
        let script = format!("mv -- mnt/{} mnt/{}", quote(from), quote(to));
        sh(r.work(), &script);
        let data = want.remove(*from).unwrap();
        want.insert(to.to_string(), data);
    }
    let expected: BTreeSet<String> = want.keys().cloned().collect();
    assert_eq!(names_in(&m.dir), expected, "{kind}: this mount's listing");
    m.unmount();

    // The server holds the encoded names, every one a name the service accepts.
    let rules = Rules::for_kind(kind);
    let stored = r.stored();
    for name in want.keys() {
        let remote = rules.encode(name).into_owned();
        assert!(
            stored.contains_key(&remote),
            "{kind}: {name:?} is not stored as {remote:?}: {stored:?}"
        );
    }
    if kind == "box" {
        for remote in [
            "back＼slash.txt",
            "trailing space␠",
            "␠leading space",
            "new␊line",
        ] {
            assert!(stored.contains_key(remote), "box: {remote:?}: {stored:?}");
        }
    }
    assert_eq!(stored.len(), want.len(), "{kind}: {stored:?}");

    // A fresh mount of the same target reads every name and content back.
    let fresh = tempfile::tempdir().unwrap();
    let cfg = r.config("", RETRY_SECONDS);
    let m2 = Mount::with_config(fresh.path(), "t", &cfg, &[]);
    assert_eq!(
        names_in(&m2.dir),
        expected,
        "{kind}: a fresh mount's listing"
    );
    for (name, data) in &want {
        let got = std::fs::read(m2.path(name)).unwrap();
        assert!(got == *data, "{kind}: {name:?} reads back differently");
    }
    // And renames there work on the decoded names too.
    std::fs::rename(m2.path("trailing space "), m2.path("still odd\\ ")).unwrap();
    assert!(m2.path("still odd\\ ").exists());
}

/// Single-quoted for `sh` (none of the names holds a single quote).
fn quote(name: &str) -> String {
    format!("'{name}'")
}

fn odd_names(kind: TargetKind) {
    match kind {
        TargetKind::S3 => odd_names_on(&Remote::s3("oddnames"), "s3"),
        k => odd_names_on(&Remote::serve(TestServer::new(), k), k.as_str()),
    }
}

common::per_kind!(odd_names;
    box_odd_names => Box,
    cloudreve_odd_names => Cloudreve,
    fluxer_odd_names => Fluxer,
    virola_odd_names => Virola,
    dyson_odd_names => Dyson,
    s3_odd_names => S3,
);
