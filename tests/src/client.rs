//! Locating (and if needed building) the `lab-client` binary, and the workspace's `leash`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use leash_records::error::Chain;

use crate::error::{Error, Result};

/// Environment variable that overrides where `lab-client` is.
pub const LAB_CLIENT_ENV: &str = "LEASH_LAB_CLIENT";
/// Environment variable that overrides where `leash` (the recommender) is.
pub const LEASH_BIN_ENV: &str = "LEASH_BIN";

static CACHE: Mutex<Option<PathBuf>> = Mutex::new(None);
static LEASH_CACHE: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The target profile directory of the running executable: `target/<profile>` for both test
/// binaries (`target/<profile>/deps/<name>-<hash>`) and binaries (`target/<profile>/<name>`).
fn profile_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::ClientBinary(format!("current_exe: {}", Chain(&e))))?;
    let dir = exe
        .parent()
        .ok_or_else(|| Error::ClientBinary(format!("{} has no parent", exe.display())))?;
    if dir
        .file_name()
        .is_some_and(|n| n == "deps" || n == "examples")
    {
        return dir
            .parent()
            .map(Path::to_path_buf)
            .ok_or_else(|| Error::ClientBinary(format!("{} has no parent", dir.display())));
    }
    Ok(dir.to_path_buf())
}

/// Finds `lab-client`: `$LEASH_LAB_CLIENT`, else `target/<profile>/lab-client` next to the running
/// executable. When it is missing there, builds it once with
/// `cargo build -p leash-lab --bin lab-client [--release]` into that target directory.
pub fn lab_client_path() -> Result<PathBuf> {
    workspace_bin(&CACHE, LAB_CLIENT_ENV, "leash-lab", "lab-client")
}

/// Finds the recommender binary `leash` the same way: `$LEASH_BIN`, else
/// `target/<profile>/leash`, built once with `cargo build -p leash --bin leash` when missing.
pub fn leash_path() -> Result<PathBuf> {
    workspace_bin(&LEASH_CACHE, LEASH_BIN_ENV, "leash", "leash")
}

fn workspace_bin(
    cache: &Mutex<Option<PathBuf>>,
    env: &str,
    package: &str,
    name: &str,
) -> Result<PathBuf> {
    let mut cache = cache
        .lock()
        .map_err(|_| Error::ClientBinary("lock poisoned".into()))?;
    if let Some(p) = cache.as_ref() {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(Error::ClientBinary(format!(
                "${env}={} is not a file",
                p.display()
            )));
        }
        *cache = Some(p.clone());
        return Ok(p);
    }
    let profile = profile_dir()?;
    let bin = profile.join(name);
    if !bin.is_file() {
        build(&profile, package, name)?;
    }
    if !bin.is_file() {
        return Err(Error::ClientBinary(format!(
            "{} still missing after building it",
            bin.display()
        )));
    }
    *cache = Some(bin.clone());
    Ok(bin)
}

fn build(profile: &Path, package: &str, name: &str) -> Result<()> {
    let target_dir = profile
        .parent()
        .ok_or_else(|| Error::ClientBinary(format!("{} has no parent", profile.display())))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "-p", package, "--bin", name])
        .env("CARGO_TARGET_DIR", target_dir);
    match profile.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => {}
    }
    // The workspace is where this crate's sources are.
    if let Some(ws) = Path::new(env!("CARGO_MANIFEST_DIR")).parent() {
        cmd.current_dir(ws);
    }
    let out = cmd.output().map_err(|e| {
        Error::ClientBinary(format!(
            "cannot run {}: {e}",
            Path::new(&cargo).display(),
            e = Chain(&e)
        ))
    })?;
    if !out.status.success() {
        return Err(Error::ClientBinary(format!(
            "`cargo build -p {package} --bin {name}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
