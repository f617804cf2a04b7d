//! Test support shared by the recommender's integration tests. Each test crate declares
//! `mod support;` and uses the parts it needs:
//! - [`eval`]: builders for the small lab cluster and the policies the evaluator tests run on
//!   (`eval_table.rs`, `audit.rs`, `explain.rs`);
//! - [`recommend`]: the snapshot and record fixture builder (`Fx`) and the API server's
//!   NetworkPolicy validation rules (`recommend.rs`, `recommend_props.rs`, `store_*.rs`);
//! - [`cli`]: reading the output of the built `leash` binary;
//! - [`crd`]: a strict validator of objects against the CRD schemas of `shared/schemas/`;
//! - [`large_map`]: the egress map at 2,000 workloads and 20,000 edges (a cluster and a store);
//! - [`http`]: a free loopback port, a minimal HTTP GET and a poll loop, for the tests that run
//!   `leash serve` as a process;
//! - [`serve_process`]: `leash serve` as a process with its log, ready when `/readyz` is;
//! - [`snapshots`]: cluster snapshots as YAML `List`s, built from small item functions;
//! - [`postgres`]: a real PostgreSQL server (`initdb` in a temporary directory, unprivileged),
//!   or a skip when PostgreSQL is not installed;
//! - [`sshd`]: the lab's SSH server, or a skip when `sshd` is not installed;
//! - [`store_flows`]: flows committed straight into a SQLite store.
//!
//! The synthetic cluster generator the `recommend` bench and test share lives in the lab crate
//! (`leash_lab::synthetic`), since a bench cannot declare a module of `tests/`.

pub mod cli;
pub mod crd;
pub mod eval;
pub mod http;
pub mod large_map;
pub mod postgres;
pub mod recommend;
pub mod serve_process;
pub mod snapshots;
pub mod sshd;
pub mod store_flows;
