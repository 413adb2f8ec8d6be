//! The rest of RFC 9111 and RFC 9213 over real sockets, against an origin whose answers each
//! test scripts path by path: invalidation after unsafe methods, freshening from a 304,
//! targeted cache control, `Age` parsing, any status with explicit freshness,
//! `stale-while-revalidate` end to end, ranges from the cache.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::net::TcpListener;

use crate::common::{client, serve_http1, spawn_proxy, upstream, Proxy};

/// What the origin answers on a path.
#[derive(Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// When the request's `If-None-Match` names this tag, a 304 with these fields instead.
    not_modified: Option<(String, Vec<(String, String)>)>,
    /// How long the origin takes to answer.
    delay: Duration,
}

impl Reply {
    fn ok(headers: &[(&str, &str)], body: &str) -> Reply {
        Reply::status(200, headers, body)
    }

    fn status(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        Reply {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.to_string(),
            ..Reply::default()
        }
    }
}

#[derive(Default)]
struct Script {
    replies: HashMap<String, Reply>,
    /// Every request seen: method, path and query, headers.
    seen: Vec<(String, String, http::HeaderMap)>,
}

/// An origin that answers what the test scripted for each path and records every request.
struct Scripted {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let script = Arc::new(Mutex::new(Script::default()));
        let shared = Arc::clone(&script);
        serve_http1(listener, move |req| answer(Arc::clone(&shared), req));
        Scripted { addr, script }
    }

    fn set(&self, path: &str, reply: Reply) {
        let mut script = self.script.lock().unwrap();
        script.replies.insert(path.to_string(), reply);
    }

    /// Requests seen for `method` on `path` (with its query).
    fn count(&self, method: &str, path: &str) -> usize {
        let script = self.script.lock().unwrap();
        script
            .seen
            .iter()
            .filter(|(m, p, _)| m == method && p == path)
            .count()
    }

    async fn proxy(&self, cache: &str) -> Proxy {
        spawn_proxy(&format!(
            "{cache}upstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    cache: {{ enabled: true }}\n",
            upstream("pool", &[(self.addr, 1)], "")
        ))
        .await
    }
}

async fn answer(
    script: Arc<Mutex<Script>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.to_string());
    let reply = {
        let mut script = script.lock().unwrap();
        script.seen.push((
            req.method().to_string(),
            path.clone(),
            req.headers().clone(),
        ));
        let key = path.split('?').next().unwrap_or("/");
        script.replies.get(key).cloned()
    };
    let Some(reply) = reply else {
        return Ok(Response::builder()
            .status(404)
            .body(Full::new(Bytes::from_static(b"not scripted")))
            .expect("response"));
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let inm = req
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if let Some((tag, fields)) = &reply.not_modified {
        if inm.contains(tag.as_str()) {
            let mut resp = Response::builder().status(304);
            for (k, v) in fields {
                resp = resp.header(k.as_str(), v.as_str());
            }
            return Ok(resp.body(Full::new(Bytes::new())).expect("response"));
        }
    }
    let mut resp = Response::builder().status(reply.status);
    for (k, v) in &reply.headers {
        resp = resp.header(k.as_str(), v.as_str());
    }
    Ok(resp
        .body(Full::new(Bytes::from(reply.body)))
        .expect("response"))
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }
}

