//! What the cache must never do: serve one user's response to another (cookies), serve a
//! coding the client cannot decode, or let one request header empty it.

use crate::common::{client, spawn_origin, spawn_proxy, upstream, Origin, Proxy};

/// A proxy whose only route caches with `route_cache` (a YAML flow map).
async fn proxy(origin: &Origin, route_cache: &str) -> Proxy {
    spawn_proxy(&format!(
        "upstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n    cache: {route_cache}\n",
        upstream("pool", &[(origin.addr, 1)], "")
    ))
    .await
}

/// `(Cache-Status, body)`.
async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> (String, String) {
    let mut request = client().get(proxy.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let resp = request.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let cs = resp
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (cs, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cookie_request_is_never_served_another_users_response() {
    let o = spawn_origin("o").await;
    // The shipped example: default_ttl on an API whose origin sends no cache headers.
    let p = proxy(&o, "{ default_ttl: 60s }").await;
    let a = [("cookie", "session=alice")];
    let b = [("cookie", "session=bob")];
    let (cs, alice) = get(&p, "/api/me?v=1", &a).await;
    assert_eq!(cs, "switchyard; fwd=bypass; detail=cookie");
    let (cs, bob) = get(&p, "/api/me?v=1", &b).await;
    assert_eq!(cs, "switchyard; fwd=bypass; detail=cookie");
    assert_ne!(bob, alice, "bob got alice's response");
    let (cs, _) = get(&p, "/api/me?v=1", &[]).await;
    assert_eq!(
        cs, "switchyard; fwd=miss; stored",
        "nothing was stored for alice"
    );
    assert_eq!(o.hits(), 3);
    // An anonymous response is stored, but not served to a request with a cookie.
    assert!(get(&p, "/api/me?v=1", &[]).await.0.contains("hit"));
    let (cs, _) = get(&p, "/api/me?v=1", &a).await;
    assert_eq!(cs, "switchyard; fwd=bypass; detail=cookie");
    assert_eq!(o.hits(), 4);
    // Explicit shared-cache permission stores the response to a cookie request.
    let public = "/pub?cc=public,%20max-age=60";
    let (cs, _) = get(&p, public, &a).await;
    assert_eq!(cs, "switchyard; fwd=bypass; stored; detail=cookie");
    assert!(get(&p, public, &[]).await.0.contains("hit"));
    assert_eq!(o.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_can_ignore_cookies_or_key_on_some() {
    let o = spawn_origin("o").await;
    let ignore = proxy(&o, "{ default_ttl: 60s, cookies: ignore }").await;
    get(&ignore, "/i?v=1", &[("cookie", "session=alice")]).await;
    let (cs, _) = get(&ignore, "/i?v=1", &[("cookie", "session=bob")]).await;
    assert!(cs.starts_with("switchyard; hit"), "{cs}");
    assert_eq!(o.hits(), 1);

    let keyed = proxy(&o, "{ default_ttl: 60s, cookies: [lang] }").await;
    let (_, en) = get(&keyed, "/k?v=1", &[("cookie", "lang=en; sid=1")]).await;
    let (cs, fr) = get(&keyed, "/k?v=1", &[("cookie", "lang=fr")]).await;
    assert_eq!(cs, "switchyard; fwd=miss; stored");
    assert_ne!(en, fr);
    let (cs, en2) = get(&keyed, "/k?v=1", &[("cookie", "sid=2; lang=en")]).await;
    assert!(cs.starts_with("switchyard; hit"), "{cs}");
    assert_eq!(en2, en);
    let (cs, _) = get(&keyed, "/k?v=1", &[]).await;
    assert_eq!(
        cs, "switchyard; fwd=miss; stored",
        "no lang cookie is its own variant"
    );
    assert_eq!(o.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_coding_the_client_cannot_decode_is_a_miss() {
    let o = spawn_origin("o").await;
    let p = proxy(&o, "{ enabled: true }").await;
    // Varied on Accept-Encoding: `deflate` is not the identity variant.
    let varied = "/d?cc=max-age=60&vary=Accept-Encoding&ce=deflate";
    let (cs, _) = get(&p, varied, &[("accept-encoding", "deflate")]).await;
    assert_eq!(cs, "switchyard; fwd=miss; stored");
    let (cs, _) = get(&p, varied, &[]).await;
    assert_eq!(cs, "switchyard; fwd=miss; stored");
    // Not varied at all: the stored coding is checked on every hit.
    let plain = "/n?cc=max-age=60&ce=deflate";
    get(&p, plain, &[("accept-encoding", "gzip, deflate")]).await;
    let (cs, _) = get(&p, plain, &[("accept-encoding", "gzip, deflate")]).await;
    assert!(cs.starts_with("switchyard; hit"), "{cs}");
    let (cs, _) = get(&p, plain, &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(cs, "switchyard; fwd=miss; stored");
    assert_eq!(o.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_cache_control_is_ignored_unless_the_route_honors_it() {
    let o = spawn_origin("o").await;
    let directives: [(&str, &str); 4] = [
        ("cache-control", "no-cache"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
        ("cache-control", "no-store"),
    ];
    let p = proxy(&o, "{ enabled: true }").await;
    get(&p, "/c?cc=max-age=60", &[]).await;
    for header in directives {
        let (cs, _) = get(&p, "/c?cc=max-age=60", &[header]).await;
        assert!(cs.starts_with("switchyard; hit"), "{header:?}: {cs}");
    }
    assert_eq!(o.hits(), 1);

    let honor = proxy(&o, "{ client_cache_control: honor }").await;
    get(&honor, "/h?cc=max-age=60", &[]).await;
    for (header, expect) in directives.iter().zip([
        "fwd=request",
        "fwd=request",
        "fwd=request",
        "fwd=bypass; detail=no-store",
    ]) {
        let (cs, _) = get(&honor, "/h?cc=max-age=60", &[*header]).await;
        assert!(cs.contains(expect), "{header:?}: {cs}");
    }
    assert_eq!(o.hits(), 6);
}
