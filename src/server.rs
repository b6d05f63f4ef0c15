//! The listening side: accepts clients within `limits.max_clients`, runs
//! the TLS handshake of each (with `[tls]`) in its own task, starts a
//! session for each, and on shutdown stops accepting and lets in-flight
//! replies drain (bounded by `limits.drain_timeout_ms`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::cache::tracking::{self, TrackerConfig};
use crate::cache::{L1, L1Limits, L1Store, Namespaces, WriteTable};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::keys::table::KeyTable;
use crate::keys::versions::Versioning;
use crate::patterns::live::Patterns;
use crate::protocol::{Command, Protocol, ReplyLimits, RequestLimits};
use crate::session::{self, Shared};
use crate::shutdown::{self, Shutdown, ShutdownTrigger};
use crate::stats::Stats;
use crate::stream::Stream;
use crate::tls::ListenerTls;
use crate::upstream::{Pools, Upstream};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address}: {reason}")]
    Listen { address: String, reason: std::io::Error },
}

/// Entry point for running the proxy in-process.
pub struct Server;

/// A running proxy: its address, counters, and the way to stop it.
pub struct ServerHandle {
    local_addr: SocketAddr,
    stats: Arc<Stats>,
    l1: Option<Arc<L1>>,
    compression: Option<Arc<crate::codec::Compression>>,
    versions: Option<Arc<Versioning>>,
    patterns: Option<Arc<Patterns>>,
    preload: Option<Arc<crate::preload::Preload>>,
    admin_addr: Option<SocketAddr>,
    trigger: ShutdownTrigger,
    accept_loop: JoinHandle<()>,
}

impl Server {
    /// Validates the configuration, binds the listener and starts serving.
    pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
        Server::start_with_clock(config, Arc::new(SystemClock)).await
    }

    /// As [`Server::start`], with L1 deadlines and the pattern engine's
    /// time read from `clock` (tests move time by hand).
    pub async fn start_with_clock(config: Config, clock: Arc<dyn Clock>) -> Result<ServerHandle, StartError> {
        config.validate()?;
        let upstream = Upstream::from_config(&config)?;
        let listener_tls = ListenerTls::from_config(&config.tls)?;
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|reason| StartError::Listen {
                address: config.listen.clone(),
                reason,
            })?;
        // The admin surface is not the data path: a port taken (9121 is
        // also redis_exporter's) is reported, and clients are served anyway.
        let admin_listener = match config.admin.listen.as_str() {
            "" => None,
            address => match TcpListener::bind(address).await {
                Ok(listener) => Some(listener),
                Err(reason) => {
                    tracing::error!(
                        "HTTP admin not started: cannot listen on {address}: {reason} (set admin.listen, or \"\" for off)"
                    );
                    None
                }
            },
        };
        let admin_addr = admin_listener.as_ref().and_then(|listener| listener.local_addr().ok());
        let local_addr = listener.local_addr().map_err(|reason| StartError::Listen {
            address: config.listen.clone(),
            reason,
        })?;
        let (trigger, shutdown) = shutdown::channel();
        let stats = Arc::new(Stats::default());
        let limits = &config.limits;
        let request_limits = RequestLimits {
            max_bulk_bytes: limits.max_bulk_bytes,
            max_multibulk_len: limits.max_multibulk_len,
            max_inline_bytes: limits.max_inline_bytes,
        };
        let reply_limits = ReplyLimits {
            max_nesting_depth: limits.max_nesting_depth,
            max_bulk_bytes: limits.max_bulk_bytes,
        };
        let pools = Pools::new(
            Arc::new(upstream),
            config.pool.clone(),
            reply_limits,
            stats.clone(),
            shutdown.clone(),
        );
        let l1 = config.memory_cache.enabled.then(|| {
            let limits = L1Limits {
                max_bytes: config.memory_cache.max_bytes,
                max_entry_bytes: config.memory_cache.max_entry_bytes,
                estimated_entries: (config.memory_cache.max_bytes / 1024).clamp(1024, 1 << 20) as usize,
                fill_on_first_miss: config.memory_cache.fill_on_first_miss,
            };
            let namespaces = Arc::new(Namespaces::from_config(&config));
            let store = Arc::new(L1Store::new(limits, namespaces, clock.clone()));
            Arc::new(L1::new(&config.memory_cache, store))
        });
        let compression = (config.compression.enabled
            || config
                .namespaces
                .values()
                .any(|namespace| namespace.compression_enabled == Some(true)))
        .then(|| Arc::new(crate::codec::Compression::new(&config)));
        let versions = crate::keys::versions::Versioning::from_config(&config).map(Arc::new);
        let separator = config.namespace_separator.as_bytes().first().copied().unwrap_or(b':');
        let patterns = config
            .patterns
            .enabled
            .then(|| Patterns::start(&config.patterns, separator, clock));
        let preload = (config.preload.enabled && l1.is_some() && patterns.is_some())
            .then(|| crate::preload::Preload::new(&config.preload));
        let settings = std::sync::Mutex::new(config.clone());
        let shared = Arc::new(Shared {
            auth: Authenticator::new(&config.auth),
            config,
            pools,
            stats: stats.clone(),
            request_limits,
            reply_limits,
            databases: AtomicU32::new(16),
            l1: l1.clone(),
            compression,
            versions: versions.clone(),
            patterns: patterns.clone(),
            preload: preload.clone(),
            settings,
            history: crate::levels::History::default(),
            started: std::time::Instant::now(),
        });
        if let (Some(preload), Some(l1), Some(patterns)) = (&preload, &l1, &patterns) {
            let parts = crate::preload::Parts {
                shared: shared.clone(),
                l1: l1.clone(),
                patterns: patterns.clone(),
            };
            crate::preload::start(preload.clone(), parts, shutdown.clone());
        }
        tokio::spawn(learn_databases(shared.clone()));
        if let Some(listener) = admin_listener {
            crate::http::start(listener, shared.clone(), shutdown.clone());
        }
        let shared_l1 = l1.clone();
        if let Some(l1) = l1 {
            let namespaces = l1.store.namespaces();
            // Only namespaces with strict consistency need invalidations.
            if namespaces.any_strict() {
                let tracker = TrackerConfig {
                    target: shared.pools.upstream().clone(),
                    prefixes: stored_prefixes(namespaces.tracking_prefixes(), versions.as_deref()),
                    connect_timeout: Duration::from_millis(shared.config.pool.connect_timeout_ms),
                    max_backoff: Duration::from_millis(shared.config.pool.max_backoff_ms),
                    limits: reply_limits,
                    versions: versions.clone(),
                    cluster: shared.pools.cluster().cloned(),
                };
                tracking::start(tracker, l1.store.clone(), stats.clone(), shutdown.clone());
            }
            tokio::spawn(sweep(l1.clone(), shutdown.clone()));
        }
        if shared.l1.is_some() || versions.is_some() {
            tokio::spawn(learn_commands(shared.clone(), shutdown.clone()));
        }
        tracing::info!(
            "listening on {local_addr}{}, upstream {}",
            if listener_tls.is_some() { " (TLS)" } else { "" },
            shared.config.upstream_redacted()
        );
        if let Some(admin) = admin_addr {
            tracing::info!("HTTP admin (/health, /metrics) on http://{admin}");
        }
        let compression = shared.compression.clone();
        let versions = shared.versions.clone();
        let accept_loop = tokio::spawn(accept_clients(listener, listener_tls, shared, shutdown));
        Ok(ServerHandle {
            local_addr,
            stats,
            l1: shared_l1,
            compression,
            versions,
            patterns,
            preload,
            admin_addr,
            trigger,
            accept_loop,
        })
    }
}

