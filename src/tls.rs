//! The optional native TLS listener (for senders that require HTTPS when there is
//! no ingress to terminate it): rustls, TLS 1.2 and 1.3 only, PEM certificate
//! chain and key from files that are re-read when they change on disk, as
//! cert-manager renews them. A renewal that fails to load keeps the certificate
//! in force, logged and counted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::disk::fingerprint;
use crate::metrics;

/// How often the certificate files are checked for a renewal.
const POLL: Duration = Duration::from_secs(2);

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    #[error("certificate and key do not match: {0}")]
    Mismatch(rustls::Error),
}

/// Loads a PEM chain and key into a signing-ready certificate.
pub fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let pem = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Pem { path, source }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(pem(cert))?
        .collect::<Result<_, _>>()
        .map_err(pem(cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem(key))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    CertifiedKey::from_der(chain, key, &provider).map_err(TlsError::Mismatch)
}

/// Hands out whichever certificate is current.
#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// Builds the acceptor and starts watching the files. Must run inside the runtime.
pub fn acceptor(cert: PathBuf, key: PathBuf) -> Result<TlsAcceptor, TlsError> {
    let current = Arc::new(Current(RwLock::new(Arc::new(load(&cert, &key)?))));
    let mut config = ServerConfig::builder_with_protocol_versions(&[
        &rustls::version::TLS13,
        &rustls::version::TLS12,
    ])
    .with_no_client_auth()
    .with_cert_resolver(current.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    spawn_reloader(current, cert, key);
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn spawn_reloader(current: Arc<Current>, cert: PathBuf, key: PathBuf) {
    tokio::spawn(async move {
        let pair = || [fingerprint(&cert), fingerprint(&key)];
        let mut seen = pair();
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            let now = pair();
            if now == seen {
                continue;
            }
            seen = now;
            match load(&cert, &key) {
                Ok(fresh) => {
                    *current.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                    metrics::tls_reload(true);
                }
                // cert-manager writes the two files one after the other: a half-renewed
                // pair fails here and loads on the next change or poll.
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate reload failed; keeping the current one");
                    metrics::tls_reload(false);
                }
            }
        }
    });
}
