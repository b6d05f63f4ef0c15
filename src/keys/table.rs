//! Where each command's key arguments are, so that key versioning can
//! rewrite every key a client names, and nothing that is not a key.
//!
//! The table comes from Redis itself: the reply to `COMMAND`, whose Redis 7
//! **key specifications** say, for each command and subcommand, how to find
//! its keys (from an index or after a keyword, then a range or a counted
//! list) and whether each is only read. They are read exactly as Redis reads
//! them (`getKeysUsingKeySpecs` in db.c), so the table agrees with
//! `COMMAND GETKEYSANDFLAGS`. Redis itself does not trust the specs of a few
//! commands and finds their keys with code; those are placed by name here,
//! mirroring that code: SORT and SORT_RO (BY and GET patterns name keys
//! too), MIGRATE (its KEYS list) and BITFIELD (a read when it only GETs).
//!
//! Redis before 7 has no key specs: its fixed (first, last, step) positions
//! are used, and a command whose keys move with its arguments takes the
//! entry of the built-in table (Redis 7.0.15's, embedded) of the same name.
//! What the table cannot place, it says it cannot ([`Keys::Unplaceable`]);
//! it never guesses.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::codec::strings::parse_i64;
use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame as Resp2Frame;

/// How a key argument is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Only read (the spec's flags include `RO`).
    Read,
    /// Written, created or deleted (`RW`, `OW` or `RM`), perhaps read too.
    Write,
}

/// What the argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A key name.
    Name,
    /// A SORT/SORT_RO BY or GET pattern (`weight_*`, `user:*->name`): its
    /// `*` is replaced by each element; only patterns containing `*` are listed
    /// (`GET #` and a BY without `*` name no key).
    Pattern,
}

/// One key argument of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyArg {
    /// Its index in the command's arguments (the name is at 0).
    pub index: usize,
    /// Whether the command only reads it.
    pub usage: KeyUse,
    /// A key name or a pattern of key names.
    pub kind: KeyKind,
}

/// Where a command's keys are, or why that cannot be said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keys {
    /// The key arguments, in the order Redis's specs list them. An index
    /// found by several specs is listed once, where it first appears, and
    /// as a Write if any of them writes it. Empty for a command without
    /// keys (PING), or whose keys Redis's specs find none of (`EVAL s 0`).
    At(Vec<KeyArg>),
    /// Malformed for its key specs (Redis will refuse it): no key can be
    /// placed, and none will be touched.
    Malformed,
    /// The command has keys the table cannot place (a spec of type unknown,
    /// or flagged incomplete, not handled by name, or movablekeys without
    /// specs and no built-in entry).
    Unplaceable,
    /// Not a command this table knows.
    Unknown,
}

/// The key positions of every command (and subcommand) a Redis knows.
///
/// Looking a command up does not allocate for names up to 32 bytes, since
/// it runs for every command a client sends.
#[derive(Debug, Clone)]
pub struct KeyTable {
    /// By lower-case command name.
    commands: HashMap<Box<[u8]>, Placement>,
    /// Commands and subcommands.
    len: usize,
}

/// Redis 7.0.15's `COMMAND` reply (RESP2), zstd-compressed.
const BUILTIN_REPLY: &[u8] = include_bytes!("redis-7.0-command.resp.zst");

/// How one command's keys are found.
#[derive(Debug, Clone)]
enum Placement {
    /// Redis 7 key specifications, in Redis's order.
    Specs(Vec<KeySpec>),
    /// Redis 6's fixed positions: `first` to `last` (negative: from the
    /// end) every `step`.
    Legacy {
        first: i64,
        last: i64,
        step: i64,
        usage: KeyUse,
    },
    /// A command whose keys depend on its subcommand (OBJECT, XGROUP, ...),
    /// by lower-case subcommand name.
    Container(HashMap<Box<[u8]>, Placement>),
    /// SORT (`stores`: STORE is allowed) or SORT_RO.
    Sort {
        stores: bool,
    },
    Migrate,
    Bitfield,
    Unplaceable,
}

/// One key specification.
#[derive(Debug, Clone)]
struct KeySpec {
    usage: KeyUse,
    /// Redis's `incomplete` flag: the keys it finds may not be all of them.
    incomplete: bool,
    begin: BeginSearch,
    find: FindKeys,
}

/// Where a spec's search for its first key starts.
#[derive(Debug, Clone)]
enum BeginSearch {
    /// At this argument.
    Index(i64),
    /// After `keyword`, searched forward from `startfrom` or, when it is
    /// negative, backward from that far before the end.
    Keyword {
        keyword: Box<[u8]>,
        startfrom: i64,
    },
    Unknown,
}

/// Which keys a spec finds from its first one.
#[derive(Debug, Clone)]
enum FindKeys {
    /// Up to `lastkey` after the first (negative: from the end, or, with a
    /// `limit`, up to 1/limit of the remaining arguments), every `keystep`.
    Range {
        lastkey: i64,
        keystep: i64,
        limit: i64,
    },
    /// The number of keys is at `keynumidx` after the first argument, the
    /// keys start `firstkey` after it, every `keystep`.
    Keynum {
        keynumidx: i64,
        firstkey: i64,
        keystep: i64,
    },
    Unknown,
}

/// Why a spec placed no keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Malformed,
    Unplaceable,
}

