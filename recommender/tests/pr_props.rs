//! Property tests of the parsers `leash pr` and `leash serve` apply to their flags and to
//! what providers answer: repository and API addresses, `--author`, tokens, webhook URLs.
//! None may panic on any input; each keeps its promise on the inputs it accepts: an
//! address's credentials are never shown, a project comes from the path of the URL, a token
//! never survives redaction.

use leash::pr::git::{self, Author};
use leash::pr::provider::{self, Kind};
use leash::pr::secret::Secret;
use proptest::prelude::*;

/// A URL path segment as projects have them.
fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,15}".prop_filter("not a dot path", |s| {
        s != "." && s != ".." && !s.ends_with(".git")
    })
}

/// Text that looks like an address: schemes, separators, credentials, brackets, controls.
fn addressish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("https://".to_owned()),
            Just("http://".to_owned()),
            Just("ssh://".to_owned()),
            Just("file://".to_owned()),
            Just("ext::".to_owned()),
            Just("git@".to_owned()),
            Just("user:pw@".to_owned()),
            Just(":".to_owned()),
            Just("/".to_owned()),
            Just("[::1]".to_owned()),
            Just("127.0.0.1".to_owned()),
            Just(".git".to_owned()),
            Just("-".to_owned()),
            Just("\n".to_owned()),
            "[a-z0-9.]{1,8}",
            any::<char>().prop_map(String::from),
        ],
        0..10,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every parser of addresses answers, whatever the text.
    #[test]
    fn address_parsers_never_panic(url in addressish()) {
        let _ = git::is_http(&url);
        let _ = git::display_url(&url);
        let _ = provider::project_from_url(&url);
        let _ = provider::infer_kind(&url);
        for kind in [Kind::Github, Kind::Gitlab, Kind::None] {
            let _ = provider::default_api_url(kind, &url);
        }
        let _ = leash::https::check_url(&url);
        let _ = leash::serve::webhook::WebhookUrl::parse(&url);
        let _ = Author::parse(&url);
    }

    /// An address with a password is never shown with it.
    #[test]
    fn credentials_are_never_shown(
        host in "[a-z][a-z0-9]{0,10}\\.test",
        password in "[A-Za-z0-9]{12,24}",
        path in prop::collection::vec(segment(), 1..4),
    ) {
        let url = format!("https://x-access-token:{password}@{host}/{}.git", path.join("/"));
        let shown = git::display_url(&url);
        prop_assert!(!shown.contains(&password), "{shown}");
        prop_assert!(shown.contains(&host), "{shown}");
        if let Err(e) = leash::https::check_url(&url) {
            prop_assert!(!e.to_string().contains(&password), "{e}");
        }
    }

    /// The project is the URL's path, without `.git`, in every form git accepts.
    #[test]
    fn projects_come_from_the_path(
        host in "[a-z][a-z0-9]{0,10}\\.test",
        path in prop::collection::vec(segment(), 2..5),
    ) {
        let project = path.join("/");
        for url in [
            format!("https://{host}/{project}.git"),
            format!("https://{host}/{project}"),
            format!("ssh://git@{host}:2222/{project}.git"),
            format!("git@{host}:{project}.git"),
        ] {
            prop_assert_eq!(provider::project_from_url(&url), Some(project.clone()), "{}", url);
        }
        prop_assert_eq!(provider::project_from_url(&format!("/srv/{project}.git")), None);
    }

    /// `--author` reads back what it was given, and nothing that would break a commit.
    #[test]
    fn authors_round_trip(name in "[A-Za-z][A-Za-z .-]{0,20}[A-Za-z]", user in "[a-z]{1,10}") {
        let email = format!("{user}@example.test");
        let author = Author::parse(&format!("{name} <{email}>")).expect("author");
        prop_assert_eq!(author, Author { name: name.trim().to_owned(), email });
    }

    /// A token never survives redaction, in any text that holds it.
    #[test]
    fn tokens_never_survive_redaction(
        token in "[!-~]{8,40}",
        before in ".{0,40}",
        after in ".{0,40}",
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{token}\n")).expect("write");
        let secret = Secret::from_file(&file).expect("token");
        let text = format!("{before}{token}{after}");
        let red = secret.redact(&text);
        prop_assert!(!red.contains(&token), "{red:?}");
        let shown = format!("{secret} {secret:?}");
        prop_assert!(!shown.contains(&token), "{}", shown);
    }
}
