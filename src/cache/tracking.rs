//! Redis's server-assisted invalidation for the L1 store.
//!
//! One upstream connection in RESP3 runs `CLIENT TRACKING ON BCAST` (with
//! `PREFIX`es when the cached namespaces are known) and receives an
//! `invalidate` push for every key anyone changes: other applications,
//! other proxies, scripts, expiry, eviction. Each named key is dropped from
//! the store in every database; a null invalidation (FLUSHALL/FLUSHDB)
//! empties it. While the connection is down the store accepts nothing and is
//! empty, so no value can be served that Redis would no longer return; the
//! tracker reconnects with backoff and caching resumes when it is back.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::BytesFrame as Resp3Frame;
use tokio::sync::{mpsc, watch};

use super::L1Store;
use crate::keys::versions::{Mapped, Versioning};
use crate::protocol::{Command, Protocol, ReplyLimits, ReplyScanner};
use crate::shutdown::Shutdown;
use crate::stats::{ConnectionKind, Stats};
use crate::upstream::cluster::Cluster;
use crate::upstream::{ConnectOptions, Upstream, UpstreamError, connect};

/// The name the tracking connection carries in Redis's CLIENT LIST.
pub const TRACKING_CONNECTION_NAME: &str = "auracache:tracking";

/// What the tracker needs.
pub struct TrackerConfig {
    pub target: Arc<Upstream>,
    /// Only keys with these prefixes are tracked; empty = every key.
    pub prefixes: Vec<Bytes>,
    pub connect_timeout: Duration,
    pub max_backoff: Duration,
    pub limits: ReplyLimits,
    /// Invalidations name stored keys; with key versioning they are mapped
    /// back to the client's keys that L1 holds.
    pub versions: Option<Arc<Versioning>>,
    /// With a Redis Cluster: one tracking connection per master, all of
    /// them restarted (and L1 emptied) whenever the slot map changes.
    pub cluster: Option<Arc<Cluster>>,
}

/// Starts the tracker; the receiver reports whether invalidations are
/// flowing (and so whether the store is accepting fills).
pub fn start(
    config: TrackerConfig,
    store: Arc<L1Store>,
    stats: Arc<Stats>,
    mut shutdown: Shutdown,
) -> watch::Receiver<bool> {
    let (active_tx, active) = watch::channel(false);
    store.set_accepting(false);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(50);
        loop {
            let session = track_all(&config, &store, &stats, &active_tx);
            let ended = tokio::select! {
                ended = session => ended,
                _ = shutdown.triggered() => return,
            };
            // Invalidations may have been missed: nothing cached is safe.
            store.set_accepting(false);
            active_tx.send_replace(false);
            match ended {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(error) => tracing::warn!(%error, "L1 invalidation tracking is down; L1 is off until it is back"),
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.triggered() => return,
            }
            backoff = (backoff * 2).min(config.max_backoff);
        }
    });
    active
}

/// The tracking connections' life: one to the Redis, or one per master of
/// a cluster; caching resumes once every one has confirmed. Ends (Ok) when
/// a cluster's slot map changes: the masters, and which keys each holds,
/// may be others now.
async fn track_all(
    config: &TrackerConfig,
    store: &L1Store,
    stats: &Arc<Stats>,
    active: &watch::Sender<bool>,
) -> Result<(), UpstreamError> {
    let confirm_all = || {
        store.set_accepting(true);
        active.send_replace(true);
    };
    let Some(cluster) = &config.cluster else {
        return track(config, &config.target, store, stats, &confirm_all).await;
    };
    let mut epoch = cluster.subscribe();
    let seen = *epoch.borrow_and_update();
    let masters = cluster.master_upstreams();
    if seen == 0 || masters.is_empty() {
        let _ = epoch.changed().await;
        return Ok(());
    }
    let confirmed = std::sync::atomic::AtomicUsize::new(0);
    let confirm_one = || {
        if confirmed.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1 == masters.len() {
            confirm_all();
        }
    };
    let trackers: Vec<_> = masters
        .iter()
        .map(|master| Box::pin(track(config, master, store, stats, &confirm_one)))
        .collect();
    tokio::select! {
        (ended, _, _) = futures_util::future::select_all(trackers) => ended,
        _ = epoch.changed() => Ok(()),
    }
}