impl From<Refusal> for Keys {
    fn from(refusal: Refusal) -> Keys {
        match refusal {
            Refusal::Malformed => Keys::Malformed,
            Refusal::Unplaceable => Keys::Unplaceable,
        }
    }
}

/// The arguments one spec found: `first` to `last` every `step`.
#[derive(Debug, Clone, Copy)]
struct Span {
    first: usize,
    last: usize,
    step: usize,
    usage: KeyUse,
}

impl KeyTable {
    /// Adds (or replaces) the commands `other` knows, such as one a module
    /// loaded after start-up brought (from `COMMAND INFO <name>`).
    pub fn merge(&mut self, other: KeyTable) {
        for (name, placement) in other.commands {
            let weight = |placement: &Placement| match placement {
                Placement::Container(subcommands) => 1 + subcommands.len(),
                _ => 1,
            };
            self.len += weight(&placement);
            if let Some(replaced) = self.commands.insert(name, placement) {
                self.len -= weight(&replaced);
            }
        }
    }

    /// Redis 7.0.15's table, embedded (decoded once per process, then
    /// copied).
    pub fn builtin() -> KeyTable {
        builtin_table().clone()
    }

    /// From the RESP2 bytes of a `COMMAND` reply. Commands without key
    /// specs (Redis before 7) use the legacy first/last/step triple
    /// (elements 3,4,5; negative last counts from the end), except
    /// `movablekeys` ones, which take the built-in entry of the same name if
    /// there is one, else are Unplaceable.
    pub fn from_command_reply(reply: &[u8]) -> Result<KeyTable, String> {
        read_command_reply(reply, Some(builtin_table))
    }

    /// Where the keys of `args` are (`args[0]` is the command name, in any
    /// case).
    pub fn keys(&self, args: &[Bytes]) -> Keys {
        let Some(name) = args.first() else {
            return Keys::Unknown;
        };
        match lookup(&self.commands, name) {
            Some(placement) => placement.keys(args),
            None => Keys::Unknown,
        }
    }

    /// Commands (and subcommands) known.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The embedded table, decoded once.
/// Redis 7.0.15's `COMMAND` reply (RESP2), decompressed once per process.
pub fn builtin_command_reply() -> &'static [u8] {
    static REPLY: OnceLock<Vec<u8>> = OnceLock::new();
    REPLY.get_or_init(|| zstd::decode_all(BUILTIN_REPLY).expect("the embedded COMMAND reply decompresses"))
}

fn builtin_table() -> &'static KeyTable {
    static BUILTIN: OnceLock<KeyTable> = OnceLock::new();
    BUILTIN.get_or_init(|| {
        // No fallback: Redis 7.0 gives every command with moving keys specs.
        read_command_reply(builtin_command_reply(), None).expect("the embedded COMMAND reply is a valid table")
    })
}

/// Reads a `COMMAND` reply; `fallback` supplies entries for commands whose
/// keys move but that have no specs.
fn read_command_reply(reply: &[u8], fallback: Option<fn() -> &'static KeyTable>) -> Result<KeyTable, String> {
    let decoded = redis_protocol::resp2::decode::decode_bytes(&Bytes::copy_from_slice(reply))
        .map_err(|error| format!("unreadable COMMAND reply: {error}"))?;
    let Some((Resp2Frame::Array(entries), _)) = decoded else {
        return Err("COMMAND did not answer a complete array".into());
    };
    let mut commands = HashMap::with_capacity(entries.len());
    let mut len = 0;
    for entry in &entries {
        let Some(name) = entry_name(entry) else {
            continue;
        };
        let placement = match by_name(&name) {
            Some(placement) => placement,
            None => placement_of(entry, fallback.and_then(|table| table().commands.get(name.as_slice()))),
        };
        len += match &placement {
            Placement::Container(subcommands) => 1 + subcommands.len(),
            _ => 1,
        };
        commands.insert(name.into_boxed_slice(), placement);
    }
    if commands.is_empty() {
        return Err("COMMAND listed no commands".into());
    }
    Ok(KeyTable { commands, len })
}

/// The commands whose keys Redis itself finds with code rather than from
/// their specs (unknown, incomplete or variable-flag specs).
fn by_name(name: &[u8]) -> Option<Placement> {
    match name {
        b"sort" => Some(Placement::Sort { stores: true }),
        b"sort_ro" => Some(Placement::Sort { stores: false }),
        b"migrate" => Some(Placement::Migrate),
        b"bitfield" => Some(Placement::Bitfield),
        _ => None,
    }
}

/// The lower-case name of a `COMMAND` entry.
fn entry_name(entry: &Resp2Frame) -> Option<Vec<u8>> {
    let Resp2Frame::Array(fields) = entry else {
        return None;
    };
    text(fields.first()?).map(<[u8]>::to_ascii_lowercase)
}

