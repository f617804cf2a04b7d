//! The web UI of `leash serve` in a real, headless Chromium driven over WebDriver
//! (`chromedriver`), against `leash serve --insecure` holding fixture data: the map's workloads
//! and edges, a would-be-denied edge marked in words, the filters, a workload's panel with its
//! evidence and YAML (by mouse and by keyboard), the rollout board's counts against
//! `/v1/rollout`, the alerts, labels on every control, and a hostile DNS name shown as text.
//! Also the `/v1/map` API's answers and refusals, the UI's headers, and the map at 2,000
//! workloads opening on its namespaces (untimed: the figures are `benches/ui.rs`'s). The
//! browser is `leash_lab::webdriver`'s.
//!
//! Screenshots go to `target/ui-screenshots/`. Without `chromedriver` the browser test is
//! skipped with a message, unless `LEASH_REQUIRE_BROWSER=1` (CI) makes that a failure.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use leash::evidence::PodNames;
use leash::store::{AlertRecord, BatchId, FlowObservation, SqliteStore, Store, WorkloadRef};
use leash_lab::webdriver::{self, Browser, keys};
use leash_records::Protocol;
use serde_json::{Value, json};
use support::http::get;
use support::serve_process::ServeProcess;
use support::snapshots::{deployment, list, namespace};
use support::store_flows::deployment_flow;

/// How long any one wait in the browser may take.
const WAIT: Duration = Duration::from_secs(20);

/// A DNS name a tenant controls, made to look like markup.
const HOSTILE: &str = "<img src=x onerror=\"window.pwned=1\">.evil.example";

/// An egress NetworkPolicy `ns/name` for pods `app: app` allowing TCP `ports` anywhere, as a
/// list item; with leash's label when `leash`.
fn egress_policy(ns: &str, name: &str, app: &str, ports: &[u16], leash: bool) -> String {
    let labels = if leash {
        ", labels: {app.kubernetes.io/managed-by: leash}"
    } else {
        ""
    };
    let ports: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
    format!(
        "- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {{name: {name}, namespace: {ns}{labels}}}\n  spec:\n    podSelector: {{matchLabels: {{app: {app}}}}}\n    policyTypes: [Egress]\n    egress: [{{ports: [{}]}}]\n",
        ports.join(", ")
    )
}

