//! The Box emulation of `uploadfs serve`, driven with raw HTTP: every endpoint, and every
//! rule with the rejection it produces (status and Box ClientError `code`).

mod common;

use base64::Engine as _;
use common::{pattern, sha1_hex, TestServer, TOKEN};
use reqwest::{Client, Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

/// Smallest size an upload session accepts.
const MIN_SESSION: usize = 20_000_000;
const MIB: u64 = 1024 * 1024;

fn client() -> Client {
    // Redirects are inspected by hand.
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn api(s: &TestServer, path: &str) -> String {
    s.url(&format!("/box/2.0{path}"))
}

fn up(s: &TestServer, path: &str) -> String {
    s.url(&format!("/box/upload/2.0{path}"))
}

/// Send, return status, headers and the body as JSON (Null when empty or not JSON).
fn send(s: &TestServer, rb: RequestBuilder) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    s.rt.block_on(async {
        let r = rb.send().await.expect("request");
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("body");
        (
            status,
            headers,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    })
}

fn call(_s: &TestServer, m: Method, url: &str) -> RequestBuilder {
    client().request(m, url).bearer_auth(TOKEN)
}

/// Assert a Box ClientError with `status` and `code`; returns the body.
fn assert_error(
    got: (StatusCode, reqwest::header::HeaderMap, Value),
    status: u16,
    code: &str,
) -> Value {
    let (st, _, body) = got;
    assert_eq!(st.as_u16(), status, "status; body: {body}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert!(body["help_url"].is_string(), "{body}");
    assert!(body["request_id"].is_string(), "{body}");
    body
}

fn attributes_form(attrs: Value, data: &[u8]) -> reqwest::multipart::Form {
    reqwest::multipart::Form::new()
        .text("attributes", attrs.to_string())
        .part(
            "file",
            reqwest::multipart::Part::bytes(data.to_vec()).file_name("f"),
        )
}

fn upload_raw(
    s: &TestServer,
    parent: &str,
    name: &str,
    data: &[u8],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let form = attributes_form(json!({"name": name, "parent": {"id": parent}}), data);
    send(
        s,
        call(s, Method::POST, &up(s, "/files/content")).multipart(form),
    )
}

/// Upload a small file; returns its File--Full.
fn upload(s: &TestServer, parent: &str, name: &str, data: &[u8]) -> Value {
    let (st, _, body) = upload_raw(s, parent, name, data);
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["total_count"], 1);
    body["entries"][0].clone()
}

fn mkdir(s: &TestServer, parent: &str, name: &str) -> Value {
    let (st, _, body) = send(
        s,
        call(s, Method::POST, &api(s, "/folders"))
            .json(&json!({"name": name, "parent": {"id": parent}})),
    );
    assert_eq!(st, 201, "{body}");
    body
}

fn create_session(s: &TestServer, name: &str, size: usize) -> Value {
    let (st, _, body) = send(
        s,
        call(s, Method::POST, &up(s, "/files/upload_sessions"))
            .json(&json!({"folder_id": "0", "file_size": size, "file_name": name})),
    );
    assert_eq!(st, 201, "{body}");
    body
}

fn digest_of(data: &[u8]) -> String {
    use sha1::Digest;
    format!(
        "sha={}",
        base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(data))
    )
}

fn put_part_raw(
    s: &TestServer,
    session: &Value,
    offset: usize,
    data: &[u8],
    total: usize,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let url = session["session_endpoints"]["upload_part"]
        .as_str()
        .unwrap();
    send(
        s,
        call(s, Method::PUT, url)
            .header("digest", digest_of(data))
            .header(
                "content-range",
                format!("bytes {}-{}/{}", offset, offset + data.len() - 1, total),
            )
            .body(data.to_vec()),
    )
}

/// Upload every part of `data` to `session`; returns the parts as answered.
fn put_all_parts(s: &TestServer, session: &Value, data: &[u8]) -> Vec<Value> {
    let ps = session["part_size"].as_u64().unwrap() as usize;
    let mut parts = Vec::new();
    for off in (0..data.len()).step_by(ps) {
        let chunk = &data[off..(off + ps).min(data.len())];
        let (st, _, body) = put_part_raw(s, session, off, chunk, data.len());
        assert_eq!(st, 200, "{body}");
        assert_eq!(body["part"]["offset"], off);
        assert_eq!(body["part"]["size"], chunk.len());
        assert_eq!(body["part"]["sha1"], sha1_hex(chunk));
        parts.push(body["part"].clone());
    }
    parts
}

fn commit_raw(
    s: &TestServer,
    session: &Value,
    parts: &[Value],
    digest: &str,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let url = session["session_endpoints"]["commit"].as_str().unwrap();
    send(
        s,
        call(s, Method::POST, url).header("digest", digest).json(
            &json!({"parts": parts, "attributes": {"content_modified_at": "2024-01-02T03:04:05Z"}}),
        ),
    )
}

/// Follow `GET /files/{id}/content` by hand: 302, then the signed link.
fn download(s: &TestServer, id: &str, range: Option<&str>) -> (StatusCode, Vec<u8>) {
    let (st, h, _) = send(
        s,
        call(s, Method::GET, &api(s, &format!("/files/{id}/content"))),
    );
    assert_eq!(st, 302);
    let loc = h["location"].to_str().unwrap().to_string();
    assert!(
        loc.starts_with(&s.base),
        "absolute link on this server: {loc}"
    );
    s.rt.block_on(async {
        // The link needs no token, like Box's download host.
        let mut rb = client().get(&loc);
        if let Some(r) = range {
            rb = rb.header("range", r);
        }
        let r = rb.send().await.unwrap();
        (r.status(), r.bytes().await.unwrap().to_vec())
    })
}

fn open_sessions(s: &TestServer) -> u64 {
    s.state()["protocols"]["box"]["open_sessions"]
        .as_u64()
        .unwrap()
}

// ---------------------------------------------------------------------------------------

#[test]
fn every_endpoint_requires_the_token() {
    let s = TestServer::new();
    let f = upload(&s, "0", "a.txt", b"hello");
    let id = f["id"].as_str().unwrap();
    let sess = create_session(&s, "big.bin", MIN_SESSION);
    let sid = sess["id"].as_str().unwrap();
    let endpoints: Vec<(Method, String)> = vec![
        (Method::POST, up(&s, "/files/content")),
        (Method::POST, up(&s, &format!("/files/{id}/content"))),
        (Method::OPTIONS, up(&s, "/files/content")),
        (Method::OPTIONS, api(&s, "/files/content")),
        (Method::POST, up(&s, "/files/upload_sessions")),
        (
            Method::POST,
            up(&s, &format!("/files/{id}/upload_sessions")),
        ),
        (
            Method::GET,
            up(&s, &format!("/files/upload_sessions/{sid}")),
        ),
        (
            Method::PUT,
            up(&s, &format!("/files/upload_sessions/{sid}")),
        ),
        (
            Method::DELETE,
            up(&s, &format!("/files/upload_sessions/{sid}")),
        ),
        (
            Method::GET,
            up(&s, &format!("/files/upload_sessions/{sid}/parts")),
        ),
        (
            Method::POST,
            up(&s, &format!("/files/upload_sessions/{sid}/commit")),
        ),
        (Method::GET, api(&s, &format!("/files/{id}"))),
        (Method::PUT, api(&s, &format!("/files/{id}"))),
        (Method::DELETE, api(&s, &format!("/files/{id}"))),
        (Method::GET, api(&s, &format!("/files/{id}/content"))),
        (Method::GET, api(&s, "/folders/0")),
        (Method::GET, api(&s, "/folders/0/items")),
        (Method::POST, api(&s, "/folders")),
        (Method::PUT, api(&s, "/folders/0")),
        (Method::DELETE, api(&s, "/folders/0")),
    ];
    for (m, url) in endpoints {
        for auth in [None, Some("wrong-token")] {
            let mut rb = client().request(m.clone(), &url);
            if let Some(t) = auth {
                rb = rb.bearer_auth(t);
            }
            let got = send(&s, rb);
            assert!(got.1.contains_key("www-authenticate"), "{m} {url}");
            assert_error(got, 401, "unauthorized");
        }
    }
    // Nothing was changed by the refused calls.
    assert_eq!(s.files("box").len(), 1);
    assert_eq!(open_sessions(&s), 1);
}

#[test]
fn direct_upload_file_info_and_download_with_ranges() {
    let s = TestServer::new();
    let data = pattern(100_000, 1);
    let form = attributes_form(
        json!({"name": "doc.bin", "parent": {"id": "0"}, "content_modified_at": "2020-05-06T07:08:09Z"}),
        &data,
    );
    let (st, _, body) = send(
        &s,
        call(&s, Method::POST, &up(&s, "/files/content"))
            .header("content-md5", sha1_hex(&data))
            .multipart(form),
    );
    assert_eq!(st, 201, "{body}");
    let f = &body["entries"][0];
    for key in [
        "id",
        "type",
        "etag",
        "sequence_id",
        "name",
        "sha1",
        "file_version",
        "size",
        "parent",
        "path_collection",
        "created_at",
        "modified_at",
        "content_created_at",
        "content_modified_at",
        "item_status",
    ] {
        assert!(!f[key].is_null(), "File--Full has {key}: {f}");
    }
    assert_eq!(f["type"], "file");
    assert_eq!(f["sha1"], sha1_hex(&data));
    assert_eq!(f["file_version"]["sha1"], sha1_hex(&data));
    assert_eq!(f["file_version"]["type"], "file_version");
    assert_eq!(f["size"], data.len());
    assert_eq!(f["parent"]["id"], "0");
    assert_eq!(f["path_collection"]["entries"][0]["id"], "0");
    assert_eq!(f["item_status"], "active");
    assert!(f["content_modified_at"]
        .as_str()
        .unwrap()
        .starts_with("2020-05-06T07:08:09"));
    let id = f["id"].as_str().unwrap();
    assert!(id.chars().all(|c| c.is_ascii_digit()), "numeric id {id}");

    let (st, _, info) = send(&s, call(&s, Method::GET, &api(&s, &format!("/files/{id}"))));
    assert_eq!(st, 200);
    assert_eq!(info["sha1"], sha1_hex(&data));

    let (st, got) = download(&s, id, None);
    assert_eq!(st, 200);
    assert_eq!(got, data);
    let (st, got) = download(&s, id, Some("bytes=10-19"));
    assert_eq!(st, 206);
    assert_eq!(got, &data[10..20]);
    let (st, _) = download(&s, id, Some("bytes=100000-"));
    assert_eq!(st, 416);
    assert_eq!(
        s.files("box"),
        vec![("doc.bin".to_string(), 100_000, sha1_hex(&data))]
    );
}

#[test]
fn download_link_with_bad_signature_is_refused() {
    let s = TestServer::new();
    let f = upload(&s, "0", "x.bin", b"abc");
    let (_, h, _) = send(
        &s,
        call(
            &s,
            Method::GET,
            &api(&s, &format!("/files/{}/content", f["id"].as_str().unwrap())),
        ),
    );
    let loc = h["location"].to_str().unwrap();
    // Change the last signature character to a different one (a fixed "0" would leave a
    // signature ending in "0" intact).
    let last = if loc.ends_with('0') { '1' } else { '0' };
    let forged = format!("{}{last}", &loc[..loc.len() - 1]);
    assert_error(send(&s, client().get(forged)), 403, "forbidden");
}

#[test]
fn content_md5_mismatch_is_bad_digest() {
    let s = TestServer::new();
    let form = attributes_form(json!({"name": "a", "parent": {"id": "0"}}), b"data");
    assert_error(
        send(
            &s,
            call(&s, Method::POST, &up(&s, "/files/content"))
                .header("content-md5", sha1_hex(b"other"))
                .multipart(form),
        ),
        400,
        "bad_digest",
    );
    assert!(s.files("box").is_empty());
}

#[test]
fn attributes_after_file_is_refused() {
    let s = TestServer::new();
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"abc".to_vec()).file_name("f"),
        )
        .text(
            "attributes",
            json!({"name": "a", "parent": {"id": "0"}}).to_string(),
        );
    assert_error(
        send(
            &s,
            call(&s, Method::POST, &up(&s, "/files/content")).multipart(form),
        ),
        400,
        "metadata_after_file_contents",
    );
    assert!(s.files("box").is_empty());
}

