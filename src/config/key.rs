//! Where a value sits in the file (`upstreams.api.backends[1].address`), and the checks of
//! single values that every section shares. Every validation error is made here, so no
//! section writes key paths by hand.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use super::units::{parse_duration, parse_size};

/// A validation error: the key path and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub path: String,
    pub reason: String,
}

/// The key path of a value in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    /// A top-level key: `server`, `upstreams`, `routes`.
    pub fn root(name: &str) -> Key {
        Key(name.to_string())
    }

    /// A key inside this map: `server` → `server.listen`.
    pub fn field(&self, name: &str) -> Key {
        Key(format!("{}.{name}", self.0))
    }

    /// An element of this list: `routes` → `routes[2]`.
    pub fn index(&self, i: usize) -> Key {
        Key(format!("{}[{i}]", self.0))
    }

    /// A path below this key as a deserializer reports it (`a.b[0]`; `.` is this key).
    pub fn below(&self, inner: &str) -> Key {
        if inner == "." || inner.is_empty() {
            self.clone()
        } else {
            Key(format!("{}.{inner}", self.0))
        }
    }

    /// This value is wrong for `reason`.
    pub fn invalid(&self, reason: impl fmt::Display) -> Invalid {
        Invalid {
            path: self.0.clone(),
            reason: reason.to_string(),
        }
    }

    /// A duration (`500ms`, `10s`, `1m`) greater than zero; `default` when absent.
    pub fn duration(&self, value: Option<&str>, default: Duration) -> Result<Duration, Invalid> {
        let Some(v) = value else {
            return Ok(default);
        };
        let d = parse_duration(v).map_err(|e| self.invalid(e))?;
        if d.is_zero() {
            return Err(self.invalid("must be greater than 0"));
        }
        Ok(d)
    }

    /// A duration that may be zero (a window that is off); zero when absent.
    pub fn window(&self, value: Option<&str>) -> Result<Duration, Invalid> {
        value.map_or(Ok(Duration::ZERO), |v| {
            parse_duration(v).map_err(|e| self.invalid(e))
        })
    }

    /// A size (`64KiB`, `8MiB`) greater than zero; `default` when absent.
    pub fn size(&self, value: Option<&str>, default: u64) -> Result<u64, Invalid> {
        let Some(v) = value else {
            return Ok(default);
        };
        let n = parse_size(v).map_err(|e| self.invalid(e))?;
        if n == 0 {
            return Err(self.invalid("must be greater than 0"));
        }
        Ok(n)
    }

    /// A count of at least 1; `default` when absent.
    pub fn threshold(&self, value: Option<i64>, default: u32) -> Result<u32, Invalid> {
        match value {
            None => Ok(default),
            Some(v) if v < 1 => Err(self.invalid("must be at least 1")),
            Some(v) => u32::try_from(v).map_err(|_| self.invalid("is too large")),
        }
    }

    /// `ip:port`, or `host:port` resolved now.
    /// A non-empty list of addresses at this key (`default` when absent), each checked by
    /// [`Key::socket_addr`] at its index.
    pub fn socket_addrs(
        &self,
        list: Option<Vec<String>>,
        default: &str,
    ) -> Result<Vec<SocketAddr>, Invalid> {
        let list = list.unwrap_or_else(|| vec![default.to_string()]);
        if list.is_empty() {
            return Err(self.invalid("needs at least one address"));
        }
        list.iter()
            .enumerate()
            .map(|(i, a)| self.index(i).socket_addr(a))
            .collect()
    }

    pub fn socket_addr(&self, text: &str) -> Result<SocketAddr, Invalid> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr);
        }
        if !text.contains(':') {
            return Err(self.invalid(format!(
                "`{text}` is not an address like 127.0.0.1:9001 or host:port"
            )));
        }
        match text.to_socket_addrs() {
            Ok(mut addrs) => addrs
                .next()
                .ok_or_else(|| self.invalid(format!("`{text}` resolves to no address"))),
            Err(e) => Err(self.invalid(format!("`{text}` is not a valid address: {e}"))),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An HTTP token (RFC 9110 §5.6.2): header and cookie names.
pub fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_compose() {
        let up = Key::root("upstreams").field("api");
        assert_eq!(
            up.field("backends").index(1).field("address").to_string(),
            "upstreams.api.backends[1].address"
        );
        assert_eq!(up.below(".").to_string(), "upstreams.api");
        assert_eq!(
            up.below("level.gzip").to_string(),
            "upstreams.api.level.gzip"
        );
    }

    #[test]
    fn value_checks_name_the_key() {
        let k = Key::root("server").field("grace_period");
        assert_eq!(
            k.duration(None, Duration::from_secs(3)),
            Ok(Duration::from_secs(3))
        );
        let err = k.duration(Some("0s"), Duration::ZERO).unwrap_err();
        assert_eq!(err.path, "server.grace_period");
        assert_eq!(k.window(Some("0s")), Ok(Duration::ZERO));
        assert!(k.size(Some("0"), 1).is_err());
        assert!(k.threshold(Some(0), 1).is_err());
        assert!(k.socket_addr("nope").is_err());
    }
}
