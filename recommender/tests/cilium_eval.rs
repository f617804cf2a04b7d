//! The CiliumNetworkPolicy evaluator on tables written from Cilium's documented semantics
//! (docs.cilium.io: Policy Language — Layer 3 endpoints, entities, CIDR with except, DNS
//! based with toFQDNs and matchPattern; Layer 4 toPorts with endPort; DNS proxy rules;
//! Kubernetes namespaces of a CiliumNetworkPolicy; default deny once a policy selects an
//! endpoint for egress; rules as a union of allows).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use leash::cilium::eval::{self, Destination, Peer, PolicySet, Reason, Source};
use leash::cilium::{self, CiliumNetworkPolicy};
use leash_records::Protocol;

fn policy(ns: &str, name: &str, spec: &str) -> CiliumNetworkPolicy {
    let text = format!(
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    );
    cilium::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// `payment` in `shop` egress to `to`, on `port`/`proto`, with the names its lookups returned.
fn allowed(
    set: &PolicySet,
    to: Peer<'_>,
    addr: &str,
    n: &[&str],
    port: u16,
    proto: Protocol,
) -> bool {
    let l = labels(&[("app", "payment")]);
    let ns = names(n);
    eval::evaluate(
        set,
        &Source {
            namespace: "shop",
            labels: &l,
        },
        &Destination {
            ip: ip(addr),
            peer: to,
            names: &ns,
        },
        port,
        proto,
    )
    .allowed
}

const TCP: Protocol = Protocol::Tcp;
const UDP: Protocol = Protocol::Udp;

fn set(specs: &[(&str, &str)]) -> PolicySet {
    let ps: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, (ns, s))| policy(ns, &format!("p{i}"), s))
        .collect();
    PolicySet::new(&ps).expect("compiles")
}

const PAYMENT: &str = "  endpointSelector:\n    matchLabels:\n      app: payment\n";

#[test]
fn to_fqdns_allows_only_addresses_returned_for_the_name() {
    let s = set(&[(
        "shop",
        &format!(
            "{PAYMENT}  egress:\n  - toFQDNs:\n    - matchName: api.stripe.test\n    toPorts:\n    - ports:\n      - port: \"443\"\n        protocol: TCP\n"
        ),
    )]);
    // (names returned for the address, address, port, proto, allowed)
    let table: &[(&[&str], &str, u16, Protocol, bool)] = &[
        (&["api.stripe.test"], "203.0.113.10", 443, TCP, true),
        // Case and the trailing dot do not matter.
        (&["API.Stripe.Test."], "203.0.113.10", 443, TCP, true),
        // The same address without the lookup: no name, denied.
        (&[], "203.0.113.10", 443, TCP, false),
        // Another name returned the address: not this rule's.
        (&["www.stripe.test"], "203.0.113.10", 443, TCP, false),
        // A name in a name: no substring matching.
        (&["xapi.stripe.test"], "203.0.113.10", 443, TCP, false),
        // Wrong port, wrong protocol.
        (&["api.stripe.test"], "203.0.113.10", 80, TCP, false),
        (&["api.stripe.test"], "203.0.113.10", 443, UDP, false),
        // Several names: one that matches is enough (a shared address).
        (
            &["cdn.test", "api.stripe.test"],
            "198.51.100.7",
            443,
            TCP,
            true,
        ),
    ];
    for (n, a, port, proto, want) in table {
        assert_eq!(
            allowed(&s, Peer::World, a, n, *port, *proto),
            *want,
            "{n:?} {a}:{port}/{proto}"
        );
    }
    // toFQDNs never selects a pod, whatever the name.
    let l = labels(&[("app", "x")]);
    let pod = Peer::Endpoint {
        namespace: "shop",
        labels: &l,
    };
    assert!(!allowed(
        &s,
        pod,
        "10.0.1.9",
        &["api.stripe.test"],
        443,
        TCP
    ));
}

#[test]
fn match_pattern_stars_stay_within_one_label() {
    let cases: &[(&str, &str, bool)] = &[
        ("*.x.test", "a.x.test", true),
        ("*.x.test", "x.test", false),
        ("*.x.test", "a.b.x.test", false),
        ("*.x.test", "ax.test", false),
        ("api-*.x.test", "api-eu.x.test", true),
        ("api-*.x.test", "api-.x.test", true),
        ("api-*.x.test", "web-eu.x.test", false),
        ("*", "anything.at.all.test", true),
        ("*", "x", true),
        ("*.*.test", "a.b.test", true),
        ("*.*.test", "a.test", false),
    ];
    for (pattern, name, want) in cases {
        let sel = cilium::FqdnSelector::MatchPattern((*pattern).to_owned());
        assert_eq!(eval::name_matches(&sel, name), *want, "{pattern} ~ {name}");
    }
    // A hostile pattern answers at once (no backtracking blow-up).
    let hostile = cilium::FqdnSelector::MatchPattern("*a".repeat(40));
    let started = std::time::Instant::now();
    assert!(!eval::name_matches(
        &hostile,
        &format!("{}b", "a".repeat(250))
    ));
    assert!(started.elapsed() < std::time::Duration::from_secs(1));
    let s = set(&[(
        "shop",
        &format!("{PAYMENT}  egress:\n  - toFQDNs:\n    - matchPattern: \"*.x.test\"\n"),
    )]);
    assert!(allowed(
        &s,
        Peer::World,
        "198.51.100.1",
        &["a.x.test"],
        1234,
        TCP
    ));
    assert!(!allowed(
        &s,
        Peer::World,
        "198.51.100.1",
        &["x.test"],
        1234,
        TCP
    ));
}

