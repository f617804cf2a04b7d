//! Privileged tests of the lab itself (no eBPF): real traffic between real namespaces, counted
//! by the lab's servers. Each test skips (or fails with LEASH_REQUIRE_PRIVILEGED=1) without root.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use leash_lab::{
    CgroupDriver, DnsConfig, Error, Lab, Owner, PodSpec, Port, Proto, Qos, Runtime, ServicePort,
    ServiceSpec,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(3);

fn shop_lab() -> Lab {
    Lab::builder()
        .pod(
            PodSpec::new("shop", "frontend-7d4-x2")
                .label("app", "frontend")
                .owner_deployment("frontend"),
        )
        .pod(
            PodSpec::new("shop", "payment-5c9-q7")
                .label("app", "payment")
                .owner_deployment("payment")
                .port(Some("http"), 8080, Proto::Tcp)
                .port(Some("stats"), 8125, Proto::Udp),
        )
        .service(
            ServiceSpec::new("shop", "payment")
                .selector("app", "payment")
                .port(ServicePort::tcp(80).target(8080).name("http"))
                .port(ServicePort::udp(9125).target_named("stats").name("stats")),
        )
        .external("203.0.113.10", [Port::tcp(443), Port::udp(4433)])
        .external("2001:db8:2::10", [Port::tcp(443), Port::udp(4433)])
        .dns(DnsConfig::new().with_stripe_example())
        .build()
        .expect("build lab")
}

#[test]
fn pod_to_external_tcp_and_udp_arrive_v4_and_v6() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = shop_lab();
    let fe = lab.pod("shop/frontend-7d4-x2");
    for (dst, src) in [
        ("203.0.113.10", IpAddr::V4(fe.ipv4())),
        ("2001:db8:2::10", IpAddr::V6(fe.ipv6())),
    ] {
        let out = fe
            .run(&["tcp", dst, "443", "--count", "3", "--send", "ping"])
            .unwrap();
        assert!(out.success(), "{}", out.stdout);
        assert_eq!(out.count("connected"), 3);
        assert_eq!(out.count("echoed"), 3);
        let s = lab
            .wait_server_stats(dst, Proto::Tcp, 443, WAIT, |s| {
                s.connections >= 3 && s.bytes >= 12
            })
            .unwrap();
        assert_eq!(s.connections, 3, "{dst}");
        assert_eq!(s.bytes, 12, "{dst}");
        assert_eq!(s.peers, BTreeSet::from([src]), "{dst}");

        let out = fe
            .run(&["udp-connected", dst, "4433", "--count", "4", "--wait-echo"])
            .unwrap();
        assert!(out.success(), "{}", out.stdout);
        assert_eq!(out.count("echoed"), 4);
        let out = fe
            .run(&["udp-sendto", dst, "4433", "--count", "5", "--send", "abc"])
            .unwrap();
        assert!(out.success(), "{}", out.stdout);
        assert_eq!(out.count("sent"), 5);
        let s = lab
            .wait_server_stats(dst, Proto::Udp, 4433, WAIT, |s| s.datagrams >= 9)
            .unwrap();
        assert_eq!(s.datagrams, 9, "{dst}");
        assert_eq!(s.peers, BTreeSet::from([src]), "{dst}");
    }
    // IPv4-mapped IPv6 destinations (an AF_INET6 socket talking to a v4 host) arrive as v4.
    let out = fe
        .run(&["tcp", "::ffff:203.0.113.10", "443", "--send", "m"])
        .unwrap();
    assert!(out.success(), "{}", out.stdout);
    let out = fe
        .run(&["udp-sendto", "::ffff:203.0.113.10", "4433"])
        .unwrap();
    assert!(out.success(), "{}", out.stdout);
    let t = lab
        .wait_server_stats("203.0.113.10", Proto::Tcp, 443, WAIT, |s| {
            s.connections >= 4
        })
        .unwrap();
    assert_eq!(t.connections, 4);
    let u = lab
        .wait_server_stats("203.0.113.10", Proto::Udp, 4433, WAIT, |s| {
            s.datagrams >= 10
        })
        .unwrap();
    assert_eq!(u.datagrams, 10);

    // A port nobody serves is refused, and the client says so.
    let out = fe.run(&["tcp", "203.0.113.10", "444"]).unwrap();
    assert!(!out.success());
    assert_eq!(out.count("failed"), 1);
}

