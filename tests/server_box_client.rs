//! The Box client (`BoxTarget`) against `uploadfs serve`, on the behaviours the
//! conformance scenario does not reach.

#[path = "server_common.rs"]
mod server_common;

use serde_json::json;
use server_common::box_api::*;
use server_common::common::{pattern, sha1_hex, TestServer, TOKEN};

// ---------------------------------------------------------------------------------------
// The client (`BoxTarget`) on the behaviours the conformance scenario does not reach.

mod client {
    use std::sync::{Arc, Mutex};

    use super::*;
    use uploadfs::config::TargetKind;
    use uploadfs::remote::{
        Digests, ErrorKind, FileSource, RemoteFile, Target, UploadObserver, UploadRequest,
    };

    #[derive(Default)]
    struct Seen {
        sessions: Mutex<Vec<String>>,
        parts: Mutex<Vec<u64>>,
    }
    impl UploadObserver for Seen {
        fn session_started(&self, id: &str) {
            self.sessions.lock().unwrap().push(id.to_string());
        }
        fn part_done(&self, index: u64, _bytes: u64) {
            self.parts.lock().unwrap().push(index);
        }
    }

    fn request(
        s: &TestServer,
        name: &str,
        data: &[u8],
        replaces: Option<RemoteFile>,
        resume: Option<String>,
        seen: Arc<Seen>,
    ) -> UploadRequest {
        let path = s.dir.path().join(format!("src-{}", name.replace('/', "_")));
        std::fs::write(&path, data).unwrap();
        UploadRequest {
            parent: None,
            name: name.to_string(),
            size: data.len() as u64,
            // No SHA-1 given: the client computes it for the commit.
            digests: Digests::default(),
            mtime_ms: 1_600_000_000_000,
            replaces,
            resume_session: resume,
            source: Arc::new(FileSource::open(&path).unwrap()),
            observer: seen,
        }
    }

    fn target(s: &TestServer) -> Arc<dyn Target> {
        s.target(TargetKind::Box)
    }

    #[test]
    fn commit_202_is_honoured_more_than_five_times() {
        let s = TestServer::start(|o| o.box_commit_202 = 6);
        let data = pattern(MIN_SESSION + 1, 21);
        let seen = Arc::new(Seen::default());
        let f = s
            .rt
            .block_on(target(&s).upload(request(&s, "slow.bin", &data, None, None, seen.clone())))
            .expect("upload");
        assert_eq!(f.size, data.len() as u64);
        assert_eq!(f.sha1.as_deref(), Some(sha1_hex(&data).as_str()));
        assert_eq!(seen.sessions.lock().unwrap().len(), 1);
        let mut parts = seen.parts.lock().unwrap().clone();
        parts.sort();
        assert_eq!(parts, vec![0, 1, 2]);
        assert_eq!(open_sessions(&s), 0);
    }

    #[test]
    fn name_taken_without_replaces_becomes_a_new_version() {
        let s = TestServer::new();
        let t = target(&s);
        let first = upload(&s, "0", "Same.TXT", b"old");
        let f =
            s.rt.block_on(t.upload(request(
                &s,
                "same.txt",
                b"new content",
                None,
                None,
                Arc::default(),
            )))
            .expect("upload over a taken name");
        assert_eq!(f.id, first["id"].as_str().unwrap());
        assert_eq!(s.files("box").len(), 1);
        assert_eq!(s.files("box")[0].2, sha1_hex(b"new content"));
        // Same through a session.
        let big = pattern(MIN_SESSION, 22);
        let g =
            s.rt.block_on(t.upload(request(&s, "SAME.txt", &big, None, None, Arc::default())))
                .expect("session upload over a taken name");
        assert_eq!(g.id, f.id);
        assert_eq!(s.files("box")[0].2, sha1_hex(&big));
        assert_eq!(
            s.rt.block_on(t.read_range(&g, 8_388_607, 2))
                .unwrap()
                .to_vec(),
            big[8_388_607..8_388_609]
        );
    }

