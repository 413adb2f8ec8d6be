//! Request checks before anything else runs: size limits, and the framing and Host rules of
//! RFC 9112 that keep a request from being read two ways (request smuggling). A request that
//! fails gets a 4xx and its connection is closed.

use pingora_http::RequestHeader;

use crate::config::Server;

/// Why a request is refused; [`Refusal::status`] is its answer and the message its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("request header too large")]
    HeaderTooLarge,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("unsupported Transfer-Encoding")]
    TransferEncoding,
    #[error("bare LF in request header")]
    BareLf,
    #[error("obsolete line folding")]
    ObsoleteFolding,
    #[error("invalid Content-Length")]
    InvalidLength,
    #[error("conflicting Content-Length")]
    ConflictingLength,
    #[error("more than one Host")]
    ManyHosts,
    #[error("missing Host")]
    MissingHost,
    #[error("invalid Host")]
    InvalidHost,
}

impl Refusal {
    /// The status the client gets.
    pub fn status(self) -> u16 {
        match self {
            Refusal::HeaderTooLarge => 431,
            Refusal::BodyTooLarge => 413,
            _ => 400,
        }
    }
}

/// Checks a request header (`raw` is the header as received, when Pingora kept it).
pub fn check(req: &RequestHeader, raw: Option<&[u8]>, limits: &Server) -> Result<(), Refusal> {
    if let Some(raw) = raw {
        if raw.len() as u64 > limits.max_header_size {
            return Err(Refusal::HeaderTooLarge);
        }
        check_raw(raw)?;
    } else {
        let size: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
            + req.raw_path().len();
        if size as u64 > limits.max_header_size {
            return Err(Refusal::HeaderTooLarge);
        }
    }
    check_host(req)?;
    let length = content_length(req)?;
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        if length.is_some() {
            return Err(Refusal::LengthAndChunked);
        }
        let codings: Vec<String> = req
            .headers
            .get_all(http::header::TRANSFER_ENCODING)
            .iter()
            .map(|v| {
                String::from_utf8_lossy(v.as_bytes())
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect();
        if codings != ["chunked"] {
            return Err(Refusal::TransferEncoding);
        }
    }
    Ok(())
}

/// A declared body larger than `max_body` (the route's or the server's `max_body_size`,
/// known once the request is routed) is refused before it is read; call after [`check`].
pub fn body_length(req: &RequestHeader, max_body: u64) -> Result<(), Refusal> {
    match content_length(req)? {
        Some(n) if n > max_body => Err(Refusal::BodyTooLarge),
        _ => Ok(()),
    }
}

/// Bare LF line ends and obs-fold continuation lines are refused, not guessed at; so is a
/// header with both framing fields, which a parser may otherwise quietly resolve (Pingora
/// drops `Content-Length` in favour of `Transfer-Encoding`) while another hop reads it the
/// other way.
fn check_raw(raw: &[u8]) -> Result<(), Refusal> {
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            return Err(Refusal::BareLf);
        }
        if b == b'\n' && matches!(raw.get(i + 1), Some(b' ' | b'\t')) {
            return Err(Refusal::ObsoleteFolding);
        }
    }
    let mut length = false;
    let mut chunked = false;
    for line in raw.split(|&b| b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        length |= name.eq_ignore_ascii_case(b"content-length");
        chunked |= name.eq_ignore_ascii_case(b"transfer-encoding");
    }
    if length && chunked {
        return Err(Refusal::LengthAndChunked);
    }
    Ok(())
}

/// One `Content-Length` (identical repeats allowed, as RFC 9110 §8.6 permits), all digits.
fn content_length(req: &RequestHeader) -> Result<Option<u64>, Refusal> {
    let mut found: Option<u64> = None;
    for value in req.headers.get_all(http::header::CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = std::str::from_utf8(part).unwrap_or("").trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Refusal::InvalidLength);
            }
            let n: u64 = part.parse().map_err(|_| Refusal::InvalidLength)?;
            match found {
                Some(prev) if prev != n => return Err(Refusal::ConflictingLength),
                _ => found = Some(n),
            }
        }
    }
    Ok(found)
}