#[test]
fn invalid_names_are_refused_everywhere() {
    let s = TestServer::new();
    let long = "x".repeat(256);
    let f = upload(&s, "0", "ok.txt", b"1");
    let fid = f["id"].as_str().unwrap().to_string();
    for bad in [
        "",
        "a/b",
        "a\\b",
        ".",
        "..",
        long.as_str(),
        "tab\there",
        " lead",
        "trail ",
    ] {
        assert_error(upload_raw(&s, "0", bad, b"x"), 400, "item_name_invalid");
        assert_error(
            send(
                &s,
                call(&s, Method::POST, &api(&s, "/folders"))
                    .json(&json!({"name": bad, "parent": {"id": "0"}})),
            ),
            400,
            "item_name_invalid",
        );
        assert_error(
            send(
                &s,
                call(&s, Method::PUT, &api(&s, &format!("/files/{fid}")))
                    .json(&json!({"name": bad})),
            ),
            400,
            "item_name_invalid",
        );
        assert_error(
            send(
                &s,
                call(&s, Method::POST, &up(&s, "/files/upload_sessions"))
                    .json(&json!({"folder_id": "0", "file_size": MIN_SESSION, "file_name": bad})),
            ),
            400,
            "item_name_invalid",
        );
    }
    // 255 bytes is fine.
    upload(&s, "0", &"y".repeat(255), b"1");
    assert_eq!(s.files("box").len(), 2);
    assert_eq!(open_sessions(&s), 0);
}

