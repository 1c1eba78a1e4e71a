"""Shared helpers for the Postern integration suite.

Every test starts its own build/postern on a free loopback port with a
configuration written into tmp_path, talks SMTP to it over loopback (clients
bind distinct 127.0.0.x source addresses to select receive connectors) and
stops it with SIGTERM, asserting a clean exit.

Environment:
  POSTERN_BUILD     build directory holding the postern binary
                    (default: build/ at the top of the repository)
  POSTERN_SANITIZE  "1" when the binary is an ASan/UBSan build: timeouts are
                    stretched and sanitizer reports in stderr fail the test.
  POSTERN_IO_BACKEND  "auto", "io_uring" or "epoll": written as
                    `io_backend = "<value>";` into the server group of every
                    configuration make_config() builds, unless the test's
                    server_extra sets io_backend itself (ctest's
                    integration_epoll_1 and _2 run the suite this way). Unset: the
                    key is not written and postern's default (auto) applies.
"""
import os
import re
import signal
import socket
import subprocess
import time

import pytest

BUILD = os.environ.get(
    "POSTERN_BUILD",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "build"))
BINARY = os.path.join(BUILD, "postern")
SPOOL_TOOL = os.path.join(BUILD, "postern-spool")
SANITIZE = os.environ.get("POSTERN_SANITIZE") == "1"
# Multiplier for every deadline: sanitizer builds are several times slower.
SLOW = 3.0 if SANITIZE else 1.0
IO_BACKEND = os.environ.get("POSTERN_IO_BACKEND") or None
if IO_BACKEND not in (None, "auto", "io_uring", "epoll"):
    raise pytest.UsageError("POSTERN_IO_BACKEND=%r: expected auto, io_uring or epoll"
                            % IO_BACKEND)

HOSTNAME = "relay.test.example"

# Reply texts, exactly as in proto/smtp_reply.h (DESIGN B.3).
R_MAIL_OK = "250 2.1.0 Sender OK"
R_BAD_SENDER = "550 5.1.7 Invalid address"
R_NOT_AUTHENTICATED = "530 5.7.1 Client was not authenticated"
R_RCPT_OK = "250 2.1.5 Recipient OK"
R_BAD_RCPT = "501 5.1.3 Invalid address"
R_UNABLE_TO_RELAY = "550 5.7.1 Unable to relay"
R_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
R_START_DATA = "354 Start mail input; end with <CRLF>.<CRLF>"
R_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
R_BARE_LF = "550 5.6.11 Bare line feed or carriage return not allowed"
R_DATA_LINE_TOO_LONG = "550 5.6.0 Message line longer than 1000 octets"
R_BAD_SEQUENCE = "503 5.5.1 Bad sequence of commands"
R_UNRECOGNIZED = "500 5.3.3 Unrecognized command"
R_LINE_TOO_LONG = "500 5.5.2 Line too long"
R_SYNTAX = "501 5.5.4 Syntax error in parameters or arguments"
R_BAD_DOMAIN = "501 5.5.4 Invalid domain name"
R_UNKNOWN_PARAM = "555 5.5.4 Unsupported parameter"
R_SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing transmission channel"
R_TOO_MANY_ERRORS = ("421 4.7.0 Too many errors on this connection, "
                     "closing transmission channel")
R_TIMEOUT = "421 4.4.1 Connection timed out"
R_QUIT = "221 2.0.0 Service closing transmission channel"
R_NOOP_OK = "250 2.0.0 OK"
R_RESET = "250 2.0.0 Resetting"
R_VRFY = ("252 2.5.0 Cannot VRFY user, but will accept message and attempt "
          "delivery")
R_HELP = "214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP"
R_GREETING = "220 %s Postern ESMTP service ready" % HOSTNAME

ACCEPTED_DOMAINS = """accepted_domains = (
  { domain = "corp.example"; type = "authoritative"; }
);
"""

# The two connectors on one binding that most tests use. {port} is filled in.
TWO_CONNECTORS = """receive_connectors = (
  { name = "Default Frontend";
    bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "0.0.0.0-255.255.255.255" ];
    permission_groups = [ "anonymous" ];
  },
  { name = "Anonymous Relay";
    bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.10", "127.0.0.20-127.0.0.29" ];
    permission_groups = [ "anonymous_relay" ];
    max_recipients_per_message = 5;
    max_message_size = "64KB";
  }
);
"""

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                     "runtime error:")


