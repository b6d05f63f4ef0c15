//! The soak test's load, its memory samples and its judgement, shared by
//! `examples/soak.rs` (which `scripts/soak.sh` runs against a release
//! proxy) and `tests/soak.rs` (a short run in-process). The includer
//! declares `mod datasets` (`examples/common/datasets.rs`) beside this one.
//!
//! Every client connection owns its keys (strings, hashes, counters) and
//! keeps a model of what each holds, so every reply can be checked: a read
//! of its own key must answer what it last wrote (or, around an EXPIRE,
//! what the timing allows), a read of another client's key must answer a
//! value of the generator's table or nil, a read of a shared key its one
//! value, a read of an absent key nil. A reply that fails the check is a
//! wrong value; an error reply, a broken connection or a timeout is an
//! error.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::Value;

use crate::datasets::{Rng, analytics, json_report, log_batch, sentence};

/// Values generated per class.
const VALUES_PER_CLASS: usize = 24;
/// Keys every client's reads of shared keys pick from (written once).
const SHARED_KEYS: usize = 500;
/// Fields per hash (`f0`..).
const HASH_FIELDS: u8 = 4;
/// Counters per client.
const COUNTERS: usize = 2;
/// Messages kept of each kind of failure (the counts are complete).
const KEPT_MESSAGES: usize = 10;
/// A reply slower than this counts as an error (the client then reconnects).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack for the clocks of Redis and of this process in expiry checks.
const CLOCK_SLACK: Duration = Duration::from_millis(50);

/// What one value class looks like: how many bytes, how compressible.
struct Class {
    weight: u64,
    sizes: (usize, usize),
    make: fn(&mut Rng, usize) -> Vec<u8>,
}

fn text(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = sentence(rng, 2, 6);
    while out.len() < size {
        out.push(' ');
        out.push_str(&sentence(rng, 2, 6));
    }
    out.truncate(size);
    out.into_bytes()
}

fn random_bytes(rng: &mut Rng, size: usize) -> Vec<u8> {
    (0..size).map(|_| rng.next() as u8).collect()
}

/// Small text under the compression threshold, mid-sized records around
/// it, compressible JSON and logs above it, random bytes above it that do
/// not shrink, and a few large compressible values.
const CLASSES: &[Class] = &[
    Class {
        weight: 30,
        sizes: (16, 200),
        make: text,
    },
    Class {
        weight: 20,
        sizes: (300, 1000),
        make: text,
    },
    Class {
        weight: 25,
        sizes: (2 << 10, 12 << 10),
        make: |rng, size| json_report(rng, size).into_bytes(),
    },
    Class {
        weight: 15,
        sizes: (1 << 10, 8 << 10),
        make: |rng, size| log_batch(rng, size).into_bytes(),
    },
    Class {
        weight: 7,
        sizes: (1 << 10, 6 << 10),
        make: random_bytes,
    },
    Class {
        weight: 3,
        sizes: (16 << 10, 64 << 10),
        make: |rng, size| analytics(rng, size).into_bytes(),
    },
];

/// The table every written value comes from. Each value starts with
/// `#<index>#`, so a read names the value it claims to be in O(1) and is
/// then compared with it in full.
pub struct Values {
    values: Vec<Vec<u8>>,
    /// (cumulative weight, first index) per class.
    classes: Vec<(u64, usize)>,
}

impl Values {
    pub fn generate() -> Values {
        let mut rng = Rng(0x50a4_0000_0000_0001);
        let mut values = Vec::new();
        let mut classes = Vec::new();
        let mut cumulative = 0;
        for class in CLASSES {
            cumulative += class.weight;
            classes.push((cumulative, values.len()));
            for _ in 0..VALUES_PER_CLASS {
                let size = class.sizes.0 + rng.below((class.sizes.1 - class.sizes.0) as u64) as usize;
                let mut value = format!("#{}#", values.len()).into_bytes();
                value.extend((class.make)(&mut rng, size));
                values.push(value);
            }
        }
        Values { values, classes }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn get(&self, id: u32) -> &[u8] {
        &self.values[id as usize]
    }

    /// A value index, classes drawn by weight.
    pub fn pick(&self, rng: &mut Rng) -> u32 {
        let total = self.classes.last().map_or(1, |class| class.0);
        let roll = rng.below(total);
        let first = self
            .classes
            .iter()
            .find(|class| roll < class.0)
            .map_or(0, |class| class.1);
        (first + rng.below(VALUES_PER_CLASS as u64) as usize) as u32
    }

    /// The mean size of a picked value.
    pub fn mean_size(&self) -> f64 {
        let total = self.classes.last().map_or(1, |class| class.0) as f64;
        let mut previous = 0;
        let mut mean = 0.0;
        for &(cumulative, first) in &self.classes {
            let class: usize = self.values[first..first + VALUES_PER_CLASS].iter().map(Vec::len).sum();
            mean += (cumulative - previous) as f64 / total * class as f64 / VALUES_PER_CLASS as f64;
            previous = cumulative;
        }
        mean
    }

    /// The table's index of `bytes`, if they are one of its values.
    pub fn identify(&self, bytes: &[u8]) -> Option<u32> {
        let rest = bytes.strip_prefix(b"#")?;
        let end = rest.iter().position(|&byte| byte == b'#')?;
        let id: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
        (self.values.get(id)? == bytes).then_some(id as u32)
    }
}

/// The run's shape: how many clients, and how many keys each owns.
#[derive(Clone, Debug)]
pub struct Plan {
    pub clients: usize,
    pub strings_per_client: usize,
    pub hashes_per_client: usize,
}

impl Plan {
    /// Enough string keys that all of them together hold about twice
    /// `l1_bytes`, so L1 cannot keep them all and evicts.
    pub fn for_cache(clients: usize, l1_bytes: u64, values: &Values) -> Plan {
        let clients = clients.max(1);
        let wanted = 2.0 * l1_bytes as f64 / values.mean_size();
        let strings_per_client = ((wanted / clients as f64).ceil() as usize).clamp(4, 100_000);
        Plan {
            clients,
            strings_per_client,
            hashes_per_client: (strings_per_client / 8).max(2),
        }
    }
}

/// What a key holds, as its owner knows it.
#[derive(Clone, Copy, Debug)]
enum Held {
    Absent,
    Value(u32),
    /// An expiry was set by a request sent at `sent` and answered at
    /// `acked` (None: by the request being planned, answered when its
    /// reply comes): the key lives until `sent + ttl` at least and is gone
    /// after `acked + ttl`.
    Expiring {
        id: u32,
        sent: Instant,
        acked: Option<Instant>,
        ttl: Duration,
    },
    /// A request that wrote it failed: any value of the table, or none.
    Unknown,
}

/// What a string read must answer.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Held(Held),
    /// Another client's key: any value of the table, or nil.
    Known,
}

