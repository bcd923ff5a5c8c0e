//! Who may use the agent's HTTP server. Clients on this machine (loopback)
//! are served as the original served them; on any other address a client
//! must send the agent's token (`Authorization: Bearer <token>`, the token in
//! `<data dir>/api-token`, mode 0600) or sign in with it on `/login`. Forms
//! carry a CSRF token; requests from other web sites may not change the
//! agent; a loopback request under a foreign host name (DNS rebinding) is
//! refused.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::Form;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    AUTHORIZATION, COOKIE as COOKIE_HEADER, HOST, LOCATION, ORIGIN, SET_COOKIE, WWW_AUTHENTICATE,
};
use axum::http::{HeaderName, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

/// Who may use the server: this machine's clients; others with the API token
/// (as a bearer token, or once given on `/login`, as a session cookie); and
/// forms only with the CSRF token of this run.
pub struct Access {
    token: Option<String>,
    /// The session cookie's value (random for each start of the agent).
    session: String,
    /// What every form carries (random for each start of the agent).
    pub csrf: String,
}

const COOKIE: &str = "edgeseal_session";

fn random_hex() -> String {
    let mut b = [0u8; 32];
    // Without system randomness (the agent could not have made its keys either): empty, which
    // `csrf_ok` and the session check never accept.
    if getrandom::fill(&mut b).is_err() {
        return String::new();
    }
    hex::encode(b)
}

impl Access {
    pub fn new(token: Option<String>) -> Access {
        Access { token, session: random_hex(), csrf: random_hex() }
    }

    /// Whether a form's `csrf` field is this run's.
    pub fn csrf_ok(&self, given: &str) -> bool {
        !self.csrf.is_empty() && same(self.csrf.as_bytes(), given.trim().as_bytes())
    }

    fn bearer_ok(&self, req: &Request) -> bool {
        let given =
            req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        matches!((self.token.as_deref(), given), (Some(t), Some(g)) if same(t.as_bytes(), g.trim().as_bytes()))
    }

    fn cookie_ok(&self, req: &Request) -> bool {
        !self.session.is_empty()
            && req.headers().get_all(COOKIE_HEADER).iter().filter_map(|v| v.to_str().ok()).any(|v| {
                v.split(';')
                    .filter_map(|c| c.trim().split_once('='))
                    .any(|(k, val)| k == COOKIE && same(val.as_bytes(), self.session.as_bytes()))
            })
    }
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("token", &self.token.as_ref().map(|_| "[redacted]")).finish_non_exhaustive()
    }
}

/// `apis`, health and the login page, behind [`guard`].
pub fn guarded(device: String, apis: Router, access: Arc<Access>) -> Router {
    let health = get(move || health(device.clone()));
    Router::new()
        .route("/api/v1/health", health)
        .route("/login", get(login_page).post(login))
        .with_state(access.clone())
        .merge(apis)
        .layer(middleware::from_fn_with_state(access, guard))
}

/// Liveness.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    status: String,
    device: String,
    version: String,
}

/// Liveness, this agent's device id and its version.
#[utoipa::path(get, path = "/api/v1/health", tag = "agent",
    responses((status = 200, description = "the agent is up", body = Health)))]
pub async fn health(device: String) -> Json<Health> {
    Json(Health { status: "ok".into(), device, version: env!("CARGO_PKG_VERSION").into() })
}

fn login_form(problem: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>edgeseal · sign in</title>\
         <link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body><header><h1>edgeseal</h1></header><main>\
         <h2>Sign in</h2>{problem}<p>From another machine this agent asks for its API token: the text in \
         <code>api-token</code> in the agent's data directory.</p>\
         <form method=\"post\" action=\"/login\"><label>Token <input type=\"password\" name=\"token\" \
         autocomplete=\"current-password\" required></label> <button type=\"submit\">Sign in</button></form></main></body></html>"
    )
}

async fn login_page() -> Response {
    Html(login_form("")).into_response()
}

#[derive(serde::Deserialize)]
struct Login {
    token: String,
}

/// A right token sets the session cookie (HttpOnly, SameSite=Strict) for this run of the agent.
async fn login(State(access): State<Arc<Access>>, Form(f): Form<Login>) -> Response {
    match access.token.as_deref() {
        Some(t) if !access.session.is_empty() && same(t.as_bytes(), f.token.trim().as_bytes()) => {
            let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", access.session);
            (StatusCode::SEE_OTHER, [(SET_COOKIE, cookie), (LOCATION, "/".to_string())]).into_response()
        }
        _ => (StatusCode::UNAUTHORIZED, Html(login_form("<p class=\"bad\">That is not this agent's token.</p>")))
            .into_response(),
    }
}

/// What the guard answers when it refuses a request (the CloudSync API's shape, which it also guards).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[allow(non_snake_case)]
pub struct Refusal {
    /// Why: another machine without the token (401), or another web site or Host name (403).
    pub Message: String,
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"Message": message}))).into_response()
}

/// Whether `host` (a Host header or an Origin's authority) names this machine.
fn is_loopback_name(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) && !n.ends_with(':') => n,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Refuses requests from other web sites (a page elsewhere that posts to this
/// agent, or a DNS name rebound to 127.0.0.1); then lets loopback clients pass and
/// asks others for the token.
async fn guard(
    State(access): State<Arc<Access>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let (foreign_host, changes, cross_site) = {
        let header = |h: HeaderName| req.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let host = header(HOST);
        let origin = header(ORIGIN);
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        (
            peer.ip().is_loopback() && !host.is_empty() && !is_loopback_name(host),
            !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS),
            (!origin.is_empty() && origin_host != host)
                || header(HeaderName::from_static("sec-fetch-site")) == "cross-site",
        )
    };
    if foreign_host {
        return refuse(
            StatusCode::FORBIDDEN,
            "this agent answers its own machine's clients by the names localhost or 127.0.0.1 only (Host header)",
        );
    }
    if changes && cross_site {
        return refuse(StatusCode::FORBIDDEN, "a request from another web site may not change this agent");
    }
    if peer.ip().is_loopback() || access.bearer_ok(&req) || access.cookie_ok(&req) {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if path == "/login" || path == "/assets/style.css" {
        return next.run(req).await;
    }
    // Pages send a browser to sign in; the APIs and /metrics (machines' clients) answer 401.
    if !changes && !path.starts_with("/api/") && path != "/metrics" {
        return (StatusCode::SEE_OTHER, [(LOCATION, "/login")]).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"Message": "from another machine this API needs the agent's token: \
                                Authorization: Bearer <the token in the agent's data dir, api-token>"})),
    )
        .into_response()
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn same() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd") && !super::same(b"abc", b"ab"));
    }

    #[test]
    fn loopback_names() {
        for h in ["localhost:5000", "127.0.0.1:5000", "127.0.0.1", "[::1]:5000", "LOCALHOST"] {
            assert!(super::is_loopback_name(h), "{h}");
        }
        for h in ["evil.example:5000", "192.168.1.5:5000", "localhost.evil.example", "[::2]:80"] {
            assert!(!super::is_loopback_name(h), "{h}");
        }
    }
}
