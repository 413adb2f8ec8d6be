//! The direct path for fresh cache hits on HTTP/1.1 (plain or TLS): the front end answers a
//! GET or HEAD whose route caches, and for which the memory tier holds a fresh variant, in one
//! write, before Pingora's session exists. It is the one case where the proxy does no upstream
//! work, so Pingora's per-request machinery (session, cache state machine, phases) is all cost.
//!
//! It adds no rule of its own: the same request checks (`limits`), path normal form (`gate`),
//! routing, policy (`gate::verdict`), cache key, variance and freshness (`cache::fresh`), and the
//! same response fields (`RequestCtx::own_fields`, `etag`, header rules), metrics and access log
//! (`observe::record`) as the Pingora path, and the stored `Date`, as Pingora's writers (patched,
//! `vendor/README.md`) keep it. `If-None-Match` and `If-Modified-Since` are answered here too (the
//! 304 from the stored validators, as `cache_not_modified_filter` answers them), and so are `Range`
//! and `If-Range` with one range (the 206 or 416 from Pingora's own range filter, the body cut from
//! the stored one). Anything unusual falls back to Pingora with nothing written and nothing
//! counted: another method or version, a body of several ranges (multipart), a field that asks for
//! more than a stored answer (`If-Match`, `If-Unmodified-Since`, request directives, cookies,
//! credentials, a body, `Connection`, `Upgrade`, `Expect`), a miss, a stale entry, or a refusal
//! (which Pingora's path then answers). The policy runs last, after the lookup, so a request that
//! falls back has used no rate budget.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{BufMut, BytesMut};
use pingora_core::protocols::Stream;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::RangeType;
use tokio::io::AsyncWriteExt;

use super::ctx::RequestCtx;
use super::gate::{self, Verdict};
use super::limits;
use super::observe::{self, Finished};
use super::{request_host, route_of};
use crate::cache::{fresh, Lookup};
use crate::etag;
use crate::fields;
use crate::policy::normalize::normalize;
use crate::route;
use crate::state::Shared;

/// Request fields that send a request to Pingora's path: each asks for something a stored
/// answer is not (a precondition on a write, a validation upstream, a body, another protocol,
/// per-user content).
const FALLBACK_FIELDS: [&str; 14] = [
    "if-match",
    "if-unmodified-since",
    "cache-control",
    "pragma",
    "cookie",
    "authorization",
    "connection",
    "upgrade",
    "expect",
    "te",
    "transfer-encoding",
    "content-length",
    "http2-settings",
    crate::cache::warm::WARM_HEADER,
];

/// The most fields a request on this path has; one with more goes to Pingora.
const MAX_FIELDS: usize = 64;

/// Bodies up to this size are copied behind the header so that the answer is one write.
const COPY_BODY: usize = 16 << 10;

/// The connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Conn<'a> {
    pub tls: bool,
    /// The client's address (the PROXY protocol source where there is one).
    pub peer: Option<IpAddr>,
    pub tls_version: Option<&'a str>,
    /// The server is shutting down: the answer says `Connection: close`.
    pub closing: bool,
}

/// How a request the direct path took ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Answered; the connection may carry the next request.
    KeepAlive,
    /// Answered (or the write failed): close the connection.
    Close,
}

