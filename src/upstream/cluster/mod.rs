//! Redis Cluster as the upstream (`redis-cluster://h1:p1,h2:p2,...`).
//!
//! [`Cluster`] knows the slot map (asked of a node with `CLUSTER SHARDS`,
//! or `CLUSTER SLOTS` on servers before 7, every `pool.cluster_refresh_ms`
//! and at once after a MOVED or a lost node) and keeps an ordinary
//! single-node [`Pools`] per master. The session never learns of it: it
//! sends batches on an [`UpstreamConnection`] as it does to one Redis.
//!
//! - A pooled connection ([`ClusterLink`]) lays each batch out over the
//!   masters ([`route::Plan`]), sends each master its commands on the
//!   client's connection of that master's pool, follows MOVED (noting the
//!   new owner) and ASK (with ASKING) redirects and retries TRYAGAIN and
//!   CLUSTERDOWN, then hands the replies back in request order as one
//!   batch, through the session's hook, as a single connection would.
//! - A client's own connection ([`Pinned`]: MULTI, blocking commands,
//!   subscribers, its own AUTH) is one dedicated connection per master it
//!   needs. A transaction (from MULTI, or WATCH, to EXEC or DISCARD) and a
//!   subscriber stay on one master: MULTI is answered here and sent with
//!   the first command after it, so the transaction is on the master of
//!   that command's key; a command of another master in it is refused with
//!   CROSSSLOT (Redis then aborts the EXEC).
//!
//! Ordering: a client's commands for one slot always travel on one
//! connection, in order. When the map changes, a lane first waits for what
//! it sent under the old map (and its redirects) to be answered, so a
//! command never overtakes an earlier one for the same key that is being
//! redirected to the new owner.

mod route;
mod slots;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use route::CROSSSLOT;
pub use slots::{Node, SLOTS, SlotMap, key_slot};

use super::connection::Answer;
use super::{BatchResult, ConnectOptions, Hook, Pools, Upstream, UpstreamConnection, UpstreamError, connect};
use crate::config::PoolConfig;
use crate::keys::table::KeyTable;
use crate::output::OutputBuffer;
use crate::protocol::{Command, Protocol, ReplyLimits, scan};
use crate::shutdown::Shutdown;
use crate::stats::{ConnectionKind, Stats};
use route::{Plan, Planned, Redirect};

/// The name the slot-map connection carries in Redis's CLIENT LIST.
pub const CLUSTER_CONNECTION_NAME: &str = "auracache:cluster";
/// MOVED and ASK redirects followed for one command before its last
/// reply is handed on as it is.
const MAX_REDIRECTS: usize = 5;
/// TRYAGAIN and CLUSTERDOWN retries of one command, `RETRY_PAUSE` apart
/// (so about 2 s: a failover's election).
const MAX_RETRIES: usize = 80;
const RETRY_PAUSE: Duration = Duration::from_millis(25);
/// Refreshes asked for by redirects are at least this far apart.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(100);

/// A Redis Cluster: its slot map and a pool per master.
pub struct Cluster {
    template: Arc<Upstream>,
    config: PoolConfig,
    limits: ReplyLimits,
    stats: Arc<Stats>,
    shutdown: Shutdown,
    map: RwLock<Arc<SlotMap>>,
    /// Bumped on every change of the map; 0 until the first one.
    epoch: watch::Sender<u64>,
    nodes: Mutex<HashMap<Node, Arc<Pools>>>,
    refresh: Notify,
    /// Why the last refresh failed, for the error clients get before the
    /// first map.
    last_error: Mutex<String>,
    control: tokio::sync::Mutex<Option<(Node, UpstreamConnection)>>,
    keys: KeyTable,
    refreshes: AtomicU64,
    redirects: AtomicU64,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("masters", &self.map().masters().len())
            .field("epoch", &self.epoch())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Starts discovering the slot map of the cluster `template` names.
    pub fn start(
        template: Arc<Upstream>,
        config: PoolConfig,
        limits: ReplyLimits,
        stats: Arc<Stats>,
        shutdown: Shutdown,
    ) -> Arc<Cluster> {
        let cluster = Arc::new(Cluster {
            template,
            config,
            limits,
            stats,
            shutdown: shutdown.clone(),
            map: RwLock::new(Arc::new(SlotMap::empty())),
            epoch: watch::channel(0).0,
            nodes: Mutex::new(HashMap::new()),
            refresh: Notify::new(),
            last_error: Mutex::new("the slot map has not been read yet".into()),
            control: tokio::sync::Mutex::new(None),
            keys: KeyTable::builtin(),
            refreshes: AtomicU64::new(0),
            redirects: AtomicU64::new(0),
        });
        let refresher = cluster.clone();
        let mut shutdown = shutdown;
        tokio::spawn(async move {
            tokio::select! {
                _ = refresher.refresh_loop() => {}
                _ = shutdown.triggered() => {}
            }
        });
        cluster
    }

    /// The slot map now.
    pub fn map(&self) -> Arc<SlotMap> {
        self.map.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// How many times the map changed.
    pub fn epoch(&self) -> u64 {
        *self.epoch.borrow()
    }

    /// Changes of the map, as its epoch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.epoch.subscribe()
    }

