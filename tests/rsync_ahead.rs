//! rsync's temporary files on folder targets (Box, Cloudreve, Dyson, S3): rsync writes each
//! file as `.NAME.XXXXXX`, closes it and renames it to `NAME`. A new file is uploaded under
//! `NAME` at its close, so the rename is local and costs no second remote operation (the
//! server counts no more requests for `rsync -a` than for `cp -r` of as many files). What
//! must hold around that: the temporary name stays this mount's name until the rename, also
//! across a listing refresh; a temporary file removed or renamed elsewhere leaves nothing
//! under the final name; an update of existing files (the final name taken) still works;
//! the remote and a fresh mount hold the final names and contents only.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use common::mount::{sh, Mount};
use common::remote::Remote;
use common::{pattern, sha1_hex, TestServer};
use uploadfs::config::TargetKind;

/// The mount's listing TTL: short, so the tests can let a refresh happen.
const TTL_MS: u64 = 200;

fn remote(kind: TargetKind) -> Remote {
    match kind {
        TargetKind::S3 => Remote::s3("rsync"),
        _ => Remote::serve(TestServer::new(), kind),
    }
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// `n` files of the sizes around the edges (empty, one byte, small, a few blocks), with
/// contents distinct per `seed` and names `PREFIX-I.bin`.
fn tree(dir: &Path, prefix: &str, n: usize, seed: u64) -> BTreeMap<String, Vec<u8>> {
    std::fs::create_dir_all(dir).unwrap();
    let sizes = [0usize, 1, 4096, 16_384, 100_001];
    (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i}.bin");
            let data = pattern(sizes[i % sizes.len()], seed * 1000 + i as u64);
            std::fs::write(dir.join(&name), &data).unwrap();
            (name, data)
        })
        .collect()
}

/// Requests the test server answered while `f` ran (`None` on S3: the cluster keeps no
/// such counter).
fn requests_during(r: &Remote, f: impl FnOnce()) -> Option<u64> {
    let count = || match r {
        Remote::Serve { s, .. } => Some(s.requests()),
        Remote::S3(_) => None,
    };
    let before = count();
    f();
    Some(count()? - before?)
}

