//! The server's guards, proved in one place for all five protocols: an upload whose name
//! would traverse paths (`../x`, `a/../../b`), an upload over `--max-file-size`, and an
//! upload without a token or with a wrong one are each refused in the protocol's own error
//! shape, and none of them stores anything; a well-formed upload then succeeds.

mod common;

use common::{md5_hex, pattern, TestServer, TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uploadfs::config::TargetKind;
use uploadfs::server::{FLUXER_CHANNEL_ID, VIROLA_MESSAGE_ID};

/// The server's file size limit in these tests.
const MAX: u64 = 1000;

/// How the request authenticates.
#[derive(Clone, Copy, Debug)]
enum Auth {
    Token,
    Missing,
    Wrong,
}

/// The protocol's simplest upload of `data` as `name`; status and JSON body (Null when
/// the body is not JSON).
fn upload(s: &TestServer, kind: TargetKind, name: &str, data: &[u8], auth: Auth) -> (u16, Value) {
    let c = reqwest::Client::new();
    let part = || reqwest::multipart::Part::bytes(data.to_vec()).file_name(name.to_string());
    let rb = match kind {
        TargetKind::Box => c.post(s.url("/box/upload/2.0/files/content")).multipart(
            reqwest::multipart::Form::new()
                .text(
                    "attributes",
                    json!({"name": name, "parent": {"id": "0"}}).to_string(),
                )
                .part("file", part()),
        ),
        // The name is the last segment of the uri, as the client writes it.
        TargetKind::Cloudreve => c
            .put(s.url("/cloudreve/api/v4/file/content"))
            .query(&[("uri", format!("cloudreve://my/{name}"))])
            .header("content-type", "application/octet-stream")
            .body(data.to_vec()),
        TargetKind::Fluxer => c
            .post(s.url(&format!("/fluxer/v1/channels/{FLUXER_CHANNEL_ID}/messages")))
            .multipart(
                reqwest::multipart::Form::new()
                    .text(
                        "payload_json",
                        json!({"attachments": [{"id": 0, "filename": name}]}).to_string(),
                    )
                    .part("files[0]", part()),
            ),
        TargetKind::Virola => c
            .post(s.url(&format!(
                "/virola/api/v1/messages/{VIROLA_MESSAGE_ID}/attachments"
            )))
            .multipart(reqwest::multipart::Form::new().part("files", part())),
        // The declared size decides; the chunks come after.
        TargetKind::Dyson => c
            .post(s.url("/dyson/api/files/upload/create"))
            .json(&json!({
                "hash": md5_hex(data), "file_name": name, "file_size": data.len(),
                "chunk_size": 5 * 1024 * 1024,
            })),
        TargetKind::Null | TargetKind::S3 => unreachable!("not a protocol"),
    };
    let rb = match auth {
        Auth::Token => rb.bearer_auth(TOKEN),
        Auth::Missing => rb,
        Auth::Wrong => rb.bearer_auth("not-the-token"),
    };
    s.rt.block_on(async {
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let body = r.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    })
}

/// What a refusal looks like in each protocol's own terms.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    BadName,
    TooLarge,
    NoAuth,
}