    /// Slot-map reads and redirects followed so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.refreshes.load(Ordering::Relaxed),
            self.redirects.load(Ordering::Relaxed),
        )
    }

    /// The map, waiting (up to the connect timeout) for the first one.
    pub async fn ready_map(&self) -> Result<Arc<SlotMap>, UpstreamError> {
        if self.epoch() > 0 {
            return Ok(self.map());
        }
        let mut epoch = self.subscribe();
        let wait = Duration::from_millis(self.config.connect_timeout_ms);
        match tokio::time::timeout(wait, epoch.wait_for(|epoch| *epoch > 0)).await {
            Ok(Ok(_)) => Ok(self.map()),
            _ => Err(UpstreamError::Unavailable(format!(
                "no cluster slot map: {}",
                self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
            ))),
        }
    }

    /// How to reach one node: the cluster's credentials and TLS.
    pub fn node_upstream(&self, node: &Node) -> Upstream {
        Upstream {
            url: self.template.url.node(&node.host, node.port),
            tls: self.template.tls.clone(),
        }
    }

    /// Every master's address now, as single-node upstreams.
    pub fn master_upstreams(&self) -> Vec<Upstream> {
        self.map()
            .masters()
            .iter()
            .map(|node| self.node_upstream(node))
            .collect()
    }

    fn node_pools(&self, node: &Node) -> Arc<Pools> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        nodes
            .entry(node.clone())
            .or_insert_with(|| {
                Arc::new(Pools::new(
                    Arc::new(self.node_upstream(node)),
                    self.config.clone(),
                    self.limits,
                    self.stats.clone(),
                    self.shutdown.clone(),
                ))
            })
            .clone()
    }

    /// A pooled connection to `node` for this client.
    async fn pooled(
        &self,
        node: &Node,
        db: u32,
        protocol: Protocol,
        client_id: u64,
    ) -> Result<UpstreamConnection, UpstreamError> {
        self.node_pools(node).get(db, protocol).connection(client_id).await
    }

    /// Whether this client's pooled connection to any master is down.
    pub fn is_down(&self, db: u32, protocol: Protocol, client_id: u64) -> bool {
        self.map()
            .masters()
            .iter()
            .any(|node| self.node_pools(node).get(db, protocol).is_down(client_id))
    }

    /// PINGs every master (on pooled connections): Ok if every one answers
    /// PONG within `timeout` and every slot is served.
    pub async fn ping_all(&self, timeout: Duration) -> Result<(), String> {
        let map = self.ready_map().await.map_err(|error| error.client_message())?;
        if !map.is_complete() {
            return Err("cluster: some slots are served by no master".into());
        }
        for node in map.masters() {
            let ping = async {
                let connection = self.pooled(node, 0, Protocol::Resp2, 0).await?;
                connection
                    .send_to_node(Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"), 1, None)
                    .await
                    .await
                    .unwrap_or_else(|_| Err(UpstreamError::lost()))
            };
            match tokio::time::timeout(timeout, ping).await {
                Ok(Ok(reply)) if reply.as_ref() == b"+PONG\r\n" => {}
                Ok(Ok(reply)) => {
                    return Err(format!(
                        "{node} answered PING with {}",
                        String::from_utf8_lossy(&reply).trim()
                    ));
                }
                Ok(Err(error)) => return Err(format!("{node}: {}", error.client_message())),
                Err(_) => return Err(format!("{node}: no answer to PING within {timeout:?}")),
            }
        }
        Ok(())
    }

    /// Asks for the map again soon (after a redirect or a lost node).
    pub fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    /// A MOVED redirect: `slot` is `node`'s now; the whole map is read
    /// again too.
    fn moved(&self, slot: u16, node: &Node) {
        self.redirects.fetch_add(1, Ordering::Relaxed);
        let current = self.map();
        if current.owner(slot) != Some(node) {
            self.install(current.with_moved(slot, node));
        }
        self.refresh_soon();
    }

    fn install(&self, map: SlotMap) {
        let mut current = self.map.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if **current == map && self.epoch() > 0 {
            return;
        }
        tracing::info!(
            masters = map.masters().len(),
            complete = map.is_complete(),
            "cluster slot map changed"
        );
        *current = Arc::new(map);
        drop(current);
        self.epoch.send_modify(|epoch| *epoch += 1);
    }

    async fn refresh_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.fetch().await {
                Ok(map) => {
                    self.refreshes.fetch_add(1, Ordering::Relaxed);
                    self.install(map);
                    backoff = Duration::from_millis(50);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the cluster slot map");
                    *self.last_error.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = error;
                }
            }
            let wait = if self.epoch() == 0 {
                backoff = (backoff * 2).min(Duration::from_millis(self.config.max_backoff_ms.max(50)));
                backoff
            } else {
                Duration::from_millis(self.config.cluster_refresh_ms)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.refresh.notified() => {}
            }
            tokio::time::sleep(MIN_REFRESH_GAP).await;
        }
    }

    /// The map as the first node that answers sees it: the masters known,
    /// then the seeds.
    async fn fetch(&self) -> Result<SlotMap, String> {
        let mut candidates: Vec<Node> = self.map().masters().to_vec();
        for (host, port) in &self.template.url.seeds {
            let seed = Node {
                host: host.clone(),
                port: *port,
            };
            if !candidates.contains(&seed) {
                candidates.push(seed);
            }
        }
        let mut errors = Vec::new();
        let mut control = self.control.lock().await;
        // The node asked last time first, on the connection kept open.
        if let Some((node, _)) = control.as_ref()
            && let Some(at) = candidates.iter().position(|candidate| candidate == node)
        {
            candidates.swap(0, at);
        }
        for node in candidates {
            match self.fetch_from(&node, &mut control).await {
                Ok(map) if !map.masters().is_empty() => return Ok(map),
                Ok(_) => errors.push(format!("{node}: no slot is served")),
                Err(error) => {
                    *control = None;
                    errors.push(format!("{node}: {error}"));
                }
            }
        }
        Err(errors.join("; "))
    }

    async fn fetch_from(
        &self,
        node: &Node,
        control: &mut Option<(Node, UpstreamConnection)>,
    ) -> Result<SlotMap, String> {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let connection = match control.as_ref() {
            Some((known, connection)) if known == node && !connection.is_closed() => connection.clone(),
            _ => {
                let options = ConnectOptions {
                    db: 0,
                    protocol: Protocol::Resp2,
                    name: Some(CLUSTER_CONNECTION_NAME),
                    kind: ConnectionKind::Dedicated,
                    timeout,
                    reply_timeout: None,
                };
                let connection = connect(&self.node_upstream(node), options, self.limits, self.stats.clone())
                    .await
                    .map_err(|error| error.to_string())?;
                *control = Some((node.clone(), connection.clone()));
                connection
            }
        };
        let ask = |args: &[&str]| {
            Command::from_args(args.iter().map(|arg| Bytes::copy_from_slice(arg.as_bytes())).collect())
                .wire()
                .clone()
        };
        let call = |request: Bytes| {
            let connection = connection.clone();
            async move {
                match tokio::time::timeout(timeout, connection.send_to_node(request, 1, None).await).await {
                    Ok(Ok(Ok(reply))) => Ok(reply),
                    Ok(Ok(Err(error))) => Err(error.to_string()),
                    Ok(Err(_)) => Err("connection lost".to_string()),
                    Err(_) => Err(format!("no reply within {} ms", timeout.as_millis())),
                }
            }
        };
        let shards = call(ask(&["CLUSTER", "SHARDS"])).await?;
        if shards.first() != Some(&b'-') {
            return SlotMap::from_shards(&shards, self.template.url.tls);
        }
        // Before Redis 7.
        let slots = call(ask(&["CLUSTER", "SLOTS"])).await?;
        if slots.first() == Some(&b'-') {
            return Err(String::from_utf8_lossy(&slots).trim().to_string());
        }
        SlotMap::from_slots(&slots)
    }

    /// The slot of the first key of the first command in `batch` that has
    /// one.
    fn first_slot(&self, commands: &[Vec<Bytes>]) -> Option<u16> {
        commands.iter().find_map(|args| {
            let first = *route::key_positions(args, &self.keys).first()?;
            Some(key_slot(&args[first]))
        })
    }
}

