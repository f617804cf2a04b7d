//! Property tests of `recommend` on random clusters and flows:
//! - the generated policies allow every observed flow (checked with the evaluator over two
//!   independent cluster views: the raw objects and leash's own model);
//! - they never open a protected range (pod / Service CIDRs, cloud metadata) beyond the
//!   addresses actually observed there, whatever the CIDR budget;
//! - every policy passes the API server's validation rules;
//! - the output is byte-for-byte the same for the same records in another order.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash::eval::{self, ClusterView, PolicySet, Verdict};
use leash::observations::Observations;
use leash::recommend::{self, EgressPeer, Options, RuleKind};
use leash_records::Record;
use proptest::prelude::*;
use support::recommend::{Fx, flow, validate};

#[derive(Debug, Clone)]
struct Svc {
    port: u16,
    named_target: bool,
    with_slice: bool,
}

#[derive(Debug, Clone)]
struct Wl {
    ns: u8,
    bare: bool,
    pods: u8,
    host: bool,
    http: u16,
    svc: Option<Svc>,
}

#[derive(Debug, Clone)]
enum Dst {
    Pod(u16, u16),
    Service(u16),
    External(u8, u16, u16),
    Node(u8, u16),
    Dns(bool),
    Protected(u8, u16),
}

#[derive(Debug, Clone)]
struct Fl {
    src: u16,
    dst: Dst,
    udp: bool,
    count: u64,
}

fn wl() -> impl Strategy<Value = Wl> {
    (
        0u8..3,
        any::<bool>(),
        1u8..=3,
        prop::bool::weighted(0.15),
        1024u16..9000,
        prop::option::weighted(
            0.6,
            (
                prop::sample::select(vec![80u16, 443, 8080]),
                any::<bool>(),
                any::<bool>(),
            ),
        ),
    )
        .prop_map(|(ns, bare, pods, host, http, svc)| Wl {
            ns,
            bare,
            pods: if bare { 1 } else { pods },
            host,
            http,
            svc: svc.map(|(port, named_target, with_slice)| Svc {
                port,
                named_target,
                with_slice,
            }),
        })
}

fn dst() -> impl Strategy<Value = Dst> {
    prop_oneof![
        3 => (any::<u16>(), 0u16..8).prop_map(|(w, p)| Dst::Pod(w, p)),
        3 => any::<u16>().prop_map(Dst::Service),
        4 => (0u8..5, any::<u16>(), 0u16..3).prop_map(|(pool, h, p)| Dst::External(pool, h, p)),
        1 => (0u8..2, 0u16..3).prop_map(|(n, p)| Dst::Node(n, p)),
        2 => any::<bool>().prop_map(Dst::Dns),
        1 => (0u8..3, 0u16..3).prop_map(|(k, p)| Dst::Protected(k, p)),
    ]
}

fn fl() -> impl Strategy<Value = Fl> {
    (any::<u16>(), dst(), prop::bool::weighted(0.2), 1u64..1000).prop_map(
        |(src, dst, udp, count)| Fl {
            src,
            dst,
            udp,
            count,
        },
    )
}

struct Built {
    fx: Fx,
    records: Vec<Record>,
}

