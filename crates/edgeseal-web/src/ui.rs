//! The web UI, server-rendered; the dashboard keeps itself current from the
//! live event stream with a small script (embedded, like the stylesheet:
//! nothing is fetched from the internet). Without JavaScript the page shows
//! the values as of loading it. No page ever holds a secret.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, X_CONTENT_TYPE_OPTIONS};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use edgeseal_agent::batching::{describe_policy, interval_text, parse_policy};
use edgeseal_agent::live::{Live, LiveReading, LiveValue};
use edgeseal_agent::service::{PAIR_WAIT, Service, parse_stream};
use edgeseal_agent::times::format_ms;
use edgeseal_agent::views::{GrantView, PairingView, ReadingView, StreamView};
use edgeseal_agent::{Error, Result};

use crate::access::Access;
use crate::api::parse_range;
use crate::chart;

const SCRIPT: &str = include_str!("ui/dashboard.js");
const SHARING_SCRIPT: &str = include_str!("ui/sharing.js");
const STYLE: &str = include_str!("ui/style.css");
/// The icon: a seal over a sensor's line, in the UI's colour.
const ICON: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 32 32\">\
    <rect width=\"32\" height=\"32\" rx=\"7\" fill=\"#0e7490\"/>\
    <path d=\"M5 20l5-6 5 4 6-9 6 7\" fill=\"none\" stroke=\"#fff\" stroke-width=\"2.5\" stroke-linecap=\"round\" stroke-linejoin=\"round\"/>\
    <circle cx=\"23\" cy=\"24\" r=\"4\" fill=\"#fff\"/></svg>";

/// What the pages show of this agent (public only) and what they read and act with.
#[derive(Debug)]
pub struct Ui {
    name: String,
    device: String,
    fingerprint: String,
    live: Arc<Live>,
    service: Arc<Service>,
    access: Arc<Access>,
    /// The SHA-256 of the certificate served, over HTTPS.
    tls_fingerprint: Option<String>,
    /// The outcome of the last form, shown once on the page it returns to.
    flash: Mutex<Option<Flash>>,
    /// The last pairing outcome (paired, failed) the sharing page showed: it is said once.
    pairing_shown: Mutex<Option<PairingView>>,
}

impl Ui {
    pub fn new(service: Arc<Service>, live: Arc<Live>, access: Arc<Access>, tls_fingerprint: Option<String>) -> Ui {
        Ui {
            tls_fingerprint,
            name: service.name().to_string(),
            device: service.device().to_string(),
            fingerprint: service.fingerprint(),
            live,
            service,
            access,
            flash: Mutex::default(),
            pairing_shown: Mutex::default(),
        }
    }
}

#[derive(Debug)]
struct Flash {
    page: &'static str,
    ok: bool,
    text: String,
}

pub fn router(ui: Arc<Ui>) -> Router {
    let asset = |body: &'static str, kind: &'static str| {
        get(move || async move { ([(CONTENT_TYPE, kind), (CACHE_CONTROL, "no-cache")], body) })
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/storage", get(storage))
        .route("/sharing", get(sharing))
        .route("/actions/{action}", post(act))
        .route("/assets/dashboard.js", asset(SCRIPT, "text/javascript; charset=utf-8"))
        .route("/assets/sharing.js", asset(SHARING_SCRIPT, "text/javascript; charset=utf-8"))
        .route("/assets/style.css", asset(STYLE, "text/css; charset=utf-8"))
        .route("/favicon.svg", asset(ICON, "image/svg+xml"))
        .route("/favicon.ico", asset(ICON, "image/svg+xml"))
        .with_state(ui)
}

/// A form's fields; each action uses some.
#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ActionForm {
    csrf: String,
    count: String,
    interval: String,
    code: String,
    stream: String,
    peer: String,
    from: String,
}

