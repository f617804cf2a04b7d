//! `recommend --format cilium`: the CiliumNetworkPolicies of a demo-like and a hostile
//! fixture, validated against the published CRD schema, with the traps of FQDN policies
//! (search-domain expansions, CNAME chains, shared and nameless addresses), their
//! self-check, and the property that every observed flow with a name is allowed.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash::cilium::eval::{self, Destination, Peer, PolicySet, Source};
use leash::cilium::{CiliumNetworkPolicy, Entity, FqdnSelector};
use leash::recommend::{Options, SelfCheckError};
use leash::render::cilium::{self as render, Output};
use leash_records::{Protocol, Record};
use proptest::prelude::*;
use serde_json::json;
use support::recommend::{Fx, Run, flow, run};

const DNS: &str = "10.96.0.10";

/// shop: `payment` (10.0.1.10) and `orders` behind Service 10.96.5.5:80 → 8080; the kubeadm
/// DNS; the API server 10.0.0.1:6443 behind `default/kubernetes`.
fn shop() -> (Fx, String) {
    let mut fx = Fx::new();
    fx.namespace("shop")
        .kubeadm_dns()
        .api_server("10.0.0.1", 6443);
    let pods = fx.deployment(
        "shop",
        "payment",
        &[("app", "payment")],
        &["10.0.1.10"],
        &[],
    );
    let orders = fx.deployment(
        "shop",
        "orders",
        &[("app", "orders")],
        &["10.0.1.20"],
        &[(Some("http"), 8080, "TCP")],
    );
    fx.service(
        "shop",
        "orders",
        "10.96.5.5",
        Some(&[("app", "orders")]),
        &[("http", 80, "TCP", IntOrString::Int(8080))],
    )
    .slice(
        "shop",
        "orders",
        &[("http", 8080, "TCP")],
        &[("10.0.1.20", Some(&orders[0]))],
    );
    (fx, pods[0].clone())
}

/// A DNS answer to `query` from pod `shop/pod`: CNAMEs `chain` (each owned by the previous
/// name), then the A records of the last name, at `time`.
fn answer(pod: &str, query: &str, chain: &[&str], ips: &[&str], time: &str) -> Record {
    let mut answers = Vec::new();
    let mut owner = query.to_owned();
    for c in chain {
        answers.push(json!({"name": owner, "type": "CNAME", "data": c, "ttl": 60}));
        owner = (*c).to_owned();
    }
    for ip in ips {
        answers.push(json!({"name": owner, "type": "A", "data": ip, "ttl": 30}));
    }
    let rcode = if ips.is_empty() {
        "NXDOMAIN"
    } else {
        "NOERROR"
    };
    serde_json::from_value(json!({
        "v": 1, "kind": "dns", "node": "n1",
        "pod": {"uid": "", "namespace": "shop", "name": pod},
        "cgroup": "/k", "server": DNS, "query": query, "qtype": "A", "rcode": rcode,
        "answers": answers, "time": time
    }))
    .expect("a v1 dns record")
}

