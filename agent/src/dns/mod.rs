//! DNS answers: parse the payloads the kernel copies, cache IP → names per pod, build v1 records.
//!
//! - [`parse_response`]: a DNS response payload (no TCP length prefix) into a [`DnsResponse`],
//!   with `hickory-proto`. Hostile input is an [`Error`], never a panic.
//! - [`check_response`]: what of a response leash may record. DNS names are chosen by whoever
//!   answers, and any pod can answer itself (a packet to itself over loopback from port 53), so
//!   every name is checked with [`leash_records::names::dns_name`] before it enters a record or
//!   the cache, and a record's size is bounded.
//! - [`cache::DnsCache`]: which names resolved to which IP, per pod, honouring TTLs plus grace.
//! - [`dns_record`]: the v1 `kind: dns` record.

pub mod cache;

use std::fmt::{self, Write as _};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use leash_records::error::Chain;
use leash_records::names::{self, NameError};
use leash_records::wire::{self, AnswerDataError};
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

impl Answer {
    /// The bytes this answer's text takes in a record (owner, type and data).
    fn text_len(&self) -> usize {
        let data = match &self.data {
            // An address is at most 39 characters; formatting it only to measure is waste.
            AnswerData::Addr(IpAddr::V4(_)) => 15,
            AnswerData::Addr(IpAddr::V6(_)) => 39,
            AnswerData::Cname(text) | AnswerData::Other(text) => text.len(),
        };
        self.name.len() + self.rtype.len() + data
    }
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
    /// Answers of the packet beyond [`MAX_ANSWERS`], not kept.
    pub omitted_answers: usize,
}

/// Answers kept per response: what the recommender accepts per record. A legitimate response to
/// a pod has far fewer, and a hostile one must not cost unbounded memory downstream.
pub const MAX_ANSWERS: usize = leash_records::wire::MAX_ANSWERS_PER_RECORD;

/// The most text (owner names, types and data, in bytes) the answers of one DNS record carry.
///
/// Name compression lets a 4 KiB payload expand to tens of kilobytes of text (128 answers
/// pointing at one 253-byte name); with this bound a record stays under about 4.5 KiB, as a
/// flow record with 16 names of 253 bytes does.
pub const MAX_ANSWER_BYTES: usize = 4096;

