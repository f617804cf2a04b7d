//! Conventions every JSON output of leash follows (`audit --format json`, the `/v1` API).
//!
//! A workload is referred to by `"namespace"` plus `"workload": "Kind/name"`: a bare pod is
//! `Pod/<name>`, processes outside pods `Node/<node>` (with an empty namespace). `/v1`
//! answers may carry `kind` and `name` besides.

/// The `"workload"` value of a workload reference: `Kind/name`.
pub fn workload(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// The `"workload"` value of a pod that is its own workload: `Pod/<name>`.
pub fn bare_pod(name: &str) -> String {
    workload("Pod", name)
}
