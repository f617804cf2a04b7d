//! Privileged tests of the demo shop (`leash_lab::shop`): its lab starts, its DNS, Services and
//! external hosts carry the traffic the demo relies on, its snapshot is what the recommender
//! reads, and its probes are valid flow records. Each test skips without root (or fails with
//! LEASH_REQUIRE_PRIVILEGED=1).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup or parse step must fail the test loudly"
)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use leash_lab::Proto;
use leash_lab::shop::{
    self, API, API_PORT, API_TARGET_PORT, COLLECTOR_ADDR, DB_PORT, FRONTEND, PAYMENT, POSTGRES,
    STRIPE_ADDRS, STRIPE_HOST, STRIPE_PORT, SYSLOG_PORT, Shop, WORKER,
};
use leash_records::{Record, read_records};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(3);

fn start() -> Option<Shop> {
    if !leash_lab::require_privileged() {
        return None;
    }
    Some(Shop::start().expect("starting the shop"))
}

#[test]
fn dns_answers_the_stripe_name_with_three_addresses_over_the_cluster_dns_service() {
    let Some(shop) = start() else { return };
    let lab = shop.lab();
    let dns = lab
        .dns_service_ip()
        .expect("the shop has cluster DNS")
        .to_string();
    let out = lab
        .pod(PAYMENT)
        .run(&["dns", &dns, STRIPE_HOST, "A"])
        .unwrap();
    assert!(out.success(), "{}", out.stdout);
    assert_eq!(out.json["rcode"], "NOERROR");
    let answers: BTreeSet<String> = out.json["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["type"], "A", "{a}");
            assert_eq!(a["name"], "api.stripe.test.", "{a}");
            a["data"].as_str().unwrap().to_owned()
        })
        .collect();
    let want: BTreeSet<String> = STRIPE_ADDRS.iter().map(ToString::to_string).collect();
    assert_eq!(answers, want);
    // Cluster names of both namespaces resolve to the Services' VIPs.
    for (key, vip) in [
        (shop::API_SERVICE, shop.api_vip()),
        (shop::DB_SERVICE, shop.db_vip()),
    ] {
        let name = shop::service_dns_name(key);
        let out = lab.pod(FRONTEND).run(&["dns", &dns, &name, "A"]).unwrap();
        assert_eq!(out.json["answers"][0]["data"], vip.to_string(), "{name}");
    }
}

#[test]
fn traffic_reaches_every_backend_through_services_dns_and_external_hosts() {
    let Some(shop) = start() else { return };
    let lab = shop.lab();
    let traffic = shop.traffic(2).expect("the shop's traffic");
    let api = lab.pod(API);
    let fe = lab.pod(FRONTEND);

    // frontend -> api VIP:80, DNATed to the api pod's named port 8080.
    let vip = IpAddr::V4(shop.api_vip());
    assert_eq!(traffic.connections(FRONTEND, vip, API_PORT), 4);
    let s = lab
        .wait_server_stats(
            &api.ipv4().to_string(),
            Proto::Tcp,
            API_TARGET_PORT,
            WAIT,
            |s| s.connections >= 4,
        )
        .unwrap();
    assert_eq!(s.connections, 4);
    assert_eq!(s.peers, BTreeSet::from([IpAddr::V4(fe.ipv4())]));

    // api -> postgres VIP:5432 in the other namespace.
    let db = lab.pod(POSTGRES).ipv4().to_string();
    assert_eq!(
        traffic.connections(API, IpAddr::V4(shop.db_vip()), DB_PORT),
        4
    );
    let s = lab
        .wait_server_stats(&db, Proto::Tcp, DB_PORT, WAIT, |s| s.connections >= 4)
        .unwrap();
    assert_eq!(s.connections, 4);
    assert_eq!(s.peers, BTreeSet::from([IpAddr::V4(api.ipv4())]));

    // payment -> each of the three Stripe addresses on 443, after a lookup per round.
    assert_eq!(traffic.lookups(STRIPE_HOST), 2);
    for ip in STRIPE_ADDRS {
        assert_eq!(traffic.connections(PAYMENT, IpAddr::V4(ip), STRIPE_PORT), 2);
        let s = lab
            .wait_server_stats(&ip.to_string(), Proto::Tcp, STRIPE_PORT, WAIT, |s| {
                s.connections >= 2
            })
            .unwrap();
        assert_eq!(s.connections, 2, "{ip}");
        assert_eq!(
            s.peers,
            BTreeSet::from([IpAddr::V4(lab.pod(PAYMENT).ipv4())])
        );
    }

    // worker -> collector:514/UDP.
    assert_eq!(
        traffic.datagrams(WORKER, IpAddr::V4(COLLECTOR_ADDR), SYSLOG_PORT),
        6
    );
    let s = lab
        .wait_server_stats(
            &COLLECTOR_ADDR.to_string(),
            Proto::Udp,
            SYSLOG_PORT,
            WAIT,
            |s| s.datagrams >= 6,
        )
        .unwrap();
    assert_eq!(s.datagrams, 6);
    assert_eq!(
        s.peers,
        BTreeSet::from([IpAddr::V4(lab.pod(WORKER).ipv4())])
    );

    // Every lookup went through the cluster DNS Service: 4 per round.
    let dns = lab.dns_stats();
    assert_eq!(dns.udp_queries, 8, "{:?}", dns.queries);
    let (conns, datagrams, lookups) = traffic.totals();
    assert_eq!((conns, datagrams, lookups), (4 + 4 + 6, 6, 8));
}

