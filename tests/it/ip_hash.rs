//! ip_hash over real origins: stable per client, even spread, minimal remapping, and only
//! trusted peers' X-Forwarded-For believed.

use std::collections::HashMap;

use crate::common::{client, pool_config, spawn_origin, spawn_proxy, Origin, Proxy};

const TRUSTED: &str =
    "server:\n  listen: [\"127.0.0.1:0\"]\n  trusted_proxies: [\"127.0.0.1/32\"]\n";

async fn proxy_over(origins: &[&Origin], trusted: bool) -> Proxy {
    let backends: Vec<_> = origins.iter().map(|o| (o.addr, 1)).collect();
    let server = if trusted { TRUSTED } else { "" };
    spawn_proxy(&format!(
        "{server}{}",
        pool_config(&backends, "    strategy: ip_hash\n")
    ))
    .await
}

async fn backend_for(proxy: &Proxy, ip: &str) -> String {
    let resp = client()
        .get(proxy.url("/"))
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.headers()["x-origin"].to_str().unwrap().to_string()
}

fn client_ips(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("198.51.{}.{}", i / 200, 1 + i % 200))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_same_backend_and_even_spread() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
        spawn_origin("d").await,
    ];
    let refs: Vec<&Origin> = origins.iter().collect();
    let proxy = proxy_over(&refs, true).await;
    let first = backend_for(&proxy, "203.0.113.50").await;
    for _ in 0..49 {
        assert_eq!(backend_for(&proxy, "203.0.113.50").await, first);
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for ip in client_ips(200) {
        *counts.entry(backend_for(&proxy, &ip).await).or_default() += 1;
    }
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|&c| c <= 80), "over 40%: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_backend_moves_only_its_clients() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
        spawn_origin("d").await,
    ];
    let all: Vec<&Origin> = origins.iter().collect();
    let without_c: Vec<&Origin> = origins
        .iter()
        .filter(|o| o.addr != origins[2].addr)
        .collect();
    let before = proxy_over(&all, true).await;
    let after = proxy_over(&without_c, true).await;
    let mut moved = 0;
    for ip in client_ips(200) {
        let was = backend_for(&before, &ip).await;
        let now = backend_for(&after, &ip).await;
        if was == "c" {
            moved += 1;
            assert_ne!(now, "c");
        } else {
            assert_eq!(was, now, "client {ip} moved though its backend stayed");
        }
    }
    assert!(
        (20..=90).contains(&moved),
        "{moved} of 200 were on the removed backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_peers_forwarded_for_is_ignored() {
    let origins = [
        spawn_origin("a").await,
        spawn_origin("b").await,
        spawn_origin("c").await,
    ];
    let refs: Vec<&Origin> = origins.iter().collect();
    let proxy = proxy_over(&refs, false).await;
    let first = backend_for(&proxy, &client_ips(1)[0]).await;
    for ip in client_ips(40) {
        assert_eq!(
            backend_for(&proxy, &ip).await,
            first,
            "{ip} moved the client"
        );
    }
}