#[test]
fn name_conflicts_are_case_insensitive_and_name_the_conflict() {
    let s = TestServer::new();
    let a = upload(&s, "0", "Report.PDF", b"1");
    let aid = a["id"].as_str().unwrap();
    let body = assert_error(
        upload_raw(&s, "0", "report.pdf", b"2"),
        409,
        "item_name_in_use",
    );
    assert_eq!(body["context_info"]["conflicts"]["id"], aid, "{body}");
    assert_eq!(body["context_info"]["conflicts"]["type"], "file");
    assert_eq!(body["context_info"]["conflicts"]["name"], "Report.PDF");
    // Session, folder creation and rename meet the same rule.
    let body = assert_error(
        send(
            &s,
            call(&s, Method::POST, &up(&s, "/files/upload_sessions")).json(
                &json!({"folder_id": "0", "file_size": MIN_SESSION, "file_name": "REPORT.pdf"}),
            ),
        ),
        409,
        "item_name_in_use",
    );
    assert_eq!(body["context_info"]["conflicts"]["id"], aid);
    let body = assert_error(
        send(
            &s,
            call(&s, Method::POST, &api(&s, "/folders"))
                .json(&json!({"name": "report.PDF", "parent": {"id": "0"}})),
        ),
        409,
        "item_name_in_use",
    );
    assert_eq!(body["context_info"]["conflicts"][0]["id"], aid, "{body}");
    let b = upload(&s, "0", "other.txt", b"3");
    assert_error(
        send(
            &s,
            call(
                &s,
                Method::PUT,
                &api(&s, &format!("/files/{}", b["id"].as_str().unwrap())),
            )
            .json(&json!({"name": "rEpOrT.pdf"})),
        ),
        409,
        "item_name_in_use",
    );
    // The pre-flight check answers the same.
    assert_error(
        send(
            &s,
            call(&s, Method::OPTIONS, &api(&s, "/files/content"))
                .json(&json!({"name": "report.pdf", "parent": {"id": "0"}, "size": 5})),
        ),
        409,
        "item_name_in_use",
    );
    let (st, _, pre) = send(
        &s,
        call(&s, Method::OPTIONS, &up(&s, "/files/content"))
            .json(&json!({"name": "fresh.pdf", "parent": {"id": "0"}, "size": 5})),
    );
    assert_eq!(st, 200, "{pre}");
    assert!(pre["upload_url"].as_str().unwrap().starts_with(&s.base));
    // Renaming a file to a case variant of its own name is allowed.
    let (st, _, r) = send(
        &s,
        call(&s, Method::PUT, &api(&s, &format!("/files/{aid}")))
            .json(&json!({"name": "report.pdf"})),
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(s.files("box").len(), 2);
}

#[test]
fn new_version_keeps_the_id_and_moves_etag_and_version() {
    let s = TestServer::new();
    let a = upload(&s, "0", "v.txt", b"one");
    let id = a["id"].as_str().unwrap();
    let form = attributes_form(json!({"name": "v.txt"}), b"second version");
    let (st, _, body) = send(
        &s,
        call(&s, Method::POST, &up(&s, &format!("/files/{id}/content"))).multipart(form),
    );
    assert_eq!(st, 201, "{body}");
    let b = &body["entries"][0];
    assert_eq!(b["id"], id);
    assert_eq!(b["sha1"], sha1_hex(b"second version"));
    assert_ne!(b["etag"], a["etag"]);
    assert_ne!(b["sequence_id"], a["sequence_id"]);
    assert_ne!(b["file_version"]["id"], a["file_version"]["id"]);
    assert_eq!(download(&s, id, None).1, b"second version");
    // If-Match with a stale etag is refused.
    let form = attributes_form(json!({}), b"third");
    assert_error(
        send(
            &s,
            call(&s, Method::POST, &up(&s, &format!("/files/{id}/content")))
                .header("if-match", a["etag"].as_str().unwrap())
                .multipart(form),
        ),
        412,
        "precondition_failed",
    );
    assert_eq!(s.files("box").len(), 1);
}

#[test]
fn sessions_below_20_000_000_bytes_are_refused() {
    let s = TestServer::new();
    assert_error(
        send(
            &s,
            call(&s, Method::POST, &up(&s, "/files/upload_sessions")).json(
                &json!({"folder_id": "0", "file_size": MIN_SESSION - 1, "file_name": "s.bin"}),
            ),
        ),
        400,
        "file_size_too_small",
    );
    assert_eq!(open_sessions(&s), 0);
}

#[test]
fn session_create_requires_its_fields() {
    let s = TestServer::new();
    for (body, code) in [
        (
            json!({"file_size": MIN_SESSION, "file_name": "a"}),
            "missing_destination",
        ),
        (
            json!({"folder_id": 0, "file_size": MIN_SESSION, "file_name": "a"}),
            "invalid_folder_id",
        ),
        (
            json!({"folder_id": "0", "file_name": "a"}),
            "missing_file_size",
        ),
        (
            json!({"folder_id": "0", "file_size": -5, "file_name": "a"}),
            "invalid_file_size",
        ),
        (
            json!({"folder_id": "0", "file_size": MIN_SESSION}),
            "missing_file_name",
        ),
    ] {
        assert_error(
            send(
                &s,
                call(&s, Method::POST, &up(&s, "/files/upload_sessions")).json(&body),
            ),
            400,
            code,
        );
    }
    assert_error(
        send(
            &s,
            call(&s, Method::POST, &up(&s, "/files/upload_sessions"))
                .json(&json!({"folder_id": "424242", "file_size": MIN_SESSION, "file_name": "a"})),
        ),
        404,
        "not_found",
    );
}

#[test]
fn files_over_the_size_limit_are_refused() {
    let s = TestServer::start(|o| o.max_file_size = 30_000_000);
    assert_error(
        send(
            &s,
            call(&s, Method::POST, &up(&s, "/files/upload_sessions"))
                .json(&json!({"folder_id": "0", "file_size": 30_000_001u64, "file_name": "big"})),
        ),
        403,
        "file_size_limit_exceeded",
    );
    s.control(json!({"max_file_size": 1000}));
    assert_error(
        upload_raw(&s, "0", "small-but-over.bin", &pattern(5000, 2)),
        403,
        "file_size_limit_exceeded",
    );
    assert_error(
        send(
            &s,
            call(&s, Method::OPTIONS, &up(&s, "/files/content"))
                .json(&json!({"name": "p", "parent": {"id": "0"}, "size": 1001})),
        ),
        403,
        "file_size_limit_exceeded",
    );
    assert!(s.files("box").is_empty());
    assert_eq!(open_sessions(&s), 0);
}

#[test]
fn session_upload_lists_parts_and_commits() {
    let s = TestServer::new();
    let data = pattern(MIN_SESSION + 5, 3);
    let sess = create_session(&s, "big.bin", data.len());
    assert_eq!(sess["type"], "upload_session");
    assert_eq!(sess["part_size"], 8 * MIB);
    assert_eq!(sess["total_parts"], 3);
    assert_eq!(sess["num_parts_processed"], 0);
    assert!(sess["session_expires_at"].is_string());
    let sid = sess["id"].as_str().unwrap();
    for key in [
        "upload_part",
        "commit",
        "abort",
        "list_parts",
        "status",
        "log_event",
    ] {
        let u = sess["session_endpoints"][key].as_str().unwrap();
        assert!(
            u.starts_with(&format!(
                "{}/box/upload/2.0/files/upload_sessions/{sid}",
                s.base
            )),
            "{key}: {u}"
        );
    }
    assert_eq!(open_sessions(&s), 1);
    let parts = put_all_parts(&s, &sess, &data);

    let (st, _, status) = send(
        &s,
        call(
            &s,
            Method::GET,
            sess["session_endpoints"]["status"].as_str().unwrap(),
        ),
    );
    assert_eq!(st, 200);
    assert_eq!(status["num_parts_processed"], 3);
    let list_url = sess["session_endpoints"]["list_parts"].as_str().unwrap();
    let (_, _, page) = send(
        &s,
        call(&s, Method::GET, list_url).query(&[("offset", "1"), ("limit", "1")]),
    );
    assert_eq!(page["total_count"], 3);
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    assert_eq!(page["entries"][0], parts[1]);
    let (_, _, page) = send(
        &s,
        call(&s, Method::GET, list_url).query(&[("limit", "5000")]),
    );
    assert_eq!(page["limit"], 1000, "limit capped");
    assert_eq!(page["entries"].as_array().unwrap().len(), 3);
    assert_error(
        send(
            &s,
            call(&s, Method::GET, list_url).query(&[("offset", "10001")]),
        ),
        400,
        "bad_request",
    );
    // Not listed before commit.
    assert!(s.files("box").is_empty());

    let (st, _, body) = commit_raw(&s, &sess, &parts, &digest_of(&data));
    assert_eq!(st, 201, "{body}");
    let f = &body["entries"][0];
    assert_eq!(f["size"], data.len());
    assert_eq!(f["sha1"], sha1_hex(&data));
    assert!(f["content_modified_at"]
        .as_str()
        .unwrap()
        .starts_with("2024-01-02T03:04:05"));
    assert_eq!(open_sessions(&s), 0);
    assert_eq!(
        s.files("box"),
        vec![("big.bin".to_string(), data.len() as u64, sha1_hex(&data))]
    );
    let (_, got) = download(&s, f["id"].as_str().unwrap(), Some("bytes=8388600-8388615"));
    assert_eq!(got, &data[8388600..8388616]);
    // A repeated commit (answer lost) returns the same file, nothing twice.
    let (st, _, again) = commit_raw(&s, &sess, &parts, &digest_of(&data));
    assert_eq!(st, 201);
    assert_eq!(again["entries"][0]["id"], f["id"]);
    assert_eq!(s.files("box").len(), 1);
    // The session is closed.
    assert_error(
        send(
            &s,
            call(
                &s,
                Method::GET,
                sess["session_endpoints"]["status"].as_str().unwrap(),
            ),
        ),
        404,
        "not_found",
    );
}

#[test]
fn part_content_range_rules() {
    let s = TestServer::new();
    let total = MIN_SESSION;
    let sess = create_session(&s, "r.bin", total);
    let url = sess["session_endpoints"]["upload_part"]
        .as_str()
        .unwrap()
        .to_string();
    let ps = 8 * MIB as usize;
    let part = pattern(ps, 4);
    let put = |range: Option<String>, body: &[u8]| {
        let mut rb = call(&s, Method::PUT, &url)
            .header("digest", digest_of(body))
            .body(body.to_vec());
        if let Some(r) = range {
            rb = rb.header("content-range", r);
        }
        send(&s, rb)
    };
    assert_error(put(None, &part), 416, "invalid_content_range");
    assert_error(
        put(Some("bytes=0-9".into()), &part[..10]),
        416,
        "invalid_content_range",
    );
    assert_error(
        put(Some(format!("bytes 0-{}/{}", ps - 1, total + 1)), &part),
        416,
        "content_range_total_mismatch",
    );
    assert_error(
        put(Some(format!("bytes 1-{}/{total}", ps)), &part),
        416,
        "unaligned_part_offset",
    );
    // Not exactly part_size (and not the last part).
    assert_error(
        put(Some(format!("bytes 0-{}/{total}", ps - 2)), &part[..ps - 1]),
        416,
        "invalid_part_size",
    );
    // The last part must end at the file's end.
    let last_off = 2 * ps;
    assert_error(
        put(
            Some(format!("bytes {last_off}-{}/{total}", total - 2)),
            &part[..total - last_off - 1],
        ),
        416,
        "invalid_part_size",
    );
    let (_, _, page) = send(
        &s,
        call(
            &s,
            Method::GET,
            sess["session_endpoints"]["list_parts"].as_str().unwrap(),
        ),
    );
    assert_eq!(page["total_count"], 0, "nothing stored: {page}");
}

#[test]
fn part_digest_is_required_and_verified() {
    let s = TestServer::new();
    let sess = create_session(&s, "d.bin", MIN_SESSION);
    let url = sess["session_endpoints"]["upload_part"].as_str().unwrap();
    let ps = 8 * MIB as usize;
    let part = pattern(ps, 5);
    let range = format!("bytes 0-{}/{MIN_SESSION}", ps - 1);
    assert_error(
        send(
            &s,
            call(&s, Method::PUT, url)
                .header("content-range", &range)
                .body(part.clone()),
        ),
        400,
        "missing_digest",
    );
    assert_error(
        send(
            &s,
            call(&s, Method::PUT, url)
                .header("content-range", &range)
                .header("digest", "sha=???")
                .body(part.clone()),
        ),
        400,
        "invalid_digest",
    );
    assert_error(
        send(
            &s,
            call(&s, Method::PUT, url)
                .header("content-range", &range)
                .header("digest", digest_of(b"other"))
                .body(part.clone()),
        ),
        400,
        "bad_digest",
    );
    // After the refusals the range is still free.
    let (st, _, body) = put_part_raw(&s, &sess, 0, &part, MIN_SESSION);
    assert_eq!(st, 200, "{body}");
}

#[test]
fn a_part_cannot_be_sent_twice() {
    let s = TestServer::new();
    let sess = create_session(&s, "o.bin", MIN_SESSION);
    let part = pattern(8 * MIB as usize, 6);
    assert_eq!(put_part_raw(&s, &sess, 0, &part, MIN_SESSION).0, 200);
    assert_error(
        put_part_raw(&s, &sess, 0, &part, MIN_SESSION),
        416,
        "range_overlaps_existing_part",
    );
}

#[test]
fn commit_checks_the_whole_file_digest() {
    let s = TestServer::new();
    let data = pattern(MIN_SESSION, 7);
    let sess = create_session(&s, "c.bin", data.len());
    let parts = put_all_parts(&s, &sess, &data);
    let body = assert_error(
        commit_raw(&s, &sess, &parts, &digest_of(b"wrong")),
        400,
        "digest_mismatch",
    );
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.starts_with("File digest was incorrect. Actual: "),
        "{msg}"
    );
    assert!(msg.contains(" Expected: "), "{msg}");
    assert_error(
        commit_raw(&s, &sess, &parts, "nonsense"),
        400,
        "invalid_digest",
    );
    let url = sess["session_endpoints"]["commit"].as_str().unwrap();
    assert_error(
        send(
            &s,
            call(&s, Method::POST, url).json(&json!({"parts": parts})),
        ),
        400,
        "missing_digest",
    );
    assert!(s.files("box").is_empty());
    // The session survives a bad digest.
    assert_eq!(commit_raw(&s, &sess, &parts, &digest_of(&data)).0, 201);
}

