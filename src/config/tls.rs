//! `tls`: the TLS listeners, their certificates (read and checked here, so that a bad pair is a
//! load error like any other), the minimum version and the ALPN list.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::file::FileTls;
use super::key::{Invalid, Key};
use crate::tls::{Certificate, Part};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// An application protocol offered in ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http11,
}

impl Alpn {
    /// The protocol's ALPN identifier.
    pub fn wire(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http11 => b"http/1.1",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// Addresses to accept TLS clients on; port 0 picks a free port at start.
    pub listen: Vec<SocketAddr>,
    /// The certificates, in config order, read and checked.
    pub certificates: Vec<Certificate>,
    /// The index of the certificate for a client with no or an unknown SNI name.
    pub default_certificate: usize,
    pub min_version: TlsVersion,
    pub alpn: Vec<Alpn>,
    /// Reload when a certificate or key file changes.
    pub watch: bool,
    /// Every connection starts with a PROXY protocol header, before the ClientHello.
    pub proxy_protocol: bool,
}

impl Tls {
    /// The certificate and key files, for the file watch.
    pub fn files(&self) -> Vec<PathBuf> {
        self.certificates
            .iter()
            .flat_map(|c| [c.cert_path.clone(), c.key_path.clone()])
            .flatten()
            .collect()
    }
}

/// Validates the `tls` block; relative certificate paths are read from the working directory.
pub(super) fn tls(raw: FileTls) -> Result<Tls, Invalid> {
    let key = Key::root("tls");
    let listen = key
        .field("listen")
        .socket_addrs(raw.listen, "0.0.0.0:443")?;
    let list = key.field("certificates");
    let raw_certs = raw.certificates.unwrap_or_default();
    if raw_certs.is_empty() {
        return Err(list.invalid("needs at least one certificate ({cert, key})"));
    }
    let mut certificates = Vec::with_capacity(raw_certs.len());
    for (i, pair) in raw_certs.iter().enumerate() {
        let at = list.index(i);
        for (name, value) in [("cert", &pair.cert), ("key", &pair.key)] {
            if value.trim().is_empty() {
                return Err(at.field(name).invalid("must be a file path"));
            }
        }
        let loaded = Certificate::load(Path::new(&pair.cert), Path::new(&pair.key)).map_err(
            |e| match e.part {
                Part::Cert => at.field("cert").invalid(e.reason),
                Part::Key => at.field("key").invalid(e.reason),
            },
        )?;
        certificates.push(loaded);
    }
    let default_certificate = match raw.default_certificate {
        None => 0,
        Some(i) if i >= 0 && (i as usize) < certificates.len() => i as usize,
        Some(i) => {
            return Err(key.field("default_certificate").invalid(format!(
                "{i} is not an index of tls.certificates (0 to {})",
                certificates.len() - 1
            )))
        }
    };
    let min_version = match raw.min_version.as_deref().map(str::trim) {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            return Err(key
                .field("min_version")
                .invalid(format!("`{other}` is not \"1.2\" or \"1.3\"")))
        }
    };
    let alpn_key = key.field("alpn");
    let alpn = match raw.alpn {
        None => vec![Alpn::H2, Alpn::Http11],
        Some(list) => {
            let mut alpn = Vec::with_capacity(list.len());
            for (i, name) in list.iter().enumerate() {
                let proto = match name.trim() {
                    "h2" => Alpn::H2,
                    "http/1.1" => Alpn::Http11,
                    other => {
                        return Err(alpn_key
                            .index(i)
                            .invalid(format!("`{other}` is not h2 or http/1.1")))
                    }
                };
                if alpn.contains(&proto) {
                    return Err(alpn_key
                        .index(i)
                        .invalid(format!("`{name}` is listed twice")));
                }
                alpn.push(proto);
            }
            if alpn.is_empty() {
                return Err(alpn_key.invalid("needs at least one protocol"));
            }
            alpn
        }
    };
    Ok(Tls {
        listen,
        certificates,
        default_certificate,
        min_version,
        alpn,
        watch: raw.watch.unwrap_or(true),
        proxy_protocol: raw.proxy_protocol.unwrap_or(false),
    })
}

