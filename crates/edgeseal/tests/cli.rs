//! The `edgeseal` binary end to end: CLI transcripts, crash and outage
//! survival, rollback detection. Each test uses its own data directory.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_edgeseal");
const BASE_TS: i64 = 1_767_225_600_000;
/// [`BASE_TS`] in RFC 3339, for `share --from` (a grant opens readings from its time on).
const BASE_RFC: &str = "2026-01-01T00:00:00Z";

#[path = "cli/runtime.rs"]
mod runtime;
#[path = "cli/sharing.rs"]
mod sharing;
#[path = "cli/web.rs"]
mod web;

#[test]
fn cli_transcripts() {
    trycmd::TestCases::new()
        .register_bin("edgeseal", std::path::Path::new(BIN))
        .env("EDGESEAL_BROKER__LISTEN", "")
        .env("EDGESEAL_WEB__LISTEN", "")
        .case("tests/cmd/*.md");
}

fn tempdir(tag: &str) -> PathBuf {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    let dir = std::env::temp_dir().join(format!("edgeseal-cli-{tag}-{:x}", u64::from_le_bytes(b)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An agent's data directory plus the store it uses.
struct Agent {
    dir: PathBuf,
    store: Option<String>,
    broker: Option<String>,
    /// Environment over the defaults below (e.g. EDGESEAL_MQTT__CA).
    env: Vec<(String, String)>,
}

impl Agent {
    fn new(tag: &str) -> Agent {
        let dir = tempdir(tag).join("data");
        let a = Agent { dir, store: None, broker: None, env: Vec::new() };
        a.ok(&["init", "--name", tag]);
        a
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--data-dir").arg(&self.dir);
        if let Some(s) = &self.store {
            c.arg("--store").arg(s);
        }
        if let Some(b) = &self.broker {
            c.arg("--broker").arg(b);
        }
        c.args(args)
            .env_remove("EDGESEAL_PASSPHRASE")
            .env("EDGESEAL_OUTBOX__RETRY_MAX", "500ms")
            .env("EDGESEAL_OUTBOX__CHECKPOINT_EVERY", "500ms")
            .env("EDGESEAL_STORE_TIMEOUT", "2s")
            // No embedded broker unless a test asks for one: 1883 may be anyone's.
            .env("EDGESEAL_BROKER__LISTEN", "")
            .env("EDGESEAL_WEB__LISTEN", "")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// This agent's device id (`id --json`).
    fn device(&self) -> String {
        let v: Value = serde_json::from_str(&self.ok(&["id", "--json"])).unwrap();
        v["device_id"].as_str().unwrap().to_string()
    }

    /// Starts `up` reading JSON lines from a pipe; output goes to files in the data dir's parent.
    fn spawn_stdin(&self, extra: &[&str]) -> Child {
        let log = self.dir.parent().unwrap();
        let mut args = vec!["up", "--sensor", "stdin"];
        args.extend_from_slice(extra);
        self.cmd(&args)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(log.join("up.out")).unwrap())
            .stderr(std::fs::File::create(log.join("up.err")).unwrap())
            .spawn()
            .unwrap()
    }

    /// Runs `up` over the given lines of `stream` until their end.
    fn run_lines(&self, stream: &str, range: std::ops::Range<i64>, extra: &[&str]) {
        let mut up = self.spawn_stdin(extra);
        feed(&mut up, stream, range);
        drop(up.stdin.take());
        assert!(up.wait().unwrap().success(), "{}", self.logs());
    }

    /// A log file the test sent an agent's output to, beside its data dir.
    fn logs_of(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.parent().unwrap().join(file)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let log = self.dir.parent().unwrap();
        format!(
            "{}{}",
            std::fs::read_to_string(log.join("up.out")).unwrap_or_default(),
            std::fs::read_to_string(log.join("up.err")).unwrap_or_default()
        )
    }

    /// `streams --json` for one stream: (stored readings, pending readings, outbox batches).
    fn counts(&self, stream: &str) -> (u64, u64, u64) {
        let out = self.run(&["streams", "--json"]);
        if !out.status.success() {
            eprintln!("streams failed: {}", text(&out.stderr));
            return (0, 0, 0);
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let row = v.as_array().unwrap().iter().find(|r| r["stream"] == stream && r["own"] == true).cloned();
        let n = |k: &str| row.as_ref().and_then(|r| r[k].as_u64()).unwrap_or(0);
        (n("readings"), n("pending_readings"), n("outbox_batches"))
    }

    /// Every reading of a stream as (ts, value), after verification.
    fn fetch(&self, stream: &str) -> Vec<(i64, f64)> {
        self.fetch_from(stream, None)
    }

    /// Every reading of a stream of `device` (default: this agent) as (ts, value), after verification.
    fn fetch_from(&self, stream: &str, device: Option<&str>) -> Vec<(i64, f64)> {
        let mut args = vec!["fetch", "--stream", stream, "--format", "json"];
        if let Some(d) = device {
            args.extend(["--device", d]);
        }
        let out = self.ok(&args);
        let v: Value = serde_json::from_str(&out).unwrap();
        v.as_array().unwrap().iter().map(|r| (r["ts_ms"].as_i64().unwrap(), r["value"].as_f64().unwrap())).collect()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn line(stream: &str, i: i64) -> String {
    format!("{{\"stream\":\"{stream}\",\"value\":{},\"unit\":\"u\",\"ts\":{}}}\n", i as f64 / 10.0, BASE_TS + i * 1000)
}

fn feed(child: &mut Child, stream: &str, range: std::ops::Range<i64>) {
    let stdin = child.stdin.as_mut().unwrap();
    let mut buf = String::new();
    for i in range {
        buf.push_str(&line(stream, i));
    }
    stdin.write_all(buf.as_bytes()).unwrap();
    stdin.flush().unwrap();
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn expected(range: std::ops::Range<i64>) -> Vec<(i64, f64)> {
    range.map(|i| (BASE_TS + i * 1000, i as f64 / 10.0)).collect()
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok);
}

#[test]
fn kill_9_loses_no_accepted_reading() {
    let a = Agent::new("kill9");
    let mut up = a.spawn_stdin(&["--batch-count", "100", "--batch-interval", "off"]);
    feed(&mut up, "k", 0..450);
    // Accepted = journaled: 400 in four sealed batches, 50 in the open batch.
    wait_until("450 readings accepted", Duration::from_secs(30), || {
        let (stored, pending, outbox) = a.counts("k");
        stored + pending + outbox * 100 == 450
    });
    up.kill().unwrap();
    up.wait().unwrap();
    // A restart with no sensors resumes the open batch, seals and stores it, and stops.
    let out = a.ok(&["up", "--sensor", "none"]);
    assert!(out.contains("stopped:"), "{out}");
    assert_eq!(a.fetch("k"), expected(0..450));
    assert!(a.ok(&["verify"]).contains("k: ok"));
}

#[test]
fn sigterm_seals_and_stores_the_open_batch() {
    let a = Agent::new("term");
    let mut up = a.spawn_stdin(&["--batch-count", "1000", "--batch-interval", "off"]);
    feed(&mut up, "t", 0..300);
    wait_until("300 readings accepted", Duration::from_secs(30), || a.counts("t").1 == 300);
    sigterm(&up);
    let status = up.wait().unwrap();
    assert!(status.success(), "{}", a.logs());
    assert!(a.logs().contains("300 readings accepted"), "{}", a.logs());
    assert_eq!(a.counts("t"), (300, 0, 0));
    assert_eq!(a.fetch("t"), expected(0..300));
    // The README's `fetch --from -10m` on a store whose newest reading is older: no false
    // alarm, and `--strict` agrees.
    let out = a.run(&["fetch", "--stream", "t", "--from", "-10m", "--strict"]);
    let said = text(&out.stderr);
    assert!(out.status.success() && !said.contains("truncated") && !said.contains("warning"), "{said}");
    assert!(said.contains("no readings of t in that range"), "{said}");
}

#[test]
fn end_of_input_stops_the_agent_and_blobs_round_trip() {
    let a = Agent::new("blob");
    let mut up = a.spawn_stdin(&["--batch-count", "2"]);
    let img: Vec<u8> = (0..=255u8).collect();
    let b64 = base64_encode(&img);
    // A flood of lines that are no reading is said once, not a line each.
    let flood = "not json\n".repeat(300);
    let lines = format!(
        "{{\"stream\":\"cam\",\"blob\":\"{b64}\",\"media_type\":\"image/png\",\"ts\":{BASE_TS}}}\n{flood}{{\"stream\":\"cam\",\"blob\":\"\",\"media_type\":\"image/png\",\"ts\":{}}}\n",
        BASE_TS + 1
    );
    up.stdin.as_mut().unwrap().write_all(lines.as_bytes()).unwrap();
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success(), "{}", a.logs());
    assert!(a.logs().contains("line 2: not a reading"), "{}", a.logs());
    assert_eq!(a.logs().matches("not a reading").count(), 1, "{}", a.logs());
    assert!(a.logs().contains("300 read errors"), "every one is counted: {}", a.logs());
    let out = a.ok(&["fetch", "--stream", "cam", "--format", "json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["data_base64"], b64.as_str());
    assert_eq!(v[0]["media_type"], "image/png");
    assert_eq!(v[1]["data_base64"], "");
}

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n =
            (u32::from(c[0]) << 16) | (u32::from(*c.get(1).unwrap_or(&0)) << 8) | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn verify_all_devices_audits_every_device_in_the_store() {
    // Two agents, not paired, write to one store; a third device's rows arrive from nowhere.
    let a = Agent::new("fleet-a");
    let store = format!("sqlite://{}", a.dir.join("store.db").display());
    let mut b = Agent::new("fleet-b");
    b.store = Some(store.clone());
    a.run_lines("t", 0..6, &["--batch-count", "2"]);
    b.run_lines("t", 0..4, &["--batch-count", "2"]);
    b.run_lines("u", 0..2, &["--batch-count", "2"]);
    let (da, db) = (a.device(), b.device());
    let out = a.ok(&["verify", "--all-devices"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], format!("{da} (fleet-a, this agent): ok (1 streams, 3 batches verified)"));
    assert_eq!(lines[1], format!("{db}: ok (2 streams, 3 batches verified)"));
    assert_eq!(lines[2], "2 devices: 2 ok, 0 with problems");
    // B's batch 0 of t is altered in the store: B alone has a problem, and the exit code says so.
    let sql = format!(
        "UPDATE batches SET sealed = CAST(substr(sealed,1,60) || CASE WHEN substr(sealed,61,1) = X'00' \
         THEN X'01' ELSE X'00' END || substr(sealed,62) AS BLOB) WHERE device = x'{db}' AND stream = 't' AND seq = 0"
    );
    assert!(Command::new("sqlite3").arg(a.dir.join("store.db")).arg(sql).status().unwrap().success());
    let out = a.run(&["verify", "--all-devices"]);
    assert_eq!(out.status.code(), Some(3));
    let shown = text(&out.stdout);
    assert!(shown.contains(&format!("{da} (fleet-a, this agent): ok")), "{shown}");
    assert!(shown.contains(&format!("{db}: 1 problem(s) in 1 of 2 streams (t; 2 of 3 batches verified)")), "{shown}");
    assert!(shown.ends_with("2 devices: 1 ok, 1 with problems\n"), "{shown}");
    let v: Value = serde_json::from_slice(&a.run(&["verify", "--all-devices", "--json"]).stdout).unwrap();
    assert_eq!(v["ok"], false);
    let devices: Vec<(&str, bool)> =
        v["devices"].as_array().unwrap().iter().map(|d| (d["device"].as_str().unwrap(), d["ok"] == true)).collect();
    assert_eq!(devices, [(da.as_str(), true), (db.as_str(), false)]);
    // It audits the whole store: no --stream or --device with it.
    assert_eq!(a.run(&["verify", "--all-devices", "--stream", "t"]).status.code(), Some(2));
}

#[test]
fn rollback_of_the_whole_database_is_detected() {
    let a = Agent::new("rollback");
    let db = a.dir.join("store.db");
    let backup = a.dir.parent().unwrap().join("store.db.old");
    let run_batch = |range| a.run_lines("r", range, &["--batch-count", "10"]);
    run_batch(0..30);
    std::fs::copy(&db, &backup).unwrap();
    run_batch(30..60);
    assert!(a.ok(&["verify"]).contains("r: ok (6 batches verified, head 5)"));
    // The operator restores last week's backup.
    std::fs::copy(&backup, &db).unwrap();
    for stale in ["store.db-wal", "store.db-shm"] {
        let _ = std::fs::remove_file(a.dir.join(stale));
    }
    let out = a.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3));
    let report = text(&out.stdout);
    assert!(report.contains("rollback: the store ends at batch 2, but batch 5 was seen before"), "{report}");
    let out = a.run(&["fetch", "--stream", "r", "--strict"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    // Without --strict, fetch prints the good data and warns.
    let out = a.run(&["fetch", "--stream", "r", "--format", "csv"]);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("rollback"));
    assert_eq!(text(&out.stdout).lines().count(), 31);
}

#[test]
fn checkpoint_rows_that_vanish_are_noticed() {
    let a = Agent::new("cp-gone");
    a.run_lines("c", 0..30, &["--batch-count", "10"]);
    assert!(a.ok(&["verify"]).contains("c: ok (3 batches verified, head 2)"));
    // Every batch stays; only the signed checkpoints go.
    let db = a.dir.join("store.db");
    assert!(Command::new("sqlite3").arg(&db).arg("DELETE FROM checkpoints").status().unwrap().success());
    let out = a.run(&["verify"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    let report = text(&out.stdout);
    assert!(
        report.contains("checkpoints removed: the store holds none, but one naming batch 2 was seen before"),
        "{report}"
    );
}

/// The agent's signed batches cover the unsigned ones before them by hash
/// (format v2), so a store that deletes or replaces one batch costs only
/// that batch: `fetch` still shows every other reading as verified.
#[test]
fn batches_deleted_from_the_store_cost_only_themselves() {
    let a = Agent::new("local-damage");
    // Two runs of the agent: rounds of many batches, each ended by a signed one.
    a.run_lines("d", 0..20, &["--batch-count", "1"]);
    a.run_lines("d", 20..40, &["--batch-count", "1"]);
    let db = a.dir.join("store.db");
    let sql = |q: &str| assert!(Command::new("sqlite3").arg(&db).arg(q).status().unwrap().success(), "{q}");
    let signed = |seq: u64| {
        let out = Command::new("sqlite3")
            .arg(&db)
            .arg(format!("SELECT hex(substr(sealed, 5, 1)) FROM batches WHERE seq = {seq}"))
            .output()
            .unwrap();
        text(&out.stdout).trim() == "01"
    };
    // One unsigned batch of the first run, and the signed batch that ends its round.
    let unsigned = (0..19).find(|s| !signed(*s)).expect("a round of several batches");
    let signed_one = (unsigned..20).find(|s| signed(*s)).unwrap();
    sql(&format!("DELETE FROM batches WHERE seq IN ({unsigned}, {signed_one})"));
    let out = a.run(&["fetch", "--stream", "d", "--format", "csv"]);
    let shown: Vec<String> = text(&out.stdout).lines().skip(1).map(|l| l.to_string()).collect();
    assert_eq!(shown.len(), 38, "{}", text(&out.stderr));
    let report = text(&a.run(&["verify"]).stdout);
    assert!(
        report.contains(&format!("batch {unsigned}: missing"))
            && report.contains(&format!("batch {signed_one}: missing")),
        "{report}"
    );
    assert!(!report.contains("unsigned and not covered"), "{report}");
}

/// `keys export` writes the identity sealed under a backup passphrase (0600,
/// never over an existing file); `init --from` on new hardware restores it,
/// and the restored agent reads what the old one stored and goes on with the
/// same streams after it. Without the passphrase, or with a wrong one, the
/// backup opens nothing.
#[test]
fn a_key_backup_restores_the_agent_on_new_hardware() {
    let shared = tempdir("backup-store").join("store.db");
    let url = format!("sqlite://{}", shared.display());
    let mut old = Agent::new("backup-old");
    old.store = Some(url.clone());
    old.run_lines("t", 0..10, &["--batch-count", "5"]);
    assert!(old.logs().contains("keys export"), "up says why the keystore needs a backup: {}", old.logs());
    let backup = old.dir.parent().unwrap().join("agent.backup");
    let with_pass =
        |a: &Agent, args: &[&str], pass: &str| a.cmd(args).env("EDGESEAL_BACKUP_PASSPHRASE", pass).output().unwrap();
    let out = with_pass(&old, &["keys", "export", "--to", backup.to_str().unwrap()], "correct horse");
    assert!(out.status.success(), "{}", text(&out.stderr));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
    // The keystore's secret is not in the backup in the clear.
    let keystore: Value =
        serde_json::from_str(&std::fs::read_to_string(old.dir.join("keystore.json")).unwrap()).unwrap();
    let secret = keystore["secret"].as_str().unwrap();
    assert!(!std::fs::read_to_string(&backup).unwrap().contains(secret));
    let again = with_pass(&old, &["keys", "export", "--to", backup.to_str().unwrap()], "correct horse");
    assert!(!again.status.success(), "an existing backup was overwritten");

    // New hardware: a fresh data dir, the same store.
    let new = Agent { dir: tempdir("backup-new").join("data"), store: Some(url), broker: None, env: Vec::new() };
    let from = ["init", "--from", backup.to_str().unwrap()];
    let wrong = with_pass(&new, &from, "wrong horse");
    assert!(!wrong.status.success() && text(&wrong.stderr).contains("passphrase"), "{}", text(&wrong.stderr));
    assert!(!new.dir.join("keystore.json").exists());
    let out = with_pass(&new, &from, "correct horse");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(new.ok(&["id", "--json"]), old.ok(&["id", "--json"]), "the same identity and name");
    assert_eq!(new.fetch("t"), expected(0..10));
    new.run_lines("t", 10..20, &["--batch-count", "5"]);
    assert_eq!(new.fetch("t"), expected(0..20));
    assert!(new.ok(&["verify"]).contains("t: ok (4 batches verified, head 3)"), "{}", new.ok(&["verify"]));
}

/// `config show` prints every effective setting as TOML, secrets as `***`;
/// `--origins` says where each came from; a misspelt variable is named with
/// the setting it missed; a file that is not UTF-8 is an error (exit 2).
#[test]
fn config_show_is_the_whole_configuration_and_says_where_it_came_from() {
    let dir = tempdir("config-show");
    let file = dir.join("edgeseal.toml");
    std::fs::write(&file, "[mqtt]\nbroker = \"mqtt://b.local\"\npassword = \"hunter2\"\n").unwrap();
    let show = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--config")
            .arg(&file)
            .args(["--store", "postgres://u:pw@db.local/x"])
            .args(["config", "show"])
            .args(extra);
        c.env("EDGESEAL_OUTBOX__RETRY_MAX", "3s").env("EDGESEAL_BATCH_COUNT", "5").output().unwrap()
    };
    let out = show(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let toml = text(&out.stdout);
    for section in ["[batch]", "[outbox]", "[mqtt]", "[broker]", "[web]", "[lcd]", "[grovepi]", "[[sensor]]"] {
        assert!(toml.contains(section), "{section} missing:\n{toml}");
    }
    assert!(toml.contains("password = \"***\"") && !toml.contains("hunter2") && !toml.contains(":pw@"), "{toml}");
    assert!(
        text(&out.stderr).contains("EDGESEAL_BATCH_COUNT is not a setting")
            && text(&out.stderr).contains("EDGESEAL_BATCH__COUNT")
    );
    let lines = text(&show(&["--origins"]).stdout);
    for want in [
        "batch.count = 1000  # default",
        "mqtt.broker = \"mqtt://b.local\"  # file",
        "outbox.retry_max = \"3s\"  # env EDGESEAL_OUTBOX__RETRY_MAX",
        "store = \"postgres://u:***@db.local/x\"  # flag",
    ] {
        assert!(lines.contains(want), "{want:?} missing:\n{lines}");
    }
    std::fs::write(&file, b"name = \"caf\xe9\"\n").unwrap();
    let out = show(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("is not valid UTF-8"), "{}", text(&out.stderr));
}

#[test]
fn times_are_shown_in_the_zone_asked_for() {
    let a = Agent::new("tz");
    a.run_lines("t", 0..3, &["--batch-count", "3"]);
    // UTC by default, in every form.
    let csv = a.ok(&["fetch", "--stream", "t", "--format", "csv"]);
    assert!(csv.contains(",2026-01-01T00:00:00.000Z,"), "{csv}");
    // --tz: an IANA zone, in CSV, JSON and the streams table alike.
    let csv = a.ok(&["fetch", "--stream", "t", "--format", "csv", "--tz", "Europe/Paris"]);
    assert!(csv.contains(",2026-01-01T01:00:00.000+01:00,"), "{csv}");
    let json: Value =
        serde_json::from_str(&a.ok(&["--tz", "Europe/Paris", "fetch", "--stream", "t", "--format", "json"])).unwrap();
    assert_eq!(
        (json[1]["time"].as_str(), json[1]["ts_ms"].as_i64()),
        (Some("2026-01-01T01:00:01.000+01:00"), Some(BASE_TS + 1000))
    );
    assert!(a.ok(&["streams", "--tz", "+05:30"]).contains("2026-01-01T05:30:02.000+05:30"));
    // ui.time_zone from the environment (or the file); local is TZ.
    let mut c = a.cmd(&["streams", "--json"]);
    c.env("EDGESEAL_UI__TIME_ZONE", "local").env("TZ", "Asia/Tokyo");
    let out = c.output().unwrap();
    assert!(text(&out.stdout).contains("\"first\":\"2026-01-01T09:00:00.000+09:00\""), "{}", text(&out.stdout));
    // What is shown reads back: --from in the shown form selects the same readings.
    let two = a.ok(&["fetch", "--stream", "t", "--format", "csv", "--from", "2026-01-01T01:00:01+01:00"]);
    assert_eq!(two.lines().count(), 3, "{two}");
    // A zone that does not exist is a configuration error naming it.
    let out = a.run(&["fetch", "--stream", "t", "--tz", "Mars/Olympus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("ui.time_zone: \"Mars/Olympus\" is not a time zone"), "{}", text(&out.stderr));
}

#[test]
fn key_rotation_keeps_old_batches_readable() {
    let a = Agent::new("rotate");
    let run_batch = |range| a.run_lines("s", range, &["--batch-count", "5"]);
    run_batch(0..10);
    assert!(a.ok(&["keys", "rotate", "--stream", "s"]).contains("key epoch 1"));
    run_batch(10..20);
    let v: Value = serde_json::from_str(&a.ok(&["streams", "--json"])).unwrap();
    assert_eq!(v[0]["epoch"], 1);
    assert_eq!(a.fetch("s"), expected(0..20));
    // Time ranges select readings.
    let from = format!("{}", BASE_TS + 3000);
    let to = format!("{}", BASE_TS + 12_000);
    let out = a.ok(&["fetch", "--stream", "s", "--from", &from, "--to", &to, "--format", "csv"]);
    assert_eq!(out.lines().count(), 1 + 10);
}

/// A TCP relay standing in for the network path to the database, so a test
/// can take the database away and bring it back on the same address.
struct Relay {
    port: u16,
    target: String,
    handle: Option<(std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let mut r = Relay { port: 0, target: target.to_string(), handle: None };
        r.up();
        r
    }

    fn up(&mut self) {
        let listener = std::net::TcpListener::bind(("127.0.0.1", self.port)).unwrap();
        self.port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target = self.target.clone();
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut conns: Vec<std::net::TcpStream> = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        inbound.set_nonblocking(false).unwrap();
                        let Ok(outbound) = std::net::TcpStream::connect(&target) else {
                            continue;
                        };
                        conns.push(inbound.try_clone().unwrap());
                        conns.push(outbound.try_clone().unwrap());
                        pipe(inbound.try_clone().unwrap(), outbound.try_clone().unwrap());
                        pipe(outbound, inbound);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for c in conns {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        });
        self.handle = Some((stop, handle));
    }

    /// Closes the listener and every relayed connection.
    fn down(&mut self) {
        if let Some((stop, h)) = self.handle.take() {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            h.join().unwrap();
        }
    }
}

fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

fn postgres_url() -> Option<String> {
    let url =
        std::env::var("EDGESEAL_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let reachable = std::net::TcpStream::connect(host_port(&url)).is_ok();
    available(&format!("PostgreSQL at {}", host_port(&url)), reachable).then_some(url)
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").unwrap().1;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let hp = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hp.contains(':') { hp.to_string() } else { format!("{hp}:5432") }
}

/// `postgres://user@127.0.0.1:5432/db` with the host and port replaced.
fn via(url: &str, port: u16) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap());
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{user}127.0.0.1:{port}{path}")
}

#[test]
fn database_outage_loses_nothing_and_duplicates_nothing() {
    let Some(direct) = postgres_url() else { return };
    let mut relay = Relay::start(&host_port(&direct));
    let mut a = Agent::new("outage");
    a.store = Some(via(&direct, relay.port));
    let mut up = a.spawn_stdin(&["--batch-count", "10", "--batch-interval", "off"]);
    let watch = Agent { dir: a.dir.clone(), store: Some(direct.clone()), broker: None, env: Vec::new() };

    feed(&mut up, "o", 0..50);
    wait_until("50 readings stored", Duration::from_secs(30), || watch.counts("o") == (50, 0, 0));

    relay.down();
    feed(&mut up, "o", 50..150);
    wait_until("10 batches waiting in the outbox", Duration::from_secs(30), || watch.counts("o") == (50, 0, 10));
    wait_until("the agent to notice the outage", Duration::from_secs(30), || {
        a.logs().contains("Keeping them in the local outbox")
    });

    relay.up();
    wait_until("the outbox drained", Duration::from_secs(60), || watch.counts("o") == (150, 0, 0));
    sigterm(&up);
    assert!(up.wait().unwrap().success(), "{}", a.logs());
    let logs = a.logs();
    assert!(logs.contains("Keeping them in the local outbox"), "{logs}");
    assert!(logs.contains("the store is reachable again"), "{logs}");
    if let Some(password) = direct
        .split_once("://")
        .and_then(|(_, r)| r.split_once('@'))
        .and_then(|(u, _)| u.split_once(':'))
        .map(|(_, p)| p)
    {
        assert!(!logs.contains(&format!(":{password}@")), "a password was logged");
    }
    assert_eq!(watch.fetch("o"), expected(0..150));
    assert!(watch.ok(&["verify"]).contains("o: ok (15 batches verified"));
}

#[test]
fn secrets_stay_out_of_files_and_output() {
    let a = Agent::new("secrets");
    let keystore = a.dir.join("keystore.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&keystore).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&a.dir).unwrap().permissions().mode() & 0o777, 0o700);
    let ks: Value = serde_json::from_str(&std::fs::read_to_string(&keystore).unwrap()).unwrap();
    let secret = ks["secret"].as_str().unwrap().to_string();
    let mut up = a.spawn_stdin(&["--batch-count", "1"]);
    feed(&mut up, "x", 0..3);
    drop(up.stdin.take());
    assert!(up.wait().unwrap().success());
    let mut seen = a.logs();
    for args in [&["id"][..], &["id", "--json"], &["streams"], &["verify", "--json"], &["config", "show"]] {
        seen.push_str(&a.ok(args));
    }
    assert!(!seen.contains(&secret[..20]), "a secret key was printed");
    for f in ["state.db", "store.db"] {
        let mode = std::fs::metadata(a.dir.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    // A keystore others can read is refused.
    std::fs::set_permissions(&keystore, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = a.run(&["streams"]);
    assert!(text(&out.stderr).contains("chmod 600"), "{}", text(&out.stderr));
}

#[test]
fn grovepi_sensors_against_the_emulated_board() {
    let a = Agent::new("grove");
    let config = a.dir.parent().unwrap().join("grove.toml");
    std::fs::write(
        &config,
        r#"
[batch]
count = 5

[[sensor]]
kind = "grovepi"
model = "dht22"
port = "D4"
interval = "100ms"

[[sensor]]
kind = "grovepi"
model = "air_quality"
port = "A0"
interval = "100ms"

[grovepi]
bus = "emulated"

[lcd]
enabled = true
streams = ["temperature", "air_quality"]
refresh = "200ms"
"#,
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = a.run(&["--config", cfg, "up", "--for", "3500ms"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("grovepi:  firmware 1.3.0 on emulated"), "{stdout}");
    assert!(stdout.contains("sensor:   grovepi dht22 on D4 → temperature, humidity every 100ms"), "{stdout}");
    assert!(stdout.contains("lcd:      temperature, air_quality"), "{stdout}");
    // The emulated DHT fails now and then, as the real one does: counted and logged, never fatal.
    assert!(stderr.contains("dht22 on D4 returned an unusable value (the DHT read failed (NaN))"), "{stderr}");
    assert!(!stdout.contains(" 0 read errors"), "{stdout}");

    let report = a.ok(&["verify"]);
    for s in ["air_quality: ok", "humidity: ok", "temperature: ok"] {
        assert!(report.contains(s), "{report}");
    }
    let temps = a.fetch("temperature");
    assert!(temps.len() >= 20, "{}", temps.len());
    assert!(temps.iter().all(|(_, t)| (10.0..35.0).contains(t) && ((t * 10.0).round() - t * 10.0).abs() < 1e-9));
    let aq = a.fetch("air_quality");
    assert!(aq.iter().all(|(_, v)| v.fract() == 0.0 && (0.0..=1023.0).contains(v)));

    let listing = a.ok(&["--config", cfg, "sensors", "list"]);
    assert!(listing.contains("grovepi dht22 on D4"), "{listing}");
    assert!(listing.lines().any(|l| l.contains("humidity") && l.contains("%RH at ")), "{listing}");
}

/// mosquitto, its clients and curl, or None (skip) unless services are required.
/// Whether what a test needs (`what`) is there: if not, the test skips, or fails where
/// services are required (`EDGESEAL_REQUIRE_SERVICES=1`, as in `.ci/run`).
fn available(what: &str, have: bool) -> bool {
    if !have {
        if std::env::var("EDGESEAL_REQUIRE_SERVICES").as_deref() == Ok("1") {
            panic!("{what} is required but not there");
        }
        eprintln!("skipping: {what} is not there (set EDGESEAL_REQUIRE_SERVICES=1 to fail instead)");
    }
    have
}

fn mosquitto_tools() -> Option<()> {
    let have = ["mosquitto", "mosquitto_pub", "mosquitto_sub", "curl"].iter().all(|t| {
        Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().is_ok_and(|o| o.status.success())
    });
    available("mosquitto (with mosquitto-clients) and curl", have).then_some(())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn a_lost_state_db_resumes_after_the_stored_head() {
    let a = Agent::new("resume");
    a.run_lines("s", 0..20, &["--batch-count", "5"]);
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(a.dir.join(f));
    }
    a.run_lines("s", 20..40, &["--batch-count", "5"]);
    assert!(a.logs().contains("continuing after batch 3 found in the store"), "{}", a.logs());
    assert!(a.ok(&["verify"]).contains("s: ok (8 batches verified, head 7)"));
    assert_eq!(a.fetch("s"), expected(0..40));
}
