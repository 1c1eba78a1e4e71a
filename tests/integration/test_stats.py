"""The stats socket and posternctl: match, show info counters, reload."""
import os
import smtplib
import socket
import stat
import subprocess
import urllib.request

from conftest import (BUILD, R_RCPT_OK, SLOW, TWO_CONNECTORS, check_config, free_port,
                      wait_until)

CTL = os.path.join(BUILD, "posternctl")
POSTERNCTL = CTL


def ctl(sock, *args):
    r = subprocess.run([CTL, "-s", str(sock)] + list(args), capture_output=True,
                       timeout=30)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def start(postern, tmp_path, connectors=TWO_CONNECTORS):
    sock = tmp_path / "run" / "stats.sock"
    p = postern(connectors, server_extra='  stats_socket = "%s";\n' % sock)
    wait_until(lambda: sock.exists(), 10, what="stats socket")
    return p, sock


def info(sock):
    rc, out, err = ctl(sock, "show", "info")
    assert rc == 0, err
    return dict(line.split(": ", 1) for line in out.strip().split("\n"))


def test_socket_mode_and_match(postern, tmp_path):
    p, sock = start(postern, tmp_path)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o660
    b = "127.0.0.1:%d" % p.port
    cases = {
        "127.0.0.10": 'binding %s: connector "Anonymous Relay" range 127.0.0.10 '
                      'permissions=anonymous_relay\n' % b,
        "127.0.0.25:%d" % p.port: 'binding %s: connector "Anonymous Relay" range '
                                  '127.0.0.20-127.0.0.29 permissions=anonymous_relay\n' % b,
        "127.0.0.30": 'binding %s: connector "Default Frontend" range '
                      '0.0.0.0-255.255.255.255 permissions=anonymous\n' % b,
        "[::1]": "binding %s: no connector: refused at connect with 554 5.7.1\n" % b,
    }
    for addr, want in cases.items():
        assert ctl(sock, "match", addr) == (0, want, "")
    rc, out, _ = ctl(sock, "match", "127.0.0.10:1")
    assert (rc, out) == (1, "error: no binding on port 1\n")
    rc, out, _ = ctl(sock, "match", "not-an-ip")
    assert rc == 1 and out.startswith("error: bad address")
    rc, out, _ = ctl(sock, "show", "nonsense")
    assert rc == 1 and out.startswith('error: unknown command "show nonsense"; commands:')


def test_info_counts_traffic(postern, tmp_path):
    p, sock = start(postern, tmp_path)
    # The fixture's readiness probe is the one connection so far.
    wait_until(lambda: info(sock)["connections_total"] == "1", 10, what="the probe")
    before = info(sock)
    assert before["messages_received"] == "0"
    assert before["connectors"] == "2"
    for i in range(3):
        s = smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.10", 0))
        s.sendmail("a@b.example", ["x@other.example"], b"Subject: %d\r\n\r\nbody\r\n" % i)
        s.quit()
    s = smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.50", 0))
    s.ehlo("c.example")
    s.mail("a@b.example")
    assert s.rcpt("x@corp.example") == (250, b"2.1.5 Recipient OK")
    s.rset()
    wait_until(lambda: info(sock)["connections_total"] == "5", 10, what="5 connections")
    now = info(sock)
    assert now["messages_received"] == "3"
    assert now["messages_rejected"] == "0"
    assert now["connections_active"] == "1"
    s.quit()
    wait_until(lambda: info(sock)["connections_active"] == "0", 10, what="no connections")


