//! CiliumNetworkPolicy (`cilium.io/v2`): the typed subset leash writes and reads.
//!
//! leash writes one egress CiliumNetworkPolicy per workload (`render::cilium`) and reads such
//! policies back for `audit` and `explain`. The structs below are that subset and nothing
//! more: reading rejects every field outside it (`deny_unknown_fields`), so a policy leash
//! cannot evaluate is refused with the field's name rather than half understood. `metadata`
//! is the exception: its server-set fields (uid, resourceVersion, …) mean nothing to policy.
//!
//! Field order is the YAML's order (serde writes struct fields in declaration order, maps
//! sorted): identity, `endpointSelector`, then per egress rule its peers before `toPorts`.
//!
//! - [`eval`]: the evaluator of this subset, from Cilium's documented semantics;
//! - [`mixed`]: CiliumNetworkPolicies laid over NetworkPolicy evaluations (`audit`,
//!   `explain`), and the facts the output and its checks share.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod eval;
pub mod mixed;

/// `apiVersion` of every object.
pub const API_VERSION: &str = "cilium.io/v2";

/// `kind` of every object.
pub const KIND: &str = "CiliumNetworkPolicy";

/// The label Cilium gives every endpoint with its pod's namespace (`k8s:` source).
pub const NAMESPACE_LABEL: &str = "k8s:io.kubernetes.pod.namespace";

/// A CiliumNetworkPolicy of leash's subset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CiliumNetworkPolicy {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always [`KIND`].
    pub kind: String,
    /// Name, namespace, labels, annotations.
    pub metadata: Metadata,
    /// The policy.
    pub spec: Spec,
}

/// The object's metadata: the fields leash writes; others are read and ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The policy's name.
    pub name: String,
    /// The policy's namespace (a CiliumNetworkPolicy is namespaced).
    #[serde(default)]
    pub namespace: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `spec`: which endpoints, and their egress allow rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Spec {
    /// A description for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The endpoints (pods of the policy's namespace) the policy applies to.
    pub endpoint_selector: Selector,
    /// Egress allow rules; a policy with any puts its endpoints in default deny for egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// An endpoint selector: `matchLabels` AND every `matchExpressions` entry. Keys may carry a
/// source prefix (`k8s:`, `any:`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Exact label matches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: String,
    /// The values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// One egress rule: its peers (OR; a rule with none of them applies to every destination)
/// on its ports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressRule {
    /// Endpoints by labels; without the namespace label, of the policy's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_endpoints: Vec<Selector>,
    /// Reserved identities (`kube-apiserver`, `host`, `world`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_entities: Vec<Entity>,
    /// Addresses outside the cluster by CIDR, with exceptions.
    #[serde(default, rename = "toCIDRSet", skip_serializing_if = "Vec::is_empty")]
    pub to_cidr_set: Vec<CidrRule>,
    /// Addresses outside the cluster by the DNS name the endpoint looked up.
    #[serde(default, rename = "toFQDNs", skip_serializing_if = "Vec::is_empty")]
    pub to_fqdns: Vec<FqdnSelector>,
    /// Ports (OR); none means every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to_ports: Vec<PortRule>,
}

impl EgressRule {
    /// Whether the rule names no peer at all (then it applies to every destination).
    pub fn no_peer(&self) -> bool {
        self.to_endpoints.is_empty()
            && self.to_entities.is_empty()
            && self.to_cidr_set.is_empty()
            && self.to_fqdns.is_empty()
    }
}

/// The reserved identities of leash's subset (`toEntities`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// Every destination.
    All,
    /// Everything outside the cluster.
    World,
    /// Everything inside the cluster (endpoints, nodes, the API server).
    Cluster,
    /// The endpoint's own node.
    Host,
    /// Any other node of the cluster.
    RemoteNode,
    /// The Kubernetes API server.
    KubeApiserver,
}

impl Entity {
    /// The spelling in a policy.
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::All => "all",
            Entity::World => "world",
            Entity::Cluster => "cluster",
            Entity::Host => "host",
            Entity::RemoteNode => "remote-node",
            Entity::KubeApiserver => "kube-apiserver",
        }
    }
}

/// A `toCIDRSet` entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CidrRule {
    /// The block.
    pub cidr: String,
    /// Blocks inside it that are not allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
}

