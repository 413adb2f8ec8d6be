//! Graceful upgrade end to end: a second process takes the listening sockets over through the
//! configured upgrade socket while clients keep sending requests, and none of them fails.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{binary, client, free_port, spawn_origin, spawn_proxy, upstream, wait_until};

/// Kills the process on drop (the test's second instance).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Requests that got an answer and requests that failed, in a loop until `stop`.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
}

fn spawn_load(
    url: String,
    keep_alive: bool,
    load: Arc<Load>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut shared = client();
        while !stop.load(Ordering::SeqCst) {
            if !keep_alive {
                // A new connection for every request.
                shared = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(0)
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
            }
            let answer = match shared.get(&url).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.bytes().await.map(|_| status)
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok(status) if status == 200 => {
                    load.ok.fetch_add(1, Ordering::SeqCst);
                }
                Ok(status) => {
                    eprintln!("answer {status}");
                    load.failed.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => {
                    eprintln!("request failed (keep-alive {keep_alive}): {e:?}");
                    load.failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_loses_no_request() {
    let origin = spawn_origin("o").await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upgrade.sock");
    // Fixed ports: the new process finds its listeners among the inherited ones by address.
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        "server:\n  listen: [\"{listen}\"]\n  threads: 2\n  grace_period: 5s\n  upgrade_socket: {}\nadmin:\n  listen: {admin}\nupstreams:\n{}routes:\n  - match: {{ path_prefix: / }}\n    upstream: pool\n",
        socket.display(),
        upstream("pool", &[(origin.addr, 1)], "")
    );
    let mut old = spawn_proxy(&config).await;
    assert_eq!(old.addr, listen);

    let load = Arc::new(Load::default());
    let stop = Arc::new(AtomicBool::new(false));
    let url = old.url("/x");
    let clients: Vec<_> = [true, true, false, false]
        .into_iter()
        .map(|keep_alive| spawn_load(url.clone(), keep_alive, load.clone(), stop.clone()))
        .collect();
    wait_until(Duration::from_secs(5), || async {
        load.ok.load(Ordering::SeqCst) > 50
    })
    .await;

    let mut new = Command::new(binary());
    new.arg("--upgrade")
        .arg("--config")
        .arg(old.config_path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut new = Killed(new.spawn().expect("start the new process"));
    let stdout = new.0.stdout.take().expect("stdout");
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});

    // The new process waits on the socket, which only its user may use.
    let start = Instant::now();
    loop {
        let mode = std::fs::metadata(&socket).map(|m| m.permissions().mode() & 0o777);
        if mode.as_ref().is_ok_and(|m| *m == 0o600) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "upgrade socket not there with mode 0600: {mode:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let signalled = Command::new("kill")
        .arg("-QUIT")
        .arg(old.child.id().to_string())
        .status()
        .unwrap();
    assert!(signalled.success());
    let before = load.ok.load(Ordering::SeqCst);
    // The old process exits once it has handed over and drained.
    let exited = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = old.child.try_wait() {
                return Some((status, old));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
    .await
    .unwrap();
    let Some((status, _old)) = exited else {
        panic!("the old process did not exit after SIGQUIT");
    };
    assert!(status.success(), "old process: {status}");
    // Only the new process is left: it must serve.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (
        load.ok.load(Ordering::SeqCst),
        load.failed.load(Ordering::SeqCst),
    );
    assert_eq!(failed, 0, "{failed} requests failed ({ok} answered)");
    assert!(ok > before + 50, "too few requests after the upgrade: {ok}");
    assert_eq!(new.0.try_wait().unwrap(), None, "the new process exited");
    let resp = client()
        .get(format!("http://{admin}/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(!socket.exists(), "the upgrade socket was left behind");
}