/// The same policy as a file of its own.
fn policy_file(ns: &str, name: &str, app: &str, ports: &[u16]) -> String {
    egress_policy(ns, name, app, ports, true)
        .lines()
        .map(|l| {
            l.strip_prefix("- ")
                .or_else(|| l.strip_prefix("  "))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The fixture: shop's `api` (external by name on 443, allowed; a nameless address on 5432,
/// which the proposal would deny), `web` (to `api`, and to a hostile name), `batch` (ready);
/// bank's `ledger`, whose applied policy denies its 443 (unexpected egress). Returns the
/// cluster file, the store and the proposal directory. `idle` more Deployments without
/// egress in namespace `bulk` make a larger cluster.
fn fixture(dir: &Path, idle: usize) -> (PathBuf, PathBuf, PathBuf) {
    let cluster = dir.join("cluster.yaml");
    let mut items = vec![
        namespace("bank"),
        namespace("shop"),
        deployment("bank", "ledger", "ledger-x1", "10.0.2.10"),
        deployment("shop", "api", "api-x1", "10.0.1.10"),
        deployment("shop", "batch", "batch-x1", "10.0.1.11"),
        deployment("shop", "web", "web-x1", "10.0.1.12"),
        egress_policy("bank", "ledger-egress", "ledger", &[80], false),
    ];
    if idle > 0 {
        items.push(namespace("bulk"));
    }
    for i in 0..idle {
        let app = format!("idle{i}");
        let ip = format!("10.0.{}.{}", 3 + i / 250, i % 250 + 1);
        items.push(deployment("bulk", &app, &format!("{app}-x1"), &ip));
    }
    std::fs::write(&cluster, list(&items)).unwrap();
    let proposed = dir.join("proposed");
    std::fs::create_dir(&proposed).unwrap();
    std::fs::write(
        proposed.join("api-egress.yaml"),
        policy_file("shop", "api-egress", "api", &[443]),
    )
    .unwrap();
    std::fs::write(
        proposed.join("batch-egress.yaml"),
        policy_file("shop", "batch-egress", "batch", &[443]),
    )
    .unwrap();

    let db = dir.join("leash.db");
    let store = SqliteStore::open(&db).unwrap();
    let old = Utc::now() - chrono::Duration::days(8);
    let flow =
        |ns: &str, name: &str, dst: &str, port: u16, names: &[&str], count: u64| FlowObservation {
            count,
            first_seen: old,
            last_seen: Utc::now() - chrono::Duration::minutes(5),
            established: count,
            pods: PodNames {
                names: [format!("{name}-x1")].into(),
                more: 0,
            },
            ..deployment_flow(ns, name, dst, port, names, old)
        };
    store
        .commit(
            &BatchId {
                node: "n1".into(),
                boot_id: "b".into(),
                seq: 1,
            },
            &[
                flow(
                    "shop",
                    "api",
                    "203.0.113.4",
                    443,
                    &["api.payments.example"],
                    7,
                ),
                flow("shop", "api", "198.51.100.7", 5432, &[], 3),
                flow("shop", "web", "10.0.1.10", 8080, &[], 11),
                flow("shop", "web", "203.0.113.9", 443, &[HOSTILE], 2),
                flow("shop", "batch", "203.0.113.5", 443, &["batch.example"], 2),
                flow(
                    "bank",
                    "ledger",
                    "203.0.113.8",
                    443,
                    &["ledger.bank.example"],
                    4,
                ),
            ],
            &[],
        )
        .unwrap();
    // A DNS drift remembered for web's hostile name, as `serve`'s drift check leaves it.
    let now = Utc::now();
    let drift = json!({
        "count": 2, "dst": "203.0.113.9", "first_sent": leash_records::time::rfc3339(now),
        "fix": "- to:\n  - ipBlock:\n      cidr: 203.0.113.9/32\n", "kind": "Deployment",
        "last_seen": leash_records::time::rfc3339(now), "last_sent": leash_records::time::rfc3339(now),
        "name": "web", "names": [HOSTILE], "namespace": "shop", "occurrences": 1,
        "pod": "web-x1", "policies": [], "port": 443, "protocol": "TCP",
        "pull_request": "https://git.example/shop/pull/7", "type": "dns-drift",
        "workload": "Deployment/web",
    });
    store
        .remember_alerts(&[AlertRecord {
            workload: WorkloadRef {
                namespace: "shop".into(),
                kind: "Deployment".into(),
                name: "web".into(),
            },
            dst: "203.0.113.9".parse().unwrap(),
            port: 443,
            protocol: Protocol::Tcp,
            first_sent: now,
            last_sent: now,
            last_seen: now,
            occurrences: 1,
            detail: drift.to_string(),
        }])
        .unwrap();
    (cluster, db, proposed)
}

/// Starts `leash serve` on the fixture (with `idle` more workloads) and waits until its map
/// carries the rollout phases.
fn serve(dir: &Path, idle: usize) -> ServeProcess {
    let (cluster, db, proposed) = fixture(dir, idle);
    let server = ServeProcess::start(
        dir,
        &db,
        &cluster,
        "1h",
        &["--proposed".as_ref(), proposed.as_os_str()],
    );
    support::http::wait_for(
        "the egress map with the rollout phases",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let Ok((200, body)) = get(server.ui, "/v1/map/namespaces/shop") else {
                return false;
            };
            let view: Value = serde_json::from_str(&body).unwrap();
            view["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == "wl:shop/Deployment/api" && n["phase"] == "would-deny")
        },
    );
    server
}

/// A raw GET: the status line, the headers (lower case) and the body.
fn raw_get(addr: SocketAddr, path: &str) -> (String, String, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (
        status.to_owned(),
        headers.to_ascii_lowercase(),
        raw[split + 4..].to_vec(),
    )
}

fn json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(addr, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn ids(view: &Value, what: &str) -> Vec<String> {
    view[what]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap().to_owned())
        .collect()
}

const API_TO_CIDR: &str = "wl:shop/Deployment/api->cidr:198.51.100.0/24";
const LEDGER_EDGE: &str = "wl:bank/Deployment/ledger->ext:ledger.bank.example";
const DRIFT_EDGE: &str =
    "wl:shop/Deployment/web->ext:<img src=x onerror=\"window.pwned=1\">.evil.example";

/// The `/v1/map` API: the overview, a namespace, a workload's panel, its refusals; and the
/// UI's files with their types and policy.
#[test]
fn the_map_api_answers_and_refuses_bad_queries() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), 0);
    let http = server.ui;

    let overview = json(http, "/v1/map");
    assert_eq!(overview["expanded"], true, "{overview}");
    let nodes = ids(&overview, "nodes");
    for id in [
        "wl:bank/Deployment/ledger",
        "wl:shop/Deployment/api",
        "wl:shop/Deployment/batch",
        "wl:shop/Deployment/web",
        "ext:api.payments.example",
        "cidr:198.51.100.0/24",
        "ns:shop",
    ] {
        assert!(nodes.contains(&id.to_owned()), "{id} not in {nodes:?}");
    }
    let verdict = |view: &Value, id: &str| {
        view["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .map(|e| e["verdict"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        verdict(&overview, API_TO_CIDR).as_deref(),
        Some("would-deny")
    );
    assert_eq!(verdict(&overview, LEDGER_EDGE).as_deref(), Some("denied"));
    assert_eq!(verdict(&overview, DRIFT_EDGE).as_deref(), Some("drift"));
    assert_eq!(
        verdict(&overview, "wl:shop/Deployment/web->wl:shop/Deployment/api").as_deref(),
        Some("allowed")
    );

    // Filters: a verdict, a search, one namespace.
    let denied = json(http, "/v1/map?verdict=denied");
    assert_eq!(ids(&denied, "edges"), [LEDGER_EDGE]);
    let search = json(http, "/v1/map?q=PAYMENTS");
    assert_eq!(
        ids(&search, "edges"),
        ["wl:shop/Deployment/api->ext:api.payments.example"]
    );
    let bank = json(http, "/v1/map?namespace=bank&since=24h");
    assert_eq!(ids(&bank, "edges"), [LEDGER_EDGE]);
    // Nothing was seen in the last second.
    let none = json(http, "/v1/map?since=1s");
    assert_eq!(ids(&none, "edges"), Vec::<String>::new());

    let shop = json(http, "/v1/map/namespaces/shop?verdict=would-deny");
    assert_eq!(shop["namespace"], "shop");
    assert_eq!(ids(&shop, "edges"), [API_TO_CIDR]);

    // The panel: phase and why, evidence, the proposed policy and its diff.
    let panel = json(http, "/v1/map/workloads/shop/Deployment/api");
    assert_eq!(panel["phase"], "would-deny", "{panel}");
    assert!(panel["why"].as_str().unwrap().contains("5432"), "{panel}");
    let rows = panel["destinations"].as_array().unwrap();
    let row = rows.iter().find(|r| r["port"] == 5432).unwrap();
    assert_eq!(row["verdict"], "would-deny");
    assert_eq!(row["events"], 3);
    assert_eq!(row["pods"], json!(["api-x1"]));
    assert_eq!(row["outcome"], json!({"established": 3, "failed": 0}));
    let yaml = panel["proposed"]["yaml"].as_str().unwrap();
    assert!(yaml.contains("kind: NetworkPolicy"), "{yaml}");
    assert!(yaml.contains("port: 5432"), "{yaml}");
    assert_eq!(panel["proposed"]["name"], "api-egress");
    // The proposal allows exactly what api did: everything else becomes denied, nothing
    // observed breaks.
    let diff = panel["diff"].as_str().unwrap();
    for part in [
        "5433-65535  198.51.100.7",
        "444-65535   203.0.113.4",
        "0 breaks",
    ] {
        assert!(diff.contains(part), "{part:?} not in the diff {diff}");
    }
    assert_eq!(panel["breaks"], 0);
    assert_eq!(panel["applied"], Value::Null);
    assert_eq!(panel["alerts"], json!([]));

    // Refusals name the parameter.
    for (path, status, text) in [
        ("/v1/map?verdict=blocked", 400, "verdict=\"blocked\""),
        ("/v1/map?since=soon", 400, "since: "),
        ("/v1/map?colour=red", 400, "colour"),
        ("/v1/map/namespaces/nowhere", 404, "nowhere"),
        ("/v1/map/namespaces/shop?namespace=bank", 400, "namespace="),
        (
            "/v1/map/workloads/shop/Deployment/nobody",
            404,
            "shop/Deployment/nobody",
        ),
    ] {
        let (got, body) = get(http, path).unwrap();
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(text), "{path}: {body}");
    }
    let long = format!("/v1/map?q={}", "x".repeat(300));
    assert_eq!(get(http, &long).unwrap().0, 400);

    // The UI: the page and its assets, typed, under a policy allowing only them.
    let (status, headers, body) = raw_get(http, "/");
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        headers.contains("content-type: text/html; charset=utf-8"),
        "{headers}"
    );
    assert!(
        headers.contains(
            "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'"
        ),
        "{headers}"
    );
    let page = String::from_utf8(body).unwrap();
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "inline code in the page"
    );
    for (path, kind) in [
        ("/assets/app.js", "text/javascript"),
        ("/assets/style.css", "text/css"),
        ("/assets/vendor/d3-force.min.js", "text/javascript"),
        ("/assets/vendor/d3-force.LICENSE", "text/plain"),
    ] {
        let (status, headers, body) = raw_get(http, path);
        assert!(status.contains(" 200 "), "{path}: {status}");
        assert!(
            headers.contains(&format!("content-type: {kind}")),
            "{path}: {headers}"
        );
        assert!(
            headers.contains("x-content-type-options: nosniff"),
            "{path}"
        );
        assert!(!body.is_empty(), "{path}");
    }
    assert!(raw_get(http, "/assets/nothing.js").0.contains(" 404 "));
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("ui-screenshots")
}