#[test]
fn cluster_ip_dnats_to_the_backend_target_port() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = shop_lab();
    let fe = lab.pod("shop/frontend-7d4-x2");
    let pay = lab.pod("shop/payment-5c9-q7");
    let svc = lab.service("shop/payment");
    let vip = svc.cluster_ip();
    // The VIP lies outside the pod subnet, in the Service range.
    assert!(vip.octets()[3] >= 129 && vip.octets()[3] <= 190, "{vip}");

    let out = fe
        .run(&[
            "tcp",
            &vip.to_string(),
            "80",
            "--count",
            "2",
            "--send",
            "hello",
        ])
        .unwrap();
    assert!(out.success(), "{} {}", out.stdout, out.stderr);
    assert_eq!(out.count("echoed"), 2);
    let s = lab
        .wait_server_stats(&pay.ipv4().to_string(), Proto::Tcp, 8080, WAIT, |s| {
            s.connections >= 2
        })
        .unwrap();
    assert_eq!(s.connections, 2);
    assert_eq!(s.peers, BTreeSet::from([IpAddr::V4(fe.ipv4())]));

    // IPv6 VIP.
    let vip6 = svc.cluster_ip_v6().to_string();
    let out = fe.run(&["tcp", &vip6, "80", "--send", "v6"]).unwrap();
    assert!(out.success(), "{}", out.stdout);
    let s = lab
        .wait_server_stats(&pay.ipv6().to_string(), Proto::Tcp, 8080, WAIT, |s| {
            s.connections >= 1
        })
        .unwrap();
    assert_eq!(s.connections, 1);

    // UDP with a named targetPort: 9125 -> "stats" (8125).
    let out = fe
        .run(&[
            "udp-connected",
            &vip.to_string(),
            "9125",
            "--count",
            "3",
            "--wait-echo",
        ])
        .unwrap();
    assert!(out.success(), "{}", out.stdout);
    let s = lab
        .wait_server_stats(&pay.ipv4().to_string(), Proto::Udp, 8125, WAIT, |s| {
            s.datagrams >= 3
        })
        .unwrap();
    assert_eq!(s.datagrams, 3);

    // Pod to pod directly.
    let out = fe
        .run(&["tcp", &pay.ipv4().to_string(), "8080", "--send", "direct"])
        .unwrap();
    assert!(out.success());
    let rules = lab.nft_ruleset().unwrap();
    assert!(
        rules.contains(&format!("ip daddr {vip} tcp dport 80")),
        "{rules}"
    );
}

fn dns(lab: &Lab, args: &[&str]) -> Value {
    let out = lab
        .pod("shop/frontend-7d4-x2")
        .run(args)
        .expect("run lab-client");
    assert!(out.success(), "{:?}: {} {}", args, out.stdout, out.stderr);
    out.json
}

fn answers(v: &Value) -> Vec<(String, String)> {
    v["answers"]
        .as_array()
        .expect("answers array")
        .iter()
        .map(|a| {
            (
                a["type"].as_str().expect("type").to_owned(),
                a["data"].as_str().expect("data").to_owned(),
            )
        })
        .collect()
}

#[test]
fn dns_answers_a_aaaa_cname_over_udp_and_tcp() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = shop_lab();
    let vip = lab.dns_service_ip().unwrap().to_string();
    let dns_pod_ip = lab.dns_pod().unwrap().ipv4().to_string();
    let chain = vec![
        ("CNAME".to_owned(), "edge.stripe.test.".to_owned()),
        ("A".to_owned(), "203.0.113.10".to_owned()),
        ("A".to_owned(), "203.0.113.11".to_owned()),
        ("A".to_owned(), "203.0.113.12".to_owned()),
    ];
    for server in [vip.as_str(), dns_pod_ip.as_str()] {
        for mode in [&[][..], &["--tcp"][..], &["--connected"][..]] {
            let mut args = vec!["dns", server, "api.stripe.test", "A"];
            args.extend_from_slice(mode);
            let v = dns(&lab, &args);
            assert_eq!(v["rcode"], "NOERROR", "{v}");
            assert_eq!(answers(&v), chain, "{args:?}");
        }
    }
    let v = dns(&lab, &["dns", &vip, "api.stripe.test", "AAAA", "--tcp"]);
    assert_eq!(
        answers(&v),
        vec![
            ("CNAME".to_owned(), "edge.stripe.test.".to_owned()),
            ("AAAA".to_owned(), "2001:db8:2::10".to_owned())
        ]
    );
    let v = dns(&lab, &["dns", &vip, "api.stripe.test", "CNAME"]);
    assert_eq!(
        answers(&v),
        vec![("CNAME".to_owned(), "edge.stripe.test.".to_owned())]
    );
    // Cluster names of Services.
    let v = dns(&lab, &["dns", &vip, "payment.shop.svc.cluster.local", "A"]);
    assert_eq!(
        answers(&v),
        vec![(
            "A".to_owned(),
            lab.service("shop/payment").cluster_ip().to_string()
        )]
    );
    // Over the IPv6 ClusterIP too.
    let v = dns(&lab, &["dns", "2001:db8:3::8a", "edge.stripe.test", "A"]);
    assert_eq!(answers(&v).len(), 3);
    let v = dns(&lab, &["dns", &vip, "nothing.stripe.test", "A"]);
    assert_eq!(v["rcode"], "NXDOMAIN");
    // The name moves while the lab runs: the next answer has the new address.
    lab.set_dns_addresses("edge.stripe.test", &["203.0.113.99".parse().unwrap()])
        .unwrap();
    let v = dns(&lab, &["dns", &vip, "api.stripe.test", "A"]);
    assert_eq!(
        answers(&v),
        vec![
            ("CNAME".to_owned(), "edge.stripe.test.".to_owned()),
            ("A".to_owned(), "203.0.113.99".to_owned())
        ]
    );
    assert!(
        lab.set_dns_addresses("edge.stripe.test", &["192.0.2.1".parse().unwrap()])
            .is_err(),
        "an address outside the lab's ranges is refused"
    );

    let stats = lab.dns_stats();
    assert!(stats.tcp_queries >= 3, "{stats:?}");
    assert!(stats.udp_queries >= 8, "{stats:?}");
    assert!(
        stats
            .queries
            .contains(&("api.stripe.test.".to_owned(), "AAAA".to_owned()))
    );
}

