//! `map`: the egress map's model and views. Destinations are grouped (workloads across
//! namespaces, DNS, the API server, nodes, externals by name or by /24), edges carry their
//! evidence and verdicts under the applied and the proposed policies (and drift), the
//! overview switches from workloads to namespaces past 200 workloads, the filters and the
//! namespace scope hide what they should, and equal input gives equal bytes.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::path::Path;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash::classify::ClassifierConfig;
use leash::cluster::Cluster;
use leash::eval::{self, PolicySet};
use leash::map::{self, EXPAND_LIMIT, Filter, FlowRef, Inputs, Map, Verdict, View};
use leash::observations::Observations;
use leash::rollout::{self, Phase};
use leash_records::{Outcome, Protocol, Record};
use support::recommend::{Fx, deployment_pod, deployments, dns, flow};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

fn now() -> DateTime<Utc> {
    t("2026-11-25T00:00:00Z")
}

/// shop: `web` and `api` (behind Service `shop/api`, 10.96.0.20:80 → 8080); batch:
/// `worker`; kubeadm DNS, the API server at 172.18.0.2:6443, node `n1` at 10.0.0.5.
fn shop() -> Fx {
    let mut fx = Fx::new();
    fx.kubeadm_dns().api_server("172.18.0.2", 6443);
    fx.node("n1", "10.0.0.5", "10.244.1.0/24");
    fx.namespace("shop").namespace("batch");
    fx.deployment("shop", "web", &[("app", "web")], &["10.244.1.10"], &[]);
    let api = fx.deployment(
        "shop",
        "api",
        &[("app", "api")],
        &["10.244.1.11"],
        &[(Some("http"), 8080, "TCP")],
    );
    fx.service(
        "shop",
        "api",
        "10.96.0.20",
        Some(&[("app", "api")]),
        &[("http", 80, "TCP", IntOrString::Int(8080))],
    );
    fx.slice(
        "shop",
        "api",
        &[("http", 8080, "TCP")],
        &[("10.244.1.11", Some(&api[0]))],
    );
    fx.deployment(
        "batch",
        "worker",
        &[("app", "worker")],
        &["10.244.2.10"],
        &[],
    );
    fx
}

/// Sets a flow record's time bounds.
fn at(mut r: Record, first: &str, last: &str) -> Record {
    if let Record::Flow(f) = &mut r {
        f.first_seen = t(first);
        f.last_seen = t(last);
    }
    r
}

fn records() -> Vec<Record> {
    let web = deployment_pod("web");
    let api = deployment_pod("api");
    let worker = deployment_pod("worker");
    vec![
        dns(
            "shop",
            &web,
            "10.96.0.10",
            "api.example.test",
            &["203.0.113.7", "203.0.113.8"],
        ),
        flow("shop", &web, "UDP", "10.96.0.10", 53, 3, &[]),
        flow("shop", &web, "TCP", "10.96.0.20", 80, 5, &[]),
        flow(
            "shop",
            &web,
            "TCP",
            "203.0.113.7",
            443,
            5,
            &["api.example.test"],
        ),
        flow(
            "shop",
            &web,
            "TCP",
            "203.0.113.8",
            443,
            2,
            &["api.example.test"],
        ),
        flow("shop", &web, "TCP", "198.51.100.20", 443, 1, &[]),
        flow("shop", &web, "TCP", "198.51.100.21", 8443, 1, &[]),
        flow("shop", &web, "TCP", "10.96.0.1", 443, 4, &[]),
        flow("shop", &web, "TCP", "10.0.0.5", 10250, 1, &[]),
        flow("shop", &api, "UDP", "10.96.0.10", 53, 1, &[]),
        dns(
            "batch",
            &worker,
            "10.96.0.10",
            "db.example.test",
            &["198.51.100.9"],
        ),
        at(
            flow("batch", &worker, "UDP", "10.96.0.10", 53, 2, &[]),
            "2026-11-01T00:00:00Z",
            "2026-11-10T00:00:00Z",
        ),
        at(
            flow("batch", &worker, "TCP", "10.244.1.11", 8080, 7, &[]),
            "2026-11-01T00:00:00Z",
            "2026-11-10T00:00:00Z",
        ),
        at(
            flow(
                "batch",
                &worker,
                "TCP",
                "198.51.100.9",
                443,
                3,
                &["db.example.test"],
            ),
            "2026-11-01T00:00:00Z",
            "2026-11-10T00:00:00Z",
        ),
    ]
}

