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
    BatchingView, CSV_HEADER, GrantedView, IdentityView, PairingView, PeerView, ReadView, RevokedView, RotatedView,
    StoreNowView, StreamView,
};
use edgeseal_agent::{Error, now_ms};
use edgeseal_core::StreamName;
use serde_json::Value;

use crate::{ApiError, ErrorBody};

type Api = State<Arc<Service>>;
type Answer<T> = Result<Json<T>, ApiError>;

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct Range {
    /// A peer's stream: its name, device id or a unique prefix of the id (default, or empty: this agent's).
    device: Option<String>,
    /// The first time: RFC 3339 with any offset, relative (`-1h`), `now` or ms since 1970 (empty: the start).
    #[param(
        pattern = "^(|now|[0-9]{1,15}|[+-][0-9]{1,6}(ms|s|m|h|d)|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,3})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    from: Option<String>,
    /// The last time, in the same forms (empty: the end).
    #[param(
        pattern = "^(|now|[0-9]{1,15}|[+-][0-9]{1,6}(ms|s|m|h|d)|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,3})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    to: Option<String>,
    /// `csv` for a download in `fetch --format csv`'s columns; default JSON.
    #[param(inline)]
    format: Option<Format>,
    /// Show times in this zone: UTC, an offset (+05:30), or an IANA name (Europe/Paris) or local, as the system knows them.
    #[param(pattern = "^(|UTC|[+-](0[0-9]|1[0-3]):[0-5][0-9])$")]
    #[allow(dead_code)] // the zone layer reads it, for every route
    tz: Option<String>,
}

#[derive(serde::Deserialize, utoipa::ToSchema, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Format {
    Json,
    Csv,
}

/// A stream name and a time range as the CLI takes them (RFC 3339, relative, now, ms; empty: no bound);
/// errors name the field.
pub fn parse_range(
    stream: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<(StreamName, Option<i64>, Option<i64>), Error> {
    let now = now_ms();
    let (from, to) = (from.filter(|t| !t.trim().is_empty()), to.filter(|t| !t.trim().is_empty()));
    Ok((parse_stream(stream)?, parse_named("from", from, now)?, parse_named("to", to, now)?))
}

/// A query string, or a 400 naming what is wrong with it.
fn query<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(uri).map(|q| q.0).map_err(|e| {
        ApiError(Error::bad(format!(
            "the query: {}",
            e.body_text().trim_start_matches("Failed to deserialize query string: ")
        )))
    })
}

/// A time range of a stream, verified and decrypted: each batch's status
/// (verified, unsigned, tampered, …), the findings, the readings.
#[utoipa::path(get, path = "/api/v1/streams/{stream}/readings", tag = "storage",
    params(("stream" = String, Path, description = "the stream's name", pattern = "^[A-Za-z0-9._-]{1,64}$"), Range),
    responses(
        (status = 200, description = "the range (JSON), or with format=csv a CSV download in fetch's columns",
         content((ReadView = "application/json"), (String = "text/csv"))),
        (status = 400, description = "a bad stream name, time, zone or parameter", body = ErrorBody),
        (status = 404, description = "no such stream or device (the message names the known ones)", body = ErrorBody)))]
async fn readings(State(s): Api, Path(stream): Path<String>, uri: axum::http::Uri) -> Result<Response, ApiError> {
    let q: Range = query(&uri)?;
    let (stream, from, to) = parse_range(&stream, q.from.as_deref(), q.to.as_deref())?;
    let read = s.read(&stream, q.device.as_deref(), from, to).await?;
    if q.format != Some(Format::Csv) {
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
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes = if bytes.trim_ascii().is_empty() { b"{}" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| ApiError(Error::bad(format!("the request body: {e}"))))
}

/// Readings per batch, as a number or its text.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
enum Count {
    Number(u64),
    Text(String),
}

/// A batch policy to set: at least one of the limits must be on.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchingBody {
    /// Readings per batch (a number, or its digits as text); 0 for no count limit (then an interval is needed).
    #[schema(schema_with = count_schema)]
    count: Count,
    /// The longest a reading waits in an open batch, at least 10ms: `30s`, `5m`, or `off` (the default).
    #[serde(default)]
    #[schema(pattern = "^(|off|none|[1-9][0-9]{1,5}ms|[1-9][0-9]{0,5}(s|m|h))$")]
    interval: Option<String>,
}

