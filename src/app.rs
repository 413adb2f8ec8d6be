//! Builds the Pingora server from a config (proxy, admin, health checks, demo origins) and runs
//! it until a signal ends it.

mod lifecycle;
pub mod upgrade;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pingora_core::apps::http_app::HttpServer;
use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig, TcpSocketOptions};
use pingora_core::protocols::http::v2::server::default_h2_options;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::admin::Admin;
use crate::cache::storage::SharedTier;
use crate::cache::warm::Warmer;
use crate::config::{Alpn, Config, Tls, TlsVersion};
use crate::demo::DemoOrigin;
use crate::proxy::frontend::Frontend;
use crate::proxy::h2_streams::H2Streams;
use crate::proxy::Proxy;
use crate::reload;
use crate::state::Shared;
use crate::tls::Certificate;
use crate::upstream::discovery::DiscoveryService;
use crate::upstream::health::HealthChecks;
use pingora_proxy::HttpProxy;

/// How to run.
#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// Also serve demo origins on every loopback backend address.
    pub demo: bool,
    /// The file `config` came from; reloads read it again. `None` for the built-in example.
    pub config_path: Option<PathBuf>,
    /// Take the listening sockets over from a running instance (graceful upgrade).
    pub upgrade: bool,
}

/// Runs Switchyard with `config` until SIGTERM or SIGINT (graceful) ends it.
pub fn run(mut config: Config, options: RunOptions) -> anyhow::Result<()> {
    let self_signed = options.demo && config.tls.is_none();
    if self_signed {
        config.tls = Some(demo_tls()?);
    }
    // Held until `run` returns: see `Claims`.
    let claims = if options.upgrade {
        Claims::default()
    } else {
        claim_addresses(&mut config)?
    };
    let demo_origins = if options.demo {
        demo_addresses(&config)?
    } else {
        Vec::new()
    };
    let grace = config.server.grace_period;
    let threads = config.server.threads;
    let read_buffer = config.server.read_buffer;
    let listen = config.server.listen.clone();
    let tls_listen = config
        .tls
        .as_ref()
        .map(|t| t.listen.clone())
        .unwrap_or_default();
    let h2_streams = config.server.h2_max_concurrent_streams;
    let idle_connections = config.keepalive_pool_size();
    let h2_idle = config.server.keepalive_timeout;
    let h2_header_list = u32::try_from(config.server.max_header_size).unwrap_or(u32::MAX);
    let admin_listen = config.admin.listen;
    if config.admin.token.is_none() && !config.admin.listen.ip().is_loopback() {
        log::warn!(
            "admin endpoint on {} has no token (admin.allow_insecure): anyone who can reach it can reload and purge",
            config.admin.listen
        );
    }

    let paths = upgrade::resolve(
        config.server.upgrade_socket.as_deref(),
        options.config_path.as_deref(),
    )?;

    let shared = Shared::new(config, options.config_path.clone());

    let mut conf = ServerConf {
        threads,
        // Pingora sleeps this long after a graceful-terminate signal; the drain watcher below
        // exits as soon as no request is left, so it is the upper bound only.
        grace_period_seconds: Some(grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        // Pingora keeps one pool of idle upstream connections for the process, evicting the
        // least recently used: its size is the sum of every upstream's `keepalive.idle`.
        upstream_keepalive_pool_size: idle_connections,
        work_stealing: false,
        ..ServerConf::default()
    };
    conf.upgrade_sock = paths.socket.to_string_lossy().into_owned();
    conf.pid_file = paths.pid_file.to_string_lossy().into_owned();
    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    if options.upgrade {
        log::info!(
            "waiting for the listening sockets on {}: send SIGQUIT to the running instance",
            paths.socket.display()
        );
        // Pingora waits about 6 s for them (5 retries, 1 s apart).
        upgrade::tighten_socket_when_created(paths.socket.clone(), Duration::from_secs(10));
    }
    server.bootstrap();

    let streams = Arc::new(H2Streams::default());
    let mut app = HttpProxy::new(
        Proxy::new(Arc::clone(&shared), Arc::clone(&streams)),
        server.configuration.clone(),
    );
    app.handle_init_modules();
    // The front end hands only HTTP/2 connections to Pingora's own connection handling (a TLS
    // stream that chose `h2`, or a plain one that began with the h2c preface, which Pingora
    // looks for again), so h2c is on here whatever `server.h2c` says.
    let mut server_options = HttpServerOptions::default();
    server_options.h2c = true;
    // An idle HTTP/2 connection is closed like an idle HTTP/1.1 one.
    server_options.h2_idle_timeout = Some(h2_idle);
    app.server_options = Some(server_options);
    let mut h2 = default_h2_options();
    h2.max_concurrent_streams(h2_streams);
    h2.max_header_list_size(h2_header_list);
    app.h2_options = Some(h2);
    let mut proxy = Service::new(
        "switchyard proxy".to_string(),
        Frontend::new(app, Arc::clone(&shared), tls_listen.clone(), streams),
    );
    // TLS listeners are plain TCP to Pingora: the front end runs the handshake itself, with
    // the certificates, minimum version and ALPN of the running config.
    for addr in listen.iter().chain(&tls_listen) {
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string())
                .tcp_socket_options(claims.options(*addr))
                .l4_buffer(L4BufferSettings::new(read_buffer, 1460)),
        );
    }
    server.add_service(proxy);

    let mut admin = Service::new(
        "switchyard admin".to_string(),
        HttpServer::new_app(Admin::new(Arc::clone(&shared))),
    );
    admin.threads = Some(1);
    admin.add_tcp_with_settings(&admin_listen.to_string(), claims.options(admin_listen));
    server.add_service(admin);

    let mut checks = background_service("health checks", HealthChecks(Arc::clone(&shared)));
    checks.threads = Some(1);
    server.add_service(checks);

    let mut discovery =
        background_service("service discovery", DiscoveryService(Arc::clone(&shared)));
    discovery.threads = Some(1);
    server.add_service(discovery);

    let mut triggers = background_service(
        "reload triggers",
        reload::ReloadOnSignal {
            shared: Arc::clone(&shared),
        },
    );
    triggers.threads = Some(1);
    server.add_service(triggers);
    // Held until the process ends (`run_forever` does not return).
    let _config_watch = reload::watch_file(Arc::clone(&shared));
    reload::watch_certificates(Arc::clone(&shared));

    let mut warmer = background_service(
        "cache warming",
        Warmer {
            source: Arc::clone(&shared),
            storage: shared.cache.storage,
            status: Arc::clone(&shared.cache.warm),
        },
    );
    warmer.threads = Some(1);
    server.add_service(warmer);

    if shared.cache.storage.redis.is_some() {
        let mut tier = background_service("redis cache tier", SharedTier(shared.cache.storage));
        tier.threads = Some(1);
        server.add_service(tier);
    }

    for addr in &demo_origins {
        let mut origin = Service::new(
            format!("demo origin {addr}"),
            HttpServer::new_app(DemoOrigin {
                name: format!("demo-{}", addr.port()),
            }),
        );
        origin.threads = Some(1);
        origin.add_tcp(&addr.to_string());
        server.add_service(origin);
        println!("switchyard: demo origin listening on http://{addr}");
    }

    for addr in &listen {
        println!("switchyard: proxy listening on http://{addr}");
    }
    for addr in &tls_listen {
        if self_signed {
            println!(
                "switchyard: proxy listening on https://{addr} (self-signed certificate made at start)"
            );
        } else {
            println!("switchyard: proxy listening on https://{addr}");
        }
    }
    println!("switchyard: admin listening on http://{admin_listen}");

    lifecycle::spawn_drain_watcher(&server, Arc::clone(&shared), grace);
    log::info!(
        "switchyard {} running (config version 1{})",
        env!("CARGO_PKG_VERSION"),
        options
            .config_path
            .as_ref()
            .map(|p| format!(", from {}", p.display()))
            .unwrap_or_default()
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(lifecycle::Signals(Arc::clone(&shared))),
    });
    log::info!("switchyard stopped");
    Ok(())
}

