//! The one duration grammar of leash: command-line flags of both binaries (`--since 7d`,
//! `--retention 30d`, `--flush-interval 1s`) and HTTP query parameters (`?since=7d`).
//!
//! The grammar is `humantime`'s (`90s`, `15m`, `24h`, `7d`, `2w`, `1y`, `1h30m`, `1h 30m`); a
//! number needs a unit. Every duration is range-checked here, once: at most [`MAX`] (1,000 years),
//! so that a window subtracted from the current time, or an interval added to it, cannot
//! overflow anywhere downstream.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::Chain;

/// A year as the grammar counts it (`1y` = 365.25 days).
const YEAR_SECS: u64 = 31_557_600;

/// The longest duration accepted: 1,000 years. Longer windows mean nothing to a store of
/// observations (its times are limited to the years 1677–2262) and would overflow time
/// arithmetic further on (`300000years` before now is not a representable date).
pub const MAX: Duration = Duration::from_secs(1_000 * YEAR_SECS);

/// Why a duration was refused. Each names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not in the grammar (no unit, unknown unit, not a number).
    #[error("invalid duration {input:?}: {reason} (expected e.g. 90s, 15m, 24h, 7d)")]
    Invalid {
        /// The text given.
        input: String,
        /// What the parser did not accept.
        reason: String,
    },
    /// Longer than [`MAX`].
    #[error("duration {input:?} is longer than the maximum of 1000 years")]
    TooLong {
        /// The text given.
        input: String,
    },
    /// Zero where only a positive duration makes sense (an interval, a timeout).
    #[error("duration {input:?} must be greater than zero")]
    Zero {
        /// The text given.
        input: String,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a duration of zero up to [`MAX`].
pub fn parse(s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s.trim()).map_err(|e| Error::Invalid {
        input: s.to_owned(),
        reason: Chain(&e).to_string(),
    })?;
    if d > MAX {
        return Err(Error::TooLong {
            input: s.to_owned(),
        });
    }
    Ok(d)
}

/// Parses a duration greater than zero, up to [`MAX`]: intervals and timeouts.
pub fn parse_positive(s: &str) -> Result<Duration> {
    let d = parse(s)?;
    if d.is_zero() {
        return Err(Error::Zero {
            input: s.to_owned(),
        });
    }
    Ok(d)
}

/// Parses a duration (as [`parse`]) as a `chrono` duration, for time-window arithmetic.
pub fn parse_chrono(s: &str) -> Result<chrono::Duration> {
    let d = parse(s)?;
    // Within MAX, the conversion cannot fail; refusing is still better than panicking.
    chrono::Duration::from_std(d).map_err(|_| Error::TooLong {
        input: s.to_owned(),
    })
}

/// `now - window`: the earliest time a `since` window keeps. `None` when it is before the
/// earliest representable time (the window then covers everything).
pub fn window_start(now: DateTime<Utc>, window: Duration) -> Option<DateTime<Utc>> {
    let window = chrono::Duration::from_std(window).ok()?;
    now.checked_sub_signed(window)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        for (text, secs) in [
            ("90s", 90),
            ("15m", 900),
            ("24h", 86_400),
            ("7d", 604_800),
            ("30d", 2_592_000),
            ("1h 30m", 5_400),
            ("1h30m", 5_400),
            ("0s", 0),
            ("100000d", 8_640_000_000),
            ("1000y", 1_000 * YEAR_SECS),
        ] {
            assert_eq!(parse(text), Ok(Duration::from_secs(secs)), "{text}");
        }
    }

    #[test]
    fn refuses_out_of_range_and_malformed_input() {
        for text in ["300000years", "1001y", "18446744073709551615s"] {
            assert!(
                matches!(
                    parse(text),
                    Err(Error::TooLong { .. }) | Err(Error::Invalid { .. })
                ),
                "{text}: {:?}",
                parse(text)
            );
        }
        assert_eq!(
            parse("300000years"),
            Err(Error::TooLong {
                input: "300000years".into()
            })
        );
        for text in ["", "24", "d", "7x", "-1s", "1.5.h"] {
            assert!(matches!(parse(text), Err(Error::Invalid { .. })), "{text}");
        }
        assert_eq!(
            parse_positive("0s"),
            Err(Error::Zero { input: "0s".into() })
        );
        assert!(
            parse_chrono("300000years")
                .err()
                .is_some_and(|e| e.to_string().contains("1000 years"))
        );
    }

    proptest::proptest! {
        /// Any text: an answer, never a panic; what is accepted is within range, and its
        /// window start is representable.
        #[test]
        fn never_panics_and_stays_in_range(s in "\\PC{0,40}") {
            if let Ok(d) = parse(&s) {
                proptest::prop_assert!(d <= MAX);
                proptest::prop_assert!(window_start(Utc::now(), d).is_some());
                proptest::prop_assert!(parse_chrono(&s).is_ok());
            }
            let _ = parse_positive(&s);
        }

        /// Numbers with a unit, including ones far past the range: accepted exactly when
        /// within MAX.
        #[test]
        fn range_check_is_exact(n in 0u64..u64::MAX, unit in proptest::sample::select(
            vec![("s", 1u64), ("m", 60), ("h", 3_600), ("d", 86_400), ("y", YEAR_SECS)]))
        {
            let text = format!("{n}{}", unit.0);
            let secs = n.checked_mul(unit.1);
            match parse(&text) {
                Ok(d) => proptest::prop_assert_eq!(Some(d.as_secs()), secs),
                Err(Error::TooLong { .. }) => {
                    proptest::prop_assert!(secs.is_none_or(|s| s > MAX.as_secs()));
                }
                // humantime refuses numbers whose seconds overflow u64.
                Err(Error::Invalid { .. }) => proptest::prop_assert!(secs.is_none()),
                Err(e) => proptest::prop_assert!(false, "{e}"),
            }
        }
    }
}
