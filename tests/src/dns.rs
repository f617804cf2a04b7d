//! The lab's DNS server: a small authoritative zone answered with hickory-proto.
//!
//! We answer ourselves instead of running dnsmasq because the tests need behaviour dnsmasq does not
//! offer: a deliberately malformed answer, exact control of EDNS sizes and TTLs, and per-query
//! counters readable from the test.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::error::{Error, Result};

/// The name answered with a deliberately malformed packet by default.
pub const MALFORMED_NAME: &str = "malformed.lab.test";
/// The name answered with [`LARGE_COUNT`] A records (an answer larger than 512 bytes) by default.
pub const LARGE_NAME: &str = "big.lab.test";
/// How many A records [`LARGE_NAME`] has.
pub const LARGE_COUNT: u8 = 40;
/// The EDNS payload size the server advertises.
pub const SERVER_EDNS_PAYLOAD: u16 = 1232;

/// One configured record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum DnsRecord {
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// An alias to another name (absolute, with trailing dot).
    Cname(String),
}

/// Configuration of the lab's DNS server.
///
/// Names are case-insensitive and may be given with or without the trailing dot. Cluster names
/// (`<svc>.<ns>.svc.cluster.local`) of every Service are added automatically at build time.
///
/// ```
/// use leash_lab::DnsConfig;
/// let dns = DnsConfig::new()
///     .cname("api.stripe.test", "edge.stripe.test")
///     .a("edge.stripe.test", ["203.0.113.10", "203.0.113.11", "203.0.113.12"])
///     .aaaa("edge.stripe.test", ["2001:db8:2::10"]);
/// assert_eq!(dns.listen_port(), 53);
/// ```
#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub(crate) port: u16,
    pub(crate) ttl: u32,
    pub(crate) records: Vec<(String, String, String)>,
    pub(crate) malformed: BTreeSet<String>,
    pub(crate) large: Vec<(String, u8)>,
    pub(crate) flavour: DnsFlavour,
}

/// How the cluster's DNS is deployed, which names its objects in the snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DnsFlavour {
    /// kubeadm: Deployment `kube-system/coredns` (label `k8s-app: kube-dns`) behind Service
    /// `kube-system/kube-dns`, ports `dns` 53/UDP and `dns-tcp` 53/TCP.
    #[default]
    Kubeadm,
    /// OpenShift: DaemonSet `openshift-dns/dns-default` (label
    /// `dns.operator.openshift.io/daemonset-dns: default`) behind Service `openshift-dns/dns-default`,
    /// Service port 53 → targetPort `dns` / `dns-tcp` (5353).
    OpenShift,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl DnsConfig {
    /// A server on port 53 with TTL 60, answering [`LARGE_NAME`] with 40 A records
    /// (203.0.113.100-139) and [`MALFORMED_NAME`] with a malformed packet.
    pub fn new() -> Self {
        Self {
            port: 53,
            ttl: 60,
            records: Vec::new(),
            malformed: BTreeSet::from([fqdn(MALFORMED_NAME)]),
            large: vec![(fqdn(LARGE_NAME), LARGE_COUNT)],
            flavour: DnsFlavour::Kubeadm,
        }
    }

    /// The OpenShift layout ([`DnsFlavour::OpenShift`]), listening on 5353.
    pub fn openshift() -> Self {
        Self {
            port: 5353,
            flavour: DnsFlavour::OpenShift,
            ..Self::new()
        }
    }

    /// The deployment layout.
    pub fn flavour(&self) -> DnsFlavour {
        self.flavour
    }

    /// The port the DNS pod listens on (53 by default; 5353 for an OpenShift-style resolver,
    /// whose Service still listens on 53 and maps to this target port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The configured listen port.
    pub fn listen_port(&self) -> u16 {
        self.port
    }

    /// TTL of every answer (default 60 s).
    pub fn ttl(mut self, ttl: u32) -> Self {
        self.ttl = ttl;
        self
    }

    /// Adds A records. Addresses must lie in the lab's ranges; checked at build time.
    pub fn a<'a>(mut self, name: &str, ips: impl IntoIterator<Item = &'a str>) -> Self {
        for ip in ips {
            self.records.push((fqdn(name), "A".into(), ip.to_owned()));
        }
        self
    }

    /// Adds AAAA records. Addresses must lie in the lab's ranges; checked at build time.
    pub fn aaaa<'a>(mut self, name: &str, ips: impl IntoIterator<Item = &'a str>) -> Self {
        for ip in ips {
            self.records
                .push((fqdn(name), "AAAA".into(), ip.to_owned()));
        }
        self
    }

    /// Adds a CNAME `name` → `target`. Chains are followed when answering A/AAAA queries.
    pub fn cname(mut self, name: &str, target: &str) -> Self {
        self.records
            .push((fqdn(name), "CNAME".into(), fqdn(target)));
        self
    }

    /// Answers `name` with a packet whose header is valid but whose body is truncated garbage.
    pub fn malformed(mut self, name: &str) -> Self {
        self.malformed.insert(fqdn(name));
        self
    }

    /// Answers `name` with `count` A records from 203.0.113.100 upwards.
    pub fn large(mut self, name: &str, count: u8) -> Self {
        self.large.push((fqdn(name), count));
        self
    }

    /// The `api.stripe.test` example: a CNAME to `edge.stripe.test`, which has
    /// A 203.0.113.10/11/12 and AAAA 2001:db8:2::10.
    pub fn with_stripe_example(self) -> Self {
        self.cname("api.stripe.test", "edge.stripe.test")
            .a(
                "edge.stripe.test",
                ["203.0.113.10", "203.0.113.11", "203.0.113.12"],
            )
            .aaaa("edge.stripe.test", ["2001:db8:2::10"])
    }
}

