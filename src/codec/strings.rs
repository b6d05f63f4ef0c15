//! The string commands under compression: what each becomes on its way to
//! Redis, and what its reply becomes on the way back, so that a client
//! gets Redis's exact answer for the original value.
//!
//! - Writes of whole values (SET and its options, SETNX, SETEX, PSETEX,
//!   MSET, MSETNX, GETSET) carry encoded values ([`plan`] returns
//!   [`Plan::Forward`] with new arguments).
//! - Reads of whole values (GET, MGET, GETDEL, GETEX, GETSET, SET ... GET)
//!   are forwarded as they are; their replies are decoded
//!   ([`ReplyDecode::Bulk`], [`ReplyDecode::Items`]).
//! - Reads of part of a value (STRLEN, GETRANGE/SUBSTR) become one
//!   read-only script that answers natively for a raw value and hands an
//!   envelope's header or value to the proxy otherwise; atomic, and still
//!   pipelined.
//! - APPEND and SETRANGE become a script that runs the command natively
//!   on a raw value; on an envelope it returns the stored bytes and the
//!   proxy finishes with a compare-and-set ([`ReadModifyWrite`]), retried
//!   while another writer got in between.
//! - Bit commands and LCS on a compressed value are refused with an error
//!   that says why ([`GUARD_SCRIPT`]); on a raw value they run natively.
//!
//! Scripts use `redis.pcall` and return its error as is, so a client sees
//! Redis's own error text (WRONGTYPE, "not an integer", ...), without the
//! script context `redis.call` would add.

use bytes::{Bytes, BytesMut};

use super::envelope::{self, MAGIC};

/// Redis's proto-max-bulk-len default: the longest string APPEND or
/// SETRANGE may build.
pub const MAX_STRING_BYTES: u64 = 512 * 1024 * 1024;

/// STRLEN: the length for a raw value, or an envelope's header and stored
/// length for the proxy to read the original length from.
pub const STRLEN_SCRIPT: &str = "\
local n = redis.pcall('STRLEN', KEYS[1])
if type(n) == 'table' then return n end
if n >= 7 then
  local h = redis.call('GETRANGE', KEYS[1], 0, 15)
  if string.sub(h, 1, 4) == ARGV[1] then return {h, n} end
end
return n";

/// HSTRLEN: the length for a raw field value, or an envelope's header and
/// stored length.
pub const HSTRLEN_SCRIPT: &str = "\
local v = redis.pcall('HGET', KEYS[1], ARGV[2])
if type(v) == 'table' then return v end
if v and string.sub(v, 1, 4) == ARGV[1] then return {string.sub(v, 1, 16), string.len(v)} end
return redis.pcall('HSTRLEN', KEYS[1], ARGV[2])";

/// GETRANGE: Redis's range of a raw value, or the whole envelope for the
/// proxy to take the range of (the native call also checks the indexes).
pub const GETRANGE_SCRIPT: &str = "\
local r = redis.pcall('GETRANGE', KEYS[1], ARGV[2], ARGV[3])
if type(r) == 'table' then return r end
if redis.call('GETRANGE', KEYS[1], 0, 3) == ARGV[1] then return {redis.call('GET', KEYS[1])} end
return r";

/// APPEND: native on a raw value whose result cannot begin with the
/// magic; SET of the encoded value for a new key; otherwise the stored
/// bytes for a read-modify-write (or an error, inside MULTI).
/// ARGV: magic, appended bytes, stored form for a new key, mode
/// ("rmw" | "refuse"), the refusal's text.
pub const APPEND_SCRIPT: &str = "\
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then return v end
if not v then
  redis.call('SET', KEYS[1], ARGV[3])
  return string.len(ARGV[2])
end
if string.sub(v, 1, 4) ~= ARGV[1] and (string.len(v) >= 4 or string.sub(v .. ARGV[2], 1, 4) ~= ARGV[1]) then
  return redis.pcall('APPEND', KEYS[1], ARGV[2])
end
if ARGV[4] == 'refuse' then return redis.error_reply(ARGV[5]) end
return {v}";

/// SETRANGE: native on a raw value (or a missing key) unless the result
/// would begin with the magic; otherwise the stored bytes (none for a
/// missing key) for a read-modify-write, or an error inside MULTI.
/// ARGV: magic, offset, value, mode, the refusal's text.
pub const SETRANGE_SCRIPT: &str = "\
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then return v end
local enveloped = v and string.sub(v, 1, 4) == ARGV[1]
local offset = tonumber(ARGV[2])
local patch = ARGV[3]
if not enveloped then
  local native = offset == nil or offset >= 4 or string.len(patch) == 0
  if not native then
    local current = v or ''
    local before = string.sub(current, 1, offset) .. string.rep('\\0', offset - math.min(offset, string.len(current)))
    local head = string.sub(before .. patch .. string.sub(current, offset + string.len(patch) + 1), 1, 4)
    native = head ~= ARGV[1]
  end
  if native then return redis.pcall('SETRANGE', KEYS[1], ARGV[2], ARGV[3]) end
end
if ARGV[4] == 'refuse' then return redis.error_reply(ARGV[5]) end
if v then return {v} end
return {}";

