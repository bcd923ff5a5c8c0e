//! The MQTT link: one connection to any MQTT 3.1.1 or 5 broker over `mqtt://` or
//! `mqtts://` (server-authenticated or mutual TLS), with user name and
//! password, QoS 1, keep-alive, reconnection with exponential backoff, and
//! every subscription restored after each reconnect (a clean session forgets
//! them).
//!
//! A publish completes only when the broker's PUBACK for it arrives, and fails
//! (never "succeeds") when the connection drops first: the original CloudSync
//! reported QoS 0 messages dropped during a reconnect as sent. rumqttc numbers
//! publishes in the order they are requested and keeps the number when it
//! retransmits, so the first sighting of a packet id is matched to the oldest
//! publisher still waiting for one; publishers keep their place in that queue
//! even after timing out, so the matching never shifts. Under MQTT 5 a PUBACK
//! that carries an error reason (not authorised, quota exceeded, …) fails the
//! publish with that reason.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet as Packet5, PubAckReason};
use rumqttc::{Event, MqttOptions, Outgoing, Packet, QoS, Request, TlsConfiguration, Transport, v5};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;

/// `mqtt://host[:1883]` or `mqtts://host[:8883]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl FromStr for BrokerUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<BrokerUrl, Error> {
        let bad = || Error::BadUrl(s.to_string());
        let (tls, rest) = match s.split_once("://") {
            Some(("mqtt", r)) => (false, r),
            Some(("mqtts", r)) => (true, r),
            _ => return Err(bad()),
        };
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains(['/', '@', '?']) {
            return Err(bad());
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !h.ends_with(':') => (h, p.parse().map_err(|_| bad())?),
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        Ok(BrokerUrl { tls, host: host.trim_matches(['[', ']']).to_string(), port })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", if self.tls { "mqtts" } else { "mqtt" }, self.host, self.port)
    }
}

/// A password that never prints and is wiped from memory when dropped;
/// [`Password::expose`] is the one way to its text.
#[derive(Clone)]
pub struct Password(zeroize::Zeroizing<String>);

impl Password {
    pub fn new(p: String) -> Self {
        Password(zeroize::Zeroizing::new(p))
    }

    /// The password's text, for the one place that sends it to the broker.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The MQTT version the link speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    V311,
    V5,
}

impl FromStr for Protocol {
    type Err = Error;
    fn from_str(s: &str) -> Result<Protocol, Error> {
        match s.trim() {
            "3.1.1" | "3" | "4" | "v311" => Ok(Protocol::V311),
            "5" | "5.0" | "v5" => Ok(Protocol::V5),
            other => Err(Error::BadSetting(format!("MQTT version {other:?}: use 3.1.1 or 5"))),
        }
    }
}

/// How to reach the broker.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub url: BrokerUrl,
    pub protocol: Protocol,
    pub client_id: String,
    pub username: Option<String>,
    pub password: Option<Password>,
    /// PEM of the CA that signed the broker's certificate (`mqtts://`).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM certificate and key for mutual TLS.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    pub keep_alive: Duration,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// How long a publish may wait for its PUBACK.
    pub ack_timeout: Duration,
    /// Ask the broker to keep the session (subscriptions, and QoS 1 messages
    /// that arrive while this client is away) under `client_id`.
    pub persistent_session: bool,
    /// Acknowledge a received message only when [`Link::ack`] is called (after
    /// it is safe), so the broker sends again what a process took and lost.
    pub manual_acks: bool,
}

impl LinkOptions {
    pub fn new(url: BrokerUrl, client_id: impl Into<String>) -> Self {
        LinkOptions {
            url,
            protocol: Protocol::V311,
            client_id: client_id.into(),
            username: None,
            password: None,
            ca_pem: None,
            client_cert: None,
            keep_alive: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(10),
            persistent_session: false,
            manual_acks: false,
        }
    }
}

/// A message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// With manual acknowledgements, what [`Link::ack`] acknowledges (QoS 1 only).
    pub ack: Option<AckToken>,
}

/// A received QoS 1 message's packet id on the connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    connection: u64,
    pkid: u16,
}

