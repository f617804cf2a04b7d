//! Every kustomization renders offline and every object parses strictly into its typed form;
//! the strictness itself is tested with misspelt fields, and the overlays' certificates fit
//! what the base mounts.

use std::collections::BTreeSet;
use std::fs;

use k8s_openapi::api::core::v1::PodSpec;
use leash_deploy::stage::{self, Staged};
use leash_deploy::{Error, Manifests, render};
use leash_records::error::Chain;

fn kinds(m: &Manifests) -> BTreeSet<String> {
    m.objects.iter().map(|t| t.id.kind.clone()).collect()
}

fn names(m: &Manifests, kind: &str) -> BTreeSet<String> {
    m.objects
        .iter()
        .filter(|t| t.id.kind == kind)
        .map(|t| t.id.name.clone())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// The Secret names the pods of a rendering mount.
fn mounted_secrets(spec: &PodSpec) -> BTreeSet<String> {
    spec.volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect()
}

#[test]
fn base_and_every_overlay_render_and_parse_strictly() {
    let renderings = stage::every_rendering().unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let overlays = leash_deploy::overlay_dirs().expect("listing overlays");
    let overlay_names: BTreeSet<String> = overlays
        .iter()
        .filter_map(|o| Some(o.file_name()?.to_str()?.to_owned()))
        .collect();
    assert_eq!(overlay_names, set(&["cert-manager", "ha", "self-signed"]));
    assert_eq!(renderings.len(), 1 + overlays.len());

    for m in &renderings {
        let k = kinds(m);
        for want in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "DaemonSet",
            "Service",
        ] {
            assert!(k.contains(want), "{}: no {want} in {k:?}", m.source);
        }
        assert_eq!(names(m, "DaemonSet"), set(&["leash-agent"]), "{}", m.source);
        // The recommender: a StatefulSet (SQLite), or a Deployment in the HA overlay.
        let recommender: BTreeSet<String> = names(m, "StatefulSet")
            .union(&names(m, "Deployment"))
            .cloned()
            .collect();
        assert_eq!(recommender, set(&["leash-recommender"]), "{}", m.source);
        assert_eq!(
            names(m, "ClusterRole"),
            set(&["leash-agent", "leash-recommender"])
        );
        // Everything namespaced lives in leash-system.
        for t in &m.objects {
            if let Some(ns) = &t.id.namespace {
                assert_eq!(ns, "leash-system", "{}: {}", m.source, t.id);
            }
        }
    }
}

