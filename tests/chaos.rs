//! Chaos: faults injected into a real Redis while a concurrent workload runs
//! through the proxy with L1 on (filling on the first miss, so a broken
//! coherence rule shows up as a stale read).
//!
//! The faults: Redis killed and restarted, Redis paused (SIGSTOP) beyond the
//! proxy's connect timeout, the tracking connection killed (and held down
//! while Redis is written directly), pooled connections killed one by one
//! and then every connection at once, and Redis answering errors (OOM,
//! READONLY, LOADING, BUSY). The clients: raw RESP2 and RESP3 pipelines,
//! the `redis` crate, and MULTI/EXEC on the client's own connection; each
//! owns the values it writes (one writer per value, rising seqs).
//!
//! In every case, checked on every reply and at the end:
//! - no reply goes to the wrong request (values name their key; ECHO and
//!   INCR replies are checked against their request),
//! - no acknowledged write is missing from Redis afterwards (read directly),
//! - no read returns a value older than the last write acknowledged before
//!   the read was sent,
//! - every error is the proxy's `-ERR upstream unavailable: ...` or an error
//!   Redis itself gave a direct client in that fault, byte for byte,
//! - the proxy recovers by itself: every client completes clean rounds
//!   again, a new client is served, and L1 answers again.
//!
//! One test runs every fault in turn and prints the table (also written to
//! `target/test-artifacts/chaos-table.txt`); the assertions come after it.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use auracache::config::Config;
use common::{DEADLINE, Proxy, RawClient, RedisServer};

const UNAVAILABLE: &str = "-ERR upstream unavailable: ";

/// Clients through the proxy: raw RESP2 pipelines, raw RESP3 pipelines,
/// the `redis` crate, and MULTI/EXEC (on the client's own upstream
/// connection). The faults that make Redis answer errors run without the
/// last: what Redis does to a transaction it refuses part of (EXECABORT,
/// a MULTI left open by a BUSY EXEC) is checked by a direct probe instead.
const WORKERS: [Flavor; 5] = [Flavor::Raw, Flavor::Raw3, Flavor::Raw, Flavor::Crate, Flavor::Multi];
const NO_TRANSACTIONS: &[Flavor] = &[Flavor::Raw, Flavor::Raw3, Flavor::Raw, Flavor::Crate];
/// String keys each client (and the direct writer) owns.
const KEYS_PER_OWNER: usize = 4;
/// Hash fields each client owns (in one hash of its own).
const FIELDS_PER_WORKER: usize = 2;
/// Pause between a client's rounds: keeps eight runs in a row affordable on
/// a small shared machine while leaving plenty of requests in flight.
const PACE: Duration = Duration::from_millis(2);
/// A scenario takes a few seconds; one that runs past this is a failure.
const SCENARIO_LIMIT: Duration = Duration::from_secs(45);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Flavor {
    /// RawClient, RESP2.
    Raw,
    /// RawClient after HELLO 3.
    Raw3,
    /// The `redis` crate's multiplexed connection.
    Crate,
    /// RawClient, each round one MULTI ... EXEC.
    Multi,
}

// ---------------------------------------------------------------------------
// Replies, as far as the checks need them.

#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Status(String),
    /// The whole error line, `-` included, CRLF excluded.
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    Other(String),
}

/// Parses one complete RESP2/RESP3 frame (RawClient hands out whole frames).
fn parse(bytes: &[u8]) -> Reply {
    parse_at(bytes, &mut 0)
}

fn parse_at(bytes: &[u8], pos: &mut usize) -> Reply {
    let line_end = |from: usize| from + bytes[from..].windows(2).position(|w| w == b"\r\n").unwrap_or(0);
    let start = *pos;
    let end = line_end(start);
    let line = String::from_utf8_lossy(&bytes[start + 1..end]).into_owned();
    *pos = end + 2;
    let count = || line.parse::<i64>().unwrap_or(-1);
    match bytes[start] {
        b'+' => Reply::Status(line),
        b'-' => Reply::Error(format!("-{line}")),
        b':' => Reply::Int(count()),
        b'_' => Reply::Nil,
        b'$' if count() < 0 => Reply::Nil,
        b'$' => {
            let len = count() as usize;
            let data = bytes[*pos..*pos + len].to_vec();
            *pos += len + 2;
            Reply::Bulk(data)
        }
        b'*' | b'>' | b'~' if count() < 0 => Reply::Nil,
        b'*' | b'>' | b'~' => Reply::Array((0..count()).map(|_| parse_at(bytes, pos)).collect()),
        b'%' => {
            let items: Vec<Reply> = (0..count() * 2).map(|_| parse_at(bytes, pos)).collect();
            Reply::Other(format!("map {items:?}"))
        }
        other => Reply::Other(format!("{}{line}", other as char)),
    }
}

fn from_crate(value: redis::Value) -> Reply {
    match value {
        redis::Value::Nil => Reply::Nil,
        redis::Value::Int(n) => Reply::Int(n),
        redis::Value::BulkString(data) => Reply::Bulk(data),
        redis::Value::Array(items) => Reply::Array(items.into_iter().map(from_crate).collect()),
        redis::Value::SimpleString(text) => Reply::Status(text),
        redis::Value::Okay => Reply::Status("OK".into()),
        redis::Value::ServerError(error) => Reply::Error(match error.details() {
            Some(details) => format!("-{} {details}", error.code()),
            None => format!("-{}", error.code()),
        }),
        other => Reply::Other(format!("{other:?}")),
    }
}

// ---------------------------------------------------------------------------
// What the workload wrote, what Redis acknowledged, what went wrong.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Owner {
    Worker(usize),
    /// Written straight to Redis by the test (the tracking fault).
    Direct,
}

/// One value with a single writer: a string key, or one field of a hash.
/// Its value is always `<label>#<seq>`, so a reply names what it belongs to.
struct Slot {
    key: String,
    field: Option<String>,
    owner: Owner,
    /// Highest seq Redis acknowledged.
    acked: AtomicU64,
    /// Highest seq ever sent (a failed write may or may not have landed).
    attempted: AtomicU64,
}

impl Slot {
    fn label(&self) -> String {
        match &self.field {
            Some(field) => format!("{}/{field}", self.key),
            None => self.key.clone(),
        }
    }

    fn value(&self, seq: u64) -> String {
        format!("{}#{seq}", self.label())
    }

    fn write_args(&self, seq: u64) -> Vec<Vec<u8>> {
        let value = self.value(seq).into_bytes();
        match &self.field {
            Some(field) => vec![b"HSET".to_vec(), self.key.clone().into(), field.clone().into(), value],
            None => vec![b"SET".to_vec(), self.key.clone().into(), value],
        }
    }

    fn read_args(&self) -> Vec<Vec<u8>> {
        match &self.field {
            Some(field) => vec![b"HGET".to_vec(), self.key.clone().into(), field.clone().into()],
            None => vec![b"GET".to_vec(), self.key.clone().into()],
        }
    }
}

/// A client's INCR counter: a write whose reply says how many landed.
struct Counter {
    key: String,
    acked: AtomicU64,
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    errors: AtomicU64,
    acked_writes: AtomicU64,
    stale: AtomicU64,
    misrouted: AtomicU64,
    /// A client disconnected by the proxy, or a reply that never came.
    broken: AtomicU64,
    /// Clients that connected again (after `broken`, or after the proxy
    /// closed a client whose own upstream connection broke).
    reconnects: AtomicU64,
    error_lines: Mutex<BTreeMap<String, u64>>,
    notes: Mutex<Vec<String>>,
}

impl Tally {
    fn note(&self, text: String) {
        let mut notes = self.notes.lock().unwrap();
        if notes.len() < 20 {
            notes.push(text);
        }
    }

    fn errors_starting(&self, prefix: &str) -> u64 {
        let lines = self.error_lines.lock().unwrap();
        lines
            .iter()
            .filter(|(line, _)| line.starts_with(prefix))
            .map(|(_, count)| count)
            .sum()
    }
}

