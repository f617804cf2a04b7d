//! Pod metadata from the Kubernetes API: a watch on this node's pods feeding a [`PodStore`].

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use leash_records::error::Chain;

use super::pods::{PodInfo, PodStore};
use crate::metrics::Metrics;

/// The field selector restricting a watch to the pods scheduled on `node_name`.
pub fn node_field_selector(node_name: &str) -> String {
    format!("spec.nodeName={node_name}")
}

/// Watches the pods on `node_name` forever, keeping `store` equal to the API's view.
///
/// Built on kube-runtime's `watcher`: it lists, then watches from the list's resource version,
/// resumes after a dropped connection, and re-lists when the server says the version is gone
/// (HTTP 410). Each (re-)list is buffered and swapped in whole at its end, so pods deleted while
/// the watch was down disappear, and readers never see a half-filled store. Errors are logged,
/// counted in `kube_watch_errors`, and retried with kube's default backoff; this future only ends
/// when dropped.
pub async fn watch_pods(client: kube::Client, node_name: &str, store: PodStore, metrics: Metrics) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&node_field_selector(node_name));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut relist: Option<Vec<PodInfo>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(Event::Init) => relist = Some(Vec::new()),
            Ok(Event::InitApply(pod)) => {
                if let (Some(buffer), Some(info)) = (relist.as_mut(), PodInfo::from_pod(&pod)) {
                    buffer.push(info);
                }
            }
            Ok(Event::InitDone) => {
                let pods = relist.take().unwrap_or_default();
                tracing::debug!(pods = pods.len(), node = node_name, "pod list synced");
                store.replace_all(pods);
            }
            Ok(Event::Apply(pod)) => {
                if let Some(info) = PodInfo::from_pod(&pod) {
                    store.upsert(info);
                }
            }
            Ok(Event::Delete(pod)) => {
                if let Some(uid) = pod.metadata.uid.as_deref() {
                    store.remove(uid);
                }
            }
            Err(error) => {
                metrics.kube_watch_errors.inc();
                tracing::warn!(error = %Chain(&error), node = node_name, "pod watch failed; retrying");
            }
        }
    }
}
