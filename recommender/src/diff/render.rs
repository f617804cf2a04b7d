//! The report of `leash diff` as markdown (a pull-request body), an aligned table (a
//! terminal) or JSON lines (a contract for other tools). Pure and deterministic: the same
//! [`Diff`] gives the same bytes.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;

use super::{Change, Diff, FlowChange, ReachChange, Source, Target};
use crate::eval::Verdict;
use crate::render::{cell, code, list, plural};

/// DNS names shown per flow in markdown; the others are counted.
const MAX_NAMES: usize = 5;

/// The output format of `leash diff --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Markdown for a pull-request body ([`markdown`]).
    #[default]
    Markdown,
    /// One JSON object per line ([`json_lines`]).
    Json,
    /// Aligned columns for a terminal ([`table`]).
    Table,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "markdown" => Ok(Format::Markdown),
            "json" => Ok(Format::Json),
            "table" => Ok(Format::Table),
            other => Err(format!(
                "unknown format {other:?} (expected markdown, json or table)"
            )),
        }
    }
}

/// The report in `format`.
pub fn render(diff: &Diff, format: Format) -> String {
    match format {
        Format::Markdown => markdown(diff),
        Format::Json => json_lines(diff),
        Format::Table => table(diff),
    }
}

/// `newly-allowed` or `newly-denied`.
pub fn change_str(c: Change) -> &'static str {
    match c {
        Change::NewlyAllowed => "newly-allowed",
        Change::NewlyDenied => "newly-denied",
    }
}

/// A workload, pod or address range in JSON.
#[derive(Serialize)]
#[serde(untagged)]
enum JsonRef<'a> {
    Workload {
        namespace: &'a str,
        workload: &'a str,
    },
    Pod {
        namespace: &'a str,
        pod: &'a str,
    },
    Range {
        first: IpAddr,
        last: IpAddr,
    },
}

impl<'a> From<&'a Source> for JsonRef<'a> {
    fn from(s: &'a Source) -> Self {
        match s {
            Source::Workload {
                namespace,
                workload,
            } => JsonRef::Workload {
                namespace,
                workload,
            },
            Source::Pod { namespace, pod } => JsonRef::Pod { namespace, pod },
        }
    }
}

impl<'a> From<&'a Target> for JsonRef<'a> {
    fn from(t: &'a Target) -> Self {
        match t {
            Target::Workload {
                namespace,
                workload,
            } => JsonRef::Workload {
                namespace,
                workload,
            },
            Target::Pod { namespace, pod } => JsonRef::Pod { namespace, pod },
            Target::Range { first, last } => JsonRef::Range {
                first: *first,
                last: *last,
            },
        }
    }
}

/// A reachability line; field order is part of the contract.
#[derive(Serialize)]
struct JsonReach<'a> {
    kind: &'static str,
    source: JsonRef<'a>,
    change: &'static str,
    protocol: &'static str,
    port_from: u16,
    port_to: u16,
    destination: JsonRef<'a>,
}

/// The source of a flow line: its workload and the pod that made it.
#[derive(Serialize)]
struct JsonFlowSource<'a> {
    namespace: &'a str,
    workload: &'a str,
    pod: &'a str,
}

/// A flow line; field order is part of the contract.
#[derive(Serialize)]
struct JsonFlow<'a> {
    kind: &'static str,
    source: JsonFlowSource<'a>,
    protocol: &'static str,
    dst: IpAddr,
    dst_port: u16,
    from: Verdict,
    to: Verdict,
    events: u64,
    last_seen: String,
    names: Vec<&'a str>,
}