/// The demo's traffic of `payment`: DNS, orders, the API server, api.stripe.test moving from
/// 203.0.113.10 to 203.0.113.11, a CNAME chain, two names on one address, a nameless
/// address, and a search-domain expansion answered by a wildcard.
fn demo_records(pod: &str) -> Vec<Record> {
    vec![
        answer(
            pod,
            "api.stripe.test",
            &[],
            &["203.0.113.10"],
            "2026-11-21T00:00:00Z",
        ),
        answer(
            pod,
            "api.stripe.test",
            &[],
            &["203.0.113.11"],
            "2026-11-23T00:00:00Z",
        ),
        answer(
            pod,
            "api.stripe.test.shop.svc.cluster.local",
            &[],
            &["198.51.100.99"],
            "2026-11-21T00:00:00Z",
        ),
        answer(
            pod,
            "cdn.shop.test",
            &["edge.cdnprovider.test"],
            &["198.51.100.20"],
            "2026-11-21T00:00:00Z",
        ),
        answer(
            pod,
            "a.shared.test",
            &[],
            &["198.51.100.30"],
            "2026-11-21T00:00:00Z",
        ),
        answer(
            pod,
            "b.shared.test",
            &[],
            &["198.51.100.30"],
            "2026-11-21T00:00:00Z",
        ),
        flow("shop", pod, "UDP", DNS, 53, 40, &[]),
        flow("shop", pod, "TCP", "10.96.5.5", 80, 9, &[]),
        flow("shop", pod, "TCP", "10.96.0.1", 443, 3, &[]),
        flow("shop", pod, "TCP", "203.0.113.10", 443, 5, &[]),
        flow("shop", pod, "TCP", "203.0.113.11", 443, 5, &[]),
        flow("shop", pod, "TCP", "198.51.100.20", 443, 2, &[]),
        flow("shop", pod, "TCP", "198.51.100.30", 443, 2, &[]),
        flow("shop", pod, "TCP", "198.51.100.99", 443, 1, &[]),
        flow("shop", pod, "TCP", "203.0.113.200", 8443, 1, &[]),
    ]
}

fn cilium(run: &Run) -> Output {
    render::checked(&run.cluster, &run.rec, &run.obs).expect("the Cilium self-check passes")
}

fn payment(out: &Output) -> &CiliumNetworkPolicy {
    out.policies
        .iter()
        .find(|p| p.metadata.name == "payment-egress")
        .expect("payment's policy")
}

fn fqdn_names(p: &CiliumNetworkPolicy) -> BTreeSet<String> {
    p.spec
        .egress
        .iter()
        .flatten()
        .flat_map(|r| r.to_fqdns.iter())
        .map(|f| match f {
            FqdnSelector::MatchName(n) | FqdnSelector::MatchPattern(n) => n.clone(),
        })
        .collect()
}

fn cidrs(p: &CiliumNetworkPolicy) -> Vec<String> {
    p.spec
        .egress
        .iter()
        .flatten()
        .flat_map(|r| r.to_cidr_set.iter())
        .map(|c| c.cidr.clone())
        .collect()
}

/// Every object of the output, as JSON, passes the CRD's schema strictly.
fn assert_valid(out: &Output) {
    let schema = support::crd::cilium_network_policy();
    for p in &out.policies {
        let v = serde_json::to_value(p).expect("serializes");
        let problems = support::crd::validate(&schema, &v);
        assert!(problems.is_empty(), "{}: {problems:#?}", p.metadata.name);
        // The YAML text is what is applied: it must read back to the same object.
        let text = render::policy_yaml(p).expect("renders");
        let back: serde_json::Value = serde_norway::from_str(&text).expect("YAML");
        assert!(support::crd::validate(&schema, &back).is_empty(), "{text}");
        assert_eq!(&leash::cilium::from_yaml(&text).expect("reads back"), p);
    }
}

