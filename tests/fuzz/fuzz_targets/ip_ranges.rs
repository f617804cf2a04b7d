//! The provider ip-ranges formats (`--ip-ranges`): `leash::ranges::parse` detects AWS
//! `ip-ranges.json`, Google Cloud `cloud.json`, Azure Service Tags or a YAML map of names to
//! CIDRs from the content, then `PublishedRanges` indexes them. Errors name the file; every
//! range parsed contains its own network address and is found by a look-up of it.
#![no_main]

use leash::ranges::{PublishedRanges, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ranges = match parse("fuzz-ranges.json", text) {
        Ok((_, ranges)) => ranges,
        Err(e) => {
            assert!(e.to_string().contains("fuzz-ranges.json"), "{e}");
            return;
        }
    };
    let index = PublishedRanges::new(ranges.clone(), Vec::new());
    for range in &ranges {
        let ip = range.net.network();
        let found = index.containing(ip);
        assert!(
            found.iter().any(|r| r.net == range.net),
            "{} not found for {ip}",
            range.net
        );
        let _ = index.best(ip, 24, 48);
    }
});