/// One JSON object per line, each ending with `\n`: the reachability changes
/// (`"kind":"reachability"`) in order, then the observed flows that change verdict
/// (`"kind":"flow"`) in order.
pub fn json_lines(diff: &Diff) -> String {
    let mut out = String::new();
    let mut push = |line: serde_json::Result<String>| {
        // Strings, numbers and addresses: serialization cannot fail.
        if let Ok(line) = line {
            out.push_str(&line);
            out.push('\n');
        }
    };
    for c in &diff.reachability {
        push(serde_json::to_string(&JsonReach {
            kind: "reachability",
            source: (&c.source).into(),
            change: change_str(c.change),
            protocol: c.protocol.as_str(),
            port_from: c.port_from,
            port_to: c.port_to,
            destination: (&c.destination).into(),
        }));
    }
    for f in diff.flow_changes() {
        push(serde_json::to_string(&JsonFlow {
            kind: "flow",
            source: JsonFlowSource {
                namespace: &f.source.namespace,
                workload: &f.source.workload,
                pod: &f.pod,
            },
            protocol: f.flow.protocol.as_str(),
            dst: f.flow.dst,
            dst_port: f.flow.dst_port,
            from: f.from,
            to: f.to,
            events: f.evidence.count,
            last_seen: leash_records::time::rfc3339(f.evidence.last_seen),
            names: f.evidence.names.iter().map(String::as_str).collect(),
        }));
    }
    out
}

/// `80`, or `8000-8080` for a range.
fn ports(from: u16, to: u16) -> String {
    if from == to {
        from.to_string()
    } else {
        format!("{from}-{to}")
    }
}

/// An address range: one address, a CIDR block when the range is exactly one, else
/// `first-last`.
fn range_text(first: IpAddr, last: IpAddr) -> String {
    let (f, l, bits) = match (first, last) {
        (IpAddr::V4(f), IpAddr::V4(l)) => (u128::from(u32::from(f)), u128::from(u32::from(l)), 32),
        (IpAddr::V6(f), IpAddr::V6(l)) => (u128::from(f), u128::from(l), 128),
        _ => return format!("{first}-{last}"),
    };
    if f == l {
        return first.to_string();
    }
    if f > l {
        return format!("{first}-{last}");
    }
    // The number of host bits a block from `f` to `l` would have.
    let span = l - f;
    let host_bits = 128 - span.leading_zeros();
    let aligned =
        span.count_ones() == host_bits && (host_bits == 128 || f.trailing_zeros() >= host_bits);
    if aligned {
        format!("{first}/{}", bits - host_bits)
    } else {
        format!("{first}-{last}")
    }
}

/// A destination as people read it: `ns/Kind/name`, `ns/Pod/name`, or addresses.
fn target_text(t: &Target) -> String {
    match t {
        Target::Workload {
            namespace,
            workload,
        } => format!("{namespace}/{workload}"),
        Target::Pod { namespace, pod } => format!("{namespace}/{}", crate::json::bare_pod(pod)),
        Target::Range { first, last } => range_text(*first, *last),
    }
}

/// A source as people read it: `ns/Kind/name`, or `ns/Pod/name`.
fn source_text(s: &Source) -> String {
    match s {
        Source::Workload {
            namespace,
            workload,
        } => format!("{namespace}/{workload}"),
        Source::Pod { namespace, pod } => format!("{namespace}/{}", crate::json::bare_pod(pod)),
    }
}

