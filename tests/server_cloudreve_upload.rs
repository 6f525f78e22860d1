//! The Cloudreve v4 emulation over raw HTTP, uploads: session creation and its
//! placeholder, chunk order and length rules, automatic completion, cancel, versions,
//! small-file writes, the size limit, injected faults, and what survives a restart;
//! each rule checked by the envelope `code` (always HTTP 200).

#[path = "server_common.rs"]
mod server_common;

use serde_json::json;
use server_common::cloudreve_api::*;
use server_common::common::{pattern, sha1_hex, TestServer, TOKEN};
use std::io::{Read, Write};
use uploadfs::server::ServeOptions;

#[test]
fn chunked_upload_completes_after_last_chunk() {
    let s = server();
    let data = pattern(2 * MIB + 12345, 1);
    let r = create_session(
        &s,
        json!({"uri": "cloudreve://my/dir/sub/big%20file.bin", "size": data.len(),
               "last_modified": 1_700_000_000_000i64, "mime_type": "application/octet-stream",
               "policy_id": "J7uV", "metadata": {"k": "v"}}),
    );
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(r["msg"], "");
    let d = &r["data"];
    let sid = d["session_id"].as_str().unwrap().to_string();
    assert!(
        uuid::Uuid::parse_str(&sid).is_ok(),
        "uuid session id: {sid}"
    );
    assert_eq!(d["upload_id"], "");
    assert_eq!(d["chunk_size"], MIB as u64);
    let now = chrono::Utc::now().timestamp();
    let exp = d["expires"].as_i64().unwrap();
    assert!(
        (now + 86_300..=now + 86_500).contains(&exp),
        "expires {exp}"
    );
    assert_eq!(d["storage_policy"]["type"], "local");
    assert_eq!(d["uri"], "cloudreve://my/dir/sub/big%20file.bin");
    assert!(d["callback_secret"].as_str().is_some_and(|c| !c.is_empty()));
    assert_eq!(d["mime_type"], "application/octet-stream");
    assert_eq!(open_sessions(&s), 1);
    // Parents were created; the placeholder is listed with its declared size.
    let l = list(&s, "cloudreve://my/dir/sub", &[]);
    let ph = &l["data"]["files"][0];
    assert_eq!(ph["name"], "big file.bin");
    assert_eq!(ph["size"], data.len() as u64);
    assert_eq!(ph["metadata"]["sys:upload_session_id"], sid.as_str());
    assert!(
        s.files("cloudreve").is_empty(),
        "no partial file in the store"
    );

    for (i, c) in data.chunks(MIB).enumerate() {
        let r = chunk(&s, &sid, i as u64, c);
        assert_eq!(r, json!({"code": 0, "msg": ""}), "chunk {i}");
        if i < 2 {
            assert!(
                s.files("cloudreve").is_empty(),
                "not complete before the last chunk"
            );
        }
    }
    assert_eq!(open_sessions(&s), 0);
    let files = s.files("cloudreve");
    assert_eq!(
        files,
        vec![(
            "big file.bin".to_string(),
            data.len() as u64,
            sha1_hex(&data)
        )]
    );
    let i = info(&s, "cloudreve://my/dir/sub/big%20file.bin");
    assert_eq!(code(&i), 0, "{i}");
    assert_eq!(i["data"]["type"], 0);
    assert_eq!(i["data"]["size"], data.len() as u64);
    assert_eq!(i["data"]["metadata"]["k"], "v");
    assert!(i["data"]["metadata"].get("sys:upload_session_id").is_none());
    assert!(i["data"]["updated_at"]
        .as_str()
        .unwrap()
        .starts_with("2023-11-14T22:13:20"));
    // The session is gone once complete.
    let again = chunk(&s, &sid, 2, &data[2 * MIB..]);
    assert_eq!(code(&again), 40011);
    assert_eq!(again["msg"], "");
    let (st, _, body) = get(
        &s,
        &signed_url(&s, "cloudreve://my/dir/sub/big%20file.bin"),
        None,
    );
    assert_eq!(st, 200);
    assert_eq!(sha1_hex(&body), sha1_hex(&data));
}

