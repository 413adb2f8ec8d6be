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
