//! Published provider ranges (`--ip-ranges FILE...`): the address ranges cloud providers and
//! SaaS vendors publish per (service, region), so that a rule may allow a provider's range
//! instead of the /32s seen last week.
//!
//! Formats, detected from the content:
//! - AWS `ip-ranges.json` ([`aws`]): `prefixes[].ip_prefix`, `ipv6_prefixes[].ipv6_prefix`,
//!   each with `region`, `service` and `network_border_group`; labelled `AWS S3 us-east-1`;
//! - Google Cloud `cloud.json` ([`gcp`]): `prefixes[].ipv4Prefix | ipv6Prefix` with
//!   `service` and `scope`; labelled `Google Cloud us-central1`;
//! - Azure Service Tags JSON ([`azure`]): `values[].properties.addressPrefixes` per service
//!   tag; labelled `Azure AzureStorage.WestEurope`;
//! - a plain YAML (or JSON) map of names to CIDR lists ([`yaml`]) for SaaS ranges; labelled
//!   with the key.
//!
//! Prefixes must be canonical: a prefix with host bits set (`203.0.113.7/24`) is rejected
//! with the range it would be, since it is more likely a typo than a range.
//!
//! Parsing ([`parse`]) is pure and never panics; [`load`] reads files within bounds. The
//! result, [`PublishedRanges`], answers which ranges contain an address with one hash
//! look-up per published prefix length.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use leash_records::bounded::{self, InputError};

pub mod aws;
pub mod azure;
pub mod gcp;
pub mod yaml;

/// The largest range file read, in bytes (Azure's Service Tags file is about 4 MB).
pub const MAX_FILE: u64 = 64 << 20;
/// The longest label (a YAML key, an Azure service tag name) accepted, in bytes.
pub const MAX_LABEL: usize = 200;

/// A range file that cannot be used. Each message names the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read within its bounds.
    #[error(transparent)]
    Read(#[from] InputError),
    /// The content is not JSON or YAML.
    #[error("{file}: {what}")]
    Syntax {
        /// The file.
        file: String,
        /// The parser's message, with the line and column.
        what: String,
    },
    /// The content is valid but of no known format.
    #[error(
        "{file}: not a published range file: expected AWS ip-ranges.json, Google Cloud \
         cloud.json, Azure Service Tags JSON or a map of names to CIDR lists"
    )]
    UnknownFormat {
        /// The file.
        file: String,
    },
    /// An entry does not have the format's shape (a missing field, a wrong type).
    #[error("{file}: {entry}: {why}")]
    Entry {
        /// The file.
        file: String,
        /// Where in the file (`prefixes[3]`).
        entry: String,
        /// What is wrong.
        why: String,
    },
    /// A prefix is not a CIDR of the expected family.
    #[error("{file}: {entry}: {value} is not {expected}")]
    NotCidr {
        /// The file.
        file: String,
        /// Where in the file (`prefixes[3].ip_prefix`).
        entry: String,
        /// The value, quoted and shortened.
        value: String,
        /// `a CIDR`, `an IPv6 CIDR`.
        expected: &'static str,
    },
    /// A prefix has host bits set.
    #[error("{file}: {entry}: {value} has host bits set; the range would be {canonical}")]
    HostBits {
        /// The file.
        file: String,
        /// Where in the file.
        entry: String,
        /// The value, quoted.
        value: String,
        /// The canonical range.
        canonical: IpNet,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who published a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Provider {
    /// AWS `ip-ranges.json`.
    Aws,
    /// Google Cloud `cloud.json`.
    GoogleCloud,
    /// Azure Service Tags.
    Azure,
    /// A YAML map of names to CIDRs.
    Named,
}

impl Provider {
    /// The format's name, for logs.
    pub fn format(self) -> &'static str {
        match self {
            Provider::Aws => "AWS ip-ranges.json",
            Provider::GoogleCloud => "Google Cloud cloud.json",
            Provider::Azure => "Azure Service Tags",
            Provider::Named => "named ranges",
        }
    }
}

