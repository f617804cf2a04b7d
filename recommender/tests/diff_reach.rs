//! The symbolic reachability diff (`leash::diff::reach`), written from
//! `shared/docs/networkpolicy-semantics.md`: tables of policy-set pairs with known changes on
//! the lab cluster of the evaluator tests (plus a StatefulSet whose pods differ), and a property
//! test against brute-force evaluation with the one evaluator on random small clusters.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash::cluster::Cluster;
use leash::cnp::ClusterNetworkPolicy;
use leash::diff::reach::{Change, ReachChange, Source, Target, reachability, reachability_of};
use leash::eval::{Flow, PolicySet, Verdict, evaluate};
use leash_records::Protocol;
use proptest::prelude::*;
use support::eval::{TCP, lab_cluster_parts, pod, policy};

/// The lab cluster plus `shop/cache-0` and `shop/cache-1`, pods of StatefulSet `cache` whose
/// labels differ (`role: a` and `role: b`).
fn cluster() -> Cluster {
    let mut parts = lab_cluster_parts();
    for (name, role, ip) in [
        ("cache-0", "a", "10.244.1.60"),
        ("cache-1", "b", "10.244.2.61"),
    ] {
        parts.pods.push(
            pod("shop", name)
                .labels(&[("app", "cache"), ("role", role)])
                .owner("StatefulSet", "cache")
                .ip(ip)
                .node("n1")
                .host_ip("172.18.0.2")
                .port(Some("redis"), 6379, TCP)
                .build(),
        );
    }
    parts.model()
}

fn set(policies: &[(&str, &str)]) -> PolicySet {
    let nps: Vec<NetworkPolicy> = policies.iter().map(|(id, y)| policy(id, y)).collect();
    PolicySet::new(&nps).expect("valid policies")
}

/// One change as a line: `ns Kind/name|pod:name allowed|denied PROTO ports -> target`.
fn line(c: &ReachChange) -> String {
    let src = match &c.source {
        Source::Workload {
            namespace,
            workload,
        } => format!("{namespace} {workload}"),
        Source::Pod { namespace, pod } => format!("{namespace} pod:{pod}"),
    };
    let dst = match &c.destination {
        Target::Workload {
            namespace,
            workload,
        } => format!("{namespace} {workload}"),
        Target::Pod { namespace, pod } => format!("{namespace} pod:{pod}"),
        Target::Range { first, last } => format!("{first}-{last}"),
    };
    let change = match c.change {
        Change::NewlyAllowed => "allowed",
        Change::NewlyDenied => "denied",
    };
    let ports = if c.port_from == c.port_to {
        c.port_from.to_string()
    } else {
        format!("{}-{}", c.port_from, c.port_to)
    };
    format!("{src} {change} {} {ports} -> {dst}", c.protocol)
}

fn diff(from: &[(&str, &str)], to: &[(&str, &str)]) -> Vec<String> {
    let c = cluster();
    let out = reachability(&c, &set(from), &set(to));
    let mut sorted = out.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(out, sorted, "the diff is sorted and free of duplicates");
    out.iter().map(line).collect()
}

const WEB_DENY_ALL: (&str, &str) = (
    "shop/web-egress",
    "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: []}",
);