/// Answers `head` (one whole request header, nothing after it) from the cache when it is a
/// plain fresh hit; `None`: nothing was written, and Pingora's path takes the request.
pub async fn serve(
    shared: &Arc<Shared>,
    head: &[u8],
    stream: &mut Stream,
    conn: Conn<'_>,
) -> Option<Served> {
    if !(head.starts_with(b"GET ") || head.starts_with(b"HEAD ")) {
        return None;
    }
    let runtime = shared.runtime();
    if !runtime.config.cache.direct_hits || !runtime.router.caches() {
        return None;
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let parsed = parse(head, &mut fields)?;
    // Routed from the parsed bytes when no route reads other fields than `Host`, so that a
    // request for a route that does not cache (pass-through) costs little more than the parse
    // before it goes to Pingora.
    let early = if runtime.router.matches_headers() {
        None
    } else {
        let (index, route) = parsed.route(&runtime.router)?;
        route.cache.as_ref()?;
        Some(index)
    };
    let mut req = parsed.header()?;
    limits::check(&req, Some(head), &runtime.config.server).ok()?;
    if !gate::normalise_path(&mut req) {
        return None;
    }
    let host = request_host(&req).unwrap_or("");
    let index = match early {
        Some(index) => index,
        None => route_of(&runtime.router, &req)?.0,
    };
    let route = runtime.config.routes.get(index)?;
    let cache = route.cache.as_ref()?;
    if route.redirect.is_some() || (route.https_redirect && !conn.tls) {
        return None;
    }
    let algorithms = route.compression.as_ref().map(|s| s.algorithms.as_slice());
    let memory = &shared.cache.storage.memory;
    let now = SystemTime::now();
    let entry = fresh::lookup(memory, host, &req, algorithms, cache.keyed_cookies(), now)?;
    let (mut resp, not_modified, range) = fresh::hit_header(&entry, &req);
    // What of the stored body goes out: all of it, one range, or nothing (a 304, a HEAD, a
    // 416). A body of several ranges is multipart, which Pingora's range body filter writes.
    let header_only =
        not_modified || req.method == http::Method::HEAD || matches!(range, RangeType::Invalid);
    let body = match &range {
        _ if header_only => None,
        RangeType::None => Some(&entry.body[..]),
        RangeType::Single(r) => Some(entry.body.get(r.clone())?),
        RangeType::Multi(_) | RangeType::Invalid => return None,
    };

    let mut ctx = RequestCtx::new(shared.begin_request());
    ctx.tls = conn.tls;
    let trusted = &runtime.config.server.trusted_proxies;
    gate::identify_request(&req, conn.peer, trusted, &mut ctx);
    ctx.runtime = Some(Arc::clone(&runtime));
    ctx.route = Some(index);
    if !matches!(gate::verdict(&req, &ctx).await, Verdict::Admit) {
        ctx.withdraw();
        return None;
    }
    // The request has taken its share of any rate limit: from here it is answered here.
    if decorate(&mut resp, &req, &ctx, host, &entry).is_err() {
        // A header rule made an invalid field: Pingora's path answers that (500) and logs it.
        // The request takes its rate budget twice on this error path only.
        ctx.withdraw();
        return None;
    }
    shared.cache.count(Lookup::Hit, Some(&entry.primary));
    let direct = &shared.cache.counters.direct_hits;
    direct.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ctx.observed.cache = Some(Lookup::Hit.as_str());
    if let Some(series) = ctx.series() {
        shared.metrics.observe_cache(series, Lookup::Hit);
    }
    let keep_alive = !conn.closing;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let _ = resp.insert_header(http::header::CONNECTION, connection);
    // The stored `Date` goes out (the cache adds the time it received a response that had
    // none); an entry without one gets the time of the answer.
    if !resp.headers.contains_key(http::header::DATE) {
        let date = pingora_core::protocols::http::date::get_cached_date();
        let _ = resp.insert_header(http::header::DATE, date);
    }
    let written = write(stream, &resp, body).await;
    let facts = Finished {
        req: &req,
        code: resp.status.as_u16(),
        tls: conn.tls,
        h2: false,
        bytes_read: 0,
        bytes_sent: body.map_or(0, |b| b.len() as u64),
        peer: conn.peer,
        encoding: resp.headers.get(http::header::CONTENT_ENCODING),
        tls_version: conn.tls_version.map(str::to_string),
    };
    let error = written.as_ref().err().map(|e| {
        pingora_error::Error::because(pingora_error::ErrorType::WriteError, "", e.to_string())
    });
    observe::record(shared, &facts, error.as_deref(), &mut ctx);
    match written {
        Ok(()) if keep_alive => Some(Served::KeepAlive),
        _ => Some(Served::Close),
    }
}

/// The fields the Pingora path puts on a hit in `response_filter`, in its order: the proxy's
/// own, the ETag made at store time, targeted fields stripped, `Cache-Status`, header rules.
fn decorate(
    resp: &mut ResponseHeader,
    req: &RequestHeader,
    ctx: &RequestCtx,
    host: &str,
    entry: &crate::cache::memory::Entry,
) -> pingora_error::Result<()> {
    ctx.own_fields(resp)?;
    etag::on_response(req, resp, true);
    if let Some(strip) = ctx.strip_targeted() {
        fields::remove_where(resp, |name| strip.contains(name));
    }
    resp.insert_header("Cache-Status", fresh::hit_status(&entry.meta))?;
    gate::on_response(resp, ctx, host)
}

/// A request header as parsed, before anything is built from it.
struct Parsed<'h, 'b> {
    method: &'b str,
    path: &'b str,
    fields: &'h [httparse::Header<'b>],
}

