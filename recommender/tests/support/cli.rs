//! Running the built `leash` binary and reading what it printed, for the command-line tests.

use std::path::Path;
use std::process::Output;

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// What the command wrote to stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What the command wrote to stdout.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command exited with `code`, and did not panic.
#[track_caller]
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stderr: {}\nstdout: {}",
        stderr(o),
        stdout(o)
    );
    assert!(!stderr(o).contains("panicked"), "{}", stderr(o));
}
