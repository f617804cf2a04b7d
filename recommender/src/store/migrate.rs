//! `leash store migrate`: one store's contents into another (SQLite to PostgreSQL, or
//! back), checked by counts.
//!
//! Everything a store holds is moved: batch ids with their commit times (so that agents'
//! retries stay exactly once, and retention prunes them on time), flow and DNS observations
//! with their names, pods and address history, remembered alerts. The target must be empty
//! unless `into_non_empty` (then observations merge as commits merge them, and the counts
//! are not compared). The source is read whole into memory, in one pass.

use super::{Error as StoreError, Export, Store};

/// What a store holds, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Flow observations.
    pub flows: usize,
    /// DNS observations.
    pub dns: usize,
    /// Addresses of the DNS observations' history.
    pub addresses: usize,
    /// Batch ids.
    pub batches: usize,
    /// Remembered alerts.
    pub alerts: usize,
}

impl Counts {
    /// The counts of `data`.
    pub fn of(data: &Export) -> Self {
        Counts {
            flows: data.flows.len(),
            dns: data.dns.len(),
            addresses: data.dns.iter().map(|d| d.addresses.len()).sum(),
            batches: data.batches.len(),
            alerts: data.alerts.len(),
        }
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} flows, {} DNS observations, {} addresses, {} batch ids, {} alerts",
            self.flows, self.dns, self.addresses, self.batches, self.alerts
        )
    }
}

/// Errors of a migration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the source failed.
    #[error("cannot read the source store")]
    Read(#[source] StoreError),
    /// Reading or writing the target failed.
    #[error("cannot write the target store")]
    Write(#[source] StoreError),
    /// The target already holds data, and merging was not asked for.
    #[error("the target store is not empty ({0}); pass --into-non-empty to merge into it")]
    NotEmpty(Counts),
    /// The target does not hold what was moved.
    #[error("the target store holds {target} after the migration, the source {source_counts}")]
    Mismatch {
        /// The source's counts.
        source_counts: Counts,
        /// The target's counts.
        target: Counts,
    },
}

/// Everything `store` holds.
pub fn export(store: &dyn Store) -> Result<Export, StoreError> {
    Ok(Export {
        batches: store.batch_ids()?,
        flows: store.flows(None)?,
        dns: store.dns(None)?,
        alerts: store.alerts(None)?,
    })
}

/// Moves `from`'s contents into `to`; returns the counts moved.
pub fn migrate(from: &dyn Store, to: &dyn Store, into_non_empty: bool) -> Result<Counts, Error> {
    let before = Counts::of(&export(to).map_err(Error::Write)?);
    if !before.is_empty() && !into_non_empty {
        return Err(Error::NotEmpty(before));
    }
    let data = export(from).map_err(Error::Read)?;
    let moved = Counts::of(&data);
    to.import(&data).map_err(Error::Write)?;
    if before.is_empty() {
        let after = Counts::of(&export(to).map_err(Error::Write)?);
        if after != moved {
            return Err(Error::Mismatch {
                source_counts: moved,
                target: after,
            });
        }
    }
    Ok(moved)
}
