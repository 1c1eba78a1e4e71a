"""Receive-connector throttling: message rate per source (token bucket,
burst = the per-minute figure), connections per source, the exact replies,
postern_throttled_total and show throttle."""
import os
import re
import socket
import subprocess

from conftest import BUILD, RawClient, free_port, wait_until

CTL = os.path.join(BUILD, "posternctl")

RATE = """receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ];
    message_rate_limit = 60; message_rate_source = "ip";
    max_inbound_connection_per_source = 3; }
);
"""

R_RATE = ("421 4.4.2 Message submission rate for this client has exceeded the "
          "configured limit")
R_CONNS = ("421 4.3.2 The maximum number of concurrent connections has exceeded a "
           "limit, closing transmission channel")


def send_one(c, n):
    c.send("MAIL FROM:<a@app.example>\r\n")
    r = c.reply()
    if not r.startswith("250 "):
        return r
    c.send("RCPT TO:<x@other.example>\r\nDATA\r\n")
    assert c.replies(2)[1].startswith("354 ")
    c.send(b"Subject: %d\r\n\r\nbody\r\n.\r\n" % n)
    return c.reply()


def start(postern, tmp_path):
    sock = tmp_path / "stats.sock"
    p = postern(RATE, server_extra='  stats_socket = "%s";\n' % sock)
    p.sock = sock
    return p


def ctl(sock, *args):
    r = subprocess.run([CTL, "-s", str(sock)] + list(args), capture_output=True, timeout=30)
    return r.stdout.decode()


def test_message_rate_per_source(postern, tmp_path):
    p = start(postern, tmp_path)
    c = RawClient(p.port, "127.0.0.20")
    c.cmd("EHLO client.example")
    for n in range(60):
        r = send_one(c, n)
        assert r.startswith("250 2.6.0 "), (n, r)
    # The 61st message: refused with the exact reply, and the connection ends.
    assert send_one(c, 60) == R_RATE
    c.expect_closed()
    c.close()
    # Another source on the same connector is not affected.
    d = RawClient(p.port, "127.0.0.21")
    d.cmd("EHLO client.example")
    assert send_one(d, 0).startswith("250 2.6.0 ")
    d.cmd("QUIT")
    d.close()
    # The first source is still limited on a new connection.
    e = RawClient(p.port, "127.0.0.20")
    e.cmd("EHLO client.example")
    assert send_one(e, 61) == R_RATE
    e.close()
    assert len(p.messages()) == 61
    metrics = ctl(p.sock, "show", "metrics")
    assert 'postern_throttled_total{connector="Relay",reason="message_rate"} 2\n' in metrics
    throttle = ctl(p.sock, "show", "throttle")
    row = [l for l in throttle.split("\n") if " 127.0.0.20 " in l]
    assert len(row) == 1 and row[0].split()[-1] == "60", throttle
    assert not [l for l in throttle.split("\n") if " 127.0.0.21 " in l]
    log = p.stderr()
    assert re.search(r"event=throttle reason=message_rate connector=Relay client=127\.0\.0\.20 "
                     r"source=ip limit=60/min tokens=0\.\d\d", log), log[-2000:]


def test_connections_per_source(postern, tmp_path):
    p = start(postern, tmp_path)
    held = [RawClient(p.port, "127.0.0.30") for _ in range(3)]
    for c in held:
        assert c.greeting.startswith("220 ")
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10,
                                 source_address=("127.0.0.30", 0))
    f = s.makefile("rb")
    assert f.readline().decode().rstrip("\r\n") == R_CONNS
    assert f.readline() == b""
    s.close()
    other = RawClient(p.port, "127.0.0.31")
    assert other.greeting.startswith("220 ")
    held[0].cmd("QUIT")
    held[0].close()
    # A slot is free again once the worker has seen the close.
    def admitted():
        c = RawClient(p.port, "127.0.0.30")
        ok = c.greeting.startswith("220 ")
        c.close()
        return ok
    wait_until(lambda: _try(admitted), 10, what="a fourth connection once one closed")
    for c in held[1:] + [other]:
        c.close()
    metrics = ctl(p.sock, "show", "metrics")
    m = re.search(r'postern_throttled_total\{connector="Relay",'
                  r'reason="max_inbound_connection_per_source"\} (\d+)', metrics)
    assert m and int(m.group(1)) >= 1
    assert re.search(r"event=throttle reason=max_inbound_connection_per_source connector=Relay "
                     r"client=127\.0\.0\.30 limit=3 current=4", p.stderr())


def _try(fn):
    try:
        return fn()
    except AssertionError:
        return False


