#!/usr/bin/env bash
# Durable accept rate: Postfix's smtp-source against Postern and against
# smtp-sink (no disk) on this machine, in the same run, alternating.
# Prints a Markdown table; with --append also adds it to BENCHMARKS.md.
# Usage: [WORKERS=n] bench/smtp-source-baseline.sh [--append] [MESSAGES] [ROUNDS]
# WORKERS: Postern's server.workers (default 0: one per CPU).
set -euo pipefail
cd "$(dirname "$0")/.."

APPEND=0
if [ "${1:-}" = "--append" ]; then APPEND=1; shift; fi
MSGS=${1:-20000}
ROUNDS=${2:-3}
SESSIONS=100
SIZE=1024
BIN=${POSTERN_BIN:-build/postern}
SRC=/usr/sbin/smtp-source
SINK=/usr/sbin/smtp-sink
[ -x "$BIN" ] || { echo "build first: make" >&2; exit 1; }
[ -x "$SRC" ] && [ -x "$SINK" ] || { echo "needs postfix's smtp-source/smtp-sink: make deps" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/postern-bench.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

PY=/usr/bin/python3
log() { echo "smtp-source-baseline: $*" >&2; }
# free_port, wait_port, median, fsync_rate
. bench/common.sh

SINK_PORT=$(free_port)
"$SINK" -u nobody 127.0.0.1:"$SINK_PORT" 1000 & PIDS+=($!)
PORT=$(free_port)
cat > "$WORK/postern.conf" <<CONF
server = { hostname = "bench.example"; workers = ${WORKERS:-0}; spool_dir = "$WORK/spool"; log_file = "$WORK/postern.log";
  stats_socket = "$WORK/stats.sock"; };
accepted_domains = ( { domain = "corp.example"; type = "authoritative"; } );
receive_connectors = ( { name = "Bench"; bindings = [ "127.0.0.1:$PORT" ];
  remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ];
  # 100 sessions from one address: above the Exchange defaults (20 per source).
  max_inbound_connection_per_source = "unlimited"; max_inbound_connection_percentage_per_source = 100; } );
# Accept only (like Postfix's hold queue in bench/compare): the messages stay queued.
send_connectors = ( { name = "Held"; address_spaces = [ "*" ]; smart_hosts = [ "127.0.0.1:$SINK_PORT" ]; } );
queue = { hold = true; };
CONF
"$BIN" -c "$WORK/postern.conf" 2>"$WORK/postern.log" & PIDS+=($!)
wait_port "$SINK_PORT"; wait_port "$PORT"

CTL="${POSTERN_CTL:-$(dirname "$BIN")/posternctl}"
# rate PORT EXTRA_FLAGS -> messages per second
rate() {
  local t0 t1
  t0=$(date +%s.%N)
  "$SRC" -s $SESSIONS -m "$MSGS" -l $SIZE $2 -f a@b.example -t x@corp.example 127.0.0.1:"$1" >/dev/null ||
    { echo "smtp-source failed against 127.0.0.1:$1: no figure is better than a wrong one" >&2; return 1; }
  t1=$(date +%s.%N)
  [ "$1" = "$PORT" ] && echo "$t1 - $t0" >> "$WORK/postern-times"
  /usr/bin/python3 -c "print(round($MSGS/($t1-$t0)))"
}

INFO0=$("$CTL" -s "$WORK/stats.sock" --json show info)
declare -A R
for mode in reconnect reuse; do
  flags=""; [ $mode = reuse ] && flags="-d"
  ps=(); ss=()
  for _ in $(seq 1 "$ROUNDS"); do
    ps+=("$(rate "$PORT" "$flags")")
    ss+=("$(rate "$SINK_PORT" "$flags")")
  done
  R[$mode.p]=$(median "${ps[@]}"); R[$mode.s]=$(median "${ss[@]}")
done
FS=$(fsync_rate)
INFO1=$("$CTL" -s "$WORK/stats.sock" --json show info)
METRICS=$("$CTL" -s "$WORK/stats.sock" show metrics)
# fdatasyncs per second of load, messages per group commit, and latency
# percentiles (bucket upper bounds) from the accept-latency histogram.
PTIME=$(/usr/bin/python3 -c "import sys; print(sum(eval(l) for l in open('$WORK/postern-times')))")
SPOOL=$(/usr/bin/python3 - "$INFO0" "$INFO1" "$PTIME" "$METRICS" <<'PY'
import json, sys, re
a, b, t, metrics = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
fs = b["fsyncs"] - a["fsyncs"]
fl = b["flushes"] - a["flushes"]
fm = b["flushed_messages"] - a["flushed_messages"]
buckets = [(float(m.group(1)) if m.group(1) != "+Inf" else float("inf"), int(m.group(2)))
           for m in re.finditer(r'postern_accept_latency_seconds_bucket\{le="([^"]+)"\} (\d+)', metrics)]
total = buckets[-1][1] if buckets else 0
def pct(q):
    for le, n in buckets:
        if total and n >= q * total:
            return "<= %g ms" % (le * 1000) if le != float("inf") else "> 5000 ms"
    return "n/a"
print("%d fdatasyncs/s during Postern's load, %.1f messages per flush (%d flushes), "
      "end of data to 250: p50 %s, p99 %s (histogram bucket bounds)" %
      (fs / t if t else 0, fm / fl if fl else 0, fl, pct(0.5), pct(0.99)))
PY
)

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
TABLE=$(cat <<MD

### smtp-source: Postern vs smtp-sink ($(date -u +%Y-%m-%d))
- Machine: $CPU, $(nproc) cores, kernel $(uname -r); fdatasync rate of the spool disk measured now: $FS/s
- Command: \`$( [ -n "${WORKERS:-}" ] && echo "WORKERS=$WORKERS " )bench/smtp-source-baseline.sh $MSGS $ROUNDS\` (Postern workers: ${WORKERS:-0}, 0 = one per CPU) — smtp-source -s $SESSIONS -m $MSGS -l $SIZE, median of $ROUNDS alternating rounds
- Durability mode: **durable** — every 250 follows the fdatasync (group commit, per worker) that covers the message in its log segment. smtp-sink stores nothing. Postern logs at the default level (info: connect, receive, disconnect lines) to a file.

| scenario | Postern msg/s | smtp-sink msg/s (ceiling) | Postern / sink |
|---|---:|---:|---:|
| 1 KiB, 100 sessions, new connection per message | ${R[reconnect.p]} | ${R[reconnect.s]} | $(/usr/bin/python3 -c "print(f'{${R[reconnect.p]}/${R[reconnect.s]}:.2f}')") |
| 1 KiB, 100 sessions, connection reuse (-d) | ${R[reuse.p]} | ${R[reuse.s]} | $(/usr/bin/python3 -c "print(f'{${R[reuse.p]}/${R[reuse.s]}:.2f}')") |

Spool under this load: $SPOOL.
MD
)
echo "$TABLE"
if [ $APPEND = 1 ]; then echo "$TABLE" >> BENCHMARKS.md; fi
