//! leash's Kubernetes manifests as data: renders the kustomize base and overlays under
//! `deploy/` with `kubectl kustomize`, and parses every object into its typed form
//! (k8s-openapi, or the cert-manager subset in [`certmanager`]), rejecting any field the
//! typed form would silently drop.
//!
//! The tests in `deploy/tests/` use it to check the manifests' security invariants, that RBAC
//! grants exactly the API access the code declares, and that the binaries accept every flag
//! the manifests pass.

pub mod certmanager;
pub mod flags;
pub mod manifests;
pub mod rbac;
pub mod render;
pub mod stage;
pub mod strict;

pub use manifests::{Manifests, Object, ObjectId, Typed};
pub use render::{base_dir, deploy_dir, overlay_dirs, render};

use std::path::PathBuf;

/// What can go wrong rendering or parsing the manifests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `kubectl` could not be started.
    #[error("{overlay}: cannot run `kubectl kustomize`")]
    Spawn {
        /// The kustomization directory.
        overlay: PathBuf,
        /// Why the process did not start.
        source: std::io::Error,
    },
    /// `kubectl kustomize` failed.
    #[error("{overlay}: `kubectl kustomize` failed ({status}): {stderr}")]
    Kustomize {
        /// The kustomization directory.
        overlay: PathBuf,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on standard error.
        stderr: String,
    },
    /// The rendered output is not valid YAML.
    #[error("{overlay}: rendered output, document {document}: invalid YAML: {message}")]
    Yaml {
        /// The kustomization directory.
        overlay: PathBuf,
        /// 1-based document index in the output.
        document: usize,
        /// What the parser said.
        message: String,
    },
    /// A rendered document is not a Kubernetes object (no `apiVersion`/`kind`/name).
    #[error("{source_name}: document {document}: not a Kubernetes object: {message}")]
    NotAnObject {
        /// Where the objects came from (an overlay path or a test name).
        source_name: String,
        /// 1-based document index.
        document: usize,
        /// What is missing.
        message: String,
    },
    /// An object of a kind the manifests are not expected to contain.
    #[error("{source_name}: {object}: kind not supported by leash-deploy's typed parsing")]
    UnsupportedKind {
        /// Where the objects came from.
        source_name: String,
        /// The object.
        object: Box<ObjectId>,
    },
    /// An object does not deserialize into its typed form.
    #[error("{source_name}: {object}: does not match its schema: {message}")]
    Schema {
        /// Where the objects came from.
        source_name: String,
        /// The object.
        object: Box<ObjectId>,
        /// What serde said.
        message: String,
    },
    /// Copying the kustomizations or writing certificates for a test failed.
    #[error("{path}: {message}")]
    Stage {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Fields that the typed form does not know (misspelt or misplaced), or values it changed.
    #[error("{source_name}: {object}: unknown or altered fields: {}", .paths.join(", "))]
    UnknownFields {
        /// Where the objects came from.
        source_name: String,
        /// The object.
        object: Box<ObjectId>,
        /// Each dropped or altered field's path, e.g. `spec.template.spec.containers[0].x`.
        paths: Vec<String>,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
