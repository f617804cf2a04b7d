//! Test support shared by the recommender's integration tests. Each test crate declares
//! `mod support;` and uses the parts it needs:
//! - [`eval`]: builders for the small lab cluster and the policies the evaluator tests run on
//!   (`eval_table.rs`, `audit.rs`, `explain.rs`);
//! - [`recommend`]: the snapshot and record fixture builder (`Fx`) and the API server's
//!   NetworkPolicy validation rules (`recommend.rs`, `recommend_props.rs`, `store_*.rs`).
//!
//! The synthetic cluster generator the `recommend` bench and test share lives in the lab crate
//! (`leash_lab::synthetic`), since a bench cannot declare a module of `tests/`.

pub mod eval;
pub mod recommend;
