//! The Box client keeps the signed download link of each file version: the first ranged
//! read of a version costs two requests (the API's 302, then the link), later ones one; a
//! new version gets a link of its own; a link the server refuses once it has expired is
//! replaced by a fresh one within the same read. Requests are counted by the server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{pattern, TestServer};
use serde_json::json;
use uploadfs::config::TargetKind;
use uploadfs::remote::{RemoteFile, Target};

/// Requests the server answered while `f` ran (the two introspection calls that count them
/// count themselves once).
fn requests_of<T>(s: &TestServer, f: impl FnOnce() -> T) -> (T, u64) {
    let before = s.requests();
    let out = f();
    (out, s.requests() - before - 1)
}

fn read(s: &TestServer, t: &Arc<dyn Target>, f: &RemoteFile, offset: u64, len: u64) -> Vec<u8> {
    s.rt.block_on(t.read_range(f, offset, len))
        .expect("ranged read")
        .to_vec()
}

#[test]
fn a_kept_link_serves_later_reads_in_one_request_and_a_new_version_gets_its_own() {
    let s = TestServer::new();
    let t = s.target(TargetKind::Box);
    let v1 = pattern(300_000, 5);
    let f1 =
        s.rt.block_on(t.upload(s.upload_request("a.bin", &v1, None)))
            .expect("upload");

    let (got, n) = requests_of(&s, || read(&s, &t, &f1, 0, 4096));
    assert_eq!(got, v1[..4096]);
    assert_eq!(n, 2, "the first read: the API's redirect, then the link");
    let (got, n) = requests_of(&s, || read(&s, &t, &f1, 100_000, 5000));
    assert_eq!(got, v1[100_000..105_000]);
    assert_eq!(
        n, 1,
        "a later read of the same version goes straight to its link"
    );
    let (got, n) = requests_of(&s, || read(&s, &t, &f1, 0, v1.len() as u64));
    assert_eq!(got, v1, "a whole-file read (checked against the SHA-1)");
    assert_eq!(n, 1);

    // A new version of the same file: same id, another SHA-1, another link.
    let v2 = pattern(300_000, 6);
    let f2 =
        s.rt.block_on(t.upload(s.upload_request("a.bin", &v2, Some(f1.clone()))))
            .expect("new version");
    assert_eq!(f2.id, f1.id);
    assert_ne!(f2.sha1, f1.sha1);
    let (got, n) = requests_of(&s, || read(&s, &t, &f2, 0, 4096));
    assert_eq!(got, v2[..4096], "the new version's bytes");
    assert_eq!(n, 2, "a new version asks for a link of its own");
    let (got, n) = requests_of(&s, || read(&s, &t, &f2, 200_000, 4096));
    assert_eq!(got, v2[200_000..204_096]);
    assert_eq!(n, 1);
}

#[test]
fn an_expired_link_is_replaced_once_within_the_read() {
    let s = TestServer::new();
    let t = s.target(TargetKind::Box);
    // Links handed out from now on live 2 s (Box's are 15 minutes, and may end sooner).
    s.control(json!({ "box_link_lifetime_s": 2 }));
    let data = pattern(200_000, 9);
    let f =
        s.rt.block_on(t.upload(s.upload_request("e.bin", &data, None)))
            .expect("upload");
    let (got, n) = requests_of(&s, || read(&s, &t, &f, 1000, 4096));
    assert_eq!(got, data[1000..5096]);
    assert_eq!(n, 2);

    std::thread::sleep(Duration::from_millis(3200));
    let (got, n) = requests_of(&s, || read(&s, &t, &f, 50_000, 4096));
    assert_eq!(
        got,
        data[50_000..54_096],
        "the read succeeds with a fresh link"
    );
    assert_eq!(
        n, 3,
        "the kept link refused (403), a fresh redirect, the new link"
    );
    let (_, n) = requests_of(&s, || read(&s, &t, &f, 0, 10));
    assert_eq!(n, 1, "the fresh link is kept in turn");
}