/// The write of a read-modify-write: only if the key still holds what was
/// read (ARGV[1]; or is still missing, with ARGV[3] = 'missing'); the TTL
/// is kept. 1 if written, 0 if another writer got in first.
pub const COMPARE_AND_SET_SCRIPT: &str = "\
local v = redis.pcall('GET', KEYS[1])
if ARGV[3] == 'missing' then
  if v ~= false then return 0 end
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
if v ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1";

/// Bit commands and LCS: refused if a key they read holds an envelope,
/// run natively otherwise. The native reply reaches the client through
/// Lua's RESP2 conversion, which keeps nulls and order (RESP3's would not);
/// only LCS IDX's map is then restored ([`ReplyDecode::PairsToMap`]).
/// ARGV: magic, unused, the refusal's text, the command.
pub const GUARD_SCRIPT: &str = "\
for i = 1, #KEYS do
  if redis.pcall('GETRANGE', KEYS[i], 0, 3) == ARGV[1] then return redis.error_reply(ARGV[3]) end
end
return redis.pcall(unpack(ARGV, 4))";

/// What the session does with a command under compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to do: forward it as it is.
    Unchanged,
    /// Forward `args` instead when given (values encoded, or the command
    /// turned into a script), and decode its reply when `decode` says how.
    Forward {
        args: Option<Vec<Bytes>>,
        decode: Option<ReplyDecode>,
    },
    /// Run it as a read-modify-write, in order with the client's commands.
    ReadModifyWrite(ReadModifyWrite),
}

/// APPEND or SETRANGE on what may be an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadModifyWrite {
    Append { key: Bytes, tail: Bytes },
    SetRange { key: Bytes, offset: Bytes, patch: Bytes },
}

/// The commands [`plan`] may change: only these need their arguments
/// decoded when compression is on.
const COVERED: &[&str] = &[
    "SORT",
    "SORT_RO",
    "HSET",
    "HMSET",
    "HSETNX",
    "HGET",
    "HMGET",
    "HGETDEL",
    "HGETEX",
    "HVALS",
    "HGETALL",
    "HRANDFIELD",
    "HSCAN",
    "HSTRLEN",
    "GET",
    "GETDEL",
    "GETEX",
    "MGET",
    "SET",
    "SETNX",
    "GETSET",
    "SETEX",
    "PSETEX",
    "MSET",
    "MSETNX",
    "STRLEN",
    "GETRANGE",
    "SUBSTR",
    "APPEND",
    "SETRANGE",
    "GETBIT",
    "SETBIT",
    "BITCOUNT",
    "BITPOS",
    "BITFIELD",
    "BITFIELD_RO",
    "BITOP",
    "LCS",
];

/// Whether [`plan`] may change the command named `name`.
pub fn covers(name: &[u8]) -> bool {
    COVERED
        .iter()
        .any(|covered| name.eq_ignore_ascii_case(covered.as_bytes()))
}

/// What to store for a value under a key (key, value): None for the value
/// as it is.
pub type ValueEncoder<'a> = dyn FnMut(&[u8], &[u8]) -> Option<Bytes> + 'a;

/// What [`plan`] needs to know of the client and the configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Context {
    /// Inside MULTI: what would need a read-modify-write is refused (it
    /// cannot run there).
    pub in_transaction: bool,
    /// The client speaks RESP3 (for scripts that answer natively).
    pub resp3: bool,
    /// Hash field values are compressed too (`compression.hashes`).
    pub hashes: bool,
}

