//! The key table against a real Redis: learned from its `COMMAND` reply, it
//! places the keys of every key-taking command family exactly where
//! `COMMAND GETKEYSANDFLAGS` says they are, read or written as Redis says,
//! and the built-in copy (Redis 7.0.15's) answers the same.

mod common;

use auracache::keys::table::{KeyKind, KeyTable, KeyUse, Keys};
use bytes::Bytes;
use common::{RawClient, RedisServer};
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;

/// Command lines, one per key-taking form; `""` is an empty argument.
const LINES: &[&str] = &[
    // Strings.
    "GET k",
    "SET k v",
    "SET k v GET",
    "SET k v EX 10 NX",
    "SETNX k v",
    "SETEX k 10 v",
    "PSETEX k 100 v",
    "GETSET k v",
    "GETDEL k",
    "GETEX k PERSIST",
    "GETRANGE k 0 -1",
    "SUBSTR k 0 1",
    "SETRANGE k 0 v",
    "APPEND k v",
    "STRLEN k",
    "INCR k",
    "INCRBY k 2",
    "INCRBYFLOAT k 1.5",
    "DECR k",
    "DECRBY k 2",
    "MGET a b c",
    "MSET a 1 b 2 c 3",
    "MSETNX a 1 b 2",
    "LCS a b LEN",
    // Keyspace.
    "DEL a b c",
    "UNLINK a b",
    "EXISTS a b",
    "TYPE k",
    "EXPIRE k 10 NX",
    "EXPIREAT k 100",
    "PEXPIRE k 100",
    "PEXPIREAT k 100",
    "EXPIRETIME k",
    "PEXPIRETIME k",
    "TTL k",
    "PTTL k",
    "PERSIST k",
    "RENAME a b",
    "RENAMENX a b",
    "COPY a b",
    "COPY a b DB 1 REPLACE",
    "MOVE k 1",
    "DUMP k",
    "RESTORE k 0 payload REPLACE",
    "TOUCH a b",
    "WATCH a b",
    "OBJECT ENCODING k",
    "OBJECT FREQ k",
    "OBJECT IDLETIME k",
    "OBJECT REFCOUNT k",
    "MEMORY USAGE k",
    "MEMORY USAGE k SAMPLES 5",
    "SORT k",
    "SORT k LIMIT 0 10 ALPHA DESC",
    "SORT k BY w_* GET # GET u_*->name STORE d",
    "SORT k BY nosort STORE d",
    "SORT k STORE a STORE b",
    "SORT_RO k",
    "SORT_RO k BY w_* GET u_* ALPHA",
    "MIGRATE h 1 k 0 5000",
    "MIGRATE h 1 k 0 5000 COPY REPLACE",
    "MIGRATE h 1 \"\" 0 5000 KEYS a b",
    "MIGRATE h 1 \"\" 0 5000 COPY REPLACE AUTH pw KEYS a b c",
    "MIGRATE h 1 \"\" 0 5000 AUTH2 user pw KEYS a",
    // Lists.
    "LPUSH k a b",
    "RPUSH k a b",
    "LPUSHX k a",
    "RPUSHX k a",
    "LPOP k",
    "RPOP k 2",
    "LLEN k",
    "LRANGE k 0 -1",
    "LINDEX k 0",
    "LSET k 0 v",
    "LINSERT k BEFORE a b",
    "LREM k 0 a",
    "LTRIM k 0 1",
    "LPOS k a RANK 1",
    "RPOPLPUSH a b",
    "LMOVE a b LEFT RIGHT",
    "LMPOP 2 a b LEFT",
    "LMPOP 1 a RIGHT COUNT 2",
    // Hashes.
    "HSET h f v g w",
    "HSETNX h f v",
    "HGET h f",
    "HMGET h f g",
    "HMSET h f v",
    "HGETALL h",
    "HDEL h f",
    "HEXISTS h f",
    "HINCRBY h f 1",
    "HINCRBYFLOAT h f 1.5",
    "HKEYS h",
    "HVALS h",
    "HLEN h",
    "HSTRLEN h f",
    "HRANDFIELD h 2 WITHVALUES",
    "HSCAN h 0 COUNT 10",
    // Sets.
    "SADD s a b",
    "SREM s a",
    "SMEMBERS s",
    "SISMEMBER s a",
    "SMISMEMBER s a b",
    "SCARD s",
    "SPOP s 2",
    "SRANDMEMBER s 2",
    "SMOVE a b m",
    "SINTER a b",
    "SINTERSTORE d a b",
    "SUNION a b",
    "SUNIONSTORE d a b",
    "SDIFF a b",
    "SDIFFSTORE d a b",
    "SINTERCARD 2 a b LIMIT 1",
    "SSCAN s 0",
    // Sorted sets.
    "ZADD z 1 a 2 b",
    "ZINCRBY z 1 a",
    "ZREM z a",
    "ZCARD z",
    "ZCOUNT z 0 10",
    "ZSCORE z a",
    "ZMSCORE z a b",
    "ZRANK z a",
    "ZREVRANK z a",
    "ZRANGE z 0 -1 WITHSCORES",
    "ZRANGESTORE d z 0 -1",
    "ZRANGEBYSCORE z 0 10",
    "ZREVRANGE z 0 -1",
    "ZREVRANGEBYSCORE z 10 0",
    "ZRANGEBYLEX z - +",
    "ZLEXCOUNT z - +",
    "ZREMRANGEBYRANK z 0 1",
    "ZREMRANGEBYSCORE z 0 1",
    "ZREMRANGEBYLEX z - +",
    "ZPOPMIN z",
    "ZPOPMAX z 2",
    "ZRANDMEMBER z 2",
    "ZSCAN z 0",
    "ZUNIONSTORE d 2 a b WEIGHTS 1 2",
    "ZINTERSTORE d 2 a b AGGREGATE MAX",
    "ZDIFFSTORE d 2 a b",
    "ZUNION 2 a b WITHSCORES",
    "ZINTER 3 a b c",
    "ZDIFF 2 a b",
    "ZINTERCARD 2 a b LIMIT 5",
    "ZMPOP 2 a b MIN COUNT 2",
    // Streams.
    "XADD s * f v",
    "XLEN s",
    "XRANGE s - +",
    "XREVRANGE s + -",
    "XDEL s 1-0",
    "XTRIM s MAXLEN 10",
    "XSETID s 1-0",
    "XREAD COUNT 1 STREAMS a b 0 0",
    "XREAD BLOCK 0 STREAMS a $",
    "XREADGROUP GROUP g c COUNT 1 STREAMS a b > >",
    "XREADGROUP GROUP g c NOACK STREAMS a 0",
    "XREADGROUP GROUP STREAMS STREAMS STREAMS a >",
    "XACK s g 1-0",
    "XPENDING s g",
    "XCLAIM s g c 0 1-0",
    "XAUTOCLAIM s g c 0 0-0 COUNT 1",
    "XINFO STREAM s",
    "XINFO STREAM s FULL",
    "XINFO GROUPS s",
    "XINFO CONSUMERS s g",
    "XGROUP CREATE s g $ MKSTREAM",
    "XGROUP SETID s g 0",
    "XGROUP DESTROY s g",
    "XGROUP CREATECONSUMER s g c",
    "XGROUP DELCONSUMER s g c",
    // Geo.
    "GEOADD g 1 2 m",
    "GEOPOS g m",
    "GEODIST g a b",
    "GEOHASH g m",
    "GEOSEARCH g FROMMEMBER m BYRADIUS 1 km",
    "GEOSEARCHSTORE d g FROMMEMBER m BYRADIUS 1 km",
    "GEORADIUS g 0 0 1 km",
    "GEORADIUS g 0 0 1 km COUNT 5 STORE d",
    "GEORADIUS g 0 0 1 km STOREDIST d",
    "GEORADIUSBYMEMBER g m 1 km",
    "GEORADIUSBYMEMBER g m 1 km STORE d",
    "GEORADIUS_RO g 0 0 1 km",
    "GEORADIUSBYMEMBER_RO g m 1 km",
    // HyperLogLog.
    "PFADD h a b",
    "PFCOUNT a b",
    "PFMERGE d a b",
    // Bits.
    "SETBIT k 0 1",
    "GETBIT k 0",
    "BITCOUNT k",
    "BITPOS k 1",
    "BITOP AND d a b",
    "BITOP NOT d a",
    "BITFIELD k GET u8 0",
    "BITFIELD k SET u8 0 1 GET u8 0",
    "BITFIELD k OVERFLOW SAT INCRBY u8 0 1",
    "BITFIELD_RO k GET u8 0",
    // Scripts and functions.
    "EVAL s 0",
    "EVAL s 2 a b x",
    "EVALSHA sha 1 a",
    "EVAL_RO s 1 a",
    "EVALSHA_RO sha 2 a b",
    "FCALL f 0",
    "FCALL f 2 a b x",
    "FCALL_RO f 1 a",
    // Blocking.
    "BLPOP a b 0",
    "BRPOP a b 0",
    "BRPOPLPUSH a b 0",
    "BLMOVE a b LEFT RIGHT 0",
    "BLMPOP 0 2 a b LEFT",
    "BZPOPMIN a b 0",
    "BZPOPMAX a b 0",
    "BZMPOP 0 2 a b MAX",
    // Malformed: Redis finds no keys, the table none or says why.
    "EVAL s 3 a",
    "ZUNIONSTORE d 3 a b",
    "LMPOP 0 a LEFT",
    "XREAD COUNT 1 STREAMS",
];

