//! The security invariants of the agent DaemonSet and the recommender StatefulSet, checked
//! in the base and in every overlay (an overlay must not weaken them).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash_deploy::{Manifests, stage};
use leash_records::error::Chain;

fn renderings() -> Vec<Manifests> {
    stage::every_rendering().unwrap_or_else(|e| panic!("{}", Chain(&e)))
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn agent_pod(m: &Manifests) -> &PodSpec {
    m.daemon_set("leash-agent")
        .and_then(|d| d.spec.template.spec.as_ref())
        .unwrap_or_else(|| panic!("{}: no leash-agent pod template", m.source))
}

fn recommender_pod(m: &Manifests) -> &PodSpec {
    m.pod_spec("leash-recommender")
        .unwrap_or_else(|| panic!("{}: no leash-recommender pod template", m.source))
}

/// Every container, init containers included: an init container must not escape the rules.
fn all_containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.init_containers.iter().flatten().chain(&pod.containers)
}

/// The value following `flag` in `args`.
fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn port_of(addr: &str) -> i32 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr}: no port"))
}

/// Container ports by name.
fn ports(c: &Container) -> BTreeMap<String, i32> {
    c.ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect()
}

/// Checks what both workloads share: no host namespaces, seccomp RuntimeDefault, no
/// privilege, no escalation, a read-only root, all capabilities dropped, resources bounded.
fn common_invariants(source: &str, what: &str, pod: &PodSpec) {
    let ctx = format!("{source}: {what}");
    assert_ne!(pod.host_pid, Some(true), "{ctx}: hostPID");
    assert_ne!(pod.host_network, Some(true), "{ctx}: hostNetwork");
    assert_ne!(pod.host_ipc, Some(true), "{ctx}: hostIPC");
    let seccomp = pod
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| p.type_.as_str());
    assert_eq!(seccomp, Some("RuntimeDefault"), "{ctx}: pod seccompProfile");
    for c in all_containers(pod) {
        let ctx = format!("{ctx}, container {}", c.name);
        let sc = c
            .security_context
            .as_ref()
            .unwrap_or_else(|| panic!("{ctx}: no securityContext"));
        assert_ne!(sc.privileged, Some(true), "{ctx}: privileged");
        assert_eq!(
            sc.allow_privilege_escalation,
            Some(false),
            "{ctx}: allowPrivilegeEscalation"
        );
        assert_eq!(
            sc.read_only_root_filesystem,
            Some(true),
            "{ctx}: readOnlyRootFilesystem"
        );
        if let Some(p) = &sc.seccomp_profile {
            assert_eq!(p.type_, "RuntimeDefault", "{ctx}: container seccompProfile");
        }
        let drop: Vec<&str> = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.drop.as_ref())
            .map(|d| d.iter().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(drop, ["ALL"], "{ctx}: capabilities.drop");
        let resources = c
            .resources
            .as_ref()
            .unwrap_or_else(|| panic!("{ctx}: no resources"));
        for (what, list) in [
            ("requests", &resources.requests),
            ("limits", &resources.limits),
        ] {
            assert!(
                list.as_ref().is_some_and(|l| l.contains_key("memory")),
                "{ctx}: no memory {what}"
            );
        }
        for p in c.ports.iter().flatten() {
            assert_eq!(p.host_port, None, "{ctx}: hostPort");
        }
    }
}