/// The plan for `args` (name first). `encode(key, value)` is what to store
/// for `value` under `key` (None: the value as it is).
pub fn plan(args: &[Bytes], context: Context, encode: &mut ValueEncoder<'_>) -> Plan {
    let Context {
        in_transaction,
        resp3,
        hashes,
    } = context;
    let Some(name) = args.first() else {
        return Plan::Unchanged;
    };
    let name = String::from_utf8_lossy(name).to_ascii_uppercase();
    let argc = args.len();
    let forward = |args: Vec<Bytes>, decode: Option<ReplyDecode>| Plan::Forward {
        args: Some(args),
        decode,
    };
    let decode_only = |decode| Plan::Forward {
        args: None,
        decode: Some(decode),
    };
    // The values at (key, value) positions encoded; the command stays its
    // client's bytes when every value is stored as it is (the common case
    // for small values).
    let mut with_values = |positions: &mut dyn Iterator<Item = (usize, usize)>, decode: Option<ReplyDecode>| {
        let mut out: Option<Vec<Bytes>> = None;
        for (key_at, value_at) in positions {
            if let Some(stored) = encode(&args[key_at], &args[value_at]) {
                out.get_or_insert_with(|| args.to_vec())[value_at] = stored;
            }
        }
        match (out, decode) {
            (None, None) => Plan::Unchanged,
            (args, decode) => Plan::Forward { args, decode },
        }
    };
    // HSCAN key cursor [MATCH pattern] [COUNT count] [NOVALUES]: only an
    // option word, not a pattern, says NOVALUES.
    let decode_unless_novalues = |how| {
        let mut index = 3;
        while index < argc {
            let option = &args[index];
            if option.eq_ignore_ascii_case(b"NOVALUES") {
                return Plan::Unchanged;
            }
            let takes_value = option.eq_ignore_ascii_case(b"MATCH") || option.eq_ignore_ascii_case(b"COUNT");
            index += if takes_value { 2 } else { 1 };
        }
        decode_only(how)
    };
    match name.as_str() {
        "GET" | "GETDEL" | "GETEX" if argc >= 2 => decode_only(ReplyDecode::Bulk),
        "SORT" | "SORT_RO" if argc >= 2 => sort(args, &refusal),
        "HSET" | "HMSET" if hashes && argc >= 4 && argc.is_multiple_of(2) => {
            with_values(&mut (3..argc).step_by(2).map(|value| (1, value)), None)
        }
        "HSETNX" if hashes && argc == 4 => with_values(&mut std::iter::once((1, 3)), None),
        "HGET" if hashes && argc == 3 => decode_only(ReplyDecode::Bulk),
        "HMGET" | "HGETDEL" | "HGETEX" if hashes && argc >= 3 => decode_only(ReplyDecode::Items),
        "HVALS" if hashes && argc == 2 => decode_only(ReplyDecode::Items),
        "HGETALL" if hashes && argc == 2 => decode_only(ReplyDecode::Pairs),
        "HRANDFIELD" if hashes && argc == 4 && args[3].eq_ignore_ascii_case(b"WITHVALUES") => {
            decode_only(ReplyDecode::Pairs)
        }
        "HSCAN" if hashes && argc >= 3 => decode_unless_novalues(ReplyDecode::Scan),
        "HSTRLEN" if hashes && argc == 3 => forward(
            script(
                "EVAL_RO",
                HSTRLEN_SCRIPT,
                &[args[1].clone()],
                &[magic(), args[2].clone()],
            ),
            Some(ReplyDecode::Strlen),
        ),
        "MGET" if argc >= 2 => decode_only(ReplyDecode::Items),
        "SET" if argc >= 3 => {
            let get = args[3..].iter().any(|option| option.eq_ignore_ascii_case(b"GET"));
            with_values(&mut std::iter::once((1, 2)), get.then_some(ReplyDecode::Bulk))
        }
        "SETNX" if argc == 3 => with_values(&mut std::iter::once((1, 2)), None),
        "GETSET" if argc == 3 => with_values(&mut std::iter::once((1, 2)), Some(ReplyDecode::Bulk)),
        "SETEX" | "PSETEX" if argc == 4 => with_values(&mut std::iter::once((1, 3)), None),
        "MSET" | "MSETNX" if argc >= 3 && argc % 2 == 1 => {
            with_values(&mut (1..argc).step_by(2).map(|key| (key, key + 1)), None)
        }
        "STRLEN" if argc == 2 => forward(
            script("EVAL_RO", STRLEN_SCRIPT, &[args[1].clone()], &[magic()]),
            Some(ReplyDecode::Strlen),
        ),
        "GETRANGE" | "SUBSTR" if argc == 4 => match (parse_i64(&args[2]), parse_i64(&args[3])) {
            (Some(start), Some(end)) => forward(
                script(
                    "EVAL_RO",
                    GETRANGE_SCRIPT,
                    &[args[1].clone()],
                    &[magic(), args[2].clone(), args[3].clone()],
                ),
                Some(ReplyDecode::Range { start, end }),
            ),
            // Redis refuses the indexes before it reads the key.
            _ => Plan::Unchanged,
        },
        "APPEND" if argc == 3 && in_transaction => {
            let new_key_form = encode(&args[1], &args[2]).unwrap_or_else(|| args[2].clone());
            forward(
                script(
                    "EVAL",
                    APPEND_SCRIPT,
                    &[args[1].clone()],
                    &[
                        magic(),
                        args[2].clone(),
                        new_key_form,
                        "refuse".into(),
                        refusal("APPEND"),
                    ],
                ),
                None,
            )
        }
        "APPEND" if argc == 3 => Plan::ReadModifyWrite(ReadModifyWrite::Append {
            key: args[1].clone(),
            tail: args[2].clone(),
        }),
        // Redis refuses a bad offset before it reads the key.
        "SETRANGE" if argc == 4 && parse_i64(&args[2]).is_none_or(|offset| offset < 0) => Plan::Unchanged,
        "SETRANGE" if argc == 4 && in_transaction => forward(
            script(
                "EVAL",
                SETRANGE_SCRIPT,
                &[args[1].clone()],
                &[
                    magic(),
                    args[2].clone(),
                    args[3].clone(),
                    "refuse".into(),
                    refusal("SETRANGE"),
                ],
            ),
            None,
        ),
        "SETRANGE" if argc == 4 => Plan::ReadModifyWrite(ReadModifyWrite::SetRange {
            key: args[1].clone(),
            offset: args[2].clone(),
            patch: args[3].clone(),
        }),
        _ => match guarded_keys(&name, args) {
            Some((keys, eval)) => {
                let mut argv = vec![magic(), Bytes::new(), refusal(&name)];
                argv.extend(args.iter().cloned());
                // RESP3 answers LCS ... IDX with a map; the script's RESP2
                // conversion gives the same entries as a flat array.
                let idx = name == "LCS" && args[3..].iter().any(|arg| arg.eq_ignore_ascii_case(b"IDX"));
                forward(
                    script(eval, GUARD_SCRIPT, &keys, &argv),
                    (idx && resp3).then_some(ReplyDecode::PairsToMap),
                )
            }
            None => Plan::Unchanged,
        },
    }
}

