//! TLS (rustls, ring provider), both directions.
//!
//! Listeners: [`TlsReloader`] is the one reloadable certificate source, used by the
//! data plane (`tls`) and the admin listener (`admin.tls`). TLS 1.2 and 1.3 only,
//! ALPN `h2` and `http/1.1`. The chain and key are PEM files, re-read on SIGHUP /
//! `POST /v1/reload` ([`TlsReloader::reload`]) and whenever their content changes
//! ([`TlsReloader::spawn_watcher`], a poll every [`WATCH_INTERVAL`] that also sees
//! Kubernetes Secret symlink swaps). A bad new pair keeps the running certificate
//! and says why (paths and parser errors only, never key material). New
//! connections pick up a new certificate; established ones keep theirs.
//!
//! Outgoing: [`client_config`] is the one builder of client settings, used by every
//! upstream pool and by the CLI's admin client: a configured CA bundle or the
//! system's roots, optionally a client certificate (mTLS).

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::{ConfigError, TlsSettings};

/// How often [`TlsReloader::spawn_watcher`] looks at the certificate files.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain and key as read from disk, and the SHA-256 of both files
/// (what the watcher compares).
struct PemPair {
    cert: Vec<u8>,
    key: Vec<u8>,
    digest: [u8; 32],
}

impl PemPair {
    /// Reads both files; `section` (`tls`, `admin.tls`) prefixes the error.
    fn read(section: &str, s: &TlsSettings) -> anyhow::Result<Self> {
        let read = |name: &str, p: &Path| {
            std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("{section}.{name}: cannot read {}: {e}", p.display()))
        };
        let cert = read("cert", &s.cert)?;
        let key = read("key", &s.key)?;
        let mut h = Sha256::new();
        h.update(Sha256::digest(&cert));
        h.update(Sha256::digest(&key));
        Ok(PemPair {
            digest: h.finalize().into(),
            cert,
            key,
        })
    }

    /// The digest of whatever is at the paths now; a read error counts as content,
    /// so a file that disappears is a change too.
    fn digest_now(s: &TlsSettings) -> [u8; 32] {
        let mut h = Sha256::new();
        for p in [&s.cert, &s.key] {
            match std::fs::read(p) {
                Ok(bytes) => h.update(Sha256::digest(&bytes)),
                Err(e) => h.update(format!("unreadable: {}", e.kind())),
            }
        }
        h.finalize().into()
    }
}

/// Builds a listener's server config from PEM bytes.
fn server_config(
    section: &str,
    s: &TlsSettings,
    pem: &PemPair,
) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = parse_certs(&pem.cert)
        .map_err(|e| anyhow::anyhow!("{section}.cert: {e} in {}", s.cert.display()))?;
    // The parser's error names the PEM problem, never the key bytes.
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| {
        anyhow::anyhow!(
            "{section}.key: cannot read a PEM private key from {}: {e}",
            s.key.display()
        )
    })?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| anyhow::anyhow!("{section}: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!("{section}: certificate and key do not form a usable pair: {e}")
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate in a PEM blob; at least one.
fn parse_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM ({e})"))?;
    if certs.is_empty() {
        return Err("no PEM certificate".into());
    }
    Ok(certs)
}

/// A listener certificate read and checked by [`TlsReloader::prepare`], not yet
/// served.
pub struct PreparedCert {
    settings: TlsSettings,
    config: Arc<ServerConfig>,
    digest: [u8; 32],
}

impl std::fmt::Debug for PreparedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedCert")
            .field("settings", &self.settings)
            .finish()
    }
}

/// The live certificate of one listener, swappable without dropping connections.
pub struct TlsReloader {
    /// `tls` or `admin.tls`: names the section in messages.
    section: &'static str,
    /// Where the files are (a config reload may move them).
    settings: Mutex<TlsSettings>,
    current: ArcSwap<ServerConfig>,
    /// Digest of the files behind `current`, and of the last content that failed
    /// (so a bad file is reported once, not every poll).
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    loaded: [u8; 32],
    failed: Option<[u8; 32]>,
}

impl std::fmt::Debug for TlsReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReloader")
            .field("section", &self.section)
            .field("settings", &self.settings())
            .finish()
    }
}