/// The largest MQTT packet the link sends or takes (16 MiB).
pub const MAX_PACKET: usize = 16 << 20;

/// The largest blob an agent that shares through a broker accepts: a batch
/// holding it, with the format's header and compression's worst case, still
/// fits one packet ([`MAX_PACKET`]), so no stored batch is one peers can never get.
pub const MAX_SHARED_BLOB: usize = MAX_PACKET - (1 << 20);

/// Whether a message of `payload` bytes on `topic` fits in one packet of this link.
pub fn fits(topic: &str, payload: usize) -> bool {
    // Fixed header (5), topic length (2), packet id (2), MQTT 5 properties (a few): 64 is ample.
    payload + topic.len() + 64 <= MAX_PACKET
}

/// The broker's answer to a publish: accepted, or refused with a reason (MQTT 5).
type Ack = Result<(), String>;

#[derive(Default)]
struct Waiting {
    /// Publishers whose packet has no id yet, oldest first.
    queued: VecDeque<oneshot::Sender<Ack>>,
    /// Publishers waiting for the PUBACK of a packet id.
    inflight: HashMap<u16, oneshot::Sender<Ack>>,
}

/// Either protocol's client handle.
#[derive(Clone)]
enum Client {
    V311(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Client {
    async fn publish(&self, topic: &str, retain: bool, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::V311(c) => c.publish(topic, QoS::AtLeastOnce, retain, payload).await.map_err(|e| e.to_string()),
            Client::V5(c) => c.publish(topic, QOS1_V5, retain, payload).await.map_err(|e| e.to_string()),
        }
    }

    /// At most once: no packet id, no acknowledgement, never queued for an offline session.
    async fn publish_qos0(&self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        match self {
            Client::V311(c) => c.publish(topic, QoS::AtMostOnce, false, payload).await.map_err(|e| e.to_string()),
            Client::V5(c) => {
                c.publish(topic, v5::mqttbytes::QoS::AtMostOnce, false, payload).await.map_err(|e| e.to_string())
            }
        }
    }

    async fn subscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V311(c) => c.subscribe(filter, QoS::AtLeastOnce).await.map_err(|e| e.to_string()),
            Client::V5(c) => c.subscribe(filter, QOS1_V5).await.map_err(|e| e.to_string()),
        }
    }

    fn try_subscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Client::V311(c) => c.try_subscribe(filter, QoS::AtLeastOnce).map_err(|e| e.to_string()),
            Client::V5(c) => c.try_subscribe(filter, QOS1_V5).map_err(|e| e.to_string()),
        }
    }
}

const QOS1_V5: v5::mqttbytes::QoS = v5::mqttbytes::QoS::AtLeastOnce;

/// What the connection task acts on, from either protocol's event loop.
enum Ev {
    Connected,
    /// A message, with its packet id when it is QoS 1.
    Message(Message, Option<u16>),
    Acked(u16, Ack),
    /// A publish left with this packet id.
    Sent(u16),
    /// A subscription left with this packet id; the broker answered one (with its refusal, if it refused).
    Subscribing(u16),
    Subscribed(u16, Option<String>),
    Other,
}

/// Either protocol's event loop, as the connection task sees it.
trait Driver: Send + 'static {
    fn next(&mut self) -> impl std::future::Future<Output = Result<Ev, String>> + Send;
    /// Drops every publish waiting for a reconnect (rumqttc would drop them at
    /// the next CONNACK of a clean session anyway) and says how many had no packet id yet.
    fn drop_pending_publishes(&mut self) -> usize;
}

impl Driver for rumqttc::EventLoop {
    async fn next(&mut self) -> Result<Ev, String> {
        Ok(match self.poll().await.map_err(|e| e.to_string())? {
            Event::Incoming(Packet::ConnAck(_)) => Ev::Connected,
            Event::Incoming(Packet::Publish(p)) => {
                let pkid = (p.qos == QoS::AtLeastOnce).then_some(p.pkid);
                Ev::Message(
                    Message { topic: p.topic.clone(), payload: p.payload.to_vec(), retain: p.retain, ack: None },
                    pkid,
                )
            }
            Event::Incoming(Packet::PubAck(ack)) => Ev::Acked(ack.pkid, Ok(())),
            Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
            Event::Outgoing(Outgoing::Subscribe(pkid)) => Ev::Subscribing(pkid),
            Event::Incoming(Packet::SubAck(a)) => Ev::Subscribed(
                a.pkid,
                a.return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    .then(|| "return code 0x80, failure".to_string()),
            ),
            _ => Ev::Other,
        })
    }

