//! ClusterNetworkPolicies from the API server: a CRD a cluster may not have.
//!
//! They are read as `DynamicObject`s (the `cnp` types are validated later, by the model, so an
//! invalid object is named in `rejected` rather than lost in decoding). When the API answers
//! `404` (the `policy.networking.k8s.io/v1alpha2` CRD is not installed) or `403` (the role lacks
//! the permission), the cluster has none as far as leash can tell: that is logged once (info for
//! 404, a warning naming the permission for 403), the store is emptied, and the watch tries
//! again after [`super::WatchOptions::cnp_recheck`], so that a CRD installed later is picked up.

use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, TypeMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc;

use super::{Error, Result, Signal, strip};
use crate::cluster::{Rejected, qualified_name};

/// The API group of ClusterNetworkPolicies.
pub const GROUP: &str = "policy.networking.k8s.io";
/// Their API version within [`GROUP`].
pub const VERSION: &str = "v1alpha2";
/// Their plural resource name.
pub const PLURAL: &str = "clusternetworkpolicies";
/// The permission a `403` lacks, as a warning names it.
pub const PERMISSION: &str =
    "list and watch on clusternetworkpolicies.policy.networking.k8s.io (cluster-wide)";

/// The resource, for kube-rs's dynamic API.
pub(super) fn api_resource() -> ApiResource {
    ApiResource {
        group: GROUP.to_owned(),
        version: VERSION.to_owned(),
        api_version: crate::cnp::API_VERSION.to_owned(),
        kind: crate::cnp::KIND.to_owned(),
        plural: PLURAL.to_owned(),
    }
}

/// Why the API gave no ClusterNetworkPolicies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unavailable {
    /// `404`: the group/version is not served (the CRD is not installed).
    NotServed,
    /// `403`: the role lacks [`PERMISSION`].
    Forbidden,
}

fn unavailable_status(status: &kube::core::Status) -> Option<Unavailable> {
    // By code first: the reason is advisory (a proxy may answer with its own).
    if status.code == 404 || (status.code == 0 && status.is_not_found()) {
        Some(Unavailable::NotServed)
    } else if status.code == 403 || (status.code == 0 && status.is_forbidden()) {
        Some(Unavailable::Forbidden)
    } else {
        None
    }
}

fn unavailable(error: &kube::Error) -> Option<Unavailable> {
    match error {
        kube::Error::Api(status) => unavailable_status(status),
        _ => None,
    }
}

fn unavailable_watch(error: &watcher::Error) -> Option<Unavailable> {
    match error {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => unavailable(e),
        watcher::Error::WatchError(status) => unavailable_status(status),
        watcher::Error::NoResourceVersion => None,
    }
}

/// Logs why there are none; `recheck` is when the watch tries again (`None` for one-shot loads).
fn log(why: Unavailable, recheck: Option<Duration>) {
    let recheck = recheck.map_or_else(|| "never".to_owned(), |d| format!("{d:?}"));
    match why {
        Unavailable::NotServed => tracing::info!(
            api = crate::cnp::API_VERSION,
            recheck = %recheck,
            "ClusterNetworkPolicies are not served by this API server (no \
             policy.networking.k8s.io/v1alpha2 CRD); treating them as none"
        ),
        Unavailable::Forbidden => tracing::warn!(
            permission = PERMISSION,
            recheck = %recheck,
            "reading ClusterNetworkPolicies is forbidden; treating them as none until the \
             role grants the permission"
        ),
    }
}