/// Applied: worker may reach every pod, and DNS anywhere.
const APPLIED: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: worker, namespace: batch}
spec:
  podSelector: {matchLabels: {app: worker}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}}]
  - ports: [{port: 53, protocol: UDP}]
";

/// The proposal adds: web may reach every pod, DNS, and 203.0.113.7 only.
const PROPOSED: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}}]
  - ports: [{port: 53, protocol: UDP}]
  - to: [{ipBlock: {cidr: 203.0.113.7/32}}]
";

fn policies(yaml: &[&str]) -> PolicySet {
    let mut nps = Vec::new();
    for y in yaml {
        let snap = leash_records::snapshot::parse_str(y, Path::new("p.yaml")).expect("valid YAML");
        nps.extend(snap.network_policies);
    }
    PolicySet::new(&nps).expect("valid policies")
}

fn observe(cluster: &Cluster, records: &[Record]) -> Observations {
    let mut obs = Observations::default();
    for r in records {
        obs.add(r, cluster).expect("records name fixture pods");
    }
    obs
}

fn drift() -> Vec<FlowRef> {
    vec![FlowRef {
        namespace: "shop".into(),
        workload: "Deployment/web".into(),
        address: "203.0.113.8".parse().expect("ip"),
        port: 443,
        protocol: Protocol::Tcp,
    }]
}

/// The shop's map with the applied and proposed sets, drift, phases and one TCP outcome.
fn shop_map() -> Map {
    let fx = shop();
    let cluster = fx.cluster();
    let obs = observe(&cluster, &records());
    let applied = policies(&[APPLIED]);
    let proposed = policies(&[APPLIED, PROPOSED]);
    let phases = rollout::phases(
        &cluster,
        &obs,
        &rollout::Policies {
            applied: &[],
            applied_set: &applied,
            proposed: Some(&proposed),
        },
        &rollout::Options {
            min_observation: chrono::Duration::hours(24),
            now: now(),
            namespaces: BTreeSet::new(),
        },
    );
    let drifted = drift();
    let mut outcomes = map::Outcomes::new();
    outcomes.insert(
        FlowRef {
            namespace: "shop".into(),
            workload: "Deployment/web".into(),
            address: "203.0.113.7".parse().expect("ip"),
            port: 443,
            protocol: Protocol::Tcp,
        },
        Outcome {
            established: 4,
            failed: 1,
        },
    );
    let config = ClassifierConfig::default();
    let inputs = Inputs {
        proposed: Some(&proposed),
        drifted: &drifted,
        phases: &phases,
        outcomes: Some(&outcomes),
        ..Inputs::new(&applied, &config, now())
    };
    map::build(&cluster, &obs, &inputs)
}

fn ids(v: &View) -> Vec<&str> {
    v.nodes.iter().map(|n| n.id.as_str()).collect()
}

fn edge_ids(v: &View) -> Vec<&str> {
    v.edges.iter().map(|e| e.id.as_str()).collect()
}

fn edge<'a>(v: &'a View, id: &str) -> &'a map::ViewEdge {
    v.edges
        .iter()
        .find(|e| e.id == id)
        .unwrap_or_else(|| panic!("no edge {id} in {:?}", edge_ids(v)))
}

fn node<'a>(v: &'a View, id: &str) -> &'a map::ViewNode {
    v.nodes
        .iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("no node {id} in {:?}", ids(v)))
}

fn only(namespaces: &[&str]) -> Filter {
    Filter {
        namespaces: namespaces.iter().map(|s| (*s).to_owned()).collect(),
        ..Filter::default()
    }
}