impl Parsed<'_, '_> {
    /// The route, when no route reads header fields other than `Host`: found from the parsed
    /// bytes without building a request header.
    fn route<'r>(&self, router: &'r route::Router) -> Option<(usize, &'r crate::config::Route)> {
        let mut hosts = self
            .fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("host"));
        // As `request_host` reads it: a value that is not visible ASCII is no host.
        let host = match hosts.next() {
            Some(field) => std::str::from_utf8(field.value)
                .ok()
                .filter(|v| v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
                .unwrap_or(""),
            None => "",
        };
        let (path, query) = match self.path.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (self.path, None),
        };
        let path = normalize(path).ok()?;
        let method = http::Method::from_bytes(self.method.as_bytes()).ok()?;
        router.find(&route::Request {
            host,
            path: &path,
            query,
            method: &method,
            headers: &http::HeaderMap::new(),
        })
    }

    /// The whole request header.
    fn header(&self) -> Option<RequestHeader> {
        let mut req = RequestHeader::build_no_case(
            self.method,
            self.path.as_bytes(),
            Some(self.fields.len()),
        )
        .ok()?;
        for field in self.fields {
            let name = http::HeaderName::from_bytes(field.name.as_bytes()).ok()?;
            let value = http::HeaderValue::from_bytes(field.value).ok()?;
            req.append_header(name, value).ok()?;
        }
        Some(req)
    }
}

/// `head` parsed, when it is a whole HTTP/1.1 request header in origin form with no field from
/// [`FALLBACK_FIELDS`] and nothing after it.
fn parse<'h, 'b>(head: &'b [u8], fields: &'h mut [httparse::Header<'b>]) -> Option<Parsed<'h, 'b>> {
    let mut parsed = httparse::Request::new(fields);
    match parsed.parse(head) {
        Ok(httparse::Status::Complete(n)) if n == head.len() => {}
        _ => return None,
    }
    let (method, path) = (parsed.method?, parsed.path?);
    if parsed.version != Some(1) || !path.starts_with('/') {
        return None;
    }
    let fields: &'h [httparse::Header<'b>] = parsed.headers;
    let unusual = fields.iter().any(|f| {
        FALLBACK_FIELDS
            .iter()
            .any(|name| f.name.eq_ignore_ascii_case(name))
    });
    (!unusual).then_some(Parsed {
        method,
        path,
        fields,
    })
}

/// Writes the status line, `resp`'s fields and `body` (chunked when `resp` says so) as one
/// write when the body is small. Pingora's own writer of a response header is private; this
/// is its wire form (`header_to_h1_wire` keeps the stored fields' order).
async fn write(
    stream: &mut Stream,
    resp: &ResponseHeader,
    body: Option<&[u8]>,
) -> std::io::Result<()> {
    let body_len = body.map_or(0, <[u8]>::len);
    let copy = body_len <= COPY_BODY;
    let mut buf = BytesMut::with_capacity(512 + if copy { body_len + 16 } else { 16 });
    buf.put_slice(b"HTTP/1.1 ");
    buf.put_slice(resp.status.as_str().as_bytes());
    buf.put_u8(b' ');
    if let Some(reason) = resp.get_reason_phrase() {
        buf.put_slice(reason.as_bytes());
    }
    buf.put_slice(b"\r\n");
    resp.header_to_h1_wire(&mut buf);
    buf.put_slice(b"\r\n");
    let chunked = resp.headers.contains_key(http::header::TRANSFER_ENCODING);
    if let Some(body) = body {
        if chunked && !body.is_empty() {
            buf.put_slice(format!("{:X}\r\n", body.len()).as_bytes());
        }
        if copy {
            buf.put_slice(body);
        } else {
            stream.write_all(&buf).await?;
            buf.clear();
            stream.write_all(body).await?;
        }
        if chunked {
            if !body.is_empty() {
                buf.put_slice(b"\r\n");
            }
            buf.put_slice(b"0\r\n\r\n");
        }
    }
    stream.write_all(&buf).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http11_requests_in_origin_form_are_taken() {
        let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let head = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n";
        let ok = parse(head, &mut fields).unwrap().header().unwrap();
        assert_eq!(ok.uri.path(), "/a");
        assert_eq!(ok.uri.query(), Some("b=1"));
        assert_eq!(ok.headers.len(), 2);
        for refused in [
            &b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..],
            b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nIf-Match: \"a\"\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\ncookie: a=b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nCache-Control: no-cache\r\n\r\n",
            // Anything after the header (a body, the next request) is Pingora's to read.
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
            let parsed = parse(refused, &mut fields);
            assert!(parsed.is_none(), "{}", String::from_utf8_lossy(refused));
        }
    }

    #[test]
    fn a_chunked_answer_frames_its_body() {
        let mut resp = ResponseHeader::build_no_case(200, None).unwrap();
        resp.insert_header("transfer-encoding", "chunked").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (client, server) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            (client, server)
        });
        let mut stream: Stream =
            Box::new(pingora_core::protocols::l4::stream::Stream::from(server));
        let mut client = client;
        let got = rt.block_on(async {
            write(&mut stream, &resp, Some(b"hello")).await.unwrap();
            drop(stream);
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got)
                .await
                .unwrap();
            got
        });
        let text = String::from_utf8(got).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), "{text}");
    }
}
