//! Who an agent is, and which node's batches it may write (`leash serve --agent-auth`).
//!
//! With `--agent-auth mtls` every agent holding the shared client certificate may write for
//! any node. With `--agent-auth token` (the default with `--kube`) each stream carries the
//! agent's projected ServiceAccount token (audience [`AUDIENCE`]) as `authorization: Bearer`
//! metadata, besides mutual TLS:
//! - the token is reviewed with the API server (TokenReview for `["leash"]`, through
//!   `crate::kube_review`, the UI's client too); no token or one the API server does not
//!   authenticate for that audience is `UNAUTHENTICATED`, an API server that cannot be asked
//!   `UNAVAILABLE` (the agent retries);
//! - the user must be the agents' ServiceAccount (`--agent-service-account`, default
//!   [`DEFAULT_AGENT_USER`]) and the token bound to a node: its `extra`
//!   [`NODE_NAME_EXTRA`], which the kubelet's node-bound projected tokens carry; otherwise
//!   `PERMISSION_DENIED` before any batch is read;
//! - every batch whose id names another node is refused with `PERMISSION_DENIED`, permanent:
//!   the agent drops it and never resends it (counted by both sides).
//!
//! Verdicts are cached per token digest for [`VERDICT_TTL`] (at most [`MAX_CACHED`] tokens),
//! and a stream's token is checked again when its verdict expires, so a stream outlives
//! neither its token nor its pod by more than that. The token is never logged.
//!
//! The checks that decide ([`caller`], [`check_node`], [`bearer`], [`decide`]) are pure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::UserInfo;
use leash_records::access::ApiAccess;
use leash_records::error::Chain;
use leash_records::names;
use leash_records::wire::v1;
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::kube_review::{self, Token};

/// The audience agents' projected tokens are minted for, and reviewed with.
pub const AUDIENCE: &str = "leash";

/// The user `extra` of a node-bound ServiceAccount token that names its node (Kubernetes
/// 1.30+ adds it to tokens bound to a pod scheduled on a node).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// The agents' user: the ServiceAccount `leash-agent` of `leash-system`, as `deploy/base`
/// runs the DaemonSet.
pub const DEFAULT_AGENT_USER: &str = "system:serviceaccount:leash-system:leash-agent";

/// How long a token's verdict is reused before the API server is asked again.
pub const VERDICT_TTL: Duration = Duration::from_secs(60);

/// At most this many tokens' verdicts are cached (one per agent).
pub const MAX_CACHED: usize = 16_384;

/// The permissions `--agent-auth token` uses: `create` on TokenReviews, nothing else.
pub const AGENT_REVIEW_ACCESS: &[ApiAccess] = &[ApiAccess {
    group: "authentication.k8s.io",
    resource: "tokenreviews",
    verbs: &["create"],
}];

/// The causes of a refused stream ([`Refusal::cause`] of every refusal but
/// [`Refusal::WrongNode`], a rejected batch): `leash_ingest_refused_streams_total{cause}`.
pub const STREAM_CAUSES: [&str; 5] = [
    "no_token",
    "invalid_token",
    "wrong_identity",
    "no_node",
    "review_unavailable",
];

/// How agents are identified (`--agent-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAuth {
    /// The shared client certificate only: any agent may write for any node.
    Mtls,
    /// The ServiceAccount token too, reviewed with the API server, binding batches to a node.
    Token,
}

impl std::fmt::Display for AgentAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentAuth::Mtls => "mtls",
            AgentAuth::Token => "token",
        })
    }
}

impl std::str::FromStr for AgentAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mtls" => Ok(AgentAuth::Mtls),
            "token" => Ok(AgentAuth::Token),
            other => Err(format!("{other:?}: expected token or mtls")),
        }
    }
}

/// How `leash serve` identifies agents (`--agent-auth`, `--agent-service-account`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// `--agent-auth`; `None`: [`decide`] picks by the cluster source.
    pub mode: Option<AgentAuth>,
    /// The agents' user (`system:serviceaccount:NAMESPACE:NAME`).
    pub user: String,
}