/// A name selector (`toFQDNs` entry, `rules.dns` entry): exactly one of the two fields.
/// (YAML writes a tagged enum as a tag, `!matchName x`: it goes through a map instead.)
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "FqdnFields", into = "FqdnFields")]
pub enum FqdnSelector {
    /// Exactly this name.
    MatchName(String),
    /// A pattern: `*` stands for any run of DNS characters within one label; `*` alone for
    /// every name.
    MatchPattern(String),
}

/// [`FqdnSelector`] as the CRD writes it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct FqdnFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    match_pattern: Option<String>,
}

impl TryFrom<FqdnFields> for FqdnSelector {
    type Error = &'static str;

    fn try_from(f: FqdnFields) -> Result<Self, Self::Error> {
        match (f.match_name, f.match_pattern) {
            (Some(n), None) => Ok(FqdnSelector::MatchName(n)),
            (None, Some(p)) => Ok(FqdnSelector::MatchPattern(p)),
            _ => Err("exactly one of matchName and matchPattern"),
        }
    }
}

impl From<FqdnSelector> for FqdnFields {
    fn from(s: FqdnSelector) -> Self {
        match s {
            FqdnSelector::MatchName(n) => FqdnFields {
                match_name: Some(n),
                match_pattern: None,
            },
            FqdnSelector::MatchPattern(p) => FqdnFields {
                match_name: None,
                match_pattern: Some(p),
            },
        }
    }
}

/// A `toPorts` entry: ports, and optionally the DNS proxy's rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    /// Ports (OR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortProtocol>,
    /// Layer-7 rules; leash's subset: `dns`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<L7Rules>,
}

/// `toPorts[].rules`: the DNS proxy's allowed lookups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct L7Rules {
    /// Lookups the DNS proxy lets through (and learns the answers of, for `toFQDNs`).
    pub dns: Vec<FqdnSelector>,
}

/// A port, a range (`endPort`), and a protocol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortProtocol {
    /// The port number as text (`"443"`); `"0"` means every port.
    pub port: String,
    /// The last port of a range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
    /// `TCP`, `UDP`, `SCTP`, `ANY` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<PortProtocolKind>,
}

/// The protocols of leash's subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortProtocolKind {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP.
    #[serde(rename = "SCTP")]
    Sctp,
    /// Any of them.
    #[serde(rename = "ANY")]
    Any,
}

impl PortProtocolKind {
    /// The protocol of a flow.
    pub fn of(p: leash_records::Protocol) -> Self {
        match p {
            leash_records::Protocol::Tcp => Self::Tcp,
            leash_records::Protocol::Udp => Self::Udp,
            leash_records::Protocol::Sctp => Self::Sctp,
        }
    }
}

/// Whether a name may be written as a `matchName` (the CRD's pattern, at most 255 bytes):
/// DNS characters and dots, no empty label. Names come from DNS answers; anything else is
/// never written.
pub fn valid_match_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Reads CiliumNetworkPolicies of leash's subset from a YAML document.
pub fn from_yaml(text: &str) -> Result<CiliumNetworkPolicy, serde_norway::Error> {
    serde_norway::from_str(text)
}

/// Why a policy file's CiliumNetworkPolicies could not be read.
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
    /// A CiliumNetworkPolicy outside leash's subset, or malformed.
    #[error("CiliumNetworkPolicy {policy}: outside the subset leash evaluates")]
    Object {
        /// `namespace/name`, as far as it could be read.
        policy: String,
        /// The field that is not in the subset, or malformed.
        source: serde_json::Error,
    },
}

/// The CiliumNetworkPolicies (`cilium.io/v2`) of a policy file's text, in file order: every
/// document, and the items of `List`s. Other kinds are left to the NetworkPolicy reader.
pub fn objects_of_text(text: &str) -> Result<Vec<CiliumNetworkPolicy>, ReadError> {
    let mut out = Vec::new();
    let objects = crate::manifests::objects(text).map_err(|e| ReadError::Syntax {
        document: e.document,
        source: e.source,
    })?;
    for item in objects {
        if item.get("kind").and_then(serde_json::Value::as_str) != Some(KIND)
            || item.get("apiVersion").and_then(serde_json::Value::as_str) != Some(API_VERSION)
        {
            continue;
        }
        let text_of = |k: &str| {
            item.get("metadata")
                .and_then(|m| m.get(k))
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let policy = format!("{}/{}", text_of("namespace"), text_of("name"));
        out.push(
            serde_json::from_value(item).map_err(|source| ReadError::Object { policy, source })?,
        );
    }
    Ok(out)
}