_PORTS_GIVEN = set()


def free_port():
    """A port nothing is bound to on 127.0.0.1, outside the kernel's
    ephemeral range (32768-60999): a port the kernel picks for us is one it
    may hand, in the instant before the server binds it, to any client
    socket of the tests running beside this one (CI saw "metrics_listen
    ...: Address already in use"). No port is handed out twice by one
    test process."""
    import random
    for _ in range(500):
        port = random.randint(20000, 32000)
        if port in _PORTS_GIVEN:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _PORTS_GIVEN.add(port)
        return port
    raise AssertionError("no free port")


def free_wildcard_port():
    """A port free on every address, outside the ephemeral range, for a
    "[::]:port" binding (an ephemeral port could be taken by any client
    socket between the check and postern's bind)."""
    import random
    for _ in range(200):
        port = random.randint(20000, 32000)
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind(("::", port))
            return port
        except OSError:
            continue
    raise AssertionError("no free port for a wildcard binding")


def port_refuses(port, host="127.0.0.1"):
    """True once nothing listens on host:port (the connect is refused or
    reset). A SYN that reaches a listening socket in the instant it is
    being closed is dropped without an answer (the kernel found the socket,
    then saw it CLOSED), and the retransmission comes a second later: a
    probe that times out proves nothing either way, so it counts as
    "not yet" and the caller probes again."""
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return False
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except (TimeoutError, socket.timeout):
        return False


def wait_until(pred, timeout, interval=0.02, what="condition"):
    """Polls pred() until it returns a true value; fails after timeout s."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s"
                                 % (timeout * SLOW, what))
        time.sleep(interval)


def rss_kb(pid):
    """VmRSS of a process in kB (from /proc/<pid>/status)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


# Tests that are not about delivery keep what they accept in the queue: the
# only send connector points at a port where nothing listens, so every
# message is deferred (and stays readable in the spool) for an hour.
HOLD_SEND_CONNECTOR = (
    'send_connectors = ( { name = "Hold"; address_spaces = [ "*" ]; '
    'smart_hosts = [ "127.0.0.1:%d" ]; } );\n'
    'queue = { retry_interval = "1h"; };\n')


def make_config(spool, connectors, server_extra="", domains=ACCEPTED_DOMAINS,
                hostname=HOSTNAME):
    if "send_connectors" not in connectors:
        connectors = connectors + HOLD_SEND_CONNECTOR % free_port()
    if IO_BACKEND and not re.search(r"\bio_backend\s*=", server_extra):
        server_extra += '  io_backend = "%s";\n' % IO_BACKEND
    return ("server = {\n"
            '  hostname = "%s";\n'
            "  workers = 2;\n"
            '  spool_dir = "%s";\n'
            '  shutdown_grace = "10s";\n'
            "%s"
            "};\n%s%s" % (hostname, spool, server_extra, domains, connectors))


def check_config(pt):
    """`postern -c FILE --check` on a Postern's config (not started)."""
    return subprocess.run([BINARY, "-c", str(pt.config), "--check"], capture_output=True,
                          timeout=20 * SLOW)


def assert_config_error(pt, word):
    """--check refuses the file with one "FILE:LINE: ..." line naming word."""
    r = check_config(pt)
    err = r.stderr.decode()
    assert r.returncode == 1, (r.returncode, err, r.stdout.decode()[-500:])
    assert re.fullmatch(r"%s:\d+: [^\n]*\n" % re.escape(str(pt.config)), err), err
    assert word in err, err


def check_sanitizer(text):
    for marker in SANITIZER_MARKERS:
        assert marker not in text, "sanitizer report in postern stderr:\n" + text


