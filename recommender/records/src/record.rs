//! The v1 record contract: one JSON object per line, `"v":1`, `"kind":"flow"|"dns"`.

use std::{
    fmt,
    io::BufRead,
    net::IpAddr,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

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

/// Serialization shape: `v` and `kind` first, then the record's own fields.
#[derive(Serialize)]
struct Tagged<'a, T> {
    v: u32,
    kind: &'static str,
    #[serde(flatten)]
    inner: &'a T,
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Record::Flow(f) => Tagged {
                v: VERSION,
                kind: "flow",
                inner: f,
            }
            .serialize(s),
            Record::Dns(d) => Tagged {
                v: VERSION,
                kind: "dns",
                inner: d,
            }
            .serialize(s),
        }
    }
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
}

/// A record that could not be read, with where it came from.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading the input failed.
    #[error("{path}: read failed: {source}")]
    Io {
        /// The input's name (`-` for stdin).
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
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

/// Reads v1 records from JSON lines. Blank lines are skipped. Stops at the first bad line,
/// reporting `path:line`.
pub fn read_records(
    reader: impl BufRead,
    path: &Path,
) -> impl Iterator<Item = Result<Located, RecordError>> {
    let path = path.to_path_buf();
    let mut failed = false;
    reader.lines().enumerate().filter_map(move |(i, line)| {
        if failed {
            return None;
        }
        let line_no = i + 1;
        let text = match line {
            Ok(t) => t,
            Err(source) => {
                failed = true;
                return Some(Err(RecordError::Io {
                    path: path.clone(),
                    source,
                }));
            }
        };
        if text.trim().is_empty() {
            return None;
        }
        Some(
            serde_json::from_str::<Record>(&text)
                .map(|record| Located {
                    line: line_no,
                    record,
                })
                .map_err(|e| {
                    failed = true;
                    RecordError::Invalid {
                        path: path.clone(),
                        line: line_no,
                        message: e.to_string(),
                    }
                }),
        )
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

    proptest::proptest! {
        #[test]
        fn reader_never_panics(s in ".{0,200}") {
            for r in read_records(s.as_bytes(), Path::new("x")) {
                let _ = r;
            }
        }
    }
}
