//! Table tests of the NetworkPolicy evaluator, written from
//! `shared/docs/networkpolicy-semantics.md`. Every case runs against the same small lab
//! cluster (see `support/eval.rs`) with its own policies and one flow, and states the
//! expected egress, ingress and final verdicts plus the deciding policies.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use leash::{
    cluster::Cluster,
    eval::{
        ClusterView, Destination, Error, Evaluation, Half, NearMiss, PolicyId, PolicySet, Problem,
        Reason, RuleMatch, Verdict, evaluate,
    },
    explain::{parse_pod, parse_target},
};
use support::eval::{lab_cluster, pod, policy};

use Verdict::{Allow as A, Deny as D};

struct Case {
    name: &'static str,
    policies: &'static [(&'static str, &'static str)],
    from: &'static str,
    to: &'static str,
    egress: Verdict,
    ingress: Verdict,
    verdict: Verdict,
    deciding: &'static [&'static str],
}

const DENY_EGRESS: (&str, &str) = (
    "shop/deny-egress",
    "{podSelector: {}, policyTypes: [Egress]}",
);
const DENY_DB_INGRESS: (&str, &str) = (
    "db/deny-ingress",
    "{podSelector: {}, policyTypes: [Ingress]}",
);

#[rustfmt::skip]
const CASES: &[Case] = &[
    // ---- 1. defaulting and combining ----
    Case { name: "no policies: everything allowed", policies: &[], from: "shop/web", to: "203.0.113.10:443/TCP", egress: A, ingress: A, verdict: A, deciding: &[] },
    Case { name: "default-deny egress denies external", policies: &[DENY_EGRESS], from: "shop/web", to: "203.0.113.10:443/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/deny-egress"] },
    Case { name: "explicit egress: [] denies all", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: []}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "egress: [{}] allows all", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{}]}")], from: "shop/web", to: "203.0.113.10:9999/UDP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "egress-only policy without policyTypes also isolates ingress", policies: &[("shop/p", "{podSelector: {}, egress: [{}]}")], from: "shop/web", to: "10.244.1.11:8000/TCP", egress: A, ingress: D, verdict: D, deciding: &["shop/p"] },
    Case { name: "same policy with policyTypes [Egress] leaves ingress open", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{}]}")], from: "shop/web", to: "10.244.1.11:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "policy with no types and no rules isolates ingress only", policies: &[("db/p", "{podSelector: {}}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/p"] },
    Case { name: "policy with no types and no rules does not isolate egress", policies: &[("shop/p", "{podSelector: {}}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: A, ingress: A, verdict: A, deciding: &[] },
    Case { name: "policy selecting another pod does not isolate the source", policies: &[("shop/p", "{podSelector: {matchLabels: {app: api}}, policyTypes: [Egress]}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: A, ingress: A, verdict: A, deciding: &[] },
    Case { name: "policy in another namespace does not isolate the source", policies: &[("db/p", "{podSelector: {}, policyTypes: [Egress]}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: A, ingress: A, verdict: A, deciding: &[] },
    Case { name: "rules of several policies are unioned", policies: &[DENY_EGRESS, ("shop/https", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/https"] },
    Case { name: "denied flow lists every isolating policy", policies: &[DENY_EGRESS, ("shop/https", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 443}]}]}")], from: "shop/web", to: "203.0.113.10:80/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/deny-egress", "shop/https"] },
    Case { name: "rule needs both to and ports: right port, wrong peer", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{port: 443}]}]}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "rule without to matches any destination on its ports", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}")], from: "shop/web", to: "203.0.113.99:443/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    // ---- 2. ipBlock ----
    Case { name: "ipBlock inside cidr", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]}]}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "ipBlock except excludes", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}]}]}")], from: "shop/web", to: "203.0.113.200:443/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "except excluded address allowed by another peer", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24, except: [203.0.113.128/25]}}, {ipBlock: {cidr: 203.0.113.200/32}}]}]}")], from: "shop/web", to: "203.0.113.200:443/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "0.0.0.0/0 does not cover IPv6", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}]}]}")], from: "shop/web", to: "[2001:db8:ffff::1]:443/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "::/0 covers IPv6", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: '::/0'}}]}]}")], from: "shop/web", to: "[2001:db8:ffff::1]:443/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "ipBlock matches a pod IP", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.244.2.20/32}}], ports: [{port: 5432}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    // ---- 3. ports ----
    Case { name: "port entry without port allows every UDP port", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{protocol: UDP}]}]}")], from: "shop/web", to: "203.0.113.10:5353/UDP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "port entry without port does not allow TCP", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{protocol: UDP}]}]}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "empty port entry {} means every TCP port", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{}]}]}")], from: "shop/web", to: "203.0.113.10:8443/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "empty port entry {} does not allow UDP", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{}]}]}")], from: "shop/web", to: "203.0.113.10:53/UDP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "endPort: start of range", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 8000, endPort: 8010}]}]}")], from: "shop/web", to: "203.0.113.10:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "endPort is inclusive", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 8000, endPort: 8010}]}]}")], from: "shop/web", to: "203.0.113.10:8010/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "endPort: one past the end", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 8000, endPort: 8010}]}]}")], from: "shop/web", to: "203.0.113.10:8011/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "endPort: one before the start", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 8000, endPort: 8010}]}]}")], from: "shop/web", to: "203.0.113.10:7999/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "numeric port with protocol UDP does not allow TCP", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 53, protocol: UDP}]}]}")], from: "shop/web", to: "203.0.113.10:53/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "SCTP-only egress policy still isolates TCP", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 3868, protocol: SCTP}]}]}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "SCTP-only egress policy allows SCTP", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 3868, protocol: SCTP}]}]}")], from: "shop/web", to: "10.244.2.50:3868/SCTP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "SCTP-only ingress policy isolates TCP at the destination", policies: &[("other/p", "{podSelector: {matchLabels: {app: sctp}}, ingress: [{ports: [{port: diameter, protocol: SCTP}]}]}")], from: "shop/web", to: "10.244.2.50:3868/TCP", egress: A, ingress: D, verdict: D, deciding: &["other/p"] },
    Case { name: "SCTP-only ingress policy allows SCTP by named port", policies: &[("other/p", "{podSelector: {matchLabels: {app: sctp}}, ingress: [{ports: [{port: diameter, protocol: SCTP}]}]}")], from: "shop/web", to: "10.244.2.50:3868/SCTP", egress: A, ingress: A, verdict: A, deciding: &["other/p"] },
    // ---- 4. selectors, AND vs OR ----
    Case { name: "podSelector peer in own namespace", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}]}]}")], from: "shop/web", to: "10.244.1.11:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "podSelector peer alone does not reach other namespaces", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: postgres}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "namespaceSelector by kubernetes.io/metadata.name", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "namespaceSelector AND podSelector in one peer: wrong pod", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}, podSelector: {matchLabels: {app: api}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "same selectors as two peers are OR'ed", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}}, {podSelector: {matchLabels: {app: api}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "AND peer selects the primary", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}, podSelector: {matchLabels: {role: primary}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "AND peer does not select the replica", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}, podSelector: {matchLabels: {role: primary}}}]}]}")], from: "shop/web", to: "10.244.1.21:5433/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "empty namespaceSelector means every namespace", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: prometheus}}}]}]}")], from: "shop/web", to: "10.244.2.30:9090/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "namespaceSelector by custom label matches", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {team: data}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "namespaceSelector by custom label does not match", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {team: shop}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "matchExpressions In", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [api, worker]}]}}]}]}")], from: "shop/web", to: "10.244.1.11:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "NotIn matches a pod lacking the label", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}}]}]}")], from: "shop/web", to: "10.244.2.12:8080/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "NotIn excludes a pod with the value", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}}]}]}")], from: "shop/web", to: "10.244.2.13:8080/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "DoesNotExist matches a pod lacking the key", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]}")], from: "shop/web", to: "10.244.2.12:8080/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "DoesNotExist excludes a pod with the key", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}]}]}")], from: "shop/web", to: "10.244.2.13:8080/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "Exists on namespace labels AND pod labels", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchExpressions: [{key: env, operator: Exists}]}, podSelector: {matchExpressions: [{key: role, operator: Exists}]}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "policy podSelector NotIn leaves the excluded source unisolated", policies: &[("shop/p", "{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}, policyTypes: [Egress]}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: A, ingress: A, verdict: A, deciding: &[] },
    Case { name: "policy podSelector NotIn isolates a source lacking the label value", policies: &[("shop/p", "{podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [web]}]}, policyTypes: [Egress]}")], from: "shop/worker", to: "203.0.113.10:443/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    // ---- 5. named ports ----
    Case { name: "named port resolves on the destination pod", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: http}]}]}")], from: "shop/web", to: "10.244.1.11:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "named port is not resolved on the source pod", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: http}]}]}")], from: "shop/web", to: "10.244.1.11:8080/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "named port resolves per destination pod (api-2 http=8001)", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: http}]}]}")], from: "shop/web", to: "10.244.2.14:8001/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "named port with the wrong protocol does not match (TCP rule, UDP port)", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: stats}]}]}")], from: "shop/web", to: "10.244.1.11:8125/UDP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "named TCP rule does not resolve a UDP-only container port for TCP", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: stats}]}]}")], from: "shop/web", to: "10.244.1.11:8125/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "named port with matching protocol UDP", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: stats, protocol: UDP}]}]}")], from: "shop/web", to: "10.244.1.11:8125/UDP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "named port never matches an external destination", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}], ports: [{port: http}]}]}")], from: "shop/web", to: "203.0.113.10:8080/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "named port with an ipBlock peer matches a pod destination", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.244.1.11/32}}], ports: [{port: http}]}]}")], from: "shop/web", to: "10.244.1.11:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "named port never matches a hostNetwork destination", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 172.18.0.0/24}}], ports: [{port: metrics}]}]}")], from: "shop/web", to: "172.18.0.2:9100/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    // ---- 6. ingress at the destination ----
    Case { name: "default-deny ingress at the destination denies", policies: &[DENY_DB_INGRESS], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/deny-ingress"] },
    Case { name: "ingress from namespaceSelector", policies: &[DENY_DB_INGRESS, ("db/from-shop", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: shop}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["db/from-shop"] },
    Case { name: "ingress podSelector alone is the destination's namespace", policies: &[("db/p", "{podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/p"] },
    Case { name: "ingress AND peer allows the right source", policies: &[("db/p", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}, podSelector: {matchLabels: {app: web}}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["db/p"] },
    Case { name: "ingress AND peer denies another source", policies: &[("db/p", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}, podSelector: {matchLabels: {app: web}}}]}]}")], from: "shop/worker", to: "10.244.2.20:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/p"] },
    Case { name: "ingress named port on the destination itself", policies: &[("db/p", "{podSelector: {}, ingress: [{ports: [{port: pg}]}]}")], from: "shop/web", to: "10.244.1.21:5433/TCP", egress: A, ingress: A, verdict: A, deciding: &["db/p"] },
    Case { name: "ingress named port: another pod's number does not count", policies: &[("db/p", "{podSelector: {}, ingress: [{ports: [{port: pg}]}]}")], from: "shop/web", to: "10.244.1.21:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/p"] },
    Case { name: "ingress ipBlock matches the source pod IP", policies: &[("db/p", "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.244.1.0/24}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["db/p"] },
    Case { name: "ingress ipBlock does not match another source", policies: &[("db/p", "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.244.1.0/24}}]}]}")], from: "shop/worker", to: "10.244.2.20:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/p"] },
    Case { name: "ingress ipBlock except excludes the source", policies: &[("db/p", "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.244.1.0/24, except: [10.244.1.10/32]}}]}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/p"] },
    Case { name: "egress and ingress both deny: both listed, sorted", policies: &[DENY_DB_INGRESS, DENY_EGRESS], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: D, ingress: D, verdict: D, deciding: &["db/deny-ingress", "shop/deny-egress"] },
    Case { name: "egress allows, ingress denies: only ingress isolators listed", policies: &[DENY_DB_INGRESS, ("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/deny-ingress"] },
    Case { name: "allowed both ways lists the allowing policies of both", policies: &[("db/in", "{podSelector: {}, ingress: [{}]}"), ("shop/out", "{podSelector: {}, policyTypes: [Egress], egress: [{}]}")], from: "shop/web", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["db/in", "shop/out"] },
    Case { name: "ingress is not checked for an external destination", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Ingress, Egress], egress: [{}]}")], from: "shop/web", to: "203.0.113.10:443/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    // ---- 7. hostNetwork ----
    Case { name: "selectors never match a hostNetwork destination", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: host-agent}}}]}]}")], from: "shop/web", to: "172.18.0.2:9100/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "ipBlock /32 of the node reaches a hostNetwork destination", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 172.18.0.2/32}}], ports: [{port: 9100}]}]}")], from: "shop/web", to: "172.18.0.2:9100/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "a hostNetwork destination cannot be isolated", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Ingress]}")], from: "shop/worker", to: "172.18.0.2:9100/TCP", egress: A, ingress: A, verdict: A, deciding: &[] },
    Case { name: "egress of a hostNetwork source cannot be restricted", policies: &[DENY_EGRESS], from: "shop/host-agent", to: "203.0.113.10:443/TCP", egress: A, ingress: A, verdict: A, deciding: &[] },
    Case { name: "selectors never match a hostNetwork source at ingress", policies: &[("db/p", "{podSelector: {}, ingress: [{from: [{namespaceSelector: {}}]}]}")], from: "shop/host-agent", to: "10.244.2.20:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/p"] },
    Case { name: "ipBlock of the node IP matches a hostNetwork source", policies: &[("db/p", "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 172.18.0.2/32}}]}]}")], from: "shop/host-agent", to: "10.244.2.20:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["db/p"] },
    Case { name: "ingress from the destination's own node is always allowed", policies: &[("db/p", "{podSelector: {}, policyTypes: [Ingress]}")], from: "shop/host-agent", to: "10.244.1.21:5433/TCP", egress: A, ingress: A, verdict: A, deciding: &[] },
    // ---- 8. Services (after DNAT) ----
    Case { name: "service: numeric rule on one backend's targetPort denies the other", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 8000}]}]}")], from: "shop/web", to: "10.96.0.20:80/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "service: named targetPort resolved per backend", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: http}]}]}")], from: "shop/web", to: "10.96.0.20:80/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "service: a port range covering both targetPorts", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 8000, endPort: 8001}]}]}")], from: "shop/web", to: "10.96.0.20:80/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "service: the Service port is not the targetPort", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 80}]}]}")], from: "shop/web", to: "10.96.0.20:80/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "service: an ipBlock of the ClusterIP does not match", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.96.0.20/32}}]}]}")], from: "shop/web", to: "10.96.0.20:80/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "service: one backend outside the peer denies", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}, podSelector: {matchLabels: {role: primary}}}], ports: [{port: 5432}]}]}")], from: "shop/web", to: "10.96.0.30:5432/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "service: all backends allowed", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}, podSelector: {matchLabels: {app: postgres}}}], ports: [{port: 5432}]}]}")], from: "shop/web", to: "10.96.0.30:5432/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "service: one backend's ingress denies", policies: &[("db/replica", "{podSelector: {matchLabels: {role: replica}}, policyTypes: [Ingress]}")], from: "shop/web", to: "10.96.0.30:5432/TCP", egress: A, ingress: D, verdict: D, deciding: &["db/replica"] },
    Case { name: "service: DNS over UDP to ready backends", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}], ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]}]}")], from: "shop/web", to: "10.96.0.10:53/UDP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "service: UDP-only DNS rule breaks DNS over TCP", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}], ports: [{port: 53, protocol: UDP}]}]}")], from: "shop/web", to: "10.96.0.10:53/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "service: API server endpoint on 6443 by ipBlock", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 172.18.0.1/32}}], ports: [{port: 6443}]}]}")], from: "shop/web", to: "10.96.0.1:443/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "service: API server on the Service port 443 is denied", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 172.18.0.1/32}}], ports: [{port: 443}]}]}")], from: "shop/web", to: "10.96.0.1:443/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "service: no ready backend is a deny", policies: &[], from: "shop/web", to: "10.96.0.99:80/TCP", egress: D, ingress: D, verdict: D, deciding: &[] },
    Case { name: "service: unknown Service-range address is a deny", policies: &[], from: "shop/web", to: "10.96.0.77:80/TCP", egress: D, ingress: D, verdict: D, deciding: &[] },
    Case { name: "service: port the Service does not expose is a deny", policies: &[], from: "shop/web", to: "10.96.0.20:81/TCP", egress: D, ingress: D, verdict: D, deciding: &[] },
    // ---- 9. dual stack ----
    Case { name: "IPv6 ClusterIP: selector peer + named targetPort", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: http}]}]}")], from: "shop/worker", to: "[2001:db8:96::21]:80/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "IPv6 ClusterIP: IPv4 ipBlock does not match the IPv6 backend", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: 10.244.0.0/16}}]}]}")], from: "shop/worker", to: "[2001:db8:96::21]:80/TCP", egress: D, ingress: A, verdict: D, deciding: &["shop/p"] },
    Case { name: "IPv6 pod address by IPv6 ipBlock", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: '2001:db8:244::/64'}}]}]}")], from: "shop/web", to: "[2001:db8:244::11]:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "selector peer matches the pod's IPv6 address too", policies: &[("shop/p", "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: http}]}]}")], from: "shop/web", to: "[2001:db8:244::11]:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "ingress IPv4 ipBlock does not match an IPv6 connection", policies: &[("shop/p", "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{ipBlock: {cidr: 10.244.1.0/24}}]}]}")], from: "shop/web", to: "[2001:db8:244::11]:8000/TCP", egress: A, ingress: D, verdict: D, deciding: &["shop/p"] },
    Case { name: "ingress IPv4 ipBlock matches the IPv4 connection", policies: &[("shop/p", "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{ipBlock: {cidr: 10.244.1.0/24}}]}]}")], from: "shop/web", to: "10.244.1.11:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
    Case { name: "ingress IPv6 ipBlock matches the IPv6 connection", policies: &[("shop/p", "{podSelector: {matchLabels: {app: api}}, ingress: [{from: [{ipBlock: {cidr: '2001:db8:244::10/128'}}]}]}")], from: "shop/web", to: "[2001:db8:244::11]:8000/TCP", egress: A, ingress: A, verdict: A, deciding: &["shop/p"] },
];