/// `10.0.0.1:443` or `[2001:db8::1]:443`.
fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The names of a flow's destination, comma-separated; `-` for none.
fn names_text(f: &FlowChange) -> String {
    if f.evidence.names.is_empty() {
        "-".to_owned()
    } else {
        f.evidence
            .names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The markdown report, for a pull-request body: a summary line per namespace, the breaks,
/// the changes per workload (newly allowed and newly denied ranges, observed flows newly
/// allowed), and the unchanged workloads as a count.
pub fn markdown(diff: &Diff) -> String {
    let mut out = String::new();
    let (from, to) = (code(&diff.from), code(&diff.to));
    let _ = writeln!(out, "## leash diff: {from} → {to}\n");

    let summaries = diff.summaries();
    if summaries.is_empty() {
        out.push_str("No workload to compare.\n");
    }
    for (ns, s) in &summaries {
        let mut parts = Vec::new();
        if diff.observed.is_some() {
            parts.push(if s.breaks == 0 {
                "no break".to_owned()
            } else {
                format!("**{}**", plural(s.breaks, "break", "breaks"))
            });
        }
        if s.changed == 0 {
            parts.push(format!(
                "no change ({})",
                plural(s.unchanged, "workload", "workloads")
            ));
        } else {
            let mut what = vec![
                format!("{} newly allowed", s.newly_allowed),
                format!("{} newly denied", s.newly_denied),
            ];
            if diff.observed.is_some() {
                what.push(format!(
                    "{} newly allowed",
                    plural(s.flows_allowed, "observed flow", "observed flows")
                ));
            }
            parts.push(what.join(", "));
            parts.push(format!(
                "{} changed, {} unchanged",
                plural(s.changed, "workload", "workloads"),
                s.unchanged
            ));
        }
        let _ = writeln!(out, "- {}: {}", code(ns), parts.join("; "));
    }

    out.push_str("\n### Breaks\n\n");
    let breaks: Vec<&FlowChange> = diff.breaks().collect();
    match &diff.observed {
        None => out.push_str(
            "No observed traffic given (`--flows` or `--store`): breaks were not checked.\n",
        ),
        Some(_) if breaks.is_empty() => {
            let _ = writeln!(
                out,
                "None: no observed flow is allowed under {from} and denied under {to}."
            );
        }
        Some(_) => {
            let _ = writeln!(
                out,
                "Observed traffic allowed under {from} and denied under {to}:\n"
            );
            out.push_str(
                "| Source | Pod | Destination | Protocol | Events | Last seen | Names |\n",
            );
            out.push_str("|---|---|---|---|---|---|---|\n");
            for b in &breaks {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    cell(&code(&b.source.to_string())),
                    cell(&code(&b.pod)),
                    code(&host_port(b.flow.dst, b.flow.dst_port)),
                    b.flow.protocol,
                    b.evidence.count,
                    leash_records::time::rfc3339(b.evidence.last_seen),
                    list(b.evidence.names.iter().cloned(), MAX_NAMES)
                );
            }
        }
    }

    out.push_str("\n### Changes per workload\n");
    let flow_changes = diff.flow_changes();
    let mut any = false;
    for (w, changes) in &diff.workloads {
        let reach: Vec<&ReachChange> = changes
            .reachability
            .iter()
            .filter_map(|&i| diff.reachability.get(i))
            .collect();
        let allowed_flows: Vec<&FlowChange> = changes
            .flows
            .iter()
            .filter_map(|&i| flow_changes.get(i))
            .filter(|f| !f.is_break())
            .collect();
        if reach.is_empty() && allowed_flows.is_empty() {
            continue;
        }
        any = true;
        let _ = writeln!(out, "\n#### {}", code(&w.to_string()));
        for (change, title) in [
            (Change::NewlyAllowed, "Newly allowed"),
            (Change::NewlyDenied, "Newly denied"),
        ] {
            let items: Vec<&&ReachChange> = reach.iter().filter(|c| c.change == change).collect();
            if items.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{title}:\n");
            for c in items {
                let pod = match &c.source {
                    Source::Pod { pod, .. } => {
                        format!("from {}: ", code(&crate::json::bare_pod(pod)))
                    }
                    Source::Workload { .. } => String::new(),
                };
                let _ = writeln!(
                    out,
                    "- {pod}{} {} to {}",
                    c.protocol,
                    ports(c.port_from, c.port_to),
                    code(&target_text(&c.destination))
                );
            }
        }
        if !allowed_flows.is_empty() {
            out.push_str("\nObserved traffic newly allowed:\n\n");
            for f in allowed_flows {
                let names = if f.evidence.names.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", list(f.evidence.names.iter().cloned(), MAX_NAMES))
                };
                let _ = writeln!(
                    out,
                    "- {} {}{names} from {}: {}, last seen {}",
                    code(&host_port(f.flow.dst, f.flow.dst_port)),
                    f.flow.protocol,
                    code(&f.pod),
                    plural(
                        usize::try_from(f.evidence.count).unwrap_or(usize::MAX),
                        "event",
                        "events"
                    ),
                    leash_records::time::rfc3339(f.evidence.last_seen),
                );
            }
        }
    }
    if !any {
        out.push_str("\nNone.\n");
    }

    let unchanged = diff.workloads.values().filter(|c| c.is_empty()).count();
    let _ = writeln!(
        out,
        "\n### Unchanged\n\n{} of {} unchanged.",
        unchanged,
        plural(diff.workloads.len(), "workload", "workloads")
    );
    out
}

