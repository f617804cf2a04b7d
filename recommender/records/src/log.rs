//! The one logging rule of `leash-agent` and `leash`: logs go to stderr, filtered by
//! `LEASH_LOG` (what the deploy manifests set), else `RUST_LOG`, else `info`.

/// The variable both binaries read their log filter from, e.g. `debug` or `leash=debug,info`.
pub const LOG_ENV: &str = "LEASH_LOG";

/// Read when [`LOG_ENV`] is unset or empty (tracing's own convention).
pub const FALLBACK_LOG_ENV: &str = "RUST_LOG";

/// The filter when neither variable is set, or when the one set does not parse.
pub const DEFAULT_LOG_FILTER: &str = "info";

/// The filter directives and the variable they came from (`None` for the default), given an
/// environment lookup: the first non-empty of [`LOG_ENV`] and [`FALLBACK_LOG_ENV`], else
/// [`DEFAULT_LOG_FILTER`].
pub fn directives(var: impl Fn(&str) -> Option<String>) -> (String, Option<&'static str>) {
    [LOG_ENV, FALLBACK_LOG_ENV]
        .into_iter()
        .find_map(|name| {
            var(name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (v, Some(name)))
        })
        .unwrap_or_else(|| (DEFAULT_LOG_FILTER.to_owned(), None))
}

/// Installs the stderr subscriber filtered as [`directives`] says, from the process's
/// environment. A filter that does not parse logs at [`DEFAULT_LOG_FILTER`] and says so; a
/// subscriber already installed (a test harness) is kept.
pub fn init_stderr() {
    use tracing_subscriber::EnvFilter;

    let (directives, source) = directives(|name| std::env::var(name).ok());
    let (filter, invalid) = match EnvFilter::try_new(&directives) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new(DEFAULT_LOG_FILTER), Some(e)),
    };
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init()
        .is_ok();
    if installed && let Some(error) = invalid {
        tracing::warn!(
            variable = source.unwrap_or(LOG_ENV),
            value = %directives,
            error = %crate::error::Chain(&error),
            "invalid log filter; logging at {DEFAULT_LOG_FILTER}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn leash_log_then_rust_log_then_info() {
        assert_eq!(
            directives(env(&[("LEASH_LOG", "debug"), ("RUST_LOG", "warn")])),
            ("debug".to_owned(), Some("LEASH_LOG"))
        );
        assert_eq!(
            directives(env(&[("RUST_LOG", "warn")])),
            ("warn".to_owned(), Some("RUST_LOG"))
        );
        assert_eq!(
            directives(env(&[("LEASH_LOG", " "), ("RUST_LOG", "warn")])),
            ("warn".to_owned(), Some("RUST_LOG"))
        );
        assert_eq!(directives(env(&[])), ("info".to_owned(), None));
    }
}
