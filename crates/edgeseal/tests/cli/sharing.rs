//! Pairing, grants, revocation and live sharing through a real mosquitto.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Agent, BASE_RFC, BASE_TS, feed, free_port, mosquitto_tools, sigterm, tempdir, text, wait_until};

/// A mosquitto of the test's own on a free port (its own retained messages), stopped on drop.
pub(super) struct Broker {
    child: Child,
    pub(super) port: u16,
    log: std::path::PathBuf,
}

impl Broker {
    pub(super) fn start(port: u16) -> Broker {
        Broker::start_with(port, "")
    }

    /// With `extra` lines of mosquitto configuration (no persistence either way).
    fn start_with(port: u16, extra: &str) -> Broker {
        let dir = tempdir("broker");
        let conf = dir.join("mosquitto.conf");
        let log = dir.join("mosquitto.log");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type all\n{extra}"),
        )
        .unwrap();
        // The log goes through a file the test opens: mosquitto may drop root and not reach the temp dir.
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Broker { child, port, log }
    }

    pub(super) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Stops a broker the test started.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Broker {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A NATS server of the test's own with its MQTT listener on (JetStream keeps its sessions and retained
/// messages), stopped on drop; None (skip) without nats-server, unless services are required.
pub(super) struct Nats {
    child: Child,
    port: u16,
}

impl Nats {
    pub(super) fn start() -> Option<Nats> {
        if !super::available("nats-server", Command::new("nats-server").arg("--version").output().is_ok()) {
            return None;
        }
        let dir = tempdir("nats");
        let (port, client) = (free_port(), free_port());
        let conf = dir.join("nats.conf");
        let store = dir.join("js");
        std::fs::write(
            &conf,
            format!(
                "listen: 127.0.0.1:{client}\nserver_name: edgeseal-test-{port}\njetstream {{ store_dir: {:?} }}\n\
                 mqtt {{ listen: 127.0.0.1:{port} }}\n",
                store.display().to_string()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("nats.log")).unwrap();
        let child = Command::new("nats-server").arg("-c").arg(&conf).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        wait_until("NATS's MQTT to listen", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(Nats { child, port })
    }

    pub(super) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A RabbitMQ node of the test's own with the MQTT plugin (its own ports, data and plugins
/// file), stopped on drop; None (skip) without rabbitmq-server, unless services are required.
pub(super) struct Rabbit {
    node: String,
    port: u16,
    child: Child,
}

impl Rabbit {
    pub(super) fn start() -> Option<Rabbit> {
        if !super::available("rabbitmq-server", std::path::Path::new("/usr/sbin/rabbitmq-server").exists()) {
            return None;
        }
        let dir = tempdir("rabbit");
        let (port, amqp, dist) = (free_port(), free_port(), free_port());
        std::fs::write(dir.join("enabled_plugins"), "[rabbitmq_mqtt].\n").unwrap();
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = {amqp}\nmqtt.listeners.tcp.default = {port}\nmqtt.allow_anonymous = true\n\
                 loopback_users = none\n"
            ),
        )
        .unwrap();
        // The server runs as the rabbitmq user when started by root: it must own its directory.
        let _ = Command::new("chown").args(["-R", "rabbitmq:rabbitmq"]).arg(&dir).status();
        let node = format!("edgeseal-test-{port}@localhost");
        let child = Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_DIST_PORT", dist.to_string())
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdout(std::fs::File::create(dir.join("out.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("RabbitMQ's MQTT to listen", Duration::from_secs(60), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(Rabbit { node, port, child })
    }

    pub(super) fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").args(["--node", &self.node, "stop"]).output();
        stop(&mut self.child);
    }
}

fn with_broker(tag: &str, url: &str) -> Agent {
    let mut a = Agent::new(tag);
    a.broker = Some(url.to_string());
    a
}

/// `host` shows a code, `joiner` enters it; returns both outputs.
fn pair(host: &Agent, joiner: &Agent) -> (std::process::Output, std::process::Output) {
    let out = host.dir.parent().unwrap().join(format!("pair-{}.out", std::process::id()));
    let mut h = host
        .cmd(&["pair", "--timeout", "8s"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut code = String::new();
    wait_until("the pairing code", Duration::from_secs(15), || {
        let t = std::fs::read_to_string(&out).unwrap_or_default();
        match t.split("edgeseal pair ").nth(1) {
            Some(c) => {
                code = c.split_whitespace().next().unwrap_or("").to_string();
                !code.is_empty()
            }
            None => false,
        }
    });
    let j = joiner.run(&["pair", &code]);
    let status = h.wait().unwrap();
    let mut err = String::new();
    h.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let hout = std::process::Output { status, stdout: std::fs::read(&out).unwrap(), stderr: err.into_bytes() };
    (hout, j)
}

/// `watch --json` of an agent in the background, stopped on drop.
struct Watcher {
    child: Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl Watcher {
    /// Starts watching and waits until the grant of `stream` has arrived.
    fn start(a: &Agent, stream: &str) -> Watcher {
        let (out, err) = (a.dir.parent().unwrap().join("watch.out"), a.dir.parent().unwrap().join("watch.err"));
        let child = a
            .cmd(&["watch", "--json", "--for", "60s"])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let w = Watcher { child, out, err };
        wait_until(&format!("the grant of {stream} to reach the watcher"), Duration::from_secs(15), || {
            w.said().contains(&format!("granted {stream}"))
        });
        w
    }

    /// What it said on stderr.
    fn said(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// The readings it printed.
    fn seen(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn wait_for(&self, n: usize) {
        wait_until(&format!("{n} live readings"), Duration::from_secs(20), || self.seen().len() >= n);
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

fn peers(a: &Agent) -> Vec<Value> {
    serde_json::from_str::<Value>(&a.ok(&["peers", "--json"])).unwrap().as_array().unwrap().clone()
}

fn lines(stream: &str, range: std::ops::Range<i64>) -> Vec<String> {
    range.map(|i| super::line(stream, i)).collect()
}

#[test]
fn pair_share_watch_store_and_revoke_through_mosquitto() {
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let url = broker.url();
    let pi = with_broker("pi", &url);
    let laptop = with_broker("laptop", &url);
    let phone = with_broker("phone", &url);

    // Pairing: both sides learn each other's verified identity.
    for other in [&laptop, &phone] {
        let (h, j) = pair(&pi, other);
        assert!(h.status.success() && j.status.success(), "{}{}{}", text(&h.stderr), text(&j.stdout), text(&j.stderr));
        assert!(text(&j.stdout).contains("Paired with pi"), "{}", text(&j.stdout));
    }
    let pi_peers = peers(&pi);
    assert_eq!(pi_peers.len(), 2);
    assert_eq!(peers(&laptop)[0]["device_id"], pi.device());
    let pi_id: Value = serde_json::from_str(&pi.ok(&["id", "--json"])).unwrap();
    assert_eq!(peers(&laptop)[0]["fingerprint"], pi_id["fingerprint"]);
    assert_eq!(peers(&laptop)[0]["ed25519"], pi_id["ed25519"]);

    // Everything the broker carries, raw.
    let capture = pi.dir.parent().unwrap().join("everything.bin");
    let mut sniffer = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", "#", "-v", "-F", "%t %x"])
        .stdout(std::fs::File::create(&capture).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    pi.ok(&["share", "temperature", "--with", "laptop", "--from", BASE_RFC]);
    pi.ok(&["share", "temperature", "--with", "phone", "--from", BASE_RFC]);
    // The laptop runs an agent (it stores what it receives); the phone only watches.
    let mut laptop_up = laptop
        .cmd(&["up", "--sensor", "none", "--for", "60s"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(laptop.dir.parent().unwrap().join("up.err")).unwrap())
        .spawn()
        .unwrap();
    let watch = Watcher::start(&phone, "temperature");

    // The default batching (1000 readings or 60 s) cuts no batch during the test: what the
    // phone sees, it sees live, in signed frames, the moment the pi accepts it.
    let mut up = pi.spawn_stdin(&[]);
    let out = pi.dir.parent().unwrap().join("up.out");
    wait_until("the pi's agent to be sharing", Duration::from_secs(15), || {
        std::fs::read_to_string(&out).unwrap_or_default().contains("Stop with Ctrl-C")
    });
    let value_lines = |range| lines("temperature", range).concat();
    std::io::Write::write_all(up.stdin.as_mut().unwrap(), value_lines(0..20).as_bytes()).unwrap();
    watch.wait_for(20);

    // Revoke the phone: a new epoch only the laptop receives.
    let out = pi.ok(&["revoke", "phone"]);
    assert!(out.contains("revoked phone from temperature"), "{out}");
    wait_until("the phone to learn of it", Duration::from_secs(10), || {
        watch.said().contains("revoked this agent's access to temperature")
    });
    // The running agent picks up the new epoch for the next batches.
    feed(&mut up, "temperature", 20..40);
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", pi.logs());
    wait_until("the phone to be told it cannot open the rest", Duration::from_secs(10), || {
        watch.said().contains("not granted to this agent")
    });
    let seen = watch.seen();
    assert_eq!(seen.len(), 20, "the revoked phone saw readings sealed after the revocation");
    for (i, r) in seen.iter().enumerate() {
        assert_eq!(r["ts_ms"].as_i64().unwrap(), BASE_TS + i as i64 * 1000);
        assert_eq!(r["peer"], "pi");
        assert_eq!(r["status"], "live", "{r}");
    }

    // The laptop stored all 40 (both epochs) and can fetch and verify them later.
    let pi_dev = pi.device();
    wait_until("the laptop to store 40 readings", Duration::from_secs(20), || {
        let out = laptop.run(&["fetch", "--stream", "temperature", "--device", &pi_dev, "--format", "json"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v.as_array().unwrap().len() == 40)
    });
    let got = laptop.fetch_from("temperature", Some(&pi_dev));
    assert_eq!(got, super::expected(0..40));
    let verify = laptop.run(&["verify", "--device", &pi_dev, "--stream", "temperature"]);
    assert!(verify.status.success(), "{}{}", text(&verify.stdout), text(&verify.stderr));
    // Seen live one by one, stored compactly: one batch of 40 on both sides, at the batch policy.
    for (who, agent) in [("pi", &pi), ("laptop", &laptop)] {
        let streams: Value = serde_json::from_str(&agent.ok(&["streams", "--json"])).unwrap();
        let s = streams.as_array().unwrap().iter().find(|s| s["device"] == pi_dev.as_str()).unwrap().clone();
        assert_eq!((s["batches"].as_u64(), s["readings"].as_u64()), (Some(1), Some(40)), "{who}: {s}");
    }
    let _ = Command::new("kill").args(["-TERM", &laptop_up.id().to_string()]).status();
    let _ = laptop_up.wait();
    drop(watch);

    // The broker carried no reading, unit or key in the clear.
    let _ = sniffer.kill();
    let _ = sniffer.wait();
    let carried = std::fs::read_to_string(&capture).unwrap();
    assert!(carried.contains("/temperature/batch "), "the sniffer saw nothing: {carried:.200}");
    assert!(carried.contains("/temperature/grant/"), "{carried:.200}");
    assert!(carried.contains("/temperature/live "), "no live frame went through the broker");
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    for secret in ["\"value\"", "\"unit\"", "1.5", "3.9", "\"u\""] {
        assert!(!carried.contains(&hex(secret)), "the broker carried {secret:?} in the clear");
    }
}

/// Every broker engine we can run: mosquitto (MQTT 3.1.1 and 5), the embedded broker (5), NATS's
/// MQTT and RabbitMQ's (3.1.1: they speak no other). A `.` is legal in a
/// stream name (a DHT with `stream = "room"` makes `room.temperature`), but NATS refuses it in a
/// topic and RabbitMQ turns it into a level separator: the topic level spells it `~`. And RabbitMQ
/// delivers retained messages to exact subscriptions only: the grant, given while the peer is
/// away, reaches it through the index of its grants. Through each: pairing, a grant made while
/// the peer is away, live readings of such a stream, the CloudSync API (publish, subscribe,
/// getsubscribedata), a batch sealed while the peer's agent is offline and stored by it when it
/// is back (its persistent session), and a revocation that reaches the peer; then a device with
/// `store = "broker"` whose batches `edgeseal ingest` stores and acknowledges (unshared on NATS
/// and RabbitMQ, which have no shared subscriptions).
#[test]
fn a_stream_with_a_dot_shared_while_the_peer_is_away_reaches_it_through_every_broker() {
    if mosquitto_tools().is_none() {
        return;
    }
    let Some(nats) = Nats::start() else { return };
    let Some(rabbit) = Rabbit::start() else { return };
    let mosquitto = Broker::start(free_port());
    let embedded = Secured::start(Kind::Embedded, 1, false);
    let embedded_url = format!("mqtt://127.0.0.1:{}", embedded.port);
    // MQTT 5 where the broker speaks it (NATS and RabbitMQ 3.x do not).
    let engines = [
        ("mosquitto", mosquitto.url(), "3.1.1"),
        ("mosquitto-v5", mosquitto.url(), "5"),
        ("embedded-v5", embedded_url, "5"),
        ("nats", nats.url(), "3.1.1"),
        ("rabbitmq", rabbit.url(), "3.1.1"),
    ];
    for (engine, url, version) in engines {
        let agent = |tag: &str| {
            let mut a = with_broker(&format!("{engine}-{tag}"), &url);
            a.env.push(("EDGESEAL_MQTT__VERSION".into(), version.into()));
            a
        };
        let (mut pi, laptop) = (agent("pi"), agent("laptop"));
        let web = free_port();
        pi.env.push(("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{web}")));
        let (h, j) = pair(&pi, &laptop);
        assert!(h.status.success() && j.status.success(), "{engine}: {}{}", text(&h.stderr), text(&j.stderr));
        // The laptop's agent makes its persistent session, then goes offline.
        laptop.ok(&["up", "--sensor", "none", "--for", "2s"]);
        pi.ok(&["share", "room.temperature", "--with", &format!("{engine}-laptop"), "--from", BASE_RFC, "--new"]);
        let watch = Watcher::start(&laptop, "room.temperature");
        let mut up = pi.spawn_stdin(&[]);
        let out = pi.dir.parent().unwrap().join("up.out");
        wait_until("the pi's agent to be sharing", Duration::from_secs(15), || {
            std::fs::read_to_string(&out).unwrap_or_default().contains("Stop with Ctrl-C")
        });
        std::io::Write::write_all(up.stdin.as_mut().unwrap(), lines("room.temperature", 0..5).concat().as_bytes())
            .unwrap();
        watch.wait_for(5);
        let seen: Vec<f64> = watch.seen().iter().map(|r| r["value"].as_f64().unwrap()).collect();
        assert_eq!(seen, [0.0, 0.1, 0.2, 0.3, 0.4], "{engine}");
        assert!(watch.seen().iter().all(|r| r["stream"] == "room.temperature"), "{engine}");

        // The CloudSync API of the running agent, to this broker.
        let api = format!("http://127.0.0.1:{web}/api/v1/orchestration/cloudsyncmgr");
        let target = url.trim_start_matches("mqtt://").to_string();
        let body = format!(r#"{{"appid":"app","topic":"cs/+","url":"{target}"}}"#);
        let (status, v) = super::web::http("POST", &format!("{api}/subscribe"), Some(&body));
        assert_eq!(status, 200, "{engine}: {v}");
        let body = format!(r#"{{"appid":"tv","payload":"p-{engine}","topic":"cs/tv","url":"{target}"}}"#);
        let (status, v) = super::web::http("POST", &format!("{api}/publish"), Some(&body));
        assert_eq!(status, 200, "{engine}: {v}");
        wait_until("the CloudSync subscription's data", Duration::from_secs(15), || {
            let (_, v) = super::web::http("GET", &format!("{api}/getsubscribedata/127.0.0.1/cs/+/app"), None);
            v["Message"] == format!("p-{engine}")
        });
        // The readings are sealed into a batch at the stop, while nothing of the laptop is
        // connected: the broker keeps it for the laptop's agent's session.
        drop(watch);
        sigterm(&up);
        assert!(up.wait().unwrap().success(), "{engine}: {}", pi.logs());
        let mut back = laptop.spawn_stdin(&["--for", "60s"]);
        wait_until("the laptop's agent", Duration::from_secs(15), || laptop.logs().contains("Stop with Ctrl-C"));
        let pi_dev = pi.device();
        let stored = || {
            let out = laptop.run(&["fetch", "--stream", "room.temperature", "--device", &pi_dev, "--format", "json"]);
            serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 5))
        };
        wait_until("the laptop to store what it missed", Duration::from_secs(30), stored);
        sigterm(&back);
        assert!(back.wait().unwrap().success(), "{engine}: {}", laptop.logs());
        assert_eq!(laptop.fetch_from("room.temperature", Some(&pi_dev)), super::expected(0..5), "{engine}");
        // A revocation, given while the laptop is away, reaches it.
        pi.ok(&["revoke", &format!("{engine}-laptop")]);
        let out = laptop.run(&["watch", "--for", "4s"]);
        let said = text(&out.stderr);
        assert!(said.contains("revoked this agent's access to room.temperature"), "{engine}: {said}");

        // A device that keeps no store, through this broker to `edgeseal ingest` (unshared where
        // the broker has no shared subscriptions).
        let dir = tempdir(&format!("{engine}-ingest"));
        let store = format!("sqlite://{}", dir.join("ingest.db").display());
        let group = if matches!(engine, "nats" | "rabbitmq") { "" } else { "edgeseal-ingest" };
        let mut ingest =
            spawn_ingest(&dir, &url, &store, 0, &["--group", group], &[("EDGESEAL_MQTT__VERSION", version)]);
        let mut device = agent("device");
        device.store = Some("broker".into());
        device.run_lines("room.temperature", 0..6, &["--batch-count", "2"]);
        assert!(device.logs().contains("3 batches sealed, 3 stored"), "{engine}: {}", device.logs());
        let mut auditor = agent("auditor");
        auditor.store = Some(store);
        let out = auditor.run(&["verify", "--device", &device.device(), "--stream", "room.temperature"]);
        assert!(out.status.success() && text(&out.stdout).contains("3 batches"), "{engine}: {}", text(&out.stdout));
        sigterm(&ingest);
        assert!(ingest.wait().unwrap().success(), "{engine}");
    }
}

/// `watch` on an agent's data directory takes what peers send as received (it remembers their
/// heads), so it queues it for the agent's store too: the next `up` stores it. Before, `up`
/// then refused those batches as replays, and the agent's store never got them.
#[test]
fn watching_never_costs_the_agents_store_a_batch() {
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let (pi, laptop) = (with_broker("watched-pi", &broker.url()), with_broker("watched-laptop", &broker.url()));
    let (h, j) = pair(&pi, &laptop);
    assert!(h.status.success() && j.status.success(), "{}{}", text(&h.stderr), text(&j.stderr));
    laptop.ok(&["up", "--sensor", "none", "--for", "2s"]); // its agent's session, offline from now on
    pi.ok(&["share", "temperature", "--with", "watched-laptop", "--from", BASE_RFC]);
    let watch = Watcher::start(&laptop, "temperature");
    pi.run_lines("temperature", 0..5, &[]);
    watch.wait_for(5);
    // Until the watcher has taken the pi's batch (it remembers the stream's head).
    let state = laptop.dir.join("state.db");
    wait_until("the watcher to take the batch", Duration::from_secs(15), || {
        let out = Command::new("sqlite3").arg(&state).arg("SELECT COUNT(*) FROM seen_heads").output().unwrap();
        text(&out.stdout).trim() == "1"
    });
    drop(watch);
    let mut up = laptop.spawn_stdin(&["--for", "60s"]);
    let pi_dev = pi.device();
    wait_until("the laptop to store the batch", Duration::from_secs(30), || {
        let out = laptop.run(&["fetch", "--stream", "temperature", "--device", &pi_dev, "--format", "json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 5))
    });
    sigterm(&up);
    assert!(up.wait().unwrap().success(), "{}", laptop.logs());
    assert!(!laptop.logs().contains("replayed or out of order"), "{}", laptop.logs());
}

/// NATS's MQTT (like RabbitMQ 3.x's) speaks 3.1.1 only and closes the connection at an MQTT 5
/// CONNECT: the agent says so and names the setting, instead of "cannot reach the broker".
#[test]
fn a_broker_that_refuses_mqtt_5_is_named_as_such() {
    let Some(nats) = Nats::start() else { return };
    let mut a = with_broker("v5", &nats.url());
    a.env = vec![("EDGESEAL_MQTT__VERSION".into(), "5".into())];
    let out = a.run(&["pair", "--timeout", "5s"]);
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(said.contains("does not speak MQTT 5") && said.contains("set mqtt.version = \"3.1.1\""), "{said}");
}

/// NATS closes the connection at a publish to a topic with a `.` (here from a user's prefix),
/// the only way MQTT 3.1.1 has to refuse one: the agent names the topic and the size instead of
/// reporting an unreachable broker. A subscription it refuses (in its SUBACK) is named too.
#[test]
fn a_topic_a_broker_refuses_is_named_in_the_log() {
    let Some(nats) = Nats::start() else { return };
    let mut a = with_broker("dotted", &nats.url());
    a.env = vec![("EDGESEAL_MQTT__PREFIX".into(), "edge.v1".into())];
    let mut up = a.spawn_stdin(&["--batch-count", "1"]);
    feed(&mut up, "t", 0..1);
    let topic = format!(" bytes to \"edge.v1/{}/t/batch\", again", a.device());
    wait_until("the refused topic to be named", Duration::from_secs(20), || a.logs().contains(&topic));
    sigterm(&up);
    let _ = up.wait();
    assert!(a.logs().contains("that is how a broker refuses a topic"), "{}", a.logs());
    // It refuses the subscriptions with a `.` too, in its SUBACK: each is named.
    let refused = format!("refused the subscription to \"edge.v1/{}/+/request/+\"", a.device());
    assert!(a.logs().contains(&refused), "{}", a.logs());
}

/// `edgeseal ingest`: two processes of one group share the batches two devices publish (an MQTT
/// shared subscription), check each one's structure and signature, and store them, so that
/// `verify --all-devices` of the ingest store finds both devices whole. A forged message is refused.
/// Then one is killed with `kill -9` while a device publishes 600 batches and started again under
/// its name: the ingest store still gets every batch (a message is acknowledged once stored).
#[test]
fn ingest_processes_share_and_store_what_devices_publish() {
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let dir = tempdir("ingest");
    let store = format!("sqlite://{}", dir.join("ingest.db").display());
    let ingest = |i: usize| spawn_ingest(&dir, &broker.url(), &store, i, &["--name", &format!("worker{}", i % 2)], &[]);
    let mut workers = [ingest(0), ingest(1)];
    let said = |i: usize| std::fs::read_to_string(dir.join(format!("ingest{i}.out"))).unwrap_or_default();
    let (pi, cam) = (with_broker("ingest-pi", &broker.url()), with_broker("ingest-cam", &broker.url()));
    pi.run_lines("t", 0..20, &["--batch-count", "2"]);
    cam.run_lines("u", 0..8, &["--batch-count", "2"]);
    // Bytes that are no batch of the device the topic names.
    let junk = format!("edgeseal/v1/{}/t/batch", pi.device());
    let port = broker.port.to_string();
    let pubbed =
        Command::new("mosquitto_pub").args(["-p", &port, "-q", "1", "-t", &junk, "-m", "ES not a batch"]).status();
    assert!(pubbed.unwrap().success());
    let mut auditor = with_broker("ingest-auditor", &broker.url());
    auditor.store = Some(store.clone());
    let audit = || auditor.run(&["verify", "--all-devices"]);
    wait_until("both devices whole in the ingest store", Duration::from_secs(20), || {
        let out = audit();
        out.status.success() && text(&out.stdout).contains("3 devices: 3 ok")
    });
    let shown = text(&audit().stdout);
    assert!(shown.contains(&format!("{}: ok (1 streams, 10 batches verified)", pi.device())), "{shown}");
    assert!(shown.contains(&format!("{}: ok (1 streams, 4 batches verified)", cam.device())), "{shown}");

    // kill -9 of one worker while it holds batches it could not store yet (the database is locked
    // meanwhile), then its restart under the same name: nothing is lost.
    let mut lock =
        Command::new("sqlite3").arg(dir.join("ingest.db")).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    std::io::Write::write_all(lock.stdin.as_mut().unwrap(), b"BEGIN EXCLUSIVE;\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    pi.run_lines("v", 0..1200, &["--batch-count", "2"]);
    std::thread::sleep(Duration::from_millis(500)); // both workers hold some, unacknowledged
    let _ = workers[0].kill(); // SIGKILL
    let _ = workers[0].wait();
    std::io::Write::write_all(lock.stdin.as_mut().unwrap(), b"COMMIT;\n").unwrap();
    drop(lock.stdin.take());
    let _ = lock.wait();
    workers[0] = ingest(2);
    wait_until("the 600 batches of v in the ingest store", Duration::from_secs(30), || {
        let out = audit();
        out.status.success()
            && text(&out.stdout).contains(&format!("{}: ok (2 streams, 610 batches verified)", pi.device()))
    });
    for w in &workers {
        sigterm(w);
    }
    // Both end cleanly (the restarted one writes ingest2.out), and the forged message was refused.
    for (mut w, out) in workers.into_iter().zip([2, 1]) {
        assert!(w.wait().unwrap().success(), "{}", said(out));
        assert!(said(out).lines().last().unwrap_or_default().starts_with("stopped: "), "{}", said(out));
    }
    let logs: String =
        (0..3).map(|i| std::fs::read_to_string(dir.join(format!("ingest{i}.err"))).unwrap_or_default()).collect();
    assert!(logs.contains("refused a message on") && logs.contains("not a sealed batch"), "{logs}");
}

/// Starts `edgeseal ingest` from `broker` into `store` for up to 90 s, its output in
/// `dir/ingest{i}.out` and `.err`, and waits until it has subscribed.
fn spawn_ingest(dir: &Path, broker: &str, store: &str, i: usize, extra: &[&str], env: &[(&str, &str)]) -> Child {
    let (out, err) = (dir.join(format!("ingest{i}.out")), dir.join(format!("ingest{i}.err")));
    let child = Command::new(super::BIN)
        .args(["--data-dir", dir.join("none").to_str().unwrap(), "--broker", broker, "--store", store])
        .args(["ingest", "--for", "90s"])
        .args(extra)
        .env("EDGESEAL_BROKER__LISTEN", "")
        .env("EDGESEAL_WEB__LISTEN", "")
        .envs(env.iter().copied())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    // It logs this once subscribed.
    wait_until("ingest to subscribe", Duration::from_secs(15), || {
        std::fs::read_to_string(&err).unwrap_or_default().contains("INFO ingesting ")
    });
    child
}

/// A device with `store = "broker"` holds no database credentials: it publishes its batches and
/// checkpoints, `edgeseal ingest` stores them in PostgreSQL and says so, and the device keeps
/// each batch in its outbox until then. Batches the broker dropped (no ingest was there) are
/// published again after `outbox.resend_after`. An acknowledgement is untrusted: a forged one
/// makes the device drop two batches, and `verify` of the store names exactly that gap.
#[test]
fn a_device_without_database_credentials_hands_its_batches_to_ingest() {
    let Some(pg) = super::postgres_url() else { return };
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let dir = tempdir("handover");
    let mut pi = with_broker("handover-pi", &broker.url());
    pi.store = Some("broker".into());
    pi.env.push(("EDGESEAL_OUTBOX__RESEND_AFTER".into(), "2s".into()));
    let dev = pi.device();
    let mut auditor = with_broker("handover-auditor", &broker.url());
    auditor.store = Some(pg.clone());
    let verify = || auditor.run(&["verify", "--device", &dev, "--stream", "t"]);
    let up_said = || std::fs::read_to_string(pi.dir.parent().unwrap().join("up.out")).unwrap_or_default();

    let mut ingest = spawn_ingest(&dir, &broker.url(), &pg, 0, &[], &[]);
    pi.run_lines("t", 0..20, &["--batch-count", "2"]);
    let said = up_said();
    assert!(said.contains("store:    through the broker"), "{said}");
    assert!(said.contains("10 batches sealed, 10 stored") && !said.contains("waiting"), "{}", pi.logs());
    let out = verify();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("10 batches"), "{}", text(&out.stdout));
    // The device's own view: nothing waits, and it has no store to read.
    assert_eq!(pi.counts("t"), (0, 0, 0));
    let fetched = pi.run(&["fetch", "--stream", "t"]);
    assert!(!fetched.status.success() && text(&fetched.stderr).contains("keeps no store of its own"));

    // No ingest: batches 10 and 11 go to the broker and nowhere. A forged acknowledgement
    // says they were stored; the device believes it, and drops them.
    sigterm(&ingest);
    assert!(ingest.wait().unwrap().success());
    let mut up = pi.spawn_stdin(&["--batch-count", "2"]);
    wait_until("the device to be up", Duration::from_secs(15), || up_said().contains("Stop with"));
    feed(&mut up, "t", 20..24);
    wait_until("2 batches in the outbox", Duration::from_secs(15), || pi.counts("t").2 == 2);
    let lie = r#"{"batches":[{"stream":"t","from":10,"to":11}]}"#;
    let topic = format!("edgeseal/v1/{dev}/stored");
    let port = broker.port.to_string();
    let sent = Command::new("mosquitto_pub").args(["-p", &port, "-q", "1", "-t", &topic, "-m", lie]).status();
    assert!(sent.unwrap().success());
    wait_until("the device to drop them", Duration::from_secs(15), || pi.counts("t").2 == 0);
    // Still no ingest: batches 12 and 13 are lost by the broker, and kept by the device.
    feed(&mut up, "t", 24..28);
    wait_until("2 more in the outbox", Duration::from_secs(15), || pi.counts("t").2 == 2);
    std::thread::sleep(Duration::from_secs(3)); // published, unacknowledged, past resend_after
    ingest = spawn_ingest(&dir, &broker.url(), &pg, 1, &[], &[]);
    wait_until("the device to publish them again", Duration::from_secs(20), || pi.counts("t").2 == 0);
    sigterm(&up);
    assert!(up.wait().unwrap().success(), "{}", pi.logs());
    assert!(pi.logs().contains("publishing again 2 batches no ingest acknowledged within 2s"), "{}", pi.logs());
    sigterm(&ingest);
    assert!(ingest.wait().unwrap().success());

    // The store has 0..=9 and 12..=13, and a checkpoint at 13: verify names the hole the lie made.
    let out = verify();
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("batches 10..=11: missing (gap)"), "{shown}");
    let ingested = std::fs::read_to_string(dir.join("ingest1.out")).unwrap();
    assert!(!ingested.lines().last().unwrap().contains(" 0 checkpoints"), "{ingested}");
}

/// Retention on a device that keeps no store: it signs the record, ingest applies it to the
/// store it writes, and the stream there starts where the record says, with nothing missing.
#[test]
fn ingest_applies_the_retention_records_of_devices_without_a_store() {
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let dir = tempdir("ingest-keep");
    let store = format!("sqlite://{}", dir.join("ingest.db").display());
    let mut pi = with_broker("keep-pi", &broker.url());
    pi.store = Some("broker".into());
    pi.env.push(("EDGESEAL_RETENTION__KEEP".into(), "2s".into()));
    pi.env.push(("EDGESEAL_RETENTION__EVERY".into(), "300ms".into()));
    let dev = pi.device();
    let mut auditor = with_broker("keep-auditor", &broker.url());
    auditor.store = Some(store.clone());
    let mut ingest = spawn_ingest(&dir, &broker.url(), &store, 0, &["--name", "keep"], &[]);
    let mut up = pi.spawn_stdin(&["--batch-count", "5"]);
    let start = || {
        let out = auditor.run(&["verify", "--json", "--device", &dev, "--stream", "k"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (v["streams"][0]["start"].as_u64().unwrap_or(0), v["ok"].as_bool().unwrap_or(false))
    };
    for i in 0..16 {
        feed(&mut up, "k", i * 5..(i + 1) * 5);
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until("ingest to apply a retention record", Duration::from_secs(30), || start().0 > 0);
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", pi.logs());
    sigterm(&ingest);
    assert!(ingest.wait().unwrap().success());
    let (from, ok) = start();
    assert!(ok && from > 0 && from < 15, "{}", text(&auditor.run(&["verify", "--device", &dev]).stdout));
    let said = std::fs::read_to_string(dir.join("ingest0.out")).unwrap();
    assert!(!said.lines().last().unwrap().contains(" 0 retention records"), "{said}");
    // Every reading from the start on is there, verified, and the device holds nothing back.
    assert_eq!(pi.counts("k"), (0, 0, 0));
    // The device reads the store ingest wrote, with its own keys.
    let reader = super::Agent { dir: pi.dir.clone(), store: Some(store.clone()), broker: None, env: Vec::new() };
    let out = reader.run(&["fetch", "--stream", "k", "--format", "json"]);
    let readings: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(readings.len() as u64, 80 - from * 5, "{}", text(&out.stderr));
}

/// Grants are kept in the store too: a peer that reads a store its owner writes (or ingest) finds
/// its grant there, even when the broker never carried it (here the broker is gone before the
/// grant is given).
#[test]
fn a_grant_the_broker_never_carried_reaches_the_peer_through_the_store() {
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let mut pi = with_broker("store-grant-pi", &broker.url());
    let mut laptop = with_broker("store-grant-laptop", &broker.url());
    let (h, j) = pair(&pi, &laptop);
    assert!(h.status.success() && j.status.success(), "{}{}", text(&h.stderr), text(&j.stderr));
    drop(broker);
    let shared = format!("sqlite://{}", pi.dir.parent().unwrap().join("shared.db").display());
    pi.store = Some(shared.clone());
    laptop.store = Some(shared);
    pi.ok(&["share", "temperature", "--with", "store-grant-laptop", "--from", BASE_RFC]);
    pi.run_lines("temperature", 0..10, &["--batch-count", "5"]);
    assert!(pi.logs().contains("2 stored"), "{}", pi.logs());
    assert_eq!(laptop.fetch_from("temperature", Some(&pi.device())), super::expected(0..10));
}

/// `store = "broker"` with no broker, or with an embedded broker whose port is taken, is refused
/// at start with the reason, instead of sealing batches that nothing would ever take.
#[test]
fn a_device_that_stores_through_a_broker_needs_one() {
    let mut a = Agent::new("no-broker");
    a.store = Some("broker".into());
    let out = a.run(&["up", "--sensor", "none", "--for", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("but there is none: set mqtt.broker"), "{}", text(&out.stderr));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    a.env.push(("EDGESEAL_BROKER__LISTEN".into(), format!("127.0.0.1:{port}")));
    let out = a.run(&["up", "--sensor", "none", "--for", "1s"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("the embedded one did not start"), "{}", text(&out.stderr));
}

/// `bench fleet` runs simulated devices through mosquitto into PostgreSQL by `edgeseal ingest`
/// workers, one killed with SIGKILL halfway and restarted, and accounts for every batch: all
/// acknowledged, none lost, all verified. (Its figures are printed, not asserted.)
#[test]
fn bench_fleet_accounts_for_every_batch_its_devices_send() {
    let Some(pg) = super::postgres_url() else { return };
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let out = Command::new(super::BIN)
        .args(["--broker", &broker.url(), "--store", &pg, "bench", "fleet", "--devices", "8", "--workers", "2"])
        .args(["--for", "3s", "--every", "100ms", "--kill", "--json"])
        .env("EDGESEAL_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["sent"].as_u64().unwrap() > 100, "{v}");
    assert_eq!(v["acknowledged"], v["sent"], "{v}");
    assert_eq!((v["lost"].as_u64(), v["verify_ok"].as_bool()), (Some(0), Some(true)), "{v}");
    assert!(v["verified"].as_u64() >= v["sent"].as_u64(), "{v}");
}

#[test]
fn sealed_batches_wait_in_the_outbox_while_the_broker_is_down() {
    if mosquitto_tools().is_none() {
        return;
    }
    let port = free_port();
    let pi = with_broker("offline", &format!("mqtt://127.0.0.1:{port}"));
    let mut up = pi.spawn_stdin(&["--batch-count", "2"]);
    feed(&mut up, "temperature", 0..10);
    wait_until("5 sealed batches", Duration::from_secs(20), || pi.counts("temperature").0 == 10);
    // Nothing could be published: now the broker comes.
    let broker = Broker::start(port);
    let dev = pi.device();
    wait_until("the queue to drain to the broker", Duration::from_secs(40), || {
        broker.log().matches(&format!("/{dev}/temperature/batch")).count() >= 5
    });
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", pi.logs());
    let logs = pi.logs();
    assert!(logs.contains("5 published"), "{logs}");
    let published = broker.log().matches(&format!("/{dev}/temperature/batch")).count();
    assert_eq!(published, 5, "{}", broker.log());
}

/// The broker, which holds no key, publishes unsigned batches on a peer's topic with the next
/// and with a huge sequence number (a real batch with its signature cut off and its number
/// changed): the receiving agent records, stores and shows nothing of them, and the device's
/// real batches after them still arrive and are stored, across a restart of the receiver.
#[test]
fn injected_unsigned_batches_cannot_wedge_a_peer_stream() {
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let url = broker.url();
    let (pi, laptop) = (with_broker("inj-pi", &url), with_broker("inj-laptop", &url));
    let (h, j) = pair(&pi, &laptop);
    assert!(h.status.success() && j.status.success(), "{}{}", text(&h.stderr), text(&j.stderr));
    pi.ok(&["share", "temperature", "--with", "inj-laptop", "--from", BASE_RFC]);
    let pi_dev = pi.device();
    let topic = format!("edgeseal/v1/{pi_dev}/temperature/batch");
    let capture = pi.dir.parent().unwrap().join("batches.hex");
    let mut sniffer = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", &topic, "-F", "%x"])
        .stdout(std::fs::File::create(&capture).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let receiver = || {
        laptop
            .cmd(&["up", "--sensor", "none", "--for", "60s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(laptop.dir.parent().unwrap().join("up.err")).unwrap())
            .spawn()
            .unwrap()
    };
    let stored = || {
        let out = laptop.run(&["fetch", "--stream", "temperature", "--device", &pi_dev, "--format", "json"]);
        serde_json::from_slice::<Value>(&out.stdout).map(|v| v.as_array().map_or(0, Vec::len)).unwrap_or(0)
    };
    let mut laptop_up = receiver();
    // The grant reaches the laptop when the pi's agent first connects: then the laptop is subscribed.
    let mut pi_up = pi.spawn_stdin(&["--batch-count", "1"]);
    wait_until("the grant to reach the laptop", Duration::from_secs(20), || {
        laptop.logs_of("up.err").contains("granted temperature")
    });
    feed(&mut pi_up, "temperature", 0..3);
    drop(pi_up.stdin.take());
    assert!(pi_up.wait().unwrap().success(), "{}", pi.logs());
    wait_until("the laptop to store 3 readings", Duration::from_secs(20), || stored() == 3);

    // Forge from a captured batch: no signature, flag cleared, another number.
    let first = std::fs::read_to_string(&capture).unwrap().lines().next().unwrap().to_string();
    let real: Vec<u8> =
        (0..first.len()).step_by(2).map(|i| u8::from_str_radix(&first[i..i + 2], 16).unwrap()).collect();
    let seq_at = 22 + "temperature".len();
    for (n, seq) in [(0, 3u64), (1, u64::MAX - 1)] {
        let mut junk = real[..real.len() - 96].to_vec();
        junk[4] = 0;
        junk[seq_at..seq_at + 8].copy_from_slice(&seq.to_be_bytes());
        let file = pi.dir.parent().unwrap().join(format!("junk{n}.bin"));
        std::fs::write(&file, &junk).unwrap();
        let sent = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-q", "1", "-t", &topic, "-f"])
            .arg(&file)
            .status()
            .unwrap();
        assert!(sent.success());
    }
    std::thread::sleep(Duration::from_millis(500));
    // The receiver restarts in between: nothing of the junk was recorded to trip it later.
    let _ = Command::new("kill").args(["-TERM", &laptop_up.id().to_string()]).status();
    let _ = laptop_up.wait();
    let mut laptop_up = receiver();
    pi.run_lines("temperature", 3..6, &["--batch-count", "1"]);
    wait_until("the laptop to store all 6 readings", Duration::from_secs(20), || stored() == 6);
    let verify = laptop.run(&["verify", "--device", &pi_dev, "--stream", "temperature"]);
    assert!(verify.status.success(), "{}{}", text(&verify.stdout), text(&verify.stderr));
    let _ = Command::new("kill").args(["-TERM", &laptop_up.id().to_string()]).status();
    let _ = laptop_up.wait();
    let _ = sniffer.kill();
    let _ = sniffer.wait();
}

/// `share --from T` hands over only the key-tree nodes of T onward: the peer
/// receives and stores every batch the device publishes (the raw captures),
/// yet opens, shows and serves nothing that begins before T, live or stored;
/// the device starts a new batch at T, so nothing after T is lost to a batch
/// that straddles it. A second peer granted `--from T --to U` sees exactly
/// the readings in between, and neither sees a stream it was not granted.
#[test]
fn a_grant_from_t_opens_nothing_before_t_even_from_raw_captures() {
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let url = broker.url();
    let (pi, laptop, phone) =
        (with_broker("from-pi", &url), with_broker("from-laptop", &url), with_broker("from-phone", &url));
    for other in [&laptop, &phone] {
        let (h, j) = pair(&pi, other);
        assert!(h.status.success() && j.status.success(), "{}{}", text(&h.stderr), text(&j.stderr));
    }
    // A typo is refused, naming the streams there are; a stream before its first reading needs --new.
    let typo = pi.run(&["share", "temprature", "--with", "from-laptop"]);
    assert_eq!(typo.status.code(), Some(1));
    assert!(
        text(&typo.stderr).contains("no stream \"temprature\" of this agent (its streams: "),
        "{}",
        text(&typo.stderr)
    );
    pi.ok(&["share", "soil", "--with", "from-laptop", "--new"]);
    // T is reading 10's time: readings 0..10 are before it. The laptop stores, the phone watches.
    let out = pi.ok(&["share", "temperature", "--with", "from-laptop", "--from", "2026-01-01T00:00:10Z"]);
    assert!(out.contains("from-laptop may read temperature from 2026-01-01T00:00:10"), "{out}");
    let out = pi.ok(&[
        "share",
        "temperature",
        "--with",
        "from-phone",
        "--from",
        "2026-01-01T00:00:10Z",
        "--to",
        "2026-01-01T00:00:14.999Z",
    ]);
    assert!(out.contains("to 2026-01-01T00:00:14.999"), "{out}");
    let pi_dev = pi.device();
    let capture = pi.dir.parent().unwrap().join("everything.hex");
    let mut sniffer = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", &format!("edgeseal/v1/{pi_dev}/#"), "-v"])
        .args(["-F", "%t %x"])
        .stdout(std::fs::File::create(&capture).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut laptop_up = laptop
        .cmd(&["up", "--sensor", "none", "--for", "60s"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(laptop.dir.parent().unwrap().join("up.err")).unwrap())
        .spawn()
        .unwrap();
    let mut pi_up = pi.spawn_stdin(&["--batch-count", "4"]);
    wait_until("the grant to reach the laptop", Duration::from_secs(20), || {
        laptop.logs_of("up.err").contains("granted temperature")
    });
    let watch = Watcher::start(&phone, "temperature");
    feed(&mut pi_up, "temperature", 0..20);
    feed(&mut pi_up, "humidity", 0..3);
    drop(pi_up.stdin.take());
    assert!(pi_up.wait().unwrap().success(), "{}", pi.logs());
    let fetched = || {
        let out = laptop.run(&["fetch", "--stream", "temperature", "--device", &pi_dev, "--format", "json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let ts: Vec<i64> = v.as_array().into_iter().flatten().map(|r| r["ts_ms"].as_i64().unwrap()).collect();
        (ts, text(&out.stderr))
    };
    wait_until("the laptop to store readings 10..20", Duration::from_secs(20), || fetched().0.len() >= 10);
    let (ts, said) = fetched();
    assert_eq!(ts, (10..20).map(|i| BASE_TS + i * 1000).collect::<Vec<_>>(), "{said}");
    assert!(said.contains("begin before (or after) the time granted"), "{said}");
    // The laptop stored the batches from before T too (what the broker carried), and they verify.
    let rows = Command::new("sqlite3")
        .arg(laptop.dir.join("store.db"))
        .arg("SELECT count(*), min(first_ts) FROM batches WHERE stream = 'temperature'")
        .output()
        .unwrap();
    let rows = text(&rows.stdout);
    // Cut at T and after U: [0..4) [4..8) [8, 9] [10..14) [14] [15..19) [19].
    assert_eq!(rows.trim(), format!("7|{BASE_TS}"), "a batch straddling T or U, or one missing");
    // A stream not granted: kept sealed if it arrives, nothing of it opens, and fetch says so
    // (and fails under --strict). --device takes the peer's name or a prefix of its id too.
    let humidity = laptop.run(&["fetch", "--stream", "humidity", "--device", "from-pi", "--format", "json"]);
    let shown: Value = serde_json::from_slice(&humidity.stdout).unwrap_or(Value::Null);
    assert!(shown.as_array().is_none_or(Vec::is_empty), "{shown}");
    assert!(text(&humidity.stderr).contains("this agent holds no grant of humidity"), "{}", text(&humidity.stderr));
    let strict = laptop.run(&["fetch", "--stream", "humidity", "--device", &pi_dev[..8], "--strict"]);
    assert_eq!(strict.status.code(), Some(1), "{}", text(&strict.stderr));
    assert!(text(&strict.stderr).contains("holds no grant of humidity"), "{}", text(&strict.stderr));
    let verify = laptop.run(&["verify", "--device", &pi_dev, "--stream", "temperature"]);
    assert!(verify.status.success(), "{}{}", text(&verify.stdout), text(&verify.stderr));
    // Live, the phone saw readings 10..=14 and nothing else.
    watch.wait_for(5);
    std::thread::sleep(Duration::from_millis(500));
    let mut seen: Vec<i64> = watch.seen().iter().map(|r| r["ts_ms"].as_i64().unwrap()).collect();
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, (10..15).map(|i| BASE_TS + i * 1000).collect::<Vec<_>>(), "{:?}", watch.seen());
    let _ = sniffer.kill();
    let _ = sniffer.wait();
    // What the laptop stored and failed to open before T is exactly what the broker carried.
    let captured = std::fs::read_to_string(&capture).unwrap();
    let mut carried: Vec<String> = captured
        .lines()
        .filter_map(|l| l.split_once("/temperature/batch ").map(|(_, hex)| hex.to_ascii_uppercase()))
        .collect();
    carried.sort();
    carried.dedup();
    let stored = Command::new("sqlite3")
        .arg(laptop.dir.join("store.db"))
        .arg("SELECT hex(sealed) FROM batches WHERE stream = 'temperature' ORDER BY hex(sealed)")
        .output()
        .unwrap();
    let stored: Vec<String> = text(&stored.stdout).lines().map(str::to_string).collect();
    assert_eq!(stored, carried, "the laptop's copy differs from the raw captures");
    let _ = Command::new("kill").args(["-TERM", &laptop_up.id().to_string()]).status();
    let _ = laptop_up.wait();
}

/// A peer that was offline while mosquitto dropped most of what it queued for it
/// (`max_queued_messages 10`), and then a broker restarted without persistence in
/// the middle of live sharing: the peer asks the device for what it missed and ends
/// with every batch, in order, none twice, verified.
#[test]
fn gaps_repair_themselves_after_a_broker_drops_or_forgets() {
    if mosquitto_tools().is_none() {
        return;
    }
    let port = free_port();
    let mut broker = Broker::start_with(port, "max_queued_messages 10\n");
    let url = broker.url();
    let (pi, laptop) = (with_broker("gap-pi", &url), with_broker("gap-laptop", &url));
    let (h, j) = pair(&pi, &laptop);
    assert!(h.status.success() && j.status.success(), "{}{}", text(&h.stderr), text(&j.stderr));
    pi.ok(&["share", "temperature", "--with", "gap-laptop", "--from", BASE_RFC]);
    let pi_dev = pi.device();
    let receiver = || {
        laptop
            .cmd(&["up", "--sensor", "none", "--for", "120s"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(laptop.dir.parent().unwrap().join("up.err")).unwrap())
            .spawn()
            .unwrap()
    };
    let stored = || laptop.run(&["fetch", "--stream", "temperature", "--device", &pi_dev, "--format", "json"]);
    let count =
        || serde_json::from_slice::<Value>(&stored().stdout).map(|v| v.as_array().map_or(0, Vec::len)).unwrap_or(0);
    let mut up = pi.spawn_stdin(&["--batch-count", "1"]);
    let mut laptop_up = receiver();
    // Subscribed once it has the grant (published when the pi's agent connects); a batch sent
    // before the laptop's first session exists is missed at first sight, which is no hole.
    wait_until("the grant to reach the laptop", Duration::from_secs(20), || {
        laptop.logs_of("up.err").contains("granted temperature")
    });
    feed(&mut up, "temperature", 0..1);
    wait_until("the laptop to store the first reading", Duration::from_secs(20), || count() == 1);

    // The laptop goes offline; its persistent session queues only 10 of the next 60 batches.
    sigterm(&laptop_up);
    let _ = laptop_up.wait();
    feed(&mut up, "temperature", 1..61);
    wait_until("the pi to store 61 readings", Duration::from_secs(20), || pi.counts("temperature").0 == 61);
    std::thread::sleep(Duration::from_millis(500));
    let mut laptop_up = receiver();
    feed(&mut up, "temperature", 61..66);
    let t0 = std::time::Instant::now();
    while count() != 66 {
        assert!(
            t0.elapsed() < Duration::from_secs(40),
            "the laptop has {} of 66 readings\nlaptop:\n{}\npi:\n{}",
            count(),
            laptop.logs_of("up.err"),
            pi.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(laptop.logs_of("up.err").contains("arrived on request"), "{}", laptop.logs_of("up.err"));

    // The broker restarts without persistence mid-stream: sessions, queues and retained grants gone.
    drop(broker);
    feed(&mut up, "temperature", 66..71);
    broker = Broker::start_with(port, "");
    feed(&mut up, "temperature", 71..76);
    wait_until("the laptop to get every reading after the restart", Duration::from_secs(60), || count() == 76);

    let got = laptop.fetch_from("temperature", Some(&pi_dev));
    assert_eq!(got, super::expected(0..76), "every batch, in order, none twice");
    let verify = laptop.run(&["verify", "--device", &pi_dev, "--stream", "temperature"]);
    assert!(verify.status.success(), "{}{}", text(&verify.stdout), text(&verify.stderr));
    drop(up.stdin.take());
    let _ = up.wait();
    sigterm(&laptop_up);
    let _ = laptop_up.wait();
    drop(broker);
}

/// A batch larger than an MQTT packet (a 17 MiB image) is stored, named in the
/// log and passed over; it does not hold up the batches after it.
#[test]
fn a_blob_too_large_for_mqtt_is_refused_at_acceptance_when_sharing() {
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let pi = with_broker("huge", &broker.url());
    let mut up = pi.spawn_stdin(&["--batch-count", "1"]);
    let image = |size: usize, ts: i64| {
        let data = super::base64_encode(&vec![0x5a; size]);
        format!("{{\"stream\":\"cam\",\"blob\":\"{data}\",\"media_type\":\"image/jpeg\",\"ts\":{ts}}}\n")
    };
    // 17 MiB could never reach a peer (an MQTT packet carries 16 here): refused, named, counted;
    // 1 MiB is stored and published like any batch, and so are the readings after it.
    let lines = [image(17 << 20, BASE_TS), image(1 << 20, BASE_TS + 1), lines_of("t", 0..3)].concat();
    std::io::Write::write_all(up.stdin.as_mut().unwrap(), lines.as_bytes()).unwrap();
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", pi.logs());
    let logs = pi.logs();
    assert!(logs.contains("its blob is 17825792 bytes") && logs.contains("no peer could ever receive it"), "{logs}");
    assert!(logs.contains("1 refused") && logs.contains("4 published"), "{logs}");
    let dev = pi.device();
    assert_eq!(broker.log().matches(&format!("/{dev}/cam/batch")).count(), 1, "{}", broker.log());
    assert_eq!(broker.log().matches(&format!("/{dev}/t/batch")).count(), 3, "{}", broker.log());
    assert_eq!(pi.counts("cam").0, 1, "the 1 MiB image is stored, the 17 MiB one is not");
}

fn lines_of(stream: &str, range: std::ops::Range<i64>) -> String {
    lines(stream, range).concat()
}

/// `bench sharing` connects as configured (here `mqtt.version = 5`) and says so.
#[test]
fn bench_sharing_uses_the_configured_mqtt_version() {
    if mosquitto_tools().is_none() {
        return;
    }
    let broker = Broker::start(free_port());
    let mut a = with_broker("bench-v5", &broker.url());
    a.env.push(("EDGESEAL_MQTT__VERSION".into(), "5".into()));
    let out = a.ok(&["bench", "sharing", "--messages", "200", "--json"]);
    let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!((v["mqtt_version"].as_str(), v["lost"].as_u64()), (Some("5"), Some(0)), "{v}");
    assert!(broker.log().contains("as edgeseal-bench-pub") && broker.log().contains("p5"), "{}", broker.log());
}

/// Rewrites the n-th relayed message.
type Tamper = fn(usize, Vec<u8>) -> Vec<u8>;

/// Relays pairing messages between two brokers: host side on `a`, joiner side
/// on `b`, rewriting each with `tamper` (message number, bytes).
fn relay(
    a: &Broker,
    b: &Broker,
    tamper: fn(usize, Vec<u8>) -> Vec<u8>,
) -> (tokio::runtime::Runtime, CancellationToken) {
    use edgeseal_mqtt::link::{Link, LinkOptions};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = CancellationToken::new();
    let (ua, ub) = (a.url().parse().unwrap(), b.url().parse().unwrap());
    let s = stop.clone();
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = ready.clone();
    rt.spawn(async move {
        let (la, mut ra) = Link::start(LinkOptions::new(ua, "relay-a"), s.clone()).unwrap();
        let (lb, mut rb) = Link::start(LinkOptions::new(ub, "relay-b"), s.clone()).unwrap();
        la.subscribe("edgeseal/v1/pair/+/host").await.unwrap();
        lb.subscribe("edgeseal/v1/pair/+/joiner").await.unwrap();
        la.publish("relay/ready", vec![1], false).await.unwrap();
        lb.publish("relay/ready", vec![1], false).await.unwrap();
        r.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut n = 0;
        loop {
            let (m, to) = tokio::select! {
                _ = s.cancelled() => break,
                Some(m) = ra.recv() => (m, &lb),
                Some(m) = rb.recv() => (m, &la),
            };
            if m.payload.is_empty() {
                continue;
            }
            n += 1;
            let _ = to.publish(&m.topic, tamper(n, m.payload), false).await;
        }
    });
    wait_until("the relay", Duration::from_secs(10), || ready.load(std::sync::atomic::Ordering::SeqCst));
    (rt, stop)
}

#[test]
fn a_broker_that_alters_pairing_messages_makes_pairing_fail() {
    if mosquitto_tools().is_none() {
        return;
    }
    let (a, b) = (Broker::start(free_port()), Broker::start(free_port()));
    // An honest relay: pairing works across the two brokers.
    {
        let (_rt, stop) = relay(&a, &b, |_, m| m);
        let (pi, laptop) = (with_broker("mitm-pi", &a.url()), with_broker("mitm-laptop", &b.url()));
        let (h, j) = pair(&pi, &laptop);
        assert!(h.status.success() && j.status.success(), "{}{}", text(&h.stderr), text(&j.stderr));
        stop.cancel();
    }
    // Each message altered in turn (one flipped bit), or replaced by garbage of the same size:
    // neither side ever pairs.
    let tampers: [Tamper; 4] = [
        |n, mut m| {
            if n == 1 {
                let last = m.len() - 1;
                m[last] ^= 1;
            }
            m
        },
        |n, mut m| {
            if n == 2 {
                m[40] ^= 1;
            }
            m
        },
        |n, mut m| {
            if n == 3 {
                m[10] ^= 0x80;
            }
            m
        },
        |n, m| if n == 2 { vec![0x45; m.len()] } else { m },
    ];
    for (i, tamper) in tampers.into_iter().enumerate() {
        let (_rt, stop) = relay(&a, &b, tamper);
        let (pi, laptop) = (with_broker(&format!("t{i}-pi"), &a.url()), with_broker(&format!("t{i}-laptop"), &b.url()));
        let (h, j) = pair(&pi, &laptop);
        let said = format!("{}{}", text(&h.stderr), text(&j.stderr));
        assert!(!j.status.success(), "case {i}: the joiner paired through a tampering broker");
        assert!(said.contains("pairing failed"), "case {i}: {said}");
        assert!(peers(&pi).is_empty() && peers(&laptop).is_empty(), "case {i}: a peer was stored");
        stop.cancel();
    }
}

/// Which broker a security-level test runs against.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Mosquitto,
    Embedded,
}

/// A broker at a security level, set up by `edgeseal broker mosquitto-config`
/// (mosquitto) or by `edgeseal broker` itself (embedded), on a free port.
struct Secured {
    child: Child,
    port: u16,
    dir: std::path::PathBuf,
    level: u8,
    mutual: bool,
}

impl Secured {
    fn start(kind: Kind, level: u8, mutual: bool) -> Secured {
        let dir = tempdir(&format!("{kind:?}-l{level}{}", if mutual { "-mtls" } else { "" })).join("broker");
        let port = free_port();
        let mut flags = vec!["--level".to_string(), level.to_string()];
        if mutual {
            flags.push("--mutual-tls".into());
        }
        let log = std::fs::File::create(dir.with_extension("log")).unwrap();
        let child = match kind {
            Kind::Mosquitto => {
                let out = Command::new(super::BIN)
                    .args(["broker", "mosquitto-config", "--bind", "127.0.0.1", "--port", &port.to_string(), "--out"])
                    .arg(&dir)
                    .args(&flags)
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{}", text(&out.stderr));
                Command::new("mosquitto")
                    .arg("-c")
                    .arg(dir.join("mosquitto.conf"))
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
            }
            Kind::Embedded => Command::new(super::BIN)
                .arg("--data-dir")
                .arg(dir.with_extension("data"))
                .args(["broker", "--listen", &format!("127.0.0.1:{port}"), "--for", "120s", "--dir"])
                .arg(&dir)
                .args(&flags)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn(),
        }
        .unwrap();
        wait_until("the broker to listen", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Secured { child, port, dir, level, mutual }
    }

    fn file(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    fn password(&self) -> String {
        std::fs::read_to_string(self.dir.join("edgeseal.password")).unwrap().trim().to_string()
    }

    /// mosquitto_pub/sub options of a correctly configured client, and of one
    /// that must be refused (None at level 1: everyone is let in).
    fn client_options(&self) -> (Vec<String>, Option<Vec<String>>) {
        let tls = vec!["--cafile".to_string(), self.file("ca.pem")];
        let cert = vec!["--cert".to_string(), self.file("edgeseal.pem"), "--key".into(), self.file("edgeseal-key.pem")];
        let user = |p: &str| vec!["-u".to_string(), "edgeseal".into(), "-P".into(), p.into()];
        match (self.level, self.mutual) {
            (1, _) => (vec![], None),
            (2, false) => (tls, Some(vec![])),
            (2, true) => ([tls.clone(), cert].concat(), Some(tls)),
            (_, false) => ([tls.clone(), user(&self.password())].concat(), Some([tls, user("not-it")].concat())),
            (_, true) => (
                [tls.clone(), cert.clone(), user(&self.password())].concat(),
                Some([tls, user(&self.password())].concat()),
            ),
        }
    }

    /// What an agent sets to use this broker.
    fn agent_env(&self) -> Vec<(String, String)> {
        let scheme = if self.level == 1 { "mqtt" } else { "mqtts" };
        let mut env = vec![("EDGESEAL_MQTT__BROKER".to_string(), format!("{scheme}://localhost:{}", self.port))];
        if self.level > 1 {
            env.push(("EDGESEAL_MQTT__CA".into(), self.file("ca.pem")));
        }
        if self.level == 3 {
            env.push(("EDGESEAL_MQTT__USERNAME".into(), "edgeseal".into()));
            env.push(("EDGESEAL_MQTT__PASSWORD".into(), self.password()));
        }
        if self.mutual {
            env.push(("EDGESEAL_MQTT__CLIENT_CERT".into(), self.file("edgeseal.pem")));
            env.push(("EDGESEAL_MQTT__CLIENT_KEY".into(), self.file("edgeseal-key.pem")));
        }
        env
    }
}

impl Drop for Secured {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
    }
}

/// Subscribes, publishes "hello" with the same client options and MQTT
/// version (mqttv311 or mqttv5), and says whether it arrived.
fn round_trip(port: u16, version: &str, opts: &[String]) -> bool {
    let port = port.to_string();
    let common = ["-h", "localhost", "-p", &port, "-V", version, "-t", "edgeseal/test", "-q", "1"];
    let mut sub = Command::new("mosquitto_sub")
        .args(common)
        .args(["-C", "1", "-W", "5"])
        .args(opts)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let published =
        Command::new("mosquitto_pub").args(common).args(["-m", "hello"]).args(opts).stderr(Stdio::null()).status();
    if !published.unwrap().success() {
        let _ = sub.kill();
        let _ = sub.wait();
        return false;
    }
    let out = sub.wait_with_output().unwrap();
    text(&out.stdout).trim() == "hello"
}

/// At every security level (anonymous, TLS, TLS + passwords, each TLS level
/// also with mutual TLS): plain MQTT 3.1.1 and 5 clients with the right
/// credentials get through and others do not; two agents configured for it
/// pair, grant and share live readings through it.
fn every_security_level(kind: Kind) {
    if mosquitto_tools().is_none() {
        return;
    }
    let levels = [(1, false), (2, false), (3, false), (2, true), (3, true)];
    for (i, (level, mutual)) in levels.into_iter().enumerate() {
        let b = Secured::start(kind, level, mutual);
        // The agents speak MQTT 5 and 3.1.1 by turns.
        let version = if i % 2 == 0 { "5" } else { "3.1.1" };
        let case = format!("{kind:?} level {level}{}, MQTT {version}", if mutual { " with mutual TLS" } else { "" });
        let log = || std::fs::read_to_string(b.dir.with_extension("log")).unwrap_or_default();
        let (good, bad) = b.client_options();
        for version in ["mqttv311", "mqttv5"] {
            assert!(round_trip(b.port, version, &good), "{case} {version}: a configured client failed\n{}", log());
        }
        if let Some(bad) = bad {
            assert!(!round_trip(b.port, "mqttv311", &bad), "{case}: a client without credentials got through");
        }

        let agent = |tag: &str| {
            let mut a = Agent::new(&format!("{tag}-{kind:?}-{level}{mutual}"));
            a.env = b.agent_env();
            a.env.push(("EDGESEAL_MQTT__VERSION".into(), version.into()));
            a
        };
        let (pi, laptop) = (agent("pi"), agent("laptop"));
        let (h, j) = pair(&pi, &laptop);
        assert!(h.status.success() && j.status.success(), "{case}: {}{}\n{}", text(&h.stderr), text(&j.stderr), log());
        pi.ok(&["share", "temperature", "--with", peers(&pi)[0]["name"].as_str().unwrap(), "--from", BASE_RFC]);
        let watch = Watcher::start(&laptop, "temperature");
        pi.run_lines("temperature", 0..6, &["--batch-count", "2"]);
        watch.wait_for(6);
        let seen = watch.seen();
        let values: Vec<f64> = seen.iter().map(|r| r["value"].as_f64().unwrap()).collect();
        assert_eq!(values, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], "{case}");
        // Live frames, or the batches of readings accepted before the agent was connected.
        assert!(seen.iter().all(|r| r["status"] == "live" || r["status"] == "verified"), "{case}: {seen:?}");
    }
}

#[test]
fn mosquitto_at_every_security_level() {
    every_security_level(Kind::Mosquitto);
}

#[test]
fn embedded_broker_at_every_security_level() {
    every_security_level(Kind::Embedded);
}

/// `up` starts the embedded broker (`broker.listen`); the agent's own
/// commands find it there and a peer shares through it; a second agent on
/// the same port is told the port is taken and keeps storing.
#[test]
fn up_runs_the_embedded_broker_and_peers_share_through_it() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut pi = Agent::new("hub");
    pi.env = vec![("EDGESEAL_BROKER__LISTEN".into(), listen.clone())];
    let mut up = pi.spawn_stdin(&["--batch-count", "2"]);
    wait_until("the embedded broker", Duration::from_secs(15), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let laptop = with_broker("hub-laptop", &format!("mqtt://127.0.0.1:{port}"));
    let (h, j) = pair(&pi, &laptop);
    assert!(h.status.success() && j.status.success(), "{}{}{}", text(&h.stderr), text(&j.stderr), pi.logs());
    pi.ok(&["share", "temperature", "--with", "hub-laptop", "--from", BASE_RFC, "--new"]);
    let watch = Watcher::start(&laptop, "temperature");
    feed(&mut up, "temperature", 0..4);
    watch.wait_for(4);

    // Another agent configured for the same port: told why and what to do, and it still stores.
    let mut other = Agent::new("hub-second");
    let web = free_port();
    other.env = [pi.env.clone(), vec![("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{web}"))]].concat();
    let mut second = other.spawn_stdin(&[]);
    wait_until("its web server", Duration::from_secs(15), || std::net::TcpStream::connect(("127.0.0.1", web)).is_ok());
    // Nor does it offer to pair through whatever holds the port.
    let out = Command::new("curl")
        .args(["-s", "-X", "POST", "-w", "\n%{http_code}", &format!("http://127.0.0.1:{web}/api/v1/pairing")])
        .output()
        .unwrap();
    let out = text(&out.stdout);
    assert!(out.ends_with("\n422") && out.contains("no MQTT broker to pair through"), "{out}");
    feed(&mut second, "temperature", 0..3);
    drop(second.stdin.take());
    assert!(second.wait().unwrap().success(), "{}", other.logs());
    let said = other.logs();
    assert!(said.contains(&format!("{listen} is already in use")), "{said}");
    assert!(said.contains("--broker mqtt://127.0.0.1:") && said.contains("EDGESEAL_BROKER__LISTEN="), "{said}");
    assert_eq!(other.fetch("temperature").len(), 3);

    drop(watch);
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", pi.logs());
    let logs = pi.logs();
    assert!(logs.contains(&format!("broker:   embedded, MQTT 3.1.1/5 on {listen}")), "{logs}");
    assert!(logs.contains("2 published"), "{logs}");
}
