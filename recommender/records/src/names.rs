//! Which names leash accepts: DNS names seen in answers, and Kubernetes object names and label
//! keys. One implementation, used by the agent before a name enters a record, by the recommender
//! before a record reaches its store, and by every reader of snapshots and policies.
//!
//! DNS names are chosen by whoever answers a query, and they end up in reports, pull requests,
//! HTML pages, chat messages and Kubernetes Events; so leash keeps only names made of letters,
//! digits, `-`, `_` and `.`, within DNS's length limits, and refuses the rest.
//!
//! The errors never carry the offending value: the caller names the field or object, and a
//! hostile value must not reach a log line unescaped.

use std::fmt;

/// The longest DNS name, in bytes, without the root's trailing dot (RFC 1035: 255 octets on
/// the wire, which is 253 characters in text).
pub const MAX_DNS_NAME: usize = 253;
/// The longest DNS label (RFC 1035).
pub const MAX_DNS_LABEL: usize = 63;
/// The longest Kubernetes object name that is a DNS-1123 subdomain (pods, workloads).
pub const MAX_SUBDOMAIN: usize = 253;
/// The longest Kubernetes name that is a DNS-1123 label (namespaces).
pub const MAX_LABEL: usize = 63;
/// The longest pod uid accepted. Kubernetes uids are 36-character UUIDs; leash allows some
/// room for other formats, but not unbounded text.
pub const MAX_UID: usize = 128;

/// Why a name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty (a DNS answer owned by the root `.` is one).
    #[error("empty")]
    Empty,
    /// The name is longer than its limit.
    #[error("{len} bytes, more than {max}")]
    TooLong {
        /// The name's length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A label (a part between dots) is empty, as in `a..b` or a leading dot.
    #[error("empty label")]
    EmptyLabel,
    /// A label is longer than 63 bytes.
    #[error("a label of {len} bytes, more than {max}", max = MAX_DNS_LABEL)]
    LabelTooLong {
        /// The label's length in bytes.
        len: usize,
    },
    /// A byte outside the allowed set; its offset in the name.
    #[error("character not allowed at byte {offset}")]
    InvalidChar {
        /// The offset of the first bad byte.
        offset: usize,
    },
    /// A Kubernetes name or label does not start and end with a letter or digit.
    #[error("must start and end with a letter or digit")]
    BadEdge,
}

impl NameError {
    /// A short stable word for metrics labels: `empty`, `too_long`, `empty_label`,
    /// `label_too_long`, `invalid_char` or `bad_edge`.
    pub fn reason(&self) -> &'static str {
        match self {
            NameError::Empty => "empty",
            NameError::TooLong { .. } => "too_long",
            NameError::EmptyLabel => "empty_label",
            NameError::LabelTooLong { .. } => "label_too_long",
            NameError::InvalidChar { .. } => "invalid_char",
            NameError::BadEdge => "bad_edge",
        }
    }
}

/// `Result` with this module's [`NameError`].
pub type Result<T = (), E = NameError> = std::result::Result<T, E>;

/// Checks a DNS name as leash stores it (no trailing dot): 1 to 253 bytes, labels of 1 to 63
/// bytes, only ASCII letters (either case), digits, `-`, `_` and `.`.
pub fn dns_name(name: &str) -> Result {
    check_len(name, MAX_DNS_NAME)?;
    if let Some(offset) = name
        .bytes()
        .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
    {
        return Err(NameError::InvalidChar { offset });
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_DNS_LABEL {
            return Err(NameError::LabelTooLong { len: label.len() });
        }
    }
    Ok(())
}

/// Checks a DNS-1123 label (a namespace name): 1 to 63 bytes of lowercase letters, digits and
/// `-`, starting and ending with a letter or digit.
pub fn dns1123_label(name: &str) -> Result {
    check_len(name, MAX_LABEL)?;
    dns1123_part(name, 0)
}

/// Checks a DNS-1123 subdomain (a pod or workload name) as Kubernetes does: at most 253 bytes
/// of dot-separated parts of lowercase letters, digits and `-`, each starting and ending with a
/// letter or digit. Unlike a DNS name, a part may be longer than 63 bytes (Kubernetes does not
/// limit them, and long Deployment names give such pod names).
pub fn dns1123_subdomain(name: &str) -> Result {
    check_len(name, MAX_SUBDOMAIN)?;
    let mut offset = 0;
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        dns1123_part(label, offset)?;
        offset += label.len() + 1;
    }
    Ok(())
}

/// Checks a pod uid: 1 to 128 bytes of ASCII letters, digits and `-`.
pub fn uid(uid: &str) -> Result {
    check_len(uid, MAX_UID)?;
    match uid
        .bytes()
        .position(|c| !(c.is_ascii_alphanumeric() || c == b'-'))
    {
        Some(offset) => Err(NameError::InvalidChar { offset }),
        None => Ok(()),
    }
}

/// Checks the name part of a label key, or a label value when non-empty: at most 63 bytes of
/// letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit.
pub fn label_name(name: &str) -> Result {
    check_len(name, MAX_LABEL)?;
    if let Some(offset) = name
        .bytes()
        .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
    {
        return Err(NameError::InvalidChar { offset });
    }
    edges(name)
}

