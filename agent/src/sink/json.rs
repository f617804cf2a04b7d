//! The v1 flow record written straight from a [`FlowView`] into a byte buffer.
//!
//! This runs once per output record, and going through `serde_json` with an owned
//! [`leash_records::FlowRecord`] cost the agent about 0.9 µs per record (building owned strings,
//! then serde's generic machinery). The output is byte-identical to `serde_json`'s for the
//! equivalent [`leash_records::Record::Flow`] (same field order, escaping, number and time
//! formats); a property test holds the two together.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use leash_records::{
    Record,
    record::{VERSION, civil_date},
};

use super::FlowView;

/// Appends `view` as one JSON object (no trailing newline).
pub(super) fn write_flow(view: &FlowView<'_>, out: &mut Vec<u8>) {
    let Some((first, last)) = times(view) else {
        // Years outside 0..=9999: the contract's serialiser decides (never on a real clock).
        let _ = serde_json::to_writer(&mut *out, &Record::Flow(view.to_record()));
        return;
    };
    write_prefix(view, out);
    write_rest(view, &first, &last, out);
}

/// The two timestamps of `view`, formatted; `None` outside years 0..=9999. A delta of one
/// event (or of events within one nanosecond) has equal bounds: formatted once.
fn times(view: &FlowView<'_>) -> Option<([u8; 30], [u8; 30])> {
    let first = rfc3339(&view.first_seen)?;
    let last = if view.last_seen == view.first_seen {
        first
    } else {
        rfc3339(&view.last_seen)?
    };
    Some((first, last))
}

/// [`write_flow`] for a run of records that mostly share node, pod and cgroup (the flush
/// writes them grouped by cgroup): that part of the record, the longest, is escaped once per
/// group and copied from here for the others.
#[derive(Debug, Default)]
pub(super) struct FlowWriter {
    /// `{"v":1,...,"cgroup":"…"` of `node`/`pod`/`cgroup`; empty until the first record.
    prefix: Vec<u8>,
    node: String,
    /// uid, namespace, name.
    pod: Option<[String; 3]>,
    cgroup: String,
}

impl FlowWriter {
    /// Appends `view` as one JSON object (no trailing newline); the same bytes as
    /// [`write_flow`].
    pub(super) fn write(&mut self, view: &FlowView<'_>, out: &mut Vec<u8>) {
        let Some((first, last)) = times(view) else {
            write_flow(view, out);
            return;
        };
        if !self.holds(view) {
            self.node.clear();
            self.node.push_str(view.node);
            self.cgroup.clear();
            self.cgroup.push_str(view.cgroup);
            self.pod = view
                .pod
                .map(|p| [p.uid.to_owned(), p.namespace.to_owned(), p.name.to_owned()]);
            self.prefix.clear();
            write_prefix(view, &mut self.prefix);
        }
        out.extend_from_slice(&self.prefix);
        write_rest(view, &first, &last, out);
    }

    /// Whether the cached prefix is `view`'s.
    fn holds(&self, view: &FlowView<'_>) -> bool {
        !self.prefix.is_empty()
            && self.cgroup == view.cgroup
            && self.node == view.node
            && match (&self.pod, &view.pod) {
                (None, None) => true,
                (Some([uid, namespace, name]), Some(p)) => {
                    uid == p.uid && namespace == p.namespace && name == p.name
                }
                _ => false,
            }
    }
}

/// The record up to and including the cgroup: `{"v":1,"kind":"flow",...,"cgroup":"…"`.
fn write_prefix(view: &FlowView<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"v\":");
    uint(u64::from(VERSION), out);
    out.extend_from_slice(b",\"kind\":\"flow\",\"node\":");
    string(view.node, out);
    out.extend_from_slice(b",\"pod\":");
    match &view.pod {
        Some(pod) => {
            out.extend_from_slice(b"{\"uid\":");
            string(pod.uid, out);
            out.extend_from_slice(b",\"namespace\":");
            string(pod.namespace, out);
            out.extend_from_slice(b",\"name\":");
            string(pod.name, out);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"cgroup\":");
    string(view.cgroup, out);
}

