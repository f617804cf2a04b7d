//! `ClusterNetworkPolicy` (`policy.networking.k8s.io/v1alpha2`, network-policy-api bundle
//! v0.2.0): the cluster-scoped policies of the Admin tier (before NetworkPolicies) and the
//! Baseline tier (after them). The serde types follow the published CRDs (standard channel,
//! plus the experimental channel's `nodes` and `domainNames` egress peers); reading refuses
//! every field outside them (`deny_unknown_fields`). The CRD's structural limits and its
//! CEL rules (`x-kubernetes-validations`) are checked by [`validate`]; the evaluator
//! (`crate::eval`) compiles only validated objects.

pub mod validate;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

pub use validate::{Invalid, validate};

/// `apiVersion` of the objects.
pub const API_VERSION: &str = "policy.networking.k8s.io/v1alpha2";
/// `kind` of the objects.
pub const KIND: &str = "ClusterNetworkPolicy";

/// One ClusterNetworkPolicy (cluster-scoped: no namespace).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterNetworkPolicy {
    /// `policy.networking.k8s.io/v1alpha2`.
    pub api_version: String,
    /// `ClusterNetworkPolicy`.
    pub kind: String,
    /// The object's metadata; only its name matters to leash.
    pub metadata: ObjectMeta,
    /// The policy.
    pub spec: Spec,
    /// Written by implementations; read and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

impl ClusterNetworkPolicy {
    /// `metadata.name`, empty when absent.
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }
}

/// `spec`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// Admin (before NetworkPolicies) or Baseline (after them).
    pub tier: Tier,
    /// 0 to 1000; lower values are checked first within the tier.
    pub priority: i32,
    /// The pods the policy applies to.
    pub subject: Subject,
    /// Rules on traffic into the subject, checked in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<IngressRule>,
    /// Rules on traffic from the subject, checked in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<EgressRule>,
}

/// The tier of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub enum Tier {
    /// Evaluated before NetworkPolicies.
    Admin,
    /// Evaluated after NetworkPolicies, only for pods no NetworkPolicy selects.
    Baseline,
}

impl Tier {
    /// `Admin` or `Baseline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

/// `spec.subject`: exactly one of its fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// Every pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods by namespace and pod labels.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedPod {
    /// The namespaces; absent, every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The pods inside them.
    pub pod_selector: LabelSelector,
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub enum Action {
    /// Allow the connection; lower tiers are not consulted.
    Accept,
    /// Deny the connection; lower tiers are not consulted.
    Deny,
    /// Skip the rest of this tier: NetworkPolicies (after Admin) or the default (after
    /// Baseline) decide.
    Pass,
}

impl Action {
    /// `Accept`, `Deny` or `Pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

/// One `spec.ingress` rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressRule {
    /// An optional name (at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the rule does.
    pub action: Action,
    /// The sources (1 to 25).
    pub from: Vec<IngressPeer>,
    /// The destination ports (1 to 25); absent, every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolPort>>,
}

/// One `spec.egress` rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// An optional name (at most 100 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What the rule does.
    pub action: Action,
    /// The destinations (1 to 25).
    pub to: Vec<EgressPeer>,
    /// The destination ports (1 to 25); absent, every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolPort>>,
}

/// A source of an ingress rule: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressPeer {
    /// Every (pod-network) pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The (pod-network) pods this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// A destination of an egress rule: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressPeer {
    /// Every (pod-network) pod of the namespaces this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The (pod-network) pods this selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// Address ranges (1 to 25 CIDRs); they match pod addresses too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// The addresses (`status.addresses`) of the nodes this selects (experimental channel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// Domain names, exact or `*.` wildcards (experimental channel; Accept rules only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// One `protocols` entry: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProtocolPort {
    /// TCP ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ProtocolPorts>,
    /// UDP ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ProtocolPorts>,
    /// SCTP ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ProtocolPorts>,
    /// A container port's name on the destination pod (its protocol is the port's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// The ports of one protocol.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProtocolPorts {
    /// The destination port (required by the CRD's `minProperties: 1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// A port number or range: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// One port, 1 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    /// A range, both ends included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// A port range, both ends included; `start < end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRange {
    /// The first port.
    pub start: i32,
    /// The last port.
    pub end: i32,
}

/// Why a file's ClusterNetworkPolicies could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// A document is not YAML or JSON.
    #[error("document {document}: not YAML or JSON")]
    Syntax {
        /// 1-based document of the file.
        document: usize,
        /// The parser's error.
        source: serde_norway::Error,
    },
    /// A ClusterNetworkPolicy with a field outside the CRD, or malformed.
    #[error("ClusterNetworkPolicy {policy}: does not match the CRD")]
    Object {
        /// The name, as far as it could be read.
        policy: String,
        /// The field that is not in the CRD, or malformed.
        source: serde_json::Error,
    },
    /// A ClusterNetworkPolicy the API server would refuse.
    #[error("ClusterNetworkPolicy {policy}: invalid")]
    Invalid {
        /// The name.
        policy: String,
        /// The rule it breaks, naming the field.
        source: Invalid,
    },
}

/// The ClusterNetworkPolicies of a file's text, in file order: every document, and the items
/// of `List`s, each read strictly and validated. Other kinds are skipped.
pub fn objects_of_text(text: &str) -> Result<Vec<ClusterNetworkPolicy>, ReadError> {
    let mut out = Vec::new();
    let objects = crate::manifests::objects(text).map_err(|e| ReadError::Syntax {
        document: e.document,
        source: e.source,
    })?;
    for item in objects {
        if let Some(c) = object_of_value(item)? {
            out.push(c);
        }
    }
    Ok(out)
}

/// One object, when it is a ClusterNetworkPolicy: read strictly and validated.
pub fn object_of_value(item: serde_json::Value) -> Result<Option<ClusterNetworkPolicy>, ReadError> {
    if item.get("kind").and_then(serde_json::Value::as_str) != Some(KIND)
        || item.get("apiVersion").and_then(serde_json::Value::as_str) != Some(API_VERSION)
    {
        return Ok(None);
    }
    let policy = item
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_owned();
    let c: ClusterNetworkPolicy =
        serde_json::from_value(item).map_err(|source| ReadError::Object {
            policy: policy.clone(),
            source,
        })?;
    validate(&c).map_err(|source| ReadError::Invalid { policy, source })?;
    Ok(Some(c))
}