fn args(line: &str) -> Vec<Bytes> {
    line.split_whitespace()
        .map(|word| match word {
            "\"\"" => Bytes::new(),
            word => Bytes::copy_from_slice(word.as_bytes()),
        })
        .collect()
}

/// What `COMMAND GETKEYSANDFLAGS` answered.
#[derive(Debug)]
enum FromRedis {
    /// Each key and whether Redis only reads it (its flags include `RO`).
    Keys(Vec<(Bytes, KeyUse)>),
    NoKeyArguments,
    InvalidArguments,
}

async fn redis_keys(redis: &mut RawClient, args: &[Bytes]) -> FromRedis {
    let mut request: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYSANDFLAGS"];
    request.extend(args.iter().map(|arg| &arg[..]));
    let reply = redis.command(&request).await;
    let decoded = redis_protocol::resp2::decode::decode_bytes(&Bytes::from(reply)).expect("a RESP2 reply");
    match decoded {
        Some((Resp2Frame::Array(keys), _)) => FromRedis::Keys(
            keys.iter()
                .map(|key| {
                    let Resp2Frame::Array(pair) = key else {
                        panic!("GETKEYSANDFLAGS answered {key:?}");
                    };
                    let (Some(Resp2Frame::BulkString(name)), Some(Resp2Frame::Array(flags))) =
                        (pair.first(), pair.get(1))
                    else {
                        panic!("GETKEYSANDFLAGS answered {pair:?}");
                    };
                    let read_only = flags
                        .iter()
                        .any(|flag| matches!(flag, Resp2Frame::SimpleString(flag) if &flag[..] == b"RO"));
                    (name.clone(), if read_only { KeyUse::Read } else { KeyUse::Write })
                })
                .collect(),
        ),
        Some((Resp2Frame::Error(error), _)) if error.contains("The command has no key arguments") => {
            FromRedis::NoKeyArguments
        }
        Some((Resp2Frame::Error(error), _)) if error.contains("Invalid arguments specified for command") => {
            FromRedis::InvalidArguments
        }
        other => panic!("{args:?}: GETKEYSANDFLAGS answered {other:?}"),
    }
}

