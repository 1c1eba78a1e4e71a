"""Delivery: send connectors (smart hosts with failover, drop directories),
the outbound SMTP client (byte-exact bodies, connection reuse, one
transaction per destination, DSN parameters), deferral and retry, expiry,
delivery status notifications (bounce, delay, success) and the send
connector's message rate.

Two kinds of next hop: Postfix's smtp-sink (dumps every transaction to a
file) and Sink below, a small SMTP server in a thread that records the
exact bytes it gets and answers what each test tells it to."""
import email
import email.utils
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from sink import Sink
from conftest import (BUILD, R_MAIL_OK, R_QUIT, R_RCPT_OK, R_START_DATA,
                      HOSTNAME, SLOW, RawClient, free_port, wait_until)

SMTP_SINK = "/usr/sbin/smtp-sink"
CTL = os.path.join(BUILD, "posternctl")
R_NO_ROUTE = "550 5.4.4 Unable to route"

RELAY = """receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; }
);
"""

FAST_QUEUE = 'retry_interval = "1s"; max_retry_interval = "2s";'


def smart(name, spaces, *ports, extra=""):
    return ('{ name = "%s"; address_spaces = [ %s ]; smart_hosts = [ %s ]; %s }'
            % (name, ", ".join('"%s"' % s for s in spaces),
               ", ".join('"127.0.0.1:%d"' % p for p in ports), extra))


def drop(name, spaces, directory):
    return ('{ name = "%s"; address_spaces = [ %s ]; drop_directory = "%s"; }'
            % (name, ", ".join('"%s"' % s for s in spaces), directory))


def config(*connectors, queue=FAST_QUEUE):
    return (RELAY + "send_connectors = (\n  " + ",\n  ".join(connectors) + "\n);\n"
            + "queue = { %s };\n" % queue)


# ---------------------------------------------------------------------------
# Submitting


def submit(port, sender, rcpts, body, mail_params="", source="127.0.0.10"):
    """One message over one connection; rcpts are addresses or (address,
    params) pairs; body is in wire form (dot-stuffed, CRLF, ends with CRLF).
    Returns the queue id from the 250 reply."""
    with RawClient(port, source) as c:
        c.cmd("EHLO client.example")
        mid = send_message(c, sender, rcpts, body, mail_params)
        assert c.cmd("QUIT") == R_QUIT
    return mid


def send_message(c, sender, rcpts, body, mail_params=""):
    assert c.cmd("MAIL FROM:<%s>%s" % (sender, mail_params)) == R_MAIL_OK
    for r in rcpts:
        addr, params = (r, "") if isinstance(r, str) else r
        assert c.cmd("RCPT TO:<%s>%s" % (addr, params)) == R_RCPT_OK, addr
    assert c.cmd("DATA") == R_START_DATA
    c.send(body + b".\r\n")
    r = c.reply()
    m = re.match(r"250 2\.6\.0 <([0-9A-F]+)> Queued mail for delivery$", r)
    assert m, r
    return m.group(1)


def late_in_second():
    """Sleeps until the wall clock is late in its second: a message that
    arrives then shows whether ages are measured from a truncated time."""
    frac = time.time() % 1
    time.sleep((0.93 - frac) % 1)


def simple_body(subject, text="hello\r\n"):
    return ("Subject: %s\r\nMessage-ID: <%s@client.example>\r\n\r\n%s"
            % (subject, subject.replace(" ", "-"), text)).encode()


# ---------------------------------------------------------------------------
# Postern's log

LOG_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def events(p, event, **match):
    """The log lines of one event as dicts, optionally filtered by fields."""
    out = []
    for line in p.stderr().splitlines():
        if "event=%s " % event not in line:
            continue
        f = {k: (v[1:-1] if v.startswith('"') else v)
             for k, v in LOG_FIELD.findall(line)}
        if f.get("event") != event:
            continue
        if all(f.get(k) == v for k, v in match.items()):
            f["_line"] = line
            out.append(f)
    return out


def event_lines(p):
    return [l for l in p.stderr().splitlines() if " event=" in l]


def wait_event(p, event, timeout=10, count=1, **match):
    try:
        return wait_until(lambda: len(events(p, event, **match)) >= count and
                          events(p, event, **match), timeout,
                          what="%d x event=%s %r" % (count, event, match))
    except AssertionError as e:
        raise AssertionError("%s; log:\n%s" % (e, "\n".join(event_lines(p)[-40:])))


def no_dsn_events(p):
    return [e["_line"] for e in events(p, "dsn")]


def queued(p):
    return p.messages()


# ---------------------------------------------------------------------------
# Drop directories and DSNs


def emls(d):
    if not os.path.isdir(d):
        return []
    return sorted(n for n in os.listdir(d) if n.endswith(".eml") and not n.startswith("."))


