//! Service discovery against a DNS server the test runs on a loopback UDP port: records added
//! and removed, TTLs, failures that keep the last good set, SRV ports and weights.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::common::{client, spawn_origin_at, spawn_proxy, wait_until, Origin, Proxy, POOL_ROUTE};

/// How the DNS server treats queries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Answer,
    ServFail,
    Silent,
}

#[derive(Default)]
struct Zone {
    a: HashMap<String, Vec<Ipv4Addr>>,
    /// (priority, weight, port, target)
    srv: HashMap<String, Vec<(u16, u16, u16, String)>>,
    ttl: u32,
}

/// An authoritative DNS server over UDP with records the test changes as it goes.
struct Dns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    mode: Arc<Mutex<Mode>>,
    queries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Dns {
    async fn start(ttl: u32) -> Dns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind dns");
        let addr = socket.local_addr().expect("dns address");
        let zone = Arc::new(Mutex::new(Zone {
            ttl,
            ..Zone::default()
        }));
        let mode = Arc::new(Mutex::new(Mode::Answer));
        let queries = Arc::new(AtomicU64::new(0));
        let (z, m, q) = (Arc::clone(&zone), Arc::clone(&mode), Arc::clone(&queries));
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let mode = *m.lock().unwrap();
                if mode == Mode::Silent {
                    continue;
                }
                let answer = answer(&query, &z.lock().unwrap(), mode);
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        Dns {
            addr,
            zone,
            mode,
            queries,
            task,
        }
    }

    fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        self.zone
            .lock()
            .unwrap()
            .a
            .insert(name.into(), ips.to_vec());
    }

    fn set_srv(&self, name: &str, records: &[(u16, u16, u16, &str)]) {
        let records = records
            .iter()
            .map(|(p, w, port, t)| (*p, *w, *port, t.to_string()))
            .collect();
        self.zone.lock().unwrap().srv.insert(name.into(), records);
    }

    fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }
}