#[test]
fn agent_daemonset_runs_with_exactly_three_capabilities_and_two_host_paths() {
    for m in renderings() {
        let pod = agent_pod(&m);
        common_invariants(&m.source, "agent", pod);
        let ctx = &m.source;
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("leash-agent"),
            "{ctx}"
        );
        assert_eq!(pod.containers.len(), 1, "{ctx}: one container");
        assert!(pod.init_containers.is_none(), "{ctx}: no init containers");
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().expect("checked above");
        let add: BTreeSet<String> = sc
            .capabilities
            .as_ref()
            .and_then(|c| c.add.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        assert_eq!(
            add,
            set(&["BPF", "PERFMON", "NET_ADMIN"]),
            "{ctx}: capabilities.add"
        );

        // Host paths: exactly the cgroup v2 hierarchy and the BPF filesystem.
        let host_paths: BTreeMap<String, String> = pod
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
            .collect();
        let paths: BTreeSet<String> = host_paths.values().cloned().collect();
        assert_eq!(
            paths,
            set(&["/sys/fs/cgroup", "/sys/fs/bpf"]),
            "{ctx}: hostPath volumes"
        );
        // Every other volume is a Secret (the TLS material) or the projected token.
        for v in pod.volumes.iter().flatten() {
            assert!(
                v.host_path.is_some() || v.secret.is_some() || v.name == "leash-token",
                "{ctx}: unexpected volume {v:?}"
            );
        }
        for mount in c.volume_mounts.iter().flatten() {
            if host_paths.get(&mount.name).map(String::as_str) == Some("/sys/fs/cgroup") {
                assert_eq!(
                    mount.read_only,
                    Some(true),
                    "{ctx}: cgroup mount must be read-only"
                );
            }
        }

        // The node name comes from the downward API.
        let node = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "NODE_NAME")
            .unwrap_or_else(|| panic!("{ctx}: no NODE_NAME"));
        let field = node
            .value_from
            .as_ref()
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(field, Some("spec.nodeName"), "{ctx}: NODE_NAME source");
        assert!(node.value.is_none());

        // Runs on every node: one toleration matching every taint.
        assert!(
            pod.tolerations.iter().flatten().any(|t| {
                t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
            }),
            "{ctx}: must tolerate every taint"
        );

        // The metrics port is the one --metrics-addr binds.
        let args = c.args.clone().unwrap_or_default();
        let metrics = arg(&args, "--metrics-addr").expect("--metrics-addr");
        assert_eq!(ports(c).get("metrics"), Some(&port_of(metrics)), "{ctx}");
        assert!(args.contains(&"--kube".to_owned()), "{ctx}: --kube");
    }
}

/// The agent proves its node to the recommender with a projected ServiceAccount token for
/// audience `leash` only (never the API server's), short-lived, read from the file
/// `--token-file` names; the recommender asks for it (`--agent-auth token`) and its RBAC
/// lets it review tokens.
#[test]
fn agents_send_a_short_lived_token_for_audience_leash_that_the_recommender_requires() {
    for m in renderings() {
        let ctx = &m.source;
        let pod = agent_pod(&m);
        let volume = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "leash-token")
            .unwrap_or_else(|| panic!("{ctx}: no leash-token volume"));
        let projected = volume
            .projected
            .as_ref()
            .unwrap_or_else(|| panic!("{ctx}: leash-token is not a projected volume"));
        let sources = projected.sources.as_deref().unwrap_or_default();
        assert_eq!(sources.len(), 1, "{ctx}: one source, the token alone");
        let token = sources[0]
            .service_account_token
            .as_ref()
            .unwrap_or_else(|| panic!("{ctx}: the source is no serviceAccountToken"));
        assert_eq!(
            token.audience.as_deref(),
            Some(leash::ingest::identity::AUDIENCE),
            "{ctx}: audience"
        );
        let expiry = token.expiration_seconds.expect("expirationSeconds");
        // The API server's minimum is 600 s; an hour keeps a stolen token short-lived.
        assert!(
            (600..=3600).contains(&expiry),
            "{ctx}: expirationSeconds {expiry}"
        );

        let c = &pod.containers[0];
        let mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "leash-token")
            .unwrap_or_else(|| panic!("{ctx}: leash-token not mounted"));
        assert_eq!(mount.read_only, Some(true), "{ctx}: token mount read-only");
        let args = c.args.clone().unwrap_or_default();
        let file = arg(&args, "--token-file").unwrap_or_else(|| panic!("{ctx}: no --token-file"));
        assert_eq!(
            file,
            format!("{}/{}", mount.mount_path, token.path),
            "{ctx}: --token-file is the projected file"
        );

        let recommender = &recommender_pod(&m).containers[0];
        let args = recommender.args.clone().unwrap_or_default();
        assert!(args.contains(&"--kube".to_owned()), "{ctx}: serve --kube");
        assert_eq!(
            arg(&args, "--agent-auth"),
            Some("token"),
            "{ctx}: serve --agent-auth"
        );
        // The agents' user the recommender expects is the DaemonSet's ServiceAccount.
        let expected = arg(&args, "--agent-service-account")
            .unwrap_or(leash::ingest::identity::DEFAULT_AGENT_USER);
        let namespace = m
            .daemon_set("leash-agent")
            .and_then(|d| d.metadata.namespace.clone())
            .unwrap_or_default();
        let account = pod.service_account_name.clone().unwrap_or_default();
        assert_eq!(
            expected,
            format!("system:serviceaccount:{namespace}:{account}"),
            "{ctx}: the agents' user"
        );
    }
}

