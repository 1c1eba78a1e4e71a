"""Hostile and broken clients: garbage, huge lines, SMTP smuggling, clients
that vanish or never read, oversized messages. The server must answer with
the right replies, store nothing partial and stay alive and bounded."""
import random
import socket
import threading
import time

import pytest

from conftest import (HOSTNAME, R_BAD_SEQUENCE, R_BARE_LF, R_LINE_TOO_LONG,
                      R_MAIL_OK, R_NOOP_OK, R_QUIT, R_RCPT_OK, R_START_DATA,
                      R_TOO_BIG, R_TOO_MANY_ERRORS, SLOW, rss_kb, wait_until)

RSS_LIMIT_KB = 200 * 1024


def assert_serves(port, smtp_raw, source="127.0.0.50"):
    """A fresh client gets a full, prompt dialogue."""
    c = smtp_raw(port, source, timeout=5)
    assert c.cmd("EHLO fresh.example")[0] == "250-%s Hello [%s]" % (HOSTNAME, source)
    assert c.cmd("NOOP") == R_NOOP_OK
    assert c.cmd("QUIT") == R_QUIT
    c.expect_closed()


def sender_thread(sock, data):
    """Writes data in the background, tolerating the server closing on us."""
    def run():
        try:
            sock.sendall(data)
        except OSError:
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_binary_garbage(postern, smtp_raw):
    p = postern()
    rnd = random.Random(5321)
    garbage = bytes(rnd.getrandbits(8) for _ in range(64 * 1024))
    assert b"\x00" in garbage and b"\n" in garbage
    c = smtp_raw(p.port, "127.0.0.50")
    t = sender_thread(c.sock, garbage)
    lines = []
    while True:
        ln = c.line(timeout=10)
        if ln is None:
            break
        lines.append(ln)
        assert len(lines) < 100, lines
    t.join(timeout=10 * SLOW)
    # max_protocol_errors = 5: five 5xx replies, the sixth error closes.
    assert len(lines) == 6, lines
    assert all(ln[0] == "5" for ln in lines[:5]), lines
    assert lines[5] == R_TOO_MANY_ERRORS
    assert p.proc.poll() is None
    assert_serves(p.port, smtp_raw)
    assert p.messages() == []


def test_megabyte_line(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    c.send(b"A" * (1024 * 1024))
    c.send(b"\r\n")
    assert c.reply(timeout=20) == R_LINE_TOO_LONG
    # The session goes on, in a sane state.
    assert c.cmd("NOOP") == R_NOOP_OK
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    # A too-long line in the middle of the transaction, then more of them.
    c.send(b"RCPT TO:<" + b"x" * (300 * 1024) + b"@corp.example>\r\n")
    assert c.reply(timeout=20) == R_LINE_TOO_LONG
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert rss_kb(p.pid) < RSS_LIMIT_KB
    assert c.cmd("QUIT") == R_QUIT
    assert_serves(p.port, smtp_raw)


SMUGGLE = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "LF.CRLF": b"\n.\r\n",
}


@pytest.mark.parametrize("fake_end", list(SMUGGLE.values()), ids=list(SMUGGLE))
def test_smuggling_never_ends_data(postern, smtp_raw, fake_end):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    body = (b"Subject: innocent\r\n\r\nhello" + fake_end +
            b"MAIL FROM:<evil@b.example>\r\n"
            b"RCPT TO:<victim@corp.example>\r\n"
            b"DATA\r\n"
            b"Subject: smuggled\r\n\r\nevil\r\n")
    c.send(body + b".\r\n")
    assert c.reply() == R_BARE_LF
    # The transaction is gone and the smuggled MAIL never ran: RCPT is out
    # of sequence, and nothing else was answered in between.
    assert c.cmd("RCPT TO:<x@corp.example>") == R_BAD_SEQUENCE
    assert c.cmd("QUIT") == R_QUIT
    c.expect_closed()
    assert p.messages() == []
    p.assert_spool_clean()


def test_smuggling_split_across_writes(postern, smtp_raw):
    """The fake end marker arrives in pieces: still never the end of data."""
    p = postern()
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    for piece in [b"Subject: s\r\n\r\nhello\n", b".", b"\r", b"\nMAIL FROM:<e@b.example>\r\n"]:
        c.send(piece)
        time.sleep(0.05)
    c.send(b"NOOP\r\n.\r\n")
    assert c.reply() == R_BARE_LF
    assert c.cmd("NOOP") == R_NOOP_OK
    assert c.cmd("QUIT") == R_QUIT
    assert p.messages() == []


