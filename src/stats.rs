//! Counters every part of the proxy updates and the admin surface reads.
//! Plain relaxed atomics: they are reported, never used to decide anything.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Process-wide counters and gauges.
#[derive(Debug, Default)]
pub struct Stats {
    clients: AtomicUsize,
    clients_total: AtomicU64,
    clients_rejected: AtomicU64,
    upstream_pooled: AtomicUsize,
    upstream_dedicated: AtomicUsize,
    upstream_tracking: AtomicUsize,
    upstream_errors: AtomicU64,
    protocol_errors: AtomicU64,
}

/// Which gauge an upstream connection counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// Shared by many clients.
    Pooled,
    /// Owned by one client.
    Dedicated,
    /// Receives Redis's invalidation messages for the L1 cache.
    Tracking,
}

impl Stats {
    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
    pub fn clients_total(&self) -> u64 {
        self.clients_total.load(Ordering::Relaxed)
    }
    pub fn clients_rejected(&self) -> u64 {
        self.clients_rejected.load(Ordering::Relaxed)
    }
    pub fn upstream_pooled(&self) -> usize {
        self.upstream_pooled.load(Ordering::Relaxed)
    }
    pub fn upstream_dedicated(&self) -> usize {
        self.upstream_dedicated.load(Ordering::Relaxed)
    }
    pub fn upstream_tracking(&self) -> usize {
        self.upstream_tracking.load(Ordering::Relaxed)
    }
    pub fn upstream_errors(&self) -> u64 {
        self.upstream_errors.load(Ordering::Relaxed)
    }
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors.load(Ordering::Relaxed)
    }

    /// Counts a client in if there is room under `max`; false when full.
    pub fn try_add_client(&self, max: usize) -> bool {
        let admitted = self
            .clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now < max).then_some(now + 1)
            })
            .is_ok();
        if admitted {
            self.clients_total.fetch_add(1, Ordering::Relaxed);
        } else {
            self.clients_rejected.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
    pub fn remove_client(&self) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn connection_opened(&self, kind: ConnectionKind) {
        self.gauge(kind).fetch_add(1, Ordering::Relaxed);
    }
    pub fn connection_closed(&self, kind: ConnectionKind) {
        self.gauge(kind).fetch_sub(1, Ordering::Relaxed);
    }
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn gauge(&self, kind: ConnectionKind) -> &AtomicUsize {
        match kind {
            ConnectionKind::Pooled => &self.upstream_pooled,
            ConnectionKind::Dedicated => &self.upstream_dedicated,
            ConnectionKind::Tracking => &self.upstream_tracking,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_admission_stops_at_the_limit() {
        let stats = Stats::default();
        assert!(stats.try_add_client(2));
        assert!(stats.try_add_client(2));
        assert!(!stats.try_add_client(2));
        stats.remove_client();
        assert!(stats.try_add_client(2));
        assert_eq!(
            (stats.clients(), stats.clients_total(), stats.clients_rejected()),
            (2, 3, 1)
        );
    }
}
