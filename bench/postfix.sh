# A private Postfix instance for the benchmarks that compare against it
# (bench/compare, bench/tls, bench/sustained); sourced, not run.
# Expects: WORK PF PF_PORT, log; PF_RELAY_PORT (the relayhost's port on
# 127.0.0.1, default SINK_PORT); PF_SMTPD_TLS: smtpd_tls_security_level
# (none); PF_EXTRA_CF: more main.cf lines (optional).
# Sets PF_STARTED (the callers' cleanup stops a started instance).
PF_STARTED=0
setup_postfix() {
  mkdir -p "$PF/etc" "$PF/queue" "$PF/data"
  chown postfix "$PF/data"
  cp /etc/postfix/master.cf "$PF/etc/master.cf"
  cp /etc/postfix/postfix-files "$PF/etc/" 2>/dev/null || true
  [ -d /etc/postfix/postfix-files.d ] && cp -r /etc/postfix/postfix-files.d "$PF/etc/"
  cp /etc/postfix/dynamicmaps.cf "$PF/etc/" 2>/dev/null || true
  [ -d /etc/postfix/dynamicmaps.cf.d ] && cp -r /etc/postfix/dynamicmaps.cf.d "$PF/etc/"
  cat > "$PF/etc/main.cf" <<CF
compatibility_level = 3.6
config_directory = $PF/etc
queue_directory = $PF/queue
data_directory = $PF/data
meta_directory = $PF/etc
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-bench.example
mydomain = postfix-bench.example
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:${PF_RELAY_PORT:-$SINK_PORT}
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = $PF/maillog
# loopback only: no DNS for clients or next hop
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = ${PF_SMTPD_TLS:-none}
biff = no
CF
  [ -n "${PF_EXTRA_CF:-}" ] && printf '%s\n' "$PF_EXTRA_CF" >> "$PF/etc/main.cf"
  # Our own smtpd port instead of 25; no chroot (the private dirs lack one).
  sed -i -E "s/^smtp( +)inet/$PF_PORT\1inet/" "$PF/etc/master.cf"
  postconf -c "$PF/etc" -F '*/*/chroot = n'
}
postfix_accept_only() {  # 1: messages go to the hold queue (accept measured alone)
  if [ "$1" = 1 ]; then
    postconf -c "$PF/etc" -e 'smtpd_data_restrictions = check_client_access static:HOLD'
  else
    postconf -c "$PF/etc" -e 'smtpd_data_restrictions ='
  fi
}
start_postfix() {
  postfix -c "$PF/etc" start >>"$WORK/postfix-start.log" 2>&1 || {
    cat "$WORK/postfix-start.log" >&2; return 1; }
  PF_STARTED=1
  wait_port "$PF_PORT"
}
stop_postfix() {
  postfix -c "$PF/etc" stop >/dev/null 2>&1 || true
  for _ in $(seq 1 100); do [ -e "$PF/queue/pid/master.pid" ] && pgrep -F "$PF/queue/pid/master.pid" >/dev/null 2>&1 || break; sleep 0.1; done
  PF_STARTED=0
}
clear_postfix_hold() { find "$PF/queue/hold" "$PF/queue/deferred" -type f -delete 2>/dev/null || true; }
# Messages still in Postfix's queue (not yet handed to the next hop).
postfix_queued() {
  find "$PF/queue/maildrop" "$PF/queue/incoming" "$PF/queue/active" "$PF/queue/deferred" -type f 2>/dev/null | wc -l
}
# CPU seconds (user + system) of the whole instance: master, its live
# children, and the children it has reaped.
postfix_cpu_s() {
  $PY - "$(tr -d ' ' < "$PF/queue/pid/master.pid")" <<'PY'
import os, sys
master = sys.argv[1]
hz = os.sysconf("SC_CLK_TCK")
def fields(pid):
    st = open(f"/proc/{pid}/stat").read()
    return st[st.rindex(")") + 2:].split()
t = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        f = fields(pid)
    except OSError:
        continue
    if pid == master:
        t += sum(int(x) for x in f[11:15])   # utime stime cutime cstime
    elif f[1] == master:
        t += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
print(t / hz)
PY
}
