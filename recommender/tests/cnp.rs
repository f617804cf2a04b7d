//! ClusterNetworkPolicy reading and validation: fixtures valid under the published CRDs'
//! schemas (strictly) are read back unchanged; every CEL rule of the CRDs is checked both
//! ways, with the CRD's own message; arbitrary text never panics the reader.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use leash::cnp::{self, ClusterNetworkPolicy, ReadError, validate};
use proptest::prelude::*;
use serde_json::{Value, json};

const STANDARD: &str = "policy.networking.k8s.io_clusternetworkpolicies.standard.yaml";
const EXPERIMENTAL: &str = "policy.networking.k8s.io_clusternetworkpolicies.experimental.yaml";

fn object(spec: Value) -> Value {
    json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "guard"},
        "spec": spec,
    })
}

/// Standard-channel fixtures: every peer, protocol and port form the standard CRD has.
fn standard_fixtures() -> Vec<Value> {
    vec![
        object(json!({
            "tier": "Admin", "priority": 10,
            "subject": {"namespaces": {}},
            "egress": [
                {"name": "no-metadata", "action": "Deny", "to": [{"networks": ["169.254.169.254/32", "fd00:ec2::254/128"]}]},
                {"action": "Pass", "to": [{"namespaces": {"matchLabels": {"team": "a"}}}], "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
                {"action": "Accept", "to": [{"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}}],
                 "protocols": [{"udp": {"destinationPort": {"number": 53}}}, {"tcp": {"destinationPort": {"range": {"start": 53, "end": 54}}}}, {"destinationNamedPort": "dns"}]},
            ],
            "ingress": [
                {"action": "Accept", "from": [{"namespaces": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}}],
                 "protocols": [{"sctp": {"destinationPort": {"number": 9000}}}]},
            ],
        })),
        object(json!({
            "tier": "Baseline", "priority": 0,
            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}},
            "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}],
        })),
    ]
}

fn experimental_fixtures() -> Vec<Value> {
    vec![object(json!({
        "tier": "Admin", "priority": 1000,
        "subject": {"namespaces": {"matchLabels": {"env": "prod"}}},
        "egress": [
            {"action": "Accept", "to": [{"domainNames": ["api.example.com", "*.example.org"]}], "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]},
            {"action": "Deny", "to": [{"nodes": {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}}]},
        ],
    }))]
}

#[test]
fn fixtures_are_valid_under_the_crds_and_read_back_unchanged() {
    for (file, fixtures) in [
        (STANDARD, standard_fixtures()),
        (EXPERIMENTAL, standard_fixtures()),
        (EXPERIMENTAL, experimental_fixtures()),
    ] {
        let schema = support::crd::schema(file, "v1alpha2");
        for f in fixtures {
            let problems = support::crd::validate(&schema, &f);
            assert!(problems.is_empty(), "{file}: {problems:?}\n{f}");
            let c: ClusterNetworkPolicy = serde_json::from_value(f.clone()).expect("reads");
            validate(&c).expect("valid");
            assert_eq!(serde_json::to_value(&c).expect("writes"), f);
        }
    }
    // The experimental peers are not in the standard channel: the strict validator sees them.
    let schema = support::crd::schema(STANDARD, "v1alpha2");
    for f in experimental_fixtures() {
        assert!(!support::crd::validate(&schema, &f).is_empty(), "{f}");
    }
}

#[test]
fn unknown_fields_are_refused_naming_the_policy() {
    let text = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egres: []}\n";
    match cnp::objects_of_text(text) {
        Err(e @ ReadError::Object { .. }) => {
            assert_eq!(
                e.to_string(),
                "ClusterNetworkPolicy guard: does not match the CRD"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Validates one egress rule in an otherwise valid policy, returning the error's text.
fn egress(rule: Value) -> Result<(), String> {
    let f = object(
        json!({"tier": "Admin", "priority": 1, "subject": {"namespaces": {}}, "egress": [rule]}),
    );
    let c: ClusterNetworkPolicy = serde_json::from_value(f).map_err(|e| e.to_string())?;
    validate(&c).map_err(|e| e.to_string())
}

#[test]
fn cel_start_port_must_be_less_than_end_port() {
    for (start, end, ok) in [
        (80, 81, true),
        (1, 65535, true),
        (81, 81, false),
        (90, 80, false),
    ] {
        for proto in ["tcp", "udp", "sctp"] {
            let got = egress(json!({"action": "Deny", "to": [{"namespaces": {}}],
                "protocols": [{proto: {"destinationPort": {"range": {"start": start, "end": end}}}}]}));
            if ok {
                assert_eq!(got, Ok(()), "{proto} {start}-{end}");
            } else {
                assert_eq!(
                    got,
                    Err(format!(
                        "spec.egress[0].protocols[0].{proto}.destinationPort.range: Start port must be less than End port"
                    )),
                );
            }
        }
    }
    // Ingress rules carry the same rule.
    let f = object(
        json!({"tier": "Baseline", "priority": 1, "subject": {"namespaces": {}},
        "ingress": [{"action": "Accept", "from": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9, "end": 8}}}}]}]}),
    );
    let c: ClusterNetworkPolicy = serde_json::from_value(f).expect("reads");
    assert_eq!(
        validate(&c).map_err(|e| e.to_string()),
        Err("spec.ingress[0].protocols[0].tcp.destinationPort.range: Start port must be less than End port".to_owned())
    );
}

