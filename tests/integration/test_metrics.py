"""Counters through the stats socket and /metrics, the Prometheus format
(checked by promtool when available and by a strict parser always), the
queue listing, and the structured log lines for each event."""
import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import urllib.request

import pytest

from conftest import (BUILD, R_BARE_LF, R_RCPT_OK, R_TOO_BIG, R_UNABLE_TO_RELAY,
                      SLOW, RawClient, free_port, wait_until)

CTL = os.path.join(BUILD, "posternctl")
REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")

CONNECTORS = """receive_connectors = (
  { name = "Default Frontend"; bindings = [ "127.0.0.1:{port0}" ];
    remote_ip_ranges = [ "0.0.0.0/0" ]; permission_groups = [ "anonymous" ]; },
  { name = "Anonymous Relay"; bindings = [ "127.0.0.1:{port0}" ];
    remote_ip_ranges = [ "127.0.0.10" ]; permission_groups = [ "anonymous_relay" ];
    max_message_size = "64KB"; protocol_log = true; },
  { name = "Only Ten"; bindings = [ "127.0.0.1:{port1}" ];
    remote_ip_ranges = [ "127.0.0.10" ]; permission_groups = [ "anonymous" ]; }
);
"""


def ctl(sock, *args):
    r = subprocess.run([CTL, "-s", str(sock)] + list(args), capture_output=True,
                       timeout=30)
    return r.returncode, r.stdout.decode()


@pytest.fixture
def traffic(postern, tmp_path):
    """A server that has seen traffic of a known shape; returns it with the
    ids of the accepted messages."""
    sock = tmp_path / "stats.sock"
    mport = free_port()
    p = postern(CONNECTORS, nports=2, server_extra=(
        '  stats_socket = "%s";\n  metrics_listen = "127.0.0.1:%d";\n' % (sock, mport)))
    p.sock, p.mport = sock, mport
    ids = []
    # Relay host: two messages, the second to two recipients.
    s = smtplib.SMTP("127.0.0.1", p.ports[0], source_address=("127.0.0.10", 0))
    for rcpts in (["a@other.example"], ["b@other.example", "c@other.example"]):
        s.ehlo("client.example")
        s.mail("sender@app.example")
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(b"Subject: t\r\n\r\nbody\r\n")
        assert code == 250
        ids.append(re.match(rb"2\.6\.0 <([0-9A-F]+)> Queued", text).group(1).decode())
    # Too big for the relay connector (64 KiB) and a bare LF: two refusals.
    s.mail("sender@app.example")
    s.rcpt("d@other.example")
    code, text = s.data(b"x" * 100 + b"\r\n" + (b"y" * 900 + b"\r\n") * 80)
    assert "%d %s" % (code, text.decode()) == R_TOO_BIG
    s.docmd("AUTH PLAIN c2VjcmV0")
    s.quit()
    c = RawClient(p.ports[0], "127.0.0.10")
    c.cmd("EHLO client.example")
    c.cmd("MAIL FROM:<sender@app.example>")
    c.cmd("RCPT TO:<e@other.example>")
    c.cmd("DATA")
    c.send("Subject: x\r\n\r\nsmuggle\n.\nMAIL FROM:<evil@x>\r\n.\r\n")
    assert c.reply() == R_BARE_LF
    c.cmd("QUIT")
    c.close()
    # Frontend: one message to an accepted domain, one relay refusal.
    s = smtplib.SMTP("127.0.0.1", p.ports[0], source_address=("127.0.0.50", 0))
    s.ehlo("client.example")
    s.mail("sender@app.example")
    assert s.rcpt("x@other.example") == (550, R_UNABLE_TO_RELAY[4:].encode())
    assert s.rcpt("x@corp.example") == (250, R_RCPT_OK[4:].encode())
    code, text = s.data(b"Subject: t\r\n\r\nbody\r\n")
    ids.append(re.match(rb"2\.6\.0 <([0-9A-F]+)> Queued", text).group(1).decode())
    s.quit()
    # No connector on the second binding for .11.
    raw = socket.create_connection(("127.0.0.1", p.ports[1]), timeout=10,
                                   source_address=("127.0.0.11", 0))
    assert raw.recv(1000).startswith(b"554 5.7.1 ")
    raw.close()
    wait_until(lambda: json.loads(ctl(sock, "show", "info", "json")[1])
               ["connections_active"] == 0, 10, what="all sessions closed")
    p.ids = ids
    return p


def fetch(port, path="/metrics"):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read().decode()


