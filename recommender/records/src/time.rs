//! The one way leash writes a timestamp for people: RFC 3339 in UTC, whole seconds, `Z`
//! (`2026-11-25T09:00:00Z`), in reports, policy annotations and alert messages alike.

use chrono::{DateTime, SecondsFormat, Utc};

/// `t` as RFC 3339 in UTC with whole seconds and a `Z` suffix, e.g. `2026-11-25T09:00:00Z`.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_in_utc_with_z() {
        let t = DateTime::parse_from_rfc3339("2026-11-25T10:00:05.987+01:00")
            .map(|t| t.with_timezone(&Utc));
        assert_eq!(t.map(rfc3339).as_deref(), Ok("2026-11-25T09:00:05Z"));
    }

    /// The alert message's former `%Y-%m-%dT%H:%M:%SZ` gave the same text.
    #[test]
    fn same_as_the_strftime_form() {
        let t = DateTime::from_timestamp(1_764_061_205, 123_000_000).unwrap_or_default();
        assert_eq!(rfc3339(t), t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    }
}