    fn drop_pending_publishes(&mut self) -> usize {
        let unsent = self
            .pending
            .iter()
            .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0 && p.qos != QoS::AtMostOnce))
            .count();
        self.pending.retain(|r| !matches!(r, Request::Publish(_)));
        unsent
    }
}

impl Driver for v5::EventLoop {
    async fn next(&mut self) -> Result<Ev, String> {
        Ok(match self.poll().await.map_err(|e| e.to_string())? {
            v5::Event::Incoming(Packet5::ConnAck(_)) => Ev::Connected,
            v5::Event::Incoming(Packet5::Publish(p)) => match String::from_utf8(p.topic.to_vec()) {
                Ok(topic) => {
                    let pkid = (p.qos == v5::mqttbytes::QoS::AtLeastOnce).then_some(p.pkid);
                    Ev::Message(Message { topic, payload: p.payload.to_vec(), retain: p.retain, ack: None }, pkid)
                }
                Err(_) => Ev::Other, // not a valid topic; MQTT requires UTF-8
            },
            v5::Event::Incoming(Packet5::PubAck(ack)) => Ev::Acked(
                ack.pkid,
                match ack.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                    refused => Err(format!("{refused:?}")),
                },
            ),
            v5::Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
            v5::Event::Outgoing(Outgoing::Subscribe(pkid)) => Ev::Subscribing(pkid),
            v5::Event::Incoming(Packet5::SubAck(a)) => Ev::Subscribed(
                a.pkid,
                a.return_codes
                    .iter()
                    .find(|c| !matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_)))
                    .map(|c| format!("{c:?}")),
            ),
            _ => Ev::Other,
        })
    }

    fn drop_pending_publishes(&mut self) -> usize {
        let unsent = self
            .pending
            .iter()
            .filter(|r| matches!(r, v5::Request::Publish(p) if p.pkid == 0 && p.qos != v5::mqttbytes::QoS::AtMostOnce))
            .count();
        self.pending.retain(|r| !matches!(r, v5::Request::Publish(_)));
        unsent
    }
}

struct Shared {
    /// Keeps "queue the waiter" and "queue the publish" in the same order.
    order: tokio::sync::Mutex<()>,
    waiting: Mutex<Waiting>,
    subscriptions: Mutex<Vec<String>>,
    /// Filters whose SUBSCRIBE is queued, oldest first, and those sent, by packet id: to name
    /// a subscription the broker refuses.
    subscribing: Mutex<(VecDeque<String>, HashMap<u16, String>)>,
    connected: watch::Sender<bool>,
    /// The number of the connection now up (from 1; 0 while down), for [`AckToken`]s.
    connection: std::sync::atomic::AtomicU64,
    /// Why the last attempt to reach the broker failed (refused, reset, timed out, TLS, credentials).
    last_error: Mutex<Option<String>>,
    /// The last QoS 1 publish queued: its topic, size and when (to name what a broker refused).
    last_publish: Mutex<Option<(String, usize, std::time::Instant)>>,
}