/// A count: a whole number up to the most a batch may hold, or the same as text.
fn count_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    let max = edgeseal_agent::batching::MAX_BATCH as f64;
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0.0)).maximum(Some(max)))
        .item(ObjectBuilder::new().schema_type(Type::String).pattern(Some("^ *[0-9]{1,6} *$")))
        .build()
        .into()
}

/// Sets the batch policy of the running agent (kept across restarts in state.db).
#[utoipa::path(put, path = "/api/v1/batching", tag = "storage", request_body = BatchingBody,
    responses((status = 200, description = "the policy now", body = BatchingView),
              (status = 400, description = "a bad count or interval, or both off", body = ErrorBody),
              (status = 503, description = "the agent is not running", body = ErrorBody)))]
async fn set_batching(State(s): Api, text: axum::body::Bytes) -> Answer<BatchingView> {
    let b: BatchingBody = body(&text)?;
    let count = match b.count {
        Count::Number(n) => n.to_string(),
        Count::Text(t) => t,
    };
    let policy = parse_policy(&count, b.interval.as_deref().unwrap_or("off"))?;
    Ok(Json(s.set_batching(policy).await?))
}

/// The batch policy: readings per batch (0: no count limit), the interval ("off": none), and the streams with their own.
#[utoipa::path(get, path = "/api/v1/batching", tag = "storage",
    responses((status = 200, description = "the policy", body = BatchingView)))]
async fn batching(State(s): Api) -> Json<BatchingView> {
    Json(s.batching())
}

/// Seals every open batch now; it is stored (and shared) next.
#[utoipa::path(post, path = "/api/v1/store-now", tag = "storage",
    responses((status = 200, description = "what was sealed", body = StoreNowView),
              (status = 503, description = "the agent is not running", body = ErrorBody)))]
async fn store_now(State(s): Api) -> Answer<StoreNowView> {
    Ok(Json(s.store_now().await?))
}

/// Entering another agent's code, or nothing to show one.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PairBody {
    /// The code the other agent shows (`7-amber-tiger`: a number from 1 to 999 and two words of the list); without it,
    /// this agent shows one.
    #[serde(default)]
    #[schema(pattern = "^[1-9][0-9]{0,2}-[a-z]{2,9}-[a-z]{2,9}$")]
    code: Option<String>,
}

/// Without a code: show one (the other agent enters it). With one: enter the
/// code another agent shows and wait (up to 30 s) until paired.
#[utoipa::path(post, path = "/api/v1/pairing", tag = "sharing", request_body(content = PairBody, description = "empty or {} to show a code"),
    responses((status = 200, description = "waiting (with the code to show) or paired", body = PairingView),
              (status = 400, description = "a bad body or code", body = ErrorBody),
              (status = 422, description = "pairing failed: wrong or expired code, no broker", body = ErrorBody),
              (status = 502, description = "the broker is unreachable or refused", body = ErrorBody),
              (status = 504, description = "the broker did not answer in time", body = ErrorBody)))]
async fn pair(State(s): Api, text: axum::body::Bytes) -> Answer<PairingView> {
    let b: PairBody = body(&text)?;
    Ok(Json(match b.code {
        None => s.host(PAIR_WAIT).await?,
        Some(code) => PairingView::Paired { peer: s.join(&code).await? },
    }))
}

/// The pairing started here: idle, waiting (with the code to show), paired (with the peer) or failed.
#[utoipa::path(get, path = "/api/v1/pairing", tag = "sharing",
    responses((status = 200, description = "the state", body = PairingView)))]
async fn pairing(State(s): Api) -> Json<PairingView> {
    Json(s.pairing())
}