/// Answers `message` (an error) from Redis, in order with the client's
/// other commands.
fn refuse(message: Bytes) -> Plan {
    Plan::Forward {
        args: Some(vec![
            Bytes::from_static(b"EVAL"),
            Bytes::from_static(b"return redis.error_reply(ARGV[1])"),
            Bytes::from_static(b"0"),
            message,
        ]),
        decode: None,
    }
}

/// SORT and SORT_RO: the values `GET <pattern>` fetches (other than `#`,
/// the element itself) may be envelopes, so they are decoded; with STORE
/// they would be stored in a list as they are, so that is refused.
fn sort(args: &[Bytes], refusal: &dyn Fn(&str) -> Bytes) -> Plan {
    let mut gets = Vec::new();
    let mut store = false;
    let (mut by_pattern, mut alpha) = (false, false);
    let mut index = 2;
    while index < args.len() {
        let option = &args[index];
        let takes = if option.eq_ignore_ascii_case(b"LIMIT") {
            2
        } else if option.eq_ignore_ascii_case(b"GET") {
            if let Some(pattern) = args.get(index + 1) {
                gets.push(pattern.as_ref() != b"#");
            }
            1
        } else if option.eq_ignore_ascii_case(b"STORE") {
            store = true;
            1
        } else if option.eq_ignore_ascii_case(b"BY") {
            by_pattern |= args
                .get(index + 1)
                .is_some_and(|pattern| !pattern.eq_ignore_ascii_case(b"nosort"));
            1
        } else if option.eq_ignore_ascii_case(b"ALPHA") {
            alpha = true;
            0
        } else {
            0
        };
        index += 1 + takes;
    }
    if by_pattern && alpha {
        // The weights would be compared as the bytes Redis holds, which
        // for a compressed weight are not the original's.
        return refuse(refusal("SORT ... BY pattern ALPHA"));
    }
    if !gets.contains(&true) {
        return Plan::Unchanged;
    }
    if store {
        return refuse(refusal("SORT ... GET ... STORE"));
    }
    Plan::Forward {
        args: None,
        decode: Some(ReplyDecode::Sorted { gets }),
    }
}

/// The keys a bit command or LCS reads, and how to run its guard (EVAL
/// for commands that may write); None for other commands and wrong arity
/// (Redis's own arity error reads nothing).
fn guarded_keys(name: &str, args: &[Bytes]) -> Option<(Vec<Bytes>, &'static str)> {
    let argc = args.len();
    let first = || vec![args[1].clone()];
    Some(match name {
        "GETBIT" if argc == 3 => (first(), "EVAL_RO"),
        "SETBIT" if argc == 4 => (first(), "EVAL"),
        "BITCOUNT" if argc >= 2 => (first(), "EVAL_RO"),
        "BITPOS" if argc >= 3 => (first(), "EVAL_RO"),
        "BITFIELD" if argc >= 2 => (first(), "EVAL"),
        "BITFIELD_RO" if argc >= 2 => (first(), "EVAL_RO"),
        "BITOP" if argc >= 4 => (args[3..].to_vec(), "EVAL"),
        "LCS" if argc >= 3 => (args[1..3].to_vec(), "EVAL_RO"),
        _ => return None,
    })
}

fn refusal(command: &str) -> Bytes {
    Bytes::from(format!(
        "ERR auracache: {command} on a value the proxy stored compressed is not supported \
         (read it with GET, or turn compression off for its namespace)"
    ))
}

/// `<eval> <script> <numkeys> keys... argv...`
fn script(eval: &str, body: &str, keys: &[Bytes], argv: &[Bytes]) -> Vec<Bytes> {
    let mut out = Vec::with_capacity(3 + keys.len() + argv.len());
    out.push(Bytes::copy_from_slice(eval.as_bytes()));
    out.push(Bytes::copy_from_slice(body.as_bytes()));
    out.push(Bytes::from(keys.len().to_string()));
    out.extend(keys.iter().cloned());
    out.extend(argv.iter().cloned());
    out
}

