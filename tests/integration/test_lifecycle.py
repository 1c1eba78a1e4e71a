"""Configuration checking, graceful stop on SIGTERM and timeouts."""
import os
import re
import socket
import subprocess
import time

import pytest

from conftest import (BINARY, HOSTNAME, port_refuses, R_MAIL_OK, R_QUIT, R_RCPT_OK,
                      R_SHUTTING_DOWN, R_START_DATA, R_TIMEOUT, SLOW,
                      TWO_CONNECTORS, check_sanitizer, free_port, make_config,
                      wait_until)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_postern(*args, timeout=20):
    r = subprocess.run([BINARY] + list(args), stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout * SLOW)
    check_sanitizer(r.stderr.decode(errors="replace"))
    return r


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_check_prints_connectors(tmp_path):
    port = free_port()
    path = write(tmp_path, "postern.conf",
                 make_config(tmp_path / "spool",
                             TWO_CONNECTORS.replace("{port}", str(port))))
    r = run_postern("-c", path, "--check")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    # make_config names the backend only when the suite runs on a forced one.
    backend = os.environ.get("POSTERN_IO_BACKEND") or "auto"
    assert out.startswith("server: hostname=%s workers=2 io_backend=%s spool_dir=%s max_open_files=65536\n"
                          % (HOSTNAME, backend, tmp_path / "spool"))
    assert "binding 127.0.0.1:%d:\n" % port in out
    assert '  connector "Default Frontend" permissions=anonymous\n' in out
    assert '  connector "Anonymous Relay" permissions=anonymous_relay\n' in out
    # The relay connector's block lists its ranges and its own limits.
    relay = out[out.index('connector "Anonymous Relay"'):]
    assert "127.0.0.10" in relay and "127.0.0.20-127.0.0.29" in relay
    assert re.search(r"\n +max_message_size +65536\n", relay)
    assert re.search(r"\n +max_recipients_per_message +5\n", relay)
    # --check only validates: nothing was created, nothing listens.
    assert not (tmp_path / "spool").exists()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_check_sample_config():
    sample = os.path.join(REPO, "deploy", "postern.conf")
    if not os.path.exists(sample):
        pytest.skip("no sample configuration at deploy/postern.conf yet")
    r = run_postern("-c", sample, "--check")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    with open(sample) as f:
        text = re.sub(r"#[^\n]*", "", f.read())
    # The receive connector names declared in the sample, each printed once.
    block = text[text.index("receive_connectors"):]
    m = re.search(r"\n\s*send_connectors\s*=", block)
    block = block[:m.start()] if m else block
    names = re.findall(r'\bname\s*=\s*"([^"]+)"', block)
    assert names
    printed = re.findall(r'^  connector "([^"]+)" permissions=', out, re.M)
    assert sorted(set(printed)) == sorted(set(names)), out


BAD_CONFIGS = {
    "unknown_setting": ("""server = {
  hostname = "relay.test.example";
  bogus_setting = 1;
  workers = 2;
};
receive_connectors = (
  { name = "A"; bindings = [ "127.0.0.1:2525" ]; }
);
""", 3, 'unknown setting "bogus_setting"'),
    "bad_range": ("""server = { hostname = "relay.test.example"; workers = 2; };
receive_connectors = (
  {
    name = "A";
    bindings = [ "127.0.0.1:2525" ];
    remote_ip_ranges = [ "10.0.0.1", "10.0.0.300" ];
  }
);
""", 6, 'remote_ip_ranges: "10.0.0.300" is not an address, a-b range or CIDR'),
    "duplicate_range": ("""server = { hostname = "relay.test.example"; workers = 2; };
receive_connectors = (
  { name = "A"; bindings = [ "127.0.0.1:2525" ]; remote_ip_ranges = [ "10.1.0.0/16" ]; },
  {
    name = "B";
    bindings = [ "127.0.0.1:2525" ];
    remote_ip_ranges = [ "192.168.0.1", "10.1.0.0/16" ];
  }
);
""", 4, 'connectors "A" and "B" both claim 10.1.0.0/16 on 127.0.0.1:2525'),
    "syntax_error": ("""server = { hostname = "relay.test.example"; workers = 2; };
receive_connectors = (
  { name = "A"; bindings = [ "127.0.0.1:2525" ] }
  garbage here
);
""", 4, None),
    "bad_permission_group": ("""server = { hostname = "relay.test.example"; };
receive_connectors = (
  { name = "A"; bindings = [ "127.0.0.1:2525" ];
    permission_groups = [ "anonymous", "everyone" ]; }
);
""", 4, None),
    "bad_size": ("""server = { hostname = "relay.test.example"; };
receive_connectors = (
  { name = "A"; bindings = [ "127.0.0.1:2525" ];

    max_message_size = "36 parsecs"; }
);
""", 5, 'max_message_size: invalid value "36 parsecs"'),
}