enum Op {
    Write { slot: usize, seq: u64 },
    Read { slot: usize },
    Mget { slots: Vec<usize> },
    Incr,
    Echo(String),
}

struct Ledger {
    scenario: &'static str,
    slots: Vec<Slot>,
    owned: Vec<Vec<usize>>,
    strings: Vec<usize>,
    counters: Vec<Counter>,
    tally: Tally,
    /// Rounds each client completed without an error.
    clean_rounds: Vec<AtomicU64>,
    stop: AtomicBool,
    /// While set, new rounds write nothing (the test takes over writing).
    hold_writes: AtomicBool,
    /// Rounds with writes between being built and settled.
    writing: AtomicU64,
}

impl Ledger {
    fn new(scenario: &'static str, workers: usize) -> Ledger {
        let mut slots = Vec::new();
        let mut owned = vec![Vec::new(); workers];
        let owners = (0..workers).map(Owner::Worker).chain([Owner::Direct]);
        for owner in owners {
            let tag = match owner {
                Owner::Worker(w) => format!("w{w}"),
                Owner::Direct => "direct".into(),
            };
            for i in 0..KEYS_PER_OWNER {
                if let Owner::Worker(w) = owner {
                    owned[w].push(slots.len());
                }
                slots.push(Slot {
                    key: format!("chaos:{scenario}:{tag}:k{i}"),
                    field: None,
                    owner,
                    acked: AtomicU64::new(0),
                    attempted: AtomicU64::new(0),
                });
            }
            if let Owner::Worker(w) = owner {
                for f in 0..FIELDS_PER_WORKER {
                    owned[w].push(slots.len());
                    slots.push(Slot {
                        key: format!("chaos:{scenario}:{tag}:hash"),
                        field: Some(format!("f{f}")),
                        owner,
                        acked: AtomicU64::new(0),
                        attempted: AtomicU64::new(0),
                    });
                }
            }
        }
        let strings = (0..slots.len()).filter(|&s| slots[s].field.is_none()).collect();
        let counters = (0..workers)
            .map(|w| Counter {
                key: format!("chaos:{scenario}:w{w}:counter"),
                acked: AtomicU64::new(0),
            })
            .collect();
        Ledger {
            scenario,
            slots,
            owned,
            strings,
            counters,
            tally: Tally::default(),
            clean_rounds: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            stop: AtomicBool::new(false),
            hold_writes: AtomicBool::new(false),
            writing: AtomicU64::new(0),
        }
    }

    /// One round of client `w`: one or two writes of its own values, reads
    /// of its own and others' values (GET, HGET, MGET), an INCR and an ECHO,
    /// in random order. Seqs are assigned in send order, so a later write of
    /// a value always carries a higher seq.
    fn round(&self, w: usize, rng: &mut Rng, nonce: &mut u64) -> Vec<Op> {
        let own = &self.owned[w];
        let mut ops = Vec::new();
        // Counted before the hold is looked at, so that a test that sets
        // the hold and then sees no writing round knows none will start.
        self.writing.fetch_add(1, SeqCst);
        let writes = !self.hold_writes.load(SeqCst);
        if writes {
            for _ in 0..1 + rng.below(2) {
                ops.push(Op::Write {
                    slot: own[rng.below(own.len())],
                    seq: 0,
                });
            }
            ops.push(Op::Incr);
        } else {
            self.writing.fetch_sub(1, SeqCst);
        }
        ops.push(Op::Read {
            slot: own[rng.below(own.len())],
        });
        ops.push(Op::Read {
            slot: rng.below(self.slots.len()),
        });
        ops.push(Op::Mget {
            slots: (0..3).map(|_| self.strings[rng.below(self.strings.len())]).collect(),
        });
        *nonce += 1;
        ops.push(Op::Echo(format!("{}:w{w}:{nonce}", self.scenario)));
        rng.shuffle(&mut ops);
        for op in &mut ops {
            if let Op::Write { slot, seq } = op {
                *seq = self.slots[*slot].attempted.fetch_add(1, SeqCst) + 1;
            }
        }
        ops
    }

    fn args(&self, w: usize, op: &Op) -> Vec<Vec<u8>> {
        match op {
            Op::Write { slot, seq } => self.slots[*slot].write_args(*seq),
            Op::Read { slot } => self.slots[*slot].read_args(),
            Op::Mget { slots } => std::iter::once(b"MGET".to_vec())
                .chain(slots.iter().map(|&s| self.slots[s].key.clone().into_bytes()))
                .collect(),
            Op::Incr => vec![b"INCR".to_vec(), self.counters[w].key.clone().into_bytes()],
            Op::Echo(nonce) => vec![b"ECHO".to_vec(), nonce.clone().into_bytes()],
        }
    }

    /// What a reply to `op` must at least show, read just before it is sent:
    /// per value read, the last acknowledged seq; for INCR, the acknowledged
    /// count.
    fn floor(&self, w: usize, op: &Op) -> Vec<u64> {
        match op {
            Op::Read { slot } => vec![self.slots[*slot].acked.load(SeqCst)],
            Op::Mget { slots } => slots.iter().map(|&s| self.slots[s].acked.load(SeqCst)).collect(),
            Op::Incr => vec![self.counters[w].acked.load(SeqCst)],
            _ => Vec::new(),
        }
    }

    /// Checks a round's replies in order, records acknowledgements; true if
    /// every command succeeded.
    fn settle(&self, w: usize, ops: &[Op], floors: &[Vec<u64>], replies: Vec<Reply>, last_incr: &mut i64) -> bool {
        let tally = &self.tally;
        if ops.iter().any(|op| matches!(op, Op::Write { .. })) {
            self.writing.fetch_sub(1, SeqCst);
        }
        tally.requests.fetch_add(ops.len() as u64, SeqCst);
        let mut clean = replies.len() == ops.len();
        // Writes acknowledged earlier in this round: a later read of the
        // same value on the same connection must see them.
        let mut written: HashMap<usize, u64> = HashMap::new();
        let who = format!("w{w}");
        for (i, (op, reply)) in ops.iter().zip(replies).enumerate() {
            if let Reply::Error(line) = &reply {
                clean = false;
                tally.errors.fetch_add(1, SeqCst);
                *tally.error_lines.lock().unwrap().entry(line.clone()).or_default() += 1;
                continue;
            }
            let misrouted = |what: String| {
                tally.misrouted.fetch_add(1, SeqCst);
                tally.note(format!("w{w}: {what}"));
            };
            match op {
                Op::Write { slot, seq } => {
                    let ok = match self.slots[*slot].field {
                        None => reply == Reply::Status("OK".into()),
                        Some(_) => matches!(reply, Reply::Int(0 | 1)),
                    };
                    if ok {
                        self.slots[*slot].acked.fetch_max(*seq, SeqCst);
                        written.insert(*slot, *seq);
                        tally.acked_writes.fetch_add(1, SeqCst);
                    } else {
                        misrouted(format!("write of {} answered {reply:?}", self.slots[*slot].label()));
                    }
                }
                Op::Read { slot } => {
                    let floor = floors[i][0].max(written.get(slot).copied().unwrap_or(0));
                    self.check_value(&who, *slot, floor, &reply);
                }
                Op::Mget { slots } => match reply {
                    Reply::Array(items) if items.len() == slots.len() => {
                        for (j, (slot, item)) in slots.iter().zip(items).enumerate() {
                            let floor = floors[i][j].max(written.get(slot).copied().unwrap_or(0));
                            self.check_value(&who, *slot, floor, &item);
                        }
                    }
                    other => misrouted(format!("MGET of {} keys answered {other:?}", slots.len())),
                },
                Op::Incr => match reply {
                    // The reply counts every INCR that landed, this one
                    // included: more than those acknowledged before it was
                    // sent, and more than the previous reply.
                    Reply::Int(n) if n > floors[i][0] as i64 && n > *last_incr => {
                        *last_incr = n;
                        self.counters[w].acked.fetch_add(1, SeqCst);
                        tally.acked_writes.fetch_add(1, SeqCst);
                    }
                    // A count below what was acknowledged: INCRs were lost.
                    Reply::Int(n) => {
                        tally.stale.fetch_add(1, SeqCst);
                        tally.note(format!(
                            "w{w}: INCR answered {n} (acknowledged before: {}, last reply {last_incr})",
                            floors[i][0]
                        ));
                    }
                    other => misrouted(format!("INCR answered {other:?}")),
                },
                Op::Echo(nonce) => {
                    if reply != Reply::Bulk(nonce.clone().into_bytes()) {
                        misrouted(format!("ECHO {nonce} answered {reply:?}"));
                    }
                }
            }
        }
        clean
    }

