//! Request checks against cross-site requests and DNS rebinding: a page in a local browser can
//! send requests to the admin address, so the admin API accepts only its own `Host` names, no
//! foreign `Origin` on a request that changes something, and JSON bodies only.

use std::net::{IpAddr, SocketAddr};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use http::{HeaderMap, StatusCode};

/// Why the admin API refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("Host `{0}` is not this admin endpoint (add it to admin.hosts)")]
    Host(String),
    #[error("cross-origin request from `{0}` refused")]
    Origin(String),
    #[error("the request body must be Content-Type: application/json")]
    ContentType,
}

impl Refused {
    pub fn status(&self) -> StatusCode {
        match self {
            Refused::Host(_) | Refused::Origin(_) => StatusCode::FORBIDDEN,
            Refused::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

/// The `Host` must name this endpoint: its listen IP (any IP when it listens on all
/// addresses), `localhost`, or an `admin.hosts` entry. A name an attacker's DNS can point at
/// 127.0.0.1 is none of these. A request without `Host` (HTTP/1.0) comes from no browser.
pub fn check_host(
    headers: &HeaderMap,
    listen: SocketAddr,
    hosts: &[String],
) -> Result<(), Refused> {
    let Some(value) = headers.get(HOST) else {
        return Ok(());
    };
    let refused = || Refused::Host(String::from_utf8_lossy(value.as_bytes()).into_owned());
    let host = value
        .to_str()
        .map_err(|_| refused())?
        .trim()
        .to_ascii_lowercase();
    let name = host_name(&host);
    let allowed = name == "localhost"
        || hosts.iter().any(|h| *h == host || *h == name)
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip == listen.ip() || listen.ip().is_unspecified());
    if allowed {
        Ok(())
    } else {
        Err(refused())
    }
}

/// `Host` without its port: `[::1]:9901` → `[::1]`, `a.example:9901` → `a.example`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// A request that changes something: an `Origin`, when present, must be this endpoint's own
/// (`http://` or `https://` and the `Host` it was sent to; `null` is nobody's), and a body
/// must be JSON. Browsers send `Origin` on cross-origin POSTs, and cannot send JSON to another
/// origin without a CORS preflight, which the admin API never answers.
pub fn check_mutation(headers: &HeaderMap) -> Result<(), Refused> {
    if let Some(origin) = headers.get(ORIGIN) {
        let text = String::from_utf8_lossy(origin.as_bytes()).into_owned();
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.trim().to_ascii_lowercase());
        let lower = text.trim().to_ascii_lowercase();
        let authority = lower
            .strip_prefix("http://")
            .or_else(|| lower.strip_prefix("https://"));
        if authority.is_none() || authority != host.as_deref() {
            return Err(Refused::Origin(text));
        }
    }
    let has_body = headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    if has_body {
        let json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Refused::ContentType);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hosts() {
        let local: SocketAddr = "127.0.0.1:9901".parse().unwrap();
        let all: SocketAddr = "0.0.0.0:9901".parse().unwrap();
        let extra = ["admin.internal".to_string(), "ops.example:8443".to_string()];
        let ok = |host: &str, listen| check_host(&headers(&[("host", host)]), listen, &extra);
        for host in [
            "127.0.0.1:9901",
            "127.0.0.1",
            "localhost:9901",
            "LOCALHOST",
            "admin.internal",
            "Admin.Internal:9901",
            "ops.example:8443",
        ] {
            assert_eq!(ok(host, local), Ok(()), "{host}");
        }
        for host in [
            "evil.example:9901",
            "127.0.0.1.nip.io:9901",
            "10.0.0.5:9901",
            "ops.example:9901",
            "localhost.evil.example",
            "[::1]:9901",
        ] {
            assert!(matches!(ok(host, local), Err(Refused::Host(_))), "{host}");
        }
        assert_eq!(ok("10.0.0.5:9901", all), Ok(()));
        assert_eq!(ok("[::1]:9901", "[::]:9901".parse().unwrap()), Ok(()));
        assert!(ok("evil.example", all).is_err());
        assert_eq!(check_host(&HeaderMap::new(), local, &[]), Ok(()));
    }

    #[test]
    fn mutations() {
        let ok = |pairs: &[(&str, &str)]| check_mutation(&headers(pairs));
        assert_eq!(ok(&[]), Ok(()));
        assert_eq!(
            ok(&[("host", "127.0.0.1:9901"), ("content-length", "0")]),
            Ok(())
        );
        assert_eq!(
            ok(&[
                ("host", "127.0.0.1:9901"),
                ("origin", "http://127.0.0.1:9901")
            ]),
            Ok(())
        );
        assert_eq!(
            ok(&[
                ("host", "admin.internal"),
                ("origin", "HTTPS://Admin.Internal")
            ]),
            Ok(())
        );
        for origin in [
            "http://evil.example",
            "null",
            "http://127.0.0.1:8080",
            "ftp://127.0.0.1:9901",
        ] {
            assert_eq!(
                ok(&[("host", "127.0.0.1:9901"), ("origin", origin)]),
                Err(Refused::Origin(origin.into())),
                "{origin}"
            );
        }
        let json = [
            ("content-length", "12"),
            ("content-type", "application/json; charset=utf-8"),
        ];
        assert_eq!(ok(&json), Ok(()));
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ] {
            assert_eq!(
                ok(&[("content-length", "12"), ("content-type", bad)]),
                Err(Refused::ContentType),
                "{bad}"
            );
        }
        assert_eq!(ok(&[("content-length", "12")]), Err(Refused::ContentType));
        assert_eq!(
            ok(&[("transfer-encoding", "chunked")]),
            Err(Refused::ContentType)
        );
    }
}
