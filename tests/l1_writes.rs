//! The write table learned from a real Redis: every write names the keys
//! it changes, reads name none.

mod common;

use auracache::cache::{ByName, WriteTable, Written};
use auracache::protocol::Command;
use bytes::Bytes;
use common::{RawClient, RedisServer};

fn command(words: &str) -> Command {
    Command::from_args(
        words
            .split_whitespace()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect(),
    )
}

fn keys(words: &str) -> Written {
    Written::Keys(
        words
            .split_whitespace()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_name_their_keys_with_the_table_redis_gives() {
    let server = RedisServer::start();
    let mut client = RawClient::connect(server.addr()).await;
    let reply = client.command(&[b"COMMAND"]).await;
    let table = WriteTable::from_command_reply(&reply).expect("Redis's COMMAND reply parses");
    for (line, expected) in [
        ("SET k v EX 10", keys("k")),
        ("MSET a 1 b 2", keys("a b")),
        ("DEL a b c", keys("a b c")),
        ("UNLINK a", keys("a")),
        ("RENAME a b", keys("a b")),
        ("HSET h f v", keys("h")),
        ("HDEL h f", keys("h")),
        ("HINCRBY h f 1", keys("h")),
        ("LPUSH l x", keys("l")),
        ("EXPIRE k 10", keys("k")),
        ("PERSIST k", keys("k")),
        ("INCR n", keys("n")),
        ("APPEND k x", keys("k")),
        ("SETRANGE k 0 x", keys("k")),
        ("GETDEL k", keys("k")),
        ("GETEX k PERSIST", keys("k")),
        ("GETSET k v", keys("k")),
        ("SINTERSTORE d a b", keys("d a b")),
        ("BITOP AND d a b", keys("d a b")),
        ("ZUNIONSTORE d 2 a b", keys("d")),
        ("XADD s * f v", keys("s")),
        ("RESTORE k 0 payload", keys("k")),
        ("EVAL script 1 k", keys("k")),
        ("LMPOP 1 l LEFT", keys("l")),
        ("MOVE k 1", Written::KeysEverywhere(vec![Bytes::from_static(b"k")])),
        ("FLUSHDB", Written::Database),
        ("FLUSHALL", Written::Everything),
        ("GET k", Written::Nothing),
        ("MGET a b", Written::Nothing),
        ("HGETALL h", Written::Nothing),
        ("EXISTS k", Written::Nothing),
        ("TTL k", Written::Nothing),
        ("SCAN 0", Written::Nothing),
        ("PING", Written::Nothing),
    ] {
        let command = command(line);
        assert_eq!(table.written(&command), expected, "{line}");
        // The by-name fast path (no decoding) agrees with the table.
        match table.by_name(command.name()) {
            ByName::Reads => assert_eq!(expected, Written::Nothing, "{line}"),
            ByName::WritesFirstArgument => {
                assert_eq!(
                    expected,
                    Written::Keys(vec![command.first_arg().unwrap().clone()]),
                    "{line}"
                )
            }
            ByName::NeedsArguments => {}
        }
    }
}