#[test]
fn commit_checks_the_parts_list_and_completeness() {
    let s = TestServer::new();
    let data = pattern(MIN_SESSION, 8);
    let sess = create_session(&s, "p.bin", data.len());
    let ps = 8 * MIB as usize;
    let first = put_part_raw(&s, &sess, 0, &data[..ps], data.len()).2["part"].clone();
    assert_error(
        commit_raw(&s, &sess, std::slice::from_ref(&first), &digest_of(&data)),
        400,
        "upload_incomplete",
    );
    let mut parts = vec![first];
    for off in [ps, 2 * ps] {
        let end = (off + ps).min(data.len());
        parts.push(put_part_raw(&s, &sess, off, &data[off..end], data.len()).2["part"].clone());
    }
    // A part missing from the list, and a part with a wrong id.
    assert_error(
        commit_raw(&s, &sess, &parts[..2], &digest_of(&data)),
        400,
        "parts_mismatch",
    );
    let mut wrong = parts.clone();
    wrong[1]["part_id"] = json!("DEADBEEF");
    assert_error(
        commit_raw(&s, &sess, &wrong, &digest_of(&data)),
        400,
        "parts_mismatch",
    );
    let mut wrong = parts.clone();
    wrong[2]["size"] = json!(1);
    assert_error(
        commit_raw(&s, &sess, &wrong, &digest_of(&data)),
        400,
        "parts_mismatch",
    );
    assert!(s.files("box").is_empty());
    assert_eq!(commit_raw(&s, &sess, &parts, &digest_of(&data)).0, 201);
}

