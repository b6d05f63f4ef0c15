//! Redis glob patterns, matched exactly as Redis matches them.
//!
//! The proxy renames keys (key versioning stores the client's `user:1` as
//! `v2:user:1`), so it filters KEYS and SCAN MATCH results by the client's
//! own pattern itself. A pattern must then select exactly the keys Redis
//! would have selected, quirks included. This mirrors `stringmatchlen` in
//! Redis's `util.c` as patched for CVE-2022-36021 and CVE-2024-31228
//! (Redis 7.2.6, 7.4.1 and later, and Debian's 7.0.15), and the
//! differential test in `tests/glob.rs` checks it against a real
//! `redis-server`:
//!
//! - `*` is any run of bytes and `?` any one byte; `\x` is `x` literally,
//!   and a lone `\` at the end of the pattern is a literal backslash.
//! - `[...]` is one byte from a class, `[^...]` one byte not in it. Inside,
//!   `a-z` is a range (`z-a` is the same range), `\x` is `x`, and the first
//!   `]` closes the class, so `[]` matches nothing and `[^]` any byte.
//!   `[a-]` is the range from `]` to `a`, which leaves the class open.
//! - A class that is never closed runs to the end of the pattern: `a[bc`
//!   matches `ab` and `ac`, and `a[` matches nothing.
//! - Under nocase, only ASCII letters fold; an escaped byte inside a class
//!   still compares exactly (`[\A]` does not match `a`), and a range is
//!   folded end by end after ordering, so `[A-z]` matches letters only.
//! - Range ends compare as C `char`s do where Redis is built: signed on
//!   x86-64 (so `[\x01-\xff]` is the range from -1 to 1), unsigned on Linux
//!   for ARM. This module follows the platform it is compiled for. Under
//!   nocase, glibc's `tolower` then turns a negative `char` other than -1
//!   (`EOF`) into its unsigned value, so with signed `char`s `[\x01-\xfe]`
//!   (-2 to 1, folded to 254 down to 1) matches nothing. (A musl build of
//!   Redis, as in Alpine images, keeps negative values; this follows glibc.)
//! - The empty string matches the empty pattern and a lone `*`, nothing
//!   else (not even `**`). The lone `*` only because KEYS and SCAN take it
//!   to mean "everything" before matching, and [`matches()`] serves them.
//!   (PSUBSCRIBE has no such shortcut: there a lone `*` misses the empty
//!   channel name.)
//! - A pattern whose 1001st `*` is reached with text still to match fails
//!   (Redis's bound on its recursion). A `*` at the very end still matches.
//!
//! Matching takes time proportional to the pattern's length times the
//! string's, never exponential: when the rest of the pattern after a `*`
//! matches nowhere in the rest of the string, no earlier `*` can help by
//! taking more (Redis's `skipLongerMatches`), so only the last `*` is ever
//! retried.

use std::ffi::c_char;

/// Whether `string` matches Redis glob `pattern` (as KEYS, SCAN MATCH,
/// PSUBSCRIBE do).
///
/// A lone `*` matches everything, the empty string too, as in KEYS and
/// SCAN (see the module docs for every quirk mirrored).
pub fn matches(pattern: &[u8], string: &[u8]) -> bool {
    match_glob(pattern, string, Case::Exact)
}

/// Same, ignoring ASCII case (Redis's nocase flag).
pub fn matches_nocase(pattern: &[u8], string: &[u8]) -> bool {
    match_glob(pattern, string, Case::Folded)
}

/// The literal text every match must start with: the pattern's unescaped
/// characters before its first special one (`*`, `?`, `[`), with `\x` read as `x`.
/// `exact` is true when the whole pattern is literal (it matches only that string).
///
/// Both hold for [`matches()`]; under [`matches_nocase`] they hold up to
/// ASCII case.
pub fn literal_prefix(pattern: &[u8]) -> (Vec<u8>, bool) {
    let mut prefix = Vec::with_capacity(pattern.len());
    let mut at = 0;
    while let Some(&byte) = pattern.get(at) {
        match byte {
            b'*' | b'?' | b'[' => return (prefix, false),
            // A trailing lone backslash is itself (see `match_glob`).
            b'\\' if at + 1 < pattern.len() => {
                prefix.push(pattern[at + 1]);
                at += 2;
            }
            _ => {
                prefix.push(byte);
                at += 1;
            }
        }
    }
    (prefix, true)
}

