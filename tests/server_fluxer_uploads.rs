//! The Fluxer emulator, spoken to with raw HTTP: auth and channel checks, and every rule
//! of the chunked-upload spec (status and error `code` of each refusal), session expiry,
//! and the shapes of injected faults.

#[path = "server_common.rs"]
mod server_common;

use reqwest::Method;
use serde_json::{json, Value};
use server_common::common::{md5_hex, pattern, sha1_hex, TestServer, TOKEN};
use server_common::fluxer_api::*;

#[test]
fn auth_is_required_on_every_api_route() {
    let s = TestServer::new();
    let a = Api::new(&s);
    let routes = [
        (Method::POST, a.ch("/chunked-uploads")),
        (Method::PUT, a.ch("/chunked-uploads/x/chunks/0")),
        (Method::POST, a.ch("/chunked-uploads/x/complete")),
        (Method::POST, a.ch("/messages")),
        (Method::GET, a.ch("/messages")),
        (Method::GET, a.ch("/messages/1")),
        (Method::DELETE, a.ch("/messages/1")),
        (Method::DELETE, a.ch("/messages/1/attachments/2")),
    ];
    for (m, u) in &routes {
        for auth in [None, Some("wrong"), Some("Bearer wrong")] {
            let (st, v) = s.rt.block_on(async {
                let mut rb = a.c.request(m.clone(), u).body("{}");
                if let Some(h) = auth {
                    rb = rb.header("Authorization", h);
                }
                let r = rb.send().await.unwrap();
                (r.status(), r.json::<Value>().await.unwrap_or(Value::Null))
            });
            assert_eq!(st, 401, "{m} {u} with {auth:?}");
            assert_eq!(code(&v), "UNAUTHORIZED", "{m} {u}");
        }
    }
    // Raw token and Bearer both work; bots may not use chunked uploads.
    let ok = |h: String| {
        s.rt.block_on(async {
            a.c.get(a.ch("/messages"))
                .header("Authorization", h)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    assert_eq!(ok(TOKEN.to_string()), 200);
    assert_eq!(ok(format!("Bearer {TOKEN}")), 200);
    let (st, v) = s.rt.block_on(async {
        let r =
            a.c.post(a.ch("/chunked-uploads"))
                .header("Authorization", format!("Bot {TOKEN}"))
                .json(&json!({"filename": "a", "file_size": 1}))
                .send()
                .await
                .unwrap();
        (r.status(), r.json::<Value>().await.unwrap())
    });
    assert_eq!(st, 403);
    assert_eq!(code(&v), "ACCESS_DENIED");
}

#[test]
fn channels_other_than_the_hosted_one_are_refused() {
    let s = TestServer::new();
    let a = Api::new(&s);
    assert_err(
        a.send(
            a.c.post(a.url("/channels/42/chunked-uploads"))
                .json(&json!({"filename": "a", "file_size": 1})),
        ),
        404,
        "UNKNOWN_CHANNEL",
    );
    assert_err(
        a.send(a.c.get(a.url("/channels/42/messages"))),
        404,
        "UNKNOWN_CHANNEL",
    );
    assert_err(
        a.send(a.c.get(a.url("/channels/abc/messages"))),
        400,
        "INVALID_FORM_BODY",
    );
}

#[test]
fn create_session_rules() {
    let s = TestServer::start(|o| o.fluxer_max_size = 40 * MIB as u64);
    let a = Api::new(&s);
    let (st, v) = a.create("big.bin", (2 * CHUNK + 5) as u64);
    assert_eq!(st, 201, "{v}");
    assert!(uuid::Uuid::parse_str(v["upload_id"].as_str().unwrap()).is_ok());
    assert!(uuid::Uuid::parse_str(v["upload_filename"].as_str().unwrap()).is_ok());
    assert_eq!(v["chunk_size"], 8388608);
    assert_eq!(v["chunk_count"], 3);
    assert_eq!(a.open_sessions(), 1);

    // Body validation: INVALID_FORM_BODY with errors[{path, message, code}].
    let e = assert_err(a.create("a.bin", 0), 400, "INVALID_FORM_BODY");
    assert_eq!(e["errors"][0]["path"], "file_size");
    assert!(e["errors"][0]["code"].is_string() && e["errors"][0]["message"].is_string());
    for bad in [
        json!({"filename": "a"}),
        json!({"file_size": 5}),
        json!({"filename": "a", "file_size": -1}),
        json!({"filename": "a", "file_size": "5"}),
        json!({"filename": 7, "file_size": 5}),
        json!([1, 2]),
    ] {
        assert_err(
            a.send(a.c.post(a.ch("/chunked-uploads")).json(&bad)),
            400,
            "INVALID_FORM_BODY",
        );
    }
    assert_err(
        a.send(a.c.post(a.ch("/chunked-uploads")).body("not json")),
        400,
        "INVALID_FORM_BODY",
    );
    let long = "x".repeat(256);
    for name in ["a/b", "a\\b", "a\u{0}b", "a\nb", "", long.as_str()] {
        let e = assert_err(a.create(name, 10), 400, "INVALID_FORM_BODY");
        assert_eq!(e["errors"][0]["path"], "filename", "{name:?}");
    }
    assert_eq!(a.create(&"x".repeat(255), 10).0, 201);

    // Size limits: the account limit, the server limit, and 128 chunks.
    assert_eq!(a.create("a", 40 * MIB as u64).0, 201);
    assert_err(
        a.create("a", 40 * MIB as u64 + 1),
        400,
        "FILE_SIZE_TOO_LARGE",
    );
    s.control(json!({"max_file_size": 20 * MIB}));
    assert_err(
        a.create("a", 20 * MIB as u64 + 1),
        400,
        "FILE_SIZE_TOO_LARGE",
    );
    s.control(json!({"max_file_size": 4u64 << 30, "fluxer_max_size": 2u64 << 30}));
    assert_eq!(a.create("a", 128 * CHUNK as u64).0, 201);
    assert_err(
        a.create("a", 128 * CHUNK as u64 + 1),
        400,
        "FILE_SIZE_TOO_LARGE",
    );
}

#[test]
fn chunk_rules_and_completion() {
    let s = TestServer::new();
    let a = Api::new(&s);
    let data = pattern(2 * CHUNK + 10, 3);
    let (_, v) = a.create("data.bin", data.len() as u64);
    let uid = v["upload_id"].as_str().unwrap().to_string();
    let uf = v["upload_filename"].as_str().unwrap().to_string();

    // Unknown session, bad index, index out of range.
    assert_err(
        a.put_chunk("nope", "0", vec![1]),
        404,
        "CHUNKED_UPLOAD_NOT_FOUND",
    );
    assert_err(a.put_chunk(&uid, "abc", vec![1]), 400, "INVALID_FORM_BODY");
    assert_err(a.put_chunk(&uid, "-1", vec![1]), 400, "INVALID_FORM_BODY");
    assert_err(
        a.put_chunk(&uid, "3", data[..10].to_vec()),
        400,
        "CHUNKED_UPLOAD_CHUNK_INDEX_OUT_OF_RANGE",
    );
    assert_err(
        a.put_chunk(&uid, "99", vec![1]),
        400,
        "CHUNKED_UPLOAD_CHUNK_INDEX_OUT_OF_RANGE",
    );
    // Exact lengths: 8 MiB except the last, which is the exact remainder.
    for (i, len) in [
        ("0", CHUNK - 1),
        ("0", CHUNK + 1),
        ("2", 9),
        ("2", 11),
        ("2", CHUNK),
    ] {
        assert_err(
            a.put_chunk(&uid, i, vec![0; len]),
            400,
            "CHUNKED_UPLOAD_INVALID_CHUNK_SIZE",
        );
    }

    // Chunks in any order; ETag is the quoted MD5; re-upload replaces (newest wins).
    let c = |i: usize| data[i * CHUNK..((i + 1) * CHUNK).min(data.len())].to_vec();
    let (st, r2) = a.put_chunk(&uid, "2", c(2));
    assert_eq!(st, 200);
    assert_eq!(r2["etag"], format!("\"{}\"", md5_hex(&c(2))));
    let (_, stale) = a.put_chunk(&uid, "0", vec![7; CHUNK]);
    let (_, r0) = a.put_chunk(&uid, "0", c(0));
    assert_ne!(stale["etag"], r0["etag"]);

    // Complete: count, missing chunk, duplicates, range, etags.
    let e = |i: u64, t: &Value| json!({"chunk_index": i, "etag": t});
    assert_err(a.complete(&uid, json!([])), 400, "INVALID_FORM_BODY");
    assert_err(
        a.complete(&uid, json!([e(0, &r0["etag"]), e(2, &r2["etag"])])),
        400,
        "CHUNKED_UPLOAD_INCOMPLETE",
    );
    assert_err(
        a.complete(
            &uid,
            json!([e(0, &r0["etag"]), e(1, &r0["etag"]), e(2, &r2["etag"])]),
        ),
        400,
        "CHUNKED_UPLOAD_INCOMPLETE",
    );
    let (_, r1) = a.put_chunk(&uid, "1", c(1));
    assert_err(
        a.complete(
            &uid,
            json!([e(0, &r0["etag"]), e(0, &r0["etag"]), e(2, &r2["etag"])]),
        ),
        400,
        "CHUNKED_UPLOAD_INCOMPLETE",
    );
    assert_err(
        a.complete(
            &uid,
            json!([e(0, &r0["etag"]), e(1, &r1["etag"]), e(5, &r2["etag"])]),
        ),
        400,
        "CHUNKED_UPLOAD_CHUNK_INDEX_OUT_OF_RANGE",
    );
    assert_err(
        a.complete(
            &uid,
            json!([e(0, &stale["etag"]), e(1, &r1["etag"]), e(2, &r2["etag"])]),
        ),
        400,
        "CHUNKED_UPLOAD_INVALID_ETAG",
    );
    assert_eq!(a.open_sessions(), 1);
    // Order of the list does not matter.
    let (st, done) = a.complete(
        &uid,
        json!([e(2, &r2["etag"]), e(0, &r0["etag"]), e(1, &r1["etag"])]),
    );
    assert_eq!(st, 200, "{done}");
    assert_eq!(done["upload_filename"], uf.as_str());
    assert_eq!(done["file_size"], data.len());
    assert_eq!(done["content_type"], "application/octet-stream");
    assert_eq!(a.open_sessions(), 0);
    // An uploaded object is not a file yet.
    assert!(s.files("fluxer").is_empty());
    assert_err(
        a.complete(
            &uid,
            json!([e(0, &r0["etag"]), e(1, &r1["etag"]), e(2, &r2["etag"])]),
        ),
        404,
        "CHUNKED_UPLOAD_NOT_FOUND",
    );
    assert_err(
        a.put_chunk(&uid, "0", c(0)),
        404,
        "CHUNKED_UPLOAD_NOT_FOUND",
    );

    // The message makes it a file, with the bytes of the newest chunks.
    let (st, m) = a.post(
        json!({"attachments": [{"id": 0, "filename": "data.bin", "uploaded_filename": uf}]}),
        vec![],
    );
    assert_eq!(st, 200, "{m}");
    let att = &m["attachments"][0];
    assert_eq!(att["size"], data.len());
    let files = s.files("fluxer");
    assert_eq!(
        files,
        vec![("data.bin".to_string(), data.len() as u64, sha1_hex(&data))]
    );
    let (st, _, body) = a.cdn(att["url"].as_str().unwrap(), None);
    assert_eq!(st, 200);
    assert!(body == data, "downloaded bytes");
    // The uploaded object was consumed.
    let e = assert_err(
        a.post(
            json!({"attachments": [{"id": 0, "filename": "again.bin", "uploaded_filename": uf}]}),
            vec![],
        ),
        400,
        "INVALID_FORM_BODY",
    );
    assert_eq!(e["errors"][0]["code"], "UPLOADED_FILE_NOT_FOUND");
}

#[test]
fn sessions_expire_from_creation() {
    let s = TestServer::start(|o| o.fluxer_session_ttl = 1);
    let a = Api::new(&s);
    let (_, v) = a.create("a.bin", 10);
    let uid = v["upload_id"].as_str().unwrap().to_string();
    let (st, r) = a.put_chunk(&uid, "0", vec![1; 10]);
    assert_eq!(st, 200);
    assert_eq!(a.open_sessions(), 1);
    std::thread::sleep(std::time::Duration::from_millis(1300));
    assert_eq!(a.open_sessions(), 0);
    assert_err(
        a.put_chunk(&uid, "0", vec![1; 10]),
        404,
        "CHUNKED_UPLOAD_NOT_FOUND",
    );
    assert_err(
        a.complete(&uid, json!([{"chunk_index": 0, "etag": r["etag"]}])),
        404,
        "CHUNKED_UPLOAD_NOT_FOUND",
    );
}

#[test]
fn injected_faults_use_fluxer_shapes() {
    let s = TestServer::new();
    let a = Api::new(&s);
    let (_, v) = a.create("a.bin", 10);
    let uid = v["upload_id"].as_str().unwrap().to_string();
    s.control(json!({"fail_rate": 1.0}));
    let (mut saw_429, mut saw_503, mut saw_drop) = (false, false, false);
    for _ in 0..60 {
        let r = s.rt.block_on(async {
            a.c.put(a.ch(&format!("/chunked-uploads/{uid}/chunks/0")))
                .header("Authorization", TOKEN)
                .body(vec![1u8; 10])
                .send()
                .await
        });
        let Ok(r) = r else {
            saw_drop = true;
            continue;
        };
        let st = r.status();
        let ra = r.headers().get("retry-after").cloned();
        let v: Value = s.rt.block_on(r.json()).unwrap();
        match st.as_u16() {
            429 => {
                saw_429 = true;
                assert!(ra.is_some(), "Retry-After on 429");
                assert_eq!(v["code"], "RATE_LIMITED");
                assert_eq!(v["global"], false);
                assert_eq!(v["retry_after"], 0.1);
                assert!(v["message"].is_string());
            }
            503 => {
                saw_503 = true;
                assert!(v["code"].is_string() && v["message"].is_string());
            }
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert!(saw_429 && saw_503 && saw_drop);
}