@pytest.mark.parametrize("mode", [[], ["--check"]], ids=["run", "check"])
@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config(tmp_path, case, mode):
    text, line, message = BAD_CONFIGS[case]
    path = write(tmp_path, "bad.conf", text)
    r = run_postern("-c", path, *mode)
    assert r.returncode == 1
    assert r.stdout == b""
    err = r.stderr.decode()
    if message is not None:
        assert err == "%s:%d: %s\n" % (path, line, message)
    else:
        assert re.fullmatch(r"%s:%d: [^\n]+\n" % (re.escape(path), line), err), err


def test_bad_range_on_its_own_line(tmp_path):
    """A bad element of a multi-line list is reported at its own line."""
    path = write(tmp_path, "bad.conf", """server = { hostname = "relay.test.example"; };
receive_connectors = (
  { name = "A"; bindings = [ "127.0.0.1:2525" ];
    remote_ip_ranges = [
      "10.0.0.1",
      "10.0.0.300"
    ];
  }
);
""")
    r = run_postern("-c", path, "--check")
    assert r.returncode == 1
    assert r.stderr.decode() == ('%s:6: remote_ip_ranges: "10.0.0.300" is not an '
                                 'address, a-b range or CIDR\n' % path)


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nope.conf")
    r = run_postern("-c", path)
    assert r.returncode == 1
    assert r.stderr.decode().startswith(path + ":")


def listener_closed(port):
    return port_refuses(port)


def test_sigterm_idle_session(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    fresh = smtp_raw(p.port, "127.0.0.10")   # not even greeted with EHLO
    t0 = time.monotonic()
    p.signal()
    assert c.line(timeout=10) == R_SHUTTING_DOWN
    c.expect_closed()
    assert fresh.line(timeout=10) == R_SHUTTING_DOWN
    fresh.expect_closed()
    assert p.wait_exit() == 0
    assert time.monotonic() - t0 < 5 * SLOW   # idle sessions do not hold it up
    p.stop()


def test_sigterm_during_transaction(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    p.signal()
    # Stopping: no new connections...
    wait_until(lambda: listener_closed(p.port), 5, what="the listener to close")
    assert p.proc.poll() is None
    # ... but the open transaction completes.
    assert c.cmd("DATA") == R_START_DATA
    c.send(b"Subject: last one\r\n\r\nbody\r\n.\r\n")
    r = c.reply()
    m = re.fullmatch(r"250 2\.6\.0 <(\w+)> Queued mail for delivery", r)
    assert m, r
    # The session is idle now: a new transaction is refused.
    assert c.cmd("MAIL FROM:<a@b.example>") == R_SHUTTING_DOWN
    c.expect_closed()
    assert p.wait_exit() == 0
    p.stop()
    assert p.messages() == [m.group(1)]
    data = p.read_message(m.group(1))
    assert data.endswith(b"\r\nSubject: last one\r\n\r\nbody\r\n")


def test_sigterm_quit_after_transaction(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.10")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    c.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@other.example>\r\nDATA\r\n")
    assert c.replies(3) == [R_MAIL_OK, R_RCPT_OK, R_START_DATA]
    c.send(b"Subject: s\r\n\r\npart one\r\n")
    p.signal()
    wait_until(lambda: listener_closed(p.port), 5, what="the listener to close")
    c.send(b"part two\r\n.\r\nQUIT\r\n")
    r = c.replies(2)
    assert r[0].startswith("250 2.6.0 <"), r
    assert r[1] == R_QUIT
    c.expect_closed()
    assert p.wait_exit() == 0
    p.stop()
    assert len(p.messages()) == 1


def test_inactivity_timeout(postern, smtp_raw):
    p = postern("""receive_connectors = (
  { name = "Impatient"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous" ];
    connection_inactivity_timeout = "1s"; }
);
""")
    c = smtp_raw(p.port, "127.0.0.50")
    t0 = time.monotonic()
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    # Activity resets the clock.
    for _ in range(3):
        time.sleep(0.5)
        assert c.cmd("NOOP") == "250 2.0.0 OK"
    t1 = time.monotonic()
    assert c.line(timeout=5) == R_TIMEOUT
    idle = time.monotonic() - t1
    assert 0.9 <= idle <= 3 * SLOW, idle
    assert time.monotonic() - t0 >= 2.4
    c.expect_closed(timeout=5)
    # Mid-transaction idling times out the same way and stores nothing.
    c = smtp_raw(p.port, "127.0.0.50")
    c.send("EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n")
    assert c.reply()[0].startswith("250-")
    assert c.replies(3) == [R_MAIL_OK, R_RCPT_OK, R_START_DATA]
    c.send(b"Subject: s\r\n\r\nhalf a body")
    assert c.line(timeout=5) == R_TIMEOUT
    c.expect_closed(timeout=5)
    assert p.messages() == []