/// `literal` escaped so that, as a pattern, it matches exactly itself
/// (each of `*?[]\` preceded by `\`); for building a pattern from a literal
/// prefix plus the client's pattern.
pub fn escape(literal: &[u8]) -> Vec<u8> {
    let mut pattern = Vec::with_capacity(literal.len() * 2);
    for &byte in literal {
        if matches!(byte, b'*' | b'?' | b'[' | b']' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(byte);
    }
    pattern
}

/// How many `*` Redis follows before it gives up on a pattern: its guard
/// against stack exhaustion by long patterns (CVE-2024-31228).
const MAX_STARS: usize = 1000;

/// Whether a C `char` is signed on this platform (x86-64, Apple ARM) or
/// not (Linux on ARM): Redis compares range ends as `char`s.
const CHAR_IS_SIGNED: bool = c_char::MIN != 0;

/// C's `EOF`, which `tolower` returns as it is.
const EOF: i32 = -1;

/// Whether letters compare by their ASCII case (Redis's nocase flag off) or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Exact,
    Folded,
}

impl Case {
    fn same(self, a: u8, b: u8) -> bool {
        match self {
            Case::Exact => a == b,
            Case::Folded => a.eq_ignore_ascii_case(&b),
        }
    }

    /// A C `char`'s value as Redis's nocase flag sees it: through glibc's
    /// `tolower` in the "C" locale, which lowers ASCII letters and returns
    /// a negative (signed) `char` as its unsigned byte value, except -1,
    /// which is `EOF` and stays -1.
    fn fold_char(self, value: i32) -> i32 {
        match self {
            Case::Folded if value != EOF => i32::from((value as u8).to_ascii_lowercase()),
            _ => value,
        }
    }
}

/// The last `*` reached, and where its next attempt starts: the pattern
/// after it, and the string from one byte further than last time.
#[derive(Debug, Clone, Copy)]
struct Star {
    pattern: usize,
    string: usize,
}

fn match_glob(pattern: &[u8], string: &[u8], case: Case) -> bool {
    // KEYS and SCAN take a lone `*` to mean every key before they match, so
    // it matches even the empty key, which `**` does not.
    if pattern == b"*" {
        return true;
    }
    // Redis matches nothing against an empty string: only the empty pattern fits it.
    if pattern.is_empty() || string.is_empty() {
        return pattern.is_empty() && string.is_empty();
    }
    let mut p = 0;
    let mut s = 0;
    let mut last_star: Option<Star> = None;
    let mut stars_reached = 0;
    // Each turn starts with pattern and string both left to match.
    loop {
        let matched = match pattern[p] {
            b'*' => {
                while pattern.get(p + 1) == Some(&b'*') {
                    p += 1;
                }
                if p + 1 == pattern.len() {
                    return true;
                }
                stars_reached += 1;
                if stars_reached > MAX_STARS {
                    return false;
                }
                // Every earlier `*` is settled now: if what follows this one
                // fits nowhere in the rest of the string, giving an earlier
                // one more of the string cannot make it fit.
                p += 1;
                last_star = Some(Star { pattern: p, string: s });
                continue;
            }
            b'?' => {
                p += 1;
                true
            }
            b'[' => {
                let (in_class, last) = match_class(pattern, p, string[s], case);
                p = last + 1;
                in_class
            }
            b'\\' if p + 1 < pattern.len() => {
                p += 2;
                case.same(pattern[p - 1], string[s])
            }
            literal => {
                p += 1;
                case.same(literal, string[s])
            }
        };
        if matched {
            s += 1;
            if s == string.len() {
                // Stars at the end match the nothing that is left.
                while pattern.get(p) == Some(&b'*') {
                    p += 1;
                }
                if p == pattern.len() {
                    return true;
                }
            } else if p < pattern.len() {
                continue;
            }
        }
        // A mismatch, or one side ran out first: let the last `*` take one
        // more byte, as long as some string is left after it.
        match &mut last_star {
            Some(star) if star.string + 1 < string.len() => {
                star.string += 1;
                p = star.pattern;
                s = star.string;
            }
            _ => return false,
        }
    }
}

