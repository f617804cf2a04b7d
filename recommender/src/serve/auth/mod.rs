//! Who may look at the UI and `/v1` of `leash serve` (`--ui-listen`, `--ui-auth`).
//!
//! The egress map is the cluster's egress inventory, so the UI listener is loopback-only
//! unless authentication is on ([`decide`]), and tokens cross a network only over TLS
//! (`--ui-tls-cert`) or a proxy's TLS said with `--ui-insecure-http` ([`check_transport`]).
//! With `--ui-auth kube`:
//! - a request bears a token: `Authorization: Bearer TOKEN`, or the session cookie of the
//!   login form ([`session`], [`login`]), which stands for the token given there;
//! - the token is authenticated by the API server with a TokenReview, and access is decided by
//!   RBAC with SubjectAccessReviews of `get` on the virtual resource `egressmaps.leash.dev` in
//!   the namespace asked for ([`review`]); answers are cached per token for [`DECISION_TTL`];
//! - a request for `/v1/namespaces/NS/…` needs access to `NS` (`403` otherwise); any other
//!   `/v1` request sees the namespaces the user may `get` (all of them with a cluster-wide
//!   grant), and every handler filters its answer with the [`Access`] the gate hands it;
//! - identity headers of proxies (`X-Remote-User`, `X-Forwarded-User`, `Impersonate-*`) are
//!   never read: only the token counts.
//!
//! A new mode plugs in as a variant of [`UiAuth`] and of the private `Mode`: it turns a
//! request into an [`Access`] (or an answer refusing it) in [`gate`]; handlers do not change.
//!
//! The token is a secret: it is never logged, echoed in an answer or put into a URL; the cache
//! keys are its SHA-256.

pub mod login;
pub mod review;
pub mod session;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use k8s_openapi::api::authentication::v1::UserInfo;
use leash_records::error::Chain;

use super::ModelRx;

/// How the UI listener authenticates (`--ui-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiAuth {
    /// Nobody is asked who they are; everyone sees everything.
    None,
    /// Bearer tokens checked with TokenReview, access with SubjectAccessReview.
    Kube,
}

impl std::fmt::Display for UiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UiAuth::None => "none",
            UiAuth::Kube => "kube",
        })
    }
}

impl std::str::FromStr for UiAuth {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(UiAuth::None),
            "kube" => Ok(UiAuth::Kube),
            other => Err(format!("{other:?}: expected kube or none")),
        }
    }
}

/// Why `leash serve` refuses its UI listener's settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ModeError {
    /// A non-loopback `--ui-listen` without `--ui-auth`.
    #[error(
        "--ui-listen {addr} is not a loopback address: the UI and /v1 show the cluster's \
         egress inventory, so exposing them needs --ui-auth kube (Kubernetes tokens and RBAC), \
         or --ui-auth none to expose them to everyone who can reach {addr}"
    )]
    Exposed {
        /// The address.
        addr: SocketAddr,
    },
    /// `--ui-auth kube` without an API server to review tokens.
    #[error(
        "--ui-auth kube needs the API server (--kube) to review tokens: with --cluster FILE \
         there is none; use --kube, or keep --ui-listen on loopback without --ui-auth"
    )]
    NoApiServer,
    /// `--ui-auth kube` on a non-loopback address over plain HTTP, without
    /// `--ui-insecure-http`: tokens and session cookies would cross the network in clear.
    #[error(
        "--ui-auth kube on --ui-listen {addr} (not a loopback address) needs TLS: bearer tokens \
         and session cookies would cross the network in clear (and browsers keep the Secure \
         session cookie only over HTTPS); give --ui-tls-cert and --ui-tls-key, or \
         --ui-insecure-http when a proxy in front terminates TLS"
    )]
    Cleartext {
        /// The address.
        addr: SocketAddr,
    },
}

/// How the UI listener speaks (`--ui-tls-cert`/`--ui-tls-key`, `--ui-insecure-http`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UiTransport {
    /// Plain HTTP: on loopback (`kubectl port-forward`), or with `--ui-auth none`.
    #[default]
    Http,
    /// Plain HTTP on purpose (`--ui-insecure-http`): a proxy in front terminates TLS.
    InsecureHttp,
    /// HTTPS (HTTP/1.1 and h2) with these files, reloaded when they change.
    Https(leash_records::tls::ServerIdentity),
}