/// Lower-case, absolute (trailing dot) form of a name.
pub(crate) fn fqdn(name: &str) -> String {
    let mut s = name.trim().trim_end_matches('.').to_ascii_lowercase();
    s.push('.');
    s
}

/// Transport a query arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
}

/// Queries the DNS server received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Queries received over UDP.
    pub udp_queries: u64,
    /// Queries received over TCP.
    pub tcp_queries: u64,
    /// `(name, qtype)` of each query, in arrival order (first 10,000 kept).
    pub queries: Vec<(String, String)>,
}

#[derive(Default)]
pub(crate) struct DnsCounters {
    udp: AtomicU64,
    tcp: AtomicU64,
    log: Mutex<Vec<(String, String)>>,
}

impl DnsCounters {
    fn record(&self, t: Transport, name: &str, qtype: RecordType) {
        match t {
            Transport::Udp => self.udp.fetch_add(1, Ordering::SeqCst),
            Transport::Tcp => self.tcp.fetch_add(1, Ordering::SeqCst),
        };
        if let Ok(mut log) = self.log.lock()
            && log.len() < 10_000
        {
            log.push((name.to_owned(), qtype.to_string()));
        }
    }

    pub(crate) fn snapshot(&self) -> DnsStats {
        DnsStats {
            udp_queries: self.udp.load(Ordering::SeqCst),
            tcp_queries: self.tcp.load(Ordering::SeqCst),
            queries: self.log.lock().map(|l| l.clone()).unwrap_or_default(),
        }
    }
}

/// The compiled zone. Its records may change while the lab runs ([`Zone::set_addresses`]):
/// a name moving to new addresses, as a provider's does.
#[derive(Debug, Default)]
pub(crate) struct Zone {
    ttl: u32,
    records: RwLock<BTreeMap<String, Vec<DnsRecord>>>,
    malformed: BTreeSet<String>,
}

