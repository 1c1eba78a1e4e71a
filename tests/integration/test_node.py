"""One node of the relay tier (DESIGN B.6, B.10): running as server.user,
readiness to systemd, /healthz and /readyz, posternctl drain, and the
configuration checks that go with them. The multi-node tier behind HAProxy
is test_tier.py."""
import os
import pathlib
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import pytest

from conftest import (BINARY, BUILD, SLOW, R_MAIL_OK, R_RCPT_OK, R_SHUTTING_DOWN, R_START_DATA,
                      assert_config_error, check_config, free_port, port_refuses, wait_until)
from sink import Sink

POSTERNCTL = os.path.join(BUILD, "posternctl")

RELAY = """receive_connectors = (
  { name = "Relay"; bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "127.0.0.0/8" ]; permission_groups = [ "anonymous_relay" ]; }
);
"""


def node_extra(tmp, mport, more=""):
    return ('  stats_socket = "%s/stats.sock";\n  metrics_listen = "127.0.0.1:%d";\n%s'
            % (tmp, mport, more))


def http(port, path):
    """(status, body) of GET path on the metrics listener."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path),
                                    timeout=5 * SLOW) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def ctl(sock, *cmd):
    r = subprocess.run([POSTERNCTL, "-s", str(sock)] + list(cmd), capture_output=True,
                       timeout=20 * SLOW)
    return r.returncode, r.stdout.decode()


def send(port, subject, source="127.0.0.10", rcpt="x@other.example"):
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0),
                      timeout=10 * SLOW) as s:
        s.sendmail("a@b.example", [rcpt], "Subject: %s\r\n\r\nbody\r\n" % subject)


def smart(port):
    return ('send_connectors = ( { name = "Smart"; address_spaces = [ "*" ]; '
            'smart_hosts = [ "127.0.0.1:%d" ]; } );\nqueue = { retry_interval = "1h"; };\n'
            % port)


# ---- health endpoints -----------------------------------------------------

def test_healthz_readyz_and_their_gauges(postern, tmp_path):
    mport = free_port()
    p = postern(RELAY, server_extra=node_extra(tmp_path, mport))
    assert http(mport, "/healthz") == (200, "ok\n")
    assert http(mport, "/readyz") == (200, "ready\n")
    assert http(mport, "/readyz?verbose=1") == (200, "ready\n")
    assert http(mport, "/ready")[0] == 404
    status, body = http(mport, "/metrics")
    assert status == 200
    assert re.search(r"^postern_ready 1$", body, re.M), body
    free = int(re.search(r"^postern_spool_free_bytes (\d+)$", body, re.M).group(1))
    st = os.statvfs(p.spool)
    want = st.f_bavail * st.f_frsize
    assert abs(free - want) <= max(want // 20, 64 << 20), (free, want)
    assert re.search(r'^postern_messages_rejected_total\{connector="",reason="proxy"\} 0$',
                     body, re.M), body
    p.stop()


# ---- drain ----------------------------------------------------------------

def test_drain_finishes_sessions_delivers_the_queue_and_exits(postern, tmp_path):
    mport = free_port()
    sink = Sink(rcpt_reply=lambda addr, line: "451 4.3.0 not yet" if "later" in addr else None)
    try:
        p = postern(RELAY + smart(sink.port), server_extra=node_extra(tmp_path, mport))
        # A deferred message: the drain makes it due now and tries it again.
        send(p.port, "deferred once", rcpt="later@other.example")
        wait_until(lambda: "event=defer " in p.stderr(), 10, what="the first attempt")
        # A session in the middle of a transaction when the drain begins.
        c = socket.create_connection(("127.0.0.1", p.port), timeout=10 * SLOW)
        f = c.makefile("rb")
        assert f.readline().startswith(b"220 ")
        c.sendall(b"EHLO c.example\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        c.sendall(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<y@other.example>\r\n")
        assert f.readline().decode().rstrip() == R_MAIL_OK
        assert f.readline().decode().rstrip() == R_RCPT_OK

        sink.rcpt_reply = None  # the next hop is back
        rc, out = ctl(tmp_path / "stats.sock", "drain")
        assert rc == 0
        assert re.fullmatch(r"draining: listeners closed, 1 message queued; postern exits once "
                            r"the queue is empty or in 600s \(server\.drain_timeout\)\n", out), out
        assert http(mport, "/readyz") == (503, "not ready: draining\n")
        wait_until(lambda: port_refuses(p.port), 5, what="the listener to close")
        assert p.proc.poll() is None
        rc, out = ctl(tmp_path / "stats.sock", "drain")
        assert out.startswith("draining already: "), out
        # The open transaction completes; the next one is refused.
        c.sendall(b"DATA\r\n")
        assert f.readline().decode().rstrip() == R_START_DATA
        c.sendall(b"Subject: during the drain\r\n\r\nbody\r\n.\r\n")
        assert re.fullmatch(r"250 2\.6\.0 <\w+> Queued mail for delivery",
                            f.readline().decode().rstrip())
        c.sendall(b"MAIL FROM:<a@b.example>\r\n")
        assert f.readline().decode().rstrip() == R_SHUTTING_DOWN
        c.close()
        # Both messages are delivered, then postern leaves by itself.
        assert p.wait_exit(20) == 0
        subjects = sorted(re.search(rb"Subject: ([^\r]*)", m["data"]).group(1).decode()
                          for m in sink.messages)
        assert subjects == ["deferred once", "during the drain"], subjects
        err = p.stderr()
        assert "event=drain status=started queued=1 timeout_ms=600000" in err, err
        assert 'event=drain status=done note="queue empty"' in err, err
        p.stop()
        assert p.messages() == []
    finally:
        sink.close()


def test_drain_timeout_leaves_the_rest_in_the_spool(postern, tmp_path):
    mport = free_port()
    sink = Sink(rcpt_reply=lambda addr, line: "451 4.3.0 still broken")
    try:
        extra = node_extra(tmp_path, mport, '  drain_timeout = "1s";\n')
        p = postern(RELAY + smart(sink.port), server_extra=extra)
        send(p.port, "stays")
        wait_until(lambda: "event=defer " in p.stderr(), 10, what="the first attempt")
        t0 = time.monotonic()
        rc, out = ctl(tmp_path / "stats.sock", "drain")
        assert rc == 0 and "in 1s (server.drain_timeout)" in out, out
        assert p.wait_exit(15) == 0
        took = time.monotonic() - t0
        assert 0.9 <= took < 8 * SLOW, took
        err = p.stderr()
        assert re.search(r'event=drain status=timeout left=1 note="left in the spool', err), err
        p.stop()
        assert len(p.messages()) == 1  # kept for the next start
    finally:
        sink.close()


def test_sigterm_during_drain_stops_at_once(postern, tmp_path):
    mport = free_port()
    sink = Sink(rcpt_reply=lambda addr, line: "451 4.3.0 broken")
    try:
        p = postern(RELAY + smart(sink.port), server_extra=node_extra(tmp_path, mport))
        send(p.port, "stays")
        wait_until(lambda: "event=defer " in p.stderr(), 10, what="the first attempt")
        assert ctl(tmp_path / "stats.sock", "drain")[0] == 0
        time.sleep(0.3)
        assert p.proc.poll() is None  # 10 minutes of drain ahead
        # A reload is refused while draining.
        rc, out = ctl(tmp_path / "stats.sock", "reload")
        assert (rc, out) == (1, "error: draining: no reload\n"), (rc, out)
        p.signal()
        assert p.wait_exit(10) == 0
        assert 'event=stop signal=TERM grace_ms=10000 note="during a drain"' in p.stderr()
        p.stop()
        assert len(p.messages()) == 1
    finally:
        sink.close()


# ---- readiness to the service manager (sd_notify) -------------------------

def test_sd_notify_ready_reloading_stopping(postern, tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(path)
    nsock.settimeout(10 * SLOW)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    try:
        p = postern(RELAY)
        assert nsock.recv(4096) == b"READY=1\nSTATUS=accepting"
        # READY comes after the listeners and the spool: the port answers.
        with smtplib.SMTP("127.0.0.1", p.port, timeout=10 * SLOW) as s:
            assert s.noop()[0] == 250
        p.signal(signal.SIGHUP)
        assert nsock.recv(4096) == b"RELOADING=1"
        assert nsock.recv(4096) == b"READY=1\nSTATUS=accepting"
        p.stop()
        assert nsock.recv(4096) == b"STOPPING=1"
    finally:
        nsock.close()


# ---- configuration --------------------------------------------------------

def make(tmp_path, extra, connectors=RELAY):
    from conftest import Postern
    return Postern(tmp_path, connectors, server_extra=extra)


def test_check_names_proxy_bindings_and_trusted_proxies(tmp_path):
    pt = make(tmp_path, '  proxy_protocol = { bindings = [ "127.0.0.1:{port}" ]; '
                        'trusted_proxies = [ "127.0.0.2", "10.0.0.0/8" ]; };\n'
                        '  drain_timeout = "90s";\n')
    # {port} in server_extra is not filled in: write the real one.
    pt.config.write_text(pt.config.read_text().replace("{port}", str(pt.port)))
    r = check_config(pt)
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "proxy_protocol: trusted proxy 127.0.0.2\nproxy_protocol: trusted proxy 10.0.0.0/8\n" in out
    assert "binding 127.0.0.1:%d: PROXY protocol required from trusted proxies\n" % pt.port in out


@pytest.mark.parametrize("extra,word", [
    ('  proxy_protocol = { bindings = [ "127.0.0.1:1" ]; trusted_proxies = [ "127.0.0.2" ]; };\n',
     'proxy_protocol: bindings: "127.0.0.1:1" is not a binding of any receive connector'),
    ('  proxy_protocol = { bindings = [ "127.0.0.1:PORT" ]; trusted_proxies = [ ]; };\n',
     "proxy_protocol: trusted_proxies: at least one address or range"),
    ('  proxy_protocol = { bindings = [ "127.0.0.1:PORT" ]; trusted_proxies = [ "10.0.0.300" ]; };\n',
     'proxy_protocol: trusted_proxies: "10.0.0.300" is not an address'),
    ('  proxy_protocol = { bindings = [ "127.0.0.1:PORT" ]; };\n',
     'missing setting "trusted_proxies"'),
    ('  proxy_protocol = { bindings = [ "127.0.0.1:PORT" ]; trusted_proxies = [ "127.0.0.2" ]; '
     'trusted = 1; };\n', "trusted"),
    ('  proxy_protocol = "yes";\n', "proxy_protocol: expected {"),
    ('  user = "no-such-user-postern";\n', 'user: no such user "no-such-user-postern"'),
    ('  drain_timeout = "soon";\n', 'drain_timeout: invalid duration "soon"'),
])
def test_tier_config_errors(tmp_path, extra, word):
    pt = make(tmp_path, extra)
    pt.config.write_text(pt.config.read_text().replace("PORT", str(pt.port)))
    assert_config_error(pt, word)


def test_world_writable_config_is_refused(tmp_path):
    pt = make(tmp_path, "")
    os.chmod(pt.config, 0o666)
    r = check_config(pt)
    assert r.returncode == 1
    assert r.stderr.decode() == ("%s:0: writable by others (mode 0666): refusing it; chmod o-w %s\n"
                                 % (pt.config, pt.config))
    r = subprocess.run([BINARY, "-c", str(pt.config)], capture_output=True, timeout=20 * SLOW)
    assert r.returncode == 1 and b"writable by others" in r.stderr
    os.chmod(pt.config, 0o664)  # group-writable is the operator's business
    assert check_config(pt).returncode == 0


# ---- server.user ----------------------------------------------------------

def proc_status(pid, tid=None):
    """/proc status fields of a process, or of one of its threads."""
    out = {}
    path = "/proc/%d/status" % pid if tid is None else "/proc/%d/task/%s/status" % (pid, tid)
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs a start as root")
def test_runs_as_server_user_with_only_net_bind_service():
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    # pytest's tmp_path lies under a 0700 directory: the user could not
    # reach its own spool there.
    base = pathlib.Path(tempfile.mkdtemp(prefix="postern-user-", dir="/tmp"))
    os.chmod(base, 0o755)
    from conftest import Postern
    mport = free_port()
    drop = base / "drop"
    drop.mkdir()
    os.chown(drop, uid, gid)
    conns = RELAY + ('send_connectors = ( { name = "Drop"; address_spaces = [ "*" ]; '
                     'drop_directory = "%s"; } );\n' % drop)
    p = Postern(base, conns, server_extra=node_extra(base, mport, '  user = "nobody";\n'))
    try:
        # Left from an earlier run as root: given to the user at start.
        p.spool.mkdir()
        (p.spool / "stale-file").write_bytes(b"")
        p.start()
        st = proc_status(p.pid)
        assert st["Uid"].split() == [str(uid)] * 4, st["Uid"]
        assert st["Gid"].split() == [str(gid)] * 4, st["Gid"]
        assert st["Groups"] == "", st["Groups"]
        for k in ("CapEff", "CapPrm", "CapBnd"):
            assert int(st[k], 16) == 1 << 10, (k, st[k])  # CAP_NET_BIND_SERVICE only
        assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
        assert st["NoNewPrivs"] == "1"
        # Every thread, the workers and the stats thread included.
        for t in os.listdir("/proc/%d/task" % p.pid):
            ts = proc_status(p.pid, t)
            assert ts["Uid"].split() == [str(uid)] * 4, (t, ts.get("Name"), ts["Uid"])
            assert int(ts["CapEff"], 16) & ~(1 << 10) == 0, (t, ts.get("Name"), ts["CapEff"])
        # Its files belong to it.
        for root, dirs, files in os.walk(p.spool):
            for n in dirs + files:
                assert os.lstat(os.path.join(root, n)).st_uid == uid, n
        assert os.stat(p.spool).st_uid == uid
        (p.spool / "stale-file").unlink()
        assert os.lstat(base / "stats.sock").st_uid == uid
        assert "event=privileges user=nobody uid=%d gid=%d capabilities=net_bind_service" % (
            uid, gid) in p.stderr()
        # It works as that user: a message is stored, delivered, owned by it.
        send(p.port, "as nobody")
        wait_until(lambda: [n for n in os.listdir(drop) if n.endswith(".eml")], 10,
                   what="the message in the drop directory")
        (eml,) = [n for n in os.listdir(drop) if n.endswith(".eml")]
        assert os.stat(drop / eml).st_uid == uid
        # A reload re-reads the file as the user.
        p.signal(signal.SIGHUP)
        wait_until(lambda: "event=reload status=ok" in p.stderr(), 10, what="the reload")
        assert http(mport, "/readyz") == (200, "ready\n")
        p.stop()
    finally:
        p.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start as another user")
def test_not_root_stays_who_it_is():
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    base = pathlib.Path(tempfile.mkdtemp(prefix="postern-user-", dir="/tmp"))
    os.chmod(base, 0o777)
    try:
        from conftest import Postern
        p = Postern(base, RELAY, server_extra='  user = "root";\n')
        r = subprocess.run([BINARY, "-c", str(p.config)], capture_output=True, timeout=20 * SLOW)
        assert r.returncode == 1
        assert b'server.user: "root" is root: name an unprivileged user' in r.stderr, r.stderr
        # Started as nobody with server.user naming someone else: it stays.
        q = Postern(base, RELAY, name="second", server_extra='  user = "daemon";\n')
        os.chmod(q.dir, 0o777)
        q.wrapper = ["setpriv", "--reuid=%d" % nobody.pw_uid, "--regid=%d" % nobody.pw_gid,
                     "--clear-groups", "--"]
        if not shutil.which("setpriv"):
            pytest.skip("no setpriv")
        q.start()
        assert proc_status(q.pid)["Uid"].split() == [str(nobody.pw_uid)] * 4
        assert ('event=privileges user=daemon note="not started as root: staying uid %d"'
                % nobody.pw_uid) in q.stderr()
        q.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the privilege drop needs a start as root")
def test_root_without_dac_override_on_the_users_spool():
    """systemd's hardened unit gives root CAP_NET_BIND_SERVICE, CAP_SETUID,
    CAP_SETGID and CAP_CHOWN only: a spool that already belongs to the user
    (mode 0700) is opened after the drop, so root never needs to look in."""
    if not shutil.which("setpriv"):
        pytest.skip("no setpriv")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    uid, gid = nobody.pw_uid, nobody.pw_gid
    base = pathlib.Path(tempfile.mkdtemp(prefix="postern-caps-", dir="/tmp"))
    os.chmod(base, 0o755)
    from conftest import Postern
    try:
        hold = free_port()
        conns = RELAY + smart(hold)
        p = Postern(base, conns, server_extra='  user = "nobody";\n')
        p.spool.mkdir(mode=0o700)
        os.chown(p.spool, uid, gid)
        p.wrapper = ["setpriv", "--bounding-set=-all,+net_bind_service,+setuid,+setgid,+chown",
                     "--inh-caps=-all", "--"]
        p.start()
        st = proc_status(p.pid)
        assert int(st["CapEff"], 16) == int(st["CapPrm"], 16) == 1 << 10, st
        # Without CAP_SETPCAP the bounding set keeps what the unit gave;
        # no_new_privs makes that moot.
        assert int(st["CapBnd"], 16) & ~((1 << 10) | (1 << 0) | (1 << 6) | (1 << 7)) == 0, st
        assert st["NoNewPrivs"] == "1"
        send(p.port, "kept")
        wait_until(lambda: len(p.messages()) == 1, 10, what="the message queued")
        p.stop()
        assert os.stat(p.spool).st_mode & 0o777 == 0o700
        for n in os.listdir(p.spool):
            assert os.lstat(p.spool / n).st_uid == uid, n
        # Again, on the spool it left: recovered as the user.
        p.stopped = False
        p.proc = None
        p.start()
        assert "event=queue_recovered worker=0" in p.stderr()
        assert len(p.messages()) == 1
        p.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
