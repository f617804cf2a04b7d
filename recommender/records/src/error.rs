//! The one printer of an error and its causes.
//!
//! The convention of every leash crate: an error's message says what failed and never
//! includes its [`source`](std::error::Error::source); whatever shows an error to a person
//! (stderr, a log line, an HTTP body, a gRPC status) prints the whole chain with [`Chain`].
//! Each cause then appears once, however deep the chain.

use std::error::Error;
use std::fmt;

/// Displays an error and its chain of sources as `message: cause: cause…`.
///
/// A cause whose text is already part of what was written is skipped: some third-party
/// errors (kube's, for one) repeat their source in their own message, and it is printed
/// once. Empty messages are skipped too.
///
/// ```
/// use leash_records::error::Chain;
///
/// #[derive(Debug, thiserror::Error)]
/// #[error("store x.db: cannot open")]
/// struct Open(#[source] std::io::Error);
///
/// let e = Open(std::io::Error::other("permission denied"));
/// assert_eq!(Chain(&e).to_string(), "store x.db: cannot open: permission denied");
/// ```
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Written into a buffer first, so each cause can be checked against all before it.
        let mut written = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !text.is_empty() && !written.contains(&text) {
                if !written.is_empty() {
                    written.push_str(": ");
                }
                written.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&written)
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A test error: a message and an optional source.
    #[derive(Debug)]
    struct Layer {
        message: String,
        source: Option<Box<dyn Error + 'static>>,
    }

    impl fmt::Display for Layer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.message)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.source.as_deref()
        }
    }

    fn layer(message: &str, source: Option<Layer>) -> Layer {
        Layer {
            message: message.to_owned(),
            source: source.map(|s| Box::new(s) as Box<dyn Error>),
        }
    }

    #[test]
    fn three_levels_are_joined_in_order() {
        let e = layer(
            "store x.db: cannot open",
            Some(layer(
                "unable to open database file",
                Some(layer("No such file or directory (os error 2)", None)),
            )),
        );
        assert_eq!(
            Chain(&e).to_string(),
            "store x.db: cannot open: unable to open database file: \
             No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_single_error_is_its_message() {
        let e = layer("bad flag", None);
        assert_eq!(Chain(&e).to_string(), "bad flag");
        assert_eq!(format!("{:?}", Chain(&e)), "bad flag");
    }

    /// kube's errors print their source in their own message; the source is not printed
    /// again, but a deeper cause that is not repeated still is.
    #[test]
    fn a_cause_repeated_by_its_parent_is_printed_once() {
        let io = "Connection refused (os error 111)";
        let e = layer(
            "cannot list pods",
            Some(layer(
                &format!("HyperError: client error (Connect): {io}"),
                Some(layer(io, Some(layer("deepest", None)))),
            )),
        );
        let text = Chain(&e).to_string();
        assert_eq!(
            text,
            "cannot list pods: HyperError: client error (Connect): \
             Connection refused (os error 111): deepest"
        );
        assert_eq!(text.matches(io).count(), 1, "{text}");
    }

    #[test]
    fn empty_messages_add_no_separator() {
        let e = layer("outer", Some(layer("", Some(layer("inner", None)))));
        assert_eq!(Chain(&e).to_string(), "outer: inner");
    }

    #[test]
    fn works_with_io_errors_and_boxed_errors() {
        let io = std::io::Error::other("root cause");
        assert_eq!(Chain(&io).to_string(), "root cause");
        let boxed: Box<dyn Error + Send + Sync> = "plain".into();
        assert_eq!(Chain(&*boxed).to_string(), "plain");
    }
}
