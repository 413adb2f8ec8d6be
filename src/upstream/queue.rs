//! The wait queue of one upstream: requests that found every eligible backend at its
//! `max_conns` wait here (bounded, woken in arrival order by a freed slot) until a backend has
//! room, the queue's timeout passes, or the queue is full on arrival.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Why a request left the queue without a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("every backend is at max_conns and the queue is full ({0} waiting)")]
    Full(usize),
    #[error("every backend stayed at max_conns for the queue timeout ({0:?})")]
    Timeout(Duration),
}

/// Shared by a pool, the pools that follow it on reloads, and its backends (whose finished
/// requests wake the next waiter).
#[derive(Debug, Default)]
pub struct WaitQueue {
    /// `notify_one` wakes the longest waiting request (or lets the next one through at once).
    notify: Notify,
    waiting: AtomicUsize,
    timeouts: AtomicU64,
    rejected: AtomicU64,
}

impl WaitQueue {
    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Requests that waited for the whole timeout.
    pub fn timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    /// Requests refused because the queue was full.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Joins the queue unless `size` requests already wait; the place is held until the
    /// returned guard drops.
    pub fn enter(self: &Arc<Self>, size: usize, timeout: Duration) -> Result<Waiting, QueueError> {
        let joined = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < size).then_some(n + 1)
            });
        match joined {
            Ok(_) => Ok(Waiting {
                queue: Arc::clone(self),
                deadline: Instant::now() + timeout,
                timeout,
            }),
            Err(n) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(QueueError::Full(n))
            }
        }
    }

    /// A request on one of the backends finished: the longest waiting request tries again.
    pub fn slot_freed(&self) {
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.notify.notify_one();
        }
    }

    /// Backends changed (health, drain, weights): every waiting request looks again.
    pub fn wake_all(&self) {
        self.notify.notify_waiters();
    }
}

/// A place in the queue; leaving it (served, refused or gone) frees it.
#[derive(Debug)]
pub struct Waiting {
    queue: Arc<WaitQueue>,
    deadline: Instant,
    timeout: Duration,
}

impl Waiting {
    /// Waits for a freed slot; `Err` once the queue timeout has passed since joining.
    pub async fn next(&self) -> Result<(), QueueError> {
        match tokio::time::timeout_at(self.deadline, self.queue.notify.notified()).await {
            Ok(()) => Ok(()),
            Err(_) => {
                self.queue.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(QueueError::Timeout(self.timeout))
            }
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.queue.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_and_counted() {
        let q = Arc::new(WaitQueue::default());
        let a = q.enter(2, Duration::from_secs(1)).expect("first");
        let _b = q.enter(2, Duration::from_secs(1)).expect("second");
        assert_eq!(
            q.enter(2, Duration::from_secs(1)).err(),
            Some(QueueError::Full(2))
        );
        assert_eq!((q.len(), q.rejected()), (2, 1));
        drop(a);
        assert_eq!(q.len(), 1);
    }

    #[tokio::test]
    async fn freed_slot_wakes_and_timeout_ends_the_wait() {
        let q = Arc::new(WaitQueue::default());
        let w = q.enter(1, Duration::from_millis(300)).expect("joined");
        let waker = Arc::clone(&q);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waker.slot_freed();
        });
        let started = Instant::now();
        assert_eq!(w.next().await, Ok(()));
        assert!(started.elapsed() < Duration::from_millis(300));
        assert_eq!(
            w.next().await,
            Err(QueueError::Timeout(Duration::from_millis(300)))
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(q.timeouts(), 1);
    }

    #[tokio::test]
    async fn a_slot_freed_before_the_wait_is_not_lost() {
        let q = Arc::new(WaitQueue::default());
        let w = q.enter(1, Duration::from_secs(5)).expect("joined");
        q.slot_freed();
        tokio::time::timeout(Duration::from_secs(1), w.next())
            .await
            .expect("the stored wake-up is taken at once")
            .expect("woken");
    }
}
