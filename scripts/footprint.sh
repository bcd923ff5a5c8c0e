#!/usr/bin/env bash
# Footprint of `edgeseal up` on this machine: release binary size, and the
# resident memory and CPU of an agent sampling 8 sensors at 10 Hz (three
# simulated, five Grove sensors on the emulated GrovePi) with the LCD output
# on, sampled every 30 s. Usage: scripts/footprint.sh [MINUTES] (default 11).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:-11}"
cargo build --release --quiet
bin=target/release/edgeseal
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cat > "$dir/footprint.toml" <<TOML
data_dir = "$dir/data"
log = "warn"
[[sensor]]
kind = "simulated"
model = "temperature"
interval = "100ms"
[[sensor]]
kind = "simulated"
model = "humidity"
interval = "100ms"
[[sensor]]
kind = "simulated"
model = "air_quality"
interval = "100ms"
[[sensor]]
kind = "grovepi"
model = "dht22"
port = "D4"
stream = "room"
interval = "100ms"
[[sensor]]
kind = "grovepi"
model = "light"
port = "A1"
interval = "100ms"
[[sensor]]
kind = "grovepi"
model = "sound"
port = "A2"
interval = "100ms"
[[sensor]]
kind = "grovepi"
model = "air_quality"
port = "A0"
stream = "grove_air"
interval = "100ms"
[[sensor]]
kind = "grovepi"
model = "ultrasonic"
port = "D7"
interval = "100ms"
[grovepi]
bus = "emulated"
[lcd]
enabled = true
streams = ["temperature", "room.humidity"]
refresh = "2s"
TOML
echo "binary: $(stat -c %s "$bin") bytes ($bin)"
"$bin" --config "$dir/footprint.toml" up --for "${minutes}m" > "$dir/up.log" 2>&1 &
pid=$!
ticks=$(getconf CLK_TCK)
sleep 5
prev_cpu=0
start=$(date +%s)
echo "elapsed_s rss_kib cpu_percent_of_one_core_since_last"
while kill -0 "$pid" 2>/dev/null; do
    stat=$(cut -d' ' -f14,15 "/proc/$pid/stat" 2>/dev/null) || break
    cpu=$(( ${stat% *} + ${stat#* } ))
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null) || break
    now=$(date +%s)
    if [ "$prev_cpu" != 0 ]; then
        echo "$((now - start)) $rss $(awk -v d=$((cpu - prev_cpu)) -v t="$ticks" 'BEGIN { printf "%.2f", 100 * d / t / 30 }')"
    else
        echo "$((now - start)) $rss -"
    fi
    prev_cpu=$cpu
    sleep 30
done
wait "$pid" || true
tail -1 "$dir/up.log"
echo "total CPU: $(awk -v c="$prev_cpu" -v t="$ticks" 'BEGIN { printf "%.1f s", c / t }') over $((minutes * 60)) s"
