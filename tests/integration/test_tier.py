"""The relay tier (DESIGN B.10): a real HAProxy in front of three Postern
nodes, each with its own spool and port, all delivering to one shared sink.

HAProxy (its configuration written here, run in the foreground) listens on
127.0.0.1, balances TCP connections round-robin over the nodes with
`send-proxy-v2`, connects to them from 127.0.0.2 (`source`), the one trusted
proxy of every node, and health-checks each node's metrics port with
`GET /readyz`. Clients connect to HAProxy from 127.0.0.x addresses of their
own; the nodes must see those addresses, not the proxy's. Each node has its
own hostname (n0.tier.test, ...), so a client learns from the greeting which
node serves it, and the sink from Received: which node delivered a message.

The last test talks PROXY v1/v2 to one node by hand, without HAProxy."""
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import (BUILD, R_RCPT_OK, R_SHUTTING_DOWN, R_START_DATA, R_UNABLE_TO_RELAY,
                      SLOW, Postern, free_wildcard_port, port_refuses, wait_until)
from sink import Sink

HAPROXY = "/usr/sbin/haproxy"
CTL = os.path.join(BUILD, "posternctl")
PROXY_ADDR = "127.0.0.2"          # HAProxy's source toward the nodes: the trusted proxy
R_RATE = ("421 4.4.2 Message submission rate for this client has exceeded the "
          "configured limit")
R_CONN_LIMIT = ("421 4.3.2 The maximum number of concurrent connections has exceeded "
                "a limit, closing transmission channel")
R_QUEUED = re.compile(r"250 2\.6\.0 <([0-9A-F]+)> Queued mail for delivery$")
R_GREETING = re.compile(r"220 (n\d)\.tier\.test Postern ESMTP service ready$")

pytestmark = pytest.mark.skipif(not os.access(HAPROXY, os.X_OK),
                                reason="HAProxy not installed (scripts/install-deps.sh)")

# Every node: anyone may submit to corp.example, clients in 127.0.0.10-19
# (and 2001:db8::/32, for the raw PROXY test) may relay anywhere.
CONNECTORS = """receive_connectors = (
  { name = "Default Frontend"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "0.0.0.0-255.255.255.255", "::/0" ];
    permission_groups = [ "anonymous" ]; },
  { name = "Client Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.10-127.0.0.19", "2001:db8::/32" ];
    permission_groups = [ "anonymous_relay" ];
    max_inbound_connection_per_source = %(per_source)s;
    message_rate_limit = %(rate)s; }
);
"""
TO_SINK = """send_connectors = ( { name = "Sink"; address_spaces = [ "*" ];
    smart_hosts = [ "127.0.0.1:%d" ]; } );
queue = { retry_interval = "1s"; max_retry_interval = "1s"; };
"""


_taken = set()


def stable_port():
    """A free port outside the ephemeral range: a node must get its ports
    back when it restarts after a kill -9, and under load any ephemeral port
    may meanwhile be the local end of some outgoing connection (a delivery
    to the sink, a health check), which a listener cannot bind over."""
    while True:
        p = free_wildcard_port()
        if p not in _taken:
            _taken.add(p)
            return p


def server_extra(port, mport, sock=None):
    return (('  stats_socket = "%s";\n' % sock if sock else "") +
            '  metrics_listen = "127.0.0.1:%d";\n'
            '  proxy_protocol = { bindings = [ "127.0.0.1:%d" ]; '
            'trusted_proxies = [ "%s" ]; };\n' % (mport, port, PROXY_ADDR))


# ---------------------------------------------------------------------------
# Helpers: logs, metrics, posternctl

LOG_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def events(text, event, **match):
    out = []
    for line in text.splitlines():
        if " event=%s " % event not in line:
            continue
        f = {k: (v[1:-1] if v.startswith('"') else v) for k, v in LOG_FIELD.findall(line)}
        if f.get("event") == event and all(f.get(k) == v for k, v in match.items()):
            f["_line"] = line
            out.append(f)
    return out


def wait_events(p, event, count, timeout=5, **match):
    """The log lines of an event once there are at least count of them (a
    line is written a moment after the reply it goes with)."""
    try:
        wait_until(lambda: len(events(p.stderr(), event, **match)) >= count, timeout,
                   interval=0.05, what="%d x event=%s %r in %s" % (count, event, match,
                                                                  p.dir.name))
    except AssertionError as e:
        raise AssertionError("%s\n%s" % (e, p.stderr()[-3000:]))
    return events(p.stderr(), event, **match)


def http_get(port, path):
    """(status, body) of GET path on a metrics port; (None, "") when nothing
    answers."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                    timeout=5 * SLOW) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, ConnectionError, socket.timeout):
        return None, ""


def metric(text, name, **labels):
    """Sum of the samples of one metric whose labels include labels."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    assert found, "no %s%r in /metrics" % (name, labels)
    return total


def ctl(sock, *args):
    r = subprocess.run([CTL, "-s", str(sock)] + list(args), capture_output=True,
                       timeout=20 * SLOW)
    return r.returncode, r.stdout.decode() + r.stderr.decode()


class GatedSink(Sink):
    """The shared next hop. While the gate is shut every MAIL gets a 451,
    so what the nodes accept stays in their queues (deferred, retried each
    second); once it is open, everything is delivered."""

    def __init__(self, open_=True):
        self.gate = threading.Event()
        if open_:
            self.gate.set()
        super().__init__()

    def mail_refusal(self, c):
        return None if self.gate.is_set() else "451 4.3.0 Next hop shut for the test"

    def keys(self):
        """Message key -> how many copies arrived, and -> the Received: lines."""
        count, received = {}, {}
        for m in self.snapshot():
            k = re.search(rb"\r\nMessage-ID: <([^>@]+)@tier\.test>\r\n", m["data"])
            assert k, m["data"][:400]
            key = k.group(1).decode()
            count[key] = count.get(key, 0) + 1
            received.setdefault(key, []).append(
                re.search(rb"^Received: from [^\r]*\r\n\t[^\r]*", m["data"]).group(0).decode())
        return count, received


def message(key, client):
    return ("From: <load@app.example>\r\nTo: <x@other.example>\r\n"
            "Subject: tier %s\r\nMessage-ID: <%s@tier.test>\r\n\r\n"
            "sent by %s through the tier\r\n" % (key, key, client)).encode()


