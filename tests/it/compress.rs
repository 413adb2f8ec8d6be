//! Compression over real sockets: strict decoding, negotiation, skip rules, Vary, ETags, and
//! compress-once with the cache.

use switchyard::compress::encoder::{decode_strict, sample_html};
use switchyard::compress::Algorithm;

use crate::common::{client, spawn_origin, spawn_proxy, upstream, Origin, Proxy};

const PAGE: &str = "/page?page=102400&type=text/html";

async fn proxy_with(origin: &Origin, route_extra: &str) -> Proxy {
    spawn_proxy(&format!(
        "compression:\n  algorithms: [br, zstd, gzip]\n  min_size: 1024\nupstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n{route_extra}",
        upstream("pool", &[(origin.addr, 1)], "")
    ))
    .await
}

struct Answer {
    status: u16,
    encoding: Option<String>,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

/// A client that does not decode bodies itself.
async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = client().get(proxy.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = request.send().await.unwrap();
    let headers = resp.headers().clone();
    Answer {
        status: resp.status().as_u16(),
        encoding: headers
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string()),
        headers,
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_algorithm_decodes_strictly_and_shrinks_html() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "").await;
    let original = sample_html(102400);
    for alg in Algorithm::ALL {
        let a = get(&proxy, PAGE, &[("accept-encoding", alg.name())]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.encoding.as_deref(), Some(alg.name()));
        assert!(
            a.headers.get("content-length").is_none() || a.headers["content-length"] != "102400"
        );
        assert_eq!(decode_strict(alg, &a.body).unwrap(), original, "{alg:?}");
        assert!(
            a.body.len() * 10 < original.len() * 3,
            "{alg:?}: {} bytes is not under 30%",
            a.body.len()
        );
    }
    let identity = get(&proxy, PAGE, &[]).await;
    assert_eq!(identity.encoding, None);
    assert_eq!(identity.body, original);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiation_over_the_wire() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "").await;
    let cases = [
        ("gzip", Some("gzip")),
        ("gzip, br", Some("br")),
        ("br;q=0.5, gzip;q=0.9", Some("gzip")),
        ("gzip;q=0, br", Some("br")),
        ("gzip;q=0", None),
        ("*", Some("br")),
        ("*;q=0.1, zstd;q=0.5", Some("zstd")),
        ("*;q=0", None),
        ("identity;q=0, gzip", Some("gzip")),
        ("identity, gzip;q=0.5", None),
        ("deflate, compress, snappy", None),
        ("GZIP", Some("gzip")),
        ("  zstd ;  q=0.9 ,gzip;q=0.8  ", Some("zstd")),
        ("x-gzip", Some("gzip")),
    ];
    for (header, expected) in cases {
        let a = get(&proxy, PAGE, &[("accept-encoding", header)]).await;
        assert_eq!(a.encoding.as_deref(), expected, "Accept-Encoding: {header}");
        if let Some(name) = expected {
            let alg = Algorithm::from_name(name).unwrap();
            assert_eq!(decode_strict(alg, &a.body).unwrap().len(), 102400);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_rules() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "").await;
    let br = [("accept-encoding", "br")];
    let big = "page=4096";
    let skipped = [
        (
            format!("/e?{big}&type=text/html&ce=identity-ish"),
            "already encoded",
        ),
        (
            format!("/n?{big}&type=text/html&cc=no-transform"),
            "no-transform",
        ),
        (format!("/i?{big}&type=image/png"), "type"),
        ("/s?page=500&type=text/html".to_string(), "small"),
        (format!("/r?{big}&type=text/html&range=1"), "range"),
        ("/z?status=204&type=text/html".to_string(), "204"),
    ];
    for (path, why) in skipped {
        let a = get(&proxy, &path, &br).await;
        let encoding = a.encoding.clone().unwrap_or_default();
        assert!(encoding != "br", "{why}: compressed anyway");
    }
    // 304: the origin validates, nothing to encode.
    let nm = get(
        &proxy,
        &format!("/c?{big}&type=text/html&etag=v1&cond=1"),
        &[("accept-encoding", "br"), ("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!(nm.status, 304);
    assert_eq!(nm.encoding, None);
    // HEAD: the headers a GET would get, no body.
    let head = client()
        .head(proxy.url(PAGE))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["content-encoding"], "br");
    assert_eq!(head.headers()["vary"], "Accept-Encoding");
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_merges_with_the_origins() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "").await;
    let a = get(
        &proxy,
        &format!("{PAGE}&vary=Origin"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(a.headers["vary"], "Origin, Accept-Encoding");
    assert_eq!(a.headers.get_all("vary").iter().count(), 1);
    let already = get(
        &proxy,
        &format!("{PAGE}&vary=accept-encoding"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(already.headers["vary"], "accept-encoding");
    // Identity responses that could have been compressed say so too.
    let plain = get(&proxy, PAGE, &[]).await;
    assert_eq!(plain.headers["vary"], "Accept-Encoding");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etags_name_the_variant_and_validate_both() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "").await;
    let path = format!("{PAGE}&etag=v7");
    let br = get(&proxy, &path, &[("accept-encoding", "br")]).await;
    assert_eq!(br.headers["etag"], "\"v7-br\"");
    let plain = get(&proxy, &path, &[]).await;
    assert_eq!(plain.headers["etag"], "\"v7\"");
    let weak = get(
        &proxy,
        &format!("{PAGE}&wetag=w1"),
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(weak.headers["etag"], "W/\"w1\"");

    let variant_304 = get(
        &proxy,
        &path,
        &[("accept-encoding", "br"), ("if-none-match", "\"v7-br\"")],
    )
    .await;
    assert_eq!(variant_304.status, 304);
    assert_eq!(variant_304.headers["etag"], "\"v7-br\"");
    let identity_304 = get(&proxy, &path, &[("if-none-match", "\"v7\"")]).await;
    assert_eq!(identity_304.status, 304);
    // The identity tag does not validate the br variant.
    let mismatch = get(
        &proxy,
        &path,
        &[("accept-encoding", "br"), ("if-none-match", "\"v7\"")],
    )
    .await;
    assert_eq!(mismatch.status, 200);
    // An origin that validates itself sees its own tag and its 304 names the variant.
    let origin_checked = get(
        &proxy,
        &format!("{path}&cond=1"),
        &[("accept-encoding", "br"), ("if-none-match", "\"v7-br\"")],
    )
    .await;
    assert_eq!(origin_checked.status, 304);
    assert_eq!(origin_checked.headers["etag"], "\"v7-br\"");
    assert_eq!(o.not_modified(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_route_compresses_once() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "    cache: { enabled: true }\n").await;
    let path = format!("{PAGE}&cc=max-age=600&etag=c1");
    let original = sample_html(102400);
    for i in 0..100 {
        let a = get(&proxy, &path, &[("accept-encoding", "br")]).await;
        assert_eq!(a.encoding.as_deref(), Some("br"));
        assert_eq!(a.headers["vary"], "Accept-Encoding");
        if i == 0 || i == 99 {
            assert_eq!(decode_strict(Algorithm::Brotli, &a.body).unwrap(), original);
        }
    }
    let stats = proxy.stats().await;
    assert_eq!(
        stats["compression"]["br"]["responses"], 1,
        "{}",
        stats["compression"]
    );
    assert_eq!(o.hits(), 1);
    // Another client that negotiates br shares the variant; gzip gets its own.
    let shared = get(&proxy, &path, &[("accept-encoding", "gzip;q=0.5, br")]).await;
    assert!(shared.headers["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    let gz = get(&proxy, &path, &[("accept-encoding", "gzip")]).await;
    assert_eq!(gz.encoding.as_deref(), Some("gzip"));
    assert_eq!(decode_strict(Algorithm::Gzip, &gz.body).unwrap(), original);
    let identity = get(&proxy, &path, &[]).await;
    assert_eq!(identity.body, original);
    assert_eq!(o.hits(), 3);
    let hit_304 = get(
        &proxy,
        &path,
        &[("accept-encoding", "br"), ("if-none-match", "\"c1-br\"")],
    )
    .await;
    assert_eq!(hit_304.status, 304);
    let metrics = proxy.metrics().await;
    assert!(metrics.contains("switchyard_compression_bytes_in_total{algorithm=\"br\"} 102400"));
    assert!(metrics.contains("switchyard_compression_bytes_out_total{algorithm=\"br\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_false_turns_a_route_off() {
    let o = spawn_origin("o").await;
    let proxy = proxy_with(&o, "    compression: false\n").await;
    let a = get(&proxy, PAGE, &[("accept-encoding", "br, gzip")]).await;
    assert_eq!(a.encoding, None);
    assert!(a.headers.get("vary").is_none());
}

/// The send time of each event of a [`spawn_streaming_origin`] answer.
type Sent = std::sync::Arc<std::sync::Mutex<Vec<std::time::Instant>>>;

const EVENTS: usize = 4;
const EVENT_GAP: std::time::Duration = std::time::Duration::from_millis(300);

/// An origin answering every request with a chunked body of [`EVENTS`] events (`data: n`),
/// one every [`EVENT_GAP`], with the given `Content-Type`; records when it sent each one.
async fn spawn_streaming_origin(
    content_type: &'static str,
) -> (std::net::SocketAddr, Sent, tokio::task::JoinHandle<()>) {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sent: Sent = Default::default();
    let log = sent.clone();
    let task = crate::common::serve_http1(listener, move |_req| {
        let log = log.clone();
        async move {
            log.lock().unwrap().clear();
            let events = futures_util::stream::unfold(0usize, move |i| {
                let log = log.clone();
                async move {
                    if i == EVENTS {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(EVENT_GAP).await;
                    }
                    log.lock().unwrap().push(std::time::Instant::now());
                    let event = format!("data: event {i} {}\n\n", "x".repeat(200));
                    Some((
                        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(event))),
                        i + 1,
                    ))
                }
            });
            hyper::Response::builder()
                .header("content-type", content_type)
                .header("cache-control", "no-cache")
                .body(StreamBody::new(events))
        }
    });
    (addr, sent, task)
}

/// A `Write` into a shared buffer, for the streaming decoders.
#[derive(Clone, Default)]
struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Requests `path` with `accept` and reads the body as it comes, decoding `encoding`; returns
/// the `Content-Encoding` answered and when each event arrived in full.
async fn event_arrivals(
    proxy: &Proxy,
    accept: &str,
    encoding: Option<Algorithm>,
) -> (Option<String>, Vec<std::time::Instant>) {
    use std::io::Write;
    let sink = Sink::default();
    let mut decoder: Box<dyn Write + Send> = match encoding {
        None => Box::new(sink.clone()),
        Some(Algorithm::Gzip) => Box::new(flate2::write::GzDecoder::new(sink.clone())),
        Some(Algorithm::Brotli) => Box::new(brotli::DecompressorWriter::new(sink.clone(), 4096)),
        Some(Algorithm::Zstd) => Box::new(zstd::stream::write::Decoder::new(sink.clone()).unwrap()),
    };
    let mut resp = client()
        .get(proxy.url("/events"))
        .header("accept-encoding", accept)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let answered = resp
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_string());
    let mut arrivals = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        decoder.write_all(&chunk).unwrap();
        decoder.flush().unwrap();
        let complete = String::from_utf8_lossy(&sink.0.lock().unwrap())
            .matches("\n\n")
            .count();
        while arrivals.len() < complete {
            arrivals.push(std::time::Instant::now());
        }
    }
    (answered, arrivals)
}

fn assert_prompt(what: &str, sent: &Sent, arrivals: &[std::time::Instant]) {
    let sent = sent.lock().unwrap().clone();
    assert_eq!(arrivals.len(), EVENTS, "{what}: events received");
    assert_eq!(sent.len(), EVENTS, "{what}: events sent");
    for (i, (sent, arrived)) in sent.iter().zip(arrivals).enumerate() {
        let late = arrived.saturating_duration_since(*sent);
        assert!(
            late < std::time::Duration::from_millis(100),
            "{what}: event {i} arrived {late:?} after it was sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_are_not_compressed_and_arrive_one_by_one() {
    let (addr, sent, _origin) = spawn_streaming_origin("text/event-stream").await;
    let proxy = spawn_proxy(&format!(
        "compression:\n  algorithms: [br, zstd, gzip]\nupstreams:\n  pool:\n    backends: [{{address: {addr}}}]\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n"
    ))
    .await;
    let (encoding, arrivals) = event_arrivals(&proxy, "gzip, br, zstd", None).await;
    assert_eq!(encoding, None, "text/event-stream was compressed");
    assert_prompt("event-stream", &sent, &arrivals);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_streams_are_flushed_chunk_by_chunk() {
    let (addr, sent, _origin) = spawn_streaming_origin("text/plain; charset=utf-8").await;
    let proxy = spawn_proxy(&format!(
        "compression:\n  algorithms: [br, zstd, gzip]\nupstreams:\n  pool:\n    backends: [{{address: {addr}}}]\nroutes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n"
    ))
    .await;
    for alg in Algorithm::ALL {
        let (encoding, arrivals) = event_arrivals(&proxy, alg.name(), Some(alg)).await;
        assert_eq!(encoding.as_deref(), Some(alg.name()));
        assert_prompt(alg.name(), &sent, &arrivals);
    }
}