impl Default for Options {
    /// The mode decided by the cluster source, the agents of `deploy/base`.
    fn default() -> Self {
        Options {
            mode: None,
            user: DEFAULT_AGENT_USER.to_owned(),
        }
    }
}

/// `--agent-auth token` without an API server to review tokens.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "--agent-auth token needs the API server (--kube) to review the agents' tokens: with \
     --cluster FILE there is none; use --kube, or --agent-auth mtls"
)]
pub struct NoApiServer;

/// The mode: `requested` when given, else `token` with an API server (`--kube`) and `mtls`
/// without one (`--cluster FILE`).
pub fn decide(requested: Option<AgentAuth>, api_server: bool) -> Result<AgentAuth, NoApiServer> {
    match (requested, api_server) {
        (Some(AgentAuth::Token), false) => Err(NoApiServer),
        (Some(mode), _) => Ok(mode),
        (None, true) => Ok(AgentAuth::Token),
        (None, false) => Ok(AgentAuth::Mtls),
    }
}

/// Why a stream or a batch is refused. The messages never hold the token.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The stream carries no `authorization: Bearer` metadata (or a malformed one).
    #[error("no bearer token: send the agent's ServiceAccount token (--token-file)")]
    NoToken,
    /// The API server does not authenticate the token for audience `leash` (expired, of a
    /// deleted pod, or minted for another audience).
    #[error("the token is not valid for audience {AUDIENCE:?}")]
    InvalidToken,
    /// The token is valid but not the agents' ServiceAccount's.
    #[error("{user:?} is not the agents' ServiceAccount {expected:?}")]
    WrongIdentity {
        /// The token's user (escaped when shown).
        user: String,
        /// `--agent-service-account`.
        expected: String,
    },
    /// The token is the agents' but names no node (not a node-bound projected token).
    #[error(
        "the token of {user:?} names no node (extra {NODE_NAME_EXTRA}): mount a projected \
         ServiceAccount token (Kubernetes 1.30 or later binds it to the node)"
    )]
    NoNode {
        /// The token's user.
        user: String,
    },
    /// A batch whose id names another node than the caller's token.
    #[error("{batch}: node {node:?} is not the caller's node {caller:?} (its token's)")]
    WrongNode {
        /// The batch, as ingest names it.
        batch: String,
        /// The node the batch claims.
        node: String,
        /// The node of the caller's token.
        caller: String,
    },
    /// The API server could not review the token: retry later.
    #[error("cannot review the agent's token with the API server; retry")]
    Unavailable(#[source] kube_review::Error),
}

impl Refusal {
    /// The gRPC status: `UNAUTHENTICATED`, `PERMISSION_DENIED` (permanent) or `UNAVAILABLE`.
    pub fn status(&self) -> Status {
        let message = Chain(self).to_string();
        match self {
            Refusal::NoToken | Refusal::InvalidToken => Status::unauthenticated(message),
            Refusal::WrongIdentity { .. } | Refusal::NoNode { .. } | Refusal::WrongNode { .. } => {
                Status::permission_denied(message)
            }
            Refusal::Unavailable(_) => Status::unavailable(message),
        }
    }

    /// The `cause` label it is counted under.
    pub fn cause(&self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::InvalidToken => "invalid_token",
            Refusal::WrongIdentity { .. } => "wrong_identity",
            Refusal::NoNode { .. } => "no_node",
            Refusal::WrongNode { .. } => "wrong_node",
            Refusal::Unavailable(_) => "review_unavailable",
        }
    }
}

/// The stream's bearer token: the one `authorization` value, `Bearer TOKEN`.
pub fn bearer(metadata: &MetadataMap) -> Result<Token, Refusal> {
    let mut values = metadata.get_all("authorization").iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(Token::from_bearer)
            .ok_or(Refusal::NoToken),
        _ => Err(Refusal::NoToken),
    }
}

