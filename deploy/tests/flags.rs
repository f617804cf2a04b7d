//! Every flag the manifests pass to `leash-agent` and `leash serve` is one the binaries
//! accept. The binaries' clap definitions live in their `main.rs`, so this runs the built
//! binaries' `--help`. They are found next to this test in the target directory (a workspace
//! `cargo test` builds them); when absent, the check is skipped with a reason, unless
//! `LEASH_REQUIRE_PRIVILEGED=1` (CI), which makes it fail. `agent/tests/deploy_caps.rs`
//! checks `leash-agent` against the binary cargo built for it in any case.

use std::path::PathBuf;
use std::process::Command;

use leash_deploy::flags::{flag_names, missing_from_help};
use leash_deploy::{Manifests, stage};
use leash_records::error::Chain;

/// `target/<profile>/<name>`, from this test binary's own path (`target/<profile>/deps/…`).
fn built_binary(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile_dir = exe.parent()?.parent()?;
    let bin = profile_dir.join(name);
    bin.is_file().then_some(bin)
}

fn help(bin: &PathBuf, sub: &[&str]) -> String {
    let out = Command::new(bin)
        .args(sub)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("running {} --help: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {sub:?} --help failed: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn container_args(m: &Manifests, workload: &str) -> Vec<String> {
    let pod = m
        .pod_spec(workload)
        .unwrap_or_else(|| panic!("{}: no workload {workload}", m.source));
    pod.containers[0].args.clone().unwrap_or_default()
}

#[test]
fn binaries_accept_every_flag_the_manifests_pass() {
    let (Some(agent), Some(leash)) = (built_binary("leash-agent"), built_binary("leash")) else {
        let msg = "leash-agent or leash is not built in this target directory \
                   (run `cargo build -p leash -p leash-agent` or a workspace `cargo test`)";
        assert!(
            std::env::var("LEASH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return;
    };
    let agent_help = help(&agent, &[]);
    let serve_help = help(&leash, &["serve"]);
    let mut renderings = stage::every_rendering().unwrap_or_else(|e| panic!("{}", Chain(&e)));
    renderings
        .push(stage::with_component("pull-requests").unwrap_or_else(|e| panic!("{}", Chain(&e))));
    for m in renderings {
        let agent_args = container_args(&m, "leash-agent");
        let missing = missing_from_help(&agent_help, &flag_names(&agent_args));
        assert!(
            missing.is_empty(),
            "{}: leash-agent lacks {missing:?}",
            m.source
        );

        let serve_args = container_args(&m, "leash-recommender");
        assert_eq!(serve_args.first().map(String::as_str), Some("serve"));
        let missing = missing_from_help(&serve_help, &flag_names(&serve_args));
        assert!(
            missing.is_empty(),
            "{}: leash serve lacks {missing:?}",
            m.source
        );
    }
}
