//! Test fixtures: in-process origins and the real `switchyard` binary, all on 127.0.0.1 port 0.

use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An origin server that names itself in every answer and counts what it served.
pub struct Origin {
    pub addr: SocketAddr,
    state: Arc<OriginState>,
    task: JoinHandle<()>,
}

struct OriginState {
    name: String,
    hits: AtomicU64,
    health_checks: AtomicU64,
    health_status: AtomicU16,
    status: AtomicU16,
    delay_ms: AtomicU64,
    not_modified: AtomicU64,
}

impl Origin {
    /// Requests served, health checks excluded.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }

    pub fn health_checks(&self) -> u64 {
        self.state.health_checks.load(Ordering::SeqCst)
    }

    /// The status `/health` answers with from now on.
    pub fn set_health(&self, status: u16) {
        self.state.health_status.store(status, Ordering::SeqCst);
    }

    /// The status every other path answers with from now on.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// 304s sent to conditional requests (`cond=1`).
    pub fn not_modified(&self) -> u64 {
        self.state.not_modified.load(Ordering::SeqCst)
    }

    /// Stops accepting connections (the port closes).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// A delay before every answer but `/health`.
    pub fn set_delay(&self, delay: Duration) {
        self.state
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an origin. Paths: `/health` (settable status), `/slow/<ms>` (answers after a delay),
/// `/hop` (sends hop-by-hop headers); anything else answers 200 with a body naming the origin,
/// its hit count and the path, and echoes the forwarding, request id and trace headers it saw
/// as `x-seen-*`.
///
/// Query parameters shape the answer: `cc` (Cache-Control), `etag` / `wetag` (strong / weak
/// ETag), `lm=1` (a fixed Last-Modified), `expires` (Expires), `vary` (Vary; the body also
/// names the varied header's value), `cookie=1` (Set-Cookie), `tag` (Surrogate-Key),
/// `size=N` (an N-byte body), `page=N` (an N-byte HTML page), `type` (Content-Type), `ce`
/// (Content-Encoding), `age` (Age), `date` (Date; `%20` and `%2C` for space and comma),
/// `status=N`, `range=1` (a 206 with Content-Range), `cond=1` (answer If-None-Match with 304,
/// with `date304` as its Date).
pub async fn spawn_origin(name: &str) -> Origin {
    spawn_origin_at(name, "127.0.0.1:0".parse().expect("address")).await
}

/// Like [`spawn_origin`] on a given address (to bring an origin back on its old port).
pub async fn spawn_origin_at(name: &str, addr: SocketAddr) -> Origin {
    let listener = TcpListener::bind(addr).await.expect("bind origin");
    let addr = listener.local_addr().expect("origin address");
    let state = Arc::new(OriginState {
        name: name.to_string(),
        hits: AtomicU64::new(0),
        health_checks: AtomicU64::new(0),
        health_status: AtomicU16::new(200),
        status: AtomicU16::new(200),
        delay_ms: AtomicU64::new(0),
        not_modified: AtomicU64::new(0),
    });
    let accept_state = Arc::clone(&state);
    let task = serve_http1(listener, move |req| handle(Arc::clone(&accept_state), req));
    Origin { addr, state, task }
}

/// Serves HTTP/1.1 on `listener`, answering each request with `handler`, until the returned
/// task is aborted (which closes the connections it has open too). The tests' origins are
/// this loop with their own handler.
pub fn serve_http1<F, Fut, B, E>(listener: TcpListener, handler: F) -> JoinHandle<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, E>> + Send + 'static,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service_fn(handler.clone());
            connections.spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

async fn handle(
    state: Arc<OriginState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        state.health_checks.fetch_add(1, Ordering::SeqCst);
        let status = state.health_status.load(Ordering::SeqCst);
        return Ok(Response::builder()
            .status(status)
            .body(Full::new(Bytes::from_static(b"health")))
            .expect("response"));
    }
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.replace("%20", " ").replace("%2C", ",")))
        .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if param("cond") == Some("1") {
        if let (Some(tag), Some(inm)) = (param("etag"), req.headers().get("if-none-match")) {
            if inm.to_str().unwrap_or("").contains(&format!("\"{tag}\"")) {
                state.not_modified.fetch_add(1, Ordering::SeqCst);
                let mut resp = Response::builder()
                    .status(304)
                    .header("etag", format!("\"{tag}\""));
                if let Some(cc) = param("cc") {
                    resp = resp.header("cache-control", cc);
                }
                if let Some(date) = param("date304") {
                    resp = resp.header("date", date);
                }
                return Ok(resp.body(Full::new(Bytes::new())).expect("response"));
            }
        }
    }
    let hit = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
    let mut delay = state.delay_ms.load(Ordering::SeqCst);
    if let Some(ms) = path.strip_prefix("/slow/") {
        delay += ms.parse::<u64>().unwrap_or(0);
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut resp = Response::builder()
        .status(state.status.load(Ordering::SeqCst))
        .header("x-origin", state.name.as_str())
        .header(
            "content-type",
            param("type").unwrap_or("text/plain").to_string(),
        );
    for (seen, header) in [
        ("x-seen-forwarded-for", "x-forwarded-for"),
        ("x-seen-forwarded-proto", "x-forwarded-proto"),
        ("x-seen-forwarded-host", "x-forwarded-host"),
        ("x-seen-host", "host"),
        ("x-seen-request-id", "x-request-id"),
        ("x-seen-traceparent", "traceparent"),
        ("x-seen-tracestate", "tracestate"),
    ] {
        if let Some(v) = req.headers().get(header) {
            resp = resp.header(seen, v);
        }
    }
    if path == "/hop" {
        resp = resp
            .header("connection", "x-internal")
            .header("x-internal", "secret")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic");
    }
    if query.is_empty() {
        return Ok(resp
            .body(Full::new(Bytes::from(state.name.clone())))
            .expect("response"));
    }
    let headers = [
        ("cc", "cache-control"),
        ("expires", "expires"),
        ("vary", "vary"),
        ("tag", "surrogate-key"),
        ("ce", "content-encoding"),
        ("age", "age"),
        ("date", "date"),
    ];
    if let Some(status) = param("status").and_then(|s| s.parse::<u16>().ok()) {
        resp = resp.status(status);
    }
    if param("range") == Some("1") {
        resp = resp.status(206).header("content-range", "bytes 0-99/1000");
    }
    for (name, header) in headers {
        if let Some(v) = param(name) {
            resp = resp.header(header, v);
        }
    }
    if let Some(tag) = param("etag") {
        resp = resp.header("etag", format!("\"{tag}\""));
    }
    if let Some(tag) = param("wetag") {
        resp = resp.header("etag", format!("W/\"{tag}\""));
    }
    if param("lm") == Some("1") {
        resp = resp.header("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT");
    }
    if param("cookie") == Some("1") {
        resp = resp.header("set-cookie", "session=1; Path=/");
    }
    let varied = param("vary")
        .and_then(|name| {
            req.headers()
                .get(name.split(',').next().unwrap_or("").trim())
        })
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    if let Some(n) = param("page").and_then(|n| n.parse::<usize>().ok()) {
        let body = switchyard::compress::encoder::sample_html(n);
        return Ok(resp.body(Full::new(Bytes::from(body))).expect("response"));
    }
    if param("status") == Some("204") {
        return Ok(resp.body(Full::new(Bytes::new())).expect("response"));
    }
    let body = match param("size").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => {
            let line = format!("{} {hit} {varied} ", state.name);
            line.bytes()
                .chain(std::iter::repeat(b'x'))
                .take(n)
                .collect::<Vec<u8>>()
        }
        None => format!("{} {hit} {} {varied}", state.name, req.uri()).into_bytes(),
    };
    Ok(resp.body(Full::new(Bytes::from(body))).expect("response"))
}