/// An integer as Redis's `string2ll` reads it: optional `-`, no `+`, no
/// leading zeros (except "0" itself), no spaces.
pub(crate) fn parse_i64(bytes: &[u8]) -> Option<i64> {
    let digits = bytes.strip_prefix(b"-").unwrap_or(bytes);
    let canonical = match digits {
        [] => false,
        [b'0'] => bytes.len() == 1,
        [first, ..] => (b'1'..=b'9').contains(first),
    };
    if !canonical || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// One command to Redis and its reply, in order with the client's others.
pub trait Upstream {
    fn call(&mut self, args: Vec<Bytes>) -> impl std::future::Future<Output = Result<Bytes, String>> + Send;
}

/// Reads what Redis holds: `Ok(None)` when it is not an envelope.
pub type StoredDecoder<'a> = dyn FnMut(&[u8]) -> Result<Option<Vec<u8>>, String> + Send + 'a;

/// How often a read-modify-write is retried while other writers change the
/// key between its read and its write.
const MAX_ATTEMPTS: usize = 64;

impl ReadModifyWrite {
    /// The key it changes.
    pub fn key(&self) -> &Bytes {
        match self {
            ReadModifyWrite::Append { key, .. } | ReadModifyWrite::SetRange { key, .. } => key,
        }
    }

    /// Runs it: the reply the client gets, exactly as Redis would answer
    /// APPEND or SETRANGE on the original value. `encode` is what to store
    /// for a new value of the key; `decode` reads what Redis holds.
    pub async fn run(
        &self,
        upstream: &mut impl Upstream,
        encode: &mut (dyn FnMut(&[u8]) -> Bytes + Send),
        decode: &mut StoredDecoder<'_>,
    ) -> Bytes {
        let key = match self {
            ReadModifyWrite::Append { key, .. } | ReadModifyWrite::SetRange { key, .. } => key.clone(),
        };
        // What a missing key gets: encoded once, whatever the attempts.
        let new_key_form = match self {
            ReadModifyWrite::Append { tail, .. } => encode(tail),
            ReadModifyWrite::SetRange { .. } => Bytes::new(),
        };
        for _ in 0..MAX_ATTEMPTS {
            let first = match self {
                ReadModifyWrite::Append { tail, .. } => script(
                    "EVAL",
                    APPEND_SCRIPT,
                    std::slice::from_ref(&key),
                    &[magic(), tail.clone(), new_key_form.clone(), "rmw".into(), Bytes::new()],
                ),
                ReadModifyWrite::SetRange { offset, patch, .. } => script(
                    "EVAL",
                    SETRANGE_SCRIPT,
                    std::slice::from_ref(&key),
                    &[magic(), offset.clone(), patch.clone(), "rmw".into(), Bytes::new()],
                ),
            };
            let reply = match upstream.call(first).await {
                Ok(reply) => reply,
                Err(error) => return error_reply(&error),
            };
            // Answered natively (or refused by Redis): Redis's own reply.
            let Some(items) = array(&reply) else {
                return reply;
            };
            let stored: Option<&[u8]> = items.first().and_then(|item| bulk(item));
            let value = match stored {
                Some(stored) => match decode(stored) {
                    Ok(decoded) => Some(decoded.unwrap_or_else(|| stored.to_vec())),
                    Err(reason) => {
                        return error_reply(&format!("ERR auracache could not decode the stored value: {reason}"));
                    }
                },
                None => None,
            };
            let (new_value, length) = match self {
                ReadModifyWrite::Append { tail, .. } => match append(value.as_deref().unwrap_or(b""), tail) {
                    Ok(new_value) => {
                        let length = new_value.len() as i64;
                        (Some(new_value), length)
                    }
                    Err(error) => return error_reply(&error),
                },
                ReadModifyWrite::SetRange { offset, patch, .. } => match set_range(value.as_deref(), offset, patch) {
                    Ok(result) => result,
                    Err(error) => return error_reply(&error),
                },
            };
            let Some(new_value) = new_value else {
                return Bytes::from(format!(":{length}\r\n"));
            };
            let (expected, missing) = match stored {
                Some(stored) => (Bytes::copy_from_slice(stored), Bytes::new()),
                None => (Bytes::new(), Bytes::from_static(b"missing")),
            };
            let write = script(
                "EVAL",
                COMPARE_AND_SET_SCRIPT,
                std::slice::from_ref(&key),
                &[expected, encode(&new_value), missing],
            );
            match upstream.call(write).await {
                Ok(reply) if reply.as_ref() == b":1\r\n" => return Bytes::from(format!(":{length}\r\n")),
                Ok(reply) if reply.as_ref() == b":0\r\n" => continue,
                Ok(reply) => return reply,
                Err(error) => return error_reply(&error),
            }
        }
        error_reply(&format!(
            "ERR auracache gave up after {MAX_ATTEMPTS} attempts: the key kept changing under the read-modify-write"
        ))
    }
}

fn error_reply(message: &str) -> Bytes {
    let line = message.replace(['\r', '\n'], " ");
    Bytes::from(format!("-{line}\r\n"))
}

/// How a reply is turned back into what Redis would answer for the
/// original value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyDecode {
    /// A bulk string that may be an envelope.
    Bulk,
    /// An array whose bulk strings may be envelopes (MGET, HMGET, HVALS).
    Items,
    /// Field/value pairs whose values may be envelopes: a flat array or a
    /// map (HGETALL, HRANDFIELD ... WITHVALUES in RESP2), or an array of
    /// two-element arrays (HRANDFIELD ... WITHVALUES in RESP3).
    Pairs,
    /// HSCAN's `[cursor, [field, value, ...]]`.
    Scan,
    /// A flat array of key/value entries that RESP3 answers as a map
    /// (LCS ... IDX run through a script).
    PairsToMap,
    /// SORT with GET patterns: each element is `gets.len()` values, the
    /// ones whose pattern is not `#` fetched from other keys.
    Sorted { gets: Vec<bool> },
    /// [`STRLEN_SCRIPT`]'s reply.
    Strlen,
    /// [`GETRANGE_SCRIPT`]'s reply, for these indexes.
    Range { start: i64, end: i64 },
}

