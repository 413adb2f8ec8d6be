//! `upstreams.<name>` capacity keys: `slow_start`, `queue`, `keepalive`, and each backend's
//! `max_conns`.

use std::time::Duration;

use super::file::{FileKeepalive, FileQueue, FileUpstream};
use super::key::{Invalid, Key};

/// Largest `queue.size` accepted.
pub const MAX_QUEUE_SIZE: i64 = 100_000;

/// Largest `keepalive.idle` accepted.
pub const MAX_IDLE: i64 = 100_000;

/// Idle connections an upstream keeps for reuse when `keepalive.idle` is not given.
pub const DEFAULT_IDLE: usize = 512;

/// How an upstream grows into load and holds requests back when its backends are full.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    /// A backend that joins or recovers ramps its weight from 1/10 to full over this time.
    pub slow_start: Option<Duration>,
    /// Where requests wait while every eligible backend is at its `max_conns`.
    pub queue: Option<Queue>,
    pub keepalive: Keepalive,
}

/// A bounded FIFO of requests waiting for a backend below its `max_conns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queue {
    pub size: usize,
    pub timeout: Duration,
}

/// Idle upstream connections kept for reuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    /// This upstream's share of the process-wide pool of idle connections.
    pub idle: usize,
    /// An idle connection is closed after this long.
    pub idle_timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Keepalive {
        Keepalive {
            idle: DEFAULT_IDLE,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

impl super::Config {
    /// The size of the process-wide pool of idle upstream connections: every upstream's
    /// `keepalive.idle` added up (fixed at start).
    pub fn keepalive_pool_size(&self) -> usize {
        self.upstreams
            .values()
            .map(|u| u.capacity.keepalive.idle)
            .fold(0usize, usize::saturating_add)
            .max(1)
    }
}

/// Validates the capacity keys of the upstream at `key`.
pub(super) fn capacity(key: &Key, up: &FileUpstream) -> Result<Capacity, Invalid> {
    let slow_start = up
        .slow_start
        .as_deref()
        .map(|v| key.field("slow_start").duration(Some(v), Duration::ZERO))
        .transpose()?;
    let queue = up
        .queue
        .as_ref()
        .map(|q| queue(&key.field("queue"), q))
        .transpose()?;
    let keepalive = match &up.keepalive {
        None => Keepalive::default(),
        Some(k) => keepalive(&key.field("keepalive"), k)?,
    };
    Ok(Capacity {
        slow_start,
        queue,
        keepalive,
    })
}

fn queue(key: &Key, q: &FileQueue) -> Result<Queue, Invalid> {
    let size = match q.size {
        None => 100,
        Some(n) if (1..=MAX_QUEUE_SIZE).contains(&n) => n as usize,
        Some(n) => {
            return Err(key.field("size").invalid(format!(
                "{n} is out of range; size must be 1 to {MAX_QUEUE_SIZE}"
            )))
        }
    };
    Ok(Queue {
        size,
        timeout: key
            .field("timeout")
            .duration(q.timeout.as_deref(), Duration::from_secs(2))?,
    })
}

fn keepalive(key: &Key, k: &FileKeepalive) -> Result<Keepalive, Invalid> {
    let idle = match k.idle {
        None => DEFAULT_IDLE,
        Some(n) if (1..=MAX_IDLE).contains(&n) => n as usize,
        Some(n) => {
            return Err(key
                .field("idle")
                .invalid(format!("{n} is out of range; idle must be 1 to {MAX_IDLE}")))
        }
    };
    Ok(Keepalive {
        idle,
        idle_timeout: key
            .field("idle_timeout")
            .duration(k.idle_timeout.as_deref(), Duration::from_secs(60))?,
    })
}

/// A backend's `max_conns` at `key`: at least 1 when given.
pub(super) fn max_conns(key: &Key, value: Option<i64>) -> Result<Option<u32>, Invalid> {
    match value {
        None => Ok(None),
        Some(n) if n >= 1 => u32::try_from(n)
            .map(Some)
            .map_err(|_| key.invalid("is too large")),
        Some(_) => Err(key.invalid("must be at least 1")),
    }
}
