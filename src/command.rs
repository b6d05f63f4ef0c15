//! The command table: what the proxy must know about a command before it
//! forwards it. Today that is where its effect lives (any connection, the
//! client's own connection, or a reply stream that is no longer one reply per
//! request) and whether the proxy answers it itself. Key positions (for
//! versioning) come from Redis's own table: `keys::table`.

use crate::protocol::Command;

/// How a command must be carried to Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandClass {
    /// Stateless for the connection: any pooled upstream connection serves it.
    Shared,
    /// Leaves state on the connection or blocks it (MULTI, WATCH, BLPOP,
    /// CLIENT SETNAME, ...): the client gets its own upstream connection.
    Stateful,
    /// Replies stop being one per request (SUBSCRIBE, MONITOR, CLIENT REPLY,
    /// CLIENT TRACKING): the client's own connection, bytes piped both ways.
    Streaming,
    /// Answered or adapted by the proxy itself.
    Local(LocalCommand),
    /// Not proxied; the reason is the error text.
    Refused(&'static str),
}

/// Commands the proxy handles itself because the pooled connection model
/// would otherwise change their meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalCommand {
    Auth,
    Hello,
    Select,
    Quit,
    Reset,
    /// `INFO cache`: the proxy's own section.
    InfoCache,
    /// `INFO`, `INFO all`, `INFO everything`, and `INFO` of several
    /// sections one of which is `cache`: Redis's sections with the proxy's
    /// appended.
    InfoAll,
    /// `CLIENT GETNAME` on a client that has no connection of its own.
    ClientGetName,
    /// `PROXY ...`: the proxy's own admin commands.
    Proxy,
}

/// Commands that block their connection until something happens elsewhere.
const BLOCKING: &[&str] = &[
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BLMOVE",
    "BLMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "WAIT",
    "WAITAOF",
];

/// Commands whose effect lives on the connection that sent them.
const STATEFUL: &[&str] = &["MULTI", "WATCH", "READONLY", "READWRITE", "ASKING"];

/// Commands after which replies no longer pair one-to-one with requests.
const STREAMING: &[&str] = &[
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "SSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "SUNSUBSCRIBE",
    "MONITOR",
];

/// CLIENT subcommands that describe or change the calling connection.
const CLIENT_STATEFUL: &[&str] = &[
    "SETNAME",
    "ID",
    "INFO",
    "CACHING",
    "NO-EVICT",
    "NO-TOUCH",
    "GETREDIR",
    "TRACKINGINFO",
];

/// Commands whose classification or handling looks past the name; every
/// other command is classified by its name alone and forwarded undecoded.
const INSPECTED: &[&str] = &[
    "XREAD",
    "XREADGROUP",
    "CLIENT",
    "SCRIPT",
    "INFO",
    "AUTH",
    "HELLO",
    "SELECT",
    "PROXY",
];

/// True when [`classify`] (or the handling that follows) needs the
/// command's arguments decoded, not only its name.
pub fn needs_arguments(name: &[u8]) -> bool {
    INSPECTED
        .iter()
        .any(|candidate| name.eq_ignore_ascii_case(candidate.as_bytes()))
}

/// Classifies a command by its name and, where the effect depends on it,
/// its arguments (decoded beforehand when [`needs_arguments`] says so).
pub fn classify(command: &Command) -> CommandClass {
    let name = command.name();
    let is = |candidates: &[&str]| {
        candidates
            .iter()
            .any(|candidate| name.eq_ignore_ascii_case(candidate.as_bytes()))
    };
    if is(&[
        "GET", "SET", "MGET", "MSET", "DEL", "INCR", "HGET", "HSET", "EXPIRE", "EXISTS",
    ]) {
        // The commonest commands first, so they cost a handful of compares.
        return CommandClass::Shared;
    }
    if is(BLOCKING) {
        return CommandClass::Stateful;
    }
    if is(STATEFUL) {
        return CommandClass::Stateful;
    }
    if is(STREAMING) {
        return CommandClass::Streaming;
    }
    if command.is("XREAD") || command.is("XREADGROUP") {
        // BLOCK 0 on a shared connection would stall every client on it.
        return if has_option_before_streams(command, "BLOCK") {
            CommandClass::Stateful
        } else {
            CommandClass::Shared
        };
    }
    if command.is("CLIENT") {
        return classify_client(command);
    }
    if command.is("SCRIPT") && arg_is(command, 1, "DEBUG") {
        return CommandClass::Stateful;
    }
    if command.is("AUTH") {
        return CommandClass::Local(LocalCommand::Auth);
    }
    if command.is("HELLO") {
        return CommandClass::Local(LocalCommand::Hello);
    }
    if command.is("SELECT") {
        return CommandClass::Local(LocalCommand::Select);
    }
    if command.is("QUIT") {
        return CommandClass::Local(LocalCommand::Quit);
    }
    if command.is("RESET") {
        return CommandClass::Local(LocalCommand::Reset);
    }
    if command.is("INFO") && command.args().len() == 2 && arg_is(command, 1, "CACHE") {
        return CommandClass::Local(LocalCommand::InfoCache);
    }
    if command.is("INFO")
        && (command.args().len() == 1
            || (command.args().len() == 2 && (arg_is(command, 1, "ALL") || arg_is(command, 1, "EVERYTHING")))
            || (1..command.args().len()).any(|index| arg_is(command, index, "CACHE")))
    {
        return CommandClass::Local(LocalCommand::InfoAll);
    }
    if command.is("PROXY") {
        return CommandClass::Local(LocalCommand::Proxy);
    }
    if is(&["SYNC", "PSYNC", "REPLCONF"]) {
        return CommandClass::Refused("replication is not proxied; connect replicas to Redis directly");
    }
    CommandClass::Shared
}

