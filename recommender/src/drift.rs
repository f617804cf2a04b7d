//! Drift: a name moved, and the policy does not follow.
//!
//! A DNS answer gives workload W the address A for name N. When W's policies allow N's
//! *other* addresses (W's history of N) on W's ports but not A, the connection that follows
//! the answer will be denied: that is drift, decided from the answer alone, before the
//! connection. W's ports are the (protocol, port) pairs W used towards N (flows whose names
//! hold N, or whose destination is one of N's addresses); when W never connected yet, they
//! are the ports the policies selecting W name in their egress rules and allow for N's other
//! addresses. A is not drift when the policies allow it, when they allow none of N's other
//! addresses either (an ordinary "would deny"), or when no policy selects W for egress
//! (everything is allowed then).
//!
//! Pure, over [`crate::eval`]: [`Checker`] caches each (source, address, protocol, port)
//! verdict, so a repeated question is a hash lookup; [`Tracker`] is what `leash serve` keeps
//! per workload (names, their addresses, the ports used) so that an answer repeating a known
//! address costs one lookup; [`from_answers`] is `leash audit`'s drift over its input.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use leash_records::{PodRef, Protocol};
use rustc_hash::FxHashMap as HashMap;
use serde::Serialize;

use crate::eval::{
    ClusterView, Flow, PodView, PolicyId, PolicySet, PortMatch, Verdict, evaluate,
    evaluate_with_names,
};
use crate::observations::History;
use crate::store::{KIND_POD, WorkloadRef};

/// A (protocol, port) pair.
pub type Port = (Protocol, u16);

/// Verdicts cached before the cache starts over (a bound on memory, far above a cluster's
/// working set of (pod, address, port)).
const MAX_CACHED: usize = 1 << 20;

/// One drift: a DNS answer that moved a name to an address the policies deny on the ports
/// they allow for the name's other addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Drift {
    /// When the answer was seen (from a store: when the address was first seen).
    pub time: DateTime<Utc>,
    /// The pod that got the answer (for a store, the pod standing in for its workload).
    pub source: PolicyId,
    /// The pod's workload, `Kind/name` ([`crate::json::workload`]).
    pub workload: String,
    /// The name, normalized.
    pub name: String,
    /// The new address.
    pub address: IpAddr,
    /// The ports the policies allow for the name's other addresses but not for this one,
    /// sorted.
    pub ports: Vec<Port>,
    /// The policies that isolate the pod without allowing the address, sorted.
    pub policies: Vec<PolicyId>,
}

/// The JSON line of a drift (`leash audit --format json`); field order is the contract.
#[derive(Serialize)]
struct DriftJson<'a> {
    kind: &'static str,
    source: SourceJson<'a>,
    name: &'a str,
    address: String,
    ports: Vec<PortJson>,
    time: String,
    policies: Vec<String>,
}

#[derive(Serialize)]
struct SourceJson<'a> {
    namespace: &'a str,
    pod: &'a str,
    workload: &'a str,
}

#[derive(Serialize)]
struct PortJson {
    protocol: &'static str,
    port: u16,
}

impl Drift {
    /// The JSON line, without its line break:
    /// `{"kind":"dns-drift","source":{"namespace":…,"pod":…,"workload":"Kind/name"},"name":…,
    /// "address":…,"ports":[{"protocol":"TCP","port":443}],"time":RFC 3339,"policies":[…]}`.
    pub fn to_json(&self) -> String {
        let line = DriftJson {
            kind: "dns-drift",
            source: SourceJson {
                namespace: &self.source.namespace,
                pod: &self.source.name,
                workload: &self.workload,
            },
            name: &self.name,
            address: self.address.to_string(),
            ports: self
                .ports
                .iter()
                .map(|&(protocol, port)| PortJson {
                    protocol: protocol.as_str(),
                    port,
                })
                .collect(),
            time: leash_records::time::rfc3339(self.time),
            policies: self.policies.iter().map(ToString::to_string).collect(),
        };
        // Strings and numbers only: serialization cannot fail.
        serde_json::to_string(&line).unwrap_or_default()
    }

