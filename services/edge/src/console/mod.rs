//! The web console, served at `/`: a single page (`services/edge/console/`,
//! plain ES modules on Preact + htm, vendored from the npm registry and
//! embedded in the binary — nothing is fetched from elsewhere) that talks
//! to the edge's own routes only: the REST mapping, run events over SSE,
//! `/v1/health`, and its sign-in (`session`).
//!
//! ```text
//! GET /, /runs, /runs/{run_id}, /audit, /alerts, /health ─▶ index.html
//!   (the page routes itself from the path, so every view is deep-linkable)
//! GET /console/assets/{file} ─▶ an embedded file
//! POST /console/login, GET /console/session, POST /console/logout ─▶ session
//! ```
//!
//! Every response of the edge carries a strict Content-Security-Policy (no
//! inline script, no `eval`, connections to this origin only, no framing),
//! `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`:
//! what the page shows (model output, tool arguments and results, labels,
//! annotations) is untrusted and is only ever rendered as text.

mod session;

use axum::Router;
use axum::extract::{Path, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderValue, StatusCode, header};

pub(crate) use session::guard;

use crate::state::Edge;

/// The policy every response carries.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One embedded file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {
        Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $name)),
        }
    };
}

/// Every file of `services/edge/console/` (a test checks none is missing).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/main.js", "text/javascript; charset=utf-8"),
    asset!("js/api.js", "text/javascript; charset=utf-8"),
    asset!("js/nav.js", "text/javascript; charset=utf-8"),
    asset!("js/poll.js", "text/javascript; charset=utf-8"),
    asset!("js/format.js", "text/javascript; charset=utf-8"),
    asset!("js/runs.js", "text/javascript; charset=utf-8"),
    asset!("js/run.js", "text/javascript; charset=utf-8"),
    asset!("js/run_model.js", "text/javascript; charset=utf-8"),
    asset!("js/audit.js", "text/javascript; charset=utf-8"),
    asset!("js/alerts.js", "text/javascript; charset=utf-8"),
    asset!("js/health.js", "text/javascript; charset=utf-8"),
    asset!("vendor/preact-htm.js", "text/javascript; charset=utf-8"),
    asset!("vendor/LICENSE-htm.txt", "text/plain; charset=utf-8"),
    asset!("vendor/LICENSE-preact.txt", "text/plain; charset=utf-8"),
];

/// The console's routes.
pub(crate) fn routes() -> Router<Edge> {
    let page = get(index);
    Router::new()
        .route("/", page.clone())
        .route("/runs", page.clone())
        .route("/runs/{run_id}", page.clone())
        .route("/audit", page.clone())
        .route("/alerts", page.clone())
        .route("/health", page)
        .route("/console/assets/{*name}", get(asset))
        .route("/console/login", post(session::login))
        .route("/console/session", get(session::session))
        .route("/console/logout", post(session::logout))
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(name): Path<String>) -> Response {
    serve(&name)
}

fn serve(name: &str) -> Response {
    match ASSETS.iter().find(|asset| asset.name == name) {
        Some(asset) => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                // Names are not hashed: the browser asks again each time
                // (cheap on loopback, and never stale after an upgrade).
                (header::CACHE_CONTROL, "no-cache"),
            ],
            asset.body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file in the console\n").into_response(),
    }
}

/// The middleware that puts the security headers on every response.
pub(crate) async fn secure_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ] {
        headers.entry(name).or_insert(value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_of_the_console_is_embedded() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console");
        let mut files = Vec::new();
        let mut folders = vec![root.clone()];
        while let Some(folder) = folders.pop() {
            let Ok(entries) = std::fs::read_dir(&folder) else {
                panic!("cannot read {}", folder.display());
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    folders.push(path);
                } else if let Ok(name) = path.strip_prefix(&root) {
                    files.push(name.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        for file in &files {
            assert!(
                ASSETS.iter().any(|asset| asset.name == file),
                "{file} is not embedded: add it to ASSETS"
            );
        }
        assert_eq!(files.len(), ASSETS.len());
    }
}
