//! One client connection, from its first byte to its last reply.
//!
//! The session orchestrates the stages of DESIGN.md's request path and owns
//! the order of replies; the stages decide. Two tasks share the work:
//!
//! - the **request side** ([`Session`]) reads frames, decodes commands, runs
//!   them through the phases (authentication, admin intercept, L1 lookup,
//!   value encoding, routing, key rewrite as each is forwarded) and forwards them,
//!   batching consecutive commands for the same upstream connection into one
//!   write. It never waits for a reply before reading the next request.
//! - the **reply side** ([`write_replies`]) takes one [`Slot`] per local reply
//!   or forwarded batch, in request order, waits for each in turn and writes
//!   them out, coalescing what is ready into one write. Reply decoding and L1
//!   fills plug in where a batch's replies arrive.
//!
//! Invariants: replies leave in request order; every forwarded command gets
//! exactly one reply (Redis's, or `-ERR upstream unavailable: ...`); a client
//! moving from one upstream connection to another (SELECT, MULTI, ...) first
//! waits for its earlier commands to complete, so Redis executes its commands
//! in the order it sent them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::admin;
use crate::auth::Authenticator;
use crate::cache::{ByName, CacheKey, FillTicket, L1, Lookup, Shape, WriteGuard, WriteTable, Written};
use crate::codec::Compression;
use crate::codec::strings::{self, Plan, ReadModifyWrite, ReplyDecode};
use crate::command::{CommandClass, LocalCommand, classify, needs_arguments};
use crate::config::{Config, Role};
use crate::gather::Gather;
use crate::keys::versions::{self, KeyReply, MIGRATE_SCRIPT, Migration, Versioning};
use crate::levels::{Level, Levels};
use crate::output::OutputBuffer;
use crate::patterns::engine::Outcome;
use crate::patterns::live::{Awaited, Patterns, Reads};
use crate::protocol::{
    Command, Protocol, ProtocolError, Reply, ReplyLimits, ReplyScanner, RequestFrame, RequestLimits, RequestScanner,
};
use crate::shutdown::Shutdown;
use crate::stats::{ConnectionKind, Stats};
use crate::stream::{ReadHalf, Stream, WriteHalf};
use crate::upstream::{BatchResult, ConnectOptions, Hook, Pool, Pools, UpstreamConnection, UpstreamError};

/// Reply slots queued between the two sides; when full, the request side
/// stops reading, so a client that never reads its replies stops being read.
const SLOT_QUEUE: usize = 128;
/// Most reply bytes gathered before they are written.
const MAX_REPLY_WRITE: usize = 256 * 1024;
/// Local replies this large are queued as they are, not copied.
const LARGE_LOCAL_REPLY: usize = 2048;
/// Most bytes of local replies gathered into one slot.
const MAX_READY_BYTES: usize = 64 * 1024;
/// Most commands in one forwarded batch before it is sent.
const MAX_BATCH_COMMANDS: usize = 512;

/// What every session shares: configuration, upstream pools, counters.
pub struct Shared {
    pub config: Config,
    pub pools: Pools,
    pub stats: Arc<Stats>,
    pub auth: Authenticator,
    pub request_limits: RequestLimits,
    pub reply_limits: ReplyLimits,
    /// Redis's `databases` setting, for answering SELECT locally.
    pub databases: std::sync::atomic::AtomicU32,
    /// The L1 cache level, when enabled.
    pub l1: Option<Arc<L1>>,
    /// The compression stage, when enabled.
    pub compression: Option<Arc<Compression>>,
    /// Key versioning, when a namespace is versioned.
    pub versions: Option<Arc<Versioning>>,
    /// The pattern engine, when enabled: told of every read.
    pub patterns: Option<Arc<Patterns>>,
    /// The preloader, when enabled (with L1 and the pattern engine).
    pub preload: Option<Arc<crate::preload::Preload>>,
    /// The settings now: `config` with what `PROXY CONFIG SET` changed.
    pub settings: std::sync::Mutex<Config>,
    /// Traffic sampled every `admin.history_interval_secs` (with the HTTP
    /// admin on).
    pub history: crate::levels::History,
    pub started: Instant,
}

/// A read the pattern engine hears of once Redis answers it; its keys are
/// the command's (copied when it is forwarded).
#[derive(Debug, Clone, Copy)]
enum PatternRead {
    /// GET, HGET, HGETALL, HMGET (`Awaited::Whole` or `Fields`): the
    /// command's first key.
    One(Awaited),
    /// MGET: one read per item.
    Items,
}

/// What a batch's replies need from key versioning.
enum VersionWork {
    /// A hidden migration's reply: counted, not shown; if it failed, the
    /// reply of the read-only command at the position given is its error.
    Migrated(Migration, usize),
    /// A reply mapped back: one that names keys, EXEC's array
    /// (`KeyReply::Exec`), or a refusal inside MULTI (`KeyReply::Refused`:
    /// Redis was sent a command it refuses too, so EXEC aborts).
    Map(KeyReply),
    /// SWAPDB, FLUSHDB, FLUSHALL (or an EXEC that ran one) answered: what
    /// versioning remembered about keys no longer holds.
    Forget,
}

/// What key versioning made of a command.
enum Rewrite {
    /// Forward it (after this migration), its reply mapped back so.
    Forward(Option<Migration>, Option<KeyReply>),
    /// Already answered (a read served from an old version in place).
    Answered(Bytes),
}

/// How one reply is decoded (compression) before anyone sees it.
#[derive(Debug, Clone)]
enum Decode {
    /// A reply to a read of `key` (the namespace its statistics count in).
    One(ReplyDecode, Bytes),
    /// EXEC's array: one element per queued command, in order.
    Transaction(Vec<Option<(ReplyDecode, Bytes)>>),
}

/// Where a MULTI transaction starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boundary {
    Multi,
    Exec,
    Discard,
    Reset,
}

/// One entry in the reply order.
enum Slot {
    /// A reply the proxy produced, ready to write.
    Ready(Bytes),
    /// The replies to a forwarded batch of `count` commands.
    Pending {
        replies: oneshot::Receiver<BatchResult>,
        count: usize,
        protocol: Protocol,
        /// What L1 changes in the replies before the client sees them.
        edits: Option<Box<ReplyEdits>>,
        /// The batch's reads and writes, counted when the replies are in.
        levels: LevelWork,
    },
    /// Fires once every earlier slot has been written.
    Barrier(oneshot::Sender<()>),
    /// From here on, copy everything Redis sends on the client's own
    /// connection (pub/sub, MONITOR, CLIENT REPLY OFF).
    Pipe(mpsc::Receiver<Bytes>, Option<versions::PipeMapper>),
    /// Close the client after everything before it.
    Close,
}

/// The L1 work a batch carries. When Redis's replies arrive, the store
/// work runs at once on the upstream connection's reader (see
/// [`BatchL1::into_parts`]), so a client that does not read its replies
/// holds up nobody else's fills; the reply edits run in the client's writer.
#[derive(Default)]
struct BatchL1 {
    /// Writes in the batch: in flight until Redis has answered them (their
    /// keys are not filled meanwhile), then invalidated again.
    writes: Vec<WriteGuard>,
    /// GETs sent with a hidden PTTL: the reply at `index` is the GET's, the
    /// next one the PTTL's (not shown to the client).
    fills: Vec<(usize, FillTicket)>,
    /// MGETs and HMGETs that L1 answered in part or fills from.
    multis: Vec<MultiRead>,
}

/// An MGET or HMGET sent with only the items L1 lacked, and hidden PTTLs
/// for those it fills.
struct MultiRead {
    /// Where Redis's reply to the read is in the batch.
    index: usize,
    /// How many items Redis was asked for.
    asked: usize,
    /// In the client's order, the cached reply of each item or `None` for
    /// those asked of Redis; absent when Redis was asked for every item
    /// (its reply is the client's as it is).
    cached: Option<Vec<Option<Bytes>>>,
    /// (position in Redis's reply, the fill, which hidden PTTL reply after
    /// the read tells its TTL).
    fills: Vec<(usize, FillTicket, usize)>,
    /// Hidden PTTL replies that follow the read.
    pttls: usize,
}

/// An MGET/HMGET's fills: (its reply's position, items asked of Redis,
/// (item position, fill, which hidden PTTL reply)).
type MultiFills = (usize, usize, Vec<(usize, FillTicket, usize)>);

/// Changes to a batch's replies before the client sees them.
struct ReplyEdits {
    /// Replies to leave out (hidden PTTLs), by position.
    hidden: Vec<usize>,
    /// (position, items asked of Redis, cached items in the client's order):
    /// Redis's reply merged with what L1 held.
    merges: Vec<(usize, usize, Vec<Option<Bytes>>)>,
}

impl BatchL1 {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.fills.is_empty() && self.multis.is_empty()
    }

    /// The store work (a hook for the upstream reader) and the reply edits.
    fn into_parts(self, l1: Arc<L1>) -> (Option<Hook>, Option<Box<ReplyEdits>>) {
        if self.is_empty() {
            return (None, None);
        }
        let mut hidden: Vec<usize> = self.fills.iter().map(|(index, _)| index + 1).collect();
        let mut merges = Vec::new();
        let mut multi_fills = Vec::new();
        for multi in self.multis {
            hidden.extend((1..=multi.pttls).map(|offset| multi.index + offset));
            if let Some(cached) = multi.cached {
                merges.push((multi.index, multi.asked, cached));
            }
            if !multi.fills.is_empty() {
                multi_fills.push((multi.index, multi.asked, multi.fills));
            }
        }
        let edits = (!hidden.is_empty() || !merges.is_empty()).then(|| Box::new(ReplyEdits { hidden, merges }));
        let (writes, fills) = (self.writes, self.fills);
        let hook: Hook = Box::new(move |result: BatchResult| {
            if let Ok(bytes) = &result {
                complete_fills(&l1, fills, multi_fills, bytes);
            }
            // Now that Redis has run them, the batch's writes end (dropping
            // again what a read racing them may have stored). Tickets not
            // completed give their fills up as they drop.
            drop(writes);
            result
        });
        (Some(hook), edits)
    }
}

/// Where a batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Pooled { db: u32, protocol: Protocol },
    Dedicated,
}

/// Whether the session goes on after a command.
enum Flow {
    Continue,
    Stop,
}

/// Serves one client until it disconnects, misbehaves, or the proxy shuts
/// down. `id` pins the client to one connection of each pool.
pub async fn run(stream: Stream, id: u64, shared: Arc<Shared>, shutdown: Shutdown) {
    let (read, write) = stream.split();
    let (slots, slot_receiver) = mpsc::channel(SLOT_QUEUE);
    let answered = Arc::new(AtomicU64::new(0));
    let output = Arc::new(OutputBuffer::new(shared.config.limits.max_output_bytes));
    let writer = tokio::spawn(write_replies(
        write,
        slot_receiver,
        answered.clone(),
        output.clone(),
        shared.stats.clone(),
    ));
    let db = shared.pools.target().db;
    let authenticated = !shared.auth.required();
    let mut session = Session {
        id,
        scanner: RequestScanner::new(shared.request_limits),
        shared,
        slots,
        protocol: Protocol::Resp2,
        db,
        authenticated,
        role: None,
        pool: None,
        dedicated: None,
        piped: false,
        read_at: None,
        batch: BytesMut::new(),
        ready: BytesMut::new(),
        batch_first: None,
        batch_count: 0,
        batch_replies: 0,
        batch_l1: BatchL1::default(),
        current_writes: Vec::new(),
        queued_writes: Vec::new(),
        pending_decode: None,
        batch_decodes: Vec::new(),
        queued_decodes: Vec::new(),
        batch_hidden: Vec::new(),
        batch_versions: Vec::new(),
        queued_versions: Vec::new(),
        pending_versions: None,
        transaction_moves: false,
        exec_moves: false,
        subscriptions: Arc::default(),
        events: Reads::default(),
        pending_read: None,
        heard: Reads::default(),
        read_keys: Vec::new(),
        read_key_ends: Vec::new(),
        read_wall_ms: 0,
        read_started: Instant::now(),
        l1_answered: 0,
        client_writes: None,
        batch_levels: LevelWork::default(),
        forwarded: 0,
        in_transaction: false,
        db_before_transaction: None,
        sent_batches: 0,
        sent_replies: 0,
        batch_most: (output.window() as usize).min(MAX_BATCH_COMMANDS),
        answered,
        batch_lane: None,
        last_lane: None,
        lost_own_connection: false,
        output,
    };
    let drain = Duration::from_millis(session.shared.config.limits.drain_timeout_ms);
    match session.serve(read, shutdown).await {
        Ended::Client => {
            // Dropping the client's own connection also ends any command
            // still blocking on it; pooled replies still owed are written.
            drop(session);
            let _ = writer.await;
        }
        Ended::Shutdown => {
            // The client's own connection stays up while the replies it owes
            // are written, for at most the drain timeout; then it is closed
            // (releasing a BLPOP 0 in Redis) and so is the client.
            let dedicated = session.dedicated.take();
            drop(session);
            let abort = writer.abort_handle();
            if tokio::time::timeout(drain, writer).await.is_err() {
                abort.abort();
            }
            drop(dedicated);
        }
    }
}

/// Why a session's request side stopped.
enum Ended {
    /// The client left, broke the protocol, idled out, or lost its connection.
    Client,
    /// The proxy is shutting down: let owed replies drain.
    Shutdown,
}

/// The request side of one client.
struct Session {
    id: u64,
    shared: Arc<Shared>,
    scanner: RequestScanner,
    slots: mpsc::Sender<Slot>,
    protocol: Protocol,
    db: u32,
    authenticated: bool,
    /// Granted by proxy authentication; admin commands will require Admin.
    role: Option<Role>,
    /// The pool of the current (db, protocol), cached.
    pool: Option<(u32, Protocol, Arc<Pool>)>,
    /// The client's own upstream connection, once it needs one.
    dedicated: Option<UpstreamConnection>,
    /// Replies no longer pair with requests; bytes are piped both ways.
    piped: bool,
    /// When the requests being handled were read (set with L1 on).
    read_at: Option<Instant>,
    batch: BytesMut,
    /// Local replies (L1 hits, the proxy's own answers) not yet queued;
    /// only ever non-empty while `batch` is empty, so order is kept.
    ready: BytesMut,
    /// A batch of one command is its own bytes, forwarded uncopied.
    batch_first: Option<Bytes>,
    batch_count: usize,
    /// Replies the batch will bring: its commands plus hidden ones (PTTL).
    batch_replies: usize,
    batch_l1: BatchL1,
    /// Writes of the command being handled, joined to the batch that
    /// carries it (dropped, so ended, if it is not forwarded).
    current_writes: Vec<WriteGuard>,
    /// Writes queued inside MULTI, in flight from EXEC.
    queued_writes: Vec<WriteGuard>,
    /// The decoding of the command being handled, joined to the batch (or
    /// the transaction) that carries it.
    pending_decode: Option<Decode>,
    /// Replies of the batch to decode, by position.
    batch_decodes: Vec<(usize, Decode)>,
    /// The decodings of the commands queued in MULTI, in order.
    queued_decodes: Vec<Option<(ReplyDecode, Bytes)>>,
    /// Replies of the batch the client does not see (migrations), by position.
    batch_hidden: Vec<usize>,
    /// Key versioning's work on the batch's replies, by position.
    batch_versions: Vec<(usize, VersionWork)>,
    /// How the replies of the commands queued in MULTI name keys, in order.
    queued_versions: Vec<Option<KeyReply>>,
    /// At EXEC: the queued commands' entries, joined to EXEC's reply.
    pending_versions: Option<Vec<Option<KeyReply>>>,
    /// The transaction queued a SWAPDB/FLUSHDB/FLUSHALL (EXEC then makes
    /// versioning forget what it remembered), and EXEC is being forwarded.
    transaction_moves: bool,
    exec_moves: bool,
    /// The pattern engine's events: L1 hits of the requests being handled
    /// (handed over when they are done), the read being handled (joined to
    /// the batch that carries it), and the batch's reads by position.
    events: Reads,
    pending_read: Option<PatternRead>,
    /// The batch's reads awaiting their replies, and (while a read is
    /// forwarded) its keys as the client named them.
    heard: Reads,
    read_keys: Vec<u8>,
    read_key_ends: Vec<usize>,
    /// When the requests being handled were read, in wall time for the
    /// pattern engine and on the monotonic clock for latencies.
    read_wall_ms: u64,
    read_started: Instant,
    /// Reads of the requests being handled that L1 answered (their
    /// latency is recorded once the requests are handled).
    l1_answered: u64,
    /// Whether the command being handled writes, as L1's write check (or,
    /// before compression rewrites it, Redis's flags) judged it; None:
    /// judged from its name when it is forwarded.
    client_writes: Option<bool>,
    /// The batch's reads (by reply position) and writes, for the
    /// statistics per level.
    batch_levels: LevelWork,
    /// Keyspace channels a piped client subscribed to, as rewritten.
    subscriptions: Arc<versions::Subscriptions>,
    /// Commands `forward` put in a batch, ever (so a caller can tell
    /// whether it answered one itself instead).
    forwarded: u64,
    in_transaction: bool,
    /// The database when MULTI came (DISCARD undoes a queued SELECT).
    db_before_transaction: Option<u32>,
    /// Batches sent upstream, and (counted by the reply writer) answered:
    /// while they differ, this client's earlier commands may not have run,
    /// so L1 must not answer its reads ahead of them.
    sent_batches: u64,
    answered: Arc<AtomicU64>,
    /// Replies asked of Redis, ever (the output buffer counts those that
    /// came): how far ahead of its replies a client may run.
    sent_replies: u64,
    /// Most commands in the next batch: [`MAX_BATCH_COMMANDS`], or fewer
    /// while the client's window is smaller (see `OutputBuffer::window`).
    batch_most: usize,
    batch_lane: Option<Lane>,
    /// The lane of the last batch sent, to notice a switch.
    last_lane: Option<Lane>,
    /// The client's own connection died with its state (MULTI, subscriptions,
    /// name...); like Redis going away, that ends the client's connection.
    lost_own_connection: bool,
    /// The replies held for this client (see [`OutputBuffer`]).
    output: Arc<OutputBuffer>,
}

