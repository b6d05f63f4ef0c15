//! Where each command of a batch goes in a Redis Cluster, and how the
//! replies of a command that went to several nodes become the one reply a
//! single Redis would have sent.
//!
//! A command goes to the master of its keys' slot. A multi-key command
//! whose keys span slots is split by slot where Redis's semantics allow it
//! (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH) and refused with Redis's own
//! CROSSSLOT error otherwise. KEYS, DBSIZE, FLUSHALL, FLUSHDB, RANDOMKEY,
//! SCRIPT and FUNCTION changes go to every master; SCAN walks the masters
//! one after another, the master's index in the cursor's low 14 bits.
//! Everything else without a key goes to the first master.

use bytes::{BufMut, Bytes, BytesMut};

use super::slots::{Node, SlotMap, key_slot};
use crate::keys::table::{KeyKind, KeyTable, Keys};
use crate::protocol::{ReplyLimits, ReplyScanner, encode_array, scan};

/// Redis's reply to a command whose keys are in different slots.
pub const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
/// Bits of a SCAN cursor that name the master being scanned.
const SCAN_NODE_BITS: u32 = 14;

/// A batch laid out over the cluster's masters.
#[derive(Debug, Default)]
pub struct Plan {
    /// One sub-batch per master that has commands, in first-use order.
    pub groups: Vec<Group>,
    /// Per command of the batch, how its reply is made.
    pub commands: Vec<Planned>,
}

/// The commands for one master, in batch order.
#[derive(Debug)]
pub struct Group {
    pub node: Node,
    /// The bytes to send, when they are not the parts' (a whole batch).
    pub whole: Option<Bytes>,
    /// Each command sent, with its slot (None: no key), for a redirect.
    pub parts: Vec<Part>,
}

impl Group {
    /// The bytes this master is sent: its parts, one after another.
    pub fn bytes(&mut self) -> Bytes {
        if let Some(whole) = self.whole.take() {
            return whole;
        }
        if let [only] = self.parts.as_slice() {
            return only.wire.clone();
        }
        let mut bytes = BytesMut::with_capacity(self.parts.iter().map(|part| part.wire.len()).sum());
        for part in &self.parts {
            bytes.extend_from_slice(&part.wire);
        }
        bytes.freeze()
    }
}

#[derive(Debug, Clone)]
pub struct Part {
    pub slot: Option<u16>,
    pub wire: Bytes,
}

/// Where one command's reply comes from.
#[derive(Debug)]
pub enum Planned {
    /// Answered here (CROSSSLOT).
    Local(Bytes),
    /// The reply of one part, as it is.
    One(Piece),
    /// The replies of several parts, merged.
    Merged { merge: Merge, pieces: Vec<Piece> },
}

/// A part: its group and its position there.
#[derive(Debug, Clone, Copy)]
pub struct Piece {
    pub group: usize,
    pub at: usize,
}

/// How split or fanned-out replies become one.
#[derive(Debug)]
pub enum Merge {
    /// MGET: each item of the reply is (piece, item in that piece's array).
    Items(Vec<(usize, usize)>),
    /// DEL, UNLINK, EXISTS, TOUCH, DBSIZE: the integers added.
    Sum,
    /// MSET, FLUSHALL, FLUSHDB, SCRIPT FLUSH: the first reply if all
    /// agree, else the first error.
    Agree,
    /// KEYS: the arrays joined.
    Concat,
    /// RANDOMKEY: the first non-null reply.
    FirstFound,
    /// SCAN on master `node` of `masters`: the cursor made cluster-wide.
    Scan { node: usize, masters: usize },
}