impl UiTransport {
    /// Whether the listener itself speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, UiTransport::Https(_))
    }
}

/// Warns (in the log, on stderr) when the UI listener on `addr` is reachable from a network
/// and something a user should know about is off: authentication (`--ui-auth none`), or TLS
/// on the listener itself (`--ui-insecure-http`).
pub fn warn_exposed(auth: UiAuth, addr: SocketAddr, transport: &UiTransport) {
    if is_loopback(addr) {
        return;
    }
    let over = if transport.is_tls() {
        "over HTTPS"
    } else {
        "over plain HTTP"
    };
    if auth == UiAuth::None {
        tracing::warn!(ui = %addr, tls = transport.is_tls(), "--ui-auth none: the UI and /v1 (the cluster's egress inventory) are served without authentication, {over}, to everyone who can reach this address");
    }
    if *transport == UiTransport::InsecureHttp {
        tracing::warn!(ui = %addr, "--ui-insecure-http: the UI listener speaks plain HTTP beyond loopback; bearer tokens and session cookies cross the network in clear unless a proxy in front terminates TLS (browsers keep the Secure session cookie only over HTTPS)");
    }
}

/// Whether `auth` may be served over `transport` on `addr`: tokens cross a network only over
/// TLS ([`ModeError::Cleartext`]), unless TLS ends in a proxy in front
/// ([`UiTransport::InsecureHttp`]). Loopback stays plain (`kubectl port-forward`).
pub fn check_transport(
    auth: UiAuth,
    addr: SocketAddr,
    transport: &UiTransport,
) -> Result<(), ModeError> {
    match (auth, transport) {
        (UiAuth::Kube, UiTransport::Http) if !is_loopback(addr) => {
            Err(ModeError::Cleartext { addr })
        }
        _ => Ok(()),
    }
}

/// The authentication of a UI listener on `addr`: `requested` (`--ui-auth`) when given;
/// without it, none on a loopback address and a refusal on any other. `kube` needs an API
/// server (`api_server`: the model comes from `--kube`).
pub fn decide(
    requested: Option<UiAuth>,
    addr: SocketAddr,
    api_server: bool,
) -> Result<UiAuth, ModeError> {
    match requested {
        Some(UiAuth::Kube) if !api_server => Err(ModeError::NoApiServer),
        Some(mode) => Ok(mode),
        None if is_loopback(addr) => Ok(UiAuth::None),
        None => Err(ModeError::Exposed { addr }),
    }
}

/// Whether `addr` is a loopback address (an IPv4-mapped `::ffff:127.0.0.1` too).
pub fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// The namespaces a request may see. The gate puts one into every request it lets through to
/// `/v1`; handlers take it as an extractor (without one they refuse: nothing is shown without
/// a decision) and filter every answer with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Every namespace (no authentication, or a cluster-wide grant).
    All,
    /// Only these.
    Namespaces(Arc<BTreeSet<String>>),
}

/// A request for a namespace its bearer may not see.
#[derive(Debug, thiserror::Error)]
#[error("forbidden: get egressmaps.leash.dev in namespace {namespace:?} is not granted")]
pub struct Forbidden {
    /// The namespace asked for.
    pub namespace: String,
}

impl Access {
    /// Whether `namespace` is visible.
    pub fn allows(&self, namespace: &str) -> bool {
        match self {
            Access::All => true,
            Access::Namespaces(set) => set.contains(namespace),
        }
    }

    /// `Ok` when `namespace` is visible, [`Forbidden`] otherwise.
    pub fn require(&self, namespace: &str) -> Result<(), Forbidden> {
        if self.allows(namespace) {
            Ok(())
        } else {
            Err(Forbidden {
                namespace: namespace.to_owned(),
            })
        }
    }

    /// Keeps the items of visible namespaces: the one filter of every `/v1` answer.
    pub fn retain<T>(&self, items: &mut Vec<T>, namespace: impl Fn(&T) -> &str) {
        if let Access::Namespaces(set) = self {
            items.retain(|i| set.contains(namespace(i)));
        }
    }