/// The forms' actions: each checks the form's CSRF token, does what the REST
/// API's matching endpoint does, and returns to its page with the outcome.
async fn act(State(ui): State<Arc<Ui>>, Path(action): Path<String>, Form(f): Form<ActionForm>) -> Response {
    if !ui.access.csrf_ok(&f.csrf) {
        let body = "<p class=\"bad\">This form is from an earlier run of the agent or from another site. \
                    Go back, reload the page and try again.</p>";
        return (StatusCode::FORBIDDEN, page(&ui, "Refused", body)).into_response();
    }
    let c = &ui.service;
    let given = |v: &str, what: &str| match v.trim() {
        "" => Err(Error::bad(format!("{what} is missing"))),
        v => Ok(v.to_string()),
    };
    let (back, done): (&'static str, Result<String>) = match action.as_str() {
        "batching" => (
            "/storage",
            async {
                let p = parse_policy(&f.count, &f.interval)?;
                c.set_batching(p).await?;
                Ok(format!("Batches from now on: {}.", describe_policy(p)))
            }
            .await,
        ),
        "store-now" => (
            "/storage",
            async {
                let done = c.store_now().await?;
                let (batches, readings) = (done.batches, done.readings);
                Ok(match readings {
                    0 => "No readings were waiting in open batches.".to_string(),
                    r => {
                        format!("Sealed {r} readings in {batches} batch(es); they go to the store (and to peers) now.")
                    }
                })
            }
            .await,
        ),
        "pair" => ("/sharing", c.host(PAIR_WAIT).await.map(|_| String::new())),
        "pair-cancel" => ("/sharing", {
            c.cancel_pairing();
            Ok("Stopped showing the pairing code.".into())
        }),
        "join" => (
            "/sharing",
            async {
                let peer = c.join(&given(&f.code, "the code")?).await?;
                Ok(format!("Paired with {} (fingerprint {}).", peer.name, peer.fingerprint))
            }
            .await,
        ),
        "share" => (
            "/sharing",
            async {
                let (stream, from, _) = parse_range(&given(&f.stream, "the stream")?, Some(&f.from), None)?;
                let granted = c.grant(&given(&f.peer, "the peer")?, &stream, (from, None), false).await?;
                Ok(match from {
                    Some(t) => format!("{} may read {stream} from {} on.", granted.peer, format_ms(t)),
                    None => format!("{} may read {stream} from now on.", granted.peer),
                })
            }
            .await,
        ),
        "revoke" => (
            "/sharing",
            async {
                let stream = parse_stream(&given(&f.stream, "the stream")?)?;
                let done = c.revoke(&given(&f.peer, "the peer")?, std::slice::from_ref(&stream)).await?;
                Ok(format!("Revoked {} from {stream}: it opens nothing sealed from now on.", done.peer))
            }
            .await,
        ),
        "rotate" => (
            "/sharing",
            async {
                let stream = parse_stream(&given(&f.stream, "the stream")?)?;
                let epoch = c.rotate(&stream).await?.epoch;
                Ok(format!(
                    "{stream} now seals under a new key (epoch {epoch}); what was sealed before stays readable."
                ))
            }
            .await,
        ),
        _ => {
            return (StatusCode::NOT_FOUND, page(&ui, "Not found", "<p class=\"bad\">No such action.</p>"))
                .into_response();
        }
    };
    let flash = match done {
        Ok(text) => Flash { page: back, ok: true, text },
        Err(e) => Flash { page: back, ok: false, text: crate::ApiError(e).message() },
    };
    *ui.flash.lock().unwrap_or_else(|p| p.into_inner()) = Some(flash);
    (StatusCode::SEE_OTHER, [(LOCATION, back)]).into_response()
}

/// The outcome of the last form, if it returned to `path`.
fn take_flash(ui: &Ui, path: &str) -> String {
    let mut slot = ui.flash.lock().unwrap_or_else(|p| p.into_inner());
    match slot.take() {
        Some(f) if f.page == path && !f.text.is_empty() => {
            format!("<p id=\"flash\" class=\"flash {}\">{}</p>", if f.ok { "ok" } else { "bad" }, esc(&f.text))
        }
        Some(f) if f.page != path => {
            *slot = Some(f);
            String::new()
        }
        _ => String::new(),
    }
}

/// A form that posts `fields` (already HTML) to an action, with this run's CSRF token.
fn form(ui: &Ui, action: &str, fields: &str, button: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/actions/{action}\" class=\"act\" data-action=\"{action}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">{fields}<button type=\"submit\">{button}</button></form>",
        esc(&ui.access.csrf)
    )
}

