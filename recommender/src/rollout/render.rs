//! `leash rollout status` output, pure: the guardrails stage first (stage 1), then the
//! workloads (stage 2), then the stage order, as a table or as JSON lines.

use std::fmt::Write as _;

use chrono::Duration;
use serde::Serialize;

use super::{WorkloadStatus, counts, flows_text};
use crate::guardrails::stage::{Stage, WorkloadFlows};

/// The output format of `leash rollout status --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON object per line: the stage, then one per workload ([`to_json_lines`]).
    Json,
    /// The stage's block, then an aligned table with a summary ([`to_table`]).
    #[default]
    Table,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "table" => Ok(Format::Table),
            other => Err(format!("unknown format {other:?} (expected json or table)")),
        }
    }
}

/// The stage order, in one line (the table's last).
pub const STAGE_ORDER_LINE: &str = "Stage order: 1. the guardrails, in audit (shadow) first, then \
enforced; 2. namespace by namespace, each workload once ready.";

/// Renders the board (`stage`, then `statuses`) in `format`.
pub fn render(stage: &Stage, statuses: &[WorkloadStatus], format: Format) -> String {
    match format {
        Format::Json => {
            let mut out = stage_json_line(stage);
            out.push_str(&to_json_lines(statuses));
            out
        }
        Format::Table => {
            let mut out = stage_table(stage);
            out.push_str("STAGE 2  namespaces\n");
            out.push_str(&to_table(statuses));
            out.push_str(STAGE_ORDER_LINE);
            out.push('\n');
            out
        }
    }
}

/// A JSON object with `kind` as its first key.
#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    kind: &'static str,
    #[serde(flatten)]
    inner: &'a T,
}

fn json_line<T: Serialize>(kind: &'static str, inner: &T) -> String {
    // Strings, numbers and enums: serialization cannot fail.
    serde_json::to_string(&Tagged { kind, inner })
        .map(|mut l| {
            l.push('\n');
            l
        })
        .unwrap_or_default()
}

/// The stage as one JSON line, `{"kind":"guardrails","phase":…,…}`.
pub fn stage_json_line(stage: &Stage) -> String {
    json_line("guardrails", stage)
}

/// One JSON object per workload, `{"kind":"workload",…}`, one per line, each ending with `\n`.
pub fn to_json_lines(statuses: &[WorkloadStatus]) -> String {
    statuses.iter().map(|s| json_line("workload", s)).collect()
}

/// Text for one terminal line: control characters, separators and bidirectional controls
/// (DNS names are the tenants') become U+FFFD.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if crate::render::escape::is_replaced(c) {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect()
}

/// The stage's block: `STAGE 1  guardrails  PHASE  WHY`, then one line per workload the
/// proposal would break and per workload the applied guardrails deny, with its flows.
pub fn stage_table(stage: &Stage) -> String {
    let mut out = format!(
        "STAGE 1  guardrails  {}  {}\n",
        stage.phase,
        one_line(&stage.why())
    );
    let mut workloads = |label: &str, list: &[WorkloadFlows]| {
        for w in list {
            let _ = writeln!(
                out,
                "  {label}  {}/{}  {}",
                w.namespace,
                w.workload,
                one_line(&flows_text(&w.flows, "flow", "flows"))
            );
        }
    };
    workloads("would break", &stage.breaks);
    workloads("denied", &stage.denied);
    out
}

/// An aligned table (namespace, workload, phase, observed for, why) and a summary line.
pub fn to_table(statuses: &[WorkloadStatus]) -> String {
    let header = ["NAMESPACE", "WORKLOAD", "PHASE", "OBSERVED", "WHY"];
    let rows: Vec<[String; 5]> = statuses
        .iter()
        .map(|s| {
            [
                s.namespace.clone(),
                s.workload.clone(),
                s.phase.to_string(),
                crate::render::human_duration(Duration::seconds(
                    i64::try_from(s.observed_for_seconds).unwrap_or(i64::MAX),
                )),
                one_line(&s.why()),
            ]
        })
        .collect();
    let mut out = crate::render::columns::aligned(header, &rows);
    let parts: Vec<String> = counts(statuses)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| format!("{n} {p}"))
        .collect();
    let _ = writeln!(
        out,
        "{} workload{}{}{}",
        statuses.len(),
        if statuses.len() == 1 { "" } else { "s" },
        if parts.is_empty() { "" } else { ": " },
        parts.join(", ")
    );
    out
}