#[test]
fn cidr_sets_carve_out_their_excepts_and_select_only_the_world() {
    let s = set(&[(
        "shop",
        &format!(
            "{PAYMENT}  egress:\n  - toCIDRSet:\n    - cidr: 203.0.113.0/24\n      except:\n      - 203.0.113.128/25\n    - cidr: 2001:db8::/32\n"
        ),
    )]);
    let table: &[(&str, bool)] = &[
        ("203.0.113.1", true),
        ("203.0.113.127", true),
        ("203.0.113.128", false),
        ("203.0.113.255", false),
        ("198.51.100.1", false),
        ("2001:db8::1", true),
        ("2001:db9::1", false),
        // An IPv4-mapped IPv6 address is the IPv4 address.
        ("::ffff:203.0.113.5", true),
    ];
    for (a, want) in table {
        assert_eq!(allowed(&s, Peer::World, a, &[], 443, TCP), *want, "{a}");
    }
    // A pod inside the block is not selected by CIDR.
    let l = labels(&[("app", "x")]);
    let pod = Peer::Endpoint {
        namespace: "shop",
        labels: &l,
    };
    assert!(!allowed(&s, pod, "203.0.113.1", &[], 443, TCP));
    assert!(!allowed(
        &s,
        Peer::KubeApiserver,
        "203.0.113.1",
        &[],
        443,
        TCP
    ));
}

#[test]
fn to_ports_ranges_protocols_and_port_zero() {
    let s = set(&[(
        "shop",
        &format!(
            "{PAYMENT}  egress:\n  - toCIDRSet:\n    - cidr: 198.51.100.0/24\n    toPorts:\n    - ports:\n      - port: \"8000\"\n        endPort: 8080\n        protocol: TCP\n      - port: \"53\"\n        protocol: ANY\n  - toCIDRSet:\n    - cidr: 203.0.113.0/24\n    toPorts:\n    - ports:\n      - port: \"0\"\n        protocol: UDP\n"
        ),
    )]);
    let table: &[(&str, u16, Protocol, bool)] = &[
        ("198.51.100.1", 8000, TCP, true),
        ("198.51.100.1", 8080, TCP, true),
        ("198.51.100.1", 8081, TCP, false),
        ("198.51.100.1", 7999, TCP, false),
        ("198.51.100.1", 8000, UDP, false),
        ("198.51.100.1", 53, UDP, true),
        ("198.51.100.1", 53, TCP, true),
        ("203.0.113.1", 9, UDP, true),
        ("203.0.113.1", 65535, UDP, true),
        ("203.0.113.1", 9, TCP, false),
    ];
    for (a, port, proto, want) in table {
        assert_eq!(
            allowed(&s, Peer::World, a, &[], *port, *proto),
            *want,
            "{a}:{port}/{proto}"
        );
    }
}

