//! The demo shop: a small two-namespace application on a lab node, its traffic, and the probes it
//! never makes.
//!
//! - `shop/frontend` (Deployment) calls the `shop/api` Service on port 80, which maps to the
//!   named targetPort `http` = containerPort 8080 of the api pod;
//! - `shop/api` (Deployment) calls `data/postgres` (a StatefulSet pod) through its Service on
//!   5432;
//! - `shop/payment` (Deployment) looks up `api.stripe.test` (three A records, TEST-NET-3) and
//!   connects to each address on 443;
//! - `shop/worker` (Deployment) looks up the syslog collector and sends it UDP syslog on 514;
//! - everyone resolves names through the cluster DNS Service `kube-system/kube-dns`.
//!
//! [`Shop::traffic`] generates that traffic from inside the pods with `lab-client`;
//! [`Shop::probes`] writes v1 flow records of connections the shop never makes (the cloud
//! metadata address, the database straight from the frontend, a Stripe address on the wrong
//! port), which an audit against policies learned from the real traffic must deny. Probes are
//! records only: no packet is ever sent to them.
//!
//! ```no_run
//! # fn main() -> Result<(), leash_lab::shop::Error> {
//! if !leash_lab::require_privileged() {
//!     return Ok(());
//! }
//! let shop = leash_lab::shop::Shop::start()?;
//! let traffic = shop.traffic(2)?;
//! assert_eq!(traffic.lookups(leash_lab::shop::STRIPE_HOST), 2);
//! shop.probes(std::path::Path::new("/tmp/probes.jsonl"))?;
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::{
    ClientOutput, DNS_VIP_V4, DnsConfig, Lab, LabBuilder, Owner, PodSpec, Port, Proto, ServicePort,
    ServiceSpec,
};

/// The application's namespace.
pub const SHOP_NS: &str = "shop";
/// The database's namespace.
pub const DATA_NS: &str = "data";

/// The lab node's name: also the client name of the agent's certificate in the demo.
pub const NODE_NAME: &str = "lab-node";

/// The frontend pod (`shop/frontend`, a Deployment).
pub const FRONTEND: &str = "shop/frontend-5f8d7-k2x4p";
/// The api pod (`shop/api`, a Deployment), serving 8080 (`http`).
pub const API: &str = "shop/api-7c6b9-q8w2z";
/// The payment pod (`shop/payment`, a Deployment).
pub const PAYMENT: &str = "shop/payment-6d9f4-m3n7r";
/// The worker pod (`shop/worker`, a Deployment).
pub const WORKER: &str = "shop/worker-8b5c2-t6v9x";
/// The database pod (`data/postgres`, a StatefulSet), serving 5432.
pub const POSTGRES: &str = "data/postgres-0";

/// The api Service, `shop/api`.
pub const API_SERVICE: &str = "shop/api";
/// The api Service's port.
pub const API_PORT: u16 = 80;
/// The name of the api pod's container port that the Service targets.
pub const API_PORT_NAME: &str = "http";
/// The api pod's container port named [`API_PORT_NAME`].
pub const API_TARGET_PORT: u16 = 8080;
/// The database Service, `data/postgres`.
pub const DB_SERVICE: &str = "data/postgres";
/// The database port (Service port and container port).
pub const DB_PORT: u16 = 5432;

