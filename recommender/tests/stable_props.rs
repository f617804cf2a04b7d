//! Property tests of stable proposals (issue 12, section 2) on the pure path: `recommend`
//! over a previous proposal, read back from the files the previous run wrote (its policy
//! files and `evidence.json`), as `recommend --previous DIR` does.
//! - Same input, same output: byte-identical files, whatever the order of the records.
//! - A re-run on its own output changes no file but the reports.
//! - Monotone: more observations never remove an allowance that still has evidence.
//! - Hysteresis: new evidence for destinations the previous blocks hold changes no block.
//! - Expiry: a rule whose last evidence is older than `--expire-after` is dropped and said
//!   so with its last-seen time; a younger one stays, marked "not seen in this window".

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::PathBuf;

use chrono::{DateTime, Duration, TimeZone, Utc};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash::cluster::Cluster;
use leash::eval::{self, ClusterView, PolicySet, Verdict};
use leash::observations::Observations;
use leash::recommend::previous::{EvidenceIndex, contains};
use leash::recommend::{self, ChangeKind, Options, Previous, Recommendation, Stability};
use leash_records::Record;
use proptest::prelude::*;
use support::recommend::{Fx, flow};

/// One observed connection of `web`: a destination pool and host, a port, a day.
#[derive(Debug, Clone)]
struct Obs {
    /// 0..3: external pools; 3: the api workload.
    pool: u8,
    host: u8,
    port: u16,
    /// Days before the window's end.
    age: u8,
    count: u64,
}

fn obs() -> impl Strategy<Value = Obs> {
    (
        0u8..4,
        0u8..16,
        prop::sample::select(vec![443u16, 8443, 80]),
        0u8..3,
        1u64..50,
    )
        .prop_map(|(pool, host, port, age, count)| Obs {
            pool,
            host,
            port,
            age,
            count,
        })
}

/// The end of the first window.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("a time")
}

fn fixture() -> Fx {
    let mut fx = Fx::new();
    fx.node("n1", "10.0.0.1", "10.244.1.0/24");
    fx.kubeadm_dns();
    fx.namespace("shop");
    fx.deployment(
        "shop",
        "web",
        &[("app", "web")],
        &["10.244.1.10", "10.244.1.11"],
        &[],
    );
    fx.deployment(
        "shop",
        "api",
        &[("app", "api")],
        &["10.244.1.20"],
        &[(Some("http"), 8080, "TCP")],
    );
    fx
}

/// The records of `list`, their window ending `end`.
fn records(list: &[Obs], end: DateTime<Utc>) -> Vec<Record> {
    list.iter()
        .enumerate()
        .map(|(i, o)| {
            let dst = match o.pool {
                0 => format!("203.0.113.{}", o.host),
                1 => format!("198.51.100.{}", 8 * o.host),
                2 => format!("192.0.2.{}", 100 + o.host),
                _ => "10.244.1.20".to_owned(),
            };
            let port = if o.pool == 3 { 8080 } else { o.port };
            let pod = format!("web-5c9f7d-p{}", i % 2);
            let mut r = flow("shop", &pod, "TCP", &dst, port, o.count, &[]);
            if let Record::Flow(f) = &mut r {
                f.last_seen = end - Duration::days(i64::from(o.age));
                f.first_seen = f.last_seen - Duration::hours(1);
            }
            r
        })
        .collect()
}

fn observe(cluster: &Cluster, records: &[Record]) -> Observations {
    let mut o = Observations::default();
    for r in records {
        o.add(r, cluster).expect("records name fixture pods");
    }
    o
}

fn opts(max_cidrs: usize) -> Options {
    Options {
        max_cidrs,
        ..Options::default()
    }
}

/// A run over a previous proposal, self-checked.
fn run(
    cluster: &Cluster,
    o: &Observations,
    max_cidrs: usize,
    previous: Option<&Previous>,
    as_of: DateTime<Utc>,
    expire_after: Duration,
) -> Recommendation {
    let stab = Stability {
        previous,
        history: None,
        as_of,
        expire_after,
    };
    recommend::checked_stable(cluster, o, &opts(max_cidrs), &stab).expect("self-check passes")
}

