//! The Cloudreve client against `uploadfs serve`: a failed upload leaves no placeholder
//! behind, listings skip placeholders and page through large folders, a session upload
//! over an existing name becomes a new version.

#[path = "server_common.rs"]
mod server_common;

use serde_json::json;
use server_common::cloudreve_api::*;
use server_common::common::{pattern, sha1_hex};
use std::sync::Arc;
use uploadfs::config::TargetKind;
use uploadfs::remote::{ByteCounter, Digests, ErrorKind, PartSource, UploadRequest};

/// Reads fine up to `fail_from`, then fails (a stage file that went bad mid-upload).
struct FailingSource {
    data: Vec<u8>,
    fail_from: u64,
}

impl PartSource for FailingSource {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<bytes::Bytes> {
        if len > 1 && offset + len as u64 > self.fail_from {
            return Err(std::io::Error::other("disk went away"));
        }
        let end = (offset as usize + len).min(self.data.len());
        Ok(bytes::Bytes::copy_from_slice(
            &self.data[offset as usize..end],
        ))
    }
}

#[test]
fn client_failed_upload_leaves_no_placeholder() {
    let s = server();
    let t = s.target(TargetKind::Cloudreve);
    let size = 6 * MIB;
    let req = UploadRequest {
        parent: None,
        name: "broken.bin".into(),
        size: size as u64,
        digests: Digests::default(),
        mtime_ms: 0,
        replaces: None,
        resume_session: None,
        source: Arc::new(FailingSource {
            data: pattern(size, 5),
            fail_from: 2 * MIB as u64 + 5,
        }),
        observer: Arc::new(ByteCounter::default()),
    };
    let err = s.rt.block_on(t.upload(req)).expect_err("upload must fail");
    assert_eq!(err.kind, ErrorKind::LocalIo, "{err}");
    assert!(err.message.contains("broken.bin"), "{err}");
    assert_eq!(open_sessions(&s), 0, "session cancelled");
    assert_eq!(
        code(&info(&s, "cloudreve://my/broken.bin")),
        40016,
        "no placeholder"
    );
    assert!(s.files("cloudreve").is_empty());
}

#[test]
fn client_lists_all_pages_and_skips_placeholders() {
    let s = server();
    let t = s.target(TargetKind::Cloudreve);
    for i in 0..1005 {
        let r = call(
            &s,
            reqwest::Method::POST,
            "/file/create",
            Some(json!({"uri": format!("cloudreve://my/d{i:04}"), "type": "folder"})),
        );
        assert_eq!(code(&r), 0);
    }
    put_content(&s, "cloudreve://my/real file.bin", b"x");
    new_session(&s, "cloudreve://my/pending.bin", 10);
    let all = s.rt.block_on(t.list(&None)).expect("list");
    assert_eq!(all.iter().filter(|f| f.is_dir).count(), 1005);
    assert!(
        !all.iter().any(|f| f.name == "pending.bin"),
        "placeholder skipped"
    );
    let f = all
        .iter()
        .find(|f| f.name == "real file.bin")
        .expect("file listed");
    assert_eq!(f.id, "cloudreve://my/real%20file.bin");
    assert_eq!(
        s.rt.block_on(t.read_range(f, 0, 10)).unwrap().as_ref(),
        b"x"
    );
    // Folders work through the client: mkdir, upload into it, move and rename.
    let d = s.rt.block_on(t.mkdir(&None, "sub dir")).expect("mkdir");
    assert!(d.is_dir);
    let e =
        s.rt.block_on(t.mkdir(&None, "sub dir"))
            .expect_err("exists");
    assert_eq!(e.kind, ErrorKind::Conflict);
    let moved =
        s.rt.block_on(t.rename(f, &Some(d.id.clone()), "renamed #1.bin"))
            .expect("move + rename");
    assert_eq!(moved.id, "cloudreve://my/sub%20dir/renamed%20%231.bin");
    let inside = s.rt.block_on(t.list(&Some(d.id.clone()))).unwrap();
    assert_eq!(inside.len(), 1);
    assert_eq!(
        s.rt.block_on(t.read_range(&inside[0], 0, 1))
            .unwrap()
            .as_ref(),
        b"x"
    );
}

#[test]
fn client_session_upload_over_existing_name_becomes_a_version() {
    let s = server();
    let t = s.target(TargetKind::Cloudreve);
    put_content(&s, "cloudreve://my/over.bin", b"old");
    let before = info(&s, "cloudreve://my/over.bin")["data"]["id"].clone();
    let data = pattern(5 * MIB + 3, 6);
    let path = s.dir.path().join("over.src");
    std::fs::write(&path, &data).unwrap();
    let counter = Arc::new(ByteCounter::default());
    let req = UploadRequest {
        parent: None,
        name: "over.bin".into(),
        size: data.len() as u64,
        digests: Digests::default(),
        mtime_ms: 1_700_000_000_000,
        replaces: None,
        resume_session: None,
        source: Arc::new(uploadfs::remote::FileSource::open(&path).unwrap()),
        observer: counter.clone(),
    };
    let f =
        s.rt.block_on(t.upload(req))
            .expect("upload as a new version");
    assert_eq!(f.size, data.len() as u64);
    assert_eq!(f.id, "cloudreve://my/over.bin");
    assert_eq!(
        counter.0.load(std::sync::atomic::Ordering::Relaxed),
        data.len() as u64,
        "every chunk reported"
    );
    assert_eq!(info(&s, "cloudreve://my/over.bin")["data"]["id"], before);
    assert_eq!(
        s.files("cloudreve"),
        vec![("over.bin".into(), data.len() as u64, sha1_hex(&data))]
    );
    let back = s.rt.block_on(t.read_range(&f, MIB as u64 - 2, 4)).unwrap();
    assert_eq!(back.as_ref(), &data[MIB - 2..MIB + 2]);
}