/// Sub-batches sent, awaiting their replies.
enum Sent {
    Waiting(oneshot::Receiver<BatchResult>),
    /// Answered already (or never sent: its connection could not be had).
    Ready(BatchResult),
}

fn error_reply(error: &UpstreamError) -> Bytes {
    Bytes::from(format!("-{}\r\n", error.client_message()))
}

/// Where a router's connections to each node come from.
#[derive(Clone, Debug)]
enum Source {
    /// The client's connection of each master's pool.
    Pool {
        db: u32,
        protocol: Protocol,
        client_id: u64,
    },
    /// The client's own connections.
    Own(Arc<Pinned>),
}

impl Source {
    async fn connection(&self, cluster: &Cluster, node: &Node) -> Result<UpstreamConnection, UpstreamError> {
        match self {
            Source::Pool {
                db,
                protocol,
                client_id,
            } => cluster.pooled(node, *db, *protocol, *client_id).await,
            Source::Own(pinned) => pinned.own(node).await,
        }
    }
}

/// Sends a plan's sub-batches; each master's goes on this client's
/// connection to it.
async fn send_plan(cluster: &Cluster, source: &Source, plan: &mut Plan) -> Vec<Sent> {
    let mut sent = Vec::with_capacity(plan.groups.len());
    for group in &mut plan.groups {
        let count = group.parts.len();
        let bytes = group.bytes();
        sent.push(match source.connection(cluster, &group.node).await {
            Ok(connection) => Sent::Waiting(connection.send_to_node(bytes, count, None).await),
            Err(error) => {
                cluster.refresh_soon();
                Sent::Ready(Err(error))
            }
        });
    }
    sent
}

/// The replies of a plan, redirects followed, in request order. Every
/// batch the lane sent before this one (`turn`) is answered before any of
/// this one's redirects are followed. `follow`: redirects are followed
/// (not inside a transaction, where a MOVED becomes CROSSSLOT).
async fn assemble(
    cluster: &Cluster,
    source: &Source,
    plan: Plan,
    sent: Vec<Sent>,
    turn: &Turn,
    follow: bool,
) -> BatchResult {
    let mut results = Vec::with_capacity(sent.len());
    for sent in sent {
        results.push(match sent {
            Sent::Waiting(receiver) => receiver.await.unwrap_or_else(|_| Err(UpstreamError::lost())),
            Sent::Ready(result) => result,
        });
    }
    let mut replies = split_all(cluster, &plan, results)?;
    let mut waited = false;
    for (group_index, group) in plan.groups.iter().enumerate() {
        for (at, part) in group.parts.iter().enumerate() {
            let reply = &replies[group_index][at];
            let Some(redirect) = route::redirect(reply) else {
                continue;
            };
            if !follow || part.wire.is_empty() {
                if matches!(redirect, Redirect::Moved(..)) && !follow {
                    replies[group_index][at] = Bytes::from_static(CROSSSLOT);
                }
                continue;
            }
            if !waited {
                turn.wait().await;
                waited = true;
            }
            let reply = reply.clone();
            replies[group_index][at] = follow_redirects(cluster, source, part, reply).await;
        }
    }
    Ok(build(cluster, plan, &replies))
}

/// Each master's replies, one by one (a lost master's as its error).
fn split_all(cluster: &Cluster, plan: &Plan, results: Vec<BatchResult>) -> Result<Vec<Vec<Bytes>>, UpstreamError> {
    plan.groups
        .iter()
        .zip(results)
        .map(|(group, result)| {
            let count = group.parts.len();
            match result {
                Ok(bytes) => route::split_replies(&bytes, count, cluster.limits)
                    .ok_or_else(|| UpstreamError::Unavailable("a node's replies could not be matched".into())),
                Err(error) => {
                    cluster.refresh_soon();
                    Ok(vec![error_reply(&error); count])
                }
            }
        })
        .collect()
}

