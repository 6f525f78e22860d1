//! TLS certificates are verified: a client pointed at a loopback HTTPS server with a
//! self-signed certificate fails with a clear message, and works with `insecure`.

mod common;

use std::sync::Arc;

use uploadfs::config::{TargetConfig, TargetKind};
use uploadfs::remote::http::HttpClient;
use uploadfs::remote::ErrorKind;

/// A one-connection-at-a-time HTTPS server answering 200 "ok" to everything.
async fn self_signed_server() -> std::net::SocketAddr {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let chain = vec![cert.cert.der().clone()];
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut s) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = s.shutdown().await;
                }
            });
        }
    });
    addr
}

#[test]
fn self_signed_certificate_is_refused_unless_insecure() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(self_signed_server());
    let url = format!("https://{addr}/box/2.0/folders/0/items");
    let mut cfg =
        TargetConfig::for_local_server(TargetKind::Box, &format!("https://{addr}"), "tok");
    cfg.retry_seconds = 5;

    let strict = HttpClient::new("tls", &cfg).unwrap();
    let err = rt
        .block_on(strict.call("probe", || strict.get(&url)))
        .expect_err("self-signed certificate must be refused");
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    assert!(
        err.message.contains("insecure"),
        "message tells the fix: {err}"
    );

    cfg.insecure = true;
    let lax = HttpClient::new("tls", &cfg).unwrap();
    let resp = rt
        .block_on(lax.call("probe", || lax.get(&url)))
        .expect("insecure accepts the self-signed certificate");
    assert_eq!(resp.status, 200);
}

/// Every client, on every kind of request it makes first (listing, upload), fails at once
/// with `Auth` on a refused certificate: no client has a request path that retries it.
#[test]
fn every_kind_fails_at_once_on_a_refused_certificate() {
    use uploadfs::remote::{ByteCounter, Digests, FileSource, UploadRequest};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = rt.block_on(self_signed_server());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    // Over every client's single-request limit, so the session path is taken too.
    std::fs::write(&path, vec![7u8; 21_000_000]).unwrap();
    for kind in TargetKind::ALL {
        if kind == TargetKind::Null {
            continue;
        }
        let mut cfg = TargetConfig::for_local_server(kind, &format!("https://{addr}"), "tok");
        // A retried failure would take this long; failing at once takes far less.
        cfg.retry_seconds = 30;
        let t = uploadfs::remote::build(kind.as_str(), &cfg).expect("client");
        let started = std::time::Instant::now();
        let err = rt
            .block_on(t.list(&None))
            .expect_err("listing over a refused certificate");
        assert_eq!(err.kind, ErrorKind::Auth, "{kind:?} list: {err}");
        let file = uploadfs::remote::RemoteFile {
            id: "1".to_string(),
            name: "f.bin".to_string(),
            size: 10,
            mtime_ms: 0,
            is_dir: false,
            sha1: None,
            md5: None,
            url: Some(format!("https://{addr}/cdn/f.bin")),
            extra: Some("1".to_string()),
        };
        let err = rt
            .block_on(t.read_range(&file, 0, 10))
            .expect_err("reading over a refused certificate");
        assert_eq!(err.kind, ErrorKind::Auth, "{kind:?} read: {err}");
        for size in [10u64, 21_000_000] {
            let req = UploadRequest {
                parent: None,
                name: "f.bin".to_string(),
                size,
                digests: Digests::default(),
                mtime_ms: 0,
                replaces: None,
                resume_session: None,
                source: Arc::new(FileSource::open(&path).unwrap()),
                observer: Arc::new(ByteCounter::default()),
            };
            let err = rt
                .block_on(t.upload(req))
                .expect_err("uploading over a refused certificate");
            assert_eq!(
                err.kind,
                ErrorKind::Auth,
                "{kind:?} upload of {size}: {err}"
            );
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{kind:?}: the certificate error was retried ({:?})",
            started.elapsed()
        );
    }
}