impl Zone {
    /// Compiles a config; `check` validates each address against the lab's ranges.
    pub(crate) fn build(
        cfg: &DnsConfig,
        extra: &[(String, IpAddr)],
        check: impl Fn(IpAddr) -> Result<()>,
    ) -> Result<Self> {
        let mut records: BTreeMap<String, Vec<DnsRecord>> = BTreeMap::new();
        for (name, kind, data) in &cfg.records {
            let rec = match kind.as_str() {
                "CNAME" => DnsRecord::Cname(data.clone()),
                _ => {
                    let ip: IpAddr = data.parse().map_err(|_| Error::BadAddress(data.clone()))?;
                    check(ip)?;
                    match (kind.as_str(), ip) {
                        ("A", IpAddr::V4(v4)) => DnsRecord::A(v4),
                        ("AAAA", IpAddr::V6(v6)) => DnsRecord::Aaaa(v6),
                        _ => {
                            return Err(Error::Config(format!(
                                "DNS record {name} {kind} {data}: address family does not match the type"
                            )));
                        }
                    }
                }
            };
            records.entry(name.clone()).or_default().push(rec);
        }
        for (name, count) in &cfg.large {
            let e = records.entry(name.clone()).or_default();
            for i in 0..*count {
                e.push(DnsRecord::A(Ipv4Addr::new(
                    203,
                    0,
                    113,
                    100u8.saturating_add(i),
                )));
            }
        }
        for (name, ip) in extra {
            let rec = match ip {
                IpAddr::V4(v4) => DnsRecord::A(*v4),
                IpAddr::V6(v6) => DnsRecord::Aaaa(*v6),
            };
            records.entry(fqdn(name)).or_default().push(rec);
        }
        for v in records.values_mut() {
            v.sort();
            v.dedup();
        }
        Ok(Self {
            ttl: cfg.ttl,
            records: RwLock::new(records),
            malformed: cfg.malformed.clone(),
        })
    }

    fn record(&self, name: &str, rec: &DnsRecord) -> Option<Record> {
        let owner = Name::from_ascii(name).ok()?;
        let data = match rec {
            DnsRecord::A(ip) => RData::A(A(*ip)),
            DnsRecord::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            DnsRecord::Cname(t) => RData::CNAME(CNAME(Name::from_ascii(t).ok()?)),
        };
        Some(Record::from_rdata(owner, self.ttl, data))
    }

    /// Replaces the A and AAAA records of `name` with `ips` (its CNAME, if any, stays; a name
    /// with neither left is removed). `check` validates each address as [`Zone::build`] does.
    pub(crate) fn set_addresses(
        &self,
        name: &str,
        ips: &[IpAddr],
        check: impl Fn(IpAddr) -> Result<()>,
    ) -> Result<()> {
        for ip in ips {
            check(*ip)?;
        }
        let mut records = self
            .records
            .write()
            .map_err(|_| Error::Config("the DNS zone's lock is poisoned".into()))?;
        let entry = records.entry(fqdn(name)).or_default();
        entry.retain(|r| matches!(r, DnsRecord::Cname(_)));
        entry.extend(ips.iter().map(|ip| match ip {
            IpAddr::V4(v4) => DnsRecord::A(*v4),
            IpAddr::V6(v6) => DnsRecord::Aaaa(*v6),
        }));
        entry.sort();
        entry.dedup();
        if entry.is_empty() {
            records.remove(&fqdn(name));
        }
        Ok(())
    }

    /// Resolves `name`/`qtype` in the zone, following CNAME chains (at most 8 links).
    fn lookup(&self, name: &str, qtype: RecordType) -> (ResponseCode, Vec<Record>) {
        let Ok(records) = self.records.read() else {
            return (ResponseCode::ServFail, Vec::new());
        };
        let mut out = Vec::new();
        let mut cur = name.to_owned();
        for _ in 0..8 {
            let Some(recs) = records.get(&cur) else {
                let code = if out.is_empty() {
                    ResponseCode::NXDomain
                } else {
                    ResponseCode::NoError
                };
                return (code, out);
            };
            let cname = recs.iter().find_map(|r| match r {
                DnsRecord::Cname(t) => Some(t.clone()),
                _ => None,
            });
            if qtype == RecordType::CNAME {
                if let Some(t) = &cname
                    && let Some(r) = self.record(&cur, &DnsRecord::Cname(t.clone()))
                {
                    out.push(r);
                }
                return (ResponseCode::NoError, out);
            }
            if let Some(t) = cname {
                if let Some(r) = self.record(&cur, &DnsRecord::Cname(t.clone())) {
                    out.push(r);
                }
                cur = t;
                continue;
            }
            for r in recs {
                let matches = matches!(
                    (r, qtype),
                    (DnsRecord::A(_), RecordType::A) | (DnsRecord::Aaaa(_), RecordType::AAAA)
                );
                if matches && let Some(rec) = self.record(&cur, r) {
                    out.push(rec);
                }
            }
            return (ResponseCode::NoError, out);
        }
        (ResponseCode::ServFail, out)
    }

