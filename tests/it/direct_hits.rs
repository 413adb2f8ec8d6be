//! The front end's direct path for fresh cache hits against Pingora's cache path: random
//! requests (methods, paths in odd spellings, encodings, languages, conditionals, ranges,
//! cookies, pipelined pairs) go to one proxy with `cache.direct_hits` on and then, after a
//! reload turns it off, again; the answers must be the same but for `Age`, the request id and
//! the time left in `Cache-Status`, and every hit on either path carries the origin's `Date`.
//! Which answers went direct is read from `/stats` after each request or pipelined pair.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{serve_http1, spawn_proxy, upstream, Proxy};
use crate::tls::{tls_block, tls_client, Ca};

/// An origin whose answers depend only on the request (no counters), so that the two paths
/// can be compared byte for byte. Each answer repeats its `Date` in `X-Date`.
async fn spawn_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    serve_http1(listener, answer);
    addr
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    // Two seconds in the past, so that a `Date` written at the time of a hit never equals it.
    let date = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(2));
    let path = req.uri().path().to_string();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let mut resp = Response::builder()
        .header("date", &date)
        .header("x-date", &date)
        .header("content-type", "text/html")
        .header("etag", format!("\"{}\"", path.len()))
        .header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT");
    let mut body = format!("{} {} ", req.method(), req.uri());
    match path.as_str() {
        "/plain" => resp = resp.header("cache-control", "max-age=600"),
        "/lang" => {
            resp = resp
                .header("cache-control", "max-age=600")
                .header("vary", "Accept-Language");
            body.push_str(&header("accept-language"));
        }
        "/big" => {
            // Compressed by the proxy: stored without a length, answered chunked.
            resp = resp.header("cache-control", "public, max-age=600");
            body.push_str(&"switchyard direct hit ".repeat(200));
        }
        "/gone" => resp = resp.status(404).header("cache-control", "max-age=600"),
        "/private" => resp = resp.header("cache-control", "no-store"),
        "/noetag" => {
            // Stored with an ETag the cache makes; tags and an origin Age on top.
            resp = Response::builder()
                .header("date", &date)
                .header("x-date", &date)
                .header("cache-control", "max-age=600")
                .header("surrogate-key", "a b")
                .header("age", "5");
        }
        "/cookie" => {
            resp = resp
                .header("cache-control", "max-age=600")
                .header("set-cookie", "s=1");
        }
        _ => resp = resp.header("cache-control", "s-maxage=600"),
    }
    Ok(resp.body(Full::new(Bytes::from(body))).expect("response"))
}

/// One answer as the client saw it, with the fields the comparison ignores taken out.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

/// The request's answer, whether it was a hit and whether its `Date` is the origin's.
struct Seen {
    answer: Answer,
    origin_date: bool,
    hit: bool,
}

/// The answers to one request or one pipelined pair, and how many of them went direct.
struct Unit {
    seen: Vec<Seen>,
    direct: u64,
}