/// Checks a label key: `[prefix/]name`, where the prefix is a DNS-1123 subdomain.
pub fn label_key(key: &str) -> Result {
    match key.split_once('/') {
        Some((prefix, name)) => {
            dns1123_subdomain(prefix)?;
            label_name(name)
        }
        None => label_name(key),
    }
}

/// Checks a label value: empty, or a [`label_name`].
pub fn label_value(value: &str) -> Result {
    if value.is_empty() {
        Ok(())
    } else {
        label_name(value)
    }
}

/// How many hex digits of the SHA-256 [`shorten`] appends.
pub const SHORTEN_HASH_HEX: usize = 16;

/// `name` when it is at most `max` bytes; otherwise a prefix of it, `-`, and the first 16 hex
/// digits of the whole name's SHA-256, `max` bytes at most. Deterministic, so a generated name
/// or file name stays the same across runs, and two long names that differ only after the
/// prefix still differ. The prefix loses trailing `-` and `.`, so a DNS-1123 name stays one.
/// `max` must leave room for the hash (at least 17 bytes).
pub fn shorten(name: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if name.len() <= max {
        return std::borrow::Cow::Borrowed(name);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let mut out = String::with_capacity(max);
    let keep = name.floor_char_boundary(max.saturating_sub(SHORTEN_HASH_HEX + 1));
    out.push_str(name[..keep].trim_end_matches(['-', '.']));
    if !out.is_empty() {
        out.push('-');
    }
    for b in &digest.as_ref()[..SHORTEN_HASH_HEX / 2] {
        out.push_str(&format!("{b:02x}"));
    }
    std::borrow::Cow::Owned(out)
}

/// A name shown to people, for error messages about names that were refused: at most 64
/// characters, with anything but the characters of a valid DNS name escaped. Outputs that
/// must show a stored name escape it for their own format as well.
pub fn display_prefix(name: &str) -> DisplayPrefix<'_> {
    DisplayPrefix(name)
}

/// See [`display_prefix`].
#[derive(Debug, Clone, Copy)]
pub struct DisplayPrefix<'a>(&'a str);

