//! The MQTT link against a real mosquitto 2, configured by `write_setup` at
//! each security level. Skips when mosquitto is not installed, unless
//! `EDGESEAL_REQUIRE_SERVICES=1`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use edgeseal_mqtt::Error;
use edgeseal_mqtt::link::{BrokerUrl, Link, LinkOptions, Message, Password, Protocol};
use edgeseal_mqtt::mosquitto::{Level, Settings, write_setup};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn have_mosquitto() -> bool {
    let ok = Command::new("sh").arg("-c").arg("command -v mosquitto").output().is_ok_and(|o| o.status.success());
    if !ok && std::env::var("EDGESEAL_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("mosquitto is required but not installed");
    }
    if !ok {
        eprintln!("skipping: mosquitto not installed");
    }
    ok
}

fn tempdir(tag: &str) -> PathBuf {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    let dir = std::env::temp_dir().join(format!("edgeseal-link-{tag}-{:x}", u64::from_le_bytes(b)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn setup(dir: &Path, level: Level, mutual_tls: bool, port: u16) {
    let s = Settings { level, port, bind: "127.0.0.1", mutual_tls, dir };
    write_setup(&s, &["edgeseal".to_string()], &[], &[], true).unwrap();
}

async fn start_broker(dir: &Path, port: u16) -> Child {
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("mosquitto did not start on {port}");
}

fn options(dir: &Path, level: Level, mutual_tls: bool, port: u16) -> LinkOptions {
    let scheme = if level == Level::Anonymous { "mqtt" } else { "mqtts" };
    let url: BrokerUrl = format!("{scheme}://localhost:{port}").parse().unwrap();
    let mut o = LinkOptions::new(url, format!("edgeseal-test-{port}"));
    o.max_backoff = Duration::from_millis(300);
    o.ack_timeout = Duration::from_secs(3);
    if level != Level::Anonymous {
        o.ca_pem = Some(std::fs::read(dir.join("ca.pem")).unwrap());
    }
    if level == Level::TlsPassword {
        o.username = Some("edgeseal".into());
        let p = std::fs::read_to_string(dir.join("edgeseal.password")).unwrap();
        o.password = Some(Password::new(p.trim().to_string()));
    }
    if mutual_tls {
        o.client_cert = Some((
            std::fs::read(dir.join("edgeseal.pem")).unwrap(),
            std::fs::read(dir.join("edgeseal-key.pem")).unwrap(),
        ));
    }
    o
}

async fn next(rx: &mut mpsc::Receiver<Message>, payload: &[u8]) -> Message {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let m = rx.recv().await.unwrap();
            if m.payload == payload {
                return m;
            }
        }
    })
    .await
    .expect("the message arrived")
}

