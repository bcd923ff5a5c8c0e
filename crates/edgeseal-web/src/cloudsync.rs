//! The Home Edge CloudSync API on edgeseal's MQTT link: the original's paths
//! and JSON shapes (`{"Message": …}`), so its applications keep working, with
//! honest status codes instead of "200 for everything": 400 for bad input,
//! 502 when the broker cannot be reached, 504 when it does not acknowledge in
//! time, and 200 only after the broker acknowledged a publish (QoS 1; the
//! original published QoS 0 and slept a second). One cached connection per
//! broker, made on first use; subscriptions survive reconnects; wildcard
//! filters and topics with `/` work; `unsubscribe`, which the original never
//! shipped, exists.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgeseal_mqtt::link::{BrokerUrl, Link, Message};
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};

use edgeseal_agent::config::MqttConfig;
use tokio_util::task::TaskTracker;

const BASE: &str = "/api/v1/orchestration/cloudsyncmgr";
/// How long connecting to a broker may take before the request gets 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The CloudSync state: one connection per broker.
pub struct CloudSync {
    /// TLS files, credentials and MQTT version for `mqtts://` brokers.
    mqtt: MqttConfig,
    brokers: tokio::sync::Mutex<HashMap<String, Arc<Conn>>>,
    /// Each connection's reader of incoming messages.
    tasks: TaskTracker,
}

impl std::fmt::Debug for CloudSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudSync").field("tasks", &self.tasks.len()).finish_non_exhaustive()
    }
}

/// Concrete topic → (arrival number, last payload).
type LastPayloads = Arc<Mutex<HashMap<String, (u64, Vec<u8>)>>>;

struct Conn {
    url: BrokerUrl,
    link: Link,
    /// Filter → the apps subscribed to it.
    subs: Mutex<HashMap<String, BTreeSet<String>>>,
    last: LastPayloads,
    _stop: DropGuard,
}

/// A publish request (JSON, or the same as text/plain, as the original's clients send it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // the schema of what `fields` reads
struct PublishBody {
    appid: String,
    payload: String,
    topic: String,
    /// The broker: a host (port 1883), host:port, or mqtt:// / mqtts:// URL.
    url: String,
}

/// A subscribe or unsubscribe request.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct SubscribeBody {
    appid: String,
    /// An MQTT topic filter (`+`, `#`).
    topic: String,
    url: String,
}

/// The original's answer: `Message` (publish answers also carry `ServiceName` and `RemoteTargetInfo`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_snake_case)]
struct CloudSyncAnswer {
    Message: String,
    ServiceName: Option<String>,
    RemoteTargetInfo: Option<String>,
}

/// What publish, subscribe and unsubscribe answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // the document's, not built
enum Answers {
    #[response(status = 200, description = "done (publish: the broker acknowledged it)")]
    Done(CloudSyncAnswer),
    #[response(status = 400, description = "a bad field (INVALID_PARAMETER: …)")]
    Bad(CloudSyncAnswer),
    #[response(status = 404, description = "not subscribed")]
    NotSubscribed(CloudSyncAnswer),
    #[response(status = 502, description = "the broker is unreachable or refused (its cause named)")]
    Broker(CloudSyncAnswer),
    #[response(status = 504, description = "no acknowledgement in time")]
    TimedOut(CloudSyncAnswer),
}

/// An answer in the original's shape, with a real status code.
pub(crate) struct Reply {
    status: StatusCode,
    message: String,
    /// `publish` answers also carry `ServiceName` and `RemoteTargetInfo`.
    publish: bool,
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let body = if self.publish {
            json!({"Message": self.message, "ServiceName": "", "RemoteTargetInfo": ""})
        } else {
            json!({"Message": self.message})
        };
        (self.status, Json(body)).into_response()
    }
}

fn reply(status: StatusCode, message: impl Into<String>) -> Reply {
    Reply { status, message: message.into(), publish: false }
}

fn bad(what: impl std::fmt::Display) -> Reply {
    reply(StatusCode::BAD_REQUEST, format!("INVALID_PARAMETER: {what}"))
}

