"""SMTP AUTH (DESIGN B.8, RFC 4954): inbound on receive connectors
(auth_users_file with crypt(3) hashes, PLAIN and LOGIN, only inside TLS
unless allow_auth_without_tls, every reply of the exchange, the tarpit
and max_logon_failures, the "authenticated" permission group's relay
rights, RFC 3207's reset, Received: with ESMTPSA/ESMTPA, the envelope's
auth: line, log lines that never show a secret, metrics, the per-user
message rate, reload and --check) and outbound on send connectors (auth =
{ mechanism = plain|login|xoauth2; ... } against auth_sink.AuthSink:
success, wrong credentials defer, a rotated token file, no credentials
outside TLS, 432/421 back off). Peers: raw sockets, Python's smtplib and
swaks. Certificates are made at run time (tlsutil.py)."""
import base64
import os
import re
import signal
import smtplib
import subprocess
import time
import warnings

import pytest

import tlsutil
from auth_sink import (AuthSink, R_SINK_AUTH_FAILED, R_THREAD_LIMIT_421,
                       R_THREAD_LIMIT_432)
from conftest import (BINARY, assert_config_error, check_config, R_BAD_SEQUENCE, R_MAIL_OK, R_NOT_AUTHENTICATED, R_QUIT,
                      R_RCPT_OK, R_START_DATA, R_TOO_MANY_ERRORS, R_UNABLE_TO_RELAY,
                      R_UNRECOGNIZED, SLOW, Postern, free_port, wait_until)
from test_delivery import config, events, smart, submit, wait_event
from test_tls import (BODY, QUEUED, TlsClient, body_of, client_ctx, ctl, fetch_metrics, metric,
                      need, received_header, tls_keys)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt   # SHA-512 hashes to compare with (deprecated in 3.11, gone in 3.13)

R_AUTH_OK = "235 2.7.0 Authentication successful"
R_AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
R_AUTH_NEED_TLS = "538 5.7.11 Encryption required for requested authentication mechanism"
R_AUTH_CANCELLED = "501 5.0.0 Authentication cancelled"
R_AUTH_BAD_RESPONSE = "501 5.5.2 Cannot decode response"
R_AUTH_MECHANISM = "504 5.5.4 Unrecognized authentication type"
R_RATE = ("421 4.4.2 Message submission rate for this client has exceeded the "
          "configured limit")
C_USERNAME = "334 VXNlcm5hbWU6"     # base64("Username:")
C_PASSWORD = "334 UGFzc3dvcmQ6"     # base64("Password:")

SWAKS = "/usr/bin/swaks"
SUB_RANGE = "127.0.0.10-127.0.0.99"   # the AUTH connector's clients
# Distinctive secrets, so that a grep of the logs for them means something.
ALICE_PW = "Alice-s3cret-Zq9vX"
BOB_PW = "Bob-s3cret-Kp4wY"
WRONG_PW = "Wr0ng-guess-Hh7uT"


def b64(data):
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def plain(user, password, authz=""):
    return b64("%s\0%s\0%s" % (authz, user, password))


# ---------------------------------------------------------------------------
# Certificates, users files and configuration


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return tlsutil.make_pki(tmp_path_factory.mktemp("pki"))


def hash_password(password):
    """postern --hash-password: the password on stdin with one newline."""
    r = subprocess.run([BINARY, "--hash-password"], input=(password + "\n").encode(),
                       capture_output=True, timeout=30 * SLOW)
    assert r.returncode == 0, r.stderr.decode()
    h = r.stdout.decode().strip()
    assert h.startswith("$y$") and "\n" not in h, h
    return h


_HASHES = {}


def users_file(path, users, extra=""):
    """A users file: name:hash a line (hashes by postern --hash-password,
    cached per password), with a comment line."""
    lines = ["# test users"]
    for name, pw in users.items():
        if pw not in _HASHES:
            _HASHES[pw] = hash_password(pw)
        lines.append("%s:%s" % (name, _HASHES[pw]))
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def receive(*connectors):
    return "receive_connectors = (\n  " + ",\n  ".join(connectors) + "\n);\n"


def rconn(name, ranges, perms, extra=""):
    return ('{ name = "%s"; bindings = [ "127.0.0.1:{port}" ];\n'
            '    remote_ip_ranges = [ %s ]; permission_groups = [ %s ];\n    %s }'
            % (name, ", ".join('"%s"' % r for r in ranges),
               ", ".join('"%s"' % g for g in perms), extra))


def auth_server(postern, tmp_path, pki, extra="", perms=("authenticated",), tls=True,
                users=None, frontend_extra="", **kw):
    """A "Submission" connector for SUB_RANGE with AUTH (alice and bob by
    default) and, unless tls=False, the server certificate; a plain
    anonymous "Frontend" for everyone else. The server gets .users (the
    file) and .mport (metrics)."""
    uf = users_file(tmp_path / ("users%d" % len(list(tmp_path.glob("users*")))),
                    users if users is not None else {"alice": ALICE_PW, "bob": BOB_PW})
    keys = tls_keys(pki.server) if tls else ""
    mport = free_port()
    server_extra = '  metrics_listen = "127.0.0.1:%d";\n' % mport + kw.pop("server_extra", "")
    p = postern(receive(rconn("Frontend", ["0.0.0.0/0"], ["anonymous"], frontend_extra),
                        rconn("Submission", [SUB_RANGE], perms,
                              '%s auth_users_file = "%s"; %s' % (keys, uf, extra))),
                server_extra=server_extra, **kw)
    p.users, p.mport = uf, mport
    return p