impl ReplyDecode {
    /// Whether it changes only replies that contain the magic (so a batch
    /// without it can be handed on untouched).
    pub fn needs_magic(&self) -> bool {
        !matches!(self, ReplyDecode::PairsToMap)
    }
}

/// A reply could not be decoded: the client gets this error instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeFailure(pub String);

/// Decodes one reply. `Ok(None)`: it is the client's as it is (the common
/// case: no envelope in it).
pub fn decode_reply(
    how: &ReplyDecode,
    reply: &[u8],
    decode: &mut StoredDecoder<'_>,
) -> Result<Option<Bytes>, DecodeFailure> {
    let fail = |reason: String| DecodeFailure(format!("ERR auracache could not decode the stored value: {reason}"));
    match how {
        ReplyDecode::Bulk => match bulk(reply) {
            Some(stored) => Ok(decode(stored).map_err(fail)?.map(|value| encode_bulk(&value))),
            None => Ok(None),
        },
        ReplyDecode::Items => rebuild(reply, &mut |_, item| decode_bulk(item, decode)).map_err(fail),
        ReplyDecode::Pairs => decode_pairs(reply, decode).map_err(fail),
        ReplyDecode::PairsToMap => Ok(array(reply).filter(|items| items.len() % 2 == 0).map(|items| {
            let mut out = BytesMut::with_capacity(reply.len());
            out.extend_from_slice(format!("%{}\r\n", items.len() / 2).as_bytes());
            items.iter().for_each(|item| out.extend_from_slice(item));
            out.freeze()
        })),
        ReplyDecode::Sorted { gets } => rebuild(reply, &mut |position, item| {
            if gets[position % gets.len()] {
                decode_bulk(item, decode)
            } else {
                Ok(None)
            }
        })
        .map_err(fail),
        ReplyDecode::Scan => rebuild(reply, &mut |position, item| match position {
            1 => decode_pairs(item, decode),
            _ => Ok(None),
        })
        .map_err(fail),
        ReplyDecode::Strlen => {
            let Some(items) = array(reply) else {
                return Ok(None);
            };
            let [header, stored_len] = items.as_slice() else {
                return Ok(None);
            };
            let length = match bulk(header).and_then(envelope::parse_header) {
                Some(header) => header.original_len,
                None => integer(stored_len).unwrap_or(0) as u64,
            };
            Ok(Some(Bytes::from(format!(":{length}\r\n"))))
        }
        ReplyDecode::Range { start, end } => {
            let Some(items) = array(reply) else {
                return Ok(None);
            };
            let [whole] = items.as_slice() else {
                return Ok(None);
            };
            let stored = bulk(whole).unwrap_or(b"");
            let value = decode(stored).map_err(fail)?.unwrap_or_else(|| stored.to_vec());
            Ok(Some(encode_bulk(range(&value, *start, *end))))
        }
    }
}

/// A bulk string's value decoded, as a bulk string; None if it is not an
/// envelope (or not a bulk string).
fn decode_bulk(item: &[u8], decode: &mut StoredDecoder<'_>) -> Result<Option<Bytes>, String> {
    match bulk(item) {
        Some(stored) => Ok(decode(stored)?.map(|value| encode_bulk(&value))),
        None => Ok(None),
    }
}

/// Field/value pairs with their values decoded (see [`ReplyDecode::Pairs`]).
fn decode_pairs(reply: &[u8], decode: &mut StoredDecoder<'_>) -> Result<Option<Bytes>, String> {
    rebuild(reply, &mut |position, item| {
        if item.first() == Some(&b'*') {
            // RESP3 HRANDFIELD: [field, value]
            rebuild(item, &mut |inner, value| match inner {
                1 => decode_bulk(value, decode),
                _ => Ok(None),
            })
        } else if position % 2 == 1 {
            decode_bulk(item, decode)
        } else {
            Ok(None)
        }
    })
}

/// The new bytes of an aggregate's element at a position, or None to keep it.
type ElementRewrite<'a> = dyn FnMut(usize, &[u8]) -> Result<Option<Bytes>, String> + 'a;

/// An aggregate reply (`*`, `%`, `~`) with some elements replaced:
/// `replace(position, element)` gives the new bytes of an element or None
/// to keep it. None overall when nothing changed or it is no aggregate.
fn rebuild(reply: &[u8], replace: &mut ElementRewrite<'_>) -> Result<Option<Bytes>, String> {
    let Some((header, elements)) = aggregate(reply) else {
        return Ok(None);
    };
    let mut out: Option<BytesMut> = None;
    for (position, element) in elements.iter().enumerate() {
        match replace(position, element)? {
            Some(new) => {
                let out = out.get_or_insert_with(|| {
                    let mut out = BytesMut::with_capacity(reply.len());
                    out.extend_from_slice(header);
                    elements[..position].iter().for_each(|kept| out.extend_from_slice(kept));
                    out
                });
                out.extend_from_slice(&new);
            }
            None => {
                if let Some(out) = &mut out {
                    out.extend_from_slice(element);
                }
            }
        }
    }
    Ok(out.map(BytesMut::freeze))
}

