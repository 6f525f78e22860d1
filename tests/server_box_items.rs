//! The Box emulation of `uploadfs serve`, driven with raw HTTP: the API host (token
//! checks on every endpoint, file and folder items, names and conflicts, listings, moves,
//! deletes, signed downloads, restarts) and every rule with the rejection it produces
//! (status and Box ClientError `code`).

#[path = "server_common.rs"]
mod server_common;

use reqwest::Method;
use serde_json::json;
use server_common::box_api::*;
use server_common::common::{pattern, sha1_hex, TestServer, TOKEN};

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