/// Aligned columns for a terminal: the reachability changes, the observed flows that change
/// verdict, and a summary line.
pub fn table(diff: &Diff) -> String {
    let mut out = String::new();
    if !diff.reachability.is_empty() {
        let rows: Vec<[String; 5]> = diff
            .reachability
            .iter()
            .map(|c| {
                [
                    source_text(&c.source),
                    change_str(c.change).to_owned(),
                    c.protocol.to_string(),
                    ports(c.port_from, c.port_to),
                    target_text(&c.destination),
                ]
            })
            .collect();
        out.push_str(&crate::render::columns::aligned(
            ["SOURCE", "CHANGE", "PROTO", "PORTS", "DESTINATION"],
            &rows,
        ));
        out.push('\n');
    }
    let flows = diff.flow_changes();
    if !flows.is_empty() {
        let rows: Vec<[String; 8]> = flows
            .iter()
            .map(|f| {
                [
                    f.source.to_string(),
                    f.pod.clone(),
                    f.flow.protocol.to_string(),
                    host_port(f.flow.dst, f.flow.dst_port),
                    if f.is_break() {
                        format!("{} → {} (break)", f.from, f.to)
                    } else {
                        format!("{} → {}", f.from, f.to)
                    },
                    f.evidence.count.to_string(),
                    leash_records::time::rfc3339(f.evidence.last_seen),
                    names_text(f),
                ]
            })
            .collect();
        out.push_str(&crate::render::columns::aligned(
            [
                "SOURCE",
                "POD",
                "PROTO",
                "DESTINATION",
                "VERDICT",
                "EVENTS",
                "LAST SEEN",
                "NAMES",
            ],
            &rows,
        ));
        out.push('\n');
    }
    let allowed = diff
        .reachability
        .iter()
        .filter(|c| c.change == Change::NewlyAllowed)
        .count();
    let _ = write!(
        out,
        "{} ({allowed} newly allowed, {} newly denied); ",
        plural(
            diff.reachability.len(),
            "reachability change",
            "reachability changes"
        ),
        diff.reachability.len() - allowed
    );
    match &diff.observed {
        None => out.push_str("observed traffic not given\n"),
        Some(o) => {
            let _ = writeln!(
                out,
                "{} of {} change verdict, {}",
                o.changes.len(),
                plural(o.evaluated, "observed flow", "observed flows"),
                plural(diff.breaks().count(), "break", "breaks")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use chrono::{DateTime, Utc};
    use leash_records::Protocol;

    use super::*;
    use crate::diff::{ObservedFlows, WorkloadChanges, WorkloadKey};
    use crate::eval::Flow;
    use crate::observations::Evidence;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn key(ns: &str, w: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: ns.into(),
            workload: w.into(),
        }
    }

    fn flow(
        w: WorkloadKey,
        pod: &str,
        dst: &str,
        from: Verdict,
        to: Verdict,
        names: &[&str],
    ) -> FlowChange {
        let t = DateTime::parse_from_rfc3339("2026-11-23T08:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut evidence = Evidence::new(12, t, t);
        evidence.names = names.iter().map(|n| (*n).to_owned()).collect();
        FlowChange {
            source: w,
            pod: pod.into(),
            flow: Flow {
                protocol: Protocol::Tcp,
                dst: ip(dst),
                dst_port: 80,
            },
            from,
            to,
            evidence,
        }
    }

    /// shop/frontend: newly allowed to postgres on 80 and to a /25; a pod of shop/api newly
    /// denied to a single address; one break and one flow newly allowed observed; db/postgres
    /// unchanged.
    fn sample() -> Diff {
        let frontend = key("shop", "Deployment/frontend");
        let reachability = vec![
            ReachChange {
                source: Source::Pod {
                    namespace: "shop".into(),
                    pod: "api-7".into(),
                },
                change: Change::NewlyDenied,
                protocol: Protocol::Udp,
                port_from: 5000,
                port_to: 5010,
                destination: Target::Range {
                    first: ip("198.51.100.3"),
                    last: ip("198.51.100.9"),
                },
            },
            ReachChange {
                source: Source::Workload {
                    namespace: "shop".into(),
                    workload: "Deployment/frontend".into(),
                },
                change: Change::NewlyAllowed,
                protocol: Protocol::Tcp,
                port_from: 80,
                port_to: 80,
                destination: Target::Workload {
                    namespace: "data".into(),
                    workload: "StatefulSet/postgres".into(),
                },
            },
            ReachChange {
                source: Source::Workload {
                    namespace: "shop".into(),
                    workload: "Deployment/frontend".into(),
                },
                change: Change::NewlyAllowed,
                protocol: Protocol::Tcp,
                port_from: 80,
                port_to: 80,
                destination: Target::Range {
                    first: ip("203.0.113.0"),
                    last: ip("203.0.113.127"),
                },
            },
        ];
        let changes = vec![
            flow(
                frontend.clone(),
                "frontend-1",
                "10.96.0.20",
                Verdict::Allow,
                Verdict::Deny,
                &["api.example.com"],
            ),
            flow(
                frontend.clone(),
                "frontend-1",
                "203.0.113.5",
                Verdict::Deny,
                Verdict::Allow,
                &[],
            ),
        ];
        let workloads = BTreeMap::from([
            (
                key("data", "StatefulSet/postgres"),
                WorkloadChanges::default(),
            ),
            (
                key("shop", "Deployment/api"),
                WorkloadChanges {
                    reachability: vec![0],
                    flows: vec![],
                },
            ),
            (
                frontend,
                WorkloadChanges {
                    reachability: vec![1, 2],
                    flows: vec![0, 1],
                },
            ),
        ]);
        Diff {
            from: "applied".into(),
            to: "proposal".into(),
            reachability,
            observed: Some(ObservedFlows {
                changes,
                workloads: BTreeSet::new(),
                evaluated: 7,
                unattributed_events: 0,
            }),
            workloads,
        }
    }

    #[test]
    fn json_lines_follow_the_contract() {
        let want = [
            r#"{"kind":"reachability","source":{"namespace":"shop","pod":"api-7"},"change":"newly-denied","protocol":"UDP","port_from":5000,"port_to":5010,"destination":{"first":"198.51.100.3","last":"198.51.100.9"}}"#,
            r#"{"kind":"reachability","source":{"namespace":"shop","workload":"Deployment/frontend"},"change":"newly-allowed","protocol":"TCP","port_from":80,"port_to":80,"destination":{"namespace":"data","workload":"StatefulSet/postgres"}}"#,
            r#"{"kind":"reachability","source":{"namespace":"shop","workload":"Deployment/frontend"},"change":"newly-allowed","protocol":"TCP","port_from":80,"port_to":80,"destination":{"first":"203.0.113.0","last":"203.0.113.127"}}"#,
            r#"{"kind":"flow","source":{"namespace":"shop","workload":"Deployment/frontend","pod":"frontend-1"},"protocol":"TCP","dst":"10.96.0.20","dst_port":80,"from":"allow","to":"deny","events":12,"last_seen":"2026-11-23T08:00:00Z","names":["api.example.com"]}"#,
            r#"{"kind":"flow","source":{"namespace":"shop","workload":"Deployment/frontend","pod":"frontend-1"},"protocol":"TCP","dst":"203.0.113.5","dst_port":80,"from":"deny","to":"allow","events":12,"last_seen":"2026-11-23T08:00:00Z","names":[]}"#,
        ];
        let json = json_lines(&sample());
        assert_eq!(json.lines().collect::<Vec<_>>(), want);
        assert!(json.ends_with('\n'));
        assert_eq!(render(&sample(), Format::Json), json);
    }

    #[test]
    fn markdown_gives_summaries_then_breaks_then_changes_then_the_unchanged_count() {
        let want = "\
## leash diff: `applied` → `proposal`

- `data`: no break; no change (1 workload)
- `shop`: **1 break**; 2 newly allowed, 1 newly denied, 1 observed flow newly allowed; 2 workloads changed, 0 unchanged

### Breaks

Observed traffic allowed under `applied` and denied under `proposal`:

| Source | Pod | Destination | Protocol | Events | Last seen | Names |
|---|---|---|---|---|---|---|
| `shop/Deployment/frontend` | `frontend-1` | `10.96.0.20:80` | TCP | 12 | 2026-11-23T08:00:00Z | api.example.com |

### Changes per workload

#### `shop/Deployment/api`

Newly denied:

- from `Pod/api-7`: UDP 5000-5010 to `198.51.100.3-198.51.100.9`

#### `shop/Deployment/frontend`

Newly allowed:

- TCP 80 to `data/StatefulSet/postgres`
- TCP 80 to `203.0.113.0/25`

Observed traffic newly allowed:

- `203.0.113.5:80` TCP from `frontend-1`: 12 events, last seen 2026-11-23T08:00:00Z

### Unchanged

1 of 3 workloads unchanged.
";
        assert_eq!(markdown(&sample()), want);
        assert_eq!(render(&sample(), Format::Markdown), want);
    }

    #[test]
    fn markdown_without_traffic_or_changes_says_so() {
        let mut d = sample();
        d.observed = None;
        d.reachability.clear();
        for c in d.workloads.values_mut() {
            *c = WorkloadChanges::default();
        }
        let md = markdown(&d);
        assert!(md.contains("- `shop`: no change (2 workloads)\n"), "{md}");
        assert!(md.contains("breaks were not checked"), "{md}");
        assert!(md.contains("### Changes per workload\n\nNone.\n"), "{md}");
        assert!(md.ends_with("3 of 3 workloads unchanged.\n"), "{md}");
    }

    /// Names from the cluster, the agents and the command line cannot change the markdown's
    /// structure.
    #[test]
    fn markdown_escapes_what_it_did_not_write() {
        let mut d = sample();
        d.to = "pol`icies".into();
        if let Some(o) = d.observed.as_mut() {
            o.changes[0].evidence.names = ["x_y.example.com".to_owned(), "a|b".to_owned()].into();
        }
        let md = markdown(&d);
        assert!(
            md.starts_with("## leash diff: `applied` → ``pol`icies``\n"),
            "{md}"
        );
        assert!(
            md.contains("| 2026-11-23T08:00:00Z | a\\|b, x\\_y.example.com |\n"),
            "{md}"
        );
    }

    #[test]
    fn table_is_aligned_with_a_summary() {
        let want = "\
SOURCE                    CHANGE         PROTO  PORTS      DESTINATION
shop/Pod/api-7            newly-denied   UDP    5000-5010  198.51.100.3-198.51.100.9
shop/Deployment/frontend  newly-allowed  TCP    80         data/StatefulSet/postgres
shop/Deployment/frontend  newly-allowed  TCP    80         203.0.113.0/25

SOURCE                    POD         PROTO  DESTINATION     VERDICT               EVENTS  LAST SEEN             NAMES
shop/Deployment/frontend  frontend-1  TCP    10.96.0.20:80   allow → deny (break)  12      2026-11-23T08:00:00Z  api.example.com
shop/Deployment/frontend  frontend-1  TCP    203.0.113.5:80  deny → allow          12      2026-11-23T08:00:00Z  -

3 reachability changes (2 newly allowed, 1 newly denied); 2 of 7 observed flows change verdict, 1 break
";
        assert_eq!(table(&sample()), want);
    }

    #[test]
    fn ranges_read_as_addresses_blocks_or_spans() {
        let r = |a: &str, b: &str| range_text(ip(a), ip(b));
        assert_eq!(r("10.0.0.1", "10.0.0.1"), "10.0.0.1");
        assert_eq!(r("10.0.0.0", "10.0.0.255"), "10.0.0.0/24");
        assert_eq!(r("10.0.0.128", "10.0.0.255"), "10.0.0.128/25");
        assert_eq!(r("10.0.0.64", "10.0.0.191"), "10.0.0.64-10.0.0.191");
        assert_eq!(r("10.0.0.0", "10.0.0.2"), "10.0.0.0-10.0.0.2");
        assert_eq!(r("0.0.0.0", "255.255.255.255"), "0.0.0.0/0");
        assert_eq!(r("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), "::/0");
        assert_eq!(r("2001:db8::", "2001:db8::ffff"), "2001:db8::/112");
        assert_eq!(r("10.0.0.1", "::1"), "10.0.0.1-::1");
    }
}