def split_drop(data):
    """X-Sender, X-Receivers and the message of a drop directory file."""
    m = re.match(rb"X-Sender: <([^>\r\n]*)>\r\n((?:X-Receiver: <[^>\r\n]*>\r\n)+)", data)
    assert m, "no X-Sender/X-Receiver lines: %r" % data[:300]
    rcpts = re.findall(rb"X-Receiver: <([^>\r\n]*)>\r\n", m.group(2))
    return (m.group(1).decode(), [r.decode() for r in rcpts], data[m.end():])


RECEIVED = re.compile(rb"Received: from [^\r\n]*\r\n(?:[ \t][^\r\n]*\r\n)*")


def strip_received(msg, qid=None):
    """Postern's Received: header at the top of msg, and what follows it."""
    m = RECEIVED.match(msg)
    assert m, "the message does not start with a Received: header: %r" % msg[:300]
    hdr = m.group(0)
    assert b"by %s (Postern)" % HOSTNAME.encode() in hdr, hdr
    if qid:
        assert b" id " + qid.encode() in hdr, hdr
    return hdr, msg[m.end():]


class Dsn:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.raw = f.read()
        self.sender, self.receivers, self.body = split_drop(self.raw)
        self.msg = email.message_from_bytes(self.body)
        m = self.msg
        assert m.get_content_type() == "multipart/report", m.get_content_type()
        assert m.get_param("report-type") == "delivery-status", m["Content-Type"]
        assert email.utils.parseaddr(m["From"])[1] == "postmaster@" + HOSTNAME, m["From"]
        self.parts = m.get_payload()
        assert len(self.parts) >= 2, [p.get_content_type() for p in self.parts]
        assert self.parts[0].get_content_type() == "text/plain"
        status = self.parts[1]
        assert status.get_content_type() == "message/delivery-status"
        blocks = status.get_payload()
        self.per_message = blocks[0]
        self.per_rcpt = blocks[1:]
        assert self.per_rcpt, "no per-recipient block"
        assert self.per_message["Reporting-MTA"] == "dns; " + HOSTNAME, \
            self.per_message["Reporting-MTA"]
        self.returned = self.parts[2] if len(self.parts) > 2 else None

    @staticmethod
    def field(block, name):
        """A field's value, unfolded."""
        v = block[name]
        return None if v is None else re.sub(r"\r?\n(?=[ \t])", "", v)

    def rcpt(self, addr):
        found = [b for b in self.per_rcpt
                 if (b["Final-Recipient"] or "").lower() == "rfc822; " + addr.lower()
                 or (b["Final-Recipient"] or "").lower() == "rfc822;" + addr.lower()]
        assert len(found) == 1, "Final-Recipient %s in %r" % (
            addr, [b["Final-Recipient"] for b in self.per_rcpt])
        return found[0]

    def returned_headers(self):
        """The original's headers, from a text/rfc822-headers or a
        message/rfc822 part."""
        r = self.returned
        assert r is not None, "no returned-content part"
        if r.get_content_type() == "text/rfc822-headers":
            return email.message_from_string(r.get_payload(decode=True).decode("latin-1"))
        assert r.get_content_type() == "message/rfc822", r.get_content_type()
        return r.get_payload()[0]


def dsns(d):
    return [Dsn(os.path.join(d, n)) for n in emls(d)]


def wait_dsns(d, n, timeout=10):
    wait_until(lambda: len(emls(d)) >= n, timeout,
               what="%d DSN file(s) in %s (have %r)" % (n, d, emls(d)))
    return dsns(d)


def check_dsn_envelope(dsn, sender):
    assert dsn.sender == "", "a DSN must have the null envelope sender"
    assert dsn.receivers == [sender]
    assert email.utils.parseaddr(dsn.msg["To"])[1] == sender, dsn.msg["To"]


# ---------------------------------------------------------------------------
# Next hops


