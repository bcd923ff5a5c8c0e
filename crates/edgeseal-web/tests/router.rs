//! The agent's router in process (`tower::ServiceExt::oneshot`, no socket,
//! no binary): the REST API's status codes and shapes, by the agent error's
//! variant, and the access guard.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use edgeseal_agent::config::{Config, SensorSpec};
use edgeseal_agent::datadir;
use edgeseal_agent::live::Live;
use edgeseal_agent::runtime::Stats;
use edgeseal_agent::runtime::sealer::{Sealer, Wakers};
use edgeseal_agent::service::{Keys, Service};
use edgeseal_web::{Access, CloudSync, State};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

fn tempdir(tag: &str) -> std::path::PathBuf {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    let d = std::env::temp_dir().join(format!("edgeseal-router-{tag}-{:x}", u64::from_le_bytes(b)));
    std::fs::create_dir_all(&d).unwrap();
    d.join("data")
}

/// An agent in a fresh data dir, its service (with a running sealer when `sealer` is set) and its router.
async fn app(tag: &str, sealer: bool, token: Option<&str>) -> (axum::Router, Arc<Service>, CancellationToken) {
    let dir = tempdir(tag);
    let identity = datadir::init(&dir, tag, None).unwrap();
    let mut cfg = Config::new(&dir, tag);
    // The simulated sensors' streams are this agent's (so `rotate` knows temperature).
    cfg.sensors = SensorSpec::from_flag("simulated").unwrap();
    let cfg = Arc::new(cfg);
    let mut service = Service::open(cfg.clone(), Keys::Secret(Box::new(identity)), false).await.unwrap();
    let stop = CancellationToken::new();
    let live = Arc::new(Live::default());
    if sealer {
        let (_input, rx) = mpsc::channel(4);
        let (commands, crx) = mpsc::channel(4);
        let wake = Wakers { drainer: Arc::new(Notify::new()), publisher: Arc::new(Notify::new()) };
        let s = Sealer::new(
            service.local().clone(),
            service.identity().unwrap().clone(),
            cfg.batch,
            Default::default(),
            wake,
            Arc::new(Stats::default()),
            rx,
            crx,
            edgeseal_agent::runtime::frames::channel().0,
        );
        tokio::spawn(s.run(stop.clone()));
        service.attach_sealer(commands, cfg.batch);
    }
    let service = Arc::new(service);
    let state = State {
        service: service.clone(),
        live,
        access: Arc::new(Access::new(token.map(str::to_string))),
        cloudsync: CloudSync::new(cfg.mqtt.clone()),
        stats: Arc::new(Stats::default()),
        tls_fingerprint: None,
    };
    (edgeseal_web::router(state), service, stop)
}

const HERE: &str = "127.0.0.1:40000";

async fn call(app: &axum::Router, method: &str, path: &str, body: &str, from: &str) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1:5000")
        .extension(ConnectInfo(from.parse::<SocketAddr>().unwrap()))
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_rest_api_answers_by_the_errors_variant() {
    let (app, service, stop) = app("rest", true, None).await;
    let (status, id) = call(&app, "GET", "/api/v1/identity", "", HERE).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(id["name"], "rest");
    assert_eq!(id["device_id"], service.device().to_string());
    for key in ["fingerprint", "ed25519", "x25519"] {
        assert!(id[key].is_string(), "{id}");
    }
    assert_eq!(call(&app, "GET", "/api/v1/streams", "", HERE).await, (StatusCode::OK, Value::Array(vec![])));
    assert_eq!(call(&app, "GET", "/api/v1/peers", "", HERE).await, (StatusCode::OK, Value::Array(vec![])));

    // Bad input: 400, naming what is wrong.
    let cases = [
        ("PUT", "/api/v1/batching", r#"{"count": "many"}"#, "not a whole number"),
        ("PUT", "/api/v1/batching", r#"{"count": 0, "interval": "off"}"#, "never cut a batch"),
        ("PUT", "/api/v1/batching", "{", "the request body"),
        ("GET", "/api/v1/streams/temperature/readings?from=yesterday", "", "from: "),
        ("GET", "/api/v1/streams/a%2Fb/readings", "", "invalid stream name"),
        ("POST", "/api/v1/peers/bob/grants", "", "missing field `stream`"),
    ];
    for (method, path, body, says) in cases {
        let (status, v) = call(&app, method, path, body, HERE).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path}: {v}");
        assert!(v["error"].as_str().unwrap().contains(says), "{method} {path}: {v}");
    }
    // No such peer: 404, naming it; no broker to pair through: 422.
    let (status, v) = call(&app, "DELETE", "/api/v1/peers/bob/grants/temperature", "", HERE).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no peer \"bob\""), "{v}");
    let (status, v) = call(&app, "POST", "/api/v1/pairing", "", HERE).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(v["error"].as_str().unwrap().contains("no MQTT broker to pair through"), "{v}");

    // The running agent: the policy and "store now" act on its sealer.
    let (status, v) = call(&app, "PUT", "/api/v1/batching", r#"{"count": 5, "interval": "30s"}"#, HERE).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!((v["count"].as_u64(), v["interval"].as_str()), (Some(5), Some("30s")));
    assert_eq!(call(&app, "GET", "/api/v1/batching", "", HERE).await.1["count"], 5);
    let (status, v) = call(&app, "POST", "/api/v1/store-now", "", HERE).await;
    assert_eq!((status, v["batches"].as_u64(), v["readings"].as_u64()), (StatusCode::OK, Some(0), Some(0)));
    let (status, v) = call(&app, "POST", "/api/v1/streams/temperature/rotate", "", HERE).await;
    assert_eq!((status, v["epoch"].as_u64()), (StatusCode::OK, Some(1)), "{v}");
    // A stream this agent does not know is a typo: 404, naming the ones it knows.
    let (status, v) = call(&app, "POST", "/api/v1/streams/temprature/rotate", "", HERE).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert!(v["error"].as_str().unwrap().contains("its streams: air_quality, humidity, temperature"), "{v}");
    let (status, v) = call(&app, "GET", "/api/v1/pairing", "", HERE).await;
    assert_eq!((status, v["state"].as_str()), (StatusCode::OK, Some("idle")));
    let (status, doc) = call(&app, "GET", "/api/v1/openapi.json", "", HERE).await;
    assert_eq!((status, doc["openapi"].as_str()), (StatusCode::OK, Some("3.1.0")));
    stop.cancel();
}