impl Session {
    /// Serves the client until it leaves or breaks the protocol, or the
    /// proxy shuts down; tells which.
    async fn serve(&mut self, mut read: ReadHalf, mut shutdown: Shutdown) -> Ended {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let idle = Duration::from_secs(self.shared.config.limits.idle_timeout_secs);
        // One future for the whole session, not one per read.
        let stop = shutdown.triggered();
        tokio::pin!(stop);
        // Likewise for the output-buffer cut-off: one waiter registered for
        // the session, not one registered and dropped again per read.
        let output = self.output.clone();
        let cut_off = output.overflowed();
        tokio::pin!(cut_off);
        loop {
            match self.handle_buffered(&mut buf).await {
                Ok(Flow::Continue) => {}
                Ok(Flow::Stop) => return Ended::Client,
                Err(error) => {
                    self.shared.stats.protocol_error();
                    tracing::debug!(client = self.id, %error, "closing client after protocol error");
                    self.reply(Reply::error(format!("ERR {error}"))).await;
                    self.flush().await;
                    let _ = self.slots.send(Slot::Close).await;
                    return Ended::Client;
                }
            }
            if buf.len() > self.shared.config.limits.max_query_buffer_bytes {
                tracing::warn!(
                    client = self.id,
                    bytes = buf.len(),
                    "closing client over the query buffer limit"
                );
                self.reply(Reply::error(
                    "ERR Protocol error: query buffer limit reached (limits.max_query_buffer_bytes)",
                ))
                .await;
                self.flush().await;
                let _ = self.slots.send(Slot::Close).await;
                return Ended::Client;
            }
            let needed = self.scanner.bytes_needed(&buf);
            if needed > buf.capacity() {
                buf.reserve(needed - buf.len());
            } else if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            if self.slots.is_closed() {
                // The writer is gone: the client left, or was cut off.
                return Ended::Client;
            }
            let read_more = read.read_buf(&mut buf);
            let result = tokio::select! {
                result = read_more => result,
                _ = &mut stop => return Ended::Shutdown,
                _ = &mut cut_off => return Ended::Client,
                _ = idle_timer(idle, self.exempt_from_idle_timeout()) => {
                    tracing::debug!(client = self.id, "closing idle client");
                    return Ended::Client;
                }
            };
            match result {
                Ok(0) | Err(_) => return Ended::Client,
                Ok(_) => {}
            }
        }
    }

    /// Whether L1 may answer this client's reads now: on a pooled
    /// connection (not in MULTI, WATCH or blocked; not piped, so not with its
    /// own CLIENT TRACKING), authenticated, and with L1 ready.
    fn may_use_l1(&self, l1: &L1) -> bool {
        self.authenticated && !self.piped && self.dedicated.is_none() && l1.ready()
    }

    /// Whether Redis has answered everything this client sent before: only
    /// then may L1 answer its next read (otherwise the read would take
    /// effect ahead of commands sent before it).
    fn caught_up(&self) -> bool {
        self.batch_replies == 0 && self.answered.load(Ordering::Acquire) == self.sent_batches
    }

    /// When the requests being handled were read (for L1 deadlines).
    fn now(&self) -> Instant {
        self.read_at.unwrap_or_else(Instant::now)
    }

    /// Tells the pattern engine of an L1 hit of `key` (a reply of `size`
    /// bytes).
    fn l1_hit_event(&mut self, key: &[u8], size: usize) {
        self.events
            .push(self.db, key, self.read_wall_ms, Outcome::L1Hit, 0, size);
    }

    /// Tells the pattern engine of an L1 hit of the read being handled.
    fn note_l1_hit(&mut self, key: &[u8], size: usize) {
        if self.pending_read.take().is_some() {
            self.l1_hit_event(key, size);
        }
    }

    /// Copies the keys of a read about to be forwarded (before versioning
    /// renames them).
    fn note_read_keys(&mut self, read: PatternRead, command: &Command) {
        self.read_keys.clear();
        self.read_key_ends.clear();
        let keys: &[Bytes] = match read {
            PatternRead::One(_) => command.first_arg().map(std::slice::from_ref).unwrap_or_default(),
            PatternRead::Items => command.args().get(1..).unwrap_or_default(),
        };
        for key in keys {
            self.read_keys.extend_from_slice(key);
            self.read_key_ends.push(self.read_keys.len());
        }
    }

    /// The read's keys into `target`, awaiting the reply at position
    /// `reply`: from `command` as it is, or (None) as copied by
    /// [`Session::note_read_keys`] before versioning renamed them. A
    /// single key was admitted by the sampler already (`pattern_read`).
    fn hear(&self, target: &mut Reads, read: PatternRead, reply: usize, command: Option<&Command>) {
        let at_ms = self.read_wall_ms;
        match (read, command) {
            (PatternRead::One(awaited), Some(command)) => {
                if let Some(key) = command.first_arg() {
                    target.push_awaited(self.db, key, at_ms, reply, awaited, true);
                }
            }
            (PatternRead::Items, Some(command)) => {
                let items = command.args().get(1..).unwrap_or_default();
                for (item, key) in items.iter().enumerate() {
                    let awaited = Awaited::Item {
                        item: item as u32,
                        of: items.len() as u32,
                    };
                    target.push_awaited(self.db, key, at_ms, reply, awaited, false);
                }
            }
            (read, None) => {
                let of = self.read_key_ends.len() as u32;
                let mut start = 0;
                for (item, end) in self.read_key_ends.iter().enumerate() {
                    let key = &self.read_keys[start..*end];
                    start = *end;
                    let (awaited, admitted) = match read {
                        PatternRead::One(awaited) => (awaited, true),
                        PatternRead::Items => (Awaited::Item { item: item as u32, of }, false),
                    };
                    target.push_awaited(self.db, key, at_ms, reply, awaited, admitted);
                }
            }
        }
    }

    /// Blocked and subscribed clients are not idle, as in Redis.
    fn exempt_from_idle_timeout(&self) -> bool {
        self.dedicated.is_some()
    }

    /// Handles every complete request in `buf`, then sends the batch.
    async fn handle_buffered(&mut self, buf: &mut BytesMut) -> Result<Flow, ProtocolError> {
        let l1 = self.shared.l1.clone();
        // These requests were read now: L1 may answer them with what was
        // live now, so one clock read serves the whole pipeline.
        self.read_at = l1.as_ref().map(|l1| l1.store.now());
        self.read_started = Instant::now();
        let patterns = self.shared.patterns.is_some();
        if let Some(patterns) = &self.shared.patterns {
            self.read_wall_ms = patterns.now_ms();
            self.events.sample_with(patterns.sampler());
            self.heard.sample_with(patterns.sampler());
        }
        let flow = self.handle_frames(buf, l1, patterns).await;
        if self.l1_answered > 0 {
            let answered = std::mem::take(&mut self.l1_answered);
            let levels = &self.shared.stats.levels;
            levels.read(Level::L1).record(self.read_started.elapsed(), answered);
        }
        if let Some(patterns) = &self.shared.patterns
            && !self.events.is_untouched()
        {
            patterns.feed(&mut self.events);
        }
        flow
    }

