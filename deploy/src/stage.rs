//! A private copy of the kustomizations, to render variants of without touching the tree:
//! the self-signed overlay with certificates generated the way `leash certs` lays them out,
//! or a deliberately broken manifest.

use std::fs;
use std::path::{Path, PathBuf};

use leash_records::error::Chain;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use crate::{Error, Manifests, Result, render};

/// The host name agents dial, as in the DaemonSet's `--recommender` URL.
pub const SERVER_NAME: &str = "leash-recommender.leash-system.svc";
/// The agents' client certificate name.
pub const CLIENT_NAME: &str = "leash-agent";

/// A temporary copy of `deploy/base`, `deploy/overlays` and `deploy/components`, without any
/// `*.pem` a user may have generated. Removed on drop.
#[derive(Debug)]
pub struct Staged {
    dir: tempfile::TempDir,
}

fn io_error(path: &Path, e: impl std::error::Error) -> Error {
    Error::Stage {
        path: path.to_path_buf(),
        message: Chain(&e).to_string(),
    }
}

impl Staged {
    /// Copies the kustomizations into a new temporary directory.
    pub fn new() -> Result<Self> {
        let dir = tempfile::tempdir().map_err(|e| io_error(Path::new("<tempdir>"), e))?;
        let deploy = render::deploy_dir();
        copy_tree(&deploy.join("base"), &dir.path().join("base"))?;
        copy_tree(&deploy.join("overlays"), &dir.path().join("overlays"))?;
        copy_tree(&deploy.join("components"), &dir.path().join("components"))?;
        Ok(Self { dir })
    }

    /// A path inside the copy, e.g. `overlays/self-signed`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes the self-signed overlay's certificate files; returns (file name, PEM text).
    pub fn generate_certs(&self) -> Result<Vec<(String, String)>> {
        let certs = self.path("overlays/self-signed/certs");
        let files = generate_certs().map_err(|e| io_error(&certs, e))?;
        fs::create_dir_all(&certs).map_err(|e| io_error(&certs, e))?;
        for (name, pem) in &files {
            let path = certs.join(name);
            fs::write(&path, pem).map_err(|e| io_error(&path, e))?;
        }
        Ok(files)
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to).map_err(|e| io_error(to, e))?;
    for entry in fs::read_dir(from).map_err(|e| io_error(from, e))? {
        let path = entry.map_err(|e| io_error(from, e))?.path();
        let Some(name) = path.file_name() else {
            continue;
        };
        let target = to.join(name);
        if path.is_dir() {
            copy_tree(&path, &target)?;
        } else if path.extension().is_none_or(|e| e != "pem") {
            fs::copy(&path, &target).map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(())
}

/// A CA, a server certificate for [`SERVER_NAME`] and a client certificate for
/// [`CLIENT_NAME`], as (file name, PEM) pairs named as `leash certs` writes them.
pub fn generate_certs() -> Result<Vec<(String, String)>, rcgen::Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf = |name: &str| -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec![name.to_owned()])?.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server, server_key) = leaf(SERVER_NAME)?;
    let (client, client_key) = leaf(CLIENT_NAME)?;
    Ok(vec![
        ("ca.pem".to_owned(), ca.pem()),
        ("server.pem".to_owned(), server),
        ("server-key.pem".to_owned(), server_key),
        (format!("{CLIENT_NAME}.pem"), client),
        (format!("{CLIENT_NAME}-key.pem"), client_key),
    ])
}

/// The cert-manager overlay with the component `deploy/components/<name>` added, as a user's
/// overlay would add it.
pub fn with_component(name: &str) -> Result<Manifests> {
    let staged = Staged::new()?;
    let overlay = staged.path(&format!("overlays/with-{name}"));
    fs::create_dir_all(&overlay).map_err(|e| io_error(&overlay, e))?;
    let kustomization = overlay.join("kustomization.yaml");
    fs::write(
        &kustomization,
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - ../cert-manager\ncomponents:\n  - ../../components/{name}\n"
        ),
    )
    .map_err(|e| io_error(&kustomization, e))?;
    Manifests::load(&overlay)
}

/// The base and every overlay, rendered and parsed strictly. Overlays that read certificate
/// files (self-signed) are rendered from a staged copy with generated certificates.
pub fn every_rendering() -> Result<Vec<Manifests>> {
    let staged = Staged::new()?;
    staged.generate_certs()?;
    let mut dirs = vec![render::base_dir()];
    for overlay in render::overlay_dirs().map_err(|e| io_error(&render::deploy_dir(), e))? {
        let copy = overlay
            .file_name()
            .map(|name| staged.path("overlays").join(name));
        match copy {
            Some(copy) if copy.join("certs").is_dir() => dirs.push(copy),
            _ => dirs.push(overlay),
        }
    }
    dirs.iter().map(|d| Manifests::load(d)).collect()
}