/// The node an authenticated `user` writes for: it must be `expected` (the agents'
/// ServiceAccount) and name exactly one node that is a valid node name.
pub fn caller(user: &UserInfo, expected: &str) -> Result<String, Refusal> {
    let name = user.username.clone().unwrap_or_default();
    if name != expected {
        return Err(Refusal::WrongIdentity {
            user: bounded(&name),
            expected: expected.to_owned(),
        });
    }
    let nodes = user.extra.as_ref().and_then(|e| e.get(NODE_NAME_EXTRA));
    match nodes.map(Vec::as_slice) {
        Some([node]) if names::dns1123_subdomain(node).is_ok() => Ok(node.clone()),
        _ => Err(Refusal::NoNode { user: name }),
    }
}

/// Whether a batch with `id` may come from a caller of node `caller`.
pub fn check_node(caller: &str, id: Option<&v1::BatchId>, batch: &str) -> Result<(), Refusal> {
    match id {
        Some(id) if id.node == caller => Ok(()),
        // A batch without an id is malformed, refused as such by the checks after this.
        None => Ok(()),
        Some(id) => Err(Refusal::WrongNode {
            batch: batch.to_owned(),
            node: bounded(&id.node),
            caller: caller.to_owned(),
        }),
    }
}

/// At most 253 characters of a name from a token or a batch, for a message (which shows it
/// with `{:?}`, escaped).
fn bounded(name: &str) -> String {
    name.chars().take(names::MAX_SUBDOMAIN).collect()
}

/// Who a stream's caller is, once authenticated.
#[derive(Debug, Clone)]
pub enum Caller {
    /// `--agent-auth mtls`: a holder of the client certificate, writing for any node.
    Any,
    /// An agent's token, for this node.
    Node {
        /// The node of its token.
        node: String,
        /// The token, checked again when its verdict expires.
        token: Token,
    },
}

impl Caller {
    /// The caller's node, for logs.
    pub fn node(&self) -> Option<&str> {
        match self {
            Caller::Any => None,
            Caller::Node { node, .. } => Some(node),
        }
    }
}

/// The agents' authentication of one ingest service.
pub struct Identity {
    mode: Mode,
}

enum Mode {
    Mtls,
    Token(Box<TokenCheck>),
}

struct TokenCheck {
    client: kube::Client,
    expected: String,
    /// How long a verdict is reused ([`VERDICT_TTL`]).
    ttl: Duration,
    verdicts: Mutex<HashMap<[u8; 32], Verdict>>,
}

/// A cached TokenReview: the user, or `None` for a token the API server refused.
struct Verdict {
    at: Instant,
    user: Option<Arc<UserInfo>>,
}

impl Identity {
    /// `--agent-auth mtls`: the client certificate is the only check.
    pub fn mtls() -> Self {
        Identity { mode: Mode::Mtls }
    }

    /// `--agent-auth token`: tokens reviewed through `client`, of user `expected`.
    pub fn token(client: kube::Client, expected: String) -> Self {
        Identity {
            mode: Mode::Token(Box::new(TokenCheck {
                client,
                expected,
                ttl: VERDICT_TTL,
                verdicts: Mutex::default(),
            })),
        }
    }

    /// Reuses token verdicts for `ttl` instead of [`VERDICT_TTL`] (tests of expiry).
    pub fn with_verdict_ttl(mut self, ttl: Duration) -> Self {
        if let Mode::Token(check) = &mut self.mode {
            check.ttl = ttl;
        }
        self
    }

    /// The mode, as `--agent-auth` names it.
    pub fn mode(&self) -> AgentAuth {
        match self.mode {
            Mode::Mtls => AgentAuth::Mtls,
            Mode::Token(_) => AgentAuth::Token,
        }
    }

