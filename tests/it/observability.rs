//! Observability: the access log (a JSON line per kind of request, nginx's `combined`,
//! reopening on SIGUSR1), request ids, trace context and `/ready`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::{client, closed_port, spawn_origin, spawn_proxy, upstream, wait_until, Proxy};

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The JSON log lines of `path` whose `path` field is `request_path`, waiting for one.
async fn json_line(log: &Path, request_path: &str) -> Value {
    let mut found = None;
    let limit = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < limit && found.is_none() {
        found = lines(log)
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).expect("each line is JSON"))
            .find(|v| v["path"] == request_path);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    found.unwrap_or_else(|| panic!("no line for {request_path} in:\n{}", lines(log).join("\n")))
}

/// A config with an access log to `log` and the upstreams `pool` (at `origin`) and `dead`.
fn logged_config(log: &Path, access: &str, server: &str, origin: std::net::SocketAddr) -> String {
    format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  grace_period: 5s\n{server}access_log:\n  path: {}\n{access}upstreams:\n{}{}routes:\n  - match: {{ path_prefix: /cached/ }}\n    upstream: pool\n    cache: {{ enabled: true }}\n  - match: {{ path_prefix: /dead/ }}\n    upstream: dead\n  - match: {{ path_prefix: / }}\n    upstream: pool\n",
        log.display(),
        upstream("pool", &[(origin, 1)], ""),
        upstream("dead", &[(closed_port(), 1)], "    required: false\n"),
    )
}

