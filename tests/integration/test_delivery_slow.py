"""A slow next hop cannot stall delivery (issue 17): a reply must be whole
within the send connector's command_timeout, however many continuation
lines trickle in meanwhile; a message from its body to its final reply
within data_timeout + size / min_data_rate; a reply past the size caps
fails the connection; max_connections_per_domain bounds the connections to
one recipient domain while other domains of the same connector still get
theirs. Every failure here is a deferral with a logged reason, never a
bounce, and the next hop gets the mail once it answers again."""
import os
import random
import select
import socket
import struct
import subprocess
import threading
import time

import pytest

from conftest import SLOW, Postern, assert_config_error, check_config, free_port, wait_until
from sink import Sink
from test_delivery import (FAST_QUEUE, RELAY, event_lines, events, queued, simple_body, submit,
                           wait_event)


def smart(name, spaces, port, extra=""):
    return ('{ name = "%s"; address_spaces = [ %s ]; smart_hosts = [ "127.0.0.1:%d" ]; %s }'
            % (name, ", ".join('"%s"' % s for s in spaces), port, extra))


def config(*connectors):
    return (RELAY + "send_connectors = (\n  " + ",\n  ".join(connectors) + "\n);\n"
            "queue = { %s };\n" % FAST_QUEUE)


def log_time(e):
    """The wall clock of a log line's ts= (UTC, ms)."""
    import calendar
    ts = e["ts"]
    secs = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    return secs + int(ts[20:23]) / 1000.0


class Trickle(Sink):
    """While self.trickling, answers one command (verb) with a continuation
    line a second, for at most `seconds`, and never finishes the reply. For
    each such reply, episodes gets (wall clock of the command, of the
    client's going away or None, lines sent)."""

    def __init__(self, verb="MAIL", seconds=30, **kw):
        self.verb, self.seconds = verb, seconds
        self.trickling = True
        self.episodes = []
        super().__init__(**kw)

    def trickle(self, c):
        start = time.time()
        ep = [start, None, 0]
        self.episodes.append(ep)
        for i in range(self.seconds):
            try:
                c.say("%s-still thinking (%d)" % (self.code, i))
            except OSError:
                break
            ep[2] += 1
            deadline = time.monotonic() + 1.0
            while ep[1] is None and time.monotonic() < deadline:
                r, _, _ = select.select([c.s], [], [], max(0, deadline - time.monotonic()))
                if r:
                    try:
                        if not c.s.recv(65536):
                            ep[1] = time.time()
                    except OSError:
                        ep[1] = time.time()
            if ep[1] is not None:
                break
        c.s = None  # the session is over either way
        return True

    code = "250"

    def extra_command(self, c, line):
        if line[:4].upper() != self.verb or not self.trickling:
            return False
        return self.trickle(c)


class TrickleAfterData(Trickle):
    """Takes the message, then trickles the reply to its end of data."""
    code = "250"

    def __init__(self, **kw):
        super().__init__(verb="DATA", **kw)

    def extra_command(self, c, line):
        if line[:4].upper() != "DATA" or not self.trickling or not c.txn:
            return False
        c.say("354 go ahead")
        while True:
            l = c.f.readline(1 << 20)
            if not l:
                c.s = None
                return True
            if l == b".\r\n":
                break
        return self.trickle(c)


def test_trickled_reply_is_given_up_at_command_timeout(postern):
    """A next hop sends a continuation line of its MAIL reply every second:
    with command_timeout = "3s" the connection goes about 3 s after MAIL
    (the lines do not re-arm it), the message is deferred with the reason
    logged, another connector's next hop gets its mail meanwhile, and once
    the slow one answers again the retry is delivered there."""
    with Trickle() as slow, Sink() as healthy:
        p = postern(config(smart("Slow", ["slow.test"], slow.port, 'command_timeout = "3s";'),
                           smart("Healthy", ["ok.test"], healthy.port)))
        qid = submit(p.port, "s@src.test", ["r@slow.test"], simple_body("slow"))
        wait_until(lambda: slow.episodes, 5, what="MAIL at the slow next hop")
        # The slow next hop holds a connection; other mail still goes.
        t0 = time.monotonic()
        ok = submit(p.port, "s@src.test", ["r@ok.test"], simple_body("healthy"))
        wait_event(p, "deliver", id=ok)
        assert time.monotonic() - t0 < 2 * SLOW
        assert slow.episodes[0][1] is None, "the slow connection was given up already"
        d = wait_event(p, "defer", timeout=15, id=qid)[0]
        assert d["status"] == "4.4.2", d["_line"]
        assert d["reply"].endswith("no complete reply to MAIL within 3s"), d["_line"]
        assert d["reply"] == "451 4.4.2 [127.0.0.1]:%d: no complete reply to MAIL within 3s" \
            % slow.port, d["_line"]
        wait_until(lambda: slow.episodes[0][1] is not None, 5,
                   what="the slow next hop to see the connection close")
        start, end, lines = slow.episodes[0]
        held = end - start
        # The deadline was armed when MAIL went out: about 3 s, however
        # many lines came (one a second would re-arm a per-read timeout
        # for ever: the trickle lasts 30 s).
        assert 2.9 <= held <= 3.0 + 1.5 * SLOW, "held %.2fs with %d lines" % (held, lines)
        assert lines >= 3, lines
        assert 2.9 <= log_time(d) - start <= 3.0 + 1.5 * SLOW, (d["_line"], start)
        assert events(p, "bounce") == []
        # The next hop recovers: the retry goes through.
        slow.trickling = False
        e = wait_event(p, "deliver", timeout=15, id=qid)[0]
        assert int(e["attempts"]) >= 2, e["_line"]
        assert e["relay"] == "[127.0.0.1]:%d" % slow.port, e["_line"]
        assert len(slow.messages) == 1 and len(healthy.messages) == 1
        wait_until(lambda: queued(p) == [], 5, what="an empty queue")
        p.stop()


