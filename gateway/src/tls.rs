//! TLS termination: the certificate of the HTTPS listeners, loaded and checked with the config.
//!
//! The certificate is part of the [`Snapshot`], not of the listener: Pingora's rustls acceptor asks
//! [`SnapshotCert`] for it on every handshake, which hands out the current snapshot's. So a renewed
//! certificate (cert-manager, certbot) is picked up by a reload like any other change (the config
//! watcher also watches the certificate and key files), a broken one is reported with its place and never
//! replaces the running one, and connections already open keep theirs.
//!
//! Checked at load: both files readable, PEM with at least one certificate and a private key of a
//! supported type, the key matching the leaf certificate, and the leaf's validity dates (expired or not
//! yet valid: an error; expiring within 14 days: a warning).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::{ClientHello, CryptoProvider, ResolvesServerCert};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::snapshot::Snapshot;

/// How far ahead an expiring certificate is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A loaded certificate with what to warn about.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// e.g. "expires in 3 days".
    pub warning: Option<String>,
    /// When the leaf expires (Unix seconds), for `tollgate_tls_certificate_expiry_timestamp_seconds`.
    pub not_after: i64,
}

/// Problems loading: `(field, message)` with field `cert` or `key`.
pub type LoadError = (&'static str, String);

/// Load and check a certificate chain and its key.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<Loaded, LoadError> {
    let certs = read_certs(cert_path).map_err(|m| ("cert", m))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        (
            "key",
            format!("{}: no usable private key: {e}", key_path.display()),
        )
    })?;
    pingora_core::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default()
        .ok_or(("key", "no TLS crypto provider installed".to_string()))?;
    let signer = provider.key_provider.load_private_key(key).map_err(|e| {
        (
            "key",
            format!("{}: unsupported key: {e}", key_path.display()),
        )
    })?;
    let (warning, not_after) = validity(&certs[0]).map_err(|m| ("cert", m))?;
    let key = CertifiedKey::new(certs, signer);
    key.keys_match().map_err(|_| {
        (
            "key",
            format!(
                "{} is not the key of the certificate in {}",
                key_path.display(),
                cert_path.display()
            ),
        )
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        warning,
        not_after,
    })
}

/// The certificates of a PEM file; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block found", path.display()));
    }
    Ok(certs)
}

/// The leaf's dates: an error if it is not valid now, a warning if it soon will not be; and its end.
fn validity(leaf: &CertificateDer<'_>) -> Result<(Option<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("the first certificate does not parse: {e}"))?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let v = cert.validity();
    let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now < from {
        return Err(format!(
            "the certificate is not valid before {}",
            v.not_before
        ));
    }
    if now > to {
        return Err(format!("the certificate expired on {}", v.not_after));
    }
    let left = (to - now) as u64;
    let warning = (left < EXPIRY_WARNING.as_secs()).then(|| {
        format!(
            "the certificate expires in {} days ({})",
            left / 86_400,
            v.not_after
        )
    });
    Ok((warning, to))
}

/// Load CA certificates to trust for an upstream (`upstreams.NAME.tls.ca`).
pub fn load_ca(path: &Path) -> Result<Arc<pingora_core::protocols::tls::CaType>, String> {
    use pingora_core::utils::tls::{parse_x509, WrappedX509};
    let certs = read_certs(path)?;
    let mut out = Vec::with_capacity(certs.len());
    for (i, c) in certs.iter().enumerate() {
        // Checked here because Pingora's parser panics on a bad certificate.
        x509_parser::parse_x509_certificate(c.as_ref()).map_err(|e| {
            format!(
                "{}: certificate #{} does not parse: {e}",
                path.display(),
                i + 1
            )
        })?;
        out.push(WrappedX509::new(c.to_vec(), parse_x509));
    }
    Ok(out.into())
}

/// Hands the current snapshot's certificate to every TLS handshake.
pub struct SnapshotCert(pub Arc<ArcSwap<Snapshot>>);

impl std::fmt::Debug for SnapshotCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SnapshotCert")
    }
}

impl ResolvesServerCert for SnapshotCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().tls.clone()
    }
}
