//! `upstreams.<name>.tls`: `false`, `true`, or a block `{sni, verify, ca}` for TLS to the
//! backends. Verification is on by default, against the system roots or the `ca` file; a
//! client certificate (`client_cert`, `client_key`) may be shown to them (mTLS).

use std::net::IpAddr;

use serde::Deserialize;

use super::key::{Invalid, Key};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstreamTls {
    sni: Option<String>,
    verify: Option<bool>,
    ca: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent in SNI and checked in the certificate; `None`: each backend's host name.
    pub sni: Option<String>,
    /// Verify the backend's certificate chain and name.
    pub verify: bool,
    /// The CA certificates (DER) from the `ca` file, instead of the system roots.
    pub ca: Option<Vec<Vec<u8>>>,
    /// The client certificate shown to the backends (mTLS).
    pub client: Option<ClientIdentity>,
}

/// A client certificate chain (DER, leaf first) and its key (DER), checked to match.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub chain: Vec<Vec<u8>>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("chain", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamTls {
    /// The SNI for `backend`: the `sni` key, else the host name of its address as written
    /// (empty for an IP address).
    pub fn sni_for(&self, backend_name: &str) -> String {
        if let Some(sni) = &self.sni {
            return sni.clone();
        }
        let host = crate::route::strip_port(backend_name);
        if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            String::new()
        } else {
            host.to_string()
        }
    }
}

/// Validates `tls` of the upstream at `key` over its backends' names (as written).
pub(super) fn upstream_tls(
    key: &Key,
    raw: Option<serde_yaml::Value>,
    backends: &[&str],
) -> Result<Option<UpstreamTls>, Invalid> {
    let key = key.field("tls");
    let raw: FileUpstreamTls = match raw {
        None | Some(serde_yaml::Value::Bool(false)) => return Ok(None),
        Some(serde_yaml::Value::Bool(true)) => FileUpstreamTls::default(),
        Some(value @ serde_yaml::Value::Mapping(_)) => serde_path_to_error::deserialize(value)
            .map_err(|e| key.below(&e.path().to_string()).invalid(e.into_inner()))?,
        Some(_) => {
            return Err(key.invalid(
                "must be true, false or a block {sni, verify, ca, client_cert, client_key}",
            ))
        }
    };
    let client = match (raw.client_cert.as_deref(), raw.client_key.as_deref()) {
        (None, None) => None,
        (Some(cert), Some(client_key)) => Some(client_identity(&key, cert, client_key)?),
        (Some(_), None) => return Err(key.field("client_key").invalid("needed with client_cert")),
        (None, Some(_)) => return Err(key.field("client_cert").invalid("needed with client_key")),
    };
    let sni = match raw.sni.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(name)
            if name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) =>
        {
            Some(name.to_ascii_lowercase())
        }
        Some(name) => {
            return Err(key
                .field("sni")
                .invalid(format!("`{name}` is not a host name")))
        }
    };
    let verify = raw.verify.unwrap_or(true);
    let ca = match raw.ca.as_deref() {
        None => None,
        Some(path) => Some(read_ca(&key.field("ca"), path)?),
    };
    let tls = UpstreamTls {
        sni,
        verify,
        ca,
        client,
    };
    if verify {
        // Pingora skips verification for an empty SNI: never let that happen silently.
        if let Some(b) = backends.iter().find(|b| tls.sni_for(b).is_empty()) {
            return Err(key.field("sni").invalid(format!(
                "needed to verify the certificate of {b} (an IP address); or set verify: false"
            )));
        }
    } else {
        log::warn!("{key}: verify is false: backend certificates are not checked");
    }
    Ok(Some(tls))
}

/// A client certificate and key, checked like the listeners' (they match, in date).
fn client_identity(key: &Key, cert: &str, client_key: &str) -> Result<ClientIdentity, Invalid> {
    use crate::tls::{Certificate, Part};
    use rustls_pki_types::pem::PemObject;
    let loaded = Certificate::load(std::path::Path::new(cert), std::path::Path::new(client_key))
        .map_err(|e| match e.part {
            Part::Cert => key.field("client_cert").invalid(e.reason),
            Part::Key => key.field("client_key").invalid(e.reason),
        })?;
    let der = std::fs::read(client_key)
        .ok()
        .and_then(|pem| rustls_pki_types::PrivateKeyDer::from_pem_slice(&pem).ok())
        .ok_or_else(|| {
            key.field("client_key")
                .invalid(format!("cannot read {client_key}"))
        })?;
    Ok(ClientIdentity {
        chain: loaded.key.cert.iter().map(|c| c.to_vec()).collect(),
        key: der.secret_der().to_vec(),
    })
}

/// The certificates of a PEM file, each checked to parse.
fn read_ca(key: &Key, path: &str) -> Result<Vec<Vec<u8>>, Invalid> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let pem = std::fs::read(path).map_err(|e| key.invalid(format!("cannot read {path}: {e}")))?;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| key.invalid(format!("{path}: not a PEM certificate list: {e}")))?;
    if ders.is_empty() {
        return Err(key.invalid(format!("{path}: no PEM certificate in the file")));
    }
    for der in &ders {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| key.invalid(format!("{path}: unparsable certificate: {e}")))?;
    }
    Ok(ders.into_iter().map(|d| d.to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(tls: &str, address: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(
            &format!("upstreams:\n  a:\n    backends: [{{address: \"{address}\"}}]\n    tls: {tls}\nroutes:\n  - upstream: a\n"),
            "t.yaml",
        )
    }

    #[test]
    fn forms_and_defaults() {
        assert_eq!(
            parse("false", "127.0.0.1:1").unwrap().upstreams["a"].tls,
            None
        );
        let tls = parse("true", "localhost:443").unwrap().upstreams["a"]
            .tls
            .clone()
            .unwrap();
        assert!(tls.verify);
        assert_eq!(tls.sni_for("localhost:443"), "localhost");
        let tls = parse("{sni: API.internal}", "127.0.0.1:1")
            .unwrap()
            .upstreams["a"]
            .tls
            .clone()
            .unwrap();
        assert_eq!(tls.sni_for("127.0.0.1:1"), "api.internal");
        assert!(parse("{verify: false}", "127.0.0.1:1").is_ok());
    }

    #[test]
    fn errors_name_the_key() {
        for (tls, path) in [
            ("true", "upstreams.a.tls.sni"),
            ("{sni: \"a b\"}", "upstreams.a.tls.sni"),
            ("{sni: x, ca: /nonexistent/ca.pem}", "upstreams.a.tls.ca"),
            ("{sni: x, client_cert: c.pem}", "upstreams.a.tls.client_key"),
            (
                "{sni: x, client_cert: /nonexistent.pem, client_key: /k}",
                "upstreams.a.tls.client_cert",
            ),
            ("{sni: x, pin: y}", "upstreams.a.tls.pin"),
            ("maybe", "upstreams.a.tls"),
        ] {
            let err = parse(tls, "127.0.0.1:1").unwrap_err();
            assert_eq!(err.path, path, "{tls}: {err}");
        }
    }
}