impl Plan {
    /// Lays out `count` commands found in `batch` over `map`'s masters;
    /// None if the batch is not `count` multibulk commands (then it goes
    /// to one master whole).
    pub fn new(batch: &Bytes, count: usize, map: &SlotMap, keys: &KeyTable) -> Option<Plan> {
        let mut plan = Plan::default();
        let mut at = 0;
        for _ in 0..count {
            let (args, end) = scan::multibulk_args_from(batch, at)?;
            let wire = batch.slice(at..end);
            at = end;
            plan.add(wire, &args, map, keys);
        }
        if at != batch.len() {
            return None;
        }
        if plan.is_direct() {
            // Every command to one master, in order: the batch as it came.
            plan.groups[0].whole = Some(batch.clone());
        }
        Some(plan)
    }

    /// Whether the batch goes whole to one master, each reply as it is.
    pub fn is_direct(&self) -> bool {
        self.groups.len() == 1
            && self
                .commands
                .iter()
                .enumerate()
                .all(|(index, planned)| matches!(planned, Planned::One(piece) if piece.at == index))
    }

    /// The whole batch for one master, as it is.
    pub fn whole(batch: Bytes, count: usize, node: Node) -> Plan {
        Plan {
            groups: vec![Group {
                node,
                whole: Some(batch),
                parts: vec![
                    Part {
                        slot: None,
                        wire: Bytes::new(),
                    };
                    count
                ],
            }],
            commands: (0..count).map(|at| Planned::One(Piece { group: 0, at })).collect(),
        }
    }

    fn push(&mut self, node: &Node, slot: Option<u16>, wire: Bytes) -> Piece {
        let group = match self.groups.iter().position(|group| &group.node == node) {
            Some(group) => group,
            None => {
                self.groups.push(Group {
                    node: node.clone(),
                    whole: None,
                    parts: Vec::new(),
                });
                self.groups.len() - 1
            }
        };
        let group_ref = &mut self.groups[group];
        group_ref.parts.push(Part { slot, wire });
        Piece {
            group,
            at: group_ref.parts.len() - 1,
        }
    }

    fn add(&mut self, wire: Bytes, args: &[Bytes], map: &SlotMap, keys: &KeyTable) {
        let Some(default) = map.masters().first().cloned() else {
            return;
        };
        let names = key_positions(args, keys);
        if names.is_empty() {
            return self.add_keyless(wire, args, map, &default);
        }
        let first = key_slot(&args[names[0]]);
        if names.iter().all(|&index| key_slot(&args[index]) == first) {
            let node = map.owner(first).unwrap_or(&default).clone();
            let piece = self.push(&node, Some(first), wire);
            self.commands.push(Planned::One(piece));
            return;
        }
        let name = &args[0];
        let is = |upper: &str| name.eq_ignore_ascii_case(upper.as_bytes());
        let (step, merge_items) = if is("MGET") {
            (1, true)
        } else if is("MSET") {
            (2, false)
        } else if is("DEL") || is("UNLINK") || is("EXISTS") || is("TOUCH") {
            (1, false)
        } else {
            self.commands.push(Planned::Local(Bytes::from_static(CROSSSLOT)));
            return;
        };
        if !(args.len() - 1).is_multiple_of(step) {
            // MSET with a key and no value: Redis Cluster answers CROSSSLOT
            // (its arity check passes, the pair check comes later), and
            // nothing is set.
            self.commands.push(Planned::Local(Bytes::from_static(CROSSSLOT)));
            return;
        }
        // Arguments after the name, `step` at a time, grouped by slot in
        // the order slots first appear.
        let mut by_slot: Vec<(u16, Vec<Bytes>, Vec<usize>)> = Vec::new();
        for (position, chunk) in args[1..].chunks(step).enumerate() {
            let slot = key_slot(&chunk[0]);
            let entry = match by_slot.iter().position(|(known, _, _)| *known == slot) {
                Some(entry) => entry,
                None => {
                    by_slot.push((slot, vec![name.clone()], Vec::new()));
                    by_slot.len() - 1
                }
            };
            by_slot[entry].1.extend(chunk.iter().cloned());
            by_slot[entry].2.push(position);
        }
        let mut order = vec![(0, 0); (args.len() - 1) / step];
        let mut pieces = Vec::with_capacity(by_slot.len());
        for (piece_index, (slot, sub_args, positions)) in by_slot.into_iter().enumerate() {
            let node = map.owner(slot).unwrap_or(&default).clone();
            let mut sub = BytesMut::new();
            encode_array(&mut sub, &sub_args);
            pieces.push(self.push(&node, Some(slot), sub.freeze()));
            for (item, position) in positions.into_iter().enumerate() {
                order[position] = (piece_index, item);
            }
        }
        let merge = if merge_items {
            Merge::Items(order)
        } else if step == 2 {
            Merge::Agree
        } else {
            Merge::Sum
        };
        self.commands.push(Planned::Merged { merge, pieces });
    }