/// One published range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublishedRange {
    /// The canonical prefix.
    pub net: IpNet,
    /// What the report calls it: `AWS S3 us-east-1`, `Google Cloud us-central1`,
    /// `Azure AzureStorage.WestEurope`, or the YAML key. Published text: render escapes it.
    pub label: String,
    /// Who published it.
    pub provider: Provider,
    /// The service (`S3`, `Google Cloud`, `AzureStorage`; the key for YAML).
    pub service: String,
    /// The region (`us-east-1`; empty when the provider gives none).
    pub region: String,
    /// A provider's catch-all list that repeats the specific services' ranges (AWS `AMAZON`,
    /// Azure `AzureCloud`): used only where no specific service lists the address.
    pub generic: bool,
}

impl PublishedRange {
    /// How specific the range is, smallest first: a specific service before a catch-all
    /// list, then the narrowest prefix, then a regional entry before a global one (Azure
    /// lists `AzureStorage` and `AzureStorage.WestEurope` with the same prefixes), then the
    /// label.
    fn specificity(&self) -> (bool, Reverse<u8>, bool, &str) {
        (
            self.generic,
            Reverse(self.net.prefix_len()),
            self.region.is_empty(),
            &self.label,
        )
    }
}

/// One file read, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file as named.
    pub file: String,
    /// Its format.
    pub provider: Provider,
    /// How many ranges it gave.
    pub ranges: usize,
}

/// A prefix length and the ranges of that length by network address.
type Level = (u8, HashMap<u128, Vec<u32>>);

/// Published ranges, indexed for look-ups by address. Equal when they hold the same ranges,
/// whatever files they came from.
#[derive(Clone, Default)]
pub struct PublishedRanges {
    /// Sorted by (prefix, label), without duplicates.
    ranges: Vec<PublishedRange>,
    /// The files read, in order.
    sources: Vec<Source>,
    /// Per family (IPv4, IPv6): the prefix lengths present, longest first.
    index: [Vec<Level>; 2],
}

/// A summary: the files and how many ranges (the index would fill a log).
impl std::fmt::Debug for PublishedRanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedRanges")
            .field("ranges", &self.ranges.len())
            .field("sources", &self.sources)
            .finish()
    }
}

impl PartialEq for PublishedRanges {
    fn eq(&self, other: &Self) -> bool {
        self.ranges == other.ranges
    }
}

impl Eq for PublishedRanges {}

/// The network address of `ip` under `len` bits of prefix, as an integer, and its family.
fn key(ip: IpAddr, len: u8) -> (usize, u128) {
    let (family, bits, value) = match ip {
        IpAddr::V4(a) => (0, 32u8, u128::from(u32::from(a))),
        IpAddr::V6(a) => (1, 128u8, u128::from(a)),
    };
    let len = len.min(bits);
    let masked = if len == 0 {
        0
    } else {
        // `bits - len` < bits ≤ 128: the shift is in range.
        let host = u32::from(bits - len);
        (value >> host) << host
    };
    (family, masked)
}

impl PublishedRanges {
    /// Indexes `ranges` (any order, duplicates dropped) read from `sources`.
    pub fn new(mut ranges: Vec<PublishedRange>, sources: Vec<Source>) -> Self {
        for r in &mut ranges {
            r.net = r.net.trunc();
        }
        ranges.sort();
        ranges.dedup();
        let mut levels: [std::collections::BTreeMap<u8, HashMap<u128, Vec<u32>>>; 2] =
            Default::default();
        for (i, r) in ranges.iter().enumerate() {
            let len = r.net.prefix_len();
            let (family, k) = key(r.net.network(), len);
            levels[family]
                .entry(len)
                .or_default()
                .entry(k)
                .or_default()
                .push(u32::try_from(i).unwrap_or(u32::MAX));
        }
        let index = levels.map(|l| l.into_iter().rev().collect());
        Self {
            ranges,
            sources,
            index,
        }
    }