/// The broker of a request's `url`: a bare host or IP (port 1883, as the
/// original), `host:port`, or a URL with scheme mqtt/tcp (plain) or
/// mqtts/ssl/tls/tcps (TLS).
pub fn broker_url(url: &str) -> Result<BrokerUrl, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("No broker host defined: url is empty".into());
    }
    let normalized = match url.split_once("://") {
        Some(("tcp" | "mqtt", rest)) => format!("mqtt://{rest}"),
        Some(("ssl" | "tls" | "tcps" | "mqtts", rest)) => format!("mqtts://{rest}"),
        Some((scheme, _)) => return Err(format!("url scheme {scheme:?}: use mqtt:// or mqtts:// (or a bare host)")),
        None => format!("mqtt://{url}"),
    };
    normalized.parse().map_err(|e| format!("url {url:?}: {e}"))
}

/// Whether `topic` matches the MQTT filter `filter` (`+` one level, `#` the rest).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// The string fields a request must carry.
fn fields<const N: usize>(body: &[u8], names: [&str; N]) -> Result<[String; N], Reply> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON ({e})")))?;
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = match v.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(bad(format!("{name} must be a string"))),
            None => return Err(bad(format!("{name} is missing"))),
        };
    }
    Ok(out)
}

fn check_topic(topic: &str, filter: bool) -> Result<(), Reply> {
    if topic.is_empty() || topic.contains('\0') || topic.len() > 65_535 {
        return Err(bad(format!("topic {topic:?} is not an MQTT topic")));
    }
    if !filter && topic.contains(['+', '#']) {
        return Err(bad(format!("topic {topic:?}: wildcards (+, #) only in subscriptions")));
    }
    if filter
        && topic.split('/').enumerate().any(|(i, l)| {
            (l.contains('#') && (l != "#" || i + 1 != topic.split('/').count())) || (l.contains('+') && l != "+")
        })
    {
        return Err(bad(format!("topic filter {topic:?}: + and # must stand alone, # last")));
    }
    Ok(())
}

impl CloudSync {
    pub fn new(mqtt: MqttConfig) -> Arc<CloudSync> {
        Arc::new(CloudSync { mqtt, brokers: tokio::sync::Mutex::new(HashMap::new()), tasks: TaskTracker::new() })
    }

    /// Closes every broker connection and waits (up to `wait`) for their tasks to end.
    pub async fn shutdown(&self, wait: Duration) {
        self.brokers.lock().await.clear(); // each connection's drop guard stops its link
        self.tasks.close();
        let _ = tokio::time::timeout(wait, self.tasks.wait()).await;
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(&format!("{BASE}/publish"), post(publish))
            .route(&format!("{BASE}/subscribe"), post(subscribe))
            .route(&format!("{BASE}/unsubscribe"), post(unsubscribe))
            .route(&format!("{BASE}/getsubscribedata/{{host}}/{{*rest}}"), get(subscribed_data))
            .with_state(self)
    }

    /// The cached connection to `url`'s broker, connecting on first use.
    async fn conn(&self, url: &str) -> Result<Arc<Conn>, Reply> {
        let url = broker_url(url).map_err(bad)?;
        let key = url.to_string();
        let mut brokers = self.brokers.lock().await;
        if let Some(c) = brokers.get(&key) {
            return Ok(c.clone());
        }
        let unreachable = |why: String| reply(StatusCode::BAD_GATEWAY, format!("Error Connecting MQTT -> {why}"));
        let mut m = self.mqtt.clone();
        m.broker = Some(url.clone());
        let mut suffix = [0u8; 6];
        getrandom::fill(&mut suffix).map_err(|e| unreachable(format!("no system randomness: {e}")))?;
        let opts = m
            .link_options(&format!("edgeseal-cloudsync-{}", hex::encode(suffix)))
            .map_err(|e| unreachable(format!("{e:#}")))?;
        let stop = CancellationToken::new();
        let (link, rx) = Link::start(opts, stop.clone()).map_err(|e| unreachable(e.to_string()))?;
        let mut up = link.connected();
        // Connected, or the first failure with the cause the link saw (refused, reset, TLS,
        // credentials), at once rather than after the whole wait.
        let ready = async {
            loop {
                if *up.borrow_and_update() {
                    return Ok(());
                }
                if let Some(e) = link.last_error() {
                    return Err(e);
                }
                tokio::select! {
                    _ = up.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        };
        let why = match tokio::time::timeout(CONNECT_TIMEOUT, ready).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("the broker {url} cannot be reached: {e}")),
            Err(_) => Some(format!("the broker {url} did not answer within {}s", CONNECT_TIMEOUT.as_secs())),
        };
        if let Some(why) = why {
            stop.cancel();
            return Err(unreachable(why));
        }
        let last = Arc::new(Mutex::new(HashMap::new()));
        self.tasks.spawn(keep_last(rx, last.clone()));
        let c = Arc::new(Conn { url, link, subs: Mutex::new(HashMap::new()), last, _stop: stop.drop_guard() });
        brokers.insert(key, c.clone());
        Ok(c)
    }

