//! Space-Saving heavy hitters (Metwally, Agrawal, El Abbadi, 2005): at
//! most `capacity` keys are tracked whatever the key space; a key not
//! tracked takes the place of the least counted one, inheriting its count
//! as its possible over-count (`error`). Every key seen more than
//! `total / capacity` times is tracked, and for a tracked key
//! `count - error <= true count <= count`.
//!
//! The counters sit in a binary min-heap by count, indexed by key, so an
//! access costs one hash look-up and O(log capacity) moves.

use std::collections::HashMap;

use bytes::Bytes;

/// One tracked key.
#[derive(Debug, Clone)]
pub struct Counter<V> {
    pub key: Bytes,
    /// Accesses counted, an over-estimate by at most `error`.
    pub count: u64,
    /// The count it inherited when it replaced another key.
    pub error: u64,
    /// What the caller keeps about the key (reset when the key is new).
    pub value: V,
}

/// The most accessed keys, within a fixed number of counters.
#[derive(Debug)]
pub struct TopK<V> {
    capacity: usize,
    /// Key to its place in `heap`.
    index: HashMap<Bytes, usize>,
    /// A min-heap by count.
    heap: Vec<Counter<V>>,
}

impl<V: Default> TopK<V> {
    pub fn new(capacity: usize) -> TopK<V> {
        let capacity = capacity.max(1);
        TopK {
            capacity,
            index: HashMap::with_capacity(capacity),
            heap: Vec::with_capacity(capacity),
        }
    }

    /// Counts one access of `key`; its counter (new, or the least counted
    /// one's, taken over, with a fresh value).
    pub fn record(&mut self, key: &[u8]) -> &mut Counter<V> {
        let at = match self.index.get(key) {
            Some(&at) => {
                self.heap[at].count += 1;
                self.sift_down(at)
            }
            None if self.heap.len() < self.capacity => {
                let key = Bytes::copy_from_slice(key);
                self.heap.push(Counter {
                    key: key.clone(),
                    count: 1,
                    error: 0,
                    value: V::default(),
                });
                let at = self.heap.len() - 1;
                self.index.insert(key, at);
                self.sift_up(at)
            }
            None => {
                // Replace the least counted key: the root.
                let key = Bytes::copy_from_slice(key);
                let root = &mut self.heap[0];
                self.index.remove(&root.key);
                let inherited = root.count;
                *root = Counter {
                    key: key.clone(),
                    count: inherited + 1,
                    error: inherited,
                    value: V::default(),
                };
                self.index.insert(key, 0);
                self.sift_down(0)
            }
        };
        &mut self.heap[at]
    }

    /// Puts back a counter (from a snapshot), as if it had been counted;
    /// ignored when the structure is full or already holds the key.
    pub fn restore(&mut self, counter: Counter<V>) {
        if self.heap.len() >= self.capacity || self.index.contains_key(&counter.key) {
            return;
        }
        self.index.insert(counter.key.clone(), self.heap.len());
        self.heap.push(counter);
        let at = self.heap.len() - 1;
        self.sift_up(at);
    }

    pub fn get(&self, key: &[u8]) -> Option<&Counter<V>> {
        self.index.get(key).map(|&at| &self.heap[at])
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Every tracked key, in no order.
    pub fn iter(&self) -> impl Iterator<Item = &Counter<V>> {
        self.heap.iter()
    }

    /// The `n` most counted keys, most counted first.
    pub fn top(&self, n: usize) -> Vec<&Counter<V>> {
        let mut all: Vec<&Counter<V>> = self.heap.iter().collect();
        all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }

    /// Moves the counter at `at` towards the root while it counts less
    /// than its parent; answers where it ends.
    fn sift_up(&mut self, mut at: usize) -> usize {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.heap[parent].count <= self.heap[at].count {
                break;
            }
            self.swap(at, parent);
            at = parent;
        }
        at
    }

    /// Moves the counter at `at` away from the root while a child counts
    /// less; answers where it ends.
    fn sift_down(&mut self, mut at: usize) -> usize {
        loop {
            let (left, right) = (2 * at + 1, 2 * at + 2);
            let mut least = at;
            if left < self.heap.len() && self.heap[left].count < self.heap[least].count {
                least = left;
            }
            if right < self.heap.len() && self.heap[right].count < self.heap[least].count {
                least = right;
            }
            if least == at {
                return at;
            }
            self.swap(at, least);
            at = least;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        *self.index.get_mut(&self.heap[a].key).expect("indexed") = a;
        *self.index.get_mut(&self.heap[b].key).expect("indexed") = b;
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
                top.record(key.as_bytes());
            }
        }
        let counts: Vec<(&[u8], u64, u64)> = top.top(3).iter().map(|c| (&c.key[..], c.count, c.error)).collect();
        assert_eq!(counts, vec![(&b"c"[..], 7, 0), (&b"a"[..], 5, 0), (&b"b"[..], 3, 0)]);
    }

    #[test]
    fn a_newcomer_takes_the_least_counted_place_and_its_count() {
        let mut top: TopK<u32> = TopK::new(2);
        for key in ["a", "a", "a", "b", "b"] {
            top.record(key.as_bytes());
        }
        top.record(b"a").value = 9;
        let c = top.record(b"c");
        assert_eq!((c.count, c.error, c.value), (3, 2, 0), "b's count, plus one");
        assert!(top.get(b"b").is_none());
        assert_eq!(top.get(b"a").map(|a| (a.count, a.value)), Some((4, 9)));
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
            top.record(key.to_string().as_bytes());
        }
        assert_eq!(top.len(), capacity);
        assert!(truth.len() > 100_000, "{} distinct keys", truth.len());
        for hot in 0..20u64 {
            let counter = top.get(hot.to_string().as_bytes()).expect("a hot key is tracked");
            let real = truth[&hot];
            assert!(
                counter.count - counter.error <= real && real <= counter.count,
                "{hot}: {counter:?} vs {real}"
            );
        }
        // Every key above total / capacity is tracked.
        for (key, real) in &truth {
            if *real > total / capacity as u64 {
                assert!(top.get(key.to_string().as_bytes()).is_some(), "{key} ({real})");
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
