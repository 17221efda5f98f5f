//! A hash map split into a fixed number of shards, each behind its own `Arc`: cloning the map
//! (one new generation) copies the shard pointers only, and a change copies the one shard it
//! touches when an older generation still shares it. An update of `n` entries therefore costs
//! O(n × shard size), not O(map size), and the generations readers hold never change.
//!
//! One hash per lookup: the key's hash chooses the shard from bits that neither hashbrown's
//! bucket index (low bits) nor its 7-bit tag (top bits) uses, and the same hash probes the
//! shard's table.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};

/// log2 of the shard count. 1 024 shards: 50 000 entries are ~50 per shard.
const SHARD_BITS: u32 = 10;
const SHARDS: usize = 1 << SHARD_BITS;

/// Average entries per shard from which a bulk load sizes the shard tables up front (16 384
/// entries in all): below it, the few doublings cost little and many shards stay small.
const BULK_PER_SHARD: usize = 16;

type Shard<K, V> = Arc<HashTable<(K, V)>>;

/// See the module documentation.
#[derive(Clone)]
pub(super) struct ShardMap<K, V> {
    hasher: DefaultHashBuilder,
    shards: Box<[Shard<K, V>]>,
    /// The empty table every empty shard points to.
    empty: Shard<K, V>,
    len: usize,
}

impl<K, V> Default for ShardMap<K, V> {
    fn default() -> Self {
        // Every shard starts as the same empty table: an empty map costs one allocation.
        let empty: Shard<K, V> = Arc::new(HashTable::new());
        ShardMap {
            hasher: DefaultHashBuilder::default(),
            shards: (0..SHARDS).map(|_| empty.clone()).collect(),
            empty,
            len: 0,
        }
    }
}

impl<K: std::fmt::Debug, V: std::fmt::Debug> std::fmt::Debug for ShardMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// The shard of a hash: the bits just below the top 7. hashbrown takes a table slot's tag
/// from the top 7 bits and the probe start from the low ones; a shard chosen by the top bits
/// would give every entry of a shard the same tag, so that every probe compared the key of
/// every occupied slot of its group (up to 16) instead of about one.
fn shard_of(hash: u64) -> usize {
    (hash >> (64 - TAG_BITS - SHARD_BITS)) as usize & (SHARDS - 1)
}

/// The hash bits hashbrown keeps in each slot's tag (the top ones).
const TAG_BITS: u32 = 7;

impl<K, V> ShardMap<K, V> {
    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The hash this map gives a key, or anything that hashes like a key (a `&str` for an
    /// `Arc<str>`, a tuple of the fields of a struct key with a derived `Hash`).
    pub(super) fn hash<Q: Hash + ?Sized>(&self, q: &Q) -> u64 {
        self.hasher.hash_one(q)
    }

    /// The value of the entry with this hash whose key satisfies `eq`.
    pub(super) fn find(&self, hash: u64, eq: impl FnMut(&K) -> bool) -> Option<&V> {
        let mut eq = eq;
        self.shards[shard_of(hash)]
            .find(hash, |(k, _)| eq(k))
            .map(|(_, v)| v)
    }

    /// The value under `key`.
    pub(super) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(self.hash(key), |k| k.borrow() == key)
    }

    /// Every entry, in no particular order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards
            .iter()
            .flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    /// Every value, in no particular order.
    pub(super) fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Hash + Eq + Clone, V: Clone> ShardMap<K, V> {
    /// Inserts or replaces; returns the previous value.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let hash = self.hash(&key);
        self.insert_hashed(hash, key, value)
    }

    /// [`insert`](Self::insert) with the key's hash already computed.
    fn insert_hashed(&mut self, hash: u64, key: K, value: V) -> Option<V> {
        let hasher = &self.hasher;
        let shard = Arc::make_mut(&mut self.shards[shard_of(hash)]);
        match shard.entry(hash, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(mut e) => Some(std::mem::replace(&mut e.get_mut().1, value)),
            Entry::Vacant(e) => {
                e.insert((key, value));
                self.len += 1;
                None
            }
        }
    }

    /// Makes room for about `additional` entries spread over the shards, for a bulk load into
    /// an empty map: each shard's table is sized once instead of doubling its way up (every
    /// doubling rehashes the keys it holds). Only for loads of at least [`BULK_PER_SHARD`]
    /// entries per shard on average, and only for 3/4 of that average: the shards' counts
    /// vary around it, and a table reserved larger than its entries need would stay so
    /// (memory) until a removal shrinks it. Does nothing to a map that holds entries: its
    /// shards may be shared with older generations, and a delta touches few of them.
    pub(super) fn reserve_empty(&mut self, additional: usize) {
        let mean = additional / SHARDS;
        if self.len != 0 || mean < BULK_PER_SHARD {
            return;
        }
        let per_shard = mean * 3 / 4;
        let hasher = &self.hasher;
        for shard in self.shards.iter_mut() {
            Arc::make_mut(shard).reserve(per_shard, |(k, _)| hasher.hash_one(k));
        }
    }