/// Stops showing the code.
#[utoipa::path(delete, path = "/api/v1/pairing", tag = "sharing",
    responses((status = 200, description = "idle", body = PairingView)))]
async fn cancel_pairing(State(s): Api) -> Json<PairingView> {
    s.cancel_pairing();
    Json(s.pairing())
}

/// A stream to let a peer read, and from (and to) when.
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GrantBody {
    /// One of this agent's streams.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    stream: String,
    /// From when the peer may read (RFC 3339, relative, 0 for everything; default now: live only).
    #[serde(default)]
    #[schema(
        pattern = "^(|now|[0-9]{1,15}|[+-][0-9]{1,6}(ms|s|m|h|d)|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,3})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    from: Option<String>,
    /// Until when (default: no end).
    #[serde(default)]
    #[schema(
        pattern = "^(|now|[0-9]{1,15}|[+-][0-9]{1,6}(ms|s|m|h|d)|[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,3})?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9]))$"
    )]
    to: Option<String>,
    /// A stream before its first reading (else an unknown stream is refused as a typo).
    #[serde(default)]
    new: bool,
}

/// Lets a peer (name, device id or a unique prefix) read a stream from `from` (to `to`) on.
#[utoipa::path(post, path = "/api/v1/peers/{peer}/grants", tag = "sharing", request_body = GrantBody,
    params(("peer" = String, Path, description = "the peer's name, device id or a unique prefix of it")),
    responses((status = 200, description = "granted (published to the peer by the running agent)", body = GrantedView),
              (status = 400, description = "a bad stream or time", body = ErrorBody),
              (status = 404, description = "no such peer, or a stream this agent does not know", body = ErrorBody),
              (status = 503, description = "the agent is not running", body = ErrorBody)))]
async fn grant(State(s): Api, Path(peer): Path<String>, text: axum::body::Bytes) -> Answer<GrantedView> {
    let b: GrantBody = body(&text)?;
    let (stream, from, to) = parse_range(&b.stream, b.from.as_deref(), b.to.as_deref())?;
    Ok(Json(s.grant(&peer, &stream, (from, to), b.new).await?))
}

/// Revokes a peer's grant of a stream: it opens nothing sealed from now on.
#[utoipa::path(delete, path = "/api/v1/peers/{peer}/grants/{stream}", tag = "sharing",
    params(("peer" = String, Path, description = "the peer's name, device id or a unique prefix of it"),
           ("stream" = String, Path, description = "the stream", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 200, description = "revoked", body = RevokedView),
              (status = 400, description = "a bad stream name", body = ErrorBody),
              (status = 404, description = "no such peer or grant", body = ErrorBody),
              (status = 503, description = "the agent is not running", body = ErrorBody)))]
async fn revoke(State(s): Api, Path((peer, stream)): Path<(String, String)>) -> Answer<RevokedView> {
    let stream = parse_stream(&stream)?;
    Ok(Json(s.revoke(&peer, std::slice::from_ref(&stream)).await?))
}

/// Seals a stream under a new key epoch from now on (peers still granted get the new key).
#[utoipa::path(post, path = "/api/v1/streams/{stream}/rotate", tag = "sharing",
    params(("stream" = String, Path, description = "one of this agent's streams", pattern = "^[A-Za-z0-9._-]{1,64}$")),
    responses((status = 200, description = "the new epoch", body = RotatedView),
              (status = 400, description = "a bad stream name", body = ErrorBody),
              (status = 404, description = "a stream this agent does not know", body = ErrorBody),
              (status = 503, description = "the agent is not running", body = ErrorBody)))]
async fn rotate(State(s): Api, Path(stream): Path<String>) -> Answer<RotatedView> {
    Ok(Json(s.rotate(&parse_stream(&stream)?).await?))
}

/// Streams stored and waiting locally (as `edgeseal streams --json`).
#[utoipa::path(get, path = "/api/v1/streams", tag = "storage",
    responses((status = 200, description = "the streams", body = Vec<StreamView>)))]