/// Whether `byte` is in the class opening at `pattern[open]` (a `[`), and
/// the index of the class's last pattern byte: its `]`, or the pattern's
/// last byte when the class is never closed.
fn match_class(pattern: &[u8], open: usize, byte: u8, case: Case) -> (bool, usize) {
    let mut at = open + 1;
    let negated = pattern.get(at) == Some(&b'^');
    if negated {
        at += 1;
    }
    let mut found = false;
    loop {
        let left = pattern.len() - at;
        if left >= 2 && pattern[at] == b'\\' {
            // Redis compares an escaped byte exactly, even under nocase.
            at += 1;
            found |= pattern[at] == byte;
        } else if left == 0 {
            // Never closed: the pattern's end closes it.
            at -= 1;
            break;
        } else if pattern[at] == b']' {
            break;
        } else if left >= 3 && pattern[at + 1] == b'-' {
            found |= in_range(pattern[at], pattern[at + 2], byte, case);
            at += 2;
        } else {
            found |= case.same(pattern[at], byte);
        }
        at += 1;
    }
    (found != negated, at)
}

/// Whether `byte` is in the range between `from` and `to` (either order),
/// compared as Redis compares them: ordered as C `char`s, then folded.
fn in_range(from: u8, to: u8, byte: u8, case: Case) -> bool {
    let (from, to) = (char_value(from), char_value(to));
    let (low, high) = if from > to { (to, from) } else { (from, to) };
    let value = case.fold_char(char_value(byte));
    (case.fold_char(low)..=case.fold_char(high)).contains(&value)
}

