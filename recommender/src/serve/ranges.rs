//! `leash serve --ip-ranges`: the published range files, read again when they change. A
//! provider's new list becomes new ranges for the pull-request loop, which it triggers
//! ([`super::propose`]): the pull request that updates the ranges. A file that cannot be
//! used any more is logged, naming the file and entry, and the ranges read last are kept.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use leash_records::error::Chain;
use tokio::sync::watch;

use crate::ranges::{self, PublishedRanges};

/// The current published ranges.
pub type RangesRx = watch::Receiver<Arc<PublishedRanges>>;

/// What to watch.
#[derive(Debug, Clone)]
pub struct Options {
    /// The files (`--ip-ranges`).
    pub files: Vec<PathBuf>,
    /// How often their modification time and size are looked at (`--ip-ranges-poll`).
    pub poll: Duration,
}

/// What tells that a file changed: its modification time and size, or why it has none.
type Stamp = Option<(SystemTime, u64)>;

fn stamps(files: &[PathBuf]) -> Vec<Stamp> {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Polls the files every `opts.poll`; when one changed, reads them all again. New ranges
/// that differ from the current ones are sent on `tx`; a file that cannot be used is
/// logged once per change and the current ranges stay. Runs until `tx` has no receiver.
pub async fn watch(opts: Options, tx: watch::Sender<Arc<PublishedRanges>>) {
    // No stamps yet: the first poll reads the files once more, so that a change between
    // the read at start and this task is not missed (the same ranges send nothing).
    let mut last: Vec<Stamp> = Vec::new();
    let mut ticker = tokio::time::interval(opts.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the files were just read at start.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        let now = stamps(&opts.files);
        if now == last {
            continue;
        }
        last = now;
        let files = opts.files.clone();
        match tokio::task::spawn_blocking(move || ranges::load(&files)).await {
            Ok(Ok(new)) => {
                if **tx.borrow() == new {
                    continue;
                }
                tracing::info!(
                    ranges = new.ranges().len(),
                    files = %files_text(&new),
                    "published ranges changed"
                );
                tx.send_replace(Arc::new(new));
            }
            Ok(Err(e)) => tracing::warn!(
                error = %Chain(&e),
                "cannot use the published ranges' new version; the previous ranges stay"
            ),
            Err(e) => tracing::warn!(error = %Chain(&e), "reading the published ranges failed"),
        }
    }
}

/// `aws.json (AWS ip-ranges.json, 12 ranges), saas.yaml (named ranges, 3 ranges)`.
pub fn files_text(r: &PublishedRanges) -> String {
    r.sources()
        .iter()
        .map(|s| format!("{} ({}, {} ranges)", s.file, s.provider.format(), s.ranges))
        .collect::<Vec<_>>()
        .join(", ")
}
