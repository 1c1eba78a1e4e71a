"""server.io_backend (DESIGN B.6): epoll asked for, io_uring asked for, and
auto falling back to epoll where io_uring_setup is really forbidden.

The forbidding is a seccomp filter loaded by a wrapper that then execs
postern (same pid, filter inherited): io_uring_setup fails with EPERM in
postern only, as under a container runtime's default profile, never in
this test process. The filter needs python3-seccomp
(scripts/install-deps.sh installs it); without it these tests skip, and
fail under CI=true so that a green run cannot hide them."""
import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

import conftest
from conftest import (BINARY, BUILD, R_GREETING, R_MAIL_OK, R_QUIT, R_RCPT_OK,
                      R_START_DATA, SLOW, RawClient, check_sanitizer, free_port,
                      make_config, wait_until)
from sink import Sink
from test_delivery import config, events, smart, strip_received, submit, wait_event

try:
    import seccomp
except ImportError:
    seccomp = None

CTL = os.path.join(BUILD, "posternctl")

# Loads the filter, then becomes postern. Run by this same interpreter, so
# it finds python3-seccomp wherever this process did.
WRAPPER = [sys.executable, "-c", """
import errno, os, sys, seccomp
f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
f.add_rule(seccomp.ERRNO(errno.EPERM), "io_uring_setup")
f.load()
os.execv(sys.argv[1], sys.argv[1:])
"""]

FALLBACK_LINE = ('level=warn event=io_backend backend=epoll '
                 'reason="io_uring_setup: Operation not permitted" '
                 'note="io_uring unavailable: falling back to epoll"')
EXPLICIT_URING_ERROR = (
    'postern: server.io_backend = "io_uring": io_uring_setup: Operation not '
    'permitted (kernel.io_uring_disabled, or the container\'s seccomp profile); '
    'use "auto" or "epoll"')
TS = r"ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "

BODY = (b"Subject: backend bytes\r\n"
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n"
        b"\r\n"
        b"..a stuffed line\r\n"
        b"..\r\n"
        b"8 bit: \xe9\xe8\xff\x80\x01 done\r\n"
        + b"x" * 998 + b"\r\n"
        b"trailing space \t \r\n"
        b"\r\n"
        b"last line\r\n")


@pytest.fixture(autouse=True)
def own_backend_key(monkeypatch):
    """Each test here sets io_backend itself, or leaves it unset on
    purpose: POSTERN_IO_BACKEND must not add one."""
    monkeypatch.setattr(conftest, "IO_BACKEND", None)