    /// A value read for `slot` must name it and be at least `floor`.
    fn check_value(&self, who: &str, slot: usize, floor: u64, reply: &Reply) {
        let slot_ref = &self.slots[slot];
        let tally = &self.tally;
        let parsed = match reply {
            Reply::Bulk(data) => std::str::from_utf8(data)
                .ok()
                .and_then(|text| text.rsplit_once('#'))
                .and_then(|(label, seq)| Some((label.to_string(), seq.parse::<u64>().ok()?))),
            // Every value exists from the start: nil is an old answer.
            Reply::Nil => {
                tally.stale.fetch_add(1, SeqCst);
                tally.note(format!("{who}: {} read as nil (acked {floor})", slot_ref.label()));
                return;
            }
            _ => None,
        };
        match parsed {
            Some((label, seq)) if label == slot_ref.label() => {
                if seq < floor {
                    tally.stale.fetch_add(1, SeqCst);
                    tally.note(format!("{who}: {label} read seq {seq}, acked {floor} before the read"));
                } else if seq > slot_ref.attempted.load(SeqCst) {
                    tally.misrouted.fetch_add(1, SeqCst);
                    tally.note(format!("{who}: {label} read seq {seq}, never written"));
                }
            }
            _ => {
                tally.misrouted.fetch_add(1, SeqCst);
                tally.note(format!("{who}: read of {} answered {reply:?}", slot_ref.label()));
            }
        }
    }
}

/// xorshift: the same rounds every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------
// The clients.

async fn raw_connect(proxy: std::net::SocketAddr, flavor: Flavor) -> RawClient {
    let mut client = RawClient::connect(proxy).await;
    if flavor == Flavor::Raw3 {
        // Answered by a RESP3 pooled connection; if that fails (Redis is
        // down right now) the client goes on in RESP2.
        client.send_command(&[b"HELLO", b"3"]).await;
        client.read_reply().await;
    }
    client
}

/// One reply within the deadline, or None (closed, or never answered).
async fn next_reply(client: &mut RawClient) -> Option<Vec<u8>> {
    tokio::time::timeout(DEADLINE, client.next_reply()).await.ok().flatten()
}

async fn raw_worker(proxy: std::net::SocketAddr, ledger: Arc<Ledger>, w: usize, flavor: Flavor) {
    let mut client = raw_connect(proxy, flavor).await;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1));
    let (mut nonce, mut last_incr) = (0, 0);
    while !ledger.stop.load(SeqCst) {
        let ops = ledger.round(w, &mut rng, &mut nonce);
        let mut floors = Vec::new();
        let mut replies = Vec::new();
        if rng.below(3) != 0 {
            // Pipelined: every command in one write.
            floors = ops.iter().map(|op| ledger.floor(w, op)).collect();
            let mut wire = Vec::new();
            for op in &ops {
                let args = ledger.args(w, op);
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                wire.extend_from_slice(&common::encode(&args));
            }
            client.send(&wire).await;
            for _ in &ops {
                match next_reply(&mut client).await {
                    Some(reply) => replies.push(parse(&reply)),
                    None => break,
                }
            }
        } else {
            for op in &ops {
                floors.push(ledger.floor(w, op));
                let args = ledger.args(w, op);
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                client.send_command(&args).await;
                match next_reply(&mut client).await {
                    Some(reply) => replies.push(parse(&reply)),
                    None => break,
                }
            }
        }
        let answered = replies.len();
        if ledger.settle(w, &ops, &floors, replies, &mut last_incr) {
            ledger.clean_rounds[w].fetch_add(1, SeqCst);
        }
        if answered < ops.len() {
            ledger.tally.broken.fetch_add(1, SeqCst);
            ledger
                .tally
                .note(format!("w{w}: {} of {} replies, then nothing", answered, ops.len()));
            client = raw_connect(proxy, flavor).await;
            ledger.tally.reconnects.fetch_add(1, SeqCst);
        }
        tokio::time::sleep(PACE).await;
    }
}

/// Each round as one transaction: MULTI, the round's commands, EXEC;
/// pipelined or one command at a time. Values read inside must show the
/// writes acknowledged before MULTI was sent and the transaction's own.
/// When its upstream connection breaks, the proxy answers the error and
/// closes the client (its transaction is gone): then it connects again.
/// A MULTI that fails (no connection could be opened) starts no
/// transaction, so the commands after it run on their own, as on Redis.
async fn transaction_worker(proxy: std::net::SocketAddr, ledger: Arc<Ledger>, w: usize) {
    let mut client = RawClient::connect(proxy).await;
    let mut rng = Rng(0x1234_5678_9abc_def1 ^ (w as u64 + 1));
    let (mut nonce, mut last_incr) = (0, 0);
    let tally = &ledger.tally;
    // The proxy closes the client after answering the error, perhaps only
    // after this round answered in full: the next round then gets nothing.
    let mut closing = false;
    while !ledger.stop.load(SeqCst) {
        let ops = ledger.round(w, &mut rng, &mut nonce);
        let floors: Vec<Vec<u64>> = ops.iter().map(|op| ledger.floor(w, op)).collect();
        let mut commands = vec![common::encode(&[b"MULTI"])];
        for op in &ops {
            let args = ledger.args(w, op);
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            commands.push(common::encode(&args));
        }
        commands.push(common::encode(&[b"EXEC"]));
        let mut replies = Vec::new();
        let pipelined = rng.below(2) == 0;
        if pipelined {
            client.send(&commands.concat()).await;
        }
        for command in &commands {
            if !pipelined {
                client.send(command).await;
            }
            match next_reply(&mut client).await {
                Some(reply) => replies.push(parse(&reply)),
                None => break,
            }
        }
        tally.requests.fetch_add(2, SeqCst);
        let record = |reply: &Reply| {
            if let Reply::Error(line) = reply {
                tally.errors.fetch_add(1, SeqCst);
                *tally.error_lines.lock().unwrap().entry(line.clone()).or_default() += 1;
            }
        };
        let misrouted = |what: String| {
            tally.misrouted.fetch_add(1, SeqCst);
            tally.note(format!("w{w} (MULTI): {what}"));
        };
        let mut clean = false;
        let answered = replies.len();
        let unavailable = replies
            .iter()
            .any(|reply| matches!(reply, Reply::Error(line) if line.starts_with(UNAVAILABLE)));
        match replies.first() {
            Some(Reply::Status(ok)) if ok == "OK" => {
                let queued = &replies[1..answered.min(ops.len() + 1)];
                for reply in queued {
                    match reply {
                        Reply::Status(text) if text == "QUEUED" => {}
                        Reply::Error(_) => record(reply),
                        other => misrouted(format!("a queued command answered {other:?}")),
                    }
                }
                match replies.get(ops.len() + 1) {
                    Some(Reply::Array(items)) if items.len() == ops.len() => {
                        clean = ledger.settle(w, &ops, &floors, items.clone(), &mut last_incr);
                        // settle counted the commands; MULTI and EXEC are above.
                    }
                    Some(reply @ Reply::Error(_)) => {
                        record(reply);
                        ledger.settle(w, &ops, &floors, Vec::new(), &mut last_incr);
                    }
                    Some(other) => {
                        misrouted(format!("EXEC answered {other:?}"));
                        ledger.settle(w, &ops, &floors, Vec::new(), &mut last_incr);
                    }
                    None => {
                        ledger.settle(w, &ops, &floors, Vec::new(), &mut last_incr);
                    }
                }
            }
            Some(reply @ Reply::Error(_)) => {
                // No transaction: the commands ran (or failed) on their own.
                record(reply);
                let own = replies[1..answered.min(ops.len() + 1)].to_vec();
                ledger.settle(w, &ops, &floors, own, &mut last_incr);
                match replies.get(ops.len() + 1) {
                    Some(reply @ Reply::Error(_)) => record(reply),
                    Some(other) => misrouted(format!("EXEC without a transaction answered {other:?}")),
                    None => {}
                }
            }
            Some(other) => {
                misrouted(format!("MULTI answered {other:?}"));
                ledger.settle(w, &ops, &floors, Vec::new(), &mut last_incr);
            }
            None => {
                ledger.settle(w, &ops, &floors, Vec::new(), &mut last_incr);
            }
        }
        if clean {
            ledger.clean_rounds[w].fetch_add(1, SeqCst);
        }
        if answered < commands.len() {
            let expected = unavailable || (closing && answered == 0);
            if !expected {
                tally.broken.fetch_add(1, SeqCst);
                tally.note(format!(
                    "w{w} (MULTI): {answered} of {} replies, then nothing",
                    commands.len()
                ));
            }
            client = RawClient::connect(proxy).await;
            tally.reconnects.fetch_add(1, SeqCst);
            closing = false;
        } else {
            closing = unavailable;
        }
        tokio::time::sleep(PACE).await;
    }
}