/// One command of a request, with what its reply must be.
#[derive(Debug)]
enum Op {
    Get(String, Expect),
    Mget(Vec<(String, Expect)>),
    /// SET of a value of the table.
    Set(String, u32),
    /// DEL: the count it must answer, if certain.
    Del(String, Option<i64>),
    /// PEXPIRE of a key that certainly exists.
    Expire(String, Duration),
    /// INCR: the value it must answer, if known.
    Incr(String, Option<i64>),
    /// HSET of one field to a value of the table: the count of new
    /// fields it must answer, if certain.
    Hset(String, u8, u32, Option<i64>),
    /// HGETALL: the fields it must answer (None = another client's or
    /// unknown: every value from the table).
    Hgetall(String, Option<BTreeMap<u8, u32>>),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Get(..) => "GET",
            Op::Mget(..) => "MGET",
            Op::Set(..) => "SET",
            Op::Del(..) => "DEL",
            Op::Expire(..) => "PEXPIRE",
            Op::Incr(..) => "INCR",
            Op::Hset(..) => "HSET",
            Op::Hgetall(..) => "HGETALL",
        }
    }
}

/// Command names counted separately (the order of [`Tally::by_command`]).
pub const COMMANDS: &[&str] = &["GET", "MGET", "SET", "DEL", "PEXPIRE", "INCR", "HSET", "HGETALL"];

/// What every client adds to while the run goes on.
#[derive(Default)]
pub struct Tally {
    /// Commands answered (a pipeline of five counts five; an MGET one).
    pub requests: AtomicU64,
    pub pipelines: AtomicU64,
    pub reconnects: AtomicU64,
    pub errors: AtomicU64,
    pub wrong: AtomicU64,
    pub by_command: [AtomicU64; 8],
    messages: Mutex<(Vec<String>, Vec<String>)>,
}

impl Tally {
    fn error(&self, message: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.messages.lock().expect("tally lock");
        if kept.0.len() < KEPT_MESSAGES {
            kept.0.push(message);
        }
    }

    fn wrong(&self, message: String) {
        self.wrong.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.messages.lock().expect("tally lock");
        if kept.1.len() < KEPT_MESSAGES {
            kept.1.push(message);
        }
    }

    /// The first errors and wrong values, as messages.
    pub fn messages(&self) -> (Vec<String>, Vec<String>) {
        self.messages.lock().expect("tally lock").clone()
    }

