//! The REST API under `/api/v1` (JSON): what the CLI's `--json` output shows,
//! from the same functions, and the OpenAPI document that describes it and
//! the CloudSync-compatible endpoints.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

use crate::config::Config;
use crate::control::{Control, Pairing, parse_policy, policy_json};
use edgeseal_core::keys::Identity;

/// What the handlers need: the configuration, the agent's identity (for keys)
/// and the running agent's controls.
#[derive(Clone)]
pub struct Api {
    pub cfg: Arc<Config>,
    pub identity: Arc<Identity>,
    pub control: Arc<Control>,
}

#[derive(serde::Deserialize)]
struct Range {
    device: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// `csv` for a download in `fetch --format csv`'s columns; default JSON.
    format: Option<String>,
}

/// A stream name and a time range as the CLI takes them (RFC 3339, relative, now, ms); errors name the field.
pub fn parse_range(
    stream: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<(edgeseal_core::StreamName, Option<i64>, Option<i64>)> {
    let now = crate::timefmt::now_ms();
    let time = |t: Option<&str>, what: &str| {
        t.map(|t| crate::timefmt::parse_time(t, now).map_err(|e| anyhow::anyhow!("{what}: {e}"))).transpose()
    };
    Ok((crate::commands::parse_stream(stream)?, time(from, "from")?, time(to, "to")?))
}

/// `GET /api/v1/streams/{stream}/readings`: a verified, opened time range.
async fn readings(State(api): State<Api>, Path(stream): Path<String>, Query(q): Query<Range>) -> Response {
    let parsed = parse_range(&stream, q.from.as_deref(), q.to.as_deref());
    let (stream, from, to) = match parsed {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({"error": format!("{e:#}")}))).into_response(),
    };
    let read = crate::commands::read_json(&api.cfg, api.identity.clone(), &stream, q.device.as_deref(), from, to).await;
    match (q.format.as_deref(), read) {
        (Some("csv"), Ok(v)) => {
            let mut body = format!("{}\n", crate::commands::CSV_HEADER);
            for r in v["readings"].as_array().into_iter().flatten() {
                body.push_str(&crate::commands::csv_line(r));
                body.push('\n');
            }
            let disposition = format!("attachment; filename=\"{stream}.csv\"");
            ([(CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (CONTENT_DISPOSITION, disposition)], body)
                .into_response()
        }
        (_, read) => answer(read),
    }
}

/// An error as JSON, without secrets (the functions behind the API never put any in one).
fn answer(r: anyhow::Result<Value>) -> Response {
    answer_with(r, StatusCode::INTERNAL_SERVER_ERROR)
}

/// `status` for an error, but 502 when it is the broker that cannot be reached.
fn answer_with(r: anyhow::Result<Value>, status: StatusCode) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => {
            let text = format!("{e:#}");
            let status = if text.contains("cannot reach the MQTT broker") { StatusCode::BAD_GATEWAY } else { status };
            (status, Json(json!({"error": text}))).into_response()
        }
    }
}

fn bad_request(e: anyhow::Error) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": format!("{e:#}")}))).into_response()
}

/// A JSON body, or a 400 that says what is wrong with it.
fn body<T: serde::de::DeserializeOwned>(text: &str) -> anyhow::Result<T> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| anyhow::anyhow!("the request body: {e}"))
}

/// The batch policy, with the streams that have their own.
pub fn batching_json(api: &Api) -> Value {
    let mut v = policy_json(api.control.policy());
    let own: serde_json::Map<String, Value> =
        api.cfg.per_stream.iter().map(|(s, p)| (s.to_string(), policy_json(*p))).collect();
    v["per_stream"] = Value::Object(own);
    v
}

#[derive(serde::Deserialize)]
struct BatchingBody {
    #[serde(deserialize_with = "crate::config::text_or_number")]
    count: String,
    #[serde(default)]
    interval: Option<String>,
}