/// The objects as the snapshot holds them, sorted by name; objects that do not serialize go
/// to `bad`.
pub(super) fn values<'a>(
    objects: impl Iterator<Item = &'a DynamicObject>,
    bad: &mut Vec<Rejected>,
) -> Vec<serde_json::Value> {
    let mut sorted: Vec<&DynamicObject> = objects.collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = Vec::with_capacity(sorted.len());
    for o in sorted {
        let mut o = o.clone();
        // List items may come without their type; the model reads objects by apiVersion/kind.
        if o.types.is_none() {
            o.types = Some(TypeMeta {
                api_version: crate::cnp::API_VERSION.to_owned(),
                kind: crate::cnp::KIND.to_owned(),
            });
        }
        match serde_json::to_value(&o) {
            Ok(v) => out.push(v),
            Err(e) => bad.push(Rejected {
                kind: crate::cnp::KIND.to_owned(),
                name: qualified_name(&o.metadata),
                reason: format!("does not encode: {e}"),
            }),
        }
    }
    out
}

/// A reflector for ClusterNetworkPolicies: its store, and its events tagged with `index`.
/// Runs in a task of its own, which ends when the returned stream is dropped.
pub(super) fn reflect(
    client: &kube::Client,
    index: usize,
    recheck: Duration,
) -> (Store<DynamicObject>, BoxStream<'static, (usize, Signal)>) {
    let resource = api_resource();
    let writer = Writer::new(resource.clone());
    let reader = writer.as_reader();
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        tokio::select! {
            // Nobody listens any more: stop (and close the watch).
            () = tx.closed() => {}
            () = run(api, writer, &tx, recheck) => {}
        }
    });
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(move |signal| (index, signal))
        .boxed();
    (reader, events)
}

async fn run(
    api: Api<DynamicObject>,
    mut writer: Writer<DynamicObject>,
    tx: &mpsc::UnboundedSender<Signal>,
    recheck: Duration,
) {
    // What was last logged, so a cluster without the CRD logs once, not every recheck.
    let mut reported: Option<Unavailable> = None;
    loop {
        let mut objects = watcher::watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .modify(strip)
            .boxed();
        let why = loop {
            let Some(event) = objects.next().await else {
                // The watcher never ends; if it did, start over.
                break None;
            };
            match event {
                Ok(event) => {
                    writer.apply_watcher_event(&event);
                    // A completed list, not the start of one, shows they are readable again.
                    if matches!(event, Event::InitDone) && reported.take().is_some() {
                        tracing::info!(
                            api = crate::cnp::API_VERSION,
                            "ClusterNetworkPolicies are readable now; watching them"
                        );
                    }
                    let signal = match event {
                        Event::InitDone => Signal::Synced,
                        Event::Apply(_) | Event::Delete(_) => Signal::Changed,
                        Event::Init | Event::InitApply(_) => Signal::Progress,
                    };
                    if tx.send(signal).is_err() {
                        return;
                    }
                }
                Err(error) => match unavailable_watch(&error) {
                    Some(why) => break Some(why),
                    None => {
                        if tx.send(Signal::Failed(error)).is_err() {
                            return;
                        }
                    }
                },
            }
        };
        drop(objects);
        let Some(why) = why else { continue };
        // None, as far as leash can tell: an emptied store counts as listed.
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitDone);
        if reported != Some(why) {
            log(why, Some(recheck));
            reported = Some(why);
        }
        if tx.send(Signal::Synced).is_err() {
            return;
        }
        tokio::time::sleep(recheck).await;
    }
}

/// Every ClusterNetworkPolicy, page by page, for one-shot loading: none (logged) when the API
/// does not serve them or the role may not read them.
pub(super) async fn list_all(
    client: &kube::Client,
    bad: &mut Vec<Rejected>,
) -> Result<Vec<serde_json::Value>> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &api_resource());
    let mut objects = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = match api.list(&params).await {
            Ok(page) => page,
            Err(e) => match unavailable(&e) {
                Some(why) => {
                    log(why, None);
                    return Ok(Vec::new());
                }
                None => {
                    return Err(Error::List {
                        resource: format!("{GROUP}/{PLURAL}"),
                        source: e,
                    });
                }
            },
        };
        objects.extend(page.items.into_iter().map(|mut o| {
            strip(&mut o);
            o
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(values(objects.iter(), bad))
}
