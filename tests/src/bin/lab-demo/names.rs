//! The demo's names step: a name moves, and leash follows it.
//!
//! 1. `api.stripe.test` moves: the lab's DNS answers 203.0.113.99 in place of 203.0.113.12
//!    (`Shop::move_stripe`), while the proposal is applied (`DIR/cluster-locked.yaml`);
//! 2. a new agent runs; payment only looks the name up. With `leash serve` (on the store and
//!    the locked snapshot), `/v1/alerts` must show the `dns-drift` alert for the new address
//!    before payment connects to it; then payment connects (`DIR/flows-names.jsonl`);
//! 3. `leash audit --format json` reports the drift as a `dns-drift` line whose time (the DNS
//!    answer's) is earlier than the connection's first event (`DIR/audit-names.jsonl`);
//! 4. `leash recommend --format cilium -o DIR/cilium` writes payment's CiliumNetworkPolicy with
//!    `toFQDNs: matchName: api.stripe.test`;
//! 5. `leash recommend -o DIR/policies-names` allows the new address and its report shows the
//!    name's churn: four addresses seen, one of them new.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use leash_lab::shop::{self, Shop};
use leash_records::error::Chain;
use leash_records::{Record, read_records};
use serde_json::Value;

use super::{Background, READY_TIMEOUT, Result, STOP_TIMEOUT, fail, free_port, run_ok};

/// How long `leash serve` may take to raise the drift alert after the DNS answer.
const DRIFT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the observations are.
pub(crate) enum Observed {
    /// `leash serve` streams into this store; the step runs its own `leash serve` on it.
    Store(PathBuf),
    /// The agent's record files (`--no-serve`).
    Flows(Vec<PathBuf>),
}

/// What the step found, for the summary.
pub(crate) struct Outcome {
    /// The drift as `leash audit` reported it: `name address ports time`.
    pub drift: String,
    /// How long before the connection's first event the DNS answer was flagged.
    pub ahead: chrono::Duration,
    /// The alert `leash serve` raised (serve mode), as `/v1/alerts` gave it.
    pub alert: Option<String>,
    /// The Cilium policy file of payment.
    pub cilium_file: String,
    /// The report's line for the name.
    pub churn: String,
}

/// Starts an agent like the demo's: `(records_file, log_name, plain_recommender)`.
pub(crate) type StartAgent<'a> = &'a dyn Fn(&Path, &str, Option<SocketAddr>) -> Result<Background>;