async fn send(proxy: &Proxy, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = client().request(method, proxy.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = request.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    Answer {
        status,
        headers,
        body: resp.text().await.expect("body"),
    }
}

async fn get(proxy: &Proxy, path: &str) -> Answer {
    send(proxy, "GET", path, &[]).await
}

/// RFC 9111 §4.4: a POST's success drops the stored GET and what its `Location` names; an
/// error answer drops nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_methods_invalidate_the_target_and_its_location() {
    let o = Scripted::start().await;
    o.set(
        "/items",
        Reply::ok(&[("Cache-Control", "max-age=600")], "list"),
    );
    o.set(
        "/items/7",
        Reply::ok(&[("Cache-Control", "max-age=600")], "seven"),
    );
    let proxy = o.proxy("").await;
    for path in ["/items", "/items/7"] {
        get(&proxy, path).await;
        let hit = get(&proxy, path).await;
        assert!(hit.header("cache-status").contains("hit"), "{path} stored");
    }

    o.set(
        "/items",
        Reply::status(500, &[("Location", "/items/7")], "broken"),
    );
    let failed = send(&proxy, "POST", "/items", &[]).await;
    assert_eq!(failed.status, 500);
    o.set(
        "/items",
        Reply::ok(&[("Cache-Control", "max-age=600")], "list"),
    );
    assert!(
        get(&proxy, "/items")
            .await
            .header("cache-status")
            .contains("hit"),
        "an error answer invalidates nothing"
    );

    o.set(
        "/items",
        Reply::status(201, &[("Location", "/items/7")], "created"),
    );
    assert_eq!(send(&proxy, "POST", "/items", &[]).await.status, 201);
    o.set(
        "/items",
        Reply::ok(&[("Cache-Control", "max-age=600")], "list"),
    );
    for path in ["/items", "/items/7"] {
        let after = get(&proxy, path).await;
        assert!(
            after.header("cache-status").contains("fwd=miss"),
            "{path} after the POST: {}",
            after.header("cache-status")
        );
    }
    assert_eq!(o.count("GET", "/items"), 2);
    assert_eq!(o.count("GET", "/items/7"), 2);

    // DELETE on another URI invalidates that one only.
    o.set("/items/7", Reply::status(204, &[], ""));
    assert_eq!(send(&proxy, "DELETE", "/items/7", &[]).await.status, 204);
    assert!(get(&proxy, "/items")
        .await
        .header("cache-status")
        .contains("hit"));
    let metrics = proxy.metrics().await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("switchyard_cache_invalidations_total{reason=\"unsafe-method\"}"))
        .unwrap_or_else(|| panic!("no invalidation series in\n{metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
}

/// RFC 9111 §4.3.4: a 304 updates the stored fields (but framing and coding), and the next hit
/// serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_304_freshens_the_stored_fields() {
    let o = Scripted::start().await;
    let mut reply = Reply::ok(
        &[
            ("Cache-Control", "max-age=1"),
            ("ETag", "\"v1\""),
            ("X-Version", "1"),
            ("Content-Type", "text/plain"),
        ],
        "body",
    );
    reply.not_modified = Some((
        "\"v1\"".to_string(),
        vec![
            ("Cache-Control".to_string(), "max-age=600".to_string()),
            ("ETag".to_string(), "\"v1\"".to_string()),
            ("X-Version".to_string(), "2".to_string()),
            ("X-Added".to_string(), "yes".to_string()),
        ],
    ));
    o.set("/doc", reply);
    let proxy = o.proxy("").await;
    assert_eq!(get(&proxy, "/doc").await.header("x-version"), "1");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let revalidated = get(&proxy, "/doc").await;
    assert_eq!(revalidated.body, "body");
    assert!(
        revalidated
            .header("cache-status")
            .contains("fwd-status=304"),
        "{}",
        revalidated.header("cache-status")
    );
    let hit = get(&proxy, "/doc").await;
    assert!(
        hit.header("cache-status").contains("hit"),
        "fresh again for 600 s"
    );
    assert_eq!(hit.header("x-version"), "2");
    assert_eq!(hit.header("x-added"), "yes");
    assert_eq!(hit.header("cache-control"), "max-age=600");
    assert_eq!(hit.body, "body");
    assert_eq!(o.count("GET", "/doc"), 2);
}