struct Case {
    name: &'static str,
    from: &'static [(&'static str, &'static str)],
    to: &'static [(&'static str, &'static str)],
    want: &'static [&'static str],
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case {
        name: "identical states change nothing",
        from: &[WEB_DENY_ALL, ("db/in", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}")],
        to: &[WEB_DENY_ALL, ("db/in", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}")],
        want: &[],
    },
    Case {
        name: "a renamed policy with the same rules changes nothing",
        from: &[("shop/a", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}")],
        to: &[("shop/b", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}")],
        want: &[],
    },
    Case {
        name: "ipBlock except: the excepted half becomes denied",
        from: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]}")],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}], ports: [{port: 443}]}]}")],
        want: &[
            "shop Pod/web denied TCP 443 -> 203.0.113.128-203.0.113.255",
            "shop Pod/web-2 denied TCP 443 -> 203.0.113.128-203.0.113.255",
        ],
    },
    Case {
        name: "ipBlock except lifted by a second peer in the other state",
        from: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/25]}}], ports: [{port: 443}]}]}")],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.0/25]}}, {ipBlock: {cidr: 203.0.113.16/28}}], ports: [{port: 443}]}]}")],
        want: &[
            "shop Pod/web allowed TCP 443 -> 203.0.113.16-203.0.113.31",
            "shop Pod/web-2 allowed TCP 443 -> 203.0.113.16-203.0.113.31",
        ],
    },
    Case {
        name: "endPort widened: only the new ports, merged into one range",
        from: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{port: 8000, endPort: 8010}]}]}")],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{port: 8000, endPort: 8015}, {port: 8016, endPort: 8020}]}]}")],
        want: &[
            "shop Pod/web allowed TCP 8011-8020 -> 198.51.100.0-198.51.100.255",
            "shop Pod/web-2 allowed TCP 8011-8020 -> 198.51.100.0-198.51.100.255",
        ],
    },
    Case {
        name: "named port resolves on each destination pod",
        from: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: http}]}]}")],
        to: &[WEB_DENY_ALL],
        want: &[
            "shop Pod/web denied TCP 8000 -> shop Pod/api",
            "shop Pod/web denied TCP 8001 -> shop Pod/api-2",
            "shop Pod/web-2 denied TCP 8000 -> shop Pod/api",
            "shop Pod/web-2 denied TCP 8001 -> shop Pod/api-2",
        ],
    },
    Case {
        name: "a named port never matches an address range",
        from: &[WEB_DENY_ALL],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{port: http}]}]}")],
        want: &[],
    },
    Case {
        name: "Services after DNAT: the backends on their targetPort, never the ClusterIP",
        from: &[WEB_DENY_ALL],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.96.0.0/12}}, {podSelector: {matchLabels: {app: api}}}], ports: [{port: 8000}]}]}")],
        want: &[
            "shop Pod/web allowed TCP 8000 -> shop Pod/api",
            "shop Pod/web allowed TCP 8000 -> shop Pod/api-2",
            "shop Pod/web-2 allowed TCP 8000 -> shop Pod/api",
            "shop Pod/web-2 allowed TCP 8000 -> shop Pod/api-2",
            // The Service range minus the Service addresses (10.96.0.1, .10, .20, .21, .30, .99):
            // addresses there that no Service owns are plain addresses to the evaluator.
            "shop Pod/web allowed TCP 8000 -> 10.96.0.0-10.96.0.0",
            "shop Pod/web allowed TCP 8000 -> 10.96.0.2-10.96.0.9",
            "shop Pod/web allowed TCP 8000 -> 10.96.0.11-10.96.0.19",
            "shop Pod/web allowed TCP 8000 -> 10.96.0.22-10.96.0.29",
            "shop Pod/web allowed TCP 8000 -> 10.96.0.31-10.96.0.98",
            "shop Pod/web allowed TCP 8000 -> 10.96.0.100-10.111.255.255",
            "shop Pod/web-2 allowed TCP 8000 -> 10.96.0.0-10.96.0.0",
            "shop Pod/web-2 allowed TCP 8000 -> 10.96.0.2-10.96.0.9",
            "shop Pod/web-2 allowed TCP 8000 -> 10.96.0.11-10.96.0.19",
            "shop Pod/web-2 allowed TCP 8000 -> 10.96.0.22-10.96.0.29",
            "shop Pod/web-2 allowed TCP 8000 -> 10.96.0.31-10.96.0.98",
            "shop Pod/web-2 allowed TCP 8000 -> 10.96.0.100-10.111.255.255",
        ],
    },
    Case {
        name: "ingress at the destination: only the sources the new rule leaves out",
        from: &[("db/in", "{podSelector: {matchLabels: {app: postgres}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}}], ports: [{port: pg}]}]}")],
        to: &[("db/in", "{podSelector: {matchLabels: {app: postgres}}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}, podSelector: {matchLabels: {app: web}}}], ports: [{port: pg}]}]}")],
        want: &[
            "shop StatefulSet/cache denied TCP 5432 -> db Pod/postgres",
            "shop StatefulSet/cache denied TCP 5433 -> db Pod/replica",
            "shop Pod/api denied TCP 5432 -> db Pod/postgres",
            "shop Pod/api denied TCP 5433 -> db Pod/replica",
            "shop Pod/api-2 denied TCP 5432 -> db Pod/postgres",
            "shop Pod/api-2 denied TCP 5433 -> db Pod/replica",
            "shop Pod/worker denied TCP 5432 -> db Pod/postgres",
            "shop Pod/worker denied TCP 5433 -> db Pod/replica",
        ],
    },
    Case {
        name: "hostNetwork destination: selectors never reach it",
        from: &[WEB_DENY_ALL],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: host-agent}}}], ports: [{port: 9100}]}]}")],
        want: &[],
    },
    Case {
        name: "hostNetwork destination: an ipBlock of its node reaches it",
        from: &[WEB_DENY_ALL],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 172.18.0.2/32}}], ports: [{port: 9100}]}]}")],
        want: &[
            "shop Pod/web allowed TCP 9100 -> 172.18.0.2-172.18.0.2",
            "shop Pod/web-2 allowed TCP 9100 -> 172.18.0.2-172.18.0.2",
        ],
    },
    Case {
        name: "IPv6: the whole space minus pod and Service addresses and IPv4-mapped ones",
        from: &[WEB_DENY_ALL],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: '::/0'}}], ports: [{port: 443}]}]}")],
        want: &[
            "shop Pod/web allowed TCP 443 -> ::-::fffe:ffff:ffff",
            "shop Pod/web allowed TCP 443 -> ::1:0:0:0-2001:db8:96::20",
            "shop Pod/web allowed TCP 443 -> 2001:db8:96::22-2001:db8:244::f",
            // Dual-stack pods whose IPv6 address alone changes are named by that address.
            "shop Pod/web allowed TCP 443 -> 2001:db8:244::10-2001:db8:244::10",
            "shop Pod/web allowed TCP 443 -> 2001:db8:244::11-2001:db8:244::11",
            "shop Pod/web allowed TCP 443 -> 2001:db8:244::12-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "shop Pod/web-2 allowed TCP 443 -> ::-::fffe:ffff:ffff",
            "shop Pod/web-2 allowed TCP 443 -> ::1:0:0:0-2001:db8:96::20",
            "shop Pod/web-2 allowed TCP 443 -> 2001:db8:96::22-2001:db8:244::f",
            "shop Pod/web-2 allowed TCP 443 -> 2001:db8:244::10-2001:db8:244::10",
            "shop Pod/web-2 allowed TCP 443 -> 2001:db8:244::11-2001:db8:244::11",
            "shop Pod/web-2 allowed TCP 443 -> 2001:db8:244::12-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ],
    },
    Case {
        name: "a workload whose pods differ: shared entries on the workload, the rest per pod",
        from: &[("shop/cache", "{podSelector: {matchLabels: {app: cache}}, policyTypes: [Egress], egress: []}")],
        to: &[
            ("shop/cache", "{podSelector: {matchLabels: {app: cache}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]}"),
            ("shop/cache-a", "{podSelector: {matchLabels: {app: cache, role: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{port: 443}]}]}"),
        ],
        want: &[
            "shop StatefulSet/cache allowed TCP 443 -> 203.0.113.0-203.0.113.255",
            "shop pod:cache-0 allowed TCP 443 -> 198.51.100.0-198.51.100.255",
        ],
    },
    Case {
        name: "a workload whose pods differ by one port: the shared port on the workload",
        from: &[("shop/cache", "{podSelector: {matchLabels: {app: cache}}, policyTypes: [Egress], egress: []}")],
        to: &[
            ("shop/cache", "{podSelector: {matchLabels: {app: cache}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]}"),
            ("shop/cache-a", "{podSelector: {matchLabels: {role: a}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 444}]}]}"),
        ],
        want: &[
            "shop StatefulSet/cache allowed TCP 443 -> 203.0.113.0-203.0.113.255",
            "shop pod:cache-0 allowed TCP 444 -> 203.0.113.0-203.0.113.255",
        ],
    },
    Case {
        name: "a destination workload whose pods differ is split into pods",
        from: &[WEB_DENY_ALL],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: cache}}}], ports: [{port: 6379}]}, {to: [{podSelector: {matchLabels: {role: a}}}], ports: [{port: 6380}]}]}")],
        want: &[
            "shop Pod/web allowed TCP 6379 -> shop StatefulSet/cache",
            "shop Pod/web allowed TCP 6380 -> shop pod:cache-0",
            "shop Pod/web-2 allowed TCP 6379 -> shop StatefulSet/cache",
            "shop Pod/web-2 allowed TCP 6380 -> shop pod:cache-0",
        ],
    },
    Case {
        name: "protocols: a UDP-only rule leaves TCP and SCTP denied",
        from: &[WEB_DENY_ALL],
        to: &[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{protocol: UDP}]}]}")],
        want: &[
            "shop Pod/web allowed UDP 0-65535 -> 192.0.2.0-192.0.2.255",
            "shop Pod/web-2 allowed UDP 0-65535 -> 192.0.2.0-192.0.2.255",
        ],
    },
];