def ehlo_auth_line(reply):
    """The AUTH keyword's line of an EHLO reply (without 250-), or None."""
    lines = [reply] if isinstance(reply, str) else reply
    found = [l[4:] for l in lines if l[4:].upper().startswith("AUTH")]
    assert len(found) <= 1, lines
    return found[0] if found else None


def tls_session(p, source="127.0.0.10", pki=None, ctx=None):
    """Connected, EHLO, STARTTLS, EHLO: the client and its second EHLO."""
    c = TlsClient(p.port, source)
    c.ehlo()
    c.starttls(ctx or client_ctx(pki))
    return c, c.ehlo()


def login(c, user, password, how="plain"):
    """One AUTH exchange: the final reply."""
    if how == "plain":
        return c.cmd("AUTH PLAIN " + plain(user, password))
    if how == "plain-challenge":
        assert c.cmd("AUTH PLAIN") == "334 "
        return c.cmd(plain(user, password))
    if how == "login":
        assert c.cmd("AUTH LOGIN") == C_USERNAME
        assert c.cmd(b64(user)) == C_PASSWORD
        return c.cmd(b64(password))
    if how == "login-initial":
        assert c.cmd("AUTH LOGIN " + b64(user)) == C_PASSWORD
        return c.cmd(b64(password))
    raise AssertionError(how)


def send(c, rcpt="x@other.example", body=b"Subject: auth\r\n\r\nauthenticated\r\n"):
    assert c.cmd("MAIL FROM:<app@client.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<%s>" % rcpt) == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    c.send(body + b".\r\n")
    r = c.reply()
    m = QUEUED.match(r)
    assert m, r
    return m.group(1)


def auth_events(p, **match):
    """Inbound event=auth lines (outbound ones say dir=out)."""
    return [e for e in events(p, "auth", **match) if e.get("dir") != "out"]


def out_auth_events(p, **match):
    return events(p, "auth", dir="out", **match)


def envelope(p, mid):
    """The stored envelope block of a message (before Postern's Received:),
    with LF line ends."""
    data = p.read_message(mid)
    i = data.find(b"Received: from ")
    assert i > 0, data[:300]
    return data[:i].decode(errors="replace").replace("\r\n", "\n")


def assert_no_secret(p, *secrets):
    text = p.stderr()
    for s in secrets:
        for form in (s, b64(s)):
            assert form not in text, "secret %r found in postern's log" % form


# ---------------------------------------------------------------------------
# Inbound: where AUTH is offered


def test_auth_offered_only_inside_tls_and_not_after_success(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki)
    with TlsClient(p.port, "127.0.0.10") as c:
        r = c.ehlo()
        assert ehlo_auth_line(r) is None, r
        assert "250-STARTTLS" in r or "250 STARTTLS" in r, r
        assert c.cmd("AUTH PLAIN " + plain("alice", ALICE_PW)) == R_AUTH_NEED_TLS
        assert c.cmd("AUTH LOGIN") == R_AUTH_NEED_TLS
        c.starttls(client_ctx(pki))
        r = c.ehlo()
        assert ehlo_auth_line(r) == "AUTH PLAIN LOGIN", r
        assert login(c, "alice", ALICE_PW) == R_AUTH_OK
        r = c.ehlo()
        assert ehlo_auth_line(r) is None, r
        assert c.cmd("QUIT") == R_QUIT
    # The frontend has no auth_users_file: AUTH is no command there.
    with TlsClient(p.port, "127.0.0.150") as c:
        r = c.ehlo()
        assert ehlo_auth_line(r) is None, r
        assert c.cmd("AUTH PLAIN " + plain("alice", ALICE_PW)) == R_UNRECOGNIZED
        assert c.cmd("QUIT") == R_QUIT
    # The decline before TLS is not a logon failure, and no password was checked.
    assert auth_events(p, result="failed") == []


def test_auth_mechanisms_restricts_the_offer(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki, 'auth_mechanisms = [ "LOGIN" ];')
    c, r = tls_session(p, pki=pki)
    assert ehlo_auth_line(r) == "AUTH LOGIN", r
    assert c.cmd("AUTH PLAIN " + plain("alice", ALICE_PW)) == R_AUTH_MECHANISM
    assert login(c, "alice", ALICE_PW, "login") == R_AUTH_OK
    c.close()


# ---------------------------------------------------------------------------
# Inbound: the exchange