/// A byte's value as a C `char` on this platform.
fn char_value(byte: u8) -> i32 {
    if CHAR_IS_SIGNED {
        i32::from(byte as i8)
    } else {
        i32::from(byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn assert_matches(pattern: &[u8], yes: &[&[u8]], no: &[&[u8]]) {
        for string in yes {
            assert!(
                matches(pattern, string),
                "{:?} should match {:?}",
                pattern.escape_ascii().to_string(),
                string.escape_ascii().to_string()
            );
        }
        for string in no {
            assert!(
                !matches(pattern, string),
                "{:?} should not match {:?}",
                pattern.escape_ascii().to_string(),
                string.escape_ascii().to_string()
            );
        }
    }

    #[test]
    fn star_is_any_run_and_question_mark_any_byte() {
        assert_matches(
            b"user:*",
            &[b"user:", b"user:1", b"user:1:name"],
            &[b"user", b"users:1", b"xuser:1"],
        );
        assert_matches(b"*:name", &[b":name", b"user:1:name"], &[b"user:1:names", b"name"]);
        assert_matches(
            b"a*b*c",
            &[b"abc", b"aXbYc", b"abbbcc", b"acbc"],
            &[b"ab", b"acb", b"abcd"],
        );
        assert_matches(b"h?llo", &[b"hello", b"hallo", b"h\xffllo"], &[b"hllo", b"heello"]);
        assert_matches(b"???", &[b"abc", b"***"], &[b"ab", b"abcd"]);
        assert_matches(b"exact", &[b"exact"], &[b"Exact", b"exac", b"exactly"]);
    }

    #[test]
    fn consecutive_stars_are_one_star() {
        assert_matches(b"a***b", &[b"ab", b"axxb"], &[b"a", b"b", b"abx"]);
        assert_matches(b"***", &[b"x", b"anything"], &[]);
        assert_matches(b"a**", &[b"a", b"abc"], &[b"ba"]);
    }

    #[test]
    fn the_empty_string_matches_only_the_empty_pattern_and_a_lone_star() {
        assert_matches(b"", &[b""], &[b"a"]);
        // KEYS * lists the empty key; KEYS ** does not.
        assert_matches(b"*", &[b""], &[]);
        assert_matches(b"**", &[b"a"], &[b""]);
        assert_matches(b"?", &[b"a"], &[b""]);
        assert_matches(b"[^a]", &[b"b"], &[b""]);
    }

    #[test]
    fn classes_negations_and_ranges() {
        assert_matches(b"[abc]", &[b"a", b"c"], &[b"d", b"", b"ab", b"A"]);
        assert_matches(b"[^abc]", &[b"d", b"A", b"^"], &[b"a", b"c", b""]);
        assert_matches(b"x[a-c]", &[b"xa", b"xb", b"xc"], &[b"xd", b"x-", b"xA"]);
        assert_matches(b"x[0-9a-f]y", &[b"x7y", b"xey"], &[b"xgy", b"x-y"]);
        // A reversed range is the same range.
        assert_matches(b"[z-a]", &[b"a", b"m", b"z"], &[b"A", b"{"]);
        // `-` at either end, and `^` anywhere but first, are themselves.
        assert_matches(b"[-a]", &[b"-", b"a"], &[b"b"]);
        assert_matches(b"[a^]", &[b"a", b"^"], &[b"b"]);
        // `[a-]`: the range runs from `a` to `]`, and the class stays open.
        assert_matches(b"[a-]", &[b"]", b"^", b"_", b"`", b"a"], &[b"-", b"b", b"a]"]);
        // The first `]` closes the class.
        assert_matches(b"[]", &[], &[b"]", b"a", b""]);
        assert_matches(b"[^]", &[b"a", b"]"], &[b"", b"ab"]);
        assert_matches(b"[]a]", &[], &[b"]a]", b"a", b"]"]);
        assert_matches(b"[^]a]", &[b"xa]"], &[b"a"]);
    }

    #[test]
    fn an_unclosed_class_runs_to_the_end_of_the_pattern() {
        assert_matches(b"a[bc", &[b"ab", b"ac"], &[b"a", b"abc", b"a["]);
        assert_matches(b"a[^bc", &[b"ad"], &[b"ab", b"a"]);
        assert_matches(b"a[", &[], &[b"a", b"a[", b"ab"]);
        assert_matches(b"a[^", &[b"a[", b"ab", b"a^"], &[b"a", b"abc"]);
        assert_matches(b"[a-", &[b"a", b"-"], &[b"b"]);
        assert_matches(b"[\\", &[b"\\"], &[b"", b"[\\"]);
    }

    #[test]
    fn backslash_escapes_outside_and_inside_classes() {
        assert_matches(b"a\\*b", &[b"a*b"], &[b"axb", b"a\\*b"]);
        assert_matches(b"\\?", &[b"?"], &[b"x"]);
        assert_matches(b"\\[x]", &[b"[x]"], &[b"x"]);
        assert_matches(b"\\\\", &[b"\\"], &[b"\\\\"]);
        assert_matches(b"\\a", &[b"a"], &[b"\\a"]);
        assert_matches(b"[\\]]", &[b"]"], &[b"\\", b"]]"]);
        assert_matches(b"[\\^a]", &[b"^", b"a"], &[b"b"]);
        assert_matches(b"[\\-z]", &[b"-", b"z"], &[b"a"]);
        assert_matches(b"[a\\-z]", &[b"a", b"-", b"z"], &[b"b"]);
        assert_matches(b"[\\\\]", &[b"\\"], &[b"]"]);
    }

    #[test]
    fn a_trailing_lone_backslash_is_a_literal_backslash() {
        assert_matches(b"\\", &[b"\\"], &[b"", b"a"]);
        assert_matches(b"ab\\", &[b"ab\\"], &[b"ab", b"abc"]);
        assert_matches(b"*\\", &[b"x\\", b"\\"], &[b"x"]);
    }

    #[test]
    fn nocase_folds_ascii_letters_only() {
        assert!(matches_nocase(b"USER:*", b"user:1"));
        assert!(matches_nocase(b"u?ER", b"User"));
        assert!(matches_nocase(b"[A-C]x", b"bX"));
        assert!(matches_nocase(b"[abc]", b"B"));
        assert!(matches_nocase(b"\\A", b"a"));
        assert!(!matches(b"USER:*", b"user:1"));
        assert!(!matches_nocase(b"\xc9", b"\xe9"));
        assert!(!matches_nocase(b"@", b"`"));
    }

    #[test]
    fn nocase_quirks_redis_has() {
        // An escaped byte in a class compares exactly.
        assert!(!matches_nocase(b"[\\A]", b"a"));
        assert!(matches_nocase(b"[\\A]", b"A"));
        // Ranges fold end by end after ordering: `[A-z]` loses `[\]^_``
        // and `[a-Z]` (from `Z` to `a`, folded to `z`..`a`) matches nothing.
        assert!(matches_nocase(b"[A-z]", b"q"));
        assert!(matches_nocase(b"[A-z]", b"Q"));
        assert!(!matches_nocase(b"[A-z]", b"_"));
        assert!(matches(b"[A-z]", b"_"));
        assert!(!matches_nocase(b"[a-Z]", b"a"));
        assert!(!matches_nocase(b"[a-Z]", b"_"));
        assert!(matches(b"[a-Z]", b"_"));
    }

    #[test]
    fn nocase_ranges_fold_signed_chars_to_unsigned_as_glibc_does() {
        if CHAR_IS_SIGNED {
            // Ordered as -2..=1, then folded to 254..=1: empty.
            assert!(matches(b"[\x01-\xfe]", b"\x00"));
            assert!(!matches_nocase(b"[\x01-\xfe]", b"\x00"));
            assert!(!matches_nocase(b"[\x01-\xfe]", b"\xfe"));
            // -1 is EOF, which folds to itself: -1..=1 either way.
            assert!(matches_nocase(b"[\x01-\xff]", b"\x00"));
            assert!(matches_nocase(b"[\x01-\xff]", b"\xff"));
            assert!(matches_nocase(b"[o-\xff]", b"e"));
            // Ordered as -23..=116, then folded to 233..=116: empty.
            assert!(matches(b"[t-\xe9]", b"n"));
            assert!(!matches_nocase(b"[t-\xe9]", b"n"));
            // -128..=-1 folds to 128..=-1, and -128..=-2 to 128..=254.
            assert!(matches(b"[\x80-\xff]", b"\xe9"));
            assert!(!matches_nocase(b"[\x80-\xff]", b"\xe9"));
        }
        assert!(matches_nocase(b"[\x80-\xfe]", b"\xe9"));
        assert!(!matches_nocase(b"[\x80-\xfe]", b"e"));
    }

    #[test]
    fn ranges_compare_as_c_chars_on_this_platform() {
        if CHAR_IS_SIGNED {
            // -1..=1
            assert_matches(b"[\x01-\xff]", &[b"\x00", b"\x01", b"\xff"], &[b"a", b"\x80", b"\xfe"]);
            assert_matches(b"[\x80-\xff]", &[b"\x80", b"\xc0", b"\xff"], &[b"a"]);
        } else {
            assert_matches(b"[\x01-\xff]", &[b"\x01", b"a", b"\x80", b"\xff"], &[b"\x00"]);
        }
    }

    #[test]
    fn binary_bytes_are_ordinary() {
        assert_matches(b"a\x00*", &[b"a\x00", b"a\x00b"], &[b"a", b"ab"]);
        assert_matches(b"[\x00]", &[b"\x00"], &[b"0"]);
    }

    #[test]
    fn only_a_thousand_stars_are_followed() {
        let text = vec![b'a'; 1100];
        let stars = |n: usize| b"*a".repeat(n);
        assert!(matches(&stars(1000), &text));
        assert!(!matches(&stars(1001), &text));
        // A star at the very end matches without being followed.
        let mut ends_in_star = stars(1000);
        ends_in_star.push(b'*');
        assert!(matches(&ends_in_star, &text));
        // Runs of stars count once.
        assert!(matches(&b"**a".repeat(1000), &text));
    }

    #[test]
    fn pathological_patterns_still_answer_correctly() {
        let mut text = vec![b'a'; 5000];
        let pattern = b"*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        assert!(!matches(pattern, &text));
        text.push(b'b');
        assert!(matches(pattern, &text));
        assert!(!matches(b"a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*c", &vec![b'a'; 5000]));
        assert!(matches_nocase(b"*A*A*A*A*A*A*A*A*A*A*B", &text));
    }

    #[test]
    fn a_later_star_fixes_earlier_ones() {
        // After `*b` matched "ab", the tail `*d` is tried from there on only.
        assert_matches(b"*b*d", &[b"abcd", b"abbd", b"bd", b"xbxbxd"], &[b"abc", b"adb"]);
        assert_matches(b"*a?", &[b"ab", b"aab", b"xaxay"], &[b"a", b"xa"]);
        assert_matches(b"*[ab]c*d", &[b"acxd", b"bcd", b"aacbcd"], &[b"acx", b"cd"]);
    }

    #[test]
    fn literal_prefix_stops_at_the_first_special() {
        assert_eq!(literal_prefix(b"user:*"), (b"user:".to_vec(), false));
        assert_eq!(literal_prefix(b"user:?x"), (b"user:".to_vec(), false));
        assert_eq!(literal_prefix(b"a[bc]"), (b"a".to_vec(), false));
        assert_eq!(literal_prefix(b"*"), (Vec::new(), false));
        assert_eq!(literal_prefix(b"user:1"), (b"user:1".to_vec(), true));
        assert_eq!(literal_prefix(b""), (Vec::new(), true));
        assert_eq!(literal_prefix(b"a\\*b*"), (b"a*b".to_vec(), false));
        assert_eq!(literal_prefix(b"a\\*b"), (b"a*b".to_vec(), true));
        assert_eq!(literal_prefix(b"\\\\x"), (b"\\x".to_vec(), true));
        // `]`, `^` and `-` are special only inside a class.
        assert_eq!(literal_prefix(b"a]^-b"), (b"a]^-b".to_vec(), true));
        // A trailing lone backslash is a literal backslash.
        assert_eq!(literal_prefix(b"ab\\"), (b"ab\\".to_vec(), true));
    }

    #[test]
    fn escape_marks_each_special_byte() {
        assert_eq!(escape(b"v2:"), b"v2:");
        assert_eq!(escape(b"*?[]\\"), b"\\*\\?\\[\\]\\\\");
        assert_eq!(escape(b"a-^b"), b"a-^b");
        assert_eq!(escape(b""), b"");
    }

    /// Strings one edit away from `s`, and its prefixes and extensions.
    fn near(s: &[u8]) -> Vec<Vec<u8>> {
        let mut near = vec![Vec::new(), b"*".to_vec(), b"\\".to_vec()];
        for at in 0..=s.len() {
            near.push(s[..at].to_vec());
            for extra in [b'a', b'*', b'\\', b'[', b']', b'?', 0x00, 0xff] {
                let mut inserted = s.to_vec();
                inserted.insert(at, extra);
                near.push(inserted);
                if at < s.len() {
                    let mut replaced = s.to_vec();
                    replaced[at] = extra;
                    near.push(replaced);
                }
            }
            if at < s.len() {
                let mut removed = s.to_vec();
                removed.remove(at);
                near.push(removed);
                let mut flipped = s.to_vec();
                flipped[at] ^= 0x20;
                near.push(flipped);
            }
        }
        near.retain(|other| other.as_slice() != s);
        near
    }

    fn glob_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            3 => prop::sample::select(b"*?[]\\^-".to_vec()),
            3 => prop::sample::select(b"abAB:01".to_vec()),
            1 => any::<u8>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn an_escaped_literal_matches_exactly_itself(literal in prop::collection::vec(glob_byte(), 0..12)) {
            let pattern = escape(&literal);
            prop_assert!(matches(&pattern, &literal));
            prop_assert_eq!(literal_prefix(&pattern), (literal.clone(), true));
            for other in near(&literal) {
                prop_assert!(!matches(&pattern, &other), "{:?} matched {:?}", pattern, other);
            }
        }

        #[test]
        fn an_escaped_prefix_then_a_pattern_matches_what_the_pattern_matches(
            prefix in prop::collection::vec(glob_byte(), 0..6),
            pattern in prop::collection::vec(glob_byte(), 0..8),
            key in prop::collection::vec(glob_byte(), 1..8),
        ) {
            let mut prefixed = escape(&prefix);
            prefixed.extend_from_slice(&pattern);
            let stored = [&prefix[..], &key[..]].concat();
            prop_assert_eq!(matches(&prefixed, &stored), matches(&pattern, &key));
            prop_assert_eq!(matches_nocase(&prefixed, &stored), matches_nocase(&pattern, &key));
        }

        #[test]
        fn every_match_starts_with_the_literal_prefix(
            pattern in prop::collection::vec(glob_byte(), 0..8),
            tail in prop::collection::vec(glob_byte(), 0..6),
        ) {
            let (prefix, exact) = literal_prefix(&pattern);
            for string in [tail.clone(), [&prefix[..], &tail[..]].concat()] {
                if matches(&pattern, &string) {
                    prop_assert!(string.starts_with(&prefix));
                    prop_assert!(!exact || string == prefix);
                }
            }
            if exact {
                prop_assert!(matches(&pattern, &prefix));
            }
        }
    }
}
