"""RFC 2920 pipelining: replies come back complete and in order."""
import re
import threading

from conftest import (HOSTNAME, R_MAIL_OK, R_NOOP_OK, R_QUIT, R_RCPT_OK,
                      R_START_DATA, SLOW, TWO_CONNECTORS)

QUEUED = re.compile(r"250 2\.6\.0 <(\w+)> Queued mail for delivery")

EHLO_REPLY = ["250-%s Hello [127.0.0.10]" % HOSTNAME, "250-PIPELINING",
              "250-SIZE 65536", "250-8BITMIME", "250-ENHANCEDSTATUSCODES",
              "250-DSN", "250-CHUNKING", "250 SMTPUTF8"]


def test_pipelined_transactions(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.10")
    c.send("EHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@corp.example>\r\n"
           "RCPT TO:<d@corp.example>\r\nDATA\r\n")
    assert c.replies(5) == [EHLO_REPLY, R_MAIL_OK, R_RCPT_OK, R_RCPT_OK,
                            R_START_DATA]
    body1 = b"Subject: one\r\n\r\nfirst message\r\n..dot\r\n"
    body2 = b"Subject: two\r\n\r\nsecond message\r\n"
    # End of the first message and the whole next envelope in one write.
    c.send(body1 + b".\r\nMAIL FROM:<e@b.example>\r\nRCPT TO:<f@corp.example>\r\n"
           b"RCPT TO:<g@other.example>\r\nDATA\r\n")
    r = c.replies(5)
    m1 = QUEUED.fullmatch(r[0])
    assert m1, r
    assert r[1:] == [R_MAIL_OK, R_RCPT_OK, R_RCPT_OK, R_START_DATA]
    c.send(body2 + b".\r\nQUIT\r\n")
    r = c.replies(2)
    m2 = QUEUED.fullmatch(r[0])
    assert m2, r
    assert r[1] == R_QUIT
    c.expect_closed()
    id1, id2 = m1.group(1), m2.group(1)
    assert id1 != id2
    assert p.messages() == sorted([id1, id2])
    d1 = p.read_message(id1)
    d2 = p.read_message(id2)
    assert b"\r\nrcpt: <c@corp.example>\r\nrcpt: <d@corp.example>\r\n\r\n" in d1
    assert b"\r\nfrom: <e@b.example>\r\nrcpt: <f@corp.example>\r\n" \
           b"rcpt: <g@other.example>\r\n\r\n" in d2
    assert d1.split(b"\r\n\r\n", 1)[1].endswith(b"+0000\r\n" + body1)
    assert d2.split(b"\r\n\r\n", 1)[1].endswith(b"+0000\r\n" + body2)


def test_ten_thousand_pipelined_noops(postern, smtp_raw):
    # Junk commands without limit (max_junk_commands = 0; the default of
    # 100 ends such a session: test_floods)
    p = postern(TWO_CONNECTORS.replace('max_message_size = "64KB";',
                                       'max_message_size = "64KB"; max_junk_commands = 0;'))
    c = smtp_raw(p.port, "127.0.0.10")
    n = 10000
    got = []
    failure = []

    def reader():
        try:
            while len(got) < n:
                got.append(c.line(timeout=30))
                if got[-1] is None:
                    return
        except BaseException as e:  # reported by the main thread
            failure.append(e)

    t = threading.Thread(target=reader)
    t.start()
    c.send(b"NOOP\r\n" * n)
    t.join(timeout=60 * SLOW)
    assert not t.is_alive(), "reader still waiting after %d lines" % len(got)
    assert not failure, failure
    assert len(got) == n
    bad = [(i, x) for i, x in enumerate(got) if x != R_NOOP_OK]
    assert bad == [], bad[:5]
    assert c.cmd("QUIT") == R_QUIT
    c.expect_closed()
