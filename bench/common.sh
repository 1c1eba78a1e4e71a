# Shared by bench/compare, bench/backends and bench/smtp-source-baseline.sh
# (sourced, not run): numbers,
# machine facts, postern-sink, one Postern under a private config, the
# postern-bench runs and the end-to-end and idle-memory measurements.
# Expects: ROOT WORK PY BENCH SINK_BIN POSTERN SESSIONS DUR E2E_MSGS E2E_WAIT
# IDLE_HOLD; IO_BACKEND (optional) goes into Postern's server group;
# RECV_EXTRA and SEND_EXTRA (optional): more keys for the receive and the
# send connector (the send connector has its shipped defaults otherwise).

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 150); do
    $PY -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2).close()" 2>/dev/null && return 0
    sleep 0.1
  done
  log "port $1 never opened"; return 1
}
jget() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
calc() { $PY -c "print($1)"; }
ratio() { $PY -c "a,b=float('$1' or 0),float('$2' or 0); print(f'{a/b:.2f}' if b>0 else 'n/a')"; }
fmt0() { $PY -c "print(f'{float(\"$1\"):,.0f}')"; }

machine_facts() {
  CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
  CORES=$(nproc)
  KERNEL=$(uname -r)
  FSYNC=$(fsync_rate)
  DATE=$(date -u +%Y-%m-%d)
  log "machine: $CPU, $CORES cores, kernel $KERNEL, fdatasync $FSYNC/s in $WORK"
}

fsync_rate() {
  $PY - "$WORK" <<'PY'
import os, sys, time
p = os.path.join(sys.argv[1], "fsync.probe")
fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
n, t0 = 0, time.time()
while time.time() - t0 < 1.0:
    os.write(fd, b"x" * 512); os.fdatasync(fd); n += 1
os.close(fd); os.unlink(p)
print(round(n / (time.time() - t0)))
PY
}
start_sink() {  # postern-sink on SINK_PORT: the next hop of end-to-end runs
  SINK_PORT=$(free_port)
  "$SINK_BIN" --listen 127.0.0.1:"$SINK_PORT" --report "$WORK/sink.json" 2>"$WORK/sink.log" &
  SINK_PID=$!
  wait_port "$SINK_PORT"
}
sink_report() {  # fresh report from the running postern-sink
  rm -f "$WORK/sink.json"; kill -USR1 "$SINK_PID"
  for _ in $(seq 1 50); do [ -s "$WORK/sink.json" ] && return 0; sleep 0.05; done
  return 1
}

P_PORT=$(free_port)
POSTERN_RUNS=0
start_postern() {  # [relay]: deliver to postern-sink; default: hold (accept only)
  local hold=true; [ "${1:-}" = relay ] && hold=false
  POSTERN_RUNS=$((POSTERN_RUNS + 1))
  local d=$WORK/postern.$POSTERN_RUNS
  mkdir -p "$d/spool"
  cat > "$d/postern.conf" <<CONF
server = { hostname = "postern-bench.example"; workers = 0; spool_dir = "$d/spool";
  log_file = "$d/postern.log"; stats_socket = "$d/stats.sock"; shutdown_grace = "5s"; };
accepted_domains = ( { domain = "corp.example"; type = "authoritative"; } );
receive_connectors = ( { name = "Bench relay"; bindings = [ "127.0.0.1:$P_PORT" ];
  remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ];
  max_inbound_connection = 100000; max_inbound_connection_per_source = 100000;
  max_inbound_connection_percentage_per_source = 100; ${RECV_EXTRA:-} } );
send_connectors = ( { name = "Sink"; address_spaces = [ "*" ]; smart_hosts = [ "127.0.0.1:$SINK_PORT" ];
  ${SEND_EXTRA:-} } );
