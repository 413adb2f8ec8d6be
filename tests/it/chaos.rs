//! Lost requests under chaos: backends that die under keep-alive load, pools with nothing left,
//! and reloads and SIGHUP while clients keep their connections busy. Clients here are raw
//! keep-alive connections, so that a connection closed without an answer is seen as such (an
//! HTTP client library would quietly retry it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::common::{closed_port, pool_config, spawn_origin, spawn_pool, spawn_proxy, wait_until};

/// What one request on a keep-alive connection got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A whole response; `close` when it said `Connection: close`.
    Answered {
        status: u16,
        close: bool,
        body: String,
    },
    /// The connection ended before any byte of a response.
    Closed,
    /// The connection was reset.
    Reset,
    /// A response header with `status`, then the connection ended before the whole body.
    Truncated { status: u16 },
}

impl Outcome {
    pub fn status(&self) -> Option<u16> {
        match self {
            Outcome::Answered { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// One client connection that sends request after request.
pub struct KeepAlive {
    addr: SocketAddr,
    stream: Option<TcpStream>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, stream: None }
    }

    /// GET `path`; reconnects first if the previous answer said `Connection: close`.
    pub async fn get(&mut self, path: &str) -> Outcome {
        let request = format!("GET {path} HTTP/1.1\r\nHost: chaos.test\r\n\r\n");
        self.send(request.as_bytes()).await
    }

    /// PUT `body` to `path`.
    pub async fn put(&mut self, path: &str, body: &str) -> Outcome {
        let request = format!(
            "PUT {path} HTTP/1.1\r\nHost: chaos.test\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(request.as_bytes()).await
    }

    async fn send(&mut self, request: &[u8]) -> Outcome {
        if self.stream.is_none() {
            self.stream = Some(TcpStream::connect(self.addr).await.expect("connect"));
        }
        let stream = self.stream.as_mut().expect("connected");
        let outcome = match stream.write_all(request).await {
            Ok(()) => read_response(stream).await,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Outcome::Reset,
            Err(_) => Outcome::Closed,
        };
        if !matches!(outcome, Outcome::Answered { close: false, .. }) {
            self.stream = None;
        }
        outcome
    }
}

async fn read_response(stream: &mut TcpStream) -> Outcome {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await {
            Ok(Ok(0)) if buf.is_empty() => return Outcome::Closed,
            Ok(Ok(0)) => panic!("connection closed mid-header: {buf:?}"),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Outcome::Reset,
            Ok(Err(e)) => panic!("read: {e}"),
            Err(_) => panic!("no response within 10 s"),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let field = |name: &str| {
        head.lines().find_map(|l| {
            l.strip_prefix(&format!("{name}:"))
                .map(|v| v.trim().to_string())
        })
    };
    let length: usize = field("content-length")
        .and_then(|v| v.parse().ok())
        .expect("content-length");
    let close = field("connection").is_some_and(|v| v == "close");
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Outcome::Truncated { status },
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Outcome::Answered {
        status,
        close,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// An origin whose connections can be made to fail the way a restarted or killed backend's
/// do: a connection it already has reads the next request and closes without an answer.
/// Answers with its name followed by the request body.
pub struct DyingOrigin {
    pub addr: SocketAddr,
    state: Arc<DyingState>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct DyingState {
    /// Connections accepted up to now drop their next request; `generation` counts them.
    generation: AtomicU64,
    dead: AtomicBool,
    /// Answer with a header and half the body, then close.
    truncate: AtomicBool,
    dropped: AtomicU64,
    served: AtomicU64,
}

impl DyingOrigin {
    pub async fn spawn(name: &'static str) -> DyingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(DyingState::default());
        let accept_state = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&accept_state);
                // Not owned by the accept task: stopping to accept keeps these open.
                tokio::spawn(serve(stream, state, name));
            }
        });
        DyingOrigin {
            addr,
            state,
            accept,
        }
    }

    /// Like a backend restarted behind the proxy's pool: every connection open now drops the
    /// next request it reads; new connections are served.
    pub fn drop_open_connections(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Like a killed backend: the port closes, and open connections drop their next request.
    pub fn die(&self) {
        self.state.dead.store(true, Ordering::SeqCst);
        self.accept.abort();
    }

    /// From now on, send the header and half the body of each answer, then close.
    pub fn truncate_answers(&self) {
        self.state.truncate.store(true, Ordering::SeqCst);
    }

    /// Requests read and dropped without an answer.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::SeqCst)
    }

    /// Requests answered.
    pub fn served(&self) -> u64 {
        self.state.served.load(Ordering::SeqCst)
    }
}

impl Drop for DyingOrigin {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.dead.store(true, Ordering::SeqCst);
    }
}

async fn serve(mut stream: TcpStream, state: Arc<DyingState>, name: &str) {
    let born = state.generation.load(Ordering::SeqCst);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        buf.drain(..end + 4);
        while buf.len() < length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = String::from_utf8_lossy(&buf[..length]).into_owned();
        buf.drain(..length);
        if state.dead.load(Ordering::SeqCst) || state.generation.load(Ordering::SeqCst) != born {
            state.dropped.fetch_add(1, Ordering::SeqCst);
            return;
        }
        state.served.fetch_add(1, Ordering::SeqCst);
        if state.truncate.load(Ordering::SeqCst) {
            let half = "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789";
            let _ = stream.write_all(half.as_bytes()).await;
            return;
        }
        // The origin's name, and the request body it read, if any.
        let text = format!("{name}{body}");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Origin: {name}\r\n\r\n{text}",
            text.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Runs `rounds` rounds of one GET per client, all clients at once; returns every outcome.
pub async fn rounds(clients: &mut Vec<KeepAlive>, rounds: usize) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for _ in 0..rounds {
        let mut set = tokio::task::JoinSet::new();
        for mut client in clients.drain(..) {
            set.spawn(async move {
                let outcome = client.get("/").await;
                (client, outcome)
            });
        }
        while let Some(joined) = set.join_next().await {
            let (client, outcome) = joined.expect("client task");
            clients.push(client);
            outcomes.push(outcome);
        }
    }
    outcomes
}

fn not_ok(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes
        .iter()
        .filter(|o| o.status() != Some(200))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_under_keep_alive_load_loses_no_request() {
    let doomed = DyingOrigin::spawn("doomed").await;
    let steady = spawn_origin("steady").await;
    let proxy = spawn_pool(&[(doomed.addr, 1), (steady.addr, 1)], "    retries: 1\n").await;
    let mut clients: Vec<KeepAlive> = (0..8).map(|_| KeepAlive::new(proxy.addr)).collect();
    let warm = rounds(&mut clients, 4).await;
    assert!(not_ok(&warm).is_empty(), "{warm:?}");
    assert!(doomed.served() >= 8);

    // Two clients now: more stale connections are pooled than requests take at once.
    doomed.die();
    let mut two: Vec<KeepAlive> = clients.drain(..2).collect();
    let outcomes = rounds(&mut two, 10).await;
    assert!(
        doomed.dropped() > 0,
        "no request met a pooled connection of the dead backend"
    );
    assert_eq!(not_ok(&outcomes), Vec::<&Outcome>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unservable_request_is_answered_with_connection_close() {
    let doomed = DyingOrigin::spawn("doomed").await;
    let proxy = spawn_pool(&[(doomed.addr, 1)], "    retries: 0\n").await;
    let mut client = KeepAlive::new(proxy.addr);
    assert_eq!(client.get("/").await.status(), Some(200));

    doomed.die();
    // Pingora drops the client connection after a failed upstream attempt: the answer must say
    // so, or the client sends its next request into a closed connection.
    match client.get("/").await {
        Outcome::Answered { status, close, .. } => {
            assert_eq!(status, 502);
            assert!(close, "a 502 followed by a silent close");
        }
        other => panic!("no answer: {other:?}"),
    }
    assert_eq!(client.get("/").await.status(), Some(502));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_short_is_not_completed_with_an_error_body() {
    let cut = DyingOrigin::spawn("cut").await;
    let proxy = spawn_pool(&[(cut.addr, 1)], "    retries: 0\n").await;
    cut.truncate_answers();
    // The 200 header is already on its way: the client must see the body end early, not the
    // error page appended to it as if it were the rest of the body.
    let outcome = KeepAlive::new(proxy.addr).get("/").await;
    assert_eq!(outcome, Outcome::Truncated { status: 200 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_backend_answers_503_on_a_connection_that_stays_open() {
    let dead = closed_port();
    let proxy = spawn_pool(
        &[(dead, 1)],
        "    health_check: { type: tcp, interval: 100ms, timeout: 100ms, unhealthy_threshold: 1 }\n",
    )
    .await;
    wait_until(Duration::from_secs(5), || async {
        !proxy.backend_healthy("pool", dead).await
    })
    .await;
    let mut client = KeepAlive::new(proxy.addr);
    for _ in 0..3 {
        match client.get("/").await {
            Outcome::Answered { status, close, .. } => {
                assert_eq!(status, 503);
                assert!(!close, "the connection was closed after a 503");
            }
            other => panic!("no answer: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_sighup_under_keep_alive_load_close_no_connection() {
    let a = spawn_origin("a").await;
    let b = spawn_origin("b").await;
    let both = pool_config(&[(a.addr, 1), (b.addr, 1)], "    retries: 1\n");
    let only_a = pool_config(&[(a.addr, 1)], "    retries: 1\n");
    let proxy = spawn_proxy(&both).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let stop = Arc::clone(&stop);
        let addr = proxy.addr;
        load.spawn(async move {
            let mut client = KeepAlive::new(addr);
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                outcomes.push(client.get("/").await);
            }
            outcomes
        });
    }
    let pid = proxy.child.id().to_string();
    for _ in 0..8 {
        proxy.rewrite_config(&only_a);
        assert_eq!(proxy.reload().await.0, 200);
        proxy.rewrite_config(&both);
        assert_eq!(proxy.reload().await.0, 200);
        let hup = std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .expect("kill -HUP");
        assert!(hup.success());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut outcomes = Vec::new();
    while let Some(joined) = load.join_next().await {
        outcomes.extend(joined.expect("load task"));
    }
    assert!(outcomes.len() > 100, "only {} requests", outcomes.len());
    let bad: Vec<_> = outcomes
        .iter()
        .filter(|o| {
            !matches!(
                o,
                Outcome::Answered {
                    status: 200,
                    close: false,
                    ..
                }
            )
        })
        .collect();
    assert!(bad.is_empty(), "{bad:?}");
}
