//! Watches: the events a new watch starts with (replayed from its version, or the current
//! objects), the live events each watcher gets, and the streamed response.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use serde_json::json;
use tokio::sync::mpsc;

use super::http::json_response;
use super::request::{Request, Target};
use super::select::Filter;
use super::store::{Change, EventKind, State, status};

/// What a watch connection receives.
pub(super) enum WatchMsg {
    /// One JSON event line.
    Event(String),
    /// The end of the stream.
    End,
}

/// An open watch.
pub(super) struct Watcher {
    /// The collection it watches.
    pub(super) collection: String,
    /// What it selects.
    pub(super) filter: Filter,
    /// Where its events go; closed once the client is gone.
    pub(super) tx: mpsc::UnboundedSender<WatchMsg>,
}

/// The watch event a watcher with `filter` sees for `change`, if any. An object that stops
/// matching the filter is `DELETED` for that watcher, one that starts matching is `ADDED`, as
/// the real server does.
pub(super) fn event_line(change: &Change, filter: &Filter) -> Option<String> {
    let now = filter.matches(&change.new);
    let before = change.old.as_ref().is_some_and(|o| filter.matches(o));
    let kind = match change.kind {
        EventKind::Added if now => "ADDED",
        EventKind::Deleted if now => "DELETED",
        EventKind::Modified if now && before => "MODIFIED",
        EventKind::Modified if now => "ADDED",
        EventKind::Modified if before => "DELETED",
        _ => return None,
    };
    Some(json!({"type": kind, "object": change.new}).to_string())
}

/// The events a new watch starts with, and its registration for the live ones.
pub(super) fn subscribe(
    st: &mut State,
    target: &Target,
    filter: Filter,
    req: &Request,
) -> mpsc::UnboundedReceiver<WatchMsg> {
    let (tx, rx) = mpsc::unbounded_channel();
    let from = req.param("resourceVersion").unwrap_or_default();
    match from.parse::<u64>() {
        Ok(rv) if rv > 0 && rv < st.compacted => {
            // What kube-apiserver does for a version out of its watch cache: 200, then an
            // ERROR event carrying 410 Gone, then the end of the stream.
            let msg = format!("too old resource version: {rv} ({})", st.compacted);
            let gone = json!({"type": "ERROR", "object": status(410, "Expired", &msg)});
            let _ = tx.send(WatchMsg::Event(gone.to_string()));
            let _ = tx.send(WatchMsg::End);
            return rx;
        }
        Ok(rv) if rv > 0 => {
            for change in st.log.iter().filter(|c| c.rv > rv) {
                if change.collection == target.collection
                    && let Some(line) = event_line(change, &filter)
                {
                    let _ = tx.send(WatchMsg::Event(line));
                }
            }
        }
        _ => {
            // "" or "0": start with the current state, as synthetic ADDED events.
            let current = st
                .collections
                .get(&target.collection)
                .map(|c| c.objects.values().filter(|o| filter.matches(o)));
            for object in current.into_iter().flatten() {
                let line = json!({"type": "ADDED", "object": object}).to_string();
                let _ = tx.send(WatchMsg::Event(line));
            }
        }
    }
    st.watchers.push(Watcher {
        collection: target.collection.clone(),
        filter,
        tx,
    });
    rx
}

/// The streamed response of a watch: HTTP 200, then one JSON event per line (each line one chunk
/// of the chunked body) until the stream ends, `timeoutSeconds` passes, or the client hangs up
/// (hyper then drops the body, and with it `rx`, so the watch no longer counts as open).
pub(super) fn response(rx: mpsc::UnboundedReceiver<WatchMsg>, req: &Request) -> Response {
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(3600), Duration::from_secs);
    let deadline = Box::pin(tokio::time::sleep(timeout));
    let events = futures::stream::unfold((rx, deadline), |(mut rx, mut deadline)| async move {
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            () = &mut deadline => None,
        };
        match msg {
            Some(WatchMsg::Event(line)) => {
                Some((Ok::<_, Infallible>(format!("{line}\n")), (rx, deadline)))
            }
            Some(WatchMsg::End) | None => None,
        }
    });
    json_response(200, Body::from_stream(events))
}