@pytest.mark.parametrize("how", ["plain", "plain-challenge", "login", "login-initial"])
def test_auth_success_relays_and_is_recorded(pki, postern, tmp_path, how):
    p = auth_server(postern, tmp_path, pki)
    c, _ = tls_session(p, pki=pki)
    assert login(c, "alice", ALICE_PW, how) == R_AUTH_OK
    # Relay: other.example is not an accepted domain.
    mid = send(c)
    assert c.cmd("QUIT") == R_QUIT
    c.close()
    hdr = received_header(p, mid)
    assert re.search(r"\bwith ESMTPSA id %s\b" % mid, hdr), hdr
    env = envelope(p, mid)
    assert re.search(r"(^|\n)auth: alice\n", env), env
    [ev] = wait_event(p, "auth", result="ok")
    assert (ev["client"], ev["connector"], ev["user"], ev["mechanism"]) == \
        ("127.0.0.10", "Submission", "alice", "LOGIN" if how.startswith("login") else "PLAIN"), \
        ev["_line"]
    assert re.fullmatch(r"\d+(\.\d+)?", ev.get("cost_ms", "")), ev["_line"]
    [rec] = wait_event(p, "receive", id=mid)
    assert rec.get("auth") == "alice", rec["_line"]
    assert_no_secret(p, ALICE_PW)


def test_empty_initial_response_is_an_empty_username(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki)
    c, _ = tls_session(p, pki=pki)
    # "=": the initial response is empty, so LOGIN goes straight to the password.
    assert c.cmd("AUTH LOGIN =") == C_PASSWORD
    assert c.cmd(b64(ALICE_PW)) == R_AUTH_INVALID
    assert login(c, "alice", ALICE_PW, "login") == R_AUTH_OK
    c.close()


def test_cancel_and_undecodable_responses(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki, "max_logon_failures = 10;")
    c, _ = tls_session(p, pki=pki)
    assert c.cmd("AUTH PLAIN") == "334 "
    assert c.cmd("*") == R_AUTH_CANCELLED
    assert c.cmd("AUTH LOGIN") == C_USERNAME
    assert c.cmd("*") == R_AUTH_CANCELLED
    assert c.cmd("AUTH LOGIN " + b64("alice")) == C_PASSWORD
    assert c.cmd("*") == R_AUTH_CANCELLED
    assert c.cmd("AUTH PLAIN !!not*base64") == R_AUTH_BAD_RESPONSE
    assert c.cmd("AUTH PLAIN") == "334 "
    assert c.cmd("%%%") == R_AUTH_BAD_RESPONSE
    assert c.cmd("AUTH LOGIN") == C_USERNAME
    assert c.cmd("not base64!") == R_AUTH_BAD_RESPONSE
    # The session is still usable: a good AUTH now succeeds.
    assert login(c, "alice", ALICE_PW) == R_AUTH_OK
    c.close()


def test_unknown_mechanism(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki)
    c, _ = tls_session(p, pki=pki)
    for mech in ("CRAM-MD5", "XOAUTH2", "GSSAPI", "NOSUCH"):
        assert c.cmd("AUTH %s" % mech) == R_AUTH_MECHANISM, mech
    assert login(c, "alice", ALICE_PW) == R_AUTH_OK
    c.close()


def test_auth_again_or_inside_a_transaction_is_bad_sequence(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki, perms=("anonymous", "authenticated"))
    c, _ = tls_session(p, pki=pki)
    assert c.cmd("MAIL FROM:<app@client.example>") == R_MAIL_OK
    assert c.cmd("AUTH PLAIN " + plain("alice", ALICE_PW)) == R_BAD_SEQUENCE
    assert c.cmd("RSET").startswith("250 ")
    assert login(c, "alice", ALICE_PW) == R_AUTH_OK
    assert c.cmd("AUTH PLAIN " + plain("bob", BOB_PW)) == R_BAD_SEQUENCE
    assert c.cmd("AUTH LOGIN") == R_BAD_SEQUENCE
    mid = send(c)
    c.close()
    assert re.search(r"(^|\n)auth: alice\n", envelope(p, mid))
    assert len(auth_events(p)) == 1


def test_wrong_password_and_unknown_user(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki)
    c, _ = tls_session(p, pki=pki)
    assert login(c, "alice", WRONG_PW) == R_AUTH_INVALID
    assert login(c, "nobody", ALICE_PW, "login") == R_AUTH_INVALID
    # Not authenticated: MAIL is refused on an authenticated-only connector.
    assert c.cmd("MAIL FROM:<app@client.example>") == R_NOT_AUTHENTICATED
    c.close()
    wait_until(lambda: len(auth_events(p, result="failed")) == 2, 5,
               what="two event=auth result=failed")
    users = [(e["user"], e["mechanism"]) for e in auth_events(p, result="failed")]
    assert users == [("alice", "PLAIN"), ("nobody", "LOGIN")], users
    assert_no_secret(p, WRONG_PW, ALICE_PW)


def test_tarpit_before_535(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki, 'tarpit_interval = "1s";',
                    frontend_extra='tarpit_interval = "1s";')
    c, _ = tls_session(p, pki=pki)
    t0 = time.monotonic()
    assert login(c, "alice", WRONG_PW) == R_AUTH_INVALID
    waited = time.monotonic() - t0
    assert 0.8 <= waited < 4 * SLOW, waited
    t0 = time.monotonic()
    assert login(c, "alice", ALICE_PW) == R_AUTH_OK
    assert time.monotonic() - t0 < 0.8 * SLOW
    c.close()