/// Runs the step. `start_agent(records_file, log_name, plain_recommender)` starts an agent
/// like the demo's, streaming in plaintext to `plain_recommender` when given.
pub(crate) fn names(
    leash: &Path,
    out: &Path,
    shop: &Shop,
    locked: &Path,
    observed: Observed,
    start_agent: StartAgent<'_>,
) -> Result<Outcome> {
    let step = "move api.stripe.test";
    let moved = IpAddr::V4(shop::STRIPE_MOVED_ADDR);
    eprintln!(
        "== {} moves: {} -> {moved}",
        shop::STRIPE_HOST,
        shop::STRIPE_ADDRS[2]
    );
    shop.move_stripe().map_err(|e| fail(step, Chain(&e)))?;

    let records = out.join("flows-names.jsonl");
    let (files, alert) = match &observed {
        Observed::Store(db) => {
            let step = "leash serve: drift";
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port(step)?));
            let http = SocketAddr::from(([127, 0, 0, 1], free_port(step)?));
            // The UI listener: `/v1`.
            let ui = SocketAddr::from(([127, 0, 0, 1], free_port(step)?));
            let mut cmd = Command::new(leash);
            cmd.arg("serve")
                .args(["--listen", &listen.to_string(), "--http", &http.to_string()])
                .args(["--ui-listen", &ui.to_string()])
                .arg("--store")
                .arg(db)
                .arg("--cluster")
                .arg(locked)
                .args(["--insecure", "--check-interval", "1s"])
                .env("LEASH_LOG", "info")
                .env("NO_COLOR", "1");
            let (mut serve, _) = Background::start(
                step,
                "leash serve",
                &mut cmd,
                out.join("serve-names.log"),
                None,
            )?;
            super::wait_ready(step, &mut serve, http, READY_TIMEOUT)?;
            let mut agent = start_agent(&records, "agent-names.log", Some(listen))?;
            let addrs = lookup(shop)?;
            if !addrs.contains(&moved) {
                return Err(fail(
                    step,
                    format!("the lookup did not answer {moved}: {addrs:?}"),
                ));
            }
            let alert = wait_drift_alert(step, &mut serve, ui, moved)?;
            eprintln!("   drift alert before any connection: {alert}");
            connect(shop, moved)?;
            agent.stop("stop leash-agent after the names step", STOP_TIMEOUT)?;
            serve.stop("stop leash serve after the names step", STOP_TIMEOUT)?;
            (Vec::new(), Some(alert))
        }
        Observed::Flows(files) => {
            let mut agent = start_agent(&records, "agent-names.log", None)?;
            lookup(shop)?;
            connect(shop, moved)?;
            agent.stop("stop leash-agent after the names step", STOP_TIMEOUT)?;
            let mut files = files.clone();
            files.push(records.clone());
            (files, None)
        }
    };
    let args = |cmd: &mut Command| match &observed {
        Observed::Store(db) => {
            cmd.arg("--store").arg(db);
        }
        Observed::Flows(_) => {
            cmd.arg("--flows").args(&files);
        }
    };

    // 3. Audit: the drift, from the DNS answer, before the connection.
    let step = "audit: dns drift";
    eprintln!("== leash audit: the name's new address");
    let mut cmd = Command::new(leash);
    cmd.args(["audit", "--cluster"]).arg(locked);
    args(&mut cmd);
    cmd.args(["--format", "json"]);
    let ran = run_ok(step, &mut cmd)?;
    super::lockdown::write(step, &out.join("audit-names.jsonl"), &ran.stdout)?;
    let lines = super::lockdown::json_lines(step, &ran.stdout)?;
    let drift = lines
        .iter()
        .find(|l| {
            l["kind"] == "dns-drift"
                && l["name"] == shop::STRIPE_HOST
                && l["address"] == moved.to_string().as_str()
        })
        .ok_or_else(|| {
            fail(
                step,
                format!("no dns-drift line for {moved}:\n{}", ran.stdout),
            )
        })?;
    let drift_time: DateTime<Utc> = drift["time"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| fail(step, format!("the drift line has no time: {drift}")))?;
    let connected = first_flow_to(step, &records, moved)?;
    if drift_time >= connected {
        return Err(fail(
            step,
            format!(
                "the drift ({drift_time}) should precede the connection's first event ({connected})"
            ),
        ));
    }
    let ahead = connected - drift_time;
    let drift_text = format!(
        "{} {} {} at {}",
        shop::STRIPE_HOST,
        moved,
        drift["ports"],
        drift["time"].as_str().unwrap_or_default()
    );
    eprintln!(
        "   {drift_text}, {} ms before the connection",
        ahead.num_milliseconds()
    );

    // 4. The Cilium output names the name.
    let step = "recommend --format cilium";
    eprintln!("== leash recommend --format cilium");
    let cilium = out.join("cilium");
    let mut cmd = Command::new(leash);
    cmd.args(["recommend", "--format", "cilium", "--cluster"])
        .arg(locked);
    args(&mut cmd);
    cmd.arg("-o").arg(&cilium);
    run_ok(step, &mut cmd)?;
    let cilium_file = format!("{}/payment-egress.yaml", shop::SHOP_NS);
    let text = std::fs::read_to_string(cilium.join(&cilium_file))
        .map_err(|e| fail(step, format!("{cilium_file}: {}", Chain(&e))))?;
    let doc: Value = serde_norway::from_str(&text)
        .map_err(|e| fail(step, format!("{cilium_file}: {}", Chain(&e))))?;
    let names: Vec<&str> = doc["spec"]["egress"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["toFQDNs"].as_array().into_iter().flatten())
        .filter_map(|f| f["matchName"].as_str())
        .collect();
    if doc["kind"] != "CiliumNetworkPolicy" || !names.contains(&shop::STRIPE_HOST) {
        return Err(fail(
            step,
            format!(
                "{cilium_file} should be a CiliumNetworkPolicy with toFQDNs matchName {}:\n{text}",
                shop::STRIPE_HOST
            ),
        ));
    }
    eprintln!("   {cilium_file}: toFQDNs matchName {}", shop::STRIPE_HOST);

    // 5. The NetworkPolicy output follows the name, and its report shows the churn.
    let step = "recommend: churn";
    eprintln!("== leash recommend: the name's addresses and churn");
    let policies = out.join("policies-names");
    let mut cmd = Command::new(leash);
    cmd.args(["recommend", "--cluster"]).arg(locked);
    args(&mut cmd);
    cmd.arg("-o").arg(&policies);
    run_ok(step, &mut cmd)?;
    let policy_file = policies.join(format!("{}/payment-egress.yaml", shop::SHOP_NS));
    let policy = std::fs::read_to_string(&policy_file)
        .map_err(|e| fail(step, format!("{}: {}", policy_file.display(), Chain(&e))))?;
    if !policy.contains(&format!("{moved}/32")) {
        return Err(fail(
            step,
            format!(
                "{} does not allow {moved}/32:\n{policy}",
                policy_file.display()
            ),
        ));
    }
    let report_file = policies.join(format!("{}/REPORT.md", shop::SHOP_NS));
    let report = std::fs::read_to_string(&report_file)
        .map_err(|e| fail(step, format!("{}: {}", report_file.display(), Chain(&e))))?;
    let churn = report
        .lines()
        .find(|l| l.contains(shop::STRIPE_HOST) && l.contains("4 addresses"))
        .ok_or_else(|| {
            fail(
                step,
                format!(
                    "{} shows no churn line for {} with 4 addresses:\n{report}",
                    report_file.display(),
                    shop::STRIPE_HOST
                ),
            )
        })?
        .trim()
        .to_owned();
    eprintln!("   {churn}");
    Ok(Outcome {
        drift: drift_text,
        ahead,
        alert,
        cilium_file,
        churn,
    })
}

