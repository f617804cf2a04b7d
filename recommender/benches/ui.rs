//! The web UI at the scale, in a real browser: `leash serve` (the built binary) over
//! 2,000 workloads and 20,000 edges (`tests/support/large_map.rs`), headless Chromium driven
//! by `chromedriver` (`leash_lab::webdriver`). Per run, in a fresh browser:
//!
//! - **overview**: from navigation to the namespace overview on screen (the UI's own User
//!   Timing measure `leash:map /v1/map`: its end, in ms since the navigation started);
//! - **expand**: Enter on `ns-00` (200 workloads) to its view on screen (the measure
//!   `leash:map /v1/map/namespaces/ns-00`, from the key event's time stamp to the first frame
//!   painted after drawing), split into **input** (the key event to the request), **answer**
//!   (the request to its response's end, from Resource Timing: the server and loopback) and
//!   **draw** (the response's end to painted: JSON, layout, SVG, style, layout, paint), and the
//!   Long Animation Frame entries of that time: **script** (the answer's JSON to the SVG built)
//!   and **render** (style, layout, paint), `-` when no frame took over 50 ms;
//! - **`/v1`**: the median of 10 answers over loopback (a new connection each) to `/v1/map`,
//!   `/v1/map/namespaces/ns-00` and `/v1/map/workloads/ns-00/Deployment/w0`.
//!
//! Printed per run with the machine's 1-minute load average, then the medians beside the
//! issue's targets (1 s, 300 ms, 50 ms) as ratios. Skipped with a message when `chromedriver`
//! is missing, unless `LEASH_REQUIRE_BROWSER=1`.
//!
//! `cargo bench -p leash --bench ui` (5 runs); `cargo bench -p leash --bench ui -- --test` runs
//! once with 2 answers per path.

#![expect(
    clippy::unwrap_used,
    reason = "bench set-up: a failed step must stop the bench loudly"
)]

#[path = "../tests/support/mod.rs"]
#[expect(
    dead_code,
    reason = "the bench uses only the large map and the serve process of the test support"
)]
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use leash_lab::webdriver::{self, Browser, keys};
use serde_json::{Value, json};
use support::http::get;
use support::large_map::{self, BIG};
use support::serve_process::ServeProcess;

/// How long any one wait in the browser may take.
const WAIT: Duration = Duration::from_secs(60);

/// The `/v1` paths timed, with their short names.
const PATHS: [(&str, &str); 3] = [
    ("/v1/map", "overview"),
    ("/v1/map/namespaces/ns-00", "namespace"),
    ("/v1/map/workloads/ns-00/Deployment/w0", "workload"),
];

/// A page script: once the map is idle on the answer to `arguments[0]`, `[end of its User
/// Timing measure (ms since navigation), its duration (ms), nodes drawn]`; else `null`.
const MEASURED: &str = "const m = document.getElementById('map');
    if (m.getAttribute('aria-busy') !== 'false' || m.getAttribute('data-query') !== arguments[0])
      return null;
    const e = performance.getEntriesByName('leash:map ' + arguments[0], 'measure');
    if (!e.length) return null;
    const last = e[e.length - 1];
    return [last.startTime + last.duration, last.duration,
            document.querySelectorAll('#map g.node').length];";

/// A page script: starts keeping the Long Animation Frame entries (frames over 50 ms).
const OBSERVE_FRAMES: &str = "window.leashFrames = [];
    new PerformanceObserver((l) => window.leashFrames.push(...l.getEntries()))
      .observe({type: 'long-animation-frame'});";

/// A page script: the last measure named `leash:map arguments[0]` split in ms: `[input (the
/// key event to the request), answer (request to response end: the server and loopback),
/// draw (response end to painted: JSON, layout, SVG, style, layout, paint), script, render]`,
/// the last two the Long Animation Frame entries (over 50 ms) that started during the measure
/// (`null` without any).
const SPLIT: &str = "const e = performance.getEntriesByName('leash:map ' + arguments[0], 'measure');
    const m = e[e.length - 1];
    const end = m.startTime + m.duration;
    const r = performance.getEntriesByType('resource')
      .filter((x) => x.name.endsWith(arguments[0]) && x.startTime >= m.startTime).pop();
    const f = (window.leashFrames || []).filter((x) => x.startTime >= m.startTime && x.startTime < end);
    return [r ? r.startTime - m.startTime : null, r ? r.responseEnd - r.startTime : null,
            r ? end - r.responseEnd : null,
            f.length ? f.reduce((s, x) => s + x.scripts.reduce((t, y) => t + y.duration, 0), 0) : null,
            f.length ? f.reduce((s, x) => s + x.startTime + x.duration - x.renderStart, 0) : null];";

