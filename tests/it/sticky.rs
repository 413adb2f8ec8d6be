//! Sticky sessions over real origins: the cookie pins, survives only while its backend is up,
//! and cannot be forged.

use std::time::Duration;

use crate::common::{client, spawn_origin, spawn_pool, wait_until, Proxy};

const CHECK: &str = "    health_check: { path: /health, interval: 100ms, timeout: 500ms, unhealthy_threshold: 2, healthy_threshold: 2 }\n";

/// GET `/` with an optional cookie: (origin, Set-Cookie).
async fn get(proxy: &Proxy, cookie: Option<&str>) -> (String, Option<String>) {
    let mut request = client().get(proxy.url("/"));
    if let Some(c) = cookie {
        request = request.header("cookie", c);
    }
    let resp = request.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    (
        resp.headers()["x-origin"].to_str().unwrap().to_string(),
        set,
    )
}

fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_pins_then_repins_when_the_backend_goes_down() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let c = spawn_origin("c").await;
    let proxy = spawn_pool(&[(a.addr, 1), (b.addr, 1), (c.addr, 1)], &format!("    sticky:\n      cookie: SWITCHYARD_STICKY\n      ttl: 1h\n      secret: \"${{STICKY_SECRET:-s3cret}}\"\n{CHECK}")).await;
    let (first, set) = get(&proxy, None).await;
    let set = set.expect("first response sets the cookie");
    assert!(set.starts_with("SWITCHYARD_STICKY="), "{set}");
    assert!(
        set.ends_with("; Max-Age=3600; Path=/; HttpOnly; SameSite=Lax"),
        "{set}"
    );
    for origin in [&a, &b, &c] {
        assert!(
            !set.contains(&origin.addr.to_string()),
            "cookie reveals an address"
        );
    }
    let cookie = pair(&set);
    for _ in 0..20 {
        let (origin, again) = get(&proxy, Some(&cookie)).await;
        assert_eq!(origin, first);
        assert_eq!(again, None, "a valid fresh cookie is not re-issued");
    }

    let pinned = match first.as_str() {
        "a" => &a,
        "b" => &b,
        _ => &c,
    };
    pinned.set_health(503);
    wait_until(Duration::from_secs(5), || async {
        !proxy.backend_healthy("pool", pinned.addr).await
    })
    .await;
    let (moved_to, reissued) = get(&proxy, Some(&cookie)).await;
    assert_ne!(moved_to, first);
    let new_cookie = pair(&reissued.expect("cookie re-issued for the new backend"));
    assert_ne!(new_cookie, cookie);
    for _ in 0..10 {
        assert_eq!(get(&proxy, Some(&new_cookie)).await.0, moved_to);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_cookie_is_ignored() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let proxy = spawn_pool(
        &[(a.addr, 1), (b.addr, 1)],
        "    sticky: { cookie: SID, secret: k }\n",
    )
    .await;
    let (_, set) = get(&proxy, None).await;
    let cookie = pair(&set.unwrap());
    // Flip one character of the backend id.
    let mut bytes = cookie.into_bytes();
    let i = "SID=".len();
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(bytes).unwrap();
    let mut origins = Vec::new();
    for _ in 0..4 {
        let (origin, set) = get(&proxy, Some(&tampered)).await;
        assert!(set.is_some(), "a tampered cookie is replaced");
        origins.push(origin);
    }
    origins.sort();
    origins.dedup();
    assert_eq!(
        origins.len(),
        2,
        "requests with a bad cookie are balanced normally"
    );
}