class SmtpSink:
    """Postfix's smtp-sink on host:port, dumping each transaction to a file
    (-d) in a directory of its own (it runs as nobody when we are root)."""

    def __init__(self, port=None, host="127.0.0.1", args=()):
        self.host, self.port = host, port or free_port()
        self.dir = tempfile.mkdtemp(prefix="postern-sink-", dir="/tmp")
        os.chmod(self.dir, 0o777)
        cmd = [SMTP_SINK]
        if os.geteuid() == 0:
            cmd += ["-u", "nobody"]
        cmd += ["-d", self.dir + "/%M."] + list(args) + ["%s:%d" % (host, self.port), "64"]
        self.err = open(os.path.join(self.dir, ".stderr"), "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.err,
                                     stderr=self.err)
        wait_until(self._listening, 10, what="smtp-sink on port %d" % self.port)

    def _listening(self):
        assert self.proc.poll() is None, "smtp-sink exited %s" % self.proc.returncode
        # Look for the listening socket rather than connect (a connection
        # would be a session of its own).
        hexport = ":%04X" % self.port
        with open("/proc/net/tcp") as f:
            return any(line.split()[1].endswith(hexport) and line.split()[3] == "0A"
                       for line in f.readlines()[1:])

    def files(self):
        return sorted(n for n in os.listdir(self.dir) if not n.startswith("."))

    def messages(self):
        """Each dumped transaction: dict with mail, rcpts (the X-*-Args) and
        body (as dumped: LF line ends, dot-stuffing undone)."""
        out = []
        for n in self.files():
            with open(os.path.join(self.dir, n), "rb") as f:
                data = f.read()
            head, sep, rest = data.partition(b"\nReceived: from ")
            assert sep, "odd smtp-sink dump %r" % data[:300]
            fields = [l.split(b": ", 1) for l in head.split(b"\n")]
            # smtp-sink's own Received: header is three lines.
            body = rest.split(b"\n", 3)[3]
            out.append({"file": n,
                        "mail": [v.decode() for k, v in fields if k == b"X-Mail-Args"],
                        "rcpts": [v.decode() for k, v in fields if k == b"X-Rcpt-Args"],
                        "body": body})
        return out

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def sinks():
    """Factory for next hops: sinks(Sink, ...) or sinks(SmtpSink, ...).
    Request it before postern so that postern stops first."""
    made = []

    def factory(cls, *a, **kw):
        if cls is SmtpSink and not os.access(SMTP_SINK, os.X_OK):
            pytest.skip("smtp-sink (postfix) is not installed")
        s = cls(*a, **kw)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


# ---------------------------------------------------------------------------
# Tests: getting a message to the next hop


def test_basic_relay_to_smtp_sink(sinks, postern):
    sink = sinks(SmtpSink)
    p = postern(config(smart("Smart", ["*"], sink.port)))
    qid = submit(p.port, "s@a.test", ["r@other.test"], simple_body("basic relay"))
    ev = wait_event(p, "deliver", id=qid)
    assert len(ev) == 1
    e = ev[0]
    assert e["to"] in ("r@other.test", "<r@other.test>"), e["_line"]
    assert e["send_connector"] == "Smart", e["_line"]
    assert e["relay"] == "[127.0.0.1]:%d" % sink.port, e["_line"]
    assert e["status"] == "2.0.0", e["_line"]
    assert e["reply"].startswith("250 2.0.0 Ok"), e["_line"]
    assert e["attempts"] == "1", e["_line"]
    wait_until(lambda: sink.files(), 5, what="the dump file")
    msgs = sink.messages()
    assert len(msgs) == 1
    m = msgs[0]
    assert m["mail"][0].split()[0] == "<s@a.test>"
    assert m["rcpts"] == ["<r@other.test>"]
    assert m["body"].startswith(b"Received: from "), m["body"][:200]
    assert b"\nSubject: basic relay\nMessage-ID: <basic-relay@client.example>\n\nhello\n" \
        in m["body"], m["body"]
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")
    assert events(p, "defer") == [] and events(p, "bounce") == []


def test_body_is_byte_exact_on_the_wire(sinks, postern):
    sink = sinks(Sink)
    p = postern(config(smart("Smart", ["*"], sink.port)))
    body = (b"Subject: exact bytes\r\n"
            b"Content-Type: text/plain; charset=iso-8859-1\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n"
            b"\r\n"
            b"..a stuffed line\r\n"
            b"..\r\n"
            b"...\r\n"
            b"not. stuffed .\r\n"
            b"8 bit: \xe9\xe8\xff\x80\x01 done\r\n"
            + b"x" * 998 + b"\r\n"
            + b"trailing space \t \r\n"
            b"\r\n"
            b"\r\n"
            b"last line\r\n")
    qid = submit(p.port, "s@a.test", ["r@other.test"], body, " BODY=8BITMIME")
    wait_event(p, "deliver", id=qid)
    assert len(sink.messages) == 1
    txn = sink.messages[0]
    params = txn["mail"].split()[2:]
    assert txn["mail"].startswith("MAIL FROM:<s@a.test>"), txn["mail"]
    assert "BODY=8BITMIME" in params, txn["mail"]
    assert [l for l, _ in txn["rcpt_lines"]] == ["RCPT TO:<r@other.test>"]
    hdr, rest = strip_received(txn["data"], qid)
    assert rest == body
    assert b"for <r@other.test>" in hdr, hdr


def submit_many(port, source, first, count):
    with RawClient(port, source) as c:
        c.cmd("EHLO client.example")
        for n in range(first, first + count):
            send_message(c, "s@a.test", ["r%d@other.test" % (n % 7)],
                         b"Subject: many\r\nX-Seq: %d\r\n\r\nmessage %d\r\n" % (n, n))
        assert c.cmd("QUIT") == R_QUIT


