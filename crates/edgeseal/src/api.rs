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
use axum::routing::get;
use serde_json::{Value, json};

use crate::config::Config;
use edgeseal_core::keys::Identity;

/// What the handlers need: the configuration and the agent's identity (for keys).
#[derive(Clone)]
pub struct Api {
    pub cfg: Arc<Config>,
    pub identity: Arc<Identity>,
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
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": format!("{e:#}")}))).into_response(),
    }
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
        .route("/api/v1/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(api)
}

/// The OpenAPI 3.1 document of every route the server has.
pub fn openapi() -> Value {
    let ok = |what: &str| json!({"200": {"description": what, "content": {"application/json": {}}}});
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
