//! The DNS path end to end over real UDP on loopback: a resolver thread answers hickory-built
//! queries, the payloads it sends go through `DnsTracker` exactly as the capture loop hands them
//! over, and flows are labelled from the per-pod cache.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use leash_agent::attribution::{Attribution, PodInfo};
use leash_agent::dns::testing::{TestRecord, message};
use leash_agent::dns::{DnsCacheConfig, DnsTracker};
use leash_agent::metrics::Metrics;
use leash_lab::k8s;
use leash_records::Record;

/// Answers for each name the test resolver knows.
fn zone() -> HashMap<&'static str, Vec<TestRecord>> {
    let ip = |s: &str| IpAddr::from_str(s).unwrap();
    let mut zone = HashMap::new();
    zone.insert(
        "api.stripe.test.",
        vec![
            TestRecord::Cname("api.stripe.test.", "edge.stripe.test.", 300),
            TestRecord::Addr("edge.stripe.test.", ip("203.0.113.10"), 60),
        ],
    );
    zone.insert(
        "db.internal.test.",
        vec![TestRecord::Addr(
            "db.internal.test.",
            ip("203.0.113.10"),
            30,
        )],
    );
    zone.insert(
        "v6.stripe.test.",
        vec![TestRecord::Addr(
            "v6.stripe.test.",
            ip("2001:db8:2::10"),
            60,
        )],
    );
    zone.insert(
        "big.stripe.test.",
        (0..40u8)
            .map(|i| TestRecord::Addr("big.stripe.test.", IpAddr::from([198, 51, 100, i]), 60))
            .collect(),
    );
    zone
}

/// A resolver on 127.0.0.1 that serves `zone()` for at most `max_queries` queries.
fn start_resolver(max_queries: usize) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let zone = zone();
        let mut buf = [0u8; 512];
        for _ in 0..max_queries {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                return;
            };
            let query = Message::from_vec(&buf[..n]).unwrap();
            let q = query.queries[0].clone();
            let name = q.name.to_string();
            let bytes = if name == "malformed.test." {
                // A valid header promising one answer that is cut off mid-record.
                let mut full = message(
                    &name,
                    q.query_type,
                    ResponseCode::NoError,
                    &zone["db.internal.test."],
                );
                full.metadata.id = query.metadata.id;
                let mut bytes = full.to_vec().unwrap();
                bytes.truncate(bytes.len() - 3);
                bytes
            } else {
                let (rcode, answers) = match zone.get(name.as_str()) {
                    Some(answers) => (ResponseCode::NoError, answers.clone()),
                    None => (ResponseCode::NXDomain, Vec::new()),
                };
                let mut response = message(&name, q.query_type, rcode, &answers);
                response.metadata.id = query.metadata.id;
                if let Some(edns) = query.edns.as_ref() {
                    let mut e = Edns::new();
                    e.set_max_payload(edns.max_payload());
                    response.set_edns(e);
                }
                response.to_vec().unwrap()
            };
            socket.send_to(&bytes, peer).unwrap();
        }
    });
    (addr, handle)
}