def test_reload_command(postern, tmp_path):
    p, sock = start(postern, tmp_path)
    rc, out, _ = ctl(sock, "match", "127.0.0.30")
    assert "Default Frontend" in out
    p.config.write_text(p.config.read_text().replace(
        '"127.0.0.10", "127.0.0.20-127.0.0.29"', '"127.0.0.10", "127.0.0.30"'))
    assert ctl(sock, "reload") == (0, "reloaded: 2 connectors, 1 bindings\n", "")
    rc, out, _ = ctl(sock, "match", "127.0.0.30")
    assert 'connector "Anonymous Relay" range 127.0.0.30 ' in out
    s = smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.30", 0))
    s.ehlo("c.example")
    s.mail("a@b.example")
    assert s.rcpt("x@other.example") == (250, R_RCPT_OK[4:].encode())
    s.quit()
    p.config.write_text(p.config.read_text() + "bogus = 1;\n")
    rc, out, _ = ctl(sock, "reload")
    assert rc == 1
    assert out.startswith("error: %s:" % p.config)
    assert out.endswith('unknown setting "bogus" (keeping the running configuration)\n')


def test_ctl_without_server(tmp_path):
    rc, out, err = ctl(tmp_path / "none.sock", "show", "info")
    assert rc == 1 and out == ""
    assert err.startswith("posternctl: cannot connect to %s" % (tmp_path / "none.sock"))


def test_match_json(postern, tmp_path):
    p, sock = start(postern, tmp_path)
    import json
    rc, out, _ = ctl(sock, "--json", "match", "127.0.0.25")
    assert rc == 0
    assert json.loads(out) == {"matches": [{
        "binding": "127.0.0.1:%d" % p.port, "connector": "Anonymous Relay",
        "range": "127.0.0.20-127.0.0.29", "permission_groups": "anonymous_relay",
        "may_submit": True}]}
    rc, out, _ = ctl(sock, "match", "::1", "json")
    assert json.loads(out) == {"matches": [{
        "binding": "127.0.0.1:%d" % p.port, "connector": None, "reply": "554 5.7.1"}]}


def test_log_file_and_reopen(postern, tmp_path):
    import signal
    log = tmp_path / "postern.log"
    p = postern(server_extra='  log_file = "%s";\n' % log)

    def send(n):
        s = smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.10", 0))
        s.sendmail("a@b.example", ["x@other.example"], b"Subject: %d\r\n\r\nx\r\n" % n)
        s.quit()
    send(1)
    wait_until(lambda: log.exists() and "event=receive" in log.read_text(), 10,
               what="receive line in the log file")
    assert "event=start " in log.read_text()
    assert "event=receive" not in p.stderr()
    log.rename(tmp_path / "postern.log.1")       # what logrotate does
    p.signal(signal.SIGHUP)
    wait_until(lambda: log.exists(), 10, what="log file reopened")
    send(2)
    wait_until(lambda: "event=receive" in log.read_text(), 10,
               what="receive line in the new log file")
    assert (tmp_path / "postern.log.1").read_text().count("event=receive") == 1


def test_show_connectors_text_and_json(postern, tmp_path):
    import json
    p, sock = start(postern, tmp_path)
    rc, text, _ = ctl(sock, "show", "connectors")
    assert rc == 0
    assert "    range 127.0.0.20-127.0.0.29 -> 127.0.0.20/30 127.0.0.24/30 127.0.0.28/31\n" in text
    assert "    max_recipients_per_message                     5\n" in text
    rc, out, _ = ctl(sock, "--json", "show", "connectors")
    assert rc == 0
    doc = json.loads(out)
    [binding] = doc["bindings"]
    assert binding["binding"] == "127.0.0.1:%d" % p.port
    relay = {c["name"]: c for c in binding["connectors"]}["Anonymous Relay"]
    assert relay["permission_groups"] == "anonymous_relay"
    assert relay["ranges"] == [
        {"range": "127.0.0.10", "prefixes": ["127.0.0.10/32"]},
        {"range": "127.0.0.20-127.0.0.29",
         "prefixes": ["127.0.0.20/30", "127.0.0.24/30", "127.0.0.28/31"]}]
    assert relay["settings"]["max_message_size"] == "65536"
    assert relay["settings"]["message_rate_limit"] == "unlimited"
    assert relay["settings"]["connection_timeout"] == "600000ms"