    /// Whether every namespace is visible.
    pub fn is_all(&self) -> bool {
        matches!(self, Access::All)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Access {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Access>().cloned().ok_or_else(|| {
            // A route outside the gate: a bug, refused rather than answered to everyone.
            tracing::error!(path = %parts.uri.path(), "a /v1 request reached its handler without an access decision");
            (StatusCode::FORBIDDEN, "forbidden: no access decision\n").into_response()
        })
    }
}

/// How long a token's review and its access decisions are reused.
pub const DECISION_TTL: Duration = Duration::from_secs(30);

/// At most this many tokens' decisions are cached.
const MAX_CACHED_TOKENS: usize = 1024;

/// At most this many namespace decisions are cached per token.
const MAX_CACHED_NAMESPACES: usize = 8192;

/// At most this many SubjectAccessReviews of one request are in flight at once.
const CONCURRENT_REVIEWS: usize = 8;

/// The authentication of the UI listener.
pub struct Auth {
    mode: Mode,
}

enum Mode {
    Open,
    Kube(Box<Kube>),
}

/// `--ui-auth kube`'s state.
struct Kube {
    reviewer: review::Reviewer,
    decisions: Mutex<HashMap<[u8; 32], Decisions>>,
    sessions: session::Sessions,
}

/// What the API server said about one token, cached for [`DECISION_TTL`].
struct Decisions {
    at: Instant,
    /// The TokenReview: `None` until asked; then the user, or `None` for a token it did not
    /// authenticate.
    user: Option<Option<Arc<UserInfo>>>,
    /// `get` on egressmaps in all namespaces.
    cluster: Option<bool>,
    namespaces: HashMap<String, bool>,
}

impl Auth {
    /// No authentication: everyone sees every namespace.
    pub fn open() -> Arc<Auth> {
        Arc::new(Auth { mode: Mode::Open })
    }

    /// `--ui-auth kube` through `client` (the recommender's own credentials).
    pub fn kube(client: kube::Client) -> Arc<Auth> {
        Arc::new(Auth {
            mode: Mode::Kube(Box::new(Kube {
                reviewer: review::Reviewer::new(client),
                decisions: Mutex::default(),
                sessions: session::Sessions::default(),
            })),
        })
    }

    /// The mode, as `--ui-auth` names it.
    pub fn mode(&self) -> UiAuth {
        match self.mode {
            Mode::Open => UiAuth::None,
            Mode::Kube(_) => UiAuth::Kube,
        }
    }

    fn kube_mode(&self) -> Option<&Kube> {
        match &self.mode {
            Mode::Open => None,
            Mode::Kube(k) => Some(k),
        }
    }
}

/// The gate's state: the authentication and the model (whose namespaces a cluster-wide
/// answer is filtered to).
#[derive(Clone)]
pub struct Gate {
    /// The authentication.
    pub auth: Arc<Auth>,
    /// The current cluster model.
    pub model: ModelRx,
}

/// What a path is, for the gate.
#[derive(Debug, PartialEq, Eq)]
enum Kind<'a> {
    /// `/login`, `/logout` and the UI's static assets: served to anyone.
    Public,
    /// `/v1/namespaces/NS/…`.
    Namespace(&'a str),
    /// Any other `/v1` path.
    ClusterWide,
    /// A UI page: needs a valid token, shows no data by itself (no [`Access`] is given).
    Page,
}

fn kind(path: &str) -> Kind<'_> {
    if matches!(path, "/login" | "/logout") || path.starts_with("/assets/") {
        return Kind::Public;
    }
    match path.strip_prefix("/v1/namespaces/") {
        Some(rest) => Kind::Namespace(rest.split('/').next().unwrap_or_default()),
        None if path == "/v1" || path.starts_with("/v1/") => Kind::ClusterWide,
        None => Kind::Page,
    }
}