#[test]
fn diff_tables() {
    let mut failures = Vec::new();
    for case in CASES {
        let mut got = diff(case.from, case.to);
        got.sort();
        let mut want: Vec<String> = case.want.iter().map(ToString::to_string).collect();
        want.sort();
        if got != want {
            failures.push(format!(
                "{}:\n  got:\n    {}\n  want:\n    {}",
                case.name,
                got.join("\n    "),
                want.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Denying all ingress of `db/replica` (on node n1) denies it to every source, except the
/// hostNetwork pod of n1: ingress from a pod's own node is always allowed.
#[test]
fn own_node_ingress_stays_allowed() {
    let got = diff(
        &[],
        &[(
            "db/in",
            "{podSelector: {matchLabels: {role: replica}}, policyTypes: [Ingress]}",
        )],
    );
    assert!(got.iter().all(|l| !l.contains("host-agent")), "{got:#?}");
    for proto in ["TCP", "UDP", "SCTP"] {
        let want = format!("shop Pod/web denied {proto} 0-65535 -> db Pod/replica");
        assert!(got.contains(&want), "{want} missing from {got:#?}");
    }
    // Every other source (12 besides host-agent; the two cache pods are one StatefulSet) loses
    // the replica on 3 protocols.
    assert_eq!(got.len(), 12 * 3, "{got:#?}");
}

/// A hostNetwork source: egress unrestricted, ingress only by ipBlock of its node address.
#[test]
fn hostnetwork_source_reaches_by_node_address_only() {
    let got = diff(
        &[(
            "db/in",
            "{podSelector: {matchLabels: {app: postgres}}, policyTypes: [Ingress]}",
        )],
        &[(
            "db/in",
            "{podSelector: {matchLabels: {app: postgres}}, policyTypes: [Ingress], ingress: [{from: [{ipBlock: {cidr: 172.18.0.0/24}}, {podSelector: {matchLabels: {app: host-agent}}, namespaceSelector: {}}], ports: [{port: 5432}]}]}",
        )],
    );
    // host-agent (n1, 172.18.0.2) gains postgres (n2); the replica on its own node was never
    // denied to it.
    assert_eq!(
        got,
        ["shop Pod/host-agent allowed TCP 5432 -> db Pod/postgres"]
    );
}

// ---- ClusterNetworkPolicy tiers ----

fn cnp(name: &str, spec: &str) -> ClusterNetworkPolicy {
    let spec: serde_json::Value =
        serde_norway::from_str(spec).unwrap_or_else(|e| panic!("{name}: bad spec: {e}"));
    serde_json::from_value(serde_json::json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A state: NetworkPolicies `(ns/name, spec)` and ClusterNetworkPolicies `(name, spec)`.
type State = (
    &'static [(&'static str, &'static str)],
    &'static [(&'static str, &'static str)],
);

fn tiered_set((nps, cnps): State) -> PolicySet {
    let cnps: Vec<ClusterNetworkPolicy> = cnps.iter().map(|(n, y)| cnp(n, y)).collect();
    set(nps)
        .with_cluster_policies(&cnps)
        .expect("valid cluster policies")
}

fn tiered_diff(from: State, to: State) -> Vec<String> {
    let c = cluster();
    let out = reachability(&c, &tiered_set(from), &tiered_set(to));
    let mut sorted = out.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(out, sorted, "the diff is sorted and free of duplicates");
    out.iter().map(line).collect()
}

struct TierCase {
    name: &'static str,
    from: State,
    to: State,
    want: &'static [&'static str],
}

const WEB_ONLY: &str = "{pods: {podSelector: {matchLabels: {app: web}}}}";

#[rustfmt::skip]
const TIER_CASES: &[TierCase] = &[
    TierCase {
        name: "Pass then NetworkPolicy: the Admin Deny becomes a Pass, the NetworkPolicy allows 443",
        from: (&[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]}")],
               &[("admin", "{tier: Admin, priority: 1, subject: {pods: {podSelector: {matchLabels: {app: web}}}}, egress: [{action: Deny, to: [{networks: [203.0.113.0/24]}]}]}")]),
        to: (&[("shop/web-egress", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]}")],
             &[("admin", "{tier: Admin, priority: 1, subject: {pods: {podSelector: {matchLabels: {app: web}}}}, egress: [{action: Pass, to: [{networks: [203.0.113.0/24]}]}]}")]),
        want: &[
            "shop Pod/web allowed TCP 443 -> 203.0.113.0-203.0.113.255",
            "shop Pod/web-2 allowed TCP 443 -> 203.0.113.0-203.0.113.255",
        ],
    },
    TierCase {
        name: "a NetworkPolicy selecting the pod hides the Baseline",
        from: (&[("shop/web-all", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{}]}")], &[]),
        to: (&[("shop/web-all", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{}]}")],
             &[("base", "{tier: Baseline, priority: 1, subject: {namespaces: {matchLabels: {team: shop}}}, egress: [{action: Deny, to: [{networks: [203.0.113.0/24]}]}]}")]),
        want: &[
            "shop Pod/api denied TCP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop Pod/api denied UDP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop Pod/api denied SCTP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop Pod/api-2 denied TCP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop Pod/api-2 denied UDP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop Pod/api-2 denied SCTP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop Pod/worker denied TCP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop Pod/worker denied UDP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop Pod/worker denied SCTP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop StatefulSet/cache denied TCP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop StatefulSet/cache denied UDP 0-65535 -> 203.0.113.0-203.0.113.255",
            "shop StatefulSet/cache denied SCTP 0-65535 -> 203.0.113.0-203.0.113.255",
        ],
    },
    TierCase {
        name: "equal priorities that disagree deny where both match",
        from: (&[], &[("b-accept", "{tier: Admin, priority: 5, subject: {pods: {podSelector: {matchLabels: {app: web}}}}, egress: [{action: Accept, to: [{networks: [203.0.113.0/24]}]}]}")]),
        to: (&[], &[
            ("b-accept", "{tier: Admin, priority: 5, subject: {pods: {podSelector: {matchLabels: {app: web}}}}, egress: [{action: Accept, to: [{networks: [203.0.113.0/24]}]}]}"),
            ("a-deny", "{tier: Admin, priority: 5, subject: {pods: {podSelector: {matchLabels: {app: web}}}}, egress: [{action: Deny, to: [{networks: [203.0.113.0/25]}], protocols: [{tcp: {destinationPort: {number: 443}}}]}]}"),
        ]),
        want: &[
            "shop Pod/web denied TCP 443 -> 203.0.113.0-203.0.113.127",
            "shop Pod/web-2 denied TCP 443 -> 203.0.113.0-203.0.113.127",
        ],
    },
    TierCase {
        name: "ingress: an Admin Deny at the destination from a namespace, on one port",
        from: (&[], &[]),
        to: (&[], &[("protect-db", "{tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {team: data}}}, ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: shop}}}], protocols: [{tcp: {destinationPort: {number: 5432}}}]}]}")]),
        // Every pod of `db` (the port is a number, whatever the pod listens on); not
        // host-agent: a hostNetwork source is never a namespaces peer.
        want: &[
            "shop Pod/api denied TCP 5432 -> db Pod/postgres",
            "shop Pod/api denied TCP 5432 -> db Pod/replica",
            "shop Pod/api-2 denied TCP 5432 -> db Pod/postgres",
            "shop Pod/api-2 denied TCP 5432 -> db Pod/replica",
            "shop Pod/web denied TCP 5432 -> db Pod/postgres",
            "shop Pod/web denied TCP 5432 -> db Pod/replica",
            "shop Pod/web-2 denied TCP 5432 -> db Pod/postgres",
            "shop Pod/web-2 denied TCP 5432 -> db Pod/replica",
            "shop Pod/worker denied TCP 5432 -> db Pod/postgres",
            "shop Pod/worker denied TCP 5432 -> db Pod/replica",
            "shop StatefulSet/cache denied TCP 5432 -> db Pod/postgres",
            "shop StatefulSet/cache denied TCP 5432 -> db Pod/replica",
        ],
    },
    TierCase {
        name: "a named port of the tier resolves on each destination pod",
        from: (&[], &[]),
        to: (&[], &[("no-pg", "{tier: Admin, priority: 1, subject: {pods: {podSelector: {matchLabels: {app: web}}}}, egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{destinationNamedPort: pg}]}]}")]),
        want: &[
            "shop Pod/web denied TCP 5432 -> db Pod/postgres",
            "shop Pod/web denied TCP 5433 -> db Pod/replica",
            "shop Pod/web-2 denied TCP 5432 -> db Pod/postgres",
            "shop Pod/web-2 denied TCP 5433 -> db Pod/replica",
        ],
    },
    TierCase {
        name: "identical tiers with renamed NetworkPolicies change nothing",
        from: (&[("shop/a", "{podSelector: {}, policyTypes: [Egress]}")], &[("base", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")]),
        to: (&[("shop/b", "{podSelector: {}, policyTypes: [Egress]}")], &[("base", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")]),
        want: &[],
    },
];

#[test]
fn tier_tables() {
    let _ = WEB_ONLY;
    let mut failures = Vec::new();
    for case in TIER_CASES {
        let mut got = tiered_diff(case.from, case.to);
        got.sort();
        let mut want: Vec<String> = case.want.iter().map(ToString::to_string).collect();
        want.sort();
        if got != want {
            failures.push(format!(
                "{}:\n  got:\n    {}\n  want:\n    {}",
                case.name,
                got.join("\n    "),
                want.join("\n    ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The cluster's source workloads: every workload with a pod-network pod.
fn pod_network_workloads(c: &Cluster) -> BTreeSet<String> {
    c.pods
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.host_network)
        .map(|(pid, p)| {
            let w = &c.workloads[c.workload_of(pid).expect("workload")];
            format!("{} {}/{}", p.namespace, w.kind, w.name)
        })
        .collect()
}

/// An Admin Deny of the metadata address for every namespace: every pod-network workload
/// loses 169.254.169.254 on every port of every protocol, and nothing else changes.
#[test]
fn metadata_admin_deny_on_every_namespace() {
    let got = tiered_diff(
        (
            &[(
                "shop/web-egress",
                "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{}]}",
            )],
            &[],
        ),
        (
            &[(
                "shop/web-egress",
                "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{}]}",
            )],
            &[(
                "metadata",
                "{tier: Admin, priority: 0, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [169.254.169.254/32]}]}]}",
            )],
        ),
    );
    let c = cluster();
    let mut want = Vec::new();
    for w in pod_network_workloads(&c) {
        for proto in ["TCP", "UDP", "SCTP"] {
            want.push(format!(
                "{w} denied {proto} 0-65535 -> 169.254.169.254-169.254.169.254"
            ));
        }
    }
    let mut got_sorted = got.clone();
    got_sorted.sort();
    want.sort();
    assert_eq!(got_sorted, want);
    assert!(
        want.iter().any(|l| l.starts_with("shop Pod/web ")),
        "a workload whose NetworkPolicy allows everything loses it too"
    );
}

/// A Baseline default deny with a DNS Accept, on the namespace `db` that no NetworkPolicy
/// covers: its workloads lose everything but DNS to the DNS pods; no other namespace changes.
#[test]
fn baseline_default_deny_keeps_dns_only() {
    let base = "{tier: Baseline, priority: 10, subject: {namespaces: {matchLabels: {team: data}}}, egress: [\
        {action: Accept, to: [{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}}], protocols: [{udp: {destinationPort: {number: 53}}}, {tcp: {destinationPort: {number: 53}}}]},\
        {action: Deny, to: [{namespaces: {}}, {networks: [0.0.0.0/0, '::/0']}]}]}";
    let to_cnps: &'static [(&'static str, &'static str)] =
        Box::leak(Box::new([("baseline", base)]));
    let got = tiered_diff((&[], &[]), (&[], to_cnps));
    assert!(!got.is_empty());
    let c = cluster();
    let sources: BTreeSet<&str> = got
        .iter()
        .map(|l| l.split(" denied ").next().unwrap_or(l))
        .collect();
    assert_eq!(
        sources,
        BTreeSet::from(["db Pod/postgres", "db Pod/replica"]),
        "{got:#?}"
    );
    assert!(got.iter().all(|l| l.contains(" denied ")), "{got:#?}");
    // Towards the DNS pods only port 53 of UDP and TCP stays allowed.
    for src in ["db Pod/postgres", "db Pod/replica"] {
        for dns in ["coredns-a", "coredns-b"] {
            let mut to_dns: Vec<&String> = got
                .iter()
                .filter(|l| l.starts_with(src) && l.ends_with(&format!("kube-system Pod/{dns}")))
                .collect();
            to_dns.sort();
            let want: Vec<String> = [
                "SCTP 0-65535",
                "TCP 0-52",
                "TCP 54-65535",
                "UDP 0-52",
                "UDP 54-65535",
            ]
            .iter()
            .map(|p| format!("{src} denied {p} -> kube-system Pod/{dns}"))
            .collect();
            assert_eq!(to_dns, want.iter().collect::<Vec<_>>());
        }
        // Every other pod-network workload, on every port.
        for w in pod_network_workloads(&c) {
            if w.starts_with("kube-system ") {
                continue;
            }
            for proto in ["TCP", "UDP", "SCTP"] {
                let l = format!("{src} denied {proto} 0-65535 -> {w}");
                assert!(got.contains(&l), "missing {l}");
            }
        }
        // And the world: an address range around 203.0.113.10 on every port.
        for proto in ["TCP", "UDP", "SCTP"] {
            let world = got.iter().any(|l| {
                l.strip_prefix(&format!("{src} denied {proto} 0-65535 -> "))
                    .and_then(|r| r.split_once('-'))
                    .and_then(|(a, b)| Some((a.parse::<IpAddr>().ok()?, b.parse::<IpAddr>().ok()?)))
                    .is_some_and(|(a, b)| {
                        let ip: IpAddr = "203.0.113.10".parse().expect("ip");
                        a.is_ipv4() && a <= ip && ip <= b
                    })
            });
            assert!(world, "{src} {proto}: {got:#?}");
        }
    }
}

// ---- the property: symbolic diff ⇔ brute-force evaluation ----

const NAMESPACES: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
struct PodSpec {
    ns: usize,
    app: usize,
    tier: Option<usize>,
    in_set: bool,
    node: usize,
    v6: bool,
    http: u16,
}

fn pod_strategy() -> impl Strategy<Value = PodSpec> {
    (
        0..2usize,
        0..2usize,
        proptest::option::of(0..2usize),
        any::<bool>(),
        0..2usize,
        any::<bool>(),
        prop_oneof![Just(8080u16), Just(8081u16)],
    )
        .prop_map(|(ns, app, tier, in_set, node, v6, http)| PodSpec {
            ns,
            app,
            tier,
            in_set,
            node,
            v6,
            http,
        })
}

const APPS: [&str; 2] = ["web", "db"];
const TIERS: [&str; 2] = ["front", "back"];

const BLOCKS: &[(&str, &[&str])] = &[
    ("10.244.0.0/24", &["10.244.0.12/31"]),
    ("10.244.0.8/29", &[]),
    ("203.0.113.0/24", &["203.0.113.128/25"]),
    ("203.0.113.64/26", &[]),
    ("0.0.0.0/0", &["10.0.0.0/8"]),
    ("172.18.0.2/32", &[]),
    ("::/0", &[]),
    ("2001:db8::/64", &["2001:db8::12/127"]),
];

fn peer_strategy() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        (
            0..2usize,
            proptest::option::of(0..2usize),
            proptest::option::of(0..3usize)
        )
            .prop_map(|(app, tier, ns)| {
                let mut peer = serde_json::json!({"podSelector": {"matchLabels": {"app": APPS[app]}}});
                if let Some(t) = tier {
                    peer["podSelector"]["matchExpressions"] =
                        serde_json::json!([{"key": "tier", "operator": "NotIn", "values": [TIERS[t]]}]);
                }
                match ns {
                    Some(2) => peer["namespaceSelector"] = serde_json::json!({}),
                    Some(n) => {
                        peer["namespaceSelector"] =
                            serde_json::json!({"matchLabels": {"team": NAMESPACES[n]}});
                    }
                    None => {}
                }
                peer
            }),
        (0..BLOCKS.len()).prop_map(|i| {
            let (cidr, except) = BLOCKS[i];
            serde_json::json!({"ipBlock": {"cidr": cidr, "except": except}})
        }),
    ]
}

fn port_strategy() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!({"port": 80})),
        Just(serde_json::json!({"port": 8080, "endPort": 8090})),
        Just(serde_json::json!({"port": "http"})),
        Just(serde_json::json!({"protocol": "UDP"})),
        Just(serde_json::json!({"port": 53, "protocol": "UDP"})),
        Just(serde_json::json!({"port": 1, "endPort": 79, "protocol": "SCTP"})),
        Just(serde_json::json!({})),
    ]
}

fn rule_strategy(peer_key: &'static str) -> impl Strategy<Value = serde_json::Value> {
    (
        proptest::collection::vec(peer_strategy(), 0..3),
        proptest::collection::vec(port_strategy(), 0..3),
    )
        .prop_map(move |(peers, ports)| serde_json::json!({peer_key: peers, "ports": ports}))
}

/// A policy spec (namespace index, JSON spec).
fn policy_strategy() -> impl Strategy<Value = (usize, serde_json::Value)> {
    (
        0..2usize,
        proptest::option::of(0..2usize),
        0..3usize,
        proptest::collection::vec(rule_strategy("to"), 0..3),
        proptest::collection::vec(rule_strategy("from"), 0..3),
    )
        .prop_map(|(ns, app, types, egress, ingress)| {
            let selector = match app {
                Some(a) => serde_json::json!({"matchLabels": {"app": APPS[a]}}),
                None => serde_json::json!({}),
            };
            let types = match types {
                0 => vec!["Egress"],
                1 => vec!["Ingress"],
                _ => vec!["Ingress", "Egress"],
            };
            (
                ns,
                serde_json::json!({"podSelector": selector, "policyTypes": types, "egress": egress, "ingress": ingress}),
            )
        })
}

/// `networks` of the random ClusterNetworkPolicies (canonical CIDRs, as the CRD's CEL rule
/// wants them).
const NETWORKS: &[&str] = &[
    "10.244.0.8/29",
    "10.244.0.12/31",
    "203.0.113.0/24",
    "203.0.113.64/26",
    "0.0.0.0/0",
    "172.18.0.2/32",
    "169.254.169.254/32",
    "2001:db8::/64",
];

/// A ClusterNetworkPolicy selector of pods: `namespaces` or `pods` (with or without a
/// namespaceSelector), over the labels of the random cluster.
fn cnp_pods_strategy() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        proptest::option::of(0..2usize).prop_map(|ns| match ns {
            Some(n) => serde_json::json!({"namespaces": {"matchLabels": {"team": NAMESPACES[n]}}}),
            None => serde_json::json!({"namespaces": {}}),
        }),
        (0..2usize, proptest::option::of(0..2usize), proptest::option::of(0..2usize)).prop_map(
            |(app, tier, ns)| {
                let mut pods = serde_json::json!({"podSelector": {"matchLabels": {"app": APPS[app]}}});
                if let Some(t) = tier {
                    pods["podSelector"]["matchExpressions"] =
                        serde_json::json!([{"key": "tier", "operator": "NotIn", "values": [TIERS[t]]}]);
                }
                if let Some(n) = ns {
                    pods["namespaceSelector"] = serde_json::json!({"matchLabels": {"team": NAMESPACES[n]}});
                }
                serde_json::json!({"pods": pods})
            }
        ),
    ]
}

/// An egress peer: namespaces, pods, networks, nodes or domainNames (which the symbolic diff
/// and `evaluate` without names both match to nothing).
fn cnp_egress_peer_strategy() -> impl Strategy<Value = (serde_json::Value, bool)> {
    prop_oneof![
        3 => cnp_pods_strategy().prop_map(|p| (p, false)),
        3 => proptest::sample::subsequence(NETWORKS.to_vec(), 1..3)
            .prop_map(|n| (serde_json::json!({"networks": n}), true)),
        1 => proptest::option::of(0..2usize).prop_map(|z| {
            let sel = match z {
                Some(z) => serde_json::json!({"matchLabels": {"zone": ZONES[z]}}),
                None => serde_json::json!({}),
            };
            (serde_json::json!({"nodes": sel}), true)
        }),
        1 => Just((serde_json::json!({"domainNames": ["api.example.com"]}), true)),
    ]
}

fn cnp_port_strategy() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::json!({"tcp": {"destinationPort": {"number": 80}}})),
        Just(
            serde_json::json!({"tcp": {"destinationPort": {"range": {"start": 8080, "end": 8090}}}})
        ),
        Just(serde_json::json!({"udp": {"destinationPort": {"number": 53}}})),
        Just(serde_json::json!({"sctp": {"destinationPort": {"range": {"start": 1, "end": 79}}}})),
        Just(serde_json::json!({"destinationNamedPort": "http"})),
    ]
}

const ACTIONS: [&str; 3] = ["Accept", "Deny", "Pass"];
const ZONES: [&str; 2] = ["a", "b"];

fn cnp_rule_strategy(egress: bool) -> impl Strategy<Value = serde_json::Value> {
    (
        0..3usize,
        proptest::collection::vec(cnp_egress_peer_strategy(), 1..3),
        proptest::collection::vec(cnp_pods_strategy(), 1..3),
        proptest::collection::vec(cnp_port_strategy(), 0..3),
    )
        .prop_map(move |(action, to, from, mut ports)| {
            let mut rule = serde_json::json!({"action": ACTIONS[action]});
            if egress {
                // The CRD refuses named ports next to address peers.
                if to.iter().any(|(_, address)| *address) {
                    ports.retain(|p| p.get("destinationNamedPort").is_none());
                }
                rule["to"] = to.into_iter().map(|(p, _)| p).collect();
            } else {
                rule["from"] = from.into();
            }
            if !ports.is_empty() {
                rule["protocols"] = ports.into();
            }
            rule
        })
}

/// A ClusterNetworkPolicy spec: either tier, a priority among few (equal ones conflict),
/// a subject, and egress and ingress rules.
fn cnp_strategy() -> impl Strategy<Value = serde_json::Value> {
    (
        any::<bool>(),
        0..3i32,
        cnp_pods_strategy(),
        proptest::collection::vec(cnp_rule_strategy(true), 0..3),
        proptest::collection::vec(cnp_rule_strategy(false), 0..3),
    )
        .prop_map(|(admin, priority, subject, egress, ingress)| {
            serde_json::json!({
                "tier": if admin { "Admin" } else { "Baseline" },
                "priority": priority,
                "subject": subject,
                "egress": egress,
                "ingress": ingress,
            })
        })
}

/// Per name c0..c2: absent, or one of two variants, in each state.
fn cnp_states_strategy()
-> impl Strategy<Value = (Vec<ClusterNetworkPolicy>, Vec<ClusterNetworkPolicy>)> {
    proptest::collection::vec((cnp_strategy(), cnp_strategy(), 0..3usize, 0..3usize), 0..4)
        .prop_map(|slots| {
            let mut from = Vec::new();
            let mut to = Vec::new();
            for (i, (v1, v2, f, t)) in slots.into_iter().enumerate() {
                let variants = [None, Some(&v1), Some(&v2)];
                for (choice, out) in [(f, &mut from), (t, &mut to)] {
                    if let Some(Some(spec)) = variants.get(choice) {
                        out.push(
                            serde_json::from_value(serde_json::json!({
                                "apiVersion": "policy.networking.k8s.io/v1alpha2",
                                "kind": "ClusterNetworkPolicy",
                                "metadata": {"name": format!("c{i}")},
                                "spec": spec,
                            }))
                            .expect("cluster policy"),
                        );
                    }
                }
            }
            (from, to)
        })
}

/// Per policy name p0..p3: absent, or one of two variants, in each state.
fn states_strategy() -> impl Strategy<Value = (Vec<NetworkPolicy>, Vec<NetworkPolicy>)> {
    proptest::collection::vec(
        (policy_strategy(), policy_strategy(), 0..3usize, 0..3usize),
        0..4,
    )
    .prop_map(|slots| {
        let mut from = Vec::new();
        let mut to = Vec::new();
        for (i, (v1, v2, f, t)) in slots.into_iter().enumerate() {
            let variants = [None, Some(&v1), Some(&v2)];
            for (choice, out) in [(f, &mut from), (t, &mut to)] {
                if let Some(Some((ns, spec))) = variants.get(choice) {
                    out.push(
                        serde_json::from_value(serde_json::json!({
                            "apiVersion": "networking.k8s.io/v1",
                            "kind": "NetworkPolicy",
                            "metadata": {"name": format!("p{i}"), "namespace": NAMESPACES[*ns]},
                            "spec": spec,
                        }))
                        .expect("policy"),
                    );
                }
            }
        }
        (from, to)
    })
}

fn random_cluster(pods: &[PodSpec]) -> Cluster {
    let namespaces: Vec<_> = NAMESPACES
        .iter()
        .map(|n| support::eval::namespace(n, &[("team", n)]))
        .collect();
    let mut objects = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let mut b = pod(NAMESPACES[p.ns], &format!("p{i}"))
            .ip(&format!("10.244.0.{}", 10 + i))
            .node(&format!("n{}", p.node + 1))
            .host_ip(&format!("172.18.0.{}", p.node + 2))
            .port(Some("http"), i32::from(p.http), TCP);
        let mut labels = vec![("app", APPS[p.app])];
        if let Some(t) = p.tier {
            labels.push(("tier", TIERS[t]));
        }
        b = b.labels(&labels);
        if p.in_set {
            b = b.owner("StatefulSet", "set");
        }
        if p.v6 {
            b = b.ip(&format!("2001:db8::{:x}", 0x10 + i));
        }
        objects.push(b.build());
    }
    // A hostNetwork pod on n1, labelled like the others (selectors must still miss it).
    objects.push(
        pod("a", "host")
            .labels(&[("app", "web")])
            .host_network()
            .node("n1")
            .host_ip("172.18.0.2")
            .ip("172.18.0.2")
            .port(Some("http"), 8080, TCP)
            .build(),
    );
    // A pending pod without an address: a source, never a destination.
    objects.push(
        pod("b", "pending")
            .labels(&[("app", "db")])
            .phase("Pending")
            .build(),
    );
    let mut service = support::eval::service(
        "a",
        "db",
        &["10.96.0.10"],
        &[("app", "db")],
        &[("", 80, "http", TCP)],
    );
    // Also a NodePort: on a node's address that port leads to the Service's backends.
    if let Some(spec) = service.spec.as_mut() {
        spec.type_ = Some("NodePort".to_owned());
        for p in spec.ports.iter_mut().flatten() {
            p.node_port = Some(NODE_PORT.into());
        }
    }
    let nodes: Vec<k8s_openapi::api::core::v1::Node> = NODES
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("n{}", i + 1), "labels": {"zone": ZONES[i]}},
                "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
            }))
            .expect("node")
        })
        .collect();
    Cluster::from_objects(
        &namespaces,
        &nodes,
        &objects,
        &[service],
        &[],
        &[],
        &[],
        &[],
        &[],
        &[],
        &[],
    )
    .expect("valid cluster")
}

