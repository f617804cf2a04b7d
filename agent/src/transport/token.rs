//! The agent's ServiceAccount token (`--token-file`), sent as `authorization: Bearer` on
//! every stream so that the recommender can bind its batches to this node.
//!
//! The kubelet writes a projected token (audience `leash`) into the pod and replaces it
//! before it expires (atomically, by swapping a symlinked directory). The file is read again
//! for every new stream and every [`super::TransportConfig::token_check`] while a stream is
//! open: a stream whose token changed is ended and a new one opened with the new token, so
//! the recommender never sees an expired one from a live agent. The token is a secret: never
//! logged, and marked sensitive for HTTP/2's header compression.

use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};

/// The longest token accepted (a ServiceAccount token is about 1 KiB).
const MAX_TOKEN_BYTES: usize = 16 << 10;

/// Why the token file cannot be used. The message names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("cannot read the token file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file holds no token: empty, larger than 16 KiB, or not printable ASCII.
    #[error(
        "the token file {} holds no token (empty, over 16 KiB, or not printable ASCII)",
        path.display()
    )]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

/// The `authorization` metadata value of a token file's content: `Bearer TOKEN` (the token
/// with surrounding whitespace dropped), marked sensitive; `None` when it holds no token.
pub fn bearer(content: &[u8]) -> Option<MetadataValue<Ascii>> {
    let token = std::str::from_utf8(content).ok()?.trim();
    if token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Reads `path` now: the `authorization` value of its current content.
pub fn read(path: &Path) -> Result<MetadataValue<Ascii>, Error> {
    let content = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    bearer(&content).ok_or_else(|| Error::Invalid {
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_becomes_a_sensitive_bearer_value() {
        let value = bearer(b"  eyJhbGc.abc.def\n").expect("a token");
        assert_eq!(value.to_str().ok(), Some("Bearer eyJhbGc.abc.def"));
        assert!(value.is_sensitive());
        for bad in [
            &b""[..],
            b" \n",
            b"a b",
            b"\xff\xfe",
            &[b'x'; MAX_TOKEN_BYTES + 1],
        ] {
            assert!(bearer(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_the_file_and_never_the_token() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let e = read(&path).expect_err("missing");
        assert!(e.to_string().contains("token"), "{e}");
        std::fs::write(&path, "secret part\n").expect("write");
        let e = read(&path).expect_err("a space");
        assert!(e.to_string().contains(&path.display().to_string()));
        assert!(!e.to_string().contains("secret"), "{e}");
        std::fs::write(&path, "s3cr3t\n").expect("write");
        assert_eq!(
            read(&path).expect("read").to_str().ok(),
            Some("Bearer s3cr3t")
        );
    }
}
