//! The cluster state: the model with the NetworkPolicies applied in it, compiled for the
//! evaluator. What the live watch publishes and what a snapshot file gives, so `serve` and
//! `ingest` treat both sources alike.
//!
//! It lives outside [`crate::cluster`] because it joins the model with the evaluator's
//! [`PolicySet`]; the model itself knows nothing of the evaluator.

use std::collections::BTreeSet;
use std::time::SystemTime;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash_records::Snapshot;
use leash_records::error::Chain;

use crate::cluster::watch::FromSnapshot;
use crate::cluster::{Cluster, Rejected, qualified_name};
use crate::eval::PolicySet;

/// The cluster model at one point in time, with the NetworkPolicies applied in it.
#[derive(Debug, Clone)]
pub struct ClusterState {
    /// The indexed model.
    pub cluster: Cluster,
    /// The applied NetworkPolicies the evaluator accepts, sorted by namespace and name.
    pub policies: Vec<NetworkPolicy>,
    /// The applied ClusterNetworkPolicies the evaluator accepts (valid under their CRD),
    /// sorted by name.
    pub cluster_policies: Vec<crate::cnp::ClusterNetworkPolicy>,
    /// [`Self::policies`] and [`Self::cluster_policies`], compiled for evaluation.
    pub policy_set: PolicySet,
    /// Counts the states a source published: 1 for the first, +1 per rebuild.
    pub generation: u64,
    /// When this state was built.
    pub built_at: SystemTime,
    /// Objects left out (undecodable or rejected by the model), sorted.
    pub rejected: Vec<Rejected>,
    /// Watch errors the source has seen so far (each was retried); 0 for one-shot sources.
    pub watch_errors: u64,
}

impl ClusterState {
    /// A state holding `cluster` and no applied policies, e.g. for tests and benchmarks.
    pub fn from_cluster(cluster: Cluster) -> Self {
        ClusterState {
            cluster,
            policies: Vec::new(),
            cluster_policies: Vec::new(),
            policy_set: PolicySet::default(),
            generation: 1,
            built_at: SystemTime::now(),
            rejected: Vec::new(),
            watch_errors: 0,
        }
    }

    /// Builds the state from a snapshot. Never fails: an object the model or the policy
    /// evaluator rejects is left out and listed in [`Self::rejected`] with its name, so one bad
    /// object cannot take the whole cluster view down.
    pub fn build(snapshot: &Snapshot, generation: u64) -> Self {
        let (cluster, mut rejected) = Cluster::from_snapshot_lenient(snapshot);

        let mut policies: Vec<NetworkPolicy> = snapshot.network_policies.clone();
        policies.sort_by_cached_key(|p| qualified_name(&p.metadata));
        let mut seen = BTreeSet::new();
        policies.retain(|p| {
            let name = qualified_name(&p.metadata);
            let verdict = if !seen.insert(name.clone()) {
                Err("defined twice; the first one is kept".to_owned())
            } else {
                PolicySet::new(std::slice::from_ref(p))
                    .map(drop)
                    .map_err(|e| Chain(&e).to_string())
            };
            match verdict {
                Ok(()) => true,
                Err(reason) => {
                    rejected.push(Rejected {
                        kind: "NetworkPolicy".to_owned(),
                        name,
                        reason,
                    });
                    false
                }
            }
        });
        let cluster_policies = applied_cluster_policies(snapshot, &mut rejected);
        // Each policy compiled alone and names are unique, so the set compiles; should it not,
        // evaluating with no policies at all would silently allow everything, so say so loudly.
        let policy_set = PolicySet::new(&policies)
            .and_then(|s| s.with_cluster_policies(&cluster_policies))
            .unwrap_or_else(|e| {
            tracing::error!(error = %Chain(&e), "the applied NetworkPolicies do not compile as a set");
            rejected.push(Rejected {
                kind: "NetworkPolicy".to_owned(),
                name: "*".to_owned(),
                reason: Chain(&e).to_string(),
            });
            PolicySet::default()
        });
        rejected.sort();
        ClusterState {
            cluster,
            policies,
            cluster_policies,
            policy_set,
            generation,
            built_at: SystemTime::now(),
            rejected,
            watch_errors: 0,
        }
    }

    /// Logs the rejected objects at `warn`, except those `previous` already listed (a live model
    /// is rebuilt often; one bad object is reported when it appears, not on every rebuild).
    pub fn log_rejected(&self, previous: Option<&ClusterState>) {
        for r in &self.rejected {
            if previous.is_some_and(|p| p.rejected.binary_search(r).is_ok()) {
                continue;
            }
            tracing::warn!(kind = %r.kind, object = %r.name, reason = %r.reason,
                "object left out of the cluster model");
        }
    }
}