/// How the keys of one `COMMAND` entry (`name, arity, flags, first, last,
/// step, acl categories, tips, key specs, subcommands`; Redis 6 stops after
/// the ACL categories) are found. `builtin` is the built-in entry of the
/// same name, for moving keys without specs.
fn placement_of(entry: &Resp2Frame, builtin: Option<&Placement>) -> Placement {
    let Resp2Frame::Array(fields) = entry else {
        return Placement::Unplaceable;
    };
    if let Some(Resp2Frame::Array(subcommands)) = fields.get(9)
        && !subcommands.is_empty()
    {
        let mut placements = HashMap::with_capacity(subcommands.len());
        for subcommand in subcommands {
            let Some(full_name) = entry_name(subcommand) else {
                continue;
            };
            // Listed as `container|subcommand`.
            let name = match full_name.iter().position(|&byte| byte == b'|') {
                Some(bar) => full_name[bar + 1..].to_vec(),
                None => full_name,
            };
            let builtin_subcommand = match builtin {
                Some(Placement::Container(builtin)) => builtin.get(name.as_slice()),
                _ => None,
            };
            let placement = placement_of(subcommand, builtin_subcommand);
            placements.insert(name.into_boxed_slice(), placement);
        }
        return Placement::Container(placements);
    }
    let flags: Vec<&[u8]> = match fields.get(2) {
        Some(Resp2Frame::Array(flags)) => flags.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    let has_flag = |flag: &str| flags.iter().any(|f| f.eq_ignore_ascii_case(flag.as_bytes()));
    match fields.get(8) {
        Some(Resp2Frame::Array(specs)) if !specs.is_empty() => {
            // Specs flagged `not_key` name channels (SPUBLISH), not keys.
            let specs = specs.iter().filter_map(key_spec).collect();
            return Placement::Specs(specs);
        }
        _ => {}
    }
    if has_flag("movablekeys") {
        return builtin.cloned().unwrap_or(Placement::Unplaceable);
    }
    let position = |index: usize| fields.get(index).and_then(integer).unwrap_or(0);
    Placement::Legacy {
        first: position(3),
        last: position(4),
        step: position(5),
        usage: if has_flag("readonly") {
            KeyUse::Read
        } else {
            KeyUse::Write
        },
    }
}

/// One key spec, from its flat map (`flags`, `begin_search`, `find_keys`);
/// None for a `not_key` spec.
fn key_spec(spec: &Resp2Frame) -> Option<KeySpec> {
    let flags: Vec<&[u8]> = match field(spec, "flags") {
        Some(Resp2Frame::Array(flags)) => flags.iter().filter_map(text).collect(),
        _ => Vec::new(),
    };
    let has_flag = |flag: &str| flags.iter().any(|f| f.eq_ignore_ascii_case(flag.as_bytes()));
    if has_flag("not_key") {
        return None;
    }
    // A spec whose flags vary with the arguments (SET with GET) states the
    // strongest; BITFIELD, whose flags may be weaker, is placed by name.
    let usage = if has_flag("RO") && !has_flag("variable_flags") {
        KeyUse::Read
    } else {
        KeyUse::Write
    };
    Some(KeySpec {
        usage,
        incomplete: has_flag("incomplete"),
        begin: begin_search(field(spec, "begin_search")),
        find: find_keys(field(spec, "find_keys")),
    })
}

fn begin_search(search: Option<&Resp2Frame>) -> BeginSearch {
    let Some(search) = search else {
        return BeginSearch::Unknown;
    };
    let kind = field(search, "type").and_then(text).unwrap_or_default();
    let spec = field(search, "spec");
    let number = |name: &str| spec.and_then(|spec| field(spec, name)).and_then(integer);
    match kind {
        b"index" => match number("index") {
            // Index 0 would be the command's own name.
            Some(index) if index >= 1 => BeginSearch::Index(index),
            _ => BeginSearch::Unknown,
        },
        b"keyword" => match (
            spec.and_then(|spec| field(spec, "keyword")).and_then(text),
            number("startfrom"),
        ) {
            (Some(keyword), Some(startfrom)) => BeginSearch::Keyword {
                keyword: keyword.into(),
                startfrom,
            },
            _ => BeginSearch::Unknown,
        },
        _ => BeginSearch::Unknown,
    }
}

fn find_keys(find: Option<&Resp2Frame>) -> FindKeys {
    let Some(find) = find else {
        return FindKeys::Unknown;
    };
    let kind = field(find, "type").and_then(text).unwrap_or_default();
    let spec = field(find, "spec");
    let number = |name: &str| spec.and_then(|spec| field(spec, name)).and_then(integer);
    match kind {
        b"range" => match (number("lastkey"), number("keystep"), number("limit")) {
            (Some(lastkey), Some(keystep), Some(limit)) if keystep >= 1 && limit >= 0 => FindKeys::Range {
                lastkey,
                keystep,
                limit,
            },
            _ => FindKeys::Unknown,
        },
        b"keynum" => match (number("keynumidx"), number("firstkey"), number("keystep")) {
            (Some(keynumidx), Some(firstkey), Some(keystep)) if keynumidx >= 0 && firstkey >= 0 && keystep >= 1 => {
                FindKeys::Keynum {
                    keynumidx,
                    firstkey,
                    keystep,
                }
            }
            _ => FindKeys::Unknown,
        },
        _ => FindKeys::Unknown,
    }
}

/// The value of `name` in a RESP2 map (a flat array of names and values).
fn field<'f>(map: &'f Resp2Frame, name: &str) -> Option<&'f Resp2Frame> {
    let Resp2Frame::Array(items) = map else {
        return None;
    };
    items
        .chunks_exact(2)
        .find(|pair| text(&pair[0]).is_some_and(|key| key.eq_ignore_ascii_case(name.as_bytes())))
        .map(|pair| &pair[1])
}

fn text(frame: &Resp2Frame) -> Option<&[u8]> {
    match frame {
        Resp2Frame::BulkString(text) | Resp2Frame::SimpleString(text) => Some(text),
        _ => None,
    }
}

