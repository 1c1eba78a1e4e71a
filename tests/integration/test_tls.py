"""TLS (DESIGN B.7): STARTTLS on receive connectors (replies, state reset,
pipelining, require_tls, versions and ciphers, resumption across workers,
SNI, ECDSA, client certificates, bad input, bad files at start and reload,
log lines, metrics and show stat) and towards next hops (opportunistic,
none, required, verify, client certificates, resumption), with Python's
ssl, openssl s_client, swaks, posttls-finger and a private Postfix as
peers. Certificates are made at run time (tlsutil.py) under a pytest tmp
directory; the next hop is tls_sink.TlsSink."""
import json
import os
import pathlib
import re
import select
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest

import tlsutil
from conftest import (BINARY, BUILD, assert_config_error, HOSTNAME, R_BAD_SEQUENCE, R_LINE_TOO_LONG, R_MAIL_OK,
                      R_NOOP_OK, R_QUIT, R_RCPT_OK, R_START_DATA, R_SYNTAX, R_UNRECOGNIZED,
                      SLOW, Postern, RawClient, free_port, wait_until)
from test_delivery import RECEIVED, config, events, smart, submit, wait_event
from tls_sink import TlsSink

R_STARTTLS_READY = "220 2.0.0 SMTP server ready"
R_TLS_REQUIRED = "530 5.7.0 Must issue a STARTTLS command first"
R_CLIENT_CERT_REQUIRED = "530 5.7.1 Valid client certificate required"

CTL = os.path.join(BUILD, "posternctl")
OPENSSL = "/usr/bin/openssl"
SWAKS = "/usr/bin/swaks"
POSTTLS_FINGER = "/usr/sbin/posttls-finger"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"

TLS_RANGE = "127.0.0.10-127.0.0.99"     # the TLS connector's clients in most tests
QUEUED = re.compile(r"250 2\.6\.0 <([0-9A-F]+)> Queued mail for delivery$")


def need(path, package):
    assert os.access(path, os.X_OK), (
        "%s is missing: install %s (scripts/install-deps.sh does)" % (path, package))


# ---------------------------------------------------------------------------
# Certificates and configuration


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tlsutil.make_pki(tmp_path_factory.mktemp("pki"))


def tls_keys(*certs):
    """tls_certificate/tls_key for one certificate (strings) or several
    (lists)."""
    if len(certs) == 1:
        return 'tls_certificate = "%s"; tls_key = "%s";' % (certs[0].cert, certs[0].key)
    return ("tls_certificate = [ %s ]; tls_key = [ %s ];"
            % (", ".join('"%s"' % c.cert for c in certs),
               ", ".join('"%s"' % c.key for c in certs)))


def rconn(name, ranges, perms, extra=""):
    return ('{ name = "%s"; bindings = [ "127.0.0.1:{port}" ];\n'
            '    remote_ip_ranges = [ %s ]; permission_groups = [ "%s" ];\n    %s }'
            % (name, ", ".join('"%s"' % r for r in ranges), perms, extra))


def receive(*connectors):
    return "receive_connectors = (\n  " + ",\n  ".join(connectors) + "\n);\n"


def tls_relay(pki_or_keys, extra="", ranges=(TLS_RANGE,), perms="anonymous_relay",
              frontend=True):
    """A "TLS Relay" connector (TLS_RANGE, anonymous_relay, with the
    server certificate unless keys are given) and a plain "Plain Frontend"
    for everyone else (the fixture's readiness probe from 127.0.0.1 lands
    there)."""
    keys = pki_or_keys if isinstance(pki_or_keys, str) else tls_keys(pki_or_keys.server)
    cs = [rconn("TLS Relay", ranges, perms, keys + " " + extra)]
    if frontend:
        cs.insert(0, rconn("Plain Frontend", ["0.0.0.0/0"], "anonymous"))
    return receive(*cs)


def client_ctx(pki, cert=None, max_version=None, min_version=None, check_hostname=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca.cert)
    ctx.check_hostname = check_hostname
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    if max_version:
        ctx.maximum_version = max_version
    if min_version:
        ctx.minimum_version = min_version
    return ctx


# ---------------------------------------------------------------------------
# A client that can do STARTTLS: RawClient's bounded reply reader over the
# TLS socket once the handshake is done.


class TlsClient(RawClient):
    def starttls(self, ctx, server_hostname="relay.test.example", session=None):
        """STARTTLS, its 220, nothing else in plaintext, the handshake.
        Returns the ssl socket."""
        assert self.cmd("STARTTLS") == R_STARTTLS_READY
        self.handshake(ctx, server_hostname, session)
        return self.sock

    def handshake(self, ctx, server_hostname="relay.test.example", session=None):
        assert self.buf == b"", "plaintext after the 220 to STARTTLS: %r" % self.buf
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname,
                                    session=session)
        return self.sock

    def ehlo(self, name="client.example"):
        r = self.cmd("EHLO " + name)
        assert isinstance(r, list) and r[0].startswith("250-"), r
        return r


def open_tls(port, source, ctx, server_hostname="relay.test.example", session=None):
    """Connected, greeted, EHLO, STARTTLS, handshake, EHLO again. Returns
    the client and its second EHLO reply."""
    c = TlsClient(port, source)
    assert "250-STARTTLS" in c.ehlo()
    c.starttls(ctx, server_hostname, session)
    return c, c.ehlo()


def send_message(c, body=b"Subject: tls\r\n\r\nover TLS\r\n", rcpt="x@other.example"):
    assert c.cmd("MAIL FROM:<s@client.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<%s>" % rcpt) == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    c.send(body + b".\r\n")
    r = c.reply()
    m = QUEUED.match(r)
    assert m, r
    return m.group(1)


def received_header(p, mid):
    """Postern's Received: header of a stored message, unfolded."""
    data = p.read_message(mid)
    i = data.find(b"Received: from ")
    assert i >= 0, data[:300]
    m = RECEIVED.match(data[i:])
    return re.sub(r"\r\n(?=[ \t])", "", m.group(0).decode()).rstrip("\r\n")


def tls_events(p, **match):
    """Inbound event=tls lines (outbound ones say dir=out)."""
    return [e for e in events(p, "tls", **match) if e.get("dir") != "out"]


def out_tls_events(p, **match):
    return events(p, "tls", dir="out", **match)


