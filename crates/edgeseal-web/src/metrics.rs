//! `/metrics` in the Prometheus text format (OpenMetrics, by the
//! `prometheus-client` crate): the agent's counters as they stand at each
//! scrape, what waits in `state.db`, whether the store and the broker are
//! reachable, and the HTTP requests this server answered, by route and
//! status. Behind the same access guard as the API.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use edgeseal_agent::runtime::Stats;
use edgeseal_agent::service::Service;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// A request's route (its pattern, not its path) and status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub status: String,
}

/// A kind of audit finding (`gap`, `tampered`, `rollback`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FindingLabels {
    pub kind: String,
}

/// Why readings were refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// What `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    service: Arc<Service>,
    stats: Arc<Stats>,
    http: Family<HttpLabels, Counter>,
}

impl Metrics {
    pub fn new(service: Arc<Service>, stats: Arc<Stats>) -> Arc<Metrics> {
        Arc::new(Metrics { service, stats, http: Family::default() })
    }

    /// The text a scrape gets.
    pub async fn render(&self) -> String {
        let mut r = Registry::with_prefix("edgeseal");
        let s = &self.stats;
        let counters: [(&str, &str, &AtomicU64); 11] = [
            ("readings_accepted", "Readings accepted (journaled, to be sealed)", &s.accepted),
            ("sensor_read_errors", "Failed sensor reads", &s.read_errors),
            ("batches_sealed", "Batches sealed into the outbox", &s.sealed),
            ("seal_failures", "Attempts to seal a stream's batch that failed (tried again)", &s.seal_failures),
            ("batches_stored", "Batches written to the store", &s.stored),
            ("batches_published", "Batches published to the broker", &s.published),
            ("batches_unpublishable", "Batches too large for an MQTT packet (stored, not published)", &s.unpublishable),
            ("frames_sent", "Live frames published", &s.frames_sent),
            ("frames_dropped", "Journal commits that went without a live frame", &s.frames_dropped),
            ("batches_received", "Peers' batches received and verified", &s.received),
            (
                "messages_refused",
                "Messages on peers' topics refused (forged, replayed, out of order, over bounds)",
                &s.refused_received,
            ),
        ];
        let c = self.service.counts();
        let more: [(&str, &str, &AtomicU64); 3] = [
            ("broker_reconnects", "Connections to the broker made again after it was lost", &s.reconnects),
            ("pairings_started", "Pairings begun (a code shown or entered)", &c.pairings_started),
            ("pairings_failed", "Pairings that failed", &c.pairings_failed),
        ];
        for (name, help, v) in counters.into_iter().chain(more) {
            r.register(name, help, ConstCounter::new(v.load(Ordering::Relaxed)));
        }
        let refused = Family::<ReasonLabels, Counter>::default();
        for (reason, n) in s.refusals.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            refused.get_or_create(&ReasonLabels { reason: (*reason).to_string() }).inc_by(*n);
        }
        r.register(
            "readings_refused",
            "Readings refused before acceptance, by reason (not_a_reading, time_out_of_range, text_too_long, \
             blob_too_large, blob_too_large_to_share, journal_failed)",
            refused,
        );
        let held = s.tentative_bytes.load(Ordering::Relaxed);
        r.register(
            "tentative_bytes",
            "Bytes of peers' unsigned batches held until a signed batch vouches for them",
            ConstGauge::new(i64::try_from(held).unwrap_or(i64::MAX)),
        );
        let findings = Family::<FindingLabels, Counter>::default();
        for (kind, n) in c.findings.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            findings.get_or_create(&FindingLabels { kind: (*kind).to_string() }).inc_by(*n);
        }
        r.register(
            "verification_findings",
            "Problems audits found in what the store or a peer holds, by kind",
            findings,
        );
        let up = |down: &std::sync::atomic::AtomicBool| i64::from(!down.load(Ordering::Relaxed));
        r.register("store_up", "1 when the last write to the store succeeded", ConstGauge::new(up(&s.store_down)));
        if self.service.config().mqtt.broker.is_some() {
            r.register("broker_up", "1 when the MQTT broker is reachable", ConstGauge::new(up(&s.broker_down)));
        }
        if let Ok(backlog) = self.service.local().backlog().await {
            let (pending, outbox) =
                backlog.values().fold((0, 0), |(p, o), b| (p + b.pending_readings, o + b.outbox_batches));
            r.register("readings_pending", "Readings accepted and not sealed yet", ConstGauge::new(pending as i64));
            r.register("outbox_batches", "Sealed batches waiting for the store", ConstGauge::new(outbox as i64));
        }
        r.register("http_requests", "HTTP requests answered, by route and status", self.http.clone());
        let mut out = String::new();
        if encode(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

/// `GET /metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new().route("/metrics", get(scrape).with_state(metrics))
}

/// The agent's counters and gauges for Prometheus (OpenMetrics text), under the API's token rules.
#[utoipa::path(get, path = "/metrics", tag = "agent",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String)))]
pub async fn scrape(State(m): State<Arc<Metrics>>) -> Response {
    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.render().await).into_response()
}

/// Counts every request by its route pattern (`unmatched` for none) and status.
pub async fn count(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let res = next.run(req).await;
    m.http.get_or_create(&HttpLabels { route, status: res.status().as_u16().to_string() }).inc();
    res
}
