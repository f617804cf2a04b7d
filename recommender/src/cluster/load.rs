//! Loading: the model from the objects of a snapshot, strictly (any invalid object is an error,
//! for snapshot files given on the command line) or leniently (invalid objects are left out and
//! named, for the live watch and `serve`).

use std::path::Path;

use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use leash_records::Snapshot;
use leash_records::error::Chain;

use super::index::Cluster;
use super::inventory::{Error, Inventory, Result};

/// An object left out of the model, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rejected {
    /// Its kind, e.g. `Pod`.
    pub kind: String,
    /// `namespace/name`, or `name` for cluster-scoped kinds.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

/// `namespace/name`, or `name` for cluster-scoped objects.
pub(crate) fn qualified_name(meta: &meta::ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("<unnamed>");
    match meta.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

impl Cluster {
    /// Builds the model from the parsed Kubernetes objects of a snapshot.
    #[expect(
        clippy::too_many_arguments,
        reason = "one slice per object kind of a snapshot"
    )]
    pub fn from_objects(
        namespaces: &[core::Namespace],
        nodes: &[core::Node],
        pods: &[core::Pod],
        services: &[core::Service],
        slices: &[discovery::EndpointSlice],
        replica_sets: &[apps::ReplicaSet],
        deployments: &[apps::Deployment],
        stateful_sets: &[apps::StatefulSet],
        daemon_sets: &[apps::DaemonSet],
        jobs: &[batch::Job],
        cron_jobs: &[batch::CronJob],
    ) -> Result<Self> {
        let mut inv = Inventory::default();
        namespaces.iter().try_for_each(|o| inv.add_namespace(o))?;
        nodes.iter().try_for_each(|o| inv.add_node(o))?;
        pods.iter().try_for_each(|o| inv.add_pod(o))?;
        services.iter().try_for_each(|o| inv.add_service(o))?;
        slices.iter().try_for_each(|o| inv.add_endpoint_slice(o))?;
        replica_sets
            .iter()
            .try_for_each(|o| inv.add_replica_set(o))?;
        deployments.iter().try_for_each(|o| inv.add_deployment(o))?;
        stateful_sets
            .iter()
            .try_for_each(|o| inv.add_stateful_set(o))?;
        daemon_sets.iter().try_for_each(|o| inv.add_daemon_set(o))?;
        jobs.iter().try_for_each(|o| inv.add_job(o))?;
        cron_jobs.iter().try_for_each(|o| inv.add_cron_job(o))?;
        Ok(Self::new(inv))
    }
}

impl Cluster {
    /// Loads a snapshot file (a Kubernetes `List` or a multi-document stream, YAML or JSON).
    pub fn load(path: &Path) -> std::result::Result<Self, LoadError> {
        let snap = leash_records::snapshot::load_path(path)?;
        Self::from_snapshot(&snap).map_err(|source| LoadError::Model {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Builds the model from a parsed snapshot.
    pub fn from_snapshot(s: &Snapshot) -> Result<Self> {
        Self::from_objects(
            &s.namespaces,
            &s.nodes,
            &s.pods,
            &s.services,
            &s.endpoint_slices,
            &s.replica_sets,
            &s.deployments,
            &s.stateful_sets,
            &s.daemon_sets,
            &s.jobs,
            &s.cron_jobs,
        )
    }
}

/// Errors loading a snapshot file into a [`Cluster`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is unreadable or not a valid snapshot.
    #[error(transparent)]
    Snapshot(#[from] leash_records::SnapshotError),
    /// An object in the snapshot holds an invalid value.
    #[error("{}", path.display())]
    Model {
        /// The snapshot file.
        path: std::path::PathBuf,
        /// What is wrong.
        source: Error,
    },
}

impl Cluster {
    /// Builds the model from a snapshot, leaving out every object the model rejects. Never
    /// fails: each object left out is returned with its name and the reason, unsorted, so one
    /// bad object cannot take the whole cluster view down.
    pub fn from_snapshot_lenient(snapshot: &Snapshot) -> (Self, Vec<Rejected>) {
        let mut rejected = Vec::new();
        let mut inv = Inventory::default();
        macro_rules! add_all {
            ($field:ident, $add:ident, $kind:literal) => {
                for o in &snapshot.$field {
                    if let Err(e) = inv.$add(o) {
                        rejected.push(Rejected {
                            kind: $kind.to_owned(),
                            name: qualified_name(&o.metadata),
                            reason: Chain(&e).to_string(),
                        });
                    }
                }
            };
        }
        add_all!(namespaces, add_namespace, "Namespace");
        add_all!(nodes, add_node, "Node");
        add_all!(pods, add_pod, "Pod");
        add_all!(services, add_service, "Service");
        add_all!(endpoint_slices, add_endpoint_slice, "EndpointSlice");
        add_all!(replica_sets, add_replica_set, "ReplicaSet");
        add_all!(deployments, add_deployment, "Deployment");
        add_all!(stateful_sets, add_stateful_set, "StatefulSet");
        add_all!(daemon_sets, add_daemon_set, "DaemonSet");
        add_all!(jobs, add_job, "Job");
        add_all!(cron_jobs, add_cron_job, "CronJob");
        (Cluster::new(inv), rejected)
    }
}
