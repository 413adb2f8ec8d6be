//! `upstreams.<name>.backends`: the entries, fixed (`ip:port`) or standing for what a name
//! resolves to. Names are resolved once here, at load: one that does not resolve fails the load
//! (as nginx does), so a start or a reload never runs an upstream with fewer backends than the
//! file names. `upstream::discovery` resolves them again while running.

use std::net::SocketAddr;
use std::time::Instant;

use super::discovery::{self, Discovery};
use super::file::FileBackend;
use super::key::{Invalid, Key};
use crate::dns::{self, Answer, Target};

/// Highest weight accepted; the round-robin schedule holds one slot per unit of weight.
pub const MAX_WEIGHT: i64 = 1000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// The address as written in the file (shown in stats and metrics).
    pub name: String,
    pub addr: SocketAddr,
    /// `host:port` as requests and checks name the backend (SNI, `Host`): the address as
    /// written, or the discovered host.
    pub host: String,
    pub weight: u32,
    /// Used only when no primary (non-backup) backend is available, as nginx's `backup`.
    pub backup: bool,
    /// Made by discovery from a name (see `Upstream::discover`).
    pub discovered: bool,
    /// Requests in flight to this backend at once; `None`: no limit.
    pub max_conns: Option<u32>,
}

/// A backend entry that stands for every address its name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverSpec {
    /// As written: `api.internal:8080`, or the `dns`/`srv` name.
    pub name: String,
    pub target: Target,
    pub weight: u32,
    pub backup: bool,
    /// `max_conns` of every backend the name gives.
    pub max_conns: Option<u32>,
}

impl DiscoverSpec {
    /// One backend per address of `answer`, named `<name>/<address>`, with this entry's
    /// weight and `backup` (an SRV record's weight, clamped to 1 to [`MAX_WEIGHT`], and
    /// whether its priority is above the lowest, instead).
    pub fn backends(&self, answer: &Answer) -> Vec<BackendSpec> {
        answer
            .found
            .iter()
            .map(|f| BackendSpec {
                name: format!("{}/{}", self.name, f.addr),
                addr: f.addr,
                host: f.host.clone(),
                weight: f
                    .weight
                    .map_or(self.weight, |w| u32::from(w).clamp(1, MAX_WEIGHT as u32)),
                backup: self.backup || f.backup,
                discovered: true,
                max_conns: self.max_conns,
            })
            .collect()
    }
}

/// What an upstream's backend entries gave at load.
pub(super) struct Entries {
    /// The fixed backends first, then what the names resolved to.
    pub backends: Vec<BackendSpec>,
    /// The entries to resolve again.
    pub discover: Vec<DiscoverSpec>,
    /// When the first answer expires (`None`: no names).
    pub due: Option<Instant>,
}

