//! One conformance scenario, written once, run against every protocol's client on
//! `uploadfs serve`: sizes around the protocol's part size, whole and ranged read-back,
//! listing, re-upload over an existing name, rename where supported, delete — once on a
//! healthy server and once at `--fail-rate 0.2`, with what landed checked through the
//! server's introspection (byte-identical, nothing twice).

mod common;

use std::sync::Arc;

use common::{pattern, sha1_hex, TestServer};
use uploadfs::config::TargetKind;
use uploadfs::remote::{
    ByteCounter, Digests, FileSource, PartSource, RemoteFile, Seal, Target, UploadRequest,
};

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

/// A file still being written, as a client sees it: bytes become readable as they
/// "arrive" and the seal says when the writer is done (the mount's size hint).
struct Growing {
    data: Vec<u8>,
    arrived: std::sync::Mutex<usize>,
    more: std::sync::Condvar,
    given_up: std::sync::atomic::AtomicBool,
    seal: Arc<Seal>,
}

impl Growing {
    fn new(data: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            data,
            arrived: std::sync::Mutex::new(0),
            more: std::sync::Condvar::new(),
            given_up: std::sync::atomic::AtomicBool::new(false),
            seal: Seal::new(),
        })
    }
    /// A file whose size is known only when its writer closes it.
    fn open_ended(data: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            data,
            arrived: std::sync::Mutex::new(0),
            more: std::sync::Condvar::new(),
            given_up: std::sync::atomic::AtomicBool::new(false),
            seal: Seal::open_ended(),
        })
    }
    fn arrive(&self, upto: usize) {
        *self.arrived.lock().unwrap() = upto;
        self.more.notify_all();
    }
    fn give_up(&self) {
        self.given_up
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.seal.cancel();
        self.more.notify_all();
    }
}

impl PartSource for Growing {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<bytes::Bytes> {
        self.wait_ready(offset, len as u64)?;
        let start = (offset as usize).min(self.data.len());
        let end = (start + len).min(self.data.len());
        Ok(bytes::Bytes::copy_from_slice(&self.data[start..end]))
    }
    fn wait_ready(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let end = ((offset + len) as usize).min(self.data.len());
        let mut arrived = self.arrived.lock().unwrap();
        while *arrived < end {
            if self.given_up.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::Error::other("given up"));
            }
            arrived = self
                .more
                .wait_timeout(arrived, std::time::Duration::from_millis(50))
                .unwrap()
                .0;
        }
        Ok(())
    }
    fn seal(&self) -> Option<Arc<Seal>> {
        Some(self.seal.clone())
    }
}

fn growing_request(name: &str, src: &Arc<Growing>) -> UploadRequest {
    UploadRequest {
        parent: None,
        name: name.to_string(),
        size: src.data.len() as u64,
        // Unknown until the writer is done: the seal carries them.
        digests: Digests::default(),
        mtime_ms: 1_700_000_000_000,
        replaces: None,
        resume_session: None,
        source: src.clone(),
        observer: Arc::new(ByteCounter::default()),
    }
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// An upload started before its file is complete: parts go up as data arrives where the
/// protocol allows (nothing is sent before the writer is done where it does not), nothing
/// is visible before the seal, the sealed file lands intact, and a cancelled one leaves
/// nothing behind.
fn sealed_scenario(kind: TargetKind) {
    const CHUNK: u64 = 4 * 1024 * 1024;
    let s = TestServer::start(|o| o.cloudreve_chunk_size = CHUNK);
    let t = s.target(kind);
    let caps = t.capabilities();
    let part = if kind == TargetKind::Cloudreve {
        CHUNK as usize
    } else {
        caps.part_size as usize
    };
    let size = 3 * part + 7;
    let proto = kind.as_str();
    let received = || s.state()["bytes_received"].as_u64().unwrap_or(0);
    let listed = |name: &str| s.files(proto).iter().any(|(n, _, _)| n == name);

    let data = pattern(size, 41);
    let src = Growing::new(data.clone());
    let task = s.rt.spawn({
        let t = t.clone();
        let req = growing_request("growing.bin", &src);
        async move { t.upload(req).await }
    });
    src.arrive(2 * part);
    if caps.early_start {
        wait_until("the first parts go up before the file is complete", || {
            received() >= part as u64
        });
    } else {
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(
            received(),
            0,
            "{proto}: nothing may be sent before the seal"
        );
    }
    src.arrive(size);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!task.is_finished(), "{proto}: completed before the seal");
    assert!(!listed("growing.bin"), "{proto}: visible before the seal");
    src.seal.seal(Digests {
        sha1: Some(sha1_hex(&data)),
        md5: Some(common::md5_hex(&data)),
    });
    let f =
        s.rt.block_on(task)
            .unwrap()
            .unwrap_or_else(|e| panic!("{proto}: sealed upload failed: {e}"));
    assert_eq!(f.size, size as u64);
    let stored = s.files(proto);
    let hits: Vec<_> = stored
        .iter()
        .filter(|(n, _, _)| n == "growing.bin")
        .collect();
    assert_eq!(hits.len(), 1, "{proto}: stored once: {stored:?}");
    assert_eq!(hits[0].2, sha1_hex(&data), "{proto}: stored content");
    assert!(
        received() < (size + part) as u64 + 4096,
        "{proto}: every part sent once"
    );

    // Given up after every byte arrived: nothing becomes visible.
    let src = Growing::new(pattern(size, 42));
    let task = s.rt.spawn({
        let t = t.clone();
        let req = growing_request("given-up.bin", &src);
        async move { t.upload(req).await }
    });
    src.arrive(size);
    std::thread::sleep(std::time::Duration::from_millis(500));
    src.give_up();
    let r = s.rt.block_on(task).unwrap();
    assert!(r.is_err(), "{proto}: a given-up upload reported success");
    assert!(
        !listed("given-up.bin"),
        "{proto}: a given-up upload is visible"
    );
    if matches!(kind, TargetKind::Box | TargetKind::Cloudreve) {
        // These protocols can abort a session: none is left behind.
        wait_until("the session is aborted", || {
            s.state()["protocols"][proto]["open_sessions"].as_u64() == Some(0)
        });
    }
}