/// One run's figures, in ms.
struct Run {
    load: f64,
    overview_at: f64,
    overview_nodes: u64,
    expand: f64,
    expand_nodes: u64,
    /// The expansion's [`SPLIT`].
    split: [Option<f64>; 5],
    api: [f64; 3],
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// The median answer time of `path` over `n` GETs, each on a new loopback connection.
fn answer_ms(server: &ServeProcess, path: &str, n: usize) -> f64 {
    let (status, _) = get(server.ui, path).unwrap();
    assert_eq!(status, 200, "{path}");
    median(
        (0..n)
            .map(|_| {
                let t = Instant::now();
                let (status, body) = get(server.ui, path).unwrap();
                let ms = t.elapsed().as_secs_f64() * 1e3;
                assert!(status == 200 && !body.is_empty(), "{path}: {status}");
                ms
            })
            .collect(),
    )
}

/// Waits until the map has drawn `query`: the [`MEASURED`] figures.
fn measured(b: &Browser, query: &str) -> Vec<f64> {
    let mut got = Value::Null;
    b.wait_until(&format!("the map drawn for {query}"), WAIT, || {
        got = b.script(MEASURED, &[json!(query)])?;
        Ok(!got.is_null())
    })
    .unwrap();
    serde_json::from_value(got).unwrap()
}

fn one_run(
    server: &ServeProcess,
    driver: &std::path::Path,
    chromium: &std::path::Path,
    answers: usize,
) -> Run {
    let load = load_average();
    let b = Browser::start(driver, chromium, 1400, 1000).unwrap();
    b.goto(&format!("http://{}/", server.ui)).unwrap();
    let overview = measured(&b, "/v1/map");
    b.script(
        "document.querySelector(`#map g.node[data-id='ns:${arguments[0]}']`).focus();",
        &[json!(BIG)],
    )
    .unwrap();
    b.script(OBSERVE_FRAMES, &[]).unwrap();
    b.press(keys::ENTER).unwrap();
    let path = format!("/v1/map/namespaces/{BIG}");
    let expanded = measured(&b, &path);
    // The browser hands Long Animation Frame entries to observers when it is idle.
    std::thread::sleep(Duration::from_millis(500));
    let split: [Option<f64>; 5] =
        serde_json::from_value(b.script(SPLIT, &[json!(path)]).unwrap()).unwrap();
    drop(b);
    let api = PATHS.map(|(path, _)| answer_ms(server, path, answers));
    Run {
        load,
        overview_at: overview[0],
        overview_nodes: overview[2] as u64,
        expand: expanded[1],
        expand_nodes: expanded[2] as u64,
        split,
        api,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // As criterion does: `cargo bench` passes `--bench`; `-- --test` or a plain run is quick.
    let quick = args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench");
    let (runs, answers) = if quick { (1, 2) } else { (5, 10) };
    let (driver, chromium) = match webdriver::find() {
        Ok(found) => found,
        Err(why) if !webdriver::required() => {
            eprintln!(
                "ui bench skipped: {why}; set {}=1 to fail instead",
                webdriver::REQUIRE_ENV
            );
            return;
        }
        Err(why) => panic!("{}=1 but {why}", webdriver::REQUIRE_ENV),
    };
    let dir = tempfile::tempdir().unwrap();
    let (cluster, db) = large_map::fixture(dir.path());
    let server = ServeProcess::start(dir.path(), &db, &cluster, "1h", &[] as &[&str]);
    large_map::wait_built(&server);

    let version = Command::new(&chromium)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "ui: 2,000 workloads, 20,000 edges; {version}, headless, 1400x1000; machine: {} cores, {} MB RAM",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mem_total_mb(),
    );
    println!(
        "{:<7} {:>9} {:>15} {:>12} {:>34} {:>10} {:>11} {:>10}",
        "run",
        "load 1m",
        "overview drawn",
        "ns-00 expand",
        "input/answer/draw (script/render)",
        "/v1 map",
        "/v1 ns-00",
        "/v1 panel"
    );
    let mut all = Vec::new();
    for i in 1..=runs {
        let r = one_run(&server, &driver, &chromium, answers);
        let split = r
            .split
            .map(|v| v.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}")))
            .join("/");
        println!(
            "{:<7} {:>9.2} {:>12.0} ms {:>9.0} ms {:>31} ms {:>7.1} ms {:>8.1} ms {:>7.1} ms   ({} overview nodes, {} in ns-00's view)",
            i,
            r.load,
            r.overview_at,
            r.expand,
            split,
            r.api[0],
            r.api[1],
            r.api[2],
            r.overview_nodes,
            r.expand_nodes
        );
        all.push(r);
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(all.iter().map(f).collect());
    let (overview, expand) = (med(&|r| r.overview_at), med(&|r| r.expand));
    let api: Vec<f64> = (0..3).map(|k| med(&|r| r.api[k])).collect();
    println!(
        "{:<7} {:>9.2} {:>12.0} ms {:>9.0} ms {:>34} {:>7.1} ms {:>8.1} ms {:>7.1} ms",
        "median",
        med(&|r| r.load),
        overview,
        expand,
        "",
        api[0],
        api[1],
        api[2]
    );
    println!(
        "{:<7} {:>9} {:>13.2}x {:>11.2}x {:>34} {:>9.2}x {:>10.2}x {:>9.2}x   (median / target: 1 s, 300 ms, 50 ms)",
        "ratio",
        "",
        overview / 1_000.0,
        expand / 300.0,
        "",
        api[0] / 50.0,
        api[1] / 50.0,
        api[2] / 50.0
    );
}

fn mem_total_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