def test_stat_counts(traffic):
    rc, out = ctl(traffic.sock, "show", "stat", "json")
    assert rc == 0
    stat = {c["name"]: c for c in json.loads(out)["receive_connectors"]}
    relay, front = stat["Anonymous Relay"], stat["Default Frontend"]
    assert (relay["connections"], relay["messages"], relay["active"]) == (2, 2, 0)
    assert {k: v for k, v in relay["rejected"].items() if v} == \
        {"size": 1, "bare_lf": 1, "protocol": 1}
    # The fixture's readiness probe was one more frontend connection.
    assert (front["connections"], front["messages"]) == (2, 1)
    assert {k: v for k, v in front["rejected"].items() if v} == {"relay": 1}
    assert stat["Only Ten"]["connections"] == 0
    info = json.loads(ctl(traffic.sock, "show", "info", "json")[1])
    assert info["messages_received"] == 3
    # .11 on the second binding, and the fixture's readiness probe from
    # 127.0.0.1 there: "Only Ten" takes neither.
    assert info["connections_refused"] == 2
    assert info["queue_messages"] == 3
    rc, text = ctl(traffic.sock, "show", "stat")
    assert rc == 0
    assert re.search(r"^Anonymous Relay +2 +0 +2 +\d+ +3 +0 +0%$", text, re.M), text


def test_metrics_endpoint(traffic):
    status, ctype, body = fetch(traffic.mport)
    assert status == 200
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
    lines = body.split("\n")
    for want in [
        'postern_connections_total{connector="Anonymous Relay"} 2',
        'postern_connections_total{connector="Default Frontend"} 2',
        'postern_connections_active{connector="Anonymous Relay"} 0',
        'postern_connections_refused_total{reason="no_connector"} 2',
        'postern_messages_received_total{connector="Anonymous Relay"} 2',
        'postern_messages_received_total{connector="Default Frontend"} 1',
        'postern_messages_rejected_total{connector="Default Frontend",reason="relay"} 1',
        'postern_messages_rejected_total{connector="Anonymous Relay",reason="size"} 1',
        'postern_messages_rejected_total{connector="Anonymous Relay",reason="bare_lf"} 1',
        'postern_messages_rejected_total{connector="Anonymous Relay",reason="relay"} 0',
        "postern_queue_messages 3",
        'postern_accept_latency_seconds_bucket{le="+Inf"} 3',
        "postern_accept_latency_seconds_count 3",
        "# TYPE postern_throttled_total counter",
        "# TYPE postern_messages_delivered_total counter",
    ]:
        assert want in lines, want
    # Message bytes as stored (wire form, Received: included), envelope not.
    spool = sum(len(traffic.read_message(i).partition(b"\r\n\r\n")[2]) for i in traffic.ids)
    assert "postern_spool_bytes %d" % spool in lines
    # The socket serves the same text.
    rc, text = ctl(traffic.sock, "show", "metrics")
    assert rc == 0 and text.split("\n")[:40] == lines[:40]
    assert fetch(traffic.mport, "/other")[0] == 404


METRIC_LINE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\.)*")*)\})? (-?[0-9.e+-]+|\+Inf|NaN)$')


