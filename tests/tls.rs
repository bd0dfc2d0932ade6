//! The native TLS listener over real HTTPS with a self-signed certificate,
//! including a renewal while the server runs.

mod common;

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Cert {
    pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn self_signed() -> Cert {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    Cert {
        pem: c.cert.pem(),
        key_pem: c.signing_key.serialize_pem(),
        der: c.cert.der().clone(),
    }
}

/// Connects trusting only `trusted`, sends one signed event, and returns the status
/// and the certificate the server presented.
async fn https_post(
    addr: std::net::SocketAddr,
    trusted: &CertificateDer<'static>,
    body: &str,
) -> Result<(StatusCode, Vec<u8>), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let presented = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/webhooks/quickassist")
        .header("host", "localhost")
        .header("x-webhook-signature", sign(body.as_bytes()))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok((status, presented))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_certificate_renewal() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let first = self_signed();
    std::fs::write(&cert_file, &first.pem).unwrap();
    std::fs::write(&key_file, &first.key_pem).unwrap();
    let tls = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let config = base_config(dir.path(), "", "", "").replace("[spool]", &format!("{tls}\n[spool]"));
    let relay = Relay::start_with(dir.path(), &config);

    let (status, presented) =
        https_post(relay.addr, &first.der, &event_body("message.read", "tls-1"))
            .await
            .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(presented, first.der.to_vec());
    // Plain HTTP on the TLS port gets no answer it could mistake for a 200, and counts
    // once, as a TLS failure.
    let before = relay.metrics().await;
    let mut plain = tokio::net::TcpStream::connect(relay.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain
        .write_all(b"POST /webhooks/quickassist HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(15), plain.read(&mut buf))
        .await
        .map(|r| r.unwrap_or(0))
        .unwrap_or(0);
    assert!(
        !String::from_utf8_lossy(&buf[..n]).contains("200"),
        "plain HTTP was served on the TLS port"
    );
    let after = relay.metrics().await;
    let count = |m: &str, reason: &str| {
        metric(
            m,
            &format!("hookrelay_http_connection_errors_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(count(&after, "tls") - count(&before, "tls"), 1.0);
    assert_eq!(count(&after, "io"), count(&before, "io"));

    // Renewal in place (as cert-manager does): new connections get the new certificate.
    let second = self_signed();
    std::fs::write(&key_file, &second.key_pem).unwrap();
    std::fs::write(&cert_file, &second.pem).unwrap();
    let n = Cell::new(0);
    let last_error = RefCell::new(String::new());
    let (status, presented) = eventually(Duration::from_secs(15), || {
        n.set(n.get() + 1);
        let body = event_body("message.read", &format!("tls-2-{}", n.get()));
        let (der, last_error) = (&second.der, &last_error);
        async move {
            https_post(relay.addr, der, &body)
                .await
                .map_err(|e| *last_error.borrow_mut() = e)
                .ok()
        }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "renewed certificate never served: {}\n{}",
            last_error.borrow(),
            relay.logs()
        )
    });
    assert_eq!(status, StatusCode::OK);
    assert_eq!(presented, second.der.to_vec());
    // The old certificate is no longer presented.
    assert!(
        https_post(relay.addr, &first.der, &event_body("message.read", "tls-3"))
            .await
            .is_err()
    );
    let m = relay.metrics().await;
    assert!(metric(&m, "hookrelay_tls_reloads_total{outcome=\"ok\"}") >= 1.0);
}
