//! Which keys a command writes, so that a write through the proxy drops the
//! L1 entries it affects before its reply reaches the client.
//!
//! The table comes from Redis itself (`COMMAND`): each command's flags and
//! its fixed key positions (first, last, step), so it matches the Redis
//! version in use. Commands whose keys move with their arguments are
//! handled by name (scripts and functions, the *MPOP family, SORT/GEORADIUS
//! with STORE, MOVE and COPY to another database); any other write whose keys
//! cannot be found drops the client's whole database from L1, which is
//! always safe. Redis's invalidation messages remain the backstop for
//! everything that does not pass through the proxy.

use std::collections::HashMap;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;

use crate::protocol::Command;

/// What a command may have changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Nothing (a read, or a command that writes no keys).
    Nothing,
    /// These keys, in the client's database.
    Keys(Vec<Bytes>),
    /// These keys, in a database other than (or besides) the client's.
    KeysEverywhere(Vec<Bytes>),
    /// Possibly any key of the client's database.
    Database,
    /// Possibly anything (FLUSHALL, SWAPDB).
    Everything,
}

/// What a command's name alone says about the keys it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByName {
    /// It writes no keys.
    Reads,
    /// It writes exactly its first argument (SET, INCR, HSET, EXPIRE, ...).
    WritesFirstArgument,
    /// Its arguments must be decoded to tell (see [`WriteTable::written`]).
    NeedsArguments,
}

