//! The lab's private OpenSSH server for the git-over-SSH tests (`pr_cli.rs`, `pr_git.rs`).

use leash_lab::sshd::{Error, Sshd};
use leash_records::error::Chain;

/// The SSH server, or `None` (the test skips) when `sshd` is not installed and
/// `LEASH_REQUIRE_PRIVILEGED` is not `1`.
pub fn sshd_or_skip() -> Option<Sshd> {
    match Sshd::start() {
        Ok(s) => Some(s),
        Err(e @ Error::Unavailable(_)) => {
            assert!(
                std::env::var(leash_lab::REQUIRE_PRIVILEGED_ENV).as_deref() != Ok("1"),
                "{}=1 but {}",
                leash_lab::REQUIRE_PRIVILEGED_ENV,
                Chain(&e)
            );
            eprintln!("SKIPPED: {}", Chain(&e));
            None
        }
        Err(e) => panic!("sshd: {}", Chain(&e)),
    }
}