fn scenario(kind: TargetKind) {
    let r = remote(kind);
    let proto = r.proto();
    let work = r.work().to_path_buf();
    let mut m: Mount = r.mount(&format!("list_ttl_ms = {TTL_MS}\n"), &[]);
    std::fs::create_dir(m.path("rs")).unwrap();
    std::fs::create_dir(m.path("cp")).unwrap();
    let n = 10;
    let mut want = tree(&work.join("src"), "r", n, 1);
    let copied = tree(&work.join("other"), "c", n, 2);

    // The same number of new files through rsync and through cp: the same requests.
    let by_rsync = requests_during(&r, || {
        sh(&work, "rsync -a src/ mnt/rs/");
    });
    let by_cp = requests_during(&r, || {
        sh(&work, "cp other/* mnt/cp/");
    });
    if let (Some(rs), Some(cp)) = (by_rsync, by_cp) {
        // Listing refreshes (the TTL is short) may fall into either run; a rename per
        // file would add `n`.
        assert!(
            rs < cp + n as u64 / 2,
            "{proto}: rsync -a of {n} new files took {rs} requests, cp {cp}"
        );
    }
    let want_names: BTreeSet<String> = want.keys().cloned().collect();
    assert_eq!(names_in(&m.path("rs")), want_names, "{proto}: after rsync");

    // An update: every final name is taken now, so the files go the ordinary way
    // (uploaded under the temporary name, then renamed over the old ones).
    for (i, (name, data)) in want.iter_mut().enumerate() {
        *data = pattern(data.len() + 7, 50 + i as u64);
        std::fs::write(work.join("src").join(name), &data).unwrap();
    }
    sh(&work, "rsync -a src/ mnt/rs/");
    assert_eq!(
        names_in(&m.path("rs")),
        want_names,
        "{proto}: after the update"
    );

    // A temporary file by hand: closed, then a listing refresh (the remote already holds
    // it as `t.txt`) before its rename: this mount still shows the temporary name only.
    let temp = m.path("rs/.t.txt.AbCd3F");
    std::fs::write(&temp, b"ahead\n").unwrap();
    std::thread::sleep(Duration::from_millis(TTL_MS * 3));
    let listed = names_in(&m.path("rs"));
    assert!(
        listed.contains(".t.txt.AbCd3F") && !listed.contains("t.txt"),
        "{proto}: before its rename the listing shows {listed:?}"
    );
    std::fs::rename(&temp, m.path("rs/t.txt")).unwrap();
    want.insert("t.txt".to_string(), b"ahead\n".to_vec());
    // Removed instead of renamed: nothing stays under either name.
    std::fs::write(m.path("rs/.u.txt.QwEr7y"), b"dropped\n").unwrap();
    std::fs::remove_file(m.path("rs/.u.txt.QwEr7y")).unwrap();
    // Renamed to another name: the remote file follows.
    std::fs::write(m.path("rs/.v.txt.ZxCv8N"), b"elsewhere\n").unwrap();
    std::fs::rename(m.path("rs/.v.txt.ZxCv8N"), m.path("rs/w.txt")).unwrap();
    want.insert("w.txt".to_string(), b"elsewhere\n".to_vec());

    let names: BTreeSet<String> = want.keys().cloned().collect();
    assert_eq!(
        names_in(&m.path("rs")),
        names,
        "{proto}: this mount's listing"
    );
    m.unmount();

    // The remote holds the final names with the final contents, and nothing else.
    let mut expected: BTreeMap<String, (u64, String)> = want
        .iter()
        .map(|(k, v)| (k.clone(), (v.len() as u64, sha1_hex(v))))
        .collect();
    expected.extend(
        copied
            .iter()
            .map(|(k, v)| (k.clone(), (v.len() as u64, sha1_hex(v)))),
    );
    match &r {
        Remote::Serve { s, .. } if proto == "dyson" => {
            // Dyson stores one file per content, under the name of its first path, and
            // keeps a file shared by other paths when one of them is replaced: compare
            // the contents, and see that no temporary name is left.
            let files = s.files(proto);
            let got: BTreeSet<(u64, String)> =
                files.iter().map(|(_, n, h)| (*n, h.clone())).collect();
            let exp: BTreeSet<(u64, String)> = expected.values().cloned().collect();
            assert!(
                exp.is_subset(&got),
                "{proto}: contents on the server {got:?}, expected {exp:?}"
            );
            assert!(
                files.iter().all(|(name, _, _)| !name.starts_with('.')),
                "{proto}: a temporary name on the server: {files:?}"
            );
        }
        _ => assert_eq!(r.stored(), expected, "{proto}: files on the server"),
    }

    // A fresh mount (new cache and state) shows the same.
    let fresh = r.work().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let cfg = r.config("", 10);
    let m2 = Mount::with_config(&fresh, "t", &cfg, &[]);
    if proto == "dyson" {
        // Flat: the files show at the top, each content once.
        let top = names_in(&m2.dir);
        assert!(
            top.iter().all(|n| !n.starts_with('.')),
            "{proto}: a fresh mount shows {top:?}"
        );
        for name in ["t.txt", "w.txt"] {
            assert!(
                std::fs::read(m2.path(name)).unwrap() == want[name],
                "{proto}: {name}"
            );
        }
        return;
    }
    assert_eq!(names_in(&m2.path("rs")), names, "{proto}: a fresh mount");
    for (name, data) in &want {
        let got = std::fs::read(m2.path("rs").join(name)).unwrap();
        assert!(got == *data, "{proto}: {name} reads back differently");
    }
}

common::per_kind!(scenario;
    box_rsync_lands_under_final_names => Box,
    cloudreve_rsync_lands_under_final_names => Cloudreve,
    dyson_rsync_lands_under_final_names => Dyson,
    s3_rsync_lands_under_final_names => S3,
);
