//! `server`: listeners, threads, shutdown, trusted proxies, client limits and timeouts.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use super::error_pages::{error_pages, ErrorPages};
use super::file::FileServer;
use super::key::{Invalid, Key};
use super::policy::{self, Access, HeaderRules};

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Addresses to accept clients on; port 0 picks a free port at start.
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub grace_period: Duration,
    pub trusted_proxies: Vec<IpNet>,
    /// Reload when the config file changes.
    pub watch_config: bool,
    /// Read buffer per client connection, in bytes (Pingora's default is 64 KiB; most of it
    /// sits unused on idle keep-alive connections). The default is the smallest allowed,
    /// 1 KiB: the front end, rustls and Pingora's body reader read 4 KiB or more at a time,
    /// which bypasses this buffer, so a bigger one only costs memory (measured: 3 KiB less per
    /// connection, 0.5% fewer instructions per pass-through request than 4 KiB).
    pub read_buffer: usize,
    /// Longest wait for a whole request header, from its first byte (slow clients are closed).
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection waits for its next request.
    pub keepalive_timeout: Duration,
    /// Client connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// Client connections open at once from one client address; more are refused like
    /// those over `max_connections`. `None`: no per-address limit.
    pub max_connections_per_ip: Option<usize>,
    /// Largest request header (request line and fields); larger gets 431.
    pub max_header_size: u64,
    /// Largest request body; larger gets 413.
    pub max_body_size: u64,
    /// The `Server` header on every response; `None` keeps the upstream's.
    pub server_header: Option<String>,
    /// The socket a graceful upgrade hands the listeners over on; `None`: a name derived from
    /// the config file's path in a private runtime directory (see `app::upgrade`).
    pub upgrade_socket: Option<PathBuf>,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listeners.
    pub h2c: bool,
    /// After SIGTERM, how long `/ready` answers 503 while the listeners still serve, so
    /// that a load balancer stops sending before connections close.
    pub shutdown_delay: Duration,
    /// Every plain connection starts with a PROXY protocol (v1 or v2) header.
    pub proxy_protocol: bool,
    /// Streams a client may open at once on one HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
    /// `server.access`: checked before every route's own.
    pub access: Access,
    /// Header rules for every route, applied before the route's own.
    pub request_headers: HeaderRules,
    pub response_headers: HeaderRules,
    /// Bodies of the proxy's own error answers, by status (a route's own come first).
    pub error_pages: ErrorPages,
}

impl TryFrom<FileServer> for Server {
    type Error = Invalid;

    fn try_from(raw: FileServer) -> Result<Server, Invalid> {
        let key = Key::root("server");
        let listen = key
            .field("listen")
            .socket_addrs(raw.listen, "0.0.0.0:8080")?;
        let threads = match raw.threads {
            Some(0) => return Err(key.field("threads").invalid("must be at least 1")),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let trusted_proxies = raw
            .trusted_proxies
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, text)| {
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        key.field("trusted_proxies").index(i).invalid(format!(
                            "`{text}` is not an IP address or CIDR like 10.0.0.0/8"
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let read_buffer = key
            .field("read_buffer")
            .size(raw.read_buffer.as_deref(), 1 << 10)?;
        if !(1024..=(1 << 20)).contains(&read_buffer) {
            return Err(key
                .field("read_buffer")
                .invalid("must be between 1KiB and 1MiB"));
        }
        let max_connections = match raw.max_connections {
            None => 10_000,
            Some(n) if n >= 1 => n as usize,
            Some(_) => return Err(key.field("max_connections").invalid("must be at least 1")),
        };
        let max_connections_per_ip = match raw.max_connections_per_ip {
            None => None,
            Some(n) if n >= 1 => Some(n as usize),
            Some(_) => {
                return Err(key
                    .field("max_connections_per_ip")
                    .invalid("must be at least 1"))
            }
        };
        let server_header = match raw.server_header {
            None => Some("switchyard".to_string()),
            Some(h) if h.is_empty() => None,
            Some(h) if h.bytes().all(|b| (0x20..0x7f).contains(&b)) => Some(h),
            Some(_) => {
                return Err(key
                    .field("server_header")
                    .invalid("must be printable ASCII"))
            }
        };
        let upgrade_socket = match raw.upgrade_socket {
            None => None,
            // sun_path holds 108 bytes with the terminating NUL.
            Some(p) if p.is_empty() || p.len() > 107 || p.ends_with('/') => {
                return Err(key
                    .field("upgrade_socket")
                    .invalid("must be a file path of 1 to 107 bytes (a Unix socket path)"))
            }
            Some(p) => Some(PathBuf::from(p)),
        };
        let h2_max_concurrent_streams = match raw.h2_max_concurrent_streams {
            None => 100,
            Some(n) if (1..=10_000).contains(&n) => n as u32,
            Some(_) => {
                return Err(key
                    .field("h2_max_concurrent_streams")
                    .invalid("must be between 1 and 10000"))
            }
        };
        Ok(Server {
            shutdown_delay: key
                .field("shutdown_delay")
                .window(raw.shutdown_delay.as_deref())?,
            upgrade_socket,
            h2c: raw.h2c.unwrap_or(false),
            proxy_protocol: raw.proxy_protocol.unwrap_or(false),
            access: policy::access(&key.field("access"), raw.access)?,
            request_headers: policy::header_rules(
                &key.field("request_headers"),
                raw.request_headers,
            )?,
            response_headers: policy::header_rules(
                &key.field("response_headers"),
                raw.response_headers,
            )?,
            error_pages: error_pages(&key.field("error_pages"), raw.error_pages)?,
            h2_max_concurrent_streams,
            listen,
            threads,
            grace_period: key
                .field("grace_period")
                .duration(raw.grace_period.as_deref(), Duration::from_secs(10))?,
            trusted_proxies,
            watch_config: raw.watch_config.unwrap_or(false),
            read_buffer: read_buffer as usize,
            header_timeout: key
                .field("header_timeout")
                .duration(raw.header_timeout.as_deref(), Duration::from_secs(10))?,
            keepalive_timeout: key
                .field("keepalive_timeout")
                .duration(raw.keepalive_timeout.as_deref(), Duration::from_secs(60))?,
            max_connections,
            max_connections_per_ip,
            max_header_size: key
                .field("max_header_size")
                .size(raw.max_header_size.as_deref(), 64 << 10)?,
            max_body_size: key
                .field("max_body_size")
                .size(raw.max_body_size.as_deref(), 16 << 20)?,
            server_header,
        })
    }
}