fn run<V: ClusterView>(cluster: &V, policies: &[(&str, &str)], from: &str, to: &str) -> Evaluation {
    let nps: Vec<_> = policies.iter().map(|(id, spec)| policy(id, spec)).collect();
    let set = PolicySet::new(&nps).unwrap_or_else(|e| panic!("policies invalid: {e}"));
    let src = parse_pod(from).expect("case source is NS/POD");
    let source = cluster
        .pod(&src.namespace, &src.name)
        .unwrap_or_else(|| panic!("no pod {from}"));
    evaluate(
        cluster,
        &set,
        source,
        &parse_target(to).expect("case target"),
    )
}

fn run_table<V: ClusterView>(cluster: &V, skip: &[&str]) {
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in CASES.iter().filter(|c| !skip.contains(&c.name)) {
        ran += 1;
        let ev = run(cluster, c.policies, c.from, c.to);
        let got = (ev.egress, ev.ingress, ev.verdict);
        let deciding: Vec<String> = ev.policies().iter().map(ToString::to_string).collect();
        if got != (c.egress, c.ingress, c.verdict) || deciding != c.deciding {
            failures.push(format!(
                "{}: {} -> {}: want {:?} {:?}, got {got:?} {deciding:?}\n  {ev:?}",
                c.name,
                c.from,
                c.to,
                (c.egress, c.ingress, c.verdict),
                c.deciding
            ));
        }
    }
    assert!(ran >= 60, "only {ran} cases ran");
    assert!(
        failures.is_empty(),
        "{} failing cases:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The table on the lab cluster: the production model plus the lab's Service range.
#[test]
fn table_on_lab_cluster() {
    run_table(&lab_cluster(), &[]);
}

/// The same table on the bare cluster model (`leash::cluster::Cluster`), built from the same
/// objects. The model has no notion of the Service CIDR, so the one case about an unowned
/// Service-range address does not apply to it.
#[test]
fn table_on_cluster_model() {
    run_table(
        &cluster_model(),
        &["service: unknown Service-range address is a deny"],
    );
}

fn cluster_model() -> Cluster {
    support::eval::lab_cluster_parts().model()
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<_> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len());
}

fn id(s: &str) -> PolicyId {
    parse_pod(s).expect("NS/NAME")
}

#[test]
fn matches_carry_rule_peer_and_port_indexes() {
    let ev = run(
        &lab_cluster(),
        &[(
            "shop/p",
            "{podSelector: {}, policyTypes: [Egress], egress: [
                {to: [{ipBlock: {cidr: 198.51.100.0/24}}]},
                {to: [{ipBlock: {cidr: 198.51.100.0/24}}, {ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 80}, {port: 443}]},
                {ports: [{protocol: UDP}, {port: 443}]}]}",
        )],
        "shop/web",
        "203.0.113.10:443/TCP",
    );
    assert_eq!(ev.verdict, Verdict::Allow);
    let t = &ev.targets[0];
    assert_eq!(t.egress.reason, Reason::RuleMatched);
    assert_eq!(
        t.egress.matches,
        vec![
            RuleMatch {
                policy: id("shop/p"),
                rule: 1,
                peer: Some(1),
                port: Some(1)
            },
            RuleMatch {
                policy: id("shop/p"),
                rule: 2,
                peer: None,
                port: Some(1)
            },
        ]
    );
    assert_eq!(t.ingress.reason, Reason::DestinationNotAPod);
    assert_eq!(t.destination, Destination::External);
}

