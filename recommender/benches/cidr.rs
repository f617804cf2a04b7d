//! CIDR hot paths: exact merge of 1M random IPv4 addresses, and the K=256 budgeted cover of 1M
//! distinct IPv4 addresses (with the default /24 limit, and with the limit relaxed to /8 so that
//! the dynamic program has to work over the whole trie).
//!
//! The inputs come from splitmix64 with fixed seeds; `scripts/cidr_compare.py` generates the same
//! merge input to compare against Python's `ipaddress.collapse_addresses`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::IpNet;
use leash::cidr::{self, CoverOptions};

/// splitmix64: tiny, well-mixed and easy to reproduce in Python.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Seed shared with `scripts/cidr_compare.py`.
const MERGE_SEED: u64 = 0x1ea5_0001;

/// 1M addresses drawn from 10.0.0.0/11 (2M addresses), so about 40% of the space is hit and the
/// merge has real runs to join: the same input as `scripts/cidr_compare.py`.
fn merge_input() -> Vec<Ipv4Addr> {
    let mut rng = SplitMix64(MERGE_SEED);
    (0..1_000_000)
        .map(|_| Ipv4Addr::from(0x0A00_0000 | ((rng.next() >> 43) as u32)))
        .collect()
}

/// 1M distinct addresses from 10.0.0.0/8.
fn cover_input() -> Vec<IpNet> {
    let mut rng = SplitMix64(0x1ea5_0002);
    let mut words: Vec<u32> = Vec::with_capacity(1_100_000);
    while words.len() < 1_000_000 {
        while words.len() < 1_050_000 {
            words.push(0x0A00_0000 | ((rng.next() >> 40) as u32));
        }
        words.sort_unstable();
        words.dedup();
    }
    words.truncate(1_000_000);
    words
        .into_iter()
        .map(|w| IpNet::from(IpAddr::V4(Ipv4Addr::from(w))))
        .collect()
}

fn bench(c: &mut Criterion) {
    let addrs = merge_input();
    let mut g = c.benchmark_group("cidr");
    g.sample_size(10);
    g.bench_function("merge_1M_random_v4", |b| {
        b.iter(|| cidr::merge_v4_addrs(black_box(&addrs)))
    });
    let observed = cover_input();
    let default = CoverOptions {
        max_cidrs: 256,
        ..CoverOptions::default()
    };
    g.bench_function("cover_1M_distinct_v4_k256_max24", |b| {
        b.iter(|| cidr::cover(black_box(&observed), &default))
    });
    let relaxed = CoverOptions {
        max_cidrs: 256,
        max_prefix_v4: 8,
        ..CoverOptions::default()
    };
    g.bench_function("cover_1M_distinct_v4_k256_max8", |b| {
        b.iter(|| cidr::cover(black_box(&observed), &relaxed))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