/// Sends a real query and returns the raw response payload, as the kernel would copy it.
fn resolve(server: SocketAddr, name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut query = Message::new(0x4242, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        query.set_edns(e);
    }
    socket.send_to(&query.to_vec().unwrap(), server).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = socket.recv(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn in_pod(namespace: &str, name: &str, uid: &str) -> Attribution {
    let info = PodInfo::from_pod(&k8s::pod(namespace, name).uid(uid).node("n1").build()).unwrap();
    Attribution {
        cgroup: Arc::from(format!(
            "/kubepods.slice/kubepods-pod{}.slice",
            uid.replace('-', "_")
        )),
        pod_uid: Some(Arc::from(uid)),
        container_id: None,
        pod: Some(Arc::new(info)),
    }
}

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-25T09:00:00Z")
        .unwrap()
        .to_utc()
}

#[test]
fn real_responses_label_flows_per_pod() {
    let (server, resolver) = start_resolver(6);
    let server_ip = server.ip();
    let metrics = Metrics::new();
    let mut tracker = DnsTracker::new(DnsCacheConfig::default(), metrics.clone());
    let payment = in_pod("shop", "payment", "6f1c2f9e-3b0a-4c1e-9a7d-2d4b5e6f7a8b");
    let reports = in_pod("batch", "reports", "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9");
    let daemon = Attribution::cgroup_only("/system.slice/backup.service");

    // CNAME chain to A, for the payment pod.
    let payload = resolve(server, "api.stripe.test.", RecordType::A, false);
    let record = tracker
        .observe(&payload, server_ip, t0(), "n1", &payment)
        .unwrap();
    let line = Record::Dns(record).to_json_line();
    let back: Record = serde_json::from_str(&line).unwrap();
    let Record::Dns(dns) = back else {
        panic!("not a DNS record: {line}")
    };
    assert_eq!(dns.query, "api.stripe.test.");
    assert_eq!(dns.rcode, "NOERROR");
    assert_eq!(dns.pod.as_ref().map(|p| p.name.as_str()), Some("payment"));
    assert_eq!(
        dns.answers
            .iter()
            .map(|a| (a.rtype.as_str(), a.data.as_str()))
            .collect::<Vec<_>>(),
        [("CNAME", "edge.stripe.test."), ("A", "203.0.113.10")]
    );

    // The same IP under another name, for another pod, and for a process outside pods.
    let payload = resolve(server, "db.internal.test.", RecordType::A, false);
    tracker
        .observe(&payload, server_ip, t0(), "n1", &reports)
        .unwrap();
    tracker
        .observe(&payload, server_ip, t0(), "n1", &daemon)
        .unwrap();

    // AAAA.
    let payload = resolve(server, "v6.stripe.test.", RecordType::AAAA, false);
    let v6 = tracker
        .observe(&payload, server_ip, t0(), "n1", &payment)
        .unwrap();
    assert_eq!(v6.answers[0].data, "2001:db8:2::10");

    // An EDNS answer larger than 512 bytes.
    let payload = resolve(server, "big.stripe.test.", RecordType::A, true);
    assert!(payload.len() > 512, "{}", payload.len());
    let big = tracker
        .observe(&payload, server_ip, t0(), "n1", &payment)
        .unwrap();
    assert_eq!(big.answers.len(), 40);

    // NXDOMAIN is recorded but labels nothing.
    let payload = resolve(server, "nope.stripe.test.", RecordType::A, false);
    let nx = tracker
        .observe(&payload, server_ip, t0(), "n1", &payment)
        .unwrap();
    assert_eq!(nx.rcode, "NXDOMAIN");

    // Malformed: counted and skipped.
    let payload = resolve(server, "malformed.test.", RecordType::A, false);
    assert!(
        tracker
            .observe(&payload, server_ip, t0(), "n1", &payment)
            .is_none()
    );
    assert_eq!(metrics.dns_parse_errors.get(), 1);
    resolver.join().unwrap();

    let dst = IpAddr::from([203, 0, 113, 10]);
    let later = t0() + TimeDelta::seconds(10);
    assert_eq!(
        tracker.names_for(&payment, dst, later),
        ["api.stripe.test", "edge.stripe.test"]
    );
    assert_eq!(
        tracker.names_for(&reports, dst, later),
        ["db.internal.test"]
    );
    assert_eq!(tracker.names_for(&daemon, dst, later), ["db.internal.test"]);
    assert_eq!(
        tracker.names_for(&payment, "2001:db8:2::10".parse().unwrap(), later),
        ["v6.stripe.test"]
    );
    assert_eq!(
        tracker.names_for(&payment, IpAddr::from([198, 51, 100, 39]), later),
        ["big.stripe.test"]
    );
    assert!(
        tracker
            .names_for(&reports, IpAddr::from([198, 51, 100, 39]), later)
            .is_empty()
    );
    // 1 (stripe) + 2 (db: reports, daemon) + 1 (v6) + 40 (big).
    assert_eq!(metrics.dns_cache_size.get(), 44);

    // Past TTL + the default 5 min grace, everything is purged.
    let gone = t0() + TimeDelta::seconds(60 + 300 + 1);
    assert!(tracker.names_for(&payment, dst, gone).is_empty());
    assert_eq!(tracker.purge(gone), 44);
    assert_eq!(metrics.dns_cache_size.get(), 0);
}

/// A "resolver" that is the pod itself: it sends `responses` unasked from a loopback socket, and
/// the pod's socket receives them, as the kernel would copy them from source port 53.
fn answer_self(responses: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let to = client.local_addr().unwrap();
    let mut buf = vec![0u8; 4096];
    responses
        .iter()
        .map(|bytes| {
            server.send_to(bytes, to).unwrap();
            let n = client.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        })
        .collect()
}

/// A NOERROR response to `query` A whose one answer gives `addr` to `owner`.
fn self_answer(query: Name, owner: Name, addr: &str) -> Vec<u8> {
    let mut msg = Message::new(1, MessageType::Response, OpCode::Query);
    msg.add_query(Query::query(query, RecordType::A));
    msg.add_answer(hickory_proto::rr::Record::from_rdata(
        owner,
        60,
        hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A(addr.parse().unwrap())),
    ));
    msg.to_vec().unwrap()
}

