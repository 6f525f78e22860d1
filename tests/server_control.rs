//! The server's shared endpoints: introspection and control require the token; an empty
//! server reports no files.

mod common;

use common::{TestServer, TOKEN};

#[test]
fn introspection_requires_token_and_reports_empty_store() {
    let s = TestServer::new();
    let st = s.state();
    for proto in ["box", "cloudreve", "fluxer", "virola", "dyson"] {
        assert_eq!(
            st["protocols"][proto]["files"].as_array().map(Vec::len),
            Some(0),
            "{proto}"
        );
    }
    let status = s.rt.block_on(async {
        reqwest::Client::new()
            .get(s.url("/_uploadfs/state"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(status, 401);
    s.control(serde_json::json!({"fail_rate": 0.5}));
    assert_eq!(s.state()["fail_rate"], 0.5);
    let _ = TOKEN;
}
