//! Whole-map reads with `BPF_MAP_LOOKUP_BATCH` (kernel ≥ 5.6 for (LRU) hash maps).
//!
//! aya 0.14 has no batch map API, so this issues the `bpf(2)` command directly on the map's
//! fd. A batch copies up to `count` entries per system call instead of the two calls
//! (`get_next_key` + `lookup`) per entry of the classic walk.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use agent_ebpf::FlowKey;
use aya::Pod;

/// `bpf(2)` command number of `BPF_MAP_LOOKUP_BATCH` (uapi `enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The kernel-internal `ENOTSUPP`, which `bpf(2)` returns for maps without batch ops.
const ENOTSUPP: i32 = 524;

/// Entries per batch call: 4096 × (32 + 48) bytes ≈ 320 KiB of buffers, and ~32 calls for a
/// full 131,072-entry flow map.
pub(super) const BATCH_ENTRIES: usize = 4096;

/// Upper bound when growing the batch after `ENOSPC` (one hash bucket larger than the batch;
/// a bucket can never hold more entries than the map).
const MAX_BATCH_ENTRIES: usize = 1 << 20;

/// The `batch` member of uapi `union bpf_attr` (used by the `BPF_MAP_*_BATCH` commands).
/// Passing only this prefix is fine: the kernel zero-fills the rest of the union.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Resume token of the previous call (NULL = start of the map).
    in_batch: u64,
    /// Where the kernel writes the token to resume from.
    out_batch: u64,
    /// Key array, `count` entries.
    keys: u64,
    /// Value array, `count` entries.
    values: u64,
    /// In: capacity of `keys`/`values`; out: entries written.
    count: u32,
    /// The map.
    map_fd: u32,
    /// Per-element flags (`BPF_F_LOCK`); unused.
    elem_flags: u64,
    /// Command flags; must be zero.
    flags: u64,
}

/// How a batched walk ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Walk {
    /// Every entry present during the walk was passed to the callback.
    Complete,
    /// The kernel has no batch ops for this map (EINVAL/EOPNOTSUPP/ENOTSUPP on the first
    /// call); nothing was passed to the callback.
    Unsupported,
}

/// Walks the whole hash map `fd` (keys `K`, values `V`) with `BPF_MAP_LOOKUP_BATCH`, calling
/// `f` once per entry. Entries added or removed concurrently may or may not be seen; none is
/// seen twice (a hash map walk proceeds bucket by bucket, and a key never changes bucket).
///
/// Errors are the system call's (`ENOENT` = end of map and `EINTR` are handled here).
pub(super) fn walk<K: Pod + Default, V: Pod + Default>(
    fd: BorrowedFd<'_>,
    batch_entries: usize,
    mut f: impl FnMut(&K, &V),
) -> io::Result<Walk> {
    let map_fd =
        u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    let mut capacity = batch_entries.clamp(1, MAX_BATCH_ENTRIES);
    let mut keys = vec![K::default(); capacity];
    let mut values = vec![V::default(); capacity];
    // The resume token is a bucket index (u32) for hash maps and a key for other map types;
    // sized for either, 8-byte aligned.
    let token_words = size_of::<K>().div_ceil(8).max(1);
    let mut in_token = vec![0u64; token_words];
    let mut out_token = vec![0u64; token_words];
    let mut started = false;
    loop {
        let mut attr = BatchAttr {
            in_batch: if started { in_token.as_ptr() as u64 } else { 0 },
            out_batch: out_token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(capacity).unwrap_or(u32::MAX),
            map_fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid `bpf_attr.batch` prefix; every pointer in it refers to a
        // live buffer of the advertised size (`capacity` keys and values, a token of at least
        // the key size), all of plain-data types valid for any bit pattern the kernel writes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let end = if rc == 0 {
            false
        } else {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // End of map; `count` still says how many entries this call copied.
                Some(libc::ENOENT) => true,
                Some(libc::EINTR) => continue,
                // A bucket holds more entries than `capacity`; nothing was copied and the
                // token is unchanged: grow and repeat the same call.
                Some(libc::ENOSPC) if capacity < MAX_BATCH_ENTRIES => {
                    capacity = (capacity * 2).min(MAX_BATCH_ENTRIES);
                    keys.resize(capacity, K::default());
                    values.resize(capacity, V::default());
                    continue;
                }
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP) if !started => {
                    return Ok(Walk::Unsupported);
                }
                _ => return Err(err),
            }
        };
        let n = usize::try_from(attr.count)
            .unwrap_or(usize::MAX)
            .min(capacity);
        for (key, value) in keys[..n].iter().zip(&values[..n]) {
            f(key, value);
        }
        if end {
            return Ok(Walk::Complete);
        }
        in_token.copy_from_slice(&out_token);
        started = true;
    }
}