def test_client_vanishes_mid_data(postern, smtp_raw):
    p = postern()
    for _ in range(3):
        c = smtp_raw(p.port, "127.0.0.50")
        assert c.cmd("EHLO client.example")[0].startswith("250-")
        c.send("MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n")
        assert c.replies(3) == [R_MAIL_OK, R_RCPT_OK, R_START_DATA]
        c.send(b"Subject: partial\r\n\r\n" + b"some body text\r\n" * 1000 + b"no end")
        c.close()
    # The partial messages' bytes may be in a segment, but never as a
    # message: recovery discards them whole.
    assert p.messages() == []
    assert_serves(p.port, smtp_raw)
    p.stop()
    assert p.messages() == []
    assert p.spool_stats()["partial"] == 3


def test_client_that_never_reads(postern, smtp_raw):
    p = postern()
    stuck = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.bind(("127.0.0.20", 0))
    stuck.connect(("127.0.0.1", p.port))
    stuck.settimeout(3 * SLOW)   # the writer gives up once we stop reading
    junk = b"".join(b"VRFY junk-%07d-%s\r\n" % (i, b"j" * 40)
                    for i in range(5 * 1024 * 1024 // 64))
    payload = b"EHLO stuck.example\r\n" + b"NOOP\r\n" * 10000 + junk
    t = sender_thread(stuck, payload)
    try:
        deadline = time.monotonic() + 3 * SLOW
        peak = 0
        while time.monotonic() < deadline:
            # Others are served promptly meanwhile.
            assert_serves(p.port, smtp_raw)
            peak = max(peak, rss_kb(p.pid))
            time.sleep(0.2)
        assert peak < RSS_LIMIT_KB, "server RSS %d kB" % peak
    finally:
        t.join(timeout=10 * SLOW)
        stuck.close()
    assert not t.is_alive()
    assert_serves(p.port, smtp_raw)
    assert rss_kb(p.pid) < RSS_LIMIT_KB


def test_message_over_max_size(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.10")   # Anonymous Relay: 64KB
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@other.example>") == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    line = b"y" * 98 + b"\r\n"
    c.send(b"Subject: big\r\n\r\n" + line * 700 + b".\r\n")   # ~70 KB
    assert c.reply() == R_TOO_BIG
    assert p.messages() == []
    p.assert_spool_clean()
    # The session continues; a message within the limit is accepted.
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@other.example>") == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    c.send(b"Subject: small\r\n\r\n" + line * 600 + b".\r\n")  # ~60 KB
    r = c.reply()
    assert r.startswith("250 2.6.0 <") and r.endswith("> Queued mail for delivery"), r
    assert c.cmd("QUIT") == R_QUIT
    assert len(p.messages()) == 1


# ---- NUL in message content (issue 17) ------------------------------------
# Without BINARYMIME a NUL is not content (RFC 6152): a next hop that drops
# NULs before looking for the end of data would read CRLF NUL . CRLF as
# CRLF . CRLF and see a second, smuggled message.
import os
import re
import subprocess

from conftest import BUILD

R_NUL = "550 5.6.0 NUL character not allowed in message content"

# Room for a 503 probe after every refusal.
NUL_CONNECTORS = """receive_connectors = (
  { name = "Default Frontend";
    bindings = [ "127.0.0.1:{port}" ];
    remote_ip_ranges = [ "0.0.0.0-255.255.255.255" ];
    permission_groups = [ "anonymous" ];
    max_protocol_errors = 100;
  }
);
"""

NUL_PLACEMENTS = {
    "first byte of the data": b"\x00Subject: x\r\n\r\nhi\r\n.\r\n",
    "first byte of the body": b"Subject: x\r\n\r\n\x00body\r\n.\r\n",
    "in a header": b"Subject: a\x00b\r\n\r\nhi\r\n.\r\n",
    "right before CRLF.CRLF": b"Subject: x\r\n\r\nhi\x00\r\n.\r\n",
    "CRLF NUL . CRLF": (b"Subject: innocent\r\n\r\nhi\r\n\x00.\r\n"
                        b"MAIL FROM:<evil@b.example>\r\n"
                        b"RCPT TO:<victim@corp.example>\r\n"
                        b"DATA\r\n"
                        b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"),
    "NUL CRLF . CRLF": b"\x00\r\n.\r\n",
}


def nul_metric(sock):
    r = subprocess.run([os.path.join(BUILD, "posternctl"), "-s", str(sock), "show", "metrics"],
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    found = [ln for ln in r.stdout.decode().splitlines()
             if ln.startswith('postern_messages_rejected_total{connector="Default Frontend",'
                              'reason="nul"} ')]
    assert len(found) == 1, r.stdout.decode()
    return int(found[0].rsplit(" ", 1)[1])


def clean_message(c, p, n_before, tag):
    """A clean message after a refusal: 250, and stored as sent."""
    assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    body = b"Subject: clean %s\r\n\r\nclean body\r\n" % tag
    c.send(body + b".\r\n")
    r = c.reply()
    m = re.fullmatch(r"250 2\.6\.0 <([0-9A-F]{16})> Queued mail for delivery", r)
    assert m, r
    ids = p.messages()
    assert len(ids) == n_before + 1 and m.group(1) in ids, (ids, r)
    stored = p.read_message(m.group(1))
    assert stored.endswith(body), stored[-200:]
    assert b"\x00" not in stored
    return m.group(1)


def test_nul_in_data_refused(postern, smtp_raw, tmp_path):
    sock = tmp_path / "stats.sock"
    p = postern(NUL_CONNECTORS, server_extra='  stats_socket = "%s";\n' % sock)
    assert nul_metric(sock) == 0
    c = smtp_raw(p.port, "127.0.0.50")
    assert c.cmd("EHLO client.example")[0].startswith("250-")
    refused = 0
    for name, body in NUL_PLACEMENTS.items():
        # whole, in one write; then split at the NUL (before, after it)
        at = body.index(b"\x00")
        for pieces in ([body], [body[:at], body[at:at + 1], body[at + 1:]]):
            assert c.cmd("MAIL FROM:<a@b.example>") == R_MAIL_OK
            assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
            assert c.cmd("DATA") == R_START_DATA
            for piece in pieces:
                c.send(piece)
                if len(pieces) > 1:
                    time.sleep(0.05)
            assert c.reply() == R_NUL, name
            refused += 1
            # Nothing else was answered: the smuggled MAIL never ran, the
            # transaction is gone.
            assert c.cmd("RCPT TO:<x@corp.example>") == R_BAD_SEQUENCE, name
            before = len(p.messages())
            clean_message(c, p, before, name.encode())
    # Pipelined: the refused message and a whole clean transaction after it
    # in one write: each gets its own replies, in order.
    txn = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@corp.example>\r\nDATA\r\n"
    c.send(txn + NUL_PLACEMENTS["CRLF NUL . CRLF"] +
           txn + b"Subject: pipelined\r\n\r\nclean\r\n.\r\nNOOP\r\n")
    assert c.replies(4) == [R_MAIL_OK, R_RCPT_OK, R_START_DATA, R_NUL]
    refused += 1
    assert c.replies(3) == [R_MAIL_OK, R_RCPT_OK, R_START_DATA]
    r = c.reply()
    assert re.fullmatch(r"250 2\.6\.0 <[0-9A-F]{16}> Queued mail for delivery", r), r
    assert c.reply() == R_NOOP_OK
    assert c.cmd("QUIT") == R_QUIT
    c.expect_closed()
    ids = p.messages()
    assert len(ids) == 2 * len(NUL_PLACEMENTS) + 1
    for mid in ids:
        msg = p.read_message(mid)
        assert b"\x00" not in msg and b"smuggled" not in msg and b"innocent" not in msg
    assert nul_metric(sock) == refused
    log = p.stderr()
    lines = re.findall(r"^.* event=reject reason=nul .*$", log, re.M)
    assert len(lines) == refused, lines
    for ln in lines:
        assert re.fullmatch(
            r'ts=\S+ level=info event=reject reason=nul from=<a@b\.example> to=- '
            r'connector="Default Frontend" client=127\.0\.0\.50 '
            r'reply="550 5\.6\.0 NUL character not allowed in message content" worker=\d+',
            ln), ln
    p.stop()
    assert p.messages() == ids
