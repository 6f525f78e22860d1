//! Flat targets (Fluxer, Virola, Dyson): a file renamed after its upload ends up under its
//! final name on the server, so tools that write a temporary file and rename it into place
//! (`sed -i`, rsync's `.NAME.XXXXXX`, an editor's save-by-rename, plain `mv`) leave the
//! right names, and a fresh mount (new cache and state directories) of the same channel
//! shows them; no temporary name is left on the server. Run in the default mode (the
//! upload has landed when the rename comes, unless the temporary name is a known tool's)
//! and in write-back mode (it may not have).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use common::config::write_config;
use common::mount::{sh, Mount};
use common::{pattern, sha1_hex, TestServer};
use uploadfs::config::TargetKind;

fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

fn renames(kind: TargetKind, extra: &[&str]) {
    let s = TestServer::new();
    let proto = kind.as_str();
    let work = s.dir.path().to_path_buf();
    let mut m = Mount::for_kind(&s, kind, "", extra);

    // sed -i: writes `sedXXXXXX` next to the file and renames it over the file.
    std::fs::write(m.path("ed.txt"), b"hello\nworld\n").unwrap();
    sh(&work, "sed -i s/hello/bye/ mnt/ed.txt");
    // rsync: `.f1.bin.XXXXXX`, renamed to f1.bin once written.
    std::fs::create_dir_all(work.join("src")).unwrap();
    let f1 = pattern(300_000, 7);
    std::fs::write(work.join("src/f1.bin"), &f1).unwrap();
    std::fs::write(work.join("src/f2.txt"), b"second file\n").unwrap();
    let before = s.bytes_received();
    sh(&work, "rsync -r src/ mnt/");
    // Each file went up once, under its final name: no second post after the rename.
    let sent = s.bytes_received() - before;
    assert!(
        sent < (f1.len() as u64) * 3 / 2,
        "{proto}: rsync sent {sent} bytes for {} bytes of files; the mount's log:\n{}",
        f1.len() + 12,
        m.log()
    );
    // One of rsync's temporary names in 26 has no capital letter, which alone would not
    // tell it from an ordinary name: the creating process's name does, with the exclusive
    // create of `mkstemp`. A copy of `dd` named `rsync` writes such a name for certain.
    std::fs::create_dir_all(work.join("bin")).unwrap();
    std::fs::create_dir_all(work.join("src3")).unwrap();
    sh(&work, "cp \"$(command -v dd)\" bin/rsync");
    let f3 = pattern(200_000, 9);
    std::fs::write(work.join("src3/f3.bin"), &f3).unwrap();
    let before = s.bytes_received();
    sh(
        &work,
        "bin/rsync if=src3/f3.bin of=mnt/.f3.bin.q7x2ka conv=excl status=none \
         && mv mnt/.f3.bin.q7x2ka mnt/f3.bin",
    );
    let sent = s.bytes_received() - before;
    assert!(
        sent < (f3.len() as u64) * 3 / 2,
        "{proto}: {sent} bytes sent for a {} bytes file; the mount's log:\n{}",
        f3.len(),
        m.log()
    );
    // rsync --inplace writes the final name itself (no O_EXCL): a name of that shape is
    // the file's own, uploaded under it.
    std::fs::write(work.join("src3/.g.bin.abcdef"), b"in place\n").unwrap();
    sh(&work, "rsync --inplace src3/.g.bin.abcdef mnt/");
    // mv of a file that landed long ago.
    std::fs::write(m.path("a.txt"), b"plain move\n").unwrap();
    sh(&work, "mv mnt/a.txt mnt/b.txt");
    // An editor's save: the new content under a temporary name, renamed over the file.
    std::fs::write(m.path("doc.txt"), b"version 1\n").unwrap();
    std::fs::write(m.path("doc.txt.swp-new"), b"version 2\n").unwrap();
    sh(&work, "mv mnt/doc.txt.swp-new mnt/doc.txt");

    let want: BTreeMap<&str, Vec<u8>> = BTreeMap::from([
        ("ed.txt", b"bye\nworld\n".to_vec()),
        ("f1.bin", f1),
        ("f2.txt", b"second file\n".to_vec()),
        ("f3.bin", f3),
        (".g.bin.abcdef", b"in place\n".to_vec()),
        ("b.txt", b"plain move\n".to_vec()),
        ("doc.txt", b"version 2\n".to_vec()),
    ]);
    let names: BTreeSet<String> = want.keys().map(|n| n.to_string()).collect();
    assert_eq!(names_in(&m.dir), names, "{proto}: this mount's listing");
    // Unmounting waits for every upload (write-back too).
    m.unmount();

    // The server holds the final names, with the final contents, and nothing else.
    let stored = s.stored(proto);
    let stored_names: BTreeSet<String> = stored.keys().cloned().collect();
    assert_eq!(stored_names, names, "{proto}: names on the server");
    for (name, data) in &want {
        assert_eq!(
            stored[*name],
            (data.len() as u64, sha1_hex(data)),
            "{proto}: {name} on the server"
        );
    }

    // A fresh mount of the same target shows the same.
    let fresh = tempfile::tempdir().unwrap();
    let cfg = write_config(&s, kind, "");
    let m2 = Mount::with_config(fresh.path(), "t", &cfg, &[]);
    assert_eq!(names_in(&m2.dir), names, "{proto}: a fresh mount's listing");
    for (name, data) in &want {
        assert!(
            std::fs::read(m2.path(name)).unwrap() == *data,
            "{proto}: {name} reads back differently"
        );
    }
}

fn default_mode(kind: TargetKind) {
    renames(kind, &[]);
}

fn write_back(kind: TargetKind) {
    renames(kind, &["--write-back"]);
}

common::per_kind!(default_mode;
    fluxer_renames => Fluxer,
    virola_renames => Virola,
    dyson_renames => Dyson,
);

common::per_kind!(write_back;
    fluxer_renames_write_back => Fluxer,
    virola_renames_write_back => Virola,
    dyson_renames_write_back => Dyson,
);