/// The external payment API's name.
pub const STRIPE_HOST: &str = "api.stripe.test";
/// The addresses [`STRIPE_HOST`] resolves to.
pub const STRIPE_ADDRS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(203, 0, 113, 10),
    Ipv4Addr::new(203, 0, 113, 11),
    Ipv4Addr::new(203, 0, 113, 12),
];
/// The address [`STRIPE_HOST`] moves to in the demo ([`Shop::move_stripe`]), in place of
/// the last of [`STRIPE_ADDRS`].
pub const STRIPE_MOVED_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
/// The port payment connects to on [`STRIPE_ADDRS`].
pub const STRIPE_PORT: u16 = 443;
/// The external syslog collector's name.
pub const COLLECTOR_HOST: &str = "syslog.collector.test";
/// The collector's address.
pub const COLLECTOR_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
/// The syslog port (UDP).
pub const SYSLOG_PORT: u16 = 514;
/// The fraud-check API's name: the call payment makes only in the demo's lockdown step
/// ([`Shop::new_call`]), after the proposal was applied.
pub const FRAUD_HOST: &str = "fraud.check.test";
/// The address [`FRAUD_HOST`] resolves to.
pub const FRAUD_ADDR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);
/// The port payment connects to on [`FRAUD_ADDR`].
pub const FRAUD_PORT: u16 = 8443;
/// The cloud metadata address, used only in probe records (never as a destination of traffic).
pub const METADATA_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The cluster DNS name of a Service `namespace/name`.
pub fn service_dns_name(key: &str) -> String {
    let (ns, name) = key.split_once('/').unwrap_or(("default", key));
    format!("{name}.{ns}.svc.cluster.local")
}

