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
        .block_on(strict.send("probe", || strict.client.get(&url)))
        .expect_err("self-signed certificate must be refused");
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    assert!(
        err.message.contains("insecure"),
        "message tells the fix: {err}"
    );

    cfg.insecure = true;
    let lax = HttpClient::new("tls", &cfg).unwrap();
    let resp = rt
        .block_on(lax.send("probe", || lax.client.get(&url)))
        .expect("insecure accepts the self-signed certificate");
    assert_eq!(resp.status(), 200);
}
