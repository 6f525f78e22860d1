//! What the server's protocol tests (`tests/server_*.rs`) share: the in-process server
//! of `tests/common`, and per protocol the raw-HTTP helpers its test files use. A test
//! file includes this one as a module:
//!
//! ```ignore
//! #[path = "server_common.rs"]
//! mod server_common;
//! use server_common::box_api::*;
//! ```
//!
//! Built alone (every file directly under `tests/` is a test target of its own) it holds
//! no test.
#![allow(dead_code)]

#[path = "common/mod.rs"]
pub(crate) mod common;

pub(crate) mod box_api {
    use super::common::{sha1_hex, TestServer, TOKEN};
    use base64::Engine as _;
    use reqwest::{Client, Method, RequestBuilder, StatusCode};
    use serde_json::{json, Value};

    /// Smallest size an upload session accepts.
    pub const MIN_SESSION: usize = 20_000_000;

    pub const MIB: u64 = 1024 * 1024;

    pub fn client() -> Client {
        // Redirects are inspected by hand.
        Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    pub fn api(s: &TestServer, path: &str) -> String {
        s.url(&format!("/box/2.0{path}"))
    }

    pub fn up(s: &TestServer, path: &str) -> String {
        s.url(&format!("/box/upload/2.0{path}"))
    }

    /// Send, return status, headers and the body as JSON (Null when empty or not JSON).
    pub fn send(
        s: &TestServer,
        rb: RequestBuilder,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
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

    pub fn call(_s: &TestServer, m: Method, url: &str) -> RequestBuilder {
        client().request(m, url).bearer_auth(TOKEN)
    }

    /// Assert a Box ClientError with `status` and `code`; returns the body.
    pub fn assert_error(
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

    pub fn attributes_form(attrs: Value, data: &[u8]) -> reqwest::multipart::Form {
        reqwest::multipart::Form::new()
            .text("attributes", attrs.to_string())
            .part(
                "file",
                reqwest::multipart::Part::bytes(data.to_vec()).file_name("f"),
            )
    }

    pub fn upload_raw(
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
    pub fn upload(s: &TestServer, parent: &str, name: &str, data: &[u8]) -> Value {
        let (st, _, body) = upload_raw(s, parent, name, data);
        assert_eq!(st, 201, "{body}");
        assert_eq!(body["total_count"], 1);
        body["entries"][0].clone()
    }

    pub fn mkdir(s: &TestServer, parent: &str, name: &str) -> Value {
        let (st, _, body) = send(
            s,
            call(s, Method::POST, &api(s, "/folders"))
                .json(&json!({"name": name, "parent": {"id": parent}})),
        );
        assert_eq!(st, 201, "{body}");
        body
    }

    pub fn create_session(s: &TestServer, name: &str, size: usize) -> Value {
        let (st, _, body) = send(
            s,
            call(s, Method::POST, &up(s, "/files/upload_sessions"))
                .json(&json!({"folder_id": "0", "file_size": size, "file_name": name})),
        );
        assert_eq!(st, 201, "{body}");
        body
    }

    pub fn digest_of(data: &[u8]) -> String {
        use sha1::Digest;
        format!(
            "sha={}",
            base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(data))
        )
    }

    pub fn put_part_raw(
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
    pub fn put_all_parts(s: &TestServer, session: &Value, data: &[u8]) -> Vec<Value> {
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

    pub fn commit_raw(
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
    pub fn download(s: &TestServer, id: &str, range: Option<&str>) -> (StatusCode, Vec<u8>) {
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

    pub fn open_sessions(s: &TestServer) -> u64 {
        s.state()["protocols"]["box"]["open_sessions"]
            .as_u64()
            .unwrap()
    }
}

pub(crate) mod cloudreve_api {
    use super::common::{TestServer, TOKEN};
    use serde_json::{json, Value};

    pub const MIB: usize = 1024 * 1024;

    pub fn server() -> TestServer {
        TestServer::start(|o| o.cloudreve_chunk_size = MIB as u64)
    }

    pub fn api(s: &TestServer, path: &str) -> String {
        s.url(&format!("/cloudreve/api/v4{path}"))
    }

    /// Send a request; the envelope endpoints always answer HTTP 200 with JSON.
    pub fn send(s: &TestServer, rb: reqwest::RequestBuilder) -> Value {
        s.rt.block_on(async {
            let r = rb.send().await.expect("request");
            assert_eq!(r.status(), 200, "envelope answers are HTTP 200");
            r.json::<Value>().await.expect("json envelope")
        })
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    pub fn call(s: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut rb = client().request(method, api(s, path)).bearer_auth(TOKEN);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        send(s, rb)
    }

    pub fn code(v: &Value) -> i64 {
        v["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no code in {v}"))
    }

    pub fn put_content(s: &TestServer, uri: &str, data: &[u8]) -> Value {
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

    pub fn create_session(s: &TestServer, body: Value) -> Value {
        call(s, reqwest::Method::PUT, "/file/upload", Some(body))
    }

    pub fn new_session(s: &TestServer, uri: &str, size: usize) -> String {
        let r = create_session(
            s,
            json!({"uri": uri, "size": size, "last_modified": 1_700_000_000_000i64, "mime_type": "application/octet-stream"}),
        );
        assert_eq!(code(&r), 0, "{r}");
        r["data"]["session_id"].as_str().unwrap().to_string()
    }

    pub fn chunk(s: &TestServer, sid: &str, index: u64, data: &[u8]) -> Value {
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
    pub fn upload(s: &TestServer, uri: &str, data: &[u8]) {
        let sid = new_session(s, uri, data.len());
        if data.is_empty() {
            assert_eq!(code(&chunk(s, &sid, 0, &[])), 0);
        }
        for (i, c) in data.chunks(MIB).enumerate() {
            let r = chunk(s, &sid, i as u64, c);
            assert_eq!(code(&r), 0, "chunk {i}: {r}");
        }
    }

    pub fn info(s: &TestServer, uri: &str) -> Value {
        send(
            s,
            client()
                .get(api(s, "/file/info"))
                .query(&[("uri", uri)])
                .bearer_auth(TOKEN),
        )
    }

    pub fn list(s: &TestServer, uri: &str, extra: &[(&str, &str)]) -> Value {
        let mut q = vec![("uri", uri)];
        q.extend_from_slice(extra);
        send(
            s,
            client().get(api(s, "/file")).query(&q).bearer_auth(TOKEN),
        )
    }

    pub fn names(listing: &Value) -> Vec<String> {
        listing["data"]["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect()
    }

    /// A signed URL for `uri`.
    pub fn signed_url(s: &TestServer, uri: &str) -> String {
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

    pub fn get(
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

    pub fn open_sessions(s: &TestServer) -> u64 {
        s.state()["protocols"]["cloudreve"]["open_sessions"]
            .as_u64()
            .unwrap()
    }
}

pub(crate) mod virola_api {
    use super::common::{TestServer, TOKEN};
    use reqwest::multipart::{Form, Part};
    use reqwest::{Client, StatusCode};
    use serde_json::Value;

    use uploadfs::server::{VIROLA_MESSAGE_ID, VIROLA_ROOM_ID};

    pub fn api(s: &TestServer, path: &str) -> String {
        s.url(&format!("/virola/api/v1{path}"))
    }

    /// Status and JSON body of a response.
    pub async fn answer(r: reqwest::Response) -> (StatusCode, Value) {
        let st = r.status();
        let body = r.bytes().await.expect("body");
        let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (st, v)
    }

    /// The body must be Virola's error envelope with the same status inside.
    pub fn assert_error(st: StatusCode, v: &Value, want: u16, text: Option<&str>) {
        assert_eq!(st.as_u16(), want, "status, body {v}");
        assert_eq!(v["httpStatusCode"], want, "httpStatusCode in {v}");
        let t = v["errorText"].as_str().expect("errorText string");
        assert!(!t.is_empty());
        if let Some(text) = text {
            assert_eq!(t, text);
        }
    }

    pub fn files_form(files: &[(&str, &[u8])]) -> Form {
        let mut f = Form::new();
        for (name, data) in files {
            f = f.part(
                "files",
                Part::bytes(data.to_vec()).file_name(name.to_string()),
            );
        }
        f
    }

    pub async fn upload(
        c: &Client,
        s: &TestServer,
        files: &[(&str, &[u8])],
    ) -> (StatusCode, Value) {
        answer(
            c.post(api(
                s,
                &format!("/messages/{VIROLA_MESSAGE_ID}/attachments"),
            ))
            .bearer_auth(TOKEN)
            .multipart(files_form(files))
            .send()
            .await
            .unwrap(),
        )
        .await
    }

    /// Stored Virola files, from introspection (usable inside the runtime).
    pub async fn stored(c: &Client, s: &TestServer) -> Vec<Value> {
        let v: Value = c
            .get(s.url("/_uploadfs/state"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["protocols"]["virola"]["files"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// Attachments of the seed message, from the room listing.
    pub async fn attachments(c: &Client, s: &TestServer) -> Vec<Value> {
        let (st, v) = answer(
            c.get(api(
                s,
                &format!("/rooms/{VIROLA_ROOM_ID}/messages?limit=200"),
            ))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["messageId"] == VIROLA_MESSAGE_ID)
            .map(|m| m["attachments"].as_array().unwrap().clone())
            .unwrap_or_default()
    }
}

pub(crate) mod fluxer_api {
    use super::common::{TestServer, TOKEN};
    use reqwest::{Client, StatusCode};
    use serde_json::{json, Value};

    use uploadfs::server::FLUXER_CHANNEL_ID as CID;

    pub const MIB: usize = 1024 * 1024;

    pub const CHUNK: usize = 8 * MIB;

    pub struct Api<'a> {
        pub s: &'a TestServer,
        pub c: Client,
    }

    impl<'a> Api<'a> {
        pub fn new(s: &'a TestServer) -> Self {
            Api {
                s,
                c: Client::new(),
            }
        }

        pub fn url(&self, path: &str) -> String {
            self.s.url(&format!("/fluxer/v1{path}"))
        }

        pub fn ch(&self, rest: &str) -> String {
            self.url(&format!("/channels/{CID}{rest}"))
        }

        /// Send with the raw token and read `(status, JSON or Null)`.
        pub fn send(&self, rb: reqwest::RequestBuilder) -> (StatusCode, Value) {
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

        pub fn create(&self, filename: &str, size: u64) -> (StatusCode, Value) {
            self.send(
                self.c
                    .post(self.ch("/chunked-uploads"))
                    .json(&json!({"filename": filename, "file_size": size})),
            )
        }

        pub fn put_chunk(&self, uid: &str, i: &str, data: Vec<u8>) -> (StatusCode, Value) {
            self.send(
                self.c
                    .put(self.ch(&format!("/chunked-uploads/{uid}/chunks/{i}")))
                    .header("Content-Type", "application/octet-stream")
                    .body(data),
            )
        }

        pub fn complete(&self, uid: &str, etags: Value) -> (StatusCode, Value) {
            self.send(
                self.c
                    .post(self.ch(&format!("/chunked-uploads/{uid}/complete")))
                    .json(&json!({ "etags": etags })),
            )
        }

        pub fn post(
            &self,
            payload: Value,
            files: Vec<(u64, &str, Vec<u8>)>,
        ) -> (StatusCode, Value) {
            let mut form =
                reqwest::multipart::Form::new().text("payload_json", payload.to_string());
            for (n, name, data) in files {
                form = form.part(
                    format!("files[{n}]"),
                    reqwest::multipart::Part::bytes(data).file_name(name.to_string()),
                );
            }
            self.send(self.c.post(self.ch("/messages")).multipart(form))
        }

        pub fn post_inline(&self, name: &str, data: Vec<u8>) -> (StatusCode, Value) {
            self.post(
                json!({"attachments": [{"id": 0, "filename": name}]}),
                vec![(0, name, data)],
            )
        }

        /// Create, upload every chunk, complete; returns the `upload_filename`.
        pub fn chunked(&self, name: &str, data: &[u8]) -> String {
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
        pub fn cdn(
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

        pub fn open_sessions(&self) -> u64 {
            self.s.state()["protocols"]["fluxer"]["open_sessions"]
                .as_u64()
                .unwrap()
        }
    }

    pub fn code(v: &Value) -> &str {
        v["code"].as_str().unwrap_or("<none>")
    }

    pub fn assert_err(r: (StatusCode, Value), status: u16, c: &str) -> Value {
        assert_eq!(r.0.as_u16(), status, "status; body {}", r.1);
        assert_eq!(code(&r.1), c, "code; body {}", r.1);
        assert!(r.1["message"].is_string(), "message present: {}", r.1);
        r.1
    }
}