/// The root-owned answer and a flood of 2,000 names for one address, over real UDP: the records
/// built from them pass the `leash.v1` validation `leash serve` applies (before the fix, a
/// flow record carried the name `""` and the whole batch was refused), and the flow record to
/// the flooded address carries 16 names: the first asked for and the 15 most recent.
#[test]
fn hostile_self_answers_make_records_the_recommender_accepts() {
    let metrics = Metrics::new();
    let mut tracker = DnsTracker::new(DnsCacheConfig::default(), metrics.clone());
    let pod = in_pod(
        "hostile",
        "attacker",
        "5b1c2f9e-3b0a-4c1e-9a7d-2d4b5e6f7a8b",
    );
    let server_ip = IpAddr::from([127, 0, 0, 1]);
    let name = |s: &str| Name::from_str(s).unwrap();
    let mut responses = vec![self_answer(
        name("evil.lab.test."),
        Name::root(),
        "203.0.113.11",
    )];
    responses.extend((0..2000).map(|i| {
        let n = name(&format!("n{i}.flood.lab.test."));
        self_answer(n.clone(), n, "203.0.113.11")
    }));
    let mut dns = Vec::new();
    for payload in answer_self(&responses) {
        dns.extend(tracker.observe(&payload, server_ip, t0(), "n1", &pod));
    }
    assert_eq!(dns.len(), 2001);
    assert!(dns[0].answers.is_empty(), "{:?}", dns[0]);
    assert_eq!(metrics.dns_names_skipped_for("empty"), 1);
    assert_eq!(metrics.dns_names_evicted.get(), 2000 - 16);

    let names = tracker.names_for(&pod, IpAddr::from([203, 0, 113, 11]), t0());
    let mut want: Vec<String> = std::iter::once(0)
        .chain(1985..2000)
        .map(|i| format!("n{i}.flood.lab.test"))
        .collect();
    want.sort();
    assert_eq!(names, want);

    let flow = leash_records::FlowRecord {
        node: "n1".to_owned(),
        pod: pod.pod_ref(),
        cgroup: pod.cgroup.to_string(),
        protocol: leash_records::Protocol::Tcp,
        dst: IpAddr::from([203, 0, 113, 11]),
        dst_port: 443,
        count: 5,
        first_seen: t0(),
        last_seen: t0(),
        names,
        outcome: None,
    };
    let id = leash_records::wire::v1::BatchId {
        node: "n1".to_owned(),
        boot_id: "boot".to_owned(),
        seq: 1,
    };
    let wire = leash_records::wire::batch_to_wire(id, std::slice::from_ref(&flow), &dns).unwrap();
    let back = leash_records::wire::batch_from_wire(wire).unwrap();
    assert_eq!(back.flows, [flow]);
    assert_eq!(back.dns, dns);
}

/// `--dns-max-names-per-address` is checked before anything starts: 0 and more than the recommender accepts per record (64) are
/// usage errors (exit 2) naming the flag.
#[test]
fn max_names_flag_is_range_checked() {
    for bad in ["0", "65", "many"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_leash-agent"))
            .args(["--dns-max-names-per-address", bad, "--duration", "1s"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--dns-max-names-per-address"),
            "{bad}: {stderr}"
        );
    }
}
