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
    let listen = raw.listen.unwrap_or_else(|| vec!["0.0.0.0:443".into()]);
    if listen.is_empty() {
        return Err(key.field("listen").invalid("needs at least one address"));
    }
    let listen = listen
        .iter()
        .enumerate()
        .map(|(i, a)| key.field("listen").index(i).socket_addr(a))
        .collect::<Result<Vec<_>, _>>()?;
    if raw.proxy_protocol == Some(true) {
        return Err(key
            .field("proxy_protocol")
            .invalid("the PROXY protocol is not supported yet"));
    }
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