/// RFC 9213: `CDN-Cache-Control` (and Switchyard's own field before it) decides for this cache
/// over `Cache-Control`, and passes downstream unless `strip_targeted`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_cache_control_decides_for_this_cache() {
    let o = Scripted::start().await;
    o.set(
        "/cdn",
        Reply::ok(
            &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=600"),
            ],
            "cdn",
        ),
    );
    o.set(
        "/own",
        Reply::ok(
            &[
                ("Cache-Control", "max-age=600"),
                ("CDN-Cache-Control", "max-age=600"),
                ("Switchyard-Cache-Control", "no-store"),
            ],
            "own",
        ),
    );
    let proxy = o.proxy("").await;
    get(&proxy, "/cdn").await;
    let hit = get(&proxy, "/cdn").await;
    assert!(hit.header("cache-status").contains("hit"));
    assert_eq!(hit.header("cdn-cache-control"), "max-age=600");
    assert_eq!(hit.header("cache-control"), "no-store", "passed on as sent");
    get(&proxy, "/own").await;
    assert!(get(&proxy, "/own")
        .await
        .header("cache-status")
        .contains("fwd=miss"));
    assert_eq!(o.count("GET", "/own"), 2);

    let stripping = o
        .proxy("cache:\n  targeted_fields: [CDN-Cache-Control]\n  strip_targeted: true\n")
        .await;
    get(&stripping, "/cdn").await;
    let hit = get(&stripping, "/cdn").await;
    assert!(hit.header("cache-status").contains("hit"));
    assert!(!hit.headers.contains_key("cdn-cache-control"));
    // Switchyard-Cache-Control is not in this list: Cache-Control decides for /own.
    get(&stripping, "/own").await;
    assert!(get(&stripping, "/own")
        .await
        .header("cache-status")
        .contains("hit"));
}

/// RFC 9111 §5.1: an `Age` that is not a non-negative integer is ignored; one too large for
/// any integer type is 2^31, not 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_age_that_is_not_an_integer_is_ignored() {
    let o = Scripted::start().await;
    o.set(
        "/odd",
        Reply::ok(&[("Cache-Control", "max-age=100"), ("Age", "3a")], "odd"),
    );
    o.set(
        "/old",
        Reply::ok(
            &[
                ("Cache-Control", "max-age=100"),
                ("Age", "99999999999999999999999"),
            ],
            "old",
        ),
    );
    let proxy = o.proxy("").await;
    get(&proxy, "/odd").await;
    let hit = get(&proxy, "/odd").await;
    let status = hit.header("cache-status").to_string();
    assert!(
        status.contains("hit; ttl=99") || status.contains("hit; ttl=100"),
        "{status}"
    );
    get(&proxy, "/old").await;
    assert!(
        get(&proxy, "/old")
            .await
            .header("cache-status")
            .contains("fwd="),
        "an Age past 2^64 is 2^31, older than its lifetime: not fresh"
    );
}

/// RFC 9111 §3: any status with explicit freshness is stored (a 404, a 503), none without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_status_with_explicit_freshness_is_served_from_the_cache() {
    let o = Scripted::start().await;
    o.set(
        "/gone",
        Reply::status(404, &[("Cache-Control", "max-age=60")], "gone"),
    );
    o.set(
        "/busy",
        Reply::status(503, &[("Cache-Control", "max-age=60")], "busy"),
    );
    o.set("/fail", Reply::status(500, &[], "fail"));
    let proxy = o.proxy("").await;
    for (path, status) in [("/gone", 404), ("/busy", 503)] {
        assert_eq!(get(&proxy, path).await.status, status);
        let hit = get(&proxy, path).await;
        assert_eq!(hit.status, status);
        assert!(hit.header("cache-status").contains("hit"), "{path}");
        assert_eq!(o.count("GET", path), 1);
    }
    get(&proxy, "/fail").await;
    get(&proxy, "/fail").await;
    assert_eq!(o.count("GET", "/fail"), 2);
}

/// `max-age=1, stale-while-revalidate=10`: after 2 s the answer comes at once from the cache
/// (`detail=stale`), the origin sees one background revalidation, then hits are fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_answers_at_once_and_refreshes_once() {
    let o = Scripted::start().await;
    let mut reply = Reply::ok(
        &[("Cache-Control", "max-age=1, stale-while-revalidate=10")],
        "v",
    );
    o.set("/swr", reply.clone());
    let proxy = o.proxy("").await;
    get(&proxy, "/swr").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    reply.delay = Duration::from_millis(500);
    o.set("/swr", reply);
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        get(&proxy, "/swr"),
        get(&proxy, "/swr"),
        get(&proxy, "/swr")
    );
    for answer in [&a, &b, &c] {
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "v");
        assert!(
            answer.header("cache-status").contains("detail=stale"),
            "{}",
            answer.header("cache-status")
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "stale answers do not wait for the origin ({:?})",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(o.count("GET", "/swr"), 2, "one background revalidation");
    let fresh = get(&proxy, "/swr").await;
    assert!(
        fresh.header("cache-status").contains("hit; ttl="),
        "{}",
        fresh.header("cache-status")
    );
    assert_eq!(o.count("GET", "/swr"), 2);
}