/// A handle on the link; cheap to clone.
#[derive(Clone)]
pub struct Link {
    client: Client,
    shared: Arc<Shared>,
    ack_timeout: Duration,
    url: BrokerUrl,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Link {
    /// Starts the connection task; it runs until `stop` is cancelled. Messages
    /// on subscribed topics arrive on the returned receiver.
    pub fn start(opts: LinkOptions, stop: CancellationToken) -> Result<(Link, mpsc::Receiver<Message>), Error> {
        // rustls needs a process-wide crypto provider; edgeseal uses ring throughout.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let transport = if opts.url.tls {
            let ca = opts
                .ca_pem
                .clone()
                .ok_or_else(|| Error::BadSetting(format!("{} needs the CA certificate of the broker", opts.url)))?;
            Transport::Tls(TlsConfiguration::Simple { ca, alpn: None, client_auth: opts.client_cert.clone() })
        } else if opts.client_cert.is_some() {
            return Err(Error::BadSetting("a client certificate needs an mqtts:// broker URL".into()));
        } else {
            Transport::Tcp
        };
        let password = opts.password.as_ref().map(Password::expose).unwrap_or("");
        let (connected, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            order: tokio::sync::Mutex::new(()),
            waiting: Mutex::new(Waiting::default()),
            subscriptions: Mutex::new(Vec::new()),
            subscribing: Mutex::new((VecDeque::new(), HashMap::new())),
            connected,
            last_error: Mutex::new(None),
            last_publish: Mutex::new(None),
            connection: std::sync::atomic::AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel(1024);
        let task = Task {
            shared: shared.clone(),
            tx,
            url: opts.url.clone(),
            max_backoff: opts.max_backoff,
            stop,
            protocol: opts.protocol,
            manual_acks: opts.manual_acks,
        };
        let client = match opts.protocol {
            Protocol::V311 => {
                let mut mo = MqttOptions::new(&opts.client_id, &opts.url.host, opts.url.port);
                mo.set_keep_alive(opts.keep_alive);
                mo.set_clean_session(!opts.persistent_session);
                mo.set_max_packet_size(MAX_PACKET, MAX_PACKET);
                mo.set_manual_acks(opts.manual_acks);
                // Publishes awaiting PUBACK at once (rumqttc's default is 100).
                mo.set_inflight(INFLIGHT);
                if let Some(user) = &opts.username {
                    mo.set_credentials(user, password);
                }
                mo.set_transport(transport);
                let (client, eventloop) = rumqttc::AsyncClient::new(mo, 1024);
                let client = Client::V311(client);
                tokio::spawn(task.run(eventloop, client.clone()));
                client
            }
            Protocol::V5 => {
                let mut mo = v5::MqttOptions::new(&opts.client_id, &opts.url.host, opts.url.port);
                mo.set_keep_alive(opts.keep_alive);
                mo.set_clean_start(!opts.persistent_session);
                if opts.persistent_session {
                    // Under MQTT 5 a session ends with the connection unless it has an expiry.
                    mo.set_session_expiry_interval(Some(SESSION_EXPIRY_S));
                }
                mo.set_max_packet_size(Some(MAX_PACKET as u32));
                mo.set_manual_acks(opts.manual_acks);
                if let Some(user) = &opts.username {
                    mo.set_credentials(user, password);
                }
                mo.set_transport(transport);
                let (client, eventloop) = v5::AsyncClient::new(mo, 1024);
                let client = Client::V5(client);
                tokio::spawn(task.run(eventloop, client.clone()));
                client
            }
        };
        let link = Link { client, shared, ack_timeout: opts.ack_timeout, url: opts.url.clone() };
        Ok((link, rx))
    }

    /// Publishes at QoS 1 and returns once the broker acknowledged it.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<(), Error> {
        self.send(topic, payload, retain).await?.acked().await
    }

    /// Queues a publish (QoS 1) behind every one queued before and returns
    /// the broker's acknowledgement to wait for: messages reach the broker
    /// in the order of these calls, however many are in flight.
    pub async fn send(&self, topic: &str, payload: Vec<u8>, retain: bool) -> Result<Pending, Error> {
        let (done, acked) = oneshot::channel();
        let _order = self.shared.order.lock().await;
        *self.shared.last_publish.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((topic.to_string(), payload.len(), std::time::Instant::now()));
        self.shared.waiting.lock().unwrap_or_else(|p| p.into_inner()).queued.push_back(done);
        if let Err(e) = self.client.publish(topic, retain, payload).await {
            // Nothing was queued: take our waiter back out.
            self.shared.waiting.lock().unwrap_or_else(|p| p.into_inner()).queued.pop_back();
            return Err(Error::LinkClosed { what: format!("publish to {topic:?}"), why: e });
        }
        Ok(Pending { acked, topic: topic.to_string(), url: self.url.clone(), timeout: self.ack_timeout })
    }