#[test]
fn selection_default_deny_and_the_union_of_allows() {
    let l = labels(&[("app", "payment")]);
    let none = BTreeSet::new();
    let world = |a: &str| Destination {
        ip: ip(a),
        peer: Peer::World,
        names: &none,
    };
    let src = Source {
        namespace: "shop",
        labels: &l,
    };
    // No policy selects the endpoint: allowed.
    let empty = PolicySet::new(&[]).expect("empty");
    let v = eval::evaluate(&empty, &src, &world("198.51.100.1"), 443, TCP);
    assert!(v.allowed && v.reason == Reason::NotSelected);
    // A policy for other pods, or in another namespace, or with no egress: still allowed.
    let others = set(&[
        (
            "shop",
            "  endpointSelector:\n    matchLabels:\n      app: web\n  egress:\n  - toEntities:\n    - world\n",
        ),
        (
            "bank",
            &format!("{PAYMENT}  egress:\n  - toEntities:\n    - world\n"),
        ),
        ("shop", PAYMENT),
    ]);
    assert!(
        eval::evaluate(&others, &src, &world("198.51.100.1"), 443, TCP).reason
            == Reason::NotSelected
    );
    // Selected for egress: default deny except the rules; two policies are a union.
    let two = set(&[
        (
            "shop",
            &format!("{PAYMENT}  egress:\n  - toCIDRSet:\n    - cidr: 198.51.100.0/24\n"),
        ),
        (
            "shop",
            "  endpointSelector: {}\n  egress:\n  - toCIDRSet:\n    - cidr: 203.0.113.0/24\n",
        ),
    ]);
    let v = eval::evaluate(&two, &src, &world("203.0.113.9"), 443, TCP);
    assert!(v.allowed, "{v:?}");
    assert_eq!(
        v.matched.as_ref().map(|m| m.policy.as_str()),
        Some("shop/p1")
    );
    assert_eq!(
        v.selected_by,
        vec!["shop/p0".to_owned(), "shop/p1".to_owned()]
    );
    let v = eval::evaluate(&two, &src, &world("2001:db8::9"), 443, TCP);
    assert!(!v.allowed && v.reason == Reason::NoRuleMatched);
    // A rule with ports and no peer applies to every destination.
    let any = set(&[(
        "shop",
        &format!(
            "{PAYMENT}  egress:\n  - toPorts:\n    - ports:\n      - port: \"443\"\n        protocol: TCP\n"
        ),
    )]);
    assert!(allowed(&any, Peer::World, "198.51.100.1", &[], 443, TCP));
    assert!(!allowed(&any, Peer::World, "198.51.100.1", &[], 80, TCP));
}

#[test]
fn endpoints_default_to_the_policys_namespace_and_entities_are_identities() {
    let s = set(&[(
        "shop",
        &format!(
            "{PAYMENT}  egress:\n  - toEndpoints:\n    - matchLabels:\n        app: orders\n  - toEndpoints:\n    - matchLabels:\n        k8s:io.kubernetes.pod.namespace: kube-system\n        k8s-app: kube-dns\n  - toEntities:\n    - kube-apiserver\n"
        ),
    )]);
    let orders = labels(&[("app", "orders")]);
    let dns = labels(&[("k8s-app", "kube-dns")]);
    let ep = |namespace, labels| Peer::Endpoint { namespace, labels };
    assert!(allowed(
        &s,
        ep("shop", &orders),
        "10.0.1.20",
        &[],
        8080,
        TCP
    ));
    // Same labels in another namespace: the selector names no namespace, so it is shop's.
    assert!(!allowed(
        &s,
        ep("bank", &orders),
        "10.0.2.20",
        &[],
        8080,
        TCP
    ));
    assert!(allowed(
        &s,
        ep("kube-system", &dns),
        "10.244.0.2",
        &[],
        53,
        UDP
    ));
    assert!(!allowed(&s, ep("shop", &dns), "10.0.1.30", &[], 53, UDP));
    assert!(allowed(&s, Peer::KubeApiserver, "10.0.0.1", &[], 6443, TCP));
    assert!(!allowed(&s, Peer::World, "10.0.0.1", &[], 6443, TCP));
    assert!(!allowed(&s, Peer::RemoteNode, "10.0.0.2", &[], 10250, TCP));
    let c = set(&[(
        "shop",
        &format!("{PAYMENT}  egress:\n  - toEntities:\n    - cluster\n"),
    )]);
    assert!(allowed(&c, Peer::RemoteNode, "10.0.0.2", &[], 10250, TCP));
    assert!(allowed(&c, Peer::KubeApiserver, "10.0.0.1", &[], 6443, TCP));
    assert!(!allowed(&c, Peer::World, "198.51.100.1", &[], 443, TCP));
}

#[test]
fn dns_rules_filter_lookups_at_the_proxy() {
    let s = set(&[(
        "shop",
        &format!(
            "{PAYMENT}  egress:\n  - toEndpoints:\n    - matchLabels:\n        k8s:io.kubernetes.pod.namespace: kube-system\n    toPorts:\n    - ports:\n      - port: \"53\"\n        protocol: ANY\n      rules:\n        dns:\n        - matchPattern: \"*\"\n  - toEndpoints:\n    - matchLabels:\n        k8s:io.kubernetes.pod.namespace: infra\n    toPorts:\n    - ports:\n      - port: \"53\"\n        protocol: UDP\n      rules:\n        dns:\n        - matchName: api.stripe.test\n"
        ),
    )]);
    let l = labels(&[("app", "payment")]);
    let src = Source {
        namespace: "shop",
        labels: &l,
    };
    let none = BTreeSet::new();
    let kd = labels(&[]);
    let resolver = |ns| Destination {
        ip: ip("10.244.0.2"),
        peer: Peer::Endpoint {
            namespace: ns,
            labels: &kd,
        },
        names: &none,
    };
    // `*` lets every lookup through.
    assert!(eval::lookup(&s, &src, &resolver("kube-system"), 53, UDP, "anything.test").allowed);
    assert!(eval::lookup(&s, &src, &resolver("kube-system"), 53, TCP, "x").allowed);
    // A matchName lets only that name through.
    assert!(eval::lookup(&s, &src, &resolver("infra"), 53, UDP, "api.stripe.test").allowed);
    assert!(!eval::lookup(&s, &src, &resolver("infra"), 53, UDP, "evil.test").allowed);
}