/// What can go wrong with the shop.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lab itself failed (building, running a client, ...).
    #[error(transparent)]
    Lab(#[from] crate::Error),
    /// A traffic step did not do what the shop needs (refused, no answer, wrong answers).
    #[error("traffic from {pod}: `lab-client {args}`: {problem}; output: {output}")]
    Traffic {
        /// The pod that ran the step.
        pod: String,
        /// The `lab-client` arguments.
        args: String,
        /// What was wrong.
        problem: String,
        /// The client's JSON result (or stderr).
        output: String,
    },
    /// Writing the probe records failed.
    #[error("writing probes to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The shop's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The workloads of the shop: (pod key, controller kind, controller name).
pub const WORKLOADS: [(&str, &str, &str); 5] = [
    (FRONTEND, "Deployment", "frontend"),
    (API, "Deployment", "api"),
    (PAYMENT, "Deployment", "payment"),
    (WORKER, "Deployment", "worker"),
    (POSTGRES, "StatefulSet", "postgres"),
];

fn pod(key: &str, app: &str) -> PodSpec {
    let (ns, name) = key.split_once('/').unwrap_or((SHOP_NS, key));
    PodSpec::new(ns, name)
        .label("app", app)
        .label("app.kubernetes.io/part-of", "shop")
        .container(app, &format!("registry.lab.test/shop/{app}:1.4.2"))
}

/// The shop as a lab description; add to it before building if a test needs more.
pub fn shop_spec() -> LabBuilder {
    let stripe: Vec<String> = STRIPE_ADDRS.iter().map(ToString::to_string).collect();
    Lab::builder()
        .node_name(NODE_NAME)
        .namespace(SHOP_NS)
        .namespace(DATA_NS)
        .pod(pod(FRONTEND, "frontend").owner_deployment("frontend"))
        .pod(pod(API, "api").owner_deployment("api").port(
            Some(API_PORT_NAME),
            API_TARGET_PORT,
            Proto::Tcp,
        ))
        .pod(pod(PAYMENT, "payment").owner_deployment("payment"))
        .pod(pod(WORKER, "worker").owner_deployment("worker"))
        .pod(
            pod(POSTGRES, "postgres")
                .owner(Owner::StatefulSet("postgres".into()))
                .port(Some("postgres"), DB_PORT, Proto::Tcp),
        )
        .service(
            ServiceSpec::new(SHOP_NS, "api")
                .selector("app", "api")
                .label("app", "api")
                .port(
                    ServicePort::tcp(API_PORT)
                        .target_named(API_PORT_NAME)
                        .name("http"),
                ),
        )
        .service(
            ServiceSpec::new(DATA_NS, "postgres")
                .selector("app", "postgres")
                .label("app", "postgres")
                .port(ServicePort::tcp(DB_PORT).name("postgres")),
        )
        .external(&stripe[0], [Port::tcp(STRIPE_PORT)])
        .external(&stripe[1], [Port::tcp(STRIPE_PORT)])
        .external(&stripe[2], [Port::tcp(STRIPE_PORT)])
        .external(&STRIPE_MOVED_ADDR.to_string(), [Port::tcp(STRIPE_PORT)])
        .external(&COLLECTOR_ADDR.to_string(), [Port::udp(SYSLOG_PORT)])
        .external(&FRAUD_ADDR.to_string(), [Port::tcp(FRAUD_PORT)])
        .dns(
            DnsConfig::new()
                .a(STRIPE_HOST, stripe.iter().map(String::as_str))
                .a(COLLECTOR_HOST, [COLLECTOR_ADDR.to_string().as_str()])
                .a(FRAUD_HOST, [FRAUD_ADDR.to_string().as_str()]),
        )
}

/// One `lab-client` run of [`Shop::traffic`].
#[derive(Clone, Debug)]
pub struct Step {
    /// The pod it ran in, `namespace/name`.
    pub pod: String,
    /// The `lab-client` arguments.
    pub args: Vec<String>,
    /// What the client reported.
    pub output: ClientOutput,
}

impl Step {
    /// The subcommand (`dns`, `tcp`, `udp-sendto`, …).
    pub fn cmd(&self) -> &str {
        self.args.first().map_or("", String::as_str)
    }
}

/// Everything [`Shop::traffic`] did, in order.
#[derive(Clone, Debug, Default)]
pub struct Traffic {
    /// The client runs, in order.
    pub steps: Vec<Step>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
}

impl Traffic {
    /// TCP connections established from `pod` to `dst`:`port` (as dialled, before DNAT).
    pub fn connections(&self, pod: &str, dst: IpAddr, port: u16) -> u64 {
        self.sum(pod, "tcp", dst, port, "connected")
    }

    /// UDP datagrams sent from `pod` to `dst`:`port`.
    pub fn datagrams(&self, pod: &str, dst: IpAddr, port: u16) -> u64 {
        self.sum(pod, "udp-sendto", dst, port, "sent")
    }

    /// DNS lookups of `name` answered with NOERROR, from any pod.
    pub fn lookups(&self, name: &str) -> usize {
        let fq = format!("{}.", name.trim_end_matches('.'));
        self.steps
            .iter()
            .filter(|s| s.cmd() == "dns" && s.output.json["query"] == fq.as_str())
            .filter(|s| s.output.json["rcode"] == "NOERROR")
            .count()
    }

    /// Total connections, datagrams and lookups, for a summary line.
    pub fn totals(&self) -> (u64, u64, usize) {
        let mut t = (0, 0, 0);
        for s in &self.steps {
            match s.cmd() {
                "tcp" => t.0 += s.output.count("connected"),
                "udp-sendto" | "udp-connected" => t.1 += s.output.count("sent"),
                "dns" => t.2 += 1,
                _ => {}
            }
        }
        t
    }

    fn sum(&self, pod: &str, cmd: &str, dst: IpAddr, port: u16, field: &str) -> u64 {
        self.steps
            .iter()
            .filter(|s| s.pod == pod && s.cmd() == cmd)
            .filter(|s| s.output.json["dst"] == dst.to_string().as_str())
            .filter(|s| s.output.json["port"] == port)
            .map(|s| s.output.count(field))
            .sum()
    }
}

/// A connection the shop never makes, written as a flow record by [`Shop::probes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The source pod, `namespace/name`.
    pub pod: String,
    /// TCP or UDP.
    pub proto: Proto,
    /// The destination as dialled.
    pub dst: IpAddr,
    /// The destination port.
    pub port: u16,
    /// Why policies learned from the shop's traffic must deny it.
    pub why: &'static str,
}

/// A running shop. Dropping it tears the lab down.
#[derive(Debug)]
pub struct Shop {
    lab: Lab,
}

impl Shop {
    /// Builds the lab of [`shop_spec`].
    pub fn start() -> Result<Self> {
        Ok(Self {
            lab: shop_spec().build()?,
        })
    }

    /// The underlying lab.
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The api Service's ClusterIP.
    pub fn api_vip(&self) -> Ipv4Addr {
        self.lab.service(API_SERVICE).cluster_ip()
    }

    /// The database Service's ClusterIP.
    pub fn db_vip(&self) -> Ipv4Addr {
        self.lab.service(DB_SERVICE).cluster_ip()
    }

