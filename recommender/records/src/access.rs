//! The Kubernetes API permissions each binary uses, declared next to the code that uses them.
//!
//! The deploy tests compare these lists with the ClusterRoles in `deploy/`, so RBAC grants
//! exactly what the code needs and nothing more.

/// One permission: verbs on a resource of an API group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiAccess {
    /// The API group; `""` is the core group.
    pub group: &'static str,
    /// The plural resource name, e.g. `pods`.
    pub resource: &'static str,
    /// The verbs, e.g. `["get", "list", "watch"]`.
    pub verbs: &'static [&'static str],
}
