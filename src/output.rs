//! A client's output buffer: the reply bytes the proxy holds for one client
//! that it has not yet read, and the limit on them (`limits.max_output_bytes`,
//! Redis's `client-output-buffer-limit`).
//!
//! Replies to a client's forwarded batches arrive on shared upstream
//! connections, which never wait for the client (that would stall everyone
//! else on the connection). So a client that sends requests and never reads
//! the replies would make the proxy hold them without end. Every reply held
//! is counted here instead: as it arrives (on the upstream reader, or when
//! the proxy queues its own reply) and until the writer has handed it to the
//! socket. Past the limit the client is cut off, as Redis cuts off a client
//! over its output-buffer limit, and what it was owed is dropped.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Reply bytes held for one client, shared by whoever adds to them.
#[derive(Debug)]
pub struct OutputBuffer {
    held: AtomicUsize,
    limit: usize,
    over: AtomicBool,
    overflowed: Notify,
    /// Replies (counted per command) that have come from Redis, or failed,
    /// and the bytes of those that came.
    arrived: AtomicU64,
    arrived_bytes: AtomicU64,
    arrival: Notify,
}

/// Replies a client may be owed by Redis at once before the first of its
/// replies has arrived (and so before their size is known).
const FIRST_WINDOW: u64 = 32;
/// Most replies a client may be owed at once however small they are.
const MOST_WINDOW: u64 = 8192;

impl OutputBuffer {
    pub fn new(limit: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            limit,
            over: AtomicBool::new(false),
            overflowed: Notify::new(),
            arrived: AtomicU64::new(0),
            arrived_bytes: AtomicU64::new(0),
            arrival: Notify::new(),
        }
    }

    /// A batch of `replies` replies of `bytes` bytes has come from Redis
    /// (or failed: `bytes` 0).
    pub fn batch_arrived(&self, replies: usize, bytes: usize) {
        self.arrived_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.arrived.fetch_add(replies as u64, Ordering::Release);
        self.arrival.notify_one();
    }

    /// How many replies the client may be owed by Redis at once: as many
    /// as half its limit holds at the size its replies have had so far
    /// (few before the first has come). A client that pipelines without
    /// reading so puts about its limit's worth of work on Redis and a
    /// shared connection, not a pipeline's worth, ahead of everyone else.
    pub fn window(&self) -> u64 {
        let arrived = self.arrived.load(Ordering::Acquire);
        if arrived == 0 {
            return FIRST_WINDOW;
        }
        let average = (self.arrived_bytes.load(Ordering::Relaxed) / arrived).max(1);
        (self.limit as u64 / 2 / average).clamp(1, MOST_WINDOW)
    }

    /// Waits until `sent` replies minus those arrived leave room for
    /// `more` within the window (a client owed nothing may always send),
    /// or the client is over its limit.
    pub async fn wait_for_room(&self, sent: u64, more: u64) {
        loop {
            let owed = sent - self.arrived.load(Ordering::Acquire);
            if owed == 0 || owed + more <= self.window() || self.is_over() {
                return;
            }
            // notify_one keeps a permit, so an arrival between the check
            // and this wait is not missed.
            self.arrival.notified().await;
        }
    }

    /// Counts `bytes` more held for the client; past the limit the buffer
    /// is over for good, and whoever waits in [`Self::overflowed`] wakes.
    pub fn add(&self, bytes: usize) {
        let held = self.held.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if held > self.limit {
            self.go_over();
        }
    }

    /// The client is over its limit, for good: whoever waits wakes.
    fn go_over(&self) {
        if !self.over.swap(true, Ordering::AcqRel) {
            // Both sides may wait: the writer, and the request side.
            self.overflowed.notify_waiters();
        }
    }

    /// Whether `pending` bytes more would take the client over the limit;
    /// if so it is over, as if they had been added.
    pub fn over_with(&self, pending: usize) -> bool {
        if self.is_over() {
            return true;
        }
        if self.held() + pending > self.limit {
            self.go_over();
            return true;
        }
        false
    }

    /// `bytes` counted before have been written to the client.
    pub fn remove(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// True once the client went over the limit.
    pub fn is_over(&self) -> bool {
        self.over.load(Ordering::Acquire)
    }

    /// Resolves once the client has gone over the limit.
    pub async fn overflowed(&self) {
        loop {
            let notified = self.overflowed.notified();
            tokio::pin!(notified);
            // Registered before the look, so a wake-up between the look and
            // the wait is not lost (notify_waiters keeps no permit).
            notified.as_mut().enable();
            if self.is_over() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn going_over_the_limit_is_noticed_once_and_for_good() {
        let buffer = OutputBuffer::new(100);
        buffer.add(60);
        buffer.add(40);
        assert!(!buffer.is_over(), "at the limit is not over it");
        buffer.remove(50);
        buffer.add(50);
        assert_eq!(buffer.held(), 100);
        assert!(!buffer.is_over());
        buffer.add(1);
        assert!(buffer.is_over());
        // A waiter that comes later sees it at once.
        tokio::time::timeout(std::time::Duration::from_secs(5), buffer.overflowed())
            .await
            .expect("the overflow is seen");
        buffer.remove(101);
        assert!(buffer.is_over(), "reading afterwards does not undo it");
    }

    /// Both the writer and the request side may wait for the cut-off at
    /// once: both wake.
    #[tokio::test]
    async fn every_waiter_sees_the_overflow() {
        let buffer = std::sync::Arc::new(OutputBuffer::new(10));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let buffer = buffer.clone();
                tokio::spawn(async move { buffer.overflowed().await })
            })
            .collect();
        tokio::task::yield_now().await;
        buffer.add(11);
        for waiter in waiters {
            tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
                .await
                .expect("woken")
                .unwrap();
        }
    }
}
