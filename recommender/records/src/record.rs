//! The v1 record contract: one JSON object per line, `"v":1`, `"kind":"flow"|"dns"`.

use std::{
    fmt,
    io::Read,
    net::IpAddr,
    path::{Path, PathBuf},
};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::error::Chain;

/// The only record version this crate reads and writes.
pub const VERSION: u32 = 1;

/// The pod a record is attributed to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PodRef {
    /// The pod's `metadata.uid`; may be empty when only namespace and name are known.
    #[serde(default)]
    pub uid: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
}

/// A transport protocol, spelled as NetworkPolicy spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP, connected or not.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
}

impl Protocol {
    /// The NetworkPolicy spelling: `TCP`, `UDP` or `SCTP`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Protocol::Tcp),
            "UDP" => Ok(Protocol::Udp),
            "SCTP" => Ok(Protocol::Sctp),
            _ => Err(format!(
                "unknown protocol {s:?} (expected TCP, UDP or SCTP)"
            )),
        }
    }
}

/// TCP connection outcomes observed for a flow key, as deltas like `count`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Connections that reached ESTABLISHED.
    pub established: u64,
    /// Connections that failed before ESTABLISHED (refused, reset, timed out).
    pub failed: u64,
}

/// Outbound connections from one cgroup to one destination, aggregated.
///
/// `count` is a delta: the events for this key since its previous record. Summing `count`
/// over records gives the exact total; `first_seen` and `last_seen` bound those events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    /// The node that observed the flow.
    #[serde(default)]
    pub node: String,
    /// The pod, or `None` when the cgroup belongs to no known pod.
    pub pod: Option<PodRef>,
    /// The cgroup v2 path, relative to the cgroup mount.
    #[serde(default)]
    pub cgroup: String,
    /// The transport protocol.
    pub protocol: Protocol,
    /// The destination address as the socket saw it (before any DNAT).
    pub dst: IpAddr,
    /// The destination port.
    pub dst_port: u16,
    /// Events since this key's previous record.
    pub count: u64,
    /// Earliest event bound.
    pub first_seen: DateTime<Utc>,
    /// Latest event bound.
    pub last_seen: DateTime<Utc>,
    /// DNS names that resolved to `dst` for this pod, sorted, without trailing dots.
    #[serde(default)]
    pub names: Vec<String>,
    /// TCP outcomes, when the kernel reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

/// One resource record of a DNS answer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DnsAnswer {
    /// The owner name, as in the packet (fully qualified, with trailing dot).
    pub name: String,
    /// The record type, e.g. `A`, `AAAA`, `CNAME`.
    #[serde(rename = "type")]
    pub rtype: String,
    /// The record data in presentation form, e.g. `203.0.113.10` or `edge.stripe.test.`.
    pub data: String,
    /// The TTL in seconds.
    pub ttl: u32,
}

/// A DNS response received by a pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRecord {
    /// The node that observed the answer.
    #[serde(default)]
    pub node: String,
    /// The pod, or `None` when unattributed.
    pub pod: Option<PodRef>,
    /// The cgroup v2 path, relative to the cgroup mount.
    #[serde(default)]
    pub cgroup: String,
    /// The resolver address the answer came from (the pod's view, before any DNAT).
    pub server: IpAddr,
    /// The queried name, with trailing dot.
    pub query: String,
    /// The query type, e.g. `A`.
    pub qtype: String,
    /// The response code, e.g. `NOERROR`, `NXDOMAIN`.
    pub rcode: String,
    /// The answer section.
    #[serde(default)]
    pub answers: Vec<DnsAnswer>,
    /// When the answer was received.
    pub time: DateTime<Utc>,
}

/// A v1 record: a flow or a DNS answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `"kind":"flow"`.
    Flow(FlowRecord),
    /// `"kind":"dns"`.
    Dns(DnsRecord),
}