    #[test]
    fn resume_sends_only_the_missing_parts() {
        let s = TestServer::new();
        let data = pattern(MIN_SESSION + 77, 23);
        let sess = create_session(&s, "resumed.bin", data.len());
        let sid = sess["id"].as_str().unwrap().to_string();
        let ps = 8 * MIB as usize;
        assert_eq!(
            put_part_raw(&s, &sess, ps, &data[ps..2 * ps], data.len()).0,
            200
        );
        let before = s.state()["bytes_received"].as_u64().unwrap();
        let seen = Arc::new(Seen::default());
        let f =
            s.rt.block_on(target(&s).upload(request(
                &s,
                "resumed.bin",
                &data,
                None,
                Some(sid.clone()),
                seen.clone(),
            )))
            .expect("resumed upload");
        assert_eq!(f.sha1.as_deref(), Some(sha1_hex(&data).as_str()));
        assert_eq!(*seen.sessions.lock().unwrap(), vec![sid]);
        let mut parts = seen.parts.lock().unwrap().clone();
        parts.sort();
        assert_eq!(parts, vec![0, 2], "part 1 was already there");
        let sent = s.state()["bytes_received"].as_u64().unwrap() - before;
        assert_eq!(sent, (data.len() - ps) as u64);
        // A session that is gone falls back to a new one.
        let g =
            s.rt.block_on(target(&s).upload(request(
                &s,
                "fresh.bin",
                &data,
                None,
                Some("GONE".to_string()),
                Arc::default(),
            )))
            .expect("upload with a stale session id");
        assert_eq!(g.size, data.len() as u64);
        assert_eq!(open_sessions(&s), 0);
    }

    #[test]
    fn errors_map_to_kinds_and_name_the_file() {
        let s = TestServer::start(|o| o.max_file_size = MIN_SESSION as u64 + 10);
        let t = target(&s);
        let e =
            s.rt.block_on(t.upload(request(&s, "bad name ", b"x", None, None, Arc::default())))
                .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidName, "{e}");
        assert!(e.message.contains("bad name"), "{e}");
        let big = pattern(MIN_SESSION + 11, 24);
        let e =
            s.rt.block_on(t.upload(request(&s, "huge.bin", &big, None, None, Arc::default())))
                .unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge, "{e}");
        assert!(e.message.contains("huge.bin"), "{e}");
        s.control(json!({"token": "rotated"}));
        let e = s.rt.block_on(t.list(&None)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Auth, "{e}");
        assert!(!e.message.contains(TOKEN), "no token in messages");
    }

    #[test]
    fn folders_mkdir_rename_and_delete() {
        let s = TestServer::new();
        let t = target(&s);
        let d = s.rt.block_on(t.mkdir(&None, "docs")).expect("mkdir");
        assert!(d.is_dir);
        let e = s.rt.block_on(t.mkdir(&None, "DOCS")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
        let mut req = request(&s, "in.txt", b"inside", None, None, Arc::default());
        req.parent = Some(d.id.clone());
        let f = s.rt.block_on(t.upload(req)).expect("upload into folder");
        let listed = s.rt.block_on(t.list(&Some(d.id.clone()))).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].size, 6);
        assert_eq!(
            listed[0].mtime_ms, 1_600_000_000_000,
            "content_modified_at kept"
        );
        let moved = s.rt.block_on(t.rename(&f, &None, "out.txt")).expect("move");
        assert_eq!(moved.name, "out.txt");
        let e = s.rt.block_on(t.delete(&d));
        assert!(e.is_ok(), "empty folder deletes: {e:?}");
        let root = s.rt.block_on(t.list(&None)).unwrap();
        assert_eq!(
            root.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            vec!["out.txt"]
        );
        s.rt.block_on(t.delete(&moved)).unwrap();
        assert!(s.files("box").is_empty());
    }
}