class Client:
    """A raw SMTP client with bounded reads. line() is None at the end of
    the stream; reply() returns the lines of one reply (None at the end)."""

    def __init__(self, port, source, timeout=5.0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((source, 0))
        self.timeout = timeout * SLOW
        self.sock.settimeout(self.timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""

    def line(self):
        deadline = time.monotonic() + self.timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply line; have %r" % self.buf[-200:])
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if self.buf:
                    raise ConnectionError("partial line then EOF: %r" % self.buf)
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("latin-1")

    def reply_lines(self):
        lines = []
        while True:
            ln = self.line()
            if ln is None:
                return lines or None
            lines.append(ln)
            if len(ln) < 4 or ln[3] != "-":
                return lines

    def reply(self):
        """The last line of the next reply (None at the end of the stream)."""
        lines = self.reply_lines()
        return lines[-1] if lines else None

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def cmd(self, text):
        self.send(text + "\r\n")
        return self.reply()

    def ehlo(self, name="client.example"):
        self.send("EHLO %s\r\n" % name)
        return self.reply_lines()

    def transaction(self, key, client, rcpt="x@other.example"):
        """MAIL, RCPT, DATA pipelined, then the message: the final reply."""
        self.send("MAIL FROM:<load@app.example>\r\nRCPT TO:<%s>\r\nDATA\r\n" % rcpt)
        r = [self.reply() for _ in range(3)]
        if r[2] != R_START_DATA:
            if any(x and x.startswith("421") for x in r):
                raise Refused421([x for x in r if x and x.startswith("421")][0])
            raise ConnectionError("envelope refused: %r" % r)
        self.send(message(key, client) + b".\r\n")
        return self.reply()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


class Refused421(ConnectionError):
    pass


# ---------------------------------------------------------------------------
# The tier


class Tier:
    """Three Postern nodes behind one HAProxy, one shared sink."""

    def __init__(self, tmp_path, nodes=3, per_source=20, sink_open=True, single=False,
                 rate='"unlimited"', smtpchk=False):
        self.tmp = tmp_path
        self.sink = GatedSink(open_=sink_open)
        self.nodes, self.mports, self.socks = [], [], []
        self.clients = []
        self.haproxy = None
        conf = (CONNECTORS % {"per_source": per_source, "rate": rate}) + TO_SINK % self.sink.port
        for i in range(nodes):
            port, mport = stable_port(), stable_port()
            sock = tmp_path / ("n%d.sock" % i)
            p = Postern(tmp_path, conf, name="n%d" % i, ports=[port],
                        server_extra=server_extra(port, mport, sock))
            # Its own hostname: the greeting says which node a client got.
            p.config.write_text(p.config.read_text().replace(
                'hostname = "relay.test.example"', 'hostname = "n%d.tier.test"' % i))
            self.nodes.append(p)
            self.mports.append(mport)
            self.socks.append(sock)
        self.port = stable_port()
        self.single_port = stable_port() if single else None
        self.smtpchk = smtpchk
        self.stats_port = stable_port()
        self.cfg = tmp_path / "haproxy.cfg"
        self.cfg.write_text(self.haproxy_config())
        self.ha_log = tmp_path / "haproxy.log"

    def start(self):
        for p in self.nodes:
            p.start()
        self._ha_err = open(self.ha_log, "wb")
        self.haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(self.cfg)],
                                        stdin=subprocess.DEVNULL, stdout=self._ha_err,
                                        stderr=self._ha_err)
        self.wait_servers({"n%d" % i: "UP" for i in range(len(self.nodes))}, 10)
        return self

    def haproxy_config(self):
        servers = ["  server n%d 127.0.0.1:%d check port %d" % (i, p.port, self.mports[i])
                   for i, p in enumerate(self.nodes)]
        cfg = ["global",
               "  maxconn 4000",
               "  stats socket ipv4@127.0.0.1:%d level admin" % self.stats_port,
               "defaults",
               "  mode tcp",
               "  timeout connect 1s",
               "  timeout client 30s",
               "  timeout server 30s",
               # A node that refuses a connection (killed, drained) before its
               # health check says so: try again, on another node.
               "  retries 3",
               "  option redispatch 1",
               "frontend smtp",
               "  bind 127.0.0.1:%d" % self.port,
               "  default_backend nodes",
               "backend nodes",
               "  balance roundrobin",
               "  option httpchk GET /readyz",
               "  http-check expect status 200",
               "  default-server inter 200ms fastinter 100ms downinter 200ms fall 1 rise 1 "
               "send-proxy-v2 source %s" % PROXY_ADDR] + servers
        if self.single_port:
            cfg += ["frontend single",
                    "  bind 127.0.0.1:%d" % self.single_port,
                    "  default_backend first",
                    "backend first",
                    "  option httpchk GET /readyz",
                    "  http-check expect status 200",
                    "  default-server inter 200ms fall 1 rise 1 send-proxy-v2 source %s"
                    % PROXY_ADDR, servers[0]]
        if self.smtpchk:
            # HAProxy's SMTP check on the SMTP port itself: with send-proxy-v2
            # and no other check port, each check begins with a v2 LOCAL header.
            cfg += ["backend smtpcheck",
                    "  option smtpchk EHLO haproxy.tier.test",
                    "  default-server inter 200ms fall 1 rise 1 send-proxy-v2 source %s"
                    % PROXY_ADDR] + \
                ["  server n%d 127.0.0.1:%d check" % (i, p.port) for i, p in enumerate(self.nodes)]
        return "\n".join(cfg) + "\n"

    # -- HAProxy's view

    def stat(self):
        """HAProxy's `show stat`: (backend, server) -> fields."""
        if self.haproxy.poll() is not None:
            raise AssertionError("haproxy exited %s:\n%s" % (self.haproxy.returncode,
                                                           self.ha_log.read_text()))
        try:
            with socket.create_connection(("127.0.0.1", self.stats_port), timeout=2) as s:
                s.sendall(b"show stat\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return {}
        lines = data.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        head = lines[0][2:].split(",")
        rows = {}
        for ln in lines[1:]:
            if ln:
                f = dict(zip(head, ln.split(",")))
                rows[(f["pxname"], f["svname"])] = f
        return rows

    def wait_servers(self, want, timeout, backend="nodes"):
        """Until HAProxy's status of each named server starts with want[name]
        (UP, DOWN); returns the rows."""
        def ok():
            st = self.stat()
            rows = {n: st.get((backend, n)) for n in want}
            if all(r and r["status"].startswith(s) for (n, s), r in
                   zip(want.items(), rows.values())):
                return rows
            return None
        try:
            return wait_until(ok, timeout, interval=0.05, what="HAProxy to see %r" % want)
        except AssertionError as e:
            raise AssertionError("%s; now %r\n%s" % (
                e, {k: (v["status"], v.get("check_status")) for k, v in self.stat().items()},
                self.ha_log.read_text()))

    # -- clients

    def client(self, source, port=None, timeout=5.0):
        c = Client(port or self.port, source, timeout)
        self.clients.append(c)
        return c

    def node(self, name):
        return self.nodes[int(name[1:])]

    def metrics(self, i):
        status, body = http_get(self.mports[i], "/metrics")
        assert status == 200, (status, body)
        return body

    def close(self):
        errors = []
        for c in self.clients:
            c.close()
        if self.haproxy:
            if self.haproxy.poll() is None:
                self.haproxy.send_signal(signal.SIGTERM)
            try:
                self.haproxy.wait(5)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait()
            self._ha_err.close()
        for p in self.nodes:
            try:
                if p.proc is not None and not p.stopped:
                    p.stop()
            except Exception as e:  # report every node, not just the first
                errors.append("%s: %s" % (p.dir.name, e))
            finally:
                p.kill()
        try:
            self.sink.close()
        except AssertionError as e:
            errors.append("sink: %s" % e)
        assert not errors, "\n".join(errors)


@pytest.fixture
def tier_factory(tmp_path):
    made = []

    def make(**kw):
        t = Tier(tmp_path, **kw)
        made.append(t)   # stopped at teardown, however far start() got
        return t.start()

    yield make
    for t in made:
        t.close()


def restart(p):
    """The same node (configuration, spool, port) after a kill -9."""
    p.stopped = True
    q = Postern.__new__(Postern)
    q.__dict__.update(p.__dict__)
    q.proc = None
    q.stopped = False
    q.crashed = True
    return q.start()


class Load(threading.Thread):
    """One client of the tier: sends messages with unique keys through
    HAProxy, a few per connection, and tries a message again (same key)
    when it is refused or its connection is cut. Records, per acknowledged
    key, the node that acknowledged it, its queue id and when."""

    def __init__(self, port, i, count, deadline, per_conn=4, pause=0.01, prefix="m"):
        super().__init__(daemon=True)
        self.port, self.i, self.count = port, i, count
        self.source = "127.0.0.%d" % (10 + i)
        self.deadline, self.per_conn, self.pause = deadline, per_conn, pause
        self.prefix = prefix
        self.acked = {}           # key -> (node, queue id, monotonic time)
        self.failures = []        # what went wrong, for the report
        self.replies_421 = []
        self.stop = threading.Event()

    def run(self):
        c, node, on_conn = None, None, 0
        n = 0
        while n < self.count and not self.stop.is_set() and time.monotonic() < self.deadline:
            key = "%s-%d-%d" % (self.prefix, self.i, n)
            try:
                if c is None:
                    c = Client(self.port, self.source, timeout=3.0)
                    g = c.line()
                    m = R_GREETING.match(g or "")
                    if not m:
                        raise ConnectionError("greeting %r" % g)
                    node, on_conn = m.group(1), 0
                    e = c.ehlo()
                    if not e or not e[-1].startswith("250 "):
                        raise ConnectionError("EHLO: %r" % e)
                try:
                    r = c.transaction(key, self.source)
                except Refused421 as e:
                    self.replies_421.append((node, str(e)))
                    raise
                m = R_QUEUED.match(r or "")
                if not m:
                    raise ConnectionError("end of data: %r" % r)
                self.acked[key] = (node, m.group(1), time.monotonic())
                n += 1
                on_conn += 1
                if on_conn >= self.per_conn:
                    c.send("QUIT\r\n")
                    c.close()
                    c = None
                time.sleep(self.pause)
            except (OSError, AssertionError, ConnectionError, TimeoutError) as e:
                self.failures.append((node, key, repr(e)[:200]))
                if c:
                    c.close()
                c = None
                time.sleep(0.05)
        if c:
            try:
                c.send("QUIT\r\n")
            except OSError:
                pass
            c.close()


def all_acked(loads):
    out = {}
    for ld in loads:
        out.update(ld.acked)
    return out


def wait_delivered(tier, keys, timeout=30):
    def done():
        got, _ = tier.sink.keys()
        return set(keys) <= set(got)
    try:
        wait_until(done, timeout, interval=0.2, what="every acknowledged message at the sink")
    except AssertionError:
        got, _ = tier.sink.keys()
        missing = sorted(set(keys) - set(got))
        raise AssertionError("%d acknowledged messages missing at the sink, e.g. %r\n%s" % (
            len(missing), missing[:5], "\n".join(
                "%s queue: %s" % (p.dir.name, p.messages() if p.proc.poll() is not None else "-")
                for p in tier.nodes)))


# ---------------------------------------------------------------------------
# 1. Connector selection, logs and Received: use the client's address


def test_through_haproxy_the_real_client_address_selects_the_connector(tier_factory):
    t = tier_factory()
    # 127.0.0.10 is in the relay range: through HAProxy it may relay. One
    # message per connection, three connections: round-robin gives one to
    # each node, and each node must see the client, not the proxy.
    served = []
    for n in range(3):
        c = t.client("127.0.0.10")
        g = R_GREETING.match(c.line())
        assert g, "no greeting through HAProxy"
        ehlo = c.ehlo()
        assert ehlo[0] == "250-%s.tier.test Hello [127.0.0.10]" % g.group(1), ehlo
        assert c.cmd("MAIL FROM:<app@app.example>") == "250 2.1.0 Sender OK"
        assert c.cmd("RCPT TO:<someone@outside.example>") == R_RCPT_OK
        assert c.cmd("DATA") == R_START_DATA
        c.send(message("relay-%d" % n, "127.0.0.10") + b".\r\n")
        assert R_QUEUED.match(c.reply())
        assert c.cmd("QUIT").startswith("221 ")
        served.append(g.group(1))
    assert sorted(served) == ["n0", "n1", "n2"], "round-robin over the three nodes: %r" % served

    # 127.0.0.30 is not: the default connector, no relaying.
    c = t.client("127.0.0.30")
    g = R_GREETING.match(c.line())
    assert g
    assert c.ehlo()[0] == "250-%s.tier.test Hello [127.0.0.30]" % g.group(1)
    assert c.cmd("MAIL FROM:<app@app.example>") == "250 2.1.0 Sender OK"
    assert c.cmd("RCPT TO:<someone@outside.example>") == R_UNABLE_TO_RELAY
    assert c.cmd("RCPT TO:<user@corp.example>") == R_RCPT_OK
    assert c.cmd("QUIT").startswith("221 ")
    node30 = t.node(g.group(1))

    # Each node's log names the client and the proxy it came through.
    for name in served:
        conn = wait_events(t.node(name), "connect", 1, client="127.0.0.10")
        assert len(conn) == 1, conn
        assert conn[0]["connector"] == "Client Relay" and conn[0]["proxy"] == PROXY_ADDR, conn
        assert conn[0]["range"] == "127.0.0.10-127.0.0.19"
        rcv = wait_events(t.node(name), "receive", 1, client="127.0.0.10")
        assert len(rcv) == 1 and rcv[0]["connector"] == "Client Relay", rcv
    conn = wait_events(node30, "connect", 1, client="127.0.0.30")
    assert [(e["connector"], e["proxy"]) for e in conn] == [("Default Frontend", PROXY_ADDR)]
    rej = wait_events(node30, "reject", 1, client="127.0.0.30")
    assert [e["reply"] for e in rej] == [R_UNABLE_TO_RELAY], rej
    # Nobody was seen as the proxy's address in an SMTP session.
    for p in t.nodes:
        assert events(p.stderr(), "connect", client=PROXY_ADDR) == []

    # At the sink: every message says in Received: that it came from
    # [127.0.0.10], and which node took it.
    wait_delivered(t, ["relay-0", "relay-1", "relay-2"], 15)
    count, received = t.sink.keys()
    by = []
    for n in range(3):
        assert count["relay-%d" % n] == 1
        rcvd = received["relay-%d" % n][0]
        m = re.match(r"Received: from client\.example \(\[127\.0\.0\.10\]\)\r\n"
                     r"\tby (n\d)\.tier\.test \(Postern\) with ESMTP id [0-9A-F]+", rcvd)
        assert m, rcvd
        by.append(m.group(1))
    assert sorted(by) == ["n0", "n1", "n2"]
    assert "127.0.0.2" not in "".join(r[0] for r in received.values())


def test_haproxy_smtp_checks_with_a_local_header_are_the_proxy_itself(tier_factory):
    """HAProxy's own SMTP health checks (option smtpchk) on the PROXY binding
    begin with a v2 LOCAL header: each node serves them as a connection from
    127.0.0.2 on the default connector, and HAProxy sees the nodes up."""
    t = tier_factory(smtpchk=True)
    # (A server starts UP in HAProxy's view; L7OK says a check went through.)
    wait_until(lambda: all(t.stat().get(("smtpcheck", n), {}).get("check_status") == "L7OK"
                           for n in ("n0", "n1", "n2")), 10, interval=0.05,
               what="HAProxy's SMTP checks to pass")
    t.wait_servers({"n0": "UP", "n1": "UP", "n2": "UP"}, 1, backend="smtpcheck")
    for p in t.nodes:
        conn = wait_events(p, "connect", 2, client=PROXY_ADDR)
        assert all(e["connector"] == "Default Frontend" and e["proxy"] == PROXY_ADDR
                   for e in conn), conn
        assert not events(p.stderr(), "proxy_reject", client=PROXY_ADDR)
        assert events(p.stderr(), "disconnect", client=PROXY_ADDR)


# ---------------------------------------------------------------------------
# 2. Per-source connection limits hold per node, with the client's address


def hold_greeting(t, source, port=None):
    c = t.client(source, port=port)
    return c, c.line()


def test_per_source_limit_counts_the_client_not_the_proxy(tier_factory):
    t = tier_factory(per_source=2, single=True)
    t.wait_servers({"n0": "UP"}, 10, backend="first")

    # Through the frontend that only reaches n0: two connections from
    # 127.0.0.10 are held, the third is refused by n0 ...
    held = []
    for _ in range(2):
        c, g = hold_greeting(t, "127.0.0.10", t.single_port)
        assert g and R_GREETING.match(g) and g.startswith("220 n0."), g
        held.append(c)
    c, g = hold_greeting(t, "127.0.0.10", t.single_port)
    assert g == R_CONN_LIMIT
    assert c.line() is None, "the refused connection is closed"
    th = wait_events(t.nodes[0], "throttle", 1, client="127.0.0.10")
    assert len(th) == 1 and th[0]["reason"] == "max_inbound_connection_per_source", th
    assert th[0]["limit"] == "2" and th[0]["connector"] == "Client Relay"
    # ... while 127.0.0.11, through the same proxy address, is served and
    # may relay: the limit is on the client, not on 127.0.0.2.
    c11, g = hold_greeting(t, "127.0.0.11", t.single_port)
    assert g.startswith("220 n0."), g
    assert c11.ehlo()[0] == "250-n0.tier.test Hello [127.0.0.11]"
    assert c11.cmd("MAIL FROM:<a@app.example>") == "250 2.1.0 Sender OK"
    assert c11.cmd("RCPT TO:<b@outside.example>") == R_RCPT_OK
    c11.cmd("QUIT")
    # One of the two held ends: 127.0.0.10 gets in again.
    held.pop().cmd("QUIT")

    def again():
        c, g = hold_greeting(t, "127.0.0.10", t.single_port)
        if g and g.startswith("220 n0."):
            held.append(c)
            return True
        c.close()
        return False
    wait_until(again, 5, interval=0.1, what="a free slot for 127.0.0.10 again")

    # Through the balanced frontend: the limit holds on each node on its
    # own. Nine connections from 127.0.0.12 in turn, round-robin: each node
    # takes two and refuses its third, 6 held over the tier (2 x 3 nodes).
    got = {"n0": 0, "n1": 0, "n2": 0}
    refused = 0
    for _ in range(9):
        c, g = hold_greeting(t, "127.0.0.12")
        m = R_GREETING.match(g or "")
        if m:
            got[m.group(1)] += 1
            held.append(c)
        else:
            assert g == R_CONN_LIMIT, g
            refused += 1
    assert got == {"n0": 2, "n1": 2, "n2": 2} and refused == 3, (got, refused)
    for p in t.nodes:
        assert len(wait_events(p, "connect", 2, client="127.0.0.12")) == 2, p.dir.name
        th = wait_events(p, "throttle", 1, client="127.0.0.12")
        assert len(th) == 1 and th[0]["reason"] == "max_inbound_connection_per_source", (p.dir.name, th)
    # Another client is still welcome on every node.
    for _ in range(3):
        c, g = hold_greeting(t, "127.0.0.13")
        assert R_GREETING.match(g or ""), g
        held.append(c)
    for c in held:
        c.close()


def test_message_rate_limit_counts_the_client_on_each_node(tier_factory):
    """message_rate_limit = 2 (per source, per minute: a token per MAIL):
    keyed on the client's address, counted by each node on its own."""
    t = tier_factory(single=True, rate=2)
    t.wait_servers({"n0": "UP"}, 10, backend="first")

    def mails(source, n, port=None):
        c = t.client(source, port=port)
        g = c.line()
        assert R_GREETING.match(g or ""), g
        assert c.ehlo()[0].endswith("Hello [%s]" % source)
        out = []
        for _ in range(n):
            r = c.cmd("MAIL FROM:<a@app.example>")
            out.append(r)
            if r != "250 2.1.0 Sender OK":
                assert c.line() is None, "closed after the 421"
                break
            assert c.cmd("RSET").startswith("250 ")
        c.close()
        return g[4:6], out
    # Through n0 alone: 127.0.0.14 spends its two, the third MAIL is refused.
    assert mails("127.0.0.14", 3, t.single_port)[1] == ["250 2.1.0 Sender OK"] * 2 + [R_RATE]
    th = wait_events(t.nodes[0], "throttle", 1, client="127.0.0.14")
    assert [e["reason"] for e in th] == ["message_rate"], th
    # 127.0.0.15, through the same proxy address: a bucket of its own.
    assert mails("127.0.0.15", 2, t.single_port)[1] == ["250 2.1.0 Sender OK"] * 2
    # Round-robin over the three nodes: 127.0.0.16 gets two on each, six in
    # all, then each node refuses it.
    ok = {}
    for _ in range(3):
        node, out = mails("127.0.0.16", 2)
        assert out == ["250 2.1.0 Sender OK"] * 2, (node, out)
        ok[node] = 2
    assert sorted(ok) == ["n0", "n1", "n2"]
    for _ in range(3):
        node, out = mails("127.0.0.16", 1)
        assert out == [R_RATE], (node, out)
    for p in t.nodes:
        th = wait_events(p, "throttle", 1, client="127.0.0.16")
        assert [e["reason"] for e in th] == ["message_rate"], (p.dir.name, th)


# ---------------------------------------------------------------------------
# 3. kill -9 one node in the middle of a load


def test_kill_9_one_node_mid_load_every_acknowledged_message_arrives(tier_factory):
    # The sink stays shut until the killed node is back: what any node
    # acknowledged is still in its spool at the kill.
    t = tier_factory(sink_open=False)
    deadline = time.monotonic() + 12 * SLOW
    # 300 messages, paced so that the load spans the kill and the restart.
    loads = [Load(t.port, i, 50, deadline, pause=0.08) for i in range(6)]
    for ld in loads:
        ld.start()
    victim = t.nodes[1]
    wait_until(lambda: sum(1 for v in all_acked(loads).values() if v[0] == "n1") >= 15
               and len(all_acked(loads)) >= 80, 10, what="the load to reach n1")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    victim.stopped = True
    t_kill = time.monotonic()
    # HAProxy's check finds it gone; the load goes on on the two others.
    t.wait_servers({"n1": "DOWN", "n0": "UP", "n2": "UP"}, 5)
    n_at_kill = len(all_acked(loads))
    wait_until(lambda: len(all_acked(loads)) >= n_at_kill + 30, 10,
               what="the load to go on without n1")
    q = restart(victim)
    t.nodes[1] = q
    t.wait_servers({"n1": "UP"}, 10)
    t.sink.gate.set()
    for ld in loads:
        ld.join(20 * SLOW)
        assert not ld.is_alive()
    acked = all_acked(loads)
    assert len(acked) == 300, "the tier stayed available: %d of 300 acknowledged; failures %r" % (
        len(acked), [f for ld in loads for f in ld.failures][:10])

    # Every message n1 acknowledged before it died was recovered from its
    # spool and delivered by n1 itself.
    # (Which node acknowledged a message: the greeting of its connection.
    # Not the log: lines still buffered at the kill are lost with it.)
    n1_acked = {k: v for k, v in acked.items() if v[0] == "n1" and v[2] < t_kill}
    assert len(n1_acked) >= 15
    rec = re.search(r"event=recover segments=\d+ messages=(\d+) ", q.stderr())
    assert rec and int(rec.group(1)) >= len(n1_acked), q.stderr()[-3000:]

    wait_delivered(t, acked, 30)
    count, received = t.sink.keys()
    for key, (node, qid, _) in n1_acked.items():
        assert any(re.search(r"\tby n1\.tier\.test \(Postern\) with ESMTP id %s\b" % qid, r)
                   for r in received[key]), (key, received[key])
    # Received names the client on every one of them.
    for key, (node, qid, _) in acked.items():
        src = "127.0.0.%d" % (10 + int(key.split("-")[1]))
        assert any(r.startswith("Received: from client.example ([%s])" % src)
                   for r in received[key]), received[key]
    dups = sum(v - 1 for v in count.values())
    print("kill -9 mid-load: %d acknowledged, %d distinct at the sink, %d duplicates, "
          "%d client retries" % (len(acked), len(count), dups,
                                 sum(len(ld.failures) for ld in loads)))


# ---------------------------------------------------------------------------
# 4. posternctl drain in the middle of a load


def proxied_v2(src, dst):
    return v2_header(1, src, dst)


def test_drain_mid_load_takes_the_node_out_and_loses_nothing(tier_factory):
    t = tier_factory(sink_open=False)
    drained, mport, sock = t.nodes[1], t.mports[1], t.socks[1]
    # A session on n1 in the middle of DATA when the drain comes, straight
    # from the trusted proxy's address with a header of its own.
    mid = Client(drained.port, PROXY_ADDR)
    t.clients.append(mid)
    mid.send(proxied_v2(("127.0.0.19", 40000), ("127.0.0.1", drained.port)))
    assert mid.line().startswith("220 n1.tier.test ")
    mid.ehlo()
    mid.send("MAIL FROM:<mid@app.example>\r\nRCPT TO:<x@other.example>\r\nDATA\r\n")
    assert [mid.reply() for _ in range(3)][2] == R_START_DATA
    body = message("mid-drain", "127.0.0.19")
    mid.send(body[:40])

    deadline = time.monotonic() + 15 * SLOW
    loads = [Load(t.port, i, 10000, deadline, pause=0.05, prefix="d") for i in range(6)]
    for ld in loads:
        ld.start()
    wait_until(lambda: sum(1 for v in all_acked(loads).values() if v[0] == "n1") >= 10,
               10, what="the load to reach n1")
    assert http_get(mport, "/readyz") == (200, "ready\n")
    rc, out = ctl(sock, "drain")
    assert rc == 0, out
    m = re.match(r"draining: listeners closed, (\d+) messages? queued; ", out)
    assert m and int(m.group(1)) >= 10, out
    t_drain = time.monotonic()
    assert http_get(mport, "/readyz") == (503, "not ready: draining\n")
    assert http_get(mport, "/healthz") == (200, "ok\n")
    # Its listener is closed: a client that comes straight to it is refused.
    wait_until(lambda: port_refuses(drained.port), 5, interval=0.05,
               what="n1's listener to close")

    # HAProxy sees the 503 and takes n1 out (L7STS: the check's answer, not
    # a refused connection: n1 is alive, delivering its queue).
    rows = t.wait_servers({"n1": "DOWN"}, 5)
    assert rows["n1"]["check_status"] == "L7STS" and rows["n1"]["check_code"] == "503", rows["n1"]
    assert drained.proc.poll() is None
    stot = int(t.stat()[("nodes", "n1")]["stot"])
    conns = metric(http_get(mport, "/metrics")[1], "postern_connections_total")
    others = {n: int(t.stat()[("nodes", n)]["stot"]) for n in ("n0", "n2")}
    # Acknowledged from half a second after the drain on: the others only.
    settled = t_drain + 0.5 * SLOW

    def later():
        return {k: v for k, v in all_acked(loads).items() if v[2] > settled}
    wait_until(lambda: len(later()) >= 60, 10, what="the load to go on on n0 and n2")
    st = t.stat()
    assert int(st[("nodes", "n1")]["stot"]) == stot, "HAProxy sent n1 a new connection"
    assert metric(http_get(mport, "/metrics")[1], "postern_connections_total") == conns
    assert all(int(st[("nodes", n)]["stot"]) > others[n] for n in others), (others, st)
    late = later()
    assert {v[0] for v in late.values()} == {"n0", "n2"}, late

    # The session in DATA finishes its message; its next MAIL is told 421.
    mid.send(body[40:] + b".\r\n")
    r = mid.reply()
    m = R_QUEUED.match(r or "")
    assert m, r
    assert mid.cmd("MAIL FROM:<mid@app.example>") == R_SHUTTING_DOWN
    assert mid.line() is None
    mid_id = m.group(1)
    assert drained.proc.poll() is None, "n1 exited with its queue full"

    # The next hop opens: n1 delivers what it holds and exits 0 by itself.
    t.sink.gate.set()
    try:
        wait_until(lambda: drained.proc.poll() is not None, 20, interval=0.1,
                   what="n1 to exit after its drain")
    except AssertionError:
        raise AssertionError("n1 still running; queue %r\n%s" % (
            ctl(sock, "show queue")[1][:2000], drained.stderr()[-3000:]))
    assert drained.proc.returncode == 0, drained.stderr()[-3000:]
    log = drained.stderr()
    assert len(events(log, "drain", status="started")) == 1
    assert len(events(log, "drain", status="done")) == 1
    assert events(log, "exit", status="0")
    assert drained.messages() == [], "n1 left messages in its spool"
    t.wait_servers({"n1": "DOWN", "n0": "UP", "n2": "UP"}, 5)

    for ld in loads:
        ld.stop.set()
    for ld in loads:
        ld.join(10 * SLOW)
        assert not ld.is_alive()
    acked = all_acked(loads)
    wait_delivered(t, list(acked) + ["mid-drain"], 30)
    count, received = t.sink.keys()
    assert any(re.search(r"\tby n1\.tier\.test \(Postern\) with ESMTP id %s\b" % mid_id, r)
               for r in received["mid-drain"])
    assert received["mid-drain"][0].startswith("Received: from client.example ([127.0.0.19])")
    n1_acked = [k for k, v in acked.items() if v[0] == "n1"]
    assert len(n1_acked) >= 10
    # Nothing acknowledged by n1 was delivered by anyone else: it kept its
    # own queue and delivered it before it left.
    for k in n1_acked:
        assert any("\tby n1.tier.test " in r for r in received[k]), received[k]
    print("drain mid-load: %d acknowledged (%d by n1), %d client retries, 421 seen %r" % (
        len(acked), len(n1_acked), sum(len(ld.failures) for ld in loads),
        [r for ld in loads for r in ld.replies_421][:3]))


def test_drain_timeout_exits_0_and_leaves_the_rest_in_the_spool(tmp_path):
    """A node whose next hop stays shut: the drain ends at server.drain_timeout
    with exit 0, what is left stays in the spool, and the next start on that
    spool delivers it."""
    sink = GatedSink(open_=False)
    port, mport = stable_port(), stable_port()
    sock = tmp_path / "n.sock"
    p = Postern(tmp_path, CONNECTORS % {"per_source": 20, "rate": '"unlimited"'} + TO_SINK % sink.port, name="n",
                ports=[port], server_extra=server_extra(port, mport, sock) +
                '  drain_timeout = "2s";\n')
    q = None
    try:
        p.start()
        c = Client(port, PROXY_ADDR)
        c.send(v1_header(("127.0.0.10", 40001), ("127.0.0.1", port)))
        assert c.line().startswith("220 ")
        c.ehlo()
        ids = [R_QUEUED.match(c.transaction("left-%d" % n, "127.0.0.10")).group(1)
               for n in range(5)]
        c.cmd("QUIT")
        c.close()
        wait_until(lambda: sink.commands("MAIL"), 5, what="a first delivery attempt")
        rc, out = ctl(sock, "drain")
        assert rc == 0 and out.startswith("draining: listeners closed, 5 messages queued; ") \
            and "in 2s (server.drain_timeout)" in out, out
        t0 = time.monotonic()
        try:
            rc = p.proc.wait(timeout=2 + 5 * SLOW)
        except subprocess.TimeoutExpired:
            raise AssertionError("no exit at drain_timeout:\n" + p.stderr()[-3000:])
        assert rc == 0, p.stderr()[-3000:]
        assert time.monotonic() - t0 >= 1.8
        p.stopped = True
        log = p.stderr()
        assert [e["left"] for e in events(log, "drain", status="timeout")] == ["5"], log[-3000:]
        assert not events(log, "drain", status="done")
        assert p.messages() == sorted(ids)
        assert sink.count() == 0

        # Started again on the same spool, with the next hop open.
        sink.gate.set()
        q = Postern.__new__(Postern)
        q.__dict__.update(p.__dict__)
        q.proc, q.stopped = None, False
        q.start()
        wait_until(lambda: set(sink.keys()[0]) == {"left-%d" % n for n in range(5)}, 15,
                   interval=0.1, what="the five left in the spool delivered")
        wait_until(lambda: q.messages() == [], 10, interval=0.1, what="the queue to empty")
        q.stop()
    finally:
        for x in (p, q):
            if x:
                x.kill()
        sink.close()


# ---------------------------------------------------------------------------
# 5. PROXY headers by hand, against one node


V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def v2_header(command, src=None, dst=None, tlvs=b"", crc=False, bad_crc=False):
    """PROXY v2: command 1 = PROXY (src, dst: (ip, port)), 0 = LOCAL."""
    if command == 0:
        fam, addr = 0x00, b""
    elif ":" in src[0]:
        fam = 0x21  # AF_INET6, STREAM
        addr = (socket.inet_pton(socket.AF_INET6, src[0]) +
                socket.inet_pton(socket.AF_INET6, dst[0]) + struct.pack("!HH", src[1], dst[1]))
    else:
        fam = 0x11  # AF_INET, STREAM
        addr = (socket.inet_aton(src[0]) + socket.inet_aton(dst[0]) +
                struct.pack("!HH", src[1], dst[1]))
    body = addr + tlvs
    crc_at = None
    if crc:
        crc_at = 16 + len(body) + 3
        body += b"\x03\x00\x04\x00\x00\x00\x00"
    hdr = bytearray(V2_SIG + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body)
    if crc:
        value = crc32c(bytes(hdr)) ^ (1 if bad_crc else 0)
        hdr[crc_at:crc_at + 4] = struct.pack("!I", value)
    return bytes(hdr)


def raw_v2(ver_cmd, fam, block):
    return V2_SIG + bytes([ver_cmd, fam]) + struct.pack("!H", len(block)) + block


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


# ALPN, authority, a NOOP and a custom TLV: all to be skipped.
SOME_TLVS = (tlv(0x01, b"smtp") + tlv(0x02, b"relay.corp.example") + tlv(0x04, b"\x00" * 5) +
             tlv(0xE0, b"vendor data"))


def v1_header(src, dst):
    fam = "TCP6" if ":" in src[0] else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src[0], dst[0], src[1], dst[1])).encode()