#[test]
fn service_results_are_per_backend_and_sorted() {
    let ev = run(
        &lab_cluster(),
        &[(
            "shop/p",
            "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 8000}]}]}",
        )],
        "shop/web",
        "10.96.0.20:80/TCP",
    );
    assert_eq!(ev.service, Some(id("shop/api-svc")));
    let got: Vec<_> = ev
        .targets
        .iter()
        .map(|t| {
            (
                t.destination.clone(),
                t.ip.to_string(),
                t.port,
                t.egress.verdict,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                Destination::Pod(id("shop/api")),
                "10.244.1.11".to_string(),
                8000,
                Verdict::Allow
            ),
            (
                Destination::Pod(id("shop/api-2")),
                "10.244.2.14".to_string(),
                8001,
                Verdict::Deny
            ),
        ]
    );
}

#[test]
fn dns_service_uses_only_ready_endpoints() {
    let ev = run(&lab_cluster(), &[], "shop/web", "10.96.0.10:53/UDP");
    assert_eq!(ev.service, Some(id("kube-system/kube-dns")));
    assert_eq!(ev.targets.len(), 1, "{ev:?}");
    assert_eq!(
        ev.targets[0].destination,
        Destination::Pod(id("kube-system/coredns-a"))
    );
}

#[test]
fn service_problems_are_named() {
    let c = lab_cluster();
    let ev = run(&c, &[], "shop/web", "10.96.0.99:80/TCP");
    assert_eq!(
        ev.problem,
        Some(Problem::NoReadyBackends(id("shop/empty-svc")))
    );
    assert!(ev.targets.is_empty());
    let ev = run(&c, &[], "shop/web", "10.96.0.20:81/TCP");
    assert_eq!(
        ev.problem,
        Some(Problem::NoSuchServicePort(id("shop/api-svc")))
    );
    let ev = run(&c, &[], "shop/web", "10.96.0.77:80/TCP");
    assert_eq!(ev.problem, Some(Problem::UnknownServiceAddress));
    // Outside the Service range, an unknown address is simply external.
    let ev = run(&c, &[], "shop/web", "10.112.0.77:80/TCP");
    assert_eq!(ev.problem, None);
    assert_eq!(ev.verdict, Verdict::Allow);
}

