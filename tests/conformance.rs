//! One conformance scenario, written once, run against every protocol's client on
//! `uploadfs serve`: sizes around the protocol's part size, whole and ranged read-back,
//! listing, re-upload over an existing name, rename where supported, delete — once on a
//! healthy server and once at `--fail-rate 0.2`, with what landed checked through the
//! server's introspection (byte-identical, nothing twice).

mod common;

use std::sync::Arc;

use common::{pattern, sha1_hex, TestServer};
use uploadfs::config::TargetKind;
use uploadfs::target::{ByteCounter, Digests, FileSource, RemoteFile, Target, UploadRequest};

/// Upload `data` as `name` in the root, replacing `replaces`.
fn upload(
    s: &TestServer,
    t: &Arc<dyn Target>,
    name: &str,
    data: &[u8],
    replaces: Option<RemoteFile>,
) -> RemoteFile {
    let path = s.dir.path().join(format!("src-{name}"));
    std::fs::write(&path, data).unwrap();
    let req = UploadRequest {
        parent: None,
        name: name.to_string(),
        size: data.len() as u64,
        digests: Digests {
            sha1: Some(sha1_hex(data)),
            md5: Some(common::md5_hex(data)),
        },
        mtime_ms: 1_700_000_000_000,
        replaces,
        resume_session: None,
        source: Arc::new(FileSource::open(&path).unwrap()),
        observer: Arc::new(ByteCounter::default()),
    };
    let r =
        s.rt.block_on(t.upload(req))
            .unwrap_or_else(|e| panic!("upload of {name} ({} bytes) failed: {e}", data.len()));
    assert_eq!(r.size, data.len() as u64, "{name}: size reported");
    assert_eq!(r.name, name, "{name}: name reported");
    r
}

fn read(s: &TestServer, t: &Arc<dyn Target>, f: &RemoteFile, off: u64, len: u64) -> Vec<u8> {
    s.rt.block_on(t.read_range(f, off, len))
        .unwrap_or_else(|e| panic!("read {}@{off}+{len} failed: {e}", f.name))
        .to_vec()
}

fn list(s: &TestServer, t: &Arc<dyn Target>) -> Vec<RemoteFile> {
    s.rt.block_on(t.list(&None)).expect("list root")
}

fn scenario(kind: TargetKind, fail_rate: f64) {
    let s = TestServer::start(|o| {
        o.fail_rate = fail_rate;
        o.seed = 7;
    });
    let t = s.target(kind);
    let caps = t.capabilities();
    let part = caps.part_size as usize;
    let sizes = [0, 1, part - 1, part, part + 1, 3 * part + 7];
    let mut landed = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let name = format!("f{i}-{size}.bin");
        let data = pattern(size, i as u64 + 1);
        let f = upload(&s, &t, &name, &data, None);
        assert_eq!(
            read(&s, &t, &f, 0, size as u64),
            data,
            "{name}: whole read-back"
        );
        if size > 2 {
            // A range straddling the part boundary where there is one, and the last byte.
            let mid = (part.min(size - 1) - 1) as u64;
            assert_eq!(
                read(&s, &t, &f, mid, 2),
                data[mid as usize..mid as usize + 2],
                "{name}: range"
            );
            assert_eq!(
                read(&s, &t, &f, size as u64 - 1, 1),
                data[size - 1..],
                "{name}: last byte"
            );
        }
        landed.push((name, data, f));
    }
    // The listing shows every file once with its size.
    let listing = list(&s, &t);
    for (name, data, _) in &landed {
        let hits: Vec<_> = listing.iter().filter(|e| &e.name == name).collect();
        assert_eq!(hits.len(), 1, "{name} listed once: {listing:?}");
        assert_eq!(hits[0].size, data.len() as u64, "{name}: listed size");
    }
    // What landed on the server is byte-identical, and nothing landed twice.
    let stored = s.files(kind.as_str());
    for (name, data, _) in &landed {
        let hits: Vec<_> = stored.iter().filter(|(n, _, _)| n == name).collect();
        assert_eq!(hits.len(), 1, "{name} stored once: {stored:?}");
        assert_eq!(hits[0].2, sha1_hex(data), "{name}: stored content");
    }

    // Re-upload over an existing name.
    let (name, _, old) = landed[2].clone();
    let newer = pattern(12345, 99);
    let f = upload(&s, &t, &name, &newer, Some(old.clone()));
    if !caps.replaces_in_place && f.id != old.id {
        s.rt.block_on(t.delete(&old)).expect("delete replaced file");
    }
    assert_eq!(
        read(&s, &t, &f, 0, newer.len() as u64),
        newer,
        "replaced content"
    );
    let stored = s.files(kind.as_str());
    let hits: Vec<_> = stored.iter().filter(|(n, _, _)| *n == name).collect();
    assert_eq!(
        hits.len(),
        1,
        "{name} stored once after replace: {stored:?}"
    );
    assert_eq!(hits[0].2, sha1_hex(&newer));
    landed[2] = (name, newer, f);

    // Rename where the target has it.
    if caps.rename {
        let (name, data, f) = landed[1].clone();
        let r =
            s.rt.block_on(t.rename(&f, &None, "renamed.bin"))
                .expect("rename");
        assert_eq!(r.name, "renamed.bin");
        let listing = list(&s, &t);
        assert!(
            listing.iter().any(|e| e.name == "renamed.bin"),
            "renamed listed"
        );
        assert!(!listing.iter().any(|e| e.name == name), "old name gone");
        assert_eq!(
            read(&s, &t, &r, 0, data.len() as u64),
            data,
            "renamed content"
        );
        landed[1] = ("renamed.bin".to_string(), data, r);
    }

    // Delete everything.
    if caps.delete {
        for (name, _, f) in &landed {
            s.rt.block_on(t.delete(f))
                .unwrap_or_else(|e| panic!("delete {name}: {e}"));
        }
        assert!(
            list(&s, &t).iter().all(|e| e.is_dir),
            "root empty after deletes"
        );
        assert!(
            s.files(kind.as_str()).is_empty(),
            "server store empty after deletes"
        );
    }
    if fail_rate > 0.0 {
        let st = s.state();
        assert!(
            st["faults_injected"].as_u64().unwrap_or(0) > 0,
            "faults were injected"
        );
    }
}

macro_rules! conformance {
    ($healthy:ident, $faulty:ident, $kind:expr) => {
        #[test]
        fn $healthy() {
            scenario($kind, 0.0);
        }
        #[test]
        fn $faulty() {
            scenario($kind, 0.2);
        }
    };
}

conformance!(box_healthy, box_fail_rate_0_2, TargetKind::Box);
conformance!(
    cloudreve_healthy,
    cloudreve_fail_rate_0_2,
    TargetKind::Cloudreve
);
conformance!(fluxer_healthy, fluxer_fail_rate_0_2, TargetKind::Fluxer);
conformance!(virola_healthy, virola_fail_rate_0_2, TargetKind::Virola);
conformance!(dyson_healthy, dyson_fail_rate_0_2, TargetKind::Dyson);