/// Parses a DNS response payload (for DNS over TCP, without the 2-byte length prefix).
///
/// Names are in their ASCII presentation form, as in the packet (case kept, trailing dot):
/// IDNs stay in punycode, and bytes outside a hostname's characters are escaped with `\`, so
/// such names fail [`checked_name`] instead of being shown in a look-alike form.
pub fn parse_response(payload: &[u8]) -> Result<DnsResponse> {
    let message =
        Message::from_vec(payload).map_err(|e| Error::Malformed(Chain(&e).to_string()))?;
    if message.metadata.message_type != MessageType::Response {
        return Err(Error::NotAResponse);
    }
    let question = message.queries.first().ok_or(Error::NoQuestion)?;
    let answers = message
        .answers
        .iter()
        .take(MAX_ANSWERS)
        .map(|record| Answer {
            name: record.name.to_ascii(),
            rtype: rtype_name(record.record_type()),
            data: match &record.data {
                RData::A(a) => AnswerData::Addr(IpAddr::V4(a.0)),
                RData::AAAA(a) => AnswerData::Addr(IpAddr::V6(a.0)),
                RData::CNAME(c) => AnswerData::Cname(c.0.to_ascii()),
                other => AnswerData::Other(display(other)),
            },
            ttl: record.ttl,
        })
        .collect();
    Ok(DnsResponse {
        id: message.metadata.id,
        query: question.name.to_ascii(),
        qtype: rtype_name(question.query_type),
        rcode: rcode_name(message.metadata.response_code),
        truncated: message.metadata.truncation,
        answers,
        omitted_answers: message.answers.len().saturating_sub(MAX_ANSWERS),
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

/// A DNS name as leash stores it: without the trailing dot, ASCII lower case.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// `name` (as in the packet, trailing dot allowed) in the form leash stores
/// ([`normalize`]), when [`names::dns_name`] accepts it. The root `.` is empty, so refused.
pub fn checked_name(name: &str) -> Result<String, NameError> {
    let normalized = normalize(name);
    names::dns_name(&normalized)?;
    Ok(normalized)
}

/// What of `response` leash may record, or `None` when nothing may. Counts what it leaves out
/// in `metrics` (`dns_names_skipped{reason}` per refused name, `dns_answers_cut{cause}` per
/// answer).
///
/// - A refused question name: the whole response is dropped (no record, no label). The answer
///   cannot be tied to a name the pod asked for, and a resolver never answers an address lookup
///   for such a name (a root `.` query has no address answers).
/// - An answer whose owner name, or whose CNAME target, is refused is left out: its address is
///   not labelled with that name, and a CNAME chain through a refused name is cut there (names
///   before it do not reach the address). So is one whose other data the recommender would
///   refuse ([`wire::answer_data`]: a `PTR`, `NS` or `DNAME` name as `invalid_name`; an `A` or
///   `AAAA` without an address, over-long text as `invalid_data`), which would cost the record.
/// - Answers beyond [`MAX_ANSWERS`] (`too_many`) and beyond [`MAX_ANSWER_BYTES`] of text
///   (`too_large`) are left out; later, smaller answers may still fit.
///
/// The answers kept both label flows (through the cache) and go into the record, so what a
/// record shows is what labelled the pod's flows.
pub fn check_response(mut response: DnsResponse, metrics: &Metrics) -> Option<DnsResponse> {
    metrics.add_dns_answers_cut("too_many", response.omitted_answers as u64);
    if let Err(error) = checked_name(&response.query) {
        metrics.add_dns_name_skipped(error.reason());
        metrics.add_dns_answers_cut("query_refused", response.answers.len() as u64);
        tracing::debug!(
            query = %names::display_prefix(&response.query),
            error = %Chain(&error),
            "skipping DNS response: question name refused"
        );
        return None;
    }
    let mut budget = MAX_ANSWER_BYTES;
    response.answers.retain(|answer| {
        let target = match &answer.data {
            AnswerData::Cname(target) => checked_name(target).map(drop),
            AnswerData::Addr(_) => Ok(()),
            // What the recommender checks of other data (a PTR's name, an A record's data
            // that hickory could not read as an address): else it refuses the whole record.
            AnswerData::Other(text) => match wire::answer_data(&answer.rtype, text) {
                Ok(()) => Ok(()),
                Err(AnswerDataError::Name(error)) => Err(error),
                Err(error) => {
                    metrics.add_dns_answers_cut("invalid_data", 1);
                    tracing::debug!(
                        rtype = %names::display_prefix(&answer.rtype),
                        error = %Chain(&error),
                        "skipping DNS answer: data refused"
                    );
                    return false;
                }
            },
        };
        if let Err(error) = checked_name(&answer.name).map(drop).and(target) {
            metrics.add_dns_name_skipped(error.reason());
            metrics.add_dns_answers_cut("invalid_name", 1);
            tracing::debug!(
                owner = %names::display_prefix(&answer.name),
                error = %Chain(&error),
                "skipping DNS answer: name refused"
            );
            return false;
        }
        let len = answer.text_len();
        if len > budget {
            metrics.add_dns_answers_cut("too_large", 1);
            return false;
        }
        budget -= len;
        true
    });
    Some(response)
}

/// The v1 `kind: dns` record for `response`, received from `server` at `time` by the process
/// `attribution` describes, on `node`.
///
/// Answers keep packet order (it is the order of the CNAME chain), names keep their trailing dot.
/// Give it a response [`check_response`] returned, so that every name passes the record
/// contract.
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

/// The agent's DNS path in one place: parse, check, count failures, cache, build the record.
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
    /// `time`: checks it ([`check_response`]), caches its answers under the pod key and returns
    /// the v1 record. A payload that does not parse is counted in `dns_parse_errors`, logged at
    /// debug level, and gives `None`; so does a response whose question name is refused
    /// (counted in `dns_names_skipped`).
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
                let response = check_response(response, &self.metrics)?;
                self.cache.insert(attribution.pod_key(), &response, time);
                Some(dns_record(&response, server, time, node, attribution))
            }
            Err(error) => {
                self.metrics.dns_parse_errors.inc();
                tracing::debug!(error = %Chain(&error), %server, cgroup = %attribution.cgroup, "skipping DNS payload");
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

/// Builders of real DNS messages with hickory-proto, for tests here and in `tests/` (feature
/// `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    // `make product-check` builds the library with this cfg and without the `testing`
    // feature: it passes only if this module is left out of the product.
    #[cfg(leash_product_build)]
    compile_error!("test-only code compiled into the product library");

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

    /// A test name from its text form (`.` is the root); panics on a bad test name.
    pub fn name(s: &str) -> Name {
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
    use hickory_proto::rr::{Name, Record};
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

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T09:00:00Z")
            .unwrap()
            .to_utc()
    }

    /// A name from raw label bytes (anything a packet can carry).
    fn raw(labels: &[&[u8]]) -> Name {
        let mut name = Name::from_labels(labels.iter().map(|l| l.to_vec())).unwrap();
        name.set_fqdn(true);
        name
    }

    fn a_record(owner: Name, addr: &str) -> Record {
        Record::from_rdata(
            owner,
            60,
            RData::A(hickory_proto::rr::rdata::A(addr.parse().unwrap())),
        )
    }

    fn cname_record(owner: Name, target: Name) -> Record {
        Record::from_rdata(
            owner,
            60,
            RData::CNAME(hickory_proto::rr::rdata::CNAME(target)),
        )
    }

    /// A NOERROR response to `query` A with `answers`, as wire bytes.
    fn hostile(query: Name, answers: Vec<Record>) -> Vec<u8> {
        let mut msg = Message::new(7, MessageType::Response, OpCode::Query);
        msg.add_query(Query::query(query, RecordType::A));
        for answer in answers {
            msg.add_answer(answer);
        }
        msg.to_vec().unwrap()
    }

    /// Every name in `record` (question, owners, CNAME targets) passes the shared check.
    fn assert_valid_names(record: &DnsRecord) {
        assert!(checked_name(&record.query).is_ok(), "{record:?}");
        for a in &record.answers {
            assert!(checked_name(&a.name).is_ok(), "{record:?}");
            if a.rtype == "CNAME" {
                assert!(checked_name(&a.data).is_ok(), "{record:?}");
            }
        }
    }

    fn tracker(metrics: &Metrics) -> DnsTracker {
        DnsTracker::new(DnsCacheConfig::default(), metrics.clone())
    }

    #[test]
    fn root_owned_answer_labels_nothing_and_is_counted() {
        let metrics = Metrics::new();
        let mut t = tracker(&metrics);
        let pod = Attribution::cgroup_only("/pod-a");
        let bytes = hostile(
            testing::name("evil.lab.test."),
            vec![
                a_record(Name::root(), "203.0.113.10"),
                a_record(testing::name("ok.lab.test."), "203.0.113.10"),
            ],
        );
        // The parser shows the root as `.`; without the check it became `""` in flow records.
        assert_eq!(parse_response(&bytes).unwrap().answers[0].name, ".");
        let record = t
            .observe(&bytes, ip("198.51.100.53"), t0(), "n1", &pod)
            .unwrap();
        assert_eq!(record.query, "evil.lab.test.");
        assert_eq!(
            record
                .answers
                .iter()
                .map(|a| a.name.as_str())
                .collect::<Vec<_>>(),
            ["ok.lab.test."]
        );
        assert_eq!(t.names_for(&pod, ip("203.0.113.10"), t0()), ["ok.lab.test"]);
        assert_eq!(metrics.dns_names_skipped_for("empty"), 1);
        assert_eq!(metrics.dns_answers_cut_for("invalid_name"), 1);
    }

    #[test]
    fn refused_question_drops_the_whole_response() {
        let metrics = Metrics::new();
        let mut t = tracker(&metrics);
        let pod = Attribution::cgroup_only("/pod-a");
        for query in [
            Name::root(),
            raw(&[b"a b", b"test"]),
            raw(&[b"<script>", b"test"]),
        ] {
            let bytes = hostile(
                query,
                vec![a_record(testing::name("ok.test."), "203.0.113.10")],
            );
            assert!(
                t.observe(&bytes, ip("198.51.100.53"), t0(), "n1", &pod)
                    .is_none()
            );
        }
        assert!(t.cache().is_empty(), "nothing labelled");
        assert_eq!(metrics.dns_names_skipped_for("empty"), 1);
        assert_eq!(metrics.dns_names_skipped_for("invalid_char"), 2);
        assert_eq!(metrics.dns_answers_cut_for("query_refused"), 3);
        assert_eq!(
            metrics.dns_parse_errors.get(),
            0,
            "these parse; they are refused"
        );
    }

    #[test]
    fn names_outside_the_character_set_are_refused_and_valid_ones_kept() {
        let cases: [(Name, Option<&str>); 9] = [
            (raw(&[b"Api", b"Stripe", b"test"]), Some("api.stripe.test")),
            (
                raw(&[b"_sip", b"_tcp", b"x-1", b"test"]),
                Some("_sip._tcp.x-1.test"),
            ),
            (
                raw(&[b"xn--bcher-kva", b"test"]),
                Some("xn--bcher-kva.test"),
            ),
            (raw(&[b"a.b", b"test"]), None),
            (raw(&["b\u{fc}cher".as_bytes(), b"test"]), None),
            (raw(&[b"a\nb", b"test"]), None),
            (raw(&[b"*", b"test"]), None),
            (raw(&[b"a\"b", b"test"]), None),
            (Name::root(), None),
        ];
        for (owner, want) in cases {
            let metrics = Metrics::new();
            let mut t = tracker(&metrics);
            let pod = Attribution::cgroup_only("/p");
            let bytes = hostile(
                testing::name("q.test."),
                vec![a_record(owner.clone(), "203.0.113.7")],
            );
            let record = t
                .observe(&bytes, ip("198.51.100.53"), t0(), "n1", &pod)
                .unwrap();
            assert_valid_names(&record);
            let names = t.names_for(&pod, ip("203.0.113.7"), t0());
            match want {
                Some(want) => {
                    assert_eq!(names, [want], "{owner:?}");
                    assert_eq!(record.answers.len(), 1);
                }
                None => {
                    assert!(names.is_empty(), "{owner:?} labelled {names:?}");
                    assert!(record.answers.is_empty());
                    assert_eq!(metrics.dns_answers_cut_for("invalid_name"), 1, "{owner:?}");
                }
            }
        }
    }

    #[test]
    fn names_and_labels_over_the_length_limits_are_refused() {
        // The wire format cannot carry a label over 63 bytes or a name over 255 octets, so these
        // come from text; the check is the same one the parser's output goes through.
        let long_label = format!("{}.test.", "a".repeat(64));
        assert_eq!(
            checked_name(&long_label),
            Err(NameError::LabelTooLong { len: 64 })
        );
        let long_name = format!("{}a.", "abcdefghi.".repeat(26));
        assert!(matches!(
            checked_name(&long_name),
            Err(NameError::TooLong { .. })
        ));
        assert_eq!(checked_name("."), Err(NameError::Empty));
        assert_eq!(checked_name(""), Err(NameError::Empty));
        // A 253-character name with 63-byte labels, the longest there is, passes.
        let longest = format!("{0}.{0}.{0}.{1}.", "a".repeat(63), "b".repeat(61));
        assert_eq!(normalize(&longest).len(), 253);
        assert!(checked_name(&longest).is_ok());
        // Escapes the parser writes for unusual bytes are refused (as `\` is).
        let escaped = parse_response(&hostile(
            testing::name("q.test."),
            vec![a_record(raw(&[&[0xff, 0x01], b"test"]), "203.0.113.7")],
        ))
        .unwrap();
        assert!(
            escaped.answers[0].name.contains('\\'),
            "{:?}",
            escaped.answers[0].name
        );
        assert_eq!(
            checked_name(&escaped.answers[0].name).map_err(|e| e.reason()),
            Err("invalid_char")
        );
    }

    #[test]
    fn cname_chain_through_a_refused_name_is_cut() {
        let metrics = Metrics::new();
        let mut t = tracker(&metrics);
        let pod = Attribution::cgroup_only("/p");
        let bad = raw(&[b"b c", b"test"]);
        let bytes = hostile(
            testing::name("a.test."),
            vec![
                cname_record(testing::name("a.test."), bad.clone()),
                cname_record(bad, testing::name("c.test.")),
                a_record(testing::name("c.test."), "203.0.113.8"),
            ],
        );
        let record = t
            .observe(&bytes, ip("198.51.100.53"), t0(), "n1", &pod)
            .unwrap();
        assert_valid_names(&record);
        assert_eq!(
            record
                .answers
                .iter()
                .map(|a| (a.name.as_str(), a.rtype.as_str()))
                .collect::<Vec<_>>(),
            [("c.test.", "A")]
        );
        // `a.test` led to the address only through the refused name: it does not label it.
        assert_eq!(t.names_for(&pod, ip("203.0.113.8"), t0()), ["c.test"]);
        assert_eq!(metrics.dns_answers_cut_for("invalid_name"), 2);
        assert_eq!(metrics.dns_names_skipped_for("invalid_char"), 2);
    }

    #[test]
    fn answers_are_bounded_in_count_and_bytes() {
        let metrics = Metrics::new();
        // 130 answers: 2 over MAX_ANSWERS.
        let many: Vec<Record> = (0..130u8)
            .map(|i| a_record(testing::name("many.test."), &format!("198.51.100.{i}")))
            .collect();
        let response = parse_response(&hostile(testing::name("many.test."), many)).unwrap();
        assert_eq!(
            (response.answers.len(), response.omitted_answers),
            (MAX_ANSWERS, 2)
        );
        let kept = check_response(response, &metrics).unwrap();
        assert_eq!(kept.answers.len(), MAX_ANSWERS);
        assert_eq!(metrics.dns_answers_cut_for("too_many"), 2);

        // 40 answers owned by a 253-character name: compression makes each cost a few bytes of
        // packet, but 4,400 bytes of text; those past the budget are cut, a short one after
        // them still fits.
        let long = format!("{0}.{0}.{0}.{1}.", "a".repeat(63), "b".repeat(61));
        let mut answers: Vec<Record> = (0..40u8)
            .map(|i| a_record(testing::name(&long), &format!("198.51.100.{i}")))
            .collect();
        answers.push(a_record(testing::name("s.test."), "203.0.113.9"));
        let response = parse_response(&hostile(testing::name("s.test."), answers)).unwrap();
        let kept = check_response(response, &metrics).unwrap();
        let text: usize = kept.answers.iter().map(Answer::text_len).sum();
        assert!(text <= MAX_ANSWER_BYTES, "{text}");
        let fit = MAX_ANSWER_BYTES / (254 + 1 + 15);
        assert_eq!(kept.answers.len(), fit + 1);
        assert_eq!(kept.answers[fit].name, "s.test.");
        assert_eq!(metrics.dns_answers_cut_for("too_large"), (40 - fit) as u64);
    }

    /// Hostile names: raw labels of any bytes, the root among them.
    fn any_name() -> impl Strategy<Value = Name> {
        prop_oneof![
            1 => Just(Name::root()),
            8 => proptest::collection::vec(
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 1..64),
                    proptest::collection::vec(
                        proptest::sample::select(b"abcAB0-_.".to_vec()),
                        1..64
                    ),
                ],
                1..5,
            )
            .prop_map(|labels| {
                Name::from_labels(labels)
                    .map(|mut n| {
                        n.set_fqdn(true);
                        n
                    })
                    .unwrap_or_else(|_| Name::root())
            }),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            if let Ok(response) = parse_response(&bytes) {
                let metrics = Metrics::new();
                if let Some(checked) = check_response(response, &metrics) {
                    let attribution = Attribution::cgroup_only("/p");
                    let record = dns_record(&checked, ip("198.51.100.53"), t0(), "n1", &attribution);
                    assert_valid_names(&record);
                }
            }
        }

        /// Hostile responses (any owner, CNAME and question names, up to 40 answers) never make
        /// a record or a label with a name the shared check refuses, nor more names per address
        /// than the bound.
        #[test]
        fn hostile_responses_yield_only_valid_bounded_names(
            query in any_name(),
            answers in proptest::collection::vec(
                (any_name(), prop_oneof![
                    (0u8..4).prop_map(Err::<Name, u8>),
                    any_name().prop_map(Ok),
                ]),
                0..40,
            ),
            max_names in 1usize..6,
        ) {
            let records: Vec<Record> = answers
                .into_iter()
                .map(|(owner, data)| match data {
                    Err(i) => a_record(owner, &format!("203.0.113.{i}")),
                    Ok(target) => cname_record(owner, target),
                })
                .collect();
            let mut msg = Message::new(7, MessageType::Response, OpCode::Query);
            msg.add_query(Query::query(query, RecordType::A));
            for r in records {
                msg.add_answer(r);
            }
            let Ok(bytes) = msg.to_vec() else { return Ok(()) };
            let metrics = Metrics::new();
            let mut t = DnsTracker::new(
                DnsCacheConfig { max_names, ..DnsCacheConfig::default() },
                metrics.clone(),
            );
            let pod = Attribution::cgroup_only("/p");
            // Twice, so that a second answer adds names to the same addresses.
            for _ in 0..2 {
                if let Some(record) = t.observe(&bytes, ip("198.51.100.53"), t0(), "n1", &pod) {
                    assert_valid_names(&record);
                }
            }
            for i in 0..4u8 {
                let names = t.names_for(&pod, IpAddr::from([203, 0, 113, i]), t0());
                prop_assert!(names.len() <= max_names, "{names:?}");
                for name in &names {
                    prop_assert!(names::dns_name(name).is_ok(), "{name:?}");
                    prop_assert_eq!(name, &name.to_ascii_lowercase());
                }
            }
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
                let metrics = Metrics::new();
                if let Some(checked) = check_response(r, &metrics) {
                    let attribution = Attribution::cgroup_only("/p");
                    assert_valid_names(&dns_record(&checked, ip("198.51.100.53"), t0(), "n1", &attribution));
                }
            }
        }
    }
}