/// The key names (not SORT's patterns, which Redis does not list) and how
/// they are used, as the table places them.
fn named_keys(keys: &Keys, args: &[Bytes]) -> Option<Vec<(Bytes, KeyUse)>> {
    let Keys::At(keys) = keys else {
        return None;
    };
    Some(
        keys.iter()
            .filter(|key| key.kind == KeyKind::Name)
            .map(|key| (args[key.index].clone(), key.usage))
            .collect(),
    )
}

async fn learned_table(redis: &mut RawClient) -> KeyTable {
    let reply = redis.command(&[b"COMMAND"]).await;
    KeyTable::from_command_reply(&reply).expect("Redis's COMMAND reply makes a table")
}

#[tokio::test]
async fn the_learned_table_knows_every_command_and_subcommand_the_builtin_knows() {
    let server = RedisServer::start();
    let mut redis = RawClient::connect(server.addr()).await;
    let learned = learned_table(&mut redis).await;
    assert_eq!(learned.len(), KeyTable::builtin().len());
}

#[tokio::test]
async fn keys_are_where_redis_getkeysandflags_says_read_or_written_as_it_says() {
    let server = RedisServer::start();
    let mut redis = RawClient::connect(server.addr()).await;
    let learned = learned_table(&mut redis).await;
    let builtin = KeyTable::builtin();
    assert!(LINES.len() >= 120, "only {} lines", LINES.len());
    for line in LINES {
        let args = args(line);
        let keys = learned.keys(&args);
        assert_eq!(
            builtin.keys(&args),
            keys,
            "{line}: built-in (left) and learned (right) tables differ"
        );
        if let Keys::At(placed) = &keys {
            // Only SORT's BY and GET patterns with a `*` are patterns.
            for pattern in placed.iter().filter(|key| key.kind == KeyKind::Pattern) {
                assert!(
                    line.starts_with("SORT") && args[pattern.index].contains(&b'*'),
                    "{line}: {pattern:?}"
                );
            }
        }
        match redis_keys(&mut redis, &args).await {
            FromRedis::Keys(expected) if !expected.is_empty() => {
                assert_eq!(
                    named_keys(&keys, &args),
                    Some(expected),
                    "{line}: table (left), Redis (right)"
                );
            }
            // No keys (a script given none), or Redis refuses the command
            // (scripts answer an empty list then): the table must place none.
            FromRedis::Keys(_) | FromRedis::InvalidArguments => assert!(
                keys == Keys::Malformed || named_keys(&keys, &args).is_some_and(|named| named.is_empty()),
                "{line}: Redis finds no keys, the table {keys:?}"
            ),
            FromRedis::NoKeyArguments => panic!("{line}: Redis says it has no key arguments"),
        }
    }
}

#[tokio::test]
async fn keyless_commands_have_no_keys_for_redis_either() {
    let server = RedisServer::start();
    let mut redis = RawClient::connect(server.addr()).await;
    let learned = learned_table(&mut redis).await;
    // GETKEYSANDFLAGS wants an argument after the name, so DBSIZE gets one
    // (Redis checks for keys before the arity).
    for line in ["PING hello", "DBSIZE x", "ECHO hello", "WAIT 0 0", "SPUBLISH channel m"] {
        let args = args(line);
        assert_eq!(learned.keys(&args), Keys::At(Vec::new()), "{line}");
        assert_eq!(KeyTable::builtin().keys(&args), Keys::At(Vec::new()), "{line}");
        assert!(
            matches!(redis_keys(&mut redis, &args).await, FromRedis::NoKeyArguments),
            "{line}"
        );
    }
    assert_eq!(learned.keys(&args("PING")), Keys::At(Vec::new()));
    assert_eq!(learned.keys(&args("DBSIZE")), Keys::At(Vec::new()));
}
