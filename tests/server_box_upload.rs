//! The Box emulation of `uploadfs serve`, driven with raw HTTP: the upload host (direct
//! uploads and new versions, size limits, chunked upload sessions, parts, commits and
//! aborts) and every rule with the rejection it produces (status and Box ClientError
//! `code`).

#[path = "server_common.rs"]
mod server_common;

use reqwest::Method;
use serde_json::json;
use server_common::box_api::*;
use server_common::common::{pattern, sha1_hex, TestServer};

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
