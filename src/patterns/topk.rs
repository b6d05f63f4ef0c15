//! Space-Saving heavy hitters (Metwally, Agrawal, El Abbadi, 2005): at
//! most `capacity` keys are tracked whatever the key space; a key not
//! tracked takes the place of the least counted one, inheriting its count
//! as its possible over-count (`error`). Every key seen more than
//! `total / capacity` times is tracked, and for a tracked key
//! `count - error <= true count <= count`.
//!
//! The counters stay where they were first put (a slab); a binary
//! min-heap of their slot numbers, with the counts beside it in a compact
//! array, finds the least counted one. An access costs one hash look-up
//! and O(log capacity) moves of small integers: the index is only touched
//! when a key comes or goes, never as the heap reorders.
//!
//! The index maps a key's 64-bit hash (foldhash, seeded per process) to
//! its slot, so a look-up never reads the key itself, which lives apart
//! and is cold: two keys with the same hash would share a counter (with
//! 100,000 keys tracked, a chance of about 1 in 3 billion).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use bytes::Bytes;

/// One tracked key (of a database).
#[derive(Debug, Clone)]
pub struct Counter<V> {
    pub db: u32,
    pub key: Bytes,
    /// Accesses counted, an over-estimate by at most `error`.
    pub count: u64,
    /// The count it inherited when it replaced another key.
    pub error: u64,
    /// What the caller keeps about the key (recycled when the key is new).
    pub value: V,
}

/// What a counter's value does when its key is replaced by another: start
/// afresh, keeping its allocations where it has any.
pub trait Recycle: Default {
    fn recycle(&mut self) {
        *self = Self::default();
    }
}

impl Recycle for () {}
impl Recycle for u32 {}

/// A hasher for keys that are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64s are hashed here; anything else folds in all the same.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

/// The most accessed keys, within a fixed number of counters.
#[derive(Debug)]
pub struct TopK<V> {
    capacity: usize,
    hasher: quick_cache::DefaultHashBuilder,
    /// A key's hash to its slot.
    index: HashMap<u64, u32, BuildHasherDefault<Prehashed>>,
    /// Bytes of the keys tracked.
    key_bytes: usize,
    /// The counters, by slot.
    slots: Vec<Counter<V>>,
    /// Per slot: its count (the heap's order) and its place in `heap`.
    counts: Vec<u64>,
    place: Vec<u32>,
    /// A min-heap of slots by count.
    heap: Vec<u32>,
}

impl<V: Recycle> TopK<V> {
    pub fn new(capacity: usize) -> TopK<V> {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        TopK {
            capacity,
            hasher: quick_cache::DefaultHashBuilder::default(),
            index: HashMap::with_capacity_and_hasher(capacity, BuildHasherDefault::default()),
            key_bytes: 0,
            slots: Vec::with_capacity(capacity),
            counts: Vec::with_capacity(capacity),
            place: Vec::with_capacity(capacity),
            heap: Vec::with_capacity(capacity),
        }
    }

    /// Counts one access of `key`; its counter (new, or the least counted
    /// one's, taken over, with its value recycled).
    pub fn record(&mut self, db: u32, key: &[u8]) -> &mut Counter<V> {
        let hash = self.hasher.hash_one((db, key));
        let slot = match self.index.get(&hash) {
            Some(&slot) => {
                self.counts[slot as usize] += 1;
                self.sift_down(self.place[slot as usize] as usize);
                slot
            }
            None if self.slots.len() < self.capacity => {
                let key = Bytes::copy_from_slice(key);
                self.push(
                    hash,
                    Counter {
                        db,
                        key,
                        count: 1,
                        error: 0,
                        value: V::default(),
                    },
                )
            }
            None => {
                // Replace the least counted key: the heap's root.
                let slot = self.heap[0];
                let counter = &mut self.slots[slot as usize];
                self.index.remove(&self.hasher.hash_one((counter.db, &counter.key[..])));
                self.key_bytes = self.key_bytes - counter.key.len() + key.len();
                let inherited = self.counts[slot as usize];
                counter.key = Bytes::copy_from_slice(key);
                counter.db = db;
                counter.error = inherited;
                counter.value.recycle();
                self.index.insert(hash, slot);
                self.counts[slot as usize] = inherited + 1;
                self.sift_down(0);
                slot
            }
        };
        let counter = &mut self.slots[slot as usize];
        counter.count = self.counts[slot as usize];
        counter
    }

    /// Puts back a counter (from a snapshot), as if it had been counted;
    /// ignored when the structure is full or already holds the key.
    pub fn restore(&mut self, counter: Counter<V>) {
        let hash = self.hasher.hash_one((counter.db, &counter.key[..]));
        if self.slots.len() >= self.capacity || self.index.contains_key(&hash) {
            return;
        }
        self.push(hash, counter);
    }

    fn push(&mut self, hash: u64, counter: Counter<V>) -> u32 {
        let slot = self.slots.len() as u32;
        self.index.insert(hash, slot);
        self.key_bytes += counter.key.len();
        self.counts.push(counter.count);
        self.slots.push(counter);
        self.place.push(self.heap.len() as u32);
        self.heap.push(slot);
        self.sift_up(self.heap.len() - 1);
        slot
    }