#[test]
fn host_network_reasons() {
    let c = lab_cluster();
    let ev = run(
        &c,
        &[DENY_EGRESS],
        "shop/host-agent",
        "203.0.113.10:443/TCP",
    );
    assert_eq!(ev.targets[0].egress.reason, Reason::SourceHostNetwork);
    let ev = run(&c, &[], "shop/web", "172.18.0.2:9100/TCP");
    assert_eq!(ev.targets[0].destination, Destination::External);
    let ev = run(
        &c,
        &[("db/p", "{podSelector: {}, policyTypes: [Ingress]}")],
        "shop/host-agent",
        "10.244.1.21:5433/TCP",
    );
    assert_eq!(ev.targets[0].ingress.reason, Reason::FromOwnNode);
    assert_eq!(ev.targets[0].ingress.isolated_by, vec![id("db/p")]);
}

#[test]
fn host_network_backend_is_not_isolated() {
    // A Service whose only backend is a hostNetwork pod (like NodeLocal DNS behind a
    // Service): selectors do not match it, an ipBlock of its node IP does.
    let mut objs = support::eval::lab_cluster_parts();
    objs.services.push(support::eval::service(
        "shop",
        "agent-svc",
        &["10.96.0.50"],
        &[("app", "host-agent")],
        &[("", 9100, "metrics", support::eval::TCP)],
    ));
    let c = objs.build();
    let sel = (
        "shop/p",
        "{podSelector: {}, policyTypes: [Egress, Ingress], egress: [{to: [{podSelector: {matchLabels: {app: host-agent}}}]}]}",
    );
    let ev = run(&c, &[sel], "shop/web", "10.96.0.50:9100/TCP");
    assert_eq!(ev.targets.len(), 1);
    assert_eq!(
        ev.targets[0].destination,
        Destination::HostNetworkPod(id("shop/host-agent"))
    );
    assert_eq!((ev.egress, ev.ingress), (Verdict::Deny, Verdict::Allow));
    let block = (
        "shop/p",
        "{podSelector: {}, policyTypes: [Egress, Ingress], egress: [{to: [{ipBlock: {cidr: 172.18.0.2/32}}], ports: [{port: 9100}]}]}",
    );
    let ev = run(&c, &[block], "shop/web", "10.96.0.50:9100/TCP");
    assert_eq!(ev.verdict, Verdict::Allow);
    assert_eq!(ev.targets[0].ingress.reason, Reason::DestinationHostNetwork);
}