#[test]
fn dns_large_edns_answer_and_malformed_answer() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = shop_lab();
    let vip = lab.dns_service_ip().unwrap().to_string();
    // EDNS 1232 (the client's default): the full answer over UDP, larger than 512 bytes.
    let v = dns(&lab, &["dns", &vip, leash_lab::LARGE_NAME, "A"]);
    assert!(v["bytes"].as_u64().unwrap() > 512, "{v}");
    assert_eq!(v["truncated"], false);
    assert_eq!(answers(&v).len(), usize::from(leash_lab::LARGE_COUNT));
    assert_eq!(v["edns_payload"], 1232);
    // Without EDNS: truncated over UDP, complete over TCP.
    let v = dns(
        &lab,
        &["dns", &vip, leash_lab::LARGE_NAME, "A", "--no-edns"],
    );
    assert_eq!(v["truncated"], true, "{v}");
    assert!(v["bytes"].as_u64().unwrap() <= 512);
    let v = dns(
        &lab,
        &[
            "dns",
            &vip,
            leash_lab::LARGE_NAME,
            "A",
            "--no-edns",
            "--tcp",
        ],
    );
    assert_eq!(answers(&v).len(), 40);
    // A client advertising 600 bytes gets a truncated answer, since the full one is bigger.
    let v = dns(
        &lab,
        &["dns", &vip, leash_lab::LARGE_NAME, "A", "--edns", "600"],
    );
    assert_eq!(v["truncated"], true, "{v}");

    // The malformed answer reaches the client as bytes with a valid header it cannot parse.
    for mode in [&[][..], &["--tcp"][..]] {
        let mut args = vec!["dns", vip.as_str(), leash_lab::MALFORMED_NAME, "A"];
        args.extend_from_slice(mode);
        let v = dns(&lab, &args);
        assert_eq!(v["parsed"], false, "{v}");
        assert!(v["parse_error"].is_string());
        let raw = v["raw_hex"].as_str().unwrap();
        let id = u16::from_str_radix(&raw[0..4], 16).unwrap();
        assert_eq!(u64::from(id), v["id"].as_u64().unwrap());
        assert_eq!(&raw[4..6], "85", "QR and AA set: {raw}");
    }
}