/// The batch's replies in request order, split commands merged.
fn build(cluster: &Cluster, plan: Plan, replies: &[Vec<Bytes>]) -> Bytes {
    let mut out = BytesMut::new();
    for planned in plan.commands {
        match planned {
            Planned::Local(reply) => out.extend_from_slice(&reply),
            Planned::One(piece) => out.extend_from_slice(&replies[piece.group][piece.at]),
            Planned::Merged { merge, pieces } => {
                let parts = pieces
                    .iter()
                    .map(|piece| replies[piece.group][piece.at].clone())
                    .collect();
                out.extend_from_slice(&route::merge(&merge, parts, cluster.limits));
            }
        }
    }
    out.freeze()
}

/// A pooled batch spread over several masters: each master's replies are
/// kept as its connection's reader hands them over, and the last to
/// arrive assembles the batch and answers it there, unless a redirect is
/// among them (then a task follows it).
struct Gathering {
    link: ClusterLink,
    remaining: AtomicUsize,
    results: Mutex<Vec<Option<BatchResult>>>,
    finish: Mutex<Option<(Plan, Answer, Turn)>>,
}

impl Gathering {
    fn arrive(&self, group: usize, result: BatchResult) {
        self.results.lock().unwrap_or_else(|poisoned| poisoned.into_inner())[group] = Some(result);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let results: Vec<BatchResult> = std::mem::take(&mut *self.results.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(UpstreamError::lost())))
            .collect();
        let Some((plan, answer, turn)) = self.finish.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        let redirected = results
            .iter()
            .any(|result| result.as_ref().is_ok_and(|replies| may_redirect(replies)));
        if !redirected {
            let result =
                split_all(&self.link.cluster, &plan, results).map(|replies| build(&self.link.cluster, plan, &replies));
            drop(turn);
            answer.answer(result);
            return;
        }
        let link = self.link.clone();
        tokio::spawn(async move {
            let sent = results.into_iter().map(Sent::Ready).collect();
            let result = assemble(&link.cluster, &link.source, plan, sent, &turn, true).await;
            drop(turn);
            answer.answer(result);
        });
    }
}

/// Sends `part` again wherever its replies point, until one is not a
/// redirect (or the limits are reached: the last reply is handed on).
async fn follow_redirects(cluster: &Cluster, source: &Source, part: &route::Part, mut reply: Bytes) -> Bytes {
    let (mut redirects, mut retries) = (0, 0);
    loop {
        let (node, asking) = match route::redirect(&reply) {
            Some(Redirect::Moved(slot, node)) if redirects < MAX_REDIRECTS => {
                redirects += 1;
                cluster.moved(slot, &node);
                (node, false)
            }
            Some(Redirect::Ask(node)) if redirects < MAX_REDIRECTS => {
                redirects += 1;
                cluster.redirects.fetch_add(1, Ordering::Relaxed);
                (node, true)
            }
            Some(Redirect::Retry) if retries < MAX_RETRIES => {
                retries += 1;
                cluster.refresh_soon();
                tokio::time::sleep(RETRY_PAUSE).await;
                let map = cluster.map();
                let owner = part.slot.and_then(|slot| map.owner(slot)).or(map.masters().first());
                match owner {
                    Some(owner) => (owner.clone(), false),
                    None => return reply,
                }
            }
            _ => return reply,
        };
        let connection = match source.connection(cluster, &node).await {
            Ok(connection) => connection,
            Err(error) => return error_reply(&error),
        };
        let (request, count) = if asking {
            let mut request = BytesMut::from(&b"*1\r\n$6\r\nASKING\r\n"[..]);
            request.extend_from_slice(&part.wire);
            (request.freeze(), 2)
        } else {
            (part.wire.clone(), 1)
        };
        reply = match connection.send_to_node(request, count, None).await.await {
            Ok(Ok(bytes)) => match route::split_replies(&bytes, count, cluster.limits) {
                Some(mut replies) => replies.pop().unwrap_or_default(),
                None => error_reply(&UpstreamError::Unavailable(
                    "a node's reply could not be matched".into(),
                )),
            },
            Ok(Err(error)) => error_reply(&error),
            Err(_) => error_reply(&UpstreamError::lost()),
        };
    }
}

/// The batches of one lane (the clients sharing a pool slot, or one
/// client's own connections) in flight, in the order they were sent, and
/// the map epoch the last one was sent under.
#[derive(Debug, Default)]
pub struct Lane {
    state: Mutex<LaneState>,
    turn: Notify,
}

#[derive(Debug, Default)]
struct LaneState {
    epoch: u64,
    next: u64,
    in_flight: std::collections::BTreeSet<u64>,
}

impl Lane {
    fn state(&self) -> std::sync::MutexGuard<'_, LaneState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A batch's place in its lane, given up (the batch answered) when dropped.
struct Turn {
    lane: Arc<Lane>,
    seq: u64,
}

impl Turn {
    /// Registers a batch about to be sent under map `epoch`. If the map
    /// changed since the lane last sent, every batch sent before is
    /// answered first: one of them may be redirected to where this one goes.
    async fn take(lane: Arc<Lane>, epoch: u64) -> Turn {
        let seq = loop {
            let turn = lane.turn.notified();
            {
                let mut state = lane.state();
                if state.epoch == epoch || state.in_flight.is_empty() {
                    state.epoch = epoch;
                    let seq = state.next;
                    state.next += 1;
                    state.in_flight.insert(seq);
                    break seq;
                }
            }
            turn.await;
        };
        Turn { lane, seq }
    }

