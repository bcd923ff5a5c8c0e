//! The web UI, server-rendered; the dashboard keeps itself current from the
//! live event stream with a small script (embedded, like the stylesheet:
//! nothing is fetched from the internet). Without JavaScript the page shows
//! the values as of loading it. No page ever holds a secret.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use crate::live::Live;

const SCRIPT: &str = include_str!("ui/dashboard.js");
const STYLE: &str = include_str!("ui/style.css");

/// What the pages show of this agent (public only).
pub struct Ui {
    pub name: String,
    pub device: String,
    pub fingerprint: String,
    pub live: Arc<Live>,
}

pub fn router(ui: Arc<Ui>) -> Router {
    let asset = |body: &'static str, kind: &'static str| {
        get(move || async move { ([(CONTENT_TYPE, kind), (CACHE_CONTROL, "no-cache")], body) })
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/assets/dashboard.js", asset(SCRIPT, "text/javascript; charset=utf-8"))
        .route("/assets/style.css", asset(STYLE, "text/css; charset=utf-8"))
        .with_state(ui)
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

fn row(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
    let value = match r["value"].as_f64() {
        Some(v) => format!("{v} {}", s("unit")),
        None => format!("{}, {} B", s("media_type"), r["bytes"].as_u64().unwrap_or(0)),
    };
    let origin = if s("origin") == "peer" { format!("from {}", s("peer")) } else { "this agent".into() };
    let description = r["description"].as_str().or(r["label"].as_str()).unwrap_or_default();
    let id: String = format!("s-{}/{}", s("device"), s("stream"))
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    format!(
        "<tr id=\"{id}\"><td data-f=\"stream\">{}</td><td data-f=\"origin\">{}</td><td data-f=\"value\">{}</td>\
         <td data-f=\"description\">{}</td><td data-f=\"time\">{}</td><td data-f=\"status\">{}</td>\
         <td data-f=\"chart\"><svg class=\"spark\" viewBox=\"0 0 120 24\"><polyline/></svg></td></tr>",
        esc(&s("stream")),
        esc(&origin),
        esc(&value),
        esc(description),
        esc(&s("time")),
        esc(&s("status")),
    )
}

async fn dashboard(State(ui): State<Arc<Ui>>) -> Response {
    let latest = ui.live.latest();
    let rows: String = if latest.is_empty() {
        "<tr id=\"empty\"><td colspan=\"7\">No readings yet since the agent started.</td></tr>".into()
    } else {
        latest.iter().map(row).collect()
    };
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>edgeseal · {name}</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body>\
         <header><h1>edgeseal · {name}</h1><span class=\"id\">device {device}</span>\
         <span class=\"id\">fingerprint {fingerprint}</span><span id=\"state\">not live</span></header>\
         <main><h2>Dashboard</h2><p>Readings of this agent's sensors and of what paired peers share, newest per stream.</p>\
         <table><thead><tr><th>Stream</th><th>From</th><th>Value</th><th>Description</th><th class=\"time\">Time</th>\
         <th>Status</th><th class=\"chart\">Recent</th></tr></thead><tbody id=\"streams\">{rows}</tbody></table>\
         <noscript><p>Without JavaScript this page shows the values as of loading it: reload for newer ones.</p></noscript>\
         <p><a href=\"/api/v1/openapi.json\">API</a></p></main>\
         <script src=\"/assets/dashboard.js\"></script></body></html>",
        name = esc(&ui.name),
        device = esc(&ui.device),
        fingerprint = esc(&ui.fingerprint),
    );
    (
        [
            (CONTENT_SECURITY_POLICY, "default-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(page),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes() {
        assert_eq!(super::esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
