//! `leash`: turns observed egress into least-privilege NetworkPolicies.
//!
//! Pure logic, no I/O except in [`input`] and [`render`]:
//! records → [`cluster`] model → [`classify`] → [`recommend`] ([`cidr`], [`ports`], selectors)
//! → [`render`] (YAML, REPORT.md). [`eval`] is the one NetworkPolicy engine, used by
//! `audit`, `explain` and the self-check of `recommend`.

pub mod audit;
pub mod certs;
pub mod cidr;
pub mod classify;
pub mod cluster;
pub mod eval;
pub mod explain;
pub mod ingest;
pub mod input;
pub mod ports;
pub mod recommend;
pub mod render;
pub mod serve;
pub mod store;