impl ServerHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The L1 level, when enabled.
    pub fn l1(&self) -> Option<&Arc<L1>> {
        self.l1.as_ref()
    }

    /// The key versioning stage, when a namespace is versioned.
    pub fn versions(&self) -> Option<&Arc<Versioning>> {
        self.versions.as_ref()
    }

    /// The pattern engine, when enabled.
    pub fn patterns(&self) -> Option<&Arc<Patterns>> {
        self.patterns.as_ref()
    }

    /// Where the HTTP admin listens, when on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The preloader, when enabled.
    pub fn preload(&self) -> Option<&Arc<crate::preload::Preload>> {
        self.preload.as_ref()
    }

    /// The compression stage, when enabled.
    pub fn compression(&self) -> Option<&Arc<crate::codec::Compression>> {
        self.compression.as_ref()
    }

    /// Stops accepting, lets in-flight replies drain (bounded), and returns.
    /// Then the pattern engine records what it was sent and saves its model.
    pub async fn shutdown(self) {
        self.trigger.trigger();
        let _ = self.accept_loop.await;
        if let Some(patterns) = self.patterns {
            let _ = tokio::task::spawn_blocking(move || patterns.stop()).await;
        }
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down: no new clients, draining in-flight replies");
        self.shutdown().await;
    }
}