fn integer(frame: &Resp2Frame) -> Option<i64> {
    match frame {
        Resp2Frame::Integer(value) => Some(*value),
        _ => None,
    }
}

/// `name` looked up in lower case; lower-cased on the stack when it fits.
fn lookup<'t, V>(map: &'t HashMap<Box<[u8]>, V>, name: &[u8]) -> Option<&'t V> {
    let mut buffer = [0u8; 32];
    match buffer.get_mut(..name.len()) {
        Some(lower) => {
            lower.copy_from_slice(name);
            lower.make_ascii_lowercase();
            map.get(&*lower)
        }
        None => map.get(name.to_ascii_lowercase().as_slice()),
    }
}

impl Placement {
    fn keys(&self, args: &[Bytes]) -> Keys {
        match self {
            Placement::Specs(specs) => keys_from_specs(specs, args),
            Placement::Legacy {
                first,
                last,
                step,
                usage,
            } => legacy_keys(*first, *last, *step, *usage, args),
            // Without a (known) subcommand Redis answers an error and
            // touches nothing.
            Placement::Container(subcommands) => match args.get(1).and_then(|name| lookup(subcommands, name)) {
                Some(subcommand) => subcommand.keys(args),
                None => Keys::At(Vec::new()),
            },
            Placement::Sort { stores } => sort_keys(args, *stores),
            Placement::Migrate => migrate_keys(args),
            Placement::Bitfield => bitfield_keys(args),
            Placement::Unplaceable => Keys::Unplaceable,
        }
    }
}

/// The keys every spec finds, spec by spec; the first spec that cannot
/// place its keys decides, as in Redis's `getKeysUsingKeySpecs`.
fn keys_from_specs(specs: &[KeySpec], args: &[Bytes]) -> Keys {
    let mut spans = Vec::with_capacity(specs.len());
    for spec in specs {
        match spec.span(args) {
            Ok(Some(span)) => spans.push(span),
            Ok(None) => {}
            Err(refusal) => return refusal.into(),
        }
    }
    let count = spans.iter().map(|span| (span.last - span.first) / span.step + 1).sum();
    let mut keys = Vec::with_capacity(count);
    for span in &spans {
        keys.extend((span.first..=span.last).step_by(span.step).map(|index| KeyArg {
            index,
            usage: span.usage,
            kind: KeyKind::Name,
        }));
    }
    let overlap = spans.iter().enumerate().any(|(n, span)| {
        spans[..n]
            .iter()
            .any(|earlier| earlier.first <= span.last && span.first <= earlier.last)
    });
    Keys::At(if overlap { deduplicated(keys) } else { keys })
}

/// Each index once, where it first appeared; a Write wins over a Read.
fn deduplicated(keys: Vec<KeyArg>) -> Vec<KeyArg> {
    let mut position: HashMap<usize, usize> = HashMap::with_capacity(keys.len());
    let mut kept: Vec<KeyArg> = Vec::with_capacity(keys.len());
    for key in keys {
        match position.get(&key.index) {
            Some(&at) => {
                if key.usage == KeyUse::Write {
                    kept[at].usage = KeyUse::Write;
                }
            }
            None => {
                position.insert(key.index, kept.len());
                kept.push(key);
            }
        }
    }
    kept
}

impl KeySpec {
    /// The arguments this spec finds in `args`: None when its keyword is
    /// absent or it counts zero keys (it finds none).
    fn span(&self, args: &[Bytes]) -> Result<Option<Span>, Refusal> {
        let argc = args.len() as i64;
        let first = match &self.begin {
            BeginSearch::Index(index) => *index,
            BeginSearch::Keyword { keyword, startfrom } => match find_keyword(args, keyword, *startfrom) {
                Some(at) => at + 1,
                None => return Ok(None),
            },
            BeginSearch::Unknown => return Err(Refusal::Unplaceable),
        };
        let (first, last, step) = match self.find {
            FindKeys::Range {
                lastkey,
                keystep,
                limit,
            } => {
                let last = if lastkey >= 0 {
                    first + lastkey
                } else if limit == 0 {
                    argc + lastkey
                } else {
                    // XREAD's STREAMS a b 0 0: keys are the first half.
                    first + ((argc - first) / limit + lastkey)
                };
                (first, last, keystep)
            }
            FindKeys::Keynum {
                keynumidx,
                firstkey,
                keystep,
            } => {
                let count = usize::try_from(first + keynumidx)
                    .ok()
                    .and_then(|at| args.get(at))
                    .and_then(|count| parse_i64(count));
                let count = match count {
                    Some(count) if count >= 0 => count,
                    // Redis answers "numkeys should be greater than 0" or
                    // "value is not an integer".
                    _ => return Err(Refusal::Malformed),
                };
                if count == 0 {
                    return Ok(None);
                }
                let first = first + firstkey;
                (first, first.saturating_add(count - 1), keystep)
            }
            FindKeys::Unknown => return Err(Refusal::Unplaceable),
        };
        // More keys than arguments: Redis refuses the command.
        if last >= argc || last < first || first >= argc {
            return Err(Refusal::Malformed);
        }
        if self.incomplete {
            return Err(Refusal::Unplaceable);
        }
        Ok(Some(Span {
            first: first as usize,
            last: last as usize,
            step: step as usize,
            usage: self.usage,
        }))
    }
}