fn hidden(name: &str, value: &str) -> String {
    format!("<input type=\"hidden\" name=\"{name}\" value=\"{}\">", esc(value))
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

/// A live value as the pages show it, and its description (the original's label, or the reading's).
fn shown(v: &LiveValue) -> (String, String) {
    match v {
        LiveValue::Scalar { value, unit, label, description } => {
            (format!("{value} {unit}"), description.clone().or_else(|| label.clone()).unwrap_or_default())
        }
        LiveValue::Blob { media_type, bytes } => (format!("{media_type}, {bytes} B"), String::new()),
    }
}

fn row(r: &LiveReading) -> String {
    let (value, description) = shown(&r.value);
    let origin = match (&r.origin[..], &r.peer) {
        ("peer", Some(p)) => format!("from {p}"),
        _ => "this agent".into(),
    };
    let description = description.as_str();
    let id: String = format!("s-{}/{}", r.device, r.stream)
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' })
        .collect();
    format!(
        "<tr id=\"{id}\" data-ts=\"{}\"><td data-f=\"stream\">{}</td><td data-f=\"origin\">{}</td><td data-f=\"value\">{}</td>\
         <td data-f=\"description\">{}</td><td data-f=\"time\">{}</td><td data-f=\"seen\"></td><td data-f=\"status\">{}</td></tr>",
        r.ts_ms,
        esc(&r.stream),
        esc(&origin),
        esc(&value),
        esc(description),
        esc(&r.time),
        esc(&r.status),
    )
}

/// The dashboard's choice of span: `?range=hour|day|week`.
#[derive(serde::Deserialize, Default)]
struct DashboardQuery {
    range: Option<String>,
}

/// A chart of each stream with numbers (this agent's and peers', stored or
/// live) over the span chosen, drawn by the server (`/charts/…`); the script
/// redraws one when its stream has new readings.
async fn charts(ui: &Ui, range: &str) -> String {
    let mut keys: Vec<(String, String)> =
        ui.service.streams().await.unwrap_or_default().into_iter().map(|v| (v.device, v.stream)).collect();
    for r in ui.live.latest() {
        let key = (r.device.clone(), r.stream.clone());
        match r.value {
            LiveValue::Blob { .. } => keys.retain(|k| *k != key),
            LiveValue::Scalar { .. } if !keys.contains(&key) => keys.push(key),
            LiveValue::Scalar { .. } => {}
        }
    }
    keys.sort_by(|a, b| (a.0 != ui.device, &a.1, &a.0).cmp(&(b.0 != ui.device, &b.1, &b.0)));
    let picks: String = chart::RANGES
        .iter()
        .map(|(name, label, _)| {
            let on = if *name == range { " class=\"on\" aria-current=\"true\"" } else { "" };
            format!("<a href=\"/?range={name}\"{on}>{label}</a>")
        })
        .collect();
    let label = chart::RANGES.iter().find(|r| r.0 == range).map_or("", |r| r.1);
    let figures: String = keys
        .iter()
        .map(|(device, stream)| {
            let from = if *device == ui.device {
                String::new()
            } else {
                format!(" (from {})", device.get(..8).unwrap_or(device))
            };
            format!(
                "<figure class=\"chart\" data-key=\"{key}\"><img src=\"/charts/{d}/{s}?range={range}\" \
                 alt=\"{s}{from} over the {label}\" width=\"480\" height=\"220\" loading=\"lazy\"></figure>",
                key = esc(&format!("{device}/{stream}")),
                d = esc(device),
                s = esc(stream),
                from = esc(&from),
            )
        })
        .collect();
    if figures.is_empty() {
        return String::new();
    }
    format!(
        "<section id=\"charts\" data-range=\"{range}\"><h3>Charts</h3><nav class=\"ranges\">{picks}</nav>\
         <div class=\"charts\">{figures}</div></section>"
    )
}

async fn dashboard(State(ui): State<Arc<Ui>>, Query(q): Query<DashboardQuery>) -> Response {
    let range = match q.range.as_deref() {
        None | Some("") => "hour",
        Some(r) if chart::span_of(Some(r)).is_ok() => r,
        Some(r) => {
            let why = format!("<p class=\"bad\">No span {}: choose the last hour, day or week.</p>", esc(r));
            return (StatusCode::BAD_REQUEST, page(&ui, "Dashboard", &why)).into_response();
        }
    };
    let charts = charts(&ui, range).await;
    let latest = ui.live.latest();
    let rows: String = if latest.is_empty() {
        "<tr id=\"empty\"><td colspan=\"7\">No readings yet since the agent started.</td></tr>".into()
    } else {
        latest.iter().map(row).collect()
    };
    let sensors: String = ui
        .live
        .sensors()
        .iter()
        .map(|h| {
            format!(
                "<tr><td>{}</td><td data-f=\"health\" class=\"{}\">{}</td><td>{}</td><td>{}</td><td class=\"time\">{}</td><td>{}</td></tr>",
                esc(&h.sensor),
                if h.health == "failing" { "bad" } else { "ok" },
                esc(&h.health),
                h.reads,
                h.failures,
                esc(h.last_ok.as_deref().unwrap_or_default()),
                esc(h.last_error.as_deref().unwrap_or_default()),
            )
        })
        .collect();
    let sensors = if sensors.is_empty() {
        String::new()
    } else {
        format!(
            "<h3>Sensors</h3><table><thead><tr><th>Sensor</th><th>Health</th><th>Reads</th><th>Failed</th>\
             <th class=\"time\">Last read</th><th>Last error</th></tr></thead><tbody id=\"sensors\">{sensors}</tbody></table>"
        )
    };
    let body = format!(
        "<h2>Dashboard</h2><p>Readings of this agent's sensors and of what paired peers share, newest per stream.</p>\
         <div class=\"scroll\"><table><thead><tr><th>Stream</th><th>From</th><th>Value</th><th>Description</th><th class=\"time\">Time</th>\
         <th>Seen</th><th>Status</th></tr></thead><tbody id=\"streams\">{rows}</tbody></table></div>\
         {charts}{sensors}\
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
         <title>{title} · edgeseal · {name}</title><link rel=\"stylesheet\" href=\"/assets/style.css\">\
         <link rel=\"icon\" href=\"/favicon.svg\" type=\"image/svg+xml\"></head><body>\
         <header><h1>edgeseal · {name}</h1><span class=\"id\">device {device}</span>\
         <span class=\"id\">fingerprint {fingerprint}</span><span id=\"state\"></span>\
         <nav><a href=\"/\">Dashboard</a> <a href=\"/storage\">Storage</a> <a href=\"/sharing\">Sharing</a> <a href=\"/api/v1/openapi.json\">API</a></nav></header>\
         <main>{body}</main><footer class=\"muted\">Times in {zone}.</footer></body></html>",
        zone = esc(&edgeseal_agent::times::output_zone().name()),
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
    /// The page of the readings table, from 1.
    page: Option<usize>,
}

/// Readings a page of the table shows (the downloads hold all).
const PAGE: usize = 100;

/// Storage: pick a stream and a time range; see each batch's verification
/// status, the findings and the readings; download them as CSV or JSON.
async fn storage(State(ui): State<Arc<Ui>>, Query(q): Query<Retrieve>) -> Response {
    let streams = ui.service.streams().await.unwrap_or_default();
    let picked = q.pick.as_deref().and_then(|p| p.split_once('/'));
    let chosen = picked.map(|(_, s)| s.to_string()).or(q.stream.clone()).unwrap_or_default();
    let chosen_device = picked.map(|(d, _)| d.to_string()).or(q.device.clone()).unwrap_or_else(|| ui.device.clone());
    let options: String = streams
        .iter()
        .map(|v: &StreamView| {
            let (st, dev, own) = (v.stream.as_str(), v.device.as_str(), v.own);
            let value = format!("{dev}/{st}");
            let selected = if st == chosen && dev == chosen_device { " selected" } else { "" };
            let label = if own { st.to_string() } else { format!("{st} (from {})", dev.get(..8).unwrap_or(dev)) };
            format!("<option value=\"{}\"{selected}>{}</option>", esc(&value), esc(&label))
        })
        .collect();
    let field = |v: &Option<String>| esc(v.as_deref().unwrap_or_default());
    let policy = ui.service.policy();
    let interval = interval_text(policy);
    let own: String = ui
        .service
        .config()
        .per_stream
        .iter()
        .map(|(s, p)| format!(" {} has its own: {}.", esc(s.as_str()), esc(&describe_policy(*p))))
        .collect();
    let batching = format!(
        "<section id=\"batching\"><h3>Batching</h3><p>Readings are sealed and stored in batches: \
         <strong id=\"policy\">{}</strong>.{own}</p><div class=\"row\">{}{}</div></section>",
        esc(&describe_policy(policy)),
        form(
            &ui,
            "batching",
            &format!(
                "<label>Readings per batch <input name=\"count\" value=\"{}\" inputmode=\"numeric\" size=\"6\"></label>\
                 <label>Interval <input name=\"interval\" value=\"{}\" size=\"6\" placeholder=\"off\"></label>",
                policy.count,
                esc(&interval)
            ),
            "Set"
        ),
        form(&ui, "store-now", "", "Store now"),
    );
    let mut body = format!(
        "<h2>Storage</h2>{}{batching}<h3>Retrieve</h3><form method=\"get\" action=\"/storage\" class=\"range\">\
         <label>Stream <select name=\"pick\" id=\"pick\">{options}</select></label>\
         <label>From <input name=\"from\" value=\"{}\" placeholder=\"-1h\"></label>\
         <label>To <input name=\"to\" value=\"{}\" placeholder=\"now\"></label>\
         <button type=\"submit\">Retrieve and verify</button></form>",
        take_flash(&ui, "/storage"),
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
    let read = async {
        let (name, from, to) = parse_range(stream, q.from.as_deref(), q.to.as_deref())?;
        ui.service.read(&name, Some(device), from, to).await
    };
    let v = match read.await {
        Ok(v) => v,
        Err(e) => {
            let why = crate::ApiError(e).message();
            return format!("<p class=\"bad\">Cannot retrieve {}: {}</p>", esc(stream), esc(&why));
        }
    };
    let mut notes = String::new();
    if !v.granted {
        notes.push_str(&format!(
            "<p class=\"bad\" id=\"not-granted\">This agent holds no grant of {} of this device: its batches verify, \
             but none opens. Its owner shares it with <code>edgeseal share</code>.</p>",
            esc(stream)
        ));
    } else if v.outside_grant_batches > 0 {
        notes.push_str(&format!(
            "<p class=\"muted\">{} batch(es) begin before (or after) the time this agent was granted: not shown.</p>",
            v.outside_grant_batches
        ));
    }
    let verdict = if v.verified {
        "<p class=\"ok\">Every batch in the range verified: authentic, complete, in order, not rolled back.</p>"
            .to_string()
    } else {
        let findings: String = v.findings.iter().map(|f| format!("<li>{}</li>", esc(&f.message))).collect();
        format!("<p class=\"bad\">Problems found; only verified batches are shown:</p><ul>{findings}</ul>")
    };
    let batches: String = v
        .batches
        .iter()
        .map(|b| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"status {}\">{}</td></tr>",
                b.seq,
                esc(&b.first),
                esc(&b.last),
                if b.status == "verified" { "ok" } else { "bad" },
                esc(&b.status)
            )
        })
        .collect();
    let readings = &v.readings;
    let pages = readings.len().div_ceil(PAGE).max(1);
    let at = q.page.unwrap_or(1).clamp(1, pages);
    let rows: String = readings
        .iter()
        .skip((at - 1) * PAGE)
        .take(PAGE)
        .map(|r| {
            let (value, label) = match r {
                ReadingView::Scalar { value, unit, label, stream, .. } => (
                    format!("{value} {unit}"),
                    label.clone().or_else(|| edgeseal_sensors::describe(stream, *value).map(str::to_string)),
                ),
                ReadingView::Blob { media_type, data_base64, .. } => {
                    (format!("{media_type} ({} B)", data_base64.len() * 3 / 4), None)
                }
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(r.time()),
                esc(&value),
                esc(label.as_deref().unwrap_or_default())
            )
        })
        .collect();
    // The range asked for, as query parameters (HTML-escaped), for the links below.
    let range: Vec<String> = [("from", &q.from), ("to", &q.to)]
        .into_iter()
        .filter_map(|(k, val)| {
            val.as_deref().filter(|t| !t.is_empty()).map(|t| format!("{k}={}", esc(&t.replace('+', "%2B"))))
        })
        .collect();
    let query = |format: &str| {
        let mut p = vec![format!("device={}", esc(device))];
        p.extend(range.iter().cloned());
        if !format.is_empty() {
            p.push(format!("format={format}"));
        }
        format!("/api/v1/streams/{}/readings?{}", esc(stream), p.join("&amp;"))
    };
    // Links to the other pages of the table, keeping the rest of the query.
    let page_link = |n: usize, text: &str| {
        let mut p = vec![format!("pick={}", esc(&format!("{device}/{stream}")))];
        p.extend(range.iter().cloned());
        p.push(format!("page={n}"));
        format!("<a href=\"/storage?{}\" rel=\"{}\">{text}</a>", p.join("&amp;"), if n < at { "prev" } else { "next" })
    };
    let more = if pages > 1 {
        format!(
            "<div class=\"pages\" id=\"pages\">{}<span>Page {at} of {pages} ({PAGE} a page)</span>{}</div>",
            if at > 1 { page_link(at - 1, "← previous page") } else { String::new() },
            if at < pages { page_link(at + 1, "next page →") } else { String::new() },
        )
    } else {
        String::new()
    };
    let first_last = readings.first().zip(readings.last()).map(|(a, b)| (a.ts_ms(), b.ts_ms()));
    let chart = match first_last {
        Some((a, b)) if v.readings.iter().any(|r| matches!(r, ReadingView::Scalar { .. })) => format!(
            "<figure class=\"chart\" id=\"range-chart\"><img src=\"/charts/{}/{}?from={a}&amp;to={}\" \
             alt=\"{} over the range retrieved\" width=\"480\" height=\"220\"></figure>",
            esc(device),
            esc(stream),
            b.max(a + 1),
            esc(stream),
        ),
        _ => String::new(),
    };
    format!(
        "{verdict}{notes}{chart}<p>Download: <a href=\"{}\">CSV</a> · <a href=\"{}\">JSON</a></p>\
         <h3>Batches</h3><table id=\"batches\"><thead><tr><th>Seq</th><th>First</th><th>Last</th><th>Status</th></tr></thead><tbody>{batches}</tbody></table>\
         <h3>Readings ({})</h3>{more}<table id=\"readings\"><thead><tr><th>Time</th><th>Value</th><th>Label</th></tr></thead><tbody>{rows}</tbody></table>",
        query("csv"),
        query(""),
        readings.len(),
    )
}

/// The agent's identity as a QR code (inline SVG): `edgeseal:<fingerprint>?device=<id>`, for comparing with a phone.
fn qr_svg(ui: &Ui) -> String {
    let text = format!("edgeseal:{}?device={}", ui.fingerprint, ui.device);
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => {
            let svg = code.render::<qrcode::render::svg::Color>().min_dimensions(168, 168).quiet_zone(true).build();
            // Inline in HTML: without the XML declaration.
            svg.find("<svg")
                .map(|i| {
                    svg[i..].replacen(
                        "<svg",
                        "<svg id=\"qr\" role=\"img\" aria-label=\"QR code of the fingerprint\"",
                        1,
                    )
                })
                .unwrap_or_default()
        }
        Err(_) => String::new(),
    }
}