    /// Gives back what [`reserve_empty`](Self::reserve_empty) set aside beyond the entries
    /// held (a bulk load whose count was taken before its entries were checked): each shard
    /// shrinks to the smallest table holding its entries. O(map); only for a load that
    /// mostly failed.
    pub(super) fn shrink_to_fit(&mut self) {
        let hasher = &self.hasher;
        for shard in self.shards.iter_mut() {
            if shard.is_empty() {
                *shard = self.empty.clone();
            } else if let Some(table) = Arc::get_mut(shard) {
                // A shard an older generation shares was not reserved: left as it is.
                table.shrink_to_fit(|(k, _)| hasher.hash_one(k));
            }
        }
    }

    /// Buckets allocated over all shards (tests: what a reservation holds).
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.capacity()).sum()
    }

    /// Removes the entry under `key`; returns its value.
    pub(super) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.remove_hashed(self.hash(key), key)
    }

    /// [`remove`](Self::remove) with the key's hash already computed.
    fn remove_hashed<Q>(&mut self, hash: u64, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let index = shard_of(hash);
        // Only copy a shared shard when the key is there.
        self.shards[index].find(hash, |(k, _)| k.borrow() == key)?;
        let shard = Arc::make_mut(&mut self.shards[index]);
        let (_, value) = shard
            .find_entry(hash, |(k, _)| k.borrow() == key)
            .ok()?
            .remove()
            .0;
        self.len -= 1;
        // Give back what a burst of entries grew the shard to, so churn returns to baseline
        // (a no-op when the table is already the smallest that holds its entries; else it
        // costs O(shard), as the copy of a shared shard does).
        shard.shrink_to_fit(|(k, _)| self.hasher.hash_one(k));
        if shard.is_empty() {
            self.shards[index] = self.empty.clone();
        }
        Some(value)
    }

    /// Fills an empty map from `entries`: the items of each key become its value through
    /// `combine`, which is handed them (in no particular order) and may drain them. The
    /// entries are first put in shard order, so each shard's table is sized exactly and built
    /// in one go while it is in cache; inserted one at a time in arrival order, a bulk load
    /// misses the cache on nearly every shard and table it touches.
    pub(super) fn load_grouped<I>(
        &mut self,
        entries: Vec<(K, I)>,
        mut combine: impl FnMut(&mut Vec<I>) -> V,
    ) {
        debug_assert_eq!(self.len, 0, "a bulk load fills an empty map");
        let hashed: Vec<(u64, K, I)> = entries
            .into_iter()
            .map(|(k, i)| (self.hash(&k), k, i))
            .collect();
        // Placed by shard (count, then move each entry once), not sorted: a comparison sort
        // moved every entry some log2(n) times. Each shard's few entries are then sorted by
        // hash while in cache. Every slot is filled: `hash_of` never sees a `None`.
        let mut next = vec![0usize; SHARDS];
        for (hash, _, _) in &hashed {
            next[shard_of(*hash)] += 1;
        }
        let mut start = 0;
        for slot in next.iter_mut() {
            (*slot, start) = (start, start + *slot);
        }
        let mut placed: Vec<Option<(u64, K, I)>> = (0..hashed.len()).map(|_| None).collect();
        for entry in hashed {
            let slot = &mut next[shard_of(entry.0)];
            placed[*slot] = Some(entry);
            *slot += 1;
        }
        let hash_of = |e: &Option<(u64, K, I)>| e.as_ref().map_or(0, |e| e.0);
        let same_shard = |a: &_, b: &_| shard_of(hash_of(a)) == shard_of(hash_of(b));
        for run in placed.chunk_by_mut(same_shard) {
            run.sort_unstable_by_key(hash_of);
        }
        // One table allocation per shard, for its distinct keys (keys that differ with the
        // same hash are counted once: the table then grows for them, correctly).
        let hasher = &self.hasher;
        for run in placed.chunk_by(same_shard) {
            let keys = run.chunk_by(|a, b| hash_of(a) == hash_of(b)).count();
            Arc::make_mut(&mut self.shards[shard_of(hash_of(&run[0]))])
                .reserve(keys, |(k, _)| hasher.hash_one(k));
        }
        // Runs of one hash, split by key (several only on a 64-bit hash collision).
        let mut run: Vec<(K, I)> = Vec::new();
        let mut items: Vec<I> = Vec::new();
        let mut rest = placed.into_iter().flatten().peekable();
        while let Some((hash, key, item)) = rest.next() {
            run.push((key, item));
            if rest.peek().is_some_and(|(next, _, _)| *next == hash) {
                continue;
            }
            while let Some((key, item)) = run.pop() {
                items.push(item);
                let mut i = 0;
                while i < run.len() {
                    if run[i].0 == key {
                        items.push(run.swap_remove(i).1);
                    } else {
                        i += 1;
                    }
                }
                let value = combine(&mut items);
                items.clear();
                self.insert_hashed(hash, key, value);
            }
        }
    }

    /// Replaces the value under `key` by `f(current)`: `None` in or out means absent.
    /// The key is hashed once for the lookup and the change.
    pub(super) fn update(&mut self, key: K, f: impl FnOnce(Option<&V>) -> Option<V>) {
        let hash = self.hash(&key);
        let new = f(self.find(hash, |k| *k == key));
        match new {
            Some(v) => {
                self.insert_hashed(hash, key, v);
            }
            None => {
                self.remove_hashed(hash, &key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_shards_copy_on_write_keeps_older_generations() {
        let mut a: ShardMap<Arc<str>, u32> = ShardMap::default();
        for i in 0..5000 {
            a.insert(format!("k{i}").into(), i);
        }
        let b = a.clone();
        a.insert("k1".into(), 100);
        assert_eq!(a.remove("k2"), Some(2));
        assert_eq!(a.remove("k2"), None);
        assert_eq!((a.get("k1"), b.get("k1")), (Some(&100), Some(&1)));
        assert_eq!((a.get("k2"), b.get("k2")), (None, Some(&2)));
        assert_eq!((a.len(), b.len()), (4999, 5000));
        assert_eq!(a.iter().count(), 4999);
        // Shards the change did not touch are still shared.
        let shared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(
            shared,
            SHARDS - 2 + usize::from(shard_of(a.hash("k1")) == shard_of(a.hash("k2")))
        );
        // Reserving room in a map that holds entries copies no shard.
        let c = a.clone();
        a.reserve_empty(100_000);
        assert!(a
            .shards
            .iter()
            .zip(c.shards.iter())
            .all(|(x, y)| Arc::ptr_eq(x, y)));
    }

    /// The entries of one shard keep distinct table tags (a probe then compares about one
    /// key, not every key of its group).
    #[test]
    fn state_shards_entries_of_a_shard_have_distinct_tags() {
        let mut a: ShardMap<Arc<str>, u32> = ShardMap::default();
        for i in 0..50_000 {
            a.insert(format!("k{i}").into(), i);
        }
        let tag = |k: &Arc<str>| a.hash(k) >> (64 - TAG_BITS);
        for shard in a.shards.iter() {
            let tags: std::collections::HashSet<u64> = shard.iter().map(|(k, _)| tag(k)).collect();
            assert!(
                tags.len() * 2 > shard.len().min(64),
                "{} entries share {} tags",
                shard.len(),
                tags.len()
            );
        }
    }

    /// What the tag choice is for, measured through hashbrown itself rather than from our own
    /// reading of which bits it keeps: a lookup of a present key compares about one key. With
    /// the shard taken from the bits hashbrown tags slots with, every entry of a shard shares
    /// one tag and a lookup compares several. Pins the assumption across hashbrown upgrades.
    #[test]
    fn state_shards_a_lookup_compares_about_one_key() {
        let mut a: ShardMap<Arc<str>, u32> = ShardMap::default();
        for i in 0..50_000 {
            a.insert(format!("k{i}").into(), i);
        }
        let mut compared = 0usize;
        for (key, _) in a.iter() {
            let hash = a.hash(key);
            let found = a.shards[shard_of(hash)].find(hash, |(k, _)| {
                compared += 1;
                k == key
            });
            assert!(found.is_some());
        }
        let per_lookup = compared as f64 / a.len() as f64;
        assert!(per_lookup < 1.5, "{per_lookup:.2} keys compared per lookup");
    }

    #[test]
    fn state_shards_reserved_for_a_bulk_load_hold_it_all() {
        let mut a: ShardMap<Arc<str>, u32> = ShardMap::default();
        a.reserve_empty(50_000);
        // Every shard was sized: none is the shared empty table any more.
        assert!(a
            .shards
            .iter()
            .all(|s| s.capacity() >= 50_000 / SHARDS * 3 / 4));
        // A small load is left to grow the tables as it goes.
        let mut small: ShardMap<Arc<str>, u32> = ShardMap::default();
        small.reserve_empty(2_000);
        assert!(small.shards.iter().all(|s| Arc::ptr_eq(s, &small.empty)));
        for i in 0..50_000 {
            a.insert(format!("k{i}").into(), i);
        }
        assert_eq!(a.len(), 50_000);
        assert_eq!(a.iter().count(), 50_000);
        assert!((0..50_000).all(|i| a.get(format!("k{i}").as_str()) == Some(&i)));
    }
}
