//! DNS answers: parse the payloads the kernel copies, cache IP → names per pod, build v1 records.
//!
//! - [`parse_response`]: a DNS response payload (no TCP length prefix) into a [`DnsResponse`],
//!   with `hickory-proto`. Hostile input is an [`Error`], never a panic.
//! - [`cache::DnsCache`]: which names resolved to which IP, per pod, honouring TTLs plus grace.
//! - [`dns_record`]: the v1 `kind: dns` record.

pub mod cache;

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use leash_records::{DnsAnswer, DnsRecord};

use crate::attribution::Attribution;
use crate::metrics::Metrics;

pub use cache::{DnsCache, DnsCacheConfig};

/// Why a payload was not a usable DNS response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not a well-formed DNS message (truncated, bad label, bad compression…).
    #[error("malformed DNS message: {0}")]
    Malformed(String),
    /// The message is a query, not a response.
    #[error("DNS message is a query, not a response")]
    NotAResponse,
    /// The response carries no question, so there is nothing to label.
    #[error("DNS response has no question")]
    NoQuestion,
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The data of one answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerData {
    /// An `A` or `AAAA` address.
    Addr(IpAddr),
    /// A `CNAME` target, fully qualified with trailing dot, as in the packet.
    Cname(String),
    /// Any other type, in presentation form (empty when it has none, e.g. `OPT`).
    Other(String),
}

impl fmt::Display for AnswerData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr(ip) => write!(f, "{ip}"),
            Self::Cname(name) | Self::Other(name) => f.write_str(name),
        }
    }
}

/// One record of the answer section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Owner name, fully qualified with trailing dot, as in the packet.
    pub name: String,
    /// Record type mnemonic (`A`, `AAAA`, `CNAME`, …; `TYPE<n>` when unknown).
    pub rtype: String,
    /// The record data.
    pub data: AnswerData,
    /// TTL in seconds.
    pub ttl: u32,
}

/// A parsed DNS response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsResponse {
    /// The message id.
    pub id: u16,
    /// The first question's name, fully qualified with trailing dot, as in the packet.
    pub query: String,
    /// The first question's type mnemonic.
    pub qtype: String,
    /// The response code mnemonic (`NOERROR`, `NXDOMAIN`, …), EDNS extended bits included.
    pub rcode: String,
    /// Whether the TC bit is set (a UDP answer cut short; the client retries over TCP).
    pub truncated: bool,
    /// The answer section, in packet order, at most [`MAX_ANSWERS`] records.
    pub answers: Vec<Answer>,
}

/// Answers kept per response; a legitimate response to a pod has far fewer, and a hostile one
/// must not cost unbounded memory downstream.
pub const MAX_ANSWERS: usize = 128;

/// Parses a DNS response payload (for DNS over TCP, without the 2-byte length prefix).
pub fn parse_response(payload: &[u8]) -> Result<DnsResponse> {
    let message = Message::from_vec(payload).map_err(|e| Error::Malformed(e.to_string()))?;
    if message.metadata.message_type != MessageType::Response {
        return Err(Error::NotAResponse);
    }
    let question = message.queries.first().ok_or(Error::NoQuestion)?;
    let answers = message
        .answers
        .iter()
        .take(MAX_ANSWERS)
        .map(|record| Answer {
            name: display(&record.name),
            rtype: rtype_name(record.record_type()),
            data: match &record.data {
                RData::A(a) => AnswerData::Addr(IpAddr::V4(a.0)),
                RData::AAAA(a) => AnswerData::Addr(IpAddr::V6(a.0)),
                RData::CNAME(c) => AnswerData::Cname(display(&c.0)),
                other => AnswerData::Other(display(other)),
            },
            ttl: record.ttl,
        })
        .collect();
    Ok(DnsResponse {
        id: message.metadata.id,
        query: display(&question.name),
        qtype: rtype_name(question.query_type),
        rcode: rcode_name(message.metadata.response_code),
        truncated: message.metadata.truncation,
        answers,
    })
}

/// `value`'s presentation form, or an empty string when its `Display` fails.
///
/// `ToString` panics when a `Display` impl returns an error, and some hickory types do (an `OPT`
/// record has no presentation form); attacker-controlled data must not reach that panic.
fn display(value: &dyn fmt::Display) -> String {
    let mut out = String::new();
    if write!(out, "{value}").is_err() {
        out.clear();
    }
    out
}

/// The record type mnemonic, `TYPE<n>` (RFC 3597) for unknown types.
pub fn rtype_name(rtype: RecordType) -> String {
    match rtype {
        RecordType::Unknown(code) => format!("TYPE{code}"),
        known => display(&known),
    }
}