class Postern:
    """One running postern. .port is the first port, .ports all of them."""

    def __init__(self, tmp_path, connectors, nports=1, server_extra="",
                 domains=ACCEPTED_DOMAINS, name="postern", ports=None, wrapper=(),
                 hostname=HOSTNAME):
        # wrapper: a command that postern's argv is appended to, which must
        # exec it (same pid), e.g. one that loads a seccomp filter first.
        self.wrapper = list(wrapper)
        self.dir = tmp_path / name
        self.dir.mkdir()
        self.spool = self.dir / "spool"
        self.ports = ports or [free_port() for _ in range(nports)]
        self.port = self.ports[0]
        fmt = {"port": self.port}
        for i, p in enumerate(self.ports):
            fmt["port%d" % i] = p
        self.config = self.dir / "postern.conf"
        text = connectors
        # Exchange's default 5 s tarpit would slow every refusal in these
        # tests; a test that is about the tarpit sets tarpit_interval itself.
        if "tarpit_interval" not in text:
            text = text.replace("permission_groups = [", 'tarpit_interval = "0s"; permission_groups = [')
        for key, val in fmt.items():
            text = text.replace("{%s}" % key, str(val))
        self.config.write_text(make_config(self.spool, text, server_extra,
                                           domains, hostname))
        self.stderr_path = self.dir / "stderr.log"
        self.proc = None
        self.stopped = False

    def start(self):
        assert os.access(BINARY, os.X_OK), "no postern binary at " + BINARY
        self.stopped = False
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.wrapper + [BINARY, "-c", str(self.config)],
                                     stdin=subprocess.DEVNULL,
                                     stdout=self._err, stderr=self._err)
        for port in self.ports:
            wait_until(lambda: self._accepts(port), 10,
                       what="postern to listen on port %d" % port)
        # A port can accept before this process listens: after a kill -9 the
        # old listener lingers until the kernel tears down its io_uring.
        wait_until(self._started, 30, what="postern to log event=start")
        return self

    def _started(self):
        if self.proc.poll() is not None:
            raise AssertionError("postern exited with %s during startup:\n%s"
                                 % (self.proc.returncode, self.stderr()))
        text = self.config.read_text()
        if re.search(r'log_level = "(warn|error)"', text):
            return True  # event=start is not logged at these levels
        m = re.search(r'log_file = "([^"]+)"', text)
        path = m.group(1) if m else self.stderr_path
        try:
            with open(path, "rb") as f:
                log = f.read()
        except FileNotFoundError:
            return False
        starts = re.findall(rb"[^\n]*event=start [^\n]*", log)
        if not starts:
            return False
        # The backend asked for is the one that runs (POSTERN_IO_BACKEND or
        # the test's own key): a run meant for epoll must not pass on io_uring.
        m = re.search(r'\bio_backend = "(io_uring|epoll)"', text)
        if m:
            want = b" io_backend=%s " % m.group(1).encode()
            assert want in starts[-1], "postern started with another backend: %r" % starts[-1]
        return True

    def _accepts(self, port):
        if self.proc.poll() is not None:
            raise AssertionError("postern exited with %s during startup:\n%s"
                                 % (self.proc.returncode, self.stderr()))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    @property
    def pid(self):
        return self.proc.pid

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def spool_names(self):
        return sorted(os.listdir(self.spool))

    def _spool_tool(self, *args):
        if not self.spool.exists():
            return b""
        r = subprocess.run([SPOOL_TOOL, str(self.spool)] + list(args),
                           capture_output=True, timeout=60 * SLOW)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout

    def message_sizes(self):
        """Queued messages (as recovery would find them): id -> bytes of
        envelope block and message."""
        out = self._spool_tool("list").decode()
        return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()}

    def messages(self):
        """Ids of the complete messages in the spool, sorted."""
        return sorted(self.message_sizes())

    def read_message(self, msgid):
        """Envelope block and message bytes, as stored."""
        return self._spool_tool("cat", msgid)

    def all_messages(self):
        """Every complete message: id -> envelope block and message bytes."""
        out, msgs, pos = self._spool_tool("dump"), {}, 0
        while pos < len(out):
            nl = out.index(b"\n", pos)
            mid, size = out[pos:nl].decode().split()
            pos = nl + 1 + int(size)
            msgs[mid] = out[nl + 1:pos]
        return msgs

    def spool_stats(self):
        import json
        out = self._spool_tool("stats")
        return json.loads(out) if out else {"torn_tails": 0, "partial": 0}

    def assert_spool_clean(self):
        """Only segments and the lock file, and no torn record: after a
        clean stop every segment ends in complete records."""
        odd = [n for n in self.spool_names()
               if not (n.startswith("seg-") and n.endswith(".log")) and n != "postern.lock"]
        assert odd == [], "unexpected files in the spool: %r" % odd
        # A kill -9 may leave a torn record at the end of a segment, which
        # recovery skips; a clean stop never does.
        if not getattr(self, "crashed", False):
            assert self.spool_stats()["torn_tails"] == 0

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout=20):
        try:
            return self.proc.wait(timeout=timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("postern did not exit within %.0fs of SIGTERM:\n%s"
                                 % (timeout * SLOW, self.stderr()))

    def stop(self):
        """SIGTERM; asserts exit 0, no sanitizer report, a clean spool."""
        if self.stopped or self.proc is None:
            self.stopped = True
            return self.proc.returncode if self.proc else None
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit()
        self._err.close()
        text = self.stderr()
        assert rc == 0, "postern exited %s:\n%s" % (rc, text)
        check_sanitizer(text)
        self.assert_spool_clean()
        return rc

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stopped = True


@pytest.fixture(autouse=True)
def _reclaim_spool_space(tmp_path):
    """After each test (and after its servers were stopped and checked),
    its spool segments go: each is preallocated (64 MiB by default), and
    pytest keeps the last sessions' directories, which came to some 24 GB
    per `make test`: more than a small CI disk has to spare."""
    yield
    for root, _dirs, files in os.walk(tmp_path):
        for n in files:
            if n.startswith("seg-") and n.endswith(".log"):
                try:
                    os.unlink(os.path.join(root, n))
                except OSError:
                    pass


@pytest.fixture
def postern(tmp_path):
    """Factory: postern(connectors_text, nports=1, server_extra="") starts a
    server ("{port}", "{port0}", "{port1}"... in the text are filled in) and
    returns it running. Servers not stopped by the test are stopped (and
    checked) at teardown."""
    started = []

    def factory(connectors=TWO_CONNECTORS, **kw):
        kw.setdefault("name", "postern%d" % len(started))
        p = Postern(tmp_path, connectors, **kw)
        started.append(p)
        return p.start()

    yield factory
    errors = []
    for p in started:
        if p.stopped:
            continue
        try:
            p.stop()
        except Exception as e:  # report every server, not just the first
            errors.append("%s: %s" % (p.dir.name, e))
        finally:
            p.kill()
    assert not errors, "\n".join(errors)


class RawClient:
    """A raw SMTP client socket with a reply reader that understands
    multi-line replies. Every read is bounded by a deadline."""

    def __init__(self, port, source="127.0.0.50", timeout=10, greet=True):
        self.timeout = timeout * SLOW
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((source, 0))
        self.sock.settimeout(self.timeout)
        self.sock.connect(("127.0.0.1", port))
        self.buf = b""
        self.eof = False
        self.greeting = self.reply() if greet else None

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError("timed out reading from postern; have %r"
                                 % self.buf[-300:])
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise AssertionError("timed out reading from postern; have %r"
                                 % self.buf[-300:])
        except ConnectionResetError:
            # The server closed with our unread input pending: everything it
            # sent before is already in self.buf or was read earlier.
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk
        return chunk

    def line(self, timeout=None):
        """One reply line without CR LF; None at end of stream."""
        deadline = time.monotonic() + (timeout * SLOW if timeout else self.timeout)
        while b"\r\n" not in self.buf:
            if self.eof or not self._fill(deadline):
                assert self.buf == b"", "partial line before EOF: %r" % self.buf
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("latin-1")

    def reply(self, timeout=None):
        """A complete reply: the list of its lines. A single-line reply is
        returned as a string. Fails on EOF."""
        lines = []
        while True:
            ln = self.line(timeout)
            assert ln is not None, ("connection closed while reading a reply; got %r"
                                    % lines)
            assert len(ln) >= 4 and ln[:3].isdigit() and ln[3] in " -", \
                "malformed reply line %r" % ln
            lines.append(ln)
            if ln[3] == " ":
                return lines[0] if len(lines) == 1 else lines

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line, timeout=None):
        self.send(line + "\r\n")
        return self.reply(timeout)

    def expect_closed(self, timeout=None):
        """Asserts that the server closes the connection with nothing more
        to say."""
        ln = self.line(timeout)
        assert ln is None, "expected the connection to close, got %r" % ln

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.fixture
def smtp_raw():
    """Factory: smtp_raw(port, source="127.0.0.50") -> connected RawClient
    (greeting already read, in .greeting). Closed at teardown."""
    clients = []

    def factory(port, source="127.0.0.50", **kw):
        c = RawClient(port, source, **kw)
        clients.append(c)
        return c

    yield factory
    for c in clients:
        c.close()
