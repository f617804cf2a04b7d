//! Cluster snapshots as `kubectl get -o yaml` writes them (a `List`), for the tests that hand
//! `leash` a `--cluster` file or load one into the read API. Each function gives one list item
//! (or a few), with the uids and the layout the tests' text edits expect; [`list`] joins them.

/// The snapshot of `items`.
pub fn list(items: &[String]) -> String {
    let mut out = String::from("\napiVersion: v1\nkind: List\nitems:\n");
    for item in items {
        out.push_str(item);
    }
    out
}

/// A Namespace with its `kubernetes.io/metadata.name` label.
pub fn namespace(name: &str) -> String {
    format!(
        "- apiVersion: v1
  kind: Namespace
  metadata: {{name: {name}, labels: {{kubernetes.io/metadata.name: {name}}}}}
"
    )
}

/// A Deployment `app` (selector `app: APP`, uid `uid-deploy-APP`) and its one running pod
/// `pod` (uid `uid-pod-APP`) at `ip` on node n1.
pub fn deployment(ns: &str, app: &str, pod: &str, ip: &str) -> String {
    let owner = format!(
        "    ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: {app}, uid: uid-deploy-{app}, controller: true}}]\n"
    );
    format!(
        "- apiVersion: apps/v1
  kind: Deployment
  metadata: {{name: {app}, namespace: {ns}, uid: uid-deploy-{app}}}
  spec:
    selector: {{matchLabels: {{app: {app}}}}}
    template:
      metadata: {{labels: {{app: {app}}}}}
      spec: {{containers: [{{name: {app}, image: {app}:1}}]}}
{}",
        pod_item(ns, app, pod, ip, &owner)
    )
}

/// A running pod `pod` labelled `app: APP` (uid `uid-pod-APP`) at `ip` on node n1, owned by
/// no controller.
pub fn bare_pod(ns: &str, app: &str, pod: &str, ip: &str) -> String {
    pod_item(ns, app, pod, ip, "")
}

fn pod_item(ns: &str, app: &str, pod: &str, ip: &str, owner: &str) -> String {
    format!(
        "- apiVersion: v1
  kind: Pod
  metadata:
    name: {pod}
    namespace: {ns}
    uid: uid-pod-{app}
    labels: {{app: {app}}}
{owner}  spec: {{nodeName: n1, containers: [{{name: {app}, image: {app}:1}}]}}
  status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"
    )
}

/// The NetworkPolicy `APP-dns-only` in `ns`: pods `app: APP` may only send DNS (53/UDP).
pub fn dns_only(ns: &str, app: &str) -> String {
    format!(
        "- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {{name: {app}-dns-only, namespace: {ns}}}
  spec:
    podSelector: {{matchLabels: {{app: {app}}}}}
    policyTypes: [Egress]
    egress:
    - ports: [{{port: 53, protocol: UDP}}]
"
    )
}

/// shop/web (pod web-x2, 198.51.100.10), locked down to DNS, and bank/`bank_app` (pod
/// `BANK_APP-y7`, 198.51.100.20): the cluster of the alert and read-API tests.
pub fn shop_web_dns_only_and_bank(bank_app: &str) -> String {
    list(&[
        namespace("shop"),
        namespace("bank"),
        deployment("shop", "web", "web-x2", "198.51.100.10"),
        deployment("bank", bank_app, &format!("{bank_app}-y7"), "198.51.100.20"),
        dns_only("shop", "web"),
    ])
}

/// Pod `frontend-N` (uid `uid-frontend-N`) of shop's Deployment `frontend`, through its
/// ReplicaSet `frontend-5d8f`, at `ip`: the web tier of the `diff` and `pr` CLI tests.
pub fn frontend_pod(n: u8, ip: &str) -> String {
    format!(
        "- apiVersion: v1
  kind: Pod
  metadata:
    name: frontend-{n}
    namespace: shop
    uid: uid-frontend-{n}
    labels: {{app: frontend, pod-template-hash: 5d8f}}
    ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: frontend-5d8f, uid: uid-rs, controller: true}}]
  spec: {{nodeName: n1, containers: [{{name: web, image: web:1}}]}}
  status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"
    )
}

/// Pod `postgres-0` of data's StatefulSet `postgres`, at 10.244.2.20 and listening on 5432.
pub fn postgres_pod() -> String {
    "- apiVersion: v1
  kind: Pod
  metadata:
    name: postgres-0
    namespace: data
    uid: uid-postgres-0
    labels: {app: postgres}
    ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: postgres, uid: uid-sts, controller: true}]
  spec: {nodeName: n1, containers: [{name: pg, image: pg:1, ports: [{containerPort: 5432}]}]}
  status: {phase: Running, podIP: 10.244.2.20, podIPs: [{ip: 10.244.2.20}]}
"
    .to_owned()
}

/// Service data/postgres (10.96.0.20:5432) in front of [`postgres_pod`].
pub fn postgres_service() -> String {
    "- apiVersion: v1
  kind: Service
  metadata: {name: postgres, namespace: data}
  spec:
    clusterIP: 10.96.0.20
    selector: {app: postgres}
    ports: [{port: 5432, targetPort: 5432, protocol: TCP}]
"
    .to_owned()
}
