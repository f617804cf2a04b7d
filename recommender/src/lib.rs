//! `leash`: turns observed egress into least-privilege NetworkPolicies.
//!
//! Data flows one way (`ARCHITECTURE.md` at the repository root has the whole map):
//!
//! ```text
//! records ─▶ ingest ─▶ store ─▶ observations ─▶ classify ─▶ recommend ─▶ render
//!                                    ▲              ▲       (cidr, ports)
//!                          cluster model ───────────┘
//! ```
//!
//! - [`ingest`] commits agents' batches to a [`store`], which is persistence only.
//! - [`observations`] attributes records, batches and stored rows to pods and workloads of
//!   the [`cluster`] model, with the one [`evidence`] fold.
//! - [`classify`] says what each destination is (after DNAT); [`recommend`] builds one egress
//!   policy per workload with [`cidr`] and [`ports`]; [`render`] writes YAML and REPORT.md.
//! - [`eval`] is the one NetworkPolicy engine. It sees the model through its own
//!   [`eval::ClusterView`] trait and serves the self-check of [`recommend`], [`audit`],
//!   [`explain`], the alerts and shadow enforcement of [`serve`] and the phases of
//!   [`rollout`]. [`state`] joins the model with the applied policies; [`policy_state`] lays a
//!   given set over them.
//!
//! Pure logic (classify, cidr, ports, recommend, eval, policy_state) takes values and does no
//! I/O; the command (`main.rs`), [`serve`], [`ingest`] and the file readers of [`audit`],
//! [`cluster`] and [`observations`] do the I/O at the edges.

pub mod audit;
pub mod certs;
pub mod cidr;
pub mod cilium;
pub mod classify;
pub mod cluster;
pub mod cnp;
pub mod diff;
pub mod drift;
pub mod eval;
pub mod evidence;
pub mod explain;
pub mod guardrails;
pub mod https;
pub mod ingest;
pub mod json;
pub mod kube_review;
pub mod manifests;
pub mod map;
pub mod observations;
pub mod parallel;
pub mod policy_source;
pub mod policy_state;
pub mod ports;
pub mod pr;
pub mod proposal;
pub mod ranges;
pub mod recommend;
pub mod render;
pub mod rollout;
pub mod serve;
pub mod state;
pub mod store;