#[test]
fn openshift_dns_on_5353_behind_service_port_53_and_api_server() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("shop", "client"))
        .dns(DnsConfig::openshift().a("db.lab.test", ["198.51.100.77"]))
        .api_server()
        .service(ServiceSpec::new("shop", "auto").port(ServicePort::tcp(1)))
        .build()
        .unwrap();
    assert_eq!(lab.dns_port(), Some(5353));
    assert_eq!(
        lab.dns_pod().unwrap().key(),
        "openshift-dns/dns-default-lab"
    );
    // The API server VIP is reserved even though another Service needed an automatic one.
    assert_eq!(
        lab.service("default/kubernetes").cluster_ip(),
        leash_lab::API_VIP_V4
    );
    assert_ne!(lab.service("shop/auto").cluster_ip(), leash_lab::API_VIP_V4);
    let c = lab.pod("shop/client");
    let vip = lab.dns_service_ip().unwrap().to_string();
    for args in [
        vec!["dns", vip.as_str(), "db.lab.test", "A"],
        vec!["dns", vip.as_str(), "db.lab.test", "A", "--tcp"],
    ] {
        let out = c.run(&args).unwrap();
        assert!(out.success(), "{}", out.stdout);
        assert_eq!(
            answers(&out.json),
            vec![("A".into(), "198.51.100.77".into())]
        );
    }
    let pod_ip = lab.dns_pod().unwrap().ipv4().to_string();
    let out = c
        .run(&["dns", &pod_ip, "db.lab.test", "A", "--port", "5353"])
        .unwrap();
    assert!(out.success(), "{}", out.stdout);
    // Nothing listens on the pod's port 53.
    let out = c
        .run(&["dns", &pod_ip, "db.lab.test", "A", "--timeout-ms", "300"])
        .unwrap();
    assert!(!out.success());

    // The API server: VIP 443 -> node 6443, v4 and v6.
    for vip in ["198.51.100.129", "2001:db8:3::81"] {
        let out = c.run(&["tcp", vip, "443", "--send", "GET"]).unwrap();
        assert!(out.success(), "{}", out.stdout);
    }
    for node in ["198.51.100.1", "2001:db8:1::1"] {
        let s = lab
            .wait_server_stats(node, Proto::Tcp, 6443, WAIT, |s| s.connections >= 1)
            .unwrap();
        assert_eq!(s.connections, 1, "{node}");
    }

    // The snapshot names the OpenShift DNS objects and the API server's endpoints.
    let v: Value = serde_norway::from_str(&lab.snapshot_yaml().unwrap()).unwrap();
    let items = v["items"].as_array().unwrap();
    let dns_svc = items
        .iter()
        .find(|i| i["kind"] == "Service" && i["metadata"]["name"] == "dns-default")
        .unwrap();
    assert_eq!(dns_svc["metadata"]["namespace"], "openshift-dns");
    assert_eq!(dns_svc["spec"]["ports"][0]["port"], 53);
    assert_eq!(dns_svc["spec"]["ports"][0]["targetPort"], "dns");
    let dns_eps = items
        .iter()
        .find(|i| {
            i["kind"] == "EndpointSlice"
                && i["metadata"]["labels"]["kubernetes.io/service-name"] == "dns-default"
                && i["addressType"] == "IPv4"
        })
        .unwrap();
    assert_eq!(dns_eps["ports"][0]["port"], 5353);
    assert!(
        items
            .iter()
            .any(|i| i["kind"] == "DaemonSet" && i["metadata"]["name"] == "dns-default")
    );
    let api_eps = items
        .iter()
        .find(|i| {
            i["kind"] == "EndpointSlice"
                && i["metadata"]["labels"]["kubernetes.io/service-name"] == "kubernetes"
                && i["addressType"] == "IPv4"
        })
        .unwrap();
    assert_eq!(api_eps["endpoints"][0]["addresses"][0], "198.51.100.1");
    assert_eq!(api_eps["ports"][0]["port"], 6443);
    assert_eq!(api_eps["ports"][0]["name"], "https");
}

#[test]
fn pod_processes_run_in_their_cgroup_and_netns() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("a", "burstable"))
        .pod(PodSpec::new("a", "guaranteed").qos(Qos::Guaranteed))
        .pod(
            PodSpec::new("b", "cgroupfs")
                .cgroup_driver(CgroupDriver::Cgroupfs)
                .qos(Qos::BestEffort),
        )
        .pod(PodSpec::new("b", "crio").runtime(Runtime::Crio))
        .build()
        .unwrap();
    let root = lab.cgroup_root().to_path_buf();
    assert!(root.starts_with(lab.cgroup_mount()));
    for pod in lab.pods() {
        let uid_ = pod.uid().replace('-', "_");
        let cid = pod.container_id();
        assert_eq!(cid.len(), 64);
        let expected = match pod.name() {
            "burstable" => format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{cid}.scope"
            ),
            "guaranteed" => {
                format!("kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{cid}.scope")
            }
            "cgroupfs" => format!("kubepods/besteffort/pod{}/{cid}", pod.uid()),
            "crio" => format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{cid}.scope"
            ),
            other => panic!("unexpected pod {other}"),
        };
        assert_eq!(pod.cgroup_path(), root.join(&expected));
        let rel = format!(
            "/{}/{expected}",
            root.file_name().unwrap().to_string_lossy()
        );
        assert_eq!(pod.cgroup_rel(), rel);
        assert_eq!(
            pod.cgroup_id(),
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(pod.cgroup_path()).unwrap())
        );
        // The child joined the cgroup ...
        let out = pod
            .command("cat")
            .arg("/proc/self/cgroup")
            .output()
            .unwrap();
        assert!(out.status.success());
        let cg = String::from_utf8_lossy(&out.stdout);
        assert!(
            cg.lines().any(|l| l == format!("0::{rel}")),
            "{cg} vs {rel}"
        );
        // ... and the pod's network namespace.
        let out = pod
            .command("ip")
            .args(["-o", "addr", "show", "dev", "eth0"])
            .output()
            .unwrap();
        let addrs = String::from_utf8_lossy(&out.stdout);
        assert!(addrs.contains(&format!("{}/32", pod.ipv4())), "{addrs}");
        assert!(addrs.contains(&format!("{}/128", pod.ipv6())), "{addrs}");
    }
}