/// The `data-id`s of the elements matching `selector`.
fn data_ids(b: &Browser, selector: &str) -> webdriver::Result<Vec<String>> {
    let v = b.script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.getAttribute('data-id'));",
        &[json!(selector)],
    )?;
    Ok(serde_json::from_value(v).unwrap())
}

/// A headless browser, or `None` (with a message) when there is none and none is required.
fn browser() -> Option<Browser> {
    match webdriver::find() {
        Ok((driver, chromium)) => Some(Browser::start(&driver, &chromium, 1400, 1000).unwrap()),
        Err(why) if !webdriver::required() => {
            eprintln!(
                "skipping the browser test: {why}; set {}=1 to fail instead",
                webdriver::REQUIRE_ENV
            );
            None
        }
        Err(why) => panic!("{}=1 but {why}", webdriver::REQUIRE_ENV),
    }
}

/// A browser test's result: a WebDriver error fails it with its message.
type Outcome = Result<(), webdriver::Error>;

/// The UI in a real browser, against a served fixture.
#[test]
fn the_ui_in_a_real_browser() -> Outcome {
    let Some(b) = browser() else {
        return Ok(());
    };
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), 0);
    let shots = screenshots();
    b.goto(&format!("http://{}/", server.ui))?;

    // The map: every workload, the destinations, the edges.
    b.wait_find("#map g.node[data-id='wl:shop/Deployment/api']", WAIT)?;
    let nodes = data_ids(&b, "#map g.node")?;
    for id in [
        "wl:bank/Deployment/ledger",
        "wl:shop/Deployment/api",
        "wl:shop/Deployment/batch",
        "wl:shop/Deployment/web",
        "ext:api.payments.example",
        "ext:ledger.bank.example",
        "cidr:198.51.100.0/24",
    ] {
        assert!(nodes.contains(&id.to_owned()), "{id} not drawn: {nodes:?}");
    }
    let edges = data_ids(&b, "#map g.edge-group")?;
    let api = json(server.ui, "/v1/map");
    assert_eq!(edges, ids(&api, "edges"), "the edges drawn are the API's");
    // The would-be-denied edge: its verdict, its stroke, and the words on it.
    let would = b.wait_find(&format!("#map g.edge-group[data-id='{API_TO_CIDR}']"), WAIT)?;
    assert_eq!(
        b.attribute(&would, "data-verdict")?.as_deref(),
        Some("would-deny")
    );
    let marked = b.script(
        "const g = document.querySelector(`#map g.edge-group[data-id='${arguments[0]}']`);
         const line = g.querySelector('line');
         return [g.querySelector('text.edge-mark').textContent,
                 getComputedStyle(line).strokeDasharray,
                 line.querySelector('title').textContent];",
        &[json!(API_TO_CIDR)],
    )?;
    assert_eq!(marked[0], "would be denied");
    assert_ne!(marked[1], "none", "a would-deny edge is dashed");
    let title = marked[2].as_str().unwrap();
    for part in [
        "events: 3",
        "ports: 5432/TCP",
        "verdict: would be denied",
        "last seen: ",
    ] {
        assert!(
            title.contains(part),
            "{part:?} not in the edge's title {title:?}"
        );
    }
    let denied = b.wait_find(
        &format!("#map g.edge-group[data-id='{LEDGER_EDGE}'] text.edge-mark"),
        WAIT,
    )?;
    assert_eq!(b.text(&denied)?, "denied");
    let drift = b.script(
        "return document.querySelector(`#map g.edge-group[data-verdict='drift'] text.edge-mark`).textContent;",
        &[],
    )?;
    assert_eq!(drift, "DNS drift");
    assert_eq!(
        data_ids(&b, "#map g.edge-group[data-verdict='drift']")?,
        [DRIFT_EDGE]
    );
    // The legend says each verdict in words.
    let legend = b.text(&b.wait_find("#legend", WAIT)?)?;
    for word in ["allowed", "would be denied", "denied", "DNS drift"] {
        assert!(legend.contains(word), "{word} not in the legend {legend:?}");
    }
    // The hostile name is text: no element was made of it, no script ran.
    let hostile = b.script(
        "return [document.querySelectorAll('img').length, window.pwned === undefined,
                 document.querySelector('#edge-table').textContent.includes(arguments[0])];",
        &[json!(HOSTILE)],
    )?;
    assert_eq!(hostile, json!([0, true, true]), "the hostile name");
    b.screenshot(&shots.join("map.png"))?;

    // A filter hides what it should: only would-deny edges, then a search.
    b.click(&b.wait_find("#f-verdict option[value='would-deny']", WAIT)?)?;
    b.wait_until("only the would-deny edge", WAIT, || {
        Ok(data_ids(&b, "#map g.edge-group")? == [API_TO_CIDR])
    })?;
    assert!(
        data_ids(&b, "#map g.node")?
            .iter()
            .all(|n| !n.contains("ledger"))
    );
    b.screenshot(&shots.join("map-would-deny.png"))?;
    b.click(&b.wait_find("#f-verdict option[value='all']", WAIT)?)?;
    let search = b.wait_find("#f-search", WAIT)?;
    b.type_into(&search, "ledger")?;
    b.wait_until("only ledger's edge", WAIT, || {
        Ok(data_ids(&b, "#map g.edge-group")? == [LEDGER_EDGE])
    })?;
    b.clear(&search)?;
    b.type_into(&search, " ")?;
    b.wait_until("the whole map again", WAIT, || {
        Ok(b.script(
            "const m = document.getElementById('map');
             return m.getAttribute('aria-busy') === 'false' && m.getAttribute('data-query');",
            &[],
        )? == "/v1/map")
    })?;
    assert_eq!(data_ids(&b, "#map g.edge-group")?, edges);

    // Clicking a workload opens its panel: phase, evidence, YAML, diff.
    b.click(&b.wait_find("#map g.node[data-id='wl:shop/Deployment/api'] .shape", WAIT)?)?;
    b.wait_until("api's panel", WAIT, || {
        Ok(b.script(
            "const p = document.getElementById('panel');
             return !p.hidden && p.getAttribute('aria-busy') === 'false';",
            &[],
        )? == json!(true))
    })?;
    assert_eq!(
        b.text(&b.wait_find("#panel-title", WAIT)?)?,
        "shop/Deployment/api"
    );
    assert_eq!(b.text(&b.wait_find("#panel-phase", WAIT)?)?, "would-deny");
    let row = b.wait_find(
        "#panel-destinations tr[data-to='cidr:198.51.100.0/24']",
        WAIT,
    )?;
    let row = b.text(&row)?;
    for part in [
        "198.51.100.7:5432/TCP",
        "would be denied",
        "api-x1",
        "3 established, 0 failed",
    ] {
        assert!(row.contains(part), "{part:?} not in the row {row:?}");
    }
    let yaml = b.text(&b.wait_find("#panel-yaml", WAIT)?)?;
    assert!(
        yaml.contains("name: api-egress") && yaml.contains("port: 5432"),
        "{yaml}"
    );
    assert!(!b.text(&b.wait_find("#panel-diff", WAIT)?)?.is_empty());
    b.screenshot(&shots.join("panel.png"))?;
    b.click(&b.wait_find("#panel-close", WAIT)?)?;

    // The keyboard reaches a workload: Tab to batch's node, Enter opens its panel.
    b.script("document.activeElement.blur(); window.scrollTo(0, 0);", &[])?;
    let mut reached = false;
    for _ in 0..60 {
        b.press(keys::TAB)?;
        let focused = b.script(
            "return document.activeElement && document.activeElement.getAttribute('data-id');",
            &[],
        )?;
        if focused == "wl:shop/Deployment/batch" {
            reached = true;
            break;
        }
    }
    assert!(reached, "Tab never reached batch's node");
    b.press(keys::ENTER)?;
    b.wait_until("batch's panel by keyboard", WAIT, || {
        Ok(b.script(
            "const p = document.getElementById('panel');
             return !p.hidden && p.getAttribute('aria-busy') === 'false'
                 && document.getElementById('panel-title').textContent;",
            &[],
        )? == "shop/Deployment/batch")
    })?;
    assert_eq!(
        b.script("return document.activeElement.id;", &[])?,
        "panel-title",
        "the panel takes the focus"
    );
    b.press(keys::ESCAPE)?;
    b.wait_until("the panel closed, the focus back on the node", WAIT, || {
        Ok(b.script(
            "return document.getElementById('panel').hidden
                 && document.activeElement.getAttribute('data-id');",
            &[],
        )? == "wl:shop/Deployment/batch")
    })?;

    // The rollout board: the guardrails first, counts as /v1/rollout's.
    b.click(&b.wait_find("#tab-rollout", WAIT)?)?;
    b.wait_find("#rollout-table tbody tr", WAIT)?;
    let board = json(server.ui, "/v1/rollout");
    let workloads = board["workloads"].as_array().unwrap();
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for w in workloads {
        *expected
            .entry(w["phase"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let shown = b.script(
        "return Object.fromEntries([...document.querySelectorAll('#phase-counts li')]
             .map(li => [li.dataset.phase, Number(li.querySelector('.count').textContent)]));",
        &[],
    )?;
    let total: u64 = shown
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(total, workloads.len() as u64, "{shown}");
    for (phase, n) in shown.as_object().unwrap() {
        assert_eq!(
            n.as_u64().unwrap(),
            expected.get(phase).copied().unwrap_or(0),
            "{phase}: {shown} against {board}"
        );
    }
    assert_eq!(
        b.find_all("#rollout-table tbody tr")?.len(),
        workloads.len()
    );
    let stage = b.text(&b.wait_find("#guardrails-phase", WAIT)?)?;
    assert!(
        stage.contains(board["guardrails"]["phase"].as_str().unwrap()),
        "{stage}"
    );
    let order = b.script(
        "const g = document.getElementById('guardrails'), t = document.getElementById('rollout-table');
         return !!(g.compareDocumentPosition(t) & Node.DOCUMENT_POSITION_FOLLOWING);",
        &[],
    )?;
    assert_eq!(order, true, "the guardrails stage comes first");
    // Sorting by phase, then opening a panel from the table.
    b.click(&b.wait_find("#rollout-table th button[data-sort='phase']", WAIT)?)?;
    b.wait_until("sorted by phase", WAIT, || {
        Ok(b.script(
            "return document.querySelector(\"#rollout-table th button[data-sort='phase']\").parentElement.getAttribute('aria-sort');",
            &[],
        )? == "ascending")
    })?;
    b.screenshot(&shots.join("rollout.png"))?;
    b.click(&b.wait_find(
        "#rollout-table tr[data-workload='bank/Deployment/ledger'] button",
        WAIT,
    )?)?;
    b.wait_until("ledger's panel from the board", WAIT, || {
        Ok(b.script(
            "return document.getElementById('panel-title').textContent;",
            &[],
        )? == "bank/Deployment/ledger")
    })?;
    b.click(&b.wait_find("#panel-close", WAIT)?)?;

    // The alerts: ledger's unexpected egress, with its proposed fix.
    b.click(&b.wait_find("#tab-alerts", WAIT)?)?;
    // The alerts are remembered by the first check: ask again until it has run. One script
    // reads the rows, so a re-rendered table never leaves a stale element.
    let rows = || {
        b.script(
            "return [...document.querySelectorAll(\"#alerts-table tr[data-type='egress-denied']\")]
                 .map(r => r.textContent);",
            &[],
        )
    };
    b.wait_until("ledger's alert", WAIT, || {
        b.click(&b.wait_find("#tab-alerts", WAIT)?)?;
        std::thread::sleep(Duration::from_millis(200));
        Ok(rows()?.to_string().contains("bank/Deployment/ledger"))
    })?;
    let alert = rows()?.to_string();
    assert!(
        alert.contains("203.0.113.8:443/TCP") && alert.contains("port: 443"),
        "{alert}"
    );
    let drift = b.script(
        "const r = document.querySelector(\"#alerts-table tr[data-type='dns-drift']\");
         return [r.textContent.includes('DNS drift'), r.querySelector('a').getAttribute('href')];",
        &[],
    )?;
    assert_eq!(drift, json!([true, "https://git.example/shop/pull/7"]));
    b.screenshot(&shots.join("alerts.png"))?;

    // Every control has a label; every focusable node a name and a role.
    let unlabelled = b.script(
        "const out = [];
         for (const c of document.querySelectorAll('input, select, textarea, button')) {
           const named = (c.labels && c.labels.length) || c.getAttribute('aria-label')
             || (c.tagName === 'BUTTON' && c.textContent.trim());
           if (!named) out.push(c.outerHTML.slice(0, 80));
         }
         for (const n of document.querySelectorAll('#map [tabindex]')) {
           if (!n.getAttribute('aria-label') || n.getAttribute('role') !== 'button'
               || n.getAttribute('tabindex') !== '0') out.push(n.outerHTML.slice(0, 80));
         }
         return out;",
        &[],
    )?;
    assert_eq!(unlabelled, json!([]), "controls without a label");
    Ok(())
}

/// A cluster of more than 200 workloads opens on its namespaces; Enter on one expands it
/// (`/v1/map/namespaces/NS`), and the namespace filter narrows the overview to one.
#[test]
fn a_large_cluster_opens_on_namespaces_and_expands_one() -> Outcome {
    let Some(b) = browser() else {
        return Ok(());
    };
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), 200);
    let shots = screenshots();
    b.goto(&format!("http://{}/", server.ui))?;

    b.wait_find("#map g.node[data-id='ns:shop']", WAIT)?;
    let nodes = data_ids(&b, "#map g.node")?;
    assert!(
        nodes.iter().all(|n| !n.starts_with("wl:")),
        "workloads drawn in the overview: {nodes:?}"
    );
    for id in ["ns:bank", "ns:shop", "ext:api.payments.example"] {
        assert!(nodes.contains(&id.to_owned()), "{id} not drawn: {nodes:?}");
    }
    let folded = b.wait_find(
        "#map g.edge-group[data-id='ns:shop->cidr:198.51.100.0/24']",
        WAIT,
    )?;
    assert_eq!(
        b.attribute(&folded, "data-verdict")?.as_deref(),
        Some("would-deny")
    );
    let summary = b.text(&b.wait_find("#map-summary", WAIT)?)?;
    assert!(summary.contains("204 workloads"), "{summary}");
    b.screenshot(&shots.join("overview-namespaces.png"))?;

    // Enter on shop's node expands it.
    b.script(
        "document.querySelector(\"#map g.node[data-id='ns:shop']\").focus();",
        &[],
    )?;
    b.press(keys::ENTER)?;
    b.wait_find("#map g.node[data-id='wl:shop/Deployment/api']", WAIT)?;
    let back = b.wait_find("#map-back", WAIT)?;
    assert_eq!(b.attribute(&back, "hidden")?, None, "the way back is shown");
    assert!(
        data_ids(&b, "#map g.edge-group")?.contains(&API_TO_CIDR.to_owned()),
        "the expanded namespace's would-deny edge"
    );
    b.screenshot(&shots.join("namespace-shop.png"))?;
    b.click(&back)?;
    b.wait_until("the overview again", WAIT, || {
        let nodes = data_ids(&b, "#map g.node")?;
        Ok(nodes.contains(&"ns:shop".to_owned()) && nodes.iter().all(|n| !n.starts_with("wl:")))
    })?;

    // The namespace filter: bank alone is small enough to show its workloads.
    b.click(&b.wait_find("#f-namespace option[value='bank']", WAIT)?)?;
    b.wait_until("bank's workload alone", WAIT, || {
        Ok(data_ids(&b, "#map g.edge-group")? == [LEDGER_EDGE])
    })?;
    Ok(())
}

