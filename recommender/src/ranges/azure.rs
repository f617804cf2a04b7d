//! Azure Service Tags JSON: `values[]`, one per service tag (`AzureStorage`,
//! `AzureStorage.WestEurope`), each with `properties.addressPrefixes` (both families) and
//! `properties.region` / `properties.systemService`. The label is `Azure <tag name>`.
//!
//! `AzureCloud` and its regional tags list every Azure address again: they are marked
//! generic, so a specific service's tag is chosen where one lists the address; between a
//! service's global and regional tag (same prefixes), the regional one.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Family, Provider, PublishedRange, Result, array, cidr, entry, label};

/// A service tag as Azure publishes it.
#[derive(Deserialize)]
struct Tag {
    name: String,
    #[expect(dead_code, reason = "part of the published shape, required, not used")]
    id: String,
    properties: Properties,
}

/// A tag's properties (`changeNumber`, `platform`, `regionId`, `networkFeatures` are not
/// used).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Properties {
    region: String,
    system_service: String,
    address_prefixes: Vec<String>,
}

/// The ranges of an Azure Service Tags object.
pub(super) fn parse(file: &str, obj: &Map<String, Value>) -> Result<Vec<PublishedRange>> {
    let mut out = Vec::new();
    for (i, v) in array(file, obj, "values", true)?.iter().enumerate() {
        let at = format!("values[{i}]");
        let tag: Tag = entry(file, &at, v)?;
        let name = label(file, &format!("{at}.name"), &tag.name)?;
        let generic = name == "AzureCloud" || name.starts_with("AzureCloud.");
        for (j, p) in tag.properties.address_prefixes.iter().enumerate() {
            let net = cidr(
                file,
                &format!("{at}.properties.addressPrefixes[{j}]"),
                p,
                Family::Any,
            )?;
            out.push(PublishedRange {
                net,
                label: format!("Azure {name}"),
                provider: Provider::Azure,
                service: tag.properties.system_service.clone(),
                region: tag.properties.region.clone(),
                generic,
            });
        }
    }
    Ok(out)
}