    fn count(&self, op: &Op) {
        if let Some(index) = COMMANDS.iter().position(|name| *name == op.name()) {
            self.by_command[index].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn string_key(client: usize, slot: usize) -> String {
    format!("soak-str:{client}:{slot}")
}

fn hash_key(client: usize, slot: usize) -> String {
    format!("soak-hash:{client}:{slot}")
}

fn counter_key(client: usize, slot: usize) -> String {
    format!("soak-ctr:{client}:{slot}")
}

/// The slot of an owned key (its last part).
fn slot_of(key: &str) -> usize {
    key.rsplit(':').next().and_then(|slot| slot.parse().ok()).unwrap_or(0)
}

fn shared_key(index: usize) -> String {
    format!("soak-ro:{index}")
}

async fn connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    redis::Client::open(url)?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Writes the shared keys (each holds value `index % table size`).
pub async fn write_shared(url: &str, values: &Values) -> redis::RedisResult<()> {
    let mut connection = connect(url).await?;
    for chunk in (0..SHARED_KEYS).collect::<Vec<_>>().chunks(50) {
        let mut pipe = redis::pipe();
        for &index in chunk {
            pipe.cmd("SET")
                .arg(shared_key(index))
                .arg(values.get((index % values.len()) as u32))
                .ignore();
        }
        pipe.query_async::<()>(&mut connection).await?;
    }
    Ok(())
}

/// One client: its keys, its model of them, its connection.
struct Client {
    id: usize,
    url: String,
    plan: Plan,
    values: Arc<Values>,
    tally: Arc<Tally>,
    rng: Rng,
    strings: Vec<Held>,
    hashes: Vec<Option<BTreeMap<u8, u32>>>,
    counters: Vec<Option<i64>>,
    connection: Option<redis::aio::MultiplexedConnection>,
}

impl Client {
    fn new(id: usize, url: &str, plan: &Plan, values: Arc<Values>, tally: Arc<Tally>) -> Client {
        Client {
            id,
            url: url.to_string(),
            plan: plan.clone(),
            values,
            tally,
            rng: Rng(0x50a4_c11e_0000_0000 ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            strings: vec![Held::Unknown; plan.strings_per_client],
            hashes: vec![None; plan.hashes_per_client],
            counters: vec![None; COUNTERS],
            connection: None,
        }
    }

    /// The connection, opened again if it was dropped; None once `until`
    /// passes without one.
    async fn connection(&mut self, until: Instant) -> Option<&mut redis::aio::MultiplexedConnection> {
        while self.connection.is_none() && Instant::now() < until {
            match connect(&self.url).await {
                Ok(connection) => self.connection = Some(connection),
                Err(error) => {
                    self.tally.error(format!("client {}: connect: {error}", self.id));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        self.connection.as_mut()
    }

    /// Gives every owned key a known value, pipelined a few at a time
    /// (as the load itself is, so set-up leaves no larger buffers behind).
    async fn write_own_keys(&mut self, until: Instant) {
        let mut commands = Vec::new();
        for slot in 0..self.plan.strings_per_client {
            let id = self.values.pick(&mut self.rng);
            commands.push(Op::Set(string_key(self.id, slot), id));
        }
        for slot in 0..self.plan.hashes_per_client {
            commands.push(Op::Del(hash_key(self.id, slot), None));
            for field in 0..HASH_FIELDS {
                let id = self.values.pick(&mut self.rng);
                commands.push(Op::Hset(hash_key(self.id, slot), field, id, None));
            }
        }
        for slot in 0..COUNTERS {
            commands.push(Op::Del(counter_key(self.id, slot), None));
        }
        for chunk in commands.chunks(8) {
            let mut pipe = redis::pipe();
            for op in chunk {
                pipe.add_command(self.command(op)).ignore();
            }
            let Some(connection) = self.connection(until).await else {
                return;
            };
            if let Err(error) = pipe.query_async::<()>(connection).await {
                self.tally
                    .error(format!("client {}: writing its keys: {error}", self.id));
                self.connection = None;
                // What that chunk wrote stays unknown.
                self.forget(chunk);
                continue;
            }
            for op in chunk {
                match op {
                    Op::Set(key, id) => self.strings[slot_of(key)] = Held::Value(*id),
                    Op::Del(key, _) if key.starts_with("soak-hash:") => {
                        self.hashes[slot_of(key)] = Some(BTreeMap::new())
                    }
                    Op::Hset(key, field, id, _) => {
                        if let Some(fields) = self.hashes[slot_of(key)].as_mut() {
                            fields.insert(*field, *id);
                        }
                    }
                    Op::Del(key, _) => self.counters[slot_of(key)] = Some(0),
                    _ => {}
                }
            }
        }
    }

    /// A slot, skewed towards the first ones (so some keys are hot).
    fn skewed(&mut self, slots: usize) -> usize {
        let unit = self.rng.below(1 << 20) as f64 / (1 << 20) as f64;
        ((unit * unit * slots as f64) as usize).min(slots - 1)
    }

    /// What a read of `key` (the client's slot or someone's) must answer.
    fn string_read(&mut self) -> (String, Expect) {
        let roll = self.rng.below(100);
        if roll < 70 {
            let slot = self.skewed(self.plan.strings_per_client);
            (string_key(self.id, slot), Expect::Held(self.strings[slot]))
        } else if roll < 85 {
            let owner = self.rng.below(self.plan.clients as u64) as usize;
            let slot = self.skewed(self.plan.strings_per_client);
            if owner == self.id {
                (string_key(self.id, slot), Expect::Held(self.strings[slot]))
            } else {
                (string_key(owner, slot), Expect::Known)
            }
        } else if roll < 95 {
            let index = self.rng.below(SHARED_KEYS as u64) as usize;
            let id = (index % self.values.len()) as u32;
            (shared_key(index), Expect::Held(Held::Value(id)))
        } else {
            let key = format!("soak-none:{}", self.rng.below(1_000_000));
            (key, Expect::Held(Held::Absent))
        }
    }

    /// The next command, its model effect applied (an expiry set by it is
    /// completed with the reply's time in [`Client::settle`]).
    fn plan_op(&mut self, sent: Instant) -> Op {
        let roll = self.rng.below(100);
        let strings = self.plan.strings_per_client;
        match roll {
            0..48 => {
                let (key, expect) = self.string_read();
                Op::Get(key, expect)
            }
            48..56 => Op::Mget((0..4).map(|_| self.string_read()).collect()),
            56..70 => {
                let slot = self.rng.below(strings as u64) as usize;
                let id = self.values.pick(&mut self.rng);
                self.strings[slot] = Held::Value(id);
                Op::Set(string_key(self.id, slot), id)
            }
            70..73 => {
                let slot = self.rng.below(strings as u64) as usize;
                let count = match self.strings[slot] {
                    Held::Absent => Some(0),
                    Held::Value(_) => Some(1),
                    Held::Expiring { .. } | Held::Unknown => None,
                };
                self.strings[slot] = Held::Absent;
                Op::Del(string_key(self.id, slot), count)
            }
            73..76 => {
                let slot = self.rng.below(strings as u64) as usize;
                match self.strings[slot] {
                    Held::Value(id) => {
                        let ttl = Duration::from_millis(500 + self.rng.below(3500));
                        self.strings[slot] = Held::Expiring {
                            id,
                            sent,
                            acked: None,
                            ttl,
                        };
                        Op::Expire(string_key(self.id, slot), ttl)
                    }
                    // Only a key that certainly exists gets an expiry, so
                    // the model stays certain; any other is written.
                    _ => {
                        let id = self.values.pick(&mut self.rng);
                        self.strings[slot] = Held::Value(id);
                        Op::Set(string_key(self.id, slot), id)
                    }
                }
            }
            76..84 => {
                let slot = self.rng.below(COUNTERS as u64) as usize;
                let next = self.counters[slot].map(|value| value + 1);
                self.counters[slot] = next;
                Op::Incr(counter_key(self.id, slot), next)
            }
            84..91 => {
                let slot = self.rng.below(self.plan.hashes_per_client as u64) as usize;
                let field = self.rng.below(u64::from(HASH_FIELDS)) as u8;
                let id = self.values.pick(&mut self.rng);
                let new = self.hashes[slot]
                    .as_mut()
                    .map(|fields| i64::from(fields.insert(field, id).is_none()));
                Op::Hset(hash_key(self.id, slot), field, id, new)
            }
            91..93 => {
                let slot = self.rng.below(self.plan.hashes_per_client as u64) as usize;
                let count = self.hashes[slot].as_ref().map(|fields| i64::from(!fields.is_empty()));
                // Whatever it held, it holds nothing now.
                self.hashes[slot] = Some(BTreeMap::new());
                Op::Del(hash_key(self.id, slot), count)
            }
            _ => {
                let owner = if self.rng.below(4) == 0 {
                    self.rng.below(self.plan.clients as u64) as usize
                } else {
                    self.id
                };
                let slot = self.rng.below(self.plan.hashes_per_client as u64) as usize;
                let expect = if owner == self.id {
                    self.hashes[slot].clone()
                } else {
                    None
                };
                Op::Hgetall(hash_key(owner, slot), expect)
            }
        }
    }

    fn command(&self, op: &Op) -> redis::Cmd {
        let mut command;
        match op {
            Op::Get(key, _) => {
                command = redis::cmd("GET");
                command.arg(key);
            }
            Op::Mget(keys) => {
                command = redis::cmd("MGET");
                for (key, _) in keys {
                    command.arg(key);
                }
            }
            Op::Set(key, id) => {
                command = redis::cmd("SET");
                command.arg(key).arg(self.values.get(*id));
            }
            Op::Del(key, _) => {
                command = redis::cmd("DEL");
                command.arg(key);
            }
            Op::Expire(key, ttl) => {
                command = redis::cmd("PEXPIRE");
                command.arg(key).arg(ttl.as_millis() as u64);
            }
            Op::Incr(key, _) => {
                command = redis::cmd("INCR");
                command.arg(key);
            }
            Op::Hset(key, field, id, _) => {
                command = redis::cmd("HSET");
                command.arg(key).arg(format!("f{field}")).arg(self.values.get(*id));
            }
            Op::Hgetall(key, _) => {
                command = redis::cmd("HGETALL");
                command.arg(key);
            }
        }
        command
    }

    /// Checks one string reply against what it must be.
    fn check_string(&self, expect: Expect, reply: &Value, sent: Instant, answered: Instant) -> Result<(), String> {
        let value = match reply {
            Value::Nil => None,
            Value::BulkString(bytes) => Some(bytes.as_slice()),
            other => return Err(format!("not a string reply: {other:?}")),
        };
        let known = |bytes: &[u8]| self.values.identify(bytes).is_some();
        let describe = |value: Option<&[u8]>| match value {
            None => "nil".to_string(),
            Some(bytes) => match self.values.identify(bytes) {
                Some(id) => format!("value #{id}"),
                None => format!("{} bytes not from the table", bytes.len()),
            },
        };
        let fine = match expect {
            Expect::Known | Expect::Held(Held::Unknown) => value.is_none_or(known),
            Expect::Held(Held::Absent) => value.is_none(),
            Expect::Held(Held::Value(id)) => value == Some(self.values.get(id)),
            Expect::Held(Held::Expiring {
                id,
                sent: set,
                acked,
                ttl,
            }) => {
                let acked = acked.unwrap_or(answered);
                if answered + CLOCK_SLACK < set + ttl {
                    value == Some(self.values.get(id))
                } else if sent > acked + ttl + CLOCK_SLACK {
                    value.is_none()
                } else {
                    value.is_none() || value == Some(self.values.get(id))
                }
            }
        };
        if fine {
            Ok(())
        } else {
            Err(format!("expected {expect:?}, got {}", describe(value)))
        }
    }

    fn check_hash(&self, expect: &Option<BTreeMap<u8, u32>>, reply: &Value) -> Result<(), String> {
        let items: Vec<(&Value, &Value)> = match reply {
            Value::Array(items) if items.len() % 2 == 0 => items.chunks(2).map(|pair| (&pair[0], &pair[1])).collect(),
            Value::Map(pairs) => pairs.iter().map(|(field, value)| (field, value)).collect(),
            other => return Err(format!("not a hash reply: {other:?}")),
        };
        let mut got = BTreeMap::new();
        for (field, value) in items {
            let (Value::BulkString(field), Value::BulkString(value)) = (field, value) else {
                return Err(format!("not a field and value: {field:?} {value:?}"));
            };
            let field = std::str::from_utf8(field)
                .ok()
                .and_then(|name| name.strip_prefix('f'))
                .and_then(|index| index.parse::<u8>().ok())
                .filter(|index| *index < HASH_FIELDS)
                .ok_or_else(|| format!("unknown field {:?}", String::from_utf8_lossy(field)))?;
            let id = self
                .values
                .identify(value)
                .ok_or_else(|| format!("field f{field}: {} bytes not from the table", value.len()))?;
            got.insert(field, id);
        }
        match expect {
            Some(fields) if *fields != got => Err(format!("expected fields {fields:?}, got {got:?}")),
            _ => Ok(()),
        }
    }

    /// Checks a reply; returns what went wrong, and whether it was an
    /// error (rather than a wrong value).
    fn check(&self, op: &Op, reply: &Value, sent: Instant, answered: Instant) -> Result<(), (bool, String)> {
        if let Value::ServerError(error) = reply {
            return Err((true, format!("error reply: {error:?}")));
        }
        let integer = |expected: Option<i64>| match (reply, expected) {
            (Value::Int(got), Some(expected)) if *got != expected => Err(format!("expected {expected}, got {got}")),
            (Value::Int(_), _) => Ok(()),
            (other, _) => Err(format!("not an integer: {other:?}")),
        };
        let outcome = match op {
            Op::Get(_, expect) => self.check_string(*expect, reply, sent, answered),
            Op::Mget(keys) => match reply {
                Value::Array(items) if items.len() == keys.len() => {
                    keys.iter().zip(items).try_for_each(|((key, expect), item)| {
                        self.check_string(*expect, item, sent, answered)
                            .map_err(|message| format!("{key}: {message}"))
                    })
                }
                other => Err(format!("not {} replies: {other:?}", keys.len())),
            },
            Op::Set(..) => match reply {
                Value::Okay => Ok(()),
                other => Err(format!("expected OK, got {other:?}")),
            },
            Op::Expire(..) => integer(Some(1)),
            Op::Del(_, count) | Op::Incr(_, count) | Op::Hset(.., count) => integer(*count),
            Op::Hgetall(_, expect) => self.check_hash(expect, reply),
        };
        outcome.map_err(|message| (false, message))
    }

    /// Completes the model after a request's replies: expiries set by it
    /// were acknowledged at `answered`; counters learn their value.
    fn settle(&mut self, ops: &[Op], replies: Option<&[Value]>, answered: Instant) {
        for held in &mut self.strings {
            if let Held::Expiring {
                acked: acked @ None, ..
            } = held
            {
                *acked = Some(answered);
            }
        }
        let Some(replies) = replies else {
            return;
        };
        for (op, reply) in ops.iter().zip(replies) {
            if let (Op::Incr(key, None), Value::Int(value)) = (op, reply) {
                self.counters[slot_of(key)] = Some(*value);
            }
        }
    }

    /// After a failed request nothing it wrote is certain.
    fn forget(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::Set(key, _) | Op::Expire(key, _) => self.strings[slot_of(key)] = Held::Unknown,
                Op::Del(key, _) if key.starts_with("soak-str:") => self.strings[slot_of(key)] = Held::Unknown,
                Op::Del(key, _) => self.hashes[slot_of(key)] = None,
                Op::Incr(key, _) => self.counters[slot_of(key)] = None,
                Op::Hset(key, ..) => self.hashes[slot_of(key)] = None,
                Op::Get(..) | Op::Mget(..) | Op::Hgetall(..) => {}
            }
        }
    }

    /// One request: a command, or now and then a pipeline of several.
    async fn step(&mut self, until: Instant) {
        let sent = Instant::now();
        let count = if self.rng.below(100) < 5 {
            2 + self.rng.below(7) as usize
        } else {
            1
        };
        let ops: Vec<Op> = (0..count).map(|_| self.plan_op(sent)).collect();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for op in &ops {
            pipe.add_command(self.command(op));
        }
        let Some(connection) = self.connection(until).await else {
            return;
        };
        let result = pipe.query_async::<Vec<Value>>(connection).await;
        let answered = Instant::now();
        match result {
            Ok(replies) if replies.len() == ops.len() => {
                for (op, reply) in ops.iter().zip(&replies) {
                    self.tally.count(op);
                    if let Err((error, message)) = self.check(op, reply, sent, answered) {
                        let message = format!("client {}: {} {op:?}: {message}", self.id, op.name());
                        if error {
                            self.tally.error(message);
                        } else {
                            self.tally.wrong(message);
                        }
                        self.forget(std::slice::from_ref(op));
                    }
                }
                self.tally.requests.fetch_add(ops.len() as u64, Ordering::Relaxed);
                if count > 1 {
                    self.tally.pipelines.fetch_add(1, Ordering::Relaxed);
                }
                self.settle(&ops, Some(&replies), answered);
            }
            other => {
                let message = match other {
                    Ok(replies) => format!("{} replies to {} commands", replies.len(), ops.len()),
                    Err(error) => error.to_string(),
                };
                self.tally
                    .error(format!("client {}: request failed: {message}", self.id));
                self.settle(&ops, None, answered);
                self.forget(&ops);
                self.connection = None;
            }
        }
    }

    async fn run(mut self, started: Instant, until: Instant, reconnect_every: u64) {
        self.write_own_keys(until).await;
        // Everyone starts together once the keys are written.
        tokio::time::sleep_until(started.into()).await;
        while Instant::now() < until {
            self.step(until).await;
            if reconnect_every > 0 && self.rng.below(reconnect_every) == 0 {
                // Sessions come and go too: a leak per connection shows.
                self.connection = None;
                self.tally.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What the run is pointed at and how long it lasts.
#[derive(Clone, Debug)]
pub struct Options {
    /// `redis://host:port` of the proxy.
    pub proxy_url: String,
    /// `redis://host:port` of Redis itself (its used_memory is sampled).
    pub redis_url: Option<String>,
    /// The process whose memory is sampled (the proxy's).
    pub pid: u32,
    pub clients: usize,
    pub duration: Duration,
    pub sample_every: Duration,
    /// The proxy's `memory_cache.max_bytes` (sizes the key space).
    pub l1_bytes: u64,
    /// One request in this many (per client) is followed by a reconnect; 0 = never.
    pub reconnect_every: u64,
}

/// One look at the proxy process and its surroundings.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    pub rss_bytes: u64,
    pub threads: u64,
    pub fds: u64,
    /// Commands answered so far.
    pub requests: u64,
    pub l1_bytes: Option<u64>,
    pub l1_evictions: Option<u64>,
    pub pattern_bytes: Option<u64>,
    pub redis_used_memory: Option<u64>,
}

/// VmRSS (bytes) and Threads from `/proc/<pid>/status`, and the count of
/// its open file descriptors.
pub fn process_memory(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let rss = field("VmRSS:")? * 1024;
    let threads = field("Threads:")?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, threads, fds))
}

/// `name:value` of an INFO reply, as a number.
fn info_number(info: &str, name: &str) -> Option<u64> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix(name)?.strip_prefix(':'))?
        .parse()
        .ok()
}

async fn info(connection: &mut Option<redis::aio::MultiplexedConnection>, section: &str) -> Option<String> {
    let result = redis::cmd("INFO")
        .arg(section)
        .query_async::<String>(connection.as_mut()?)
        .await;
    if result.is_err() {
        *connection = None;
    }
    result.ok()
}

async fn sample(
    options: &Options,
    started: Instant,
    tally: &Tally,
    proxy: &mut Option<redis::aio::MultiplexedConnection>,
    redis: &mut Option<redis::aio::MultiplexedConnection>,
) -> Sample {
    let at = started.elapsed();
    let requests = tally.requests.load(Ordering::Relaxed);
    let (rss_bytes, threads, fds) = process_memory(options.pid).unwrap_or_default();
    let cache = info(proxy, "cache").await.unwrap_or_default();
    let memory = info(redis, "memory").await.unwrap_or_default();
    Sample {
        at,
        rss_bytes,
        threads,
        fds,
        requests,
        l1_bytes: info_number(&cache, "l1_bytes"),
        l1_evictions: info_number(&cache, "l1_evictions"),
        pattern_bytes: info_number(&cache, "pattern_bytes"),
        redis_used_memory: info_number(&memory, "used_memory"),
    }
}

/// A finished run: the samples and the clients' tally.
pub struct Run {
    pub plan: Plan,
    pub samples: Vec<Sample>,
    pub tally: Arc<Tally>,
    /// How long the load ran (from the first sample to the last).
    pub elapsed: Duration,
}

/// Runs the load for `options.duration` and samples the process every
/// `options.sample_every`; `on_sample` sees each sample as it is taken.
pub async fn run(options: &Options, mut on_sample: impl FnMut(&Sample)) -> redis::RedisResult<Run> {
    let values = Arc::new(Values::generate());
    let plan = Plan::for_cache(options.clients, options.l1_bytes, &values);
    write_shared(&options.proxy_url, &values).await?;
    let tally = Arc::new(Tally::default());
    // The clients connect and write their keys first; the load (and the
    // clock of the samples) starts when the slowest could have.
    let setup = Duration::from_secs(2) + Duration::from_millis(10 * options.clients as u64);
    let started = Instant::now() + setup;
    let until = started + options.duration;
    let clients: Vec<_> = (0..options.clients)
        .map(|id| {
            let client = Client::new(id, &options.proxy_url, &plan, values.clone(), tally.clone());
            tokio::spawn(client.run(started, until, options.reconnect_every))
        })
        .collect();
    let mut proxy = connect(&options.proxy_url).await.ok();
    let mut redis = match &options.redis_url {
        Some(url) => connect(url).await.ok(),
        None => None,
    };
    tokio::time::sleep_until(started.into()).await;
    let mut samples = Vec::new();
    let mut next = started;
    loop {
        let taken = sample(options, started, &tally, &mut proxy, &mut redis).await;
        on_sample(&taken);
        samples.push(taken);
        if Instant::now() >= until {
            break;
        }
        next = (next + options.sample_every).min(until);
        tokio::time::sleep_until(next.max(Instant::now()).into()).await;
    }
    let elapsed = started.elapsed();
    for client in clients {
        if let Err(error) = client.await {
            tally.error(format!("a client task failed: {error}"));
        }
    }
    Ok(Run {
        plan,
        samples,
        tally,
        elapsed,
    })
}

/// The least-squares slope of y over x (None for fewer than two distinct x).
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mean_x = points.iter().map(|point| point.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|point| point.1).sum::<f64>() / n;
    let spread: f64 = points.iter().map(|point| (point.0 - mean_x).powi(2)).sum();
    if spread == 0.0 {
        return None;
    }
    Some(
        points
            .iter()
            .map(|point| (point.0 - mean_x) * (point.1 - mean_y))
            .sum::<f64>()
            / spread,
    )
}

/// What the run is judged against.
#[derive(Clone, Debug)]
pub struct Limits {
    /// `memory_cache.max_bytes`.
    pub l1_bytes: u64,
    /// What the process may hold beyond L1 (runtime, buffers, the pattern
    /// engine, the allocator's slack).
    pub overhead_bytes: u64,
    /// The most the second half's trend may add over the whole run.
    pub growth_limit_bytes: u64,
    /// A second half shorter than this is too short to judge a trend.
    pub min_trend_span: Duration,
}

/// The RSS series, summarised.
#[derive(Clone, Debug)]
pub struct Summary {
    pub samples: usize,
    pub first: u64,
    pub min: u64,
    pub max: u64,
    pub last: u64,
    pub mean: f64,
    /// Samples and span of the second half.
    pub trend_samples: usize,
    pub trend_span: Duration,
    /// Least-squares slope of RSS over the second half, bytes per hour.
    pub slope_per_hour: Option<f64>,
    /// That slope over the whole run's duration.
    pub growth_over_run: Option<f64>,
    /// The same for RSS less what L1 and the pattern engine account for
    /// (`l1_bytes`, `pattern_bytes`): both are bounded by configuration
    /// and fill towards their bound for a while, which is no leak; what
    /// else grows is. This is the trend the verdict judges.
    pub unaccounted_slope_per_hour: Option<f64>,
    pub unaccounted_growth_over_run: Option<f64>,
    /// Requests per second over the run, and per interval (min, max).
    pub throughput: f64,
    pub interval_throughput: Option<(f64, f64)>,
    /// Samples that found no process (it exited).
    pub gone: usize,
}

/// RSS less the bytes L1 and the pattern engine say they hold.
pub fn unaccounted_bytes(sample: &Sample) -> f64 {
    sample.rss_bytes as f64 - sample.l1_bytes.unwrap_or(0) as f64 - sample.pattern_bytes.unwrap_or(0) as f64
}

pub fn summarise(samples: &[Sample], elapsed: Duration) -> Summary {
    let gone = samples.iter().filter(|sample| sample.rss_bytes == 0).count();
    let samples: Vec<Sample> = samples.iter().filter(|sample| sample.rss_bytes > 0).cloned().collect();
    let rss: Vec<u64> = samples.iter().map(|sample| sample.rss_bytes).collect();
    let half = elapsed / 2;
    let second: Vec<(f64, f64)> = samples
        .iter()
        .filter(|sample| sample.at >= half)
        .map(|sample| (sample.at.as_secs_f64(), sample.rss_bytes as f64))
        .collect();
    let trend_span = Duration::from_secs_f64(match (second.first(), second.last()) {
        (Some(first), Some(last)) => last.0 - first.0,
        _ => 0.0,
    });
    let slope_per_hour = slope(&second).map(|per_second| per_second * 3600.0);
    let unaccounted: Vec<(f64, f64)> = samples
        .iter()
        .filter(|sample| sample.at >= half)
        .map(|sample| (sample.at.as_secs_f64(), unaccounted_bytes(sample)))
        .collect();
    let unaccounted_slope_per_hour = slope(&unaccounted).map(|per_second| per_second * 3600.0);
    let over_run = |per_hour: f64| per_hour * elapsed.as_secs_f64() / 3600.0;
    let intervals: Vec<f64> = samples
        .windows(2)
        .filter(|pair| pair[1].at > pair[0].at)
        .map(|pair| (pair[1].requests - pair[0].requests) as f64 / (pair[1].at - pair[0].at).as_secs_f64())
        .collect();
    let requests = samples.last().map_or(0, |sample| sample.requests);
    Summary {
        samples: samples.len(),
        first: rss.first().copied().unwrap_or(0),
        min: rss.iter().copied().min().unwrap_or(0),
        max: rss.iter().copied().max().unwrap_or(0),
        last: rss.last().copied().unwrap_or(0),
        mean: rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64,
        trend_samples: second.len(),
        trend_span,
        slope_per_hour,
        growth_over_run: slope_per_hour.map(over_run),
        unaccounted_slope_per_hour,
        unaccounted_growth_over_run: unaccounted_slope_per_hour.map(over_run),
        throughput: requests as f64 / elapsed.as_secs_f64().max(1e-9),
        interval_throughput: intervals
            .iter()
            .copied()
            .fold(None, |range: Option<(f64, f64)>, value| match range {
                None => Some((value, value)),
                Some((low, high)) => Some((low.min(value), high.max(value))),
            }),
        gone,
    }
}

/// Why the run fails, if it does: errors, wrong values, RSS beyond the
/// bound, a growing trend.
pub fn failures(summary: &Summary, errors: u64, wrong: u64, limits: &Limits) -> Vec<String> {
    let mut failures = Vec::new();
    if errors > 0 {
        failures.push(format!("{errors} errors"));
    }
    if wrong > 0 {
        failures.push(format!("{wrong} wrong values"));
    }
    let bound = limits.l1_bytes + limits.overhead_bytes;
    if summary.max > bound {
        failures.push(format!(
            "RSS reached {} MiB, above the bound {} MiB (L1 {} + overhead {})",
            mib(summary.max),
            mib(bound),
            mib(limits.l1_bytes),
            mib(limits.overhead_bytes)
        ));
    }
    if summary.trend_span >= limits.min_trend_span
        && let Some(growth) = summary.unaccounted_growth_over_run
        && growth > limits.growth_limit_bytes as f64
    {
        failures.push(format!(
            "RSS trend: the second half's slope of RSS beyond L1's and the pattern engine's bytes adds {} MiB over the run, above the limit {} MiB",
            mib_f(growth),
            mib(limits.growth_limit_bytes)
        ));
    }
    if summary.samples < 2 {
        failures.push("fewer than two samples".to_string());
    }
    if summary.gone > 0 {
        failures.push(format!("the process was gone at {} samples", summary.gone));
    }
    failures
}

pub fn mib(bytes: u64) -> String {
    mib_f(bytes as f64)
}

pub fn mib_f(bytes: f64) -> String {
    format!("{:.1}", bytes / 1_048_576.0)
}

/// The report printed at the end of a run; the last line is the verdict.
pub fn report(run: &Run, limits: &Limits) -> (String, bool) {
    use std::fmt::Write;
    let summary = summarise(&run.samples, run.elapsed);
    let errors = run.tally.errors.load(Ordering::Relaxed);
    let wrong = run.tally.wrong.load(Ordering::Relaxed);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {} clients for {:.0} s; each owns {} strings, {} hashes, {} counters; L1 max_bytes {} MiB",
        run.plan.clients,
        run.elapsed.as_secs_f64(),
        run.plan.strings_per_client,
        run.plan.hashes_per_client,
        COUNTERS,
        mib(limits.l1_bytes)
    );
    let _ = writeln!(
        out,
        "RSS MiB: samples {}, first {}, min {}, max {}, last {}, mean {}",
        summary.samples,
        mib(summary.first),
        mib(summary.min),
        mib(summary.max),
        mib(summary.last),
        mib_f(summary.mean)
    );
    let judged = summary.trend_span >= limits.min_trend_span;
    let signed = |value: Option<f64>| value.map_or("-".to_string(), |value| format!("{:+.1}", value / 1_048_576.0));
    let _ = writeln!(
        out,
        "RSS trend (least squares over the second half, {} samples over {:.0} s): {} MiB/hour, {} MiB over the run",
        summary.trend_samples,
        summary.trend_span.as_secs_f64(),
        signed(summary.slope_per_hour),
        signed(summary.growth_over_run),
    );
    let _ = writeln!(
        out,
        "RSS beyond L1's and the pattern engine's bytes, same fit: {} MiB/hour, {} MiB over the run (limit {} MiB{})",
        signed(summary.unaccounted_slope_per_hour),
        signed(summary.unaccounted_growth_over_run),
        mib(limits.growth_limit_bytes),
        if judged {
            String::new()
        } else {
            format!("; not judged: second half under {} s", limits.min_trend_span.as_secs())
        }
    );
    let range = |pick: fn(&Sample) -> u64| {
        let values: Vec<u64> = run.samples.iter().map(pick).collect();
        (
            values.iter().copied().min().unwrap_or(0),
            values.iter().copied().max().unwrap_or(0),
        )
    };
    let (threads_min, threads_max) = range(|sample| sample.threads);
    let (fds_min, fds_max) = range(|sample| sample.fds);
    let last = run.samples.last().cloned().unwrap_or_default();
    let optional = |value: Option<u64>| value.map_or("-".to_string(), mib);
    let _ = writeln!(
        out,
        "threads {threads_min}-{threads_max}; fds {fds_min}-{fds_max}; at the end: L1 {} MiB ({} evictions), pattern engine {} MiB, Redis used_memory {} MiB",
        optional(last.l1_bytes),
        last.l1_evictions.map_or("-".to_string(), |count| count.to_string()),
        optional(last.pattern_bytes),
        optional(last.redis_used_memory)
    );
    let requests = last.requests;
    let _ = writeln!(
        out,
        "throughput: {requests} requests in {:.1} s = {:.0} requests/s; per interval min {}, max {}",
        run.elapsed.as_secs_f64(),
        summary.throughput,
        summary
            .interval_throughput
            .map_or("-".to_string(), |range| format!("{:.0}", range.0)),
        summary
            .interval_throughput
            .map_or("-".to_string(), |range| format!("{:.0}", range.1)),
    );
    let by_command: Vec<String> = COMMANDS
        .iter()
        .zip(&run.tally.by_command)
        .map(|(name, count)| format!("{name} {}", count.load(Ordering::Relaxed)))
        .collect();
    let _ = writeln!(
        out,
        "commands: {}; pipelines {}; reconnects {}",
        by_command.join(", "),
        run.tally.pipelines.load(Ordering::Relaxed),
        run.tally.reconnects.load(Ordering::Relaxed)
    );
    let (error_messages, wrong_messages) = run.tally.messages();
    let _ = writeln!(out, "errors: {errors}; wrong values: {wrong}");
    for message in error_messages.iter().chain(&wrong_messages) {
        let _ = writeln!(out, "  {message}");
    }
    let failed = failures(&summary, errors, wrong, limits);
    if failed.is_empty() {
        let _ = writeln!(
            out,
            "verdict: PASS (RSS max {} MiB within {} MiB = L1 {} + overhead {}; no errors, no wrong values{})",
            mib(summary.max),
            mib(limits.l1_bytes + limits.overhead_bytes),
            mib(limits.l1_bytes),
            mib(limits.overhead_bytes),
            if judged {
                "; no leak trend"
            } else {
                "; trend not judged"
            }
        );
    } else {
        let _ = writeln!(out, "verdict: FAIL: {}", failed.join("; "));
    }
    (out, failed.is_empty())
}