    /// Answers one query message; `None` when the input is not a query worth answering.
    pub(crate) fn respond(&self, req: &[u8], t: Transport, dc: &DnsCounters) -> Option<Vec<u8>> {
        let msg = match Message::from_vec(req) {
            Ok(m) => m,
            Err(_) => return formerr(req),
        };
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        let q = msg.queries.first()?.clone();
        let name = fqdn(&q.name().to_ascii());
        dc.record(t, &name, q.query_type());
        if self.malformed.contains(&name) {
            return Some(malformed_answer(msg.metadata.id, &q));
        }
        let mut resp = Message::response(msg.metadata.id, OpCode::Query);
        resp.metadata.authoritative = true;
        resp.metadata.recursion_desired = msg.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.add_query(q.clone());
        let (code, answers) = self.lookup(&name, q.query_type());
        resp.metadata.response_code = code;
        resp.add_answers(answers);
        if msg.edns.is_some() {
            let mut e = Edns::new();
            e.set_max_payload(SERVER_EDNS_PAYLOAD);
            resp.set_edns(e);
        }
        let bytes = resp.to_vec().ok()?;
        // Over UDP honour the client's EDNS size (512 without EDNS): truncate and set TC.
        if t == Transport::Udp && bytes.len() > usize::from(msg.max_payload()) {
            return resp.truncate().to_vec().ok();
        }
        Some(bytes)
    }
}