fn answer(query: &Message, zone: &Zone, mode: Mode) -> Message {
    let mut out = Message::new();
    out.set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    out.add_queries(query.queries().to_vec());
    if mode == Mode::ServFail {
        out.set_response_code(ResponseCode::ServFail);
        return out;
    }
    for q in query.queries() {
        let name = q
            .name()
            .to_ascii()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let known = zone.a.contains_key(&name) || zone.srv.contains_key(&name);
        if !known {
            out.set_response_code(ResponseCode::NXDomain);
            continue;
        }
        match q.query_type() {
            RecordType::A => {
                for ip in zone.a.get(&name).into_iter().flatten() {
                    out.add_answer(Record::from_rdata(
                        q.name().clone(),
                        zone.ttl,
                        RData::A(A(*ip)),
                    ));
                }
            }
            RecordType::SRV => {
                for (priority, weight, port, target) in zone.srv.get(&name).into_iter().flatten() {
                    let Ok(target) = Name::from_ascii(format!("{target}.")) else {
                        continue;
                    };
                    out.add_answer(Record::from_rdata(
                        q.name().clone(),
                        zone.ttl,
                        RData::SRV(SRV::new(*priority, *weight, *port, target)),
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// Origins on loopback addresses 127.0.0.2, .3, … sharing one port (A records give addresses
/// only, the port is the config's).
async fn origins_on_one_port(names: &[&str]) -> (u16, Vec<Origin>) {
    let ip = |i: usize| Ipv4Addr::new(127, 0, 0, 2 + i as u8);
    for _ in 0..20 {
        let probe = std::net::TcpListener::bind((ip(0), 0)).expect("bind");
        let port = probe.local_addr().expect("address").port();
        let free = (1..names.len()).all(|i| std::net::TcpListener::bind((ip(i), port)).is_ok());
        drop(probe);
        if !free {
            continue;
        }
        let mut origins = Vec::new();
        for (i, name) in names.iter().enumerate() {
            origins.push(spawn_origin_at(name, SocketAddr::from((ip(i), port))).await);
        }
        return (port, origins);
    }
    panic!("no port free on every loopback address");
}

fn ip_of(origin: &Origin) -> Ipv4Addr {
    match origin.addr {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => panic!("origins listen on IPv4"),
    }
}

fn config(backends: &str, dns: &Dns, upstream_extra: &str) -> String {
    format!(
        "discovery:\n  nameservers: [\"{}\"]\n  timeout: 300ms\nupstreams:\n  pool:\n    backends:\n{backends}{upstream_extra}{POOL_ROUTE}",
        dns.addr
    )
}

/// The addresses of `pool`'s backends in `/stats`.
async fn backends(proxy: &Proxy) -> Vec<String> {
    let stats = proxy.stats().await;
    stats["upstreams"]["pool"]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| b["address"].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn failures(proxy: &Proxy) -> u64 {
    let metrics = proxy.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_discovery_failures_total{upstream=\"pool\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_record_joins_and_is_checked_at_once() {
    let (port, origins) = origins_on_one_port(&["a", "b"]).await;
    let (a, b) = (&origins[0], &origins[1]);
    let dns = Dns::start(1).await;
    dns.set_a("api.test", &[ip_of(a)]);
    // Checks every 30 s: a check of the new backend within the test comes from its joining.
    let check = "    health_check: { path: /health, interval: 30s, timeout: 1s }\n";
    let proxy = spawn_proxy(&config(
        &format!("      - address: api.test:{port}\n"),
        &dns,
        check,
    ))
    .await;
    assert_eq!(
        backends(&proxy).await,
        vec![format!("api.test:{port}/{}", a.addr)]
    );
    for _ in 0..4 {
        assert_eq!(proxy.get("/").await, (200, "a".to_string()));
    }
    let b_checks = b.health_checks();

    dns.set_a("api.test", &[ip_of(a), ip_of(b)]);
    wait_until(Duration::from_secs(5), || async {
        backends(&proxy).await.len() == 2
    })
    .await;
    wait_until(Duration::from_secs(2), || async {
        b.health_checks() > b_checks
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let (status, origin) = proxy.get("/").await;
        assert_eq!(status, 200);
        seen.push(origin);
    }
    assert!(seen.contains(&"b".to_string()), "{seen:?}");
    assert!(seen.contains(&"a".to_string()), "{seen:?}");

    let stats = proxy.stats().await;
    let discovery = &stats["upstreams"]["pool"]["discovery"];
    assert_eq!(
        discovery["addresses"],
        serde_json::json!([a.addr.to_string(), b.addr.to_string()])
    );
    assert_eq!(discovery["changes_total"], 1);
    assert!(discovery["last_success"].as_str().unwrap().ends_with('Z'));
    assert!(discovery["last_error"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_record_drains_its_requests_and_gets_no_new_ones() {
    let (port, origins) = origins_on_one_port(&["old", "new"]).await;
    let (old, new) = (&origins[0], &origins[1]);
    let dns = Dns::start(1).await;
    dns.set_a("api.test", &[ip_of(old)]);
    let proxy = spawn_proxy(&config(
        &format!("      - address: api.test:{port}\n"),
        &dns,
        "",
    ))
    .await;
    let slow = tokio::spawn(client().get(proxy.url("/slow/2000")).send());
    wait_until(Duration::from_secs(5), || async { old.hits() == 1 }).await;

    dns.set_a("api.test", &[ip_of(new)]);
    let new_name = format!("api.test:{port}/{}", new.addr);
    wait_until(Duration::from_secs(5), || async {
        backends(&proxy).await == vec![new_name.clone()]
    })
    .await;
    let stats = proxy.stats().await;
    assert_eq!(
        stats["draining"][0]["address"],
        format!("api.test:{port}/{}", old.addr)
    );
    assert_eq!(stats["draining"][0]["in_flight"], 1);
    for _ in 0..10 {
        assert_eq!(proxy.get("/").await, (200, "new".to_string()));
    }
    let resp = slow.await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "old");
    assert_eq!(old.hits(), 1, "the vanished backend got a new request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_wait_for_the_records_ttl() {
    let (port, origins) = origins_on_one_port(&["a", "b"]).await;
    let (a, b) = (&origins[0], &origins[1]);
    let dns = Dns::start(4).await;
    dns.set_a("api.test", &[ip_of(a)]);
    let proxy = spawn_proxy(&config(
        &format!("      - address: api.test:{port}\n"),
        &dns,
        "",
    ))
    .await;
    let loaded_queries = dns.queries();
    dns.set_a("api.test", &[ip_of(b)]);
    let changed = Instant::now();
    // The answer at load holds 4 s, and the proxy started after it: for 2 s more it is used.
    while changed.elapsed() < Duration::from_secs(2) {
        assert_eq!(proxy.get("/").await, (200, "a".to_string()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dns.queries(), loaded_queries, "asked again before the TTL");
    wait_until(Duration::from_secs(5), || async {
        proxy.get("/").await == (200, "b".to_string())
    })
    .await;
    assert!(
        changed.elapsed() < Duration::from_secs(6),
        "picked up after {:?}",
        changed.elapsed()
    );
    let ttl = proxy.stats().await["upstreams"]["pool"]["discovery"]["ttl_seconds"]
        .as_f64()
        .unwrap();
    assert!((2.0..=4.0).contains(&ttl), "ttl_seconds {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_the_last_good_set_and_are_counted() {
    let (port, origins) = origins_on_one_port(&["a", "b"]).await;
    let (a, b) = (&origins[0], &origins[1]);
    let dns = Dns::start(1).await;
    dns.set_a("api.test", &[ip_of(a)]);
    let proxy = spawn_proxy(&config(
        &format!("      - address: api.test:{port}\n"),
        &dns,
        "    discovery: { max_ttl: 2s }\n",
    ))
    .await;

    dns.set_mode(Mode::ServFail);
    wait_until(Duration::from_secs(5), || async {
        failures(&proxy).await >= 1
    })
    .await;
    assert_eq!(proxy.get("/").await, (200, "a".to_string()));
    let stats = proxy.stats().await;
    let discovery = &stats["upstreams"]["pool"]["discovery"];
    assert!(discovery["last_error"]
        .as_str()
        .unwrap()
        .contains("api.test"));
    assert!(discovery["last_error_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        discovery["addresses"],
        serde_json::json!([a.addr.to_string()])
    );

    dns.set_mode(Mode::Silent);
    let before = failures(&proxy).await;
    wait_until(Duration::from_secs(8), || async {
        failures(&proxy).await > before
    })
    .await;
    assert_eq!(proxy.get("/").await, (200, "a".to_string()));
    assert_eq!(backends(&proxy).await.len(), 1);

    dns.set_a("api.test", &[ip_of(b)]);
    dns.set_mode(Mode::Answer);
    wait_until(Duration::from_secs(8), || async {
        proxy.get("/").await == (200, "b".to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_records_give_ports_weights_and_backups() {
    let heavy = crate::common::spawn_origin("heavy").await;
    let light = crate::common::spawn_origin("light").await;
    let spare = crate::common::spawn_origin("spare").await;
    let dns = Dns::start(30).await;
    for host in ["heavy.api.test", "light.api.test", "spare.api.test"] {
        dns.set_a(host, &[Ipv4Addr::LOCALHOST]);
    }
    dns.set_srv(
        "_http._tcp.api.test",
        &[
            (10, 3, heavy.addr.port(), "heavy.api.test"),
            (10, 1, light.addr.port(), "light.api.test"),
            (20, 5, spare.addr.port(), "spare.api.test"),
        ],
    );
    let proxy = spawn_proxy(&config(
        "      - discover: { srv: _http._tcp.api.test }\n",
        &dns,
        "",
    ))
    .await;
    let stats = proxy.stats().await;
    let listed: Vec<(String, u64, bool)> = stats["upstreams"]["pool"]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["weight"].as_u64().unwrap(),
                b["backup"].as_bool().unwrap(),
            )
        })
        .collect();
    let name = |o: &Origin| format!("_http._tcp.api.test/{}", o.addr);
    let mut expected = vec![
        (name(&heavy), 3, false),
        (name(&light), 1, false),
        (name(&spare), 5, true),
    ];
    expected.sort();
    let mut listed = listed;
    listed.sort();
    assert_eq!(listed, expected);
    for _ in 0..40 {
        assert_eq!(proxy.get("/").await.0, 200);
    }
    assert_eq!((heavy.hits(), light.hits(), spare.hits()), (30, 10, 0));
}

#[test]
fn a_name_that_does_not_resolve_fails_the_load() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dns = runtime.block_on(Dns::start(1));
    let text = crate::common::full_config(&config("      - address: missing.test:80\n", &dns, ""));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(crate::common::binary())
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "bad.yaml: upstreams.pool.backends[0].address: `missing.test:80` does not resolve"
        ),
        "{text}"
    );
    drop(dns);
}