impl TlsReloader {
    /// Loads the files once; fails when they are unusable. `section` (`tls` or
    /// `admin.tls`) names the config section in messages.
    pub fn new(section: &'static str, settings: TlsSettings) -> anyhow::Result<Self> {
        let pem = PemPair::read(section, &settings)?;
        let config = server_config(section, &settings, &pem)?;
        Ok(TlsReloader {
            section,
            settings: Mutex::new(settings),
            current: ArcSwap::new(config),
            seen: Mutex::new(Seen {
                loaded: pem.digest,
                failed: None,
            }),
        })
    }

    /// The paths certificates are read from.
    pub fn settings(&self) -> TlsSettings {
        // A panic elsewhere cannot leave two paths inconsistent.
        self.settings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An acceptor with the current certificate. Cost: one atomic load.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load_full())
    }

    /// Re-reads the files (those of `settings` when given, which then become the
    /// watched ones); on failure keeps the running certificate and returns why.
    /// Blocking file I/O (two small files).
    pub fn reload(&self, settings: Option<&TlsSettings>) -> anyhow::Result<()> {
        let next = self.prepare(settings)?;
        self.install(next, false);
        Ok(())
    }

    /// Reads and checks the files (those of `settings` when given) without
    /// serving them yet, so a config reload can check every listener before it
    /// changes any. Blocking file I/O.
    pub fn prepare(&self, settings: Option<&TlsSettings>) -> anyhow::Result<PreparedCert> {
        let settings = settings.cloned().unwrap_or_else(|| self.settings());
        let pem = PemPair::read(self.section, &settings)?;
        let config = server_config(self.section, &settings, &pem)?;
        Ok(PreparedCert {
            settings,
            config,
            digest: pem.digest,
        })
    }

    /// Serves a prepared certificate to new connections. With `if_same_paths`
    /// (the watcher), nothing happens when the paths changed meanwhile (a config
    /// reload moved them), so a stale poll never undoes a reload. Returns whether it
    /// was installed.
    pub fn install(&self, next: PreparedCert, if_same_paths: bool) -> bool {
        let mut settings = self.settings.lock().unwrap_or_else(|p| p.into_inner());
        if if_same_paths && *settings != next.settings {
            return false;
        }
        self.current.store(next.config);
        *settings = next.settings;
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Seen {
            loaded: next.digest,
            failed: None,
        };
        true
    }

    /// Polls the files every `every` and reloads when their content changed; a bad
    /// new pair is logged once (per distinct content) and the running certificate
    /// stays. Runs until the returned task is aborted.
    pub fn spawn_watcher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let me = me.clone();
                let _ = tokio::task::spawn_blocking(move || me.check_files()).await;
            }
        })
    }

    /// One poll of the watcher (blocking file I/O).
    fn check_files(&self) {
        let settings = self.settings();
        let now = PemPair::digest_now(&settings);
        {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if now == seen.loaded || seen.failed == Some(now) {
                return;
            }
        }
        match self.prepare(Some(&settings)) {
            Ok(next) => {
                if self.install(next, true) {
                    tracing::info!(
                        tls = self.section,
                        cert = %settings.cert.display(),
                        "TLS certificate files changed; new certificate loaded"
                    );
                }
            }
            Err(e) => {
                self.seen.lock().unwrap_or_else(|p| p.into_inner()).failed = Some(now);
                tracing::error!(
                    tls = self.section,
                    error = %format!("{e:#}"),
                    "TLS certificate files changed but are unusable; keeping the running certificate"
                );
            }
        }
    }
}

/// Files for outgoing TLS (all optional): a CA bundle trusted instead of the system
/// roots, and a client certificate chain with its key.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientFiles<'a> {
    /// PEM CA bundle.
    pub ca: Option<&'a Path>,
    /// PEM client certificate chain.
    pub cert: Option<&'a Path>,
    /// PEM client private key.
    pub key: Option<&'a Path>,
}

/// The system's CA roots, loaded once (rustls-native-certs: `SSL_CERT_FILE` /
/// `SSL_CERT_DIR` when set, else the platform's bundle).
fn native_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "reading system CA certificates");
            }
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!("no system CA certificates: https upstreams will fail verification");
            }
            Arc::new(roots)
        })
        .clone()
}