    fn add_keyless(&mut self, wire: Bytes, args: &[Bytes], map: &SlotMap, default: &Node) {
        let name = &args[0];
        let is = |upper: &str| name.eq_ignore_ascii_case(upper.as_bytes());
        let sub_is = |upper: &str| {
            args.get(1)
                .is_some_and(|sub| sub.eq_ignore_ascii_case(upper.as_bytes()))
        };
        let fan_out = if is("KEYS") {
            Some(Merge::Concat)
        } else if is("DBSIZE") {
            Some(Merge::Sum)
        } else if is("FLUSHALL") || is("FLUSHDB") {
            Some(Merge::Agree)
        } else if is("RANDOMKEY") {
            Some(Merge::FirstFound)
        } else if (is("SCRIPT") && (sub_is("LOAD") || sub_is("FLUSH")))
            || (is("FUNCTION") && (sub_is("LOAD") || sub_is("DELETE") || sub_is("FLUSH") || sub_is("RESTORE")))
        {
            Some(Merge::Agree)
        } else if is("SCAN") && map.masters().len() > 1 {
            if let Some(planned) = self.scan(args, map) {
                self.commands.push(planned);
                return;
            }
            None
        } else {
            None
        };
        match fan_out {
            Some(merge) => {
                let pieces = map
                    .masters()
                    .iter()
                    .map(|node| self.push(node, None, wire.clone()))
                    .collect();
                self.commands.push(Planned::Merged { merge, pieces });
            }
            None => {
                let piece = self.push(default, None, wire);
                self.commands.push(Planned::One(piece));
            }
        }
    }

    /// SCAN with a cluster-wide cursor; None for a cursor Redis would
    /// refuse (it goes to one master as it is, which refuses it).
    fn scan(&mut self, args: &[Bytes], map: &SlotMap) -> Option<Planned> {
        let cursor: u64 = std::str::from_utf8(args.get(1)?).ok()?.parse().ok()?;
        let node = (cursor & ((1 << SCAN_NODE_BITS) - 1)) as usize;
        let target = map.masters().get(node)?.clone();
        let mut sub_args = args.to_vec();
        sub_args[1] = Bytes::from((cursor >> SCAN_NODE_BITS).to_string());
        let mut sub = BytesMut::new();
        encode_array(&mut sub, &sub_args);
        let piece = self.push(&target, None, sub.freeze());
        Some(Planned::Merged {
            merge: Merge::Scan {
                node,
                masters: map.masters().len(),
            },
            pieces: vec![piece],
        })
    }
}

/// Where the keys of `args` are, for routing: the key names of Redis's
/// key specifications, and a shard channel (SSUBSCRIBE, SUNSUBSCRIBE,
/// SPUBLISH), which lives on its slot's master as a key does.
pub fn key_positions(args: &[Bytes], keys: &KeyTable) -> Vec<usize> {
    let name = &args[0];
    if name.eq_ignore_ascii_case(b"SPUBLISH") {
        return if args.len() > 1 { vec![1] } else { Vec::new() };
    }
    if name.eq_ignore_ascii_case(b"SSUBSCRIBE") || name.eq_ignore_ascii_case(b"SUNSUBSCRIBE") {
        return (1..args.len()).collect();
    }
    match keys.keys(args) {
        Keys::At(found) => found
            .iter()
            .filter(|key| key.kind == KeyKind::Name && key.index < args.len())
            .map(|key| key.index)
            .collect(),
        _ => Vec::new(),
    }
}

