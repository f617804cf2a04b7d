//! AWS `ip-ranges.json`: `prefixes[]` (`ip_prefix`) and `ipv6_prefixes[]` (`ipv6_prefix`),
//! each with `region`, `service` and `network_border_group`.
//!
//! AWS lists every address under `AMAZON` and again under its specific service (`S3`,
//! `EC2`, …): `AMAZON` ranges are marked generic, so a specific service's range is chosen
//! where one exists. The label is `AWS <service> <region>`.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Family, Provider, PublishedRange, Result, array, cidr, entry};

/// An IPv4 entry as AWS publishes it.
#[derive(Deserialize)]
struct V4 {
    ip_prefix: String,
    region: String,
    service: String,
    #[expect(dead_code, reason = "part of the published shape, required, not used")]
    network_border_group: String,
}

/// An IPv6 entry as AWS publishes it.
#[derive(Deserialize)]
struct V6 {
    ipv6_prefix: String,
    region: String,
    service: String,
    #[expect(dead_code, reason = "part of the published shape, required, not used")]
    network_border_group: String,
}

/// The ranges of an AWS `ip-ranges.json` object.
pub(super) fn parse(file: &str, obj: &Map<String, Value>) -> Result<Vec<PublishedRange>> {
    let mut out = Vec::new();
    for (i, v) in array(file, obj, "prefixes", true)?.iter().enumerate() {
        let at = format!("prefixes[{i}]");
        let e: V4 = entry(file, &at, v)?;
        let net = cidr(file, &format!("{at}.ip_prefix"), &e.ip_prefix, Family::V4)?;
        out.push(range(net, e.service, e.region));
    }
    for (i, v) in array(file, obj, "ipv6_prefixes", false)?.iter().enumerate() {
        let at = format!("ipv6_prefixes[{i}]");
        let e: V6 = entry(file, &at, v)?;
        let net = cidr(
            file,
            &format!("{at}.ipv6_prefix"),
            &e.ipv6_prefix,
            Family::V6,
        )?;
        out.push(range(net, e.service, e.region));
    }
    Ok(out)
}

fn range(net: ipnet::IpNet, service: String, region: String) -> PublishedRange {
    PublishedRange {
        net,
        label: format!("AWS {service} {region}"),
        provider: Provider::Aws,
        generic: service == "AMAZON",
        service,
        region,
    }
}
