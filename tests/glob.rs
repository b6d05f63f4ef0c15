//! `keys::glob` against Redis itself: for seeded random patterns over an
//! alphabet crowded with special bytes, the proxy's matcher must select
//! exactly the keys a real `redis-server` lists for `KEYS pattern`, and,
//! for the nocase flag, exactly the commands `COMMAND LIST FILTERBY
//! PATTERN` lists (Redis matches command names ignoring case).

mod common;

use std::collections::BTreeSet;

use auracache::keys::glob;
use common::{RawClient, RedisServer};

/// Bytes keys are made of: letters of both cases, digits, separators, every
/// byte that is special in a pattern, and a few that are not ASCII (ranges
/// compare those as C `char`s).
const KEY_BYTES: &[u8] = b"abcABC019:-^*?[]\\\x00\xe9\xff";

/// How many random patterns each differential test compares.
const RANDOM_PATTERNS: usize = 500;

/// xorshift64*: a fixed seed gives the same keys and patterns on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, chance: usize) -> bool {
        self.below(100) < chance
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// A pattern that matches one byte like `byte`: itself, escaped or not, or
/// a class or wildcard around it.
fn pattern_for_byte(rng: &mut Rng, byte: u8, out: &mut Vec<u8>) {
    match rng.below(10) {
        0..=3 => out.extend(glob::escape(&[byte])),
        4 => out.push(byte),
        5 => out.push(b'?'),
        6 => out.push(b'*'),
        7 => out.extend([b'[', byte, b'-', rng.pick(KEY_BYTES), b']']),
        8 => out.extend([b'[', b'^', rng.pick(KEY_BYTES), b']']),
        _ => out.extend([b'[', b'\\', byte, rng.pick(KEY_BYTES), b']']),
    }
}

/// A random class: `[`, maybe `^`, members (bytes, ranges, escapes), and
/// usually a closing `]`.
fn random_class(rng: &mut Rng, alphabet: &[u8], out: &mut Vec<u8>) {
    out.push(b'[');
    if rng.percent(30) {
        out.push(b'^');
    }
    for _ in 0..rng.below(4) {
        match rng.below(4) {
            0 => out.extend([rng.pick(alphabet), b'-', rng.pick(alphabet)]),
            1 => out.extend([b'\\', rng.pick(alphabet)]),
            _ => out.push(rng.pick(alphabet)),
        }
    }
    if rng.percent(85) {
        out.push(b']');
    }
}

/// A pattern either shaped after one of `names` (so that it often matches
/// something) or made of random pieces over `alphabet`.
fn random_pattern(rng: &mut Rng, names: &[Vec<u8>], alphabet: &[u8]) -> Vec<u8> {
    let mut pattern = Vec::new();
    if rng.percent(45) {
        let name = &names[rng.below(names.len())];
        let keep = if rng.percent(25) {
            rng.below(name.len() + 1)
        } else {
            name.len()
        };
        for &byte in &name[..keep] {
            pattern_for_byte(rng, byte, &mut pattern);
        }
        if keep < name.len() || rng.percent(10) {
            pattern.push(b'*');
        }
        return pattern;
    }
    for _ in 0..rng.below(9) {
        match rng.below(12) {
            0..=4 => pattern.push(rng.pick(alphabet)),
            5 | 6 => pattern.push(b'*'),
            7 => pattern.push(b'?'),
            8 => pattern.extend([b'\\', rng.pick(alphabet)]),
            _ => random_class(rng, alphabet, &mut pattern),
        }
    }
    if rng.percent(5) {
        pattern.push(b'\\');
    }
    pattern
}

fn seeded_keys(rng: &mut Rng, count: usize) -> Vec<Vec<u8>> {
    let mut keys = BTreeSet::from([Vec::new()]);
    while keys.len() < count {
        let mut key = Vec::new();
        if rng.percent(30) {
            key.extend(rng.pick(&[&b"user:"[..], b"User:", b"a*b:", b"x[1]:", b"k\\v:", b"^-:"]));
        }
        for _ in 0..1 + rng.below(12) {
            key.push(rng.pick(KEY_BYTES));
        }
        keys.insert(key);
    }
    keys.into_iter().collect()
}

/// The bulk strings of an array reply (RESP2).
fn bulk_strings(reply: &[u8]) -> Vec<Vec<u8>> {
    fn line(reply: &[u8], at: &mut usize) -> usize {
        let end = *at + reply[*at..].windows(2).position(|w| w == b"\r\n").expect("a CRLF");
        let number = std::str::from_utf8(&reply[*at + 1..end]).expect("a number");
        *at = end + 2;
        number.parse().expect("a length")
    }
    assert_eq!(
        reply.first(),
        Some(&b'*'),
        "an array: {:?}",
        reply.escape_ascii().to_string()
    );
    let mut at = 0;
    let count = line(reply, &mut at);
    (0..count)
        .map(|_| {
            assert_eq!(
                reply[at],
                b'$',
                "a bulk string in {:?}",
                reply.escape_ascii().to_string()
            );
            let len = line(reply, &mut at);
            let item = reply[at..at + len].to_vec();
            at += len + 2;
            item
        })
        .collect()
}

