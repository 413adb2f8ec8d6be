//! TLS termination: certificate and key pairs read from PEM files (checked to match and to be
//! in date), the SNI choice among them (exact DNS name, then `*.wildcard`, else the default
//! certificate), and the rustls server config a handshake uses. The config lives in the
//! runtime, so a reload swaps certificates for new handshakes while open connections keep
//! the ones they were made with.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Tls, TlsVersion};

/// The crypto provider every TLS config uses (ring: no system library, modern suites only).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate chain with its key, checked to match, and what `/stats` shows of it.
#[derive(Clone)]
pub struct Certificate {
    /// The files it was read from (`None` for one made in memory, such as the demo's).
    pub cert_path: Option<PathBuf>,
    pub key_path: Option<PathBuf>,
    /// The leaf's DNS names (lowercase; wildcards as `*.example.com`).
    pub names: Vec<String>,
    /// The leaf's not-after time, in seconds since the Unix epoch.
    pub not_after: i64,
    pub key: Arc<CertifiedKey>,
}

impl PartialEq for Certificate {
    fn eq(&self, other: &Certificate) -> bool {
        self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.key.cert == other.key.cert
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("cert_path", &self.cert_path)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Which file of a pair a load error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

/// Why a certificate or key could not be used; the reason names the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub part: Part,
    pub reason: String,
}

impl Certificate {
    /// Reads a PEM chain (leaf first) and its PEM key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub fn load(cert: &Path, key: &Path) -> Result<Certificate, LoadError> {
        let read = |path: &Path, part| {
            std::fs::read(path).map_err(|e| LoadError {
                part,
                reason: format!("cannot read {}: {e}", path.display()),
            })
        };
        let cert_pem = read(cert, Part::Cert)?;
        let key_pem = read(key, Part::Key)?;
        let mut loaded = Certificate::from_pem(
            &cert_pem,
            &key_pem,
            &cert.display().to_string(),
            &key.display().to_string(),
        )?;
        loaded.cert_path = Some(cert.to_path_buf());
        loaded.key_path = Some(key.to_path_buf());
        Ok(loaded)
    }

    /// Parses a PEM chain and key; `cert_name` and `key_name` name them in errors.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        cert_name: &str,
        key_name: &str,
    ) -> Result<Certificate, LoadError> {
        let cert_err = |reason: String| LoadError {
            part: Part::Cert,
            reason: format!("{cert_name}: {reason}"),
        };
        let key_err = |reason: String| LoadError {
            part: Part::Key,
            reason: format!("{key_name}: {reason}"),
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cert_err(format!("not a PEM certificate chain: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(cert_err("no PEM certificate in the file".into()));
        };
        let (names, not_after) = leaf_facts(leaf).map_err(cert_err)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if not_after < now {
            return Err(cert_err(format!("expired on {}", date(not_after))));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            key_err(format!(
                "no usable PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC): {e}"
            ))
        })?;
        let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => {
                key_err(format!("does not match the certificate in {cert_name}"))
            }
            e => key_err(format!("unusable key: {e}")),
        })?;
        Ok(Certificate {
            cert_path: None,
            key_path: None,
            names,
            not_after,
            key: Arc::new(certified),
        })
    }

    /// A self-signed certificate for `names`, made now (for `switchyard demo`).
    pub fn self_signed(names: &[&str]) -> Result<Certificate, String> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let made = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
        Certificate::from_pem(
            made.cert.pem().as_bytes(),
            made.key_pair.serialize_pem().as_bytes(),
            "(self-signed certificate)",
            "(self-signed key)",
        )
        .map_err(|e| e.reason)
    }

    /// The not-after time as an RFC 3339 date, for `/stats`.
    pub fn expires(&self) -> String {
        date(self.not_after)
    }
}

/// The DNS names and not-after time of a DER certificate.
fn leaf_facts(der: &[u8]) -> Result<(Vec<String>, i64), String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("cannot parse the first certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// `2027-01-31T00:00:00Z`.
fn date(unix: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// Picks a certificate by SNI: an exact DNS name, then a `*.wildcard` covering one label, else
/// the default certificate.
#[derive(Debug)]
pub struct Resolver {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` stored as `example.com`.
    wildcard: HashMap<String, usize>,
    default: usize,
}

impl Resolver {
    /// `default` must index `certs` (the config checks it). The first certificate naming a
    /// host wins.
    pub fn new(certs: &[Certificate], default: usize) -> Resolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in certs.iter().enumerate() {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        Resolver {
            keys: certs.iter().map(|c| Arc::clone(&c.key)).collect(),
            exact,
            wildcard,
            default: default.min(certs.len().saturating_sub(1)),
        }
    }

    /// The index of the certificate for `sni` (absent when the client sent no name).
    pub fn pick(&self, sni: Option<&str>) -> usize {
        let Some(name) = sni else {
            return self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(&i) = self.exact.get(&name) {
            return i;
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .copied()
            .unwrap_or(self.default)
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.keys.get(self.pick(hello.server_name())).cloned()
    }
}

/// The rustls server config for the `tls` block: its certificates, minimum version and ALPN.
pub fn server_config(tls: &Tls) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|e| format!("cannot build the TLS config: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver::new(
            &tls.certificates,
            tls.default_certificate,
        )));
    config.alpn_protocols = tls.alpn.iter().map(|p| p.wire().to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        Certificate::self_signed(names).unwrap()
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let certs = [
            cert(&["default.test"]),
            cert(&["api.example.com"]),
            cert(&["*.example.com", "example.com"]),
        ];
        let r = Resolver::new(&certs, 0);
        assert_eq!(r.pick(Some("api.example.com")), 1);
        assert_eq!(r.pick(Some("API.Example.com.")), 1);
        assert_eq!(r.pick(Some("www.example.com")), 2);
        assert_eq!(r.pick(Some("example.com")), 2);
        // A wildcard covers one label only.
        assert_eq!(r.pick(Some("a.b.example.com")), 0);
        assert_eq!(r.pick(Some("other.org")), 0);
        assert_eq!(r.pick(None), 0);
        assert_eq!(Resolver::new(&certs, 2).pick(Some("other.org")), 2);
    }

    #[test]
    fn names_and_expiry_are_read() {
        let c = cert(&["a.test", "*.b.test"]);
        assert_eq!(c.names, vec!["a.test", "*.b.test"]);
        assert!(c.not_after > 0);
        assert!(c.expires().ends_with('Z'));
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_string()]).unwrap();
        let err = Certificate::from_pem(
            a.cert.pem().as_bytes(),
            b.key_pair.serialize_pem().as_bytes(),
            "a.pem",
            "b.key",
        )
        .unwrap_err();
        assert_eq!(err.part, Part::Key);
        assert!(err.reason.starts_with("b.key: does not match"), "{err:?}");
        let err = Certificate::from_pem(b"nothing", b"", "x.pem", "x.key").unwrap_err();
        assert_eq!(err.part, Part::Cert);
        assert!(err.reason.contains("x.pem: no PEM certificate"), "{err:?}");
        let err =
            Certificate::from_pem(a.cert.pem().as_bytes(), b"junk", "a.pem", "k.key").unwrap_err();
        assert_eq!(err.part, Part::Key);
    }
}
