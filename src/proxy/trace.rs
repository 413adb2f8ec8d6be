//! Request ids and W3C trace context. `X-Request-Id` is kept from a trusted peer and made
//! otherwise (128 random bits, hex); `traceparent` is passed on when valid, and a new trace is
//! started when it is absent or malformed, so that every backend sees one. The ids go
//! upstream, on the response, into the access log and into error bodies.

use http::HeaderValue;
use pingora_http::RequestHeader;

pub const REQUEST_ID: &str = "x-request-id";
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Longest request id kept from a trusted peer.
const MAX_ID_LEN: usize = 128;

/// The ids of one request (`RequestCtx::ids`).
#[derive(Debug, Default)]
pub struct Ids {
    pub request_id: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// The `traceparent` sent upstream.
    pub traceparent: String,
    /// The `tracestate` sent upstream (only with a `traceparent` that came in valid).
    pub tracestate: Option<String>,
}

/// The low `digits` hex digits of `value`, appended to `out`. Written out by hand: the
/// formatting machinery of `format!("{:032x}")` cost more than the rest of a cache hit's ids.
fn push_hex(out: &mut String, value: u128, digits: u32) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for i in (0..digits).rev() {
        out.push(char::from(HEX[((value >> (4 * i)) & 0xf) as usize]));
    }
}

/// 128 random bits as 32 hex digits.
fn random_128() -> String {
    let mut out = String::with_capacity(32);
    push_hex(&mut out, rand::random::<u128>(), 32);
    out
}

/// A request id worth keeping: short, visible ASCII.
fn acceptable_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    (!text.is_empty() && text.len() <= MAX_ID_LEN && text.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(text)
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, not all-zero ids (W3C Trace
/// Context §3.2). Returns the trace id. A later version may append fields after the flags.
fn parse_traceparent(text: &str) -> Option<&str> {
    let text = text.trim();
    let mut parts = text.splitn(5, '-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.next().is_none())
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    valid.then_some(trace)
}

/// The ids for `req`; `trusted`: the TCP peer is a trusted proxy.
pub fn ids(req: &RequestHeader, trusted: bool) -> Ids {
    let request_id = req
        .headers
        .get(REQUEST_ID)
        .filter(|_| trusted)
        .and_then(acceptable_id)
        .map_or_else(random_128, str::to_string);
    let incoming = req
        .headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|text| Some((text.trim(), parse_traceparent(text)?)));
    match incoming {
        Some((traceparent, trace_id)) => Ids {
            request_id,
            trace_id: trace_id.to_string(),
            traceparent: traceparent.to_string(),
            tracestate: req
                .headers
                .get(TRACESTATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        },
        None => {
            let trace_id = random_128();
            let mut traceparent = String::with_capacity(55);
            traceparent.push_str("00-");
            traceparent.push_str(&trace_id);
            traceparent.push('-');
            push_hex(&mut traceparent, u128::from(rand::random::<u64>() | 1), 16);
            traceparent.push_str("-00");
            Ids {
                request_id,
                traceparent,
                trace_id,
                tracestate: None,
            }
        }
    }
}

/// Sets the ids on the request going upstream (replacing what the client sent).
pub fn on_upstream_request(upstream: &mut RequestHeader, ids: &Ids) -> pingora_error::Result<()> {
    upstream.insert_header(REQUEST_ID, &ids.request_id)?;
    upstream.insert_header(TRACEPARENT, &ids.traceparent)?;
    match &ids.tracestate {
        Some(state) => upstream.insert_header(TRACESTATE, state)?,
        None => {
            upstream.remove_header(TRACESTATE);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn hex_digits_are_written_high_first_with_leading_zeros() {
        let mut s = String::new();
        push_hex(&mut s, 0xab, 4);
        assert_eq!(s, "00ab");
        let mut s = String::new();
        push_hex(&mut s, u128::MAX - 1, 32);
        assert_eq!(s, format!("{:032x}", u128::MAX - 1));
    }

    #[test]
    fn request_ids_are_kept_only_from_trusted_peers() {
        let r = req(&[("x-request-id", "abc-123")]);
        assert_eq!(ids(&r, true).request_id, "abc-123");
        let made = ids(&r, false).request_id;
        assert_eq!(made.len(), 32);
        assert!(made.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(made, ids(&r, false).request_id);
        assert_eq!(
            ids(&req(&[("x-request-id", "a b")]), true).request_id.len(),
            32
        );
    }

    #[test]
    fn traceparent_is_kept_when_valid_and_started_otherwise() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let got = ids(&req(&[("traceparent", tp), ("tracestate", "a=1")]), false);
        assert_eq!(got.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(got.traceparent, tp);
        assert_eq!(got.tracestate.as_deref(), Some("a=1"));
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let got = ids(&req(&[("traceparent", bad), ("tracestate", "a=1")]), false);
            assert_ne!(got.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(parse_traceparent(&got.traceparent).is_some());
            assert_eq!(got.tracestate, None);
        }
    }
}