/// Client settings for outgoing TLS: TLS 1.2+, the CA bundle in `files.ca` (else the
/// system roots), the client certificate in `files.cert`/`files.key` when given.
/// ALPN is left to the caller. Errors carry `section` (e.g. `upstreams.billing.tls`)
/// and the field. Blocking file I/O.
pub fn client_config(section: &str, files: ClientFiles<'_>) -> Result<ClientConfig, ConfigError> {
    let err = |field: &str, reason: String| ConfigError {
        path: format!("{section}.{field}"),
        reason,
    };
    let read = |field: &str, p: &Path| {
        std::fs::read(p).map_err(|e| err(field, format!("cannot read {}: {e}", p.display())))
    };
    let roots = match files.ca {
        None => native_roots(),
        Some(p) => {
            let certs = parse_certs(&read("ca", p)?)
                .map_err(|e| err("ca", format!("{e} in {}", p.display())))?;
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c).map_err(|e| {
                    err(
                        "ca",
                        format!("unusable CA certificate in {}: {e}", p.display()),
                    )
                })?;
            }
            Arc::new(roots)
        }
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("ca", e.to_string()))?
        .with_root_certificates(roots);
    match (files.cert, files.key) {
        (Some(cert), Some(key)) => {
            let chain = parse_certs(&read("cert", cert)?)
                .map_err(|e| err("cert", format!("{e} in {}", cert.display())))?;
            let key_der = PrivateKeyDer::from_pem_slice(&read("key", key)?).map_err(|e| {
                err(
                    "key",
                    format!("cannot read a PEM private key from {}: {e}", key.display()),
                )
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| err("key", format!("does not match the certificate: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Paths of an upstream's TLS files as [`ClientFiles`].
pub fn upstream_files(tls: Option<&crate::config::UpstreamTls>) -> ClientFiles<'_> {
    match tls {
        None => ClientFiles::default(),
        Some(t) => ClientFiles {
            ca: t.ca.as_deref(),
            cert: t.cert.as_deref(),
            key: t.key.as_deref(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsSettings {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        TlsSettings { cert, key }
    }

    #[test]
    fn a_changed_pair_is_loaded_and_a_bad_one_is_reported_once_and_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let live = write_pair(dir.path(), "live");
        let r = TlsReloader::new("tls", live.clone()).unwrap();
        let first = Arc::as_ptr(&r.current.load_full());
        r.check_files();
        assert_eq!(first, Arc::as_ptr(&r.current.load_full()), "unchanged");
        let two = write_pair(dir.path(), "two");
        std::fs::copy(&two.cert, &live.cert).unwrap();
        std::fs::copy(&two.key, &live.key).unwrap();
        r.check_files();
        let second = Arc::as_ptr(&r.current.load_full());
        assert_ne!(first, second, "reloaded");
        std::fs::write(&live.cert, "not a certificate").unwrap();
        r.check_files();
        assert_eq!(second, Arc::as_ptr(&r.current.load_full()), "kept");
        assert!(r.seen.lock().unwrap().failed.is_some());
        let e = r.reload(None).unwrap_err().to_string();
        assert!(e.starts_with("tls.cert: no PEM certificate"), "{e}");
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = write_pair(dir.path(), "one");
        let two = write_pair(dir.path(), "two");
        let mixed = TlsSettings {
            cert: one.cert.clone(),
            key: two.key.clone(),
        };
        let e = TlsReloader::new("admin.tls", mixed)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("admin.tls: certificate and key do not form"),
            "{e}"
        );
        let e = client_config(
            "upstreams.b.tls",
            ClientFiles {
                ca: Some(&one.cert),
                cert: Some(&one.cert),
                key: Some(&two.key),
            },
        )
        .unwrap_err();
        assert_eq!(e.path, "upstreams.b.tls.key");
        let e = client_config(
            "upstreams.b.tls",
            ClientFiles {
                ca: Some(&dir.path().join("missing.pem")),
                ..ClientFiles::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.path, "upstreams.b.tls.ca");
        assert!(e.reason.starts_with("cannot read"), "{e}");
    }
}
