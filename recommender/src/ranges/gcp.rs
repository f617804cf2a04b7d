//! Google Cloud `cloud.json`: `prefixes[]`, each with `ipv4Prefix` or `ipv6Prefix`, `service`
//! (`Google Cloud`) and `scope` (the region, `us-central1`). The label is
//! `<service> <scope>`: `Google Cloud us-central1`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Error, Family, Provider, PublishedRange, Result, array, cidr, entry};

/// An entry as Google publishes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prefix {
    ipv4_prefix: Option<String>,
    ipv6_prefix: Option<String>,
    service: String,
    scope: String,
}

/// The ranges of a Google Cloud `cloud.json` object.
pub(super) fn parse(file: &str, obj: &Map<String, Value>) -> Result<Vec<PublishedRange>> {
    let mut out = Vec::new();
    for (i, v) in array(file, obj, "prefixes", true)?.iter().enumerate() {
        let at = format!("prefixes[{i}]");
        let e: Prefix = entry(file, &at, v)?;
        let net = match (&e.ipv4_prefix, &e.ipv6_prefix) {
            (Some(p), None) => cidr(file, &format!("{at}.ipv4Prefix"), p, Family::V4)?,
            (None, Some(p)) => cidr(file, &format!("{at}.ipv6Prefix"), p, Family::V6)?,
            _ => {
                return Err(Error::Entry {
                    file: file.to_owned(),
                    entry: at,
                    why: "expected exactly one of ipv4Prefix and ipv6Prefix".to_owned(),
                });
            }
        };
        out.push(PublishedRange {
            net,
            label: format!("{} {}", e.service, e.scope),
            provider: Provider::GoogleCloud,
            service: e.service,
            region: e.scope,
            generic: false,
        });
    }
    Ok(out)
}
