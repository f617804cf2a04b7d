//! The one grammar of `--store` for every command: where a store is, and opening it.
//!
//! - `PATH` or `sqlite:PATH`: a SQLite file ([`super::SqliteStore`]);
//! - `postgres://…` or `postgresql://…`: a PostgreSQL database ([`super::PostgresStore`]),
//!   in libpq's URL form (`sslmode` included).
//!
//! A PostgreSQL URL may hold a password: [`Location`]'s `Display` and `Debug` never show it
//! (`postgres://user:***@host/db`), and neither does any error of this module. Commands take
//! the value from `--store`, from the file `--store-file` names (one line; the trailing
//! newline trimmed) or from the environment variable [`ENV`], so that a password needs not
//! appear in arguments.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::{PostgresStore, SqliteStore, Store};

/// The environment variable that is the default of `--store`.
pub const ENV: &str = "LEASH_STORE";

/// The largest `--store-file` read: a URL, not a document.
const MAX_FILE: u64 = 64 * 1024;

/// Where a store is.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database, by URL (may hold a password: never shown).
    Postgres(PostgresUrl),
}

/// A PostgreSQL URL (`postgres://` or `postgresql://`). Shown only redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl(String);

impl PostgresUrl {
    /// The URL as given, password included: for the driver only, never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without its password: in the user information (`user:***@`) and in a
    /// `password=` query parameter.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl std::fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgresUrl({:?})", self.redacted())
    }
}

/// Errors of the store grammar and of reading `--store-file`. None shows a password.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The value is empty.
    #[error("empty store location (want PATH, sqlite:PATH or postgres://…)")]
    Empty,
    /// `--store-file` could not be read.
    #[error("store file {}: cannot read", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `--store-file` is larger than a URL can be.
    #[error("store file {}: larger than {MAX_FILE} bytes", path.display())]
    FileTooLarge {
        /// The file.
        path: PathBuf,
    },
    /// `--store-file` holds more than one line.
    #[error("store file {}: more than one line", path.display())]
    FileLines {
        /// The file.
        path: PathBuf,
    },
    /// The environment variable is not valid Unicode.
    #[error("{ENV}: not valid UTF-8")]
    EnvNotUnicode,
    /// The environment variable's value is not a location.
    #[error("{ENV}: invalid store location")]
    Env {
        /// Why.
        source: Box<Error>,
    },
}

impl FromStr for Location {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::Empty);
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Location::Postgres(PostgresUrl(s.to_owned())));
        }
        let path = s.strip_prefix("sqlite:").unwrap_or(s);
        if path.is_empty() {
            return Err(Error::Empty);
        }
        Ok(Location::Sqlite(PathBuf::from(path)))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "{}", path.display()),
            Location::Postgres(url) => url.fmt(f),
        }
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Location::Postgres(url) => f.debug_tuple("Postgres").field(url).finish(),
        }
    }
}

impl Location {
    /// Reads a location from `path` (`--store-file`): one line, the trailing newline trimmed.
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        use std::io::Read;
        let read = |source| Error::ReadFile {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_FILE {
            return Err(Error::FileTooLarge {
                path: path.to_path_buf(),
            });
        }
        let line = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t))
            .unwrap_or(&text);
        if line.contains('\n') {
            return Err(Error::FileLines {
                path: path.to_path_buf(),
            });
        }
        line.parse()
    }

    /// The location in [`ENV`], if set.
    pub fn from_env() -> Result<Option<Self>, Error> {
        match std::env::var(ENV) {
            Ok(v) => v.parse().map(Some).map_err(|e| Error::Env {
                source: Box::new(e),
            }),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(Error::EnvNotUnicode),
        }
    }

    /// The store given by `--store` or `--store-file` (clap makes them exclusive), else by
    /// [`ENV`]; `None` when none is.
    pub fn resolve(
        store: Option<&Location>,
        store_file: Option<&Path>,
    ) -> Result<Option<Self>, Error> {
        if let Some(l) = store {
            return Ok(Some(l.clone()));
        }
        if let Some(f) = store_file {
            return Self::from_file(f).map(Some);
        }
        Self::from_env()
    }

    /// Opens the store, creating it (SQLite: the file; PostgreSQL: the schema) if missing.
    pub fn open(&self) -> super::Result<Box<dyn Store>> {
        Ok(match self {
            Location::Sqlite(path) => Box::new(SqliteStore::open(path)?),
            Location::Postgres(url) => Box::new(PostgresStore::connect(url)?),
        })
    }

    /// Opens an existing store for reading: a missing SQLite file is an error rather than
    /// an empty store. (A PostgreSQL database is migrated to this build's schema.)
    pub fn open_existing(&self) -> super::Result<Box<dyn Store>> {
        Ok(match self {
            Location::Sqlite(path) => Box::new(SqliteStore::open_existing(path)?),
            Location::Postgres(url) => Box::new(PostgresStore::connect(url)?),
        })
    }
}

