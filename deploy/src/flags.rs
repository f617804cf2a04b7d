//! The command-line flags a manifest passes to a binary, and whether its `--help` knows them.

/// The flag names (`--name`) in `args`, in order, without `=value` parts; positional
/// arguments and flag values are skipped.
pub fn flag_names(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.starts_with("--") && a.len() > 2)
        .map(|a| {
            a.split_once('=')
                .map_or(a.as_str(), |(name, _)| name)
                .to_owned()
        })
        .collect()
}

/// The flags in `flags` that `help` (a binary's `--help` output) does not mention as a whole
/// word (so `--tls` is not found inside `--tls-ca`).
pub fn missing_from_help(help: &str, flags: &[String]) -> Vec<String> {
    flags
        .iter()
        .filter(|flag| !mentions(help, flag))
        .cloned()
        .collect()
}

fn mentions(help: &str, flag: &str) -> bool {
    help.match_indices(flag).any(|(at, _)| {
        let before = help[..at].chars().next_back();
        let after = help[at + flag.len()..].chars().next();
        let word = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn flag_names_skip_values_and_positionals() {
        let args = own(&[
            "serve",
            "--kube",
            "--store",
            "/x.db",
            "--retention=30d",
            "-v",
        ]);
        assert_eq!(
            flag_names(&args),
            own(&["--kube", "--store", "--retention"])
        );
    }

    #[test]
    fn flags_must_appear_as_whole_words() {
        let help = "Options:\n      --tls-ca <FILE>  CA\n      --kube\n  -o, --output <FILE>\n";
        assert_eq!(
            missing_from_help(
                help,
                &own(&["--tls-ca", "--kube", "--output", "--tls", "--kub"])
            ),
            own(&["--tls", "--kub"])
        );
    }
}
