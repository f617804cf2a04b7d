//! The store path gives the same policies as the file path.
//!
//! For random clusters and record sets: records read as JSON lines (the `--flows` path) and
//! the same records turned into observations batch by batch ([`observations::from_batch`]),
//! committed to a real SQLite file in several batches (one of them sent twice), read back
//! and attributed to pods again ([`observations::from_stored`]) make `recommend` decide the same.
//!
//! The one thing a per-workload store cannot keep is which pods of a workload made the
//! traffic: the evidence's pod sets differ (the store attaches a workload's evidence to one
//! pod), so they are compared without pod names; with one pod per workload even the
//! rendered files, REPORT.md included, are byte-for-byte the same.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash::cluster::Cluster;
use leash::observations;
use leash::observations::Observations;
use leash::recommend::{self, Options, Recommendation};
use leash::store::{BatchId, Commit, SqliteStore, Store};
use leash_records::{DnsAnswer, DnsRecord, FlowRecord, Outcome, PodRef, Protocol, Record, wire};
use proptest::prelude::*;
use prost::Message as _;
use support::recommend::Fx;

#[derive(Debug, Clone)]
struct Wl {
    ns: u8,
    bare: bool,
    pods: u8,
    host: bool,
    svc: Option<u16>,
}

#[derive(Debug, Clone)]
enum Dst {
    Pod(u16, u16),
    Service(u16),
    External(u8, u16, u16),
    Node(u8, u16),
    Dns(bool),
}

/// Who a record is from: a pod (by index, with or without its uid) or no pod at all.
#[derive(Debug, Clone)]
enum Src {
    Pod { index: u16, by_uid: bool },
    Host(u8),
}