    /// Publishes at QoS 0, not retained: at most once, with no
    /// acknowledgement, and never queued by the broker for an offline
    /// session. For live frames, which stored batches back up.
    pub async fn publish_once(&self, topic: &str, payload: Vec<u8>) -> Result<(), Error> {
        // No waiter to queue, so no need to take `order`: a QoS 0 publish has no packet id to match.
        self.client
            .publish_qos0(topic, payload)
            .await
            .map_err(|why| Error::LinkClosed { what: format!("publish to {topic:?}"), why })
    }

    /// Acknowledges a message received with manual acknowledgements on (in
    /// the order received). One from a connection that has since broken is
    /// not acknowledged: the broker sends it again.
    pub async fn ack(&self, m: &Message) -> Result<(), Error> {
        let Some(t) = m.ack else { return Ok(()) };
        if t.connection != self.shared.connection.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let r = match &self.client {
            Client::V311(c) => {
                let mut p = rumqttc::Publish::new(&m.topic, QoS::AtLeastOnce, Vec::new());
                p.pkid = t.pkid;
                c.ack(&p).await.map_err(|e| e.to_string())
            }
            Client::V5(c) => {
                let mut p = v5::mqttbytes::v5::Publish::new(&m.topic, QOS1_V5, Vec::new(), None);
                p.pkid = t.pkid;
                c.ack(&p).await.map_err(|e| e.to_string())
            }
        };
        r.map_err(|why| Error::LinkClosed { what: format!("acknowledge a message on {:?}", m.topic), why })
    }

    /// Subscribes (QoS 1) now and after every reconnect.
    pub async fn subscribe(&self, filter: &str) -> Result<(), Error> {
        self.shared.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).push(filter.to_string());
        let _order = self.shared.order.lock().await;
        self.shared.subscribing.lock().unwrap_or_else(|p| p.into_inner()).0.push_back(filter.to_string());
        self.client.subscribe(filter).await.map_err(|why| {
            self.shared.subscribing.lock().unwrap_or_else(|p| p.into_inner()).0.pop_back();
            Error::LinkClosed { what: format!("subscribe to {filter:?}"), why }
        })
    }

    /// Unsubscribes now and stops restoring the subscription after reconnects.
    pub async fn unsubscribe(&self, filter: &str) -> Result<(), Error> {
        self.shared.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).retain(|f| f != filter);
        let r = match &self.client {
            Client::V311(c) => c.unsubscribe(filter).await.map_err(|e| e.to_string()),
            Client::V5(c) => c.unsubscribe(filter).await.map_err(|e| e.to_string()),
        };
        r.map_err(|why| Error::LinkClosed { what: format!("unsubscribe from {filter:?}"), why })
    }

    /// Whether the link is connected now, and changes to it.
    /// Why the last attempt to reach the broker failed, if one did.
    pub fn last_error(&self) -> Option<String> {
        self.shared.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn connected(&self) -> watch::Receiver<bool> {
        self.shared.connected.subscribe()
    }

    pub fn url(&self) -> &BrokerUrl {
        &self.url
    }
}

/// A publish on its way: [`Pending::acked`] completes when the broker acknowledged it.
#[derive(Debug)]
pub struct Pending {
    acked: oneshot::Receiver<Ack>,
    topic: String,
    url: BrokerUrl,
    timeout: Duration,
}

impl Pending {
    /// Waits (up to the link's `ack_timeout`) for the broker's acknowledgement.
    pub async fn acked(self) -> Result<(), Error> {
        // On time-out the waiter stays queued (its request may still go out); only the answer is dropped.
        match tokio::time::timeout(self.timeout, self.acked).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(reason))) => Err(Error::Refused { broker: self.url.to_string(), topic: self.topic, reason }),
            _ => Err(Error::NotAcknowledged { broker: self.url.to_string(), after: self.timeout }),
        }
    }
}

/// QoS 1 publishes in flight at once under MQTT 3.1.1 (under 5 the broker's
/// Receive Maximum decides).
const INFLIGHT: u16 = 512;
/// Messages waiting for a slow reader beyond the channel's 1024, at which the link says so.
const UNREAD_WARN: usize = 65_536;

