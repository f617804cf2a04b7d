//! The HTTP layer: hyper (through axum) serves the connections; every request, whatever its
//! path, is recorded and dispatched here as the Kubernetes API server would answer it, with a
//! JSON body (an object, a `List`, a `Status` with the real code, or a watch stream).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::Request as HttpRequest;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use leash_records::error::Chain;
use tokio::net::TcpListener;

use super::objects;
use super::request::{Request, Target};
use super::select::Filter;
use super::store::{State, lock, status};
use super::watch;

/// Request bodies larger than this are refused; tests never need more.
const MAX_BODY: usize = 16 << 20;

/// Serves `listener` until the task is aborted (connections already accepted go on).
pub(super) async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    let app = Router::new().fallback(dispatch).with_state(state);
    // Accept errors are retried by axum; serve returns only if the listener is gone.
    let _ = axum::serve(listener, app).await;
}

/// A response with `code` and a JSON `body`.
pub(super) fn json_response(code: u16, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A `Status` response.
fn failure(code: u16, reason: &str, message: &str) -> Response {
    json_response(code, Body::from(status(code, reason, message).to_string()))
}

/// Answers one request: records it, then a 404 for paths outside the resource API, a 400 for a
/// malformed selector, an injected failure, a watch stream, or what [`objects::handle`] says.
async fn dispatch(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<State>>>,
    request: HttpRequest,
) -> Response {
    let req = match read_request(request).await {
        Ok(req) => req,
        Err(message) => return failure(400, "BadRequest", &message),
    };
    lock(&state).requests.push(req.clone());
    if let Some(response) = group_version(&lock(&state), &req.path) {
        return response;
    }
    let Some(target) = Target::parse(&req.path) else {
        return failure(404, "NotFound", &format!("no such path {}", req.path));
    };
    let filter = match Filter::new(&target, &req) {
        Ok(f) => f,
        Err(e) => return failure(400, "BadRequest", &e),
    };
    let injected = lock(&state).injected_failure(&req, &target);
    if let Some(code) = injected {
        return failure(code, "Injected", "failure injected by the test");
    }
    if let Some((code, body)) = lock(&state).reviews.handle(&req) {
        return json_response(code, Body::from(body.to_string()));
    }
    if req.method == "GET" && target.name.is_none() && req.is_watch() {
        // Replay and subscribe under one lock, so no event falls in between.
        let rx = watch::subscribe(&mut lock(&state), &target, filter, &req);
        return watch::response(rx, &req);
    }
    let (code, body) = objects::handle(&mut lock(&state), &req, &target, &filter);
    json_response(code, Body::from(body.to_string()))
}

/// The answer for paths of a group version that is not served (the real server's `404`
/// `Status`), or for a group version's discovery document (`GET /apis/GROUP/VERSION`, an
/// `APIResourceList`); `None` for everything else.
fn group_version(state: &State, path: &str) -> Option<Response> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let gv = match segments.as_slice() {
        ["apis", group, version, ..] => format!("{group}/{version}"),
        ["api", version, ..] => (*version).to_owned(),
        _ => return None,
    };
    if state.unserved.contains(&gv) {
        // What kube-apiserver answers for a group/version nobody serves.
        return Some(failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    }
    let discovery = matches!(segments.as_slice(), ["apis", _, _] | ["api", _]);
    if !discovery {
        return None;
    }
    let resources = state.discovery.get(&gv)?;
    let body = serde_json::json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": gv, "resources": resources});
    Some(json_response(200, Body::from(body.to_string())))
}

/// The recorded form of a request: method, decoded path and query, content type, whole body.
async fn read_request(request: HttpRequest) -> Result<Request, String> {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|e| format!("reading the request body: {}", Chain(&e)))?;
    let query = parts
        .uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Request {
        method: parts.method.as_str().to_owned(),
        path: percent_decode(parts.uri.path()),
        query,
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.to_vec(),
    })
}

/// Decodes `%XX` escapes (and `+` as a space, as the query grammar does).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