#[test]
fn commit_answers_202_with_retry_after_first() {
    let s = TestServer::start(|o| o.box_commit_202 = 3);
    let data = pattern(MIN_SESSION, 9);
    let sess = create_session(&s, "slow.bin", data.len());
    let parts = put_all_parts(&s, &sess, &data);
    for _ in 0..3 {
        let (st, h, _) = commit_raw(&s, &sess, &parts, &digest_of(&data));
        assert_eq!(st, 202);
        assert!(h.contains_key("retry-after"));
        assert!(s.files("box").is_empty(), "not listed while processing");
    }
    let (st, _, body) = commit_raw(&s, &sess, &parts, &digest_of(&data));
    assert_eq!(st, 201, "{body}");
    assert_eq!(s.files("box").len(), 1);
}

#[test]
fn abort_discards_the_session() {
    let s = TestServer::new();
    let sess = create_session(&s, "a.bin", MIN_SESSION);
    assert_eq!(
        put_part_raw(&s, &sess, 0, &pattern(8 * MIB as usize, 1), MIN_SESSION).0,
        200
    );
    let abort = sess["session_endpoints"]["abort"].as_str().unwrap();
    let (st, _, _) = send(&s, call(&s, Method::DELETE, abort));
    assert_eq!(st, 204);
    assert_eq!(open_sessions(&s), 0);
    assert_error(send(&s, call(&s, Method::GET, abort)), 404, "not_found");
    assert_error(send(&s, call(&s, Method::DELETE, abort)), 404, "not_found");
    assert_error(
        put_part_raw(&s, &sess, 0, b"x", MIN_SESSION),
        404,
        "not_found",
    );
}

