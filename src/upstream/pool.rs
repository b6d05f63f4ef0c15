//! Shared upstream connections: a small pool per (database, protocol), each
//! connection kept alive by a supervisor that reconnects with backoff.
//!
//! A client is pinned to one connection of a pool (by its id), so its
//! commands stay in order; ordering across clients is Redis's, as always.
//! While a connection is down, asking for it fails at once with the reason,
//! so clients get a prompt error rather than a hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::cluster::{Cluster, ClusterPool};
use super::{ConnectOptions, POOL_CONNECTION_NAME, Upstream, UpstreamConnection, UpstreamError, connect};
use crate::config::{PoolConfig, UpstreamUrl};
use crate::protocol::{Protocol, ReplyLimits};
use crate::shutdown::Shutdown;
use crate::stats::{ConnectionKind, Stats};

/// First wait after a failed connection attempt; it doubles up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// Every pool of the proxy, created on first use.
pub struct Pools {
    upstream: Arc<Upstream>,
    config: PoolConfig,
    limits: ReplyLimits,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    pools: Mutex<HashMap<(u32, Protocol), Arc<Pool>>>,
    /// With a `redis-cluster://` upstream: its slot map and masters.
    cluster: Option<Arc<Cluster>>,
}

/// The connections for one (database, protocol).
pub struct Pool {
    slots: Vec<watch::Receiver<SlotState>>,
    wait: Duration,
    /// For a cluster: the lanes over every master's pool (`slots` empty).
    cluster: Option<ClusterPool>,
}

#[derive(Clone)]
enum SlotState {
    /// The first attempt is under way.
    Connecting,
    Up(UpstreamConnection),
    Down(UpstreamError),
}

impl Pools {
    pub fn new(
        upstream: Arc<Upstream>,
        config: PoolConfig,
        limits: ReplyLimits,
        stats: Arc<Stats>,
        shutdown: Shutdown,
    ) -> Self {
        let cluster = upstream.url.is_cluster().then(|| {
            Cluster::start(
                upstream.clone(),
                config.clone(),
                limits,
                stats.clone(),
                shutdown.clone(),
            )
        });
        Self {
            upstream,
            config,
            limits,
            stats,
            shutdown,
            pools: Mutex::new(HashMap::new()),
            cluster,
        }
    }

    /// The cluster behind a `redis-cluster://` upstream.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Where upstream connections go.
    pub fn target(&self) -> &UpstreamUrl {
        &self.upstream.url
    }

    /// Where upstream connections go and how ([`connect`] takes it).
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// A client's own connection (MULTI, blocking commands, subscribers):
    /// to the one Redis, or, for a cluster, to each master it needs.
    pub async fn connect_own(&self, options: ConnectOptions) -> Result<UpstreamConnection, UpstreamError> {
        match &self.cluster {
            Some(cluster) => {
                cluster.ready_map().await?;
                Ok(super::cluster::Pinned::open(cluster.clone(), options))
            }
            None => connect(&self.upstream, options, self.limits, self.stats.clone()).await,
        }
    }

    /// The pool for `db` in `protocol`, starting it if it is new.
    pub fn get(&self, db: u32, protocol: Protocol) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pools
            .entry((db, protocol))
            .or_insert_with(|| Arc::new(self.start_pool(db, protocol)))
            .clone()
    }

    fn start_pool(&self, db: u32, protocol: Protocol) -> Pool {
        if let Some(cluster) = &self.cluster {
            return Pool {
                slots: Vec::new(),
                wait: Duration::ZERO,
                cluster: Some(ClusterPool::new(cluster.clone(), db, protocol, self.config.size)),
            };
        }
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let options = ConnectOptions {
            db,
            protocol,
            name: Some(POOL_CONNECTION_NAME),
            kind: ConnectionKind::Pooled,
            timeout,
            reply_timeout: (self.config.reply_timeout_ms > 0)
                .then(|| Duration::from_millis(self.config.reply_timeout_ms)),
        };
        let slots = (0..self.config.size)
            .map(|_| {
                let (state, receiver) = watch::channel(SlotState::Connecting);
                let supervisor = Supervisor {
                    upstream: self.upstream.clone(),
                    options,
                    limits: self.limits,
                    stats: self.stats.clone(),
                    max_backoff: Duration::from_millis(self.config.max_backoff_ms),
                    state,
                };
                let mut shutdown = self.shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = supervisor.run() => {}
                        _ = shutdown.triggered() => {}
                    }
                });
                receiver
            })
            .collect();
        Pool {
            slots,
            wait: timeout,
            cluster: None,
        }
    }
}

impl Pool {
    /// Whether the connection a client with `client_id` uses is down (its
    /// last attempt failed, or it was lost and is being re-established).
    pub fn is_down(&self, client_id: u64) -> bool {
        if let Some(cluster) = &self.cluster {
            return cluster.is_down(client_id);
        }
        let slot = &self.slots[(client_id % self.slots.len() as u64) as usize];
        match &*slot.borrow() {
            SlotState::Down(_) => true,
            SlotState::Up(connection) => connection.is_closed(),
            SlotState::Connecting => false,
        }
    }

    /// The connection a client with `client_id` uses, or why there is none.
    pub async fn connection(&self, client_id: u64) -> Result<UpstreamConnection, UpstreamError> {
        if let Some(cluster) = &self.cluster {
            return Ok(cluster.connection(client_id));
        }
        let slot = &self.slots[(client_id % self.slots.len() as u64) as usize];
        // The common case, without a clock read or a receiver clone.
        if let SlotState::Up(connection) = &*slot.borrow()
            && !connection.is_closed()
        {
            return Ok(connection.clone());
        }
        let mut state = slot.clone();
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            match &*state.borrow_and_update() {
                SlotState::Up(connection) if !connection.is_closed() => return Ok(connection.clone()),
                SlotState::Up(_) => return Err(UpstreamError::lost()),
                SlotState::Down(reason) => return Err(reason.clone()),
                SlotState::Connecting => {}
            }
            match tokio::time::timeout_at(deadline, state.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(UpstreamError::Unavailable("proxy is shutting down".into())),
                Err(_) => return Err(UpstreamError::Unavailable("still connecting".into())),
            }
        }
    }
}

/// Keeps one pool slot connected.
struct Supervisor {
    upstream: Arc<Upstream>,
    options: ConnectOptions,
    limits: ReplyLimits,
    stats: Arc<Stats>,
    max_backoff: Duration,
    state: watch::Sender<SlotState>,
}

impl Supervisor {
    async fn run(self) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match connect(&self.upstream, self.options, self.limits, self.stats.clone()).await {
                Ok(connection) => {
                    backoff = FIRST_BACKOFF;
                    self.state.send_replace(SlotState::Up(connection.clone()));
                    tracing::debug!(db = self.options.db, "pooled upstream connection up");
                    connection.closed().await;
                    self.stats.upstream_error();
                    tracing::warn!(db = self.options.db, "pooled upstream connection lost; reconnecting");
                    self.state.send_replace(SlotState::Down(UpstreamError::lost()));
                }
                Err(reason) => {
                    self.stats.upstream_error();
                    tracing::warn!(%reason, retry_in_ms = backoff.as_millis() as u64, "upstream unavailable");
                    self.state.send_replace(SlotState::Down(reason));
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.max_backoff);
                }
            }
        }
    }
}