    /// The ports as text: `TCP/443, UDP/53`.
    pub fn ports_text(&self) -> String {
        self.ports
            .iter()
            .map(|(p, n)| format!("{p}/{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The drift decision with cached verdicts. A verdict depends on the cluster and the
/// policies: [`Checker::clear`] when either changes.
#[derive(Debug, Default)]
pub struct Checker {
    /// (source key, address, protocol, port) → allowed.
    verdicts: HashMap<(usize, IpAddr, Protocol, u16), bool>,
    /// Source key → the numbered ports of the egress rules of the policies selecting it.
    policy_ports: HashMap<usize, Vec<Port>>,
}

impl Checker {
    /// An empty checker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every cached verdict (the cluster or the policies changed).
    pub fn clear(&mut self) {
        self.verdicts.clear();
        self.policy_ports.clear();
    }

    /// The number of cached verdicts.
    pub fn cached(&self) -> usize {
        self.verdicts.len()
    }

    /// Whether `source` may connect to `address` on `port`, cached under `key` (which must
    /// name `source` alone, e.g. its `PodId`).
    fn allowed<V: ClusterView + ?Sized>(
        &mut self,
        view: &V,
        policies: &PolicySet,
        source: &V::Pod,
        key: usize,
        address: IpAddr,
        (protocol, port): Port,
    ) -> bool {
        let k = (key, address, protocol, port);
        if let Some(&v) = self.verdicts.get(&k) {
            return v;
        }
        if self.verdicts.len() >= MAX_CACHED {
            self.verdicts.clear();
        }
        let flow = Flow {
            protocol,
            dst: address,
            dst_port: port,
        };
        let v = evaluate(view, policies, source, &flow).verdict == Verdict::Allow;
        self.verdicts.insert(k, v);
        v
    }

    /// The numbered ports the egress rules of the policies selecting `source` name (the
    /// first port of a range), sorted: the candidates when the workload never connected.
    fn policy_ports<V: ClusterView + ?Sized>(
        &mut self,
        policies: &PolicySet,
        source: &V::Pod,
        key: usize,
    ) -> &[Port] {
        self.policy_ports.entry(key).or_insert_with(|| {
            let mut out = BTreeSet::new();
            for p in policies.iter() {
                if p.id.namespace != source.namespace() || !p.pod_selector.matches(source.labels())
                {
                    continue;
                }
                for rule in p.egress.iter().flatten() {
                    for port in &rule.ports {
                        if let PortMatch::Range(first, _) = port.port {
                            out.insert((port.protocol, first));
                        }
                    }
                }
            }
            out.into_iter().collect()
        })
    }

    /// The drift ports of an answer giving `source` (cached as `key`) the address `address`
    /// for a name whose other known addresses are `others`, the workload having used `used`
    /// towards the name (empty: it never connected): the ports on which some other address
    /// is allowed and `address` is not. Empty when the answer is no drift.
    #[expect(
        clippy::too_many_arguments,
        reason = "the one decision, over plain values"
    )]
    pub fn drift_ports<V: ClusterView + ?Sized>(
        &mut self,
        view: &V,
        policies: &PolicySet,
        source: &V::Pod,
        key: usize,
        address: IpAddr,
        others: &[IpAddr],
        used: &[Port],
    ) -> Vec<Port> {
        if others.is_empty() {
            return Vec::new();
        }
        let candidates: Vec<Port> = if used.is_empty() {
            self.policy_ports::<V>(policies, source, key).to_vec()
        } else {
            used.to_vec()
        };
        let mut out = Vec::new();
        for port in candidates {
            if self.allowed(view, policies, source, key, address, port) {
                continue;
            }
            let other_allowed = others
                .iter()
                .any(|&b| b != address && self.allowed(view, policies, source, key, b, port));
            if other_allowed {
                out.push(port);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The drift of an answer (see [`Checker::drift_ports`]), with its source, workload and
    /// deciding policies; `None` when it is no drift.
    #[expect(
        clippy::too_many_arguments,
        reason = "the one decision, over plain values"
    )]
    pub fn check<V: ClusterView + ?Sized>(
        &mut self,
        view: &V,
        policies: &PolicySet,
        source: &V::Pod,
        key: usize,
        name: &str,
        address: IpAddr,
        time: DateTime<Utc>,
        others: &[IpAddr],
        used: &[Port],
    ) -> Option<Drift> {
        let mut ports = self.drift_ports(view, policies, source, key, address, others, used);
        if policies.cluster_policies().has_domain_names() {
            // A ClusterNetworkPolicy's domainNames allow the name's new address by the name.
            let names = BTreeSet::from([name.to_owned()]);
            ports.retain(|&(protocol, port)| {
                let flow = Flow {
                    protocol,
                    dst: address,
                    dst_port: port,
                };
                evaluate_with_names(view, policies, source, &flow, &names).verdict != Verdict::Allow
            });
        }
        if ports.is_empty() {
            return None;
        }
        // Rare: the deciding policies are evaluated again, uncached.
        let mut deciding = BTreeSet::new();
        for &(protocol, port) in &ports {
            let flow = Flow {
                protocol,
                dst: address,
                dst_port: port,
            };
            deciding.extend(evaluate(view, policies, source, &flow).policies());
        }
        Some(Drift {
            time,
            source: PolicyId {
                namespace: source.namespace().to_owned(),
                name: source.name().to_owned(),
            },
            workload: workload_of(view, source).to_string(),
            name: name.to_owned(),
            address,
            ports,
            policies: deciding.into_iter().collect(),
        })
    }
}

/// A pod's workload as a store reference: its owner workload, or the pod itself.
pub fn workload_ref<V: ClusterView + ?Sized>(view: &V, pod: &V::Pod) -> WorkloadRef {
    let (kind, name) = view.pod_workload(pod).unwrap_or((KIND_POD, pod.name()));
    WorkloadRef {
        namespace: pod.namespace().to_owned(),
        kind: kind.to_owned(),
        name: name.to_owned(),
    }
}

/// `Kind/name` of a pod's workload.
fn workload_of<V: ClusterView + ?Sized>(view: &V, pod: &V::Pod) -> String {
    view.pod_workload(pod).map_or_else(
        || crate::json::bare_pod(pod.name()),
        |(kind, name)| crate::json::workload(kind, name),
    )
}

/// One DNS answer of `leash audit`'s input: the pod that asked, the (normalized) query name
/// and the addresses it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The pod that asked.
    pub pod: PodRef,
    /// The query name, normalized.
    pub name: String,
    /// The addresses, with when they were seen.
    pub addresses: History,
}

/// One connection of `leash audit`'s input, for the ports a workload used towards a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The pod that connected.
    pub pod: PodRef,
    /// What it dialed.
    pub flow: Flow,
    /// The names the destination was reached by (empty for record files: their names come
    /// from the answers, matched by address).
    pub names: BTreeSet<String>,
}

/// `leash audit`'s drift: for every (workload, name) of `answers`, every address the policies
/// deny on the workload's ports while they allow another address of the name there, at the
/// time it was first seen, from the pod that first got it. Answers of pods the view does not
/// know are skipped. Sorted by time, source, name and address.
pub fn from_answers<V: ClusterView + ?Sized>(
    view: &V,
    policies: &PolicySet,
    answers: &[Answer],
    connections: &[Connection],
) -> Vec<Drift> {
    // Pods are interned: the index is the checker's key.
    let mut pods: Vec<&V::Pod> = Vec::new();
    let mut pod_index: HashMap<(&str, &str), usize> = HashMap::default();
    // (workload, name) → address → (first seen, the pod that first got it).
    type Seen = BTreeMap<IpAddr, (DateTime<Utc>, usize)>;
    let mut names: BTreeMap<(WorkloadRef, String), Seen> = BTreeMap::new();
    for a in answers {
        let Some(pod) = view.pod_by_ref(&a.pod) else {
            continue;
        };
        let i = *pod_index
            .entry((pod.namespace(), pod.name()))
            .or_insert_with(|| {
                pods.push(pod);
                pods.len() - 1
            });
        let seen = names
            .entry((workload_ref(view, pod), a.name.clone()))
            .or_default();
        for (&ip, s) in &a.addresses {
            let ip = ip.to_canonical();
            match seen.get_mut(&ip) {
                Some(have) if have.0 <= s.first_seen => {}
                Some(have) => *have = (s.first_seen, i),
                None => {
                    seen.insert(ip, (s.first_seen, i));
                }
            }
        }
    }
    // Workload → its connections (destination, port, names).
    let mut used: HashMap<WorkloadRef, Vec<(&Flow, &BTreeSet<String>)>> = HashMap::default();
    for c in connections {
        if let Some(pod) = view.pod_by_ref(&c.pod) {
            used.entry(workload_ref(view, pod))
                .or_default()
                .push((&c.flow, &c.names));
        }
    }
    let mut checker = Checker::new();
    let mut out = Vec::new();
    for ((workload, name), seen) in &names {
        let addresses: Vec<IpAddr> = seen.keys().copied().collect();
        let ports: Vec<Port> = used
            .get(workload)
            .map(|flows| {
                flows
                    .iter()
                    .filter(|(f, n)| n.contains(name) || seen.contains_key(&f.dst.to_canonical()))
                    .map(|(f, _)| (f.protocol, f.dst_port))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default();
        for (&address, &(time, i)) in seen {
            let Some(&pod) = pods.get(i) else { continue };
            if let Some(d) = checker.check(
                view, policies, pod, i, name, address, time, &addresses, &ports,
            ) {
                out.push(d);
            }
        }
    }
    out.sort();
    out
}

/// What `leash serve` remembers of one workload.
#[derive(Debug, Default)]
struct Known {
    /// Name → its addresses, each with whether an answer with it was checked.
    names: HashMap<String, HashMap<IpAddr, bool>>,
    /// Destination → the ports used towards it.
    by_dst: HashMap<IpAddr, BTreeSet<Port>>,
    /// Name → the ports used towards destinations reached by it.
    by_name: HashMap<String, BTreeSet<Port>>,
}

/// `leash serve`'s drift memory: per workload, each name's addresses and the ports used, and
/// the [`Checker`]. An answer repeating an address already checked costs a few hash lookups;
/// only a new address is evaluated.
#[derive(Debug, Default)]
pub struct Tracker {
    checker: Checker,
    workloads: HashMap<WorkloadRef, Known>,
}

impl Tracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the cached verdicts: the cluster or the policies changed. What was learnt of
    /// workloads stays.
    pub fn policies_changed(&mut self) {
        self.checker.clear();
    }

    /// Whether anything was learnt of `workload` (its stored history is loaded once).
    pub fn knows(&self, workload: &WorkloadRef) -> bool {
        self.workloads.contains_key(workload)
    }

    /// The number of workloads known.
    pub fn workloads(&self) -> usize {
        self.workloads.len()
    }

    /// Makes `workload` known, with nothing learnt yet.
    pub fn start(&mut self, workload: &WorkloadRef) {
        if !self.knows(workload) {
            self.workloads.insert(workload.clone(), Known::default());
        }
    }

    /// Learns addresses `name` resolved to for `workload` (a stored history), without
    /// checking them: they are the "other addresses" of later answers.
    pub fn learn_addresses(
        &mut self,
        workload: &WorkloadRef,
        name: &str,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) {
        let known = self.known(workload);
        let entry = match known.names.get_mut(name) {
            Some(e) => e,
            None => known.names.entry(name.to_owned()).or_default(),
        };
        for ip in addresses {
            entry.entry(ip.to_canonical()).or_insert(false);
        }
    }

    /// Learns a connection of `workload`: its ports towards `dst` and `names`.
    pub fn learn_flow<'n>(
        &mut self,
        workload: &WorkloadRef,
        dst: IpAddr,
        port: Port,
        names: impl IntoIterator<Item = &'n String>,
    ) {
        let known = self.known(workload);
        known
            .by_dst
            .entry(dst.to_canonical())
            .or_default()
            .insert(port);
        for n in names {
            match known.by_name.get_mut(n.as_str()) {
                Some(set) => {
                    set.insert(port);
                }
                None => {
                    known.by_name.entry(n.clone()).or_default().insert(port);
                }
            }
        }
    }

    fn known(&mut self, workload: &WorkloadRef) -> &mut Known {
        if !self.workloads.contains_key(workload) {
            self.workloads.insert(workload.clone(), Known::default());
        }
        // Looked up by reference: cloning the key for every flow would allocate each time.
        self.workloads
            .get_mut(workload)
            .expect("the workload was inserted above")
    }

    /// One DNS answer: `workload`, as its pod `source` (cached as `key`), got `address` for
    /// `name` at `time`. An address already checked for the name is skipped (a lookup);
    /// otherwise it is checked against the name's other known addresses and remembered.
    #[expect(clippy::too_many_arguments, reason = "one answer, as plain values")]
    pub fn answer<V: ClusterView + ?Sized>(
        &mut self,
        view: &V,
        policies: &PolicySet,
        workload: &WorkloadRef,
        source: &V::Pod,
        key: usize,
        name: &str,
        address: IpAddr,
        time: DateTime<Utc>,
    ) -> Option<Drift> {
        let address = address.to_canonical();
        // The repeat path: lookups only.
        if let Some(known) = self.workloads.get(workload)
            && let Some(addresses) = known.names.get(name)
            && addresses.get(&address) == Some(&true)
        {
            return None;
        }
        let known = self.known(workload);
        let addresses = match known.names.get_mut(name) {
            Some(a) => a,
            None => known.names.entry(name.to_owned()).or_default(),
        };
        addresses.insert(address, true);
        let others: Vec<IpAddr> = addresses
            .keys()
            .copied()
            .filter(|&a| a != address)
            .collect();
        let mut ports: BTreeSet<Port> = known.by_name.get(name).cloned().unwrap_or_default();
        for ip in addresses.keys() {
            if let Some(p) = known.by_dst.get(ip) {
                ports.extend(p.iter().copied());
            }
        }
        let ports: Vec<Port> = ports.into_iter().collect();
        self.checker.check(
            view, policies, source, key, name, address, time, &others, &ports,
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use leash_lab::k8s;

    use super::*;
    use crate::cluster::Cluster;
    use crate::evidence::AddressSeen;

    /// shop: Deployment `payment` (pods payment-1, payment-2) and a bare pod `free` that no
    /// policy selects.
    fn cluster() -> Cluster {
        let pods = [
            k8s::pod("shop", "payment-1")
                .labels(&[("app", "payment")])
                .owner("Deployment", "payment")
                .ip("10.244.1.10")
                .build(),
            k8s::pod("shop", "payment-2")
                .labels(&[("app", "payment")])
                .owner("Deployment", "payment")
                .ip("10.244.1.11")
                .build(),
            k8s::pod("shop", "free")
                .labels(&[("app", "free")])
                .ip("10.244.1.12")
                .build(),
        ];
        let namespaces = [k8s::namespace(
            "shop",
            &[("kubernetes.io/metadata.name", "shop")],
        )];
        Cluster::from_objects(
            &namespaces,
            &[],
            &pods,
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
        )
        .expect("valid cluster")
    }

    /// payment may reach .10 on 443 and 8443, .20 on 8443 only, 2001:db8::10 on 443.
    const POLICY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: payment-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: payment}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.10/32}}]
    ports: [{port: 443, protocol: TCP}, {port: 8443}]
  - to: [{ipBlock: {cidr: 203.0.113.20/32}}]
    ports: [{port: 8443, protocol: TCP}]
  - to: [{ipBlock: {cidr: 2001:db8::10/128}}]
    ports: [{port: 443, protocol: TCP}]