#[test]
fn new_version_session_keeps_the_id() {
    let s = TestServer::new();
    let old = upload(&s, "0", "grow.bin", b"small");
    let id = old["id"].as_str().unwrap();
    let data = pattern(MIN_SESSION, 10);
    let (st, _, sess) = send(
        &s,
        call(
            &s,
            Method::POST,
            &up(&s, &format!("/files/{id}/upload_sessions")),
        )
        .json(&json!({"file_size": data.len(), "file_name": "grow.bin"})),
    );
    assert_eq!(st, 201, "{sess}");
    let parts = put_all_parts(&s, &sess, &data);
    let (st, _, body) = commit_raw(&s, &sess, &parts, &digest_of(&data));
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["entries"][0]["id"], id);
    assert_ne!(body["entries"][0]["etag"], old["etag"]);
    assert_eq!(
        s.files("box"),
        vec![("grow.bin".to_string(), data.len() as u64, sha1_hex(&data))]
    );
    assert_error(
        send(
            &s,
            call(&s, Method::POST, &up(&s, "/files/999999/upload_sessions"))
                .json(&json!({"file_size": data.len()})),
        ),
        404,
        "not_found",
    );
}

#[test]
fn unknown_ids_are_not_found() {
    let s = TestServer::new();
    for (m, url) in [
        (Method::GET, api(&s, "/files/999999")),
        (Method::PUT, api(&s, "/files/999999")),
        (Method::DELETE, api(&s, "/files/999999")),
        (Method::GET, api(&s, "/files/999999/content")),
        (Method::GET, api(&s, "/folders/999999")),
        (Method::GET, api(&s, "/folders/999999/items")),
        (Method::PUT, api(&s, "/folders/999999")),
        (Method::DELETE, api(&s, "/folders/999999")),
        (Method::GET, up(&s, "/files/upload_sessions/NOPE")),
        (Method::GET, up(&s, "/files/upload_sessions/NOPE/parts")),
        (Method::DELETE, up(&s, "/files/upload_sessions/NOPE")),
    ] {
        assert_error(
            send(&s, call(&s, m.clone(), &url).json(&json!({}))),
            404,
            "not_found",
        );
    }
    assert_error(upload_raw(&s, "999999", "a", b"x"), 404, "not_found");
    // A folder id is not a file id and vice versa.
    let d = mkdir(&s, "0", "dir");
    assert_error(
        send(
            &s,
            call(
                &s,
                Method::GET,
                &api(&s, &format!("/files/{}", d["id"].as_str().unwrap())),
            ),
        ),
        404,
        "not_found",
    );
}

