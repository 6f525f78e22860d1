//! The Fluxer emulator, spoken to with raw HTTP: messages carrying inline and chunked
//! uploads, listing, deletes, the CDN's range behaviour, durability across a restart;
//! plus client behaviour the conformance scenario does not reach (limits, bad names, lost
//! answers).

#[path = "server_common.rs"]
mod server_common;

use serde_json::{json, Value};
use server_common::common::{pattern, sha1_hex, TestServer, TOKEN};
use server_common::fluxer_api::*;
use std::sync::Arc;
use uploadfs::config::TargetKind;
use uploadfs::remote::{ByteCounter, Digests, ErrorKind, FileSource, UploadRequest};
use uploadfs::server::FLUXER_CHANNEL_ID as CID;

#[test]
fn message_posting_rules() {
    let s = TestServer::start(|o| o.fluxer_max_size = MIB as u64);
    let a = Api::new(&s);
    let data = pattern(1000, 5);
    let name = "my file (1) ü.txt";
    let (st, m) = a.post(
        json!({"content": "hi", "attachments": [{"id": 3, "filename": name}]}),
        vec![(3, "whatever", data.clone())],
    );
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["channel_id"], CID);
    assert_eq!(m["content"], "hi");
    assert!(m["id"].as_str().unwrap().parse::<u64>().is_ok());
    assert!(m["timestamp"].is_string());
    let att = &m["attachments"][0];
    assert_eq!(att["filename"], name);
    assert_eq!(att["size"], 1000);
    assert_eq!(att["content_type"], "text/plain");
    assert_eq!(att["flags"], 0);
    let aid = att["id"].as_str().unwrap();
    assert_eq!(
        att["url"],
        s.url(&format!(
            "/fluxer/cdn/attachments/{CID}/{aid}/my%20file%20%281%29%20%C3%BC.txt"
        ))
    );
    assert!(att["proxy_url"].is_string());
    let st = s.state();
    let f = &st["protocols"]["fluxer"]["files"][0];
    assert_eq!(f["extra"]["message_id"], m["id"]);
    assert_eq!(f["extra"]["channel_id"], CID);
    let (st, _, body) = a.cdn(att["url"].as_str().unwrap(), None);
    assert_eq!((st.as_u16(), body), (200, data.clone()));

    // Refusals; none of them stores anything.
    let e = assert_err(
        a.post(json!({"attachments": [{"id": 0, "filename": "x"}]}), vec![]),
        400,
        "INVALID_FORM_BODY",
    );
    assert_eq!(e["errors"][0]["code"], "NO_FILE_FOR_ATTACHMENT_METADATA");
    let e = assert_err(
        a.post(
            json!({"attachments": [{"id": 0, "filename": "x", "uploaded_filename": "nope"}]}),
            vec![],
        ),
        400,
        "INVALID_FORM_BODY",
    );
    assert_eq!(e["errors"][0]["code"], "UPLOADED_FILE_NOT_FOUND");
    for bad in ["a/b", "a\\b", "a\u{1}b", ""] {
        assert_err(a.post_inline(bad, vec![1]), 400, "INVALID_FORM_BODY");
    }
    assert_err(
        a.post(json!({}), vec![(0, "x", vec![1])]),
        400,
        "INVALID_FORM_BODY",
    );
    assert_err(a.post(json!({}), vec![]), 400, "CANNOT_SEND_EMPTY_MESSAGE");
    assert_err(a.post(json!("text"), vec![]), 400, "INVALID_FORM_BODY");
    assert_err(
        a.send(a.c.post(a.ch("/messages")).json(&json!({"content": "x"}))),
        400,
        "INVALID_FORM_BODY",
    );
    assert_err(
        a.send(
            a.c.post(a.ch("/messages")).multipart(
                reqwest::multipart::Form::new()
                    .part("files[0]", reqwest::multipart::Part::bytes(vec![1])),
            ),
        ),
        400,
        "INVALID_FORM_BODY",
    );
    // Inline files over the limit.
    assert_err(
        a.post_inline("big.bin", vec![0; MIB + 1]),
        400,
        "FILE_SIZE_TOO_LARGE",
    );
    assert_eq!(a.post_inline("fits.bin", vec![0; MIB]).0, 200);
    // Empty files go inline.
    let (st, m0) = a.post_inline("empty.bin", vec![]);
    assert_eq!(st, 200, "{m0}");
    assert_eq!(m0["attachments"][0]["size"], 0);
    let names: Vec<String> = s.files("fluxer").into_iter().map(|f| f.0).collect();
    assert_eq!(
        names,
        vec![name.to_string(), "fits.bin".into(), "empty.bin".into()]
    );
}