    /// The caller of a stream with `metadata`.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller, Refusal> {
        match &self.mode {
            Mode::Mtls => Ok(Caller::Any),
            Mode::Token(check) => {
                let token = bearer(metadata)?;
                let node = check.node(&token).await?;
                Ok(Caller::Node { node, token })
            }
        }
    }

    /// Whether `caller` may write the batch with `id` (named `batch`): its token is still
    /// valid (reviewed again once its verdict expired) and its node is the batch's.
    pub async fn authorize(
        &self,
        caller: &Caller,
        id: Option<&v1::BatchId>,
        batch: &str,
    ) -> Result<(), Refusal> {
        match (&self.mode, caller) {
            (Mode::Token(check), Caller::Node { token, .. }) => {
                let node = check.node(token).await?;
                check_node(&node, id, batch)
            }
            // A stream authenticated without a token in token mode cannot exist; refuse.
            (Mode::Token(_), Caller::Any) => Err(Refusal::NoToken),
            (Mode::Mtls, _) => Ok(()),
        }
    }
}

impl TokenCheck {
    fn cache(&self) -> MutexGuard<'_, HashMap<[u8; 32], Verdict>> {
        self.verdicts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The node `token` writes for: its verdict (cached, or a TokenReview), then [`caller`].
    async fn node(&self, token: &Token) -> Result<String, Refusal> {
        let key = token.digest();
        let cached = {
            let cache = self.cache();
            cache
                .get(&key)
                .filter(|v| v.at.elapsed() < self.ttl)
                .map(|v| v.user.clone())
        };
        let user = match cached {
            Some(user) => user,
            None => {
                let user = kube_review::review_token(&self.client, token, &[AUDIENCE])
                    .await
                    .map_err(Refusal::Unavailable)?
                    .map(Arc::new);
                remember(
                    &mut self.cache(),
                    key,
                    user.clone(),
                    Instant::now(),
                    self.ttl,
                );
                user
            }
        };
        let user = user.ok_or(Refusal::InvalidToken)?;
        caller(&user, &self.expected)
    }
}

