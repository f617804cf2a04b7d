//! Privileged tests of the lab itself (no eBPF): real traffic between real namespaces.

use std::time::Duration;

use leash_lab::{DnsConfig, Lab, PodSpec, Port, Proto, ServicePort, ServiceSpec};

fn shop_lab() -> Lab {
    Lab::builder()
        .pod(
            PodSpec::new("shop", "frontend")
                .label("app", "frontend")
                .owner_deployment("frontend"),
        )
        .pod(
            PodSpec::new("shop", "payment")
                .label("app", "payment")
                .owner_deployment("payment")
                .port(Some("http"), 8080, Proto::Tcp)
                .port(Some("stats"), 8125, Proto::Udp),
        )
        .service(
            ServiceSpec::new("shop", "payment")
                .selector("app", "payment")
                .port(ServicePort::tcp(80).target(8080).name("http"))
                .port(ServicePort::udp(8125).target_named("stats").name("stats")),
        )
        .external("203.0.113.10", [Port::tcp(443), Port::udp(4433)])
        .external("2001:db8:2::10", [Port::tcp(443), Port::udp(4433)])
        .dns(DnsConfig::new().with_stripe_example())
        .build()
        .expect("build lab")
}

#[test]
fn smoke() {
    if !leash_lab::require_privileged() {
        return;
    }
    let t = std::time::Instant::now();
    let lab = shop_lab();
    eprintln!("built in {:?}", t.elapsed());
    let out = lab
        .pod("shop/frontend")
        .run(&["tcp", "203.0.113.10", "443", "--count", "3", "--send", "hi"])
        .unwrap();
    eprintln!("{}", out.json);
    let s = lab
        .wait_server_stats(
            "203.0.113.10",
            Proto::Tcp,
            443,
            Duration::from_secs(2),
            |s| s.connections >= 3,
        )
        .unwrap();
    eprintln!("{s:?}");
    eprintln!("{}", lab.snapshot_yaml().unwrap());
    let t = std::time::Instant::now();
    drop(lab);
    eprintln!("dropped in {:?}", t.elapsed());
}