    /// Runs `rounds` rounds of the shop's traffic (1 to 20), each lookup through the cluster DNS
    /// Service and each connection to what the lookup answered:
    /// - frontend: `api.shop.svc.cluster.local`, then 2 TCP connections to it on 80 (echoed);
    /// - api: `postgres.data.svc.cluster.local`, then 2 TCP connections on 5432 (echoed);
    /// - payment: `api.stripe.test` (3 addresses), then one TCP connection to each on 443;
    /// - worker: the collector, then 3 UDP syslog datagrams to it on 514.
    ///
    /// Fails on the first step that does not fully succeed, naming it.
    pub fn traffic(&self, rounds: u32) -> Result<Traffic> {
        let t0 = Instant::now();
        let mut traffic = Traffic::default();
        let dns = DNS_VIP_V4.to_string();
        for round in 0..rounds.clamp(1, 20) {
            for (pod, name, port, kind) in [
                (FRONTEND, service_dns_name(API_SERVICE), API_PORT, "tcp"),
                (API, service_dns_name(DB_SERVICE), DB_PORT, "tcp"),
                (PAYMENT, STRIPE_HOST.to_owned(), STRIPE_PORT, "tcp"),
                (WORKER, COLLECTOR_HOST.to_owned(), SYSLOG_PORT, "udp-sendto"),
            ] {
                let lookup = self.step(pod, &["dns", &dns, &name, "A"])?;
                let addrs = answers(&lookup);
                if addrs.is_empty() {
                    return Err(traffic_error(&lookup, "no A record in the answer"));
                }
                traffic.steps.push(lookup);
                let payload = format!("<14>1 - worker shop - - - round {round} done");
                let extra: [&str; 4] = match pod {
                    WORKER => ["--count", "3", "--send", &payload],
                    PAYMENT => ["--count", "1", "--send", "POST /v1/charges"],
                    API => ["--count", "2", "--send", "SELECT 1"],
                    _ => ["--count", "2", "--send", "GET / HTTP/1.1"],
                };
                for addr in addrs {
                    let (addr, port) = (addr.to_string(), port.to_string());
                    let mut args = vec![kind, addr.as_str(), port.as_str()];
                    args.extend(extra);
                    traffic.steps.push(self.step(pod, &args)?);
                }
            }
        }
        traffic.elapsed = t0.elapsed();
        Ok(traffic)
    }

    /// The call the shop never made before: payment looks up [`FRAUD_HOST`] and opens one TCP
    /// connection to it on [`FRAUD_PORT`]. Nothing enforces policies in the lab, so it
    /// succeeds; only leash's evaluation says the applied policies deny it.
    pub fn new_call(&self) -> Result<Traffic> {
        let t0 = Instant::now();
        let mut traffic = Traffic::default();
        let dns = DNS_VIP_V4.to_string();
        let lookup = self.step(PAYMENT, &["dns", &dns, FRAUD_HOST, "A"])?;
        let addrs = answers(&lookup);
        if addrs != [IpAddr::V4(FRAUD_ADDR)] {
            return Err(traffic_error(
                &lookup,
                "the answer is not the fraud-check address",
            ));
        }
        traffic.steps.push(lookup);
        let (addr, port) = (FRAUD_ADDR.to_string(), FRAUD_PORT.to_string());
        traffic.steps.push(self.step(
            PAYMENT,
            &[
                "tcp",
                &addr,
                &port,
                "--count",
                "1",
                "--send",
                "POST /v1/score",
            ],
        )?);
        traffic.elapsed = t0.elapsed();
        Ok(traffic)
    }

    /// [`STRIPE_HOST`] moves: from now on it answers the first two of [`STRIPE_ADDRS`] and
    /// [`STRIPE_MOVED_ADDR`] (in place of the third), as a provider's name does.
    pub fn move_stripe(&self) -> Result<()> {
        let ips = [
            IpAddr::V4(STRIPE_ADDRS[0]),
            IpAddr::V4(STRIPE_ADDRS[1]),
            IpAddr::V4(STRIPE_MOVED_ADDR),
        ];
        Ok(self.lab.set_dns_addresses(STRIPE_HOST, &ips)?)
    }