/// The snapshot's ClusterNetworkPolicies that are valid under their CRD (its limits and CEL
/// rules), sorted by name; the others, and a name's second definition, go to `rejected`.
fn applied_cluster_policies(
    snapshot: &Snapshot,
    rejected: &mut Vec<Rejected>,
) -> Vec<crate::cnp::ClusterNetworkPolicy> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for v in &snapshot.cluster_network_policies {
        let reject = |name: &str, reason: String| Rejected {
            kind: crate::cnp::KIND.to_owned(),
            name: name.to_owned(),
            reason,
        };
        match crate::cnp::object_of_value(v.clone()) {
            Ok(Some(c)) if seen.insert(c.name().to_owned()) => out.push(c),
            Ok(Some(c)) => rejected.push(reject(
                c.name(),
                "defined twice; the first one is kept".to_owned(),
            )),
            Ok(None) => {}
            Err(e) => {
                let name = v
                    .pointer("/metadata/name")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                rejected.push(reject(name, Chain(&e).to_string()));
            }
        }
    }
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

impl FromSnapshot for ClusterState {
    fn from_snapshot(
        snapshot: &Snapshot,
        generation: u64,
        undecodable: Vec<Rejected>,
        watch_errors: u64,
    ) -> Self {
        let mut state = ClusterState::build(snapshot, generation);
        state.rejected.extend(undecodable);
        state.rejected.sort();
        state.watch_errors = watch_errors;
        state
    }

    fn log_rejected(&self, previous: Option<&Self>) {
        ClusterState::log_rejected(self, previous);
    }

    fn log_rebuilt(&self) {
        tracing::debug!(
            generation = self.generation,
            pods = self.cluster.pods.len(),
            policies = self.policies.len(),
            "cluster model rebuilt"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SNAPSHOT: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: good, namespace: shop, labels: {app: good}}
  spec: {containers: [{name: c, image: i}]}
  status: {podIP: 198.51.100.10}
- apiVersion: v1
  kind: Pod
  metadata: {name: bad-ip, namespace: shop}
  spec: {containers: [{name: c, image: i}]}
  status: {podIP: not-an-ip}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny, namespace: shop}
  spec: {podSelector: {}, policyTypes: [Egress]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: broken, namespace: shop}
  spec:
    podSelector: {}
    egress: [{ports: [{port: 70000}]}]
"#;

    #[test]
    fn rejected_objects_are_named_and_left_out() {
        let snap = leash_records::snapshot::parse_str(SNAPSHOT, Path::new("s.yaml")).unwrap();
        let state = ClusterState::build(&snap, 7);
        assert_eq!(state.generation, 7);
        let pods: Vec<&str> = state.cluster.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pods, ["good"]);
        let names: Vec<&str> = state.rejected.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["shop/broken", "shop/bad-ip"],
            "{:?}",
            state.rejected
        );
        assert!(state.rejected[1].reason.contains("not-an-ip"));
        let policies: Vec<_> = state
            .policies
            .iter()
            .map(|p| p.metadata.name.as_deref())
            .collect();
        assert_eq!(policies, [Some("deny")]);
        assert_eq!(state.policy_set.len(), 1);
    }

    #[test]
    fn applied_cluster_network_policies_are_validated_and_compiled() {
        let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: policy.networking.k8s.io/v1alpha2
  kind: ClusterNetworkPolicy
  metadata: {name: guard}
  spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [203.0.113.0/24]}]}]}
- apiVersion: policy.networking.k8s.io/v1alpha2
  kind: ClusterNetworkPolicy
  metadata: {name: bad}
  spec: {tier: Admin, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [nope]}]}]}
- apiVersion: policy.networking.k8s.io/v1alpha2
  kind: ClusterNetworkPolicy
  metadata: {name: guard}
  spec: {tier: Baseline, priority: 1, subject: {namespaces: {}}}
"#;
        let snap = leash_records::snapshot::parse_str(text, Path::new("s.yaml")).unwrap();
        let state = ClusterState::build(&snap, 1);
        let names: Vec<&str> = state.cluster_policies.iter().map(|c| c.name()).collect();
        assert_eq!(names, ["guard"]);
        assert_eq!(state.policy_set.cluster_policies().len(), 1);
        let rejected: Vec<(&str, &str)> = state
            .rejected
            .iter()
            .map(|r| (r.name.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (
                    "bad",
                    "ClusterNetworkPolicy bad: invalid: spec.egress[0].to[0].networks[0]: Invalid CIDR format provided"
                ),
                ("guard", "defined twice; the first one is kept"),
            ]
        );
    }
}