impl Serialize for Record {
    // Written out field by field rather than with `#[serde(flatten)]` around the record types:
    // flatten goes through serde's map adapter, and this runs once per record the agent writes.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        match self {
            Record::Flow(f) => {
                let mut st = s.serialize_struct("Record", 14)?;
                st.serialize_field("v", &VERSION)?;
                st.serialize_field("kind", "flow")?;
                st.serialize_field("node", &f.node)?;
                st.serialize_field("pod", &f.pod)?;
                st.serialize_field("cgroup", &f.cgroup)?;
                st.serialize_field("protocol", &f.protocol)?;
                st.serialize_field("dst", &f.dst)?;
                st.serialize_field("dst_port", &f.dst_port)?;
                st.serialize_field("count", &f.count)?;
                st.serialize_field("first_seen", &Rfc3339(&f.first_seen))?;
                st.serialize_field("last_seen", &Rfc3339(&f.last_seen))?;
                st.serialize_field("names", &f.names)?;
                if let Some(outcome) = &f.outcome {
                    st.serialize_field("outcome", outcome)?;
                }
                st.end()
            }
            Record::Dns(d) => {
                let mut st = s.serialize_struct("Record", 11)?;
                st.serialize_field("v", &VERSION)?;
                st.serialize_field("kind", "dns")?;
                st.serialize_field("node", &d.node)?;
                st.serialize_field("pod", &d.pod)?;
                st.serialize_field("cgroup", &d.cgroup)?;
                st.serialize_field("server", &d.server)?;
                st.serialize_field("query", &d.query)?;
                st.serialize_field("qtype", &d.qtype)?;
                st.serialize_field("rcode", &d.rcode)?;
                st.serialize_field("answers", &d.answers)?;
                st.serialize_field("time", &Rfc3339(&d.time))?;
                st.end()
            }
        }
    }
}

/// A UTC time written as RFC 3339 with nanoseconds (`2026-11-25T09:00:00.000000001Z`).
///
/// Formatted by hand into a stack buffer: chrono's general formatter costs about 200 ns per
/// timestamp, a fifth of a whole record. Dates before year 0 or after 9999 fall back to chrono.
struct Rfc3339<'a>(&'a DateTime<Utc>);

impl Serialize for Rfc3339<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match format_rfc3339(self.0) {
            Some(buf) => {
                // Only ASCII digits and separators were written.
                let text = std::str::from_utf8(&buf).map_err(serde::ser::Error::custom)?;
                s.serialize_str(text)
            }
            None => self.0.serialize(s),
        }
    }
}

fn format_rfc3339(t: &DateTime<Utc>) -> Option<[u8; 30]> {
    let secs = t.timestamp();
    let nanos = t.timestamp_subsec_nanos().min(999_999_999);
    let sod = secs.rem_euclid(86_400);
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    b[..10].copy_from_slice(&civil_date(secs.div_euclid(86_400))?);
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(11, 2, (sod / 3600) as u64);
    put(14, 2, (sod % 3600 / 60) as u64);
    put(17, 2, (sod % 60) as u64);
    put(20, 9, u64::from(nanos));
    Some(b)
}

/// `YYYY-MM-DD` of `days` since 1970-01-01; `None` outside years 0..=9999 (which RFC 3339
/// cannot write). Shared by the record serialiser and the agent's JSON writer, so both print
/// the same dates.
pub fn civil_date(days: i64) -> Option<[u8; 10]> {
    // Civil date from days since 1970-01-01 (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut b = *b"0000-00-00";
    let mut put = |at: usize, width: usize, mut v: u64| {
        for i in (0..width).rev() {
            b[at + i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year.unsigned_abs());
    put(5, 2, month.unsigned_abs());
    put(8, 2, day.unsigned_abs());
    Some(b)
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut value = serde_json::Value::deserialize(d)?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| de::Error::custom("a record must be a JSON object"))?;
        match obj.remove("v") {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
            Some(other) => {
                return Err(de::Error::custom(format!(
                    "unsupported record version {other} (this build reads v{VERSION})"
                )));
            }
            None => return Err(de::Error::custom("missing field `v`")),
        }
        let kind = match obj.remove("kind") {
            Some(serde_json::Value::String(k)) => k,
            Some(other) => return Err(de::Error::custom(format!("invalid `kind` {other}"))),
            None => return Err(de::Error::custom("missing field `kind`")),
        };
        match kind.as_str() {
            "flow" => serde_json::from_value(value)
                .map(Record::Flow)
                .map_err(de::Error::custom),
            "dns" => serde_json::from_value(value)
                .map(Record::Dns)
                .map_err(de::Error::custom),
            other => Err(de::Error::custom(format!(
                "unknown record kind {other:?} (expected \"flow\" or \"dns\")"
            ))),
        }
    }
}