fn lab_leftovers(netns: &[String], cgroup_root: &Path) -> Vec<String> {
    let mut left: Vec<String> = netns
        .iter()
        .filter(|n| Path::new("/run/netns").join(n).exists())
        .cloned()
        .collect();
    if cgroup_root.exists() {
        left.push(cgroup_root.display().to_string());
    }
    left
}

#[test]
fn drop_removes_namespaces_cgroups_and_processes() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = shop_lab();
    let netns: Vec<String> = lab.netns_names().to_vec();
    let root: PathBuf = lab.cgroup_root().to_path_buf();
    assert_eq!(netns.len(), 2 + lab.pods().len());
    assert!(lab_leftovers(&netns, &root).len() == netns.len() + 1);
    // A long-running process in a pod is killed by the drop.
    let mut child = lab
        .pod("shop/frontend-7d4-x2")
        .command("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let pid = child.id();
    drop(lab);
    assert_eq!(lab_leftovers(&netns, &root), Vec::<String>::new());
    let status = child.wait().unwrap();
    assert!(!status.success(), "sleep {pid} was not killed");
}

#[test]
fn two_labs_side_by_side_do_not_interfere() {
    if !leash_lab::require_privileged() {
        return;
    }
    // Built concurrently, same addresses, separate worlds.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(shop_lab);
        let b = s.spawn(shop_lab);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.id(), b.id());
    assert_ne!(a.cgroup_root(), b.cgroup_root());
    let out = a
        .pod("shop/frontend-7d4-x2")
        .run(&["tcp", "203.0.113.10", "443", "--count", "4"])
        .unwrap();
    assert!(out.success());
    let out = b
        .pod("shop/payment-5c9-q7")
        .run(&["udp-sendto", "203.0.113.10", "4433", "--count", "2"])
        .unwrap();
    assert!(out.success());
    let sa = a
        .wait_server_stats("203.0.113.10", Proto::Tcp, 443, WAIT, |s| {
            s.connections >= 4
        })
        .unwrap();
    let sb = b
        .wait_server_stats("203.0.113.10", Proto::Udp, 4433, WAIT, |s| s.datagrams >= 2)
        .unwrap();
    assert_eq!(sa.connections, 4);
    assert_eq!(sb.datagrams, 2);
    assert_eq!(
        b.server_stats("203.0.113.10", Proto::Tcp, 443)
            .unwrap()
            .connections,
        0
    );
    assert_eq!(
        a.server_stats("203.0.113.10", Proto::Udp, 4433)
            .unwrap()
            .datagrams,
        0
    );
    let (na, rb) = (a.netns_names().to_vec(), b.cgroup_root().to_path_buf());
    drop(a);
    // b still works after a is gone.
    let out = b
        .pod("shop/frontend-7d4-x2")
        .run(&["tcp", "203.0.113.10", "443"])
        .unwrap();
    assert!(out.success());
    assert!(rb.exists());
    assert!(lab_leftovers(&na, Path::new("/nonexistent")).is_empty());
}