#[test]
fn the_demo_names_what_the_pod_asked_and_passes_the_crd_schema() {
    let (fx, pod) = shop();
    let run = run(&fx, &demo_records(&pod), &Options::default());
    let out = cilium(&run);
    assert_valid(&out);
    let p = payment(&out);
    assert_eq!(p.spec.endpoint_selector.match_labels["app"], "payment");
    // The names asked, each once; never the CNAME target, never the search-domain expansion.
    assert_eq!(
        fqdn_names(p),
        BTreeSet::from(
            [
                "a.shared.test",
                "api.stripe.test",
                "b.shared.test",
                "cdn.shop.test"
            ]
            .map(String::from)
        )
    );
    let egress = p.spec.egress.as_ref().expect("egress");
    // The DNS rule: the CoreDNS pods by namespace and labels, through the DNS proxy.
    let dns = egress
        .iter()
        .find(|r| r.to_ports.iter().any(|t| t.rules.is_some()))
        .expect("a DNS rule");
    assert_eq!(
        dns.to_endpoints[0].match_labels["k8s:io.kubernetes.pod.namespace"],
        "kube-system"
    );
    assert_eq!(dns.to_endpoints[0].match_labels["k8s-app"], "kube-dns");
    assert_eq!(
        dns.to_ports[0].rules.as_ref().expect("rules").dns,
        vec![FqdnSelector::MatchPattern("*".into())]
    );
    // orders on its targetPort, by namespace and labels.
    let orders = egress
        .iter()
        .find(|r| {
            r.to_endpoints
                .iter()
                .any(|s| s.match_labels.get("app").map(String::as_str) == Some("orders"))
        })
        .expect("orders' rule");
    assert_eq!(orders.to_ports[0].ports[0].port, "8080");
    assert_eq!(
        orders.to_endpoints[0].match_labels["k8s:io.kubernetes.pod.namespace"],
        "shop"
    );
    // The API server by entity, not by address.
    assert!(
        egress
            .iter()
            .any(|r| r.to_entities == [Entity::KubeApiserver]
                && r.to_ports[0].ports[0].port == "6443")
    );
    // Only the nameless addresses by CIDR: the wildcard-answered expansion's and the one no
    // lookup returned; no named address (the shared one included) is in a block.
    let blocks = cidrs(p);
    let nets: Vec<ipnet::IpNet> = blocks.iter().map(|b| b.parse().expect("cidr")).collect();
    let covered = |ip: &str| {
        nets.iter()
            .any(|n| n.contains(&ip.parse::<IpAddr>().expect("ip")))
    };
    assert!(
        covered("198.51.100.99") && covered("203.0.113.200"),
        "{blocks:?}"
    );
    for named in [
        "203.0.113.10",
        "203.0.113.11",
        "198.51.100.20",
        "198.51.100.30",
    ] {
        assert!(
            !covered(named),
            "{named} is allowed by name, not by {blocks:?}"
        );
    }
    // The traps are in the report's notes, escaped.
    let section = render::report_section(&out, "shop");
    assert!(section.contains("cluster domain"), "{section}");
    assert!(section.contains("198.51.100.30 was returned for a.shared.test, b.shared.test"));
    // Deterministic: a second run gives the same bytes.
    let again = cilium(&run);
    assert_eq!(
        render::yaml_stream(&run.rec, &out).expect("renders"),
        render::yaml_stream(&run.rec, &again).expect("renders")
    );
}

#[test]
fn the_stream_keeps_the_default_deny_as_a_network_policy() {
    let (fx, pod) = shop();
    let run = run(&fx, &demo_records(&pod), &Options::default());
    let text = render::yaml_stream(&run.rec, &cilium(&run)).expect("renders");
    let docs: Vec<&str> = text.split("---\n").filter(|d| !d.is_empty()).collect();
    assert!(docs[0].contains("kind: NetworkPolicy") && docs[0].contains("default-deny-egress"));
    assert!(
        docs.iter()
            .skip(1)
            .all(|d| d.starts_with("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n")),
        "{text}"
    );
    assert!(text.contains("matchName: api.stripe.test"), "{text}");
}

#[test]
fn the_self_check_fails_when_a_named_flow_is_not_allowed() {
    let (fx, pod) = shop();
    let run = run(&fx, &demo_records(&pod), &Options::default());
    let mut out = cilium(&run);
    // Drop the toFQDNs rule: the named flows are denied, and the check names one.
    for p in &mut out.policies {
        if let Some(e) = p.spec.egress.as_mut() {
            e.retain(|r| r.to_fqdns.is_empty());
        }
    }
    match render::self_check(&run.cluster, &run.obs, &run.rec, &out) {
        Err(SelfCheckError::Denied(d)) => {
            assert!(
                d.iter().any(|d| d.destination == "203.0.113.11:443/TCP"
                    && d.reason.contains("api.stripe.test")),
                "{d:?}"
            );
        }
        other => panic!("expected denied flows, got {other:?}"),
    }
}