/// A TLS listener may not share a port with a plain one: the front end tells them apart by
/// the local address a connection arrived on.
pub(super) fn check_ports(
    tls: &Tls,
    plain: &[SocketAddr],
    admin: SocketAddr,
) -> Result<(), Invalid> {
    let key = Key::root("tls").field("listen");
    let overlap = |a: &SocketAddr, b: &SocketAddr| {
        a.port() != 0
            && a.port() == b.port()
            && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
    };
    for (i, addr) in tls.listen.iter().enumerate() {
        let taken = plain
            .iter()
            .chain(std::iter::once(&admin))
            .any(|p| overlap(addr, p))
            || tls.listen[..i].iter().any(|p| overlap(addr, p));
        if taken {
            return Err(key.index(i).invalid(format!(
                "{addr} is already a listen address (server.listen, admin.listen or tls.listen)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Alpn, Config, TlsVersion};

    const REST: &str =
        "upstreams:\n  a:\n    backends: [{address: 127.0.0.1:1}]\nroutes:\n  - upstream: a\n";

    /// A directory with `good.pem`/`good.key` (a self-signed pair for `t.test`) and
    /// `other.key` (a key of another certificate).
    fn files() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let good = rcgen::generate_simple_self_signed(vec!["t.test".to_string()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["t.test".to_string()]).unwrap();
        std::fs::write(dir.path().join("good.pem"), good.cert.pem()).unwrap();
        std::fs::write(dir.path().join("good.key"), good.key_pair.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("other.key"), other.key_pair.serialize_pem()).unwrap();
        dir
    }

    fn parse(dir: &tempfile::TempDir, tls: &str) -> Result<Config, String> {
        let text = tls.replace("DIR", &dir.path().display().to_string());
        Config::parse(&format!("{text}{REST}"), "t.yaml").map_err(|e| e.to_string())
    }

    const PAIR: &str = "  certificates:\n    - cert: DIR/good.pem\n      key: DIR/good.key\n";

    #[test]
    fn a_valid_block_and_its_defaults() {
        let dir = files();
        let config = parse(&dir, &format!("tls:\n  listen: [\"127.0.0.1:0\"]\n{PAIR}")).unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.min_version, TlsVersion::V1_2);
        assert_eq!(tls.alpn, vec![Alpn::H2, Alpn::Http11]);
        assert!(tls.watch);
        assert_eq!(tls.certificates[0].names, vec!["t.test"]);
        assert_eq!(tls.files().len(), 2);
        let config = parse(
            &dir,
            &format!("tls:\n{PAIR}  min_version: 1.3\n  alpn: [http/1.1]\n  watch: false\n"),
        )
        .unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.listen, vec!["0.0.0.0:443".parse().unwrap()]);
        assert_eq!(tls.min_version, TlsVersion::V1_3);
        assert_eq!(tls.alpn, vec![Alpn::Http11]);
    }

    #[test]
    fn bad_files_name_the_file_the_key_path_and_the_reason() {
        let dir = files();
        let d = dir.path().display().to_string();
        let missing = parse(
            &dir,
            "tls:\n  certificates:\n    - cert: DIR/none.pem\n      key: DIR/good.key\n",
        )
        .unwrap_err();
        assert!(
            missing.starts_with(&format!(
                "t.yaml: tls.certificates[0].cert: cannot read {d}/none.pem:"
            )),
            "{missing}"
        );
        let not_pem = parse(
            &dir,
            "tls:\n  certificates:\n    - cert: DIR/good.key\n      key: DIR/good.key\n",
        )
        .unwrap_err();
        assert!(
            not_pem.starts_with(&format!(
                "t.yaml: tls.certificates[0].cert: {d}/good.key: no PEM certificate"
            )),
            "{not_pem}"
        );
        let mismatch = parse(
            &dir,
            "tls:\n  certificates:\n    - cert: DIR/good.pem\n      key: DIR/other.key\n",
        )
        .unwrap_err();
        assert_eq!(
            mismatch,
            format!("t.yaml: tls.certificates[0].key: {d}/other.key: does not match the certificate in {d}/good.pem")
        );
    }

    #[test]
    fn other_values_are_checked() {
        let dir = files();
        for (block, path) in [
            ("tls:\n  certificates: []\n", "tls.certificates"),
            (&format!("tls:\n{PAIR}  default_certificate: 1\n"), "tls.default_certificate"),
            (&format!("tls:\n{PAIR}  min_version: \"1.1\"\n"), "tls.min_version"),
            (&format!("tls:\n{PAIR}  alpn: [h3]\n"), "tls.alpn[0]"),
            (&format!("tls:\n{PAIR}  alpn: []\n"), "tls.alpn"),
            (&format!("tls:\n{PAIR}  proxy_protocol: yes\n"), "tls.proxy_protocol"),
            (&format!("tls:\n{PAIR}  sni: x\n"), "tls"),
            (
                &format!("server:\n  listen: [\"0.0.0.0:8080\"]\ntls:\n  listen: [\"127.0.0.1:8080\"]\n{PAIR}"),
                "tls.listen[0]",
            ),
        ] {
            let err = parse(&dir, block).unwrap_err();
            assert!(err.starts_with(&format!("t.yaml: {path}")), "{block} -> {err}");
        }
    }

    #[test]
    fn route_redirect_and_hsts_and_server_h2_keys() {
        let route = |extra: &str| {
            Config::parse(
                &format!("server:\n  h2c: true\n  h2_max_concurrent_streams: 50\nupstreams:\n  a:\n    backends: [{{address: 127.0.0.1:1}}]\nroutes:\n  - upstream: a\n{extra}"),
                "t.yaml",
            )
        };
        let config = route("    https_redirect: true\n    hsts: \"max-age=60\"\n").unwrap();
        assert!(config.routes[0].https_redirect);
        assert_eq!(config.routes[0].hsts.as_deref(), Some("max-age=60"));
        assert!(config.server.h2c);
        assert_eq!(config.server.h2_max_concurrent_streams, 50);
        let err = route("    hsts: \"yes please\"\n").unwrap_err();
        assert_eq!(err.path, "routes[0].hsts");
        let err = Config::parse(
            &format!("server:\n  h2_max_concurrent_streams: 0\n{REST}"),
            "t.yaml",
        )
        .unwrap_err();
        assert_eq!(err.path, "server.h2_max_concurrent_streams");
    }
}