#[tokio::test]
async fn an_agent_that_is_not_running_says_so() {
    // The service without a sealer (a command's, not `up`'s): 503, not 500.
    let (app, _service, _stop) = app("stopped", false, None).await;
    let (status, v) = call(&app, "POST", "/api/v1/store-now", "", HERE).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not running"), "{v}");
}

#[tokio::test]
async fn the_guard_admits_this_machine_and_asks_others_for_the_token() {
    let token = "t".repeat(43);
    let (app, _service, _stop) = app("guard", false, Some(&token)).await;
    let lan = "192.168.1.20:40000";
    assert_eq!(call(&app, "GET", "/api/v1/identity", "", HERE).await.0, StatusCode::OK);
    assert_eq!(call(&app, "GET", "/api/v1/identity", "", lan).await.0, StatusCode::UNAUTHORIZED);
    let req = |bearer: &str| {
        Request::builder()
            .uri("/api/v1/identity")
            .header("authorization", format!("Bearer {bearer}"))
            .extension(ConnectInfo(lan.parse::<SocketAddr>().unwrap()))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(app.clone().oneshot(req(&token)).await.unwrap().status(), StatusCode::OK);
    assert_eq!(app.clone().oneshot(req("wrong")).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    // A loopback request under another name (DNS rebinding) is refused.
    let rebound = Request::builder()
        .uri("/api/v1/identity")
        .header("host", "evil.example:5000")
        .extension(ConnectInfo(HERE.parse::<SocketAddr>().unwrap()))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.clone().oneshot(rebound).await.unwrap().status(), StatusCode::FORBIDDEN);
}

/// `/metrics` speaks the Prometheus text format, under the API's access
/// rules, with the agent's counters, what waits locally, and each request
/// by route pattern and status.
#[tokio::test]
async fn metrics_are_scraped_in_the_prometheus_format_under_the_api_rules() {
    let token = "m".repeat(43);
    let (app, _service, stop) = app("metrics", true, Some(&token)).await;
    let lan = "192.168.1.20:40000";
    assert_eq!(call(&app, "GET", "/api/v1/identity", "", HERE).await.0, StatusCode::OK);
    assert_eq!(call(&app, "GET", "/api/v1/streams/nosuch/readings", "", HERE).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, "GET", "/metrics", "", lan).await.0, StatusCode::UNAUTHORIZED);
    let scrape = |from: &str| {
        Request::builder()
            .uri("/metrics")
            .header("host", "127.0.0.1:5000")
            .header("authorization", format!("Bearer {token}"))
            .extension(ConnectInfo(from.parse::<SocketAddr>().unwrap()))
            .body(Body::empty())
            .unwrap()
    };
    let res = app.clone().oneshot(scrape(lan)).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    for want in [
        "# TYPE edgeseal_readings_accepted counter",
        "edgeseal_readings_accepted_total 0",
        "edgeseal_batches_stored_total 0",
        "edgeseal_store_up 1",
        "edgeseal_outbox_batches 0",
        "edgeseal_pairings_started_total 0",
        "edgeseal_broker_reconnects_total 0",
        "edgeseal_http_requests_total{route=\"/api/v1/identity\",status=\"200\"} 1",
        "edgeseal_http_requests_total{route=\"/api/v1/streams/{stream}/readings\",status=\"404\"} 1",
        "edgeseal_http_requests_total{route=\"/metrics\",status=\"401\"} 1",
        "# EOF",
    ] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
    assert!(!text.contains("broker_up"), "no broker is configured: {text}");
    stop.cancel();
}
