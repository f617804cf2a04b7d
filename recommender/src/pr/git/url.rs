//! Which repository addresses leash accepts and what transport each uses (pure, except that
//! a relative local path is made absolute against the current directory).

use std::net::IpAddr;
use std::path::Path;

/// The transport a repository address uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `https://`.
    Https,
    /// `http://` to a loopback address.
    Http,
    /// `ssh://…` or `user@host:path`.
    Ssh,
    /// `file://…` or a local path.
    File,
}

impl Transport {
    /// The name `GIT_ALLOW_PROTOCOL` knows it by.
    pub(crate) fn protocol(self) -> &'static str {
        match self {
            Transport::Https => "https",
            Transport::Http => "http",
            Transport::Ssh => "ssh",
            Transport::File => "file",
        }
    }
}

/// Why an address is refused. The address is not echoed when it carries credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The address holds `user:password@` (or a user name before an HTTP host, where tokens
    /// hide); `shown` is the address without them.
    Credentials { shown: String },
    /// Anything else, with the reason.
    Other(&'static str),
}

/// A repository address leash may give git: the text git gets and its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Address {
    /// The address as git gets it (a local path made absolute).
    pub url: String,
    /// Its transport.
    pub transport: Transport,
}

/// Classifies `url` as git would and refuses what leash does not support: other schemes and
/// remote helpers (`ext::` runs commands), `http://` to anything but loopback, credentials
/// in the address, control characters, and a leading `-` (git would read an option).
pub(crate) fn parse(url: &str, cwd: &Path) -> Result<Address, Refusal> {
    if url.is_empty() {
        return Err(Refusal::Other("the repository address is empty"));
    }
    if url.chars().any(char::is_control) {
        return Err(Refusal::Other(
            "the repository address holds control characters",
        ));
    }
    if url.starts_with('-') {
        return Err(Refusal::Other("the repository address starts with '-'"));
    }
    if let Some((scheme, rest)) = url.split_once("://")
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return scheme_url(url, &scheme.to_ascii_lowercase(), rest);
    }
    // `<transport>::<address>`: a remote helper.
    if let Some((helper, _)) = url.split_once("::")
        && !helper.is_empty()
        && helper
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(Refusal::Other(
            "remote helpers (`TRANSPORT::ADDRESS`) are not supported",
        ));
    }
    // git's rule: a ':' before any '/' makes `[user@]host:path` (scp-like SSH).
    let colon = url.find(':');
    let slash = url.find('/');
    if let Some(c) = colon
        && slash.is_none_or(|s| c < s)
    {
        let host_part = &url[..c];
        let host = host_part.rsplit('@').next().unwrap_or(host_part);
        if host.is_empty() || host.starts_with('-') {
            return Err(Refusal::Other("the SSH host is empty or starts with '-'"));
        }
        if url[c + 1..].is_empty() {
            return Err(Refusal::Other("the SSH address has no path"));
        }
        return Ok(Address {
            url: url.to_owned(),
            transport: Transport::Ssh,
        });
    }
    let path = Path::new(url);
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    let Some(text) = absolute.to_str() else {
        return Err(Refusal::Other("the local path is not UTF-8"));
    };
    Ok(Address {
        url: text.to_owned(),
        transport: Transport::File,
    })
}