    async fn handle_frames(
        &mut self,
        buf: &mut BytesMut,
        l1: Option<Arc<L1>>,
        patterns: bool,
    ) -> Result<Flow, ProtocolError> {
        while let Some(frame) = self.scanner.scan(buf)? {
            // The L1 hit fast path: a GET answered straight from the read
            // buffer (no request object, no table look-ups).
            if let (Some(l1), Some(key)) = (&l1, plain_get_key(&frame, buf))
                && self.may_use_l1(l1)
                && self.caught_up()
                && let Some(hit) = l1.store.hit_at(self.db, key, &Shape::String, self.now())
            {
                let reply = hit.for_protocol(self.protocol);
                self.l1_answered += 1;
                if patterns {
                    self.events
                        .push(self.db, key, self.read_wall_ms, Outcome::L1Hit, 0, reply.len());
                }
                if reply.len() < LARGE_LOCAL_REPLY {
                    self.reply_slice(reply).await;
                } else {
                    self.reply_bytes(reply.clone()).await;
                }
                buf.advance(frame.len());
                continue;
            }
            let bytes = buf.split_to(frame.len()).freeze();
            if let RequestFrame::Empty { .. } = frame {
                continue;
            }
            let mut command = Command::decode(frame, bytes)?;
            if needs_arguments(command.name()) {
                command.decode_args()?;
            }
            let flow = self.handle(command).await;
            // Writes of a command that was not forwarded end here, and so
            // does its decoding (an L1 hit needs none).
            self.current_writes.clear();
            self.pending_decode = None;
            self.pending_versions = None;
            self.pending_read = None;
            self.client_writes = None;
            if let Flow::Stop = flow {
                self.flush().await;
                return Ok(Flow::Stop);
            }
            if self.lost_own_connection || self.output.is_over() {
                return Ok(Flow::Stop);
            }
            if self.batch_count >= self.batch_most {
                self.flush().await;
            }
        }
        self.flush().await;
        if self.lost_own_connection {
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// The phases one command goes through.
    async fn handle(&mut self, mut command: Command) -> Flow {
        let l1 = self.shared.l1.clone();
        if self.piped {
            let boundary = self.note_transaction(&command);
            if let Some(l1) = &l1 {
                if let Err(error) = self.note_write(l1, &mut command, boundary) {
                    self.reply(Reply::error(format!("ERR {error}"))).await;
                    return Flow::Stop;
                }
                // No batch to attach it to: the invalidation just made and
                // Redis's own messages cover a piped client's writes.
                self.current_writes.clear();
            }
            if let Some(compression) = self.shared.compression.clone() {
                match self.plan_compression(&compression, &mut command, boundary) {
                    // Values written are encoded (and escaped) as anywhere.
                    Ok(None) if self.pending_decode.is_none() => {}
                    // A reply to decode, or a read-modify-write: a piped
                    // reply cannot be told apart from what Redis pushes, so
                    // Redis itself answers an error, in its place.
                    Ok(_) => {
                        self.pending_decode = None;
                        command = piped_refusal(&command);
                    }
                    Err(error) => {
                        self.reply(Reply::error(format!("ERR {error}"))).await;
                        return Flow::Stop;
                    }
                }
            }
            return self.forward_piped(command).await;
        }
        let class = classify(&command);
        if !self.authenticated
            && !matches!(
                class,
                CommandClass::Local(
                    LocalCommand::Auth | LocalCommand::Hello | LocalCommand::Quit | LocalCommand::Reset
                )
            )
        {
            self.reply(Reply::error("NOAUTH Authentication required.")).await;
            return Flow::Continue;
        }
        // Only a command Redis will see moves the transaction state.
        let boundary = self.note_transaction(&command);
        if self.shared.versions.is_some()
            && let Some(boundary) = boundary
        {
            let queued = std::mem::take(&mut self.queued_versions);
            let moves = std::mem::take(&mut self.transaction_moves);
            if boundary == Boundary::Exec {
                self.pending_versions = Some(queued);
                self.exec_moves = moves;
            }
        }
        // (The proxy's own commands write nothing; Redis does not know
        // PROXY, and a command it does not know counts as writing anything.)
        if let Some(l1) = &l1
            && (!matches!(class, CommandClass::Local(_)) || boundary.is_some())
            && let Err(error) = self.note_write(l1, &mut command, boundary)
        {
            self.reply(Reply::error(format!("ERR {error}"))).await;
            return Flow::Stop;
        }
        if let Some(compression) = &self.shared.compression
            && matches!(class, CommandClass::Shared | CommandClass::Stateful)
        {
            // Judged by the client's command: compression may rewrite it
            // (SETBIT to a script).
            if self.client_writes.is_none() {
                self.client_writes = Some(WriteTable::builtin().flags_write(command.name()));
            }
            let compression = compression.clone();
            match self.plan_compression(&compression, &mut command, boundary) {
                Ok(Some(rmw)) => return self.read_modify_write(&compression, rmw).await,
                Ok(None) => {}
                Err(error) => {
                    self.reply(Reply::error(format!("ERR {error}"))).await;
                    return Flow::Stop;
                }
            }
        }
        if let Some(versions) = &self.shared.versions
            && class == CommandClass::Shared
            && !self.in_transaction
            && command.argc() == 1
            && command.is("RANDOMKEY")
        {
            let versions = versions.clone();
            return self.random_key(&versions).await;
        }
        if self.shared.patterns.is_some() && class == CommandClass::Shared && !self.in_transaction {
            self.pending_read = pattern_read(&mut command, &mut self.events);
        }
        if let Some(l1) = &l1 {
            if class == CommandClass::Shared
                && self.may_use_l1(l1)
                && let Some(shape) = cached_shape(&mut command)
            {
                return self.read_through_l1(l1, command, shape).await;
            }
            let fixed = match command.argc() {
                2.. if command.is("MGET") => 1,
                3.. if command.is("HMGET") => 2,
                _ => 0,
            };
            if fixed > 0 && class == CommandClass::Shared && self.may_use_l1(l1) && command.decode_args().is_ok() {
                return self.multi_read_through_l1(l1, command, fixed).await;
            }
        }
        match class {
            CommandClass::Shared if self.dedicated.is_some() => self.forward(Lane::Dedicated, command).await,
            CommandClass::Shared => self.forward(self.pooled_lane(), command).await,
            CommandClass::Stateful => self.forward_dedicated(command).await,
            CommandClass::Streaming => self.start_piping(command).await,
            CommandClass::Local(local) => self.handle_local(local, command).await,
            CommandClass::Refused(reason) => {
                let name = String::from_utf8_lossy(command.name()).to_uppercase();
                self.reply(Reply::error(format!(
                    "ERR {name} is not supported by auracache: {reason}"
                )))
                .await;
                Flow::Continue
            }
        }
    }

    async fn handle_local(&mut self, local: LocalCommand, command: Command) -> Flow {
        let dedicated = self.dedicated.is_some();
        match local {
            LocalCommand::Auth => self.auth(command).await,
            LocalCommand::Hello => self.hello(command).await,
            LocalCommand::Quit => {
                self.reply(Reply::Status("OK")).await;
                Flow::Stop
            }
            LocalCommand::InfoCache => {
                if self.in_transaction {
                    // Queued: Redis answers it in EXEC's array, as it is.
                    let lane = self.own_lane();
                    return self.forward(lane, command).await;
                }
                // After what the client sent before, which it counts.
                self.settle().await;
                let text = self.cache_section();
                self.reply(Reply::Verbatim(Bytes::from(text))).await;
                Flow::Continue
            }
            LocalCommand::InfoAll => {
                let lane = self.own_lane();
                if self.in_transaction {
                    // Queued: Redis answers it in EXEC's array, as it is.
                    return self.forward(lane, command).await;
                }
                // Redis is asked for its own sections (`cache` is ours).
                let asked: Vec<Bytes> = command
                    .args()
                    .iter()
                    .filter(|arg| !arg.eq_ignore_ascii_case(b"cache"))
                    .cloned()
                    .collect();
                match self.call_now(lane, Command::from_args(asked).wire().clone(), 1).await {
                    Ok(reply) => {
                        let text = self.cache_section();
                        self.reply_bytes(admin::append_section(&reply, &text)).await;
                    }
                    Err(error) => {
                        self.shared.stats.upstream_error();
                        self.reply(Reply::error(error.client_message())).await;
                    }
                }
                Flow::Continue
            }
            LocalCommand::Proxy => self.proxy(command).await,
            // On its own connection, Redis keeps this state and answers.
            LocalCommand::Select | LocalCommand::Reset | LocalCommand::ClientGetName if dedicated => {
                self.track_connection_state(local, &command);
                self.forward(Lane::Dedicated, command).await
            }
            LocalCommand::Select => {
                self.select(&command).await;
                Flow::Continue
            }
            LocalCommand::Reset => {
                self.protocol = Protocol::Resp2;
                self.db = self.shared.pools.target().db;
                self.log_out();
                self.reply(Reply::Status("RESET")).await;
                Flow::Continue
            }
            LocalCommand::ClientGetName => {
                // Only CLIENT SETNAME names a connection, and it moves the
                // client to its own connection; so this client has no name.
                let reply = if command.args().len() == 2 {
                    Reply::Nil
                } else {
                    wrong_arity("client|getname")
                };
                self.reply(reply).await;
                Flow::Continue
            }
        }
    }

    /// `PROXY VERSION STATUS [namespace]`, `PROXY VERSION CLEANUP namespace
    /// [KEEP n]`, `PROXY HELP`. CLEANUP changes data: with proxy
    /// authentication it needs the admin role.
    async fn proxy(&mut self, command: Command) -> Flow {
        let args: Vec<String> = command
            .args()
            .iter()
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        let upper: Vec<String> = args.iter().map(|arg| arg.to_ascii_uppercase()).collect();
        let words: Vec<&str> = upper.iter().map(String::as_str).collect();
        let reply = match words.as_slice() {
            [_, "HELP"] => Reply::Verbatim(Bytes::from_static(PROXY_HELP.as_bytes())),
            [_, "PATTERNS", ..] => return self.patterns_command(&command.args()[2..]).await,
            [_, "PRELOAD", "STATUS"] | [_, "PRELOAD", "RUN"] => return self.preload_command(words[2] == "RUN").await,
            [_, "EXPLAIN", _] => return self.explain(command.args()[2].clone()).await,
            [_, "CONFIG", "SET", _, _] => {
                if self.lacks_admin() {
                    Reply::error("NOPERM PROXY CONFIG SET needs the admin role")
                } else {
                    match self.config_set(&args[3], &args[4]) {
                        Ok(()) => Reply::Status("OK"),
                        Err(error) => Reply::error(error),
                    }
                }
            }
            [_, "STATS"] => {
                // INFO cache's fields, as a map, counting what came before.
                use crate::patterns::report::Value;
                self.settle().await;
                let text = self.cache_section();
                let pairs = text
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .map(|(name, value)| {
                        (
                            Value::Bulk(Bytes::copy_from_slice(name.as_bytes())),
                            Value::Bulk(Bytes::copy_from_slice(value.as_bytes())),
                        )
                    })
                    .collect();
                self.reply_bytes(Value::Pairs(pairs).to_bytes(self.protocol)).await;
                return Flow::Continue;
            }
            [_, "STATS", "RESET"] => {
                if self.lacks_admin() {
                    Reply::error("NOPERM PROXY STATS RESET needs the admin role")
                } else {
                    // What the client sent before counts before the reset.
                    self.settle().await;
                    self.reset_stats();
                    Reply::Status("OK")
                }
            }
            [_, "CONFIG", "GET", _] => {
                use crate::patterns::report::Value;
                let pattern = command.args()[3].clone();
                let settings = self
                    .shared
                    .settings
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .settings_redacted()
                    .into_iter()
                    .filter(|(name, _)| crate::keys::glob::matches_nocase(&pattern, name.as_bytes()))
                    .map(|(name, value)| (Value::Bulk(Bytes::from(name)), Value::Bulk(Bytes::from(value))))
                    .collect();
                self.reply_bytes(Value::Pairs(settings).to_bytes(self.protocol)).await;
                return Flow::Continue;
            }
            [_, "FLUSHL1", rest @ ..] if rest.len() <= 1 => match &self.shared.l1 {
                None => Reply::error("ERR L1 is off (memory_cache.enabled = false)"),
                Some(_) if self.lacks_admin() => Reply::error("NOPERM PROXY FLUSHL1 needs the admin role"),
                // The keys dropped: all of L1's, or one namespace's.
                Some(l1) => Reply::Integer(match args.get(2) {
                    Some(namespace) => l1.store.flush_namespace(namespace) as i64,
                    None => {
                        let keys = l1.store.len() as i64;
                        l1.store.flush();
                        keys
                    }
                }),
            },
            [_, "VERSION", "STATUS", rest @ ..] if rest.len() <= 1 => {
                let only = args.get(3).map(String::as_str);
                match self.shared.versions.clone() {
                    None => Reply::error("ERR key versioning is off: no namespace has a version"),
                    Some(versions) => match self.version_admin(&versions, only, None).await {
                        Ok(text) => Reply::Verbatim(Bytes::from(text)),
                        Err(error) => Reply::error(error),
                    },
                }
            }
            [_, "VERSION", "CLEANUP", _, rest @ ..] => {
                let keep = match rest {
                    [] => Some(2),
                    ["KEEP", n] => n.parse::<usize>().ok().filter(|n| *n >= 1),
                    _ => None,
                };
                match (keep, self.shared.versions.clone()) {
                    (None, _) => Reply::error("ERR syntax: PROXY VERSION CLEANUP namespace [KEEP n], n >= 1"),
                    (_, None) => Reply::error("ERR key versioning is off: no namespace has a version"),
                    (Some(_), Some(_)) if self.lacks_admin() => {
                        Reply::error("NOPERM PROXY VERSION CLEANUP needs the admin role")
                    }
                    (Some(keep), Some(versions)) => {
                        match self.version_admin(&versions, Some(&args[3]), Some(keep)).await {
                            Ok(text) => Reply::Bulk(Bytes::from(text)),
                            Err(error) => Reply::error(error),
                        }
                    }
                }
            }
            _ => Reply::error(format!(
                "ERR unknown PROXY subcommand or wrong arguments: '{}'; try PROXY HELP",
                args[1..].join(" ")
            )),
        };
        self.reply(reply).await;
        Flow::Continue
    }

    /// `PROXY PATTERNS [COUNT n] [NAMESPACE ns] [MINPRIORITY p]`, `PROXY
    /// PATTERNS PEAKS`, `PROXY PATTERNS SAVE` (admin, with proxy
    /// authentication). The engine is asked off the event loop: ranking
    /// walks every tracked key.
    async fn patterns_command(&mut self, args: &[Bytes]) -> Flow {
        use crate::patterns::report;
        let Some(patterns) = self.shared.patterns.clone() else {
            self.reply(Reply::error("ERR the pattern engine is off (patterns.enabled = false)"))
                .await;
            return Flow::Continue;
        };
        let protocol = self.protocol;
        let first = args.first().map(|arg| arg.to_ascii_uppercase());
        let reply = match first.as_deref() {
            Some(b"PEAKS") if args.len() == 1 => {
                let (load, peaks) = patterns.peaks();
                Ok(report::peaks_reply(&load, &peaks, protocol))
            }
            Some(b"SAVE") if args.len() == 1 => {
                if self.lacks_admin() {
                    Err("NOPERM PROXY PATTERNS SAVE needs the admin role".to_string())
                } else {
                    match tokio::task::spawn_blocking(move || patterns.save()).await {
                        Ok(Ok(_)) => Ok(Reply::Status("OK").encode(protocol)),
                        Ok(Err(reason)) => Err(format!("ERR pattern snapshot not written: {reason}")),
                        Err(_) => Err("ERR pattern snapshot not written: the task failed".to_string()),
                    }
                }
            }
            _ => match report::parse_query(args) {
                Err(error) => Err(error),
                Ok(query) => tokio::task::spawn_blocking(move || {
                    let top = patterns.top(&query);
                    let namespace_of = |key: &[u8]| Bytes::copy_from_slice(patterns.namespace_of(key));
                    report::top_reply(&top, namespace_of, patterns.now_ms(), protocol)
                })
                .await
                .map_err(|_| "ERR PROXY PATTERNS failed".to_string()),
            },
        };
        match reply {
            Ok(bytes) => self.reply_bytes(bytes).await,
            Err(error) => self.reply(Reply::error(error)).await,
        }
        Flow::Continue
    }

    /// `PROXY EXPLAIN key`: where the client's `key` lives and how: its
    /// stored name and version, its type, TTL, stored size and codec in
    /// Redis (one batch on the client's pooled connection), what L1 holds
    /// of it and for how long, and what the pattern engine says of it.
    async fn explain(&mut self, key: Bytes) -> Flow {
        use crate::patterns::report::Value;
        let versions = self.shared.versions.clone();
        // (Checked before any round trip.)
        if self.in_transaction {
            self.reply(Reply::error("ERR PROXY EXPLAIN is not allowed inside MULTI"))
                .await;
            return Flow::Continue;
        }
        let lane = self.own_lane();
        let candidates = versions
            .as_ref()
            .map_or_else(|| vec![key.clone()], |versions| versions.candidates(&key));
        // Where reads would find it: the first name that exists (the current
        // one when none does), looked at without migrating it.
        let mut stored = candidates[0].clone();
        if candidates.len() > 1 {
            let mut request = Vec::new();
            for name in &candidates {
                request.extend_from_slice(Command::from_args(vec![Bytes::from_static(b"EXISTS"), name.clone()]).wire());
            }
            match self.call_now(lane, Bytes::from(request), candidates.len()).await {
                Ok(replies) => {
                    let starts = frame_starts(&replies, candidates.len());
                    if let Some(found) = starts.iter().position(|&at| replies[at..].starts_with(b":1\r\n")) {
                        stored = candidates[found].clone();
                    }
                }
                Err(error) => {
                    self.shared.stats.upstream_error();
                    self.reply(Reply::error(error.client_message())).await;
                    return Flow::Continue;
                }
            }
        }
        let version = versions
            .as_ref()
            .and_then(|versions| versions.namespace_and_version(&stored))
            .map(|(_, version)| version);
        let mut request = Vec::new();
        for (name, extra) in [
            ("TYPE", &[][..]),
            ("PTTL", &[]),
            ("STRLEN", &[]),
            ("GETRANGE", &["0", "63"]),
        ] {
            let mut command: Vec<Bytes> = vec![Bytes::from_static(name.as_bytes()), stored.clone()];
            command.extend(extra.iter().map(|arg| Bytes::from_static(arg.as_bytes())));
            request.extend_from_slice(Command::from_args(command).wire());
        }
        // On the client's own connection when it has one (`lane`): it may
        // be authenticated to Redis as a user who may not see the key.
        let replies = match self.call_now(lane, Bytes::from(request), 4).await {
            Ok(replies) => replies,
            Err(error) => {
                self.shared.stats.upstream_error();
                self.reply(Reply::error(error.client_message())).await;
                return Flow::Continue;
            }
        };
        let starts = frame_starts(&replies, 4);
        let frame = |at: usize| {
            replies
                .get(starts[at]..*starts.get(at + 1).unwrap_or(&starts[at]))
                .unwrap_or_default()
        };
        let integer = |frame: &[u8]| {
            frame
                .strip_prefix(b":")
                .and_then(|rest| std::str::from_utf8(rest).ok())
                .and_then(|text| text.trim().parse::<i64>().ok())
        };
        let kind = String::from_utf8_lossy(frame(0).strip_prefix(b"+").unwrap_or_default())
            .trim()
            .to_string();
        let pttl = integer(frame(1));
        let strlen = integer(frame(2));
        let head = versions::bulk(frame(3)).unwrap_or_default();
        let (codec, original) = match crate::codec::envelope::parse_header(head) {
            _ if kind != "string" => (Value::Nil, Value::Nil),
            Some(header) => (
                Value::Bulk(Bytes::from_static(header.codec.name().as_bytes())),
                Value::Integer(header.original_len as i64),
            ),
            None => (
                Value::Bulk(Bytes::from_static(b"raw")),
                strlen.map_or(Value::Nil, Value::Integer),
            ),
        };
        let optional = |value: Option<i64>| value.map_or(Value::Nil, Value::Integer);
        let held = self.shared.l1.as_ref().map(|l1| {
            [("string", Shape::String), ("hash", Shape::HashAll)]
                .into_iter()
                .filter_map(|(name, shape)| l1.store.remaining(self.db, &key, &shape).map(|left| (name, left)))
                .collect::<Vec<_>>()
        });
        let insight = match self.shared.patterns.clone() {
            Some(patterns) => {
                let (db, key) = (self.db, key.clone());
                tokio::task::spawn_blocking(move || patterns.insight(db, &key))
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        let namespace = self
            .shared
            .l1
            .as_ref()
            .map(|l1| l1.store.namespaces().of(&key).name().to_string())
            .or_else(|| {
                self.shared
                    .patterns
                    .as_ref()
                    .map(|patterns| String::from_utf8_lossy(patterns.namespace_of(&key)).into_owned())
            })
            .unwrap_or_default();
        let reply = Value::Map(vec![
            ("key", Value::Bulk(key.clone())),
            ("db", Value::Integer(i64::from(self.db))),
            ("namespace", Value::Bulk(Bytes::from(namespace))),
            ("stored_key", Value::Bulk(stored.clone())),
            ("version", optional(version.map(i64::from))),
            ("type", Value::Bulk(Bytes::from(kind.clone()))),
            ("redis_ttl_ms", optional(pttl)),
            (
                "stored_bytes",
                if kind == "string" { optional(strlen) } else { Value::Nil },
            ),
            ("codec", codec),
            ("original_bytes", original),
            (
                "l1_cached",
                Value::Array(
                    held.iter()
                        .flatten()
                        .map(|(name, _)| Value::Bulk(Bytes::from_static(name.as_bytes())))
                        .collect(),
                ),
            ),
            (
                "l1_ttl_ms",
                optional(held.iter().flatten().map(|(_, left)| left.as_millis() as i64).max()),
            ),
            (
                "pattern_class",
                insight.as_ref().map_or(Value::Nil, |insight| {
                    Value::Bulk(Bytes::from_static(insight.verdict.class.as_str().as_bytes()))
                }),
            ),
            (
                "pattern_priority",
                optional(insight.as_ref().map(|insight| i64::from(insight.priority))),
            ),
            (
                "next_access_ms",
                optional(
                    insight
                        .as_ref()
                        .and_then(|insight| insight.verdict.next_ms)
                        .map(|ms| ms as i64),
                ),
            ),
        ]);
        self.reply_bytes(reply.to_bytes(self.protocol)).await;
        Flow::Continue
    }

    /// `PROXY CONFIG SET name value`: checked as at start-up (with the
    /// settings it depends on), then applied to the running proxy where
    /// that is safe (`RUNTIME_SETTINGS`); any other setting is refused,
    /// naming it.
    fn config_set(&self, name: &str, value: &str) -> Result<(), String> {
        let name = name.to_ascii_lowercase();
        let mut settings = self
            .shared
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next = settings.clone();
        // A smaller byte bound takes the largest entry down with it, to one
        // shard's share (CONFIG GET shows what holds then).
        if let (Some(l1), "memory_cache.max_bytes", Ok(max_bytes)) =
            (&self.shared.l1, name.as_str(), value.trim().parse::<u64>())
        {
            let possible = l1.store.largest_entry_possible(max_bytes);
            if next.memory_cache.max_entry_bytes > possible {
                tracing::warn!(
                    "memory_cache.max_bytes {max_bytes} lowers memory_cache.max_entry_bytes from {} to {possible} (one shard's share)",
                    next.memory_cache.max_entry_bytes
                );
                next.memory_cache.max_entry_bytes = possible.max(1);
            }
        }
        next.set(&name, value).map_err(|error| format!("ERR {error}"))?;
        if !RUNTIME_SETTINGS.contains(&name.as_str()) {
            return Err(format!(
                "ERR {name} cannot change while the proxy runs (set it in proxy.toml or the environment and restart); these can: {}",
                RUNTIME_SETTINGS.join(", ")
            ));
        }
        // What one setting's check leaves to the others (max_entry_bytes
        // below max_bytes, each namespace's level for a new algorithm).
        next.validate().map_err(|error| format!("ERR {error}"))?;
        let off = |what: &str| format!("ERR {what} is off (it is turned on at start-up): {name} has nothing to change");
        match name.split_once('.').map_or("", |(section, _)| section) {
            "preload" => {
                let preload = self.shared.preload.as_ref().ok_or_else(|| off("the preloader"))?;
                preload.set_config(next.preload.clone());
            }
            "patterns" => {
                let patterns = self.shared.patterns.as_ref().ok_or_else(|| off("the pattern engine"))?;
                match name.as_str() {
                    "patterns.max_events_per_sec" => patterns.set_budget(next.patterns.max_events_per_sec),
                    _ => patterns.set_min_accesses(next.patterns.min_access_count),
                }
            }
            "compression" => {
                // Without the stage, reads do not decode envelopes: values
                // compressed from now on would reach clients as stored.
                let compression = self.shared.compression.as_ref().ok_or_else(|| {
                    format!(
                        "ERR compression was off at start-up, so the proxy does not decode stored values: {name} needs a restart with compression.enabled = true (after which compression can be turned off and on while the proxy runs)"
                    )
                })?;
                compression.set_policies(&next);
            }
            "memory_cache" => {
                let l1 = self
                    .shared
                    .l1
                    .as_ref()
                    .ok_or_else(|| off("L1 (memory_cache.enabled)"))?;
                let (before, after) = (settings.memory_cache.default_ttl, next.memory_cache.default_ttl);
                if name == "memory_cache.default_ttl" && before != after && (before == 0 || after == 0) {
                    return Err(format!(
                        "ERR memory_cache.default_ttl cannot change from {before} to {after} while the proxy runs: 0 means not cached, which decides at start-up whether L1 needs Redis's invalidations (the tracking connection); set it in proxy.toml or the environment and restart"
                    ));
                }
                let (max_bytes, max_entry) = (next.memory_cache.max_bytes, next.memory_cache.max_entry_bytes);
                let possible = l1.store.largest_entry_possible(max_bytes);
                if max_entry > possible {
                    return Err(format!(
                        "ERR memory_cache.max_entry_bytes {max_entry} is more than L1 can hold in one entry with memory_cache.max_bytes {max_bytes} ({possible} at most: an entry fits in one of the {} shards chosen at start-up); set both in proxy.toml or the environment and restart for larger entries",
                        l1.store.shards()
                    ));
                }
                l1.reconfigure(&next);
            }
            // (RUNTIME_SETTINGS names settings of the sections above only.)
            _ => return Err(format!("ERR {name} has no way to change while the proxy runs")),
        }
        *settings = next;
        Ok(())
    }

    /// Every counter of the proxy back to zero (gauges such as entries,
    /// bytes and connections stay): `PROXY STATS RESET`.
    fn reset_stats(&self) {
        self.shared.stats.reset();
        if let Some(l1) = &self.shared.l1 {
            l1.store.stats().reset();
            for namespace in l1.store.namespaces().all() {
                namespace.stats.reset();
            }
        }
        if let Some(compression) = &self.shared.compression {
            compression.stats.reset();
        }
        if let Some(patterns) = &self.shared.patterns {
            patterns.stats().reset();
        }
        if let Some(preload) = &self.shared.preload {
            preload.stats().reset();
        }
    }

    /// The proxy's `# Cache` INFO section.
    fn cache_section(&self) -> String {
        let mut text = admin::info_cache(
            &self.shared.stats,
            self.shared.l1.as_deref(),
            self.shared.compression.as_deref(),
            self.shared.patterns.as_deref(),
            self.shared.preload.as_deref(),
        );
        if let Some(cluster) = self.shared.pools.cluster() {
            admin::cluster_lines(&mut text, cluster);
        }
        text
    }

    /// `PROXY PRELOAD STATUS` and `PROXY PRELOAD RUN` (a run now, its
    /// report when it is over; admin, with proxy authentication).
    async fn preload_command(&mut self, run: bool) -> Flow {
        let (Some(preload), Some(l1), Some(patterns)) = (
            self.shared.preload.clone(),
            self.shared.l1.clone(),
            self.shared.patterns.clone(),
        ) else {
            let why = if !self.shared.config.preload.enabled {
                "preload.enabled = false"
            } else if self.shared.l1.is_none() {
                "it needs memory_cache.enabled"
            } else {
                "it needs patterns.enabled"
            };
            self.reply(Reply::error(format!("ERR the preloader is off ({why})")))
                .await;
            return Flow::Continue;
        };
        if run {
            if self.lacks_admin() {
                self.reply(Reply::error("NOPERM PROXY PRELOAD RUN needs the admin role"))
                    .await;
                return Flow::Continue;
            }
            // The client's earlier commands go first, not after the run.
            self.flush().await;
            if preload.run_now(PRELOAD_RUN_WAIT).await.is_none() {
                self.reply(Reply::error(
                    "ERR the preload run did not finish (in time, or the proxy is stopping); see PROXY PRELOAD STATUS",
                ))
                .await;
                return Flow::Continue;
            }
        }
        let reply = crate::preload::status_reply(&preload, &l1, patterns.now_ms(), self.protocol);
        self.reply_bytes(reply).await;
        Flow::Continue
    }

    /// Runs STATUS (`keep` None) or CLEANUP on the client's pooled
    /// connection, after its earlier commands.
    async fn version_admin(
        &mut self,
        versions: &Versioning,
        namespace: Option<&str>,
        keep: Option<usize>,
    ) -> Result<String, String> {
        let lane = Lane::Pooled {
            db: self.db,
            protocol: Protocol::Resp2,
        };
        self.flush().await;
        self.enter_lane(lane).await;
        let connection = self
            .connection_for(lane)
            .await
            .map_err(|error| error.client_message())?;
        let mut upstream = OneAtATime {
            connection,
            versions: None,
            db: self.db,
        };
        match (keep, namespace) {
            (Some(keep), Some(namespace)) => {
                crate::keys::admin::cleanup(versions, namespace, keep, &mut upstream).await
            }
            _ => crate::keys::admin::status(versions, namespace, &mut upstream).await,
        }
    }

    /// Mirrors on the session what a forwarded SELECT/RESET does upstream.
    fn track_connection_state(&mut self, local: LocalCommand, command: &Command) {
        match local {
            LocalCommand::Select => {
                // Only a SELECT Redis will accept (a refused one changes
                // nothing there); one queued in MULTI is undone by DISCARD.
                let databases = self.shared.databases.load(Ordering::Relaxed);
                let cluster = self.shared.pools.cluster().is_some();
                if let Some(db) = command
                    .arg(1)
                    .and_then(parse_u32)
                    .filter(|db| *db < databases && (*db == 0 || !cluster))
                {
                    self.db = db;
                }
            }
            LocalCommand::Reset => {
                self.in_transaction = false;
                self.queued_writes.clear();
                self.db_before_transaction = None;
                self.protocol = Protocol::Resp2;
                self.db = self.shared.pools.target().db;
                self.log_out();
            }
            _ => {}
        }
    }

    async fn select(&mut self, command: &Command) {
        if command.args().len() != 2 {
            self.reply(wrong_arity("select")).await;
            return;
        }
        let databases = self.shared.databases.load(std::sync::atomic::Ordering::Relaxed);
        // Redis's wording for each way SELECT can fail.
        let reply = match command.arg(1).and_then(parse_i64) {
            None => Reply::error("ERR value is not an integer or out of range"),
            Some(db) if db < 0 || db >= databases as i64 => Reply::error("ERR DB index is out of range"),
            // A cluster has database 0 only, and Redis says so.
            Some(db) if db != 0 && self.shared.pools.cluster().is_some() => {
                Reply::error("ERR SELECT is not allowed in cluster mode")
            }
            Some(db) => {
                self.db = db as u32;
                Reply::Status("OK")
            }
        };
        self.reply(reply).await;
    }

    async fn auth(&mut self, command: Command) -> Flow {
        if !self.shared.auth.required() {
            // The client authenticates to Redis itself, on its own connection.
            return self.forward_dedicated(command).await;
        }
        let reply = match command.args() {
            [_, password] => self.check_credentials(None, password),
            [_, user, password] => self.check_credentials(Some(user), password),
            [_] => wrong_arity("auth"),
            _ => Reply::error("ERR syntax error"),
        };
        self.reply(reply).await;
        Flow::Continue
    }

    /// RESET logs the client out, as in Redis, when the proxy requires AUTH.
    fn log_out(&mut self) {
        if self.shared.auth.required() {
            self.authenticated = false;
            self.role = None;
        }
    }

    fn check_credentials(&mut self, user: Option<&[u8]>, password: &[u8]) -> Reply {
        match self.shared.auth.check(user, password) {
            Some(role) => {
                self.authenticated = true;
                self.role = Some(role);
                Reply::Status("OK")
            }
            None => Reply::error("WRONGPASS invalid username-password pair or user is disabled."),
        }
    }

    /// HELLO [protover [AUTH user pass] [SETNAME name]], checked in Redis's
    /// order (version, option syntax, credentials, authenticated) so that a
    /// refused HELLO changes nothing, as in Redis. AUTH goes to the proxy when
    /// it authenticates clients; otherwise, like SETNAME, to the client's own
    /// connection, where the protocol switches only if Redis accepts.
    async fn hello(&mut self, command: Command) -> Flow {
        let args = command.args();
        let requested = match args.get(1) {
            None => self.protocol,
            Some(version) => match parse_i64(version) {
                None => {
                    self.reply(Reply::error("ERR Protocol version is not an integer or out of range"))
                        .await;
                    return Flow::Continue;
                }
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => {
                    self.reply(Reply::error("NOPROTO unsupported protocol version")).await;
                    return Flow::Continue;
                }
            },
        };
        let mut auth = None;
        let mut setname = false;
        let mut index = 2;
        while index < args.len() {
            let more = args.len() - 1 - index;
            if args[index].eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                auth = Some((args[index + 1].clone(), args[index + 2].clone()));
                index += 3;
            } else if args[index].eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                setname = true;
                index += 2;
            } else {
                let option = String::from_utf8_lossy(&args[index]).into_owned();
                self.reply(Reply::error(format!("ERR Syntax error in HELLO option '{option}'")))
                    .await;
                return Flow::Continue;
            }
        }
        let proxy_auth = self.shared.auth.required();
        if proxy_auth {
            match &auth {
                Some((user, password)) => {
                    if let Reply::Error(message) = self.check_credentials(Some(user), password) {
                        self.reply(Reply::Error(message)).await;
                        return Flow::Continue;
                    }
                }
                None if !self.authenticated => {
                    self.reply(Reply::error(
                        "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time",
                    ))
                    .await;
                    return Flow::Continue;
                }
                None => {}
            }
        }
        // What goes upstream: the command without credentials the proxy
        // checked itself.
        let forwarded = if proxy_auth && auth.is_some() {
            let mut kept = Vec::with_capacity(args.len());
            let mut index = 0;
            while index < args.len() {
                if index >= 2 && args[index].eq_ignore_ascii_case(b"AUTH") {
                    index += 3;
                    continue;
                }
                kept.push(args[index].clone());
                index += 1;
            }
            Command::from_args(kept)
        } else {
            command
        };
        let needs_own_connection = setname || (auth.is_some() && !proxy_auth) || self.dedicated.is_some();
        if !needs_own_connection {
            // Nothing left for Redis to refuse. A pooled connection of the
            // requested protocol answers, so the reply is Redis's own map
            // (its `id` is the pooled connection's).
            self.protocol = requested;
            return self.forward(self.pooled_lane(), forwarded).await;
        }
        // Redis may refuse (credentials, a name with spaces): wait for its
        // answer before switching. HELLO is rare; the round trip is cheap.
        if let Err(error) = self.open_dedicated().await {
            self.reply(Reply::error(error.client_message())).await;
            return Flow::Continue;
        }
        match self.forward_and_wait(forwarded).await {
            Ok(reply) => {
                if !matches!(reply.first(), Some(b'-') | Some(b'!')) {
                    self.protocol = requested;
                }
                self.reply_bytes(reply).await;
                Flow::Continue
            }
            Err(error) => {
                self.reply(Reply::error(error.client_message())).await;
                Flow::Stop
            }
        }
    }

    /// Sends one command on the client's own connection, after everything
    /// before it, and waits for its reply.
    async fn forward_and_wait(&mut self, command: Command) -> Result<Bytes, UpstreamError> {
        self.flush().await;
        self.enter_lane(Lane::Dedicated).await;
        let connection = match &self.dedicated {
            Some(connection) if !connection.is_closed() => connection.clone(),
            _ => return Err(UpstreamError::lost()),
        };
        connection
            .send(command.wire().clone(), 1)
            .await
            .await
            .unwrap_or_else(|_| Err(UpstreamError::lost()))
    }

    /// `PTTL` of the name Redis stores the client's `key` under now.
    fn pttl_of(&self, key: &[u8]) -> Bytes {
        match &self.shared.versions {
            Some(versions) => pttl_request(&versions.stored(key)),
            None => pttl_request(key),
        }
    }

    /// Whether a read of `key` may go to an old version without migrating
    /// it (then L1 does not fill from it: its TTL is another name's).
    fn reads_unmigrated(&self, key: &[u8]) -> bool {
        self.shared
            .versions
            .as_ref()
            .is_some_and(|versions| versions.reads_unmigrated(key))
    }

    /// The client's own connection when it has one, else its pool's.
    fn own_lane(&self) -> Lane {
        if self.dedicated.is_some() {
            Lane::Dedicated
        } else {
            self.pooled_lane()
        }
    }

    /// With `[auth]` on, whether this client is not authenticated as a user
    /// with the admin role (what changes the proxy's state needs).
    fn lacks_admin(&self) -> bool {
        self.shared.auth.required() && self.role != Some(Role::Admin)
    }

    fn pooled_lane(&self) -> Lane {
        Lane::Pooled {
            db: self.db,
            protocol: self.protocol,
        }
    }

    /// Moves the client to its own upstream connection if it has none yet,
    /// then forwards.
    async fn forward_dedicated(&mut self, command: Command) -> Flow {
        if let Err(error) = self.open_dedicated().await {
            if command.is("MULTI") {
                // Redis never saw it: no transaction started.
                self.in_transaction = false;
                self.db_before_transaction = None;
            }
            self.reply(Reply::error(error.client_message())).await;
            return Flow::Continue;
        }
        self.forward(Lane::Dedicated, command).await
    }

    async fn open_dedicated(&mut self) -> Result<(), UpstreamError> {
        if self.dedicated.is_some() {
            return Ok(());
        }
        let options = ConnectOptions {
            db: self.db,
            protocol: self.protocol,
            name: None,
            kind: ConnectionKind::Dedicated,
            timeout: Duration::from_millis(self.shared.config.pool.connect_timeout_ms),
            // Blocking commands, MULTI and subscribers wait here by design.
            reply_timeout: None,
        };
        let connection = self
            .shared
            .pools
            .connect_own(options)
            .await
            .inspect_err(|_| self.shared.stats.upstream_error())?;
        self.dedicated = Some(connection);
        Ok(())
    }

    /// Adds a command to the batch for `lane`, sending the previous batch
    /// first if it was for another lane.
    async fn forward(&mut self, lane: Lane, mut command: Command) -> Flow {
        // The read's keys as the client named them, if versioning may
        // rename them.
        let read = self.pending_read.take();
        if let Some(read) = read
            && self.shared.versions.is_some()
        {
            self.note_read_keys(read, &command);
        }
        let mut migration = None;
        let mut key_reply = None;
        let mut refused = None;
        if let Some(versions) = self.shared.versions.clone() {
            match self.rewrite_keys(&versions, lane, &mut command).await {
                Ok(Rewrite::Forward(found, reply)) => (migration, key_reply) = (found, reply),
                Ok(Rewrite::Answered(mut reply)) => {
                    if let (Some(compression), Some(decode)) = (&self.shared.compression, self.pending_decode.take()) {
                        let decoded = decode_batch(compression, &[(0, decode)], Ok(reply.clone()));
                        reply = decoded.unwrap_or(reply);
                    }
                    if let Some(how) = level_read(&command) {
                        let took = self.read_started.elapsed();
                        let work = LevelWork {
                            first: Some((0, how)),
                            ..LevelWork::default()
                        };
                        count_levels(&self.shared.stats.levels, &work, &reply, took);
                    }
                    if let (Some(patterns), Some(read)) = (&self.shared.patterns, read) {
                        let mut events = patterns.batch();
                        self.hear(&mut events, read, 0, None);
                        settle(&mut events, &reply, elapsed_us(self.read_started));
                        patterns.send(events);
                    }
                    self.reply_bytes(reply).await;
                    return Flow::Continue;
                }
                Err(refusal) if self.in_transaction => {
                    // Redis must refuse something too, or EXEC would run the
                    // rest of the transaction.
                    command = Command::from_args(vec![Bytes::from_static(b"AURACACHE.REFUSED")]);
                    refused = Some(refusal);
                }
                Err(refusal) => {
                    self.reply_bytes(refusal).await;
                    return Flow::Continue;
                }
            }
        }
        if let Some(found) = migration.take_if(|_| lane == Lane::Dedicated) {
            // The client's own connection may be in MULTI, blocked next, or
            // authenticated as a user without scripts: its migrations run
            // first on a pooled connection, and a failed one stops the command.
            if let Err(failure) = self.migrate_now(&found).await {
                if !self.in_transaction {
                    self.reply_bytes(failure).await;
                    return Flow::Continue;
                }
                command = Command::from_args(vec![Bytes::from_static(b"AURACACHE.REFUSED")]);
                refused = Some(failure);
            }
        }
        if self.batch_lane != Some(lane) {
            self.flush().await;
            self.batch_lane = Some(lane);
        }
        self.flush_ready().await;
        // Inside MULTI, Redis answers QUEUED now and the value in EXEC's
        // array; MULTI and WATCH there run at once and are not in it.
        let queued = self.in_transaction && !command.is("MULTI") && !command.is("WATCH") && refused.is_none();
        if let Some(migration) = migration {
            // Runs just before the command, on the same connection; its
            // reply is not the client's.
            self.append(&migration.request(MIGRATE_SCRIPT));
            let at = self.batch_replies - 1;
            self.batch_hidden.push(at);
            self.batch_versions.push((at, VersionWork::Migrated(migration, at + 1)));
        }
        self.append(command.wire());
        self.forwarded += 1;
        if !queued {
            // (A transaction's replies come in EXEC's array: not counted.)
            match level_read(&command) {
                Some(read) => self.batch_levels.read(self.batch_replies - 1, read),
                None if self
                    .client_writes
                    .take()
                    .unwrap_or_else(|| WriteTable::builtin().flags_write(command.name())) =>
                {
                    self.batch_levels.writes += 1
                }
                None => {}
            }
        }
        if let Some(read) = read {
            let mut heard = std::mem::take(&mut self.heard);
            let unrenamed = self.shared.versions.is_none().then_some(&command);
            self.hear(&mut heard, read, self.batch_replies - 1, unrenamed);
            self.heard = heard;
        }
        if let Some(refusal) = refused {
            self.batch_versions
                .push((self.batch_replies - 1, VersionWork::Map(KeyReply::Refused(refusal))));
        } else if self.shared.versions.is_some() {
            let moves = std::mem::take(&mut self.exec_moves) || versions::moves_databases(command.name());
            if moves && queued {
                self.transaction_moves = true;
            } else if moves {
                self.batch_versions.push((self.batch_replies - 1, VersionWork::Forget));
            }
        }
        self.batch_l1.writes.append(&mut self.current_writes);
        self.batch_count += 1;
        let index = self.batch_replies - 1;
        let decode = self.pending_decode.take();
        if queued {
            // (Kept only where compression will use them at EXEC.)
            if self.shared.compression.is_some() {
                self.queued_decodes.push(match decode {
                    Some(Decode::One(how, key)) => Some((how, key)),
                    _ => None,
                });
            }
            if self.shared.versions.is_some() {
                self.queued_versions.push(key_reply);
            }
        } else {
            if let Some(decode) = decode {
                self.batch_decodes.push((index, decode));
            }
            if let Some(how) = key_reply {
                self.batch_versions.push((index, VersionWork::Map(how)));
            }
        }
        if let Some(transaction) = self.pending_versions.take()
            && transaction.iter().any(Option::is_some)
        {
            self.batch_versions
                .push((index, VersionWork::Map(KeyReply::Exec(transaction))));
        }
        Flow::Continue
    }

    /// Key versioning: the command's keys rewritten to their stored names
    /// (reads of namespaces that do not migrate pointed at the version
    /// that has the key, which costs a round trip), the migration to run
    /// before it, and how its reply names keys. Err: the reply refusing it.
    async fn rewrite_keys(
        &mut self,
        versions: &Versioning,
        lane: Lane,
        command: &mut Command,
    ) -> Result<Rewrite, Bytes> {
        if let Err(error) = command.decode_args() {
            return Err(Reply::error(format!("ERR {error}")).encode(self.protocol));
        }
        let watch_in_transaction = self.in_transaction && command.is("WATCH");
        let mut rewritten = versions
            .rewrite(command.args(), self.in_transaction, self.db)
            .map_err(|refusal| Reply::Error(refusal.0).encode(self.protocol))?;
        if rewritten.unknown {
            // Redis may know it now (a module loaded since start-up).
            rewritten = self.learn_command(versions, command).await?;
        }
        if let Some(positions) = rewritten.resolve.take() {
            let args = rewritten.args.take().unwrap_or_else(|| command.args().to_vec());
            // A write may move the key between the look-up and the read:
            // the read stands only if the old names still exist after it.
            let pooled = Lane::Pooled {
                db: self.db,
                protocol: Protocol::Resp2,
            };
            let upstream_error = |error: UpstreamError, protocol| Reply::error(error.client_message()).encode(protocol);
            for _ in 0..8 {
                // Asked with the proxy's credentials (the client's own may not
                // run scripts).
                let reply = self
                    .call_now(pooled, rewritten.migration.request(versions::FIND_SCRIPT), 1)
                    .await
                    .map_err(|error| upstream_error(error, self.protocol))?;
                if reply.first() == Some(&b'-') {
                    return Err(reply);
                }
                let found = versions::integers(&reply);
                let (mut pointed, mut migration) = (args.clone(), rewritten.migration.clone());
                let old_names = migration.apply_found(&found, &mut pointed, &positions);
                if old_names.is_empty() {
                    rewritten.migration = migration;
                    rewritten.args = Some(pointed);
                    break;
                }
                // Any other keys of the command migrate first, as usual.
                let mut request = BytesMut::new();
                let migrates = !migration.is_empty();
                if migrates {
                    request.extend_from_slice(&migration.request(MIGRATE_SCRIPT));
                }
                request.extend_from_slice(Command::from_args(pointed).wire());
                let mut exists = vec![Bytes::from_static(b"EXISTS")];
                exists.extend(old_names.iter().map(|(name, _)| name.clone()));
                request.extend_from_slice(Command::from_args(exists).wire());
                let count = 2 + usize::from(migrates);
                let replies = self
                    .call_now(lane, request.freeze(), count)
                    .await
                    .map_err(|error| upstream_error(error, self.protocol))?;
                let starts = frame_starts(&replies, count);
                if starts.len() < count + 1 {
                    return Err(upstream_error(UpstreamError::lost(), self.protocol));
                }
                let first = usize::from(migrates);
                if migrates && !migration.count(&replies[starts[0]..starts[1]]) {
                    let message = String::from_utf8_lossy(&replies[starts[0] + 1..starts[1]])
                        .trim_end()
                        .to_string();
                    return Err(
                        Reply::error(format!("ERR auracache: version migration failed: {message}"))
                            .encode(self.protocol),
                    );
                }
                let still = versions::integers(&replies[starts[first + 1]..starts[first + 2]]);
                if still.first().is_some_and(|count| *count == old_names.len() as i64) {
                    for (_, namespace) in &old_names {
                        namespace.fallback_hits.fetch_add(1, Ordering::Relaxed);
                    }
                    let reply = replies.slice(starts[first]..starts[first + 1]);
                    let mapped = rewritten.reply.as_ref().and_then(|how| versions.map_reply(how, &reply));
                    return Ok(Rewrite::Answered(mapped.unwrap_or(reply)));
                }
            }
            // Still racing writers after a few tries: migrate like a plain read.
            if rewritten.args.is_none() {
                rewritten.args = Some(args);
            }
        }
        if let Some(args) = rewritten.args {
            *command = Command::from_args(args);
        }
        // Redis refuses WATCH inside MULTI; nothing of it is queued.
        let migration = (!rewritten.migration.is_empty() && !watch_in_transaction).then_some(rewritten.migration);
        Ok(Rewrite::Forward(migration, rewritten.reply))
    }

    /// Runs a migration now on a pooled connection (the proxy's own
    /// credentials); Err: the client's error if Redis refused it.
    async fn migrate_now(&mut self, migration: &Migration) -> Result<(), Bytes> {
        // After the client's earlier commands (a SWAPDB or FLUSHDB before it
        // changes what there is to migrate).
        self.settle().await;
        let lane = Lane::Pooled {
            db: self.db,
            protocol: Protocol::Resp2,
        };
        let protocol = self.protocol;
        let failed = |message: String| {
            Reply::error(format!("ERR auracache: version migration failed: {message}")).encode(protocol)
        };
        let connection = self
            .connection_for(lane)
            .await
            .map_err(|error| Reply::error(error.client_message()).encode(self.protocol))?;
        let reply = connection
            .send(migration.request(MIGRATE_SCRIPT), 1)
            .await
            .await
            .unwrap_or_else(|_| Err(UpstreamError::lost()))
            .map_err(|error| Reply::error(error.client_message()).encode(self.protocol))?;
        if migration.count(&reply) {
            Ok(())
        } else {
            Err(failed(String::from_utf8_lossy(&reply[1..]).trim_end().to_string()))
        }
    }

    /// Sends what is batched and waits until Redis has answered everything
    /// this client sent.
    async fn settle(&mut self) {
        self.flush().await;
        if self.answered.load(Ordering::Acquire) != self.sent_batches {
            let (done, wait) = oneshot::channel();
            if self.slots.send(Slot::Barrier(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
    }

    /// Sends one request on `lane` after everything before it and waits
    /// for its reply.
    async fn call_now(&mut self, lane: Lane, request: Bytes, replies: usize) -> Result<Bytes, UpstreamError> {
        self.flush().await;
        self.enter_lane(lane).await;
        let connection = self.connection_for(lane).await?;
        connection
            .send(request, replies)
            .await
            .await
            .unwrap_or_else(|_| Err(UpstreamError::lost()))
    }

    /// RANDOMKEY under key versioning: Redis's random key, mapped back;
    /// drawn again (a bounded number of times) while it is one no client
    /// key reaches.
    async fn random_key(&mut self, versions: &Versioning) -> Flow {
        let lane = self.own_lane();
        let request = Command::from_args(vec![Bytes::from_static(b"RANDOMKEY")])
            .wire()
            .clone();
        for _ in 0..64 {
            let reply = match self.call_now(lane, request.clone(), 1).await {
                Ok(reply) => reply,
                Err(error) => {
                    self.reply(Reply::error(error.client_message())).await;
                    return Flow::Continue;
                }
            };
            let Some(stored) = versions::bulk(&reply) else {
                // Nil (no keys) or an error: Redis's answer as it is.
                self.reply_bytes(reply).await;
                return Flow::Continue;
            };
            if let versions::Mapped::Visible(key) = versions.client_key(stored) {
                let key = Bytes::copy_from_slice(key);
                self.reply(Reply::Bulk(key)).await;
                return Flow::Continue;
            }
        }
        // Nearly every key is hidden (an old version before its cleanup):
        // the first visible key a SCAN finds, nil only if there is none.
        let mut cursor = Bytes::from_static(b"0");
        loop {
            let request = Command::from_args(vec![
                Bytes::from_static(b"SCAN"),
                cursor.clone(),
                Bytes::from_static(b"COUNT"),
                Bytes::from_static(b"1000"),
            ]);
            let reply = match self.call_now(lane, request.wire().clone(), 1).await {
                Ok(reply) => reply,
                Err(error) => {
                    self.reply(Reply::error(error.client_message())).await;
                    return Flow::Continue;
                }
            };
            let Some((next, keys)) = versions::scan_page(&reply) else {
                self.reply_bytes(reply).await;
                return Flow::Continue;
            };
            let visible = keys.iter().find_map(|stored| match versions.client_key(stored) {
                versions::Mapped::Visible(key) => Some(Bytes::copy_from_slice(key)),
                versions::Mapped::Hidden => None,
            });
            if let Some(key) = visible {
                self.reply(Reply::Bulk(key)).await;
                return Flow::Continue;
            }
            if next.as_ref() == b"0" {
                self.reply(Reply::Nil).await;
                return Flow::Continue;
            }
            cursor = next;
        }
    }

    /// Adds bytes to the batch; a batch of one command stays its own bytes.
    fn append(&mut self, wire: &Bytes) {
        if self.batch_replies == 0 {
            self.batch_first = Some(wire.clone());
        } else {
            if let Some(first) = self.batch_first.take() {
                self.batch.extend_from_slice(&first);
            }
            self.batch.extend_from_slice(wire);
        }
        self.batch_replies += 1;
    }

    /// A read that L1 may answer: a hit is a local reply; a miss is forwarded
    /// with a hidden PTTL so the fill knows how long the value may live.
    async fn read_through_l1(&mut self, l1: &L1, command: Command, shape: Shape) -> Flow {
        let Some(key) = command.first_arg() else {
            return self.forward(self.pooled_lane(), command).await;
        };
        let caught_up = self.caught_up();
        let key = key.clone();
        if self.reads_unmigrated(&key) {
            return self.forward(self.pooled_lane(), command).await;
        }
        let cache_key = CacheKey::new(self.db, key.clone(), shape);
        let lookup = if caught_up {
            l1.store.lookup(&cache_key)
        } else {
            l1.store.lookup_to_fill(&cache_key)
        };
        match lookup {
            Lookup::Hit(reply) => {
                let reply = reply.for_protocol(self.protocol).clone();
                self.l1_answered += 1;
                self.note_l1_hit(&key, reply.len());
                self.reply_bytes(reply).await;
                Flow::Continue
            }
            // A fill of this key is on its way (perhaps in this client's own
            // batch, so send that first): share its reply. If it is voided
            // or slow, read Redis as usual.
            Lookup::Wait(mut done) => {
                self.flush().await;
                let wait = Duration::from_millis(self.shared.config.pool.connect_timeout_ms);
                let shared_reply = tokio::time::timeout(wait, done.wait_for(Option::is_some))
                    .await
                    .ok()
                    .and_then(|result| result.ok().and_then(|reply| reply.clone().flatten()));
                match shared_reply {
                    Some(reply) => {
                        let reply = reply.for_protocol(self.protocol).clone();
                        self.l1_answered += 1;
                        self.note_l1_hit(&key, reply.len());
                        self.reply_bytes(reply).await;
                        Flow::Continue
                    }
                    None => self.forward(self.pooled_lane(), command).await,
                }
            }
            Lookup::Pass | Lookup::Miss(_) if let Some(reply) = self.stale_reply(l1, &cache_key) => {
                self.l1_answered += 1;
                self.note_l1_hit(&key, reply.len());
                self.reply_bytes(reply).await;
                Flow::Continue
            }
            Lookup::Pass => self.forward(self.pooled_lane(), command).await,
            Lookup::Miss(ticket) => {
                let lane = self.pooled_lane();
                let before = self.forwarded;
                self.forward(lane, command).await;
                if self.forwarded == before {
                    // Answered without Redis (refused): nothing to fill.
                    return Flow::Continue;
                }
                let index = self.batch_replies - 1;
                let pttl = self.pttl_of(&key);
                self.append(&pttl);
                self.batch_l1.fills.push((index, ticket));
                Flow::Continue
            }
        }
    }

    /// While this client's pooled connection is down, a read that L1 would
    /// forward may be answered with an entry past its TTL, or kept since
    /// invalidations stopped, in a namespace with `serve_stale_max_secs`.
    fn stale_reply(&mut self, l1: &L1, key: &CacheKey) -> Option<Bytes> {
        if !l1.store.serves_stale() || !self.pool(self.db, self.protocol).is_down(self.id) {
            return None;
        }
        let reply = l1.store.stale(key)?;
        Some(reply.for_protocol(self.protocol).clone())
    }

    /// MGET and HMGET: what L1 holds is answered from it; only the rest
    /// goes to Redis (with hidden PTTLs for the items L1 will fill), and the
    /// reply writer merges the two in the client's order. `fixed` arguments
    /// (the name, and HMGET's key) precede the items.
    async fn multi_read_through_l1(&mut self, l1: &L1, command: Command, fixed: usize) -> Flow {
        let now = self.now();
        let caught_up = self.caught_up();
        let args = command.args();
        let hash = (fixed == 2).then(|| args[1].clone());
        let shape_of = |item: &Bytes| match hash {
            None => Shape::String,
            Some(_) => Shape::HashField(item.clone()),
        };
        let items = &args[fixed..];
        if self.shared.versions.is_some() && items.iter().chain(&hash).any(|key| self.reads_unmigrated(key)) {
            return self.forward(self.pooled_lane(), command).await;
        }
        let cached: Vec<Option<Bytes>> = items
            .iter()
            .map(|item| {
                let key = hash.as_ref().unwrap_or(item);
                let hit = caught_up
                    .then(|| l1.store.hit_at(self.db, key, &shape_of(item), now))
                    .flatten();
                hit.map(|hit| hit.for_protocol(self.protocol).clone())
            })
            .collect();
        self.l1_answered += cached.iter().flatten().count() as u64;
        let missing: Vec<Bytes> = items
            .iter()
            .zip(&cached)
            .filter(|(_, value)| value.is_none())
            .map(|(item, _)| item.clone())
            .collect();
        if self.pending_read.is_some() {
            // The items L1 answers are hits now; what Redis is asked for is
            // heard of with its reply (an HMGET is one read of its hash).
            match &hash {
                Some(hash) if missing.is_empty() => {
                    let size = cached.iter().flatten().map(Bytes::len).sum();
                    self.note_l1_hit(hash, size);
                }
                Some(_) => {
                    let values = cached.iter().flatten();
                    self.pending_read = Some(PatternRead::One(Awaited::Fields {
                        asked: missing.len() as u32,
                        cached_found: values.clone().any(|value| !is_empty_reply(value)),
                        cached_size: values.map(Bytes::len).sum::<usize>().min(u32::MAX as usize) as u32,
                    }));
                }
                None => {
                    for (item, value) in items.iter().zip(&cached) {
                        if let Some(value) = value {
                            self.l1_hit_event(item, value.len());
                        }
                    }
                    self.pending_read = Some(PatternRead::Items);
                }
            }
        }
        if missing.is_empty() {
            let mut reply = BytesMut::new();
            reply.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
            cached.iter().flatten().for_each(|value| reply.extend_from_slice(value));
            self.reply_slice(&reply).await;
            return Flow::Continue;
        }
        // Fills for the missing items L1 would keep (an item already being
        // filled, or not to be cached now, is just read).
        let mut fills = Vec::new();
        let mut pttl_keys: Vec<Bytes> = Vec::new();
        for (position, item) in missing.iter().enumerate() {
            let key = hash.as_ref().unwrap_or(item);
            let cache_key = CacheKey::new(self.db, key.clone(), shape_of(item));
            if let Lookup::Miss(ticket) = l1.store.lookup_to_fill(&cache_key) {
                // An HMGET's fields share their hash's one TTL.
                if hash.is_none() || pttl_keys.is_empty() {
                    pttl_keys.push(key.clone());
                }
                fills.push((position, ticket, pttl_keys.len() - 1));
            }
        }
        let missing_count = missing.len();
        let all_missing = missing_count == items.len();
        let lane = self.pooled_lane();
        let before = self.forwarded;
        if all_missing {
            self.forward(lane, command).await;
        } else {
            let mut forwarded = Vec::with_capacity(missing.len() + fixed);
            forwarded.extend_from_slice(&args[..fixed]);
            forwarded.extend(missing);
            self.forward(lane, Command::from_args(forwarded)).await;
        }
        if self.forwarded == before {
            // Answered without Redis (refused): nothing to merge or fill.
            return Flow::Continue;
        }
        let index = self.batch_replies - 1;
        for key in &pttl_keys {
            let pttl = self.pttl_of(key);
            self.append(&pttl);
        }
        if !all_missing || !fills.is_empty() {
            self.batch_l1.multis.push(MultiRead {
                index,
                asked: missing_count,
                cached: (!all_missing).then_some(cached),
                fills,
                pttls: pttl_keys.len(),
            });
        }
        Flow::Continue
    }

    /// Follows MULTI ... EXEC/DISCARD (and RESET) on the client's side:
    /// queued writes count from EXEC, queued decodings apply to EXEC's
    /// array, DISCARD undoes a queued SELECT.
    fn note_transaction(&mut self, command: &Command) -> Option<Boundary> {
        let name = command.name();
        // Every command passes here: most are told apart by length alone.
        if !matches!(name.len(), 4 | 5 | 7) {
            return None;
        }
        let boundary = [
            (b"MULTI".as_slice(), Boundary::Multi),
            (b"EXEC", Boundary::Exec),
            (b"DISCARD", Boundary::Discard),
            (b"RESET", Boundary::Reset),
        ]
        .into_iter()
        .find(|(word, _)| name.eq_ignore_ascii_case(word))?
        .1;
        if boundary == Boundary::Multi {
            if self.in_transaction {
                // Redis refuses a nested MULTI and goes on queueing.
                return None;
            }
            self.in_transaction = true;
            self.db_before_transaction = Some(self.db);
            return Some(boundary);
        }
        self.in_transaction = false;
        let db_before = self.db_before_transaction.take();
        if boundary == Boundary::Discard
            && let Some(db) = db_before
        {
            // A SELECT queued in the transaction never ran.
            self.db = db;
        }
        Some(boundary)
    }

    /// The compression stage: rewrites the command (values encoded, reads
    /// of part of a value turned into scripts), notes how its reply is
    /// decoded, or hands back a read-modify-write to run now.
    fn plan_compression(
        &mut self,
        compression: &Compression,
        command: &mut Command,
        boundary: Option<Boundary>,
    ) -> Result<Option<ReadModifyWrite>, ProtocolError> {
        if let Some(boundary) = boundary {
            let queued = std::mem::take(&mut self.queued_decodes);
            if boundary == Boundary::Exec && queued.iter().any(Option::is_some) {
                self.pending_decode = Some(Decode::Transaction(queued));
            }
            return Ok(None);
        }
        if !strings::covers(command.name()) {
            return Ok(None);
        }
        command.decode_args()?;
        let context = strings::Context {
            in_transaction: self.in_transaction,
            resp3: self.protocol == Protocol::Resp3,
            hashes: compression.hashes,
        };
        let mut encode = |key: &[u8], value: &[u8]| compression.encode(key, value);
        match strings::plan(command.args(), context, &mut encode) {
            Plan::Unchanged => {}
            Plan::Forward { args, decode } => {
                if let Some(how) = decode {
                    let key = command.first_arg().cloned().unwrap_or_default();
                    self.pending_decode = Some(Decode::One(how, key));
                }
                if let Some(args) = args {
                    *command = Command::from_args(args);
                }
            }
            Plan::ReadModifyWrite(rmw) => return Ok(Some(rmw)),
        }
        Ok(None)
    }

    /// APPEND/SETRANGE under compression: after everything the client sent
    /// before, on the same upstream connection, a script that answers
    /// natively for a raw value, or a read-modify-write for an envelope.
    async fn read_modify_write(&mut self, compression: &Arc<Compression>, rmw: ReadModifyWrite) -> Flow {
        self.flush().await;
        let lane = self.own_lane();
        self.enter_lane(lane).await;
        let mut upstream = match self.connection_for(lane).await {
            Ok(connection) => OneAtATime {
                connection,
                versions: self.shared.versions.clone(),
                db: self.db,
            },
            Err(error) => {
                self.shared.stats.upstream_error();
                self.reply(Reply::error(error.client_message())).await;
                return Flow::Continue;
            }
        };
        let key = rmw.key().clone();
        let reply = rmw
            .run(
                &mut upstream,
                &mut |value: &[u8]| {
                    compression
                        .encode(&key, value)
                        .unwrap_or_else(|| Bytes::copy_from_slice(value))
                },
                &mut |stored: &[u8]| compression.decode(&key, stored),
            )
            .await;
        // One write for the statistics, however many round trips it took.
        self.shared.stats.levels.writes().record(self.read_started.elapsed(), 1);
        self.reply_bytes(reply).await;
        Flow::Continue
    }

    /// A write is about to be sent: what it may change is dropped now (so
    /// this client's later reads miss) and kept from being filled until
    /// Redis has answered it (see [`BatchL1::writes`]). Writes queued in
    /// MULTI count from EXEC; DISCARD and RESET drop them.
    fn note_write(&mut self, l1: &L1, command: &mut Command, boundary: Option<Boundary>) -> Result<(), ProtocolError> {
        match boundary {
            Some(Boundary::Exec) => {
                let queued = std::mem::take(&mut self.queued_writes);
                self.current_writes.extend(queued);
                return Ok(());
            }
            Some(_) => {
                self.queued_writes.clear();
                return Ok(());
            }
            None => {}
        }
        let name = command.name();
        let by_name = l1.by_name(name);
        // What the name says is what the statistics count too (one look-up).
        self.client_writes = match by_name {
            ByName::Reads => Some(false),
            ByName::WritesFirstArgument => Some(true),
            ByName::NeedsArguments => None,
        };
        let written = match by_name {
            ByName::Reads => return Ok(()),
            ByName::WritesFirstArgument => match command.first_arg() {
                Some(key) => Written::Keys(vec![key.clone()]),
                None => return Ok(()),
            },
            ByName::NeedsArguments => {
                command.decode_args()?;
                l1.written(command)
            }
        };
        if written == Written::Nothing {
            return Ok(());
        }
        let guard = l1.write_started(self.db, written);
        if self.in_transaction {
            self.queued_writes.push(guard);
        } else {
            self.current_writes.push(guard);
        }
        Ok(())
    }

    /// Sends the pending batch upstream and queues the slot for its replies.
    async fn flush(&mut self) {
        self.flush_ready().await;
        if self.batch_replies == 0 {
            return;
        }
        let count = std::mem::take(&mut self.batch_count);
        let replies = std::mem::take(&mut self.batch_replies);
        let (l1_hook, mut edits) = match &self.shared.l1 {
            Some(l1) => std::mem::take(&mut self.batch_l1).into_parts(l1.clone()),
            None => (None, None),
        };
        let hidden = std::mem::take(&mut self.batch_hidden);
        if !hidden.is_empty() {
            edits
                .get_or_insert_with(|| {
                    Box::new(ReplyEdits {
                        hidden: Vec::new(),
                        merges: Vec::new(),
                    })
                })
                .hidden
                .extend(hidden);
        }
        // The stages a batch's replies pass on the upstream reader, in
        // order: values decoded (so L1 fills keep the originals), key names
        // mapped back, then L1's store work.
        let decodes = std::mem::take(&mut self.batch_decodes);
        let decode: Option<Hook> = match &self.shared.compression {
            Some(compression) if !decodes.is_empty() => {
                let compression = compression.clone();
                Some(Box::new(move |result| decode_batch(&compression, &decodes, result)))
            }
            _ => None,
        };
        let work = std::mem::take(&mut self.batch_versions);
        let map_back: Option<Hook> = match &self.shared.versions {
            Some(versions) if !work.is_empty() => {
                let versions = versions.clone();
                Some(Box::new(move |result| map_batch(&versions, work, result)))
            }
            _ => None,
        };
        let heard: Option<Hook> = match &self.shared.patterns {
            Some(patterns) if !self.heard.is_untouched() => {
                let mut reads = std::mem::replace(&mut self.heard, patterns.batch());
                let (patterns, started) = (patterns.clone(), self.read_started);
                Some(Box::new(move |result| {
                    match &result {
                        Ok(bytes) => settle(&mut reads, bytes, elapsed_us(started)),
                        // No replies, no accesses; what was sampled out still counts.
                        Err(_) => reads.settle(0, |_, _| None),
                    }
                    patterns.send(reads);
                    result
                }))
            }
            _ => None,
        };
        let hook = then(then(then(decode, map_back), heard), l1_hook);
        let levels = LevelWork {
            started: Some(self.read_started),
            ..std::mem::take(&mut self.batch_levels)
        };
        let bytes = match self.batch_first.take() {
            Some(only) => only,
            None => self.batch.split().freeze(),
        };
        let Some(lane) = self.batch_lane else {
            return;
        };
        self.enter_lane(lane).await;
        let slot = match self.connection_for(lane).await {
            Ok(connection) => {
                self.output.wait_for_room(self.sent_replies, replies as u64).await;
                self.sent_replies += replies as u64;
                self.batch_most = self.output.window().min(MAX_BATCH_COMMANDS as u64) as usize;
                self.sent_batches += 1;
                Slot::Pending {
                    replies: connection
                        .send_with(bytes, replies, hook, Some(self.output.clone()))
                        .await,
                    count,
                    protocol: self.protocol,
                    edits,
                    levels,
                }
            }
            Err(error) => {
                self.shared.stats.upstream_error();
                // Dropped unsent: its fills are given up, its writes end.
                drop(hook);
                let bytes = repeat_error(&error, count, self.protocol);
                self.output.add(bytes.len());
                Slot::Ready(bytes)
            }
        };
        let _ = self.slots.send(slot).await;
        if lane == Lane::Dedicated && self.dedicated.as_ref().is_none_or(|c| c.is_closed()) {
            self.lost_own_connection = true;
            let _ = self.slots.send(Slot::Close).await;
        }
    }

    /// Before the first batch on a different upstream connection, waits for
    /// the replies owed on the previous one: Redis must run this client's
    /// commands in the order they were sent.
    async fn enter_lane(&mut self, lane: Lane) {
        if self.last_lane.is_some_and(|last| last != lane) {
            let (done, wait) = oneshot::channel();
            if self.slots.send(Slot::Barrier(done)).await.is_ok() {
                let _ = wait.await;
            }
        }
        self.last_lane = Some(lane);
    }

    /// The upstream connection of `lane`: the client's own, or its pooled one.
    async fn connection_for(&mut self, lane: Lane) -> Result<UpstreamConnection, UpstreamError> {
        match lane {
            Lane::Dedicated => match &self.dedicated {
                Some(connection) if !connection.is_closed() => Ok(connection.clone()),
                _ => Err(UpstreamError::lost()),
            },
            Lane::Pooled { db, protocol } => self.pool(db, protocol).connection(self.id).await,
        }
    }

    fn pool(&mut self, db: u32, protocol: Protocol) -> Arc<Pool> {
        match &self.pool {
            Some((cached_db, cached_protocol, pool)) if *cached_db == db && *cached_protocol == protocol => {
                pool.clone()
            }
            _ => {
                let pool = self.shared.pools.get(db, protocol);
                self.pool = Some((db, protocol, pool.clone()));
                pool
            }
        }
    }

    /// Switches the client to piping: from now on its requests are written
    /// to its own connection and every byte Redis sends is copied back.
    async fn start_piping(&mut self, command: Command) -> Flow {
        self.flush().await;
        if let Err(error) = self.open_dedicated().await {
            self.reply(Reply::error(error.client_message())).await;
            return Flow::Continue;
        }
        self.enter_lane(Lane::Dedicated).await;
        let (sink, piped) = mpsc::channel(64);
        let Some(connection) = &self.dedicated else {
            return Flow::Stop;
        };
        let mapper = self.shared.versions.clone().map(|versions| {
            versions::PipeMapper::new(versions, self.subscriptions.clone(), self.protocol == Protocol::Resp3)
        });
        if connection.pipe_to(sink).await.is_err() || self.slots.send(Slot::Pipe(piped, mapper)).await.is_err() {
            self.reply(Reply::error(UpstreamError::lost().client_message())).await;
            return Flow::Stop;
        }
        self.piped = true;
        self.forward_piped(command).await
    }

    async fn forward_piped(&mut self, mut command: Command) -> Flow {
        if let Some(versions) = self.shared.versions.clone()
            && let Err(refusal) = self.rewrite_piped(&versions, &mut command).await
        {
            // Sent through Redis, which refuses it too: its error keeps its
            // place among the piped replies (the proxy's text replaces
            // Redis's), and inside MULTI it makes EXEC abort.
            command = Command::from_args(vec![Bytes::from_static(b"AURACACHE.REFUSED")]);
            self.subscriptions.expect_reply(Some(KeyReply::Refused(refusal)));
        }
        let Some(connection) = &self.dedicated else {
            return Flow::Stop;
        };
        match connection.send_raw(command.wire().clone()).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        }
    }

    /// Key versioning for a piped client: keyspace channels and patterns
    /// rewritten (and remembered, so their confirmations map back), BCAST
    /// prefixes rewritten, other commands' keys rewritten, migrations run
    /// first on a pooled connection (their replies could not be told apart
    /// on the pipe), and each reply the command will get noted in order
    /// for `PipeMapper`. Err: the refusal to answer in its place.
    async fn rewrite_piped(&mut self, versions: &Versioning, command: &mut Command) -> Result<(), Bytes> {
        if let Err(error) = command.decode_args() {
            return Err(Reply::error(format!("ERR {error}")).encode(self.protocol));
        }
        let subscriptions = self.subscriptions.clone();
        let is = |name: &str| command.is(name);
        if is("RESET") {
            self.protocol = Protocol::Resp2;
            subscriptions.reset();
            subscriptions.expect_reply(None);
            return Ok(());
        }
        if is("HELLO")
            && let Some(version) = command.arg(1).and_then(parse_i64)
        {
            // Taken as accepted: a refused HELLO changes nothing, and its
            // error reply is mapped like any other.
            if version == 2 || version == 3 {
                self.protocol = if version == 3 { Protocol::Resp3 } else { Protocol::Resp2 };
                subscriptions.set_resp3(version == 3);
            }
        }
        let patterns = is("PSUBSCRIBE") || is("PUNSUBSCRIBE");
        if patterns || is("SUBSCRIBE") || is("UNSUBSCRIBE") || is("SSUBSCRIBE") || is("SUNSUBSCRIBE") {
            if command.argc() == 1 && !is("UNSUBSCRIBE") && !is("PUNSUBSCRIBE") && !is("SUNSUBSCRIBE") {
                // Refused by Redis for its arity: that is a reply.
                subscriptions.expect_reply(None);
                return Ok(());
            }
            if is("SSUBSCRIBE") || is("SUNSUBSCRIBE") {
                return Ok(());
            }
            let mut args = command.args().to_vec();
            let mut changed = false;
            for arg in args.iter_mut().skip(1) {
                if let Some(stored) = versions.keyspace_channel(arg, patterns) {
                    subscriptions.remember(stored.clone(), arg.clone());
                    *arg = stored;
                    changed = true;
                }
            }
            if changed {
                *command = Command::from_args(args);
            }
            return Ok(());
        }
        if is("CLIENT") && command.arg(1).is_some_and(|sub| sub.eq_ignore_ascii_case(b"TRACKING")) {
            self.rewrite_tracking(versions, command);
            subscriptions.expect_reply(None);
            return Ok(());
        }
        let mut rewritten = versions
            .rewrite(command.args(), true, self.db)
            .map_err(|refusal| Reply::Error(refusal.0).encode(self.protocol))?;
        if rewritten.unknown {
            rewritten = self.learn_command(versions, command).await?;
        }
        if !rewritten.migration.is_empty() {
            self.migrate_now(&rewritten.migration).await?;
        }
        let unpairs =
            is("MONITOR") || (is("CLIENT") && command.arg(1).is_some_and(|sub| sub.eq_ignore_ascii_case(b"REPLY")));
        if unpairs {
            // Replies stop pairing with commands: none is mapped from here on.
            subscriptions.stop_pairing();
        } else if is("EXEC") {
            let queued = std::mem::take(&mut self.queued_versions);
            subscriptions.expect_reply(Some(KeyReply::Exec(queued)));
        } else if is("MULTI") || is("DISCARD") {
            self.queued_versions.clear();
            subscriptions.expect_reply(None);
        } else if self.in_transaction && !is("WATCH") {
            // QUEUED now; its element of EXEC's array is mapped at EXEC.
            self.queued_versions.push(rewritten.reply);
            subscriptions.expect_reply(None);
        } else {
            subscriptions.expect_reply(rewritten.reply);
        }
        if let Some(args) = rewritten.args {
            *command = Command::from_args(args);
        }
        Ok(())
    }

    /// CLIENT TRACKING: BCAST prefixes of a versioned namespace name its
    /// stored keys; the client's invalidations are limited to its own
    /// prefixes. Prefixes that overlap each other are left for Redis to
    /// refuse.
    fn rewrite_tracking(&mut self, versions: &Versioning, command: &mut Command) {
        let args = command.args();
        if args.get(2).is_some_and(|arg| arg.eq_ignore_ascii_case(b"OFF")) {
            self.subscriptions.track_prefixes(Vec::new(), true);
            return;
        }
        let mut kept = Vec::with_capacity(args.len());
        let mut prefixes = Vec::new();
        let mut index = 0;
        while index < args.len() {
            if index >= 2 && args[index].eq_ignore_ascii_case(b"PREFIX") && index + 1 < args.len() {
                prefixes.push(args[index + 1].clone());
                index += 2;
            } else {
                kept.push(args[index].clone());
                index += 1;
            }
        }
        let overlapping = prefixes
            .iter()
            .enumerate()
            .any(|(i, a)| prefixes.iter().enumerate().any(|(j, b)| i != j && a.starts_with(b)));
        if prefixes.is_empty() || overlapping {
            return;
        }
        let stored = versions.stored_tracking_prefixes(&prefixes);
        if stored != prefixes {
            for prefix in stored {
                kept.extend([Bytes::from_static(b"PREFIX"), prefix]);
            }
            *command = Command::from_args(kept);
        }
        self.subscriptions.track_prefixes(prefixes, false);
    }

    /// A command the upstream's table lacks: asked of Redis (`COMMAND
    /// INFO`, on a pooled connection: the client's own may be in MULTI),
    /// learned, and rewritten again; refused if its keys still cannot be
    /// placed, forwarded as it is if Redis does not know it either.
    async fn learn_command(&mut self, versions: &Versioning, command: &Command) -> Result<versions::Rewritten, Bytes> {
        let name = command.args()[0].clone();
        let refuse = |refusal: versions::Refusal, protocol| Reply::Error(refusal.0).encode(protocol);
        if versions.recently_unknown(&name) {
            // Asked a moment ago (a typo sent in a loop): forward it as it is.
            let mut unknown = versions
                .rewrite(command.args(), self.in_transaction, self.db)
                .map_err(|refusal| refuse(refusal, self.protocol))?;
            unknown.unknown = false;
            return Ok(unknown);
        }
        let info = Command::from_args(vec![
            Bytes::from_static(b"COMMAND"),
            Bytes::from_static(b"INFO"),
            name.clone(),
        ]);
        let pooled = Lane::Pooled {
            db: self.db,
            protocol: Protocol::Resp2,
        };
        let reply = self
            .call_now(pooled, info.wire().clone(), 1)
            .await
            .map_err(|error| Reply::error(error.client_message()).encode(self.protocol))?;
        let Ok(table) = crate::keys::table::KeyTable::from_command_reply(&reply) else {
            versions.note_unknown(&name);
            let mut unknown = versions
                .rewrite(command.args(), self.in_transaction, self.db)
                .map_err(|refusal| refuse(refusal, self.protocol))?;
            unknown.unknown = false;
            return Ok(unknown);
        };
        versions.learn(table);
        let rewritten = versions
            .rewrite(command.args(), self.in_transaction, self.db)
            .map_err(|refusal| refuse(refusal, self.protocol))?;
        if rewritten.unknown {
            return Err(Reply::error(format!(
                "ERR auracache: {} has keys whose positions are unknown; it is refused while key versioning is on",
                String::from_utf8_lossy(&name).to_uppercase()
            ))
            .encode(self.protocol));
        }
        Ok(rewritten)
    }

    /// Queues a reply the proxy produced, after everything before it.
    async fn reply(&mut self, reply: Reply) {
        let bytes = reply.encode(self.protocol);
        self.reply_bytes(bytes).await;
    }

    /// Queues reply bytes as they are, after everything before them. Large
    /// ones (L1 hits of big values) go as their own slot, uncopied.
    async fn reply_bytes(&mut self, bytes: Bytes) {
        if bytes.len() < LARGE_LOCAL_REPLY {
            return self.reply_slice(&bytes).await;
        }
        if self.batch_replies > 0 {
            self.flush().await;
        }
        self.flush_ready().await;
        self.output.add(bytes.len());
        let _ = self.slots.send(Slot::Ready(bytes)).await;
    }

    /// Consecutive local replies (L1 hits in a pipeline) share one slot.
    async fn reply_slice(&mut self, bytes: &[u8]) {
        if self.batch_replies > 0 {
            self.flush().await;
        }
        self.ready.extend_from_slice(bytes);
        if self.ready.len() >= MAX_READY_BYTES {
            self.flush_ready().await;
        }
    }

    /// Sends the local replies gathered so far as one slot.
    async fn flush_ready(&mut self) {
        if !self.ready.is_empty() {
            let bytes = self.ready.split().freeze();
            self.output.add(bytes.len());
            let _ = self.slots.send(Slot::Ready(bytes)).await;
        }
    }
}

/// What `PROXY CONFIG SET` changes in a running proxy (applied in
/// `Session::config_set`: each stage keeps what it changes in atomics or
/// behind a lock only its fill or write side reads).
const RUNTIME_SETTINGS: &[&str] = &[
    "preload.interval_minutes",
    "preload.priority_threshold",
    "preload.max_concurrent",
    "preload.max_keys_per_run",
    "preload.miss_channel",
    "preload.peak_share",
    "preload.busy_reads_per_sec",
    "patterns.max_events_per_sec",
    "patterns.min_access_count",
    "compression.enabled",
    "compression.threshold",
    "compression.algorithm",
    "compression.level",
    "compression.min_savings",
    "memory_cache.default_ttl",
    "memory_cache.nil_ttl",
    "memory_cache.size_per_namespace",
    "memory_cache.max_bytes",
    "memory_cache.max_entry_bytes",
];

/// How long `PROXY PRELOAD RUN` waits for its run.
const PRELOAD_RUN_WAIT: Duration = Duration::from_secs(300);

/// `PROXY HELP`.
const PROXY_HELP: &str = "PROXY <subcommand> [<arg> ...]. Subcommands are:\r\n\
PATTERNS [COUNT <n>] [NAMESPACE <ns>] [MINPRIORITY <p>]\r\n    The keys the pattern engine ranks highest (default 20): class, predictability, priority, next expected read, hourly profile.\r\n\
PATTERNS PEAKS\r\n    Reads per hour of the day and the peak hours (1.5 times the mean or more).\r\n\
PATTERNS SAVE\r\n    Write the pattern model to patterns.state_path now.\r\n\
PRELOAD STATUS\r\n    The preloader: last and next run, keys selected, fetched, already cached, absent, deferred, errors; preloaded entries hit and wasted.\r\n\
PRELOAD RUN\r\n    Run the preloader now and answer its status when it is over.\r\n\
STATS [RESET]\r\n    INFO cache's fields as a map; RESET sets every counter back to zero (gauges stay).\r\n\
CONFIG GET <pattern>\r\n    The proxy's settings whose dotted names match the glob (secrets hidden), as CONFIG GET answers Redis's.\r\n\
CONFIG SET <name> <value>\r\n    Change a setting in the running proxy: the preloader's; the pattern engine's budget and minimum reads; compression.enabled, threshold, algorithm, level, min_savings (for values written from then on; compression must have been on at start-up); memory_cache.default_ttl, nil_ttl (for entries stored from then on), size_per_namespace, max_bytes, max_entry_bytes (at once). Others are refused, named.\r\n\
EXPLAIN <key>\r\n    Where a key lives: its stored name and version, type, TTL, stored size and codec in Redis, what L1 holds of it and how long, its pattern class and priority.\r\n\
FLUSHL1 [<namespace>]\r\n    Drop what L1 holds (of one namespace); Redis is untouched. Answers the keys dropped.\r\n\
VERSION STATUS [<namespace>]\r\n    Key versioning per namespace: versions, keys migrated, fallback hits, keys per version, cleanup progress.\r\n\
VERSION CLEANUP <namespace> [KEEP <n>]\r\n    Remove the namespace's keys in versions older than its newest n (default 2), by SCAN and UNLINK in small batches.\r\n\
HELP\r\n    This text.\r\n";

/// One command at a time on a connection: what a read-modify-write sends
/// (its keys rewritten and migrated first, under key versioning).
struct OneAtATime {
    connection: UpstreamConnection,
    versions: Option<Arc<Versioning>>,
    /// The client's database (where a migration runs).
    db: u32,
}

impl OneAtATime {
    async fn send(&self, request: Bytes) -> Result<Bytes, String> {
        self.connection
            .send(request, 1)
            .await
            .await
            .unwrap_or_else(|_| Err(UpstreamError::lost()))
            .map_err(|error| error.client_message())
    }
}

impl strings::Upstream for OneAtATime {
    async fn call(&mut self, args: Vec<Bytes>) -> Result<Bytes, String> {
        let args = match &self.versions {
            Some(versions) => {
                let rewritten = versions.rewrite(&args, true, self.db).map_err(|refusal| refusal.0)?;
                if !rewritten.migration.is_empty() {
                    let reply = self.send(rewritten.migration.request(MIGRATE_SCRIPT)).await?;
                    if !rewritten.migration.count(&reply) {
                        let message = String::from_utf8_lossy(&reply[1..]).trim_end().to_string();
                        return Err(format!("ERR auracache: version migration failed: {message}"));
                    }
                }
                rewritten.args.unwrap_or(args)
            }
            None => args,
        };
        self.send(Command::from_args(args).wire().clone()).await
    }
}

/// A batch's replies with enveloped values decoded (on the upstream
/// reader, before L1 fills and before the client's writer sees them).
/// Replies without the magic anywhere are handed on untouched.
fn decode_batch(compression: &Compression, decodes: &[(usize, Decode)], result: BatchResult) -> BatchResult {
    let bytes = result?;
    let always = decodes.iter().any(|(_, decode)| match decode {
        Decode::One(how, _) => !how.needs_magic(),
        Decode::Transaction(queued) => queued.iter().flatten().any(|(how, _)| !how.needs_magic()),
    });
    if !always && memchr::memmem::find(&bytes, &crate::codec::envelope::MAGIC).is_none() {
        return Ok(bytes);
    }
    let last = decodes.iter().map(|(index, _)| *index).max().unwrap_or(0);
    let starts = frame_starts(&bytes, last + 1);
    if starts.len() < last + 2 {
        return Ok(bytes);
    }
    let replacements = decodes.iter().filter_map(|(index, decode)| {
        let frame = &bytes[starts[*index]..starts[index + 1]];
        let replacement = match decode {
            Decode::One(how, key) => decode_one(compression, how, key, frame),
            Decode::Transaction(queued) => decode_transaction(compression, queued, frame),
        };
        replacement.map(|replacement| (*index, replacement))
    });
    Ok(replace_frames(&bytes, &starts, replacements))
}

/// One hook after the other.
fn then(first: Option<Hook>, second: Option<Hook>) -> Option<Hook> {
    match (first, second) {
        (Some(first), Some(second)) => Some(Box::new(move |result| second(first(result)))),
        (first, None) => first,
        (None, second) => second,
    }
}

/// `bytes` with the frames at the given positions (ascending) replaced;
/// `bytes` itself when there are none.
fn replace_frames(bytes: &Bytes, starts: &[usize], replacements: impl Iterator<Item = (usize, Bytes)>) -> Bytes {
    let mut out = BytesMut::with_capacity(bytes.len());
    let mut copied_to = 0;
    for (index, replacement) in replacements {
        out.extend_from_slice(&bytes[copied_to..starts[index]]);
        out.extend_from_slice(&replacement);
        copied_to = starts[index + 1];
    }
    if copied_to == 0 {
        return bytes.clone();
    }
    out.extend_from_slice(&bytes[copied_to..]);
    out.freeze()
}

/// A batch's replies after key versioning's work (on the upstream reader):
/// hidden migrations counted, key names mapped back, EXEC's array rid of
/// the migrations queued in it.
fn map_batch(versions: &Versioning, work: Vec<(usize, VersionWork)>, result: BatchResult) -> BatchResult {
    let bytes = result?;
    let last = work
        .iter()
        .map(|(index, work)| match work {
            VersionWork::Migrated(_, command) => *command,
            _ => *index,
        })
        .max()
        .unwrap_or(0);
    let starts = frame_starts(&bytes, last + 1);
    if starts.len() < last + 2 {
        return Ok(bytes);
    }
    let mut replacements = std::collections::BTreeMap::new();
    for (index, work) in work {
        let frame = &bytes[starts[index]..starts[index + 1]];
        let replacement = match work {
            VersionWork::Migrated(migration, command) => {
                if !migration.count(frame) && migration.read_only() {
                    // A read of a key whose old version could not be brought
                    // over would answer "absent": the client gets why.
                    let message = String::from_utf8_lossy(&frame[1..]).trim_end().to_string();
                    let error = format!("-ERR auracache: version migration failed: {message}\r\n");
                    replacements.insert(command, Bytes::from(error));
                }
                continue;
            }
            VersionWork::Map(how) => versions.map_reply(&how, frame),
            VersionWork::Forget => {
                versions.forget_all();
                None
            }
        };
        if let Some(replacement) = replacement {
            replacements.entry(index).or_insert(replacement);
        }
    }
    Ok(replace_frames(&bytes, &starts, replacements.into_iter()))
}

/// One reply decoded: None if it is the client's as it is.
fn decode_one(compression: &Compression, how: &ReplyDecode, key: &[u8], frame: &[u8]) -> Option<Bytes> {
    let mut decode = |stored: &[u8]| compression.decode(key, stored);
    match strings::decode_reply(how, frame, &mut decode) {
        Ok(replacement) => replacement,
        Err(failure) => Some(Reply::Error(failure.0).encode(Protocol::Resp2)),
    }
}

/// EXEC's array with each queued command's element decoded.
fn decode_transaction(
    compression: &Compression,
    queued: &[Option<(ReplyDecode, Bytes)>],
    frame: &[u8],
) -> Option<Bytes> {
    let line_end = memchr::memchr(b'\n', frame)?;
    let count: usize = std::str::from_utf8(frame.strip_prefix(b"*")?.get(..line_end - 2)?)
        .ok()?
        .parse()
        .ok()?;
    if count != queued.len() {
        return None;
    }
    let body = &frame[line_end + 1..];
    let starts = frame_starts(body, count);
    if starts.len() != count + 1 {
        return None;
    }
    let mut out = BytesMut::with_capacity(frame.len());
    out.extend_from_slice(&frame[..line_end + 1]);
    let mut changed = false;
    for (position, decode) in queued.iter().enumerate() {
        let element = &body[starts[position]..starts[position + 1]];
        match decode
            .as_ref()
            .and_then(|(how, key)| decode_one(compression, how, key, element))
        {
            Some(replacement) => {
                changed = true;
                out.extend_from_slice(&replacement);
            }
            None => out.extend_from_slice(element),
        }
    }
    out.extend_from_slice(&body[starts[count]..]);
    changed.then(|| out.freeze())
}

async fn idle_timer(idle: Duration, exempt: bool) {
    if idle.is_zero() || exempt {
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(idle).await;
}

/// Completes a batch's fills from Redis's replies (on the upstream reader,
/// as soon as they arrive): a GET's reply with the PTTL after it, an
/// MGET/HMGET's items each with its key's PTTL.
fn complete_fills(l1: &L1, fills: Vec<(usize, FillTicket)>, multi_fills: Vec<MultiFills>, bytes: &Bytes) {
    if fills.is_empty() && multi_fills.is_empty() {
        return;
    }
    let last_needed = fills
        .iter()
        .map(|(index, _)| index + 1)
        .chain(
            multi_fills
                .iter()
                .map(|(index, _, fills)| index + 1 + fills.iter().map(|(.., pttl)| *pttl).max().unwrap_or(0)),
        )
        .max()
        .unwrap_or(0);
    let starts = frame_starts(bytes, last_needed + 1);
    let frame = |index: usize| -> Option<Bytes> {
        let (start, end) = (*starts.get(index)?, *starts.get(index + 1)?);
        (end > start).then(|| bytes.slice(start..end))
    };
    for (index, ticket) in fills {
        if let (Some(read), Some(pttl)) = (frame(index), frame(index + 1)) {
            l1.complete_read(ticket, &read, &pttl);
        }
    }
    for (index, asked, fills) in multi_fills {
        let items = frame(index).and_then(|reply| array_items(&reply, asked));
        for (position, ticket, pttl) in fills {
            let item = items.as_ref().and_then(|items| items.get(position));
            if let (Some(item), Some(pttl)) = (item, frame(index + 1 + pttl)) {
                l1.complete_read(ticket, item, &pttl);
            }
        }
    }
}

/// The client's replies from Redis's for a batch with L1 edits: hidden
/// PTTL replies left out, partial MGET/HMGET replies merged with the
/// cached items; as slices of Redis's bytes where unchanged (no copy).
fn edit_replies(edits: &ReplyEdits, bytes: Bytes) -> Vec<Bytes> {
    let last_needed = edits
        .hidden
        .iter()
        .copied()
        .chain(edits.merges.iter().map(|(index, ..)| *index))
        .max()
        .unwrap_or(0);
    let starts = frame_starts(&bytes, last_needed + 1);
    if starts.len() < last_needed + 2 {
        // Fewer replies than expected (cannot happen with a complete
        // batch): pass them on untouched rather than guess.
        return vec![bytes];
    }
    let mut changes: Vec<(usize, Option<Bytes>)> = edits.hidden.iter().map(|&index| (index, None)).collect();
    for (index, asked, cached) in &edits.merges {
        let reply = bytes.slice(starts[*index]..starts[index + 1]);
        if let Some(items) = array_items(&reply, *asked) {
            changes.push((*index, Some(merge_items(&items, cached))));
        }
    }
    changes.sort_by_key(|(index, _)| *index);
    let mut segments = Vec::with_capacity(changes.len() * 2 + 1);
    let mut shown_from = 0;
    for (index, replacement) in changes {
        if starts[index] > shown_from {
            segments.push(bytes.slice(shown_from..starts[index]));
        }
        segments.extend(replacement);
        shown_from = starts[index + 1];
    }
    if shown_from < bytes.len() {
        segments.push(bytes.slice(shown_from..));
    }
    segments
}

/// Offsets where the first `frames` replies in `bytes` start, plus the end
/// of the last one.
pub(crate) fn frame_starts(bytes: &[u8], frames: usize) -> Vec<usize> {
    let mut lengths = FrameLengths::new();
    let mut starts = Vec::with_capacity(frames + 1);
    let mut offset = 0;
    while starts.len() < frames && offset < bytes.len() {
        starts.push(offset);
        match lengths.of(&bytes[offset..]) {
            Some(length) => offset += length,
            None => break,
        }
    }
    starts.push(offset);
    starts
}

/// The lengths of the complete replies of a batch Redis answered (its
/// limits were checked as it was read), one reply at a time: scalars
/// directly, the rest by the scanner.
struct FrameLengths(ReplyScanner);

impl FrameLengths {
    fn new() -> FrameLengths {
        FrameLengths(ReplyScanner::new(ReplyLimits {
            max_nesting_depth: usize::MAX,
            max_bulk_bytes: usize::MAX,
        }))
    }

    /// The length of the reply `bytes` starts with, if it is complete.
    fn of(&mut self, bytes: &[u8]) -> Option<usize> {
        scalar_frame_len(bytes).or_else(|| match self.0.scan(bytes) {
            Ok(Some(frame)) => Some(frame.len),
            _ => None,
        })
    }
}

/// The length of the reply starting `bytes` when it is a complete scalar
/// (a line, or a length-prefixed string): most replies, found without the
/// scanner; None for aggregates and anything unusual (the scanner decides).
fn scalar_frame_len(bytes: &[u8]) -> Option<usize> {
    let line_end = memchr::memchr(b'\n', bytes)?;
    if line_end < 2 || bytes[line_end - 1] != b'\r' {
        return None;
    }
    match bytes[0] {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Some(line_end + 1),
        b'$' | b'!' | b'=' => {
            let digits = &bytes[1..line_end - 1];
            if digits == b"-1" {
                return Some(line_end + 1);
            }
            if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let length = digits
                .iter()
                .fold(0usize, |total, digit| total * 10 + usize::from(digit - b'0'));
            let end = line_end + 1 + length + 2;
            (bytes.len() >= end && &bytes[end - 2..end] == b"\r\n").then_some(end)
        }
        _ => None,
    }
}

/// The items of an array reply of `count` items, as slices of it; None for
/// an error or another shape.
fn array_items(reply: &Bytes, count: usize) -> Option<Vec<Bytes>> {
    let line_end = memchr::memchr(b'\n', reply)?;
    let header = reply.get(..line_end.checked_sub(1)?)?;
    let announced: usize = std::str::from_utf8(header.strip_prefix(b"*")?).ok()?.parse().ok()?;
    if announced != count {
        return None;
    }
    let body = reply.slice(line_end + 1..);
    let starts = frame_starts(&body, announced);
    if starts.len() != announced + 1 || starts[announced] != body.len() {
        return None;
    }
    Some(starts.windows(2).map(|pair| body.slice(pair[0]..pair[1])).collect())
}

/// Redis's items for what L1 lacked merged with the cached ones, in the
/// client's order, as the reply to the client's MGET/HMGET.
fn merge_items(items: &[Bytes], cached: &[Option<Bytes>]) -> Bytes {
    let size = items
        .iter()
        .chain(cached.iter().flatten())
        .map(Bytes::len)
        .sum::<usize>();
    let mut out = BytesMut::with_capacity(size + 16);
    out.extend_from_slice(format!("*{}\r\n", cached.len()).as_bytes());
    let mut from_redis = items.iter();
    for value in cached {
        match value {
            Some(value) => out.extend_from_slice(value),
            None => out.extend_from_slice(from_redis.next().map(Bytes::as_ref).unwrap_or(b"")),
        }
    }
    out.freeze()
}

/// The key of `GET <key>` in multibulk form, read in place.
fn plain_get_key<'a>(frame: &RequestFrame, buf: &'a [u8]) -> Option<&'a [u8]> {
    match *frame {
        RequestFrame::Multibulk {
            argc: 2,
            name_at,
            name_len: 3,
            arg1_at,
            arg1_len,
            ..
        } if buf[name_at..name_at + 3].eq_ignore_ascii_case(b"GET") => Some(&buf[arg1_at..arg1_at + arg1_len]),
        _ => None,
    }
}

/// What the pattern engine hears of this read, if it is one the cache
/// serves (GET, HGET, HGETALL, MGET, HMGET) and, for one key, one the
/// engine learns now (a key sampled out costs nothing more; `events`
/// counts it). MGET items are sampled as they are heard of.
fn pattern_read(command: &mut Command, events: &mut Reads) -> Option<PatternRead> {
    let argc = command.argc();
    let name = command.name();
    let one = (argc == 2 && (name.eq_ignore_ascii_case(b"GET") || name.eq_ignore_ascii_case(b"HGETALL")))
        || (argc == 3 && name.eq_ignore_ascii_case(b"HGET"));
    let read = if one {
        PatternRead::One(Awaited::Whole)
    } else if argc >= 2 && name.eq_ignore_ascii_case(b"MGET") {
        // Its items are copied when it is forwarded.
        command.decode_args().ok()?;
        return Some(PatternRead::Items);
    } else if argc >= 3 && name.eq_ignore_ascii_case(b"HMGET") {
        PatternRead::One(Awaited::Fields {
            asked: (argc - 2) as u32,
            cached_found: false,
            cached_size: 0,
        })
    } else {
        return None;
    };
    events.admits(command.first_arg()?).then_some(read)
}

fn elapsed_us(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u128::from(u32::MAX)) as u32
}

/// Settles `reads` (all awaiting) from their batch's replies: each read's
/// outcome and size from its reply (an item of it, for MGET); error
/// replies are not accesses. Walks the replies once, in order.
fn settle(reads: &mut Reads, bytes: &Bytes, latency_us: u32) {
    let mut cursor = ReplyCursor::default();
    let mut items: Option<(u32, Vec<Bytes>)> = None;
    let outcome_of = |reply: &[u8]| {
        if is_empty_reply(reply) {
            Outcome::Miss
        } else {
            Outcome::L2Hit
        }
    };
    reads.settle(latency_us, |reply, how| {
        let (offset, length) = cursor.find(bytes, reply as usize)?;
        let frame = &bytes[offset..offset + length];
        if frame.first() == Some(&b'-') {
            return None;
        }
        match how {
            Awaited::Whole => Some((outcome_of(frame), length)),
            Awaited::Fields {
                asked,
                cached_found,
                cached_size,
            } => {
                let found = cached_found
                    || array_items(&bytes.slice(offset..offset + length), asked as usize)
                        .is_some_and(|items| items.iter().any(|item| !is_empty_reply(item)));
                let outcome = if found { Outcome::L2Hit } else { Outcome::Miss };
                Some((outcome, length + cached_size as usize))
            }
            Awaited::Item { item, of } => {
                if items.as_ref().is_none_or(|(held, _)| *held != reply) {
                    items = Some((reply, array_items(&bytes.slice(offset..offset + length), of as usize)?));
                }
                let value = items.as_ref()?.1.get(item as usize)?;
                Some((outcome_of(value), value.len()))
            }
        }
    });
}

/// What a piped client (CLIENT TRACKING, SUBSCRIBE, MONITOR, CLIENT
/// REPLY) sends instead of a command whose reply compression would have to
/// decode: a script that answers the error, so it comes in order with the
/// other replies Redis sends on the client's connection.
fn piped_refusal(command: &Command) -> Command {
    let name = String::from_utf8_lossy(command.name()).to_uppercase();
    let message = format!(
        "ERR {name} is not available with compression on, on a connection with CLIENT TRACKING, SUBSCRIBE, MONITOR or CLIENT REPLY: the proxy cannot decode its reply there; read on another connection"
    );
    Command::from_args(vec![
        Bytes::from_static(b"EVAL"),
        Bytes::from_static(b"return redis.error_reply(ARGV[1])"),
        Bytes::from_static(b"0"),
        Bytes::from(message),
    ])
}

/// How a read's reply tells the level that answered it.
#[derive(Debug, Clone, Copy)]
enum LevelRead {
    /// GET, HGET, HGETALL: the whole reply (nil or empty is a miss).
    Whole,
    /// MGET, HMGET of this many items: each item on its own.
    Items(u32),
}

/// Whether `command` is one of the reads the statistics per level count.
fn level_read(command: &Command) -> Option<LevelRead> {
    let argc = command.argc();
    match command.name().len() {
        3 if argc == 2 && command.is("GET") => Some(LevelRead::Whole),
        4 if argc == 3 && command.is("HGET") => Some(LevelRead::Whole),
        7 if argc == 2 && command.is("HGETALL") => Some(LevelRead::Whole),
        4 if argc >= 2 && command.is("MGET") => Some(LevelRead::Items(argc as u32 - 1)),
        5 if argc >= 3 && command.is("HMGET") => Some(LevelRead::Items(argc as u32 - 2)),
        _ => None,
    }
}

/// A batch's reads (by reply position) and writes, for the statistics per
/// level: carried with its slot and counted by the reply writer when the
/// replies are in. One read needs no allocation.
#[derive(Debug, Default)]
struct LevelWork {
    /// When the requests were read (set as the batch is sent).
    started: Option<Instant>,
    first: Option<(usize, LevelRead)>,
    more: Vec<(usize, LevelRead)>,
    writes: u64,
}

impl LevelWork {
    fn read(&mut self, reply: usize, how: LevelRead) {
        if self.first.is_none() {
            self.first = Some((reply, how));
        } else {
            self.more.push((reply, how));
        }
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.writes == 0
    }

    fn reads(&self) -> impl Iterator<Item = (usize, LevelRead)> + '_ {
        self.first.into_iter().chain(self.more.iter().copied())
    }
}

/// Walks a batch's replies forward to the ones asked for, in order.
#[derive(Default)]
struct ReplyCursor {
    lengths: Option<FrameLengths>,
    /// The reply `offset` starts.
    at: usize,
    offset: usize,
}

impl ReplyCursor {
    /// Where reply `reply` (at or after the last one asked for) starts in
    /// `bytes`, and its length; None if the replies end before it.
    fn find(&mut self, bytes: &[u8], reply: usize) -> Option<(usize, usize)> {
        let lengths = self.lengths.get_or_insert_with(FrameLengths::new);
        while self.at < reply {
            self.offset += lengths.of(bytes.get(self.offset..)?)?;
            self.at += 1;
        }
        Some((self.offset, lengths.of(bytes.get(self.offset..)?)?))
    }
}

/// Counts a batch's reads (by level, from their replies in `bytes`) and
/// writes, all of which took `took`. Error replies are not reads.
fn count_levels(levels: &Levels, work: &LevelWork, bytes: &Bytes, took: Duration) {
    levels.writes().record(took, work.writes);
    let (mut found, mut missed) = (0u64, 0u64);
    let mut cursor = ReplyCursor::default();
    for (reply, how) in work.reads() {
        let Some((offset, length)) = cursor.find(bytes, reply) else {
            break;
        };
        let frame = &bytes[offset..offset + length];
        match how {
            _ if frame.first() == Some(&b'-') => {}
            LevelRead::Whole if is_empty_reply(frame) => missed += 1,
            LevelRead::Whole => found += 1,
            LevelRead::Items(count) => {
                if let Some(items) = array_items(&bytes.slice(offset..offset + length), count as usize) {
                    let empty = items.iter().filter(|item| is_empty_reply(item)).count() as u64;
                    missed += empty;
                    found += items.len() as u64 - empty;
                }
            }
        }
    }
    levels.read(Level::L2).record(took, found);
    levels.read(Level::Miss).record(took, missed);
}

/// A nil, or an empty array or map (HGETALL of a missing key).
fn is_empty_reply(reply: &[u8]) -> bool {
    matches!(reply, b"$-1\r\n" | b"_\r\n" | b"*-1\r\n" | b"*0\r\n" | b"%0\r\n")
}

/// The shape L1 keeps for this read, if it keeps any: GET and HGETALL of
/// one key, HGET of one field.
fn cached_shape(command: &mut Command) -> Option<Shape> {
    match command.argc() {
        2 if command.is("GET") => Some(Shape::String),
        2 if command.is("HGETALL") => Some(Shape::HashAll),
        3 if command.is("HGET") => {
            command.decode_args().ok()?;
            Some(Shape::HashField(command.args().get(2)?.clone()))
        }
        _ => None,
    }
}

/// `PTTL <key>` as a request.
pub(crate) fn pttl_request(key: &[u8]) -> Bytes {
    use std::fmt::Write;
    let mut out = BytesMut::with_capacity(key.len() + 32);
    out.extend_from_slice(b"*2\r\n$4\r\nPTTL\r\n$");
    let _ = write!(out, "{}", key.len());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// One error reply per command of a batch that could not be sent.
fn repeat_error(error: &UpstreamError, count: usize, protocol: Protocol) -> Bytes {
    let one = Reply::error(error.client_message()).encode(protocol);
    let mut out = BytesMut::with_capacity(one.len() * count);
    for _ in 0..count {
        out.extend_from_slice(&one);
    }
    out.freeze()
}

fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn parse_i64(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn parse_u32(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// The reply side: writes slots in order until the request side is done
/// and everything owed is written, or the client goes away.
async fn write_replies(
    mut write: WriteHalf,
    mut slots: mpsc::Receiver<Slot>,
    answered: Arc<AtomicU64>,
    output: Arc<OutputBuffer>,
    stats: Arc<Stats>,
) {
    let mut out = ReplyWriter {
        write: &mut write,
        buffer: Gather::default(),
        answered,
        output,
        held: 0,
        stats,
    };
    let _ = out.run(&mut slots).await;
    if out.output.is_over() {
        // Cut off like Redis: what the client was owed is dropped, and the
        // request side stops once it sees the slots closed (or the limit).
        out.stats.output_limit_disconnect();
        tracing::warn!(
            limit = out.output.limit(),
            "closing a client over the output buffer limit (limits.max_output_bytes): it does not read its replies"
        );
        return;
    }
    let _ = write.shutdown().await;
}

struct ReplyWriter<'a> {
    write: &'a mut WriteHalf,
    buffer: Gather,
    /// Batches whose replies have arrived (see `Session::sent_batches`).
    answered: Arc<AtomicU64>,
    /// The replies held for the client, and the limit on them.
    output: Arc<OutputBuffer>,
    /// Of those, the bytes taken into `buffer` (counted out once written).
    held: usize,
    /// Where the batches' reads and writes are counted.
    stats: Arc<Stats>,
}

impl ReplyWriter<'_> {
    async fn run(&mut self, slots: &mut mpsc::Receiver<Slot>) -> std::io::Result<()> {
        loop {
            let slot = match slots.try_recv() {
                Ok(slot) => slot,
                Err(mpsc::error::TryRecvError::Empty) => {
                    self.flush().await?;
                    match slots.recv().await {
                        Some(slot) => slot,
                        None => return Ok(()),
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => return self.flush().await,
            };
            match slot {
                Slot::Ready(bytes) => {
                    self.held += bytes.len();
                    self.queue(bytes).await?
                }
                Slot::Pending {
                    mut replies,
                    count,
                    protocol,
                    edits,
                    levels,
                } => {
                    let result = match replies.try_recv() {
                        Ok(result) => result,
                        Err(oneshot::error::TryRecvError::Empty) => {
                            self.flush().await?;
                            replies.await.unwrap_or_else(|_| Err(UpstreamError::lost()))
                        }
                        Err(oneshot::error::TryRecvError::Closed) => Err(UpstreamError::lost()),
                    };
                    if let (Ok(bytes), Some(started)) = (&result, levels.started)
                        && !levels.is_empty()
                    {
                        count_levels(&self.stats.levels, &levels, bytes, started.elapsed());
                    }
                    self.answered.fetch_add(1, Ordering::Release);
                    if let Ok(bytes) = &result {
                        self.held += bytes.len();
                    }
                    match (result, edits) {
                        (Ok(bytes), Some(edits)) => {
                            for segment in edit_replies(&edits, bytes) {
                                self.queue(segment).await?;
                            }
                        }
                        (Ok(bytes), None) => self.queue(bytes).await?,
                        (Err(error), _) => self.queue(repeat_error(&error, count, protocol)).await?,
                    }
                }
                Slot::Barrier(done) => {
                    let _ = done.send(());
                }
                Slot::Pipe(piped, mapper) => return self.pipe(piped, mapper, slots).await,
                Slot::Close => return self.flush().await,
            }
        }
    }

    /// Copies what Redis sends on the client's connection, and replies the
    /// proxy still queues, until either side ends.
    async fn pipe(
        &mut self,
        mut piped: mpsc::Receiver<Bytes>,
        mut mapper: Option<versions::PipeMapper>,
        slots: &mut mpsc::Receiver<Slot>,
    ) -> std::io::Result<()> {
        self.flush().await?;
        loop {
            tokio::select! {
                data = piped.recv() => match (data, &mut mapper) {
                    (Some(bytes), None) => self.write_now(&bytes).await?,
                    (Some(bytes), Some(mapper)) => {
                        for frame in mapper.feed(&bytes) {
                            self.write.write_all(&frame).await?;
                        }
                        self.write.flush().await?;
                    }
                    (None, _) => return Ok(()),
                },
                slot = slots.recv() => match slot {
                    Some(Slot::Ready(bytes)) => {
                        self.write_now(&bytes).await?;
                        self.output.remove(bytes.len());
                    }
                    Some(Slot::Barrier(done)) => { let _ = done.send(()); }
                    Some(Slot::Pending { .. } | Slot::Pipe(..)) => {}
                    Some(Slot::Close) | None => return Ok(()),
                },
            }
        }
    }

    /// Writes `bytes` at once (flushed: TLS would hold them back).
    async fn write_now(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await?;
        self.write.flush().await
    }

    async fn queue(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.buffer.push(bytes);
        if self.buffer.len() >= MAX_REPLY_WRITE {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is gathered; a client that stops reading until its
    /// output buffer is over the limit fails here, mid-write.
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_over() {
            return Err(std::io::Error::other("the client does not read its replies"));
        }
        if !self.buffer.is_empty() {
            tokio::select! {
                biased;
                written = self.buffer.write_to(self.write) => written?,
                _ = self.output.overflowed() => {
                    return Err(std::io::Error::other("the client does not read its replies"));
                }
            }
        }
        self.output.remove(std::mem::take(&mut self.held));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The scalar fast path finds the same boundaries as the scanner, and
    /// leaves everything else to it.
    #[test]
    fn scalar_frames_end_where_the_scanner_says() {
        let frames: [&[u8]; 12] = [
            b"+OK\r\n",
            b"-ERR wrong\r\n",
            b":42\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"$5\r\nhe\r\no\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b"#t\r\n",
            b"(12345678901234567890\r\n",
            b"=15\r\ntxt:Some string\r\n",
            b"!21\r\nSYNTAX invalid syntax\r\n",
        ];
        let mut scanner = ReplyScanner::new(ReplyLimits {
            max_nesting_depth: 16,
            max_bulk_bytes: 1 << 20,
        });
        for frame in frames {
            let mut bytes = frame.to_vec();
            bytes.extend_from_slice(b":1\r\n");
            let scanned = scanner.scan(&bytes).unwrap().unwrap().len;
            assert_eq!(
                scalar_frame_len(&bytes),
                Some(scanned),
                "{:?}",
                String::from_utf8_lossy(frame)
            );
        }
        for other in [
            &b"*2\r\n$1\r\na\r\n:1\r\n"[..],
            b"%1\r\n+a\r\n+b\r\n",
            b"$5\r\nhel",
            b"$3\r\nabcXY",
            b"$x\r\n",
            b"+OK",
        ] {
            assert_eq!(scalar_frame_len(other), None, "{:?}", String::from_utf8_lossy(other));
        }
        let batch = b"$3\r\nabc\r\n*2\r\n$1\r\na\r\n$-1\r\n:7\r\n";
        assert_eq!(frame_starts(batch, 3), vec![0, 9, 25, 29]);
    }
}
