//! Semantics tables of ClusterNetworkPolicy in the one evaluator, written from the API's
//! documentation (network-policy-api v0.2.0, the CRD's field docs): the Admin tier by
//! priority (first matching rule decides; Accept allows, Deny denies, Pass goes on), then
//! NetworkPolicies (when any selects the pod in that direction they decide, and the Baseline
//! tier is never reached), then the Baseline tier, then allow. Equal priorities that match
//! and disagree are undefined by the API: leash denies and reports both policies.
//!
//! Every case runs on the shared lab cluster (`support/eval.rs`) plus two Nodes (n1 is
//! labelled control-plane), with its own ClusterNetworkPolicies and NetworkPolicies.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;
use leash::{
    cluster::Cluster,
    cnp::{Action, ClusterNetworkPolicy, Tier},
    eval::{ClusterView, Evaluation, PolicyId, PolicySet, Reason, Verdict, evaluate_with_names},
    explain::{parse_pod, parse_target},
};
use support::eval::{lab_cluster_parts, policy};

use Reason::{
    AdminAccept as AA, AdminDeny as AD, BaselineAccept as BA, BaselineDeny as BD,
    DestinationNotAPod as NotPod, NoRuleMatched as NoRule, NotIsolated as Open,
    RuleMatched as Rule, SourceHostNetwork as HostSrc, TierConflict as Conflict,
};
use Verdict::{Allow as A, Deny as D};

struct Case {
    name: &'static str,
    /// `(name, spec)` of ClusterNetworkPolicies, spec as YAML.
    cnps: &'static [(&'static str, &'static str)],
    /// `(ns/name, spec)` of NetworkPolicies.
    nps: &'static [(&'static str, &'static str)],
    from: &'static str,
    to: &'static str,
    /// The names the destination address was resolved from.
    names: &'static [&'static str],
    egress: (Verdict, Reason),
    ingress: (Verdict, Reason),
    /// The deciding policies (`Evaluation::policies`).
    deciding: &'static [&'static str],
}