/// `url` without its password.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".to_owned();
    };
    // The user information ends at the last '@' before the query: a password may hold '/'
    // or '@' (libpq wants them percent-encoded; shown or not, they must not leak).
    let end = rest.find(['?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => format!("{userinfo}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar() {
        assert_eq!(
            "a/b.db".parse::<Location>().ok(),
            Some(Location::Sqlite("a/b.db".into()))
        );
        assert_eq!(
            "sqlite:/x/y.db".parse::<Location>().ok(),
            Some(Location::Sqlite("/x/y.db".into()))
        );
        assert!(matches!(
            "postgresql://h/db".parse::<Location>(),
            Ok(Location::Postgres(_))
        ));
        assert!(matches!("".parse::<Location>(), Err(Error::Empty)));
        assert!(matches!("sqlite:".parse::<Location>(), Err(Error::Empty)));
    }

    #[test]
    fn passwords_are_never_shown() {
        for (url, shown) in [
            (
                "postgres://leash:s3cret@db.example:5432/leash?sslmode=verify-full",
                "postgres://leash:***@db.example:5432/leash?sslmode=verify-full",
            ),
            (
                "postgresql://leash:p%40ss:w@rd@h/db",
                "postgresql://leash:***@h/db",
            ),
            (
                "postgres://leash:s3cret/rd@h/db",
                "postgres://leash:***@h/db",
            ),
            (
                "postgres://h/db?user=a&password=s3cret&sslmode=require",
                "postgres://h/db?user=a&password=***&sslmode=require",
            ),
            ("postgres://leash@h/db", "postgres://leash@h/db"),
        ] {
            let l: Location = url.parse().expect("a URL");
            assert_eq!(l.to_string(), shown);
            let debug = format!("{l:?}");
            assert!(
                !debug.contains("s3cret") && !debug.contains("rd@"),
                "{debug}"
            );
        }
    }

    proptest::proptest! {
        /// Any value parses or is refused without a panic, and a URL's password never
        /// appears in what is shown.
        #[test]
        fn parsing_never_panics_and_never_shows_the_password(
            user in "[a-z]{1,8}",
            password in "[A-Za-z0-9%:@!/]{4,16}",
            rest in "[a-z0-9./?=&:@-]{0,40}",
            raw in "\\PC{0,60}",
        ) {
            let _ = raw.parse::<Location>().map(|l| l.to_string());
            let url = format!("postgres://{user}:{password}@{rest}");
            let shown = url.parse::<Location>().map(|l| format!("{l} {l:?}"));
            let shown = shown.map_err(|e| e.to_string());
            proptest::prop_assert!(shown.is_ok());
            let shown = shown.unwrap_or_default();
            // The password is cut at the host's '@': what is shown holds no part of it
            // longer than the host part the generator may repeat.
            proptest::prop_assert!(
                shown.contains(&format!("postgres://{user}:***@")),
                "{}", shown
            );
            if !rest.contains(password.as_str()) && !user.contains(password.as_str()) {
                proptest::prop_assert!(!shown.contains(password.as_str()), "{}", shown);
            }
        }
    }

    #[test]
    fn a_store_file_is_one_line() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let f = dir.path().join("url");
        std::fs::write(&f, "postgres://u:pw@h/db\n")?;
        let l = Location::from_file(&f).expect("one line");
        let Location::Postgres(url) = l else {
            panic!("not PostgreSQL")
        };
        assert_eq!(url.expose(), "postgres://u:pw@h/db");
        std::fs::write(&f, "a\nb\n")?;
        assert!(matches!(
            Location::from_file(&f),
            Err(Error::FileLines { .. })
        ));
        Ok(())
    }
}