async fn crate_connect(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("valid url");
    // Longer than any pause a fault makes (the default is 500 ms).
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(DEADLINE));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("the proxy accepts")
}

async fn crate_worker(url: String, ledger: Arc<Ledger>, w: usize) {
    let mut connection = crate_connect(&url).await;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (w as u64 + 1));
    let (mut nonce, mut last_incr) = (0, 0);
    while !ledger.stop.load(SeqCst) {
        let ops = ledger.round(w, &mut rng, &mut nonce);
        let command = |op: &Op| {
            let args = ledger.args(w, op);
            let mut command = redis::cmd(std::str::from_utf8(&args[0]).unwrap_or("PING"));
            for arg in &args[1..] {
                command.arg(arg.as_slice());
            }
            command
        };
        let mut floors = Vec::new();
        let mut replies = Vec::new();
        let mut failure = None;
        // Pipelined, or one command at a time.
        let groups: Vec<&[Op]> = if rng.below(2) == 0 {
            vec![&ops[..]]
        } else {
            ops.chunks(1).collect()
        };
        for group in groups {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for op in group {
                floors.push(ledger.floor(w, op));
                pipe.add_command(command(op));
            }
            match pipe.query_async::<redis::Value>(&mut connection).await {
                Ok(redis::Value::Array(items)) if items.len() == group.len() => {
                    replies.extend(items.into_iter().map(from_crate))
                }
                Ok(other) => {
                    failure = Some(format!("pipeline of {} answered {other:?}", group.len()));
                    break;
                }
                Err(error) => {
                    failure = Some(error.to_string());
                    break;
                }
            }
        }
        if ledger.settle(w, &ops, &floors, replies, &mut last_incr) {
            ledger.clean_rounds[w].fetch_add(1, SeqCst);
        }
        if let Some(failure) = failure {
            ledger.tally.broken.fetch_add(1, SeqCst);
            ledger.tally.note(format!("w{w} (redis crate): {failure}"));
            connection = crate_connect(&url).await;
            ledger.tally.reconnects.fetch_add(1, SeqCst);
        }
        tokio::time::sleep(PACE).await;
    }
}

// ---------------------------------------------------------------------------
// One fault's run.

struct Scenario {
    name: &'static str,
    redis: RedisServer,
    proxy: Proxy,
    direct: RawClient,
    ledger: Arc<Ledger>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    faults: u64,
    /// Error lines Redis gave a direct client during the fault: the
    /// workload may get exactly these.
    redis_errors: BTreeSet<String>,
    /// Errors Redis gives only in a window no direct probe can be sure to
    /// hit (a replica loading its master's data), allowed by their code.
    allowed_codes: Vec<&'static str>,
    problems: Vec<String>,
    started: Instant,
    /// Stops the clients if the scenario is dropped unfinished (it failed).
    _stop: StopOnDrop,
}

struct StopOnDrop(Arc<Ledger>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, SeqCst);
    }
}

#[derive(Debug)]
struct Row {
    fault: &'static str,
    faults: u64,
    requests: u64,
    errors: u64,
    writes_verified: u64,
    lost: u64,
    stale: u64,
    misrouted: u64,
    anomalies: u64,
    recovered: bool,
    l1_hits: u64,
    seconds: f64,
    /// Errors the workload was answered, by kind.
    error_kinds: String,
    /// Redis's error lines the proxy was seen to pass on unchanged.
    redis_errors: Vec<String>,
    notes: Vec<String>,
}

impl Scenario {
    /// Redis with `redis_args`, every value written once (seq 0) straight
    /// to Redis, the proxy in front, the clients running until L1 answers.
    async fn start(name: &'static str, redis_args: &[&str], flavors: &[Flavor]) -> Scenario {
        let started = Instant::now();
        let redis = RedisServer::start_with(redis_args);
        let mut direct = RawClient::connect(redis.addr()).await;
        let ledger = Arc::new(Ledger::new(name, flavors.len()));
        for slot in &ledger.slots {
            let args = slot.write_args(0);
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let reply = direct.command(&args).await;
            assert!(reply == b"+OK\r\n" || reply == b":1\r\n", "{reply:?}");
        }
        let proxy = Proxy::start_with(&redis.url(), |config: &mut Config| {
            common::l1_eager(config);
            config.pool.size = 2;
            // Small, so the pause outlasts it many times over.
            config.pool.connect_timeout_ms = 300;
            config.preload.enabled = false;
        })
        .await;
        let workers = flavors
            .iter()
            .enumerate()
            .map(|(w, flavor)| {
                let ledger = ledger.clone();
                match flavor {
                    Flavor::Crate => tokio::spawn(crate_worker(proxy.url(), ledger, w)),
                    Flavor::Multi => tokio::spawn(transaction_worker(proxy.addr(), ledger, w)),
                    flavor => tokio::spawn(raw_worker(proxy.addr(), ledger, w, *flavor)),
                }
            })
            .collect();
        let mut scenario = Scenario {
            name,
            redis,
            proxy,
            direct,
            _stop: StopOnDrop(ledger.clone()),
            ledger,
            workers,
            faults: 0,
            redis_errors: BTreeSet::new(),
            allowed_codes: Vec::new(),
            problems: Vec::new(),
            started,
        };
        // A MULTI that failed leaves its EXEC to Redis: the workload may
        // be answered this.
        let mut lone = scenario.proxy.raw().await;
        scenario.same_error(&mut lone, "EXEC", "ERR").await;
        let warm = scenario.progress(10).await;
        scenario.expect(warm, "every client completes 10 clean rounds before the fault");
        let proxy = &scenario.proxy;
        let hits = wait_for(async || common::l1_hits(proxy) > 0).await;
        scenario.expect(hits, "L1 answers reads before the fault");
        scenario
    }

    fn expect(&mut self, holds: bool, what: &str) {
        if !holds {
            self.problems.push(format!("expected: {what}"));
        }
    }

    /// Waits until every client has completed `rounds` more clean rounds.
    async fn progress(&self, rounds: u64) -> bool {
        let ledger = &self.ledger;
        let from: Vec<u64> = ledger.clean_rounds.iter().map(|r| r.load(SeqCst)).collect();
        wait_for(async || {
            ledger
                .clean_rounds
                .iter()
                .zip(&from)
                .all(|(now, from)| now.load(SeqCst) >= from + rounds)
        })
        .await
    }