def worker_of(p, client):
    """The worker that accepted the connection from client (one address per
    connection), from its event=connect line."""
    ev = wait_until(lambda: events(p, "connect", client=client), 5,
                    what="event=connect for %s" % client)
    assert len(ev) == 1, [e["_line"] for e in ev]
    return ev[0]["worker"]


def fetch_metrics(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=10) as r:
        return r.read().decode()


def metric(body, name, **labels):
    want = "%s{%s} " % (name, ",".join('%s="%s"' % kv for kv in labels.items()))
    for line in body.split("\n"):
        if line.startswith(want):
            return int(float(line[len(want):]))
    raise AssertionError("no sample %s... in /metrics:\n%s" % (
        want, "\n".join(l for l in body.split("\n") if name in l)))


def ctl(sock, *args):
    r = subprocess.run([CTL, "-s", str(sock)] + list(args), capture_output=True, timeout=30)
    return r.returncode, r.stdout.decode()


def s_client(port, *args, timeout=20):
    """openssl s_client -starttls smtp with -brief: (exit code, stderr
    text: the brief report or the error)."""
    need(OPENSSL, "openssl")
    r = subprocess.run([OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port,
                        "-starttls", "smtp", "-brief"] + list(args),
                       input=b"", capture_output=True, timeout=timeout * SLOW)
    return r.returncode, r.stderr.decode(errors="replace") + r.stdout.decode(errors="replace")


def peer_cn(sock):
    for rdn in sock.getpeercert()["subject"]:
        for k, v in rdn:
            if k == "commonName":
                return v
    return None


def wait_closed(sock, timeout):
    """Reads until the peer closes; returns (bytes read, seconds taken).
    Fails if the connection is still open after timeout."""
    t0 = time.monotonic()
    data = b""
    sock.settimeout(0.2)
    while time.monotonic() - t0 < timeout * SLOW:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    else:
        raise AssertionError("connection still open after %.1fs (got %r)"
                             % (timeout * SLOW, data[:200]))
    return data, time.monotonic() - t0


def assert_not_smtp(data):
    """What a server may send once the client started the TLS handshake:
    nothing, or TLS records (an alert), never a plaintext SMTP reply."""
    assert not re.match(rb"\d\d\d[ -]", data), "plaintext SMTP reply in TLS: %r" % data[:200]
    assert data == b"" or data[:1] in (b"\x15", b"\x16"), data[:50]


# ---------------------------------------------------------------------------
# Inbound: the STARTTLS command


def test_starttls_offered_only_with_certificate(pki, postern, smtp_raw):
    p = postern(tls_relay(pki))
    c = smtp_raw(p.port, "127.0.0.10")
    ehlo = c.cmd("EHLO client.example")
    assert ehlo[0] == "250-%s Hello [127.0.0.10]" % HOSTNAME
    assert "250-STARTTLS" in ehlo, ehlo
    plain = smtp_raw(p.port, "127.0.0.200")
    ehlo = plain.cmd("EHLO client.example")
    assert not [l for l in ehlo if "STARTTLS" in l], ehlo
    assert plain.cmd("STARTTLS") == R_UNRECOGNIZED
    assert plain.cmd("NOOP") == R_NOOP_OK
    assert plain.cmd("QUIT") == R_QUIT


def test_starttls_replies_and_no_second_offer(pki, postern):
    p = postern(tls_relay(pki))
    with TlsClient(p.port, "127.0.0.10") as c:
        c.ehlo()
        assert c.cmd("STARTTLS now") == R_SYNTAX
        assert c.cmd("NOOP") == R_NOOP_OK          # still plaintext, still alive
        s = c.starttls(client_ctx(pki))
        assert s.version() in ("TLSv1.2", "TLSv1.3")
        assert peer_cn(s) == "relay.test.example"
        ehlo = c.ehlo()
        assert ehlo[0] == "250-%s Hello [127.0.0.10]" % HOSTNAME
        assert not [l for l in ehlo if "STARTTLS" in l], ehlo
        assert c.cmd("STARTTLS") == R_BAD_SEQUENCE
        assert c.cmd("NOOP") == R_NOOP_OK
        assert c.cmd("QUIT") == R_QUIT
        c.expect_closed()


def test_state_reset_after_starttls(pki, postern):
    p = postern(tls_relay(pki))
    with TlsClient(p.port, "127.0.0.10") as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<before@client.example>") == R_MAIL_OK
        c.starttls(client_ctx(pki))
        # RFC 3207: no EHLO yet, and the transaction begun in plaintext is gone.
        assert c.cmd("MAIL FROM:<s@client.example>") == R_BAD_SEQUENCE
        c.ehlo()
        assert c.cmd("RCPT TO:<x@other.example>") == R_BAD_SEQUENCE
        mid = send_message(c)
        assert c.cmd("QUIT") == R_QUIT
    p.stop()
    assert p.messages() == [mid]
    assert b"before@client.example" not in p.read_message(mid)


def test_pipelined_after_starttls_is_discarded(pki, postern):
    p = postern(tls_relay(pki, 'protocol_log = true;'))
    with TlsClient(p.port, "127.0.0.10") as c:
        c.ehlo()
        c.send(b"STARTTLS\r\nMAIL FROM:<smuggled@client.example>\r\n")
        assert c.reply() == R_STARTTLS_READY
        # Nothing more in plaintext: the MAIL was not answered before the
        # handshake...
        readable, _, _ = select.select([c.sock], [], [], 0.5 * SLOW)
        if readable:
            extra = c.sock.recv(4096, socket.MSG_PEEK)
            raise AssertionError("plaintext after the 220 to STARTTLS: %r" % extra)
        c.handshake(client_ctx(pki))
        c.ehlo()
        # ... nor executed inside TLS: there is no transaction to add to.
        assert c.cmd("RCPT TO:<x@other.example>") == R_BAD_SEQUENCE
        assert c.cmd("QUIT") == R_QUIT
    # The protocol log agrees: no MAIL was ever accepted on this session.
    assert not [l for l in p.stderr().splitlines()
                if "event=smtp dir=out" in l and "250 2.1.0" in l], p.stderr()


def test_require_tls(pki, postern):
    p = postern(tls_relay(pki, "require_tls = true;"))
    with TlsClient(p.port, "127.0.0.10") as c:
        assert "250-STARTTLS" in c.ehlo()
        assert c.cmd("MAIL FROM:<s@client.example>") == R_TLS_REQUIRED
        c.starttls(client_ctx(pki))
        c.ehlo()
        mid = send_message(c)
        assert c.cmd("QUIT") == R_QUIT
    assert re.search(r"with ESMTPS id", received_header(p, mid))