TARPIT = """receive_connectors = (
  { name = "Frontend"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "0.0.0.0/0" ]; permission_groups = [ "anonymous" ];
    tarpit_interval = "1s"; },
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.10" ]; permission_groups = [ "anonymous_relay" ];
    tarpit_interval = "1s"; }
);
"""


def timed(c, line):
    import time
    t0 = time.monotonic()
    r = c.cmd(line)
    return r, time.monotonic() - t0


def test_tarpit_delays_5xx_to_anonymous_clients(postern):
    p = postern(TARPIT)
    c = RawClient(p.port, "127.0.0.50")
    c.cmd("EHLO client.example")
    r, t = timed(c, "MAIL FROM:<a@app.example>")
    assert r == "250 2.1.0 Sender OK" and t < 0.5, t
    r, t = timed(c, "RCPT TO:<x@other.example>")
    assert r == "550 5.7.1 Unable to relay"
    assert 0.95 <= t < 3, t
    r, t = timed(c, "RCPT TO:<x@corp.example>")
    assert r == "250 2.1.5 Recipient OK" and t < 0.5, t
    c.cmd("QUIT")
    c.close()
    # A connector with relay rights is never tarpitted.
    d = RawClient(p.port, "127.0.0.10")
    d.cmd("EHLO client.example")
    r, t = timed(d, "MAIL FROM:<not an address>")
    assert r == "550 5.1.7 Invalid address" and t < 0.5, t
    d.cmd("QUIT")
    d.close()


SEND_RATE = """receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; }
);
send_connectors = (
  { name = "Quota"; address_spaces = [ "*" ]; smart_hosts = [ "127.0.0.1:%d" ];
    max_message_rate = 120; }
);
"""


def test_send_connector_message_rate_observed_at_the_sink(postern, tmp_path):
    """max_message_rate = 120 per minute: a burst of 120 goes at once, then
    2 per second, measured from the sink's arrival times; nothing is
    deferred or bounced for it, messages wait."""
    import json
    import smtplib
    import time
    from conftest import SLOW
    from sink import Sink
    sink_port = free_port()
    with Sink(sink_port) as sink:
        sock = str(tmp_path / "stats.sock")
        p = postern(SEND_RATE % sink_port, server_extra='  stats_socket = "%s";\n' % sock)
        s = smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.10", 0), timeout=10)
        for i in range(130):
            s.sendmail("app@app.example", ["x%d@dest.example" % i],
                       "Subject: %d\r\n\r\nrate\r\n" % i)
        s.quit()
        wait_until(lambda: sink.count() == 130, 20 * SLOW, interval=0.05,
                   what="all 130 messages at the sink")
        t = sorted(m["t"] for m in sink.snapshot())
        # The burst: 120 at once (within the time it took to send them).
        assert t[119] - t[0] < 3 * SLOW
        # Then the refill rate: 10 more over 5 s, within 10%.
        rate = 10 / (t[129] - t[119])
        assert 1.8 <= rate <= 2.2, "observed %.2f msg/s after the burst, limit 2/s" % rate
    log = p.stderr()
    assert re.search(r'event=throttle reason=send_message_rate send_connector="Quota" '
                     r'limit=120 current=\d+', log)
    assert "event=defer " not in log and "event=bounce " not in log
    assert log.count("event=deliver ") == 130
    out = ctl(sock, "show", "stat", "json")
    quota = [c for c in json.loads(out)["send_connectors"] if c["name"] == "Quota"][0]
    assert quota["delivered"] == 130 and quota["deferred"] == 0
    assert quota["throttled"] == 10


def test_send_connector_max_connections_across_workers(postern):
    """max_connections = 2 holds for the connector as a whole (clients from
    several addresses land on both workers): the sink never sees more than
    2 at once, and every message arrives."""
    import smtplib
    import threading
    from conftest import SLOW
    from sink import Sink
    sink_port = free_port()
    text = SEND_RATE.replace("max_message_rate = 120;", "max_connections = 2; "
                             "max_messages_per_connection = 5;") % sink_port
    # A slow next hop keeps connections busy, so more would be opened if allowed.
    with Sink(sink_port, data_reply=lambda m: __import__("time").sleep(0.05) or None) as sink:
        p = postern(text)

        def client(k):
            s = smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.%d" % (10 + k), 0),
                             timeout=10)
            for i in range(10):
                s.sendmail("app@app.example", ["c%d-%d@dest.example" % (k, i)], "Subject: c\r\n\r\nx\r\n")
            s.quit()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        wait_until(lambda: sink.count() == 40, 30 * SLOW, interval=0.05,
                   what="all 40 messages at the sink")
        assert sink.max_active <= 2, "the sink saw %d connections at once" % sink.max_active
        assert sink.max_active == 2
        # 5 messages per connection at most: at least 8 connections in all.
        assert sink.connections >= 8