/// The files of `-o DIR`.
fn files(cluster: &Cluster, rec: &Recommendation) -> Vec<(PathBuf, String)> {
    leash::render::files(cluster, rec).expect("renders")
}

/// The policy files only (not the reports and evidence, which change with every run).
fn policy_files(cluster: &Cluster, rec: &Recommendation) -> Vec<(PathBuf, String)> {
    files(cluster, rec)
        .into_iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "yaml"))
        .collect()
}

/// The previous proposal as `recommend --previous DIR` reads it back from the files.
fn previous_of(cluster: &Cluster, rec: &Recommendation) -> Previous {
    let mut policies: Vec<NetworkPolicy> = Vec::new();
    let mut evidence = EvidenceIndex::new();
    for (path, text) in files(cluster, rec) {
        if path.extension().is_some_and(|e| e == "yaml") {
            assert!(leash::render::outdir::is_leash_policy(text.as_bytes()));
            policies.push(serde_norway::from_str(&text).expect("a policy"));
        } else if path.ends_with("evidence.json") {
            for (ns, policy, key, e) in leash::render::evidence::parse(&text).expect("parses") {
                evidence.insert((ns, policy, key), e);
            }
        }
    }
    let (prev, skipped) = Previous::from_policies(&policies, &evidence);
    assert!(skipped.is_empty(), "{skipped:?}");
    prev
}