/// The free ports picked for port-0 listen addresses, held from the moment they are picked
/// until the process ends.
///
/// The port is announced before Pingora binds it (its services bind when they start), so a
/// port that was only probed and let go could be taken in between by anything else asking
/// for a free port, and the announced address would then reach someone else's server. The
/// claim is a socket bound with `SO_REUSEPORT` only and never listening: it receives no
/// connections, any other `bind` to the port fails, and Pingora's listener, asked for
/// `SO_REUSEPORT` too on these addresses alone, binds beside it. Pingora 0.9.1 cannot be given
/// an already bound listener outside a graceful upgrade, which is why it is done this way.
/// Explicit ports are only probed: holding them with `SO_REUSEPORT` would let a second
/// instance started on the same port share it instead of failing.
#[derive(Default)]
struct Claims {
    held: Vec<(SocketAddr, socket2::Socket)>,
}

impl Claims {
    /// Pingora's socket options for the listener on `addr`.
    fn options(&self, addr: SocketAddr) -> TcpSocketOptions {
        let mut options = TcpSocketOptions::default();
        if self.held.iter().any(|(a, _)| *a == addr) {
            options.so_reuseport = Some(true);
        }
        options
    }
}

/// Makes sure every listen address can be bound, and gives port-0 addresses a real free port
/// so that it can be printed and used (held in the returned [`Claims`]).
fn claim_addresses(config: &mut Config) -> anyhow::Result<Claims> {
    let mut claims = Claims::default();
    let tls = config.tls.as_mut().map(|t| t.listen.iter_mut());
    for addr in config
        .server
        .listen
        .iter_mut()
        .chain(tls.into_iter().flatten())
        .chain(std::iter::once(&mut config.admin.listen))
    {
        if addr.port() == 0 {
            let claim =
                claim_free_port(*addr).with_context(|| format!("cannot listen on {addr}"))?;
            *addr = claim
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .with_context(|| format!("cannot read the bound address of {addr}"))?;
            claims.held.push((*addr, claim));
        } else {
            TcpListener::bind(*addr).with_context(|| format!("cannot listen on {addr}"))?;
        }
    }
    Ok(claims)
}

