//! A plain map of names to CIDR lists, for SaaS ranges a vendor publishes as a list
//! (`{payments: [203.0.113.0/24, 2001:db8:10::/48]}`), in YAML or JSON. The label is the key.

use super::{Error, Family, Provider, PublishedRange, Result, cidr, label, shown};

/// The ranges of a YAML value that must be a map of names to lists of CIDRs.
pub(super) fn parse(file: &str, value: &serde_norway::Value) -> Result<Vec<PublishedRange>> {
    let err = |entry: String, why: &str| Error::Entry {
        file: file.to_owned(),
        entry,
        why: why.to_owned(),
    };
    let map = match value {
        serde_norway::Value::Mapping(m) => m,
        serde_norway::Value::Null => return Err(err("(top)".to_owned(), "empty file")),
        _ => {
            return Err(err(
                "(top)".to_owned(),
                "expected a map of names to lists of CIDRs",
            ));
        }
    };
    let mut out = Vec::new();
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            return Err(err(
                format!("key {}", shown(&format!("{k:?}"))),
                "a name must be a string",
            ));
        };
        let at = shown(key);
        let name = label(file, &at, key)?;
        let Some(list) = v.as_sequence() else {
            return Err(err(at, "expected a list of CIDRs"));
        };
        for (i, item) in list.iter().enumerate() {
            let entry = format!("{at}[{i}]");
            let Some(s) = item.as_str() else {
                return Err(err(entry, "expected a CIDR string"));
            };
            let net = cidr(file, &entry, s, Family::Any)?;
            out.push(PublishedRange {
                net,
                label: name.clone(),
                provider: Provider::Named,
                service: name.clone(),
                region: String::new(),
                generic: false,
            });
        }
    }
    Ok(out)
}
