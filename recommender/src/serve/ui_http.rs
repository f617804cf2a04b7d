//! The UI listener of `leash serve` (`--ui-listen`, default `127.0.0.1:8081`): the `/v1` read
//! API ([`super::http::api_router_with`]), the login form of `--ui-auth kube`
//! ([`super::auth::login`]) and the UI's pages and assets, behind one gate
//! ([`super::auth::gate`]) that authenticates, authorises and hands each `/v1` handler the
//! namespaces it may show. Every answer carries the security headers of
//! [`security_headers`].
//!
//! `--http` keeps only `/healthz`, `/readyz` and `/metrics` ([`super::http::router`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;

use super::auth::{self, Auth, Gate};
use super::http::{AppState, ReadLimits, api_router_with};

/// The Content-Security-Policy of every answer: only this origin's scripts, styles, images
/// and requests; no framing, no plugins, no inline code.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                       img-src 'self' data:; connect-src 'self'; form-action 'self'; \
                       frame-ancestors 'none'; base-uri 'none'";

/// The UI listener's router over `state`: `/v1` bounded by `limits`, authenticated by `auth`.
pub fn ui_router(state: Arc<AppState>, limits: ReadLimits, auth: Arc<Auth>) -> Router {
    let gate = Gate {
        auth: Arc::clone(&auth),
        model: state.model.clone(),
    };
    // The UI's page and assets ([`super::ui`]) are inside the gate and the headers too.
    let routes = api_router_with(state, limits)
        .merge(auth::login::routes(&auth))
        .merge(super::ui::routes());
    routes
        .layer(middleware::from_fn_with_state(gate, auth::gate))
        .layer(middleware::from_fn(security_headers))
}

/// Sets the security headers on every answer of the UI listener: [`CSP`], `nosniff`, no
/// referrer, and `Cache-Control: no-store` on the API and the login form (answers that are
/// per user).
pub async fn security_headers(request: Request, next: Next) -> Response {
    let private = {
        let p = request.uri().path();
        p == "/v1" || p.starts_with("/v1/") || p == "/login" || p == "/logout"
    };
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if private {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