#[test]
fn chunk_rules_order_length_index_session() {
    let s = server();
    let data = pattern(2 * MIB + 10, 2);
    let sid = new_session(&s, "cloudreve://my/r.bin", data.len());
    // Out of order: chunk 1 before chunk 0.
    let r = chunk(&s, &sid, 1, &data[MIB..2 * MIB]);
    assert_eq!(code(&r), 40012, "{r}");
    // Beyond the file.
    let r = chunk(&s, &sid, 3, &data[..10]);
    assert_eq!(code(&r), 40012, "{r}");
    // Wrong Content-Length for a non-last chunk.
    let r = chunk(&s, &sid, 0, &data[..MIB - 1]);
    assert_eq!(code(&r), 40013, "{r}");
    assert_eq!(
        r["msg"],
        format!("Invalid Content-Length (expected: {MIB})")
    );
    assert_eq!(code(&chunk(&s, &sid, 0, &data[..MIB])), 0);
    // A chunk sent again is accepted (it overwrites itself).
    assert_eq!(code(&chunk(&s, &sid, 0, &data[..MIB])), 0);
    assert_eq!(code(&chunk(&s, &sid, 1, &data[MIB..2 * MIB])), 0);
    // Wrong length for the last chunk.
    let r = chunk(&s, &sid, 2, &data[2 * MIB..2 * MIB + 9]);
    assert_eq!(code(&r), 40013);
    assert_eq!(r["msg"], "Invalid Content-Length (expected: 10)");
    // Missing Content-Length (a streamed body) is refused.
    let r = send(
        &s,
        client()
            .post(api(&s, &format!("/file/upload/{sid}/2")))
            .bearer_auth(TOKEN)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                vec![Ok::<_, std::io::Error>(data[2 * MIB..].to_vec())],
            ))),
    );
    assert_eq!(code(&r), 40001, "{r}");
    assert_eq!(code(&chunk(&s, &sid, 2, &data[2 * MIB..])), 0);
    assert_eq!(s.files("cloudreve")[0].2, sha1_hex(&data));
    // Unknown session: 40011 with an empty message.
    let r = chunk(&s, "9897ebae-7b73-4169-aabc-6396f470e4bb", 0, b"x");
    assert_eq!(code(&r), 40011);
    assert_eq!(r["msg"], "");
}

/// A refusal that comes before the body is read is still delivered whole: the server reads
/// the rest of a big chunk first, so the client sees the code, not a broken pipe.
#[test]
fn a_big_body_refused_early_gets_its_answer() {
    let s = server();
    let big = vec![1u8; 32 * MIB];
    for _ in 0..3 {
        let r = chunk(&s, "9897ebae-7b73-4169-aabc-6396f470e4bb", 0, &big);
        assert_eq!(code(&r), 40011, "{r}");
    }
    let sid = new_session(&s, "cloudreve://my/locked.bin", 5 * MIB);
    assert_eq!(
        code(&put_content(&s, "cloudreve://my/locked.bin", &big)),
        40073
    );
    // A wrong length is refused before the body is read, too.
    assert_eq!(code(&chunk(&s, &sid, 0, &big)), 40013);
    // And so is a refused token.
    let wrong = client()
        .post(api(&s, &format!("/file/upload/{sid}/0")))
        .bearer_auth("wrong-token")
        .header("content-length", big.len())
        .body(big.clone());
    assert_eq!(code(&send(&s, wrong)), 401);
}

#[test]
fn fewer_bytes_than_declared_is_50004() {
    let s = server();
    let sid = new_session(&s, "cloudreve://my/short.bin", 1000);
    let addr = s.base.trim_start_matches("http://").to_string();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        tcp,
        "POST /cloudreve/api/v4/file/upload/{sid}/0 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    tcp.write_all(&[7u8; 400]).unwrap();
    tcp.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    let _ = tcp.read_to_string(&mut answer);
    assert!(answer.contains("\"code\":50004"), "answer: {answer}");
    // Nothing landed and the session still takes the whole chunk.
    assert!(s.files("cloudreve").is_empty());
    assert_eq!(code(&chunk(&s, &sid, 0, &[7u8; 1000])), 0);
    assert_eq!(s.files("cloudreve")[0].1, 1000);
}

#[test]
fn empty_file_is_one_empty_chunk() {
    let s = server();
    let sid = new_session(&s, "cloudreve://my/empty.bin", 0);
    assert_eq!(code(&chunk(&s, &sid, 1, &[])), 40012);
    assert_eq!(code(&chunk(&s, &sid, 0, &[])), 0);
    assert_eq!(
        s.files("cloudreve"),
        vec![("empty.bin".into(), 0, sha1_hex(&[]))]
    );
}

#[test]
fn chunk_size_zero_means_one_chunk() {
    let s = TestServer::start(|o| o.cloudreve_chunk_size = 0);
    let data = pattern(3 * MIB + 1, 3);
    let r = create_session(
        &s,
        json!({"uri": "cloudreve://my/one.bin", "size": data.len()}),
    );
    assert_eq!(r["data"]["chunk_size"], 0);
    let sid = r["data"]["session_id"].as_str().unwrap().to_string();
    let r = chunk(&s, &sid, 1, b"x");
    assert_eq!(code(&r), 40012);
    assert_eq!(r["msg"], "Chunk index cannot be greater than 0");
    assert_eq!(code(&chunk(&s, &sid, 0, &data)), 0);
    assert_eq!(s.files("cloudreve")[0].2, sha1_hex(&data));
}