async fn accept_clients(listener: TcpListener, tls: Option<ListenerTls>, shared: Arc<Shared>, mut shutdown: Shutdown) {
    let next_id = AtomicU64::new(1);
    let sessions_done = Arc::new(Notify::new());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.triggered() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: back off briefly
                // rather than spin.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if !shared.stats.try_add_client(shared.config.limits.max_clients) {
            tokio::spawn(reject(stream, tls.clone()));
            continue;
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let (shared, mut shutdown, done, tls) = (shared.clone(), shutdown.clone(), sessions_done.clone(), tls.clone());
        tokio::spawn(async move {
            // The handshake runs here, never in the accept loop: a client
            // that is slow to shake hands (or never does) holds up no one.
            let stream = match &tls {
                None => Some(Stream::Plain(stream)),
                Some(tls) => tokio::select! {
                    handshake = tls.accept(stream) => handshake
                        .inspect_err(|reason| tracing::debug!(%peer, %reason, "client TLS handshake failed"))
                        .ok(),
                    _ = shutdown.triggered() => None,
                },
            };
            if let Some(stream) = stream {
                session::run(stream, id, shared.clone(), shutdown).await;
            }
            shared.stats.remove_client();
            done.notify_waiters();
        });
    }
    drop(listener);
    // Sessions give up on owed replies after the drain timeout themselves;
    // the grace covers their closing.
    let drain = Duration::from_millis(shared.config.limits.drain_timeout_ms) + Duration::from_millis(500);
    let drained = tokio::time::timeout(drain, async {
        loop {
            let notified = sessions_done.notified();
            if shared.stats.clients() == 0 {
                return;
            }
            notified.await;
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            clients = shared.stats.clients(),
            "clients still open after the drain timeout"
        );
    }
}

/// Redis's answer when `maxclients` is reached (over TLS on a TLS
/// listener, as Redis does), then the door closes.
async fn reject(stream: TcpStream, tls: Option<ListenerTls>) {
    let mut stream = match tls {
        None => Stream::Plain(stream),
        Some(tls) => match tls.accept(stream).await {
            Ok(stream) => stream,
            Err(_) => return,
        },
    };
    let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
    let _ = stream.shutdown().await;
}

/// Asks Redis how many databases it has, so SELECT can be answered locally
/// with Redis's own bounds. Keeps the default (16) if Redis will not say.
async fn learn_databases(shared: Arc<Shared>) {
    let pool = shared.pools.get(shared.pools.target().db, Protocol::Resp2);
    let Ok(connection) = pool.connection(0).await else {
        return;
    };
    let command = Command::from_args(vec!["CONFIG".into(), "GET".into(), "databases".into()]);
    let Ok(Ok(reply)) = connection.send(command.wire().clone(), 1).await.await else {
        return;
    };
    // *2 $9 databases $<n> <count>: the count is the last line.
    let text = String::from_utf8_lossy(&reply);
    if let Some(count) = text
        .lines()
        .rev()
        .find(|line| !line.is_empty())
        .and_then(|line| line.parse::<u32>().ok())
    {
        shared.databases.store(count, Ordering::Relaxed);
        if let Some(l1) = &shared.l1 {
            l1.store.set_databases(count);
        }
    }
}

/// With key versioning, a versioned namespace's tracking prefix (`user:`)
/// becomes the prefixes of its stored keys in each version it serves.
fn stored_prefixes(prefixes: Vec<Bytes>, versions: Option<&Versioning>) -> Vec<Bytes> {
    match versions {
        Some(versions) => versions.stored_tracking_prefixes(&prefixes),
        None => prefixes,
    }
}

/// Learns Redis's command table (retrying until Redis answers): which keys
/// each command writes, for L1 invalidation (L1 answers nothing until
/// then), and where each command's keys are, for key versioning (which
/// uses the built-in Redis 7.0 table until then).
async fn learn_commands(shared: Arc<Shared>, mut shutdown: Shutdown) {
    let pool = shared.pools.get(shared.pools.target().db, Protocol::Resp2);
    let command = Command::from_args(vec!["COMMAND".into()]);
    loop {
        if let Ok(connection) = pool.connection(0).await
            && let Ok(Ok(reply)) = connection.send(command.wire().clone(), 1).await.await
        {
            if let Some(versions) = &shared.versions {
                match KeyTable::from_command_reply(&reply) {
                    Ok(table) => versions.set_table(table),
                    Err(error) => {
                        tracing::warn!(%error, "cannot read Redis's key specifications; key versioning keeps the built-in table")
                    }
                }
            }
            let Some(l1) = &shared.l1 else {
                return;
            };
            match WriteTable::from_command_reply(&reply) {
                Ok(table) => {
                    l1.set_writes(table);
                    return;
                }
                Err(error) => tracing::warn!(%error, "cannot read Redis's command table; L1 stays off"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.triggered() => return,
        }
    }
}

/// Removes expired L1 entries nobody asks for, once a second.
async fn sweep(l1: Arc<L1>, mut shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => { l1.store.sweep(); }
            _ = shutdown.triggered() => return,
        }
    }
}