#[test]
fn snapshot_is_a_kubectl_style_list() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(
            PodSpec::new("shop", "frontend-7d4-x2")
                .label("app", "frontend")
                .owner_deployment("frontend")
                .uid("0b5c2a3e-1111-4222-8333-444455556666"),
        )
        .pod(
            PodSpec::new("shop", "payment-5c9-q7")
                .label("app", "payment")
                .owner_deployment("payment")
                .port(Some("http"), 8080, Proto::Tcp),
        )
        .pod(
            PodSpec::new("shop", "cache-0")
                .label("app", "cache")
                .owner(Owner::StatefulSet("cache".into())),
        )
        .pod(PodSpec::new("monitoring", "node-exporter").host_network())
        .service(
            ServiceSpec::new("shop", "payment")
                .selector("app", "payment")
                .port(ServicePort::tcp(80).target_named("http").name("http")),
        )
        .dns(DnsConfig::new())
        .snapshot_object(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "deny-all", "namespace": "shop"},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
        }))
        .build()
        .unwrap();
    let yaml = lab.snapshot_yaml().unwrap();

    // The project's own loader reads every object with its k8s-openapi type.
    let snap = leash_records::snapshot::parse_str(&yaml, Path::new("lab-snapshot.yaml"))
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert!(snap.ignored.is_empty(), "{:?}", snap.ignored);
    assert_eq!(snap.pods.len(), lab.pods().len());
    assert_eq!(snap.namespaces.len(), 3);
    assert_eq!(snap.nodes.len(), 1);
    assert_eq!(snap.services.len(), 2);
    assert_eq!(snap.endpoint_slices.len(), 4);
    assert_eq!(snap.replica_sets.len(), 3);
    assert_eq!(snap.deployments.len(), 3);
    assert_eq!(snap.stateful_sets.len(), 1);
    assert_eq!(snap.network_policies.len(), 1);
    let typed = snap
        .pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("payment-5c9-q7"))
        .unwrap();
    let payment = lab.pod("shop/payment-5c9-q7");
    assert_eq!(typed.metadata.uid.as_deref(), Some(payment.uid()));
    let ips: Vec<String> = typed
        .status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .unwrap()
        .iter()
        .map(|i| i.ip.clone())
        .collect();
    assert_eq!(
        ips,
        [payment.ipv4().to_string(), payment.ipv6().to_string()]
    );
    let v: Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "List");
    let items = v["items"].as_array().unwrap();
    let of = |kind: &str| -> Vec<&Value> { items.iter().filter(|i| i["kind"] == kind).collect() };
    for i in items {
        assert!(
            i["apiVersion"].is_string() && i["metadata"]["name"].is_string(),
            "{i}"
        );
    }
    let nss: Vec<&str> = of("Namespace")
        .iter()
        .map(|n| {
            n["metadata"]["labels"]["kubernetes.io/metadata.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(nss, ["kube-system", "monitoring", "shop"]);
    assert_eq!(of("Node").len(), 1);
    assert_eq!(of("Node")[0]["metadata"]["name"], lab.node_name());

    let pods = of("Pod");
    assert_eq!(pods.len(), lab.pods().len());
    for p in lab.pods() {
        let item = pods
            .iter()
            .find(|i| {
                i["metadata"]["name"] == p.name() && i["metadata"]["namespace"] == p.namespace()
            })
            .unwrap();
        assert_eq!(item["metadata"]["uid"], p.uid());
        assert_eq!(item["status"]["podIP"], p.ipv4().to_string());
        assert_eq!(item["status"]["podIPs"][1]["ip"], p.ipv6().to_string());
        assert_eq!(item["spec"]["nodeName"], lab.node_name());
        assert_eq!(
            item["spec"]["hostNetwork"].as_bool().unwrap_or(false),
            p.is_host_network()
        );
        let cid = item["status"]["containerStatuses"][0]["containerID"]
            .as_str()
            .unwrap();
        assert!(cid.ends_with(p.container_id()), "{cid}");
    }
    let fe = pods
        .iter()
        .find(|i| i["metadata"]["name"] == "frontend-7d4-x2")
        .unwrap();
    assert_eq!(
        fe["metadata"]["uid"],
        "0b5c2a3e-1111-4222-8333-444455556666"
    );
    assert_eq!(fe["metadata"]["labels"]["app"], "frontend");
    let owner = &fe["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ReplicaSet");
    let rs_name = owner["name"].as_str().unwrap();
    assert!(rs_name.starts_with("frontend-"));
    let rs = of("ReplicaSet");
    let rs = rs
        .iter()
        .find(|r| r["metadata"]["name"] == rs_name)
        .unwrap();
    assert_eq!(rs["metadata"]["uid"], owner["uid"]);
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(rs["metadata"]["ownerReferences"][0]["name"], "frontend");
    let dep = of("Deployment");
    let dep = dep
        .iter()
        .find(|d| d["metadata"]["name"] == "frontend")
        .unwrap();
    assert_eq!(
        dep["metadata"]["uid"],
        rs["metadata"]["ownerReferences"][0]["uid"]
    );
    assert_eq!(dep["spec"]["selector"]["matchLabels"]["app"], "frontend");
    assert_eq!(of("StatefulSet").len(), 1);

    let svc = of("Service");
    let pay = svc
        .iter()
        .find(|s| s["metadata"]["name"] == "payment")
        .unwrap();
    assert_eq!(
        pay["spec"]["clusterIP"],
        lab.service("shop/payment").cluster_ip().to_string()
    );
    assert_eq!(pay["spec"]["ports"][0]["port"], 80);
    assert_eq!(pay["spec"]["ports"][0]["targetPort"], "http");
    let dns = svc
        .iter()
        .find(|s| s["metadata"]["name"] == "kube-dns")
        .unwrap();
    assert_eq!(dns["spec"]["clusterIP"], "198.51.100.138");

    let eps = of("EndpointSlice");
    let pay_eps: Vec<&&Value> = eps
        .iter()
        .filter(|e| e["metadata"]["labels"]["kubernetes.io/service-name"] == "payment")
        .collect();
    assert_eq!(pay_eps.len(), 2);
    let v4 = pay_eps.iter().find(|e| e["addressType"] == "IPv4").unwrap();
    let payment = lab.pod("shop/payment-5c9-q7");
    assert_eq!(
        v4["endpoints"][0]["addresses"][0],
        payment.ipv4().to_string()
    );
    assert_eq!(v4["endpoints"][0]["conditions"]["ready"], true);
    assert_eq!(v4["endpoints"][0]["targetRef"]["uid"], payment.uid());
    assert_eq!(v4["ports"][0]["port"], 8080);
    assert_eq!(v4["ports"][0]["name"], "http");

    // Deterministic.
    assert_eq!(yaml, lab.snapshot_yaml().unwrap());
    // Written to a file for an agent.
    let dir = std::env::temp_dir().join(format!("leash-lab-snap-{}", lab.id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("snapshot.yaml");
    lab.write_snapshot(&f).unwrap();
    assert_eq!(std::fs::read_to_string(&f).unwrap(), yaml);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn host_network_pod_uses_the_node_namespace() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("monitoring", "agent").host_network())
        .external("203.0.113.20", [Port::tcp(80)])
        .build()
        .unwrap();
    let p = lab.pod("monitoring/agent");
    assert!(p.is_host_network());
    assert_eq!(p.netns(), lab.node_netns());
    assert_eq!(p.ipv4(), leash_lab::NODE_IPV4);
    let out = p.run(&["tcp", "203.0.113.20", "80"]).unwrap();
    assert!(out.success(), "{}", out.stdout);
    let s = lab
        .wait_server_stats("203.0.113.20", Proto::Tcp, 80, WAIT, |s| s.connections >= 1)
        .unwrap();
    assert_eq!(s.connections, 1);
}

#[test]
fn addresses_outside_the_lab_ranges_are_rejected() {
    if !leash_lab::require_privileged() {
        return;
    }
    let cases = [
        Lab::builder()
            .external("192.0.2.10", [Port::tcp(80)])
            .build(),
        Lab::builder()
            .external("203.0.113.1", [Port::tcp(80)])
            .build(),
        Lab::builder().external("fd00::10", [Port::tcp(80)]).build(),
        Lab::builder()
            .pod(PodSpec::new("a", "b").ip("198.51.100.130"))
            .build(),
        Lab::builder()
            .service(ServiceSpec::new("a", "s").cluster_ip("198.51.100.20"))
            .build(),
        Lab::builder()
            .dns(DnsConfig::new().a("x.test", ["10.0.0.1"]))
            .build(),
    ];
    for c in cases {
        match c {
            Err(Error::AddressNotAllowed { .. }) => {}
            other => panic!("expected AddressNotAllowed, got {other:?}"),
        }
    }
    match Lab::builder()
        .pod(PodSpec::new("a", "b"))
        .pod(PodSpec::new("a", "b"))
        .build()
    {
        Err(Error::Config(msg)) => assert!(msg.contains("a/b"), "{msg}"),
        other => panic!("expected Config error, got {other:?}"),
    }
}

#[test]
fn sweeper_removes_labs_of_dead_processes_only() {
    if !leash_lab::require_privileged() {
        return;
    }
    let live = Lab::builder().pod(PodSpec::new("a", "p")).build().unwrap();
    // A pid that has exited (reaped), standing for a killed test binary.
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let dead = c.id();
    c.wait().unwrap();
    let name = format!("leash-lab-{dead}-0-node");
    // Other tests' build() calls sweep concurrently and may remove it while `ip` is still
    // mounting it, so retry (bounded) until one creation succeeds.
    let created = (0..10).any(|_| {
        std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    });
    assert!(created);
    let cg = lab_mount().join(format!("leash-lab-{dead}-0"));
    std::fs::create_dir_all(cg.join("kubepods.slice")).unwrap();
    // Another test's build() may sweep it first; either way it must be gone afterwards.
    let _ = leash_lab::sweep_stale();
    assert!(!Path::new("/run/netns").join(&name).exists());
    assert!(!cg.exists());
    // The live lab is untouched.
    assert!(live.cgroup_root().exists());
    for n in live.netns_names() {
        assert!(Path::new("/run/netns").join(n).exists());
    }
}

fn lab_mount() -> PathBuf {
    leash_lab::cgroup2_mount().expect("cgroup2 mount")
}

#[test]
fn ten_thousand_connects_are_all_accepted_and_counted() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("load", "client"))
        .external("203.0.113.30", [Port::tcp(8443), Port::udp(8443)])
        .build()
        .unwrap();
    let out = lab
        .pod("load/client")
        .run(&["tcp", "203.0.113.30", "8443", "--count", "10000"])
        .unwrap();
    assert!(out.success(), "{}", out.stdout);
    assert_eq!(out.count("connected"), 10_000);
    let s = lab
        .wait_server_stats(
            "203.0.113.30",
            Proto::Tcp,
            8443,
            Duration::from_secs(10),
            |s| s.connections >= 10_000,
        )
        .unwrap();
    assert_eq!(s.connections, 10_000);
    let out = lab
        .pod("load/client")
        .run(&["udp-sendto", "203.0.113.30", "8443", "--count", "2000"])
        .unwrap();
    assert_eq!(out.count("sent"), 2_000);
    // UDP servers have an 8 MiB receive buffer, so a burst of 2000 arrives entirely.
    let s = lab
        .wait_server_stats(
            "203.0.113.30",
            Proto::Udp,
            8443,
            Duration::from_secs(2),
            |s| s.datagrams >= 2_000,
        )
        .unwrap();
    assert_eq!(s.datagrams, 2_000);
}

#[test]
fn forwarding_is_enabled_in_the_node_namespace_not_the_host() {
    if !leash_lab::require_privileged() {
        return;
    }
    let keys = [
        "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/net/ipv6/conf/all/forwarding",
        "/proc/sys/net/ipv6/conf/default/accept_dad",
    ];
    let host_before: Vec<String> = keys
        .iter()
        .map(|k| std::fs::read_to_string(k).unwrap())
        .collect();
    let lab = Lab::builder().pod(PodSpec::new("a", "p")).build().unwrap();
    let host_after: Vec<String> = keys
        .iter()
        .map(|k| std::fs::read_to_string(k).unwrap())
        .collect();
    assert_eq!(host_before, host_after);
    let node = lab.node_netns();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", node, "cat"])
        .args(keys)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n1\n0\n");
    // The host's root namespace has no lab interface or address.
    let out = std::process::Command::new("ip")
        .args(["-o", "addr"])
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&out.stdout);
    for lab_net in ["198.51.100.", "203.0.113.", "2001:db8:"] {
        assert!(!host.contains(lab_net), "{host}");
    }
}

