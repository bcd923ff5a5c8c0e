//! The web UI, server-rendered; the dashboard keeps itself current from the
//! live event stream with a small script (embedded, like the stylesheet:
//! nothing is fetched from the internet). Without JavaScript the page shows
//! the values as of loading it. No page ever holds a secret.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde_json::Value;

use crate::live::Live;

const SCRIPT: &str = include_str!("ui/dashboard.js");
const STYLE: &str = include_str!("ui/style.css");

/// What the pages show of this agent (public only) and what they read with.
pub struct Ui {
    pub name: String,
    pub device: String,
    pub fingerprint: String,
    pub live: Arc<Live>,
    pub api: crate::api::Api,
}

pub fn router(ui: Arc<Ui>) -> Router {
    let asset = |body: &'static str, kind: &'static str| {
        get(move || async move { ([(CONTENT_TYPE, kind), (CACHE_CONTROL, "no-cache")], body) })
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/storage", get(storage))
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
    let body = format!(
        "<h2>Dashboard</h2><p>Readings of this agent's sensors and of what paired peers share, newest per stream.</p>\
         <table><thead><tr><th>Stream</th><th>From</th><th>Value</th><th>Description</th><th class=\"time\">Time</th>\
         <th>Status</th><th class=\"chart\">Recent</th></tr></thead><tbody id=\"streams\">{rows}</tbody></table>\
         <noscript><p>Without JavaScript this page shows the values as of loading it: reload for newer ones.</p></noscript>\
         <script src=\"/assets/dashboard.js\"></script>"
    );
    page(&ui, "Dashboard", &body)
}

/// A page: header with the agent's public identity, navigation, `body`.
fn page(ui: &Ui, title: &str, body: &str) -> Response {
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · edgeseal · {name}</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head><body>\
         <header><h1>edgeseal · {name}</h1><span class=\"id\">device {device}</span>\
         <span class=\"id\">fingerprint {fingerprint}</span><span id=\"state\"></span>\
         <nav><a href=\"/\">Dashboard</a> <a href=\"/storage\">Storage</a> <a href=\"/api/v1/openapi.json\">API</a></nav></header>\
         <main>{body}</main></body></html>",
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

#[derive(serde::Deserialize, Default)]
struct Retrieve {
    /// The form's choice, `DEVICE/STREAM`.
    pick: Option<String>,
    stream: Option<String>,
    device: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// Readings shown on the page at most (the downloads hold all).
const SHOWN: usize = 500;

/// Storage: pick a stream and a time range; see each batch's verification
/// status, the findings and the readings; download them as CSV or JSON.
async fn storage(State(ui): State<Arc<Ui>>, Query(q): Query<Retrieve>) -> Response {
    let streams = crate::commands::streams_json(&ui.api.cfg).await.unwrap_or_default();
    let picked = q.pick.as_deref().and_then(|p| p.split_once('/'));
    let chosen = picked.map(|(_, s)| s.to_string()).or(q.stream.clone()).unwrap_or_default();
    let chosen_device = picked.map(|(d, _)| d.to_string()).or(q.device.clone()).unwrap_or_else(|| ui.device.clone());
    let options: String = streams
        .iter()
        .map(|v| {
            let (st, dev) = (v["stream"].as_str().unwrap_or_default(), v["device"].as_str().unwrap_or_default());
            let own = v["own"] == true;
            let value = format!("{dev}/{st}");
            let selected = if st == chosen && dev == chosen_device { " selected" } else { "" };
            let label = if own { st.to_string() } else { format!("{st} (from {})", dev.get(..8).unwrap_or(dev)) };
            format!("<option value=\"{}\"{selected}>{}</option>", esc(&value), esc(&label))
        })
        .collect();
    let field = |v: &Option<String>| esc(v.as_deref().unwrap_or_default());
    let mut body = format!(
        "<h2>Storage</h2><form method=\"get\" action=\"/storage\" class=\"range\">\
         <label>Stream <select name=\"pick\" id=\"pick\">{options}</select></label>\
         <label>From <input name=\"from\" value=\"{}\" placeholder=\"-1h\"></label>\
         <label>To <input name=\"to\" value=\"{}\" placeholder=\"now\"></label>\
         <button type=\"submit\">Retrieve and verify</button></form>",
        field(&q.from),
        field(&q.to),
    );
    if !chosen.is_empty() {
        body.push_str(&retrieval(&ui, &chosen, &chosen_device, &q).await);
    } else if streams.is_empty() {
        body.push_str("<p>No streams stored yet.</p>");
    }
    page(&ui, "Storage", &body)
}

/// The result part of the storage page.
async fn retrieval(ui: &Ui, stream: &str, device: &str, q: &Retrieve) -> String {
    let given = |t: &Option<String>| t.as_deref().filter(|t| !t.is_empty()).map(str::to_string);
    let (from, to) = (given(&q.from), given(&q.to));
    let read = async {
        let (name, from, to) = crate::api::parse_range(stream, from.as_deref(), to.as_deref())?;
        crate::commands::read_json(&ui.api.cfg, ui.api.identity.clone(), &name, Some(device), from, to).await
    };
    let v = match read.await {
        Ok(v) => v,
        Err(e) => return format!("<p class=\"bad\">Cannot retrieve {}: {}</p>", esc(stream), esc(&format!("{e:#}"))),
    };
    let verdict = if v["verified"] == true {
        "<p class=\"ok\">Every batch in the range verified: authentic, complete, in order, not rolled back.</p>"
            .to_string()
    } else {
        let findings: String = v["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| format!("<li>{}</li>", esc(f["message"].as_str().unwrap_or_default())))
            .collect();
        format!("<p class=\"bad\">Problems found; only verified batches are shown:</p><ul>{findings}</ul>")
    };
    let batches: String = v["batches"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let status = b["status"].as_str().unwrap_or_default();
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"status {}\">{}</td></tr>",
                b["seq"],
                esc(b["first"].as_str().unwrap_or_default()),
                esc(b["last"].as_str().unwrap_or_default()),
                if status == "verified" { "ok" } else { "bad" },
                esc(status)
            )
        })
        .collect();
    let readings = v["readings"].as_array().cloned().unwrap_or_default();
    let rows: String = readings
        .iter()
        .take(SHOWN)
        .map(|r| {
            let value = match r["value"].as_f64() {
                Some(x) => format!("{x} {}", r["unit"].as_str().unwrap_or_default()),
                None => format!(
                    "{} ({} B)",
                    r["media_type"].as_str().unwrap_or_default(),
                    r["data_base64"].as_str().map_or(0, |d| d.len() * 3 / 4)
                ),
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(r["time"].as_str().unwrap_or_default()),
                esc(&value),
                esc(r["label"].as_str().unwrap_or_default())
            )
        })
        .collect();
    let query = |format: &str| {
        let mut p = vec![format!("device={}", esc(device))];
        for (k, val) in [("from", &q.from), ("to", &q.to)] {
            if let Some(t) = val.as_deref().filter(|t| !t.is_empty()) {
                p.push(format!("{k}={}", esc(&t.replace('+', "%2B"))));
            }
        }
        if !format.is_empty() {
            p.push(format!("format={format}"));
        }
        format!("/api/v1/streams/{}/readings?{}", esc(stream), p.join("&amp;"))
    };
    let more = if readings.len() > SHOWN {
        format!("<p>Showing {SHOWN} of {}; the downloads hold all.</p>", readings.len())
    } else {
        String::new()
    };
    format!(
        "{verdict}<p>Download: <a href=\"{}\">CSV</a> · <a href=\"{}\">JSON</a></p>\
         <h3>Batches</h3><table id=\"batches\"><thead><tr><th>Seq</th><th>First</th><th>Last</th><th>Status</th></tr></thead><tbody>{batches}</tbody></table>\
         <h3>Readings ({})</h3>{more}<table id=\"readings\"><thead><tr><th>Time</th><th>Value</th><th>Label</th></tr></thead><tbody>{rows}</tbody></table>",
        query("csv"),
        query(""),
        readings.len(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes() {
        assert_eq!(super::esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
