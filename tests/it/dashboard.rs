//! The live dashboard: the page and its headers, the `/stats` fields it reads, and the page
//! itself in headless Chromium (see `browser.rs`) under continuous load, with and without an
//! admin token. Each browser run saves `dashboard.png` in its temp dir (the path is printed).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::browser::{self, Browser};
use crate::common::{client, spawn_origin, spawn_proxy, upstream, Origin, Proxy};
use crate::tls::{tls_block, Ca};

fn config(origin: &Origin, admin: &str) -> String {
    format!(
        "{admin}upstreams:\n{}routes:\n  - match: {{ path_prefix: /cached/ }}\n    upstream: web\n    cache: {{ enabled: true }}\n  - match: {{ path_prefix: / }}\n    upstream: web\n",
        upstream("web", &[(origin.addr, 1)], ""),
    )
}

/// Sends requests until `stop`: cache hits (one cacheable URL, again and again) and misses.
fn load(proxy: &Proxy, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let hit = proxy.url("/cached/hot?cc=max-age=300&size=2000");
    let plain = proxy.url("/plain");
    tokio::spawn(async move {
        let http = client();
        let mut sent = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let url = if sent % 4 == 3 { &plain } else { &hit };
            if http.get(url).send().await.is_ok() {
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent
    })
}

/// What the page shows: rps, hit ratio, the backends table's rows, the status line.
const FIGURES: &str = "JSON.stringify({rps: parseFloat(document.getElementById('rps').textContent) || 0, \
    hit: parseFloat(document.getElementById('hit-ratio').textContent) || 0, \
    rows: [...document.querySelectorAll('#backends tr')].map(tr => [...tr.cells].map(td => td.textContent)), \
    certs: [...document.querySelectorAll('#certs tr')].map(tr => [...tr.cells].map(td => td.textContent)), \
    reloads: [...document.querySelectorAll('#reloads tr')].map(tr => [...tr.cells].map(td => td.textContent)), \
    status: document.getElementById('status').textContent})";

const LIVE: &str = "(() => { const f = JSON.parse(FIGURES); return f.rps > 0 && f.hit > 0 && f.rows.length > 0; })()";

/// Opens the dashboard in Chromium (typing `token` when it asks) and returns the figures
/// once rps and the hit ratio are non-zero, and where the screenshot went.
async fn watch(proxy: &Proxy, token: Option<&'static str>) -> (Value, PathBuf) {
    let url = proxy.admin_url("/dashboard");
    // Kept after the test, to be looked at; the browser profile is removed.
    let shots = tempfile::Builder::new()
        .prefix("switchyard-dashboard-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let shot = shots.join("dashboard.png");
    let path = shot.clone();
    let figures = tokio::task::spawn_blocking(move || {
        let profile = tempfile::tempdir().expect("profile dir");
        let mut chrome = Browser::launch(profile.path());
        chrome.navigate(&url);
        let live = LIVE.replace("FIGURES", FIGURES);
        if let Some(token) = token {
            // Asked for the token, the page says so and waits.
            chrome.wait_for(
                "document.getElementById('auth').className === 'show' && document.getElementById('status').textContent === 'token required'",
                Duration::from_secs(10),
            );
            let submit = |chrome: &mut Browser, text: &str| {
                chrome.eval("document.getElementById('token').focus()");
                chrome.type_text(text);
                chrome.eval("document.getElementById('token-submit').click()");
            };
            // A wrong token is refused, and the page says so.
            submit(&mut chrome, "not-the-token");
            chrome.wait_for(
                "document.getElementById('auth-msg').textContent === 'That token was refused.'",
                Duration::from_secs(10),
            );
            submit(&mut chrome, token);
        }
        chrome.wait_for(&live, Duration::from_secs(20));
        // A few more polls, so the charts have a line to draw.
        std::thread::sleep(Duration::from_millis(2500));
        let kept = chrome.eval("localStorage.length + sessionStorage.length + document.cookie.length");
        assert_eq!(kept, 0, "the page stored something");
        chrome.screenshot(&path);
        let text = chrome.eval(FIGURES);
        serde_json::from_str::<Value>(text.as_str().expect("figures")).expect("figures JSON")
    })
    .await
    .expect("browser session");
    eprintln!("dashboard screenshot: {}", shot.display());
    (figures, shot)
}

fn assert_live(figures: &Value, origin: &Origin) {
    assert!(figures["rps"].as_f64().unwrap() > 0.0, "{figures}");
    assert!(figures["hit"].as_f64().unwrap() > 0.0, "{figures}");
    let rows = figures["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r[1] == origin.addr.to_string())
        .unwrap_or_else(|| panic!("backend {} not listed: {figures}", origin.addr));
    assert_eq!(row[0], "web");
    assert_eq!(row[2], "healthy", "{figures}");
    assert!(
        figures["status"].as_str().unwrap().starts_with("live"),
        "{figures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_live_traffic_in_chromium() {
    if !browser::available() {
        return;
    }
    let o = spawn_origin("web").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = Ca::new("dash ca")
        .leaf(&["dash.test"])
        .write(dir.path(), "dash");
    let proxy = spawn_proxy(&format!(
        "{}{}",
        tls_block(&[(cert, key)], ""),
        config(&o, "")
    ))
    .await;
    // A reload for the page's list.
    assert_eq!(proxy.reload().await.0, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let sent = load(&proxy, Arc::clone(&stop));
    let (figures, shot) = watch(&proxy, None).await;
    stop.store(true, Ordering::Relaxed);
    assert!(sent.await.unwrap() > 10);
    assert_live(&figures, &o);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    let cert = &figures["certs"][0];
    assert_eq!(cert[0], "dash.test", "{figures}");
    assert!(
        cert[2].as_str().unwrap().parse::<i64>().unwrap() > 365,
        "{figures}"
    );
    let reload = &figures["reloads"][0];
    assert_eq!(
        (&reload[1], &reload[2], &reload[3]),
        (&"admin".into(), &"ok".into(), &"2".into()),
        "{figures}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_the_admin_token_and_sends_it() {
    if !browser::available() {
        return;
    }
    let o = spawn_origin("web").await;
    let admin = "admin:\n  listen: 127.0.0.1:0\n  token: dash-s3cret\n";
    let proxy = spawn_proxy(&config(&o, admin)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = load(&proxy, Arc::clone(&stop));
    let (figures, _) = watch(&proxy, Some("dash-s3cret")).await;
    stop.store(true, Ordering::Relaxed);
    sent.await.unwrap();
    assert_live(&figures, &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_without_the_token_with_strict_headers() {
    let o = spawn_origin("web").await;
    let admin = "admin:\n  listen: 127.0.0.1:0\n  token: t0ken\n";
    let proxy = spawn_proxy(&config(&o, admin)).await;
    for path in ["/", "/dashboard"] {
        let resp = client().get(proxy.admin_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(csp.contains("script-src 'sha256-"), "{csp}");
        assert!(!csp.contains("unsafe"), "{csp}");
        let page = resp.text().await.unwrap();
        assert!(page.contains("id=\"rps\"") && page.contains("id=\"hit-ratio\""));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no outside assets"
        );
    }
    // The data itself still needs the token, and a foreign Host is refused for the page too.
    let stats = client()
        .get(proxy.admin_url("/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(stats.status(), 401);
    let rebound = client()
        .get(proxy.admin_url("/"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_has_traffic_reloads_and_certificate_days() {
    let o = spawn_origin("web").await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = Ca::new("dash ca")
        .leaf(&["dash.test"])
        .write(dir.path(), "dash");
    let text = format!("{}{}", tls_block(&[(cert, key)], ""), config(&o, ""));
    let proxy = spawn_proxy(&text).await;
    for _ in 0..20 {
        assert_eq!(proxy.get("/cached/a?cc=max-age=60").await.0, 200);
    }
    assert_eq!(proxy.get("/nothing-here?status=404").await.0, 404);
    // The window counts whole seconds: wait for the current one to end.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let stats = proxy.stats().await;
    let traffic = &stats["traffic"];
    assert_eq!(traffic["requests"], 21, "{traffic}");
    assert!(traffic["rps"].as_f64().unwrap() > 0.0, "{traffic}");
    let p50 = traffic["latency_ms"]["p50"].as_f64().unwrap();
    let p99 = traffic["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= p99, "{traffic}");
    assert_eq!(traffic["status"]["2xx"], 20, "{traffic}");
    assert_eq!(traffic["status"]["4xx"], 1, "{traffic}");
    let days = stats["tls"]["certificates"][0]["days_left"]
        .as_i64()
        .unwrap();
    assert!(days > 365, "{days}");
    assert_eq!(stats["reloads"], serde_json::json!([]));
    // A good reload and a bad one, newest last.
    assert_eq!(proxy.reload().await.0, 200);
    proxy.rewrite_config("upstreams: nope\n");
    assert_eq!(proxy.reload().await.0, 422);
    let reloads = proxy.stats().await["reloads"].clone();
    let reloads = reloads.as_array().unwrap();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    assert_eq!(reloads[0]["ok"], true);
    assert_eq!(reloads[0]["trigger"], "admin");
    assert_eq!(reloads[0]["version"], 2);
    assert_eq!(reloads[1]["ok"], false);
    assert!(reloads[1]["error"].as_str().unwrap().contains("upstreams"));
    assert_eq!(reloads[1]["version"], 2);
}
