//! Policy names and the Kubernetes objects of a recommendation: one NetworkPolicy per
//! workload, and the `default-deny-egress` of each namespace.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash_records::time::rfc3339;

use super::{EgressPeer, PolicySpec, Recommendation, RuleEvidence};
use crate::cluster::{Cluster, NAMESPACE_NAME_LABEL};
use crate::ports::PortRange;

/// Annotation naming the generator.
pub const ANNOTATION_GENERATED_BY: &str = "leash.dev/generated-by";
/// Annotation naming the workload a policy is for.
pub const ANNOTATION_WORKLOAD: &str = "leash.dev/workload";
/// The name of the per-namespace default-deny policy.
pub const DEFAULT_DENY_NAME: &str = "default-deny-egress";

/// Maximum length of a Kubernetes object name (DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// Names each policy `<workload>-egress`, adding the kind when two workloads of one namespace
/// share a name, and keeping names valid DNS-1123 subdomains.
pub(super) fn name_policies(cluster: &Cluster, policies: &mut [PolicySpec]) {
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for p in policies.iter() {
        let w = &cluster.workloads[p.workload];
        *count
            .entry((w.namespace.clone(), w.name.clone()))
            .or_default() += 1;
    }
    for p in policies.iter_mut() {
        let w = &cluster.workloads[p.workload];
        let clash = count
            .get(&(w.namespace.clone(), w.name.clone()))
            .copied()
            .unwrap_or(0)
            > 1
            || policy_name(&w.name) == DEFAULT_DENY_NAME;
        let base = if clash {
            format!("{}-{}", w.name, w.kind.to_ascii_lowercase())
        } else {
            w.name.clone()
        };
        p.name = policy_name(&base);
    }
}

/// `<base>-egress`, lower-cased to DNS-1123 and at most 253 characters (a long base keeps a
/// prefix and a stable hash of the whole, [`leash_records::names::shorten`]).
pub fn policy_name(base: &str) -> String {
    let suffix = "-egress";
    let clean: String = base
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // A long name keeps a prefix and a hash of the whole, so two workloads whose names share
    // the first 246 characters still get distinct policies.
    let clean = leash_records::names::shorten(&clean, MAX_NAME - suffix.len());
    let trimmed = clean.trim_matches(|c: char| c == '-' || c == '.');
    let base = if trimmed.is_empty() {
        "workload"
    } else {
        trimmed
    };
    format!("{base}{suffix}")
}

/// A one-line evidence summary for the report (deterministic: derived from the observations
/// only).
pub fn evidence_summary(e: &RuleEvidence) -> String {
    let fmt = |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), rfc3339);
    format!(
        "{} events from {} pod(s), {} to {}",
        e.count,
        // With a store, pods past its bound are counted, not named.
        u64::try_from(e.pods.len())
            .unwrap_or(u64::MAX)
            .saturating_add(e.more_pods),
        fmt(e.first_seen),
        fmt(e.last_seen)
    )
}

fn k8s_peer(p: &EgressPeer) -> net::NetworkPolicyPeer {
    match p {
        EgressPeer::Pods {
            namespace,
            selector,
        } => net::NetworkPolicyPeer {
            namespace_selector: namespace.as_ref().map(|ns| meta::LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    ns.clone(),
                )])),
                match_expressions: None,
            }),
            pod_selector: Some(selector.to_k8s()),
            ip_block: None,
        },
        EgressPeer::Block { cidr, except, .. } => net::NetworkPolicyPeer {
            ip_block: Some(net::IPBlock {
                cidr: cidr.to_string(),
                except: (!except.is_empty())
                    .then(|| except.iter().map(ToString::to_string).collect()),
            }),
            namespace_selector: None,
            pod_selector: None,
        },
    }
}

fn k8s_port(p: &PortRange) -> net::NetworkPolicyPort {
    net::NetworkPolicyPort {
        protocol: Some(p.protocol.as_str().to_owned()),
        port: Some(IntOrString::Int(i32::from(p.port))),
        end_port: p.end_port.map(i32::from),
    }
}

/// The labels leash puts on every policy it writes.
fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_owned(),
        "leash".to_owned(),
    )])
}

/// The Kubernetes object of a recommended policy. It carries the policy, not the evidence
/// (counts and times change with every run; they go to REPORT.md and `evidence.json`), so
/// its bytes change only when its spec does.
pub fn to_network_policy(cluster: &Cluster, p: &PolicySpec) -> net::NetworkPolicy {
    let w = &cluster.workloads[p.workload];
    let annotations = BTreeMap::from([
        (
            ANNOTATION_GENERATED_BY.to_owned(),
            "leash recommend".to_owned(),
        ),
        (
            ANNOTATION_WORKLOAD.to_owned(),
            crate::json::workload(&w.kind, &w.name),
        ),
    ]);
    net::NetworkPolicy {
        metadata: meta::ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            labels: Some(managed_labels()),
            annotations: Some(annotations),
            ..meta::ObjectMeta::default()
        },
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(p.pod_selector.to_k8s()),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(
                p.rules
                    .iter()
                    .map(|r| net::NetworkPolicyEgressRule {
                        to: Some(r.peers.iter().map(k8s_peer).collect()),
                        ports: Some(r.ports.iter().map(k8s_port).collect()),
                    })
                    .collect(),
            ),
            ingress: None,
        }),
    }
}

/// The `default-deny-egress` policy of a namespace: selects every pod, allows no egress.
pub fn default_deny(namespace: &str) -> net::NetworkPolicy {
    net::NetworkPolicy {
        metadata: meta::ObjectMeta {
            name: Some(DEFAULT_DENY_NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(managed_labels()),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_GENERATED_BY.to_owned(),
                "leash recommend".to_owned(),
            )])),
            ..meta::ObjectMeta::default()
        },
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(meta::LabelSelector::default()),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: None,
            ingress: None,
        }),
    }
}

/// Every policy of a recommendation as Kubernetes objects: per namespace, the default deny
/// first (when it has one: `recommend --ready-only` withholds it where a workload's policy
/// was withheld), then the workloads' policies by name.
pub fn all_policies(cluster: &Cluster, rec: &Recommendation) -> Vec<net::NetworkPolicy> {
    let namespaces: std::collections::BTreeSet<&str> = rec
        .default_deny_namespaces
        .iter()
        .chain(rec.policies.iter().map(|p| &p.namespace))
        .map(String::as_str)
        .collect();
    let mut out = Vec::new();
    for ns in namespaces {
        if rec.default_deny_namespaces.iter().any(|d| d == ns) {
            out.push(default_deny(ns));
        }
        for p in rec.policies.iter().filter(|p| p.namespace == ns) {
            out.push(to_network_policy(cluster, p));
        }
    }
    out
}