#[test]
fn destinations_are_grouped_by_kind_name_and_cidr() {
    let m = shop_map();
    let web = m
        .workload("shop", "Deployment/web")
        .expect("web is a workload");
    let to: Vec<(&str, String)> = web
        .destinations
        .iter()
        .map(|r| {
            (
                r.to.as_str(),
                format!("{}:{}/{}", r.address, r.port, r.protocol),
            )
        })
        .collect();
    assert_eq!(
        to,
        [
            ("api-server", "10.96.0.1:443/TCP".to_owned()),
            ("cidr:198.51.100.0/24", "198.51.100.20:443/TCP".to_owned()),
            ("cidr:198.51.100.0/24", "198.51.100.21:8443/TCP".to_owned()),
            ("dns", "10.96.0.10:53/UDP".to_owned()),
            ("ext:api.example.test", "203.0.113.7:443/TCP".to_owned()),
            ("ext:api.example.test", "203.0.113.8:443/TCP".to_owned()),
            ("nodes", "10.0.0.5:10250/TCP".to_owned()),
            ("wl:shop/Deployment/api", "10.96.0.20:80/TCP".to_owned()),
        ]
    );
    // Through its Service to the one workload behind it, naming the Service.
    let svc = &web.destinations[7];
    assert_eq!(svc.service.as_deref(), Some("shop/api"));
    assert_eq!(svc.label, "shop/Deployment/api");
    assert_eq!(svc.events, 5);

    // The overview (a small cluster: expanded) lists each group's exact addresses, and a pod
    // of another namespace dialed by address is its workload.
    let v = m.overview(&Filter::default());
    assert!(v.expanded);
    let ext = node(&v, "ext:api.example.test");
    assert_eq!(ext.kind, map::NodeKind::External);
    assert_eq!(
        ext.addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["203.0.113.7", "203.0.113.8"]
    );
    let cidr = node(&v, "cidr:198.51.100.0/24");
    assert_eq!(cidr.kind, map::NodeKind::Cidr);
    assert_eq!(cidr.addresses.len(), 2);
    assert!(cidr.names.is_empty());
    let e = edge(&v, "wl:shop/Deployment/web->cidr:198.51.100.0/24");
    assert_eq!(e.ports, ["443/TCP", "8443/TCP"]);
    assert_eq!(e.events, 2);
    let cross = edge(&v, "wl:batch/Deployment/worker->wl:shop/Deployment/api");
    assert_eq!(
        (cross.events, cross.ports.as_slice()),
        (7, &["8080/TCP".to_owned()][..])
    );
    assert_eq!(
        node(&v, "wl:shop/Deployment/api").parent.as_deref(),
        Some("ns:shop")
    );
    // The worker's name came from its DNS answer.
    assert!(edge_ids(&v).contains(&"wl:batch/Deployment/worker->ext:db.example.test"));
}

#[test]
fn edges_carry_verdicts_under_applied_and_proposed_sets_and_drift() {
    let m = shop_map();
    let v = m.overview(&Filter::default());
    let verdict = |id: &str| edge(&v, id).verdict;
    // The applied policy denies the worker's external egress: unexpected.
    assert_eq!(
        verdict("wl:batch/Deployment/worker->ext:db.example.test"),
        Verdict::Denied
    );
    assert_eq!(
        verdict("wl:batch/Deployment/worker->wl:shop/Deployment/api"),
        Verdict::Allowed
    );
    // The proposal denies what web's policy leaves out.
    for to in ["cidr:198.51.100.0/24", "api-server", "nodes"] {
        assert_eq!(
            verdict(&format!("wl:shop/Deployment/web->{to}")),
            Verdict::WouldDeny,
            "{to}"
        );
    }
    assert_eq!(verdict("wl:shop/Deployment/web->dns"), Verdict::Allowed);
    assert_eq!(
        verdict("wl:shop/Deployment/web->wl:shop/Deployment/api"),
        Verdict::Allowed
    );
    // One drifted address makes its name's edge drift; the other stays allowed.
    assert_eq!(
        verdict("wl:shop/Deployment/web->ext:api.example.test"),
        Verdict::Drift
    );
    let web = m
        .workload("shop", "Deployment/web")
        .expect("web is a workload");
    let rows: Vec<_> = web
        .destinations
        .iter()
        .filter(|r| r.to == "ext:api.example.test")
        .map(|r| {
            (
                r.address.to_string(),
                r.applied,
                r.proposed,
                r.drift,
                r.verdict,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "203.0.113.7".to_owned(),
                eval::Verdict::Allow,
                Some(eval::Verdict::Allow),
                false,
                Verdict::Allowed
            ),
            (
                "203.0.113.8".to_owned(),
                eval::Verdict::Allow,
                Some(eval::Verdict::Deny),
                true,
                Verdict::Drift
            ),
        ]
    );
    // Evidence: pods, names, times, TCP outcome; the phase and why.
    let r = &web.destinations[4];
    assert_eq!(r.pods, [deployment_pod("web")]);
    assert_eq!(r.names, ["api.example.test"]);
    assert_eq!(r.first_seen, t("2026-11-20T00:00:00Z"));
    assert_eq!(r.last_seen, t("2026-11-24T00:00:00Z"));
    assert_eq!(
        r.outcome,
        Some(Outcome {
            established: 4,
            failed: 1
        })
    );
    assert_eq!(web.destinations[5].outcome, None);
    assert_eq!(web.phase, Some(Phase::WouldDeny));
    assert!(
        web.why
            .as_deref()
            .is_some_and(|w| w.starts_with("the proposal denies")),
        "{:?}",
        web.why
    );
    let worker = m
        .workload("batch", "Deployment/worker")
        .expect("worker is a workload");
    assert_eq!(worker.phase, Some(Phase::Drifted));
    assert_eq!(
        v.totals.verdicts,
        map::VerdictCounts {
            allowed: 5,
            would_deny: 3,
            denied: 1,
            drift: 1
        }
    );
    // Without a proposal nothing would be denied, and no verdict is "proposed".
    let fx = shop();
    let cluster = fx.cluster();
    let obs = observe(&cluster, &records());
    let applied = policies(&[APPLIED]);
    let config = ClassifierConfig::default();
    let bare = map::build(&cluster, &obs, &Inputs::new(&applied, &config, now()));
    let v = bare.overview(&Filter::default());
    assert_eq!(v.totals.verdicts.would_deny, 0);
    assert_eq!(v.totals.verdicts.denied, 1);
    let web = bare
        .workload("shop", "Deployment/web")
        .expect("web is a workload");
    assert!(web.destinations.iter().all(|r| r.proposed.is_none()));
}

