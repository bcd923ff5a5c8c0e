#!/bin/bash
# N agents' pipelines (`edgeseal bench agent`, each its own process, device and
# SQLite state.db) at full speed into one PostgreSQL at URL, all at once; prints
# the total rate, the agents' CPU against PostgreSQL's, and any agent's errors.
# Run from the checkout after `cargo build --release`:
#   N=20 R=1000000 B=1000 URL=postgres://postgres@127.0.0.1/test scripts/fleet-postgres.sh
set -u
OUT=$(mktemp -d)
N=${N:-20}; R=${R:-1000000}; B=${B:-1000}; URL=${URL:-postgres://postgres@127.0.0.1/test}
# Every postgres process's own CPU, plus what the postmaster reaped from ended backends (cutime, cstime).
pgcpu() { local t=0 m=$(pgrep -o -x postgres); for p in $(pgrep -x postgres); do read -r -a f < <(sed 's/.*) //' /proc/$p/stat 2>/dev/null); t=$((t + ${f[11]:-0} + ${f[12]:-0})); [ "$p" = "$m" ] && t=$((t + ${f[13]:-0} + ${f[14]:-0})); done; echo $t; }
c0=$(pgcpu); t0=$(date +%s.%N)
for i in $(seq $N); do "${EDGESEAL:-target/release/edgeseal}" --store "$URL" bench agent --readings $R --batch $B --no-stdin --json > "$OUT"/fleet.$i.json 2>"$OUT"/fleet.$i.err & done
wait
t1=$(date +%s.%N); c1=$(pgcpu)
python3 - "$N" "$R" "$t0" "$t1" "$c0" "$c1" "$OUT" <<'PY'
import json,sys
n,r,t0,t1,c0,c1,out=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3]),float(sys.argv[4]),int(sys.argv[5]),int(sys.argv[6]),sys.argv[7]
runs=[json.load(open(f"{out}/fleet.{i}.json")) for i in range(1,n+1)]
agent_cpu=sum(x["cpu_s_per_m"]*r/1e6 for x in runs)
wall=t1-t0
print(f"{n} agents x {r} readings: {n*r/wall/1e3:.0f} k readings/s in total over {wall:.1f} s wall (incl. verify); "
      f"agents' pipeline CPU {agent_cpu:.1f} s, postgres CPU {(c1-c0)/100:.1f} s; per agent {min(x['agent_per_s'] for x in runs)/1e3:.0f}-{max(x['agent_per_s'] for x in runs)/1e3:.0f} k/s")
PY
grep -l -i "error\|panick" "$OUT"/fleet.*.err | head
rm -rf "$OUT"