def test_hundred_messages_exactly_once_over_reused_connections(sinks, postern):
    sink = sinks(Sink)
    p = postern(config(smart("Smart", ["*"], sink.port)))
    threads = [threading.Thread(target=submit_many,
                                args=(p.port, "127.0.0.%d" % (10 + i), i * 20, 20))
               for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60 * SLOW)
    wait_until(lambda: len(sink.messages) >= 100, 20,
               what="100 messages at the sink (have %d)" % len(sink.messages))
    time.sleep(0.5 * SLOW)  # a duplicate would show up now
    seqs = []
    for txn in sink.messages:
        m = re.search(rb"\r\nX-Seq: (\d+)\r\n", txn["data"])
        assert m, txn["data"][:300]
        seqs.append(int(m.group(1)))
    assert sorted(seqs) == list(range(100)), "missing %r, duplicated %r" % (
        sorted(set(range(100)) - set(seqs)),
        sorted({s for s in seqs if seqs.count(s) > 1}))
    assert len(events(p, "deliver")) == 100
    assert sink.connections < 100, "no connection reuse: %d connections" % sink.connections
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")


def test_helo_fallback_without_esmtp(sinks, postern):
    sink = sinks(Sink, esmtp=False)
    p = postern(config(smart("Smart", ["*"], sink.port)))
    qid = submit(p.port, "s@a.test", [("r@other.test", " NOTIFY=FAILURE")],
                 simple_body("plain smtp"), " BODY=7BIT ENVID=X1")
    e = wait_event(p, "deliver", id=qid)[0]
    assert e["status"] == "2.0.0", e["_line"]
    verbs = [l.split()[0].upper() for _, l in sink.lines]
    assert verbs[:2] == ["EHLO", "HELO"], sink.lines
    # No ESMTP parameters to a server that has no extensions.
    assert sink.commands("MAIL") == ["MAIL FROM:<s@a.test>"]
    assert sink.commands("RCPT") == ["RCPT TO:<r@other.test>"]
    (txn,) = sink.messages
    assert strip_received(txn["data"], qid)[1] == simple_body("plain smtp")


def test_bounce_goes_out_with_the_null_sender(sinks, postern):
    bad = sinks(SmtpSink, args=["-f", "RCPT", "-B", "550 5.1.1 Error: no such user here"])
    home = sinks(Sink)
    p = postern(config(smart("Smart", ["*"], bad.port), smart("Home", ["a.test"], home.port)))
    qid = submit(p.port, "s@a.test", ["r@other.test"], simple_body("bounce over smtp"))
    wait_event(p, "bounce", id=qid)
    wait_until(lambda: home.messages, 10, what="the DSN at the sender's host")
    (txn,) = home.messages
    assert txn["mail"].split()[:2] == ["MAIL", "FROM:<>"], txn["mail"]
    assert [l for l, _ in txn["rcpt_lines"]] == ["RCPT TO:<s@a.test>"]
    m = email.message_from_bytes(txn["data"])
    assert m.get_content_type() == "multipart/report"
    blocks = m.get_payload()[1].get_payload()
    assert blocks[1]["Action"] == "failed" and blocks[1]["Status"] == "5.1.1"
    assert bad.files() == []


def test_recipients_of_one_destination_in_one_transaction(sinks, postern):
    sink = sinks(Sink)
    p = postern(config(smart("Smart", ["*"], sink.port)))
    rcpts = ["a@other.test", "b@other.test", "c@other.test"]
    qid = submit(p.port, "s@a.test", rcpts, simple_body("three"))
    wait_event(p, "deliver", count=3, id=qid)
    time.sleep(0.3 * SLOW)
    assert len(sink.commands("MAIL")) == 1, sink.lines
    assert len(sink.messages) == 1
    assert sink.messages[0]["rcpts"] == rcpts
    assert len(sink.commands("RCPT")) == 3
    assert len(sink.commands("DATA")) == 1


def test_failover_to_second_smart_host(sinks, postern):
    closed = free_port()
    sink = sinks(SmtpSink)
    p = postern(config(smart("Smart", ["*"], closed, sink.port)))
    qid = submit(p.port, "s@a.test", ["r@other.test"], simple_body("failover"))
    e = wait_event(p, "deliver", id=qid)[0]
    assert e["relay"] == "[127.0.0.1]:%d" % sink.port, e["_line"]
    assert e["attempts"] == "1", e["_line"]
    assert events(p, "defer") == []
    assert any(f["relay"] == "[127.0.0.1]:%d" % closed for f in events(p, "connect_failed")), \
        "\n".join(event_lines(p))
    wait_until(lambda: len(sink.files()) == 1, 5, what="the message at the second host")
    assert sink.messages()[0]["rcpts"] == ["<r@other.test>"]