/// A `Range` request on a stored response is answered 206 from the cache (several ranges as
/// `multipart/byteranges`); `If-Range` with another validator gets the whole 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_served_from_the_stored_response() {
    let o = Scripted::start().await;
    o.set(
        "/file",
        Reply::ok(
            &[("Cache-Control", "max-age=600"), ("ETag", "\"f1\"")],
            "0123456789",
        ),
    );
    let proxy = o.proxy("").await;
    let full = get(&proxy, "/file").await;
    assert_eq!(full.header("accept-ranges"), "bytes");
    let part = send(&proxy, "GET", "/file", &[("Range", "bytes=2-5")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, "2345");
    assert_eq!(part.header("content-range"), "bytes 2-5/10");
    let suffix = send(&proxy, "GET", "/file", &[("Range", "bytes=-3")]).await;
    assert_eq!((suffix.status, suffix.body.as_str()), (206, "789"));
    let other = send(
        &proxy,
        "GET",
        "/file",
        &[("Range", "bytes=2-5"), ("If-Range", "\"other\"")],
    )
    .await;
    assert_eq!((other.status, other.body.as_str()), (200, "0123456789"));
    let same = send(
        &proxy,
        "GET",
        "/file",
        &[("Range", "bytes=2-5"), ("If-Range", "\"f1\"")],
    )
    .await;
    assert_eq!((same.status, same.body.as_str()), (206, "2345"));
    let several = send(&proxy, "GET", "/file", &[("Range", "bytes=0-1,4-5")]).await;
    assert_eq!(several.status, 206);
    assert!(several
        .header("content-type")
        .starts_with("multipart/byteranges; boundary="));
    for part in [
        "Content-Range: bytes 0-1/10\r\n\r\n01",
        "Content-Range: bytes 4-5/10\r\n\r\n45",
    ] {
        assert!(several.body.contains(part), "{:?}", several.body);
    }
    assert_eq!(
        o.count("GET", "/file"),
        1,
        "every range came from the cache"
    );
}

async fn purge(proxy: &Proxy, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = client()
        .post(proxy.admin_url("/cache/purge"))
        .json(&body)
        .send()
        .await
        .expect("purge");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("purge answer"))
}

/// `{"pattern": …}`: `*` matches within one path segment, `**` across segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_purge_removes_the_keys_it_matches_only() {
    let o = Scripted::start().await;
    o.set(
        "/users",
        Reply::ok(&[("Cache-Control", "max-age=600")], "u"),
    );
    let proxy = o.proxy("").await;
    let paths = [
        "/users/1/profile",
        "/users/2/profile",
        "/users/1/settings",
        "/users/1/a/profile",
    ];
    for path in paths {
        o.set(path, Reply::ok(&[("Cache-Control", "max-age=600")], path));
        get(&proxy, path).await;
    }
    let (status, body) = purge(
        &proxy,
        serde_json::json!({"pattern": "127.0.0.1/users/*/profile"}),
    )
    .await;
    assert_eq!(
        (status, &body["purged"]),
        (200, &serde_json::json!(2)),
        "{body}"
    );
    for (path, kept) in [
        ("/users/1/profile", false),
        ("/users/2/profile", false),
        ("/users/1/settings", true),
        ("/users/1/a/profile", true),
    ] {
        let status = get(&proxy, path).await.header("cache-status").to_string();
        assert_eq!(status.contains("hit"), kept, "{path}: {status}");
    }
    let (_, body) = purge(&proxy, serde_json::json!({"pattern": "127.0.0.1/users/**"})).await;
    assert_eq!(body["purged"], 4, "{body}");
    let (status, body) = purge(&proxy, serde_json::json!({"pattern": "*".repeat(17)})).await;
    assert_eq!(status, 400, "{body}");
}

