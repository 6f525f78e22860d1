//! S3 uploads on the part-session driver against a real SeaweedFS (tests/common/s3.rs): a
//! file whose size is known only when its writer closes it goes up part by part while it is
//! written, and a journaled multipart upload resumes from ListParts, keeping only the stored
//! parts that hold our bytes. The server's multipart ETag has the form a completion whose
//! answer was lost is recognised by, and a listing shows no folder for a prefix with
//! nothing left below it (SeaweedFS keeps listing those).

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::s3::Weed;
use uploadfs::remote::http::HttpClient;
use uploadfs::remote::s3::{S3Target, PART_SIZE};
use uploadfs::remote::{Digests, PartSource, Seal, Target, UploadObserver, UploadRequest};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
}

fn target(weed: &Weed, hint: &str) -> S3Target {
    let bucket = weed.bucket(hint);
    let cfg = weed.config(&bucket, "");
    S3Target::new(HttpClient::new(hint, &cfg).expect("http"), &cfg).expect("target")
}

fn pattern(len: u64, seed: u8) -> Bytes {
    (0..len)
        .map(|i| ((i * 31 + i / 7919) as u8) ^ seed)
        .collect::<Vec<u8>>()
        .into()
}

/// A file being written: bytes arrive on demand, the seal says when it is closed.
struct Feed {
    data: Bytes,
    arrived: Mutex<usize>,
    more: Condvar,
    seal: Option<Arc<Seal>>,
}

impl Feed {
    fn new(data: Bytes, seal: Option<Arc<Seal>>) -> Arc<Self> {
        let all = if seal.is_some() { 0 } else { data.len() };
        Arc::new(Feed {
            data,
            arrived: Mutex::new(all),
            more: Condvar::new(),
            seal,
        })
    }
    fn arrive(&self, upto: usize) {
        *self.arrived.lock().unwrap() = upto;
        self.more.notify_all();
    }
    fn done(&self) -> bool {
        self.seal
            .as_ref()
            .is_none_or(|s| s.is_sealed() || s.is_cancelled())
    }
}

impl PartSource for Feed {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Bytes> {
        let start = (offset as usize).min(self.data.len());
        let end = (start + len).min(*self.arrived.lock().unwrap());
        Ok(self.data.slice(start..end.max(start)))
    }
    fn wait_ready(&self, offset: u64, len: u64) -> std::io::Result<()> {
        let end = ((offset + len) as usize).min(self.data.len());
        let mut arrived = self.arrived.lock().unwrap();
        while *arrived < end && !self.done() {
            arrived = self
                .more
                .wait_timeout(arrived, Duration::from_millis(10))
                .unwrap()
                .0;
        }
        Ok(())
    }
    fn seal(&self) -> Option<Arc<Seal>> {
        self.seal.clone()
    }
}

/// Counts parts and bytes the server accepted.
#[derive(Default)]
struct Seen {
    parts: AtomicU64,
    bytes: AtomicU64,
    session: Mutex<Option<String>>,
}

impl UploadObserver for Seen {
    fn session_started(&self, id: &str) {
        *self.session.lock().unwrap() = Some(id.to_string());
    }
    fn part_done(&self, _index: u64, bytes: u64) {
        self.parts.fetch_add(1, Ordering::SeqCst);
        self.bytes.fetch_add(bytes, Ordering::SeqCst);
    }
}

fn request(name: &str, size: u64, source: Arc<dyn PartSource>, seen: Arc<Seen>) -> UploadRequest {
    UploadRequest {
        parent: None,
        name: name.to_string(),
        size,
        digests: Digests::default(),
        mtime_ms: 1_700_000_000_000,
        replaces: None,
        resume_session: None,
        source,
        observer: seen,
    }
}

async fn pending(t: &S3Target) -> usize {
    t.client().list_multipart_uploads("").await.unwrap().len()
}

