//! The web UI of `leash serve`: `GET /` and `GET /assets/{name}`, every file embedded in the
//! binary from `recommender/ui/` (no CDN, no download at run time). The page reads only the
//! documented `/v1` JSON ([`super::map_api`], `/v1/rollout`, `/v1/alerts`).
//!
//! No inline script or style: the page works under the Content-Security-Policy that
//! [`super::ui_http::security_headers`] sets on every answer of the UI listener. The gate lets
//! anyone fetch `/assets/*` and asks a token for `/` ([`super::auth::gate`]).

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// The page.
const INDEX: &[u8] = include_bytes!("../../ui/index.html");

/// Every asset under `/assets/`, by name.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/style.css"),
    },
    Asset {
        name: "vendor/d3-dispatch.min.js",
        content_type: JS,
        body: include_bytes!("../../ui/vendor/d3-dispatch.min.js"),
    },
    Asset {
        name: "vendor/d3-quadtree.min.js",
        content_type: JS,
        body: include_bytes!("../../ui/vendor/d3-quadtree.min.js"),
    },
    Asset {
        name: "vendor/d3-timer.min.js",
        content_type: JS,
        body: include_bytes!("../../ui/vendor/d3-timer.min.js"),
    },
    Asset {
        name: "vendor/d3-force.min.js",
        content_type: JS,
        body: include_bytes!("../../ui/vendor/d3-force.min.js"),
    },
    Asset {
        name: "vendor/d3-force.LICENSE",
        content_type: TEXT,
        body: include_bytes!("../../ui/vendor/d3-force.LICENSE"),
    },
    Asset {
        name: "vendor/d3-dispatch.LICENSE",
        content_type: TEXT,
        body: include_bytes!("../../ui/vendor/d3-dispatch.LICENSE"),
    },
    Asset {
        name: "vendor/d3-quadtree.LICENSE",
        content_type: TEXT,
        body: include_bytes!("../../ui/vendor/d3-quadtree.LICENSE"),
    },
    Asset {
        name: "vendor/d3-timer.LICENSE",
        content_type: TEXT,
        body: include_bytes!("../../ui/vendor/d3-timer.LICENSE"),
    },
];

/// The UI's routes, on any state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*name}", get(asset))
}

/// An embedded file with its type.
fn answer(content_type: &'static str, body: &'static [u8]) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The binary is the version: a new one may change every file.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn index() -> Response {
    answer("text/html; charset=utf-8", INDEX)
}

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => answer(a.content_type, a.body),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}