/// A map of one namespace with `n` Deployments and one flow each.
fn many(n: usize) -> Map {
    let names: Vec<String> = (0..n).map(|i| format!("app{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fx = deployments("big", &refs);
    let cluster = fx.cluster();
    let records: Vec<Record> = names
        .iter()
        .map(|n| {
            flow(
                "big",
                &deployment_pod(n),
                "TCP",
                "203.0.113.30",
                443,
                1,
                &[],
            )
        })
        .collect();
    let obs = observe(&cluster, &records);
    let set = PolicySet::default();
    let config = ClassifierConfig::default();
    map::build(&cluster, &obs, &Inputs::new(&set, &config, now()))
}

#[test]
fn the_overview_shows_workloads_up_to_the_limit_and_namespaces_past_it() {
    let small = many(EXPAND_LIMIT).overview(&Filter::default());
    assert!(small.expanded);
    assert_eq!(small.totals.workloads, EXPAND_LIMIT);
    assert_eq!(small.edges.len(), EXPAND_LIMIT);
    // The workloads, their namespace group and the one destination.
    assert_eq!(small.nodes.len(), EXPAND_LIMIT + 2);
    assert!(small.nodes.iter().any(|n| n.id == "wl:big/Deployment/app0"));

    let big = many(EXPAND_LIMIT + 1).overview(&Filter::default());
    assert!(!big.expanded);
    assert_eq!(ids(&big), ["cidr:203.0.113.0/24", "ns:big"]);
    assert_eq!(edge_ids(&big), ["ns:big->cidr:203.0.113.0/24"]);
    let e = &big.edges[0];
    assert_eq!((e.edges, e.events), (EXPAND_LIMIT + 1, 201));
    assert_eq!(e.verdicts.allowed, EXPAND_LIMIT + 1);
    assert_eq!(node(&big, "ns:big").workloads, Some(EXPAND_LIMIT + 1));
    assert_eq!(big.totals.workloads, EXPAND_LIMIT + 1);

    // Expanding the namespace shows its workloads.
    let ns = many(EXPAND_LIMIT + 1).namespace("big", &Filter::default());
    assert!(ns.expanded);
    assert_eq!(ns.namespace.as_deref(), Some("big"));
    assert_eq!(ns.edges.len(), EXPAND_LIMIT + 1);
}

#[test]
fn filters_hide_what_they_should() {
    let m = shop_map();
    // Namespace.
    let v = m.overview(&only(&["batch"]));
    assert!(
        v.edges
            .iter()
            .all(|e| e.from == "wl:batch/Deployment/worker"),
        "{:?}",
        edge_ids(&v)
    );
    assert_eq!(v.edges.len(), 3);
    // Time: the worker was last seen on the 10th.
    let since = Filter {
        since: Some(t("2026-11-15T00:00:00Z")),
        ..Filter::default()
    };
    let v = m.overview(&since);
    assert!(
        v.edges
            .iter()
            .all(|e| e.from == "wl:shop/Deployment/web" || e.from == "wl:shop/Deployment/api"),
        "{:?}",
        edge_ids(&v)
    );
    assert!(!ids(&v).contains(&"wl:batch/Deployment/worker"));
    assert_eq!(v.edges.len(), 7);
    // Verdict.
    let denied = Filter {
        verdict: Some(Verdict::WouldDeny),
        ..Filter::default()
    };
    assert_eq!(
        edge_ids(&m.overview(&denied)),
        [
            "wl:shop/Deployment/web->api-server",
            "wl:shop/Deployment/web->cidr:198.51.100.0/24",
            "wl:shop/Deployment/web->nodes",
        ]
    );
    // Search by IP, by name, by workload; case-insensitive.
    let search = |q: &str| {
        m.overview(&Filter {
            search: Some(q.to_owned()),
            ..Filter::default()
        })
    };
    assert_eq!(
        edge_ids(&search("198.51.100.2")),
        ["wl:shop/Deployment/web->cidr:198.51.100.0/24"]
    );
    assert_eq!(
        edge_ids(&search("DB.Example")),
        ["wl:batch/Deployment/worker->ext:db.example.test"]
    );
    let v = search("worker");
    assert_eq!(v.edges.len(), 3);
    assert!(ids(&v).contains(&"wl:batch/Deployment/worker"));
    assert!(!ids(&v).contains(&"wl:shop/Deployment/web"));
    // A destination workload matches too: web and the worker reach api.
    assert_eq!(
        edge_ids(&search("deployment/api")),
        [
            "wl:batch/Deployment/worker->wl:shop/Deployment/api",
            "wl:shop/Deployment/api->dns",
            "wl:shop/Deployment/web->wl:shop/Deployment/api",
        ]
    );
    // In a namespace view as well.
    let v = m.namespace(
        "shop",
        &Filter {
            search: Some("203.0.113.8".into()),
            ..Filter::default()
        },
    );
    assert_eq!(
        edge_ids(&v),
        ["wl:shop/Deployment/web->ext:api.example.test"]
    );
}

#[test]
fn the_namespace_view_folds_edges_from_other_namespaces() {
    let m = shop_map();
    let v = m.namespace("shop", &Filter::default());
    assert!(v.expanded);
    assert_eq!(v.totals.workloads, 2);
    assert!(ids(&v).contains(&"wl:shop/Deployment/api"));
    assert!(ids(&v).contains(&"wl:shop/Deployment/web"));
    // The worker's edge into api arrives from its namespace, collapsed.
    let e = edge(&v, "ns:batch->wl:shop/Deployment/api");
    assert_eq!((e.events, e.edges), (7, 1));
    assert_eq!(node(&v, "ns:batch").workloads, Some(1));
    assert!(!ids(&v).contains(&"wl:batch/Deployment/worker"));
    // Nothing of the worker's other egress.
    assert!(!ids(&v).contains(&"ext:db.example.test"));
    // The batch view shows api inside its namespace group.
    let v = m.namespace("batch", &Filter::default());
    assert_eq!(
        node(&v, "wl:shop/Deployment/api").parent.as_deref(),
        Some("ns:shop")
    );
    assert!(ids(&v).contains(&"ns:shop"));
    assert!(m.namespace("nowhere", &Filter::default()).nodes.is_empty());
    assert!(m.workload("shop", "Deployment/nope").is_none());
}

/// A namespace-scoped user sees the edges of its namespaces, and of other namespaces only the
/// destination workloads of those edges, without their pods, phases or workload counts.
#[test]
fn a_namespace_scope_reveals_only_destinations_of_its_edges() {
    let m = shop_map();
    let scope = only(&["batch"]);
    for v in [
        m.overview(&scope),
        m.namespace("batch", &scope),
        m.overview(&Filter {
            search: Some("shop".into()),
            ..scope.clone()
        }),
    ] {
        assert!(
            v.edges.iter().all(|e| e.from.starts_with("wl:batch/")),
            "{:?}",
            edge_ids(&v)
        );
        let api = node(&v, "wl:shop/Deployment/api");
        assert_eq!((api.pods, api.phase), (None, None));
        assert_eq!(node(&v, "ns:shop").workloads, None);
        assert!(!ids(&v).contains(&"wl:shop/Deployment/web"));
        // DNS is shared: only the worker's use of it shows.
        let dns = v.nodes.iter().find(|n| n.id == "dns");
        assert!(dns.is_none_or(|d| d.addresses.iter().all(|a| a.to_string() == "10.96.0.10")));
        let json = serde_json::to_string(&v).expect("serializes");
        assert!(!json.contains("web"), "{json}");
        assert!(!json.contains("api.example.test"), "{json}");
    }
    let worker = node(&m.overview(&scope), "wl:batch/Deployment/worker").clone();
    assert_eq!(worker.pods, Some(1));
    assert_eq!(worker.phase, Some(Phase::Drifted));
    // Another namespace cannot be expanded.
    let v = m.namespace("shop", &scope);
    assert!(v.nodes.is_empty() && v.edges.is_empty());
}

#[test]
fn equal_input_gives_equal_bytes() {
    let views = |m: &Map| {
        let mut out = Vec::new();
        for v in [
            m.overview(&Filter::default()),
            m.namespace("shop", &Filter::default()),
            m.overview(&only(&["batch"])),
        ] {
            out.push(serde_json::to_string(&v).expect("serializes"));
        }
        out.push(serde_json::to_string(&m.workload("shop", "Deployment/web")).expect("serializes"));
        out
    };
    let first = views(&shop_map());
    // The observations are hash maps: rebuilding visits them in another order.
    for _ in 0..3 {
        assert_eq!(views(&shop_map()), first);
    }
    // Records in another order give the same map.
    let fx = shop();
    let cluster = fx.cluster();
    let mut reversed = records();
    reversed.reverse();
    let obs = observe(&cluster, &reversed);
    let applied = policies(&[APPLIED]);
    let config = ClassifierConfig::default();
    let a = map::build(&cluster, &obs, &Inputs::new(&applied, &config, now()));
    let obs = observe(&cluster, &records());
    let b = map::build(&cluster, &obs, &Inputs::new(&applied, &config, now()));
    assert_eq!(views(&a), views(&b));
}

/// The documented JSON shapes: field names, verdicts in kebab case, RFC 3339 times.
#[test]
fn views_serialize_to_the_documented_shapes() {
    let m = shop_map();
    let v = serde_json::to_value(m.overview(&Filter::default())).expect("serializes");
    assert_eq!(v["at"], "2026-11-25T00:00:00Z");
    assert_eq!(v["expanded"], true);
    let e = v["edges"]
        .as_array()
        .and_then(|es| {
            es.iter()
                .find(|e| e["id"] == "wl:shop/Deployment/web->cidr:198.51.100.0/24")
        })
        .expect("edge");
    assert_eq!(
        *e,
        serde_json::json!({
            "id": "wl:shop/Deployment/web->cidr:198.51.100.0/24",
            "from": "wl:shop/Deployment/web",
            "to": "cidr:198.51.100.0/24",
            "ports": ["443/TCP", "8443/TCP"],
            "events": 2,
            "first_seen": "2026-11-20T00:00:00Z",
            "last_seen": "2026-11-24T00:00:00Z",
            "verdict": "would-deny",
            "verdicts": {"allowed": 0, "would-deny": 1, "denied": 0, "drift": 0},
            "edges": 1
        })
    );
    let n = v["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["id"] == "wl:shop/Deployment/web"))
        .expect("node");
    assert_eq!(
        *n,
        serde_json::json!({
            "id": "wl:shop/Deployment/web", "kind": "workload", "label": "Deployment/web",
            "parent": "ns:shop", "namespace": "shop", "workload": "Deployment/web",
            "pods": 1, "phase": "would-deny"
        })
    );
    let d = serde_json::to_value(m.workload("shop", "Deployment/web")).expect("serializes");
    assert_eq!(
        d["destinations"][4],
        serde_json::json!({
            "to": "ext:api.example.test", "kind": "external", "label": "api.example.test",
            "address": "203.0.113.7", "port": 443, "protocol": "TCP", "service": null,
            "events": 5, "first_seen": "2026-11-20T00:00:00Z",
            "last_seen": "2026-11-24T00:00:00Z", "names": ["api.example.test"],
            "pods": [deployment_pod("web")], "more_pods": 0,
            "outcome": {"established": 4, "failed": 1},
            "applied": "allow", "proposed": "allow", "drift": false, "verdict": "allowed"
        })
    );
}

/// A Service of several workloads, one without endpoints, a nameless IPv6 address and
/// loopback.
#[test]
fn services_of_several_workloads_ipv6_and_loopback() {
    let mut fx = shop();
    let web = deployment_pod("web");
    let api = deployment_pod("api");
    fx.service(
        "shop",
        "all",
        "10.96.0.30",
        None,
        &[("http", 80, "TCP", IntOrString::Int(8080))],
    );
    fx.slice(
        "shop",
        "all",
        &[("http", 8080, "TCP")],
        &[("10.244.1.10", Some(&web)), ("10.244.1.11", Some(&api))],
    );
    fx.service(
        "shop",
        "empty",
        "10.96.0.31",
        Some(&[("app", "none")]),
        &[("http", 80, "TCP", IntOrString::Int(8080))],
    );
    let cluster = fx.cluster();
    let obs = observe(
        &cluster,
        &[
            flow("shop", &web, "TCP", "10.96.0.30", 80, 1, &[]),
            flow("shop", &web, "TCP", "10.96.0.31", 80, 1, &[]),
            flow("shop", &web, "TCP", "2001:db8:1::5", 443, 1, &[]),
            flow("shop", &web, "TCP", "127.0.0.1", 8080, 1, &[]),
        ],
    );
    let applied = PolicySet::default();
    let proposed = policies(&[PROPOSED]);
    let config = ClassifierConfig::default();
    let m = map::build(
        &cluster,
        &obs,
        &Inputs {
            proposed: Some(&proposed),
            ..Inputs::new(&applied, &config, now())
        },
    );
    let v = m.overview(&Filter::default());
    assert_eq!(
        edge_ids(&v),
        [
            "wl:shop/Deployment/web->cidr:2001:db8:1::/64",
            "wl:shop/Deployment/web->svc:shop/all",
            "wl:shop/Deployment/web->svc:shop/empty",
        ]
    );
    let svc = node(&v, "svc:shop/all");
    assert_eq!(
        (svc.kind, svc.label.as_str(), svc.namespace.as_deref()),
        (map::NodeKind::Service, "shop/all", Some("shop"))
    );
    // Both backends are pods the proposal lets web reach.
    assert_eq!(
        edge(&v, "wl:shop/Deployment/web->svc:shop/all").verdict,
        Verdict::Allowed
    );
    // kube-proxy refuses a Service without endpoints: no policy would deny it.
    assert_eq!(
        edge(&v, "wl:shop/Deployment/web->svc:shop/empty").verdict,
        Verdict::Allowed
    );
    assert_eq!(
        edge(&v, "wl:shop/Deployment/web->cidr:2001:db8:1::/64").verdict,
        Verdict::WouldDeny
    );
}

#[test]
fn drift_and_stored_outcomes_key_flows_by_workload() {
    let d = leash::drift::Drift {
        time: now(),
        source: eval::PolicyId {
            namespace: "shop".into(),
            name: deployment_pod("web"),
        },
        workload: "Deployment/web".into(),
        name: "api.example.test".into(),
        address: "::ffff:203.0.113.8".parse().expect("ip"),
        ports: vec![(Protocol::Tcp, 443), (Protocol::Udp, 443)],
        policies: Vec::new(),
    };
    let refs = FlowRef::from_drift(&d);
    assert_eq!(refs.len(), 2);
    assert_eq!(refs[0], drift()[0]);
    assert_eq!(refs[1].protocol, Protocol::Udp);

    let row = |port: u16, established: u64, failed: u64| leash::store::FlowObservation {
        workload: leash::store::WorkloadRef {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: "web".into(),
        },
        protocol: Protocol::Tcp,
        dst: "203.0.113.7".parse().expect("ip"),
        port,
        count: 1,
        first_seen: now(),
        last_seen: now(),
        names: BTreeSet::new(),
        pods: Default::default(),
        established,
        failed,
    };
    let o = map::outcomes(&[row(443, 3, 1), row(443, 1, 0), row(80, 0, 0)]);
    assert_eq!(o.len(), 1, "a row without outcomes adds none");
    let key = FlowRef {
        namespace: "shop".into(),
        workload: "Deployment/web".into(),
        address: "203.0.113.7".parse().expect("ip"),
        port: 443,
        protocol: Protocol::Tcp,
    };
    assert_eq!(
        o.get(&key),
        Some(&Outcome {
            established: 4,
            failed: 1
        })
    );
}