/// GETRANGE's answer for `value`, as Redis computes it (t_string.c).
pub fn range(value: &[u8], start: i64, end: i64) -> &[u8] {
    let len = value.len() as i64;
    if start < 0 && end < 0 && start > end {
        return b"";
    }
    let mut start = if start < 0 { len + start } else { start };
    let mut end = if end < 0 { len + end } else { end };
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        return b"";
    }
    &value[start as usize..=end as usize]
}

/// SETRANGE applied to `value` (None: the key is missing) as Redis does
/// it: the new value and the reply, or Redis's error.
pub fn set_range(value: Option<&[u8]>, offset: &[u8], patch: &[u8]) -> Result<(Option<Vec<u8>>, i64), String> {
    let offset = parse_i64(offset).ok_or("ERR value is not an integer or out of range")?;
    if offset < 0 {
        return Err("ERR offset is out of range".into());
    }
    let current = value.unwrap_or(b"");
    if patch.is_empty() {
        // Nothing to write: the length, and a missing key stays missing.
        return Ok((None, current.len() as i64));
    }
    if offset as u64 + patch.len() as u64 > MAX_STRING_BYTES {
        return Err("ERR string exceeds maximum allowed size (proto-max-bulk-len)".into());
    }
    let offset = offset as usize;
    let mut out = current.to_vec();
    if out.len() < offset + patch.len() {
        out.resize(offset + patch.len(), 0);
    }
    out[offset..offset + patch.len()].copy_from_slice(patch);
    let len = out.len() as i64;
    Ok((Some(out), len))
}

/// APPEND applied to `value` as Redis does it.
pub fn append(value: &[u8], tail: &[u8]) -> Result<Vec<u8>, String> {
    if value.len() as u64 + tail.len() as u64 > MAX_STRING_BYTES {
        return Err("ERR string exceeds maximum allowed size (proto-max-bulk-len)".into());
    }
    Ok([value, tail].concat())
}

/// The payload of a bulk string reply (`$n\r\n...\r\n`); None for nil and
/// for other kinds.
pub fn bulk(reply: &[u8]) -> Option<&[u8]> {
    let rest = reply.strip_prefix(b"$")?;
    let line = memchr::memchr(b'\r', rest)?;
    let len: usize = std::str::from_utf8(&rest[..line]).ok()?.parse().ok()?;
    rest.get(line + 2..line + 2 + len)
}