#[derive(Debug, Clone)]
struct Fl {
    src: Src,
    dst: Dst,
    udp: bool,
    count: u64,
    start: i64,
    span: i64,
    names: Vec<u8>,
    outcome: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
struct Dn {
    src: Src,
    server: u8,
    query: u8,
    cname: bool,
    ips: Vec<u16>,
    at: i64,
}

const NAMES: &[&str] = &[
    "api.stripe.test",
    "API.Stripe.test.",
    "edge.stripe.test",
    "db.shop.test",
    "",
];

fn wl(max_pods: u8) -> impl Strategy<Value = Wl> {
    (
        0u8..3,
        any::<bool>(),
        1u8..=max_pods,
        prop::bool::weighted(0.15),
        prop::option::weighted(0.6, prop::sample::select(vec![80u16, 443, 8080])),
    )
        .prop_map(|(ns, bare, pods, host, svc)| Wl {
            ns,
            bare,
            pods: if bare { 1 } else { pods },
            host,
            svc,
        })
}

fn src() -> impl Strategy<Value = Src> {
    prop_oneof![
        9 => (any::<u16>(), any::<bool>()).prop_map(|(index, by_uid)| Src::Pod { index, by_uid }),
        1 => (0u8..2).prop_map(Src::Host),
    ]
}

fn dst() -> impl Strategy<Value = Dst> {
    prop_oneof![
        3 => (any::<u16>(), 0u16..4).prop_map(|(w, p)| Dst::Pod(w, p)),
        3 => any::<u16>().prop_map(Dst::Service),
        4 => (0u8..4, any::<u16>(), 0u16..3).prop_map(|(pool, h, p)| Dst::External(pool, h, p)),
        1 => (0u8..2, 0u16..3).prop_map(|(n, p)| Dst::Node(n, p)),
        2 => any::<bool>().prop_map(Dst::Dns),
    ]
}

fn fl() -> impl Strategy<Value = Fl> {
    (
        src(),
        dst(),
        prop::bool::weighted(0.2),
        1u64..1000,
        (0i64..10 * 86_400_000, 0i64..2 * 86_400_000),
        prop::collection::vec(0u8..5, 0..3),
        prop::option::of((0u64..5, 0u64..5)),
    )
        .prop_map(|(src, dst, udp, count, (start, span), names, outcome)| Fl {
            src,
            dst,
            udp,
            count,
            start,
            span,
            names,
            outcome,
        })
}

fn dn() -> impl Strategy<Value = Dn> {
    (
        src(),
        0u8..3,
        0u8..4,
        any::<bool>(),
        prop::collection::vec(any::<u16>(), 0..3),
        0i64..10 * 86_400_000,
    )
        .prop_map(|(src, server, query, cname, ips, at)| Dn {
            src,
            server,
            query,
            cname,
            ips,
            at,
        })
}

/// A pod of the fixture: (namespace, name, IP).
type FxPod = (String, String, String);

/// The snapshot, and the records of the random description.
fn build(wls: &[Wl], flows: &[Fl], dns: &[Dn]) -> (Fx, Vec<Record>) {
    let mut fx = Fx::new();
    fx.node("n1", "10.0.0.1", "10.244.1.0/24");
    fx.node("n2", "10.0.0.2", "10.244.2.0/24");
    fx.kubeadm_dns();
    for ns in 0..3 {
        fx.namespace(&format!("ns{ns}"));
    }
    let mut pods: Vec<FxPod> = Vec::new();
    let mut services: Vec<(String, u16)> = Vec::new();
    let mut next_ip = 10u16;
    for (i, w) in wls.iter().enumerate() {
        let ns = format!("ns{}", w.ns);
        let app = format!("w{i}");
        let labels = [("app", app.as_str())];
        let ports = [(Some("http"), 8080, "TCP")];
        let ips: Vec<String> = (0..w.pods)
            .map(|k| {
                if w.host {
                    format!("10.0.0.{}", 1 + (k % 2))
                } else {
                    next_ip += 1;
                    format!("10.244.{}.{}", 1 + next_ip / 200, next_ip % 200)
                }
            })
            .collect();
        let names: Vec<String> = if w.bare {
            let name = format!("bare{i}");
            fx.pod(&ns, &name, &labels, &[&ips[0]], w.host, "n1", &ports, None);
            vec![name]
        } else if w.host {
            ips.iter()
                .enumerate()
                .map(|(k, ip)| {
                    let name = format!("{app}-h{k}");
                    fx.pod(
                        &ns,
                        &name,
                        &labels,
                        &[ip],
                        true,
                        "n1",
                        &ports,
                        Some(("DaemonSet", &app)),
                    );
                    name
                })
                .collect()
        } else {
            let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
            fx.deployment(&ns, &app, &labels, &refs, &ports)
        };
        for (name, ip) in names.into_iter().zip(ips) {
            pods.push((ns.clone(), name, ip));
        }
        if let Some(port) = w.svc {
            let cip = format!("10.96.1.{}", i + 1);
            fx.service(
                &ns,
                &app,
                &cip,
                Some(&[("app", app.as_str())]),
                &[("web", port, "TCP", IntOrString::Int(8080))],
            );
            services.push((cip, port));
        }
    }
    let cluster = fx.cluster();
    let base = DateTime::parse_from_rfc3339("2026-11-10T00:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    let pod_ref = |s: &Src| -> Option<PodRef> {
        match s {
            Src::Host(_) => None,
            Src::Pod { index, by_uid } => {
                let (ns, name, _) = &pods[usize::from(*index) % pods.len()];
                let uid = if *by_uid {
                    let id = cluster.pod_by_name(ns, name).expect("fixture pod");
                    cluster.pods[id].uid.clone().unwrap_or_default()
                } else {
                    String::new()
                };
                Some(PodRef {
                    uid,
                    namespace: ns.clone(),
                    name: name.clone(),
                })
            }
        }
    };
    let node = |s: &Src| match s {
        Src::Host(n) => format!("n{}", n + 1),
        Src::Pod { .. } => "n1".to_owned(),
    };
    let mut records = Vec::new();
    for f in flows {
        let (ip, port, udp): (IpAddr, u16, bool) = match &f.dst {
            Dst::Pod(p, port) => (
                pods[usize::from(*p) % pods.len()]
                    .2
                    .parse()
                    .expect("fixture ip"),
                9000 + port,
                f.udp,
            ),
            Dst::Service(s) if !services.is_empty() => {
                let (ip, port) = &services[usize::from(*s) % services.len()];
                (ip.parse().expect("fixture ip"), *port, false)
            }
            Dst::Service(_) => continue,
            Dst::External(pool, h, port) => {
                let ip = match pool {
                    0 => format!("203.0.113.{}", h % 64),
                    1 => format!("198.51.100.{}", h % 256),
                    // As a dual-stack socket reports an IPv4 peer.
                    2 => format!("::ffff:203.0.113.{}", h % 64),
                    _ => format!("2001:db8::{:x}", h % 40),
                };
                (ip.parse().expect("ip"), 443 + port, f.udp)
            }
            Dst::Node(n, port) => (
                format!("10.0.0.{}", n + 1).parse().expect("ip"),
                10250 + port,
                false,
            ),
            Dst::Dns(tcp) => ("10.96.0.10".parse().expect("ip"), 53, !tcp),
        };
        let first = base + Duration::milliseconds(f.start);
        records.push(Record::Flow(FlowRecord {
            node: node(&f.src),
            pod: pod_ref(&f.src),
            cgroup: "/kubepods/x".into(),
            protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
            dst: ip,
            dst_port: port,
            count: f.count,
            first_seen: first,
            last_seen: first + Duration::milliseconds(f.span),
            names: f
                .names
                .iter()
                .map(|&n| NAMES[usize::from(n)].to_owned())
                .collect(),
            outcome: f.outcome.map(|(established, failed)| Outcome {
                established,
                failed,
            }),
        }));
    }
    for d in dns {
        let server: IpAddr = ["10.96.0.10", "169.254.20.10", "198.51.100.53"]
            [usize::from(d.server)]
        .parse()
        .expect("ip");
        let query = format!("{}.", NAMES[usize::from(d.query)].trim_end_matches('.'));
        let mut answers = Vec::new();
        let mut owner = query.clone();
        if d.cname {
            answers.push(DnsAnswer {
                name: owner.clone(),
                rtype: "CNAME".into(),
                data: "edge.cdn.test.".into(),
                ttl: 30,
            });
            owner = "edge.cdn.test.".into();
        }
        for h in &d.ips {
            let (rtype, data) = if h % 3 == 0 {
                ("AAAA", format!("2001:db8::{:x}", h % 40))
            } else {
                ("A", format!("203.0.113.{}", h % 64))
            };
            answers.push(DnsAnswer {
                name: owner.clone(),
                rtype: rtype.into(),
                data,
                ttl: 30,
            });
        }
        records.push(Record::Dns(DnsRecord {
            node: node(&d.src),
            pod: pod_ref(&d.src),
            cgroup: "/kubepods/x".into(),
            server,
            query,
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            answers,
            time: base + Duration::milliseconds(d.at),
        }));
    }
    (fx, records)
}

/// The `--flows` path: the records as a JSON-lines file, read by the file reader.
fn from_files(cluster: &Cluster, records: &[Record]) -> Observations {
    let text: String = records.iter().map(|r| r.to_json_line() + "\n").collect();
    let mut obs = Observations::default();
    obs.read(
        text.as_bytes(),
        std::path::Path::new("records.jsonl"),
        cluster,
    )
    .expect("records name fixture pods");
    obs
}

/// The store path: batches cut at `cuts`, each aggregated and committed (the second batch
/// twice, as an agent resending after a lost acknowledgement), then read back.
fn through_store(
    cluster: &Cluster,
    records: &[Record],
    cuts: &[usize],
) -> (Observations, Vec<observations::Skipped>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = SqliteStore::open(dir.path().join("leash.db")).expect("store");
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c % (records.len() + 1)).collect();
    bounds.push(0);
    bounds.push(records.len());
    bounds.sort_unstable();
    for (seq, w) in bounds.windows(2).enumerate() {
        let batch = &records[w[0]..w[1]];
        let flows: Vec<FlowRecord> = batch
            .iter()
            .filter_map(|r| match r {
                Record::Flow(f) => Some(f.clone()),
                Record::Dns(_) => None,
            })
            .collect();
        let dns: Vec<DnsRecord> = batch
            .iter()
            .filter_map(|r| match r {
                Record::Dns(d) => Some(d.clone()),
                Record::Flow(_) => None,
            })
            .collect();
        let (fo, dno) = observations::from_batch(cluster, &flows, &dns);
        // Ingest reads the same records from the wire, grouped by source, one node per batch:
        // it must aggregate them alike.
        for node in ["n1", "n2"] {
            // (The wire refuses empty names, which agents never send.)
            let flows: Vec<FlowRecord> = flows
                .iter()
                .filter(|f| f.node == node && f.names.iter().all(|n| !n.is_empty()))
                .cloned()
                .collect();
            let dns: Vec<DnsRecord> = dns.iter().filter(|d| d.node == node).cloned().collect();
            let id = wire::v1::BatchId {
                node: node.into(),
                boot_id: "b".into(),
                seq: 1,
            };
            let bytes = wire::batch_to_wire(id, &flows, &dns)
                .expect("valid records")
                .encode_to_vec();
            let grouped = wire::grouped_batch_from_wire(
                wire::v1::Batch::decode(bytes.as_slice()).expect("decodes"),
            )
            .expect("valid batch");
            assert_eq!(
                observations::from_groups(cluster, node, &grouped.groups, &grouped.dns),
                observations::from_batch(cluster, &flows, &dns)
            );
        }
        let id = BatchId {
            node: "n1".into(),
            boot_id: "b".into(),
            seq: seq as u64,
        };
        assert_eq!(db.commit(&id, &fo, &dno).expect("commit"), Commit::Stored);
        if seq == 1 {
            assert_eq!(
                db.commit(&id, &fo, &dno).expect("commit"),
                Commit::Duplicate
            );
        }
    }
    // Reopen: what is read comes from the file.
    drop(db);
    let db = SqliteStore::open(dir.path().join("leash.db")).expect("store");
    observations::load(&db, cluster, None).expect("load")
}

