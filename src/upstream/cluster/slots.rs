//! Hash slots and the slot map: which master serves each of Redis
//! Cluster's 16384 slots, as `CLUSTER SHARDS` (Redis 7) or `CLUSTER SLOTS`
//! (older servers) report it.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame as Frame;

/// Slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// The slot of `key`: CRC16 (XMODEM) of the key, or of its hash tag (what
/// lies between the first `{` and the first `}` after it, when that is not
/// empty), modulo 16384, as Redis's `keyHashSlot`.
pub fn key_slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&byte| byte == b'{')
        .and_then(|open| {
            let tag = &key[open + 1..];
            let close = tag.iter().position(|&byte| byte == b'}')?;
            (close > 0).then(|| &tag[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS as u16
}

/// A master node, by the address clients reach it at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub host: String,
    pub port: u16,
}

impl Node {
    /// `host:port` as Redis writes it in MOVED and ASK.
    pub fn parse(text: &str) -> Option<Node> {
        let (host, port) = text.rsplit_once(':')?;
        Some(Node {
            host: host.trim_start_matches('[').trim_end_matches(']').to_string(),
            port: port.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Which master serves each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// Per slot, an index into `masters`; [`UNASSIGNED`] when none serves it.
    owners: Vec<u16>,
    /// Sorted, so two maps of the same assignment compare equal.
    masters: Vec<Node>,
}

/// A slot no master serves.
const UNASSIGNED: u16 = u16::MAX;

impl SlotMap {
    /// A map in which no slot is served (before the first discovery).
    pub fn empty() -> SlotMap {
        SlotMap {
            owners: vec![UNASSIGNED; SLOTS],
            masters: Vec::new(),
        }
    }

    /// From (first slot, last slot, master) ranges.
    pub fn from_ranges(ranges: &[(u16, u16, Node)]) -> SlotMap {
        let mut masters: Vec<Node> = ranges.iter().map(|(_, _, node)| node.clone()).collect();
        masters.sort();
        masters.dedup();
        let mut owners = vec![UNASSIGNED; SLOTS];
        for (first, last, node) in ranges {
            let index = masters.binary_search(node).unwrap_or(0) as u16;
            let last = (*last as usize).min(SLOTS - 1);
            if let Some(range) = owners.get_mut(*first as usize..=last) {
                range.fill(index);
            }
        }
        SlotMap { owners, masters }
    }

    /// The master serving `slot`, if any.
    pub fn owner(&self, slot: u16) -> Option<&Node> {
        self.masters.get(*self.owners.get(slot as usize)? as usize)
    }

    /// The master index serving `slot` (an index into [`Self::masters`]).
    pub fn owner_index(&self, slot: u16) -> Option<usize> {
        let index = *self.owners.get(slot as usize)?;
        (index != UNASSIGNED).then_some(index as usize)
    }

    /// Every master, sorted by address.
    pub fn masters(&self) -> &[Node] {
        &self.masters
    }

    /// Whether every slot is served.
    pub fn is_complete(&self) -> bool {
        !self.masters.is_empty() && self.owners.iter().all(|&owner| owner != UNASSIGNED)
    }

    /// This map with `slot` served by `node` (a MOVED redirect).
    pub fn with_moved(&self, slot: u16, node: &Node) -> SlotMap {
        let mut masters = self.masters.clone();
        if !masters.contains(node) {
            masters.push(node.clone());
            masters.sort();
        }
        let mut owners: Vec<u16> = self
            .owners
            .iter()
            .map(|&owner| match self.masters.get(owner as usize) {
                Some(old) => masters.binary_search(old).unwrap_or(0) as u16,
                None => UNASSIGNED,
            })
            .collect();
        owners[slot as usize] = masters.binary_search(node).unwrap_or(0) as u16;
        // A master left with no slot is no master of this map.
        let mut map = SlotMap { owners, masters };
        map.drop_idle_masters();
        map
    }

    fn drop_idle_masters(&mut self) {
        let mut used = vec![false; self.masters.len()];
        for &owner in &self.owners {
            if let Some(used) = used.get_mut(owner as usize) {
                *used = true;
            }
        }
        if used.iter().all(|&used| used) {
            return;
        }
        let kept: Vec<Node> = self
            .masters
            .iter()
            .zip(&used)
            .filter(|(_, used)| **used)
            .map(|(node, _)| node.clone())
            .collect();
        for owner in &mut self.owners {
            if let Some(node) = self.masters.get(*owner as usize) {
                *owner = kept.binary_search(node).unwrap_or(0) as u16;
            }
        }
        self.masters = kept;
    }

    /// Parses a `CLUSTER SHARDS` reply (RESP2). `tls`: the masters are
    /// reached at their `tls-port`. A shard without an online master, or
    /// without slots, is left out.
    pub fn from_shards(reply: &Bytes, tls: bool) -> Result<SlotMap, String> {
        let shards = decode_array(reply)?;
        let mut ranges = Vec::new();
        for shard in shards {
            let fields = as_array(&shard).ok_or("a shard is not an array")?;
            let slots = field(fields, "slots").and_then(as_array).unwrap_or(&[]);
            let nodes = field(fields, "nodes").and_then(as_array).unwrap_or(&[]);
            let master = nodes.iter().filter_map(as_array).find(|node| {
                field(node, "role").and_then(as_text).as_deref() == Some("master")
                    && field(node, "health").and_then(as_text).as_deref() != Some("fail")
            });
            let Some(master) = master else {
                continue;
            };
            let host = ["endpoint", "ip", "hostname"]
                .iter()
                .filter_map(|name| field(master, name).and_then(as_text))
                .find(|host| !host.is_empty() && host != "?")
                .ok_or("a master has no address")?;
            let port = field(master, if tls { "tls-port" } else { "port" })
                .and_then(as_integer)
                .ok_or("a master has no port")?;
            let node = Node {
                host,
                port: port as u16,
            };
            for pair in slots.chunks(2) {
                let (Some(first), Some(last)) = (pair.first().and_then(as_integer), pair.get(1).and_then(as_integer))
                else {
                    return Err("a slot range is not two numbers".into());
                };
                ranges.push((first as u16, last as u16, node.clone()));
            }
        }
        Ok(SlotMap::from_ranges(&ranges))
    }

    /// Parses a `CLUSTER SLOTS` reply (RESP2): per range, its first and
    /// last slot and then its master (address, port, id).
    pub fn from_slots(reply: &Bytes) -> Result<SlotMap, String> {
        let ranges = decode_array(reply)?;
        let mut parsed = Vec::new();
        for range in ranges {
            let range = as_array(&range).ok_or("a slot range is not an array")?;
            let (Some(first), Some(last), Some(master)) = (
                range.first().and_then(as_integer),
                range.get(1).and_then(as_integer),
                range.get(2).and_then(as_array),
            ) else {
                return Err("a slot range lacks its slots or master".into());
            };
            let host = master.first().and_then(as_text).ok_or("a master has no address")?;
            let port = master.get(1).and_then(as_integer).ok_or("a master has no port")?;
            parsed.push((
                first as u16,
                last as u16,
                Node {
                    host,
                    port: port as u16,
                },
            ));
        }
        Ok(SlotMap::from_ranges(&parsed))
    }
}

fn decode_array(reply: &Bytes) -> Result<Vec<Frame>, String> {
    match redis_protocol::resp2::decode::decode_bytes(reply) {
        Ok(Some((Frame::Array(items), _))) => Ok(items),
        Ok(Some((Frame::Error(error), _))) => Err(error.to_string()),
        Ok(_) => Err("not an array".into()),
        Err(error) => Err(error.to_string()),
    }
}

fn as_array(frame: &Frame) -> Option<&[Frame]> {
    match frame {
        Frame::Array(items) => Some(items),
        _ => None,
    }
}

fn as_text(frame: &Frame) -> Option<String> {
    match frame {
        Frame::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Frame::SimpleString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    }
}

fn as_integer(frame: &Frame) -> Option<i64> {
    match frame {
        Frame::Integer(number) => Some(*number),
        other => as_text(other)?.parse().ok(),
    }
}

/// The value after `name` in a flat field/value array.
fn field<'a>(fields: &'a [Frame], name: &str) -> Option<&'a Frame> {
    fields
        .chunks(2)
        .find(|pair| pair.first().and_then(as_text).as_deref() == Some(name))
        .and_then(|pair| pair.get(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_redis_keyhashslot() {
        // Values from CLUSTER KEYSLOT on Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"{user1}:a"), key_slot(b"user1"));
        assert_eq!(key_slot(b"{user1}:a"), key_slot(b"{user1}:b"));
        assert_eq!(key_slot(b"v2:{user1}:a"), key_slot(b"user1"));
        // An empty tag hashes the whole key; only the first tag counts.
        assert_eq!(
            key_slot(b"{}x"),
            crc16::State::<crc16::XMODEM>::calculate(b"{}x") % 16384
        );
        assert_eq!(key_slot(b"a{b}c{d}"), key_slot(b"b"));
        assert_eq!(key_slot(b"{"), crc16::State::<crc16::XMODEM>::calculate(b"{") % 16384);
    }

    fn node(port: u16) -> Node {
        Node {
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn a_moved_slot_changes_owner_and_drops_a_master_left_without_slots() {
        let map = SlotMap::from_ranges(&[(0, 9000, node(1)), (9001, 16383, node(2))]);
        assert!(map.is_complete());
        assert_eq!(map.owner(100), Some(&node(1)));
        let moved = map.with_moved(100, &node(3));
        assert_eq!(moved.owner(100), Some(&node(3)));
        assert_eq!(moved.owner(101), Some(&node(1)));
        assert_eq!(moved.owner(10000), Some(&node(2)));
        assert_eq!(moved.masters().len(), 3);
        let single = SlotMap::from_ranges(&[(0, 0, node(1)), (1, 16383, node(2))]).with_moved(0, &node(2));
        assert_eq!(single.masters(), &[node(2)]);
        assert!(single.is_complete());
    }

    #[test]
    fn cluster_slots_and_shards_replies_parse() {
        let slots = Bytes::from_static(
            b"*2\r\n*3\r\n:0\r\n:8191\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n\
              *4\r\n:8192\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7002\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nid\r\n",
        );
        let map = SlotMap::from_slots(&slots).unwrap();
        assert!(map.is_complete());
        assert_eq!(map.owner(8191), Some(&node(7001)));
        assert_eq!(map.owner(8192), Some(&node(7002)));
        let shards = Bytes::from_static(
            b"*1\r\n*4\r\n$5\r\nslots\r\n*2\r\n:0\r\n:16383\r\n$5\r\nnodes\r\n*1\r\n*10\r\n\
              $2\r\nid\r\n$1\r\nx\r\n$4\r\nport\r\n:7005\r\n$2\r\nip\r\n$9\r\n127.0.0.1\r\n\
              $4\r\nrole\r\n$6\r\nmaster\r\n$6\r\nhealth\r\n$6\r\nonline\r\n",
        );
        let map = SlotMap::from_shards(&shards, false).unwrap();
        assert_eq!(map.owner(16383), Some(&node(7005)));
        assert!(map.is_complete());
    }
}
