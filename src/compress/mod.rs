//! Response compression: gzip, brotli and zstd, negotiated by q-value, streamed, and done
//! before the cache stores a response so that a cached variant is compressed once.

pub mod encoder;
pub mod negotiate;

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use http::header::{
    ACCEPT_RANGES, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, VARY,
};
use pingora_http::ResponseHeader;

use crate::fields;
use encoder::Encoder;

/// An encoding Switchyard produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Brotli,
    Zstd,
    Gzip,
}

impl Algorithm {
    pub const ALL: [Algorithm; 3] = [Algorithm::Brotli, Algorithm::Zstd, Algorithm::Gzip];

    /// The `Content-Encoding` token.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Brotli => "br",
            Algorithm::Zstd => "zstd",
            Algorithm::Gzip => "gzip",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Compression levels per algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Levels {
    pub gzip: u32,
    pub br: u32,
    pub zstd: i32,
}

impl Default for Levels {
    fn default() -> Self {
        Levels {
            gzip: 6,
            br: 4,
            zstd: 3,
        }
    }
}

/// A route's compression settings (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Enabled encodings, in preference order for equal q-values.
    pub algorithms: Vec<Algorithm>,
    /// Bodies smaller than this (by `Content-Length`, when known) are sent as they are.
    pub min_size: u64,
    pub levels: Levels,
    /// `text/*`, `application/json`, `*/*`: media types compressed.
    pub types: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            algorithms: Algorithm::ALL.to_vec(),
            min_size: 1024,
            levels: Levels::default(),
            types: [
                "text/*",
                "application/json",
                "application/javascript",
                "application/xml",
                "image/svg+xml",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl Settings {
    fn compresses_type(&self, content_type: &str) -> bool {
        let media = media_type(content_type);
        let Some((kind, _)) = media.split_once('/') else {
            return false;
        };
        self.types.iter().any(|pattern| {
            pattern == "*/*"
                || *pattern == media
                || pattern
                    .strip_suffix("/*")
                    .is_some_and(|prefix| prefix == kind)
        })
    }
}

/// The media type of a `Content-Type` value, lowercase, without parameters.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Why a response is sent as it is, or `Ok` when it may be encoded.
pub fn eligible(settings: &Settings, resp: &ResponseHeader) -> Result<(), &'static str> {
    let status = resp.status.as_u16();
    if status < 200 || status == 204 || status == 206 || status == 304 {
        return Err("status");
    }
    if resp.headers.contains_key(CONTENT_ENCODING) {
        return Err("already encoded");
    }
    if resp.headers.contains_key(CONTENT_RANGE) {
        return Err("range");
    }
    if fields::list(&resp.headers, CACHE_CONTROL).any(|d| d.eq_ignore_ascii_case("no-transform")) {
        return Err("no-transform");
    }
    let content_type = resp
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Server-sent events are read event by event as they come; an encoder in between would
    // only add latency, whatever `types` says.
    if media_type(content_type) == "text/event-stream" {
        return Err("event stream");
    }
    if !settings.compresses_type(content_type) {
        return Err("type");
    }
    let length = resp
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n < settings.min_size) {
        return Err("small");
    }
    Ok(())
}

/// Adds `token` to `Vary` unless it is there (or `*` is).
pub fn merge_vary(resp: &mut ResponseHeader, token: &str) {
    if fields::list(&resp.headers, VARY).any(|t| t == "*" || t.eq_ignore_ascii_case(token)) {
        return;
    }
    let merged: Vec<String> = resp
        .headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .chain(std::iter::once(token.to_string()))
        .collect();
    let _ = resp.insert_header(VARY, merged.join(", "));
}

/// A strong ETag `"x"` names the encoded variant as `"x-br"`; weak ETags stay as they are.
pub fn variant_etag(etag: &str, alg: Algorithm) -> Option<String> {
    let etag = etag.trim();
    if etag.starts_with("W/") || !etag.starts_with('"') || !etag.ends_with('"') || etag.len() < 2 {
        return None;
    }
    Some(format!("\"{}-{}\"", &etag[1..etag.len() - 1], alg.name()))
}

/// Strips variant suffixes (`"x-br"` → `"x"`) from `If-None-Match` going upstream, so the
/// origin can validate the representation it made. Returns the algorithm of the suffix
/// removed, to put it back on the origin's 304.
pub fn strip_variant_suffixes(req: &mut pingora_http::RequestHeader) -> Option<Algorithm> {
    let value = req
        .headers
        .get(http::header::IF_NONE_MATCH)?
        .to_str()
        .ok()?
        .to_string();
    let mut found = None;
    let tags: Vec<String> = value
        .split(',')
        .map(|tag| {
            let tag = tag.trim();
            for alg in Algorithm::ALL {
                let suffix = format!("-{}\"", alg.name());
                if !tag.starts_with("W/") && tag.starts_with('"') && tag.ends_with(&suffix) {
                    found.get_or_insert(alg);
                    return format!("{}\"", &tag[..tag.len() - suffix.len()]);
                }
            }
            tag.to_string()
        })
        .collect();
    if found.is_some() {
        let _ = req.insert_header(http::header::IF_NONE_MATCH, tags.join(", "));
    }
    found
}