impl Record {
    /// The record as one JSON line, without the trailing newline.
    pub fn to_json_line(&self) -> String {
        // Serializing these plain structs to a String cannot fail: no maps with non-string
        // keys, no custom serializers that error.
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The pod the record is attributed to, if any.
    pub fn pod(&self) -> Option<&PodRef> {
        match self {
            Record::Flow(f) => f.pod.as_ref(),
            Record::Dns(d) => d.pod.as_ref(),
        }
    }

    /// Checks the record's times with [`check_flow_times`] or [`check_time`].
    pub fn check_times(&self, now: DateTime<Utc>) -> Result<(), TimeError> {
        match self {
            Record::Flow(f) => check_flow_times(f.first_seen, f.last_seen, now),
            Record::Dns(d) => check_time("time", d.time, now),
        }
    }
}

/// How far after the reader's clock a record's time may lie: node clocks disagree a little,
/// never by a day.
pub const MAX_CLOCK_SKEW: TimeDelta = TimeDelta::days(1);

/// A record time outside what can have been observed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not after 1970-01-01T00:00:00Z (the wire's "unset" and earlier).
    #[error("{field} {time} is not after 1970-01-01T00:00:00Z")]
    BeforeEpoch {
        /// The field.
        field: &'static str,
        /// Its value.
        time: DateTime<Utc>,
    },
    /// More than [`MAX_CLOCK_SKEW`] after the current time.
    #[error("{field} {time} is more than a day after the current time")]
    Future {
        /// The field.
        field: &'static str,
        /// Its value.
        time: DateTime<Utc>,
    },
    /// `first_seen` after `last_seen`.
    #[error("first_seen {first} is after last_seen {last}")]
    Order {
        /// first_seen.
        first: DateTime<Utc>,
        /// last_seen.
        last: DateTime<Utc>,
    },
}

/// The one check of a record time, for every reader (files, the store's ingest): after the
/// Unix epoch and at most [`MAX_CLOCK_SKEW`] after `now`. Without it a bogus time (1900, or
/// year 3000) would stretch a workload's observed span and hide that it was observed briefly.
pub fn check_time(
    field: &'static str,
    time: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), TimeError> {
    if time <= DateTime::UNIX_EPOCH {
        return Err(TimeError::BeforeEpoch { field, time });
    }
    if now
        .checked_add_signed(MAX_CLOCK_SKEW)
        .is_some_and(|limit| time > limit)
    {
        return Err(TimeError::Future { field, time });
    }
    Ok(())
}

/// [`check_time`] for both bounds of a flow, and `first_seen <= last_seen`.
pub fn check_flow_times(
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), TimeError> {
    check_time("first_seen", first, now)?;
    check_time("last_seen", last, now)?;
    if first > last {
        return Err(TimeError::Order { first, last });
    }
    Ok(())
}