/// A flow key as four words: cheaper to hash and compare than the derived `Hash` of
/// [`FlowKey`] field by field (the index of [`super::Capture::lookup_many`] does one of each
/// per map entry). Injective: every byte of the key lands in exactly one place.
pub(super) fn key_words(key: &FlowKey) -> [u64; 4] {
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        a8,
        a9,
        a10,
        a11,
        a12,
        a13,
        a14,
        a15,
    ] = key.addr;
    let [p0, p1] = key.port.to_ne_bytes();
    let [d0, d1, d2, d3] = key.pad;
    [
        key.cgroup_id,
        u64::from_ne_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
        u64::from_ne_bytes([a8, a9, a10, a11, a12, a13, a14, a15]),
        u64::from_ne_bytes([p0, p1, key.protocol, key.family, d0, d1, d2, d3]),
    ]
}

/// Hash state of the user-space index of requested keys: a multiply-rotate hash (FxHash
/// style) seeded per process. std's SipHash costs more than the rest of the per-entry
/// matching work; the seed keeps bucket placement unpredictable across agent runs.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeyHashState {
    seed: u64,
}

impl Default for KeyHashState {
    fn default() -> Self {
        static SEED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let seed = *SEED.get_or_init(|| {
            use std::hash::BuildHasher as _;
            std::collections::hash_map::RandomState::new().hash_one(0x006c_6561_7368_u64)
        });
        Self { seed }
    }
}

impl std::hash::BuildHasher for KeyHashState {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher { state: self.seed }
    }
}

/// See [`KeyHashState`].
#[derive(Clone, Copy, Debug)]
pub(super) struct KeyHasher {
    state: u64,
}

impl KeyHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(Self::K).rotate_left(26);
    }
}

