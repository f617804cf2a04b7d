//! A hash index from flow ids to positions in the aggregator's entry vector.
//!
//! Written here rather than taken from `hashbrown` because the aggregator needs two things its
//! tables do not offer: the address an id will probe, so that a batch of ring records can
//! prefetch all of them before the first lookup (on the agent's 2-vCPU VMs a cache miss into a
//! megabyte-sized table cost more than the rest of `observe`), and one cache line per probe
//! (`hashbrown` reads a control byte group and then the bucket: two lines).
//!
//! Open addressing with linear probing over 8-byte slots: the low 32 bits of the id's hash and
//! the position plus one (0 marks an empty slot). The stored hash bits give each slot's home,
//! so growing and deleting (backward shift) never read the entries themselves, and a probe
//! compares an entry's id only when the hash bits match. At most half the slots are used.

/// Starts loading the cache line holding `value` (a hint: it never faults and reads nothing;
/// a no-op on targets without a stable prefetch instruction).
#[inline]
pub(super) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` only hints the cache; the pointer comes from a live reference.
    unsafe {
        core::arch::x86_64::_mm_prefetch(
            (value as *const T).cast::<i8>(),
            core::arch::x86_64::_MM_HINT_T0,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Slots at the start; doubled whenever more than half are used.
const MIN_SLOTS: usize = 16;

/// See the module docs.
#[derive(Clone, Debug)]
pub(super) struct Index {
    slots: Vec<u64>,
    mask: usize,
    len: usize,
}

fn slot(tag: u32, pos: u32) -> u64 {
    u64::from(tag) << 32 | (u64::from(pos) + 1)
}

fn tag_of(slot: u64) -> u32 {
    (slot >> 32) as u32
}

/// The position a non-empty slot holds.
fn pos_of(slot: u64) -> u32 {
    (slot as u32).wrapping_sub(1)
}

fn tag(hash: u64) -> u32 {
    hash as u32
}

impl Index {
    /// An index that holds `capacity` positions without growing.
    pub(super) fn with_capacity(capacity: usize) -> Self {
        let n = capacity
            .saturating_mul(2)
            .max(MIN_SLOTS)
            .checked_next_power_of_two()
            .unwrap_or(1 << (usize::BITS - 1));
        Self {
            slots: vec![0; n],
            mask: n - 1,
            len: 0,
        }
    }

    /// Number of positions held.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask
    }

    /// Starts loading the slot `hash` probes first into the cache.
    #[inline]
    pub(super) fn prefetch(&self, hash: u64) {
        if let Some(p) = self.slots.get(self.home(tag(hash))) {
            prefetch(p);
        }
    }

    /// The position in the first slot `hash` probes if that slot's hash bits match: most
    /// likely the id's entry, to prefetch before the lookup confirms it.
    #[inline]
    pub(super) fn guess(&self, hash: u64) -> Option<u32> {
        let s = *self.slots.get(self.home(tag(hash)))?;
        (s != 0 && tag_of(s) == tag(hash)).then(|| pos_of(s))
    }

    /// Probes the run of `hash`'s home slot: the index of the slot whose hash bits match and
    /// whose position `is` accepts, or else of the empty slot that ends the run.
    #[inline]
    fn probe(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Result<usize, usize> {
        let t = tag(hash);
        let mut i = self.home(t);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return Err(i);
            }
            if tag_of(s) == t && is(pos_of(s)) {
                return Ok(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The position stored for `hash` for which `is` holds.
    #[inline]
    pub(super) fn find(&self, hash: u64, is: impl FnMut(u32) -> bool) -> Option<u32> {
        self.probe(hash, is).ok().map(|i| pos_of(self.slots[i]))
    }

    /// [`Index::find`], or inserts `new` for `hash` when nothing matches; returns the
    /// position found or inserted.
    #[inline]
    pub(super) fn find_or_insert(
        &mut self,
        hash: u64,
        is: impl FnMut(u32) -> bool,
        new: u32,
    ) -> Result<u32, u32> {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        match self.probe(hash, is) {
            Ok(i) => Ok(pos_of(self.slots[i])),
            Err(empty) => {
                self.slots[empty] = slot(tag(hash), new);
                self.len += 1;
                Err(new)
            }
        }
    }

    /// Replaces the stored position `old` of `hash` by `new`; false if it is not stored.
    pub(super) fn repoint(&mut self, hash: u64, old: u32, new: u32) -> bool {
        let Ok(i) = self.probe(hash, |p| p == old) else {
            return false;
        };
        self.slots[i] = slot(tag(hash), new);
        true
    }

    /// Removes the stored position `pos` of `hash`; false if it is not stored.
    pub(super) fn remove(&mut self, hash: u64, pos: u32) -> bool {
        let Ok(i) = self.probe(hash, |p| p == pos) else {
            return false;
        };
        // Backward shift: later slots of the run that may live at `i` move up, so that no
        // probe meets a hole before its slot.
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & self.mask;
            let s = self.slots[j];
            if s == 0 {
                break;
            }
            let home = self.home(tag_of(s));
            // `s` may fill the hole if its home is not in the cyclic range (hole, j].
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.slots[hole] = s;
                hole = j;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
        true
    }

    fn grow(&mut self) {
        let n = self.slots.len() * 2;
        let old = std::mem::replace(&mut self.slots, vec![0; n]);
        self.mask = n - 1;
        for s in old.into_iter().filter(|&s| s != 0) {
            let mut i = self.home(tag_of(s));
            while self.slots[i] != 0 {
                i = (i + 1) & self.mask;
            }
            self.slots[i] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// Against a `HashMap` model: inserts, finds, repoints and removes of keys whose
        /// hashes collide often (few distinct hash values, small tables that grow), always
        /// agree.
        #[test]
        fn agrees_with_a_hash_map(
            ops in proptest::collection::vec((0u8..4, 0u32..64, 0u64..24), 1..400)
        ) {
            let mut index = Index::with_capacity(0);
            // key -> (hash, position); positions are unique, like entry positions.
            let mut model: HashMap<u32, (u64, u32)> = HashMap::new();
            let mut next = 0u32;
            // Hashes share low bits a lot; some differ only above the home bits.
            let hash_of = |h: u64| h.wrapping_mul(0x1_0000_0001) & 0xffff_ffff_0000_000f;
            for (op, key, h) in ops {
                let hash = model.get(&key).map_or(hash_of(h), |&(hash, _)| hash);
                let pos_of_key = |p: u32| model.iter().any(|(k, &(_, q))| *k == key && q == p);
                match op {
                    0 => {
                        let got = index.find_or_insert(hash, pos_of_key, next);
                        match model.get(&key) {
                            Some(&(_, p)) => prop_assert_eq!(got, Ok(p)),
                            None => {
                                prop_assert_eq!(got, Err(next));
                                model.insert(key, (hash, next));
                                next += 1;
                            }
                        }
                    }
                    1 => {
                        let want = model.get(&key).map(|&(_, p)| p);
                        prop_assert_eq!(index.find(hash, pos_of_key), want);
                    }
                    2 => {
                        if let Some(&(hash, p)) = model.get(&key) {
                            prop_assert!(index.repoint(hash, p, next));
                            model.insert(key, (hash, next));
                            next += 1;
                        } else {
                            prop_assert!(!index.repoint(hash, next, next + 1));
                        }
                    }
                    _ => {
                        let had = model.remove(&key);
                        let removed = had.is_some_and(|(hash, p)| index.remove(hash, p));
                        prop_assert_eq!(removed, had.is_some());
                    }
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for (key, &(hash, p)) in &model {
                let is = |q: u32| model.iter().any(|(k, &(_, r))| k == key && r == q);
                prop_assert_eq!(index.find(hash, is), Some(p));
            }
        }
    }
}