async fn wait_connected(link: &Link) {
    let mut c = link.connected();
    tokio::time::timeout(Duration::from_secs(10), c.wait_for(|up| *up)).await.expect("connected").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_security_level_round_trips() {
    if !have_mosquitto() {
        return;
    }
    for (level, mutual) in
        [(Level::Anonymous, false), (Level::Tls, false), (Level::TlsPassword, false), (Level::Tls, true)]
    {
        let dir = tempdir("level");
        let port = free_port();
        setup(&dir, level, mutual, port);
        let mut broker = start_broker(&dir, port).await;
        let stop = CancellationToken::new();
        for protocol in [Protocol::V311, Protocol::V5] {
            let mut o = options(&dir, level, mutual, port);
            o.protocol = protocol;
            o.client_id = format!("{}-{protocol:?}", o.client_id);
            let (link, mut rx) = Link::start(o, stop.clone()).unwrap();
            link.subscribe("edgeseal/test/#").await.unwrap();
            wait_connected(&link).await;
            link.publish("edgeseal/test/dev/stream/batch", b"sealed bytes".to_vec(), false).await.unwrap();
            let m = next(&mut rx, b"sealed bytes").await;
            assert_eq!(m.topic, "edgeseal/test/dev/stream/batch", "{level:?} {protocol:?}");
        }

        if level == Level::TlsPassword {
            // A wrong password never connects, and its publish is never reported as done.
            let mut bad = options(&dir, level, mutual, port);
            bad.password = Some(Password::new("wrong".into()));
            bad.client_id = "edgeseal-test-bad".into();
            bad.ack_timeout = Duration::from_secs(1);
            let (bad, _rx) = Link::start(bad, stop.clone()).unwrap();
            let e = bad.publish("edgeseal/test/x", b"x".to_vec(), false).await.unwrap_err();
            assert!(matches!(e, Error::NotAcknowledged { .. }), "{e}");
            assert!(!*bad.connected().borrow());
        }
        stop.cancel();
        broker.kill().unwrap();
        broker.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_restart_and_restores_subscriptions() {
    if !have_mosquitto() {
        return;
    }
    for protocol in [Protocol::V311, Protocol::V5] {
        restart(protocol).await;
    }
}

async fn restart(protocol: Protocol) {
    let dir = tempdir("restart");
    let port = free_port();
    setup(&dir, Level::Anonymous, false, port);
    let mut broker = start_broker(&dir, port).await;
    let stop = CancellationToken::new();
    let mut opts = options(&dir, Level::Anonymous, false, port);
    opts.ack_timeout = Duration::from_secs(1);
    opts.protocol = protocol;
    let (link, mut rx) = Link::start(opts, stop.clone()).unwrap();
    link.subscribe("edgeseal/test/+/batch").await.unwrap();
    wait_connected(&link).await;
    link.publish("edgeseal/test/a/batch", b"before".to_vec(), false).await.unwrap();
    next(&mut rx, b"before").await;

    broker.kill().unwrap();
    broker.wait().unwrap();
    let e = link.publish("edgeseal/test/a/batch", b"during".to_vec(), false).await.unwrap_err();
    assert!(matches!(e, Error::NotAcknowledged { .. }), "a publish to a dead broker is not reported as sent: {e}");

    let mut broker = start_broker(&dir, port).await;
    wait_connected(&link).await;
    link.publish("edgeseal/test/a/batch", b"after".to_vec(), false).await.unwrap();
    // Received only because the subscription was restored on the new session.
    next(&mut rx, b"after").await;
    stop.cancel();
    broker.kill().unwrap();
    broker.wait().unwrap();
}

/// MQTT 5 carries the broker's refusal in the PUBACK, and the link reports it;
/// under 3.1.1 a broker can only drop what it refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_publish_fails_under_mqtt5() {
    if !have_mosquitto() {
        return;
    }
    let dir = tempdir("acl");
    let port = free_port();
    std::fs::write(dir.join("acl"), "topic readwrite edgeseal/test/#\n").unwrap();
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n", dir.join("acl").display()),
    )
    .unwrap();
    let mut broker = start_broker(&dir, port).await;
    let stop = CancellationToken::new();
    let mut o = options(&dir, Level::Anonymous, false, port);
    o.protocol = Protocol::V5;
    let (link, _rx) = Link::start(o, stop.clone()).unwrap();
    wait_connected(&link).await;
    link.publish("edgeseal/test/allowed", b"x".to_vec(), false).await.unwrap();
    let e = link.publish("forbidden/topic", b"x".to_vec(), false).await.unwrap_err().to_string();
    assert!(e.contains("refused the message on \"forbidden/topic\": NotAuthorized"), "{e}");
    stop.cancel();
    broker.kill().unwrap();
    broker.wait().unwrap();
}

/// QoS 0 publishes (live frames) between QoS 1 ones: each QoS 1 publish is
/// still matched to its own acknowledgement, and everything arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_once_publishes_leave_acknowledgements_matched() {
    if !have_mosquitto() {
        return;
    }
    for protocol in [Protocol::V311, Protocol::V5] {
        let dir = tempdir("qos0");
        let port = free_port();
        setup(&dir, Level::Anonymous, false, port);
        let mut broker = start_broker(&dir, port).await;
        let stop = CancellationToken::new();
        let mut o = options(&dir, Level::Anonymous, false, port);
        o.protocol = protocol;
        let (link, mut rx) = Link::start(o, stop.clone()).unwrap();
        link.subscribe("edgeseal/test/#").await.unwrap();
        wait_connected(&link).await;
        let mut pending = Vec::new();
        for i in 0..50u8 {
            link.publish_once("edgeseal/test/a/live", vec![b'l', i]).await.unwrap();
            pending.push(link.send("edgeseal/test/a/batch", vec![b'b', i], false).await.unwrap());
        }
        for p in pending {
            p.acked().await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 100 {
            let m = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.unwrap().unwrap();
            got.push(m.payload);
        }
        let lives: Vec<u8> = got.iter().filter(|p| p[0] == b'l').map(|p| p[1]).collect();
        let batches: Vec<u8> = got.iter().filter(|p| p[0] == b'b').map(|p| p[1]).collect();
        assert_eq!(lives, (0..50).collect::<Vec<_>>(), "{protocol:?}");
        assert_eq!(batches, (0..50).collect::<Vec<_>>(), "{protocol:?}");
        stop.cancel();
        broker.kill().unwrap();
        broker.wait().unwrap();
    }
}

/// A reader that acknowledges and publishes while thousands of messages pour in (what
/// `edgeseal ingest` does, with a broker whose in-flight window is wide) never wedges the
/// link: the connection is driven while the reader's channel is full, so its requests go out.
/// And nothing is lost silently: every message arrives, or its sender was told it failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_publishes_while_messages_pour_in_never_wedges_the_link() {
    if !have_mosquitto() {
        return;
    }
    const N: usize = 6000;
    let dir = tempdir("flood");
    let port = free_port();
    setup(&dir, Level::Anonymous, false, port);
    let conf = dir.join("mosquitto.conf");
    // A window wider than the reader's channel (1024), and room to queue everything.
    let wide = std::fs::read_to_string(&conf).unwrap() + "\nmax_inflight_messages 5000\nmax_queued_messages 100000\n";
    std::fs::write(&conf, wide).unwrap();
    let mut broker = start_broker(&dir, port).await;
    let stop = CancellationToken::new();
    let mut o = options(&dir, Level::Anonymous, false, port);
    o.manual_acks = true;
    let (reader, mut rx) = Link::start(o, stop.clone()).unwrap();
    reader.subscribe("edgeseal/flood/in").await.unwrap();
    wait_connected(&reader).await;
    let mut o = options(&dir, Level::Anonymous, false, port);
    o.client_id = format!("edgeseal-test-{port}-writer");
    let (writer, _) = Link::start(o, stop.clone()).unwrap();
    wait_connected(&writer).await;
    // How many publishes the writer was told failed (its connection broke under load, say).
    let flood = tokio::spawn(async move {
        let (mut pending, mut failed) = (Vec::with_capacity(N), 0);
        for i in 0..N {
            match writer.send("edgeseal/flood/in", i.to_be_bytes().to_vec(), false).await {
                Ok(p) => pending.push(p),
                Err(_) => failed += 1,
            }
        }
        for p in pending {
            failed += usize::from(p.acked().await.is_err());
        }
        failed
    });
    // Let the channel fill before reading, then answer and acknowledge each message.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Read until nothing comes for 5 s. A wedged link stops at about the reader's channel
    // (it stopped after 600 before this was fixed).
    let mut seen = std::collections::HashSet::new();
    let mut buf = Vec::new();
    while seen.len() < N {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv_many(&mut buf, 600)).await {
            Ok(n) if n > 0 => {}
            _ => break,
        }
        for m in buf.drain(..) {
            seen.insert(m.payload.clone());
            let _ = reader.send("edgeseal/flood/out", m.payload.clone(), false).await.unwrap();
            reader.ack(&m).await.unwrap();
        }
    }
    let seen = seen.len();
    assert!(seen > N / 2, "the link wedged after {seen} of {N} messages");
    let failed = tokio::time::timeout(Duration::from_secs(60), flood).await.unwrap().unwrap();
    assert!(seen + failed >= N, "{seen} of {N} arrived and the writer was told of {failed} failures");
    stop.cancel();
    broker.kill().unwrap();
    broker.wait().unwrap();
}