#[test]
fn capabilities_in_the_agent_manifest_each_carry_their_reason() {
    let text = std::fs::read_to_string(leash_deploy::base_dir().join("agent.yaml"))
        .expect("reading agent.yaml");
    let lines: Vec<&str> = text.lines().collect();
    for cap in ["BPF", "PERFMON", "NET_ADMIN"] {
        let at = lines
            .iter()
            .position(|l| l.trim() == format!("- {cap}"))
            .unwrap_or_else(|| panic!("agent.yaml: no `- {cap}` line"));
        let comment = lines[..at]
            .iter()
            .rev()
            .take_while(|l| l.trim_start().starts_with('#'))
            .count();
        assert!(
            comment > 0,
            "agent.yaml: `- {cap}` has no comment giving its reason"
        );
        assert!(
            lines[at - 1].contains(&format!("CAP_{cap}"))
                || lines[at - comment].contains(&format!("CAP_{cap}")),
            "agent.yaml: the comment above `- {cap}` must name CAP_{cap}"
        );
    }
}

#[test]
fn recommender_statefulset_is_non_root_and_keeps_its_store_on_a_volume() {
    // The HA overlay runs a Deployment on PostgreSQL instead: `ha_overlay_*` below.
    for m in renderings()
        .into_iter()
        .filter(|m| m.deployment("leash-recommender").is_none())
    {
        let ctx = &m.source;
        let sts = m.stateful_set("leash-recommender").expect("StatefulSet");
        let spec = &sts.spec;
        assert_eq!(spec.replicas, Some(1), "{ctx}: one writer for SQLite");
        let pod = recommender_pod(&m);
        common_invariants(ctx, "recommender", pod);
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("leash-recommender")
        );
        let psc = pod.security_context.as_ref().expect("pod securityContext");
        assert_eq!(psc.run_as_non_root, Some(true), "{ctx}: runAsNonRoot");
        assert!(psc.run_as_user.is_some_and(|u| u != 0), "{ctx}: runAsUser");
        for v in pod.volumes.iter().flatten() {
            assert!(v.host_path.is_none(), "{ctx}: recommender has no hostPath");
        }
        let c = pod
            .containers
            .iter()
            .find(|c| c.name == "recommender")
            .expect("recommender container");
        let sc = c.security_context.as_ref().expect("checked");
        assert!(
            sc.capabilities
                .as_ref()
                .and_then(|c| c.add.as_ref())
                .is_none_or(Vec::is_empty),
            "{ctx}: the recommender adds no capability"
        );
        assert_ne!(sc.run_as_user, Some(0), "{ctx}");

        // The store lives on the PVC.
        let args = c.args.clone().unwrap_or_default();
        assert_eq!(args.first().map(String::as_str), Some("serve"), "{ctx}");
        assert!(args.contains(&"--kube".to_owned()), "{ctx}: --kube");
        let store = arg(&args, "--store").expect("--store");
        let claims: BTreeSet<String> = spec
            .volume_claim_templates
            .iter()
            .flatten()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let data_mount = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|vm| claims.contains(&vm.name))
            .unwrap_or_else(|| panic!("{ctx}: no mount of a volumeClaimTemplate"));
        assert_eq!(data_mount.mount_path, "/var/lib/leash");
        assert!(
            store.starts_with("/var/lib/leash/"),
            "{ctx}: --store {store}"
        );

        // Ports, probes and the addresses the server binds agree.
        let named = ports(c);
        assert_eq!(named.get("grpc"), Some(&7443), "{ctx}");
        assert_eq!(named.get("http"), Some(&8080), "{ctx}");
        assert_eq!(
            Some(port_of(arg(&args, "--listen").expect("--listen"))),
            named.get("grpc").copied()
        );
        assert_eq!(
            Some(port_of(arg(&args, "--http").expect("--http"))),
            named.get("http").copied()
        );
        // The UI and /v1 (the egress inventory) listen on the pod's loopback only, reached
        // with `kubectl port-forward` (RBAC-checked); exposing them needs --ui-auth.
        assert_eq!(named.get("ui"), Some(&8081), "{ctx}");
        let ui: std::net::SocketAddr = arg(&args, "--ui-listen")
            .expect("--ui-listen")
            .parse()
            .expect("--ui-listen is an address");
        assert!(ui.ip().is_loopback(), "{ctx}: --ui-listen {ui}");
        assert_eq!(Some(i32::from(ui.port())), named.get("ui").copied());
        assert!(
            !args.contains(&"--ui-auth".to_owned()),
            "{ctx}: loopback needs no --ui-auth, and `none` must not be set"
        );
        for (probe, path) in [
            (&c.liveness_probe, "/healthz"),
            (&c.readiness_probe, "/readyz"),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{ctx}: no {path} probe"));
            assert_eq!(get.path.as_deref(), Some(path));
            assert_eq!(get.port, IntOrString::String("http".into()));
        }
    }
}

