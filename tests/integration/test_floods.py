"""Floods, the short versions (issue 17). bench/floods runs the long ones
against the shipped defaults and publishes them in BENCHMARKS.md ("Floods":
10,000 idle connections, slowloris, 1 MB lines, pipelining without reading,
a connection storm; latency ratios, RSS, acknowledged vs stored). Here each
flood is small and every loop and read is bounded; timing assertions are
loose (a prompt answer, not a ratio) so that they cannot be flaky.

The connector is deploy/postern.conf's: one anonymous relay for
127.0.0.0/8, every limit at its default (DESIGN B.2: 5,000 connections,
20 per source, connection_timeout 10m, connection_inactivity_timeout 5m,
max_protocol_errors 5) unless a test says otherwise."""
import os
import re
import resource
import socket
import threading
import time

import pytest

from test_tls import ctl  # noqa: E402
from conftest import (R_DATA_LINE_TOO_LONG, R_LINE_TOO_LONG, R_MAIL_OK, R_NOOP_OK, R_QUIT,
                      R_RCPT_OK, R_RESET, R_START_DATA, R_TIMEOUT, R_TOO_MANY_ERRORS, R_VRFY,
                      SANITIZE, SLOW, RawClient, rss_kb, wait_until)

R_CONN_LIMIT = ("421 4.3.2 The maximum number of concurrent connections has exceeded a "
                "limit, closing transmission channel")
R_QUEUED = re.compile(r"250 2\.6\.0 <([0-9A-F]{16})> Queued mail for delivery")

RELAY = """receive_connectors = (
  { name = "Loopback Relay";
    bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ];
    permission_groups = [ "anonymous_relay" ];
    max_message_size = "36MB";
    max_recipients_per_message = 200;
    EXTRA
  }
);
"""

MB = 1024 * 1024
# ASan's redzones and its quarantine of freed blocks make every allocation
# dearer: memory bounds are multiplied by this under POSTERN_SANITIZE.
MEM = 4 if SANITIZE else 1
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def relay(extra=""):
    return RELAY.replace("EXTRA", extra)


def need_descriptors(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        if hard != resource.RLIM_INFINITY and hard < n:
            pytest.skip("RLIMIT_NOFILE hard limit %d < %d" % (hard, n))
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))


def open_fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def send_message(port, source, tag="steady"):
    """One whole session; returns (last reply, seconds from connect to it)."""
    t0 = time.monotonic()
    with RawClient(port, source) as c:
        assert c.greeting.startswith("220 "), c.greeting
        assert c.cmd("EHLO client.example")[0].startswith("250-")
        assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
        assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
        assert c.cmd("DATA") == R_START_DATA
        c.send(b"Subject: %s\r\n\r\nbody\r\n.\r\n" % tag.encode())
        r = c.reply()
        took = time.monotonic() - t0
        assert c.cmd("QUIT") == R_QUIT
    return r, took


def raw_socket(port, source, rcvbuf=None, sndbuf=None, timeout=10):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    s.bind((source, 0))
    s.settimeout(timeout * SLOW)
    s.connect(("127.0.0.1", port))
    return s


def read_exactly(s, n, timeout):
    """n bytes, or what came before EOF or the deadline."""
    deadline = time.monotonic() + timeout * SLOW
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            d = s.recv(min(4 * MB, n - got))
        except (socket.timeout, ConnectionResetError):
            break
        if not d:
            break
        chunks.append(d)
        got += len(d)
    return b"".join(chunks)


def read_reply(s, timeout=10):
    """One complete reply (bytes, CR LF included) from a raw socket, when
    nothing else can follow it yet (a greeting, the reply to QUIT)."""
    buf = b""
    deadline = time.monotonic() + timeout * SLOW
    while not re.search(rb"(?:^|\r\n)\d{3} [^\r\n]*\r\n\Z", buf):
        left = deadline - time.monotonic()
        assert left > 0, "no complete reply: %r" % buf[-200:]
        s.settimeout(left)
        d = s.recv(4096)
        assert d, "closed; had %r" % buf[-200:]
        buf += d
    return buf