/// How long a broker keeps a persistent MQTT 5 session of a client that is away: 30 days.
const SESSION_EXPIRY_S: u32 = 30 * 24 * 3600;

/// The connection task: drives the event loop until `stop`.
struct Task {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Message>,
    url: BrokerUrl,
    max_backoff: Duration,
    stop: CancellationToken,
    protocol: Protocol,
    manual_acks: bool,
}

/// What a failure to connect means when the broker ends the connection at an
/// MQTT 5 CONNECT it has never accepted (RabbitMQ 3.x and NATS close it
/// without a CONNACK), or refuses the protocol version outright.
fn refused_v5(e: &str) -> Option<String> {
    let closed = ["closed by peer", "abruptly", "Connection reset", "UnsupportedProtocolVersion", "unexpected eof"];
    closed.iter().any(|c| e.contains(c)).then(|| {
        format!(
            "{e}: the broker ended the connection at MQTT 5's CONNECT without answering, so it most likely \
             does not speak MQTT 5 (RabbitMQ 3.x and NATS do not): set mqtt.version = \"3.1.1\""
        )
    })
}

impl Task {
    async fn run(self, mut driver: impl Driver, client: Client) {
        let Task { shared, tx, url, max_backoff, stop, protocol, manual_acks } = self;
        let mut connection_no = 0u64;
        let mut backoff = Duration::from_millis(100);
        let mut down_logged = false;
        let mut ever_connected = false;
        // The connection is driven whatever the reader does: a reader that publishes or
        // acknowledges while messages pour in needs it to take its requests. So messages go
        // through an unbounded queue to a task that hands them to the reader's channel (with
        // manual acknowledgements the broker's in-flight window bounds it), and the event
        // loop's poll is never cancelled but at the stop.
        let (unread, mut unread_rx) = mpsc::unbounded_channel::<Message>();
        let waiting = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        {
            let waiting = waiting.clone();
            let url = url.clone();
            tokio::spawn(async move {
                while let Some(m) = unread_rx.recv().await {
                    waiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    if tx.send(m).await.is_err() {
                        debug!("nobody reads messages from {url}");
                    }
                }
            });
        }
        // The topic of the publish the broker last closed the connection right after.
        let mut closed_after: Option<String> = None;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                e = driver.next() => e,
            };
            match event {
                Ok(Ev::Connected) => {
                    ever_connected = true;
                    connection_no += 1;
                    shared.connection.store(connection_no, std::sync::atomic::Ordering::Relaxed);
                    backoff = Duration::from_millis(100);
                    if down_logged {
                        info!("connected to {url} again");
                        down_logged = false;
                    } else {
                        debug!("connected to {url}");
                    }
                    // Restore the subscriptions before saying "connected", so anything published
                    // after that is queued behind them (the broker handles packets in order).
                    let subs = shared.subscriptions.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    {
                        let mut s = shared.subscribing.lock().unwrap_or_else(|p| p.into_inner());
                        *s = (VecDeque::new(), HashMap::new());
                        for f in subs {
                            match client.try_subscribe(&f) {
                                Ok(()) => s.0.push_back(f),
                                Err(e) => warn!("cannot resubscribe to {f}: {e}"),
                            }
                        }
                    }
                    shared.connected.send_replace(true);
                }
                Ok(Ev::Message(mut m, pkid)) => {
                    if manual_acks {
                        m.ack = pkid.map(|pkid| AckToken { connection: connection_no, pkid });
                    }
                    if waiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 == UNREAD_WARN {
                        warn!("{UNREAD_WARN} messages from {url} wait to be read: the reader is behind");
                    }
                    let _ = unread.send(m);
                }
                Ok(Ev::Acked(pkid, ack)) => {
                    let done = shared.waiting.lock().unwrap_or_else(|p| p.into_inner()).inflight.remove(&pkid);
                    if let Some(done) = done {
                        let _ = done.send(ack);
                    }
                }
                // Packet id 0 is a QoS 0 publish (a live frame): nobody waits for it.
                Ok(Ev::Sent(0)) => {}
                Ok(Ev::Sent(pkid)) => {
                    let mut w = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
                    if !w.inflight.contains_key(&pkid)
                        && let Some(waiter) = w.queued.pop_front()
                    {
                        w.inflight.insert(pkid, waiter);
                    }
                }
                Ok(Ev::Subscribing(pkid)) => {
                    let mut s = shared.subscribing.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(f) = s.0.pop_front() {
                        s.1.insert(pkid, f);
                    }
                }
                Ok(Ev::Subscribed(pkid, refused)) => {
                    let filter = shared.subscribing.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&pkid);
                    if let Some(why) = refused {
                        let filter = filter.map_or("a topic filter".to_string(), |f| format!("{f:?}"));
                        warn!(
                            "the broker {url} refused the subscription to {filter} ({why}): nothing published there reaches this agent. A broker refuses a filter it cannot take (NATS: a '.' or a space in a topic level, as mqtt.prefix may hold) or one this user may not read (its ACL)"
                        );
                    }
                }
                Ok(Ev::Other) => {}
                Err(e) => {
                    let e = match (protocol, ever_connected) {
                        (Protocol::V5, false) => refused_v5(&e).unwrap_or(e),
                        _ => e,
                    };
                    // Only a connection that was up can have been closed at a publish.
                    let e = match *shared.connected.borrow() {
                        true => refused_publish(e, &shared.last_publish, &mut closed_after),
                        false => e,
                    };
                    // With a clean session rumqttc drops, at the next CONNACK, every publish
                    // that was in flight or still queued when the connection broke. Fail exactly
                    // those waiters: the ones in flight, and the oldest queued ones, one per
                    // dropped publish that had no packet id yet.
                    let unsent = driver.drop_pending_publishes();
                    {
                        let mut w = shared.waiting.lock().unwrap_or_else(|p| p.into_inner());
                        w.inflight.clear();
                        for _ in 0..unsent {
                            w.queued.pop_front();
                        }
                    }
                    shared.connected.send_replace(false);
                    // No ack of a message from the broken connection goes out on the next one.
                    shared.connection.store(0, std::sync::atomic::Ordering::Relaxed);
                    *shared.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                    if !down_logged {
                        warn!("broker {url} unreachable: {e}; retrying with backoff");
                        down_logged = true;
                    } else {
                        debug!("broker {url} still unreachable: {e}");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
        shared.connected.send_replace(false);
        // What is still queued (in `unread`, dropped now) reaches the reader if it reads on;
        // then the handing task ends.
    }
}

/// A broker that closes the connection right after a publish, twice on the same topic, refused
/// it: MQTT 3.1.1 has no other way to say so (NATS refuses `.` in topics like this). The error
/// then names the topic and size, so the cause is not taken for an unreachable broker.
fn refused_publish(
    e: String,
    last: &Mutex<Option<(String, usize, std::time::Instant)>>,
    before: &mut Option<String>,
) -> String {
    let just_sent = last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .filter(|(_, _, at)| at.elapsed() < Duration::from_secs(2));
    let named = match (&just_sent, before.as_deref()) {
        (Some((topic, size, _)), Some(prev)) if prev == topic => format!(
            "{e}. The broker closed the connection right after a publish of {size} bytes to {topic:?}, again: that is how a broker refuses a topic, a packet size or a permission under MQTT 3.1.1 (its log says which; under MQTT 5 it says so to the agent)"
        ),
        _ => e,
    };
    *before = just_sent.map(|(topic, ..)| topic);
    named
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!("mqtt://h".parse::<BrokerUrl>().unwrap(), BrokerUrl { tls: false, host: "h".into(), port: 1883 });
        assert_eq!("mqtts://h:1".parse::<BrokerUrl>().unwrap().port, 1);
        assert_eq!("mqtts://h".parse::<BrokerUrl>().unwrap().port, 8883);
        assert_eq!("mqtt://[::1]:99".parse::<BrokerUrl>().unwrap().host, "::1");
        for bad in ["h:1883", "http://h", "mqtt://", "mqtt://u:p@h", "mqtt://h:port"] {
            assert!(bad.parse::<BrokerUrl>().is_err(), "{bad}");
        }
        assert_eq!(format!("{:?}", Password::new("hunter2".into())), "[redacted]");
    }
}