#[test]
fn folders_listing_paging_and_fields() {
    let s = TestServer::new();
    let d = mkdir(&s, "0", "Photos");
    assert_eq!(d["type"], "folder");
    let did = d["id"].as_str().unwrap();
    for i in 0..7 {
        upload(&s, did, &format!("img{i}.jpg"), &pattern(10 + i, i as u64));
    }
    let items = api(&s, &format!("/folders/{did}/items"));
    // Mini form: no size unless asked for.
    let (_, _, page) = send(&s, call(&s, Method::GET, &items));
    assert_eq!(page["total_count"], 7);
    assert!(
        page["entries"][0]["size"].is_null(),
        "mini form: {}",
        page["entries"][0]
    );
    assert!(page["entries"][0]["sha1"].is_string());
    let (_, _, page) = send(
        &s,
        call(&s, Method::GET, &items).query(&[
            ("fields", "name,size,content_modified_at"),
            ("offset", "5"),
            ("limit", "5000"),
        ]),
    );
    assert_eq!(page["limit"], 1000, "limit capped");
    assert_eq!(page["offset"], 5);
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["name"], "img5.jpg");
    assert_eq!(entries[0]["size"], 15);
    assert!(entries[0]["content_modified_at"].is_string());
    assert!(
        entries[0]["path_collection"].is_null(),
        "only the requested fields"
    );
    // Marker paging walks every entry once.
    let mut names = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut q = vec![
            ("usemarker", "true".to_string()),
            ("limit", "3".to_string()),
        ];
        if let Some(m) = &marker {
            q.push(("marker", m.clone()));
        }
        let (st, _, page) = send(&s, call(&s, Method::GET, &items).query(&q));
        assert_eq!(st, 200, "{page}");
        for e in page["entries"].as_array().unwrap() {
            names.push(e["name"].as_str().unwrap().to_string());
        }
        match page["next_marker"].as_str() {
            Some(m) if !m.is_empty() => marker = Some(m.to_string()),
            _ => break,
        }
    }
    assert_eq!(
        names,
        (0..7).map(|i| format!("img{i}.jpg")).collect::<Vec<_>>()
    );
    assert_error(
        send(
            &s,
            call(&s, Method::GET, &items).query(&[("usemarker", "true"), ("marker", "!!")]),
        ),
        400,
        "invalid_parameter",
    );
    assert_error(
        send(&s, call(&s, Method::GET, &items).query(&[("limit", "ten")])),
        400,
        "invalid_limit",
    );

    // Folder info, including the root.
    let (st, _, root) = send(&s, call(&s, Method::GET, &api(&s, "/folders/0")));
    assert_eq!(st, 200);
    assert_eq!(root["id"], "0");
    assert_eq!(root["item_collection"]["total_count"], 1);
    let (_, _, info) = send(
        &s,
        call(&s, Method::GET, &api(&s, &format!("/folders/{did}"))),
    );
    assert_eq!(info["name"], "Photos");
    assert_eq!(info["item_collection"]["total_count"], 7);
}

