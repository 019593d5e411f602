//! TLS termination on the data-plane listener (rustls, ring provider).
//!
//! TLS 1.2 and 1.3 only, ALPN `h2` and `http/1.1`. The certificate chain and key are
//! PEM files; [`TlsReloader::reload`] re-reads them (on SIGHUP) and keeps the running
//! certificate when the new files are bad, saying why. New connections pick up the
//! new certificate; established ones keep theirs.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsSettings;

/// Builds a server config from PEM files.
pub fn server_config(settings: &TlsSettings) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = load_certs(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key).map_err(|e| {
        anyhow::anyhow!(
            "tls.key: cannot read a PEM private key from {}: {e}",
            settings.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| anyhow::anyhow!("tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("tls: certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| anyhow::anyhow!("tls.cert: cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("tls.cert: bad PEM in {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls.cert: no certificate in {}", path.display());
    }
    Ok(certs)
}

/// The live TLS configuration, swappable without dropping connections.
pub struct TlsReloader {
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("settings", &self.settings)
            .finish()
    }
}

impl TlsReloader {
    /// Loads the files once; fails when they are unusable.
    pub fn new(settings: TlsSettings) -> anyhow::Result<Self> {
        let config = server_config(&settings)?;
        Ok(TlsReloader {
            settings,
            current: ArcSwap::new(config),
        })
    }

    /// An acceptor with the current certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files; on failure keeps the running certificate and returns why.
    pub fn reload(&self, settings: Option<&TlsSettings>) -> anyhow::Result<()> {
        let settings = settings.unwrap_or(&self.settings);
        let config = server_config(settings)?;
        self.current.store(config);
        Ok(())
    }
}