fn classify_client(command: &Command) -> CommandClass {
    let Some(sub) = command.arg(1) else {
        return CommandClass::Shared;
    };
    let sub_is = |name: &str| sub.eq_ignore_ascii_case(name.as_bytes());
    if sub_is("REPLY") || sub_is("TRACKING") {
        CommandClass::Streaming
    } else if sub_is("GETNAME") {
        CommandClass::Local(LocalCommand::ClientGetName)
    } else if CLIENT_STATEFUL.iter().any(|name| sub_is(name)) {
        CommandClass::Stateful
    } else {
        CommandClass::Shared
    }
}

fn arg_is(command: &Command, index: usize, upper: &str) -> bool {
    command
        .arg(index)
        .is_some_and(|arg| arg.eq_ignore_ascii_case(upper.as_bytes()))
}

/// XREAD/XREADGROUP options come before the STREAMS keyword; a stream key,
/// group, consumer or count named "BLOCK" or "STREAMS" must not count, so
/// the options are walked with their values.
fn has_option_before_streams(command: &Command, option: &str) -> bool {
    let args = command.args();
    let mut index = 1;
    while let Some(arg) = args.get(index) {
        let is = |word: &str| arg.eq_ignore_ascii_case(word.as_bytes());
        if is(option) {
            return true;
        }
        index += if is("STREAMS") {
            return false;
        } else if is("GROUP") {
            3
        } else if is("COUNT") || is("BLOCK") {
            2
        } else {
            1
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{RequestLimits, RequestScanner};
    use bytes::Bytes;

    /// A command as a session sees it: scanned, and decoded only when
    /// [`needs_arguments`] says so (debug builds assert that classification
    /// never reads undecoded arguments).
    fn command(words: &str) -> Command {
        let args: Vec<Bytes> = words
            .split_whitespace()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect();
        let wire = Command::from_args(args).wire().clone();
        let frame = RequestScanner::new(RequestLimits::default())
            .scan(&wire)
            .unwrap()
            .unwrap();
        let mut command = Command::decode(frame, wire).unwrap();
        assert!(!command.is_decoded());
        if needs_arguments(command.name()) {
            command.decode_args().unwrap();
        }
        command
    }

    #[test]
    fn ordinary_commands_share_pooled_connections() {
        for words in [
            "get k",
            "SET k v",
            "hgetall h",
            "EVAL x 0",
            "XREAD STREAMS s 0",
            "CLIENT LIST",
            "EXEC",
        ] {
            assert_eq!(classify(&command(words)), CommandClass::Shared, "{words}");
        }
    }

    #[test]
    fn connection_state_needs_a_dedicated_connection() {
        for words in [
            "MULTI",
            "watch k",
            "BLPOP l 0",
            "bzpopmin z 1",
            "XREAD COUNT 1 BLOCK 0 STREAMS s $",
            "CLIENT SETNAME me",
            "client id",
            "WAIT 1 0",
        ] {
            assert_eq!(classify(&command(words)), CommandClass::Stateful, "{words}");
        }
    }

    #[test]
    fn block_after_streams_is_a_key_not_an_option() {
        assert_eq!(classify(&command("XREAD STREAMS BLOCK 0")), CommandClass::Shared);
        assert_eq!(
            classify(&command("XREADGROUP GROUP g BLOCK COUNT 1 STREAMS s >")),
            CommandClass::Shared,
            "a consumer named BLOCK"
        );
    }

    #[test]
    fn block_is_found_past_group_and_consumer_names() {
        for words in [
            "XREADGROUP GROUP STREAMS c1 BLOCK 0 STREAMS s >",
            "XREADGROUP GROUP g STREAMS COUNT 5 BLOCK 0 STREAMS s >",
            "xreadgroup group g c noack block 100 streams s >",
        ] {
            assert_eq!(classify(&command(words)), CommandClass::Stateful, "{words}");
        }
    }

    #[test]
    fn reply_streams_are_piped() {
        for words in [
            "SUBSCRIBE a",
            "psubscribe x*",
            "MONITOR",
            "CLIENT REPLY OFF",
            "CLIENT TRACKING ON",
            "UNSUBSCRIBE",
        ] {
            assert_eq!(classify(&command(words)), CommandClass::Streaming, "{words}");
        }
    }

    #[test]
    fn proxy_answers_connection_commands_itself() {
        assert_eq!(
            classify(&command("select 2")),
            CommandClass::Local(LocalCommand::Select)
        );
        assert_eq!(classify(&command("HELLO 3")), CommandClass::Local(LocalCommand::Hello));
        assert_eq!(
            classify(&command("info cache")),
            CommandClass::Local(LocalCommand::InfoCache)
        );
        assert_eq!(classify(&command("INFO")), CommandClass::Local(LocalCommand::InfoAll));
        assert_eq!(
            classify(&command("info everything")),
            CommandClass::Local(LocalCommand::InfoAll)
        );
        assert_eq!(classify(&command("INFO server")), CommandClass::Shared);
        assert_eq!(
            classify(&command("INFO server CACHE")),
            CommandClass::Local(LocalCommand::InfoAll)
        );
        assert_eq!(
            classify(&command("CLIENT GETNAME")),
            CommandClass::Local(LocalCommand::ClientGetName)
        );
        assert!(matches!(classify(&command("PSYNC ? -1")), CommandClass::Refused(_)));
    }
}