#[test]
fn placeholder_locks_the_name_until_cancelled() {
    let s = server();
    let sid = new_session(&s, "cloudreve://my/p.bin", 5 * MIB);
    // A second session for the same uri meets the placeholder.
    let r = create_session(&s, json!({"uri": "cloudreve://my/p.bin", "size": 3}));
    assert_eq!(code(&r), 40004, "{r}");
    let r = create_session(
        &s,
        json!({"uri": "cloudreve://my/p.bin", "size": 3, "entity_type": "version"}),
    );
    assert_eq!(code(&r), 40073, "{r}");
    // Writes over the placeholder and deleting it are lock conflicts.
    assert_eq!(
        code(&put_content(&s, "cloudreve://my/p.bin", b"abc")),
        40073
    );
    let r = call(
        &s,
        reqwest::Method::DELETE,
        "/file",
        Some(json!({"uris": ["cloudreve://my/p.bin"]})),
    );
    assert_eq!(code(&r), 40073);
    assert_eq!(open_sessions(&s), 1);
    let i = info(&s, "cloudreve://my/p.bin");
    assert_eq!(i["data"]["metadata"]["sys:upload_session_id"], sid.as_str());
    // Cancel needs both fields.
    let r = call(
        &s,
        reqwest::Method::DELETE,
        "/file/upload",
        Some(json!({"id": sid})),
    );
    assert_eq!(code(&r), 40001);
    let r = call(
        &s,
        reqwest::Method::DELETE,
        "/file/upload",
        Some(json!({"id": sid, "uri": "cloudreve://my/p.bin"})),
    );
    assert_eq!(r, json!({"code": 0, "msg": ""}));
    assert_eq!(open_sessions(&s), 0);
    assert!(
        names(&list(&s, "cloudreve://my", &[])).is_empty(),
        "placeholder gone"
    );
    assert_eq!(code(&info(&s, "cloudreve://my/p.bin")), 40016);
    assert_eq!(code(&chunk(&s, &sid, 0, &[0u8; MIB])), 40011);
    // Cancelling again is harmless; the name is free again.
    let r = call(
        &s,
        reqwest::Method::DELETE,
        "/file/upload",
        Some(json!({"id": sid, "uri": "cloudreve://my/p.bin"})),
    );
    assert_eq!(code(&r), 0);
    upload(&s, "cloudreve://my/p.bin", b"hello");
    assert_eq!(s.files("cloudreve").len(), 1);
}

#[test]
fn existing_file_needs_version_and_keeps_its_id() {
    let s = server();
    upload(&s, "cloudreve://my/v.bin", b"first");
    let before = info(&s, "cloudreve://my/v.bin")["data"].clone();
    let r = create_session(&s, json!({"uri": "cloudreve://my/v.bin", "size": 6}));
    assert_eq!(code(&r), 40004);
    assert_eq!(r["msg"], "Object existed");
    let r = create_session(
        &s,
        json!({"uri": "cloudreve://my/v.bin", "size": 6, "entity_type": "version"}),
    );
    assert_eq!(code(&r), 0, "{r}");
    let sid = r["data"]["session_id"].as_str().unwrap().to_string();
    // A version session shows no second entry; the old file stays listed meanwhile.
    assert_eq!(names(&list(&s, "cloudreve://my", &[])), vec!["v.bin"]);
    assert_eq!(code(&chunk(&s, &sid, 0, b"second")), 0);
    let after = info(&s, "cloudreve://my/v.bin")["data"].clone();
    assert_eq!(after["id"], before["id"], "same file id");
    assert_ne!(
        after["primary_entity"], before["primary_entity"],
        "new entity"
    );
    assert_eq!(after["size"], 6);
    assert_eq!(
        s.files("cloudreve"),
        vec![("v.bin".into(), 6, sha1_hex(b"second"))]
    );
    // An unknown entity_type and a foreign policy are refused.
    let r = create_session(
        &s,
        json!({"uri": "cloudreve://my/w.bin", "size": 1, "entity_type": "bogus"}),
    );
    assert_eq!(code(&r), 40001);
    let r = create_session(
        &s,
        json!({"uri": "cloudreve://my/w.bin", "size": 1, "policy_id": "zzzz"}),
    );
    assert_eq!(code(&r), 40006);
    let r = call(&s, reqwest::Method::PUT, "/file/upload", None);
    assert_eq!(code(&r), 40001, "no body: {r}");
}

