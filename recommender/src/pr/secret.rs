//! The git provider's token: read from a file or the environment, never logged, echoed in an
//! error or written anywhere. Every text that may hold it (a command's stderr, a provider's
//! answer) passes through [`Secret::redact`] before anyone sees it.

use std::path::Path;

/// The environment variable the token is read from without `--token-file`.
pub const TOKEN_ENV: &str = "LEASH_GIT_TOKEN";

/// What replaces the token in any text shown.
pub const REDACTED: &str = "[redacted]";

/// The largest token file read, in bytes: tokens are at most a few hundred bytes.
const MAX_TOKEN_BYTES: u64 = 64 << 10;

/// Errors reading a token. None of them carries the token's text.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The token file cannot be read (missing, not a regular file, larger than any token,
    /// not UTF-8); the error names the file, never its content.
    #[error("cannot read the token file")]
    Read(#[source] leash_records::bounded::InputError),
    /// The token is empty, or holds characters no token has (whitespace inside, control
    /// characters, non-ASCII), which would break the HTTP header it goes into.
    #[error("{what}: the token is empty or holds characters other than printable ASCII")]
    Malformed {
        /// The file or the environment variable.
        what: String,
    },
}

/// A token. `Debug` and `Display` never show it; [`Secret::expose`] is the one way to read
/// it, at the point where it goes into a request or a command's environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(")?;
        f.write_str(REDACTED)?;
        f.write_str(")")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Secret {
    /// A token from its text; surrounding whitespace (a file's final newline) is dropped.
    fn parse(text: &str, what: impl FnOnce() -> String) -> Result<Self, Error> {
        let token = text.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::Malformed { what: what() });
        }
        Ok(Secret(token.to_owned()))
    }

    /// Reads the token from `path` (its surrounding whitespace dropped).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let limits = leash_records::bounded::Limits {
            max_line: MAX_TOKEN_BYTES as usize,
            max_file: MAX_TOKEN_BYTES,
        };
        let text =
            leash_records::bounded::read_to_string(path, true, limits).map_err(Error::Read)?;
        Self::parse(&text, || path.display().to_string())
    }

    /// The token in the environment variable `var`, if it is set.
    pub fn from_env(var: &str) -> Option<Result<Self, Error>> {
        let value = std::env::var_os(var)?;
        Some(match value.to_str() {
            Some(text) => Self::parse(text, || format!("${var}")),
            None => Err(Error::Malformed {
                what: format!("${var}"),
            }),
        })
    }

    /// `--token-file` if given, else [`TOKEN_ENV`] if set, else none.
    pub fn from_file_or_env(path: Option<&Path>) -> Result<Option<Self>, Error> {
        match path {
            Some(p) => Self::from_file(p).map(Some),
            None => Self::from_env(TOKEN_ENV).transpose(),
        }
    }

    /// The token's text, to put into a request header or a child's environment. Nothing
    /// else may call it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `text` with every occurrence of the token, as is and in the encodings it travels in
    /// (percent-encoded in a URL, base64 in a Basic authorization header), replaced by
    /// [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for form in self.forms() {
            if !form.is_empty() && out.contains(&form) {
                out = out.replace(&form, REDACTED);
            }
        }
        out
    }

    /// The token as it may appear in text.
    fn forms(&self) -> Vec<String> {
        let percent: String =
            form_urlencoded::byte_serialize(self.0.as_bytes()).collect::<String>();
        let mut forms = vec![self.0.clone(), percent];
        for user in BASIC_USERS {
            forms.push(base64(format!("{user}:{}", self.0).as_bytes()));
        }
        forms
    }
}

/// The user names a token is sent with in a Basic authorization header (GitHub accepts any;
/// these are the ones leash uses, see `git`).
pub const BASIC_USERS: &[&str] = &["x-access-token", "oauth2"];

/// Standard base64 with padding, as in a Basic authorization header.
pub fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded, "{plain}");
        }
    }

    #[test]
    fn the_token_is_never_shown() {
        let s = Secret::parse("ghp_abc+/=\n", || "t".into()).expect("token");
        assert_eq!(s.expose(), "ghp_abc+/=");
        assert_eq!(format!("{s} {s:?}"), "[redacted] Secret([redacted])");
        let basic = base64(b"x-access-token:ghp_abc+/=");
        let text = format!("fatal: https://u:ghp_abc%2B%2F%3D@h/ and ghp_abc+/= and Basic {basic}");
        let red = s.redact(&text);
        assert!(!red.contains("ghp_abc"), "{red}");
        assert!(!red.contains(&basic), "{red}");
        assert_eq!(red.matches(REDACTED).count(), 3, "{red}");
    }

    #[test]
    fn malformed_tokens_are_refused_without_echo() {
        for bad in ["", "  \n", "a b", "tok\u{e9}n", "a\x01"] {
            let e = Secret::parse(bad, || "$LEASH_GIT_TOKEN".into()).expect_err(bad);
            assert_eq!(
                e.to_string(),
                "$LEASH_GIT_TOKEN: the token is empty or holds characters other than printable ASCII"
            );
        }
    }
}
