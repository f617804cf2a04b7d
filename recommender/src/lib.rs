//! `leash`: turns observed egress into least-privilege NetworkPolicies.
//!
//! Pure logic, no I/O except in [`observations`] (reading record files) and [`render`]:
//! records → [`ingest`] → [`store`] → [`observations`] (attributed to the [`cluster`]
//! model) → [`classify`] → [`recommend`] ([`cidr`], [`ports`], selectors) → [`render`] (YAML,
//! REPORT.md). [`eval`] is the one NetworkPolicy engine, used by
//! `audit`, `explain` and the self-check of `recommend`.
//! [`state`] joins the model with the policies applied in the cluster, for `serve` and `ingest`.

pub mod audit;
pub mod certs;
pub mod cidr;
pub mod classify;
pub mod cluster;
pub mod eval;
pub mod evidence;
pub mod explain;
pub mod ingest;
pub mod json;
pub mod observations;
pub mod policy_state;
pub mod ports;
pub mod recommend;
pub mod render;
pub mod serve;
pub mod state;
pub mod store;