    /// Waits until the workload has been answered `more` further errors
    /// starting with `prefix`.
    async fn workload_errors(&mut self, prefix: &str, more: u64) {
        let tally = &self.ledger.tally;
        let from = tally.errors_starting(prefix);
        let seen = wait_for(async || tally.errors_starting(prefix) >= from + more).await;
        self.expect(seen, &format!("the workload is answered {prefix}... during the fault"));
    }

    fn store(&self) -> Arc<auracache::cache::L1Store> {
        self.proxy.handle().l1().expect("L1 on").store.clone()
    }

    /// Sends `line` to Redis directly and through `proxied`: the replies
    /// must be the same bytes, and Redis's must be the error `code`. The
    /// line is then one the workload may be answered.
    async fn same_error(&mut self, proxied: &mut RawClient, line: &str, code: &str) {
        let from_redis = self.direct.cmd(line).await;
        let from_proxy = proxied.cmd(line).await;
        self.ledger.tally.requests.fetch_add(1, SeqCst);
        self.ledger.tally.errors.fetch_add(1, SeqCst);
        self.expect(
            from_redis.starts_with(&format!("-{code} ")),
            &format!("Redis answers {line:?} with {code}, not {from_redis:?}"),
        );
        self.expect(
            from_proxy == from_redis,
            &format!("{line:?}: the proxy passes {from_redis:?} on unchanged, not {from_proxy:?}"),
        );
        self.redis_errors.insert(from_redis.trim_end().to_string());
    }

    /// MULTI, `write`, EXEC on a new client straight to Redis and on a new
    /// client of the proxy (which moves to its own upstream connection):
    /// the same bytes for each. The clients are dropped after, since a
    /// refused EXEC may leave the transaction open.
    async fn same_transaction(&mut self, write: &str) {
        let mut direct = RawClient::connect(self.redis.addr()).await;
        let mut proxied = self.proxy.raw().await;
        for line in ["MULTI", write, "EXEC"] {
            let from_redis = direct.cmd(line).await;
            let from_proxy = proxied.cmd(line).await;
            self.ledger.tally.requests.fetch_add(1, SeqCst);
            self.expect(
                from_proxy == from_redis,
                &format!("{line:?} in a transaction: the proxy passes {from_redis:?} on unchanged, not {from_proxy:?}"),
            );
            if from_redis.starts_with('-') {
                self.ledger.tally.errors.fetch_add(1, SeqCst);
                self.redis_errors.insert(from_redis.trim_end().to_string());
            }
        }
    }

    /// Kills one of the proxy's connections to Redis.
    async fn kill_client(&mut self, id: &str) {
        let killed = self.direct.cmd(&format!("CLIENT KILL ID {id}")).await;
        self.expect(killed == ":1\r\n", &format!("CLIENT KILL ID {id} answers {killed:?}"));
        self.faults += 1;
    }

    /// After a refused write: the proxy reads what Redis holds.
    async fn same_read(&mut self, proxied: &mut RawClient, line: &str) {
        let from_proxy = proxied.cmd(line).await;
        let from_redis = self.direct.cmd(line).await;
        self.expect(
            from_proxy == from_redis,
            &format!("{line:?} after a refused write: Redis has {from_redis:?}, the proxy said {from_proxy:?}"),
        );
    }

    /// Reads each of `slots` twice through `client`, one command at a time
    /// (so L1 may answer the second), checked like the workload's reads.
    async fn read_back(&self, client: &mut RawClient, slots: &[usize]) {
        for _ in 0..2 {
            for &slot in slots {
                let floor = self.ledger.slots[slot].acked.load(SeqCst);
                let args = self.ledger.slots[slot].read_args();
                let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                let reply = parse(&client.command(&args).await);
                self.ledger.tally.requests.fetch_add(1, SeqCst);
                self.ledger.check_value("read-back", slot, floor, &reply);
            }
        }
    }

    /// A key through the proxy until L1 answers it.
    async fn cached(&self, client: &mut RawClient, key: &str) -> bool {
        let proxy = &self.proxy;
        wait_for(async || {
            let first = client.cmd(&format!("GET {key}")).await;
            let before = common::l1_hits(proxy);
            let second = client.cmd(&format!("GET {key}")).await;
            first == second && common::l1_hits(proxy) > before
        })
        .await
    }

    /// The proxy recovered without a restart: every client completes clean
    /// rounds, a new client is served, L1 answers again.
    async fn recovered(&mut self) -> bool {
        let rounds = self.progress(5).await;
        let mut fresh = self.proxy.raw().await;
        let key = format!("chaos:{}:fresh", self.name);
        let served = fresh.try_cmd(&format!("SET {key} v")).await.as_deref() == Some("+OK\r\n")
            && fresh.try_cmd(&format!("GET {key}")).await.as_deref() == Some("$1\r\nv\r\n");
        let l1 = self.cached(&mut fresh, &key).await;
        for (holds, what) in [
            (rounds, "every client completes 5 clean rounds after the fault"),
            (served, "a new client is served after the fault"),
            (l1, "L1 answers again after the fault"),
        ] {
            self.expect(holds, what);
        }
        rounds && served && l1
    }

    async fn finish(mut self) -> Row {
        let recovered = self.recovered().await;
        self.ledger.stop.store(true, SeqCst);
        for worker in std::mem::take(&mut self.workers) {
            match tokio::time::timeout(DEADLINE, worker).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => self.problems.push(format!("a client panicked: {error}")),
                Err(_) => self.problems.push("a client hung".into()),
            }
        }
        // Every acknowledged write is in Redis: each value holds its last
        // acknowledged seq or a later one (single writer, rising seqs).
        let mut direct = RawClient::connect(self.redis.addr()).await;
        let mut lost = 0;
        for slot in &self.ledger.slots {
            let args = slot.read_args();
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let reply = parse(&direct.command(&args).await);
            let acked = slot.acked.load(SeqCst);
            let held = match &reply {
                Reply::Bulk(data) => String::from_utf8_lossy(data)
                    .rsplit_once('#')
                    .filter(|(label, _)| *label == slot.label())
                    .and_then(|(_, seq)| seq.parse::<u64>().ok()),
                _ => None,
            };
            if held.is_none_or(|seq| seq < acked) {
                lost += 1;
                self.problems.push(format!(
                    "{} acknowledged at seq {acked}, Redis has {reply:?}",
                    slot.label()
                ));
            }
        }
        for counter in &self.ledger.counters {
            let reply = parse(&direct.command(&[b"GET", counter.key.as_bytes()]).await);
            let acked = counter.acked.load(SeqCst);
            let held = match &reply {
                Reply::Bulk(data) => String::from_utf8_lossy(data).parse::<u64>().ok(),
                _ => None,
            };
            if held.is_none_or(|value| value < acked) {
                lost += 1;
                self.problems.push(format!(
                    "{}: {acked} INCRs acknowledged, Redis has {reply:?}",
                    counter.key
                ));
            }
        }
        // Every error was the proxy's own, or Redis's, unchanged.
        let tally = &self.ledger.tally;
        let mut anomalies = tally.broken.load(SeqCst);
        for (line, count) in tally.error_lines.lock().unwrap().iter() {
            let code = line.trim_start_matches('-').split(' ').next().unwrap_or_default();
            if !(line.starts_with(UNAVAILABLE)
                || self.redis_errors.contains(line)
                || self.allowed_codes.contains(&code))
            {
                anomalies += count;
                self.problems
                    .push(format!("{count} × an error neither the proxy's nor Redis's: {line:?}"));
            }
        }
        anomalies += self.problems.len() as u64;
        let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
        for (line, count) in tally.error_lines.lock().unwrap().iter() {
            let kind = if line.starts_with(UNAVAILABLE) {
                line.as_str()
            } else {
                line.split(' ').next().unwrap_or_default()
            };
            *kinds.entry(kind.to_string()).or_default() += count;
        }
        let error_kinds = std::iter::once(format!("{} client reconnects", tally.reconnects.load(SeqCst)))
            .chain(kinds.iter().map(|(kind, count)| format!("{count} × {kind}")))
            .collect::<Vec<_>>()
            .join(", ");
        let mut notes = tally.notes.lock().unwrap().clone();
        notes.extend(self.problems.iter().cloned());
        let row = Row {
            fault: self.name,
            faults: self.faults,
            requests: tally.requests.load(SeqCst),
            errors: tally.errors.load(SeqCst),
            writes_verified: tally.acked_writes.load(SeqCst),
            lost,
            stale: tally.stale.load(SeqCst),
            misrouted: tally.misrouted.load(SeqCst),
            anomalies,
            recovered,
            l1_hits: common::l1_hits(&self.proxy),
            seconds: self.started.elapsed().as_secs_f64(),
            error_kinds,
            redis_errors: self.redis_errors.iter().cloned().collect(),
            notes,
        };
        self.proxy.shutdown().await;
        row
    }
}