/// The response code mnemonic as `dig` prints it, `RCODE<n>` for unassigned codes.
pub fn rcode_name(rcode: ResponseCode) -> String {
    let name = match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        ResponseCode::YXDomain => "YXDOMAIN",
        ResponseCode::YXRRSet => "YXRRSET",
        ResponseCode::NXRRSet => "NXRRSET",
        ResponseCode::NotAuth => "NOTAUTH",
        ResponseCode::NotZone => "NOTZONE",
        ResponseCode::BADVERS => "BADVERS",
        ResponseCode::BADSIG => "BADSIG",
        ResponseCode::BADKEY => "BADKEY",
        ResponseCode::BADTIME => "BADTIME",
        ResponseCode::BADMODE => "BADMODE",
        ResponseCode::BADNAME => "BADNAME",
        ResponseCode::BADALG => "BADALG",
        ResponseCode::BADTRUNC => "BADTRUNC",
        ResponseCode::BADCOOKIE => "BADCOOKIE",
        other => return format!("RCODE{}", u16::from(other)),
    };
    name.to_owned()
}

/// The v1 `kind: dns` record for `response`, received from `server` at `time` by the process
/// `attribution` describes, on `node`.
///
/// Answers keep packet order (it is the order of the CNAME chain), names keep their trailing dot.
pub fn dns_record(
    response: &DnsResponse,
    server: IpAddr,
    time: DateTime<Utc>,
    node: &str,
    attribution: &Attribution,
) -> DnsRecord {
    DnsRecord {
        node: node.to_owned(),
        pod: attribution.pod_ref(),
        cgroup: attribution.cgroup.to_string(),
        server,
        query: response.query.clone(),
        qtype: response.qtype.clone(),
        rcode: response.rcode.clone(),
        answers: response
            .answers
            .iter()
            .map(|a| DnsAnswer {
                name: a.name.clone(),
                rtype: a.rtype.clone(),
                data: a.data.to_string(),
                ttl: a.ttl,
            })
            .collect(),
        time,
    }
}

/// The agent's DNS path in one place: parse, count failures, cache, build the record.
#[derive(Debug)]
pub struct DnsTracker {
    cache: DnsCache,
    metrics: Metrics,
}

impl DnsTracker {
    /// A tracker with an empty cache.
    pub fn new(config: DnsCacheConfig, metrics: Metrics) -> Self {
        Self {
            cache: DnsCache::new(config, metrics.clone()),
            metrics,
        }
    }

    /// Handles one DNS response payload received by `attribution`'s process from `server` at
    /// `time`: caches its answers under the pod key and returns the v1 record. A payload that does
    /// not parse is counted in `dns_parse_errors`, logged at debug level, and gives `None`.
    pub fn observe(
        &mut self,
        payload: &[u8],
        server: IpAddr,
        time: DateTime<Utc>,
        node: &str,
        attribution: &Attribution,
    ) -> Option<DnsRecord> {
        match parse_response(payload) {
            Ok(response) => {
                self.cache.insert(attribution.pod_key(), &response, time);
                Some(dns_record(&response, server, time, node, attribution))
            }
            Err(error) => {
                self.metrics.dns_parse_errors.inc();
                tracing::debug!(%error, %server, cgroup = %attribution.cgroup, "skipping DNS payload");
                None
            }
        }
    }

    /// The names that resolved to `ip` for `attribution`'s pod (or cgroup), valid at `at`.
    pub fn names_for(
        &self,
        attribution: &Attribution,
        ip: IpAddr,
        at: DateTime<Utc>,
    ) -> Vec<String> {
        self.cache.names_for(attribution.pod_key(), ip, at)
    }

    /// Drops entries past TTL plus grace; call it on each flush.
    pub fn purge(&mut self, at: DateTime<Utc>) -> usize {
        self.cache.purge(at)
    }

    /// The underlying cache.
    pub fn cache(&self) -> &DnsCache {
        &self.cache
    }
}

