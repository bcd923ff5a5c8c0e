#!/usr/bin/env bash
# How the store's queries behave on a large PostgreSQL table: N batches of D
# devices (one stream each), made with generate_series (rows shaped like
# batches but not sealed: what is measured here is the plan of each query the
# agent, the reader and ingest run, not the audit), plus one real device whose
# stream `edgeseal up` seals and stores among them, which `verify` and `fetch`
# then read. Prints the time of each; drops the database at the end.
#
#   N=100000000 D=1000 scripts/pg-scale.sh          (10^8 rows: ~30 GB, ~20 min on 2 cores)
#   PGURL=postgres://postgres@127.0.0.1:5432 (a role that may create databases)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000000}
D=${D:-1000}
R=${R:-1000000}
BASE=${PGURL:-postgres://postgres@127.0.0.1:5432}
DB=edgeseal_scale
URL="$BASE/$DB"
BIN=target/release/edgeseal
cargo build --release -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; psql -q "$BASE/postgres" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true' EXIT
psql -q "$BASE/postgres" -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
export EDGESEAL_BROKER__LISTEN="" EDGESEAL_WEB__LISTEN="" EDGESEAL_LOG=warn
es() { "$BIN" --data-dir "$tmp/data" --store "$URL" "$@"; }
es init --name scale >/dev/null
es streams >/dev/null # creates the schema
per=$((N / D))
T0=1767225600000 # 2026-01-01, one batch a minute per device
echo "loading $N batches of $D devices ($per each)..."
start=$(date +%s)
step=$(( D < 10 ? 1 : 10 ))
for ((d = 1; d <= D; d += step)); do
    last=$((d + step - 1 < D ? d + step - 1 : D))
    psql -q "$URL" -c "INSERT INTO batches (device, stream, seq, first_ts, last_ts, count, epoch, hash, sealed)
        SELECT decode(lpad(to_hex(d), 32, '0'), 'hex'), 'temperature', s, $T0 + s * 60000, $T0 + s * 60000 + 59000,
               60, 0, decode(md5(d || '/' || s) || md5(s || '/' || d), 'hex'), decode(md5(d || ':' || s), 'hex')
        FROM generate_series($d, $last) d, generate_series(0::bigint, $per - 1) s"
done
psql -q "$URL" -c "VACUUM ANALYZE batches"
echo "loaded in $(( $(date +%s) - start )) s; $(psql -tA "$URL" -c "SELECT pg_size_pretty(pg_database_size('$DB'))")"

echo "one real device: up --sensor stdin, $R readings in batches of 100..."
python3 - "$R" > "$tmp/lines" <<'EOF'
import sys
n = int(sys.argv[1])
t0 = 1767225600000
for i in range(n):
    print('{"stream":"t","value":%.1f,"unit":"u","ts":%d}' % (20 + (i % 100) / 10, t0 + i * 1000))
EOF
start=$(date +%s.%N)
es up --sensor stdin --batch-count 100 < "$tmp/lines" >/dev/null
echo "  stored in $(echo "$(date +%s.%N) - $start" | bc) s"

timed() { # label, edgeseal arguments...
    local label=$1; shift
    if ! /usr/bin/time -f "%e %M" -o "$tmp/t" "$BIN" --data-dir "$tmp/data" --store "$URL" "$@" > "$tmp/out" 2> "$tmp/err"; then
        echo "edgeseal $* failed:"; cat "$tmp/err"; exit 1
    fi
    read -r secs kb < "$tmp/t"
    printf '| %s | %s s | %s MB |\n' "$label" "$secs" "$((kb / 1024))"
}
explain() { # label, sql
    local ms
    ms=$(psql -tA "$URL" -c "EXPLAIN (ANALYZE, FORMAT JSON) $2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])')
    printf '| %s | %s ms | |\n' "$1" "$ms"
}
dev="decode(lpad(to_hex($((D / 2))), 32, '0'), 'hex')"
mid=$((T0 + per / 2 * 60000))
end=$((T0 + (per - 10) * 60000))
echo
echo "| on $N rows, $D devices | time | peak RSS |"
echo "|---|---|---|"
explain "a device's head (MAX(seq))" "SELECT MAX(seq) FROM batches WHERE device = $dev AND stream = 'temperature'"
# The reader's time-range query (the PostgreSQL dialect's, with its binds).
range() { # from, to
    echo "SELECT seq, sealed FROM batches WHERE device = $dev AND stream = 'temperature' AND last_ts >= $1 AND first_ts <= $2
          AND last_ts <= COALESCE($2 + (SELECT GREATEST(0, LEAST(max_span, 4611686018427387903)) FROM streams
          WHERE device = $dev AND stream = 'temperature'), 9223372036854775807) ORDER BY seq"
}
explain "its newest 10 minutes (time range)" "$(range $end $((end + 600000)))"
explain "an hour in the middle (time range)" "$(range $mid $((mid + 3600000)))"
explain "an hour at its start (time range)" "$(range $T0 $((T0 + 3600000)))"
explain "the batch before a time (a range's edge)" "SELECT seq FROM batches WHERE device = $dev AND stream = 'temperature' AND last_ts < $mid ORDER BY last_ts DESC, seq DESC LIMIT 1"
explain "batches by number (edges, repairs)" "SELECT seq, sealed FROM batches WHERE device = $dev AND stream = 'temperature' AND seq >= 5000 AND seq <= 5100 ORDER BY seq"
explain "every stream (the summary, for streams and verify --all-devices)" "SELECT device, stream, batches, readings, first_ts, last_ts, head FROM streams WHERE batches > 0 ORDER BY stream, device"
for i in 0 1 2 3; do # the first one finds the pages cold
    explain "512 new batches of 512 devices (an ingest statement, $((i + 1)) of 4)" "INSERT INTO batches SELECT decode(lpad(to_hex(d), 32, '0'), 'hex'), 'temperature', $((per + i)), 0, 0, 1, 0, decode(md5(d::text) || md5(d::text), 'hex'), '\\x00' FROM generate_series(1, 512) d ON CONFLICT DO NOTHING"
done
explain "retention: 10,000 batches of a device removed" "DELETE FROM batches WHERE device = $dev AND stream = 'temperature' AND seq >= 0 AND seq < 10000"
timed "edgeseal streams ($((D + 1)) streams)" streams
timed "edgeseal verify of the real stream ($((R / 100)) batches)" verify
timed "edgeseal fetch of its last hour" fetch --stream t --from "$(date -u -d @$((T0 / 1000 + R - 3600)) +%FT%TZ)" --format csv
timed "edgeseal fetch of all of it ($R readings)" fetch --stream t --format csv
