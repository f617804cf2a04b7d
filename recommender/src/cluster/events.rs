//! Kubernetes Events about workloads, through kube-rs's event `Recorder`.
//!
//! `leash serve` publishes a Warning event when a workload that is already locked down makes
//! egress its applied policies deny, so `kubectl describe` and event-based alerting show it
//! next to the workload. The recorder writes `events.k8s.io/v1` Events: it creates an event the
//! first time and, when the same event repeats within its cache window, patches that event's
//! series count instead of creating another one.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use leash_records::access::ApiAccess;

use super::{Cluster, PodId, WorkloadId};

/// The permissions [`EventPublisher`] uses, as kube-rs's `Recorder` needs them: `create` for a
/// new event, `patch` for a repeated one (its series).
pub const EVENTS_ACCESS: &[ApiAccess] = &[ApiAccess {
    group: "events.k8s.io",
    resource: "events",
    verbs: &["create", "patch"],
}];

/// The reporting controller named in leash's events.
pub const REPORTING_CONTROLLER: &str = "leash";

/// The environment variable `leash serve` takes its events' reporting instance from: the pod
/// name, which the deploy manifests set from the downward API (`metadata.name`).
pub const INSTANCE_ENV: &str = "POD_NAME";

/// The `reason` of [`EventPublisher::publish_unexpected_egress`] events.
pub const REASON_UNEXPECTED_EGRESS: &str = "UnexpectedEgress";

/// The `action` of [`EventPublisher::publish_unexpected_egress`] events.
pub const ACTION_OBSERVE_EGRESS: &str = "ObserveEgress";

/// The `reason` of [`EventPublisher::publish_egress_drift`] events.
pub const REASON_EGRESS_DRIFT: &str = "EgressDrift";

/// The `action` of [`EventPublisher::publish_egress_drift`] events.
pub const ACTION_OBSERVE_DNS: &str = "ObserveDNS";

/// The API limits an event's note to 1 kB.
const MAX_NOTE: usize = 1024;

/// Publishes leash's Kubernetes Events.
#[derive(Clone)]
pub struct EventPublisher {
    recorder: Recorder,
}

impl EventPublisher {
    /// A publisher reporting as controller `leash`, instance `instance` (e.g. the pod name;
    /// `None` reports the controller name as the instance).
    pub fn new(client: kube::Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance,
        };
        EventPublisher {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes a Warning `UnexpectedEgress` event about `regarding` (a pod or workload, see
    /// [`pod_reference`] and [`workload_reference`]), with `message` as its note (cut to the
    /// API's 1 kB limit). The event goes to the object's namespace (`default` for
    /// cluster-scoped objects).
    pub async fn publish_unexpected_egress(
        &self,
        regarding: &ObjectReference,
        message: &str,
    ) -> Result<(), kube::Error> {
        self.warning(
            REASON_UNEXPECTED_EGRESS,
            ACTION_OBSERVE_EGRESS,
            regarding,
            message,
        )
        .await
    }

    /// Publishes a Warning `EgressDrift` event about `regarding`: a DNS answer moved a name
    /// to an address its applied policies deny (`crate::drift`), with `message` as its note
    /// (cut to 1 kB), as [`EventPublisher::publish_unexpected_egress`] does.
    pub async fn publish_egress_drift(
        &self,
        regarding: &ObjectReference,
        message: &str,
    ) -> Result<(), kube::Error> {
        self.warning(REASON_EGRESS_DRIFT, ACTION_OBSERVE_DNS, regarding, message)
            .await
    }

    /// Publishes a Warning event with `message` as its note, cut to the API's 1 kB limit.
    async fn warning(
        &self,
        reason: &str,
        action: &str,
        regarding: &ObjectReference,
        message: &str,
    ) -> Result<(), kube::Error> {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            note: Some(truncate(message, MAX_NOTE).to_owned()),
            action: action.to_owned(),
            secondary: None,
        };
        self.recorder.publish(&event, regarding).await
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A reference to a pod of the model.
pub fn pod_reference(cluster: &Cluster, pod: PodId) -> ObjectReference {
    let p = &cluster.pods[pod];
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Pod".to_owned()),
        namespace: Some(p.namespace.clone()),
        name: Some(p.name.clone()),
        uid: p.uid.clone(),
        ..ObjectReference::default()
    }
}

/// A reference to a workload of the model (its controller, or the pod of a bare pod).
pub fn workload_reference(cluster: &Cluster, workload: WorkloadId) -> ObjectReference {
    let w = &cluster.workloads[workload];
    let api_version = match w.kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => Some("apps/v1"),
        "Job" | "CronJob" => Some("batch/v1"),
        "Pod" => Some("v1"),
        // Another controller kind: its group is unknown here; kubectl matches by kind and name.
        _ => None,
    };
    ObjectReference {
        api_version: api_version.map(str::to_owned),
        kind: Some(w.kind.clone()),
        namespace: Some(w.namespace.clone()),
        name: Some(w.name.clone()),
        ..ObjectReference::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_cut_on_character_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate(&"x".repeat(2000), MAX_NOTE).len(), MAX_NOTE);
    }
}
