//! Routes that answer or change requests themselves, end to end: redirects with variables and
//! captures, upstream path rewrites, basic auth (bcrypt and argon2, reloaded with the config),
//! error pages for the proxy's own answers, and per-route body limits and timeouts.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use argon2::PasswordHasher;
use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{client, closed_port, spawn_origin, spawn_proxy, upstream, Proxy};
use crate::policy::{raw_get, spawn_echo};

/// The value of `name` in a raw answer (names compared without case).
fn field<'a>(answer: &'a str, name: &str) -> Option<&'a str> {
    let head = answer.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_answers_with_variables_and_captures() {
    let echo = spawn_echo().await;
    let config = format!(
        "upstreams:\n{}routes:
  - match: {{ path_prefix: / }}
    upstream: echo
  - name: old
    match: {{ path_regex: \"^/old/(?P<id>[0-9]+)/(.*)$\" }}
    redirect: {{ to: \"https://$host/new/$id/$2?$query\", status: 301 }}
  - match: {{ path_prefix: /moved/ }}
    redirect: {{ to: \"/elsewhere$request_uri\", status: 308 }}
  - match: {{ path_prefix: /p/ }}
    redirect: {{ to: \"https://static.example.net$path\" }}
",
        upstream("echo", &[(echo.addr, 1)], "")
    );
    let proxy = spawn_proxy(&config).await;
    let cases = [
        ("/old/42/a/b?x=1", 301, "https://example.com/new/42/a/b?x=1"),
        ("/moved/x?y=2", 308, "/elsewhere/moved/x?y=2"),
        // Normalised before it is used: the dot segment is gone, %2F stays.
        ("/p/./a%2Fb", 302, "https://static.example.net/p/a%2Fb"),
    ];
    for (target, status, location) in cases {
        let (got, text) = raw_get(&proxy, target, "").await;
        assert_eq!(got, status, "{target}: {text}");
        assert_eq!(field(&text, "location"), Some(location), "{target}: {text}");
        assert_eq!(field(&text, "content-length"), Some("0"), "{text}");
    }
    // $host drops the port and the case of the request's Host.
    let (_, text) = raw_get(&proxy, "/old/7/z", "").await;
    assert_eq!(
        field(&text, "location"),
        Some("https://example.com/new/7/z?")
    );
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(
        b"GET /old/1/q HTTP/1.1\r\nHost: WWW.Example.com:8080\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(
        field(&text, "location"),
        Some("https://www.example.com/new/1/q?")
    );
    // A path the regex does not match goes to the upstream.
    let (status, text) = raw_get(&proxy, "/old/x/y", "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        1,
        "redirects never reach the upstream"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("switchyard_requests_total{code=\"301\",route=\"old\",upstream=\"\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_changes_only_the_upstream_path() {
    let echo = spawn_echo().await;
    let config = format!(
        "upstreams:\n{}routes:
  - match: {{ path_prefix: / }}
    upstream: echo
    cache: {{ enabled: true }}
  - match: {{ path_prefix: /old/ }}
    upstream: echo
    rewrite: {{ regex: \"^/old/(?P<rest>.*)$\", to: \"/cached/$rest\" }}
    cache: {{ enabled: true }}
  - match: {{ path_prefix: /keep/ }}
    upstream: echo
    rewrite: {{ regex: \"^/keep/v1/(.*)$\", to: \"/v2/$1\" }}
",
        upstream("echo", &[(echo.addr, 1)], "")
    );
    let proxy = spawn_proxy(&config).await;
    for _ in 0..2 {
        let (status, text) = raw_get(&proxy, "/old/a/../b/c?x=1", "").await;
        assert_eq!(status, 200, "{text}");
        assert!(body(&text).starts_with("/cached/b/c?x=1\n"), "{text}");
    }
    assert_eq!(echo.hits.load(Ordering::SeqCst), 1, "the second was a hit");
    // The cache key is the client's path: the upstream path itself is a different entry.
    let (status, text) = raw_get(&proxy, "/cached/b/c?x=1", "").await;
    assert_eq!(status, 200);
    assert!(body(&text).starts_with("/cached/b/c?x=1\n"), "{text}");
    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        2,
        "not the rewritten request's entry"
    );
    let (_, text) = raw_get(&proxy, "/keep/v1/users?id=3", "").await;
    assert!(body(&text).starts_with("/v2/users?id=3\n"), "{text}");
    // Without a match, the path goes up unchanged.
    let (_, text) = raw_get(&proxy, "/keep/v3/users", "").await;
    assert!(body(&text).starts_with("/keep/v3/users\n"), "{text}");
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}\r\n")
}

fn auth_config(echo: std::net::SocketAddr, users: &Path) -> String {
    format!(
        "upstreams:\n{}routes:
  - match: {{ path_prefix: / }}
    upstream: echo
  - name: admin
    match: {{ path_prefix: /admin/ }}
    upstream: echo
    basic_auth: {{ realm: admin, users_file: {} }}
",
        upstream("echo", &[(echo, 1)], ""),
        users.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_admits_bcrypt_and_argon2_users_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let alice = bcrypt::hash("wonderland", 10).unwrap();
    let bob = argon2::Argon2::default()
        .hash_password(b"builder")
        .unwrap()
        .to_string();
    let users = write(
        dir.path(),
        "htpasswd",
        &format!("# admins\nalice:{alice}\nbob:{bob}\n"),
    );
    let echo = spawn_echo().await;
    let proxy = spawn_proxy(&auth_config(echo.addr, &users)).await;
    let refused = [
        String::new(),
        basic("alice", "wrong"),
        basic("mallory", "wonderland"),
        "Authorization: Bearer wonderland\r\n".to_string(),
    ];
    for fields in &refused {
        let (status, text) = raw_get(&proxy, "/admin/x", fields).await;
        assert_eq!(status, 401, "{fields}: {text}");
        assert_eq!(
            field(&text, "www-authenticate"),
            Some("Basic realm=\"admin\", charset=\"UTF-8\""),
        );
    }
    assert_eq!(echo.hits.load(Ordering::SeqCst), 0, "no upstream contact");
    let started = Instant::now();
    let (status, text) = raw_get(&proxy, "/admin/x", &basic("alice", "wonderland")).await;
    let first = started.elapsed();
    assert_eq!(status, 200, "{text}");
    assert!(
        !body(&text).to_ascii_lowercase().contains("authorization"),
        "the credentials are not forwarded: {text}"
    );
    let started = Instant::now();
    for _ in 0..10 {
        let (status, _) = raw_get(&proxy, "/admin/x", &basic("alice", "wonderland")).await;
        assert_eq!(status, 200);
    }
    let remembered = started.elapsed() / 10;
    println!("bcrypt cost 10 login: first {first:?}, remembered {remembered:?} per request");
    let (status, text) = raw_get(&proxy, "/admin/x", &basic("bob", "builder")).await;
    assert_eq!(status, 200, "{text}");
    // Other routes forward the field as it came.
    let (_, text) = raw_get(&proxy, "/open", &basic("x", "y")).await;
    assert!(body(&text).contains("authorization: Basic"), "{text}");
    let metrics = proxy.metrics().await;
    assert!(
        metrics
            .contains("switchyard_policy_refused_total{reason=\"basic_auth\",route=\"admin\"} 4"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_plaintext_hashes_are_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let alice = bcrypt::hash("wonderland", 4).unwrap();
    let users = write(dir.path(), "htpasswd", &format!("alice:{alice}\n"));
    let echo = spawn_echo().await;
    let proxy = spawn_proxy(&auth_config(echo.addr, &users)).await;
    // The users file is read again with the config: a plaintext line is refused, naming the
    // file and line, and the running users stay.
    write(
        dir.path(),
        "htpasswd",
        &format!("alice:{alice}\ncarol:letmein\n"),
    );
    let (status, reply) = proxy.reload().await;
    assert_eq!(status, 422, "{reply}");
    let error = reply["error"].as_str().unwrap();
    let expected = format!(
        "routes[1].basic_auth.users_file: {} line 2: user `carol`: plaintext",
        users.display()
    );
    assert!(error.contains(&expected), "{error}");
    let (status, _) = raw_get(&proxy, "/admin/", &basic("alice", "wonderland")).await;
    assert_eq!(status, 200);
    let (status, _) = raw_get(&proxy, "/admin/", &basic("carol", "letmein")).await;
    assert_eq!(status, 401);
    // A good file takes effect on reload; a removed user is out at once, even one whose
    // login was remembered.
    let carol = bcrypt::hash("letmein", 4).unwrap();
    write(dir.path(), "htpasswd", &format!("carol:{carol}\n"));
    let (status, reply) = proxy.reload().await;
    assert_eq!(status, 200, "{reply}");
    let (status, _) = raw_get(&proxy, "/admin/", &basic("carol", "letmein")).await;
    assert_eq!(status, 200);
    let (status, _) = raw_get(&proxy, "/admin/", &basic("alice", "wonderland")).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_pages_replace_the_proxys_own_errors() {
    let dir = tempfile::tempdir().unwrap();
    let global_502 = write(dir.path(), "502.html", "<h1>global 502</h1>\n");
    let global_404 = write(dir.path(), "404.txt", "nothing here\n");
    let route_502 = write(dir.path(), "route-502.json", "{\"error\":\"api down\"}");
    let route_504 = write(dir.path(), "504.html", "<h1>slow</h1>");
    let route_429 = write(dir.path(), "429.json", "{\"error\":\"slow down\"}");
    let origin = spawn_origin("o").await;
    let config = format!(
        "server:
  listen: [\"127.0.0.1:0\"]
  error_pages: {{ 502: {}, 404: {} }}
upstreams:
{}{}{}routes:
  - match: {{ host: example.com, path_prefix: /down/ }}
    upstream: down
  - match: {{ host: example.com, path_prefix: /api/ }}
    upstream: down
    error_pages: {{ 502: {} }}
  - match: {{ host: example.com, path_prefix: /slow/ }}
    upstream: up
    read_timeout: 300ms
    error_pages: {{ 504: {} }}
  - match: {{ host: example.com, path_prefix: /limited/ }}
    upstream: up
    rate_limit: {{ rate: 1/m, burst: 1 }}
    error_pages: {{ 429: {} }}
  - match: {{ host: example.com, path_prefix: /up/ }}
    upstream: up
",
        global_502.display(),
        global_404.display(),
        upstream("down", &[(closed_port(), 1)], "    retries: 0\n"),
        upstream("up", &[(origin.addr, 1)], ""),
        "",
        route_502.display(),
        route_504.display(),
        route_429.display(),
    );
    let proxy = spawn_proxy(&config).await;
    let (status, text) = raw_get(&proxy, "/down/x", "").await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(
        field(&text, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(body(&text), "<h1>global 502</h1>\n");
    assert!(field(&text, "x-request-id").is_some(), "{text}");
    // The route's page wins over the server's.
    let (status, text) = raw_get(&proxy, "/api/x", "").await;
    assert_eq!(status, 502);
    assert_eq!(field(&text, "content-type"), Some("application/json"));
    assert_eq!(body(&text), "{\"error\":\"api down\"}");
    let (status, text) = raw_get(&proxy, "/slow/2000", "").await;
    assert_eq!(status, 504, "{text}");
    assert_eq!(body(&text), "<h1>slow</h1>");
    let (status, _) = raw_get(&proxy, "/limited/a", "").await;
    assert_eq!(status, 200);
    let (status, text) = raw_get(&proxy, "/limited/a", "").await;
    assert_eq!(status, 429);
    assert_eq!(body(&text), "{\"error\":\"slow down\"}");
    assert!(field(&text, "retry-after").is_some(), "{text}");
    // No route: the server's 404 page, as text.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert_eq!(
        field(&text, "content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(body(&text), "nothing here\n");
    // A 502 from the upstream itself passes through untouched.
    origin.set_status(502);
    let (status, text) = raw_get(&proxy, "/up/x", "").await;
    assert_eq!(status, 502);
    assert_eq!(field(&text, "x-origin"), Some("o"));
    assert_eq!(body(&text), "o", "the origin's own body: {text}");
}

/// A listener whose accept queue is full: connections to it hang until the client gives up.
async fn black_hole() -> (tokio::net::TcpListener, std::net::TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (listener, filler)
}

async fn post(proxy: &Proxy, path: &str, len: usize) -> u16 {
    client()
        .post(proxy.url(path))
        .body(vec![b'x'; len])
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_route_body_size_and_timeouts_override_the_upstreams() {
    let origin = spawn_origin("o").await;
    let (_hole, _filler) = black_hole().await;
    let hole = _hole.local_addr().unwrap();
    let config = format!(
        "server:
  listen: [\"127.0.0.1:0\"]
  max_body_size: 1KiB
upstreams:
{}{}routes:
  - match: {{ path_prefix: / }}
    upstream: up
  - match: {{ path_prefix: /upload/ }}
    upstream: up
    max_body_size: 8KiB
  - match: {{ path_prefix: /tiny/ }}
    upstream: up
    max_body_size: 100
  - match: {{ path_prefix: /slow/ }}
    upstream: up
    read_timeout: 300ms
  - match: {{ path_prefix: /long/ }}
    upstream: up
    strip_prefix: /long
  - match: {{ path_prefix: /hole-fast/ }}
    upstream: hole
    connect_timeout: 300ms
  - match: {{ path_prefix: /hole/ }}
    upstream: hole
",
        upstream("up", &[(origin.addr, 1)], "    read_timeout: 5s\n"),
        upstream(
            "hole",
            &[(hole, 1)],
            "    connect_timeout: 3s\n    retries: 0\n"
        ),
    );
    let proxy = spawn_proxy(&config).await;
    // Bodies: the route's limit, larger or smaller than the server's.
    assert_eq!(post(&proxy, "/upload/a", 5000).await, 200);
    assert_eq!(post(&proxy, "/upload/a", 9000).await, 413);
    assert_eq!(post(&proxy, "/other", 5000).await, 413);
    assert_eq!(post(&proxy, "/other", 900).await, 200);
    assert_eq!(post(&proxy, "/tiny/a", 500).await, 413);
    // A chunked body (no Content-Length) is cut off at the route's limit too.
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    let chunk = format!("40\r\n{}\r\n", "y".repeat(64));
    let req = format!(
        "POST /tiny/b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(4)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // Read timeout: the route's 300ms, the upstream's 5s elsewhere.
    let started = Instant::now();
    let (status, _) = proxy.get("/slow/1500").await;
    let fast = started.elapsed();
    assert_eq!(status, 504);
    assert!(fast < Duration::from_millis(1200), "{fast:?}");
    // The same origin path through a route without its own read_timeout.
    let (status, _) = proxy.get("/long/slow/1500").await;
    assert_eq!(status, 200);
    // Connect timeout: the route's 300ms against the upstream's 3s.
    let started = Instant::now();
    let (status, _) = proxy.get("/hole-fast/x").await;
    let fast_connect = started.elapsed();
    let started = Instant::now();
    let (status_slow, _) = proxy.get("/hole/x").await;
    let slow_connect = started.elapsed();
    println!("connect timeout: route {fast_connect:?}, upstream {slow_connect:?}");
    assert_eq!((status, status_slow), (504, 504));
    assert!(
        fast_connect < Duration::from_millis(1500),
        "{fast_connect:?}"
    );
    assert!(
        slow_connect >= Duration::from_millis(2500),
        "{slow_connect:?}"
    );
}