def connect_raw(port, source):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5 * SLOW)
    s.connect(("127.0.0.1", port))
    return s


def closed_without_a_byte(s, timeout=5):
    """The server closes the connection and never sent anything."""
    s.settimeout(timeout * SLOW)
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError("still open after %.0fs; got %r" % (timeout * SLOW, data))
    s.close()
    return data == b""


def served(port, header, claimed, relay, source=PROXY_ADDR, split=False, pipeline=False):
    """Sends header (byte by byte with pauses when split), then checks the
    greeting, the address in the EHLO reply and the relay decision."""
    c = Client(port, source)
    try:
        if split:
            for i in range(len(header)):
                c.send(header[i:i + 1])
                time.sleep(0.01)
        elif pipeline:
            c.send(header + b"EHLO client.example\r\n")
        else:
            c.send(header)
        g = c.line()
        assert g == "220 relay.test.example Postern ESMTP service ready", g
        if pipeline:
            ehlo = c.reply_lines()
        else:
            ehlo = c.ehlo()
        assert ehlo[0] == "250-relay.test.example Hello [%s]" % claimed, ehlo
        assert c.cmd("MAIL FROM:<a@app.example>") == "250 2.1.0 Sender OK"
        r = c.cmd("RCPT TO:<b@outside.example>")
        assert r == (R_RCPT_OK if relay else R_UNABLE_TO_RELAY), (claimed, r)
        assert c.cmd("QUIT").startswith("221 ")
    finally:
        c.close()


