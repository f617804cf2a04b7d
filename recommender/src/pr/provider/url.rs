//! The project and the API URL from a repository URL (`--repo`), so that `--project` and
//! `--api-url` are needed only for a local path, a mirror, or an unusual installation.

use super::Kind;

/// github.com, whose API is at `api.github.com` (any other host is GitHub Enterprise Server).
const GITHUB_COM: &str = "github.com";

/// A remote repository URL taken apart.
#[derive(Debug, PartialEq, Eq)]
struct Remote<'a> {
    /// `https`, `http`, `ssh`, `git`, … (`ssh` for the scp-like form).
    scheme: &'a str,
    /// The host, IPv6 in brackets.
    host: &'a str,
    /// The port, if the URL has one.
    port: Option<&'a str>,
    /// The path, without its leading `/`, query or fragment.
    path: &'a str,
}

/// Takes apart `https://[user@]host[:port]/path`, `ssh://[user@]host[:port]/path` and git's
/// scp-like `[user@]host:path`. None for a local path (absolute, relative, `file://`).
fn remote(url: &str) -> Option<Remote<'_>> {
    let url = url.trim();
    let (scheme, authority, path) = if let Some((scheme, rest)) = url.split_once("://") {
        if scheme.eq_ignore_ascii_case("file") || scheme.is_empty() {
            return None;
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        (scheme, authority, path)
    } else {
        // git reads `host:path` as scp-like only when no `/` comes before the `:`; anything
        // else is a local path.
        let (authority, path) = url.split_once(':')?;
        if authority.is_empty() || authority.contains('/') || authority.starts_with('.') {
            return None;
        }
        ("ssh", authority, path)
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if host_port.starts_with('[') {
        match host_port.split_once(']') {
            Some((h, rest)) => (
                &host_port[..=h.len()],
                rest.strip_prefix(':').filter(|p| !p.is_empty()),
            ),
            None => return None,
        }
    } else {
        match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p).filter(|p| !p.is_empty())),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    Some(Remote {
        scheme,
        host,
        port,
        path: path.trim_start_matches('/'),
    })
}

/// The project (`owner/repo`, `group/sub/project`) from a repository URL:
/// `https://host/owner/repo(.git)`, `ssh://git@host/owner/repo.git`, `git@host:owner/repo.git`.
/// None for local paths, and for URLs whose path has fewer than two segments.
pub fn project_from_url(repo_url: &str) -> Option<String> {
    let remote = remote(repo_url)?;
    let path = remote.path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let segments: Vec<&str> = path.split('/').collect();
    let usable = segments.len() >= 2
        && segments
            .iter()
            .all(|s| !s.is_empty() && *s != "." && *s != "..");
    usable.then(|| segments.join("/"))
}

/// The default API URL for a repository URL: GitHub `https://api.github.com` for github.com,
/// else `https://HOST/api/v3` (Enterprise Server); GitLab `https://HOST/api/v4`. An `http(s)`
/// repository URL keeps its scheme and port (plain http is then accepted for loopback
/// addresses only); an SSH one gives `https` on the default port. None for local paths and
/// for provider `none`.
pub fn default_api_url(kind: Kind, repo_url: &str) -> Option<String> {
    let remote = remote(repo_url)?;
    let web = if remote.scheme.eq_ignore_ascii_case("https")
        || remote.scheme.eq_ignore_ascii_case("http")
    {
        let scheme = remote.scheme.to_ascii_lowercase();
        match remote.port {
            Some(port) => format!("{scheme}://{}:{port}", remote.host),
            None => format!("{scheme}://{}", remote.host),
        }
    } else {
        format!("https://{}", remote.host)
    };
    match kind {
        Kind::Github if remote.host.eq_ignore_ascii_case(GITHUB_COM) => {
            Some("https://api.github.com".to_owned())
        }
        Kind::Github => Some(format!("{web}/api/v3")),
        Kind::Gitlab => Some(format!("{web}/api/v4")),
        Kind::None => None,
    }
}

/// The provider a repository URL's host names: a host with `github` in it is GitHub, one
/// with `gitlab` GitLab; a local path has none ([`Kind::None`]). None when the host says
/// nothing: `--provider` must then be given.
pub fn infer_kind(repo_url: &str) -> Option<Kind> {
    let Some(remote) = remote(repo_url) else {
        return Some(Kind::None);
    };
    let host = remote.host.to_ascii_lowercase();
    if host.contains("github") {
        Some(Kind::Github)
    } else if host.contains("gitlab") {
        Some(Kind::Gitlab)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_inferred_from_the_host() {
        for (url, kind) in [
            ("https://github.com/o/r.git", Some(Kind::Github)),
            ("git@github.example.test:o/r.git", Some(Kind::Github)),
            ("https://gitlab.example.test/g/p", Some(Kind::Gitlab)),
            ("/srv/git/policies.git", Some(Kind::None)),
            ("file:///srv/git/policies.git", Some(Kind::None)),
            ("https://git.example.test/o/r", None),
        ] {
            assert_eq!(infer_kind(url), kind, "{url}");
        }
    }

    #[test]
    fn remotes_taken_apart() {
        assert_eq!(
            remote("ssh://git@[::1]:2222/o/r.git"),
            Some(Remote {
                scheme: "ssh",
                host: "[::1]",
                port: Some("2222"),
                path: "o/r.git"
            })
        );
        assert_eq!(
            remote("https://x-access-token:t@h.test/o/r?x=1#f"),
            Some(Remote {
                scheme: "https",
                host: "h.test",
                port: None,
                path: "o/r"
            })
        );
    }
}