@pytest.mark.parametrize("limit", [None, 2])
def test_too_many_logon_failures_closes(pki, postern, tmp_path, limit):
    extra = "" if limit is None else "max_logon_failures = %d;" % limit
    p = auth_server(postern, tmp_path, pki, extra)
    n = limit or 3
    c, _ = tls_session(p, pki=pki)
    for i in range(n - 1):
        assert login(c, "alice", WRONG_PW + str(i)) == R_AUTH_INVALID, i
    assert login(c, "alice", WRONG_PW, "login") == R_TOO_MANY_ERRORS
    c.expect_closed()
    c.close()
    wait_until(lambda: len(auth_events(p, result="failed")) == n, 5,
               what="%d event=auth result=failed" % n)
    # A new connection starts from zero.
    d, _ = tls_session(p, pki=pki)
    assert login(d, "alice", ALICE_PW) == R_AUTH_OK
    d.close()


# ---------------------------------------------------------------------------
# Inbound: what AUTH grants


def test_authenticated_group_alone_needs_auth(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki)
    c, _ = tls_session(p, pki=pki)
    assert c.cmd("MAIL FROM:<app@client.example>") == R_NOT_AUTHENTICATED
    assert login(c, "bob", BOB_PW, "login") == R_AUTH_OK
    mid = send(c, rcpt="someone@far-away.example")
    c.close()
    assert re.search(r"(^|\n)auth: bob\n", envelope(p, mid))


def test_anonymous_plus_authenticated(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki, perms=("anonymous", "authenticated"))
    c, _ = tls_session(p, pki=pki)
    assert c.cmd("MAIL FROM:<app@client.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@other.example>") == R_UNABLE_TO_RELAY
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert c.cmd("RSET").startswith("250 ")
    assert login(c, "alice", ALICE_PW) == R_AUTH_OK
    mid = send(c, rcpt="x@other.example")
    c.close()
    assert re.search(r"(^|\n)auth: alice\n", envelope(p, mid))


def test_starttls_forgets_earlier_auth(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki, "allow_auth_without_tls = true;")
    with TlsClient(p.port, "127.0.0.10") as c:
        r = c.ehlo()
        assert ehlo_auth_line(r) == "AUTH PLAIN LOGIN", r
        assert login(c, "alice", ALICE_PW) == R_AUTH_OK
        c.starttls(client_ctx(pki))
        r = c.ehlo()
        assert ehlo_auth_line(r) == "AUTH PLAIN LOGIN", r   # offered again: forgotten
        assert c.cmd("MAIL FROM:<app@client.example>") == R_NOT_AUTHENTICATED
        assert login(c, "bob", BOB_PW) == R_AUTH_OK
        mid = send(c)
    hdr = received_header(p, mid)
    assert re.search(r"\bwith ESMTPSA id %s\b" % mid, hdr), hdr
    assert re.search(r"(^|\n)auth: bob\n", envelope(p, mid))


def test_auth_without_tls_gives_esmtpa(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki, "allow_auth_without_tls = true;", tls=False)
    with TlsClient(p.port, "127.0.0.10") as c:
        r = c.ehlo()
        assert ehlo_auth_line(r) == "AUTH PLAIN LOGIN", r
        assert not any("STARTTLS" in l for l in r), r
        assert login(c, "alice", ALICE_PW, "login-initial") == R_AUTH_OK
        mid = send(c)
        assert c.cmd("QUIT") == R_QUIT
    hdr = received_header(p, mid)
    assert re.search(r"\bwith ESMTPA id %s\b" % mid, hdr), hdr
    assert "ESMTPSA" not in hdr and "(using " not in hdr, hdr


# ---------------------------------------------------------------------------
# Inbound: other clients


