#!/usr/bin/env python3
"""The fleet path as users run it: N devices with store = "broker" (real `edgeseal up
--sensor stdin` processes, each its own identity, state.db and MQTT session) publish R
readings each through a private mosquitto to K `edgeseal ingest` workers, which write
them to a fresh PostgreSQL database. Prints readings/s and batches/s stored, each
process kind's CPU, PostgreSQL's CPU, and the audit of the result (verify --all-devices).

    cargo build --release
    N=8 R=200000 B=1000 K=2 PG=postgres://postgres@127.0.0.1 scripts/fleet-broker.py

KILL=S kills ingest worker 0 with SIGKILL S seconds into the run and starts it again under
its name (the broker keeps its session, so nothing it held is lost).
"""
import json, os, resource, shutil, socket, subprocess, sys, tempfile, time

N, R, B, K = (int(os.environ.get(k, d)) for k, d in (("N", 8), ("R", 200000), ("B", 1000), ("K", 2)))
KILL = float(os.environ.get("KILL", "0"))
PG = os.environ.get("PG", "postgres://postgres@127.0.0.1")
BIN = os.path.abspath(os.environ.get("EDGESEAL", "target/release/edgeseal"))
out = tempfile.mkdtemp(prefix="edgeseal-fleet-")
db = f"fleet_{os.getpid()}"
store = f"{PG}/{db}"
env = dict(os.environ, EDGESEAL_WEB__LISTEN="", EDGESEAL_BROKER__LISTEN="", EDGESEAL_LOG="warn")
env.pop("EDGESEAL_PASSPHRASE", None)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_cpu():
    """Seconds of CPU of every postgres process, plus what the postmaster reaped of ended backends."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    pids = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout.split()
    oldest = subprocess.run(["pgrep", "-o", "-x", "postgres"], capture_output=True, text=True).stdout.strip()
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if p == oldest else 0)
    return total / tick


def wait_cpu(p):
    """Waits for p; its exit status and CPU seconds (user + system)."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime


port = free_port()
broker = f"mqtt://127.0.0.1:{port}"
conf = os.path.join(out, "mosquitto.conf")
# An in-flight window as large as ingest's groups (512), and no cap on what waits for a session.
open(conf, "w").write(
    f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\nmax_queued_messages 0\n"
)
mosq = subprocess.Popen(["mosquitto", "-c", conf], stdout=subprocess.DEVNULL, stderr=open(f"{out}/mosquitto.log", "w"))
subprocess.run(["psql", f"{PG}/postgres", "-qc", f"CREATE DATABASE {db}"], check=True)
try:
    lines = os.path.join(out, "lines.jsonl")
    with open(lines, "w") as f:
        t0 = 1_767_225_600_000
        f.writelines(f'{{"stream":"t","value":{20 + (i % 500) / 100},"ts":{t0 + i * 10}}}\n' for i in range(R))
    def ingest(k, run=0):
        err = f"{out}/ingest{k}.{run}.err"
        cmd = [BIN, "--data-dir", f"{out}/none", "--broker", broker, "--store", store, "ingest", "--name", f"w{k}"]
        p = subprocess.Popen(cmd, env=dict(env, EDGESEAL_LOG="info"), stdout=open(f"{out}/ingest{k}.out", "a"), stderr=open(err, "w"))
        while "INFO ingesting" not in open(err).read():
            time.sleep(0.05)
        return p

    workers = [ingest(k) for k in range(K)]
    killed_cpu = 0.0
    for i in range(N):
        subprocess.run([BIN, "--data-dir", f"{out}/d{i}", "init", "--name", f"d{i}"], env=env, check=True, capture_output=True)
    c0, start = pg_cpu(), time.time()
    devices = [
        subprocess.Popen(
            [BIN, "--data-dir", f"{out}/d{i}", "--broker", broker, "--store", "broker", "up", "--sensor", "stdin",
             "--batch-count", str(B), "--batch-interval", "off"],
            env=env, stdin=open(lines), stdout=open(f"{out}/d{i}.out", "w"), stderr=open(f"{out}/d{i}.err", "w"),
        )
        for i in range(N)
    ]
    if KILL:
        time.sleep(KILL)
        workers[0].kill()
        killed_cpu = wait_cpu(workers[0])[1]
        workers[0] = ingest(0, 1)
        print(f"killed ingest w0 with SIGKILL after {KILL} s and started it again")
    device_cpu = [wait_cpu(p) for p in devices]
    wall = time.time() - start
    for w in workers:
        w.send_signal(15)
    ingest_cpu = [wait_cpu(w) for w in workers]
    c1 = pg_cpu()  # after ingest's connections ended, so the postmaster has reaped their backends' CPU
    audit = subprocess.run([BIN, "--data-dir", f"{out}/d0", "--store", store, "verify", "--all-devices", "--json"],
                           env=env, capture_output=True, text=True)
    summary = [l for k in range(K) for l in open(f"{out}/ingest{k}.out").read().splitlines() if l.startswith("stopped")]
    waiting = sum("waiting in the local outbox" in open(f"{out}/d{i}.out").read() for i in range(N))
    readings, batches = N * R, N * (-(-R // B))
    print(f"{N} devices x {R} readings (batches of {B}) -> mosquitto -> {K} ingest -> PostgreSQL, "
          f"all stored and acknowledged in {wall:.1f} s: {readings / wall / 1e3:.0f} k readings/s, "
          f"{batches / wall:.0f} batches/s")
    print(f"CPU: devices {sum(c for _, c in device_cpu):.1f} s, ingest {killed_cpu + sum(c for _, c in ingest_cpu):.1f} s, "
          f"postgres {c1 - c0:.1f} s; devices still waiting for an acknowledgement: {waiting}; "
          f"exit codes: devices {sorted(set(r for r, _ in device_cpu))}, ingest {sorted(set(r for r, _ in ingest_cpu))}")
    for line in summary:
        print(f"ingest: {line}")
    try:
        shown = json.loads(audit.stdout)
        verified = sum(st["verified"] for d in shown["devices"] for st in d["streams"])
        print(f"verify --all-devices: ok={shown['ok']}, {len(shown['devices'])} devices, "
              f"{verified} of {batches} batches verified")
    except (ValueError, KeyError):
        print(f"verify --all-devices: exit {audit.returncode}: {audit.stdout[-300:]}{audit.stderr[-300:]}")
finally:
    mosq.terminate()
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"DROP DATABASE IF EXISTS {db}"])
    shutil.rmtree(out, ignore_errors=True)