    /// payment looks up [`STRIPE_HOST`] and returns the lookup and its addresses, without
    /// connecting (the DNS answer alone, as leash's drift check sees it first).
    pub fn stripe_lookup(&self) -> Result<(Step, Vec<IpAddr>)> {
        let lookup = self.step(PAYMENT, &["dns", &DNS_VIP_V4.to_string(), STRIPE_HOST, "A"])?;
        let addrs = answers(&lookup);
        Ok((lookup, addrs))
    }

    /// payment opens one TCP connection to `addr` on [`STRIPE_PORT`].
    pub fn stripe_call(&self, addr: IpAddr) -> Result<Step> {
        let (addr, port) = (addr.to_string(), STRIPE_PORT.to_string());
        self.step(
            PAYMENT,
            &[
                "tcp",
                &addr,
                &port,
                "--count",
                "1",
                "--send",
                "POST /v1/charges",
            ],
        )
    }

    /// Runs one client step and checks it fully succeeded.
    fn step(&self, pod: &str, args: &[&str]) -> Result<Step> {
        let output = self.lab.try_pod(pod)?.run(args)?;
        let step = Step {
            pod: pod.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            output,
        };
        if !step.output.success() {
            return Err(traffic_error(&step, "the client reported failures"));
        }
        if step.cmd() == "dns" && step.output.json["rcode"] != "NOERROR" {
            return Err(traffic_error(&step, "the lookup did not answer NOERROR"));
        }
        Ok(step)
    }

    /// The probes [`Shop::probes`] writes.
    pub fn probe_list(&self) -> Vec<Probe> {
        let postgres = self.lab.pod(POSTGRES).ipv4();
        vec![
            Probe {
                pod: FRONTEND.into(),
                proto: Proto::Tcp,
                dst: IpAddr::V4(METADATA_ADDR),
                port: 80,
                why: "the cloud metadata service: no workload of the shop talks to it",
            },
            Probe {
                pod: FRONTEND.into(),
                proto: Proto::Tcp,
                dst: IpAddr::V4(postgres),
                port: DB_PORT,
                why: "the database pod straight from the frontend: only api talks to it",
            },
            Probe {
                pod: FRONTEND.into(),
                proto: Proto::Tcp,
                dst: IpAddr::V4(self.db_vip()),
                port: DB_PORT,
                why: "the database Service from the frontend: only api talks to it",
            },
            Probe {
                pod: PAYMENT.into(),
                proto: Proto::Tcp,
                dst: IpAddr::V4(STRIPE_ADDRS[0]),
                port: 80,
                why: "the right host on a wrong port: payment only uses 443",
            },
        ]
    }

