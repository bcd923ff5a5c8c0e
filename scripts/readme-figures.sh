#!/usr/bin/env bash
# The README's measured figures, produced here rather than typed: the release
# binary's stripped size, and `bench storage` beside `bench agent` (the library
# and the agent's own path, in the same minutes), RUNS times each, as the
# median and the range. Rewrites the block between the `figures` markers in
# README.md and prints it. Usage: scripts/readme-figures.sh [RUNS] [READINGS]
# (default 3 runs of 3 M readings).
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-3}"
readings="${2:-3000000}"
cargo build --release --quiet --locked
bin=target/release/edgeseal
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp "$bin" "$tmp/edgeseal" && strip "$tmp/edgeseal"
size=$(stat -c %s "$tmp/edgeseal")
for i in $(seq "$runs"); do
    "$bin" bench storage --readings "$readings" --json >> "$tmp/storage.jsonl"
    "$bin" bench agent --readings "$readings" --json >> "$tmp/agent.jsonl"
done
python3 - "$tmp" "$size" "$runs" "$readings" <<'PY' > "$tmp/block.md"
import json, statistics, sys, datetime, os, platform
tmp, size, runs, readings = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
load = lambda f: [json.loads(l) for l in open(os.path.join(tmp, f)) if l.strip()]
storage, agent = load("storage.jsonl"), load("agent.jsonl")
def fig(rows, key, scale=1.0, unit="", digits=2):
    vals = [r[key] * scale for r in rows if r.get(key) is not None]
    if not vals:
        return "—"
    f = lambda v: f"{v:.{digits}f}"
    return f"{f(statistics.median(vals))}{unit} ({f(min(vals))}–{f(max(vals))})"
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"Measured by `scripts/readme-figures.sh {runs} {readings}` on {datetime.date.today()}, "
      f"{os.cpu_count()} cores ({cpu}); medians, with the range over {runs} runs:")
print()
print("| | median (range) |")
print("|---|---|")
print(f"| release binary, stripped ({platform.machine()}) | {size / 1e6:.1f} MB |")
print(f"| `bench storage`: in (seal, insert) | {fig(storage, 'ingest_per_s', 1e-6, ' M readings/s')} |")
print(f"| `bench storage`: out (fetch, verify, decrypt) | {fig(storage, 'fetch_per_s', 1e-6, ' M readings/s')} |")
print(f"| `bench agent`: the pipeline `up` runs, in process | {fig(agent, 'agent_per_s', 1e-6, ' M readings/s')} |")
print(f"| `bench agent`: a real `up --sensor stdin` | {fig(agent, 'stdin_per_s', 1e-6, ' M readings/s')} |")
print(f"| `bench agent`: CPU per million readings | {fig(agent, 'cpu_s_per_m', 1, ' s')} |")
print(f"| `bench agent`: peak RSS | {fig(agent, 'rss_mb', 1, ' MB', 0)} |")
print(f"| `bench agent`: at rest | {fig(agent, 'bytes_per_reading', 1, ' bytes/reading', 2)} |")
PY
python3 - "$tmp/block.md" <<'PY'
import re, sys
block = open(sys.argv[1]).read().strip()
text = open("README.md").read()
new, n = re.subn(r"(<!-- figures:begin -->\n)(?:.*?\n)?(<!-- figures:end -->)", lambda m: m.group(1) + block + "\n" + m.group(2), text, flags=re.S)
if n != 1:
    sys.exit("README.md has no <!-- figures:begin --> … <!-- figures:end --> block")
open("README.md", "w").write(new)
PY
cat "$tmp/block.md"