fn integer(reply: &[u8]) -> Option<i64> {
    let text = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// The elements of an array reply, None otherwise.
fn array(reply: &[u8]) -> Option<Vec<&[u8]>> {
    match aggregate(reply) {
        Some((header, elements)) if header.first() == Some(&b'*') => Some(elements),
        _ => None,
    }
}

/// The header line and the elements of an aggregate reply (`*`, `%` with
/// keys and values as elements, `~`), None for anything else.
fn aggregate(reply: &[u8]) -> Option<(&[u8], Vec<&[u8]>)> {
    let per_entry = match reply.first()? {
        b'*' | b'~' => 1,
        b'%' => 2,
        _ => return None,
    };
    let line = memchr::memchr(b'\n', reply)? + 1;
    let count: usize = std::str::from_utf8(reply.get(1..line.checked_sub(2)?)?)
        .ok()?
        .parse()
        .ok()?;
    let mut at = line;
    let mut elements = Vec::with_capacity((count * per_entry).min(1024));
    for _ in 0..count * per_entry {
        let len = frame_len(reply.get(at..)?, 0)?;
        elements.push(&reply[at..at + len]);
        at += len;
    }
    Some((&reply[..line], elements))
}

/// The length of the frame at the start of `frame` (aggregates nested a
/// few levels deep at most: what the commands decoded here answer).
fn frame_len(frame: &[u8], depth: usize) -> Option<usize> {
    let line = memchr::memchr(b'\n', frame)? + 1;
    let length = || -> Option<i64> {
        std::str::from_utf8(frame.get(1..line.checked_sub(2)?)?)
            .ok()?
            .parse()
            .ok()
    };
    match frame.first()? {
        b'$' | b'=' | b'!' => match length()? {
            len if len < 0 => Some(line),
            len => {
                let end = line + len as usize + 2;
                (frame.len() >= end).then_some(end)
            }
        },
        b':' | b'+' | b'-' | b'_' | b',' | b'#' | b'(' => Some(line),
        kind @ (b'*' | b'~' | b'%' | b'>') if depth < 4 => {
            let count = length()?;
            if count < 0 {
                return Some(line);
            }
            let elements = count as usize * if *kind == b'%' { 2 } else { 1 };
            let mut at = line;
            for _ in 0..elements {
                at += frame_len(frame.get(at..)?, depth + 1)?;
            }
            Some(at)
        }
        _ => None,
    }
}

/// `value` as a bulk string reply (the same in RESP2 and RESP3).
pub fn encode_bulk(value: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(value.len() + 16);
    out.extend_from_slice(format!("${}\r\n", value.len()).as_bytes());
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// The magic as a script argument.
pub fn magic() -> Bytes {
    Bytes::from_static(&MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_with_envelopes(stored: &[u8]) -> Result<Option<Vec<u8>>, String> {
        envelope::decode(stored, 1 << 20).map_err(|error| error.to_string())
    }

    fn decoded(how: ReplyDecode, reply: &[u8]) -> Result<Option<Bytes>, DecodeFailure> {
        decode_reply(&how, reply, &mut decode_with_envelopes)
    }

    #[test]
    fn bulk_replies_are_decoded_and_others_left_alone() {
        let stored = envelope::escape(b"\xC1AURvalue");
        let reply = encode_bulk(&stored);
        assert_eq!(
            decoded(ReplyDecode::Bulk, &reply).unwrap().as_deref(),
            Some(&b"$9\r\n\xC1AURvalue\r\n"[..])
        );
        for untouched in [&b"$5\r\nplain\r\n"[..], b"$-1\r\n", b"_\r\n", b"+OK\r\n", b"-ERR x\r\n"] {
            assert_eq!(decoded(ReplyDecode::Bulk, untouched).unwrap(), None);
        }
        let damaged = encode_bulk(&envelope::wrap(envelope::Codec::Zstd, 10, b"junk"));
        let error = decoded(ReplyDecode::Bulk, &damaged).unwrap_err();
        assert!(error.0.starts_with("ERR auracache could not decode"), "{error:?}");
    }

    #[test]
    fn mget_items_are_decoded_in_place() {
        let stored = envelope::escape(b"x");
        let reply = [&b"*3\r\n$1\r\na\r\n$-1\r\n"[..], &encode_bulk(&stored)].concat();
        assert_eq!(
            decoded(ReplyDecode::Items, &reply).unwrap().as_deref(),
            Some(&b"*3\r\n$1\r\na\r\n$-1\r\n$1\r\nx\r\n"[..])
        );
        assert_eq!(decoded(ReplyDecode::Items, b"*1\r\n$1\r\na\r\n").unwrap(), None);
    }

    #[test]
    fn strlen_and_getrange_read_the_original() {
        let stored = envelope::wrap(envelope::Codec::Zstd, 5000, b"payload");
        let header = &stored[..stored.len().min(16)];
        let reply = [
            &b"*2\r\n"[..],
            &encode_bulk(header),
            format!(":{}\r\n", stored.len()).as_bytes(),
        ]
        .concat();
        assert_eq!(
            decoded(ReplyDecode::Strlen, &reply).unwrap().as_deref(),
            Some(&b":5000\r\n"[..])
        );
        assert_eq!(decoded(ReplyDecode::Strlen, b":12\r\n").unwrap(), None);
        let whole = envelope::escape(b"\xC1AUR hello");
        let reply = [&b"*1\r\n"[..], &encode_bulk(&whole)].concat();
        let range_of = |start, end| decoded(ReplyDecode::Range { start, end }, &reply).unwrap().unwrap();
        assert_eq!(range_of(5, -1).as_ref(), b"$5\r\nhello\r\n");
        assert_eq!(range_of(-3, -4).as_ref(), b"$0\r\n\r\n");
        assert_eq!(
            decoded(ReplyDecode::Range { start: 0, end: 1 }, b"$2\r\nab\r\n").unwrap(),
            None
        );
    }

    #[test]
    fn ranges_follow_redis() {
        let value = b"Hello World";
        for (start, end, expected) in [
            (0, 4, &b"Hello"[..]),
            (-3, -1, b"rld"),
            (0, -1, b"Hello World"),
            (10, 100, b"d"),
            (20, 30, b""),
            (-100, 2, b"Hel"),
            (5, 3, b""),
            (-1, -5, b""),
        ] {
            assert_eq!(range(value, start, end), expected, "{start} {end}");
        }
        assert_eq!(range(b"", 0, -1), b"");
    }

    #[test]
    fn setrange_and_append_follow_redis() {
        assert_eq!(set_range(None, b"3", b"ab"), Ok((Some(b"\0\0\0ab".to_vec()), 5)));
        assert_eq!(
            set_range(Some(b"Hello World"), b"6", b"Redis"),
            Ok((Some(b"Hello Redis".to_vec()), 11))
        );
        assert_eq!(set_range(None, b"5", b""), Ok((None, 0)));
        assert_eq!(set_range(Some(b"abc"), b"9", b""), Ok((None, 3)));
        assert_eq!(set_range(None, b"-1", b"x").unwrap_err(), "ERR offset is out of range");
        assert_eq!(
            set_range(None, b"x", b"x").unwrap_err(),
            "ERR value is not an integer or out of range"
        );
        assert!(
            set_range(None, b"536870912", b"x")
                .unwrap_err()
                .contains("proto-max-bulk-len")
        );
        assert_eq!(append(b"ab", b"cd").unwrap(), b"abcd");
    }
}
