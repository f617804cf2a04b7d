//! Rendered objects parsed into their typed forms, strictly.

use std::fmt;
use std::path::Path;

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    core::v1::{ConfigMap, Namespace, PodSpec, Secret, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
    rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
};
use leash_records::error::Chain;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::certmanager::{Certificate, Issuer};
use crate::{Error, Result, render, strict};

/// Which object: `apiVersion`, `kind`, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    /// `apiVersion`, e.g. `apps/v1`.
    pub api_version: String,
    /// `kind`, e.g. `DaemonSet`.
    pub kind: String,
    /// `metadata.namespace`, if any.
    pub namespace: Option<String>,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version, self.kind)?;
        match &self.namespace {
            Some(ns) => write!(f, " {ns}/{}", self.name),
            None => write!(f, " {}", self.name),
        }
    }
}

impl ObjectId {
    /// Reads the identity of a raw object.
    fn of(value: &Value) -> Result<Self, String> {
        let field = |v: Option<&Value>, what: &str| {
            v.and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("missing `{what}`"))
        };
        let meta = value.get("metadata");
        Ok(Self {
            api_version: field(value.get("apiVersion"), "apiVersion")?,
            kind: field(value.get("kind"), "kind")?,
            namespace: meta
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            name: field(meta.and_then(|m| m.get("name")), "metadata.name")?,
        })
    }
}

/// One object in its typed form.
#[derive(Debug, Clone)]
pub enum Object {
    /// `v1 Namespace`.
    Namespace(Box<Namespace>),
    /// `v1 ServiceAccount`.
    ServiceAccount(Box<ServiceAccount>),
    /// `v1 Service`.
    Service(Box<Service>),
    /// `v1 Secret`.
    Secret(Box<Secret>),
    /// `v1 ConfigMap`.
    ConfigMap(Box<ConfigMap>),
    /// `rbac.authorization.k8s.io/v1 ClusterRole`.
    ClusterRole(Box<ClusterRole>),
    /// `rbac.authorization.k8s.io/v1 ClusterRoleBinding`.
    ClusterRoleBinding(Box<ClusterRoleBinding>),
    /// `rbac.authorization.k8s.io/v1 Role`.
    Role(Box<Role>),
    /// `rbac.authorization.k8s.io/v1 RoleBinding`.
    RoleBinding(Box<RoleBinding>),
    /// `apps/v1 DaemonSet`.
    DaemonSet(Box<DaemonSet>),
    /// `apps/v1 StatefulSet`.
    StatefulSet(Box<StatefulSet>),
    /// `apps/v1 Deployment`.
    Deployment(Box<Deployment>),
    /// `policy/v1 PodDisruptionBudget`.
    PodDisruptionBudget(Box<PodDisruptionBudget>),
    /// `cert-manager.io/v1 Issuer`.
    Issuer(Box<Issuer>),
    /// `cert-manager.io/v1 Certificate`.
    Certificate(Box<Certificate>),
}

/// An object with its identity.
#[derive(Debug, Clone)]
pub struct Typed {
    /// Which object.
    pub id: ObjectId,
    /// The typed form.
    pub object: Object,
}

/// Every object of one rendered kustomization, typed.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// Where they came from (the kustomization directory, or a test's name).
    pub source: String,
    /// The objects, in rendered order.
    pub objects: Vec<Typed>,
}

/// Deserialises `value` into `T`, then rejects it if serialising `T` back lost any field.
fn parse_strictly<T: DeserializeOwned + Serialize>(
    value: &Value,
    source: &str,
    id: &ObjectId,
) -> Result<T> {
    let typed: T = serde_json::from_value(value.clone()).map_err(|e| Error::Schema {
        source_name: source.to_owned(),
        object: Box::new(id.clone()),
        message: Chain(&e).to_string(),
    })?;
    let back = serde_json::to_value(&typed).map_err(|e| Error::Schema {
        source_name: source.to_owned(),
        object: Box::new(id.clone()),
        message: format!("cannot serialise the typed form back: {}", Chain(&e)),
    })?;
    let paths = strict::dropped_fields(value, &back);
    if paths.is_empty() {
        Ok(typed)
    } else {
        Err(Error::UnknownFields {
            source_name: source.to_owned(),
            object: Box::new(id.clone()),
            paths,
        })
    }
}

/// Removes the line breaks kustomize folds long base64 values with (`data` of a Secret,
/// `binaryData` of a ConfigMap). The API server's decoder skips them; k8s-openapi's does not.
fn unfold_base64(value: &mut Value) {
    let field = match value.get("kind").and_then(Value::as_str) {
        Some("Secret") => "data",
        Some("ConfigMap") => "binaryData",
        _ => return,
    };
    if let Some(map) = value.get_mut(field).and_then(Value::as_object_mut) {
        for v in map.values_mut() {
            if let Value::String(s) = v {
                s.retain(|c| c != '\n' && c != '\r');
            }
        }
    }
}

