"""Receive connector selection (most specific range wins, IPv4 and IPv6,
dual-stack), --check's resolved table, and hot reload with SIGHUP."""
import signal
import socket
import subprocess

import pytest

from conftest import (BINARY, free_port, free_wildcard_port, port_refuses, R_MAIL_OK, R_QUIT, R_RCPT_OK, R_UNABLE_TO_RELAY,
                      RawClient, wait_until)

# Four connectors nest on one binding; each announces its own SIZE, so EHLO
# tells which one a client got.
NESTED = """receive_connectors = (
  { name = "Everyone"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "0.0.0.0/0" ]; permission_groups = [ "anonymous" ];
    max_message_size = "1000"; },
  { name = "Loopback"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous" ];
    max_message_size = "2000"; },
  { name = "Range"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.20-127.0.0.60" ]; permission_groups = [ "anonymous_relay" ];
    max_message_size = "3000"; },
  { name = "Single"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.42" ]; permission_groups = [ "externally_secured" ];
    max_message_size = "4000"; }
);
"""


def ehlo_size(c):
    lines = c.cmd("EHLO client.example")
    sizes = [l for l in lines if l.startswith("250-SIZE")]
    assert len(sizes) == 1, lines
    return sizes[0]


@pytest.mark.parametrize("source,want", [
    ("127.0.0.42", "250-SIZE"),        # externally secured: no size limit
    ("127.0.0.41", "250-SIZE 3000"),
    ("127.0.0.20", "250-SIZE 3000"),
    ("127.0.0.60", "250-SIZE 3000"),
    ("127.0.0.61", "250-SIZE 2000"),
    ("127.0.0.19", "250-SIZE 2000"),
    ("127.0.0.1", "250-SIZE 2000"),
])
def test_most_specific_range_wins(postern, smtp_raw, source, want):
    p = postern(NESTED)
    c = smtp_raw(p.port, source)
    assert ehlo_size(c) == want
    assert c.cmd("QUIT") == R_QUIT


def test_ipv4_client_on_dual_stack_listener_matches_ipv4_ranges(postern, smtp_raw):
    # An IPv6 socket bound to the IPv4-mapped loopback address takes IPv4
    # clients; they must be matched against the IPv4 ranges.
    p = postern("""receive_connectors = (
  { name = "V6 Frontend"; bindings = [ "[::ffff:127.0.0.1]:{port}" ];
    remote_ip_ranges = [ "::/0" ]; permission_groups = [ "anonymous" ]; max_message_size = "1000"; },
  { name = "V4 Relay"; bindings = [ "[::ffff:127.0.0.1]:{port}" ];
    remote_ip_ranges = [ "127.0.0.10" ]; permission_groups = [ "anonymous_relay" ]; max_message_size = "2000"; }
);
""")
    c = smtp_raw(p.port, "127.0.0.10")
    assert ehlo_size(c) == "250-SIZE 2000"
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@other.example>") == R_RCPT_OK
    # 127.0.0.50 has no IPv4 range here and "::/0" is IPv6 only: refused.
    s = socket.create_connection(("127.0.0.1", p.port), timeout=10,
                                 source_address=("127.0.0.50", 0))
    data = s.recv(1000)
    assert data.startswith(b"554 5.7.1 ")
    s.close()
    assert c.cmd("QUIT") == R_QUIT


def test_ipv4_client_on_wildcard_dual_stack_listener(postern, smtp_raw):
    # "[::]:port" takes IPv4 clients as ::ffff:a.b.c.d; they are matched as
    # IPv4. (Bound to every address, but this test only connects via
    # loopback.)
    p = postern(ports=[free_wildcard_port()], connectors="""receive_connectors = (
  { name = "All"; bindings = [ "[::]:{port}" ];
    remote_ip_ranges = [ "0.0.0.0/0", "::/0" ]; permission_groups = [ "anonymous" ]; max_message_size = "1000"; },
  { name = "Relay"; bindings = [ "[::]:{port}" ];
    remote_ip_ranges = [ "127.0.0.20-127.0.0.29" ]; permission_groups = [ "anonymous_relay" ]; max_message_size = "2000"; }
);
""")
    c = smtp_raw(p.port, "127.0.0.21")
    assert ehlo_size(c) == "250-SIZE 2000"
    c2 = smtp_raw(p.port, "127.0.0.30")
    lines = c2.cmd("EHLO client.example")
    assert lines[0] == "250-relay.test.example Hello [127.0.0.30]"
    assert "250-SIZE 1000" in lines
    assert c.cmd("QUIT") == R_QUIT and c2.cmd("QUIT") == R_QUIT


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_client(postern):
    p = postern("""receive_connectors = (
  { name = "V6 All"; bindings = [ "[::1]:{port}", "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "::/0", "0.0.0.0/0" ]; permission_groups = [ "anonymous" ]; max_message_size = "1000"; },
  { name = "V6 Host"; bindings = [ "[::1]:{port}" ];
    remote_ip_ranges = [ "::1" ]; permission_groups = [ "anonymous_relay" ]; max_message_size = "2000"; }
);
""")
    s = socket.create_connection(("::1", p.port), timeout=10)
    f = s.makefile("rwb")
    assert f.readline().startswith(b"220 ")
    f.write(b"EHLO client.example\r\n")
    f.flush()
    lines = []
    while True:
        ln = f.readline().decode().rstrip("\r\n")
        lines.append(ln)
        if ln[3] == " ":
            break
    assert lines[0] == "250-relay.test.example Hello [::1]"
    assert "250-SIZE 2000" in lines
    f.write(b"QUIT\r\n")
    f.flush()
    assert f.readline() == b"221 2.0.0 Service closing transmission channel\r\n"
    s.close()


