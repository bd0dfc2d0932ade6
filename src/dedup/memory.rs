//! Drops repeats of an event inside a time window, with bounded memory.
//!
//! Ids are stored as 128-bit keyed hashes, sharded to keep the lock off the hot
//! path. A 64-bit hash would not do: a collision answers "duplicate" for a new
//! event, which is a loss. An id costs 24 bytes in the map and 24 in the expiry
//! queue; with the map's load factor the default million ids take about 80 MiB,
//! reached once that many distinct ids arrived within the window, and flat after.
//!
//! An id is first *reserved* (the request is being made durable) and then
//! *committed*, or *released* when the spool refused it. A second request for a
//! reserved id is told [`Seen::InFlight`] and answered 503, never "duplicate":
//! the first one may still fail. A reservation older than
//! [`super::RESERVATION_TTL`] is forgotten, as Redis forgets its pending keys: one
//! left behind by a bug can hold an id up for seconds, not for the whole window.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// What the window knows of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen (or forgotten): now reserved for the caller.
    New,
    /// Committed before: a repeat.
    Duplicate,
    /// Reserved by a request still in progress.
    InFlight,
}

/// A 128-bit id as two words: 8-byte alignment keeps map buckets at 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Id([u64; 2]);

impl std::hash::Hash for Id {
    /// Ids are already keyed hashes (secret keys, uniformly spread), so the map takes
    /// the first word as its hash (see [`IdHasher`]); the shard is picked by the second.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

#[derive(Debug)]
struct Entry {
    /// [`COMMITTED`], or the second (see [`Slot::at`]) the id was reserved at.
    state: u32,
    /// Identifies this insertion, so an expiry queued for an older one is ignored.
    /// Wrapping is harmless: the queue never holds 2^32 insertions of one shard.
    generation: u32,
}

/// [`Entry::state`] of a committed id. Kept in the same word as a reservation's
/// time so that an entry stays 8 bytes (and a map bucket 24).
const COMMITTED: u32 = u32::MAX;

/// One insertion in expiry order.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Whole seconds since the window's epoch: the window is counted in seconds.
    at: u32,
    generation: u32,
    id: Id,
}

/// Hashes an [`Id`] to its first word instead of running SipHash over it again on
/// every lookup: an event makes several map operations, and the id is a hash already.
#[derive(Debug, Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `Id` is hashed here, through `write_u64`; kept total all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, word: u64) {
        self.0 ^= word;
    }
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<Id, Entry, BuildHasherDefault<IdHasher>>,
    order: VecDeque<Slot>,
    next_generation: u32,
}

/// Opaque handle on a reserved id; pass it back to commit or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u128);

#[derive(Debug)]
pub struct MemoryWindow {
    shards: Vec<Mutex<Shard>>,
    hashers: (RandomState, RandomState),
    window: Duration,
    max_per_shard: usize,
    /// Time zero for [`Slot::at`].
    epoch: Instant,
}