#[test]
fn hostile_names_are_never_written_and_are_escaped_in_the_notes() {
    let (fx, pod) = shop();
    let hostile = "evil.test\nspec: {}";
    let markdown = "x*[click](https://evil.test)*.test";
    let mut records = vec![
        answer(
            &pod,
            hostile,
            &[],
            &["198.51.100.66"],
            "2026-11-21T00:00:00Z",
        ),
        answer(
            &pod,
            markdown,
            &[],
            &["198.51.100.67"],
            "2026-11-21T00:00:00Z",
        ),
        flow("shop", &pod, "TCP", "198.51.100.66", 443, 1, &[]),
        flow("shop", &pod, "TCP", "198.51.100.67", 443, 1, &[]),
    ];
    records.extend(demo_records(&pod));
    let run = run(&fx, &records, &Options::default());
    let out = cilium(&run);
    assert_valid(&out);
    let names = fqdn_names(payment(&out));
    assert!(
        names.iter().all(|n| leash::cilium::valid_match_name(n)),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains("evil")), "{names:?}");
    let section = render::report_section(&out, "shop");
    assert!(
        section.contains("not a name a matchName may hold"),
        "{section}"
    );
    assert!(!section.contains("[click](https"), "{section}");
    assert!(
        section.lines().all(|l| !l.starts_with("spec:")),
        "{section}"
    );
}

#[test]
fn many_sibling_names_justify_a_pattern_and_a_few_do_not() {
    let (fx, pod) = shop();
    let mut records = demo_records(&pod);
    for (i, label) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let ip = format!("203.0.113.{}", 50 + i);
        records.push(answer(
            &pod,
            &format!("{label}.tiles.maps.test"),
            &[],
            &[&ip],
            "2026-11-21T00:00:00Z",
        ));
        records.push(flow("shop", &pod, "TCP", &ip, 443, 1, &[]));
    }
    let run = run(&fx, &records, &Options::default());
    let out = cilium(&run);
    assert_valid(&out);
    let names = fqdn_names(payment(&out));
    assert!(names.contains("*.tiles.maps.test"), "{names:?}");
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with(".tiles.maps.test") && !n.starts_with('*'))
    );
    // Two siblings (a.shared.test, b.shared.test) stay exact names.
    assert!(names.contains("a.shared.test") && !names.contains("*.shared.test"));
    assert!(render::report_section(&out, "shop").contains("5 sibling names"));
}

#[test]
fn the_validator_rejects_what_the_crd_refuses() {
    let schema = support::crd::cilium_network_policy();
    let (fx, pod) = shop();
    let run = run(&fx, &demo_records(&pod), &Options::default());
    let good = serde_json::to_value(payment(&cilium(&run))).expect("json");
    let mutate = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        support::crd::validate(&schema, &v)
    };
    assert!(mutate(&|_| {}).is_empty());
    let unknown = mutate(&|v| v["spec"]["egress"][0]["toFQDN"] = json!([]));
    assert!(
        unknown.iter().any(|e| e.contains("toFQDN: unknown field")),
        "{unknown:?}"
    );
    let name = mutate(&|v| v["spec"]["egress"][0]["toFQDNs"] = json!([{"matchName": "a b"}]));
    assert!(
        name.iter().any(|e| e.contains("does not match")),
        "{name:?}"
    );
    let both = mutate(&|v| {
        v["spec"]["egress"][0]["toFQDNs"] =
            json!([{"matchName": "a.test", "matchPattern": "*.test"}])
    });
    assert!(both.iter().any(|e| e.contains("oneOf")), "{both:?}");
    let entity = mutate(&|v| v["spec"]["egress"][0]["toEntities"] = json!(["everything"]));
    assert!(!entity.is_empty());
    let port = mutate(&|v| {
        v["spec"]["egress"][0]["toPorts"] =
            json!([{"ports": [{"port": "443", "protocol": "QUIC"}]}])
    });
    assert!(!port.is_empty());
    let cidr = mutate(&|v| v["spec"]["egress"][0]["toCIDRSet"] = json!([{"cidr": "not-a-cidr"}]));
    assert!(cidr.iter().any(|e| e.contains("not a CIDR")), "{cidr:?}");
}

