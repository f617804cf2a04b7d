//! `leash-agent`: records every pod's egress connections and DNS answers with eBPF.
//!
//! Data flows one way: [`capture`] reads the kernel's ring buffers, [`attribution`] maps a
//! cgroup to its pod, [`dns`] labels destinations with the names that resolved to them,
//! [`aggregate`] folds kernel records into per-key deltas, and [`sink`] writes the v1 records:
//! as JSON lines, and/or streamed to the recommender over gRPC by [`transport`].
//!
//! The `testing` feature adds test-only helpers (`sink::testing`, `dns::testing`,
//! `transport::testing`); only this crate's own dev-dependency enables it, so the product
//! library never contains them.

pub mod aggregate;
pub mod attribution;
pub mod capture;
pub mod dns;
pub mod metrics;
pub mod pipeline;
pub mod sink;
pub mod transport;