#[test]
fn listing_reading_and_deleting_messages() {
    let s = TestServer::new();
    let a = Api::new(&s);
    let mut ids = vec![];
    for i in 0..5 {
        let (st, m) = a.post_inline(&format!("f{i}.bin"), vec![i as u8; 10 + i]);
        assert_eq!(st, 200);
        ids.push(m["id"].as_str().unwrap().to_string());
    }
    let list = |q: &str| a.send(a.c.get(a.ch(&format!("/messages{q}"))));
    let got = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let rev: Vec<String> = ids.iter().rev().cloned().collect();
    let (st, all) = list("");
    assert_eq!(st, 200);
    assert_eq!(got(&all), rev, "newest first");
    assert_eq!(got(&list("?limit=2").1), rev[..2]);
    assert_eq!(
        got(&list(&format!("?limit=2&before={}", ids[3])).1),
        [ids[2].clone(), ids[1].clone()]
    );
    assert_eq!(
        got(&list(&format!("?limit=2&after={}", ids[0])).1),
        [ids[2].clone(), ids[1].clone()]
    );
    for q in ["?limit=0", "?limit=101", "?limit=x", "?before=abc"] {
        assert_err(list(q), 400, "INVALID_FORM_BODY");
    }
    assert_eq!(list("?limit=100").0, 200);

    let (st, one) = a.send(a.c.get(a.ch(&format!("/messages/{}", ids[1]))));
    assert_eq!(st, 200);
    assert_eq!(one["attachments"][0]["filename"], "f1.bin");
    assert_err(
        a.send(a.c.get(a.ch("/messages/12345"))),
        404,
        "UNKNOWN_MESSAGE",
    );

    // Delete one attachment: 204, gone from the store and the CDN, message stays.
    let aid = one["attachments"][0]["id"].as_str().unwrap().to_string();
    let url = one["attachments"][0]["url"].as_str().unwrap().to_string();
    let del = |p: String| a.send(a.c.delete(a.ch(&p)));
    assert_eq!(
        del(format!("/messages/{}/attachments/{aid}", ids[1])).0,
        204
    );
    assert_err(
        del(format!("/messages/{}/attachments/{aid}", ids[1])),
        404,
        "UNKNOWN_ATTACHMENT",
    );
    assert_eq!(a.cdn(&url, None).0, 404);
    let (_, one) = a.send(a.c.get(a.ch(&format!("/messages/{}", ids[1]))));
    assert_eq!(one["attachments"], json!([]));
    assert_eq!(s.files("fluxer").len(), 4);
    // Delete whole messages.
    assert_eq!(del(format!("/messages/{}", ids[1])).0, 204);
    assert_eq!(del(format!("/messages/{}", ids[2])).0, 204);
    assert_err(del(format!("/messages/{}", ids[2])), 404, "UNKNOWN_MESSAGE");
    assert_eq!(s.files("fluxer").len(), 3);
    assert_eq!(
        got(&list("").1),
        [ids[4].clone(), ids[3].clone(), ids[0].clone()]
    );
}

#[test]
fn cdn_ranges_headers_and_lookup() {
    let s = TestServer::new();
    let a = Api::new(&s);
    let data = pattern(1000, 9);
    let (_, m) = a.post_inline("r a.bin", data.clone());
    let url = m["attachments"][0]["url"].as_str().unwrap().to_string();
    let (st, h, body) = a.cdn(&url, None);
    assert_eq!(st, 200);
    assert_eq!(body, data);
    assert_eq!(h["accept-ranges"], "bytes");
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(
        h["content-disposition"],
        "attachment; filename=\"r%20a.bin\""
    );
    assert_eq!(h["cache-control"], "public, max-age=31536000");
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["content-length"], "1000");

    let (st, h, body) = a.cdn(&url, Some("bytes=10-19"));
    assert_eq!(st, 206);
    assert_eq!(body, data[10..20]);
    assert_eq!(h["content-range"], "bytes 10-19/1000");
    let (st, _, body) = a.cdn(&url, Some("bytes=990-"));
    assert_eq!((st.as_u16(), body), (206, data[990..].to_vec()));
    let (st, _, body) = a.cdn(&url, Some("bytes=-5"));
    assert_eq!((st.as_u16(), body), (206, data[995..].to_vec()));
    // Invalid or unsatisfiable ranges are ignored: 200 with everything, never 416.
    for r in [
        "bytes=1000-",
        "bytes=5-2",
        "items=0-1",
        "bytes=0-1,4-5",
        "bytes=-",
    ] {
        let (st, h, body) = a.cdn(&url, Some(r));
        assert_eq!(st, 200, "{r}");
        assert_eq!(body, data, "{r}");
        assert!(h.get("content-range").is_none(), "{r}");
    }
    // Wrong name, channel or id.
    let aid = m["attachments"][0]["id"].as_str().unwrap();
    for bad in [
        format!("/fluxer/cdn/attachments/{CID}/{aid}/other.bin"),
        format!("/fluxer/cdn/attachments/42/{aid}/r%20a.bin"),
        format!("/fluxer/cdn/attachments/{CID}/99/r%20a.bin"),
    ] {
        assert_eq!(a.cdn(&s.url(&bad), None).0, 404, "{bad}");
    }
}