/// Which encoding this response gets: the one answer the proxy, the cache's variants and the
/// ETags follow. `None` when it is sent as it is (not eligible, or the client accepts none of
/// the route's algorithms). An eligible response varies on `Accept-Encoding` whether or not it
/// is encoded; an encoded one has its headers rewritten ([`encode_headers`]).
pub fn choose(
    settings: &Settings,
    accept_encoding: Option<&str>,
    resp: &mut ResponseHeader,
) -> Option<Algorithm> {
    eligible(settings, resp).ok()?;
    merge_vary(resp, "Accept-Encoding");
    let alg = negotiate::negotiate(accept_encoding, &settings.algorithms)?;
    encode_headers(resp, alg);
    Some(alg)
}

/// An origin's 304 validated the identity tag while the client (or the cache) holds the
/// variant encoded with `variant`: the 304 carries the variant's tag back.
pub fn on_not_modified(resp: &mut ResponseHeader, variant: Option<Algorithm>) {
    let Some(alg) = variant else {
        return;
    };
    if let Some(tag) = resp
        .headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| variant_etag(v, alg))
    {
        let _ = resp.insert_header(ETAG, tag);
    }
}

/// Rewrites the headers of a response about to be encoded with `alg`.
pub fn encode_headers(resp: &mut ResponseHeader, alg: Algorithm) {
    let _ = resp.insert_header(CONTENT_ENCODING, alg.name());
    resp.remove_header(&CONTENT_LENGTH);
    resp.remove_header(&ACCEPT_RANGES);
    if let Some(tag) = resp
        .headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| variant_etag(v, alg))
    {
        let _ = resp.insert_header(ETAG, tag);
    }
}

/// Per-algorithm counters for `/stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct CompressionStats {
    responses: [AtomicU64; 3],
    bytes_in: [AtomicU64; 3],
    bytes_out: [AtomicU64; 3],
}

impl CompressionStats {
    fn record(&self, alg: Algorithm, bytes_in: usize, bytes_out: usize) {
        let i = alg.index();
        self.bytes_in[i].fetch_add(bytes_in as u64, Ordering::Relaxed);
        self.bytes_out[i].fetch_add(bytes_out as u64, Ordering::Relaxed);
    }

