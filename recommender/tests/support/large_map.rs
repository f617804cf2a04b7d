//! The egress map at the scale, for the browser test that opens it
//! (`ui_browser.rs`) and the UI's benchmark (`benches/ui.rs`, which includes this module tree
//! by `#[path]`): 2,000 Deployments in 40 namespaces (`ns-00` holds 200), each with 10
//! observed destinations — three pods of its namespace, one of another, five of 40 external
//! names, one nameless address —, 20,000 workload edges, committed into a real SQLite store.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use leash::store::{BatchId, SqliteStore, Store as _};

use super::http::{get, wait_for};
use super::serve_process::ServeProcess;
use super::snapshots::{deployment, list, namespace};
use super::store_flows::deployment_flow;

/// Workloads in the cluster.
pub const WORKLOADS: usize = 2_000;
/// The namespace of 200 workloads, the one expanded.
pub const BIG: &str = "ns-00";

/// A page script: when the map has drawn the answer to `arguments[0]` and is idle, `[drawn
/// at (ms since navigation), ms from the key press or load to drawn, nodes, edge groups]`;
/// else `null`. Reads the UI's own `data-drawn-at` and `data-ms`.
pub const DRAWN: &str = "const m = document.getElementById('map');
     return m.getAttribute('aria-busy') === 'false' && m.getAttribute('data-query') === arguments[0]
       ? [Number(m.getAttribute('data-drawn-at')), Number(m.getAttribute('data-ms')),
          document.querySelectorAll('#map g.node').length,
          document.querySelectorAll('#map g.edge-group').length]
       : null;";

fn ns(w: usize) -> String {
    if w < 200 {
        BIG.to_owned()
    } else {
        format!("ns-{:02}", 1 + (w - 200) % 39)
    }
}

fn ip(w: usize) -> String {
    format!("10.64.{}.{}", w / 250, w % 250 + 1)
}

/// Writes the cluster (`dir/cluster.yaml`) and the store (`dir/leash.db`): their paths.
pub fn fixture(dir: &Path) -> (PathBuf, PathBuf) {
    let mut items: Vec<String> = (0..40).map(|i| namespace(&format!("ns-{i:02}"))).collect();
    for w in 0..WORKLOADS {
        items.push(deployment(
            &ns(w),
            &format!("w{w}"),
            &format!("w{w}-x1"),
            &ip(w),
        ));
    }
    let cluster = dir.join("cluster.yaml");
    std::fs::write(&cluster, list(&items)).expect("writes the cluster");
    let db = dir.join("leash.db");
    let store = SqliteStore::open(&db).expect("opens the store");
    let at = Utc::now() - chrono::Duration::hours(2);
    let mut flows = Vec::new();
    for w in 0..WORKLOADS {
        let (n, name) = (ns(w), format!("w{w}"));
        let same: Vec<usize> = (0..WORKLOADS)
            .filter(|&o| ns(o) == n && o != w)
            .take(3)
            .collect();
        for o in same {
            flows.push(deployment_flow(&n, &name, &ip(o), 8080, &[], at));
        }
        flows.push(deployment_flow(
            &n,
            &name,
            &ip((w + 997) % WORKLOADS),
            8443,
            &[],
            at,
        ));
        for k in 0..5 {
            let e = (w + k * 7) % 40;
            let host = format!("api{e}.example.com");
            flows.push(deployment_flow(
                &n,
                &name,
                &format!("203.0.113.{}", e + 1),
                443,
                &[&host],
                at,
            ));
        }
        flows.push(deployment_flow(
            &n,
            &name,
            &format!("198.51.100.{}", w % 200 + 1),
            9000,
            &[],
            at,
        ));
    }
    for (seq, chunk) in flows.chunks(4_000).enumerate() {
        store
            .commit(
                &BatchId {
                    node: "n1".into(),
                    boot_id: "b".into(),
                    seq: seq as u64 + 1,
                },
                chunk,
                &[],
            )
            .expect("commits the flows");
    }
    (cluster, db)
}

/// Waits until `server`'s map is built (`/v1/map` answers `200`).
pub fn wait_built(server: &ServeProcess) {
    wait_for(
        "the large egress map",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || matches!(get(server.ui, "/v1/map"), Ok((200, _))),
    );
}