#[rustfmt::skip]
const CASES: &[Case] = &[
    // ---- no matching rule ----
    Case { name: "no policies at all: default allow", cnps: &[], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    Case { name: "subject in another namespace: no effect", cnps: &[("deny-db", "{tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {team: data}}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    Case { name: "subject pods selector leaves other pods alone", cnps: &[("deny-web", "{tier: Admin, priority: 1, subject: {pods: {podSelector: {matchLabels: {app: web}}}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/worker", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    Case { name: "subject selected but no rule matches the peer: default allow", cnps: &[("deny-other", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [198.51.100.0/24]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    Case { name: "subject selected but no rule matches the port: NetworkPolicy decides", cnps: &[("deny-22", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}], protocols: [{tcp: {destinationPort: {number: 22}}}]}]}")], nps: &[("shop/deny", "{podSelector: {}, policyTypes: [Egress]}")], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, NoRule), ingress: (A, NotPod), deciding: &["shop/deny"] },
    Case { name: "subject pods without namespaceSelector: every namespace", cnps: &[("deny-web", "{tier: Admin, priority: 1, subject: {pods: {podSelector: {matchLabels: {app: web}}}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, AD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/deny-web"] },
    Case { name: "subject pods with a namespaceSelector that excludes the pod's", cnps: &[("deny-web", "{tier: Admin, priority: 1, subject: {pods: {namespaceSelector: {matchLabels: {team: data}}, podSelector: {matchLabels: {app: web}}}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    // ---- Admin tier ----
    Case { name: "Admin Deny beats a NetworkPolicy that allows", cnps: &[("meta", "{tier: Admin, priority: 0, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [203.0.113.0/24]}]}]}")], nps: &[("shop/all", "{podSelector: {}, policyTypes: [Egress], egress: [{}]}")], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, AD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/meta"] },
    Case { name: "Admin Accept beats a NetworkPolicy default deny", cnps: &[("ok", "{tier: Admin, priority: 0, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [203.0.113.0/24]}]}]}")], nps: &[("shop/deny", "{podSelector: {}, policyTypes: [Egress]}")], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, AA), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/ok"] },
    Case { name: "Deny before a lower-priority Accept", cnps: &[("deny", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [203.0.113.0/24]}]}]}"), ("accept", "{tier: Admin, priority: 2, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [203.0.113.0/24]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, AD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/deny"] },
    Case { name: "Accept before a lower-priority Deny", cnps: &[("deny", "{tier: Admin, priority: 7, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [203.0.113.0/24]}]}]}"), ("accept", "{tier: Admin, priority: 3, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [203.0.113.0/24]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, AA), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/accept"] },
    Case { name: "within a policy the first matching rule decides", cnps: &[("p", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [203.0.113.10/32]}]}, {action: Deny, to: [{networks: [203.0.113.0/24]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, AA), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/p"] },
    Case { name: "within a policy a later rule decides when the first does not match", cnps: &[("p", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [203.0.113.10/32]}]}, {action: Deny, to: [{networks: [203.0.113.0/24]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.11:443/TCP", names: &[], egress: (D, AD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/p"] },
    // ---- Pass, NetworkPolicy, Baseline ----
    Case { name: "Pass then NetworkPolicy decides (deny), Baseline Accept not reached", cnps: &[("pass", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Pass, to: [{networks: [0.0.0.0/0]}]}]}"), ("base", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[("shop/deny", "{podSelector: {}, policyTypes: [Egress]}")], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, NoRule), ingress: (A, NotPod), deciding: &["shop/deny"] },
    Case { name: "Pass skips a lower-priority Admin Deny", cnps: &[("pass", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Pass, to: [{networks: [0.0.0.0/0]}]}]}"), ("deny", "{tier: Admin, priority: 2, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    Case { name: "Pass, no NetworkPolicy selects the pod: Baseline Deny decides", cnps: &[("pass", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Pass, to: [{networks: [0.0.0.0/0]}]}]}"), ("base", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, BD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/base"] },
    Case { name: "a NetworkPolicy selecting the pod decides: Baseline Deny not reached", cnps: &[("base", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[("shop/https", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}")], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Rule), ingress: (A, NotPod), deciding: &["shop/https"] },
    Case { name: "a NetworkPolicy selecting another pod does not stop the Baseline", cnps: &[("base", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[("shop/api-only", "{podSelector: {matchLabels: {app: api}}, policyTypes: [Egress], egress: [{}]}")], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, BD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/base"] },
    Case { name: "an ingress-only NetworkPolicy does not stop the egress Baseline", cnps: &[("base", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[("shop/in", "{podSelector: {}, policyTypes: [Ingress]}")], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, BD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/base"] },
    Case { name: "Baseline Accept before a lower-priority Baseline Deny", cnps: &[("dns", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{pods: {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}}], protocols: [{udp: {destinationPort: {number: 53}}}]}]}"), ("deny", "{tier: Baseline, priority: 2, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "10.96.0.10:53/UDP", names: &[], egress: (A, BA), ingress: (A, Open), deciding: &["ClusterNetworkPolicy/dns"] },
    Case { name: "Baseline Pass goes to the default: allow", cnps: &[("pass", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Pass, to: [{networks: [0.0.0.0/0]}]}]}"), ("deny", "{tier: Baseline, priority: 2, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    // ---- equal priorities ----
    Case { name: "equal priorities that disagree: deny, both named", cnps: &[("b-accept", "{tier: Admin, priority: 5, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [203.0.113.0/24]}]}]}"), ("a-deny", "{tier: Admin, priority: 5, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, Conflict), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/a-deny", "ClusterNetworkPolicy/b-accept"] },
    Case { name: "equal priorities, Pass and Deny disagree: deny", cnps: &[("pass", "{tier: Baseline, priority: 5, subject: {namespaces: {}}, egress: [{action: Pass, to: [{networks: [0.0.0.0/0]}]}]}"), ("deny", "{tier: Baseline, priority: 5, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, Conflict), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/deny", "ClusterNetworkPolicy/pass"] },
    Case { name: "equal priorities that agree: no conflict", cnps: &[("one", "{tier: Admin, priority: 5, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [203.0.113.0/24]}]}]}"), ("two", "{tier: Admin, priority: 5, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, AD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/two"] },
    Case { name: "equal priorities, only one matches: it decides", cnps: &[("one", "{tier: Admin, priority: 5, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [198.51.100.0/24]}]}]}"), ("two", "{tier: Admin, priority: 5, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, AD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/two"] },
    // ---- peers ----
    Case { name: "networks match pod addresses", cnps: &[("pods-net", "{tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {team: shop}}}, egress: [{action: Deny, to: [{networks: [10.244.2.0/24]}]}]}")], nps: &[], from: "shop/web", to: "10.244.2.20:5432/TCP", names: &[], egress: (D, AD), ingress: (A, Open), deciding: &["ClusterNetworkPolicy/pods-net"] },
    Case { name: "networks match the Service's backend after DNAT, not the ClusterIP", cnps: &[("pods-net", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [10.96.0.30/32]}]}, {action: Deny, to: [{networks: [10.244.0.0/16]}]}]}")], nps: &[], from: "shop/web", to: "10.96.0.30:5432/TCP", names: &[], egress: (D, AD), ingress: (A, Open), deciding: &["ClusterNetworkPolicy/pods-net"] },
    Case { name: "networks match IPv6 pod addresses", cnps: &[("v6", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: ['2001:db8:244::/64']}]}]}")], nps: &[], from: "shop/web", to: "[2001:db8:244::11]:8000/TCP", names: &[], egress: (D, AD), ingress: (A, Open), deciding: &["ClusterNetworkPolicy/v6"] },
    Case { name: "namespaces peer by the automatic name label", cnps: &[("no-db", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {matchLabels: {kubernetes.io/metadata.name: db}}}]}]}")], nps: &[], from: "shop/web", to: "10.244.2.20:5432/TCP", names: &[], egress: (D, AD), ingress: (A, Open), deciding: &["ClusterNetworkPolicy/no-db"] },
    Case { name: "pods peer does not match a non-pod address", cnps: &[("no-pods", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{pods: {namespaceSelector: {}, podSelector: {}}}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    Case { name: "nodes peer matches a selected Node's address", cnps: &[("no-cp", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{nodes: {matchLabels: {node-role.kubernetes.io/control-plane: ''}}}]}]}")], nps: &[], from: "shop/web", to: "172.18.0.2:6443/TCP", names: &[], egress: (D, AD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/no-cp"] },
    Case { name: "nodes peer does not match an unselected Node", cnps: &[("no-cp", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{nodes: {matchLabels: {node-role.kubernetes.io/control-plane: ''}}}]}]}")], nps: &[], from: "shop/web", to: "172.18.0.3:10250/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    Case { name: "domainNames accept by the names the address resolved from", cnps: &[("names", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{domainNames: ['*.example.com']}]}]}"), ("deny", "{tier: Admin, priority: 2, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &["api.example.com"], egress: (A, AA), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/names"] },
    Case { name: "domainNames wildcard does not match the apex", cnps: &[("names", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{domainNames: ['*.example.com']}]}]}"), ("deny", "{tier: Admin, priority: 2, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &["example.com"], egress: (D, AD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/deny"] },
    Case { name: "domainNames without DNS evidence match nothing", cnps: &[("names", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{domainNames: [api.example.com]}]}]}"), ("deny", "{tier: Admin, priority: 2, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (D, AD), ingress: (A, NotPod), deciding: &["ClusterNetworkPolicy/deny"] },
    // ---- protocols ----
    Case { name: "named port of the destination pod matches", cnps: &[("no-pg", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{destinationNamedPort: pg}]}]}")], nps: &[], from: "shop/web", to: "10.244.1.21:5433/TCP", names: &[], egress: (D, AD), ingress: (A, Open), deciding: &["ClusterNetworkPolicy/no-pg"] },
    Case { name: "named port resolves per destination pod: another number does not match", cnps: &[("no-pg", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{destinationNamedPort: pg}]}]}")], nps: &[], from: "shop/web", to: "10.244.2.20:5433/TCP", names: &[], egress: (A, Open), ingress: (A, Open), deciding: &[] },
    Case { name: "named port needs the container port's protocol", cnps: &[("no-stats", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{destinationNamedPort: stats}]}]}")], nps: &[], from: "shop/web", to: "10.244.1.11:8125/TCP", names: &[], egress: (A, Open), ingress: (A, Open), deciding: &[] },
    Case { name: "port range includes both ends", cnps: &[("range", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 7000, end: 8000}}}}]}]}")], nps: &[], from: "shop/web", to: "10.244.1.11:8000/TCP", names: &[], egress: (D, AD), ingress: (A, Open), deciding: &["ClusterNetworkPolicy/range"] },
    Case { name: "protocol must match: UDP rule, TCP flow", cnps: &[("udp", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}], protocols: [{udp: {destinationPort: {number: 443}}}]}]}")], nps: &[], from: "shop/web", to: "203.0.113.10:443/TCP", names: &[], egress: (A, Open), ingress: (A, NotPod), deciding: &[] },
    Case { name: "sctp port", cnps: &[("sctp", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{namespaces: {}}], protocols: [{sctp: {destinationPort: {number: 3868}}}]}]}")], nps: &[], from: "shop/web", to: "10.244.2.50:3868/SCTP", names: &[], egress: (D, AD), ingress: (A, Open), deciding: &["ClusterNetworkPolicy/sctp"] },
    // ---- hostNetwork ----
    Case { name: "a hostNetwork source is never a subject", cnps: &[("deny-all", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}")], nps: &[], from: "shop/host-agent", to: "203.0.113.10:443/TCP", names: &[], egress: (A, HostSrc), ingress: (A, NotPod), deciding: &[] },
    // ---- ingress ----
    Case { name: "ingress: Admin Deny from a namespace", cnps: &[("protect-db", "{tier: Admin, priority: 1, subject: {namespaces: {matchLabels: {team: data}}}, ingress: [{action: Deny, from: [{namespaces: {matchLabels: {team: shop}}}]}]}")], nps: &[], from: "shop/web", to: "10.244.2.20:5432/TCP", names: &[], egress: (A, Open), ingress: (D, AD), deciding: &["ClusterNetworkPolicy/protect-db"] },
    Case { name: "ingress: Admin Accept beats the destination's NetworkPolicy", cnps: &[("monitoring", "{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}}]}]}")], nps: &[("db/deny", "{podSelector: {}, policyTypes: [Ingress]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", names: &[], egress: (A, Open), ingress: (A, AA), deciding: &["ClusterNetworkPolicy/monitoring"] },
    Case { name: "ingress: the destination's NetworkPolicy decides before the Baseline", cnps: &[("base", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}")], nps: &[("db/from-shop", "{podSelector: {}, policyTypes: [Ingress], ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", names: &[], egress: (A, Open), ingress: (A, Rule), deciding: &["db/from-shop"] },
    Case { name: "ingress: Baseline Deny when no NetworkPolicy selects the destination", cnps: &[("base", "{tier: Baseline, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}")], nps: &[], from: "shop/web", to: "10.244.2.20:5432/TCP", names: &[], egress: (A, Open), ingress: (D, BD), deciding: &["ClusterNetworkPolicy/base"] },
    Case { name: "ingress: Pass then the destination's NetworkPolicy denies", cnps: &[("pass", "{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Pass, from: [{namespaces: {}}]}]}")], nps: &[("db/deny", "{podSelector: {}, policyTypes: [Ingress]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", names: &[], egress: (A, Open), ingress: (D, NoRule), deciding: &["db/deny"] },
    Case { name: "ingress: a hostNetwork source matches no namespaces peer", cnps: &[("protect-db", "{tier: Admin, priority: 1, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}")], nps: &[], from: "shop/host-agent", to: "10.244.2.20:5432/TCP", names: &[], egress: (A, HostSrc), ingress: (A, Open), deciding: &[] },
    Case { name: "ingress: equal priorities that disagree deny", cnps: &[("a", "{tier: Admin, priority: 9, subject: {namespaces: {}}, ingress: [{action: Accept, from: [{namespaces: {}}]}]}"), ("b", "{tier: Admin, priority: 9, subject: {namespaces: {}}, ingress: [{action: Deny, from: [{namespaces: {}}]}]}")], nps: &[], from: "shop/web", to: "10.244.2.20:5432/TCP", names: &[], egress: (A, Open), ingress: (D, Conflict), deciding: &["ClusterNetworkPolicy/a", "ClusterNetworkPolicy/b"] },
];

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

fn node(name: &str, ip: &str, labels: serde_json::Value) -> Node {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}]},
    }))
    .expect("node")
}

/// The lab cluster with Nodes n1 (control-plane) and n2.
fn cluster() -> Cluster {
    let p = lab_cluster_parts();
    let nodes = [
        node(
            "n1",
            "172.18.0.2",
            serde_json::json!({"node-role.kubernetes.io/control-plane": ""}),
        ),
        node("n2", "172.18.0.3", serde_json::json!({})),
    ];
    Cluster::from_objects(
        &p.namespaces,
        &nodes,
        &p.pods,
        &p.services,
        &p.slices,
        &[],
        &[],
        &[],
        &[],
        &[],
        &[],
    )
    .expect("fixture cluster")
}

fn run(cluster: &Cluster, c: &Case) -> Evaluation {
    let nps: Vec<_> = c.nps.iter().map(|(id, spec)| policy(id, spec)).collect();
    let cnps: Vec<_> = c.cnps.iter().map(|(n, s)| cnp(n, s)).collect();
    let set = PolicySet::new(&nps)
        .and_then(|s| s.with_cluster_policies(&cnps))
        .unwrap_or_else(|e| panic!("{}: policies invalid: {e}", c.name));
    let src = parse_pod(c.from).expect("NS/POD");
    let source = ClusterView::pod(cluster, &src.namespace, &src.name)
        .unwrap_or_else(|| panic!("no pod {}", c.from));
    let names: BTreeSet<String> = c.names.iter().map(|n| (*n).to_owned()).collect();
    evaluate_with_names(
        cluster,
        &set,
        source,
        &parse_target(c.to).expect("target"),
        &names,
    )
}

#[test]
fn semantics_table() {
    let cluster = cluster();
    let mut failures = Vec::new();
    for c in CASES {
        let ev = run(&cluster, c);
        let t = &ev.targets[0];
        let got = (
            (t.egress.verdict, t.egress.reason),
            (t.ingress.verdict, t.ingress.reason),
        );
        let deciding: Vec<String> = ev.policies().iter().map(ToString::to_string).collect();
        let verdict = if c.egress.0 == A && c.ingress.0 == A {
            A
        } else {
            D
        };
        if got != (c.egress, c.ingress) || deciding != c.deciding || ev.verdict != verdict {
            failures.push(format!(
                "{}: want {:?} {:?}, got {got:?} {:?} {deciding:?}\n  {ev:?}",
                c.name,
                (c.egress, c.ingress),
                c.deciding,
                ev.verdict
            ));
        }
        // Conflicts are reported exactly when a direction was decided by one.
        let conflicted = [t.egress.reason, t.ingress.reason].contains(&Conflict);
        if conflicted == ev.conflicts.is_empty() {
            failures.push(format!("{}: conflicts {:?}", c.name, ev.conflicts));
        }
    }
    assert!(CASES.len() >= 40, "{} cases", CASES.len());
    assert!(
        failures.is_empty(),
        "{} failing:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_conflict_names_both_policies_and_their_rules() {
    let cluster = cluster();
    let c = CASES
        .iter()
        .find(|c| c.name == "equal priorities that disagree: deny, both named")
        .expect("case");
    let ev = run(&cluster, c);
    assert_eq!(ev.conflicts.len(), 1);
    let conflict = &ev.conflicts[0];
    assert_eq!((conflict.tier, conflict.priority), (Tier::Admin, 5));
    let rules: Vec<(&str, Action)> = conflict
        .rules
        .iter()
        .map(|r| (r.policy.as_str(), r.action))
        .collect();
    assert_eq!(
        rules,
        [("a-deny", Action::Deny), ("b-accept", Action::Accept)]
    );
    assert_eq!(
        conflict.to_string(),
        "ClusterNetworkPolicies a-deny (Deny by rule 0) and b-accept (Accept by rule 0) have the same priority 5 in the Admin tier and disagree; evaluated as deny"
    );
}

#[test]
fn the_deciding_rule_is_named_with_its_tier_and_the_passes_before_it() {
    let cluster = cluster();
    let c = CASES
        .iter()
        .find(|c| c.name == "Pass, no NetworkPolicy selects the pod: Baseline Deny decides")
        .expect("case");
    let ev = run(&cluster, c);
    let e = &ev.targets[0].egress;
    let chain: Vec<String> = e.cluster.iter().map(ToString::to_string).collect();
    assert_eq!(
        chain,
        [
            "Admin tier: ClusterNetworkPolicy pass (priority 1) rule 0: Pass",
            "Baseline tier: ClusterNetworkPolicy base (priority 1) rule 0: Deny",
        ]
    );
    assert_eq!(
        e.deciding_cluster_rule().map(|r| r.policy.as_str()),
        Some("base")
    );
}

#[test]
fn existing_api_unchanged_without_cluster_policies() {
    // `PolicySet::new` alone never consults tiers; `PolicyId` display stays `ns/name`.
    let set = PolicySet::new(&[policy("shop/p", "{podSelector: {}, policyTypes: [Egress]}")])
        .expect("valid");
    assert!(set.cluster_policies().is_empty());
    assert_eq!(PolicyId::cluster("x").to_string(), "ClusterNetworkPolicy/x");
    let err = PolicySet::new(&[])
        .and_then(|s| {
            s.with_cluster_policies(&[
                cnp("x", "{tier: Admin, priority: 1, subject: {namespaces: {}}}"),
                cnp(
                    "x",
                    "{tier: Baseline, priority: 1, subject: {namespaces: {}}}",
                ),
            ])
        })
        .expect_err("duplicate");
    assert_eq!(err.to_string(), "ClusterNetworkPolicy x is defined twice");
    let err = PolicySet::new(&[])
        .and_then(|s| s.with_cluster_policies(&[cnp("bad", "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [nope]}]}]}")]))
        .expect_err("invalid");
    assert_eq!(
        err.to_string(),
        "ClusterNetworkPolicy bad: spec.egress[0].to[0].networks[0]: Invalid CIDR format provided"
    );
}

/// One generated policy: tier, priority, action, and the network its one egress rule matches.
type Generated = (bool, i32, usize, usize);

const ACTIONS: [&str; 3] = ["Accept", "Deny", "Pass"];
const NETWORKS: [&str; 3] = ["203.0.113.0/24", "0.0.0.0/0", "198.51.100.0/24"];

/// The documented precedence, written directly for one-rule policies and a flow from shop/web
/// to 203.0.113.10 (which every network but the last contains).
fn reference(policies: &[Generated], np_denies: bool) -> Verdict {
    let tier = |admin: bool| -> Option<Verdict> {
        for priority in 0..4 {
            let actions: BTreeSet<usize> = policies
                .iter()
                .filter(|p| p.0 == admin && p.1 == priority && p.3 != 2)
                .map(|p| p.2)
                .collect();
            match actions.len() {
                0 => continue,
                1 => {
                    return match actions.first() {
                        Some(0) => Some(A),
                        Some(1) => Some(D),
                        _ => None,
                    };
                }
                _ => return Some(D),
            }
        }
        None
    };
    if let Some(v) = tier(true) {
        return v;
    }
    if np_denies {
        return D;
    }
    tier(false).unwrap_or(A)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 200, ..Default::default() })]

    /// The evaluator agrees with the documented precedence on random tiers, priorities,
    /// actions and matches, with and without a NetworkPolicy selecting the pod.
    #[test]
    fn precedence_matches_the_documented_model(
        policies in proptest::collection::vec(
            (proptest::bool::ANY, 0..4i32, 0..3usize, 0..3usize),
            0..6,
        ),
        np_denies in proptest::bool::ANY,
    ) {
        let cluster = cluster();
        let cnps: Vec<ClusterNetworkPolicy> = policies
            .iter()
            .enumerate()
            .map(|(i, (admin, priority, action, net))| {
                cnp(
                    &format!("p{i}"),
                    &format!(
                        "{{tier: {}, priority: {priority}, subject: {{namespaces: {{}}}}, egress: [{{action: {}, to: [{{networks: ['{}']}}]}}]}}",
                        if *admin { "Admin" } else { "Baseline" },
                        ACTIONS[*action],
                        NETWORKS[*net],
                    ),
                )
            })
            .collect();
        let nps = if np_denies {
            vec![policy("shop/deny", "{podSelector: {}, policyTypes: [Egress]}")]
        } else {
            Vec::new()
        };
        let set = PolicySet::new(&nps).and_then(|s| s.with_cluster_policies(&cnps)).expect("valid");
        let source = ClusterView::pod(&cluster, "shop", "web").expect("pod");
        let flow = parse_target("203.0.113.10:443/TCP").expect("target");
        let ev = evaluate_with_names(&cluster, &set, source, &flow, &BTreeSet::new());
        proptest::prop_assert_eq!(ev.egress, reference(&policies, np_denies), "{:?}", ev);
    }
}

#[test]
fn a_name_allowed_by_domain_names_is_no_dns_drift() {
    let cluster = cluster();
    let cnps = [cnp(
        "names",
        "{tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Accept, to: [{domainNames: [api.example.com]}], protocols: [{tcp: {destinationPort: {number: 443}}}]}, {action: Accept, to: [{networks: [203.0.113.10/32]}]}, {action: Deny, to: [{networks: [0.0.0.0/0]}]}]}",
    )];
    let set = PolicySet::new(&[])
        .and_then(|s| s.with_cluster_policies(&cnps))
        .expect("valid");
    let source = ClusterView::pod(&cluster, "shop", "web").expect("pod");
    let new: std::net::IpAddr = "203.0.113.20".parse().expect("ip");
    let old: std::net::IpAddr = "203.0.113.10".parse().expect("ip");
    let check = |name: &str| {
        leash::drift::Checker::new().check(
            &cluster,
            &set,
            source,
            0,
            name,
            new,
            chrono::DateTime::UNIX_EPOCH,
            &[old],
            &[(leash_records::Protocol::Tcp, 443)],
        )
    };
    // The name's new address is allowed by the name: no drift.
    assert_eq!(check("api.example.com"), None);
    // Another name moving to the denied address is drift, decided by the ClusterNetworkPolicy.
    let d = check("other.example.com").expect("drift");
    assert_eq!(d.policies, [PolicyId::cluster("names")]);
}