    /// Waits until every batch the lane sent before this one is answered.
    async fn wait(&self) {
        loop {
            let turn = self.lane.turn.notified();
            if self.lane.state().in_flight.first() == Some(&self.seq) {
                return;
            }
            turn.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut state = self.lane.state();
        let first = state.in_flight.first() == Some(&self.seq);
        state.in_flight.remove(&self.seq);
        let empty = state.in_flight.is_empty();
        drop(state);
        if first || empty {
            self.lane.turn.notify_waiters();
        }
    }
}

/// Whether `replies` may hold a redirect: an error reply at its start or
/// after a line end (a value holding `\n-` only costs the slow path).
fn may_redirect(replies: &[u8]) -> bool {
    replies.first() == Some(&b'-') || memchr::memmem::find(replies, b"\n-").is_some()
}

/// A client's pooled connection to a cluster.
#[derive(Clone, Debug)]
pub struct ClusterLink {
    cluster: Arc<Cluster>,
    source: Source,
    lane: Arc<Lane>,
}

impl ClusterLink {
    pub(super) async fn send_with(
        &self,
        bytes: Bytes,
        replies: usize,
        hook: Option<Hook>,
        output: Option<Arc<OutputBuffer>>,
    ) -> oneshot::Receiver<BatchResult> {
        let (answer, receiver) = Answer::new(hook, output, replies);
        if let Err(error) = self.cluster.ready_map().await {
            answer.answer(Err(error));
            return receiver;
        }
        let turn = Turn::take(self.lane.clone(), self.cluster.epoch()).await;
        // Read after the epoch (a map is installed before its epoch), so
        // the map is at least as new as the epoch the lane noted.
        let map = self.cluster.map();
        let plan = plan_for(&bytes, replies, &map, &self.cluster.keys);
        if plan.is_direct() {
            self.send_direct(plan, answer, turn).await;
            return receiver;
        }
        self.send_spread(plan, answer, turn).await;
        receiver
    }

    /// A batch for several masters, or with split or fanned-out commands:
    /// see [`Gathering`].
    async fn send_spread(&self, mut plan: Plan, answer: Answer, turn: Turn) {
        if plan.groups.is_empty() {
            // Only local replies (CROSSSLOT).
            drop(turn);
            answer.answer(Ok(build(&self.cluster, plan, &[])));
            return;
        }
        let sends: Vec<(Node, Bytes, usize)> = plan
            .groups
            .iter_mut()
            .map(|group| (group.node.clone(), group.bytes(), group.parts.len()))
            .collect();
        let gathering = Arc::new(Gathering {
            link: self.clone(),
            remaining: AtomicUsize::new(sends.len()),
            results: Mutex::new((0..sends.len()).map(|_| None).collect()),
            finish: Mutex::new(Some((plan, answer, turn))),
        });
        for (group, (node, bytes, count)) in sends.into_iter().enumerate() {
            match self.source.connection(&self.cluster, &node).await {
                Ok(connection) => {
                    let gathering = gathering.clone();
                    let on_replies: Hook = Box::new(move |result: BatchResult| {
                        gathering.arrive(group, result);
                        Ok(Bytes::new())
                    });
                    drop(connection.send_to_node(bytes, count, Some(on_replies)).await);
                }
                Err(error) => {
                    self.cluster.refresh_soon();
                    gathering.arrive(group, Err(error));
                }
            }
        }
    }

    /// A batch for one master, each reply as it is (the common case): its
    /// replies are handed on from that connection's reader, as with one
    /// Redis; only a batch with a redirect among its replies takes a task.
    async fn send_direct(&self, mut plan: Plan, answer: Answer, turn: Turn) {
        let group = &mut plan.groups[0];
        let (bytes, count) = (group.bytes(), group.parts.len());
        let node = group.node.clone();
        let connection = match self.source.connection(&self.cluster, &node).await {
            Ok(connection) => connection,
            Err(error) => {
                self.cluster.refresh_soon();
                drop(turn);
                answer.answer(Err(error));
                return;
            }
        };
        let link = self.clone();
        let on_replies: Hook = Box::new(move |result: BatchResult| {
            match result {
                Ok(replies) if may_redirect(&replies) => {
                    tokio::spawn(async move {
                        let sent = vec![Sent::Ready(Ok(replies))];
                        let result = assemble(&link.cluster, &link.source, plan, sent, &turn, true).await;
                        drop(turn);
                        answer.answer(result);
                    });
                }
                result => {
                    if result.is_err() {
                        link.cluster.refresh_soon();
                    }
                    drop(turn);
                    answer.answer(result);
                }
            }
            // The batch's own receiver is not listened to: `answer` is.
            Ok(Bytes::new())
        });
        drop(connection.send_to_node(bytes, count, Some(on_replies)).await);
    }
}

fn plan_for(bytes: &Bytes, replies: usize, map: &SlotMap, keys: &KeyTable) -> Plan {
    Plan::new(bytes, replies, map, keys).unwrap_or_else(|| {
        let node = map.masters().first().cloned().unwrap_or(Node {
            host: String::new(),
            port: 0,
        });
        Plan::whole(bytes.clone(), replies, node)
    })
}

/// The pooled side of a cluster: per (database, protocol), `pool.size`
/// lanes, a client on the lane of its id.
pub struct ClusterPool {
    cluster: Arc<Cluster>,
    db: u32,
    protocol: Protocol,
    lanes: Vec<Arc<Lane>>,
}

impl ClusterPool {
    pub fn new(cluster: Arc<Cluster>, db: u32, protocol: Protocol, size: usize) -> ClusterPool {
        ClusterPool {
            cluster,
            db,
            protocol,
            lanes: (0..size.max(1)).map(|_| Arc::new(Lane::default())).collect(),
        }
    }