/// FORMERR with the request's id, when at least a header arrived.
fn formerr(req: &[u8]) -> Option<Vec<u8>> {
    if req.len() < 12 || req[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([req[0], req[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

/// A response with a valid header and question, announcing two answers, followed by one answer
/// whose RDLENGTH (255) runs past the end of the packet.
fn malformed_answer(id: u16, q: &Query) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x85, 0x80]); // QR AA RD RA, NOERROR
    out.extend_from_slice(&[0, 1, 0, 2, 0, 0, 0, 0]); // QD=1 AN=2 NS=0 AR=0
    for label in q.name().to_ascii().trim_end_matches('.').split('.') {
        let l = label.as_bytes();
        out.push(u8::try_from(l.len().min(63)).unwrap_or(63));
        out.extend_from_slice(&l[..l.len().min(63)]);
    }
    out.push(0);
    out.extend_from_slice(&u16::from(q.query_type()).to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    // Answer: pointer to the question name, type A, class IN, TTL 60, RDLENGTH 255, 3 bytes.
    out.extend_from_slice(&[
        0xC0, 0x0C, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3C, 0x00, 0xFF, 0xDE, 0xAD, 0xBE,
    ]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        Zone::build(&DnsConfig::new().with_stripe_example(), &[], |_| Ok(())).unwrap()
    }

    fn query(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn cname_chain_is_followed() {
        let dc = DnsCounters::default();
        let r = zone()
            .respond(
                &query("API.stripe.test.", RecordType::A, None),
                Transport::Udp,
                &dc,
            )
            .unwrap();
        let m = Message::from_vec(&r).unwrap();
        let types: Vec<_> = m.answers.iter().map(Record::record_type).collect();
        assert_eq!(
            types,
            [
                RecordType::CNAME,
                RecordType::A,
                RecordType::A,
                RecordType::A
            ]
        );
        assert_eq!(dc.snapshot().udp_queries, 1);
    }

    #[test]
    fn a_name_moves_to_new_addresses_and_keeps_its_cname() {
        let dc = DnsCounters::default();
        let z = zone();
        let moved: Vec<IpAddr> = vec!["203.0.113.99".parse().unwrap()];
        z.set_addresses("Edge.stripe.test", &moved, |_| Ok(()))
            .unwrap();
        let r = z
            .respond(
                &query("api.stripe.test.", RecordType::A, None),
                Transport::Udp,
                &dc,
            )
            .unwrap();
        let m = Message::from_vec(&r).unwrap();
        let data: Vec<String> = m.answers.iter().map(|a| a.data.to_string()).collect();
        assert_eq!(data, ["edge.stripe.test.", "203.0.113.99"]);
        // The AAAA record was replaced too (the new list has none).
        let r = z
            .respond(
                &query("edge.stripe.test.", RecordType::AAAA, None),
                Transport::Udp,
                &dc,
            )
            .unwrap();
        assert!(Message::from_vec(&r).unwrap().answers.is_empty());
        // A refused address changes nothing.
        let refused = z.set_addresses("edge.stripe.test", &["192.0.2.1".parse().unwrap()], |ip| {
            Err(Error::BadAddress(ip.to_string()))
        });
        assert!(refused.is_err());
        let r = z
            .respond(
                &query("edge.stripe.test.", RecordType::A, None),
                Transport::Udp,
                &dc,
            )
            .unwrap();
        assert_eq!(Message::from_vec(&r).unwrap().answers.len(), 1);
    }

    #[test]
    fn unknown_name_is_nxdomain() {
        let dc = DnsCounters::default();
        let r = zone()
            .respond(
                &query("nope.test.", RecordType::A, None),
                Transport::Udp,
                &dc,
            )
            .unwrap();
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn large_answer_truncated_without_edns_full_with_it() {
        let dc = DnsCounters::default();
        let z = zone();
        let small = z
            .respond(&query(LARGE_NAME, RecordType::A, None), Transport::Udp, &dc)
            .unwrap();
        let m = Message::from_vec(&small).unwrap();
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        let big = z
            .respond(
                &query(LARGE_NAME, RecordType::A, Some(1232)),
                Transport::Udp,
                &dc,
            )
            .unwrap();
        assert!(big.len() > 512);
        let m = Message::from_vec(&big).unwrap();
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), usize::from(LARGE_COUNT));
        let tcp = z
            .respond(&query(LARGE_NAME, RecordType::A, None), Transport::Tcp, &dc)
            .unwrap();
        assert_eq!(Message::from_vec(&tcp).unwrap().answers.len(), 40);
    }

    #[test]
    fn malformed_has_valid_header_and_fails_to_parse() {
        let dc = DnsCounters::default();
        let q = query(MALFORMED_NAME, RecordType::A, None);
        let r = zone().respond(&q, Transport::Udp, &dc).unwrap();
        assert_eq!(r[..2], q[..2]);
        assert_eq!(r[2] & 0x80, 0x80);
        assert!(Message::from_vec(&r).is_err());
    }

    proptest::proptest! {
        /// The server parses whatever arrives on its sockets: it must never panic, and whatever
        /// it answers must carry the request's id.
        #[test]
        fn respond_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let dc = DnsCounters::default();
            let z = zone();
            for t in [Transport::Udp, Transport::Tcp] {
                if let Some(r) = z.respond(&bytes, t, &dc) {
                    proptest::prop_assert!(r.len() >= 12);
                    proptest::prop_assert_eq!(&r[..2], &bytes[..2]);
                }
            }
        }

        /// Mutated real queries (bit flips in a valid query) are handled the same way.
        #[test]
        fn respond_handles_mutated_queries(pos in 0usize..64, bit in 0u8..8, edns in proptest::option::of(0u16..1400)) {
            let mut q = query("api.stripe.test.", RecordType::A, edns);
            let i = pos % q.len();
            q[i] ^= 1 << bit;
            let dc = DnsCounters::default();
            if let Some(r) = zone().respond(&q, Transport::Udp, &dc) {
                proptest::prop_assert_eq!(&r[..2], &q[..2]);
                // Over UDP the answer always fits the size the (possibly mutated) query allows.
                if let Ok(m) = Message::from_vec(&q) {
                    proptest::prop_assert!(r.len() <= usize::from(m.max_payload()));
                }
            }
        }
    }

    #[test]
    fn garbage_gets_formerr_or_nothing() {
        let dc = DnsCounters::default();
        assert!(zone().respond(&[1, 2, 3], Transport::Udp, &dc).is_none());
        let r = zone()
            .respond(
                &[0xab, 0xcd, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff],
                Transport::Udp,
                &dc,
            )
            .unwrap();
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.metadata.id, 0xabcd);
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    }
}