#[test]
fn folders_rename_move_and_delete_rules() {
    let s = TestServer::new();
    let a = mkdir(&s, "0", "a");
    let aid = a["id"].as_str().unwrap().to_string();
    let b = mkdir(&s, &aid, "b");
    let bid = b["id"].as_str().unwrap().to_string();
    let f = upload(&s, &bid, "f.txt", b"content");
    let fid = f["id"].as_str().unwrap().to_string();

    // A folder cannot move under itself.
    assert_error(
        send(
            &s,
            call(&s, Method::PUT, &api(&s, &format!("/folders/{aid}")))
                .json(&json!({"parent": {"id": bid}})),
        ),
        400,
        "cyclical_folder_structure",
    );
    // Rename and move a folder.
    let (st, _, moved) = send(
        &s,
        call(&s, Method::PUT, &api(&s, &format!("/folders/{bid}")))
            .json(&json!({"name": "b2", "parent": {"id": "0"}})),
    );
    assert_eq!(st, 200, "{moved}");
    assert_eq!(moved["name"], "b2");
    assert_eq!(moved["parent"]["id"], "0");
    // Move a file.
    let (st, _, mf) = send(
        &s,
        call(&s, Method::PUT, &api(&s, &format!("/files/{fid}")))
            .json(&json!({"parent": {"id": aid}, "name": "g.txt"})),
    );
    assert_eq!(st, 200, "{mf}");
    assert_eq!(mf["parent"]["id"], aid.as_str());
    assert_eq!(mf["path_collection"]["entries"][1]["id"], aid.as_str());
    assert_eq!(download(&s, &fid, None).1, b"content");
    assert_error(
        send(
            &s,
            call(&s, Method::PUT, &api(&s, &format!("/files/{fid}")))
                .json(&json!({"parent": {"id": "777777"}})),
        ),
        404,
        "not_found",
    );

    // Non-empty folders need recursive=true.
    assert_error(
        send(
            &s,
            call(&s, Method::DELETE, &api(&s, &format!("/folders/{aid}"))),
        ),
        400,
        "folder_not_empty",
    );
    assert_error(
        send(
            &s,
            call(
                &s,
                Method::DELETE,
                &api(&s, &format!("/folders/{aid}?recursive=false")),
            ),
        ),
        400,
        "folder_not_empty",
    );
    let (st, _, _) = send(
        &s,
        call(
            &s,
            Method::DELETE,
            &api(&s, &format!("/folders/{aid}?recursive=true")),
        ),
    );
    assert_eq!(st, 204);
    assert!(s.files("box").is_empty(), "the file went with its folder");
    assert_error(
        send(
            &s,
            call(&s, Method::GET, &api(&s, &format!("/files/{fid}"))),
        ),
        404,
        "not_found",
    );
    // An empty folder goes without recursive; the root never goes.
    let (st, _, _) = send(
        &s,
        call(&s, Method::DELETE, &api(&s, &format!("/folders/{bid}"))),
    );
    assert_eq!(st, 204);
    assert_error(
        send(&s, call(&s, Method::DELETE, &api(&s, "/folders/0"))),
        403,
        "access_denied_insufficient_permissions",
    );
}

#[test]
fn delete_file() {
    let s = TestServer::new();
    let f = upload(&s, "0", "gone.txt", b"bye");
    let id = f["id"].as_str().unwrap();
    let (st, _, _) = send(
        &s,
        call(&s, Method::DELETE, &api(&s, &format!("/files/{id}"))),
    );
    assert_eq!(st, 204);
    assert!(s.files("box").is_empty());
    assert_error(
        send(
            &s,
            call(&s, Method::DELETE, &api(&s, &format!("/files/{id}"))),
        ),
        404,
        "not_found",
    );
}

#[test]
fn files_survive_a_restart() {
    let mut s = TestServer::new();
    let d = mkdir(&s, "0", "keep");
    let did = d["id"].as_str().unwrap().to_string();
    let data = pattern(4321, 11);
    let f = upload(&s, &did, "kept.bin", &data);
    let fid = f["id"].as_str().unwrap().to_string();
    // Stop, then start a new server on the same data directory.
    let old = s.server.take().unwrap();
    s.rt.block_on(old.stop());
    let opts = uploadfs::server::ServeOptions::ephemeral(s.dir.path().join("data"), TOKEN);
    let server = s.rt.block_on(uploadfs::server::start(opts)).unwrap();
    s.base = server.base_url();
    s.server = Some(server);
    let (_, _, page) = send(
        &s,
        call(&s, Method::GET, &api(&s, &format!("/folders/{did}/items")))
            .query(&[("fields", "name,size")]),
    );
    assert_eq!(page["entries"][0]["name"], "kept.bin", "{page}");
    assert_eq!(page["entries"][0]["size"], 4321);
    assert_eq!(download(&s, &fid, None).1, data);
    // New ids do not collide with old ones.
    let g = upload(&s, "0", "new.bin", b"n");
    assert_ne!(g["id"], f["id"]);
    assert_ne!(g["id"].as_str().unwrap(), did);
}

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