#[test]
fn an_open_ended_file_streams_its_parts_while_it_is_written() {
    let weed = Weed::shared();
    let t = target(&weed, "streamed");
    assert!(t.capabilities().size_later && t.capabilities().early_start);
    runtime().block_on(async {
        // Sizes: under one part (one PutObject at the seal), several parts, exactly two.
        for (size, seed) in [
            (3 << 20, 1u8),
            (2 * PART_SIZE + 4321, 2),
            (2 * PART_SIZE, 3),
        ] {
            let data = pattern(size, seed);
            let seal = Seal::open_ended();
            let feed = Feed::new(data.clone(), Some(seal.clone()));
            let seen = Arc::new(Seen::default());
            // The request's size means nothing while the seal is open.
            let req = request("f", 0, feed.clone(), seen.clone());
            let writer = async {
                let full_parts = (size / PART_SIZE) as usize;
                feed.arrive(full_parts * PART_SIZE as usize);
                // The full parts go up before the writer is done.
                for _ in 0..600 {
                    if seen.parts.load(Ordering::SeqCst) as usize >= full_parts {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let sent_early = seen.parts.load(Ordering::SeqCst);
                feed.arrive(size as usize);
                seal.seal_sized(size, Digests::default());
                sent_early
            };
            let (got, sent_early) = tokio::join!(t.upload(req), writer);
            let f = got.unwrap_or_else(|e| panic!("{size} bytes: {e}"));
            assert_eq!(sent_early, size / PART_SIZE, "{size} bytes");
            assert_eq!(f.size, size);
            assert_eq!(seen.bytes.load(Ordering::SeqCst), size);
            let back = t.read_range(&f, 0, size).await.unwrap();
            assert!(back == data, "{size} bytes came back different");
        }
        assert_eq!(pending(&t).await, 0);
    });
}

#[test]
fn a_journaled_upload_resumes_from_its_stored_parts() {
    let weed = Weed::shared();
    let t = target(&weed, "resume");
    runtime().block_on(async {
        let size = 3 * PART_SIZE + 999;
        let data = pattern(size, 7);
        let p = PART_SIZE as usize;
        // An earlier run stored part 1 with our bytes and part 2 with other bytes.
        let id = t
            .client()
            .create_multipart("big", &Default::default())
            .await
            .unwrap();
        t.client()
            .upload_part("big", &id, 1, data.slice(..p))
            .await
            .unwrap();
        t.client()
            .upload_part("big", &id, 2, pattern(PART_SIZE, 99))
            .await
            .unwrap();
        let seen = Arc::new(Seen::default());
        let mut req = request("big", size, Feed::new(data.clone(), None), seen.clone());
        req.resume_session = Some(id.clone());
        let f = t.upload(req).await.expect("resumed upload");
        assert_eq!(seen.session.lock().unwrap().as_deref(), Some(id.as_str()));
        // Part 1 was kept; parts 2 (wrong bytes), 3 and 4 were sent.
        assert_eq!(seen.parts.load(Ordering::SeqCst), 3);
        assert_eq!(seen.bytes.load(Ordering::SeqCst), size - PART_SIZE);
        assert_eq!(f.size, size);
        assert!(t.read_range(&f, 0, size).await.unwrap() == data);
        assert_eq!(pending(&t).await, 0);

        // A journaled upload that is gone: a new one, all parts sent.
        let seen = Arc::new(Seen::default());
        let mut req = request("big2", size, Feed::new(data.clone(), None), seen.clone());
        req.resume_session = Some(id.clone());
        let f = t
            .upload(req)
            .await
            .expect("upload after a vanished session");
        assert_ne!(seen.session.lock().unwrap().as_deref(), Some(id.as_str()));
        assert_eq!(seen.bytes.load(Ordering::SeqCst), size);
        assert!(t.read_range(&f, 0, size).await.unwrap() == data);
        assert_eq!(pending(&t).await, 0);
    });
}

#[test]
fn a_prefix_with_nothing_below_is_no_folder() {
    let weed = Weed::shared();
    let t = target(&weed, "ghosts");
    runtime().block_on(async {
        let c = t.client();
        let meta = Default::default();
        c.put_object("x/a/f", &meta, Bytes::from_static(b"1"))
            .await
            .unwrap();
        c.put_object("x/", &meta, Bytes::new()).await.unwrap();
        c.put_object("y/f", &meta, Bytes::from_static(b"2"))
            .await
            .unwrap();
        c.delete_object("x/a/f").await.unwrap();
        c.delete_object("x/").await.unwrap();
        let names: Vec<String> = t
            .list(&None)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["y"]);
        assert!(t.list(&Some("x/".into())).await.unwrap().is_empty());
    });
}

#[test]
fn the_multipart_etag_is_the_md5_of_the_part_md5s() {
    let weed = Weed::shared();
    let t = target(&weed, "etag");
    runtime().block_on(async {
        let c = t.client();
        let id = c.create_multipart("m", &Default::default()).await.unwrap();
        let p1 = c
            .upload_part("m", &id, 1, pattern(PART_SIZE, 1))
            .await
            .unwrap();
        let p2 = c.upload_part("m", &id, 2, pattern(1000, 2)).await.unwrap();
        let parts = [p1, p2];
        let etag = c.complete_multipart("m", &id, &parts).await.unwrap();
        // What a completion whose answer was lost is recognised by.
        let want = uploadfs::remote::s3::wire::multipart_etag(&parts);
        assert_eq!(Some(etag.clone()), want);
        assert_eq!(c.head_object("m").await.unwrap().unwrap().etag, etag);
        // Completing again: SeaweedFS answers as before, others find the upload gone.
        match c.complete_multipart("m", &id, &parts).await {
            Ok(again) => assert_eq!(again, etag),
            Err(e) => assert_eq!(e.kind, uploadfs::remote::ErrorKind::NotFound, "{e}"),
        }
    });
}