def test_greeting_trickle_fails_over_to_the_next_smart_host(postern):
    """The first smart host trickles its greeting: after command_timeout
    the second one takes the message in the same attempt."""
    class SlowGreeting(Sink):
        def _session(self, s, f, n):
            for i in range(30):
                try:
                    s.sendall(b"220-sink.test hold on (%d)\r\n" % i)
                except OSError:
                    return
                r, _, _ = select.select([s], [], [], 1.0)
                if r and not s.recv(4096):
                    return

    with SlowGreeting() as slow, Sink() as healthy:
        p = postern(config('{ name = "Both"; address_spaces = [ "*" ]; command_timeout = "2s"; '
                           'smart_hosts = [ "127.0.0.1:%d", "127.0.0.1:%d" ]; }'
                           % (slow.port, healthy.port)))
        t0 = time.monotonic()
        qid = submit(p.port, "s@src.test", ["r@other.test"], simple_body("failover"))
        e = wait_event(p, "deliver", timeout=15, id=qid)[0]
        took = time.monotonic() - t0
        assert e["relay"] == "[127.0.0.1]:%d" % healthy.port, e["_line"]
        assert e["attempts"] == "1", e["_line"]
        assert 1.9 <= took <= 2.0 + 2 * SLOW, took
        (f,) = events(p, "connect_failed")
        assert f["error"] == "no complete greeting within 2s", f["_line"]
        p.stop()


def test_trickled_final_reply_is_given_up_at_data_timeout(postern):
    """The body went; the reply to its end of data trickles: the message's
    deadline (data_timeout + size / min_data_rate, here 2 s and next to
    nothing for the size) ends it, and it is deferred, not bounced."""
    with TrickleAfterData() as slow:
        p = postern(config(smart("Slow", ["*"], slow.port,
                                 'data_timeout = "2s"; min_data_rate = "1MB";')))
        qid = submit(p.port, "s@src.test", ["r@other.test"], simple_body("slow dot"))
        d = wait_event(p, "defer", timeout=15, id=qid)[0]
        assert d["status"] == "4.4.2", d["_line"]
        assert d["reply"] == (
            "451 4.4.2 [127.0.0.1]:%d: no complete reply to the end of data within 2s of the "
            "message's start (data_timeout + size / min_data_rate)" % slow.port), d["_line"]
        wait_until(lambda: slow.episodes and slow.episodes[0][1] is not None, 5,
                   what="the connection to close")
        start, end, lines = slow.episodes[0]
        assert 1.9 <= end - start <= 2.0 + 1.5 * SLOW, (end - start, lines)
        assert lines >= 2
        slow.trickling = False
        wait_event(p, "deliver", timeout=15, id=qid)
        p.stop()


def test_reply_line_past_the_cap_fails_the_connection(postern):
    """A RCPT reply of one 5000-octet line: deferred (the reply is not to be
    trusted, so no bounce on its 550), the reason logged."""
    with Sink(rcpt_reply=lambda addr, line: "550 5.1.1 " + "x" * 5000) as sink:
        p = postern(config(smart("Long", ["*"], sink.port)))
        qid = submit(p.port, "s@src.test", ["r@other.test"], simple_body("long reply"))
        d = wait_event(p, "defer", id=qid)[0]
        assert d["status"] == "4.4.2", d["_line"]
        assert d["reply"] == "451 4.4.2 Reply line from the next hop longer than 2048 octets", \
            d["_line"]
        assert events(p, "bounce") == []
        p.stop()


# ---------------------------------------------------------------------------
# max_connections_per_domain (MX delivery through a dnsmasq of our own)

DNSMASQ = "/usr/sbin/dnsmasq"