/// Sharing: this agent's fingerprint and QR code, pairing (show or enter a
/// code), peers and their grants (revoke), sharing a stream, rotating a key,
/// and what peers share with this agent, with its verification status.
async fn sharing(State(ui): State<Arc<Ui>>) -> Response {
    let flash = take_flash(&ui, "/sharing");
    let peers = ui.service.peers().await.unwrap_or_default();
    let streams = ui.service.streams().await.unwrap_or_default();
    let own: Vec<String> = streams.iter().filter(|v| v.own).map(|v| v.stream.clone()).collect();
    let opt = |v: &str, label: &str| format!("<option value=\"{}\">{}</option>", esc(v), esc(label));

    let me = format!(
        "<section id=\"me\" class=\"row\"><div>{}</div><div><h3>This agent</h3><p>{}</p>\
         <p>Fingerprint<br><strong id=\"fingerprint\" class=\"mono\">{}</strong></p><p class=\"muted\">Device {}</p>\
         <p class=\"muted\">A paired agent shows this fingerprint for this agent: compare them (or scan the code).</p>{}</div></section>",
        qr_svg(&ui),
        esc(&ui.name),
        esc(&ui.fingerprint),
        esc(&ui.device),
        ui.tls_fingerprint.as_deref().map_or(String::new(), |f| format!(
            "<p>Served over HTTPS; its certificate's SHA-256 (what the browser shows for this page)<br>\
             <strong id=\"tls-fingerprint\" class=\"mono\">{}</strong></p>",
            esc(f)
        ))
    );

    // An outcome is said once, like a form's: the next visit starts afresh (the agent's state is left as it is).
    let state = match ui.service.pairing() {
        s @ (PairingView::Paired { .. } | PairingView::Failed { .. }) => {
            let mut shown = ui.pairing_shown.lock().unwrap_or_else(|p| p.into_inner());
            if shown.as_ref() == Some(&s) {
                PairingView::Idle
            } else {
                *shown = Some(s.clone());
                s
            }
        }
        s => s,
    };
    let pairing_now = match &state {
        PairingView::Waiting { code, until } => format!(
            "<p>Enter this code on the other agent's Sharing page (or run <code>edgeseal pair {code}</code> there):</p>\
             <p class=\"code\"><strong id=\"pair-code\">{code}</strong></p><p class=\"muted\">Waiting until {}. \
             <noscript>Reload this page to see when the other agent has paired.</noscript></p>{}",
            esc(until),
            form(&ui, "pair-cancel", "", "Cancel"),
            code = esc(code),
        ),
        PairingView::Paired { peer } => format!(
            "<p class=\"ok\">Paired with <strong>{}</strong>, fingerprint <span class=\"mono\">{}</span>: \
             check that the other agent shows the same for itself.</p>",
            esc(&peer.name),
            esc(&peer.fingerprint)
        ),
        PairingView::Failed { error } => {
            let why = error.strip_prefix("pairing failed: ").unwrap_or(error);
            format!("<p class=\"bad\" id=\"pair-failed\">Pairing failed: {}</p>", esc(why))
        }
        PairingView::Idle => String::new(),
    };
    let kind = match &state {
        PairingView::Idle => "idle",
        PairingView::Waiting { .. } => "waiting",
        PairingView::Paired { .. } => "paired",
        PairingView::Failed { .. } => "failed",
    };
    let pair = format!(
        "<section id=\"pairing\" data-state=\"{kind}\"><h3>Pair with another agent</h3>{pairing_now}<div class=\"row\">{}{}</div></section>",
        if matches!(state, PairingView::Waiting { .. }) {
            String::new()
        } else {
            form(&ui, "pair", "", "Show a pairing code")
        },
        form(
            &ui,
            "join",
            "<label>Code from the other agent <input name=\"code\" id=\"join-code\" autocomplete=\"off\" size=\"12\"></label>",
            "Pair"
        ),
    );

    let peer_rows: String = peers
        .iter()
        .map(|p| {
            let (pname, device) = (p.name.as_str(), p.device_id.as_str());
            let given: String = p
                .grants
                .iter()
                .filter_map(|g| match g {
                    GrantView::Given { stream, revoked: true, .. } => {
                        Some(format!("<li class=\"muted\">{} (revoked)</li>", esc(stream)))
                    }
                    GrantView::Given { stream, from, published, .. } => {
                        let state = if *published { "" } else { " (not yet sent)" };
                        let fields = [hidden("peer", device), hidden("stream", stream)].concat();
                        Some(format!(
                            "<li data-stream=\"{}\">{}{state} from {} {}</li>",
                            esc(stream),
                            esc(stream),
                            esc(from),
                            form(&ui, "revoke", &fields, "Revoke")
                        ))
                    }
                    GrantView::Received { .. } => None,
                })
                .collect();
            let received: String = p
                .grants
                .iter()
                .filter(|g| matches!(g, GrantView::Received { .. }))
                .map(|g| {
                    let revoked = if g.revoked() { " (revoked)" } else { "" };
                    format!("<li>{}{revoked}</li>", esc(g.stream()))
                })
                .collect();
            format!(
                "<tr data-peer=\"{}\"><td><strong>{}</strong><br><span class=\"muted mono\">{}</span></td>\
                 <td class=\"mono\">{}</td><td class=\"time\">{}</td><td><ul class=\"grants given\">{given}</ul></td><td><ul class=\"grants\">{received}</ul></td></tr>",
                esc(pname),
                esc(pname),
                esc(device.get(..12).unwrap_or(device)),
                esc(&p.fingerprint),
                esc(&p.paired),
            )
        })
        .collect();
    let peers_html = match peers.is_empty() {
        true => "<section id=\"peers\"><h3>Peers</h3><p>No peers yet: pair with another agent above.</p></section>"
            .to_string(),
        false => format!(
            "<section id=\"peers\"><h3>Peers</h3><table><thead><tr><th>Peer</th><th>Fingerprint</th><th class=\"time\">Paired</th>\
             <th>Shared with it</th><th>It shares</th></tr></thead><tbody>{peer_rows}</tbody></table></section>"
        ),
    };
    let share_html = if peers.is_empty() {
        String::new()
    } else if own.is_empty() {
        "<section id=\"share\"><h3>Share a stream</h3><p>This agent has no streams of its own stored yet.</p></section>"
            .to_string()
    } else {
        let stream_opts: String = own.iter().map(|s| opt(s, s)).collect();
        let peer_opts: String = peers.iter().map(|p| opt(&p.device_id, &p.name)).collect();
        let share = form(
            &ui,
            "share",
            &format!(
                "<label>Stream <select name=\"stream\" id=\"share-stream\">{stream_opts}</select></label>\
                 <label>With <select name=\"peer\" id=\"share-peer\">{peer_opts}</select></label>\
                 <label>From <input name=\"from\" placeholder=\"now\" size=\"8\" title=\"now (live only), -1h, 0 (everything) or a date\"></label>"
            ),
            "Share",
        );
        let rotate = form(
            &ui,
            "rotate",
            &format!("<label>Stream <select name=\"stream\">{stream_opts}</select></label>"),
            "Rotate key",
        );
        format!(
            "<section id=\"share\"><h3>Share a stream</h3><p class=\"muted\">A peer opens what is sealed from the time given on; \
             revoking stops it opening anything sealed after.</p>{share}\
             <p class=\"muted\">Rotating a stream's key: what is sealed from now on needs the new key, which only peers still granted get.</p>{rotate}</section>"
        )
    };

    let received: String = ui
        .live
        .latest()
        .iter()
        .filter(|r| r.origin == "peer")
        .map(|r| {
            let (stream, device) = (r.stream.as_str(), r.device.as_str());
            let value = match &r.value {
                LiveValue::Scalar { value, unit, .. } => format!("{value} {unit}"),
                LiveValue::Blob { bytes, .. } => format!("{bytes} B"),
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"time\">{}</td><td class=\"status ok\">{}</td>\
                 <td><a href=\"/storage?pick={}/{}&amp;from=-1h\">Retrieve and verify</a></td></tr>",
                esc(r.peer.as_deref().unwrap_or_default()),
                esc(stream),
                esc(&value),
                esc(&r.time),
                esc(&r.status),
                esc(device),
                esc(stream)
            )
        })
        .collect();
    let stored_from_peers = streams.iter().filter(|v| !v.own).count();
    let received_html = if received.is_empty() {
        format!(
            "<section id=\"received\"><h3>Received</h3><p>Nothing received since the agent started{}.</p></section>",
            if stored_from_peers > 0 {
                format!(
                    "; {stored_from_peers} stream(s) received before are on the <a href=\"/storage\">Storage</a> page"
                )
            } else {
                String::new()
            }
        )
    } else {
        format!(
            "<section id=\"received\"><h3>Received</h3><p class=\"muted\">Newest reading of each stream peers share; \
             each was verified (authentic, in order, complete) before it is shown.</p>\
             <table><thead><tr><th>Peer</th><th>Stream</th><th>Value</th><th class=\"time\">Time</th><th>Status</th><th></th></tr></thead>\
             <tbody>{received}</tbody></table></section>"
        )
    };
    let body = format!(
        "<h2>Sharing</h2>{flash}{me}{pair}{peers_html}{share_html}{received_html}<script src=\"/assets/sharing.js\"></script>"
    );
    page(&ui, "Sharing", &body)
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes() {
        assert_eq!(super::esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