def proxy_rejected(mport):
    status, body = http_get(mport, "/metrics")
    assert status == 200
    return metric(body, "postern_messages_rejected_total", connector="", reason="proxy")


def test_proxy_headers_by_hand_trusted_untrusted_garbled_late(postern):
    port, mport = stable_port(), stable_port()
    p = postern(CONNECTORS % {"per_source": 20, "rate": '"unlimited"'}, ports=[port],
                server_extra=server_extra(port, mport))
    # The fixture's own probe (a connection from 127.0.0.1 that sends
    # nothing, made once the port accepts) is the first refusal.
    wait_events(p, "proxy_reject", 1, client="127.0.0.1", reason="untrusted")
    wait_until(lambda: proxy_rejected(mport) == 1, 5, what="the probe in the metric")
    base = proxy_rejected(mport)
    dst = ("127.0.0.1", port)
    refused = 0

    # A late header: a connection that sends nothing, opened now; a thread
    # notes when it ends and what came (closed at 10 s, nothing sent).
    late = connect_raw(port, PROXY_ADDR)
    t_late = time.monotonic()
    late_end = {}

    def watch_late():
        late.settimeout(16 * SLOW)
        data = b""
        try:
            while True:
                chunk = late.recv(4096)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        except socket.timeout:
            data += b"<still open>"
        late_end.update(t=time.monotonic() - t_late, data=data)
    watcher = threading.Thread(target=watch_late, daemon=True)
    watcher.start()

    # Nothing is sent before the header.
    early = Client(port, PROXY_ADDR)
    early.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        early.sock.recv(1)
    early.sock.settimeout(5 * SLOW)
    early.send(v1_header(("127.0.0.10", 50001), dst))
    assert early.line() == "220 relay.test.example Postern ESMTP service ready"
    assert early.ehlo()[0] == "250-relay.test.example Hello [127.0.0.10]"
    early.cmd("QUIT")
    early.close()

    # v1 and v2 from the trusted proxy: the claimed address decides.
    served(port, v1_header(("127.0.0.10", 50002), dst), "127.0.0.10", relay=True)
    served(port, v1_header(("127.0.0.30", 50003), dst), "127.0.0.30", relay=False)
    served(port, v2_header(1, ("127.0.0.11", 50004), dst, SOME_TLVS), "127.0.0.11", relay=True)
    served(port, v2_header(1, ("127.0.0.31", 50005), dst, SOME_TLVS, crc=True), "127.0.0.31",
           relay=False)
    served(port, v2_header(1, ("127.0.0.12", 50006), dst, crc=True), "127.0.0.12", relay=True)
    # The client's first command in the same segment as the header.
    served(port, v1_header(("127.0.0.13", 50007), dst), "127.0.0.13", relay=True, pipeline=True)
    served(port, v2_header(1, ("127.0.0.14", 50008), dst, SOME_TLVS), "127.0.0.14", relay=True,
           pipeline=True)
    # Split into single bytes, with pauses.
    served(port, v1_header(("127.0.0.15", 50009), dst), "127.0.0.15", relay=True, split=True)
    served(port, v2_header(1, ("127.0.0.16", 50010), dst, SOME_TLVS, crc=True), "127.0.0.16",
           relay=True, split=True)
    # IPv6 client in v2 (and v1) on an IPv4 binding: 2001:db8::/32 relays.
    dst6 = ("2001:db8:ffff::1", 25)
    served(port, v2_header(1, ("2001:db8::7", 50011), dst6, SOME_TLVS), "2001:db8::7", relay=True)
    served(port, v1_header(("2001:db8::8", 50012), dst6), "2001:db8::8", relay=True)
    served(port, v2_header(1, ("2001:db9::7", 50013), dst6), "2001:db9::7", relay=False)
    # An IPv4 client as a dual-stack proxy may name it (::ffff:a.b.c.d): the
    # IPv4 ranges apply, as they do to such a peer on a [::] binding.
    mapped = ("::ffff:127.0.0.1", 25)
    served(port, v2_header(1, ("::ffff:127.0.0.17", 50015), mapped), "127.0.0.17", relay=True)
    served(port, v1_header(("::ffff:127.0.0.18", 50016), mapped), "127.0.0.18", relay=True)
    served(port, v2_header(1, ("::ffff:127.0.0.32", 50017), mapped), "127.0.0.32", relay=False)
    # LOCAL and UNKNOWN: the proxy itself, which is not a relay client.
    served(port, v2_header(0), PROXY_ADDR, relay=False)
    served(port, v2_header(0, tlvs=SOME_TLVS), PROXY_ADDR, relay=False)
    served(port, b"PROXY UNKNOWN\r\n", PROXY_ADDR, relay=False)
    served(port, b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", PROXY_ADDR,
           relay=False)
    # v2 PROXY with nothing a TCP client address can come from (AF_UNSPEC,
    # UDP over IPv4, AF_UNIX): the connection's own peer, the proxy.
    udp = socket.inet_aton("127.0.0.10") + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 1, 25)
    served(port, raw_v2(0x21, 0x00, b""), PROXY_ADDR, relay=False)
    served(port, raw_v2(0x21, 0x12, udp), PROXY_ADDR, relay=False)
    served(port, raw_v2(0x21, 0x31, b"/run/client.sock".ljust(108, b"\0") +
                        b"/run/postern.sock".ljust(108, b"\0")), PROXY_ADDR, relay=False)
    assert proxy_rejected(mport) == base, "a served connection was counted as refused"

    # A message from the IPv6 client: logs and Received: name it.
    c = Client(port, PROXY_ADDR)
    c.send(v2_header(1, ("2001:db8::7", 50014), dst6, SOME_TLVS))
    assert c.line().startswith("220 ")
    c.ehlo()
    r = c.transaction("v6", "2001:db8::7")
    qid = R_QUEUED.match(r).group(1)
    c.cmd("QUIT")
    c.close()
    stored = p.read_message(qid)
    assert b"\r\n\r\nReceived: from client.example ([IPv6:2001:db8::7])\r\n" in stored, stored[:600]
    conn = wait_events(p, "connect", 2, client="2001:db8::7")
    assert conn and all(e["connector"] == "Client Relay" and e["range"] == "2001:db8::/32"
                        and e["proxy"] == PROXY_ADDR for e in conn), conn
    assert [e["connector"] for e in events(p.stderr(), "connect", client=PROXY_ADDR)] == \
        ["Default Frontend"] * 7

    # From an address that is not a trusted proxy: closed without a byte,
    # whatever it sends (a good header, nothing, plain SMTP).
    for data in (v1_header(("127.0.0.10", 50020), dst),
                 v2_header(1, ("127.0.0.10", 50021), dst, SOME_TLVS), b"",
                 b"EHLO client.example\r\n"):
        s = connect_raw(port, "127.0.0.50")
        try:
            if data:
                s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_without_a_byte(s)
        refused += 1
    # The same header from 127.0.0.10 itself (not a proxy) is refused too.
    s = connect_raw(port, "127.0.0.10")
    try:
        s.sendall(v1_header(("127.0.0.11", 50022), dst))
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert closed_without_a_byte(s)
    refused += 1

    # From the trusted proxy, anything but a good header: closed without a byte.
    good_v2 = v2_header(1, ("127.0.0.10", 50030), dst, SOME_TLVS)
    bad = [
        b"EHLO client.example\r\n",                          # no header at all
        b"PROXY TCP4 127.0.0.300 127.0.0.1 1 25\r\n",         # bad address
        b"PROXY TCP4 127.0.0.10 127.0.0.1 1\r\n",             # a field missing
        b"PROXY TCP5 127.0.0.10 127.0.0.1 1 25\r\n",          # unknown protocol
        b"PROXY TCP4 127.0.0.10 127.0.0.1 1 25\n",            # LF without CR
        b"PROXY TCP4 2001:db8::1 127.0.0.1 1 25\r\n",         # family mismatch
        b"PROXY " + b"X" * 120 + b"\r\n",                      # longer than 107 bytes
        good_v2[:12] + b"\x31" + good_v2[13:],                 # v2: version 3
        good_v2[:12] + b"\x2f" + good_v2[13:],                 # v2: command 15
        b"\r\n\r\n\x00\r\nQUIX\n" + good_v2[12:],              # v2: bad signature
        v2_header(1, ("127.0.0.10", 50031), dst, crc=True, bad_crc=True),   # CRC32C wrong
        good_v2[:14] + struct.pack("!H", 4) + good_v2[16:20],  # v2: too short for INET
    ]
    for data in bad:
        s = connect_raw(port, PROXY_ADDR)
        s.sendall(data)
        assert closed_without_a_byte(s), data
        refused += 1
    # A header cut short, then the end of the stream.
    s = connect_raw(port, PROXY_ADDR)
    s.sendall(good_v2[:20])
    s.shutdown(socket.SHUT_WR)
    assert closed_without_a_byte(s)
    refused += 1
    wait_until(lambda: proxy_rejected(mport) == base + refused, 5,
               what="%d refusals in the metric" % refused)

    # The late one: open until 10 s after it connected, then closed, no byte.
    watcher.join(16 * SLOW + 2)
    assert late_end.get("data") == b"", late_end
    assert 9.9 <= late_end["t"] <= 10 + 2 * SLOW, late_end
    late.close()
    refused += 1
    wait_until(lambda: proxy_rejected(mport) == base + refused, 5,
               what="%d refusals in the metric" % refused)
    rej = wait_events(p, "proxy_reject", int(base) + refused)
    log = p.stderr()
    reasons = {}
    for e in rej:
        reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
    # untrusted: ours plus the fixture's startup probe from 127.0.0.1.
    assert reasons == {"untrusted": 5 + int(base), "garbled": len(bad),
                       "missing": 1, "timeout": 1}, (reasons, [e["_line"] for e in rej])
    assert all(e["client"] == PROXY_ADDR for e in rej if e["reason"] != "untrusted")
    assert {e["client"] for e in rej if e["reason"] == "untrusted"} <= \
        {"127.0.0.1", "127.0.0.10", "127.0.0.50"}
    # None of them became a session.
    assert not events(log, "connect", client="127.0.0.50")