/// `Vary: Accept-Language`: requests that differ in case, spacing, order of equal preferences
/// or q spelling share a variant; another language does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn equivalent_accept_language_values_share_a_variant() {
    let o = Scripted::start().await;
    o.set(
        "/hello",
        Reply::ok(
            &[
                ("Cache-Control", "max-age=600"),
                ("Vary", "Accept-Language"),
            ],
            "hello",
        ),
    );
    let proxy = o.proxy("").await;
    let lang = |value: &'static str| {
        let proxy = &proxy;
        async move { send(proxy, "GET", "/hello", &[("Accept-Language", value)]).await }
    };
    lang("en-US, de;q=0.5").await;
    for same in ["de;q=0.50,EN-us", "en-us,de;q=0.5", " en-US ,de;q=0.5"] {
        let answer = lang(same).await;
        assert!(answer.header("cache-status").contains("hit"), "{same}");
    }
    assert!(lang("de").await.header("cache-status").contains("fwd=miss"));
    assert_eq!(o.count("GET", "/hello"), 2);
}

/// `/cache/entry` shows the stored variants of a key, `/cache/top` the most requested keys
/// with hits and misses, `/stats` each route's hit ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_shows_entries_top_keys_and_route_hit_ratios() {
    let o = Scripted::start().await;
    o.set(
        "/page",
        Reply::ok(
            &[
                ("Cache-Control", "max-age=600"),
                ("Vary", "Accept-Language"),
                ("Surrogate-Key", "pages"),
                ("X-Kind", "page"),
            ],
            "page body",
        ),
    );
    o.set(
        "/other",
        Reply::ok(&[("Cache-Control", "max-age=600")], "o"),
    );
    let proxy = o.proxy("").await;
    for lang in ["en", "de", "en", "en"] {
        send(&proxy, "GET", "/page?x=1", &[("Accept-Language", lang)]).await;
    }
    get(&proxy, "/other").await;

    let admin = |path: &str| {
        let url = proxy.admin_url(path);
        async move {
            let resp = client().get(url).send().await.expect("admin");
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.expect("json"),
            )
        }
    };
    let (status, entry) = admin("/cache/entry?key=127.0.0.1%2Fpage%3Fx%3D1").await;
    assert_eq!(status, 200);
    let variants = entry["variants"].as_array().expect("variants");
    assert_eq!(variants.len(), 2, "{entry}");
    for v in variants {
        assert_eq!(v["status"], 200);
        assert_eq!(v["body_bytes"], 9);
        assert_eq!(v["tags"], serde_json::json!(["pages"]));
        assert!(v["ttl_seconds"].as_u64().unwrap() > 590, "{v}");
        assert!(v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == &serde_json::json!(["x-kind", "page"])));
    }
    let (_, none) = admin("/cache/entry?key=127.0.0.1/nothing").await;
    assert_eq!(none["variants"], serde_json::json!([]));
    assert_eq!(admin("/cache/entry").await.0, 400);

    let (_, top) = admin("/cache/top?n=1").await;
    let keys = top["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["key"], "127.0.0.1/page?x=1");
    assert_eq!(
        (&keys[0]["hits"], &keys[0]["misses"]),
        (&serde_json::json!(2), &serde_json::json!(2))
    );

    let stats = proxy.stats().await;
    let route = &stats["routes"][0];
    assert_eq!(route["cache"]["hit"], 2, "{route}");
    assert_eq!(route["cache"]["miss"], 3, "{route}");
    assert_eq!(route["cache"]["hit_ratio"], 0.4, "{route}");
}

