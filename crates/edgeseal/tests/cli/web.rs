//! The agent's HTTP server: the CloudSync-compatible API against a real mosquitto, over a real socket.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::sharing::Broker;
use super::{Agent, free_port, mosquitto_tools, text, wait_until};

/// One request with curl: (status, JSON body).
pub(super) fn http(method: &str, url: &str, body: Option<&str>) -> (u16, Value) {
    let mut args = vec!["-X", method, url];
    if let Some(b) = body {
        args.extend(["--header", "Content-Type: text/plain", "--data-raw", b]);
    }
    let (status, body) = curl(&args);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Waits until the agent's web server listens on `port`.
fn wait_for_web(port: u16) {
    wait_until("the web server", Duration::from_secs(15), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
}

#[test]
fn cloudsync_api_publishes_subscribes_and_answers_honestly() {
    if mosquitto_tools().is_none() {
        return;
    }
    let mport = free_port();
    let broker = Broker::start(mport);
    let (web, original) = (free_port(), free_port());
    let mut a = Agent::new("cloudsync");
    a.env = vec![
        ("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{web}")),
        ("EDGESEAL_WEB__CLOUDSYNC_LISTEN".into(), format!("127.0.0.1:{original}")),
    ];
    let mut up = a.spawn_stdin(&[]);
    wait_for_web(web);
    let api = format!("http://127.0.0.1:{web}/api/v1/orchestration/cloudsyncmgr");
    let target = format!("127.0.0.1:{mport}");

    // The original documentation's curl command, as written, on the original's port.
    let sub = Command::new("mosquitto_sub")
        .args(["-p", &mport.to_string(), "-t", "home1/livingroom", "-C", "1", "-W", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let documented = Command::new("curl")
        .args(["--location", "--request", "POST"])
        .arg(format!("http://127.0.0.1:{original}/api/v1/orchestration/cloudsyncmgr/publish"))
        .args(["--header", "Content-Type: text/plain", "--data-raw"])
        .arg(format!(
            "{{\n    \"appid\": \"tv1\",\n    \"payload\": \"{{Another data from TV1 and testdata}}\",\n    \"topic\": \"home1/livingroom\",\n    \"url\" : \"{target}\"\n}}"
        ))
        .output()
        .unwrap();
    let answer: Value = serde_json::from_slice(&documented.stdout).unwrap();
    assert_eq!(answer["Message"], format!("Data published successfully to Cloud{target}"), "{answer}");
    assert_eq!(answer["ServiceName"], "");
    assert_eq!(answer["RemoteTargetInfo"], "");
    assert_eq!(text(&sub.wait_with_output().unwrap().stdout).trim(), "{Another data from TV1 and testdata}");

    // A wildcard subscription; getsubscribedata takes the topic with its '/' in the path.
    let body = |app: &str, topic: &str| format!(r#"{{"appid":"{app}","topic":"{topic}","url":"{target}"}}"#);
    let (status, v) = http("POST", &format!("{api}/subscribe"), Some(&body("app1", "home1/+")));
    assert_eq!((status, v["Message"].as_str().unwrap()), (200, "Successfully subscribed to the topic home1/+"));
    let data = || http("GET", &format!("{api}/getsubscribedata/127.0.0.1/home1/+/app1"), None);
    wait_until("the retained value", Duration::from_secs(10), || {
        data().1["Message"] == "{Another data from TV1 and testdata}"
    });
    let publish = |topic: &str, m: &str| {
        let ok = Command::new("mosquitto_pub").args(["-p", &mport.to_string(), "-t", topic, "-m", m]).status();
        assert!(ok.unwrap().success());
    };
    publish("home1/kitchen", "hot");
    wait_until("the kitchen's value", Duration::from_secs(10), || data().1["Message"] == "hot");

    // Honest answers for bad input and for a broker that is not there.
    let publish_api = |b: &str| http("POST", &format!("{api}/publish"), Some(b));
    assert_eq!(publish_api(r#"{"appid":"a","payload":{"x":1},"topic":"t","url":"h"}"#).0, 400);
    assert_eq!(publish_api("not json").0, 400);
    assert_eq!(publish_api(r#"{"appid":"a","payload":"p","topic":"t","url":""}"#).0, 400);
    assert_eq!(publish_api(r#"{"appid":"a","payload":"p","topic":"a/+","url":"h"}"#).0, 400);
    let (status, v) = publish_api(r#"{"appid":"a","payload":"p","topic":"t","url":"127.0.0.1:9"}"#);
    assert_eq!(status, 502, "{v}");
    let said = v["Message"].as_str().unwrap();
    assert!(said.starts_with("Error Connecting MQTT -> "), "{v}");
    // The cause the link saw, not only that it waited.
    assert!(said.to_lowercase().contains("refused"), "{v}");
    assert_eq!(http("GET", &format!("{api}/getsubscribedata/127.0.0.1/home1/+/someone-else"), None).0, 404);

    // The broker goes away: publishing says so (502), never "published"; it comes back and the
    // subscription is there again.
    drop(broker);
    let p = format!(r#"{{"appid":"tv1","payload":"lost?","topic":"home1/livingroom","url":"{target}"}}"#);
    wait_until("a 502 while the broker is down", Duration::from_secs(15), || publish_api(&p).0 == 502);
    let _broker = Broker::start(mport);
    wait_until("a 200 once it is back", Duration::from_secs(20), || publish_api(&p).0 == 200);
    publish("home1/hall", "back");
    wait_until("data after the reconnect", Duration::from_secs(10), || data().1["Message"] == "back");

    // Unsubscribe, which the original never shipped.
    let (status, _) = http("POST", &format!("{api}/unsubscribe"), Some(&body("app1", "home1/+")));
    assert_eq!(status, 200);
    assert_eq!(data().0, 404);
    assert_eq!(http("GET", &format!("http://127.0.0.1:{web}/api/v1/health"), None).1["status"], "ok");

    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
    assert!(a.logs().contains(&format!("http://127.0.0.1:{original}/ (API")), "{}", a.logs());
}

/// This machine's address on its default route (not loopback).
fn lan_ip() -> std::net::IpAddr {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect("192.0.2.1:9").expect("a network interface with a route (no packet is sent)");
    let ip = s.local_addr().unwrap().ip();
    assert!(!ip.is_loopback(), "no address other than loopback");
    ip
}

/// curl with `args`: (status, output).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl").args(["-s", "-w", "\n%{http_code}"]).args(args).output().unwrap();
    let out = text(&out.stdout);
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

fn status(url: &str, header: Option<&str>) -> u16 {
    let mut args = vec!["-o", "/dev/null", url];
    if let Some(h) = header {
        args.extend(["--header", h]);
    }
    curl(&args).0
}

/// `web.tls = true`: HTTPS with a CA and certificate made on first use (the
/// CA key 0600 in a 0700 directory), whose SHA-256 `up` prints; a client that
/// trusts the CA gets the API and the UI, one that does not is refused, and
/// plain HTTP gets nothing. A restart serves the same certificate.
#[test]
fn https_with_a_certificate_made_on_first_use() {
    if mosquitto_tools().is_none() {
        return;
    }
    let (port, cloudsync) = (free_port(), free_port());
    let mut a = Agent::new("https");
    a.env = vec![
        ("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{port}")),
        ("EDGESEAL_WEB__CLOUDSYNC_LISTEN".into(), format!("127.0.0.1:{cloudsync}")),
        ("EDGESEAL_WEB__TLS".into(), "true".into()),
    ];
    let ca = a.dir.join("web").join("ca.pem");
    let printed = |a: &Agent| {
        let out = a.logs_of("up.out");
        out.split("certificate SHA-256 ").nth(1).map(|f| f.lines().next().unwrap_or("").to_string())
    };
    let mut fingerprints = Vec::new();
    for _ in 0..2 {
        let mut up = a.spawn_stdin(&[]);
        wait_for_web(port);
        wait_until("up to print its certificate", Duration::from_secs(10), || printed(&a).is_some());
        let url = format!("https://127.0.0.1:{port}");
        let (code, health) = curl(&["--cacert", ca.to_str().unwrap(), &format!("{url}/api/v1/health")]);
        assert!(code == 200 && health.contains("\"status\":\"ok\""), "{code} {health}");
        let (code, page) = curl(&["--cacert", ca.to_str().unwrap(), &format!("https://localhost:{port}/")]);
        assert!(code == 200 && page.contains("<html"), "{code}");
        assert_eq!(curl(&[&format!("{url}/api/v1/health")]).0, 0, "a client that does not trust the CA is refused");
        assert_eq!(curl(&[&format!("http://127.0.0.1:{port}/api/v1/health")]).0, 0, "plain HTTP gets nothing");
        // The CloudSync port stays plain HTTP for the original's clients.
        assert_eq!(curl(&[&format!("http://127.0.0.1:{cloudsync}/api/v1/health")]).0, 200);
        fingerprints.push(printed(&a).unwrap());
        let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
        assert!(up.wait().unwrap().success(), "{}", a.logs());
    }
    assert_eq!(fingerprints[0], fingerprints[1], "a restart serves the same certificate");
    assert_eq!(fingerprints[0].split(':').count(), 32, "{}", fingerprints[0]);
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode(&a.dir.join("web")), mode(&a.dir.join("web/ca-key.pem")), mode(&a.dir.join("web/server-key.pem"))),
        (0o700, 0o600, 0o600)
    );
}

#[test]
fn other_machines_need_the_api_token() {
    if mosquitto_tools().is_none() {
        return;
    }
    let port = free_port();
    let mut a = Agent::new("token");
    a.env = vec![("EDGESEAL_WEB__LISTEN".into(), format!("0.0.0.0:{port}"))];
    let mut up = a.spawn_stdin(&[]);
    wait_for_web(port);
    let token_file = a.dir.join("api-token");
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777, 0o600);

    assert_eq!(status(&format!("http://127.0.0.1:{port}/api/v1/health"), None), 200, "this machine needs no token");
    let remote = format!("http://{}:{port}/api/v1/health", lan_ip());
    assert_eq!(status(&remote, None), 401);
    assert_eq!(status(&remote, Some("Authorization: Bearer not-the-token")), 401);
    assert_eq!(status(&remote, Some(&format!("Authorization: Bearer {token}"))), 200);
    let cs = format!("http://{}:{port}/api/v1/orchestration/cloudsyncmgr/publish", lan_ip());
    assert_eq!(status(&cs, None), 401, "the CloudSync API is guarded too");
    // Metrics: the same rules, over the real socket, in the Prometheus text format.
    let metrics = format!("http://{}:{port}/metrics", lan_ip());
    assert_eq!(status(&metrics, None), 401, "metrics are guarded too");
    let (code, scraped) = curl(&["-H", &format!("Authorization: Bearer {token}"), &metrics]);
    assert!(
        code == 200 && scraped.contains("edgeseal_readings_accepted_total") && scraped.ends_with("# EOF\n"),
        "{scraped}"
    );
    assert!(scraped.contains("edgeseal_http_requests_total{route=\"/api/v1/health\",status=\"401\"} 2"), "{scraped}");

    // A browser on another machine: the UI asks for the token, then a session cookie admits it.
    let ui = format!("http://{}:{port}", lan_ip());
    let (code, head) = curl(&["-i", &format!("{ui}/storage")]);
    assert!(code == 303 && head.to_lowercase().contains("location: /login"), "{head}");
    let (code, _) = curl(&["--data-urlencode", "token=wrong", &format!("{ui}/login")]);
    assert_eq!(code, 401);
    let (code, head) = curl(&["-i", "--data-urlencode", &format!("token={token}"), &format!("{ui}/login")]);
    let cookie = head
        .lines()
        .find_map(|l| l.to_lowercase().starts_with("set-cookie:").then(|| l[11..].trim().to_string()))
        .unwrap_or_else(|| panic!("no cookie: {head}"));
    assert!(code == 303 && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{head}");
    assert!(!cookie.contains(&token), "the cookie is not the token");
    let cookie = format!("Cookie: {}", cookie.split(';').next().unwrap());
    let (code, page) = curl(&["-H", &cookie, &format!("{ui}/storage")]);
    assert!(code == 200 && page.contains("Store now") && !page.contains(&token), "{page}");
    assert_eq!(status(&format!("{ui}/api/v1/batching"), Some(&cookie)), 200, "the page's scripts use the API");
    // Forms need this run's CSRF token; requests from other sites are refused.
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let post = |extra: &[&str], fields: &str| {
        let mut args = vec!["-H", cookie.as_str(), "--data", fields];
        args.extend_from_slice(extra);
        let url = format!("{ui}/actions/store-now");
        curl(&[args, vec![url.as_str()]].concat()).0
    };
    assert_eq!(post(&[], "csrf=forged"), 403);
    assert_eq!(post(&[], ""), 403);
    assert_eq!(post(&["-H", "Origin: http://evil.example"], &format!("csrf={csrf}")), 403);
    assert_eq!(post(&[], &format!("csrf={csrf}")), 303);

    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
    let logs = a.logs();
    assert!(logs.contains("Authorization: Bearer) the token in") && !logs.contains(&token), "{logs}");
}

#[test]
fn rest_api_answers_as_the_cli_and_as_its_openapi_document_says() {
    if mosquitto_tools().is_none() {
        return;
    }
    let port = free_port();
    let mut a = Agent::new("rest");
    a.env = vec![("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{port}"))];
    let mut up = a.spawn_stdin(&["--batch-count", "2"]);
    super::feed(&mut up, "temperature", 0..4);
    wait_for_web(port);
    let base = format!("http://127.0.0.1:{port}");
    let cli = |args: &[&str]| serde_json::from_str::<Value>(&a.ok(args)).unwrap();
    assert_eq!(http("GET", &format!("{base}/api/v1/identity"), None).1, cli(&["id", "--json"]));
    wait_until("4 stored readings", Duration::from_secs(15), || a.counts("temperature").0 == 4);
    assert_eq!(http("GET", &format!("{base}/api/v1/streams"), None).1, cli(&["streams", "--json"]));
    assert_eq!(http("GET", &format!("{base}/api/v1/peers"), None).1, cli(&["peers", "--json"]));

    // Retrieval: the readings `fetch` prints, with each batch's verification status.
    let (status, range) = http("GET", &format!("{base}/api/v1/streams/temperature/readings?from=0"), None);
    assert_eq!(status, 200, "{range}");
    assert_eq!(range["readings"], cli(&["fetch", "--stream", "temperature", "--format", "json"]));
    let statuses: Vec<&str> =
        range["batches"].as_array().unwrap().iter().map(|b| b["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["verified", "verified"]);
    assert_eq!((range["verified"].as_bool(), range["findings"].as_array().map(Vec::len)), (Some(true), Some(0)));
    let csv =
        Command::new("curl").args(["-s", &format!("{base}/api/v1/streams/temperature/readings?format=csv")]).output();
    assert_eq!(text(&csv.unwrap().stdout), a.ok(&["fetch", "--stream", "temperature", "--format", "csv"]));
    // ?tz=: the same readings with their times in that zone, as `fetch --tz` shows them.
    let (status, paris) = http("GET", &format!("{base}/api/v1/streams/temperature/readings?tz=Europe/Paris"), None);
    assert_eq!(status, 200, "{paris}");
    assert_eq!(
        paris["readings"],
        cli(&["fetch", "--stream", "temperature", "--format", "json", "--tz", "Europe/Paris"])
    );
    assert!(paris["readings"][0]["time"].as_str().unwrap().ends_with("+01:00"), "{paris}");
    let (status, v) = http("GET", &format!("{base}/api/v1/streams?tz=Mars/Olympus"), None);
    assert!(
        status == 400 && v["error"].as_str().unwrap().starts_with("tz: \"Mars/Olympus\" is not a time zone"),
        "{v}"
    );
    let (status, v) = http("GET", &format!("{base}/api/v1/streams/temperature/readings?from=yesterday"), None);
    assert!(status == 400 && v["error"].as_str().unwrap().starts_with("from: "), "{v}");

    // Every path the document names exists: GETs without parameters answer 200; the others are there.
    let (status, doc) = http("GET", &format!("{base}/api/v1/openapi.json"), None);
    assert_eq!((status, doc["openapi"].as_str().unwrap()), (200, "3.1.0"));
    for (path, ops) in doc["paths"].as_object().unwrap() {
        if path == "/api/v1/live" {
            continue; // an endless event stream: below
        }
        for (method, op) in ops.as_object().unwrap() {
            // A schema for every answer (errors too, and the guard's 401 and 403), parameter and body.
            let answers = op["responses"].as_object().unwrap();
            assert!(answers.contains_key("401") && answers.contains_key("403"), "{method} {path}");
            for (code, answer) in answers {
                let content = answer["content"].as_object();
                assert!(content.is_some_and(|c| c.values().all(|m| m["schema"].is_object())), "{method} {path} {code}");
            }
            for p in op["parameters"].as_array().into_iter().flatten() {
                assert!(p["schema"].is_object(), "{method} {path}: {p}");
            }
            if let Some(body) = op.get("requestBody") {
                assert!(
                    body["content"].as_object().unwrap().values().all(|m| m["schema"].is_object()),
                    "{method} {path}"
                );
            }
            let url = format!(
                "{base}{}",
                path.replace("{host}", "127.0.0.1")
                    .replace("{topic}", "t")
                    .replace("{appID}", "a")
                    .replace("{stream}", "temperature")
            );
            let (status, body) = http(&method.to_uppercase(), &url, (method == "post").then_some(""));
            // With made-up parameters: the route's own "not subscribed", not a missing route; actions
            // without a body: their "bad request", or what they do without one.
            let expected = match (method.as_str(), path.as_str()) {
                (_, p) if p.contains("getsubscribedata") => 404,
                ("get", _) | ("post", "/api/v1/store-now" | "/api/v1/streams/{stream}/rotate") => 200,
                ("delete", "/api/v1/pairing") => 200,
                // No broker here: showing a pairing code cannot work; `{peer}` names no peer.
                ("post", "/api/v1/pairing") => 422,
                ("delete", "/api/v1/peers/{peer}/grants/{stream}") => 404,
                _ => 400,
            };
            assert_eq!(status, expected, "{method} {path}");
            assert!(path == "/metrics" || !body.is_null(), "{method} {path}: no JSON answer");
        }
    }

    // Live: readings as they are accepted, as server-sent events; the newest per stream.
    let events = Command::new("curl")
        .args(["-s", "-N", "--max-time", "4", &format!("{base}/api/v1/live")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    super::feed(&mut up, "temperature", 4..6);
    let seen = text(&events.wait_with_output().unwrap().stdout);
    let readings: Vec<Value> =
        seen.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(seen.contains("event: reading"), "{seen}");
    let values: Vec<f64> = readings.iter().map(|r| r["value"].as_f64().unwrap()).collect();
    assert_eq!(values, [0.4, 0.5], "{seen}");
    assert!(
        readings.iter().all(|r| r["origin"] == "local" && r["status"] == "accepted" && r["stream"] == "temperature")
    );
    let latest = http("GET", &format!("{base}/api/v1/live/latest"), None).1;
    assert_eq!(latest[0]["value"], 0.5, "{latest}");
    assert_eq!(latest[0]["description"], "Cold", "the original's threshold label");

    // The dashboard: rendered on the server (values without JavaScript), its script and
    // stylesheet served from the binary, a content security policy, and nothing secret.
    let page = Command::new("curl").args(["-s", "-i", &format!("{base}/")]).output().unwrap();
    let page = text(&page.stdout);
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("content-security-policy: default-src 'self'"), "{page}");
    assert!(page.contains("<td data-f=\"value\">0.5 u</td><td data-f=\"description\">Cold</td>"), "{page}");
    let id = cli(&["id", "--json"]);
    assert!(page.contains(id["fingerprint"].as_str().unwrap()) && !page.contains("secret"), "{page}");
    for asset in ["/assets/dashboard.js", "/assets/style.css"] {
        let mut curl = Command::new("curl");
        curl.args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{content_type}", &format!("{base}{asset}")]);
        let got = text(&curl.output().unwrap().stdout);
        assert!(got.starts_with("200 text/"), "{asset}: {got}");
    }

    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
}

/// schemathesis (from PyPI; `.ci/run` installs it), or None (skip) unless services are required.
fn schemathesis() -> Option<String> {
    let bin = std::env::var("EDGESEAL_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let have = Command::new(&bin).arg("--version").output().is_ok_and(|o| o.status.success());
    super::available("schemathesis (EDGESEAL_SCHEMATHESIS)", have).then_some(bin)
}

/// A schema-driven fuzzer over every operation of the OpenAPI document but the endless event
/// stream and the CloudSync ones (they dial out): every check, no failure. What it cannot know
/// (a count of 0 needs an interval; `from` after `to`; no broker to pair through) is in
/// `scripts/schemathesis.toml`, each as a documented answer.
#[test]
fn the_api_holds_to_its_openapi_document_under_a_fuzzer() {
    let Some(st) = schemathesis() else { return };
    let port = free_port();
    let mut a = Agent::new("fuzz");
    a.env = vec![("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{port}"))];
    let up = ["up", "--for", "300s", "--batch-count", "5"];
    let mut up = a.cmd(&up).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    wait_for_web(port);
    wait_until("a stored stream", Duration::from_secs(20), || a.counts("temperature").0 > 0);
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/schemathesis.toml");
    let out = Command::new(&st)
        .current_dir(a.dir.parent().unwrap())
        .args(["--config-file", config, "run", &format!("http://127.0.0.1:{port}/api/v1/openapi.json")])
        .args(["--checks", "all", "--exclude-path", "/api/v1/live", "--exclude-tag", "CloudSync"])
        .args(["--max-examples", "100", "--seed", "20261201", "--no-color"])
        .output()
        .unwrap();
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
    let _ = up.wait();
    assert!(out.status.success() && report.contains(" passed"), "{report}");
    assert!(report.contains("Tested: 17"), "every operation but the excluded ones: {report}");
}

#[test]
fn the_api_changes_the_running_agent_and_refuses_other_sites() {
    if mosquitto_tools().is_none() {
        return;
    }
    let port = free_port();
    let mut a = Agent::new("control");
    let no_broker = format!("mqtt://127.0.0.1:{}", free_port());
    a.env = vec![
        ("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{port}")),
        ("EDGESEAL_MQTT__BROKER".into(), no_broker.clone()),
    ];
    let mut up = a.spawn_stdin(&[]);
    wait_for_web(port);
    let base = format!("http://127.0.0.1:{port}");
    let (_, policy) = http("GET", &format!("{base}/api/v1/batching"), None);
    assert_eq!((policy["count"].as_u64(), policy["interval"].as_str()), (Some(1000), Some("5m")), "{policy}");

    // Store now: the open batch is sealed and stored at once, not after five minutes.
    super::feed(&mut up, "temperature", 0..3);
    std::thread::sleep(Duration::from_millis(600)); // accepted (journaled within 250 ms)
    let (code, done) = http("POST", &format!("{base}/api/v1/store-now"), Some(""));
    assert_eq!((code, done["batches"].as_u64(), done["readings"].as_u64()), (200, Some(1), Some(3)), "{done}");
    wait_until("3 stored readings", Duration::from_secs(30), || a.counts("temperature").0 == 3);

    // The batch size: applied at once, kept across a restart; bad values are named.
    let (code, v) = http("PUT", &format!("{base}/api/v1/batching"), Some(r#"{"count": 2, "interval": "off"}"#));
    assert_eq!((code, v["count"].as_u64(), v["interval"].as_str()), (200, Some(2), Some("off")), "{v}");
    super::feed(&mut up, "temperature", 3..7);
    wait_until("two more batches of 2", Duration::from_secs(30), || a.counts("temperature").0 == 7);
    for (body, says) in [
        (r#"{"count": "many"}"#, "batch count \"many\""),
        (r#"{"count": 0, "interval": "off"}"#, "never cut a batch"),
        (r#"{"count": 5, "interval": "soon"}"#, "batch interval \"soon\""),
        ("[1", "the request body"),
    ] {
        let (code, v) = http("PUT", &format!("{base}/api/v1/batching"), Some(body));
        assert!(code == 400 && v["error"].as_str().unwrap().contains(says), "{body}: {code} {v}");
    }

    // A pairing code through a broker that is not there: the reason, not a code or "idle".
    let (code, v) = http("POST", &format!("{base}/api/v1/pairing"), Some(""));
    assert!(
        code == 502 && v["error"].as_str().unwrap().contains(&format!("cannot reach the MQTT broker {no_broker}")),
        "{code} {v}"
    );

    // Other web sites may not change the agent: not by a form (no CSRF token), not by a
    // script (Origin), not through a DNS name rebound to 127.0.0.1 (Host).
    let (code, _) = curl(&["--data", "count=1&interval=off", &format!("{base}/actions/batching")]);
    assert_eq!(code, 403);
    let (code, _) = curl(&["-X", "POST", "-H", "Origin: http://evil.example", &format!("{base}/api/v1/store-now")]);
    assert_eq!(code, 403);
    let (code, _) = curl(&["-H", "Host: evil.example:5000", &format!("{base}/api/v1/identity")]);
    assert_eq!(code, 403);
    let (code, _) = curl(&["-X", "POST", "-H", &format!("Origin: {base}"), &format!("{base}/api/v1/store-now")]);
    assert_eq!(code, 200, "the agent's own pages may");
    assert_eq!(http("GET", &format!("{base}/api/v1/batching"), None).1["count"], 2, "refused changes changed nothing");

    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
    a.env.retain(|(k, _)| k != "EDGESEAL_MQTT__BROKER"); // no 10 s last attempt to publish at the next stop
    let mut up = a.spawn_stdin(&[]);
    wait_for_web(port);
    assert_eq!(http("GET", &format!("{base}/api/v1/batching"), None).1["count"], 2, "kept across the restart");
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
    assert!(a.logs().contains("every 2 readings (set from the web UI or API"), "{}", a.logs());
}

/// Debian's Chromium driven over WebDriver (chromedriver, plain JSON over HTTP), or None
/// (skip) unless services are required. Stopped on drop.
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
}

impl Browser {
    fn start() -> Option<Browser> {
        Browser::start_with(false)
    }

    /// With `self_signed`, the browser takes a certificate it cannot verify
    /// (the agent's own CA; curl checks that one, in `https_with_…`).
    fn start_with(self_signed: bool) -> Option<Browser> {
        let have = Command::new("chromedriver").arg("--version").output().is_ok_and(|o| o.status.success());
        if !super::available("Chromium with chromium-driver", have) {
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver", Duration::from_secs(15), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "acceptInsecureCerts": self_signed,
            "goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,480"]},
        }}})
        .to_string();
        let (_, v) = http("POST", &format!("{base}/session"), Some(&caps));
        let session =
            v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no WebDriver session: {v}")).to_string();
        Some(Browser { driver, base, session })
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Value {
        http(method, &format!("{}/session/{}{path}", self.base, self.session), body).1["value"].clone()
    }

    fn open(&self, url: &str) {
        self.call("POST", "/url", Some(&serde_json::json!({ "url": url }).to_string()));
    }

    /// How many live readings the dashboard's script has applied.
    fn live_updates(&self) -> u64 {
        self.eval("return document.getElementById('streams').dataset.updates || '0'")
            .as_str()
            .unwrap_or("0")
            .parse()
            .unwrap_or(0)
    }

    /// Runs `script` (a function body) in the page and returns its value.
    fn eval(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(&serde_json::json!({ "script": script, "args": [] }).to_string()))
    }

    /// Opens a new tab and switches to it; returns the tab it was on.
    fn new_tab(&self) -> String {
        let before = self.call("GET", "/window", None).as_str().unwrap().to_string();
        let tab = self.call("POST", "/window/new", Some(r#"{"type":"tab"}"#));
        self.switch_to(tab["handle"].as_str().unwrap());
        before
    }

    fn switch_to(&self, tab: &str) {
        self.call("POST", "/window", Some(&serde_json::json!({ "handle": tab }).to_string()));
    }

    /// Sets the window's size (a tall one holds more of a long page in a screenshot).
    fn resize(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", Some(&serde_json::json!({ "width": width, "height": height }).to_string()));
    }

    /// Keeps a screenshot of the page as a test artifact in target/tmp/screenshots.
    fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().unwrap()).unwrap();
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = http("DELETE", &format!("{}/session/{}", self.base, self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The UI over HTTPS in a real browser: the dashboard's live event stream
/// runs over TLS, and the sharing page shows the certificate's SHA-256 that
/// `up` printed.
#[test]
fn the_ui_works_over_https_in_a_real_browser() {
    let Some(browser) = Browser::start_with(true) else { return };
    let port = free_port();
    let mut a = Agent::new("https-browser");
    let cfg = a.dir.parent().unwrap().join("fast.toml");
    std::fs::write(&cfg, "[[sensor]]\nkind = \"simulated\"\nmodel = \"temperature\"\ninterval = \"200ms\"\n").unwrap();
    a.env =
        vec![("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{port}")), ("EDGESEAL_WEB__TLS".into(), "true".into())];
    let out = a.dir.parent().unwrap().join("up.out");
    let mut up = a
        .cmd(&["--config", cfg.to_str().unwrap(), "up", "--for", "60s"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_web(port);
    let printed = std::fs::read_to_string(&out).unwrap_or_default();
    let fingerprint =
        printed.split("certificate SHA-256 ").nth(1).and_then(|f| f.lines().next()).unwrap_or("").to_string();
    assert_eq!(fingerprint.split(':').count(), 32, "{printed}");
    browser.open(&format!("https://127.0.0.1:{port}/"));
    wait_until("live updates over HTTPS", Duration::from_secs(15), || browser.live_updates() >= 3);
    assert_eq!(browser.eval("return location.protocol"), "https:");
    browser.open(&format!("https://127.0.0.1:{port}/sharing"));
    let shown = browser.eval("const e = document.getElementById('tls-fingerprint'); return e ? e.textContent : ''");
    assert_eq!(shown.as_str(), Some(fingerprint.as_str()));
    browser.screenshot("sharing-https.png");
    let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
    let _ = up.wait();
}

/// The chart the server draws for a stream of `device`: (points of its line, the leftmost x of 480).
fn chart_line(port: u16, device: &str, stream: &str, range: &str) -> (usize, f64) {
    let (code, svg) = curl(&[&format!("http://127.0.0.1:{port}/charts/{device}/{stream}?range={range}")]);
    assert_eq!(code, 200, "{svg}");
    let points: Vec<f64> = svg
        .split("<polyline")
        .skip(1)
        .filter_map(|p| p.split("points=\"").nth(1)?.split('"').next())
        .flat_map(|pts| pts.split(' ').filter_map(|xy| xy.split(',').next()?.parse().ok()).collect::<Vec<f64>>())
        .collect();
    (points.len(), points.iter().copied().fold(f64::INFINITY, f64::min))
}

#[test]
fn dashboard_shows_live_values_and_charts_with_history_in_a_real_browser() {
    let Some(browser) = Browser::start() else { return };
    let port = free_port();
    let mut a = Agent::new("browser");
    // Fifty minutes of temperature history in the store, a reading every 10 s, before the agent runs.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut history = a.spawn_stdin(&[]);
    let lines: String = (0..300)
        .map(|i| {
            let ts = now - 3_000_000 + i * 10_000;
            format!(
                "{{\"stream\":\"temperature\",\"value\":{},\"unit\":\"°C\",\"ts\":{ts}}}\n",
                21.0 + (i % 30) as f64 / 10.0
            )
        })
        .collect();
    history.stdin.as_mut().unwrap().write_all(lines.as_bytes()).unwrap();
    drop(history.stdin.take());
    assert!(history.wait().unwrap().success(), "{}", a.logs());
    let device = a.device();
    let cfg = a.dir.parent().unwrap().join("fast.toml");
    let sensor = |model: &str| format!("[[sensor]]\nkind = \"simulated\"\nmodel = \"{model}\"\ninterval = \"200ms\"\n");
    std::fs::write(&cfg, [sensor("temperature"), sensor("humidity"), sensor("air_quality")].concat()).unwrap();
    a.env = vec![("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{port}"))];
    let mut up = a
        .cmd(&["--config", cfg.to_str().unwrap(), "up", "--for", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_web(port);
    std::thread::sleep(Duration::from_millis(500));
    browser.open(&format!("http://127.0.0.1:{port}/"));
    let temperature = "return document.querySelector('[id$=_temperature] [data-f=value]').textContent";
    let first = browser.eval(temperature);
    // The page's script connects and applies live readings: the values change without a reload.
    wait_until("live updates in the page", Duration::from_secs(15), || browser.live_updates() >= 10);
    assert_eq!(browser.eval("return document.getElementById('state').textContent"), "live");
    let times = "return [...document.querySelectorAll('[data-f=time]')].map(e => e.textContent).join()";
    let before = browser.eval(times);
    wait_until("the times to move on", Duration::from_secs(10), || browser.eval(times) != before);
    for s in ["temperature", "humidity", "air_quality"] {
        let label =
            browser.eval(&format!("return document.querySelector('[id$=_{s}] [data-f=description]').textContent"));
        assert!(!label.as_str().unwrap().is_empty(), "{s} has no description");
    }
    eprintln!("temperature at load: {first}, after: {}", browser.eval(temperature));

    // Charts: drawn by the server from the store's history plus what is not stored yet, and redrawn
    // as readings come (the page asks again at most every 2 s over an hour).
    let draws = |s: &str| {
        let js = format!(
            "const f = document.querySelector('figure[data-key=\"{device}/{s}\"]'); \
             return f && f.querySelector('img').naturalWidth > 0 ? Number(f.dataset.draws || 0) : 0"
        );
        browser.eval(&js).as_u64().unwrap_or(0)
    };
    wait_until("the temperature chart to be redrawn live", Duration::from_secs(20), || draws("temperature") >= 3);
    let (points, leftmost) = chart_line(port, &device, "temperature", "hour");
    assert!(points >= 100 && leftmost < 200.0, "the hour's history is drawn: {points} points from x = {leftmost}");
    assert!(draws("humidity") >= 1, "the humidity chart");
    browser.resize(1100, 1300);
    browser.screenshot("dashboard.png");
    // After a reload the history is still there (it is the store's, not the page's).
    browser.open(&format!("http://127.0.0.1:{port}/"));
    wait_until("the chart after a reload", Duration::from_secs(10), || draws("temperature") >= 1);
    assert!(chart_line(port, &device, "temperature", "hour").0 >= 100);
    // The span is chosen on the page; the week's chart holds the same history.
    browser.eval("document.querySelector('nav.ranges a[href=\"/?range=week\"]').click(); return 1");
    wait_until("the week's charts", Duration::from_secs(10), || {
        browser.eval("const c = document.getElementById('charts'); return c ? c.dataset.range : ''") == "week"
            && draws("temperature") >= 1
    });
    assert!(chart_line(port, &device, "temperature", "week").0 >= 5);
    // A favicon, and a phone-sized window: one chart a row, nothing wider than the screen.
    assert_eq!(curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}/favicon.ico")]).0, 200);
    browser.resize(400, 900);
    browser.open(&format!("http://127.0.0.1:{port}/"));
    wait_until("the charts at 400 px", Duration::from_secs(10), || draws("temperature") >= 1);
    browser.screenshot("dashboard-400px.png");
    let wider = browser.eval("return document.documentElement.scrollWidth - window.innerWidth");
    assert!(wider.as_i64().unwrap() <= 0, "the page is {wider} px wider than a 400 px screen");
    let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
    assert!(up.wait().unwrap().success());
}

#[test]
fn storage_page_shows_verified_and_tampered_batches_in_a_real_browser() {
    let Some(browser) = Browser::start() else { return };
    let port = free_port();
    let mut a = Agent::new("storage-ui");
    a.env = vec![("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{port}"))];
    a.run_lines("temperature", 0..10, &["--batch-count", "2"]);
    a.run_lines("humidity", 0..250, &["--batch-count", "50"]);
    let mut up = a.spawn_stdin(&[]);
    wait_for_web(port);
    let id: Value = serde_json::from_str(&a.ok(&["id", "--json"])).unwrap();
    let url = format!("http://127.0.0.1:{port}/storage?pick={}/temperature&from=0", id["device_id"].as_str().unwrap());
    let statuses = "return [...document.querySelectorAll('#batches tbody tr')].map(r => r.cells[0].textContent + ':' + r.cells[3].textContent).join(' ')";

    browser.resize(1100, 1400);
    browser.open(&url);
    assert_eq!(browser.eval(statuses), "0:verified 1:verified 2:verified 3:verified 4:verified");
    assert_eq!(browser.eval("return document.querySelectorAll('#readings tbody tr').length"), 10);
    assert!(
        browser.eval("return document.querySelector('main p.ok').textContent").as_str().unwrap().contains("verified")
    );
    // The range's chart, and the label the original gave each value.
    let chart = "const i = document.querySelector('#range-chart img'); return i ? i.complete && i.naturalWidth : 0";
    wait_until("the range's chart", Duration::from_secs(10), || browser.eval(chart).as_u64().unwrap_or(0) > 0);
    assert_eq!(browser.eval("return document.querySelector('#readings tbody tr').cells[2].textContent"), "Cold");
    browser.screenshot("storage-verified.png");
    // A long range is paged: 100 readings a page, in order.
    let humidity = format!("http://127.0.0.1:{port}/storage?pick={}/humidity&from=0", a.device());
    browser.open(&humidity);
    let first_time = "return document.querySelector('#readings tbody tr').cells[0].textContent";
    assert_eq!(browser.eval("return document.querySelectorAll('#readings tbody tr').length"), 100);
    assert!(
        browser.eval("return document.getElementById('pages').textContent").as_str().unwrap().contains("Page 1 of 3")
    );
    assert_eq!(browser.eval(first_time), "2026-01-01T00:00:00.000Z");
    browser.eval("document.querySelector('#pages a[rel=next]').click(); return 1");
    wait_until("page 2", Duration::from_secs(10), || browser.eval(first_time) == "2026-01-01T00:01:40.000Z");
    browser.screenshot("storage-paged.png");

    // The database changes one byte of batch 2: the page names it, and shows only what still verifies.
    let store = a.dir.join("store.db");
    let sql = "UPDATE batches SET sealed = CAST(substr(sealed,1,60) || CASE WHEN substr(sealed,61,1) = X'00' \
               THEN X'01' ELSE X'00' END || substr(sealed,62) AS BLOB) WHERE seq = 2";
    assert!(Command::new("sqlite3").arg(&store).arg(sql).status().unwrap().success());
    browser.open(&url);
    let after = browser.eval(statuses);
    assert!(after.as_str().unwrap().contains("2:tampered"), "{after}");
    assert!(
        browser.eval("return document.querySelector('main p.bad').textContent").as_str().unwrap().contains("Problems")
    );
    let shown = browser.eval("return document.querySelectorAll('#readings tbody tr').length").as_u64().unwrap();
    assert!(shown < 10, "readings of batches that no longer verify were shown");
    browser.screenshot("storage-tampered.png");
    // What the page's audit found is counted for monitoring.
    let (code, scraped) = curl(&[&format!("http://127.0.0.1:{port}/metrics")]);
    assert!(code == 200 && scraped.contains("edgeseal_verification_findings_total{kind=\"tampered\"}"), "{scraped}");

    // The batch size and "store now", from the page's forms.
    let text_of = |css: &str| browser.eval(&format!("return document.querySelector('{css}').textContent"));
    browser.eval(
        "document.querySelector('[name=count]').value = '5'; document.querySelector('[name=interval]').value = 'off'; \
         document.querySelector('form[data-action=batching] button').click(); return 1",
    );
    wait_until("the new batch size", Duration::from_secs(10), || {
        browser.eval("const f = document.getElementById('flash'); return f ? f.textContent : ''")
            == "Batches from now on: every 5 readings."
    });
    assert_eq!(text_of("#policy"), "every 5 readings");
    super::feed(&mut up, "temperature", 10..12);
    std::thread::sleep(Duration::from_millis(600)); // accepted (journaled within 250 ms)
    browser.eval("document.querySelector('form[data-action=store-now] button').click(); return 1");
    wait_until("stored now", Duration::from_secs(10), || {
        browser.eval("const f = document.getElementById('flash'); return f ? f.textContent : ''").as_str()
            == Some("Sealed 2 readings in 1 batch(es); they go to the store (and to peers) now.")
    });
    wait_until("12 stored readings", Duration::from_secs(10), || a.counts("temperature").0 == 12);

    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
}

#[test]
fn two_agents_pair_share_and_revoke_through_the_ui_in_a_real_browser() {
    if mosquitto_tools().is_none() {
        return;
    }
    let Some(browser) = Browser::start() else { return };
    let broker = Broker::start(free_port());
    let (pa, pb) = (free_port(), free_port());
    let agent = |tag: &str, port: u16| {
        let mut a = Agent::new(tag);
        a.env = vec![
            ("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{port}")),
            ("EDGESEAL_MQTT__BROKER".into(), broker.url()),
        ];
        a
    };
    let (alpha, bravo) = (agent("alpha", pa), agent("bravo", pb));
    let cfg = alpha.dir.parent().unwrap().join("sensor.toml");
    std::fs::write(&cfg, "[[sensor]]\nkind = \"simulated\"\nmodel = \"temperature\"\ninterval = \"200ms\"\n").unwrap();
    let log = |a: &Agent, f: &str| std::fs::File::create(a.dir.parent().unwrap().join(f)).unwrap();
    let mut up_a = alpha
        .cmd(&["--config", cfg.to_str().unwrap(), "up", "--batch-count", "1", "--for", "120s"])
        .stdout(log(&alpha, "up.out"))
        .stderr(log(&alpha, "up.err"))
        .spawn()
        .unwrap();
    let mut up_b = bravo
        .cmd(&["up", "--sensor", "none"])
        .stdout(log(&bravo, "up.out"))
        .stderr(log(&bravo, "up.err"))
        .spawn()
        .unwrap();
    for port in [pa, pb] {
        wait_for_web(port);
    }
    let (a_url, b_url) = (format!("http://127.0.0.1:{pa}"), format!("http://127.0.0.1:{pb}"));
    browser.resize(1000, 1300);
    let text_of = |css: &str| {
        browser
            .eval(&format!("const e = document.querySelector('{css}'); return e ? e.textContent : ''"))
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let click = |action: &str| {
        browser.eval(&format!("document.querySelector('form[data-action={action}] button').click(); return 1"));
    };

    // Alpha shows a code (and its fingerprint with a QR code); bravo enters it.
    browser.open(&format!("{a_url}/sharing"));
    assert!(browser.eval("return !!document.querySelector('#qr rect, #qr path')").as_bool().unwrap(), "no QR code");
    let alpha_fp = text_of("#fingerprint");
    click("pair");
    wait_until("a pairing code", Duration::from_secs(15), || !text_of("#pair-code").is_empty());
    let code = text_of("#pair-code");
    browser.screenshot("sharing-code.png");
    let alpha_tab = browser.new_tab();
    browser.open(&format!("{b_url}/sharing"));
    browser.eval(&format!("document.getElementById('join-code').value = '{code}'; return 1"));
    click("join");
    wait_until("bravo paired", Duration::from_secs(30), || text_of("#flash").contains("Paired with alpha"));
    assert!(text_of("#flash").contains(&alpha_fp), "bravo shows alpha's fingerprint: {}", text_of("#flash"));
    assert!(text_of("#peers [data-peer=alpha]").contains(&alpha_fp));

    // Alpha's page, still open on the code in the other tab, notices by itself; then alpha shares temperature.
    browser.switch_to(&alpha_tab);
    wait_until("alpha's page to show bravo", Duration::from_secs(15), || {
        text_of("#pairing").contains("Paired with bravo") && text_of("#peers").contains("bravo")
    });
    for port in [pa, pb] {
        let (_, scraped) = curl(&[&format!("http://127.0.0.1:{port}/metrics")]);
        assert!(
            scraped.contains("edgeseal_pairings_started_total 1")
                && scraped.contains("edgeseal_pairings_failed_total 0"),
            "{scraped}"
        );
    }
    wait_until("a temperature stream to share", Duration::from_secs(15), || {
        browser.open(&format!("{a_url}/sharing"));
        browser.eval("return !!document.querySelector('#share-stream option[value=temperature]')").as_bool()
            == Some(true)
    });
    click("share");
    wait_until("shared", Duration::from_secs(15), || {
        text_of("#flash").contains("bravo may read temperature from now on")
    });
    browser.screenshot("sharing-alpha.png");

    // Bravo's dashboard shows alpha's readings live, verified; its sharing page lists them.
    browser.open(&format!("{b_url}/"));
    let received = "return [...document.querySelectorAll('#streams tr')].filter(r => r.textContent.includes('from alpha')).map(r => r.querySelector('[data-f=status]').textContent).join()";
    wait_until("alpha's readings on bravo's dashboard", Duration::from_secs(30), || {
        // A signed live frame, or a stored batch's reading.
        browser.eval(received).as_str().is_some_and(|s| s.starts_with("live") || s.starts_with("verified"))
    });
    browser.screenshot("dashboard-received.png");
    browser.open(&format!("{b_url}/sharing"));
    assert!(
        text_of("#received").contains("temperature")
            && (text_of("#received").contains("live") || text_of("#received").contains("verified")),
        "{}",
        text_of("#received")
    );
    browser.screenshot("sharing-bravo.png");
    // On a phone's width every page fits, without scrolling sideways.
    browser.resize(400, 900);
    for page in ["/sharing", "/", "/storage"] {
        browser.open(&format!("{b_url}{page}"));
        let overflow =
            browser.eval("return document.documentElement.scrollWidth - document.documentElement.clientWidth");
        let widest = "return [...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > \
                      document.documentElement.clientWidth).map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 5).join(' ')";
        assert!(
            overflow.as_i64().unwrap() <= 0,
            "{page} is {overflow} px too wide for a phone: {}",
            browser.eval(widest)
        );
    }
    browser.open(&format!("{b_url}/sharing"));
    browser.screenshot("sharing-phone.png");
    browser.resize(1000, 1300);

    // Alpha revokes; its page says so and the grant shows as revoked.
    browser.open(&format!("{a_url}/sharing"));
    click("revoke");
    wait_until("revoked", Duration::from_secs(15), || text_of("#flash").contains("Revoked bravo from temperature"));
    assert!(text_of("#peers").contains("temperature (revoked)"), "{}", text_of("#peers"));
    let peers: Value = serde_json::from_str(&bravo.ok(&["peers", "--json"])).unwrap_or(Value::Null);
    assert_eq!(peers[0]["fingerprint"].as_str(), Some(alpha_fp.as_str()));

    for up in [&mut up_a, &mut up_b] {
        let _ = Command::new("kill").args(["-TERM", &up.id().to_string()]).status();
        assert!(up.wait().unwrap().success(), "{}{}", alpha.logs(), bravo.logs());
    }
}

#[test]
fn a_browser_on_another_machine_signs_in_with_the_token() {
    let Some(browser) = Browser::start() else { return };
    let port = free_port();
    let mut a = Agent::new("sign-in");
    a.env = vec![("EDGESEAL_WEB__LISTEN".into(), format!("0.0.0.0:{port}"))];
    let mut up = a.spawn_stdin(&[]);
    wait_for_web(port);
    let token = std::fs::read_to_string(a.dir.join("api-token")).unwrap().trim().to_string();
    let remote = format!("http://{}:{port}", lan_ip());

    // Not this machine: the UI asks for the token first.
    browser.open(&format!("{remote}/storage"));
    let path = "return location.pathname";
    assert_eq!(browser.eval(path), "/login");
    browser.screenshot("login.png");
    browser.eval("document.querySelector('[name=token]').value = 'wrong'; document.querySelector('form button').click(); return 1");
    wait_until("the wrong token refused", Duration::from_secs(10), || {
        browser.eval("return document.body.textContent").as_str().unwrap_or_default().contains("not this agent's token")
    });
    browser.eval(&format!(
        "document.querySelector('[name=token]').value = '{token}'; document.querySelector('form button').click(); return 1"
    ));
    wait_until("signed in", Duration::from_secs(10), || browser.eval(path) == "/");
    // Then every page and the live stream work, and no page shows the token.
    wait_until("the dashboard live", Duration::from_secs(10), || {
        browser.eval("return document.getElementById('state').textContent") == "live"
    });
    for page in ["/storage", "/sharing"] {
        browser.open(&format!("{remote}{page}"));
        assert_eq!(browser.eval(path), page);
        let html = browser.eval("return document.documentElement.outerHTML");
        assert!(!html.as_str().unwrap().contains(&token), "{page} shows the token");
    }
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
}
