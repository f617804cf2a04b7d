//! The browser's way in with `--ui-auth kube`: `GET /login` is a form taking a token,
//! `POST /login` reviews it (TokenReview) and opens a session ([`super::session`]),
//! `POST /logout` ends it.
//!
//! Cross-site request forgery: the cookie is `SameSite=Strict`, and both POSTs must come from
//! this origin: `Sec-Fetch-Site`, when the browser sends it, must be `same-origin` (or
//! `none`), and the `Origin` header (else the `Referer`) must name the host the request was
//! sent to (`Host`). A POST with neither is refused: browsers send `Origin` with every POST.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use leash_records::error::Chain;

use super::session::{self, Token};
use super::{Auth, Mode};

/// The routes of the login form; none without `--ui-auth kube`.
pub fn routes(auth: &Arc<Auth>) -> Router {
    match auth.mode {
        Mode::Open => Router::new(),
        Mode::Kube(_) => Router::new()
            .route("/login", get(form).post(login))
            .route("/logout", post(logout))
            .with_state(Arc::clone(auth)),
    }
}

/// The login page, with `message` above the form (fixed text, never input).
fn page(status: StatusCode, message: Option<&'static str>) -> Response {
    let message = message.map_or(String::new(), |m| {
        format!("<p role=\"alert\" id=\"login-error\">{m}</p>\n")
    });
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>leash: log in</title>\n</head>\n<body>\n<main>\n<h1>leash: log in</h1>\n\
         {message}<form method=\"post\" action=\"/login\">\n\
         <label for=\"token\">Kubernetes bearer token</label>\n\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" required>\n\
         <button type=\"submit\">Log in</button>\n</form>\n\
         <p>Get a token with <code>kubectl create token NAME</code>, or from your \
         kubeconfig. Access follows RBAC: <code>get</code> on \
         <code>egressmaps.leash.dev</code> per namespace.</p>\n</main>\n</body>\n</html>\n"
    );
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

async fn form() -> Response {
    page(StatusCode::OK, None)
}

/// Whether a POST comes from this origin (see the module docs).
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let Some(host) = text("host") else {
        return false;
    };
    let source = text("origin")
        .filter(|o| *o != "null")
        .or_else(|| text("referer"));
    let Some(source) = source else {
        return false;
    };
    let authority = source
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or_default());
    authority.is_some_and(|a| a.eq_ignore_ascii_case(host))
}

fn cross_site() -> Response {
    (
        StatusCode::FORBIDDEN,
        "forbidden: the form must be sent from this site (Origin or Referer)\n",
    )
        .into_response()
}

async fn login(State(auth): State<Arc<Auth>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(kube) = auth.kube_mode() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !same_origin(&headers) {
        return cross_site();
    }
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .and_then(|(_, v)| Token::parse(&v));
    let Some(token) = token else {
        return page(StatusCode::BAD_REQUEST, Some("Enter a token."));
    };
    match kube.user(&token).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return page(
                StatusCode::UNAUTHORIZED,
                Some("The API server did not accept this token."),
            );
        }
        Err(e) => {
            tracing::warn!("cannot review a login with the API server: {}", Chain(&e));
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                Some("The API server cannot be asked right now; try again later."),
            );
        }
    }
    match kube.sessions.create(token) {
        Ok(id) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_owned()),
                (header::SET_COOKIE, session::set_cookie(&id)),
            ],
        )
            .into_response(),
        Err(e) => {
            tracing::error!("cannot open a session: {}", Chain(&e));
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("A session cannot be opened."),
            )
        }
    }
}

async fn logout(State(auth): State<Arc<Auth>>, headers: HeaderMap) -> Response {
    let Some(kube) = auth.kube_mode() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if !same_origin(&headers) {
        return cross_site();
    }
    if let Some(id) = session::cookie(&headers) {
        kube.sessions.remove(&id);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/login".to_owned()),
            (header::SET_COOKIE, session::clear_cookie()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_same_origin_posts_pass() {
        let host = ("host", "localhost:8081");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://localhost:8081")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("referer", "https://localhost:8081/login?x")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example:8081")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://localhost:8081.evil.example")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[host])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://localhost:8081"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "http://localhost:8081"
        )])));
    }
}
