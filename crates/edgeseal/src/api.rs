//! The REST API under `/api/v1` (JSON): what the CLI's `--json` output shows,
//! from the same functions, and the OpenAPI document that describes it and
//! the CloudSync-compatible endpoints.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use crate::config::Config;

/// An error as JSON, without secrets (the functions behind the API never put any in one).
fn answer(r: anyhow::Result<Value>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": format!("{e:#}")}))).into_response(),
    }
}

pub fn router(cfg: Arc<Config>) -> Router {
    Router::new()
        .route(
            "/api/v1/identity",
            get(|State(c): State<Arc<Config>>| async move { answer(crate::commands::identity_json(&c)) }),
        )
        .route(
            "/api/v1/streams",
            get(|State(c): State<Arc<Config>>| async move {
                answer(crate::commands::streams_json(&c).await.map(Value::from))
            }),
        )
        .route(
            "/api/v1/peers",
            get(|State(c): State<Arc<Config>>| async move {
                answer(crate::share_cmd::peers_json(&c).await.map(Value::from))
            }),
        )
        .route("/api/v1/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(cfg)
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
