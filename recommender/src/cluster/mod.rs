//! The one indexed model of the cluster.
//!
//! Construction and indexing are separate on purpose: an [`Inventory`] is a flat, validated list of
//! the facts leash needs (built from a snapshot file, from the live watch, or directly by test
//! fixtures), and [`Cluster::new`] indexes it. Indexing is infallible; every input error is
//! reported while building the inventory, naming the offending object.
//!
//! One model, two sources: a snapshot file ([`Cluster::load`]) or the live API server
//! ([`watch::watch_cluster`], kept current by kube-rs reflectors, and [`watch::load_once`]).
//! Both go through a `leash_records::Snapshot`; [`events`] publishes Kubernetes Events about
//! workloads.
//!
//! The model knows nothing of its consumers (classification, recommendation, the evaluator):
//! they ask it questions.
//!
//! - `selector`: labels and the one label selector type ([`LabelSelector`]);
//! - `inventory`: the facts read from each object kind ([`Inventory`]);
//! - `workload`: owners and workload selectors ([`Workload`]);
//! - `service`: Service resolution ([`Cluster::resolve_service`]);
//! - `index`: the indexed model and its lookups ([`Cluster`]);
//! - `load`: the model from a snapshot, strictly or leniently ([`Cluster::load`]).

pub mod events;
mod index;
mod inventory;
mod lenient;
mod load;
mod selector;
mod service;
pub mod watch;
mod workload;

pub use index::{Cluster, NodeId, PodId, ServiceId, WorkloadId, hull};
pub use inventory::{
    ContainerPort, ControllerInfo, EndpointInfo, Error, Inventory, NamespaceInfo, NodeInfo,
    OwnerRef, PodInfo, Protocol, Result, ServiceInfo, ServicePort, SliceInfo, SlicePort,
    TargetPort, parse_k8s_protocol,
};
pub(crate) use load::qualified_name;
pub use load::{LoadError, Rejected};
pub use selector::{LabelSelector, Labels, NAMESPACE_NAME_LABEL, Operator, Requirement};
pub use service::{ServiceBackend, ServiceLookup};
pub use workload::{Workload, is_stable_key, looks_like_uid, stable_labels};