/// The record after the cgroup, with the formatted timestamps.
fn write_rest(view: &FlowView<'_>, first: &[u8; 30], last: &[u8; 30], out: &mut Vec<u8>) {
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(view.protocol.as_str().as_bytes());
    out.extend_from_slice(b"\",\"dst\":\"");
    ip(view.dst, out);
    out.extend_from_slice(b"\",\"dst_port\":");
    uint(u64::from(view.dst_port), out);
    out.extend_from_slice(b",\"count\":");
    uint(view.count, out);
    out.extend_from_slice(b",\"first_seen\":\"");
    out.extend_from_slice(first);
    out.extend_from_slice(b"\",\"last_seen\":\"");
    out.extend_from_slice(last);
    out.extend_from_slice(b"\",\"names\":[");
    for (i, name) in view.names.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(name, out);
    }
    out.push(b']');
    if let Some(outcome) = &view.outcome {
        out.extend_from_slice(b",\"outcome\":{\"established\":");
        uint(outcome.established, out);
        out.extend_from_slice(b",\"failed\":");
        uint(outcome.failed, out);
        out.push(b'}');
    }
    out.push(b'}');
}

/// A JSON string with `serde_json`'s escaping: `"` and `\` escaped, control characters as their
/// short escapes or `\u00xx` (lower-case hex), everything else (including non-ASCII) verbatim.
fn string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    // Fast path, almost always taken: nothing to escape. Checked a chunk at a time without
    // early exit, so the compiler can use vector instructions.
    let clean = bytes.chunks(16).all(|chunk| {
        !chunk.iter().fold(false, |acc, &b| {
            acc | (b < 0x20) | (b == b'"') | (b == b'\\')
        })
    });
    if clean {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A decimal unsigned integer, two digits at a time.
fn uint(mut v: u64, out: &mut Vec<u8>) {
    if v < 10 {
        out.push(b'0' + v as u8);
        return;
    }
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    while v >= 100 {
        at -= 2;
        buf[at..at + 2].copy_from_slice(two_digits((v % 100) as usize));
        v /= 100;
    }
    if v >= 10 {
        at -= 2;
        buf[at..at + 2].copy_from_slice(two_digits(v as usize));
    } else {
        at -= 1;
        buf[at] = b'0' + v as u8;
    }
    out.extend_from_slice(&buf[at..]);
}

/// An address as `Display` writes it (and so as serde does); IPv4, the common case, by hand.
fn ip(addr: IpAddr, out: &mut Vec<u8>) {
    match addr {
        IpAddr::V4(v4) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                let (digits, n) = OCTETS[usize::from(octet)];
                text[len..len + 3].copy_from_slice(&digits);
                len += usize::from(n);
            }
            out.extend_from_slice(&text[..len]);
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

/// RFC 3339 with nanoseconds (`2026-11-25T09:00:00.000000001Z`), as the contract writes it;
/// `None` outside years 0..=9999, where the contract falls back to chrono.
fn rfc3339(t: &SystemTime) -> Option<[u8; 30]> {
    // Seconds rounded down and a non-negative fraction, as chrono splits a time.
    let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (i64::try_from(d.as_secs()).ok()?, d.subsec_nanos()),
        Err(e) => {
            let before = e.duration();
            let secs = i64::try_from(before.as_secs()).ok()?;
            match before.subsec_nanos() {
                0 => (-secs, 0),
                n => (-secs - 1, 1_000_000_000 - n),
            }
        }
    };
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    // Records of one flush share a few seconds (they are written in destination order, which
    // for a burst is close to time order): the calendar and clock digits are reused from a
    // recent call when the second is the same, and only the fraction is formatted. Two
    // seconds are kept because a record's two bounds often lie in different seconds.
    let head = LAST_SECONDS.with(|cell| {
        let [newer, older] = cell.get();
        for (s, head) in [newer, older] {
            if s == secs
                && let Some(head) = head
            {
                return Some(head);
            }
        }
        let head = date_time(secs)?;
        cell.set([(secs, Some(head)), newer]);
        Some(head)
    })?;
    b[..19].copy_from_slice(&head);
    // The nine fraction digits: one, then four pairs.
    b[20] = b'0' + (nanos / 100_000_000) as u8;
    let rest = nanos % 100_000_000;
    for (i, pair) in [
        rest / 1_000_000,
        rest / 10_000 % 100,
        rest / 100 % 100,
        rest % 100,
    ]
    .into_iter()
    .enumerate()
    {
        b[21 + 2 * i..23 + 2 * i].copy_from_slice(two_digits(pair as usize));
    }
    Some(b)
}

/// `YYYY-MM-DDTHH:MM:SS` of `secs` since the Unix epoch; `None` outside years 0..=9999.
fn date_time(secs: i64) -> Option<[u8; 19]> {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400) as usize;
    let mut b = *b"0000-00-00T00:00:00";
    b[..10].copy_from_slice(&civil_date(days)?);
    b[11..13].copy_from_slice(two_digits(sod / 3600));
    b[14..16].copy_from_slice(two_digits(sod % 3600 / 60));
    b[17..19].copy_from_slice(two_digits(sod % 60));
    Some(b)
}