async fn streams(State(s): Api) -> Answer<Vec<StreamView>> {
    Ok(Json(s.streams().await?))
}

/// Paired peers and the grants each way (as `edgeseal peers --json`).
#[utoipa::path(get, path = "/api/v1/peers", tag = "sharing",
    responses((status = 200, description = "the peers", body = Vec<PeerView>)))]
async fn peers(State(s): Api) -> Answer<Vec<PeerView>> {
    Ok(Json(s.peers().await?))
}

/// This agent's public identity (as `edgeseal id --json`).
#[utoipa::path(get, path = "/api/v1/identity", tag = "agent",
    responses((status = 200, description = "the identity", body = IdentityView)))]
async fn identity(State(s): Api) -> Json<IdentityView> {
    Json(s.identity_view())
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "agent",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
async fn document() -> Json<Value> {
    Json(openapi())
}

pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/api/v1/identity", get(identity))
        .route("/api/v1/streams", get(streams))
        .route("/api/v1/streams/{stream}/readings", get(readings))
        .route("/api/v1/peers", get(peers))
        .route("/api/v1/batching", get(batching).put(set_batching))
        .route("/api/v1/store-now", post(store_now))
        .route("/api/v1/pairing", get(pairing).post(pair).delete(cancel_pairing))
        .route("/api/v1/peers/{peer}/grants", post(grant))
        .route("/api/v1/peers/{peer}/grants/{stream}", delete(revoke))
        .route("/api/v1/streams/{stream}/rotate", post(rotate))
        .route("/api/v1/openapi.json", get(document))
        .with_state(service)
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "edgeseal agent API",
         description = "Served by `edgeseal up`. Clients on the agent's machine need no credentials; others send \
                        `Authorization: Bearer <token>` (the token in <data dir>/api-token). Every time is RFC 3339 \
                        (UTC unless `tz` or the agent's `ui.time_zone` says otherwise); every error is `{\"error\": …}`."),
    paths(identity, streams, readings, peers, batching, set_batching, store_now, pairing, pair, cancel_pairing, grant,
          revoke, rotate, document, crate::access::health, crate::live::events, crate::live::latest,
          crate::live::sensors, crate::metrics::scrape, crate::cloudsync::publish, crate::cloudsync::subscribe,
          crate::cloudsync::unsubscribe, crate::cloudsync::subscribed_data),
    components(schemas(ErrorBody, crate::access::Refusal)),
    modifiers(&Security),
)]
struct Doc;

/// The bearer token, and none on the agent's own machine.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        // The code's words: exactly the word list.
        if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(body))) =
            components.schemas.get_mut("PairBody")
            && let Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(code))) =
                body.properties.get_mut("code")
        {
            let words = edgeseal_core::pairing::WORDS.join("|");
            code.pattern = Some(format!("^[1-9][0-9]{{0,2}}-({words})-({words})$"));
        }
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security =
            Some(vec![SecurityRequirement::default(), SecurityRequirement::new("bearer", Vec::<String>::new())]);
        // The access guard stands before every operation: 401 for another machine without the token, 403 for a
        // request from another web site (or a Host name that is not this machine's).
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let refusal = |what: &str| {
            let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("Refusal"))).build();
            ResponseBuilder::new().description(what).content("application/json", body).build()
        };
        for item in doc.paths.paths.values_mut() {
            for op in [&mut item.get, &mut item.put, &mut item.post, &mut item.delete].into_iter().flatten() {
                let answers = &mut op.responses.responses;
                answers
                    .entry("401".into())
                    .or_insert_with(|| refusal("another machine without the agent's token").into());
                answers
                    .entry("403".into())
                    .or_insert_with(|| refusal("another web site, or a Host name not this machine's").into());
            }
        }
    }
}

/// The OpenAPI 3.1 document of every route of the API, generated from the request and response types.
pub fn openapi() -> Value {
    use utoipa::OpenApi as _;
    let mut doc = Doc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    serde_json::to_value(doc).unwrap_or_default()
}
