//! `admin`: the admin listener and its token.

use std::net::SocketAddr;

use super::file::FileAdmin;
use super::key::{Invalid, Key};

#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Bearer token required on every admin path but `/health`; `None` when unset or empty.
    pub token: Option<String>,
    /// Allows a non-loopback admin address without a token.
    pub allow_insecure: bool,
    /// More names a request's `Host` may give besides the listen address and `localhost`
    /// (lowercase, each a host name or `name:port`).
    pub hosts: Vec<String>,
}

impl TryFrom<FileAdmin> for Admin {
    type Error = Invalid;

    fn try_from(raw: FileAdmin) -> Result<Admin, Invalid> {
        let key = Key::root("admin");
        let admin = Admin {
            listen: key
                .field("listen")
                .socket_addr(raw.listen.as_deref().unwrap_or("127.0.0.1:9901"))?,
            token: raw.token.filter(|t| !t.is_empty()),
            allow_insecure: raw.allow_insecure.unwrap_or(false),
            hosts: hosts(&key.field("hosts"), raw.hosts.unwrap_or_default())?,
        };
        if !admin.listen.ip().is_loopback() && admin.token.is_none() && !admin.allow_insecure {
            return Err(key.field("listen").invalid(format!(
                "{} is reachable from other hosts but admin.token is not set; set a token or admin.allow_insecure: true",
                admin.listen
            )));
        }
        Ok(admin)
    }
}

/// `admin.hosts`: names as they appear in a `Host` header, lowercased.
fn hosts(key: &Key, hosts: Vec<String>) -> Result<Vec<String>, Invalid> {
    hosts
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let h = h.trim().to_ascii_lowercase();
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic()) || h.contains(['/', '@']) {
                Err(key.index(i).invalid(format!(
                    "`{h}` is not a host name (like admin.example.com or admin.example.com:9901)"
                )))
            } else {
                Ok(h)
            }
        })
        .collect()
}