def need_seccomp():
    if seccomp is None:
        msg = ("python3-seccomp is not importable by %s: run scripts/install-deps.sh"
               % sys.executable)
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def io_uring_setup_errno():
    """0 when this process can set up an io_uring, else the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = libc.syscall(ctypes.c_long(425), ctypes.c_uint(4), params)  # io_uring_setup
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def status_field(pid, name):
    with open("/proc/%s/status" % pid) as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError("no %s in /proc/%s/status" % (name, pid))


def ctl(sock, *args):
    r = subprocess.run([CTL, "-s", str(sock)] + list(args), capture_output=True,
                       timeout=30 * SLOW)
    assert r.returncode == 0, (args, r.stdout, r.stderr)
    return r.stdout.decode()


def info(sock):
    out = ctl(sock, "show", "info")
    return dict(line.split(": ", 1) for line in out.strip().split("\n"))


def metrics_backend_lines(mport):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport,
                                timeout=10 * SLOW) as r:
        assert r.status == 200
        body = r.read().decode()
    return [l for l in body.split("\n")
            if re.match(r"(# TYPE )?postern_io_backend_info\b", l)]


def start(postern, tmp_path, sink_port, backend=None, wrapper=()):
    """A relay to sink_port with a stats socket and /metrics; io_backend
    set to backend, or not written at all when None."""
    sock = tmp_path / "run" / "stats.sock"
    mport = free_port()
    extra = '  stats_socket = "%s";\n  metrics_listen = "127.0.0.1:%d";\n' % (sock, mport)
    if backend is not None:
        extra += '  io_backend = "%s";\n' % backend
    p = postern(config(smart("Smart", ["*"], sink_port)), server_extra=extra,
                wrapper=wrapper)
    wait_until(lambda: sock.exists(), 10, what="stats socket")
    p.sock, p.mport = sock, mport
    return p


def start_lines(p):
    return [l for l in p.stderr().splitlines() if " event=start " in l]


def assert_backend(p, name):
    """Every place that names the backend names this one."""
    assert info(p.sock)["io_backend"] == name
    assert json.loads(ctl(p.sock, "show", "info", "json"))["io_backend"] == name
    assert metrics_backend_lines(p.mport) == [
        "# TYPE postern_io_backend_info gauge",
        'postern_io_backend_info{backend="%s"} 1' % name]
    starts = start_lines(p)
    assert len(starts) == 1, starts
    assert " workers=2 io_backend=%s " % name in starts[0], starts[0]


def delivered_exactly(p, sink, qid):
    """The message reached the sink once, byte for byte, and left the queue."""
    wait_event(p, "deliver", id=qid)
    assert len(sink.messages) == 1, sink.messages
    txn = sink.messages[0]
    assert txn["mail"].startswith("MAIL FROM:<s@a.test>"), txn["mail"]
    assert "BODY=8BITMIME" in txn["mail"].split()[2:], txn["mail"]
    assert [l for l, _ in txn["rcpt_lines"]] == ["RCPT TO:<r@other.test>"]
    hdr, rest = strip_received(txn["data"], qid)
    assert rest == BODY
    wait_until(lambda: p.messages() == [], 5, what="the queue to be empty")
    return txn


def test_epoll_asked_for_serves_stores_and_delivers(postern, tmp_path):
    sink_port = free_port()
    p = start(postern, tmp_path, sink_port, backend="epoll")
    assert_backend(p, "epoll")
    assert [l for l in p.stderr().splitlines() if "event=io_backend" in l] == []
    # Nothing listens at the next hop yet: the message waits in the spool.
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY, " BODY=8BITMIME")
    d = wait_event(p, "defer", id=qid)[0]
    assert d["status"] == "4.4.1", d["_line"]
    assert p.messages() == [qid]
    envelope, sep, stored = p.read_message(qid).partition(b"\r\n\r\n")
    assert sep, envelope
    fields = envelope.split(b"\r\n")
    assert fields[0] == b"POSTERN/1", fields
    assert b"id: " + qid.encode() in fields, fields
    assert b"from: <s@a.test> BODY=8BITMIME" in fields, fields
    assert [f for f in fields if f.startswith(b"rcpt: ")] == [b"rcpt: <r@other.test>"]
    assert strip_received(stored, qid)[1] == BODY
    with Sink(port=sink_port) as sink:
        txn = delivered_exactly(p, sink, qid)
        assert txn["data"] == stored
        p.stop()
    assert len(events(p, "deliver", id=qid)) == 1


def test_auto_falls_back_to_epoll_when_io_uring_setup_is_forbidden(postern, tmp_path):
    need_seccomp()
    with Sink() as sink:
        p = start(postern, tmp_path, sink.port, wrapper=WRAPPER)
        assert "io_backend" not in p.config.read_text()
        assert p.config.read_text().count("workers = 2;") == 1
        # The filter is on postern, loaded by the wrapper on top of whatever
        # this process runs under.
        assert status_field(p.pid, "Seccomp") == "2"
        assert int(status_field(p.pid, "Seccomp_filters")) == \
            int(status_field("self", "Seccomp_filters")) + 1
        assert_backend(p, "epoll")
        warns = [l for l in p.stderr().splitlines() if "level=warn event=io_backend" in l]
        assert len(warns) == 1, warns
        assert re.fullmatch(TS + re.escape(FALLBACK_LINE), warns[0]), warns[0]
        qid = submit(p.port, "s@a.test", ["r@other.test"], BODY, " BODY=8BITMIME")
        delivered_exactly(p, sink, qid)
        # A reload does not probe again.
        p.signal(signal.SIGHUP)
        wait_event(p, "reload", status="ok")
        p.stop()
    text = p.stderr()
    assert len([l for l in text.splitlines() if "event=io_backend" in l]) == 1, text
    assert len(events(p, "deliver", id=qid)) == 1


def test_io_uring_asked_for_but_forbidden_exits_1(tmp_path):
    need_seccomp()
    port = free_port()
    conf = tmp_path / "postern.conf"
    conf.write_text(make_config(
        tmp_path / "spool",
        config(smart("Smart", ["*"], free_port())).replace("{port}", str(port)),
        '  io_backend = "io_uring";\n'))
    r = subprocess.run(WRAPPER + [BINARY, "-c", str(conf)], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30 * SLOW)
    err = r.stderr.decode(errors="replace")
    check_sanitizer(err)
    assert r.returncode == 1, err
    assert r.stdout == b""
    mine = [l for l in err.splitlines() if not re.match(TS, l)]
    assert mine == [EXPLICIT_URING_ERROR], err
    assert "event=start " not in err and "event=io_backend" not in err, err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize("backend", ["io_uring", None], ids=["io_uring", "auto"])
def test_io_uring_where_the_kernel_allows_it(postern, tmp_path, backend):
    e = io_uring_setup_errno()
    if e:
        pytest.skip("this machine cannot set up io_uring: io_uring_setup: %s"
                    % os.strerror(e))
    with Sink() as sink:
        p = start(postern, tmp_path, sink.port, backend=backend)
        assert_backend(p, "io_uring")
        assert [l for l in p.stderr().splitlines() if "event=io_backend" in l] == []
        qid = submit(p.port, "s@a.test", ["r@other.test"], BODY, " BODY=8BITMIME")
        delivered_exactly(p, sink, qid)
        p.stop()


def big_body(mib):
    """A message of about mib MiB in wire form: full-length lines, some of
    them dot-stuffed, 8-bit bytes, every line numbered so that a lost or
    repeated piece shows."""
    lines = [b"Subject: big\r\n", b"\r\n"]
    n = mib * 1024 * 1024 // 1000
    for i in range(n):
        head = b"%s%07d " % (b".." if i % 97 == 0 else b"", i)
        lines.append(head + bytes([0x41 + i % 26, 0xe9]) * ((998 - len(head)) // 2)
                     + b"\r\n")
    return b"".join(lines)


@pytest.mark.parametrize("backend", ["epoll", "io_uring"])
def test_big_message_byte_exact_both_ways(postern, tmp_path, backend):
    """Megabytes in from the client and out to the next hop: reads and
    sends that do not fit the socket buffers, sendfile from the spool."""
    if backend == "io_uring":
        e = io_uring_setup_errno()
        if e:
            pytest.skip("this machine cannot set up io_uring: io_uring_setup: %s"
                        % os.strerror(e))
    body = big_body(12)
    with Sink() as sink:
        p = start(postern, tmp_path, sink.port, backend=backend)
        qid = submit(p.port, "s@a.test", ["r@other.test"], body)
        wait_event(p, "deliver", timeout=30, id=qid)
        assert len(sink.messages) == 1
        hdr, rest = strip_received(sink.messages[0]["data"], qid)
        assert len(rest) == len(body)
        assert rest == body
        wait_until(lambda: p.messages() == [], 5, what="the queue to be empty")
        p.stop()


@pytest.mark.parametrize("backend", ["epoll", "io_uring"])
def test_many_sessions_at_once(postern, tmp_path, backend):
    """More sessions open at once than one wait returns events for, each
    with a message: every one is accepted and delivered exactly once."""
    if backend == "io_uring":
        e = io_uring_setup_errno()
        if e:
            pytest.skip("this machine cannot set up io_uring: io_uring_setup: %s"
                        % os.strerror(e))
    n = 400
    with Sink() as sink:
        p = start(postern, tmp_path, sink.port, backend=backend)
        clients = [RawClient(p.port, "127.0.0.%d" % (10 + i % 40)) for i in range(n)]
        try:
            for c in clients:
                assert c.greeting == R_GREETING
                c.send("EHLO client.example\r\nMAIL FROM:<s@a.test>\r\n"
                       "RCPT TO:<r@other.test>\r\nDATA\r\n")
            for c in clients:
                assert c.reply()[0].startswith("250-")
                assert c.replies(3) == [R_MAIL_OK, R_RCPT_OK, R_START_DATA]
            for i, c in enumerate(clients):
                c.send(b"Subject: many\r\nX-Seq: %d\r\n\r\nmessage %d\r\n.\r\n" % (i, i))
            for c in clients:
                assert re.fullmatch(r"250 2\.6\.0 <[0-9A-F]+> Queued mail for delivery",
                                    c.reply())
                assert c.cmd("QUIT") == R_QUIT
                c.expect_closed()
        finally:
            for c in clients:
                c.close()
        wait_until(lambda: len(sink.messages) >= n, 30,
                   what="%d messages at the sink (have %d)" % (n, len(sink.messages)))
        wait_until(lambda: p.messages() == [], 10, what="the queue to be empty")
        seqs = sorted(int(re.search(rb"\r\nX-Seq: (\d+)\r\n", t["data"]).group(1))
                      for t in sink.snapshot())
        assert seqs == list(range(n))
        p.stop()
