//! How long building (and dropping) a lab takes: the lab should start in well under a second.
//! Needs root; prints a reason and measures nothing otherwise.

use criterion::{Criterion, criterion_group, criterion_main};
use leash_lab::{DnsConfig, Lab, PodSpec, Port, Proto, ServicePort, ServiceSpec};

fn shop() -> Lab {
    Lab::builder()
        .pod(PodSpec::new("shop", "frontend").label("app", "frontend"))
        .pod(
            PodSpec::new("shop", "payment")
                .label("app", "payment")
                .port(Some("http"), 8080, Proto::Tcp),
        )
        .service(
            ServiceSpec::new("shop", "payment")
                .selector("app", "payment")
                .port(ServicePort::tcp(80).target(8080)),
        )
        .external("203.0.113.10", [Port::tcp(443), Port::udp(4433)])
        .dns(DnsConfig::new().with_stripe_example())
        .build()
        .expect("build lab")
}

fn bench(c: &mut Criterion) {
    if let Err(e) = leash_lab::check_privileged() {
        eprintln!("SKIPPED lab_startup: {e}");
        return;
    }
    let mut g = c.benchmark_group("lab");
    g.sample_size(10);
    g.bench_function("build_and_drop_shop_lab", |b| b.iter(|| drop(shop())));
    let mut many = Lab::builder();
    for i in 0..20 {
        many = many.pod(PodSpec::new("many", &format!("p{i}")).port(None, 8080, Proto::Tcp));
    }
    g.bench_function("build_and_drop_20_pods", |b| {
        b.iter(|| drop(many.clone().build().expect("build lab")))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