#[test]
fn cel_is_cidr() {
    for (cidr, ok) in [
        ("203.0.113.0/24", true),
        ("203.0.113.7/24", true), // isCIDR allows host bits
        ("2001:db8::/32", true),
        ("0.0.0.0/0", true),
        ("203.0.113.0", false),
        ("203.0.113.0/33", false),
        ("203.0.113.0/024", false),
        ("203.0.113.00/24", false),
        ("2001:db8::/129", false),
        ("::ffff:203.0.113.0/120", false),
        ("fe80::1%eth0/64", false),
        ("example.com/24", false),
        ("/24", false),
    ] {
        let got = egress(json!({"action": "Deny", "to": [{"networks": [cidr]}]}));
        if ok {
            assert_eq!(got, Ok(()), "{cidr}");
        } else {
            assert_eq!(
                got,
                Err("spec.egress[0].to[0].networks[0]: Invalid CIDR format provided".to_owned()),
                "{cidr}"
            );
        }
    }
}

#[test]
fn cel_no_named_ports_with_networks_nodes_or_domain_names() {
    let named =
        json!([{"tcp": {"destinationPort": {"number": 443}}}, {"destinationNamedPort": "https"}]);
    for peer in [
        json!({"networks": ["198.51.100.0/24"]}),
        json!({"nodes": {}}),
        json!({"domainNames": ["example.com"]}),
    ] {
        let got = egress(
            json!({"action": "Accept", "to": [{"namespaces": {}}, peer], "protocols": named}),
        );
        assert_eq!(
            got,
            Err(format!(
                "spec.egress[0]: {}",
                cnp::validate::NAMED_PORT_MESSAGE
            ))
        );
        // Numbered ports with the same peers are fine.
        assert_eq!(
            egress(
                json!({"action": "Accept", "to": [peer], "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]})
            ),
            Ok(())
        );
    }
    // Pod peers may use named ports.
    assert_eq!(
        egress(
            json!({"action": "Accept", "to": [{"namespaces": {}}, {"pods": {"podSelector": {}}}], "protocols": named})
        ),
        Ok(())
    );
}

#[test]
fn schema_limits_are_checked_naming_the_field() {
    let cases = [
        (
            json!({"action": "Deny", "to": []}),
            "spec.egress[0].to: must have at least 1 item(s)",
        ),
        (
            json!({"action": "Deny", "to": [{}]}),
            "spec.egress[0].to[0]: exactly one of namespaces, pods, networks, nodes or domainNames must be set",
        ),
        (
            json!({"action": "Deny", "to": [{"namespaces": {}, "networks": ["198.51.100.0/24"]}]}),
            "spec.egress[0].to[0]: exactly one of namespaces, pods, networks, nodes or domainNames must be set",
        ),
        (
            json!({"action": "Deny", "to": [{"domainNames": ["*example.com"]}]}),
            "spec.egress[0].to[0].domainNames[0]: must be a domain name, optionally starting with \"*.\"",
        ),
        (
            json!({"action": "Deny", "to": [{"networks": ["198.51.100.0/24", "198.51.100.0/24"]}]}),
            "spec.egress[0].to[0].networks[1]: Duplicate value",
        ),
        (
            json!({"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {}}]}),
            "spec.egress[0].protocols[0].tcp: must have at least 1 property",
        ),
        (
            json!({"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 0}}}]}),
            "spec.egress[0].protocols[0].tcp.destinationPort.number: must be between 1 and 65535",
        ),
        (
            json!({"action": "Deny", "to": [{"namespaces": {}}], "protocols": [{"tcp": {"destinationPort": {"number": 1}}, "udp": {"destinationPort": {"number": 1}}}]}),
            "spec.egress[0].protocols[0]: exactly one of tcp, udp, sctp or destinationNamedPort must be set",
        ),
        (
            json!({"action": "Deny", "to": [{"namespaces": {"matchExpressions": [{"key": "a", "operator": "Is"}]}}]}),
            "spec.egress[0].to[0].namespaces",
        ),
    ];
    for (rule, want) in cases {
        let got = egress(rule.clone()).expect_err("refused");
        assert!(got.starts_with(want), "{rule}: {got}");
    }
    let f = object(json!({"tier": "Admin", "priority": 1001, "subject": {"namespaces": {}}}));
    let c: ClusterNetworkPolicy = serde_json::from_value(f).expect("reads");
    assert_eq!(
        validate(&c).map_err(|e| e.to_string()),
        Err("spec.priority: must be between 0 and 1000".to_owned())
    );
    let f = object(json!({"tier": "Admin", "priority": 1, "subject": {}}));
    let c: ClusterNetworkPolicy = serde_json::from_value(f).expect("reads");
    assert_eq!(
        validate(&c).map_err(|e| e.to_string()),
        Err("spec.subject: exactly one of namespaces or pods must be set".to_owned())
    );
    // An invalid object in a file is refused with its name.
    let text = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [bad]}]}]}\n";
    match cnp::objects_of_text(text) {
        Err(ReadError::Invalid { policy, source }) => {
            assert_eq!(policy, "guard");
            assert_eq!(
                source.to_string(),
                "spec.egress[0].to[0].networks[0]: Invalid CIDR format provided"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn lists_and_other_kinds() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: policy.networking.k8s.io/v1alpha2\n  kind: ClusterNetworkPolicy\n  metadata: {name: a}\n  spec: {tier: Baseline, priority: 5, subject: {namespaces: {}}}\n- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {name: b, namespace: c}\n  spec: {podSelector: {}}\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: d}\nspec: {tier: Admin, priority: 0, subject: {pods: {podSelector: {}}}}\n";
    let got = cnp::objects_of_text(text).expect("reads");
    let names: Vec<&str> = got.iter().map(ClusterNetworkPolicy::name).collect();
    assert_eq!(names, ["a", "d"]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary text, and arbitrary mutations of a valid object, never panic the reader.
    #[test]
    fn reading_never_panics(text in "\\PC{0,300}") {
        let _ = cnp::objects_of_text(&text);
    }

    #[test]
    fn reading_mutated_objects_never_panics(
        priority in any::<i64>(),
        start in any::<i64>(),
        end in any::<i64>(),
        cidr in "[0-9a-f:./%]{0,24}",
        name in "[*a-z0-9._-]{0,20}",
    ) {
        let f = object(json!({"tier": "Admin", "priority": priority, "subject": {"namespaces": {}},
            "egress": [{"action": "Deny", "to": [{"networks": [cidr]}, {"domainNames": [name]}],
                "protocols": [{"tcp": {"destinationPort": {"range": {"start": start, "end": end}}}}]}]}));
        let text = serde_json::to_string(&f).expect("json");
        let _ = cnp::objects_of_text(&text);
    }
}