fn shown(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// Compares, for each pattern, what Redis lists (via `ask`) with what
/// `matcher` selects from `names`; fails listing the disagreements.
async fn compare(
    client: &mut RawClient,
    names: &[Vec<u8>],
    patterns: &[Vec<u8>],
    ask: impl Fn(&[u8]) -> Vec<Vec<u8>>,
    matcher: fn(&[u8], &[u8]) -> bool,
) -> usize {
    let mut disagreements = Vec::new();
    let mut selective = 0;
    for pattern in patterns {
        let command = ask(pattern);
        let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
        let from_redis: BTreeSet<Vec<u8>> = bulk_strings(&client.command(&args).await).into_iter().collect();
        let from_glob: BTreeSet<Vec<u8>> = names.iter().filter(|name| matcher(pattern, name)).cloned().collect();
        if !from_redis.is_empty() && from_redis.len() < names.len() {
            selective += 1;
        }
        if from_redis != from_glob {
            let only = |a: &BTreeSet<Vec<u8>>, b: &BTreeSet<Vec<u8>>| {
                a.difference(b).map(|name| shown(name)).collect::<Vec<_>>().join(", ")
            };
            disagreements.push(format!(
                "pattern {}: only Redis lists [{}]; only glob selects [{}]",
                shown(pattern),
                only(&from_redis, &from_glob),
                only(&from_glob, &from_redis),
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {} patterns disagree with Redis:\n{}",
        disagreements.len(),
        patterns.len(),
        disagreements.join("\n")
    );
    selective
}

async fn seeded(server: &RedisServer, keys: &[Vec<u8>]) -> RawClient {
    let mut client = RawClient::connect(server.addr()).await;
    let mut mset: Vec<&[u8]> = vec![b"MSET"];
    for key in keys {
        mset.extend([key.as_slice(), b"v"]);
    }
    assert_eq!(client.command(&mset).await, b"+OK\r\n");
    client
}

fn keys_command(pattern: &[u8]) -> Vec<Vec<u8>> {
    vec![b"KEYS".to_vec(), pattern.to_vec()]
}

#[tokio::test]
async fn keys_lists_what_glob_matches_for_random_patterns() {
    let server = RedisServer::start();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let keys = seeded_keys(&mut rng, 300);
    let mut client = seeded(&server, &keys).await;

    // The corners first, then the random ones.
    let mut patterns: Vec<Vec<u8>> = [
        &b""[..],
        b"*",
        b"**",
        b"?",
        b"[",
        b"[^",
        b"[]",
        b"[^]",
        b"[]]",
        b"[^]]*",
        b"\\",
        b"*\\",
        b"a\\",
        b"[\\",
        b"[\\]",
        b"[\\]]",
        b"[a-]",
        b"[a-]*",
        b"[a-\\",
        b"[-a]*",
        b"*[",
        b"*[^",
        b"*[a",
        b"user:[",
        b"user:*[",
        b"[z-a]*",
        b"[a-Z]*",
        b"*[A-z]",
        b"[^a-c]*",
        b"[\x01-\xff]*",
        b"*[\x80-\xff]",
        b"*[\xe9-a]",
        b"*\x00*",
        b"[\x00]*",
        b"a*b*",
        b"***:*",
        b"*\\*",
        b"*\\**",
        b"*\\?*",
        b"*\\[*",
        b"*]*",
        b"*^*",
    ]
    .iter()
    .map(|pattern| pattern.to_vec())
    .collect();
    let corners = patterns.len();
    patterns.extend((0..RANDOM_PATTERNS).map(|_| random_pattern(&mut rng, &keys, KEY_BYTES)));

    let selective = compare(&mut client, &keys, &patterns, keys_command, glob::matches).await;
    // The comparison says something only if many patterns pick some keys but not all.
    assert!(
        selective >= patterns.len() / 3,
        "only {selective} of {} patterns (of which {corners} corners) select some but not all keys",
        patterns.len()
    );
}

#[tokio::test]
async fn keys_follows_only_a_thousand_stars_as_glob_does() {
    let server = RedisServer::start();
    let keys: Vec<Vec<u8>> = [999, 1000, 1001, 1100].iter().map(|&n| vec![b'a'; n]).collect();
    let mut client = seeded(&server, &keys).await;
    let stars = |n: usize| b"*a".repeat(n);
    let patterns = [
        stars(999),
        stars(1000),
        stars(1001),
        [stars(1000), b"*".to_vec()].concat(),
        [stars(1001), b"*".to_vec()].concat(),
        b"**a".repeat(1001),
        [b"a".to_vec(), stars(1000)].concat(),
    ];
    compare(&mut client, &keys, &patterns, keys_command, glob::matches).await;
}

#[tokio::test]
async fn command_list_filterby_pattern_lists_what_glob_matches_ignoring_case() {
    let server = RedisServer::start();
    let mut client = RawClient::connect(server.addr()).await;
    let mut names = bulk_strings(&client.command(&[b"COMMAND", b"LIST"]).await);
    names.sort();
    assert!(names.len() > 100, "COMMAND LIST lists {} commands", names.len());

    // Command names are lower case: patterns mix cases to exercise nocase.
    let alphabet: &[u8] = b"acegilmnorstxACEGILMNORSTX|-*?[]\\^";
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let patterns: Vec<Vec<u8>> = (0..RANDOM_PATTERNS)
        .map(|_| {
            let mut pattern = random_pattern(&mut rng, &names, alphabet);
            // Upper-case some letters, so nocase has something to do.
            for byte in pattern.iter_mut() {
                if byte.is_ascii_lowercase() && rng.percent(40) {
                    byte.make_ascii_uppercase();
                }
            }
            pattern
        })
        .collect();
    let filter = |pattern: &[u8]| {
        vec![
            b"COMMAND".to_vec(),
            b"LIST".to_vec(),
            b"FILTERBY".to_vec(),
            b"PATTERN".to_vec(),
            pattern.to_vec(),
        ]
    };
    let selective = compare(&mut client, &names, &patterns, filter, glob::matches_nocase).await;
    assert!(
        selective >= patterns.len() / 4,
        "only {selective} patterns select some commands"
    );
}