/// Polls `check` until it holds; false after the deadline.
async fn wait_for(mut check: impl AsyncFnMut() -> bool) -> bool {
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > DEADLINE {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Redis's CLIENT LIST ids of connections named `name`.
async fn client_ids(direct: &mut RawClient, name: &str) -> Vec<String> {
    let Reply::Bulk(list) = parse(&direct.command(&[b"CLIENT", b"LIST"]).await) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&list)
        .lines()
        .filter(|line| line.split(' ').any(|field| field == format!("name={name}")))
        .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

/// A field of `INFO <section>`.
async fn info_field(direct: &mut RawClient, section: &str, field: &str) -> String {
    let info = direct.cmd(&format!("INFO {section}")).await;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .to_string()
}

// ---------------------------------------------------------------------------
// The faults.

/// SIGKILL under load, restarted on the same port, twice. Redis writes its
/// AOF with `appendfsync always`, so every write it acknowledged survives
/// the kill (without it, the check of acknowledged writes fails).
async fn redis_killed_and_restarted() -> Row {
    let mut s = Scenario::start("kill", &["--appendonly", "yes", "--appendfsync", "always"], &WORKERS).await;
    // Restarted, Redis answers LOADING while it reads its AOF (and
    // EXECABORT to a transaction with a command refused so), briefly.
    s.allowed_codes.extend(["LOADING", "EXECABORT"]);
    for _ in 0..2 {
        let tally = &s.ledger.tally;
        let errors = tally.errors.load(SeqCst);
        // Blocks this thread only: the proxy and the clients run on the
        // runtime's workers.
        s.redis.kill();
        s.faults += 1;
        let seen = wait_for(async || tally.errors.load(SeqCst) > errors).await;
        s.expect(seen, "the workload is answered errors while Redis is down");
        s.redis.restart();
        s.direct = RawClient::connect(s.redis.addr()).await;
        let back = s.progress(3).await;
        s.expect(back, "every client completes clean rounds after the restart");
    }
    s.finish().await
}

/// SIGSTOP for longer than the proxy's connect timeout, then SIGCONT.
/// Clients on established connections wait, as they would on Redis
/// itself (there is no reply timeout); a client that needs a new upstream
/// connection is answered an error within the connect timeout. Just
/// before the pause a pooled connection and the tracking connection are
/// killed, so their reconnections meet the paused Redis and time out
/// (or, if they were quicker, succeed) and L1 is off meanwhile.
async fn redis_paused() -> Row {
    let mut s = Scenario::start("pause", &[], &WORKERS).await;
    let pid: i32 = info_field(&mut s.direct, "server", "process_id")
        .await
        .parse()
        .expect("pid");
    let mut probe = s.proxy.raw().await;
    let pooled = client_ids(&mut s.direct, auracache::upstream::POOL_CONNECTION_NAME).await;
    let tracking = client_ids(&mut s.direct, auracache::cache::tracking::TRACKING_CONNECTION_NAME).await;
    for id in pooled.iter().take(1).chain(&tracking) {
        s.kill_client(id).await;
    }
    let paused = Instant::now();
    // SAFETY: kill(2) with a pid of a child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    s.faults += 1;
    // Database 3 has no pool yet: its first connection cannot be set up.
    let selected = probe.cmd("SELECT 3").await;
    s.expect(selected == "+OK\r\n", &format!("SELECT 3 answers {selected:?}"));
    let asked = Instant::now();
    let reply = probe.cmd("GET chaos:pause:db3").await;
    s.ledger.tally.requests.fetch_add(1, SeqCst);
    s.ledger.tally.errors.fetch_add(1, SeqCst);
    *s.ledger
        .tally
        .error_lines
        .lock()
        .unwrap()
        .entry(reply.trim_end().to_string())
        .or_default() += 1;
    s.expect(
        reply.starts_with(UNAVAILABLE),
        &format!("a new connection to a paused Redis fails with the reason, not {reply:?}"),
    );
    s.expect(
        asked.elapsed() < Duration::from_secs(2),
        &format!(
            "that error comes within the connect timeout, not after {:?}",
            asked.elapsed()
        ),
    );
    // Paused for several connect timeouts in all.
    let pause = Duration::from_millis(1500);
    tokio::time::sleep(pause.saturating_sub(paused.elapsed())).await;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let served = wait_for(async || probe.cmd("GET chaos:pause:db3").await == "$-1\r\n").await;
    s.expect(served, "database 3 is served after SIGCONT");
    s.finish().await
}

/// The tracking connection killed with CLIENT KILL, twice. The first time
/// it is kept down (an ACL refuses CLIENT TRACKING) while the test writes
/// values straight to Redis that L1 held, and the clients read them
/// throughout: L1 must be flushed and stay out of the way until the
/// tracking is back, and must not serve the old values after it is.
async fn tracking_connection_killed() -> Row {
    let mut s = Scenario::start("tracking", &[], &WORKERS).await;
    let store = s.store();
    let direct_slots: Vec<usize> = (0..s.ledger.slots.len())
        .filter(|&i| s.ledger.slots[i].owner == Owner::Direct)
        .collect();
    // The directly written values are in L1 before the fault.
    let mut reader = s.proxy.raw().await;
    for &i in &direct_slots {
        let key = s.ledger.slots[i].key.clone();
        let cached = s.cached(&mut reader, &key).await;
        s.expect(cached, &format!("{key} is in L1 before the fault"));
    }
    assert_eq!(s.direct.cmd("ACL SETUSER default -client|tracking").await, "+OK\r\n");
    let ids = client_ids(&mut s.direct, auracache::cache::tracking::TRACKING_CONNECTION_NAME).await;
    s.expect(ids.len() == 1, &format!("one tracking connection, found {ids:?}"));
    for id in &ids {
        s.kill_client(id).await;
    }
    let off = wait_for(async || !store.is_accepting()).await;
    s.expect(off, "the proxy notices the tracking connection is gone");
    for _ in 0..3 {
        for &i in &direct_slots {
            let slot = &s.ledger.slots[i];
            let seq = slot.attempted.fetch_add(1, SeqCst) + 1;
            let args = slot.write_args(seq);
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            assert_eq!(s.direct.command(&args).await, b"+OK\r\n");
            slot.acked.fetch_max(seq, SeqCst);
        }
        let more = s.progress(3).await;
        s.expect(more, "clients complete rounds while tracking is down");
        s.read_back(&mut reader, &direct_slots).await;
    }
    s.expect(
        !store.is_accepting(),
        "tracking stays down while CLIENT TRACKING is refused",
    );
    assert_eq!(s.direct.cmd("ACL SETUSER default +client|tracking").await, "+OK\r\n");
    let on = wait_for(async || store.is_accepting()).await;
    s.expect(on, "the tracking connection comes back");
    s.read_back(&mut reader, &direct_slots).await;
    let more = s.progress(5).await;
    s.expect(more, "clients complete rounds after tracking is back");
    s.read_back(&mut reader, &direct_slots).await;
    // Killed again; it reconnects at once.
    let ids = client_ids(&mut s.direct, auracache::cache::tracking::TRACKING_CONNECTION_NAME).await;
    for id in &ids {
        s.kill_client(id).await;
    }
    let back = wait_for(async || {
        let now = client_ids(&mut s.direct, auracache::cache::tracking::TRACKING_CONNECTION_NAME).await;
        now.len() == 1 && !ids.contains(&now[0]) && store.is_accepting()
    })
    .await;
    s.expect(back, "a new tracking connection after the second kill");
    s.finish().await
}

/// Every pooled connection (RESP2 and RESP3) killed with CLIENT KILL ID,
/// one at a time, each after the one before was replaced; then all of the
/// proxy's connections at once.
async fn pool_connections_killed() -> Row {
    let mut s = Scenario::start("pool", &[], &WORKERS).await;
    let name = auracache::upstream::POOL_CONNECTION_NAME;
    let ids = client_ids(&mut s.direct, name).await;
    s.expect(
        ids.len() >= 4,
        &format!("two RESP2 and two RESP3 pooled connections, found {ids:?}"),
    );
    for id in &ids {
        s.kill_client(id).await;
        let replaced = wait_for(async || {
            let now = client_ids(&mut s.direct, name).await;
            now.len() >= ids.len() && !now.contains(id)
        })
        .await;
        s.expect(replaced, &format!("pooled connection {id} is replaced"));
        let more = s.progress(2).await;
        s.expect(more, "clients complete rounds after a pooled connection is killed");
    }
    // Then every connection of the proxy at once: pooled, tracking and the
    // MULTI client's own.
    let killed = s.direct.cmd("CLIENT KILL TYPE normal SKIPME yes").await;
    let killed: u64 = killed.trim_start_matches(':').trim_end().parse().unwrap_or(0);
    s.expect(
        killed > ids.len() as u64,
        &format!("CLIENT KILL TYPE normal killed {killed}"),
    );
    s.faults += killed;
    s.finish().await
}

/// `maxmemory 1` with noeviction: writes are answered OOM.
async fn redis_out_of_memory() -> Row {
    let mut s = Scenario::start("oom", &["--maxmemory-policy", "noeviction"], NO_TRANSACTIONS).await;
    let mut client = s.proxy.raw().await;
    assert_eq!(s.direct.cmd("SET chaos:oom:probe before").await, "+OK\r\n");
    let cached = s.cached(&mut client, "chaos:oom:probe").await;
    s.expect(cached, "the probe is in L1 before the fault");
    assert_eq!(s.direct.cmd("CONFIG SET maxmemory 1").await, "+OK\r\n");
    s.faults += 1;
    s.same_error(&mut client, "SET chaos:oom:probe after", "OOM").await;
    s.same_error(&mut client, "INCR chaos:oom:count", "OOM").await;
    s.same_error(&mut client, "HSET chaos:oom:hash f v", "OOM").await;
    s.same_transaction("SET chaos:oom:probe after").await;
    s.same_read(&mut client, "GET chaos:oom:probe").await;
    s.workload_errors("-OOM ", 5).await;
    assert_eq!(s.direct.cmd("CONFIG SET maxmemory 0").await, "+OK\r\n");
    s.same_read(&mut client, "GET chaos:oom:probe").await;
    s.finish().await
}

/// Redis made a replica (`replica-read-only yes`) of another Redis that
/// holds newer values of every key: writes are answered READONLY, and
/// once the replica has its master's data (and the proxy has seen Redis's
/// invalidations up to then), no read may return the older values L1 held.
async fn redis_made_a_read_only_replica() -> Row {
    let mut s = Scenario::start("readonly", &["--replica-read-only", "yes"], NO_TRANSACTIONS).await;
    // While it loads its master's data a replica answers LOADING to the
    // workload, in a window no direct probe can be sure to catch.
    s.allowed_codes.push("LOADING");
    // Disk-based sync starts at once (a diskless one waits for the master's
    // once-a-second replication timer).
    let master = RedisServer::start_with(&["--repl-diskless-sync", "no"]);
    let mut to_master = RawClient::connect(master.addr()).await;
    let mut client = s.proxy.raw().await;
    assert_eq!(s.direct.cmd("SET chaos:readonly:probe before").await, "+OK\r\n");
    let cached = s.cached(&mut client, "chaos:readonly:probe").await;
    s.expect(cached, "the probe is in L1 before the fault");
    // The clients' writes are held while the master is given values 1000
    // seqs ahead of anything sent so far and Redis becomes its replica;
    // their next writes (refused, then accepted again) go beyond them.
    s.ledger.hold_writes.store(true, SeqCst);
    let ledger = &s.ledger;
    let held = wait_for(async || ledger.writing.load(SeqCst) == 0).await;
    s.expect(held, "the clients' writes pause");
    let mut newer = Vec::new();
    for slot in &s.ledger.slots {
        let seq = slot.attempted.fetch_add(1000, SeqCst) + 1000;
        let args = slot.write_args(seq);
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        to_master.command(&args).await;
        newer.push(seq);
    }
    for counter in &s.ledger.counters {
        let held = s.direct.cmd(&format!("GET {}", counter.key)).await;
        let held: u64 = held.lines().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
        to_master.cmd(&format!("SET {} {}", counter.key, held + 1000)).await;
    }
    to_master.cmd("SET chaos:readonly:probe master").await;
    to_master.cmd("SET chaos:readonly:sentinel before").await;
    let replicaof = format!("REPLICAOF 127.0.0.1 {}", master.port());
    assert_eq!(s.direct.cmd(&replicaof).await, "+OK\r\n");
    s.faults += 1;
    s.ledger.hold_writes.store(false, SeqCst);
    s.same_error(&mut client, "SET chaos:readonly:probe after", "READONLY")
        .await;
    s.same_error(&mut client, "INCR chaos:readonly:count", "READONLY").await;
    s.same_transaction("SET chaos:readonly:probe after").await;
    let synced = wait_for(async || {
        info_field(&mut s.direct, "replication", "master_link_status").await == "up"
            && s.direct.cmd("GET chaos:readonly:sentinel").await == "$6\r\nbefore\r\n"
    })
    .await;
    s.expect(synced, "the replica has its master's data");
    // Redis's invalidations up to the sync have reached L1 once a change
    // made after it shows through L1.
    let cached = s.cached(&mut client, "chaos:readonly:sentinel").await;
    s.expect(cached, "L1 caches from the replica");
    to_master.cmd("SET chaos:readonly:sentinel after").await;
    let seen = wait_for(async || client.cmd("GET chaos:readonly:sentinel").await == "$5\r\nafter\r\n").await;
    s.expect(seen, "a change replicated from the master shows through L1");
    for (slot, seq) in s.ledger.slots.iter().zip(newer) {
        slot.acked.fetch_max(seq, SeqCst);
    }
    s.same_read(&mut client, "GET chaos:readonly:probe").await;
    s.workload_errors("-READONLY ", 5).await;
    assert_eq!(s.direct.cmd("REPLICAOF NO ONE").await, "+OK\r\n");
    drop(master);
    s.finish().await
}

/// DEBUG RELOAD with a delay per key: while Redis loads, it answers
/// LOADING.
async fn redis_loading() -> Row {
    let mut s = Scenario::start(
        "loading",
        &[
            "--enable-debug-command",
            "yes",
            "--loading-process-events-interval-bytes",
            "1024",
            "--key-load-delay",
            "1000",
        ],
        NO_TRANSACTIONS,
    )
    .await;
    // About 1.5 s of loading.
    assert_eq!(
        s.direct.cmd("DEBUG POPULATE 1500 chaos:loading:filler 100").await,
        "+OK\r\n"
    );
    let mut client = s.proxy.raw().await;
    for pass in 0..2 {
        // A key of its own per pass: none is ever read through L1.
        let probe = format!("chaos:loading:probe{pass}");
        let mut reloader = RawClient::connect(s.redis.addr()).await;
        reloader.send_command(&[b"DEBUG", b"RELOAD"]).await;
        s.faults += 1;
        let loading = wait_for(async || s.direct.cmd(&format!("GET {probe}")).await.starts_with("-LOADING ")).await;
        s.expect(loading, "Redis answers LOADING during DEBUG RELOAD");
        s.same_error(&mut client, &format!("GET {probe}"), "LOADING").await;
        s.same_error(&mut client, &format!("SET {probe} v"), "LOADING").await;
        s.same_transaction(&format!("SET {probe} v")).await;
        let reloaded = reloader.read_reply().await;
        s.expect(reloaded == b"+OK\r\n", &format!("DEBUG RELOAD answers {reloaded:?}"));
        let back = s.progress(3).await;
        s.expect(back, "every client completes clean rounds after the reload");
    }
    s.finish().await
}

/// A script that never ends, past `busy-reply-threshold`: Redis answers
/// BUSY until SCRIPT KILL. Once run straight on Redis and killed through
/// the proxy, once run through the proxy and killed on Redis: the killed
/// script's error reaches its client unchanged either way.
async fn redis_busy() -> Row {
    let mut s = Scenario::start("busy", &["--busy-reply-threshold", "100"], NO_TRANSACTIONS).await;
    let mut client = s.proxy.raw().await;
    let mut killed_direct = String::new();
    for through_proxy in [false, true] {
        let probe = format!("chaos:busy:probe{through_proxy}");
        let mut runner = if through_proxy {
            // On a connection of its own (CLIENT SETNAME moves it there), so
            // the probes below do not queue behind the script on a shared one.
            let mut runner = s.proxy.raw().await;
            let named = runner.cmd("CLIENT SETNAME chaos-busy-runner").await;
            s.expect(named == "+OK\r\n", &format!("CLIENT SETNAME answers {named:?}"));
            runner
        } else {
            RawClient::connect(s.redis.addr()).await
        };
        runner.send_command(&[b"EVAL", b"while true do end", b"0"]).await;
        s.faults += 1;
        let busy = wait_for(async || s.direct.cmd(&format!("GET {probe}")).await.starts_with("-BUSY ")).await;
        s.expect(busy, "Redis answers BUSY while the script runs");
        s.same_error(&mut client, &format!("GET {probe}"), "BUSY").await;
        s.same_error(&mut client, &format!("SET {probe} v"), "BUSY").await;
        s.same_transaction(&format!("SET {probe} v")).await;
        s.workload_errors("-BUSY ", 3).await;
        let kill = if through_proxy {
            s.direct.cmd("SCRIPT KILL").await
        } else {
            client.cmd("SCRIPT KILL").await
        };
        s.expect(kill == "+OK\r\n", &format!("SCRIPT KILL answers {kill:?}"));
        let killed = String::from_utf8_lossy(&runner.read_reply().await).into_owned();
        if through_proxy {
            s.expect(
                killed == killed_direct,
                &format!("the killed script's error {killed_direct:?} passes unchanged, not {killed:?}"),
            );
        } else {
            s.expect(
                killed.starts_with("-ERR "),
                &format!("the script was killed: {killed:?}"),
            );
            killed_direct = killed;
        }
        let back = s.progress(3).await;
        s.expect(back, "every client completes clean rounds after SCRIPT KILL");
    }
    s.finish().await
}

// ---------------------------------------------------------------------------

fn table(rows: &[Row]) -> String {
    let header = [
        "fault",
        "faults injected",
        "requests sent",
        "errors returned",
        "writes verified",
        "lost writes",
        "stale reads",
        "misrouted replies",
        "other anomalies",
        "recovered",
        "L1 hits",
        "seconds",
    ];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                row.fault.to_string(),
                row.faults.to_string(),
                row.requests.to_string(),
                row.errors.to_string(),
                row.writes_verified.to_string(),
                row.lost.to_string(),
                row.stale.to_string(),
                row.misrouted.to_string(),
                row.anomalies.to_string(),
                if row.recovered { "yes" } else { "NO" }.to_string(),
                row.l1_hits.to_string(),
                format!("{:.1}", row.seconds),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            cells
                .iter()
                .map(|row| row[c].len())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<&str>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (value, width))| {
                if c == 0 {
                    format!("{value:<width$}")
                } else {
                    format!("{value:>width$}")
                }
            })
            .collect();
        format!("| {} |\n", padded.join(" | "))
    };
    let mut out = line(header.to_vec());
    out.push_str(&line(widths.iter().map(|_| "").collect()).replace(' ', "-"));
    for row in &cells {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out.push_str("\nerrors returned, by kind:\n");
    for row in rows {
        out.push_str(&format!("{}: {}\n", row.fault, row.error_kinds));
    }
    out.push_str("\nRedis's errors, byte-identical through the proxy:\n");
    for row in rows {
        for line in &row.redis_errors {
            out.push_str(&format!("{}: {line}\n", row.fault));
        }
    }
    for row in rows {
        for note in &row.notes {
            out.push_str(&format!("{}: {note}\n", row.fault));
        }
    }
    out
}