/// Where `keyword` is, searched as Redis does: forward from `startfrom`
/// (the last argument excluded, a key must follow) or, when it is negative,
/// backward from `argc + startfrom` down to argument 2.
fn find_keyword(args: &[Bytes], keyword: &[u8], startfrom: i64) -> Option<i64> {
    let argc = args.len() as i64;
    let (start, end) = if startfrom > 0 {
        (startfrom, argc - 1)
    } else {
        (argc + startfrom, 1)
    };
    let forward = start <= end;
    let mut at = start;
    while at != end && (1..argc).contains(&at) {
        if is_word(&args[at as usize], keyword) {
            return Some(at);
        }
        at += if forward { 1 } else { -1 };
    }
    None
}

/// Redis 6's fixed positions, read as `getKeysUsingLegacyRangeSpec` does:
/// out of bounds means no keys (Redis answers the arity error).
fn legacy_keys(first: i64, last: i64, step: i64, usage: KeyUse, args: &[Bytes]) -> Keys {
    if first <= 0 {
        return Keys::At(Vec::new());
    }
    if step <= 0 {
        return Keys::Unplaceable;
    }
    let argc = args.len() as i64;
    let last = if last < 0 { argc + last } else { last };
    if first >= argc || last >= argc || last < first {
        return Keys::At(Vec::new());
    }
    Keys::At(
        (first as usize..=last as usize)
            .step_by(step as usize)
            .map(|index| KeyArg {
                index,
                usage,
                kind: KeyKind::Name,
            })
            .collect(),
    )
}

/// `SORT key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC|DESC]
/// [ALPHA] [STORE destination]`, its options read as sort.c reads them: an
/// option's values are never options, an unknown option is a syntax error,
/// the last BY and the last STORE win, and a BY without `*` turns sorting
/// (and so BY's look-ups) off for good. SORT_RO refuses STORE.
fn sort_keys(args: &[Bytes], stores: bool) -> Keys {
    if args.len() < 2 {
        return Keys::Malformed;
    }
    let mut by = None;
    let mut sorts = true;
    let mut gets = Vec::new();
    let mut store = None;
    let mut at = 2;
    while at < args.len() {
        let option = &args[at];
        let values = args.len() - at - 1;
        if is_word(option, b"asc") || is_word(option, b"desc") || is_word(option, b"alpha") {
            at += 1;
        } else if is_word(option, b"limit") && values >= 2 {
            if parse_i64(&args[at + 1]).is_none() || parse_i64(&args[at + 2]).is_none() {
                return Keys::Malformed;
            }
            at += 3;
        } else if stores && is_word(option, b"store") && values >= 1 {
            store = Some(at + 1);
            at += 2;
        } else if is_word(option, b"by") && values >= 1 {
            if is_pattern(&args[at + 1]) {
                by = Some(at + 1);
            } else {
                sorts = false;
            }
            at += 2;
        } else if is_word(option, b"get") && values >= 1 {
            if is_pattern(&args[at + 1]) {
                gets.push(at + 1);
            }
            at += 2;
        } else {
            return Keys::Malformed;
        }
    }
    let pattern = |index| KeyArg {
        index,
        usage: KeyUse::Read,
        kind: KeyKind::Pattern,
    };
    let mut keys = vec![KeyArg {
        index: 1,
        usage: KeyUse::Read,
        kind: KeyKind::Name,
    }];
    keys.extend(by.filter(|_| sorts).map(pattern));
    keys.extend(gets.into_iter().map(pattern));
    keys.extend(store.map(|index| KeyArg {
        index,
        usage: KeyUse::Write,
        kind: KeyKind::Name,
    }));
    Keys::At(keys)
}

/// Whether a BY or GET pattern looks keys up: Redis substitutes the first
/// `*` of the pattern as a C string (up to a NUL byte).
fn is_pattern(pattern: &[u8]) -> bool {
    c_string(pattern).contains(&b'*')
}

/// `MIGRATE host port key|"" db timeout [COPY] [REPLACE] [AUTH password]
/// [AUTH2 username password] [KEYS key ...]`, read as migrateCommand reads
/// it: the key at 3, or, with KEYS (and an empty key at 3), every argument
/// after KEYS.
fn migrate_keys(args: &[Bytes]) -> Keys {
    if args.len() < 6 {
        return Keys::Malformed;
    }
    let moved = |indexes: std::ops::Range<usize>| {
        Keys::At(
            indexes
                .map(|index| KeyArg {
                    index,
                    usage: KeyUse::Write,
                    kind: KeyKind::Name,
                })
                .collect(),
        )
    };
    let mut at = 6;
    while at < args.len() {
        let option = &args[at];
        let values = args.len() - at - 1;
        if is_word(option, b"copy") || is_word(option, b"replace") {
            at += 1;
        } else if is_word(option, b"auth") && values >= 1 {
            at += 2;
        } else if is_word(option, b"auth2") && values >= 2 {
            at += 3;
        } else if is_word(option, b"keys") {
            // "the key argument must be set to the empty string".
            if !args[3].is_empty() {
                return Keys::Malformed;
            }
            return moved(at + 1..args.len());
        } else {
            return Keys::Malformed;
        }
    }
    moved(3..4)
}

