//! The vendor's own Python SDK (PyPI `cloudreve`, `CloudreveV4`) against `uploadfs serve`:
//! login, folder creation, chunked and one-chunk uploads, listing, info, download URL and
//! download, content update, rename, move, delete — each checked inside the script, and
//! the file it leaves behind checked here through introspection. If the SDK rejects the
//! server, the server is wrong. `scripts/test.sh` installs the SDK.

mod common;

use std::process::Command;

use common::{pattern, sha1_hex, TestServer, TOKEN};

#[test]
fn vendor_python_sdk_round_trip() {
    let probe = Command::new("python3")
        .args(["-c", "import cloudreve.v4"])
        .output()
        .expect("python3 must be installed (scripts/test.sh installs the test tools)");
    assert!(
        probe.status.success(),
        "the cloudreve SDK is missing: `python3 -m pip install cloudreve` (scripts/test.sh does it): {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let s = TestServer::start(|o| o.cloudreve_chunk_size = 1024 * 1024);
    let work = s.dir.path().join("sdk-work");
    std::fs::create_dir_all(&work).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/cloudreve_sdk.py"
    );
    let out = Command::new("python3")
        .arg(script)
        .env("CLOUDREVE_BASE", s.url("/cloudreve"))
        .env("CLOUDREVE_TOKEN", TOKEN)
        .env("WORKDIR", &work)
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "SDK script failed:\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What the SDK left is exactly one file with the expected bytes, and no session.
    let files = s.files("cloudreve");
    assert_eq!(
        files,
        vec![("keep.bin".to_string(), 1000, sha1_hex(&pattern(1000, 12)))],
        "stored after the SDK run"
    );
    assert_eq!(
        s.state()["protocols"]["cloudreve"]["open_sessions"],
        0,
        "no session left open"
    );
}