def test_smtplib_login_over_starttls(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki)
    ctx = client_ctx(pki, check_hostname=False)   # smtplib sends 127.0.0.1 as the name
    s = smtplib.SMTP("127.0.0.1", p.port, source_address=("127.0.0.11", 0), timeout=10 * SLOW)
    try:
        s.ehlo("client.example")
        assert "auth" not in s.esmtp_features
        s.starttls(context=ctx)
        s.ehlo("client.example")
        assert s.esmtp_features.get("auth", "").split() == ["PLAIN", "LOGIN"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("alice", WRONG_PW)
        assert (e.value.smtp_code, e.value.smtp_error.decode()) == (535, R_AUTH_INVALID[4:])
        code, text = s.login("alice", ALICE_PW)
        assert (code, text.decode()) == (235, R_AUTH_OK[4:])
        refused = s.sendmail("app@client.example", ["x@other.example"],
                             "Subject: smtplib\r\n\r\nlogin\r\n")
        assert refused == {}
        s.quit()
    finally:
        s.close()
    wait_event(p, "receive", auth="alice")


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_auth_over_tls(pki, postern, tmp_path, mech):
    need(SWAKS, "swaks")
    p = auth_server(postern, tmp_path, pki)
    r = subprocess.run([SWAKS, "--server", "127.0.0.1:%d" % p.port,
                        "--local-interface", "127.0.0.12", "--ehlo", "client.example",
                        "--tls", "--tls-verify", "--tls-ca-path", pki.ca.cert,
                        "--tls-sni", "relay.test.example",
                        "--auth", mech, "--auth-user", "alice", "--auth-password", ALICE_PW,
                        "--from", "app@client.example", "--to", "x@other.example",
                        "--header", "Subject: swaks AUTH %s" % mech],
                       capture_output=True, timeout=30 * SLOW, stdin=subprocess.DEVNULL)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert "<~  %s\n" % R_AUTH_OK in out, out
    m = re.search(r"<~  250 2\.6\.0 <([0-9A-F]+)> Queued mail for delivery", out)
    assert m, out
    hdr = received_header(p, m.group(1))
    assert re.search(r"\bwith ESMTPSA id\b", hdr), hdr
    [ev] = wait_event(p, "auth", result="ok")
    assert (ev["user"], ev["mechanism"]) == ("alice", mech), ev["_line"]


# ---------------------------------------------------------------------------
# Inbound: logs, metrics, rate


def test_protocol_log_masks_auth_and_no_secret_anywhere(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki, "protocol_log = true; max_logon_failures = 10;")
    c, _ = tls_session(p, pki=pki)
    for how in ("plain", "plain-challenge", "login", "login-initial"):
        assert login(c, "alice", WRONG_PW, how) == R_AUTH_INVALID, how
    assert login(c, "alice", ALICE_PW, "login") == R_AUTH_OK
    send(c)
    c.close()
    d, _ = tls_session(p, "127.0.0.11", pki=pki)
    assert login(d, "bob", BOB_PW, "plain") == R_AUTH_OK
    d.close()
    wait_until(lambda: len(auth_events(p)) == 6, 5, what="six event=auth lines")
    smtp_in = [e["line"] for e in events(p, "smtp", dir="in")]
    auth_lines = [l for l in smtp_in if l.upper().startswith("AUTH")]
    assert "AUTH PLAIN ****" in auth_lines and "AUTH LOGIN ****" in auth_lines, smtp_in
    assert all(l in ("AUTH PLAIN", "AUTH LOGIN", "AUTH PLAIN ****", "AUTH LOGIN ****")
               for l in auth_lines), auth_lines
    for secret in (ALICE_PW, BOB_PW, WRONG_PW):
        assert_no_secret(p, secret)
    text = p.stderr()
    for blob in (plain("alice", WRONG_PW), plain("alice", ALICE_PW), plain("bob", BOB_PW)):
        assert blob not in text, blob


def test_auth_metrics(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki)
    c, _ = tls_session(p, pki=pki)
    assert login(c, "alice", WRONG_PW) == R_AUTH_INVALID
    assert login(c, "nobody", WRONG_PW) == R_AUTH_INVALID
    assert login(c, "alice", ALICE_PW) == R_AUTH_OK
    c.close()
    wait_until(lambda: metric(fetch_metrics(p.mport), "postern_auth_total",
                              connector="Submission", result="ok") == 1, 5,
               what="postern_auth_total{result=ok} 1")
    body = fetch_metrics(p.mport)
    assert metric(body, "postern_auth_total", connector="Submission", result="failed") == 2
    assert metric(body, "postern_auth_total", connector="Submission", result="temporary") == 0
    assert metric(body, "postern_auth_total", connector="Frontend", result="ok") == 0


def send_one(c, n, rcpt="x@other.example"):
    """MAIL..DATA; the MAIL reply if it is not 250, else the final reply."""
    r = c.cmd("MAIL FROM:<app@client.example>")
    if not r.startswith("250 "):
        return r
    assert c.cmd("RCPT TO:<%s>" % rcpt) == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    c.send(b"Subject: %d\r\n\r\nrate\r\n.\r\n" % n)
    return c.reply()


def test_message_rate_per_user(pki, postern, tmp_path):
    sock = tmp_path / "stats.sock"
    p = auth_server(postern, tmp_path, pki, 'message_rate_limit = 3; message_rate_source = "user";',
                    perms=("anonymous", "authenticated"),
                    server_extra='  stats_socket = "%s";\n' % sock)
    # Three from alice, then the fourth is refused and the connection ends.
    c, _ = tls_session(p, "127.0.0.10", pki=pki)
    assert login(c, "alice", ALICE_PW) == R_AUTH_OK
    for n in range(3):
        assert send_one(c, n).startswith("250 2.6.0 "), n
    assert send_one(c, 3) == R_RATE
    c.expect_closed()
    c.close()
    # bob, same address: his own three.
    c, _ = tls_session(p, "127.0.0.10", pki=pki)
    assert login(c, "bob", BOB_PW, "login") == R_AUTH_OK
    for n in range(3):
        assert send_one(c, 10 + n).startswith("250 2.6.0 "), n
    assert send_one(c, 13) == R_RATE
    c.close()
    # Unauthenticated, same address: the address's own bucket.
    c, _ = tls_session(p, "127.0.0.10", pki=pki)
    for n in range(3):
        assert send_one(c, 20 + n, rcpt="x@corp.example").startswith("250 2.6.0 "), n
    assert send_one(c, 23, rcpt="x@corp.example") == R_RATE
    c.close()
    # alice again, from another address: still her bucket, still empty.
    c, _ = tls_session(p, "127.0.0.11", pki=pki)
    assert login(c, "alice", ALICE_PW) == R_AUTH_OK
    assert send_one(c, 30) == R_RATE
    c.close()
    assert len(p.messages()) == 9
    throttle = ctl(sock, "show", "throttle")[1]
    for key in ("user:alice", "user:bob", "127.0.0.10"):
        assert [l for l in throttle.split("\n") if " %s " % key in " %s " % l], (key, throttle)


# ---------------------------------------------------------------------------
# Inbound: users file, reload, configuration errors


def test_sha512_hash_and_comments(pki, postern, tmp_path):
    h = crypt.crypt("carol-pw-6", crypt.mksalt(crypt.METHOD_SHA512))
    assert h.startswith("$6$")
    p = auth_server(postern, tmp_path, pki)
    p.users.write_text(p.users.read_text() + "# carol has a SHA-512 hash\ncarol:%s\n" % h)
    p.signal(signal.SIGHUP)
    wait_event(p, "reload", status="ok")
    c, _ = tls_session(p, pki=pki)
    assert login(c, "carol", "carol-pw-6 ") == R_AUTH_INVALID
    assert login(c, "carol", "carol-pw-6") == R_AUTH_OK
    c.close()


def test_reload_rereads_users_file(pki, postern, tmp_path):
    p = auth_server(postern, tmp_path, pki, users={"alice": ALICE_PW})
    c, _ = tls_session(p, pki=pki)
    assert login(c, "bob", BOB_PW) == R_AUTH_INVALID
    c.close()
    users_file(p.users, {"alice": ALICE_PW, "bob": BOB_PW})
    p.signal(signal.SIGHUP)
    wait_event(p, "reload", status="ok")
    c, _ = tls_session(p, pki=pki)
    assert login(c, "bob", BOB_PW) == R_AUTH_OK
    c.close()
    # A bad users file: the reload fails (FILE:LINE), the running users stay.
    good = p.users.read_text()
    p.users.write_text(good + "this line has no colon\n")
    p.signal(signal.SIGHUP)
    [fail] = wait_event(p, "reload", status="failed")
    assert str(p.config) in fail["_line"] or str(p.users) in fail["_line"], fail["_line"]
    c, _ = tls_session(p, pki=pki)
    assert login(c, "bob", BOB_PW) == R_AUTH_OK
    c.close()
    p.users.unlink()
    p.signal(signal.SIGHUP)
    wait_event(p, "reload", status="failed", count=2)
    c, _ = tls_session(p, pki=pki)
    assert login(c, "alice", ALICE_PW) == R_AUTH_OK
    c.close()


CONFIG_ERRORS = {
    # connector extra, permission groups, word in the message
    "no_authenticated_group": ('{keys} auth_users_file = "{users}";', ["anonymous_relay"],
                               "authenticated"),
    "no_tls_certificate": ('auth_users_file = "{users}";', ["authenticated"],
                           "tls_certificate"),
    "missing_users_file": ('{keys} auth_users_file = "{missing}";', ["authenticated"],
                           "auth_users_file"),
    "bad_users_line": ('{keys} auth_users_file = "{bad}";', ["authenticated"],
                       "auth_users_file"),
    "unknown_mechanism": ('{keys} auth_users_file = "{users}"; auth_mechanisms = [ "CRAM-MD5" ];',
                          ["authenticated"], "auth_mechanisms"),
    "mechanisms_without_users": ('{keys} auth_mechanisms = [ "PLAIN" ];', ["authenticated"],
                                 "auth_users_file"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_auth_config_errors(pki, tmp_path, case):
    extra, perms, word = CONFIG_ERRORS[case]
    users = users_file(tmp_path / "users", {"alice": ALICE_PW})
    bad = tmp_path / "bad-users"
    bad.write_text("alice:%s\nno colon here\n" % _HASHES[ALICE_PW])
    extra = extra.format(keys=tls_keys(pki.server), users=users, bad=bad,
                         missing=tmp_path / "no-such-users")
    pt = Postern(tmp_path, receive(rconn("A", ["127.0.0.0/8"], perms, extra)))
    assert_config_error(pt, word)


def test_valid_auth_config_checks(pki, tmp_path):
    users = users_file(tmp_path / "users", {"alice": ALICE_PW})
    for extra in ('%s auth_users_file = "%s";' % (tls_keys(pki.server), users),
                  'auth_users_file = "%s"; allow_auth_without_tls = true;' % users):
        d = tmp_path / ("ok%d" % len(list(tmp_path.glob("ok*"))))
        d.mkdir()
        pt = Postern(d, receive(rconn("A", ["127.0.0.0/8"], ["anonymous", "authenticated"],
                                      extra)))
        r = check_config(pt)
        assert r.returncode == 0, r.stderr.decode()


def test_hash_password_ignores_one_trailing_newline(pki, postern, tmp_path):
    r = subprocess.run([BINARY, "--hash-password"], input=b"two-lines\n\n",
                       capture_output=True, timeout=30 * SLOW)
    assert r.returncode == 0, r.stderr.decode()
    h = r.stdout.decode().strip()
    assert h.startswith("$y$") and ALICE_PW not in h
    assert crypt.crypt("two-lines\n", h) == h     # only one newline was dropped
    h2 = hash_password("two-lines")
    assert crypt.crypt("two-lines", h2) == h2 and h2 != h


# ---------------------------------------------------------------------------
# Outbound: auth = { ... } on a send connector


OUT_USER = "relay@corp.example"
OUT_PW = "Out-s3cret-Rr2mN"
TOKEN1 = "ya29.first-token-Aa1"
TOKEN2 = "ya29.second-token-after-rotation-Bb2"


@pytest.fixture
def auth_sinks():
    """Factory for AuthSink next hops; closed at teardown. Request it
    before postern so that postern stops first."""
    made = []

    def factory(**kw):
        s = AuthSink(**kw)
        made.append(s)
        return s
    yield factory
    for s in made:
        s.close()


def secret_file(tmp_path, name, secret):
    f = tmp_path / name
    f.write_text(secret + "\n")   # the trailing newline is not part of it
    os.chmod(f, 0o600)
    return f


def outbound_auth(postern, tmp_path, sink, mech, secret=None, extra="", queue=None):
    """A relay whose send connector "Smart" goes to the sink with auth
    (mechanism mech, username OUT_USER, a password_file or token_file with
    secret); metrics on .mport."""
    if mech == "xoauth2":
        f = secret_file(tmp_path, "token", TOKEN1 if secret is None else secret)
        key = 'token_file = "%s";' % f
    else:
        f = secret_file(tmp_path, "password", OUT_PW if secret is None else secret)
        key = 'password_file = "%s";' % f
    auth = 'auth = { mechanism = "%s"; username = "%s"; %s };' % (mech, OUT_USER, key)
    mport = free_port()
    kw = {} if queue is None else {"queue": queue}
    p = postern(config(smart("Smart", ["*"], sink.port, extra=auth + " " + extra), **kw),
                server_extra='  metrics_listen = "127.0.0.1:%d";\n' % mport)
    p.mport, p.secret_file = mport, f
    return p


def out_sink(auth_sinks, pki, **kw):
    kw.setdefault("users", {OUT_USER: OUT_PW})
    kw.setdefault("token", TOKEN1)
    if kw.get("starttls", True):
        kw.setdefault("cert", pki.server.cert)
        kw.setdefault("key", pki.server.key)
    return auth_sinks(**kw)


def log_tail(p):
    return "\n".join(l for l in p.stderr().splitlines() if "event=" in l)[-3000:]


def wait_outcome(p, qid, timeout=10):
    """("deliver"|"bounce"|"defer", first such event) for qid."""
    def outcome():
        for kind in ("deliver", "bounce", "defer"):
            ev = events(p, kind, id=qid)
            if ev:
                return kind, ev[0]
        return None
    return wait_until(outcome, timeout, what="an outcome for %s; log:\n%s" % (qid, log_tail(p)))


def wait_out_metric(p, result, n):
    wait_until(lambda: metric(fetch_metrics(p.mport), "postern_auth_outbound_total",
                              send_connector="Smart", result=result) >= n, 5,
               what="postern_auth_outbound_total{result=%s} >= %d" % (result, n))


@pytest.mark.parametrize("mech", ["plain", "login", "xoauth2"])
def test_outbound_auth_ok(pki, auth_sinks, postern, tmp_path, mech):
    sink = out_sink(auth_sinks, pki)
    p = outbound_auth(postern, tmp_path, sink, mech)
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    kind, ev = wait_outcome(p, qid)
    assert kind == "deliver", "%s: %s\nsink: %r" % (kind, ev["_line"], sink.auth_log())
    [a] = sink.auth_log()
    assert (a["mechanism"], a["user"], a["tls"], a["ok"]) == (mech.upper(), OUT_USER, True, True), a
    [txn] = sink.snapshot()
    assert txn["tls"] and txn["auth_user"] == OUT_USER, txn
    assert body_of(txn) == BODY
    lines = [l for _, l in sink.lines]
    assert lines.index("STARTTLS") < [i for i, l in enumerate(lines)
                                      if l.upper().startswith("AUTH")][0], lines
    [oa] = wait_until(lambda: out_auth_events(p, result="ok"), 5, what="event=auth dir=out ok")
    assert oa.get("send_connector", "Smart") == "Smart", oa["_line"]
    wait_out_metric(p, "ok", 1)
    assert metric(fetch_metrics(p.mport), "postern_auth_outbound_total",
                  send_connector="Smart", result="failed") == 0
    assert_no_secret(p, OUT_PW, TOKEN1)


@pytest.mark.parametrize("mech", ["plain", "login", "xoauth2"])
def test_outbound_wrong_credentials_defer(pki, auth_sinks, postern, tmp_path, mech):
    sink = out_sink(auth_sinks, pki)
    p = outbound_auth(postern, tmp_path, sink, mech, secret="not-the-right-one")
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    kind, ev = wait_outcome(p, qid)
    assert kind == "defer", ev["_line"]
    assert ev["status"].startswith("4."), ev["_line"]
    # Retried later (Postern may also back the destination off, so that
    # wrong credentials do not lock the account), never bounced.
    time.sleep(2)
    assert events(p, "bounce") == [] and events(p, "deliver") == []
    assert all(d["status"].startswith("4.") for d in events(p, "defer", id=qid))
    assert p.messages() == [qid]
    assert sink.snapshot() == [] and sink.commands("MAIL") == [], sink.lines
    auths = sink.auth_log()
    assert auths and all(a["mechanism"] == mech.upper() and a["user"] == OUT_USER and
                         a["tls"] and not a["ok"] for a in auths), auths
    [fa] = out_auth_events(p, result="failed")[:1]
    assert R_SINK_AUTH_FAILED in fa.get("reply", ""), fa["_line"]
    wait_out_metric(p, "failed", 1)
    assert_no_secret(p, "not-the-right-one")


def test_outbound_rotated_token_is_used(pki, auth_sinks, postern, tmp_path):
    sink = out_sink(auth_sinks, pki)
    p = outbound_auth(postern, tmp_path, sink, "xoauth2", extra="max_messages_per_connection = 1;")
    first = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    assert wait_outcome(p, first)[0] == "deliver"
    # The identity provider rotates: the sink now takes only the new token.
    sink.token = TOKEN2
    second = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    kind, ev = wait_outcome(p, second)
    assert kind == "defer", ev["_line"]
    # The new token lands in the file (written beside it, renamed over it).
    tmp = p.secret_file.with_name("token.new")
    tmp.write_text(TOKEN2 + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, p.secret_file)
    wait_until(lambda: events(p, "deliver", id=second), 10,
               what="delivery of %s with the rotated token; log:\n%s" % (second, log_tail(p)))
    auths = sink.auth_log()
    assert [a["ok"] for a in auths][0] is True and auths[-1]["ok"] is True, auths
    assert all(a["mechanism"] == "XOAUTH2" and a["well_formed"] for a in auths), auths
    assert [t["auth_user"] for t in sink.snapshot()] == [OUT_USER, OUT_USER]
    assert_no_secret(p, TOKEN1, TOKEN2)


def test_outbound_no_credentials_without_tls(pki, auth_sinks, postern, tmp_path):
    # The next hop offers AUTH but no STARTTLS; the send connector's tls is
    # the default (opportunistic): nothing is sent, the message waits.
    sink = out_sink(auth_sinks, pki, starttls=False)
    p = outbound_auth(postern, tmp_path, sink, "plain")
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    kind, ev = wait_outcome(p, qid)
    assert kind == "defer", ev["_line"]
    assert ev["status"].startswith("4."), ev["_line"]
    wait_until(lambda: len(events(p, "defer", id=qid)) >= 2, 8, what="a second deferral")
    assert sink.commands("AUTH") == [] and sink.auth_log() == [], sink.lines
    assert sink.commands("MAIL") == [] and sink.snapshot() == []
    assert events(p, "bounce") == [] and p.messages() == [qid]
    assert_no_secret(p, OUT_PW)


def test_outbound_tls_none_sends_credentials_in_plaintext(pki, auth_sinks, postern, tmp_path):
    sink = out_sink(auth_sinks, pki)      # offers STARTTLS, which tls = "none" ignores
    p = outbound_auth(postern, tmp_path, sink, "login", extra='tls = "none";')
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    kind, ev = wait_outcome(p, qid)
    assert kind == "deliver", ev["_line"]
    assert sink.commands("STARTTLS") == []
    [a] = sink.auth_log()
    assert (a["mechanism"], a["user"], a["tls"], a["ok"]) == ("LOGIN", OUT_USER, False, True), a


@pytest.mark.parametrize("reply", [R_THREAD_LIMIT_432, R_THREAD_LIMIT_421])
def test_outbound_thread_limit_backs_off(pki, auth_sinks, postern, tmp_path, reply):
    sink = out_sink(auth_sinks, pki, auth_reply=reply)
    p = outbound_auth(postern, tmp_path, sink, "login")
    qid = submit(p.port, "s@a.test", ["r@other.test"], BODY)
    wait_until(lambda: events(p, "backoff"), 10,
               what="event=backoff after %r; log:\n%s" % (reply, log_tail(p)))
    wait_until(lambda: out_auth_events(p), 5, what="event=auth dir=out")
    fa = out_auth_events(p)[0]
    assert fa["result"] != "ok" and reply[:9] in fa.get("reply", ""), fa["_line"]
    time.sleep(1)
    assert events(p, "bounce") == [] and events(p, "deliver") == []
    assert p.messages() == [qid]
    assert sink.snapshot() == [] and sink.commands("MAIL") == []
    for d in events(p, "defer", id=qid):
        assert d["status"].startswith("4."), d["_line"]