fn items(snapshot: &Value, kind: &str) -> Vec<Value> {
    snapshot["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] == kind)
        .cloned()
        .collect()
}

fn named<'a>(objs: &'a [Value], ns: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["metadata"]["namespace"] == ns && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {ns}/{name}"))
}

#[test]
fn snapshot_parses_with_leash_records_and_carries_the_named_target_port() {
    let Some(shop) = start() else { return };
    let lab = shop.lab();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.yaml");
    lab.write_snapshot(&path).unwrap();
    let snap = leash_records::snapshot::load_path(&path).expect("the project's loader");
    let ns: BTreeSet<String> = snap
        .namespaces
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    assert!(
        ns.contains("shop") && ns.contains("data") && ns.contains("kube-system"),
        "{ns:?}"
    );
    assert_eq!(snap.pods.len(), 6); // five shop pods and the DNS pod
    assert_eq!(snap.stateful_sets.len(), 1);
    assert_eq!(snap.deployments.len(), 5); // frontend, api, payment, worker, coredns

    // Through the typed objects, serialised back: the named port survives the loader.
    let svc = snap
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("api"))
        .expect("Service shop/api");
    let svc = to_json(svc);
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
    let api = lab.pod(API);
    let pod = snap
        .pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some(api.name()))
        .expect("the api pod");
    let pod = to_json(pod);
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0],
        serde_json::json!({"containerPort": 8080, "name": "http", "protocol": "TCP"})
    );

    // The raw List: the EndpointSlice carries the resolved port, owners chain to workloads.
    let v = lab.snapshot_value();
    let slices: Vec<Value> = items(&v, "EndpointSlice")
        .into_iter()
        .filter(|s| s["metadata"]["labels"]["kubernetes.io/service-name"] == "api")
        .collect();
    assert_eq!(slices.len(), 2); // IPv4 and IPv6
    for s in &slices {
        assert_eq!(s["ports"][0]["port"], 8080, "{s}");
        assert_eq!(s["endpoints"][0]["targetRef"]["uid"], api.uid(), "{s}");
    }
    let pods = items(&v, "Pod");
    let rs_ref = &named(&pods, "shop", api.name())["metadata"]["ownerReferences"][0];
    assert_eq!(rs_ref["kind"], "ReplicaSet");
    let rss = items(&v, "ReplicaSet");
    let rs = named(&rss, "shop", rs_ref["name"].as_str().unwrap());
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(rs["metadata"]["ownerReferences"][0]["name"], "api");
    let pg = lab.pod(POSTGRES);
    let pg_ref = &named(&pods, "data", pg.name())["metadata"]["ownerReferences"][0];
    assert_eq!(pg_ref["kind"], "StatefulSet");
    assert_eq!(pg_ref["name"], "postgres");
    let svcs = items(&v, "Service");
    assert_eq!(
        named(&svcs, "kube-system", "kube-dns")["spec"]["clusterIP"],
        "198.51.100.138"
    );
}

/// A k8s-openapi object as JSON (the tests read fields generically).
fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap()
}

#[test]
fn probes_are_flow_records_of_shop_pods_and_send_nothing() {
    let Some(shop) = start() else { return };
    let lab = shop.lab();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("probes.jsonl");
    let probes = shop.probes(&path).unwrap();
    assert_eq!(probes.len(), 4);
    let text = std::fs::read_to_string(&path).unwrap();
    let records: Vec<_> = read_records(text.as_bytes(), Path::new("probes.jsonl"))
        .collect::<Result<_, _>>()
        .expect("probes are valid v1 records");
    assert_eq!(records.len(), probes.len());
    let mut seen = BTreeSet::new();
    for (located, probe) in records.iter().zip(&probes) {
        let Record::Flow(f) = &located.record else {
            panic!("not a flow record: {:?}", located.record)
        };
        let pod = lab.pod(&probe.pod);
        let r = f.pod.as_ref().expect("attributed");
        assert_eq!(
            (r.uid.as_str(), r.namespace.as_str(), r.name.as_str()),
            (pod.uid(), pod.namespace(), pod.name())
        );
        assert_eq!(f.cgroup, pod.cgroup_rel());
        assert_eq!(f.node, lab.node_name());
        assert_eq!((f.dst, f.dst_port), (probe.dst, probe.port));
        seen.insert((probe.pod.clone(), f.dst.to_string(), f.dst_port));
    }
    let pg = lab.pod(POSTGRES).ipv4().to_string();
    for want in [
        (FRONTEND, "169.254.169.254", 80),
        (FRONTEND, pg.as_str(), DB_PORT),
        (PAYMENT, "203.0.113.10", 80),
    ] {
        assert!(
            seen.contains(&(want.0.to_owned(), want.1.to_owned(), want.2)),
            "{want:?} in {seen:?}"
        );
    }
    // Nothing was dialled: the database has had no connection at all.
    let s = lab.server_stats(&pg, Proto::Tcp, DB_PORT).unwrap();
    assert_eq!(s.connections, 0);
}