/// A range request on a miss fetches the whole response (no `Range` upstream), stores it and
/// answers the range; the next range is a hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_miss_fetches_the_whole_response_once() {
    let o = Scripted::start().await;
    o.set(
        "/video",
        Reply::ok(&[("Cache-Control", "max-age=600")], "abcdefghij"),
    );
    let proxy = o.proxy("").await;
    let first = send(&proxy, "GET", "/video", &[("Range", "bytes=0-2")]).await;
    assert_eq!((first.status, first.body.as_str()), (206, "abc"));
    assert_eq!(first.header("content-range"), "bytes 0-2/10");
    let upstream_range = {
        let script = o.script.lock().unwrap();
        script.seen.iter().any(|(_, _, h)| h.contains_key("range"))
    };
    assert!(
        !upstream_range,
        "the origin was asked for the whole response"
    );
    let second = send(&proxy, "GET", "/video", &[("Range", "bytes=7-")]).await;
    assert_eq!((second.status, second.body.as_str()), (206, "hij"));
    assert!(second.header("cache-status").contains("hit"));
    assert_eq!(o.count("GET", "/video"), 1);
}

/// `cache.warm`: the listed URLs are fetched at start (the first client request is a hit),
/// again when purged, and before they expire; a failing origin never evicts what is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_lists_are_stored_before_clients_ask_and_kept_fresh() {
    let o = Scripted::start().await;
    o.set(
        "/catalog",
        Reply::ok(&[("Cache-Control", "max-age=2")], "catalog"),
    );
    o.set(
        "/config",
        Reply::ok(&[("Cache-Control", "max-age=600")], "config"),
    );
    let proxy = spawn_proxy(&format!(
        "upstreams:\n{}routes:\n  - match: {{ host: shop.example, path_prefix: / }}\n    upstream: pool\n    cache: {{ warm: {{ urls: [/catalog, /config], every: 1m, concurrency: 2 }} }}\n",
        upstream("pool", &[(o.addr, 1)], "")
    ))
    .await;
    crate::common::wait_until(Duration::from_secs(5), || async {
        o.count("GET", "/catalog") >= 1 && o.count("GET", "/config") >= 1
    })
    .await;
    let host = [("Host", "shop.example")];
    crate::common::wait_until(Duration::from_secs(3), || async {
        send(&proxy, "GET", "/config", &host)
            .await
            .header("cache-status")
            .contains("hit")
    })
    .await;
    let seen = {
        let script = o.script.lock().unwrap();
        script
            .seen
            .iter()
            .any(|(_, _, h)| h.contains_key("switchyard-warm"))
    };
    assert!(!seen, "the warm token never reaches the origin");

    // max-age=2: refreshed at 90% of its lifetime, before it expires.
    crate::common::wait_until(Duration::from_secs(5), || async {
        o.count("GET", "/catalog") >= 2
    })
    .await;
    let hit = send(&proxy, "GET", "/catalog", &host).await;
    assert!(
        hit.header("cache-status").contains("hit"),
        "{}",
        hit.header("cache-status")
    );

    // Purged: fetched again.
    let before = o.count("GET", "/config");
    let (status, _) = purge(&proxy, serde_json::json!({"key": "shop.example/config"})).await;
    assert_eq!(status, 200);
    crate::common::wait_until(Duration::from_secs(5), || async {
        o.count("GET", "/config") > before
    })
    .await;

    // The origin fails: the failed warm fetch leaves the stored catalog in place.
    let failures = |stats: serde_json::Value| stats["cache"]["warm"]["failures"].as_u64();
    let before = failures(proxy.stats().await);
    o.set("/catalog", Reply::status(500, &[], "down"));
    crate::common::wait_until(Duration::from_secs(6), || async {
        failures(proxy.stats().await) > before
    })
    .await;
    let entry: serde_json::Value = client()
        .get(proxy.admin_url("/cache/entry?key=shop.example/catalog"))
        .send()
        .await
        .expect("entry")
        .json()
        .await
        .expect("entry json");
    assert_eq!(entry["variants"][0]["status"], 200, "{entry}");
    let stats = proxy.stats().await;
    let warm = &stats["cache"]["warm"];
    assert!(warm["fetches"].as_u64().unwrap() >= 4, "{warm}");
    let urls = warm["urls"].as_array().expect("urls");
    assert_eq!(urls.len(), 2, "{warm}");
    let catalog = urls
        .iter()
        .find(|u| u["url"] == "/catalog")
        .expect("catalog");
    assert_eq!(catalog["last_error"], serde_json::Value::Null);
    assert_eq!(catalog["last_status"], 500, "{catalog}");
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("switchyard_cache_warm_fetches_total{result=\"ok\"}"),
        "{metrics}"
    );
}