/// A loopback port that refuses connections for as long as the tests run: it is held by a
/// bound socket that never listens, so no origin or proxy of another test can be given it.
pub fn closed_port() -> SocketAddr {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind");
    let addr = socket
        .local_addr()
        .expect("address")
        .as_socket()
        .expect("inet address");
    // Kept bound until the test process exits.
    std::mem::forget(socket);
    addr
}

/// A loopback port free now, for a server the test starts on a fixed port. Another test could
/// take it first; use it only where the address must be known before the server starts.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address")
}

/// A running `switchyard` process; killed on drop.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The first TLS listener, when the config has a `tls` block.
    pub tls: Option<SocketAddr>,
    pub child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `config` with `server` and `admin` blocks on port 0 added unless it has its own.
pub fn full_config(config: &str) -> String {
    let mut text = String::new();
    if !config.contains("\nserver:") && !config.starts_with("server:") {
        text.push_str("server:\n  listen: [\"127.0.0.1:0\"]\n  threads: 2\n  grace_period: 5s\n");
    }
    if !config.contains("\nadmin:") && !config.starts_with("admin:") {
        text.push_str("admin:\n  listen: 127.0.0.1:0\n");
    }
    text.push_str(config);
    text
}

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// Starts the proxy with `config` (YAML). The config's `server`/`admin` listen addresses
/// are set to port 0 unless given.
pub async fn spawn_proxy(config: &str) -> Proxy {
    spawn_proxy_env(config, &[]).await
}