/// Splits `bytes` into `count` replies; None if it does not hold exactly
/// that many.
pub fn split_replies(bytes: &Bytes, count: usize, limits: ReplyLimits) -> Option<Vec<Bytes>> {
    let mut replies = Vec::with_capacity(count);
    let mut at = 0;
    while at < bytes.len() {
        let mut scanner = ReplyScanner::new(limits);
        let frame = scanner.scan(&bytes[at..]).ok()??;
        replies.push(bytes.slice(at..at + frame.len));
        at += frame.len;
    }
    (replies.len() == count).then_some(replies)
}

/// The items of an array reply (`*n`, or RESP3 `~n`), None for anything else.
fn array_items(reply: &Bytes, limits: ReplyLimits) -> Option<Vec<Bytes>> {
    if !matches!(reply.first(), Some(b'*') | Some(b'~')) {
        return None;
    }
    let header = memchr::memchr(b'\n', reply)? + 1;
    let count: usize = std::str::from_utf8(&reply[1..header - 2]).ok()?.parse().ok()?;
    split_replies(&reply.slice(header..), count, limits)
}

/// The items of every reply, None unless all are arrays.
fn every_array(replies: &[Bytes], limits: ReplyLimits) -> Option<Vec<Vec<Bytes>>> {
    replies.iter().map(|reply| array_items(reply, limits)).collect()
}

fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-') | Some(b'!'))
}

fn is_null(reply: &[u8]) -> bool {
    reply == b"$-1\r\n" || reply == b"_\r\n" || reply == b"*-1\r\n"
}

fn integer(reply: &[u8]) -> Option<i64> {
    std::str::from_utf8(reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?)
        .ok()?
        .parse()
        .ok()
}

/// One reply made of the replies of a command's parts.
pub fn merge(merge: &Merge, replies: Vec<Bytes>, limits: ReplyLimits) -> Bytes {
    if !matches!(merge, Merge::FirstFound)
        && let Some(error) = replies.iter().find(|reply| is_error(reply))
    {
        return error.clone();
    }
    let unexpected = || Bytes::from_static(b"-ERR auracache: a node's reply could not be merged\r\n");
    match merge {
        Merge::Items(order) => {
            let Some(pieces) = every_array(&replies, limits) else {
                return unexpected();
            };
            let mut out = BytesMut::new();
            out.put_slice(format!("*{}\r\n", order.len()).as_bytes());
            for &(piece, item) in order {
                match pieces.get(piece).and_then(|items| items.get(item)) {
                    Some(value) => out.put_slice(value),
                    None => return unexpected(),
                }
            }
            out.freeze()
        }
        Merge::Sum => match replies.iter().map(|reply| integer(reply)).sum::<Option<i64>>() {
            Some(total) => Bytes::from(format!(":{total}\r\n")),
            None => unexpected(),
        },
        Merge::Agree => replies.into_iter().next().unwrap_or_else(unexpected),
        Merge::Concat => {
            let Some(pieces) = every_array(&replies, limits) else {
                return unexpected();
            };
            let total: usize = pieces.iter().map(Vec::len).sum();
            let mut out = BytesMut::new();
            out.put_slice(format!("*{total}\r\n").as_bytes());
            for item in pieces.iter().flatten() {
                out.put_slice(item);
            }
            out.freeze()
        }
        Merge::FirstFound => replies
            .iter()
            .find(|reply| !is_null(reply) && !is_error(reply))
            .or_else(|| replies.iter().find(|reply| !is_error(reply)))
            .or(replies.first())
            .cloned()
            .unwrap_or_else(unexpected),
        Merge::Scan { node, masters } => {
            let Some(reply) = replies.first() else {
                return unexpected();
            };
            let Some(items) = array_items(reply, limits).filter(|items| items.len() == 2) else {
                return unexpected();
            };
            let Some(cursor) = array_items(&items[0], limits)
                .is_none()
                .then(|| bulk_text(&items[0]))
                .flatten()
                .and_then(|text| text.parse::<u64>().ok())
            else {
                return unexpected();
            };
            let next = if cursor == 0 {
                if node + 1 < *masters { (node + 1) as u64 } else { 0 }
            } else if cursor >> (64 - SCAN_NODE_BITS) != 0 {
                return Bytes::from_static(b"-ERR auracache: a node's SCAN cursor is too large to route\r\n");
            } else {
                (cursor << SCAN_NODE_BITS) | *node as u64
            };
            let next = next.to_string();
            let mut out = BytesMut::new();
            out.put_slice(format!("*2\r\n${}\r\n{next}\r\n", next.len()).as_bytes());
            out.put_slice(&items[1]);
            out.freeze()
        }
    }
}