    /// Writes [`Shop::probe_list`] as v1 flow records (one per line, attributed to the pods as
    /// the agent would, `count` 1, one failed attempt) to `path`, and returns the probes.
    /// Nothing is sent anywhere.
    pub fn probes(&self, path: &Path) -> Result<Vec<Probe>> {
        let probes = self.probe_list();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut out = String::new();
        for p in &probes {
            let pod = self.lab.try_pod(&p.pod)?;
            let record = json!({
                "v": 1,
                "kind": "flow",
                "node": self.lab.node_name(),
                "pod": {"uid": pod.uid(), "namespace": pod.namespace(), "name": pod.name()},
                "cgroup": pod.cgroup_rel(),
                "protocol": p.proto.as_str(),
                "dst": p.dst.to_string(),
                "dst_port": p.port,
                "count": 1,
                "first_seen": now,
                "last_seen": now,
                "names": [],
                "outcome": {"established": 0, "failed": 1},
            });
            let _ = writeln!(out, "{record}");
        }
        std::fs::write(path, out).map_err(|source| Error::Write {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(probes)
    }
}

/// The A/AAAA addresses of a `lab-client dns` result.
fn answers(step: &Step) -> Vec<IpAddr> {
    step.output.json["answers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["type"] == "A" || r["type"] == "AAAA")
                .filter_map(|r| r["data"].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn traffic_error(step: &Step, problem: &str) -> Error {
    let output = if step.output.json == Value::Null {
        step.output.stderr.clone()
    } else {
        step.output.json.to_string()
    };
    Error::Traffic {
        pod: step.pod.clone(),
        args: step.args.join(" "),
        problem: problem.to_owned(),
        output,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_dns_names() {
        assert_eq!(service_dns_name(API_SERVICE), "api.shop.svc.cluster.local");
        assert_eq!(
            service_dns_name(DB_SERVICE),
            "postgres.data.svc.cluster.local"
        );
    }

    /// Every address the shop uses as a destination lies in the lab's ranges; only the probe
    /// record for the metadata service does not, and it is never dialled.
    #[test]
    fn shop_addresses_are_lab_addresses() {
        for ip in STRIPE_ADDRS.iter().chain([&COLLECTOR_ADDR]) {
            assert!(crate::is_lab_address(IpAddr::V4(*ip)), "{ip}");
        }
        assert!(!crate::is_lab_address(IpAddr::V4(METADATA_ADDR)));
    }

    fn step(pod: &str, args: &[&str], json: Value) -> Step {
        use std::os::unix::process::ExitStatusExt as _;
        Step {
            pod: pod.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            output: ClientOutput {
                status: std::process::ExitStatus::from_raw(0),
                json,
                stdout: String::new(),
                stderr: String::new(),
            },
        }
    }

    #[test]
    fn traffic_is_accounted_per_pod_destination_and_kind() {
        let vip = "198.51.100.129";
        let t = Traffic {
            steps: vec![
                step(
                    FRONTEND,
                    &["dns"],
                    json!({"query": "api.stripe.test.", "rcode": "NOERROR"}),
                ),
                step(
                    PAYMENT,
                    &["dns"],
                    json!({"query": "api.stripe.test.", "rcode": "NXDOMAIN"}),
                ),
                step(
                    FRONTEND,
                    &["tcp"],
                    json!({"dst": vip, "port": 80, "connected": 2}),
                ),
                step(
                    FRONTEND,
                    &["tcp"],
                    json!({"dst": vip, "port": 80, "connected": 3}),
                ),
                step(
                    API,
                    &["tcp"],
                    json!({"dst": vip, "port": 80, "connected": 7}),
                ),
                step(
                    WORKER,
                    &["udp-sendto"],
                    json!({"dst": "203.0.113.50", "port": 514, "sent": 3}),
                ),
            ],
            elapsed: Duration::ZERO,
        };
        let vip: IpAddr = vip.parse().unwrap();
        assert_eq!(t.connections(FRONTEND, vip, 80), 5);
        assert_eq!(t.connections(FRONTEND, vip, 81), 0);
        assert_eq!(t.connections(API, vip, 80), 7);
        assert_eq!(t.datagrams(WORKER, IpAddr::V4(COLLECTOR_ADDR), 514), 3);
        assert_eq!(t.lookups(STRIPE_HOST), 1);
        assert_eq!(t.totals(), (12, 3, 2));
    }

    #[test]
    fn dns_answers_are_read_from_the_client_result() {
        let s = step(
            PAYMENT,
            &["dns"],
            json!({"answers": [
                {"type": "CNAME", "data": "edge.stripe.test."},
                {"type": "A", "data": "203.0.113.10"},
                {"type": "AAAA", "data": "2001:db8:2::10"},
                {"type": "A", "data": "not an address"},
            ]}),
        );
        let want: Vec<IpAddr> = vec![
            "203.0.113.10".parse().unwrap(),
            "2001:db8:2::10".parse().unwrap(),
        ];
        assert_eq!(answers(&s), want);
        assert!(answers(&step(PAYMENT, &["dns"], json!({"error": "timeout"}))).is_empty());
    }

    #[test]
    fn workloads_are_the_shop_pods() {
        let keys: Vec<&str> = WORKLOADS.iter().map(|w| w.0).collect();
        assert_eq!(keys, [FRONTEND, API, PAYMENT, WORKER, POSTGRES]);
        assert!(
            WORKLOADS
                .iter()
                .all(|(k, _, n)| k.split('/').nth(1).is_some_and(|p| p.starts_with(n)))
        );
    }
}