class Writer(threading.Thread):
    """Writes payload with a blocking sendall and never reads: the server's
    back-pressure shows as a write that blocks."""

    def __init__(self, sock, payload):
        super().__init__(daemon=True)
        self.sock, self.payload = sock, payload
        self.error = None
        self.done_at = None

    def run(self):
        try:
            self.sock.settimeout(None)
            self.sock.sendall(self.payload)
            self.done_at = time.monotonic()
        except OSError as e:
            self.error = e


class Sampler(threading.Thread):
    """Peak VmRSS of a process, sampled every 20 ms until stop()."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kb(pid)
        self.halt = threading.Event()
        self.start()

    def run(self):
        while not self.halt.wait(0.02):
            try:
                self.peak = max(self.peak, rss_kb(self.pid))
            except (OSError, AssertionError):
                return

    def stop(self):
        self.halt.set()
        self.join(timeout=5)
        return self.peak


def hang_up(s):
    """Wakes a writer blocked in sendall on s, then resets the connection."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()


# ---- 1,000 idle connections --------------------------------------------------------


def test_thousand_idle_connections_then_a_client_is_served(postern):
    need_descriptors(1200)
    p = postern(relay())
    rss0 = rss_kb(p.pid)
    # 50 sources x 20: exactly max_inbound_connection_per_source each, far
    # below max_inbound_connection (5,000): all within the defaults.
    sources = ["127.0.20.%d" % i for i in range(1, 51)]
    idle = []
    try:
        for i in range(1000):
            c = RawClient(p.port, sources[i % 50], timeout=10)
            assert c.greeting.startswith("220 "), (i, c.greeting)
            idle.append(c)
        # Every one of them still there, holding no more than a few KiB.
        assert sum(1 for c in idle if c.sock.fileno() >= 0) == 1000
        grown = rss_kb(p.pid) - rss0
        assert grown < 16 * 1024 * MEM, "1,000 idle connections cost %d kB" % grown
        # An allowed client from another address gets its 250 promptly.
        r, took = send_message(p.port, "127.0.0.2")
        assert R_QUEUED.fullmatch(r), r
        assert took < 1.0 * SLOW, "%.3f s to a 250 beside 1,000 idle connections" % took
        # Beyond the defaults: a 21st connection from a source that holds 20.
        with RawClient(p.port, sources[0]) as extra:
            assert extra.greeting == R_CONN_LIMIT
            extra.expect_closed()
        # A new source is still welcome (5,000 in all is far off).
        with RawClient(p.port, "127.0.21.1") as fresh:
            assert fresh.greeting.startswith("220 ")
            assert fresh.cmd("QUIT") == R_QUIT
    finally:
        for c in idle:
            c.close()
    # Their descriptors come back.
    wait_until(lambda: open_fds(p.pid) < 100, 10, interval=0.1,
               what="postern to close the 1,000 idle connections")
    assert len(p.messages()) == 1
    p.stop()


# ---- 1 MB lines --------------------------------------------------------------------

LONG_CMD = b"NOOP " + b"x" * MB + b"\r\n"
LONG_DATA = b"Subject: long\r\n\r\n" + b"y" * MB + b"\r\n.\r\n"


def megabyte_session(port, source, out):
    """What the code does with 1 MB lines: a long command line is a protocol
    error (500 5.5.2) and the session goes on; a long DATA line refuses the
    message (550 5.6.0, not a protocol error) and the session goes on; the
    sixth protocol error (max_protocol_errors 5) is answered 421 4.7.0 and
    the connection closed."""
    got = []
    with RawClient(port, source, timeout=30) as c:
        got.append(c.cmd("EHLO flood.example")[0][:4])
        c.send(LONG_CMD)
        got.append(c.reply())
        got.append(c.cmd("NOOP"))
        got.append(c.cmd("MAIL FROM:<a@b.example>"))
        got.append(c.cmd("RCPT TO:<x@corp.example>"))
        got.append(c.cmd("DATA"))
        c.send(LONG_DATA)
        got.append(c.reply())
        got.append(c.cmd("NOOP"))
        for _ in range(5):
            c.send(LONG_CMD)
            got.append(c.reply())
        got.append(c.line())  # None: closed
    out[source] = got