    /// No ranges.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Every range, sorted by (prefix, label).
    pub fn ranges(&self) -> &[PublishedRange] {
        &self.ranges
    }

    /// The files read, in order.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// Every range that contains `ip`, most specific first
    /// ([`PublishedRange::specificity`]: a specific service, the narrowest prefix, a region).
    pub fn containing(&self, ip: IpAddr) -> Vec<&PublishedRange> {
        let ip = ip.to_canonical();
        let family = usize::from(ip.is_ipv6());
        let mut out: Vec<&PublishedRange> = self.index[family]
            .iter()
            .filter_map(|(len, by_net)| by_net.get(&key(ip, *len).1))
            .flatten()
            .filter_map(|&i| self.ranges.get(i as usize))
            .collect();
        out.sort_by(|a, b| a.specificity().cmp(&b.specificity()));
        out
    }

    /// The most specific range that contains `ip` and is no wider than `max_v4` / `max_v6`
    /// (prefix lengths): the range a rule may allow for it.
    pub fn best(&self, ip: IpAddr, max_v4: u8, max_v6: u8) -> Option<&PublishedRange> {
        self.containing(ip).into_iter().find(|r| {
            r.net.prefix_len()
                >= match r.net {
                    IpNet::V4(_) => max_v4,
                    IpNet::V6(_) => max_v6,
                }
        })
    }
}

/// Parses one file's text, its format detected from the content; `file` names it in
/// errors. Pure; never panics.
pub fn parse(file: &str, text: &str) -> Result<(Provider, Vec<PublishedRange>)> {
    let json_err = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(obj)) => return parse_json(file, &obj),
        Ok(_) => {
            return Err(Error::UnknownFormat {
                file: file.to_owned(),
            });
        }
        Err(e) => e,
    };
    match serde_norway::from_str::<serde_norway::Value>(text) {
        Ok(v) => Ok((Provider::Named, yaml::parse(file, &v)?)),
        // Text that starts as JSON gets JSON's error; anything else YAML's.
        Err(e) if !text.trim_start().starts_with('{') => Err(Error::Syntax {
            file: file.to_owned(),
            what: format!("not YAML: {e}"),
        }),
        Err(_) => Err(Error::Syntax {
            file: file.to_owned(),
            what: format!("not JSON: {json_err}"),
        }),
    }
}

/// A JSON object: a provider's file by its fields, else a map of names to CIDR lists.
fn parse_json(
    file: &str,
    obj: &serde_json::Map<String, serde_json::Value>,
) -> Result<(Provider, Vec<PublishedRange>)> {
    let has = |k: &str| obj.contains_key(k);
    let first_prefix_has = |k: &str| {
        obj.get("prefixes")
            .and_then(|p| p.as_array())
            .and_then(|p| p.first())
            .and_then(|p| p.as_object())
            .is_some_and(|p| p.contains_key(k))
    };
    if has("createDate") || has("ipv6_prefixes") || first_prefix_has("ip_prefix") {
        Ok((Provider::Aws, aws::parse(file, obj)?))
    } else if has("creationTime")
        || first_prefix_has("ipv4Prefix")
        || first_prefix_has("ipv6Prefix")
    {
        Ok((Provider::GoogleCloud, gcp::parse(file, obj)?))
    } else if has("values") {
        Ok((Provider::Azure, azure::parse(file, obj)?))
    } else if has("syncToken") || has("prefixes") {
        Err(Error::UnknownFormat {
            file: file.to_owned(),
        })
    } else {
        let value = serde_norway::to_value(obj).map_err(|e| Error::Syntax {
            file: file.to_owned(),
            what: e.to_string(),
        })?;
        Ok((Provider::Named, yaml::parse(file, &value)?))
    }
}