#[test]
fn a_misspelt_field_is_rejected_with_its_object_and_path() {
    let mut values =
        render::render(&leash_deploy::base_dir()).unwrap_or_else(|e| panic!("{}", Chain(&e)));
    Manifests::parse("base", &values).unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let ds = values
        .iter_mut()
        .find(|v| v["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let sc = ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]
        .as_object_mut()
        .expect("a container securityContext");
    let value = sc
        .remove("readOnlyRootFilesystem")
        .expect("the field is set");
    sc.insert("readOnlyRootFilesytem".into(), value);

    match Manifests::parse("base", &values) {
        Err(Error::UnknownFields {
            source_name,
            object,
            paths,
        }) => {
            assert_eq!(source_name, "base");
            assert_eq!(object.kind, "DaemonSet");
            assert_eq!(object.name, "leash-agent");
            assert_eq!(
                paths,
                ["spec.template.spec.containers[0].securityContext.readOnlyRootFilesytem"]
            );
        }
        other => panic!("a misspelt field must be rejected, got {other:?}"),
    }
}

#[test]
fn a_misspelt_field_in_a_manifest_file_fails_the_rendering() {
    // Through the real files and kubectl, which passes unknown fields through unchecked.
    let staged = Staged::new().unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let file = staged.path("base/recommender.yaml");
    let text = fs::read_to_string(&file).expect("reading recommender.yaml");
    assert!(text.contains("readinessProbe:"));
    fs::write(&file, text.replace("readinessProbe:", "readynessProbe:")).expect("writing");
    let err = Manifests::load(&staged.path("base")).expect_err("must be rejected");
    let msg = err.to_string();
    assert!(
        msg.contains("StatefulSet leash-system/leash-recommender")
            && msg.contains("spec.template.spec.containers[0].readynessProbe"),
        "{msg}"
    );
}

#[test]
fn a_misspelt_cert_manager_field_is_rejected() {
    let mut values = render::render(&leash_deploy::deploy_dir().join("overlays/cert-manager"))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let cert = values
        .iter_mut()
        .find(|v| v["kind"] == "Certificate" && v["metadata"]["name"] == "leash-recommender-tls")
        .expect("the server Certificate");
    let spec = cert["spec"].as_object_mut().expect("spec");
    let dns = spec.remove("dnsNames").expect("dnsNames");
    spec.insert("dnsName".into(), dns);
    let err = Manifests::parse("cert-manager", &values).expect_err("must be rejected");
    let msg = err.to_string();
    assert!(
        msg.contains("Certificate leash-system/leash-recommender-tls")
            && msg.contains("spec.dnsName"),
        "{msg}"
    );
}

#[test]
fn a_missing_certificate_file_is_an_error_naming_the_overlay() {
    let staged = Staged::new().unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let overlay = staged.path("overlays/self-signed");
    match render::render(&overlay) {
        Err(e @ Error::Kustomize { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&overlay.display().to_string()), "{msg}");
            assert!(msg.contains("server.pem"), "{msg}");
        }
        other => panic!("rendering without certificates must fail, got {other:?}"),
    }
}

#[test]
fn cert_manager_overlay_issues_the_secrets_the_pods_mount() {
    let m = Manifests::load(&leash_deploy::deploy_dir().join("overlays/cert-manager"))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let ds = m.daemon_set("leash-agent").expect("agent DaemonSet");
    let sts = m.stateful_set("leash-recommender").expect("StatefulSet");
    let agent_pod = ds.spec.template.spec.as_ref();
    let rec_pod = sts.spec.template.spec.as_ref();
    let agent_secrets = mounted_secrets(agent_pod.expect("agent pod spec"));
    let rec_secrets = mounted_secrets(rec_pod.expect("recommender pod spec"));
    assert_eq!(agent_secrets, set(&["leash-agent-tls"]));
    assert_eq!(rec_secrets, set(&["leash-recommender-tls"]));

    let certs: Vec<_> = m.certificates().collect();
    let by_secret = |s: &str| {
        certs
            .iter()
            .find(|c| c.spec.secret_name == s)
            .unwrap_or_else(|| panic!("no Certificate writes Secret {s}"))
    };
    let ca = by_secret("leash-ca");
    assert_eq!(ca.spec.is_ca, Some(true));
    // The CA Issuer signs with the CA certificate's Secret; both leaves use it.
    let ca_issuer = m
        .issuers()
        .find(|i| {
            i.spec
                .ca
                .as_ref()
                .is_some_and(|c| c.secret_name == "leash-ca")
        })
        .expect("an Issuer signing with leash-ca");
    let ca_issuer_name = ca_issuer.metadata.name.clone().expect("issuer name");
    let server = by_secret("leash-recommender-tls");
    let agent = by_secret("leash-agent-tls");
    for leaf in [server, agent] {
        assert_eq!(leaf.spec.issuer_ref.name, ca_issuer_name);
        assert_ne!(leaf.spec.is_ca, Some(true));
    }
    // The server certificate covers the host in the agents' --recommender URL.
    let args = ds.spec.template.spec.as_ref().expect("pod").containers[0]
        .args
        .clone()
        .unwrap_or_default();
    let url = args
        .iter()
        .skip_while(|a| *a != "--recommender")
        .nth(1)
        .expect("--recommender URL");
    let host = url
        .strip_prefix("https://")
        .and_then(|h| h.split(':').next())
        .expect("an https URL with a host");
    assert!(
        server.spec.dns_names.iter().flatten().any(|n| n == host),
        "server certificate {:?} lacks {host}",
        server.spec.dns_names
    );
    let usages = |c: &leash_deploy::certmanager::Certificate| -> BTreeSet<String> {
        c.spec.usages.iter().flatten().cloned().collect()
    };
    assert!(usages(server).contains("server auth"));
    assert!(!usages(server).contains("client auth"));
    assert!(usages(agent).contains("client auth"));
    assert!(!usages(agent).contains("server auth"));
}

#[test]
fn self_signed_overlay_packs_the_generated_files_into_the_mounted_secrets() {
    let staged = Staged::new().unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let files = staged
        .generate_certs()
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let pem = |name: &str| {
        files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_bytes().to_vec())
            .expect("generated file")
    };
    let m = Manifests::load(&staged.path("overlays/self-signed"))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let secrets: Vec<_> = m.secrets().collect();
    assert_eq!(secrets.len(), 2);
    let find = |prefix: &str| {
        secrets
            .iter()
            .find(|s| {
                s.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("no Secret {prefix}-*"))
    };
    for (prefix, cert, key) in [
        ("leash-recommender-tls-", "server.pem", "server-key.pem"),
        ("leash-agent-tls-", "leash-agent.pem", "leash-agent-key.pem"),
    ] {
        let s = find(prefix);
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = s.data.as_ref().expect("data");
        assert_eq!(data["tls.crt"].0, pem(cert), "{prefix} tls.crt");
        assert_eq!(data["tls.key"].0, pem(key), "{prefix} tls.key");
        assert_eq!(data["ca.crt"].0, pem("ca.pem"), "{prefix} ca.crt");
    }
    // kustomize renamed the Secrets (content hash) and rewrote the pods' references.
    let agent_pod = m
        .daemon_set("leash-agent")
        .and_then(|d| d.spec.template.spec.as_ref())
        .expect("agent pod");
    let rec_pod = m
        .stateful_set("leash-recommender")
        .and_then(|s| s.spec.template.spec.as_ref())
        .expect("recommender pod");
    let name_of = |prefix: &str| find(prefix).metadata.name.clone().expect("name");
    assert_eq!(
        mounted_secrets(agent_pod),
        BTreeSet::from([name_of("leash-agent-tls-")])
    );
    assert_eq!(
        mounted_secrets(rec_pod),
        BTreeSet::from([name_of("leash-recommender-tls-")])
    );
}

#[test]
fn self_signed_overlay_reads_exactly_what_leash_certs_writes() {
    // The files `leash certs --out … --server-name … --client leash-agent` writes, from its own
    // code, are the ones the overlay's secretGenerator reads; the CA key stays out of the
    // cluster.
    let staged = Staged::new().unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let certs = staged.path("overlays/self-signed/certs");
    leash::certs::generate(
        &certs,
        &[stage::SERVER_NAME.to_owned()],
        &[stage::CLIENT_NAME.to_owned()],
    )
    .unwrap_or_else(|e| panic!("leash certs: {e}"));
    let m = Manifests::load(&staged.path("overlays/self-signed"))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let read = |name: &str| fs::read(certs.join(name)).expect("a file leash certs wrote");
    let ca_key = read("ca-key.pem");
    let mut packed = Vec::new();
    for s in m.secrets() {
        for (key, value) in s.data.iter().flatten() {
            assert_ne!(value.0, ca_key, "the CA key must not be packed ({key})");
            packed.push(value.0.clone());
        }
    }
    for file in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "leash-agent.pem",
        "leash-agent-key.pem",
    ] {
        assert!(packed.contains(&read(file)), "{file} is not in any Secret");
    }
}

