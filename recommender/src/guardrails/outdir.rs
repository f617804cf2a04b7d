//! `guardrails -o DIR`: `DIR/cluster/<policy>.yaml` (every name starts with `guardrails-`) and
//! `DIR/cluster/REPORT.md`; the `guardrails-*.yaml` files an earlier run wrote that this run no
//! longer proposes are removed. Every text is rendered before anything is written.

use std::path::{Path, PathBuf};

use super::{Guardrails, PREFIX, object_yaml, report_md};

/// Why `-o DIR` failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An object could not be serialized (a bug: nothing was written).
    #[error("cannot render the guardrails")]
    Render(#[from] crate::render::Error),
    /// Reading, writing or removing a file failed.
    #[error("cannot write {}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The files of `-o DIR`, relative to DIR, sorted: each policy, then the report.
pub fn files(g: &Guardrails) -> Result<Vec<(PathBuf, String)>, Error> {
    let mut out = Vec::new();
    for p in &g.policies {
        out.push((
            Path::new("cluster").join(format!("{}.yaml", p.name())),
            object_yaml(p)?,
        ));
    }
    out.push((Path::new("cluster").join("REPORT.md"), report_md(g)));
    Ok(out)
}

/// Writes [`files`] under `dir` and removes stale `guardrails-*.yaml` files of `dir/cluster`.
/// Returns the files written.
pub fn write_dir(dir: &Path, g: &Guardrails) -> Result<Vec<PathBuf>, Error> {
    let files = files(g)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let cluster = dir.join("cluster");
    std::fs::create_dir_all(&cluster).map_err(io(&cluster))?;
    let keep: std::collections::BTreeSet<PathBuf> =
        files.iter().map(|(rel, _)| dir.join(rel)).collect();
    for entry in std::fs::read_dir(&cluster).map_err(io(&cluster))? {
        let path = entry.map_err(io(&cluster))?.path();
        let stale = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".yaml"))
            && !keep.contains(&path);
        if stale {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    let mut written = Vec::new();
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::write(&path, text).map_err(io(&path))?;
        written.push(path);
    }
    Ok(written)
}