/// The decimal digits of 0..=255 (left-aligned) and their number.
const OCTETS: [([u8; 3], u8); 256] = {
    let mut t = [([0u8; 3], 0u8); 256];
    let mut i = 0;
    while i < 256 {
        let (h, d, u) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        t[i] = if i >= 100 {
            ([b'0' + h, b'0' + d, b'0' + u], 3)
        } else if i >= 10 {
            ([b'0' + d, b'0' + u, 0], 2)
        } else {
            ([b'0' + u, 0, 0], 1)
        };
        i += 1;
    }
    t
};

/// `"00"` to `"99"`.
const DIGIT_PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// The two decimal digits of `v` (< 100; larger values are reduced modulo 100).
fn two_digits(v: usize) -> &'static [u8] {
    let at = 2 * (v % 100);
    &DIGIT_PAIRS[at..at + 2]
}

thread_local! {
    /// The two latest seconds formatted (newest first), and their `YYYY-MM-DDTHH:MM:SS`.
    static LAST_SECONDS: std::cell::Cell<[(i64, Option<[u8; 19]>); 2]> =
        const { std::cell::Cell::new([(i64::MIN, None); 2]) };
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use chrono::{DateTime, TimeDelta, Utc};
    use leash_records::{FlowRecord, Outcome, PodRef, Protocol};
    use proptest::prelude::*;

    use super::*;

    fn arb_string() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9./_-]{0,24}",
            any::<String>(),
            proptest::collection::vec(0u8..0x80, 0..12)
                .prop_map(|b| b.into_iter().map(char::from).collect()),
        ]
    }

    fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
        // Includes years past 9999 (the fallback) and before 1970.
        (-70_000_000_000i64..300_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| {
            DateTime::<Utc>::UNIX_EPOCH + TimeDelta::seconds(s) + TimeDelta::nanoseconds(n.into())
        })
    }

    fn arb_flow() -> impl Strategy<Value = FlowRecord> {
        let ip = prop_oneof![
            any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
            any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
            (0u16..3).prop_map(|v| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, v))),
        ];
        let pod = proptest::option::of((arb_string(), arb_string(), arb_string()).prop_map(
            |(uid, namespace, name)| PodRef {
                uid,
                namespace,
                name,
            },
        ));
        let outcome = proptest::option::of((any::<u64>(), any::<u64>()).prop_map(
            |(established, failed)| Outcome {
                established,
                failed,
            },
        ));
        (
            (arb_string(), pod, arb_string()),
            (
                prop_oneof![
                    Just(Protocol::Tcp),
                    Just(Protocol::Udp),
                    Just(Protocol::Sctp)
                ],
                ip,
                any::<u16>(),
                any::<u64>(),
            ),
            (arb_time(), arb_time()),
            (proptest::collection::vec(arb_string(), 0..4), outcome),
        )
            .prop_map(
                |(
                    (node, pod, cgroup),
                    (protocol, dst, dst_port, count),
                    (first_seen, last_seen),
                    (names, outcome),
                )| FlowRecord {
                    node,
                    pod,
                    cgroup,
                    protocol,
                    dst,
                    dst_port,
                    count,
                    first_seen,
                    last_seen,
                    names,
                    outcome,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The hand-written bytes equal serde_json's, so readers of the contract (including the
        /// recommender's fast parser) see no difference.
        #[test]
        fn matches_serde_json_byte_for_byte(record in arb_flow()) {
            let mut ours = Vec::new();
            write_flow(&FlowView::of(&record), &mut ours);
            let theirs = serde_json::to_vec(&Record::Flow(record.clone())).unwrap();
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
            let back: Record = serde_json::from_slice(&ours).unwrap();
            prop_assert_eq!(back, Record::Flow(record));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// One writer over a run of records, some sharing node, pod and cgroup with the record
        /// before (its cached part) and some not, writes each exactly as serde_json does.
        #[test]
        fn cached_writer_matches_serde_json(
            records in proptest::collection::vec(arb_flow(), 1..8),
            repeats in proptest::collection::vec(0usize..4, 1..8),
        ) {
            let mut run = Vec::new();
            for (record, n) in records.iter().zip(repeats.iter().cycle()) {
                run.push(record.clone());
                for i in 0..*n {
                    // Same node, pod and cgroup; other destination, count and times.
                    let mut next = record.clone();
                    next.dst_port = next.dst_port.wrapping_add(1 + i as u16);
                    next.count = next.count.wrapping_add(1);
                    next.last_seen = next.first_seen;
                    run.push(next);
                }
            }
            let mut writer = FlowWriter::default();
            for record in &run {
                let mut ours = Vec::new();
                writer.write(&FlowView::of(record), &mut ours);
                let theirs = serde_json::to_vec(&Record::Flow(record.clone())).unwrap();
                prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
            }
        }
    }

    proptest! {
        /// Timestamps drawn from a few seconds, in any order, so that the cached calendar
        /// digits are reused and replaced: each is formatted as chrono formats it.
        #[test]
        fn cached_seconds_format_like_chrono(
            times in proptest::collection::vec((0i64..3, 0u32..1_000_000_000), 1..40),
        ) {
            for (s, nanos) in times {
                let t = UNIX_EPOCH + std::time::Duration::new(1_764_000_000 + (s * 86_399) as u64, nanos);
                let want = DateTime::<Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
                let got = rfc3339(&t).map(|b| String::from_utf8_lossy(&b).into_owned());
                prop_assert_eq!(got, Some(want));
            }
        }
    }

    #[test]
    fn edge_values_match_serde_json() {
        let record = FlowRecord {
            node: "n\"1\\\u{1}\u{7f}é".to_owned(),
            pod: None,
            cgroup: "\n\r\t\u{8}\u{c}/x".to_owned(),
            protocol: Protocol::Udp,
            dst: IpAddr::V6(Ipv6Addr::from(0xffffu128 << 32 | 0xcb00_7101)),
            dst_port: u16::MAX,
            count: u64::MAX,
            first_seen: DateTime::<Utc>::UNIX_EPOCH,
            last_seen: DateTime::<Utc>::UNIX_EPOCH + TimeDelta::nanoseconds(1),
            names: vec![String::new(), "a.test".to_owned()],
            outcome: Some(Outcome {
                established: 0,
                failed: 0,
            }),
        };
        let mut ours = Vec::new();
        write_flow(&FlowView::of(&record), &mut ours);
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            serde_json::to_string(&Record::Flow(record)).unwrap()
        );
    }
}