#[test]
fn policy_order_does_not_matter() {
    let c = lab_cluster();
    let a = ("shop/a", "{podSelector: {}, policyTypes: [Egress]}");
    let b = (
        "shop/b",
        "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}",
    );
    let z = ("db/z", "{podSelector: {}, policyTypes: [Ingress]}");
    let one = run(&c, &[a, b, z], "shop/web", "10.244.2.20:443/TCP");
    let two = run(&c, &[z, b, a], "shop/web", "10.244.2.20:443/TCP");
    assert_eq!(one, two);
    let names: Vec<_> = one.policies().iter().map(ToString::to_string).collect();
    assert_eq!(names, ["db/z", "shop/a", "shop/b"]);
}

#[test]
fn pod_not_in_snapshot_namespace_list_still_has_name_label() {
    // A pod whose namespace object is missing from the snapshot: the automatic
    // kubernetes.io/metadata.name label is still assumed.
    let mut objs = support::eval::lab_cluster_parts();
    objs.pods.push(
        pod("ghost", "g")
            .labels(&[("app", "g")])
            .ip("10.244.3.3")
            .build(),
    );
    let c = objs.build();
    let p = (
        "shop/p",
        "{podSelector: {}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ghost}}}]}]}",
    );
    assert_eq!(
        run(&c, &[p], "shop/web", "10.244.3.3:80/TCP").verdict,
        Verdict::Allow
    );
}