def dns_answers(port, name):
    qid = random.randint(0, 65535)
    pkt = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        pkt += bytes([len(label)]) + label.encode()
    pkt += b"\0" + struct.pack(">HH", 15, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        try:
            s.sendto(pkt, ("127.0.0.1", port))
            data, _ = s.recvfrom(4096)
        except OSError:
            return False
    rid, flags, _, an, _, _ = struct.unpack(">HHHHHH", data[:12])
    return rid == qid and flags & 0xF == 0 and an == 1


@pytest.fixture
def dns(tmp_path):
    """a.test's MX is 127.0.0.31, b.test's 127.0.0.32."""
    if not os.access(DNSMASQ, os.X_OK):
        pytest.skip("dnsmasq is not installed")
    port = free_port()
    log = open(tmp_path / "dnsmasq.log", "wb")
    proc = subprocess.Popen(
        [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--pid-file=",
         "--no-resolv", "--no-hosts", "--no-poll", "--listen-address=127.0.0.1",
         "--bind-interfaces", "--log-facility=-", "--local=/test/", "--port=%d" % port,
         "--mx-host=a.test,mx.a.test,10", "--host-record=mx.a.test,127.0.0.31",
         "--mx-host=b.test,mx.b.test,10", "--host-record=mx.b.test,127.0.0.32"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        def up():
            assert proc.poll() is None, "dnsmasq exited: %s" % (tmp_path / "dnsmasq.log")
            return dns_answers(port, "a.test") and dns_answers(port, "b.test")
        wait_until(up, 10, what="dnsmasq to answer")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_max_connections_per_domain(postern, dns):
    """Eight messages to a.test, whose next hop takes 0.7 s over each: never
    more than max_connections_per_domain = 2 connections to it, across both
    workers, and it gets that many; b.test on the same connector gets its
    connection at once meanwhile."""
    port = free_port()

    def slowly(txn):
        time.sleep(0.7)
    with Sink(host="127.0.0.31", port=port, data_reply=slowly) as a, \
            Sink(host="127.0.0.32", port=port) as b:
        p = postern(RELAY + 'send_connectors = ( { name = "Internet"; address_spaces = [ "*" ]; '
                    'port = %d; max_connections_per_domain = 2; } );\nqueue = { %s };\n'
                    % (port, FAST_QUEUE),
                    server_extra='  dns_servers = [ "127.0.0.1:%d" ];\n' % dns)
        ids = []
        threads = [threading.Thread(target=lambda: ids.append(
            submit(p.port, "s@src.test", ["r%d@a.test" % i], simple_body("a %d" % i))))
            for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: a.max_active >= 2, 5, what="two connections to a.test")
        t0 = time.monotonic()
        bid = submit(p.port, "s@src.test", ["r@b.test"], simple_body("b"))
        wait_event(p, "deliver", id=bid)
        took = time.monotonic() - t0
        # a.test needs 8 x 0.7 s / 2 connections: b.test went meanwhile.
        assert took < 1.4 * SLOW, "b.test waited %.2fs behind a.test" % took
        assert a.count() < 8, "a.test was done before b.test got its turn"
        for qid in ids:
            wait_event(p, "deliver", timeout=30, id=qid)
        assert a.max_active == 2, a.max_active
        assert a.count() == 8 and b.count() == 1
        capped = events(p, "throttle", reason="max_connections_per_domain")
        assert capped and capped[0]["domain"] == "a.test" and capped[0]["limit"] == "2", \
            "\n".join(event_lines(p))
        assert events(p, "defer") == [], "our own limit deferred mail"
        p.stop()


# ---------------------------------------------------------------------------
# The settings


SETTINGS = ('send_connectors = ( { name = "S"; address_spaces = [ "*" ]; '
            'smart_hosts = [ "127.0.0.1:%d" ]; %s } );\n')


def test_check_prints_the_send_connector_settings(tmp_path):
    pt = Postern(tmp_path, RELAY + SETTINGS % (free_port(), 'command_timeout = "3s";'))
    r = check_config(pt)
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    block = out[out.index('send connector "S"'):]
    for name, value in [("max_connections", "20"), ("max_connections_per_domain", "20"),
                        ("connect_timeout", "30000ms"), ("idle_timeout", "5000ms"),
                        ("command_timeout", "3000ms"), ("data_timeout", "600000ms"),
                        ("min_data_rate", "4096")]:
        assert "\n    %-46s %s\n" % (name, value) in block, (name, block)


@pytest.mark.parametrize("setting,word", [
    ("max_connections_per_domain = -1;", "max_connections_per_domain: must not be negative"),
    ("max_connections_per_domain = 100001;", "max_connections_per_domain: 100001 is above"),
    ('max_connections_per_domain = "many";', 'max_connections_per_domain: invalid value'),
    ('command_timeout = "0s";', "command_timeout: at least 1s"),
    ('command_timeout = "500ms";', "command_timeout: at least 1s"),
    ('data_timeout = "soon";', 'data_timeout: invalid value'),
    ('min_data_rate = 0;', "min_data_rate: at least 1"),
    ('min_data_rate = "fast";', 'min_data_rate: invalid value'),
])
def test_bad_send_connector_settings_are_errors(tmp_path, setting, word):
    pt = Postern(tmp_path, RELAY + SETTINGS % (free_port(), setting))
    assert_config_error(pt, word)
