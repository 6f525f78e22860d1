//! The Cloudreve v4 emulation over raw HTTP: every endpoint and every rule, checked by the
//! envelope `code` (always HTTP 200) — auth, session creation and its placeholder, chunk
//! order and length rules, automatic completion, cancel, versions, small-file writes,
//! signed content URLs (real HTTP statuses there), listing pages, delete/create/rename/
//! move, name and size limits, injected faults, and durability across a restart. The
//! client is exercised at the end: a failed upload leaves no placeholder behind, listings
//! skip placeholders and page through large folders.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;

use common::{pattern, sha1_hex, TestServer, TOKEN};
use serde_json::{json, Value};
use uploadfs::config::TargetKind;
use uploadfs::remote::{ByteCounter, Digests, ErrorKind, PartSource, UploadRequest};
use uploadfs::server::ServeOptions;

const MIB: usize = 1024 * 1024;

fn server() -> TestServer {
    TestServer::start(|o| o.cloudreve_chunk_size = MIB as u64)
}

fn api(s: &TestServer, path: &str) -> String {
    s.url(&format!("/cloudreve/api/v4{path}"))
}

/// Send a request; the envelope endpoints always answer HTTP 200 with JSON.
fn send(s: &TestServer, rb: reqwest::RequestBuilder) -> Value {
    s.rt.block_on(async {
        let r = rb.send().await.expect("request");
        assert_eq!(r.status(), 200, "envelope answers are HTTP 200");
        r.json::<Value>().await.expect("json envelope")
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn call(s: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut rb = client().request(method, api(s, path)).bearer_auth(TOKEN);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    send(s, rb)
}

fn code(v: &Value) -> i64 {
    v["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no code in {v}"))
}

fn put_content(s: &TestServer, uri: &str, data: &[u8]) -> Value {
    send(
        s,
        client()
            .put(api(s, "/file/content"))
            .query(&[("uri", uri)])
            .bearer_auth(TOKEN)
            .header("content-length", data.len())
            .body(data.to_vec()),
    )
}

fn create_session(s: &TestServer, body: Value) -> Value {
    call(s, reqwest::Method::PUT, "/file/upload", Some(body))
}

fn new_session(s: &TestServer, uri: &str, size: usize) -> String {
    let r = create_session(
        s,
        json!({"uri": uri, "size": size, "last_modified": 1_700_000_000_000i64, "mime_type": "application/octet-stream"}),
    );
    assert_eq!(code(&r), 0, "{r}");
    r["data"]["session_id"].as_str().unwrap().to_string()
}

fn chunk(s: &TestServer, sid: &str, index: u64, data: &[u8]) -> Value {
    send(
        s,
        client()
            .post(api(s, &format!("/file/upload/{sid}/{index}")))
            .bearer_auth(TOKEN)
            .header("content-type", "application/octet-stream")
            .header("content-length", data.len())
            .body(data.to_vec()),
    )
}

/// Upload `data` in 1 MiB chunks through a session.
fn upload(s: &TestServer, uri: &str, data: &[u8]) {
    let sid = new_session(s, uri, data.len());
    if data.is_empty() {
        assert_eq!(code(&chunk(s, &sid, 0, &[])), 0);
    }
    for (i, c) in data.chunks(MIB).enumerate() {
        let r = chunk(s, &sid, i as u64, c);
        assert_eq!(code(&r), 0, "chunk {i}: {r}");
    }
}

fn info(s: &TestServer, uri: &str) -> Value {
    send(
        s,
        client()
            .get(api(s, "/file/info"))
            .query(&[("uri", uri)])
            .bearer_auth(TOKEN),
    )
}

fn list(s: &TestServer, uri: &str, extra: &[(&str, &str)]) -> Value {
    let mut q = vec![("uri", uri)];
    q.extend_from_slice(extra);
    send(
        s,
        client().get(api(s, "/file")).query(&q).bearer_auth(TOKEN),
    )
}

fn names(listing: &Value) -> Vec<String> {
    listing["data"]["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

/// A signed URL for `uri`.
fn signed_url(s: &TestServer, uri: &str) -> String {
    let r = call(
        s,
        reqwest::Method::POST,
        "/file/url",
        Some(json!({"uris": [uri], "download": true})),
    );
    assert_eq!(code(&r), 0, "{r}");
    assert!(r["data"]["expires"].as_str().is_some(), "expires: {r}");
    r["data"]["urls"][0]["url"].as_str().unwrap().to_string()
}

fn get(
    s: &TestServer,
    url: &str,
    range: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    s.rt.block_on(async {
        let mut rb = client().get(url);
        if let Some(r) = range {
            rb = rb.header("range", r);
        }
        let r = rb.send().await.expect("get");
        let st = r.status().as_u16();
        let h = r.headers().clone();
        (st, h, r.bytes().await.expect("body").to_vec())
    })
}

fn open_sessions(s: &TestServer) -> u64 {
    s.state()["protocols"]["cloudreve"]["open_sessions"]
        .as_u64()
        .unwrap()
}

#[test]
fn every_endpoint_requires_login() {
    let s = server();
    use reqwest::Method as M;
    let cases: Vec<(M, &str, Option<Value>)> = vec![
        (M::GET, "/file?uri=cloudreve://my", None),
        (M::GET, "/file/info?uri=cloudreve://my/a", None),
        (
            M::PUT,
            "/file/upload",
            Some(json!({"uri": "cloudreve://my/a", "size": 1})),
        ),
        (
            M::DELETE,
            "/file/upload",
            Some(json!({"id": "x", "uri": "cloudreve://my/a"})),
        ),
        (M::POST, "/file/upload/x/0", None),
        (M::PUT, "/file/content?uri=cloudreve://my/a", None),
        (
            M::POST,
            "/file/url",
            Some(json!({"uris": ["cloudreve://my/a"]})),
        ),
        (
            M::DELETE,
            "/file",
            Some(json!({"uris": ["cloudreve://my/a"]})),
        ),
        (
            M::POST,
            "/file/create",
            Some(json!({"uri": "cloudreve://my/d", "type": "folder"})),
        ),
        (
            M::POST,
            "/file/rename",
            Some(json!({"uri": "cloudreve://my/a", "new_name": "b"})),
        ),
        (
            M::POST,
            "/file/move",
            Some(json!({"uris": ["cloudreve://my/a"], "dst": "cloudreve://my"})),
        ),
    ];
    for (m, path, body) in cases {
        for auth in [None, Some("wrong-token")] {
            let mut rb = client()
                .request(m.clone(), api(&s, path))
                .header("content-length", 0);
            if let Some(t) = auth {
                rb = rb.bearer_auth(t);
            }
            if let Some(b) = &body {
                rb = rb.json(b);
            }
            let r = send(&s, rb);
            assert_eq!(r["code"], 401, "{m} {path}: {r}");
            assert_eq!(r["msg"], "Login required", "{m} {path}");
        }
    }
    // Nothing was created by any of those.
    assert!(s.files("cloudreve").is_empty());
    assert_eq!(open_sessions(&s), 0);
}

#[test]
fn login_and_refresh_issue_the_token() {
    let s = server();
    let bad = send(
        &s,
        client()
            .post(api(&s, "/session/token"))
            .json(&json!({"email": "a@b.c", "password": "nope"})),
    );
    assert_eq!(code(&bad), 40020, "{bad}");
    let r = send(
        &s,
        client()
            .post(api(&s, "/session/token"))
            .json(&json!({"email": "a@b.c", "password": TOKEN})),
    );
    assert_eq!(code(&r), 0, "{r}");
    let access = r["data"]["token"]["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let refresh = r["data"]["token"]["refresh_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(r["data"]["token"]["access_expires"].as_str().is_some());
    assert_eq!(r["data"]["user"]["email"], "a@b.c");
    let l = send(
        &s,
        client()
            .get(api(&s, "/file"))
            .query(&[("uri", "cloudreve://my")])
            .bearer_auth(&access),
    );
    assert_eq!(code(&l), 0, "{l}");
    let rf = send(
        &s,
        client()
            .post(api(&s, "/session/token/refresh"))
            .json(&json!({"refresh_token": refresh})),
    );
    assert_eq!(code(&rf), 0, "{rf}");
    assert!(rf["data"]["access_token"].as_str().is_some());
    let rf = send(
        &s,
        client()
            .post(api(&s, "/session/token/refresh"))
            .json(&json!({"refresh_token": "bogus"})),
    );
    assert_eq!(code(&rf), 40020);
}

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
fn illegal_names_and_uris() {
    let s = server();
    let long = "x".repeat(256);
    for bad in [
        "cloudreve://my/a%2Fb",
        "cloudreve://my/a%5Cb",
        "cloudreve://my/a%00b",
        "cloudreve://my/..",
        "cloudreve://my/d/.",
        &format!("cloudreve://my/{long}"),
    ] {
        let r = create_session(&s, json!({"uri": bad, "size": 1}));
        assert_eq!(code(&r), 40052, "{bad}: {r}");
        assert_eq!(code(&put_content(&s, bad, b"x")), 40052, "{bad}");
        let r = call(
            &s,
            reqwest::Method::POST,
            "/file/create",
            Some(json!({"uri": bad, "type": "folder"})),
        );
        assert_eq!(code(&r), 40052, "{bad}");
    }
    // 255 bytes is fine.
    let ok_name = "y".repeat(255);
    assert_eq!(
        code(&put_content(&s, &format!("cloudreve://my/{ok_name}"), b"x")),
        0
    );
    upload(&s, "cloudreve://my/n.bin", b"n");
    for bad in ["", "a/b", "a\\b", "..", ".", "a\0b", long.as_str()] {
        let r = call(
            &s,
            reqwest::Method::POST,
            "/file/rename",
            Some(json!({"uri": "cloudreve://my/n.bin", "new_name": bad})),
        );
        assert_eq!(code(&r), 40052, "rename to {bad:?}: {r}");
    }
    for bad in ["cloudreve://trash/a", "/a", "cloudreve://myfiles"] {
        let r = create_session(&s, json!({"uri": bad, "size": 1}));
        assert_eq!(code(&r), 40001, "{bad}");
    }
    assert_eq!(s.files("cloudreve").len(), 2);
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
fn signed_urls_ranges_and_refusals() {
    let s = server();
    let data = pattern(100_000, 4);
    put_content(&s, "cloudreve://my/d.bin", &data);
    let url = signed_url(&s, "cloudreve://my/d.bin");
    assert!(url.starts_with(&s.base), "absolute URL: {url}");
    assert!(url.contains("/cloudreve/api/v4/file/content/"), "{url}");
    let (st, h, body) = get(&s, &url, None);
    assert_eq!(st, 200);
    assert_eq!(body, data);
    assert_eq!(h["accept-ranges"], "bytes");
    let (st, h, body) = get(&s, &url, Some("bytes=10-19"));
    assert_eq!(st, 206);
    assert_eq!(h["content-range"], "bytes 10-19/100000");
    assert_eq!(body, data[10..20]);
    let (st, _, _) = get(&s, &url, Some("bytes=100000-"));
    assert_eq!(st, 416);
    // A tampered or expired sign is refused.
    let (base, sign) = url.split_once("sign=").unwrap();
    let (mac, exp) = sign.split_once(':').unwrap();
    let bad_mac = format!("{base}sign={}A:{exp}", &mac[..mac.len() - 1]);
    let (st, _, body) = get(&s, &bad_mac, None);
    assert_eq!(st, 403);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["code"], 40071);
    let later = exp.parse::<i64>().unwrap() + 10;
    let (st, _, _) = get(&s, &format!("{base}sign={mac}:{later}"), None);
    assert_eq!(st, 403, "expiry is covered by the sign");
    let (st, _, _) = get(&s, base.trim_end_matches(['?', '&']), None);
    assert_eq!(st, 403, "no sign");
    // Folders and missing files have no URL.
    put_content(&s, "cloudreve://my/f/x", b"x");
    let r = call(
        &s,
        reqwest::Method::POST,
        "/file/url",
        Some(json!({"uris": ["cloudreve://my/f"]})),
    );
    assert_ne!(code(&r), 0);
    let r = call(
        &s,
        reqwest::Method::POST,
        "/file/url",
        Some(json!({"uris": ["cloudreve://my/nope"]})),
    );
    assert_eq!(code(&r), 40016);
    // After the content changes, the old URL no longer serves (its entity is gone).
    put_content(&s, "cloudreve://my/d.bin", b"new");
    let (st, _, _) = get(&s, &url, None);
    assert_eq!(st, 404);
}

#[test]
fn listing_pages_with_next_token() {
    let s = server();
    for i in 0..25 {
        put_content(&s, &format!("cloudreve://my/f{i:02}.txt"), b"x");
    }
    call(
        &s,
        reqwest::Method::POST,
        "/file/create",
        Some(json!({"uri": "cloudreve://my/zdir", "type": "folder"})),
    );
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut q = vec![("page_size", "10")];
        if let Some(t) = &token {
            q.push(("next_page_token", t.as_str()));
        }
        let l = list(&s, "cloudreve://my", &q);
        assert_eq!(code(&l), 0, "{l}");
        assert_eq!(l["data"]["storage_policy"]["type"], "local");
        assert_eq!(l["data"]["props"]["max_page_size"], 2000);
        assert_eq!(l["data"]["parent"]["path"], "cloudreve://my");
        all.extend(names(&l));
        pages += 1;
        match l["data"]["pagination"]["next_token"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(all.len(), 26);
    assert_eq!(all[0], "zdir", "folders first");
    let mut sorted = all[1..].to_vec();
    sorted.sort();
    assert_eq!(all[1..], sorted[..]);
    // page numbers work too; a bad token is a parameter error.
    let l = list(&s, "cloudreve://my", &[("page", "2"), ("page_size", "10")]);
    assert_eq!(names(&l).len(), 6);
    let l = list(&s, "cloudreve://my", &[("next_page_token", "garbage!")]);
    assert_eq!(code(&l), 40001);
    let f = &list(&s, "cloudreve://my", &[])["data"]["files"][1];
    assert_eq!(f["type"], 0);
    assert!(f["id"].as_str().is_some_and(|i| !i.is_empty()));
    assert!(chrono::DateTime::parse_from_rfc3339(f["created_at"].as_str().unwrap()).is_ok());
    assert_eq!(f["path"], "cloudreve://my/f00.txt");
    assert_eq!(code(&list(&s, "cloudreve://my/missing", &[])), 40016);
    assert_eq!(code(&list(&s, "cloudreve://my/f00.txt", &[])), 40016);
}

#[test]
fn delete_create_rename_move() {
    let s = server();
    use reqwest::Method as M;
    // create: parents too; existing folder returns itself unless err_on_conflict.
    let r = call(
        &s,
        M::POST,
        "/file/create",
        Some(json!({"uri": "cloudreve://my/a/b", "type": "folder"})),
    );
    assert_eq!(code(&r), 0, "{r}");
    assert_eq!(r["data"]["type"], 1);
    let id = r["data"]["id"].clone();
    let r = call(
        &s,
        M::POST,
        "/file/create",
        Some(json!({"uri": "cloudreve://my/a/b", "type": "folder"})),
    );
    assert_eq!(r["data"]["id"], id);
    let r = call(
        &s,
        M::POST,
        "/file/create",
        Some(json!({"uri": "cloudreve://my/a/b", "type": "folder", "err_on_conflict": true})),
    );
    assert_eq!(code(&r), 40004);
    let r = call(
        &s,
        M::POST,
        "/file/create",
        Some(json!({"uri": "cloudreve://my/x", "type": "link"})),
    );
    assert_eq!(code(&r), 40001);
    put_content(&s, "cloudreve://my/a/b/f1", b"1");
    put_content(&s, "cloudreve://my/a/f2", b"22");
    put_content(&s, "cloudreve://my/f3", b"333");
    // rename: conflict, missing, success.
    let r = call(
        &s,
        M::POST,
        "/file/rename",
        Some(json!({"uri": "cloudreve://my/f3", "new_name": "a"})),
    );
    assert_eq!(code(&r), 40004);
    let r = call(
        &s,
        M::POST,
        "/file/rename",
        Some(json!({"uri": "cloudreve://my/nope", "new_name": "z"})),
    );
    assert_eq!(code(&r), 40016);
    let r = call(
        &s,
        M::POST,
        "/file/rename",
        Some(json!({"uri": "cloudreve://my/f3", "new_name": "f 3"})),
    );
    assert_eq!(code(&r), 0);
    assert_eq!(r["data"]["path"], "cloudreve://my/f%203");
    // move: into a folder; a folder into itself is refused; name clash is 40004.
    let r = call(
        &s,
        M::POST,
        "/file/move",
        Some(json!({"uris": ["cloudreve://my/f%203"], "dst": "cloudreve://my/a/b", "copy": false})),
    );
    assert_eq!(r, json!({"code": 0, "msg": ""}));
    assert_eq!(code(&info(&s, "cloudreve://my/a/b/f%203")), 0);
    let r = call(
        &s,
        M::POST,
        "/file/move",
        Some(json!({"uris": ["cloudreve://my/a"], "dst": "cloudreve://my/a/b"})),
    );
    assert_eq!(code(&r), 40001);
    let r = call(
        &s,
        M::POST,
        "/file/move",
        Some(json!({"uris": ["cloudreve://my/a/f2"], "dst": "cloudreve://my/nowhere"})),
    );
    assert_eq!(code(&r), 40016);
    put_content(&s, "cloudreve://my/f2", b"x");
    let r = call(
        &s,
        M::POST,
        "/file/move",
        Some(json!({"uris": ["cloudreve://my/f2"], "dst": "cloudreve://my/a"})),
    );
    assert_eq!(code(&r), 40004);
    // copy shares the content.
    let r = call(
        &s,
        M::POST,
        "/file/move",
        Some(json!({"uris": ["cloudreve://my/a/f2"], "dst": "cloudreve://my/a/b", "copy": true})),
    );
    assert_eq!(code(&r), 0);
    let url = signed_url(&s, "cloudreve://my/a/b/f2");
    assert_eq!(get(&s, &url, None).2, b"22");
    // delete: missing; batch with a failure; folders recursively.
    let r = call(
        &s,
        M::DELETE,
        "/file",
        Some(json!({"uris": ["cloudreve://my/nope"]})),
    );
    assert_eq!(code(&r), 40016);
    let r = call(
        &s,
        M::DELETE,
        "/file",
        Some(
            json!({"uris": ["cloudreve://my/f2", "cloudreve://my/nope"], "unlink": false, "skip_soft_delete": true}),
        ),
    );
    assert_eq!(code(&r), 40081);
    assert!(
        r["aggregated_error"]["cloudreve://my/nope"].is_object(),
        "{r}"
    );
    let r = call(
        &s,
        M::DELETE,
        "/file",
        Some(json!({"uris": ["cloudreve://my/a"]})),
    );
    assert_eq!(r, json!({"code": 0, "msg": ""}));
    let st = s.state();
    assert_eq!(st["protocols"]["cloudreve"]["files"], json!([]), "{st}");
    assert_eq!(st["protocols"]["cloudreve"]["folders"], json!([]), "{st}");
    let r = call(
        &s,
        M::DELETE,
        "/file",
        Some(json!({"uris": ["cloudreve://my"]})),
    );
    assert_eq!(code(&r), 40001);
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
