//! CIDR and port parsing where policies are read: a NetworkPolicy's `ipBlock` (`cidr`,
//! `except`) and `ports` (`protocol`, numeric or named `port`, `endPort`) compiled by
//! `leash::eval::CompiledPolicy::compile`; the same CIDR as a ClusterNetworkPolicy network
//! (`cnp::validate::parse_cel_cidr`, Kubernetes' `isCIDR`); and a CiliumNetworkPolicy's
//! `toCIDRSet` and string `toPorts` (`cilium::eval::PolicySet::new`).
//!
//! Input: newline-separated fields: cidr, comma-separated excepts, protocol, port, endPort.
//! A CIDR NetworkPolicy accepts is canonical, so `isCIDR` accepts it as the same network;
//! excepts lie inside it; port ranges are 1..=65535 and ordered.
#![no_main]

use leash::cilium::CiliumNetworkPolicy;
use leash::cnp::validate::parse_cel_cidr;
use leash::eval::{CompiledPolicy, PolicyPeer, PortMatch};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut fields = text.split('\n');
    let cidr = fields.next().unwrap_or_default();
    let except: Vec<&str> = fields
        .next()
        .filter(|e| !e.is_empty())
        .map(|e| e.split(',').collect())
        .unwrap_or_default();
    let protocol = fields.next().filter(|p| !p.is_empty());
    let port_text = fields.next().filter(|p| !p.is_empty());
    let end_port = fields.next().and_then(|e| e.parse::<i64>().ok());
    // A port that reads as a number is an integer in YAML too.
    let port = port_text.map(|p| {
        p.parse::<i64>()
            .map_or_else(|_| Value::from(p), Value::from)
    });

    let mut port_entry = serde_json::Map::new();
    if let Some(p) = protocol {
        port_entry.insert("protocol".into(), p.into());
    }
    if let Some(p) = &port {
        port_entry.insert("port".into(), p.clone());
    }
    if let Some(e) = end_port {
        port_entry.insert("endPort".into(), e.into());
    }
    let np = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "fuzz", "namespace": "shop"},
        "spec": {
            "podSelector": {},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{"ipBlock": {"cidr": cidr, "except": except}}],
                "ports": [Value::Object(port_entry)],
            }],
        },
    });
    if let Ok(np) = serde_json::from_value(np)
        && let Ok(compiled) = CompiledPolicy::compile(&np)
    {
        for rule in compiled.egress.iter().flatten() {
            for peer in &rule.peers {
                if let PolicyPeer::IpBlock { cidr: net, except } = peer {
                    assert_eq!(parse_cel_cidr(cidr), Some(*net), "{cidr:?}");
                    for e in except {
                        assert!(net.contains(e), "{e} outside {net}");
                    }
                }
            }
            for p in &rule.ports {
                if let PortMatch::Range(first, last) = p.port {
                    assert!(first >= 1 && first <= last, "{first}-{last}");
                }
            }
        }
    }
    let _ = parse_cel_cidr(cidr);

    let mut cilium_port = serde_json::Map::new();
    cilium_port.insert(
        "port".into(),
        port_text.unwrap_or_default().to_owned().into(),
    );
    if let Some(p) = protocol {
        cilium_port.insert("protocol".into(), p.into());
    }
    if let Some(e) = end_port {
        cilium_port.insert("endPort".into(), e.into());
    }
    let cnp = json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "fuzz", "namespace": "shop"},
        "spec": {
            "endpointSelector": {},
            "egress": [{
                "toCIDRSet": [{"cidr": cidr, "except": except}],
                "toPorts": [{"ports": [Value::Object(cilium_port)]}],
            }],
        },
    });
    if let Ok(cnp) = serde_json::from_value::<CiliumNetworkPolicy>(cnp) {
        let _ = leash::cilium::eval::PolicySet::new(&[cnp]);
    }
});