/// Exactly one valid `Host` for HTTP/1.1 (RFC 9112 §3.2).
fn check_host(req: &RequestHeader) -> Result<(), Refusal> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::ManyHosts);
    }
    let Some(host) = host else {
        if req.version == http::Version::HTTP_11 && req.uri.authority().is_none() {
            return Err(Refusal::MissingHost);
        }
        return Ok(());
    };
    let valid = !host.is_empty()
        && host
            .as_bytes()
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b".-_:[]~!$&'()*+,;=%".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(Refusal::InvalidHost)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn limits() -> Server {
        let text =
            "upstreams:\n  a:\n    backends: [{address: 127.0.0.1:1}]\nroutes:\n  - upstream: a\n";
        let mut server = Config::parse(text, "t").unwrap().server;
        server.max_header_size = 256;
        server.max_body_size = 1000;
        server
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn code(headers: &[(&str, &str)]) -> Option<u16> {
        let req = req(headers);
        check(&req, None, &limits())
            .and_then(|()| body_length(&req, limits().max_body_size))
            .err()
            .map(Refusal::status)
    }

    #[test]
    fn framing_rules() {
        assert_eq!(code(&[("Host", "a")]), None);
        assert_eq!(code(&[("Host", "a"), ("Content-Length", "5")]), None);
        assert_eq!(code(&[("Host", "a"), ("Content-Length", "5, 5")]), None);
        assert_eq!(
            code(&[
                ("Host", "a"),
                ("Content-Length", "5"),
                ("Content-Length", "6")
            ]),
            Some(400)
        );
        assert_eq!(code(&[("Host", "a"), ("Content-Length", "-1")]), Some(400));
        assert_eq!(
            code(&[
                ("Host", "a"),
                ("Content-Length", "5"),
                ("Transfer-Encoding", "chunked")
            ]),
            Some(400)
        );
        assert_eq!(
            code(&[("Host", "a"), ("Transfer-Encoding", "gzip, chunked")]),
            Some(400)
        );
        assert_eq!(
            code(&[("Host", "a"), ("Transfer-Encoding", "Chunked")]),
            None
        );
        assert_eq!(
            code(&[("Host", "a"), ("Content-Length", "1001")]),
            Some(413)
        );
    }

    #[test]
    fn host_rules() {
        assert_eq!(code(&[]), Some(400));
        assert_eq!(code(&[("Host", "a"), ("Host", "b")]), Some(400));
        assert_eq!(code(&[("Host", "bad host")]), Some(400));
        assert_eq!(code(&[("Host", "a/b")]), Some(400));
        assert_eq!(code(&[("Host", "[::1]:8080")]), None);
        assert_eq!(code(&[("Host", "api.example.com:443")]), None);
    }

    #[test]
    fn raw_header_rules() {
        let ok = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(check(&req(&[("Host", "a")]), Some(ok), &limits()), Ok(()));
        let bare = b"GET / HTTP/1.1\nHost: a\r\n\r\n";
        assert_eq!(
            check(&req(&[("Host", "a")]), Some(bare), &limits())
                .unwrap_err()
                .status(),
            400
        );
        let both = b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            check(&req(&[("Host", "a")]), Some(both), &limits())
                .unwrap_err()
                .status(),
            400
        );
        let folded = b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n";
        assert_eq!(
            check(&req(&[("Host", "a")]), Some(folded), &limits())
                .unwrap_err()
                .status(),
            400
        );
        let big = [b'a'; 300];
        assert_eq!(
            check(&req(&[("Host", "a")]), Some(&big), &limits())
                .unwrap_err()
                .status(),
            431
        );
        let many: Vec<(String, String)> = (0..20)
            .map(|i| (format!("x-{i}"), "v".repeat(20)))
            .collect();
        let mut r = req(&[("Host", "a")]);
        for (k, v) in &many {
            r.append_header(k.clone(), v.as_str()).unwrap();
        }
        assert_eq!(check(&r, None, &limits()).unwrap_err().status(), 431);
    }
}