/// The addresses worth probing: every block boundary ±1, pod and node addresses, the ends of
/// both spaces, and some random ones (never a Service address: those are not destinations).
fn probe_addresses(c: &Cluster, random: &[IpAddr]) -> BTreeSet<IpAddr> {
    let mut out: BTreeSet<IpAddr> = random.iter().copied().collect();
    let networks = NETWORKS.iter().map(|n| (n, &[] as &[&str]));
    for (cidr, except) in BLOCKS.iter().map(|(c, e)| (c, *e)).chain(networks) {
        for net in std::iter::once(cidr).chain(except.iter()) {
            let net: ipnet::IpNet = net.parse().expect("cidr");
            for a in [net.network(), net.broadcast()] {
                out.insert(a);
                out.extend(step(a, 1));
                out.extend(step(a, -1));
            }
        }
    }
    for p in &c.pods {
        out.extend(p.ips.iter().copied());
    }
    for n in NODES {
        out.insert(n.parse().expect("ip"));
    }
    for a in [
        "0.0.0.0",
        "255.255.255.255",
        "::",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    ] {
        out.insert(a.parse().expect("ip"));
    }
    out.retain(|a| c.service_by_ip(*a).is_none() && a.to_canonical() == *a);
    out
}

fn step(a: IpAddr, d: i8) -> Option<IpAddr> {
    match a {
        IpAddr::V4(v) => {
            let n = u32::from(v);
            let n = if d > 0 {
                n.checked_add(1)
            } else {
                n.checked_sub(1)
            }?;
            Some(IpAddr::V4(n.into()))
        }
        IpAddr::V6(v) => {
            let n = u128::from(v);
            let n = if d > 0 {
                n.checked_add(1)
            } else {
                n.checked_sub(1)
            }?;
            Some(IpAddr::V6(n.into()))
        }
    }
}