/// Reads more of the connection into `buf`.
async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16384];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(n > 0, "connection closed before the end of an answer");
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads one response to a request with `method` from `buf` (refilled from `s`).
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, method: &str) -> Seen {
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        read_more(s, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    buf.drain(..end + 4);
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status");
    let mut fields: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let origin_date = get("date").is_some() && get("date") == get("x-date");
    let hit = get("cache-status").is_some_and(|v| v.contains("; hit"));
    let chunked = get("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length: usize = get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let no_body = method == "HEAD" || status == 304 || status == 204;
    let mut body = Vec::new();
    if !no_body && chunked {
        loop {
            let line_end = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                read_more(s, buf).await;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                read_more(s, buf).await;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else if !no_body {
        while buf.len() < length {
            read_more(s, buf).await;
        }
        body = buf.drain(..length).collect();
    }
    for (name, value) in fields.iter_mut() {
        if name == "cache-status" {
            *value = value
                .split("; ")
                .map(|p| if p.starts_with("ttl=") { "ttl" } else { p })
                .collect::<Vec<_>>()
                .join("; ");
        }
    }
    // A multipart body's boundary is random per answer.
    let boundary = fields
        .iter()
        .find(|(k, _)| k == "content-type")
        .and_then(|(_, v)| v.split_once("boundary="))
        .map(|(_, b)| b.to_string());
    if let Some(boundary) = boundary.filter(|b| !b.is_empty()) {
        for (_, value) in fields.iter_mut() {
            *value = value.replace(&boundary, "BOUNDARY");
        }
        let text = String::from_utf8_lossy(&body).replace(&boundary, "BOUNDARY");
        body = text.into_bytes();
    }
    // Framing differs only in how the same body is sent; the rest must match. An answer that
    // is not a hit carries the `Date` of its own fetch; `origin_date` checks the hits'.
    let ignored = ["date", "age", "x-request-id", "x-date"];
    fields.retain(|(k, _)| !ignored.contains(&k.as_str()));
    fields.sort();
    Seen {
        answer: Answer {
            status,
            fields,
            body,
        },
        origin_date,
        hit,
    }
}

/// A random request: (method, its bytes).
fn random_request(rng: &mut StdRng) -> (String, String) {
    let method = match rng.random_range(0..10) {
        0..=5 => "GET",
        6..=8 => "HEAD",
        _ => "OPTIONS",
    };
    let paths = [
        "/plain",
        "/plain?q=1",
        "/lang",
        "/big",
        "/gone",
        "/private",
        "/cookie",
        "/other",
        "/noetag",
        "//plain",
        "/./plain",
        "/%70lain",
        "/a/../plain",
    ];
    let path = paths[rng.random_range(0..paths.len())];
    let host = ["example.com", "EXAMPLE.com", "example.com:80"][rng.random_range(0..3)];
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    let optional: [(&str, &[&str]); 11] = [
        (
            "Accept-Encoding",
            &[
                "gzip",
                "br",
                "gzip, br",
                "identity",
                "*;q=0",
                "zstd;q=0.5, gzip",
            ],
        ),
        ("Accept-Language", &["en", "fr, en;q=0.5", "EN", "de"]),
        (
            "Range",
            &[
                "bytes=0-3",
                "bytes=5-",
                "bytes=-4",
                "bytes=0-1, 4-5",
                "bytes=99999-",
            ],
        ),
        (
            "If-Range",
            &["\"6\"", "\"nope\"", "Sun, 06 Nov 1994 08:49:37 GMT"],
        ),
        ("If-None-Match", &["\"6\"", "\"nope\"", "*", "\"4\", \"6\""]),
        ("If-Modified-Since", &["Sun, 06 Nov 1994 08:49:37 GMT"]),
        ("Cookie", &["a=b"]),
        ("Cache-Control", &["max-age=0", "no-cache"]),
        ("X-Request-Id", &["client-chosen"]),
        ("User-Agent", &["test/1", "other"]),
        ("Accept", &["*/*", "text/html"]),
    ];
    for (name, values) in optional {
        // Each optional field in about a quarter of requests; the rarer ones less.
        let odds = if matches!(name, "Range" | "If-Range" | "Cookie" | "Cache-Control") {
            8
        } else {
            4
        };
        if rng.random_range(0..odds) == 0 {
            let value = values[rng.random_range(0..values.len())];
            text.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    text.push_str("\r\n");
    (method.to_string(), text)
}

/// The `/stats` count of hits the direct path answered.
async fn direct_hits(proxy: &Proxy) -> u64 {
    proxy.stats().await["cache"]["direct_hits"]
        .as_u64()
        .expect("direct_hits")
}

/// Sends `requests` on one connection, some as pipelined pairs, and reads every answer, with
/// how many answers of each request or pair the direct path gave.
async fn send_all(proxy: &Proxy, requests: &[(String, String)], pairs: &[bool]) -> Vec<Unit> {
    let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut buf = Vec::new();
    let mut units = Vec::new();
    let mut count = direct_hits(proxy).await;
    let mut i = 0;
    while i < requests.len() {
        let pair = pairs[i] && i + 1 < requests.len();
        let (method, text) = &requests[i];
        let mut seen = Vec::new();
        if pair {
            let both = format!("{text}{}", requests[i + 1].1);
            s.write_all(both.as_bytes()).await.expect("write");
            seen.push(read_answer(&mut s, &mut buf, method).await);
            seen.push(read_answer(&mut s, &mut buf, &requests[i + 1].0).await);
            i += 2;
        } else {
            s.write_all(text.as_bytes()).await.expect("write");
            seen.push(read_answer(&mut s, &mut buf, method).await);
            i += 1;
        }
        let now = direct_hits(proxy).await;
        units.push(Unit {
            seen,
            direct: now - count,
        });
        count = now;
    }
    units
}

fn config(origin: SocketAddr, direct: bool) -> String {
    format!(
        "cache:\n  direct_hits: {direct}\ncompression:\n  algorithms: [br, gzip]\n  min_size: 1024\n\
         server:\n  listen: [\"127.0.0.1:0\"]\n  response_headers: {{ set: {{ X-Frame-Options: DENY }} }}\n\
         upstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    cache: {{ enabled: true }}\n    \
         response_headers: {{ add: {{ X-Route: main }} }}\n",
        upstream("pool", &[(origin, 1)], "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_hits_answer_exactly_as_the_pingora_path_and_both_keep_the_origin_date() {
    let origin = spawn_origin().await;
    let proxy = spawn_proxy(&config(origin, true)).await;
    let seed: u64 = std::env::var("DIRECT_HITS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("direct hit comparison seed {seed} (DIRECT_HITS_SEED to repeat)");
    let mut rng = StdRng::seed_from_u64(seed);
    let requests: Vec<(String, String)> = (0..300).map(|_| random_request(&mut rng)).collect();
    let pairs: Vec<bool> = (0..requests.len())
        .map(|_| rng.random_range(0..5) == 0)
        .collect();

    // Fill the cache with every variant the requests ask for.
    send_all(&proxy, &requests, &pairs).await;
    let direct = send_all(&proxy, &requests, &pairs).await;

    proxy.rewrite_config(&config(origin, false));
    let (status, body) = proxy.reload().await;
    assert_eq!(status, 200, "{body}");
    let pingora = send_all(&proxy, &requests, &pairs).await;
    assert!(
        pingora.iter().all(|u| u.direct == 0),
        "with direct_hits off no hit is direct"
    );

    let direct_seen = direct.iter().flat_map(|u| &u.seen);
    let pingora_seen = pingora.iter().flat_map(|u| &u.seen);
    for (i, ((d, p), (_, text))) in direct_seen.zip(pingora_seen).zip(&requests).enumerate() {
        assert_eq!(
            d.answer, p.answer,
            "request {i} (seed {seed}) answered differently:\n{text}"
        );
        for (path, s) in [("direct", d), ("Pingora's", p)] {
            assert!(
                !s.hit || s.origin_date,
                "request {i} (seed {seed}): a hit on {path} path without the stored Date\n{text}"
            );
        }
    }
    let served_direct: u64 = direct.iter().map(|u| u.direct).sum();
    println!("{served_direct} of {} answers went direct", requests.len());
    assert!(
        served_direct > 20,
        "only {served_direct} direct hits (seed {seed})"
    );
    // Only hits go direct, and every hit that needed nothing but the stored answer does.
    let mut at = 0;
    for unit in &direct {
        let texts = &requests[at..at + unit.seen.len()];
        at += unit.seen.len();
        let hits = unit.seen.iter().filter(|s| s.hit).count() as u64;
        let plain_hits = unit
            .seen
            .iter()
            .zip(texts)
            .filter(|(s, (method, text))| {
                // Several ranges make a multipart body, which is Pingora's to write.
                let plain = !["Range: bytes=0-1, 4-5", "Cookie", "Cache-Control"]
                    .iter()
                    .any(|f| text.contains(f));
                s.hit && plain && method != "OPTIONS"
            })
            .count() as u64;
        let shown: Vec<&str> = texts.iter().map(|(_, t)| t.as_str()).collect();
        assert!(
            plain_hits <= unit.direct && unit.direct <= hits,
            "{} of {plain_hits} plain hits ({hits} hits) went direct (seed {seed}):\n{}",
            unit.direct,
            shown.join("")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_fresh_hit_goes_direct_with_hsts_and_http2_hits_go_through_pingora() {
    let origin = spawn_origin().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("ca");
    let pair = ca.leaf(&["h.test"]).write(dir.path(), "h");
    let proxy = spawn_proxy(&format!(
        "{}upstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    \
         cache: {{ enabled: true }}\n    hsts: \"max-age=600\"\n",
        tls_block(&[pair], ""),
        upstream("pool", &[(origin, 1)], "")
    ))
    .await;
    let addr = proxy.tls.expect("TLS listener");
    let url = format!("https://h.test:{}/plain", addr.port());
    let h1 = tls_client(Some(&ca), "h.test", addr)
        .http1_only()
        .build()
        .expect("client");
    let field = |resp: &reqwest::Response, name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let miss = h1.get(&url).send().await.expect("miss");
    assert!(field(&miss, "cache-status").contains("fwd=miss"));
    let hit = h1.get(&url).send().await.expect("hit");
    assert_eq!(hit.version(), reqwest::Version::HTTP_11);
    assert!(
        field(&hit, "cache-status").contains("; hit"),
        "{:?}",
        hit.headers()
    );
    assert_eq!(
        field(&hit, "date"),
        field(&hit, "x-date"),
        "the stored Date"
    );
    assert_eq!(field(&hit, "strict-transport-security"), "max-age=600");
    assert_eq!(hit.text().await.expect("body"), "GET /plain ");
    assert_eq!(direct_hits(&proxy).await, 1);

    // HTTP/2 streams are Pingora's: the same hit with the stored `Date`, not counted as direct.
    let h2 = tls_client(Some(&ca), "h.test", addr)
        .build()
        .expect("client");
    let hit = h2.get(&url).send().await.expect("h2 hit");
    assert_eq!(hit.version(), reqwest::Version::HTTP_2);
    assert!(field(&hit, "cache-status").contains("; hit"));
    assert_eq!(
        field(&hit, "date"),
        field(&hit, "x-date"),
        "the stored Date"
    );
    assert_eq!(field(&hit, "strict-transport-security"), "max-age=600");
    assert_eq!(hit.text().await.expect("body"), "GET /plain ");
    assert_eq!(direct_hits(&proxy).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_range_of_a_fresh_hit_goes_direct_and_several_go_through_pingora() {
    let origin = spawn_origin().await;
    let proxy = spawn_proxy(&config(origin, true)).await;
    let get = |extra: &str| {
        (
            "GET".to_string(),
            format!("GET /plain HTTP/1.1\r\nHost: example.com\r\n{extra}\r\n"),
        )
    };
    let requests = [
        get(""),
        get(""),
        get("Range: bytes=2-5\r\n"),
        get("Range: bytes=-3\r\nIf-Range: \"6\"\r\n"),
        get("Range: bytes=2-5\r\nIf-Range: \"other\"\r\n"),
        get("Range: bytes=99999-\r\n"),
        get("Range: bytes=0-1, 4-5\r\n"),
    ];
    let units = send_all(&proxy, &requests, &[false; 7]).await;
    let seen: Vec<&Seen> = units.iter().map(|u| &u.seen[0]).collect();
    let went_direct: Vec<u64> = units.iter().map(|u| u.direct).collect();
    // Two whole answers, two single ranges and the 416; not the miss nor the multipart body.
    assert_eq!(
        went_direct,
        [0, 1, 1, 1, 1, 1, 0],
        "which answers went direct"
    );
    let field = |s: &Seen, name: &str| {
        s.answer
            .fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let (miss, full) = (&seen[0], &seen[1]);
    assert!(!miss.hit && full.hit && full.origin_date);
    let body = &full.answer.body;
    assert_eq!(body.as_slice(), b"GET /plain ");
    assert_eq!(field(full, "accept-ranges").as_deref(), Some("bytes"));

    let one = &seen[2];
    assert_eq!(one.answer.status, 206);
    assert!(one.origin_date, "the stored Date");
    assert_eq!(one.answer.body, body[2..6]);
    let total = body.len();
    assert_eq!(
        field(one, "content-range"),
        Some(format!("bytes 2-5/{total}"))
    );
    assert_eq!(field(one, "accept-ranges"), None);

    let suffix = &seen[3];
    assert_eq!((suffix.answer.status, suffix.origin_date), (206, true));
    assert_eq!(suffix.answer.body, body[total - 3..]);
    // Another validator in If-Range: the whole response.
    let whole = &seen[4];
    assert_eq!((whole.answer.status, whole.origin_date), (200, true));
    assert_eq!(&whole.answer.body, body);

    let unsatisfiable = &seen[5];
    assert_eq!(
        (unsatisfiable.answer.status, unsatisfiable.origin_date),
        (416, true)
    );
    assert_eq!(
        field(unsatisfiable, "content-range"),
        Some(format!("bytes */{total}"))
    );
    assert!(unsatisfiable.answer.body.is_empty());

    // Several ranges: a multipart body, from Pingora's path, with the stored `Date` too.
    let several = &seen[6];
    assert_eq!(several.answer.status, 206);
    assert!(several.hit && several.origin_date);
    let content_type = field(several, "content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("multipart/byteranges"),
        "{content_type}"
    );
}
