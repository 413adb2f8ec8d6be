//! Purges on the Redis tier, ordered against fills on every instance.
//!
//! A purge takes the next *purge generation* (`<prefix>purge:gen`: Redis's own clock in
//! microseconds, kept increasing, so every instance compares against one clock) and leaves a
//! tombstone with it: `<prefix>purged:key:<primary>`, `<prefix>purged:tag:<tag>`, or the prefix
//! in the sorted set `<prefix>purged:prefixes` (scored by generation). A fill carries the
//! generation its instance knew when the request started, and the [`FILL`] script writes it
//! only when no matching tombstone is newer. A fill that started before a purge therefore
//! never lands after it, whichever order the purge's `DEL` and the fill's `SET` arrive in; an
//! instance that has not heard of a purge yet refuses fills the purge covers, the safe side.
//! Tombstones outlive the longest fill ([`TOMBSTONE_TTL`]). The scripts touch several keys, so
//! the tier needs one Redis server, not a cluster.
//!
//! The scripts go with `EVAL` (a few hundred bytes) rather than `EVALSHA`: the `redis` crate's
//! script helper is behind a feature this build does not enable, and purges and fills are not
//! the hot path.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{PurgeMessage, RedisTier};
use crate::cache::purge::{glob_matches, literal_prefix, PurgeMatch};

/// How long a tombstone is kept: longer than any fill (origin time plus body transfer) runs.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(600);

/// Writes an entry unless a purge newer than the fill's start covers it. KEYS: object, key
/// tombstone, prefix tombstones, `n` tag tombstones, `n` tag sets. ARGV: start generation,
/// value, TTL in ms, primary key. Returns 1 when written, 0 when refused.
pub const FILL: &str = r"
local start = tonumber(ARGV[1])
local n = (#KEYS - 3) / 2
local function newer(key)
  local g = redis.call('GET', key)
  return g and tonumber(g) > start
end
if newer(KEYS[2]) then return 0 end
for i = 1, n do
  if newer(KEYS[3 + i]) then return 0 end
end
local primary = ARGV[4]
for _, p in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. ARGV[1], '+inf')) do
  if string.sub(primary, 1, #p) == p then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
for i = 1, n do
  local set = KEYS[3 + n + i]
  redis.call('SADD', set, KEYS[1])
  redis.call('PEXPIRE', set, ARGV[3], 'NX')
  redis.call('PEXPIRE', set, ARGV[3], 'GT')
end
return 1
";

/// Takes the next purge generation and leaves the tombstone. KEYS: generation, tombstone (a
/// string, or for a prefix the sorted set). ARGV: `prefix` or another kind, the prefix, the
/// tombstone TTL in ms. Returns the generation as a decimal string.
const MARK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local gen = string.format('%.0f', math.max(now, last + 1))
redis.call('SET', KEYS[1], gen)
if ARGV[1] == 'prefix' then
  redis.call('ZADD', KEYS[2], gen, ARGV[2])
  local oldest = string.format('%.0f', tonumber(gen) - tonumber(ARGV[3]) * 1000)
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. oldest)
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  redis.call('SET', KEYS[2], gen, 'PX', ARGV[3])
end
return gen
";

pub fn generation_key(prefix: &str) -> String {
    format!("{prefix}purge:gen")
}

pub fn key_tombstone(prefix: &str, primary: &str) -> String {
    format!("{prefix}purged:key:{primary}")
}

pub fn tag_tombstone(prefix: &str, tag: &str) -> String {
    format!("{prefix}purged:tag:{tag}")
}

pub fn prefix_tombstones(prefix: &str) -> String {
    format!("{prefix}purged:prefixes")
}

/// What a purge did on the Redis tier.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedPurge {
    /// Redis entries deleted.
    pub deleted: u64,
    /// The steps that failed (`tombstone`, `scan`, `members`, `delete`, `publish`); empty when
    /// the purge is complete.
    pub failed: Vec<&'static str>,
}

impl SharedPurge {
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }

    fn fail(&mut self, step: &'static str) {
        if !self.failed.contains(&step) {
            self.failed.push(step);
        }
    }
}

