//! Bounded logs: the one shape behind the journal and every fake's store.
//!
//! A [`Ring`] keeps at most [`Limits::entries`] entries and about [`Limits::bytes`] bytes (each
//! entry's size is an estimate its owner gives: the JSON it holds plus a fixed overhead), drops
//! the oldest first, and counts what it dropped. Every entry gets a cursor (a sequence number,
//! increasing from 1 and never reused, not even after a clear), so a reader can page through
//! with `after` + `limit` and see each entry at most once, in order; what fell off before it
//! was read is counted in [`Page::evicted`], never silently skipped.

use std::collections::VecDeque;

use serde::Serialize;

/// The most entries and (estimated) bytes a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most entries kept.
    pub entries: usize,
    /// The most bytes kept (an estimate: the JSON of each entry plus a fixed overhead). The
    /// process's memory per kept entry was measured at about 5 KB, more than the estimate of a
    /// typical entry, so leave room when sizing this.
    pub bytes: usize,
}

impl Limits {
    /// Limits of `entries` entries and `mib` MiB.
    pub const fn new(entries: usize, mib: usize) -> Self {
        Self { entries, bytes: mib * 1024 * 1024 }
    }
}

/// What every stored entry costs beyond its JSON (allocation headers, indexes, fields): a
/// deliberately rough figure that keeps the byte limit on the safe side.
pub(crate) const ENTRY_OVERHEAD: usize = 256;

/// One page of a bounded store, as the control API answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The entries, oldest first.
    pub items: Vec<T>,
    /// The cursor to pass as `after` for the next page; `None` when this page reached the
    /// newest entry.
    pub next: Option<u64>,
    /// Entries dropped from this store so far (since the stack started).
    pub evicted: u64,
}

/// A bounded FIFO of entries with cursors.
#[derive(Debug)]
pub(crate) struct Ring<T> {
    entries: VecDeque<(u64, usize, T)>,
    last: u64,
    bytes: usize,
    evicted: u64,
    limits: Limits,
}

impl<T> Ring<T> {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            entries: VecDeque::new(),
            last: 0,
            bytes: 0,
            evicted: 0,
            limits: Limits { entries: limits.entries.max(1), bytes: limits.bytes.max(1) },
        }
    }

    /// Appends an entry of about `bytes` bytes; returns its cursor and the entries dropped to
    /// make room (oldest first; the new entry itself is always kept).
    pub(crate) fn push(&mut self, item: T, bytes: usize) -> (u64, Vec<T>) {
        let mut dropped = Vec::new();
        while !self.entries.is_empty()
            && (self.entries.len() >= self.limits.entries || self.bytes + bytes > self.limits.bytes)
        {
            if let Some((_, size, old)) = self.entries.pop_front() {
                self.bytes -= size;
                self.evicted += 1;
                dropped.push(old);
            }
        }
        self.last += 1;
        self.bytes += bytes;
        self.entries.push_back((self.last, bytes, item));
        (self.last, dropped)
    }

    /// Forgets every entry (cursors keep increasing; the eviction count is kept).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Takes over another ring's eviction count and cursors (a store replaced on reset).
    pub(crate) fn carry_evicted(&mut self, old: &Ring<T>) {
        self.evicted = old.evicted;
        self.last = old.last;
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// The kept entries with their cursors, oldest first.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = (u64, &T)> {
        self.entries.iter().map(|(seq, _, item)| (*seq, item))
    }

    /// Mutable access by position among the kept entries (0 = oldest).
    pub(crate) fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.entries.get_mut(index).map(|(_, _, item)| item)
    }

    /// The kept entries after cursor `after` (oldest first) that `keep` selects, at most `limit`
    /// (at least 1) of them, mapped by `view`.
    pub(crate) fn page<V>(
        &self,
        after: u64,
        limit: usize,
        mut keep: impl FnMut(&T) -> bool,
        mut view: impl FnMut(u64, &T) -> V,
    ) -> Page<V> {
        let start = match self.entries.front() {
            Some((first, _, _)) if after >= *first => usize::try_from(after - first + 1).unwrap_or(usize::MAX),
            _ => 0,
        };
        let limit = limit.max(1);
        let mut items = Vec::new();
        let mut last_returned = after;
        let mut next = None;
        for (seq, _, item) in self.entries.iter().skip(start) {
            if !keep(item) {
                continue;
            }
            if items.len() == limit {
                // More match: the next page starts after the last entry returned.
                next = Some(last_returned);
                break;
            }
            last_returned = *seq;
            items.push(view(*seq, item));
        }
        Page { items, next, evicted: self.evicted }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_fall_off_by_count_and_are_counted() {
        let mut ring = Ring::new(Limits { entries: 3, bytes: 1000 });
        for n in 1..=5 {
            ring.push(n, 10);
        }
        assert_eq!(ring.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!(ring.evicted(), 2);
        assert_eq!(ring.bytes(), 30);
    }

    #[test]
    fn the_oldest_fall_off_by_bytes_and_a_huge_entry_is_still_kept() {
        let mut ring = Ring::new(Limits { entries: 100, bytes: 100 });
        ring.push("a", 40);
        ring.push("b", 40);
        let (_, dropped) = ring.push("c", 40);
        assert_eq!(dropped, ["a"]);
        let (_, dropped) = ring.push("huge", 500);
        assert_eq!(dropped, ["b", "c"]);
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.evicted(), 3);
    }

    #[test]
    fn paging_returns_every_kept_entry_once_in_order() {
        let mut ring = Ring::new(Limits { entries: 1000, bytes: 1 << 20 });
        for n in 0..257u32 {
            ring.push(n, 8);
        }
        let (mut seen, mut after, mut pages) = (Vec::new(), 0, 0);
        loop {
            let page = ring.page(after, 10, |n| n % 3 != 0, |_, n| *n);
            pages += 1;
            seen.extend(page.items);
            match page.next {
                Some(cursor) => after = cursor,
                None => break,
            }
        }
        assert_eq!(seen, (0..257).filter(|n| n % 3 != 0).collect::<Vec<_>>());
        assert_eq!(pages, 18, "171 entries in pages of 10");
    }

    #[test]
    fn a_cursor_older_than_the_kept_entries_starts_at_the_oldest_kept() {
        let mut ring = Ring::new(Limits { entries: 2, bytes: 1000 });
        for n in 1..=4 {
            ring.push(n, 1);
        }
        let page = ring.page(1, 10, |_| true, |seq, n| (seq, *n));
        assert_eq!(page.items, [(3, 3), (4, 4)]);
        assert_eq!((page.next, page.evicted), (None, 2));
        ring.clear();
        let (seq, _) = ring.push(9, 1);
        assert_eq!(seq, 5, "cursors are never reused");
    }
}