pub async fn spawn_proxy_env(config: &str, env: &[(&str, &str)]) -> Proxy {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("switchyard.yaml");
    std::fs::write(&path, full_config(config)).expect("write config");
    let mut command = Command::new(binary());
    command
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start switchyard");
    let stdout = child.stdout.take().expect("stdout");
    let (addr, admin, tls) = tokio::task::spawn_blocking(move || {
        let mut proxy = None;
        let mut admin = None;
        let mut tls = None;
        let mut lines = BufReader::new(stdout).lines();
        while proxy.is_none() || admin.is_none() {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(a) = line.strip_prefix("switchyard: proxy listening on http://") {
                proxy = a.trim().parse::<SocketAddr>().ok();
            } else if let Some(a) = line.strip_prefix("switchyard: proxy listening on https://") {
                tls = tls.or_else(|| a.split_whitespace().next()?.parse::<SocketAddr>().ok());
            } else if let Some(a) = line.strip_prefix("switchyard: admin listening on http://") {
                admin = a.trim().parse::<SocketAddr>().ok();
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (proxy, admin, tls)
    })
    .await
    .expect("read stdout");
    let (Some(addr), Some(admin)) = (addr, admin) else {
        let status = child.wait();
        panic!("switchyard did not start: {status:?}");
    };
    let proxy = Proxy {
        addr,
        admin,
        tls,
        child,
        dir,
    };
    wait_until(Duration::from_secs(10), || async {
        client()
            .get(format!("http://{admin}/health"))
            .send()
            .await
            .is_ok()
            && tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    proxy
}

/// An HTTP client that never uses a proxy from the environment.
/// A client that speaks HTTP/2 with prior knowledge (h2c) to a plain listener.
pub fn h2c_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("h2c client")
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

impl Proxy {
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("switchyard.yaml")
    }

    /// Replaces the config file the way an editor does: write a new file, rename it over.
    pub fn rewrite_config(&self, config: &str) {
        let tmp = self.dir.path().join(".switchyard.yaml.tmp");
        std::fs::write(&tmp, full_config(config)).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("replace config");
    }

    /// `POST /reload`: (status, JSON body).
    pub async fn reload(&self) -> (u16, serde_json::Value) {
        let resp = client()
            .post(self.admin_url("/reload"))
            .send()
            .await
            .expect("reload");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("reload json"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// GET `path` and return (status, x-origin header or "").
    pub async fn get(&self, path: &str) -> (u16, String) {
        let resp = client()
            .get(self.url(path))
            .send()
            .await
            .expect("request through the proxy");
        let origin = resp
            .headers()
            .get("x-origin")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (resp.status().as_u16(), origin)
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn stats(&self) -> serde_json::Value {
        let resp = client()
            .get(self.admin_url("/stats"))
            .send()
            .await
            .expect("stats");
        let status = resp.status();
        let text = resp.text().await.expect("stats body");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("/stats answered {status} that is not JSON ({e}): {text}"))
    }

    /// Whether `/stats` reports the backend at `addr` of `upstream` as healthy.
    pub async fn backend_healthy(&self, upstream: &str, addr: SocketAddr) -> bool {
        let stats = self.stats().await;
        let backends = stats["upstreams"][upstream]["backends"]
            .as_array()
            .expect("backends array")
            .clone();
        backends
            .iter()
            .find(|b| b["address"] == addr.to_string())
            .map(|b| b["healthy"].as_bool().expect("healthy flag"))
            .expect("backend listed")
    }
}

/// Polls `check` every 20 ms until it holds; panics after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An upstream block named `name` over `addrs` with optional extra YAML lines (indented 4).
pub fn upstream(name: &str, backends: &[(SocketAddr, u32)], extra: &str) -> String {
    let mut s = format!("  {name}:\n    backends:\n");
    for (addr, weight) in backends {
        s.push_str(&format!(
            "      - address: {addr}\n        weight: {weight}\n"
        ));
    }
    s.push_str(extra);
    s
}

/// The route most tests use: everything to the upstream `pool`.
pub const POOL_ROUTE: &str = "routes:\n  - match: { path_prefix: / }\n    upstream: pool\n";

/// A config with one upstream `pool` over `backends` (`extra`: more upstream keys, indented
/// 4) and [`POOL_ROUTE`].
pub fn pool_config(backends: &[(SocketAddr, u32)], extra: &str) -> String {
    format!(
        "upstreams:\n{}{POOL_ROUTE}",
        upstream("pool", backends, extra)
    )
}

/// Starts the proxy with [`pool_config`].
pub async fn spawn_pool(backends: &[(SocketAddr, u32)], extra: &str) -> Proxy {
    spawn_proxy(&pool_config(backends, extra)).await
}