/// Assert the answer is `refusal` in `kind`'s error shape.
fn assert_refused(kind: TargetKind, refusal: Refusal, (status, body): (u16, Value), ctx: &str) {
    let ctx = format!("{ctx}: {status} {body}");
    match kind {
        TargetKind::Box => {
            // ClientError {type: "error", status, code, message, request_id}.
            let (want, code) = match refusal {
                Refusal::BadName => (400, "item_name_invalid"),
                Refusal::TooLarge => (403, "file_size_limit_exceeded"),
                Refusal::NoAuth => (401, "unauthorized"),
            };
            assert_eq!(status, want, "{ctx}");
            assert_eq!(body["type"], "error", "{ctx}");
            assert_eq!(body["status"], want, "{ctx}");
            assert_eq!(body["code"], code, "{ctx}");
            assert!(body["message"].is_string(), "{ctx}");
        }
        TargetKind::Cloudreve => {
            // HTTP 200 with the envelope {code, msg}.
            let code = match refusal {
                Refusal::BadName => 40052,
                Refusal::TooLarge => 40049,
                Refusal::NoAuth => 401,
            };
            assert_eq!(status, 200, "{ctx}");
            assert_eq!(body["code"], code, "{ctx}");
            assert!(body["msg"].is_string(), "{ctx}");
        }
        TargetKind::Fluxer => {
            // {code, message, errors?}.
            let (want, code) = match refusal {
                Refusal::BadName => (400, "INVALID_FORM_BODY"),
                Refusal::TooLarge => (400, "FILE_SIZE_TOO_LARGE"),
                Refusal::NoAuth => (401, "UNAUTHORIZED"),
            };
            assert_eq!(status, want, "{ctx}");
            assert_eq!(body["code"], code, "{ctx}");
            assert!(body["message"].is_string(), "{ctx}");
        }
        TargetKind::Virola => {
            // {errorText, httpStatusCode} with the same HTTP status.
            let want = match refusal {
                Refusal::BadName => 400,
                Refusal::TooLarge => 413,
                Refusal::NoAuth => 401,
            };
            assert_eq!(status, want, "{ctx}");
            assert_eq!(body["httpStatusCode"], want, "{ctx}");
            assert!(
                body["errorText"].as_str().is_some_and(|t| !t.is_empty()),
                "{ctx}"
            );
        }
        TargetKind::Dyson => {
            // ApiError {code, message, status}; validation errors name the field.
            let (want, code) = match refusal {
                Refusal::BadName => (400, "VALIDATION_ERROR"),
                Refusal::TooLarge => (403, "FORBIDDEN"),
                Refusal::NoAuth => (401, "UNAUTHORIZED"),
            };
            assert_eq!(status, want, "{ctx}");
            assert_eq!(body["code"], code, "{ctx}");
            assert_eq!(body["status"], want, "{ctx}");
            assert!(body["message"].is_string(), "{ctx}");
            if let Refusal::BadName = refusal {
                assert!(body["errors"]["file_name"].is_array(), "{ctx}");
            }
        }
        TargetKind::Null | TargetKind::S3 => unreachable!(),
    }
}

fn guards(kind: TargetKind) {
    let s = TestServer::start(|o| o.max_file_size = MAX);
    let small = pattern(100, 1);
    for name in ["../x", "a/../../b", "..", "../../etc/passwd"] {
        assert_refused(
            kind,
            Refusal::BadName,
            upload(&s, kind, name, &small, Auth::Token),
            &format!("name {name:?}"),
        );
    }
    let big = pattern(MAX as usize + 1, 2);
    assert_refused(
        kind,
        Refusal::TooLarge,
        upload(&s, kind, "big.bin", &big, Auth::Token),
        "one byte over --max-file-size",
    );
    for auth in [Auth::Missing, Auth::Wrong] {
        assert_refused(
            kind,
            Refusal::NoAuth,
            upload(&s, kind, "noauth.bin", &small, auth),
            &format!("token {auth:?}"),
        );
    }
    assert!(
        s.files(kind.as_str()).is_empty(),
        "a refused upload stored something: {:?}",
        s.files(kind.as_str())
    );
    // The guards refuse only what they should.
    let (status, body) = upload(&s, kind, "ok.bin", &pattern(MAX as usize, 3), Auth::Token);
    assert!(
        StatusCode::from_u16(status).is_ok_and(|c| c.is_success()),
        "a well-formed upload: {status} {body}"
    );
    if kind == TargetKind::Cloudreve {
        assert_eq!(body["code"], 0, "{body}");
    }
    if kind != TargetKind::Dyson {
        // Dyson stores only after chunks and completion.
        let files = s.files(kind.as_str());
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].1, MAX);
    }
}

macro_rules! guards {
    ($name:ident, $kind:expr) => {
        #[test]
        fn $name() {
            guards($kind);
        }
    };
}

guards!(box_guards, TargetKind::Box);
guards!(cloudreve_guards, TargetKind::Cloudreve);
guards!(fluxer_guards, TargetKind::Fluxer);
guards!(virola_guards, TargetKind::Virola);
guards!(dyson_guards, TargetKind::Dyson);