/// A `HEAD` never leaves an empty body in the cache: on a caching route it goes upstream as a
/// `GET`, so a `HEAD` miss stores the whole response and a `HEAD` on an expired entry refreshes
/// it (RFC 9111 §4.3.5's freshening, with the body fetched again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_never_store_an_empty_body_and_freshen_a_matching_entry() {
    let o = Scripted::start().await;
    o.set(
        "/h",
        Reply::ok(
            &[
                ("Cache-Control", "max-age=1"),
                ("ETag", "\"h1\""),
                ("X-Version", "1"),
            ],
            "body of h",
        ),
    );
    let proxy = o.proxy("").await;
    let head = send(&proxy, "HEAD", "/h", &[]).await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
    let get1 = get(&proxy, "/h").await;
    assert_eq!(get1.body, "body of h");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    o.set(
        "/h",
        Reply::ok(
            &[
                ("Cache-Control", "max-age=600"),
                ("ETag", "\"h1\""),
                ("X-Version", "2"),
            ],
            "body of h",
        ),
    );
    let head = send(&proxy, "HEAD", "/h", &[]).await;
    assert_eq!(head.status, 200);
    let gets_before = o.count("GET", "/h");
    let hit = get(&proxy, "/h").await;
    // On a caching route a HEAD goes upstream as a GET, so it fills or refreshes the entry.
    assert_eq!((o.count("HEAD", "/h"), gets_before), (0, 2));
    assert_eq!(hit.body, "body of h");
    assert_eq!(
        o.count("GET", "/h"),
        gets_before,
        "{}",
        hit.header("cache-status")
    );
    assert_eq!(hit.header("x-version"), "2");
}

/// Dates in RFC 850 and asctime form are read (RFC 9110 §5.6.7); an invalid `Expires` means
/// already expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obsolete_date_formats_give_freshness_and_an_invalid_expires_none() {
    let o = Scripted::start().await;
    let now = std::time::SystemTime::now();
    let rfc850 = |t: std::time::SystemTime| {
        // `Sunday, 06-Nov-94 08:49:37 GMT` from the IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`.
        let imf = httpdate::fmt_http_date(t);
        let parts: Vec<&str> = imf.split_whitespace().collect();
        let day = match parts[0] {
            "Mon," => "Monday",
            "Tue," => "Tuesday",
            "Wed," => "Wednesday",
            "Thu," => "Thursday",
            "Fri," => "Friday",
            "Sat," => "Saturday",
            _ => "Sunday",
        };
        format!(
            "{day}, {}-{}-{} {} GMT",
            parts[1],
            parts[2],
            &parts[3][2..],
            parts[4]
        )
    };
    o.set(
        "/old-dates",
        Reply::ok(
            &[
                ("Date", &rfc850(now)),
                ("Expires", &rfc850(now + Duration::from_secs(120))),
            ],
            "dated",
        ),
    );
    o.set(
        "/bad-expires",
        Reply::ok(&[("Expires", "next tuesday")], "expired"),
    );
    let proxy = o.proxy("").await;
    get(&proxy, "/old-dates").await;
    let hit = get(&proxy, "/old-dates").await;
    assert!(
        hit.header("cache-status").contains("hit"),
        "{}",
        hit.header("cache-status")
    );
    get(&proxy, "/bad-expires").await;
    get(&proxy, "/bad-expires").await;
    assert_eq!(o.count("GET", "/bad-expires"), 2);
}

/// `must-understand` (RFC 9111 §5.2.2.3): a known status is stored despite the `no-store`
/// sent with it for caches that do not understand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn must_understand_stores_known_statuses_despite_no_store() {
    let o = Scripted::start().await;
    o.set(
        "/mu",
        Reply::ok(
            &[("Cache-Control", "must-understand, no-store, max-age=60")],
            "mu",
        ),
    );
    let proxy = o.proxy("").await;
    get(&proxy, "/mu").await;
    assert!(get(&proxy, "/mu")
        .await
        .header("cache-status")
        .contains("hit"));
    assert_eq!(o.count("GET", "/mu"), 1);
}
