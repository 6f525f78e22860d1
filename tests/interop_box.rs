//! Box's own Python SDK (box-sdk-gen) against `uploadfs serve`: a chunked upload, a direct
//! upload, a new version, downloads and listings must all work with the vendor's client
//! (`tests/interop/box_sdk.py`), and what landed is checked through introspection.
//! Needs `python3` with `box-sdk-gen` installed (scripts/test.sh installs it).

mod common;

use std::process::Command;

use common::{TestServer, TOKEN};

#[test]
fn box_sdk_gen_uploads_downloads_and_lists() {
    let s = TestServer::new();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/box_sdk.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&s.base)
        .arg(TOKEN)
        .output()
        .expect("python3 runs (install python3 and `pip install box-sdk-gen`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "box_sdk.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("box-sdk-gen interop: ok"), "{stdout}");

    let st = s.state();
    let box_ = &st["protocols"]["box"];
    assert_eq!(box_["open_sessions"], 0, "the SDK's session was committed");
    let mut files: Vec<(String, u64)> = box_["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
            )
        })
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            ("big.bin".to_string(), 25_000_123),
            ("small.txt".to_string(), 1000)
        ]
    );
    let folders = box_["folders"].as_array().unwrap();
    assert_eq!(folders.len(), 1);
    assert_eq!(folders[0]["name"], "sdk");
    assert!(st["bytes_received"].as_u64().unwrap() >= 25_000_123 + 54_321 + 1000);
}