impl RedisTier {
    /// Orders the purge before later fills, deletes what `target` names from Redis and tells
    /// the other instances. Every step is tried even when one fails; the report says which
    /// failed.
    pub async fn purge(&self, target: &PurgeMatch) -> SharedPurge {
        let mut report = SharedPurge::default();
        let prefix = &self.conf.key_prefix;
        // A pattern's tombstone is its literal prefix: a fill in flight under the prefix when
        // the purge runs is refused (the safe side), and the fill script stays a plain prefix
        // test rather than a pattern match inside Redis.
        let (kind, value, mark_kind, mark_value, tombstone) = match target {
            PurgeMatch::Key(v) => ("key", v, "key", v.as_str(), key_tombstone(prefix, v)),
            PurgeMatch::Prefix(v) => ("prefix", v, "prefix", v.as_str(), prefix_tombstones(prefix)),
            PurgeMatch::Tag(v) => ("tag", v, "tag", v.as_str(), tag_tombstone(prefix, v)),
            PurgeMatch::Pattern(v) => (
                "pattern",
                v,
                "prefix",
                literal_prefix(v),
                prefix_tombstones(prefix),
            ),
        };
        let mark = redis::cmd("EVAL")
            .arg(MARK)
            .arg(2)
            .arg(generation_key(prefix))
            .arg(tombstone)
            .arg(mark_kind)
            .arg(mark_value)
            .arg(TOMBSTONE_TTL.as_millis() as u64)
            .clone();
        let generation = match self.query::<String>("purge", &mark).await {
            Some(g) => g.parse::<u64>().unwrap_or(0),
            None => {
                report.fail("tombstone");
                0
            }
        };
        self.learn_generation(generation);
        let keys: Vec<String> = match target {
            PurgeMatch::Tag(tag) => {
                let set = format!("{prefix}tag:{tag}");
                let members: Option<Vec<String>> =
                    self.query("purge", redis::cmd("SMEMBERS").arg(&set)).await;
                let mut keys = members.unwrap_or_else(|| {
                    report.fail("members");
                    Vec::new()
                });
                keys.push(set);
                keys
            }
            PurgeMatch::Key(key) => {
                self.scan(&format!("{prefix}obj:{}#*", glob_escape(key)), &mut report)
                    .await
            }
            PurgeMatch::Prefix(p) => {
                self.scan(&format!("{prefix}obj:{}*", glob_escape(p)), &mut report)
                    .await
            }
            PurgeMatch::Pattern(p) => {
                let objects = format!("{prefix}obj:");
                let candidates = self
                    .scan(
                        &format!("{objects}{}*", glob_escape(literal_prefix(p))),
                        &mut report,
                    )
                    .await;
                candidates
                    .into_iter()
                    .filter(|key| {
                        key.strip_prefix(&objects)
                            .and_then(|rest| rest.rsplit_once('#'))
                            .is_some_and(|(primary, _)| glob_matches(p, primary))
                    })
                    .collect()
            }
        };
        for chunk in keys.chunks(500) {
            match self
                .query::<u64>("purge", redis::cmd("DEL").arg(chunk))
                .await
            {
                Some(n) => report.deleted += n,
                None => report.fail("delete"),
            }
        }
        let message = PurgeMessage {
            from: self.instance.clone(),
            kind: kind.to_string(),
            value: value.clone(),
            generation,
        };
        let published = match serde_json::to_string(&message) {
            Ok(payload) => self
                .query::<u64>(
                    "publish",
                    redis::cmd("PUBLISH")
                        .arg(format!("{prefix}purge"))
                        .arg(payload),
                )
                .await
                .is_some(),
            Err(_) => false,
        };
        if published {
            self.stats.purges_published.fetch_add(1, Ordering::Relaxed);
        } else {
            report.fail("publish");
        }
        report
    }

    /// Every key matching `pattern`; a page that fails ends the scan and marks the report.
    async fn scan(&self, pattern: &str, report: &mut SharedPurge) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let page: Option<(u64, Vec<String>)> = self
                .query(
                    "purge",
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await;
            let Some((next, found)) = page else {
                report.fail("scan");
                return keys;
            };
            keys.extend(found);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }
}

/// Escapes `*`, `?`, `[`, `]` and `\` for `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_are_escaped() {
        assert_eq!(glob_escape("h/a?b=[1]*"), "h/a\\?b=\\[1\\]\\*");
        assert_eq!(glob_escape("plain/path"), "plain/path");
    }
}