def test_deferred_while_next_hop_down_then_delivered(sinks, postern, tmp_path):
    port = free_port()
    sock = tmp_path / "stats.sock"
    p = postern(config(smart("Smart", ["*"], port)),
                server_extra='  stats_socket = "%s";\n' % sock)
    t0 = time.monotonic()
    qid = submit(p.port, "s@a.test", ["r@other.test"], simple_body("deferred"))
    d = wait_event(p, "defer", id=qid)[0]
    assert d["status"] == "4.4.1", d["_line"]
    assert "4.4.1" in d["reply"], d["_line"]
    assert queued(p) == [qid]
    # The stats socket shows it with its last error.
    r = subprocess.run([CTL, "-s", str(sock), "show", "queue", "json"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)
    assert q["count"] == 1 and q["messages"][0]["id"] == qid, q
    assert q["messages"][0]["attempts"] >= 1, q
    assert "4.4.1" in (q["messages"][0]["last_error"] or ""), q
    time.sleep(max(0, t0 + 2.0 - time.monotonic()))
    sink = sinks(SmtpSink, port)
    e = wait_event(p, "deliver", timeout=10, id=qid)[0]
    assert int(e["attempts"]) >= 2, e["_line"]
    lines = event_lines(p)
    first_defer = next(i for i, l in enumerate(lines) if "event=defer id=%s " % qid in l)
    deliver = next(i for i, l in enumerate(lines) if "event=deliver id=%s " % qid in l)
    assert first_defer < deliver
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")
    time.sleep(1.5 * SLOW)  # past another retry interval: no second copy
    assert len(sink.files()) == 1, sink.files()
    assert len(events(p, "deliver", id=qid)) == 1
    assert no_dsn_events(p) == []


# ---------------------------------------------------------------------------
# Failures, retries and DSNs


@pytest.mark.parametrize("ret", [None, "HDRS", "FULL"])
def test_5xx_bounces_with_a_dsn(sinks, postern, tmp_path, ret):
    sink = sinks(SmtpSink, args=["-f", "RCPT", "-B", "550 5.1.1 Error: no such user here"])
    dropdir = tmp_path / "dsn"
    p = postern(config(smart("Smart", ["*"], sink.port),
                       drop("Drop", ["drop.test"], dropdir)))
    body = simple_body("bounce me", "the body text\r\n")
    qid = submit(p.port, "s@drop.test", ["r@other.test"], body,
                 " RET=%s ENVID=E%s" % (ret, ret) if ret else "")
    b = wait_event(p, "bounce", id=qid)[0]
    assert b["status"] == "5.1.1", b["_line"]
    assert b["reply"] == "550 5.1.1 Error: no such user here", b["_line"]
    (dsn,) = wait_dsns(dropdir, 1)
    check_dsn_envelope(dsn, "s@drop.test")
    r = dsn.rcpt("r@other.test")
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert "550 5.1.1 Error: no such user here" in Dsn.field(r, "Diagnostic-Code"), \
        r["Diagnostic-Code"]
    assert r["Diagnostic-Code"].lower().startswith("smtp;"), r["Diagnostic-Code"]
    assert len(dsn.per_rcpt) == 1
    orig = dsn.returned_headers()
    assert orig["Subject"] == "bounce me"
    assert orig["Message-ID"] == "<bounce-me@client.example>"
    if ret:
        assert dsn.per_message["Original-Envelope-Id"] == "E" + ret
    if ret == "HDRS":
        assert dsn.returned.get_content_type() == "text/rfc822-headers"
        assert b"the body text" not in dsn.body
    if ret == "FULL":
        assert dsn.returned.get_content_type() == "message/rfc822"
        assert dsn.returned.get_payload()[0].get_payload() == "the body text\r\n" or \
            dsn.returned.get_payload()[0].get_payload() == "the body text\n"
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")
    assert sink.files() == []
    assert len(events(p, "dsn", kind="bounce", id=qid)) == 1


def test_4xx_is_retried_then_delivered(sinks, postern):
    tries = []

    def rcpt_reply(addr, line):
        tries.append(time.monotonic())
        return "451 4.3.0 Try again later" if len(tries) == 1 else None
    sink = sinks(Sink, rcpt_reply=rcpt_reply)
    p = postern(config(smart("Smart", ["*"], sink.port)))
    qid = submit(p.port, "s@a.test", ["r@other.test"], simple_body("retry me"))
    d = wait_event(p, "defer", id=qid)[0]
    assert d["status"] == "4.3.0", d["_line"]
    assert d["reply"] == "451 4.3.0 Try again later", d["_line"]
    e = wait_event(p, "deliver", timeout=10, id=qid)[0]
    assert e["attempts"] == "2", e["_line"]
    assert len(tries) == 2
    assert tries[1] - tries[0] >= 0.9, "retried after %.2fs, retry_interval is 1s" % (
        tries[1] - tries[0])
    assert len(sink.messages) == 1
    assert b"Subject: retry me\r\n" in sink.messages[0]["data"]
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")
    assert no_dsn_events(p) == []


def test_expired_message_bounces_with_4_4_7(sinks, postern, tmp_path):
    sink = sinks(SmtpSink, args=["-r", "RCPT"])  # 450 4.3.0 to every RCPT
    dropdir = tmp_path / "dsn"
    p = postern(config(smart("Smart", ["*"], sink.port), drop("Drop", ["drop.test"], dropdir),
                       queue=FAST_QUEUE + ' message_expiration = "4s"; delay_notification = "1h";'))
    late_in_second()
    t0 = time.monotonic()
    qid = submit(p.port, "s@drop.test", ["r@other.test"], simple_body("expire me"))
    b = wait_event(p, "expire", timeout=12, id=qid)[0]
    elapsed = time.monotonic() - t0
    assert b["status"] == "4.4.7", b["_line"]
    assert "450 4.3.0 Error: command failed" in b["reply"], b["_line"]
    defers = events(p, "defer", id=qid)
    assert len(defers) >= 2, "\n".join(event_lines(p))
    assert all(d["status"] == "4.3.0" for d in defers), [d["_line"] for d in defers]
    (dsn,) = wait_dsns(dropdir, 1)
    check_dsn_envelope(dsn, "s@drop.test")
    r = dsn.rcpt("r@other.test")
    assert r["Action"] == "failed"
    assert r["Status"] == "4.4.7"
    assert "450 4.3.0 Error: command failed" in (Dsn.field(r, "Diagnostic-Code") or ""), \
        r["Diagnostic-Code"]
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")
    assert sink.files() == []
    time.sleep(0.5 * SLOW)
    assert len(emls(dropdir)) == 1
    # t0 was taken before the message was even sent.
    assert elapsed >= 3.95, ("expired %.2fs after submission, message_expiration "
                             "is 4s" % elapsed)


@pytest.mark.parametrize("case", ["notify_never", "null_sender"])
def test_no_dsn_for_notify_never_or_null_sender(sinks, postern, tmp_path, case):
    sink = sinks(SmtpSink, args=["-f", "RCPT", "-B", "550 5.1.1 Error: no such user here"])
    dropdir = tmp_path / "dsn"
    p = postern(config(smart("Smart", ["*"], sink.port), drop("Drop", ["drop.test"], dropdir)))
    if case == "notify_never":
        qid = submit(p.port, "s@drop.test", [("r@other.test", " NOTIFY=NEVER")],
                     simple_body("never"))
    else:
        qid = submit(p.port, "", ["r@other.test"], simple_body("null sender"))
    wait_event(p, "bounce", id=qid)
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")
    # A second message that does get a bounce: when its DSN is there, the
    # first one's would be too.
    qid2 = submit(p.port, "s@drop.test", ["r2@other.test"], simple_body("barrier"))
    wait_event(p, "bounce", id=qid2)
    (dsn,) = wait_dsns(dropdir, 1)
    time.sleep(0.5 * SLOW)
    assert len(emls(dropdir)) == 1, emls(dropdir)
    dsn.rcpt("r2@other.test")
    assert events(p, "dsn", id=qid) == []
    assert len(events(p, "dsn", id=qid2)) == 1


@pytest.mark.parametrize("via", ["smart_host", "drop_directory"])
def test_notify_success_gives_a_success_dsn(sinks, postern, tmp_path, via):
    dropdir = tmp_path / "dsn"
    maildir = tmp_path / "mail"
    if via == "smart_host":
        sink = sinks(SmtpSink, args=["-N"])  # no DSN offered
        other = smart("Smart", ["*"], sink.port)
    else:
        other = drop("Mail", ["*"], maildir)
    p = postern(config(other, drop("Drop", ["drop.test"], dropdir)))
    qid = submit(p.port, "s@drop.test", [("r@other.test", " NOTIFY=SUCCESS")],
                 simple_body("success"))
    e = wait_event(p, "deliver", id=qid)[0]
    (dsn,) = wait_dsns(dropdir, 1)
    check_dsn_envelope(dsn, "s@drop.test")
    r = dsn.rcpt("r@other.test")
    if via == "smart_host":
        assert r["Action"] == "relayed"
        # The next hop did not offer DSN, so no NOTIFY went to it.
        msgs = sink.messages()
        assert len(msgs) == 1 and msgs[0]["rcpts"] == ["<r@other.test>"], msgs
        assert len(events(p, "dsn", kind="relayed", id=qid)) == 1
    else:
        assert r["Action"] == "delivered"
        assert len(emls(maildir)) == 1
        assert len(events(p, "dsn", kind="success", id=qid)) == 1
    assert r["Status"].startswith("2."), r["Status"]
    assert e["status"] == r["Status"]
    # Success DSNs carry headers only.
    assert dsn.returned_headers()["Subject"] == "success"
    time.sleep(0.5 * SLOW)
    assert len(emls(dropdir)) == 1


def test_delay_dsn_sent_once(sinks, postern, tmp_path):
    down = free_port()
    dropdir = tmp_path / "dsn"
    p = postern(config(smart("Smart", ["*"], down), drop("Drop", ["drop.test"], dropdir),
                       queue=FAST_QUEUE + ' message_expiration = "1h"; delay_notification = "2s";'))
    late_in_second()
    t0 = time.monotonic()
    qid = submit(p.port, "s@drop.test",
                 ["r1@other.test", ("r2@other.test", " NOTIFY=FAILURE")],
                 simple_body("slow"))
    (dsn,) = wait_dsns(dropdir, 1, timeout=8)
    elapsed = time.monotonic() - t0
    check_dsn_envelope(dsn, "s@drop.test")
    # Only r1 asked (by default) for delay notices.
    assert len(dsn.per_rcpt) == 1, [b["Final-Recipient"] for b in dsn.per_rcpt]
    r = dsn.rcpt("r1@other.test")
    assert r["Action"] == "delayed"
    assert r["Status"].startswith("4."), r["Status"]
    assert r["Status"] == "4.4.1", r["Status"]
    assert dsn.returned_headers()["Subject"] == "slow"
    # More retries follow; no second notice.
    n = len(events(p, "defer", id=qid))
    wait_until(lambda: len(events(p, "defer", id=qid)) >= n + 4, 10,
               what="more retries")
    assert len(emls(dropdir)) == 1, emls(dropdir)
    assert len(events(p, "dsn", kind="delay", id=qid)) == 1
    assert queued(p) == [qid]
    # t0 was taken before the message was even sent.
    assert elapsed >= 1.95, ("delay DSN %.2fs after submission, delay_notification "
                             "is 2s" % elapsed)


# ---------------------------------------------------------------------------
# Drop directories and routing


def test_drop_directory_file_content(postern, tmp_path):
    dropdir = tmp_path / "drop"
    p = postern(config(drop("Drop", ["drop.test", "*.drop.test"], dropdir)))
    body = (b"Subject: dropped\r\n\r\n"
            b"..starts with a dot\r\n"
            b"..\r\n"
            b"mid.dle\r\n"
            b"8 bit \xe9\xff\r\n"
            b"end\r\n")
    qid = submit(p.port, "s@a.test", ["r1@drop.test", "r2@sub.drop.test"], body,
                 " BODY=8BITMIME")
    wait_event(p, "deliver", count=2, id=qid)
    names = os.listdir(dropdir)
    assert len(names) == 1, names
    assert re.match(r"^%s-\d+\.eml$" % qid, names[0]), names
    with open(dropdir / names[0], "rb") as f:
        data = f.read()
    sender, rcpts, msg = split_drop(data)
    assert sender == "s@a.test"
    assert rcpts == ["r1@drop.test", "r2@sub.drop.test"]
    assert data.startswith(b"X-Sender: <s@a.test>\r\nX-Receiver: <r1@drop.test>\r\n"
                           b"X-Receiver: <r2@sub.drop.test>\r\nReceived: from ")
    hdr, rest = strip_received(msg, qid)
    assert rest == (b"Subject: dropped\r\n\r\n"
                    b".starts with a dot\r\n"
                    b".\r\n"
                    b"mid.dle\r\n"
                    b"8 bit \xe9\xff\r\n"
                    b"end\r\n")
    for e in events(p, "deliver", id=qid):
        assert e["send_connector"] == "Drop", e["_line"]
    wait_until(lambda: queued(p) == [], 5, what="postern-spool list to be empty")
    assert [n for n in os.listdir(dropdir) if n.startswith(".")] == []


def test_message_right_after_start_is_delivered_once(postern, tmp_path):
    """A message taken while the workers are still starting belongs to one
    worker only: it is delivered once. (The window is short: several
    starts.)"""
    for n in range(20):
        dropdir = tmp_path / ("drop%d" % n)
        # A resolver to set up makes the start of the workers longer.
        p = postern(config(drop("Drop", ["*"], dropdir)), name="start%d" % n,
                    server_extra='  dns_servers = [ "127.0.0.1:%d" ];\n' % free_port())
        qid = submit(p.port, "s@a.test", ["r@other.test"], simple_body("early %d" % n))
        wait_event(p, "deliver", id=qid)
        time.sleep(0.1 * SLOW)
        p.stop()
        assert len(events(p, "deliver", id=qid)) == 1, \
            "start %d: delivered more than once:\n%s" % (n, "\n".join(event_lines(p)))
        assert len(emls(dropdir)) == 1, (n, emls(dropdir))


def test_recipient_without_route_is_refused(postern, smtp_raw, tmp_path):
    dropdir = tmp_path / "drop"
    p = postern(config(drop("Drop", ["drop.test"], dropdir)))
    c = smtp_raw(p.port, "127.0.0.10")
    c.cmd("EHLO client.example")
    assert c.cmd("MAIL FROM:<s@a.test>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@other.test>") == R_NO_ROUTE
    assert c.cmd("RCPT TO:<x@sub.drop.test>") == R_NO_ROUTE
    assert c.cmd("RCPT TO:<x@notdrop.test>") == R_NO_ROUTE
    assert c.cmd("RCPT TO:<x@drop.test>") == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    c.send(simple_body("routed") + b".\r\n")
    qid = re.match(r"250 2\.6\.0 <([0-9A-F]+)> ", c.reply()).group(1)
    assert c.cmd("QUIT") == R_QUIT
    wait_event(p, "deliver", id=qid)
    (name,) = emls(dropdir)
    sender, rcpts, _ = split_drop((dropdir / name).read_bytes())
    assert rcpts == ["x@drop.test"]
    assert events(p, "bounce") == [] and no_dsn_events(p) == []


def test_most_specific_address_space_wins(sinks, postern, tmp_path):
    sink = sinks(Sink)
    exact, wild = tmp_path / "exact", tmp_path / "wild"
    p = postern(config(smart("Any", ["*"], sink.port),
                       drop("Wild", ["*.special.test"], wild),
                       drop("Exact", ["special.test"], exact)))
    qid = submit(p.port, "s@a.test",
                 ["r@special.test", "r@a.sub.special.test", "r@other.test",
                  "r@notspecial.test"],
                 simple_body("routing"))
    wait_event(p, "deliver", count=4, id=qid)
    by = {e["to"].strip("<>"): e["send_connector"] for e in events(p, "deliver", id=qid)}
    assert by == {"r@special.test": "Exact", "r@a.sub.special.test": "Wild",
                  "r@other.test": "Any", "r@notspecial.test": "Any"}
    (f,) = emls(exact)
    assert split_drop((exact / f).read_bytes())[1] == ["r@special.test"]
    (f,) = emls(wild)
    assert split_drop((wild / f).read_bytes())[1] == ["r@a.sub.special.test"]
    assert len(sink.messages) == 1
    assert sink.messages[0]["rcpts"] == ["r@other.test", "r@notspecial.test"]


# ---------------------------------------------------------------------------
# ESMTP parameters and the send connector's rate


def mail_params(line):
    return dict(p.split("=", 1) if "=" in p else (p, None) for p in line.split()[2:])


@pytest.mark.parametrize("offered", [True, False])
def test_dsn_parameters_passed_on(sinks, postern, tmp_path, offered):
    sink = sinks(Sink, dsn=offered)
    dropdir = tmp_path / "dsn"
    p = postern(config(smart("Smart", ["*"], sink.port), drop("Drop", ["drop.test"], dropdir)))
    qid = submit(p.port, "s@drop.test",
                 [("r@other.test", " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r@other.test")],
                 simple_body("dsn params"), " RET=HDRS ENVID=QQ314159")
    wait_event(p, "deliver", id=qid)
    (txn,) = sink.messages
    mp = mail_params(txn["mail"])
    assert txn["mail"].startswith("MAIL FROM:<s@drop.test> "), txn["mail"]
    assert int(mp.get("SIZE", "0")) >= len(txn["data"]), txn["mail"]
    (rcpt_line, _), = txn["rcpt_lines"]
    rp = mail_params(rcpt_line)
    if offered:
        assert mp.get("RET") == "HDRS" and mp.get("ENVID") == "QQ314159", txn["mail"]
        assert rp.get("NOTIFY") == "SUCCESS,FAILURE", rcpt_line
        assert rp.get("ORCPT") == "rfc822;r@other.test", rcpt_line
        # The next hop takes over the duty to notify: no DSN from us.
        time.sleep(0.5 * SLOW)
        assert emls(dropdir) == [] and no_dsn_events(p) == []
    else:
        assert "RET" not in mp and "ENVID" not in mp, txn["mail"]
        assert rcpt_line == "RCPT TO:<r@other.test>"
        (dsn,) = wait_dsns(dropdir, 1)
        assert dsn.rcpt("r@other.test")["Action"] == "relayed"
        assert dsn.rcpt("r@other.test")["Original-Recipient"] == "rfc822;r@other.test"
        assert dsn.per_message["Original-Envelope-Id"] == "QQ314159"


def test_send_connector_message_rate(sinks, postern):
    sink = sinks(Sink)
    p = postern(config(smart("Smart", ["*"], sink.port, extra="max_message_rate = 6;")))
    t0 = time.monotonic()
    with RawClient(p.port, "127.0.0.10") as c:
        c.cmd("EHLO client.example")
        for n in range(10):
            send_message(c, "s@a.test", ["r@other.test"], simple_body("rate %d" % n))
        assert c.cmd("QUIT") == R_QUIT
    wait_until(lambda: len(sink.messages) >= 6, 5, what="6 messages at the sink")
    time.sleep(max(0, t0 + 5 - time.monotonic()))
    assert len(sink.messages) == 6, "%d messages within 5 s at 6/min" % len(sink.messages)
    assert events(p, "throttle", reason="send_message_rate"), "\n".join(event_lines(p))
    assert len(queued(p)) == 4
    p.stop()