/// Caches `user` under `key` at `now`, making room when full: verdicts older than `ttl` go
/// first, then the oldest.
fn remember(
    cache: &mut HashMap<[u8; 32], Verdict>,
    key: [u8; 32],
    user: Option<Arc<UserInfo>>,
    now: Instant,
    ttl: Duration,
) {
    if !cache.contains_key(&key) && cache.len() >= MAX_CACHED {
        cache.retain(|_, v| now.duration_since(v.at) < ttl);
        if cache.len() >= MAX_CACHED
            && let Some(oldest) = cache.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| *k)
        {
            cache.remove(&oldest);
        }
    }
    cache.insert(key, Verdict { at: now, user });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tonic::Code;

    fn user(name: &str, nodes: &[&str]) -> UserInfo {
        let mut extra = BTreeMap::new();
        if !nodes.is_empty() {
            extra.insert(
                NODE_NAME_EXTRA.to_owned(),
                nodes.iter().map(|n| (*n).to_owned()).collect(),
            );
        }
        UserInfo {
            username: Some(name.to_owned()),
            extra: Some(extra),
            ..UserInfo::default()
        }
    }

    #[test]
    fn the_caller_is_the_agents_service_account_bound_to_one_node() {
        let agent = DEFAULT_AGENT_USER;
        assert_eq!(
            caller(&user(agent, &["node-a"]), agent).ok(),
            Some("node-a".to_owned())
        );
        let other = "system:serviceaccount:shop:web";
        let e = caller(&user(other, &["node-a"]), agent).expect_err("another account");
        assert_eq!(e.cause(), "wrong_identity");
        assert_eq!(e.status().code(), Code::PermissionDenied);
        assert!(e.to_string().contains(other) && e.to_string().contains(agent));
        for nodes in [&[][..], &["a", "b"], &[""], &["Node_A"]] {
            let e = caller(&user(agent, nodes), agent).expect_err("no single node");
            assert_eq!(e.cause(), "no_node", "{nodes:?}");
            assert_eq!(e.status().code(), Code::PermissionDenied);
        }
        let no_extra = UserInfo {
            username: Some(agent.to_owned()),
            ..UserInfo::default()
        };
        assert_eq!(
            caller(&no_extra, agent).expect_err("no extra").cause(),
            "no_node"
        );
    }

    #[test]
    fn a_batch_of_another_node_is_refused_for_good() {
        let id = |node: &str| v1::BatchId {
            node: node.to_owned(),
            boot_id: "b".into(),
            seq: 1,
        };
        assert!(check_node("node-a", Some(&id("node-a")), "batch node-a/b/1").is_ok());
        assert!(check_node("node-a", None, "batch without id").is_ok());
        let e = check_node("node-a", Some(&id("node-b")), "batch node-b/b/1")
            .expect_err("another node");
        assert_eq!(e.cause(), "wrong_node");
        let status = e.status();
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains("batch node-b/b/1"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("\"node-a\""),
            "{}",
            status.message()
        );
    }

    #[test]
    fn the_bearer_token_is_the_one_authorization_value() {
        let mut metadata = MetadataMap::new();
        assert_eq!(bearer(&metadata).expect_err("none").cause(), "no_token");
        metadata.insert("authorization", "Basic abc".parse().expect("ascii"));
        assert!(bearer(&metadata).is_err());
        metadata.insert("authorization", "Bearer abc.def".parse().expect("ascii"));
        assert_eq!(
            bearer(&metadata).map(|t| t.expose().to_owned()).ok(),
            Some("abc.def".into())
        );
        metadata.append("authorization", "Bearer other".parse().expect("ascii"));
        assert!(bearer(&metadata).is_err(), "two tokens are none");
        let e = Refusal::NoToken.status();
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(Refusal::InvalidToken.status().code(), Code::Unauthenticated);
        // Every stream refusal is served from the start under its cause.
        let stream_refusals = [
            Refusal::NoToken,
            Refusal::InvalidToken,
            Refusal::WrongIdentity {
                user: String::new(),
                expected: String::new(),
            },
            Refusal::NoNode {
                user: String::new(),
            },
        ];
        for r in stream_refusals {
            assert!(STREAM_CAUSES.contains(&r.cause()), "{}", r.cause());
        }
        assert!(STREAM_CAUSES.contains(&"review_unavailable"));
    }

    #[test]
    fn token_is_the_default_with_an_api_server_and_refused_without() {
        assert_eq!(decide(None, true), Ok(AgentAuth::Token));
        assert_eq!(decide(None, false), Ok(AgentAuth::Mtls));
        assert_eq!(decide(Some(AgentAuth::Mtls), true), Ok(AgentAuth::Mtls));
        assert_eq!(decide(Some(AgentAuth::Token), false), Err(NoApiServer));
        assert_eq!("token".parse(), Ok(AgentAuth::Token));
        assert_eq!("mtls".parse(), Ok(AgentAuth::Mtls));
        assert!("none".parse::<AgentAuth>().is_err());
        assert_eq!(AgentAuth::Token.to_string(), "token");
    }

    #[test]
    fn the_cache_is_bounded_dropping_expired_then_oldest() {
        let mut cache = HashMap::new();
        let t0 = Instant::now();
        for i in 0..MAX_CACHED {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_le_bytes());
            let at = t0 + Duration::from_millis(i as u64);
            remember(&mut cache, key, None, at, VERDICT_TTL);
        }
        assert_eq!(cache.len(), MAX_CACHED);
        let later = t0 + Duration::from_secs(30);
        remember(&mut cache, [0xff; 32], None, later, VERDICT_TTL);
        assert_eq!(cache.len(), MAX_CACHED);
        assert!(!cache.contains_key(&[0u8; 32]), "the oldest went");
        // Once they are past the TTL, the old verdicts go at once; the younger one stays.
        let expired = later + VERDICT_TTL - Duration::from_secs(1);
        remember(&mut cache, [0xfe; 32], None, expired, VERDICT_TTL);
        assert_eq!(cache.len(), 2);
        assert!(cache.contains_key(&[0xff; 32]));
    }
}