/// Generated observations for the property: names (a few labels under two parents) with
/// rotating addresses drawn from small pools (so addresses are shared), some behind a CNAME,
/// and nameless addresses, each dialed on a port.
#[derive(Debug, Clone)]
struct Gen {
    named: Vec<(String, bool, Vec<u8>, u16)>,
    nameless: Vec<(u8, u16)>,
}

fn observed() -> impl Strategy<Value = Gen> {
    let label = prop::sample::select(vec!["api", "www", "s3", "eu", "us", "cdn", "img"]);
    let parent = prop::sample::select(vec!["stripe.test", "bucket.store.test"]);
    let port = prop::sample::select(vec![443u16, 8443, 5432]);
    let named = prop::collection::vec(
        (
            label,
            parent,
            any::<bool>(),
            prop::collection::vec(0u8..12, 1..4),
            port.clone(),
        )
            .prop_map(|(l, p, cname, ips, port)| (format!("{l}.{p}"), cname, ips, port)),
        1..10,
    );
    let nameless = prop::collection::vec((100u8..110, port), 0..4);
    (named, nameless).prop_map(|(named, nameless)| Gen { named, nameless })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn every_observed_flow_with_a_name_is_allowed(g in observed()) {
        let (fx, pod) = shop();
        let mut records = vec![flow("shop", &pod, "UDP", DNS, 53, 1, &[])];
        for (name, cname, ips, port) in &g.named {
            let addrs: Vec<String> = ips.iter().map(|i| format!("198.51.100.{i}")).collect();
            for (k, a) in addrs.iter().enumerate() {
                let chain: &[&str] = if *cname { &["edge.provider.test"] } else { &[] };
                records.push(answer(&pod, name, chain, &[a], &format!("2026-11-2{}T00:00:00Z", k + 1)));
                records.push(flow("shop", &pod, "TCP", a, *port, 1, &[]));
            }
        }
        for (i, port) in &g.nameless {
            records.push(flow("shop", &pod, "TCP", &format!("203.0.113.{i}"), *port, 1, &[]));
        }
        let run = run(&fx, &records, &Options::default());
        let out = render::build(&run.cluster, &run.rec, &run.obs);
        prop_assert!(render::self_check(&run.cluster, &run.obs, &run.rec, &out).is_ok());
        // Directly: each (name, address, port) the pod looked up and dialed is allowed with
        // that name alone, and never with no name when the address was only ever named.
        let set = PolicySet::new(&out.policies).expect("compiles");
        let labels = run.cluster.pods.iter().find(|p| p.name == pod).expect("pod").labels.clone();
        let source = Source { namespace: "shop", labels: &labels };
        let nameless: BTreeSet<IpAddr> = g.nameless.iter().map(|(i, _)| format!("203.0.113.{i}").parse().expect("ip")).collect();
        for (name, _, ips, port) in &g.named {
            for i in ips {
                let ip: IpAddr = format!("198.51.100.{i}").parse().expect("ip");
                let names = BTreeSet::from([name.clone()]);
                let d = Destination { ip, peer: Peer::World, names: &names };
                let v = eval::evaluate(&set, &source, &d, *port, Protocol::Tcp);
                prop_assert!(v.allowed, "{name} {ip}:{port}: {v:?}");
                prop_assert!(v.matched.as_ref().is_some_and(|m| m.peer.starts_with("toFQDNs")), "{v:?}");
                if !nameless.contains(&ip) {
                    let none = BTreeSet::new();
                    let bare = Destination { ip, peer: Peer::World, names: &none };
                    prop_assert!(!eval::evaluate(&set, &source, &bare, *port, Protocol::Tcp).allowed,
                        "{ip} is allowed without its name");
                }
            }
        }
        assert_valid(&out);
    }
}