queue = { hold = $hold; };
CONF
  if [ -n "${IO_BACKEND:-}" ]; then
    sed -i "s|^server = { |server = { io_backend = \"$IO_BACKEND\"; |" "$d/postern.conf"
  fi
  "$POSTERN" -c "$d/postern.conf" 2>>"$d/stderr.log" &
  POSTERN_PID=$!
  wait_port "$P_PORT"
}
stop_postern() {
  [ -n "$POSTERN_PID" ] || return 0
  kill -TERM "$POSTERN_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$POSTERN_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$POSTERN_PID" 2>/dev/null || true
  wait "$POSTERN_PID" 2>/dev/null || true
  POSTERN_PID=
  rm -rf "$WORK/postern.$POSTERN_RUNS/spool"
}

# bench PORT ARGS... -> path of the JSON result
bench() {
  local port=$1; shift
  local out  # called in $(...): a counter would not survive, so mktemp
  out=$(mktemp "$WORK/run.XXXXXX")
  "$BENCH" --server 127.0.0.1:"$port" --json "$@" >"$out" 2>"$out.log" || true
  [ -s "$out" ] || echo '{"msgs_per_s":0,"ok":0,"latency_ms":{"p50":0,"p99":0,"p99_9":0},"replies":{"errors":-1}}' >"$out"
  echo "$out"
}
# (3) end to end: messages arriving at postern-sink per second, from the
# first message sent to the last one at the sink.
e2e_round() {  # port [smtp-source] -> msg/s arriving at the sink
  sink_report; local before bad_before t0 j ok deadline got last
  before=$(jget "$WORK/sink.json" 'd["messages"]')
  bad_before=$(jget "$WORK/sink.json" 'd["corrupted"]+d["duplicates"]')
  t0=$(date +%s.%N)
  if [ "${2:-}" = smtp-source ]; then
    # Postfix's own client; it stops at the first failure, so every
    # message it sent was accepted when it exits 0.
    if timeout 300 /usr/sbin/smtp-source -s $SESSIONS -m "$E2E_MSGS" -l 1024 -d \
         -f a@b.example -t user@relay-target.example 127.0.0.1:"$1" >/dev/null 2>&1; then
      ok=$E2E_MSGS
    else
      ok=0
    fi
  else
    j=$(bench "$1" --connections $SESSIONS --messages "$E2E_MSGS" --duration "$DUR" --size 1024 \
        --reuse on --pipelining on --to user@relay-target.example)
    ok=$(jget "$j" 'd["ok"]')
  fi
  deadline=$(( $(date +%s) + E2E_WAIT ))
  while :; do
    sink_report
    got=$(( $(jget "$WORK/sink.json" 'd["messages"]') - before ))
    [ "$got" -ge "$ok" ] && break
    [ "$(date +%s)" -ge $deadline ] && break
    sleep 0.2
  done
  last=$(jget "$WORK/sink.json" 'd["last_message_unix"]')
  E2E_BAD=$(( E2E_BAD + $(jget "$WORK/sink.json" 'd["corrupted"]+d["duplicates"]') - bad_before ))
  [ "$got" -lt "$ok" ] && E2E_LOST=$((E2E_LOST + ok - got))
  log "  $ok accepted, $got at the sink"
  calc "round($got/($last-$t0)) if $got>0 else 0"
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hold_idle() {  # port conns -> starts the bench in the background, waits until all are up
  rm -f "$WORK/ready"
  "$BENCH" --server 127.0.0.1:"$1" --connections "$2" --idle $IDLE_HOLD --sources $SOURCES \
    --ready-file "$WORK/ready" >/dev/null 2>"$WORK/idle.$1.log" &
  IDLE_PID=$!
  for _ in $(seq 1 900); do [ -s "$WORK/ready" ] && break; kill -0 $IDLE_PID 2>/dev/null || break; sleep 0.1; done
  sleep 1
  IDLE_UP=$(cat "$WORK/ready" 2>/dev/null || echo 0)
}
end_idle() { kill -TERM "$IDLE_PID" 2>/dev/null || true; wait "$IDLE_PID" 2>/dev/null || true; }