impl fmt::Display for DisplayPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        f.write_str("\"")?;
        for c in self.0.chars().take(SHOWN) {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                write!(f, "{c}")?;
            } else {
                write!(f, "{}", c.escape_unicode())?;
            }
        }
        f.write_str("\"")?;
        if self.0.chars().nth(SHOWN).is_some() {
            write!(f, "… ({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

fn check_len(name: &str, max: usize) -> Result {
    if name.is_empty() {
        Err(NameError::Empty)
    } else if name.len() > max {
        Err(NameError::TooLong {
            len: name.len(),
            max,
        })
    } else {
        Ok(())
    }
}

/// One DNS-1123 label; `offset` is where it starts in the whole name, for the error.
fn dns1123_part(label: &str, offset: usize) -> Result {
    if let Some(i) = label
        .bytes()
        .position(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'))
    {
        return Err(NameError::InvalidChar { offset: offset + i });
    }
    edges(label)
}

fn edges(name: &str) -> Result {
    let b = name.as_bytes();
    match (b.first(), b.last()) {
        (Some(first), Some(last))
            if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() =>
        {
            Ok(())
        }
        _ => Err(NameError::BadEdge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dns_names() {
        for ok in [
            "api.stripe.test",
            "a",
            "_sip._tcp.example.test",
            "UPPER.Case.test",
            "x-1.y_2",
        ] {
            assert_eq!(dns_name(ok), Ok(()), "{ok}");
        }
        assert_eq!(dns_name(""), Err(NameError::Empty));
        assert_eq!(dns_name("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(dns_name(".a"), Err(NameError::EmptyLabel));
        assert_eq!(dns_name("a."), Err(NameError::EmptyLabel));
        assert_eq!(
            dns_name("a b"),
            Err(NameError::InvalidChar { offset: 1 }),
            "space"
        );
        assert_eq!(
            dns_name("<script>"),
            Err(NameError::InvalidChar { offset: 0 })
        );
        assert_eq!(
            dns_name("é.test"),
            Err(NameError::InvalidChar { offset: 0 })
        );
        let label63 = "a".repeat(63);
        assert_eq!(dns_name(&label63), Ok(()));
        assert_eq!(
            dns_name(&"a".repeat(64)),
            Err(NameError::LabelTooLong { len: 64 })
        );
        // 4 labels of 63 plus 3 dots = 255 bytes: too long; 253 is the most.
        let long = [label63.as_str(); 4].join(".");
        assert_eq!(
            dns_name(&long),
            Err(NameError::TooLong { len: 255, max: 253 })
        );
        assert_eq!(dns_name(&long[..253]), Ok(()));
    }

    #[test]
    fn kubernetes_names() {
        assert_eq!(dns1123_label("kube-system"), Ok(()));
        assert_eq!(
            dns1123_label("../../escape-ns"),
            Err(NameError::InvalidChar { offset: 0 })
        );
        assert_eq!(
            dns1123_label("a.b"),
            Err(NameError::InvalidChar { offset: 1 })
        );
        assert_eq!(dns1123_label("-a"), Err(NameError::BadEdge));
        assert_eq!(
            dns1123_label("A"),
            Err(NameError::InvalidChar { offset: 0 })
        );
        assert_eq!(
            dns1123_label(&"a".repeat(64)),
            Err(NameError::TooLong { len: 64, max: 63 })
        );
        assert_eq!(dns1123_subdomain("web-7d4b9.x"), Ok(()));
        assert_eq!(
            dns1123_subdomain("/etc/passwd"),
            Err(NameError::InvalidChar { offset: 0 })
        );
        assert_eq!(dns1123_subdomain("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(dns1123_subdomain("ok.-bad"), Err(NameError::BadEdge));
        assert_eq!(
            dns1123_subdomain("ok.B"),
            Err(NameError::InvalidChar { offset: 3 })
        );
        let name = ["a".repeat(63).as_str(); 4].join(".");
        assert_eq!(dns1123_subdomain(&name[..253]), Ok(()));
        // Kubernetes limits a subdomain's length, not its parts'.
        assert_eq!(dns1123_subdomain(&"a".repeat(200)), Ok(()));
        assert_eq!(uid("0f5a3c1e-8d2b-4c7e-9a1f-2b3c4d5e6f70"), Ok(()));
        assert_eq!(uid("a/b"), Err(NameError::InvalidChar { offset: 1 }));
        assert_eq!(label_key("app.kubernetes.io/name"), Ok(()));
        assert_eq!(label_key("app"), Ok(()));
        assert_eq!(
            label_key("Bad Key"),
            Err(NameError::InvalidChar { offset: 3 })
        );
        assert_eq!(
            label_key("UPPER.io/x"),
            Err(NameError::InvalidChar { offset: 0 })
        );
        assert_eq!(label_value(""), Ok(()));
        assert_eq!(label_value("v1.2_x"), Ok(()));
        assert_eq!(label_value("-x"), Err(NameError::BadEdge));
    }

    #[test]
    fn display_prefix_escapes_and_cuts() {
        assert_eq!(display_prefix("ok.test").to_string(), "\"ok.test\"");
        assert_eq!(
            display_prefix("a<b>\n").to_string(),
            "\"a\\u{3c}b\\u{3e}\\u{a}\""
        );
        let long = "x".repeat(100);
        assert_eq!(
            display_prefix(&long).to_string(),
            format!("\"{}\"… (100 bytes)", "x".repeat(64))
        );
    }

    #[test]
    fn shorten_keeps_short_names_and_hashes_long_ones() {
        assert_eq!(shorten("web", 10), "web");
        let a = "a".repeat(300);
        let b = format!("{}b", "a".repeat(299));
        let sa = shorten(&a, 253);
        assert_eq!(sa.len(), 253);
        assert_eq!(sa, shorten(&a, 253), "deterministic");
        assert_ne!(
            sa,
            shorten(&b, 253),
            "a difference past the prefix still shows"
        );
        assert!(sa.starts_with(&"a".repeat(236)), "{sa}");
        // A prefix ending in '-' or '.' loses them, so the result stays a DNS-1123 subdomain.
        // Parts of 58 bytes put a dot at byte 235, where the prefix is cut.
        let dotted = ["a".repeat(58).as_str(); 6].join(".");
        let short = shorten(&dotted, 253);
        assert!(!short.contains(".-"), "{short}");
        assert_eq!(dns1123_subdomain(&short), Ok(()));
    }

    proptest! {
        /// Any accepted DNS name is within the limits and made of the allowed bytes, so it is
        /// safe to show in markdown, HTML and Events without a further check; and no input
        /// panics.
        #[test]
        fn accepted_dns_names_are_safe(s in "\\PC{0,300}|[a-zA-Z0-9._-]{0,300}") {
            if dns_name(&s).is_ok() {
                prop_assert!(!s.is_empty() && s.len() <= MAX_DNS_NAME);
                prop_assert!(s.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)));
                prop_assert!(s.split('.').all(|l| (1..=MAX_DNS_LABEL).contains(&l.len())));
            }
            let _ = (dns1123_label(&s), dns1123_subdomain(&s), uid(&s), label_key(&s));
            let _ = display_prefix(&s).to_string();
        }

        /// Every namespace name is a subdomain and a DNS name; a long subdomain shortened with
        /// [`shorten`] stays one.
        #[test]
        fn kubernetes_names_nest(s in "[a-z0-9.-]{0,300}") {
            if dns1123_label(&s).is_ok() {
                prop_assert_eq!(dns1123_subdomain(&s), Ok(()));
                prop_assert_eq!(dns_name(&s), Ok(()));
            }
            let parts_ok = s.split('.').all(|p| dns1123_part(p, 0).is_ok() && !p.is_empty());
            if s.len() > MAX_SUBDOMAIN && parts_ok {
                prop_assert_eq!(dns1123_subdomain(&shorten(&s, MAX_SUBDOMAIN)), Ok(()));
            }
        }
    }
}