/// `BITFIELD key [GET type offset] [SET ...] [INCRBY ...] [OVERFLOW ...]`:
/// a read when it only GETs, as Redis's `bitfieldGetKeys` judges it.
fn bitfield_keys(args: &[Bytes]) -> Keys {
    if args.len() < 2 {
        return Keys::Malformed;
    }
    let mut usage = KeyUse::Read;
    let mut at = 2;
    while at < args.len() {
        let operation = &args[at];
        let values = args.len() - at - 1;
        if is_word(operation, b"get") && values >= 2 {
            at += 3;
        } else if is_word(operation, b"overflow") && values >= 1 {
            at += 2;
        } else {
            // SET, INCRBY, or a syntax error: Redis assumes a write.
            usage = KeyUse::Write;
            break;
        }
    }
    Keys::At(vec![KeyArg {
        index: 1,
        usage,
        kind: KeyKind::Name,
    }])
}

/// Whether `arg` is `word` as Redis's `strcasecmp` sees it: compared as a C
/// string, so up to a NUL byte, in any case.
fn is_word(arg: &[u8], word: &[u8]) -> bool {
    c_string(arg).eq_ignore_ascii_case(word)
}

/// `bytes` up to its first NUL, as C string functions see it.
fn c_string(bytes: &[u8]) -> &[u8] {
    match memchr::memchr(0, bytes) {
        Some(nul) => &bytes[..nul],
        None => bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<Bytes> {
        line.split_whitespace()
            .map(|word| match word {
                "\"\"" => Bytes::new(),
                word => Bytes::copy_from_slice(word.as_bytes()),
            })
            .collect()
    }

    /// The keys of `line` as (index, usage) names, patterns marked `~`:
    /// `"1r 2w ~3r"`.
    fn placed(table: &KeyTable, line: &str) -> String {
        match table.keys(&args(line)) {
            Keys::At(keys) => keys
                .iter()
                .map(|key| {
                    let pattern = if key.kind == KeyKind::Pattern { "~" } else { "" };
                    let usage = if key.usage == KeyUse::Read { "r" } else { "w" };
                    format!("{pattern}{}{usage}", key.index)
                })
                .collect::<Vec<_>>()
                .join(" "),
            other => format!("{other:?}"),
        }
    }

    fn builtin() -> KeyTable {
        KeyTable::builtin()
    }

    #[test]
    fn the_builtin_table_knows_redis_7_0_commands_and_subcommands() {
        let table = builtin();
        // 240 commands and 126 subcommands in Redis 7.0.15.
        assert_eq!(table.len(), 366);
        assert!(!table.is_empty());
    }

    #[test]
    fn fixed_positions_come_from_the_specs() {
        let table = builtin();
        assert_eq!(placed(&table, "GET k"), "1r");
        assert_eq!(placed(&table, "get k"), "1r");
        assert_eq!(placed(&table, "SET k v"), "1w");
        assert_eq!(placed(&table, "MSET a 1 b 2 c 3"), "1w 3w 5w");
        assert_eq!(placed(&table, "DEL a b c d"), "1w 2w 3w 4w");
        assert_eq!(placed(&table, "RENAME a b"), "1w 2w");
        assert_eq!(placed(&table, "COPY a b DB 2"), "1r 2w");
        assert_eq!(placed(&table, "BITOP AND dest a b"), "2w 3r 4r");
        assert_eq!(placed(&table, "LMOVE a a LEFT RIGHT"), "1w 2w");
        // PFCOUNT may rewrite the cached cardinality.
        assert_eq!(placed(&table, "PFCOUNT a b"), "1w 2w");
    }

    #[test]
    fn counted_keys_follow_their_numkeys() {
        let table = builtin();
        assert_eq!(placed(&table, "EVAL return 0"), "");
        assert_eq!(placed(&table, "EVAL return 2 a b arg"), "3w 4w");
        assert_eq!(placed(&table, "EVAL_RO return 1 a arg"), "3r");
        assert_eq!(placed(&table, "FCALL f 2 a b arg"), "3w 4w");
        assert_eq!(placed(&table, "FCALL_RO f 1 a"), "3r");
        assert_eq!(placed(&table, "ZUNIONSTORE dest 2 a b WEIGHTS 1 2"), "1w 3r 4r");
        assert_eq!(placed(&table, "ZINTER 2 a b WITHSCORES"), "2r 3r");
        assert_eq!(placed(&table, "LMPOP 2 a b LEFT COUNT 3"), "2w 3w");
        assert_eq!(placed(&table, "BLMPOP 0.5 1 a RIGHT"), "3w");
        assert_eq!(placed(&table, "BZMPOP 1 2 a b MIN"), "3w 4w");
        assert_eq!(placed(&table, "SINTERCARD 3 a b c LIMIT 1"), "2r 3r 4r");
    }

    #[test]
    fn keywords_start_the_keys_after_them() {
        let table = builtin();
        assert_eq!(placed(&table, "XREAD COUNT 1 STREAMS a b 0 0"), "4r 5r");
        assert_eq!(placed(&table, "xread block 0 streams a $"), "4r");
        // The group and consumer may be named STREAMS: the search starts
        // after them.
        assert_eq!(
            placed(&table, "XREADGROUP GROUP STREAMS STREAMS COUNT 1 STREAMS a b > >"),
            "7r 8r"
        );
        assert_eq!(placed(&table, "GEORADIUS g 0 0 10 km STORE x"), "1r 7w");
        assert_eq!(placed(&table, "GEORADIUS g 0 0 10 km STOREDIST x"), "1r 7w");
        assert_eq!(placed(&table, "GEORADIUS g 0 0 10 km WITHDIST"), "1r");
        assert_eq!(placed(&table, "GEORADIUSBYMEMBER g m 10 km STORE x"), "1r 6w");
        // A keyword as the last argument has no key after it.
        assert_eq!(placed(&table, "XREAD COUNT 1 STREAMS"), "");
    }

    #[test]
    fn migrate_moves_the_key_at_3_or_those_after_keys() {
        let table = builtin();
        assert_eq!(placed(&table, "MIGRATE h 6379 k 0 5000"), "3w");
        assert_eq!(placed(&table, "MIGRATE h 6379 k 0 5000 COPY REPLACE"), "3w");
        assert_eq!(placed(&table, "MIGRATE h 6379 \"\" 0 5000 KEYS a b"), "7w 8w");
        // A password (or a key) named KEYS is not the option.
        assert_eq!(
            placed(&table, "MIGRATE h 6379 \"\" 0 5000 AUTH KEYS AUTH2 u p KEYS a KEYS b"),
            "12w 13w 14w"
        );
        assert_eq!(placed(&table, "MIGRATE h 6379 k 0 5000 KEYS a"), "Malformed");
        assert_eq!(placed(&table, "MIGRATE h 6379 k 0 5000 NOPE"), "Malformed");
        assert_eq!(placed(&table, "MIGRATE h 6379 k 0 5000 AUTH"), "Malformed");
    }

    #[test]
    fn subcommands_count_positions_from_their_container() {
        let table = builtin();
        assert_eq!(placed(&table, "OBJECT ENCODING k"), "2r");
        assert_eq!(placed(&table, "object encoding k"), "2r");
        assert_eq!(placed(&table, "MEMORY USAGE k SAMPLES 5"), "2r");
        assert_eq!(placed(&table, "XINFO STREAM k FULL"), "2r");
        assert_eq!(placed(&table, "XGROUP CREATE k g $ MKSTREAM"), "2w");
        assert_eq!(placed(&table, "OBJECT HELP"), "");
        assert_eq!(placed(&table, "CONFIG GET maxmemory"), "");
    }

    #[test]
    fn containers_without_a_known_subcommand_have_no_keys() {
        let table = builtin();
        assert_eq!(placed(&table, "OBJECT"), "");
        assert_eq!(placed(&table, "OBJECT NOSUCH k"), "");
    }

    #[test]
    fn sort_lists_its_patterns_and_destination() {
        let table = builtin();
        assert_eq!(placed(&table, "SORT k"), "1r");
        assert_eq!(
            placed(
                &table,
                "SORT k BY w_* LIMIT 0 10 GET # GET u:*->name ALPHA DESC STORE d"
            ),
            "1r ~3r ~10r 14w"
        );
        // BY without `*` does not sort; GET without `*` looks nothing up.
        assert_eq!(placed(&table, "SORT k BY nosort GET fixed"), "1r");
        // Option values are not options.
        assert_eq!(placed(&table, "SORT k BY store GET by STORE get"), "1r 7w");
        // The last BY and the last STORE win; a BY without `*` turns
        // sorting off for good.
        assert_eq!(placed(&table, "SORT k BY a_* BY b_* STORE x STORE y"), "1r ~5r 9w");
        assert_eq!(placed(&table, "SORT k BY nosort BY b_*"), "1r");
        assert_eq!(placed(&table, "SORT_RO k BY w_* GET h_*->f"), "1r ~3r ~5r");
    }

    #[test]
    fn malformed_commands_touch_no_keys() {
        let table = builtin();
        for line in [
            "GET",
            "EVAL return 3 a b",
            "EVAL return -1",
            "EVAL return 01 a",
            "EVAL return one a",
            "EVAL return",
            "ZUNIONSTORE dest 3 a b",
            "LMPOP 2 a",
            "XREAD STREAMS a",
            "OBJECT ENCODING",
            "SORT",
            "SORT k LIMIT 0",
            "SORT k LIMIT 0 x",
            "SORT k GET",
            "SORT k NOPE",
            "SORT_RO k STORE d",
            "MIGRATE h 6379 k",
        ] {
            assert_eq!(placed(&table, line), "Malformed", "{line}");
        }
    }

    #[test]
    fn bitfield_is_a_read_when_it_only_gets() {
        let table = builtin();
        assert_eq!(placed(&table, "BITFIELD k GET u8 0 OVERFLOW SAT GET i4 4"), "1r");
        assert_eq!(placed(&table, "BITFIELD k GET u8 0 SET u8 0 1"), "1w");
        assert_eq!(placed(&table, "BITFIELD k GET u8"), "1w");
        assert_eq!(placed(&table, "BITFIELD_RO k GET u8 0"), "1r");
    }

    #[test]
    fn keyless_and_unknown_commands() {
        let table = builtin();
        assert_eq!(placed(&table, "PING"), "");
        assert_eq!(placed(&table, "DBSIZE"), "");
        // Sharded channels are not keys.
        assert_eq!(placed(&table, "SPUBLISH ch m"), "");
        assert_eq!(placed(&table, "NOSUCH k"), "Unknown");
        assert_eq!(
            placed(&table, "A_COMMAND_NAME_LONGER_THAN_THIRTY_TWO_BYTES k"),
            "Unknown"
        );
        assert_eq!(table.keys(&[]), Keys::Unknown);
    }

    #[test]
    fn a_strcasecmp_keyword_ends_at_a_nul_byte() {
        let table = builtin();
        let line = [&b"XREAD"[..], b"STREAMS\0junk", b"a", b"0"].map(Bytes::copy_from_slice);
        assert_eq!(
            table.keys(&line),
            Keys::At(vec![KeyArg {
                index: 2,
                usage: KeyUse::Read,
                kind: KeyKind::Name,
            }])
        );
    }

    /// A Redis 6 `COMMAND` reply: name, arity, flags, first, last, step,
    /// ACL categories; no key specs.
    const REDIS_6_REPLY: &[u8] = b"*7\r\n\
        *7\r\n$3\r\nget\r\n:2\r\n*2\r\n+readonly\r\n+fast\r\n:1\r\n:1\r\n:1\r\n*0\r\n\
        *7\r\n$4\r\nmset\r\n:-3\r\n*1\r\n+write\r\n:1\r\n:-1\r\n:2\r\n*0\r\n\
        *7\r\n$6\r\nobject\r\n:-2\r\n*1\r\n+readonly\r\n:2\r\n:2\r\n:1\r\n*0\r\n\
        *7\r\n$4\r\neval\r\n:-3\r\n*2\r\n+noscript\r\n+movablekeys\r\n:0\r\n:0\r\n:0\r\n*0\r\n\
        *7\r\n$6\r\nmemory\r\n:-2\r\n*2\r\n+readonly\r\n+movablekeys\r\n:0\r\n:0\r\n:0\r\n*0\r\n\
        *7\r\n$9\r\nmodule.do\r\n:-2\r\n*2\r\n+write\r\n+movablekeys\r\n:0\r\n:0\r\n:0\r\n*0\r\n\
        *7\r\n$4\r\nping\r\n:-1\r\n*1\r\n+fast\r\n:0\r\n:0\r\n:0\r\n*0\r\n";

    #[test]
    fn a_redis_6_reply_uses_fixed_positions_and_the_builtin_moving_ones() {
        let table = KeyTable::from_command_reply(REDIS_6_REPLY).unwrap();
        assert_eq!(placed(&table, "GET k"), "1r");
        assert_eq!(placed(&table, "MSET a 1 b 2"), "1w 3w");
        assert_eq!(placed(&table, "OBJECT ENCODING k"), "2r");
        assert_eq!(placed(&table, "OBJECT HELP"), "");
        assert_eq!(placed(&table, "EVAL return 1 a"), "3w");
        assert_eq!(placed(&table, "MEMORY USAGE k"), "2r");
        assert_eq!(placed(&table, "MODULE.DO k"), "Unplaceable");
        assert_eq!(placed(&table, "PING"), "");
        assert_eq!(placed(&table, "SET k v"), "Unknown");
        // Six entries, and MEMORY's six subcommands from the built-in table.
        assert_eq!(table.len(), 7 + 6);
    }

    #[test]
    fn specs_of_unknown_type_are_unplaceable() {
        // A module command: flags, begin_search unknown, find_keys unknown.
        let reply = b"*1\r\n\
            *10\r\n$9\r\nmodule.do\r\n:-2\r\n*1\r\n+write\r\n:0\r\n:0\r\n:0\r\n*0\r\n*0\r\n\
            *1\r\n*6\r\n$5\r\nflags\r\n*1\r\n+RW\r\n\
            $12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$7\r\nunknown\r\n$4\r\nspec\r\n*0\r\n\
            $9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$7\r\nunknown\r\n$4\r\nspec\r\n*0\r\n\
            *0\r\n";
        let table = KeyTable::from_command_reply(reply).unwrap();
        assert_eq!(placed(&table, "MODULE.DO k"), "Unplaceable");
    }

    #[test]
    fn overlapping_specs_list_an_index_once_and_a_write_wins() {
        // Two specs finding argument 1: RO first, then RW.
        let spec = |flag: &str| {
            format!(
                "*6\r\n$5\r\nflags\r\n*1\r\n+{flag}\r\n\
                 $12\r\nbegin_search\r\n*4\r\n$4\r\ntype\r\n$5\r\nindex\r\n$4\r\nspec\r\n*2\r\n$5\r\nindex\r\n:1\r\n\
                 $9\r\nfind_keys\r\n*4\r\n$4\r\ntype\r\n$5\r\nrange\r\n$4\r\nspec\r\n\
                 *6\r\n$7\r\nlastkey\r\n:-1\r\n$7\r\nkeystep\r\n:1\r\n$5\r\nlimit\r\n:0\r\n"
            )
        };
        let reply = format!(
            "*1\r\n*10\r\n$3\r\ntwo\r\n:-2\r\n*0\r\n:1\r\n:-1\r\n:1\r\n*0\r\n*0\r\n*2\r\n{}{}*0\r\n",
            spec("RO"),
            spec("RW")
        );
        let table = KeyTable::from_command_reply(reply.as_bytes()).unwrap();
        assert_eq!(placed(&table, "TWO a b"), "1w 2w");
    }

    #[test]
    fn unreadable_replies_are_errors() {
        assert!(KeyTable::from_command_reply(b"-ERR unknown command\r\n").is_err());
        assert!(KeyTable::from_command_reply(b"*2\r\n*1\r\n").is_err());
        assert!(KeyTable::from_command_reply(b"*0\r\n").is_err());
    }

    #[test]
    fn numbers_are_read_as_string2ll_does() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-12"), Some(-12));
        for refused in [
            &b""[..],
            b"-",
            b"-0",
            b"01",
            b"+1",
            b" 1",
            b"1 ",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_i64(refused), None, "{refused:?}");
        }
    }
}