/// `scheme://rest`, `scheme` lower-cased.
fn scheme_url(url: &str, scheme: &str, rest: &str) -> Result<Address, Refusal> {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let shown = || format!("{scheme}://{hostport}{}", &rest[authority.len()..]);
    let transport = match scheme {
        "https" => Transport::Https,
        "http" => Transport::Http,
        "ssh" | "git+ssh" | "ssh+git" => Transport::Ssh,
        "file" => Transport::File,
        _ => {
            return Err(Refusal::Other(
                "only https://, http:// (loopback), ssh://, user@host:path, file:// and local \
                 paths are supported",
            ));
        }
    };
    let credentials = match transport {
        // A user name alone is a token often enough (`https://TOKEN@host/`).
        Transport::Https | Transport::Http => userinfo.is_some(),
        Transport::Ssh => userinfo.is_some_and(|u| u.contains(':')),
        Transport::File => userinfo.is_some(),
    };
    if credentials {
        return Err(Refusal::Credentials { shown: shown() });
    }
    if transport == Transport::File {
        if !authority.is_empty() && !authority.eq_ignore_ascii_case("localhost") {
            return Err(Refusal::Other("a file:// address names another host"));
        }
        return Ok(Address {
            url: url.to_owned(),
            transport,
        });
    }
    let host = host_of(hostport);
    if host.is_empty() || host.starts_with('-') {
        return Err(Refusal::Other("the host is empty or starts with '-'"));
    }
    if transport == Transport::Http && !is_loopback(host) {
        return Err(Refusal::Other(
            "plain http:// is accepted only for loopback addresses; use https://",
        ));
    }
    Ok(Address {
        url: url.to_owned(),
        transport,
    })
}

/// The host of `host[:port]` or `[v6][:port]`.
fn host_of(hostport: &str) -> &str {
    if let Some(inner) = hostport.strip_prefix('[') {
        return inner.split(']').next().unwrap_or_default();
    }
    hostport.split(':').next().unwrap_or_default()
}

/// `localhost` or a loopback IP address (an IPv4-mapped one included).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> (String, Transport) {
        let a = parse(url, Path::new("/work")).expect(url);
        (a.url, a.transport)
    }

    fn refused(url: &str) -> Refusal {
        parse(url, Path::new("/work")).expect_err(url)
    }

    #[test]
    fn accepts_the_supported_forms() {
        for (url, t) in [
            ("https://github.com/o/r.git", Transport::Https),
            ("HTTPS://example.com:8443/o/r", Transport::Https),
            ("http://127.0.0.1:8080/r.git", Transport::Http),
            ("http://localhost/r.git", Transport::Http),
            ("http://[::1]:80/r.git", Transport::Http),
            ("http://127.1.2.3/r.git", Transport::Http),
            ("ssh://git@example.com:2222/o/r.git", Transport::Ssh),
            ("git@github.com:o/r.git", Transport::Ssh),
            ("host:r.git", Transport::Ssh),
            ("file:///srv/r.git", Transport::File),
            ("/srv/r.git", Transport::File),
        ] {
            assert_eq!(ok(url), (url.to_owned(), t), "{url}");
        }
        assert_eq!(
            ok("repos/r.git"),
            ("/work/repos/r.git".to_owned(), Transport::File)
        );
        // A '/' before the first ':' makes a local path, as git reads it.
        assert_eq!(ok("./a:b"), ("/work/./a:b".to_owned(), Transport::File));
    }

    #[test]
    fn refuses_plain_http_off_loopback_and_other_schemes() {
        for url in [
            "http://example.com/r.git",
            "http://10.0.0.1/r.git",
            "http://localhost.example.com/r.git",
            "git://example.com/r.git",
            "ftp://example.com/r.git",
            "ext::sh -c touch% /tmp/x",
            "fd::3",
            "-uploadpack=touch /tmp/x",
            "ssh://-oProxyCommand=x/r",
            "-oProxyCommand=x:r",
            "https:///r.git",
            "",
            "https://example.com/r\n.git",
        ] {
            assert!(matches!(refused(url), Refusal::Other(_)), "{url}");
        }
    }

    #[test]
    fn refuses_credentials_without_echoing_them() {
        for (url, shown) in [
            (
                "https://x-access-token:s3cr3t@github.com/o/r.git",
                "https://github.com/o/r.git",
            ),
            (
                "https://s3cr3t@github.com/o/r.git",
                "https://github.com/o/r.git",
            ),
            ("http://u:s3cr3t@127.0.0.1:9/r", "http://127.0.0.1:9/r"),
            ("ssh://git:s3cr3t@host/r.git", "ssh://host/r.git"),
        ] {
            assert_eq!(
                refused(url),
                Refusal::Credentials {
                    shown: shown.to_owned()
                },
                "{url}"
            );
        }
        // A user name is how SSH logs in.
        assert_eq!(ok("ssh://git@host/r.git").1, Transport::Ssh);
    }
}