#[test]
fn file_too_large_is_40049() {
    let s = server();
    s.control(json!({"max_file_size": 1000}));
    let r = create_session(&s, json!({"uri": "cloudreve://my/big.bin", "size": 1001}));
    assert_eq!(code(&r), 40049, "{r}");
    assert_eq!(
        code(&put_content(&s, "cloudreve://my/big.bin", &[0u8; 1001])),
        40049
    );
    assert_eq!(
        code(&put_content(&s, "cloudreve://my/ok.bin", &[0u8; 1000])),
        0
    );
    assert_eq!(open_sessions(&s), 0);
}

#[test]
fn put_content_creates_and_overwrites() {
    let s = server();
    let r = put_content(&s, "cloudreve://my/docs/a%20b.txt", b"one");
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(r["data"]["name"], "a b.txt");
    assert_eq!(r["data"]["path"], "cloudreve://my/docs/a%20b.txt");
    let id = r["data"]["id"].clone();
    let r = put_content(&s, "cloudreve://my/docs/a%20b.txt", b"two!");
    assert_eq!(r["data"]["id"], id, "overwrite keeps the file");
    assert_eq!(r["data"]["size"], 4);
    assert_eq!(
        s.files("cloudreve"),
        vec![("a b.txt".into(), 4, sha1_hex(b"two!"))]
    );
    let r = send(
        &s,
        client()
            .put(api(&s, "/file/content"))
            .bearer_auth(TOKEN)
            .body("x"),
    );
    assert_eq!(code(&r), 40001, "uri required: {r}");
    // Over a folder: conflict.
    assert_eq!(code(&put_content(&s, "cloudreve://my/docs", b"x")), 40004);
}

#[test]
fn faults_are_http_statuses_or_dropped_connections() {
    let s = server();
    let sid = new_session(&s, "cloudreve://my/f.bin", 10);
    s.control(json!({"fail_rate": 1.0}));
    let mut seen = Vec::new();
    for _ in 0..12 {
        let r = s.rt.block_on(async {
            client()
                .post(api(&s, &format!("/file/upload/{sid}/0")))
                .bearer_auth(TOKEN)
                .header("content-length", 10)
                .body(vec![1u8; 10])
                .send()
                .await
        });
        match r {
            Ok(r) => {
                let st = r.status().as_u16();
                assert!(st == 503 || st == 429, "fault status {st}");
                assert!(r.headers().contains_key("retry-after"));
                seen.push(st);
            }
            Err(_) => seen.push(0),
        }
        // A fault on the completing chunk may have completed the upload (drop after).
        if !s.files("cloudreve").is_empty() {
            break;
        }
    }
    assert!(!seen.is_empty());
    let put = s.rt.block_on(async {
        client()
            .put(api(&s, "/file/content"))
            .query(&[("uri", "cloudreve://my/g.bin")])
            .bearer_auth(TOKEN)
            .header("content-length", 1)
            .body("x")
            .send()
            .await
    });
    assert!(
        put.map(|r| r.status() != 200).unwrap_or(true),
        "file/content faulted"
    );
    s.control(json!({"fail_rate": 0.0}));
    if s.files("cloudreve").iter().all(|f| f.0 != "f.bin") {
        assert_eq!(code(&chunk(&s, &sid, 0, &[1u8; 10])), 0);
    }
    let url = signed_url(&s, "cloudreve://my/f.bin");
    s.control(json!({"fail_rate": 1.0}));
    let r = s.rt.block_on(async { client().get(&url).send().await });
    assert!(r
        .map(|r| r.status() == 503 || r.status() == 429)
        .unwrap_or(true));
    s.control(json!({"fail_rate": 0.0}));
    assert_eq!(get(&s, &url, None).2, vec![1u8; 10]);
    assert!(s.state()["faults_injected"].as_u64().unwrap() >= 3);
}

#[test]
fn files_survive_a_restart_sessions_do_not() {
    let mut s = server();
    put_content(&s, "cloudreve://my/keep/k.bin", b"kept");
    let sid = new_session(&s, "cloudreve://my/pending.bin", 10);
    let old = s.server.take().unwrap();
    s.rt.block_on(old.stop());
    let mut opts = ServeOptions::ephemeral(s.dir.path().join("data"), TOKEN);
    opts.cloudreve_chunk_size = MIB as u64;
    let new = s.rt.block_on(uploadfs::server::start(opts)).unwrap();
    s.base = new.base_url();
    s.server = Some(new);
    assert_eq!(names(&list(&s, "cloudreve://my/keep", &[])), vec!["k.bin"]);
    assert_eq!(
        get(&s, &signed_url(&s, "cloudreve://my/keep/k.bin"), None).2,
        b"kept"
    );
    assert_eq!(code(&chunk(&s, &sid, 0, &[0u8; 10])), 40011);
    assert_eq!(names(&list(&s, "cloudreve://my", &[])), vec!["keep"]);
}