/// A record that could not be read, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading the input failed.
    #[error("{path}: read failed")]
    Io {
        /// The input's name (`-` for stdin).
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The input exceeds its bounds, or is not a readable file.
    #[error(transparent)]
    Input(#[from] crate::bounded::InputError),
    /// A line is not a valid v1 record.
    #[error("{path}:{line}: invalid record: {message}")]
    Invalid {
        /// The input's name (`-` for stdin).
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// A record together with its 1-based line number in its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// 1-based line number.
    pub line: usize,
    /// The record.
    pub record: Record,
}

/// Reads v1 records from JSON lines within the default [`Limits`](crate::bounded::Limits).
/// Blank lines are skipped. Stops at the first bad line, reporting `path:line`.
pub fn read_records(
    reader: impl Read,
    path: &Path,
) -> impl Iterator<Item = Result<Located, RecordError>> {
    read_records_limited(reader, path, crate::bounded::Limits::default())
}

/// [`read_records`] within `limits`. Every record's times pass [`Record::check_times`].
pub fn read_records_limited(
    reader: impl Read,
    path: &Path,
    limits: crate::bounded::Limits,
) -> impl Iterator<Item = Result<Located, RecordError>> {
    let path = path.to_path_buf();
    let now = Utc::now();
    let mut lines = crate::bounded::LineReader::new(reader, &path, limits);
    let mut failed = false;
    std::iter::from_fn(move || {
        while !failed {
            let invalid = |line: usize, message: String| RecordError::Invalid {
                path: path.clone(),
                line,
                message,
            };
            let next = lines.next_line().map(|l| l.map(<[u8]>::to_vec));
            let bytes = match next {
                Ok(Some(b)) => b,
                Ok(None) => return None,
                Err(e) => {
                    failed = true;
                    return Some(Err(e.into()));
                }
            };
            let line = lines.line();
            let Ok(text) = std::str::from_utf8(&bytes) else {
                failed = true;
                return Some(Err(invalid(line, "invalid UTF-8".into())));
            };
            if text.trim().is_empty() {
                continue;
            }
            let result = serde_json::from_str::<Record>(text)
                .map_err(|e| Chain(&e).to_string())
                .and_then(|record| {
                    record.check_times(now).map_err(|e| Chain(&e).to_string())?;
                    Ok(Located { line, record })
                });
            failed = result.is_err();
            return Some(result.map_err(|message| invalid(line, message)));
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: &str = r#"{"v":1,"kind":"flow","node":"n1","pod":{"uid":"u1","namespace":"shop","name":"payment-7d4-x2"},"cgroup":"/kubepods.slice/x","protocol":"TCP","dst":"203.0.113.10","dst_port":443,"count":12,"first_seen":"2026-11-25T09:00:00Z","last_seen":"2026-11-25T09:00:05Z","names":["api.stripe.test"]}"#;
    const DNS: &str = r#"{"v":1,"kind":"dns","node":"n1","pod":null,"cgroup":"/system.slice/x","server":"10.96.0.10","query":"api.stripe.test.","qtype":"A","rcode":"NOERROR","answers":[{"name":"api.stripe.test.","type":"A","data":"203.0.113.10","ttl":60}],"time":"2026-11-25T09:00:00Z"}"#;

    #[test]
    fn flow_round_trips_with_v_and_kind_first() {
        let r: Record = serde_json::from_str(FLOW).unwrap();
        let Record::Flow(f) = &r else {
            panic!("expected a flow")
        };
        assert_eq!(f.count, 12);
        assert_eq!(f.protocol, Protocol::Tcp);
        assert_eq!(f.pod.as_ref().unwrap().name, "payment-7d4-x2");
        let line = r.to_json_line();
        assert!(line.starts_with(r#"{"v":1,"kind":"flow","#), "{line}");
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
    }

    #[test]
    fn dns_round_trips_and_null_pod_is_none() {
        let r: Record = serde_json::from_str(DNS).unwrap();
        let Record::Dns(d) = &r else {
            panic!("expected dns")
        };
        assert!(d.pod.is_none());
        assert_eq!(d.answers[0].rtype, "A");
        assert_eq!(
            serde_json::from_str::<Record>(&r.to_json_line()).unwrap(),
            r
        );
    }

    #[test]
    fn reader_names_path_and_line() {
        let input = format!("{FLOW}\n\n{{\"v\":1,\"kind\":\"flow\"}}\n{DNS}\n");
        let got: Vec<_> = read_records(input.as_bytes(), Path::new("flows.jsonl")).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap().line, 1);
        let err = got[1].as_ref().unwrap_err().to_string();
        assert!(err.starts_with("flows.jsonl:3: invalid record:"), "{err}");
    }

    #[test]
    fn times_outside_what_can_be_observed_are_rejected_with_their_line() {
        let now: DateTime<Utc> = "2026-11-26T00:00:00Z".parse().unwrap();
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert!(
            check_flow_times(t("2026-11-25T09:00:00Z"), t("2026-11-26T23:59:59Z"), now).is_ok()
        );
        for (first, last, want) in [
            (
                "1969-12-31T23:59:59Z",
                "2026-11-25T09:00:00Z",
                "first_seen 1969-12-31 23:59:59 UTC is not after 1970-01-01",
            ),
            (
                "1970-01-01T00:00:00Z",
                "2026-11-25T09:00:00Z",
                "not after 1970-01-01",
            ),
            (
                "2026-11-25T09:00:00Z",
                "2026-11-27T00:00:01Z",
                "last_seen 2026-11-27 00:00:01 UTC is more than a day after",
            ),
            (
                "2026-11-25T09:00:01Z",
                "2026-11-25T09:00:00Z",
                "first_seen 2026-11-25 09:00:01 UTC is after last_seen",
            ),
        ] {
            let err = check_flow_times(t(first), t(last), now)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{first} {last}: {err}");
        }
        let future = FLOW.replace("2026-11-25T09:00:05Z", "2999-01-01T00:00:00Z");
        let old = DNS.replace("2026-11-25T09:00:00Z", "1900-01-01T00:00:00Z");
        let reversed = FLOW.replace("09:00:00Z", "09:00:09Z");
        let input = format!("{FLOW}\n{future}\n");
        let got: Vec<_> = read_records(input.as_bytes(), Path::new("f.jsonl")).collect();
        let err = got[1].as_ref().unwrap_err().to_string();
        assert!(
            err.starts_with("f.jsonl:2: invalid record: last_seen 2999"),
            "{err}"
        );
        for (text, want) in [(old, "time 1900"), (reversed, "is after last_seen")] {
            let got: Vec<_> = read_records(text.as_bytes(), Path::new("f.jsonl")).collect();
            let err = got[0].as_ref().unwrap_err().to_string();
            assert!(
                err.starts_with("f.jsonl:1: invalid record: ") && err.contains(want),
                "{err}"
            );
        }
    }

    #[test]
    fn the_wire_applies_the_same_time_check() {
        let dns = |t: DateTime<Utc>| crate::wire::v1::Dns {
            pod: None,
            cgroup: String::new(),
            server: vec![203, 0, 113, 53],
            query: "a.test.".into(),
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            answers: Vec::new(),
            time_unix_nanos: t.timestamp_nanos_opt().unwrap(),
        };
        let now = Utc::now();
        let ok = crate::wire::dns_from_wire("n1", crate::wire::RecordIndex::Dns(0), dns(now));
        assert!(ok.is_ok(), "{ok:?}");
        let late = now + TimeDelta::days(2);
        let err = crate::wire::dns_from_wire("n1", crate::wire::RecordIndex::Dns(0), dns(late))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is more than a day after the current time"),
            "{err}"
        );
    }

    #[test]
    fn rejects_other_versions_and_kinds() {
        for (text, want) in [
            (r#"{"v":2,"kind":"flow"}"#, "unsupported record version 2"),
            (r#"{"kind":"flow"}"#, "missing field `v`"),
            (r#"{"v":1,"kind":"weird"}"#, "unknown record kind"),
            (r#"[1]"#, "must be a JSON object"),
        ] {
            let err = serde_json::from_str::<Record>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_with_nanoseconds() {
        let t: DateTime<Utc> = "2024-02-29T23:59:59.000000001Z".parse().unwrap();
        assert_eq!(
            format_rfc3339(&t).map(|b| String::from_utf8(b.to_vec()).unwrap()),
            Some("2024-02-29T23:59:59.000000001Z".to_owned())
        );
    }

    proptest::proptest! {
        #[test]
        fn fast_timestamps_round_trip_through_chrono(secs in -62_000_000_000i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
            let t = DateTime::<Utc>::from_timestamp(secs, nanos).unwrap();
            let text = serde_json::to_string(&Rfc3339(&t)).unwrap();
            let back: DateTime<Utc> = serde_json::from_str(&text).unwrap();
            proptest::prop_assert_eq!(back, t);
            if let Some(b) = format_rfc3339(&t) {
                let chrono = t.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
                proptest::prop_assert_eq!(std::str::from_utf8(&b).unwrap(), chrono.as_str());
            }
        }

        #[test]
        fn reader_never_panics(s in ".{0,200}") {
            for r in read_records(s.as_bytes(), Path::new("x")) {
                let _ = r;
            }
        }
    }
}