/// A socket bound to a free port of `addr`'s IP with `SO_REUSEPORT` and nothing else.
fn claim_free_port(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Where `switchyard demo` listens for TLS when its config has no `tls` block.
const DEMO_TLS_LISTEN: &str = "127.0.0.1:8443";

/// The demo's TLS listener, with a self-signed certificate for `localhost` made now.
fn demo_tls() -> anyhow::Result<Tls> {
    let cert = Certificate::self_signed(&["localhost", "127.0.0.1"])
        .map_err(|e| anyhow::anyhow!("cannot make the demo certificate: {e}"))?;
    Ok(Tls {
        listen: vec![DEMO_TLS_LISTEN.parse()?],
        certificates: vec![cert],
        default_certificate: 0,
        min_version: TlsVersion::V1_2,
        alpn: vec![Alpn::H2, Alpn::Http11],
        watch: false,
        proxy_protocol: false,
    })
}

/// The loopback backend addresses that `switchyard demo` serves itself.
fn demo_addresses(config: &Config) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs: Vec<SocketAddr> = config
        .upstreams
        .values()
        .flat_map(|u| u.backends.iter().map(|b| b.addr))
        .filter(|a| a.ip().is_loopback())
        .collect();
    addrs.sort();
    addrs.dedup();
    for addr in &addrs {
        TcpListener::bind(addr).with_context(|| {
            format!("demo origin cannot listen on {addr} (is something else running there?)")
        })?;
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_claimed_port_cannot_be_taken_but_pingoras_listener_binds_beside_the_claim() {
        let claim = claim_free_port("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = claim.local_addr().unwrap().as_socket().unwrap();
        assert_ne!(addr.port(), 0);
        // What any other server asking for the port does (std sets SO_REUSEADDR).
        let err = TcpListener::bind(addr).expect_err("the claimed port was free to others");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        // What Pingora does with `so_reuseport` (it always sets SO_REUSEADDR).
        let listener =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        listener.set_reuse_address(true).unwrap();
        listener.set_reuse_port(true).unwrap();
        listener.bind(&addr.into()).unwrap();
        listener.listen(8).unwrap();
        let listener: TcpListener = listener.into();
        // Connections reach the listener, never the claim (which does not listen).
        for _ in 0..20 {
            let mut client = std::net::TcpStream::connect(addr).unwrap();
            client.write_all(b"x").unwrap();
            let (mut served, _) = listener.accept().unwrap();
            let mut byte = [0u8; 1];
            served.read_exact(&mut byte).unwrap();
            assert_eq!(&byte, b"x");
        }
        drop(claim);
    }

    #[test]
    fn port_zero_is_claimed_and_explicit_ports_only_probed() {
        let mut config = Config::parse(
            "server:\n  listen: [\"127.0.0.1:0\"]\nadmin:\n  listen: 127.0.0.1:0\nupstreams:\n  u:\n    backends: [{address: \"127.0.0.1:9\"}]\nroutes:\n  - {upstream: u}\n",
            "test.yaml",
        )
        .unwrap();
        let claims = claim_addresses(&mut config).unwrap();
        let listen = config.server.listen[0];
        assert_ne!(listen.port(), 0);
        assert_eq!(claims.options(listen).so_reuseport, Some(true));
        assert_eq!(claims.options(config.admin.listen).so_reuseport, Some(true));
        let explicit = "127.0.0.1:9".parse().unwrap();
        assert_eq!(claims.options(explicit).so_reuseport, None);
    }
}
