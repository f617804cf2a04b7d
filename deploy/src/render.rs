//! Running `kubectl kustomize` on a kustomization directory, offline.

use std::path::{Path, PathBuf};
use std::process::Command;

use leash_records::error::Chain;
use serde::Deserialize as _;
use serde_json::Value;

use crate::{Error, Result};

/// `deploy/`, the directory of this crate (and of the kustomizations).
pub fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `deploy/base`.
pub fn base_dir() -> PathBuf {
    deploy_dir().join("base")
}

/// Every overlay directory under `deploy/overlays/` (those holding a `kustomization.yaml`),
/// sorted by name.
pub fn overlay_dirs() -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(deploy_dir().join("overlays"))? {
        let path = entry?.path();
        if path.join("kustomization.yaml").is_file() {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Renders a kustomization directory with `kubectl kustomize` (`$KUBECTL` overrides the
/// binary) and returns its objects in output order. Errors name the directory.
pub fn render(overlay: &Path) -> Result<Vec<Value>> {
    let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(overlay)
        .output()
        .map_err(|source| Error::Spawn {
            overlay: overlay.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(Error::Kustomize {
            overlay: overlay.to_path_buf(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    parse_yaml_stream(&text, overlay)
}

/// Parses a multi-document YAML stream into JSON values, skipping empty documents.
pub fn parse_yaml_stream(text: &str, overlay: &Path) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (i, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(de).map_err(|e| Error::Yaml {
            overlay: overlay.to_path_buf(),
            document: i + 1,
            message: Chain(&e).to_string(),
        })?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}