def test_metrics_format_is_strict(traffic):
    body = fetch(traffic.mport)[2]
    assert body.endswith("\n")
    declared = {}
    seen_samples = set()
    buckets = []
    for line in body.rstrip("\n").split("\n"):
        m = re.match(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$", line)
        if m:
            if m.group(1) == "TYPE":
                assert m.group(3) in ("counter", "gauge", "histogram"), line
                assert m.group(2) not in declared, "TYPE twice: " + line
                assert m.group(2) not in seen_samples, "TYPE after samples: " + line
                declared[m.group(2)] = m.group(3)
            continue
        m = METRIC_LINE.match(line)
        assert m, "bad sample line: %r" % line
        name = m.group(1)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        fam = name if name in declared else base
        assert fam in declared, "sample without TYPE: " + line
        if declared[fam] == "counter":
            assert name.endswith("_total"), line
        seen_samples.add(fam)
        if name.endswith("_bucket"):
            buckets.append(float(m.group(7)))
    assert buckets == sorted(buckets), "histogram buckets must be cumulative"
    promtool = shutil.which("promtool") or os.path.join(REPO, "build-tools", "promtool")
    if os.access(promtool, os.X_OK):
        r = subprocess.run([promtool, "check", "metrics"], input=body.encode(),
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_queue_listing(traffic):
    rc, out = ctl(traffic.sock, "show", "queue", "json")
    assert rc == 0
    q = json.loads(out)
    assert q["count"] == 3
    by_id = {m["id"]: m for m in q["messages"]}
    assert sorted(by_id) == sorted(traffic.ids)
    second = by_id[traffic.ids[1]]
    assert second["sender"] == "<sender@app.example>"
    assert second["recipients"] == ["<b@other.example>", "<c@other.example>"]
    assert second["connector"] == "Anonymous Relay"
    # The only send connector's smart host refuses connections: one attempt
    # each, deferred for the hour of retry_interval.
    wait_until(lambda: all(m["attempts"] == 1 for m in
                           json.loads(ctl(traffic.sock, "show", "queue", "json")[1])["messages"]),
               10 * SLOW, what="every message to be tried once")
    second = {m["id"]: m for m in json.loads(ctl(traffic.sock, "show", "queue", "json")[1])
              ["messages"]}[traffic.ids[1]]
    assert second["pending"] == 2
    assert second["last_error"].startswith("451 4.4.1 No next hop "), second["last_error"]
    assert "Connection refused" in second["last_error"]
    assert 3500 <= second["next_attempt_in_s"] <= 3600
    rc, text = ctl(traffic.sock, "show", "queue")
    assert rc == 0 and text.endswith("3 messages queued\n")
    assert text.count("last error: 451 4.4.1") == 3
    # flush: every message is tried again now, not in an hour.
    rc, out = ctl(traffic.sock, "flush")
    assert rc == 0 and out == "flushing: every queued message is due now\n"
    wait_until(lambda: all(m["attempts"] == 2 for m in
                           json.loads(ctl(traffic.sock, "show", "queue", "json")[1])["messages"]),
               10 * SLOW, what="every message to be tried a second time")
    assert traffic.stderr().count("event=flush ") == 2  # one per worker


def test_event_log_lines(traffic):
    log = traffic.stderr()
    for i, mid in enumerate(traffic.ids):
        assert re.search(r'event=receive id=%s from=<sender@app.example> to=\S+ nrcpt=\d '
                         r'connector="[^"]+" client=127\.0\.0\.\d+ size=\d+ '
                         r'reply="250 2\.6\.0 <%s> Queued mail for delivery"' % (mid, mid),
                         log), mid
    assert re.search(r'event=receive id=%s from=<sender@app.example> '
                     r'to="?<b@other.example>,<c@other.example>"? nrcpt=2 ' % traffic.ids[1], log)
    assert ('event=reject reason=relay from=<sender@app.example> to=<x@other.example> '
            'connector="Default Frontend" client=127.0.0.50 '
            'reply="550 5.7.1 Unable to relay"') in log
    assert 'event=reject reason=size ' in log and 'event=reject reason=bare_lf ' in log
    assert re.search(r'event=refuse client=127\.0\.0\.11 binding=127\.0\.0\.1:%d '
                     r'reason=no_connector' % traffic.ports[1], log)
    assert re.search(r'event=connect client=127\.0\.0\.10 connector="Anonymous Relay" '
                     r'range=127\.0\.0\.10 ', log)
    assert re.search(r'event=disconnect client=127\.0\.0\.50 connector="Default Frontend" '
                     r'messages=1 rejects=1 ', log)
    # protocol_log on the relay connector only; AUTH secrets masked.
    assert ('event=smtp dir=in client=127.0.0.10 connector="Anonymous Relay" '
            'line="AUTH PLAIN ****"') in log
    assert "c2VjcmV0" not in log
    assert ('event=smtp dir=out client=127.0.0.10 connector="Anonymous Relay" '
            'line="250 2.1.0 Sender OK"') in log
    assert "smuggle" not in log  # never message data
    assert not re.search(r'event=smtp [^\n]*client=127\.0\.0\.50', log)


def test_unknown_command_lists_commands(traffic):
    rc, out = ctl(traffic.sock, "frobnicate")
    assert rc == 1
    assert out == ('error: unknown command "frobnicate"; commands: show info [json] | '
                   'show stat [json] | show connectors [json] | '
                   'show throttle | show metrics | match <ip>[:<port>] [json] | flush | reload | '
                   'drain | help | show queue [sender=S] [rcpt=R] [domain=D] [client=IP] '
                   '[state=active|deferred|held] [limit=N] [offset=N] [json] | '
                   'show destinations [filters] [json] | '
                   'hold|release|delete|bounce|retry ID|all [filters] [json] | '
                   'track [id=ID] [sender=S] [rcpt=R] [message_id=M] [since=TIME] '
                   '[until=TIME] [limit=N] [json]\n')
