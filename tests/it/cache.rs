//! The response cache over real sockets: the origin counts what reaches it.

use std::time::{Duration, Instant};

use crate::common::{client, spawn_origin, spawn_proxy, upstream, wait_until, Origin, Proxy};

/// A proxy whose only route caches with `route_cache` (YAML flow map) and `cache` (the global
/// block, YAML lines).
async fn cached_proxy(origin: &Origin, route_cache: &str, cache: &str) -> Proxy {
    spawn_proxy(&format!(
        "{cache}upstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    cache: {route_cache}\n",
        upstream("pool", &[(origin.addr, 1)], "")
    ))
    .await
}

struct Answer {
    status: u16,
    body: String,
    cache_status: String,
    headers: reqwest::header::HeaderMap,
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = client().get(proxy.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = request.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let cache_status = headers
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    Answer {
        status,
        body: resp.text().await.unwrap(),
        cache_status,
        headers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_fields_are_not_stored() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    for expect in ["fwd=miss", "hit"] {
        let answer = get(&proxy, "/hop?cc=max-age=60", &[]).await;
        assert_eq!(answer.status, 200);
        assert!(
            answer.cache_status.contains(expect),
            "{}",
            answer.cache_status
        );
        for field in ["x-internal", "keep-alive", "proxy-authenticate"] {
            assert!(
                !answer.headers.contains_key(field),
                "{field} on the {expect} answer"
            );
        }
    }
    assert_eq!(o.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_carry_their_age_including_what_the_origin_reported() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    for (path, at_least) in [
        ("/fresh?cc=max-age=600", 0),
        ("/aged?cc=max-age=600&age=100", 100),
    ] {
        get(&proxy, path, &[]).await;
        let hit = get(&proxy, path, &[]).await;
        assert!(hit.cache_status.contains("hit"), "{}", hit.cache_status);
        let age: u64 = hit.headers["age"].to_str().unwrap().parse().unwrap();
        assert!((at_least..at_least + 5).contains(&age), "{path}: Age {age}");
        assert_eq!(
            hit.headers.get_all("age").iter().count(),
            1,
            "one Age field"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn miss_then_hit_and_expiry() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    let first = get(&proxy, "/a?cc=max-age=1", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.cache_status, "switchyard; fwd=miss; stored");
    let second = get(&proxy, "/a?cc=max-age=1", &[]).await;
    assert!(
        second.cache_status.starts_with("switchyard; hit"),
        "{}",
        second.cache_status
    );
    assert_eq!(second.body, first.body);
    assert!(second.headers.contains_key("age"));
    assert_eq!(o.hits(), 1);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let third = get(&proxy, "/a?cc=max-age=1", &[]).await;
    assert_eq!(
        third.cache_status,
        "switchyard; fwd=stale; fwd-status=200; stored"
    );
    assert_eq!(o.hits(), 2, "an expired entry goes back to the origin");
    assert_ne!(third.body, first.body);

    // HEAD is answered from the stored GET.
    let head = client()
        .head(proxy.url("/a?cc=max-age=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.headers()["cache-status"]
        .to_str()
        .unwrap()
        .contains("hit"));
    assert_eq!(o.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_maxage_beats_max_age() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    get(&proxy, "/s?cc=max-age=1,s-maxage=60", &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let again = get(&proxy, "/s?cc=max-age=1,s-maxage=60", &[]).await;
    assert!(again.cache_status.starts_with("switchyard; hit"));
    assert_eq!(o.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_responses_are_never_stored() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true, default_ttl: 60s }", "").await;
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case<'_>; 4] = [
        ("/ns?cc=no-store", &[], "no-store"),
        ("/pv?cc=private,max-age=60", &[], "private"),
        ("/ck?cc=max-age=60&cookie=1", &[], "set-cookie"),
        (
            "/au?cc=max-age=60",
            &[("authorization", "Bearer t")],
            "authorization",
        ),
    ];
    for (path, headers, detail) in cases {
        let before = o.hits();
        for _ in 0..2 {
            let a = get(&proxy, path, headers).await;
            assert_eq!(a.status, 200);
            assert_eq!(
                a.cache_status,
                format!("switchyard; fwd=miss; detail={detail}"),
                "{path}"
            );
        }
        assert_eq!(o.hits() - before, 2, "{path} was served from cache");
    }
    // With `public`, a response to an authorized request may be stored.
    get(
        &proxy,
        "/pub?cc=public,max-age=60",
        &[("authorization", "Bearer t")],
    )
    .await;
    let a = get(
        &proxy,
        "/pub?cc=public,max-age=60",
        &[("authorization", "Bearer t")],
    )
    .await;
    assert!(a.cache_status.starts_with("switchyard; hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ttl_applies_only_without_origin_freshness() {
    let o = spawn_origin("o").await;
    let plain = cached_proxy(&o, "{ enabled: true }", "").await;
    get(&plain, "/d?type=text/plain", &[]).await;
    let a = get(&plain, "/d?type=text/plain", &[]).await;
    assert_eq!(a.cache_status, "switchyard; fwd=miss; detail=no-freshness");
    let with_default = cached_proxy(&o, "{ enabled: true, default_ttl: 60s }", "").await;
    let before = o.hits();
    get(&with_default, "/d?type=text/plain", &[]).await;
    let b = get(&with_default, "/d?type=text/plain", &[]).await;
    assert!(
        b.cache_status.starts_with("switchyard; hit"),
        "{}",
        b.cache_status
    );
    assert_eq!(o.hits() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_over_max_object_size_stream_through() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(
        &o,
        "{ enabled: true }",
        "cache:\n  max_object_size: 64KiB\n",
    )
    .await;
    for _ in 0..2 {
        let a = get(&proxy, "/big?cc=max-age=60&size=100000", &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.body.len(), 100000);
        assert_eq!(a.cache_status, "switchyard; fwd=miss; detail=too-large");
    }
    assert_eq!(o.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_keeps_variants_apart_and_normalises_accept_encoding() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    let en = get(&proxy, "/v?cc=max-age=60&vary=X-Lang", &[("x-lang", "en")]).await;
    let fr = get(&proxy, "/v?cc=max-age=60&vary=X-Lang", &[("x-lang", "fr")]).await;
    let en2 = get(&proxy, "/v?cc=max-age=60&vary=X-Lang", &[("x-lang", "en")]).await;
    assert!(en.body.ends_with(" en") && fr.body.ends_with(" fr"));
    assert_eq!(en2.body, en.body);
    assert!(en2.cache_status.starts_with("switchyard; hit"));
    assert_eq!(o.hits(), 2);

    let path = "/ae?cc=max-age=60&vary=Accept-Encoding";
    get(&proxy, path, &[("accept-encoding", "gzip, deflate, br")]).await;
    let same = get(
        &proxy,
        path,
        &[("accept-encoding", "br, deflate, gzip;q=0.5")],
    )
    .await;
    assert!(
        same.cache_status.starts_with("switchyard; hit"),
        "{}",
        same.cache_status
    );
    let other = get(&proxy, path, &[("accept-encoding", "identity")]).await;
    assert!(
        other.cache_status.contains("fwd=miss"),
        "{}",
        other.cache_status
    );
    assert_eq!(o.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_origin_request() {
    let o = spawn_origin("o").await;
    o.set_delay(Duration::from_millis(300));
    let proxy = std::sync::Arc::new(cached_proxy(&o, "{ enabled: true }", "").await);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let proxy = std::sync::Arc::clone(&proxy);
            tokio::spawn(async move { get(&proxy, "/hot?cc=max-age=60", &[]).await.body })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert_eq!(o.hits(), 1, "coalescing failed");
    assert!(bodies.iter().all(|b| b == &bodies[0]));
    let stats = proxy.stats().await;
    assert!(
        stats["cache"]["coalesced"].as_u64().unwrap() >= 1,
        "{}",
        stats["cache"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_leader_releases_the_followers() {
    let o = spawn_origin("o").await;
    o.set_delay(Duration::from_millis(300));
    o.set_status(503);
    let proxy = std::sync::Arc::new(
        cached_proxy(&o, "{ enabled: true }", "cache:\n  lock_timeout: 5s\n").await,
    );
    let start = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let proxy = std::sync::Arc::clone(&proxy);
            // No explicit freshness: a 503 that may not be stored (one with `max-age` would be,
            // RFC 9111 §3, and the followers would be served it).
            tokio::spawn(async move { get(&proxy, "/fail?x=1", &[]).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 503);
    }
    // Followers did not sit out the 5 s lock timeout.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(o.hits() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    let path = "/swr?cc=max-age=1,stale-while-revalidate=30";
    let first = get(&proxy, path, &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    o.set_delay(Duration::from_millis(800));
    let start = Instant::now();
    let stale = get(&proxy, path, &[]).await;
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "waited {:?}",
        start.elapsed()
    );
    assert_eq!(stale.cache_status, "switchyard; hit; detail=stale");
    assert_eq!(stale.body, first.body);
    // More stale readers while the refresh runs do not start more refreshes.
    for _ in 0..3 {
        get(&proxy, path, &[]).await;
    }
    wait_until(Duration::from_secs(3), || async { o.hits() == 2 }).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(o.hits(), 2, "one background refresh");
    let fresh = get(&proxy, path, &[]).await;
    assert!(
        fresh.cache_status.starts_with("switchyard; hit; ttl"),
        "{}",
        fresh.cache_status
    );
    assert_ne!(fresh.body, first.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_when_the_origin_fails() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true, stale_if_error: 60s }", "").await;
    let first = get(&proxy, "/sie?cc=max-age=1", &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    o.set_status(500);
    let on_5xx = get(&proxy, "/sie?cc=max-age=1", &[]).await;
    assert_eq!(on_5xx.status, 200);
    assert_eq!(on_5xx.body, first.body);
    assert_eq!(on_5xx.cache_status, "switchyard; hit; detail=stale");
    o.stop();
    let on_refused = get(&proxy, "/sie?cc=max-age=1", &[]).await;
    assert_eq!(on_refused.status, 200);
    assert_eq!(on_refused.body, first.body);
    // Without a stale window, the error is the answer.
    let none = get(&proxy, "/other?cc=max-age=1", &[]).await;
    assert_eq!(none.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_revalidate_with_304() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    let path = "/rv?cc=max-age=1&etag=v1&cond=1";
    let first = get(&proxy, path, &[]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let revalidated = get(&proxy, path, &[]).await;
    assert_eq!(
        revalidated.cache_status,
        "switchyard; fwd=stale; fwd-status=304; stored"
    );
    assert_eq!(revalidated.body, first.body);
    assert_eq!(o.not_modified(), 1);
    assert_eq!(o.hits(), 1);
    let fresh_again = get(&proxy, path, &[]).await;
    assert!(fresh_again.cache_status.starts_with("switchyard; hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_conditionals_get_304_on_hits_and_pass_through() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    let path = "/c?cc=max-age=60&etag=v1&lm=1";
    get(&proxy, path, &[]).await;
    let hit_inm = get(&proxy, path, &[("if-none-match", "\"v1\"")]).await;
    assert_eq!(hit_inm.status, 304);
    assert_eq!(hit_inm.body, "");
    assert_eq!(hit_inm.headers["etag"], "\"v1\"");
    assert!(hit_inm.headers.contains_key("cache-control"));
    assert!(hit_inm.headers.contains_key("date"));
    let hit_ims = get(
        &proxy,
        path,
        &[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!(hit_ims.status, 304);
    let changed = get(&proxy, path, &[("if-none-match", "\"v0\"")]).await;
    assert_eq!(changed.status, 200);

    // Passing through (not stored: no-store), the 200 from the origin becomes a 304.
    let pass = "/p?cc=no-store&etag=v2";
    let through = get(&proxy, pass, &[("if-none-match", "W/\"v2\"")]).await;
    assert_eq!(through.status, 304);
    assert_eq!(through.body, "");
    let through_ims = get(
        &proxy,
        "/p?cc=no-store&lm=1",
        &[("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT")],
    )
    .await;
    assert_eq!(through_ims.status, 304);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_etags_are_stable_and_validate() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    let path = "/g?cc=max-age=60";
    let first = get(&proxy, path, &[]).await;
    assert!(
        !first.headers.contains_key("etag"),
        "the first answer streams before hashing"
    );
    let a = get(&proxy, path, &[]).await;
    let b = get(&proxy, path, &[]).await;
    let tag = a.headers["etag"].to_str().unwrap().to_string();
    assert!(tag.starts_with("\"sy-"));
    assert_eq!(b.headers["etag"], tag.as_str());
    let conditional = get(&proxy, path, &[("if-none-match", &tag)]).await;
    assert_eq!(conditional.status, 304);
    assert!(!a.headers.contains_key("x-switchyard-etag"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_by_key_prefix_and_tag() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(&o, "{ enabled: true }", "").await;
    let paths = [
        "/k?cc=max-age=60",
        "/pre/1?cc=max-age=60",
        "/pre/2?cc=max-age=60",
        "/t?cc=max-age=60&tag=team-a%20other",
    ];
    for p in paths {
        get(&proxy, p, &[]).await;
        assert!(get(&proxy, p, &[]).await.cache_status.contains("hit"));
    }
    let purge = |body: serde_json::Value| {
        let url = proxy.admin_url("/cache/purge");
        async move {
            let resp = client().post(url).json(&body).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<serde_json::Value>().await.unwrap()["purged"]
                .as_u64()
                .unwrap()
        }
    };
    assert_eq!(
        purge(serde_json::json!({"key": "127.0.0.1/k?cc=max-age=60"})).await,
        1
    );
    assert_eq!(
        purge(serde_json::json!({"prefix": "127.0.0.1/pre/"})).await,
        2
    );
    assert_eq!(purge(serde_json::json!({"tag": "team-a"})).await, 1);
    let hits_before = o.hits();
    for p in paths {
        assert!(
            get(&proxy, p, &[]).await.cache_status.contains("fwd=miss"),
            "{p}"
        );
    }
    assert_eq!(o.hits() - hits_before, 4, "a purged object was served");
    let bad = client()
        .post(proxy.admin_url("/cache/purge"))
        .header("content-type", "application/json")
        .body("{\"url\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_bytes_under_max_size() {
    let o = spawn_origin("o").await;
    let proxy = cached_proxy(
        &o,
        "{ enabled: true }",
        "cache:\n  max_size: 1MiB\n  max_object_size: 64KiB\n",
    )
    .await;
    for i in 0..256 {
        let a = get(&proxy, &format!("/e/{i}?cc=max-age=600&size=16384"), &[]).await;
        assert_eq!(a.body.len(), 16384);
    }
    let cache = proxy.stats().await["cache"].clone();
    let bytes = cache["bytes"].as_u64().unwrap();
    assert!(bytes <= 1 << 20, "{cache}");
    assert!(bytes as f64 >= 0.9 * (1 << 20) as f64, "{cache}");
    assert!(cache["evictions"].as_u64().unwrap() >= 190, "{cache}");
    let metrics = proxy.metrics().await;
    for name in [
        "switchyard_cache_bytes ",
        "switchyard_cache_entries ",
        "switchyard_cache_evictions_total ",
        "switchyard_cache_lookups_total{result=\"miss\",route=\"/\"} 256",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }
}