def test_megabyte_lines_refused_memory_bounded_nothing_stored(postern):
    p = postern(relay())
    rss0 = rss_kb(p.pid)
    sampler = Sampler(p.pid)
    results, errors = {}, []

    def run(src):
        try:
            megabyte_session(p.port, src, results)
        except BaseException as e:  # reported below
            errors.append((src, e))
    threads = [threading.Thread(target=run, args=("127.0.30.%d" % i,), daemon=True)
               for i in range(1, 7)]
    for t in threads:
        t.start()
    # Meanwhile an allowed client is served.
    r, took = send_message(p.port, "127.0.0.2")
    m = R_QUEUED.fullmatch(r)
    assert m, r
    for t in threads:
        t.join(timeout=60 * SLOW)
    peak = sampler.stop()
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    want = (["250-", R_LINE_TOO_LONG, R_NOOP_OK, R_MAIL_OK, R_RCPT_OK, R_START_DATA,
             R_DATA_LINE_TOO_LONG, R_NOOP_OK] + [R_LINE_TOO_LONG] * 4 +
            [R_TOO_MANY_ERRORS, None])
    for src, got in sorted(results.items()):
        assert got == want, (src, got)
    assert len(results) == 6
    # 6 x 7 MB went through; postern held a few buffers of it at a time.
    assert peak - rss0 < 64 * 1024 * MEM, "RSS grew %d kB" % (peak - rss0)
    assert took < 5.0 * SLOW, took
    # Nothing of the refused messages was stored: only the allowed one.
    assert p.messages() == [m.group(1)]
    p.stop()


def test_discarded_input_is_read_at_a_bounded_rate(postern):
    """Input read only to be thrown away (the rest of an overlong command
    line, the body of a message refused for a long line) is read at most 16
    MiB/s a session (engine/session.c DISCARD_RATE): 8 MiB of it takes at
    least half a second, where a plain read takes a few ms. The client
    still gets its reply and the session goes on, and another client is
    served meanwhile."""
    p = postern(relay())
    served = {}

    def other():
        time.sleep(0.1)
        served["r"] = send_message(p.port, "127.0.0.2")
    with RawClient(p.port, "127.0.30.20", timeout=30) as c:
        assert c.cmd("EHLO flood.example")[0].startswith("250-")
        t = threading.Thread(target=other, daemon=True)
        t.start()
        t0 = time.monotonic()
        c.send(b"NOOP " + b"x" * (8 * MB) + b"\r\n")
        assert c.reply() == R_LINE_TOO_LONG
        took_cmd = time.monotonic() - t0
        assert c.cmd("NOOP") == R_NOOP_OK
        assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
        assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
        assert c.cmd("DATA") == R_START_DATA
        t0 = time.monotonic()
        c.send(b"Subject: long\r\n\r\n" + b"y" * (8 * MB) + b"\r\n.\r\n")
        assert c.reply() == R_DATA_LINE_TOO_LONG
        took_data = time.monotonic() - t0
        assert c.cmd("QUIT") == R_QUIT
        t.join(timeout=10 * SLOW)
    assert took_cmd >= 0.45, took_cmd
    assert took_data >= 0.45, took_data
    r, took = served["r"]
    m = R_QUEUED.fullmatch(r)
    assert m, r
    assert took < 2.0 * SLOW, took
    assert p.messages() == [m.group(1)]
    p.stop()


# ---- pipelining without reading the replies ---------------------------------------


def ehlo_reply(port, source):
    with RawClient(port, source) as c:
        lines = c.cmd("EHLO flood.example")
        assert c.cmd("QUIT") == R_QUIT
    return ("\r\n".join(lines) + "\r\n").encode()