/// Whether the policies of `rec` allow the flow of `key` (egress, by the one evaluator).
fn allowed(cluster: &Cluster, rec: &Recommendation, o: &Observations) -> Vec<String> {
    let set = PolicySet::new(&recommend::all_policies(cluster, rec)).expect("valid");
    let mut denied = Vec::new();
    for k in o.flows.keys() {
        let pod = &cluster.pods[k.pod];
        let source = ClusterView::pod(cluster, &pod.namespace, &pod.name).expect("pod");
        let f = eval::Flow {
            protocol: k.protocol,
            dst: k.dst,
            dst_port: k.port,
        };
        if eval::evaluate(cluster, &set, source, &f).egress != Verdict::Allow {
            denied.push(format!("{}:{}", k.dst, k.port));
        }
    }
    denied
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Same records in any order, same previous proposal: the same bytes in every file.
    #[test]
    fn same_input_same_bytes(
        first in prop::collection::vec(obs(), 1..12),
        second in prop::collection::vec(obs(), 1..12),
        max_cidrs in 1usize..4,
        seed in any::<u64>(),
    ) {
        let cluster = fixture().cluster();
        let prev_rec = run(&cluster, &observe(&cluster, &records(&first, t0())), max_cidrs, None, t0(), Duration::days(30));
        let prev = previous_of(&cluster, &prev_rec);
        let end = t0() + Duration::days(7);
        let mut recs = records(&second, end);
        let a = run(&cluster, &observe(&cluster, &recs), max_cidrs, Some(&prev), end, Duration::days(30));
        // Another order of the same records.
        let n = recs.len();
        recs.rotate_left(usize::try_from(seed % n as u64).unwrap_or(0));
        recs.reverse();
        let b = run(&cluster, &observe(&cluster, &recs), max_cidrs, Some(&prev), end, Duration::days(30));
        prop_assert_eq!(files(&cluster, &a), files(&cluster, &b));
    }

    /// A re-run on the same observations over its own output: no policy file changes, and
    /// the report lists no change.
    #[test]
    fn a_rerun_changes_no_policy(
        list in prop::collection::vec(obs(), 1..14),
        max_cidrs in 1usize..4,
    ) {
        let cluster = fixture().cluster();
        let o = observe(&cluster, &records(&list, t0()));
        let first = run(&cluster, &o, max_cidrs, None, t0(), Duration::days(30));
        let again = run(&cluster, &o, max_cidrs, Some(&previous_of(&cluster, &first)), t0(), Duration::days(30));
        prop_assert_eq!(policy_files(&cluster, &first), policy_files(&cluster, &again));
        prop_assert!(again.changes.is_empty(), "{:?}", again.changes);
        prop_assert!(again.has_previous);
    }

    /// More observations never remove an allowance that still has evidence: every rule of
    /// the previous proposal is inside a rule of the next, and every flow of the first
    /// window is still allowed.
    #[test]
    fn more_observations_remove_nothing(
        first in prop::collection::vec(obs(), 1..12),
        more in prop::collection::vec(obs(), 0..12),
        max_cidrs in 1usize..4,
    ) {
        let cluster = fixture().cluster();
        let o1 = observe(&cluster, &records(&first, t0()));
        let p1 = run(&cluster, &o1, max_cidrs, None, t0(), Duration::days(30));
        let end = t0() + Duration::days(3);
        let o2 = observe(&cluster, &records(&more, end));
        let p2 = run(&cluster, &o2, max_cidrs, Some(&previous_of(&cluster, &p1)), end, Duration::days(30));
        for a in &p1.policies {
            let b = p2.policies.iter().find(|b| b.workload == a.workload);
            prop_assert!(b.is_some(), "policy {} dropped", a.name);
            let b = b.expect("checked");
            for r in &a.rules {
                prop_assert!(
                    b.rules.iter().any(|n| contains(n, r)),
                    "rule {} of {} lost: {:?}",
                    r.key(),
                    a.name,
                    b.rules.iter().map(recommend::EgressRule::key).collect::<Vec<_>>()
                );
            }
        }
        let denied = allowed(&cluster, &p2, &o1);
        prop_assert!(denied.is_empty(), "{denied:?}");
        prop_assert!(allowed(&cluster, &p2, &o2).is_empty());
        prop_assert!(p2.changes.iter().all(|c| c.kind != ChangeKind::Removed && c.kind != ChangeKind::Narrowed));
    }

    /// Hysteresis: new evidence for the destinations of the previous proposal (later,
    /// more events, another subset of them) changes no policy file.
    #[test]
    fn new_evidence_for_old_destinations_changes_no_block(
        first in prop::collection::vec(obs(), 1..12),
        picks in prop::collection::vec((any::<prop::sample::Index>(), 1u64..90, 0u8..3), 1..12),
        max_cidrs in 1usize..4,
    ) {
        let cluster = fixture().cluster();
        let o1 = observe(&cluster, &records(&first, t0()));
        let p1 = run(&cluster, &o1, max_cidrs, None, t0(), Duration::days(30));
        let again: Vec<Obs> = picks
            .iter()
            .map(|(i, count, age)| Obs { count: *count, age: *age, ..first[i.index(first.len())].clone() })
            .collect();
        let end = t0() + Duration::days(5);
        let o2 = observe(&cluster, &records(&again, end));
        let p2 = run(&cluster, &o2, max_cidrs, Some(&previous_of(&cluster, &p1)), end, Duration::days(30));
        prop_assert_eq!(policy_files(&cluster, &p1), policy_files(&cluster, &p2));
        prop_assert!(p2.changes.is_empty(), "{:?}", p2.changes);
    }

    /// Expiry: with no new observation of them, the previous rules last seen before
    /// `as_of - expire_after` are removed (the change names the last-seen time), the others
    /// stay, marked "not seen in this window".
    #[test]
    fn old_rules_expire_and_young_ones_stay(
        first in prop::collection::vec(obs(), 1..12),
        later in 0i64..60,
        expire_days in 1i64..45,
    ) {
        let cluster = fixture().cluster();
        let o1 = observe(&cluster, &records(&first, t0()));
        let p1 = run(&cluster, &o1, 8, None, t0(), Duration::days(30));
        let as_of = t0() + Duration::days(later);
        let expire_after = Duration::days(expire_days);
        // An empty window: only the previous proposal speaks.
        let p2 = run(&cluster, &Observations::default(), 8, Some(&previous_of(&cluster, &p1)), as_of, expire_after);
        for a in &p1.policies {
            for r in &a.rules {
                let last = r.evidence.last_seen.expect("observed");
                let kept = p2
                    .policies
                    .iter()
                    .filter(|b| b.workload == a.workload)
                    .flat_map(|b| &b.rules)
                    .find(|n| n.key() == r.key());
                if last < as_of - expire_after {
                    prop_assert!(kept.is_none(), "expired rule {} kept", r.key());
                    let stamp = leash_records::time::rfc3339(last);
                    prop_assert!(
                        p2.changes.iter().any(|c| c.kind == ChangeKind::Removed
                            && c.before.as_deref() == Some(r.key().as_str())
                            && c.why.contains(&stamp)),
                        "no removal of {} naming {stamp}: {:?}", r.key(), p2.changes
                    );
                } else {
                    let kept = kept.ok_or_else(|| TestCaseError::fail(format!("rule {} dropped", r.key())))?;
                    prop_assert!(kept.not_seen_in_window);
                    prop_assert!(kept.notes.iter().any(|n| n.contains("not seen in this window")));
                    prop_assert_eq!(kept.evidence.last_seen, Some(last));
                }
            }
        }
    }
}

