//! The Dyson Drive emulation of `uploadfs serve`, over raw HTTP: the four ways to
//! authenticate, create-task validation and MD5 dedupe, chunk rules (multipart `chunk`,
//! the 6 MiB request limit, overwrite), completion (CHUNK_MISSING deletes the task),
//! download with ranges, info, listing with `X-Total`, rename, delete, both route
//! prefixes, fault injection, restart durability — and that the client sends no chunk
//! for content the server already has.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{md5_hex, pattern, sha1_hex, TestServer, TOKEN};
use reqwest::multipart::{Form, Part};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use uploadfs::config::TargetKind;
use uploadfs::remote::{Digests, FileSource, UploadObserver, UploadRequest};
use uploadfs::server::ServeOptions;

const MIB: usize = 1024 * 1024;

fn api(s: &TestServer, path: &str) -> String {
    s.url(&format!("/dyson/api{path}"))
}

async fn answer(r: reqwest::Response) -> (StatusCode, Value) {
    let st = r.status();
    let body = r.bytes().await.expect("body");
    (st, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// An `ApiError` body with the given status and code.
fn assert_api_error(st: StatusCode, v: &Value, status: u16, code: &str) {
    assert_eq!(st.as_u16(), status, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

async fn create(c: &Client, s: &TestServer, body: Value) -> (StatusCode, Value) {
    answer(
        c.post(api(s, "/files/upload/create"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn create_body(data: &[u8], name: &str) -> Value {
    json!({"hash": md5_hex(data), "file_name": name, "file_size": data.len(),
           "content_type": "application/octet-stream"})
}

async fn put_chunk(c: &Client, s: &TestServer, task: &str, i: u64, data: &[u8]) -> StatusCode {
    let form = Form::new().part(
        "chunk",
        Part::bytes(data.to_vec()).file_name(format!("chunk_{i}")),
    );
    c.post(api(s, &format!("/files/upload/chunk/{task}/{i}")))
        .bearer_auth(TOKEN)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .status()
}

async fn complete(c: &Client, s: &TestServer, task: &str) -> (StatusCode, Value) {
    answer(
        c.post(api(s, &format!("/files/upload/complete/{task}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Upload `data` with chunks of `cs` bytes; returns the CloudFile.
async fn upload_whole(c: &Client, s: &TestServer, name: &str, data: &[u8], cs: usize) -> Value {
    let mut body = create_body(data, name);
    body["chunk_size"] = json!(cs);
    let (st, v) = create(c, s, body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["file_exists"], false);
    let task = v["task_id"].as_str().unwrap().to_string();
    for (i, piece) in data.chunks(cs).enumerate() {
        assert_eq!(put_chunk(c, s, &task, i as u64, piece).await, 200);
    }
    let (st, f) = complete(c, s, &task).await;
    assert_eq!(st, 200, "{f}");
    f
}

#[test]
fn auth_schemes() {
    let s = TestServer::new();
    s.rt.block_on(async {
        let c = Client::new();
        let me = api(&s, "/files/me");
        for req in [
            c.get(&me),
            c.get(&me).bearer_auth("wrong"),
            c.get(&me).header("authorization", "AtField wrong"),
            c.get(format!("{me}?tk=wrong")),
            c.get(&me).header("cookie", "AuthToken=wrong"),
            c.post(api(&s, "/files/upload/create")).json(&json!({})),
            c.post(api(&s, "/files/upload/complete/abc")),
            c.get(api(&s, "/files/abc")),
            c.delete(api(&s, "/files/abc")),
        ] {
            let (st, v) = answer(req.send().await.unwrap()).await;
            assert_api_error(st, &v, 401, "UNAUTHORIZED");
        }
        for req in [
            c.get(&me).bearer_auth(TOKEN),
            c.get(&me)
                .header("authorization", format!("AtField {TOKEN}")),
            c.get(format!("{me}?tk={TOKEN}")),
            c.get(&me)
                .header("cookie", format!("other=1; AuthToken={TOKEN}")),
            // The public gateway prefix.
            c.get(s.url("/dyson/drive/files/me")).bearer_auth(TOKEN),
        ] {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-total"], "0");
        }
    });
}

#[test]
fn create_validation_and_task_shape() {
    let s = TestServer::new();
    s.rt.block_on(async {
        let c = Client::new();
        let good = create_body(b"abc", "a.txt");
        let mut bad = good.clone();
        bad["hash"] = json!(md5_hex(b"abc").to_uppercase());
        let (st, v) = create(&c, &s, bad).await;
        assert_api_error(st, &v, 400, "VALIDATION_ERROR");
        assert!(v["errors"]["hash"].is_array(), "{v}");
        let mut bad = good.clone();
        bad["hash"] = json!("abc");
        assert_api_error_of(create(&c, &s, bad).await, 400, "VALIDATION_ERROR");
        let long = "x".repeat(256);
        for name in ["", "a/b", "a\\b", "..", long.as_str()] {
            let mut bad = good.clone();
            bad["file_name"] = json!(name);
            assert_api_error_of(create(&c, &s, bad).await, 400, "VALIDATION_ERROR");
        }
        let mut bad = good.clone();
        bad["file_size"] = json!(-1);
        assert_api_error_of(create(&c, &s, bad).await, 400, "VALIDATION_ERROR");
        let mut bad = good.clone();
        bad["chunk_size"] = json!(0);
        assert_api_error_of(create(&c, &s, bad).await, 400, "VALIDATION_ERROR");
        let mut bad = good.clone();
        bad["pool_id"] = json!("not-a-guid");
        assert_api_error_of(create(&c, &s, bad).await, 400, "VALIDATION_ERROR");
        let mut bad = good.clone();
        bad["pool_id"] = json!("00000000-0000-0000-0000-000000000001");
        let (st, v) = create(&c, &s, bad).await;
        assert_api_error(st, &v, 404, "NOT_FOUND");
        assert_eq!(v["detail"], "Pool");
        let mut bad = good.clone();
        bad["encrypt_password"] = json!("secret");
        assert_api_error_of(create(&c, &s, bad).await, 403, "FORBIDDEN");
        // Not JSON at all: ASP.NET's problem details.
        let r = c
            .post(api(&s, "/files/upload/create"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{")
            .send()
            .await
            .unwrap();
        let (st, v) = answer(r).await;
        assert_eq!(st, 400);
        assert_eq!(v["status"], 400);
        assert!(v["errors"].is_object() && v["title"].is_string(), "{v}");
        // A valid task: nanoid, default chunk size, chunk count.
        let mut body = good.clone();
        body["file_size"] = json!(11 * MIB);
        let (st, v) = create(&c, &s, body).await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["file_exists"], false);
        assert!(v["file"].is_null());
        let task = v["task_id"].as_str().unwrap();
        assert_eq!(task.len(), 21);
        assert!(task
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        assert_eq!(v["chunk_size"], 5_242_880);
        assert_eq!(v["chunks_count"], 3);
        // The client's chunk size; and the explicit pool.
        let mut body = good.clone();
        body["file_size"] = json!(10);
        body["chunk_size"] = json!(3);
        body["pool_id"] = json!(uploadfs::server::dyson::POOL_ID);
        let (_, v) = create(&c, &s, body).await;
        assert_eq!(
            (v["chunk_size"].clone(), v["chunks_count"].clone()),
            (json!(3), json!(4))
        );
        let mut body = good.clone();
        body["file_size"] = json!(0);
        let (_, v) = create(&c, &s, body).await;
        assert_eq!(v["chunks_count"], 0);
    });
    // Over the size limit: 403 FORBIDDEN (the pool policy's answer).
    s.control(json!({"max_file_size": 100}));
    s.rt.block_on(async {
        let c = Client::new();
        let mut body = create_body(b"abc", "big.bin");
        body["file_size"] = json!(101);
        assert_api_error_of(create(&c, &s, body).await, 403, "FORBIDDEN");
    });
    assert!(
        s.state()["protocols"]["dyson"]["open_sessions"]
            .as_u64()
            .unwrap()
            >= 3
    );
}

fn assert_api_error_of((st, v): (StatusCode, Value), status: u16, code: &str) {
    assert_api_error(st, &v, status, code);
}

#[test]
fn chunks_complete_read_list_rename_delete() {
    let s = TestServer::new();
    let data = pattern(2 * MIB + 123, 5);
    s.rt.block_on(async {
        let c = Client::new();
        let mut body = create_body(&data, "movie.mp4");
        body["chunk_size"] = json!(MIB);
        body["content_type"] = json!("video/mp4");
        let (_, v) = create(&c, &s, body).await;
        let task = v["task_id"].as_str().unwrap().to_string();
        assert_eq!(v["chunks_count"], 3);
        // Any order; a re-upload overwrites.
        assert_eq!(put_chunk(&c, &s, &task, 2, &data[2 * MIB..]).await, 200);
        assert_eq!(put_chunk(&c, &s, &task, 0, b"garbage").await, 200);
        assert_eq!(put_chunk(&c, &s, &task, 1, &data[MIB..2 * MIB]).await, 200);
        assert_eq!(put_chunk(&c, &s, &task, 0, &data[..MIB]).await, 200);
        let r = c
            .post(api(&s, &format!("/files/upload/chunk/{task}/0")))
            .bearer_auth(TOKEN)
            .multipart(Form::new().part("chunk", Part::bytes(data[..MIB].to_vec()).file_name("c")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.bytes().await.unwrap().is_empty(),
            "chunk answer has an empty body"
        );
        let (st, f) = complete(&c, &s, &task).await;
        assert_eq!(st, 200, "{f}");
        let id = f["id"].as_str().unwrap().to_string();
        assert_eq!(id.len(), 21);
        assert_eq!(f["name"], "movie.mp4");
        assert_eq!(f["size"], data.len());
        assert_eq!(f["hash"], md5_hex(&data));
        assert_eq!(f["mime_type"], "video/mp4");
        assert_eq!(f["storage_id"], id.as_str());
        assert_eq!(f["resource_identifier"], format!("file:{id}"));
        assert!(f["uploaded_at"].is_null() && f["pool_id"].is_null());
        assert_eq!(f["account_id"], uploadfs::server::dyson::ACCOUNT_ID);
        assert!(chrono::DateTime::parse_from_rfc3339(f["created_at"].as_str().unwrap()).is_ok());
        assert!(f["sensitive_marks"].is_array() && f["references"].is_array());
        // The task is gone after completion.
        let (st, v) = complete(&c, &s, &task).await;
        assert_api_error(st, &v, 404, "NOT_FOUND");
        assert_eq!(v["detail"], "Upload task");
        // Content, ranges, the `.ext` form.
        let r = c
            .get(api(&s, &format!("/files/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "video/mp4");
        assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
        let r = c
            .get(api(&s, &format!("/files/{id}.mp4")))
            .bearer_auth(TOKEN)
            .header("range", "bytes=1048570-1048579")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes 1048570-1048579/{}", data.len()).as_str()
        );
        assert_eq!(
            r.bytes().await.unwrap().as_ref(),
            &data[1_048_570..1_048_580]
        );
        let r = c
            .get(api(&s, &format!("/files/{id}")))
            .bearer_auth(TOKEN)
            .header("range", format!("bytes={}-", data.len()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416);
        for path in ["/files/nope", "/files/nope/info"] {
            let r = c
                .get(api(&s, path))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 404);
            assert_eq!(r.text().await.unwrap(), "File not found.");
        }
        let (st, info) = answer(
            c.get(api(&s, &format!("/files/{id}/info")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(info["hash"], f["hash"]);
        assert_eq!(info["pool_id"], uploadfs::server::dyson::POOL_ID);
        // Two more files; listing is newest first with paging and X-Total.
        upload_whole(&c, &s, "b.txt", b"bee", 5).await;
        upload_whole(&c, &s, "c.txt", b"sea", 5).await;
        let r = c
            .get(api(&s, "/files/me?offset=1&take=1"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-total"], "3");
        let (_, page) = answer(r).await;
        assert_eq!(page.as_array().unwrap().len(), 1);
        assert_eq!(page[0]["name"], "b.txt");
        let (_, all) = answer(
            c.get(api(&s, "/files/me"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        let names: Vec<_> = all
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, ["c.txt", "b.txt", "movie.mp4"]);
        let (st, v) = answer(
            c.get(api(&s, "/files/me?take=x"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 400);
        assert!(v["errors"]["take"].is_array(), "{v}");
        // Rename with a JSON string body.
        let (st, r) = answer(
            c.patch(api(&s, &format!("/files/{id}/name")))
                .bearer_auth(TOKEN)
                .json(&json!("film.mp4"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["name"], "film.mp4");
        assert_eq!(r["id"], id.as_str());
        let (st, v) = answer(
            c.patch(api(&s, &format!("/files/{id}/name")))
                .bearer_auth(TOKEN)
                .json(&json!("a/b"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_api_error(st, &v, 400, "VALIDATION_ERROR");
        let (st, _) = answer(
            c.patch(api(&s, &format!("/files/{id}/name")))
                .bearer_auth(TOKEN)
                .json(&json!({"name": "x"}))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(st, 400);
        let (st, v) = answer(
            c.patch(api(&s, "/files/nope/name"))
                .bearer_auth(TOKEN)
                .json(&json!("x"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_api_error(st, &v, 404, "NOT_FOUND");
        // Delete: 204, then 404.
        let r = c
            .delete(api(&s, &format!("/files/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
        let (st, v) = answer(
            c.delete(api(&s, &format!("/files/{id}")))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_api_error(st, &v, 404, "NOT_FOUND");
    });
    let names: Vec<String> = s.files("dyson").into_iter().map(|f| f.0).collect();
    assert_eq!(names, ["b.txt", "c.txt"]);
}

#[test]
fn dedupe_by_md5() {
    let s = TestServer::new();
    s.rt.block_on(async {
        let c = Client::new();
        let data = b"same bytes";
        let f = upload_whole(&c, &s, "one.txt", data, 4).await;
        let (st, v) = create(&c, &s, create_body(data, "two.txt")).await;
        assert_eq!(st, 200);
        assert_eq!(v["file_exists"], true);
        assert_eq!(v["file"]["id"], f["id"]);
        assert_eq!(v["file"]["name"], "one.txt");
        for k in ["task_id", "chunk_size", "chunks_count"] {
            assert!(
                v.get(k).is_some_and(Value::is_null),
                "{k} present and null: {v}"
            );
        }
    });
    assert_eq!(s.files("dyson").len(), 1);
}

#[test]
fn chunk_rules() {
    let s = TestServer::new();
    s.rt.block_on(async {
        let c = Client::new();
        // Unknown task.
        let form = Form::new().part("chunk", Part::bytes(b"x".to_vec()).file_name("c"));
        let (st, v) = answer(c.post(api(&s, "/files/upload/chunk/unknownTask123/0")).bearer_auth(TOKEN).multipart(form).send().await.unwrap()).await;
        assert_api_error(st, &v, 404, "NOT_FOUND");
        assert_eq!(v["detail"], "Upload task");
        // Refused before its body is read, a big chunk still gets the answer, not a reset.
        for _ in 0..3 {
            let form = Form::new().part("chunk", Part::bytes(vec![1u8; 6 * MIB - 4096]).file_name("c"));
            let r = c.post(api(&s, "/files/upload/chunk/unknownTask123/0")).bearer_auth(TOKEN).multipart(form).send().await.expect("answered, not reset");
            let (st, v) = answer(r).await;
            assert_api_error(st, &v, 404, "NOT_FOUND");
        }
        let (_, v) = create(&c, &s, json!({"hash": md5_hex(b"q"), "file_name": "q", "file_size": 7 * MIB, "content_type": ""})).await;
        let task = v["task_id"].as_str().unwrap().to_string();
        let url = api(&s, &format!("/files/upload/chunk/{task}/0"));
        // No `chunk` file part.
        let form = Form::new().part("file", Part::bytes(b"x".to_vec()).file_name("c"));
        let (st, v) = answer(c.post(&url).bearer_auth(TOKEN).multipart(form).send().await.unwrap()).await;
        assert_eq!(st, 400);
        assert_eq!(v["status"], 400);
        assert!(v["errors"]["Chunk"].is_array(), "{v}");
        let form = Form::new().text("chunk", "not a file");
        let (st, _) = answer(c.post(&url).bearer_auth(TOKEN).multipart(form).send().await.unwrap()).await;
        assert_eq!(st, 400);
        // Not multipart.
        let r = c.post(&url).bearer_auth(TOKEN).body("raw").send().await.unwrap();
        assert_eq!(r.status(), 415);
        // A bad index.
        let form = Form::new().part("chunk", Part::bytes(b"x".to_vec()).file_name("c"));
        let (st, v) = answer(c.post(api(&s, &format!("/files/upload/chunk/{task}/x"))).bearer_auth(TOKEN).multipart(form).send().await.unwrap()).await;
        assert_eq!(st, 400);
        assert!(v["errors"]["chunkIndex"].is_array(), "{v}");
        // Over 6 MiB with the multipart overhead: refused by Content-Length ...
        let big = vec![7u8; 6 * MIB];
        let form = Form::new().part("chunk", Part::bytes(big.clone()).file_name("c"));
        let (st, v) = answer(c.post(&url).bearer_auth(TOKEN).multipart(form).send().await.unwrap()).await;
        assert_api_error(st, &v, 413, "PAYLOAD_TOO_LARGE");
        // ... and by counting when the length is not announced.
        let stream = futures_util::stream::iter(
            big.chunks(MIB).map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>(),
        );
        let form = Form::new().part("chunk", Part::stream(reqwest::Body::wrap_stream(stream)).file_name("c"));
        let r = c.post(&url).bearer_auth(TOKEN).multipart(form).send().await;
        let (st, v) = answer(r.expect("413 answer")).await;
        assert_api_error(st, &v, 413, "PAYLOAD_TOO_LARGE");
        // Exactly 5 MiB of data fits.
        assert_eq!(put_chunk(&c, &s, &task, 0, &big[..5 * MIB]).await, 200);
        // Completion with chunk 1 missing: CHUNK_MISSING, and the task is deleted.
        let (st, v) = complete(&c, &s, &task).await;
        assert_api_error(st, &v, 400, "CHUNK_MISSING");
        assert_eq!(v["message"], "Chunk 1 is missing.");
        let (st, v) = complete(&c, &s, &task).await;
        assert_api_error(st, &v, 404, "NOT_FOUND");
        assert_eq!(put_chunk(&c, &s, &task, 1, b"late").await, 404);
    });
    assert!(s.files("dyson").is_empty());
}

#[test]
fn injected_faults_on_chunks_and_downloads() {
    let s = TestServer::new();
    let id = s.rt.block_on(async {
        let c = Client::new();
        let f = upload_whole(&c, &s, "x.bin", b"payload", 7).await;
        f["id"].as_str().unwrap().to_string()
    });
    let (_, v) =
        s.rt.block_on(async { create(&Client::new(), &s, create_body(b"other", "o")).await });
    let task = v["task_id"].as_str().unwrap().to_string();
    s.control(json!({"fail_rate": 1.0}));
    s.rt.block_on(async {
        let c = Client::new();
        let mut answered = 0;
        for i in 0..10 {
            let form = Form::new().part("chunk", Part::bytes(b"other".to_vec()).file_name("c"));
            match c
                .post(api(&s, &format!("/files/upload/chunk/{task}/0")))
                .bearer_auth(TOKEN)
                .multipart(form)
                .send()
                .await
            {
                Ok(r) => {
                    assert!(r.headers().contains_key("retry-after"));
                    let (st, v) = answer(r).await;
                    assert!(st == 503 || st == 429, "{i}: {st}");
                    assert_eq!(v["status"], st.as_u16());
                    assert!(v["code"].is_string());
                    answered += 1;
                }
                Err(e) => assert!(!e.is_status(), "{e}"),
            }
            match c
                .get(api(&s, &format!("/files/{id}")))
                .bearer_auth(TOKEN)
                .send()
                .await
            {
                Ok(r) => assert!(r.status() == 503 || r.status() == 429, "{}", r.status()),
                Err(e) => assert!(!e.is_status(), "{e}"),
            }
        }
        assert!(answered > 0);
    });
    assert!(s.state()["faults_injected"].as_u64().unwrap() >= 20);
}

#[test]
fn files_and_open_tasks_survive_restart() {
    let mut s = TestServer::new();
    let data = pattern(3000, 4);
    let (id, task) = s.rt.block_on(async {
        let c = Client::new();
        let f = upload_whole(&c, &s, "kept.bin", &data, 1000).await;
        let mut body = create_body(b"0123456789", "later.bin");
        body["chunk_size"] = json!(5);
        let (_, v) = create(&c, &s, body).await;
        let task = v["task_id"].as_str().unwrap().to_string();
        assert_eq!(put_chunk(&c, &s, &task, 0, b"01234").await, 200);
        (f["id"].as_str().unwrap().to_string(), task)
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
        let r = c
            .get(api(&s, &format!("/files/{id}")))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.bytes().await.unwrap().as_ref(), &data[..]);
        assert_eq!(put_chunk(&c, &s, &task, 1, b"56789").await, 200);
        let (st, f) = complete(&c, &s, &task).await;
        assert_eq!(st, 200, "{f}");
        assert_eq!(f["hash"], md5_hex(b"0123456789"));
        // Dedupe still sees the file stored before the restart.
        let (_, v) = create(&c, &s, create_body(&data, "again.bin")).await;
        assert_eq!(v["file_exists"], true);
        assert_eq!(v["file"]["id"], id.as_str());
    });
    let stored = s.files("dyson");
    assert_eq!(stored.len(), 2);
    assert!(stored.contains(&("kept.bin".to_string(), 3000, sha1_hex(&data))));
}

/// Counts accepted parts.
#[derive(Default)]
struct Parts(AtomicU64);

impl UploadObserver for Parts {
    fn part_done(&self, _index: u64, _bytes: u64) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn client_sends_no_chunks_for_known_content() {
    let s = TestServer::new();
    let t = s.target(TargetKind::Dyson);
    let data = pattern(6 * MIB + 5, 11);
    let path = s.dir.path().join("src.bin");
    std::fs::write(&path, &data).unwrap();
    let up = |name: &str, parts: Arc<Parts>| {
        let req = UploadRequest {
            parent: None,
            name: name.to_string(),
            size: data.len() as u64,
            // No digests: the client computes the MD5 itself.
            digests: Digests::default(),
            mtime_ms: 0,
            replaces: None,
            resume_session: None,
            source: Arc::new(FileSource::open(&path).unwrap()),
            observer: parts,
        };
        s.rt.block_on(t.upload(req)).expect("upload")
    };
    let first_parts = Arc::new(Parts::default());
    let first = up("first.bin", first_parts.clone());
    assert_eq!(first_parts.0.load(Ordering::Relaxed), 2, "two 5 MiB chunks");
    assert_eq!(first.md5.as_deref(), Some(md5_hex(&data).as_str()));
    let received = s.state()["bytes_received"].as_u64().unwrap();
    assert!(received >= data.len() as u64);

    let second_parts = Arc::new(Parts::default());
    let second = up("second.bin", second_parts.clone());
    assert_eq!(second_parts.0.load(Ordering::Relaxed), 0, "no chunk sent");
    assert_eq!(
        s.state()["bytes_received"].as_u64().unwrap(),
        received,
        "no chunk bytes arrived"
    );
    assert_eq!(second.id, first.id, "the stored file is reused");
    assert_eq!(
        second.name, "second.bin",
        "reported under the requested name"
    );
    assert_eq!(second.size, data.len() as u64);
    let stored = s.files("dyson");
    assert_eq!(
        stored,
        vec![("first.bin".to_string(), data.len() as u64, sha1_hex(&data))]
    );
}