def test_pipelined_flood_50000_commands_replies_in_order(postern):
    # 37,500 of these are junk commands: without max_junk_commands (100 by
    # default) the session lives to answer them all.
    p = postern(relay("max_junk_commands = 0;"))
    src = "127.0.40.1"
    ehlo = ehlo_reply(p.port, src)
    rss0 = rss_kb(p.pid)
    # 12,500 x (EHLO, NOOP, RSET, VRFY): 50,000 commands, 3.3 MB of replies
    # against a 16 KiB receive buffer that nobody reads for a while.
    cycle = [(b"EHLO flood.example\r\n", ehlo), (b"NOOP\r\n", R_NOOP_OK.encode() + b"\r\n"),
             (b"RSET\r\n", R_RESET.encode() + b"\r\n"),
             (b"VRFY someone\r\n", R_VRFY.encode() + b"\r\n")]
    n = 50000
    payload = b"".join(cycle[i % 4][0] for i in range(n))
    expected = b"".join(cycle[i % 4][1] for i in range(n))
    s = raw_socket(p.port, src, rcvbuf=16384)
    sampler = Sampler(p.pid)
    try:
        greeting = read_reply(s)
        assert greeting.startswith(b"220 "), greeting
        w = Writer(s, payload)
        w.start()
        # Nobody reads for a second: postern stops at what it cannot send.
        time.sleep(1.0)
        assert w.error is None, w.error
        got = read_exactly(s, len(expected), 30)
        w.join(timeout=10 * SLOW)
        assert not w.is_alive() and w.error is None, w.error
        assert len(got) == len(expected), (len(got), len(expected), got[-200:])
        assert got == expected, "replies out of order or altered"
        s.settimeout(10 * SLOW)
        s.sendall(b"QUIT\r\n")
        assert read_reply(s) == R_QUIT.encode() + b"\r\n"
        assert s.recv(1) == b""
    finally:
        s.close()
        peak = sampler.stop()
    assert peak - rss0 < 64 * 1024 * MEM, "RSS grew %d kB" % (peak - rss0)
    assert p.messages() == []
    p.stop()


def test_junk_command_flood_ends_at_the_limit(postern, tmp_path):
    """A client that pipelines NOOPs without end (never reading) gets its
    100 junk commands (max_junk_commands' default) answered, then each
    further one counts as a protocol error: the sixth ends the session with
    421 4.7.0, as any protocol errors do (max_protocol_errors 5). The
    replies arrive complete and in order, Postern closes the connection,
    and a message in between starts the count again."""
    sock = tmp_path / "junk.sock"
    p = postern(relay(), server_extra='  stats_socket = "%s";\n' % sock)
    src = "127.0.42.1"
    ehlo = ehlo_reply(p.port, src)
    s = raw_socket(p.port, src, rcvbuf=16384)
    try:
        assert read_reply(s).startswith(b"220 ")
        w = Writer(s, b"EHLO flood.example\r\n" + b"NOOP\r\n" * 200000)
        w.start()
        want = ehlo + (R_NOOP_OK.encode() + b"\r\n") * 105 + R_TOO_MANY_ERRORS.encode() + b"\r\n"
        got = read_exactly(s, len(want), 10 * SLOW)
        assert got == want, got[-300:]
        s.settimeout(10 * SLOW)
        rest = b""
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                rest += b
        except ConnectionResetError:
            pass  # what the writer still sent meets a closed socket
        assert rest == b"", rest[:200]
        w.join(timeout=10 * SLOW)
        assert not w.is_alive()
    finally:
        s.close()
    line = 'postern_messages_rejected_total{connector="Loopback Relay",reason="too_many_errors"} 1\n'
    wait_until(lambda: line in ctl(sock, "show", "metrics")[1], 5 * SLOW)
    # A message resets the count: 100 junk commands, one message, 100 more,
    # and the session is still there.
    with RawClient(p.port, "127.0.42.2") as c:
        assert c.cmd("EHLO client.example")[0].startswith("250-")
        for _ in range(100):
            assert c.cmd("NOOP") == R_NOOP_OK
        assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
        assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
        assert c.cmd("DATA") == R_START_DATA
        c.send(b"Subject: between\r\n\r\nbody\r\n.\r\n")
        assert R_QUEUED.fullmatch(c.reply())
        for _ in range(100):
            assert c.cmd("RSET") == R_RESET
        assert c.cmd("NOOP") == R_NOOP_OK  # the 101st: answered, one error
        assert c.cmd("QUIT") == R_QUIT
    assert len(p.messages()) == 1
    p.stop()


