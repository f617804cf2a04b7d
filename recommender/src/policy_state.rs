//! The policy state a command evaluates: the objects applied in the cluster, with a given
//! set (a proposal, e.g. `leash audit --policies DIR`) put in their place.
//!
//! The rule, shared by `audit`, `explain` and the later `diff`, rollout and pull-request
//! work: the given set replaces
//! - every applied object labelled `app.kubernetes.io/managed-by: leash` in the namespaces
//!   the set covers (and the cluster-scoped ones, if the set holds any), and
//! - any applied object of the same kind, namespace and name as a given one.
//!
//! Every other applied object stays. A proposal can thus remove a rule or a whole leash
//! policy (by leaving it out), not only add, while the policies others applied (an ingress
//! policy of the database team) still take part. [`given_only`] is the state of the given
//! set alone (`--policies-only`).
//!
//! Pure: it takes and returns objects; loading them is the caller's business.

use std::collections::BTreeSet;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The label that marks the objects leash manages: what a given set may replace.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "leash");

/// Which object one is: its kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The namespace; empty for cluster-scoped objects (and for a namespaced object that
    /// names none, as the evaluator reads it).
    pub namespace: String,
    /// The kind, e.g. `NetworkPolicy`.
    pub kind: String,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a typed Kubernetes object.
    pub fn of<T>(object: &T) -> Self
    where
        T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta>,
    {
        let meta = object.metadata();
        ObjectKey {
            namespace: meta.namespace.clone().unwrap_or_default(),
            kind: T::KIND.to_owned(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// Whether an object carries leash's managed-by label.
pub fn is_managed(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY.0))
        .is_some_and(|v| v == MANAGED_BY.1)
}

/// What a given set covers: the applied objects it replaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// The namespaces of the given objects (`""` when it holds a cluster-scoped one).
    namespaces: BTreeSet<String>,
    /// The given objects.
    keys: BTreeSet<ObjectKey>,
}

impl Coverage {
    /// The coverage of the given objects' keys.
    pub fn new<'a>(given: impl IntoIterator<Item = &'a ObjectKey>) -> Self {
        let mut c = Coverage::default();
        for k in given {
            c.namespaces.insert(k.namespace.clone());
            c.keys.insert(k.clone());
        }
        c
    }

    /// Whether the given set replaces an applied object: one of the same kind, namespace
    /// and name, or a leash-managed one (`managed`) in a namespace the set covers.
    pub fn replaces(&self, applied: &ObjectKey, managed: bool) -> bool {
        self.keys.contains(applied) || (managed && self.namespaces.contains(&applied.namespace))
    }
}

/// The objects to evaluate, and which applied ones the given set replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyState<T> {
    /// The applied objects kept and the given ones, sorted by (namespace, kind, name).
    pub objects: Vec<T>,
    /// The applied objects the given set replaced, sorted.
    pub replaced: Vec<ObjectKey>,
    /// How many applied objects were kept.
    pub kept: usize,
}

/// The applied objects with `given` in place of those it replaces (see the module doc).
pub fn combine<T>(applied: &[T], given: &[T]) -> PolicyState<T>
where
    T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Clone,
{
    let given_keys: Vec<ObjectKey> = given.iter().map(ObjectKey::of).collect();
    let coverage = Coverage::new(&given_keys);
    let mut objects: Vec<(ObjectKey, T)> = Vec::with_capacity(applied.len() + given.len());
    let mut replaced = Vec::new();
    for o in applied {
        let key = ObjectKey::of(o);
        if coverage.replaces(&key, is_managed(o.metadata())) {
            replaced.push(key);
        } else {
            objects.push((key, o.clone()));
        }
    }
    let kept = objects.len();
    objects.extend(given_keys.into_iter().zip(given.iter().cloned()));
    // Stable: objects with equal keys (which the loaders refuse) keep their order.
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    replaced.sort();
    PolicyState {
        objects: objects.into_iter().map(|(_, o)| o).collect(),
        replaced,
        kept,
    }
}

/// The NetworkPolicies `given` laid over `applied` ([`combine`]), compiled for the evaluator:
/// the proposed state of `serve --proposed` and `rollout status --proposed`.
pub fn compiled(
    applied: &[k8s_openapi::api::networking::v1::NetworkPolicy],
    given: &[k8s_openapi::api::networking::v1::NetworkPolicy],
) -> crate::eval::Result<crate::eval::PolicySet> {
    crate::eval::PolicySet::new(&combine(applied, given).objects)
}