#[test]
fn tls_files_come_from_the_mounted_secret_and_the_service_matches_the_agents_url() {
    for m in renderings() {
        let ctx = &m.source;
        for (pod, flags) in [
            (agent_pod(&m), &["--tls-ca", "--tls-cert", "--tls-key"][..]),
            (
                recommender_pod(&m),
                &["--tls-client-ca", "--tls-cert", "--tls-key"][..],
            ),
        ] {
            let c = &pod.containers[0];
            let secret_volumes: BTreeSet<&str> = pod
                .volumes
                .iter()
                .flatten()
                .filter(|v| v.secret.is_some())
                .map(|v| v.name.as_str())
                .collect();
            let mount = c
                .volume_mounts
                .iter()
                .flatten()
                .find(|vm| secret_volumes.contains(vm.name.as_str()))
                .unwrap_or_else(|| panic!("{ctx}: {}: no Secret mounted", c.name));
            let args = c.args.clone().unwrap_or_default();
            for flag in flags {
                let file = arg(&args, flag).unwrap_or_else(|| panic!("{ctx}: {} {flag}", c.name));
                assert!(
                    file.starts_with(&format!("{}/", mount.mount_path)),
                    "{ctx}: {} {flag} {file} is not in the Secret mount {}",
                    c.name,
                    mount.mount_path
                );
            }
            assert!(
                !args.contains(&"--insecure".to_owned()),
                "{ctx}: --insecure"
            );
        }

        let agent_args = agent_pod(&m).containers[0].args.clone().unwrap_or_default();
        let url = arg(&agent_args, "--recommender").expect("--recommender");
        let svc = m
            .service("leash-recommender")
            .expect("Service leash-recommender");
        let svc_ns = svc.metadata.namespace.as_deref().expect("namespace");
        let rest = url.strip_prefix("https://").expect("https URL");
        let (host, port) = rest.split_once(':').expect("host:port");
        assert_eq!(host, format!("leash-recommender.{svc_ns}.svc"), "{ctx}");
        let spec = svc.spec.as_ref().expect("service spec");
        let grpc = spec
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("grpc"))
            .expect("grpc service port");
        assert_eq!(grpc.port.to_string(), port, "{ctx}");
        assert_eq!(grpc.target_port, Some(IntOrString::String("grpc".into())));
        assert!(
            spec.ports
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some("http") && p.port == 8080),
            "{ctx}: http service port"
        );
        // `kubectl port-forward svc/leash-recommender 8081:ui` resolves the UI port by name.
        assert!(
            spec.ports
                .iter()
                .flatten()
                .any(|p| p.name.as_deref() == Some("ui")
                    && p.port == 8081
                    && p.target_port == Some(IntOrString::String("ui".into()))),
            "{ctx}: ui service port"
        );
        // The Service selects the recommender's pods.
        let labels = m
            .stateful_set("leash-recommender")
            .map(|s| &s.spec.template)
            .or_else(|| m.deployment("leash-recommender").map(|d| &d.spec.template))
            .and_then(|t| t.metadata.as_ref()?.labels.clone())
            .expect("pod labels");
        for (k, v) in spec.selector.iter().flatten() {
            assert_eq!(labels.get(k), Some(v), "{ctx}: selector {k}");
        }
        assert!(spec.selector.as_ref().is_some_and(|s| !s.is_empty()));
    }
}