# ---- several clients, deadlines, metrics_allow ------------------------------

def test_stuck_clients_do_not_block_others(postern, tmp_path):
    """One stats client that never sends its command and one HTTP client
    that sends half a request: both hold a slot, neither holds up anyone
    else, and both are closed after the 5 s deadline."""
    import time
    sock, mport = str(tmp_path / "stats.sock"), free_port()
    p = postern(server_extra=('  stats_socket = "%s";\n  metrics_listen = "127.0.0.1:%d";\n'
                              % (sock, mport)))
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.connect(sock)
    half = socket.create_connection(("127.0.0.1", mport))
    half.sendall(b"GET /met")
    t0 = time.monotonic()
    for _ in range(5):
        r = subprocess.run([POSTERNCTL, "-s", sock, "show", "info"], capture_output=True,
                           timeout=10)
        assert r.returncode == 0 and b"uptime_s:" in r.stdout
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport, timeout=5) as h:
            assert h.status == 200 and b"postern_ready 1" in h.read()
    assert time.monotonic() - t0 < 3 * SLOW  # none waited for the stuck ones
    for s in (stuck, half):
        s.settimeout(10 * SLOW)
        assert s.recv(100) == b""  # closed by the deadline, with nothing said
    assert time.monotonic() - t0 >= 4.5
    stuck.close()
    half.close()
    # Many at once: every one answered.
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(24) as ex:
        outs = list(ex.map(lambda i: subprocess.run(
            [POSTERNCTL, "-s", sock, "match", "127.0.0.%d" % (i + 1)], capture_output=True,
            timeout=20).returncode, range(48)))
    assert outs == [0] * 48
    p.stop()


def test_metrics_allow(postern, tmp_path):
    import urllib.error
    mport = free_port()

    def get(path, source):
        opener = urllib.request.build_opener(SourceHandler(source))
        try:
            with opener.open("http://127.0.0.1:%d%s" % (mport, path), timeout=5) as h:
                return h.status, h.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
    p = postern(server_extra=('  metrics_listen = "127.0.0.1:%d";\n'
                              '  metrics_allow = [ "127.0.0.5", "127.0.1.0/24" ];\n' % mport))
    assert get("/metrics", "127.0.0.5")[0] == 200
    assert get("/metrics", "127.0.1.77")[0] == 200
    assert get("/metrics", "127.0.0.1") == (
        403, "forbidden: 127.0.0.1 is not in server.metrics_allow\n")
    # Health answers anyone: balancers and kubelets are not scrapers.
    assert get("/healthz", "127.0.0.1") == (200, "ok\n")
    assert get("/readyz", "127.0.0.9") == (200, "ready\n")
    r = check_config(p)
    assert b"metrics_allow: 127.0.0.5\nmetrics_allow: 127.0.1.0/24\n" in r.stdout
    p.stop()
    # Without metrics_allow: the node itself only (loopback).
    mport2 = free_port()
    q = postern(server_extra='  metrics_listen = "127.0.0.1:%d";\n' % mport2)
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport2, timeout=5) as h:
        assert h.status == 200
    q.stop()


def test_metrics_allow_errors(tmp_path):
    from conftest import Postern, assert_config_error
    pt = Postern(tmp_path, TWO_CONNECTORS,
                 server_extra='  metrics_allow = [ "10.0.0.300" ];\n')
    assert_config_error(pt, 'metrics_allow: "10.0.0.300" is not an address, a-b range or CIDR')


class SourceHandler(urllib.request.HTTPHandler):
    """urllib from a chosen source address."""
    def __init__(self, source):
        super().__init__()
        self.source = source

    def http_open(self, req):
        import http.client
        return self.do_open(lambda host, **kw: http.client.HTTPConnection(
            host, source_address=(self.source, 0), **kw), req)