/// A recommendation with the evidence's pod names removed (see the module docs).
fn without_pods(mut rec: Recommendation) -> Recommendation {
    for p in &mut rec.policies {
        p.evidence.pods.clear();
        for r in &mut p.rules {
            r.evidence.pods.clear();
        }
    }
    for h in &mut rec.host_network {
        h.evidence.pods.clear();
    }
    rec
}

fn opts(max_cidrs: usize) -> Options {
    Options {
        max_cidrs,
        ..Options::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_store_path_recommends_what_the_file_path_does(
        wls in prop::collection::vec(wl(3), 1..6),
        flows in prop::collection::vec(fl(), 1..40),
        dns in prop::collection::vec(dn(), 0..8),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
        max_cidrs in 1usize..5,
    ) {
        let (fx, records) = build(&wls, &flows, &dns);
        let cluster = fx.cluster();
        let direct = from_files(&cluster, &records);
        let (stored, skipped) = through_store(&cluster, &records, &cuts);
        prop_assert!(skipped.is_empty(), "{:?}", skipped);
        prop_assert_eq!(stored.unattributed_flows, direct.unattributed_flows);
        prop_assert_eq!(&stored.resolvers, &direct.resolvers);
        prop_assert_eq!(&stored.names_by_ip, &direct.names_by_ip);

        let a = recommend::recommend(&cluster, &direct, &opts(max_cidrs));
        let b = recommend::recommend(&cluster, &stored, &opts(max_cidrs));
        prop_assert!(recommend::self_check(&cluster, &cluster, &stored, &b).is_ok());
        // The Kubernetes objects (they carry no evidence, so no pod count).
        let objects = |rec: &Recommendation| recommend::all_policies(&cluster, rec);
        prop_assert_eq!(objects(&a), objects(&b));
        prop_assert_eq!(without_pods(a), without_pods(b));
    }

    #[test]
    fn with_one_pod_per_workload_the_files_are_identical(
        wls in prop::collection::vec(wl(1), 1..6),
        flows in prop::collection::vec(fl(), 1..30),
        dns in prop::collection::vec(dn(), 0..6),
        cuts in prop::collection::vec(any::<usize>(), 0..4),
    ) {
        let (fx, records) = build(&wls, &flows, &dns);
        let cluster = fx.cluster();
        let direct = from_files(&cluster, &records);
        let (stored, _) = through_store(&cluster, &records, &cuts);
        let a = recommend::recommend(&cluster, &direct, &Options::default());
        let b = recommend::recommend(&cluster, &stored, &Options::default());
        prop_assert_eq!(
            leash::render::files(&cluster, &a).expect("renders"),
            leash::render::files(&cluster, &b).expect("renders")
        );
    }
}
