//! DNS lookups for service discovery: a host's A and AAAA records or a service's SRV records,
//! with how long the answer may be kept (the lowest TTL in it).
//!
//! Lookups go to the nameservers of `/etc/resolv.conf` (with its search domains and the hosts
//! file), or to a configured list. Answers are never served from a cache: the caller decides
//! when to ask again, from the TTL.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

/// What to look up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every A and AAAA record of `host`, each an address with `port`.
    Host { host: String, port: u16 },
    /// SRV records: each names a target host (whose A and AAAA records are looked up), a port,
    /// a priority and a weight.
    Srv { name: String },
}

impl Target {
    /// The name that is looked up first.
    pub fn name(&self) -> &str {
        match self {
            Target::Host { host, .. } => host,
            Target::Srv { name } => name,
        }
    }
}

/// One address of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub addr: SocketAddr,
    /// The host the address belongs to, with the port (`api.internal:8080`).
    pub host: String,
    /// The SRV record's weight; `None` for A and AAAA lookups.
    pub weight: Option<u16>,
    /// From an SRV record whose priority is not the lowest of the answer.
    pub backup: bool,
}

/// The addresses a target stands for now, and how long that answer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Sorted by address, each address once.
    pub found: Vec<Found>,
    pub ttl: Duration,
}

/// Why a lookup gave no addresses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("cannot read the system's resolver config: {0}")]
    SystemConfig(String),
    #[error("lookup of `{name}` failed: {reason}")]
    Lookup { name: String, reason: String },
    #[error("`{0}` has no address records")]
    Empty(String),
    #[error("cannot run the lookup: {0}")]
    Runtime(String),
}

/// A resolver for one set of nameservers.
pub struct Resolver(TokioResolver);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl Resolver {
    /// The system's resolver config when `nameservers` is empty, else exactly those servers
    /// (UDP, and TCP for truncated answers). `timeout` bounds each query.
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<Resolver, DnsError> {
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| DnsError::SystemConfig(e.to_string()))?
        } else {
            let mut group = NameServerConfigGroup::new();
            for ns in nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[ns.ip()],
                    ns.port(),
                    true,
                ));
            }
            let config = ResolverConfig::from_parts(None, Vec::new(), group);
            let mut builder =
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
            builder.options_mut().use_hosts_file = ResolveHosts::Never;
            builder
        };
        let options = builder.options_mut();
        options.timeout = timeout;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        Ok(Resolver(builder.build()))
    }

    /// Looks `target` up now (never from a cache).
    pub async fn lookup(&self, target: &Target) -> Result<Answer, DnsError> {
        self.0.clear_cache();
        let mut found = Vec::new();
        let until = match target {
            Target::Host { host, port } => {
                let (ips, until) = self.ips(host).await?;
                found.extend(ips.into_iter().map(|ip| Found {
                    addr: SocketAddr::new(ip, *port),
                    host: format!("{host}:{port}"),
                    weight: None,
                    backup: false,
                }));
                until
            }
            Target::Srv { name } => {
                let srv = self
                    .0
                    .srv_lookup(name.as_str())
                    .await
                    .map_err(|e| lookup_error(name, e))?;
                let mut until = srv.as_lookup().valid_until();
                let lowest = srv.iter().map(|r| r.priority()).min().unwrap_or(0);
                for record in srv.iter() {
                    let host = record.target().to_utf8();
                    let host = host.trim_end_matches('.');
                    let (ips, ips_until) = self.ips(host).await?;
                    until = until.min(ips_until);
                    found.extend(ips.into_iter().map(|ip| Found {
                        addr: SocketAddr::new(ip, record.port()),
                        host: format!("{host}:{}", record.port()),
                        weight: Some(record.weight()),
                        backup: record.priority() > lowest,
                    }));
                }
                until
            }
        };
        let ttl = until.saturating_duration_since(Instant::now());
        found.sort_by_key(|f| f.addr);
        found.dedup_by_key(|f| f.addr);
        if found.is_empty() {
            return Err(DnsError::Empty(target.name().to_string()));
        }
        Ok(Answer { found, ttl })
    }

    async fn ips(&self, host: &str) -> Result<(Vec<IpAddr>, Instant), DnsError> {
        let lookup = self
            .0
            .lookup_ip(host)
            .await
            .map_err(|e| lookup_error(host, e))?;
        Ok((lookup.iter().collect(), lookup.valid_until()))
    }
}

fn lookup_error(name: &str, e: hickory_resolver::ResolveError) -> DnsError {
    if e.is_no_records_found() {
        return DnsError::Empty(name.to_string());
    }
    DnsError::Lookup {
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// Looks every target up from synchronous code (config loading), on a thread of its own so
/// that it works inside and outside an async runtime; one result per target, in order.
pub fn lookup_blocking(
    nameservers: &[SocketAddr],
    timeout: Duration,
    targets: &[Target],
) -> Vec<Result<Answer, DnsError>> {
    let failed = |e: DnsError| targets.iter().map(|_| Err(e.clone())).collect();
    let nameservers = nameservers.to_vec();
    let owned = targets.to_vec();
    let joined = std::thread::Builder::new()
        .name("dns lookup".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| DnsError::Runtime(e.to_string()))?;
            runtime.block_on(async {
                let resolver = Resolver::new(&nameservers, timeout)?;
                let mut results = Vec::with_capacity(owned.len());
                for target in &owned {
                    results.push(resolver.lookup(target).await);
                }
                Ok(results)
            })
        })
        .map_err(|e| DnsError::Runtime(e.to_string()))
        .and_then(|thread| {
            thread
                .join()
                .map_err(|_| DnsError::Runtime("the lookup thread panicked".into()))
        });
    match joined {
        Ok(Ok(results)) => results,
        Ok(Err(e)) | Err(e) => failed(e),
    }
}