def test_clients_that_never_read_cost_postern_little(postern):
    """postern stops reading a session once 256 KiB of its input wait
    unprocessed (IN_PAUSE, engine/session.c) and reads again below half of
    that; what a client sends beyond it stays in the kernel's socket buffers
    (and then in the client's), never in postern. So 32 clients that pipeline
    megabytes and never read a reply may cost postern 32 x (256 KiB, the
    buffer's doubling to 512 KiB, a few 16 KiB receive buffers): under 1 MiB
    each, whatever they send. Each sends 10,000 EHLOs (1.4 MB of replies
    against a 16 KiB receive buffer nobody reads) and then 3 MB of 1,000-octet
    NOOP lines, with a 64 KiB send buffer.

    A session that falls behind its client reads one 16 KiB buffer a loop
    turn (io_recv_once), on io_uring as on epoll: a multishot receive would
    post all the socket holds before the pause's cancel reached the kernel
    (that was 1.6 to 2.0 MB a client on io_uring, all of it copied into the
    backlog). Measured now: 0.5 MB a client on both backends, plus, on
    io_uring, the provided buffers the kernel takes in ring order (2 workers
    x 512 x 16 KiB, touched once). The bound: 768 KiB a client plus those
    16 MiB."""
    p = postern(relay("max_junk_commands = 0;"))  # 3,000 NOOPs a client
    ehlo = ehlo_reply(p.port, "127.0.41.1")
    n_conns, n_ehlo, n_noop = 32, 10000, 3000
    noop = b"NOOP " + b"z" * 994 + b"\r\n"
    payload = b"EHLO flood.example\r\n" * n_ehlo + noop * n_noop
    rss0 = rss_kb(p.pid)
    conns, writers = [], []
    try:
        for i in range(n_conns):
            # 8 per source: within max_inbound_connection_per_source (20)
            s = raw_socket(p.port, "127.0.41.%d" % (1 + i % 4), rcvbuf=16384, sndbuf=65536)
            assert read_reply(s).startswith(b"220 ")
            conns.append(s)
        sampler = Sampler(p.pid)
        for s in conns:
            w = Writer(s, payload)
            w.start()
            writers.append(w)
        time.sleep(2.0 * SLOW)
        peak = sampler.stop()
        grown = peak - rss0
        # ASan's quarantine keeps the freed halves of every doubled buffer:
        # twice the bound there (measured: 1.0 MB a client against 0.47).
        bound = 16 * 1024 + n_conns * 768 * (2 if SANITIZE else 1)
        assert grown < bound, (
            "%d clients that never read grew postern's RSS by %d kB (%.2f MB each), "
            "bound %d kB; %d writers still blocked" % (
                n_conns, grown, grown / 1024.0 / n_conns, bound,
                sum(1 for w in writers if w.is_alive())))
        # It still serves everyone else promptly.
        r, took = send_message(p.port, "127.0.0.2")
        assert R_QUEUED.fullmatch(r), r
        assert took < 1.0 * SLOW, took
        # A flooder that reads at last gets every reply, in order.
        want = ehlo * n_ehlo + (R_NOOP_OK.encode() + b"\r\n") * n_noop
        got = read_exactly(conns[0], len(want), 30)
        assert got == want, (len(got), len(want))
    finally:
        for s in conns:
            hang_up(s)
        for w in writers:
            w.join(timeout=10 * SLOW)
    wait_until(lambda: open_fds(p.pid) < 60, 10, interval=0.1,
               what="postern to drop the flooding connections")
    assert len(p.messages()) == 1
    p.stop()


# ---- slowloris ---------------------------------------------------------------------