/// payment looks up the name (no connection).
fn lookup(shop: &Shop) -> Result<Vec<IpAddr>> {
    let (_, addrs) = shop
        .stripe_lookup()
        .map_err(|e| fail("look up api.stripe.test", Chain(&e)))?;
    Ok(addrs)
}

/// payment connects to the new address.
fn connect(shop: &Shop, addr: IpAddr) -> Result<()> {
    shop.stripe_call(addr)
        .map(|_| ())
        .map_err(|e| fail("connect to the new address", Chain(&e)))
}

/// Polls `/v1/alerts` until it lists a `dns-drift` alert for `address`; the alert as a line.
fn wait_drift_alert(
    step: &'static str,
    serve: &mut Background,
    http: SocketAddr,
    address: IpAddr,
) -> Result<String> {
    let what = format!("dns-drift alert for {address}");
    super::poll_until(step, serve, DRIFT_TIMEOUT, &what, || {
        let text = super::http_get(http, "/v1/alerts")?;
        let listed = serde_json::from_str::<Vec<Value>>(&text).ok()?;
        let a = listed
            .iter()
            .find(|a| a["type"] == "dns-drift" && a["dst"] == address.to_string().as_str())?;
        Some(format!(
            "{}/{} {} -> {} {}/{}",
            a["namespace"].as_str().unwrap_or_default(),
            a["name"].as_str().unwrap_or_default(),
            shop::STRIPE_HOST,
            address,
            a["port"],
            a["protocol"].as_str().unwrap_or_default()
        ))
    })
}

/// The first event of the flows to `dst` in the agent's record file.
fn first_flow_to(step: &'static str, path: &Path, dst: IpAddr) -> Result<DateTime<Utc>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(step, format!("{}: {}", path.display(), Chain(&e))))?;
    let mut first: Option<DateTime<Utc>> = None;
    for r in read_records(text.as_bytes(), path) {
        let r = r.map_err(|e| fail(step, Chain(&e)))?;
        if let Record::Flow(f) = r.record
            && f.dst.to_canonical() == dst
        {
            first = Some(first.map_or(f.first_seen, |t| t.min(f.first_seen)));
        }
    }
    first.ok_or_else(|| fail(step, format!("{} has no flow to {dst}", path.display())))
}