/// Runs one fault's scenario; a panic or a scenario that never ends (the
/// proxy badly broken) is a failed row, so the table is still printed.
async fn run(fault: &'static str, scenario: impl Future<Output = Row> + 'static) -> Row {
    let failed = |why: String| Row {
        fault,
        faults: 0,
        requests: 0,
        errors: 0,
        writes_verified: 0,
        lost: 0,
        stale: 0,
        misrouted: 0,
        anomalies: 1,
        recovered: false,
        l1_hits: 0,
        seconds: 0.0,
        error_kinds: String::new(),
        redis_errors: Vec::new(),
        notes: vec![why],
    };
    // On this thread (its futures need not be Send), as a task of its own
    // so that a panic is caught.
    let local = tokio::task::LocalSet::new();
    let task = local.spawn_local(scenario);
    let outcome = local.run_until(tokio::time::timeout(SCENARIO_LIMIT, task)).await;
    match outcome {
        Ok(Ok(row)) => row,
        Ok(Err(error)) => failed(format!("the scenario failed: {error}")),
        Err(_) => failed(format!("the scenario did not end within {SCENARIO_LIMIT:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_under_load_lose_nothing_misroute_nothing_and_recover() {
    let started = Instant::now();
    let rows = vec![
        run("kill", redis_killed_and_restarted()).await,
        run("pause", redis_paused()).await,
        run("tracking", tracking_connection_killed()).await,
        run("pool", pool_connections_killed()).await,
        run("oom", redis_out_of_memory()).await,
        run("readonly", redis_made_a_read_only_replica()).await,
        run("loading", redis_loading()).await,
        run("busy", redis_busy()).await,
    ];
    let table = table(&rows);
    println!("\nchaos ({:.1} s)\n{table}", started.elapsed().as_secs_f64());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact directory");
    std::fs::write(dir.join("chaos-table.txt"), &table).expect("table written");
    for row in &rows {
        assert!(row.faults > 0, "{}: no fault injected", row.fault);
        assert!(row.requests > 0 && row.writes_verified > 0, "{}: no load", row.fault);
        assert_eq!(row.lost, 0, "{}: acknowledged writes missing from Redis", row.fault);
        assert_eq!(row.stale, 0, "{}: stale reads", row.fault);
        assert_eq!(row.misrouted, 0, "{}: misrouted replies", row.fault);
        assert_eq!(row.anomalies, 0, "{}: anomalies (see the notes above)", row.fault);
        assert!(row.recovered, "{}: did not recover", row.fault);
    }
}