/// Builders of real DNS messages with hickory-proto, for tests here and in `tests/`.
pub mod testing {
    use std::net::IpAddr;
    use std::str::FromStr;

    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, TXT};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    /// A record in a test answer.
    #[derive(Debug, Clone)]
    pub enum TestRecord {
        /// `name A/AAAA ip`.
        Addr(&'static str, IpAddr, u32),
        /// `name CNAME target`.
        Cname(&'static str, &'static str, u32),
        /// `name TXT text`.
        Txt(&'static str, &'static str, u32),
    }

    fn name(s: &str) -> Name {
        Name::from_str(s).unwrap_or_else(|e| panic!("test name {s:?}: {e}"))
    }

    /// A response to `query`/`qtype` with `rcode` and the given answers, as wire bytes.
    pub fn response(
        query: &str,
        qtype: RecordType,
        rcode: ResponseCode,
        answers: &[TestRecord],
    ) -> Vec<u8> {
        message(query, qtype, rcode, answers)
            .to_vec()
            .unwrap_or_else(|e| panic!("encoding test message: {e}"))
    }

    /// The same as [`response`], as a `Message` (to tweak before encoding).
    pub fn message(
        query: &str,
        qtype: RecordType,
        rcode: ResponseCode,
        answers: &[TestRecord],
    ) -> Message {
        let mut msg = Message::new(0x1234, MessageType::Response, OpCode::Query);
        msg.metadata.response_code = rcode;
        msg.metadata.recursion_desired = true;
        msg.metadata.recursion_available = true;
        msg.add_query(Query::query(name(query), qtype));
        for r in answers {
            let record = match r {
                TestRecord::Addr(n, IpAddr::V4(ip), ttl) => {
                    Record::from_rdata(name(n), *ttl, RData::A(A(*ip)))
                }
                TestRecord::Addr(n, IpAddr::V6(ip), ttl) => {
                    Record::from_rdata(name(n), *ttl, RData::AAAA(AAAA(*ip)))
                }
                TestRecord::Cname(n, target, ttl) => {
                    Record::from_rdata(name(n), *ttl, RData::CNAME(CNAME(name(target))))
                }
                TestRecord::Txt(n, text, ttl) => Record::from_rdata(
                    name(n),
                    *ttl,
                    RData::TXT(TXT::new(vec![(*text).to_owned()])),
                ),
            };
            msg.add_answer(record);
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{TestRecord::*, message, response};
    use super::*;
    use hickory_proto::op::{Edns, MessageType, OpCode, Query};
    use hickory_proto::rr::Name;
    use proptest::prelude::*;
    use std::str::FromStr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cname_chain_to_a() {
        let bytes = response(
            "api.stripe.test.",
            RecordType::A,
            ResponseCode::NoError,
            &[
                Cname("api.stripe.test.", "edge.stripe.test.", 300),
                Addr("edge.stripe.test.", ip("203.0.113.10"), 60),
            ],
        );
        let r = parse_response(&bytes).unwrap();
        assert_eq!(r.query, "api.stripe.test.");
        assert_eq!(r.qtype, "A");
        assert_eq!(r.rcode, "NOERROR");
        assert_eq!(
            r.answers,
            vec![
                Answer {
                    name: "api.stripe.test.".into(),
                    rtype: "CNAME".into(),
                    data: AnswerData::Cname("edge.stripe.test.".into()),
                    ttl: 300
                },
                Answer {
                    name: "edge.stripe.test.".into(),
                    rtype: "A".into(),
                    data: AnswerData::Addr(ip("203.0.113.10")),
                    ttl: 60
                },
            ]
        );
    }

    #[test]
    fn aaaa_other_types_and_rcodes() {
        let r = parse_response(&response(
            "v6.example.test.",
            RecordType::AAAA,
            ResponseCode::NoError,
            &[
                Addr("v6.example.test.", ip("2001:db8::10"), 30),
                Txt("v6.example.test.", "hello", 5),
            ],
        ))
        .unwrap();
        assert_eq!(r.qtype, "AAAA");
        assert_eq!(r.answers[0].data, AnswerData::Addr(ip("2001:db8::10")));
        assert_eq!(r.answers[1].rtype, "TXT");
        assert_eq!(r.answers[1].data.to_string(), "hello");

        let nx = parse_response(&response(
            "nope.test.",
            RecordType::A,
            ResponseCode::NXDomain,
            &[],
        ))
        .unwrap();
        assert_eq!(nx.rcode, "NXDOMAIN");
        assert!(nx.answers.is_empty());
        assert_eq!(rcode_name(ResponseCode::Unknown(3000)), "RCODE3000");
        assert_eq!(rtype_name(RecordType::Unknown(65280)), "TYPE65280");
    }

    #[test]
    fn edns_answer_larger_than_512_bytes() {
        let answers: Vec<_> = (0..40u8)
            .map(|i| Addr("many.example.test.", IpAddr::from([198, 51, 100, i]), 60))
            .collect();
        let mut msg = message(
            "many.example.test.",
            RecordType::A,
            ResponseCode::NoError,
            &answers,
        );
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        msg.set_edns(edns);
        let bytes = msg.to_vec().unwrap();
        assert!(bytes.len() > 512, "{}", bytes.len());
        let r = parse_response(&bytes).unwrap();
        assert_eq!(r.answers.len(), 40);
        assert_eq!(r.answers[39].data, AnswerData::Addr(ip("198.51.100.39")));
    }

    #[test]
    fn queries_truncation_and_garbage_are_errors() {
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(
            Name::from_str("a.test.").unwrap(),
            RecordType::A,
        ));
        assert!(matches!(
            parse_response(&query.to_vec().unwrap()),
            Err(Error::NotAResponse)
        ));

        let no_question = Message::new(7, MessageType::Response, OpCode::Query);
        assert!(matches!(
            parse_response(&no_question.to_vec().unwrap()),
            Err(Error::NoQuestion)
        ));

        let full = response(
            "api.stripe.test.",
            RecordType::A,
            ResponseCode::NoError,
            &[Addr("api.stripe.test.", ip("203.0.113.10"), 60)],
        );
        for len in 0..full.len() {
            assert!(
                parse_response(&full[..len]).is_err(),
                "prefix of {len} bytes parsed"
            );
        }
        assert!(matches!(
            parse_response(b"\xff\xff"),
            Err(Error::Malformed(_))
        ));
    }

    #[test]
    fn compression_loop_is_an_error() {
        // Header: response, 1 question; the question name is a pointer to itself (offset 12).
        let mut bytes = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        bytes.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(parse_response(&bytes), Err(Error::Malformed(_))));
    }

    #[test]
    fn opt_record_in_answers_is_an_error() {
        // Response with one question (a.test A) and an OPT pseudo-record in the answer section.
        // OPT has no presentation form (its `Display` errors, which `to_string` turns into a
        // panic); hickory rejects it outside the additional section, and so do we.
        let mut bytes = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        bytes.extend_from_slice(&[1, b'a', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1]);
        bytes.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(parse_response(&bytes), Err(Error::Malformed(m)) if m.contains("OPT")));
        // The same record in the additional section is EDNS and parses.
        bytes[7] = 0;
        bytes[11] = 1;
        assert_eq!(parse_response(&bytes).unwrap().query, "a.test.");
    }

    #[test]
    fn tc_bit_reported() {
        let mut msg = message("a.test.", RecordType::A, ResponseCode::NoError, &[]);
        msg.metadata.truncation = true;
        assert!(parse_response(&msg.to_vec().unwrap()).unwrap().truncated);
    }

    #[test]
    fn builds_the_v1_record() {
        let r = parse_response(&response(
            "api.stripe.test.",
            RecordType::A,
            ResponseCode::NoError,
            &[Addr("api.stripe.test.", ip("203.0.113.10"), 60)],
        ))
        .unwrap();
        let time = DateTime::parse_from_rfc3339("2026-11-25T09:00:00Z")
            .unwrap()
            .to_utc();
        let attribution = Attribution::cgroup_only("/system.slice/foo.service");
        let rec = dns_record(&r, ip("198.51.100.53"), time, "n1", &attribution);
        let line = leash_records::Record::Dns(rec).to_json_line();
        assert_eq!(
            line,
            r#"{"v":1,"kind":"dns","node":"n1","pod":null,"cgroup":"/system.slice/foo.service","server":"198.51.100.53","query":"api.stripe.test.","qtype":"A","rcode":"NOERROR","answers":[{"name":"api.stripe.test.","type":"A","data":"203.0.113.10","ttl":60}],"time":"2026-11-25T09:00:00.000000000Z"}"#
        );
    }

    fn valid_messages() -> Vec<Vec<u8>> {
        vec![
            response(
                "api.stripe.test.",
                RecordType::A,
                ResponseCode::NoError,
                &[
                    Cname("api.stripe.test.", "edge.stripe.test.", 300),
                    Addr("edge.stripe.test.", ip("203.0.113.10"), 60),
                ],
            ),
            response(
                "v6.test.",
                RecordType::AAAA,
                ResponseCode::NoError,
                &[
                    Addr("v6.test.", ip("2001:db8::1"), 1),
                    Txt("v6.test.", "x", 1),
                ],
            ),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = parse_response(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(
            which in 0usize..2,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut bytes = valid_messages().swap_remove(which);
            for (pos, value) in flips {
                let len = bytes.len();
                bytes[pos % len] = value;
            }
            let cut = cut % (bytes.len() + 1);
            bytes.truncate(cut.max(12));
            if let Ok(r) = parse_response(&bytes) {
                prop_assert!(r.answers.len() <= MAX_ANSWERS);
            }
        }
    }
}
