//! `leash explain` tests: argument parsing and the rendered explanation.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::Path;

use leash::{
    audit::load_policy_set,
    eval::{PolicyId, PolicySet, Verdict},
    explain::{Error, explain, parse_pod, parse_target},
};
use leash_records::Protocol;
use support::eval::lab_cluster;

fn policies() -> PolicySet {
    load_policy_set(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/eval/policies"))
        .expect("fixture policies")
}

fn text(from: &str, to: &str) -> (Verdict, String) {
    let e = explain(
        &lab_cluster(),
        &policies(),
        &parse_pod(from).expect("pod"),
        &parse_target(to).expect("target"),
    )
    .expect("explains");
    (e.verdict(), e.to_string())
}

#[test]
fn service_is_explained_per_backend_with_rule_peer_and_port() {
    let (verdict, got) = text("shop/web", "10.96.0.30:5432/TCP");
    assert_eq!(verdict, Verdict::Deny);
    let want = "\
shop/web -> 10.96.0.30:5432/TCP: DENY
  10.96.0.30:5432 is Service db/postgres-svc: evaluated after DNAT against each of its 2 ready backend(s)
  backend 10.244.1.21:5432 (pod db/replica): deny
    egress at shop/web: allow
      allowed by shop/web-egress rule egress[1]: to[0] pods {app=postgres} in namespaces {kubernetes.io/metadata.name=db}, ports[0] 5432/TCP
    ingress at db/replica: deny: isolated by db/postgres-ingress; no rule allows it
      closest: db/postgres-ingress rule ingress[0]: from[0] pods {app=web} in namespaces {team=shop} matches, but no port does (ports: pg/TCP (named))
  backend 10.244.2.20:5432 (pod db/postgres): allow
    egress at shop/web: allow
      allowed by shop/web-egress rule egress[1]: to[0] pods {app=postgres} in namespaces {kubernetes.io/metadata.name=db}, ports[0] 5432/TCP
    ingress at db/postgres: allow
      allowed by db/postgres-ingress rule ingress[0]: from[0] pods {app=web} in namespaces {team=shop}, ports[0] pg/TCP (named)
";
    assert_eq!(got, want, "got:\n{got}");
}

#[test]
fn allowed_external_names_the_ipblock_rule() {
    let (verdict, got) = text("shop/web", "203.0.113.10:443/TCP");
    assert_eq!(verdict, Verdict::Allow);
    let want = "\
shop/web -> 203.0.113.10:443/TCP: ALLOW
  destination: a non-pod address
  egress at shop/web: allow
    allowed by shop/web-egress rule egress[2]: to[0] ipBlock 203.0.113.0/24, ports[0] 443/TCP
  ingress at 203.0.113.10:443: allow: the destination is not a pod of the cluster
";
    assert_eq!(got, want, "got:\n{got}");
}

#[test]
fn denied_names_every_isolating_policy() {
    let (verdict, got) = text("shop/web", "[2001:db8:ffff::1]:443/tcp");
    assert_eq!(verdict, Verdict::Deny);
    assert!(
        got.contains(
            "egress at shop/web: deny: isolated by shop/default-deny-egress, shop/web-egress; no rule allows it"
        ),
        "{got}"
    );
    assert!(
        got.starts_with("shop/web -> [2001:db8:ffff::1]:443/TCP: DENY\n"),
        "{got}"
    );
    assert!(
        got.contains(
            "    closest: shop/web-egress rule egress[2]: ports[0] 443/TCP matches, but no peer does (to: ipBlock 203.0.113.0/24)\n"
        ),
        "{got}"
    );
}

#[test]
fn rule_without_peers_or_ports_says_so() {
    let set = PolicySet::new(&[support::eval::policy(
        "shop/all",
        "{podSelector: {}, policyTypes: [Egress], egress: [{}]}",
    )])
    .expect("valid");
    let e = explain(
        &lab_cluster(),
        &set,
        &parse_pod("shop/web").expect("pod"),
        &parse_target("203.0.113.10:8443/UDP").expect("target"),
    )
    .expect("explains");
    assert!(
        e.to_string()
            .contains("allowed by shop/all rule egress[0]: any peer, any port (UDP included)"),
        "{e}"
    );
}

#[test]
fn service_problems_and_host_network_are_explained() {
    let (_, got) = text("shop/web", "10.96.0.99:80/TCP");
    assert_eq!(
        got,
        "shop/web -> 10.96.0.99:80/TCP: DENY\n  denied: Service shop/empty-svc has no ready backend for this port\n"
    );
    let (_, got) = text("shop/host-agent", "10.244.2.20:5432/TCP");
    assert!(
        got.contains("egress at shop/host-agent: allow: the source is a hostNetwork pod"),
        "{got}"
    );
    assert!(
        got.contains("ingress at db/postgres: deny: isolated by db/postgres-ingress"),
        "{got}"
    );
}

#[test]
fn unknown_source_pod_is_an_error() {
    let err = explain(
        &lab_cluster(),
        &policies(),
        &parse_pod("shop/ghost").expect("pod"),
        &parse_target("203.0.113.10:443/TCP").expect("target"),
    )
    .expect_err("unknown pod");
    assert_eq!(
        err.to_string(),
        "pod shop/ghost not found in the cluster snapshot"
    );
}

#[test]
fn parses_pods() {
    assert_eq!(
        parse_pod("shop/web").expect("ok"),
        PolicyId {
            namespace: "shop".into(),
            name: "web".into()
        }
    );
    for bad in ["web", "/web", "shop/", "a/b/c", ""] {
        let err = parse_pod(bad).expect_err(bad);
        assert!(matches!(err, Error::BadPod { .. }), "{bad}");
        assert!(err.to_string().contains("expected NAMESPACE/POD"), "{err}");
    }
}

#[test]
fn parses_targets() {
    let t = parse_target("10.96.0.10:53/UDP").expect("ok");
    assert_eq!(
        (t.dst.to_string(), t.dst_port, t.protocol),
        ("10.96.0.10".into(), 53, Protocol::Udp)
    );
    let t = parse_target("[2001:db8::1]:443/TCP").expect("ok");
    assert_eq!(
        (t.dst.to_string(), t.dst_port, t.protocol),
        ("2001:db8::1".into(), 443, Protocol::Tcp)
    );
    let t = parse_target("203.0.113.1:3868/sctp").expect("ok");
    assert_eq!(t.protocol, Protocol::Sctp);
    assert_eq!(
        parse_target("203.0.113.1:80").expect("ok").protocol,
        Protocol::Tcp
    );
    for (bad, why) in [
        ("2001:db8::1:443/TCP", "brackets"),
        ("[203.0.113.1]:80/TCP", "only for IPv6"),
        ("[2001:db8::1]443/TCP", "[ADDRESS]:PORT"),
        ("203.0.113.1/TCP", "missing ':PORT'"),
        ("203.0.113.1:0/TCP", "not a port number"),
        ("203.0.113.1:65536/TCP", "not a port number"),
        ("203.0.113.1:+80/TCP", "not a port number"),
        ("203.0.113.1:80/ICMP", "unknown protocol"),
        ("host.example:80/TCP", "is not an IP address"),
        ("010.0.0.1:80/TCP", "is not an IP address"),
    ] {
        let err = parse_target(bad).expect_err(bad).to_string();
        assert!(err.contains(why), "{bad}: {err}");
        assert!(err.contains("expected IP:PORT/PROTO"), "{err}");
    }
}

proptest::proptest! {
    #[test]
    fn parsers_never_panic(s in "\\PC{0,40}") {
        let _ = parse_pod(&s);
        let _ = parse_target(&s);
    }

    #[test]
    fn targets_round_trip(a in proptest::prelude::any::<std::net::IpAddr>(), port in 1u16.., p in 0usize..3) {
        let proto = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp][p];
        let text = match a {
            std::net::IpAddr::V4(v4) => format!("{v4}:{port}/{proto}"),
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}/{proto}"),
        };
        let t = parse_target(&text).expect("round trip");
        proptest::prop_assert_eq!((t.dst, t.dst_port, t.protocol), (a, port, proto));
    }
}