/// Turns the random description into a snapshot and records.
fn build(wls: &[Wl], flows: &[Fl]) -> Built {
    let mut fx = Fx::new();
    fx.node("n1", "10.0.0.1", "10.244.1.0/24");
    fx.node("n2", "10.0.0.2", "10.244.2.0/24");
    fx.kubeadm_dns();
    for ns in 0..3 {
        fx.namespace(&format!("ns{ns}"));
    }
    // (namespace, pod name, ip, host) per pod; pods per workload.
    let mut pods: Vec<(String, String, String, bool)> = Vec::new();
    let mut wl_pods: Vec<Vec<usize>> = Vec::new();
    let mut services: Vec<(String, u16)> = Vec::new();
    let mut next_ip = 10u16;
    for (i, w) in wls.iter().enumerate() {
        let ns = format!("ns{}", w.ns);
        let app = format!("w{i}");
        let labels = [("app", app.as_str()), ("tier", "t")];
        let ports = [(Some("http"), w.http, "TCP")];
        let mut mine = Vec::new();
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
        if w.bare {
            let name = format!("bare{i}");
            fx.pod(&ns, &name, &labels, &[&ips[0]], w.host, "n1", &ports, None);
            mine.push(pods.len());
            pods.push((ns.clone(), name, ips[0].clone(), w.host));
        } else {
            let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
            let names = if w.host {
                // hostNetwork pods come from a DaemonSet-like owner; a bare owner name suffices.
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
                fx.deployment(&ns, &app, &labels, &ip_refs, &ports)
            };
            for (name, ip) in names.into_iter().zip(ips) {
                mine.push(pods.len());
                pods.push((ns.clone(), name, ip, w.host));
            }
        }
        if let Some(s) = &w.svc {
            let cip = format!("10.96.1.{}", i + 1);
            let target = if s.named_target {
                IntOrString::String("http".into())
            } else {
                IntOrString::Int(i32::from(w.http))
            };
            fx.service(
                &ns,
                &app,
                &cip,
                Some(&[("app", app.as_str())]),
                &[("web", s.port, "TCP", target)],
            );
            if s.with_slice {
                let eps: Vec<(&str, Option<&str>)> = mine
                    .iter()
                    .map(|&p| (pods[p].2.as_str(), Some(pods[p].1.as_str())))
                    .collect();
                fx.slice(&ns, &app, &[("web", w.http, "TCP")], &eps);
            }
            services.push((cip, s.port));
        }
        wl_pods.push(mine);
    }
    let mut records = Vec::new();
    if pods.is_empty() {
        return Built { fx, records };
    }
    for f in flows {
        let (ns, name, _, _) = &pods[usize::from(f.src) % pods.len()];
        let proto = if f.udp { "UDP" } else { "TCP" };
        let (ip, port, proto) = match &f.dst {
            Dst::Pod(p, port) => (
                pods[usize::from(*p) % pods.len()].2.clone(),
                9000 + port,
                proto,
            ),
            Dst::Service(s) if !services.is_empty() => {
                let (ip, port) = &services[usize::from(*s) % services.len()];
                (ip.clone(), *port, "TCP")
            }
            Dst::Service(_) => continue,
            Dst::External(pool, h, port) => {
                let ip = match pool {
                    0 => format!("203.0.113.{}", h % 64),
                    1 => format!("198.51.100.{}", h % 256),
                    // Outside the pod and Service ranges but next to them: a careless cover
                    // would swallow the protected neighbours.
                    2 => format!("10.244.{}.{}", 3 + h % 2, h % 256),
                    3 => format!("10.96.2.{}", h % 256),
                    _ => format!("2001:db8::{:x}", h % 40),
                };
                (ip, 443 + port, proto)
            }
            Dst::Node(n, port) => (format!("10.0.0.{}", n + 1), 10250 + port, "TCP"),
            Dst::Dns(tcp) => (
                "10.96.0.10".to_owned(),
                53,
                if *tcp { "TCP" } else { "UDP" },
            ),
            Dst::Protected(k, port) => {
                let ip = match k {
                    0 => "169.254.169.254",
                    1 => "10.244.1.250",
                    _ => "10.96.1.200",
                };
                (ip.to_owned(), 443 + port, "TCP")
            }
        };
        records.push(flow(ns, name, proto, &ip, port, f.count, &[]));
    }
    Built { fx, records }
}

fn observe(fx: &Fx, records: &[Record]) -> (leash::cluster::Cluster, Observations) {
    let cluster = fx.cluster();
    let mut obs = Observations::default();
    for r in records {
        obs.add(r, &cluster).expect("records name fixture pods");
    }
    (cluster, obs)
}