/// One tracking connection's life: set up, then apply invalidations until
/// it ends.
async fn track(
    config: &TrackerConfig,
    target: &Upstream,
    store: &L1Store,
    stats: &Arc<Stats>,
    confirmed_here: &(dyn Fn() + Sync),
) -> Result<(), UpstreamError> {
    let options = ConnectOptions {
        db: 0,
        protocol: Protocol::Resp3,
        name: Some(TRACKING_CONNECTION_NAME),
        kind: ConnectionKind::Tracking,
        timeout: config.connect_timeout,
        // Nothing is owed on it: it only listens.
        reply_timeout: None,
    };
    let connection = connect(target, options, config.limits, stats.clone()).await?;
    let (sink, mut incoming) = mpsc::channel(64);
    connection.pipe_to(sink).await?;
    let mut args: Vec<Bytes> = ["CLIENT", "TRACKING", "ON", "BCAST"]
        .into_iter()
        .map(|word| Bytes::from_static(word.as_bytes()))
        .collect();
    for prefix in &config.prefixes {
        args.push(Bytes::from_static(b"PREFIX"));
        args.push(prefix.clone());
    }
    connection.send_raw(Command::from_args(args).wire().clone()).await?;

    let mut buf = BytesMut::new();
    let mut scanner = ReplyScanner::new(config.limits);
    let mut confirmed = false;
    while let Some(bytes) = incoming.recv().await {
        buf.extend_from_slice(&bytes);
        while let Some(frame) = scanner
            .scan(&buf)
            .map_err(|error| UpstreamError::Unavailable(format!("bad frame on the tracking connection: {error}")))?
        {
            let frame_bytes = buf.split_to(frame.len).freeze();
            scanner = ReplyScanner::new(config.limits);
            if !confirmed {
                if frame_bytes.first() != Some(&b'+') {
                    let text = String::from_utf8_lossy(&frame_bytes).trim().to_string();
                    return Err(UpstreamError::Unavailable(format!("CLIENT TRACKING refused: {text}")));
                }
                confirmed = true;
                confirmed_here();
                continue;
            }
            if frame.push {
                apply(store, config.versions.as_deref(), &frame_bytes);
            }
        }
    }
    Err(UpstreamError::lost())
}

/// Applies one push frame: `invalidate` with keys, or null (flush).
fn apply(store: &L1Store, versions: Option<&Versioning>, frame: &Bytes) {
    let decoded = match redis_protocol::resp3::decode::complete::decode_bytes(frame) {
        Ok(Some((frame, _))) => frame,
        _ => {
            // Unreadable: the safe reading is "anything may have changed".
            store.flush();
            return;
        }
    };
    let Resp3Frame::Push { data, .. } = decoded else {
        return;
    };
    let mut items = data.into_iter();
    match items.next() {
        Some(Resp3Frame::BlobString { data, .. }) if data.eq_ignore_ascii_case(b"invalidate") => {}
        _ => return,
    }
    match items.next() {
        Some(Resp3Frame::Array { data: keys, .. }) => {
            for key in keys {
                match key {
                    Resp3Frame::BlobString { data, .. } | Resp3Frame::SimpleString { data, .. } => {
                        match versions.map(|versions| versions.client_key(&data)) {
                            None => store.invalidate_everywhere(&data),
                            Some(Mapped::Visible(key)) => store.invalidate_everywhere(&Bytes::copy_from_slice(key)),
                            // No client key names it: L1 holds nothing of it.
                            Some(Mapped::Hidden) => {}
                        }
                    }
                    _ => store.flush(),
                }
            }
        }
        // A null list: FLUSHALL/FLUSHDB (or tracking reset) on Redis.
        _ => {
            store.flush();
            if let Some(versions) = versions {
                versions.forget_all();
            }
        }
    }
}

/// Bytes consumed: used by tests that feed frames directly.
#[cfg(test)]
fn frame_len(buf: &[u8]) -> usize {
    let mut scanner = ReplyScanner::new(ReplyLimits {
        max_nesting_depth: 64,
        max_bulk_bytes: usize::MAX,
    });
    scanner.scan(buf).unwrap().map(|frame| frame.len).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheKey, CachedReply, L1Limits, Lookup, Namespaces, Rules, Shape};
    use crate::clock::ManualClock;

    fn store_with(keys: &[&str]) -> L1Store {
        let store = L1Store::new(
            L1Limits {
                max_bytes: 1 << 20,
                max_entry_bytes: 1024,
                estimated_entries: 100,
                fill_on_first_miss: true,
            },
            Arc::new(Namespaces::uniform(Rules::test_default())),
            Arc::new(ManualClock::default()),
        );
        for key in keys {
            let cache_key = CacheKey::new(0, Bytes::copy_from_slice(key.as_bytes()), Shape::String);
            let Lookup::Miss(ticket) = store.lookup(&cache_key) else {
                panic!("miss");
            };
            store.complete(
                ticket,
                CachedReply::same(Bytes::from_static(b"$1\r\nv\r\n")),
                Duration::from_secs(60),
            );
        }
        store
    }

    #[test]
    fn invalidate_pushes_drop_the_named_keys() {
        let store = store_with(&["a", "b", "c"]);
        let frame = Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$1\r\nc\r\n");
        assert_eq!(frame_len(&frame), frame.len());
        apply(&store, None, &frame);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn a_null_invalidation_flushes_everything() {
        let store = store_with(&["a", "b"]);
        apply(&store, None, &Bytes::from_static(b">2\r\n$10\r\ninvalidate\r\n_\r\n"));
        assert!(store.is_empty());
    }

    #[test]
    fn other_pushes_change_nothing() {
        let store = store_with(&["a"]);
        apply(
            &store,
            None,
            &Bytes::from_static(b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\na\r\n"),
        );
        assert_eq!(store.len(), 1);
    }
}