/// Addresses allowed by a cover: its blocks without their excepts.
fn allowed_size(c: &leash::cidr::Cover) -> u128 {
    c.blocks
        .iter()
        .map(|b| {
            leash::cidr::net_size(&b.cidr)
                - b.except.iter().map(leash::cidr::net_size).sum::<u128>()
        })
        .sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Hysteresis in the cover: keeping the previous blocks costs nothing over the plain
    /// optimal cover of the same addresses (same allowed addresses, same budget), never
    /// splits a previous block, and keeps at least as many of them unchanged.
    #[test]
    fn the_cover_prefers_previous_blocks_at_equal_cost(
        first in prop::collection::btree_set(0u32..512, 1..12),
        more in prop::collection::btree_set(0u32..512, 0..12),
        max_cidrs in 1usize..5,
    ) {
        use ipnet::IpNet;
        use leash::cidr::{CoverOptions, cover, cover_keeping};
        let net = |w: u32| IpNet::from(std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xCB00_7100 + w)));
        let opts = CoverOptions { max_cidrs, max_prefix_v4: 20, ..CoverOptions::default() };
        let obs1: Vec<IpNet> = first.iter().map(|&w| net(w)).collect();
        let prev: Vec<IpNet> = cover(&obs1, &opts).blocks.iter().map(|b| b.cidr).collect();
        let obs2: Vec<IpNet> = first.union(&more).map(|&w| net(w)).collect();
        let kept = cover_keeping(&obs2, &prev, &opts);
        let all: Vec<IpNet> = obs2.iter().chain(&prev).copied().collect();
        let plain = cover(&all, &opts);
        prop_assert_eq!(allowed_size(&kept), allowed_size(&plain));
        prop_assert_eq!(kept.budget_met, plain.budget_met);
        if plain.budget_met {
            prop_assert!(kept.blocks.len() <= max_cidrs);
        }
        for p in &prev {
            prop_assert!(kept.blocks.iter().any(|b| b.cidr.contains(p)), "{} split", p);
        }
        let unchanged = |c: &leash::cidr::Cover| prev.iter().filter(|p| c.blocks.iter().any(|b| b.cidr == **p)).count();
        prop_assert!(unchanged(&kept) >= unchanged(&plain), "{:?} vs {:?}", kept.blocks, plain.blocks);
        // Nothing new: the previous cover stays exactly.
        if more.is_subset(&first) {
            let same: Vec<IpNet> = kept.blocks.iter().map(|b| b.cidr).collect();
            prop_assert_eq!(same, prev);
        }
    }
}
