//! Observations: what agents saw, attributed to the pods and workloads of the cluster model.
//!
//! This module owns every conversion between records, batches, stored rows and the engine's
//! [`Observations`]:
//!
//! - [`attribute`]: record files → [`Observations`], each record attributed to its pod;
//! - [`batch`]: one agent batch → per-workload store rows ([`from_batch`], what ingest
//!   commits);
//! - [`stored`]: store rows → [`Observations`] ([`from_stored`], [`load`]), so that
//!   `recommend` and `audit` run unchanged on a store;
//! - [`names`]: the DNS names of an answer, normalized.
//!
//! The store only persists rows; it knows nothing of this module.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use leash_records::Protocol;

use crate::cluster::PodId;

pub mod attribute;
pub mod batch;
pub mod names;
pub mod stored;

pub use crate::evidence::{AddressSeen, Evidence, PodNames};
pub use attribute::{Error, Result, Unlocated, parse_flow_fast, parse_record, resolve_pod};
pub use batch::{from_batch, from_groups, workload_ref};
pub use names::{answer_addresses, answer_names, normalize_name};
pub use stored::{SkipReason, Skipped, from_stored, load};

/// One observed connection key, from one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The source pod.
    pub pod: PodId,
    /// The destination address as the pod dialed it (pre-DNAT).
    pub dst: IpAddr,
    /// The destination port as dialed.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// Everything observed, attributed to pods.
///
/// The observations keep flows per *pod* (the self-check evaluates each observed connection
/// from the pod that made it) and everything the classifier needs about DNS: which resolver
/// addresses pods used, and which names each address answered for.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Flows per (pod, destination, port, protocol).
    pub flows: HashMap<FlowKey, Evidence>,
    /// The pods that made a flow, for flows read from a store: there a workload's evidence
    /// is attached to one of its pods, which stands in for all of them. Flows read from
    /// records have no entry; the key's pod made them.
    pub pods: HashMap<FlowKey, PodNames>,
    /// DNS queries per (pod, resolver address): the count is of queries, the names those
    /// queried.
    pub dns: BTreeMap<(PodId, IpAddr), Evidence>,
    /// Every resolver address seen in DNS records, from pods or not.
    pub resolvers: BTreeSet<IpAddr>,
    /// Names that resolved to each address (A/AAAA answers, with the query name and CNAME
    /// owners of the chain).
    pub names_by_ip: HashMap<IpAddr, BTreeSet<String>>,
    /// Every name's address history per (pod that asked, query name): each address the
    /// query resolved to ([`answer_addresses`]). For observations read from a store the pod
    /// stands in for its workload, as in [`Observations::flows`]. Names are normalized.
    pub history: BTreeMap<(PodId, String), History>,
    /// Flow records not attributed to any pod (host processes): counted, not enforceable.
    pub unattributed_flows: u64,
    /// Records read.
    pub records: u64,
}

impl Observations {
    /// Folds another set of observations (of the same cluster) into this one.
    pub fn merge(&mut self, other: Observations) {
        for (k, e) in other.flows {
            merge_into(&mut self.flows, k, e, Evidence::merge);
        }
        for (k, p) in other.pods {
            merge_into(&mut self.pods, k, p, PodNames::merge);
        }
        for (k, u) in other.dns {
            match self.dns.get_mut(&k) {
                Some(mine) => mine.merge(&u),
                None => {
                    self.dns.insert(k, u);
                }
            }
        }
        self.resolvers.extend(other.resolvers);
        for (ip, names) in other.names_by_ip {
            self.names_by_ip.entry(ip).or_default().extend(names);
        }
        for (k, h) in other.history {
            let mine = self.history.entry(k).or_default();
            for (ip, seen) in h {
                merge_seen(mine, ip, &seen);
            }
        }
        self.unattributed_flows = self
            .unattributed_flows
            .saturating_add(other.unattributed_flows);
        self.records = self.records.saturating_add(other.records);
    }
}

/// The addresses one query name resolved to, with when and how ([`AddressSeen`]).
pub type History = BTreeMap<IpAddr, AddressSeen>;

/// Folds one sighting of `ip` into a name's history.
pub fn merge_seen(history: &mut History, ip: IpAddr, seen: &AddressSeen) {
    match history.get_mut(&ip) {
        Some(have) => have.merge(seen),
        None => {
            history.insert(ip, seen.clone());
        }
    }
}

/// Inserts `v` under `k`, or merges it into the value there.
fn merge_into<V>(map: &mut HashMap<FlowKey, V>, k: FlowKey, v: V, merge: fn(&mut V, &V)) {
    match map.get_mut(&k) {
        Some(mine) => merge(mine, &v),
        None => {
            map.insert(k, v);
        }
    }
}