fn temp_log(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log_has_a_line_for_every_kind_of_request() {
    let o = spawn_origin("o").await;
    let (_dir, log) = temp_log("access.log");
    let proxy = spawn_proxy(&logged_config(
        &log,
        "  format: json\n  mask_query: [token]\n",
        "  max_body_size: 1KiB\n",
        o.addr,
    ))
    .await;
    let c = client();
    // A miss, then a hit.
    for _ in 0..2 {
        let resp = c
            .get(proxy.url("/cached/a?cc=max-age=60"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    // Masked query, secrets in Authorization and Cookie.
    let resp = c
        .get(proxy.url("/plain?token=s3cret&x=1"))
        .header("authorization", "Bearer s3cret-auth")
        .header("cookie", "session=s3cret-cookie")
        .header("user-agent", "obs-test/1")
        .header("referer", "http://example.test/from")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // An upstream failure.
    let resp = c.get(proxy.url("/dead/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    // A 413 from the body limit.
    let resp = c
        .post(proxy.url("/big"))
        .body("y".repeat(4_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // A client that gives up before the answer.
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /slow/1500 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(stream);

    let miss = json_line(&log, "/cached/a").await;
    let text = std::fs::read_to_string(&log).unwrap();
    let cached: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["path"] == "/cached/a")
        .collect();
    assert_eq!(cached.len(), 2, "{text}");
    assert_eq!(miss["cache"], "miss");
    assert_eq!(cached[1]["cache"], "hit");
    assert_eq!(miss["upstream"], o.addr.to_string());
    assert_eq!(miss["upstream_status"], 200);
    assert!(cached[1]["upstream"].is_null(), "a hit has no upstream");
    for field in [
        "time",
        "client_ip",
        "method",
        "host",
        "path",
        "query",
        "status",
        "bytes_sent",
        "duration_ms",
        "upstream",
        "upstream_status",
        "upstream_ms",
        "cache",
        "encoding",
        "route",
        "request_id",
        "trace_id",
        "protocol",
        "tls_version",
        "user_agent",
        "referer",
        "error",
    ] {
        assert!(miss.get(field).is_some(), "{field} missing in {miss}");
    }
    assert_eq!(miss["client_ip"], "127.0.0.1");
    assert_eq!(miss["method"], "GET");
    assert_eq!(miss["protocol"], "HTTP/1.1");
    assert_eq!(miss["route"], "/cached/");
    assert!(miss["bytes_sent"].as_u64().unwrap() > 0);
    assert_eq!(miss["request_id"].as_str().unwrap().len(), 32);

    let plain = json_line(&log, "/plain").await;
    assert_eq!(plain["query"], "token=***&x=1");
    assert_eq!(plain["user_agent"], "obs-test/1");
    assert_eq!(plain["referer"], "http://example.test/from");
    assert!(plain["cache"].is_null(), "no cache on this route");

    let failed = json_line(&log, "/dead/x").await;
    assert_eq!(failed["status"], 502);
    assert!(failed["upstream"]
        .as_str()
        .is_some_and(|u| u.starts_with("127.0.0.1:")));
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    assert!(failed["upstream_status"].is_null());

    let refused = json_line(&log, "/big").await;
    assert_eq!(refused["status"], 413);
    assert_eq!(refused["method"], "POST");

    let aborted = json_line(&log, "/slow/1500").await;
    assert_eq!(aborted["status"], 499, "{aborted}");

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("s3cret"), "secrets logged: {text}");
    assert!(
        proxy
            .metrics()
            .await
            .contains("switchyard_access_log_dropped_total 0"),
        "the dropped-lines counter is exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_access_log_parses_as_nginx_combined() {
    let o = spawn_origin("o").await;
    let (_dir, log) = temp_log("access.log");
    let proxy = spawn_proxy(&logged_config(&log, "  format: combined\n", "", o.addr)).await;
    let resp = client()
        .get(proxy.url("/c/d?x=1"))
        .header("user-agent", "Mozilla/5.0 \"quoted\"")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body_len = resp.bytes().await.unwrap().len();
    let resp = client().get(proxy.url("/dead/y")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    wait_until(Duration::from_secs(5), || {
        let n = lines(&log).len();
        async move { n >= 2 }
    })
    .await;
    // nginx's combined: $remote_addr - $remote_user [$time_local] "$request" $status
    // $body_bytes_sent "$http_referer" "$http_user_agent"
    let combined = regex::Regex::new(
        r#"^(\S+) - (\S+) \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "((?:[^"\\]|\\.)*)" (\d{3}) (\d+) "((?:[^"\\]|\\.)*)" "((?:[^"\\]|\\.)*)"$"#,
    )
    .unwrap();
    // Found by request line: a client of a test that ended may still knock on a reused port.
    let all = lines(&log);
    let line_of = |request: &str| {
        all.iter()
            .find(|l| l.contains(request))
            .unwrap_or_else(|| panic!("no line for {request}: {all:#?}"))
    };
    let first = combined
        .captures(line_of("\"GET /c/d?x=1 "))
        .unwrap_or_else(|| panic!("not combined: {all:#?}"));
    assert_eq!(&first[1], "127.0.0.1");
    assert_eq!(&first[2], "-");
    assert_eq!(&first[4], "GET /c/d?x=1 HTTP/1.1");
    assert_eq!(&first[5], "200");
    assert_eq!(first[6].parse::<usize>().unwrap(), body_len);
    assert_eq!(&first[7], "-");
    assert_eq!(&first[8], "Mozilla/5.0 \\x22quoted\\x22");
    let second = combined
        .captures(line_of("\"GET /dead/y "))
        .expect("combined");
    assert_eq!(&second[5], "502");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_log_file_after_a_rename() {
    let o = spawn_origin("o").await;
    let (_dir, log) = temp_log("access.log");
    let proxy = spawn_proxy(&logged_config(&log, "", "", o.addr)).await;
    assert_eq!(proxy.get("/first").await.0, 200);
    json_line(&log, "/first").await;
    let rotated = log.with_extension("log.1");
    std::fs::rename(&log, &rotated).unwrap();
    signal(proxy.child.id(), "USR1");
    wait_until(Duration::from_secs(5), || {
        let reopened = log.exists();
        async move { reopened }
    })
    .await;
    assert_eq!(proxy.get("/second").await.0, 200);
    json_line(&log, "/second").await;
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        old.contains("\"/first\"") && !old.contains("\"/second\""),
        "{old}"
    );
}

async fn seen(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client().get(proxy.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_from_trusted_peers_and_replaced_from_others() {
    let o = spawn_origin("o").await;
    let (_dir, log) = temp_log("access.log");
    let trusted = spawn_proxy(&logged_config(
        &log,
        "",
        "  trusted_proxies: [\"127.0.0.1/32\"]\n",
        o.addr,
    ))
    .await;
    let resp = seen(&trusted, "/t", &[("x-request-id", "edge-42")]).await;
    assert_eq!(header(&resp, "x-request-id"), "edge-42");
    assert_eq!(header(&resp, "x-seen-request-id"), "edge-42");
    assert_eq!(json_line(&log, "/t").await["request_id"], "edge-42");

    let (_dir2, log2) = temp_log("access.log");
    let untrusted = spawn_proxy(&logged_config(&log2, "", "", o.addr)).await;
    let resp = seen(&untrusted, "/u", &[("x-request-id", "edge-42")]).await;
    let id = header(&resp, "x-request-id");
    assert_ne!(id, "edge-42");
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        header(&resp, "x-seen-request-id"),
        id,
        "the backend sees the same id"
    );
    assert_eq!(json_line(&log2, "/u").await["request_id"], id.as_str());
    // Error answers name the id.
    let resp = seen(&untrusted, "/dead/z", &[]).await;
    assert_eq!(resp.status(), 502);
    let id = header(&resp, "x-request-id");
    let body = resp.text().await.unwrap();
    assert!(body.starts_with("502 Bad Gateway"), "{body}");
    assert!(body.contains(&format!("request id {id}")), "{body}");
    assert_eq!(json_line(&log2, "/dead/z").await["request_id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_propagated_or_started() {
    let o = spawn_origin("o").await;
    let (_dir, log) = temp_log("access.log");
    let proxy = spawn_proxy(&logged_config(&log, "", "", o.addr)).await;
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = seen(
        &proxy,
        "/in",
        &[("traceparent", tp), ("tracestate", "vendor=1")],
    )
    .await;
    assert_eq!(header(&resp, "x-seen-traceparent"), tp);
    assert_eq!(header(&resp, "x-seen-tracestate"), "vendor=1");
    assert_eq!(
        json_line(&log, "/in").await["trace_id"],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    // None, or a malformed one: a new trace starts, and the backend sees it.
    for (path, headers) in [
        ("/none", vec![]),
        (
            "/bad",
            vec![("traceparent", "00-xyz-1-01"), ("tracestate", "v=2")],
        ),
    ] {
        let resp = seen(&proxy, path, &headers).await;
        let started = header(&resp, "x-seen-traceparent");
        let parts: Vec<&str> = started.split('-').collect();
        assert_eq!(parts.len(), 4, "{started}");
        assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16));
        assert_eq!(header(&resp, "x-seen-tracestate"), "");
        assert_eq!(json_line(&log, path).await["trace_id"], parts[1]);
    }
}

async fn ready(proxy: &Proxy) -> (u16, Value) {
    let resp = client()
        .get(proxy.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_when_the_last_backend_goes_down_and_on_sigterm() {
    let o = spawn_origin("o").await;
    let check = "    health_check:\n      type: http\n      path: /health\n      interval: 100ms\n      timeout: 500ms\n      unhealthy_threshold: 1\n      healthy_threshold: 1\n";
    let mut proxy = spawn_proxy(&format!(
        "server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  grace_period: 5s\n  shutdown_delay: 3s\nupstreams:\n{}{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n",
        upstream("pool", &[(o.addr, 1)], check),
        upstream("optional", &[(closed_port(), 1)], &format!("    required: false\n{check}")),
    ))
    .await;
    wait_until(Duration::from_secs(5), || async {
        ready(&proxy).await.0 == 200
    })
    .await;
    assert_eq!(
        client()
            .get(proxy.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    o.set_health(500);
    wait_until(Duration::from_secs(5), || async {
        ready(&proxy).await.0 == 503
    })
    .await;
    let (_, doc) = ready(&proxy).await;
    assert!(
        doc["reasons"].to_string().contains("upstream pool"),
        "{doc}"
    );
    assert_eq!(
        client()
            .get(proxy.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "liveness does not follow the backends"
    );
    o.set_health(200);
    wait_until(Duration::from_secs(5), || async {
        ready(&proxy).await.0 == 200
    })
    .await;

    signal(proxy.child.id(), "TERM");
    wait_until(Duration::from_secs(2), || async {
        ready(&proxy).await.0 == 503
    })
    .await;
    let (_, doc) = ready(&proxy).await;
    assert!(
        doc["reasons"].to_string().contains("shutting down"),
        "{doc}"
    );
    // Still serving while a load balancer takes the hint.
    assert_eq!(proxy.get("/still").await.0, 200);
    let status = tokio::task::spawn_blocking(move || proxy.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
}
