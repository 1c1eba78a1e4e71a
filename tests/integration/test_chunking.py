"""CHUNKING/BDAT (RFC 3030, DESIGN B.9) inbound and outbound: per-chunk
replies, the LAST chunk answered as DATA's end is, chunk octets that are
never run as commands, the limits counted across chunks, the stored form
(dot-stuffed as DATA's, so delivery sends it either way), and BDAT towards
a next hop that offers CHUNKING."""
import re
import signal

from sink import Sink
from conftest import (R_MAIL_OK, R_NOOP_OK, R_QUIT, R_RCPT_OK, R_START_DATA, RawClient,
                      wait_until)
from test_delivery import (RELAY, config, events, sinks, smart, strip_received,  # noqa: F401
                           submit, wait_event)
from test_tls import ctl, outbound, pki, tls_sinks  # noqa: F401

QUEUED = re.compile(r"250 2\.6\.0 <([0-9A-F]+)> Queued mail for delivery$")
R_NUL = "550 5.6.0 NUL character not allowed in message content"
R_BARE_LF = "550 5.6.11 Bare line feed or carriage return not allowed"
R_TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
R_HOPS = "554 5.4.6 Hop count exceeded - possible mail loop"
R_SEQ = "503 5.5.1 Bad sequence of commands"


def got(n):
    return "250 2.0.0 %d bytes received" % n


def bdat(chunks):
    """BDAT commands for chunks (bytes), the last one LAST."""
    out = b""
    for i, c in enumerate(chunks):
        out += b"BDAT %d%s\r\n" % (len(c), b" LAST" if i == len(chunks) - 1 else b"") + c
    return out


def begin(c, sender="app@host.example", rcpt="x@corp.example"):
    ehlo = c.cmd("EHLO client.example")
    assert "250-CHUNKING" in ehlo, ehlo
    assert c.cmd("MAIL FROM:<%s>" % sender) == R_MAIL_OK
    assert c.cmd("RCPT TO:<%s>" % rcpt) == R_RCPT_OK


def queued_id(reply):
    m = QUEUED.match(reply)
    assert m, reply
    return m.group(1)


def stored_body(p, qid):
    """The message as stored (envelope block and our Received: removed)."""
    raw = p.read_message(qid)
    return strip_received(raw.split(b"\r\n\r\n", 1)[1], qid)[1]