/// The scale, without timing (the figures are `benches/ui.rs`'s): at 2,000 workloads
/// and 20,000 edges the map opens on its namespaces, and `ns-00`'s 200 workloads expand.
#[test]
fn the_2000_workload_map_opens_on_namespaces_and_expands_one() -> Outcome {
    let Some(b) = browser() else {
        return Ok(());
    };
    let dir = tempfile::tempdir().unwrap();
    let (cluster, db) = support::large_map::fixture(dir.path());
    let server = ServeProcess::start(dir.path(), &db, &cluster, "1h", &[] as &[&str]);
    support::large_map::wait_built(&server);
    let overview = json(server.ui, "/v1/map");
    assert_eq!(overview["expanded"], false);
    assert_eq!(overview["totals"]["workloads"], 2_000);
    assert_eq!(overview["totals"]["edges"], 20_000);

    b.goto(&format!("http://{}/", server.ui))?;
    let mut drawn = Value::Null;
    b.wait_until("the overview drawn", WAIT, || {
        drawn = b.script(support::large_map::DRAWN, &[json!("/v1/map")])?;
        Ok(!drawn.is_null())
    })?;
    let nodes = data_ids(&b, "#map g.node")?;
    assert!(nodes.contains(&"ns:ns-00".to_owned()), "{nodes:?}");
    assert!(
        nodes.iter().all(|n| !n.starts_with("wl:")),
        "workloads drawn in the overview"
    );
    b.screenshot(&screenshots().join("large-overview.png"))?;

    b.script(
        "document.querySelector(\"#map g.node[data-id='ns:ns-00']\").focus();",
        &[],
    )?;
    b.press(keys::ENTER)?;
    b.wait_until("ns-00 expanded", WAIT, || {
        drawn = b.script(
            support::large_map::DRAWN,
            &[json!("/v1/map/namespaces/ns-00")],
        )?;
        Ok(!drawn.is_null())
    })?;
    let workloads = data_ids(&b, "#map g.node")?
        .into_iter()
        .filter(|n| n.starts_with("wl:ns-00/"))
        .count();
    assert_eq!(workloads, 200, "ns-00's workloads drawn");
    b.screenshot(&screenshots().join("large-namespace.png"))?;

    // Laid out in blocks: no two nodes on top of each other, ns-00's workloads in its box.
    let layout = b.script(
        "const pos = [...document.querySelectorAll('#map g.node')].map(g => {
           const m = /translate\\(([-\\d.]+),([-\\d.]+)\\)/.exec(g.getAttribute('transform'));
           return [g.getAttribute('data-id'), Number(m[1]), Number(m[2])];
         });
         let close = 0;
         for (let i = 0; i < pos.length; i++)
           for (let j = i + 1; j < pos.length; j++)
             if (Math.hypot(pos[i][1] - pos[j][1], pos[i][2] - pos[j][2]) < 40) close++;
         const box = document.querySelector(\"#map g.box[data-id='ns:ns-00'] rect\").getBBox();
         const outside = pos.filter(([id, x, y]) => id.startsWith('wl:ns-00/')
           && !(x > box.x && x < box.x + box.width && y > box.y && y < box.y + box.height));
         return [close, outside.length];",
        &[],
    )?;
    assert_eq!(
        layout,
        json!([0, 0]),
        "[pairs of nodes closer than 40 px, ns-00's workloads outside its box]"
    );
    // A large view's edge titles are made when the pointer reaches an edge.
    let title = b.script(
        "const line = document.querySelector('#map g.edge-group line');
         const before = line.querySelector('title');
         line.dispatchEvent(new PointerEvent('pointerover', {bubbles: true}));
         const after = line.querySelector('title');
         return [before === null, after && after.textContent];",
        &[],
    )?;
    assert_eq!(title[0], true, "no edge title before the pointer comes");
    let text = title[1].as_str().unwrap_or_default();
    for part in ["events: 2", "last seen: ", "ports: "] {
        assert!(
            text.contains(part),
            "{part:?} not in the edge's title {text:?}"
        );
    }
    // And its edge table when it is opened: every edge of the view, as text.
    let edges = data_ids(&b, "#map g.edge-group")?.len();
    assert_eq!(edges, 2_200, "ns-00's edges drawn");
    b.script("document.getElementById('edges-details').open = true;", &[])?;
    b.wait_until("the edge table filled", WAIT, || {
        Ok(b.script(
            "return document.querySelectorAll('#edge-table tbody tr').length;",
            &[],
        )? == json!(edges))
    })?;
    Ok(())
}