/// The middleware in front of every route of the UI listener: decides the request's
/// [`Access`] or answers it (`401`, `403`, a redirect to `/login`, `503` when the API server
/// cannot be asked).
pub async fn gate(State(g): State<Gate>, mut request: Request, next: Next) -> Response {
    let Some(kube) = g.auth.kube_mode() else {
        request.extensions_mut().insert(Access::All);
        return next.run(request).await;
    };
    let path = request.uri().path().to_owned();
    let kind = kind(&path);
    if kind == Kind::Public {
        return next.run(request).await;
    }
    let Some(token) = kube.token_of(request.headers()) else {
        return unauthenticated(&kind, request.method(), "no bearer token");
    };
    let user = match kube.user(&token).await {
        Ok(Some(user)) => user,
        Ok(None) => return unauthenticated(&kind, request.method(), "the token is not valid"),
        Err(e) => return review_failed(&e),
    };
    let access = match kind {
        // A page shows no data by itself: it gets no `Access`, so a handler that wanted
        // one would refuse (its data comes from `/v1`, decided there).
        Kind::Public | Kind::Page => return next.run(request).await,
        // `""` would ask for every namespace.
        Kind::Namespace("") => return StatusCode::NOT_FOUND.into_response(),
        Kind::Namespace(ns) => match kube.allowed(&token, &user, ns).await {
            Ok(true) => Access::Namespaces(Arc::new(BTreeSet::from([ns.to_owned()]))),
            Ok(false) => {
                return (
                    StatusCode::FORBIDDEN,
                    format!(
                        "{}\n",
                        Forbidden {
                            namespace: ns.to_owned()
                        }
                    ),
                )
                    .into_response();
            }
            Err(e) => return review_failed(&e),
        },
        Kind::ClusterWide => {
            let namespaces: Vec<String> = g
                .model
                .borrow()
                .as_ref()
                .map(|m| m.cluster.namespaces.keys().cloned().collect())
                .unwrap_or_default();
            match kube.visible(&token, &user, namespaces).await {
                Ok(access) => access,
                Err(e) => return review_failed(&e),
            }
        }
    };
    request.extensions_mut().insert(access);
    next.run(request).await
}

/// `401` (with `WWW-Authenticate: Bearer`) for the API, a redirect to the login form for a
/// page a browser asked for.
fn unauthenticated(kind: &Kind<'_>, method: &Method, why: &str) -> Response {
    if *kind == Kind::Page && (method == Method::GET || method == Method::HEAD) {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        format!("unauthorized: {why}; send Authorization: Bearer TOKEN or log in at /login\n"),
    )
        .into_response()
}

/// `503` when the API server cannot review: logged, with no token in it.
fn review_failed(e: &review::Error) -> Response {
    tracing::warn!(
        "cannot review a UI request with the API server: {}",
        Chain(e)
    );
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, HeaderValue::from_static("5"))],
        "cannot review the request with the API server; retry later\n",
    )
        .into_response()
}