CONFIG_ERRORS = {
    "require_tls_without_certificate": ("require_tls = true;", "require_tls"),
    "client_ca_without_certificate": ('tls_client_ca_file = "{ca}";', "tls_client_ca_file"),
    "require_client_cert_without_ca": (
        '{keys} require_client_certificate = true;', "require_client_certificate"),
    "bad_min_version": ('{keys} tls_min_version = "1.1";', "tls_min_version"),
    "certificate_and_key_counts": (
        'tls_certificate = [ "{cert}", "{cert2}" ]; tls_key = [ "{key}" ];', "tls_key"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_tls_config_errors(pki, tmp_path, case):
    extra, word = CONFIG_ERRORS[case]
    extra = extra.format(ca=pki.ca.cert, keys=tls_keys(pki.server), cert=pki.server.cert,
                         cert2=pki.other.cert, key=pki.server.key)
    pt = Postern(tmp_path, receive(rconn("A", ["127.0.0.0/8"], "anonymous_relay", extra)))
    assert_config_error(pt, word)


# ---------------------------------------------------------------------------
# Inbound: what gets negotiated


def test_tls_message_headers_and_log_lines(pki, postern):
    """TLS 1.3, TLS 1.2 and plaintext messages on one server: Received:
    (with ESMTPS, using VERSION with cipher NAME), event=tls, event=receive."""
    p = postern(tls_relay(pki))
    seen = {}
    for source, maxv in (("127.0.0.10", None), ("127.0.0.11", ssl.TLSVersion.TLSv1_2)):
        c, _ = open_tls(p.port, source, client_ctx(pki, max_version=maxv))
        version, cipher = c.sock.version(), tlsutil.standard_cipher_name(c.sock.cipher()[0])
        assert version == ("TLSv1.2" if maxv else "TLSv1.3")
        mid = send_message(c)
        assert c.cmd("QUIT") == R_QUIT
        c.close()
        seen[mid] = (source, version, cipher)
    with TlsClient(p.port, "127.0.0.12") as c:
        c.ehlo()
        plain = send_message(c)
        assert c.cmd("QUIT") == R_QUIT
    for mid, (source, version, cipher) in seen.items():
        hdr = received_header(p, mid)
        assert re.search(r"\bwith ESMTPS id %s\b" % mid, hdr), hdr
        assert re.search(r"\(using TLSv1\.[23] with cipher [A-Z0-9_]+\)", hdr), hdr
        assert "(using %s with cipher %s)" % (version, cipher) in hdr, hdr
        if version == "TLSv1.2":
            assert cipher.startswith("TLS_ECDHE_RSA_WITH_"), cipher
        rec = wait_event(p, "receive", id=mid)[0]
        assert rec["tls"] == version, rec["_line"]
        assert rec["cipher"] == cipher, rec["_line"]
        ok = [e for e in tls_events(p, result="ok") if e.get("client") in (None, source)]
        assert any(e.get("tls") == version and e.get("cipher") == cipher
                   and e.get("resumed") == "no" for e in ok), [e["_line"] for e in ok]
    hdr = received_header(p, plain)
    assert re.search(r"\bwith ESMTP id %s\b" % plain, hdr), hdr
    assert "ESMTPS" not in hdr and "(using " not in hdr, hdr
    rec = wait_event(p, "receive", id=plain)[0]
    assert rec.get("tls") in (None, "-"), rec["_line"]
    assert len(tls_events(p, result="ok")) == 2
    assert tls_events(p, result="failed") == []


def test_tls12_allowed_by_default_only_ecdhe(pki, postern):
    p = postern(receive(rconn("TLS", ["127.0.0.0/8"], "anonymous_relay", tls_keys(pki.server))))
    ca = ["-CAfile", pki.ca.cert, "-verify_return_error"]
    rc, out = s_client(p.port, "-tls1_2", *ca)
    assert rc == 0, out
    assert "Protocol version: TLSv1.2" in out, out
    assert re.search(r"Ciphersuite: ECDHE-RSA-", out), out
    rc, out = s_client(p.port, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256", *ca)
    assert rc == 0 and "Ciphersuite: ECDHE-RSA-AES128-GCM-SHA256" in out, out
    # RSA key exchange (no forward secrecy) is refused.
    rc, out = s_client(p.port, "-tls1_2", "-cipher", "AES128-GCM-SHA256", *ca)
    assert rc != 0, out
    assert "CONNECTION ESTABLISHED" not in out, out
    rc, out = s_client(p.port, "-tls1_3", *ca)
    assert rc == 0 and "Protocol version: TLSv1.3" in out, out
    wait_until(lambda: len(tls_events(p, result="failed")) == 1, 5,
               what="one event=tls result=failed")
    assert len(tls_events(p, result="ok")) == 3
    fail = tls_events(p, result="failed")[0]
    assert fail.get("reason"), fail["_line"]


def test_min_version_13(pki, postern):
    p = postern(receive(rconn("TLS", ["127.0.0.0/8"], "anonymous_relay",
                              tls_keys(pki.server) + ' tls_min_version = "1.3";')))
    rc, out = s_client(p.port, "-tls1_2", "-CAfile", pki.ca.cert)
    assert rc != 0, out
    assert "CONNECTION ESTABLISHED" not in out, out
    rc, out = s_client(p.port, "-tls1_3", "-CAfile", pki.ca.cert, "-verify_return_error")
    assert rc == 0 and "Protocol version: TLSv1.3" in out, out
    with TlsClient(p.port, "127.0.0.10") as c:
        c.ehlo()
        assert c.cmd("STARTTLS") == R_STARTTLS_READY
        with pytest.raises(ssl.SSLError):
            c.handshake(client_ctx(pki, max_version=ssl.TLSVersion.TLSv1_2))
    wait_until(lambda: len(tls_events(p, result="failed")) == 2, 5,
               what="two event=tls result=failed")


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_session_resumption_across_workers(pki, postern, version):
    """A session from one connection resumes on later ones, including on
    the other worker (workers = 2, SO_REUSEPORT spreads the connections)."""
    p = postern(tls_relay(pki))
    v = ssl.TLSVersion.TLSv1_2 if version == "TLSv1.2" else ssl.TLSVersion.TLSv1_3
    ctx = client_ctx(pki, max_version=v, min_version=v)
    c, _ = open_tls(p.port, "127.0.0.10", ctx)
    assert c.sock.version() == version and not c.sock.session_reused
    session = c.sock.session
    if version == "TLSv1.3":
        assert session.has_ticket, "no session ticket from postern"
    assert c.cmd("QUIT") == R_QUIT
    c.close()
    first = worker_of(p, "127.0.0.10")
    resumed_on = set()
    n = 0
    for n in range(1, 40):
        source = "127.0.0.%d" % (10 + n)
        c, _ = open_tls(p.port, source, ctx, session=session)
        reused = c.sock.session_reused
        assert c.cmd("NOOP") == R_NOOP_OK
        assert c.cmd("QUIT") == R_QUIT
        c.close()
        w = worker_of(p, source)
        assert reused, "connection %d (worker %s) did a full handshake; the session " \
            "came from worker %s" % (n, w, first)
        resumed_on.add(w)
        if len(resumed_on) == 2 and n >= 3:
            break
    assert len(resumed_on) == 2, \
        "%d connections all landed on worker %s" % (n, resumed_on)
    wait_until(lambda: len(tls_events(p, result="ok")) == n + 1, 5,
               what="%d event=tls lines" % (n + 1))
    res = [e.get("resumed") for e in tls_events(p, result="ok")]
    assert res.count("no") == 1 and res.count("yes") == n, res


def test_sni_selects_certificate(pki, postern):
    p = postern(receive(rconn("TLS", ["127.0.0.0/8"], "anonymous_relay",
                              tls_keys(pki.server, pki.other))))
    ca = ["-CAfile", pki.ca.cert, "-verify_return_error"]
    for args, cn in ((["-servername", "other.test.example"], "other.test.example"),
                     (["-servername", "relay.test.example"], "relay.test.example"),
                     (["-servername", "unknown.test.example"], "relay.test.example"),
                     (["-noservername"], "relay.test.example")):
        rc, out = s_client(p.port, *args, "-CAfile", pki.ca.cert)
        assert rc == 0, out
        assert "Peer certificate: CN = %s\n" % cn in out, (args, out)
    # Python's check_hostname agrees for both names.
    for name in ("other.test.example", "relay.test.example"):
        c, _ = open_tls(p.port, "127.0.0.10", client_ctx(pki), server_hostname=name)
        assert peer_cn(c.sock) == name
        assert c.cmd("QUIT") == R_QUIT
        c.close()
    rc, out = s_client(p.port, "-servername", "other.test.example", *ca)
    assert rc == 0 and "Verification: OK" in out, out


def test_ecdsa_certificate(pki, postern):
    p = postern(receive(rconn("TLS", ["127.0.0.0/8"], "anonymous_relay",
                              tls_keys(pki.server_ec))))
    rc, out = s_client(p.port, "-tls1_2", "-CAfile", pki.ca.cert, "-verify_return_error")
    assert rc == 0, out
    assert re.search(r"Ciphersuite: ECDHE-ECDSA-", out), out
    rc, out = s_client(p.port, "-tls1_3", "-CAfile", pki.ca.cert, "-verify_return_error")
    assert rc == 0 and "Protocol version: TLSv1.3" in out, out
    assert re.search(r"Signature type: ECDSA|Signature type: ecdsa", out, re.I), out
    c, _ = open_tls(p.port, "127.0.0.10", client_ctx(pki))
    mid = send_message(c)
    assert c.cmd("QUIT") == R_QUIT
    c.close()
    assert "with ESMTPS id %s" % mid in received_header(p, mid)


# ---------------------------------------------------------------------------
# Inbound: client certificates


def secured(pki, require=True):
    extra = tls_keys(pki.server) + ' tls_client_ca_file = "%s";' % pki.ca.cert
    if require:
        extra += " require_client_certificate = true;"
    return tls_relay(extra, perms="externally_secured" if require else "anonymous_relay")


def test_client_certificate_required(pki, postern):
    p = postern(secured(pki))
    # A certificate from the trusted CA: relays.
    c, _ = open_tls(p.port, "127.0.0.10", client_ctx(pki, cert=pki.client))
    mid = send_message(c)
    assert c.cmd("QUIT") == R_QUIT
    c.close()
    assert "with ESMTPS" in received_header(p, mid)
    # No certificate, an untrusted one, or no TLS at all: 530 5.7.1 at MAIL.
    for source, cert in (("127.0.0.11", None), ("127.0.0.12", pki.rogue_client)):
        c, _ = open_tls(p.port, source, client_ctx(pki, cert=cert))
        assert c.cmd("MAIL FROM:<s@client.example>") == R_CLIENT_CERT_REQUIRED, source
        assert c.cmd("NOOP") == R_NOOP_OK
        assert c.cmd("QUIT") == R_QUIT
        c.close()
    # Without TLS there can be no certificate: the client is told to
    # STARTTLS first (require_client_certificate implies require_tls).
    with TlsClient(p.port, "127.0.0.13") as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@client.example>") == R_TLS_REQUIRED
    p.stop()
    assert p.messages() == [mid]


def test_client_certificate_requested_not_demanded(pki, postern):
    p = postern(secured(pki, require=False))
    mids = []
    for source, cert in (("127.0.0.10", pki.client), ("127.0.0.11", None),
                         ("127.0.0.12", pki.rogue_client)):
        c, _ = open_tls(p.port, source, client_ctx(pki, cert=cert))
        mids.append(send_message(c))
        assert c.cmd("QUIT") == R_QUIT
        c.close()
    assert len(set(mids)) == 3


# ---------------------------------------------------------------------------
# Inbound: counters


def test_tls_counters_metrics_and_stat(pki, postern, tmp_path):
    sock, mport = tmp_path / "stats.sock", free_port()
    p = postern(tls_relay(pki), server_extra='  stats_socket = "%s";\n'
                '  metrics_listen = "127.0.0.1:%d";\n' % (sock, mport))
    for source in ("127.0.0.10", "127.0.0.11"):
        c, _ = open_tls(p.port, source, client_ctx(pki))
        assert c.cmd("QUIT") == R_QUIT
        c.close()
    with TlsClient(p.port, "127.0.0.12") as c:           # plaintext
        c.ehlo()
        assert c.cmd("QUIT") == R_QUIT
    with TlsClient(p.port, "127.0.0.13") as c:           # a failed handshake
        c.ehlo()
        assert c.cmd("STARTTLS") == R_STARTTLS_READY
        c.send(b"\x16\x03\x01\x00\x05hello" + b"not a client hello" * 10)
        assert_not_smtp(wait_closed(c.sock, 10)[0])

    def stat():
        rc, out = ctl(sock, "show", "stat", "json")
        assert rc == 0, out
        return {s["name"]: s for s in json.loads(out)["receive_connectors"]}
    wait_until(lambda: stat()["TLS Relay"]["active"] == 0 and
               stat()["TLS Relay"]["connections"] == 4, 10, what="4 closed TLS Relay sessions")
    s = stat()
    assert (s["TLS Relay"]["tls"], s["TLS Relay"]["tls_share"]) == (2, 50), s["TLS Relay"]
    assert (s["Plain Frontend"]["tls"], s["Plain Frontend"]["tls_share"]) == (0, 0), \
        s["Plain Frontend"]
    body = fetch_metrics(mport)
    assert metric(body, "postern_tls_handshakes_total", connector="TLS Relay", result="ok") == 2
    assert metric(body, "postern_tls_handshakes_total", connector="TLS Relay",
                  result="failed") == 1
    assert metric(body, "postern_tls_handshakes_total", connector="Plain Frontend",
                  result="ok") == 0
    [fail] = tls_events(p, result="failed")
    assert fail.get("reason"), fail["_line"]
    assert re.search(r' reason="[^"]+"', fail["_line"]), fail["_line"]
    rc, text = ctl(sock, "show", "stat")
    assert rc == 0
    assert re.search(r"^TLS Relay +4 .* 2 +50%$", text, re.M), text


# ---------------------------------------------------------------------------
# Inbound: bad input


def test_garbage_instead_of_client_hello(pki, postern):
    p = postern(tls_relay(pki))
    other = TlsClient(p.port, "127.0.0.11")        # a session open meanwhile
    other.ehlo()
    with TlsClient(p.port, "127.0.0.10") as c:
        c.ehlo()
        assert c.cmd("STARTTLS") == R_STARTTLS_READY
        try:
            c.send(b"EHLO this is not a ClientHello\r\n" + bytes(range(256)) * 8)
        except OSError:
            pass
        data, _ = wait_closed(c.sock, 10)
        assert_not_smtp(data)
    assert p.proc.poll() is None
    other.starttls(client_ctx(pki))
    other.ehlo()
    send_message(other)
    assert other.cmd("QUIT") == R_QUIT
    other.close()
    wait_until(lambda: len(tls_events(p, result="failed")) == 1, 5, what="event=tls failed")


def test_stalled_handshake_times_out(pki, postern):
    p = postern(tls_relay(pki, 'connection_inactivity_timeout = "2s";'))
    silent = TlsClient(p.port, "127.0.0.10")
    partial = TlsClient(p.port, "127.0.0.11")
    for c in (silent, partial):
        c.ehlo()
        assert c.cmd("STARTTLS") == R_STARTTLS_READY
    # A record header that promises 512 bytes, and 10 of them.
    partial.send(b"\x16\x03\x01\x02\x00" + b"\x01\x00\x01\xfc\x03\x03" + b"\x00" * 4)
    t0 = time.monotonic()
    for c in (silent, partial):
        data, _ = wait_closed(c.sock, 8)
        assert_not_smtp(data)
        c.close()
    took = time.monotonic() - t0
    assert 1.5 <= took <= 6 * SLOW, took
    assert p.proc.poll() is None


def test_megabyte_line_inside_tls(pki, postern):
    p = postern(tls_relay(pki))
    c, _ = open_tls(p.port, "127.0.0.10", client_ctx(pki))
    c.send(b"A" * (1024 * 1024) + b"\r\n")
    assert c.reply(timeout=20) == R_LINE_TOO_LONG
    assert c.cmd("NOOP") == R_NOOP_OK
    mid = send_message(c)
    assert c.cmd("QUIT") == R_QUIT
    c.close()
    assert "with ESMTPS" in received_header(p, mid)


# ---------------------------------------------------------------------------
# Inbound: certificate files at start and on reload


def start_expecting_failure(pt):
    proc = subprocess.Popen([BINARY, "-c", str(pt.config)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=10 * SLOW)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("postern started with a bad certificate/key:\n%s"
                             % err.decode(errors="replace"))
    return proc.returncode, err.decode(errors="replace")


BAD_FILES = ["missing_certificate", "garbage_certificate", "missing_key", "garbage_key",
             "key_of_another_certificate"]


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_certificate_or_key_at_start(pki, tmp_path, case):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n"
                       "-----END CERTIFICATE-----\n")
    os.chmod(garbage, 0o600)
    missing = str(tmp_path / "nope.pem")
    cert, key = pki.server.cert, pki.server.key
    blame = {
        "missing_certificate": ((missing, key), [missing]),
        "garbage_certificate": ((str(garbage), key), [str(garbage)]),
        "missing_key": ((cert, missing), [missing]),
        "garbage_key": ((cert, str(garbage)), [str(garbage)]),
        "key_of_another_certificate": ((cert, pki.other.key), [cert, pki.other.key]),
    }
    (cert, key), paths = blame[case]
    pt = Postern(tmp_path, receive(rconn("A", ["127.0.0.0/8"], "anonymous_relay",
                                         'tls_certificate = "%s"; tls_key = "%s";'
                                         % (cert, key))))
    rc, err = start_expecting_failure(pt)
    assert rc != 0, err
    assert any(re.search(re.escape(path) + r": \S", err) for path in paths), (paths, err)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", pt.port), timeout=1).close()


def test_private_key_readable_by_others_warns(pki, postern, tmp_path):
    key = tmp_path / "open.key"
    shutil.copy(pki.server.key, key)
    os.chmod(key, 0o644)
    p = postern(tls_relay(tls_keys(tlsutil.Cert(pki.server.cert, key, "relay"))))
    warn = [l for l in p.stderr().splitlines() if "readable by group or others" in l]
    assert len(warn) >= 1, p.stderr()
    c, _ = open_tls(p.port, "127.0.0.10", client_ctx(pki))
    assert c.cmd("QUIT") == R_QUIT
    c.close()


def test_reload_with_bad_certificate_keeps_tls(pki, postern, tmp_path):
    p = postern(tls_relay(pki))
    text = p.config.read_text()
    missing = str(tmp_path / "gone.pem")
    p.config.write_text(text.replace('"%s"' % pki.server.cert, '"%s"' % missing))
    p.signal(signal.SIGHUP)
    fails = wait_event(p, "reload", status="failed")
    assert missing in fails[0]["_line"], fails[0]["_line"]
    ctx = client_ctx(pki, check_hostname=False)
    c, _ = open_tls(p.port, "127.0.0.10", ctx, server_hostname=None)
    assert peer_cn(c.sock) == "relay.test.example"
    send_message(c)
    assert c.cmd("QUIT") == R_QUIT
    c.close()
    # A good file on the next reload is taken for new connections.
    p.config.write_text(text.replace(tls_keys(pki.server), tls_keys(pki.other)))
    p.signal(signal.SIGHUP)
    wait_event(p, "reload", status="ok")
    # The workers take the new configuration from their mailboxes after
    # the reload is logged: a connection right after the line may still
    # get the old one, so poll (bounded) until the new certificate shows.
    seen = []

    def new_cert():
        c, _ = open_tls(p.port, "127.0.0.%d" % (11 + len(seen)), ctx, server_hostname=None)
        seen.append(peer_cn(c.sock))
        assert c.cmd("QUIT") == R_QUIT
        c.close()
        return seen[-1] == "other.test.example"
    try:
        wait_until(new_cert, 3, interval=0.05, what="the reloaded certificate")
    except AssertionError as e:
        raise AssertionError("%s; new connections got %r" % (e, seen))


# ---------------------------------------------------------------------------
# Inbound: other clients


def test_swaks_over_starttls(pki, postern):
    need(SWAKS, "swaks")
    p = postern(tls_relay(pki))
    r = subprocess.run([SWAKS, "--server", "127.0.0.1:%d" % p.port,
                        "--local-interface", "127.0.0.10", "--ehlo", "client.example",
                        "--tls", "--tls-verify", "--tls-ca-path", pki.ca.cert,
                        "--tls-sni", "relay.test.example",
                        "--from", "s@client.example", "--to", "x@other.example",
                        "--header", "Subject: swaks over TLS"],
                       capture_output=True, timeout=30 * SLOW)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert " -> STARTTLS\n<-  %s\n" % R_STARTTLS_READY in out, out
    assert re.search(r"=== TLS started with cipher TLSv1\.[23]:", out), out
    m = re.search(r"<~  250 2\.6\.0 <([0-9A-F]+)> Queued mail for delivery", out)
    assert m, out
    hdr = received_header(p, m.group(1))
    assert re.search(r"with ESMTPS id", hdr) and re.search(
        r"using TLSv1\.[23] with cipher [A-Z0-9_]+", hdr), hdr


def backdate(path):
    """Postfix programs wait (300 ms at a time, up to 2 s) while main.cf is
    less than two seconds old: make it older."""
    t = time.time() - 60
    os.utime(path, (t, t))


def posttls_finger(tmp_path, *args):
    need(POSTTLS_FINGER, "postfix")
    cfg = tmp_path / "finger-etc"
    cfg.mkdir(exist_ok=True)
    (cfg / "main.cf").write_text("compatibility_level = 3.6\n"
                                 "myhostname = finger.test.example\n"
                                 "smtp_dns_support_level = disabled\n")
    backdate(cfg / "main.cf")
    r = subprocess.run([POSTTLS_FINGER, "-c"] + list(args), capture_output=True,
                       timeout=30 * SLOW, env=dict(os.environ, MAIL_CONFIG=str(cfg)),
                       stdin=subprocess.DEVNULL)
    return r.returncode, r.stdout.decode(errors="replace") + r.stderr.decode(errors="replace")


def test_posttls_finger(pki, postern, tmp_path):
    p = postern(receive(rconn("TLS", ["127.0.0.0/8"], "anonymous_relay", tls_keys(pki.server))))
    dest = "[127.0.0.1]:%d" % p.port
    rc, out = posttls_finger(tmp_path, "-l", "secure", "-F", pki.ca.cert, "-P", "/dev/null",
                             dest, "relay.test.example")
    assert rc == 0, out
    assert re.search(r"Verified TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:%d: "
                     r"TLSv1\.3 with cipher TLS_[A-Z0-9_]+ " % p.port, out), out
    assert "subject_CN=relay.test.example, issuer_CN=Postern Test CA" in out, out
    # -r: reconnect with the cached session.
    rc, out = posttls_finger(tmp_path, "-l", "encrypt", "-r", "1", dest)
    assert rc == 0, out
    assert "Reusing old session" in out, out


class PrivatePostfix:
    """A Postfix instance of its own in a fresh directory under /tmp (its
    daemons run as user postfix and must reach it: pytest's tmp directories
    are 0700): smtpd on 127.0.0.1:port, delivering everything to relayhost
    over TLS (smtp_tls_security_level = encrypt), from source address bind.
    The directory is removed by stop()."""

    def __init__(self, port, relayhost, bind, extra=""):
        need(POSTFIX, "postfix")
        assert os.geteuid() == 0, "a private Postfix needs root (its master starts as root)"
        self.started = False
        base = pathlib.Path(tempfile.mkdtemp(prefix="postern-tls-postfix-", dir="/tmp"))
        os.chmod(base, 0o755)
        self.dir = base
        etc, self.queue, data = base / "etc", base / "queue", base / "data"
        for d in (etc, self.queue, data):
            d.mkdir(parents=True)
        shutil.chown(data, "postfix")
        for f in ("master.cf", "postfix-files", "dynamicmaps.cf"):
            if os.path.exists("/etc/postfix/" + f):
                shutil.copy("/etc/postfix/" + f, etc / f)
        for d in ("postfix-files.d", "dynamicmaps.cf.d"):
            if os.path.isdir("/etc/postfix/" + d):
                shutil.copytree("/etc/postfix/" + d, etc / d)
        self.maillog = base / "maillog"
        (etc / "main.cf").write_text("""compatibility_level = 3.6
config_directory = {etc}
queue_directory = {queue}
data_directory = {data}
meta_directory = {etc}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.test.example
mydomain = test.example
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = {relayhost}
smtp_bind_address = {bind}
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = {maillog}
maillog_file_prefixes = {base}
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
smtpd_tls_security_level = none
biff = no
{extra}
""".format(extra=extra, etc=etc, queue=self.queue, data=data, relayhost=relayhost, bind=bind,
           maillog=self.maillog, base=base))
        master = (etc / "master.cf").read_text()
        master = re.sub(r"^smtp(\s+)inet", "127.0.0.1:%d\\1inet" % port, master, flags=re.M)
        (etc / "master.cf").write_text(master)
        self.etc, self.port = etc, port
        subprocess.run([POSTCONF, "-c", str(etc), "-F", "*/*/chroot = n"], check=True,
                       capture_output=True, timeout=30)
        backdate(etc / "main.cf")
        backdate(etc / "master.cf")

    def start(self):
        self.started = True     # stop() cleans up after a half-done start too
        r = subprocess.run([POSTFIX, "-c", str(self.etc), "start"], capture_output=True,
                           timeout=60)
        assert r.returncode == 0, (
            "postfix start failed (its fatal errors go to syslog or a terminal: try "
            "script -qc 'postfix -c %s start'):\n%s%s\n%s"
            % (self.etc, r.stdout.decode(), r.stderr.decode(), self.log()))
        wait_until(self._listening, 20, what="Postfix smtpd on port %d" % self.port)
        return self

    def _listening(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def log(self):
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.started:
            subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True,
                           timeout=60)
            # The master's pid file stays behind: wait for the process.
            try:
                pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pid = None
            deadline = time.monotonic() + 10
            while pid and time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def private_postfix():
    made = []

    def factory(*a, **kw):
        pf = PrivatePostfix(*a, **kw)
        made.append(pf)
        return pf.start()
    yield factory
    for pf in made:
        pf.stop()


def test_postfix_relays_into_postern_over_starttls(pki, postern, private_postfix, tmp_path):
    p = postern(tls_relay(pki))
    pf = private_postfix(free_port(), "[127.0.0.1]:%d" % p.port, "127.0.0.10")
    s = smtplib.SMTP("127.0.0.1", pf.port, timeout=20)
    s.ehlo("client.example")
    s.sendmail("s@client.example", ["x@other.example"],
               b"Subject: through postfix\r\nMessage-ID: <pf1@client.example>\r\n\r\nhi\r\n")
    s.quit()
    wait_until(lambda: p.messages(), 30,
               what="Postfix to relay the message to postern (maillog:\n%s)" % pf.log())
    [mid] = p.messages()
    hdr = received_header(p, mid)
    assert hdr.startswith("Received: from postfix.test.example ([127.0.0.10])"), hdr
    assert re.search(r"with ESMTPS id %s" % mid, hdr), hdr
    assert re.search(r"using TLSv1\.[23] with cipher [A-Z0-9_]+", hdr), hdr
    assert b"Message-ID: <pf1@client.example>" in p.read_message(mid)
    wait_until(lambda: "status=sent" in pf.log(), 10, what="status=sent in Postfix's log")
    log = pf.log()
    assert re.search(r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:%d: "
                     r"TLSv1\.[23] with cipher " % p.port, log), log
    assert re.search(r"status=sent \(250 2\.6\.0 <%s> Queued mail for delivery\)" % mid, log), log
    ok = tls_events(p, result="ok")
    assert ok and ok[0].get("client") in (None, "127.0.0.10"), [e["_line"] for e in ok]


# ---------------------------------------------------------------------------
# Outbound


@pytest.fixture
def tls_sinks():
    """Factory for TlsSink next hops; closed at teardown. Request it before
    postern so that postern stops first."""
    made = []

    def factory(**kw):
        s = TlsSink(**kw)
        made.append(s)
        return s
    yield factory
    for s in made:
        s.close()


def outbound(postern, sink, extra="", queue=None):
    """A relay for 127.0.0.0/8 whose one send connector "Smart" goes to
    the sink, with metrics; returns the server."""
    mport = free_port()
    kw = {} if queue is None else {"queue": queue}
    p = postern(config(smart("Smart", ["*"], sink.port, extra=extra), **kw),
                server_extra='  metrics_listen = "127.0.0.1:%d";\n' % mport)
    p.mport = mport
    return p


def body_of(txn):
    """What the sink got after Postern's Received: header."""
    m = RECEIVED.match(txn["data"])
    assert m, txn["data"][:300]
    return txn["data"][m.end():]


BODY = b"Subject: outbound\r\nMessage-ID: <out@client.example>\r\n\r\nover TLS\r\n..dot\r\n"


def wait_delivered(p, qid, timeout=10):
    """The deliver event of qid; fails at once on a bounce or a deferral of
    it (with the log), else after timeout."""
    def outcome():
        for kind in ("deliver", "bounce", "defer"):
            ev = events(p, kind, id=qid)
            if ev:
                return kind, ev[0]
        return None
    kind, ev = wait_until(outcome, timeout, what="delivery of %s" % qid)
    assert kind == "deliver", "%s instead of delivery: %s\nlog:\n%s" % (
        kind, ev["_line"], "\n".join(l for l in p.stderr().splitlines() if "event=" in l)[-3000:])
    return ev


def wait_tls_out(p, result, count=1):
    return wait_until(lambda: len(out_tls_events(p, result=result)) >= count
                      and out_tls_events(p, result=result), 10,
                      what="%d event=tls dir=out result=%s; log:\n%s" % (
                          count, result, "\n".join(l for l in p.stderr().splitlines()
                                                   if "event=" in l)[-3000:]))


def test_outbound_opportunistic_uses_starttls(pki, tls_sinks, postern):
    sink = tls_sinks(cert=pki.server.cert, key=pki.server.key, require_tls=True)
    p = outbound(postern, sink, 'tls = "opportunistic";')
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    wait_delivered(p, qid)
    [txn] = sink.snapshot()
    assert txn["tls"], "delivered without STARTTLS: %r" % sink.lines
    assert txn["tls_version"] == "TLSv1.3", txn
    assert body_of(txn) == BODY
    # STARTTLS first, then the one MAIL (the sink would answer 530 before).
    lines = [l for _, l in sink.lines]
    assert sink.commands("STARTTLS") == ["STARTTLS"]
    assert sink.commands("MAIL") == [txn["mail"]]
    assert lines.index("STARTTLS") < lines.index(txn["mail"]), lines
    [ev] = wait_tls_out(p, "ok")
    assert ev.get("tls") in (None, "TLSv1.3"), ev["_line"]
    body = fetch_metrics(p.mport)
    assert metric(body, "postern_tls_outbound_total", send_connector="Smart", result="ok") == 1


def test_outbound_default_is_opportunistic_plain_without_starttls(pki, tls_sinks, postern):
    sink = tls_sinks(starttls=False)
    p = outbound(postern, sink)
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    wait_delivered(p, qid)
    [txn] = sink.snapshot()
    assert not txn["tls"]
    assert body_of(txn) == BODY
    assert sink.commands("STARTTLS") == []
    body = fetch_metrics(p.mport)
    assert metric(body, "postern_tls_outbound_total", send_connector="Smart", result="ok") == 0


def test_outbound_default_uses_starttls_when_offered(pki, tls_sinks, postern):
    sink = tls_sinks(cert=pki.self_signed.cert, key=pki.self_signed.key)
    p = outbound(postern, sink)
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    wait_delivered(p, qid)
    [txn] = sink.snapshot()
    # Opportunistic does not verify the certificate (self-signed here).
    assert txn["tls"], "delivered without STARTTLS: %r" % sink.lines


def test_outbound_none_never_starttls(pki, tls_sinks, postern):
    sink = tls_sinks(cert=pki.server.cert, key=pki.server.key)
    p = outbound(postern, sink, 'tls = "none";')
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    wait_delivered(p, qid)
    [txn] = sink.snapshot()
    assert not txn["tls"] and sink.commands("STARTTLS") == []
    assert sink.handshakes() == []


def assert_deferred_never_sent(p, sink, qid, result, attempts=2):
    """At least attempts deferrals (4.x.x) of qid, the message still queued,
    nothing of it at the sink (no MAIL at all: never sent in plaintext)."""
    def outcome():
        done = events(p, "deliver", id=qid) + events(p, "bounce", id=qid)
        assert not done, "not deferred: %s\nsink got: %r" % (done[0]["_line"], sink.lines)
        return len(events(p, "defer", id=qid)) >= attempts
    wait_until(outcome, 8, what="%d deferrals of %s" % (attempts, qid))
    defers = events(p, "defer", id=qid)
    for d in defers:
        assert d["status"].startswith("4."), d["_line"]
    assert sink.commands("MAIL") == [] and sink.snapshot() == [], sink.lines
    assert p.messages() == [qid]
    assert events(p, "deliver") == []
    wait_tls_out(p, result, attempts)
    wait_until(lambda: metric(fetch_metrics(p.mport), "postern_tls_outbound_total",
                              send_connector="Smart", result=result) >= attempts, 5,
               what="postern_tls_outbound_total{result=%s} >= %d" % (result, attempts))
    assert metric(fetch_metrics(p.mport), "postern_tls_outbound_total",
                  send_connector="Smart", result="ok") == 0


def test_outbound_required_not_offered_defers(pki, tls_sinks, postern):
    sink = tls_sinks(starttls=False)
    p = outbound(postern, sink, 'tls = "required";')
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    assert_deferred_never_sent(p, sink, qid, "not_offered")
    assert sink.commands("STARTTLS") == []


def test_outbound_required_handshake_failure_defers(pki, tls_sinks, postern):
    sink = tls_sinks(handshake="garbage")
    p = outbound(postern, sink, 'tls = "required";')
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    assert_deferred_never_sent(p, sink, qid, "failed")
    assert len(sink.commands("STARTTLS")) >= 2


def test_outbound_required_does_not_verify(pki, tls_sinks, postern):
    sink = tls_sinks(cert=pki.self_signed.cert, key=pki.self_signed.key)
    p = outbound(postern, sink, 'tls = "required";')
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    wait_delivered(p, qid)
    [txn] = sink.snapshot()
    assert txn["tls"], "delivered without STARTTLS: %r" % sink.lines
    assert body_of(txn) == BODY


def test_outbound_verify_ok_sends_sni(pki, tls_sinks, postern):
    sink = tls_sinks(cert=pki.server.cert, key=pki.server.key)
    p = outbound(postern, sink, 'tls = "verify"; tls_ca_file = "%s"; '
                 'tls_server_name = "mx.test.example";' % pki.ca.cert)
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    wait_delivered(p, qid)
    [txn] = sink.snapshot()
    assert txn["tls"], "delivered without STARTTLS: %r" % sink.lines
    assert txn["sni"] == "mx.test.example", txn
    assert body_of(txn) == BODY
    wait_tls_out(p, "ok")
    assert metric(fetch_metrics(p.mport), "postern_tls_outbound_total",
                  send_connector="Smart", result="ok") == 1


@pytest.mark.parametrize("cert,result", [("self_signed", "untrusted"),
                                         ("wrong_name", "name_mismatch")])
def test_outbound_verify_failure_defers(pki, tls_sinks, postern, cert, result):
    c = getattr(pki, cert)
    sink = tls_sinks(cert=c.cert, key=c.key)
    p = outbound(postern, sink, 'tls = "verify"; tls_ca_file = "%s"; '
                 'tls_server_name = "mx.test.example";' % pki.ca.cert)
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    assert_deferred_never_sent(p, sink, qid, result)


def test_outbound_client_certificate(pki, tls_sinks, postern):
    sink = tls_sinks(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert)
    p = outbound(postern, sink, 'tls_certificate = "%s"; tls_key = "%s";'
                 % (pki.client.cert, pki.client.key))
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    wait_delivered(p, qid)
    [txn] = sink.snapshot()
    assert txn["tls"], "delivered without STARTTLS: %r" % sink.lines
    assert txn["client_cn"] == "client.test.example", txn


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_outbound_session_resumption(pki, tls_sinks, postern, version):
    v = ssl.TLSVersion.TLSv1_2 if version == "TLSv1.2" else ssl.TLSVersion.TLSv1_3
    sink = tls_sinks(cert=pki.server.cert, key=pki.server.key, min_version=v, max_version=v)
    p = outbound(postern, sink, "max_messages_per_connection = 1;")
    # Both messages over one inbound connection: the same worker queues and
    # delivers them, one after the other, on two outbound connections.
    with RawClient(p.port, "127.0.0.10") as c:
        c.cmd("EHLO client.example")
        first = send_message(c, BODY)
        wait_delivered(p, first)
        second = send_message(c, BODY)
        wait_delivered(p, second)
        assert c.cmd("QUIT") == R_QUIT
    hs = sink.handshakes()
    assert [h["version"] for h in hs] == [version, version], hs
    assert [h["resumed"] for h in hs] == [False, True], hs
    assert sink.connections == 2
    assert [t["resumed"] for t in sink.snapshot()] == [False, True]