fn invalid(spec: &str) -> String {
    match PolicySet::new(&[policy("shop/bad", spec)]) {
        Ok(_) => panic!("accepted invalid policy {spec}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_policies_are_errors_naming_policy_and_field() {
    for (spec, want) in [
        (
            "{podSelector: {matchExpressions: [{key: app, operator: In}]}}",
            "spec.podSelector.matchExpressions[0]: operator In needs at least one value",
        ),
        (
            "{podSelector: {matchExpressions: [{key: app, operator: Exists, values: [x]}]}}",
            "takes no values",
        ),
        (
            "{podSelector: {matchExpressions: [{key: app, operator: Like, values: [x]}]}}",
            "unknown operator \"Like\"",
        ),
        (
            "{podSelector: {matchLabels: {'bad key!': x}}}",
            "invalid label key",
        ),
        (
            "{podSelector: {}, egress: [{to: [{}]}]}",
            "spec.egress[0].to[0]: a peer must set",
        ),
        (
            "{podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]}",
            "spec.ingress[0].from[0]: ipBlock cannot be combined",
        ),
        (
            "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.1/8}}]}]}",
            "spec.egress[0].to[0].ipBlock.cidr: CIDR \"10.0.0.1/8\" has host bits set",
        ),
        (
            "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]}",
            "except[0]: 11.0.0.0/16 is not strictly inside",
        ),
        (
            "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]}",
            "is not strictly inside",
        ),
        (
            "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: ['2001:db8::/64']}}]}]}",
            "another IP family",
        ),
        (
            "{podSelector: {}, egress: [{to: [{ipBlock: {cidr: '::ffff:10.0.0.0/104'}}]}]}",
            "IPv4-mapped",
        ),
        (
            "{podSelector: {}, egress: [{ports: [{endPort: 90}]}]}",
            "spec.egress[0].ports[0].endPort: requires port",
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: http, endPort: 90}]}]}",
            "requires a numeric port",
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: 90, endPort: 80}]}]}",
            "must be at least port 90",
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: 0}]}]}",
            "not a port number",
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: 70000}]}]}",
            "not a port number",
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: 80, protocol: ICMP}]}]}",
            "unsupported protocol \"ICMP\"",
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: 80, protocol: tcp}]}]}",
            "unsupported protocol \"tcp\"",
        ),
        (
            "{podSelector: {}, egress: [{ports: [{port: Not_A_Name}]}]}",
            "invalid port name",
        ),
        (
            "{podSelector: {}, policyTypes: [Outbound]}",
            "unknown type \"Outbound\"",
        ),
    ] {
        let err = invalid(spec);
        assert!(err.starts_with("NetworkPolicy shop/bad: "), "{err}");
        assert!(err.contains(want), "{spec}: want {want:?} in {err:?}");
    }
}

