//! The parsers on files in the providers' formats (documentation prefixes only), malformed
//! files with their error text, the look-up, and the parsers on arbitrary input.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_str!(concat!("../../tests/fixtures/ranges/", $name)),
        )
    };
}

fn parsed((file, text): (&str, &str)) -> (Provider, Vec<PublishedRange>) {
    match parse(file, text) {
        Ok(p) => p,
        Err(e) => panic!("{file}: {e}"),
    }
}

fn error((file, text): (&str, &str)) -> String {
    match parse(file, text) {
        Ok(p) => panic!("{file} parsed: {p:?}"),
        Err(e) => e.to_string(),
    }
}

fn labels(r: &[PublishedRange]) -> Vec<String> {
    r.iter().map(|r| format!("{} {}", r.net, r.label)).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn all() -> PublishedRanges {
    let mut ranges = Vec::new();
    for f in [
        fixture!("aws-ip-ranges.json"),
        fixture!("gcp-cloud.json"),
        fixture!("azure-service-tags.json"),
        fixture!("saas.yaml"),
    ] {
        ranges.extend(parsed(f).1);
    }
    PublishedRanges::new(ranges, Vec::new())
}

#[test]
fn aws_ip_ranges() {
    let (provider, r) = parsed(fixture!("aws-ip-ranges.json"));
    assert_eq!(provider, Provider::Aws);
    assert_eq!(
        labels(&r),
        [
            "198.51.100.0/24 AWS AMAZON us-east-1",
            "198.51.100.0/24 AWS S3 us-east-1",
            "203.0.113.0/25 AWS AMAZON eu-west-1",
            "203.0.113.0/25 AWS EC2 eu-west-1",
            "203.0.113.128/26 AWS CLOUDFRONT GLOBAL",
            "2001:db8:1000::/40 AWS AMAZON us-east-1",
            "2001:db8:1000::/40 AWS S3 us-east-1",
            "2001:db8:2000::/36 AWS EC2 eu-west-1",
        ]
    );
    assert!(r[0].generic && !r[1].generic, "AMAZON is the catch-all");
    assert_eq!(
        (r[1].service.as_str(), r[1].region.as_str()),
        ("S3", "us-east-1")
    );
}

#[test]
fn google_cloud_json() {
    let (provider, r) = parsed(fixture!("gcp-cloud.json"));
    assert_eq!(provider, Provider::GoogleCloud);
    assert_eq!(
        labels(&r),
        [
            "203.0.113.0/24 Google Cloud us-central1",
            "2001:db8:3000::/44 Google Cloud us-central1",
            "198.51.100.128/25 Google Cloud europe-west1",
        ]
    );
}

#[test]
fn azure_service_tags() {
    let (provider, r) = parsed(fixture!("azure-service-tags.json"));
    assert_eq!(provider, Provider::Azure);
    assert_eq!(r.len(), 9);
    assert!(labels(&r).contains(&"203.0.113.64/26 Azure AzureStorage.WestEurope".to_owned()));
    assert!(
        r.iter()
            .filter(|r| r.label.starts_with("Azure AzureCloud"))
            .all(|r| r.generic)
    );
    let storage = r
        .iter()
        .find(|r| r.label == "Azure AzureStorage.WestEurope")
        .expect("regional tag");
    assert_eq!(
        (
            storage.service.as_str(),
            storage.region.as_str(),
            storage.generic
        ),
        ("AzureStorage", "westeurope", false)
    );
}

#[test]
fn yaml_names() {
    let (provider, r) = parsed(fixture!("saas.yaml"));
    assert_eq!(provider, Provider::Named);
    assert_eq!(
        labels(&r),
        [
            "203.0.113.0/26 payments",
            "2001:db8:5000::/48 payments",
            "198.51.100.64/27 mail relay",
        ]
    );
    // The same map in JSON (and YAML's flow style) is the same format.
    let json = parsed(("s.json", r#"{"payments": ["203.0.113.0/26"]}"#)).1;
    let flow = parsed(("s.yaml", "{payments: [203.0.113.0/26]}")).1;
    assert_eq!(json, flow);
    assert_eq!(labels(&json), ["203.0.113.0/26 payments"]);
}

#[test]
fn malformed_files_name_the_file_and_entry() {
    for (f, want) in [
        (
            fixture!("aws-bad-cidr.json"),
            r#"aws-bad-cidr.json: prefixes[3].ip_prefix: "198.51.100.0/33" is not an IPv4 CIDR"#,
        ),
        (
            fixture!("aws-missing-region.json"),
            "aws-missing-region.json: ipv6_prefixes[1]: missing field `region`",
        ),
        (
            fixture!("gcp-two-prefixes.json"),
            "gcp-two-prefixes.json: prefixes[1]: expected exactly one of ipv4Prefix and ipv6Prefix",
        ),
        (
            fixture!("azure-host-bits.json"),
            r#"azure-host-bits.json: values[2].properties.addressPrefixes[0]: "203.0.113.77/26" has host bits set; the range would be 203.0.113.64/26"#,
        ),
        (
            fixture!("saas-not-a-list.yaml"),
            r#"saas-not-a-list.yaml: "payments": expected a list of CIDRs"#,
        ),
        (
            fixture!("unknown.json"),
            "unknown.json: not a published range file: expected AWS ip-ranges.json, Google \
             Cloud cloud.json, Azure Service Tags JSON or a map of names to CIDR lists",
        ),
        (("e.yaml", ""), "e.yaml: (top): empty file"),
        (
            ("list.yaml", "- 203.0.113.0/24\n"),
            "list.yaml: (top): expected a map of names to lists of CIDRs",
        ),
        (
            (
                "v6.json",
                r#"{"createDate": "x", "prefixes": [{"ip_prefix": "2001:db8::/32", "region": "r", "service": "S3", "network_border_group": "r"}]}"#,
            ),
            r#"v6.json: prefixes[0].ip_prefix: "2001:db8::/32" is not an IPv4 CIDR"#,
        ),
        (
            ("n.yaml", "payments: [203.0.113.0/24, 7]\n"),
            r#"n.yaml: "payments"[1]: expected a CIDR string"#,
        ),
    ] {
        assert_eq!(error(f), want);
    }
    let truncated = error(fixture!("aws-truncated.json"));
    assert!(
        truncated.starts_with("aws-truncated.json: not JSON: EOF while parsing"),
        "{truncated}"
    );
    assert!(truncated.contains("line 13 column 21"), "{truncated}");
}

#[test]
fn long_values_are_shortened_in_errors() {
    let text = format!("payments: [\"{}/24\"]\n", "9".repeat(10_000));
    let e = error(("p.yaml", &text));
    assert!(e.len() < 200, "{e}");
    assert!(e.contains("\"… is not a CIDR"), "{e}");
}

/// The most specific range: a specific service before the catch-all, the narrowest prefix,
/// a regional tag before the global one; none wider than the maximum.
#[test]
fn the_most_specific_range_contains_the_address() {
    let r = all();
    let best = |a: &str, v4: u8, v6: u8| r.best(ip(a), v4, v6).map(|r| r.label.clone());
    // AWS AMAZON and S3 list the same /24; Azure's AzureCloud too (generic); Google and the
    // mail relay list narrower ranges inside it.
    assert_eq!(
        best("198.51.100.1", 16, 40).as_deref(),
        Some("AWS S3 us-east-1")
    );
    assert_eq!(best("198.51.100.70", 16, 40).as_deref(), Some("mail relay"));
    assert_eq!(
        best("198.51.100.200", 16, 40).as_deref(),
        Some("Google Cloud europe-west1")
    );
    assert_eq!(
        best("198.51.100.200", 25, 40).as_deref(),
        Some("Google Cloud europe-west1")
    );
    assert_eq!(
        best("198.51.100.1", 25, 40),
        None,
        "every range is wider than /25"
    );
    assert_eq!(
        best("203.0.113.65", 16, 40).as_deref(),
        Some("Azure AzureStorage.WestEurope")
    );
    assert_eq!(best("203.0.113.1", 16, 40).as_deref(), Some("payments"));
    assert_eq!(
        best("203.0.113.129", 16, 40).as_deref(),
        Some("AWS CLOUDFRONT GLOBAL")
    );
    assert_eq!(
        best("2001:db8:1000::1", 16, 40).as_deref(),
        Some("AWS S3 us-east-1")
    );
    assert_eq!(
        best("2001:db8:2000::1", 16, 40),
        None,
        "EC2's /36 is wider than /40"
    );
    assert_eq!(
        best("2001:db8:2000::1", 16, 36).as_deref(),
        Some("AWS EC2 eu-west-1")
    );
    assert_eq!(
        best("::ffff:198.51.100.1", 16, 40).as_deref(),
        Some("AWS S3 us-east-1")
    );
    assert_eq!(best("192.0.0.1", 0, 0), None);
    let containing: Vec<String> = r
        .containing(ip("203.0.113.65"))
        .iter()
        .map(|r| format!("{} {}", r.net, r.label))
        .collect();
    assert_eq!(
        containing,
        [
            "203.0.113.64/26 Azure AzureStorage.WestEurope",
            "203.0.113.64/26 Azure AzureStorage",
            "203.0.113.0/25 AWS EC2 eu-west-1",
            "203.0.113.0/24 Google Cloud us-central1",
            "203.0.113.0/25 AWS AMAZON eu-west-1",
            "203.0.113.0/24 Azure AzureCloud.westeurope",
            "203.0.113.0/24 Azure AzureCloud",
        ]
    );
}

/// The look-up agrees with a scan of every range.
#[test]
fn lookup_matches_a_scan() {
    let r = all();
    for a in [
        "198.51.100.0",
        "198.51.100.63",
        "198.51.100.64",
        "198.51.100.127",
        "198.51.100.128",
        "198.51.100.255",
        "203.0.113.0",
        "203.0.113.63",
        "203.0.113.64",
        "203.0.113.191",
        "203.0.113.192",
        "2001:db8:1000::",
        "2001:db8:10ff:ffff::1",
        "2001:db8:3000::5",
        "2001:db8:4000::1",
        "2001:db8:5000:1::1",
        "2001:db8:ffff::1",
    ] {
        let a = ip(a);
        let mut got: Vec<&PublishedRange> = r.containing(a);
        got.sort();
        let want: Vec<&PublishedRange> = r.ranges().iter().filter(|x| x.net.contains(&a)).collect();
        assert_eq!(got, want, "{a}");
    }
}

#[test]
fn equal_ranges_from_other_files_are_equal() {
    let a = all();
    let mut reversed: Vec<PublishedRange> = a.ranges().to_vec();
    reversed.reverse();
    reversed.extend(a.ranges().iter().take(3).cloned());
    let b = PublishedRanges::new(reversed, vec![]);
    assert_eq!(a, b);
    assert_ne!(a, PublishedRanges::default());
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        prop_oneof![
            "[a-z_]{0,12}",
            "(198\\.51\\.100|203\\.0\\.113)\\.[0-9]{1,3}/[0-9]{1,2}",
            "2001:db8:[0-9a-f]{0,4}::/[0-9]{1,3}",
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let keys = prop_oneof![
            Just("prefixes".to_owned()),
            Just("ipv6_prefixes".to_owned()),
            Just("createDate".to_owned()),
            Just("creationTime".to_owned()),
            Just("values".to_owned()),
            Just("ip_prefix".to_owned()),
            Just("ipv6_prefix".to_owned()),
            Just("ipv4Prefix".to_owned()),
            Just("ipv6Prefix".to_owned()),
            Just("service".to_owned()),
            Just("region".to_owned()),
            Just("scope".to_owned()),
            Just("network_border_group".to_owned()),
            Just("name".to_owned()),
            Just("id".to_owned()),
            Just("properties".to_owned()),
            Just("systemService".to_owned()),
            Just("addressPrefixes".to_owned()),
            "[a-z]{1,6}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Any bytes: an answer or an error, never a panic.
    #[test]
    fn parse_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse("f", &text);
    }

    /// Any JSON made of the formats' fields: an answer or an error; every range canonical.
    #[test]
    fn parse_never_panics_on_json(v in json_value()) {
        let text = v.to_string();
        if let Ok((_, ranges)) = parse("f.json", &text) {
            for r in &ranges {
                prop_assert_eq!(r.net, r.net.trunc());
            }
            let _ = PublishedRanges::new(ranges, vec![]);
        }
    }

    /// The look-up agrees with a scan, on random ranges and addresses.
    #[test]
    fn lookup_is_a_scan(
        nets in prop::collection::vec((any::<u32>(), 0u8..=32), 0..40),
        addrs in prop::collection::vec(any::<u32>(), 1..40),
    ) {
        let ranges: Vec<PublishedRange> = nets
            .iter()
            .map(|&(a, len)| PublishedRange {
                net: IpNet::V4(ipnet::Ipv4Net::new(a.into(), len).expect("length").trunc()),
                label: format!("r{len}"),
                provider: Provider::Named,
                service: String::new(),
                region: String::new(),
                generic: false,
            })
            .collect();
        let r = PublishedRanges::new(ranges, vec![]);
        for a in addrs {
            let a = IpAddr::V4(a.into());
            let mut got = r.containing(a);
            got.sort();
            let want: Vec<&PublishedRange> = r.ranges().iter().filter(|x| x.net.contains(&a)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