/// Every observed flow from a pod-network pod is allowed at egress, or was reported as
/// leading nowhere (a Service without backends for that port).
fn assert_all_allowed<V: ClusterView>(
    view: &V,
    set: &PolicySet,
    cluster: &leash::cluster::Cluster,
    obs: &Observations,
) -> Result<(), TestCaseError> {
    for key in obs.flows.keys() {
        let pod = &cluster.pods[key.pod];
        if pod.host_network {
            continue;
        }
        let source = view
            .pod(&pod.namespace, &pod.name)
            .expect("view knows the pod");
        let flow = eval::Flow {
            protocol: key.protocol,
            dst: key.dst,
            dst_port: key.port,
        };
        let ev = eval::evaluate(view, set, source, &flow);
        prop_assert!(
            ev.egress == Verdict::Allow || ev.problem.is_some(),
            "{}/{} -> {}:{}/{} denied: {:?}",
            pod.namespace,
            pod.name,
            key.dst,
            key.port,
            key.protocol,
            ev
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn policies_allow_every_observed_flow_and_nothing_protected(
        wls in prop::collection::vec(wl(), 1..7),
        flows in prop::collection::vec(fl(), 1..40),
        max_cidrs in 1usize..5,
        max_prefix_v4 in 16u8..=24,
    ) {
        let b = build(&wls, &flows);
        let (cluster, obs) = observe(&b.fx, &b.records);
        let opts = Options { max_cidrs, max_prefix_v4, ..Options::default() };
        let rec = recommend::recommend(&cluster, &obs, &opts);
        let policies = recommend::all_policies(&cluster, &rec);
        for p in &policies {
            let problems = validate(p);
            prop_assert!(problems.is_empty(), "{:?}: {:?}", p.metadata.name, problems);
        }
        let set = PolicySet::new(&policies).expect("generated policies compile");
        // Two independent views of the same cluster must agree that everything is allowed.
        assert_all_allowed(&b.fx.view(), &set, &cluster, &obs)?;
        assert_all_allowed(&cluster, &set, &cluster, &obs)?;
        prop_assert!(recommend::self_check(&cluster, &cluster, &obs, &rec).is_ok());

        // No policy for hostNetwork workloads (NetworkPolicy cannot restrict them), and no
        // rule-less allow policy, ever.
        for p in &rec.policies {
            let pods = cluster.workload_pods(p.workload);
            prop_assert!(pods.iter().any(|&i| !cluster.pods[i].host_network));
            prop_assert!(!p.rules.is_empty());
        }

        // Protected ranges: no ipBlock allows an address there that was not observed.
        let protected = IpNet::aggregate(&[leash::cidr::builtin_protected(), cluster.pod_and_service_ranges()].concat());
        let observed: BTreeSet<IpAddr> = obs.flows.keys().map(|k| k.dst).collect();
        for p in &rec.policies {
            for r in &p.rules {
                if r.kind != RuleKind::External {
                    continue;
                }
                let blocks: Vec<(IpNet, Vec<IpNet>)> = r
                    .peers
                    .iter()
                    .filter_map(|peer| match peer {
                        EgressPeer::Block { cidr, except, .. } => Some((*cidr, except.clone())),
                        EgressPeer::Pods { .. } => None,
                    })
                    .collect();
                for range in &protected {
                    let extra = support::recommend::allowed_unobserved_in(&blocks, range, &observed);
                    prop_assert_eq!(extra, 0, "rule {:?} opens {} unobserved addresses of {}", blocks, extra, range);
                }
            }
        }
    }

    #[test]
    fn namespace_filter_only_writes_policies_for_those_namespaces(
        wls in prop::collection::vec(wl(), 1..7),
        flows in prop::collection::vec(fl(), 1..30),
        keep in 0u8..3,
    ) {
        let b = build(&wls, &flows);
        let (cluster, obs) = observe(&b.fx, &b.records);
        let ns = format!("ns{keep}");
        let opts = Options { namespaces: [ns.clone()].into_iter().collect(), ..Options::default() };
        let rec = recommend::recommend(&cluster, &obs, &opts);
        let all = recommend::recommend(&cluster, &obs, &Options::default());
        prop_assert!(rec.policies.iter().all(|p| p.namespace == ns));
        // The same policies as an unfiltered run, for that namespace.
        let mine: Vec<_> = all.policies.iter().filter(|p| p.namespace == ns).cloned().collect();
        prop_assert_eq!(rec.policies, mine);
    }

    #[test]
    fn output_is_deterministic_under_shuffling(
        wls in prop::collection::vec(wl(), 1..6),
        flows in prop::collection::vec(fl(), 1..30),
        seed in any::<u64>(),
    ) {
        let b = build(&wls, &flows);
        let (cluster, obs) = observe(&b.fx, &b.records);
        let rec = recommend::recommend(&cluster, &obs, &Options::default());
        let files = leash::render::files(&cluster, &rec).expect("renders");

        // Same records, another order (a seeded Fisher-Yates keeps the case reproducible).
        let mut shuffled = b.records.clone();
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let j = usize::try_from(s % (i as u64 + 1)).unwrap_or(0);
            shuffled.swap(i, j);
        }
        let (cluster2, obs2) = observe(&b.fx, &shuffled);
        let rec2 = recommend::recommend(&cluster2, &obs2, &Options::default());
        prop_assert_eq!(files, leash::render::files(&cluster2, &rec2).expect("renders"));
        let stream = |c, r| leash::render::yaml_stream(&recommend::all_policies(c, r)).expect("renders");
        prop_assert_eq!(stream(&cluster, &rec), stream(&cluster2, &rec2));
    }
}

fn arb_flow_record() -> impl Strategy<Value = leash_records::FlowRecord> {
    (
        "[a-z0-9-]{1,12}",
        prop::option::of(("[a-f0-9-]{0,36}", "[a-z0-9-]{1,20}", "[a-z0-9.-]{1,30}")),
        prop::sample::select(vec![
            leash_records::Protocol::Tcp,
            leash_records::Protocol::Udp,
            leash_records::Protocol::Sctp,
        ]),
        any::<IpAddr>(),
        any::<u16>(),
        any::<u64>(),
        (0i64..4_000_000_000, 0i64..1_000_000),
        prop::collection::vec("[a-z0-9.-]{1,40}", 0..4),
        prop::option::of((any::<u64>(), any::<u64>())),
    )
        .prop_map(
            |(node, pod, protocol, dst, dst_port, count, (t, d), names, outcome)| {
                let first = chrono::DateTime::from_timestamp(t, 0).unwrap_or_default();
                leash_records::FlowRecord {
                    node,
                    pod: pod.map(|(uid, namespace, name)| leash_records::PodRef {
                        uid,
                        namespace,
                        name,
                    }),
                    cgroup: "/kubepods.slice/x".to_owned(),
                    protocol,
                    dst,
                    dst_port,
                    count,
                    first_seen: first,
                    last_seen: first + chrono::Duration::seconds(d),
                    names,
                    outcome: outcome.map(|(established, failed)| leash_records::Outcome {
                        established,
                        failed,
                    }),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The hot-loop flow parser accepts exactly what the contract parser accepts as a flow,
    /// and yields the same record.
    #[test]
    fn fast_flow_parser_agrees_with_the_contract(rec in arb_flow_record(), mutation in 0u8..6) {
        let line = Record::Flow(rec.clone()).to_json_line();
        let line = match mutation {
            0 => line,
            1 => line.replacen("\"v\":1", "\"v\":2", 1),
            2 => line.replacen("\"kind\":\"flow\"", "\"kind\":\"dns\"", 1),
            3 => line.replacen("\"dst_port\":", "\"dst_port\":-", 1),
            4 => line.replacen("\"v\":1,", "", 1),
            _ => line.replacen("\"protocol\":\"", "\"protocol\":\"x", 1),
        };
        let fast = leash::observations::parse_flow_fast(&line);
        let slow = leash::observations::parse_record(&line);
        if mutation == 0 {
            prop_assert_eq!(fast.clone(), Some(rec));
        }
        if let Some(f) = fast {
            prop_assert_eq!(slow, Ok(Record::Flow(f)));
        }
    }

    /// Neither parser panics on arbitrary text.
    #[test]
    fn record_parsers_never_panic(s in "\\PC{0,200}") {
        let _ = leash::observations::parse_flow_fast(&s);
        let _ = leash::observations::parse_record(&s);
    }
}