/// The pull-requests component: `leash serve` gets `--pr-repo` and reads its token from a file
/// of the Secret it mounts, read-only; the clones go to the store's volume (no `--state-dir`:
/// the store's directory), since the root file system is read-only.
#[test]
fn pull_requests_component_mounts_the_token_file_it_names() {
    let m = leash_deploy::stage::with_component("pull-requests")
        .unwrap_or_else(|e| panic!("{}", leash_records::error::Chain(&e)));
    let spec = m
        .stateful_set("leash-recommender")
        .and_then(|s| s.spec.template.spec.as_ref())
        .expect("the recommender's pod spec");
    let container = &spec.containers[0];
    let args = container.args.clone().unwrap_or_default();
    let value = |flag: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{flag}=")))
            .map(str::to_owned)
    };
    assert!(value("--pr-repo").is_some(), "{args:?}");
    assert!(
        args.iter().all(|a| !a.starts_with("--state-dir")),
        "{args:?}"
    );
    let token = value("--pr-token-file").expect("--pr-token-file");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|v| token.starts_with(&format!("{}/", v.mount_path)))
        .expect("the token file's directory is mounted");
    assert_eq!(mount.read_only, Some(true));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("the mounted volume");
    assert_eq!(
        volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref()),
        Some("leash-git-token")
    );
    assert!(mounted_secrets(spec).contains("leash-git-token"));
    // The store's directory, where the clones go, is the data volume.
    let store = value("--store").or_else(|| {
        args.iter()
            .position(|a| a == "--store")
            .and_then(|i| args.get(i + 1).cloned())
    });
    let store = store.expect("--store");
    assert!(
        container
            .volume_mounts
            .iter()
            .flatten()
            .any(|v| v.name == "data" && store.starts_with(&format!("{}/", v.mount_path))),
        "{store}"
    );
}
