//! The running agent against what users and attackers do to it: a second
//! process on its data directory, readings it can never seal, a store whose
//! rows are hostile.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use super::{Agent, BASE_TS, expected, feed, free_port, text, wait_until};

fn curl(url: &str) -> (u16, String) {
    let out = std::process::Command::new("curl").args(["-s", "-w", "\n%{http_code}", url]).output().unwrap();
    let body = text(&out.stdout);
    let (body, code) = body.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn one_writer_per_data_dir() {
    let a = Agent::new("writer");
    let mut up = a.spawn_stdin(&["--batch-count", "5"]);
    feed(&mut up, "w", 0..10);
    wait_until("10 readings stored", Duration::from_secs(30), || a.counts("w").0 == 10);

    // A second `up` on the same data directory is refused and names the first; so is `watch`.
    let holder = format!("`edgeseal up` (pid {})", up.id());
    for args in [&["up", "--sensor", "none"][..], &["watch", "--for", "1s"]] {
        let out = a.run(args);
        let said = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran beside up: {said}");
        assert!(said.contains(&holder) && said.contains("is using the data directory"), "{args:?}: {said}");
        // Each is told what to do instead: `watch` where the running agent shows what peers share.
        let instead = if args[0] == "watch" { "/api/v1/live" } else { "stop it first" };
        assert!(said.contains(instead), "{args:?}: {said}");
    }
    // Reading goes on beside it; a change goes through it.
    for args in [&["streams"][..], &["verify"], &["peers"], &["id"]] {
        a.ok(args);
    }
    let out = a.run(&["keys", "rotate", "--stream", "w"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("key epoch 1") && text(&out.stderr).contains("done by the running agent"));

    feed(&mut up, "w", 10..20);
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
    // Nothing was written twice or lost: one chain, both epochs, all readings.
    assert!(a.ok(&["verify"]).contains("w: ok (4 batches verified, head 3)"), "{}", a.ok(&["verify"]));
    assert_eq!(a.fetch("w"), expected(0..20));
    let v: Value = serde_json::from_str(&a.ok(&["streams", "--json"])).unwrap();
    assert_eq!(v[0]["epoch"], 1);
    // With `up` gone, the lock is free again: the next command runs on its own.
    a.ok(&["keys", "rotate", "--stream", "w"]);
}

#[test]
fn no_reading_and_no_store_row_can_wedge_the_agent() {
    let web = free_port();
    let mut a = Agent::new("poison");
    a.env = vec![("EDGESEAL_WEB__LISTEN".into(), format!("127.0.0.1:{web}"))];
    // One reading per batch: the live cadence, where every reading is a batch's first.
    let mut up = a.spawn_stdin(&["--batch-count", "1"]);
    let long = "x".repeat(300);
    let lines = [
        format!("{{\"stream\":\"t\",\"value\":1,\"ts\":{BASE_TS}}}"),
        // Before 1970 is a time like any other; after 9999 cannot be written, and is refused.
        "{\"stream\":\"t\",\"value\":2,\"ts\":-1}".to_string(),
        "{\"stream\":\"t\",\"value\":3,\"ts\":253402300800000}".to_string(),
        format!("{{\"stream\":\"t\",\"value\":4,\"label\":\"{long}\",\"ts\":{BASE_TS}}}"),
        format!("{{\"stream\":\"t\",\"value\":5,\"unit\":\"{long}\",\"ts\":{BASE_TS}}}"),
        format!("{{\"stream\":\"t\",\"value\":6,\"label\":\"Normal\",\"ts\":{}}}", BASE_TS + 1000),
        format!("{{\"stream\":\"u\",\"value\":7,\"ts\":{}}}", BASE_TS + 2000),
    ];
    up.stdin.as_mut().unwrap().write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    // A line that is not UTF-8 is skipped and counted, and the lines after it are read.
    up.stdin.as_mut().unwrap().write_all(b"{\"stream\":\"t\",\"value\":8,\"unit\":\"\xff\"}\n").unwrap();
    wait_until("the good readings stored", Duration::from_secs(30), || a.counts("t").0 == 3);
    wait_until("the web server", Duration::from_secs(15), || std::net::TcpStream::connect(("127.0.0.1", web)).is_ok());

    // The store gains rows no agent wrote: any times, any bytes.
    let dev = a.device();
    let db = a.dir.join("store.db");
    let hostile = format!(
        "INSERT INTO batches (device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed) VALUES \
         (x'{dev}', 't', 7, -9223372036854775808, 9223372036854775807, 99, 0, zeroblob(32), x'4553010100'), \
         (x'{dev}', 'evil', 0, 9223372036854775807, -9223372036854775808, 1, 0, zeroblob(32), randomblob(300));"
    );
    let sql = std::process::Command::new("sqlite3").arg(&db).arg(hostile).output().unwrap();
    assert!(sql.status.success(), "{}", text(&sql.stderr));

    // Every reader answers: the CLI, the API and the page, with the damage named, never a panic.
    let streams = a.ok(&["streams", "--json"]);
    assert!(streams.contains("\"stream\":\"evil\""), "{streams}");
    let out = a.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("tampered"), "{}", text(&out.stdout));
    let out = a.run(&["fetch", "--stream", "t", "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fetched: Value = serde_json::from_slice(&out.stdout).unwrap();
    let times: Vec<&str> = fetched.as_array().unwrap().iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(times.contains(&"1969-12-31T23:59:59.999Z"), "{times:?}");
    // The first reading of a batch keeps its label.
    assert!(fetched.as_array().unwrap().iter().any(|r| r["label"] == "Normal"), "{fetched}");
    let base = format!("http://127.0.0.1:{web}");
    for path in ["/api/v1/streams", "/api/v1/streams/t/readings", "/api/v1/streams/evil/readings", "/"] {
        let (code, body) = curl(&format!("{base}{path}"));
        assert_eq!(code, 200, "{path}: {body}");
    }
    let (code, page) = curl(&format!("{base}/storage?pick={dev}/t"));
    assert!(code == 200 && page.contains("1969-12-31T23:59:59.999Z") && page.contains("tampered"), "{code} {page}");

    // What was refused is counted for monitoring, by reason; the charts of both streams draw.
    let (code, scraped) = curl(&format!("{base}/metrics"));
    assert_eq!(code, 200);
    for want in [
        "edgeseal_readings_refused_total{reason=\"time_out_of_range\"} 1",
        "edgeseal_readings_refused_total{reason=\"text_too_long\"} 2",
        "edgeseal_readings_refused_total{reason=\"not_a_reading\"} 1",
        "edgeseal_tentative_bytes 0",
    ] {
        assert!(scraped.contains(want), "{want} missing:\n{scraped}");
    }
    for stream in ["t", "evil"] {
        let (code, svg) = curl(&format!("{base}/charts/{dev}/{stream}?from=0&to=now"));
        assert!(code == 200 && svg.starts_with("<svg"), "{stream}: {code} {svg}");
    }

    // The agent went on all along, and says what it refused.
    feed(&mut up, "t", 10..12);
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
    let logs = a.logs();
    assert!(logs.contains("3 refused"), "{logs}");
    assert!(logs.contains("outside the years 0000-9999") && logs.contains("label is 300 bytes long"), "{logs}");
    assert!(logs.contains("line 8 is not UTF-8 text; skipped"), "{logs}");
    // And it starts again: nothing it accepted waits that it cannot seal.
    let out = a.ok(&["up", "--sensor", "none"]);
    assert!(out.contains("stopped: 0 readings accepted"), "{out}");
    let values = |stream| a.fetch(stream).into_iter().map(|(_, v)| v).collect::<Vec<_>>();
    assert_eq!(values("t"), [1.0, 2.0, 6.0, 1.0, 1.1]);
    assert_eq!(values("u"), [7.0]);
}

#[test]
fn a_stream_keeps_what_retention_says_and_verify_tells_the_cut_from_an_attack() {
    let mut a = Agent::new("keep");
    a.env =
        vec![("EDGESEAL_RETENTION__KEEP".into(), "2s".into()), ("EDGESEAL_RETENTION__EVERY".into(), "300ms".into())];
    let mut up = a.spawn_stdin(&["--batch-count", "5"]);
    // A batch every 300 ms or so, for about five seconds: the first ones are more than 2 s old long before the end.
    for i in 0..16 {
        feed(&mut up, "k", i * 5..(i + 1) * 5);
        std::thread::sleep(Duration::from_millis(300));
    }
    wait_until("a cut", Duration::from_secs(20), || a.logs().contains("the stream now starts at batch"));
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
    // What the record removed is no gap: the stream starts later, verified to its head.
    let out = a.run(&["verify", "--json"]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let k = &v["streams"][0];
    let start = k["start"].as_u64().unwrap();
    assert!(start > 0 && start < 15, "{v}");
    assert_eq!(k["verified"].as_u64().unwrap(), 16 - start);
    assert!(a.ok(&["verify"]).contains("from batch"));
    // The readings kept are the newest, in order; `streams` counts only them.
    let kept = a.fetch("k");
    assert_eq!(kept, super::expected(start as i64 * 5..80));
    assert_eq!(a.counts("k").0, 80 - start * 5);
    // A batch deleted without a record is still caught, and so is the record's removal.
    let db = a.dir.join("store.db");
    let sql = |q: &str| assert!(std::process::Command::new("sqlite3").arg(&db).arg(q).status().unwrap().success());
    sql(&format!("DELETE FROM batches WHERE stream = 'k' AND seq = {}", start + 1));
    let out = a.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stdout).contains(&format!("batch {}: missing (gap)", start + 1)), "{}", text(&out.stdout));
    sql("DELETE FROM retention");
    let said = text(&a.run(&["verify"]).stdout);
    assert!(said.contains(&format!("batches 0..={}: missing (gap)", start - 1)), "{said}");
}