/// Reads and parses every file (within [`MAX_FILE`]); the first that cannot be used is the
/// error. The edge that does I/O.
pub fn load(files: &[PathBuf]) -> Result<PublishedRanges> {
    let mut ranges = Vec::new();
    let mut sources = Vec::new();
    for path in files {
        let (provider, mut got) = load_one(path)?;
        sources.push(Source {
            file: path.display().to_string(),
            provider,
            ranges: got.len(),
        });
        ranges.append(&mut got);
    }
    Ok(PublishedRanges::new(ranges, sources))
}

/// One file, read within bounds and parsed.
fn load_one(path: &Path) -> Result<(Provider, Vec<PublishedRange>)> {
    let limits = bounded::Limits {
        max_line: usize::try_from(MAX_FILE).unwrap_or(usize::MAX),
        max_file: MAX_FILE,
    };
    let text = bounded::read_to_string(path, true, limits)?;
    parse(&path.display().to_string(), &text)
}

/// A value for an error message: quoted, control characters escaped, at most 64 characters.
pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 64;
    let cut: String = value.chars().take(MAX).collect();
    let more = if cut.len() < value.len() { "…" } else { "" };
    format!("{:?}{more}", cut)
}

/// A label (a YAML key, a service tag name) checked for length and emptiness.
pub(crate) fn label(file: &str, entry: &str, value: &str) -> Result<String> {
    if value.trim().is_empty() {
        return Err(Error::Entry {
            file: file.to_owned(),
            entry: entry.to_owned(),
            why: "empty name".to_owned(),
        });
    }
    if value.len() > MAX_LABEL {
        return Err(Error::Entry {
            file: file.to_owned(),
            entry: entry.to_owned(),
            why: format!("name longer than {MAX_LABEL} bytes"),
        });
    }
    Ok(value.to_owned())
}

/// Which family a prefix field holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Either.
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

/// A published prefix: a canonical CIDR of `family`.
pub(crate) fn cidr(file: &str, entry: &str, value: &str, family: Family) -> Result<IpNet> {
    let not = |expected| Error::NotCidr {
        file: file.to_owned(),
        entry: entry.to_owned(),
        value: shown(value),
        expected,
    };
    let net: IpNet = value.trim().parse().map_err(|_| {
        not(match family {
            Family::Any => "a CIDR",
            Family::V4 => "an IPv4 CIDR",
            Family::V6 => "an IPv6 CIDR",
        })
    })?;
    match (family, net) {
        (Family::V4, IpNet::V6(_)) => return Err(not("an IPv4 CIDR")),
        (Family::V6, IpNet::V4(_)) => return Err(not("an IPv6 CIDR")),
        _ => {}
    }
    if net.trunc() != net {
        return Err(Error::HostBits {
            file: file.to_owned(),
            entry: entry.to_owned(),
            value: shown(value),
            canonical: net.trunc(),
        });
    }
    Ok(net)
}

/// `obj[field]` as an array, or the error naming it.
pub(crate) fn array<'a>(
    file: &str,
    obj: &'a serde_json::Map<String, serde_json::Value>,
    field: &str,
    required: bool,
) -> Result<&'a [serde_json::Value]> {
    match obj.get(field) {
        Some(serde_json::Value::Array(a)) => Ok(a),
        None if !required => Ok(&[]),
        None => Err(Error::Entry {
            file: file.to_owned(),
            entry: field.to_owned(),
            why: "missing".to_owned(),
        }),
        Some(_) => Err(Error::Entry {
            file: file.to_owned(),
            entry: field.to_owned(),
            why: "expected a list".to_owned(),
        }),
    }
}

/// One entry deserialized into its provider's shape, or the error naming it.
pub(crate) fn entry<T: serde::de::DeserializeOwned>(
    file: &str,
    entry: &str,
    value: &serde_json::Value,
) -> Result<T> {
    T::deserialize(value).map_err(|e| Error::Entry {
        file: file.to_owned(),
        entry: entry.to_owned(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