def test_check_prints_resolved_table(tmp_path):
    conf = tmp_path / "c.conf"
    conf.write_text('server = { hostname = "relay.test.example"; spool_dir = "%s"; };\n'
                    % (tmp_path / "spool") + NESTED.replace("{port}", "2525"))
    r = subprocess.run([BINARY, "-c", str(conf), "--check"], capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "binding 127.0.0.1:2525:\n" in out
    assert '  connector "Range" permissions=anonymous_relay\n' in out
    assert ("    range 127.0.0.20-127.0.0.60 -> 127.0.0.20/30 127.0.0.24/29 "
            "127.0.0.32/28 127.0.0.48/29 127.0.0.56/30 127.0.0.60/32\n") in out
    assert '  connector "Single" permissions=externally_secured\n' in out
    assert "    range 127.0.0.42 -> 127.0.0.42/32\n" in out


RELOADABLE = """receive_connectors = (
  { name = "Default Frontend"; bindings = [ BINDINGS ];
    remote_ip_ranges = [ "0.0.0.0/0" ]; permission_groups = [ "anonymous" ]; },
  { name = "Anonymous Relay"; bindings = [ "127.0.0.1:{port0}" ];
    remote_ip_ranges = [ RELAYS ]; permission_groups = [ "anonymous_relay" ]; }
);
"""


def reload(p, connectors, nth):
    text = p.config.read_text()
    head = text[:text.index("receive_connectors")]
    tail = text[text.index("send_connectors"):]
    p.config.write_text(head + connectors + tail)
    p.signal(signal.SIGHUP)
    wait_until(lambda: p.stderr().count("event=reload") >= nth, 10,
               what="reload number %d to be logged" % nth)


def relay_attempt(port, source):
    c = RawClient(port, source)
    try:
        c.cmd("EHLO client.example")
        assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
        return c.cmd("RCPT TO:<x@other.example>")
    finally:
        c.close()


def test_reload_adds_relay_host_without_dropping_sessions(postern):
    text = RELOADABLE.replace("BINDINGS", '"127.0.0.1:{port0}"').replace(
        "RELAYS", '"127.0.0.10"')
    p = postern(text)
    port0, port1 = p.port, free_port()
    # A session from .30 is open (Default Frontend) while the reload happens.
    old = RawClient(port0, "127.0.0.30")
    old.cmd("EHLO client.example")
    assert old.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert old.cmd("RCPT TO:<x@other.example>") == R_UNABLE_TO_RELAY

    new_text = RELOADABLE.replace(
        "BINDINGS", '"127.0.0.1:%d", "127.0.0.1:%d"' % (port0, port1)).replace(
        "RELAYS", '"127.0.0.10", "127.0.0.30"').replace("{port0}", str(port0))
    reload(p, new_text, 1)
    assert "event=reload status=ok connectors=2 bindings=2" in p.stderr()

    # The open session keeps its connector and its transaction...
    assert old.cmd("RCPT TO:<y@other.example>") == R_UNABLE_TO_RELAY
    assert old.cmd("RCPT TO:<y@corp.example>") == R_RCPT_OK
    # ...the next connection from that host may relay...
    assert relay_attempt(port0, "127.0.0.30") == R_RCPT_OK
    assert relay_attempt(port0, "127.0.0.10") == R_RCPT_OK
    # ...and the new binding serves the frontend.
    assert relay_attempt(port1, "127.0.0.30") == R_UNABLE_TO_RELAY
    assert old.cmd("QUIT") == R_QUIT
    old.close()


def test_bad_reload_keeps_running_configuration(postern):
    text = RELOADABLE.replace("BINDINGS", '"127.0.0.1:{port0}"').replace(
        "RELAYS", '"127.0.0.10"')
    p = postern(text)
    bad = RELOADABLE.replace("BINDINGS", '"127.0.0.1:%d"' % p.port).replace(
        "RELAYS", '"127.0.0.10", "127.0.0.300"').replace("{port0}", str(p.port))
    reload(p, bad, 1)
    lines = p.config.read_text().split("\n")
    line = 1 + next(i for i, l in enumerate(lines) if "127.0.0.300" in l)
    log = p.stderr()
    assert "event=reload status=failed" in log
    assert ('error="%s:%d: remote_ip_ranges: \\"127.0.0.300\\" is not an address, '
            'a-b range or CIDR"' % (p.config, line)) in log
    assert relay_attempt(p.port, "127.0.0.10") == R_RCPT_OK
    assert relay_attempt(p.port, "127.0.0.30") == R_UNABLE_TO_RELAY


def test_reload_removes_binding(postern):
    text = RELOADABLE.replace("BINDINGS", '"127.0.0.1:{port0}", "127.0.0.1:{port1}"').replace(
        "RELAYS", '"127.0.0.10"')
    p = postern(text, nports=2)
    port0, port1 = p.ports
    assert relay_attempt(port1, "127.0.0.10") == R_UNABLE_TO_RELAY
    only0 = RELOADABLE.replace("BINDINGS", '"127.0.0.1:%d"' % port0).replace(
        "RELAYS", '"127.0.0.10"').replace("{port0}", str(port0))
    reload(p, only0, 1)

    wait_until(lambda: port_refuses(port1), 10, what="port %d to close after reload" % port1)
    assert relay_attempt(port0, "127.0.0.10") == R_RCPT_OK