async fn set_batching(State(api): State<Api>, text: String) -> Response {
    let b: BatchingBody = match body(&text) {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    let policy = match parse_policy(&b.count, b.interval.as_deref().unwrap_or("off")) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    answer(api.control.set_policy(policy).await.map(|()| batching_json(&api)))
}

async fn store_now(State(api): State<Api>) -> Response {
    answer(api.control.store_now().await.map(|(batches, readings)| json!({"batches": batches, "readings": readings})))
}

#[derive(serde::Deserialize)]
struct PairBody {
    code: Option<String>,
}

/// Without a code: show one (and pair when the other agent enters it); with one: join.
async fn pair(State(api): State<Api>, text: String) -> Response {
    let b: PairBody = match body(&text) {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    match b.code {
        None => answer_with(api.control.host().await.map(|p| p.json()), StatusCode::UNPROCESSABLE_ENTITY),
        Some(code) => {
            let joined = api.control.join(&code).await.map(|peer| Pairing::Paired { peer }.json());
            answer_with(joined, StatusCode::UNPROCESSABLE_ENTITY)
        }
    }
}

#[derive(serde::Deserialize)]
struct GrantBody {
    stream: String,
    from: Option<String>,
}

async fn grant(State(api): State<Api>, Path(peer): Path<String>, text: String) -> Response {
    let b: GrantBody = match body(&text) {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    let (stream, from, _) = match parse_range(&b.stream, b.from.as_deref(), None) {
        Ok(p) => p,
        Err(e) => return bad_request(e),
    };
    let given = crate::share_cmd::give(&api.cfg, &api.identity, &stream, &peer, from).await;
    let v = given.map(|(p, epoch)| json!({"peer": p.name, "device_id": p.device.to_string(), "stream": stream.as_str(), "epoch": epoch}));
    answer_with(v, StatusCode::UNPROCESSABLE_ENTITY)
}

async fn revoke(State(api): State<Api>, Path((peer, stream)): Path<(String, String)>) -> Response {
    let stream = match crate::commands::parse_stream(&stream) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let done = crate::share_cmd::take_back(&api.cfg, &api.identity, &peer, std::slice::from_ref(&stream)).await;
    let v = done.map(|(p, s)| {
        json!({"peer": p.name, "device_id": p.device.to_string(), "revoked": s.iter().map(|s| s.as_str()).collect::<Vec<_>>()})
    });
    answer_with(v, StatusCode::UNPROCESSABLE_ENTITY)
}

async fn rotate(State(api): State<Api>, Path(stream): Path<String>) -> Response {
    let stream = match crate::commands::parse_stream(&stream) {
        Ok(s) => s,
        Err(e) => return bad_request(e),
    };
    let epoch = crate::share_cmd::rotate_key(&api.cfg, &api.identity, &stream).await;
    answer(epoch.map(|e| json!({"stream": stream.as_str(), "epoch": e})))
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/api/v1/identity", get(|State(a): State<Api>| async move { answer(crate::commands::identity_json(&a.cfg)) }))
        .route(
            "/api/v1/streams",
            get(|State(a): State<Api>| async move { answer(crate::commands::streams_json(&a.cfg).await.map(Value::from)) }),
        )
        .route("/api/v1/streams/{stream}/readings", get(readings))
        .route(
            "/api/v1/peers",
            get(|State(a): State<Api>| async move { answer(crate::share_cmd::peers_json(&a.cfg).await.map(Value::from)) }),
        )
        .route("/api/v1/batching", get(|State(a): State<Api>| async move { Json(batching_json(&a)) }).put(set_batching))
        .route("/api/v1/store-now", post(store_now))
        .route(
            "/api/v1/pairing",
            get(|State(a): State<Api>| async move { Json(a.control.pairing().json()) })
                .post(pair)
                .delete(|State(a): State<Api>| async move {
                    a.control.cancel();
                    Json(a.control.pairing().json())
                }),
        )
        .route("/api/v1/peers/{peer}/grants", post(grant))
        .route("/api/v1/peers/{peer}/grants/{stream}", delete(revoke))
        .route("/api/v1/streams/{stream}/rotate", post(rotate))
        .route("/api/v1/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(api)
}

/// The OpenAPI 3.1 document of every route the server has.
pub fn openapi() -> Value {
    let ok = |what: &str| json!({"200": {"description": what, "content": {"application/json": {}}}});
    let json_body = |fields: &[(&str, &str, bool)]| {
        let props: serde_json::Map<String, Value> =
            fields.iter().map(|(f, t, _)| (f.to_string(), json!({"type": t}))).collect();
        let required: Vec<&str> = fields.iter().filter(|(.., r)| *r).map(|(f, ..)| *f).collect();
        json!({"required": !required.is_empty(), "content": {"application/json": {"schema": {"type": "object", "required": required, "properties": props}}}})
    };
    let cloudsync = |what: &str, fields: &[&str]| {
        let props: serde_json::Map<String, Value> =
            fields.iter().map(|f| (f.to_string(), json!({"type": "string"}))).collect();
        json!({"post": {
            "summary": what, "tags": ["CloudSync"],
            "requestBody": {"required": true, "content": {"text/plain": {"schema": {"type": "object", "required": fields, "properties": props}},
                                                           "application/json": {"schema": {"type": "object", "required": fields, "properties": props}}}},
            "responses": {
                "200": {"description": "done (publish: the broker acknowledged it)", "content": {"application/json": {}}},
                "400": {"description": "bad input"}, "404": {"description": "not subscribed"},
                "502": {"description": "the broker is unreachable or refused"}, "504": {"description": "no acknowledgement in time"}}}})
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "edgeseal agent API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Served by `edgeseal up`. Clients on the agent's machine need no credentials; \
                                 others send `Authorization: Bearer <token>` (the token in <data dir>/api-token)."},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{}, {"bearer": []}],
        "paths": {
            "/api/v1/health": {"get": {"summary": "liveness, device id and version", "responses": ok("ok")}},
            "/api/v1/identity": {"get": {"summary": "this agent's public identity (as `edgeseal id --json`)", "responses": ok("the identity")}},
            "/api/v1/streams": {"get": {"summary": "streams stored and waiting locally (as `edgeseal streams --json`)", "responses": ok("the streams")}},
            "/api/v1/streams/{stream}/readings": {"get": {
                "summary": "a time range of a stream, verified and decrypted: each batch's status (verified, unsigned, tampered, …), the findings, the readings",
                "parameters": [
                    {"name": "stream", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "device", "in": "query", "schema": {"type": "string"}, "description": "a peer's device id; default this agent"},
                    {"name": "from", "in": "query", "schema": {"type": "string"}, "description": "RFC 3339, relative (-1h), now or ms"},
                    {"name": "to", "in": "query", "schema": {"type": "string"}},
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["json", "csv"]}, "description": "csv: a download with fetch's CSV columns"}],
                "responses": {"200": {"description": "the range", "content": {"application/json": {}}}, "400": {"description": "bad stream or time"}}}},
            "/api/v1/live": {"get": {"summary": "server-sent events: `reading` for every reading accepted here (status accepted) or received from a peer (status verified); `skipped` when a slow client missed some",
                "responses": {"200": {"description": "an event stream", "content": {"text/event-stream": {}}}}}},
            "/api/v1/live/latest": {"get": {"summary": "the newest reading of every stream, local and received", "responses": ok("the readings")}},
            "/api/v1/peers": {"get": {"summary": "paired peers and grants (as `edgeseal peers --json`)", "responses": ok("the peers")}},
            "/api/v1/openapi.json": {"get": {"summary": "this document", "responses": ok("OpenAPI 3.1")}},
            "/api/v1/sensors": {"get": {"summary": "each polled sensor's health (ok, failing, waiting), reads, failures and last error", "responses": ok("the sensors")}},
            "/api/v1/batching": {
                "get": {"summary": "the batch policy: readings per batch (0: no count limit) and interval (\"off\": none), and streams with their own", "responses": ok("the policy")},
                "put": {"summary": "set the batch policy of the running agent (kept across restarts in state.db)",
                    "requestBody": json_body(&[("count", "integer", true), ("interval", "string", false)]),
                    "responses": {"200": {"description": "the policy now", "content": {"application/json": {}}}, "400": {"description": "bad count or interval"}}}},
            "/api/v1/store-now": {"post": {"summary": "seal every open batch now; it is stored (and shared) next", "responses": ok("{batches, readings}")}},
            "/api/v1/pairing": {
                "get": {"summary": "the pairing started here: idle, waiting (with the code to show), paired (with the peer) or failed", "responses": ok("the state")},
                "post": {"summary": "without a code: show one (the other agent enters it); with {\"code\"}: enter the code another agent shows and wait until paired",
                    "requestBody": json_body(&[("code", "string", false)]),
                    "responses": {"200": {"description": "waiting (with the code) or paired", "content": {"application/json": {}}},
                                  "400": {"description": "bad body"}, "422": {"description": "pairing failed (wrong code, timeout, no broker)"},
                                  "502": {"description": "the broker is unreachable"}}},
                "delete": {"summary": "stop showing the code", "responses": ok("idle")}},
            "/api/v1/peers/{peer}/grants": {"post": {"summary": "let a peer (name, device id or fingerprint) read a stream: from `from` on (RFC 3339, relative, 0 for all), or live only",
                "parameters": [{"name": "peer", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": json_body(&[("stream", "string", true), ("from", "string", false)]),
                "responses": {"200": {"description": "granted (published to the peer by the running agent)", "content": {"application/json": {}}},
                              "400": {"description": "bad stream or time"}, "422": {"description": "no such peer"}}}},
            "/api/v1/peers/{peer}/grants/{stream}": {"delete": {"summary": "revoke a peer's grant of a stream: it opens nothing sealed from now on",
                "parameters": [{"name": "peer", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "stream", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "revoked", "content": {"application/json": {}}}, "422": {"description": "no such peer or grant"}}}},
            "/api/v1/streams/{stream}/rotate": {"post": {"summary": "seal a stream under a new key epoch from now on (peers still granted get the new key)",
                "parameters": [{"name": "stream", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": ok("{stream, epoch}")}},
            "/api/v1/orchestration/cloudsyncmgr/publish": cloudsync("publish a payload to a broker (QoS 1, retained)", &["appid", "payload", "topic", "url"]),
            "/api/v1/orchestration/cloudsyncmgr/subscribe": cloudsync("subscribe an app to a topic filter", &["appid", "topic", "url"]),
            "/api/v1/orchestration/cloudsyncmgr/unsubscribe": cloudsync("unsubscribe an app from a topic filter", &["appid", "topic", "url"]),
            "/api/v1/orchestration/cloudsyncmgr/getsubscribedata/{host}/{topic}/{appID}": {"get": {
                "summary": "the newest payload on a subscribed topic filter (the topic may contain /)", "tags": ["CloudSync"],
                "parameters": [
                    {"name": "host", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "topic", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "appID", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "{\"Message\": payload}"}, "404": {"description": "not subscribed"}}}},
        }
    })
}