#[test]
fn messages_and_files_survive_a_restart() {
    let mut s = TestServer::new();
    let data = pattern(CHUNK + 3, 11);
    let (mid, aid) = {
        let a = Api::new(&s);
        let uf = a.chunked("big.bin", &data);
        let (st, m) = a.post(
            json!({"content": "keep", "attachments": [{"id": 0, "filename": "big.bin", "uploaded_filename": uf}]}),
            vec![],
        );
        assert_eq!(st, 200);
        (
            m["id"].as_str().unwrap().to_string(),
            m["attachments"][0]["id"].as_str().unwrap().to_string(),
        )
    };
    let srv = s.server.take().unwrap();
    s.rt.block_on(srv.stop());
    let opts = uploadfs::server::ServeOptions::ephemeral(s.dir.path().join("data"), TOKEN);
    let srv = s.rt.block_on(uploadfs::server::start(opts)).unwrap();
    s.base = srv.base_url();
    s.server = Some(srv);

    let a = Api::new(&s);
    let (st, m) = a.send(a.c.get(a.ch(&format!("/messages/{mid}"))));
    assert_eq!(st, 200);
    assert_eq!(m["content"], "keep");
    assert_eq!(m["attachments"][0]["id"], aid.as_str());
    let (st, _, body) = a.cdn(
        m["attachments"][0]["url"].as_str().unwrap(),
        Some("bytes=8388607-8388609"),
    );
    assert_eq!(st, 206);
    assert_eq!(body, data[CHUNK - 1..CHUNK + 2]);
    // New ids keep increasing after the restart.
    let (_, m2) = a.post_inline("after.bin", vec![1]);
    assert!(m2["id"].as_str().unwrap().parse::<u64>().unwrap() > mid.parse::<u64>().unwrap());
    assert_eq!(s.files("fluxer").len(), 2);
}

// ---- Client behaviour beyond the conformance scenario ----

fn request(s: &TestServer, name: &str, data: &[u8]) -> UploadRequest {
    let path = s
        .dir
        .path()
        .join(format!("src-{}", sha1_hex(name.as_bytes())));
    std::fs::write(&path, data).unwrap();
    UploadRequest {
        parent: None,
        name: name.to_string(),
        size: data.len() as u64,
        digests: Digests::default(),
        mtime_ms: 0,
        replaces: None,
        resume_session: None,
        source: Arc::new(FileSource::open(&path).unwrap()),
        observer: Arc::new(ByteCounter::default()),
    }
}

#[test]
fn client_refuses_files_over_the_limit_and_stores_nothing() {
    let s = TestServer::start(|o| o.fluxer_max_size = 10 * MIB as u64);
    let t = s.target(TargetKind::Fluxer);
    // Chunked path: the create call says FILE_SIZE_TOO_LARGE.
    let e =
        s.rt.block_on(t.upload(request(&s, "big.bin", &pattern(12 * MIB, 1))))
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{e}");
    assert!(e.message.contains("big.bin"), "{e}");
    // Inline path: the message post says FILE_SIZE_TOO_LARGE.
    s.control(json!({"fluxer_max_size": MIB}));
    let e =
        s.rt.block_on(t.upload(request(&s, "mid.bin", &pattern(2 * MIB, 2))))
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge, "{e}");
    assert!(s.files("fluxer").is_empty());
    assert_eq!(s.state()["protocols"]["fluxer"]["open_sessions"], 0);
    // A configured limit refuses before any request.
    let mut cfg = s.config(TargetKind::Fluxer);
    cfg.max_file_size = Some(100);
    let t = uploadfs::remote::build("fluxer", &cfg).unwrap();
    assert_eq!(t.capabilities().max_file_size, Some(100));
    let before = s.state()["requests"].as_u64().unwrap();
    let e =
        s.rt.block_on(t.upload(request(&s, "c.bin", &[0; 101])))
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
    assert_eq!(
        s.state()["requests"].as_u64().unwrap(),
        before + 1,
        "only the state call"
    );
}

#[test]
fn client_refuses_bad_names_before_any_request() {
    let s = TestServer::new();
    let t = s.target(TargetKind::Fluxer);
    let before = s.state()["requests"].as_u64().unwrap();
    for bad in ["a/b", "a\\b", "a\nb", "nul\u{0}"] {
        let e = s.rt.block_on(t.upload(request(&s, bad, b"x"))).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidName, "{bad:?}");
    }
    assert_eq!(s.state()["requests"].as_u64().unwrap(), before + 1);
}

#[test]
fn client_posts_each_file_once_despite_lost_answers() {
    let s = TestServer::start(|o| {
        o.fail_rate = 0.5;
        o.seed = 3;
    });
    let t = s.target(TargetKind::Fluxer);
    for i in 0..12 {
        let data = pattern(100 + i, i as u64);
        let f =
            s.rt.block_on(t.upload(request(&s, &format!("s{i}.bin"), &data)))
                .unwrap();
        assert_eq!(f.size, data.len() as u64);
    }
    let files = s.files("fluxer");
    assert_eq!(files.len(), 12, "each file stored once: {files:?}");
    assert!(s.state()["faults_injected"].as_u64().unwrap() > 0);
    let listed = s.rt.block_on(t.list(&None)).unwrap();
    assert_eq!(listed.len(), 12);
}