/// The HA overlay: 3 replicas of `leash serve` as a Deployment, spread over zones and nodes,
/// a PodDisruptionBudget keeping 2, leader election with the pod's name and namespace from
/// the downward API, and the PostgreSQL URL from a Secret mounted as a file — never an
/// argument nor an environment variable.
#[test]
fn ha_overlay_runs_three_spread_replicas_reading_the_store_url_from_a_secret_file() {
    let m = leash_deploy::Manifests::load(&leash_deploy::deploy_dir().join("overlays/ha"))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    assert!(
        m.stateful_set("leash-recommender").is_none(),
        "no SQLite StatefulSet"
    );
    assert!(m.service("leash-recommender-headless").is_none());
    assert!(
        m.service("leash-recommender").is_some(),
        "agents' Service kept"
    );
    let d = m.deployment("leash-recommender").expect("Deployment");
    assert_eq!(d.spec.replicas, Some(3));
    let labels = d
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("pod labels");
    let selects_pods =
        |sel: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
            let wanted = sel.and_then(|s| s.match_labels.clone()).unwrap_or_default();
            !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
        };
    let pod = recommender_pod(&m);
    common_invariants(&m.source, "recommender", pod);

    // Spread across zones and nodes.
    let spread: BTreeSet<String> = pod
        .topology_spread_constraints
        .iter()
        .flatten()
        .inspect(|c| assert!(selects_pods(c.label_selector.as_ref()), "{c:?}"))
        .map(|c| c.topology_key.clone())
        .collect();
    assert_eq!(
        spread,
        set(&["kubernetes.io/hostname", "topology.kubernetes.io/zone"])
    );

    // Voluntary disruptions keep 2 of 3.
    let pdb = m
        .pod_disruption_budget("leash-recommender")
        .and_then(|p| p.spec.as_ref())
        .expect("PodDisruptionBudget");
    assert!(
        pdb.min_available == Some(IntOrString::Int(2))
            || pdb.max_unavailable == Some(IntOrString::Int(1)),
        "{pdb:?}"
    );
    assert!(selects_pods(pdb.selector.as_ref()));

    // Leader election, and the store URL from a file of the mounted Secret.
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap_or_default();
    assert!(args.contains(&"--leader-elect".to_owned()), "{args:?}");
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--store=") || a == "--store")
    );
    let file = arg(&args, "--store-file").expect("--store-file");
    assert_eq!(file, "/etc/leash/store/url");
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|vm| vm.mount_path == "/etc/leash/store")
        .expect("the store Secret's mount");
    assert_eq!(mount.read_only, Some(true));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.secret.as_ref())
        .expect("a Secret volume");
    assert_eq!(volume.secret_name.as_deref(), Some("leash-store"));
    let items: Vec<_> = volume
        .items
        .iter()
        .flatten()
        .map(|i| (i.key.as_str(), i.path.as_str()))
        .collect();
    assert_eq!(items, [("url", "url")]);
    for container in all_containers(pod) {
        for var in container.env.iter().flatten() {
            assert_ne!(
                var.name, "LEASH_STORE",
                "the URL never goes to the environment"
            );
            assert!(
                var.value_from
                    .as_ref()
                    .and_then(|f| f.secret_key_ref.as_ref())
                    .is_none(),
                "no Secret in the environment: {var:?}"
            );
            assert!(
                !var.value
                    .as_deref()
                    .unwrap_or_default()
                    .contains("postgres")
            );
        }
        assert!(container.env_from.is_none(), "no env from Secrets");
    }
    let downward = |name: &str| {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone())
    };
    assert_eq!(
        downward(leash::serve::leader::POD_NAME_ENV).as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        downward(leash::serve::leader::POD_NAMESPACE_ENV).as_deref(),
        Some("metadata.namespace")
    );
}