#[test]
fn port_span_spreads_attempts_over_consecutive_ports() {
    if !leash_lab::require_privileged() {
        return;
    }
    let ports: Vec<Port> = (7000..7004)
        .flat_map(|p| [Port::tcp(p), Port::udp(p)])
        .collect();
    let lab = Lab::builder()
        .pod(PodSpec::new("a", "client"))
        .external("203.0.113.40", ports)
        .build()
        .unwrap();
    let c = lab.pod("a/client");
    for cmd in ["tcp", "udp-sendto", "udp-connected"] {
        let out = c
            .run(&[
                cmd,
                "203.0.113.40",
                "7000",
                "--count",
                "8",
                "--port-span",
                "4",
            ])
            .unwrap();
        assert!(out.success(), "{}", out.stdout);
    }
    for p in 7000..7004 {
        let t = lab
            .wait_server_stats("203.0.113.40", Proto::Tcp, p, WAIT, |s| s.connections >= 2)
            .unwrap();
        assert_eq!(t.connections, 2, "tcp {p}");
        let u = lab
            .wait_server_stats("203.0.113.40", Proto::Udp, p, WAIT, |s| s.datagrams >= 4)
            .unwrap();
        assert_eq!(u.datagrams, 4, "udp {p}");
    }
    // A span past 65535 is a usage error (exit 2), not traffic.
    let out = c
        .command(leash_lab::lab_client_path().unwrap())
        .args(["tcp", "203.0.113.40", "65535", "--port-span", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn fifty_pods_get_distinct_addresses_and_reach_each_other() {
    if !leash_lab::require_privileged() {
        return;
    }
    let mut b = Lab::builder();
    for i in 0..50 {
        b = b.pod(
            PodSpec::new("many", &format!("p{i}"))
                .label("app", "many")
                .port(Some("http"), 8080, Proto::Tcp),
        );
    }
    let lab = b.build().unwrap();
    let ips: BTreeSet<_> = lab.pods().iter().map(|p| p.ipv4()).collect();
    assert_eq!(ips.len(), 50);
    let last = lab.pod("many/p49").ipv4().to_string();
    let out = lab.pod("many/p0").run(&["tcp", &last, "8080"]).unwrap();
    assert!(out.success(), "{}", out.stdout);
}