def test_slowloris_timeouts(postern):
    """One byte now and then: every byte is activity, so
    connection_inactivity_timeout only ends a client that falls silent;
    connection_timeout ends the one that keeps dripping. Both get
    421 4.4.1 Connection timed out, then the close."""
    p = postern(relay('connection_inactivity_timeout = "1s"; connection_timeout = "3s";'))
    silent = RawClient(p.port, "127.0.50.1", timeout=10)
    drip = RawClient(p.port, "127.0.50.2", timeout=10)
    t0 = time.monotonic()
    silent.send(b"E")  # then nothing: a slowloris at one byte every 10 s
    line = "EHLO slowloris.example\r\n".encode()
    state = {"drip_closed_at": None, "drip_reply": None, "sent": 0}

    def dripper():
        # a byte every 0.4 s: never 1 s without one, never a whole line
        i = 0
        while time.monotonic() - t0 < 6 * SLOW:
            try:
                drip.send(line[i % 10:i % 10 + 1])
                state["sent"] += 1
            except OSError:
                break
            i += 1
            time.sleep(0.4)
    t = threading.Thread(target=dripper, daemon=True)
    t.start()
    assert silent.reply(timeout=4) == R_TIMEOUT
    silent_at = time.monotonic() - t0
    silent.expect_closed(timeout=2)
    assert 0.9 <= silent_at <= 2.0 * SLOW, "closed after %.2f s" % silent_at
    r = drip.reply(timeout=6)
    drip_at = time.monotonic() - t0
    assert r == R_TIMEOUT
    drip.expect_closed(timeout=2)
    assert 2.9 <= drip_at <= 4.0 * SLOW, "dripping client closed after %.2f s" % drip_at
    assert state["sent"] >= 6
    t.join(timeout=10 * SLOW)
    silent.close()
    drip.close()
    p.stop()


# ---- connection storm ---------------------------------------------------------------


def test_connection_storm_leaves_postern_serving(postern):
    """2,000 connections in a few seconds from 100 sources, each greeted and
    said goodbye to, plus 500 that reset right after connecting."""
    need_descriptors(512)
    p = postern(relay())
    rss0, fds0 = rss_kb(p.pid), open_fds(p.pid)
    sources = ["127.0.60.%d" % i for i in range(1, 101)]
    tally, lock, errors = {}, threading.Lock(), []

    def storm(k):
        try:
            for i in range(k, 2000, 4):
                s = raw_socket(p.port, sources[i % 100], timeout=10)
                try:
                    g = read_reply(s)
                    s.sendall(b"QUIT\r\n")
                    bye = read_reply(s)
                finally:
                    s.close()
                key = (g[:3] + b" " + bye[:3]).decode()
                with lock:
                    tally[key] = tally.get(key, 0) + 1
        except BaseException as e:
            errors.append(e)

    def resets(k):
        try:
            for i in range(k, 500, 2):
                hang_up(raw_socket(p.port, sources[i % 100], timeout=10))
        except BaseException as e:
            errors.append(e)
    t0 = time.monotonic()
    threads = [threading.Thread(target=storm, args=(k,), daemon=True) for k in range(4)]
    threads += [threading.Thread(target=resets, args=(k,), daemon=True) for k in range(2)]
    for t in threads:
        t.start()
    # An allowed client in the middle of it.
    r, took = send_message(p.port, "127.0.0.2")
    for t in threads:
        t.join(timeout=60 * SLOW)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert tally == {"220 221": 2000}, tally
    assert elapsed < 30 * SLOW, elapsed
    assert R_QUEUED.fullmatch(r), r
    assert took < 2.0 * SLOW, took
    # Serving, and nothing of the storm is left behind.
    r, _ = send_message(p.port, "127.0.0.3")
    assert R_QUEUED.fullmatch(r), r
    wait_until(lambda: open_fds(p.pid) <= fds0 + 2, 10, interval=0.1,
               what="postern's descriptors to come back to %d" % fds0)
    assert rss_kb(p.pid) - rss0 < 32 * 1024 * MEM
    assert len(p.messages()) == 2
    p.stop()
