//! A TLS server identity from PEM files, for the stand-ins that serve
//! HTTPS and WSS (the fake exchange, the webhook receiver).

use std::sync::Arc;

use anyhow::{Context, Result};

/// A TLS server configuration from PEM files: a certificate chain and its
/// private key (the tests' are in `tests/fixtures/tls/`).
pub fn tls_config(
    cert_chain: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert_chain)
        .with_context(|| format!("reading {}", cert_chain.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert_chain.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not form a server identity")?;
    Ok(Arc::new(config))
}