impl std::hash::Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // Final avalanche so that the high bits (hashbrown's control bytes) depend on
        // every input bit.
        let mut x = self.state;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        hash::BuildHasher as _,
        os::fd::{AsFd as _, FromRawFd as _, OwnedFd},
    };

    use aya::maps::{HashMap, IterableMap as _, MapData};

    use super::*;

    /// Whether privileged tests may run; skips (or fails under `LEASH_REQUIRE_PRIVILEGED=1`).
    fn privileged() -> bool {
        // SAFETY: no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        assert!(
            std::env::var("LEASH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "LEASH_REQUIRE_PRIVILEGED=1 but not root"
        );
        eprintln!("SKIP: creating BPF maps needs root");
        false
    }

    fn collect(map: &HashMap<MapData, u32, u64>, batch: usize) -> (Walk, Vec<(u32, u64)>) {
        let mut seen = Vec::new();
        let walk = walk::<u32, u64>(map.map().fd().as_fd(), batch, |k, v| seen.push((*k, *v)))
            .expect("BPF_MAP_LOOKUP_BATCH");
        (walk, seen)
    }

    #[test]
    fn walk_returns_every_entry_once_whatever_the_batch_size() {
        if !privileged() {
            return;
        }
        // 1,000 entries in 1,024 buckets: many buckets hold several entries, so batches of
        // 1 and 3 must grow on ENOSPC, and every batch size crosses bucket boundaries.
        let mut map: HashMap<MapData, u32, u64> = HashMap::create(1024, 0).expect("create");
        let (walk_empty, empty) = collect(&map, 16);
        assert_eq!((walk_empty, empty.len()), (Walk::Complete, 0));
        let expected: BTreeMap<u32, u64> = (0..1000u32)
            .map(|k| (k.wrapping_mul(2_654_435_761), u64::from(k) * 7))
            .collect();
        for (k, v) in &expected {
            map.insert(k, v, 0).expect("insert");
        }
        for batch in [1, 3, 64, 4096] {
            let (walk, seen) = collect(&map, batch);
            assert_eq!(walk, Walk::Complete);
            assert_eq!(seen.len(), expected.len(), "batch {batch}: no duplicates");
            let seen: BTreeMap<u32, u64> = seen.into_iter().collect();
            assert_eq!(seen, expected, "batch {batch}");
        }
    }

    #[test]
    fn maps_without_batch_ops_report_unsupported() {
        if !privileged() {
            return;
        }
        // A queue map (no batch ops), created directly: aya's Queue does not expose its fd.
        // bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, flags.
        let attr: [u32; 5] = [22 /* BPF_MAP_TYPE_QUEUE */, 0, 8, 16, 0];
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_MAP_CREATE (0).
        let rc = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), size_of_val(&attr)) };
        assert!(rc >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: the kernel just returned this fd to us; nothing else owns it.
        let queue = unsafe { OwnedFd::from_raw_fd(i32::try_from(rc).expect("fd")) };
        let mut called = false;
        let walk = walk::<u32, u64>(queue.as_fd(), 16, |_, _| called = true)
            .expect("no error, just unsupported");
        assert_eq!(walk, Walk::Unsupported);
        assert!(!called);
    }

    #[test]
    fn bad_fd_is_an_error_not_unsupported() {
        // SAFETY: no fd is open at i32::MAX; the kernel answers EBADF without using it.
        let fd = unsafe { BorrowedFd::borrow_raw(i32::MAX) };
        let err = walk::<u32, u64>(fd, 16, |_, _| {}).expect_err("EBADF");
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
    }

    #[test]
    fn key_words_are_injective_over_every_byte() {
        let base = agent_ebpf::FlowKey::default();
        let mut seen = std::collections::BTreeSet::new();
        assert!(seen.insert(key_words(&base)));
        // Set each of the 32 key bytes in turn, through the fields.
        for byte in 0..32 {
            let mut k = base;
            match byte {
                0..8 => k.cgroup_id = 1 << (8 * byte),
                8..24 => k.addr[byte - 8] = 1,
                24..26 => k.port = 1 << (8 * (byte - 24)),
                26 => k.protocol = 1,
                27 => k.family = 1,
                _ => k.pad[byte - 28] = 1,
            }
            assert!(seen.insert(key_words(&k)), "byte {byte} collides");
        }
    }

    #[test]
    fn key_hash_depends_on_every_field() {
        let state = KeyHashState::default();
        let base = agent_ebpf::FlowKey {
            cgroup_id: 1,
            addr: [0; 16],
            port: 53,
            protocol: 17,
            family: 4,
            pad: [0; 4],
        };
        let h = |k: &agent_ebpf::FlowKey| state.hash_one(key_words(k));
        let mut variants = vec![base];
        variants.push(agent_ebpf::FlowKey {
            cgroup_id: 2,
            ..base
        });
        variants.push(agent_ebpf::FlowKey { port: 54, ..base });
        variants.push(agent_ebpf::FlowKey {
            protocol: 6,
            ..base
        });
        variants.push(agent_ebpf::FlowKey { family: 6, ..base });
        for i in 0..16 {
            let mut addr = [0; 16];
            addr[i] = 1;
            variants.push(agent_ebpf::FlowKey { addr, ..base });
        }
        let hashes: std::collections::BTreeSet<u64> = variants.iter().map(h).collect();
        assert_eq!(hashes.len(), variants.len());
        assert_eq!(h(&base), h(&base), "deterministic within a process");
    }
}
