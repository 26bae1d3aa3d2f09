//! TLS termination: the certificate of the HTTPS listeners, loaded and checked with the config.
//!
//! The certificate is part of the snapshot, not of the listener: Pingora's rustls acceptor asks
//! `server::SnapshotCert` for it on every handshake, which hands out the current snapshot's. So a renewed
//! certificate (cert-manager, certbot) is picked up by a reload like any other change (the config
//! watcher also watches the certificate and key files), a broken one is reported with its place and never
//! replaces the running one, and connections already open keep theirs.
//!
//! Checked at load: both files readable, PEM with at least one certificate and a private key of a
//! supported type, the key matching the leaf certificate, and the leaf's validity dates (expired or not
//! yet valid: an error; expiring within 14 days: a warning).
//!
//! Several certificates: [`Certificates`] picks one by the name the client asks for (SNI) among the
//! DNS names of each certificate (exact names first, then `*.` wildcards one label deep), and falls
//! back to the default one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use pingora_core::tls::sign::CertifiedKey;
use pingora_core::tls::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How far ahead an expiring certificate is warned about.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A loaded certificate with what to warn about.
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// Its DNS names (subject alternative names, lowercase), for SNI.
    pub names: Vec<String>,
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
    let (warning, not_after, names) = validity(&certs[0]).map_err(|m| ("cert", m))?;
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
        names,
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

/// The leaf's dates: an error if it is not valid now, a warning if it soon will not be; its end and its
/// DNS names.
fn validity(leaf: &CertificateDer<'_>) -> Result<(Option<String>, i64, Vec<String>), String> {
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
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((warning, to, names))
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

/// The HTTPS listeners' certificates, by the names they are for.
pub struct Certificates {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// The earliest expiry (Unix seconds), the one to alert on.
    pub not_after: i64,
}

impl Certificates {
    /// `default` is served when no other certificate names what the client asked for. Earlier
    /// certificates win a name two of them have.
    pub fn new(default: Loaded, more: Vec<Loaded>) -> Certificates {
        let not_after = more
            .iter()
            .map(|l| l.not_after)
            .fold(default.not_after, i64::min);
        let (mut exact, mut wildcard) = (HashMap::new(), HashMap::new());
        for l in more.iter().chain(std::iter::once(&default)) {
            for n in &l.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(n.clone()),
                }
                .or_insert_with(|| l.key.clone());
            }
        }
        Certificates {
            default: default.key,
            exact,
            wildcard,
            not_after,
        }
    }

    /// The certificate for a client that asked for `name` (or none).
    pub fn pick(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `names`, loaded as the gateway loads one.
    fn loaded(dir: &Path, names: &[&str]) -> Loaded {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names.clone())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let stem = names[0].replace('*', "star");
        let (c, k) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        load(&c, &k).unwrap()
    }

    #[test]
    fn sni_picks_exact_names_then_one_label_wildcards_then_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = loaded(dir.path(), &["default.test"]);
        let api = loaded(dir.path(), &["api.example.com", "API2.example.com"]);
        let wild = loaded(dir.path(), &["*.example.com"]);
        let (d, a, w) = (default.key.clone(), api.key.clone(), wild.key.clone());
        assert_eq!(api.names, ["api.example.com", "api2.example.com"]);
        let certs = Certificates::new(default, vec![api, wild]);
        let is = |name: Option<&str>, want: &Arc<CertifiedKey>| {
            assert!(Arc::ptr_eq(&certs.pick(name), want), "{name:?}");
        };
        is(Some("api.example.com"), &a);
        is(Some("Api2.Example.COM"), &a);
        is(Some("www.example.com"), &w);
        is(Some("example.com"), &d);
        is(Some("a.b.example.com"), &d);
        is(Some("other.test"), &d);
        is(None, &d);
    }
}