/// The state of the given set alone, applied objects ignored (`--policies-only`).
pub fn given_only<T>(given: &[T]) -> PolicyState<T>
where
    T: k8s_openapi::Resource + k8s_openapi::Metadata<Ty = ObjectMeta> + Clone,
{
    combine(&[], given)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::networking::v1::NetworkPolicy;

    use super::*;

    fn np(namespace: &str, name: &str, managed: bool) -> NetworkPolicy {
        NetworkPolicy {
            metadata: ObjectMeta {
                namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
                name: Some(name.to_owned()),
                labels: managed
                    .then(|| BTreeMap::from([(MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned())])),
                ..ObjectMeta::default()
            },
            ..NetworkPolicy::default()
        }
    }

    fn names(objects: &[NetworkPolicy]) -> Vec<String> {
        objects
            .iter()
            .map(|o| ObjectKey::of(o).to_string())
            .collect()
    }

    #[test]
    fn given_set_replaces_managed_objects_in_its_namespaces_and_same_names() {
        let applied = [
            np("shop", "web-egress", true),
            np("shop", "old-leash-policy", true),
            np("shop", "hand-written", false),
            np("shop", "same-name", false),
            np("db", "postgres-ingress", false),
            // Managed, but in a namespace the given set does not cover.
            np("db", "leash-elsewhere", true),
        ];
        let given = [
            np("shop", "web-egress", true),
            np("shop", "same-name", true),
        ];
        let state = combine(&applied, &given);
        assert_eq!(
            names(&state.objects),
            [
                "NetworkPolicy db/leash-elsewhere",
                "NetworkPolicy db/postgres-ingress",
                "NetworkPolicy shop/hand-written",
                "NetworkPolicy shop/same-name",
                "NetworkPolicy shop/web-egress",
            ]
        );
        assert_eq!(
            state
                .replaced
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "NetworkPolicy shop/old-leash-policy",
                "NetworkPolicy shop/same-name",
                "NetworkPolicy shop/web-egress",
            ]
        );
        assert_eq!(state.kept, 3);
        // The same-name object is the given one, not the applied one.
        let same = state
            .objects
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some("same-name"))
            .expect("kept");
        assert!(is_managed(&same.metadata));
    }

    #[test]
    fn an_unlabelled_object_is_replaced_only_by_its_own_name() {
        let applied = [np("shop", "a", false), np("shop", "b", false)];
        let state = combine(&applied, &[np("shop", "a", false)]);
        assert_eq!(state.replaced.len(), 1);
        assert_eq!(
            names(&state.objects),
            ["NetworkPolicy shop/a", "NetworkPolicy shop/b"]
        );
    }

    #[test]
    fn the_label_value_must_be_leash() {
        let mut other = np("shop", "other-tool", false);
        other.metadata.labels = Some(BTreeMap::from([(
            MANAGED_BY.0.to_owned(),
            "helm".to_owned(),
        )]));
        let state = combine(&[other], &[np("shop", "x", true)]);
        assert!(state.replaced.is_empty());
        assert_eq!(state.objects.len(), 2);
    }

    #[test]
    fn cluster_scoped_objects_are_covered_only_by_a_cluster_scoped_given_one() {
        let applied = [np("", "cluster-leash", true), np("shop", "ns-leash", true)];
        let only_ns = combine(&applied, &[np("shop", "new", true)]);
        assert_eq!(
            names(&only_ns.objects),
            ["NetworkPolicy cluster-leash", "NetworkPolicy shop/new"]
        );
        let with_cluster = combine(&applied, &[np("", "new-cluster", true)]);
        assert_eq!(
            names(&with_cluster.objects),
            ["NetworkPolicy new-cluster", "NetworkPolicy shop/ns-leash"]
        );
    }

    #[test]
    fn an_empty_given_set_replaces_nothing() {
        let applied = [np("shop", "web-egress", true), np("db", "ingress", false)];
        let state = combine(&applied, &[]);
        assert!(state.replaced.is_empty());
        assert_eq!(state.kept, 2);
        assert_eq!(state.objects, given_only(&applied).objects);
    }

    #[test]
    fn given_only_ignores_the_applied_objects() {
        let state = given_only(&[np("shop", "b", true), np("shop", "a", false)]);
        assert_eq!(
            names(&state.objects),
            ["NetworkPolicy shop/a", "NetworkPolicy shop/b"]
        );
        assert!(state.replaced.is_empty());
        assert_eq!(state.kept, 0);
        assert!(given_only::<NetworkPolicy>(&[]).objects.is_empty());
    }

    #[test]
    fn coverage_is_by_kind_namespace_and_name() {
        let key = |ns: &str, kind: &str, name: &str| ObjectKey {
            namespace: ns.into(),
            kind: kind.into(),
            name: name.into(),
        };
        let c = Coverage::new(&[key("shop", "NetworkPolicy", "a")]);
        assert!(c.replaces(&key("shop", "NetworkPolicy", "a"), false));
        assert!(!c.replaces(&key("shop", "OtherPolicy", "a"), false));
        assert!(c.replaces(&key("shop", "OtherPolicy", "a"), true));
        assert!(!c.replaces(&key("db", "NetworkPolicy", "a"), false));
        assert!(!c.replaces(&key("db", "NetworkPolicy", "a"), true));
    }
}
