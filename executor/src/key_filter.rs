//! A Bloom filter of the idempotency keys that have a stored answer, so that a fresh request,
//! the common case, skips the store lookup.
//!
//! No false negatives: the store's writer adds a key before its answer becomes readable (under
//! the overlay's lock, which every lookup takes first), and opening the store adds every stored
//! key. It never forgets a key, so expired answers stay in it until the next start and its false
//! positives grow with the keys seen (about 0.2% after a million, 14% after four million); a false
//! positive costs only the lookup that would have happened anyway.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bits in the filter (2 MiB).
const BITS: u64 = 1 << 24;
/// Bits set per key.
const PROBES: u64 = 4;

/// The filter; shared between the writer (adds) and the request path (asks).
pub(crate) struct KeyFilter {
    words: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl KeyFilter {
    pub(crate) fn new() -> Self {
        Self { words: (0..BITS / 64).map(|_| AtomicU64::new(0)).collect(), hasher: Default::default() }
    }

    /// Records that `key` has a stored answer.
    pub(crate) fn insert(&self, key: &str) {
        for bit in self.bits(key) {
            self.words[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Release);
        }
    }

    /// False only if `key` has no stored answer.
    pub(crate) fn may_contain(&self, key: &str) -> bool {
        self.bits(key).all(|bit| self.words[(bit / 64) as usize].load(Ordering::Acquire) & (1 << (bit % 64)) != 0)
    }

    /// The key's bits, by double hashing one 64-bit hash.
    fn bits(&self, key: &str) -> impl Iterator<Item = u64> {
        let hash = self.hasher.hash_one(key);
        let (first, step) = (hash & 0xffff_ffff, (hash >> 32) | 1);
        (0..PROBES).map(move |i| first.wrapping_add(i.wrapping_mul(step)) % BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn added_keys_are_always_found_and_most_others_are_not() {
        let filter = KeyFilter::new();
        let added: Vec<String> = (0..100_000).map(|i| format!("trace:t-{i}:{i:064x}")).collect();
        for key in &added {
            filter.insert(key);
        }
        assert!(added.iter().all(|key| filter.may_contain(key)), "no false negatives");
        let false_positives = (0..100_000).filter(|i| filter.may_contain(&format!("key:other-{i}"))).count();
        assert!(false_positives < 100, "{false_positives} false positives in 100,000 (expected about 0)");
    }
}