    pub fn get(&self, db: u32, key: &[u8]) -> Option<&Counter<V>> {
        let slot = *self.index.get(&self.hasher.hash_one((db, key)))?;
        let counter = &self.slots[slot as usize];
        (counter.db == db && &counter.key[..] == key).then_some(counter)
    }

    /// Bytes of the keys tracked.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Bytes the structure holds per counter besides its key's bytes and
    /// what its value allocates: the counter, its count, heap place and
    /// heap entry, and its index entry (with the table's spare room).
    pub fn bytes_per_counter() -> usize {
        std::mem::size_of::<Counter<V>>() + 8 + 4 + 4 + (8 + 4 + 1) * 8 / 7
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every tracked key, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Counter<V>> {
        self.slots.iter()
    }

    /// The `n` most counted keys, most counted first.
    pub fn top(&self, n: usize) -> Vec<&Counter<V>> {
        let mut all: Vec<&Counter<V>> = self.slots.iter().collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }

    fn count_at(&self, at: usize) -> u64 {
        self.counts[self.heap[at] as usize]
    }

    /// Moves the slot at heap place `at` towards the root while it counts
    /// less than its parent.
    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.count_at(parent) <= self.count_at(at) {
                break;
            }
            self.swap(at, parent);
            at = parent;
        }
    }

    /// Moves the slot at heap place `at` away from the root while a child
    /// counts less.
    fn sift_down(&mut self, mut at: usize) {
        let len = self.heap.len();
        loop {
            let (left, right) = (2 * at + 1, 2 * at + 2);
            let mut least = at;
            if left < len && self.count_at(left) < self.count_at(least) {
                least = left;
            }
            if right < len && self.count_at(right) < self.count_at(least) {
                least = right;
            }
            if least == at {
                return;
            }
            self.swap(at, least);
            at = least;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.place[self.heap[a] as usize] = a as u32;
        self.place[self.heap[b] as usize] = b as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns::trace::Rng;

    #[test]
    fn counts_are_exact_while_every_key_fits() {
        let mut top: TopK<()> = TopK::new(10);
        for (key, times) in [("a", 5), ("b", 3), ("c", 7)] {
            for _ in 0..times {
                top.record(0, key.as_bytes());
            }
        }
        let counts: Vec<(&[u8], u64, u64)> = top.top(3).iter().map(|c| (&c.key[..], c.count, c.error)).collect();
        assert_eq!(counts, vec![(&b"c"[..], 7, 0), (&b"a"[..], 5, 0), (&b"b"[..], 3, 0)]);
    }

    #[test]
    fn a_newcomer_takes_the_least_counted_place_and_its_count() {
        let mut top: TopK<u32> = TopK::new(2);
        for key in ["a", "a", "a", "b", "b"] {
            top.record(0, key.as_bytes());
        }
        top.record(0, b"a").value = 9;
        let c = top.record(0, b"c");
        assert_eq!((c.count, c.error, c.value), (3, 2, 0), "b's count, plus one");
        assert!(top.get(0, b"b").is_none());
        assert_eq!(top.get(0, b"a").map(|a| (a.count, a.value)), Some((4, 9)));
        assert_eq!(top.len(), 2);
    }

    /// A skewed stream over far more keys than counters: memory stays at
    /// the capacity, the true heavy hitters are all tracked, and every
    /// tracked count brackets the true one.
    #[test]
    fn heavy_hitters_are_kept_within_a_fixed_number_of_counters() {
        let capacity = 1_000;
        let mut top: TopK<()> = TopK::new(capacity);
        let mut truth: HashMap<u64, u64> = HashMap::new();
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        let total = 400_000;
        for _ in 0..total {
            // 20 hot keys get half the accesses; the rest spread over
            // a million keys.
            let key = if rng.next_u64().is_multiple_of(2) {
                rng.next_u64() % 20
            } else {
                1_000 + rng.next_u64() % 1_000_000
            };
            *truth.entry(key).or_insert(0) += 1;
            top.record(0, key.to_string().as_bytes());
        }
        assert_eq!(top.len(), capacity);
        assert!(truth.len() > 100_000, "{} distinct keys", truth.len());
        for hot in 0..20u64 {
            let counter = top.get(0, hot.to_string().as_bytes()).expect("a hot key is tracked");
            let real = truth[&hot];
            assert!(
                counter.count - counter.error <= real && real <= counter.count,
                "{hot}: {counter:?} vs {real}"
            );
        }
        // Every key above total / capacity is tracked.
        for (key, real) in &truth {
            if *real > total / capacity as u64 {
                assert!(top.get(0, key.to_string().as_bytes()).is_some(), "{key} ({real})");
            }
        }
        let top20: Vec<String> = top
            .top(20)
            .iter()
            .map(|c| String::from_utf8_lossy(&c.key).into_owned())
            .collect();
        let mut expected: Vec<String> = (0..20).map(|hot: u64| hot.to_string()).collect();
        let mut got = top20.clone();
        got.sort();
        expected.sort();
        assert_eq!(got, expected, "the top 20 are the hot keys");
    }
}
