//! The Virola emulation of `uploadfs serve`, over raw HTTP: attachment upload rules,
//! metadata, download with ranges, delete, fault injection, and that everything survives a
//! restart; and how the client finds its attachment and reports refusals.

#[path = "server_common.rs"]
mod server_common;

use reqwest::multipart::{Form, Part};
use reqwest::Client;
use serde_json::json;
use server_common::common::{pattern, sha1_hex, TestServer, TOKEN};
use server_common::virola_api::*;
use std::sync::Arc;
use uploadfs::config::TargetKind;
use uploadfs::remote::{
    ByteCounter, Digests, ErrorKind, FileSource, RemoteFile, Target, TargetError, UploadRequest,
};
use uploadfs::server::{ServeOptions, VIROLA_MESSAGE_ID, VIROLA_ROOM_ID};

#[test]
fn upload_metadata_download_delete() {
    let s = TestServer::new();
    let a = pattern(100_000, 1);
    let b = pattern(777, 2);
    let name_b = "b é x.txt";
    s.rt.block_on(async {
        let c = Client::new();
        // Two files in one request; the answer has no ids.
        let (st, v) = upload(&c, &s, &[("a.bin", &a), (name_b, &b)]).await;
        assert_eq!((st.as_u16(), v), (200, json!({"httpStatusCode": 200})));
        let atts = attachments(&c, &s).await;
        assert_eq!(atts.len(), 2, "{atts:?}");
        let meta_a = atts
            .iter()
            .find(|x| x["fileName"] == "a.bin")
            .unwrap()
            .clone();
        let meta_b = atts
            .iter()
            .find(|x| x["fileName"] == name_b)
            .unwrap()
            .clone();
        assert_eq!(meta_a["fileSize"], a.len() as u64);
        assert_eq!(meta_a["fileChecksum"], sha1_hex(&a));
        assert_eq!(meta_b["fileChecksum"], sha1_hex(&b));
        let id_a = meta_a["attachmentId"].as_u64().unwrap();
        let id_b = meta_b["attachmentId"].as_u64().unwrap();
        // Metadata endpoint.
        let (st, m) = answer(
            c.get(api(&s, &format!("/attachments/{id_a}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(m["attachmentState"], "ReadyForDownloadFromServerToClient");
        assert_eq!(m["roomId"], VIROLA_ROOM_ID);
        assert_eq!(m["textMessageId"], VIROLA_MESSAGE_ID);
        assert_eq!(m["hasThumbnail"], false);
        assert!(
            m["createdUtc"].as_i64().unwrap() > 1_600_000_000_000,
            "ms timestamps"
        );
        assert!(m["lastModifiedUtc"].is_i64());
        assert_eq!(m, meta_a);
        // Download: whole, raw-ish and percent-encoded names.
        let r = c
            .get(api(&s, &format!("/attachments/{id_a}/a.bin")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-length"], a.len().to_string().as_str());
        let cd = r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(cd.contains("a.bin"), "{cd}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), &a[..]);
        let enc = "b%20%C3%A9%20x.txt";
        let r = c
            .get(api(&s, &format!("/attachments/{id_b}/{enc}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().as_ref(), &b[..]);
        // A name that does not match.
        let (st, v) = answer(
            c.get(api(&s, &format!("/attachments/{id_a}/other.bin")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 404, Some("Attachment not found"));
        // Ranges.
        let r = c
            .get(api(&s, &format!("/attachments/{id_a}/a.bin")))
            .bearer_auth(TOKEN)
            .header("range", "bytes=10-19")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes 10-19/{}", a.len()).as_str()
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), &a[10..20]);
        let r = c
            .get(api(&s, &format!("/attachments/{id_a}/a.bin")))
            .bearer_auth(TOKEN)
            .header("range", "bytes=999999-")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes */{}", a.len()).as_str()
        );
        let (st, v) = answer(r).await;
        assert_error(st, &v, 416, None);
        // Unknown ids.
        for path in [
            "/attachments/999999",
            "/attachments/abc",
            "/attachments/999999/a.bin",
        ] {
            let (st, v) = answer(
                c.get(api(&s, path))
                    .bearer_auth(TOKEN)
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
            assert_error(st, &v, 404, Some("Attachment not found"));
        }
        // Delete.
        let (st, v) = answer(
            c.delete(api(&s, &format!("/attachments/{id_a}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!((st.as_u16(), v), (200, json!({"httpStatusCode": 200})));
        let (st, v) = answer(
            c.get(api(&s, &format!("/attachments/{id_a}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 404, Some("Attachment not found"));
        let (st, v) = answer(
            c.delete(api(&s, &format!("/attachments/{id_a}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 404, None);
        assert_eq!(attachments(&c, &s).await.len(), 1);
    });
    let stored = s.files("virola");
    assert_eq!(
        stored,
        vec![(name_b.to_string(), b.len() as u64, sha1_hex(&b))]
    );
}

#[test]
fn upload_rules_refuse_and_store_nothing() {
    let s = TestServer::new();
    s.rt.block_on(async {
        let c = Client::new();
        let url = api(&s, &format!("/messages/{VIROLA_MESSAGE_ID}/attachments"));
        // Unknown message.
        let (st, v) = answer(
            c.post(api(&s, "/messages/42/attachments"))
                .bearer_auth(TOKEN)
                .multipart(files_form(&[("a.txt", b"x")]))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 404, None);
        // Refused before the body is read (unknown message, refused token), a big upload
        // still gets its answer: the server reads the rest first instead of resetting.
        let big = pattern(32 << 20, 5);
        for (message, token, status) in [(42, TOKEN, 404), (VIROLA_MESSAGE_ID, "nope", 401)] {
            let r = c
                .post(api(&s, &format!("/messages/{message}/attachments")))
                .bearer_auth(token)
                .multipart(files_form(&[("big.bin", &big)]))
                .send()
                .await
                .expect("answered, not reset");
            assert_eq!(r.status(), status);
        }
        // A part with another name.
        let form = Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("a.txt"));
        let (st, v) = answer(
            c.post(&url)
                .bearer_auth(TOKEN)
                .multipart(form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 400, None);
        // A good part followed by a bad one: the request stores nothing.
        let form = files_form(&[("good.txt", b"x")]).part("other", Part::text("y"));
        let (st, v) = answer(
            c.post(&url)
                .bearer_auth(TOKEN)
                .multipart(form)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 400, None);
        // Bad names.
        let long = "n".repeat(256);
        for name in [
            "",
            "a/b.txt",
            "a\\b.txt",
            "..",
            ".",
            long.as_str(),
            "nul\0.txt",
        ] {
            let (st, v) = upload(&c, &s, &[(name, b"x")]).await;
            assert_error(st, &v, 400, None);
        }
        // Not multipart, and no files at all.
        let (st, v) = answer(
            c.post(&url)
                .bearer_auth(TOKEN)
                .body("raw")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 400, None);
        let (st, v) = answer(
            c.post(&url)
                .bearer_auth(TOKEN)
                .multipart(Form::new())
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 400, None);
        // A 255-byte name is fine.
        let ok_name = "n".repeat(255);
        let (st, _) = upload(&c, &s, &[(ok_name.as_str(), b"x")]).await;
        assert_eq!(st, 200);
    });
    assert_eq!(s.files("virola").len(), 1, "only the valid upload landed");
    // Over the size limit: 413 in Virola's shape, nothing stored.
    s.control(json!({"max_file_size": 1000}));
    s.rt.block_on(async {
        let c = Client::new();
        let (st, v) = upload(&c, &s, &[("big.bin", &pattern(1001, 3))]).await;
        assert_error(st, &v, 413, None);
        // A large refused body still gets its answer (the rest is drained, not reset).
        let (st, v) = upload(&c, &s, &[("huge.bin", &pattern(8 << 20, 3))]).await;
        assert_error(st, &v, 413, None);
        let (st, _) = upload(&c, &s, &[("fits.bin", &pattern(1000, 3))]).await;
        assert_eq!(st, 200);
    });
    let names: Vec<String> = s.files("virola").into_iter().map(|f| f.0).collect();
    assert!(names.contains(&"fits.bin".to_string()) && !names.contains(&"big.bin".to_string()));
}

#[test]
fn injected_faults_use_virola_shape_or_drop() {
    let s = TestServer::new();
    s.control(json!({"fail_rate": 1.0}));
    s.rt.block_on(async {
        let c = Client::new();
        let mut statuses = 0;
        for i in 0..12 {
            let name = format!("f{i}.txt");
            match c
                .post(api(
                    &s,
                    &format!("/messages/{VIROLA_MESSAGE_ID}/attachments"),
                ))
                .bearer_auth(TOKEN)
                .multipart(files_form(&[(name.as_str(), b"data")]))
                .send()
                .await
            {
                Ok(r) => {
                    assert!(r.headers().contains_key("retry-after"));
                    let (st, v) = answer(r).await;
                    assert!(st == 503 || st == 429, "{st}");
                    assert_error(st, &v, st.as_u16(), None);
                    statuses += 1;
                }
                Err(e) => assert!(e.is_request() || e.is_connect() || e.is_body(), "{e}"),
            }
        }
        assert!(statuses > 0 && statuses < 12, "a mix of answers and drops");
    });
    // Drops after storing are possible, drops before and 503/429 store nothing: never more
    // files than requests, and no partial file.
    for (name, size, sha) in s.files("virola") {
        assert_eq!(size, 4, "{name}");
        assert_eq!(sha, sha1_hex(b"data"));
    }
    assert!(s.state()["faults_injected"].as_u64().unwrap() >= 12);
}

#[test]
fn attachments_and_messages_survive_restart() {
    let mut s = TestServer::new();
    let data = pattern(50_000, 9);
    let id = s.rt.block_on(async {
        let c = Client::new();
        let (st, _) = upload(&c, &s, &[("keep.bin", &data)]).await;
        assert_eq!(st, 200);
        let (st, _) = answer(
            c.post(api(&s, &format!("/rooms/{VIROLA_ROOM_ID}/messages")))
                .bearer_auth(TOKEN)
                .json(&json!({"content": "persisted"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 200);
        attachments(&c, &s).await[0]["attachmentId"]
            .as_u64()
            .unwrap()
    });
    let old = s.server.take().unwrap();
    s.rt.block_on(old.stop());
    let server =
        s.rt.block_on(uploadfs::server::start(ServeOptions::ephemeral(
            s.dir.path().join("data"),
            TOKEN,
        )))
        .unwrap();
    s.base = server.base_url();
    s.server = Some(server);
    s.rt.block_on(async {
        let c = Client::new();
        let atts = attachments(&c, &s).await;
        assert_eq!(atts.len(), 1);
        assert_eq!(atts[0]["attachmentId"], id);
        let r = c
            .get(api(&s, &format!("/attachments/{id}/keep.bin")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
        let (_, v) = answer(
            c.get(api(
                &s,
                &format!("/rooms/{VIROLA_ROOM_ID}/messages?limit=1"),
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(v["messages"][0]["content"], "persisted");
        // New attachment ids keep growing after the restart.
        let (st, _) = upload(&c, &s, &[("after.bin", b"x")]).await;
        assert_eq!(st, 200);
        let atts = attachments(&c, &s).await;
        let after = atts.iter().find(|a| a["fileName"] == "after.bin").unwrap();
        assert!(after["attachmentId"].as_u64().unwrap() > id);
    });
}

fn client_upload(
    s: &TestServer,
    t: &Arc<dyn Target>,
    name: &str,
    data: &[u8],
) -> Result<RemoteFile, TargetError> {
    let path = s.dir.path().join("client-src");
    std::fs::write(&path, data).unwrap();
    let req = UploadRequest {
        parent: None,
        name: name.to_string(),
        size: data.len() as u64,
        // No digests: the client computes the SHA-1 it matches on.
        digests: Digests::default(),
        mtime_ms: 0,
        replaces: None,
        resume_session: None,
        source: Arc::new(FileSource::open(&path).unwrap()),
        observer: Arc::new(ByteCounter::default()),
    };
    s.rt.block_on(t.upload(req))
}

#[test]
fn client_identifies_its_attachment_and_maps_refusals() {
    let s = TestServer::new();
    let t = s.target(TargetKind::Virola);
    // Same name twice: each upload gets its own, new attachment.
    let a = client_upload(&s, &t, "same.txt", b"first").unwrap();
    let b = client_upload(&s, &t, "same.txt", b"second!").unwrap();
    assert_ne!(a.id, b.id);
    assert_eq!((a.size, b.size), (5, 7));
    assert_eq!(b.sha1.as_deref(), Some(sha1_hex(b"second!").as_str()));
    assert_eq!(
        s.rt.block_on(t.read_range(&b, 0, 100)).unwrap().as_ref(),
        b"second!"
    );
    // Names the server refuses are refused before sending.
    let e = client_upload(&s, &t, "a/b", b"x").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidName);
    // Too large: TooLarge, not retried into a timeout.
    s.control(json!({"max_file_size": 10}));
    let e = client_upload(&s, &t, "big.bin", &pattern(11, 1)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{e}");
    // A revoked token: Auth, with a message that says so and no token in it.
    s.control(json!({"token": "rotated", "max_file_size": 1000}));
    let e = s.rt.block_on(t.list(&None)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(e.message.contains("token was refused"), "{}", e.message);
    assert!(!e.message.contains(TOKEN));
}

/// Data without a path on disk: the client streams it through `read_at`.
struct InMemory(Vec<u8>);

impl uploadfs::remote::PartSource for InMemory {
    fn read_at(&self, offset: u64, len: usize) -> std::io::Result<bytes::Bytes> {
        let start = (offset as usize).min(self.0.len());
        let end = (start + len).min(self.0.len());
        Ok(bytes::Bytes::copy_from_slice(&self.0[start..end]))
    }
}

#[test]
fn client_streams_sources_without_a_path_and_unknown_routes_use_the_envelope() {
    let s = TestServer::new();
    let t = s.target(TargetKind::Virola);
    let data = pattern(3 * 1024 * 1024 + 5, 8);
    let req = UploadRequest {
        parent: None,
        name: "mem.bin".to_string(),
        size: data.len() as u64,
        digests: Digests::default(),
        mtime_ms: 0,
        replaces: None,
        resume_session: None,
        source: Arc::new(InMemory(data.clone())),
        observer: Arc::new(ByteCounter::default()),
    };
    let f = s.rt.block_on(t.upload(req)).unwrap();
    assert_eq!(f.sha1.as_deref(), Some(sha1_hex(&data).as_str()));
    assert_eq!(
        s.files("virola"),
        vec![("mem.bin".to_string(), data.len() as u64, sha1_hex(&data))]
    );
    s.rt.block_on(async {
        let (st, v) = answer(
            Client::new()
                .get(api(&s, "/no/such/route"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_error(st, &v, 404, None);
    });
}