    /// The connection whose broker `host` names (as given in `url`, its host, or host:port).
    async fn find(&self, host: &str) -> Option<Arc<Conn>> {
        let given = broker_url(host).ok().map(|u| u.to_string());
        let brokers = self.brokers.lock().await;
        brokers.iter().find(|(key, c)| Some(*key) == given.as_ref() || c.url.host == host).map(|(_, c)| c.clone())
    }
}

/// Keeps the last payload of every topic a connection receives.
async fn keep_last(mut rx: tokio::sync::mpsc::Receiver<Message>, last: LastPayloads) {
    let mut n = 0u64;
    while let Some(m) = rx.recv().await {
        n += 1;
        last.lock().unwrap_or_else(|p| p.into_inner()).insert(m.topic, (n, m.payload));
    }
}

/// Publishes a payload to a broker (QoS 1, retained).
#[utoipa::path(post, path = "/api/v1/orchestration/cloudsyncmgr/publish", tag = "CloudSync", request_body(content((PublishBody = "application/json"), (PublishBody = "text/plain"))),
    responses(Answers))]
pub(crate) async fn publish(State(cs): State<Arc<CloudSync>>, body: Bytes) -> Reply {
    let run = async {
        let [_appid, payload, topic, url] = fields(&body, ["appid", "payload", "topic", "url"])?;
        check_topic(&topic, false)?;
        let c = cs.conn(&url).await?;
        if !*c.link.connected().borrow() {
            return Err(reply(
                StatusCode::BAD_GATEWAY,
                format!("Error in publishing the data: the broker {} is unreachable (reconnecting)", c.url),
            ));
        }
        // Retained, as the original: a later subscriber gets the last value.
        match c.link.publish(&topic, payload.into_bytes(), true).await {
            Ok(()) => Ok(reply(StatusCode::OK, format!("Data published successfully to Cloud{url}"))),
            Err(e @ edgeseal_mqtt::Error::NotAcknowledged { .. }) => {
                Err(reply(StatusCode::GATEWAY_TIMEOUT, format!("Error in publishing the data: {e}")))
            }
            Err(e) => Err(reply(StatusCode::BAD_GATEWAY, format!("Error in publishing the data: {e}"))),
        }
    };
    let r = run.await.unwrap_or_else(|e| e);
    Reply { publish: true, ..r }
}

/// Subscribes an app to a topic filter.
#[utoipa::path(post, path = "/api/v1/orchestration/cloudsyncmgr/subscribe", tag = "CloudSync", request_body(content((SubscribeBody = "application/json"), (SubscribeBody = "text/plain"))),
    responses(Answers))]
pub(crate) async fn subscribe(State(cs): State<Arc<CloudSync>>, body: Bytes) -> Reply {
    let run = async {
        let [appid, topic, url] = fields(&body, ["appid", "topic", "url"])?;
        check_topic(&topic, true)?;
        let c = cs.conn(&url).await?;
        let first = {
            let mut subs = c.subs.lock().unwrap_or_else(|p| p.into_inner());
            let apps = subs.entry(topic.clone()).or_default();
            let first = apps.is_empty();
            apps.insert(appid);
            first
        };
        if first && let Err(e) = c.link.subscribe(&topic).await {
            return Err(reply(StatusCode::BAD_GATEWAY, format!("Error in subscribing the data: {e}")));
        }
        Ok(reply(StatusCode::OK, format!("Successfully subscribed to the topic {topic}")))
    };
    run.await.unwrap_or_else(|e| e)
}

/// Unsubscribes an app from a topic filter.
#[utoipa::path(post, path = "/api/v1/orchestration/cloudsyncmgr/unsubscribe", tag = "CloudSync", request_body(content((SubscribeBody = "application/json"), (SubscribeBody = "text/plain"))),
    responses(Answers))]
