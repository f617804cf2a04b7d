//! The demo's store and its map (with `leash serve` only):
//!
//! 1. [`keep_store`]: once the first `leash serve` stopped, `DIR/leash.db` holds exactly what
//!    the proposal in `DIR/policies` was made from; the later steps (the pull-request loop, the
//!    names) work on a consistent copy, `DIR/leash-loop.db` (SQLite's `VACUUM INTO`), so that
//!    `DIR/leash.db` stays the demo's store;
//! 2. [`screenshot`]: `leash serve --cluster DIR/cluster.yaml --store DIR/leash.db --insecure`
//!    on free 127.0.0.1 ports, headless Chromium on its UI (`leash_lab::webdriver`): the map
//!    as `DIR/map.png`, the ids of the nodes it drew as `DIR/map-nodes.txt` (one a line,
//!    sorted). Without `chromedriver` the screenshot is skipped with a message, unless
//!    `LEASH_REQUIRE_BROWSER=1`. Afterwards the store's write-ahead log is folded back, so
//!    `DIR/leash.db` is one self-contained file.
//!
//! leash has no command that imports record files into a store, so `--no-serve` leaves
//! neither.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use leash_lab::webdriver::{self, Browser};
use leash_records::error::Chain;
use serde_json::{Value, json};

use super::{Background, READY_TIMEOUT, Result, STOP_TIMEOUT, fail, free_port};

/// How long the map may take to be built and drawn.
const MAP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the screenshot saw, for the summary.
pub(crate) struct Shot {
    /// The workload nodes drawn (`ns/Kind/name`).
    pub workloads: Vec<String>,
    /// All nodes drawn.
    pub nodes: usize,
}

/// Copies the store `from` (a SQLite file, possibly in use) consistently to `to`.
pub(crate) fn copy_store(step: &'static str, from: &Path, to: &Path) -> Result<()> {
    for stale in [
        to.to_path_buf(),
        to.with_extension("db-wal"),
        to.with_extension("db-shm"),
    ] {
        let _ = std::fs::remove_file(stale);
    }
    let db =
        rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| fail(step, format!("{}: {}", from.display(), Chain(&e))))?;
    let target = to
        .to_str()
        .ok_or_else(|| fail(step, format!("{}: not UTF-8", to.display())))?;
    db.execute("VACUUM INTO ?1", [target])
        .map_err(|e| fail(step, format!("VACUUM INTO {}: {}", to.display(), Chain(&e))))?;
    Ok(())
}

/// Folds `store`'s write-ahead log into the file (no process may have it open).
pub(crate) fn checkpoint(step: &'static str, store: &Path) -> Result<()> {
    let db = rusqlite::Connection::open(store)
        .map_err(|e| fail(step, format!("{}: {}", store.display(), Chain(&e))))?;
    db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| {
            fail(
                step,
                format!("{}: checkpoint: {}", store.display(), Chain(&e)),
            )
        })?;
    drop(db);
    // The last connection closed: SQLite removed the empty log; a leftover index is stale.
    let _ = std::fs::remove_file(store.with_extension("db-shm"));
    Ok(())
}

/// Takes the map's screenshot over `store` (see the module's documentation); `None` when the
/// browser is missing and not required.
pub(crate) fn screenshot(
    leash: &Path,
    out: &Path,
    cluster: &Path,
    store: &Path,
) -> Result<Option<Shot>> {
    let step = "screenshot the map";
    eprintln!(
        "== the map: leash serve over {}, headless Chromium",
        store.display()
    );
    let (driver, chromium) = match webdriver::find() {
        Ok(found) => found,
        Err(why) if !webdriver::required() => {
            eprintln!(
                "   skipped: {why} (set {}=1 to fail instead)",
                webdriver::REQUIRE_ENV
            );
            return Ok(None);
        }
        Err(why) => {
            return Err(fail(
                step,
                format!("{}=1 but {why}", webdriver::REQUIRE_ENV),
            ));
        }
    };
    let addr = |step| free_port(step).map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
    let (listen, http, ui) = (addr(step)?, addr(step)?, addr(step)?);
    let mut cmd = Command::new(leash);
    cmd.arg("serve")
        .args(["--listen", &listen.to_string(), "--http", &http.to_string()])
        .args(["--ui-listen", &ui.to_string()])
        .arg("--cluster")
        .arg(cluster)
        .arg("--store")
        .arg(store)
        .arg("--insecure")
        .env("LEASH_LOG", "info")
        .env("NO_COLOR", "1");
    let (mut serve, _) = Background::start(
        step,
        "leash serve",
        &mut cmd,
        out.join("serve-map.log"),
        None,
    )?;
    super::wait_ready(step, &mut serve, http, READY_TIMEOUT)?;
    // The map is built after start: wait until it holds workloads.
    super::poll_until(step, &mut serve, MAP_TIMEOUT, "map with workloads", || {
        let map: Value = serde_json::from_str(&super::http_get(ui, "/v1/map")?).ok()?;
        map["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["kind"] == "workload")
            .then_some(())
    })?;

    let shot = (|| -> webdriver::Result<Vec<String>> {
        let b = Browser::start(&driver, &chromium, 1400, 1200)?;
        b.goto(&format!("http://{ui}/"))?;
        b.wait_until("the map drawn", MAP_TIMEOUT, || {
            let done = b.script(
                "const m = document.getElementById('map');
                 return m.getAttribute('aria-busy') === 'false'
                     && m.getAttribute('data-query') === '/v1/map';",
                &[],
            )?;
            Ok(done == json!(true))
        })?;
        let ids = b.script(
            "return [...document.querySelectorAll('#map g.node')].map(n => n.getAttribute('data-id'));",
            &[],
        )?;
        b.screenshot(&out.join("map.png"))?;
        let mut ids: Vec<String> = serde_json::from_value(ids).unwrap_or_default();
        ids.sort();
        Ok(ids)
    })();
    let ids = shot.map_err(|e| fail(step, format!("{}; {}", Chain(&e), serve.log_tail())))?;
    serve.stop(step, STOP_TIMEOUT)?;
    checkpoint(step, store)?;
    let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
    super::lockdown::write(step, &out.join("map-nodes.txt"), &text)?;
    let workloads: Vec<String> = ids
        .iter()
        .filter_map(|id| id.strip_prefix("wl:"))
        .map(str::to_owned)
        .collect();
    eprintln!(
        "   {}: {} nodes drawn, workloads {}",
        out.join("map.png").display(),
        ids.len(),
        workloads.join(", ")
    );
    Ok(Some(Shot {
        workloads,
        nodes: ids.len(),
    }))
}
