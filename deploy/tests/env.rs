//! The environment the manifests give each binary is the environment its code reads, in the
//! base and in every overlay: the recommender's Events name their reporting instance (its pod
//! name, from the downward API), and both binaries take their log filter from the variable
//! the manifests set.

use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use leash_deploy::{Manifests, stage};

fn renderings() -> Vec<Manifests> {
    stage::every_rendering().unwrap_or_else(|e| panic!("{e}"))
}

fn container<'a>(pod: Option<&'a PodSpec>, name: &str, source: &str) -> &'a Container {
    pod.and_then(|p| p.containers.iter().find(|c| c.name == name))
        .unwrap_or_else(|| panic!("{source}: no container {name}"))
}

fn env<'a>(container: &'a Container, name: &str, source: &str) -> &'a EnvVar {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{source}: container {} has no env {name}", container.name))
}

/// The `fieldPath` an env var takes from the downward API, if it does.
fn field_path(var: &EnvVar) -> Option<&str> {
    var.value_from
        .as_ref()?
        .field_ref
        .as_ref()
        .map(|f| f.field_path.as_str())
}

#[test]
fn the_recommender_gets_its_pod_name_from_the_downward_api() {
    // What `leash serve` reads for its Events' reporting instance.
    let name = leash::cluster::events::INSTANCE_ENV;
    for m in renderings() {
        let pod = m.pod_spec("leash-recommender");
        let var = env(container(pod, "recommender", &m.source), name, &m.source);
        assert_eq!(
            field_path(var),
            Some("metadata.name"),
            "{}: {var:?}",
            m.source
        );
        assert_eq!(var.value, None, "{}: {var:?}", m.source);
    }
}

#[test]
fn both_binaries_get_the_log_filter_variable_they_read() {
    let name = leash_records::log::LOG_ENV;
    for m in renderings() {
        let agent = m
            .daemon_set("leash-agent")
            .and_then(|d| d.spec.template.spec.as_ref());
        let recommender = m.pod_spec("leash-recommender");
        for c in [
            container(agent, "agent", &m.source),
            container(recommender, "recommender", &m.source),
        ] {
            let var = env(c, name, &m.source);
            let value = var.value.as_deref().unwrap_or_default();
            assert!(
                tracing_filter_like(value),
                "{}: {name}={value:?} in {}",
                m.source,
                c.name
            );
        }
    }
}

/// A plain level, as the manifests set (not an empty value, which would fall back silently).
fn tracing_filter_like(value: &str) -> bool {
    ["error", "warn", "info", "debug", "trace"].contains(&value)
}