#[test]
fn sealed_box() {
    sealed_scenario(TargetKind::Box);
}
#[test]
fn sealed_cloudreve() {
    sealed_scenario(TargetKind::Cloudreve);
}
#[test]
fn sealed_fluxer() {
    sealed_scenario(TargetKind::Fluxer);
}
#[test]
fn sealed_virola() {
    sealed_scenario(TargetKind::Virola);
}
#[test]
fn sealed_dyson() {
    sealed_scenario(TargetKind::Dyson);
}

/// An upload whose size is known only at the seal: a client that needs the size up front
/// sends nothing before it, then lands the file at the sealed size (the request's `size`
/// is only a placeholder).
fn open_ended_scenario(kind: TargetKind) {
    let s = TestServer::start(|o| o.cloudreve_chunk_size = 4 * 1024 * 1024);
    let t = s.target(kind);
    let part = t.capabilities().part_size as usize;
    let size = 2 * part + 3;
    let proto = kind.as_str();
    let data = pattern(size, 43);
    let src = Growing::open_ended(data.clone());
    let mut req = growing_request("open-ended.bin", &src);
    req.size = 0;
    let task = s.rt.spawn({
        let t = t.clone();
        async move { t.upload(req).await }
    });
    src.arrive(size);
    if !t.capabilities().size_later {
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert_eq!(
            s.state()["bytes_received"].as_u64().unwrap_or(0),
            0,
            "{proto}: nothing may be sent before the size is known"
        );
    }
    assert!(!task.is_finished(), "{proto}: completed before the seal");
    src.seal.seal_sized(
        size as u64,
        Digests {
            sha1: Some(sha1_hex(&data)),
            md5: Some(common::md5_hex(&data)),
        },
    );
    let f =
        s.rt.block_on(task)
            .unwrap()
            .unwrap_or_else(|e| panic!("{proto}: open-ended upload failed: {e}"));
    assert_eq!(f.size, size as u64, "{proto}: the sealed size");
    let stored = s.files(proto);
    let hits: Vec<_> = stored
        .iter()
        .filter(|(n, _, _)| n == "open-ended.bin")
        .collect();
    assert_eq!(hits.len(), 1, "{proto}: stored once: {stored:?}");
    assert_eq!(hits[0].2, sha1_hex(&data), "{proto}: stored content");
}

#[test]
fn open_ended_every_kind() {
    for kind in [
        TargetKind::Box,
        TargetKind::Cloudreve,
        TargetKind::Fluxer,
        TargetKind::Virola,
        TargetKind::Dyson,
    ] {
        open_ended_scenario(kind);
    }
}
