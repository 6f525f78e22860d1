//! Tokens never leak: `uploadfs put` and `get` for every protocol with `UPLOADFS_LOG=trace`
//! and `--log-file` (and a put with a refused token), then the whole log, standard output
//! and standard error are searched for the token; and `Debug` of every client and
//! configuration holds no token.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::config::{TargetToml, Token};
use common::{pattern, sha1_hex, TestServer, BIN, TOKEN};
use uploadfs::config::TargetKind;
use uploadfs::remote::http::HttpClient;

/// A wrong token, which must not show up in the refusal either.
const WRONG_TOKEN: &str = "wrong-token-ABCDEF-0123456789";

/// A config with one target named after `kind`, holding `token`, as `file`.
fn write_config(s: &TestServer, kind: TargetKind, token: &str, file: &str) -> PathBuf {
    TargetToml::new(s, kind)
        .name(kind.as_str())
        .token(Token::Inline(token.to_string()))
        .retry_seconds(5)
        .write_as(s, file)
}

fn run(args: &[&str], home: &Path, log: &Path) -> Output {
    Command::new(BIN)
        .arg("--log-file")
        .arg(log)
        .args(args)
        .env("UPLOADFS_LOG", "trace")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_DATA_HOME", home.join(".local/share"))
        .output()
        .expect("run uploadfs")
}

/// `uploadfs put -q SRC DEST --config CFG`, logging to `log`.
fn put(src: &Path, dest: &str, cfg: &Path, home: &Path, log: &Path) -> Output {
    run(
        &[
            "put",
            "-q",
            src.to_str().unwrap(),
            dest,
            "--config",
            cfg.to_str().unwrap(),
        ],
        home,
        log,
    )
}

/// Neither the log nor the output holds `secret`.
fn assert_clean(secret: &str, log: &Path, out: &Output, ctx: &str) {
    let log_text = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        !log_text.is_empty(),
        "{ctx}: the trace log is empty, so it proves nothing"
    );
    for (what, text) in [
        ("log file", log_text),
        ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
        ("stderr", String::from_utf8_lossy(&out.stderr).into_owned()),
    ] {
        assert!(!text.contains(secret), "{ctx}: the token is in the {what}");
    }
}

fn no_token_in_logs(kind: TargetKind) {
    let s = TestServer::new();
    let home = s.dir.path();
    let k = kind.as_str();
    let cfg = write_config(&s, kind, TOKEN, "good.toml");
    // Several parts or chunks on every protocol that has them.
    let data = pattern(9 * 1024 * 1024 + 3, 3);
    let src = home.join("payload.bin");
    std::fs::write(&src, &data).unwrap();

    let log = home.join("put.log");
    let out = put(&src, &format!("{k}:secret.bin"), &cfg, home, &log);
    assert!(
        out.status.success(),
        "put failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stored = s.files(k);
    assert!(
        stored.iter().any(|(n, size, h)| n == "secret.bin"
            && *size == data.len() as u64
            && *h == sha1_hex(&data)),
        "the file landed: {stored:?}"
    );
    assert_clean(TOKEN, &log, &out, "put");

    let log = home.join("get.log");
    let back = home.join("back.bin");
    let out = run(
        &[
            "get",
            "-q",
            &format!("{k}:secret.bin"),
            back.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        home,
        &log,
    );
    assert!(
        out.status.success(),
        "get failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&back).unwrap() == data, "read back differs");
    assert_clean(TOKEN, &log, &out, "get");

    // A refused token: the error says so without repeating it.
    let bad = write_config(&s, kind, WRONG_TOKEN, "bad.toml");
    let log = home.join("refused.log");
    let out = put(&src, &format!("{k}:refused.bin"), &bad, home, &log);
    assert!(!out.status.success(), "put with a wrong token succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(
        stderr.contains("token") && stderr.contains("refused"),
        "the refusal names the token: {stderr}"
    );
    assert!(
        stderr.contains("the token comes from `token` of [targets."),
        "the refusal says where the token comes from: {stderr}"
    );
    assert_clean(WRONG_TOKEN, &log, &out, "refused put");
}

common::per_kind!(no_token_in_logs;
    box_logs => Box,
    cloudreve_logs => Cloudreve,
    fluxer_logs => Fluxer,
    virola_logs => Virola,
    dyson_logs => Dyson,
);

/// `Debug` of every configuration and client shows no token.
#[test]
fn debug_output_has_no_token() {
    use uploadfs::remote::{box_, cloudreve, dyson, fluxer, virola};
    let s = TestServer::new();
    let mut shown = Vec::new();
    for kind in TargetKind::ALL {
        let cfg = s.config(kind);
        let http = HttpClient::new(kind.as_str(), &cfg).expect("http client");
        shown.push(format!("{cfg:?}"));
        shown.push(format!("{http:?}"));
        shown.push(match kind {
            TargetKind::Box => format!("{:?}", box_::BoxTarget::new(http, &cfg).unwrap()),
            TargetKind::Cloudreve => {
                format!("{:?}", cloudreve::CloudreveTarget::new(http, &cfg).unwrap())
            }
            TargetKind::Fluxer => format!("{:?}", fluxer::FluxerTarget::new(http, &cfg).unwrap()),
            TargetKind::Virola => format!("{:?}", virola::VirolaTarget::new(http, &cfg).unwrap()),
            TargetKind::Dyson => format!("{:?}", dyson::DysonTarget::new(http, &cfg).unwrap()),
            TargetKind::Null | TargetKind::S3 => unreachable!(),
        });
    }
    let opts = uploadfs::server::ServeOptions::ephemeral(s.dir.path().join("x"), TOKEN);
    shown.push(format!("{opts:?}"));
    let state = &s.server.as_ref().expect("server").state;
    shown.push(format!("{:?}", state.live()));
    shown.push(format!("{:?}", state.opts));
    for text in &shown {
        assert!(!text.contains(TOKEN), "token in Debug output: {text}");
        assert!(!text.is_empty());
    }
}
