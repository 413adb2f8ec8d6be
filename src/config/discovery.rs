//! `discovery` (top level, and per upstream over it): how names are resolved and how long an
//! answer is kept; and the names a backend entry may give (`host:port`, `discover: {dns, port}`,
//! `discover: {srv}`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::file::{FileDiscover, FileDiscovery};
use super::key::{Invalid, Key};
use crate::dns::Target;

/// How names are resolved and how long an answer is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Answers are kept at least this long, whatever their TTL.
    pub min_ttl: Duration,
    /// And at most this long.
    pub max_ttl: Duration,
    /// One query's deadline.
    pub timeout: Duration,
    /// Empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
}

impl Default for Discovery {
    fn default() -> Self {
        Discovery {
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
            nameservers: Vec::new(),
        }
    }
}

impl Discovery {
    /// How long to keep an answer with this TTL.
    pub fn clamp(&self, ttl: Duration) -> Duration {
        ttl.max(self.min_ttl).min(self.max_ttl)
    }
}

/// The settings at `key` (`discovery` or `upstreams.<name>.discovery`) over `base`.
pub(super) fn settings(
    key: &Key,
    raw: Option<FileDiscovery>,
    base: &Discovery,
) -> Result<Discovery, Invalid> {
    let Some(raw) = raw else {
        return Ok(base.clone());
    };
    let min_ttl = key
        .field("min_ttl")
        .duration(raw.min_ttl.as_deref(), base.min_ttl)?;
    let max_ttl = key
        .field("max_ttl")
        .duration(raw.max_ttl.as_deref(), base.max_ttl)?;
    if min_ttl > max_ttl {
        return Err(key
            .field("min_ttl")
            .invalid(format!("{min_ttl:?} is more than max_ttl ({max_ttl:?})")));
    }
    let nameservers = match raw.nameservers {
        None => base.nameservers.clone(),
        Some(list) => {
            let list_key = key.field("nameservers");
            if list.is_empty() {
                return Err(list_key.invalid("needs at least one address (or leave it out)"));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, text) in list.iter().enumerate() {
                let text = text.trim();
                let addr = text
                    .parse::<SocketAddr>()
                    .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        list_key.index(i).invalid(format!(
                            "`{text}` is not an IP address with an optional port (127.0.0.1:5353)"
                        ))
                    })?;
                out.push(addr);
            }
            out
        }
    };
    Ok(Discovery {
        min_ttl,
        max_ttl,
        timeout: key
            .field("timeout")
            .duration(raw.timeout.as_deref(), base.timeout)?,
        nameservers,
    })
}

/// `host:port` with a host name (an IP address is not a name to discover), at `key`.
pub(super) fn host_port(key: &Key, text: &str) -> Result<Target, Invalid> {
    let bad = || {
        key.invalid(format!(
            "`{text}` is not an address like 127.0.0.1:9001 or host:port"
        ))
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| {
        key.invalid(format!(
            "`{text}` is not a valid address: the port must be 0 to 65535"
        ))
    })?;
    if !is_host_name(host) {
        return Err(bad());
    }
    Ok(Target::Host {
        host: host.to_string(),
        port,
    })
}

/// `discover: {dns, port}` or `discover: {srv}` at `key`; the name it is shown by.
pub(super) fn discover(key: &Key, raw: FileDiscover) -> Result<(String, Target), Invalid> {
    match (raw.dns, raw.srv) {
        (Some(host), None) => {
            let port = match raw.port {
                Some(p) if (1..=65535).contains(&p) => p as u16,
                Some(p) => return Err(key.field("port").invalid(format!("{p} is not a port"))),
                None => return Err(key.field("port").invalid("is needed with dns")),
            };
            if !is_host_name(&host) {
                return Err(key
                    .field("dns")
                    .invalid(format!("`{host}` is not a host name")));
            }
            Ok((format!("{host}:{port}"), Target::Host { host, port }))
        }
        (None, Some(name)) => {
            if raw.port.is_some() {
                return Err(key
                    .field("port")
                    .invalid("SRV records give the ports; leave it out"));
            }
            if !is_host_name(&name) {
                return Err(key
                    .field("srv")
                    .invalid(format!("`{name}` is not a DNS name")));
            }
            Ok((name.clone(), Target::Srv { name }))
        }
        _ => Err(key.invalid("needs exactly one of dns (with port) or srv")),
    }
}

fn is_host_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.parse::<IpAddr>().is_err()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_is_clamped_to_the_bounds() {
        let d = Discovery {
            min_ttl: Duration::from_secs(2),
            max_ttl: Duration::from_secs(30),
            ..Discovery::default()
        };
        assert_eq!(d.clamp(Duration::ZERO), Duration::from_secs(2));
        assert_eq!(d.clamp(Duration::from_secs(10)), Duration::from_secs(10));
        assert_eq!(d.clamp(Duration::from_secs(86400)), Duration::from_secs(30));
    }

    #[test]
    fn settings_override_the_base_and_are_checked() {
        let key = Key::root("upstreams").field("a").field("discovery");
        let base = Discovery::default();
        let raw = FileDiscovery {
            max_ttl: Some("10s".into()),
            nameservers: Some(vec!["127.0.0.1:5353".into(), "10.0.0.2".into()]),
            ..FileDiscovery::default()
        };
        let d = settings(&key, Some(raw), &base).unwrap();
        assert_eq!(d.min_ttl, Duration::from_secs(1));
        assert_eq!(d.max_ttl, Duration::from_secs(10));
        assert_eq!(
            d.nameservers,
            vec![
                "127.0.0.1:5353".parse().unwrap(),
                "10.0.0.2:53".parse().unwrap()
            ]
        );
        let raw = FileDiscovery {
            min_ttl: Some("2m".into()),
            ..FileDiscovery::default()
        };
        let err = settings(&key, Some(raw), &base).unwrap_err();
        assert_eq!(err.path, "upstreams.a.discovery.min_ttl");
        let raw = FileDiscovery {
            nameservers: Some(vec!["dns.local".into()]),
            ..FileDiscovery::default()
        };
        let err = settings(&key, Some(raw), &base).unwrap_err();
        assert_eq!(err.path, "upstreams.a.discovery.nameservers[0]");
    }
}