pub(crate) async fn unsubscribe(State(cs): State<Arc<CloudSync>>, body: Bytes) -> Reply {
    let run = async {
        let [appid, topic, url] = fields(&body, ["appid", "topic", "url"])?;
        let not_subscribed = || reply(StatusCode::NOT_FOUND, format!("Client is not subscribed to the topic {topic}"));
        let c = cs.find(&url).await.ok_or_else(not_subscribed)?;
        let last_app = {
            let mut subs = c.subs.lock().unwrap_or_else(|p| p.into_inner());
            let apps = subs.get_mut(&topic).ok_or_else(not_subscribed)?;
            if !apps.remove(&appid) {
                return Err(not_subscribed());
            }
            let empty = apps.is_empty();
            if empty {
                subs.remove(&topic);
            }
            empty
        };
        if last_app && let Err(e) = c.link.unsubscribe(&topic).await {
            return Err(reply(StatusCode::BAD_GATEWAY, format!("Error in unsubscribing: {e}")));
        }
        Ok(reply(StatusCode::OK, format!("Successfully unsubscribed from the topic {topic}")))
    };
    run.await.unwrap_or_else(|e| e)
}

/// `getsubscribedata/{host}/{topic}/{appID}`: the topic may hold `/`; the last segment is the app.
#[utoipa::path(get, path = "/api/v1/orchestration/cloudsyncmgr/getsubscribedata/{host}/{topic}/{appID}", tag = "CloudSync",
    params(("host" = String, Path, description = "the broker, as in subscribe's url"),
           ("topic" = String, Path, description = "the topic filter subscribed to (may contain /)"),
           ("appID" = String, Path, description = "the app that subscribed")),
    responses((status = 200, description = "the newest payload on the filter as Message (\"\" before any)", body = CloudSyncAnswer),
              (status = 400, description = "a path without an app", body = CloudSyncAnswer),
              (status = 404, description = "not subscribed", body = CloudSyncAnswer)))]
pub(crate) async fn subscribed_data(
    State(cs): State<Arc<CloudSync>>,
    Path((host, rest)): Path<(String, String)>,
) -> Reply {
    let Some((topic, appid)) = rest.rsplit_once('/') else {
        return bad("the path must be getsubscribedata/{host}/{topic}/{appID}");
    };
    let not_subscribed = || reply(StatusCode::NOT_FOUND, format!("Client is not subscribed to the topic {topic}"));
    let Some(c) = cs.find(&host).await else {
        return not_subscribed();
    };
    let subscribed = c.subs.lock().unwrap_or_else(|p| p.into_inner()).get(topic).is_some_and(|a| a.contains(appid));
    if !subscribed {
        return not_subscribed();
    }
    let last = c.last.lock().unwrap_or_else(|p| p.into_inner());
    let newest = last.iter().filter(|(t, _)| matches(topic, t)).max_by_key(|(_, (n, _))| *n);
    // "" while subscribed and nothing has arrived, as the original.
    let payload = newest.map(|(_, (_, p))| String::from_utf8_lossy(p).into_owned()).unwrap_or_default();
    reply(StatusCode::OK, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_urls() {
        assert!(matches("home1/+", "home1/livingroom"));
        assert!(matches("home1/#", "home1/a/b"));
        assert!(matches("home1/livingroom", "home1/livingroom"));
        assert!(!matches("home1/+", "home1/a/b"));
        assert!(!matches("home1/kitchen", "home1/livingroom"));
        assert!(!matches("a/b/c", "a/b"));
        assert_eq!(broker_url("10.0.0.5").unwrap().to_string(), "mqtt://10.0.0.5:1883");
        assert_eq!(broker_url("tcp://h:1884").unwrap().to_string(), "mqtt://h:1884");
        assert_eq!(broker_url("ssl://h").unwrap().to_string(), "mqtts://h:8883");
        assert!(broker_url("").is_err() && broker_url("http://h").is_err());
        assert!(check_topic("a/+/b", true).is_ok() && check_topic("a/#", true).is_ok());
        assert!(check_topic("a/#/b", true).is_err() && check_topic("a+", true).is_err());
        assert!(check_topic("a/+", false).is_err() && check_topic("", false).is_err());
    }
}
