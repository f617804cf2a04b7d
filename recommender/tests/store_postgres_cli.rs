//! The built `leash` binary with a PostgreSQL store on a real server: `leash store migrate`
//! moves a SQLite store into it and back without loss, and `recommend`, `audit`, `rollout
//! status` and `diff` read the same data from either, given by `--store`, `--store-file` or
//! `LEASH_STORE`. The password never appears in output.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leash::cluster::Cluster;
use leash::observations;
use leash::store::migrate::export;
use leash::store::{AlertRecord, BatchId, Location, SqliteStore, Store, WorkloadRef};
use leash_records::{DnsRecord, FlowRecord, Protocol, Record};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend/kubeadm")
        .join(name)
}

fn leash(args: &[&str], env: Option<&str>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_leash"));
    c.args(args).env_remove(leash::store::location::ENV);
    if let Some(v) = env {
        c.env(leash::store::location::ENV, v);
    }
    c.output().expect("runs the leash binary")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The fixture's records in three batches, and two remembered alerts, in a new SQLite store.
fn fill_sqlite(db: &Path) {
    let cluster = Cluster::load(&fixture("cluster.yaml")).expect("fixture cluster");
    let path = fixture("flows.jsonl");
    let file = std::fs::File::open(&path).expect("fixture flows");
    let records: Vec<Record> = leash_records::read_records(BufReader::new(file), &path)
        .map(|l| l.expect("valid fixture record").record)
        .collect();
    let store = SqliteStore::open(db).expect("store opens");
    for (seq, chunk) in records.chunks(records.len().div_ceil(3)).enumerate() {
        let flows: Vec<FlowRecord> = chunk
            .iter()
            .filter_map(|r| match r {
                Record::Flow(f) => Some(f.clone()),
                Record::Dns(_) => None,
            })
            .collect();
        let dns: Vec<DnsRecord> = chunk
            .iter()
            .filter_map(|r| match r {
                Record::Dns(d) => Some(d.clone()),
                Record::Flow(_) => None,
            })
            .collect();
        let (f, d) = observations::from_batch(&cluster, &flows, &dns);
        let id = BatchId {
            node: "n1".into(),
            boot_id: "boot".into(),
            seq: seq as u64,
        };
        store.commit(&id, &f, &d).expect("commit");
    }
    let now = chrono::Utc::now();
    let alert = |ns: &str, dst: &str| AlertRecord {
        workload: WorkloadRef {
            namespace: ns.into(),
            kind: "Deployment".into(),
            name: "api".into(),
        },
        dst: dst.parse().expect("address"),
        port: 443,
        protocol: Protocol::Tcp,
        first_sent: now,
        last_sent: now,
        last_seen: now,
        occurrences: 2,
        detail: "{}".into(),
    };
    store
        .remember_alerts(&[alert("shop", "203.0.113.7"), alert("bank", "203.0.113.8")])
        .expect("alerts");
}

fn open(location: &str) -> Box<dyn Store> {
    location
        .parse::<Location>()
        .expect("a location")
        .open_existing()
        .expect("opens")
}

#[test]
fn migrate_into_postgres_and_back_and_every_reader_sees_the_same() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    let url = pg.create_database("moved");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("leash.db");
    fill_sqlite(&db);
    let url_file = dir.path().join("store-url");
    std::fs::write(&url_file, format!("{url}\n")).expect("url file");
    let sqlite = format!("sqlite:{}", path_str(&db));

    let moved = leash(
        &[
            "store",
            "migrate",
            "--from",
            &sqlite,
            "--to-file",
            path_str(&url_file),
        ],
        None,
    );
    assert_eq!(moved.status.code(), Some(0), "{}", text(&moved));
    let out = text(&moved);
    assert!(!out.contains(support::postgres::PASSWORD), "{out}");
    assert!(out.contains("postgres://leash:***@127.0.0.1"), "{out}");
    let source = export(&*open(&sqlite)).expect("export");
    assert!(
        source.flows.len() > 3 && !source.dns.is_empty(),
        "a real fixture"
    );
    assert!(source.dns.iter().any(|d| !d.addresses.is_empty()));
    assert_eq!(source.batches.len(), 3);
    assert_eq!(source.alerts.len(), 2);
    let counts = leash::store::migrate::Counts::of(&source);
    assert!(out.contains(&counts.to_string()), "{out}");
    let target = export(&*open(&url)).expect("export");
    assert_eq!(target.batches, source.batches);
    assert_eq!(target.flows, source.flows);
    assert_eq!(target.dns, source.dns);
    assert_eq!(target.alerts, source.alerts);

    // A non-empty target is refused (exit 2), unless told.
    let again = leash(&["store", "migrate", "--from", &sqlite, "--to", &url], None);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));
    assert!(text(&again).contains("not empty"), "{}", text(&again));
    assert!(!text(&again).contains(support::postgres::PASSWORD));
    // Told to merge, observations add up as commits do; batch ids stay one each.
    let merged_db = pg.create_database("merged");
    for extra in [&[][..], &["--into-non-empty"][..]] {
        let o = leash(
            &[
                &["store", "migrate", "--from", &sqlite, "--to", &merged_db][..],
                extra,
            ]
            .concat(),
            None,
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let merged = export(&*open(&merged_db)).expect("export");
    assert_eq!(merged.batches, source.batches);
    assert_eq!(merged.flows.len(), source.flows.len());
    for (m, s) in merged.flows.iter().zip(&source.flows) {
        assert_eq!(m.count, s.count * 2);
    }

    // And back, into a new SQLite file.
    let back = dir.path().join("back.db");
    let returned = leash(
        &[
            "store",
            "migrate",
            "--from-file",
            path_str(&url_file),
            "--to",
            path_str(&back),
        ],
        None,
    );
    assert_eq!(returned.status.code(), Some(0), "{}", text(&returned));
    let round = export(&*open(path_str(&back))).expect("export");
    assert_eq!(round.flows, source.flows);
    assert_eq!(round.dns, source.dns);
    assert_eq!(round.batches, source.batches);
    assert_eq!(round.alerts, source.alerts);

    // Every reader: the same output from SQLite and from PostgreSQL, by --store,
    // --store-file and LEASH_STORE.
    let cluster = fixture("cluster.yaml");
    let c = path_str(&cluster);
    let file = path_str(&url_file);
    let commands: [&[&str]; 3] = [
        &["recommend", "--cluster", c],
        &["audit", "--cluster", c],
        &["rollout", "status", "--cluster", c],
    ];
    for cmd in commands {
        let from_sqlite = leash(&[cmd, &["--store", path_str(&db)]].concat(), None);
        assert!(
            matches!(from_sqlite.status.code(), Some(0 | 3)),
            "{cmd:?}: {}",
            text(&from_sqlite)
        );
        let by_file = leash(&[cmd, &["--store-file", file]].concat(), None);
        let by_url = leash(&[cmd, &["--store", &url]].concat(), None);
        let by_env = leash(cmd, Some(&url));
        for o in [&by_file, &by_url, &by_env] {
            assert_eq!(
                o.status.code(),
                from_sqlite.status.code(),
                "{cmd:?}: {}",
                text(o)
            );
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&from_sqlite.stdout),
                "{cmd:?}"
            );
            assert!(!text(o).contains(support::postgres::PASSWORD));
        }
    }
    let diff_args = ["diff", "--cluster", c, "--from", "applied", "--to", c];
    let diff_sqlite = leash(
        &[&diff_args[..], &["--store", path_str(&db)]].concat(),
        None,
    );
    let diff_pg = leash(&[&diff_args[..], &["--store-file", file]].concat(), None);
    assert_eq!(
        diff_pg.status.code(),
        diff_sqlite.status.code(),
        "{}",
        text(&diff_pg)
    );
    assert_eq!(diff_pg.stdout, diff_sqlite.stdout);

    // Neither --flows nor a store: a usage error naming the ways to give one.
    let neither = leash(&["recommend", "--cluster", c], None);
    assert_eq!(neither.status.code(), Some(2), "{}", text(&neither));
    assert!(text(&neither).contains("LEASH_STORE"), "{}", text(&neither));
}

#[test]
fn a_wrong_password_is_a_clear_error_without_the_password() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    pg.create_database("pw");
    let wrong = pg.url_with_password("pw", "Wr0ng-Pa55word");
    let cluster = fixture("cluster.yaml");
    let o = leash(
        &["recommend", "--cluster", path_str(&cluster)],
        Some(&wrong),
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = text(&o);
    assert!(!err.contains("Wr0ng-Pa55word"), "{err}");
    assert!(
        err.contains("password authentication failed") && err.contains("leash:***@"),
        "{err}"
    );
}
