//! The Fluxer emulator, spoken to with raw HTTP: every rule of the chunked-upload spec
//! (status and error `code` of each refusal), messages carrying inline and chunked
//! uploads, listing, deletes, the CDN's range behaviour, session expiry, the 429 shape,
//! durability across a restart; plus client behaviour the conformance scenario does not
//! reach (limits, bad names, lost answers).

mod common;

use std::sync::Arc;

use common::{md5_hex, pattern, sha1_hex, TestServer, TOKEN};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use uploadfs::config::TargetKind;
use uploadfs::remote::{ByteCounter, Digests, ErrorKind, FileSource, UploadRequest};
use uploadfs::server::FLUXER_CHANNEL_ID as CID;

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 8 * MIB;

struct Api<'a> {
    s: &'a TestServer,
    c: Client,
}

impl<'a> Api<'a> {
    fn new(s: &'a TestServer) -> Self {
        Api {
            s,
            c: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        self.s.url(&format!("/fluxer/v1{path}"))
    }

    fn ch(&self, rest: &str) -> String {
        self.url(&format!("/channels/{CID}{rest}"))
    }

    /// Send with the raw token and read `(status, JSON or Null)`.
    fn send(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
        self.s.rt.block_on(async {
            let r = rb
                .header("Authorization", TOKEN)
                .send()
                .await
                .expect("request");
            let st = r.status();
            let b = r.bytes().await.expect("body");
            (st, serde_json::from_slice(&b).unwrap_or(Value::Null))
        })
    }

    fn create(&self, filename: &str, size: u64) -> (StatusCode, Value) {
        self.send(
            self.c
                .post(self.ch("/chunked-uploads"))
                .json(&json!({"filename": filename, "file_size": size})),
        )
    }

    fn put_chunk(&self, uid: &str, i: &str, data: Vec<u8>) -> (StatusCode, Value) {
        self.send(
            self.c
                .put(self.ch(&format!("/chunked-uploads/{uid}/chunks/{i}")))
                .header("Content-Type", "application/octet-stream")
                .body(data),
        )
    }

    fn complete(&self, uid: &str, etags: Value) -> (StatusCode, Value) {
        self.send(
            self.c
                .post(self.ch(&format!("/chunked-uploads/{uid}/complete")))
                .json(&json!({ "etags": etags })),
        )
    }

    fn post(&self, payload: Value, files: Vec<(u64, &str, Vec<u8>)>) -> (StatusCode, Value) {
        let mut form = reqwest::multipart::Form::new().text("payload_json", payload.to_string());
        for (n, name, data) in files {
            form = form.part(
                format!("files[{n}]"),
                reqwest::multipart::Part::bytes(data).file_name(name.to_string()),
            );
        }
        self.send(self.c.post(self.ch("/messages")).multipart(form))
    }

    fn post_inline(&self, name: &str, data: Vec<u8>) -> (StatusCode, Value) {
        self.post(
            json!({"attachments": [{"id": 0, "filename": name}]}),
            vec![(0, name, data)],
        )
    }

    /// Create, upload every chunk, complete; returns the `upload_filename`.
    fn chunked(&self, name: &str, data: &[u8]) -> String {
        let (st, s) = self.create(name, data.len() as u64);
        assert_eq!(st, 201, "{s}");
        let uid = s["upload_id"].as_str().unwrap().to_string();
        let mut etags = vec![];
        for (i, c) in data.chunks(CHUNK).enumerate() {
            let (st, r) = self.put_chunk(&uid, &i.to_string(), c.to_vec());
            assert_eq!(st, 200, "{r}");
            etags.push(json!({"chunk_index": i, "etag": r["etag"]}));
        }
        let (st, r) = self.complete(&uid, json!(etags));
        assert_eq!(st, 200, "{r}");
        r["upload_filename"].as_str().unwrap().to_string()
    }

    /// GET without any auth (the CDN), with an optional Range.
    fn cdn(
        &self,
        url: &str,
        range: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        self.s.rt.block_on(async {
            let mut rb = self.c.get(url);
            if let Some(r) = range {
                rb = rb.header("Range", r);
            }
            let r = rb.send().await.expect("cdn request");
            let st = r.status();
            let h = r.headers().clone();
            (st, h, r.bytes().await.expect("cdn body").to_vec())
        })
    }

    fn open_sessions(&self) -> u64 {
        self.s.state()["protocols"]["fluxer"]["open_sessions"]
            .as_u64()
            .unwrap()
    }
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or("<none>")
}

fn assert_err(r: (StatusCode, Value), status: u16, c: &str) -> Value {
    assert_eq!(r.0.as_u16(), status, "status; body {}", r.1);
    assert_eq!(code(&r.1), c, "code; body {}", r.1);
    assert!(r.1["message"].is_string(), "message present: {}", r.1);
    r.1
}

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