    pub fn connection(&self, client_id: u64) -> UpstreamConnection {
        UpstreamConnection::cluster(ClusterLink {
            cluster: self.cluster.clone(),
            source: Source::Pool {
                db: self.db,
                protocol: self.protocol,
                client_id,
            },
            lane: self.lanes[(client_id % self.lanes.len() as u64) as usize].clone(),
        })
    }

    pub fn is_down(&self, client_id: u64) -> bool {
        self.cluster.is_down(self.db, self.protocol, client_id)
    }
}

/// A client's own connections to a cluster: one per master it needed, all
/// set up alike (and given the AUTH, HELLO and CLIENT SETNAME it sent).
pub struct Pinned {
    cluster: Arc<Cluster>,
    options: ConnectOptions,
    me: std::sync::Weak<Pinned>,
    connections: Mutex<HashMap<Node, UpstreamConnection>>,
    /// Run on every new connection first: the client's AUTH, HELLO and
    /// CLIENT SETNAME, as it sent them.
    replay: Mutex<Vec<Bytes>>,
    state: tokio::sync::Mutex<PinState>,
    /// Batches sent and not yet answered.
    owed: Arc<Owed>,
    lane: Arc<Lane>,
}

#[derive(Debug, Default)]
struct PinState {
    /// MULTI, answered here and not sent yet.
    held_multi: Option<Bytes>,
    in_multi: bool,
    watching: bool,
    /// The master a transaction, a WATCH or a subscriber is on.
    stuck: Option<Node>,
    /// The node of the last batch sent.
    last: Option<Node>,
    sink: Option<mpsc::Sender<Bytes>>,
    piping: Option<Node>,
}

#[derive(Debug, Default)]
struct Owed {
    count: AtomicUsize,
    answered: Notify,
}

impl Owed {
    async fn drained(&self) {
        loop {
            let answered = self.answered.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            answered.await;
        }
    }
}

impl std::fmt::Debug for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinned").finish_non_exhaustive()
    }
}