#[test]
fn duplicate_and_unnamespaced_policies_are_errors() {
    let p = policy("shop/p", "{podSelector: {}}");
    let err = PolicySet::new(&[p.clone(), p.clone()]).unwrap_err();
    assert!(matches!(err, Error::DuplicatePolicy { .. }));
    assert_eq!(err.to_string(), "NetworkPolicy shop/p is defined twice");
    let mut q = p;
    q.metadata.namespace = None;
    let err = PolicySet::new(&[q]).unwrap_err().to_string();
    assert!(err.contains("metadata.namespace is missing"), "{err}");
}

#[test]
fn selector_fallback_skips_pods_that_are_not_running() {
    // api-svc has no EndpointSlice: backends come from its selector. A Pending pod is not one.
    let mut objs = support::eval::lab_cluster_parts();
    objs.pods.push(
        pod("shop", "api-3")
            .labels(&[("app", "api")])
            .ip("10.244.2.15")
            .port(Some("http"), 8002, support::eval::TCP)
            .phase("Pending")
            .build(),
    );
    let ev = run(&objs.build(), &[], "shop/web", "10.96.0.20:80/TCP");
    let ports: Vec<u16> = ev.targets.iter().map(|t| t.port).collect();
    assert_eq!(ports, [8000, 8001]);
}