/// Parses one raw object into its typed form, strictly. `source` names it in errors.
pub fn parse_object(value: &Value, source: &str, document: usize) -> Result<Typed> {
    let id = ObjectId::of(value).map_err(|message| Error::NotAnObject {
        source_name: source.to_owned(),
        document,
        message,
    })?;
    let mut value = value.clone();
    unfold_base64(&mut value);
    let value = &value;
    macro_rules! typed {
        ($variant:ident) => {
            Object::$variant(Box::new(parse_strictly(value, source, &id)?))
        };
    }
    let object = match (id.api_version.as_str(), id.kind.as_str()) {
        ("v1", "Namespace") => typed!(Namespace),
        ("v1", "ServiceAccount") => typed!(ServiceAccount),
        ("v1", "Service") => typed!(Service),
        ("v1", "Secret") => typed!(Secret),
        ("v1", "ConfigMap") => typed!(ConfigMap),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed!(ClusterRole),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => typed!(ClusterRoleBinding),
        ("rbac.authorization.k8s.io/v1", "Role") => typed!(Role),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => typed!(RoleBinding),
        ("apps/v1", "DaemonSet") => typed!(DaemonSet),
        ("apps/v1", "StatefulSet") => typed!(StatefulSet),
        ("apps/v1", "Deployment") => typed!(Deployment),
        ("policy/v1", "PodDisruptionBudget") => typed!(PodDisruptionBudget),
        ("cert-manager.io/v1", "Issuer") => typed!(Issuer),
        ("cert-manager.io/v1", "Certificate") => typed!(Certificate),
        _ => {
            return Err(Error::UnsupportedKind {
                source_name: source.to_owned(),
                object: Box::new(id),
            });
        }
    };
    Ok(Typed { id, object })
}

impl Manifests {
    /// Parses raw objects, strictly; `source` names them in errors.
    pub fn parse(source: &str, values: &[Value]) -> Result<Self> {
        let objects = values
            .iter()
            .enumerate()
            .map(|(i, v)| parse_object(v, source, i + 1))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            source: source.to_owned(),
            objects,
        })
    }

    /// Renders a kustomization directory and parses its objects.
    pub fn load(dir: &Path) -> Result<Self> {
        let values = render::render(dir)?;
        Self::parse(&dir.display().to_string(), &values)
    }

    /// The DaemonSet named `name`.
    pub fn daemon_set(&self, name: &str) -> Option<&DaemonSet> {
        self.objects.iter().find_map(|t| match &t.object {
            Object::DaemonSet(d) if t.id.name == name => Some(&**d),
            _ => None,
        })
    }

    /// The StatefulSet named `name`.
    pub fn stateful_set(&self, name: &str) -> Option<&StatefulSet> {
        self.objects.iter().find_map(|t| match &t.object {
            Object::StatefulSet(s) if t.id.name == name => Some(&**s),
            _ => None,
        })
    }

    /// The Deployment named `name`.
    pub fn deployment(&self, name: &str) -> Option<&Deployment> {
        self.objects.iter().find_map(|t| match &t.object {
            Object::Deployment(d) if t.id.name == name => Some(&**d),
            _ => None,
        })
    }

    /// The pod template of the workload `name`: a DaemonSet, StatefulSet or Deployment.
    pub fn pod_spec(&self, name: &str) -> Option<&PodSpec> {
        self.daemon_set(name)
            .and_then(|d| d.spec.template.spec.as_ref())
            .or_else(|| {
                self.stateful_set(name)
                    .and_then(|s| s.spec.template.spec.as_ref())
            })
            .or_else(|| {
                self.deployment(name)
                    .and_then(|d| d.spec.template.spec.as_ref())
            })
    }

    /// The PodDisruptionBudget named `name`.
    pub fn pod_disruption_budget(&self, name: &str) -> Option<&PodDisruptionBudget> {
        self.objects.iter().find_map(|t| match &t.object {
            Object::PodDisruptionBudget(p) if t.id.name == name => Some(&**p),
            _ => None,
        })
    }

    /// The Role named `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.objects.iter().find_map(|t| match &t.object {
            Object::Role(r) if t.id.name == name => Some(&**r),
            _ => None,
        })
    }

    /// The ClusterRole named `name`.
    pub fn cluster_role(&self, name: &str) -> Option<&ClusterRole> {
        self.objects.iter().find_map(|t| match &t.object {
            Object::ClusterRole(r) if t.id.name == name => Some(&**r),
            _ => None,
        })
    }

    /// Every ClusterRoleBinding.
    pub fn cluster_role_bindings(&self) -> impl Iterator<Item = &ClusterRoleBinding> {
        self.objects.iter().filter_map(|t| match &t.object {
            Object::ClusterRoleBinding(b) => Some(&**b),
            _ => None,
        })
    }

    /// The Service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.objects.iter().find_map(|t| match &t.object {
            Object::Service(s) if t.id.name == name => Some(&**s),
            _ => None,
        })
    }

    /// Every Secret.
    pub fn secrets(&self) -> impl Iterator<Item = &Secret> {
        self.objects.iter().filter_map(|t| match &t.object {
            Object::Secret(s) => Some(&**s),
            _ => None,
        })
    }

    /// Every cert-manager Certificate.
    pub fn certificates(&self) -> impl Iterator<Item = &Certificate> {
        self.objects.iter().filter_map(|t| match &t.object {
            Object::Certificate(c) => Some(&**c),
            _ => None,
        })
    }

    /// Every cert-manager Issuer.
    pub fn issuers(&self) -> impl Iterator<Item = &Issuer> {
        self.objects.iter().filter_map(|t| match &t.object {
            Object::Issuer(i) => Some(&**i),
            _ => None,
        })
    }
}