def test_pipelined_chunks_stored_dot_stuffed(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.10")
    assert "250-CHUNKING" in c.cmd("EHLO client.example")
    msg = [b"Subject: chunks\r\n\r\n.leading dot\r\n", b"..two\r\nsplit CR", b"\r\n.\r\nend"]
    # everything in one write: MAIL, RCPT, three chunks, NOOP
    c.send(b"MAIL FROM:<a@host.example>\r\nRCPT TO:<x@other.example>\r\n" + bdat(msg) +
           b"NOOP\r\n")
    r = c.replies(6)
    assert r[:5] == [R_MAIL_OK, R_RCPT_OK, got(len(msg[0])), got(len(msg[1]))] + [r[4]]
    qid = queued_id(r[4])
    assert r[5] == R_NOOP_OK
    assert c.cmd("QUIT") == R_QUIT
    # the stored form is DATA's wire form: dots doubled, a CR LF closes the last line
    assert stored_body(p, qid) == (b"Subject: chunks\r\n\r\n..leading dot\r\n...two\r\n"
                                   b"split CR\r\n..\r\nend\r\n")
    ev = events(p, "receive", id=qid)
    assert len(ev) == 1 and ev[0]["to"] == "<x@other.example>", ev


def test_bdat_zero_last_and_data_after(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.10")
    begin(c)
    c.send(b"BDAT 0 LAST\r\n")
    qid = queued_id(c.reply())
    assert stored_body(p, qid) == b""
    # DATA still works on the same connection, and DATA after BDAT is refused
    assert c.cmd("MAIL FROM:<a@host.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    c.send(b"BDAT 4\r\nabcd")
    assert c.reply() == got(4)
    assert c.cmd("DATA") == R_SEQ
    assert c.cmd("MAIL FROM:<a@host.example>") == R_MAIL_OK
    assert c.cmd("RCPT TO:<x@corp.example>") == R_RCPT_OK
    assert c.cmd("DATA") == R_START_DATA
    c.send(b"Subject: d\r\n\r\nbody\r\n.\r\n")
    queued_id(c.reply())
    assert c.cmd("QUIT") == R_QUIT
    assert len(p.messages()) == 2


def test_refused_chunk_ends_the_transaction_not_the_session(postern, smtp_raw, tmp_path):
    p = postern(server_extra='  stats_socket = "%s";\n' % (tmp_path / "s.sock"))
    c = smtp_raw(p.port, "127.0.0.10")
    begin(c)
    # a NUL: refused at its chunk; the pipelined LAST after it is out of
    # sequence and its octets ("QUIT\r\n") are read, never run
    c.send(b"BDAT 5\r\na\0b\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
    assert c.replies(3) == [R_NUL, R_SEQ, R_NOOP_OK]
    begin(c)
    c.send(bdat([b"a\nb\r\n"]))
    assert c.reply() == R_BARE_LF
    begin(c)
    c.send(bdat([b"ends with CR\r"]))
    assert c.reply() == R_BARE_LF
    # the Anonymous Relay's 64KB counts every chunk
    begin(c)
    forty = (b"x" * 998 + b"\r\n") * 40
    c.send(b"BDAT 40000\r\n" + forty)
    assert c.reply() == got(40000)
    c.send(b"BDAT 40000 LAST\r\n" + forty)
    assert c.reply() == R_TOO_BIG
    begin(c)
    hops = b"".join(b"Received: from h%d\r\n" % i for i in range(61))  # max_hop_count: 60
    c.send(bdat([hops + b"\r\nbody\r\n"]))
    assert c.reply() == R_HOPS
    begin(c)
    c.send(bdat([b"fine\r\n"]))
    queued_id(c.reply())
    assert c.cmd("QUIT") == R_QUIT
    assert len(p.messages()) == 1
    rc, out = ctl(tmp_path / "s.sock", "show", "metrics")
    for reason, n in (("nul", 1), ("bare_lf", 2), ("size", 1), ("hop_count", 1),
                      ("protocol", 1)):
        line = ('postern_messages_rejected_total{connector="Anonymous Relay",reason="%s"} %d'
                % (reason, n))
        assert line in out, (line, [l for l in out.splitlines() if "rejected" in l])


def test_bdat_octets_never_run_as_commands(postern, smtp_raw):
    p = postern()
    c = smtp_raw(p.port, "127.0.0.10")
    c.cmd("EHLO client.example")
    # no transaction: 503, and the chunk is still read whole
    smuggled = b"MAIL FROM:<evil@x>\r\nRCPT TO:<y>\r\n"
    c.send(b"BDAT %d\r\n" % len(smuggled) + smuggled + b"NOOP\r\n")
    assert c.replies(2) == [R_SEQ, R_NOOP_OK]
    # RSET drops a message begun with BDAT
    begin(c)
    c.send(b"BDAT 3\r\nabcRSET\r\n")
    assert c.replies(2) == [got(3), "250 2.0.0 Resetting"]
    # a size that does not parse: nothing more is read
    c.send(b"BDAT twelve\r\nNOOP\r\n")
    assert c.reply() == "501 5.5.4 Syntax error in parameters or arguments"
    c.expect_closed()
    assert p.messages() == []


def test_large_message_in_many_chunks(postern, smtp_raw):
    p = postern(RELAY)
    c = smtp_raw(p.port, "127.0.0.10")
    begin(c, rcpt="x@other.example")
    line = b"0123456789" * 7 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * 20000          # 1.4 MB
    chunks = [body[i:i + 100003] for i in range(0, len(body), 100003)]
    c.send(bdat(chunks))
    r = c.replies(len(chunks))
    assert r[:-1] == [got(len(x)) for x in chunks[:-1]]
    qid = queued_id(r[-1])
    assert stored_body(p, qid) == body
    assert c.cmd("QUIT") == R_QUIT


# ---------------------------------------------------------------------------
# Outbound: BDAT when the next hop offers CHUNKING


def deliver_to(postern, sink):
    return postern(config(smart("Smart", ["*"], sink.port)))


def one_txn(sink, timeout=10):
    wait_until(lambda: sink.count() >= 1, timeout, what="a message at the sink")
    [txn] = sink.snapshot()
    return txn


def test_outbound_bdat_when_offered(sinks, postern):
    sink = sinks(Sink, chunking=True)
    p = deliver_to(postern, sink)
    body = b"Subject: no dot lines\r\n\r\nplain text\r\nsecond line\r\n"
    qid = submit(p.port, "s@a.test", ["r@other.test", "q@other.test"], body)
    wait_event(p, "deliver", id=qid, count=2)
    txn = one_txn(sink)
    assert txn["via"] == "BDAT", txn
    assert strip_received(txn["data"], qid)[1] == body
    assert txn["chunks"] == [len(txn["data"])]
    # the envelope pipelined, then the one LAST chunk of the stored size
    assert sink.commands("BDAT") == ["BDAT %d LAST" % len(txn["data"])]
    assert sink.commands("DATA") == []
    assert re.search(r" SIZE=%d\b" % len(txn["data"]), txn["mail"]), txn["mail"]


def test_outbound_dot_lines_go_by_data(sinks, postern):
    """A stored form with dot-stuffed lines is not the message itself: it
    goes by DATA (sendfile as it lies) even to a CHUNKING next hop."""
    sink = sinks(Sink, chunking=True)
    p = deliver_to(postern, sink)
    body = b"Subject: dots\r\n\r\n..a line that began with a dot\r\n"
    qid = submit(p.port, "s@a.test", ["r@other.test"], body)
    wait_event(p, "deliver", id=qid)
    txn = one_txn(sink)
    assert txn["via"] == "DATA"
    assert strip_received(txn["data"], qid)[1] == body


def bdat_submit(port, chunks, rcpt="r@other.test"):
    with RawClient(port, "127.0.0.10") as c:
        begin(c, rcpt=rcpt)
        c.send(bdat(chunks))
        r = c.replies(len(chunks))
        qid = queued_id(r[-1])
        assert c.cmd("QUIT") == R_QUIT
    return qid


def test_bdat_in_data_out(sinks, postern):
    """Received by BDAT, relayed to a next hop without CHUNKING: DATA with
    the dots stuffed and the missing CR LF added."""
    sink = sinks(Sink)
    p = deliver_to(postern, sink)
    qid = bdat_submit(p.port, [b"Subject: in chunks\r\n\r\n.dot\r\n", b".\r\nno CRLF"])
    wait_event(p, "deliver", id=qid)
    txn = one_txn(sink)
    assert txn["via"] == "DATA"
    assert strip_received(txn["data"], qid)[1] == (b"Subject: in chunks\r\n\r\n..dot\r\n"
                                                   b"..\r\nno CRLF\r\n")


def test_bdat_in_bdat_out(sinks, postern):
    sink = sinks(Sink, chunking=True)
    p = deliver_to(postern, sink)
    chunks = [b"Subject: relayed\r\n", b"\r\nbody\r\n", b"end\r\n"]
    qid = bdat_submit(p.port, chunks)
    wait_event(p, "deliver", id=qid)
    txn = one_txn(sink)
    assert txn["via"] == "BDAT"
    assert strip_received(txn["data"], qid)[1] == b"".join(chunks)


def test_refused_chunk_bounces_with_the_reply(sinks, postern, tmp_path):
    sink = sinks(Sink, chunking=True, data_reply=lambda txn: "554 5.6.0 Content refused")
    p = deliver_to(postern, sink)
    qid = submit(p.port, "", ["r@other.test"], b"Subject: x\r\n\r\nbody\r\n")
    b = wait_event(p, "bounce", id=qid)[0]
    assert b["reply"] == "554 5.6.0 Content refused", b["_line"]
    assert one_txn(sink)["via"] == "BDAT"


def test_outbound_bdat_over_tls(pki, tls_sinks, postern):
    """Under TLS the stored bytes are read and encrypted, not sendfile'd:
    the chunk still goes whole and without an end-of-data line."""
    sink = tls_sinks(cert=pki.server.cert, key=pki.server.key, require_tls=True,
                     chunking=True)
    p = outbound(postern, sink, 'tls = "opportunistic";')
    line = b"0123456789abcdef" * 4 + b"\r\n"
    body = b"Subject: tls chunk\r\n\r\n" + line * 3000        # > the 64 KiB TLS pieces
    qid = submit(p.port, "s@a.test", ["r@other.test"], body)
    wait_event(p, "deliver", id=qid)
    txn = one_txn(sink)
    assert txn["tls"] and txn["via"] == "BDAT", txn.get("via")
    assert strip_received(txn["data"], qid)[1] == body


def test_bdat_message_survives_kill_9(tmp_path, sinks):
    """A BDAT message is stored as any other: after a kill -9 it is
    recovered with its envelope lines and delivered, by BDAT, byte-exact."""
    from conftest import Postern, free_port
    from test_crash import restart
    sink_port = free_port()
    p = Postern(tmp_path, config(smart("Smart", ["*"], sink_port)), name="k9").start()
    try:
        chunks = [b"Subject: survive\r\n\r\n", b"line\r\n", b"last"]
        qid = bdat_submit(p.port, chunks)
        wait_event(p, "defer", id=qid)       # nothing listens at the next hop yet
        stored = p.read_message(qid)
        assert b"\r\ndot-lines: none\r\n" in stored.split(b"\r\n\r\n", 1)[0] + b"\r\n"
        p.kill()
        q = restart(p)
        try:
            sink = sinks(Sink, port=sink_port, chunking=True)
            ev = wait_event(q, "deliver", id=qid, timeout=30)
            assert len(ev) == 1
            txn = one_txn(sink)
            assert txn["via"] == "BDAT"
            assert strip_received(txn["data"], qid)[1] == b"Subject: survive\r\n\r\nline\r\nlast\r\n"
        finally:
            q.stop()
    finally:
        p.kill()