/// Egress-isolating policies of the table that select `shop/web`, renamed apart.
fn egress_pool() -> Vec<(String, &'static str)> {
    let mut pool: Vec<&'static str> = CASES
        .iter()
        .flat_map(|c| c.policies.iter())
        .filter(|(id, spec)| {
            id.starts_with("shop/") && spec.starts_with("{podSelector: {}, policyTypes: [Egress]")
        })
        .map(|(_, spec)| *spec)
        .collect();
    pool.sort_unstable();
    pool.dedup();
    pool.into_iter()
        .enumerate()
        .map(|(i, spec)| (format!("shop/p{i:02}"), spec))
        .collect()
}

/// Every destination the table uses.
fn targets() -> Vec<&'static str> {
    let mut t: Vec<&'static str> = CASES.iter().map(|c| c.to).collect();
    t.sort_unstable();
    t.dedup();
    t
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

    /// Rules of all policies isolating a pod are unioned: allowed by {A, B} exactly when
    /// allowed by A alone or by B alone, whatever the order.
    #[test]
    fn egress_is_the_union_of_isolating_policies(
        i in proptest::prelude::any::<proptest::sample::Index>(),
        j in proptest::prelude::any::<proptest::sample::Index>(),
        k in proptest::prelude::any::<proptest::sample::Index>(),
    ) {
        let pool = egress_pool();
        proptest::prop_assume!(pool.len() >= 10);
        let targets = targets();
        let (a, b) = (&pool[i.index(pool.len())], &pool[j.index(pool.len())]);
        let to = targets[k.index(targets.len())];
        let c = lab_cluster();
        let alone_a = run(&c, &[(a.0.as_str(), a.1)], "shop/web", to);
        let alone_b = run(&c, &[(b.0.as_str(), b.1)], "shop/web", to);
        let ab = if a.0 == b.0 {
            run(&c, &[(a.0.as_str(), a.1)], "shop/web", to)
        } else {
            run(&c, &[(a.0.as_str(), a.1), (b.0.as_str(), b.1)], "shop/web", to)
        };
        let ba = if a.0 == b.0 {
            ab.clone()
        } else {
            run(&c, &[(b.0.as_str(), b.1), (a.0.as_str(), a.1)], "shop/web", to)
        };
        proptest::prop_assert_eq!(&ab, &ba);
        if ab.problem.is_none() {
            let either = alone_a.egress == Verdict::Allow || alone_b.egress == Verdict::Allow;
            proptest::prop_assert_eq!(ab.egress == Verdict::Allow, either, "{} + {} -> {}", a.1, b.1, to);
        }
        // Egress policies never change ingress.
        proptest::prop_assert_eq!(ab.ingress, run(&c, &[], "shop/web", to).ingress);
    }
}

#[test]
fn near_misses_name_rules_matching_only_peer_or_port() {
    let p = (
        "shop/p",
        "{podSelector: {}, policyTypes: [Egress], egress: [
            {to: [{ipBlock: {cidr: 203.0.113.0/24}}], ports: [{port: 80}]},
            {to: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{port: 443}]},
            {to: [{ipBlock: {cidr: 198.51.100.0/24}}], ports: [{port: 80}]}]}",
    );
    let c = lab_cluster();
    let ev = run(&c, &[p], "shop/web", "203.0.113.10:443/TCP");
    assert_eq!(ev.verdict, Verdict::Deny);
    assert_eq!(
        ev.targets[0].egress.near_misses,
        vec![
            NearMiss {
                policy: id("shop/p"),
                rule: 0,
                matched: Half::Peer(Some(0))
            },
            NearMiss {
                policy: id("shop/p"),
                rule: 1,
                matched: Half::Port(Some(0))
            },
        ]
    );
    // Once a rule allows the connection, near misses are not reported.
    let allow = (
        "shop/q",
        "{podSelector: {}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}",
    );
    let ev = run(&c, &[p, allow], "shop/web", "203.0.113.10:443/TCP");
    assert_eq!(ev.verdict, Verdict::Allow);
    assert!(ev.targets[0].egress.near_misses.is_empty());
}
