//! Each ClusterRole grants exactly the Kubernetes API access its binary's code declares
//! (`ApiAccess` lists next to the code that calls the API), nothing more and nothing less,
//! and each is bound to the ServiceAccount its workload runs as.

use leash_deploy::rbac::{GrantDiff, grants_of_access, grants_of_rules};
use leash_deploy::{Manifests, stage};
use leash_records::access::ApiAccess;
use leash_records::error::Chain;

/// What `leash serve` uses: reflectors (list + watch) on the cluster model's kinds,
/// kube-rs's event `Recorder` (create, then patch for a repeated event), the reviews of
/// `--ui-auth kube` (create TokenReviews and SubjectAccessReviews) and of `--agent-auth
/// token` (create TokenReviews: nothing more than the UI's).
fn recommender_access() -> Vec<ApiAccess> {
    [
        leash::cluster::watch::API_ACCESS,
        leash::cluster::events::EVENTS_ACCESS,
        leash::serve::auth::review::REVIEW_ACCESS,
        leash::ingest::identity::AGENT_REVIEW_ACCESS,
    ]
    .concat()
}

/// What `leash-agent --kube` uses: a watcher on the pods of its node.
fn agent_access() -> Vec<ApiAccess> {
    leash_agent::attribution::pods::API_ACCESS.to_vec()
}

fn check_role(m: &Manifests, role: &str, declared: &[ApiAccess]) {
    let cr = m
        .cluster_role(role)
        .unwrap_or_else(|| panic!("{}: no ClusterRole {role}", m.source));
    assert!(
        cr.aggregation_rule.is_none(),
        "{}: {role} aggregates",
        m.source
    );
    let granted = grants_of_rules(cr.rules.as_deref().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{}: ClusterRole {role}: {e}", m.source));
    let diff = GrantDiff::between(&granted, &grants_of_access(declared));
    assert!(diff.is_empty(), "{}: ClusterRole {role}: {diff}", m.source);
}

#[test]
fn cluster_roles_grant_exactly_what_the_code_declares() {
    for m in stage::every_rendering().unwrap_or_else(|e| panic!("{}", Chain(&e))) {
        check_role(&m, "leash-recommender", &recommender_access());
        check_role(&m, "leash-agent", &agent_access());
        // No other roles sneak in through an overlay.
        let roles: Vec<_> = m
            .objects
            .iter()
            .filter(|t| t.id.kind == "ClusterRole")
            .map(|t| t.id.name.clone())
            .collect();
        assert_eq!(roles, ["leash-agent", "leash-recommender"], "{}", m.source);
        // Only the HA overlay adds a (namespaced) Role: the Lease, checked below.
        let namespaced: Vec<_> = m
            .objects
            .iter()
            .filter(|t| t.id.kind == "Role")
            .map(|t| t.id.name.clone())
            .collect();
        let ha = m.deployment("leash-recommender").is_some();
        let want: &[&str] = if ha {
            &["leash-recommender-leader"]
        } else {
            &[]
        };
        assert_eq!(namespaced, want, "{}", m.source);
    }
}

#[test]
fn a_role_with_one_verb_more_or_less_fails_the_comparison() {
    let m = Manifests::load(&leash_deploy::base_dir()).unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let cr = m.cluster_role("leash-agent").expect("agent role");
    let granted = grants_of_rules(cr.rules.as_deref().unwrap_or_default()).expect("plain rules");
    let fewer = [ApiAccess {
        group: "",
        resource: "pods",
        verbs: &["watch"],
    }];
    let diff = GrantDiff::between(&granted, &grants_of_access(&fewer));
    assert_eq!(diff.extra.len(), 1, "{diff}");
    assert_eq!(diff.extra[0].to_string(), "list core/pods");
    let more = [ApiAccess {
        group: "",
        resource: "pods",
        verbs: &["list", "watch", "delete"],
    }];
    let diff = GrantDiff::between(&granted, &grants_of_access(&more));
    assert_eq!(diff.missing.len(), 1, "{diff}");
    assert_eq!(diff.missing[0].to_string(), "delete core/pods");
}

#[test]
fn each_role_is_bound_to_its_workloads_service_account() {
    for m in stage::every_rendering().unwrap_or_else(|e| panic!("{}", Chain(&e))) {
        let bindings: Vec<_> = m.cluster_role_bindings().collect();
        assert_eq!(bindings.len(), 2, "{}", m.source);
        for name in ["leash-agent", "leash-recommender"] {
            let b = bindings
                .iter()
                .find(|b| b.role_ref.name == name)
                .unwrap_or_else(|| panic!("{}: nothing binds ClusterRole {name}", m.source));
            assert_eq!(b.role_ref.kind, "ClusterRole");
            assert_eq!(
                b.role_ref.api_group.as_deref(),
                Some("rbac.authorization.k8s.io")
            );
            let subjects: Vec<_> = b
                .subjects
                .iter()
                .flatten()
                .map(|s| (s.kind.as_str(), s.namespace.as_deref(), s.name.as_str()))
                .collect();
            assert_eq!(
                subjects,
                [("ServiceAccount", Some("leash-system"), name)],
                "{}: binding of {name}",
                m.source
            );
            assert!(
                m.objects
                    .iter()
                    .any(|t| t.id.kind == "ServiceAccount" && t.id.name == name),
                "{}: no ServiceAccount {name}",
                m.source
            );
        }
    }
}

/// The HA overlay's replicas elect a leader with a Lease: a Role in leash's namespace grants
/// exactly what the election does, bound to the recommender's ServiceAccount; the
/// ClusterRole gains nothing.
#[test]
fn the_ha_overlay_grants_the_lease_access_in_its_namespace_only() {
    let m = Manifests::load(&leash_deploy::deploy_dir().join("overlays/ha"))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let role = m.role("leash-recommender-leader").expect("the Lease Role");
    assert_eq!(role.metadata.namespace.as_deref(), Some("leash-system"));
    let granted = grants_of_rules(role.rules.as_deref().unwrap_or_default()).expect("plain rules");
    let diff = GrantDiff::between(
        &granted,
        &grants_of_access(leash::serve::leader::LEASE_ACCESS),
    );
    assert!(diff.is_empty(), "Role leash-recommender-leader: {diff}");
    let binding = m
        .objects
        .iter()
        .find_map(|t| match &t.object {
            leash_deploy::manifests::Object::RoleBinding(b) => Some(b),
            _ => None,
        })
        .expect("a RoleBinding");
    assert_eq!(binding.metadata.namespace.as_deref(), Some("leash-system"));
    assert_eq!(binding.role_ref.kind, "Role");
    assert_eq!(binding.role_ref.name, "leash-recommender-leader");
    let subjects: Vec<_> = binding
        .subjects
        .iter()
        .flatten()
        .map(|s| (s.kind.as_str(), s.namespace.as_deref(), s.name.as_str()))
        .collect();
    assert_eq!(
        subjects,
        [("ServiceAccount", Some("leash-system"), "leash-recommender")]
    );
    // Leases stay out of the cluster-wide role.
    check_role(&m, "leash-recommender", &recommender_access());
}