impl Kube {
    /// The request's token: its bearer token, else the token of its session cookie.
    fn token_of(&self, headers: &HeaderMap) -> Option<session::Token> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            // A malformed header is no token at all, not a fall-back to the cookie.
            return value.to_str().ok().and_then(session::Token::from_bearer);
        }
        session::cookie(headers).and_then(|id| self.sessions.token(&id))
    }

    fn cache(&self) -> MutexGuard<'_, HashMap<[u8; 32], Decisions>> {
        self.decisions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cached decisions of `token`, fresh ones if they expired, evicting when full.
    fn with_entry<T>(&self, token: &session::Token, f: impl FnOnce(&mut Decisions) -> T) -> T {
        let key = token.digest();
        let mut cache = self.cache();
        let now = Instant::now();
        if cache
            .get(&key)
            .is_some_and(|d| now.duration_since(d.at) >= DECISION_TTL)
        {
            cache.remove(&key);
        }
        if !cache.contains_key(&key) && cache.len() >= MAX_CACHED_TOKENS {
            cache.retain(|_, d| now.duration_since(d.at) < DECISION_TTL);
            if cache.len() >= MAX_CACHED_TOKENS
                && let Some(oldest) = cache.iter().min_by_key(|(_, d)| d.at).map(|(k, _)| *k)
            {
                cache.remove(&oldest);
            }
        }
        let entry = cache.entry(key).or_insert_with(|| Decisions {
            at: now,
            user: None,
            cluster: None,
            namespaces: HashMap::new(),
        });
        f(entry)
    }

    /// The user `token` authenticates as (TokenReview, cached), `None` if it does not.
    async fn user(&self, token: &session::Token) -> Result<Option<Arc<UserInfo>>, review::Error> {
        if let Some(user) = self.with_entry(token, |d| d.user.clone()) {
            return Ok(user);
        }
        let user = self.reviewer.token(token).await?.map(Arc::new);
        self.with_entry(token, |d| d.user = Some(user.clone()));
        Ok(user)
    }

    /// Whether `user` may `get` egressmaps in `namespace` (`""`: all namespaces), cached.
    async fn allowed(
        &self,
        token: &session::Token,
        user: &UserInfo,
        namespace: &str,
    ) -> Result<bool, review::Error> {
        let cached = self.with_entry(token, |d| {
            if d.cluster == Some(true) {
                Some(true)
            } else if namespace.is_empty() {
                d.cluster
            } else {
                d.namespaces.get(namespace).copied()
            }
        });
        if let Some(allowed) = cached {
            return Ok(allowed);
        }
        let allowed = self.reviewer.allowed(user, namespace).await?;
        self.with_entry(token, |d| {
            if namespace.is_empty() {
                d.cluster = Some(allowed);
            } else if d.namespaces.len() < MAX_CACHED_NAMESPACES {
                d.namespaces.insert(namespace.to_owned(), allowed);
            }
        });
        Ok(allowed)
    }

    /// What `user` sees of a cluster-wide answer: everything with a cluster-wide grant, else
    /// the namespaces of `namespaces` it may `get`.
    async fn visible(
        &self,
        token: &session::Token,
        user: &UserInfo,
        namespaces: Vec<String>,
    ) -> Result<Access, review::Error> {
        if self.allowed(token, user, "").await? {
            return Ok(Access::All);
        }
        let answers: Vec<(String, Result<bool, review::Error>)> = futures::stream::iter(namespaces)
            .map(|ns| async move {
                let allowed = self.allowed(token, user, &ns).await;
                (ns, allowed)
            })
            .buffer_unordered(CONCURRENT_REVIEWS)
            .collect()
            .await;
        let mut visible = BTreeSet::new();
        for (ns, allowed) in answers {
            if allowed? {
                visible.insert(ns);
            }
        }
        Ok(Access::Namespaces(Arc::new(visible)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn loopback_needs_no_auth_and_other_addresses_need_it_said() {
        assert_eq!(
            decide(None, addr("127.0.0.1:8081"), false),
            Ok(UiAuth::None)
        );
        assert_eq!(decide(None, addr("[::1]:8081"), true), Ok(UiAuth::None));
        assert_eq!(
            decide(None, addr("[::ffff:127.0.0.1]:8081"), true),
            Ok(UiAuth::None)
        );
        assert_eq!(
            decide(None, addr("0.0.0.0:8081"), true),
            Err(ModeError::Exposed {
                addr: addr("0.0.0.0:8081")
            })
        );
        assert_eq!(
            decide(Some(UiAuth::None), addr("0.0.0.0:8081"), false),
            Ok(UiAuth::None)
        );
        assert_eq!(
            decide(Some(UiAuth::Kube), addr("198.51.100.7:8081"), true),
            Ok(UiAuth::Kube)
        );
        assert_eq!(
            decide(Some(UiAuth::Kube), addr("127.0.0.1:8081"), false),
            Err(ModeError::NoApiServer)
        );
        let message = ModeError::Exposed {
            addr: addr("0.0.0.0:8081"),
        }
        .to_string();
        assert!(message.contains("--ui-auth kube") && message.contains("--ui-auth none"));
    }

    #[test]
    fn kube_tokens_cross_a_network_only_over_tls_or_when_said() {
        let exposed = addr("198.51.100.7:8081");
        let https = UiTransport::Https(leash_records::tls::ServerIdentity {
            cert: "ui.pem".into(),
            key: "ui-key.pem".into(),
        });
        assert_eq!(
            check_transport(UiAuth::Kube, exposed, &UiTransport::Http),
            Err(ModeError::Cleartext { addr: exposed })
        );
        assert_eq!(
            check_transport(UiAuth::Kube, addr("[2001:db8::7]:8081"), &UiTransport::Http),
            Err(ModeError::Cleartext {
                addr: addr("[2001:db8::7]:8081")
            })
        );
        for ok in [&https, &UiTransport::InsecureHttp] {
            assert_eq!(check_transport(UiAuth::Kube, exposed, ok), Ok(()));
        }
        // Loopback stays plain (port-forward); `none` has no token to protect.
        for loopback in ["127.0.0.1:8081", "[::1]:8081", "[::ffff:127.0.0.1]:8081"] {
            let plain = check_transport(UiAuth::Kube, addr(loopback), &UiTransport::Http);
            assert_eq!(plain, Ok(()));
        }
        assert_eq!(
            check_transport(UiAuth::None, exposed, &UiTransport::Http),
            Ok(())
        );
        let message = ModeError::Cleartext { addr: exposed }.to_string();
        for flag in [
            "--ui-tls-cert",
            "--ui-tls-key",
            "--ui-insecure-http",
            "198.51.100.7:8081",
        ] {
            assert!(message.contains(flag), "{flag}: {message}");
        }
        assert!(https.is_tls() && !UiTransport::InsecureHttp.is_tls());
    }

    #[test]
    fn paths_are_public_namespaced_cluster_wide_or_pages() {
        assert_eq!(kind("/login"), Kind::Public);
        assert_eq!(kind("/assets/app.js"), Kind::Public);
        assert_eq!(kind("/v1/namespaces/shop/audit"), Kind::Namespace("shop"));
        assert_eq!(kind("/v1/namespaces/"), Kind::Namespace(""));
        assert_eq!(kind("/v1/workloads"), Kind::ClusterWide);
        assert_eq!(kind("/v1"), Kind::ClusterWide);
        assert_eq!(kind("/v1x"), Kind::Page);
        assert_eq!(kind("/"), Kind::Page);
    }

    /// A handler reached without the gate refuses (fail closed); through the open gate it
    /// sees everything.
    #[tokio::test]
    async fn handlers_without_a_decision_refuse() {
        use axum::Router;
        use axum::body::Body;
        use axum::routing::get;
        use tower::ServiceExt as _;

        async fn show(access: Access) -> &'static str {
            if access.is_all() { "all" } else { "some" }
        }
        let call = |app: Router, path: &'static str| async move {
            let request = axum::http::Request::get(path)
                .body(Body::empty())
                .expect("a request");
            app.oneshot(request).await.expect("an answer").status()
        };
        let routes = Router::new().route("/v1/x", get(show));
        assert_eq!(call(routes.clone(), "/v1/x").await, StatusCode::FORBIDDEN);
        let (_tx, model) = tokio::sync::watch::channel(None);
        let gate = Gate {
            auth: Auth::open(),
            model,
        };
        let gated = routes.layer(axum::middleware::from_fn_with_state(gate, super::gate));
        assert_eq!(call(gated, "/v1/x").await, StatusCode::OK);
    }

    #[test]
    fn access_filters_to_its_namespaces() {
        let some = Access::Namespaces(Arc::new(BTreeSet::from(["shop".to_owned()])));
        let mut items = vec!["bank", "shop", "shop"];
        some.retain(&mut items, |s| s);
        assert_eq!(items, ["shop", "shop"]);
        assert!(some.require("bank").is_err());
        assert!(some.require("shop").is_ok());
        assert!(Access::All.allows("bank"));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use axum::http::HeaderValue;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a client sends, the parsers of paths, cookies, tokens and origins answer
        /// without panicking, and a cookie or token found is never empty.
        #[test]
        fn request_parsers_take_any_input(
            path in ".{0,64}",
            cookie in "[ -~]{0,80}",
            origin in "[ -~]{0,80}",
            host in "[ -~]{0,40}",
        ) {
            let _ = kind(&path);
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                headers.insert(header::COOKIE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&origin) {
                headers.insert(header::ORIGIN, v);
            }
            if let Ok(v) = HeaderValue::from_str(&host) {
                headers.insert(header::HOST, v);
            }
            prop_assert!(session::cookie(&headers).is_none_or(|c| !c.is_empty()));
            let _ = login::same_origin(&headers);
            prop_assert!(session::Token::parse(&cookie).is_none_or(|t| !t.expose().is_empty()));
        }
    }
}