#[test]
fn policies_outside_the_subset_are_refused_naming_the_field() {
    let bad: &[(&str, &str)] = &[
        (
            "  endpointSelector: {}\n  egress:\n  - toCIDRSet:\n    - cidr: 203.0.113.0/33\n",
            "toCIDRSet[0]",
        ),
        (
            "  endpointSelector: {}\n  egress:\n  - toCIDRSet:\n    - cidr: 203.0.113.0/24\n      except:\n      - 198.51.100.0/24\n",
            "is not inside",
        ),
        (
            "  endpointSelector: {}\n  egress:\n  - toPorts:\n    - ports:\n      - port: https\n",
            "only numeric ports",
        ),
        (
            "  endpointSelector: {}\n  egress:\n  - toPorts:\n    - ports:\n      - port: \"90\"\n        endPort: 80\n",
            "endPort 80 is below port 90",
        ),
        (
            "  endpointSelector:\n    matchLabels:\n      reserved:host: \"\"\n  egress:\n  - {}\n",
            "unsupported label source",
        ),
    ];
    for (spec, want) in bad {
        let err = PolicySet::new(&[policy("shop", "bad", spec)]).expect_err(spec);
        let text = err.to_string();
        assert!(text.contains("shop/bad") && text.contains(want), "{text}");
    }
    // Fields outside the subset are refused when read, with the field's name.
    for (spec, field) in [
        (
            "  endpointSelector: {}\n  egressDeny:\n  - toEntities:\n    - world\n",
            "egressDeny",
        ),
        ("  endpointSelector: {}\n  ingress:\n  - {}\n", "ingress"),
        (
            "  endpointSelector: {}\n  egress:\n  - toServices:\n    - k8sService:\n        serviceName: x\n",
            "toServices",
        ),
        (
            "  endpointSelector: {}\n  egress:\n  - toEntities:\n    - health\n",
            "health",
        ),
    ] {
        let text = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: x\n  namespace: shop\nspec:\n{spec}"
        );
        let err = cilium::from_yaml(&text).expect_err(spec).to_string();
        assert!(err.contains(field), "{err}");
    }
}

mod parsers {
    use super::*;
    use proptest::prelude::*;

    /// Policy-like YAML assembled from fragments of the subset and of what lies outside it.
    fn fragments() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "  egress:\n",
            "  - toFQDNs:\n    - matchName: a.test\n",
            "    - matchPattern: \"*.b.test\"\n",
            "    - matchName: x\n      matchPattern: y\n",
            "  - toCIDRSet:\n    - cidr: 203.0.113.0/24\n      except:\n      - 203.0.113.0/25\n",
            "    - cidr: nonsense\n",
            "  - toPorts:\n    - ports:\n      - port: \"443\"\n        endPort: 80\n",
            "      - port: \"65536\"\n        protocol: ANY\n",
            "      rules:\n        dns:\n        - matchPattern: \"*\"\n",
            "  - toEntities:\n    - kube-apiserver\n    - world\n",
            "  - toEndpoints:\n    - matchExpressions:\n      - key: app\n        operator: Maybe\n",
            "  endpointSelector: {}\n",
            "  ingress: []\n",
            "- [\n",
            "---\n",
            ": :\n",
        ]);
        prop::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn reading_and_compiling_never_panic(body in fragments(), noise in ".{0,40}") {
            let text = format!("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: shop\nspec:\n{body}{noise}");
            let _ = cilium::from_yaml(&text);
            if let Ok(objects) = cilium::objects_of_text(&text)
                && let Ok(set) = PolicySet::new(&objects)
            {
                let l = labels(&[("app", "payment")]);
                let n = names(&["a.test"]);
                let d = Destination { ip: ip("203.0.113.1"), peer: Peer::World, names: &n };
                let _ = eval::evaluate(&set, &Source { namespace: "shop", labels: &l }, &d, 443, TCP);
            }
            let _ = cilium::objects_of_text(&noise);
        }

        #[test]
        fn patterns_never_panic_and_star_matches_every_name(p in "[a-z*.-]{0,12}", n in "[a-z.-]{0,20}") {
            let _ = eval::name_matches(&cilium::FqdnSelector::MatchPattern(p), &n);
            prop_assert!(eval::name_matches(&cilium::FqdnSelector::MatchPattern("*".into()), &n));
        }
    }
}