    /// `(algorithm, responses, bytes_in, bytes_out)` for each algorithm.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64, u64)> {
        Algorithm::ALL
            .iter()
            .map(|a| {
                let i = a.index();
                (
                    a.name(),
                    self.responses[i].load(Ordering::Relaxed),
                    self.bytes_in[i].load(Ordering::Relaxed),
                    self.bytes_out[i].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

/// The encoder of one response in flight.
pub struct Stream {
    alg: Algorithm,
    encoder: Option<Encoder>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").field("alg", &self.alg).finish()
    }
}

impl Stream {
    /// Starts encoding a response body; counts the response.
    pub fn start(
        alg: Algorithm,
        levels: &Levels,
        stats: &CompressionStats,
    ) -> std::io::Result<Stream> {
        stats.responses[alg.index()].fetch_add(1, Ordering::Relaxed);
        Ok(Stream {
            alg,
            encoder: Some(Encoder::new(alg, levels)?),
        })
    }

    /// Replaces `body` (a chunk of the identity body) by its encoded form; at the end of the
    /// stream appends the encoder's trailer. Every chunk is flushed through the encoder, so
    /// what the upstream sent before a pause (an event, a line of a log stream) reaches the
    /// client at once instead of waiting in the encoder's window.
    pub fn filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        stats: &CompressionStats,
    ) -> std::io::Result<()> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        let input = body.take().unwrap_or_default();
        let mut out = BytesMut::new();
        if !input.is_empty() {
            out.extend_from_slice(&encoder.encode(&input)?);
            if !end_of_stream {
                out.extend_from_slice(&encoder.flush()?);
            }
        }
        if end_of_stream {
            if let Some(encoder) = self.encoder.take() {
                out.extend_from_slice(&encoder.finish()?);
            }
        }
        stats.record(self.alg, input.len(), out.len());
        if !out.is_empty() {
            *body = Some(out.freeze());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn skip_rules() {
        let s = Settings::default();
        let html = [("Content-Type", "text/html; charset=utf-8")];
        assert_eq!(eligible(&s, &resp(200, &html)), Ok(()));
        assert_eq!(eligible(&s, &resp(404, &html)), Ok(()));
        assert_eq!(eligible(&s, &resp(204, &html)), Err("status"));
        assert_eq!(eligible(&s, &resp(304, &html)), Err("status"));
        assert_eq!(eligible(&s, &resp(206, &html)), Err("status"));
        assert_eq!(eligible(&s, &resp(101, &html)), Err("status"));
        let mut enc = html.to_vec();
        enc.push(("Content-Encoding", "gzip"));
        assert_eq!(eligible(&s, &resp(200, &enc)), Err("already encoded"));
        let mut nt = html.to_vec();
        nt.push(("Cache-Control", "public, no-transform"));
        assert_eq!(eligible(&s, &resp(200, &nt)), Err("no-transform"));
        assert_eq!(
            eligible(&s, &resp(200, &[("Content-Type", "image/png")])),
            Err("type")
        );
        assert_eq!(eligible(&s, &resp(200, &[])), Err("type"));
        let sse = [("Content-Type", "Text/Event-Stream; charset=utf-8")];
        assert_eq!(eligible(&s, &resp(200, &sse)), Err("event stream"));
        let all = Settings {
            types: vec!["*/*".into()],
            ..Settings::default()
        };
        assert_eq!(eligible(&all, &resp(200, &sse)), Err("event stream"));
        let mut small = html.to_vec();
        small.push(("Content-Length", "100"));
        assert_eq!(eligible(&s, &resp(200, &small)), Err("small"));
        let mut range = html.to_vec();
        range.push(("Content-Range", "bytes 0-1/2"));
        assert_eq!(eligible(&s, &resp(200, &range)), Err("range"));
        assert_eq!(
            eligible(&s, &resp(200, &[("Content-Type", "application/json")])),
            Ok(())
        );
        assert_eq!(
            eligible(&s, &resp(200, &[("Content-Type", "IMAGE/SVG+XML")])),
            Ok(())
        );
    }

    #[test]
    fn vary_is_merged_once() {
        let mut r = resp(200, &[("Vary", "Origin")]);
        merge_vary(&mut r, "Accept-Encoding");
        assert_eq!(r.headers["vary"], "Origin, Accept-Encoding");
        merge_vary(&mut r, "Accept-Encoding");
        assert_eq!(r.headers.get_all("vary").iter().count(), 1);
        assert_eq!(r.headers["vary"], "Origin, Accept-Encoding");
        let mut lower = resp(200, &[("Vary", "accept-encoding")]);
        merge_vary(&mut lower, "Accept-Encoding");
        assert_eq!(lower.headers["vary"], "accept-encoding");
        let mut none = resp(200, &[]);
        merge_vary(&mut none, "Accept-Encoding");
        assert_eq!(none.headers["vary"], "Accept-Encoding");
    }

    #[test]
    fn etags_name_their_variant() {
        assert_eq!(
            variant_etag("\"x\"", Algorithm::Brotli).as_deref(),
            Some("\"x-br\"")
        );
        assert_eq!(
            variant_etag("\"x\"", Algorithm::Gzip).as_deref(),
            Some("\"x-gzip\"")
        );
        assert_eq!(variant_etag("W/\"x\"", Algorithm::Zstd), None);
        assert_eq!(variant_etag("unquoted", Algorithm::Zstd), None);
        let mut r = resp(200, &[("ETag", "\"v1\""), ("Content-Length", "5000")]);
        encode_headers(&mut r, Algorithm::Zstd);
        assert_eq!(r.headers["etag"], "\"v1-zstd\"");
        assert_eq!(r.headers["content-encoding"], "zstd");
        assert!(r.headers.get("content-length").is_none());
    }

    #[test]
    fn suffixes_are_stripped_for_the_origin() {
        let mut req = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("If-None-Match", "\"a-br\", W/\"b-gzip\", \"c\"")
            .unwrap();
        assert_eq!(strip_variant_suffixes(&mut req), Some(Algorithm::Brotli));
        assert_eq!(req.headers["if-none-match"], "\"a\", W/\"b-gzip\", \"c\"");
        let mut plain = pingora_http::RequestHeader::build("GET", b"/", None).unwrap();
        plain.insert_header("If-None-Match", "\"a\"").unwrap();
        assert_eq!(strip_variant_suffixes(&mut plain), None);
        assert_eq!(plain.headers["if-none-match"], "\"a\"");
    }

    #[test]
    fn stream_counts_bytes() {
        let stats = CompressionStats::default();
        let mut s = Stream::start(Algorithm::Gzip, &Levels::default(), &stats).unwrap();
        let page = encoder::sample_html(50_000);
        let mut out = Vec::new();
        for (i, chunk) in page.chunks(10_000).enumerate() {
            let mut body = Some(Bytes::copy_from_slice(chunk));
            s.filter(&mut body, i == 4, &stats).unwrap();
            out.extend_from_slice(&body.unwrap_or_default());
        }
        assert_eq!(encoder::decode_strict(Algorithm::Gzip, &out).unwrap(), page);
        let (name, responses, bytes_in, bytes_out) = stats.snapshot()[2];
        assert_eq!((name, responses, bytes_in), ("gzip", 1, 50_000));
        assert_eq!(bytes_out, out.len() as u64);
    }
}