fn bulk_text(reply: &Bytes) -> Option<String> {
    let header = memchr::memchr(b'\n', reply)? + 1;
    if reply.first() != Some(&b'$') {
        return None;
    }
    let body = reply.get(header..reply.len().checked_sub(2)?)?;
    Some(String::from_utf8_lossy(body).into_owned())
}

/// A redirect in a reply: `-MOVED <slot> <host:port>` or `-ASK ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    Moved(u16, Node),
    Ask(Node),
    /// `-TRYAGAIN` (a multi-key command during a migration) or
    /// `-CLUSTERDOWN`: the same command again, a little later.
    Retry,
}

/// What a reply asks of the router, if anything.
pub fn redirect(reply: &[u8]) -> Option<Redirect> {
    if reply.first() != Some(&b'-') {
        return None;
    }
    let line = std::str::from_utf8(reply.get(1..reply.len().checked_sub(2)?)?).ok()?;
    let mut words = line.split(' ');
    match words.next()? {
        "MOVED" => {
            let slot = words.next()?.parse().ok()?;
            Some(Redirect::Moved(slot, Node::parse(words.next()?)?))
        }
        "ASK" => {
            words.next()?;
            Some(Redirect::Ask(Node::parse(words.next()?)?))
        }
        "TRYAGAIN" | "CLUSTERDOWN" => Some(Redirect::Retry),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;

    fn node(port: u16) -> Node {
        Node {
            host: "127.0.0.1".into(),
            port,
        }
    }

    fn three() -> SlotMap {
        SlotMap::from_ranges(&[(0, 5460, node(1)), (5461, 10922, node(2)), (10923, 16383, node(3))])
    }

    fn batch(commands: &[&[&str]]) -> Bytes {
        let mut out = BytesMut::new();
        for args in commands {
            let args: Vec<Bytes> = args.iter().map(|arg| Bytes::copy_from_slice(arg.as_bytes())).collect();
            out.extend_from_slice(Command::from_args(args).wire());
        }
        out.freeze()
    }

    #[test]
    fn single_key_commands_go_to_their_slots_master() {
        let map = three();
        // foo: 12182 (node 3), bar: 5061 (node 1).
        let plan = Plan::new(
            &batch(&[&["GET", "foo"], &["SET", "bar", "1"], &["PING"]]),
            3,
            &map,
            &KeyTable::builtin(),
        )
        .unwrap();
        assert_eq!(plan.groups.len(), 2);
        assert_eq!(plan.groups[0].node, node(3));
        assert_eq!(plan.groups[1].node, node(1));
        assert_eq!(plan.groups[1].parts.len(), 2, "PING goes to the first master");
    }

    #[test]
    fn mget_across_slots_is_split_and_merged_in_key_order() {
        let map = three();
        let plan = Plan::new(&batch(&[&["MGET", "foo", "bar", "foo"]]), 1, &map, &KeyTable::builtin()).unwrap();
        let Planned::Merged { merge, pieces } = &plan.commands[0] else {
            panic!("not split");
        };
        assert_eq!(pieces.len(), 2);
        let replies = vec![
            Bytes::from_static(b"*2\r\n$1\r\nf\r\n$1\r\nf\r\n"),
            Bytes::from_static(b"*1\r\n$-1\r\n"),
        ];
        assert_eq!(&merge_reply(merge, replies)[..], b"*3\r\n$1\r\nf\r\n$-1\r\n$1\r\nf\r\n");
    }

    fn merge_reply(how: &Merge, replies: Vec<Bytes>) -> Bytes {
        merge(how, replies, ReplyLimits::default())
    }

    #[test]
    fn other_cross_slot_commands_are_refused_as_redis_refuses_them() {
        let plan = Plan::new(&batch(&[&["RENAME", "foo", "bar"]]), 1, &three(), &KeyTable::builtin()).unwrap();
        assert!(matches!(&plan.commands[0], Planned::Local(reply) if &reply[..] == CROSSSLOT));
        assert!(plan.groups.is_empty());
    }

    #[test]
    fn mset_with_a_key_and_no_value_across_slots_is_crossslot_and_does_not_panic() {
        // foo and bar are on different masters; bar has no value.
        let plan = Plan::new(
            &batch(&[&["MSET", "foo", "1", "bar"]]),
            1,
            &three(),
            &KeyTable::builtin(),
        )
        .unwrap();
        assert!(matches!(&plan.commands[0], Planned::Local(reply) if &reply[..] == CROSSSLOT));
        assert!(plan.groups.is_empty(), "no part of it is sent");
    }

    #[test]
    fn sums_and_errors_merge() {
        let sum = merge_reply(
            &Merge::Sum,
            vec![Bytes::from_static(b":2\r\n"), Bytes::from_static(b":1\r\n")],
        );
        assert_eq!(&sum[..], b":3\r\n");
        let error = merge_reply(
            &Merge::Agree,
            vec![Bytes::from_static(b"+OK\r\n"), Bytes::from_static(b"-OOM no\r\n")],
        );
        assert_eq!(&error[..], b"-OOM no\r\n");
    }

    #[test]
    fn scan_cursors_walk_every_master() {
        let map = three();
        let plan = Plan::new(&batch(&[&["SCAN", "0"]]), 1, &map, &KeyTable::builtin()).unwrap();
        assert_eq!(plan.groups[0].node, node(1));
        let Planned::Merged { merge: how, .. } = &plan.commands[0] else {
            panic!("not a scan");
        };
        let done = merge_reply(how, vec![Bytes::from_static(b"*2\r\n$1\r\n0\r\n*0\r\n")]);
        assert_eq!(&done[..], b"*2\r\n$1\r\n1\r\n*0\r\n", "the next master, from its start");
        let more = merge_reply(how, vec![Bytes::from_static(b"*2\r\n$2\r\n12\r\n*0\r\n")]);
        assert_eq!(&more[..], format!("*2\r\n$6\r\n{}\r\n*0\r\n", 12 << 14).as_bytes());
        let plan = Plan::new(
            &batch(&[&["SCAN", &(12u64 << 14 | 2).to_string()]]),
            1,
            &map,
            &KeyTable::builtin(),
        )
        .unwrap();
        assert_eq!(plan.groups[0].node, node(3));
        let mut plan = plan;
        assert!(plan.groups[0].bytes().ends_with(b"$2\r\n12\r\n"));
    }

    #[test]
    fn redirects_parse() {
        assert_eq!(
            redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved(3999, node(6381)))
        );
        assert_eq!(
            redirect(b"-ASK 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Ask(node(6381)))
        );
        assert_eq!(
            redirect(b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n"),
            Some(Redirect::Retry)
        );
        assert_eq!(redirect(b"-ERR no\r\n"), None);
        assert_eq!(redirect(b"+OK\r\n"), None);
    }
}
