//! The REST API under `/api/v1` (JSON): what the CLI's `--json` output shows,
//! from the same service, and the OpenAPI document that describes it and
//! the CloudSync-compatible endpoints. Errors are [`ApiError`]s: the status
//! comes from the agent's error variant.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use edgeseal_agent::batching::parse_policy;
use edgeseal_agent::service::{PAIR_WAIT, Service, parse_stream};
use edgeseal_agent::times::parse_named;
use edgeseal_agent::views::{
    BatchingView, CSV_HEADER, GrantedView, PairingView, PeerView, RevokedView, RotatedView, StoreNowView, StreamView,
};
use edgeseal_agent::{Error, now_ms};
use edgeseal_core::StreamName;
use serde_json::{Value, json};

use crate::ApiError;

type Api = State<Arc<Service>>;
type Answer<T> = Result<Json<T>, ApiError>;

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
) -> Result<(StreamName, Option<i64>, Option<i64>), Error> {
    let now = now_ms();
    Ok((parse_stream(stream)?, parse_named("from", from, now)?, parse_named("to", to, now)?))
}

/// `GET /api/v1/streams/{stream}/readings`: a verified, opened time range.
async fn readings(State(s): Api, Path(stream): Path<String>, Query(q): Query<Range>) -> Result<Response, ApiError> {
    let (stream, from, to) = parse_range(&stream, q.from.as_deref(), q.to.as_deref())?;
    let read = s.read(&stream, q.device.as_deref(), from, to).await?;
    if q.format.as_deref() != Some("csv") {
        return Ok(Json(read).into_response());
    }
    let mut body = format!("{CSV_HEADER}\n");
    for r in &read.readings {
        body.push_str(&r.csv_line());
        body.push('\n');
    }
    let disposition = format!("attachment; filename=\"{stream}.csv\"");
    Ok(([(CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (CONTENT_DISPOSITION, disposition)], body)
        .into_response())
}

/// A JSON body (empty counts as `{}`), or a 400 that says what is wrong with it.
fn body<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ApiError> {
    let text = if text.trim().is_empty() { "{}" } else { text };
    serde_json::from_str(text).map_err(|e| ApiError(Error::bad(format!("the request body: {e}"))))
}

#[derive(serde::Deserialize)]
struct BatchingBody {
    #[serde(deserialize_with = "edgeseal_agent::config::text_or_number")]
    count: String,
    #[serde(default)]
    interval: Option<String>,
}

async fn set_batching(State(s): Api, text: String) -> Answer<BatchingView> {
    let b: BatchingBody = body(&text)?;
    let policy = parse_policy(&b.count, b.interval.as_deref().unwrap_or("off"))?;
    Ok(Json(s.set_batching(policy).await?))
}

async fn store_now(State(s): Api) -> Answer<StoreNowView> {
    Ok(Json(s.store_now().await?))
}

#[derive(serde::Deserialize)]
struct PairBody {
    code: Option<String>,
}

/// Without a code: show one (and pair when the other agent enters it); with one: join.
async fn pair(State(s): Api, text: String) -> Answer<PairingView> {
    let b: PairBody = body(&text)?;
    Ok(Json(match b.code {
        None => s.host(PAIR_WAIT).await?,
        Some(code) => PairingView::Paired { peer: s.join(&code).await? },
    }))
}

#[derive(serde::Deserialize)]
struct GrantBody {
    stream: String,
    from: Option<String>,
    to: Option<String>,
    /// A stream before its first reading.
    #[serde(default)]
    new: bool,
}

async fn grant(State(s): Api, Path(peer): Path<String>, text: String) -> Answer<GrantedView> {
    let b: GrantBody = body(&text)?;
    let (stream, from, to) = parse_range(&b.stream, b.from.as_deref(), b.to.as_deref())?;
    Ok(Json(s.grant(&peer, &stream, (from, to), b.new).await?))
}

async fn revoke(State(s): Api, Path((peer, stream)): Path<(String, String)>) -> Answer<RevokedView> {
    let stream = parse_stream(&stream)?;
    Ok(Json(s.revoke(&peer, std::slice::from_ref(&stream)).await?))
}

async fn rotate(State(s): Api, Path(stream): Path<String>) -> Answer<RotatedView> {
    Ok(Json(s.rotate(&parse_stream(&stream)?).await?))
}

async fn streams(State(s): Api) -> Answer<Vec<StreamView>> {
    Ok(Json(s.streams().await?))
}

async fn peers(State(s): Api) -> Answer<Vec<PeerView>> {
    Ok(Json(s.peers().await?))
}

pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/api/v1/identity", get(|State(s): Api| async move { Json(s.identity_view()) }))
        .route("/api/v1/streams", get(streams))
        .route("/api/v1/streams/{stream}/readings", get(readings))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/batching", get(|State(s): Api| async move { Json(s.batching()) }).put(set_batching))
        .route("/api/v1/store-now", post(store_now))
        .route(
            "/api/v1/pairing",
            get(|State(s): Api| async move { Json(s.pairing()) }).post(pair).delete(|State(s): Api| async move {
                s.cancel_pairing();
                Json(s.pairing())
            }),
        )
        .route("/api/v1/peers/{peer}/grants", post(grant))
        .route("/api/v1/peers/{peer}/grants/{stream}", delete(revoke))
        .route("/api/v1/streams/{stream}/rotate", post(rotate))
        .route("/api/v1/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(service)
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