/// Commands whose written keys are found by name, not from the table.
const BY_NAME: &[&[u8]] = &[
    b"flushdb",
    b"flushall",
    b"swapdb",
    b"eval",
    b"evalsha",
    b"fcall",
    b"lmpop",
    b"zmpop",
    b"blmpop",
    b"bzmpop",
    b"move",
    b"copy",
    b"sort",
    b"georadius",
    b"georadiusbymember",
    // Flagged read-only, but rewrites the HyperLogLog's cached count.
    b"pfcount",
    // A container whose top-level entry has no flags; CREATE ... MKSTREAM
    // makes the key, the others change the stream's groups.
    b"xgroup",
    // Removes the keys it moves (its key may be "" with KEYS at the end).
    b"migrate",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Spec {
    write: bool,
    movable: bool,
    first: i64,
    last: i64,
    step: i64,
}

/// The command table learned from Redis.
#[derive(Debug, Clone, Default)]
pub struct WriteTable {
    specs: HashMap<Vec<u8>, Spec>,
}

impl WriteTable {
    /// Reads the reply to `COMMAND` (RESP2 bytes).
    pub fn from_command_reply(reply: &[u8]) -> Result<WriteTable, String> {
        let decoded = redis_protocol::resp2::decode::decode_bytes(&Bytes::copy_from_slice(reply))
            .map_err(|error| format!("unreadable COMMAND reply: {error}"))?;
        let Some((Resp2Frame::Array(commands), _)) = decoded else {
            return Err("COMMAND did not answer an array".into());
        };
        let mut specs = HashMap::with_capacity(commands.len());
        for command in commands {
            let Resp2Frame::Array(fields) = command else {
                continue;
            };
            let (Some(name), Some(flags)) = (fields.first(), fields.get(2)) else {
                continue;
            };
            let name = match name {
                Resp2Frame::BulkString(name) | Resp2Frame::SimpleString(name) => name.to_ascii_lowercase(),
                _ => continue,
            };
            let flags: Vec<Vec<u8>> = match flags {
                Resp2Frame::Array(flags) => flags
                    .iter()
                    .filter_map(|flag| match flag {
                        Resp2Frame::BulkString(flag) | Resp2Frame::SimpleString(flag) => {
                            Some(flag.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let integer = |index: usize| match fields.get(index) {
                Some(Resp2Frame::Integer(value)) => *value,
                _ => 0,
            };
            let has = |flag: &[u8]| flags.iter().any(|f| f == flag);
            specs.insert(
                name,
                Spec {
                    write: has(b"write"),
                    movable: has(b"movablekeys"),
                    first: integer(3),
                    last: integer(4),
                    step: integer(5),
                },
            );
        }
        if specs.is_empty() {
            return Err("COMMAND listed no commands".into());
        }
        Ok(WriteTable { specs })
    }

    /// Redis 7.0.15's table (embedded), built once per process: what the
    /// statistics judge commands by before (or without) the upstream's.
    pub fn builtin() -> &'static WriteTable {
        static BUILTIN: std::sync::OnceLock<WriteTable> = std::sync::OnceLock::new();
        BUILTIN.get_or_init(|| {
            WriteTable::from_command_reply(crate::keys::table::builtin_command_reply())
                .expect("the embedded COMMAND reply is a valid table")
        })
    }

    /// Whether Redis flags the command of this name (any case) as writing.
    pub fn flags_write(&self, name: &[u8]) -> bool {
        let mut buffer = [0u8; 32];
        let Some(lower) = buffer.get_mut(..name.len()) else {
            return false;
        };
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        self.specs.get(&*lower).is_some_and(|spec| spec.write)
    }

    /// Whether a command of this name may write keys, judged by the name
    /// alone (so that only those commands need their arguments decoded).
    pub fn may_write(&self, name: &[u8]) -> bool {
        !matches!(self.by_name(name), ByName::Reads)
    }

    /// What can be said from the name alone; runs for every command, so it
    /// lower-cases on the stack.
    pub fn by_name(&self, name: &[u8]) -> ByName {
        let mut buffer = [0u8; 32];
        let Some(lower) = buffer.get_mut(..name.len()) else {
            return ByName::NeedsArguments;
        };
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        let lower: &[u8] = lower;
        if BY_NAME.contains(&lower) {
            return ByName::NeedsArguments;
        }
        match self.specs.get(lower) {
            Some(spec) if !spec.write => ByName::Reads,
            Some(spec) if !spec.movable && spec.first == 1 && spec.last == 1 => ByName::WritesFirstArgument,
            _ => ByName::NeedsArguments,
        }
    }

    /// What `command` (arguments decoded) may change.
    pub fn written(&self, command: &Command) -> Written {
        let args = command.args();
        let Some(name) = args.first() else {
            return Written::Nothing;
        };
        let name = name.to_ascii_lowercase();
        match name.as_slice() {
            b"flushdb" => return Written::Database,
            b"flushall" | b"swapdb" => return Written::Everything,
            // Scripts and functions declare the keys they touch; undeclared
            // writes are left to Redis's invalidation messages.
            b"eval" | b"evalsha" | b"fcall" => return counted_keys(args, 2),
            b"lmpop" | b"zmpop" => return counted_keys(args, 1),
            b"blmpop" | b"bzmpop" => return counted_keys(args, 2),
            b"move" => return Written::KeysEverywhere(args.get(1).cloned().into_iter().collect()),
            b"copy" => {
                let to_other_db = args.iter().skip(3).any(|arg| arg.eq_ignore_ascii_case(b"DB"));
                let destination: Vec<Bytes> = args.get(2).cloned().into_iter().collect();
                return if to_other_db {
                    Written::KeysEverywhere(destination)
                } else {
                    Written::Keys(destination)
                };
            }
            b"sort" | b"georadius" | b"georadiusbymember" => {
                // Options start after the key (SORT), after key, longitude,
                // latitude, radius and unit (GEORADIUS), or after key,
                // member, radius and unit (GEORADIUSBYMEMBER).
                let options_at = match name.as_slice() {
                    b"sort" => 2,
                    b"georadius" => 6,
                    _ => 5,
                };
                return match stored_to(args, options_at) {
                    Some(destination) => Written::Keys(vec![destination]),
                    None => Written::Nothing,
                };
            }
            b"pfcount" => return Written::Keys(args.get(1..).unwrap_or_default().to_vec()),
            b"xgroup" => return Written::Keys(args.get(2).cloned().into_iter().collect()),
            b"migrate" => return migrated(args),
            _ => {}
        }
        let Some(spec) = self.specs.get(&name) else {
            // Not a command this Redis knows (it will say so) or a module's:
            // assume the worst.
            return Written::Database;
        };
        if !spec.write {
            return Written::Nothing;
        }
        let keys = fixed_keys(spec, args);
        if spec.movable && keys.is_empty() {
            return Written::Database;
        }
        Written::Keys(keys)
    }
}

/// `numkeys` at `at`, then that many keys.
fn counted_keys(args: &[Bytes], at: usize) -> Written {
    let count = args
        .get(at)
        .and_then(|count| std::str::from_utf8(count).ok())
        .and_then(|count| count.parse::<usize>().ok());
    match count {
        Some(count) if at + 1 + count <= args.len() => Written::Keys(args[at + 1..at + 1 + count].to_vec()),
        // Redis will refuse it; nothing is written.
        _ => Written::Nothing,
    }
}

/// The destination of `STORE`/`STOREDIST` among the options from
/// `options_at` on, reading them as Redis does (an option's values are not
/// options: `BY store`, `GET store`, `LIMIT 0 10`, `COUNT 5 ANY`).
fn stored_to(args: &[Bytes], options_at: usize) -> Option<Bytes> {
    let mut index = options_at;
    let mut destination = None;
    while index < args.len() {
        let option = args[index].to_ascii_uppercase();
        index += match option.as_slice() {
            b"STORE" | b"STOREDIST" => {
                destination = args.get(index + 1).cloned();
                2
            }
            b"BY" | b"GET" => 2,
            b"LIMIT" => 3,
            b"COUNT"
                if args
                    .get(index + 2)
                    .is_some_and(|next| next.eq_ignore_ascii_case(b"ANY")) =>
            {
                3
            }
            b"COUNT" => 2,
            _ => 1,
        };
    }
    destination
}

/// The keys `MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH pw]
/// [AUTH2 user pw] [KEYS key ...]` removes here (none with COPY).
fn migrated(args: &[Bytes]) -> Written {
    let mut keys: Vec<Bytes> = args.get(3).filter(|key| !key.is_empty()).cloned().into_iter().collect();
    let mut index = 6;
    while index < args.len() {
        let option = args[index].to_ascii_uppercase();
        match option.as_slice() {
            b"COPY" => return Written::Nothing,
            b"AUTH" => index += 2,
            b"AUTH2" => index += 3,
            b"KEYS" => {
                keys.extend_from_slice(&args[index + 1..]);
                break;
            }
            _ => index += 1,
        }
    }
    Written::Keys(keys)
}

/// Keys at the fixed positions COMMAND gives (first, last, step; a negative
/// last counts from the end).
fn fixed_keys(spec: &Spec, args: &[Bytes]) -> Vec<Bytes> {
    if spec.first <= 0 || spec.step <= 0 {
        return Vec::new();
    }
    let count = args.len() as i64;
    let last = if spec.last < 0 {
        count + spec.last
    } else {
        spec.last.min(count - 1)
    };
    let mut keys = Vec::new();
    let mut index = spec.first;
    while index <= last && index < count {
        keys.push(args[index as usize].clone());
        index += spec.step;
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> WriteTable {
        // A small COMMAND reply in Redis's shape: name, arity, flags, first,
        // last, step.
        let reply = b"*4\r\n\
            *6\r\n$3\r\nset\r\n:-3\r\n*2\r\n+write\r\n+denyoom\r\n:1\r\n:1\r\n:1\r\n\
            *6\r\n$4\r\nmset\r\n:-3\r\n*1\r\n+write\r\n:1\r\n:-1\r\n:2\r\n\
            *6\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n\
            *6\r\n$11\r\nzunionstore\r\n:-4\r\n*2\r\n+write\r\n+movablekeys\r\n:1\r\n:1\r\n:1\r\n";
        WriteTable::from_command_reply(reply).unwrap()
    }

    fn command(words: &str) -> Command {
        Command::from_args(
            words
                .split_whitespace()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect(),
        )
    }

    fn keys(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
    }

    #[test]
    fn fixed_positions_come_from_the_table() {
        let table = table();
        assert_eq!(table.written(&command("SET k v")), Written::Keys(keys(&["k"])));
        assert_eq!(
            table.written(&command("MSET a 1 b 2 c 3")),
            Written::Keys(keys(&["a", "b", "c"]))
        );
        assert_eq!(table.written(&command("get k")), Written::Nothing);
        assert_eq!(
            table.written(&command("ZUNIONSTORE dest 2 a b")),
            Written::Keys(keys(&["dest"]))
        );
    }

    #[test]
    fn moving_keys_are_found_by_name() {
        let table = table();
        assert_eq!(
            table.written(&command("EVAL script 2 a b arg")),
            Written::Keys(keys(&["a", "b"]))
        );
        assert_eq!(table.written(&command("EVAL script 5 a")), Written::Nothing);
        assert_eq!(
            table.written(&command("LMPOP 2 l1 l2 LEFT")),
            Written::Keys(keys(&["l1", "l2"]))
        );
        assert_eq!(
            table.written(&command("BLMPOP 0 1 l1 LEFT")),
            Written::Keys(keys(&["l1"]))
        );
        assert_eq!(
            table.written(&command("SORT l BY w STORE dest")),
            Written::Keys(keys(&["dest"]))
        );
        assert_eq!(table.written(&command("SORT l")), Written::Nothing);
        assert_eq!(
            table.written(&command("MOVE k 3")),
            Written::KeysEverywhere(keys(&["k"]))
        );
        assert_eq!(
            table.written(&command("COPY a b DB 2")),
            Written::KeysEverywhere(keys(&["b"]))
        );
        assert_eq!(table.written(&command("COPY a b")), Written::Keys(keys(&["b"])));
        assert_eq!(table.written(&command("FLUSHDB ASYNC")), Written::Database);
        assert_eq!(table.written(&command("flushall")), Written::Everything);
        assert_eq!(table.written(&command("SWAPDB 0 1")), Written::Everything);
    }

    #[test]
    fn unknown_commands_are_assumed_to_write_anything_in_the_database() {
        assert_eq!(table().written(&command("MODULE.WRITE k")), Written::Database);
    }

    #[test]
    fn only_possible_writers_need_decoding() {
        let table = table();
        for name in ["SET", "mset", "EVAL", "FLUSHALL", "sort", "MODULE.WRITE"] {
            assert!(table.may_write(name.as_bytes()), "{name}");
        }
        assert!(!table.may_write(b"GET"));
        assert_eq!(table.by_name(b"set"), ByName::WritesFirstArgument);
        assert_eq!(table.by_name(b"MSET"), ByName::NeedsArguments);
        assert_eq!(table.by_name(b"ZUNIONSTORE"), ByName::NeedsArguments);
        assert_eq!(table.by_name(b"GET"), ByName::Reads);
    }

    #[test]
    fn options_values_are_not_options() {
        let table = table();
        assert_eq!(
            table.written(&command("SORT store STORE dst")),
            Written::Keys(keys(&["dst"]))
        );
        assert_eq!(
            table.written(&command("SORT k BY store GET store LIMIT 0 10 STORE out")),
            Written::Keys(keys(&["out"]))
        );
        assert_eq!(table.written(&command("SORT k BY store")), Written::Nothing);
        assert_eq!(
            table.written(&command("GEORADIUSBYMEMBER places store 10 km COUNT 5 ANY STORE near")),
            Written::Keys(keys(&["near"]))
        );
        assert_eq!(
            table.written(&command("GEORADIUS places 1 2 10 km STOREDIST d")),
            Written::Keys(keys(&["d"]))
        );
    }

    #[test]
    fn hidden_writes_are_found_by_name() {
        let table = table();
        assert_eq!(table.by_name(b"PFCOUNT"), ByName::NeedsArguments);
        assert_eq!(
            table.written(&command("PFCOUNT h1 h2")),
            Written::Keys(keys(&["h1", "h2"]))
        );
        assert_eq!(
            table.written(&command("XGROUP CREATE s g $ MKSTREAM")),
            Written::Keys(keys(&["s"]))
        );
        assert_eq!(
            table.written(&command("MIGRATE h 1 \"\" 0 5 AUTH pw KEYS a b")),
            Written::Keys(keys(&["\"\"", "a", "b"]))
        );
        assert_eq!(table.written(&command("MIGRATE h 1 k 0 5 COPY")), Written::Nothing);
        assert_eq!(
            table.written(&command("MIGRATE h 1 k 0 5 REPLACE")),
            Written::Keys(keys(&["k"]))
        );
    }
}