impl Pinned {
    pub fn open(cluster: Arc<Cluster>, options: ConnectOptions) -> UpstreamConnection {
        UpstreamConnection::pinned(Arc::new_cyclic(|me| Pinned {
            cluster,
            options,
            me: me.clone(),
            connections: Mutex::new(HashMap::new()),
            replay: Mutex::new(Vec::new()),
            state: tokio::sync::Mutex::new(PinState::default()),
            owed: Arc::new(Owed::default()),
            lane: Arc::new(Lane::default()),
        }))
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<Node, UpstreamConnection>> {
        self.connections.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// This client's connection to `node`, opened (and set up as the
    /// others were) on first use.
    async fn own(&self, node: &Node) -> Result<UpstreamConnection, UpstreamError> {
        if let Some(connection) = self.connections().get(node)
            && !connection.is_closed()
        {
            return Ok(connection.clone());
        }
        let connection = connect(
            &self.cluster.node_upstream(node),
            self.options,
            self.cluster.limits,
            self.cluster.stats.clone(),
        )
        .await?;
        let replay = self
            .replay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for request in replay {
            let _ = connection.send_to_node(request, 1, None).await.await;
        }
        self.connections().insert(node.clone(), connection.clone());
        Ok(connection)
    }

    pub(super) fn is_closed(&self) -> bool {
        self.connections().values().any(UpstreamConnection::is_closed)
    }

    pub(super) async fn closed(&self) {
        let connections: Vec<UpstreamConnection> = self.connections().values().cloned().collect();
        if connections.is_empty() {
            return std::future::pending().await;
        }
        let waits: Vec<_> = connections
            .iter()
            .map(|connection| Box::pin(connection.closed()))
            .collect();
        futures_util::future::select_all(waits).await;
    }

    pub(super) async fn send_with(
        &self,
        bytes: Bytes,
        replies: usize,
        hook: Option<Hook>,
        output: Option<Arc<OutputBuffer>>,
    ) -> oneshot::Receiver<BatchResult> {
        let sticky = {
            let state = self.state.lock().await;
            state.in_multi || state.watching
        };
        let Some(segments) = transaction_segments(&bytes, replies, sticky) else {
            return self.send_segment(bytes, replies, hook, output).await;
        };
        // A pipeline with a transaction and other commands: the commands
        // before and after it are routed as usual, only the transaction
        // (from WATCH or MULTI to EXEC or DISCARD) is on its one master.
        let mut receivers = Vec::with_capacity(segments.len());
        for (range, count) in segments {
            receivers.push((count, self.send_segment(bytes.slice(range), count, None, None).await));
        }
        let (answer, receiver) = Answer::new(hook, output, replies);
        tokio::spawn(async move {
            let mut out = BytesMut::new();
            for (count, receiver) in receivers {
                match receiver.await.unwrap_or_else(|_| Err(UpstreamError::lost())) {
                    Ok(replies) => out.extend_from_slice(&replies),
                    Err(error) => {
                        // As a lost master's part of a spread batch.
                        for _ in 0..count {
                            out.extend_from_slice(&error_reply(&error));
                        }
                    }
                }
            }
            answer.answer(Ok(out.freeze()));
        });
        receiver
    }

    /// Sends commands that are all in a transaction or all outside one.
    async fn send_segment(
        &self,
        bytes: Bytes,
        replies: usize,
        hook: Option<Hook>,
        output: Option<Arc<OutputBuffer>>,
    ) -> oneshot::Receiver<BatchResult> {
        let commands = split_commands(&bytes, replies);
        let names: Vec<Vec<u8>> = commands
            .iter()
            .map(|args| args.first().map(|name| name.to_ascii_uppercase()).unwrap_or_default())
            .collect();
        let mut state = self.state.lock().await;
        if state.stuck.is_none() && !state.in_multi && names.len() == 1 && names[0] == b"MULTI" {
            // Sent with the first command after it, on that command's master.
            state.held_multi = Some(bytes);
            state.in_multi = true;
            let (answer, receiver) = Answer::new(hook, output, replies);
            answer.answer(Ok(Bytes::from_static(b"+OK\r\n")));
            return receiver;
        }
        let (answer, receiver) = Answer::new(hook, output, replies);
        let map = match self.cluster.ready_map().await {
            Ok(map) => map,
            Err(error) => {
                answer.answer(Err(error));
                return receiver;
            }
        };
        let sticky = state.in_multi || state.watching;
        let default = map.masters().first().cloned();
        let first = self
            .cluster
            .first_slot(&commands)
            .and_then(|slot| map.owner(slot).cloned())
            .or(default);
        let Some(first) = first else {
            answer.answer(Err(UpstreamError::Unavailable("the cluster serves no slot".into())));
            return receiver;
        };
        // A transaction goes whole to one master (Redis refuses, and so
        // aborts the EXEC of, a command of another master or slots).
        let transaction = sticky || names.iter().any(|name| name == b"MULTI");
        let mut plan = if transaction {
            let node = state.stuck.get_or_insert(first.clone()).clone();
            Plan::whole(bytes.clone(), replies, node)
        } else {
            plan_for(&bytes, replies, &map, &self.cluster.keys)
        };
        // Like one connection: a batch for another master (or several)
        // waits until everything before it is answered.
        let nodes: Vec<Node> = plan.groups.iter().map(|group| group.node.clone()).collect();
        let sets_up = commands.iter().any(|args| is_set_up(args));
        if nodes.len() > 1 || state.last.as_ref() != nodes.first() || sets_up {
            self.owed.drained().await;
        }
        state.last = nodes.first().cloned();
        if sets_up {
            // AUTH, HELLO and CLIENT SETNAME reach only the master they are
            // planned on; the client's connections to the others would keep
            // the old user (its ACL rights), protocol or name. They are
            // closed, and opened again (now or when next needed) with the
            // set-up replayed, as one Redis connection would be set up.
            let mut keep = Vec::new();
            for (index, args) in commands.iter().enumerate() {
                if names[index] == b"RESET" {
                    self.replay
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .clear();
                } else if is_set_up(args) {
                    self.remember(args);
                    if let Some(Planned::One(piece)) = plan.commands.get(index) {
                        keep.push(plan.groups[piece.group].node.clone());
                    }
                }
            }
            self.connections().retain(|node, _| keep.contains(node));
        }
        for node in &nodes {
            if let Err(error) = self.own(node).await {
                answer.answer(Err(error));
                return receiver;
            }
        }
        if let Some(multi) = state.held_multi.take() {
            let node = state.stuck.clone().unwrap_or(first);
            let refused = match self.own(&node).await {
                Ok(connection) => match connection.send_to_node(multi, 1, None).await.await {
                    Ok(Ok(reply)) if reply.first() != Some(&b'-') => None,
                    Ok(Ok(reply)) => Some(reply),
                    Ok(Err(error)) => Some(error_reply(&error)),
                    Err(_) => Some(error_reply(&UpstreamError::lost())),
                },
                Err(error) => Some(error_reply(&error)),
            };
            if let Some(reply) = refused {
                // Redis did not start the transaction: nothing after MULTI
                // may run outside it.
                state.in_multi = false;
                state.stuck = None;
                let mut out = BytesMut::new();
                for _ in 0..replies {
                    out.extend_from_slice(&reply);
                }
                answer.answer(Ok(out.freeze()));
                return receiver;
            }
        }
        for name in &names {
            match name.as_slice() {
                b"MULTI" => state.in_multi = true,
                b"EXEC" | b"DISCARD" => {
                    state.in_multi = false;
                    state.watching = false;
                }
                b"RESET" => {
                    // Only the connection it goes to is reset: the others
                    // (authenticated, named as before) are closed, and
                    // opened again as new when needed.
                    state.in_multi = false;
                    state.watching = false;
                    if !sets_up {
                        // (With a set-up in the batch, the replay was
                        // rebuilt in batch order above.)
                        self.replay
                            .lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .clear();
                    }
                    self.connections().retain(|node, _| nodes.contains(node));
                }
                b"WATCH" => state.watching = true,
                b"UNWATCH" => state.watching = false,
                _ => {}
            }
        }
        if !state.in_multi && !state.watching {
            state.stuck = None;
        } else if state.stuck.is_none() {
            state.stuck = nodes.first().cloned();
        }
        let source = Source::Own(self.me.upgrade().expect("a Pinned is alive while it sends"));
        let turn = Turn::take(self.lane.clone(), self.cluster.epoch()).await;
        let sent = send_plan(&self.cluster, &source, &mut plan).await;
        drop(state);
        self.owed.count.fetch_add(1, Ordering::AcqRel);
        let owed = self.owed.clone();
        let cluster = self.cluster.clone();
        tokio::spawn(async move {
            let result = assemble(&cluster, &source, plan, sent, &turn, !transaction).await;
            drop(turn);
            answer.answer(result);
            owed.count.fetch_sub(1, Ordering::AcqRel);
            owed.answered.notify_waiters();
        });
        receiver
    }

    /// Keeps a set-up command for connections opened later.
    fn remember(&self, args: &[Bytes]) {
        let mut replay = self.replay.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if replay.len() < 16 {
            replay.push(Command::from_args(args.to_vec()).wire().clone());
        }
    }

    pub(super) async fn pipe_to(&self, sink: mpsc::Sender<Bytes>) -> Result<(), UpstreamError> {
        let mut state = self.state.lock().await;
        match state.piping.clone() {
            Some(node) => self.own(&node).await?.pipe_to_node(sink).await,
            None => {
                state.sink = Some(sink);
                Ok(())
            }
        }
    }

    /// In pipe mode, everything goes to one master: that of the first
    /// command's key (SSUBSCRIBE's shard channel), else the first master.
    pub(super) async fn send_raw(&self, bytes: Bytes) -> Result<(), UpstreamError> {
        let mut state = self.state.lock().await;
        let node = match state.piping.clone() {
            Some(node) => node,
            None => {
                let map = self.cluster.ready_map().await?;
                let commands = split_commands(&bytes, usize::MAX);
                let node = self
                    .cluster
                    .first_slot(&commands)
                    .and_then(|slot| map.owner(slot).cloned())
                    .or_else(|| state.last.clone())
                    .or_else(|| map.masters().first().cloned())
                    .ok_or_else(|| UpstreamError::Unavailable("the cluster serves no slot".into()))?;
                self.owed.drained().await;
                let connection = self.own(&node).await?;
                if let Some(sink) = state.sink.take() {
                    connection.pipe_to_node(sink).await?;
                }
                state.piping = Some(node.clone());
                node
            }
        };
        self.own(&node).await?.send_raw_to_node(bytes).await
    }
}

/// A batch's parts (byte range, command count) that are each all inside a
/// transaction or all outside one, when it has more than one; `sticky`:
/// the batch starts inside one (after MULTI or WATCH). A transaction
/// starts at MULTI or WATCH and ends after EXEC, DISCARD, UNWATCH (outside
/// MULTI) or RESET, as the session's own state does.
fn transaction_segments(bytes: &Bytes, replies: usize, sticky: bool) -> Option<Vec<(std::ops::Range<usize>, usize)>> {
    let (mut in_multi, mut watching) = (sticky, false);
    let mut segments: Vec<(std::ops::Range<usize>, usize)> = Vec::new();
    let mut last: Option<bool> = None;
    let mut ended = false;
    let mut at = 0;
    for _ in 0..replies {
        let (args, end) = scan::multibulk_args_from(bytes, at)?;
        let name = args.first()?;
        let is = |upper: &[u8]| name.eq_ignore_ascii_case(upper);
        let inside = in_multi || watching || is(b"MULTI") || is(b"WATCH");
        match segments.last_mut() {
            Some((range, count)) if last == Some(inside) && !ended => {
                range.end = end;
                *count += 1;
            }
            _ => segments.push((at..end, 1)),
        }
        last = Some(inside);
        if is(b"MULTI") {
            in_multi = true;
        } else if is(b"WATCH") {
            watching = true;
        } else if is(b"EXEC") || is(b"DISCARD") || is(b"RESET") {
            (in_multi, watching) = (false, false);
        } else if is(b"UNWATCH") && !in_multi {
            watching = false;
        }
        ended = inside && !in_multi && !watching;
        at = end;
    }
    (at == bytes.len() && segments.len() > 1).then_some(segments)
}

/// Whether a command sets up its connection (AUTH, HELLO, CLIENT
/// SETNAME): what a client's every connection to the cluster must be given.
fn is_set_up(args: &[Bytes]) -> bool {
    let Some(name) = args.first() else {
        return false;
    };
    name.eq_ignore_ascii_case(b"AUTH")
        || name.eq_ignore_ascii_case(b"HELLO")
        || (name.eq_ignore_ascii_case(b"CLIENT") && args.get(1).is_some_and(|sub| sub.eq_ignore_ascii_case(b"SETNAME")))
}

/// The commands of a batch as arguments (as many as are complete, up to
/// `most`).
fn split_commands(bytes: &Bytes, most: usize) -> Vec<Vec<Bytes>> {
    let mut commands = Vec::new();
    let mut at = 0;
    while at < bytes.len() && commands.len() < most {
        let Some((args, end)) = scan::multibulk_args_from(bytes, at) else {
            break;
        };
        commands.push(args);
        at = end;
    }
    commands
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(commands: &[&str]) -> Bytes {
        let mut out = BytesMut::new();
        for line in commands {
            let args = line
                .split(' ')
                .map(|arg| Bytes::copy_from_slice(arg.as_bytes()))
                .collect();
            out.extend_from_slice(Command::from_args(args).wire());
        }
        out.freeze()
    }

    fn counts(commands: &[&str], sticky: bool) -> Option<Vec<usize>> {
        let bytes = batch(commands);
        transaction_segments(&bytes, commands.len(), sticky)
            .map(|segments| segments.into_iter().map(|(_, count)| count).collect())
    }

    #[test]
    fn a_transaction_in_a_pipeline_is_a_segment_of_its_own() {
        let pipeline = [
            "GET a", "WATCH k", "MULTI", "SET k 1", "EXEC", "GET b", "MULTI", "EXEC", "GET c",
        ];
        assert_eq!(counts(&pipeline, false), Some(vec![1, 4, 1, 2, 1]));
        // Already in a transaction: up to its EXEC.
        assert_eq!(counts(&["SET k 1", "EXEC", "GET b"], true), Some(vec![2, 1]));
        // Nothing to split.
        assert_eq!(counts(&["GET a", "GET b"], false), None);
        assert_eq!(counts(&["MULTI", "SET k 1", "EXEC"], false), None);
    }
}