impl MemoryWindow {
    pub fn new(window: Duration, max_ids: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hashers: (RandomState::new(), RandomState::new()),
            window,
            max_per_shard: max_ids.div_ceil(SHARDS).max(1),
            epoch: Instant::now(),
        }
    }

    fn id(key: Key) -> Id {
        Id([(key.0 >> 64) as u64, key.0 as u64])
    }

    fn seconds(&self, at: Instant) -> u32 {
        u32::try_from(at.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX)
    }

    /// The key of an event id.
    pub fn key(&self, source: &str, id: &str) -> Key {
        self.key_in(super::Space::Id, source, id)
    }

    pub fn key_in(&self, space: super::Space, source: &str, id: &str) -> Key {
        // Source names are text: a byte that is never UTF-8 ends them, and tells the
        // spaces apart.
        let separator = match space {
            super::Space::Id => 0xff,
            super::Space::Body => 0xfe,
        };
        let hash = |state: &RandomState| {
            let mut h = state.build_hasher();
            h.write(source.as_bytes());
            h.write_u8(separator);
            h.write(id.as_bytes());
            h.finish()
        };
        Key(((hash(&self.hashers.0) as u128) << 64) | hash(&self.hashers.1) as u128)
    }

    fn shard(&self, key: Key) -> std::sync::MutexGuard<'_, Shard> {
        let shard = &self.shards[(key.0 as usize) % SHARDS];
        // A panic while holding this lock cannot leave the map inconsistent in a way
        // that matters more than refusing all traffic would, so recover the guard.
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks the id up and reserves it when new.
    pub fn check(&self, key: Key) -> Seen {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: Key, now: Instant) -> Seen {
        let mut shard = self.shard(key);
        self.expire(&mut shard, now);
        let second = self.seconds(now);
        let ttl = super::RESERVATION_TTL.as_secs();
        match shard.map.get(&Self::id(key)).map(|e| e.state) {
            Some(COMMITTED) => return Seen::Duplicate,
            Some(at) if u64::from(second.saturating_sub(at)) < ttl => return Seen::InFlight,
            // Reserved too long ago: its request is gone without a word.
            Some(_) | None => {}
        }
        self.insert(&mut shard, key, second.min(COMMITTED - 1), now);
        Seen::New
    }

    /// The event is durable: from now on repeats are duplicates.
    pub fn commit(&self, key: Key) {
        if let Some(e) = self.shard(key).map.get_mut(&Self::id(key)) {
            e.state = COMMITTED;
        }
    }

    /// The event was not accepted: let the provider's retry through.
    pub fn release(&self, key: Key) {
        self.shard(key).map.remove(&Self::id(key));
    }

    /// Remembers an id already durable (spool replay after a restart).
    pub fn remember(&self, key: Key, age: Duration) {
        let now = Instant::now();
        if age >= self.window {
            return;
        }
        let at = now.checked_sub(age).unwrap_or(now);
        let mut shard = self.shard(key);
        if !shard.map.contains_key(&Self::id(key)) {
            self.insert(&mut shard, key, COMMITTED, at);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).map.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn insert(&self, shard: &mut Shard, key: Key, state: u32, at: Instant) {
        while shard.order.len() >= self.max_per_shard {
            let Some(slot) = shard.order.pop_front() else {
                break;
            };
            Self::forget(shard, slot);
        }
        shard.next_generation = shard.next_generation.wrapping_add(1);
        let generation = shard.next_generation;
        let id = Self::id(key);
        shard.map.insert(id, Entry { state, generation });
        let at = self.seconds(at);
        shard.order.push_back(Slot { at, generation, id });
    }

    fn expire(&self, shard: &mut Shard, now: Instant) {
        let now = self.seconds(now) as u64;
        let window = self.window.as_secs();
        while let Some(&slot) = shard.order.front() {
            if now.saturating_sub(slot.at as u64) < window {
                break;
            }
            shard.order.pop_front();
            Self::forget(shard, slot);
        }
    }

    fn forget(shard: &mut Shard, slot: Slot) {
        // Evicting a reserved id at the size bound can only cause a duplicate
        // publish later (allowed), never a loss.
        if shard
            .map
            .get(&slot.id)
            .is_some_and(|e| e.generation == slot.generation)
        {
            shard.map.remove(&slot.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_commit_release() {
        let d = MemoryWindow::new(Duration::from_secs(60), 100);
        let k = d.key("s", "a");
        assert_eq!(d.check(k), Seen::New);
        assert_eq!(d.check(k), Seen::InFlight);
        d.release(k);
        assert_eq!(d.check(k), Seen::New);
        d.commit(k);
        assert_eq!(d.check(k), Seen::Duplicate);
        assert_ne!(d.key("s", "a"), d.key("t", "a"));
        assert_ne!(d.key("s", "ab"), d.key("sa", "b"));
        assert_ne!(
            d.key("s", "a"),
            d.key_in(super::super::Space::Body, "s", "a")
        );
    }

    /// A reservation nobody settles (a bug, a request gone without a word) holds its
    /// id for the reservation TTL, not for the window.
    #[test]
    fn reservations_expire() {
        let d = MemoryWindow::new(Duration::from_secs(3600), 100);
        let k = d.key("s", "a");
        let t0 = Instant::now();
        assert_eq!(d.check_at(k, t0), Seen::New);
        assert_eq!(d.check_at(k, t0 + Duration::from_secs(29)), Seen::InFlight);
        assert_eq!(d.check_at(k, t0 + Duration::from_secs(31)), Seen::New);
        d.commit(k);
        assert_eq!(
            d.check_at(k, t0 + Duration::from_secs(600)),
            Seen::Duplicate
        );
    }

    #[test]
    fn window_expires() {
        let d = MemoryWindow::new(Duration::from_secs(10), 100);
        let k = d.key("s", "a");
        let t0 = Instant::now();
        assert_eq!(d.check_at(k, t0), Seen::New);
        d.commit(k);
        assert_eq!(d.check_at(k, t0 + Duration::from_secs(9)), Seen::Duplicate);
        assert_eq!(d.check_at(k, t0 + Duration::from_secs(11)), Seen::New);
    }

    #[test]
    fn memory_is_bounded() {
        let d = MemoryWindow::new(Duration::from_secs(3600), 1000);
        for i in 0..100_000 {
            let k = d.key("s", &i.to_string());
            assert_eq!(d.check(k), Seen::New);
            d.commit(k);
        }
        assert!(d.len() <= 1000 + SHARDS, "{}", d.len());
        // The newest are still known.
        assert_eq!(d.check(d.key("s", "99999")), Seen::Duplicate);
    }

    #[test]
    fn remembered_ids_are_duplicates_until_they_age_out() {
        let d = MemoryWindow::new(Duration::from_secs(60), 100);
        d.remember(d.key("s", "old"), Duration::from_secs(120));
        d.remember(d.key("s", "young"), Duration::from_secs(1));
        assert_eq!(d.check(d.key("s", "old")), Seen::New);
        assert_eq!(d.check(d.key("s", "young")), Seen::Duplicate);
    }
}