/// The entries at `list` (`upstreams.<name>.backends`).
pub(super) fn backends(
    list: &Key,
    entries: Vec<FileBackend>,
    discovery: &Discovery,
) -> Result<Entries, Invalid> {
    if entries.is_empty() {
        return Err(list.invalid("needs at least one backend"));
    }
    let mut backends: Vec<BackendSpec> = Vec::with_capacity(entries.len());
    let mut discover: Vec<(Key, DiscoverSpec)> = Vec::new();
    for (i, b) in entries.into_iter().enumerate() {
        let bkey = list.index(i);
        let weight = match b.weight {
            None => 1,
            Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
            Some(w) => {
                return Err(bkey.field("weight").invalid(format!(
                    "{w} is out of range; weight must be 1 to {MAX_WEIGHT}"
                )))
            }
        };
        let backup = b.backup.unwrap_or(false);
        let max_conns = super::capacity::max_conns(&bkey.field("max_conns"), b.max_conns)?;
        // A name to resolve, whether written as `host:port` or as `discover`.
        let named = |name: &str, target| DiscoverSpec {
            name: name.to_string(),
            target,
            weight,
            backup,
            max_conns,
        };
        let (name, at) = match (b.address, b.discover) {
            (Some(address), None) => {
                let at = bkey.field("address");
                let name = address.trim().to_string();
                match name.parse::<SocketAddr>() {
                    Ok(addr) => {
                        backends.push(BackendSpec {
                            host: name.clone(),
                            name: name.clone(),
                            addr,
                            weight,
                            backup,
                            discovered: false,
                            max_conns,
                        });
                    }
                    Err(_) => {
                        let target = discovery::host_port(&at, &name)?;
                        discover.push((at.clone(), named(&name, target)));
                    }
                }
                (name, at)
            }
            (None, Some(raw)) => {
                let at = bkey.field("discover");
                let (name, target) = discovery::discover(&at, raw)?;
                discover.push((at.clone(), named(&name, target)));
                (name, at)
            }
            (Some(_), Some(_)) => {
                return Err(bkey.invalid("address and discover exclude each other"));
            }
            (None, None) => return Err(bkey.invalid("needs address or discover")),
        };
        let seen = backends.iter().filter(|b| b.name == name).count()
            + discover.iter().filter(|(_, d)| d.name == name).count();
        if seen > 1 {
            return Err(at.invalid(format!("`{name}` is listed twice in this upstream")));
        }
    }
    if backends.iter().all(|b| b.backup) && discover.iter().all(|(_, d)| d.backup) {
        return Err(list.invalid("needs at least one backend without `backup: true`"));
    }
    let (found, due) = resolve_at_load(&discover, discovery)?;
    backends.extend(found);
    Ok(Entries {
        backends,
        discover: discover.into_iter().map(|(_, d)| d).collect(),
        due,
    })
}

/// Resolves each `(key, spec)` now; the backends found, and when the first answer expires
/// (its TTL clamped by `settings`).
fn resolve_at_load(
    specs: &[(Key, DiscoverSpec)],
    settings: &Discovery,
) -> Result<(Vec<BackendSpec>, Option<Instant>), Invalid> {
    if specs.is_empty() {
        return Ok((Vec::new(), None));
    }
    let targets: Vec<Target> = specs.iter().map(|(_, s)| s.target.clone()).collect();
    let answers = dns::lookup_blocking(&settings.nameservers, settings.timeout, &targets);
    let now = Instant::now();
    let mut backends = Vec::new();
    let mut due: Option<Instant> = None;
    for ((key, spec), answer) in specs.iter().zip(answers) {
        let answer =
            answer.map_err(|e| key.invalid(format!("`{}` does not resolve: {e}", spec.name)))?;
        let at = now + settings.clamp(answer.ttl);
        due = Some(due.map_or(at, |d| d.min(at)));
        backends.extend(spec.backends(&answer));
    }
    Ok((backends, due))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Found;
    use std::time::Duration;

    #[test]
    fn srv_records_give_weight_and_backup() {
        let spec = DiscoverSpec {
            name: "_http._tcp.api".into(),
            target: Target::Srv {
                name: "_http._tcp.api".into(),
            },
            weight: 1,
            backup: false,
            max_conns: None,
        };
        let found = |addr: &str, weight, backup| Found {
            addr: addr.parse().unwrap(),
            host: "a.api:1".into(),
            weight: Some(weight),
            backup,
        };
        let answer = Answer {
            found: vec![
                found("10.0.0.1:81", 0, false),
                found("10.0.0.2:82", 5, false),
                found("10.0.0.3:83", 9000, true),
            ],
            ttl: Duration::from_secs(5),
        };
        let got: Vec<(String, u32, bool)> = spec
            .backends(&answer)
            .into_iter()
            .map(|b| (b.name, b.weight, b.backup))
            .collect();
        assert_eq!(
            got,
            vec![
                ("_http._tcp.api/10.0.0.1:81".into(), 1, false),
                ("_http._tcp.api/10.0.0.2:82".into(), 5, false),
                ("_http._tcp.api/10.0.0.3:83".into(), 1000, true),
            ]
        );
    }
}