";

    fn policies() -> PolicySet {
        let snap =
            leash_records::snapshot::parse_str(POLICY, Path::new("p.yaml")).expect("valid YAML");
        PolicySet::new(&snap.network_policies).expect("valid policies")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).expect("time")
    }

    const TCP443: Port = (Protocol::Tcp, 443);
    const TCP8443: Port = (Protocol::Tcp, 8443);

    /// (case, pod, address, others, used, drift ports).
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        &'a [&'a str],
        &'a [Port],
        &'a [Port],
    );

    #[test]
    fn drift_ports_table() {
        let c = cluster();
        let set = policies();
        let table: &[Case<'_>] = &[
            (
                "allowed",
                "payment-1",
                "203.0.113.10",
                &["203.0.113.11"],
                &[TCP443],
                &[],
            ),
            (
                "drift",
                "payment-1",
                "203.0.113.99",
                &["203.0.113.10"],
                &[TCP443],
                &[TCP443],
            ),
            (
                "not selected",
                "free",
                "203.0.113.99",
                &["203.0.113.10"],
                &[TCP443],
                &[],
            ),
            (
                "no other allowed",
                "payment-1",
                "203.0.113.99",
                &["203.0.113.98"],
                &[TCP443],
                &[],
            ),
            (
                "no other address",
                "payment-1",
                "203.0.113.99",
                &[],
                &[TCP443],
                &[],
            ),
            (
                "ports partially allowed",
                "payment-1",
                "203.0.113.20",
                &["203.0.113.10"],
                &[TCP443, TCP8443],
                &[TCP443],
            ),
            (
                "never connected: the policy's ports for the other addresses",
                "payment-1",
                "203.0.113.99",
                &["203.0.113.10"],
                &[],
                &[TCP443, TCP8443],
            ),
            (
                "never connected, other address allowed on one of them",
                "payment-1",
                "203.0.113.99",
                &["203.0.113.20"],
                &[],
                &[TCP8443],
            ),
            (
                "another port than the allowed ones",
                "payment-1",
                "203.0.113.99",
                &["203.0.113.10"],
                &[(Protocol::Udp, 443)],
                &[],
            ),
            (
                "IPv6",
                "payment-1",
                "2001:db8::99",
                &["2001:db8::10"],
                &[TCP443],
                &[TCP443],
            ),
            (
                "IPv6 allowed",
                "payment-1",
                "2001:db8::10",
                &["2001:db8::99"],
                &[TCP443],
                &[],
            ),
        ];
        for &(case, pod, address, others, used, want) in table {
            let mut checker = Checker::new();
            let id = c.pod_by_name("shop", pod).expect("pod");
            let others: Vec<IpAddr> = others.iter().map(|s| ip(s)).collect();
            let got = checker.drift_ports(&c, &set, &c.pods[id], id, ip(address), &others, used);
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn a_drift_names_its_source_workload_and_policies() {
        let c = cluster();
        let set = policies();
        let id = c.pod_by_name("shop", "payment-2").expect("pod");
        let d = Checker::new()
            .check(
                &c,
                &set,
                &c.pods[id],
                id,
                "api.stripe.test",
                ip("203.0.113.99"),
                t(5),
                &[ip("203.0.113.10")],
                &[TCP443],
            )
            .expect("drift");
        assert_eq!(
            d.to_json(),
            r#"{"kind":"dns-drift","source":{"namespace":"shop","pod":"payment-2","workload":"Deployment/payment"},"name":"api.stripe.test","address":"203.0.113.99","ports":[{"protocol":"TCP","port":443}],"time":"2027-01-15T08:00:05Z","policies":["shop/payment-egress"]}"#
        );
        assert_eq!(d.ports_text(), "TCP/443");
    }

    fn seen(at: i64) -> AddressSeen {
        AddressSeen {
            first_seen: t(at),
            last_seen: t(at),
            ttl: 60,
            chain: Vec::new(),
        }
    }

    fn answer(pod: &str, name: &str, addresses: &[(&str, i64)]) -> Answer {
        Answer {
            pod: PodRef {
                uid: String::new(),
                namespace: "shop".into(),
                name: pod.into(),
            },
            name: name.into(),
            addresses: addresses.iter().map(|&(a, at)| (ip(a), seen(at))).collect(),
        }
    }

    fn connection(pod: &str, dst: &str, port: u16) -> Connection {
        Connection {
            pod: PodRef {
                uid: String::new(),
                namespace: "shop".into(),
                name: pod.into(),
            },
            flow: Flow {
                protocol: Protocol::Tcp,
                dst: ip(dst),
                dst_port: port,
            },
            names: BTreeSet::new(),
        }
    }

    /// A workload's pods share the name's history; the drift comes from the pod that first
    /// got the address, at that time; the ports are the workload's towards the name.
    #[test]
    fn audit_drift_over_a_workloads_answers() {
        let c = cluster();
        let set = policies();
        let answers = [
            answer("payment-1", "api.stripe.test", &[("203.0.113.10", 0)]),
            answer("payment-2", "api.stripe.test", &[("203.0.113.99", 30)]),
            answer("payment-1", "api.stripe.test", &[("203.0.113.99", 20)]),
            // Never connected towards: the policy's ports allowed for .20 (8443 only).
            answer(
                "payment-1",
                "other.test",
                &[("203.0.113.20", 1), ("203.0.113.98", 2)],
            ),
            answer(
                "free",
                "api.stripe.test",
                &[("203.0.113.10", 0), ("203.0.113.99", 1)],
            ),
            answer(
                "gone",
                "api.stripe.test",
                &[("203.0.113.10", 0), ("203.0.113.99", 1)],
            ),
        ];
        let connections = [connection("payment-2", "203.0.113.10", 443)];
        let drift = from_answers(&c, &set, &answers, &connections);
        let lines: Vec<(i64, &str, &str, String, Vec<Port>)> = drift
            .iter()
            .map(|d| {
                (
                    d.time.timestamp() - 1_800_000_000,
                    d.source.name.as_str(),
                    d.name.as_str(),
                    d.address.to_string(),
                    d.ports.clone(),
                )
            })
            .collect();
        assert_eq!(
            lines,
            [
                (
                    2,
                    "payment-1",
                    "other.test",
                    "203.0.113.98".into(),
                    vec![TCP8443]
                ),
                (
                    20,
                    "payment-1",
                    "api.stripe.test",
                    "203.0.113.99".into(),
                    vec![TCP443]
                ),
            ]
        );
    }

    /// serve's memory: a repeated address is not evaluated again, a new one is checked
    /// against the stored history and the ports used, and reported once.
    #[test]
    fn the_tracker_checks_new_addresses_once() {
        let c = cluster();
        let set = policies();
        let id = c.pod_by_name("shop", "payment-1").expect("pod");
        let pod = &c.pods[id];
        let w = workload_ref(&c, pod);
        assert_eq!(w.to_string(), "shop/Deployment/payment");
        let mut tracker = Tracker::new();
        tracker.learn_addresses(&w, "api.stripe.test", [ip("203.0.113.10")]);
        tracker.learn_flow(&w, ip("203.0.113.10"), TCP443, &[]);
        let name = "api.stripe.test";
        assert_eq!(
            tracker.answer(&c, &set, &w, pod, id, name, ip("203.0.113.10"), t(1)),
            None
        );
        let cached = tracker.checker.cached();
        assert_eq!(
            tracker.answer(&c, &set, &w, pod, id, name, ip("203.0.113.10"), t(2)),
            None
        );
        assert_eq!(
            tracker.checker.cached(),
            cached,
            "the repeat path evaluates nothing"
        );
        let d = tracker
            .answer(&c, &set, &w, pod, id, name, ip("203.0.113.99"), t(3))
            .expect("drift");
        assert_eq!(
            (d.address, d.ports.as_slice(), d.time),
            (ip("203.0.113.99"), &[TCP443][..], t(3))
        );
        assert_eq!(
            tracker.answer(&c, &set, &w, pod, id, name, ip("203.0.113.99"), t(4)),
            None,
            "reported once"
        );
        // A name learnt from a flow's names gives its ports too.
        tracker.learn_flow(&w, ip("203.0.113.20"), TCP8443, &["pay.test".to_owned()]);
        tracker.learn_addresses(&w, "pay.test", [ip("203.0.113.20")]);
        let d = tracker
            .answer(&c, &set, &w, pod, id, "pay.test", ip("203.0.113.98"), t(5))
            .expect("drift");
        assert_eq!(d.ports, [TCP8443]);
    }
}
