//! The Cloudreve v4 emulation over raw HTTP, files: auth on every endpoint, login and
//! refresh, name and uri rules, signed content URLs (real HTTP statuses there), listing
//! pages, delete/create/rename/move; each rule checked by the envelope `code`.

#[path = "server_common.rs"]
mod server_common;

use serde_json::{json, Value};
use server_common::cloudreve_api::*;
use server_common::common::{pattern, TOKEN};

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
    // Another last character (the last one carries only 4 bits: 1 in 16 MACs end in 'A').
    let last = if mac.ends_with('A') { 'E' } else { 'A' };
    let bad_mac = format!("{base}sign={}{last}:{exp}", &mac[..mac.len() - 1]);
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