const PROBE_PORTS: &[u16] = &[
    0, 1, 52, 53, 54, 79, 80, 81, 8079, 8080, 8081, 8090, 8091, NODE_PORT, 65535,
];

const NODE_PORT: u16 = 30080;
const NODES: [&str; 2] = ["172.18.0.2", "172.18.0.3"];

fn source_matches(c: &Cluster, pid: usize, s: &Source) -> bool {
    let p = &c.pods[pid];
    match s {
        Source::Pod { namespace, pod } => *namespace == p.namespace && *pod == p.name,
        Source::Workload {
            namespace,
            workload,
        } => {
            let w = &c.workloads[c.workload_of(pid).expect("workload")];
            *namespace == w.namespace && *workload == format!("{}/{}", w.kind, w.name)
        }
    }
}

fn target_matches(c: &Cluster, ip: IpAddr, t: &Target) -> bool {
    match t {
        Target::Range { first, last } => {
            first.is_ipv4() == ip.is_ipv4() && *first <= ip && ip <= *last
        }
        Target::Pod { namespace, pod } => c
            .pod_by_ip(ip)
            .is_some_and(|d| c.pods[d].namespace == *namespace && c.pods[d].name == *pod),
        Target::Workload {
            namespace,
            workload,
        } => c.pod_by_ip(ip).is_some_and(|d| {
            let w = &c.workloads[c.workload_of(d).expect("workload")];
            w.namespace == *namespace && format!("{}/{}", w.kind, w.name) == *workload
        }),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn symbolic_diff_agrees_with_brute_force(
        pods in proptest::collection::vec(pod_strategy(), 1..7),
        (from, to) in states_strategy(),
        (cnp_from, cnp_to) in cnp_states_strategy(),
        random in proptest::collection::vec(
            prop_oneof![
                any::<u32>().prop_map(|a| IpAddr::V4(a.into())),
                any::<u128>().prop_map(|a| IpAddr::V6(a.into())),
                (0u32..256).prop_map(|a| IpAddr::V4((0xcb00_7100 + a).into())),
            ],
            0..8,
        ),
    ) {
        let c = random_cluster(&pods);
        let from = PolicySet::new(&from).and_then(|s| s.with_cluster_policies(&cnp_from));
        let to = PolicySet::new(&to).and_then(|s| s.with_cluster_policies(&cnp_to));
        let (Ok(from), Ok(to)) = (from, to) else {
            // Random specs may be invalid (an ipBlock except of the other family never is
            // generated, but an empty peer list with ports is fine): skip what the API
            // server would refuse.
            return Ok(());
        };
        let diff = reachability(&c, &from, &to);
        // Sources restricted by namespace give exactly those sources' changes.
        for ns in NAMESPACES {
            let restricted = reachability_of(&c, &from, &to, |n| n == ns);
            let filtered: Vec<&ReachChange> = diff
                .iter()
                .filter(|e| match &e.source {
                    Source::Workload { namespace, .. } | Source::Pod { namespace, .. } => {
                        namespace == ns
                    }
                })
                .collect();
            prop_assert_eq!(restricted.iter().collect::<Vec<_>>(), filtered);
        }
        let addrs = probe_addresses(&c, &random);
        for (pid, src) in c.pods.iter().enumerate() {
            let entries: Vec<&ReachChange> =
                diff.iter().filter(|e| source_matches(&c, pid, &e.source)).collect();
            for &dst in &addrs {
                let dst_entries: Vec<&&ReachChange> =
                    entries.iter().filter(|e| target_matches(&c, dst, &e.destination)).collect();
                for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                    for &dst_port in PROBE_PORTS {
                        let matching = dst_entries.iter().filter(|e| {
                            e.protocol == protocol && e.port_from <= dst_port && dst_port <= e.port_to
                        });
                        if protocol == Protocol::Tcp
                            && dst_port == NODE_PORT
                            && NODES.iter().any(|n| n.parse() == Ok(dst))
                        {
                            // A Service connection: the diff names its backends instead.
                            prop_assert_eq!(matching.count(), 0, "{} {}", dst, dst_port);
                            continue;
                        }
                        let flow = Flow { protocol, dst, dst_port };
                        let v = [&from, &to].map(|s| evaluate(&c, s, src, &flow).verdict);
                        let want = match v {
                            [Verdict::Deny, Verdict::Allow] => Some(Change::NewlyAllowed),
                            [Verdict::Allow, Verdict::Deny] => Some(Change::NewlyDenied),
                            _ => None,
                        };
                        let got: BTreeSet<Change> = matching.map(|e| e.change).collect();
                        prop_assert_eq!(
                            got,
                            want.into_iter().collect::<BTreeSet<_>>(),
                            "{}/{} -> {} {}/{}: from {:?} to {:?}",
                            src.namespace, src.name, dst, dst_port, protocol, v[0], v[1]
                        );
                    }
                }
            }
        }
    }
}
